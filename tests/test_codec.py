"""The payload codec: exact round trips, refusal of unsupported values at
pack time, and DecodeError (only) for every malformed input.

Specification: docs/FORMAT.md section 3.  "Exact" means same type (a tuple
stays a tuple, numpy.float32 stays numpy.float32), same dtype including byte
order, same shape, and bit-identical floats (NaN payloads, -0.0).
"""

from __future__ import annotations

import collections
import enum
import struct
import tracemalloc
import warnings

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from artiq_journal.journal import codec
from artiq_journal.journal.codec import DecodeError

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# -- strict equality ----------------------------------------------------------

def _float_bits(value: float) -> bytes:
    return struct.pack("<d", value)


def assert_same(expected, actual, where: str = "value") -> None:
    """Exact equality: type, dtype (with byte order), shape, and bits."""
    assert type(actual) is type(expected), \
        f"{where}: type {type(actual).__name__}, expected " \
        f"{type(expected).__name__}"
    if isinstance(expected, np.ndarray):
        assert actual.dtype.str == expected.dtype.str, \
            f"{where}: dtype {actual.dtype.str}, expected {expected.dtype.str}"
        assert actual.shape == expected.shape, \
            f"{where}: shape {actual.shape}, expected {expected.shape}"
        assert actual.tobytes() == expected.tobytes(), \
            f"{where}: array contents differ"
        assert actual.flags.writeable, f"{where}: decoded array is read-only"
    elif isinstance(expected, np.generic):
        assert actual.dtype.str == expected.dtype.str, \
            f"{where}: dtype {actual.dtype.str}, expected {expected.dtype.str}"
        assert actual.tobytes() == expected.tobytes(), \
            f"{where}: scalar bits differ"
    elif type(expected) is float:
        assert _float_bits(actual) == _float_bits(expected), \
            f"{where}: {actual!r} is not bit-identical to {expected!r}"
    elif type(expected) is complex:
        assert _float_bits(actual.real) == _float_bits(expected.real) and \
            _float_bits(actual.imag) == _float_bits(expected.imag), \
            f"{where}: {actual!r} is not bit-identical to {expected!r}"
    elif type(expected) in (list, tuple):
        assert len(actual) == len(expected), f"{where}: length differs"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{i}]")
    elif type(expected) is dict:
        assert len(actual) == len(expected), f"{where}: size differs"
        for (ek, ev), (ak, av) in zip(expected.items(), actual.items()):
            assert_same(ek, ak, f"{where} key {ek!r}")
            assert_same(ev, av, f"{where}[{ek!r}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def round_trip(value):
    return codec.unpack(codec.pack(value))


def test_strict_equality_helper_tells_tuple_from_list_and_nan_payloads():
    # The helper is the oracle of every round-trip test: it must fail where
    # loose == would pass.
    with pytest.raises(AssertionError):
        assert_same((1, 2), [1, 2])
    with pytest.raises(AssertionError):
        assert_same(0.0, -0.0)
    with pytest.raises(AssertionError):
        assert_same(1, True)
    with pytest.raises(AssertionError):
        assert_same(np.zeros(2, "<f8"), np.zeros(2, ">f8"))
    with pytest.raises(AssertionError):
        assert_same(np.float32(1), np.float64(1))
    nan_a = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]
    with pytest.raises(AssertionError):
        assert_same(float("nan"), nan_a)


# -- strategies ---------------------------------------------------------------

ARRAY_DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(endianness="?", min_len=1, max_len=8),
    hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=8),
    st.just(np.dtype(np.longdouble)),
    st.just(np.dtype(np.clongdouble)),
)


@st.composite
def numpy_arrays(draw):
    dtype = draw(ARRAY_DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                  max_side=4))
    array = draw(hnp.arrays(dtype, shape))
    # Non-contiguous and reordered views must encode as their logical
    # contents, in C order.
    view = draw(st.sampled_from(["plain", "reversed", "strided",
                                 "transposed", "fortran"]))
    if array.ndim >= 1 and view == "reversed":
        array = array[::-1]
    elif array.ndim >= 1 and view == "strided":
        array = array[::2]
    elif array.ndim >= 2 and view == "transposed":
        array = array.T
    elif view == "fortran":
        array = np.asfortranarray(array)
    return array


@st.composite
def numpy_scalars(draw):
    dtype = draw(ARRAY_DTYPES)
    array = draw(hnp.arrays(dtype, ()))
    scalar = array[()]
    # Empty str_/bytes_ scalars have item size 0: covered by their own test.
    if isinstance(scalar, (np.str_, np.bytes_)) and len(scalar) == 0:
        scalar = dtype.type("x" if dtype.kind == "U" else b"x")
    return scalar


