"""Scale evidence (opt-in, ``bench/run.py --long`` or alone): recovery of
journals of 1e6 and 1e7 records (records/s and peak bytes per record, in a
child process as ``artiq-recover`` runs), and recovery scans of trees of
1e4 and 1e5 runs (time per journal).  Flat = no degradation with size.

    python bench/fig_scale.py [--records 1e6,1e7] [--runs 1e4,1e5]
                              [--plot bench/scale.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fig_round2  # noqa: E402

_CHILD = r"""
import resource, sys, time
import h5py, numpy, msgpack
import artiq_journal.recovery
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
report = artiq_journal.recovery.recover(sys.argv[1], output=sys.argv[2])
elapsed = time.perf_counter() - t
assert report.runs[0].outcome == "recovered", report.runs[0].to_dict()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak, elapsed, report.runs[0].records_applied)
"""


def recovery_point(root: str, n: int) -> dict:
    path = fig_round2.build_scan_journal(root, n, n // 10)
    size = sum(os.path.getsize(os.path.join(path, f))
               for f in os.listdir(path) if f.startswith("segment-"))
    out = os.path.join(root, "out")
    proc = subprocess.run([sys.executable, "-c", _CHILD,
                           os.path.join(root, "results"), out],
                          capture_output=True, text=True, check=True)
    base, peak, elapsed, records = proc.stdout.split()
    shutil.rmtree(root)
    records = int(records)
    return {"records": records, "journal_bytes": size,
            "seconds": float(elapsed),
            "records_per_s": records / float(elapsed),
            "peak_bytes_per_record": (int(peak) - int(base)) * 1024
            / records}


def build_tree_fast(root: str, runs: int) -> str:
    """``runs`` finished journals (closed ``results_written``) beside their
    complete results files, each with the done marker a first
    ``artiq-recover`` leaves: copies of one real template (the writer's and
    h5py's own files; each results file's ``rid`` set to its run's, the
    marker written as recover.py writes it, without its fsyncs)."""
    import h5py
    from artiq_journal.recovery.discover import fingerprint
    template = fig_round2.build_finished_tree(os.path.join(root, "t"), 1)
    src_dir = os.path.join(template, "2025-01-01", "01")
    journal = os.path.join(src_dir, "000000001-Bench.journal")
    h5 = os.path.join(src_dir, "000000001-Bench.h5")
    results = os.path.join(root, "results")
    for rid in range(1, runs + 1):
        hour = os.path.join(results, f"2025-01-{1 + rid // 24000:02d}",
                            f"{rid % 24:02d}")
        os.makedirs(hour, exist_ok=True)
        name = f"{rid:09d}-Bench"
        dst = os.path.join(hour, name + ".journal")
        os.mkdir(dst)
        for f in os.listdir(journal):
            if f.startswith("segment-") or f == "lock":
                shutil.copyfile(os.path.join(journal, f),
                                os.path.join(dst, f))
        target = os.path.join(hour, name + ".h5")
        shutil.copyfile(h5, target)
        with h5py.File(target, "r+") as f:
            f["rid"][()] = rid
        st = os.lstat(target)
        with open(os.path.join(dst, "recovered"), "w") as f:
            json.dump({"format": 1, "outcome": "already_complete",
                       "results_file": name + ".h5",
                       "fingerprint": fingerprint(dst), "last_seq": 5,
                       "marked_at": "2026-12-03T00:00:00+00:00",
                       "results_stat": [st.st_ino, st.st_size,
                                        st.st_mtime_ns, st.st_ctime_ns]},
                      f)
    shutil.rmtree(os.path.join(root, "t"))
    return results


def tree_point(root: str, runs: int) -> dict:
    from artiq_journal.recovery import recover
    results = build_tree_fast(root, runs)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        report = recover(results)
        times.append((time.perf_counter() - t) / runs)
    outcomes = sorted({r.outcome for r in report.runs})
    shutil.rmtree(root)
    return {"runs": runs, "scan_s_per_run": sorted(times)[1],
            "outcomes": outcomes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", default="1e6,1e7")
    parser.add_argument("--runs", default="1e4,1e5")
    parser.add_argument("--plot")
    parser.add_argument("--json")
    args = parser.parse_args()
    base = os.environ.get("BENCH_DIR") or None
    out = {"recovery": [], "tree": []}
    for n in [int(float(x)) for x in args.records.split(",") if x]:
        root = tempfile.mkdtemp(prefix="scale-rec-", dir=base)
        point = recovery_point(root, n)
        print(json.dumps(point), flush=True)
        out["recovery"].append(point)
    for n in [int(float(x)) for x in args.runs.split(",") if x]:
        root = tempfile.mkdtemp(prefix="scale-tree-", dir=base)
        point = tree_point(root, n)
        print(json.dumps(point), flush=True)
        out["tree"].append(point)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        plot(out, args.plot)
    return 0


def plot(out: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rec = out["recovery"]
    if rec:
        ax = axes[0]
        xs = [p["records"] for p in rec]
        ax.plot(xs, [p["records_per_s"] / 1e5 for p in rec], "o-",
                label="records/s (x 100 k)")
        ax.plot(xs, [p["peak_bytes_per_record"] for p in rec], "s-",
                label="peak bytes / record")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("records in the journal")
        ax.set_title("recovery of one journal")
        ax.legend()
    tree = out["tree"]
    if tree:
        ax = axes[1]
        xs = [p["runs"] for p in tree]
        ax.plot(xs, [p["scan_s_per_run"] * 1e3 for p in tree], "o-",
                label="scan of marked runs (ms / run)")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("finished runs in the tree")
        ax.set_title("recovery scan of a results tree")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
