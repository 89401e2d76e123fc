"""``recover()``: turn orphaned journals back into ARTIQ results files.

For each journal found under the given paths (see ``discover.py``):

0. No segment or checkpoint file at all -> ``skipped_clean`` without
   touching the lock: nothing was journaled, and a writer creating the
   journal right now takes its lock before it creates segment 1.
1. A done marker matching the journal's content and ARTIQ's complete file
   -> ``already_complete`` without opening anything else.
2. The writer lock is held by a live process -> ``skipped_live`` (unless
   ``force``).  Otherwise the lock is *taken* for the rest of the run (not
   with ``output``/``dry_run``, which must not touch the tree), so a writer
   or a second ``recover`` cannot work on the journal at the same time.
3. The journal ends in a clean close -> ``skipped_clean``.
4. The results file already there: ARTIQ's complete file ->
   ``already_complete`` (and mark the journal done); a file an earlier
   recovery made from this same journal content -> ``already_recovered``;
   anything else is moved aside later, never overwritten.
5. Replay (snapshot + trusted records, streaming, one pass), write the file
   to a temporary name, move an old file aside, publish atomically, write
   the done marker.

Idempotent: a second call finds step 1 or 4 true and writes nothing.
Never raises for a damaged journal or an I/O error on one run: that run is
``failed`` or ``recovered_partial`` with its problems, and the others go on.
"""

from __future__ import annotations

import datetime
import os
from typing import Callable, Iterable, Union

from ..errors import JournalLocked, RecoveryError
from ..journal import lock as journal_lock
from ..journal.constants import JOURNAL_SUFFIX
from ..replay import ReplayResult, replay
from . import publish
from .discover import (FoundJournal, closed_cleanly, find_journals,
                       fingerprint, parse_journal_name)
from .hdf5_out import RecoveryInfo, write_results_file
from .report import Problem, Report, RunReport

#: ``progress(done, total, run)`` after each journal.
ProgressCallback = Callable[[int, int, RunReport], None]
PathArg = Union[str, os.PathLike]


