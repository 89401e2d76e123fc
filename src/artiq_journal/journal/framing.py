"""Byte layout of segment headers and records (see docs/FORMAT.md).

Pure functions over bytes: no I/O, shared by the writer, the reader, the
fuzz harnesses and the tests, so there is one definition of the layout.
"""

from __future__ import annotations

import os
import threading
import zlib
from typing import NamedTuple

from .constants import (CRC_FIELD, FORMAT_VERSION, RECORD_HEADER,
                        SEGMENT_VERSIONS,
                        RECORD_HEADER_SIZE, RECORD_HEADER_TAIL,
                        RECORD_TYPE_NAMES, SEGMENT_HEADER,
                        SEGMENT_FLAG_BACKGROUND_SYNC,
                        SEGMENT_HEADER_SIZE, SEGMENT_MAGIC, SEGMENT_PREFIX,
                        SEGMENT_SUFFIX)

crc32 = zlib.crc32


class RecordHeader(NamedTuple):
    crc: int
    length: int
    seq: int
    rtype: int
    flags: int
    reserved: int


class SegmentHeader(NamedTuple):
    version: int
    number: int
    first_seq: int
    flags: int = 0


def segment_name(number: int) -> str:
    return f"{SEGMENT_PREFIX}{number}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """Segment number from a file name, or None if it is not a segment."""
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]
    if not digits.isdigit() or not digits.isascii():
        return None
    if len(digits) > 1 and digits[0] == "0":
        return None
    return int(digits)


def encode_segment_header(number: int, first_seq: int,
                          flags: int = 0) -> bytes:
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, flags, number,
                               first_seq, 0)
    crc = crc32(body[:24])
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, flags, number,
                               first_seq, crc)


def decode_segment_header(data: bytes) -> SegmentHeader:
    """Parse a segment header; raises ValueError saying what is wrong.

    A version newer than ours raises ``ValueError`` whose text starts with
    ``"unsupported format version"`` so callers can tell it apart.
    """
    if len(data) < SEGMENT_HEADER_SIZE:
        raise ValueError(f"segment header truncated ({len(data)} of "
                         f"{SEGMENT_HEADER_SIZE} bytes)")
    magic, version, flags, number, first_seq, crc = \
        SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise ValueError("bad segment magic (not a journal segment)")
    if crc32(data[:24]) != crc:
        raise ValueError("segment header CRC mismatch")
    if data[28:SEGMENT_HEADER_SIZE] != bytes(4):
        raise ValueError("nonzero reserved bytes in segment header")
    if version not in SEGMENT_VERSIONS:
        raise ValueError(f"unsupported format version {version} "
                         f"(this reader knows "
                         f"{', '.join(map(str, SEGMENT_VERSIONS))})")
    known = SEGMENT_FLAG_BACKGROUND_SYNC if version >= 3 else 0
    if flags & ~known:
        raise ValueError(f"unknown segment flags {flags:#x}")
    return SegmentHeader(version, number, first_seq, flags)


def encode_record(seq: int, rtype: int, payload: bytes) -> bytes:
    """One framed record: header + payload."""
    tail = RECORD_HEADER_TAIL.pack(len(payload), seq, rtype, 0, 0)
    return CRC_FIELD.pack(crc32(payload, crc32(tail))) + tail + payload


def decode_record_header(data: bytes, offset: int = 0) -> RecordHeader:
    return RecordHeader(*RECORD_HEADER.unpack_from(data, offset))


def record_crc(header_bytes: bytes, payload: bytes) -> int:
    """CRC of a record as stored: over header bytes 4..20 then payload."""
    return crc32(payload, crc32(header_bytes[4:RECORD_HEADER_SIZE]))


def type_name(rtype: int) -> str:
    return RECORD_TYPE_NAMES.get(rtype, f"type-{rtype}")


# --- CRC of large payloads ------------------------------------------------------
#
# zlib.crc32 runs at ~2-3 GB/s on one core and releases the GIL on large
# buffers, so the CRC of a record holding a 64 MiB array is split across
# threads: each computes the CRC of its own slice, and the CRCs are joined
# with crc32_combine (zlib's GF(2) matrix method, here in Python: zlib's is
# not exposed by the zlib module).  The result is bit for bit zlib.crc32 of
# the concatenation.

def _gf2_times(mat: list, vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list) -> list:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


#: _ZEROS[k]: the operator taking the CRC of A to the CRC of A followed by
#: 2**k zero bytes; built once, as far as lengths need, under a lock (two
#: threads growing it together would each square the same last entry).
_ZEROS: list = []
_ZEROS_LOCK = threading.Lock()


def _zeros(k: int) -> list:
    if k < len(_ZEROS):
        return _ZEROS[k]
    with _ZEROS_LOCK:
        if not _ZEROS:
            one_bit = [0xEDB88320] + [1 << n for n in range(31)]
            _ZEROS.append(_gf2_square(_gf2_square(_gf2_square(one_bit))))
        while len(_ZEROS) <= k:
            _ZEROS.append(_gf2_square(_ZEROS[-1]))
    return _ZEROS[k]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib.crc32(A + B) from crc1 = zlib.crc32(A), crc2 = zlib.crc32(B)
    and len2 = len(B) (zlib's ``crc32_combine``, which the zlib module
    does not expose): lets a writer stream a payload and CRC a header it
    can only build afterwards, or CRC slices in parallel."""
    if len2 <= 0:
        return crc1     # as zlib: B is empty
    k = 0
    while len2 > 0:
        if len2 & 1:
            crc1 = _gf2_times(_zeros(k), crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


#: Payload pieces at least this large are split across threads.
PARALLEL_CRC_MIN = 8 * 1024 * 1024
_CRC_THREADS = max(1, min(4, os.cpu_count() or 1))
_crc_pool = None
_crc_pool_lock = threading.Lock()


def _pool():
    global _crc_pool
    if _crc_pool is None:
        with _crc_pool_lock:
            if _crc_pool is None:
                from concurrent.futures import ThreadPoolExecutor
                _crc_pool = ThreadPoolExecutor(
                    max_workers=_CRC_THREADS - 1,
                    thread_name_prefix="artiq-journal crc")
    return _crc_pool


def _reset_pool_in_child() -> None:
    # A forked child has no threads: the parent's pool is unusable there.
    global _crc_pool
    _crc_pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_in_child)


