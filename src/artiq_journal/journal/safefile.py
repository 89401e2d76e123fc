"""Opening and creating files so that a hostile tree cannot redirect us.

``artiq-recover`` is often run as root over directories other users can
write to, so every name we open may have been replaced by a symbolic link,
a FIFO or a device between our look and our open.  The rules (README,
"Security"):

* files we read are opened with ``O_NOFOLLOW | O_NONBLOCK`` and must be
  regular files (a FIFO would block us forever, a device would feed us
  endless bytes, a symlink could point anywhere);
* files we write are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``,
  relative to an opened directory where one is at hand, written through
  the fd that created them, fsynced, then renamed -- never reopened by name;
* modes come from the umask (``0o666`` is passed, as every ordinary
  program does); when we run as root, what we create is given to the owner
  of the directory it is in, so a recovered file belongs to the user whose
  run it is.

Platforms without ``O_NOFOLLOW`` (Windows) get the same calls without that
flag: see :data:`HAVE_NOFOLLOW`.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable

from ..errors import NotRegularFile

#: 0 where the platform has no such flag (then symlinks are followed: the
#: documented weaker promise on those platforms).
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_BINARY = getattr(os, "O_BINARY", 0)
HAVE_NOFOLLOW = O_NOFOLLOW != 0
#: Mode passed when creating files: the umask decides, as for ARTIQ's own.
CREATE_MODE = 0o666

_READ_FLAGS = os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_BINARY


def kind_of(mode: int) -> str:
    """A word for a file type, for messages."""
    for test, name in ((stat.S_ISREG, "regular file"),
                       (stat.S_ISDIR, "directory"),
                       (stat.S_ISLNK, "symbolic link"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def open_regular(path: str, *, dir_fd: int | None = None,
                 flags: int = 0) -> int:
    """Open an existing regular file for reading (or with ``flags``, e.g.
    ``os.O_RDWR``) without following a symlink and without blocking.

    Raises :class:`NotRegularFile` (naming the path and what is there) for a
    symlink, FIFO, device, socket or directory; ``OSError`` as ``os.open``
    does otherwise (FileNotFoundError, PermissionError, ...).  The fd is
    switched back to blocking mode.
    """
    mode = (_READ_FLAGS & ~os.O_RDONLY) | (flags or os.O_RDONLY)
    try:
        fd = os.open(path, mode, dir_fd=dir_fd)
    except OSError as exc:
        # Linux says ELOOP for O_NOFOLLOW on a link; BSDs say EMLINK.
        if exc.errno in (errno.ELOOP, errno.EMLINK) and HAVE_NOFOLLOW:
            raise NotRegularFile("is a symbolic link; not followed",
                                 path=path) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            # ENXIO: a socket, or a FIFO opened for writing with no reader.
            raise NotRegularFile(f"is not a regular file "
                                 f"({exc.strerror})", path=path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"is a {kind_of(st.st_mode)}, not a "
                                 "regular file; not read", path=path)
        if O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_file(path: str, mode: str = "rb", *,
                      buffering: int = -1):
    """:func:`open_regular` wrapped in a Python file object (read only)."""
    fd = open_regular(path)
    return os.fdopen(fd, mode, buffering=buffering)


def read_small(path: str, limit: int, *, dir_fd: int | None = None) -> bytes:
    """The content of a regular file of at most ``limit`` bytes; raises
    ValueError (naming the path) when it is larger."""
    fd = open_regular(path, dir_fd=dir_fd)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise ValueError(f"{path}: {size} bytes, more than the {limit} "
                             "allowed")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise ValueError(f"{path}: more than the {limit} bytes allowed")
        return data
    finally:
        os.close(fd)


def lstat_kind(path: str, *, dir_fd: int | None = None) -> str | None:
    """What is at ``path`` without following a link: ``None`` (nothing),
    ``"regular file"``, ``"symbolic link"``, ``"FIFO"``, ..."""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return kind_of(st.st_mode)


def open_directory(path: str) -> int:
    """An fd of the directory ``path``; its last component must not be a
    symlink (on platforms with O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise NotRegularFile("is not a directory", path=path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_exclusive(name: str, *, dir_fd: int | None = None,
                     mode: int = CREATE_MODE, flags: int = os.O_WRONLY) -> int:
    """Create a new file ``name`` (relative to ``dir_fd`` if given) that did
    not exist, never through a symlink; return its fd."""
    return os.open(name, flags | os.O_CREAT | os.O_EXCL | O_NOFOLLOW
                   | O_CLOEXEC | O_BINARY, mode, dir_fd=dir_fd)


def write_all(fd: int, data: Any, write: Callable[[int, Any], int] = os.write
              ) -> None:
    """Write all of ``data`` (resuming after short writes) with ``write``
    (``os.write``, or a FileOps' for the power-loss simulation)."""
    view = memoryview(data)
    while view:
        written = write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def give_to_directory_owner(fd: int, dir_fd: int) -> None:
    """When running as root, hand the new file ``fd`` to the owner (user
    and group) of the directory it was created in: a recovered results file
    belongs to the user whose run it is, not to root.  Does nothing for
    other users (they cannot, and their files are theirs)."""
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None or geteuid() != 0:
        return
    owner = os.fstat(dir_fd)
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
        os.fchown(fd, owner.st_uid, owner.st_gid)


def fsync_directory_fd(dir_fd: int) -> None:
    """fsync an opened directory: entries created, renamed or removed in it
    survive power loss only then."""
    os.fsync(dir_fd)


__all__ = ["open_regular", "open_regular_file", "read_small", "lstat_kind",
           "open_directory", "create_exclusive", "write_all",
           "give_to_directory_owner", "fsync_directory_fd", "kind_of",
           "HAVE_NOFOLLOW", "CREATE_MODE"]
