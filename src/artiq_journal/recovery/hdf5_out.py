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
  reason, severity]``), when a name had to be escaped ``escaped_names``,
  when a value could not be stored at all ``unstored``, and when the crash
  cut a scan point ``partial_point`` (PYON ``{key: value}`` of the entries
  set aside; attribute ``missing``: JSON list of the point's keys never
  appended; see ``points.py``).

The guard makes two differences from ARTIQ, both reported as problems:

* **Names.**  A dataset name with ``/`` is nested as ARTIQ's own
  ``group[name] = value`` nests it ("a/b": group ``a``, dataset ``b``),
  unless another name is one of its groups or lies inside it.  Such a
  clash, and a name containing NUL, starting with ``/``, with an empty,
  ``.`` or ``..`` component, or equal to ``""``, would make h5py create
  groups at the file root, silently truncate the name, or fail: it is
  stored percent-encoded: ``%`` -> ``%25``, ``/`` -> ``%2F``, NUL ->
  ``%00``, the dots of ``.``/``..`` -> ``%2E``, and the empty name -> ``%``.
  If that collides with another name in the group, ``%23<n>`` (``#n``) is
  appended.  Every escape is listed in ``artiq_journal/escaped_names`` as
  the JSON text ``[group, stored_name, original_name]``.
* **Unstorable values.**  Where ARTIQ raises (``None``, ragged lists, lists
  of str, dicts, ints beyond 64 bits, strings with NUL, ...) and loses the
  rest of the file, the value is stored as its PYON text (readable by
  ``sipyco.pyon.decode``) with the attribute ``artiq_journal_encoding =
  "pyon"``; the same for metadata attributes.  A value that has no PYON
  text either (nested too deep to encode, text over 64 MiB) *cannot be
  stored*: it is left out, listed in ``artiq_journal/unstored`` (JSON
  ``[group, name, reason]``) and reported as an error (the run is then
  ``recovered_partial``).  Everything else is still written.

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
from .. import pyon
from ..journal.constants import FORMAT_VERSION
from ..runstate import RunState
from ..storage_layout import Layout
from ..storage_policy import PolicyError, StoragePolicy
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
    #: Entries of a scan point the crash cut, set aside (points.py):
    #: ``{key: value}``, and the keys of that point never appended.
    partial_point: dict | None = None
    partial_point_missing: list = field(default_factory=list)
    #: ReplayResult.partial_point: a point begun with LiveJournal.point()
    #: that the journal ends inside, kept aside, not in the datasets.
    unfinished_point: dict | None = None


def needs_escape(name: str) -> bool:
    """True for a name h5py would not store as one link with that name."""
    return name in ("", ".", "..") or "/" in name or "\0" in name


#: A name is laid out as nested groups only up to these sizes (a crafted
#: name of a million '/' must not cost quadratic time); beyond, escaped.
MAX_NESTED_NAME = 1024
MAX_NESTED_PARTS = 32


def nests_like_artiq(name: str) -> bool:
    """True for a name with ``/`` that ARTIQ's ``group[name] = value``
    stores as nested groups ("a/b" -> group a, dataset b), and that stays
    inside its group that way: no empty, ``.`` or ``..`` component, no NUL,
    no leading ``/`` (which h5py would take from the file's root)."""
    if "/" not in name or "\0" in name or len(name) > MAX_NESTED_NAME \
            or name.count("/") >= MAX_NESTED_PARTS:
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts)


def escape_name(name: str) -> str:
    """The percent-encoded form described in the module docstring."""
    if name == "":
        return "%"
    if name in (".", ".."):
        return "%2E" * len(name)
    return name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")