INTS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2 ** 300), max_value=2 ** 300),
    st.sampled_from([0, -1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64,
                     -(2 ** 63), -(2 ** 63) - 1, -(2 ** 64), 2 ** 4000,
                     -(2 ** 4000)]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, float("inf"), float("-inf"), float("nan"),
                     5e-324, 1.7976931348623157e308]),
    # NaNs with payloads and the sign bit set must survive bit-exactly.
    st.integers(min_value=0x7FF0000000000001, max_value=0x7FFFFFFFFFFFFFFF)
    .map(lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0]),
    st.integers(min_value=0xFFF0000000000001, max_value=0xFFFFFFFFFFFFFFFF)
    .map(lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0]),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), INTS, FLOATS,
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    st.text(), st.binary(),
)
HASHABLE_KEYS = st.one_of(
    st.text(max_size=8), st.integers(),
    st.tuples(st.text(max_size=4), st.integers()),
    st.tuples(st.integers(), st.tuples(st.text(max_size=3))),
)
VALUES = st.recursive(
    st.one_of(SCALARS, numpy_arrays(), numpy_scalars()),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(HASHABLE_KEYS, children, max_size=5),
    ),
    max_leaves=12,
)


# -- round trips --------------------------------------------------------------

@SETTINGS
@given(VALUES)
def test_every_supported_value_round_trips_exactly(value):
    assert_same(value, round_trip(value))


@SETTINGS
@given(numpy_arrays())
def test_numpy_arrays_round_trip_with_dtype_shape_and_byte_order(array):
    decoded = round_trip(array)
    assert_same(array, decoded)
    # Writable and independent of the record buffer: a later mutate() on
    # the decoded value must behave as on the original.
    assert decoded.flags.writeable and decoded.flags.c_contiguous


@SETTINGS
@given(numpy_scalars())
def test_numpy_scalars_keep_their_exact_type(scalar):
    assert_same(scalar, round_trip(scalar))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2 ** 64 - 1, -(2 ** 63), 2 ** 64, -(2 ** 63) - 1,
    2 ** 1000, -(2 ** 1000), 0.0, -0.0, float("inf"), float("-inf"),
    float("nan"), 1j, complex(-0.0, float("nan")), "", "ü", b"", b"\x00",
    [], (), (1,), [(1,)], ((),), {}, {1: "a", "1": "b", (1, "x"): ()},
    {"nested": {"deeper": [1, (2, [3])]}},
    np.array(5), np.zeros((0,)), np.zeros((2, 0, 3), ">i2"),
    np.arange(12).reshape(3, 4)[:, ::2], np.arange(6, dtype=">f4")[::-1],
    np.array(["a", "bc"]), np.array([b"x", b""]),
    np.array(["2020-01-01"], dtype="M8[D]"), np.array([1], dtype="m8[ns]"),
    np.float16(1.5), np.float32(-0.0), np.int8(-5), np.uint64(2 ** 64 - 1),
    np.bool_(True), np.complex64(1 + 2j), np.datetime64("NaT"),
    np.datetime64("2021-03-04T05:06", "s"), np.str_("ab"), np.bytes_(b"ab"),
    np.longdouble("1.1"),
], ids=repr)
def test_edge_values_round_trip_exactly(value):
    assert_same(value, round_trip(value))


def test_tuples_and_lists_stay_distinct_at_every_depth():
    value = [(1, [2, (3,)]), [(), []], {"k": ([],)}, {(1, (2,)): [()]}]
    assert_same(value, round_trip(value))


def test_empty_numpy_string_scalars_round_trip():
    # np.str_("") and np.bytes_(b"") have item size 0.  pack() accepts
    # them, so unpack() must give them back: a value that packs but does not
    # decode turns into a "bad_payload" diagnostic and makes every later
    # record of the journal untrusted.
    for value in (np.str_(""), np.bytes_(b"")):
        assert_same(value, round_trip(value))


def test_whatever_pack_accepts_unpack_decodes():
    # Tuples nest at most 64 levels when read (FORMAT.md section 3).  The
    # writer must not accept a value the reader will refuse: that record and
    # everything after it would be lost to recovery.
    value = ()
    for _ in range(codec.MAX_EXT_DEPTH + 5):
        value = (value,)
    try:
        data = codec.pack(value)
    except (TypeError, ValueError):
        return  # refused at write time: fine
    assert_same(value, codec.unpack(data))


# -- refused at pack time -----------------------------------------------------

class _Custom:
    pass


class _Color(enum.IntEnum):
    RED = 1


class _Str(str):
    pass


_Point = collections.namedtuple("_Point", "x y")


