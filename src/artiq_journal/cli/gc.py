"""``artiq-journal gc``: delete journals whose results are safe.
Thin: the work is :mod:`artiq_journal.ops.prune`."""

from __future__ import annotations

import argparse
import os
import sys

from ..ops.prune import gc
from .output import (EXIT_EPILOG, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE,
                     print_json, tty_progress)

_DESCRIPTION = """\
Delete journals under ROOT (default ./results) whose results are complete
and verified elsewhere, and say for every other journal why it is kept.

Deleted only when: no live writer holds it; nothing was written to it for
--older-than days (default 7: a recovered run may still be resumed from its
journal); it closed cleanly and ARTIQ's complete results file of the same
rid is beside it, or artiq-recover marked it done (recovered,
already_recovered, already_complete), the journal still matches what was
recovered, and the results file is complete; and a full read finds no
damage.  Never touches a running, orphaned (not yet recovered), partially
recovered or damaged journal.

A journal is renamed to *.journal.deleted (under its lock, parent
directory fsynced) and then removed, never following symbolic links."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gc", help="delete journals whose results files are complete",
        description=_DESCRIPTION, epilog=EXIT_EPILOG + " 1: a deletion "
        "failed or a directory could not be searched.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", metavar="ROOT", nargs="*", default=None,
                   help="results trees (default ./results)")
    p.add_argument("--older-than", type=float, default=7.0, metavar="DAYS",
                   help="only journals last written more than DAYS days "
                        "ago (default 7; 0 for any age)")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be deleted; delete nothing")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    roots = args.roots or ["results"]
    missing = [r for r in roots if not os.path.isdir(r)]
    if missing or args.older_than < 0:
        print("artiq-journal gc: error: " + (
            f"not a directory: {', '.join(missing)}" if missing
            else "--older-than must be 0 or more"), file=sys.stderr)
        return EXIT_USAGE
    update, close = tty_progress("gc", enabled=not args.json)
    try:
        rows, problems = gc(roots, older_than_days=args.older_than,
                            dry_run=args.dry_run, progress=update)
    finally:
        close()
    failed = any(r.action == "failed" for r in rows)
    status = EXIT_PROBLEMS if failed or problems else EXIT_OK
    if args.json:
        print_json({"command": "gc", "exit_status": status,
                    "dry_run": args.dry_run,
                    "journals": [r.to_dict() for r in rows],
                    "problems": [str(p) for p in problems]})
        return status
    for r in rows:
        stream = sys.stderr if r.action == "failed" else sys.stdout
        print(f"{r.action:<12} {os.path.relpath(r.path)}: {r.reason}",
              file=stream)
    counts = {a: sum(r.action == a for r in rows)
              for a in ("deleted", "would_delete", "kept", "failed")}
    print(", ".join(f"{n} {a.replace('_', ' ')}" for a, n in counts.items()
                    if n) or "no journals")
    for p in problems:
        print(f"artiq-journal gc: {p}", file=sys.stderr)
    return status
