"""Figure 6: snapshots (checkpoints).

* ``JournalWriter.write_snapshot`` against the atomic-rename floor for the
  same state (msgpack it, write a temp file, fsync, rename, fsync the
  directory), for growing state sizes: the cost follows the state.
* The same state after a short and after a long run: the cost must not
  follow the run length (ratio long/short).
* Syncs per checkpoint, counted with an instrumented file layer: at most
  2 file fsyncs + 2 directory fsyncs.
* Replay of a long run with checkpoints against a short one with the same
  state and the same records since its last checkpoint: recovery time is
  bounded by the tail plus the state, not by the run.
"""

from __future__ import annotations

import os
import shutil

import msgpack

from common import (Config, CountingFileOps, Row, Scratch, check, fmt_ns,
                    interleave, median_of, median_ratio, now, progress)
import subjects

from artiq_journal.journal.constants import REC_APPEND, REC_RUN_INFO, REC_SET
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.replay import replay
from artiq_journal.runstate import RunState

KEY = "scan.counts"
#: Small segments, so that long runs span many and covered ones get deleted.
SEGMENT_BYTES = 1 << 20
TAIL = 1000
RUN_INFO = {"rid": 1, "class_name": "Bench", "expid": {}}


def _state(size: int) -> dict:
    return {"datasets": {KEY: [i * 0.5 for i in range(size)]}, "i": size}


