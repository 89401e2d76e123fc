"""codec.encode_append / encode_mutate: the dataset hooks' payloads built
from cached pieces, without the packer.

Contract: each returns exactly ``pack([key, value])`` / ``pack([key,
index, value])`` (a slice index as ``(start, stop, step)``), or None --
never other bytes, whatever was cached before (equal values of other types:
``1 == 1.0 == True``; keys and dtypes seen before).  The common shapes of a
scan (a float or numpy scalar or small array under a str key; a slice, a
tuple or a tuple of tuples of ints as index) must take the fast path, or
the hot path silently falls back to the packer's ``default`` hook.
"""

from __future__ import annotations

import enum

import numpy as np
import pytest
from hypothesis import given, strategies as st

from artiq_journal.journal import codec
from test_codec import (FLOATS, INTS, SETTINGS, VALUES, assert_same,
                        numpy_arrays, numpy_scalars)


class Color(enum.IntEnum):
    RED = 1


KEYS = st.one_of(st.text(max_size=40), st.sampled_from(
    ["scan.counts", "x", "a" * 31, "a" * 32, "ü" * 20, "\udc80"]),
    st.just(b"bytes-key"), st.integers(0, 3))
INDEX_ITEMS = st.one_of(st.none(), INTS, st.booleans(), st.floats(),
                        st.sampled_from([Color.RED, np.int64(2)]))
INDEXES = st.one_of(
    INTS, st.booleans(), st.just(Color.RED),
    st.builds(slice, INDEX_ITEMS, INDEX_ITEMS, INDEX_ITEMS),
    st.lists(INDEX_ITEMS, max_size=5).map(tuple),
    st.lists(st.lists(INDEX_ITEMS, max_size=4).map(tuple), max_size=5)
    .map(tuple),
    st.lists(st.one_of(INDEX_ITEMS, st.lists(INDEX_ITEMS, max_size=3)
                       .map(tuple)), max_size=4).map(tuple),
    st.lists(st.integers(-3, 3), max_size=3).map(list),
)
FAST_VALUES = st.one_of(FLOATS, numpy_scalars(), numpy_arrays(), VALUES)


def journaled_index(index):
    if type(index) is slice:
        return (index.start, index.stop, index.step)
    return index


def expected(obj):
    try:
        return codec.pack(obj)
    except (TypeError, UnicodeEncodeError):
        return None


@SETTINGS
@given(KEYS, FAST_VALUES)
def test_encode_append_is_pack_or_none(key, value):
    # Twice: the first call may fill a cache the second one uses.
    for _ in range(2):
        data = codec.encode_append(key, value)
        if data is not None:
            assert data == expected([key, value])
            assert_same([key, value], codec.unpack(data))


@SETTINGS
@given(KEYS, INDEXES, FAST_VALUES)
def test_encode_mutate_is_pack_or_none(key, index, value):
    for _ in range(2):
        data = codec.encode_mutate(key, index, value)
        if data is not None:
            payload = [key, journaled_index(index), value]
            assert data == expected(payload)
            assert_same(payload, codec.unpack(data))


@SETTINGS
@given(st.lists(st.lists(st.one_of(st.integers(-2, 300), st.none()),
                         max_size=4).map(tuple), min_size=1, max_size=4)
       .map(tuple), st.data())
def test_cached_tuple_indexes_never_answer_for_equal_ones_of_other_types(
        index, data):
    # Equal tuples hash alike: a cache hit must still check the item types.
    assert codec.encode_mutate("k", index, 1.5) \
        == codec.pack(["k", index, 1.5])
    flat = [(i, j) for i, item in enumerate(index)
            for j, x in enumerate(item) if x in (0, 1)]
    if not flat:
        return
    i, j = data.draw(st.sampled_from(flat))
    twin = data.draw(st.sampled_from([bool, float, Color, np.int64]))
    if twin is Color and index[i][j] != 1:
        return
    item = list(index[i])
    item[j] = twin(item[j]) if twin is not Color else Color.RED
    other = index[:i] + (tuple(item),) + index[i + 1:]
    assert other == index
    got = codec.encode_mutate("k", other, 1.5)
    assert got is None or got == codec.pack(["k", other, 1.5])
    assert got != codec.pack(["k", index, 1.5])


SCALAR_TYPES = [np.float64, np.float32, np.int64, np.int32, np.int16,
                np.int8, np.uint64, np.uint32, np.uint16, np.uint8]


@pytest.mark.parametrize("kind", [float] + SCALAR_TYPES,
                         ids=lambda t: t.__name__)