def plan_names(keys: Iterable[str]) -> dict[str, str]:
    """``{key: stored_name}`` for the keys that cannot be stored under
    their own name, chosen so no stored name equals another key's.

    A name with ``/`` is nested as ARTIQ nests it unless another key is
    one of its groups or lies inside it (ARTIQ itself would fail there:
    "a" and "a/b" cannot both exist); then it is escaped."""
    keys = list(keys)
    names = set(keys)

    def nests(key: str) -> bool:
        if not nests_like_artiq(key):
            return False
        parts = key.split("/")
        return not any("/".join(parts[:i]) in names
                       for i in range(1, len(parts)))

    nested = {k for k in keys if nests(k)}
    # Group names the nested keys create: no escaped name may take one.
    groups = {"/".join(k.split("/")[:i]) for k in nested
              for i in range(1, k.count("/") + 1)}
    taken = {k for k in keys if not needs_escape(k)} | groups
    plan = {}
    for key in keys:
        if key in nested or not needs_escape(key):
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
        #: JSON ``[group, name, reason]`` of every value not stored at all.
        self.unstored: list[str] = []

    def add(self, reason: str, severity: str) -> None:
        self.problems.append(Problem(self.output, None, reason, severity))


#: Largest PYON text stored in place of a value HDF5 cannot hold: the
#: fallback must not turn a hostile value into gigabytes of text.
PYON_FALLBACK_MAX_CHARS = 64 << 20


#: Most items (containers and scalars) a value may hold to get a PYON
#: fallback: encoding copies the value, and that copy must stay small.
PYON_FALLBACK_MAX_ITEMS = 1 << 20


def _too_big_for_text(value: Any) -> bool:
    """Whether ``value`` holds more than :data:`PYON_FALLBACK_MAX_ITEMS`
    items or array bytes worth more text than allowed; counted without
    copying anything."""
    items = 0
    stack = [value]
    while stack:
        obj = stack.pop()
        items += 1
        if items > PYON_FALLBACK_MAX_ITEMS:
            return True
        kind = type(obj)
        if kind is list or kind is tuple:
            items += len(obj)
            stack.extend(v for v in obj if type(v) in _NESTED)
        elif kind is dict:
            items += 2 * len(obj)
            stack.extend(v for v in (*obj.keys(), *obj.values())
                         if type(v) in _NESTED)
        elif isinstance(obj, np.ndarray) and \
                obj.nbytes * 2 > PYON_FALLBACK_MAX_CHARS:
            return True
    return False


_NESTED = (list, tuple, dict, np.ndarray)


def _as_pyon(value: Any) -> str | None:
    """The PYON text of ``value``, or None when it has none, is nested too
    deep to encode, or would be larger than the fallback allows (it is
    never built then: a hostile value must not cost its size again)."""
    if _too_big_for_text(value):
        return None
    try:
        text = pyon.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError,
            MemoryError):
        return None
    return text if len(text) <= PYON_FALLBACK_MAX_CHARS else None


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:500] + "..."


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
        except Exception as exc:  # h5py raises many kinds; never fatal
            reason = _reason(exc)
        text = _as_pyon(value)
        try:
            if text is None:
                raise ValueError("no PYON text either")
            self._attrs[stored] = text
        except Exception:  # noqa: BLE001 - e.g. too large for an attribute
            self._sink.add(f"{self._where}: metadata {name!r} of type "
                           f"{type(value).__name__} not stored ({reason})",
                           "error")
            return
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
    if type(value) is not list or not value \
            or not isinstance(value[0], (int, float, complex, np.number,
                                         np.bool_, list)):
        # Not numbers (a list of maps, of strings): no numeric array, and
        # no object array copy of a possibly huge list either.
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
        self._put(key, value, None)

    def create_dataset(self, key: str, data: Any, **options: Any) -> None:
        """``create_dataset`` (a storage policy's filters), guarded like
        ``group[key] = data``."""
        self._put(key, data, options)

    def _put(self, key: str, value: Any, options: dict | None) -> None:
        name = self._stored(key)
        where = f"{self._group.name.lstrip('/')}/{key}"
        if name != key:
            self._sink.add(f"dataset {where!r} stored as "
                           f"{self._group.name.lstrip('/')}/{name} (escaped "
                           "name)", "info")
            self._sink.escaped.append(json.dumps(
                [self._group.name.lstrip("/"), name, key]))
        try:
            if options is None:
                self._group[name] = _numeric_list_as_array(value)
            else:
                self._group.create_dataset(name, data=value, **options)
            return
        except Exception as exc:  # h5py raises many kinds; never fatal
            reason = _reason(exc)
        self._discard(name)  # a half-created dataset must not remain
        text = _as_pyon(value)
        if text is not None:
            try:
                self._group[name] = text
                self._group[name].attrs[ENCODING_ATTR] = "pyon"
            except Exception:  # noqa: BLE001 - reported below
                self._discard(name)
                text = None
        if text is None:
            self._sink.add(f"dataset {where!r} of type "
                           f"{type(value).__name__} not stored ({reason})",
                           "error")
            self._sink.unstored.append(json.dumps(
                [self._group.name.lstrip("/"), key, reason]))
            return
        self._sink.add(f"dataset {where!r} of type {type(value).__name__} "
                       f"cannot be stored by HDF5 as ARTIQ would ({reason}); "
                       "stored as PYON text", "warning")

    def _discard(self, name: str) -> None:
        try:
            if name in self._group:
                del self._group[name]
        except Exception:  # noqa: BLE001 - nothing more can be done
            pass

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


