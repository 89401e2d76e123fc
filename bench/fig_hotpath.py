"""Figures 1-3: the per-call cost of journaling.

1. Hot path: a scalar ``append_to`` on a journaled DatasetManager, minus the
   same call un-journaled, against the floor (msgpack a 3-tuple, CRC32 it,
   one ``os.write`` of the framed record).  Also the raw
   ``JournalWriter.append`` against the same floor.
2. Group commit: append throughput with ``fsync="group"`` over ``"never"``,
   and the power-loss window actually observed (age of the oldest appended
   but not yet durable record).
3. Per-op durability: ``fsync="always"`` append against bare
   ``os.write`` + ``os.fdatasync`` of the very same bytes.
"""

from __future__ import annotations

import collections
import os
import statistics
import struct
import time
import zlib
from typing import Callable

import msgpack

from common import (Config, Row, Scratch, check, fmt_ns, interleave,
                    median_of, median_ratio, no_gc, now, percentile,
                    progress, TimingFileOps)
import subjects

from artiq_journal.journal import codec
from artiq_journal.journal.constants import REC_APPEND
from artiq_journal.journal.framing import encode_record
from artiq_journal.journal.writer import JournalWriter

KEY = "scan.counts"
#: The floor's framing: CRC32 and length, then the payload.
_FLOOR_HEADER = struct.Struct("<II")


def _values(n: int) -> list[float]:
    return [i * 0.25 for i in range(n)]


