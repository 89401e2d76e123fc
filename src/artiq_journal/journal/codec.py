"""msgpack encoding of dataset values, with exact round trips.

Supported: None, bool, int (any size: beyond 64 bits as an ext), float,
complex, str, bytes, list, tuple (kept distinct from list), dict, numpy arrays
(dtype, shape and value exact) and numpy scalars (dtype exact).  ``bytearray``
and ``memoryview`` are stored as msgpack bin and read back as ``bytes`` (the
same bytes; msgpack offers no hook to refuse them without walking every
value).  Anything else raises ``TypeError`` at write time: values are never
silently stringified.

Decoding never executes code and never builds objects other than the ones
above.  Damaged input raises :class:`DecodeError` (a ``ValueError``), which
the reader turns into a diagnostic.
"""

from __future__ import annotations

import functools
import re
import struct
import threading
from typing import Any, Callable, Iterator

import msgpack
import numpy as np

EXT_NDARRAY = 1
EXT_NPSCALAR = 2
EXT_TUPLE = 3
EXT_COMPLEX = 4
EXT_BIGINT = 5

_COMPLEX = struct.Struct("<dd")
#: Largest big-int ext accepted on decode (bytes of two's complement).
MAX_BIGINT_BYTES = 4096
#: How deep tuples (each an ext) may nest before decoding refuses.
MAX_EXT_DEPTH = 64
#: How deep containers (lists, maps, tuples) may nest in one payload, the
#: payload itself counting as level 1.  Enforced identically by the writer
#: (TypeError, nothing written) and the reader (``bad_payload``): deeper
#: values would exhaust the Python stack of whatever handles them next.
MAX_NESTING = 100
#: msgpack type bytes that open a container or an ext (which may hold a
#: tuple): a payload with no more of them than MAX_NESTING cannot nest
#: deeper, whatever it holds -- the test that keeps the check off the hot
#: path.
_NESTING_MARKERS = bytes(range(0x80, 0xa0)) + bytes((
    0xdc, 0xdd, 0xde, 0xdf, 0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8))
#: numpy dtype kinds whose bytes are self-describing given ``dtype.str``.
_PLAIN_KINDS = frozenset("biufcSUmM")
#: The shape of every ``dtype.str`` of those kinds: byte order, kind, item
#: size, optional datetime unit.  Checked before numpy sees the string:
#: ``np.dtype()`` also parses comma strings with ``ast.literal_eval`` and
#: accepts deprecated aliases, none of which a writer ever produces.
_DTYPE_STR = re.compile(r"[<>|=][biufcSUmM][0-9]+(\[[A-Za-z0-9]+\])?")


_pack_depth = threading.local()


class DecodeError(ValueError):
    """The bytes are not a valid encoding of a supported value."""


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None \
            or dtype.subdtype is not None:
        raise TypeError(
            f"cannot journal numpy dtype {dtype!r}: only bool, integer, "
            "float, complex, bytes (S), str (U) and datetime dtypes are "
            "supported")


def _check_array_dtype(dtype: np.dtype) -> None:
    _check_dtype(dtype)
    if dtype.itemsize == 0:
        # Its shape would not be bounded by its bytes; the reader refuses it.
        raise TypeError(f"cannot journal a numpy array of item size 0 "
                        f"({dtype.str})")


#: Arrays at least this big are framed without copying their buffer.
ZERO_COPY_MIN = 64 * 1024
_EXT32 = struct.Struct(">BIb")


class LargeArray(Exception):
    """Raised by the zero-copy packer's default hook: the record holds an
    array worth writing from its own buffer (see :func:`pack_parts`)."""


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    # msgpack.ExtType's Python __new__ only checks the field types, which
    # are right here by construction; it costs more than the rest of
    # encoding a numpy scalar.  The packer reads the two fields.
    return _tuple_new(msgpack.ExtType, (code, data))


_tuple_new = tuple.__new__


def _default_zero_copy(obj: Any) -> msgpack.ExtType:
    kind = type(obj)
    scalar = _SCALAR_STRUCT.get(kind)
    if scalar is not None:
        # The hot case (np.float64 & co.) without a second call.
        return _tuple_new(msgpack.ExtType,
                          (EXT_NPSCALAR, scalar[0] + scalar[1](obj)))
    if kind is np.ndarray and obj.nbytes >= ZERO_COPY_MIN:
        raise LargeArray
    return _default(obj)


#: ext-2 data up to the raw bytes, per numpy scalar type of a fixed-size
#: kind (filled on first use): the same bytes as
#: ``_PACK_PLAIN([dtype.str, raw])`` without packing them per value.
_SCALAR_PREFIX: dict = {}
#: (prefix, struct pack of the raw bytes) for the common numpy scalar
#: types: the same bytes as ``prefix + obj.tobytes()``, faster.
_SCALAR_STRUCT: dict = {}
#: ext-1 array header (``[dtype.str, shape]`` packed) per (dtype, shape).
_ARRAY_HEAD: dict = {}
_ARRAY_HEAD_MAX = 256
#: Packers for tuple items, one per tuple nesting depth (a packer cannot
#: be re-entered from its own default hook); per thread.
_tuple_packers = threading.local()