#: Longest string stored as an attribute: HDF5 1.10's compact attribute
#: storage holds 64 KiB per object, and journal content may be hostile.
ATTR_TEXT_MAX = 16 << 10
#: Longest text kept for one problem line.
PROBLEM_TEXT_MAX = 4 << 10
#: Longest exact PYON text of the expid taken from the run info.
EXPID_PYON_MAX = 16 << 20


def printable(text: str, limit: int | None = None) -> str:
    """``text`` made storable as an HDF5 UTF-8 string: undecodable bytes of
    a file name (surrogate escapes) replaced, NUL shown as ``\\0``, and cut
    to ``limit`` characters (marked with an ellipsis)."""
    if not isinstance(text, str):
        text = repr(text)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = text.replace("\0", "\\0")
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text


def _store(f: Any, name: str, value: Any, sink: _Sink, what: str) -> None:
    """``f[name] = value``, reporting instead of raising."""
    try:
        f[name] = value
    except Exception as exc:  # noqa: BLE001 - one root value, not the file
        try:
            if name in f:
                del f[name]
        except Exception:  # noqa: BLE001
            pass
        sink.add(f"{what} not written ({_reason(exc)})", "error")
        sink.unstored.append(json.dumps(["", name, _reason(exc)]))


def _expid_text(info: dict, sink: _Sink) -> str | None:
    exact = info.get("expid_pyon")
    if isinstance(exact, str) and len(exact) <= EXPID_PYON_MAX \
            and "\0" not in exact:
        # The PYON the run's own ARTIQ wrote (v1 for release-7/8, v2 on
        # master): the recovered file says what ARTIQ's would have said.
        return exact
    if "expid" not in info:
        sink.add("expid unknown (the run-info record was not recovered); "
                 "not written", "warning")
        return None
    text = _as_pyon(info["expid"])
    if text is None:
        sink.add("expid cannot be encoded as PYON; not written", "error")
    return text


def _root_scalars(f: h5py.File, state: RunState, rid: int,
                  sink: _Sink) -> None:
    info = state.run_info or {}
    _store(f, "rid", np.int64(rid) if -2**63 <= rid < 2**63 else rid, sink,
           f"rid {rid}")
    version = info.get("artiq_version")
    if isinstance(version, str):
        _store(f, "artiq_version", printable(version, EXPID_PYON_MAX), sink,
               "artiq_version")
    for name, value in (("start_time", info.get("start_time")),
                        ("run_time", state.run_time)):
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            _store(f, name, np.float64(value), sink, name)
        elif value is not None:
            sink.add(f"{name} {printable(repr(value), 200)} is not a "
                     "number; not written", "warning")
    text = _expid_text(info, sink)
    if text is not None:
        _store(f, "expid", text, sink, "expid")


