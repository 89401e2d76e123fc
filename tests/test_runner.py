"""The built-in runner: the worker subprocess, its results files, the
parent-side API, and PYON compatibility with sipyco.

Worker runs here have journaling off (the journal is another module's job);
``test_journal_hooks_are_called_in_stage_order`` proves the integration
calls with a fake ``worker_hooks``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
import types
from fractions import Fraction

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import artiq_vendor
from artiq_journal import pyon
from artiq_journal.runner import run_experiment, start_experiment
from artiq_journal.runner.worker import RUNNER_VERSION, execute

HEADER = "import time\nfrom artiq_journal.runner.experiment import *\n"


def experiment_file(tmp_path, source, name="exp.py"):
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(source))
    return str(path)


def run(tmp_path, file, **kwargs):
    kwargs.setdefault("journal", False)
    kwargs.setdefault("timeout", 60)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return run_experiment(file, results_dir=str(tmp_path / "results"),
                          **kwargs)


def h5_files(tmp_path):
    return sorted(str(p) for p in (tmp_path / "results").rglob("*.h5"))


MAIN_EXPERIMENT = """
class Measure(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(3, precision=0, step=1))
        self.setattr_argument("extra", PYONValue((1, 2)))
        self.setattr_device("scheduler")
        self.set_dataset("from_build", 1.5, unit="V", precision=2)

    def run(self):
        self.set_dataset("counts", [0] * self.n, broadcast=True)
        for i in range(self.n):
            self.mutate_dataset("counts", i, i * 10)
        self.set_dataset("trace", np.zeros(4), scale=1e-3)
        self.mutate_dataset("trace", (1, 3), 7.0)
        self.set_dataset("log", [])
        self.append_to_dataset("log", self.scheduler.rid)
        self.set_dataset("not_archived", 5, broadcast=True, archive=False)
        self.set_dataset("persisted", 42, persist=True)
        self.setattr_dataset("calibration")
        self.set_dataset("extra", np.array(self.extra))
