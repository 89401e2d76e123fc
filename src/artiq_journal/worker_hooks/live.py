"""``LiveJournal``: the journal of one running experiment.

Made by :func:`~.attach.attach`, which installs the wrappers of
:mod:`.hooks` on the run's DatasetManager.  Guarantees:

* Semantics are ARTIQ's: the original method runs first, with the caller's
  very objects, so it raises exactly what it raises and a failing call
  journals nothing; values are not copied (broadcast and archive still share
  one object).  ``get(key, archive=True)`` is journaled (``archive`` record)
  only when the value came from the dataset DB, i.e. ``key`` was not in
  ``local`` -- exactly when ARTIQ puts it into the ``archive`` group.
* When a dataset call returns, its record is in the kernel (survives a crash
  of the process); what survives power loss is the fsync policy's business
  (:mod:`.config`).
* No locks: like ARTIQ's DatasetManager the wrapped manager is meant for the
  experiment's thread.
* In-place changes to a dataset's value that bypass the manager (``v =
  get_dataset(k); v.append(x)``) are not journaled; ARTIQ would write them
  to the results file.  Snapshots (below) capture them, records cannot.

Never breaking the experiment (:meth:`LiveJournal.fault`, the ONE place that
decides; every wrapper and the automatic hook's stage and results-file
hooks end up there).  The experiment's call has always already happened:

* the disk fails (``JournalFailed`` from the writer: write/fsync error,
  ENOSPC, EIO): the ``on_error`` policy.  ``"stop"`` logs an error and
  raises ``JournalFailed`` from that dataset call and every later one, so
  the run ends; ``"continue"`` logs a loud error and the run goes on
  unjournaled;
* a value the journal cannot encode (``TypeError`` etc. from the codec, a
  record too large): ONE warning naming the rid, the journal is closed with
  reason ``journal_disabled`` and the run goes on unjournaled -- a journal
  with a hole would silently lose data at recovery;
* anything else raised by our own code (a call the journal does not
  understand, a bug): ONE warning naming the rid, closed with reason
  ``hook_error``, the run goes on unjournaled.

Snapshot policy: a ``checkpoint`` writes a snapshot (the full run state,
covering exactly the checkpoint record) when the bytes journaled since the
last snapshot reach ``max(size of the last snapshot, 1 MiB)`` -- so snapshot
cost is amortised O(1) per journaled byte and never quadratic -- or when
``snapshot_interval`` seconds passed and at least 64 KiB were journaled since
(bounded replay time for slow, long runs).

Retention (``keep``): :meth:`LiveJournal.close` deletes the journal directory
only when :meth:`~LiveJournal.results_written` verified ARTIQ's results file
and made it durable, the run reached ``analyze``, and ``keep`` is false.
Every other journal stays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from typing import Any, Callable, Iterator

from ..errors import JournalError, JournalFailed, RecordTooLarge
from ..journal.constants import (REC_APPEND, REC_ARCHIVE, REC_CHECKPOINT,
                                 REC_MUTATE, REC_RESUMED_FROM, REC_RUN_INFO,
                                 REC_SET, REC_STAGE, SNAPSHOT_NAME)
from ..journal import codec
from ..journal.writer import JournalWriter
from ..runstate import RunState
from . import config
from .adapters import ArtiqAdapter
from .hooks import make_hooks
from .results_file import check_results_file, fsync_file_and_dir

logger = logging.getLogger("artiq_journal")

__all__ = ["LiveJournal", "live_journal", "LIVE_ATTR", "SNAPSHOT_MIN_BYTES",
           "SNAPSHOT_MIN_TIMED_BYTES"]

#: Instance attribute naming the manager's LiveJournal (for the resume mixin).
LIVE_ATTR = "_artiq_journal_live"
#: Amortised snapshot rule: at least this many bytes between snapshots.
SNAPSHOT_MIN_BYTES = 1 << 20
#: Time rule: at least this many bytes journaled since the last snapshot.
SNAPSHOT_MIN_TIMED_BYTES = 64 << 10
#: Suffix a journal directory gets while it is being deleted, so a crash
#: half-way through the deletion never leaves a damaged ``*.journal``.
DELETING_SUFFIX = ".deleted"
#: Exceptions of the codec/writer meaning "this value cannot be journaled"
#: (nothing was written; the disk is fine).
UNENCODABLE = (TypeError, ValueError, OverflowError, RecordTooLarge)

_REC_NAMES = {REC_SET: "set", REC_MUTATE: "mutate", REC_APPEND: "append_to",
              REC_ARCHIVE: "get(archive=True)", REC_STAGE: "stage",
              REC_CHECKPOINT: "checkpoint", REC_RESUMED_FROM: "resumed_from",
              REC_RUN_INFO: "run_info"}
_MISSING = object()


def live_journal(dataset_mgr: Any) -> "LiveJournal | None":
    """The LiveJournal attached to ``dataset_mgr``, or None."""
    return getattr(dataset_mgr, "__dict__", {}).get(LIVE_ATTR)


def is_disk_failure(exc: BaseException) -> bool:
    """True for a failing disk (fail-stop territory), False for our own
    faults (names, signatures, types, values the codec cannot encode)."""
    return isinstance(exc, (JournalFailed, OSError))


def _discard(rtype: int, payload: Any) -> int:
    return 0


class LiveJournal:
    """The journal of one running experiment (returned by :func:`attach`).

    ``path`` is the journal directory, ``writer`` its JournalWriter,
    ``adapter`` the :mod:`.adapters` object for the manager's ARTIQ
    generation.  Not thread-safe, like the DatasetManager it watches.
    """

    def __init__(self, dataset_mgr: Any, writer: JournalWriter,
                 run_info: dict, *, on_error: str, keep: bool,
                 snapshot_interval: float,
                 adapter: ArtiqAdapter | None = None,
                 snapshot_min_bytes: int = SNAPSHOT_MIN_BYTES,
                 snapshot_min_timed_bytes: int = SNAPSHOT_MIN_TIMED_BYTES,
                 dir_fsync: bool = True) -> None:
        if on_error not in config.ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of "
                             f"{config.ON_ERROR_CHOICES}, not {on_error!r}")
        if adapter is None:
            from .adapters import select_adapter
            adapter = select_adapter(dataset_mgr)
        self.dataset_mgr = dataset_mgr
        self.adapter = adapter
        self.writer = writer
        self.path = writer.path
        self.run_info = run_info
        self.rid = run_info.get("rid")
        self.results_dir = run_info["results_dir"]
        self.on_error = on_error
        self.keep = keep
        self.snapshot_interval = snapshot_interval
        self.snapshot_min_bytes = snapshot_min_bytes
        self.snapshot_min_timed_bytes = snapshot_min_timed_bytes
        #: False on a platform that cannot fsync directories.
        self.dir_fsync = dir_fsync
        #: Why journaling stopped early (``journal_disabled``, ``hook_error``,
        #: ``journal_failed``), or None.
        self.stopped_reason: str | None = None
        self._append = writer.append
        self._failure: JournalFailed | None = None
        self._closed = False
        self._detached = False
        self._results_ok = False
        #: The experiment's storage policy asked for no results file.
        self._results_not_wanted = False
        #: The live-file refresher (``live_file.LiveFile``), or None.
        self.live_file: Any = None
        self._reached_analyze = False
        self._saved: dict[str, Any] = {}
        self._hooks: dict[str, Callable] = {}
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
        #: Depth of nested point() blocks (inner ones join the outer).
        self._point_depth = 0
        #: A checkpoint() made inside a point, recorded when it ends.
        self._deferred_checkpoint: dict | None = None

    # -- state -----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while dataset operations are being journaled."""
        return not (self._closed or self._detached or self._failure)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def results_verified(self) -> bool:
        """True once :meth:`results_written` verified the results file."""
        return self._results_ok

    # -- installing --------------------------------------------------------------

    def _install(self) -> None:
        mgr = self.dataset_mgr
        if live_journal(mgr) is not None:
            raise ValueError("this DatasetManager is already journaled")
        hooks, self._retarget = make_hooks(mgr, self.adapter, self._append,
                                           self._on_fail,
                                           self.writer.append_encoded)
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

    # -- faults: the one place that decides -----------------------------------------

    def _on_fail(self, rtype: int, payload: Any, exc: BaseException) -> None:
        """Slow path of every wrapper: the original call succeeded, the
        record could not be appended."""
        if self._failure is not None:
            raise self._failure
        if rtype == REC_MUTATE and isinstance(exc, TypeError) and \
                isinstance(payload[1], slice):
            # The codec has no slice; ARTIQ's mutate turns (start, stop,
            # step) back into the same slice.
            index = payload[1]
            try:
                self._append(REC_MUTATE, [payload[0], (index.start,
                             index.stop, index.step), payload[2]])
                return
            except Exception as again:  # noqa: BLE001 - decided below
                exc = again
        key = payload[0] if isinstance(payload, list) and payload else None
        what = f"{_REC_NAMES.get(rtype, rtype)}"
        if key is not None:
            what = f"'{key}' ({what})"
        self.fault(f"cannot journal {what}", exc)

    def fault(self, what: str, exc: BaseException) -> None:
        """Decide what a failure of the journal does to the run (see the
        module docstring): raises JournalFailed only for a failing disk
        under ``on_error="stop"``; otherwise journaling of this run stops
        with one log message and the run goes on."""
        if self._failure is not None:
            raise self._failure
        if self._detached or self._closed:
            return
        if is_disk_failure(exc):
            self._disk_failed(what, exc)
            return
        reason = "journal_disabled" if isinstance(exc, UNENCODABLE) \
            else "hook_error"
        logger.warning(
            "artiq-journal: RID %s: %s: %s: %s -- journaling is switched off "
            "for this run (closed with reason %s); the run goes on "
            "unjournaled, and a crash from now on cannot be recovered "
            "(journal %s)", self.rid, what, type(exc).__name__, exc, reason,
            self.path, exc_info=reason == "hook_error")
        self.stop_journaling(reason)

    def stop_journaling(self, reason: str) -> None:
        """Detach and close the journal with ``reason`` (kept, never
        deleted); the experiment goes on.  Never raises."""
        self.stopped_reason = reason
        self._closed = True
        self.detach()
        self._end_live_file(False)
        try:
            if self.writer.failed:
                self.writer.abandon()
            else:
                self.writer.close(reason)
        except Exception:  # noqa: BLE001 - must not reach the experiment
            self.writer.abandon()

    def _disk_failed(self, what: str, exc: BaseException) -> None:
        message = (f"artiq-journal: RID {self.rid}: {what}: "
                   f"{type(exc).__name__}: {exc} -- journal {self.path}")
        if self.on_error == "stop":
            logger.error("%s; stopping the run (ARTIQ_JOURNAL_ON_ERROR=stop)",
                         message)
            failure = exc if isinstance(exc, JournalFailed) else \
                JournalFailed(f"{what}: {type(exc).__name__}: {exc}",
                              path=self.path)
            if failure is not exc:
                failure.__cause__ = exc
            self._failure = failure
            self.stopped_reason = "journal_failed"

            def refuse(rtype: int, payload: Any) -> int:
                raise failure
            if self._retarget is not None:
                self._retarget(refuse)
            raise failure
        logger.error("%s; THE RUN CONTINUES UNJOURNALED: a crash from now on "
                     "cannot be recovered (ARTIQ_JOURNAL_ON_ERROR=continue)",
                     message)
        self.stop_journaling("journal_disabled")

    def _record(self, rtype: int, payload: Any) -> int | None:
        """Append a record outside the dataset hot path, under the policy."""
        if not self.active:
            if self._failure is not None:
                raise self._failure
            return None
        try:
            return self._append(rtype, payload)
        except Exception as exc:
            self.fault(f"cannot journal {_REC_NAMES[rtype]}", exc)
            return None

    # -- run events --------------------------------------------------------------

    def stage(self, name: str, t: float | None = None) -> int | None:
        """Record that the run entered stage ``name`` (build, prepare, run,
        analyze, build_failed, prepare_failed) at Unix time ``t`` (default
        now; for ``run`` pass ARTIQ's ``run_time``).  Returns the seq."""
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
        closed.  The file must open as HDF5, hold the ``datasets`` and
        ``archive`` groups and name this run's rid (``rid`` read back); it
        is then fsynced with its directory (unless fsync="never"), so
        deleting the journal afterwards cannot lose data to a power
        failure.  Returns True when recorded; False (with a warning, journal
        kept) otherwise.  Never raises a journal error."""
        path = os.path.abspath(os.fspath(h5_path))
        problem = check_results_file(path, ("datasets", "archive"), self.rid)
        if problem is None and self.writer.fsync_policy != "never":
            try:
                fsync_file_and_dir(path, self.dir_fsync)
            except OSError as exc:
                problem = f"cannot fsync it: {exc}"
        if problem is not None:
            logger.warning("artiq-journal: RID %s: results file %s %s; "
                           "keeping the journal %s", self.rid, path, problem,
                           self.path)
            return False
        try:
            seq = self.stage("results_written")
        except JournalFailed:
            return False
        self._results_ok = seq is not None
        return self._results_ok

    @contextlib.contextmanager
    def point(self) -> Iterator[None]:
        """``with journal.point(): ...``: the dataset operations inside
        are one unit.  Recovery applies all of them or, when the run died
        inside the block, none (kept aside in the recovered file's
        ``artiq_journal/partial_point``); under ``fsync="always"`` they cost
        one fdatasync together, at the end of the block.  The block is
        committed however it is left (an exception inside it leaves the
        live datasets as they are, and so does the journal).  Nested
        blocks join the outermost one; a ``checkpoint()`` inside one is
        recorded when it ends.  Without an active journal: no effect."""
        if self._point_depth or not self.active:
            self._point_depth += 1
            try:
                yield
            finally:
                self._point_depth -= 1
            return
        try:
            self.writer.begin_point()
        except Exception as exc:
            self.fault("cannot journal point_begin", exc)
        self._point_depth = 1
        try:
            yield
        finally:
            self._point_depth = 0
            self._end_point()

    def _end_point(self) -> None:
        if self.active and self.writer.in_point:
            try:
                self.writer.end_point()
            except Exception as exc:
                self.fault("cannot journal point_end", exc)
        deferred, self._deferred_checkpoint = self._deferred_checkpoint, None
        if deferred is not None:
            self.checkpoint(deferred)

    def checkpoint(self, user_state: dict) -> int | None:
        """Record the experiment's checkpoint; maybe write a snapshot (see
        "Snapshot policy").  Raises TypeError, writing nothing, when
        ``user_state`` cannot be journaled (the experiment's own explicit
        call, so it is told).  Returns the record's seq (None when made
        inside a :meth:`point`: it is recorded when the point ends)."""
        if not self.active:
            if self._failure is not None:
                raise self._failure
            return None
        if self._point_depth:
            codec.pack(user_state)  # TypeError now, as outside a point
            self._deferred_checkpoint = user_state
            return None
        try:
            seq = self._append(REC_CHECKPOINT, [user_state])
        except TypeError:
            raise
        except Exception as exc:
            self.fault("cannot journal checkpoint", exc)
            return None
        self._checkpoint, self._checkpoint_seq = user_state, seq
        if self._snapshot_due():
            self._write_snapshot(seq)
        if self.live_file is not None:
            self.live_file.poke()   # never blocks
        return seq

    def update_run_info(self, **fields: Any) -> int | None:
        """Append a new ``run_info`` record: the run-info map with
        ``fields`` added (the last run_info record wins; used for a storage
        policy set in ``build()``).  Returns the seq."""
        info = dict(self.run_info, **fields)
        seq = self._record(REC_RUN_INFO, info)
        if seq is not None:
            self.run_info = info
        return seq

    def results_not_wanted(self) -> None:
        """The run's storage policy wants no results file: closing then
        counts as a complete run (reason ``results_not_wanted``; the
        journal is deleted like after a verified results file)."""
        self._results_not_wanted = True

    def _end_live_file(self, complete: bool) -> None:
        live_file, self.live_file = self.live_file, None
        if live_file is not None:
            live_file.finish(remove=complete)   # never raises

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
        since = self.writer.bytes_appended - self._snapshot_pos
        if since >= max(self._snapshot_bytes, self.snapshot_min_bytes):
            return True
        return (since >= self.snapshot_min_timed_bytes and time.monotonic()
                - self._snapshot_time >= self.snapshot_interval)

    def run_state(self) -> RunState:
        """The run's current state, as replaying its journal would give;
        the datasets are a view of the live manager's dicts (not copies)."""
        return RunState(run_info=self.run_info, stage=self._stage,
                        stage_time=self._stage_time, run_time=self._run_time,
                        datasets=self.adapter.datasets_view(),
                        checkpoint=self._checkpoint,
                        checkpoint_seq=self._checkpoint_seq,
                        resumed_from=self._resumed_from,
                        last_seq=self.writer.last_seq)

    def _write_snapshot(self, checkpoint_seq: int) -> None:
        try:
            covered = self.writer.write_snapshot(
                self.run_state().to_snapshot())
            size = os.path.getsize(os.path.join(self.path, SNAPSHOT_NAME))
        except Exception as exc:
            self.fault("cannot write snapshot", exc)
            return
        # Resume starts from the snapshot of its checkpoint: they must agree.
        assert covered == checkpoint_seq, (covered, checkpoint_seq)
        self._snapshot_bytes = size
        self._snapshot_pos = self.writer.bytes_appended
        self._snapshot_time = time.monotonic()

    # -- closing -----------------------------------------------------------------

    def close(self, reason: str | None = None) -> None:
        """Detach and close the journal cleanly (a ``close`` record, synced).

        ``reason`` defaults to ``"results_written"`` after a verified
        :meth:`results_written`, else ``"no_results"``; ``results_written``
        is refused (``no_results`` written instead) when the file was not
        verified.  Then, if the results file was verified, the run reached
        ``analyze`` (run() did not raise) and ``keep`` is false, the journal
        directory is deleted (renamed to ``*.journal.deleted`` first, so an
        interrupted deletion never looks like a damaged journal).
        Idempotent; never raises a journal error (they are logged)."""
        if self._closed:
            self.detach()
            return
        self._closed = True
        self.detach()
        complete = self._results_ok or self._results_not_wanted
        if reason is None or (reason == "results_written"
                              and not self._results_ok):
            reason = "results_written" if self._results_ok else \
                "results_not_wanted" if self._results_not_wanted \
                else "no_results"
        try:
            self.writer.close(reason)
        except JournalError as exc:
            logger.error("artiq-journal: closing journal %s failed: %s",
                         self.path, exc)
            self.writer.abandon()
            self._end_live_file(False)
            return
        # Ended before the journal may be deleted: the refresher reads it.
        self._end_live_file(complete and reason in ("results_written",
                                                    "results_not_wanted"))
        if self.writer.failed or self._failure is not None:
            return
        # A run whose run() raised also gets a results file, but it is
        # unfinished: keep its journal so the scan can be resumed.
        if complete and self._reached_analyze and not self.keep:
            self._delete()

    def abandon(self) -> None:
        """Detach and release the journal without a close record: it stays
        orphaned, for ``artiq-recover``."""
        self._closed = True
        self.detach()
        self.writer.abandon()
        self._end_live_file(False)

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
