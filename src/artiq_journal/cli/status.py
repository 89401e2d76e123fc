"""``artiq-journal status``: alive or dead, working or hung.
Thin: the work is :mod:`artiq_journal.ops.status`."""

from __future__ import annotations

import argparse
import sys

from ..errors import NotAJournal
from ..ops.locate import locate
from ..ops.status import status as run_status
from .output import (EXIT_EPILOG, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE,
                     human_age, print_json)

_DESCRIPTION = """\
Say what a run is doing, from its journal, without disturbing it:

  working    alive; heartbeats and dataset operations are recent
  idle       alive (heartbeats recent) but no dataset operation for longer
             than the threshold: waiting on hardware, or computing
  hung       the writer lock is held but no heartbeat came for longer than
             the threshold: frozen, deadlocked, or holding the GIL in C code
  stopped    the lock is held and the process is stopped (SIGSTOP)
  dead       the lock is free and the journal was not closed: the worker
             was killed or crashed (run artiq-recover)
  finished   closed cleanly
  recovered  artiq-recover dealt with it

The threshold is 3 heartbeat periods (the period is measured from the
journal's heartbeat records; 10 s assumed when fewer than two are seen),
at least 1 s; --stale-after overrides it.  Then the last N operations."""

#: Verdicts that make the exit status 1 (someone should look).
_BAD = ("hung", "stopped", "dead")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="is a run working, idle, hung, stopped or dead?",
        description=_DESCRIPTION, epilog=EXIT_EPILOG + " 1: the run is "
        "hung, stopped or dead.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("journal", metavar="RID_OR_JOURNAL",
                   help="a *.journal directory, or a rid looked up under "
                        "--results")
    p.add_argument("--results", metavar="DIR", default="results",
                   help="results tree to look a rid up in (default "
                        "./results)")
    p.add_argument("-n", type=int, default=10, metavar="N",
                   help="show the last N operations (default 10)")
    p.add_argument("--stale-after", type=float, default=None, metavar="S",
                   help="seconds without heartbeat (or without operation) "
                        "after which a run is hung (or idle)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.n < 0:
        print("artiq-journal status: error: -n must be 0 or more",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        journal = locate(args.journal, args.results)
    except NotAJournal as exc:
        print(f"artiq-journal status: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    st = run_status(journal, n=args.n, stale_after=args.stale_after)
    code = EXIT_PROBLEMS if st["verdict"] in _BAD else EXIT_OK
    if args.json:
        print_json({"command": "status", "exit_status": code, **st})
        return code
    print(f"rid {st['rid']} ({st['class_name']}): {st['verdict']}: "
          f"{st['message']}")
    print(f"  journal {st['path']}")
    print(f"  lock {'held' if st['lock_held'] else 'free'}"
          f"{'' if st['pid'] is None else ' pid ' + str(st['pid'])}"
          f"{'' if st['process'] is None else ' (' + st['process'] + ')'}; "
          f"stage {st['stage'] or '-'}; last seq {st['last_seq']}; last "
          f"write {human_age(st['last_write'], st['now'])}; last heartbeat "
          f"{human_age(st['last_heartbeat'], st['now'])}")
    if st["last_ops"]:
        print(f"  last {len(st['last_ops'])} operations:")
        for op in st["last_ops"]:
            print(f"    {op['seq']:>8}  {op['type']:<12} {op['summary']}")
    return code