def _scalar_ext(obj: Any) -> msgpack.ExtType:
    prefix = _SCALAR_PREFIX.get(type(obj))
    if prefix is not None:
        return _ext(EXT_NPSCALAR, prefix + obj.tobytes())
    dtype = obj.dtype
    _check_dtype(dtype)
    raw = obj.tobytes()
    data = _PACK_PLAIN([dtype.str, raw])
    if dtype.kind in "biufc" and 0 < dtype.itemsize < 256 \
            and data.endswith(raw):
        # Fixed-size kinds: every value of this type has this dtype.str
        # (numpy scalars are native-endian) and this prefix.
        prefix = data[:len(data) - len(raw)]
        _SCALAR_PREFIX[type(obj)] = prefix
        code = _STRUCT_CODES.get(dtype.str)
        ext_head = _PACK_PLAIN(_ext(EXT_NPSCALAR, data))
        head = ext_head[:len(ext_head) - len(data)] + prefix
        if code is not None:
            pack_raw = struct.Struct(code).pack
            if pack_raw(obj) == raw:
                _SCALAR_STRUCT[type(obj)] = (prefix, pack_raw)
                _VALUE_STRUCT[type(obj)] = _prefixed_struct(head, code)
        elif dtype.str == "<f4":
            # Its own bytes, never through a C double (a signalling NaN).
            tobytes = type(obj).tobytes
            _SCALAR_STRUCT[type(obj)] = (prefix, tobytes)
            _VALUE_STRUCT[type(obj)] = functools.partial(
                _head_and_bytes, head, tobytes)
    return _ext(EXT_NPSCALAR, data)


def _head_and_bytes(head: bytes, tobytes: Callable, value: Any) -> bytes:
    return head + tobytes(value)


#: struct codes giving exactly a numpy scalar's ``tobytes()``.  Not
#: float32: struct's "f" goes through a C double, which quiets a
#: signalling NaN (other bits than the value ARTIQ holds).
_STRUCT_CODES = {"<f8": "<d", "<i8": "<q", "<i4": "<i",
                 "<i2": "<h", "|i1": "<b", "<u8": "<Q", "<u4": "<I",
                 "<u2": "<H", "|u1": "<B"}


def _array_ext(obj: np.ndarray) -> msgpack.ExtType:
    key = (obj.dtype, obj.shape)
    head = _ARRAY_HEAD.get(key)
    if head is None:
        _check_array_dtype(obj.dtype)
        head = _PACK_PLAIN([obj.dtype.str, list(obj.shape)])
        if len(_ARRAY_HEAD) >= _ARRAY_HEAD_MAX:
            _ARRAY_HEAD.clear()
        _ARRAY_HEAD[key] = head
    # tobytes() is C order whatever the array's layout.
    return _ext(EXT_NDARRAY, head + obj.tobytes())


def _is_flat_index(obj: tuple) -> bool:
    for item in obj:
        if type(item) is not int and item is not None:
            return False
    return True


def _index_tuple_data(obj: tuple) -> bytes | None:
    """The ext-3 data of a mutate index -- a tuple of ints/None, or of up
    to 4 such tuples -- packed by the plain packer in one call (ints and
    None pack alike in both packers; inner tuples go in as ready ext
    objects), or None for anything else.  ``type(x) is int``: not bool."""
    items = []
    try:
        for item in obj:
            if type(item) is int or item is None:
                items.append(item)
            elif type(item) is tuple and len(item) <= 4 \
                    and _is_flat_index(item):
                items.append(_tuple_new(msgpack.ExtType, (
                    EXT_TUPLE, _PACK_PLAIN(list(item)))))
            else:
                return None
        return _PACK_PLAIN(items)
    except OverflowError:
        return None  # an int beyond 64 bits: a big-int ext, packed below


def _tuple_ext(obj: tuple) -> msgpack.ExtType:
    if len(obj) <= 4:
        data = _index_tuple_data(obj)
        if data is not None:
            return _tuple_new(msgpack.ExtType, (EXT_TUPLE, data))
    depth = getattr(_pack_depth, "value", 0)
    if depth >= MAX_EXT_DEPTH:
        raise TypeError(f"cannot journal tuples nested more than "
                        f"{MAX_EXT_DEPTH} deep (the reader refuses them)")
    packers = getattr(_tuple_packers, "by_depth", None)
    if packers is None:
        packers = _tuple_packers.by_depth = [None] * MAX_EXT_DEPTH
    packer = packers[depth]
    if packer is None:
        packer = packers[depth] = make_packer()
    _pack_depth.value = depth + 1
    try:
        # The nesting bound is checked by the caller on the whole payload
        # (which holds these bytes), as for lists.
        data = packer.pack(list(obj))
    except BaseException:
        # A pack that raised may leave bytes in the packer's buffer.
        packers[depth] = None
        raise
    finally:
        _pack_depth.value = depth
    return _ext(EXT_TUPLE, data)


# -- Record payloads without the packer (the dataset hooks' hot path) ------
#
# ``encode_append(key, value)`` / ``encode_mutate(key, index, value)`` give
# exactly ``pack([key, value])`` / ``pack([key, index, value])`` for the
# common shapes of an experiment's calls, built from cached pieces: the
# msgpack ``default`` hook (a Python call from C per numpy scalar, tuple or
# array, plus the packer's own call) costs more than the record's write.
# They return None for anything else, and the caller then packs as usual:
# no value gets an encoding here that the packer would not give it.  Every
# cached piece is cut from the packer's own output for a value of the same
# type (tests compare the results with pack() byte for byte).

