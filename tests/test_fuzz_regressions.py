"""Every input that once crashed a fuzz harness is replayed on every run.

Files live in tests/fuzz_regressions/<harness>/ (see the README there).
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REGRESSIONS = os.path.join(HERE, "fuzz_regressions")
FUZZ = os.path.join(os.path.dirname(HERE), "fuzz")
if FUZZ not in sys.path:
    sys.path.insert(0, FUZZ)

HARNESSES = ("fuzz_reader", "fuzz_snapshot", "fuzz_recovery")

#: Open bugs, by file (strict xfail: the test fails once the bug is fixed,
#: so remember to remove the entry then).
KNOWN_BUGS = {}


def read_input(path: str) -> bytes:
    if not path.endswith(".hex"):
        with open(path, "rb") as f:
            return f.read()
    with open(path, encoding="ascii") as f:
        lines = [line for line in f if not line.lstrip().startswith("#")]
    return bytes.fromhex("".join("".join(lines).split()))


def _cases():
    for harness in HARNESSES:
        folder = os.path.join(REGRESSIONS, harness)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            rel = f"{harness}/{name}"
            marks = []
            if rel in KNOWN_BUGS:
                raises, reason = KNOWN_BUGS[rel]
                marks.append(pytest.mark.xfail(strict=True, raises=raises,
                                               reason=reason))
            yield pytest.param(harness, rel, id=rel, marks=marks)


@pytest.mark.parametrize("harness, rel", list(_cases()))
def test_fuzz_regression_input_is_handled(harness, rel):
    check = importlib.import_module(harness).check
    check(read_input(os.path.join(REGRESSIONS, rel)))


def test_every_known_bug_has_its_input():
    for rel in KNOWN_BUGS:
        assert os.path.exists(os.path.join(REGRESSIONS, rel)), rel
