"""Figures 5 and 7: recovery speed, and how appending and recovering scale
with the journal's length.

5. Rebuilding a run from N scalar ``append_to`` records, against the floor:
   a pure-Python loop that reads every record, checks its CRC and
   ``msgpack.unpackb``s its payload (no state, no checks beyond the CRC).
   Measured for ``replay()`` (the state rebuild every recovery does) and the
   whole ``recover()`` (discovery, state, HDF5 file, publish).  Target:
   speed >= 0.5x the floor's.  The journal and the floor loop are
   ``bench/bench_recover.py``'s (the recovery engineer's own benchmark),
   so both benchmarks measure the same thing the same way.
7. Appending to, and replaying, journals of N records, for N from 1e4 to
   1e6 (1e7 with ``--long``): the per-record cost must not grow with N.
"""

from __future__ import annotations

import os
import shutil

from common import (IMPORT_PROBLEMS, Config, Row, Scratch, check, fmt_ns,
                    interleave, median_of, median_ratio, now, optional,
                    progress)

from artiq_journal.journal.constants import REC_APPEND, REC_SET
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.replay import replay

KEY = "scan.counts"


def _recover_callable(scratch: Scratch):
    """``(fn(journal_path) -> None, "")`` running ``recover()`` into a fresh
    output directory (the journal's own tree is never marked done, so every
    round recovers again), or ``(None, why)``."""
    module = optional("artiq_journal.recovery")
    fn = getattr(module, "recover", None) if module else None
    if fn is None:
        return None, IMPORT_PROBLEMS.get("artiq_journal.recovery",
                                         "artiq_journal.recovery has no "
                                         "recover()")

    def run(journal_path: str) -> None:
        out = scratch.path("recovered")
        try:
            report = fn(journal_path, output=out)
            outcomes = [r.outcome for r in report.runs]
            if outcomes != ["recovered"]:
                raise RuntimeError(f"recover() outcomes {outcomes}")
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return run, ""


def recovery(cfg: Config, scratch: Scratch) -> list[Row]:
    import bench_recover  # the recovery engineer's benchmark: same journal
    n = cfg.recovery_records
    progress(f"figure 5: recovery of {n:,} appends")
    root = scratch.path("recovery")
    path = bench_recover.build_journal(root, n)
    rec, why = _recover_callable(scratch)
    cands = {"loop": lambda: _timed(bench_recover.floor_loop, path),
             "replay": lambda: _timed(replay, path)}
    if rec is not None:
        cands["recover"] = lambda: _timed(rec, path)
    samples = interleave(cands, cfg.recovery_rounds, warmup=0)
    floor = median_of(samples, "loop")
    rows = []
    for key, name in (("replay", f"replay() {n:,} appends (state rebuild)"),
                      ("recover", f"recover() {n:,} appends (state + HDF5)")):
        if key not in cands:
            rows.append(Row("5", name, "n/a", target=">= 0.5", status="n/a",
                            note=why))
            continue
        speed = median_ratio(samples, lambda s: s["loop"], lambda s: s[key])
        rows.append(Row("5", name,
                        f"{n / median_of(samples, key) / 1e6:.2f} M rec/s",
                        f"{n / floor / 1e6:.2f} M rec/s", speed, ">= 0.5",
                        check(speed, ">= 0.5"),
                        note="ratio = speed / speed of the pure-Python "
                             "read+CRC+unpackb loop (bench_recover.floor_loop)"
                             if key == "replay" else "",
                        data={"samples": samples}))
    shutil.rmtree(root, ignore_errors=True)
    return rows


def _timed(fn, *args) -> float:
    t0 = now()
    fn(*args)
    return now() - t0


# --- figure 7 ---------------------------------------------------------------------