#: key -> ``0x92`` + packed key (the head of an append payload); exact
#: ``str`` keys only (the packer refuses subclasses).
_APPEND_HEAD: dict = {}
#: key -> ``0x93`` + packed key (the head of a mutate payload).
_MUTATE_HEAD: dict = {}
_HEAD_MAX = 1024


def _prefixed_struct(prefix: bytes, code: str) -> Callable[[Any], bytes]:
    """``v -> prefix + struct.pack(code, v)`` in one C call."""
    return functools.partial(
        struct.Struct(f"{code[0]}{len(prefix)}s{code[1:]}").pack, prefix)


#: Exact type -> ``encode(v)``, giving ``pack(v)`` for every ``v`` of the
#: type in one C call (a fixed prefix, then the value by struct).  Python
#: ``float`` is preset; numpy scalar types are added by ``_scalar_ext`` the
#: first time one is packed.
_VALUE_STRUCT: dict = {float: _prefixed_struct(b"\xcb", ">d")}
#: (dtype, shape) -> ext 1 header + array header, for arrays smaller than
#: ZERO_COPY_MIN: ``pack(a) == prefix + a.tobytes()``.
_ARRAY_PREFIX: dict = {}
#: index (a tuple of tuples of ints/None) -> its ext 3 bytes.
_INDEX_CACHE: dict = {}
_INDEX_CACHE_MAX = 1024
#: ext 3 framing for tuple data of n bytes (n < 256), indexed by n.
_TUPLE_EXT_HEAD = [b""] * 256
#: encode_append's common cases, for a caller that inlines them (the
#: dataset hook): ``append_head(key)`` -> the payload's head for an
#: exact-str key seen before, or None; ``value_encoding(type(v))`` ->
#: ``encode`` or None; ``array_prefix((a.dtype, a.shape))`` for an exact
#: ndarray ``a`` -> ``prefix`` or None.  Then ``append_head(key) +
#: encode(v)`` / ``append_head(key) + prefix + a.tobytes()`` is ``pack([key,
#: v])``.
value_encoding = _VALUE_STRUCT.get
append_head = _APPEND_HEAD.get
array_prefix = _ARRAY_PREFIX.get


def _head(cache: dict, marker: bytes, key: Any) -> bytes | None:
    # The miss path of encode_append/encode_mutate (key is an exact str).
    try:
        head = marker + _PACK_PLAIN(key)
    except Exception:   # a lone surrogate: the packer raises it again
        return None
    if len(cache) >= _HEAD_MAX:
        cache.clear()
    cache[key] = head
    return head


def _small_array_bytes(arr: np.ndarray) -> bytes | None:
    key = (arr.dtype, arr.shape)
    prefix = _ARRAY_PREFIX.get(key)
    if prefix is None:
        if arr.nbytes >= ZERO_COPY_MIN:
            return None     # written from its own memory (pack_parts)
        try:
            ext = _array_ext(arr)
        except TypeError:
            return None     # refused by the packer, with its message
        raw = arr.tobytes()
        full = _PACK_PLAIN(ext)
        prefix = full[:len(full) - len(raw)]
        if len(_ARRAY_PREFIX) >= _ARRAY_HEAD_MAX:
            _ARRAY_PREFIX.clear()
        _ARRAY_PREFIX[key] = prefix
        return full
    return prefix + arr.tobytes()


def _value_bytes(value: Any) -> bytes | None:
    """``pack(value)`` for what has no _VALUE_STRUCT entry (yet): a small
    array, or a numpy scalar seen for the first time (then registered)."""
    if type(value) is np.ndarray:
        return _small_array_bytes(value)
    if isinstance(value, np.generic) and type(value) not in _SCALAR_PREFIX:
        try:
            _scalar_ext(value)
        except TypeError:
            return None
        enc = _VALUE_STRUCT.get(type(value))
        if enc is not None:
            return enc(value)
    return None


def _index_bytes(index: Any) -> bytes | None:
    """``pack(index)`` for a mutate index made of ints and None: a slice
    (packed as the tuple ``(start, stop, step)``, ARTIQ's form), a tuple
    of them, or a tuple of such tuples (one per dimension).  ``type(x) is
    int``: never a bool or an int subclass (the packer's business)."""
    try:
        kind = type(index)
        if kind is slice:
            start, stop, step = index.start, index.stop, index.step
            if (type(start) is int or start is None) \
                    and (type(stop) is int or stop is None) \
                    and (type(step) is int or step is None):
                data = _PACK_PLAIN((start, stop, step))
                return _TUPLE_EXT_HEAD[len(data)] + data
            return None
        if kind is not tuple:
            return None
        for item in index:
            if type(item) is int or item is None:
                continue
            if type(item) is tuple:
                break
            return None
        else:
            data = _PACK_PLAIN(index)   # a tuple packs as an array here
            return _TUPLE_EXT_HEAD[len(data)] + data
        # One tuple per dimension.  Equal tuples may differ in item types
        # (1 == 1.0 == True), so a cache hit is still checked item by item.
        for item in index:
            if type(item) is not tuple:
                return None
            for x in item:
                if type(x) is not int and x is not None:
                    return None
        mid = _INDEX_CACHE.get(index)
        if mid is None:
            parts = [_PACK_ARRAY_HEADER(len(index))]
            for item in index:
                data = _PACK_PLAIN(item)
                parts.append(_TUPLE_EXT_HEAD[len(data)] + data)
            data = b"".join(parts)
            mid = _TUPLE_EXT_HEAD[len(data)] + data
            if len(_INDEX_CACHE) >= _INDEX_CACHE_MAX:
                _INDEX_CACHE.clear()
            _INDEX_CACHE[index] = mid
        return mid
    except (OverflowError, IndexError):
        # An int beyond 64 bits (a big-int ext), or tuple data too long
        # for the ext 8 table: the packer's business.
        return None


