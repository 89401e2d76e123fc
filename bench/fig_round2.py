"""Figure 8 (issue 15, performance round 2): each figure against its floor,
measured interleaved in the same run.

* 8a ``artiq-recover`` as a user runs it (the installed console script,
  whole process) on a journal of 1e6 float appends + 1e5 sets; and the
  decode-only pass through the reader API; both as records/s divided by a
  streaming ``msgpack.Unpacker`` over the bare payloads (in-process).
* 8b recovery peak memory per appended float, minus the RSS of the
  imported package (a child process: ``ru_maxrss`` after the imports and
  after ``recover()``).
* 8c resume (``load_checkpoint``) / one ``replay()``, checkpoint at 99 %.
* 8d 8 x 64 MiB ``set`` arrays through the writer, GB/s / ``os.write`` of
  the same bytes to a fresh file (fsync never / group).
* 8e added CPU cost per journaled call / floor (msgpack pack + CRC + one
  ``os.write`` of a record of the same size, values as plain msgpack):
  np.float64 append, mutate with a slice, with a tuple index, 1 KiB array
  append, plain float append.
* 8f checkpoint of a ~111 MB state / ``pickle.dump`` + fsync of it; peak
  extra memory / state size (tracemalloc).
* 8g fdatasyncs per point of 3 appends under fsync=always, with and
  without ``point()``.
* 8h recovery scan of a tree of finished, kept journals, per journal.

Also runnable alone: ``python bench/fig_round2.py [--quick] [--only a,c]``.
"""

from __future__ import annotations

import os
import pickle  # only as a floor (8f): the package never pickles
import shutil
import statistics
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import msgpack
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (Config, CountingFileOps, Row, Scratch, check,  # noqa
                    fmt_ns, interleave, median_of, median_ratio, no_gc, now,
                    progress)
import subjects  # noqa: E402

from artiq_journal.journal.constants import (  # noqa: E402
    REC_APPEND, REC_CHECKPOINT, REC_MUTATE, REC_RUN_INFO, REC_SET,
    REC_STAGE, SEGMENT_HEADER_SIZE)
from artiq_journal.journal.reader import JournalReader, list_segments  # noqa
from artiq_journal.journal.writer import JournalWriter  # noqa: E402
from artiq_journal.replay import replay  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "scan.counts"
RUN_INFO = {"rid": 1, "class_name": "Bench", "pipeline_name": "main",
            "priority": 0, "start_time": 0.0, "artiq_version": "bench",
            "expid": {"file": "bench.py", "class_name": "Bench",
                      "arguments": {}, "log_level": 30}}


def _console_script(name: str) -> str | None:
    if os.environ.get("BENCH_ARTIQ_RECOVER"):  # e.g. another checkout's
        return os.environ["BENCH_ARTIQ_RECOVER"]
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.access(path, os.X_OK) else shutil.which(name)


# --- journals -------------------------------------------------------------------


def build_scan_journal(root: str, appends: int, sets: int,
                       checkpoint_at: float | None = None,
                       rid: int = 1) -> str:
    """An orphaned journal: run info, ``appends`` float appends to KEY with
    ``sets`` ``set``s of a scalar spread evenly between them (a scan that
    records its current point), optionally one checkpoint record after
    ``checkpoint_at`` of the records."""
    path = os.path.join(root, "results", "2025-01-01", "00",
                        f"{rid:09d}-Bench.journal")
    writer = JournalWriter(path, fsync="never", heartbeat_interval=None)
    append = writer.append
    append(REC_RUN_INFO, dict(RUN_INFO, rid=rid))
    append(REC_STAGE, ["run", 0.0])
    append(REC_SET, [KEY, [], {}, False, False, True])
    every = appends // sets if sets else appends + 1
    total = appends + sets
    ck = None if checkpoint_at is None else int(total * checkpoint_at)
    done = 0
    for i in range(appends):
        append(REC_APPEND, [KEY, i * 0.25])
        done += 1
        if sets and i % every == every - 1:
            append(REC_SET, ["scan.point", i, {}, False, False, True])
            done += 1
        if ck is not None and done >= ck:
            append(REC_CHECKPOINT, [{"i": i}])
            ck = None
    writer.abandon()
    return path