def crc32_parts(parts, crc: int = 0) -> int:
    """zlib.crc32 over the concatenation of the buffers ``parts``, starting
    from ``crc``; pieces of at least :data:`PARALLEL_CRC_MIN` bytes are
    split across up to ``os.cpu_count()`` threads (the calling one
    included)."""
    for part in parts:
        n = len(part) if not isinstance(part, memoryview) else part.nbytes
        if n < PARALLEL_CRC_MIN or _CRC_THREADS < 2:
            crc = crc32(part, crc)
            continue
        view = memoryview(part).cast("B") if isinstance(part, memoryview) \
            else memoryview(part)
        step = -(-n // _CRC_THREADS)
        slices = [view[i:i + step] for i in range(0, n, step)]
        futures = [_pool().submit(crc32, s) for s in slices[1:]]
        crc = crc32(slices[0], crc)
        for s, fut in zip(slices[1:], futures):
            crc = crc32_combine(crc, fut.result(), len(s))
    return crc


# --- CRC overlapped with the write ----------------------------------------------
#
# A writer appending a record of tens of MiB writes it while its CRC is
# computed (docs/FORMAT.md section 11): the payload is cut into slices,
# the pool's threads take slices one after the other, the writing thread
# joins them once its write returned (taking the slices nobody started),
# and the slice CRCs are then joined in order.

#: Slice size of an overlapped CRC: large enough that zlib releases the GIL
#: and the per-slice cost (a future, a combine) is negligible, small enough
#: that the writing thread finds work left to share when its write returns.
OVERLAP_SLICE = 2 * 1024 * 1024


def can_overlap() -> bool:
    """Whether a CRC can run beside a write (a pool thread exists)."""
    return _CRC_THREADS >= 2


class OverlappedCrc:
    """zlib.crc32 of the concatenation of ``parts`` from ``crc``, computed
    by the CRC pool while the caller does something else (writes them);
    :meth:`result` makes the caller help with what is left and returns the
    CRC.  The buffers must stay unchanged until :meth:`result` returned."""

    def __init__(self, parts, crc: int = 0,
                 slice_bytes: int | None = None) -> None:
        step = slice_bytes or OVERLAP_SLICE
        self._start = crc
        slices = []
        for part in parts:
            view = memoryview(part)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            n = view.nbytes
            for i in range(0, n, step):
                slices.append(view[i:i + step])
        self._slices = slices
        self._crcs: list = [None] * len(slices)
        self._next = iter(range(len(slices))).__next__  # atomic under the GIL
        self._lock = threading.Lock()
        pool = _pool()
        workers = min(_CRC_THREADS - 1, len(slices))
        self._futures = [pool.submit(self._work) for _ in range(workers)]

    def _work(self) -> None:
        slices, crcs = self._slices, self._crcs
        while True:
            with self._lock:
                try:
                    i = self._next()
                except StopIteration:
                    return
            crcs[i] = crc32(slices[i])

    def result(self) -> int:
        self._work()
        for fut in self._futures:
            fut.result()
        crc = self._start
        for view, part in zip(self._slices, self._crcs):
            crc = crc32_combine(crc, part, view.nbytes)
        self._slices = []
        return crc