@pytest.mark.parametrize("value", [
    object(), {1, 2}, frozenset(), _Custom(), _Color.RED, _Str("x"),
    collections.OrderedDict(a=1), collections.defaultdict(list),
    _Point(1, 2), range(3),
    np.array([1, None], dtype=object), np.zeros(2, dtype=[("a", "<i4")]),
    np.zeros(2, dtype="V4"), np.void(b"\x00\x01"),
    np.zeros(1, dtype=[("a", "<i4")])[0],
    [1, 2, {3}], {"ok": [1, {"deep": object()}]}, (1, _Custom()),
    {frozenset(): 1},
], ids=lambda v: type(v).__name__)
def test_unsupported_values_raise_type_error_at_pack_time(value):
    with pytest.raises(TypeError):
        codec.pack(value)


@pytest.mark.parametrize("value", [bytearray(b"x"), memoryview(b"x")],
                         ids=lambda v: type(v).__name__)
def test_bytearray_and_memoryview_are_stored_as_their_bytes(value):
    # Documented in FORMAT.md section 3: msgpack packs them natively as bin,
    # which reads back as bytes with the same content.
    decoded = codec.unpack(codec.pack(value))
    assert type(decoded) is bytes
    assert decoded == bytes(value)


def _matrix():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.matrix([[1, 2]])


@pytest.mark.parametrize("value", [
    np.ma.masked_array([1, 2], mask=[False, True]),
    _matrix(),
], ids=lambda v: type(v).__name__)
def test_ndarray_subclasses_are_refused_not_silently_converted(value):
    # A masked array would come back as a plain array with the masked
    # values unmasked; a matrix as an ndarray.  Like other subclasses of
    # supported types they must be refused.
    with pytest.raises(TypeError):
        codec.pack(value)


# -- malformed input: DecodeError and nothing else ----------------------------

INT64 = st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)


def _ext(code: int, data: bytes) -> bytes:
    """An ext value with any code, including the negative ones msgpack's
    ExtType refuses to build."""
    return b"\xc9" + struct.pack(">I", len(data)) + struct.pack("b", code) \
        + data


def _decode_or_decode_error(data: bytes):
    try:
        return codec.unpack(data)
    except DecodeError:
        return None
    except Exception as exc:  # noqa: BLE001 - the property under test
        pytest.fail(f"unpack({data[:40]!r}...) raised {type(exc).__name__}: "
                    f"{exc} instead of DecodeError")


_SUPPORTED_TYPES = (type(None), bool, int, float, complex, str, bytes, list,
                    tuple, dict, np.ndarray, np.generic)


def _only_supported_types(value, depth=0) -> None:
    assert isinstance(value, _SUPPORTED_TYPES), \
        f"decoder built a {type(value).__module__}.{type(value).__name__}"
    if isinstance(value, (list, tuple)):
        for item in value:
            _only_supported_types(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _only_supported_types(key, depth + 1)
            _only_supported_types(item, depth + 1)


@settings(max_examples=400, deadline=None)
@given(code=st.sampled_from([codec.EXT_NDARRAY, codec.EXT_NPSCALAR,
                             codec.EXT_TUPLE, codec.EXT_COMPLEX,
                             codec.EXT_BIGINT]),
       data=st.binary(max_size=64))
def test_random_ext_payloads_decode_or_raise_decode_error(code, data):
    value = _decode_or_decode_error(_ext(code, data))
    if value is not None:
        _only_supported_types(value)


@settings(max_examples=400, deadline=None)
@given(code=st.sampled_from([codec.EXT_NDARRAY, codec.EXT_NPSCALAR]),
       head=st.lists(st.one_of(st.text(max_size=12), st.binary(max_size=8),
                               INT64, st.lists(INT64, max_size=40),
                               st.none()), max_size=3),
       body=st.binary(max_size=32))
def test_malformed_numpy_ext_headers_raise_decode_error(code, head, body):
    data = msgpack.packb(head) + body
    value = _decode_or_decode_error(_ext(code, data))
    if value is not None:
        _only_supported_types(value)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=96))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    value = _decode_or_decode_error(data)
    if value is not None:
        _only_supported_types(value)


@pytest.mark.parametrize("code", [0, 6, 42, 127, -2, -128])
def test_unknown_ext_codes_raise_decode_error(code):
    with pytest.raises(DecodeError):
        codec.unpack(_ext(code, b"\x00\x01"))


@pytest.mark.parametrize("data", [b"", b"\x00" * 4, b"\x00" * 8,
                                  b"\x00" * 12])
