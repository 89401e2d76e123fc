"""``artiq-recover``: the command line of
:func:`artiq_journal.recovery.recover`.

Thin on purpose: parse arguments, call the library, print, exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from .. import __version__
from ..errors import RecoveryError
from ..recovery import Report, RunReport, recover

#: Outcomes printed without ``-v`` (the rest are routine in a large tree).
_SHOWN = frozenset({"recovered", "recovered_partial", "failed", "dry_run",
                    "skipped_live"})

EPILOG = """\
outcomes (one per journal):
  recovered           results file written from the journal
  recovered_partial   written, but some data was lost or could not be stored
  failed              nothing could be written (see the problems)
  skipped_live        the run is still going (its writer holds the lock)
  skipped_clean       the journal was closed cleanly: nothing to recover
  already_complete    ARTIQ's own results file is complete: left alone
  already_recovered   an earlier artiq-recover already wrote it
  dry_run             --dry-run: what would be done, nothing written

Existing results files are never overwritten or deleted: a complete one is
kept (the journal is marked done with a 'recovered' file inside it), a
partial or unreadable one is renamed to NAME.h5.partial-N.  Running twice
changes nothing the second time.

exit status: 0 every journal recovered or nothing to do; 1 some journal
could not be fully recovered (what could be was still written, and flagged
in the file's artiq_journal group); 2 usage error.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="artiq-recover",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rebuild the ARTIQ results files (<rid>-<Class>.h5) of "
                    "runs that crashed, from their journals.  Finds orphaned "
                    "journals (writer gone, no clean close) in each PATH, "
                    "replays the latest valid checkpoint plus the records "
                    "after it, and publishes the file atomically beside the "
                    "journal.",
        epilog=EPILOG)
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="a journal directory, or any directory above "
                             "journals such as the master's results/ "
                             "(default: ./results)")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and report only; write nothing")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON report on stdout instead of "
                             "text")
    parser.add_argument("--force", action="store_true",
                        help="also recover journals whose writer is still "
                             "alive (their state so far)")
    parser.add_argument("--output", metavar="DIR",
                        help="write results files under DIR (same layout "
                             "relative to each PATH) and leave the results "
                             "tree untouched")
    parser.add_argument("--trust-experiment-code", action="store_true",
                        help="runs whose storage policy names the "
                             "experiment's own store_dataset/write_metadata: "
                             "import the experiment file named in the "
                             "journal and run them (explicit consent to run "
                             "that code; without it the declarative policy "
                             "is applied and a warning says what was not)")
    parser.add_argument("--repository", metavar="DIR",
                        help="with --trust-experiment-code: where relative "
                             "experiment file names are (default: the "
                             "working directory)")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true",
                       help="print only runs that were not fully recovered")
    level.add_argument("-v", "--verbose", action="store_true",
                       help="print every journal and every problem")
    parser.add_argument("--version", action="version",
                        version=f"artiq-recover {__version__}")
    return parser


def _usage_error(message: str) -> int:
    print(f"artiq-recover: error: {message}", file=sys.stderr)
    return 2


def _run_lines(run: RunReport, verbose: bool) -> list[str]:
    shown = run.outcome if run.outcome != "dry_run" else \
        f"would be {run.would_be}"
    where = run.output or run.journal
    detail = []
    if run.records_applied or run.outcome in ("recovered",
                                              "recovered_partial"):
        detail.append(f"{run.records_applied} records")
    if run.records_untrusted:
        detail.append(f"{run.records_untrusted} left out")
    if run.snapshot:
        detail.append(f"from {run.snapshot}")
    if run.stage:
        detail.append(f"stage {run.stage}")
    if run.moved_aside:
        detail.append(f"old file kept as {os.path.basename(run.moved_aside)}")
    line = f"{shown:<18} {where}" + (f" ({', '.join(detail)})"
                                     if detail else "")
    lines = [line]
    for problem in run.problems:
        if verbose or problem.severity != "info":
            lines.append(f"    {problem.severity}: {problem}")
    return lines


def _summary(report: Report) -> str:
    counts = report.counts()
    text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    total = len(report.runs)
    text = f"{text} ({total} journal{'s' if total != 1 else ''})" if total \
        else "no journals found"
    if report.dry_run:
        text += "; dry run, nothing written"
    return f"artiq-recover: {text}"


class _Printer:
    """Per-run lines as runs finish; a tqdm bar instead of silence when
    stderr is a terminal."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args, self.out = args, out
        self.bar = None
        self.use_bar = sys.stderr.isatty() and not args.quiet

    def __call__(self, done: int, total: int, run: RunReport) -> None:
        if self.use_bar and self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="run", file=sys.stderr,
                            desc="artiq-recover", leave=False)
        for line in self._lines(run):
            if self.bar is not None:
                self.bar.write(line, file=self.out)
            else:
                print(line, file=self.out, flush=True)
        if self.bar is not None:
            self.bar.update(1)

    def _lines(self, run: RunReport) -> list[str]:
        args = self.args
        if args.json and not args.verbose:
            return []
        if args.quiet and run.fine:
            return []
        if not (args.verbose or args.quiet or run.outcome in _SHOWN
                or not run.fine):
            return []
        return _run_lines(run, args.verbose)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return int(exc.code or 0)
    paths = args.paths or ["results"]
    for path in paths:
        if not os.path.exists(path):
            return _usage_error(f"{path}: no such file or directory")
        if not os.path.isdir(path):
            return _usage_error(f"{path}: not a directory")
    if args.output is not None and os.path.exists(args.output) \
            and not os.path.isdir(args.output):
        return _usage_error(f"--output {args.output}: not a directory")
    # With --json, stdout carries only the JSON document.
    printer = _Printer(args, sys.stderr if args.json else sys.stdout)
    try:
        report = recover(paths, output=args.output, dry_run=args.dry_run,
                         force=args.force, progress=printer,
                         trust_experiment_code=args.trust_experiment_code,
                         repository=args.repository)
    except RecoveryError as exc:
        return _usage_error(str(exc))
    except KeyboardInterrupt:
        print("artiq-recover: interrupted", file=sys.stderr)
        return 130
    finally:
        printer.close()
    if args.json:
        print(report.to_json(indent=1))
    else:
        for problem in report.problems:
            print(f"artiq-recover: {problem.severity}: {problem}",
                  file=sys.stderr)
        if not args.quiet or report.exit_code:
            print(_summary(report))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