"""


def test_run_writes_artiq_layout_results_file(tmp_path):
    dataset_db = str(tmp_path / "datasets.pyon")
    pyon.store_file(dataset_db, {"calibration": (0.25, {"unit": "MHz"})})
    file = experiment_file(tmp_path, "import numpy as np\n" + MAIN_EXPERIMENT)
    result = run(tmp_path, file, rid=7, arguments={"n": 4, "extra": "[3, 4]"},
                 dataset_db=dataset_db)
    assert result.returncode == 0, result
    with h5py.File(result.h5_path, "r") as f:
        start = time.localtime(f["start_time"][()])
        expected_dir = os.path.join(str(tmp_path / "results"),
                                    time.strftime("%Y-%m-%d", start),
                                    time.strftime("%H", start))
        assert result.h5_path == os.path.join(expected_dir,
                                              "000000007-Measure.h5")
        assert set(f) == {"datasets", "archive", "artiq_version", "rid",
                          "start_time", "run_time", "expid"}
        assert f["artiq_version"][()].decode() == RUNNER_VERSION
        assert f["rid"][()] == 7 and f["rid"].dtype == np.int64
        assert f["start_time"].dtype == np.float64
        assert f["start_time"][()] <= f["run_time"][()] <= time.time()
        datasets = f["datasets"]
        assert set(datasets) == {"from_build", "counts", "trace", "log",
                                 "persisted", "extra"}
        assert list(datasets["counts"][()]) == [0, 10, 20, 30]
        assert list(datasets["trace"][()]) == [0.0, 7.0, 7.0, 0.0]
        assert dict(datasets["trace"].attrs) == {"scale": 1e-3}
        assert dict(datasets["from_build"].attrs) == {"unit": "V",
                                                      "precision": 2}
        assert list(datasets["log"][()]) == [7]
        assert list(datasets["extra"][()]) == [3, 4]
        assert dict(datasets["counts"].attrs) == {}
        assert set(f["archive"]) == {"calibration"}
        assert f["archive"]["calibration"][()] == 0.25
        expid = pyon.decode(f["expid"][()].decode())
    assert expid == {"log_level": 30, "file": file, "class_name": None,
                     "arguments": {"n": 4, "extra": "[3, 4]"}}
    # persist=True datasets reach the dataset DB file, others do not
    assert pyon.load_file(dataset_db) == {"calibration": (0.25,
                                                          {"unit": "MHz"}),
                                          "persisted": (42, {})}


def test_expid_in_results_file_is_read_by_sipyco(tmp_path):
    sipyco_pyon = artiq_vendor.import_module("sipyco.pyon")
    file = experiment_file(tmp_path, """
        class One(EnvExperiment):
            def build(self):
                self.setattr_argument("x", PYONValue(None))
            def run(self):
                pass
    """)
    result = run(tmp_path, file, rid=3, class_name="One",
                 arguments={"x": pyon.encode({(1, 2): 3j})})
    assert result.ok
    with h5py.File(result.h5_path, "r") as f:
        expid = sipyco_pyon.decode(f["expid"][()].decode())
    assert expid["class_name"] == "One" and expid["file"] == file
    assert sipyco_pyon.decode(expid["arguments"]["x"]) == {(1, 2): 3j}


def test_class_name_selects_among_several_experiments(tmp_path):
    file = experiment_file(tmp_path, """
        class First(EnvExperiment):
            def run(self):
                self.set_dataset("which", 1)

        class Second(EnvExperiment):
            def run(self):
                self.set_dataset("which", 2)
    """)
    ambiguous = run(tmp_path, file, rid=1)
    assert ambiguous.returncode == 1 and ambiguous.h5_path is None
    assert b"More than one experiment found in module" in ambiguous.stderr
    chosen = run(tmp_path, file, rid=2, class_name="Second")
    assert os.path.basename(chosen.h5_path) == "000000002-Second.h5"
    with h5py.File(chosen.h5_path, "r") as f:
        assert f["datasets"]["which"][()] == 2


def test_run_raising_still_writes_results_and_fails(tmp_path):
    file = experiment_file(tmp_path, """
        class Crash(EnvExperiment):
            def run(self):
                self.set_dataset("before_crash", [1, 2])
                raise RuntimeError("beam dump")

            def analyze(self):
                self.set_dataset("analyzed", 1)
    """)
    result = run(tmp_path, file, rid=5)
    assert result.returncode == 1
    with h5py.File(result.h5_path, "r") as f:
        assert list(f["datasets"]) == ["before_crash"]
        assert "run_time" in f


def test_analyze_raising_still_writes_results(tmp_path):
    file = experiment_file(tmp_path, """
        class BadFit(EnvExperiment):
            def run(self):
                self.set_dataset("data", 1)

            def analyze(self):
                self.set_dataset("partial_fit", 2)
                raise ValueError("fit diverged")
    """)
    result = run(tmp_path, file, rid=6)
    assert result.returncode == 1
    with h5py.File(result.h5_path, "r") as f:
        assert set(f["datasets"]) == {"data", "partial_fit"}


@pytest.mark.parametrize("stage", ["build", "prepare"])
def test_failure_before_run_writes_nothing(tmp_path, stage):
    file = experiment_file(tmp_path, f"""
        class Broken(EnvExperiment):
            def build(self):
                self.set_dataset("x", 1)
                if "{stage}" == "build":
                    raise RuntimeError("no")

            def prepare(self):
                raise RuntimeError("no")

            def run(self):
                pass
    """)
    result = run(tmp_path, file, rid=8)
    assert result.returncode == 1
    assert result.h5_path is None and h5_files(tmp_path) == []


def test_unqueried_argument_fails_the_build(tmp_path):
    file = experiment_file(tmp_path, """
        class NoArgs(EnvExperiment):
            def run(self):
                pass
    """)
    result = run(tmp_path, file, rid=9, arguments={"typo": 1})
    assert result.returncode == 1 and h5_files(tmp_path) == []


def test_rids_are_allocated_from_last_rid_file(tmp_path):
    file = experiment_file(tmp_path, """
        class Quick(EnvExperiment):
            def run(self):
                pass
    """)
    first = run(tmp_path, file)
    second = run(tmp_path, file)
    assert (first.rid, second.rid) == (0, 1)
    assert (tmp_path / "last_rid.pyon").read_text() == "1\n"
    assert os.path.basename(second.h5_path) == "000000001-Quick.h5"
    # Without the cache the next RID comes from the existing results.
    (tmp_path / "last_rid.pyon").unlink()
    assert run(tmp_path, file).rid == 2


WAITING_EXPERIMENT = """
class Waiting(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("marker", StringValue())
        self.setattr_argument("use_pause", BooleanValue(False))

    def run(self):
        self.set_dataset("started", 1)
        open(self.marker, "w").close()
        while True:
            if self.use_pause:
                self.scheduler.pause()
            elif self.scheduler.check_termination():
                self.set_dataset("stopped_cleanly", 1)
                return
            time.sleep(0.01)
"""


def start_waiting(tmp_path, rid, use_pause=False):
    file = experiment_file(tmp_path, WAITING_EXPERIMENT)
    marker = tmp_path / f"running-{rid}"
    running = start_experiment(
        file, rid=rid, journal=False, results_dir=str(tmp_path / "results"),
        arguments={"marker": str(marker), "use_pause": use_pause},
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert running.process.poll() is None, "worker exited early"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return running


def test_sigkill_mid_run_leaves_no_results_file(tmp_path):
    running = start_waiting(tmp_path, rid=11)
    running.process.kill()
    result = running.wait(timeout=60)
    assert result.returncode == -9
    assert result.h5_path is None and h5_files(tmp_path) == []


def test_termination_request_reaches_check_termination(tmp_path):
    running = start_waiting(tmp_path, rid=12)
    running.request_termination()
    result = running.wait(timeout=60)
    assert result.returncode == 0
    with h5py.File(result.h5_path, "r") as f:
        assert set(f["datasets"]) == {"started", "stopped_cleanly"}
    assert not os.path.exists(running.termination_file)


def test_termination_request_makes_pause_raise(tmp_path):
    running = start_waiting(tmp_path, rid=13, use_pause=True)
    running.request_termination()
    result = running.wait(timeout=60)
    assert result.returncode == 1  # TerminationRequested escapes run()
    with h5py.File(result.h5_path, "r") as f:
        assert set(f["datasets"]) == {"started"}


def test_timeout_kills_the_worker(tmp_path):
    file = experiment_file(tmp_path, """
        class Forever(EnvExperiment):
            def run(self):
                time.sleep(600)
    """)
    with pytest.raises(subprocess.TimeoutExpired):
        run(tmp_path, file, rid=14, timeout=1.5)


def test_invalid_job_exits_with_status_2():
    child = subprocess.run(
        [sys.executable, "-m", "artiq_journal.runner.worker"],
        input=b'{"rid": "seven"}', capture_output=True, timeout=60)
    assert child.returncode == 2
    assert b"invalid job" in child.stderr


def test_journal_hooks_are_called_in_stage_order(tmp_path, monkeypatch):
    calls = []

    class FakeJournal:
        def stage(self, name, t=None):
            calls.append(("stage", name, type(t)))

        def results_written(self, path):
            calls.append(("results_written", path))

        def close(self):
            calls.append(("close",))

    def attach(dataset_mgr, **kwargs):
        calls.append(("attach", kwargs, os.getcwd(),
                      len(dataset_mgr.metadata)))
        return FakeJournal()

    fake_hooks = types.ModuleType("artiq_journal.worker_hooks")
    fake_hooks.attach = attach
    monkeypatch.setitem(sys.modules, "artiq_journal.worker_hooks", fake_hooks)
    monkeypatch.chdir(tmp_path)  # execute() chdirs; restored afterwards
    file = experiment_file(tmp_path, """
        class Hooked(EnvExperiment):
            def build(self):
                self.set_dataset("in_build", 1)
            def run(self):
                self.set_dataset("in_run", 2)
    """)
    expid = {"log_level": 30, "file": file, "class_name": None,
             "arguments": {}}
    execute({"rid": 21, "expid": expid, "results_dir": str(tmp_path / "r"),
             "journal": {"enabled": True, "fsync": "always"}})

    (name, kwargs, cwd, datasets_at_attach), *rest = calls
    assert name == "attach" and datasets_at_attach == 0  # before build()
    start_time = kwargs.pop("start_time")
    assert isinstance(start_time, float)
    assert kwargs == {"rid": 21, "expid": expid, "class_name": "Hooked",
                      "results_dir": cwd, "fsync": "always",
                      "pipeline_name": "main", "priority": 0,
                      "artiq_version": RUNNER_VERSION}
    h5_path = os.path.join(cwd, "000000021-Hooked.h5")
    assert rest == [("stage", "prepare", float), ("stage", "run", float),
                    ("stage", "analyze", float),
                    ("results_written", h5_path), ("close",)]
    assert os.path.exists(h5_path)


def test_journal_is_closed_when_run_fails(tmp_path, monkeypatch):
    calls = []
    journal = types.SimpleNamespace(
        stage=lambda name, t=None: calls.append(name),
        results_written=lambda path: calls.append("results_written"),
        close=lambda: calls.append("close"))
    fake_hooks = types.ModuleType("artiq_journal.worker_hooks")
    fake_hooks.attach = lambda dataset_mgr, **kwargs: journal
    monkeypatch.setitem(sys.modules, "artiq_journal.worker_hooks", fake_hooks)
    monkeypatch.chdir(tmp_path)
    file = experiment_file(tmp_path, """
        class Fails(EnvExperiment):
            def run(self):
                raise KeyError("x")
    """)
    with pytest.raises(KeyError):
        execute({"rid": 22, "results_dir": str(tmp_path / "r"),
                 "expid": {"file": file, "class_name": None,
                           "arguments": {}},
                 "journal": {"enabled": True}})
    assert calls == ["prepare", "run", "results_written", "close"]


# --- PYON compatibility with sipyco ----------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True), st.text(max_size=5), st.binary(max_size=5),
    st.complex_numbers(allow_nan=False), st.fractions(),
    st.builds(slice, st.integers(-3, 3) | st.none(),
              st.integers(-3, 3) | st.none()),
    hnp.from_dtype(np.dtype("int32")), hnp.from_dtype(np.dtype("uint8")),
    hnp.from_dtype(np.dtype("float32")), hnp.from_dtype(np.dtype("bool")),
    hnp.from_dtype(np.dtype("complex128")),
    hnp.arrays(st.sampled_from([np.int64, np.float64, np.int8, np.bool_,
                                np.complex64, np.uint16]),
               hnp.array_shapes(min_dims=0, max_dims=3, max_side=3)),
)
_keys = st.one_of(st.text(max_size=4), st.integers(-5, 5),
                  st.tuples(st.integers(0, 3), st.text(max_size=2)))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(_keys, inner, max_size=4),
        st.frozensets(st.integers(-5, 5), max_size=3).map(set)),
    max_leaves=12)
EXPIDS = st.fixed_dictionaries(
    {"log_level": st.sampled_from([10, 20, 30]), "file": st.text(),
     "class_name": st.none() | st.text(max_size=8),
     "arguments": st.dictionaries(st.text(max_size=6), _values, max_size=4)},
    optional={"repo_rev": st.text(max_size=8),
              "devarg_override": st.dictionaries(st.text(max_size=4),
                                                 _values, max_size=2)})


def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return (a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, np.generic) and a.dtype.kind in "fc":
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    return a == b


@settings(max_examples=300, deadline=None)
@given(expid=EXPIDS)
def test_pyon_encoding_matches_sipyco(expid):
    sipyco_pyon = artiq_vendor.import_module("sipyco.pyon")
    ours = pyon.encode(expid)
    assert same(sipyco_pyon.decode(ours), expid)
    assert ours == sipyco_pyon.encode(expid)
    assert same(pyon.decode(ours), expid)
    pretty = pyon.encode(expid, pretty=True)
    assert pretty == sipyco_pyon.encode(expid, pretty=True)


def test_pyon_round_trips_types_without_sipyco():
    value = {"t": (1, (2.5, "x")), 3: 3j,
             (1, 2): b"\x00\xff", "a": np.arange(6).reshape(2, 3),
             "s": np.int16(-3), "f": Fraction(2, 7), "sl": slice(1, None, 2),
             "set": {1, 2}}
    decoded = pyon.decode(pyon.encode(value))
    assert same(decoded, value)
    text = pyon.encode({"x": (1,)})
    assert text == '{"x":{"__jsonclass__":["tuple",[[1]]]}}'


@pytest.mark.parametrize("value", [object(), frozenset({1}),
                                   np.array([object()], dtype=object)])
def test_pyon_rejects_what_sipyco_rejects(value):
    with pytest.raises(TypeError):
        pyon.encode(value)


def test_pyon_decode_refuses_unknown_tags():
    with pytest.raises(TypeError, match="not PYON decodable"):
        pyon.decode('{"__jsonclass__": ["os.system", ["true"]]}')
