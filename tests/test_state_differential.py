"""artiq_journal.state / runner.datasets against real ARTIQ.

The differential tests apply the same random operation sequences to ARTIQ's
``artiq.master.worker_db.DatasetManager`` and to ours and require identical
behaviour: same return values, same exceptions (type and message), same
warnings, same local/archive/metadata/broadcast contents *and aliasing*, same
mods published to the dataset DB, and the same HDF5 tree from write_hdf5.
They skip when the vendored ARTIQ is unavailable; the spec and snapshot tests
below them do not need it.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import unittest
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import artiq_vendor
from artiq_journal.errors import CorruptSnapshot
from artiq_journal import pyon
from artiq_journal.runner import environment
from artiq_journal.runner.datasets import DatasetDB, DatasetManager
from artiq_journal.state import DatasetState

COUNTS = {"sequences": 0, "operations": 0, "raised": 0, "by_op": {}}


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    print(f"\ndifferential: {COUNTS['sequences']} sequences, "
          f"{COUNTS['operations']} operations ({COUNTS['raised']} raised in "
          f"both), 0 divergences; ok/raised by operation: "
          f"{ {k: tuple(v) for k, v in sorted(COUNTS['by_op'].items())} }")


@pytest.fixture(scope="session")
def artiq():
    artiq_vendor.require("artiq.master.worker_db")
    from artiq.master.worker_db import DatasetManager as ArtiqDatasetManager
    from sipyco.sync_struct import process_mod
    return SimpleNamespace(DatasetManager=ArtiqDatasetManager,
                           process_mod=process_mod)


# --- comparison helpers -------------------------------------------------------

def same(a, b) -> bool:
    """Deep equality that also requires equal types (and numpy dtypes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return (a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return (list(a) == list(b)
                and all(same(a[k], b[k]) for k in a))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def h5_tree(f: h5py.File) -> dict:
    """Every object of an HDF5 file: path -> kind, dtype, shape, value and
    attributes (with their dtypes)."""
    tree = {}

    def attrs(obj):
        return {name: (obj.attrs.get_id(name).dtype, obj.attrs[name])
                for name in obj.attrs}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            tree[name] = ("dataset", obj.dtype, obj.shape, obj[()],
                          attrs(obj))
        else:
            tree[name] = ("group", attrs(obj))
    f.visititems(visit)
    return tree


def outcome(call):
    """("ok", value) or ("raise", type, message) of ``call()``."""
    try:
        return ("ok", call())
    except Exception as e:  # the point is to compare them
        return ("raise", type(e), str(e))


class LogRecorder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append((record.name, record.levelname,
                             record.getMessage()))

    def messages(self, logger_name):
        return [(level, message) for name, level, message in self.records
                if name == logger_name]


@pytest.fixture
def log_recorder():
    recorder = LogRecorder()
    loggers = [logging.getLogger(name) for name in
               ("artiq.master.worker_db", "artiq_journal.state")]
    for logger in loggers:
        logger.addHandler(recorder)
    yield recorder
    for logger in loggers:
        logger.removeHandler(recorder)


# --- the two sides --------------------------------------------------------------

INITIAL_DB = {
    "db_scalar": (True, 1.5, {"unit": "V"}),
    "db_list": (False, [1, 2, 3], {}),
    "a": (True, np.arange(3), {"scale": 2}),
}


class ArtiqSideDB:
    """ARTIQ's test MockDatasetDB, recording the mods it receives."""

    def __init__(self, process_mod):
        self.process_mod = process_mod
        self.data = copy.deepcopy(INITIAL_DB)
        self.mods = []

    def get(self, key):
        return self.data[key][1]

    def get_metadata(self, key):
        return self.data[key][2]

    def update(self, mod):
        self.mods.append(copy.deepcopy(mod))
        self.process_mod(self.data, copy.deepcopy(mod))


class OurSideDB(DatasetDB):
    def __init__(self):
        super().__init__()
        self.data = copy.deepcopy(INITIAL_DB)
        self.mods = []

    def update(self, mod):
        self.mods.append(copy.deepcopy(mod))
        super().update(mod)


# --- operation strategies ------------------------------------------------------

# Few keys, so that operations meet datasets set earlier in the sequence.
KEYS = st.sampled_from(["a", "a", "a", "b", "b", "c", "db_scalar",
                        "db_list", "missing"])
small_ints = st.integers(-5, 5)
int_arrays = hnp.arrays(np.int64, st.integers(0, 5), elements=small_ints)
float_arrays = hnp.arrays(np.float64, st.integers(0, 5),
                          elements=st.floats(-1e3, 1e3))
grid_arrays = hnp.arrays(np.int64, st.tuples(st.integers(1, 3),
                                             st.integers(1, 3)),
                         elements=small_ints)
VALUES = st.one_of(
    small_ints, st.floats(-1e3, 1e3), st.booleans(), st.none(),
    st.text("xyz", max_size=3),
    st.lists(small_ints, max_size=5),
    st.lists(st.lists(small_ints, min_size=2, max_size=2), max_size=3),
    int_arrays, float_arrays, grid_arrays,
    st.just({"not": "hdf5"}),
)
METADATA = st.fixed_dictionaries({}, optional={
    "unit": st.sampled_from(["V", "ms", "kHz"]),
    "scale": st.sampled_from([1, 1000, 0.001]),
    "precision": st.integers(0, 4)})
# Weighted towards indices that fit the containers below, plus every shape
# of malformed index ARTIQ has to reject.
INDICES = st.one_of(
    st.integers(0, 2), st.integers(0, 2), st.integers(-6, 6),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.integers(-6, 6), st.integers(-6, 6),
              st.sampled_from([-2, -1, 0, 1, 2, None])),
    st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
              st.tuples(st.integers(0, 3), st.integers(0, 3))),
    st.just(()),
    st.tuples(small_ints, small_ints, small_ints, small_ints),
)
MUTATE_VALUES = st.one_of(small_ints, small_ints,
                          st.lists(small_ints, max_size=3),
                          int_arrays, st.text("q", max_size=1))
