"""Journal directory names, and what happens when the name is taken.

A run's journal is ``<rid:09d>-<Class>.journal`` beside ARTIQ's results file
``<rid:09d>-<Class>.h5``.  The name can already be taken by an earlier run
with the same RID and class in the same hour (a master restarted without
``last_rid.pyon``, two masters sharing a results tree, ARTIQ's own test
suite).  Refusing would fail the run in ``build()``; mixing would corrupt
both.  The rule (:func:`claim_journal_dir`):

* A leftover journal that no live process writes (its lock is free) is moved
  aside to ``<rid:09d>-<Class>.<n>.journal`` with the lowest ``n >= 1`` for
  which neither that name nor ``<rid:09d>-<Class>.<n>.h5`` exists, together
  with its results file ``<rid:09d>-<Class>.h5`` if there is one (which
  ARTIQ would otherwise overwrite at the end of the new run).  The new run
  then gets the canonical name, like its results file.
* Anything else in the way (a journal still being written by a live
  process, a file) is left alone, and the new run's journal gets the
  ``.<n>`` name instead.

Why ``.<n>``: readers look only at ``*.journal`` directories, and
``artiq-recover`` names a recovered file after the directory when the name
parses as ``^(\\d+)-(.+)\\.journal$``.  ``000000042-Scan.1.journal`` parses
to rid 42, "class" ``Scan.1``, so its recovered file is
``000000042-Scan.1.h5``: never the canonical file of the other run.  A
Python class name cannot contain a dot, so the suffix cannot be mistaken for
part of a class name.  The run-info record inside always holds the true
``rid``, ``class_name`` and ``h5_name``.
"""

from __future__ import annotations

import os

from ..journal.constants import JOURNAL_SUFFIX
from ..journal.fsio import fsync_path
from ..journal.lock import is_locked

__all__ = ["journal_dir_name", "results_file_name", "aside_stem",
           "claim_journal_dir"]

#: Give up looking for a free ``.<n>`` name after this many (a directory
#: with that many colliding runs is a configuration problem, not a race).
MAX_ASIDE = 10000


def journal_dir_name(rid: int, class_name: str) -> str:
    """``<rid:09d>-<ClassName>.journal``, beside ARTIQ's results file."""
    return "{:09}-{}{}".format(rid, class_name, JOURNAL_SUFFIX)


def results_file_name(rid: int, class_name: str) -> str:
    """ARTIQ's results file name: ``"{:09}-{}.h5".format(rid, class_name)``
    (the same in ARTIQ release-7, release-8 and master)."""
    return "{:09}-{}.h5".format(rid, class_name)


def aside_stem(rid: int, class_name: str, n: int) -> str:
    """``<rid:09d>-<Class>.<n>``: the stem of a journal (and results file)
    that could not have the canonical name."""
    return "{:09}-{}.{}".format(rid, class_name, n)


def _free_aside(results_dir: str, rid: int, class_name: str) -> str:
    for n in range(1, MAX_ASIDE):
        stem = os.path.join(results_dir, aside_stem(rid, class_name, n))
        if not any(os.path.lexists(stem + suffix) for suffix in
                   (JOURNAL_SUFFIX, ".h5", JOURNAL_SUFFIX + ".deleted")):
            return stem
    raise FileExistsError(f"{results_dir}: no free name for another journal "
                          f"of RID {rid} ({MAX_ASIDE} taken)")


def claim_journal_dir(results_dir: str, rid: int, class_name: str, *,
                      durable: bool = True) -> tuple[str, str | None]:
    """Create the new run's journal directory; return ``(path, moved)``.

    ``moved`` is where an earlier run's leftover journal was moved (see the
    module docstring), else None.  With ``durable``, the renames are fsynced
    (the directory entries of both runs must survive a power loss).  Raises
    OSError when the directory cannot be created (EACCES, ENOSPC, ...).
    """
    canonical = os.path.join(results_dir, journal_dir_name(rid, class_name))
    try:
        os.mkdir(canonical)
        return canonical, None
    except FileExistsError:
        pass
    moved = None
    if os.path.isdir(canonical) and not os.path.islink(canonical) and \
            not is_locked(canonical):
        stem = _free_aside(results_dir, rid, class_name)
        moved = stem + JOURNAL_SUFFIX
        # The older run keeps every byte: a rename, never a copy or a merge.
        os.rename(canonical, moved)
        h5 = os.path.join(results_dir, results_file_name(rid, class_name))
        if os.path.isfile(h5) and not os.path.islink(h5):
            os.rename(h5, stem + ".h5")
        if durable:
            # Both renames must be on the disk before the new run writes
            # under the old name, or a power loss could show the new journal
            # and lose the old one's entry.
            fsync_path(results_dir)
        try:
            os.mkdir(canonical)
            return canonical, moved
        except FileExistsError:
            pass  # someone else took it in between: fall through
    for _ in range(100):
        path = _free_aside(results_dir, rid, class_name) + JOURNAL_SUFFIX
        try:
            os.mkdir(path)
            return path, moved
        except FileExistsError:
            continue  # lost a race for that name; pick the next one
    raise FileExistsError(f"{canonical}: cannot find a free journal name")
