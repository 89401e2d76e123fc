"""The built-in runner's worker: one process runs one experiment, with the
stage logic of ARTIQ's ``artiq/master/worker_impl.py``.

Invocation (``launch.start_experiment`` does this)::

    python -m artiq_journal.runner.worker [JOBFILE]

The job is one PYON v2 document (see ``artiq_journal.pyon``), read from ``JOBFILE``
or, if it is absent or ``-``, from stdin until EOF. Its fields:

==================  ========================================================
``rid``             int, the run id (required)
``expid``           dict with ``file``, ``class_name`` (None: the single
                    experiment in the file), ``arguments``, ``log_level``...
``pipeline_name``   str, default ``"main"``
``priority``        int, default 0
``results_dir``     str, default ``"results"``; the run writes into
                    ``<results_dir>/%Y-%m-%d/%H`` (local time of the start)
``dataset_db``      PYON file of persistent datasets, or None (in memory)
``device_db``       ``device_db.py`` path, or None (no devices)
``termination_file``  path whose existence requests termination, or None
``journal``         ``{"enabled": bool, "fsync": str}``, default off
==================  ========================================================

Exit status: 0 when every stage completed, 1 when the experiment (or the
journal) raised -- the traceback goes to stderr --, 2 for an invalid job.

The results file ``<rid:09>-<Class>.h5`` is what ARTIQ writes: ``datasets``
and ``archive`` groups, then ``artiq_version``, ``rid``, ``start_time``,
``run_time`` and ``expid`` (PYON). Like ARTIQ it is written when ``run``
raises and after ``analyze``, never when ``build`` or ``prepare`` fails, and
not at all if the process dies: that gap is what journaling closes.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import time
from typing import Any

import h5py

from artiq_journal import __version__
from artiq_journal import pyon
from artiq_journal.runner.datasets import DatasetDB, DatasetManager
from artiq_journal.runner.environment import (ProcessArgumentManager,
                                              is_public_experiment)
from artiq_journal.runner.scheduler import (DeviceDB, DeviceManager,
                                            Scheduler, file_import)

logger = logging.getLogger(__name__)

__all__ = ["RUNNER_VERSION", "get_experiment", "load_experiment",
           "results_filename", "execute", "main"]

#: Stored as ``artiq_version`` in the results files the runner writes.
RUNNER_VERSION = "artiq-journal-runner " + __version__

EXIT_OK, EXIT_FAILED, EXIT_BAD_JOB = 0, 1, 2


def get_experiment(module: Any, class_name: str | None = None) -> type:
    """The experiment class ``class_name`` (a dotted path) of ``module``, or
    with None its single public experiment (``ValueError`` if there are
    none or several), as ARTIQ's ``tools.get_experiment``."""
    if class_name:
        obj = module
        for name in class_name.split("."):
            obj = getattr(obj, name)
        return obj
    found = inspect.getmembers(module, is_public_experiment)
    if not found:
        raise ValueError("No experiments in module")
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise ValueError(f"More than one experiment found in module: {names}")
    return found[0][1]


def load_experiment(file: str, class_name: str | None) -> type:
    """Import ``file`` (with importlib, as ARTIQ) and return its experiment
    class, see :func:`get_experiment`."""
    return get_experiment(file_import(file, prefix="artiq_worker_"),
                          class_name)


def results_filename(rid: int, experiment_class: type) -> str:
    """ARTIQ's results file name: ``"{:09}-{}.h5".format(rid, name)``."""
    return "{:09}-{}.h5".format(rid, experiment_class.__name__)


def _attach_journal(options: dict, dataset_mgr: DatasetManager, rid: int,
                    expid: dict, experiment_class: type, job: dict,
                    start_time: float) -> Any:
    # Imported here: a run without journaling must not depend on it.
    worker_hooks = importlib.import_module("artiq_journal.worker_hooks")
    layouts = importlib.import_module("artiq_journal.storage_layout")
    try:
        layout = layouts.Layout.of_experiment(experiment_class)
        policy = None if layout is None else layout.policy.to_data()
    except TypeError as exc:
        logger.warning("artiq-journal: RID %s: storage policy ignored: %s",
                       rid, exc)
        policy = None
    return worker_hooks.attach(dataset_mgr, rid=rid, expid=expid,
                               class_name=experiment_class.__name__,
                               results_dir=os.getcwd(),
                               fsync=options.get("fsync", "group"),
                               start_time=start_time,
                               pipeline_name=job.get("pipeline_name", "main"),
                               priority=job.get("priority", 0),
                               artiq_version=RUNNER_VERSION,
                               **({} if policy is None
                                  else {"storage_policy": policy}))


def _capture_layout(journal: Any, experiment: Any, rid: int) -> Any:
    """The experiment's storage layout after build() (recorded in the
    journal when it differs from its class's); None: ARTIQ's layout."""
    layouts = importlib.import_module("artiq_journal.storage_layout")
    try:
        plain = layouts.Layout.of_experiment(experiment)
    except TypeError as exc:
        logger.warning("storage policy ignored: %s", exc)
        return None
    recorded = getattr(journal, "run_info", {}).get("storage_policy")
    if journal is None or (plain is None and recorded is None):
        return plain
    storage = importlib.import_module("artiq_journal.worker_hooks.storage")
    return storage.capture_layout(journal, experiment, rid)


