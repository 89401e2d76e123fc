"""Journal every operation of a live ``DatasetManager``: :func:`attach`.

Works on ARTIQ's own ``artiq.master.worker_db.DatasetManager`` and on the
built-in runner's, without subclassing and without touching ARTIQ: the
*instance's* ``set``, ``mutate``, ``append_to`` and ``get`` are shadowed by
instance attributes that call the original method first and then append one
record (payloads in docs/FORMAT.md, "Record types").  Guarantees:

* Semantics are ARTIQ's: the original runs first, with the caller's very
  objects, so it raises exactly what it raises and a failing call journals
  nothing; values are not copied (broadcast and archive still share one
  object).  ``get(key, archive=True)`` is journaled (``archive`` record) only
  when the value came from the dataset DB, i.e. ``key`` was not in
  ``local`` -- exactly when ARTIQ puts it into the ``archive`` group.
* When a dataset call returns, its record is in the kernel (survives a crash
  of the process); what survives power loss is the fsync policy's business
  (:mod:`.config`).
* The hot path (``append_to``) is one closure: original call, a two-element
  list, ``writer.append``.  No locks: like ARTIQ's DatasetManager the
  wrapped manager is meant for the experiment's thread.
* In-place changes to a dataset's value that bypass the manager (``v =
  get_dataset(k); v.append(x)``) are not journaled; ARTIQ would write them to
  the results file.  Snapshots (below) capture them, records cannot.

Journal write failure (``on_error``, default from ``ARTIQ_JOURNAL_ON_ERROR``):
an I/O error, a full disk, or a value the journal cannot encode is logged as
an error on the ``artiq_journal`` logger (ARTIQ's worker forwards it to the
master log), then ``"stop"`` raises ``JournalFailed`` from that dataset call
and every later one (the dataset operation itself has already happened), and
``"continue"`` restores the original methods, closes what can be closed and
lets the run go on unjournaled.

Snapshot policy: a ``checkpoint`` writes a snapshot (the full run state,
covering exactly the checkpoint record) when the bytes journaled since the
last snapshot reach ``max(size of the last snapshot, 1 MiB)`` -- so snapshot
cost is amortised O(1) per journaled byte and never quadratic -- or when
``snapshot_interval`` seconds passed and at least 64 KiB were journaled since
(bounded replay time for slow, long runs).

Retention (``keep``, default from ``ARTIQ_JOURNAL_KEEP``): :meth:`LiveJournal
.close` deletes the journal directory only when ``results_written`` verified
ARTIQ's results file and made it durable, and ``keep`` is false.  Every other
journal stays.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
from typing import Any, Callable

from ..errors import JournalError, JournalFailed
from ..journal import codec
from ..journal.constants import (JOURNAL_SUFFIX, REC_APPEND, REC_ARCHIVE,
                                 REC_CHECKPOINT, REC_MUTATE, REC_RESUMED_FROM,
                                 REC_RUN_INFO, REC_SET, REC_STAGE,
                                 SNAPSHOT_NAME)
from ..journal.fsio import fsync_path
from ..journal.writer import JournalWriter
from ..runstate import RunState
from ..state import DatasetState
from . import config

logger = logging.getLogger("artiq_journal")

__all__ = ["attach", "LiveJournal", "live_journal", "journal_dir_name",
           "results_file_name", "SNAPSHOT_MIN_BYTES"]

#: Instance attribute naming the manager's LiveJournal (for the resume mixin).
LIVE_ATTR = "_artiq_journal_live"
#: The manager methods shadowed by attach().
HOOKED_METHODS = ("set", "mutate", "append_to", "get")
#: Amortised snapshot rule: at least this many bytes between snapshots.
SNAPSHOT_MIN_BYTES = 1 << 20
#: Time rule: at least this many bytes journaled since the last snapshot.
SNAPSHOT_MIN_TIMED_BYTES = 64 << 10
#: Suffix a journal directory gets while it is being deleted, so a crash
#: half-way through the deletion never leaves a damaged ``*.journal``.
DELETING_SUFFIX = ".deleted"
#: Root objects of the HDF5 file ARTIQ's worker writes; all present means
#: ``write_results`` ran to its end.
ARTIQ_RESULTS_KEYS = ("datasets", "archive", "artiq_version", "rid",
                      "start_time", "run_time", "expid")


def journal_dir_name(rid: int, class_name: str) -> str:
    """``<rid:09d>-<ClassName>.journal``, beside ARTIQ's results file."""
    return "{:09}-{}{}".format(rid, class_name, JOURNAL_SUFFIX)