def scaling(cfg: Config, scratch: Scratch) -> tuple[list[Row], dict]:
    """Per-record cost of appending to, and of replaying, journals of
    growing length N; rows plus the curve {N: {"append": s, "replay": s}}.

    Append: every journal is first filled to N records (``fsync="group"``),
    then batches of appends go to each journal in turn (interleaved like
    figure 1): the marginal cost of a record at length N.  Replay: in each
    round every journal is replayed (a short one repeatedly, to fill about
    as much time as the longest), order alternating between rounds.
    """
    sizes = cfg.scaling_sizes
    progress(f"figure 7: scaling over {', '.join(f'{n:.0e}' for n in sizes)}")
    writers, paths, fill = {}, {}, {}
    for n in sizes:
        results = scratch.path(f"scale-{n}")
        os.makedirs(results)
        path = os.path.join(results, "000000001-Bench.journal")
        writer = JournalWriter(path, fsync="group")
        writer.append(REC_SET, [KEY, [], {}, False, False, True])
        append = writer.append
        t0 = now()
        for i in range(n):
            append(REC_APPEND, [KEY, i * 0.25])
        fill[n] = (now() - t0) / n
        writers[n], paths[n] = writer, path
    batch = [i * 0.5 for i in range(cfg.hot_calls)]

    def append_batch(writer: JournalWriter) -> float:
        append = writer.append
        t0 = now()
        for v in batch:
            append(REC_APPEND, [KEY, v])
        return (now() - t0) / len(batch)

    try:
        append_samples = interleave(
            {n: (lambda w=w: append_batch(w)) for n, w in writers.items()},
            cfg.hot_rounds)
    finally:
        for w in writers.values():
            w.close()

    largest_s = None

    def replay_cost(n: int) -> float:
        """Seconds per record of replay(), repeated to last about as long
        as one replay of the largest journal."""
        total = records = 0
        while True:
            t0 = now()
            result = replay(paths[n])
            total += now() - t0
            records += result.records_applied
            if result.records_applied < n:
                raise RuntimeError(f"replay applied {result.records_applied}"
                                   f" of {n} records")
            if largest_s is None or total >= 0.8 * largest_s:
                return total / records

    replayed = [n for n in sizes if n <= cfg.scaling_replay_max]
    largest_s = replay_cost(replayed[-1]) * replayed[-1]  # also a warm-up
    replay_samples = interleave({n: (lambda n=n: replay_cost(n))
                                 for n in replayed}, cfg.scaling_rounds,
                                warmup=0)
    curve = {n: {"append": median_of(append_samples, n),
                 "replay": (median_of(replay_samples, n) if n in replayed
                            else None),
                 "fill": fill[n]} for n in sizes}
    rows = []
    for what, label, samples, done in (
            ("append", "append (fsync=group)", append_samples, sizes),
            ("replay", "replay", replay_samples, replayed)):
        small, large = done[0], done[-1]
        for n in done:
            rows.append(Row("7", f"{label} per record at N={n:.0e}",
                            fmt_ns(curve[n][what]),
                            f"{1 / curve[n][what] / 1e3:.0f} k rec/s"))
        ratio = median_ratio(samples, lambda s: s[large], lambda s: s[small])
        rows.append(Row("7", f"{label}: cost at N={large:.0e} / N={small:.0e}",
                        fmt_ns(curve[large][what]), fmt_ns(curve[small][what]),
                        ratio, "<= 1.25", check(ratio, "<= 1.25"),
                        note=("marginal cost of a record appended to a "
                              "journal already holding N" if what == "append"
                              else "replay of the whole journal, per record"
                              + ("" if tuple(done) == tuple(sizes) else
                                 f" (replayed up to N={large:.0e} in "
                                 f"{cfg.mode} mode)"))
                        + f"; median of {len(samples)} interleaved rounds",
                        data={"samples": samples}))
    rows.append(Row("7", "filling the journals (fsync=group), per record",
                    ", ".join(f"{fmt_ns(fill[n])} @{n:.0e}" for n in sizes),
                    note="one pass each, not interleaved: context only"))
    return rows, curve
