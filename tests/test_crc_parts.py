"""crc32_combine / crc32_parts (journal/framing.py) against zlib.crc32 of
the concatenation: the record CRC of a large array is computed in slices on
several threads and must be bit for bit the serial one."""

import zlib

import numpy as np
from hypothesis import given, settings, strategies as st

from artiq_journal.journal import framing
from artiq_journal.journal.framing import crc32_combine, crc32_parts


@given(st.binary(max_size=600), st.binary(max_size=600),
       st.integers(0, 2 ** 32 - 1))
@settings(max_examples=300, deadline=None)
def test_combine_is_crc_of_concatenation(a, b, start):
    crc_a = zlib.crc32(a, start)
    assert crc32_combine(crc_a, zlib.crc32(b), len(b)) == \
        zlib.crc32(a + b, start)


@given(st.lists(st.binary(max_size=300), max_size=6),
       st.integers(0, 2 ** 32 - 1), st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_parts_split_small_threshold(parts, start, threshold):
    # A tiny threshold makes every piece take the threaded path.
    old = framing.PARALLEL_CRC_MIN, framing._CRC_THREADS
    framing.PARALLEL_CRC_MIN, framing._CRC_THREADS = threshold, 3
    try:
        got = crc32_parts([memoryview(p) for p in parts] + parts, start)
    finally:
        framing.PARALLEL_CRC_MIN, framing._CRC_THREADS = old
    assert got == zlib.crc32(b"".join(parts * 2), start)


def test_large_array_view():
    arr = np.random.default_rng(3).random((3, 1 << 20))  # 24 MiB
    view = memoryview(arr.reshape(-1).view(np.uint8))
    assert crc32_parts([b"head", view, b"tail"], 5) == \
        zlib.crc32(b"head" + arr.tobytes() + b"tail", 5)