def bare_payloads(path: str, out: str) -> int:
    """Write the records' payloads back to back (the floor's input)."""
    n = 0
    with open(out, "wb") as dst:
        for batch in JournalReader(path, decode=False).iter_batches():
            dst.write(b"".join(r[2] for r in batch))
            n += len(batch)
    return n


def floor_unpacker(payload_file: str) -> int:
    with open(payload_file, "rb") as f:
        n = 0
        for _ in msgpack.Unpacker(f, raw=False, read_size=1 << 20,
                                  strict_map_key=False):
            n += 1
    return n


def reader_decode(path: str) -> int:
    n = 0
    for batch in JournalReader(path).iter_batches():
        n += len(batch)
    return n


def header_walk(path: str) -> int:
    """The least any pure-Python per-record reader does: step from record
    header to record header (no CRC, no decode)."""
    n = 0
    unpack = struct.Struct("<IIQBBH").unpack_from
    for _, seg in list_segments(path):
        with open(seg, "rb") as f:
            buf = f.read()
        pos, end = SEGMENT_HEADER_SIZE, len(buf)
        while pos + 20 <= end:
            pos += 20 + unpack(buf, pos)[1]
            n += 1
    return n


def _timed(fn) -> float:
    start = now()
    fn()
    return now() - start


# --- 8a/8b: recovery ---------------------------------------------------------


def recovery(cfg: Config, scratch: Scratch) -> list[Row]:
    appends = 100_000 if cfg.mode == "quick" else 1_000_000
    sets = appends // 10
    progress(f"figure 8a: building a journal of {appends:.0e} appends + "
             f"{sets:.0e} sets")
    root = scratch.path("r2-recover")
    path = build_scan_journal(root, appends, sets)
    size = sum(os.path.getsize(p) for _, p in list_segments(path))
    payloads = scratch.path("r2-payloads")
    total = bare_payloads(path, payloads)
    cli = _console_script("artiq-recover")
    outs = iter(range(10 ** 6))

    def run_cli() -> float:
        out = os.path.join(root, f"out-{next(outs)}")
        start = now()
        proc = subprocess.run([cli, "-q", "--output", out,
                               os.path.join(root, "results")],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        elapsed = now() - start
        if proc.returncode != 0:
            raise RuntimeError(f"artiq-recover exit {proc.returncode}: "
                               f"{proc.stderr.decode()[-500:]}")
        shutil.rmtree(out)
        return elapsed

    cands = {"floor": lambda: _timed(lambda: floor_unpacker(payloads)),
             "reader": lambda: _timed(lambda: reader_decode(path)),
             "walk": lambda: _timed(lambda: header_walk(path))}
    if cli:
        cands["cli"] = run_cli
    samples = interleave(cands, cfg.recovery_rounds)
    floor = median_of(samples, "floor")
    rows = []
    note = (f"{total:,} records, {size / 1e6:.0f} MB; floor = streaming "
            f"msgpack.Unpacker over the bare payloads, "
            f"{total / floor / 1e6:.2f} M rec/s")
    if cli:
        r = median_ratio(samples, lambda s: s["floor"], lambda s: s["cli"])
        rows.append(Row("8a", "artiq-recover CLI, whole process, rec/s",
                        f"{total / median_of(samples, 'cli') / 1e6:.2f} M/s",
                        f"{total / floor / 1e6:.2f} M/s", r, ">= 0.33",
                        check(r, ">= 0.33"), note=note))
    else:
        rows.append(Row("8a", "artiq-recover CLI", "n/a", status="n/a",
                        note="console script not installed"))
    r = median_ratio(samples, lambda s: s["floor"], lambda s: s["reader"])
    rows.append(Row("8a", "decode only, JournalReader.iter_batches, rec/s",
                    f"{total / median_of(samples, 'reader') / 1e6:.2f} M/s",
                    f"{total / floor / 1e6:.2f} M/s", r, "", "INFO",
                    note="speed ratio (floor time / value time)"))
    r = median_ratio(samples, lambda s: s["floor"], lambda s: s["walk"])
    rows.append(Row("8a", "header walk only (pure-Python bound), rec/s",
                    f"{total / median_of(samples, 'walk') / 1e6:.2f} M/s",
                    f"{total / floor / 1e6:.2f} M/s", r, "", "INFO",
                    note="a Python loop stepping from header to header, "
                         "nothing else: the ceiling of any reader that "
                         "touches each record in Python"))
    rows.append(_recovery_memory(root, appends))
    return rows


_MEMORY_CHILD = r"""
import sys, gc
def hwm():
    # VmHWM belongs to this process's memory map; ru_maxrss would carry
    # the parent's high-water mark across fork + exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
import h5py, numpy, msgpack
import artiq_journal.recovery, artiq_journal.replay
base = hwm()
report = artiq_journal.recovery.recover(sys.argv[1], output=sys.argv[2])
assert report.runs[0].outcome in ("recovered", "recovered_partial"), report
peak = hwm()
print(base, peak)
"""


def _recovery_memory(root: str, appends: int) -> Row:
    out = os.path.join(root, "out-mem")
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD,
                           os.path.join(root, "results"), out],
                          capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        return Row("8b", "recovery peak memory per float", "ERROR",
                   status="ERROR", note=proc.stderr[-300:])
    base, peak = (int(v) for v in proc.stdout.split())
    per = (peak - base) * 1024 / appends
    return Row("8b", "recovery peak memory per appended float",
               f"{per:.1f} B", "8 B (float64)", per / 8, "<= 16 B",
               "PASS" if per <= 16 else "MISS",
               note=f"VmHWM after recover() minus after importing "
                    f"h5py/numpy/artiq_journal (base {base / 1024:.0f} MiB)")


