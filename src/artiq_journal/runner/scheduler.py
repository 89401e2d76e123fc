"""The worker's virtual devices: ``Scheduler`` and ``DeviceManager``.

Same interface as the worker-side objects in ARTIQ's ``worker_impl.py`` and
``worker_db.py``. There is no master: the run is alone in its pipeline, so
only termination can make ``pause`` act. Termination is requested by
creating the run's *termination file* (see ``RunningExperiment
.request_termination``) or by calling ``request_termination(rid)`` in the
worker; a file needs no signal handler, so a request can never kill a worker
that has not finished starting.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TerminationRequested", "Scheduler", "DummyDevice", "DeviceError",
           "DeviceDB", "DeviceManager", "file_import"]


class TerminationRequested(Exception):
    """Raised by :meth:`Scheduler.pause` when termination was requested."""


class Scheduler:
    """The ``scheduler`` virtual device of a run."""

    def __init__(self, termination_file: str | None = None) -> None:
        self.rid: int | None = None
        self.pipeline_name: str | None = None
        self.expid: dict | None = None
        self.priority: int | None = None
        self.termination_file = termination_file
        self.termination_requested = False
        #: ``(pipeline_name, expid, priority, due_date, flush)`` of each
        #: :meth:`submit`; the built-in runner does not execute them.
        self.submissions: list[tuple] = []

    def set_run_info(self, rid: int, pipeline_name: str, expid: dict,
                     priority: int) -> None:
        self.rid = rid
        self.pipeline_name = pipeline_name
        self.expid = expid
        self.priority = priority

    def _terminating(self) -> bool:
        if not self.termination_requested and self.termination_file:
            # Sticky once seen, like the master's per-run flag.
            self.termination_requested = os.path.exists(
                self.termination_file)
        return self.termination_requested

    def pause(self) -> None:
        """Return at once, or raise :class:`TerminationRequested` if
        termination was requested (no other run can preempt this one)."""
        if self._terminating():
            raise TerminationRequested

    def check_pause(self, rid: int | None = None) -> bool:
        """True iff :meth:`pause` would not return at once. ``KeyError`` for
        a RID other than this run's, as the master for an unknown RID."""
        if rid is not None and rid != self.rid:
            raise KeyError("RID not found")
        return self._terminating()

    def check_termination(self, rid: int | None = None) -> bool:
        """True iff termination of run ``rid`` (default: this one) was
        requested."""
        if rid is not None and rid != self.rid:
            return False
        return self._terminating()

    def submit(self, pipeline_name: str | None = None,
               expid: dict | None = None, priority: int | None = None,
               due_date: float | None = None, flush: bool = False) -> int:
        """Record a submission (defaults: this run's values) and return a
        placeholder RID; like ``artiq_run``, nothing is scheduled."""
        if pipeline_name is None:
            pipeline_name = self.pipeline_name
        if expid is None:
            expid = self.expid
        if priority is None:
            priority = self.priority
        self.submissions.append((pipeline_name, expid, priority, due_date,
                                 flush))
        logger.warning("Submission not executed by the built-in runner: %s",
                       expid)
        return -len(self.submissions)

    def delete(self, rid: int) -> None:
        """Deleting this run raises ``SystemExit`` in the experiment, as in an
        ARTIQ worker told to terminate by the master (during ``run`` the
        results file is still written); other RIDs are unknown here."""
        if rid == self.rid:
            sys.exit()
        logger.info("Deleting RID %s (unknown to the built-in runner)", rid)

    def request_termination(self, rid: int) -> None:
        if rid == self.rid:
            self.termination_requested = True
        else:
            logger.info("Requesting termination of RID %s (unknown to the "
                        "built-in runner)", rid)

    def get_status(self) -> dict:
        """The master's status table, holding only this run."""
        if self.rid is None:
            return {}
        return {self.rid: {"pipeline": self.pipeline_name,
                           "expid": self.expid, "priority": self.priority,
                           "due_date": None, "flush": False,
                           "status": "running"}}


def file_import(filename: str, prefix: str = "file_import_") -> Any:
    """Execute a Python file as a fresh module (not in ``sys.modules``) with
    its directory on ``sys.path`` meanwhile, as ARTIQ's ``tools.file_import``.
    """
    path = os.path.abspath(filename)
    modname = prefix + os.path.splitext(os.path.basename(path))[0]
    directory = os.path.dirname(path)
    sys.path.insert(0, directory)
    try:
        loader = importlib.machinery.SourceFileLoader(modname, path)
        spec = importlib.util.spec_from_loader(modname, loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    finally:
        sys.path.remove(directory)
    return module


class DeviceDB:
    """A device DB read from a ``device_db.py`` file (or given as a dict)."""

    def __init__(self, source: str | dict | None = None) -> None:
        if isinstance(source, str):
            source = file_import(source).__dict__["device_db"]
        self.data: dict = {} if source is None else source

    def get_device_db(self) -> dict:
        return self.data

    def get(self, key: str, resolve_alias: bool = False) -> Any:
        desc = self.data[key]
        if resolve_alias:
            while isinstance(desc, str):
                desc = self.data[desc]
        return desc


class DummyDevice:
    pass


class DeviceError(Exception):
    pass


def _create_device(desc: dict, device_mgr: DeviceManager,
                   argument_overrides: dict) -> Any:
    kind = desc["type"]
    if kind == "local":
        module = importlib.import_module(desc["module"])
        device_class = getattr(module, desc["class"])
        arguments = desc.get("arguments", {}) | argument_overrides
        return device_class(device_mgr, **arguments)
    if kind == "dummy":
        return DummyDevice()
    # Controllers need sipyco RPC, which the built-in runner does not have.
    raise ValueError("Unsupported type in device DB: " + kind)


class DeviceManager:
    """Creates devices on first use and closes them at the end of the run,
    as ARTIQ's worker ``DeviceManager`` (``local`` and ``dummy`` types)."""

    def __init__(self, ddb: Any, virtual_devices: dict = dict()) -> None:
        self.ddb = ddb
        self.virtual_devices = virtual_devices
        self.active_devices: list[tuple[Any, Any]] = []
        self.devarg_override: dict = {}

    def get_device_db(self) -> dict:
        return self.ddb.get_device_db()

    def get_desc(self, name: str) -> Any:
        return self.ddb.get(name, resolve_alias=True)

    def get(self, name: str) -> Any:
        """The device ``name``: a virtual device, an already created one with
        the same description, or a new one. ``DeviceError`` on failure."""
        if name in self.virtual_devices:
            return self.virtual_devices[name]
        try:
            desc = self.get_desc(name)
        except Exception as e:
            raise DeviceError(f"Failed to get description of device "
                              f"'{name}'") from e
        for existing_desc, existing_dev in self.active_devices:
            if desc == existing_desc:
                return existing_dev
        try:
            dev = _create_device(desc, self,
                                 self.devarg_override.get(name, {}))
        except Exception as e:
            raise DeviceError(f"Failed to create device '{name}'") from e
        self.active_devices.append((desc, dev))
        return dev

    def notify_run_end(self) -> None:
        for _desc, dev in self.active_devices:
            if hasattr(dev, "notify_run_end"):
                dev.notify_run_end()

    def close_devices(self) -> None:
        """Close active devices in reverse creation order; a failing close is
        logged, not raised, so the others still get closed."""
        for _desc, dev in reversed(self.active_devices):
            try:
                if hasattr(dev, "close"):
                    dev.close()
            except Exception:
                logger.warning("Exception raised when closing device %r:",
                               dev, exc_info=True)
        self.active_devices.clear()
