"""The journaled DatasetManager keeps ARTIQ's semantics exactly.

* ARTIQ's own ``artiq/test/test_datasets.py`` cases pass against a journaled
  real ARTIQ ``DatasetManager`` and a journaled built-in-runner one, and each
  journal replays to the manager's final state.
* Differential: random operation sequences run in lockstep on a plain
  manager and a journaled one of the same class (ARTIQ's or ours; that ours
  equals ARTIQ's is test_state_differential's job) raise the same exceptions
  (type and message), journal nothing for a failing call, keep the same
  objects (broadcast and archive share one value), and replaying the journal
  -- in full, or up to any checkpoint, from a snapshot or not -- gives the
  manager's state at that point.
* Journal write failure: ``stop`` raises JournalFailed from the dataset call
  and every later one; ``continue`` logs once and runs on unjournaled.
* Retention and detach.
"""

from __future__ import annotations

import copy
import errno
import importlib
import logging
import os
import random
import unittest

import h5py
import numpy as np
import pytest

import artiq_vendor
from artiq_journal.errors import JournalFailed
from artiq_journal.journal.constants import REC_APPEND, REC_MUTATE, REC_SET
from artiq_journal.journal.reader import JournalReader
from artiq_journal.replay import replay
from artiq_journal.runner import environment as runner_env
from artiq_journal.runner.datasets import DatasetManager as RunnerManager
from artiq_journal.worker_hooks import LiveJournal, attach
from artiq_journal.worker_hooks import attach as attach_function
from artiq_journal.worker_hooks.attach import (HOOKED_METHODS, LIVE_ATTR,
                                               live_journal)

# importlib, not "import ... as": the package's attribute "attach" is the
# function, which "import a.b.attach as m" would bind.
attach_module = importlib.import_module("artiq_journal.worker_hooks.attach")

COUNTS = {"sequences": 0, "operations": 0, "raised": 0, "checkpoints": 0,
          "snapshots": 0, "replays": 0}

EXPID = {"log_level": 30, "file": "exp.py", "class_name": None,
         "arguments": {}}


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    print(f"\nhook semantics: {COUNTS}")


class MockDatasetDB:
    """ARTIQ's test_datasets MockDatasetDB, with ``process_mod`` from sipyco
    when it is there (else the runner's identical one)."""

    def __init__(self, data=None):
        self.data = dict(data or {})

    def get(self, key):
        return self.data[key][1]

    def get_metadata(self, key):
        return self.data[key][2]

    def update(self, mod):
        try:
            from sipyco.sync_struct import process_mod
        except ImportError:
            from artiq_journal.runner.datasets import process_mod
        process_mod(self.data, copy.deepcopy(mod))


def artiq_manager_class():
    return artiq_vendor.import_module("artiq.master.worker_db").DatasetManager


def make_manager(backend, db):
    if backend == "artiq":
        return artiq_manager_class()(db)
    return RunnerManager(db)


def journal(mgr, tmp_path, rid=1, **kwargs):
    kwargs.setdefault("keep", True)
    kwargs.setdefault("fsync", "never")
    return attach(mgr, rid=rid, expid=EXPID, class_name="Exp",
                  results_dir=str(tmp_path), **kwargs)


# -- equality that sees types, numpy dtypes and tuple-vs-list ------------------

def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and \
            np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, float) and a != a:
        return b != b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def manager_state(mgr):
    return {"local": mgr.local, "archive": mgr.archive,
            "metadata": mgr.metadata,
            "broadcast": mgr._broadcaster.raw_view}


def replayed_state(datasets):
    return {"local": datasets.local, "archive": datasets.archive,
            "metadata": datasets.metadata, "broadcast": datasets.broadcast}


def assert_same_state(live, replayed):
    for part in ("local", "archive", "metadata", "broadcast"):
        assert same(live[part], replayed[part]), part


# -- ARTIQ's own test_datasets.py cases ------------------------------------------

def _artiq_case_names():
    if not artiq_vendor.available("artiq.test.test_datasets"):
        return ["<vendored ARTIQ unavailable>"]
    module = artiq_vendor.import_module("artiq.test.test_datasets")
    return unittest.TestLoader().getTestCaseNames(
        module.ExperimentDatasetCase)