CONTAINERS = st.one_of(
    st.lists(small_ints, min_size=3, max_size=5),
    st.lists(small_ints, max_size=5),
    st.lists(st.lists(small_ints, min_size=2, max_size=2), max_size=3),
    hnp.arrays(np.int64, st.integers(3, 5), elements=small_ints),
    int_arrays, float_arrays, grid_arrays,
    st.none())  # archived None: ARTIQ treats it as "nonexistent" for mutate
_set = st.tuples(st.just("set"), KEYS, VALUES, METADATA, st.booleans(),
                 st.booleans(), st.booleans())
# Containers are set more often than other values, so that mutate and
# append_to meet something they can change, not only their error paths.
_set_container = st.tuples(st.just("set"), KEYS, CONTAINERS, METADATA,
                           st.booleans(), st.booleans(), st.booleans())
_mutate = st.tuples(st.just("mutate"), KEYS, INDICES, MUTATE_VALUES)
_append = st.tuples(st.just("append_to"), KEYS, VALUES)
# Well-formed changes to the datasets every sequence starts with: the
# paths that succeed (and publish, and show through shared objects).
_mutate_fitting = st.tuples(st.just("mutate"), st.sampled_from(["a", "b"]),
                            st.integers(0, 2), small_ints)
_append_fitting = st.tuples(st.just("append_to"),
                            st.sampled_from(["a", "b"]), small_ints)
OPERATIONS = st.one_of(
    _set, _set_container, _mutate, _mutate, _mutate_fitting,
    _mutate_fitting, _append, _append_fitting,
    st.tuples(st.just("get"), KEYS, st.booleans()),
    st.tuples(st.just("get_metadata"), KEYS),
)


def _set_container_of(key):
    return st.tuples(st.just("set"), st.just(key), CONTAINERS, METADATA,
                     st.booleans(), st.booleans(), st.booleans())


# Every sequence starts by setting "a" and "b" (with random flags).
SETUP = st.tuples(_set_container_of("a"), _set_container_of("b")).map(list)


