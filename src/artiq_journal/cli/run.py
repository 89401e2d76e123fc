"""``artiq-journal run`` and ``artiq-journal resume``: run an experiment file
through the built-in runner (``artiq_journal.runner``) with journaling.

``run`` starts a new run; ``resume RID`` starts a new run of the experiment
that RID ran (file, class and arguments from its journal's ``run_info``)
which continues from RID's last checkpoint.  How the new run is told whom
to resume is :mod:`artiq_journal.worker_hooks.resume`'s documented
mechanism: the environment variable ``ARTIQ_JOURNAL_RESUME`` names the
earlier journal (and a ``resume_from`` argument the earlier run was given
is replaced by it, since the argument would win over the variable).

The library side lives in :mod:`artiq_journal.runner.resume`; these
functions only parse, call and print.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Any

from .. import pyon
from ..runner import RunResult, start_experiment
from ..master_client import parse_address
from ..runner.resume import (RESUME_ARGUMENT, ResumeSource,
                             experiment_check, find_resume_source,
                             journal_of_run,
                             refuse_if_master_owns, resumed_from_of,
                             start_resumed_experiment,
                             submit_resume_to_master)
from ..worker_hooks import config as hook_config
from ..worker_hooks.resume import (RESUMED_FROM_DATASET)

__all__ = ["parse_value", "parse_assignment", "ResumeSource",
           "find_resume_source", "start_resumed_experiment",
           "journal_of_run", "resumed_from_of", "register"]

#: Exit codes (cli/main.py): 0 ok, 1 problems (the run did not complete).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: With --json the worker's own output goes to stderr: stdout is the JSON.
_STDERR_FD = 2


# -- experiment arguments on the command line ------------------------------------

def parse_value(text: str) -> Any:
    """The value of ``--arg`` text: a Python literal (``3``, ``2.5e-3``,
    ``(1, 2)``, ``'x'``, ``None``...) via ``ast.literal_eval``, else PYON v2
    / JSON (``true``, ``null``, ``{"__jsonclass__": ...}``), else the text
    itself as a string.  Never evaluates code."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return pyon.decode(text)
    except (ValueError, TypeError, RecursionError):
        pass
    return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, parse_value(value))``; argparse type."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, got {text!r}")
    return key, parse_value(value)


# -- finding runs ------------------------------------------------------------------

RUN_EPILOG = """\
--arg values are Python literals (3, 2.5e-3, 'text', (1, 2), None), else
PYON/JSON (true, null), else plain strings: --arg name=scan1.  Nothing is
evaluated as code.

The run writes results/<date>/<hour>/<rid:09>-<Class>.h5 as ARTIQ would, and
journals every dataset operation into <rid:09>-<Class>.journal beside it.
If the run completes, the journal is closed and removed once the results file
is safely on disk (ARTIQ_JOURNAL_KEEP=1 keeps it); if the worker dies, the
journal stays for artiq-recover and 'artiq-journal resume'.

exit status: 0 the run completed; 1 it did not (experiment raised, worker
killed); 2 usage error.
"""