class RunnerTestExperiment(runner_env.EnvExperiment):
    """ARTIQ's test_datasets.TestExperiment on the built-in runner."""

    def get(self, key):
        return self.get_dataset(key)

    def get_metadata(self, key):
        return self.get_dataset_metadata(key)

    def set(self, key, value, **kwargs):
        self.set_dataset(key, value, **kwargs)

    def append(self, key, value):
        self.append_to_dataset(key, value)


@pytest.mark.parametrize("backend", ["artiq", "runner"])
@pytest.mark.parametrize("name", _artiq_case_names())
def test_artiq_test_datasets_cases_pass_when_journaled(backend, name,
                                                       tmp_path):
    module = artiq_vendor.import_module("artiq.test.test_datasets")
    case = module.ExperimentDatasetCase(name)
    journals: list[LiveJournal] = []

    def set_up():
        if backend == "artiq":
            module.ExperimentDatasetCase.setUp(case)
        else:
            case.dataset_db = module.MockDatasetDB()
            case.dataset_mgr = RunnerManager(case.dataset_db)
            case.exp = RunnerTestExperiment(
                (None, case.dataset_mgr, None, None))
        journals.append(journal(case.dataset_mgr, tmp_path))

    case.setUp = set_up
    result = unittest.TestResult()
    case.run(result)
    assert result.testsRun == 1
    assert not result.errors and not result.failures, \
        result.errors + result.failures
    (live,) = journals
    if name != "test_append_nonexistent_fails":  # its one call fails
        assert live.writer.last_seq > 2, "nothing was journaled"
    state = manager_state(case.dataset_mgr)
    live.close()
    replayed = replay(live.path)
    assert replayed.clean_close
    assert_same_state(state, replayed_state(replayed.state.datasets))
    COUNTS["replays"] += 1


# -- single behaviours -------------------------------------------------------------

BACKENDS = ["artiq", "runner"]


def _require(backend):
    if backend == "artiq":
        artiq_vendor.require()


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_and_archive_share_the_callers_object(backend, tmp_path):
    _require(backend)
    mgr = make_manager(backend, MockDatasetDB())
    journal(mgr, tmp_path)
    value = [1, 2]
    mgr.set("k", value, {"unit": "V"}, True, False, True)
    assert mgr.local["k"] is value
    assert mgr._broadcaster.raw_view["k"][1] is value
    mgr.append_to("k", 3)
    mgr.mutate("k", 0, 10)
    assert value == [10, 2, 3]
    assert mgr.local["k"] is mgr._broadcaster.raw_view["k"][1]
    # get returns the very object, journaled or not
    assert mgr.get("k", archive=True) is value
    assert "k" not in mgr.archive


FAILING_OPS = [
    ("append_to", ("missing", 1)),
    ("mutate", ("missing", 0, 1)),
    ("append_to", ("scalar", 1)),
    ("append_to", ("scalar_b", 1)),
    ("append_to", ("array", 1.0)),
    ("mutate", ("scalar", 0, 1)),
    ("mutate", ("scalar_b", 0, 1)),
    ("mutate", ("list", 99, 1)),
    ("mutate", ("list", (), 1)),
    ("mutate", ("list", (1, 2, 3, 4), [1])),
    ("mutate", ("array", ((0, 1), (0, 1), (0, 1)), 1.0)),
    ("mutate", ("none", 0, 1)),
    ("get", ("missing",)),
    ("get", ("missing", True)),
    ("set", ("k", 1, {}, False, False)),
    ("append_to", ("list",)),
]


def _prefill(mgr):
    mgr.set("scalar", 1, {}, False, False, True)
    mgr.set("scalar_b", 2, {}, True, False, False)
    mgr.set("array", np.zeros(3), {}, False, False, True)
    mgr.set("list", [1, 2, 3], {}, True, False, True)
    mgr.set("none", None, {}, False, False, True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,args", FAILING_OPS,
                         ids=[f"{op}{args!r}" for op, args in FAILING_OPS])
