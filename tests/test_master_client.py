"""The pieces of ``resume --master`` that need no running master: PYON v1
(checked against sipyco's own v1 codec), address parsing, finding a live
``artiq_master`` that owns a results tree, and the built-in runner never
overwriting a results file.  The protocol itself is tested against real
masters of every release in ``test_real_master.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from fractions import Fraction

import numpy as np
import pytest

import artiq_vendor

from artiq_journal import pyon_v1
from artiq_journal.cli.main import main
from artiq_journal.master_client import MasterError, parse_address
from artiq_journal.runner.live_master import masters_owning

VALUES = [
    None, True, False, 0, -7, 2 ** 70, 1.5, -0.0, float("inf"),
    float("-inf"), 1 + 2j, "", "text", "quote\" back\\slash\nnewline é ☃",
    b"\x00bytes'\"", (), (1,), (1, "a", None), [], [1, [2, [3]]],
    {"a": 1, "b": (2, 3)}, {1: "int key", (1, 2): "tuple key"}, {1, 2},
    slice(1, 10, 2), Fraction(3, 7), OrderedDict([("z", 1), ("a", 2)]),
    np.arange(6, dtype=np.int32).reshape(2, 3), np.array([1.5, np.nan]),
    np.float64(2.5), np.int16(-3),
    {"log_level": 30, "file": "scan.py", "class_name": "Scan",
     "arguments": {"n": 40, "resume_from": "2026-12-03/07/000000001-Scan"
                   ".journal", "scan": {"ty": "RangeScan", "start": 0.0}},
     "repo_rev": "N/A"},
]


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and \
            np.array_equal(a, b, equal_nan=True)
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def sipyco_v1():
    artiq_vendor.require("sipyco.pyon_v1")
    from sipyco import pyon_v1 as theirs
    return theirs


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_pyon_v1_we_encode_sipyco_decodes_equal(value, sipyco_v1):
    assert _same(value, sipyco_v1.decode(pyon_v1.encode(value)))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_pyon_v1_sipyco_encodes_we_decode_equal(value, sipyco_v1):
    for pretty in (False, True):
        assert _same(value, pyon_v1.decode(sipyco_v1.encode(value, pretty)))


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "(lambda: 1)()", "open('x')",
    "[x for x in (1, 2)]", "nparray.__class__", "{**{}}", "a.b", "1 if 1 else 2",
])
def test_pyon_v1_decoder_evaluates_nothing(text):
    with pytest.raises(ValueError):
        pyon_v1.decode(text)


@pytest.mark.parametrize("text, expected", [
    ("localhost", ("localhost", 3251)), ("10.0.0.2:4000", ("10.0.0.2", 4000)),
    ("[::1]:3251", ("::1", 3251)), ("[::1]", ("::1", 3251)), ("::1", ("::1", 3251)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", ":3251", "host:0", "host:x",
                                  "host:70000"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_unreachable_master_is_a_clear_error():
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from artiq_journal.master_client import MasterClient
    with pytest.raises(MasterError, match="cannot connect"):
        MasterClient("127.0.0.1", port, timeout=2)


def test_live_master_owning_the_results_tree_is_found_by_cwd(tmp_path):
    fake = tmp_path / "bin" / "artiq_master"
    fake.parent.mkdir()
    fake.write_text("import time\ntime.sleep(60)\n")
    workdir = tmp_path / "lab"
    workdir.mkdir()
    process = subprocess.Popen([sys.executable, str(fake)], cwd=workdir)
    try:
        deadline = time.monotonic() + 10
        while not masters_owning(str(workdir / "results")):
            assert time.monotonic() < deadline, "not found"
            time.sleep(0.05)
        (found,) = masters_owning(str(workdir / "results"))
        assert found.pid == process.pid
        assert masters_owning(str(tmp_path / "results")) == []
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert masters_owning(str(workdir / "results")) == []


EXPERIMENT = """
try:
    from artiq.experiment import *
except ImportError:
    from artiq_journal.runner.experiment import *


class Tiny(EnvExperiment):
    def run(self):
        self.set_dataset("x", 1)
"""


def test_runner_never_overwrites_an_existing_results_file(tmp_path, capsys):
    experiment = tmp_path / "tiny.py"
    experiment.write_text(EXPERIMENT)
    results = tmp_path / "results"
    # Any hour the run may start in: the file of RID 5 already exists.
    planted = []
    now = time.time()
    for t in (now, now + 120):
        hour = time.localtime(t)
        directory = results / time.strftime("%Y-%m-%d", hour) / \
            time.strftime("%H", hour)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "000000005-Tiny.h5"
        path.write_bytes(b"someone else's results")
        planted.append(path)
    status = main(["run", str(experiment), "--rid", "5", "--results",
                   str(results), "--json"])
    assert status == 1
    for path in planted:
        assert path.read_bytes() == b"someone else's results"
