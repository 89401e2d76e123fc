"""Run every benchmark and print one table.

    python bench/run.py [--quick | --long] [--plot FILE.png] [--json]
                        [--only 1,2,peers]

Every target is a ratio of two things measured side by side in this run
(interleaved, repeated, median): see bench/README.md for what each figure
means and how to read it.  Exit status: 0 when every measured target
passes, 1 when one misses, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# common puts src/ on sys.path when artiq_journal is not importable.
from common import Config, Row, Scratch, fmt_ns, progress, table  # noqa: E402

FIGURES = ("1", "2", "3", "4", "5", "6", "7", "8", "peers")


def _figure_functions():
    import fig_arrays
    import fig_hotpath
    import fig_recovery
    import fig_snapshot
    import fig_round2
    return {
        "8": fig_round2.round2,
        "1": fig_hotpath.hot_path,
        "2": fig_hotpath.group_commit,
        "3": fig_hotpath.per_op_durability,
        "4": fig_arrays.arrays,
        "5": fig_recovery.recovery,
        "6": fig_snapshot.snapshots,
    }


def _peer_rows(curves: dict) -> list[Row]:
    """One row per (peer, N): its per-point cost, and how many times ours."""
    ours_label = "us: journaled append_to, fsync=group"
    ours = curves[ours_label]
    rows = []
    for label, curve in curves.items():
        if label.startswith("_") or label == ours_label:
            continue
        for n, cost in curve.items():
            rows.append(Row("peers", f"{label}, N={n:.0e}", fmt_ns(cost),
                            fmt_ns(ours[n]), cost / ours[n], "", "INFO"))
    for n, cost in ours.items():
        rows.append(Row("peers", f"{ours_label}, N={n:.0e}", fmt_ns(cost)))
    rows[0].note = ("floor column = us (journaled append_to, group) at the "
                    "same N; ratio = peer cost / ours")
    if "_note" in curves:
        rows[-1].note = curves["_note"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="artiq-journal benchmarks: each figure against its "
                    "floor measured in the same run.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="smaller sizes and fewer rounds (< 60 s)")
    mode.add_argument("--long", action="store_true",
                      help="also scale to 1e7 records (several minutes)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="save the per-point-cost and scaling plot "
                             "(needs matplotlib)")
    parser.add_argument("--json", action="store_true",
                        help="print the rows and curves as JSON instead of "
                             "the table")
    parser.add_argument("--only", metavar="LIST",
                        help=f"comma-separated figures from "
                             f"{','.join(FIGURES)} (default: all)")
    args = parser.parse_args(argv)
    only = FIGURES if not args.only else tuple(args.only.split(","))
    unknown = set(only) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    cfg = (Config.quick() if args.quick else
           Config.long() if args.long else Config())

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    scratch = Scratch()
    rows: list[Row] = []
    curves: dict = {}
    try:
        funcs = _figure_functions()
        for fig in FIGURES:
            if fig not in only:
                continue
            try:
                if fig in funcs:
                    rows.extend(funcs[fig](cfg, scratch))
                elif fig == "7":
                    import fig_recovery
                    more, curves["scaling"] = fig_recovery.scaling(cfg,
                                                                   scratch)
                    rows.extend(more)
                elif fig == "scale":
                    pass
                elif fig == "peers":
                    import peers
                    curves["peers"] = peers.peers(cfg, scratch)
                    rows.extend(_peer_rows(curves["peers"]))
            except Exception as exc:
                traceback.print_exc()
                rows.append(Row(fig, "figure failed", "ERROR",
                                status="ERROR",
                                note=f"{type(exc).__name__}: {exc}"))
        if cfg.mode == "long" and "8" in only:
            # Scale evidence (bench/fig_scale.py): 1e6/1e7-record
            # recoveries, 1e4/1e5-run trees.
            import fig_scale
            for n in (10**6, 10**7):
                point = fig_scale.recovery_point(scratch.path(f"s{n}"), n)
                rows.append(Row("8s", f"recovery of {n:.0e} appends "
                                f"(+10% sets)",
                                f"{point['records_per_s'] / 1e6:.2f} M/s",
                                note=f"{point['peak_bytes_per_record']:.1f} "
                                     "peak bytes/record"))
            for n in (10**4, 10**5):
                point = fig_scale.tree_point(scratch.path(f"t{n}"), n)
                rows.append(Row("8s", f"scan of {n:.0e} finished runs",
                                fmt_ns(point["scan_s_per_run"]),
                                note=f"outcomes {point['outcomes']}"))
    finally:
        scratch.close()
    elapsed = time.perf_counter() - started

    header = (f"artiq-journal bench ({cfg.mode}, {elapsed:.0f} s) | Python "
              f"{platform.python_version()} | {os.cpu_count()} CPUs, load "
              f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} | "
              f"{platform.platform()}")
    if args.json:
        print(json.dumps({"header": header, "config": vars(cfg),
                          "rows": [r.to_dict() for r in rows],
                          "curves": _jsonable(curves)}, indent=1))
    else:
        print(header)
        print(table(rows))
        counts = {s: sum(r.status == s for r in rows)
                  for s in ("PASS", "MISS", "n/a", "ERROR")}
        print("\n" + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if args.plot:
        if "peers" not in curves:
            progress("--plot needs the peers figure; skipped")
        else:
            # After the table: a plotting problem must not lose the figures.
            import plot
            plot.save(args.plot, curves["peers"], curves.get("scaling"),
                      header)
            progress(f"plot saved to {args.plot}")
    return 1 if any(r.status in ("MISS", "ERROR") for r in rows) else 0


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj


if __name__ == "__main__":
    sys.exit(main())
