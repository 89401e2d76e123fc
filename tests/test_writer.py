"""JournalWriter: durability policies, rotation, reopening, fail-stop, and
the writer lock (docs/FORMAT.md sections 7 and 8).

File-system faults are injected through a FileOps subclass (EIO on fsync,
ENOSPC and short writes on write); the lock is tested against real second
processes, SIGKILL and fork.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import numpy as np
import pytest

import artiq_journal
from artiq_journal.errors import (CorruptRecord, JournalClosed,
                                  JournalFailed, JournalLocked,
                                  RecordTooLarge, UnsupportedVersion)
from artiq_journal.journal import codec, framing
from artiq_journal.journal import lock as journal_lock
from artiq_journal.journal.constants import (FORMAT_VERSION, REC_APPEND,
                                             REC_CLOSE, REC_MUTATE, REC_SET,
                                             SEGMENT_HEADER,
                                             SEGMENT_HEADER_SIZE)
from artiq_journal.journal.fsio import FileOps
from artiq_journal.journal.reader import read_all
from artiq_journal.journal.writer import JournalWriter

#: Where the package under test lives, for child processes' PYTHONPATH.
SRC = os.path.dirname(os.path.dirname(os.path.abspath(
    artiq_journal.__file__)))


class FaultyOps(FileOps):
    """Counts every call; once ``armed``, the calls named in ``fail`` raise
    OSError(``error``).  ``max_write`` makes every write short."""

    def __init__(self, fail=(), error=errno.EIO, max_write=None):
        self.calls = Counter()
        self.fail = set(fail)
        self.error = error
        self.max_write = max_write
        self.armed = False
        self.zero_writes = False

    def _enter(self, name):
        self.calls[name] += 1
        if self.armed and name in self.fail:
            raise OSError(self.error, os.strerror(self.error))

    def write(self, fd, data):
        self._enter("write")
        if self.zero_writes and self.armed:
            return 0
        if self.max_write is not None:
            data = memoryview(data)[:self.max_write]
        return os.write(fd, data)

    def fsync(self, fd):
        self._enter("fsync")
        os.fsync(fd)

    def close(self, fd):
        # Linux releases the descriptor even when close() reports an error.
        os.close(fd)
        self._enter("close")

    def fdatasync(self, fd):
        self._enter("fdatasync")
        os.fdatasync(fd)

    @property
    def syncs(self) -> int:
        return self.calls["fsync"] + self.calls["fdatasync"]


def segment_files(path) -> list[str]:
    return sorted((n for n in os.listdir(path)
                   if framing.parse_segment_name(n) is not None),
                  key=framing.parse_segment_name)


def read_back(path) -> list[tuple[int, int, bytes]]:
    records, reader = read_all(str(path))
    assert reader.diagnostics == []
    return [(r.seq, r.rtype, codec.pack(r.payload)) for r in records]


def wait_for(predicate, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


# -- fsync policies -----------------------------------------------------------

def test_fsync_always_makes_each_append_durable_before_it_returns(tmp_path):
    ops = FaultyOps()
    writer = JournalWriter(tmp_path / "a.journal", fsync="always", ops=ops)
    for i in range(10):
        before = ops.calls["fdatasync"]
        seq = writer.append(REC_SET, ["k", i])
        assert seq == writer.last_seq == writer.durable_seq == i + 1
        assert ops.calls["fdatasync"] == before + 1
    writer.close()


def test_fsync_group_makes_records_durable_within_a_bounded_time(tmp_path):
    ops = FaultyOps()
    writer = JournalWriter(tmp_path / "a.journal", fsync="group",
                           group_interval=0.005, ops=ops)
    try:
        for burst in range(5):
            for i in range(20):
                writer.append(REC_SET, ["k", i])
                assert writer.durable_seq <= writer.last_seq
            start = time.monotonic()
            assert wait_for(lambda: writer.durable_seq == writer.last_seq,
                            timeout=2.0), \
                f"durable_seq {writer.durable_seq} stuck below " \
                f"{writer.last_seq}"
            assert time.monotonic() - start < 2.0
        # Group commit: far fewer syncs than records.
        assert ops.calls["fdatasync"] < writer.last_seq
    finally:
        writer.close()


def test_fsync_never_syncs_only_when_asked(tmp_path):
    ops = FaultyOps()
    writer = JournalWriter(tmp_path / "a.journal", fsync="never", ops=ops)
    opened = ops.syncs
    for i in range(10):
        writer.append(REC_SET, ["k", i])
    assert ops.syncs == opened
    assert writer.durable_seq == 0
    assert writer.sync() == writer.last_seq == writer.durable_seq == 10
    assert ops.calls["fdatasync"] >= 1
    synced = ops.syncs
    assert writer.sync() == 10  # nothing new: no fsync
    assert ops.syncs == synced
    writer.close()
    assert ops.syncs > synced, "close must make the close record durable"


def test_unknown_fsync_policy_is_refused(tmp_path):
    with pytest.raises(ValueError):
        JournalWriter(tmp_path / "a.journal", fsync="sometimes")


@pytest.mark.parametrize("fsync", ["always", "group", "never"])
def test_rotation_keeps_sequence_numbers_consecutive(tmp_path, fsync):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync=fsync, segment_bytes=120)
    expected = []
    for i in range(40):
        value = ["k", np.arange(i % 5), (i,)]
        seq = writer.append(REC_APPEND, value)
        expected.append((seq, REC_APPEND, codec.pack(value)))
    writer.close("end")
    expected.append((41, REC_CLOSE, codec.pack(["end"])))
    assert read_back(path) == expected
    names = segment_files(path)
    assert len(names) >= 5
    records, _ = read_all(str(path))
    for name in names:
        with open(path / name, "rb") as f:
            header = framing.decode_segment_header(f.read(SEGMENT_HEADER_SIZE))
        in_segment = [r.seq for r in records if r.segment == name]
        if in_segment:
            assert header.first_seq == in_segment[0]


# -- reopening ----------------------------------------------------------------

def test_reopen_cuts_torn_tail_and_continues_the_sequence(tmp_path):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="always")
    for i in range(5):
        writer.append(REC_SET, ["k", i])
    writer.abandon()  # crash: no close record
    last = path / segment_files(path)[-1]
    torn = framing.encode_record(6, REC_SET, codec.pack(["k", 5]))[:-3]
    with open(last, "ab") as f:
        f.write(torn)
    _, reader = read_all(str(path))
    assert [d.kind for d in reader.diagnostics] == ["torn_tail"]

    writer = JournalWriter(path, fsync="always")
    assert writer.last_seq == 5
    assert writer.append(REC_SET, ["k", "after"]) == 6
    writer.close()
    records = read_back(path)  # asserts: no diagnostics at all
    assert [seq for seq, _, _ in records] == list(range(1, 8))
    assert records[5] == (6, REC_SET, codec.pack(["k", "after"]))


def test_reopen_after_clean_close_continues_the_sequence(tmp_path):
    path = tmp_path / "a.journal"
    with JournalWriter(path, fsync="never") as writer:
        writer.append(REC_SET, ["k", 1])
    with JournalWriter(path, fsync="never") as writer:
        assert writer.last_seq == 2
        assert writer.append(REC_SET, ["k", 2]) == 3
    assert [r[:2] for r in read_back(path)] == [
        (1, REC_SET), (2, REC_CLOSE), (3, REC_SET), (4, REC_CLOSE)]


def test_reopen_after_crash_during_segment_creation_continues(tmp_path):
    # A crash while a new segment's header is written can leave 1..31 bytes
    # of it; nothing in that segment was acknowledged.
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="always")
    writer.append(REC_SET, ["k", 1])
    writer.abandon()
    header = framing.encode_segment_header(2, 2)
    with open(path / framing.segment_name(2), "wb") as f:
        f.write(header[:SEGMENT_HEADER_SIZE // 2])
    writer = JournalWriter(path, fsync="always")
    assert writer.append(REC_SET, ["k", 2]) == 2
    writer.close()
    assert [seq for seq, _, _ in read_back(path)] == [1, 2, 3]


def test_reopening_a_journal_damaged_in_the_middle_raises_corrupt_record(
        tmp_path):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="never")
    for i in range(5):
        writer.append(REC_SET, ["k", i])
    writer.close()
    segment = path / segment_files(path)[0]
    data = bytearray(segment.read_bytes())
    data[SEGMENT_HEADER_SIZE + 30] ^= 0x01  # inside record 1 or 2
    segment.write_bytes(data)
    size = segment.stat().st_size
    for _ in range(2):  # the lock was released: the second try is the same
        with pytest.raises(CorruptRecord) as info:
            JournalWriter(path, fsync="never")
        assert "segment-1.log:" in str(info.value)
    assert segment.stat().st_size == size, "a refused journal was modified"


def test_reopening_a_newer_format_version_raises_unsupported_version(
        tmp_path):
    path = tmp_path / "a.journal"
    with JournalWriter(path, fsync="never") as writer:
        writer.append(REC_SET, ["k", 1])
    segment = path / "segment-1.log"
    data = segment.read_bytes()
    magic, _, flags, number, first_seq, _ = SEGMENT_HEADER.unpack_from(data)
    body = SEGMENT_HEADER.pack(magic, FORMAT_VERSION + 1, flags, number,
                               first_seq, 0)
    segment.write_bytes(SEGMENT_HEADER.pack(
        magic, FORMAT_VERSION + 1, flags, number, first_seq,
        framing.crc32(body[:24])) + data[SEGMENT_HEADER_SIZE:])
    with pytest.raises(UnsupportedVersion):
        JournalWriter(path, fsync="never")


# -- fail-stop ----------------------------------------------------------------

def _assert_stopped(writer, ops, path) -> None:
    """Every later operation raises JournalFailed naming the segment, and
    touches neither write nor fsync."""
    calls = Counter(ops.calls)
    for _ in range(3):
        with pytest.raises(JournalFailed) as info:
            writer.append(REC_SET, ["k", "later"])
        assert "segment-1.log" in str(info.value)
    with pytest.raises(JournalFailed):
        writer.sync()
    with pytest.raises(JournalFailed):
        writer.write_snapshot({"s": 1})
    assert writer.failed
    writer.close()  # releases only: no close record, no fsync
    assert ops.calls["write"] == calls["write"]
    assert ops.syncs == calls["fsync"] + calls["fdatasync"], \
        "fsync was called again after a failure"
    _, reader = read_all(str(path))
    assert not reader.clean_close


def test_failed_fsync_stops_the_writer_for_good(tmp_path):
    path = tmp_path / "a.journal"
    ops = FaultyOps(fail={"fdatasync", "fsync"})
    writer = JournalWriter(path, fsync="always", ops=ops)
    writer.append(REC_SET, ["k", 0])
    ops.armed = True
    with pytest.raises(JournalFailed) as info:
        writer.append(REC_SET, ["k", 1])
    assert "segment-1.log" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EIO
    assert writer.durable_seq == 1
    _assert_stopped(writer, ops, path)


def test_failed_fsync_in_group_commit_thread_stops_the_writer(tmp_path):
    path = tmp_path / "a.journal"
    ops = FaultyOps(fail={"fdatasync", "fsync"})
    writer = JournalWriter(path, fsync="group", group_interval=0.005,
                           ops=ops)
    writer.append(REC_SET, ["k", 0])
    assert wait_for(lambda: writer.durable_seq == 1)
    ops.armed = True
    writer.append(REC_SET, ["k", 1])  # in the kernel; the sync will fail
    assert wait_for(lambda: writer.failed), "group thread never failed"
    failed_syncs = ops.syncs
    time.sleep(0.05)  # ten intervals: the thread must not retry
    assert ops.syncs == failed_syncs
    assert writer.durable_seq == 1
    _assert_stopped(writer, ops, path)


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_failed_write_stops_the_writer_for_good(tmp_path, fsync):
    path = tmp_path / "a.journal"
    ops = FaultyOps(fail={"write"}, error=errno.ENOSPC)
    writer = JournalWriter(path, fsync=fsync, ops=ops)
    writer.append(REC_SET, ["k", 0])
    ops.armed = True
    with pytest.raises(JournalFailed) as info:
        writer.append(REC_SET, ["k", 1])
    assert "segment-1.log" in str(info.value)
    assert info.value.__cause__.errno == errno.ENOSPC
    _assert_stopped(writer, ops, path)


def test_failed_close_during_rotation_stops_the_writer(tmp_path):
    # close() can report a deferred write error (EIO on NFS), and the
    # descriptor is gone either way: carrying on would write the next
    # records to a closed -- or by then reused -- descriptor.
    path = tmp_path / "a.journal"
    ops = FaultyOps(fail={"close"})
    writer = JournalWriter(path, fsync="always", segment_bytes=64, ops=ops)
    writer.append(REC_SET, ["k", 0])
    ops.armed = True
    with pytest.raises(JournalFailed) as info:
        while len(segment_files(path)) == 1:
            writer.append(REC_SET, ["k", "rotate"])
    assert "segment-1.log" in str(info.value)
    ops.armed = False
    _assert_stopped(writer, ops, path)


def test_write_making_no_progress_stops_the_writer(tmp_path):
    path = tmp_path / "a.journal"
    ops = FaultyOps()
    writer = JournalWriter(path, fsync="never", ops=ops)
    ops.zero_writes = ops.armed = True
    with pytest.raises(JournalFailed):
        writer.append(REC_SET, ["k", 1])
    ops.zero_writes = False
    _assert_stopped(writer, ops, path)


def test_failed_writer_leaves_a_journal_that_reopens(tmp_path):
    path = tmp_path / "a.journal"
    ops = FaultyOps(fail={"fdatasync"})
    writer = JournalWriter(path, fsync="always", ops=ops)
    writer.append(REC_SET, ["k", 0])
    ops.armed = True
    with pytest.raises(JournalFailed):
        writer.append(REC_SET, ["k", 1])
    writer.abandon()
    writer = JournalWriter(path, fsync="always")
    assert writer.last_seq == 2  # the record reached the kernel
    writer.close()
    assert [seq for seq, _, _ in read_back(path)] == [1, 2, 3]


def test_short_writes_are_completed(tmp_path):
    path = tmp_path / "a.journal"
    ops = FaultyOps(max_write=3)
    writer = JournalWriter(path, fsync="always", segment_bytes=200, ops=ops)
    expected = []
    for i in range(12):
        value = ["key", "x" * i, np.arange(i, dtype="<f4")]
        expected.append((writer.append(REC_SET, value), REC_SET,
                         codec.pack(value)))
    writer.close("short")
    assert read_back(path)[:-1] == expected
    assert ops.calls["write"] > 100


# -- refused values -----------------------------------------------------------

@pytest.mark.parametrize("value", [
    ["a" * 40, 1, 2, object()],          # fails after packing a prefix
    {"k": [1.5, b"x" * 50, {1, 2}]},
    np.array([None], dtype=object),
])
def test_unsupported_value_writes_nothing_and_next_append_works(tmp_path,
                                                                value):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="never")
    writer.append(REC_SET, ["k", 0])
    size = os.path.getsize(path / "segment-1.log")
    with pytest.raises(TypeError):
        writer.append(REC_SET, value)
    assert os.path.getsize(path / "segment-1.log") == size
    assert writer.last_seq == 1
    assert writer.append(REC_SET, ["k", 2]) == 2
    writer.close()
    assert read_back(path)[:2] == [(1, REC_SET, codec.pack(["k", 0])),
                                   (2, REC_SET, codec.pack(["k", 2]))]


def test_record_too_large_is_refused_and_writes_nothing(tmp_path):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="never", max_record_bytes=64)
    size = os.path.getsize(path / "segment-1.log")
    with pytest.raises(RecordTooLarge):
        writer.append(REC_SET, ["k", b"x" * 100])
    assert os.path.getsize(path / "segment-1.log") == size
    assert writer.append(REC_SET, ["k", 1]) == 1
    writer.close()
    assert [seq for seq, _, _ in read_back(path)] == [1, 2]


def test_closed_writer_refuses_appends_and_close_is_idempotent(tmp_path):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="never")
    writer.append(REC_SET, ["k", 1])
    writer.close()
    writer.close()
    with pytest.raises(JournalClosed):
        writer.append(REC_SET, ["k", 2])
    assert [r[:2] for r in read_back(path)] == [(1, REC_SET), (2, REC_CLOSE)]


# -- the lock -----------------------------------------------------------------

def test_second_writer_on_the_same_journal_is_refused(tmp_path):
    path = tmp_path / "a.journal"
    first = JournalWriter(path, fsync="never")
    with pytest.raises(JournalLocked):
        JournalWriter(path, fsync="never")
    assert journal_lock.is_locked(str(path))
    first.append(REC_SET, ["k", 1])  # the refused one changed nothing
    first.close()
    assert not journal_lock.is_locked(str(path))
    JournalWriter(path, fsync="never").close()


_HOLDER = textwrap.dedent("""
    import sys
    from artiq_journal.journal.writer import JournalWriter
    writer = JournalWriter(sys.argv[1], fsync="always")
    writer.append(3, ["held", 1])
    print("ready", flush=True)
    sys.stdin.read()  # hold the lock until killed or stdin closes