def test_failing_call_raises_what_artiq_raises_and_journals_nothing(
        backend, op, args, tmp_path):
    _require(backend)
    # The reference is the same class unjournaled: whatever it raises (for
    # "artiq", ARTIQ's own class), the journaled one must raise too.
    plain = make_manager(backend, MockDatasetDB())
    journaled = make_manager(backend, MockDatasetDB())
    _prefill(plain)
    _prefill(journaled)
    live = journal(journaled, tmp_path)
    before = live.writer.last_seq
    with pytest.raises(Exception) as expected:
        getattr(plain, op)(*args)
    with pytest.raises(Exception) as got:
        getattr(journaled, op)(*args)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)
    assert live.writer.last_seq == before
    assert_same_state(manager_state(plain), manager_state(journaled))
    COUNTS["raised"] += 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_get_archive_journals_only_values_from_the_dataset_db(backend,
                                                               tmp_path):
    _require(backend)
    mgr = make_manager(backend, MockDatasetDB({"db": (True, 5, {})}))
    live = journal(mgr, tmp_path)
    mgr.set("mine", 1, {}, False, False, True)
    assert mgr.get("mine", archive=True) == 1      # from local: no record
    assert mgr.get("db") == 5                       # archive=False: none
    assert mgr.get("db", True) == 5                 # from the DB: record
    live.close()
    kinds = [r.type_name for r in JournalReader(live.path)]
    assert kinds == ["run_info", "stage", "set", "archive", "close"]


def test_slice_index_is_journaled_as_artiqs_tuple_form(tmp_path):
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path)
    mgr.set("a", np.arange(6.0), {}, False, False, True)
    mgr.mutate("a", slice(1, 5, 2), [-1.0, -2.0])
    live.close()
    mutate = [r.payload for r in JournalReader(live.path)
              if r.type_name == "mutate"]
    assert mutate == [["a", (1, 5, 2), [-1.0, -2.0]]]
    assert same(replay(live.path).state.datasets.local["a"], mgr.local["a"])


# -- differential random sequences --------------------------------------------

KEYS = ["a", "b", "c", "d"]


def _random_value(rng):
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randint(-5, 5)
    if kind == 1:
        return rng.random()
    if kind == 2:
        return [rng.randint(0, 9) for _ in range(rng.randrange(4))]
    if kind == 3:
        return np.arange(rng.randrange(1, 5), dtype=rng.choice(
            [np.float64, np.int32]))
    if kind == 4:
        return np.zeros((2, 3))
    if kind == 5:
        return "text"
    return (1, "x")


def _random_op(rng):
    key = rng.choice(KEYS + ["db"])
    kind = rng.randrange(10)
    if kind < 3:
        md = rng.choice([{}, {"unit": "V"}, {"unit": "ms", "precision": 2}])
        return "set", (key, _random_value(rng), md, rng.random() < 0.4,
                       rng.random() < 0.2, rng.random() < 0.8)
    if kind < 6:
        return "append_to", (key, rng.choice([1, 2.5, [0]]))
    if kind < 9:
        index = rng.choice([0, 1, -1, 5, (0, 2), (0, 2, 1),
                            ((0, 1), (0, 2)), (1,)])
        return "mutate", (key, index, rng.choice([7, 0.5, [3, 4]]))
    return "get", (key, rng.random() < 0.7)