RESUME_EPILOG = """\
Finds RID's journal (RESULTS/*/*/<rid:09>-*.journal), and starts a NEW run
(new RID) of the same experiment file and class with the same arguments
(--arg overrides some).  The experiment, a JournalResumable, gets back the
datasets of RID's last checkpoint from self.resume_state() and continues
from there; the new results file records journal.resumed_from.

Under a running ARTIQ master, use --master HOST[:PORT] (its control port,
3251 by default): the run's original expid (file, class, arguments,
log level, repo_rev) is submitted to the master's scheduler with the
original pipeline and priority, plus the argument resume_from = the
journal's path relative to RESULTS; the master assigns the RID and runs
it.  Without --master the built-in runner runs it here, taking the RID from
last_rid.pyon beside RESULTS under a lock (as ARTIQ's master does); it
refuses when a live artiq_master has RESULTS' parent as its working
directory, since the master would hand out the same RID again.

exit status: 0 the resumed run completed (with --master: was submitted);
1 it did not, or RID cannot be resumed (no journal, no checkpoint, still
running, a master owns RESULTS, the master refused); 2 usage error.
"""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arg", dest="arguments", action="append",
                        type=parse_assignment, default=[],
                        metavar="KEY=VALUE",
                        help="experiment argument (repeatable)")
    parser.add_argument("--results", default="results", metavar="DIR",
                        help="results directory (default: ./results); the "
                             "RID counter last_rid.pyon sits beside it")
    parser.add_argument("--fsync", choices=hook_config.FSYNC_CHOICES,
                        default=hook_config.DEFAULT_FSYNC,
                        help="journal durability: every operation "
                             "(always), within a few ms (group, default), "
                             "or only at snapshots and close (never)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of text")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run`` and ``resume`` verbs."""
    run = subparsers.add_parser(
        "run", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run an experiment file with journaling (built-in runner)",
        description="Run the experiment in FILE.py in a worker subprocess "
                    "of the built-in\nARTIQ-compatible runner, with every "
                    "dataset operation journaled.\nThe same file runs "
                    "unchanged under ARTIQ.",
        epilog=RUN_EPILOG)
    run.add_argument("file", metavar="FILE.py", help="experiment file")
    run.add_argument("--class", dest="class_name", metavar="NAME",
                     help="experiment class (default: the only one in the "
                          "file)")
    run.add_argument("--rid", type=int, metavar="N",
                     help="run id (default: next from last_rid.pyon)")
    _add_common(run)
    run.add_argument("--no-journal", dest="journal", action="store_false",
                     help="run without journaling, as plain ARTIQ would")
    run.set_defaults(func=_cmd_run)

    resume = subparsers.add_parser(
        "resume", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="re-run an interrupted run from its last checkpoint",
        description="Resume run RID (which crashed or was stopped) as a new "
                    "run that continues\nfrom RID's last checkpoint.",
        epilog=RESUME_EPILOG)
    resume.add_argument("rid", type=int, metavar="RID",
                        help="run id of the earlier run")
    resume.add_argument("--allow-changed", action="store_true",
                        help="resume even when the experiment file changed "
                             "since the earlier run (its SHA-256 recorded at "
                             "run start differs)")
    resume.add_argument("--master", metavar="HOST[:PORT]",
                        help="submit the resumed run to this ARTIQ master "
                             "(control port, default 3251) instead of "
                             "running it here")
    _add_common(resume)
    resume.set_defaults(func=_cmd_resume)


def _resume_through_master(source: ResumeSource, host: str, port: int,
                           args: argparse.Namespace) -> int:
    rid, expid = submit_resume_to_master(source, host, port,
                                         dict(args.arguments))
    resume_from = expid["arguments"][RESUME_ARGUMENT]
    if args.json:
        print(json.dumps({"rid": rid, "master": f"{host}:{port}",
                          "resumed_rid": source.rid, "seq": source.seq,
                          "resume_from": resume_from,
                          "pipeline_name": source.pipeline_name,
                          "priority": source.priority,
                          "expid": pyon.encode(expid)}))
    else:
        print(f"submitted to the master at {host}:{port} as RID {rid} "
              f"(pipeline {source.pipeline_name!r}, priority "
              f"{source.priority}), resume_from={resume_from}")
    return EXIT_OK


def _report(result: RunResult, journal_enabled: bool,
            resumed_from: dict | None, as_json: bool) -> int:
    journal = (journal_of_run(result.results_dir, result.rid, result.h5_path)
               if journal_enabled else None)
    journal_kept = journal is not None and os.path.isdir(journal)
    if as_json:
        print(json.dumps({"rid": result.rid, "ok": result.ok,
                          "returncode": result.returncode,
                          "results_file": result.h5_path,
                          "journal": journal, "journal_kept": journal_kept,
                          "resumed_from": resumed_from}))
    else:
        status = ("completed" if result.ok else
                  f"FAILED (worker exit status {result.returncode})")
        print(f"rid:          {result.rid} -- {status}")
        print(f"results file: {result.h5_path or '(none written)'}")
        if not journal_enabled:
            note = "(journaling off)"
        elif journal is None:
            note = "(none)"
        elif journal_kept:
            note = f"{journal} (kept" + (
                "; recover it with artiq-recover, or resume it with "
                f"'artiq-journal resume {result.rid}')"
                if not result.ok else ")")
        else:
            note = (f"{journal} (removed once the results file was "
                    "written; ARTIQ_JOURNAL_KEEP=1 keeps it)")
        print(f"journal:      {note}")
    return EXIT_OK if result.ok else EXIT_FAILED


def _cmd_run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.file):
        print(f"artiq-journal run: error: {args.file}: no such file",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        running = start_experiment(
            args.file, args.class_name, dict(args.arguments), args.rid,
            args.results, args.journal, args.fsync,
            stdout=_STDERR_FD if args.json else None)
    except OSError as exc:
        return _os_error("run", exc)
    return _report(running.wait(), args.journal, None, args.json)


def _os_error(verb: str, exc: OSError) -> int:
    where = f"{exc.filename}: " if exc.filename else ""
    print(f"artiq-journal {verb}: error: {where}{exc.strerror or exc}",
          file=sys.stderr)
    return EXIT_FAILED


_VERDICT_TEXT = {"same": "the file that run executed",
                 "changed": "CHANGED since that run",
                 "unknown": "that run recorded no hash to compare",
                 "missing": "cannot be read",
                 "remote": "not readable here; the master resolves it"}


def _cmd_resume(args: argparse.Namespace) -> int:
    if args.master is not None:
        try:
            host, port = parse_address(args.master)
        except ValueError as exc:
            print(f"artiq-journal resume: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    source = find_resume_source(args.rid, args.results)
    if args.master is None:
        # First: beside a live master nothing may run here at all.
        refuse_if_master_owns(args.results)
    out = sys.stderr if args.json else sys.stdout
    file, digest, verdict = experiment_check(source)
    if verdict == "missing" and args.master is not None:
        # The master resolves the file itself (in its repository, at the
        # journaled repo_rev); it need not be readable from here.
        verdict = "remote"
    print(f"resuming RID {source.rid} ({source.class_name}) from its last "
          f"checkpoint: seq {source.seq}, state {source.checkpoint!r}\n"
          f"  journal {source.journal}\n"
          f"  experiment {file} (sha256 {digest or 'unreadable'}: "
          f"{_VERDICT_TEXT[verdict]})", file=out)
    if args.master is not None:
        # The master runs the expid's own file (from its repository at the
        # expid's repo_rev): nothing here to compare it with or refuse.
        pass
    elif verdict == "missing":
        print(f"artiq-journal resume: error: {file}: the experiment file "
              "cannot be read", file=sys.stderr)
        return EXIT_FAILED
    elif verdict == "changed" and not args.allow_changed:
        print(f"artiq-journal resume: error: {file} changed since RID "
              f"{source.rid} ran (sha256 then {source.experiment_sha256}, "
              "now "
              f"{digest}): its checkpoint may not mean the same to the new "
              "code; pass --allow-changed to resume anyway",
              file=sys.stderr)
        return EXIT_FAILED
    if args.master is not None:
        return _resume_through_master(source, host, port, args)
    try:
        running = start_resumed_experiment(
            source, args.results, dict(args.arguments), args.fsync,
            stdout=_STDERR_FD if args.json else None)
    except OSError as exc:
        return _os_error("resume", exc)
    result = running.wait()
    resumed_from = resumed_from_of(result.h5_path)
    if resumed_from is not None and not args.json:
        print(f"resumed from: RID {resumed_from['rid']}, checkpoint seq "
              f"{resumed_from['seq']}")
    status = _report(result, True, resumed_from, args.json)
    if result.h5_path is not None and resumed_from is None:
        print(f"artiq-journal resume: error: the new run's results file has "
              f"no {RESUMED_FROM_DATASET}: the experiment did not resume "
              "(is it a JournalResumable that calls self.resume_state()?)",
              file=sys.stderr)
        return EXIT_FAILED
    return status
