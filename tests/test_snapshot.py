"""Checkpoint files: round trip, the rotation protocol under a crash at every
step, fallback on damage, and the writer's deletion of covered segments
(docs/FORMAT.md section 5).

A crash is simulated by a FileOps that dies at its k-th call: that call and
every later one raise a private exception (a write dies half-way), for
every k until the rotation completes.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from artiq_journal.errors import CorruptSnapshot, JournalFailed, NoSnapshot
from artiq_journal.journal import codec, framing
from artiq_journal.journal.constants import (SNAPSHOT_VERSION as FORMAT_VERSION, REC_SET,
                                             SEGMENT_HEADER_SIZE,
                                             SNAPSHOT_HEADER,
                                             SNAPSHOT_HEADER_SIZE,
                                             SNAPSHOT_NAME, SNAPSHOT_NEW,
                                             SNAPSHOT_OLD)
from artiq_journal.journal.fsio import FileOps
from artiq_journal.journal.reader import JournalReader, Position
from artiq_journal.journal.snapshot import (encode_snapshot, load_snapshot,
                                            read_snapshot_file,
                                            write_snapshot)
from artiq_journal.journal.writer import JournalWriter


def same(a, b) -> bool:
    """Exact equality of decoded states (types, dtypes, bits)."""
    return codec.pack(a) == codec.pack(b)


def state(n: int) -> dict:
    return {"n": n, "data": np.arange(n, dtype=">f8"), "t": (n, "x"),
            "nested": {"k": [n] * n}}


class _Crash(BaseException):
    """The process died here (not an OSError: nothing may handle it)."""


class CrashAt(FileOps):
    """Dies at call number ``k`` (1-based) and stays dead."""

    def __init__(self, k: int):
        self.k = k
        self.count = 0
        self.dead = False
        self.log = []

    def _step(self, name):
        self.count += 1
        self.log.append(name)
        if self.dead or self.count >= self.k:
            self.dead = True
            raise _Crash(name)

    def open(self, *args):
        self._step("open")
        return os.open(*args)

    def write(self, fd, data):
        try:
            self._step("write")
        except _Crash:
            if self.count == self.k:  # the write that dies: half of it lands
                os.write(fd, memoryview(data)[:max(len(data) // 2, 1)])
            raise
        return os.write(fd, data)

    def fsync(self, fd):
        self._step("fsync")
        os.fsync(fd)

    def close(self, fd):
        try:
            self._step("close")
        finally:
            os.close(fd)  # the kernel closes a dead process's files

    def rename(self, src, dst):
        self._step("rename")
        os.replace(src, dst)

    def fsync_dir(self, path):
        self._step("fsync_dir")
        super().fsync_dir(path)


def _loaded(path):
    try:
        snap = load_snapshot(str(path))
    except NoSnapshot:
        return None
    return snap.seq, snap.state


# -- round trip ---------------------------------------------------------------

def test_snapshot_round_trips_exactly(tmp_path):
    size = write_snapshot(str(tmp_path), 42, state(5))
    snap = load_snapshot(str(tmp_path))
    assert (snap.seq, snap.name, snap.reason) == (42, SNAPSHOT_NAME, "")
    assert same(snap.state, state(5))
    assert snap.size == size == os.path.getsize(tmp_path / SNAPSHOT_NAME)
    assert not (tmp_path / SNAPSHOT_NEW).exists()


def test_second_snapshot_keeps_the_first_as_old(tmp_path):
    write_snapshot(str(tmp_path), 1, state(1))
    write_snapshot(str(tmp_path), 2, state(2))
    assert (read_snapshot_file(str(tmp_path / SNAPSHOT_OLD)).seq,
            load_snapshot(str(tmp_path)).seq) == (1, 2)


def test_no_snapshot_files_raises_no_snapshot(tmp_path):
    with pytest.raises(NoSnapshot):
        load_snapshot(str(tmp_path))


def test_unsupported_state_raises_type_error_and_keeps_old(tmp_path):
    write_snapshot(str(tmp_path), 1, state(1))
    with pytest.raises(TypeError):
        write_snapshot(str(tmp_path), 2, {"bad": {1, 2}})
    assert _loaded(tmp_path)[0] == 1


# -- crash at every step ------------------------------------------------------

def _prepare(path, prior: str) -> list:
    """Set up the directory; return the acceptable 'old' outcomes."""
    if prior == "none":
        return [None]
    write_snapshot(str(path), 1, state(1))
    if prior == "one":
        return [(1, state(1))]
    write_snapshot(str(path), 2, state(2))
    if prior == "two":
        return [(2, state(2))]
    # "interrupted": the previous rotation died between its two renames
    # (steps 3 and 4): the newest snapshot lives only in checkpoint.new.
    (path / SNAPSHOT_NEW).write_bytes(
        encode_snapshot(3, codec.pack(state(3))))
    os.replace(path / SNAPSHOT_NAME, path / SNAPSHOT_OLD)
    assert _loaded(path)[0] == 3
    return [(3, state(3))]


@pytest.mark.parametrize("prior", ["none", "one", "two", "interrupted"])
def test_crash_at_every_step_of_rotation_leaves_old_or_new_snapshot(
        tmp_path, prior):
    new = (9, state(9))
    violations = []
    k = 0
    while True:
        k += 1
        path = tmp_path / f"{prior}-{k}"
        path.mkdir()
        acceptable = _prepare(path, prior) + [new]
        ops = CrashAt(k)
        try:
            write_snapshot(str(path), 9, state(9), ops=ops)
            completed = True
        except _Crash:
            completed = False
        got = _loaded(path)
        if not any(got is a or (got is not None and a is not None
                                and got[0] == a[0] and same(got[1], a[1]))
                   for a in acceptable):
            violations.append(f"crash at call {k} ({ops.log[-1]}) left "
                              f"{None if got is None else got[0]}; steps "
                              f"{ops.log}")
        if completed:
            assert got is not None and got[0] == 9
            break
        # The next rotation (after a restart) must succeed from here.
        write_snapshot(str(path), 10, state(10))
        assert _loaded(path)[0] == 10
    print(f"rotation crash ({prior}): {k} crash points, "
          f"{len(violations)} violations")
    assert violations == []


@pytest.mark.parametrize("failing", ["write", "fsync", "rename", "fsync_dir"])
def test_os_error_during_rotation_raises_journal_failed_keeps_previous(
        tmp_path, failing):
    write_snapshot(str(tmp_path), 1, state(1))

    class Failing(FileOps):
        def write(self, fd, data):
            if failing == "write":
                raise OSError(28, "No space left on device")
            return os.write(fd, data)

        def fsync(self, fd):
            if failing == "fsync":
                raise OSError(5, "Input/output error")
            os.fsync(fd)

        def rename(self, src, dst):
            if failing == "rename":
                raise OSError(5, "Input/output error")
            os.replace(src, dst)

        def fsync_dir(self, path):
            if failing == "fsync_dir":
                raise OSError(5, "Input/output error")
            super().fsync_dir(path)

    with pytest.raises(JournalFailed) as info:
        write_snapshot(str(tmp_path), 2, state(2), ops=Failing())
    assert "checkpoint" in str(info.value)
    assert _loaded(tmp_path)[0] in (1, 2)


def test_snapshot_write_making_no_progress_fails_instead_of_looping(
        tmp_path):
    write_snapshot(str(tmp_path), 1, state(1))

    class Stuck(FileOps):
        calls = 0

        def write(self, fd, data):
            Stuck.calls += 1
            if Stuck.calls > 1000:
                raise _Crash("write() returned 0 a thousand times in a row")
            return 0

    with pytest.raises(JournalFailed):
        write_snapshot(str(tmp_path), 2, state(2), ops=Stuck())
    assert _loaded(tmp_path)[0] == 1


def test_replay_of_a_journal_without_snapshots_is_not_damaged(tmp_path):
    # "No snapshot at all" is the normal state of a young journal, not a
    # problem (replay.py skips NoSnapshot when every file is missing).
    replay = pytest.importorskip("artiq_journal.replay").replay
    path = tmp_path / "young.journal"
    with JournalWriter(path, fsync="never") as writer:
        writer.append(1, {"rid": 1, "class_name": "Scan"})
    result = replay(str(path))
    assert result.diagnostics == []
    assert not result.damaged


# -- damage and fallback ------------------------------------------------------

@pytest.fixture
def two_snapshots(tmp_path):
    """checkpoint (seq 2) and checkpoint.old (seq 1)."""
    write_snapshot(str(tmp_path), 1, state(1))
    write_snapshot(str(tmp_path), 2, state(2))
    return tmp_path


def _with_version(data: bytes, version: int) -> bytes:
    magic, _, flags, res, seq, length, _ = SNAPSHOT_HEADER.unpack_from(data)
    payload = data[SNAPSHOT_HEADER_SIZE:]
    head = SNAPSHOT_HEADER.pack(magic, version, flags, res, seq, length,
                                0)[:32]
    crc = framing.crc32(payload, framing.crc32(head))
    return SNAPSHOT_HEADER.pack(magic, version, flags, res, seq, length,
                                crc) + payload


DAMAGE = {
    "truncated": lambda d: d[:-1],
    "header-only": lambda d: d[:SNAPSHOT_HEADER_SIZE],
    "empty": lambda d: b"",
    "extended": lambda d: d + b"\x00",
    "bit-flip": lambda d: d[:50] + bytes([d[50] ^ 0x04]) + d[51:],
    "wrong-magic": lambda d: b"ARTIQXXX" + d[8:],
    "newer-version": lambda d: _with_version(d, FORMAT_VERSION + 1),
    "bad-payload": lambda d: encode_snapshot(7, b"\xc1"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_falls_back_to_old(two_snapshots, damage):
    path = two_snapshots / SNAPSHOT_NAME
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    with pytest.raises(CorruptSnapshot):
        read_snapshot_file(str(path))
    snap = load_snapshot(str(two_snapshots))
    assert (snap.name, snap.seq) == (SNAPSHOT_OLD, 1)
    assert same(snap.state, state(1))
    assert "checkpoint:" in snap.reason
    if damage == "newer-version":
        assert "version" in snap.reason


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_prefers_valid_checkpoint_new(two_snapshots,
                                                         damage):
    (two_snapshots / SNAPSHOT_NEW).write_bytes(
        encode_snapshot(3, codec.pack(state(3))))
    path = two_snapshots / SNAPSHOT_NAME
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    snap = load_snapshot(str(two_snapshots))
    assert (snap.name, snap.seq) == (SNAPSHOT_NEW, 3)
    assert same(snap.state, state(3))
    assert snap.reason.startswith("checkpoint:")


def test_missing_checkpoint_uses_checkpoint_new_and_says_why(two_snapshots):
    (two_snapshots / SNAPSHOT_NEW).write_bytes(
        encode_snapshot(3, codec.pack(state(3))))
    (two_snapshots / SNAPSHOT_NAME).unlink()
    snap = load_snapshot(str(two_snapshots))
    assert (snap.name, snap.seq) == (SNAPSHOT_NEW, 3)
    assert "checkpoint: missing" in snap.reason


def test_damaged_checkpoint_and_new_fall_back_to_old(two_snapshots):
    good = (two_snapshots / SNAPSHOT_NAME).read_bytes()
    (two_snapshots / SNAPSHOT_NEW).write_bytes(good[:20])
    (two_snapshots / SNAPSHOT_NAME).write_bytes(good[:-3])
    snap = load_snapshot(str(two_snapshots))
    assert (snap.name, snap.seq) == (SNAPSHOT_OLD, 1)
    assert "checkpoint:" in snap.reason and "checkpoint.new:" in snap.reason


def test_no_valid_snapshot_raises_no_snapshot_naming_each_file(
        two_snapshots):
    for name in (SNAPSHOT_NAME, SNAPSHOT_OLD):
        path = two_snapshots / name
        path.write_bytes(path.read_bytes()[:-1])
    (two_snapshots / SNAPSHOT_NEW).write_bytes(b"junk")
    with pytest.raises(NoSnapshot) as info:
        load_snapshot(str(two_snapshots))
    for name in (SNAPSHOT_NAME, SNAPSHOT_NEW, SNAPSHOT_OLD):
        assert f"{name}:" in str(info.value)


def test_bit_flip_anywhere_in_checkpoint_is_detected(two_snapshots):
    path = two_snapshots / SNAPSHOT_NAME
    good = path.read_bytes()
    violations = []
    for index in range(len(good)):
        for bit in range(8):
            damaged = bytearray(good)
            damaged[index] ^= 1 << bit
            path.write_bytes(damaged)
            try:
                snap = load_snapshot(str(two_snapshots))
            except Exception as exc:  # noqa: BLE001 - property under test
                violations.append(f"{index}.{bit}: raised {exc!r}")
                continue
            if snap.name != SNAPSHOT_OLD:
                violations.append(f"byte {index} bit {bit}: damaged "
                                  f"{snap.name} accepted (seq {snap.seq})")
    print(f"checkpoint bit flips: {len(good) * 8} tried, "
          f"{len(violations)} violations")
    assert violations == [], violations[:5]


# -- the writer: snapshots and covered segments -------------------------------

def _segments(path) -> dict[str, int]:
    """{name: first_seq} of the journal's segments."""
    found = {}
    for name in os.listdir(path):
        if framing.parse_segment_name(name) is not None:
            with open(os.path.join(path, name), "rb") as f:
                found[name] = framing.decode_segment_header(
                    f.read(SEGMENT_HEADER_SIZE)).first_seq
    return found


