"""``artiq-journal gc``: delete journals whose results are safely elsewhere.

A journal is deleted only when every one of these holds, checked in this
order (the first that fails is the reason it is kept):

1. no live writer holds its lock (``running`` journals are kept);
2. nothing in it was written for ``older_than`` days (a recovered run may
   still be resumed from its journal: give people time);
3. either it ends in a clean close and ARTIQ's complete results file of the
   same rid is beside it, or ``artiq-recover`` marked it done (``recovered``
   marker) with outcome ``recovered``, ``already_recovered`` or
   ``already_complete``, the journal's files still match the marker's
   fingerprint, and the results file it names is complete (ARTIQ's) or is
   the recovered file made from this very journal content.  A
   ``recovered_partial`` journal is kept: it may hold records the results
   file could not trust;
4. a full read finds no error-level damage (damaged journals are kept for
   a human to look at).

Deletion follows the worker hooks' convention: under the journal's lock
(so no writer can open it meanwhile), rename ``X.journal`` to
``X.journal.deleted`` and fsync the parent (readers ignore that name, so an
interrupted deletion never looks like a damaged journal), then remove the
renamed tree without following symbolic links.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

from ..errors import JournalError, JournalLocked
from ..journal import lock as journal_lock
from ..journal.constants import JOURNAL_SUFFIX
from ..journal.liveness import probe_lock
from ..recovery import publish
from ..recovery.discover import (closed_cleanly, find_journals, fingerprint,
                                 parse_journal_name)
from ..recovery.report import Problem
from ..replay import replay

DELETED_SUFFIX = ".deleted"
_DONE_OUTCOMES = ("recovered", "already_recovered", "already_complete")


@dataclass
class GcRow:
    path: str
    #: ``deleted``, ``would_delete`` (dry run), ``kept`` or ``failed``.
    action: str
    reason: str
    results_file: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _last_write(path: str) -> float:
    newest = os.lstat(path).st_mtime
    with os.scandir(path) as it:
        for entry in it:
            try:
                newest = max(newest, entry.stat(follow_symlinks=False)
                             .st_mtime)
            except OSError:
                continue
    return newest


def _results_safe(path: str) -> tuple[bool, str, str | None]:
    """(results safely elsewhere?, why, results file)."""
    named = parse_journal_name(path)
    rid = named[0] if named else None
    directory = os.path.dirname(path)
    marker = publish.read_marker(path)
    if marker is not None:
        outcome = marker.get("outcome")
        expected = None if named is None else \
            os.path.basename(path)[:-len(JOURNAL_SUFFIX)] + ".h5"
        if marker.get("results_file") != expected:
            # Only the journal's own results name is trusted ("../x.h5"
            # or another run's file is not).
            return False, ("its recovered marker names another file "
                           f"({str(marker.get('results_file'))[:200]!r})"), \
                None
        target = os.path.join(directory, expected)
        if outcome not in _DONE_OUTCOMES:
            return False, (f"recovered with outcome {outcome}: the journal "
                           "may hold more than the results file"), target
        current = fingerprint(path)
        if marker.get("fingerprint") != current:
            return False, ("journal changed since it was recovered "
                           "(run artiq-recover again)"), target
        existing = publish.inspect_path(target, rid)
        if existing.kind == "complete":
            return True, "ARTIQ's complete results file exists " \
                         "(marked by artiq-recover)", target
        if existing.kind == "recovered" and existing.fingerprint == current:
            return True, "recovered results file made from this journal " \
                         "content exists", target
        return False, (f"results file {target} is {existing.kind}"
                       f"{': ' + existing.detail if existing.detail else ''}"
                       ), target
    if not closed_cleanly(path):
        return False, ("orphaned and not recovered (run artiq-recover "
                       "first)"), None
    if named is None:
        return False, "cannot tell its results file: not named " \
                      "<rid>-<Class>.journal", None
    target = os.path.join(directory,
                          os.path.basename(path)[:-len(JOURNAL_SUFFIX)]
                          + ".h5")
    existing = publish.inspect_path(target, rid)
    if existing.kind == "complete":
        return True, "closed cleanly; ARTIQ's complete results file " \
                     "exists", target
    return False, (f"closed cleanly but results file is {existing.kind}"
                   f"{': ' + existing.detail if existing.detail else ''}"), \
        target


def remove_tree_nofollow(path: str) -> None:
    """Remove a directory tree, never following a symbolic link (a link is
    removed itself, not what it points to)."""
    if shutil.rmtree.avoids_symlink_attacks:
        shutil.rmtree(path)
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            remove_tree_nofollow(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)


def delete_journal(path: str) -> None:
    """Rename to ``*.journal.deleted`` under the lock, fsync the parent,
    then remove it.  Raises JournalLocked if a writer holds it, OSError on
    I/O errors (the journal is then intact or already renamed)."""
    doomed = path + DELETED_SUFFIX
    if os.path.lexists(doomed):
        raise FileExistsError(f"{doomed} exists (an earlier deletion was "
                              "interrupted); remove it first")
    held = journal_lock.acquire(path)
    try:
        os.rename(path, doomed)
        # The rename must be durable before anything is removed: after a
        # crash the journal is either whole under its name or going away
        # under the ignored one.
        publish.fsync_dir(os.path.dirname(path))
    finally:
        held.release()
    remove_tree_nofollow(doomed)


def gc(roots: Iterable[str], *, older_than_days: float = 7.0,
       dry_run: bool = False, now: float | None = None,
       progress: Callable[[int, int], None] | None = None
       ) -> tuple[list[GcRow], list[Problem]]:
    """Prune safe journals under ``roots``; return one row per journal."""
    now = time.time() if now is None else now
    problems: list[Problem] = []
    found = find_journals([os.fspath(r) for r in roots], problems)
    rows = []
    for i, journal in enumerate(found):
        rows.append(_consider(journal.path, older_than_days, dry_run, now))
        if progress is not None:
            progress(i + 1, len(found))
    return rows, problems


def _consider(path: str, older_than_days: float, dry_run: bool,
              now: float) -> GcRow:
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return GcRow(path, "kept", "not a directory")
        if probe_lock(path).held:
            return GcRow(path, "kept", "running: a live writer holds it")
        age_days = (now - _last_write(path)) / 86400.0
        if age_days < older_than_days:
            return GcRow(path, "kept", f"last written {age_days:.2f} days "
                         f"ago (< --older-than {older_than_days:g})")
        safe, why, target = _results_safe(path)
        if not safe:
            return GcRow(path, "kept", why, target)
        result = replay(path)
        errors = [d for d in result.diagnostics if d.severity == "error"]
        if errors:
            return GcRow(path, "kept", f"damaged: {errors[0]}", target)
        if dry_run:
            return GcRow(path, "would_delete", why, target)
        delete_journal(path)
        return GcRow(path, "deleted", why, target)
    except JournalLocked:
        return GcRow(path, "kept", "running: a writer took the lock")
    except JournalError as exc:
        return GcRow(path, "failed", str(exc))
    except OSError as exc:
        return GcRow(path, "failed", f"{type(exc).__name__}: {exc}")
