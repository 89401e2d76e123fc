"""Helpers for tests/review2 (the second independent review: the per-op
fast path, the streamed snapshot, the recovery trail)."""

from __future__ import annotations

import struct

import numpy as np

from test_recovery import Journal, journal_dir


def float32_from_bits(bits: int) -> np.float32:
    """A numpy float32 with exactly these bits (e.g. a signalling NaN)."""
    return np.frombuffer(struct.pack("<I", bits), "<f4")[0]


#: A float32 signalling NaN (quiet bit clear, payload 1).
SNAN32_BITS = 0x7F800001


def bits32(value) -> int:
    return struct.unpack("<I", np.float32(value).tobytes())[0] \
        if not isinstance(value, np.float32) else \
        struct.unpack("<I", value.tobytes())[0]


def scan_with_dataset_replaced_in_each_point(root: str, replacement):
    """A crashed journal of a two-list scan (``a``, ``b``) in which every
    point appends to ``a``, then replaces ``a`` with ``replacement(i)``,
    appends to ``b`` and resets ``a`` to [] -- cut after the append to
    ``b`` of point 5 (before the reset).  Legal ARTIQ: every call works on
    a plain DatasetManager.  Returns the Journal."""
    j = Journal(journal_dir(root))
    j.stage("run", 1.0)
    j.op("set", "a", [], {}, True, False, True)
    j.op("set", "b", [], {}, True, False, True)
    for i in range(6):
        assert j.op("append_to", "a", float(i))
        assert j.op("set", "a", replacement(i), {}, True, False, True)
        assert j.op("append_to", "b", float(i))
        if i < 5:
            assert j.op("set", "a", [], {}, True, False, True)
    j.crash()
    return j


def reference_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib's crc32_combine, transliterated, without any cache."""
    def times(mat, vec):
        out, i = 0, 0
        while vec:
            if vec & 1:
                out ^= mat[i]
            vec >>= 1
            i += 1
        return out

    def square(mat):
        return [times(mat, row) for row in mat]
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = square(odd)
    odd = square(even)
    while True:
        even = square(odd)
        if len2 & 1:
            crc1 = times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = square(even)
        if len2 & 1:
            crc1 = times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2
