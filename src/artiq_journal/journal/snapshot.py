"""Checkpoint (snapshot) files and their atomic rotation.

Protocol (docs/FORMAT.md, "Snapshot rotation"):

1. write ``checkpoint.new`` completely and fsync it;
2. rename ``checkpoint`` -> ``checkpoint.old`` (if it exists);
3. rename ``checkpoint.new`` -> ``checkpoint``;
4. fsync the directory.

The data of ``checkpoint.new`` is durable before any rename, so whichever
subset of the renames survives a power loss, the directory holds at least
one complete, valid snapshot.  The loader tries ``checkpoint``, then a
valid ``checkpoint.new``, then ``checkpoint.old`` and says which it used and
why.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ..errors import (CorruptSnapshot, JournalFailed, NoSnapshot,
                      NotRegularFile,
                      UnsupportedSnapshotVersion)
from . import codec
from .constants import (DEFAULT_MAX_SNAPSHOT_BYTES, SNAPSHOT_VERSION,
                        SNAPSHOT_HEADER, SNAPSHOT_HEADER_SIZE, SNAPSHOT_MAGIC,
                        SNAPSHOT_NAME, SNAPSHOT_NEW, SNAPSHOT_OLD)
from .framing import crc32, crc32_combine
from .fsio import OS_FILE_OPS, FileOps
from .safefile import (CREATE_MODE, O_CLOEXEC, O_NOFOLLOW,
                       open_regular_file, write_all)

#: Header bytes covered by the CRC (everything before the CRC field).
_CRC_COVERED = 32


def encode_snapshot(seq: int, payload: bytes) -> bytes:
    head = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, 0, seq,
                                len(payload), 0)[:_CRC_COVERED]
    crc = crc32(payload, crc32(head))
    return SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, 0, seq,
                                len(payload), crc) + payload


@dataclass
class Snapshot:
    seq: int
    state: Any
    path: str
    #: Which file was used (checkpoint, checkpoint.new, checkpoint.old).
    name: str
    #: Why this file and not the preferred one ("" when it is ``checkpoint``).
    reason: str = ""
    size: int = 0
    problems: list[str] = field(default_factory=list)


def read_snapshot_file(path: str,
                       max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES) -> Snapshot:
    """Load and verify one snapshot file.  Raises CorruptSnapshot for a
    damaged or incomplete file -- its subclass UnsupportedSnapshotVersion
    (also an UnsupportedVersion) for one of a newer format version -- or
    OSError (FileNotFoundError when it does not exist)."""
    with open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(SNAPSHOT_HEADER_SIZE)
        if len(head) < SNAPSHOT_HEADER_SIZE:
            raise CorruptSnapshot(f"snapshot header truncated ({len(head)} of "
                                  f"{SNAPSHOT_HEADER_SIZE} bytes)",
                                  path=path, offset=0)
        magic, version, flags, _res, seq, length, crc = \
            SNAPSHOT_HEADER.unpack(head)
        if magic != SNAPSHOT_MAGIC:
            raise CorruptSnapshot("bad snapshot magic", path=path, offset=0)
        if head[36:SNAPSHOT_HEADER_SIZE] != bytes(4):
            raise CorruptSnapshot("nonzero reserved bytes in snapshot "
                                  "header", path=path, offset=36)
        if version != SNAPSHOT_VERSION:
            raise UnsupportedSnapshotVersion(
                f"unsupported snapshot format version {version} (this reader "
                f"knows {SNAPSHOT_VERSION})", path=path, offset=8)
        if length > max_bytes or SNAPSHOT_HEADER_SIZE + length != size:
            raise CorruptSnapshot(
                f"snapshot payload length {length} does not match the file "
                f"size {size} (incomplete or damaged)", path=path, offset=24)
        payload = f.read(length)
    if crc32(payload, crc32(head[:_CRC_COVERED])) != crc:
        raise CorruptSnapshot("snapshot CRC mismatch", path=path,
                              offset=SNAPSHOT_HEADER_SIZE)
    try:
        state = codec.unpack(payload, max_bytes)
    except ValueError as exc:
        raise CorruptSnapshot(f"snapshot payload cannot be decoded: {exc}",
                              path=path, offset=SNAPSHOT_HEADER_SIZE) from None
    return Snapshot(seq, state, path, os.path.basename(path), size=size)


def load_snapshot(journal_dir: str,
                  max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES) -> Snapshot:
    """The best valid snapshot of a journal directory.

    Order: ``checkpoint``; else a complete, valid ``checkpoint.new`` (a crash
    between the two renames leaves the newest state there); else
    ``checkpoint.old``.  Raises NoSnapshot when none is usable; the problems
    with each candidate are in the message and in ``Snapshot.problems``.
    """
    problems: list[str] = []
    for name in (SNAPSHOT_NAME, SNAPSHOT_NEW, SNAPSHOT_OLD):
        path = os.path.join(journal_dir, name)
        try:
            snap = read_snapshot_file(path, max_bytes)
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        except CorruptSnapshot as exc:
            problems.append(f"{name}: {exc}")
            continue
        except NotRegularFile as exc:
            problems.append(f"{name}: {exc.reason}")
            continue
        except OSError as exc:
            problems.append(f"{name}: cannot read: {exc.strerror or exc}")
            continue
        snap.problems = problems
        snap.reason = "; ".join(problems)
        return snap
    exc = NoSnapshot("no usable snapshot (" + "; ".join(problems) + ")",
                     path=journal_dir)
    exc.problems = problems
    raise exc


def write_snapshot(journal_dir: str, seq: int, state: Any, *,
                   ops: FileOps = OS_FILE_OPS,
                   sync: bool = True) -> int:
    """Atomically replace the journal's snapshot with ``state`` covering
    records up to ``seq``; returns the snapshot file size.

    Durable when it returns (two fsyncs: the file, then the directory) unless
    ``sync`` is False (tests only).  On any OSError raises JournalFailed and
    leaves the previous snapshot loadable; TypeError (nothing renamed) for
    a state that cannot be encoded.

    The payload is streamed (:func:`codec.snapshot_stream_pack`): written
    piece by piece after a zeroed header, which is written last, in place,
    once the length and CRC are known -- a file cut anywhere before that
    fails the magic check.  No copy of the encoded state is held.
    """
    new_path = os.path.join(journal_dir, SNAPSHOT_NEW)
    cur_path = os.path.join(journal_dir, SNAPSHOT_NAME)
    old_path = os.path.join(journal_dir, SNAPSHOT_OLD)
    step = "create"
    try:
        if not os.path.lexists(cur_path) and os.path.lexists(new_path):
            try:
                read_snapshot_file(new_path)
            except (CorruptSnapshot, NotRegularFile, OSError):
                pass  # incomplete or not ours: nothing depends on it
            else:
                # A rotation died between its renames: checkpoint.new is
                # the newest snapshot.  Finish that rotation, or truncating
                # checkpoint.new below would destroy its only copy.
                step = "rename"
                ops.rename(new_path, cur_path)
                ops.fsync_dir(journal_dir)
                step = "create"
        if os.path.lexists(new_path):
            # An incomplete leftover, or one older than ``checkpoint``:
            # nothing depends on it.  Removed, never truncated in place: a
            # symlink planted under this name must not be written through.
            ops.unlink(new_path)
        fd = ops.open(new_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                      | O_NOFOLLOW | O_CLOEXEC, CREATE_MODE)
        try:
            step = "write"
            length = _write_payload(fd, state, ops)
            head = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, 0,
                                        seq, length[0], 0)[:_CRC_COVERED]
            crc = crc32_combine(crc32(head), length[1], length[0])
            os.lseek(fd, 0, os.SEEK_SET)
            write_all(fd, SNAPSHOT_HEADER.pack(
                SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, 0, seq, length[0], crc),
                ops.write)
            if sync:
                step = "fsync"
                # The data must be durable before the renames make it the
                # current snapshot, or power loss could leave a renamed but
                # empty file and no older snapshot to fall back on.
                ops.fsync(fd)
        except TypeError:
            # Cannot be encoded: the incomplete checkpoint.new (its header
            # still zero) goes; the current snapshot is untouched.
            ops.close(fd)
            fd = None
            ops.unlink(new_path)
            raise
        finally:
            if fd is not None:
                ops.close(fd)
        size = SNAPSHOT_HEADER_SIZE + length[0]
        step = "rename"
        if os.path.lexists(cur_path):
            ops.rename(cur_path, old_path)
        ops.rename(new_path, cur_path)
        if sync:
            step = "fsync directory"
            # Renames are only durable once the directory is synced.
            ops.fsync_dir(journal_dir)
    except OSError as exc:
        raise JournalFailed(f"snapshot {step} failed: {exc.strerror or exc}",
                            path=new_path) from exc
    return size


#: Pieces are checksummed and written at most this much at a time: the CRC
#: reads a slice just before write() copies it, while it is still in cache.
_WRITE_SLICE = 1 << 20
#: Every this many bytes written, the kernel is asked to start writing them
#: out (see _start_writeback).
_WRITEBACK_BYTES = 8 << 20


if sys.platform.startswith("linux") and hasattr(os, "posix_fadvise"):
    def _start_writeback(fd: int, offset: int, length: int) -> None:
        """Start writing a just-written range to disk, without waiting.

        Linux's POSIX_FADV_DONTNEED starts writeback of the range's dirty
        pages and drops only clean ones (mm/fadvise.c; PostgreSQL's
        pg_flush_data falls back on it without sync_file_range), so the
        disk works while the rest is encoded, and the final fsync waits
        for the tail instead of the whole file.  Only a hint: the fsync
        decides durability, so a refusal changes nothing."""
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
else:
    def _start_writeback(fd: int, offset: int, length: int) -> None:
        # Elsewhere DONTNEED may merely drop cache: the fsync does it all.
        pass


class _PayloadSink:
    """Takes the payload's pieces (codec.snapshot_stream_pack): CRC,
    write, and a writeback hint every _WRITEBACK_BYTES."""

    __slots__ = ("fd", "ops", "length", "crc", "_hinted")

    def __init__(self, fd: int, ops: FileOps) -> None:
        self.fd = fd
        self.ops = ops
        self.length = 0
        self.crc = 0
        self._hinted = 0  # payload bytes already handed to _start_writeback

    def __call__(self, piece: memoryview) -> None:
        size = piece.nbytes
        if size <= _WRITE_SLICE:
            self.crc = crc32(piece, self.crc)
            write_all(self.fd, piece, self.ops.write)
        else:
            for start in range(0, size, _WRITE_SLICE):
                part = piece[start:start + _WRITE_SLICE]
                self.crc = crc32(part, self.crc)
                write_all(self.fd, part, self.ops.write)
        self.length += size
        if self.length - self._hinted >= _WRITEBACK_BYTES:
            _start_writeback(self.fd, SNAPSHOT_HEADER_SIZE + self._hinted,
                             self.length - self._hinted)
            self._hinted = self.length


def _write_payload(fd: int, state: Any, ops: FileOps) -> tuple[int, int]:
    """Write a zeroed header, then ``state``'s encoding after it; return
    (payload length, CRC of the payload)."""
    write_all(fd, bytes(SNAPSHOT_HEADER_SIZE), ops.write)
    sink = _PayloadSink(fd, ops)
    codec.snapshot_stream_pack(state, sink)
    return sink.length, sink.crc