def execute(job: dict) -> None:
    """Run the job's experiment through build, prepare, run and analyze in
    this process (which it ``chdir``s into the results directory).

    Returns when every stage completed; otherwise re-raises the exception
    that ended the run, after writing the results file if it happened in
    ``run`` or ``analyze``. Devices are closed and persistent datasets saved
    in every case; the journal, if any, is told each stage, the results file
    once written, and is closed last.
    """
    rid = job["rid"]
    expid = job["expid"]
    journal_options = job.get("journal") or {}
    scheduler = Scheduler(job.get("termination_file"))
    device_mgr = DeviceManager(DeviceDB(job.get("device_db")),
                               virtual_devices={"scheduler": scheduler})
    dataset_db = DatasetDB(job.get("dataset_db"))
    dataset_mgr = DatasetManager(dataset_db)
    journal = None
    start_time = run_time = None
    experiment_class: type | None = None
    #: The experiment's storage layout (artiq_journal.storage_layout), taken
    #: after build() and recorded in the journal; None: ARTIQ's layout.
    layout: Any = None

    def write_results() -> None:
        filename = results_filename(rid, experiment_class)
        storage = None
        if layout is not None:
            storage = importlib.import_module(
                "artiq_journal.worker_hooks.storage")
            if not layout.results_file:
                # The experiment wants no results file at all.
                if journal is not None:
                    journal.results_not_wanted()
                return
        # "x": created exclusively -- an existing results file (a RID
        # handed out twice) is never overwritten; the run fails instead and
        # its journal is kept.
        with h5py.File(filename, "x") as f:
            if storage is None:
                dataset_mgr.write_hdf5(f)
            else:
                storage.write_hdf5_with_layout(
                    layout, dataset_mgr.write_hdf5, f, lambda: dataset_mgr,
                    rid)
            f["artiq_version"] = RUNNER_VERSION
            f["rid"] = rid
            f["start_time"] = start_time
            f["run_time"] = run_time
            f["expid"] = pyon.encode(expid)
            if storage is not None:
                storage.write_metadata(layout, f, rid)
        if journal is not None:
            journal.results_written(os.path.abspath(filename))

    def stage(name: str, t: float) -> None:
        if journal is not None:
            journal.stage(name, t)

    try:
        # build
        start_time = time.time()
        if "devarg_override" in expid:
            device_mgr.devarg_override = expid["devarg_override"]
        experiment_class = load_experiment(expid["file"],
                                           expid["class_name"])
        scheduler.set_run_info(rid, job.get("pipeline_name", "main"), expid,
                               job.get("priority", 0))
        start_local_time = time.localtime(start_time)
        dirname = os.path.join(job.get("results_dir", "results"),
                               time.strftime("%Y-%m-%d", start_local_time),
                               time.strftime("%H", start_local_time))
        os.makedirs(dirname, exist_ok=True)
        os.chdir(dirname)
        if journal_options.get("enabled"):
            # Before instantiation, so datasets set in build() are journaled.
            journal = _attach_journal(journal_options, dataset_mgr, rid,
                                      expid, experiment_class, job,
                                      start_time)
        argument_mgr = ProcessArgumentManager(expid["arguments"])
        exp_inst = experiment_class((device_mgr, dataset_mgr, argument_mgr,
                                     {}))
        argument_mgr.check_unprocessed_arguments()
        layout = _capture_layout(journal, exp_inst, rid)

        stage("prepare", time.time())
        exp_inst.prepare()

        run_time = time.time()
        stage("run", run_time)
        try:
            exp_inst.run()
        except BaseException:
            # Only a failing run() writes results now; a successful one
            # waits for the end of analyze.
            write_results()
            raise
        finally:
            try:
                device_mgr.notify_run_end()
            except BaseException:
                write_results()
                raise

        stage("analyze", time.time())
        try:
            exp_inst.analyze()
        finally:
            write_results()
    finally:
        try:
            device_mgr.close_devices()
            dataset_db.save()
        finally:
            if journal is not None:
                journal.close()


def _read_job(argv: list[str]) -> dict:
    if len(argv) > 1:
        raise ValueError("usage: python -m artiq_journal.runner.worker "
                         "[JOBFILE]")
    if not argv or argv[0] == "-":
        text = sys.stdin.read()
    else:
        with open(argv[0], encoding="utf-8") as f:
            text = f.read()
    job = pyon.decode(text)
    if not (isinstance(job, dict) and isinstance(job.get("rid"), int)
            and isinstance(job.get("expid"), dict)
            and "file" in job["expid"]):
        raise ValueError("job needs an int 'rid' and an 'expid' dict with "
                         "'file'")
    job["expid"].setdefault("class_name", None)
    job["expid"].setdefault("arguments", {})
    return job


def main(argv: list[str] | None = None) -> int:
    """Read the job, run it (see :func:`execute`), return the exit status."""
    try:
        job = _read_job(sys.argv[1:] if argv is None else argv)
    except (OSError, ValueError, TypeError) as e:
        print(f"artiq_journal.runner.worker: invalid job: {e}",
              file=sys.stderr)
        return EXIT_BAD_JOB
    logging.basicConfig(level=job["expid"].get("log_level", logging.WARNING),
                        format="%(levelname)s:%(name)s:%(message)s")
    try:
        execute(job)
    except BaseException as e:
        # Everything, SystemExit included, ends the run as a failure, as in
        # ARTIQ's worker; the message names what the master would log.
        logger.error("Terminating with exception (%s: %s)",
                     type(e).__name__, e, exc_info=True)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