def encode_append(key: Any, value: Any) -> bytes | None:
    """``pack([key, value])`` for a str key and a float, a numpy scalar of
    a common type or a numpy array under ZERO_COPY_MIN; else None."""
    if type(key) is not str:
        return None
    head = _APPEND_HEAD.get(key) or _head(_APPEND_HEAD, b"\x92", key)
    if head is None:
        return None
    kind = type(value)
    enc = _VALUE_STRUCT.get(kind)
    if enc is not None:
        return head + enc(value)
    if kind is np.ndarray:
        prefix = _ARRAY_PREFIX.get((value.dtype, value.shape))
        if prefix is not None:
            return head + prefix + value.tobytes()
    body = _value_bytes(value)
    return None if body is None else head + body


def encode_mutate(key: Any, index: Any, value: Any) -> bytes | None:
    """``pack([key, index, value])`` for a str key, an index of ints/None
    (an int, a tuple -- a slice's ``(start, stop, step)`` -- or a tuple of
    tuples) and a value as in :func:`encode_append`; else None."""
    if type(key) is not str:
        return None
    head = _MUTATE_HEAD.get(key) or _head(_MUTATE_HEAD, b"\x93", key)
    if head is None:
        return None
    kind = type(index)
    if kind is int:
        if 0 <= index < 128:
            mid = _FIXINT[index]
        elif -(1 << 63) <= index < (1 << 64):
            mid = _PACK_PLAIN(index)
        else:
            return None     # a big-int ext
    elif kind is slice:
        # _index_bytes' first case, inlined (the common one).
        start, stop, step = index.start, index.stop, index.step
        if not ((type(start) is int or start is None)
                and (type(stop) is int or stop is None)
                and (type(step) is int or step is None)):
            return None
        try:
            data = _PACK_PLAIN((start, stop, step))
        except OverflowError:
            return None
        mid = _TUPLE_EXT_HEAD[len(data)] + data
    else:
        mid = _index_bytes(index)
        if mid is None:
            return None
    kind = type(value)
    enc = _VALUE_STRUCT.get(kind)
    if enc is not None:
        return head + mid + enc(value)
    if kind is np.ndarray:
        prefix = _ARRAY_PREFIX.get((value.dtype, value.shape))
        if prefix is not None:
            return head + mid + prefix + value.tobytes()
    body = _value_bytes(value)
    return None if body is None else head + mid + body


def _default(obj: Any) -> msgpack.ExtType:
    # Called by msgpack for everything it does not pack natively.  With
    # strict_types=True that includes tuples and subclasses such as
    # numpy.float64 (a float subclass), so their exact type survives.
    kind = type(obj)
    if kind in _SCALAR_PREFIX:
        return _ext(EXT_NPSCALAR, _SCALAR_PREFIX[kind] + obj.tobytes())
    if kind is np.ndarray:
        return _array_ext(obj)
    if kind is tuple:
        return _tuple_ext(obj)
    if isinstance(obj, np.generic):
        return _scalar_ext(obj)
    if type(obj) is complex:
        return msgpack.ExtType(EXT_COMPLEX, _COMPLEX.pack(obj.real, obj.imag))
    if type(obj) is int:
        # Only reached for ints msgpack cannot hold in 64 bits.
        length = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(EXT_BIGINT,
                               obj.to_bytes(length, "little", signed=True))
    if isinstance(obj, (bool, int, float, str, bytes, list, dict, tuple)):
        # Subclasses of builtins (IntEnum, OrderedDict, namedtuple, ...):
        # refuse rather than lose their type silently.
        raise TypeError(
            f"cannot journal value of type {type(obj).__qualname__}: "
            "subclasses of built-in types are not supported; convert to the "
            "plain built-in type first")
    raise TypeError(
        f"cannot journal value of type {type(obj).__module__}."
        f"{type(obj).__qualname__}: supported are None, bool, int, float, "
        "complex, str, bytes, list, tuple, dict and numpy arrays/scalars")