def perform(manager, operation):
    """Apply one operation; every argument is a fresh deep copy, so the two
    sides never share objects."""
    name, *args = copy.deepcopy(operation)
    if name == "set":
        key, value, metadata, broadcast, persist, archive = args
        return outcome(lambda: manager.set(key, value, metadata, broadcast,
                                           persist, archive))
    if name == "get":
        return outcome(lambda: manager.get(args[0], archive=args[1]))
    return outcome(lambda: getattr(manager, name)(*args))


def broadcast_of(manager):
    return manager._broadcaster.raw_view


def assert_same_state(theirs, ours):
    assert same(ours.local, theirs.local)
    assert same(ours.archive, theirs.archive)
    assert same(ours.metadata, theirs.metadata)
    assert same(broadcast_of(ours), broadcast_of(theirs))
    assert broadcast_of(ours) is ours.broadcast
    for key in theirs.local.keys() & broadcast_of(theirs).keys():
        # broadcast + archive share one object: a mutation shows in both
        assert (ours.local[key] is ours.broadcast[key][1]) == \
            (theirs.local[key] is broadcast_of(theirs)[key][1])
    for key, (_, _, metadata) in broadcast_of(theirs).items():
        assert (ours.broadcast[key][2] is ours.metadata[key]) == \
            (metadata is theirs.metadata[key])


def written_hdf5(manager):
    with h5py.File(io.BytesIO(), "w") as f:
        result = outcome(lambda: manager.write_hdf5(f))
        return result, h5_tree(f)


def assert_same_hdf5(theirs, ours):
    (their_result, their_tree), (our_result, our_tree) = \
        written_hdf5(theirs), written_hdf5(ours)
    assert our_result == their_result
    assert list(our_tree) == list(their_tree)
    for name, their_entry in their_tree.items():
        assert same(list(our_tree[name]), list(their_entry)), name


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(setup=SETUP,
       operations=st.lists(OPERATIONS, min_size=1, max_size=30))
def test_random_operation_sequences_match_artiq(artiq, log_recorder, setup,
                                                operations):
    operations = setup + operations
    their_db = ArtiqSideDB(artiq.process_mod)
    our_db = OurSideDB()
    theirs = artiq.DatasetManager(their_db)
    ours = DatasetManager(our_db)
    log_recorder.records.clear()
    for operation in operations:
        their_outcome = perform(theirs, operation)
        our_outcome = perform(ours, operation)
        assert same(list(our_outcome), list(their_outcome)), operation
        COUNTS["operations"] += 1
        COUNTS["raised"] += their_outcome[0] == "raise"
        tally = COUNTS["by_op"].setdefault(operation[0], [0, 0])
        tally[their_outcome[0] == "raise"] += 1
    assert_same_state(theirs, ours)
    assert same(our_db.mods, their_db.mods)
    assert same(our_db.data, their_db.data)
    assert log_recorder.messages("artiq_journal.state") == \
        log_recorder.messages("artiq.master.worker_db")
    assert_same_hdf5(theirs, ours)
    COUNTS["sequences"] += 1


def test_hdf5_type_error_message_matches_artiq(artiq):
    their_db, our_db = ArtiqSideDB(artiq.process_mod), OurSideDB()
    theirs, ours = artiq.DatasetManager(their_db), DatasetManager(our_db)
    for manager in (theirs, ours):
        manager.set("ok", 1, {}, False, False, True)
        manager.set("bad", {"x": 1}, {"unit": "V"}, False, False, True)
    (their_result, their_tree), (our_result, our_tree) = \
        written_hdf5(theirs), written_hdf5(ours)
    assert their_result[0] == "raise" and their_result[1] is TypeError
    assert "Error writing dataset 'bad' of type '<class 'dict'>'" in \
        their_result[2]
    assert our_result == their_result
    assert list(our_tree) == list(their_tree)


