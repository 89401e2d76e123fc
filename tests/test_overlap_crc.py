"""Large records are written while their CRC is computed (FORMAT.md
section 11): header with a zero CRC + payload, then the CRC with pwrite at
the record's offset; the record counts (last_seq, durable_seq, "always"
sync) only after.  Readers of the live journal see the record as a torn
tail (being written) meanwhile; a failed or interrupted CRC write is the
writer's fail-stop; a process killed between the two writes leaves a torn
tail that a reopening writer cuts."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from artiq_journal.errors import JournalFailed
from artiq_journal.journal import framing, tail
from artiq_journal.journal import writer as writer_module
from artiq_journal.journal.constants import RECORD_HEADER_SIZE, REC_SET
from artiq_journal.journal.fsio import FileOps
from artiq_journal.journal.reader import JournalReader
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.replay import replay

#: Above writer.OVERLAP_CRC_MIN (8 MiB): the overlapped path.
BIG = np.random.default_rng(3).random((9 << 20) // 8)


@pytest.fixture(autouse=True)
def crc_thread(monkeypatch):
    # The overlap needs a CRC thread: also on a one-CPU machine.
    monkeypatch.setattr(framing, "_CRC_THREADS",
                        max(2, framing._CRC_THREADS))


def _set(key, value):
    return [key, value, {}, False, False, True]


def _read(path):
    reader = JournalReader(str(path))
    return list(reader), reader


class Recording(FileOps):
    def __init__(self):
        self.calls = []

    def writev(self, fd, buffers):
        head = bytes(buffers[0][:4])
        self.calls.append(("writev", os.lseek(fd, 0, os.SEEK_CUR), head,
                           sum(memoryview(b).nbytes for b in buffers)))
        return os.writev(fd, buffers)

    def pwrite(self, fd, data, offset):
        self.calls.append(("pwrite", offset, bytes(data)))
        return os.pwrite(fd, data, offset)


def test_big_record_is_written_then_its_crc(tmp_path):
    ops = Recording()
    w = JournalWriter(tmp_path / "j", fsync="never", ops=ops,
                      heartbeat_interval=None)
    w.append(REC_SET, _set("small", 1))
    offset = w.bytes_appended
    seq = w.append(REC_SET, _set("big", BIG))
    w.close()
    (kind, at, head, n), (kind2, at2, crc) = ops.calls
    assert (kind, kind2, head, at, at2) == ("writev", "pwrite", bytes(4),
                                           offset, offset)
    assert n > BIG.nbytes and len(crc) == 4 and crc != bytes(4)
    records, reader = _read(tmp_path / "j")
    assert reader.diagnostics == []
    assert records[1].seq == seq and records[1].trusted
    assert np.array_equal(records[1].payload[1], BIG)


def test_small_records_are_one_write(tmp_path):
    ops = Recording()
    w = JournalWriter(tmp_path / "j", fsync="never", ops=ops,
                      heartbeat_interval=None)
    w.append(REC_SET, _set("mid", BIG[:(1 << 20) // 8]))   # 1 MiB: writev
    w.close()
    assert [c[0] for c in ops.calls] == ["writev"]
    assert ops.calls[0][2] != bytes(4)


class BlockedCrc(FileOps):
    """pwrite (the CRC) waits until released."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def pwrite(self, fd, data, offset):
        self.entered.set()
        assert self.release.wait(30)
        return os.pwrite(fd, data, offset)


@pytest.mark.parametrize("fsync", ["always", "group", "never"])
def test_a_record_without_its_crc_is_being_written_not_damage(tmp_path,
                                                              fsync):
    ops = BlockedCrc()
    path = tmp_path / "j"
    w = JournalWriter(path, fsync=fsync, ops=ops, group_interval=0.001,
                      heartbeat_interval=None)
    first = w.append(REC_SET, _set("small", 1))
    w.sync()
    done = []
    t = threading.Thread(target=lambda: done.append(
        w.append(REC_SET, _set("big", BIG))))
    t.start()
    try:
        assert ops.entered.wait(30)
        time.sleep(0.05)   # group: several ticks of the group-commit thread
        # Not counted, not acknowledged.
        assert w.last_seq == first and w.durable_seq == first
        # Every reader of a live journal: a torn tail, never damage.
        records, reader = _read(path)
        assert [r.seq for r in records] == [first]
        assert [d.kind for d in reader.diagnostics] == ["torn_tail"]
        assert all(d.severity == "info" for d in reader.diagnostics)
        view = tail.look(str(path))
        assert view.torn_tail and not view.damage_seen
        assert view.last_seq == first
        result = replay(str(path))
        assert result.last_seq == first
        assert not [d for d in result.diagnostics if d.severity == "error"]
    finally:
        ops.release.set()
        t.join()
    assert done == [first + 1] and w.last_seq == first + 1
    assert w.sync() == first + 1
    w.close()
    records, reader = _read(path)
    assert reader.diagnostics == [] and records[1].trusted


