"""ARTIQ dataset semantics, in exactly one place.

:class:`DatasetState` holds what ARTIQ's worker-side ``DatasetManager``
(``artiq/master/worker_db.py``) holds -- ``local``, ``archive``, ``metadata``
and the broadcast table -- and changes it the way ARTIQ does: same aliasing,
same exceptions with the same messages, same warnings, same HDF5 output.
Journal replay, recovery, resume and the built-in runner all go through it,
and ``tests/test_state_differential.py`` checks it against the real ARTIQ
class operation by operation.

It needs neither ARTIQ nor h5py: :meth:`DatasetState.write_hdf5` takes an
already open h5py file or group.
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Mapping, Sequence
from typing import Any

from artiq_journal.errors import CorruptSnapshot

logger = logging.getLogger(__name__)

__all__ = ["DatasetState", "SNAPSHOT_FORMAT", "convert_index"]

#: Version of the plain-data encoding made by :meth:`DatasetState.to_snapshot`.
SNAPSHOT_FORMAT = 1


def convert_index(index: Any) -> Any:
    """Turn a ``mutate`` index into what ARTIQ hands to ``__setitem__``.

    A tuple of tuples becomes a tuple of slices (multi-dimensional slicing),
    any other tuple becomes ``slice(*index)``; everything else is unchanged.
    Malformed tuples raise what ARTIQ raises (``IndexError`` for ``()``,
    ``TypeError`` for too many slice arguments).
    """
    if not isinstance(index, tuple):
        return index
    if isinstance(index[0], tuple):
        return tuple(slice(*dim) for dim in index)
    return slice(*index)


class DatasetState:
    """The datasets of one run, with ARTIQ's ``DatasetManager`` semantics.

    Attributes (same names and meaning as ARTIQ's):

    - ``local``: key -> value of datasets set with ``archive=True`` (written
      to the ``datasets`` group of the results file).
    - ``archive``: key -> value read from the dataset DB with
      ``get(key, archive=True)`` (the ``archive`` group).
    - ``metadata``: key -> metadata dict of every key ever ``set``.
    - ``broadcast``: key -> ``(persist, value, metadata)``, the contents of
      ARTIQ's ``_broadcaster.raw_view``.

    Invariant kept by every method: a key that is both broadcast and archived
    has one value object, shared by ``local`` and ``broadcast`` (a mutation
    shows in both), and its broadcast metadata is ``metadata[key]``.

    Every change to ``broadcast`` is reported to :meth:`_publish` as a
    sipyco ``sync_struct`` mod, after it succeeded; the default does nothing.
    """

    def __init__(self, *, warn: bool = True) -> None:
        """``warn=False`` silences ARTIQ's warnings (for replaying a journal,
        whose live run already logged them)."""
        self.local: dict[str, Any] = {}
        self.archive: dict[str, Any] = {}
        self.metadata: dict[str, dict] = {}
        self.broadcast: dict[str, tuple[bool, Any, dict]] = {}
        self._warn = warn

    def _publish(self, mod: dict) -> None:
        """Called with a sipyco mod after each change to ``broadcast``.

        The mod references live objects (not copies), as sipyco's Notifier's
        do; a receiver that keeps them must copy them.
        """

    # --- the operations of ARTIQ's DatasetManager ----------------------------

    def set(self, key: str, value: Any, metadata: dict, broadcast: bool,
            persist: bool, archive: bool) -> None:
        """ARTIQ's ``DatasetManager.set``.

        ``persist`` implies ``broadcast``. Broadcast stores
        ``(persist, value, metadata)`` in ``broadcast``, otherwise removes the
        key from it; ``archive`` stores ``value`` in ``local``, otherwise
        removes it. ``metadata[key]`` is always replaced. With neither flag
        only ARTIQ's warning is logged (the metadata is still recorded).
        """
        if persist:
            broadcast = True
        if not (broadcast or archive) and self._warn:
            logger.warning(f"Dataset '{key}' will not be stored. Both "
                           f"'broadcast' and 'archive' are set to False.")
        if broadcast:
            entry = (persist, value, metadata)
            self.broadcast[key] = entry
            self._publish({"action": "setitem", "path": [], "key": key,
                           "value": entry})
        elif key in self.broadcast:
            del self.broadcast[key]
            self._publish({"action": "delitem", "path": [], "key": key})
        if archive:
            self.local[key] = value
        else:
            self.local.pop(key, None)
        self.metadata[key] = metadata

    def mutate(self, key: str, index: Any, value: Any) -> None:
        """ARTIQ's ``DatasetManager.mutate``: ``target[index] = value``.

        The index is converted by :func:`convert_index`. Raises
        ``KeyError("Cannot mutate nonexistent dataset '<key>'")`` for a key
        that is neither broadcast nor archived with a non-None value, and
        otherwise whatever item assignment raises; on any exception nothing
        changed (beyond what a partial numpy assignment itself did).
        """
        target, broadcast = self._mutation_target(key)
        index = convert_index(index)
        if broadcast:
            # ARTIQ assigns through a sipyco Notifier, which calls the bound
            # method: a scalar raises AttributeError here, not TypeError.
            target.__setitem__(index, value)
            self._publish({"action": "setitem", "path": [key, 1],
                           "key": index, "value": value})
        else:
            operator.setitem(target, index, value)

    def append_to(self, key: str, value: Any) -> None:
        """ARTIQ's ``DatasetManager.append_to``: ``target.append(value)``.

        ``KeyError`` as for :meth:`mutate`; ``AttributeError`` for values
        without ``append`` (scalars, numpy arrays).
        """
        target, broadcast = self._mutation_target(key)
        target.append(value)
        if broadcast:
            self._publish({"action": "append", "path": [key, 1], "x": value})

    def list_target(self, key: str) -> list | None:
        """The dataset ``append_to(key, ...)`` would append to, when that is
        a plain list and appending has no other effect (nothing published):
        then appending values one by one equals one ``list.extend``.  None
        otherwise (callers use :meth:`append_to`)."""
        try:
            target, broadcast = self._mutation_target(key)
        except KeyError:
            return None
        if type(target) is not list or (
                broadcast and type(self)._publish is not DatasetState._publish):
            return None
        return target

    def archive_value(self, key: str, value: Any) -> None:
        """What ``get(key, archive=True)`` does with a value read from the
        dataset DB: store it in ``archive``; a repeated read overwrites it
        (last read wins), with ARTIQ's warning."""
        if key in self.archive and self._warn:
            logger.warning("Dataset '%s' is already in archive, overwriting",
                           key, stack_info=True)
        self.archive[key] = value

    def get_local(self, key: str) -> Any:
        """The archived (``local``) value of ``key``, which ``get`` returns
        before consulting the dataset DB. ``KeyError`` when absent."""
        return self.local[key]

    def apply(self, op: str, args: Sequence[Any]) -> None:
        """Replay one journaled operation, named as in
        ``journal.constants.RECORD_TYPE_NAMES``: ``"set"`` (key, value,
        metadata, broadcast, persist, archive), ``"mutate"`` (key, index,
        value), ``"append_to"`` (key, value) or ``"archive"`` (key, value).

        Arguments must have their original Python types: a ``mutate`` index
        that was a tuple must still be a tuple. Raises exactly what the live
        operation raised; ``ValueError`` for an unknown ``op``.
        """
        if op == "set":
            self.set(*args)
        elif op == "mutate":
            self.mutate(*args)
        elif op == "append_to":
            self.append_to(*args)
        elif op == "archive":
            self.archive_value(*args)
        else:
            raise ValueError(f"unknown dataset operation {op!r}")

    def _mutation_target(self, key: str) -> tuple[Any, bool]:
        # ARTIQ looks the key up in local with None as "absent" default, so a
        # dataset archived with value None cannot be mutated: keep that.
        if key in self.broadcast:
            return self.broadcast[key][1], True
        target = self.local.get(key)
        if target is None:
            raise KeyError(f"Cannot mutate nonexistent dataset '{key}'")
        return target, False

    # --- results file --------------------------------------------------------

    def write_hdf5(self, f: Any) -> None:
        """Write the ``datasets`` group (from ``local``) and the ``archive``
        group (from ``archive``) into the open h5py file or group ``f``,
        exactly as ARTIQ does: each value as ``group[key] = value`` (h5py's
        own conversion), then one attribute per metadata item. A value h5py
        cannot store raises ``TypeError("Error writing dataset '<key>' of
        type '<type>': <h5py message>")``; other errors propagate as is.
        """
        datasets_group = f.create_group("datasets")
        for key, value in self.local.items():
            _write_dataset(datasets_group, key, value,
                           self.metadata.get(key, {}))
        archive_group = f.create_group("archive")
        for key, value in self.archive.items():
            _write_dataset(archive_group, key, value,
                           self.metadata.get(key, {}))

    # --- snapshots -----------------------------------------------------------

    def to_snapshot(self) -> dict:
        """The full state as plain data (dicts, lists, str, bool, numbers and
        whatever the dataset values are, e.g. numpy arrays)::

            {"format": 1,
             "datasets": [[key, value, metadata, broadcast, persist, archive]],
             "archive": [[key, value]]}

        ``datasets`` has one entry per key in ``metadata``: archived keys
        first, in ``local`` order (so the results file is written in the same
        order), then the others. A metadata-only key (set with neither flag)
        has value ``None`` and both flags false.

        The values are the live objects, not copies: encode the snapshot
        before the state changes again.
        """
        keys = list(self.local)
        keys += [k for k in self.metadata if k not in self.local]
        keys += [k for k in self.broadcast
                 if k not in self.local and k not in self.metadata]
        entries = []
        for key in keys:
            if key in self.broadcast:
                persist, value, metadata = self.broadcast[key]
                broadcast = True
            else:
                persist, broadcast = False, False
                value = self.local.get(key)
                metadata = self.metadata.get(key, {})
            entries.append([key, value, self.metadata.get(key, metadata),
                            broadcast, persist, key in self.local])
        return {"format": SNAPSHOT_FORMAT, "datasets": entries,
                "archive": [[k, v] for k, v in self.archive.items()]}

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any], *,
                      warn: bool = False) -> DatasetState:
        """Rebuild a state from :meth:`to_snapshot` output (possibly after an
        encode/decode round trip that turned tuples into lists).

        Guarantees: equal ``local``/``archive``/``metadata``/``broadcast``,
        with the key order of ``local`` and ``archive`` (the write order of
        the results file; nothing depends on the order of the other two);
        a broadcast and archived key shares one value object between
        ``local`` and ``broadcast`` (and one metadata dict), exactly as after
        ``set``; nothing else is shared -- every entry is deep-copied, so the
        result never aliases ``snapshot`` or another key. Nothing is
        published and no warning is logged. Raises :class:`CorruptSnapshot`
        if the structure is not a version-1 snapshot.
        """
        state = cls(warn=warn)
        if not isinstance(snapshot, Mapping) or \
                snapshot.get("format") != SNAPSHOT_FORMAT:
            raise CorruptSnapshot("dataset state: not a format-1 snapshot")
        for number, entry in enumerate(_sequence(snapshot, "datasets")):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 6):
                raise CorruptSnapshot(f"dataset state: entry {number} is not "
                                      f"[key, value, metadata, broadcast, "
                                      f"persist, archive]")
            key, value, metadata, broadcast, persist, archive = entry
            if not (isinstance(key, str) and isinstance(metadata, Mapping)
                    and all(isinstance(flag, bool)
                            for flag in (broadcast, persist, archive))):
                raise CorruptSnapshot(f"dataset state: entry {number} has "
                                      f"wrong types")
            value, metadata = copy.deepcopy((value, dict(metadata)))
            if broadcast:
                state.broadcast[key] = (persist, value, metadata)
            if archive:
                state.local[key] = value
            state.metadata[key] = metadata
        for number, item in enumerate(_sequence(snapshot, "archive")):
            if not (isinstance(item, (list, tuple)) and len(item) == 2
                    and isinstance(item[0], str)):
                raise CorruptSnapshot(f"dataset state: archive entry {number}"
                                      f" is not [key, value]")
            state.archive[item[0]] = copy.deepcopy(item[1])
        return state


def _sequence(snapshot: Mapping[str, Any], name: str) -> Sequence[Any]:
    items = snapshot.get(name)
    if not isinstance(items, (list, tuple)):
        raise CorruptSnapshot(f"dataset state: '{name}' is not a list")
    return items


def _write_dataset(group: Any, key: str, value: Any, metadata: dict) -> None:
    # ARTIQ adds the key and type to h5py's TypeError (an unrepresentable
    # value); keep the wording identical, tools may match on it.
    try:
        group[key] = value
        for name, attr in metadata.items():
            group[key].attrs[name] = attr
    except TypeError as e:
        raise TypeError("Error writing dataset '{}' of type '{}': {}".format(
            key, type(value), e))
