"""Write a recovered run as an ARTIQ results file.

Layout (ARTIQ's ``worker_impl.write_results``, see ``ARTIQ_API.md``):

* ``datasets`` and ``archive`` groups, written by
  :meth:`artiq_journal.state.DatasetState.write_hdf5` -- the one
  implementation of ARTIQ's semantics -- through a guard (below);
* root scalars ``artiq_version`` (str), ``rid`` (int64), ``start_time`` and
  ``run_time`` (float64), ``expid`` (PYON text), each only when known;
* an ``artiq_journal`` group saying the file was recovered.  Attributes:
  ``recovered`` (True), ``layout_version`` (of this group, 1),
  ``format_version`` (journal format), ``recovered_at`` (ISO 8601 UTC),
  ``recovered_by``, ``journal`` (path), ``journal_fingerprint`` (JSON
  ``[[file, size], ...]`` of the journal files it was made from),
  ``last_seq`` (last record applied), ``records_applied``,
  ``records_untrusted`` (intact records left out after damage),
  ``snapshot`` (checkpoint file used, "" for none), ``snapshot_seq``,
  ``snapshot_reason``, ``stage`` (last stage reached), ``resumed_from``
  (JSON, if the run resumed another) and ``data_lost`` (any error-level
  problem).  Datasets: ``problems`` (one ``"file:offset: reason"`` string
  each), ``problem_detail`` (parallel: the JSON text ``[file, offset,
  reason, severity]``) and, when a name had to be escaped,
  ``escaped_names``.

The guard makes two differences from ARTIQ, both reported as problems:

* **Names.**  A dataset name containing ``/`` or NUL, or equal to ``""``,
  ``"."`` or ``".."`` would make h5py create groups (even at the file root
  for ``"/x"``), silently truncate the name, or fail.  Such a name is stored
  percent-encoded: ``%`` -> ``%25``, ``/`` -> ``%2F``, NUL -> ``%00``, the
  dots of ``.``/``..`` -> ``%2E``, and the empty name -> ``%``.  If that
  collides with another name in the group, ``%23<n>`` (``#n``) is appended.
  Every escape is listed in ``artiq_journal/escaped_names`` as the JSON text
  ``[group, stored_name, original_name]``.  Other names are untouched.
* **Unstorable values.**  Where ARTIQ raises (``None``, ragged lists, lists
  of str, dicts, ints beyond 64 bits, ...) and loses the rest of the file,
  the value is stored as its PYON text (readable by ``sipyco.pyon.decode``)
  with the attribute ``artiq_journal_encoding = "pyon"``; the same for
  metadata attributes.  Everything else is still written.

Files use HDF5 format bounds ``("earliest", "v110")``: the lowest format
version for each object, and an error rather than a file HDF5 1.10 tools
(h5dump, MATLAB) cannot open.  Never the newest-format bound.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import h5py
import numpy as np

from .. import __version__
from ..journal.constants import FORMAT_VERSION
from .. import pyon
from ..runstate import RunState
from .report import Problem

#: Version of the ``artiq_journal`` group's own layout.
LAYOUT_VERSION = 1
GROUP = "artiq_journal"
#: HDF5 format bounds: readable by HDF5 1.10 (see the module docstring).
LIBVER = ("earliest", "v110")
ENCODING_ATTR = "artiq_journal_encoding"


@dataclass
class RecoveryInfo:
    """What the ``artiq_journal`` group records about the recovery."""

    journal: str
    rid: int
    fingerprint: list
    records_applied: int = 0
    records_untrusted: int = 0
    snapshot: str | None = None
    snapshot_seq: int | None = None
    snapshot_note: str = ""
    #: Problems found so far (journal damage); storage problems are added.
    problems: list[Problem] = field(default_factory=list)


def needs_escape(name: str) -> bool:
    """True for a name h5py would not store as one link with that name."""
    return name in ("", ".", "..") or "/" in name or "\0" in name


def escape_name(name: str) -> str:
    """The percent-encoded form described in the module docstring."""
    if name == "":
        return "%"
    if name in (".", ".."):
        return "%2E" * len(name)
    return name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")


def plan_names(keys: Iterable[str]) -> dict[str, str]:
    """``{key: stored_name}`` for the keys that need escaping, chosen so no
    stored name equals another key's name in the same group."""
    keys = list(keys)
    taken = {k for k in keys if not needs_escape(k)}
    plan = {}
    for key in keys:
        if not needs_escape(key):
            continue
        base = candidate = escape_name(key)
        n = 1
        while candidate in taken:
            candidate = f"{base}%23{n}"
            n += 1
        taken.add(candidate)
        plan[key] = candidate
    return plan


