"""Damage made by code from good journals, and hostile msgpack payloads.

Used by ``make_corpus.py`` (seed corpus), ``tests/test_fuzz_hypothesis.py``
and ``tests/test_faults.py``, so damaged inputs are always derived from what
the current writer produces and the corpus never rots.
"""

from __future__ import annotations

import struct

import msgpack

from artiq_journal.journal.constants import (RECORD_HEADER,
                                             RECORD_HEADER_SIZE,
                                             SEGMENT_HEADER,
                                             SEGMENT_HEADER_SIZE,
                                             SNAPSHOT_HEADER,
                                             SNAPSHOT_HEADER_SIZE)
from artiq_journal.journal.framing import crc32

_PLAIN = msgpack.Packer(use_bin_type=True)


# --- damage to bytes ---------------------------------------------------------

def flip_bit(data: bytes, bit: int) -> bytes:
    if not data:
        return data
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def truncate(data: bytes, size: int) -> bytes:
    return data[:max(0, size)]


def zero_range(data: bytes, start: int, length: int) -> bytes:
    out = bytearray(data)
    out[start:start + length] = bytes(len(out[start:start + length]))
    return bytes(out)


def splice(a: bytes, b: bytes, cut_a: int, cut_b: int) -> bytes:
    """The start of ``a`` followed by the end of ``b``."""
    return a[:cut_a] + b[cut_b:]


def record_offsets(segment: bytes) -> list[tuple[int, int]]:
    """(offset, total length) of each well-formed record of a segment."""
    found, pos = [], SEGMENT_HEADER_SIZE
    while pos + RECORD_HEADER_SIZE <= len(segment):
        length = RECORD_HEADER.unpack_from(segment, pos)[1]
        end = pos + RECORD_HEADER_SIZE + length
        if end > len(segment):
            break
        found.append((pos, end - pos))
        pos = end
    return found


def duplicate_record(segment: bytes, index: int) -> bytes:
    """Repeat one record right after itself (a replayed write)."""
    records = record_offsets(segment)
    if not records:
        return segment
    pos, size = records[index % len(records)]
    end = pos + size
    return segment[:end] + segment[pos:end] + segment[end:]


def set_length(segment: bytes, index: int, length: int = 0xFFFFFFFF) -> bytes:
    """Overwrite one record's length field (e.g. with 4 GiB - 1)."""
    records = record_offsets(segment)
    if not records:
        return segment
    pos = records[index % len(records)][0]
    return segment[:pos + 4] + struct.pack("<I", length) + segment[pos + 8:]


def snapshot_with_version(snapshot: bytes, version: int) -> bytes:
    """A checkpoint file claiming another format version, CRC still valid
    (what a newer writer would produce)."""
    magic, _, flags, res, seq, length, _crc = SNAPSHOT_HEADER.unpack_from(
        snapshot)
    payload = snapshot[SNAPSHOT_HEADER_SIZE:]
    head = SNAPSHOT_HEADER.pack(magic, version, flags, res, seq, length, 0)
    crc = crc32(payload, crc32(head[:32]))
    return SNAPSHOT_HEADER.pack(magic, version, flags, res, seq, length,
                                crc) + payload


def segment_with_version(segment: bytes, version: int) -> bytes:
    """A segment whose header claims another format version, CRC valid."""
    magic, _, flags, number, first_seq, _crc = SEGMENT_HEADER.unpack_from(
        segment)
    head = SEGMENT_HEADER.pack(magic, version, flags, number, first_seq, 0)
    crc = crc32(head[:24])
    return SEGMENT_HEADER.pack(magic, version, flags, number, first_seq,
                               crc) + segment[SEGMENT_HEADER_SIZE:]


# --- hostile msgpack ---------------------------------------------------------

def nested_arrays(depth: int) -> bytes:
    """[[[...]]] ``depth`` deep (fixarray of one element each)."""
    return b"\x91" * depth + b"\xc0"


