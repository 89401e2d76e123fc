"""Put recovered files in place without ever destroying data, and without
being redirected by what others planted in the tree.

Every operation here is relative to an opened directory (:class:`Directory`)
whose last path component is not a symlink, so a name swapped for a link
between our look and our write cannot send a root-run recovery elsewhere:

* :meth:`Directory.create_temp`: a new temporary file, created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` and written through the fd that created
  it (the caller hands the fd to h5py as a file object), mode from the
  umask, owned by the journal's owner when we run as root;
* :meth:`Directory.publish`: the complete, fsynced temporary file gets the
  final name by ``link`` (fails if the name exists: never overwrites), then
  the directory is fsynced;
* :meth:`Directory.move_aside`: whatever stands at a results file's name
  (a partial file, a symlink, a FIFO, a directory) is renamed to
  ``<name>.partial-<n>``, never deleted or followed;
* :func:`inspect_existing`: tells ARTIQ's complete results file, a file an
  earlier recovery wrote, and a partial, unreadable or special file apart --
  opening only regular files, never through a symlink, never blocking.
* The *done marker* ``<journal>/recovered`` (JSON, at most 1 MiB, written
  atomically) records that a journal needs nothing more: which results file
  (which must be the journal's own name), and the journal fingerprint it was
  made from.  The journal's own files are never touched.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

import h5py

from ..errors import NotRegularFile
from ..journal.fsio import fsync_path, missing_directories
from ..journal.safefile import (O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW,
                                create_exclusive, lstat_kind, open_directory,
                                open_regular, read_small, write_all)
from .hdf5_out import GROUP
from .report import Problem

MARKER_NAME = "recovered"
MARKER_FORMAT = 1
#: A done marker is a few hundred bytes; anything bigger is not ours.
MARKER_MAX_BYTES = 1 << 20
ASIDE_INFIX = ".partial-"
#: Root datasets ARTIQ writes after the two groups (``write_results``).
ARTIQ_ROOT_DATASETS = ("artiq_version", "rid", "start_time", "run_time",
                       "expid")
TMP_SUFFIX = ".recover-tmp"


def fsync_dir(directory: str) -> None:
    """fsync a directory: renames and links in it are durable only then."""
    fsync_path(directory)


def makedirs_durable(directory: str) -> None:
    """``os.makedirs`` that also fsyncs the parent of every directory it
    creates (a new directory's name lives in its parent)."""
    for path in missing_directories(directory):
        os.makedirs(path, exist_ok=True)
        fsync_dir(os.path.dirname(path))


def owner_of(path: str) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``path`` itself (not a link's target), or None."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_uid, st.st_gid


def _running_as_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


class Directory:
    """An opened directory; every name below is relative to its fd."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        self.fd = open_directory(path) if fd is None else fd

    @classmethod
    def beneath(cls, root: str, path: str, *,
                create: bool = False) -> "Directory":
        """Open ``path``, a directory at or below ``root``, one component
        at a time from ``root`` with ``O_NOFOLLOW``: no symlink below the
        root -- planted, or swapped in for a directory after we looked --
        can lead the open (and so every write through it) out of the tree.
        ``create``: make missing components (each parent fsynced).  Raises
        NotRegularFile for a symlink or non-directory on the way, ValueError
        for a ``path`` not below ``root``."""
        root, path = os.path.abspath(root), os.path.abspath(path)
        rel = os.path.relpath(path, root)
        if rel == os.curdir:
            parts: list = []
        elif rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise ValueError(f"{path} is not below {root}")
        else:
            parts = rel.split(os.sep)
        fd = os.open(root, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        try:
            for depth, part in enumerate(parts, 1):
                try:
                    child = os.open(part, os.O_RDONLY | O_DIRECTORY
                                    | O_NOFOLLOW | O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, dir_fd=fd)
                    # The new name lives in its parent: durable only then.
                    os.fsync(fd)
                    child = os.open(part, os.O_RDONLY | O_DIRECTORY
                                    | O_NOFOLLOW | O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.EMLINK,
                                     errno.ENOTDIR):
                        raise NotRegularFile(
                            "is a symbolic link or not a directory; not "
                            "followed",
                            path=os.path.join(root, *parts[:depth])
                        ) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "Directory":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def kind(self, name: str) -> str | None:
        """What stands at ``name`` (``None``: nothing), links not followed."""
        return lstat_kind(name, dir_fd=self.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)

    # -- writing -------------------------------------------------------------

    def create_temp(self, final_name: str,
                    owner: tuple[int, int] | None = None) -> tuple[int, str]:
        """A new empty file ``.<final_name>.<random>.recover-tmp``: its fd
        (read-write) and name.  As root, the file is given to ``owner``."""
        for _ in range(100):
            name = f".{final_name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
            try:
                fd = create_exclusive(name, dir_fd=self.fd, flags=os.O_RDWR)
            except FileExistsError:
                continue
            try:
                if owner is not None and _running_as_root():
                    os.fchown(fd, *owner)
            except BaseException:
                os.close(fd)
                self.unlink(name)
                raise
            return fd, name
        raise FileExistsError(errno.EEXIST, "no free temporary name",
                              self.join(final_name))

    def unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def _link_no_clobber(self, src: str, dst: str) -> None:
        """Give ``src`` (itself, even a symlink) the name ``dst`` too,
        failing with FileExistsError if ``dst`` exists.  A hard link is the
        atomic "rename unless the target exists"; where links are not
        possible (directories, some filesystems) check-then-rename, racy
        only against other writers of the same name, which the journal
        lock excludes."""
        try:
            os.link(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd,
                    follow_symlinks=False)
            return
        except FileExistsError:
            raise
        except (OSError, NotImplementedError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (
                    errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                    errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EISDIR):
                raise
        if self.kind(dst) is not None:
            raise FileExistsError(errno.EEXIST, "file exists", self.join(dst))
        os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def publish(self, tmp_name: str, final_name: str) -> None:
        """Make the complete, already fsynced ``tmp_name`` appear as
        ``final_name``; atomic, durable (directory fsynced), never
        overwrites (FileExistsError)."""
        self._link_no_clobber(tmp_name, final_name)
        self.unlink(tmp_name)
        # The new name itself is durable only once the directory is synced.
        self.fsync()

    def move_aside(self, name: str) -> str:
        """Rename whatever stands at ``name`` to ``<name>.partial-<n>``
        (lowest free ``n``); return the new name.  Durable before it
        returns; never overwrites an older aside file, never deletes data:
        a crash leaves it under its old name, its new name, or both."""
        n = 1
        while True:
            aside = f"{name}{ASIDE_INFIX}{n}"
            try:
                self._link_no_clobber(name, aside)
                break
            except FileExistsError:
                n += 1
        try:
            old = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            new = os.stat(aside, dir_fd=self.fd, follow_symlinks=False)
            if (old.st_dev, old.st_ino) == (new.st_dev, new.st_ino):
                os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass  # renamed (no hard link was possible)
        self.fsync()
        return aside

    def remove_stale_temps(self, final_name: str) -> list[str]:
        """Delete temporary files a killed recovery made for
        ``final_name``.  Call only holding the journal's lock: the name is
        unique to the run, so such a file belongs to a dead recovery of
        this journal (incomplete, or a duplicate of a published file)."""
        removed = []
        prefix = f".{final_name}."
        for entry in os.scandir(self.fd):
            if entry.name.startswith(prefix) and \
                    entry.name.endswith(TMP_SUFFIX) and \
                    entry.is_file(follow_symlinks=False):
                self.unlink(entry.name)
                removed.append(entry.name)
        return removed


@dataclass
class ExistingFile:
    """What is at a results file's path.

    ``kind``: ``missing``; ``complete`` (ARTIQ's own complete results file);
    ``recovered`` (written by a recovery; ``fingerprint`` is the journal
    content it was made from); ``special`` (a symlink, FIFO, device, socket
    or directory: never opened); ``partial`` (anything else: truncated,
    unreadable, incomplete or another run's -- ``detail`` says why).
    """

    kind: str
    detail: str = ""
    fingerprint: Any = None
    #: For ``recovered``: the ``artiq_journal`` attributes and problems.
    attrs: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def inspect_existing(directory: Directory, name: str, rid: int | None, *,
                     read_data: bool = True) -> ExistingFile:
    """Classify what stands at ``name`` in ``directory`` (read-only).

    ``read_data``: read every dataset (a file whose writer was killed can
    list every name yet hold unwritten pages); without it only the layout
    and the rid are checked (for a file the worker hook already verified).
    """
    kind = directory.kind(name)
    if kind is None:
        return ExistingFile("missing")
    if kind != "regular file":
        return ExistingFile("special", f"a {kind} stands at the results "
                            "file's name")
    try:
        fd = open_regular(name, dir_fd=directory.fd)
    except (OSError, NotRegularFile) as exc:
        return ExistingFile("partial", f"cannot be opened: "
                            f"{getattr(exc, 'strerror', None) or exc}")
    try:
        with os.fdopen(fd, "rb") as fobj:
            # locking=False: HDF5's own file locking fails on some network
            # filesystems, and a complete file must not look unreadable.
            with h5py.File(fobj, "r", locking=False) as f:
                return _classify(f, rid, read_data)
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError..
        return ExistingFile("partial", f"cannot be read as HDF5: "
                            f"{type(exc).__name__}: {exc}")


def _extent(value: Any) -> Any:
    """What a dataset's size must be for ``value``: the shape of an array,
    the length of a list, nothing to compare for anything else."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return tuple(shape)
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def missing_from(directory: Directory, name: str, local: dict,
                 archive: dict) -> str | None:
    """Why the regular file ``name`` does not hold the datasets a journal
    replays to (a dataset absent, or of another size), or None when it
    does.  A file with ARTIQ's layout and the right RID is not yet proof
    that it is *this* run's file: one planted beside a crashed run must
    not make its journal look done."""
    try:
        fd = open_regular(name, dir_fd=directory.fd)
        with os.fdopen(fd, "rb") as fobj, \
                h5py.File(fobj, "r", locking=False) as f:
            for group, values in (("datasets", local), ("archive", archive)):
                node = f.get(group)
                for key, value in values.items():
                    stored = node.get(key) if isinstance(node, h5py.Group) \
                        else None
                    if not isinstance(stored, h5py.Dataset):
                        return f"{group}/{key} is missing"
                    want = _extent(value)
                    if want is None:
                        continue
                    have = stored.shape if isinstance(want, tuple) else (
                        stored.shape[0] if stored.shape else None)
                    if have != want:
                        return (f"{group}/{key} has size {have}, the "
                                f"journal {want}")
    except Exception as exc:  # noqa: BLE001 - unreadable: not proof
        return f"cannot be read: {type(exc).__name__}: {exc}"
    return None


def inspect_path(path: str, rid: int | None, *,
                 read_data: bool = True) -> ExistingFile:
    """:func:`inspect_existing` for a path (its directory is opened
    without following a symlink at its last component)."""
    try:
        with Directory(os.path.dirname(os.path.abspath(path))) as directory:
            return inspect_existing(directory, os.path.basename(path), rid,
                                    read_data=read_data)
    except (OSError, NotRegularFile) as exc:
        return ExistingFile("missing" if isinstance(exc, FileNotFoundError)
                            else "partial", f"its directory cannot be "
                            f"opened: {getattr(exc, 'strerror', None) or exc}")


def _read_dataset(name: str, obj: Any) -> None:
    if isinstance(obj, h5py.Dataset):
        obj[()]


def _classify(f: h5py.File, rid: int | None, read_data: bool) -> ExistingFile:
    group = f.get(GROUP)
    if isinstance(group, h5py.Group) and group.attrs.get("recovered", False):
        return _recovered_file(group)
    missing = [name for name in ("datasets", "archive")
               if not isinstance(f.get(name), h5py.Group)]
    missing += [name for name in ARTIQ_ROOT_DATASETS
                if not isinstance(f.get(name), h5py.Dataset)]
    if missing:
        return ExistingFile("partial", "incomplete results file (missing "
                            + ", ".join(missing) + ")")
    if read_data:
        f.visititems(_read_dataset)
        f["expid"][()]
    file_rid = int(f["rid"][()])
    if rid is not None and file_rid != rid:
        return ExistingFile("partial", f"results file of rid {file_rid}, "
                            f"not {rid}")
    return ExistingFile("complete", "complete ARTIQ results file")


def _recovered_file(group: h5py.Group) -> ExistingFile:
    attrs = {}
    for name, value in group.attrs.items():
        attrs[name] = value.item() if hasattr(value, "item") else value
    try:
        fingerprint = json.loads(attrs.get("journal_fingerprint", ""))
    except (TypeError, ValueError):
        fingerprint = None
    problems = []
    if isinstance(group.get("problem_detail"), h5py.Dataset):
        for raw in group["problem_detail"][()]:
            try:
                file, offset, reason, severity = json.loads(raw)
            except (TypeError, ValueError):
                continue
            problems.append(Problem(file, offset, reason, severity))
    return ExistingFile("recovered", "written by artiq-recover", fingerprint,
                        attrs, problems)


def read_marker(journal_dir: str) -> dict | None:
    """The done marker's content, or None (absent, unreadable, not a
    regular file, larger than :data:`MARKER_MAX_BYTES`, not ours)."""
    try:
        data = json.loads(read_small(os.path.join(journal_dir, MARKER_NAME),
                                     MARKER_MAX_BYTES))
    except (OSError, ValueError, NotRegularFile, RecursionError):
        return None
    return data if isinstance(data, dict) and \
        data.get("format") == MARKER_FORMAT else None


def write_marker(journal_dir: "str | Directory", content: dict,
                 owner: tuple[int, int] | None = None) -> None:
    """Atomically and durably (re)write the done marker: a new file
    created exclusively (never through a symlink), written through its fd,
    fsynced, renamed over the marker's name (a rename replaces a symlink
    there, it never writes through it), directory fsynced."""
    data = json.dumps({"format": MARKER_FORMAT, **content}, indent=1,
                      sort_keys=True).encode()
    opened = journal_dir if isinstance(journal_dir, Directory) else None
    directory = opened or Directory(journal_dir)
    try:
        fd, tmp = directory.create_temp(MARKER_NAME, owner)
        try:
            try:
                write_all(fd, data)
                # Data durable before the rename makes it the marker.
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, MARKER_NAME, src_dir_fd=directory.fd,
                       dst_dir_fd=directory.fd)
        except BaseException:
            directory.unlink(tmp)
            raise
        directory.fsync()
    finally:
        if opened is None:
            directory.close()
