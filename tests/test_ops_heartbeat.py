"""Heartbeat records (type 10): a live writer appends ``[unix_time]`` every
``heartbeat_interval`` seconds from a background thread, concurrently with
the experiment thread's appends; replay treats them as no-ops."""

from __future__ import annotations

import sys
import time

import pytest

from artiq_journal.journal.constants import (REC_APPEND, REC_HEARTBEAT,
                                             REC_SET)
from artiq_journal.journal.reader import read_all
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.replay import replay
from artiq_journal.runstate import RunState


@pytest.mark.parametrize("fsync", ["group", "never", "always"])
def test_idle_writer_appends_heartbeats(tmp_path, fsync):
    path = tmp_path / "000000001-Scan.journal"
    w = JournalWriter(path, fsync=fsync, heartbeat_interval=0.05)
    before = time.time()
    time.sleep(0.4)
    w.close()
    records, reader = read_all(str(path))
    beats = [r for r in records if r.rtype == REC_HEARTBEAT]
    print(f"{fsync}: {len(beats)} heartbeats in 0.4 s")
    assert len(beats) >= 3
    assert all(before <= r.payload[0] <= time.time() for r in beats)
    assert [r.type_name for r in beats][:1] == ["heartbeat"]
    assert not reader.damaged and reader.clean_close


def test_heartbeat_off_writes_none(tmp_path):
    path = tmp_path / "000000001-Scan.journal"
    w = JournalWriter(path, heartbeat_interval=None)
    time.sleep(0.2)
    w.close()
    records, _ = read_all(str(path))
    assert [r.rtype for r in records if r.rtype == REC_HEARTBEAT] == []


def test_bad_interval_is_refused(tmp_path):
    with pytest.raises(ValueError):
        JournalWriter(tmp_path / "j.journal", heartbeat_interval=0)


@pytest.mark.parametrize("fsync", ["group", "never"])
def test_heartbeats_interleave_with_appends_and_snapshots_safely(tmp_path,
                                                                 fsync):
    # Many appends, segment rotations and snapshots race the heartbeat
    # thread: the journal must replay undamaged to exactly the model's
    # datasets (a heartbeat slipping between a snapshot's seq and its
    # position would show up as a gap).
    path = tmp_path / "000000001-Scan.journal"
    w = JournalWriter(path, fsync=fsync, heartbeat_interval=0.0005,
                      segment_bytes=4096)
    # Thread switches between almost any two bytecodes: the heartbeat
    # thread gets to run inside append's critical section if it can.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    model = RunState()
    seq = w.append(REC_SET, ["ys", [], {}, False, False, True])
    model.apply(seq, REC_SET, ["ys", [], {}, False, False, True])
    n = 6000
    for i in range(n):
        seq = w.append(REC_APPEND, ["ys", i])
        model.apply(seq, REC_APPEND, ["ys", i])
        if i % 10 == 0:
            time.sleep(0.0002)  # let the heartbeat thread find the lock free
        if i % 500 == 499:
            w.write_snapshot(model.to_snapshot())
    sys.setswitchinterval(switch)
    w.close()
    result = replay(path)
    assert not result.damaged, result.diagnostics
    assert result.clean_close
    assert result.state.datasets.local == model.datasets.local
    records, reader = read_all(str(path), after_seq=result.snapshot.seq)
    beats = result.last_seq - n - 2
    print(f"{fsync}: ~{beats} heartbeats among {n} appends, "
          f"{len(reader.segments)} segments left")
    assert beats > 0


def test_replay_ignores_heartbeats_but_notes_the_last(tmp_path):
    path = tmp_path / "000000001-Scan.journal"
    w = JournalWriter(path, heartbeat_interval=None)
    w.append(REC_SET, ["x", [1], {}, False, False, True])
    w.append(REC_HEARTBEAT, [1234.5])
    w.append(REC_APPEND, ["x", 2])
    w.append(REC_HEARTBEAT, [1240.0])
    w.close()
    result = replay(path)
    assert not result.damaged
    assert result.state.last_heartbeat == 1240.0
    assert result.state.datasets.local == {"x": [1, 2]}
    assert result.records_applied == 5 and result.clean_close


@pytest.mark.parametrize("fsync", ["group", "never"])
def test_heartbeats_never_share_or_reorder_sequence_numbers(tmp_path, fsync):
    # Every record of the journal, in file order: seqs exactly 1..N, every
    # append present once and in order, nothing reported by the reader
    # (a duplicate seq would be silently dropped by replay: check raw).
    path = tmp_path / "000000001-Scan.journal"
    w = JournalWriter(path, fsync=fsync, heartbeat_interval=0.0002,
                      segment_bytes=8192)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        n = 20000
        for i in range(n):
            w.append(REC_APPEND, ["ys", i])
            if i % 7 == 0:
                time.sleep(0)
    finally:
        sys.setswitchinterval(switch)
    w.close()
    records, reader = read_all(str(path))
    assert reader.diagnostics == []
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert [r.payload[1] for r in records if r.rtype == REC_APPEND] \
        == list(range(n))
    beats = sum(r.rtype == REC_HEARTBEAT for r in records)
    print(f"{fsync}: {beats} heartbeats among {n} appends")
    assert beats > 0


@pytest.mark.parametrize("fsync", ["group", "never"])
def test_heartbeats_and_pre_encoded_appends_never_share_a_seq(tmp_path,
                                                              fsync):
    # The same race for append_encoded (the dataset hooks' hot path): it
    # must take part in the heartbeat exclusion exactly like append.
    from artiq_journal.journal import codec
    path = tmp_path / "000000001-Scan.journal"
    w = JournalWriter(path, fsync=fsync, heartbeat_interval=0.0002,
                      segment_bytes=8192)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        n = 20000
        for i in range(n):
            w.append_encoded(REC_APPEND, codec.encode_append("ys", float(i)))
            if i % 7 == 0:
                time.sleep(0)
    finally:
        sys.setswitchinterval(switch)
    w.close()
    records, reader = read_all(str(path))
    assert reader.diagnostics == []
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert [r.payload[1] for r in records if r.rtype == REC_APPEND] \
        == [float(i) for i in range(n)]
    assert sum(r.rtype == REC_HEARTBEAT for r in records) > 0