def test_artiq_own_dataset_tests_pass_on_the_runner(artiq):
    """ARTIQ's artiq/test/test_datasets.py, run unchanged against our
    DatasetManager and our EnvExperiment (and against ARTIQ's own, to show
    the harness runs them)."""
    module = artiq_vendor.import_module("artiq.test.test_datasets")

    class OurTestExperiment(environment.EnvExperiment):
        get = module.TestExperiment.get
        get_metadata = module.TestExperiment.get_metadata
        set = module.TestExperiment.set
        append = module.TestExperiment.append

    class OnRunner(module.ExperimentDatasetCase):
        def setUp(self):
            self.dataset_db = module.MockDatasetDB()
            self.dataset_mgr = DatasetManager(self.dataset_db)
            self.exp = OurTestExperiment((None, self.dataset_mgr, None, None))

    loader = unittest.TestLoader()
    results = {}
    for case in (module.ExperimentDatasetCase, OnRunner):
        result = unittest.TestResult()
        loader.loadTestsFromTestCase(case).run(result)
        results[case.__name__] = result
        assert result.wasSuccessful(), (result.failures, result.errors)
    assert results["OnRunner"].testsRun == \
        results["ExperimentDatasetCase"].testsRun >= 12
    print(f"\nARTIQ test_datasets: {results['OnRunner'].testsRun} cases "
          f"passed on the runner")


# --- specification tests (no ARTIQ needed) ---------------------------------------

def test_persist_forces_broadcast_and_publishes_setitem():
    mods = []
    state = DatasetState()
    state._publish = mods.append
    state.set("k", [1], {"unit": "V"}, False, True, False)
    assert state.broadcast == {"k": (True, [1], {"unit": "V"})}
    assert "k" not in state.local
    assert mods == [{"action": "setitem", "path": [], "key": "k",
                     "value": (True, [1], {"unit": "V"})}]


def test_broadcast_and_archive_share_one_object():
    state = DatasetState()
    state.set("k", [0, 0], {}, True, False, True)
    state.mutate("k", 1, 5)
    state.append_to("k", 7)
    assert state.local["k"] is state.broadcast["k"][1]
    assert state.local["k"] == [0, 5, 7]


def test_broadcast_mutations_publish_sipyco_mods():
    mods = []
    state = DatasetState()
    state.set("k", [0, 0, 0], {}, True, False, False)
    state._publish = mods.append
    state.mutate("k", (0, 2), [4, 4])
    state.append_to("k", 1)
    state.set("k", 0, {}, False, False, True)
    assert mods == [
        {"action": "setitem", "path": ["k", 1], "key": slice(0, 2),
         "value": [4, 4]},
        {"action": "append", "path": ["k", 1], "x": 1},
        {"action": "delitem", "path": [], "key": "k"}]


def test_neither_flag_warns_and_still_records_metadata(caplog):
    state = DatasetState()
    state.set("k", 1, {}, False, False, True)
    with caplog.at_level(logging.WARNING, logger="artiq_journal.state"):
        state.set("k", 2, {"unit": "V"}, False, False, False)
    assert caplog.messages == ["Dataset 'k' will not be stored. Both "
                               "'broadcast' and 'archive' are set to False."]
    assert state.local == {} and state.metadata == {"k": {"unit": "V"}}


def test_archived_none_cannot_be_mutated():
    state = DatasetState()
    state.set("k", None, {}, False, False, True)
    with pytest.raises(KeyError, match="Cannot mutate nonexistent dataset "
                                       "'k'"):
        state.append_to("k", 1)


def test_index_conversion_on_numpy_grids():
    state = DatasetState()
    state.set("g", np.zeros((3, 3), dtype=np.int64), {}, False, False, True)
    state.mutate("g", ((0, 2), (1, 3)), 1)
    state.mutate("g", (2, 3), 9)
    assert state.local["g"].tolist() == [[0, 1, 1], [0, 1, 1], [9, 9, 9]]


def test_archive_value_last_read_wins_with_warning(caplog):
    state = DatasetState()
    state.archive_value("k", 1)
    with caplog.at_level(logging.WARNING, logger="artiq_journal.state"):
        state.archive_value("k", 2)
    assert state.archive == {"k": 2}
    assert caplog.messages == ["Dataset 'k' is already in archive, "
                               "overwriting"]


def test_apply_replays_named_operations():
    state = DatasetState(warn=False)
    state.apply("set", ["k", [1], {}, True, False, True])
    state.apply("append_to", ["k", 2])
    state.apply("mutate", ["k", 0, 5])
    state.apply("archive", ["db", 3.0])
    assert state.local == {"k": [5, 2]} and state.archive == {"db": 3.0}
    with pytest.raises(ValueError):
        state.apply("delete", ["k"])


