"""Cost of the automatic live file on the experiment: run() time of a scan
of 10^6 appended points (``append_to_dataset`` + a checkpoint every 10^4
points) with ``ARTIQ_JOURNAL_LIVE_S=5`` vs without, measured side by side
in one run (interleaved A B B A ..., median of per-round ratios).

Each run is a real ``artiq-journal run`` worker subprocess (journal on,
fsync ``group``); the experiment times its own ``run()`` and stores the
time as a dataset.  The live file is refreshed by a side process, so the
cost on the experiment thread is one pipe write per checkpoint plus the
competition for the machine's cores.  Target: ratio < 1.03.

    .venv/bin/python bench/fig_live.py [--quick] [--rounds N] [--points N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

import h5py  # noqa: E402

from artiq_journal.runner import run_experiment  # noqa: E402

SCAN = textwrap.dedent('''
    import time
    from artiq_journal.runner.experiment import *
    from artiq_journal.worker_hooks import JournalResumable


    class Scan(JournalResumable, EnvExperiment):
        def build(self):
            self.setattr_argument("points", NumberValue(1000000))

        def run(self):
            n = int(self.points)
            self.set_dataset("ys", [])
            t0 = time.perf_counter()
            for i in range(n):
                self.append_to_dataset("ys", i * 0.5)
                if i % 10000 == 9999:
                    self.checkpoint(i=i + 1)
            self.set_dataset("run_seconds", time.perf_counter() - t0)
''')


def one_run(directory: str, exp: str, points: int, live: bool,
            rid: int) -> tuple[float, int]:
    env = {"ARTIQ_JOURNAL_LIVE_S": "5" if live else "0"}
    done = run_experiment(exp, arguments={"points": points}, rid=rid,
                          results_dir=os.path.join(directory, "results"),
                          env=env, timeout=3600)
    if not done.ok:
        raise SystemExit(f"run failed: {done.returncode}")
    with h5py.File(done.h5_path, "r") as f:
        seconds = float(f["datasets/run_seconds"][()])
        assert len(f["datasets/ys"]) == points
    os.unlink(done.h5_path)
    return seconds, 0


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10^5 points, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--points", type=int, default=None)
    args = parser.parse_args(argv)
    points = args.points or (100_000 if args.quick else 1_000_000)
    rounds = args.rounds or (2 if args.quick else 3)
    ratios, times = [], {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="fig_live-") as directory:
        exp = os.path.join(directory, "scan.py")
        with open(exp, "w") as f:
            f.write(SCAN)
        rid = 0
        for r in range(rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            got = {}
            for live in order:
                got[live], _ = one_run(directory, exp, points, live, rid)
                times[live].append(got[live])
                rid += 1
            ratios.append(got[True] / got[False])
            print(f"round {r + 1}: without {got[False]:.3f} s, with live "
                  f"file (5 s) {got[True]:.3f} s, ratio "
                  f"{ratios[-1]:.3f}", flush=True)
    ratio = statistics.median(ratios)
    print(f"live file, run() of {points} appended points: median ratio "
          f"{ratio:.3f} (target < 1.03); without "
          f"{statistics.median(times[False]):.3f} s, with "
          f"{statistics.median(times[True]):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
