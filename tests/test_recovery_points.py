"""Scan frameworks append one value per point to several datasets in turn
(ndscan: ``points.axis_0``, ``points.channel_*``).  A kill between those
appends must not leave the recovered arrays out of step: the cut point is
set aside in ``artiq_journal/partial_point`` and stated, never silently
dropped or mixed in (issue 13, item 10)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from artiq_journal import pyon
from artiq_journal.recovery import recover
from artiq_journal.journal.constants import REC_CHECKPOINT
from test_recovery import SRC, Journal, journal_dir

KEYS = ("points.axis_0", "points.channel_counts", "points.channel_fit")

SCAN = r"""
import sys
sys.path.insert(0, sys.argv[1])
from artiq_journal.runner.datasets import DatasetDB, DatasetManager
from artiq_journal.worker_hooks.attach import attach

import os, signal
results, acks, keys, checkpoints = sys.argv[2], sys.argv[3], \
    sys.argv[4].split(","), sys.argv[5] == "1"
die_after = int(sys.argv[6])      # appends; 0: wait to be killed
mgr = DatasetManager(DatasetDB())
live = attach(mgr, rid=3, expid={"file": "scan.py", "arguments": {}},
              class_name="NdScan", results_dir=results, fsync="never")
live.stage("run")
for key in keys:
    mgr.set(key, [], {}, True, False, True)     # broadcast + archived
with open(acks, "w") as ack:
    for i in range(100000):
        for n, key in enumerate(keys):
            mgr.append_to(key, i * 10 + n)
            ack.write(f"{key} {i * 10 + n}\n")
            ack.flush()
            die_after -= 1
            if die_after == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        if checkpoints:
            live.checkpoint({"i": i + 1})