def _set_attr(a: Any, name: str, value: Any, sink: _Sink) -> None:
    if isinstance(value, str):
        value = printable(value, ATTR_TEXT_MAX)
    try:
        a[name] = value
    except Exception as exc:  # noqa: BLE001 - one attribute, not the file
        sink.add(f"artiq_journal attribute {name} not written "
                 f"({_reason(exc)})", "warning")


def _journal_group(f: h5py.File, state: RunState, info: RecoveryInfo,
                   sink: _Sink, layout: Layout | None = None) -> None:
    g = f.create_group(GROUP)
    a = g.attrs
    attrs = {
        "layout_version": LAYOUT_VERSION,
        "format_version": FORMAT_VERSION,
        "recovered": True,
        "recovered_at": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"),
        "recovered_by": f"artiq-journal {__version__}",
        "journal": info.journal,
        "journal_fingerprint": json.dumps(info.fingerprint),
        "last_seq": np.int64(state.last_seq),
        "records_applied": np.int64(info.records_applied),
        "records_untrusted": np.int64(info.records_untrusted),
        "snapshot": info.snapshot or "",
        "snapshot_reason": info.snapshot_note,
        "stage": state.stage if isinstance(state.stage, str) else "",
    }
    if info.snapshot_seq is not None:
        attrs["snapshot_seq"] = np.int64(info.snapshot_seq)
    if layout is not None:
        applied = layout.policy.with_custom(
            [m for m in layout.policy.custom
             if m not in layout.not_applied()])
        attrs["storage_policy"] = json.dumps(applied.to_data())
    if state.resumed_from is not None:
        try:
            attrs["resumed_from"] = json.dumps(state.resumed_from,
                                               default=repr)
        except (ValueError, RecursionError) as exc:
            sink.add(f"resumed_from not written ({_reason(exc)})", "warning")
    for name, value in attrs.items():
        _set_attr(a, name, value, sink)
    problems = info.problems + sink.problems
    _set_attr(a, "data_lost", any(p.severity == "error" for p in problems),
              sink)
    g["problems"] = _string_array([printable(str(p), PROBLEM_TEXT_MAX)
                                   for p in problems])
    g["problem_detail"] = _string_array(
        [printable(json.dumps([p.file, p.offset, p.reason, p.severity]),
                   PROBLEM_TEXT_MAX) for p in problems])
    if sink.escaped:
        g["escaped_names"] = _string_array(sink.escaped)
    if sink.unstored:
        g["unstored"] = _string_array(
            [printable(u, PROBLEM_TEXT_MAX) for u in sink.unstored])
    if info.partial_point:
        text = _as_pyon(info.partial_point)
        if text is not None:
            g["partial_point"] = text
            g["partial_point"].attrs["missing"] = json.dumps(
                info.partial_point_missing)
            g["partial_point"].attrs[ENCODING_ATTR] = "pyon"
    if info.unfinished_point is not None:
        _unfinished_point(g, info.unfinished_point, sink)


def _unfinished_point(g: h5py.Group, partial: dict, sink: _Sink) -> None:
    """The trailing unfinished point (point markers), kept aside: attribute
    ``unfinished_point`` (JSON ``{"begin_seq", "last_seq", "records"}``)
    and dataset ``unfinished_point`` (PYON text ``[seq, type, payload]``
    per record, ``""`` for one with no PYON text)."""
    from ..journal.framing import type_name
    records = partial["records"]
    _set_attr(g.attrs, "unfinished_point", json.dumps(
        {"begin_seq": partial["begin_seq"], "last_seq": partial["last_seq"],
         "records": len(records)}), sink)
    texts = [_as_pyon([seq, type_name(rtype), payload]) or ""
             for seq, rtype, payload in records]
    g["unfinished_point"] = _string_array(texts)


