"""PYON v1, the Python-literal serialization of sipyco before v2 (what the
masters of ARTIQ release-7 and release-8 speak on their RPC ports and store
in ``dataset_db.pyon``), written from its specification.

v1 text is a Python expression: ``null``/``true``/``false``, numbers as
``repr`` (``inf``, ``nan``), strings as JSON strings, ``b'...'`` bytes,
``(a, b)`` tuples (``(a, )`` for one item), ``[...]``, ``{...}`` sets and
dicts (``", "`` and ``": "`` separators), ``slice(a, b, c)``,
``Fraction(n, d)``, ``OrderedDict([...])``, ``nparray(shape, dtype,
b"base64")`` and ``npscalar(dtype, b"base64")``.

sipyco decodes v1 with ``eval``; :func:`decode` here never does: it parses
the text with :mod:`ast` and builds only the values listed above from
literal nodes, so it is safe on untrusted input.
"""

from __future__ import annotations

import ast
import base64
import json
import math
from collections import OrderedDict
from fractions import Fraction
from typing import Any

import numpy

__all__ = ["encode", "decode"]


def _encode_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def _encode_array(x: numpy.ndarray) -> str:
    if x.dtype.kind == "O":
        raise TypeError(f"`{x!r}`: numpy arrays with object dtype are not "
                        f"PYON encodable")
    if x.ndim > 0:
        x = numpy.ascontiguousarray(x)
    data = base64.b64encode(x.data).decode()
    return f"nparray({encode(tuple(x.shape))}, {json.dumps(x.dtype.str)}, " \
           f"b\"{data}\")"


def encode(x: Any, pretty: bool = False) -> str:
    """PYON v1 text of ``x`` that sipyco's v1 ``decode`` reads back equal.
    ``pretty`` is accepted for symmetry and ignored (v1 output is one line
    either way for the values we send).  ``TypeError`` for other types."""
    if x is None:
        return "null"
    if x is True:
        return "true"
    if x is False:
        return "false"
    if isinstance(x, numpy.ndarray):
        return _encode_array(x)
    if isinstance(x, numpy.bool_):
        return encode(bool(x))
    if isinstance(x, numpy.str_):
        return json.dumps(str(x))
    if isinstance(x, numpy.generic):
        data = base64.b64encode(x.data).decode()
        return f"npscalar({json.dumps(x.dtype.str)}, b\"{data}\")"
    kind = type(x)
    if kind is int:
        return repr(x)
    if kind is float:
        return _encode_float(x)
    if kind is complex:
        return f"complex({_encode_float(x.real)}, {_encode_float(x.imag)})" \
            if not (math.isfinite(x.real) and math.isfinite(x.imag)) \
            else repr(x)
    if kind is str:
        return json.dumps(x)
    if kind is bytes:
        return repr(x)
    if kind is tuple:
        if len(x) == 1:
            return f"({encode(x[0])}, )"
        return "(" + ", ".join(encode(v) for v in x) + ")"
    if kind is list:
        return "[" + ", ".join(encode(v) for v in x) + "]"
    if kind is set:
        if not x:
            raise TypeError("an empty set has no PYON v1 literal")
        return "{" + ", ".join(encode(v) for v in x) + "}"
    if kind is OrderedDict:
        return "OrderedDict([" + ", ".join(
            f"({encode(k)}, {encode(v)})" for k, v in x.items()) + "])"
    if kind is dict:
        return "{" + ", ".join(f"{encode(k)}: {encode(v)}"
                               for k, v in x.items()) + "}"
    if kind is slice:
        return f"slice({encode(x.start)}, {encode(x.stop)}, {encode(x.step)})"
    if kind is Fraction:
        return f"Fraction({x.numerator}, {x.denominator})"
    raise TypeError(f"`{x!r}` ({kind}) is not PYON v1 serializable")


_NAMES = {"null": None, "false": False, "true": True, "None": None,
          "False": False, "True": True, "inf": math.inf, "nan": math.nan}


def _nparray(shape: Any, dtype: Any, data: Any) -> numpy.ndarray:
    if not isinstance(dtype, str) or not isinstance(data, bytes):
        raise ValueError("nparray(shape, dtype, data) needs str and bytes")
    # copy: frombuffer gives a read-only view of the decoded bytes
    return numpy.frombuffer(base64.b64decode(data),
                            dtype=dtype).copy().reshape(shape)


def _npscalar(dtype: Any, data: Any) -> Any:
    if not isinstance(dtype, str) or not isinstance(data, bytes):
        raise ValueError("npscalar(dtype, data) needs str and bytes")
    return numpy.frombuffer(base64.b64decode(data), dtype=dtype)[0]


_CALLS = {"nparray": _nparray, "npscalar": _npscalar, "Fraction": Fraction,
          "OrderedDict": OrderedDict, "slice": slice, "complex": complex}


def _build(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float, complex, str, bytes)) \
                or node.value is None or isinstance(node.value, bool):
            return node.value
    elif isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    elif isinstance(node, ast.UnaryOp) and \
            isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _build(node.operand)
        if isinstance(value, (int, float, complex)) and \
                not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    elif isinstance(node, ast.BinOp) and \
            isinstance(node.op, (ast.Add, ast.Sub)):
        # complex literals: 1+2j, -1-2j
        left, right = _build(node.left), _build(node.right)
        if isinstance(left, (int, float)) and isinstance(right, complex):
            return left + right if isinstance(node.op, ast.Add) \
                else left - right
    elif isinstance(node, ast.Tuple):
        return tuple(_build(e) for e in node.elts)
    elif isinstance(node, ast.List):
        return [_build(e) for e in node.elts]
    elif isinstance(node, ast.Set):
        return {_build(e) for e in node.elts}
    elif isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("PYON v1: ** in a dict literal")
        return {_build(k): _build(v) for k, v in zip(node.keys, node.values)}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in _CALLS and not node.keywords:
        return _CALLS[node.func.id](*[_build(a) for a in node.args])
    raise ValueError(f"PYON v1: not a data literal: {ast.dump(node)[:80]}")


def decode(s: str) -> Any:
    """The value of PYON v1 text ``s``.  ``ValueError`` for anything that is
    not one of the data literals listed in the module docstring; nothing is
    evaluated."""
    try:
        tree = ast.parse(s.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"PYON v1: {exc}") from None
    try:
        return _build(tree.body)
    except (TypeError, RecursionError) as exc:
        raise ValueError(f"PYON v1: {exc}") from None
