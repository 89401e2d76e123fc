"""``--trust-experiment-code``: run an experiment's own ``store_dataset`` /
``write_metadata`` during recovery.

Recovery never runs user code by default: the declarative storage policy
recorded in the journal is applied, and a custom method the journal names
(``storage_policy.custom``) is reported as not applied (warning).  With the
explicit consent of ``artiq-recover --trust-experiment-code``, the
experiment file named by the journal's expid (``expid["file"]``; a relative
path is taken relative to ``--repository``, default the working directory)
is imported -- like ARTIQ's worker does, with importlib; nothing is ever
unpickled or evaluated from the journal -- and its class's methods are
called on a bare instance (made by ``__new__``: ``build()`` does not run, so
the methods must depend only on their arguments and class attributes).
Note that the file imported is the one there now, not necessarily the
revision the run used.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from typing import Any

from ..storage_layout import Layout

__all__ = ["trusted_layout"]

_counter = itertools.count()


def _import_file(path: str) -> Any:
    name = f"artiq_journal_recovered_experiment_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def trusted_layout(base: Layout, run_info: dict,
                   repository: "str | None") -> "tuple[Layout, str | None]":
    """``base`` (the recorded declarative layout) with the experiment's own
    custom methods, and None; or ``base`` unchanged and the reason they
    could not be loaded (a clear text for the report)."""
    expid = run_info.get("expid") if isinstance(run_info, dict) else None
    file = expid.get("file") if isinstance(expid, dict) else None
    if not isinstance(file, str) or not file or "\0" in file:
        return base, ("--trust-experiment-code: the journal names no "
                      "experiment file (expid 'file')")
    where = repository or os.getcwd()
    path = file if os.path.isabs(file) else os.path.join(where, file)
    if not os.path.isfile(path):
        return base, (f"--trust-experiment-code: experiment file {path} not "
                      f"found (relative paths are taken from --repository, "
                      f"here {where}); refusing to guess")
    class_name = expid.get("class_name") if isinstance(
        expid.get("class_name"), str) else run_info.get("class_name")
    try:
        obj: Any = _import_file(path)
        for part in str(class_name).split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, type):
            raise TypeError(f"{class_name} is not a class")
        custom = Layout.of_experiment(obj.__new__(obj))
    except Exception as exc:  # noqa: BLE001 - the user's file
        return base, (f"--trust-experiment-code: cannot load class "
                      f"{class_name} from {path}: {type(exc).__name__}: "
                      f"{exc}")
    if custom is None:
        return base, (f"--trust-experiment-code: {class_name} in {path} "
                      "has no store_dataset/write_metadata any more")
    wanted = base.policy.custom
    return Layout(base.policy,
                  custom.store_dataset if "store_dataset" in wanted else None,
                  custom.write_metadata if "write_metadata" in wanted
                  else None), None