def recover(paths: PathArg | Iterable[PathArg], *,
            output: PathArg | None = None, dry_run: bool = False,
            force: bool = False,
            progress: ProgressCallback | None = None) -> Report:
    """Recover every orphaned journal at or below ``paths``.

    ``output``: write results files under this directory instead (same
    layout relative to each path; the results tree is only read).
    ``dry_run``: read and report only; nothing is written anywhere.
    ``force``: also recover journals whose writer is still alive.

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
            _Recovery(journal, run, out_dir, dry_run, force).run()
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


class _Recovery:
    """The steps of the module docstring for one journal."""

    def __init__(self, found: FoundJournal, run: RunReport,
                 out_dir: str | None, dry_run: bool, force: bool) -> None:
        self.found, self.run_report = found, run
        self.path = found.path
        self.out_dir, self.dry_run, self.force = out_dir, dry_run, force
        # Markers and moving files aside only in the results tree itself.
        self.in_place = out_dir is None and not dry_run
        self.fingerprint = fingerprint(self.path)
        self.result: ReplayResult | None = None
        #: The journal lock, when this recovery holds it.
        self.lock = None
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
        held = None
        if self.in_place:
            try:
                held = self.lock = journal_lock.acquire(self.path)
            except JournalLocked:
                if not self._live():
                    return
            except OSError:
                # Cannot create/lock on this medium: no writer can be alive
                # on it either (same reasoning as lock.is_locked).
                held = None
        elif journal_lock.is_locked(self.path) and not self._live():
            return
        try:
            self._recover()
        finally:
            if held is not None:
                held.release()

    def _live(self) -> bool:
        """A live writer holds the lock: skip, or go on with ``force``."""
        if not self.force:
            self.run_report.outcome = "skipped_live"
            return False
        self.problem("the journal's writer is still alive; recovered its "
                     "state so far (--force)", "warning")
        return True

    def _marked_complete(self) -> bool:
        marker = publish.read_marker(self.path)
        if not marker or marker.get("outcome") != "already_complete" \
                or marker.get("fingerprint") != self.fingerprint:
            return False
        target = os.path.join(os.path.dirname(self.path),
                              str(marker.get("results_file", "")))
        if not os.path.isfile(target):
            return False
        self.run_report.outcome = "already_complete"
        self.run_report.output = target
        return True

    def _recover(self) -> None:
        rep = self.run_report
        if closed_cleanly(self.path):
            rep.outcome = "skipped_clean"
            return
        result = None
        if self._file_name() is None:
            # The name comes from the run info inside the journal.
            result = self._replay()
        name = self._file_name()
        if name is None:
            self.problem("cannot name the results file: the directory is "
                         "not named <rid>-<Class>.journal and the run-info "
                         "record was not recovered")
            rep.outcome = "failed"
            return
        beside = os.path.join(os.path.dirname(self.path), name)
        target = self._target(name)
        rep.output = target
        if self.out_dir is not None and \
                publish.inspect_existing(beside, rep.rid).kind == "complete":
            rep.output, rep.outcome = beside, "already_complete"
            return
        existing = publish.inspect_existing(target, rep.rid)
        if self._settled(existing, target):
            return
        if result is None:
            result = self._replay()
        if result.clean_close and not rep.data_lost:
            rep.outcome = "skipped_clean"
            return
        if self.dry_run:
            rep.outcome = "dry_run"
            rep.would_be = "recovered_partial" if rep.data_lost \
                else "recovered"
            return
        self._write_and_publish(result, target, existing)

    def _settled(self, existing: publish.ExistingFile, target: str) -> bool:
        """Handle an existing file that needs nothing more; True if so."""
        rep = self.run_report
        if existing.kind == "complete":
            rep.outcome = "already_complete"
            self._mark("already_complete", target)
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
            rep.problems.extend(existing.problems)
            self._mark("already_recovered", target)
            return True
        if existing.kind != "missing":
            self.problem(f"{target}: existing file is not a complete "
                         f"results file ({existing.detail}); it will be "
                         "kept aside", "info")
        return False

    def _replay(self) -> ReplayResult:
        rep = self.run_report
        result = replay(self.path)
        state = result.state
        for d in result.diagnostics:
            severity = "info" if d.severity == "info" else "error"
            if d.kind == "snapshot" and severity == "error":
                # A bad checkpoint by itself loses nothing: replay falls back
                # on an older one (or none) and the records after it, and if
                # those were deleted the reader reports a sequence gap, which
                # is the error.  (A checkpoint.new cut by a crash during
                # rotation is the normal case.)
                severity = "warning"
            self.problem(d.message, severity, d.path, d.offset)
        if result.records_untrusted:
            self.problem(f"{result.records_untrusted} intact records after "
                         "the damage were left out: records before them are "
                         "missing, so their effect cannot be trusted")
        info = state.run_info
        if info is None:
            self.problem("run-info record not recovered: expid, start time "
                         "and ARTIQ version are unknown", "warning")
        else:
            if rep.rid is not None and info["rid"] != rep.rid:
                self.problem(f"directory name says rid {rep.rid}, run info "
                             f"says {info['rid']}; using {info['rid']}",
                             "warning")
            rep.rid, rep.class_name = info["rid"], info["class_name"]
        rep.records_applied = result.records_applied
        rep.records_untrusted = result.records_untrusted
        rep.last_seq = state.last_seq
        rep.stage = state.stage
        rep.snapshot = result.snapshot.name if result.snapshot else None
        rep.snapshot_note = result.snapshot_note
        self.result = result
        return result

    def _file_name(self) -> str | None:
        base = os.path.basename(os.path.normpath(self.path))
        if parse_journal_name(base) is not None:
            # Beside the journal, as its name says: right even when the run
            # info was lost or the tree was moved.
            return base[:-len(JOURNAL_SUFFIX)] + ".h5"
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
                    and os.path.basename(name) == name and "/" not in name:
                return name
        return None

    def _target(self, name: str) -> str:
        if self.out_dir is None:
            return os.path.join(os.path.dirname(self.path), name)
        rel = os.path.relpath(os.path.dirname(self.path), self.found.root)
        if rel == os.curdir or rel.startswith(os.pardir):
            return os.path.join(self.out_dir, name)
        return os.path.join(self.out_dir, rel, name)

    # -- writing --------------------------------------------------------------

    def _write_and_publish(self, result: ReplayResult, target: str,
                           existing: publish.ExistingFile) -> None:
        rep = self.run_report
        if rep.rid is None:
            self.problem("rid unknown (no run info, directory not named "
                         "<rid>-<Class>.journal)")
            rep.outcome = "failed"
            return
        publish.makedirs_durable(os.path.dirname(target))
        info = RecoveryInfo(
            journal=self.path, rid=rep.rid, fingerprint=self.fingerprint,
            records_applied=result.records_applied,
            records_untrusted=result.records_untrusted,
            snapshot=rep.snapshot,
            snapshot_seq=result.snapshot.seq if result.snapshot else None,
            snapshot_note=result.snapshot_note,
            problems=list(rep.problems))
        if self.lock is not None:
            publish.remove_stale_temp_files(target)
        tmp = publish.temp_path_for(target)
        try:
            rep.problems += write_results_file(tmp, result.state, info,
                                               output_name=target)
            if existing.kind != "missing":
                rep.moved_aside = publish.move_aside(target)
            publish.publish_atomically(tmp, target)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        rep.outcome = "recovered_partial" if rep.data_lost else "recovered"
        self._mark(rep.outcome, target)

    def _mark(self, outcome: str, target: str) -> None:
        """Write the done marker (results tree only, never in dry run or
        with ``output``).  After publishing, so a marker always points at
        an existing file."""
        if not self.in_place:
            return
        marker = publish.read_marker(self.path)
        if marker and marker.get("fingerprint") == self.fingerprint \
                and marker.get("results_file") == os.path.basename(target):
            return  # already says so: writing again would change nothing
        publish.write_marker(self.path, {
            "outcome": outcome, "results_file": os.path.basename(target),
            "fingerprint": self.fingerprint,
            "last_seq": self.run_report.last_seq, "marked_at": _now()})