def results_file_name(rid: int, class_name: str) -> str:
    """ARTIQ's results file name: ``"{:09}-{}.h5".format(rid, class_name)``."""
    return "{:09}-{}.h5".format(rid, class_name)


def live_journal(dataset_mgr: Any) -> "LiveJournal | None":
    """The LiveJournal attached to ``dataset_mgr``, or None."""
    return getattr(dataset_mgr, "__dict__", {}).get(LIVE_ATTR)


def _make_hooks(mgr: Any, append: Callable[[int, Any], int],
                on_fail: Callable[[int, list, Exception], None]
                ) -> tuple[dict[str, Callable], Callable]:
    """The four wrappers and a function that retargets their ``append``.

    Constants and callables are closure cells (LOAD_DEREF, no global or
    attribute lookups per call).  ``retarget(fn)`` swaps the append the
    wrappers call (failed / detached states) without a flag test per call.
    """
    orig_set, orig_mutate = mgr.set, mgr.mutate
    orig_append_to, orig_get = mgr.append_to, mgr.get
    t_set, t_mutate, t_append, t_archive = (REC_SET, REC_MUTATE, REC_APPEND,
                                            REC_ARCHIVE)

    def set(key, value, metadata, broadcast, persist, archive):
        orig_set(key, value, metadata, broadcast, persist, archive)
        try:
            append(t_set, [key, value, metadata, broadcast, persist, archive])
        except Exception as exc:
            on_fail(t_set, [key, value, metadata, broadcast, persist,
                            archive], exc)

    def mutate(key, index, value):
        orig_mutate(key, index, value)
        try:
            append(t_mutate, [key, index, value])
        except Exception as exc:
            on_fail(t_mutate, [key, index, value], exc)

    def append_to(key, value):
        orig_append_to(key, value)
        try:
            append(t_append, [key, value])
        except Exception as exc:
            on_fail(t_append, [key, value], exc)

    def get(key, archive=False):
        # Decided before the call: ARTIQ archives only values it reads from
        # the dataset DB, i.e. when the key is not in local.
        if archive and key not in mgr.local:
            value = orig_get(key, archive)
            try:
                append(t_archive, [key, value])
            except Exception as exc:
                on_fail(t_archive, [key, value], exc)
            return value
        return orig_get(key, archive)

    def retarget(new_append: Callable[[int, Any], int]) -> None:
        nonlocal append
        append = new_append

    return ({"set": set, "mutate": mutate, "append_to": append_to,
             "get": get}, retarget)


def _slice_as_artiq_index(index: Any) -> Any:
    """The ``(start, stop, step)`` tuple that ARTIQ's mutate turns back into
    the same slice, for a slice index (which the codec cannot encode); None
    for any other index."""
    if isinstance(index, slice):
        return (index.start, index.stop, index.step)
    return None


