"""PYON v2 (sipyco's serialization format), written from its specification.

PYON v2 is JSON with compact separators where values JSON cannot express are
tagged objects ``{"__jsonclass__": [name, args]}``:

=============  =============================================================
name           args
=============  =============================================================
tuple          ``[items]``
dict           ``[[[key, value], ...]]`` (a dict with any non-str key)
complex        ``[real, imag]``
bytes          ``[base64]``
set            ``[[items]]``
slice          ``[start, stop, step]``
Fraction       ``[numerator, denominator]``
OrderedDict    ``[[[key, value], ...]]`` (decoded only: sipyco itself
               encodes OrderedDicts as plain dicts)
nparray        ``[shape, dtype.str, base64 of C-contiguous data]``
npscalar       ``[dtype.str, base64 of the scalar's bytes]``
=============  =============================================================

Encoding follows sipyco's rules exactly, so ``sipyco.pyon.decode`` reads our
output back equal and ``encode`` produces the same text sipyco would: types
JSON handles natively (including subclasses such as ``numpy.float64`` and
``numpy.str_``) are written as JSON; other types are looked up by exact type.
Decoding only builds data (no ``eval``, no imports), so it is safe on
untrusted input.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections import OrderedDict
from fractions import Fraction
from typing import Any, Callable

import numpy

from .journal.fsio import fsync_path

__all__ = ["encode", "decode", "store_file", "load_file"]

_TAG = "__jsonclass__"


class _TaggedTuple:
    __slots__ = ("items",)

    def __init__(self, items: list) -> None:
        self.items = items


class _TaggedDict:
    __slots__ = ("pairs",)

    def __init__(self, pairs: list) -> None:
        self.pairs = pairs


def _prepare(obj: Any) -> Any:
    """Replace what ``json`` would silently coerce (tuples to lists, dict
    keys to strings) by markers, recursively through dict/list/tuple."""
    if isinstance(obj, dict):
        if _TAG in obj:
            raise ValueError(f"dict key {_TAG!r} is reserved by PYON")
        if all(isinstance(k, str) for k in obj):
            return {k: _prepare(v) for k, v in obj.items()}
        return _TaggedDict([[_prepare(k), _prepare(v)]
                            for k, v in obj.items()])
    if isinstance(obj, list):
        return [_prepare(v) for v in obj]
    if isinstance(obj, tuple):
        return _TaggedTuple([_prepare(v) for v in obj])
    return obj


def _b64(data: Any) -> str:
    return base64.b64encode(data).decode()


def _encode_array(x: numpy.ndarray) -> list:
    if x.dtype.kind == "O":
        raise TypeError(f"`{x!r}`: numpy arrays with object dtype are not "
                        f"PYON encodable")
    return [list(x.shape), x.dtype.str, _b64(numpy.ascontiguousarray(x).data)]


_NUMPY_SCALARS = ("bool_", "bytes_", "str_", "int8", "int16", "int32",
                  "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                  "float32", "float64", "complex64", "complex128",
                  "timedelta64", "datetime64", "void")

_ENCODERS: dict[type, tuple[str, Callable[[Any], list]]] = {
    _TaggedTuple: ("tuple", lambda x: [x.items]),
    _TaggedDict: ("dict", lambda x: [x.pairs]),
    complex: ("complex", lambda x: [x.real, x.imag]),
    bytes: ("bytes", lambda x: [_b64(x)]),
    set: ("set", lambda x: [[_prepare(v) for v in x]]),
    slice: ("slice", lambda x: [_prepare(x.start), _prepare(x.stop),
                                _prepare(x.step)]),
    Fraction: ("Fraction", lambda x: [x.numerator, x.denominator]),
    numpy.ndarray: ("nparray", _encode_array),
}
for _name in _NUMPY_SCALARS:
    _ENCODERS[getattr(numpy, _name)] = (
        "npscalar", lambda x: [x.dtype.str, _b64(x.data)])


def _default(obj: Any) -> dict:
    try:
        name, encode_args = _ENCODERS[type(obj)]
    except KeyError:
        raise TypeError(f"`{obj!r}`: Object of type "
                        f"`{obj.__class__.__name__}` is not PYON "
                        f"encodable") from None
    return {_TAG: [name, encode_args(obj)]}


def encode(x: Any, pretty: bool = False) -> str:
    """PYON v2 text of ``x``, identical to ``sipyco.pyon.encode(x, pretty)``.

    Raises ``TypeError`` for values PYON cannot represent.
    """
    if pretty:
        return json.dumps(_prepare(x), default=_default, indent=4)
    return json.dumps(_prepare(x), default=_default, separators=(",", ":"))


def _decode_array(shape: list, dtype: str, data: str) -> numpy.ndarray:
    # copy: frombuffer gives a read-only view of the decoded bytes
    return numpy.frombuffer(base64.b64decode(data),
                            dtype).reshape(shape).copy()


_DECODERS: dict[str, Callable[..., Any]] = {
    "tuple": tuple,
    "dict": dict,
    "complex": complex,
    "bytes": base64.b64decode,
    "set": set,
    "slice": slice,
    "Fraction": Fraction,
    "OrderedDict": OrderedDict,
    "nparray": _decode_array,
    "npscalar": lambda dtype, data: numpy.frombuffer(
        base64.b64decode(data), dtype)[0],
}


def _object_hook(obj: dict) -> Any:
    if _TAG not in obj:
        return obj
    name, args = obj[_TAG]
    try:
        build = _DECODERS[name]
    except KeyError:
        raise TypeError(f"Object of type `{name}` is not PYON "
                        f"decodable") from None
    return build(*args)


def decode(s: str) -> Any:
    """The value of PYON v2 text ``s`` (as ``sipyco.pyon.decode``).

    Only data is built; unknown tags raise ``TypeError``, malformed JSON
    ``json.JSONDecodeError``.
    """
    return json.loads(s, object_hook=_object_hook)


def store_file(filename: str, x: Any) -> None:
    """Write ``x`` as pretty PYON to ``filename``, atomically and durably:
    after return the file holds either the old or the whole new content,
    even across a power failure."""
    directory = os.path.dirname(os.path.abspath(filename))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False,
                                     encoding="utf-8") as f:
        f.write(encode(x, pretty=True))
        f.flush()
        # fsync before the rename, or a crash could publish an empty file
        os.fsync(f.fileno())
        tmpname = f.name
    os.replace(tmpname, filename)
    # fsync the directory, or the rename itself may be lost on power failure
    fsync_path(directory)


def load_file(filename: str) -> Any:
    """The value stored in PYON file ``filename``."""
    with open(filename, "r", encoding="utf-8") as f:
        return decode(f.read())
