"""The file-system calls the journal makes, behind one replaceable object.

The writer and the snapshot code call only these, so a test can substitute a
recording or fault-injecting layer (power-loss simulation, EIO on fsync,
ENOSPC on write) without monkeypatching ``os`` for the whole process.  The
default instance binds the ``os`` functions directly: no wrapper cost on the
append path.
"""

from __future__ import annotations

import os


class FileOps:
    """Default file operations: the real ``os`` calls."""

    open = staticmethod(os.open)
    write = staticmethod(os.write)
    writev = staticmethod(os.writev)
    #: ``os.pwrite(fd, data, offset)``: write at an offset, the file
    #: position unchanged (the CRC of a record written before its CRC).
    pwrite = staticmethod(os.pwrite)
    fsync = staticmethod(os.fsync)
    fdatasync = staticmethod(getattr(os, "fdatasync", os.fsync))
    close = staticmethod(os.close)
    #: ``os.replace``: atomic rename that overwrites the target on POSIX.
    rename = staticmethod(os.replace)
    unlink = staticmethod(os.unlink)
    ftruncate = staticmethod(os.ftruncate)
    mkdir = staticmethod(os.mkdir)

    def fsync_dir(self, path: str) -> None:
        """fsync a directory so that entries created, renamed or removed in
        it survive power loss (POSIX gives no such promise otherwise)."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            self.fsync(fd)
        finally:
            os.close(fd)


#: The process-wide default; never mutate it, pass another instance instead.
OS_FILE_OPS = FileOps()


def missing_directories(path: str) -> list[str]:
    """``path`` and its ancestors that are not directories yet, outermost
    first: what to create one level at a time, fsyncing each parent (a new
    directory's name lives in its parent; ``os.makedirs`` syncs nothing)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing[::-1]


def fsync_path(path: str) -> None:
    """fsync a file or directory by path (a directory: so entries created,
    renamed or removed in it survive power loss)."""
    flags = os.O_RDONLY
    if os.path.isdir(path):
        flags |= getattr(os, "O_DIRECTORY", 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
