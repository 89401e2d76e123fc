"""Format 3 rotation (FORMAT.md section 11): under fsync "never"/"group" a
full segment is synced in the background while appends go on; nothing
after the rotation is acknowledged before the segment is synced and
vouched for by a segment_synced record.  (Power loss: test_powerloss.py;
the reading rule: test_format_doc.py and tests/outsider.)"""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from artiq_journal.errors import JournalFailed
from artiq_journal.journal import codec
from artiq_journal.journal import writer as writer_module
from artiq_journal.journal.constants import (REC_CLOSE, REC_SEGMENT_SYNCED,
                                             REC_SET)
from artiq_journal.journal.fsio import FileOps
from artiq_journal.journal.reader import read_all
from artiq_journal.journal.writer import JournalWriter


class GatedSync(FileOps):
    """fdatasync from a background-sync thread waits for ``gate``, or
    fails with ``fail`` (an errno)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.fail: int | None = None

    def fdatasync(self, fd):
        if threading.current_thread().name.startswith(
                "artiq-journal segment sync"):
            self.gate.wait(10)
            if self.fail is not None:
                raise OSError(self.fail, os.strerror(self.fail))
        os.fdatasync(fd)


@pytest.fixture(autouse=True)
def small_segments(monkeypatch):
    monkeypatch.setattr(writer_module, "BACKGROUND_ROTATION_MIN_BYTES", 0)


def _record(i: int) -> list:
    return [f"k{i}", b"x" * 300, {}, False, False, True]


@pytest.mark.parametrize("fsync", ["never", "group"])
def test_nothing_after_a_rotation_is_acknowledged_before_its_sync(
        tmp_path, fsync):
    ops = GatedSync()
    w = JournalWriter(tmp_path / "a.journal", fsync=fsync, ops=ops,
                      segment_bytes=1000, group_interval=0.001,
                      heartbeat_interval=None)
    for i in range(3):
        w.append(REC_SET, _record(i))   # the third fills segment 1
    assert w._pendings, "segment 1 is syncing in the background"
    rotated_at = w._pendings[0].last_seq
    for i in range(3, 5):
        w.append(REC_SET, _record(i))   # into segment 2 (maybe 3)
    time.sleep(0.05)                    # group ticks: nothing to settle
    assert w.durable_seq <= rotated_at
    ops.gate.set()
    assert w.sync() == w.last_seq == w.durable_seq
    w.close("results_written")
    records, reader = read_all(str(tmp_path / "a.journal"))
    assert reader.diagnostics == [] and reader.clean_close
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    markers = [r for r in records if r.rtype == REC_SEGMENT_SYNCED]
    # One per rotated segment, in order, each naming the segment's last
    # record, and written into a later segment.
    numbers = [m.payload[0] for m in markers]
    assert numbers == sorted(numbers) and numbers[0] == 1
    for m in markers:
        number, last = m.payload
        own = [r for r in records if r.segment == f"segment-{number}.log"]
        assert own[-1].seq == last
        assert int(m.segment[8:-4]) > number
    assert records[-1].rtype == REC_CLOSE


def test_failed_background_sync_stops_the_writer(tmp_path):
    ops = GatedSync()
    ops.fail = errno.EIO
    w = JournalWriter(tmp_path / "a.journal", fsync="never", ops=ops,
                      segment_bytes=1000, heartbeat_interval=None)
    for i in range(3):
        w.append(REC_SET, _record(i))
    ops.gate.set()
    w._pendings[0].done.wait(5)
    with pytest.raises(JournalFailed) as info:
        w.append(REC_SET, _record(9))
    assert "segment-1.log" in str(info.value)
    with pytest.raises(JournalFailed):
        w.sync()
    w.abandon()


def test_close_record_stays_last_when_it_fills_the_segment(tmp_path):
    path = tmp_path / "a.journal"
    w = JournalWriter(path, fsync="never", segment_bytes=1000,
                      heartbeat_interval=None)
    for i in range(5):
        w.append(REC_SET, _record(i))
    # Fill the current segment to just below the limit, then close.
    while w._offset + 60 < w.segment_bytes:
        w.append(REC_SET, ["f", 1, {}, False, False, True])
    w.close("x" * 80)
    records, reader = read_all(str(path))
    assert reader.diagnostics == [] and reader.clean_close
    assert records[-1].rtype == REC_CLOSE


def test_reopen_vouches_for_a_segment_its_writer_left_unsettled(tmp_path):
    path = tmp_path / "a.journal"
    w = JournalWriter(path, fsync="never", segment_bytes=1000,
                      heartbeat_interval=None)
    for i in range(4):
        w.append(REC_SET, _record(i))
    assert w._pendings
    w.abandon()                         # killed: never settled
    records, _ = read_all(str(path))
    assert not any(r.rtype == REC_SEGMENT_SYNCED for r in records)
    w = JournalWriter(path, fsync="always", heartbeat_interval=None)
    w.append(REC_SET, ["after", 1, {}, False, False, True])
    w.close()
    records, reader = read_all(str(path))
    assert reader.diagnostics == []
    markers = [r for r in records if r.rtype == REC_SEGMENT_SYNCED]
    assert [m.payload[0] for m in markers] == [1]
    assert codec.pack(records[-2].payload) == codec.pack(
        ["after", 1, {}, False, False, True])


def test_big_arrays_are_written_from_their_own_memory(tmp_path, monkeypatch):
    """Figure 8d's path: a large array in a record reaches writev as a view
    of the array's own buffer (no tobytes, no join), and the record's CRC
    over it (split across threads) is the one the reader checks."""
    import numpy as np
    arr = np.random.default_rng(5).random(3 << 20)   # 24 MiB
    seen = []

    class Recording(FileOps):
        def writev(self, fd, buffers):
            seen.extend(buffers)
            return os.writev(fd, buffers)

    path = tmp_path / "a.journal"
    w = JournalWriter(path, fsync="never", ops=Recording(),
                      heartbeat_interval=None)
    w.append(REC_SET, ["big", arr, {}, False, False, True])
    w.close()
    big = [b for b in seen if len(b) >= arr.nbytes]
    assert len(big) == 1 and isinstance(big[0], memoryview)
    assert np.shares_memory(np.asarray(big[0]), arr)
    records, reader = read_all(str(path))
    assert reader.diagnostics == []
    assert np.array_equal(records[0].payload[1], arr)


_KILLED_CHILD = r"""
import sys
from artiq_journal.journal import writer as writer_module
from artiq_journal.journal.writer import JournalWriter
writer_module.BACKGROUND_ROTATION_MIN_BYTES = 0   # rotate often, in the back
path, policy, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
w = JournalWriter(path, fsync=policy, segment_bytes=2000,
                  group_interval=0.001, heartbeat_interval=None)