def nested_tuples(depth: int) -> bytes:
    """Tuples (ext 3) nested ``depth`` deep: each level is an ext that the
    decoder must unpack recursively."""
    inner = _PLAIN.pack(None)
    for _ in range(depth):
        inner = _PLAIN.pack(msgpack.ExtType(3, b"\x91" + inner))
    return inner


def ndarray_ext(dtype: str, shape: list, body: bytes = b"") -> bytes:
    return _PLAIN.pack(msgpack.ExtType(1, _PLAIN.pack([dtype, shape]) + body))


#: A pickle that would create this marker file if anything unpickled it.
PICKLE_MARKER = "/tmp/artiq-journal-pickle-was-evaluated"
EVIL_PICKLE = (b"cos\nsystem\n(S'touch " + PICKLE_MARKER.encode()
               + b"'\ntR.")


def hostile_payloads() -> dict[str, bytes]:
    """Name -> msgpack bytes that a journal record might hold."""
    return {
        "unknown_ext_type": _PLAIN.pack(msgpack.ExtType(42, b"\x00" * 8)),
        "negative_ext_type": b"\xd4\xfbx",  # fixext1, type -5
        "map32_claims_4g_entries": b"\xdf\xff\xff\xff\xff",
        "array32_claims_4g_items": b"\xdd\xff\xff\xff\xff",
        "bin32_claims_4g_bytes": b"\xc6\xff\xff\xff\xff",
        "str32_claims_4g_bytes": b"\xdb\xff\xff\xff\xff",
        "ext32_claims_4g_bytes": b"\xc9\xff\xff\xff\xff\x01",
        "nested_arrays_50k": nested_arrays(50_000),
        "nested_tuples_10k": nested_tuples(10_000),
        "non_utf8_str": b"\xa2\xff\xfe",
        "non_utf8_map_key": b"\x81\xa2\xff\xfe\x01",
        "unhashable_map_key": b"\x81\x91\x01\x02",
        "map_key_is_map": b"\x81\x80\x01",
        "bigint_ext_too_long": _PLAIN.pack(msgpack.ExtType(5, b"\x01" * 5000)),
        "bigint_ext_empty": _PLAIN.pack(msgpack.ExtType(5, b"")),
        "complex_ext_short": _PLAIN.pack(msgpack.ExtType(4, b"\x00" * 3)),
        "ndarray_object_dtype_pickle": ndarray_ext("O", [1], EVIL_PICKLE),
        "ndarray_void_dtype": ndarray_ext("V8", [1], b"\x00" * 8),
        "ndarray_structured_dtype": ndarray_ext("i4,i4", [1], b"\x00" * 8),
        "ndarray_huge_shape": ndarray_ext("<f8", [2 ** 62, 2 ** 62]),
        "ndarray_zero_itemsize_huge_shape": ndarray_ext("S0", [2 ** 40] * 2),
        "ndarray_negative_dim": ndarray_ext("<f8", [-1]),
        "ndarray_dtype_comma_string": ndarray_ext("(01,)i4", [1], bytes(4)),
        "ndarray_too_many_dims": ndarray_ext("<f8", [1] * 40, b"\x00" * 8),
        "ndarray_body_short": ndarray_ext("<f8", [4], b"\x00" * 8),
        "npscalar_object_dtype": _PLAIN.pack(
            msgpack.ExtType(2, _PLAIN.pack(["O", EVIL_PICKLE]))),
        "trailing_bytes": _PLAIN.pack([1, 2]) + b"\x00",
        "truncated_value": _PLAIN.pack(["abc", b"x" * 100])[:-10],
        "reserved_byte_c1": b"\xc1",
        "pickle_bytes_as_bin": _PLAIN.pack(EVIL_PICKLE),
    }


def set_record_with(value_bytes: bytes, key: bytes = b"\xa3key") -> bytes:
    """A REC_SET payload ``[key, <value_bytes>, {}, false, false, true]``
    whose value is spliced in raw (so it may be hostile)."""
    return b"\x96" + key + value_bytes + b"\x80\xc2\xc2\xc3"
