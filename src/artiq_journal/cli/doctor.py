"""``artiq-journal doctor``: will the hook load in ARTIQ's worker?
Thin: the work is :mod:`artiq_journal.ops.doctor`."""

from __future__ import annotations

import argparse
import sys

from ..ops.doctor import run_checks
from .output import EXIT_EPILOG, EXIT_OK, EXIT_PROBLEMS, print_json

_DESCRIPTION = """\
Run this with the Python that runs artiq_master (inside the ARTIQ
environment: nix develop / conda activate / the venv).  It checks that
artiq_journal is importable; that Python processes .pth files (no -S);
that artiq_journal_autoload.pth is in a site directory; that a fresh
interpreter started with ARTIQ_JOURNAL=1 really imports the hook (what
ARTIQ's worker will do); whether ARTIQ_JOURNAL is set here; that the
results directory is writable (creates and removes one empty file); which
ARTIQ is importable; and which dataset-manager adapter the hook will use.

Each check prints ok, FAIL or warn."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="check that the hook will load in ARTIQ's worker",
        description=_DESCRIPTION, epilog=EXIT_EPILOG + " 1: a check failed.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", metavar="DIR", default="results",
                   help="ARTIQ's results directory (default ./results, "
                        "relative to where artiq_master runs)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = run_checks(args.results)
    status = EXIT_PROBLEMS if any(c.ok is False for c in checks) else EXIT_OK
    if args.json:
        print_json({"command": "doctor", "exit_status": status,
                    "python": sys.executable,
                    "checks": [c.to_dict() for c in checks]})
        return status
    for c in checks:
        mark = {True: "ok", False: "FAIL", None: "warn"}[c.ok]
        print(f"{mark:<5} {c.name:<8} {c.detail}")
    return status
