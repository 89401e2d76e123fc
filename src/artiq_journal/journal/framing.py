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
