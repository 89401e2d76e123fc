"""``recovery.persisted``: which datasets a journal persisted, and writing
them into each dataset DB format.  Real masters and each release's own
``DatasetDB`` loading the result: ``test_real_master.py``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from artiq_journal import pyon, pyon_v1
from artiq_journal.journal.constants import REC_RUN_INFO, REC_SET
from artiq_journal.recovery.persisted import (persisted_datasets,
                                              read_dataset_db,
                                              sync_dataset_db)
from artiq_journal.runstate import RunState


def _state(*sets, rid=3) -> RunState:
    state = RunState()
    state.apply(1, REC_RUN_INFO, {"rid": rid, "class_name": "Scan"})
    for seq, args in enumerate(sets, 2):
        state.apply(seq, REC_SET, list(args))
    return state


def test_only_datasets_last_set_with_persist_are_listed():
    state = _state(["a", 1.0, {"unit": "V"}, True, True, True],
                   ["b", 2, {}, True, False, True],     # broadcast only
                   ["c", 3, {}, False, False, True],    # archive only
                   ["d", 4, {}, True, True, True],
                   ["d", 5, {}, True, False, True],     # no longer persisted
                   ["e", np.arange(3), {}, True, True, False])
    listed = persisted_datasets(state, "j")
    assert [(d.key, d.metadata, d.rid) for d in listed] == \
        [("a", {"unit": "V"}, 3), ("e", {}, 3)]
    assert np.array_equal(listed[1].value, np.arange(3))


def test_pyon_file_gets_missing_and_different_keeps_the_rest(tmp_path):
    db = tmp_path / "dataset_db.pyon"
    db.write_text(pyon_v1.encode({"keep": 7, "a": 0.5}) + "\n")
    state = _state(["a", 1.25, {"unit": "V"}, True, True, True],
                   ["new", (1, 2), {}, True, True, True],
                   ["keep", 7, {}, True, True, True])
    datasets = persisted_datasets(state)
    dry = sync_dataset_db(str(db), datasets, dry_run=True)
    assert [(d.key, s) for d, s, _ in dry.datasets] == \
        [("a", "different"), ("new", "missing"), ("keep", "same")]
    assert pyon_v1.decode(db.read_text()) == {"keep": 7, "a": 0.5}
    result = sync_dataset_db(str(db), datasets)
    assert sorted(d.key for d in result.written) == ["a", "new"]
    assert result.metadata_dropped
    assert pyon_v1.decode(db.read_text()) == \
        {"keep": 7, "a": 1.25, "new": (1, 2)}
    assert pyon_v1.decode(open(result.backup).read()) == \
        {"keep": 7, "a": 0.5}
    assert sorted(os.listdir(tmp_path)) == \
        ["dataset_db.pyon", "dataset_db.pyon.before-persist-1"]
    again = sync_dataset_db(str(db), datasets)
    assert again.written == [] and again.backup is None


@pytest.mark.parametrize("existing, expected_version", [
    (None, 1), ("v1", 1), ("v2", 2)])
def test_lmdb_entries_are_written_in_the_pyon_version_the_db_holds(
        tmp_path, existing, expected_version):
    lmdb = pytest.importorskip("lmdb")
    db = str(tmp_path / "dataset_db.mdb")
    env = lmdb.open(db, subdir=False)
    if existing:
        encode = pyon_v1.encode if existing == "v1" else pyon.encode
        with env.begin(write=True) as txn:
            txn.put(b"keep", encode((7, {})).encode())
    env.close()
    state = _state(["a", np.array([1.5, 2.5]), {"unit": "V"}, True, True,
                    True])
    result = sync_dataset_db(db, persisted_datasets(state))
    assert result.pyon_version == expected_version
    env = lmdb.open(db, subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        raw = txn.get(b"a").decode()
    env.close()
    decode = pyon_v1.decode if expected_version == 1 else pyon.decode
    value, metadata = decode(raw)
    assert np.array_equal(value, [1.5, 2.5]) and metadata == {"unit": "V"}
    kind, entries, _ = read_dataset_db(db)
    assert kind == "lmdb" and set(entries) == (
        {"a", "keep"} if existing else {"a"})
    if existing:
        assert os.path.exists(result.backup)