# --- 8c: resume ------------------------------------------------------------------


def resume(cfg: Config, scratch: Scratch) -> list[Row]:
    from artiq_journal.worker_hooks.resume import load_checkpoint
    n = 100_000 if cfg.mode == "quick" else 1_000_000
    progress(f"figure 8c: resume of {n:.0e} records, checkpoint at 99 %")
    path = build_scan_journal(scratch.path("r2-resume"), n, 0,
                              checkpoint_at=0.99)
    samples = interleave({
        "replay": lambda: _timed(lambda: replay(path)),
        "resume": lambda: _timed(lambda: load_checkpoint(path)),
    }, cfg.recovery_rounds)
    r = median_ratio(samples, lambda s: s["resume"], lambda s: s["replay"])
    return [Row("8c", "resume (load_checkpoint) / one replay()",
                f"{median_of(samples, 'resume'):.2f} s",
                f"{median_of(samples, 'replay'):.2f} s", r, "<= 1.2",
                check(r, "<= 1.2"))]


# --- 8d: arrays --------------------------------------------------------------------


def arrays(cfg: Config, scratch: Scratch) -> list[Row]:
    mib = 32 if cfg.mode == "quick" else 64
    count = 4 if cfg.mode == "quick" else 8
    progress(f"figure 8d: {count} x {mib} MiB set arrays")
    arr = np.random.default_rng(1).random(mib * (1 << 20) // 8)
    nbytes = arr.nbytes * count
    runs = iter(range(10 ** 6))

    def floor() -> float:
        p = scratch.path(f"r2-floor-{next(runs)}")
        start = now()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        for _ in range(count):
            view = memoryview(arr).cast("B")
            while view:
                view = view[os.write(fd, view):]
        os.close(fd)
        elapsed = now() - start
        os.unlink(p)
        return elapsed

    def ours(pol: str) -> float:
        p = scratch.path(f"r2-arr-{pol}-{next(runs)}")
        start = now()
        w = JournalWriter(p, fsync=pol, heartbeat_interval=None)
        for i in range(count):
            w.append(REC_SET, [f"a{i}", arr, {}, False, False, True])
        elapsed = now() - start
        w.abandon()
        shutil.rmtree(p)
        return elapsed

    samples = interleave({"floor": floor, "never": lambda: ours("never"),
                          "group": lambda: ours("group")},
                         max(3, cfg.array_rounds // 2))
    rows = []
    for pol in ("never", "group"):
        r = median_ratio(samples, lambda s: s["floor"], lambda s: s[pol])
        rows.append(Row("8d", f"{count} x {mib} MiB set, fsync={pol}, GB/s",
                        f"{nbytes / median_of(samples, pol) / 1e9:.2f}",
                        f"{nbytes / median_of(samples, 'floor') / 1e9:.2f}",
                        r, ">= 0.7", check(r, ">= 0.7"),
                        note="speed ratio; floor = os.write of the same "
                             "bytes to a fresh file"))
    return rows


# --- 8e: per-op cost ----------------------------------------------------------


_HEAD = struct.Struct("<II")


def _floor_batch(fd: int, records: list) -> float:
    pack = msgpack.Packer(use_bin_type=True).pack
    crc32, head, write = zlib.crc32, _HEAD.pack, os.write
    start = time.thread_time()
    for rec in records:
        payload = pack(rec)
        write(fd, head(crc32(payload), len(payload)) + payload)
    return (time.thread_time() - start) / len(records)


def per_op(cfg: Config, scratch: Scratch) -> list[Row]:
    progress("figure 8e: per-op cost")
    n = 2_000
    small = np.arange(128, dtype=np.float64)   # 1 KiB
    ops = {
        # name: (setup value, call(dm, i), floor record(i), target)
        "np.float64 append": ([], lambda dm, i: dm.append_to(KEY, F64[i]),
                              lambda i: (REC_APPEND, KEY, 0.5 * i), "<= 1.5"),
        "mutate, slice index": (
            np.zeros(64), lambda dm, i: dm.mutate(KEY, SLICE, 1.5),
            lambda i: (REC_MUTATE, KEY, [1, 9, 2], 1.5), "<= 2.0"),
        "mutate, tuple index": (
            np.zeros((8, 8)), lambda dm, i: dm.mutate(KEY, TUP, 1.5),
            lambda i: (REC_MUTATE, KEY, [[0, 4], [2, 6]], 1.5), "<= 2.0"),
        "1 KiB array append": (
            [], lambda dm, i: dm.append_to(KEY, small),
            lambda i: (REC_APPEND, KEY, SMALL_BYTES), "<= 1.5"),
        "float append": ([], lambda dm, i: dm.append_to(KEY, 0.5 * i),
                         lambda i: (REC_APPEND, KEY, 0.5 * i), "keep ~1.23"),
    }
    global F64, SLICE, TUP, SMALL_BYTES
    F64 = [np.float64(0.5 * i) for i in range(n)]
    SLICE = slice(1, 9, 2)
    TUP = ((0, 4), (2, 6))
    SMALL_BYTES = small.tobytes() + b"x" * 20  # + the ext's array header
    rows = []
    fpath = scratch.path("r2-op-floor")
    fd = os.open(fpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for name, (initial, call, floor_rec, target) in ops.items():
            base = subjects.plain()
            live = subjects.journaled(scratch.path(f"r2-op-{len(rows)}"),
                                      "never")
            floor_records = [floor_rec(i) for i in range(n)]

            def batch(subject):
                dm = subject.dm
                dm.set(KEY, initial.copy() if hasattr(initial, "copy")
                       else list(initial), {}, False, False, True)
                start = time.thread_time()
                for i in range(n):
                    call(dm, i)
                return (time.thread_time() - start) / n
            try:
                samples = interleave({
                    "plain": lambda: batch(base),
                    "journaled": lambda: batch(live),
                    "floor": lambda: _floor_batch(fd, floor_records)},
                    max(7, cfg.rounds))
            finally:
                live.close()

            def extra(s):
                return s["journaled"] - s["plain"]
            r = median_ratio(samples, extra, lambda s: s["floor"])
            status = "INFO" if target.startswith("keep") else check(r, target)
            rows.append(Row("8e", f"added cost / floor: {name}",
                            f"+{fmt_ns(statistics.median(map(extra, samples)))}",
                            fmt_ns(median_of(samples, "floor")), r, target,
                            status))
        rows[0].note = ("CPU time of the calling thread; value = journaled "
                        "call minus the same call un-journaled; floor = "
                        "msgpack pack + CRC + os.write of a record of the "
                        "same size with plain msgpack values")
    finally:
        os.close(fd)
    return rows


# --- 8f: snapshots -----------------------------------------------------------------


def checkpoint_state(mb: int) -> dict:
    """A run state of about ``mb`` MB of msgpack: float lists (a scan) and
    a few arrays."""
    floats = (mb << 20) // 2 // 9
    return {"run_info": RUN_INFO, "stage": "run", "stage_time": 0.0,
            "run_time": 0.0, "checkpoint": {"i": 1}, "checkpoint_seq": 1,
            "resumed_from": None,
            "datasets": {"format": 1, "datasets": [
                ["scan.x", [i * 0.5 for i in range(floats)], {}, False,
                 False, True],
                ["scan.img", np.ones((mb << 20) // 2 // 8), {}, False, False,
                 True]], "archive": []}}


def snapshots(cfg: Config, scratch: Scratch) -> list[Row]:
    mb = 20 if cfg.mode == "quick" else 106   # ~111 MB
    progress(f"figure 8f: checkpoint of a ~{mb * 1.05:.0f} MB state")
    state = checkpoint_state(mb)
    runs = iter(range(10 ** 6))

    def ours() -> float:
        p = scratch.path(f"r2-snap-{next(runs)}")
        w = JournalWriter(p, fsync="never", heartbeat_interval=None)
        w.append(REC_STAGE, ["run", 0.0])
        start = now()
        w.write_snapshot(state)
        elapsed = now() - start
        w.abandon()
        shutil.rmtree(p)
        return elapsed

    def floor() -> float:
        p = scratch.path(f"r2-pickle-{next(runs)}")
        start = now()
        with open(p, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        elapsed = now() - start
        os.unlink(p)
        return elapsed

    samples = interleave({"floor": floor, "ours": ours},
                         max(3, cfg.snapshot_rounds // 2))
    r = median_ratio(samples, lambda s: s["ours"], lambda s: s["floor"])
    p = scratch.path("r2-snap-mem")
    w = JournalWriter(p, fsync="never", heartbeat_interval=None)
    size_probe = len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    tracemalloc.start()
    w.write_snapshot(state)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    snap_size = os.path.getsize(os.path.join(p, "checkpoint"))
    w.abandon()
    shutil.rmtree(p)
    return [Row("8f", "checkpoint / pickle.dump + fsync of the same state",
                f"{median_of(samples, 'ours'):.2f} s",
                f"{median_of(samples, 'floor'):.2f} s", r, "<= 1.3",
                check(r, "<= 1.3"),
                note=f"snapshot file {snap_size / 1e6:.0f} MB, pickle "
                     f"{size_probe / 1e6:.0f} MB"),
            Row("8f", "checkpoint peak extra memory / state size",
                f"{peak / 1e6:.0f} MB", f"{snap_size / 1e6:.0f} MB",
                peak / snap_size, "<= 1.5", check(peak / snap_size, "<= 1.5"),
                note="tracemalloc peak during write_snapshot")]


# --- 8g: fdatasyncs per point ------------------------------------------------


def points(cfg: Config, scratch: Scratch) -> list[Row]:
    progress("figure 8g: fdatasyncs per point")
    ops = CountingFileOps()
    w = JournalWriter(scratch.path("r2-points"), fsync="always",
                      heartbeat_interval=None, ops=ops)
    w.append(REC_SET, [KEY, [], {}, False, False, True])
    rows = []
    ops.reset()
    for i in range(100):
        for _ in range(3):
            w.append(REC_APPEND, [KEY, 0.5])
    plain = ops.reset()
    rows.append(Row("8g", "fdatasyncs per point of 3 appends, no point()",
                    f"{sum(plain) / 100:.2f}", status="INFO"))
    if hasattr(w, "begin_point"):
        for i in range(100):
            w.begin_point()
            for _ in range(3):
                w.append(REC_APPEND, [KEY, 0.5])
            w.end_point()
        pointed = ops.reset()
        per = sum(pointed) / 100
        rows.append(Row("8g", "fdatasyncs per point of 3 appends, point()",
                        f"{per:.2f}", "1", per, "<= 1",
                        "PASS" if per <= 1 else "MISS"))
    else:
        rows.append(Row("8g", "point()", "n/a", status="n/a",
                        note="no point() in this version"))
    w.close()
    return rows


# --- 8h: scan of a tree of finished journals ---------------------------------


def build_finished_tree(root: str, runs: int) -> str:
    """``runs`` kept journals closed with results_written beside ARTIQ's
    complete results files, each marked by a first artiq-recover."""
    import h5py
    from artiq_journal.journal.constants import REC_CLOSE
    results = os.path.join(root, "results")
    for rid in range(1, runs + 1):
        hour = os.path.join(results, "2025-01-01", f"{rid % 24:02d}")
        path = os.path.join(hour, f"{rid:09d}-Bench.journal")
        w = JournalWriter(path, fsync="never", heartbeat_interval=None)
        w.append(REC_RUN_INFO, dict(RUN_INFO, rid=rid))
        w.append(REC_STAGE, ["run", 0.0])
        w.append(REC_SET, [KEY, [1.0, 2.0], {}, False, False, True])
        w.append(REC_STAGE, ["results_written", 1.0])
        w.close("results_written")
        with h5py.File(os.path.join(hour, f"{rid:09d}-Bench.h5"), "w") as f:
            f.create_group("datasets")[KEY] = [1.0, 2.0]
            f.create_group("archive")
            f["rid"] = np.int64(rid)
            f["artiq_version"] = "bench"
            f["start_time"] = 0.0
            f["run_time"] = 0.0
            f["expid"] = "{}"
    return results


def scan_tree(cfg: Config, scratch: Scratch, runs: int | None = None
              ) -> list[Row]:
    from artiq_journal.recovery import recover
    runs = runs or (1_000 if cfg.mode == "quick" else 10_000)
    progress(f"figure 8h: building a tree of {runs} finished journals")
    # Copies of a real finished journal + results file, each with the done
    # marker a first artiq-recover writes (fig_scale.build_tree_fast).
    import fig_scale
    results = fig_scale.build_tree_fast(scratch.path("r2-tree"), runs)
    outcomes = {r.outcome for r in recover(results).runs}

    def listing() -> float:
        start = now()
        n = 0
        for dirpath, dirnames, _ in os.walk(results):
            n += len(dirnames)
        return now() - start

    def scan() -> float:
        start = now()
        report = recover(results)
        assert len(report.runs) == runs
        return now() - start
    samples = interleave({"walk": listing, "scan": scan},
                         max(3, cfg.recovery_rounds))
    per = median_of(samples, "scan") / runs
    return [Row("8h", "recovery scan of finished journals, per journal",
                fmt_ns(per), fmt_ns(median_of(samples, "walk") / runs),
                per / 0.2e-3, "<= 0.2 ms", "PASS" if per <= 0.2e-3
                else "MISS",
                note=f"{runs} journals, outcomes {sorted(outcomes)}; floor "
                     "= os.walk of the tree; ratio = value / 0.2 ms")]


PARTS = {"a": recovery, "c": resume, "d": arrays, "e": per_op,
         "f": snapshots, "g": points, "h": scan_tree}


def round2(cfg: Config, scratch: Scratch, only: str = "acdefgh"
           ) -> list[Row]:
    rows: list[Row] = []
    for key, fn in PARTS.items():
        if key not in only:
            continue
        try:
            rows.extend(fn(cfg, scratch))
        except Exception as exc:  # one part failing keeps the others
            import traceback
            traceback.print_exc()
            rows.append(Row("8" + key, "figure failed", "ERROR",
                            status="ERROR",
                            note=f"{type(exc).__name__}: {exc}"))
    return rows


if __name__ == "__main__":
    import argparse
    from common import table
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="acdefgh")
    args = parser.parse_args()
    config = Config.quick() if args.quick else Config()
    scratch = Scratch()
    try:
        out = round2(config, scratch, args.only)
    finally:
        scratch.close()
    print(table(out))
