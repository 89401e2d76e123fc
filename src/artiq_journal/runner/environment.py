"""ARTIQ's experiment environment (``artiq.language.environment``), host side.

Same names, signatures and behaviour as ARTIQ's for what runs on the host:
``HasEnvironment``, ``Experiment``, ``EnvExperiment``, and (from
``runner.arguments``) the argument processors and ``ProcessArgumentManager``.
The managers are stored under the same private names, so code that reaches
for ``self._HasEnvironment__dataset_mgr`` (as journaling hooks do) finds it.
Kernels are out of scope: there is no core device here.
"""

from __future__ import annotations

from contextlib import contextmanager
from inspect import isclass
from types import SimpleNamespace
from typing import Any, Iterator

from artiq_journal.runner.arguments import (  # noqa: F401 -- re-exported
    BooleanValue, CancelledArgsError, DefaultMissing, EnumerationValue,
    NoDefault, NumberValue, ProcessArgumentManager, PYONValue, StringValue)

__all__ = ["NoDefault", "DefaultMissing", "CancelledArgsError",
           "PYONValue", "BooleanValue", "EnumerationValue", "NumberValue",
           "StringValue", "ProcessArgumentManager",
           "HasEnvironment", "Experiment", "EnvExperiment",
           "is_experiment", "is_public_experiment"]


class HasEnvironment:
    """Access to arguments, devices and datasets, as in ARTIQ.

    ``managers_or_parent`` is ``(device_mgr, dataset_mgr, argument_mgr,
    scheduler_defaults)`` or a parent ``HasEnvironment``; remaining
    arguments go to :meth:`build`.
    """

    def __init__(self, managers_or_parent: Any, *args: Any,
                 **kwargs: Any) -> None:
        self.children: list = []
        if isinstance(managers_or_parent, tuple):
            self.__device_mgr = managers_or_parent[0]
            self.__dataset_mgr = managers_or_parent[1]
            self.__argument_mgr = managers_or_parent[2]
            self.__scheduler_defaults = managers_or_parent[3]
        else:
            parent = managers_or_parent
            self.__device_mgr = parent.__device_mgr
            self.__dataset_mgr = parent.__dataset_mgr
            self.__argument_mgr = parent.__argument_mgr
            self.__scheduler_defaults = {}
            parent.register_child(self)
        self.__in_build = True
        self.build(*args, **kwargs)
        self.__in_build = False

    def register_child(self, child: HasEnvironment) -> None:
        self.children.append(child)

    def call_child_method(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``method`` on each child that has it, in registration order."""
        for child in self.children:
            try:
                child_method = getattr(child, method)
            except AttributeError:
                continue
            child_method(*args, **kwargs)

    def build(self) -> None:
        """Request arguments and devices; overridden by experiments."""

    def get_argument(self, key: str, processor: Any, group: str | None = None,
                     tooltip: str | None = None) -> Any:
        """The processed value of argument ``key``; only from ``build``."""
        if not self.__in_build:
            raise TypeError("get_argument() should only "
                            "be called from build()")
        return self.__argument_mgr.get(key, processor, group, tooltip)

    def setattr_argument(self, key: str, processor: Any = None,
                         group: str | None = None,
                         tooltip: str | None = None) -> None:
        setattr(self, key, self.get_argument(key, processor, group, tooltip))
        self.kernel_invariants = getattr(self, "kernel_invariants",
                                         set()) | {key}

    @contextmanager
    def interactive(self, title: str = "") -> Iterator[SimpleNamespace]:
        arglist: list = []
        namespace = SimpleNamespace()

        def setattr_argument(key, processor=None, group=None, tooltip=None):
            arglist.append((key, processor, group, tooltip))
        namespace.setattr_argument = setattr_argument
        yield namespace
        del namespace.setattr_argument
        argdict = self.__argument_mgr.get_interactive(arglist, title)
        if argdict is None:
            raise CancelledArgsError
        for key, value in argdict.items():
            setattr(namespace, key, value)

    def get_device_db(self) -> dict:
        return self.__device_mgr.get_device_db()

    def get_device(self, key: str) -> Any:
        return self.__device_mgr.get(key)

    def setattr_device(self, key: str) -> None:
        setattr(self, key, self.get_device(key))
        self.kernel_invariants = getattr(self, "kernel_invariants",
                                         set()) | {key}

    def set_dataset(self, key: str, value: Any, *, unit: str | None = None,
                    scale: float | None = None, precision: int | None = None,
                    broadcast: bool = False, persist: bool = False,
                    archive: bool = True) -> None:
        """Set a dataset; metadata holds only the given unit/scale/precision."""
        metadata = {}
        if unit is not None:
            metadata["unit"] = unit
        if scale is not None:
            metadata["scale"] = scale
        if precision is not None:
            metadata["precision"] = precision
        self.__dataset_mgr.set(key, value, metadata, broadcast, persist,
                               archive)

    def mutate_dataset(self, key: str, index: Any, value: Any) -> None:
        self.__dataset_mgr.mutate(key, index, value)

    def append_to_dataset(self, key: str, value: Any) -> None:
        self.__dataset_mgr.append_to(key, value)

    def get_dataset(self, key: str, default: Any = NoDefault,
                    archive: bool = True) -> Any:
        """The dataset's value (this run's first, then the dataset DB);
        ``default`` if absent, else ``KeyError``."""
        try:
            return self.__dataset_mgr.get(key, archive)
        except KeyError:
            if default is NoDefault:
                raise
            return default

    def get_dataset_metadata(self, key: str, default: Any = NoDefault) -> Any:
        try:
            return self.__dataset_mgr.get_metadata(key)
        except KeyError:
            if default is NoDefault:
                raise
            return default

    def setattr_dataset(self, key: str, default: Any = NoDefault,
                        archive: bool = True) -> None:
        setattr(self, key, self.get_dataset(key, default, archive))

    def set_default_scheduling(self, priority: int | None = None,
                               pipeline_name: str | None = None,
                               flush: bool | None = None) -> None:
        if not self.__in_build:
            raise TypeError("set_default_scheduling() should only "
                            "be called from build()")
        if priority is not None:
            self.__scheduler_defaults["priority"] = int(priority)
        if pipeline_name is not None:
            self.__scheduler_defaults["pipeline_name"] = pipeline_name
        if flush is not None:
            self.__scheduler_defaults["flush"] = flush


class Experiment:
    """Base class of top-level experiments (found by the runner)."""

    def prepare(self) -> None:
        """Pre-compute what ``run`` needs; no hardware access."""

    def run(self) -> None:
        """The experiment's main control flow."""
        raise NotImplementedError

    def analyze(self) -> None:
        """Analyse the results; no hardware access."""


class EnvExperiment(Experiment, HasEnvironment):
    """The usual base class: an ``Experiment`` with an environment."""

    def prepare(self) -> None:
        """Call ``prepare`` of every child, in registration order."""
        self.call_child_method("prepare")


def is_experiment(o: Any) -> bool:
    """Whether ``o`` is a top-level experiment class."""
    return (isclass(o) and issubclass(o, Experiment)
            and o is not Experiment and o is not EnvExperiment)


def is_public_experiment(o: Any) -> bool:
    """Whether ``o`` is an experiment class not named with a leading ``_``."""
    return is_experiment(o) and not o.__name__.startswith("_")