print("open", flush=True)
i = start
while True:
    i += 1
    w.append(3, [i, "x" * (i % 97)])
    print(i, flush=True)        # acknowledged: append returned
"""


@pytest.mark.parametrize("policy", ["never", "group"])
def test_sigkill_during_background_rotations_loses_nothing(tmp_path, policy):
    # A real writer killed at random moments while rotated segments are
    # still syncing in the background, reopened each time: every
    # acknowledged record is read back, in order, fully trusted, and a
    # process crash never shows as an unsynced tear (the kernel kept it).
    import random
    import signal
    import subprocess
    import sys
    from artiq_journal.journal.constants import REC_SET
    from test_sigkill_writer import SRC
    rng = random.Random(1703)
    path = str(tmp_path / "bg.journal")
    env = dict(os.environ, PYTHONPATH=SRC)
    acked = last = segments_seen = 0
    for run in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", _KILLED_CHILD, path, policy, str(last)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        assert child.stdout.readline() == "open\n", child.stderr.read()
        time.sleep(rng.uniform(0.05, 0.3))
        child.kill()
        out = child.stdout.read()
        child.wait()
        child.stdout.close()
        child.stderr.close()
        done = [int(x) for x in out.split("\n")[:-1]]
        acked = max([acked] + done)
        records, reader = read_all(path)
        assert not [d for d in reader.diagnostics if d.severity != "info"], \
            (run, reader.diagnostics)
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        assert all(r.trusted for r in records)
        values = [r.payload[0] for r in records if r.rtype == REC_SET]
        assert values == list(range(1, len(values) + 1)), run
        assert len(values) >= acked, (run, len(values), acked)
        last = len(values)
        segments_seen = max(segments_seen, len(reader.segments))
        markers = sum(r.rtype == REC_SEGMENT_SYNCED for r in records)
    print(f"\n{policy}: 8 kills, {acked} acknowledged records, "
          f"{segments_seen} segments, {markers} segment_synced records")
    assert acked > 100 and segments_seen > 10 and markers > 0
