"""``artiq-journal persist-datasets``: write the ``persist=True`` datasets
of crashed runs that a dead master never saved into its dataset DB.

Thin: find journals, replay them, call
:mod:`artiq_journal.recovery.persisted`, print.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .. import pyon
from ..recovery.discover import find_journals
from ..recovery.persisted import (DatasetDBError, PersistedDataset,
                                  persisted_datasets, sync_dataset_db)
from ..recovery.report import Problem
from ..replay import replay

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

EPILOG = """\
A run's set_dataset(..., persist=True) reaches the master's memory at once,
but the master saves its dataset DB only every 30 s and when it exits
cleanly: a master killed in between loses the value.  The run's journal
still has it.  This command replays each journal (a journal directory, or
every journal under a directory such as the master's results/), takes the
datasets it last held with persist=True, compares them with the DB, and
writes the missing and different ones -- value and metadata, as the master
would have saved them.  When several runs persisted one key, the latest run
wins (runs are taken in RID order).

Stop the master first: the command refuses while a process has the DB open
or an artiq_master runs on it (its next save would undo the change).  The
DB format is that of the ARTIQ version owning it:

  dataset_db.pyon  release-7: a PYON dict key -> value (metadata dropped)
  dataset_db.mdb   release-8 (PYON v1) and ARTIQ 9+ (PYON v2): LMDB,
                   key -> (value, metadata); needs the 'lmdb' package

The PYON file is replaced atomically (new file, fsync, rename); an LMDB DB
is changed in one transaction.  The previous DB is kept beside it as
DB.before-persist-N.

example:

  artiq-journal persist-datasets results --dataset-db dataset_db.mdb --dry-run

exit status: 0 the DB holds every persisted dataset (or would, with
--dry-run); 1 a journal could not be read completely, or the DB is in use
or cannot be written; 2 usage error.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "persist-datasets", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="write persisted datasets of crashed runs into the master's "
             "dataset DB",
        description="Write the persist=True datasets that runs journaled "
                    "but the master never\nsaved (it crashed) into its "
                    "dataset DB, with the master stopped.",
        epilog=EPILOG)
    parser.add_argument("paths", nargs="+", metavar="JOURNAL_OR_DIR",
                        help="a journal directory, or a directory above "
                             "journals (e.g. results/)")
    parser.add_argument("--dataset-db", required=True, metavar="FILE",
                        help="the master's dataset DB (its --dataset-db)")
    parser.add_argument("--pyon", type=int, choices=(1, 2),
                        help="PYON version for the entries of an LMDB DB "
                             "(default: what the DB already holds; v1 for "
                             "an empty one, which every release reads)")
    parser.add_argument("--dry-run", action="store_true",
                        help="compare and report only; write nothing")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of text")
    parser.set_defaults(func=_cmd_persist)


def _jsonable(value: Any) -> Any:
    # The value as PYON v2 text: exact (numpy arrays, tuples) and JSON-safe.
    try:
        return pyon.encode(value)
    except (TypeError, ValueError):
        return repr(value)


def _cmd_persist(args: argparse.Namespace) -> int:
    for path in args.paths:
        if not os.path.exists(path):
            print(f"artiq-journal persist-datasets: error: {path}: no such "
                  "file or directory", file=sys.stderr)
            return EXIT_USAGE
    problems: list[Problem] = []
    found = find_journals(args.paths, problems)
    runs = []
    for journal in found:
        result = replay(journal.path)
        for diagnostic in result.diagnostics:
            if diagnostic.severity == "error":
                problems.append(Problem(journal.path, None, str(diagnostic)))
        info = result.state.run_info or {}
        order = (info.get("rid") if isinstance(info.get("rid"), int) else -1,
                 journal.path)
        runs.append((order, persisted_datasets(result.state, journal.path)))
    datasets: list[PersistedDataset] = []
    for _, listed in sorted(runs, key=lambda r: r[0]):
        datasets.extend(listed)
    try:
        sync = sync_dataset_db(args.dataset_db, datasets,
                               dry_run=args.dry_run,
                               pyon_version=args.pyon)
    except DatasetDBError as exc:
        print(f"artiq-journal persist-datasets: error: {exc}",
              file=sys.stderr)
        return EXIT_PROBLEMS
    status = EXIT_PROBLEMS if problems else EXIT_OK
    if args.json:
        print(json.dumps({
            "dataset_db": sync.db, "format": sync.kind,
            "pyon_version": sync.pyon_version, "dry_run": args.dry_run,
            "journals": len(found),
            "datasets": [{"key": d.key, "status": s,
                          "value": _jsonable(d.value),
                          "metadata": _jsonable(d.metadata),
                          "db_value": _jsonable(old) if s == "different"
                          else None,
                          "rid": d.rid, "journal": d.journal}
                         for d, s, old in sync.datasets],
            "written": [d.key for d in sync.written],
            "backup": sync.backup,
            "metadata_dropped": sync.metadata_dropped,
            "problems": [str(p) for p in problems]}))
        return status
    print(f"dataset DB {sync.db} ({sync.kind}"
          + (f", PYON v{sync.pyon_version}" if sync.kind == "lmdb" else "")
          + f"); {len(found)} journal{'s' if len(found) != 1 else ''}")
    for dataset, state, old in sync.datasets:
        line = f"  {state:<9} {dataset.key} = {dataset.value!r}"
        if dataset.metadata:
            line += f" {dataset.metadata!r}"
        if state == "different":
            line += f" (DB has {old!r})"
        print(line + f"  [RID {dataset.rid}]")
    if not sync.datasets:
        print("  no persisted datasets in these journals")
    for problem in problems:
        print(f"  error: {problem}", file=sys.stderr)
    if args.dry_run:
        pending = sum(1 for _, s, _ in sync.datasets if s != "same")
        print(f"dry run: {pending} would be written")
    elif sync.written:
        print(f"wrote {len(sync.written)}; previous DB kept as "
              f"{sync.backup}" if sync.backup else
              f"wrote {len(sync.written)} into a new DB")
        if sync.metadata_dropped:
            print("note: this DB format (release-7) stores no metadata; "
                  "it was dropped")
    else:
        print("nothing to write")
    return status
