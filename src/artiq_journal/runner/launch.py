"""Parent side of the built-in runner: start a worker subprocess for one run.

``run_experiment`` runs an experiment file to completion; ``start_experiment``
returns at once with the child's ``Popen`` (``.process``), so a caller -- a
crash test, say -- can SIGKILL it mid-run. The job goes to the child as PYON
on its stdin (see ``runner.worker``).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import subprocess
import sys
import tempfile
import uuid
from typing import Any, IO

import artiq_journal
from artiq_journal import pyon
from artiq_journal.runner.rid_counter import RIDCounter

__all__ = ["RunResult", "RunningExperiment", "start_experiment",
           "run_experiment", "find_results_file"]

# Where the artiq_journal package can be imported from, for the child.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(
    os.path.abspath(artiq_journal.__file__)))


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended. ``returncode`` is the worker's exit status (0 ok,
    1 experiment failed, 2 invalid job, negative: killed by that signal);
    ``h5_path`` the results file, or None if none was written."""

    rid: int
    returncode: int
    h5_path: str | None
    results_dir: str
    #: What the worker wrote, when started with ``stdout``/``stderr=PIPE``.
    stdout: bytes | None = None
    stderr: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def find_results_file(results_dir: str, rid: int) -> str | None:
    """The results file of run ``rid`` under ``results_dir/<date>/<hour>``,
    or None. Found by RID alone, since the class name is only known to the
    worker."""
    pattern = os.path.join(glob.escape(results_dir), "*", "*",
                           "{:09}-*.h5".format(rid))
    matches = sorted(glob.glob(pattern), key=os.path.getmtime)
    return matches[-1] if matches else None


class RunningExperiment:
    """A worker subprocess running one experiment."""

    def __init__(self, process: subprocess.Popen, rid: int, results_dir: str,
                 termination_file: str) -> None:
        self.process = process
        self.rid = rid
        self.results_dir = results_dir
        self.termination_file = termination_file

    def request_termination(self) -> None:
        """Make ``scheduler.check_termination()`` true and ``pause()`` raise
        ``TerminationRequested`` in the experiment (graceful stop)."""
        with open(self.termination_file, "w"):
            pass

    def wait(self, timeout: float | None = None) -> RunResult:
        """Wait for the worker to exit, collecting piped output.
        ``subprocess.TimeoutExpired`` after ``timeout`` seconds, with the
        worker left running (``wait`` may be called again)."""
        # communicate(), not wait(): a worker blocked on a full stderr pipe
        # would never exit.
        stdout, stderr = self.process.communicate(timeout=timeout)
        try:
            os.unlink(self.termination_file)
        except FileNotFoundError:
            pass
        return RunResult(self.rid, self.process.returncode,
                         find_results_file(self.results_dir, self.rid),
                         self.results_dir, stdout, stderr)


def _allocate_rid(results_dir: str) -> int:
    # The cache sits beside the results directory, as ARTIQ's master keeps
    # last_rid.pyon in its working directory next to results/.
    cache = os.path.join(os.path.dirname(results_dir), "last_rid.pyon")
    return RIDCounter(cache, results_dir).get()


def start_experiment(file: str, class_name: str | None = None,
                 arguments: dict | None = None, rid: int | None = None,
                 results_dir: str = "results", journal: bool = True,
                 fsync: str = "group", env: dict | None = None, *,
                 dataset_db: str | None = None,
                 device_db: str | None = None,
                 pipeline_name: str = "main", priority: int = 0,
                 log_level: int = logging.WARNING,
                 stdout: int | IO | None = None,
                 stderr: int | IO | None = None) -> RunningExperiment:
    """Spawn ``python -m artiq_journal.runner.worker`` for one run of the
    experiment in ``file`` and return without waiting.

    ``rid`` None allocates the next RID from ``last_rid.pyon`` beside
    ``results_dir``. ``env`` adds variables to this process's
    environment for the child; ``stdout``/``stderr`` are as for
    ``subprocess.Popen``. Relative paths are resolved here.
    """
    results_dir = os.path.abspath(results_dir)
    os.makedirs(results_dir, exist_ok=True)
    if rid is None:
        rid = _allocate_rid(results_dir)
    expid = {"log_level": log_level, "file": os.path.abspath(file),
             "class_name": class_name, "arguments": arguments or {}}
    termination_file = os.path.join(
        tempfile.gettempdir(),
        f"artiq-journal-terminate-{rid}-{uuid.uuid4().hex}")
    job = {"rid": rid, "expid": expid, "pipeline_name": pipeline_name,
           "priority": priority, "results_dir": results_dir,
           "dataset_db": _abspath_or_none(dataset_db),
           "device_db": _abspath_or_none(device_db),
           "termination_file": termination_file,
           "journal": {"enabled": journal, "fsync": fsync}}
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_PACKAGE_ROOT, child_env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "artiq_journal.runner.worker"],
        stdin=subprocess.PIPE, stdout=stdout, stderr=stderr,
        env=child_env)
    try:
        process.stdin.write(pyon.encode(job).encode())
    except BrokenPipeError:
        # The child died before reading its job; wait() reports how.
        pass
    finally:
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
        # Closed: communicate() must not touch it again.
        process.stdin = None
    return RunningExperiment(process, rid, results_dir, termination_file)


def run_experiment(file: str, class_name: str | None = None,
                   arguments: dict | None = None, rid: int | None = None,
                   results_dir: str = "results", journal: bool = True,
                   fsync: str = "group", env: dict | None = None,
                   timeout: float | None = None,
                   **options: Any) -> RunResult:
    """Run one experiment in a worker subprocess and wait for it.

    Arguments as for :func:`start_experiment` (``options`` are its
    keyword-only ones). After ``timeout`` seconds the worker is killed
    (SIGKILL) and ``subprocess.TimeoutExpired`` raised.
    """
    running = start_experiment(file, class_name, arguments, rid, results_dir,
                               journal, fsync, env, **options)
    try:
        return running.wait(timeout)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.wait()
        raise


def _abspath_or_none(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)