class _Sink:
    """Collects storage problems and escapes for one output file."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.problems: list[Problem] = []
        self.escaped: list[str] = []

    def add(self, reason: str, severity: str) -> None:
        self.problems.append(Problem(self.output, None, reason, severity))


def _as_pyon(value: Any) -> str | None:
    try:
        return pyon.encode(value)
    except (TypeError, ValueError):
        return None


class _GuardedAttrs:
    """``attrs`` of a stored dataset: never raises for a bad value."""

    def __init__(self, attrs: Any, where: str, sink: _Sink) -> None:
        self._attrs, self._where, self._sink = attrs, where, sink

    def __setitem__(self, name: str, value: Any) -> None:
        stored = escape_name(name) if name == "" or "\0" in name else name
        if stored != name:
            self._sink.add(f"{self._where}: metadata name {name!r} stored "
                           f"as {stored!r}", "info")
        try:
            self._attrs[stored] = value
            return
        except (TypeError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        text = _as_pyon(value)
        if text is None:
            self._sink.add(f"{self._where}: metadata {name!r} of type "
                           f"{type(value).__name__} not stored ({reason})",
                           "error")
            return
        self._attrs[stored] = text
        self._sink.add(f"{self._where}: metadata {name!r} of type "
                       f"{type(value).__name__} cannot be an HDF5 attribute "
                       f"({reason}); stored as PYON text", "warning")


class _GuardedNode:
    def __init__(self, node: Any, where: str, sink: _Sink) -> None:
        self.attrs = _GuardedAttrs(node.attrs, where, sink)


class _NullAttrs:
    def __setitem__(self, name: str, value: Any) -> None:
        pass


class _NullNode:
    """Stands for a dataset that could not be stored (already reported)."""

    attrs = _NullAttrs()


def _numeric_list_as_array(value: Any) -> Any:
    """A list whose numpy conversion is numeric, as that array; else the
    value unchanged.

    Same bytes in the file: for such a list h5py finds no string item and
    stores ``numpy.asarray(value)`` itself -- but only after walking every
    element in Python to look for strings, which dominates writing a scan of
    a million points.
    """
    if type(value) is not list or not value:
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return value
    return array if array.dtype.kind in "biufc" else value


class _GuardedGroup:
    """The ``group[key] = value`` / ``group[key].attrs[...]`` interface that
    ``DatasetState.write_hdf5`` uses, with escaping and PYON fallback."""

    def __init__(self, group: h5py.Group, names: dict[str, str],
                 sink: _Sink) -> None:
        self._group, self._names, self._sink = group, names, sink

    def _stored(self, key: str) -> str:
        return self._names.get(key, key)

    def __setitem__(self, key: str, value: Any) -> None:
        name = self._stored(key)
        where = f"{self._group.name.lstrip('/')}/{key}"
        if name != key:
            self._sink.add(f"dataset {where!r} stored as "
                           f"{self._group.name.lstrip('/')}/{name} (escaped "
                           "name)", "info")
            self._sink.escaped.append(json.dumps(
                [self._group.name.lstrip("/"), name, key]))
        try:
            self._group[name] = _numeric_list_as_array(value)
            return
        except (TypeError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if name in self._group:
            del self._group[name]  # a half-created dataset must not remain
        text = _as_pyon(value)
        if text is None:
            self._sink.add(f"dataset {where!r} of type "
                           f"{type(value).__name__} not stored ({reason})",
                           "error")
            return
        self._group[name] = text
        self._group[name].attrs[ENCODING_ATTR] = "pyon"
        self._sink.add(f"dataset {where!r} of type {type(value).__name__} "
                       f"cannot be stored by HDF5 as ARTIQ would ({reason}); "
                       "stored as PYON text", "warning")

    def __getitem__(self, key: str) -> Any:
        name = self._stored(key)
        if name not in self._group:
            return _NullNode()
        return _GuardedNode(self._group[name],
                            f"{self._group.name.lstrip('/')}/{key}",
                            self._sink)


class _GuardedFile:
    def __init__(self, f: h5py.File, plans: dict[str, dict[str, str]],
                 sink: _Sink) -> None:
        self._f, self._plans, self._sink = f, plans, sink

    def create_group(self, name: str) -> _GuardedGroup:
        return _GuardedGroup(self._f.create_group(name),
                             self._plans.get(name, {}), self._sink)


def _string_array(items: list[str]) -> np.ndarray:
    # NUL cannot be stored in an HDF5 variable-length string.
    return np.array([s.replace("\0", "\\0") for s in items],
                    dtype=h5py.string_dtype())


def _root_scalars(f: h5py.File, state: RunState, rid: int,
                  sink: _Sink) -> None:
    info = state.run_info or {}
    f["rid"] = np.int64(rid)
    version = info.get("artiq_version")
    if isinstance(version, str):
        f["artiq_version"] = version
    for name, value in (("start_time", info.get("start_time")),
                        ("run_time", state.run_time)):
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            f[name] = np.float64(value)
        elif value is not None:
            sink.add(f"{name} {value!r} is not a number; not written",
                     "warning")
    if "expid" not in info:
        sink.add("expid unknown (the run-info record was not recovered); "
                 "not written", "warning")
        return
    text = _as_pyon(info["expid"])
    if text is None:
        sink.add("expid cannot be encoded as PYON; not written", "warning")
    else:
        f["expid"] = text


def _journal_group(f: h5py.File, state: RunState, info: RecoveryInfo,
                   sink: _Sink) -> None:
    g = f.create_group(GROUP)
    a = g.attrs
    a["layout_version"] = LAYOUT_VERSION
    a["format_version"] = FORMAT_VERSION
    a["recovered"] = True
    a["recovered_at"] = datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds")
    a["recovered_by"] = f"artiq-journal {__version__}"
    a["journal"] = info.journal
    a["journal_fingerprint"] = json.dumps(info.fingerprint)
    a["last_seq"] = np.int64(state.last_seq)
    a["records_applied"] = np.int64(info.records_applied)
    a["records_untrusted"] = np.int64(info.records_untrusted)
    a["snapshot"] = info.snapshot or ""
    if info.snapshot_seq is not None:
        a["snapshot_seq"] = np.int64(info.snapshot_seq)
    a["snapshot_reason"] = info.snapshot_note
    a["stage"] = state.stage or ""
    if state.resumed_from is not None:
        a["resumed_from"] = json.dumps(state.resumed_from, default=repr)
    problems = info.problems + sink.problems
    a["data_lost"] = any(p.severity == "error" for p in problems)
    g["problems"] = _string_array([str(p) for p in problems])
    g["problem_detail"] = _string_array(
        [json.dumps([p.file, p.offset, p.reason, p.severity])
         for p in problems])
    if sink.escaped:
        g["escaped_names"] = _string_array(sink.escaped)


def write_results_file(path: str, state: RunState, info: RecoveryInfo, *,
                       output_name: str | None = None) -> list[Problem]:
    """Write the results file of ``state`` to ``path`` (created or
    truncated; the caller publishes it atomically).

    Returns the storage problems (escaped names, values stored as PYON or
    not at all); they are also in the file with ``info.problems``.  A value
    that cannot be stored never stops the rest from being written.  Raises
    ``OSError`` for I/O failures (the file is then incomplete and must not
    be published).  ``output_name`` names the file in problem messages.
    """
    sink = _Sink(output_name or path)
    datasets = state.datasets
    plans = {"datasets": plan_names(datasets.local),
             "archive": plan_names(datasets.archive)}
    with h5py.File(path, "w", libver=LIBVER) as f:
        datasets.write_hdf5(_GuardedFile(f, plans, sink))
        _root_scalars(f, state, info.rid, sink)
        _journal_group(f, state, info, sink)
    return sink.problems
