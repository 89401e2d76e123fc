"""``recover()``: turn orphaned journals back into ARTIQ results files.

For each journal found under the given paths (see ``discover.py``):

0. No segment or checkpoint file at all -> ``skipped_clean`` without
   touching the lock: nothing was journaled, and a writer creating the
   journal right now takes its lock before it creates segment 1.
1. A done marker matching the journal's content and ARTIQ's complete file
   -> ``already_complete`` without opening anything else.
2. The writer lock is held by a live process -> ``skipped_live`` (unless
   ``force``), naming the holder; held by a process that is not the
   writer the journal names -> ``skipped_locked``; cannot be told (lock
   file unreadable or not a regular file) -> ``skipped_unknown``: never
   taken for dead.  Otherwise the lock is *taken* for the rest of the run
   (not with ``output``/``dry_run``, which must not touch the tree), so a
   writer or a second ``recover`` cannot work on the journal meanwhile.
3. The journal ends in a close saying ARTIQ's results file was written
   (``results_written``) and that file is there, regular, complete, of the
   same rid -> ``already_complete``.  Any other close, or that file
   missing or damaged, goes on like an orphan: "closed" is never trusted
   by itself.
4. Replay (snapshot + trusted records, streaming, one pass).  A run whose
   ``build()`` or ``prepare()`` raised (stage or close reason
   ``build_failed``/``prepare_failed``) gets no results file, as ARTIQ
   writes none: ``no_results_expected``, the journal stays readable.  A run
   merely killed before ``run()`` is recovered like any other.
5. The results file already there: ARTIQ's complete file ->
   ``already_complete`` (and mark the journal done); a file an earlier
   recovery made from this same journal content -> ``already_recovered``;
   anything else (partial file, symlink, FIFO, directory) is moved aside
   later, never overwritten, followed or opened.
6. Write the file to a temporary name created exclusively in the target
   directory (an opened directory fd: no symlink can redirect it), through
   the fd that created it; fsync; publish by link; write the done marker.

Idempotent: a second call finds step 1, 3 or 5 true and writes nothing.
Never raises for a damaged journal or an I/O error on one run: that run is
``failed`` or ``recovered_partial`` with its problems, and the others go on.
"""

from __future__ import annotations

import datetime
import os
import socket
import stat
from typing import Any, Callable, Iterable, Union

from ..errors import (JournalError, JournalFailed, JournalLocked,
                      LockUnknown, NotAJournal, RecoveryError)
from ..journal import lock as journal_lock
from ..journal.constants import (CLOSE_RESULTS_WRITTEN, JOURNAL_SUFFIX,
                                 REC_RUN_INFO, STAGES_WITHOUT_RESULTS)
from ..journal.reader import JournalReader
from ..replay import ReplayResult, replay
from . import publish
from .discover import (FoundJournal, find_journals, fingerprint,
                       parse_journal_name, tail_close_reason)
from .experiment_code import trusted_layout
from .hdf5_out import RecoveryInfo, layout_of_run, write_results_file
from .points import split_partial_point
from .report import Problem, Report, RunReport

#: ``progress(done, total, run)`` after each journal.
ProgressCallback = Callable[[int, int, RunReport], None]
PathArg = Union[str, os.PathLike]


