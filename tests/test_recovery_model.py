"""Model test: journal + crash + recover() gives the results file ARTIQ's
DatasetManager would have written.

Random operation sequences (``set`` with random flags and metadata,
``mutate`` with ARTIQ's index conventions, ``append_to``, ``get(archive=
True)``) are applied to the model -- ``artiq_journal.state.DatasetState``,
and, when the vendored ARTIQ is usable, also the real
``artiq.master.worker_db.DatasetManager`` -- and, for the operations that
succeeded there, journaled with the real JournalWriter (optionally with
snapshots in between).  After an abandoned writer (a crash), ``recover()``
must write ``datasets``/``archive`` groups identical to the model's
``write_hdf5``: same groups, names, dtypes, shapes, values (bitwise) and
attributes.
"""

from __future__ import annotations

import copy
import os
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import artiq_vendor
from test_recovery import Journal, h5_content, journal_dir, write_model
from artiq_journal.recovery import recover

COUNTS = {"sequences": 0, "operations": 0, "journaled": 0, "snapshots": 0,
          "rejected": 0, "with_artiq": 0}


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    print(f"\nrecovery model: {COUNTS['sequences']} sequences, "
          f"{COUNTS['operations']} operations, {COUNTS['journaled']} "
          f"journaled, {COUNTS['snapshots']} snapshots, "
          f"{COUNTS['with_artiq']} also checked against real ARTIQ, "
          f"{COUNTS['rejected']} rejected (unstorable in HDF5), "
          "0 mismatches")


# --- strategies --------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "ns.d"])
SMALL_INT = st.integers(-6, 6)
NUMBER = st.one_of(st.integers(-1000, 1000),
                   st.floats(allow_nan=False, width=64))
TEXT = st.text(st.characters(blacklist_categories=("Cs",),
                             blacklist_characters="\0"), max_size=6)
ARRAY = hnp.arrays(
    dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.float64,
                           np.float32, np.bool_, np.complex128]),
    shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
    elements={"allow_nan": False})
NP_SCALAR = st.one_of(st.integers(-100, 100).map(np.int32),
                      st.floats(-1e3, 1e3).map(np.float32),
                      st.integers(0, 200).map(np.uint8))
VALUE = st.one_of(
    NUMBER, st.booleans(), TEXT, NP_SCALAR, ARRAY,
    st.lists(st.integers(-1000, 1000), max_size=6),
    st.lists(st.floats(allow_nan=False), max_size=6),
    st.tuples(SMALL_INT, SMALL_INT),
    st.binary(max_size=5).filter(lambda b: b"\0" not in b))
METADATA = st.fixed_dictionaries({}, optional={
    "unit": st.sampled_from(["s", "Hz", "V", "µs"]),
    "scale": st.floats(1e-9, 1e9),
    "precision": st.integers(0, 10)})
INDEX = st.one_of(
    SMALL_INT,
    st.tuples(SMALL_INT, SMALL_INT),
    st.tuples(SMALL_INT, SMALL_INT, st.sampled_from([1, 2, -1])),
    st.tuples(st.tuples(SMALL_INT, SMALL_INT), st.tuples(SMALL_INT,
                                                         SMALL_INT)))
SET = st.tuples(st.just("set"), KEYS, VALUE, METADATA, st.booleans(),
                st.booleans(), st.booleans())
OP = st.one_of(
    SET,
    st.tuples(st.just("mutate"), KEYS, INDEX,
              st.one_of(NUMBER, st.lists(st.integers(-9, 9), max_size=3))),
    st.tuples(st.just("append_to"), KEYS, NUMBER),
    st.tuples(st.just("archive"), KEYS, VALUE))
# A few sets first, so that mutate/append_to mostly find their dataset.
OPS = st.builds(lambda first, rest: first + rest,
                st.lists(SET, min_size=1, max_size=4),
                st.lists(OP, min_size=4, max_size=40))
OPS_WITH_SNAPSHOTS = st.builds(
    lambda first, rest: first + rest, st.lists(SET, min_size=1, max_size=4),
    st.lists(st.one_of(OP, st.just(("snapshot",))), min_size=4,
             max_size=40))


# --- the real ARTIQ manager, when available ----------------------------------

class _DatasetDB:
    """What DatasetManager needs of the master's dataset DB."""

    def __init__(self) -> None:
        self.value = None

    def update(self, mod) -> None:
        pass

    def get(self, key):
        return self.value


def _artiq_manager():
    if not artiq_vendor.available("artiq.master.worker_db"):
        return None
    from artiq.master.worker_db import DatasetManager
    return DatasetManager(_DatasetDB())


def _apply_artiq(mgr, name: str, args: list) -> None:
    if name == "archive":
        key, value = args
        mgr.ddb.value = value
        mgr.get(key, archive=True)
    else:
        getattr(mgr, name)(*args)


# --- the property ------------------------------------------------------------

def check(ops) -> None:
    COUNTS["sequences"] += 1
    artiq = _artiq_manager()
    with tempfile.TemporaryDirectory() as tmp:
        j = Journal(journal_dir(tmp))
        for op in ops:
            COUNTS["operations"] += 1
            if op[0] == "snapshot":
                j.snapshot()
                COUNTS["snapshots"] += 1
                continue
            name, args = op[0], list(op[1:])
            if name == "archive" and args[0] in j.model.local:
                # ARTIQ's get() returns the local value and archives
                # nothing: the hooks never journal such a read.
                continue
            if not j.op(name, *args):
                continue
            COUNTS["journaled"] += 1
            if artiq is not None:
                _apply_artiq(artiq, name, copy.deepcopy(args))
        j.crash()
        try:
            expected = write_model(j.model, os.path.join(tmp, "model.h5"))
        except (TypeError, ValueError):
            COUNTS["rejected"] += 1
            reject()   # ARTIQ itself could not write this results file
        report = recover(tmp)
        (run,) = report.runs
        assert run.outcome == "recovered", run.to_dict()
        assert not [p for p in run.problems if p.severity != "info"]
        got = h5_content(run.output)
        assert got == h5_content(expected)
        if artiq is not None:
            COUNTS["with_artiq"] += 1
            with h5py.File(os.path.join(tmp, "artiq.h5"), "w") as f:
                artiq.write_hdf5(f)
            assert got == h5_content(os.path.join(tmp, "artiq.h5"))


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


# Appends to several lists in turn, one of them replaced by a set in
# between: replay's shortcut for appends must follow the new list.
@example([("set", "a", [1], {}, False, False, True),
          ("set", "b", [2], {}, True, False, True),
          ("append_to", "a", 3), ("append_to", "b", 4), ("append_to", "a", 5),
          ("set", "a", [6.5], {}, False, False, True),
          ("append_to", "a", 7), ("append_to", "b", 8)])
@SETTINGS
@given(OPS)
def test_recovered_file_equals_artiq_write_hdf5(ops):
    check(ops)


@SETTINGS
@given(OPS_WITH_SNAPSHOTS)
def test_recovered_file_equals_artiq_write_hdf5_with_snapshots(ops):
    check(ops)


def test_model_is_checked_against_real_artiq_when_vendored():
    """The real-ARTIQ leg above runs whenever the vendored ARTIQ imports."""
    artiq_vendor.require("artiq.master.worker_db")
    assert _artiq_manager() is not None
