"""The one place that knows how ARTIQ generations differ.

Measured on the vendored sources (release-7, release-8, master):

==========================  ==============================  ==================
                            release-7                       release-8, master
==========================  ==============================  ==================
``DatasetManager.set``      ``(key, value, broadcast=False,  ``(key, value,
                            persist=False, archive=True)``  metadata, broadcast,
                                                            persist, archive)``
``mgr.metadata``            absent                          dict
broadcast entries           ``(persist, value)``            ``(persist, value,
                                                            metadata)``
results ``expid`` (sipyco)  PYON v1                         v1 (release-8),
                                                            v2 (master)
==========================  ==============================  ==================

``mutate(key, index, value)``, ``append_to(key, value)``, ``get(key,
archive=False)``, the results file name and its root objects are the same in
all three, so they are not here.

The adapter is chosen once, at attach time, by **inspecting the live
objects** (the parameter names of ``mgr.set``, the presence of
``mgr.metadata``), never by version strings: a patched or future ARTIQ with
a known shape works, an unknown shape is refused (:func:`select_adapter`
raises, and the hooks stay off for that run).  Journal payloads are the same
for every generation: ``set`` is always ``[key, value, metadata, broadcast,
persist, archive]``, with ``metadata = {}`` on release-7.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

from ..errors import JournalError
from ..state import DatasetState

__all__ = ["ArtiqAdapter", "Artiq8Adapter", "Artiq7Adapter",
           "select_adapter", "expid_pyon", "EXPID_PYON_MAX"]

#: ``expid_pyon`` longer than this (UTF-8 bytes) is dropped with a warning.
EXPID_PYON_MAX = 1 << 20

_SET8 = ("key", "value", "metadata", "broadcast", "persist", "archive")
_SET7 = ("key", "value", "broadcast", "persist", "archive")
_COMMON = {"mutate": ("key", "index", "value"),
           "append_to": ("key", "value"),
           "get": ("key", "archive")}


class CallNotUnderstood(Exception):
    """Internal: a hooked call the journal cannot turn into a record (ARTIQ
    accepted it; the journal stops, the run goes on)."""


def _parameters(method: Any) -> tuple[str, ...] | None:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    return tuple(p.name for p in params)


class ArtiqAdapter:
    """How to journal one generation's ``DatasetManager`` (see the module
    docstring).  One instance per journaled manager, made at attach time."""

    #: Recorded in run_info as ``artiq_adapter``.
    name = "?"
    #: Parameter names of this generation's ``set``.
    set_params: tuple[str, ...] = ()

    def __init__(self, mgr: Any) -> None:
        self.mgr = mgr
        self._set_signature = inspect.signature(mgr.set)

    def set_payload_maker(self) -> Callable[[tuple, dict], list]:
        """``make(args, kwargs)`` -> the ``set`` record payload of a call
        that ARTIQ's ``set`` accepted; raises CallNotUnderstood."""
        raise NotImplementedError

    def _bind(self, args: tuple, kwargs: dict) -> dict:
        try:
            bound = self._set_signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise CallNotUnderstood(f"set{args!r:.80}: {exc}") from None
        bound.apply_defaults()
        return bound.arguments

    def restore(self, key: str, value: Any, metadata: dict, broadcast: bool,
                persist: bool, archive: bool) -> None:
        """Set a dataset (resume) through the manager's own, possibly
        journaled, ``set``, in this generation's call form."""
        raise NotImplementedError

    def datasets_view(self) -> DatasetState:
        """The manager's datasets as a DatasetState (for snapshots):
        ``local``/``archive``/``metadata`` are the live dicts (not copies);
        broadcast entries normalized to ``(persist, value, metadata)``."""
        raise NotImplementedError


def _check_set(key: Any, metadata: Any) -> None:
    if not isinstance(key, str):
        raise CallNotUnderstood(f"set() with a {type(key).__name__} key")
    if not isinstance(metadata, dict):
        raise CallNotUnderstood(f"set() with {type(metadata).__name__} "
                                "metadata")


