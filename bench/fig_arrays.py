"""Figure 4: journaling large numpy arrays.

``set`` of a large float64 array and ``mutate`` of a large slice of it, in
GB/s of array data journaled, against a bare ``os.write`` of the same
buffer to a fresh file (the floor).  The target is absolute (>= 1 GB/s);
the ratio to the floor shows how far from the page cache's speed we are.
Also: a ``mutate`` of a small slice must grow the journal by about the
slice, not by the array; and the transient memory one ``append`` of the
array allocates (``tracemalloc`` peak over the array size: every copy of
the buffer shows up as +1).
"""

from __future__ import annotations

import os
import shutil
import tracemalloc

import numpy as np

from common import (Config, Row, Scratch, check, fmt_rate, interleave,
                    median_of, median_ratio, now, progress)
import subjects

from artiq_journal.journal.constants import REC_SET
from artiq_journal.journal.writer import JournalWriter

KEY = "camera.image"


def _bare_write(path: str, buf: np.ndarray) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(buf).cast("B")
        t0 = now()
        while view:
            view = view[os.write(fd, view):]
        elapsed = now() - t0
    finally:
        os.close(fd)
        # Unlinking drops the dirty pages: rounds do not pile up writeback
        # that would throttle whichever candidate runs next.
        os.unlink(path)
    return buf.nbytes / elapsed


def _raw_set(path: str, arr: np.ndarray, fsync: str) -> float:
    writer = JournalWriter(path, fsync=fsync)
    try:
        record = [KEY, arr, {}, False, False, True]
        t0 = now()
        writer.append(REC_SET, record)
        elapsed = now() - t0
    finally:
        writer.abandon()
        shutil.rmtree(path, ignore_errors=True)
    return arr.nbytes / elapsed


def _attach_op(path: str, arr: np.ndarray, fsync: str, op: str,
               base: subjects.Subject) -> float:
    """GB/s of one journaled set (or mutate of the second half), net of the
    same call on an un-journaled manager."""
    live = subjects.journaled(path, fsync)
    try:
        half = arr[arr.size // 2:]
        index = ((arr.size // 2, arr.size),)
        for s in (live, base):
            if op == "mutate":
                s.dm.set(KEY, arr.copy(), {}, False, False, True)
        t0 = now()
        if op == "set":
            base.dm.set(KEY, arr, {}, False, False, True)
        else:
            base.dm.mutate(KEY, index, half)
        t_plain = now() - t0
        t0 = now()
        if op == "set":
            live.dm.set(KEY, arr, {}, False, False, True)
        else:
            live.dm.mutate(KEY, index, half)
        t_live = now() - t0
    finally:
        live.close()
        shutil.rmtree(path, ignore_errors=True)
    nbytes = arr.nbytes if op == "set" else half.nbytes
    return nbytes / max(t_live - t_plain, 1e-9)


def arrays(cfg: Config, scratch: Scratch) -> list[Row]:
    progress(f"figure 4: {cfg.array_mib} MiB arrays")
    rows: list[Row] = []
    arr = np.random.default_rng(7).random(cfg.array_mib * 2**20 // 8)
    half_bytes = arr[arr.size // 2:].nbytes
    cands = {"floor": lambda: _bare_write(scratch.path("bare"), arr),
             "raw-never": lambda: _raw_set(scratch.path("raw"), arr, "never"),
             "raw-group": lambda: _raw_set(scratch.path("raw"), arr, "group")}
    live_ok = subjects.ATTACH is not None
    why = subjects.ATTACH_PROBLEM
    base = subjects.plain()
    if live_ok:
        for op in ("set", "mutate"):
            for pol in ("never", "group"):
                cands[f"{op}-{pol}"] = (
                    lambda op=op, pol=pol: _attach_op(
                        scratch.path("arr"), arr, pol, op, base))
    samples = interleave(cands, cfg.array_rounds)
    floor = median_of(samples, "floor")

    def row(name: str, key: str, target: str = ">= 1") -> Row:
        rate = median_of(samples, key)
        ratio = median_ratio(samples, lambda s: s[key], lambda s: s["floor"])
        return Row("4", name, fmt_rate(rate), fmt_rate(floor), ratio,
                   f"{target} GB/s", check(rate / 1e9, target),
                   note="ratio = throughput / bare os.write throughput",
                   data={"samples": samples})

    mib = cfg.array_mib
    rows.append(row(f"JournalWriter.append set {mib} MiB, fsync=never",
                    "raw-never"))
    rows.append(row(f"JournalWriter.append set {mib} MiB, fsync=group",
                    "raw-group"))
    for op, label in (("set", f"set {mib} MiB"),
                      ("mutate", f"mutate {half_bytes >> 20} MiB slice")):
        for pol in ("never", "group"):
            name = f"journaled {label}, fsync={pol}"
            if live_ok:
                rows.append(row(name, f"{op}-{pol}"))
            else:
                rows.append(Row("4", name, "n/a", target=">= 1 GB/s",
                                status="n/a", note=why))
    rows.append(_memory_row(scratch, arr))
    rows.append(_slice_growth_row(scratch, arr))
    return rows


def _memory_row(scratch: Scratch, arr: np.ndarray) -> Row:
    """Peak transient allocation of one ``append`` of the array, in units of
    the array size (zero-copy framing would be ~0)."""
    path = scratch.path("mem")
    writer = JournalWriter(path, fsync="never")
    try:
        record = [KEY, arr, {}, False, False, True]
        tracemalloc.start()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        writer.append(REC_SET, record)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        writer.abandon()
        shutil.rmtree(path, ignore_errors=True)
    copies = (peak - base) / arr.nbytes
    return Row("4", "transient copies of the array per append "
               "(tracemalloc peak / array size)", f"{copies:.2f}",
               "0 (zero-copy)", None, "", "INFO",
               note="tobytes() + ExtType + packer buffer + header concat "
                    "each hold a full copy at the peak",
               data={"copies": copies})


def _slice_growth_row(scratch: Scratch, arr: np.ndarray) -> Row:
    name = "mutate of a 1 KiB slice: journal growth"
    if subjects.ATTACH is None:
        return Row("4", name, "n/a", target="<= 2x slice + 1 KiB",
                   status="n/a", note=subjects.ATTACH_PROBLEM)
    path = scratch.path("growth")
    live = subjects.journaled(path, "never")
    try:
        live.dm.set(KEY, arr.copy(), {}, False, False, True)
        before = live.journal_bytes()
        piece = np.ones(128)
        live.dm.mutate(KEY, ((1000, 1128),), piece)
        grown = live.journal_bytes() - before
    finally:
        live.close()
        shutil.rmtree(path, ignore_errors=True)
    limit = 2 * piece.nbytes + 1024
    return Row("4", name, f"{grown} B", f"slice {piece.nbytes} B",
               grown / piece.nbytes, f"<= {limit / piece.nbytes:g}x",
               check(grown / piece.nbytes, f"<= {limit / piece.nbytes:g}"),
               note=f"array is {arr.nbytes >> 20} MiB; ratio = growth / "
                    "slice bytes",
               data={"grown": grown, "slice": piece.nbytes})
