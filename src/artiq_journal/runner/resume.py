"""Resuming a run of the built-in runner: find the earlier run's journal
and last checkpoint, and start a new run of the same experiment that
continues from it (the mechanism of :mod:`artiq_journal.worker_hooks.resume`:
``ARTIQ_JOURNAL_RESUME`` names the earlier journal).

Used by ``artiq-journal resume`` and the demo.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Any

from ..errors import ResumeError
from ..worker_hooks import config as hook_config
from ..worker_hooks.resume import (RESUMED_FROM_DATASET, load_checkpoint,
                                   locate_journal)
from .. import pyon
from .launch import RunningExperiment, start_experiment

__all__ = ["ResumeSource", "find_resume_source", "start_resumed_experiment",
           "journal_of_run", "resumed_from_of", "RESUME_ARGUMENT"]

#: The mixin's default argument naming the run to resume (resume.py).
RESUME_ARGUMENT = "resume_from"

def journal_of_run(results_dir: str, rid: int,
                   h5_path: str | None = None) -> str | None:
    """The journal directory of run ``rid`` under ``results_dir/*/*``:
    beside ``h5_path`` if given (whether or not it still exists; a
    completed run's journal is deleted by default), else found by RID;
    None if there is none."""
    if h5_path is not None:
        return os.path.splitext(h5_path)[0] + ".journal"
    pattern = os.path.join(glob.escape(os.path.abspath(results_dir)), "*",
                           "*", f"{rid:09d}-*.journal")
    found = sorted(p for p in glob.glob(pattern) if os.path.isdir(p))
    return found[-1] if found else None


def resumed_from_of(h5_path: str | None) -> dict | None:
    """The ``{"rid", "seq", "journal"}`` a results file records in its
    ``journal.resumed_from`` dataset, or None."""
    if h5_path is None or not os.path.exists(h5_path):
        return None
    import h5py  # only needed here
    with h5py.File(h5_path, "r") as f:
        node = f.get(f"datasets/{RESUMED_FROM_DATASET}")
        if node is None:
            return None
        raw = node[()]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


@dataclasses.dataclass(frozen=True)
class ResumeSource:
    """The run to resume: its RID, the seq of its last checkpoint, its
    journal directory and the expid it ran with."""

    rid: int
    seq: int
    journal: str
    expid: dict
    class_name: str
    #: The user state of that checkpoint (e.g. ``{"i": 12}``).
    checkpoint: Any


def find_resume_source(rid: int, results_dir: str) -> ResumeSource:
    """Locate run ``rid``'s journal under ``results_dir/<date>/<hour>/`` and
    read its last checkpoint (read-only).  Raises ResumeError if there is
    no journal, several, it is still being written, or it has no
    checkpoint."""
    root = os.path.abspath(results_dir)
    if not os.path.isdir(root):
        raise ResumeError("no such results directory", path=root)
    path = locate_journal(str(rid), root)
    run_info, state, seq = load_checkpoint(path)
    expid = run_info.get("expid")
    if run_info.get("expid_pyon"):
        # The journal stored repr() stand-ins; the PYON text is exact.
        expid = pyon.decode(run_info["expid_pyon"])
    if not isinstance(expid, dict) or not expid.get("file"):
        raise ResumeError("run_info has no expid with the experiment file",
                          path=path)
    return ResumeSource(rid=int(run_info.get("rid", rid)), seq=seq,
                        journal=path, expid=expid,
                        class_name=str(run_info.get("class_name")),
                        checkpoint=state.checkpoint)


def start_resumed_experiment(source: ResumeSource, results_dir: str,
                             arguments: dict | None = None,
                             fsync: str = "group", rid: int | None = None,
                             env: dict | None = None,
                             **options: Any) -> RunningExperiment:
    """Start a new run (new RID unless ``rid``) of ``source``'s experiment
    -- same file, class and arguments, ``arguments`` overriding some --
    that resumes from ``source.journal``'s last checkpoint.  Returns at
    once, as :func:`~artiq_journal.runner.start_experiment`, whose keyword
    ``options`` it passes on."""
    expid = source.expid
    file = expid["file"]
    if not os.path.isfile(file):
        raise ResumeError(f"the experiment file of RID {source.rid} is gone",
                          path=file)
    run_arguments = dict(expid.get("arguments") or {})
    run_arguments.update(arguments or {})
    if RESUME_ARGUMENT in run_arguments:
        # An explicit argument wins over the environment (resume.py).
        run_arguments[RESUME_ARGUMENT] = source.journal
    child_env = dict(env or {})
    child_env[hook_config.ENV_RESUME] = source.journal
    options.setdefault("log_level", expid.get("log_level", logging.WARNING))
    return start_experiment(file, expid.get("class_name"), run_arguments,
                            rid, results_dir, True, fsync, child_env,
                            **options)