class Artiq8Adapter(ArtiqAdapter):
    """ARTIQ release-8 and master (and the built-in runner)."""

    name = "artiq8"
    set_params = _SET8

    def set_payload_maker(self) -> Callable[[tuple, dict], list]:
        bind = self._bind

        def make(args: tuple, kwargs: dict) -> list:
            if len(args) == 6 and not kwargs:   # HasEnvironment's call
                payload = list(args)
            else:
                a = bind(args, kwargs)
                payload = [a[p] for p in _SET8]
            _check_set(payload[0], payload[2])
            return payload
        return make

    def restore(self, key: str, value: Any, metadata: dict, broadcast: bool,
                persist: bool, archive: bool) -> None:
        self.mgr.set(key, value, metadata, broadcast, persist, archive)

    def datasets_view(self) -> DatasetState:
        mgr = self.mgr
        view = DatasetState(warn=False)
        view.local, view.archive = mgr.local, mgr.archive
        view.metadata = mgr.metadata
        view.broadcast = mgr._broadcaster.raw_view
        return view


class Artiq7Adapter(ArtiqAdapter):
    """ARTIQ release-7: no metadata anywhere."""

    name = "artiq7"
    set_params = _SET7

    def set_payload_maker(self) -> Callable[[tuple, dict], list]:
        bind = self._bind

        def make(args: tuple, kwargs: dict) -> list:
            if len(args) == 5 and not kwargs:   # HasEnvironment's call
                key, value, broadcast, persist, archive = args
            else:
                a = bind(args, kwargs)
                key, value, broadcast, persist, archive = (a[p]
                                                           for p in _SET7)
            _check_set(key, {})
            # Same payload as release-8: recovery writes no attributes.
            return [key, value, {}, broadcast, persist, archive]
        return make

    def restore(self, key: str, value: Any, metadata: dict, broadcast: bool,
                persist: bool, archive: bool) -> None:
        # release-7 cannot hold metadata; a resumed journal written by
        # release-7 has none anyway.
        self.mgr.set(key, value, broadcast, persist, archive)

    def datasets_view(self) -> DatasetState:
        mgr = self.mgr
        view = DatasetState(warn=False)
        view.local, view.archive = mgr.local, mgr.archive
        view.metadata = {}
        # A normalized copy of the table (the values themselves are shared):
        # snapshots are rare, the hot path never comes here.
        view.broadcast = {key: (entry[0], entry[1], {}) for key, entry in
                          mgr._broadcaster.raw_view.items()}
        return view


def select_adapter(mgr: Any) -> ArtiqAdapter:
    """The adapter for the live manager ``mgr``.  Raises JournalError naming
    what is not understood (an ARTIQ whose DatasetManager has another
    shape): the caller then leaves the run unjournaled."""
    what = type(mgr).__name__
    for name, expected in _COMMON.items():
        found = _parameters(getattr(mgr, name, None))
        if found != expected:
            raise JournalError(f"unsupported {what}.{name} signature "
                               f"{found!r} (expected {expected!r})")
    for attr in ("local", "archive"):
        if not isinstance(getattr(mgr, attr, None), dict):
            raise JournalError(f"unsupported {what}: no {attr} dict")
    if not isinstance(getattr(getattr(mgr, "_broadcaster", None),
                              "raw_view", None), dict):
        raise JournalError(f"unsupported {what}: no _broadcaster.raw_view")
    params = _parameters(getattr(mgr, "set", None))
    has_metadata = isinstance(getattr(mgr, "metadata", None), dict)
    if params == _SET8 and has_metadata:
        return Artiq8Adapter(mgr)
    if params == _SET7 and not has_metadata:
        return Artiq7Adapter(mgr)
    raise JournalError(f"unsupported {what}.set signature {params!r} "
                       f"(metadata dict: {has_metadata})")


def expid_pyon(expid: Any) -> tuple[str | None, int | None]:
    """``(text, version)``: ``sipyco.pyon.encode(expid)`` exactly as ARTIQ
    writes it into this run's results file, and the PYON version (1: Python
    style, release-7/8's sipyco; 2: JSON with ``__jsonclass__`` tags,
    master's), detected from the live sipyco.  ``(None, None)`` when sipyco
    is not in use in this process; text None when encoding fails."""
    pyon = sys.modules.get("sipyco.pyon")
    if pyon is None and "artiq" in sys.modules:
        try:
            import sipyco.pyon as pyon  # type: ignore[no-redef]
        except ImportError:
            pyon = None
    if pyon is None:
        return None, None
    try:
        version = 2 if "__jsonclass__" in pyon.encode((1, 2)) else 1
    except Exception:  # noqa: BLE001 - a sipyco we do not understand
        version = None
    try:
        text = pyon.encode(expid)
    except Exception:  # noqa: BLE001 - ARTIQ would fail the same way later
        text = None
    return (text if isinstance(text, str) else None), version
