"""Resuming a run of the built-in runner: find the earlier run's journal
and last checkpoint, and start a new run of the same experiment that
continues from it (the mechanism of :mod:`artiq_journal.worker_hooks.resume`:
``ARTIQ_JOURNAL_RESUME`` names the earlier journal).

Used by ``artiq-journal resume`` and the demo.
"""

from __future__ import annotations

import copy
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
from .live_master import masters_owning

__all__ = ["ResumeSource", "find_resume_source", "start_resumed_experiment",
           "journal_of_run", "resumed_from_of", "RESUME_ARGUMENT",
           "MasterOwnsResults", "refuse_if_master_owns", "resume_expid",
           "submit_resume_to_master"]

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
    #: The run's pipeline and priority (ARTIQ's scheduler), from run_info.
    pipeline_name: str = "main"
    priority: int = 0
    #: The results root the journal was found under (``results/``).
    results_root: str = ""
    #: SHA-256 of the experiment file when that run started (run_info).
    experiment_sha256: "str | None" = None


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
    expid = _checked_expid(run_info, path)
    return ResumeSource(rid=int(run_info.get("rid", rid)), seq=seq,
                        journal=path, expid=expid,
                        class_name=str(run_info.get("class_name")),
                        checkpoint=state.checkpoint,
                        pipeline_name=str(run_info.get("pipeline_name")
                                          or "main"),
                        priority=_int_or(run_info.get("priority"), 0),
                        results_root=root,
                        experiment_sha256=run_info.get("experiment_sha256")
                        if isinstance(run_info.get("experiment_sha256"),
                                      str) else None)


def _checked_expid(run_info: dict, path: str) -> dict:
    """The expid the journal names, checked to be one a run can be started
    from; a journal may come from a damaged or hostile disk, so anything
    else is a ResumeError naming the journal, never a traceback."""
    expid = run_info.get("expid")
    text = run_info.get("expid_pyon")
    if isinstance(text, str) and text:
        # The PYON text is exact where the journal stored stand-ins.
        try:
            expid = pyon.decode(text)
        except Exception as exc:  # noqa: BLE001 - hostile text: say so
            raise ResumeError(f"run_info's expid_pyon cannot be read "
                              f"({type(exc).__name__}: {exc})",
                              path=path) from None
    problem = None
    if not isinstance(expid, dict):
        problem = "run_info has no expid map"
    elif not isinstance(expid.get("file"), str) or not expid["file"] \
            or "\0" in expid["file"]:
        problem = "the expid names no experiment file"
    elif not isinstance(expid.get("arguments", {}), dict):
        problem = "the expid's arguments are not a map"
    elif expid.get("class_name") is not None and \
            not isinstance(expid["class_name"], str):
        problem = "the expid's class_name is not a string"
    if problem is not None:
        raise ResumeError(f"{problem}; cannot start a run from it",
                          path=path)
    return expid


def experiment_check(source: "ResumeSource") -> tuple[str, str | None, str]:
    """``(file, sha256 now or None, verdict)`` for the experiment file a
    resume would run: verdict ``same``, ``changed`` (it differs from the
    file the checkpoint's run executed), ``unknown`` (that run recorded no
    hash) or ``missing`` (the file cannot be read now)."""
    from ..worker_hooks.attach import experiment_fingerprint
    now = experiment_fingerprint(source.expid)
    file = now.get("experiment_file") or os.path.abspath(
        source.expid["file"])
    digest = now.get("experiment_sha256")
    if digest is None:
        return file, None, "missing"
    if source.experiment_sha256 is None:
        return file, digest, "unknown"
    return file, digest, ("same" if digest == source.experiment_sha256
                          else "changed")


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and \
        not isinstance(value, bool) else default


class MasterOwnsResults(ResumeError):
    """A live artiq_master writes into this results tree."""


def refuse_if_master_owns(results_dir: str) -> None:
    """Raise MasterOwnsResults if a live ``artiq_master`` has the parent of
    ``results_dir`` as its working directory (see :mod:`.live_master`):
    a run started beside it would take a RID the master hands out again."""
    owners = masters_owning(results_dir)
    if owners:
        pids = ", ".join(str(m.pid) for m in owners)
        raise MasterOwnsResults(
            f"a live artiq_master (pid {pids}, found as a process running "
            f"artiq_master whose working directory, /proc/<pid>/cwd, is "
            f"{owners[0].cwd}) owns this results directory: a run started "
            "here would take a RID the master hands out again.  Submit the "
            "resume through it: artiq-journal resume RID --master "
            "HOST[:PORT] (its control port, 3251 by default)",
            path=os.path.abspath(results_dir))


def resume_expid(source: ResumeSource, arguments: dict | None = None
                 ) -> tuple[dict, str]:
    """``(expid, resume_from)``: ``source``'s expid as the master ran it
    (file, class_name, arguments, log_level, repo_rev, ...), ``arguments``
    overriding some, with the argument ``resume_from`` set to the journal
    path relative to the results root (valid wherever the master's worker
    runs; ``JournalResumable`` resolves it against the results root)."""
    expid = copy.deepcopy(source.expid)
    run_arguments = dict(expid.get("arguments") or {})
    run_arguments.update(arguments or {})
    root = source.results_root or os.path.dirname(os.path.dirname(
        os.path.dirname(source.journal)))
    resume_from = os.path.relpath(source.journal, root)
    if resume_from.startswith(os.pardir):
        resume_from = source.journal
    run_arguments[RESUME_ARGUMENT] = resume_from
    expid["arguments"] = run_arguments
    return expid, resume_from


def submit_resume_to_master(source: ResumeSource, host: str, port: int,
                            arguments: dict | None = None,
                            timeout: float = 30.0) -> tuple[int, dict]:
    """Submit a run resuming ``source`` to the ARTIQ master at
    ``host:port`` (its control port), with the original pipeline and
    priority; the master assigns the RID.  ``(rid, expid submitted)``.
    MasterError when the master cannot be reached or refuses."""
    from ..master_client import MasterClient  # only this verb needs it
    expid, _ = resume_expid(source, arguments)
    with MasterClient(host, port, timeout=timeout) as client:
        rid = client.submit(source.pipeline_name, expid, source.priority,
                            None, False)
    return rid, expid


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