def _run_in_lockstep(plain, journaled, live, rng, n_ops, checkpoints):
    for _ in range(n_ops):
        op, args = _random_op(rng)
        outcomes = []
        for mgr in (plain, journaled):
            try:
                getattr(mgr, op)(*copy.deepcopy(args))
                outcomes.append(None)
            except Exception as exc:  # compared below
                outcomes.append(exc)
        before = live.writer.last_seq
        COUNTS["operations"] += 1
        a, b = outcomes
        assert type(a) is type(b), (op, args, a, b)
        if a is not None:
            assert str(a) == str(b)
            COUNTS["raised"] += 1
            assert live.writer.last_seq == before
        if rng.random() < 0.15:
            seq = live.checkpoint({"ops": COUNTS["operations"]})
            checkpoints.append((seq, copy.deepcopy(
                manager_state(journaled))))
            COUNTS["checkpoints"] += 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_sequences_replay_to_the_same_state(backend, tmp_path,
                                                   monkeypatch, caplog):
    _require(backend)
    caplog.set_level(logging.ERROR)  # ARTIQ's "will not be stored" warnings
    # Snapshot as often as the amortised rule allows, to exercise them.
    monkeypatch.setattr(attach_module, "SNAPSHOT_MIN_BYTES", 0)
    rng = random.Random(20240601)
    for number in range(12):
        db = {"db": (True, [1.5, 2.5], {"unit": "s"})}
        plain = make_manager(backend, MockDatasetDB(db))
        journaled = make_manager(backend, MockDatasetDB(db))
        live = journal(journaled, tmp_path, rid=number + 1)
        checkpoints = []
        _run_in_lockstep(plain, journaled, live, rng, 150, checkpoints)
        assert_same_state(manager_state(plain), manager_state(journaled))
        final = copy.deepcopy(manager_state(journaled))
        live.close()
        COUNTS["sequences"] += 1
        result = replay(live.path)
        assert result.records_untrusted == 0
        assert_same_state(final, replayed_state(result.state.datasets))
        for seq, state in checkpoints:
            upto = replay(live.path, upto_seq=seq)
            assert upto.state.checkpoint_seq == seq
            assert_same_state(state, replayed_state(upto.state.datasets))
            COUNTS["replays"] += 1
        if os.path.exists(os.path.join(live.path, "checkpoint")):
            COUNTS["snapshots"] += 1


def test_snapshot_covers_exactly_the_checkpoint_record(tmp_path,
                                                       monkeypatch):
    monkeypatch.setattr(attach_module, "SNAPSHOT_MIN_BYTES", 0)
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path)
    mgr.set("ys", [], {}, True, False, True)
    for i in range(50):
        mgr.append_to("ys", i)
    seq = live.checkpoint({"i": 50})
    mgr.append_to("ys", 50)       # after the checkpoint: not in the snapshot
    live.abandon()
    result = replay(live.path)
    assert result.snapshot is not None and result.snapshot.seq == seq
    assert result.state.checkpoint == {"i": 50}
    assert result.state.datasets.local["ys"] == list(range(51))
    assert replay(live.path, upto_seq=seq).state.datasets.local["ys"] == \
        list(range(50))


def test_snapshot_cost_is_amortised(tmp_path):
    """One checkpoint per append on a growing list: snapshots get rarer as
    the state grows (total snapshot bytes stay within a small multiple of
    the journal), never one per checkpoint."""
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path)
    mgr.set("ys", [], {}, False, False, True)
    written = []
    real = live.writer.write_snapshot

    def counting(state):
        seq = real(state)
        written.append(os.path.getsize(os.path.join(live.path,
                                                    "checkpoint")))
        return seq

    live.writer.write_snapshot = counting
    n = 60000
    for i in range(n):
        mgr.append_to("ys", float(i))
        live.checkpoint({"i": i + 1})
    journal_bytes = attach_module._bytes_appended(live.writer)
    live.close()
    assert 1 <= len(written) < 20
    assert sum(written) <= 3 * journal_bytes
    print(f"\n{n} checkpoints: {len(written)} snapshots, "
          f"{sum(written)} snapshot bytes for {journal_bytes} journal bytes")


# -- journal failure policies ----------------------------------------------------