def _fsync_dirs(path: str, levels: int) -> None:
    """fsync ``path`` and its ``levels - 1`` parents: the worker has just
    created results/<date>/<hour> without syncing, and a journal whose
    directory entry is lost is lost entirely."""
    for _ in range(levels):
        fsync_path(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent


def _encodable_expid(expid: Any) -> tuple[Any, str | None]:
    """``expid`` itself when the journal can encode it; otherwise a copy
    with each unencodable leaf replaced by its ``repr`` and the exact PYON
    text (when sipyco is importable) for recovery to prefer."""
    try:
        codec.pack(expid)
        return expid, None
    except TypeError:
        pass

    def clean(obj: Any) -> Any:
        try:
            codec.pack(obj)
            return obj
        except TypeError:
            pass
        if isinstance(obj, dict):
            return {clean(k) if not isinstance(k, str) else k: clean(v)
                    for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return repr(obj)

    pyon_text = None
    pyon = sys.modules.get("sipyco.pyon")
    if pyon is not None:
        try:
            pyon_text = pyon.encode(expid)
        except Exception:  # noqa: BLE001 - only a better-effort extra
            pyon_text = None
    return clean(expid), pyon_text


class LiveJournal:
    """The journal of one running experiment (returned by :func:`attach`).

    ``path`` is the journal directory, ``writer`` its JournalWriter.  Not
    thread-safe, like the DatasetManager it watches.
    """

    def __init__(self, dataset_mgr: Any, writer: JournalWriter,
                 run_info: dict, *, on_error: str, keep: bool,
                 snapshot_interval: float) -> None:
        if on_error not in config.ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of "
                             f"{config.ON_ERROR_CHOICES}, not {on_error!r}")
        self.dataset_mgr = dataset_mgr
        self.writer = writer
        self.path = writer.path
        self.run_info = run_info
        self.results_dir = run_info["results_dir"]
        self.on_error = on_error
        self.keep = keep
        self.snapshot_interval = snapshot_interval
        self._append = writer.append
        self._failure: JournalFailed | None = None
        self._closed = False
        self._detached = False
        self._results_ok = False
        self._reached_analyze = False
        self._saved: dict[str, Any] = {}
        self._retarget: Callable | None = None
        # Run state kept for snapshots (datasets come from the manager).
        self._stage: str | None = None
        self._stage_time: float | None = None
        self._run_time: float | None = None
        self._checkpoint: dict | None = None
        self._checkpoint_seq: int | None = None
        self._resumed_from: dict | None = None
        self._snapshot_bytes = 0
        self._snapshot_pos = 0
        self._snapshot_time = time.monotonic()

    # -- state -----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while dataset operations are being journaled."""
        return not (self._closed or self._detached or self._failure)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    @property
    def results_verified(self) -> bool:
        """True once :meth:`results_written` verified the results file."""
        return self._results_ok

    # -- installing --------------------------------------------------------------

    def _install(self) -> None:
        mgr = self.dataset_mgr
        if live_journal(mgr) is not None:
            raise ValueError("this DatasetManager is already journaled")
        hooks, self._retarget = _make_hooks(mgr, self._append, self._on_fail)
        own = mgr.__dict__
        for name, wrapper in hooks.items():
            original = getattr(mgr, name)
            # Same name in a wrong-call TypeError as the original's.
            wrapper.__qualname__ = getattr(original, "__qualname__", name)
            wrapper.__doc__ = getattr(original, "__doc__", None)
            self._saved[name] = own.get(name, _MISSING)
            setattr(mgr, name, wrapper)
        self._hooks = hooks
        setattr(mgr, LIVE_ATTR, self)

    def detach(self) -> None:
        """Stop journaling: restore the manager's methods.  Idempotent.

        A wrapper someone captured (or wrapped again) keeps calling the
        original method and journals nothing any more.
        """
        if self._detached:
            return
        self._detached = True
        if self._retarget is not None:
            self._retarget(_discard)
        mgr = self.dataset_mgr
        own = mgr.__dict__
        for name, saved in self._saved.items():
            if own.get(name) is self._hooks[name]:
                if saved is _MISSING:
                    del own[name]
                else:
                    own[name] = saved
            else:
                logger.warning("artiq-journal: %s.%s was replaced after "
                               "attach(); leaving it in place",
                               type(mgr).__name__, name)
        if own.get(LIVE_ATTR) is self:
            del own[LIVE_ATTR]

    # -- failures ----------------------------------------------------------------

    def _on_fail(self, rtype: int, payload: list, exc: Exception) -> None:
        """Slow path of every wrapper: the original call succeeded, the
        record could not be appended."""
        if self._failure is not None:
            raise self._failure
        if rtype == REC_MUTATE and isinstance(exc, TypeError):
            index = _slice_as_artiq_index(payload[1])
            if index is not None:
                try:
                    self._append(REC_MUTATE, [payload[0], index, payload[2]])
                    return
                except Exception as again:  # noqa: BLE001 - reported below
                    exc = again
        key = payload[0] if payload else None
        self._journal_failed(f"cannot journal '{key}' "
                             f"({_REC_NAMES.get(rtype, rtype)})", exc)

    def _journal_failed(self, what: str, exc: BaseException) -> None:
        """Apply the on_error policy; raises JournalFailed under "stop"."""
        if self._failure is not None:
            raise self._failure
        if self._detached or self._closed:
            return
        message = (f"artiq-journal: {what}: {type(exc).__name__}: {exc} -- "
                   f"journal {self.path}")
        if self.on_error == "stop":
            logger.error("%s; stopping the run (ARTIQ_JOURNAL_ON_ERROR=stop)",
                         message)
            failure = exc if isinstance(exc, JournalFailed) else \
                JournalFailed(f"{what}: {type(exc).__name__}: {exc}",
                              path=self.path)
            if failure is not exc:
                failure.__cause__ = exc
            self._failure = failure

            def refuse(rtype: int, payload: Any) -> int:
                raise failure
            if self._retarget is not None:
                self._retarget(refuse)
            raise failure
        logger.error("%s; THE RUN CONTINUES UNJOURNALED: a crash from now on "
                     "cannot be recovered (ARTIQ_JOURNAL_ON_ERROR=continue)",
                     message)
        self.detach()
        try:
            if self.writer.failed:
                self.writer.abandon()
            else:
                self.writer.close("journal_disabled")
        except JournalError:
            self.writer.abandon()
        self._closed = True

    def _record(self, rtype: int, payload: Any) -> int | None:
        """Append a record outside the dataset hot path, under the policy."""
        if not self.active:
            if self._failure is not None:
                raise self._failure
            return None
        try:
            return self._append(rtype, payload)
        except Exception as exc:
            self._journal_failed(f"cannot journal {_REC_NAMES[rtype]}", exc)
            return None

    # -- run events --------------------------------------------------------------

    def stage(self, name: str, t: float | None = None) -> int | None:
        """Record that the run entered stage ``name`` (build, prepare, run,
        analyze) at Unix time ``t`` (default now; for ``run`` pass ARTIQ's
        ``run_time``).  Returns the record's seq."""
        when = time.time() if t is None else float(t)
        seq = self._record(REC_STAGE, [name, when])
        if seq is not None:
            self._stage, self._stage_time = name, when
            if name == "run":
                self._run_time = when
            elif name == "analyze":
                self._reached_analyze = True
        return seq

    def results_written(self, h5_path: str | os.PathLike) -> bool:
        """Record that ARTIQ's results file ``h5_path`` is written and
        closed.  The file must open as HDF5 and hold the ``datasets`` and
        ``archive`` groups; it is then fsynced with its directory (unless
        fsync="never"), so deleting the journal afterwards cannot lose data
        to a power failure.  Returns True when recorded; False (with a
        warning, journal kept) otherwise.  Never raises a journal error."""
        path = os.path.abspath(os.fspath(h5_path))
        problem = _check_results_file(path, ("datasets", "archive"))
        if problem is None and self.writer.fsync_policy != "never":
            try:
                _fsync_file_and_dir(path)
            except OSError as exc:
                problem = f"cannot fsync it: {exc}"
        if problem is not None:
            logger.warning("artiq-journal: results file %s %s; keeping the "
                           "journal %s", path, problem, self.path)
            return False
        try:
            seq = self.stage("results_written")
        except JournalFailed:
            return False
        self._results_ok = seq is not None
        return self._results_ok

    def checkpoint(self, user_state: dict) -> int | None:
        """Record the experiment's checkpoint; maybe write a snapshot (see
        "Snapshot policy").  Raises TypeError, writing nothing, when
        ``user_state`` cannot be journaled.  Returns the record's seq."""
        if not self.active:
            if self._failure is not None:
                raise self._failure
            return None
        try:
            seq = self._append(REC_CHECKPOINT, [user_state])
        except TypeError:
            raise
        except Exception as exc:
            self._journal_failed("cannot journal checkpoint", exc)
            return None
        self._checkpoint, self._checkpoint_seq = user_state, seq
        if self._snapshot_due():
            self._write_snapshot(seq)
        return seq

    def record_resumed_from(self, rid: int, seq: int, journal: str) -> None:
        """Record (REC_RESUMED_FROM) that this run resumed another."""
        info = {"rid": rid, "seq": seq, "journal": journal}
        if self._record(REC_RESUMED_FROM, info) is not None:
            self._resumed_from = info

    def record_archive(self, key: str, value: Any) -> None:
        """Put ``value`` into the manager's ``archive`` group as a
        ``get(key, archive=True)`` from the dataset DB would, and journal it
        (used by resume to restore the archive group)."""
        self.dataset_mgr.archive[key] = value
        self._record(REC_ARCHIVE, [key, value])

    # -- snapshots ---------------------------------------------------------------

    def _snapshot_due(self) -> bool:
        since = _bytes_appended(self.writer) - self._snapshot_pos
        if since >= max(self._snapshot_bytes, SNAPSHOT_MIN_BYTES):
            return True
        return (since >= SNAPSHOT_MIN_TIMED_BYTES and time.monotonic()
                - self._snapshot_time >= self.snapshot_interval)

    def run_state(self) -> RunState:
        """The run's current state, as replaying its journal would give;
        the datasets are a view of the live manager's dicts (not copies)."""
        mgr = self.dataset_mgr
        view = DatasetState(warn=False)
        view.local, view.archive = mgr.local, mgr.archive
        view.metadata = mgr.metadata
        view.broadcast = mgr._broadcaster.raw_view
        return RunState(run_info=self.run_info, stage=self._stage,
                        stage_time=self._stage_time, run_time=self._run_time,
                        datasets=view, checkpoint=self._checkpoint,
                        checkpoint_seq=self._checkpoint_seq,
                        resumed_from=self._resumed_from,
                        last_seq=self.writer.last_seq)

    def _write_snapshot(self, checkpoint_seq: int) -> None:
        try:
            covered = self.writer.write_snapshot(
                self.run_state().to_snapshot())
            size = os.path.getsize(os.path.join(self.path, SNAPSHOT_NAME))
        except Exception as exc:
            self._journal_failed("cannot write snapshot", exc)
            return
        # Resume starts from the snapshot of its checkpoint: they must agree.
        assert covered == checkpoint_seq, (covered, checkpoint_seq)
        self._snapshot_bytes = size
        self._snapshot_pos = _bytes_appended(self.writer)
        self._snapshot_time = time.monotonic()

    # -- closing -----------------------------------------------------------------

    def close(self, reason: str | None = None) -> None:
        """Detach and close the journal cleanly (a ``close`` record, synced).

        ``reason`` defaults to ``"results_written"`` after a verified
        :meth:`results_written`, else ``"no_results"``.  Then, if the results
        file was verified, the run reached ``analyze`` (run() did not raise)
        and ``keep`` is false, the journal directory is deleted (renamed to ``*.journal.deleted`` first, so an interrupted
        deletion never looks like a damaged journal).  Idempotent; never
        raises a journal error (they are logged)."""
        if self._closed:
            self.detach()
            return
        self._closed = True
        self.detach()
        if reason is None:
            reason = "results_written" if self._results_ok else "no_results"
        try:
            self.writer.close(reason)
        except JournalError as exc:
            logger.error("artiq-journal: closing journal %s failed: %s",
                         self.path, exc)
            self.writer.abandon()
            return
        if self.writer.failed or self._failure is not None:
            return
        # A run whose run() raised also gets a results file, but it is
        # unfinished: keep its journal so the scan can be resumed.
        if self._results_ok and self._reached_analyze and not self.keep:
            self._delete()

    def abandon(self) -> None:
        """Detach and release the journal without a close record: it stays
        orphaned, for ``artiq-recover``."""
        self._closed = True
        self.detach()
        self.writer.abandon()

    def _delete(self) -> None:
        doomed = self.path + DELETING_SUFFIX
        try:
            os.rename(self.path, doomed)
        except OSError as exc:
            logger.warning("artiq-journal: cannot remove journal %s: %s",
                           self.path, exc)
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def __enter__(self) -> "LiveJournal":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


_MISSING = object()


def _discard(rtype: int, payload: Any) -> int:
    return 0
_REC_NAMES = {REC_SET: "set", REC_MUTATE: "mutate", REC_APPEND: "append_to",
              REC_ARCHIVE: "get(archive=True)", REC_STAGE: "stage",
              REC_CHECKPOINT: "checkpoint", REC_RESUMED_FROM: "resumed_from",
              REC_RUN_INFO: "run_info"}


def _bytes_appended(writer: JournalWriter) -> int:
    """Bytes appended so far (approximate across segments is enough for the
    snapshot policy)."""
    counter = getattr(writer, "bytes_appended", None)
    if isinstance(counter, int):
        return counter
    return (writer._segment - 1) * writer.segment_bytes + writer._offset


def _check_results_file(path: str, keys: tuple[str, ...]) -> str | None:
    """None if ``path`` opens as HDF5 and holds ``keys``; else the problem."""
    import h5py  # a dependency of the package; only needed here
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
    except (OSError, ValueError) as exc:
        return f"cannot be read as HDF5 ({exc})"
    if missing:
        return f"lacks {', '.join(missing)}"
    return None


def _fsync_file_and_dir(path: str) -> None:
    # ARTIQ never fsyncs its results file; once the journal is deleted the
    # file is the only copy, so it must be on the disk first.
    fsync_path(path)
    _fsync_dirs(os.path.dirname(path), 1)


def attach(dataset_mgr: Any, *, rid: int, expid: dict, class_name: str,
           results_dir: str | os.PathLike, fsync: str = "group",
           pipeline_name: str | None = "main", priority: int | None = 0,
           start_time: float | None = None,
           artiq_version: str | None = None, on_error: str | None = None,
           keep: bool | None = None, group_interval: float | None = None,
           snapshot_interval: float | None = None,
           stage: str | None = "build") -> LiveJournal:
    """Journal every later ``set``/``mutate``/``append_to``/``get(archive=
    True)`` on ``dataset_mgr``, into ``<results_dir>/<rid:09d>-<class_name>
    .journal``, and return the live journal.

    ``results_dir`` is the directory ARTIQ's ``.h5`` goes into.  Writes the
    ``run_info`` record (with ``start_time``, default now, and
    ``artiq_version``, default ``artiq.__version__`` if ARTIQ is imported)
    and, unless ``stage`` is None, a ``stage`` record (at ``start_time``).
    ``fsync``: always|group|never (see :mod:`.config`), used as given --
    ``ARTIQ_JOURNAL_FSYNC`` is read by the automatic mode, which passes it
    here.  ``on_error``, ``keep``, ``group_interval`` (s) and
    ``snapshot_interval`` (s) default to the ``ARTIQ_JOURNAL_*``
    environment.

    Refuses (FileExistsError) a journal directory that already exists: two
    runs never share a journal.  Other I/O failures raise JournalFailed;
    ValueError if the manager is already journaled.
    """
    env = config.from_env()
    on_error = env.on_error if on_error is None else on_error
    if on_error not in config.ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {config.ON_ERROR_CHOICES}"
                         f", not {on_error!r}")
    if fsync not in config.FSYNC_CHOICES:
        raise ValueError(f"fsync must be one of {config.FSYNC_CHOICES}, "
                         f"not {fsync!r}")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise TypeError(f"rid must be an int, not {type(rid).__name__}")
    if not class_name or os.sep in class_name or class_name in (".", ".."):
        raise ValueError(f"bad experiment class name {class_name!r}")
    if live_journal(dataset_mgr) is not None:
        raise ValueError("this DatasetManager is already journaled")
    if artiq_version is None and "artiq" in sys.modules:
        artiq_version = getattr(sys.modules["artiq"], "__version__", None)
    start = time.time() if start_time is None else float(start_time)
    results_dir = os.path.abspath(os.fspath(results_dir))
    path = os.path.join(results_dir, journal_dir_name(rid, class_name))
    journaled_expid, expid_pyon = _encodable_expid(expid)
    run_info = {
        "rid": rid, "class_name": class_name, "expid": journaled_expid,
        "pipeline_name": pipeline_name, "priority": priority,
        "start_time": start, "artiq_version": artiq_version,
        "results_dir": results_dir,
        "h5_name": results_file_name(rid, class_name),
        "host": socket.gethostname(), "pid": os.getpid(),
    }
    if expid_pyon is not None:
        run_info["expid_pyon"] = expid_pyon
    try:
        os.makedirs(results_dir, exist_ok=True)
        os.mkdir(path)
    except FileExistsError:
        raise FileExistsError(f"{path}: a journal of that name already exists"
                              " (rid reused?); not mixing two runs") from None
    except OSError as exc:
        raise JournalFailed(f"cannot create journal directory: {exc}",
                            path=path) from exc
    writer = None
    try:
        if fsync != "never":
            _fsync_dirs(results_dir, 3)
        writer = JournalWriter(
            path, fsync=fsync,
            group_interval=(env.group_interval if group_interval is None
                            else group_interval))
        live = LiveJournal(
            dataset_mgr, writer, run_info, on_error=on_error,
            keep=env.keep if keep is None else bool(keep),
            snapshot_interval=(env.snapshot_interval
                               if snapshot_interval is None
                               else snapshot_interval))
        # Appended directly: a journal that cannot record even this fails
        # attach() itself, whatever on_error says.
        writer.append(REC_RUN_INFO, run_info)
        if stage is not None:
            writer.append(REC_STAGE, [stage, start])
            live._stage, live._stage_time = stage, start
        live._install()
    except BaseException as exc:
        if writer is not None:
            writer.abandon()
        shutil.rmtree(path, ignore_errors=True)
        if isinstance(exc, OSError):
            raise JournalFailed(f"cannot start journal: {exc}",
                                path=path) from exc
        raise
    if expid_pyon is not None:
        logger.warning("artiq-journal: expid of RID %d holds values the "
                       "journal cannot encode; journaled with repr() "
                       "stand-ins (exact PYON in run_info.expid_pyon)", rid)
    return live
