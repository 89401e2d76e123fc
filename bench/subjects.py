"""What the benchmarks measure: DatasetManagers, journaled the way a real
run is (``worker_hooks.attach``), or not at all.

Two DatasetManager classes are offered when available: the project's
ARTIQ-compatible one (``artiq_journal.runner.datasets``) and the real one
from the vendored ARTIQ sources (``tests/artiq_vendor.py`` extracts them;
optional).  ``attach`` is written by another engineer and may not exist yet:
then every journaled-DatasetManager figure reports n/a with the reason.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from common import IMPORT_PROBLEMS, REPO, optional

from artiq_journal.runner.datasets import DatasetDB
from artiq_journal.runner.datasets import DatasetManager as OurDatasetManager


def _attach_function() -> tuple[Callable | None, str]:
    name = "artiq_journal.worker_hooks.attach"
    module = optional(name)
    if module is None:
        return None, f"{name} is not importable ({IMPORT_PROBLEMS[name]})"
    fn = getattr(module, "attach", None)
    if fn is None:
        return None, "worker_hooks.attach has no attach()"
    return fn, ""


def _real_artiq_class() -> tuple[type | None, str]:
    tests = os.path.join(REPO, "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    try:
        import artiq_vendor
    except ImportError as exc:
        return None, f"tests/artiq_vendor.py not importable: {exc}"
    if not artiq_vendor.available("artiq.master.worker_db"):
        return None, "vendored ARTIQ not usable here"
    from artiq.master.worker_db import DatasetManager
    return DatasetManager, ""


def dataset_manager_classes() -> dict[str, tuple[type | None, str]]:
    """label -> (class or None, why not)."""
    return {"ours": (OurDatasetManager, ""),
            "ARTIQ": _real_artiq_class()}


@dataclass
class Subject:
    """One DatasetManager, journaled or not, and how to tear it down."""

    dm: Any
    journal_root: str | None = None
    live: Any = None

    def close(self) -> None:
        if self.live is not None:
            close = getattr(self.live, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            self.live = None

    def journal_bytes(self) -> int:
        """Bytes of every journal file under this run's results dir (the
        journal's growth is what an operation cost on disk)."""
        from common import tree_bytes
        return 0 if self.journal_root is None else tree_bytes(
            self.journal_root)


ATTACH, ATTACH_PROBLEM = _attach_function()


def plain(cls: type = OurDatasetManager) -> Subject:
    """An un-journaled DatasetManager (the baseline every overhead is
    measured against)."""
    return Subject(cls(DatasetDB()))


def journaled(results_dir: str, fsync: str,
              cls: type = OurDatasetManager, rid: int = 1) -> Subject:
    """A DatasetManager journaled by ``attach`` into ``results_dir``.
    Raises RuntimeError when attach is unavailable."""
    if ATTACH is None:
        raise RuntimeError(ATTACH_PROBLEM)
    os.makedirs(results_dir, exist_ok=True)
    dm = cls(DatasetDB())
    expid = {"file": "bench.py", "class_name": "Bench", "arguments": {},
             "log_level": 30}
    live = ATTACH(dm, rid=rid, expid=expid, class_name="Bench",
                  results_dir=results_dir, fsync=fsync)
    return Subject(dm, results_dir, live)