def _covered(segments: dict[str, int], seq: int, current: str) -> set[str]:
    """Segments whose every record is <= seq: the next segment starts at or
    before seq + 1.  Never the current one."""
    ordered = sorted(segments, key=framing.parse_segment_name)
    return {name for name, nxt in zip(ordered, ordered[1:])
            if segments[nxt] <= seq + 1 and name != current}


def test_writer_deletes_only_segments_covered_by_the_previous_snapshot(
        tmp_path):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="never", segment_bytes=100)
    for i in range(20):
        writer.append(REC_SET, ["k", i])
    before = _segments(path)
    s1 = writer.write_snapshot(state(1))
    assert _segments(path) == before, "the first snapshot deleted segments"
    for i in range(20):
        writer.append(REC_SET, ["k", 20 + i])
    before = _segments(path)
    current = max(before, key=framing.parse_segment_name)
    s2 = writer.write_snapshot(state(2))
    after = _segments(path)
    expected_gone = _covered(before, s1, current)
    assert expected_gone, "test must exercise a deletion"
    assert set(before) - set(after) == expected_gone
    # Everything after the previous snapshot is still there: checkpoint.old
    # plus the records after it rebuild the state if checkpoint is lost.
    assert min(after.values()) <= s1 + 1
    old = read_snapshot_file(str(path / SNAPSHOT_OLD))
    assert old.seq == s1 and same(old.state["state"], state(1))
    reader = JournalReader(str(path), after_seq=old.seq)
    seqs = [r.seq for r in reader if r.trusted]
    assert reader.diagnostics == []
    assert seqs == list(range(s1 + 1, writer.last_seq + 1))
    snap = load_snapshot(str(path))
    assert snap.seq == s2 == 40 and same(snap.state["state"], state(2))
    writer.close()