def _break_disk(live, err=errno.EIO):
    def failing_write(fd, data):
        raise OSError(err, os.strerror(err))
    live.writer._write = failing_write


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_error_stop_raises_journal_failed_from_every_later_call(
        backend, tmp_path, caplog):
    _require(backend)
    mgr = make_manager(backend, MockDatasetDB())
    live = journal(mgr, tmp_path, on_error="stop")
    mgr.set("ys", [], {}, False, False, True)
    _break_disk(live)
    with caplog.at_level(logging.ERROR, logger="artiq_journal"):
        with pytest.raises(JournalFailed):
            mgr.append_to("ys", 1)
    assert mgr.local["ys"] == [1], "the operation itself happened"
    assert any("stopping the run" in r.getMessage() for r in caplog.records)
    with pytest.raises(JournalFailed):
        mgr.set("other", 2, {}, False, False, True)
    with pytest.raises(JournalFailed):
        live.checkpoint({"i": 1})
    live.close()                      # never raises
    assert not hasattr(mgr, LIVE_ATTR)


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_error_continue_logs_once_and_runs_unjournaled(backend, tmp_path,
                                                          caplog):
    _require(backend)
    mgr = make_manager(backend, MockDatasetDB())
    live = journal(mgr, tmp_path, on_error="continue")
    mgr.set("ys", [], {}, False, False, True)
    _break_disk(live, errno.ENOSPC)
    with caplog.at_level(logging.WARNING, logger="artiq_journal"):
        mgr.append_to("ys", 1)
        mgr.append_to("ys", 2)
        mgr.mutate("ys", 0, 5)
    loud = [r for r in caplog.records if "UNJOURNALED" in r.getMessage()]
    assert len(loud) == 1 and loud[0].levelno == logging.ERROR
    assert mgr.local["ys"] == [5, 2]
    assert not set(HOOKED_METHODS) & set(vars(mgr)), "originals restored"
    assert live_journal(mgr) is None
    live.close()


@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_unjournalable_value_never_fails_the_run_under_any_policy(
        tmp_path, caplog, policy):
    """A value the codec cannot encode is our limitation, not a failing
    disk: one warning, the journal closes with reason journal_disabled (a
    journal with a hole would lose data silently), the run goes on."""
    from artiq_journal.replay import replay
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path, on_error=policy)
    mgr.set("fine", 1, {}, False, False, True)
    with caplog.at_level(logging.WARNING, logger="artiq_journal"):
        mgr.set("obj", object(), {}, False, False, True)
        mgr.set("later", 2, {}, False, False, True)
    assert isinstance(mgr.local["obj"], object) and mgr.local["later"] == 2
    assert not live.active and live_journal(mgr) is None
    warnings = [r for r in caplog.records if "RID 1" in r.getMessage()]
    assert len(warnings) == 1 and "'obj'" in warnings[0].getMessage()
    assert "journal_disabled" in warnings[0].getMessage()
    live.close()
    result = replay(live.path)
    assert result.state.close_reason == "journal_disabled"
    assert sorted(result.state.datasets.local) == ["fine"]


def test_on_error_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTIQ_JOURNAL_ON_ERROR", "continue")
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path)
    assert live.on_error == "continue"
    live.close()


# -- lifecycle ---------------------------------------------------------------------

def test_detach_restores_methods_and_later_calls_are_not_journaled(tmp_path):
    mgr = RunnerManager(MockDatasetDB())
    captured_set = None
    live = journal(mgr, tmp_path)
    captured_set = mgr.set
    for name in HOOKED_METHODS:
        assert name in vars(mgr)
    live.detach()
    for name in HOOKED_METHODS:
        assert name not in vars(mgr)
    seq = live.writer.last_seq
    captured_set("k", 1, {}, False, False, True)   # a stale reference
    mgr.set("k2", 1, {}, False, False, True)
    assert live.writer.last_seq == seq
    assert mgr.local == {"k": 1, "k2": 1}
    live.close()


def test_attach_twice_is_refused_and_a_leftover_journal_is_moved_aside(
        tmp_path):
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path)
    with pytest.raises(ValueError):
        journal(mgr, tmp_path, rid=2)
    mgr.set("old", 1, {}, False, False, True)
    live.close()
    live2 = journal(RunnerManager(MockDatasetDB()), tmp_path)
    live2.close()
    assert live2.path == live.path, "the new run gets the canonical name"
    aside = str(tmp_path / "000000001-Exp.1.journal")
    assert sorted(replay(aside).state.datasets.local) == ["old"]
    assert replay(live2.path).state.datasets.local == {}


