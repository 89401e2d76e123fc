"""Which durability primitives this platform lacks, and what that costs.

ARTIQ labs also run masters on Windows.  The journal relies on POSIX
primitives; where one is missing the hooks must never break an experiment:
they warn once and either journal with a weaker, stated promise or stay off.

=====================  ===================================================
missing                consequence
=====================  ===================================================
``fcntl``              **stays off**: the writer lock (``fcntl.flock``) is
                       what tells a live journal from an orphaned one;
                       without it ``artiq-recover`` could take a running
                       run's journal for a crashed one.
``directory fsync``    degrades: no directory is fsynced (``os.O_DIRECTORY``
                       absent and a directory cannot be opened).  A crash
                       of the worker process still loses nothing; a power
                       loss may lose the newest directory entries (a new
                       journal or segment file), not only the newest
                       records.
``O_NOFOLLOW``         degrades: files are still created with
                       ``O_CREAT|O_EXCL`` (which refuses an existing path,
                       symlinks included), but the lock file is opened
                       without symlink protection.
=====================  ===================================================
"""

from __future__ import annotations

import logging
import os

from ..journal.fsio import FileOps

logger = logging.getLogger("artiq_journal")

__all__ = ["platform_support", "FATAL", "NoDirFsyncOps", "warn_degraded"]

FCNTL = "fcntl"
DIR_FSYNC = "directory fsync"
NOFOLLOW = "O_NOFOLLOW"
#: Missing primitives that switch journaling off.
FATAL = (FCNTL,)

_CONSEQUENCE = {
    DIR_FSYNC: "directories are not fsynced: a power loss may lose the "
               "newest journal or segment file entries",
    NOFOLLOW: "the lock file is opened without symlink protection",
}
_warned: set = set()


def _can_fsync_directory(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def platform_support(directory: str | None = None) -> list[str]:
    """The durability primitives missing here (empty on Linux/macOS):
    ``"fcntl"``, ``"directory fsync"``, ``"O_NOFOLLOW"``.

    Directory fsync is probed on ``directory`` (default the working
    directory) only when ``os.O_DIRECTORY`` is absent: where it exists,
    opening a directory works."""
    missing = []
    try:
        import fcntl  # noqa: F401 - only whether it exists
    except ImportError:
        missing.append(FCNTL)
    if not hasattr(os, "O_DIRECTORY") and \
            not _can_fsync_directory(directory or os.getcwd()):
        missing.append(DIR_FSYNC)
    if not hasattr(os, "O_NOFOLLOW"):
        missing.append(NOFOLLOW)
    return missing


def warn_degraded(missing: list[str]) -> None:
    """Log, once per process and primitive, the weaker promise of
    journaling without a non-fatal ``missing`` primitive."""
    for name in missing:
        if name in _CONSEQUENCE and name not in _warned:
            _warned.add(name)
            logger.warning("artiq-journal: this platform lacks %s; "
                           "journaling with a weaker promise: %s", name,
                           _CONSEQUENCE[name])


class NoDirFsyncOps(FileOps):
    """The default file operations, minus directory fsync (a platform that
    cannot open directories, see the module docstring)."""

    def fsync_dir(self, path: str) -> None:
        return None
