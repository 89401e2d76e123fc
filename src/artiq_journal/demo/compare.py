"""Read and compare ARTIQ results files: what the demo shows and checks.

Only the data an experiment produced is compared -- the ``datasets`` and
``archive`` groups: names, dtypes, shapes, values (NaN equal to NaN) and
attributes (units and other metadata).  The root scalars (``rid``,
``start_time``, ...) differ between any two runs by design and are not
compared.
"""

from __future__ import annotations

from typing import Any, Iterable

import h5py
import numpy as np

__all__ = ["DATA_GROUPS", "read_group", "compare_results", "describe_value",
           "describe_file"]

#: The groups holding a run's data, as ARTIQ writes them.
DATA_GROUPS = ("datasets", "archive")


def read_group(h5_path: str, group: str = "datasets") -> dict[str, Any]:
    """``{name: value}`` of one group of a results file (numpy arrays,
    numpy scalars, bytes for strings as h5py returns them); ``{}`` if the
    group is absent."""
    with h5py.File(h5_path, "r") as f:
        node = f.get(group)
        if node is None:
            return {}
        return {name: node[name][()] for name in node}


def _values_equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _dataset_difference(expected: h5py.Dataset, actual: h5py.Dataset
                        ) -> str | None:
    if expected.dtype != actual.dtype:
        return f"dtype {actual.dtype} != {expected.dtype}"
    if expected.shape != actual.shape:
        return f"shape {actual.shape} != {expected.shape}"
    if not _values_equal(expected[()], actual[()]):
        return (f"values differ: {describe_value(actual[()])} != "
                f"{describe_value(expected[()])}")
    e_attrs, a_attrs = dict(expected.attrs), dict(actual.attrs)
    if set(e_attrs) != set(a_attrs) or any(
            not _values_equal(e_attrs[k], a_attrs[k]) for k in e_attrs):
        return f"attributes {a_attrs} != {e_attrs}"
    return None


def compare_results(expected: str, actual: str,
                    allowed_extra: Iterable[str] = ()) -> tuple[int, list[str]]:
    """Compare the data groups of results file ``actual`` to ``expected``.

    Returns ``(number of datasets compared, differences)``; no differences
    means equal.  Names in ``allowed_extra`` may exist in ``actual`` only
    (e.g. a resumed run's provenance) without counting as a difference.
    """
    allowed = set(allowed_extra)
    differences: list[str] = []
    compared = 0
    with h5py.File(expected, "r") as fe, h5py.File(actual, "r") as fa:
        for group in DATA_GROUPS:
            ge, ga = fe.get(group), fa.get(group)
            if ge is None or ga is None:
                if ge is not ga:
                    differences.append(f"{group}/: group only in one file")
                continue
            for name in sorted(set(ge) - set(ga)):
                differences.append(f"{group}/{name}: missing")
            for name in sorted(set(ga) - set(ge) - allowed):
                differences.append(f"{group}/{name}: unexpected")
            for name in sorted(set(ge) & set(ga)):
                compared += 1
                problem = _dataset_difference(ge[name], ga[name])
                if problem is not None:
                    differences.append(f"{group}/{name}: {problem}")
    return compared, differences


def describe_value(value: Any, items: int = 5, width: int = 60) -> str:
    """A one-line preview: the first ``items`` elements of an array, a
    scalar, or a string cut at ``width`` characters."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return repr(value if len(value) <= width else value[:width] + "...")
    array = np.asarray(value)
    if array.ndim == 0:
        item = array.item()
        return f"{item:.6g}" if isinstance(item, float) else repr(item)
    flat = array.ravel()
    shown = ", ".join(
        f"{v:.4g}" if isinstance(v, float) else repr(v)
        for v in (x.item() for x in flat[:items]))
    return f"[{shown}{', ...' if flat.size > items else ''}]"


def _attrs_text(attrs: h5py.AttributeManager) -> str:
    return "  ".join(f"{k}={describe_value(v, width=40)}"
                     for k, v in attrs.items())


def describe_file(h5_path: str) -> list[str]:
    """Lines showing a results file: each dataset of the data groups with
    dtype, shape, first values and attributes; the root scalars; the
    ``artiq_journal`` provenance group of a recovered file."""
    lines: list[str] = []
    with h5py.File(h5_path, "r") as f:
        for group in DATA_GROUPS:
            node = f.get(group)
            if node is None or len(node) == 0:
                lines.append(f"{group}/  (empty)")
                continue
            for name in node:
                ds = node[name]
                attrs = _attrs_text(ds.attrs)
                lines.append(f"{group}/{name:<18} {str(ds.dtype):<7} "
                             f"{str(ds.shape):<5} "
                             f"{describe_value(ds[()], items=4)}"
                             + (f"  {attrs}" if attrs else ""))
        scalars = [f"{k}={describe_value(f[k][()], width=50)}"
                   for k in ("rid", "artiq_version", "start_time",
                             "run_time", "expid") if k in f]
        lines.append("root: " + "  ".join(scalars[:3]))
        if scalars[3:]:
            lines.append("      " + "  ".join(scalars[3:]))
        journal = f.get("artiq_journal")
        if journal is not None:
            lines.append("artiq_journal/  (provenance of the recovery)")
            for key, value in journal.attrs.items():
                lines.append(f"    {key} = {describe_value(value, width=60)}")
            problems = journal.get("problems")
            count = 0 if problems is None else len(problems)
            lines.append(f"    problems: {count}")
            for text in ([] if problems is None else problems[()])[:5]:
                lines.append(f"      {describe_value(text, width=100)}")
    return lines