def nesting_depth(value: Any, limit: int = MAX_NESTING) -> int:
    """How deep lists, maps and tuples nest in ``value`` (a scalar: 0),
    counting at most to ``limit + 1``.  Iterative: any depth is safe."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        kind = type(obj)
        if kind is list or kind is tuple:
            children = obj
        elif kind is dict:
            children = [*obj.keys(), *obj.values()]
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth + 1) for child in children
                     if type(child) in (list, tuple, dict))
    return deepest


_CONTAINERS = frozenset((list, tuple, dict))


def nesting_exceeded(data: bytes, value: Any) -> bool:
    """Whether ``value``, encoded as ``data``, nests deeper than
    :data:`MAX_NESTING`.  Cheap unless ``data`` holds more container type
    bytes than that (then the value itself is measured)."""
    if len(data) <= MAX_NESTING:
        return False
    if type(value) is list and len(value) <= 8:
        # A record payload such as [key, value]: no container inside, so
        # depth 1 (arrays and scalars do not nest).
        for item in value:
            if type(item) in _CONTAINERS:
                break
        else:
            return False
    if len(data) - len(data.translate(None, _NESTING_MARKERS)) \
            <= MAX_NESTING:
        return False
    return nesting_depth(value) > MAX_NESTING


def make_packer(zero_copy: bool = False) -> msgpack.Packer:
    """A packer for journal payloads; reuse one per writer (it is not
    thread-safe).  ``zero_copy``: raise :class:`LargeArray` instead of
    copying a large array (the writer then calls :func:`pack_parts`)."""
    return msgpack.Packer(default=_default_zero_copy if zero_copy
                          else _default, strict_types=True,
                          use_bin_type=True, datetime=False)


def pack_parts(obj: Any) -> list:
    """``pack(obj)`` as a list of buffers whose concatenation is exactly
    those bytes, with each large C-contiguous array that is a direct
    element of the list ``obj`` left as a memoryview of its own memory
    (msgpack ext32 header + array header, then the buffer).  Arrays nested
    deeper are copied as usual."""
    packer = make_packer()
    if type(obj) is not list:
        return [packer.pack(obj)]
    parts = [packer.pack_array_header(len(obj))]
    for item in obj:
        if type(item) is np.ndarray and item.nbytes >= ZERO_COPY_MIN:
            _check_dtype(item.dtype)
            arr = np.ascontiguousarray(item)
            head = _PACK_PLAIN([arr.dtype.str, list(arr.shape)])
            parts.append(_EXT32.pack(0xc9, len(head) + arr.nbytes,
                                     EXT_NDARRAY) + head)
            # A uint8 view: every dtype allowed here (datetime64 included,
            # which has no buffer-protocol format of its own) as raw bytes.
            parts.append(memoryview(arr.reshape(-1).view(np.uint8)))
        else:
            parts.append(packer.pack(item))
    return parts


def _array_header_size(n: int) -> int:
    return 1 if n <= 15 else 3 if n <= 0xffff else 5


def pack_stream(obj: Any, chunk_items: int = 1 << 16) -> Iterator:
    """The bytes of ``pack(obj)``, exactly, as a sequence of pieces (bytes,
    or memoryviews of large C-contiguous arrays' own memory): for writing
    a large value without holding its whole encoding.  Maps and lists are
    opened here, list items packed ``chunk_items`` at a time; an array of
    at least :data:`ZERO_COPY_MIN` bytes is not copied.  Raises TypeError
    as :func:`pack` does (nesting included) -- possibly after some pieces:
    a caller must then discard what it wrote."""
    packer = make_packer()
    try:
        yield from _stream(obj, 1, packer, chunk_items)
    except ValueError as exc:
        # msgpack's own recursion limit: deeper than anything we accept.
        raise TypeError(f"cannot journal value: {exc}") from None


def _too_deep() -> TypeError:
    return TypeError(f"cannot journal containers nested more than "
                     f"{MAX_NESTING} levels deep (the reader refuses them)")


def _stream(obj: Any, depth: int, packer: msgpack.Packer,
            chunk_items: int) -> Iterator:
    kind = type(obj)
    if kind is dict:
        if depth > MAX_NESTING:
            raise _too_deep()
        yield packer.pack_map_header(len(obj))
        for key, value in obj.items():
            yield from _stream(key, depth + 1, packer, chunk_items)
            yield from _stream(value, depth + 1, packer, chunk_items)
    elif kind is list:
        if depth > MAX_NESTING:
            raise _too_deep()
        n = len(obj)
        yield packer.pack_array_header(n)
        for start in range(0, n, chunk_items):
            part = obj[start:start + chunk_items]
            head = _array_header_size(len(part))
            if type(part[0]) is float:
                # Most likely a scan's floats: packed first, then checked
                # to be item after item a float 64 (0xcb + 8 bytes) from
                # the first to the last -- scalars only, nothing nests.
                data = packer.pack(part)
                if len(data) == head + 9 * len(part) and (np.frombuffer(
                        data, np.uint8)[head::9] == 0xcb).all():
                    yield memoryview(data)[head:]
                    continue
            types = set(map(type, part))
            if types & _CONTAINERS or np.ndarray in types:
                for item in part:
                    yield from _stream(item, depth + 1, packer, chunk_items)
            else:
                # Scalars only (one set() over the types, in C): packed as
                # a list, its header left out.
                yield memoryview(packer.pack(part))[head:]
    elif kind is np.ndarray and obj.nbytes >= ZERO_COPY_MIN:
        _check_array_dtype(obj.dtype)
        arr = np.ascontiguousarray(obj)
        head = _PACK_PLAIN([arr.dtype.str, list(arr.shape)])
        yield _EXT32.pack(0xc9, len(head) + arr.nbytes, EXT_NDARRAY) + head
        yield memoryview(arr.reshape(-1).view(np.uint8))
    else:
        if kind is tuple and nesting_depth(obj) + depth - 1 > MAX_NESTING:
            raise _too_deep()
        yield packer.pack(obj)


_PLAIN_PACKER = msgpack.Packer(use_bin_type=True, strict_types=False)
_PACK_PLAIN = _PLAIN_PACKER.pack
_PACK_ARRAY_HEADER = _PLAIN_PACKER.pack_array_header
_FIXINT = [bytes((i,)) for i in range(128)]
for _n in range(1, 256):
    _TUPLE_EXT_HEAD[_n] = _PACK_PLAIN(msgpack.ExtType(EXT_TUPLE, bytes(_n))
                                      )[:-_n]
del _n


def check_nesting(data: bytes, obj: Any) -> None:
    """Raise TypeError when ``obj`` (encoded as ``data``) nests deeper than
    :data:`MAX_NESTING`: the reader would refuse the record."""
    if nesting_exceeded(data, obj):
        raise TypeError(f"cannot journal containers nested more than "
                        f"{MAX_NESTING} levels deep (the reader refuses "
                        "them)")


def pack(obj: Any) -> bytes:
    """Encode ``obj``; raises ``TypeError`` for unsupported values."""
    try:
        data = make_packer().pack(obj)
    except ValueError as exc:
        # msgpack's own recursion limit: deeper than anything we accept.
        raise TypeError(f"cannot journal value: {exc}") from None
    check_nesting(data, obj)
    return data


class _Decoder:
    """ext_hook with a depth counter so nested tuples cannot exhaust the
    Python stack."""

    __slots__ = ("depth", "max_bin")

    def __init__(self, max_bin: int) -> None:
        self.depth = 0
        self.max_bin = max_bin

    def __call__(self, code: int, data: bytes) -> Any:
        try:
            if code == EXT_NDARRAY:
                return _decode_ndarray(data)
            if code == EXT_NPSCALAR:
                dtype_str, raw = _unpack_plain(data, 2)
                dtype = _dtype(dtype_str)
                if not isinstance(raw, bytes):
                    raise DecodeError("numpy scalar size mismatch")
                if dtype.itemsize == 0:
                    # np.str_("") / np.bytes_(b""): dtype <U0 / |S0, but
                    # tobytes() gives one NUL char; frombuffer refuses item
                    # size 0.
                    if raw.strip(b"\0") or len(raw) > 4:
                        raise DecodeError("numpy scalar size mismatch")
                    return dtype.type()
                if len(raw) != dtype.itemsize:
                    raise DecodeError("numpy scalar size mismatch")
                return np.frombuffer(raw, dtype=dtype)[0]
            if code == EXT_TUPLE:
                if self.depth >= MAX_EXT_DEPTH:
                    raise DecodeError("tuples nested too deeply")
                self.depth += 1
                try:
                    items = _unpackb(data, self)
                finally:
                    self.depth -= 1
                if not isinstance(items, list):
                    raise DecodeError("tuple ext does not hold an array")
                return tuple(items)
            if code == EXT_COMPLEX:
                if len(data) != _COMPLEX.size:
                    raise DecodeError("complex ext has wrong size")
                return complex(*_COMPLEX.unpack(data))
            if code == EXT_BIGINT:
                if not 0 < len(data) <= MAX_BIGINT_BYTES:
                    raise DecodeError("big int ext has bad size")
                return int.from_bytes(data, "little", signed=True)
        except DecodeError:
            raise
        except Exception as exc:
            # Whatever numpy or msgpack raise on hostile input (ValueError,
            # OverflowError, MemoryError, RecursionError, ...): the reader
            # must see damage, never an exception it does not expect.
            raise DecodeError(
                f"bad ext type {code}: {type(exc).__name__}: {exc}") from None
        raise DecodeError(f"unknown ext type {code}")


def _dtype(dtype_str: Any) -> np.dtype:
    """The dtype a writer stored as ``dtype.str``; only that exact,
    canonical spelling is accepted."""
    if type(dtype_str) is not str or len(dtype_str) > 32:
        raise DecodeError("bad dtype field")
    return _checked_dtype(dtype_str)


# Cached: a journal holds a few dtypes many times.  Only valid ones are
# kept (a DecodeError is not cached), and np.dtype objects are immutable.
@functools.lru_cache(maxsize=64)
def _checked_dtype(dtype_str: str) -> np.dtype:
    if _DTYPE_STR.fullmatch(dtype_str) is None:
        raise DecodeError(f"bad dtype field {dtype_str!r:.40}")
    try:
        dtype = np.dtype(dtype_str)
    except Exception as exc:
        raise DecodeError(f"bad dtype {dtype_str!r}: {exc}") from None
    if dtype.str != dtype_str:
        raise DecodeError(f"dtype {dtype_str!r} is not in canonical form "
                          f"({dtype.str!r})")
    try:
        _check_dtype(dtype)
    except TypeError as exc:
        raise DecodeError(str(exc)) from None
    return dtype


def _unpack_plain(data: bytes, n: int) -> list:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True,
                                max_buffer_size=len(data) or 1)
    unpacker.feed(data)
    try:
        fields = unpacker.unpack()
    except msgpack.OutOfData:
        raise DecodeError("truncated ext header") from None
    if not isinstance(fields, list) or len(fields) != n:
        raise DecodeError("bad ext header")
    return fields


def _decode_ndarray(data: bytes) -> np.ndarray:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data) or 1)
    unpacker.feed(data)
    try:
        head = unpacker.unpack()
    except msgpack.OutOfData:
        raise DecodeError("truncated array header") from None
    if not (isinstance(head, list) and len(head) == 2
            and isinstance(head[1], list)
            and all(type(d) is int and d >= 0 for d in head[1])
            and len(head[1]) <= 32):
        raise DecodeError("bad array header")
    dtype = _dtype(head[0])
    if dtype.itemsize == 0:
        # No writer produces one, and its shape is not bounded by the body.
        raise DecodeError(f"array of item size 0 ({dtype.str})")
    shape = tuple(head[1])
    count = 1
    for d in shape:
        count *= d
    body = memoryview(data)[unpacker.tell():]
    if count * dtype.itemsize != len(body):
        raise DecodeError(
            f"array body is {len(body)} bytes, shape {shape} of {dtype.str} "
            f"needs {count * dtype.itemsize}")
    # copy(): the result must own writable memory, independent of the record
    # buffer, so later mutate() calls on it behave like on the original.
    return np.frombuffer(body, dtype=dtype, count=count).reshape(shape).copy()


def _unpackb(data: bytes, hook: _Decoder) -> Any:
    return msgpack.unpackb(data, ext_hook=hook, raw=False, use_list=True,
                           strict_map_key=False,
                           max_bin_len=hook.max_bin, max_str_len=hook.max_bin,
                           max_ext_len=hook.max_bin)


#: msgpack decodes ext type -1 (timestamp) itself, bypassing ext_hook.
#: These are the only headers of a well-formed one (4, 8 or 12 bytes).
_TIMESTAMP_HEADERS = (b"\xd6\xff", b"\xd7\xff", b"\xc7\x04\xff",
                      b"\xc7\x08\xff", b"\xc7\x0c\xff")


def _could_hold_timestamp(data: bytes) -> bool:
    # The single memchr first: this runs on every record a reader decodes.
    # Then plain ``in`` tests, no generator: a few percent of records (any
    # float with a 0xff byte) get this far.
    if b"\xff" not in data:
        return False
    h0, h1, h2, h3, h4 = _TIMESTAMP_HEADERS
    return (h0 in data or h1 in data or h2 in data or h3 in data
            or h4 in data or b"\xc8\x00" in data
            or b"\xc9\x00\x00\x00" in data)


def _reject_timestamps(value: Any) -> None:
    # Decoded values have exact built-in types.  One set() of the item
    # types per container (in C) instead of a call per item: a checkpoint
    # holds lists of millions of floats.
    timestamp = msgpack.Timestamp
    if type(value) is timestamp:
        raise DecodeError("msgpack timestamp ext is not a journal type")
    stack = [value]
    while stack:
        obj = stack.pop()
        kind = type(obj)
        if kind is list or kind is tuple:
            items = obj
        elif kind is dict:
            items = [*obj.keys(), *obj.values()]
        else:
            continue
        types = set(map(type, items))
        if timestamp in types:
            raise DecodeError("msgpack timestamp ext is not a journal type")
        if not types.isdisjoint(_CONTAINERS):
            stack.extend(item for item in items
                         if type(item) in _CONTAINERS)


def make_unpack(max_bytes: int) -> Callable[[bytes], Any]:
    """A reusable decoder for many payloads of at most ``max_bytes``: same
    contract as :func:`unpack`, without rebuilding the decoder per call
    (the reader decodes millions of records)."""
    hook = _Decoder(max_bytes)
    unpackb = functools.partial(
        msgpack.unpackb, ext_hook=hook, raw=False, use_list=True,
        strict_map_key=False, max_bin_len=max_bytes, max_str_len=max_bytes,
        max_ext_len=max_bytes)

    def unpack_one(data: bytes) -> Any:
        try:
            value = unpackb(data)
            if nesting_exceeded(data, value):
                raise DecodeError(f"containers nested deeper than "
                                  f"{MAX_NESTING} levels")
            if _could_hold_timestamp(data):
                _reject_timestamps(value)
            return value
        except DecodeError:
            hook.depth = 0
            raise
        except Exception as exc:
            # ExtraData, FormatError, StackError, UnicodeDecodeError,
            # unhashable keys -- anything: callers catch DecodeError only.
            hook.depth = 0
            raise DecodeError(
                f"bad msgpack: {type(exc).__name__}: {exc}") from None
    return unpack_one


def unpack(data: bytes, max_bytes: int | None = None) -> Any:
    """Decode one value.  Raises :class:`DecodeError` on any damage,
    including trailing bytes, invalid UTF-8 and unhashable map keys."""
    limit = max_bytes if max_bytes is not None else max(len(data), 1)
    return make_unpack(limit)(data)


# --- snapshot streaming (journal/snapshot.py) -----------------------------------
#
# The encoding of a whole run state, written as it is produced.  Same bytes
# as pack() -- tests/test_snapshot_stream.py holds it to that -- but packed
# into one reused packer buffer (no bytes object, so no copy, per piece),
# containers of scalars in one packer call, and large arrays passed on from
# their own memory.


def snapshot_stream_pack(obj: Any, sink: Callable[[memoryview], Any], *,
                         chunk_items: int = 1 << 16,
                         flush_bytes: int = 1 << 20) -> None:
    """Feed the bytes of ``pack(obj)``, exactly and in order, to ``sink``
    as a sequence of memoryviews; return when all are fed.

    A piece is valid only during its ``sink`` call (most are views of the
    packer's own buffer, reused after the call; large C-contiguous arrays
    are views of their own memory): the sink must not keep it.  About
    ``flush_bytes`` of encoding is held at a time, plus up to
    ``chunk_items`` items of one list.  Raises TypeError as :func:`pack`
    does (nesting included) -- possibly after some pieces: a caller must
    then discard what it wrote."""
    streamer = _SnapshotStreamer(sink, chunk_items, flush_bytes)
    streamer.value(obj, 1)
    streamer.flush()


def _leaves_only(items: Any) -> bool:
    """No container and no array among ``items`` (one set() of their
    types, in C): they pack in one call, nothing in them nests."""
    types = set(map(type, items))
    return types.isdisjoint(_CONTAINERS) and np.ndarray not in types


class _SnapshotStreamer:
    __slots__ = ("packer", "sink", "chunk_items", "flush_bytes")

    def __init__(self, sink: Callable[[memoryview], Any], chunk_items: int,
                 flush_bytes: int) -> None:
        # make_packer()'s settings, so the bytes are pack()'s; autoreset
        # off: every pack appends to the one buffer that flush() hands on.
        self.packer = msgpack.Packer(default=_default, strict_types=True,
                                     use_bin_type=True, datetime=False,
                                     autoreset=False)
        self.sink = sink
        self.chunk_items = chunk_items
        self.flush_bytes = flush_bytes

    def flush(self, skip: int = 0) -> None:
        """Hand on the buffer (less its first ``skip`` bytes) and empty
        it."""
        view = self.packer.getbuffer()
        if len(view) > skip:
            self.sink(view[skip:] if skip else view)
        # Released before the reset: a packer must not move or reuse
        # memory still exported (msgpack >= 1.1 refuses; older ones would
        # not notice).  Not on the way out of a failed sink: the
        # exception's frames may still hold views of it, and this packer
        # is not used again.
        view.release()
        self.packer.reset()

    def _maybe_flush(self) -> None:
        if len(self.packer.getbuffer()) >= self.flush_bytes:
            self.flush()

    def value(self, obj: Any, depth: int) -> None:
        kind = type(obj)
        packer = self.packer
        if kind is dict:
            if depth > MAX_NESTING:
                raise _too_deep()
            if len(obj) <= self.chunk_items and _leaves_only(obj.values()) \
                    and _leaves_only(obj.keys()):
                packer.pack(obj)
            else:
                packer.pack_map_header(len(obj))
                for key, item in obj.items():
                    self.value(key, depth + 1)
                    self.value(item, depth + 1)
        elif kind is list:
            if depth > MAX_NESTING:
                raise _too_deep()
            if len(obj) <= self.chunk_items and _leaves_only(obj):
                packer.pack(obj)
            else:
                self._long_list(obj, depth)
        elif kind is np.ndarray and obj.nbytes >= ZERO_COPY_MIN:
            _check_array_dtype(obj.dtype)
            arr = np.ascontiguousarray(obj)
            head = _PACK_PLAIN([arr.dtype.str, list(arr.shape)])
            self.flush()
            self.sink(memoryview(_EXT32.pack(
                0xc9, len(head) + arr.nbytes, EXT_NDARRAY) + head))
            # A uint8 view: every dtype allowed here (datetime64 included,
            # which has no buffer-protocol format of its own) as raw bytes.
            self.sink(memoryview(arr.reshape(-1).view(np.uint8)))
        else:
            if kind is tuple and nesting_depth(obj) + depth - 1 > MAX_NESTING:
                raise _too_deep()
            packer.pack(obj)
        self._maybe_flush()

    def _long_list(self, obj: list, depth: int) -> None:
        packer = self.packer
        chunk = self.chunk_items
        n = len(obj)
        packer.pack_array_header(n)
        for start in range(0, n, chunk):
            part = obj[start:start + chunk]
            head = _array_header_size(len(part))
            if type(part[0]) is float and type(part[-1]) is float:
                # Most likely a scan's floats: packed first, then checked
                # to be item after item a float 64 (0xcb + 8 bytes) from
                # the first to the last -- scalars only, nothing nests.
                self.flush()
                try:
                    packer.pack(part)
                except ValueError as exc:
                    # msgpack's own recursion limit: deeper than anything
                    # we accept.
                    raise TypeError(f"cannot journal value: {exc}") from None
                view = packer.getbuffer()
                floats = len(view) == head + 9 * len(part) and bool((
                    np.frombuffer(view, np.uint8)[head::9] == 0xcb).all())
                view.release()
                if floats:
                    self.flush(head)
                    continue
                packer.reset()  # not all floats: packed again below
            if _leaves_only(part):
                # Scalars only: packed as a list, its header left out.
                self.flush()
                packer.pack(part)
                self.flush(head)
            else:
                for item in part:
                    self.value(item, depth + 1)
