"""Cheap looks at a journal: the records at the start of its first segment
and at the end of its last, without reading what lies between.

For monitoring (``artiq-journal ls`` / ``status``) over trees of large
journals: a few KiB per journal instead of a full read.  What it returns is
a *view*, never a basis for recovery: a record counts only if its header and
CRC check, and a window that starts mid-record is resynchronised on the
first position from which intact records follow one another (consecutive
sequence numbers) up to the end of the window.  Never raises on any bytes;
what cannot be seen is None.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

from . import codec
from .constants import (RECORD_HEADER, RECORD_HEADER_SIZE, RECORD_TYPE_NAMES,
                        SEGMENT_HEADER_SIZE, SNAPSHOT_HEADER,
                        SNAPSHOT_HEADER_SIZE, SNAPSHOT_MAGIC, SNAPSHOT_NAME)
from ..errors import NotRegularFile
from .framing import crc32, decode_segment_header
from .reader import list_segments
from .safefile import open_regular_file

#: Bytes read at each end by default.
DEFAULT_WINDOW = 64 * 1024
#: CRC work allowed while resynchronising, as a multiple of the window.
_RESYNC_BUDGET = 4


@dataclass
class TailRecord:
    seq: int
    rtype: int
    #: Decoded payload; None when it did not decode (or was not decoded).
    payload: Any
    offset: int
    size: int

    @property
    def type_name(self) -> str:
        return RECORD_TYPE_NAMES.get(self.rtype, f"type-{self.rtype}")


@dataclass
class JournalView:
    """What :func:`look` saw."""

    path: str
    segments: int = 0
    #: Bytes in segment and checkpoint files.
    size: int = 0
    #: Newest modification time of a segment file (last write), Unix s.
    last_write: float | None = None
    #: Records at the start of the first segment (run info, early stages).
    head: list[TailRecord] = field(default_factory=list)
    #: The last records of the last segment, oldest first.
    tail: list[TailRecord] = field(default_factory=list)
    #: The tail window ends in bytes that are no intact record (a record
    #: being written, or a torn tail).
    torn_tail: bool = False
    #: Intact records follow bytes that are none inside the tail window:
    #: damage (a full read says more).
    damage_seen: bool = False
    #: Seq covered by the ``checkpoint`` file (header only, CRC unchecked).
    snapshot_seq: int | None = None

    @property
    def last_seq(self) -> int | None:
        if self.tail:
            return self.tail[-1].seq
        return self.head[-1].seq if self.head else None

    def records(self) -> list[TailRecord]:
        """Head and tail records, each once, in seq order."""
        seen = {r.seq: r for r in self.head}
        seen.update((r.seq, r) for r in self.tail)
        return [seen[s] for s in sorted(seen)]


def _intact_at(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(seq, rtype, end) of an intact record at ``pos`` of ``data``."""
    if pos + RECORD_HEADER_SIZE > len(data):
        return None
    crc, length, seq, rtype, flags, reserved = \
        RECORD_HEADER.unpack_from(data, pos)
    end = pos + RECORD_HEADER_SIZE + length
    if flags or reserved or end > len(data) or rtype == 0:
        return None
    if crc32(data[pos + RECORD_HEADER_SIZE:end],
             crc32(data[pos + 4:pos + RECORD_HEADER_SIZE])) != crc:
        return None
    return seq, rtype, end


def _chain(data: bytes, pos: int, base: int) -> tuple[list[TailRecord], bool]:
    """Intact records with consecutive seqs from ``pos``; and whether bytes
    that are no record follow them."""
    out: list[TailRecord] = []
    while pos < len(data):
        found = _intact_at(data, pos)
        if found is None or (out and found[0] != out[-1].seq + 1):
            return out, True
        seq, rtype, end = found
        out.append(TailRecord(seq, rtype, None, base + pos, end - pos))
        pos = end
    return out, False


def _decode(records: list[TailRecord], data: bytes, base: int,
            decode: Callable[[bytes], Any] = codec.unpack) -> None:
    for r in records:
        start = r.offset - base + RECORD_HEADER_SIZE
        try:
            r.payload = decode(data[start:r.offset - base + r.size])
        except Exception:
            r.payload = None


def _read(path: str, start: int, size: int) -> bytes:
    # Never through a symlink, never blocking on a FIFO (section 3 of
    # FORMAT.md): NotRegularFile is reported as an OSError here.
    try:
        f = open_regular_file(path)
    except NotRegularFile as exc:
        raise OSError(str(exc)) from None
    with f:
        f.seek(start)
        return f.read(size)


