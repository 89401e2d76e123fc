"""``artiq-journal <verb>``: thin dispatch to one module per verb.

Each verb module defines ``register(subparsers)``, which adds its parser and
sets ``func(args) -> int`` (the exit code: 0 ok, 1 problems found, 2 usage).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import JournalError

#: (module, verbs) in the order they appear in --help.
VERB_MODULES = ("verify", "export", "ls", "status", "gc", "doctor", "run",
                "persist", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="artiq-journal",
        description="Crash-safe journaling, recovery and resume for ARTIQ "
                    "experiments.  Recover crashed runs with artiq-recover.")
    parser.add_argument("--version", action="version",
                        version=f"artiq-journal {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in VERB_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except JournalError as exc:
        print(f"artiq-journal: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("artiq-journal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
