"""``artiq-journal demo``: crash a scan, recover it, resume it, check it.

Thin: the steps are :mod:`artiq_journal.demo.walkthrough`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from ..demo.walkthrough import SABOTAGES, Walkthrough

EPILOG = """\
steps:
  1  run a resonance scan (artiq_journal/demo/scan.py) in a worker
     subprocess with journaling; SIGKILL it half-way
  2  show that ARTIQ alone would have left no results file, only the
     orphaned journal
  3  run artiq-recover and show the recovered results file
  4  resume the scan from its last checkpoint (artiq-journal resume)
  5  run the scan uninterrupted and check the resumed data equal it

Each run of the demo works in a new directory DIR/demo-<date>-<time>-<x>/
(results/, reference/results/, logs/), kept afterwards; nothing outside it
is written or deleted.

The scan is an ordinary ARTIQ experiment file: submit it to an ARTIQ master
started with ARTIQ_JOURNAL=1, kill the worker, and do steps 3 and 4 by hand
(artiq-recover; resubmit with the argument resume_from=RID).

exit status: 0 every check passed; 1 some check failed; 2 usage error.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 4:
        raise argparse.ArgumentTypeError("must be at least 4")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` verb."""
    parser = subparsers.add_parser(
        "demo", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="kill a scan mid-run, recover it, resume it, check the data",
        description="A self-checking demonstration: a scan is killed with "
                    "SIGKILL mid-run, its\nresults file recovered from the "
                    "journal, the scan resumed from its last\ncheckpoint, "
                    "and the final data compared with an uninterrupted run.",
        epilog=EPILOG)
    parser.add_argument("--points", type=_positive_int, default=40,
                        metavar="N", help="scan points (default 40: about "
                                          "10 s in all)")
    parser.add_argument("--delay", type=_non_negative_float, default=0.1,
                        metavar="SECONDS",
                        help="time per point (default 0.1)")
    parser.add_argument("--dir", default="demo-results", metavar="DIR",
                        help="where the demo's new working directory is "
                             "created (default: ./demo-results)")
    # Hidden: a deliberate defect, to prove the checks can fail.
    parser.add_argument("--sabotage", choices=sorted(SABOTAGES),
                        help=argparse.SUPPRESS)
    parser.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        os.makedirs(args.dir, exist_ok=True)
    except OSError as exc:
        print(f"artiq-journal demo: error: --dir {args.dir}: {exc.strerror}",
              file=sys.stderr)
        return 2
    # A fresh directory per demo: earlier results are never touched.
    workdir = tempfile.mkdtemp(
        prefix=time.strftime("demo-%Y%m%d-%H%M%S-"), dir=args.dir)
    walkthrough = Walkthrough(workdir, points=args.points, delay=args.delay,
                              sabotage=args.sabotage)
    return 0 if walkthrough.run() else 1
