"""Automatic journaling inside ARTIQ's own worker (``ARTIQ_JOURNAL=1``).

Loading.  ``pip install artiq-journal`` puts ``artiq_journal_autoload.pth``
into site-packages; Python runs its one line at start-up in every process.
The line imports this module only when ``ARTIQ_JOURNAL`` is truthy, so with
the switch off nothing at all happens.  Start the ARTIQ master with
``ARTIQ_JOURNAL=1``: its workers inherit the environment (``artiq.master
.worker.Worker`` passes ``os.environ`` to ``python -m artiq.master
.worker_impl``), and every run journals itself, with no change to ARTIQ or
to experiments.

Mechanism.  Importing this module installs a ``sys.meta_path`` finder that
lets ``artiq.language.environment`` load normally and then wraps
``HasEnvironment.__init__``.  Nothing else is touched in any process.  The
wrapper acts once, in the worker (the process whose ``__main__`` is
``artiq.master.worker_impl``), for the top-level experiment: the instance
built from the managers tuple whose dataset manager is an ``artiq.master
.worker_db.DatasetManager`` (the "examine" action uses another class).  At
that moment ``Scheduler.set_run_info`` has run and the worker has
``chdir``-ed into ``results/<date>/<hour>``; before ``build()`` runs, the
hook calls :func:`~.attach.attach` with

* rid, pipeline, expid, priority from the ``scheduler`` virtual device;
* the class name ARTIQ uses for the file name (``exp.__name__``);
* ``results_dir`` = the working directory;
* ``start_time`` = the worker's own ``start_time``.  It exists only as a
  local of ``worker_impl.main()``, so it is read from that frame
  (``run_time`` likewise for the ``run`` stage); if the frame is not found
  (another ARTIQ version), ``time.time()`` is used instead.

After construction the instance's ``prepare``/``run``/``analyze`` are
wrapped (instance attributes) to record stage changes, and the manager's
``write_hdf5`` to find ARTIQ's results file; the ``close`` of that h5py file
is wrapped so that, once ARTIQ's ``write_results`` has written every root
object and closed the file, the journal records ``results_written``, closes
cleanly and is deleted or kept (``ARTIQ_JOURNAL_KEEP``).

Close reasons (the ``close`` record), each written when it happens:

* ``results_written``: only after ARTIQ's results file was verified
  (written, closed, fsynced, and its ``rid`` read back equals the run's);
* ``build_failed`` / ``prepare_failed``: ``build()`` (the experiment's
  constructor) or ``prepare()`` raised; a ``stage`` record of the same name
  is written first, before the exception propagates (ARTIQ's ``Worker
  .close`` SIGTERMs the worker 2 s later, and at-exit code does not run
  then).  ARTIQ writes no results file in these cases;
* ``no_results``: the worker exits (at-exit handler) and ARTIQ never tried
  to write its file -- e.g. the master was SIGKILLed mid-run, the orphaned
  worker finished ``run()`` and nobody asked for ``analyze``;
* ``hook_error`` / ``journal_disabled`` / ``journal_failed``: journaling
  stopped early (see Robustness).

An incomplete results file leaves the journal orphaned (no close record),
for ``artiq-recover``; so does a killed worker, which is the point.

Robustness: the never-break rule.  Every hook forwards the experiment's
call to ARTIQ unchanged first.  Anything raised by our own code -- an ARTIQ
shape we do not understand, a bug, a value the journal cannot encode --
logs ONE warning naming the rid, closes the journal (``hook_error``, or
``journal_disabled`` for a value) and the run goes on exactly as without
us, under every setting.  Only a failing disk (``JournalFailed`` from the
writer) follows ``ARTIQ_JOURNAL_ON_ERROR`` (default ``stop``: the run ends
with ``JournalFailed``).  The decision is made in
:meth:`.live.LiveJournal.fault` for dataset calls and in ``_guarded`` here
for everything else.

Limitations.  Experiments not derived from ``HasEnvironment`` are not
journaled automatically (use :func:`attach`); ``artiq_run`` is not
journaled automatically (it has no results directory and no rid).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time

from . import config

# typing is not imported at run time: this module loads at interpreter
# start-up in every process while ARTIQ_JOURNAL is on.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

logger = logging.getLogger("artiq_journal")

__all__ = ["install", "installed"]

_ENVIRONMENT_MODULE = "artiq.language.environment"
_WORKER_MAIN_MODULE = "artiq.master.worker_impl"
_WORKER_DB_MODULE = "artiq.master.worker_db"

_installed = False
#: The journaled run of this process (at most one: a worker runs one run).
_run: "_WorkerRun | None" = None
#: Set when journaling was tried (started, refused or failed) in this process.
_tried = False
#: The rid of this worker's run, for log messages (None until known).
_rid: "int | None" = None


class _PolicyStop(Exception):
    """Internal: carries a JournalFailed that the ``stop`` policy raises."""


def installed() -> bool:
    """Whether the import hook is installed in this process."""
    return _installed


def install() -> bool:
    """Install the hook if ``ARTIQ_JOURNAL`` is truthy; return whether it is
    installed.  Idempotent; never raises."""
    global _installed
    if _installed:
        return True
    try:
        if not config.enabled():
            return False
        module = sys.modules.get(_ENVIRONMENT_MODULE)
        if module is not None:
            _patch_environment(module)
        else:
            sys.meta_path.insert(0, _EnvironmentFinder())
        _installed = True
    except Exception:  # noqa: BLE001 - must never break interpreter start-up
        logger.exception("artiq-journal: cannot install the worker hook; "
                         "runs are NOT journaled")
    return _installed


class _EnvironmentFinder:
    """Finds nothing itself: asks the other finders for ``artiq.language
    .environment`` and wraps that spec's loader so the module is patched
    right after it executed."""

    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> Any:
        if fullname != _ENVIRONMENT_MODULE:
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        original = getattr(loader, "exec_module", None)
        if original is None:
            return spec

        had_own = "exec_module" in getattr(loader, "__dict__", {})

        def exec_module(module: Any) -> None:
            # Undo the shadowing first: a loader shared by several modules
            # (zipimport) must load the others unpatched.
            try:
                if had_own:
                    loader.exec_module = original
                else:
                    del loader.exec_module
            except AttributeError:
                pass
            original(module)
            if getattr(module, "__name__", None) == _ENVIRONMENT_MODULE:
                _guarded(_patch_environment, module)
                _remove_finder()

        try:
            # Shadow the method on this loader object only (FileFinder makes
            # one per module); module.__loader__ stays the real loader.
            loader.exec_module = exec_module
        except (AttributeError, TypeError):
            logger.error("artiq-journal: cannot hook the loader of %s; runs "
                         "are NOT journaled", fullname)
        return spec


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not isinstance(f, _EnvironmentFinder)]


def _patch_environment(module: Any) -> None:
    cls = module.HasEnvironment
    original = cls.__init__
    if getattr(original, "_artiq_journal_hook", False):
        return

    def __init__(self, managers_or_parent, *args, **kwargs):
        run = None
        if not _tried and isinstance(managers_or_parent, tuple):
            run = _guarded(_start, self, managers_or_parent)
        if run is None:
            original(self, managers_or_parent, *args, **kwargs)
            return
        try:
            original(self, managers_or_parent, *args, **kwargs)
        except BaseException:
            # build() raised: ARTIQ writes no results file.  Recorded now,
            # not at exit: Worker.close SIGTERMs the worker 2 s after asking
            # it to exit, and at-exit handlers do not run then.
            _guarded(run.end_failed, "build_failed")
            raise
        _guarded(run.wrap_stages, self)

    __init__.__wrapped__ = original
    __init__.__doc__ = original.__doc__
    __init__.__qualname__ = original.__qualname__
    __init__._artiq_journal_hook = True
    cls.__init__ = __init__


def _guarded(fn: Callable, *args: Any) -> Any:
    """Call ``fn``: the never-break guard around every piece of hook code
    that is not a dataset wrapper (those report to ``LiveJournal.fault``).
    An exception logs ONE warning naming the run and switches journaling
    off for it (journal closed with reason ``hook_error``); the run goes on.
    Only a JournalFailed that the ``stop`` policy raises on purpose for a
    failing disk (wrapped in _PolicyStop) gets through."""
    try:
        return fn(*args)
    except _PolicyStop as stop:
        raise stop.args[0] from None
    except Exception as exc:  # noqa: BLE001 - the run must go on
        logger.warning("artiq-journal: RID %s: internal error in the worker "
                       "hook (%s: %s); journaling is switched off for this "
                       "run (hook_error), which goes on unjournaled",
                       _rid, type(exc).__name__, exc, exc_info=True)
        _disable("hook_error")
        return None


def _disable(reason: str) -> None:
    global _tried
    _tried = True
    run = _run
    if run is not None and not run.finished:
        run.finished = True
        try:
            run.unhook()
            run.live.close(reason)
        except Exception:  # noqa: BLE001
            logger.exception("artiq-journal: cannot close the journal")


def _in_worker() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == _WORKER_MAIN_MODULE


def _worker_main_locals(*names: str) -> dict:
    """Locals of ARTIQ's ``worker_impl.main()`` found up the call stack;
    empty when it is not there (best effort: ARTIQ keeps ``start_time`` and
    ``run_time`` nowhere else)."""
    frame = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            break
        if frame.f_code.co_name == "main" and \
                frame.f_globals.get("__name__") == "__main__" and \
                getattr(frame.f_globals.get("__spec__"), "name", None) \
                == _WORKER_MAIN_MODULE:
            local = frame.f_locals
            return {n: local[n] for n in names if n in local}
        frame = frame.f_back
    return {}


def _absolute_or_none(path: Any) -> "str | None":
    # The worker has chdir-ed into results/<date>/<hour>: only an absolute
    # path still names the experiment file it imported.
    return path if isinstance(path, str) and os.path.isabs(path) else None


def _start(instance: Any, managers: tuple) -> "_WorkerRun | None":
    global _run, _tried, _rid
    if not _in_worker() or len(managers) < 2:
        return None
    worker_db = sys.modules.get(_WORKER_DB_MODULE)
    device_mgr, dataset_mgr = managers[0], managers[1]
    if worker_db is None or \
            not isinstance(dataset_mgr, worker_db.DatasetManager):
        return None  # the "examine" action, or not ARTIQ's worker manager
    _tried = True
    from ..errors import JournalError, JournalFailed
    from .attach import attach

    cfg = config.from_env()
    for problem in cfg.problems:
        logger.warning("artiq-journal: %s", problem)
    scheduler = getattr(device_mgr, "virtual_devices", {}).get("scheduler")
    frame = _worker_main_locals("start_time", "exp", "expid", "rid",
                                "experiment_file")
    rid = getattr(scheduler, "rid", frame.get("rid"))
    _rid = rid
    expid = getattr(scheduler, "expid", frame.get("expid"))
    exp = frame.get("exp")
    class_name = getattr(exp, "__name__", None) or type(instance).__name__
    start_time = frame.get("start_time")
    if not isinstance(start_time, float):
        start_time = time.time()
    from .storage import policy_data
    try:
        storage_policy = policy_data(type(instance))
    except Exception as exc:  # noqa: BLE001 - an invalid journal_storage
        logger.warning("artiq-journal: RID %s: storage policy ignored: %s",
                       rid, exc)
        storage_policy = None
    try:
        live = attach(dataset_mgr, rid=rid, expid=expid,
                      class_name=class_name, results_dir=os.getcwd(),
                      fsync=cfg.fsync,
                      pipeline_name=getattr(scheduler, "pipeline_name", None),
                      priority=getattr(scheduler, "priority", None),
                      start_time=start_time, on_error=cfg.on_error,
                      keep=cfg.keep, group_interval=cfg.group_interval,
                      snapshot_interval=cfg.snapshot_interval,
                      storage_policy=storage_policy,
                      live_interval=cfg.live_interval,
                      experiment_file=_absolute_or_none(
                          frame.get("experiment_file")))
    except (OSError, JournalFailed) as exc:
        message = f"cannot start the journal of RID {rid}: {exc}"
        if cfg.on_error == "stop":
            logger.error("artiq-journal: %s; stopping the run "
                         "(ARTIQ_JOURNAL_ON_ERROR=stop)", message)
            failure = exc if isinstance(exc, JournalFailed) else \
                JournalFailed(message)
            raise _PolicyStop(failure) from exc
        logger.error("artiq-journal: %s; THE RUN CONTINUES UNJOURNALED "
                     "(ARTIQ_JOURNAL_ON_ERROR=continue)", message)
        return None
    except JournalError as exc:
        # An ARTIQ whose DatasetManager we do not understand, or a platform
        # that cannot journal safely: our limitation, never the run's.
        logger.warning("artiq-journal: RID %s: not journaling this run: %s",
                       rid, exc)
        return None
    run = _WorkerRun(live, dataset_mgr)
    _run = run
    run.hook_results()
    atexit.register(_at_exit)
    return run


class _WorkerRun:
    """The journal of this worker's run and the hooks around it."""

    def __init__(self, live: Any, dataset_mgr: Any) -> None:
        self.live = live
        self.dataset_mgr = dataset_mgr
        #: ARTIQ called write_hdf5 (so it meant to write a results file).
        self.results_attempted = False
        self.finished = False
        self._write_hdf5: Callable | None = None
        #: The storage layout of the experiment (after build()), or None.
        self.layout: Any = None

    # -- stages ----------------------------------------------------------------

    def wrap_stages(self, instance: Any) -> None:
        from ..errors import JournalFailed
        from .storage import capture_layout
        try:
            self.layout = capture_layout(self.live, instance, _rid)
        except JournalFailed as exc:
            raise _PolicyStop(exc) from exc
        for name in ("prepare", "run", "analyze"):
            method = getattr(instance, name, None)
            if callable(method):
                # An instance attribute: the worker calls exp_inst.<name>().
                setattr(instance, name, self._stage_method(name, method))

    def _stage_method(self, name: str, method: Callable) -> Callable:
        if name == "prepare":
            def stage_method(*args: Any, **kwargs: Any) -> Any:
                _guarded(self.enter_stage, name)
                try:
                    return method(*args, **kwargs)
                except BaseException:
                    # ARTIQ writes no results file when prepare() raises.
                    _guarded(self.end_failed, "prepare_failed")
                    raise
        else:
            def stage_method(*args: Any, **kwargs: Any) -> Any:
                _guarded(self.enter_stage, name)
                return method(*args, **kwargs)
        stage_method.__name__ = name
        return stage_method

    def end_failed(self, name: str) -> None:
        """build() or prepare() raised (``name`` is ``build_failed`` or
        ``prepare_failed``): record that stage and close the journal with
        that reason, before the exception propagates."""
        if self.finished:
            return
        from ..errors import JournalFailed
        try:
            self.live.stage(name)
        except JournalFailed:
            pass  # the experiment's own exception is already on its way
        live = self._finish()
        if live is not None:
            live.close(name)

    def enter_stage(self, name: str) -> None:
        if self.finished:
            return
        from ..errors import JournalFailed
        when = None
        if name == "run":
            when = _worker_main_locals("run_time").get("run_time")
            if not isinstance(when, float):
                when = None
        try:
            self.live.stage(name, when)
        except JournalFailed as exc:
            raise _PolicyStop(exc) from exc

    # -- results file ----------------------------------------------------------

    def hook_results(self) -> None:
        mgr = self.dataset_mgr
        original = mgr.write_hdf5

        def write_hdf5(f: Any) -> None:
            self.results_attempted = True
            layout = self.layout
            if layout is None:
                original(f)
            else:
                from .storage import write_hdf5_with_layout
                write_hdf5_with_layout(layout, original, f,
                                       self.live.adapter.datasets_view, _rid)
            _guarded(self.watch_results_file, f)

        self._write_hdf5 = write_hdf5
        mgr.write_hdf5 = write_hdf5

    def unhook(self) -> None:
        own = self.dataset_mgr.__dict__
        if self._write_hdf5 is not None and \
                own.get("write_hdf5") is self._write_hdf5:
            del own["write_hdf5"]
        self._write_hdf5 = None

    def watch_results_file(self, f: Any) -> None:
        """Wrap the h5py File's ``close`` (``File.__exit__`` calls
        ``self.close()``): when ARTIQ's ``with`` block ends, check that every
        root object of ``write_results`` is there, then finish."""
        from .results_file import ARTIQ_RESULTS_KEYS
        path = os.path.abspath(f.filename)
        original = f.close

        layout = self.layout
        wanted = layout is None or layout.results_file

        def close() -> None:
            if layout is not None and wanted:
                from .storage import write_metadata
                write_metadata(layout, f, _rid)  # after ARTIQ's root data
            complete = _guarded(
                lambda: all(key in f for key in ARTIQ_RESULTS_KEYS))
            original()
            if not wanted:
                _guarded(self.finish_without_results, path)
            elif complete:
                _guarded(self.finish_with_results, path)

        f.close = close

    def _finish(self) -> Any:
        """Finish once: unhook and return the live journal, or None if it
        was finished already or failed (then it is closed here)."""
        if self.finished:
            return None
        self.finished = True
        self.unhook()
        if self.live.failed:
            self.live.close("journal_failed")
            return None
        if self.live.closed:
            return None  # journaling was switched off (already closed)
        return self.live

    def finish_with_results(self, path: str) -> None:
        live = self._finish()
        if live is None:
            return
        if live.results_written(path):
            live.close("results_written")
        else:
            live.abandon()

    def finish_without_results(self, path: str) -> None:
        """The storage policy wants no results file: remove ARTIQ's, and
        close the journal as a complete run (``results_not_wanted``)."""
        from .storage import remove_results_file
        remove_results_file(path)
        live = self._finish()
        if live is not None:
            live.results_not_wanted()
            live.close("results_not_wanted")

    def finish_at_exit(self) -> None:
        live = self._finish()
        if live is None:
            return
        if self.results_attempted:
            logger.warning("artiq-journal: ARTIQ's results file of this run "
                           "is incomplete; journal %s kept for "
                           "artiq-recover", live.path)
            live.abandon()
        else:
            live.close("no_results")


def _at_exit() -> None:
    run = _run
    if run is not None:
        try:
            run.finish_at_exit()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            logger.exception("artiq-journal: cannot close the journal")


install()