def _atomic_rename_floor(directory: str, state: dict) -> float:
    """The least a crash-safe checkpoint of ``state`` costs."""
    tmp = os.path.join(directory, "state.tmp")
    final = os.path.join(directory, "state")
    t0 = now()
    data = msgpack.packb(state, use_bin_type=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return now() - t0


def _fill(writer: JournalWriter, n: int) -> None:
    append = writer.append
    for i in range(n):
        append(REC_APPEND, [KEY, i * 0.25])


def _snapshot_after_tail(writer: JournalWriter, state: dict) -> float:
    # Records since the previous checkpoint are part of a checkpoint's cost
    # (they are synced first); keep them equal for every candidate.
    _fill(writer, 100)
    t0 = now()
    writer.write_snapshot(state)
    return now() - t0


def snapshots(cfg: Config, scratch: Scratch) -> list[Row]:
    progress("figure 6: snapshots")
    rows: list[Row] = []
    floor_dir = scratch.path("floor-ckpt")
    os.makedirs(floor_dir)

    # -- cost vs state size -------------------------------------------------------
    writers = {}
    states = {}
    for size in cfg.snapshot_sizes:
        w = JournalWriter(scratch.path(f"ckpt-{size}"), fsync="group",
                          segment_bytes=SEGMENT_BYTES)
        _fill(w, 1000)
        writers[size] = w
        states[size] = _state(size)
    cands = {}
    for size in cfg.snapshot_sizes:
        cands[f"ours-{size}"] = (lambda s=size: _snapshot_after_tail(
            writers[s], states[s]))
        cands[f"floor-{size}"] = (lambda s=size: _atomic_rename_floor(
            floor_dir, states[s]))
    try:
        samples = interleave(cands, cfg.snapshot_rounds)
    finally:
        for w in writers.values():
            w.close()
    for size in cfg.snapshot_sizes:
        ours, floor = f"ours-{size}", f"floor-{size}"
        ratio = median_ratio(samples, lambda s: s[ours], lambda s: s[floor])
        nbytes = len(msgpack.packb(states[size]))
        rows.append(Row("6", f"write_snapshot, state {nbytes / 1e6:.3g} MB "
                        f"({size:.0e} floats)",
                        fmt_ns(median_of(samples, ours)),
                        fmt_ns(median_of(samples, floor)), ratio, "", "INFO",
                        data={"state_bytes": nbytes}))
    rows[-1].note = ("floor = msgpack + write tmp + fsync + rename + fsync "
                     "dir of the same state")

    rows.append(_run_length_row(cfg, scratch))
    rows.append(_sync_count_row(scratch))
    rows.extend(_checkpoint_rows(cfg, scratch))
    rows.append(_replay_bound_row(cfg, scratch))
    shutil.rmtree(floor_dir, ignore_errors=True)
    return rows


def _run_length_row(cfg: Config, scratch: Scratch) -> Row:
    short_n, long_n = cfg.snapshot_run_lengths
    state = _state(10_000)
    writers = {}
    for label, n in (("short", short_n), ("long", long_n)):
        w = JournalWriter(scratch.path(f"runlen-{label}"), fsync="group",
                          segment_bytes=SEGMENT_BYTES)
        _fill(w, n)
        w.write_snapshot(state)
        writers[label] = w
    try:
        samples = interleave({
            label: (lambda w=w: _snapshot_after_tail(w, state))
            for label, w in writers.items()}, cfg.snapshot_rounds)
    finally:
        for w in writers.values():
            w.close()
    ratio = median_ratio(samples, lambda s: s["long"], lambda s: s["short"])
    return Row("6", f"write_snapshot after {long_n:.0e} vs {short_n:.0e} "
               "records (same state)", fmt_ns(median_of(samples, "long")),
               fmt_ns(median_of(samples, "short")), ratio, "<= 1.25",
               check(ratio, "<= 1.25"),
               note="cost must follow the state, not the run length",
               data={"samples": samples})


def _sync_count_row(scratch: Scratch) -> Row:
    ops = CountingFileOps()
    # fsync="never": the only syncs counted are the checkpoint's own.
    writer = JournalWriter(scratch.path("counted"), fsync="never",
                           segment_bytes=SEGMENT_BYTES, ops=ops)
    try:
        _fill(writer, 1000)
        writer.write_snapshot(_state(1000))
        counts = []
        for _ in range(3):
            _fill(writer, 50_000)  # spans segments: deletion is exercised
            ops.reset()
            writer.write_snapshot(_state(1000))
            counts.append(ops.reset())
    finally:
        writer.close()
    files = max(c[0] for c in counts)
    dirs = max(c[1] for c in counts)
    ok = files <= 2 and dirs <= 2
    return Row("6", "syncs per JournalWriter.write_snapshot (file + dir)",
               f"{files} file + {dirs} dir", "", None, "<= 2 + 2",
               "PASS" if ok else "MISS", data={"counts": counts})


def _checkpoint_scan(scratch: Scratch, n: int, every: int,
                     ops: CountingFileOps | None = None
                     ) -> tuple[float, int, list[tuple[int, int]]]:
    """A scan of ``n`` journaled ``append_to`` points calling
    ``LiveJournal.checkpoint`` (what ``JournalResumable.checkpoint(**state)``
    calls) every ``every`` points.  Returns the mean seconds per
    checkpoint call, the number of snapshots written, and the (file, dir)
    syncs of each checkpoint call that wrote one."""
    subject = subjects.journaled(scratch.path("ckpt-scan"),
                                 "never" if ops else "group")
    live, dm = subject.live, subject.dm
    if ops is not None:
        # Every sync the checkpoint makes goes through writer.ops.
        live.writer.ops = ops
    snap = os.path.join(live.path, "checkpoint")
    try:
        dm.set(KEY, [], {}, False, False, True)
        spent, calls, snapshots, syncs = 0.0, 0, 0, []
        for i in range(n):
            dm.append_to(KEY, i * 0.25)
            if i % every == every - 1:
                before = os.stat(snap).st_mtime_ns if os.path.exists(snap) \
                    else None
                if ops is not None:
                    ops.reset()
                t0 = now()
                live.checkpoint({"point": i})
                spent += now() - t0
                calls += 1
                after = os.stat(snap).st_mtime_ns if os.path.exists(snap) \
                    else None
                if after != before:
                    snapshots += 1
                    if ops is not None:
                        syncs.append(ops.reset())
    finally:
        subject.close()
    return spent / max(calls, 1), snapshots, syncs


def _checkpoint_rows(cfg: Config, scratch: Scratch) -> list[Row]:
    """checkpoint() through attach: amortised cost per call over scans of
    growing length (the journal's snapshot policy must keep it flat), and
    the syncs of the calls that wrote a snapshot."""
    short_n, long_n = cfg.checkpoint_scan_lengths
    every = 10
    name = (f"checkpoint() every {every} points, amortised per call: "
            f"{long_n:.0e}-point vs {short_n:.0e}-point scan")
    sync_name = "syncs per snapshot-writing checkpoint() (via attach)"
    if subjects.ATTACH is None:
        return [Row("6", name, "n/a", target="<= 1.5", status="n/a",
                    note=subjects.ATTACH_PROBLEM),
                Row("6", sync_name, "n/a", target="<= 2 + 2", status="n/a",
                    note=subjects.ATTACH_PROBLEM)]
    samples = interleave({
        "short": lambda: _checkpoint_scan(scratch, short_n, every)[0],
        "long": lambda: _checkpoint_scan(scratch, long_n, every)[0],
    }, max(3, cfg.snapshot_rounds // 2), warmup=0)
    ratio = median_ratio(samples, lambda s: s["long"], lambda s: s["short"])
    rows = [Row("6", name, fmt_ns(median_of(samples, "long")),
                fmt_ns(median_of(samples, "short")), ratio, "<= 1.5",
                check(ratio, "<= 1.5"),
                note="the state (the scan's dataset) grows with the scan; "
                     "the snapshot policy (snapshot when the bytes journaled "
                     "since the last one reach its size) keeps the "
                     "amortised cost flat",
                data={"samples": samples})]
    ops = CountingFileOps()
    _, snapshots, syncs = _checkpoint_scan(scratch, max(long_n // 2, 50_000),
                                           every, ops)
    files = max((c[0] for c in syncs), default=0)
    dirs = max((c[1] for c in syncs), default=0)
    rows.append(Row("6", sync_name, f"{files} file + {dirs} dir",
                    f"{snapshots} snapshots", None, "<= 2 + 2",
                    "PASS" if snapshots and files <= 2 and dirs <= 2
                    else "MISS", data={"counts": syncs}))
    return rows


def _journal_with_checkpoints(path: str, n: int) -> None:
    """``n`` scalar sets (constant-size state), two checkpoints, then
    ``TAIL`` more sets; left orphaned."""
    writer = JournalWriter(path, fsync="never", segment_bytes=SEGMENT_BYTES)
    try:
        writer.append(REC_RUN_INFO, RUN_INFO)
        append = writer.append
        for i in range(n):
            append(REC_SET, ["x", i, {}, False, False, True])
        state = RunState()
        state.apply(1, REC_RUN_INFO, RUN_INFO)
        state.apply(2, REC_SET, ["x", n - 1, {}, False, False, True])
        writer.write_snapshot(state.to_snapshot())
        writer.write_snapshot(state.to_snapshot())
        for i in range(TAIL):
            append(REC_SET, ["x", n + i, {}, False, False, True])
    finally:
        writer.abandon()


def _replay_bound_row(cfg: Config, scratch: Scratch) -> Row:
    short_n, long_n = cfg.snapshot_run_lengths
    paths = {}
    for label, n in (("short", short_n), ("long", long_n)):
        paths[label] = scratch.path(f"replay-{label}")
        _journal_with_checkpoints(paths[label], n)

    def run(path: str) -> float:
        t0 = now()
        result = replay(path)
        elapsed = now() - t0
        if result.snapshot is None or result.records_applied != TAIL:
            raise RuntimeError(f"replay of {path} did not start at the "
                               f"checkpoint ({result.records_applied} "
                               "records applied)")
        return elapsed

    samples = interleave({label: (lambda p=p: run(p))
                          for label, p in paths.items()},
                         cfg.snapshot_rounds)
    ratio = median_ratio(samples, lambda s: s["long"], lambda s: s["short"])
    return Row("6", f"replay after checkpoint: {long_n:.0e}-record run vs "
               f"{short_n:.0e} (same {TAIL}-record tail)",
               fmt_ns(median_of(samples, "long")),
               fmt_ns(median_of(samples, "short")), ratio, "<= 1.25",
               check(ratio, "<= 1.25"), data={"samples": samples})