def recover(paths: PathArg | Iterable[PathArg], *,
            output: PathArg | None = None, dry_run: bool = False,
            force: bool = False,
            progress: ProgressCallback | None = None,
            trust_experiment_code: bool = False,
            repository: PathArg | None = None) -> Report:
    """Recover every orphaned journal at or below ``paths``.

    ``output``: write results files under this directory instead (same
    layout relative to each path; the results tree is only read).
    ``dry_run``: read and report only; nothing is written anywhere.
    ``force``: also recover journals whose writer is still alive.
    ``trust_experiment_code``: import the experiment file the journal names
    (relative to ``repository``, default the working directory) to run its
    custom ``store_dataset``/``write_metadata`` (see
    :mod:`.experiment_code`); without it a journal naming such methods is
    recovered with its declarative policy only, and a warning says so.
    A run whose storage policy wants no results file gets none
    (``no_results_expected``).

    Raises :class:`RecoveryError` only for a path that is not an existing
    directory (a usage error).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    roots = [os.path.abspath(os.fspath(p)) for p in paths]
    for root in roots:
        if not os.path.isdir(root):
            raise RecoveryError("not a directory" if os.path.exists(root)
                                else "no such file or directory", path=root)
    out_dir = None if output is None else os.path.abspath(os.fspath(output))
    report = Report(dry_run=dry_run)
    found = find_journals(roots, report.problems)
    for done, journal in enumerate(found, 1):
        run = RunReport(journal=journal.path)
        try:
            recovery = _Recovery(journal, run, out_dir, dry_run, force)
            recovery.trust = trust_experiment_code
            recovery.repository = None if repository is None else \
                os.path.abspath(os.fspath(repository))
            recovery.run()
        except Exception as exc:  # never crash: report, go on with the rest
            run.outcome = "failed"
            run.problems.append(Problem(journal.path, None, "recovery "
                                        f"failed: {type(exc).__name__}: "
                                        f"{exc}"))
        report.runs.append(run)
        if progress:  # None or False: no progress reports
            progress(done, len(found), run)
    return report


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")


def _file_identity(path: str) -> list | None:
    """``[device, inode, size, mtime_ns, ctime_ns]`` of a regular file (not
    through a symlink), or None: a marker that saw this file complete need
    not open it again while it is the same file, unchanged (a tree of 10^4
    finished runs is then checked with one ``lstat`` each).  Any write, or
    another file put in its place, changes it (ctime cannot be set back)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns]


def _writer_identity(journal_dir: str) -> dict | None:
    """pid and host of the writer the journal's first record names (its
    run info), read cheaply; None when unknown."""
    reader = JournalReader(journal_dir)
    try:
        for record in reader:
            payload = record.payload
            if record.rtype == REC_RUN_INFO and isinstance(payload, dict):
                return {"pid": payload.get("pid"),
                        "host": payload.get("host")}
            return None
    except Exception:  # noqa: BLE001 - only a better message depends on it
        return None
    return None