def test_snapshot_position_is_where_the_next_record_starts(tmp_path):
    path = tmp_path / "a.journal"
    writer = JournalWriter(path, fsync="never", segment_bytes=100)
    for i in range(7):
        writer.append(REC_SET, ["k", i])
    seq = writer.write_snapshot({"at": 7})
    for i in range(5):
        writer.append(REC_SET, ["k", 7 + i])
    writer.close()
    snap = load_snapshot(str(path))
    segment, offset = snap.state["position"]
    reader = JournalReader(str(path), after_seq=seq,
                           start=Position(segment, offset))
    records = list(reader)
    assert reader.diagnostics == []
    assert records[0].seq == seq + 1
    assert (framing.segment_name(segment), offset) == \
        (records[0].segment, records[0].offset)


def test_failed_snapshot_stops_the_writer(tmp_path):
    class NoRename(FileOps):
        def rename(self, src, dst):
            raise OSError(5, "Input/output error")

    writer = JournalWriter(tmp_path / "a.journal", fsync="never",
                           ops=NoRename())
    writer.append(REC_SET, ["k", 1])
    with pytest.raises(JournalFailed):
        writer.write_snapshot(state(1))
    with pytest.raises(JournalFailed):
        writer.append(REC_SET, ["k", 2])
    writer.abandon()


def test_snapshot_header_layout_matches_the_format_document(tmp_path):
    write_snapshot(str(tmp_path), 0x0102030405060708, "x")
    data = (tmp_path / SNAPSHOT_NAME).read_bytes()
    assert data[:8] == b"ARTIQCKP"
    assert struct.unpack_from("<HHIQQ", data, 8) == \
        (FORMAT_VERSION, 0, 0, 0x0102030405060708,
         len(data) - SNAPSHOT_HEADER_SIZE)
    assert data[36:40] == b"\0\0\0\0"
