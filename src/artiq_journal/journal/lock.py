"""The journal's writer lock (``<journal>/lock``, an flock via filelock).

The lock is held for the whole life of a writer.  The kernel releases it when
the process dies however it dies (SIGKILL, segfault, OOM), so "lock free and
no clean-close record" is exactly "the writer is gone without closing": the
journal is orphaned.
"""

from __future__ import annotations

import os

import filelock

from ..errors import JournalFailed, JournalLocked, NotAJournal
from .constants import LOCK_NAME

# An flock-based lock on POSIX: the kernel drops it when the holder dies.  A
# "soft" (file-exists) lock would stay taken after SIGKILL and make every
# crashed run look alive, so never fall back to one.
_LockClass = getattr(filelock, "UnixFileLock", None) or filelock.FileLock


def lock_path(journal_dir: str) -> str:
    return os.path.join(journal_dir, LOCK_NAME)


def acquire(journal_dir: str) -> filelock.BaseFileLock:
    """Take the writer lock without waiting.

    Raises JournalLocked if a live process holds it; NotAJournal if something
    other than a file is where the lock file belongs; JournalFailed, naming
    the lock file, if it cannot be opened for writing (EACCES, EROFS, ...):
    then no writer could append here anyway.
    """
    path = lock_path(journal_dir)
    lock = _LockClass(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise JournalLocked("journal is locked by a live writer "
                            "(another process is still writing it)",
                            path=journal_dir) from None
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise NotAJournal(f"cannot take the writer lock: "
                          f"{exc.strerror or exc}", path=path) from exc
    except OSError as exc:
        raise JournalFailed(f"cannot take the writer lock: "
                            f"{exc.strerror or exc}", path=path) from exc
    return lock


def is_locked(journal_dir: str) -> bool:
    """True if a live writer holds the lock right now.

    Probing needs write access to the lock file; a journal on a read-only
    medium cannot have a live writer, so it is reported unlocked.
    """
    path = lock_path(journal_dir)
    if not os.path.exists(path):
        return False
    lock = _LockClass(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False
