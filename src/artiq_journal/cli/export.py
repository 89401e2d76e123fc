"""``artiq-journal export``: a consistent HDF5 file of a run, live or not.
Thin: the work is :func:`artiq_journal.recovery.export.export_journal`."""

from __future__ import annotations

import argparse
import sys

from ..errors import NotAJournal
from ..ops.locate import locate
from ..recovery.export import export_journal
from .output import (EXIT_EPILOG, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE,
                     print_json)

_DESCRIPTION = """\
Write the run's datasets as an HDF5 file in ARTIQ's results layout
(datasets, archive, rid, expid, ...), consistent as of one sequence number
(attribute artiq_journal/last_seq), while the run goes on.  Works on live,
orphaned and finished journals; takes no lock and writes nothing into the
journal directory.  A record being written while the journal is read is
left out: the file is the state as of the last complete record.

The file appears atomically (temporary file in the same directory, fsync,
rename): a reader never sees half of it.  An existing file at the output
path is replaced whole.  Default output: ./<rid:09>-<Class>.export.h5."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a consistent HDF5 file of a run, also while "
                       "it runs",
        description=_DESCRIPTION, epilog=EXIT_EPILOG + " 1: the journal is "
        "damaged; the file holds what could be trusted.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("journal", metavar="JOURNAL_OR_RID",
                   help="a *.journal directory, or a rid looked up under "
                        "--results")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="output file (default ./<rid:09>-<Class>.export.h5)")
    p.add_argument("--results", metavar="DIR", default="results",
                   help="results tree to look a rid up in (default "
                        "./results)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        journal = locate(args.journal, args.results)
    except NotAJournal as exc:
        print(f"artiq-journal export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = export_journal(journal, args.out)
    except OSError as exc:
        print(f"artiq-journal export: error: cannot write the file: {exc}",
              file=sys.stderr)
        return EXIT_PROBLEMS
    status = EXIT_PROBLEMS if result.data_lost else EXIT_OK
    if args.json:
        print_json({"command": "export", "exit_status": status,
                    **result.to_dict()})
        return status
    print(f"{result.output}: rid {result.rid} ({result.class_name}), state "
          f"as of seq {result.last_seq} ({result.records_applied} records "
          f"applied; writer {result.writer})")
    for problem in result.problems:
        stream = sys.stderr if problem.severity == "error" else sys.stdout
        print(f"  {problem.severity}: {problem}", file=stream)
    return status