def test_msgpack_timestamp_ext_is_not_a_supported_type(data):
    # ext -1 is msgpack's timestamp; msgpack decodes it itself (bypassing
    # ext_hook) into msgpack.Timestamp, which no writer of ours produces.
    with pytest.raises(DecodeError):
        codec.unpack(_ext(-1, data))


@pytest.mark.parametrize("value", [
    np.zeros(3), np.float32(1), (1, 2), 1 + 2j, 2 ** 100,
])
def test_truncated_or_extended_encodings_raise_decode_error(value):
    data = codec.pack(value)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            codec.unpack(data[:cut])
    with pytest.raises(DecodeError):
        codec.unpack(data + b"\x00")


def test_deeply_nested_tuples_raise_decode_error():
    data = msgpack.packb(None)
    for _ in range(10_000):
        data = _ext(codec.EXT_TUPLE, b"\x91" + data)
    with pytest.raises(DecodeError):
        codec.unpack(data)


def test_deeply_nested_lists_and_maps_raise_decode_error():
    for opener in (b"\x91", b"\x81\x00"):
        with pytest.raises(DecodeError):
            codec.unpack(opener * 100_000 + b"\xc0")


@pytest.mark.parametrize("data", [
    b"\xc6\xff\xff\xff\xff" + b"x" * 10,            # bin32, 4 GiB
    b"\xdb\xff\xff\xff\xff" + b"x" * 10,            # str32, 4 GiB
    b"\xdd\xff\xff\xff\xff" + b"\xc0" * 10,         # array32, 4 G items
    b"\xdf\xff\xff\xff\xff" + b"\xc0" * 10,         # map32, 4 G pairs
    b"\xc9\xff\xff\xff\xff\x01" + b"x" * 10,        # ext32, 4 GiB
    _ext(codec.EXT_NDARRAY, msgpack.packb(["<f8", [2 ** 32, 2 ** 32]])),
    _ext(codec.EXT_NDARRAY, msgpack.packb(["<f8", [2 ** 64 - 1]])),
    _ext(codec.EXT_NDARRAY, msgpack.packb(["<f8", [0, 2 ** 63]])),
    _ext(codec.EXT_NDARRAY, msgpack.packb(["<U2147483647", [1]]) + b"ab"),
    _ext(codec.EXT_NDARRAY, msgpack.packb(["S99999999999999999999", [1]])),
    _ext(codec.EXT_NDARRAY, msgpack.packb(["<f8", [1] * 40]) + b"\0" * 8),
    _ext(codec.EXT_NPSCALAR, msgpack.packb(["<U2147483647", b"ab"])),
    _ext(codec.EXT_BIGINT, b"\x01" * (codec.MAX_BIGINT_BYTES + 1)),
    _ext(codec.EXT_BIGINT, b""),
    _ext(codec.EXT_COMPLEX, b"\x00" * 15),
], ids=["bin32", "str32", "array32", "map32", "ext32", "shape-2^64",
        "dim-2^64-1", "zero-dim-2^63", "U2^31", "huge-S", "40-dims",
        "scalar-U2^31", "bigint-too-long", "bigint-empty", "complex-short"])
def test_huge_declared_lengths_raise_decode_error_without_allocating(data):
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            codec.unpack(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding a {len(data)}-byte input allocated " \
                           f"{peak} bytes"


@pytest.mark.parametrize("data", [
    b"\xa2\xff\xfe",                 # invalid UTF-8 in a str
    b"\x81\x91\x01\x02",             # list as a map key: unhashable
    b"\x81" + _ext(codec.EXT_NDARRAY,
                   msgpack.packb(["<i1", [1]]) + b"\x01") + b"\x02",
    b"\xc1",                         # the one byte msgpack never uses
    b"\xc0\xc0",                     # trailing bytes after the value
    _ext(codec.EXT_NDARRAY, msgpack.packb(["|O", [1]]) + b"\0" * 8),
    _ext(codec.EXT_NDARRAY, msgpack.packb(["|V4", [1]]) + b"\0" * 4),
    _ext(codec.EXT_NDARRAY, msgpack.packb(["[('a', '<i4')]", [1]])),
    _ext(codec.EXT_NPSCALAR, msgpack.packb(["|O", b"\0" * 8])),
    _ext(codec.EXT_NPSCALAR, msgpack.packb(["<f8", b"\0" * 7])),
    _ext(codec.EXT_TUPLE, b"\x01"),  # tuple ext not holding an array
], ids=["bad-utf8", "unhashable-key", "array-key", "c1", "trailing",
        "object-array", "void-array", "structured-array", "object-scalar",
        "short-scalar", "tuple-of-int"])
def test_invalid_encodings_raise_decode_error(data):
    with pytest.raises(DecodeError):
        codec.unpack(data)
