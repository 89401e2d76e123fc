"""Fuzz the whole recovery path: damaged journal -> results file.

    python fuzz/fuzz_recovery.py -atheris_runs=20000 [corpus dir]

Each input is a journal directory packed by ``_common.pack_journal``
(segments and checkpoint files; unparsable bytes become a segment).  It is
unpacked as ``<rid>-<Class>.journal`` and ``artiq_journal.recovery.recover``
runs on it.  ``recover`` reports per-run failures instead of raising, so a
failure caused by anything other than a ``JournalError`` or an ``OSError`` is
turned back into a crash here.  Without the recovery package (it was being
written when this harness was), ``replay`` is fuzzed instead.
"""

from __future__ import annotations

import builtins
import os

from _common import fuzz_main, scratch_dir, unpack_journal

from artiq_journal.errors import JournalError
from artiq_journal.replay import replay

try:
    from artiq_journal.recovery import recover
except ImportError:  # pragma: no cover - depends on the checkout
    recover = None

JOURNAL_NAME = "000000042-FuzzExperiment.journal"


def _allowed_failure(type_name: str) -> bool:
    known = {cls.__name__ for cls in _subclasses(JournalError)}
    exc_type = getattr(builtins, type_name, None)
    return type_name in known or (isinstance(exc_type, type) and
                                  issubclass(exc_type, OSError))


def _subclasses(cls: type) -> list[type]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


def check(data: bytes) -> None:
    with scratch_dir() as root:
        journal = os.path.join(root, JOURNAL_NAME)
        os.mkdir(journal)
        unpack_journal(data, journal)
        if recover is None:
            replay(journal)
            return
        report = recover(root)
        for run in report.runs:
            for problem in run.problems:
                reason = problem.reason
                if reason.startswith("recovery failed: "):
                    type_name = reason.split(": ", 2)[1]
                    if not _allowed_failure(type_name):
                        raise AssertionError(f"recovery crashed: {reason}")
        report.to_json()  # the report itself must always be printable


if __name__ == "__main__":
    fuzz_main(check, "fuzz_recovery")