def write_results_file(target: Any, state: RunState, info: RecoveryInfo, *,
                       output_name: str | None = None,
                       layout: Layout | None = None) -> list[Problem]:
    """Write the results file of ``state`` into ``target``: a path (created
    or truncated) or, preferably, a binary file object opened read-write
    on a file the caller created exclusively (then every byte goes through
    that descriptor; the caller fsyncs and publishes it atomically).

    Returns the storage problems (escaped names, values stored as PYON or
    not at all -- each of those also listed in ``artiq_journal/unstored``);
    they are also in the file with ``info.problems``.  A value that cannot
    be stored never stops the rest from being written.  Raises for I/O
    failures (the file is then incomplete and must not be published).
    ``output_name`` names the file in problem messages.

    The datasets are laid out by the run's storage policy: ``layout`` when
    given (recovery with ``--trust-experiment-code``), else the declarative
    policy recorded in the run info (:func:`layout_of_run`); a custom
    method that could not be run is a warning problem.
    """
    sink = _Sink(output_name or getattr(target, "name", None) or str(target))
    datasets = state.datasets
    plans = {"datasets": plan_names(datasets.local),
             "archive": plan_names(datasets.archive)}
    if layout is None:
        layout = layout_of_run(state.run_info, sink)
    with h5py.File(target, "w", libver=LIBVER) as f:
        guarded = _GuardedFile(f, plans, sink)
        if layout is None:
            datasets.write_hdf5(guarded)
        else:
            _write_with_layout(f, guarded, datasets, layout, sink)
        _root_scalars(f, state, info.rid, sink)
        if layout is not None and layout.write_metadata is not None:
            try:
                layout.write_metadata_into(f)
            except Exception as exc:  # noqa: BLE001 - the user's code
                sink.add("storage policy: the experiment's write_metadata "
                         f"raised ({_reason(exc)}); what it wrote before "
                         "is kept", "warning")
        _journal_group(f, state, info, sink, layout)
    return sink.problems


def layout_of_run(run_info: Any, sink: Any = None) -> Layout | None:
    """The declarative storage policy recorded in a run's run-info map
    (``storage_policy``), without custom code; None for ARTIQ's layout.
    A policy that cannot be read is reported (warning) and not applied."""
    data = run_info.get("storage_policy") if isinstance(run_info, dict) \
        else None
    if data is None:
        return None
    try:
        policy = StoragePolicy.from_data(data)
    except PolicyError as exc:
        if sink is not None:
            sink.add(f"storage policy not applied ({exc}); ARTIQ's default "
                     "layout written", "warning")
        return None
    return None if policy.is_default else Layout(policy)


def _write_with_layout(f: h5py.File, guarded: Any, datasets: Any,
                       layout: Layout, sink: _Sink) -> None:
    for method in layout.not_applied():
        sink.add(f"storage policy: the experiment's own {method}() was not "
                 "run (it needs the experiment's code: artiq-recover "
                 "--trust-experiment-code); "
                 + ("datasets written with the declarative policy only"
                    if method == "store_dataset" else
                    "its extra metadata is missing"), "warning")
    try:
        layout.write_hdf5(guarded, datasets, raw=f, report=sink.add)
        return
    except Exception as exc:  # noqa: BLE001 - the user's store_dataset
        if layout.store_dataset is None:
            raise
        reason = _reason(exc)
    for name in ("datasets", "archive"):
        if name in f:
            del f[name]
    sink.add(f"storage policy: the experiment's store_dataset raised "
             f"({reason}); datasets written with the declarative policy "
             "only", "warning")
    Layout(layout.policy).write_hdf5(guarded, datasets, raw=f,
                                     report=sink.add)