class Floor:
    """The floor: the least a journal must do per scalar append."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.path = path

    def batch(self, values: list[float]) -> float:
        pack = msgpack.Packer(use_bin_type=True).pack
        crc32 = zlib.crc32
        head = _FLOOR_HEADER.pack
        write = os.write
        fd = self.fd
        key = KEY
        start = _start()
        for v in values:
            payload = pack((REC_APPEND, key, v))
            write(fd, head(crc32(payload), len(payload)) + payload)
        return _per_call(start, len(values))

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)


def _start() -> tuple[float, float]:
    return now(), time.thread_time()


def _per_call(start: tuple[float, float], n: int) -> tuple[float, float]:
    """(wall-clock, calling thread's CPU time) per call since ``start``."""
    return (now() - start[0]) / n, (time.thread_time() - start[1]) / n


def _append_to_batch(subject: subjects.Subject, values: list[float]
                     ) -> tuple[float, float]:
    """Per-call cost of ``dm.append_to(KEY, v)`` as an experiment makes it
    (attribute lookup on the manager each call, like HasEnvironment)."""
    dm = subject.dm
    dm.set(KEY, [], {}, False, False, True)
    start = _start()
    for v in values:
        dm.append_to(KEY, v)
    return _per_call(start, len(values))


def _writer_batch(writer: JournalWriter, values: list[float]
                  ) -> tuple[float, float]:
    append = writer.append
    key = KEY
    start = _start()
    for v in values:
        append(REC_APPEND, [key, v])
    return _per_call(start, len(values))


def _split(samples: list[dict]) -> tuple[list[dict], list[dict]]:
    """Rounds of {name: (wall, cpu)} -> (rounds of wall, rounds of cpu)."""
    return ([{k: v[0] for k, v in s.items()} for s in samples],
            [{k: v[1] for k, v in s.items()} for s in samples])


#: Figure 1's measure, said once in the table's notes.
CPU_NOTE = ("cost = CPU time of the calling thread per call "
            "(time.thread_time): on this shared 2-core machine wall-clock "
            "batches include time-slices lost to other processes; the "
            "wall-clock ratio is given for comparison (the same on a quiet "
            "machine).  Group commit's cross-thread cost is figure 2's "
            "(wall-clock) business")


def hot_path(cfg: Config, scratch: Scratch) -> list[Row]:
    progress("figure 1: hot path")
    rows: list[Row] = []
    values = _values(cfg.hot_calls)
    floor = Floor(scratch.path("floor"))
    writers = {pol: JournalWriter(scratch.path(f"raw-{pol}"), fsync=pol)
               for pol in ("never", "group")}
    try:
        # Raw writer first: it needs nothing written by others.
        cands = {"floor": lambda: floor.batch(values)}
        for pol, w in writers.items():
            cands[f"raw-{pol}"] = (lambda w=w: _writer_batch(w, values))
        wall, cpu = _split(interleave(cands, cfg.hot_rounds))
        f = median_of(cpu, "floor")
        for pol in ("never", "group"):
            ratio = median_ratio(cpu, lambda s: s[f"raw-{pol}"],
                                 lambda s: s["floor"])
            wall_ratio = median_ratio(wall, lambda s: s[f"raw-{pol}"],
                                      lambda s: s["floor"])
            rows.append(Row("1", f"JournalWriter.append, fsync={pol}",
                            fmt_ns(median_of(cpu, f"raw-{pol}")),
                            fmt_ns(f), ratio, "", "INFO",
                            note="the writer alone, append(REC_APPEND, "
                                 "[key, value]), against the same floor; "
                                 f"wall-clock ratio {wall_ratio:.2f}x"
                                 + ("; " + CPU_NOTE if pol == "never"
                                    else ""),
                            data={"cpu": cpu, "wall": wall}))

        for label, (cls, why) in subjects.dataset_manager_classes().items():
            for pol in ("never", "group"):
                name = (f"append_to +journal ({label} DatasetManager), "
                        f"fsync={pol}")
                if cls is None or subjects.ATTACH is None:
                    rows.append(Row("1", name, "n/a", target="<= 1.5",
                                    status="n/a",
                                    note=why or subjects.ATTACH_PROBLEM))
                    continue
                try:
                    rows.append(_journaled_overhead(cfg, scratch, cls, pol,
                                                    floor, values, name))
                except Exception as exc:  # attach refusing this class, ...
                    rows.append(Row("1", name, "n/a", target="<= 1.5",
                                    status="n/a",
                                    note=f"{type(exc).__name__}: {exc}"))
    finally:
        for w in writers.values():
            w.close()
        floor.close()
    return rows


def _journaled_overhead(cfg, scratch, cls, pol, floor, values, name) -> Row:
    base = subjects.plain(cls)
    live = subjects.journaled(scratch.path(f"results-{pol}"), pol, cls)
    try:
        wall, cpu = _split(interleave({
            "plain": lambda: _append_to_batch(base, values),
            "journaled": lambda: _append_to_batch(live, values),
            "floor": lambda: floor.batch(values),
        }, cfg.hot_rounds))
    finally:
        live.close()

    def extra(s: dict) -> float:
        return s["journaled"] - s["plain"]
    ratio = median_ratio(cpu, extra, lambda s: s["floor"])
    wall_ratio = median_ratio(wall, extra, lambda s: s["floor"])
    return Row("1", name, f"+{fmt_ns(statistics.median(map(extra, cpu)))} "
               f"(call {fmt_ns(median_of(cpu, 'plain'))})",
               fmt_ns(median_of(cpu, "floor")), ratio, "<= 1.5",
               check(ratio, "<= 1.5"),
               note=f"wall-clock ratio {wall_ratio:.2f}x"
                    + ("" if "ours" not in name or pol != "never" else
                       "; value = journaled call minus the same call "
                       "un-journaled; floor = msgpack.pack((5, key, value)) "
                       "+ zlib.crc32 + one os.write of <crc,len>+payload; "
                       f"{cfg.hot_rounds} rounds x {len(values)} calls"),
               data={"cpu": cpu, "wall": wall})


# --- figure 2 ---------------------------------------------------------------------


def group_commit(cfg: Config, scratch: Scratch) -> list[Row]:
    progress("figure 2: group commit")
    rows: list[Row] = []
    values = _values(cfg.hot_calls)
    writers = {pol: JournalWriter(scratch.path(f"gc-{pol}"), fsync=pol)
               for pol in ("never", "group")}
    try:
        samples = interleave({pol: (lambda w=w: _writer_batch(w, values)[0])
                              for pol, w in writers.items()}, cfg.hot_rounds)
        ratio = median_ratio(samples, lambda s: s["never"],
                             lambda s: s["group"])
        rows.append(Row("2", "group/never throughput, JournalWriter.append",
                        f"{1 / median_of(samples, 'group') / 1e3:.0f} k/s",
                        f"{1 / median_of(samples, 'never') / 1e3:.0f} k/s",
                        ratio, ">= 0.95", check(ratio, ">= 0.95"),
                        data={"samples": samples}))
        rows.append(_group_window(scratch, cfg))
    finally:
        for w in writers.values():
            w.close()

    name = "group/never throughput, journaled append_to"
    if subjects.ATTACH is None:
        rows.append(Row("2", name, "n/a", target=">= 0.95", status="n/a",
                        note=subjects.ATTACH_PROBLEM))
        return rows
    try:
        live = {pol: subjects.journaled(scratch.path(f"gc-results-{pol}"), pol)
                for pol in ("never", "group")}
    except Exception as exc:
        rows.append(Row("2", name, "n/a", target=">= 0.95", status="n/a",
                        note=f"{type(exc).__name__}: {exc}"))
        return rows
    try:
        samples = interleave({pol: (lambda s=s: _append_to_batch(s, values)[0])
                              for pol, s in live.items()}, cfg.hot_rounds)
    finally:
        for s in live.values():
            s.close()
    ratio = median_ratio(samples, lambda s: s["never"], lambda s: s["group"])
    rows.append(Row("2", name,
                    f"{1 / median_of(samples, 'group') / 1e3:.0f} k/s",
                    f"{1 / median_of(samples, 'never') / 1e3:.0f} k/s",
                    ratio, ">= 0.95", check(ratio, ">= 0.95"),
                    data={"samples": samples}))
    return rows


def _group_window(scratch: Scratch, cfg: Config) -> Row:
    """Age of the oldest appended-but-not-durable record, sampled every 64
    appends for a while: the power-loss window as it really is (the
    interval plus however long the fdatasyncs take on this disk now)."""
    ops = TimingFileOps()
    writer = JournalWriter(scratch.path("window"), fsync="group", ops=ops)
    pending: collections.deque = collections.deque()
    lags = []
    append = writer.append
    i = 0
    try:
        t_end = now() + (0.5 if cfg.mode == "quick" else 2.0)
        while True:
            t = now()
            if t > t_end:
                break
            for _ in range(64):
                append(REC_APPEND, [KEY, i * 0.5])
                i += 1
            pending.append((t, writer.last_seq))
            durable = writer.durable_seq
            while pending and pending[0][1] <= durable:
                pending.popleft()
            lags.append(now() - pending[0][0] if pending else 0.0)
    finally:
        writer.close()
    p99 = percentile(lags, 0.99) * 1e3
    syncs = ops.sync_seconds
    return Row("2", "group commit power-loss window (p99 age of oldest "
               "non-durable record)", f"{p99:.2f} ms (max "
               f"{max(lags) * 1e3:.2f})",
               f"interval {writer.group_interval * 1e3:g} ms", None,
               "<= 10 ms", check(p99, "<= 10"),
               note=f"{len(lags)} samples over {i} appends; fdatasync took "
                    f"p50 {percentile(syncs, 0.5) * 1e3:.2f} ms, p99 "
                    f"{percentile(syncs, 0.99) * 1e3:.2f} ms "
                    f"({len(syncs)} syncs): the window is the interval plus "
                    "up to two syncs",
               data={"p99_ms": p99, "max_ms": max(lags) * 1e3,
                     "sync_p50_ms": percentile(syncs, 0.5) * 1e3})


# --- figure 3 ---------------------------------------------------------------------


def _paired_syncs(ops: dict[str, Callable[[int], None]], n: int
                  ) -> dict[str, float]:
    """One round of figure 3: ``n`` ops of every candidate, interleaved op
    by op (A B C, then C B A, ...), each timed alone.  fdatasync latency on
    a shared virtual disk swings 3x within a second; only op-level
    interleaving lets both sides see the same disk.  Returns mean seconds
    per op of each candidate."""
    names = list(ops)
    total = dict.fromkeys(names, 0.0)
    for i in range(n):
        for name in (names if i % 2 == 0 else names[::-1]):
            op = ops[name]
            t0 = now()
            op(i)
            total[name] += now() - t0
    return {name: t / n for name, t in total.items()}


def per_op_durability(cfg: Config, scratch: Scratch) -> list[Row]:
    progress("figure 3: fsync=always")
    rows: list[Row] = []
    n = cfg.always_ops
    rounds = cfg.rounds + 1  # the first is a warm-up
    values = _values(n * rounds)
    # The bare side writes exactly the bytes the writer writes.
    records = [encode_record(i + 1, REC_APPEND, codec.pack([KEY, v]))
               for i, v in enumerate(values)]
    bare_path = scratch.path("bare-sync")
    fd = os.open(bare_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    writer = JournalWriter(scratch.path("always"), fsync="always")
    append = writer.append
    live = None
    why = subjects.ATTACH_PROBLEM
    if subjects.ATTACH is not None:
        try:
            live = subjects.journaled(scratch.path("always-results"), "always")
            live.dm.set(KEY, [], {}, False, False, True)
        except Exception as exc:
            live, why = None, f"{type(exc).__name__}: {exc}"
    base = subjects.plain()
    base.dm.set(KEY, [], {}, False, False, True)
    samples = []
    try:
        for r in range(rounds):
            off = r * n

            def bare(i: int) -> None:
                os.write(fd, records[off + i])
                os.fdatasync(fd)

            def always(i: int) -> None:
                append(REC_APPEND, [KEY, values[off + i]])

            ops = {"bare": bare, "always": always}
            if live is not None:
                dm, plain_dm = live.dm, base.dm

                def attach_op(i: int) -> None:
                    dm.append_to(KEY, values[off + i])

                def plain_op(i: int) -> None:
                    plain_dm.append_to(KEY, values[off + i])
                ops["attach"] = attach_op
                ops["plain"] = plain_op
            with no_gc():
                sample = _paired_syncs(ops, n)
            if r > 0:
                samples.append(sample)
    finally:
        writer.close()
        os.close(fd)
        os.unlink(bare_path)
        if live is not None:
            live.close()
    b = median_of(samples, "bare")
    ratio = median_ratio(samples, lambda s: s["always"], lambda s: s["bare"])
    note = (f"{n} ops per round, interleaved op by op with the bare "
            "write+fdatasync; mean per op, median over rounds")
    rows.append(Row("3", "fsync=always JournalWriter.append per op",
                    fmt_ns(median_of(samples, "always")), fmt_ns(b), ratio,
                    "<= 1.1", check(ratio, "<= 1.1"), note=note,
                    data={"samples": samples}))
    name = "fsync=always journaled append_to per op (net of the call)"
    if live is None:
        rows.append(Row("3", name, "n/a", target="<= 1.1", status="n/a",
                        note=why))
    else:
        ratio = median_ratio(samples, lambda s: s["attach"] - s["plain"],
                             lambda s: s["bare"])
        rows.append(Row("3", name, fmt_ns(median_of(samples, "attach")),
                        fmt_ns(b), ratio, "<= 1.1", check(ratio, "<= 1.1"),
                        data={"samples": samples}))
    return rows
