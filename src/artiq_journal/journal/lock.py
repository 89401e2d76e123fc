"""The journal's writer lock: ``<journal>/lock``, held with ``flock``.

The lock is held for the whole life of a writer.  The kernel releases it when
the process dies however it dies (SIGKILL, segfault, OOM), so "lock free and
no clean close" is exactly "the writer is gone": the journal is orphaned.

Opened with ``O_NOFOLLOW | O_NONBLOCK`` and never truncated: a symlink
planted at ``lock`` is not followed (root's recovery would otherwise create
or lock any file), a FIFO does not block us, and anything but a regular file
is refused.  ``flock`` works on a read-only descriptor, so a user who may
read but not write the lock file (a tree shared by several users) still
learns whether a writer is alive.  When the lock is held, the kernel's lock
table (``/proc/locks`` on Linux) names the holder: pid, user, command.
"""

from __future__ import annotations

import errno
import os

from ..errors import (JournalFailed, JournalLocked, LockUnknown, NotAJournal,
                      NotRegularFile)
from .constants import LOCK_NAME
from .safefile import CREATE_MODE, O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK, \
    open_regular

_PROC_LOCKS = "/proc/locks"


def lock_path(journal_dir: str) -> str:
    return os.path.join(journal_dir, LOCK_NAME)


def _flock():
    # Imported when used: the module must import on platforms without it
    # (the worker hooks then stay off with a warning, see worker_hooks).
    import fcntl
    return fcntl


class JournalLock:
    """A held writer lock; :meth:`release` gives it back (idempotent)."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd: int | None = fd
        self.path = path

    @property
    def is_locked(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            _flock().flock(fd, _flock().LOCK_UN)
        finally:
            os.close(fd)


def _open_lock_file(path: str, create: bool) -> int:
    """An fd of the lock file: read-write if we may, else read-only."""
    if create:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW
                         | O_NONBLOCK | O_CLOEXEC, CREATE_MODE)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EMLINK, errno.ENXIO,
                                 errno.EISDIR):
                raise
        else:
            os.close(fd)  # only created here; checked and reopened below
    try:
        return open_regular(path, flags=os.O_RDWR)
    except PermissionError:
        # flock needs no write access: readers of a shared tree may still
        # probe the lock of a journal they cannot write.
        return open_regular(path)


def acquire(journal_dir: str) -> JournalLock:
    """Take the writer lock without waiting (creating the lock file).

    Raises JournalLocked if a live process holds it (``holder`` says who);
    NotAJournal if a non-file stands where the lock file belongs (a symlink
    is never followed); JournalFailed, naming the lock file, if it cannot be
    created or opened (EACCES, EROFS, ...).
    """
    path = lock_path(journal_dir)
    try:
        fd = _open_lock_file(path, create=True)
    except NotRegularFile as exc:
        raise NotAJournal(f"cannot take the writer lock: {exc.reason}",
                          path=path) from None
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise NotAJournal(f"cannot take the writer lock: "
                          f"{exc.strerror or exc}", path=path) from exc
    except OSError as exc:
        raise JournalFailed(f"cannot take the writer lock: "
                            f"{exc.strerror or exc}", path=path) from exc
    fcntl = _flock()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = holder_of(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            err = JournalLocked("journal is locked by a live process"
                                + describe_holder(holder),
                                path=journal_dir)
            err.holder = holder
            raise err from None
        raise JournalFailed(f"cannot take the writer lock: "
                            f"{exc.strerror or exc}", path=path) from exc
    return JournalLock(fd, path)


def probe(journal_dir: str) -> dict | None:
    """Who holds the lock right now: None when nobody does (or there is no
    lock file: a writer creates it before anything else), else a dict with
    ``pid``/``uid``/``user``/``command`` as far as the kernel tells.

    Raises LockUnknown (naming the lock file) when that cannot be told:
    the lock file cannot be opened even for reading, or is not a regular
    file.  Never creates or changes anything.
    """
    path = lock_path(journal_dir)
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        raise LockUnknown(f"cannot tell whether a writer is alive: "
                          f"{exc.reason}", path=path) from None
    except OSError as exc:
        owner = _owner_of(path)
        raise LockUnknown(f"cannot tell whether a writer is alive: cannot "
                          f"open the lock file ({exc.strerror or exc}; owned "
                          f"by {owner})", path=path) from None
    fcntl = _flock()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return holder_of(fd) or {}
            raise LockUnknown(f"cannot probe the lock: "
                              f"{exc.strerror or exc}", path=path) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_locked(journal_dir: str) -> bool:
    """True if a live writer holds the lock right now (or it cannot be
    told: then a writer must be assumed alive, never taken for dead)."""
    try:
        return probe(journal_dir) is not None
    except LockUnknown:
        return True


def _owner_of(path: str) -> str:
    try:
        uid = os.stat(path, follow_symlinks=False).st_uid
    except OSError:
        return "an unknown user"
    return f"{_user_name(uid)} (uid {uid})"


def _user_name(uid: int) -> str:
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def proc_lock_holders(dev: int, ino: int) -> list[int] | None:
    """pids holding an flock on the file ``(dev, ino)``, from the kernel's
    lock table (``/proc/locks``, Linux); None where that table is not
    available.  Reading it takes no lock: monitoring never disturbs a
    writer."""
    try:
        with open(_PROC_LOCKS, encoding="ascii", errors="replace") as f:
            lines = f.read(1 << 22).splitlines()
    except OSError:
        return None
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:123456 0 EOF"; a waiting
        # lock is shown as "1: -> FLOCK ..." and is not a holder.
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[5] != want:
            continue
        try:
            pids.append(int(fields[4]))
        except ValueError:
            continue
    return pids


def holder_of(fd: int) -> dict | None:
    """The process holding an flock on the file of ``fd`` (pid, user,
    command), or None when unknown."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    pids = proc_lock_holders(st.st_dev, st.st_ino)
    return describe_pid(pids[0]) if pids else None


def describe_pid(pid: int) -> dict:
    """pid, uid, user and command line of a process (what /proc tells)."""
    info: dict = {"pid": pid}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii",
                  errors="replace") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    info["uid"], info["user"] = uid, _user_name(uid)
                    break
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            info["command"] = f.read(4096).replace(b"\0", b" ").decode(
                "utf-8", "replace").strip()
    except (OSError, ValueError, IndexError):
        pass
    return info


def describe_holder(holder: dict | None) -> str:
    """`` (pid N, user U: command)`` or an empty string."""
    if not holder or "pid" not in holder:
        return ""
    text = f" (pid {holder['pid']}"
    if "user" in holder:
        text += f", user {holder['user']}"
    if holder.get("command"):
        text += f": {holder['command'][:200]}"
    return text + ")"
