"""Write a run's ``datasets`` and ``archive`` groups under a storage policy.

The ONE implementation of :mod:`artiq_journal.storage_policy`, used by
every writer of a results file, so they agree byte for byte on layout,
values, filters and attributes:

* ARTIQ's own file (the automatic hook wraps the manager's ``write_hdf5``)
  and the built-in runner's file;
* ``write_results_file`` (recovery, ``artiq-journal export``, the live
  file, ``write_results()``).

Without a policy (or with a default one) it is exactly
:meth:`artiq_journal.state.DatasetState.write_hdf5`: ARTIQ's layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .state import _write_dataset
from .storage_policy import (ATTRIBUTE_MAX_BYTES, CUSTOM_METHODS,
                             StoragePolicy)

logger = logging.getLogger("artiq_journal")

__all__ = ["JournalStorage", "Layout", "custom_methods", "store_default"]

#: ``report(reason, severity)``: where a writer's notes go.
Report = Callable[[str, str], None]


def _ignore(reason: str, severity: str) -> None:
    pass


def numeric_array(value: Any) -> "np.ndarray | None":
    """``value`` as the numeric (or bool) numpy array h5py would store for
    it, or None when h5py would store something else (a str, a list of
    str, a ragged list...).  A list is converted only when its first item
    is a number or a list (no huge object-array copies)."""
    if isinstance(value, np.ndarray):
        array = value
    elif type(value) is list and value and isinstance(
            value[0], (int, float, complex, np.number, np.bool_, list)):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):
            return None
    else:
        return None
    return array if array.dtype.kind in "biufc" else None


def _compressible(value: Any) -> "np.ndarray | None":
    array = numeric_array(value)
    if array is None or array.ndim < 1 or array.size < 1:
        return None
    return array


def _attribute_value(value: Any) -> "tuple[Any, str] | None":
    """(value to store, "") when ``value`` is attribute-sized plain data,
    else (None, why not)."""
    if isinstance(value, (bool, np.bool_, float, complex, np.number)):
        return value, ""
    if isinstance(value, int):
        if -2**63 <= value < 2**63:
            return value, ""
        return None, "an int beyond 64 bits"
    if isinstance(value, str):
        if "\0" in value:
            return None, "a str with NUL"
        if len(value.encode("utf-8", "surrogatepass")) > ATTRIBUTE_MAX_BYTES:
            return None, "a str over the attribute size limit"
        return value, ""
    array = numeric_array(value)
    if array is None:
        return None, f"a {type(value).__name__} that is not numeric data"
    if array.nbytes > ATTRIBUTE_MAX_BYTES:
        return None, f"{array.nbytes} bytes (attribute limit " \
                     f"{ATTRIBUTE_MAX_BYTES})"
    return array, ""


def store_default(f: Any, name: str, value: Any,
                  policy: "StoragePolicy | None" = None) -> Any:
    """Store one dataset of the ``datasets`` group of the open h5py file
    ``f`` the policy's way (compressed when its rules say so, else ARTIQ's
    ``group[name] = value``); return the stored h5py object.  For custom
    ``store_dataset`` methods that want the default for some names."""
    group = f["datasets"] if "datasets" in f else f.create_group("datasets")
    array = _compressible(value) if policy is not None else None
    if array is not None and policy.compresses(name, array.nbytes):
        return group.create_dataset(name, data=array,
                                    **policy.filter_options())
    group[name] = value
    return group[name]


class JournalStorage:
    """Mixin with the default ``store_dataset``/``write_metadata``, so a
    custom override may call ``super()``::

        class Scan(JournalStorage, EnvExperiment):
            journal_storage = StoragePolicy(compress_above=1 << 16)
            def store_dataset(self, f, name, value):
                if name == "image":
                    ...
                    return f["datasets"]["image"]
                return super().store_dataset(f, name, value)
    """

    journal_storage: "StoragePolicy | None" = None

    def store_dataset(self, f: Any, name: str, value: Any) -> Any:
        return store_default(f, name, value, _declared(self))

    def write_metadata(self, f: Any) -> None:
        pass


def _declared(obj: Any) -> "StoragePolicy | None":
    policy = getattr(obj, "journal_storage", None)
    if policy is not None and not isinstance(policy, StoragePolicy):
        raise TypeError("journal_storage must be a StoragePolicy, not "
                        f"{type(policy).__name__}")
    return policy


def custom_methods(obj: Any) -> tuple:
    """Names of ``obj``'s (an experiment or its class) own storage methods:
    callables named ``store_dataset``/``write_metadata`` that are not
    :class:`JournalStorage`'s defaults."""
    cls = obj if isinstance(obj, type) else type(obj)
    found = []
    for name in CUSTOM_METHODS:
        method = getattr(cls, name, None)
        if callable(method) and method is not getattr(JournalStorage, name):
            found.append(name)
    return tuple(found)


