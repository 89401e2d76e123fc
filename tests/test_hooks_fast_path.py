"""The dataset hooks' pre-encoded payloads (codec.encode_append /
encode_mutate + JournalWriter.append_encoded) recover to exactly what
ARTIQ itself holds and writes.

Random sequences of ``append_to`` (floats, numpy scalars of several types,
small arrays) and ``mutate`` (int indexes, slices with None/negative/step
fields, ARTIQ's tuple and tuple-of-tuples forms) run in lockstep on a
plain DatasetManager and a journaled one -- the real vendored ARTIQ one,
and the built-in runner's.  Both must raise the same exceptions; then the
journal, replayed, gives the manager's state with exact types (an appended
``np.float64`` stays one), and -- after a crash -- ``recover()`` writes the
``datasets`` group ARTIQ's own ``write_hdf5`` writes for the plain manager
(dtypes included).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import artiq_vendor
from test_hooks_semantics import (MockDatasetDB, assert_same_state, journal,
                                  make_manager, manager_state,
                                  replayed_state, same)
from test_recovery import h5_content
from artiq_journal.journal.constants import REC_APPEND, REC_MUTATE
from artiq_journal.journal.reader import JournalReader
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.recovery import recover
from artiq_journal.replay import replay

COUNTS = {"sequences": 0, "operations": 0, "raised": 0, "recovered": 0}


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    print(f"\nhooks fast path: {COUNTS}")


SMALL = st.integers(-9, 9)
FIELD = st.one_of(st.none(), SMALL)
SCALAR = st.one_of(
    st.floats(width=64, allow_nan=False),
    st.floats(width=64, allow_nan=False).map(np.float64),
    st.floats(width=32, allow_nan=False).map(np.float32),
    st.integers(-2 ** 63, 2 ** 63 - 1).map(np.int64),
    st.integers(-2 ** 31, 2 ** 31 - 1).map(np.int32),
    st.integers(-1000, 1000))
INDEX = st.one_of(
    SMALL,
    st.builds(slice, FIELD, FIELD, st.sampled_from([None, 1, 2, -1])),
    st.tuples(FIELD, FIELD),
    st.tuples(FIELD, FIELD, st.sampled_from([None, 1, 2, -1])),
    st.tuples(st.tuples(FIELD, FIELD), st.tuples(FIELD, FIELD)),
    st.tuples(st.tuples(FIELD, FIELD, st.sampled_from([None, 2])),
              st.tuples(FIELD, FIELD)))
KEY = st.sampled_from(["scan.ys", "scan.img", "scan.f32"])
# 1 KiB rows, all of one shape: ARTIQ could not write a ragged list.
ROW = st.floats(-1e6, 1e6).map(lambda x: np.arange(128.0) * x)
OP = st.one_of(
    st.tuples(st.just("append_to"), KEY, SCALAR),
    st.tuples(st.just("append_to"), st.just("scan.rows"), ROW),
    st.tuples(st.just("mutate"), KEY, INDEX, SCALAR))
OPS = st.lists(OP, min_size=1, max_size=40)

# ARTIQ's own mutate casts a float into a float32 array (overflow: inf).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered")
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


def _initial(mgr):
    mgr.set("scan.ys", [], {}, False, False, True)
    mgr.set("scan.rows", [], {}, False, False, True)
    mgr.set("scan.img", np.zeros((8, 8)), {"unit": "V"}, False, False, True)
    mgr.set("scan.f32", np.zeros(16, dtype=np.float32), {}, False, False,
            True)


def _run(backend, ops, tmp):
    artiq_vendor.require() if backend == "artiq" else None
    plain = make_manager(backend, MockDatasetDB())
    journaled = make_manager(backend, MockDatasetDB())
    live = journal(journaled, tmp)
    for mgr in (plain, journaled):
        _initial(mgr)
    for name, *args in ops:
        COUNTS["operations"] += 1
        outcomes = []
        for mgr in (plain, journaled):
            try:
                getattr(mgr, name)(*copy.deepcopy(args))
                outcomes.append(None)
            except Exception as exc:  # compared below
                outcomes.append(exc)
        a, b = outcomes
        assert type(a) is type(b), (name, args, a, b)
        if a is not None:
            assert str(a) == str(b)
            COUNTS["raised"] += 1
    assert live.active, "the journal must never switch itself off here"
    assert_same_state(manager_state(plain), manager_state(journaled))
    return plain, journaled, live


@pytest.mark.parametrize("backend", ["artiq", "runner"])
@SETTINGS
@given(ops=OPS)
def test_fast_path_records_replay_to_the_managers_state(backend, ops,
                                                       caplog):
    caplog.set_level(logging.ERROR)
    COUNTS["sequences"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        plain, journaled, live = _run(backend, ops, tmp)
        final = copy.deepcopy(manager_state(journaled))
        live.close()
        result = replay(live.path)
        assert result.records_untrusted == 0
        assert_same_state(final, replayed_state(result.state.datasets))


@SETTINGS
@given(ops=OPS)
def test_recovered_file_equals_artiq_write_hdf5_through_the_hooks(ops,
                                                                  caplog):
    caplog.set_level(logging.ERROR)
    artiq_vendor.require("artiq.master.worker_db")
    with tempfile.TemporaryDirectory() as tmp:
        plain, journaled, live = _run("artiq", ops, tmp)
        live.abandon()     # a crash: the journal stays for artiq-recover
        expected = os.path.join(tmp, "artiq-own.h5")
        try:
            with h5py.File(expected, "w") as f:
                plain.write_hdf5(f)
        except (TypeError, ValueError):
            reject()    # ARTIQ itself could not write this results file
        (run,) = recover(tmp).runs
        assert run.outcome == "recovered", run.to_dict()
        got = h5_content(run.output, groups=("datasets",))
        assert got == h5_content(expected, groups=("datasets",))
        COUNTS["recovered"] += 1


def test_scan_shapes_are_journaled_through_append_encoded(tmp_path,
                                                          monkeypatch):
    # The hot path is really taken (a regression to the packer would not
    # fail the equality tests above), and its records are the contract.
    calls, packed = [], []
    real, real_append = JournalWriter.append_encoded, JournalWriter.append

    def counting(self, rtype, payload):
        calls.append(rtype)
        return real(self, rtype, payload)

    def packing(self, rtype, obj):
        packed.append(rtype)        # append() frames through
        calls.append(None)          # append_encoded too: not counted
        return real_append(self, rtype, obj)
    # Before attach: the hooks bind the writer's methods then.
    monkeypatch.setattr(JournalWriter, "append_encoded", counting)
    monkeypatch.setattr(JournalWriter, "append", packing)
    mgr = make_manager("runner", MockDatasetDB())
    live = journal(mgr, tmp_path)
    _initial(mgr)
    mgr.append_to("scan.ys", np.float64(0.5))
    mgr.append_to("scan.ys", 1.5)
    mgr.append_to("scan.ys", np.arange(128.0))
    mgr.mutate("scan.img", slice(1, 9, 2), 1.5)
    mgr.mutate("scan.img", ((0, 4), (2, 6)), np.float64(2.5))
    mgr.mutate("scan.f32", 3, np.float32(1))
    direct = [r for i, r in enumerate(calls)
              if r is not None and (i == 0 or calls[i - 1] is not None)]
    assert [r for r in direct if r in (REC_APPEND, REC_MUTATE)] == \
        [REC_APPEND] * 3 + [REC_MUTATE] * 3
    assert not {REC_APPEND, REC_MUTATE} & set(packed)
    live.close()
    records = [r.payload for r in JournalReader(live.path)
               if r.rtype in (REC_APPEND, REC_MUTATE)]
    expected = [["scan.ys", np.float64(0.5)], ["scan.ys", 1.5],
                ["scan.ys", np.arange(128.0)],
                ["scan.img", (1, 9, 2), 1.5],
                ["scan.img", ((0, 4), (2, 6)), np.float64(2.5)],
                ["scan.f32", 3, np.float32(1)]]
    assert same(records, expected)
    assert type(records[0][1]) is np.float64


def test_hooks_without_append_encoded_pack_every_record(tmp_path):
    # make_hooks' optional fast path off: everything goes through append.
    from artiq_journal.worker_hooks.adapters import select_adapter
    from artiq_journal.worker_hooks.hooks import make_hooks
    mgr = make_manager("runner", MockDatasetDB())
    _initial(mgr)
    calls = []

    def append(rtype, payload):
        calls.append((rtype, payload))
        return len(calls)

    def on_fail(rtype, payload, exc):
        raise AssertionError(f"on_fail({rtype}, {payload!r}, {exc!r})")
    hooks, _ = make_hooks(mgr, select_adapter(mgr), append, on_fail)
    for value in (1.5, np.float64(2), np.arange(4.0)):
        hooks["append_to"]("scan.ys", value)
        hooks["append_to"]("scan.ys", value)    # the caches now filled
    hooks["mutate"]("scan.img", slice(0, 4, 2), 1.0)
    assert [t for t, _ in calls] == [REC_APPEND] * 6 + [REC_MUTATE]
    assert same(calls[-1][1], ["scan.img", (0, 4, 2), 1.0])
