"""Stream a journal's records in sequence order, turning damage into
diagnostics.

Guarantees (see docs/FORMAT.md, "Reading"):

* Never raises on any bytes on disk: every problem becomes a
  :class:`Diagnostic` in ``reader.diagnostics`` (I/O errors on the journal
  files included).
* Memory is bounded by one record (itself bounded by ``max_record_bytes``
  and by the bytes actually left in the file, so a corrupted length field
  never allocates more than the file holds).
* Damage followed by nothing valid is a *torn tail* (normal after a crash).
  Damage followed by a valid record is *corruption*; the reader scans
  forward for the next valid record so later data is not silently dropped.
  That scan has a budget (a few times the segment size in CRC work); if
  crafted garbage exhausts it, the rest of the segment is reported as
  damage -- never as a torn tail.
* A new last segment whose bytes are all zeros, header included, is a torn
  tail: a crash after its size reached the disk but before its data did.
* Each record carries ``trusted``: True while every sequence number from the
  start (or the snapshot) is present.  After a gap or an undecodable record
  later records are still yielded but untrusted; recovery leaves them out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import msgpack

from . import codec
from .constants import (DEFAULT_MAX_RECORD_BYTES, RECORD_HEADER,
                        RECORD_HEADER_SIZE, RECORD_TYPE_NAMES, REC_CLOSE,
                        REC_SEGMENT_SYNCED, SEGMENT_FLAG_BACKGROUND_SYNC,
                        SEGMENT_HEADER_SIZE)
from ..errors import NotRegularFile
from .framing import (crc32, decode_segment_header, parse_segment_name,
                      segment_name)
from .safefile import open_regular_file

_RESYNC_CHUNK = 1 << 20
_READ_BUFFER = 1 << 20
_BATCH = 256
#: CRC work allowed for finding intact records after damage, per segment:
#: this many times the bytes scanned, plus _RESYNC_BUDGET_EXTRA.  Any one
#: candidate costs at most the bytes left in the file, so an intact record
#: is always found behind a few false candidates; crafted garbage (each
#: plausible header claiming a payload up to the end of the file) would
#: otherwise cost time quadratic in the segment size.
_RESYNC_BUDGET_FACTOR = 4
_RESYNC_BUDGET_EXTRA = 64 * 1024
#: _resync's answer when the budget ran out before it found an intact record.
_GAVE_UP = -1


@dataclass
class Diagnostic:
    """One problem found while reading.  ``severity`` is ``"info"`` for a
    torn tail (expected after a crash) and ``"error"`` otherwise."""

    kind: str
    path: str
    offset: int | None
    message: str
    severity: str = "error"
    seq: int | None = None

    def __str__(self) -> str:
        where = self.path if self.offset is None else f"{self.path}:{self.offset}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "offset": self.offset,
                "message": self.message, "severity": self.severity,
                "seq": self.seq}


@dataclass
class Record:
    seq: int
    rtype: int
    payload: Any
    segment: str
    offset: int
    trusted: bool = True

    @property
    def type_name(self) -> str:
        return RECORD_TYPE_NAMES.get(self.rtype, f"type-{self.rtype}")


@dataclass
class Position:
    """Where a record ends: the next record starts at ``offset`` of segment
    number ``segment``."""

    segment: int
    offset: int


def list_segments(journal_dir: str) -> list[tuple[int, str]]:
    """(number, path) of every segment file, in numeric order."""
    found = []
    for name in os.listdir(journal_dir):
        number = parse_segment_name(name)
        if number is not None:
            found.append((number, os.path.join(journal_dir, name)))
    found.sort()
    return found


@dataclass
class JournalReader:
    """Iterate over ``JournalReader(path)`` to get :class:`Record` objects.

    ``after_seq``: skip records up to and including this sequence number
    (they are covered by a snapshot); ``start``: a :class:`Position` to start
    reading from (the one stored in the snapshot), tried before a full scan.
    With ``decode=False`` payloads stay raw bytes (CRC still checked).
    """

    path: str
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    decode: bool = True
    after_seq: int = 0
    start: Position | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    #: Last sequence number of an intact, contiguous record.
    last_trusted_seq: int = 0
    #: True when the last trusted record is a clean-close record.
    clean_close: bool = False
    records_read: int = 0
    damaged: bool = False
    segments: list[tuple[int, str]] = field(default_factory=list)
    _end_segment: int | None = None
    _end_offset: int = 0

    @property
    def end(self) -> Position | None:
        """Where the last trusted record ends (for the writer's torn-tail
        cut), or None if no record was trusted."""
        if self._end_segment is None:
            return None
        return Position(self._end_segment, self._end_offset)

    def __iter__(self) -> Iterator[Record]:
        for batch in self._batches():
            for fields in batch:
                yield Record(*fields)

    def iter_raw(self) -> Iterator[tuple]:
        """Like iterating the reader, but each record is a plain tuple
        ``(seq, rtype, payload, segment_name, offset, trusted)`` -- for
        replay loops over millions of records."""
        for batch in self._batches():
            yield from batch

    def iter_batches(self) -> Iterator[list[tuple]]:
        """The records of :meth:`iter_raw` in lists (one generator hop per
        list, not per record)."""
        return self._batches()

    def _batches(self) -> Iterator[list[tuple]]:
        self.last_trusted_seq = self.after_seq
        self._unpack = codec.make_unpack(self.max_record_bytes)
        try:
            self.segments = list_segments(self.path)
        except OSError as exc:
            self._diag("unreadable", self.path, None,
                       f"cannot list journal directory: {exc.strerror or exc}")
            return
        if not self.segments:
            self._diag("no_segments", self.path, None,
                       "journal has no segment files", severity="info")
            return
        segments = self.segments
        first_offset = None
        if self.start is not None:
            picked = [s for s in segments if s[0] >= self.start.segment]
            if picked and picked[0][0] == self.start.segment:
                segments, first_offset = picked, self.start.offset
            elif segments[-1][0] < self.start.segment:
                self._diag("snapshot_ahead", self.path, None,
                           f"the snapshot's position is in segment "
                           f"{self.start.segment}, past the last segment "
                           f"({segments[-1][0]}): segments are missing; "
                           "reading all segments")
        self._trusting = True
        self._next_seq = self.after_seq + 1
        self._rescan = False
        self._ended = False
        self._unsettled = None
        self._markers: dict = {}
        last_index = len(segments) - 1
        for i, (number, seg_path) in enumerate(segments):
            yield from self._read_segment(
                number, seg_path, i == last_index,
                first_offset if i == 0 else None)
            if self._rescan or self._ended:
                break
        if self._rescan:
            self._trusting = True
            self._next_seq = self.after_seq + 1
            self._ended = False
            self._unsettled = None
            last_index = len(self.segments) - 1
            for i, (number, seg_path) in enumerate(self.segments):
                yield from self._read_segment(number, seg_path,
                                              i == last_index, None)
                if self._ended:
                    break

    # -- helpers -------------------------------------------------------------

    def _diag(self, kind, path, offset, message, severity="error", seq=None):
        if severity == "error":
            self.damaged = True
        self.diagnostics.append(Diagnostic(kind, os.fspath(path), offset,
                                           message, severity, seq))

    def _read_segment(self, number, seg_path, is_last, start_offset):
        name = os.path.basename(seg_path)
        # 8.6: the segment just before, if it had the background sync flag
        # (applies to this segment only).
        unsettled, self._unsettled = self._unsettled, None
        try:
            f = open_regular_file(seg_path, buffering=_READ_BUFFER)
        except NotRegularFile as exc:
            self._diag("not_regular", seg_path, None, exc.reason)
            self._trusting = False
            return
        except OSError as exc:
            self._diag("unreadable", seg_path, None,
                       f"cannot open segment: {exc.strerror or exc}")
            self._trusting = False
            return
        with f:
            try:
                size = os.fstat(f.fileno()).st_size
                if start_offset is not None:
                    # The snapshot's position is checked before anything
                    # else in its segment: a segment cut below it (even
                    # below its header) lost records the snapshot saw.
                    if not self._position_ok(f, seg_path, start_offset,
                                             size):
                        self._rescan = True
                        return
                    f.seek(0)
                head = f.read(SEGMENT_HEADER_SIZE)
                try:
                    header = decode_segment_header(head)
                except ValueError as exc:
                    kind = ("unsupported_version"
                            if str(exc).startswith("unsupported") else
                            "bad_segment_header")
                    if is_last and len(head) < SEGMENT_HEADER_SIZE:
                        # Created but header never written: crash right
                        # after creation.  Nothing was acknowledged in it.
                        self._diag("torn_tail", seg_path, 0,
                                   "empty segment (crash during creation)",
                                   severity="info")
                        return
                    if is_last and not any(head) and _zeros_to_end(f):
                        # The file's size reached the disk but none of its
                        # data did (XFS/ext4 delayed allocation after power
                        # loss).  The header is synced before any record
                        # in a segment, so nothing in it was acknowledged.
                        self._diag("torn_tail", seg_path, 0,
                                   f"segment of {size} zero bytes (crash "
                                   "before its header reached the disk)",
                                   severity="info")
                        return
                    if kind != "unsupported_version" and \
                            unsettled is not None and \
                            self._unsynced_tear(unsettled[0], seg_path, 0):
                        # Its header never reached the disk: the segment
                        # before was still syncing in the background (8.6).
                        return
                    self._diag(kind, seg_path, 0, str(exc))
                    if kind == "unsupported_version":
                        # Records of a newer format may mean something else:
                        # read none of them.
                        self._trusting = False
                        return
                    # A damaged segment header loses no record by itself;
                    # sequence continuity decides what is trusted.
                    header = None
                if header is not None and unsettled is not None \
                        and header.first_seq > self._next_seq \
                        and self._unsynced_tear(*unsettled):
                    # The segment before ended early: its last records never
                    # reached the disk (8.6).
                    return
                if header is not None and not is_last \
                        and header.flags & SEGMENT_FLAG_BACKGROUND_SYNC:
                    # May have been left unsynced behind the next segment.
                    self._unsettled = (number, seg_path, size)
                if header is not None and header.number != number:
                    self._diag("bad_segment_header", seg_path, 0,
                               f"segment header says number {header.number}, "
                               f"file name says {number}")
                if header is not None and header.first_seq > self._next_seq:
                    self._diag("gap", seg_path, 16,
                               f"sequence gap: segment starts at seq "
                               f"{header.first_seq}, expected "
                               f"{self._next_seq}; records "
                               f"{self._next_seq}..{header.first_seq - 1} "
                               "are missing, later records are not trusted",
                               seq=header.first_seq)
                    self._trusting = False
                    self._next_seq = header.first_seq
                offset = SEGMENT_HEADER_SIZE
                if start_offset is not None:
                    offset = start_offset
                self._resync_budget = (_RESYNC_BUDGET_FACTOR
                                       * max(size - offset, 0)
                                       + _RESYNC_BUDGET_EXTRA)
                yield from self._scan(f, name, seg_path, size, offset, number,
                                      is_last)
            except OSError as exc:
                self._diag("unreadable", seg_path, None,
                           f"I/O error reading segment: {exc.strerror or exc}")
                self._trusting = False

    def _scan(self, f, name, seg_path, size, offset, number, is_last):
        # Records are parsed out of large chunks (one read per ~1 MiB, not
        # two per record) and handed out in batches (one generator hop per
        # batch, not per record); the common case -- the next trusted record
        # -- is handled inline, everything else by _accept.
        read = f.read
        hsize = RECORD_HEADER_SIZE
        unpack_header = RECORD_HEADER.unpack_from
        limit = self.max_record_bytes
        decode = self.decode
        unpackb = msgpack.unpackb
        ext_hook = codec._Decoder(self.max_record_bytes)
        could_hold_timestamp = codec._could_hold_timestamp
        nesting_exceeded = codec.nesting_exceeded
        max_nesting = codec.MAX_NESTING
        f.seek(offset)
        out: list[Record] = []
        append = out.append
        # Fast-path state lives in locals and is committed to self (by
        # _commit) before any slow path and before each batch is handed out.
        next_seq = self._next_seq
        trusting = self._trusting
        n_fast = 0
        last_rtype = end_off = None
        buf = b""
        base = offset  # file offset of buf[0]
        pos = 0
        while base + pos < size:
            if trusting and decode:
                # The common case, as tight as it goes: the next trusted
                # record, whole in ``buf``, intact, decodable.  Anything
                # else (including a refill) leaves this loop and is handled
                # for that one record by the general path below.
                first_seq = next_seq
                stop = min(len(buf), size - base)
                while True:
                    hend = pos + hsize
                    if hend > stop:
                        break
                    crc, length, seq, rtype, flags, reserved = \
                        unpack_header(buf, pos)
                    end = hend + length
                    if end > stop or seq != next_seq or length > limit \
                            or flags or reserved:
                        break
                    payload = buf[hend:end]
                    if crc32(payload, crc32(buf[pos + 4:hend])) != crc \
                            or 255 in payload and could_hold_timestamp(payload):
                        break
                    try:
                        # Inline msgpack call: its default limits (the
                        # payload's own length) bound every allocation.
                        # Timestamps (ext -1, decoded by msgpack itself)
                        # and deep nesting are left to the strict path.
                        value = unpackb(payload, ext_hook=ext_hook,
                                        raw=False, strict_map_key=False)
                    except Exception:
                        break
                    if length > max_nesting and \
                            nesting_exceeded(payload, value):
                        break
                    payload = value
                    append((seq, rtype, payload, name, base + pos, True))
                    next_seq = seq + 1
                    pos = end
                    if len(out) >= _BATCH:
                        n_fast += next_seq - first_seq
                        first_seq = next_seq
                        self._commit(next_seq, n_fast, rtype, number,
                                     base + pos)
                        n_fast = 0
                        yield out
                        out = []
                        append = out.append
                if next_seq != first_seq:
                    n_fast += next_seq - first_seq
                    last_rtype = out[-1][1]
                    end_off = base + pos
                if base + pos >= size:
                    break
            if len(buf) - pos < hsize:
                buf = buf[pos:] + read(_READ_BUFFER)
                base += pos
                pos = 0
            offset = base + pos
            problem = None
            if len(buf) - pos < hsize:
                problem = "incomplete record header"
            else:
                crc, length, seq, rtype, flags, reserved = \
                    unpack_header(buf, pos)
                end = pos + hsize + length
                if length > limit:
                    problem = (f"record length {length} exceeds the maximum "
                               f"{limit}")
                elif offset + hsize + length > size:
                    problem = (f"record length {length} runs past the end of "
                               f"the file ({size - offset - hsize} bytes left)")
                else:
                    if end > len(buf):
                        # Bounded: length <= limit and <= what the file holds.
                        buf = buf[pos:] + read(max(end - len(buf),
                                                   _READ_BUFFER))
                        base += pos
                        end -= pos
                        pos = 0
                    payload = buf[pos + hsize:end]
                    if len(payload) != length:
                        problem = "record cut short (file shrank while read)"
                    elif crc32(payload,
                               crc32(buf[pos + 4:pos + hsize])) != crc:
                        problem = f"record CRC mismatch (seq {seq})"
                    elif flags or reserved:
                        problem = f"unknown record flags (seq {seq})"
            if problem is not None:
                if n_fast:
                    self._commit(next_seq, n_fast, last_rtype, number, end_off)
                    n_fast = 0
                if self._unsettled is not None and \
                        self._unsettled[0] == number and \
                        self._unsynced_tear(number, seg_path, offset):
                    break
                if problem.startswith(("record CRC", "unknown record flags")):
                    # That CRC ran over damaged bytes: it counts against
                    # the budget, or one bogus header per few bytes would
                    # cost a CRC over the rest of the file each.
                    self._resync_budget -= hsize + length
                resume_at = self._resync(f, offset + 1, size)
                if resume_at == _GAVE_UP:
                    self._diag("corrupt", seg_path, offset,
                               f"{problem}; resync gave up (crafted or "
                               "pathological data: the search for the next "
                               "intact record exceeded its budget); "
                               f"{size - offset} bytes up to the end of this "
                               "segment not read")
                    break
                if resume_at is None:
                    if is_last:
                        self._diag("torn_tail", seg_path, offset,
                                   f"torn tail: {problem}; "
                                   f"{size - offset} trailing bytes ignored",
                                   severity="info")
                    else:
                        self._diag("trailing_garbage", seg_path, offset,
                                   f"{problem}; {size - offset} bytes up to "
                                   "the end of this segment ignored")
                    break
                self._diag("corrupt", seg_path, offset,
                           f"{problem}; skipped {resume_at - offset} damaged "
                           f"bytes, resuming at offset {resume_at}")
                f.seek(resume_at)
                buf, base, pos = b"", resume_at, 0
                continue
            pos = end
            if seq == next_seq and trusting:
                decoded = True
                if decode:
                    # As in the fast loop above; a payload this cannot
                    # decode takes the strict path below.
                    try:
                        if 255 in payload and could_hold_timestamp(payload):
                            raise ValueError("may hold a timestamp")
                        value = unpackb(payload, ext_hook=ext_hook,
                                        strict_map_key=False)
                        if length > max_nesting and \
                                nesting_exceeded(payload, value):
                            raise ValueError("nested too deep")
                        payload = value
                    except Exception:
                        decoded = False
                if decoded:
                    next_seq = seq + 1
                    n_fast += 1
                    last_rtype = rtype
                    end_off = base + end
                    append((seq, rtype, payload, name, offset, True))
                    if len(out) >= _BATCH:
                        self._commit(next_seq, n_fast, last_rtype, number,
                                     end_off)
                        n_fast = 0
                        yield out
                        out = []
                        append = out.append
                    continue
            if n_fast:
                self._commit(next_seq, n_fast, last_rtype, number, end_off)
                n_fast = 0
            record = self._accept(seq, rtype, payload, name, seg_path, offset)
            next_seq, trusting = self._next_seq, self._trusting
            if record is not None:
                if record[5]:
                    self._end_segment = number
                    self._end_offset = base + end
                append(record)
        if n_fast:
            self._commit(next_seq, n_fast, last_rtype, number, end_off)
        if out:
            yield out

    def _unsynced_tear(self, number, seg_path, offset):
        """Damage at ``offset`` of segment ``number`` (flagged, just before
        the last segment), or its early end: a power-loss tear unless the
        last segment vouches for it (FORMAT.md 8.6).  If it is one, report
        it, end the journal here and return True."""
        self._unsettled = None
        later = [p for n, p in self.segments if n > number]
        markers = self._markers
        for p in later:
            if p not in markers:    # each file searched once per read
                markers[p] = _max_marker(p)
            if markers[p] >= number:
                return False
        count = sum(_intact_count(p, self.max_record_bytes) for p in later)
        self._diag("unsynced_tail", seg_path, offset,
                   f"segment {number} was never reported synced (power loss "
                   "while it was syncing in the background) and the journal "
                   f"is torn here: nothing after this was acknowledged; "
                   f"{count} intact records of later segments are not "
                   "applied", severity="warning")
        self._ended = True
        return True

    def _commit(self, next_seq, n_fast, last_rtype, number, end_off):
        self._next_seq = next_seq
        self.records_read += n_fast
        self.last_trusted_seq = next_seq - 1
        self.clean_close = last_rtype == REC_CLOSE
        self._end_segment = number
        self._end_offset = end_off

    def _position_ok(self, f, seg_path, offset, size):
        problem = position_problem(f, size, offset, self.after_seq,
                                   self.max_record_bytes)
        if problem is None:
            return True
        self._diag("snapshot_ahead", seg_path, offset,
                   problem + "; reading all segments")
        return False

    def _accept(self, seq, rtype, payload, name, seg_path, offset):
        if seq < self._next_seq:
            if seq > self.after_seq:
                self._diag("duplicate", seg_path, offset,
                           f"record seq {seq} repeats an earlier sequence "
                           f"number (expected {self._next_seq}); ignored",
                           seq=seq)
            return None
        if seq > self._next_seq:
            self._diag("gap", seg_path, offset,
                       f"sequence gap: expected seq {self._next_seq}, found "
                       f"{seq}; records {self._next_seq}..{seq - 1} are "
                       "missing, later records are not trusted", seq=seq)
            self._trusting = False
        self._next_seq = seq + 1
        if self.decode:
            try:
                payload = self._unpack(payload)
            except ValueError as exc:
                self._diag("bad_payload", seg_path, offset,
                           f"record payload cannot be decoded (seq {seq}): "
                           f"{exc}; later records are not trusted", seq=seq)
                self._trusting = False
                return None
        self.records_read += 1
        trusted = self._trusting
        if trusted:
            self.last_trusted_seq = seq
            self.clean_close = rtype == REC_CLOSE
        return (seq, rtype, payload, name, offset, trusted)

    def _resync(self, f, start, size):
        """Offset of the next intact record at or after ``start``, None if
        there is none, or _GAVE_UP when ``self._resync_budget`` (bytes of
        CRC work left for this segment) ran out first.

        A candidate must have a plausible header (sequence number above what
        we have seen, no flags, length inside the file) before its CRC is
        computed, so scanning garbage costs little.
        """
        hsize = RECORD_HEADER_SIZE
        unpack_header = RECORD_HEADER.unpack_from
        limit = self.max_record_bytes
        min_seq = self._next_seq
        pos = start
        while pos + hsize <= size:
            f.seek(pos)
            chunk = f.read(min(_RESYNC_CHUNK + hsize, size - pos))
            last = len(chunk) - hsize
            for i in range(0, last + 1):
                crc, length, seq, rtype, flags, reserved = \
                    unpack_header(chunk, i)
                if flags or reserved or seq < min_seq or length > limit \
                        or pos + i + hsize + length > size \
                        or seq > min_seq + size:
                    continue
                cost = hsize - 4 + length
                if cost > self._resync_budget:
                    return _GAVE_UP
                self._resync_budget -= cost
                if i + hsize + length <= len(chunk):
                    payload = chunk[i + hsize:i + hsize + length]
                else:
                    f.seek(pos + i + hsize)
                    payload = f.read(length)
                if crc32(payload, crc32(chunk[i + 4:i + hsize])) == crc:
                    return pos + i
            pos += last + 1
        return None


def position_problem(f, size: int, offset: int, after_seq: int,
                     max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
                     ) -> str | None:
    """Why the snapshot position ``offset`` of a segment (open as ``f``, of
    ``size`` bytes) cannot be where record ``after_seq + 1`` starts, or
    None when it can.  Anything else means the segment is not what the
    snapshot saw: damage, reported as ``snapshot_ahead`` (records after the
    snapshot may be lost)."""
    if offset < SEGMENT_HEADER_SIZE:
        return (f"the snapshot's position {offset} is inside the segment "
                "header")
    if offset > size:
        return (f"the snapshot's position {offset} is past the end of the "
                f"segment ({size} bytes): the segment lost data the "
                f"snapshot had seen; records after seq {after_seq} may be "
                "lost")
    if offset + RECORD_HEADER_SIZE > size:
        return None
    # Only an intact record proves the position wrong: bytes that never
    # reached the disk (zeros after power loss, a torn record) are the
    # scan's business, reported as it reports them.
    f.seek(offset)
    head = f.read(RECORD_HEADER_SIZE)
    crc, length, seq, _rtype, flags, reserved = RECORD_HEADER.unpack(head)
    if flags or reserved or seq == after_seq + 1 or length > min(
            max_record_bytes, size - offset - RECORD_HEADER_SIZE):
        return None
    payload = f.read(length)
    if crc32(payload, crc32(head[4:])) != crc:
        return None
    return (f"the snapshot's position {offset} holds seq {seq}, not seq "
            f"{after_seq + 1}")


def check_position(journal_dir: str, position: Position, after_seq: int
                   ) -> Diagnostic | None:
    """The ``snapshot_ahead`` diagnostic for a snapshot whose position does
    not fit the journal's segments, or None (also when the segment is gone:
    then readers scan from the first segment anyway)."""
    seg_path = os.path.join(journal_dir, segment_name(position.segment))
    try:
        segments = list_segments(journal_dir)
        with open_regular_file(seg_path) as f:
            size = os.fstat(f.fileno()).st_size
            problem = position_problem(f, size, position.offset, after_seq)
    except FileNotFoundError:
        if segments and segments[-1][0] < position.segment:
            return Diagnostic(
                "snapshot_ahead", journal_dir, None,
                f"the snapshot's position is in segment {position.segment},"
                f" past the last segment ({segments[-1][0]}): segments are "
                "missing")
        return None
    except (OSError, NotRegularFile):
        return None  # the reader reports what is wrong with the file
    if problem is None:
        return None
    return Diagnostic("snapshot_ahead", seg_path, position.offset, problem)


def _vouching(path: str, number: int, max_record_bytes: int
              ) -> tuple[bool, int]:
    """(whether segment file ``path`` holds an intact segment_synced
    record for segment ``number`` or a later one, how many intact records
    it holds from offset 32 up to the first that is not intact)."""
    return _max_marker(path) >= number, _intact_count(path, max_record_bytes)


#: Bytes 16..19 of a segment_synced record's header: type, flags, reserved.
_MARKER_TAG = bytes([REC_SEGMENT_SYNCED, 0, 0, 0])
#: A segment_synced payload ``[number, last_seq]`` is at most this long.
_MARKER_MAX_PAYLOAD = 64
_MARKER_CHUNK = 1 << 20


def _max_marker(path: str) -> int:
    """The highest segment number an intact segment_synced record in the
    file ``path`` names, -1 if none.  Found by its header's fixed bytes
    anywhere past the segment header, damage or not: one record vouches
    for its segment and (settled in order) every one before it, wherever
    it is (FORMAT.md 8.6)."""
    best = -1
    try:
        f = open_regular_file(path)
    except (OSError, NotRegularFile):
        return best
    keep = RECORD_HEADER_SIZE + _MARKER_MAX_PAYLOAD
    with f:
        try:
            base = SEGMENT_HEADER_SIZE
            f.seek(base)
            data = f.read(_MARKER_CHUNK)
            while len(data) >= RECORD_HEADER_SIZE:
                hit = data.find(_MARKER_TAG, 16)
                while hit >= 0:
                    found = _marker_at(data, hit - 16)
                    if found is not None and found > best:
                        best = found
                    hit = data.find(_MARKER_TAG, hit + 1)
                more = f.read(_MARKER_CHUNK)
                if not more:
                    break
                # Records cut by the chunk's end are looked at again whole.
                cut = max(len(data) - keep, 0)
                base += cut
                data = data[cut:] + more
        except OSError:
            pass
    return best


def _marker_at(data: bytes, pos: int) -> int | None:
    crc, length, _seq, _rtype, _flags, _res = RECORD_HEADER.unpack_from(
        data, pos)
    end = pos + RECORD_HEADER_SIZE + length
    if length > _MARKER_MAX_PAYLOAD or end > len(data):
        return None
    payload = data[pos + RECORD_HEADER_SIZE:end]
    if crc32(payload, crc32(data[pos + 4:pos + RECORD_HEADER_SIZE])) != crc:
        return None
    try:
        value = msgpack.unpackb(payload, raw=False)
    except Exception:  # noqa: BLE001 -- any bad payload
        return None
    if type(value) is list and value and type(value[0]) is int:
        return value[0]
    return None


def _intact_count(path: str, max_record_bytes: int) -> int:
    """Intact records of segment file ``path`` from offset 32 up to the
    first that is not (its header not checked)."""
    count = 0
    try:
        f = open_regular_file(path)
    except (OSError, NotRegularFile):
        return 0
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            offset = SEGMENT_HEADER_SIZE
            f.seek(offset)
            while offset + RECORD_HEADER_SIZE <= size:
                head = f.read(RECORD_HEADER_SIZE)
                crc, length, seq, rtype, flags, reserved = \
                    RECORD_HEADER.unpack(head)
                if length > max_record_bytes or \
                        offset + RECORD_HEADER_SIZE + length > size:
                    break
                payload = f.read(length)
                if len(payload) != length or flags or reserved or \
                        crc32(payload, crc32(head[4:])) != crc:
                    break
                count += 1
                offset += RECORD_HEADER_SIZE + length
        except OSError:
            pass
    return count


def _zeros_to_end(f) -> bool:
    """True if every byte from the current position of ``f`` to its end is
    zero."""
    while True:
        chunk = f.read(_READ_BUFFER)
        if not chunk:
            return True
        if chunk.count(0) != len(chunk):
            return False


def read_all(path: str, **kwargs) -> tuple[list[Record], JournalReader]:
    """Convenience: every record plus the reader (for its diagnostics)."""
    reader = JournalReader(path, **kwargs)
    return list(reader), reader


__all__ = ["Diagnostic", "Record", "Position", "JournalReader", "read_all",
           "list_segments", "segment_name"]
