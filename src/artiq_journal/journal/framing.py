"""Byte layout of segment headers and records (see docs/FORMAT.md).

Pure functions over bytes: no I/O, shared by the writer, the reader, the
fuzz harnesses and the tests, so there is one definition of the layout.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

from .constants import (CRC_FIELD, FORMAT_VERSION, RECORD_HEADER,
                        SEGMENT_VERSIONS,
                        RECORD_HEADER_SIZE, RECORD_HEADER_TAIL,
                        RECORD_TYPE_NAMES, SEGMENT_HEADER,
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


def encode_segment_header(number: int, first_seq: int) -> bytes:
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, number,
                               first_seq, 0)
    crc = crc32(body[:24])
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, number,
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
    if flags != 0:
        raise ValueError(f"unknown segment flags {flags:#x}")
    return SegmentHeader(version, number, first_seq)


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


def _gf2_times(mat: list, vec: int) -> int:
    total = 0
    i = 0
    while vec:
        if vec & 1:
            total ^= mat[i]
        vec >>= 1
        i += 1
    return total


def _gf2_square(mat: list) -> list:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A‖B from crc1 = CRC of A, crc2 = CRC of B and len2 = the
    length of B (zlib's ``crc32_combine``, which Python does not expose):
    lets a writer stream a payload and CRC a header it can only build
    afterwards."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)   # two zero bits
    odd = _gf2_square(even)   # four
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2