""")


def _spawn_holder(path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=env, text=True)
    line = child.stdout.readline()
    assert line.strip() == "ready", f"holder did not start: {line!r}"
    return child


def test_writer_in_another_process_locks_the_journal(tmp_path):
    path = tmp_path / "a.journal"
    child = _spawn_holder(path)
    try:
        with pytest.raises(JournalLocked):
            JournalWriter(path, fsync="never")
        assert journal_lock.is_locked(str(path))
    finally:
        child.kill()
        child.wait()


def test_lock_is_released_when_the_holder_is_sigkilled(tmp_path):
    path = tmp_path / "a.journal"
    child = _spawn_holder(path)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    # The kernel dropped the flock with the process: orphaned, not locked.
    assert not journal_lock.is_locked(str(path))
    writer = JournalWriter(path, fsync="always")
    assert writer.last_seq == 1
    writer.close()
    assert [r[:2] for r in read_back(path)] == [(1, REC_SET), (2, REC_CLOSE)]


def test_writer_in_a_forked_child_refuses_appends(tmp_path):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="always")
    writer.append(REC_SET, ["k", 1])
    pid = os.fork()
    if pid == 0:  # child: must not write a byte into the parent's journal
        status = 1
        try:
            try:
                writer.append(REC_SET, ["child", 1])
            except JournalFailed as exc:
                status = 0 if "fork" in str(exc) else 2
            writer.close()  # must not append a close record either
        except BaseException:  # noqa: BLE001 - report through the status
            status = 3
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert journal_lock.is_locked(str(path)), "child released parent's lock"
    writer.append(REC_SET, ["k", 2])
    writer.close()
    assert [r[:2] for r in read_back(path)] == [
        (1, REC_SET), (2, REC_SET), (3, REC_CLOSE)]


def test_durable_seq_is_monotonic_under_concurrent_group_commit(tmp_path):
    writer = JournalWriter(tmp_path / "a.journal", fsync="group",
                           group_interval=0.001)
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append((writer.durable_seq, writer.last_seq))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(300):
            writer.append(REC_SET, ["k", i])
    finally:
        stop.set()
        watcher.join()
        writer.close()
    durable = [d for d, _ in seen]
    assert durable == sorted(durable)


# -- append_encoded (the dataset hooks' pre-encoded payloads) -------------------

def _segment_bytes(path) -> bytes:
    with open(path / "segment-1.log", "rb") as f:
        return f.read()


@pytest.mark.parametrize("fsync", ["always", "group", "never"])
def test_append_encoded_writes_the_same_bytes_as_append(tmp_path, fsync):
    values = [0.5, np.float64(-1.25), np.float32(3), np.int64(7),
              np.arange(128.0), np.zeros((2, 3), ">i4")]
    mutates = [(slice(1, 9, 2), 1.5), (((0, 4), (2, 6)), np.float64(2)),
               (5, np.arange(3))]
    a = JournalWriter(tmp_path / "a.journal", fsync=fsync,
                      heartbeat_interval=None)
    b = JournalWriter(tmp_path / "b.journal", fsync=fsync,
                      heartbeat_interval=None)
    for value in values:
        payload = codec.encode_append("scan.counts", value)
        assert payload is not None
        assert a.append(REC_APPEND, ["scan.counts", value]) \
            == b.append_encoded(REC_APPEND, payload)
    for index, value in mutates:
        payload = codec.encode_mutate("m", index, value)
        assert payload is not None
        if type(index) is slice:
            index = (index.start, index.stop, index.step)
        assert a.append(REC_MUTATE, ["m", index, value]) \
            == b.append_encoded(REC_MUTATE, payload)
    if fsync == "always":
        assert b.durable_seq == b.last_seq
    a.close()
    b.close()
    # Same framing, seqs and payloads: the files differ only in nothing.
    assert _segment_bytes(tmp_path / "a.journal") \
        == _segment_bytes(tmp_path / "b.journal")
    assert read_back(tmp_path / "b.journal")[0][2] \
        == codec.pack(["scan.counts", 0.5])


def test_append_encoded_refuses_after_close_and_failure(tmp_path):
    payload = codec.encode_append("k", 1.5)
    writer = JournalWriter(tmp_path / "a.journal", fsync="never")
    writer.append_encoded(REC_APPEND, payload)
    writer.close()
    with pytest.raises(JournalClosed):
        writer.append_encoded(REC_APPEND, payload)
    path = tmp_path / "b.journal"
    ops = FaultyOps(fail={"write"}, error=errno.ENOSPC)
    writer = JournalWriter(path, fsync="never", ops=ops)
    writer.append_encoded(REC_APPEND, payload)
    ops.armed = True
    with pytest.raises(JournalFailed):
        writer.append_encoded(REC_APPEND, payload)
    ops.armed = False
    with pytest.raises(JournalFailed):
        writer.append_encoded(REC_APPEND, payload)
    assert writer.last_seq == 1
    writer.abandon()


def test_append_encoded_record_too_large_writes_nothing(tmp_path):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="never", max_record_bytes=64)
    size = os.path.getsize(path / "segment-1.log")
    payload = codec.encode_append("k", np.zeros(16))
    with pytest.raises(RecordTooLarge):
        writer.append_encoded(REC_APPEND, payload)
    assert os.path.getsize(path / "segment-1.log") == size
    assert writer.append_encoded(REC_APPEND, codec.encode_append("k", 1.0)) \
        == 1
    writer.close()


def test_append_encoded_rotates_segments_like_append(tmp_path):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="never", segment_bytes=4096)
    for i in range(500):
        writer.append_encoded(REC_APPEND,
                              codec.encode_append("k", np.float64(i)))
    writer.close()
    records = read_back(path)
    assert [seq for seq, _, _ in records] == list(range(1, 502))
    assert len(os.listdir(path)) > 5
    values = [codec.unpack(p)[1] for _, t, p in records if t == REC_APPEND]
    assert values == list(range(500))
    assert all(type(v) is np.float64 for v in values)