def _size(path: str) -> int:
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path}: not a regular file")
    return st.st_size


def read_head(seg_path: str, window: int = DEFAULT_WINDOW
              ) -> list[TailRecord]:
    """The intact records at the start of a segment (within ``window``)."""
    try:
        data = _read(seg_path, 0, window)
        decode_segment_header(data[:SEGMENT_HEADER_SIZE])
    except (OSError, ValueError):
        return []
    records, _ = _chain(data, SEGMENT_HEADER_SIZE, 0)
    _decode(records, data, 0)
    return records


def _resync(data: bytes, start: int, base: int
            ) -> tuple[list[TailRecord], bool] | None:
    """The first chain of intact records at or after ``start`` that runs to
    the end of ``data`` (or to bytes that are no record: a record being
    written); None if there is none within the CRC budget."""
    budget = _RESYNC_BUDGET * len(data) + 4096
    for pos in range(start, len(data) - RECORD_HEADER_SIZE + 1):
        if budget <= 0:
            return None
        crc, length, _, rtype, flags, reserved = \
            RECORD_HEADER.unpack_from(data, pos)
        if flags or reserved or rtype == 0 \
                or pos + RECORD_HEADER_SIZE + length > len(data):
            continue
        budget -= RECORD_HEADER_SIZE + length
        chain, torn = _chain(data, pos, base)
        # From a true boundary, intact records run on to the end (or to a
        # record being written); a false start inside a payload almost
        # never does.
        if chain and (not torn or _intact_at(
                data, chain[-1].offset - base + chain[-1].size) is None):
            return chain, torn
    return None


def read_tail(seg_path: str, window: int = DEFAULT_WINDOW,
              decode: Callable[[bytes], Any] = codec.unpack
              ) -> tuple[list[TailRecord], bool, bool]:
    """The intact records ending a segment (within ``window``); whether the
    segment ends in bytes that are no intact record (torn tail, or a record
    being written); and whether damage was seen (intact records after bytes
    that are none, inside the window).  ``decode`` makes each record's
    ``payload`` from its bytes (None where it raises)."""
    try:
        size = _size(seg_path)
        base = max(SEGMENT_HEADER_SIZE, size - window)
        data = _read(seg_path, base, max(size - base, 0))
    except OSError:
        return [], False, False
    damage = False
    if base == SEGMENT_HEADER_SIZE:
        records, torn = _chain(data, 0, base)  # a known record boundary
        if torn:
            stop = records[-1].offset - base + records[-1].size \
                if records else 0
            later = _resync(data, stop + 1, base)
            if later is not None:
                (records, torn), damage = later, True
    else:
        found = _resync(data, 0, base)
        records, torn = found if found is not None else ([], bool(data))
    _decode(records, data, base, decode)
    return records, torn, damage


def snapshot_seq(journal_dir: str) -> int | None:
    """The seq the ``checkpoint`` file claims to cover (header only)."""
    try:
        head = _read(os.path.join(journal_dir, SNAPSHOT_NAME), 0,
                     SNAPSHOT_HEADER_SIZE)
        magic, _version, _flags, _res, seq, _length, _crc = \
            SNAPSHOT_HEADER.unpack(head)
    except (OSError, Exception):
        return None
    return seq if magic == SNAPSHOT_MAGIC else None


def look(journal_dir: str, window: int = DEFAULT_WINDOW) -> JournalView:
    """Head and tail records, sizes and last write of a journal, reading at
    most about ``2 * window`` bytes.  Read-only; never raises."""
    view = JournalView(journal_dir)
    try:
        segments = list_segments(journal_dir)
        with os.scandir(journal_dir) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.name.startswith("segment-") or \
                        entry.name.startswith(SNAPSHOT_NAME):
                    view.size += st.st_size
                if entry.name.startswith("segment-"):
                    view.last_write = max(view.last_write or 0.0,
                                          st.st_mtime)
    except OSError:
        return view
    view.segments = len(segments)
    if not segments:
        return view
    view.head = read_head(segments[0][1], window)
    view.tail, view.torn_tail, view.damage_seen = read_tail(
        segments[-1][1], window)
    view.snapshot_seq = snapshot_seq(journal_dir)
    return view
