"""Resume an interrupted scan from its last checkpoint: ``JournalResumable``.

Usage (ARTIQ's ``EnvExperiment`` or the built-in runner's)::

    class Scan(JournalResumable, EnvExperiment):     # mixin FIRST
        def run(self):
            state = self.resume_state(None)
            if state is None:                        # fresh run
                self.set_dataset("xs", [], broadcast=True)
                self.set_dataset("ys", [], broadcast=True)
                state = {"i": 0}
            for i in range(state["i"], 100):
                with self.journal_point():           # recovered whole or not
                    self.append_to_dataset("xs", i)
                    self.append_to_dataset("ys", measure(i))
                self.checkpoint(i=i + 1)             # datasets consistent here

Naming the earlier run.  The mixin requests the string argument
``resume_from`` (group "Journal"; rename it with the class attribute
``journal_resume_argument``, or set that to None to request none) at the
end of ``build()`` -- ARTIQ allows ``get_argument`` only there -- so the
dashboard shows it and ARTIQ's ``check_unprocessed_arguments`` accepts it.
Its value is a rid (the journal is searched as
``<results>/*/*/<rid:09d>-*.journal``, where ``<results>`` is two levels
above this run's results directory, i.e. ARTIQ's ``results/``) or the path
of a journal directory (a relative one is looked up under ``<results>``
first).  Empty: the
environment variable ``ARTIQ_JOURNAL_RESUME`` is used (for one-off runs such
as ``artiq-journal resume``); empty too: a fresh run.

What a resume does (:meth:`JournalResumable.resume_state`):

1. replays the earlier journal up to its last checkpoint record (from the
   snapshot covering it, if there is one);
2. restores every dataset of that moment into this run's manager with its
   ``set`` -- values, flags, metadata (release-7: ``set(key, value,
   broadcast, persist, archive)``, no metadata; see :mod:`.adapters`) --
   and the ``archive`` group entries; through the journaled manager, so this run's own journal is complete and recovery of
   this run needs nothing else.  Datasets this run set before calling
   ``resume_state`` that the checkpoint does not know are left as they are;
3. records ``resumed_from`` {rid, seq, journal} in this run's journal and
   as the archived dataset ``journal.resumed_from`` (a JSON string, so it is
   in the results file: ``json.loads(f["datasets/journal.resumed_from"][()])``);
4. checkpoints the restored state at once, so this run can itself be resumed
   even if it dies before its own first checkpoint;
5. returns the checkpointed user state.

Checkpoint state must be plain data (None, bool, int, float, complex, str,
bytes, list, tuple, dict, numpy arrays and scalars): anything else raises
TypeError -- nothing is ever pickled.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import sys
from typing import Any

from ..errors import ResumeError
from ..journal import codec
from ..journal.constants import JOURNAL_SUFFIX
from ..journal.lock import is_locked
from ..replay import replay_to_last_checkpoint
from . import config
from .adapters import select_adapter
from .live import LiveJournal, live_journal

__all__ = ["JournalResumable", "RESUMED_FROM_DATASET", "locate_journal",
           "load_checkpoint", "restore_datasets"]

logger = logging.getLogger("artiq_journal")

#: Archived dataset holding ``{"rid", "seq", "journal"}`` as JSON text.
RESUMED_FROM_DATASET = "journal.resumed_from"
_UNSET = object()


def locate_journal(source: str, results_root: str,
                   exclude: str | None = None) -> str:
    """The journal directory named by ``source``: a rid (digits, searched
    as ``<results_root>/*/*/<rid:09d>-*.journal``) or a path.  Raises
    ResumeError when there is none, or several for one rid."""
    source = source.strip()
    if source.isdigit():
        rid = int(source)
        pattern = os.path.join(glob.escape(results_root), "*", "*",
                               f"{rid:09d}-*{JOURNAL_SUFFIX}")
        found = sorted(p for p in glob.glob(pattern)
                       if os.path.isdir(p) and p != exclude)
        if not found:
            raise ResumeError(f"no journal of RID {rid} under "
                              f"{results_root}/*/*/", path=results_root)
        if len(found) > 1:
            raise ResumeError(f"several journals of RID {rid}: "
                              f"{', '.join(found)}; name one by its path",
                              path=results_root)
        return found[0]
    # A relative path is relative to the results root (what
    # ``artiq-journal resume --master`` submits: valid whatever
    # results/<date>/<hour>/ the new run's worker runs in), else to the
    # working directory.
    path = os.path.abspath(source)
    if not os.path.isabs(source):
        under_root = os.path.join(results_root, source)
        if os.path.isdir(under_root):
            path = os.path.abspath(under_root)
    if not os.path.isdir(path):
        raise ResumeError("not a journal directory", path=path)
    return path


def load_checkpoint(path: str) -> tuple[dict, Any, int]:
    """``(run_info, run_state, seq)`` of the last checkpoint of the journal
    at ``path``.  Raises ResumeError if it has none, is still being written,
    or the records up to it cannot all be read."""
    if is_locked(path):
        raise ResumeError("journal is still being written by a live run",
                          path=path)
    result = replay_to_last_checkpoint(path)
    state = result.state
    seq = state.checkpoint_seq if state.checkpoint is not None else None
    if seq is None:
        raise ResumeError("journal has no checkpoint to resume from",
                          path=path)
    if state.checkpoint_seq != seq or state.checkpoint is None:
        problems = "; ".join(str(d) for d in result.diagnostics) or "unknown"
        raise ResumeError(f"cannot rebuild the state at checkpoint seq {seq}"
                          f": {problems}", path=path)
    if state.run_info is None:
        raise ResumeError("journal has no run_info record", path=path)
    return state.run_info, state, seq


def code_changed(earlier: dict, now: dict) -> str | None:
    """Why the experiment file ``now`` runs is not the one the ``earlier``
    run executed (both run_info maps, see ``experiment_sha256``), or None
    when it is the same or cannot be told."""
    old_hash = earlier.get("experiment_sha256")
    new_hash = now.get("experiment_sha256")
    if not isinstance(old_hash, str) or not isinstance(new_hash, str) \
            or old_hash == new_hash:
        return None
    return (f"the experiment file changed since the checkpoint was made "
            f"({earlier.get('experiment_file')} sha256 {old_hash[:12]}, now "
            f"{now.get('experiment_file')} sha256 {new_hash[:12]})")


def _warn_if_code_changed(earlier: dict, now: dict, path: str) -> None:
    why = code_changed(earlier, now)
    if why is not None:
        # Inside ARTIQ the run was submitted on purpose: say it loudly,
        # never break it (artiq-journal resume refuses instead, unless
        # told --allow-changed).
        logger.warning("artiq-journal: resuming %s: %s", path, why)


def restore_datasets(dataset_mgr: Any, datasets: Any,
                     live: LiveJournal | None) -> None:
    """Set every dataset of the DatasetState ``datasets`` into
    ``dataset_mgr`` through its (journaled) ``set``, in the call form of
    the manager's ARTIQ generation (:mod:`.adapters`: release-7 has no
    metadata), then the archive group."""
    adapter = live.adapter if live is not None else \
        select_adapter(dataset_mgr)
    snapshot = datasets.to_snapshot()
    for key, value, metadata, broadcast, persist, archive in \
            snapshot["datasets"]:
        adapter.restore(key, value, metadata, broadcast, persist, archive)
    for key, value in snapshot["archive"]:
        if live is not None and live.active:
            live.record_archive(key, value)
        else:
            dataset_mgr.archive[key] = value


def _environment_module(cls: type) -> Any:
    for base in cls.__mro__:
        if base.__name__ == "HasEnvironment":
            return sys.modules[base.__module__]
    raise TypeError(f"{cls.__name__}: JournalResumable needs HasEnvironment "
                    "(EnvExperiment)")


class JournalResumable:
    """Experiment mixin: ``checkpoint(**state)`` and ``resume_state(default)``
    (see the module docstring).  List it before ``EnvExperiment``."""

    #: Name of the experiment argument naming the run to resume; None: no
    #: argument (only ``ARTIQ_JOURNAL_RESUME``).
    journal_resume_argument: str | None = "resume_from"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        env = [i for i, c in enumerate(mro) if c.__name__ == "HasEnvironment"]
        if env and env[0] < mro.index(JournalResumable):
            raise TypeError(f"{cls.__name__}: list JournalResumable before "
                            "EnvExperiment/HasEnvironment in the bases, or "
                            "its resume_from argument is never requested")

    def __init__(self, managers_or_parent: Any, *args: Any,
                 **kwargs: Any) -> None:
        # ARTIQ accepts get_argument() only while build() runs, and the
        # experiment's build() need not call ours: shadow build() for the
        # duration of the constructor with one that requests the argument
        # after the experiment's own (so the dashboard lists it last).
        build = self.build

        def build_then_request(*build_args: Any, **build_kwargs: Any) -> Any:
            result = build(*build_args, **build_kwargs)
            self._journal_resume_source()
            return result

        self.build = build_then_request
        try:
            super().__init__(managers_or_parent, *args, **kwargs)
        finally:
            if self.__dict__.get("build") is build_then_request:
                del self.build

    # -- naming the earlier run ------------------------------------------------

    def _journal_resume_source(self) -> str | None:
        own = self.__dict__
        if "_journal_resume_arg" not in own:
            value = None
            name = self.journal_resume_argument
            if name:
                string_value = _environment_module(type(self)).StringValue
                value = self.get_argument(
                    name, string_value(""), group="Journal",
                    tooltip="RID or journal path of an interrupted run of "
                            "this experiment to resume from its last "
                            "checkpoint; empty: fresh run")
            own["_journal_resume_arg"] = value
        value = own["_journal_resume_arg"]
        if isinstance(value, int) and not isinstance(value, bool):
            # artiq_client/artiq_run parse "resume_from=12" to an int.
            value = str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
        return config.from_env().resume

    def _journal_dataset_mgr(self) -> Any:
        return self._HasEnvironment__dataset_mgr

    # -- the API -----------------------------------------------------------------

    def checkpoint(self, **state: Any) -> None:
        """Record ``state`` (plain data, see the module docstring) as the
        point to resume from; call it where the datasets are consistent
        with it.  TypeError for values that are not plain data, journaled
        or not.  Without a journal only the check happens."""
        live = live_journal(self._journal_dataset_mgr())
        if live is None or not live.active:
            codec.pack(state)
            if live is not None and live.failed:
                live.checkpoint(state)  # raises the stored JournalFailed
            return
        live.checkpoint(state)

    def write_results(self, path: str | None = None) -> str:
        """Write the run's results file as of now (storage policy applied)
        and return its path; the run goes on.  See
        :func:`artiq_journal.worker_hooks.storage.write_results`."""
        from .storage import write_results
        return write_results(self, path)

    def journal_point(self) -> Any:
        """``with self.journal_point(): ...`` makes the dataset operations
        of one scan point a unit: recovered all or nothing, one fdatasync
        under ``fsync="always"`` (:meth:`.live.LiveJournal.point`).  A
        no-op context when the run is not journaled."""
        live = live_journal(self._journal_dataset_mgr())
        if live is None:
            return contextlib.nullcontext()
        return live.point()

    def resume_state(self, default: Any = None) -> Any:
        """``default`` on a fresh run; on a resumed run, restore the
        datasets of the earlier run's last checkpoint and return its state
        (a dict).  Idempotent: later calls return the same result without
        restoring again.  ResumeError if the named run cannot be resumed."""
        own = self.__dict__
        cached = own.get("_journal_resumed", _UNSET)
        if cached is not _UNSET:
            return default if cached is None else cached
        source = self._journal_resume_source()
        if not source:
            own["_journal_resumed"] = None
            return default
        mgr = self._journal_dataset_mgr()
        live = live_journal(mgr)
        if live is not None:
            results_dir = live.results_dir
        else:
            results_dir = os.getcwd()
        results_root = os.path.dirname(os.path.dirname(results_dir))
        path = locate_journal(source, results_root,
                              exclude=live.path if live else None)
        run_info, state, seq = load_checkpoint(path)
        if live is not None:
            _warn_if_code_changed(run_info, live.run_info, path)
        restore_datasets(mgr, state.datasets, live)
        # Relative to the results root when under it: the tree can move
        # (or be recovered on another machine) and still name the journal.
        recorded = os.path.abspath(path)
        rel = os.path.relpath(recorded, os.path.abspath(results_root))
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            recorded = rel
        info = {"rid": run_info["rid"], "seq": seq, "journal": recorded}
        if live is not None and live.active:
            live.record_resumed_from(info["rid"], seq, recorded)
        adapter = live.adapter if live is not None else select_adapter(mgr)
        adapter.restore(RESUMED_FROM_DATASET, json.dumps(info), {}, False,
                        False, True)
        user_state = dict(state.checkpoint)
        own["_journal_resumed"] = user_state
        self.checkpoint(**user_state)
        return user_state
