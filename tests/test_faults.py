"""File-system faults and bad input: each gives a clear JournalError naming
the path, and nothing already acknowledged is lost (it is read back).

Faults are injected through a FileOps subclass (EIO, ENOSPC, EACCES on the
call and file chosen by the test), or made for real (directories deleted or
put where a file belongs, truncated and newer-version snapshots, a second
writer).  Hostile msgpack inside validly framed records is reported by the
reader and replay, never raised, never evaluated.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys

import pytest

from artiq_journal.errors import (CorruptRecord, CorruptSnapshot,
                                  JournalError, JournalFailed, JournalLocked,
                                  NoSnapshot, NotAJournal,
                                  UnsupportedVersion)
from artiq_journal.journal import codec
from artiq_journal.journal.constants import (REC_SET, SNAPSHOT_NAME,
                                             SNAPSHOT_NEW, SNAPSHOT_OLD)
from artiq_journal.journal.framing import (encode_record,
                                           encode_segment_header,
                                           segment_name)
from artiq_journal.journal.fsio import FileOps
from artiq_journal.journal.reader import read_all
from artiq_journal.journal.snapshot import (encode_snapshot, load_snapshot,
                                            read_snapshot_file)
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.replay import replay
from artiq_journal.runstate import RunState

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "fuzz"))
import damage  # noqa: E402


class FaultOps(FileOps):
    """Real file operations; once ``armed``, the call named ``call`` on a
    file whose name contains ``on`` raises OSError(``error``).  With
    ``partial``, a failing write first writes half its bytes."""

    def __init__(self, call: str, error: int, on: str = "",
                 partial: bool = False) -> None:
        self.call, self.error, self.on, self.partial = call, error, on, partial
        self.armed = False
        self.failures = 0
        self._names: dict[int, str] = {}

    def _maybe_fail(self, call: str, name: str) -> None:
        if self.armed and call == self.call and self.on in name:
            self.failures += 1
            raise OSError(self.error, os.strerror(self.error), name)

    def open(self, path, flags, mode=0o777):
        self._maybe_fail("open", os.fspath(path))
        fd = os.open(path, flags, mode)
        self._names[fd] = os.fspath(path)
        return fd

    def write(self, fd, data):
        name = self._names.get(fd, "")
        if self.partial and self.armed and self.call == "write" \
                and self.on in name:
            self.partial = False  # half now, the error on the next call
            return os.write(fd, memoryview(data)[:max(1, len(data) // 2)])
        self._maybe_fail("write", name)
        return os.write(fd, data)

    def fsync(self, fd):
        self._maybe_fail("fsync", self._names.get(fd, ""))
        os.fsync(fd)

    def fdatasync(self, fd):
        self._maybe_fail("fdatasync", self._names.get(fd, ""))
        os.fdatasync(fd)

    def fsync_dir(self, path):
        self._maybe_fail("fsync_dir", os.fspath(path))
        super().fsync_dir(path)


def dataset(i: int) -> list:
    return [f"k{i}", i, {}, False, False, True]


class Run:
    """A writer plus the ledger of what it acknowledged."""

    def __init__(self, path, ops: FileOps | None = None, **kwargs) -> None:
        kwargs.setdefault("fsync", "always")
        if ops is not None:
            kwargs["ops"] = ops
        self.path = str(path)
        self.writer = JournalWriter(self.path, **kwargs)
        self.model = RunState()
        self.acknowledged: list[int] = []
        self.snapshot_seq: int | None = None

    def append(self, n: int = 1) -> None:
        for _ in range(n):
            seq = self.writer.last_seq + 1
            self.writer.append(REC_SET, dataset(seq))
            self.model.apply(seq, REC_SET, dataset(seq))
            self.acknowledged.append(seq)

    def snapshot(self) -> None:
        self.snapshot_seq = self.writer.write_snapshot(
            self.model.to_snapshot())

    def assert_acknowledged_read_back(self) -> None:
        """Everything acknowledged is there, trusted, with its value."""
        result = replay(self.path)
        local = result.state.datasets.local
        for seq in self.acknowledged:
            assert local.get(f"k{seq}") == seq, f"acknowledged seq {seq} lost"
        if self.snapshot_seq is not None:
            assert load_snapshot(self.path).seq >= self.snapshot_seq


def assert_names(exc: JournalError, path) -> None:
    """The error is a JournalError whose message starts with the path."""
    assert isinstance(exc, JournalError)
    assert exc.path is not None and os.fspath(path) in str(exc), str(exc)


# --- I/O errors --------------------------------------------------------------

@pytest.mark.parametrize("call, on, during", [
    ("fdatasync", "segment-", "append"),
    ("fsync", SNAPSHOT_NEW, "snapshot"),
    ("fsync_dir", "", "snapshot"),
    ("fdatasync", "segment-2", "rotation"),
])
def test_eio_on_sync_stops_the_writer_and_loses_nothing_acknowledged(
        tmp_path, call, on, during):
    ops = FaultOps(call, errno.EIO, on=on)
    run = Run(tmp_path / "a.journal", ops, segment_bytes=300)
    run.append(3)
    run.snapshot()
    ops.armed = True
    with pytest.raises(JournalFailed) as info:
        if during == "snapshot":
            run.append(2)
            run.snapshot()
        else:
            run.append(40)
    assert ops.failures == 1
    assert info.value.path and os.path.dirname(info.value.path) == run.path
    assert "failed" in str(info.value) and os.strerror(errno.EIO) in str(
        info.value)
    with pytest.raises(JournalFailed):
        run.writer.append(REC_SET, dataset(999))  # fail-stop: for good
    run.writer.abandon()
    run.assert_acknowledged_read_back()


def test_enospc_mid_record_leaves_a_torn_tail_that_reopening_cuts(tmp_path):
    ops = FaultOps("write", errno.ENOSPC, on="segment-", partial=True)
    run = Run(tmp_path / "a.journal", ops)
    run.append(5)
    ops.armed = True
    with pytest.raises(JournalFailed) as info:
        run.append(1)
    assert_names(info.value, os.path.join(run.path, segment_name(1)))
    assert os.strerror(errno.ENOSPC) in str(info.value)
    run.writer.abandon()
    records, reader = read_all(run.path)
    assert [r.seq for r in records if r.trusted] == run.acknowledged
    assert [d.kind for d in reader.diagnostics] == ["torn_tail"]
    reopened = Run(run.path)  # space is back
    reopened.append(1)
    assert reopened.acknowledged == [6]
    reopened.writer.close()
    run.assert_acknowledged_read_back()
    reopened.assert_acknowledged_read_back()


def test_enospc_while_writing_a_snapshot_keeps_the_previous_one(tmp_path):
    ops = FaultOps("write", errno.ENOSPC, on=SNAPSHOT_NEW, partial=True)
    run = Run(tmp_path / "a.journal", ops)
    run.append(3)
    run.snapshot()
    run.append(3)
    ops.armed = True
    with pytest.raises(JournalFailed) as info:
        run.snapshot()
    assert_names(info.value, os.path.join(run.path, SNAPSHOT_NEW))
    run.writer.abandon()
    assert load_snapshot(run.path).seq == 3
    run.assert_acknowledged_read_back()


# --- permissions -------------------------------------------------------------

def _chmod_restricts(path) -> bool:
    probe = os.path.join(path, ".probe")
    try:
        with open(probe, "w"):
            pass
    except PermissionError:
        return True
    os.unlink(probe)
    return False


def test_read_only_journal_directory_is_refused_with_its_path(tmp_path):
    run = Run(tmp_path / "a.journal")
    run.append(3)
    run.writer.close()
    os.chmod(run.path, 0o555)
    try:
        if not _chmod_restricts(run.path):
            pytest.skip("running as root: chmod does not restrict; the "
                        "EACCES cases below cover it through FileOps")
        with pytest.raises(JournalError) as info:
            Run(run.path)
        assert run.path in str(info.value)
    finally:
        os.chmod(run.path, 0o755)
    run.assert_acknowledged_read_back()


@pytest.mark.parametrize("on", ["segment-1", "segment-2"])
def test_eacces_on_a_segment_is_refused_with_its_path(tmp_path, on):
    run = Run(tmp_path / "a.journal", segment_bytes=300)
    run.append(2)
    run.writer.close()
    ops = FaultOps("open", errno.EACCES, on=on)
    ops.armed = True
    with pytest.raises(JournalFailed) as info:
        # segment-1: reopening it for appending; segment-2: creating it
        # at the next rotation.
        more = Run(run.path, ops, segment_bytes=300)
        more.append(40)
    assert on in str(info.value) and os.strerror(errno.EACCES) in str(
        info.value)
    run.assert_acknowledged_read_back()


def test_unwritable_lock_file_is_a_journal_error_naming_it(tmp_path,
                                                           monkeypatch):
    run = Run(tmp_path / "a.journal")
    run.append(1)
    run.writer.close()
    real_open = os.open

    def no_access(path, flags, *args, **kwargs):
        if os.fspath(path).endswith(os.sep + "lock"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", no_access)
    with pytest.raises(JournalError) as info:
        Run(run.path)
    assert_names(info.value, run.path)


# --- things that vanish or are not what they should be -----------------------

def test_journal_directory_deleted_mid_run_fails_at_the_next_rotation(
        tmp_path):
    run = Run(tmp_path / "a.journal", segment_bytes=300)
    run.append(2)
    shutil.rmtree(run.path)
    with pytest.raises(JournalFailed) as info:
        run.append(40)
    assert_names(info.value, run.path)
    assert os.strerror(errno.ENOENT) in str(info.value)
    run.writer.abandon()


def test_journal_directory_deleted_mid_run_stops_the_next_append(tmp_path):
    run = Run(tmp_path / "a.journal")
    run.append(2)
    shutil.rmtree(run.path)
    with pytest.raises(JournalFailed):
        run.append(1)  # acknowledged as durable, but nowhere on disk
    run.writer.abandon()


def test_journal_path_that_is_a_file_is_not_a_journal(tmp_path):
    path = tmp_path / "a.journal"
    path.write_bytes(b"not a directory")
    with pytest.raises(NotAJournal) as info:
        Run(path)
    assert_names(info.value, path)


def test_last_segment_replaced_by_a_directory_refuses_to_append(tmp_path):
    run = Run(tmp_path / "a.journal", segment_bytes=300)
    run.append(12)
    run.writer.close()
    last = sorted(os.listdir(run.path))[-2]  # [-1] is "lock"
    seg = os.path.join(run.path, last)
    kept = [s for s in run.acknowledged if s < _first_seq(seg)]
    os.unlink(seg)
    os.mkdir(seg)
    with pytest.raises(CorruptRecord) as info:
        Run(run.path)
    assert seg in str(info.value)
    run.acknowledged = kept
    run.assert_acknowledged_read_back()
    result = replay(run.path)
    assert result.damaged and any(d.path == seg for d in result.diagnostics)


def _first_seq(segment: str) -> int:
    records, _ = read_all(os.path.dirname(segment))
    return min(r.seq for r in records if r.segment == os.path.basename(
        segment))


def test_next_segment_name_taken_by_a_directory_fails_the_rotation(tmp_path):
    run = Run(tmp_path / "a.journal", segment_bytes=300)
    run.append(1)
    os.mkdir(os.path.join(run.path, segment_name(2)))
    with pytest.raises(JournalFailed) as info:
        run.append(40)
    assert_names(info.value, os.path.join(run.path, segment_name(2)))
    run.writer.abandon()
    os.rmdir(os.path.join(run.path, segment_name(2)))
    run.assert_acknowledged_read_back()


def test_checkpoint_new_taken_by_a_directory_fails_the_snapshot(tmp_path):
    run = Run(tmp_path / "a.journal")
    run.append(2)
    run.snapshot()
    run.append(2)
    os.mkdir(os.path.join(run.path, SNAPSHOT_NEW))
    with pytest.raises(JournalFailed) as info:
        run.snapshot()
    assert_names(info.value, os.path.join(run.path, SNAPSHOT_NEW))
    run.writer.abandon()
    run.assert_acknowledged_read_back()


# --- damaged and foreign snapshots -------------------------------------------

def _two_snapshots(tmp_path) -> Run:
    run = Run(tmp_path / "a.journal", segment_bytes=300)
    run.append(6)
    run.snapshot()
    run.append(6)
    run.snapshot()
    run.append(3)
    run.writer.abandon()
    return run


def test_truncated_snapshot_falls_back_to_the_previous_one(tmp_path):
    run = _two_snapshots(tmp_path)
    current = os.path.join(run.path, SNAPSHOT_NAME)
    with open(current, "r+b") as f:
        f.truncate(os.path.getsize(current) // 2)
    with pytest.raises(CorruptSnapshot) as info:
        read_snapshot_file(current)
    assert_names(info.value, current)
    assert info.value.offset is not None
    snap = load_snapshot(run.path)
    assert (snap.name, snap.seq) == (SNAPSHOT_OLD, 6)
    assert SNAPSHOT_NAME in snap.reason
    run.snapshot_seq = None  # the newest one is damaged, by the test
    run.assert_acknowledged_read_back()


def test_truncated_only_snapshot_is_no_snapshot_naming_the_journal(tmp_path):
    run = Run(tmp_path / "a.journal")
    run.append(3)
    run.snapshot()
    run.writer.abandon()
    current = os.path.join(run.path, SNAPSHOT_NAME)
    with open(current, "r+b") as f:
        f.truncate(10)
    with pytest.raises(NoSnapshot) as info:
        load_snapshot(run.path)
    assert_names(info.value, run.path)
    assert "truncated" in str(info.value)
    run.snapshot_seq = None
    run.assert_acknowledged_read_back()  # no segment was deleted yet


def test_snapshot_from_a_newer_format_is_refused_and_skipped(tmp_path):
    run = _two_snapshots(tmp_path)
    current = os.path.join(run.path, SNAPSHOT_NAME)
    with open(current, "rb") as f:
        newer = damage.snapshot_with_version(f.read(), 2)
    with open(current, "wb") as f:
        f.write(newer)
    with pytest.raises(CorruptSnapshot) as info:
        read_snapshot_file(current)
    assert_names(info.value, current)
    assert "version 2" in str(info.value)
    assert load_snapshot(run.path).name == SNAPSHOT_OLD
    run.snapshot_seq = None
    run.assert_acknowledged_read_back()


def test_snapshot_from_a_newer_format_is_an_unsupported_version(tmp_path):
    run = _two_snapshots(tmp_path)
    current = os.path.join(run.path, SNAPSHOT_NAME)
    with open(current, "rb") as f:
        newer = damage.snapshot_with_version(f.read(), 2)
    with open(current, "wb") as f:
        f.write(newer)
    with pytest.raises(UnsupportedVersion):
        read_snapshot_file(current)


def test_segment_from_a_newer_format_refuses_to_append(tmp_path):
    run = Run(tmp_path / "a.journal")
    run.append(2)
    run.writer.close()
    seg = os.path.join(run.path, segment_name(1))
    with open(seg, "rb") as f:
        newer = damage.segment_with_version(f.read(), 4)
    with open(seg, "wb") as f:
        f.write(newer)
    with pytest.raises(UnsupportedVersion) as info:
        Run(run.path)
    assert_names(info.value, seg)


# --- two writers -------------------------------------------------------------

def test_second_writer_is_refused_and_the_first_loses_nothing(tmp_path):
    first = Run(tmp_path / "a.journal")
    first.append(3)
    with pytest.raises(JournalLocked) as info:
        Run(first.path)
    assert_names(info.value, first.path)
    first.append(3)  # the refused second writer disturbed nothing
    first.writer.close()
    first.assert_acknowledged_read_back()


# --- hostile msgpack inside validly framed records ---------------------------

_OPEN_DECODER_BUGS = {}


def _hostile_cases():
    for name, payload in sorted(damage.hostile_payloads().items()):
        marks = []
        if name in _OPEN_DECODER_BUGS:
            raises, reason = _OPEN_DECODER_BUGS[name]
            marks.append(pytest.mark.xfail(strict=True, raises=raises,
                                           reason=reason))
        yield pytest.param(payload, id=name, marks=marks)


@pytest.mark.parametrize("payload", list(_hostile_cases()))
def test_hostile_msgpack_record_is_reported_never_raised_or_evaluated(
        tmp_path, payload):
    # seq 1 valid, seq 2 hostile (valid CRC), seq 3 valid.
    seg = os.path.join(tmp_path, segment_name(1))
    good = codec.pack(dataset(1))
    with open(seg, "wb") as f:
        f.write(encode_segment_header(1, 1) + encode_record(1, REC_SET, good)
                + encode_record(2, REC_SET, payload)
                + encode_record(3, REC_SET, codec.pack(dataset(3))))
    records, reader = read_all(str(tmp_path))
    result = replay(str(tmp_path))
    assert not os.path.exists(damage.PICKLE_MARKER)
    if records[1:2] and records[1].seq == 2:
        # It decoded to plain data (e.g. pickle bytes kept as bytes):
        # nothing was built from it but msgpack values.
        assert isinstance(records[1].payload, (bytes, list, dict, str, int,
                                               float, bool, type(None)))
        return
    assert [(r.seq, r.trusted) for r in records] == [(1, True), (3, False)]
    bad = [d for d in reader.diagnostics if d.kind == "bad_payload"]
    assert bad and bad[0].path == seg and bad[0].seq == 2
    assert result.records_applied == 1 and result.records_untrusted == 1
    assert result.damaged


def test_hostile_msgpack_snapshot_is_refused_and_replay_goes_on(tmp_path):
    run = Run(tmp_path / "a.journal")
    run.append(3)
    run.writer.abandon()
    path = os.path.join(run.path, SNAPSHOT_NAME)
    for name, payload in damage.hostile_payloads().items():
        if name in _OPEN_DECODER_BUGS:
            continue
        with open(path, "wb") as f:
            f.write(encode_snapshot(3, payload))  # valid header and CRC
        try:
            snap = read_snapshot_file(path)
        except CorruptSnapshot:
            snap = None
        result = replay(run.path)  # never raises
        if snap is None:
            assert result.records_applied == 3, name
    assert not os.path.exists(damage.PICKLE_MARKER)
