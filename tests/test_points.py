"""Points (format 2): the dataset operations of one scan point as a unit.

``LiveJournal.point()`` / ``JournalResumable.journal_point()`` bracket them
with ``point_begin``/``point_end`` records: under ``fsync="always"`` one
fdatasync per point, and recovery applies a point whole or, when the
journal ends inside it, not at all (kept aside and stated in the file).
The power-loss proof is in test_powerloss.py (``-k points``).
"""

from __future__ import annotations

import json
import os

import h5py
import pytest

from artiq_journal.journal.constants import (REC_APPEND, REC_POINT_BEGIN,
                                             REC_POINT_END, REC_SET)
from artiq_journal.journal.fsio import OS_FILE_OPS, FileOps
from artiq_journal.journal.reader import JournalReader
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.recovery import recover
from artiq_journal.replay import replay
from artiq_journal.runner.datasets import DatasetManager as RunnerManager
from artiq_journal.worker_hooks import attach


class CountingOps(FileOps):
    def __init__(self):
        self.fdatasyncs = 0

    def fdatasync(self, fd):
        self.fdatasyncs += 1
        return OS_FILE_OPS.fdatasync(fd)


def _journal(tmp_path, name="000000001-Scan.journal"):
    return os.path.join(tmp_path, "results", "2026-01-01", "00", name)


def test_one_fdatasync_per_point_under_fsync_always(tmp_path):
    ops = CountingOps()
    writer = JournalWriter(_journal(tmp_path), fsync="always", ops=ops,
                           heartbeat_interval=None)
    writer.append(REC_SET, ["x", [], {}, False, False, True])
    before = ops.fdatasyncs
    for i in range(10):
        writer.begin_point()
        for _ in range(3):
            writer.append(REC_APPEND, ["x", i])
        writer.end_point()
        assert writer.durable_seq == writer.last_seq
    assert ops.fdatasyncs - before == 10
    # Outside a point, every append syncs again.
    writer.append(REC_APPEND, ["x", 99])
    assert ops.fdatasyncs - before == 11
    writer.close()


def test_points_do_not_nest_and_snapshots_wait_for_the_end(tmp_path):
    writer = JournalWriter(_journal(tmp_path), fsync="never",
                           heartbeat_interval=None)
    writer.begin_point()
    with pytest.raises(ValueError):
        writer.begin_point()
    with pytest.raises(ValueError):
        writer.write_snapshot({})
    writer.end_point()
    with pytest.raises(ValueError):
        writer.end_point()
    writer.close()


def _points_journal(tmp_path, points, partial):
    path = _journal(tmp_path)
    writer = JournalWriter(path, fsync="never", heartbeat_interval=None)
    writer.append(REC_SET, ["x", [], {}, False, False, True])
    writer.append(REC_SET, ["y", [], {}, False, False, True])
    for i in range(points):
        writer.begin_point()
        writer.append(REC_APPEND, ["x", i])
        writer.append(REC_APPEND, ["y", float(i)])
        writer.end_point()
    if partial:
        writer.begin_point()
        writer.append(REC_APPEND, ["x", points])
    writer.abandon()  # SIGKILL: no close record
    return path


def test_replay_applies_whole_points_and_leaves_out_a_partial_one(tmp_path):
    path = _points_journal(tmp_path, 5, partial=True)
    result = replay(path)
    local = result.state.datasets.local
    assert local == {"x": [0, 1, 2, 3, 4], "y": [0.0, 1.0, 2.0, 3.0, 4.0]}
    assert not result.damaged
    partial = result.partial_point
    assert partial["records"] == [(partial["last_seq"], REC_APPEND, ["x", 5])]
    # The state ends before the unfinished point.
    assert result.state.last_seq == partial["begin_seq"] - 1
    assert result.records_applied == 2 + 5 * 4


def test_recovered_file_states_the_partial_point(tmp_path):
    path = _points_journal(tmp_path, 3, partial=True)
    report = recover(str(tmp_path / "results"))
    (run,) = report.runs
    assert run.outcome == "recovered", run.to_dict()
    assert any("ends inside a point" in p.reason for p in run.problems)
    with h5py.File(run.output, "r") as f:
        assert list(f["datasets/x"][()]) == [0, 1, 2]
        assert list(f["datasets/y"][()]) == [0.0, 1.0, 2.0]
        group = f["artiq_journal"]
        info = json.loads(group.attrs["unfinished_point"])
        assert info["records"] == 1
        assert info["begin_seq"] < info["last_seq"]
        texts = [t.decode() for t in group["unfinished_point"][()]]
        assert len(texts) == 1 and "append_to" in texts[0] \
            and '"x"' in texts[0]
        assert not group.attrs["data_lost"]


def test_journal_without_a_partial_point_has_no_partial_point(tmp_path):
    path = _points_journal(tmp_path, 3, partial=False)
    result = replay(path)
    assert result.partial_point is None
    assert result.state.datasets.local["x"] == [0, 1, 2]


def test_live_point_brackets_the_operations(tmp_path):
    mgr = RunnerManager({})
    live = attach(mgr, rid=1, expid={"file": "x.py", "class_name": "Scan",
                                     "arguments": {}, "log_level": 30},
                  class_name="Scan", results_dir=str(tmp_path),
                  fsync="always", keep=True)
    mgr.set("x", [], {}, False, False, True)
    mgr.set("y", [], {}, False, False, True)
    for i in range(3):
        with live.point():
            mgr.append_to("x", i)
            with live.point():        # nested: joins the outer point
                mgr.append_to("y", i)
            assert live.checkpoint({"i": i + 1}) is None  # deferred
    types = [r.rtype for r in JournalReader(live.path)]
    assert types.count(REC_POINT_BEGIN) == types.count(REC_POINT_END) == 3
    # Each checkpoint lands after its point's end.
    result = replay(live.path)
    assert result.state.checkpoint == {"i": 3}
    assert result.state.datasets.local == {"x": [0, 1, 2], "y": [0, 1, 2]}
    live.abandon()


def test_exception_inside_a_point_still_commits_it(tmp_path):
    mgr = RunnerManager({})
    live = attach(mgr, rid=1, expid={"file": "x.py", "class_name": "Scan",
                                     "arguments": {}, "log_level": 30},
                  class_name="Scan", results_dir=str(tmp_path),
                  fsync="never", keep=True)
    mgr.set("x", [], {}, False, False, True)
    with pytest.raises(RuntimeError):
        with live.point():
            mgr.append_to("x", 1)
            raise RuntimeError("measurement failed")
    live.abandon()
    result = replay(live.path)
    assert result.partial_point is None
    assert result.state.datasets.local["x"] == [1]


@pytest.mark.parametrize("markers,reason", [
    ([(REC_POINT_BEGIN, [])] * 2, "point_begin inside an open point"),
    ([(REC_POINT_END, [])], "point_end without point_begin"),
    ([(REC_POINT_BEGIN, 5)], "point marker is not an array"),
])
def test_misplaced_point_markers_are_bad_records(tmp_path, markers, reason):
    path = _journal(tmp_path)
    writer = JournalWriter(path, fsync="never", heartbeat_interval=None)
    writer.append(REC_SET, ["x", [], {}, False, False, True])
    for rtype, payload in markers:
        writer.append(rtype, payload)
    writer.append(REC_APPEND, ["x", 1])
    writer.abandon()
    result = replay(path)
    bad = [d for d in result.diagnostics if d.kind == "bad_record"]
    assert bad and reason in bad[0].message
    assert result.state.datasets.local["x"] == []
