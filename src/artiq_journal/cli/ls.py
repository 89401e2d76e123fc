"""``artiq-journal ls``: every journal under a tree, one line each.
Thin: the work is :mod:`artiq_journal.ops.listing`."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..ops.listing import list_journals
from .output import (EXIT_EPILOG, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE,
                     human_age, human_size, print_json, tty_progress)

_DESCRIPTION = """\
List every journal under ROOT (default ./results) with rid, class, state,
stage, records (last sequence number), size, last write and last
checkpoint sequence number.

States: running (a live process holds the writer lock), recovered
(artiq-recover dealt with it), damaged (--verify found damage), finished
(closed cleanly), orphaned (writer gone without closing: artiq-recover
will take it).

Cheap by default: no lock is taken and at most ~128 KiB is read per
journal (the start of its first segment, the end of its last), so stage and
checkpoint come from those windows ('-' when not there).  --verify reads
and replays every journal not held by a live writer (exact stage and
checkpoint, and damage)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ls", help="list journals under a results tree with their state",
        description=_DESCRIPTION, epilog=EXIT_EPILOG + " With --verify, 1 "
        "also when a journal is damaged.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", metavar="ROOT", nargs="*", default=None,
                   help="results trees or journal directories (default "
                        "./results)")
    p.add_argument("--verify", action="store_true",
                   help="read every record of each journal not held by a "
                        "live writer")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    roots = args.roots or ["results"]
    missing = [r for r in roots if not os.path.isdir(r)]
    if missing:
        print(f"artiq-journal ls: error: not a directory: "
              f"{', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    update, close = tty_progress("ls", enabled=args.verify and not args.json)
    try:
        rows, problems = list_journals(roots, verify=args.verify,
                                       progress=update)
    finally:
        close()
    damaged = any(r.state == "damaged" for r in rows)
    status = EXIT_PROBLEMS if problems or damaged else EXIT_OK
    if args.json:
        print_json({"command": "ls", "exit_status": status,
                    "journals": [r.to_dict() for r in rows],
                    "problems": [str(p) for p in problems]})
        return status
    now = time.time()
    table = [("RID", "CLASS", "STATE", "STAGE", "RECORDS", "SIZE",
              "LAST WRITE", "CKPT", "PATH")]
    for r in rows:
        table.append((
            "-" if r.rid is None else str(r.rid), r.class_name or "-",
            r.state, r.stage or "-",
            "-" if r.records is None else str(r.records), human_size(r.size),
            human_age(r.last_write, now),
            "-" if r.last_checkpoint_seq is None
            else str(r.last_checkpoint_seq),
            os.path.relpath(r.path)))
    widths = [max(len(row[i]) for row in table) for i in range(9)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths))
              + "  " + row[-1])
    for p in problems:
        print(f"artiq-journal ls: {p}", file=sys.stderr)
    return status
