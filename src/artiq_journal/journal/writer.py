"""The journal writer: append records, rotate segments, write snapshots.

Guarantees (docs/FORMAT.md, "Durability"):

* ``append`` hands the whole framed record to the kernel with ``write``
  before it returns, under every fsync policy, so a process crash (SIGKILL,
  segfault, OOM kill) loses nothing that was appended.  A record of
  OVERLAP_CRC_MIN bytes or more is written while its CRC is computed: its
  CRC field is written last (pwrite), and the record counts only after.
* ``fsync="always"``: ``append`` returns only after ``fdatasync``.
  ``fsync="group"``: a background thread syncs at most ``group_interval``
  seconds after a record was written; ``durable_seq`` says how far.
  ``fsync="never"``: only ``sync``, close, snapshots and segment rotation
  sync.
* Segment rotation (FORMAT.md section 11): under ``always`` a segment is
  synced before the next one is created (header synced, directory
  fsynced).  Under ``never``/``group`` (format 3) the next segment is
  created at once and the old one, with the new one's header and name,
  is synced by a background thread; the segment is then *settled*: a
  ``segment_synced`` record vouching for it is appended.  Nothing written
  after a rotation is acknowledged (``durable_seq``, ``sync``, close,
  snapshots) before every earlier segment is settled, so a reader can
  tell a power-loss tear of an unsynced segment from damage (8.6).
* Fail-stop: the first failed write or fsync raises :class:`JournalFailed`
  (naming the file) and every later append raises it again.  fsync is never
  retried on the same data: after a failed fsync Linux may already have
  dropped the dirty pages, and a retry would report success for lost data.
  A segment found deleted after a sync (journal directory removed mid-run)
  is a failure too: its records are on no disk.
* Heartbeats: every ``heartbeat_interval`` seconds (None: never) a
  ``heartbeat`` record ``[unix_time]`` is appended from a background thread
  (the group-commit thread under ``fsync="group"``), so a reader can tell a
  live process that is merely not journaling from a stopped or hung one.
  ``append`` stays a one-thread API (the experiment's); the heartbeat is
  kept out of it by two flags (see ``_heartbeat``), not by a lock: a lock
  on every append cost ~0.2 us, +10% on the hot path.  The flags rely on
  the GIL; on a free-threaded build heartbeats are off.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
import weakref
from typing import Any

from ..errors import (CorruptRecord, CorruptSnapshot, JournalClosed,
                      JournalError, JournalFailed, NoSnapshot, NotAJournal,
                      RecordTooLarge, UnsupportedVersion)
from . import codec, lock as journal_lock, snapshot as snapshots
from .constants import (CRC_FIELD, DEFAULT_MAX_RECORD_BYTES, RECORD_HEADER_SIZE,
                        DEFAULT_SEGMENT_BYTES, RECORD_HEADER_TAIL, REC_CLOSE,
                        REC_HEARTBEAT, REC_POINT_BEGIN, REC_POINT_END,
                        REC_SEGMENT_SYNCED, SEGMENT_FLAG_BACKGROUND_SYNC,
                        SEGMENT_HEADER_SIZE)
from .framing import (PARALLEL_CRC_MIN, OverlappedCrc, can_overlap, crc32,
                      crc32_parts, decode_segment_header, encode_record,
                      encode_segment_header, segment_name)
from .fsio import OS_FILE_OPS, FileOps, missing_directories
from .codec import MAX_NESTING
from .reader import JournalReader, Position, _vouching, list_segments
from .safefile import (CREATE_MODE, O_CLOEXEC, O_NOFOLLOW,
                       open_regular_file)

FSYNC_POLICIES = ("always", "group", "never")
#: Default group-commit window: a record is durable at most this long after
#: ``append`` returned (plus the time the fsync itself takes).
DEFAULT_GROUP_INTERVAL = 0.005
#: Default seconds between heartbeat records (see the module docstring).
DEFAULT_HEARTBEAT_INTERVAL = 10.0
#: How soon a heartbeat is retried when an append was under way.
_HEARTBEAT_RETRY = 0.05
#: Heartbeats exclude appends by flags that rely on the GIL (see
#: JournalWriter._heartbeat); a free-threaded CPython has none.
_GIL_ENABLED = getattr(sys, "_is_gil_enabled", lambda: True)()

#: Segments rotate with a background sync (format 3) only from this size
#: on: syncing a small segment inline costs less than the thread and the
#: segment_synced record, and small segments are what tests use to get
#: many of them (tests lower this to exercise the background path).
BACKGROUND_ROTATION_MIN_BYTES = 1 << 20
#: At most this many rotated segments sync in the background at once; a
#: rotation beyond waits for the oldest (bounds threads and descriptors;
#: the kernel's dirty-page limits bound the memory).
MAX_BACKGROUND_SYNCS = 16
#: Records with a payload at least this large are written while their CRC
#: is computed, the CRC written last (FORMAT.md section 11; tests lower it
#: to put small records through that path).
OVERLAP_CRC_MIN = PARALLEL_CRC_MIN

_live_writers: "weakref.WeakSet[JournalWriter]" = weakref.WeakSet()


def _disable_in_child() -> None:
    # A forked child shares the parent's file descriptors; two processes
    # appending to one segment would interleave records.  The child's copy
    # of every writer refuses appends (without touching the shared fd).
    for writer in list(_live_writers):
        writer._broken = JournalFailed(
            "journal writer cannot be used in a forked child process",
            path=writer.path)
        writer._fd = None
        writer._lock = None
        # Background syncs are the parent's threads (absent here) on the
        # parent's descriptors: nothing to wait for, nothing to close.
        writer._pendings = []
        writer._group_fd = None
        writer._group_idle = threading.Event()
        writer._group_idle.set()
        # A heartbeat thread of the parent may have held it at the fork:
        # the child's copy would stay locked forever.
        writer._beat_lock = threading.Lock()
        writer._beating = writer._in_append = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disable_in_child)


def _intact_end(reader: JournalReader, number: int, seg_path: str,
                size: int, snap_pos: Position | None) -> tuple[int, bool]:
    """Where the intact part of the last segment (number ``number``, ``size``
    bytes) ends, after ``reader`` has read the journal; and whether records
    end there (trusted ones, or ones the snapshot covers).

    Everything past that offset is a torn tail; nothing before it may be cut.
    """
    end = reader.end
    if end is not None and end.segment == number:
        # The last trusted record ends here.
        return end.offset, end.offset > SEGMENT_HEADER_SIZE
    if snap_pos is not None and snap_pos.segment == number:
        # Every record here is covered by the snapshot: the reader started
        # at its position and skipped them, so reader.end is None.  They
        # stay; only what follows the position is torn.
        return snap_pos.offset, snap_pos.offset > SEGMENT_HEADER_SIZE
    # No record was read here, so the segment holds none after the snapshot
    # (any covered ones come first).  Keep every byte up to a torn tail.
    torn = [d.offset for d in reader.diagnostics
            if d.kind in ("torn_tail", "unsynced_tail") and d.path == seg_path
            and d.offset is not None]
    return (max(torn[0], SEGMENT_HEADER_SIZE) if torn else size), False


class _PendingSync:
    """A segment handed to a background fdatasync at rotation (fsync
    "never"/"group"): until it is *settled* (synced, closed, and vouched for
    by a segment_synced record in the current segment) nothing appended
    after it may be acknowledged as durable."""

    def __init__(self, fd: int, number: int, last_seq: int,
                 path: str) -> None:
        self.fd, self.number, self.last_seq, self.path = \
            fd, number, last_seq, path
        self.done = threading.Event()
        self.error: JournalFailed | None = None
        #: The segment created by the rotation (its header is synced by
        #: the background sync too).
        self.new_fd: int | None = None
        self.new_path = ""


#: Levels of directories above a journal whose entries are fsynced when it
#: is opened: the journal's own name, ARTIQ's <hour>/ and <date>/.
NAME_SYNC_LEVELS = 3


class JournalWriter:
    """Append-only writer for one journal directory.

    Creates the directory (and its missing ancestors) durably if needed.
    Opening an existing journal starts from its snapshot, truncates a torn
    tail and continues the sequence; a journal with damage before its tail is
    refused (CorruptRecord) rather than appended to.  Holds the directory's
    lock until :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: str = "group",
                 group_interval: float = DEFAULT_GROUP_INTERVAL,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
                 ops: FileOps = OS_FILE_OPS) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, "
                             f"not {fsync!r}")
        if heartbeat_interval is not None and not heartbeat_interval > 0:
            raise ValueError("heartbeat_interval must be a positive number "
                             f"of seconds or None, not {heartbeat_interval!r}")
        if not _GIL_ENABLED:
            heartbeat_interval = None  # the exclusion below needs the GIL
        self.heartbeat_interval = heartbeat_interval
        self.path = os.path.abspath(os.fspath(path))
        self.fsync_policy = fsync
        self.group_interval = group_interval
        self.segment_bytes = segment_bytes
        self.max_record_bytes = max_record_bytes
        self.ops = ops
        self.__broken: JournalError | None = None
        #: Seq covered by the snapshot that the next rotation turns into
        #: checkpoint.old (None: unknown, so delete nothing).
        self._snapshot_seq: int | None = None
        self._fd: int | None = None
        self._lock = None
        self._seq = 0
        self._durable_seq = 0
        self._segment = 0
        self._offset = 0
        #: Bytes in segments this writer finished (see ``bytes_appended``).
        self._bytes_before_segment = 0
        self._sync_lock = threading.Lock()
        #: Mutual exclusion of the appending thread and the heartbeat
        #: (Dekker's flags; see _heartbeat): seq, offset and the segment fd
        #: change together inside either.
        self._in_append = False
        self._beating = False
        #: Held by the heartbeat while ``_beating``: what an append that
        #: finds a heartbeat under way waits on (rare: once per interval).
        self._beat_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Hot-path bindings: attribute lookups saved on every append.
        self._pack = codec.make_packer(zero_copy=True).pack
        self._tail_pack = RECORD_HEADER_TAIL.pack
        self._crc_pack = CRC_FIELD.pack
        self._write = ops.write
        self._always = fsync == "always"
        #: Inside begin_point()/end_point(): appends are not synced one by
        #: one (the point_end record syncs them all under "always").
        self._in_point = False
        #: Rotation syncs the old segment in the background (format 3,
        #: docs/FORMAT.md section 11): not under "always" (every record is
        #: synced anyway), nor without the GIL (settling needs the append
        #: exclusion, see _settle_from_thread).
        self._background_rotation = (
            fsync != "always" and _GIL_ENABLED
            and segment_bytes >= BACKGROUND_ROTATION_MIN_BYTES)
        #: Whether the current segment's header carries
        #: SEGMENT_FLAG_BACKGROUND_SYNC (only such a segment may be rotated
        #: in the background).
        self._segment_flagged = False
        #: Rotated segments still syncing or not yet vouched for, oldest
        #: first (settled strictly in this order).
        self._pendings: list = []
        #: The descriptor the group-commit thread is syncing outside
        #: _sync_lock (see _group_sync), and its "done" event.
        self._group_fd: int | None = None
        self._group_idle = threading.Event()
        self._group_idle.set()
        #: Set by close(): its rotation (if the close record fills the
        #: segment) is synced inline, so no segment_synced follows close.
        self._closing = False
        #: The appending thread is blocked in _wait_for_heartbeat (see
        #: _settle_from_thread).
        self._append_waiting = False

        self._ensure_dir()
        self._lock = journal_lock.acquire(self.path)
        try:
            self._open_tail()
        except BaseException:
            self._abandon()
            raise
        _live_writers.add(self)
        if fsync == "group":
            self._thread = threading.Thread(
                target=self._group_commit_loop, daemon=True,
                name=f"artiq-journal group commit {self.path}")
            self._thread.start()
        elif heartbeat_interval is not None:
            self._thread = threading.Thread(
                target=self._heartbeat_loop, daemon=True,
                name=f"artiq-journal heartbeat {self.path}")
            self._thread.start()

    # -- opening ---------------------------------------------------------------

    def _ensure_dir(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotAJournal("exists and is not a directory", path=self.path)
        # Not os.makedirs: every directory created here has its name in its
        # parent, and only an fsync of that parent makes the name survive
        # power loss.  Without it the whole journal can vanish after
        # fsync="always" acknowledged records.  Through self.ops, so a
        # recording file layer sees every step.
        journal_dir = os.path.abspath(self.path)
        synced = set()
        for path in missing_directories(journal_dir):
            try:
                self.ops.mkdir(path)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise NotAJournal("exists and is not a directory",
                                      path=path) from None
                # Created concurrently (another run in the same results
                # directory): its name may not be durable yet either, so
                # the parent is synced all the same.
            except OSError as exc:
                raise JournalFailed(f"cannot create directory: "
                                    f"{exc.strerror or exc}",
                                    path=path) from exc
            parent = os.path.dirname(path)
            self._sync_dir(parent)
            synced.add(parent)
        # Directories that already existed may not be durable either: ARTIQ's
        # worker makes results/<date>/<hour>/ with os.makedirs (no fsync)
        # just before the run, and a writer that died before syncing may
        # have made the journal's.  Their names are made durable here.
        path = journal_dir
        for _ in range(NAME_SYNC_LEVELS):
            parent = os.path.dirname(path)
            if parent == path:
                break
            if parent not in synced:
                self._sync_dir(parent)
            path = parent

    def _snapshot_start(self) -> tuple[int, Position] | None:
        """(covered seq, position after it) of the journal's snapshot, or
        None when there is no usable one (then reading starts at seq 1)."""
        try:
            snap = snapshots.load_snapshot(self.path)
        except (NoSnapshot, CorruptSnapshot):
            return None
        # The CRC passed, so this is what a writer wrote; still, a position
        # that is not two integers is not trusted to skip anything by (and
        # replay would ignore such a snapshot too).
        body = snap.state
        position = body.get("position") if isinstance(body, dict) else None
        if not (isinstance(position, (list, tuple)) and len(position) == 2
                and all(type(v) is int for v in position)
                and position[0] >= 1
                and position[1] >= SEGMENT_HEADER_SIZE):
            return None
        return snap.seq, Position(*position)

    def _open_tail(self) -> None:
        # Start where the snapshot ends: write_snapshot deletes segments the
        # previous snapshot covers, so reading from seq 1 would find a gap.
        start = self._snapshot_start()
        snap_seq, snap_pos = start if start is not None else (0, None)
        reader = JournalReader(self.path, decode=False,
                               max_record_bytes=self.max_record_bytes,
                               after_seq=snap_seq, start=snap_pos)
        for _ in reader:
            pass
        errors = [d for d in reader.diagnostics if d.severity == "error"]
        for d in errors:
            if d.kind == "unsupported_version":
                raise UnsupportedVersion(d.message, path=d.path, offset=d.offset)
        if errors:
            raise CorruptRecord(
                "journal is damaged before its end; refusing to append "
                f"(run 'artiq-journal verify'): {errors[0]}", path=self.path)
        tears = [d for d in reader.diagnostics if d.kind == "unsynced_tail"]
        if tears:
            # Power loss while segments were syncing in the background: the
            # journal ends at the tear, and what follows it was never
            # acknowledged (FORMAT.md 8.6, 11).  The segments after it go
            # (their names first, durably; newest first), and so does a
            # segment whose header is the tear; a tear inside a segment is
            # then cut below like a torn tail.
            tear = tears[0]
            paths = [path for _, path in reader.segments]
            keep = paths.index(tear.path) + (0 if tear.offset == 0 else 1)
            for path in reversed(paths[keep:]):
                try:
                    self.ops.unlink(path)
                except OSError as exc:
                    raise JournalFailed(f"cannot remove unacknowledged "
                                        f"segment: {exc.strerror or exc}",
                                        path=path) from exc
            self._sync_dir(self.path)
            del reader.segments[keep:]
        self._seq = self._durable_seq = max(reader.last_trusted_seq, snap_seq)
        self._snapshot_seq = None if start is None else snap_seq
        if not reader.segments:
            # Numbered past the snapshot's position, which must not point
            # into the new segment's records.
            self._new_segment(1 if snap_pos is None else snap_pos.segment + 1)
            return
        number, seg_path = reader.segments[-1]
        if snap_pos is not None and snap_pos.segment > number:
            # The writer makes a segment's name durable before any snapshot
            # can point into it: this journal lost a segment.  Appending to
            # an earlier one would put records where the snapshot's position
            # makes readers skip them.
            raise CorruptRecord(
                f"the snapshot's position is in segment {snap_pos.segment}, "
                f"past the last segment ({number}); refusing to append",
                path=self.path)
        try:
            with open_regular_file(seg_path) as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(SEGMENT_HEADER_SIZE)
        except OSError as exc:
            raise JournalFailed(f"cannot reopen segment: {exc.strerror or exc}",
                                path=seg_path) from exc
        cut, holds_records = _intact_end(reader, number, seg_path, size,
                                         snap_pos)
        try:
            header = decode_segment_header(head)
        except ValueError:
            if holds_records:
                raise CorruptRecord("segment header is damaged but intact "
                                    "records follow it; refusing to append",
                                    path=seg_path, offset=0) from None
            # Empty, or a header that never reached the disk (zeros: the
            # size was made durable, the data not).  Nothing in it was
            # acknowledged (a segment's header is synced before any record
            # in it), so start it afresh.
            for _, earlier in reader.segments[:-2]:
                self._sync_previous_segment(earlier)
            prev_flagged = len(reader.segments) >= 2 and \
                self._sync_previous_segment(reader.segments[-2][1])
            try:
                self.ops.unlink(seg_path)
            except OSError as exc:
                raise JournalFailed(f"cannot remove torn segment: "
                                    f"{exc.strerror or exc}",
                                    path=seg_path) from exc
            self._new_segment(number)
            if prev_flagged:
                self._write_marker(reader.segments[-2][0], self._seq)
            return
        if cut > size:
            raise CorruptRecord(f"segment ends at {size}, before the "
                                f"snapshot's position {cut}; refusing to "
                                "append", path=seg_path, offset=size)
        # A writer that died between creating this segment and fsyncing the
        # directory left its name not yet durable; records this writer
        # acknowledges in it must not vanish with it on power loss.  (The
        # journal directory's own name: _ensure_dir.)
        self._sync_dir(self.path)
        try:
            fd = self.ops.open(seg_path, os.O_WRONLY | O_NOFOLLOW
                               | O_CLOEXEC)
            try:
                if size != cut:
                    # Cut the torn tail: those bytes were never acknowledged,
                    # and leaving them would read as corruption once records
                    # follow.
                    self.ops.ftruncate(fd, cut)
                # Even with nothing cut: a writer killed before it synced
                # left its last records only in the page cache, and they are
                # reported durable below (durable_seq).  A cut must also be
                # durable before records written after it are.  Earlier
                # segments were synced when the next one was created.
                self.ops.fsync(fd)
                os.lseek(fd, cut, os.SEEK_SET)
            except BaseException:
                self.ops.close(fd)
                raise
        except OSError as exc:
            raise JournalFailed(f"cannot reopen segment: {exc.strerror or exc}",
                                path=seg_path) from exc
        self._fd = fd
        self._segment = number
        self._offset = cut
        self._segment_flagged = bool(header.flags
                                     & SEGMENT_FLAG_BACKGROUND_SYNC)
        for _, earlier in reader.segments[:-2]:
            self._sync_previous_segment(earlier)
        if len(reader.segments) >= 2:
            prev_number, prev_path = reader.segments[-2]
            if self._sync_previous_segment(prev_path) and not _vouching(
                    seg_path, prev_number, self.max_record_bytes)[0]:
                # Its writer died before vouching for it; synced now, it is
                # vouched for before anything here is acknowledged.
                self._write_marker(prev_number, header.first_seq - 1)

    def _sync_previous_segment(self, seg_path: str) -> bool:
        """fdatasync segment ``seg_path``; return whether its header has
        the background sync flag (False if it is gone)."""
        # A writer that died (process crash) while the segment before the
        # last was still syncing in the background left it in the page
        # cache only; records acknowledged from now on come after it.
        try:
            fd = self.ops.open(seg_path, os.O_RDONLY | O_NOFOLLOW
                               | O_CLOEXEC)
        except FileNotFoundError:
            return False  # deleted by a snapshot: covered, nothing to sync
        except OSError as exc:
            raise JournalFailed(f"cannot open segment: {exc.strerror or exc}",
                                path=seg_path) from exc
        try:
            self.ops.fdatasync(fd)
            head = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
        except OSError as exc:
            raise JournalFailed(f"fdatasync failed: {exc.strerror or exc}",
                                path=seg_path) from exc
        finally:
            self.ops.close(fd)
        try:
            return bool(decode_segment_header(head).flags
                        & SEGMENT_FLAG_BACKGROUND_SYNC)
        except ValueError:
            return False

    def _new_segment(self, number: int, sync: bool = True) -> None:
        """Create segment ``number``.  ``sync`` False (a background
        rotation): its header and name are made durable by the background
        sync instead, before anything in it is acknowledged."""
        seg_path = os.path.join(self.path, segment_name(number))
        flags = SEGMENT_FLAG_BACKGROUND_SYNC if self._background_rotation \
            else 0
        try:
            fd = self.ops.open(seg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                               | O_NOFOLLOW | O_CLOEXEC, CREATE_MODE)
            self._fd = fd
            header = encode_segment_header(number, self._seq + 1, flags)
            self._write_all(fd, header)
            # The header and the file's name must be durable before any
            # record in it is acknowledged -- sync() and close() sync only
            # the current segment's data, and a lost name or a zero header
            # would take its records with it.  Inline unless the rotation
            # syncs in the background: on ext4 (data=ordered) this small
            # sync commits the journal, which first writes out the previous
            # segment's dirty data -- the very wait the background avoids.
            if sync:
                self.ops.fdatasync(fd)
                self.ops.fsync_dir(self.path)
        except OSError as exc:
            self._fail(exc, seg_path, "create segment")
        self._segment = number
        self._offset = SEGMENT_HEADER_SIZE
        self._segment_flagged = bool(flags)

    # -- appending ---------------------------------------------------------------

    def append(self, rtype: int, obj: Any) -> int:
        """Append one record; return its sequence number.

        The record is in the kernel when this returns (survives a process
        crash); with ``fsync="always"`` it is also durable.  Raises TypeError
        for values that cannot be journaled (nothing is written then),
        RecordTooLarge, and JournalFailed after any I/O error.
        """
        # No "broken?" test here: a failed or closed writer's _pack raises
        # the stored error (see _broken), so the fast path pays nothing.
        try:
            payload = self._pack(obj)
        except codec.LargeArray:
            if codec.nesting_depth(obj) > codec.MAX_NESTING:
                raise TypeError(f"cannot journal containers nested more "
                                f"than {codec.MAX_NESTING} levels deep")
            return self._append_parts(rtype, codec.pack_parts(obj))
        except ValueError as exc:
            # msgpack's own recursion limit: deeper than the reader takes.
            self._reset_packer()
            raise TypeError(f"cannot journal value: {exc}") from None
        except BaseException:
            self._reset_packer()
            raise
        if len(payload) > MAX_NESTING:
            codec.check_nesting(payload, obj)
        # The dataset hooks call append_encoded directly (the hot path).
        return self.append_encoded(rtype, payload)

    def append_encoded(self, rtype: int, payload: bytes) -> int:
        """:meth:`append` of a value already encoded: ``payload`` must be
        the exact bytes ``codec.pack(obj)`` gives (as returned by
        :func:`codec.encode_append` / :func:`codec.encode_mutate`, which
        never nest deeper than a tuple of tuples).  The dataset hooks' hot
        path: the packer and its ``default`` hook are skipped."""
        if self.__broken is not None:
            raise self.__broken
        length = len(payload)
        if length > self.max_record_bytes:
            raise RecordTooLarge(
                f"record of {length} bytes exceeds the maximum record size "
                f"{self.max_record_bytes}", path=self.path)
        # The body of _append_payload, inlined: this is the hot path, and a
        # call per record costs more than the exclusion (two stores and a
        # load; see _heartbeat).
        self._in_append = True
        try:
            if self._beating:
                self._wait_for_heartbeat()
            seq = self._seq + 1
            body = self._tail_pack(length, seq, rtype, 0, 0) + payload
            data = self._crc_pack(crc32(body)) + body
            try:
                written = self._write(self._fd, data)
                if written != len(data):
                    self._write_all(self._fd, memoryview(data)[written:])
            except OSError as exc:
                self._fail(exc, self._segment_path(), "write")
            self._seq = seq
            offset = self._offset = self._offset + len(data)
            if self._always:
                self._sync_appended(seq)
            if offset >= self.segment_bytes:
                self._rotate()
            return seq
        finally:
            self._in_append = False

    def _append_payload(self, rtype: int, payload: bytes, length: int) -> int:
        """Frame and write one packed record (inside the exclusion)."""
        seq = self._seq + 1
        body = self._tail_pack(length, seq, rtype, 0, 0) + payload
        data = self._crc_pack(crc32(body)) + body
        try:
            written = self._write(self._fd, data)
            if written != len(data):
                self._write_all(self._fd, memoryview(data)[written:])
        except OSError as exc:
            self._fail(exc, self._segment_path(), "write")
        self._seq = seq
        offset = self._offset = self._offset + len(data)
        if self._always:
            self._sync_appended(seq)
        if offset >= self.segment_bytes:
            self._rotate()
        return seq

    # -- points ------------------------------------------------------------------

    @property
    def in_point(self) -> bool:
        """True between :meth:`begin_point` and :meth:`end_point`."""
        return self._in_point

    def begin_point(self) -> int:
        """Start a point: the records appended until :meth:`end_point` are
        one unit.  Readers apply them only once the ``point_end`` record is
        read (a crash inside the point loses the whole point, never half of
        it).  Under ``fsync="always"`` the records of the point are not
        synced one by one: ``end_point`` syncs once, and only then is the
        point acknowledged.  Returns the ``point_begin`` record's seq.
        Points do not nest (ValueError)."""
        if self._in_point:
            raise ValueError("begin_point: a point is already open")
        # Not synced (under "always" either): nothing of the point is
        # acknowledged before its point_end is durable.
        self._always = False
        try:
            seq = self.append(REC_POINT_BEGIN, [])
        except BaseException:
            self._always = self.fsync_policy == "always"
            raise
        self._in_point = True
        return seq

    def end_point(self) -> int:
        """Commit the open point: append ``point_end`` and, under
        ``fsync="always"``, fdatasync once (then the whole point is
        durable).  Returns its seq."""
        if not self._in_point:
            raise ValueError("end_point: no point is open")
        self._in_point = False
        self._always = self.fsync_policy == "always"
        return self.append(REC_POINT_END, [])

    def _sync_appended(self, seq: int) -> None:
        self._datasync(self._fd)
        self._durable_seq = seq

    def _datasync(self, fd: int) -> None:
        """fdatasync the current segment ``fd``; fail-stop if that fails or
        if the file has no name left."""
        try:
            self.ops.fdatasync(fd)
            # fdatasync "succeeds" on a file whose last name is gone (the
            # journal directory was deleted mid-run), yet its records are on
            # no disk once it is closed: never acknowledge them as durable.
            deleted = os.fstat(fd).st_nlink == 0
        except OSError as exc:
            self._fail(exc, self._segment_path(), "fdatasync")
        if deleted:
            err = JournalFailed(
                f"journal file was deleted ({os.strerror(errno.ENOENT)}; "
                "journal directory removed?): records written to it are on "
                "no disk (journal stopped; nothing more will be appended)",
                path=self._segment_path())
            self._broken = err
            raise err

    def _append_parts(self, rtype: int, parts: list) -> int:
        """append() for a record holding large arrays: header and payload
        pieces go to the kernel with writev, the arrays straight from their
        own memory (no copy), the CRC computed over the pieces in order."""
        if self._broken is not None:
            raise self._broken
        length = sum(len(p) for p in parts)
        if length > self.max_record_bytes:
            raise RecordTooLarge(
                f"record of {length} bytes exceeds the maximum record size "
                f"{self.max_record_bytes}", path=self.path)
        self._in_append = True
        try:
            if self._beating:
                self._wait_for_heartbeat()
            return self._append_parts_locked(rtype, parts, length)
        finally:
            self._in_append = False

    def _append_parts_locked(self, rtype: int, parts: list,
                             length: int) -> int:
        if self._broken is not None:
            raise self._broken
        seq = self._seq + 1
        tail = self._tail_pack(length, seq, rtype, 0, 0)
        if length >= OVERLAP_CRC_MIN and can_overlap():
            self._write_overlapped(tail, parts)
        else:
            crc = crc32_parts(parts, crc32(tail))
            views = [memoryview(self._crc_pack(crc) + tail)]
            views.extend(memoryview(p) for p in parts)
            try:
                self._writev_all(self._fd, views)
            except OSError as exc:
                self._fail(exc, self._segment_path(), "write")
        # Counted (and so acknowledgeable: durable_seq, sync, "always")
        # only now that every byte of it, its CRC included, was written.
        self._seq = seq
        self._offset += RECORD_HEADER_SIZE + length
        if self._always:
            self._sync_appended(seq)
        if self._offset >= self.segment_bytes:
            self._rotate()
        return seq

    def _write_overlapped(self, tail: bytes, parts: list) -> None:
        """Write a large record while its CRC is computed (FORMAT.md
        section 11): the header with a zero CRC field and the payload
        first, the CRC computed meanwhile by the CRC threads, then the 4
        CRC bytes with pwrite at the record's offset.  Until they land the
        record is a torn last record (never acknowledged: the caller counts
        it only after this returns).  Anything going wrong from the first
        byte on stops the writer: the file holds a record the writer
        cannot count, so nothing may follow it."""
        record_offset = self._offset
        views = [memoryview(bytes(4) + tail)]
        views.extend(memoryview(p) for p in parts)
        crc = OverlappedCrc(parts, crc32(tail))
        try:
            try:
                self._writev_all(self._fd, views)
            except OSError as exc:
                self._fail(exc, self._segment_path(), "write")
            field = self._crc_pack(crc.result())
            try:
                self._pwrite_all(self._fd, field, record_offset)
            except OSError as exc:
                self._fail(exc, self._segment_path(), "write (record CRC)")
        except BaseException as exc:
            if self._broken is None:
                err = JournalFailed(
                    "append interrupted while its record was being written "
                    f"({type(exc).__name__}; journal stopped; nothing more "
                    "will be appended)", path=self._segment_path())
                err.__cause__ = exc
                self._broken = err
            raise

    def _pwrite_all(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = self.ops.pwrite(fd, view, offset)
            if n <= 0:
                raise OSError(28, "short write")
            view, offset = view[n:], offset + n

    def _writev_all(self, fd: int, views: list) -> None:
        # writev may stop short (signals, >2 GiB): resume after what went.
        while views:
            n = self.ops.writev(fd, views[:1024])
            if n <= 0:
                raise OSError(28, "short write")
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def _write_all(self, fd: int, data) -> None:
        view = memoryview(data)
        while view:
            n = self._write(fd, view)
            if n <= 0:
                raise OSError(28, "short write")
            view = view[n:]

    def _reset_packer(self) -> None:
        # A pack that raised half-way may leave bytes in the packer's buffer;
        # a fresh packer guarantees the next record is not prefixed by them.
        if self.__broken is None:
            self._pack = codec.make_packer(zero_copy=True).pack

    @property
    def _broken(self) -> JournalError | None:
        return self.__broken

    @_broken.setter
    def _broken(self, error: JournalError | None) -> None:
        # Once failed or closed, every append raises ``error``: swapping the
        # packer for a raiser keeps that test off the append fast path.
        self.__broken = error
        if error is not None:
            def refuse(obj: Any) -> bytes:
                raise error
            self._pack = refuse

    def _segment_path(self) -> str:
        return os.path.join(self.path, segment_name(self._segment))

    def _fail(self, exc: OSError, path: str, what: str) -> None:
        err = JournalFailed(f"{what} failed: {exc.strerror or exc} "
                            "(journal stopped; nothing more will be appended)",
                            path=path)
        err.__cause__ = exc
        self._broken = err
        raise err

    def _rotate(self) -> None:
        if self._closing and self._segment_flagged:
            # The close record stays the last record: no segment after it
            # (one would need a segment_synced record after the close).
            return
        with self._sync_lock:
            # Segments whose background sync returned are vouched for now
            # (in order); the oldest is waited for only when too many are
            # in flight.
            self._settle_locked(wait=False)
            while len(self._pendings) >= MAX_BACKGROUND_SYNCS:
                self._settle_one()
            old_fd = self._fd
            old_number, old_last = self._segment, self._seq
            old_flagged = self._segment_flagged
            background = self._background_rotation and self._segment_flagged
            if not background:
                # The old segment is made durable before the next one
                # exists, so sync()/close(), which sync only the current
                # segment, truly make everything durable.
                self._datasync(old_fd)
                self._durable_seq = self._seq
            # The descriptor is released even when close() reports an error
            # (a deferred write error, e.g. on NFS): forget it first, then
            # treat the error as the write failure it is.
            self._fd = None
            self._bytes_before_segment += self._offset
            if background:
                # fdatasync of a full segment takes ~75 ms; the caller goes
                # on writing into the next segment meanwhile.  Nothing
                # written after this point is acknowledged until this and
                # every earlier segment synced and a segment_synced record
                # says so (_settle_one).
                pending = _PendingSync(old_fd, self._segment, self._seq,
                                       self._segment_path())
                self._pendings.append(pending)
                self._new_segment(self._segment + 1, sync=False)
                pending.new_fd = self._fd
                pending.new_path = self._segment_path()
            else:
                if self._group_fd == old_fd:
                    # The group-commit thread is syncing it (outside the
                    # lock): its descriptor must outlive that call.
                    self._group_idle.wait()
                try:
                    self.ops.close(old_fd)
                except OSError as exc:
                    self._fail(exc, self._segment_path(), "close")
                self._new_segment(self._segment + 1)
            if background:
                threading.Thread(target=self._background_sync,
                                 args=(pending,), daemon=True,
                                 name=f"artiq-journal segment sync "
                                      f"{pending.path}").start()
            if old_flagged and not background:
                # A flagged segment synced inline is vouched for all the
                # same: readers cannot tell how it was rotated.
                self._write_marker(old_number, old_last)

    def _background_sync(self, pending: _PendingSync) -> None:
        # The previous segment first, then the new one's header (and the
        # records already behind it) and its name: by then the previous
        # segment's data is out, so these are cheap.  The new segment's
        # descriptor stays open until this is settled (the next rotation
        # and close settle first).
        path = pending.path
        try:
            self.ops.fdatasync(pending.fd)
            deleted = os.fstat(pending.fd).st_nlink == 0
            if not deleted:
                path = pending.new_path
                self.ops.fdatasync(pending.new_fd)
                self.ops.fsync_dir(self.path)
        except OSError as exc:
            err = JournalFailed(f"fdatasync failed: {exc.strerror or exc} "
                                "(journal stopped; nothing more will be "
                                "appended)", path=path)
            err.__cause__ = exc
        else:
            err = None if not deleted else JournalFailed(
                f"journal file was deleted ({os.strerror(errno.ENOENT)}; "
                "journal directory removed?): records written to it are on "
                "no disk (journal stopped; nothing more will be appended)",
                path=pending.path)
        if err is not None:
            pending.error = err
            if self._broken is None:
                self._broken = err  # fail-stop: the next append raises it
        pending.done.set()

    def _settle_locked(self, wait: bool = True) -> None:
        """Settle the segments synced in the background, oldest first:
        ``wait`` for each (else stop at the first still syncing).  Caller
        holds ``_sync_lock`` and excludes appends and heartbeats (settling
        appends)."""
        while self._pendings:
            if not wait and not self._pendings[0].done.is_set():
                return
            self._settle_one()

    def _settle_one(self) -> None:
        """Wait for the oldest background sync, close its segment and
        append its segment_synced record to the current segment."""
        pending = self._pendings[0]
        pending.done.wait()
        if self._group_fd == pending.fd:
            # The group-commit thread is still syncing this segment.
            self._group_idle.wait()
        del self._pendings[0]
        try:
            self.ops.close(pending.fd)
        except OSError as exc:
            if pending.error is None:
                self._fail(exc, pending.path, "close")
        if pending.error is not None:
            self._broken = pending.error
            raise pending.error
        if self._broken is not None:
            raise self._broken
        # Every earlier segment is settled: this one's records are durable.
        self._durable_seq = max(self._durable_seq, pending.last_seq)
        self._write_marker(pending.number, pending.last_seq)

    def _write_marker(self, number: int, last_seq: int) -> None:
        """Append segment_synced [number, last_seq] to the current segment.
        Written directly (no rotation from here: callers hold _sync_lock).
        Any acknowledgement after this comes from a sync of the current
        segment that covers this record: a reader finding no such record
        knows nothing after segment ``number`` was acknowledged (FORMAT.md
        section 8.6)."""
        seq = self._seq + 1
        data = encode_record(seq, REC_SEGMENT_SYNCED,
                             codec.pack([number, last_seq]))
        try:
            self._write_all(self._fd, data)
        except OSError as exc:
            self._fail(exc, self._segment_path(), "write")
        self._seq = seq
        self._offset += len(data)

    def _settle_from_thread(self) -> bool:
        """_settle_locked from the group-commit thread, inside the append
        exclusion.  Unlike a heartbeat it does not give up when an append
        is under way: it waits for that append to end (or for the
        appending thread to block on it), so durable_seq keeps moving also
        under back-to-back appends.  False: stopped or failed."""
        with self._beat_lock:
            self._beating = True
            try:
                # Dekker as in _heartbeat, plus _append_waiting: an appender
                # that read _beating True blocks on _beat_lock (held here).
                while self._in_append and not self._append_waiting:
                    if self._stop.is_set() or self._broken is not None:
                        return False
                    time.sleep(0.0002)
                if self._broken is not None or self._fd is None:
                    return False
                with self._sync_lock:
                    self._settle_locked(wait=False)
                return True
            except JournalError:
                return False
            finally:
                self._beating = False

    def _oldest_pending(self) -> _PendingSync | None:
        # Read without the lock (the appending thread may settle one
        # meanwhile): a stale answer only delays this tick's work.
        try:
            return self._pendings[0]
        except IndexError:
            return None

    # -- durability ----------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """Sequence number of the last appended record."""
        return self._seq

    @property
    def bytes_appended(self) -> int:
        """Bytes (headers included) written by this writer and the segments
        it continued; grows monotonically, for size-based policies."""
        return self._bytes_before_segment + self._offset

    @property
    def durable_seq(self) -> int:
        """Every record up to this sequence number survives power loss."""
        return self._durable_seq

    @property
    def failed(self) -> bool:
        return self._broken is not None and not isinstance(self._broken,
                                                           JournalClosed)

    def sync(self) -> int:
        """Make every appended record durable now; return durable_seq."""
        if self._broken is not None:
            raise self._broken
        if not self._pendings:
            with self._sync_lock:
                self._sync_locked(exclusive=False)
            if not self._pendings:
                return self._durable_seq
        # Settling appends a record: excluded from heartbeats like an
        # append (sync() is called by the appending thread).
        self._in_append = True
        try:
            if self._beating:
                self._wait_for_heartbeat()
            with self._sync_lock:
                self._sync_locked(exclusive=True)
        finally:
            self._in_append = False
        return self._durable_seq

    def _sync_locked(self, exclusive: bool = True) -> None:
        """Make everything appended durable (caller holds ``_sync_lock``).
        ``exclusive``: the caller excludes appends and heartbeats, so a
        segment still syncing in the background can be settled here;
        otherwise nothing is acknowledged until it is."""
        if self._pendings:
            if not exclusive:
                return
            self._settle_locked()
        target = self._seq
        if target <= self._durable_seq or self._fd is None:
            return
        # Earlier segments are synced and settled: this one is all that
        # can hold records not yet durable.  Not while the group thread
        # syncs it (outside the lock): of two concurrent fdatasyncs of one
        # file only one hears of a writeback error.
        self._group_idle.wait()
        if self._broken is not None:
            raise self._broken
        self._datasync(self._fd)
        self._durable_seq = target

    def _group_commit_loop(self) -> None:
        # Fixed-rate ticks, not "sleep interval after each sync": a record
        # appended just after a sync started is then durable within one
        # interval plus one sync, not interval plus two syncs.
        interval = self.group_interval
        clock = time.monotonic
        deadline = clock() + interval
        beat_every = self.heartbeat_interval
        next_beat = None if beat_every is None else clock() + beat_every
        while not self._stop.wait(max(0.0, deadline - clock())):
            deadline = max(deadline + interval, clock())
            if self._broken is not None:
                return
            # Heartbeat first, so this very tick makes it durable.
            if next_beat is not None and clock() >= next_beat:
                if self._heartbeat():
                    next_beat = clock() + beat_every
            oldest = self._oldest_pending()
            if oldest is not None:
                if oldest.done.is_set() and not self._settle_from_thread() \
                        and self._broken is not None:
                    return
                if self._pendings:
                    continue  # nothing is acknowledged before they settle
            try:
                self._group_sync()
            except JournalFailed:
                return  # the next append raises it

    def _group_sync(self) -> None:
        """The group-commit thread's sync of the current segment, outside
        ``_sync_lock``: a rotation (which takes the lock) does not wait for
        an fdatasync of a segment holding tens of MiB.  The segment's
        descriptor is not closed meanwhile (_settle_one waits for
        ``_group_idle``)."""
        with self._sync_lock:
            if self._pendings or self._fd is None \
                    or self._seq <= self._durable_seq:
                return
            target, fd, path = self._seq, self._fd, self._segment_path()
            self._group_fd = fd
            self._group_idle.clear()
        try:
            self.ops.fdatasync(fd)
            deleted = os.fstat(fd).st_nlink == 0
        except OSError as exc:
            self._fail(exc, path, "fdatasync")
        finally:
            self._group_fd = None
            self._group_idle.set()
        if deleted:
            err = JournalFailed(
                f"journal file was deleted ({os.strerror(errno.ENOENT)}; "
                "journal directory removed?): records written to it are on "
                "no disk (journal stopped; nothing more will be appended)",
                path=path)
            self._broken = err
            raise err
        with self._sync_lock:
            # Every segment before this one was settled when target was
            # read (no pending), and this one is synced up to target --
            # unless another fdatasync of the same file ran meanwhile (a
            # rotation's background sync): Linux reports a writeback error
            # to one caller only, so a success here proves nothing then,
            # and that sync's settling acknowledges these records.
            if self._broken is None and self._fd == fd \
                    and self._segment_path() == path \
                    and target > self._durable_seq:
                self._durable_seq = target

    def _heartbeat_loop(self) -> None:
        # fsync "always"/"never": a thread of its own that sleeps between
        # heartbeats (the group-commit thread does this under "group").
        wait = self.heartbeat_interval
        while not self._stop.wait(wait):
            if self._broken is not None:
                return
            wait = self.heartbeat_interval if self._heartbeat() \
                else _HEARTBEAT_RETRY

    def _heartbeat(self) -> bool:
        """Append one heartbeat record unless an append is under way (then
        return False: retry soon -- the appending thread is alive anyway).
        Never makes the appending thread wait longer than one heartbeat
        write.  A write failure is the writer's fail-stop: the next append
        raises it.

        Exclusion (Dekker's algorithm; sound because the GIL makes these
        attribute stores and loads sequentially consistent): each side sets
        its own flag, then reads the other's.  If the appender read
        ``_beating`` False, the heartbeat's read of ``_in_append`` comes
        later and sees True, so it backs off; if the heartbeat read
        ``_in_append`` False, the appender's read of ``_beating`` comes
        later and sees True, so it waits on ``_beat_lock``.
        """
        with self._beat_lock:
            self._beating = True
            try:
                if self._in_append:
                    return False
                if self._broken is not None or self._fd is None:
                    return True
                # A packer of its own: self._pack belongs to the appending
                # thread (msgpack packers keep a buffer).
                payload = codec.pack([time.time()])
                self._append_payload(REC_HEARTBEAT, payload, len(payload))
            except JournalError:
                pass
            finally:
                self._beating = False
        return True

    def _wait_for_heartbeat(self) -> None:
        # The heartbeat holds _beat_lock for as long as _beating is True.
        # _append_waiting tells _settle_from_thread this thread is blocked
        # here (not inside an append); it is cleared while the lock is held,
        # so the next holder never sees a stale True.
        self._append_waiting = True
        with self._beat_lock:
            self._append_waiting = False

    def _sync_dir(self, path: str) -> None:
        try:
            self.ops.fsync_dir(path)
        except OSError as exc:
            self._fail(exc, path, "directory fsync")

    # -- snapshots -------------------------------------------------------------------

    def write_snapshot(self, state: Any) -> int:
        """Durably record ``state`` as covering every record appended so far;
        return the sequence number it covers.

        Syncs the journal first, then rotates the checkpoint files atomically
        (see journal/snapshot.py), then deletes segments wholly covered by
        the *previous* snapshot, so a damaged newest snapshot can still fall
        back on ``checkpoint.old`` plus the records after it.
        """
        if self._broken is not None:
            raise self._broken
        # Excluding heartbeats: one appended between reading seq and the
        # position would make the snapshot's position skip a record its seq
        # does not cover (readers would then see a gap).
        self._in_append = True
        try:
            if self._beating:
                self._wait_for_heartbeat()
            return self._write_snapshot_locked(state)
        finally:
            self._in_append = False

    def _write_snapshot_locked(self, state: Any) -> int:
        if self._broken is not None:
            raise self._broken
        if self._in_point:
            # Its position would fall inside the point: a reader starting
            # there would apply the point's tail without its head.
            raise ValueError("write_snapshot inside an open point")
        with self._sync_lock:
            self._sync_locked(exclusive=True)
        seq = self._seq
        previous = self._snapshot_seq
        payload = {"position": [self._segment, self._offset], "state": state}
        try:
            snapshots.write_snapshot(self.path, seq, payload, ops=self.ops)
        except JournalFailed as exc:
            self._broken = exc
            raise
        self._snapshot_seq = seq
        if previous is not None:
            self._delete_covered_segments(previous)
        return seq

    def _delete_covered_segments(self, covered_seq: int) -> None:
        segs = list_segments(self.path)
        # Segment k is wholly covered when segment k+1 starts at or before
        # covered_seq + 1.  Never touch the segment being written.
        for (num, path), (_, next_path) in zip(segs, segs[1:]):
            if num >= self._segment:
                break
            try:
                with open_regular_file(next_path) as f:
                    next_first = decode_segment_header(
                        f.read(SEGMENT_HEADER_SIZE)).first_seq
            except (OSError, ValueError):
                break
            if next_first > covered_seq + 1:
                break
            try:
                self.ops.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                break  # harmless: the segment is merely kept
            # One at a time, oldest first, each durable before the next:
            # power loss never leaves a segment whose segment_synced record
            # (format 3, in a later segment) is gone while it stays.
            try:
                self.ops.fsync_dir(self.path)
            except OSError:
                break

    # -- closing ---------------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        """Append the clean-close record, make everything durable, release
        the lock.  Idempotent.  After a fail-stop this only releases."""
        if self._fd is None and self._lock is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if self._broken is None:
                # Settled before the close record (its segment_synced must
                # not follow the close), and the close record's own rotation
                # is inline.
                self._closing = True
                with self._sync_lock:
                    self._settle_locked()
                self.append(REC_CLOSE, [reason])
                with self._sync_lock:
                    self._sync_locked(exclusive=True)
        finally:
            self._abandon()
            if self._broken is None:
                self._broken = JournalClosed("journal is closed",
                                             path=self.path)

    def abandon(self) -> None:
        """Release resources without a clean-close record (tests, and giving
        up after a fail-stop): the journal is left orphaned for recovery."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._abandon()
        if self._broken is None:
            self._broken = JournalClosed("journal is closed", path=self.path)

    def _abandon(self) -> None:
        pendings, self._pendings = self._pendings, []
        for pending in pendings:
            # Its descriptor is closed only after the background fdatasync
            # returned (a number reused meanwhile would be synced instead).
            pending.done.wait()
            try:
                self.ops.close(pending.fd)
            except OSError:
                pass
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                self.ops.close(fd)
            except OSError:
                pass
        self._release_lock()
        _live_writers.discard(self)

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            try:
                lock.release()
            except OSError:
                pass

    def __enter__(self) -> "JournalWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