"""


def _run_and_kill(tmp_path, seed: int, checkpoints: bool,
                  die_after: int = 0):
    results = str(tmp_path / "results" / "2026-01-01" / "10")
    os.makedirs(results)
    acks = str(tmp_path / "acks")
    child = subprocess.Popen([sys.executable, "-c", SCAN, SRC, results, acks,
                              ",".join(KEYS), "1" if checkpoints else "0",
                              str(die_after)])
    if not die_after:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None and \
                not (os.path.exists(acks) and os.path.getsize(acks) > 0):
            time.sleep(0.01)    # started and appending (slow when loaded)
        rng = random.Random(seed)
        time.sleep(0.05 + rng.random() * 0.3)
        child.send_signal(signal.SIGKILL)
    child.wait()
    acked: dict = {key: [] for key in KEYS}
    with open(acks) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                acked[parts[0]].append(int(parts[1]))
    return str(tmp_path / "results"), acked


@pytest.mark.parametrize("seed,checkpoints,die_after", [
    (1, False, 0), (2, True, 0), (3, False, 0), (4, True, 0),
    (5, False, 3 * 137 + 1), (6, True, 3 * 211 + 2)])
def test_a_point_cut_by_sigkill_is_set_aside_and_arrays_stay_in_step(
        tmp_path, seed, checkpoints, die_after):
    root, acked = _run_and_kill(tmp_path, seed, checkpoints, die_after)
    report = recover(root)
    (run,) = report.runs
    assert run.outcome == "recovered", run.problems
    with h5py.File(run.output, "r") as f:
        got = {key: list(f["datasets"][key][()]) for key in KEYS}
        lengths = {len(v) for v in got.values()}
        assert len(lengths) == 1, {k: len(v) for k, v in got.items()}
        whole = lengths.pop()
        partial = f["artiq_journal"].get("partial_point")
        aside = pyon.decode(partial[()].decode() if isinstance(
            partial[()], bytes) else partial[()]) if partial else {}
    # Nothing acknowledged is lost: whole points in the arrays, the cut
    # point's entries aside (the one in flight may or may not have landed).
    for key in KEYS:
        journaled = got[key] + ([aside[key]] if key in aside else [])
        assert journaled[:len(acked[key])] == acked[key], key
        assert len(journaled) - len(acked[key]) <= 1, key   # in flight
        assert journaled[:whole] == got[key]
    if aside:
        assert any("cut the last scan point" in p.reason
                   for p in run.problems)
    if die_after:        # killed itself inside a point: must be set aside
        assert len(aside) == die_after % len(KEYS)


def test_a_journal_ending_on_a_whole_point_is_left_alone(tmp_path):
    j = Journal(journal_dir(tmp_path))
    j.stage("run", 1.0)
    for key in KEYS:
        j.op("set", key, [], {}, True, False, True)
    for i in range(5):
        for key in KEYS:
            j.op("append_to", key, i)
    j.crash()
    (run,) = recover(tmp_path).runs
    with h5py.File(run.output, "r") as f:
        assert "partial_point" not in f["artiq_journal"]
        assert {len(f["datasets"][k]) for k in KEYS} == {5}


def test_lists_that_are_not_one_scan_are_never_trimmed(tmp_path):
    # x started with one entry more; both grow by one per point: the
    # lengths differ, but the longer list is not the one appended last.
    j = Journal(journal_dir(tmp_path))
    j.stage("run", 1.0)
    j.op("set", "x", [0], {}, False, False, True)
    j.op("set", "y", [], {}, False, False, True)
    for i in range(5):
        j.op("append_to", "x", i)
        j.op("append_to", "y", i)
    j.crash()
    (run,) = recover(tmp_path).runs
    with h5py.File(run.output, "r") as f:
        assert len(f["datasets/x"]) == 6 and len(f["datasets/y"]) == 5
        assert "partial_point" not in f["artiq_journal"]


def test_a_scan_of_one_list_never_reads_past_the_tail_window(
        tmp_path, monkeypatch):
    # A long scan appending to one list (plus a per-point scalar): no point
    # can be cut between lists, which the tail window alone shows, so the
    # whole last segment is not read again (it was: 10x the recovery time).
    from artiq_journal.recovery import points
    j = Journal(journal_dir(tmp_path))
    j.stage("run", 1.0)
    j.op("set", "counts", [], {}, True, False, True)
    for i in range(6000):                     # ~170 KiB: past the window
        j.op("append_to", "counts", float(i))
        if i % 10 == 9:
            j.op("set", "scan.point", i, {}, True, False, True)
    j.crash()
    windows = []
    real_read_tail = points.read_tail

    def read_tail(path, window, **kw):
        windows.append(window)
        return real_read_tail(path, window, **kw)
    monkeypatch.setattr(points, "read_tail", read_tail)
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered", run.problems
    assert all(w == points.DEFAULT_WINDOW for w in windows)
    with h5py.File(run.output, "r") as f:
        assert len(f["datasets/counts"]) == 6000
        assert "partial_point" not in f["artiq_journal"]


def _scan_cut_after(root, points: int, appended: int, value,
                    snapshot_at: int | None = None) -> None:
    """A crashed journal of a scan over KEYS: ``points`` whole points
    (``value(i, n)`` appended to KEYS[n]), then ``appended`` appends of
    the next; a snapshot after point ``snapshot_at``."""
    j = Journal(journal_dir(root))
    j.stage("run", 1.0)
    for key in KEYS:
        j.op("set", key, [], {}, True, False, True)
    for i in range(points + 1):
        for n, key in enumerate(KEYS):
            if i == points and n == appended:
                break
            j.op("append_to", key, value(i, n))
        if i == snapshot_at:
            j.snapshot()
    j.crash()


def test_a_long_float_scan_cut_mid_point_is_split_without_rereading(
        tmp_path, monkeypatch):
    # ndscan's shape: three float lists appended in turn, far past the tail
    # window, cut after two of three appends.  Recovery compacts float
    # lists to arrays; the cut point must still be set aside, and found from
    # what replay saw (the journal is not read a second or third time).
    from artiq_journal.recovery import points
    _scan_cut_after(tmp_path, 3000, 2, lambda i, n: i + n / 10)
    monkeypatch.setattr(points, "read_tail",
                        lambda *a, **kw: pytest.fail("re-read"))
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered", run.problems
    with h5py.File(run.output, "r") as f:
        for n, key in enumerate(KEYS):
            got = f["datasets"][key][()]
            assert got.dtype == np.float64 and len(got) == 3000
            assert got[-1] == 2999 + n / 10
        aside = pyon.decode(f["artiq_journal/partial_point"][()].decode())
    assert aside == {KEYS[0]: 3000.0, KEYS[1]: 3000.1}
    assert any("cut the last scan point" in p.reason for p in run.problems)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(
    st.sampled_from(["append_to", "set", "stage", "checkpoint"]),
    st.sampled_from(["a", "b", "c"]), st.integers(0, 3)), max_size=80),
    repeats=st.integers(0, 6), cut=st.integers(0, 2),
    floats=st.booleans())
def test_the_trail_finds_the_same_cut_as_the_journal_files(
        tmp_path_factory, ops, repeats, cut, floats):
    # Property: within the tail window both ways see every record, so the
    # trail replay kept must give exactly the answer the files give.
    from artiq_journal.recovery.points import split_partial_point
    from artiq_journal.replay import replay
    root = str(tmp_path_factory.mktemp("trail"))
    j = Journal(journal_dir(root))
    j.stage("run", 1.0)
    for key in "abc":
        j.op("set", key, [], {}, True, False, True)
    point = [("append_to", key, 0) for key in "ab"] + [("stage", "x", 0)]
    body = ops + point * repeats + point[:cut]
    for i, (name, key, v) in enumerate(body):
        value = float(i + v) if floats else i + v
        if name == "append_to":
            j.op(name, key, value)
        elif name == "set":
            j.op(name, key, [value], {}, True, False, True)
        elif name == "stage":
            j.stage(key, 1.0)
        else:
            j.append(REC_CHECKPOINT, [{"i": i}])
    j.crash()
    answers = []
    for use_trail in (True, False):
        result = replay(j.path, compact_floats=True, trail=True)
        found = split_partial_point(j.path, result.state,
                                    result.trail if use_trail else None)
        event(f"cut found: {found is not None}")
        answers.append((None if found is None else
                        (found.values, found.missing),
                        pyon.encode(result.state.datasets.local)))
    assert answers[0] == answers[1]


def test_after_a_snapshot_the_scan_start_is_found_in_the_files(
        tmp_path, monkeypatch):
    # Replay starts from the snapshot, inside the scan: the shapes it saw
    # cannot tell where points begin, the last segment can.
    _scan_cut_after(tmp_path, 40, 1, lambda i, n: i, snapshot_at=20)
    from artiq_journal.recovery import points
    reads = []
    real_read_tail = points.read_tail
    monkeypatch.setattr(points, "read_tail", lambda *a, **kw: reads.append(
        a) or real_read_tail(*a, **kw))
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered", run.problems
    assert run.snapshot and reads
    with h5py.File(run.output, "r") as f:
        assert {len(f["datasets"][k]) for k in KEYS} == {40}
        aside = pyon.decode(f["artiq_journal/partial_point"][()].decode())
    assert aside == {KEYS[0]: 40}


@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
    | st.floats() | st.text(max_size=300) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=20), max_leaves=30))
def test_the_leading_key_is_what_a_full_decode_gives(value):
    import msgpack
    from artiq_journal.recovery.points import _leading_key
    data = msgpack.packb(value, use_bin_type=True)
    expected = [value[0]] if type(value) is list and value and \
        type(value[0]) is str else []
    assert _leading_key(data) == expected