def test_run_info_record_follows_the_contract(tmp_path):
    mgr = RunnerManager(MockDatasetDB())
    live = attach(mgr, rid=7, expid=dict(EXPID), class_name="Scan",
                  results_dir=str(tmp_path), start_time=123.5,
                  pipeline_name="p", priority=3, artiq_version="9.0")
    assert live.path == str(tmp_path / "000000007-Scan.journal")
    live.close()
    first, stage = list(JournalReader(live.path))[:2]
    info = first.payload
    assert info["rid"] == 7 and info["class_name"] == "Scan"
    assert info["expid"] == EXPID and info["start_time"] == 123.5
    assert info["pipeline_name"] == "p" and info["priority"] == 3
    assert info["artiq_version"] == "9.0"
    assert info["results_dir"] == str(tmp_path)
    assert info["h5_name"] == "000000007-Scan.h5"
    assert info["pid"] == os.getpid() and isinstance(info["host"], str)
    assert stage.payload == ["build", 123.5]


def _write_results_file(path, complete=True, rid=1):
    with h5py.File(path, "w") as f:
        f.create_group("datasets")
        if complete:
            f.create_group("archive")
            f["rid"] = rid


@pytest.mark.parametrize("keep", [False, True])
def test_clean_close_after_verified_results_removes_or_keeps(tmp_path, keep):
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path, keep=keep, fsync="group")
    mgr.set("x", 1, {}, False, False, True)
    live.stage("run")
    live.stage("analyze")
    h5 = tmp_path / "000000001-Exp.h5"
    _write_results_file(h5)
    assert live.results_written(h5)
    live.close()
    assert os.path.isdir(live.path) is keep
    assert not any(p.name.endswith(".deleted") for p in tmp_path.iterdir())
    if keep:
        result = replay(live.path)
        assert result.clean_close and result.state.stage == "results_written"
        assert result.state.closed and \
            result.state.close_reason == "results_written"


def test_journal_is_kept_when_run_raised_so_it_can_be_resumed(tmp_path):
    # ARTIQ writes the results file when run() raises, but the scan is
    # unfinished: its journal must stay for `artiq-journal resume`.
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path, keep=False, fsync="group")
    mgr.set("x", 1, {}, False, False, True)
    live.stage("run")
    h5 = tmp_path / "000000001-Exp.h5"
    _write_results_file(h5)
    assert live.results_written(h5)
    live.close()
    assert os.path.isdir(live.path)
    assert replay(live.path).clean_close


def test_results_file_of_another_rid_is_not_results_written(tmp_path,
                                                             caplog):
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path, keep=False, fsync="group")
    live.stage("run")
    live.stage("analyze")
    h5 = tmp_path / "000000001-Exp.h5"
    _write_results_file(h5, rid=2)
    with caplog.at_level(logging.WARNING, logger="artiq_journal"):
        assert not live.results_written(h5)
    live.close("results_written")
    assert any("names RID 2, not 1" in r.getMessage()
               for r in caplog.records)
    assert replay(live.path).state.close_reason == "no_results"


def test_journal_is_kept_without_a_verified_results_file(tmp_path, caplog):
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path, keep=False)
    h5 = tmp_path / "000000001-Exp.h5"
    _write_results_file(h5, complete=False)
    with caplog.at_level(logging.WARNING, logger="artiq_journal"):
        assert not live.results_written(h5)
    live.close()
    assert os.path.isdir(live.path)
    assert replay(live.path).state.close_reason == "no_results"


def test_records_of_the_hot_path_are_exactly_the_contract(tmp_path):
    mgr = RunnerManager(MockDatasetDB())
    live = journal(mgr, tmp_path)
    mgr.set("k", [], {"unit": "V"}, True, True, False)
    mgr.append_to("k", 1.5)
    mgr.set("m", np.zeros((2, 2)), {}, False, False, True)
    mgr.mutate("m", ((0, 1), (0, 2)), 2.0)  # tuple of tuples, kept as given
    live.close()
    records = [(r.rtype, r.payload) for r in JournalReader(live.path)]
    assert (REC_SET, ["k", [], {"unit": "V"}, True, True, False]) in records
    assert (REC_APPEND, ["k", 1.5]) in records
    mutates = [p for t, p in records if t == REC_MUTATE]
    assert mutates == [["m", ((0, 1), (0, 2)), 2.0]]
    assert type(mutates[0][1]) is tuple


def test_package_exports():
    assert attach_function is attach and callable(attach)
    from artiq_journal import worker_hooks
    assert worker_hooks.LiveJournal is LiveJournal
    assert worker_hooks.JournalResumable.__name__ == "JournalResumable"