class _Recovery:
    """The steps of the module docstring for one journal."""

    def __init__(self, found: FoundJournal, run: RunReport,
                 out_dir: str | None, dry_run: bool, force: bool) -> None:
        self.found, self.run_report = found, run
        self.path = found.path
        self.out_dir, self.dry_run, self.force = out_dir, dry_run, force
        #: --trust-experiment-code and where relative expid files are.
        self.trust = False
        self.repository: str | None = None
        # Markers and moving files aside only in the results tree itself.
        self.in_place = out_dir is None and not dry_run
        self.fingerprint = fingerprint(self.path)
        self.result: ReplayResult | None = None
        #: The journal lock, when this recovery holds it.
        self.lock = None
        #: Who the recovered file and the marker belong to when run as root.
        self.owner = publish.owner_of(self.path)
        parsed = parse_journal_name(self.path)
        if parsed is not None:
            run.rid, run.class_name = parsed

    def problem(self, reason: str, severity: str = "error",
                file: str | None = None, offset: int | None = None) -> None:
        self.run_report.problems.append(
            Problem(file or self.path, offset, reason, severity))

    # -- the steps -----------------------------------------------------------

    def run(self) -> None:
        rep = self.run_report
        if self.fingerprint is None:
            self.problem("cannot list the journal directory")
            rep.outcome = "failed"
            return
        if not self.fingerprint:
            # The writer takes the lock before it creates segment 1, so a
            # journal without files may be one starting right now: leave
            # its lock alone.  There is nothing in it to recover anyway.
            self.problem("no segment or checkpoint file: nothing was "
                         "journaled", "info")
            rep.outcome = "skipped_clean"
            return
        if self._marked_complete():
            return
        if not self._take_lock():
            return
        try:
            self._recover()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _take_lock(self) -> bool:
        """Hold the lock (in place) or check nobody does; False (outcome
        set) when the journal must be left alone."""
        if self.in_place:
            try:
                self.lock = journal_lock.acquire(self.path)
                return True
            except JournalLocked as exc:
                return self._locked(exc.holder)
            except (JournalFailed, NotAJournal):
                pass  # cannot write the lock file: probe it read-only
        try:
            holder = journal_lock.probe(self.path)
        except LockUnknown as exc:
            self.problem(f"{exc.reason}; left alone (a live writer cannot "
                         "be ruled out)", "error", exc.path)
            self.run_report.outcome = "skipped_unknown"
            return False
        return holder is None or self._locked(holder)

    def _locked(self, holder: dict | None) -> bool:
        """A live process holds the lock: skip, or go on with ``force``."""
        who = journal_lock.describe_holder(holder)
        writer = _writer_identity(self.path) or {}
        pid = (holder or {}).get("pid")
        not_writer = (pid is not None and isinstance(writer.get("pid"), int)
                      and writer.get("host") == socket.gethostname()
                      and writer["pid"] != pid)
        if self.force:
            self.problem(f"the journal's lock is held{who}; recovered its "
                         "state so far (--force)", "warning")
            return True
        if not_writer:
            self.problem(f"the journal's lock is held{who}, which is not "
                         f"the run's writer (pid {writer['pid']}): if that "
                         "process is not writing this journal, stop it or "
                         "use --force", "warning")
            self.run_report.outcome = "skipped_locked"
        else:
            self.problem(f"the run is still being written: its lock is "
                         f"held{who}", "info")
            self.run_report.outcome = "skipped_live"
        return False

    def _expected_name(self) -> str | None:
        base = os.path.basename(os.path.normpath(self.path))
        if parse_journal_name(base) is not None:
            return base[:-len(JOURNAL_SUFFIX)] + ".h5"
        return None

    def _marked_complete(self) -> bool:
        marker = publish.read_marker(self.path)
        if not marker or marker.get("outcome") != "already_complete" \
                or marker.get("fingerprint") != self.fingerprint:
            return False
        name = self._expected_name()
        # Only the journal's own results name: a marker pointing elsewhere
        # ("../../x.h5", another run's file) is not ours to trust.
        if name is None or marker.get("results_file") != name:
            return False
        target = os.path.join(os.path.dirname(self.path), name)
        if marker.get("results_stat") != _file_identity(target):
            # Not the file that was checked (replaced, rewritten, a link
            # planted): look at it again, from the start.
            return False
        self.run_report.outcome = "already_complete"
        self.run_report.output = target
        return True

    def _recover(self) -> None:
        rep = self.run_report
        name = self._expected_name()
        if name is not None and \
                tail_close_reason(self.path) == CLOSE_RESULTS_WRITTEN:
            beside = os.path.dirname(self.path)
            # Every dataset is read: the tail check is only a hint (a close
            # frame could sit inside the last record's value).
            with self._beside() as directory:
                existing = publish.inspect_existing(directory, name, rep.rid)
            if existing.kind == "complete":
                rep.output = os.path.join(beside, name)
                rep.outcome = "already_complete"
                self._mark("already_complete", name)
                return
            self.problem(f"the journal was closed after ARTIQ wrote its "
                         f"results file, but {name} is now "
                         f"{existing.detail or existing.kind}: rebuilding it "
                         "from the journal", "warning")
        result = self._replay()
        state = result.state
        failed = state.stage if state.stage in STAGES_WITHOUT_RESULTS \
            else state.close_reason if state.closed \
            and state.close_reason in STAGES_WITHOUT_RESULTS else None
        # A damaged journal may have lost the stages after its damage:
        # then what can be trusted is published, flagged.
        if failed is not None and not rep.data_lost:
            self.problem(f"{failed.replace('_failed', '')}() raised: ARTIQ "
                         "writes no results file for such a run, so none is "
                         f"made; its {result.last_seq} records stay in the "
                         "journal ('artiq-journal inspect')", "info")
            rep.outcome = "no_results_expected"
            return
        layout = layout_of_run(state.run_info)
        if layout is not None and not layout.results_file \
                and not rep.data_lost:
            self.problem("the experiment's storage policy wants no results "
                         "file (results_file=False): none is made; its "
                         f"{result.last_seq} records stay in the journal "
                         "('artiq-journal export' writes one on request)",
                         "info")
            rep.outcome = "no_results_expected"
            return
        name = self._file_name()
        if name is None:
            self.problem("cannot name the results file: the directory is "
                         "not named <rid>-<Class>.journal and the run-info "
                         "record was not recovered")
            rep.outcome = "failed"
            return
        target_dir = self._target_dir()
        rep.output = os.path.join(target_dir, name)
        if self.out_dir is not None:
            with self._beside() as beside:
                if self._existing(beside, name, state).kind == "complete":
                    rep.output = os.path.join(os.path.dirname(self.path),
                                              name)
                    rep.outcome = "already_complete"
                    return
        if self.dry_run:
            if os.path.isdir(target_dir):
                with self._open_target(target_dir) as directory:
                    if self._settled(self._existing(directory, name, state),
                                     name):
                        return
            rep.outcome = "dry_run"
            rep.would_be = "recovered_partial" if rep.data_lost \
                else "recovered"
            return
        if rep.rid is None:
            self.problem("rid unknown (no run info, directory not named "
                         "<rid>-<Class>.journal)")
            rep.outcome = "failed"
            return
        with self._open_target(target_dir, create=True) as directory:
            existing = self._existing(directory, name, state)
            if self._settled(existing, name):
                return
            self._write_and_publish(result, directory, name, existing)

    def _beside(self) -> publish.Directory:
        """The journal's own directory, opened from the tree's root without
        following a symlink on the way (a directory swapped for a link
        after discovery must not lead a write elsewhere)."""
        return publish.Directory.beneath(self.found.root,
                                         os.path.dirname(self.path))

    def _open_target(self, target_dir: str, *,
                     create: bool = False) -> publish.Directory:
        if self.out_dir is None:
            return self._beside()
        if create:
            publish.makedirs_durable(self.out_dir)
        return publish.Directory.beneath(self.out_dir, target_dir,
                                         create=create)

    def _existing(self, directory: publish.Directory, name: str,
                  state: Any) -> publish.ExistingFile:
        """What stands at ``name``; a complete-looking file counts as this
        run's only when the journal says ARTIQ wrote it, or when it holds
        every dataset the journal replays to (one planted beside a crashed
        run must not make its journal look done)."""
        existing = publish.inspect_existing(directory, name,
                                            self.run_report.rid)
        if existing.kind != "complete" or (
                state.closed and state.close_reason == CLOSE_RESULTS_WRITTEN):
            return existing
        why = publish.missing_from(directory, name, state.datasets.local,
                                   state.datasets.archive)
        if why is None:
            return existing
        return publish.ExistingFile("partial", "complete-looking file that "
                                    f"does not hold this run's data ({why})")

    def _settled(self, existing: publish.ExistingFile, name: str) -> bool:
        """Handle an existing file that needs nothing more; True if so."""
        rep = self.run_report
        if existing.kind == "complete":
            rep.outcome = "already_complete"
            self._mark("already_complete", name)
            return True
        if existing.kind == "recovered" and \
                existing.fingerprint == self.fingerprint:
            rep.outcome = "already_recovered"
            attrs = existing.attrs
            rep.last_seq = attrs.get("last_seq")
            rep.records_applied = attrs.get("records_applied", 0)
            rep.records_untrusted = attrs.get("records_untrusted", 0)
            rep.snapshot = attrs.get("snapshot") or None
            rep.snapshot_note = attrs.get("snapshot_reason", "")
            rep.stage = attrs.get("stage") or None
            rep.problems[:] = [p for p in rep.problems
                               if p.severity == "info"]
            rep.problems.extend(existing.problems)
            self._mark("already_recovered", name)
            return True
        if existing.kind != "missing":
            self.problem(f"{name}: existing {existing.detail}; it will be "
                         "kept aside, not overwritten", "warning"
                         if existing.kind == "special" else "info")
        return False

    def _replay(self) -> ReplayResult:
        rep = self.run_report
        result = replay(self.path, compact_floats=True, trail=True)
        state = result.state
        for d in result.diagnostics:
            # A warning stays one: unsynced_tail, a power-loss tear behind
            # which nothing was acknowledged (FORMAT.md 8.6).
            severity = d.severity if d.severity in ("info", "warning") \
                else "error"
            if d.kind == "snapshot" and severity == "error":
                # A bad checkpoint by itself loses nothing: replay falls back
                # on an older one (or none) and the records after it, and if
                # those were deleted the reader reports a sequence gap, which
                # is the error.  (A checkpoint.new cut by a crash during
                # rotation is the normal case.)
                severity = "warning"
            self.problem(d.message, severity, d.path, d.offset)
        partial = result.partial_point
        if partial is not None:
            self.problem(f"the journal ends inside a point (seq "
                         f"{partial['begin_seq']}..{partial['last_seq']}): "
                         f"its {len(partial['records'])} records are left "
                         "out of the datasets and kept aside in "
                         "artiq_journal/unfinished_point", "warning")
        if result.records_untrusted:
            self.problem(f"{result.records_untrusted} intact records after "
                         "the damage were left out: records before them are "
                         "missing, so their effect cannot be trusted")
        if state.closed and state.close_reason != CLOSE_RESULTS_WRITTEN:
            self.problem(f"the journal was closed without ARTIQ's results "
                         f"file ({state.close_reason or 'no reason'}): "
                         "recovering it", "info")
        info = state.run_info
        if info is None:
            self.problem("run-info record not recovered: expid, start time "
                         "and ARTIQ version are unknown", "warning")
        else:
            if rep.rid is not None and info["rid"] != rep.rid:
                self.problem(f"directory name says rid {rep.rid}, run info "
                             f"says {info['rid']}; using {rep.rid}",
                             "warning")
            else:
                rep.rid = info["rid"]
            if rep.class_name is None:
                rep.class_name = info["class_name"]
        rep.records_applied = result.records_applied
        rep.records_untrusted = result.records_untrusted
        rep.last_seq = state.last_seq
        rep.stage = state.stage if isinstance(state.stage, str) else None
        rep.snapshot = result.snapshot.name if result.snapshot else None
        rep.snapshot_note = result.snapshot_note
        self.result = result
        return result

    def _file_name(self) -> str | None:
        name = self._expected_name()
        if name is not None:
            # Beside the journal, as its name says: right even when the run
            # info was lost or the tree was moved.
            return name
        info = self.result.state.run_info if self.result is not None \
            else None
        if info is None:
            return None
        for name in (info.get("h5_name"),
                     "{:09}-{}.h5".format(info["rid"], info["class_name"])):
            # Journal content names a file: it must stay a plain name in
            # the journal's directory ("../x" must not escape it).
            if isinstance(name, str) and name.endswith(".h5") \
                    and not name.startswith(".") and "\0" not in name \
                    and os.path.basename(name) == name and "/" not in name \
                    and len(name.encode("utf-8", "surrogateescape")) < 256:
                return name
        return None

    def _target_dir(self) -> str:
        here = os.path.dirname(self.path)
        if self.out_dir is None:
            return here
        rel = os.path.relpath(here, self.found.root)
        if rel == os.curdir or rel.startswith(os.pardir):
            return self.out_dir
        return os.path.join(self.out_dir, rel)

    # -- writing --------------------------------------------------------------

    def _write_and_publish(self, result: ReplayResult,
                           directory: publish.Directory, name: str,
                           existing: publish.ExistingFile) -> None:
        rep = self.run_report
        info = RecoveryInfo(
            journal=self.path, rid=rep.rid, fingerprint=self.fingerprint,
            records_applied=result.records_applied,
            records_untrusted=result.records_untrusted,
            snapshot=rep.snapshot,
            snapshot_seq=result.snapshot.seq if result.snapshot else None,
            snapshot_note=result.snapshot_note,
            problems=list(rep.problems),
            unfinished_point=result.partial_point)
        try:
            # Point markers (LiveJournal.point) say exactly where a point
            # was cut; the records' pattern is the fallback without them.
            partial = None if result.partial_point is not None else \
                split_partial_point(self.path, result.state,
                                    result.trail)
        except Exception as exc:  # noqa: BLE001 - a refinement, not a need
            partial = None
            self.problem(f"cannot look for a scan point cut by the crash: "
                         f"{type(exc).__name__}: {exc}", "info")
        if partial is not None:
            info.partial_point = partial.values
            info.partial_point_missing = partial.missing
            self.problem(
                "the crash cut the last scan point: "
                f"{', '.join(partial.values)} appended, "
                f"{', '.join(partial.missing) or 'nothing'} not; those "
                "entries are kept aside in artiq_journal/partial_point so "
                "the datasets stay in step", "warning")
            info.problems = list(rep.problems)
        layout = layout_of_run(result.state.run_info)
        if self.trust and layout is not None and layout.policy.custom:
            layout, why = trusted_layout(layout, result.state.run_info,
                                         self.repository)
            if why is not None:
                self.problem(why, "warning")
                info.problems.append(rep.problems[-1])
        if self.lock is not None:
            directory.remove_stale_temps(name)
        fd, tmp = directory.create_temp(name, self.owner)
        try:
            with os.fdopen(fd, "w+b") as fobj:
                rep.problems += write_results_file(
                    fobj, result.state, info,
                    output_name=directory.join(name), layout=layout)
                fobj.flush()
                # Data durable before the name appears: a power loss must
                # not leave a named but empty results file.
                os.fsync(fobj.fileno())
            if existing.kind != "missing":
                rep.moved_aside = directory.join(directory.move_aside(name))
            try:
                directory.publish(tmp, name)
            except FileExistsError:
                if not self._lost_race(directory, name, tmp):
                    raise
                return
        finally:
            directory.unlink(tmp)
        rep.outcome = "recovered_partial" if rep.data_lost else "recovered"
        self._mark(rep.outcome, name)

    def _lost_race(self, directory: publish.Directory, name: str,
                   tmp: str) -> bool:
        """Another recovery (``--output``, no lock) published ``name``
        first: the same journal content means the same file -- done.
        Otherwise its file is kept aside and ours published."""
        now = publish.inspect_existing(directory, name, self.run_report.rid)
        if now.kind == "recovered" and now.fingerprint == self.fingerprint:
            self.run_report.outcome = "already_recovered"
            return True
        self.run_report.moved_aside = directory.join(
            directory.move_aside(name))
        directory.publish(tmp, name)
        rep = self.run_report
        rep.outcome = "recovered_partial" if rep.data_lost else "recovered"
        self._mark(rep.outcome, name)
        return True

    def _mark(self, outcome: str, name: str) -> None:
        """Write the done marker (results tree only, never in dry run or
        with ``output``).  After publishing, so a marker always points at
        an existing file.  A marker that cannot be written (disk full)
        loses nothing: the next recovery checks the results file again."""
        if not self.in_place:
            return
        marker = publish.read_marker(self.path)
        if marker and marker.get("fingerprint") == self.fingerprint \
                and marker.get("results_file") == name \
                and marker.get("results_stat") == _file_identity(
                    os.path.join(os.path.dirname(self.path), name)):
            return  # already says so: writing again would change nothing
        try:
            with publish.Directory.beneath(self.found.root,
                                           self.path) as journal_dir:
                publish.write_marker(journal_dir, {
                    "outcome": outcome, "results_file": name,
                    "results_stat": _file_identity(
                        os.path.join(os.path.dirname(self.path), name)),
                    "fingerprint": self.fingerprint,
                    "last_seq": self.run_report.last_seq,
                    "marked_at": _now()}, self.owner)
        except (OSError, JournalError) as exc:
            self.problem(f"results file in place, but the done marker "
                         f"cannot be written ({getattr(exc, 'strerror', None) or exc}); "
                         "a later artiq-recover checks the file again",
                         "warning", os.path.join(self.path,
                                                 publish.MARKER_NAME))