class FailingCrc(FileOps):
    def __init__(self, exc):
        self.exc = exc

    def pwrite(self, fd, data, offset):
        raise self.exc


@pytest.mark.parametrize("exc", [OSError(5, "Input/output error"),
                                 KeyboardInterrupt()],
                         ids=["EIO", "interrupt"])
def test_a_failed_crc_write_stops_the_writer(tmp_path, exc):
    path = tmp_path / "j"
    w = JournalWriter(path, fsync="never", ops=FailingCrc(exc),
                      heartbeat_interval=None)
    first = w.append(REC_SET, _set("small", 1))
    with pytest.raises(type(exc) if isinstance(exc, KeyboardInterrupt)
                       else JournalFailed):
        w.append(REC_SET, _set("big", BIG))
    assert w.failed and w.last_seq == first
    with pytest.raises(JournalFailed):
        w.append(REC_SET, _set("after", 2))
    with pytest.raises(JournalFailed):
        w.sync()
    w.abandon()
    records, reader = _read(path)
    assert [r.seq for r in records] == [first]
    assert [(d.kind, d.severity) for d in reader.diagnostics] == \
        [("torn_tail", "info")]
    # A reopening writer cuts the record without its CRC and goes on.
    w = JournalWriter(path, fsync="always", heartbeat_interval=None)
    assert w.append(REC_SET, _set("again", 3)) == first + 1
    w.close()
    records, reader = _read(path)
    assert reader.diagnostics == []
    assert [r.payload[0] for r in records][:2] == ["small", "again"]


def test_killed_between_the_payload_and_its_crc(tmp_path):
    """SIGKILL after the payload reached the kernel, before its CRC: the
    record was never acknowledged; it reads as a torn tail and a reopening
    writer cuts it."""
    path = tmp_path / "j"

    class KilledAtCrc(FileOps):
        def pwrite(self, fd, data, offset):
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)

    pid = os.fork()
    if pid == 0:   # pragma: no cover -- the child
        try:
            w = JournalWriter(path, fsync="always", ops=KilledAtCrc(),
                              heartbeat_interval=None)
            w.append(REC_SET, _set("small", 1))
            w.append(REC_SET, _set("big", BIG))
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    seg = path / "segment-1.log"
    assert os.path.getsize(seg) > BIG.nbytes     # the payload is there
    records, reader = _read(path)
    assert [r.seq for r in records] == [1]
    assert [(d.kind, d.severity) for d in reader.diagnostics] == \
        [("torn_tail", "info")]
    w = JournalWriter(path, fsync="always", heartbeat_interval=None)
    assert w.append(REC_SET, _set("next", BIG)) == 2
    w.close()
    records, reader = _read(path)
    assert reader.diagnostics == []
    assert [r.seq for r in records] == [1, 2, 3]


def test_overlapped_crc_equals_zlib(monkeypatch):
    import zlib
    monkeypatch.setattr(framing, "OVERLAP_SLICE", 1000)
    data = np.random.default_rng(1).integers(0, 256, 12345, np.uint8)
    for parts in ([], [b""], [b"abc"], [b"head", memoryview(data), b"x"],
                  [memoryview(data).cast("B")[7:], bytearray(b"yz")]):
        want = 12
        for p in parts:
            want = zlib.crc32(p, want)
        assert framing.OverlappedCrc(parts, 12).result() == want


def test_threshold_is_the_parallel_crc_one():
    assert writer_module.OVERLAP_CRC_MIN == framing.PARALLEL_CRC_MIN
    assert RECORD_HEADER_SIZE == 20