def test_floats_and_common_numpy_scalars_take_the_fast_path(kind):
    values = [kind(0), kind(1), kind(7)]
    if kind not in (np.uint64, np.uint32, np.uint16, np.uint8):
        values.append(kind(-1))
    if kind in (float, np.float64, np.float32):
        values += [kind("nan"), kind("-inf"), kind(-0.0)]
    for value in values:
        for key in ("scan.counts", "ü" * 40):
            data = codec.encode_append(key, value)
            assert data is not None, (key, value)
            assert data == codec.pack([key, value])
            assert_same([key, value], codec.unpack(data))
            assert type(codec.unpack(data)[1]) is kind
    # The dataset hook's inlined form of the same case.
    enc = codec.value_encoding(kind)
    head = codec.append_head("scan.counts")
    assert enc is not None and head is not None
    value = values[-1]
    assert head + enc(value) == codec.pack(["scan.counts", value])


def test_numpy_float64_keeps_its_type_through_the_fast_path():
    # Not a plain msgpack float: recovery gives back np.float64, the type
    # the experiment appended (and what ARTIQ's results file would hold).
    value = np.float64(0.1)
    data = codec.encode_append("k", value)
    assert data is not None
    decoded = codec.unpack(data)[1]
    assert type(decoded) is np.float64 and decoded == value


@pytest.mark.parametrize("array", [
    np.arange(128, dtype=np.float64), np.zeros((8, 8), dtype=">i4"),
    np.arange(12).reshape(3, 4)[:, ::2], np.array(2.5), np.zeros(0),
    np.array(["ab", "c"]), np.arange(4).astype("M8[s]"),
], ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_small_arrays_take_the_fast_path(array):
    for _ in range(2):
        data = codec.encode_append("k", array)
        assert data is not None
        assert data == codec.pack(["k", array])
        assert_same(["k", array], codec.unpack(data))
        mutated = codec.encode_mutate("k", 3, array)
        assert mutated == codec.pack(["k", 3, array])


def test_the_hooks_inlined_array_form_is_pack():
    # hooks.append_to builds append_head + array_prefix + tobytes() itself.
    for array in (np.arange(128.0), np.zeros((3, 2), ">i2")[:, ::-1],
                  np.array(["ab", "c"])):
        codec.encode_append("rows", array)     # fills both caches
        prefix = codec.array_prefix((array.dtype, array.shape))
        assert prefix is not None
        assert codec.append_head("rows") + prefix + array.tobytes() \
            == codec.pack(["rows", array])
    big = np.zeros(codec.ZERO_COPY_MIN // 8)
    codec.encode_append("rows", big)
    assert codec.array_prefix((big.dtype, big.shape)) is None


def test_large_arrays_are_left_to_the_zero_copy_path():
    big = np.zeros(codec.ZERO_COPY_MIN // 8, dtype=np.float64)
    assert codec.encode_append("k", big) is None


@pytest.mark.parametrize("index", [
    slice(1, 9, 2), slice(None, 5), slice(-3, None, -1), (1, 9, 2),
    (None, 5, None), ((0, 4), (2, 6)), ((0, 4, 2),), ((1, 2), (3, 4), (5, 6),
                                                       (7, None)),
    0, 127, 128, -1, 2 ** 63, -(2 ** 63), (),
], ids=repr)
def test_mutate_indexes_of_ints_take_the_fast_path(index):
    for value in (1.5, np.float64(2.5), np.float32(1)):
        data = codec.encode_mutate("arr", index, value)
        assert data is not None
        payload = ["arr", journaled_index(index), value]
        assert data == codec.pack(payload)
        assert_same(payload, codec.unpack(data))


@pytest.mark.parametrize("key, value", [
    ("k", 1), ("k", "text"), ("k", [1.0]), ("k", (1, 2)), ("k", None),
    ("k", np.bool_(True)), ("k", np.complex128(1j)), ("k", np.str_("x")),
    ("k", np.array([None], dtype=object)), (Color.RED, 1.5), (1, 1.5),
    ("\udc80", 1.5),
], ids=repr)
def test_other_shapes_are_left_to_the_packer(key, value):
    assert codec.encode_append(key, value) is None


class StrKey(str):
    pass


def test_a_str_subclass_key_is_never_taken_for_the_equal_str():
    codec.encode_append("scan", 1.5)     # "scan" cached
    codec.encode_mutate("scan", 0, 1.5)
    assert codec.encode_append(StrKey("scan"), 1.5) is None
    assert codec.encode_mutate(StrKey("scan"), 0, 1.5) is None
    with pytest.raises(TypeError):
        codec.pack([StrKey("scan"), 1.5])


def test_key_and_index_caches_stay_bounded():
    for i in range(3 * codec._HEAD_MAX):
        key = f"key{i}"
        assert codec.encode_append(key, 0.5) == codec.pack([key, 0.5])
        index = ((i, i + 1), (0, 1))
        assert codec.encode_mutate(key, index, 0.5) \
            == codec.pack([key, index, 0.5])
    assert len(codec._APPEND_HEAD) <= codec._HEAD_MAX
    assert len(codec._MUTATE_HEAD) <= codec._HEAD_MAX
    assert len(codec._INDEX_CACHE) <= codec._INDEX_CACHE_MAX