# --- snapshots ------------------------------------------------------------------

STATE_OPERATIONS = st.one_of(
    st.tuples(st.just("set"), KEYS, VALUES, METADATA, st.booleans(),
              st.booleans(), st.booleans()),
    st.tuples(st.just("mutate"), KEYS, INDICES, MUTATE_VALUES),
    st.tuples(st.just("append_to"), KEYS, VALUES),
    st.tuples(st.just("archive"), KEYS, VALUES),
)


def replay(state, operations):
    return [outcome(lambda: state.apply(op[0], copy.deepcopy(list(op[1:]))))
            for op in operations]


def assert_same_dataset_state(a, b):
    # local and archive orders are the results file's write order and must
    # survive; nothing observable depends on the order of the other two.
    for attribute in ("local", "archive"):
        assert same(getattr(a, attribute), getattr(b, attribute)), attribute
    for attribute in ("metadata", "broadcast"):
        assert same(dict(sorted(getattr(a, attribute).items())),
                    dict(sorted(getattr(b, attribute).items()))), attribute


@settings(max_examples=200, deadline=None)
@given(before=st.lists(STATE_OPERATIONS, max_size=15),
       after=st.lists(STATE_OPERATIONS, max_size=10),
       through_pyon=st.booleans())
def test_snapshot_restores_a_state_that_behaves_identically(before, after,
                                                            through_pyon):
    original = DatasetState(warn=False)
    replay(original, before)
    snapshot = original.to_snapshot()
    if through_pyon:
        try:
            snapshot = pyon.decode(pyon.encode(snapshot))
        except TypeError:  # a value PYON cannot hold ({"not": "hdf5"} can)
            return
    restored = DatasetState.from_snapshot(snapshot)
    assert_same_dataset_state(restored, original)
    # The model: a state that lived through the whole sequence. The
    # restored state must behave the same (shared broadcast/archive values
    # included) and must not alias the original's objects.
    original_outcomes = replay(original, after)
    restored_outcomes = replay(restored, after)
    assert same(restored_outcomes, original_outcomes)
    assert_same_dataset_state(restored, original)


def test_from_snapshot_does_not_alias_input_or_other_keys():
    shared = [1, 2]
    snapshot = {"format": 1, "archive": [["db", shared]],
                "datasets": [["x", shared, {}, False, False, True],
                             ["y", shared, {}, True, False, True]]}
    state = DatasetState.from_snapshot(snapshot)
    state.append_to("x", 3)
    state.append_to("y", 4)
    assert shared == [1, 2]
    assert state.local == {"x": [1, 2, 3], "y": [1, 2, 4]}
    assert state.archive == {"db": [1, 2]}
    assert state.local["y"] is state.broadcast["y"][1]


def test_snapshot_keeps_metadata_only_keys_and_local_order():
    state = DatasetState(warn=False)
    state.set("late", 1, {}, False, False, True)
    state.set("early", 2, {"unit": "s"}, False, False, True)
    state.set("meta_only", 3, {"unit": "V"}, False, False, False)
    state.set("late", 4, {}, False, False, False)
    state.set("late", 5, {}, False, False, True)
    restored = DatasetState.from_snapshot(state.to_snapshot())
    assert list(restored.local) == ["early", "late"]
    assert restored.metadata["meta_only"] == {"unit": "V"}
    assert "meta_only" not in restored.local


@pytest.mark.parametrize("snapshot", [
    None, {}, {"format": 2, "datasets": [], "archive": []},
    {"format": 1, "datasets": [["k", 1, {}, True, False]], "archive": []},
    {"format": 1, "datasets": [[1, 1, {}, True, False, True]], "archive": []},
    {"format": 1, "datasets": [["k", 1, {}, 1, False, True]], "archive": []},
    {"format": 1, "datasets": [], "archive": [["k"]]},
    {"format": 1, "datasets": "no", "archive": []},
])
def test_from_snapshot_rejects_malformed_input(snapshot):
    with pytest.raises(CorruptSnapshot):
        DatasetState.from_snapshot(snapshot)
