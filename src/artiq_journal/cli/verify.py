"""``artiq-journal verify`` and ``artiq-journal inspect``: check and describe
a journal.  Thin: the work is :func:`artiq_journal.journal.inspect.summarize`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import NotAJournal
from ..journal.inspect import summarize

EXIT_OK, EXIT_DAMAGED, EXIT_USAGE = 0, 1, 2

_PATH_HELP = ("a journal directory (*.journal), or one segment-<n>.log or "
              "checkpoint file inside one (then only that file's problems "
              "are reported, judged in the context of its journal)")

_VERIFY_DESCRIPTION = """\
Read every record of a journal (CRC-check and decode it) and every checkpoint
file, and print each problem as FILE:OFFSET: MESSAGE, then a summary line.
Read-only.

A torn tail (the last record cut short, normal after a crash) is reported
too: it means the writer did not close the journal.  A live writer's or an
unclosed journal that is intact is clean."""

_EXIT_EPILOG = """\
exit status: 0 clean (no problem at all), 1 problems found, 2 usage error
(no such path, not a journal)."""

_INSPECT_DESCRIPTION = """\
Describe a journal: its segments (size, first sequence number), checkpoint
files (which exist, the sequence number they cover, valid or not, which one a
recovery would use and why), whether a live writer holds the lock or the
journal is orphaned, whether it was closed cleanly, record counts per type,
the last sequence number, and every problem found.  Works on damaged
journals.  Read-only."""


def register(subparsers) -> None:
    verify = subparsers.add_parser(
        "verify", help="check a journal for damage (exit 1 if damaged)",
        description=_VERIFY_DESCRIPTION, epilog=_EXIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.add_argument("path", metavar="PATH", help=_PATH_HELP)
    verify.add_argument("--json", action="store_true",
                        help="print one JSON document instead of text")
    verify.add_argument("-q", "--quiet", action="store_true",
                        help="print only the problems, not the summary line")
    verify.set_defaults(func=run_verify)

    inspect = subparsers.add_parser(
        "inspect", help="describe a journal: segments, snapshots, lock, "
                        "records",
        description=_INSPECT_DESCRIPTION, epilog=_EXIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_argument("path", metavar="PATH", help=_PATH_HELP)
    inspect.add_argument("--json", action="store_true",
                         help="print one JSON document instead of text "
                              "(values that JSON cannot hold are tagged, "
                              "e.g. {\"ndarray\": {\"dtype\", \"shape\"}})")
    inspect.add_argument("--records", action="store_true",
                         help="also list every record: seq, type, "
                              "segment:offset, a short form of the payload")
    inspect.add_argument("--limit", type=_non_negative, default=None,
                         metavar="N",
                         help="list at most N records (with --records)")
    inspect.set_defaults(func=run_inspect)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def run_verify(args: argparse.Namespace) -> int:
    return _guarded("verify", lambda: _verify(args))


def run_inspect(args: argparse.Namespace) -> int:
    return _guarded("inspect", lambda: _inspect(args))


def _guarded(verb: str, body) -> int:
    # A checker must report, not crash, whatever it is pointed at.
    try:
        return body()
    except NotAJournal as exc:
        print(f"artiq-journal {verb}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # Output piped into `head`: stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_DAMAGED
    except Exception as exc:  # noqa: BLE001 - last line of defence
        print(f"artiq-journal {verb}: internal error: "
              f"{type(exc).__name__}: {exc} (please report this; the journal "
              "could not be checked)", file=sys.stderr)
        return EXIT_DAMAGED


def _verify(args: argparse.Namespace) -> int:
    summary = summarize(args.path)
    status = EXIT_DAMAGED if summary["damaged"] else EXIT_OK
    if args.json:
        summary.pop("record_list")
        _print_json({"command": "verify", "ok": status == EXIT_OK,
                     "exit_status": status, **summary})
        return status
    for diag in summary["diagnostics"]:
        print(diag["text"])
    if not args.quiet:
        print(_summary_line(summary))
    return status


def _inspect(args: argparse.Namespace) -> int:
    summary = summarize(args.path, records=args.records, limit=args.limit)
    status = EXIT_DAMAGED if summary["damaged"] else EXIT_OK
    if args.json:
        if not args.records:
            summary.pop("record_list")
        _print_json({"command": "inspect", "ok": status == EXIT_OK,
                     "exit_status": status, **summary})
        return status
    for line in _inspect_lines(summary):
        print(line)
    return status


def _print_json(document: dict) -> None:
    # allow_nan=False: the summary never holds NaN (payloads are tagged), and
    # strict JSON consumers (jq, browsers) reject it.
    print(json.dumps(document, indent=2, allow_nan=False))


def _seq(seq: int | None) -> str:
    return "-" if seq is None else str(seq)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _snapshot_text(summary: dict) -> str:
    used = summary["snapshot_used"]
    if used is None:
        if any(snap["exists"] for snap in summary["snapshots"]):
            return "none valid (see the problems listed)"
        return "none"
    text = f"{used['name']} (seq {used['seq']})"
    if used["reason"]:
        text += f", because {used['reason']}"
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary_line(summary: dict) -> str:
    records = summary["records"]
    count = _count(records["total"], "record")
    if records["untrusted"]:
        count += f" ({records['untrusted']} untrusted)"
    problems = len(summary["diagnostics"])
    verdict = "clean" if not problems else \
        f"DAMAGED ({_count(problems, 'problem')})"
    return (f"{summary['path']}: {verdict}: {count}, last seq "
            f"{_seq(summary['last_seq'])}, clean close: "
            f"{_yes(summary['clean_close'])}, snapshot: "
            f"{_snapshot_text(summary)}, writer: {summary['writer']}")


_WRITER_TEXT = {
    "live": "live (a running writer holds the lock)",
    "closed": "none (closed cleanly: ARTIQ's results file holds the data)",
    "closed_without_results": "none (closed WITHOUT a verified results "
                              "file: artiq-recover will pick it up)",
    "orphaned": "none, orphaned (lock free and no clean close: "
                "artiq-recover will pick it up)",
}


def _inspect_lines(summary: dict) -> list[str]:
    lines = [f"journal: {summary['journal']}"]
    if summary["file"] is not None:
        lines.append(f"file: {summary['file']}")
    lines += [f"format version: {summary['format_version']}",
              f"writer: {_WRITER_TEXT[summary['writer']]}",
              f"clean close: {_yes(summary['clean_close'])}"
              + (f" (close reason: {summary['close_reason']})"
                 if summary["close_reason"] else "")]
    lines.append(f"segments: {len(summary['segments'])}")
    for seg in summary["segments"]:
        first = seg["first_seq"] if seg["first_seq"] is not None else "?"
        header = "" if seg["header"] == "ok" else f"  header: {seg['header']}"
        lines.append(f"  {seg['name']:<18} {seg['size'] or 0:>12} bytes  "
                     f"first seq {first:<8} {seg['records']} records{header}")
    lines.append("snapshots:")
    for snap in summary["snapshots"]:
        if not snap["exists"]:
            lines.append(f"  {snap['name']:<18} missing")
            continue
        state = "valid" if snap["valid"] else f"INVALID: {snap['problem']}"
        seq = f"seq {snap['seq']}" if snap["seq"] is not None else "seq ?"
        used = "  (used)" if snap["used"] else ""
        lines.append(f"  {snap['name']:<18} {snap['size'] or 0:>12} bytes  "
                     f"{seq:<12} {state}{used}")
    lines.append(f"snapshot used: {_snapshot_text(summary)}")
    records = summary["records"]
    lines.append(f"records: {records['total']} ({records['trusted']} trusted,"
                 f" {records['untrusted']} untrusted), first seq "
                 f"{_seq(summary['first_seq'])}, last seq "
                 f"{_seq(summary['last_seq'])}, last trusted seq "
                 f"{summary['last_trusted_seq']}")
    for name, count in sorted(records["by_type"].items()):
        lines.append(f"  {name:<14} {count}")
    lines.append(f"diagnostics: {len(summary['diagnostics']) or 'none'}")
    for diag in summary["diagnostics"]:
        lines.append(f"  {diag['severity']}: {diag['text']}")
    if summary["record_list"] is not None:
        lines.append("records:")
        for rec in summary["record_list"]:
            mark = "" if rec["trusted"] else "  (untrusted)"
            lines.append(f"  {rec['seq']:>8} {rec['type']:<12} "
                         f"{rec['segment']}:{rec['offset']:<8} "
                         f"{rec['summary']}{mark}")
        shown = len(summary["record_list"])
        if shown < records["total"]:
            lines.append(f"  ... {records['total'] - shown} more "
                         "(raise --limit to see them)")
    return lines