@dataclass
class Layout:
    """A policy ready to write: the declarative part (``policy``, with the
    names of the custom methods in ``policy.custom``) and the custom
    methods when they may be run (bound, or None)."""

    policy: StoragePolicy
    store_dataset: "Callable | None" = None
    write_metadata: "Callable | None" = None

    @classmethod
    def of_experiment(cls, experiment: Any) -> "Layout | None":
        """The layout an experiment (instance) asks for; None for ARTIQ's
        plain layout.  TypeError for a ``journal_storage`` that is not a
        StoragePolicy."""
        policy = _declared(experiment)
        custom = custom_methods(experiment)
        if policy is None and not custom:
            return None
        policy = (policy or StoragePolicy()).with_custom(custom)
        return cls(policy,
                   getattr(experiment, "store_dataset")
                   if "store_dataset" in custom else None,
                   getattr(experiment, "write_metadata")
                   if "write_metadata" in custom else None)

    @property
    def results_file(self) -> bool:
        return self.policy.results_file

    def not_applied(self) -> "list[str]":
        """Custom methods the policy names that this layout cannot run."""
        missing = []
        if "store_dataset" in self.policy.custom and \
                self.store_dataset is None:
            missing.append("store_dataset")
        if "write_metadata" in self.policy.custom and \
                self.write_metadata is None:
            missing.append("write_metadata")
        return missing

    def write_hdf5(self, f: Any, datasets: Any, *, raw: Any = None,
                   report: Report = _ignore) -> None:
        """Create and fill the ``datasets`` and ``archive`` groups of ``f``
        (an h5py File, or recovery's guarded stand-in with the real file in
        ``raw``) from ``datasets`` (a DatasetState or the live manager's
        view).  Raises what h5py or the custom method raises."""
        raw = f if raw is None else raw
        policy = self.policy
        metadata = datasets.metadata
        group = f.create_group("datasets")
        if self.store_dataset is not None:
            for key, value in datasets.local.items():
                node = self.store_dataset(raw, key, value)
                attrs = getattr(node, "attrs", None)
                if attrs is not None:
                    for name, item in metadata.get(key, {}).items():
                        attrs[name] = item
        else:
            self._write_declared(group, datasets, report)
        archive = f.create_group("archive")
        for key, value in datasets.archive.items():
            _write_dataset(archive, key, value, metadata.get(key, {}))

    def _write_declared(self, group: Any, datasets: Any,
                        report: Report) -> None:
        policy = self.policy
        local = datasets.local
        as_attribute: dict = {}
        if policy.attributes_of:
            for key in local:
                where = policy.attribute_target(key)
                if where is None:
                    continue
                target, attr = where
                if target == key or target not in local or \
                        policy.attribute_target(target) is not None:
                    report(f"dataset {key!r}: attribute target {target!r} "
                           "is not a stored dataset of the run; kept as a "
                           "dataset", "info")
                    continue
                value, why = _attribute_value(local[key])
                if why:
                    report(f"dataset {key!r} is {why}: kept as a dataset, "
                           f"not an attribute of {target!r}", "info")
                    continue
                as_attribute[key] = (target, attr, value)
        for key, value in local.items():
            if key in as_attribute:
                continue
            array = _compressible(value)
            if array is not None and policy.compresses(key, array.nbytes):
                group.create_dataset(key, data=array,
                                     **policy.filter_options())
            else:
                group[key] = value
            node = group[key]
            for name, item in datasets.metadata.get(key, {}).items():
                node.attrs[name] = item
        for key, (target, attr, value) in as_attribute.items():
            attrs = group[target].attrs
            attrs[attr] = value
            for name, item in datasets.metadata.get(key, {}).items():
                attrs[f"{attr}.{name}"] = item

    def write_metadata_into(self, f: Any) -> None:
        """Run the custom ``write_metadata(f)``, if any."""
        if self.write_metadata is not None:
            self.write_metadata(f)
