"""The built-in runner's dataset side: ARTIQ's worker ``DatasetManager``, a
minimal sipyco-style ``Notifier`` and a small dataset DB.

``DatasetManager`` is :class:`artiq_journal.state.DatasetState` (where the
semantics live) plus what ARTIQ's class adds around it: ``ddb``, ``get``,
``get_metadata`` and ``_broadcaster``, whose ``publish`` (``ddb.update``)
receives sipyco ``sync_struct`` mods such as
``{"action": "setitem", "path": [], "key": k, "value": (persist, v, md)}``.
"""

from __future__ import annotations

import copy
import logging
import os
from operator import getitem
from typing import Any, Callable

from artiq_journal import pyon
from artiq_journal.state import DatasetState

logger = logging.getLogger(__name__)

__all__ = ["Notifier", "process_mod", "DatasetManager", "DatasetDB"]


def process_mod(target: Any, mod: dict) -> None:
    """Apply a sipyco ``sync_struct`` mod to ``target`` in place (follow
    ``mod["path"]``, then append/insert/pop/setitem/delitem)."""
    for step in mod["path"]:
        target = getitem(target, step)
    action = mod["action"]
    if action == "append":
        target.append(mod["x"])
    elif action == "insert":
        target.insert(mod["i"], mod["x"])
    elif action == "pop":
        target.pop(mod["i"])
    elif action == "setitem":
        target[mod["key"]] = mod["value"]
    elif action == "delitem":
        del target[mod["key"]]
    else:
        raise ValueError(f"unknown sync_struct action {action!r}")


class Notifier:
    """The part of ``sipyco.sync_struct.Notifier`` a DatasetManager uses.

    Changes made through it are applied to ``raw_view`` and then passed, as
    mods, to ``root.publish`` (if set). ``notifier[key]`` returns a Notifier
    for the item, whose changes are published with the longer path.
    """

    def __init__(self, backing_struct: Any, root: Notifier | None = None,
                 path: list | None = None) -> None:
        self.raw_view = backing_struct
        self.root = self if root is None else root
        if root is None:
            self.publish: Callable[[dict], None] | None = None
        self._path = [] if path is None else path

    def _notify(self, mod: dict) -> None:
        if self.root.publish is not None:
            self.root.publish(mod)

    def append(self, x: Any) -> None:
        self.raw_view.append(x)
        self._notify({"action": "append", "path": self._path, "x": x})

    def __setitem__(self, key: Any, value: Any) -> None:
        self.raw_view.__setitem__(key, value)
        self._notify({"action": "setitem", "path": self._path, "key": key,
                      "value": value})

    def __delitem__(self, key: Any) -> None:
        self.raw_view.__delitem__(key)
        self._notify({"action": "delitem", "path": self._path, "key": key})

    def __getitem__(self, key: Any) -> Notifier:
        return Notifier(getitem(self.raw_view, key), self.root,
                        self._path + [key])


class DatasetManager(DatasetState):
    """ARTIQ's ``artiq.master.worker_db.DatasetManager``, same constructor,
    attributes (``local``, ``archive``, ``metadata``, ``ddb``,
    ``_broadcaster``), methods and exceptions.

    ``ddb`` needs ``get(key)``, ``get_metadata(key)`` and ``update(mod)``.
    ``_broadcaster.raw_view`` is the ``broadcast`` dict of the state.
    """

    def __init__(self, ddb: Any) -> None:
        super().__init__()
        self._broadcaster = Notifier(self.broadcast)
        self.ddb = ddb
        self._broadcaster.publish = ddb.update

    def _publish(self, mod: dict) -> None:
        # Looked up on every call: like ARTIQ, a caller may swap publish.
        publish = self._broadcaster.publish
        if publish is not None:
            publish(mod)

    def get(self, key: str, archive: bool = False) -> Any:
        """The archived value set in this run if there is one, else
        ``ddb.get(key)`` (``KeyError`` if absent), stored into ``archive``
        when ``archive`` is true (see ``DatasetState.archive_value``)."""
        if key in self.local:
            return self.local[key]
        data = self.ddb.get(key)
        if archive:
            self.archive_value(key, data)
        return data

    def get_metadata(self, key: str) -> dict:
        """Metadata set in this run, else ``ddb.get_metadata(key)``."""
        if key in self.metadata:
            return self.metadata[key]
        return self.ddb.get_metadata(key)


class DatasetDB:
    """The master's dataset DB for the built-in runner, in the worker process.

    ``data`` maps key -> ``(persist, value, metadata)`` like ARTIQ's
    ``DatasetDB.data.raw_view``. With ``persist_file``, persistent datasets
    are loaded from it (a PYON dict key -> ``(value, metadata)``; ARTIQ uses
    LMDB instead) and :meth:`save` writes them back atomically.
    """

    def __init__(self, persist_file: str | None = None) -> None:
        # Absolute: the worker chdirs into the results directory before
        # saving.
        self.persist_file = (None if persist_file is None
                             else os.path.abspath(persist_file))
        self.data: dict[str, tuple[bool, Any, dict]] = {}
        if self.persist_file is not None and os.path.exists(self.persist_file):
            stored = pyon.load_file(self.persist_file)
            for key, (value, metadata) in stored.items():
                self.data[key] = (True, value, metadata)

    def get(self, key: str) -> Any:
        """The value of ``key``; ``KeyError`` if absent."""
        return self.data[key][1]

    def get_metadata(self, key: str) -> dict:
        """The metadata of ``key``; ``KeyError`` if absent."""
        return self.data[key][2]

    def update(self, mod: dict) -> None:
        """Apply a mod published by a DatasetManager.

        The mod is deep-copied first: in ARTIQ it crosses a process boundary,
        and sharing the manager's objects would apply later mods twice.
        """
        process_mod(self.data, copy.deepcopy(mod))

    def set(self, key: str, value: Any, persist: bool | None = None,
            metadata: dict | None = None) -> None:
        """Set a dataset directly (as ``artiq_client set-dataset``); unset
        ``persist``/``metadata`` keep their current values."""
        old = self.data.get(key)
        if persist is None:
            persist = old[0] if old is not None else False
        if metadata is None:
            metadata = old[2] if old is not None else {}
        self.data[key] = (persist, value, metadata)

    def delete(self, key: str) -> None:
        """Remove ``key``; ``KeyError`` if absent."""
        del self.data[key]

    def save(self) -> None:
        """Write the persistent datasets to ``persist_file`` (no-op without
        one). Atomic and durable: see :func:`artiq_journal.pyon.store_file`."""
        if self.persist_file is None:
            return
        pyon.store_file(self.persist_file, {
            key: (value, metadata)
            for key, (persist, value, metadata) in self.data.items()
            if persist})
