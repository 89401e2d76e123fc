"""Put recovered files in place without ever destroying data.

* :func:`publish_atomically`: a reader sees no file or the complete file,
  also after a power loss, and an existing file is never overwritten.
* :func:`move_aside`: an existing partial or unreadable results file is
  renamed to ``<name>.partial-<n>`` (the lowest ``n`` not taken; an older
  aside file is never overwritten), never deleted.
* :func:`inspect_existing`: tells ARTIQ's complete results file, a file an
  earlier recovery wrote, and a partial/unreadable file apart.
* The *done marker* ``<journal>/recovered`` (JSON, written atomically)
  records that a journal needs nothing more: which results file, and the
  journal fingerprint it was made from.  The journal directory itself is
  never renamed (a later run resuming from it refers to it by path) and
  none of its files are touched.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import h5py

from ..journal.fsio import fsync_path, missing_directories

from .hdf5_out import GROUP
from .report import Problem

MARKER_NAME = "recovered"
MARKER_FORMAT = 1
ASIDE_INFIX = ".partial-"
#: Root datasets ARTIQ writes after the two groups (``write_results``).
ARTIQ_ROOT_DATASETS = ("artiq_version", "rid", "start_time", "run_time",
                       "expid")
_TMP_SUFFIX = ".recover-tmp"


def fsync_dir(directory: str) -> None:
    """fsync a directory: renames and links in it are durable only then."""
    fsync_path(directory)


def fsync_file(path: str) -> None:
    fsync_path(path)


def makedirs_durable(directory: str) -> None:
    """``os.makedirs`` that also fsyncs the parent of every directory it
    creates (a new directory's name lives in its parent)."""
    for path in missing_directories(directory):
        os.makedirs(path, exist_ok=True)
        fsync_dir(os.path.dirname(path))


def temp_path_for(final_path: str) -> str:
    """A new, empty temporary file next to ``final_path`` (same directory,
    so the rename is atomic), named ``.<name>.<random>.recover-tmp``."""
    directory, name = os.path.split(final_path)
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=_TMP_SUFFIX,
                                dir=directory)
    os.close(fd)
    return path


def remove_stale_temp_files(final_path: str) -> list[str]:
    """Delete temporary files :func:`temp_path_for` made for ``final_path``
    in a recovery that was killed.  Only call this holding the journal's
    lock: the name is unique to the run, so any such file belongs to a dead
    recovery of this same journal (incomplete, or a duplicate of a file
    already published)."""
    directory, name = os.path.split(final_path)
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for other in names:
        if other.startswith(f".{name}.") and other.endswith(_TMP_SUFFIX):
            _unlink_if_exists(os.path.join(directory, other))
            removed.append(other)
    return removed


def _link_no_clobber(src: str, dst: str) -> None:
    """Give ``src``'s file the name ``dst`` too, failing with
    FileExistsError if ``dst`` exists.  A hard link is the portable atomic
    "rename unless the target exists"; filesystems without hard links fall
    back on check-then-rename (only racy against other writers of the same
    name, which the journal lock excludes)."""
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                             errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "file exists", dst)
    os.rename(src, dst)


def _unlink_if_exists(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def publish_atomically(tmp_path: str, final_path: str) -> None:
    """Make the complete file ``tmp_path`` appear as ``final_path``.

    Atomic and durable: the data is fsynced before the name appears (else a
    power loss could leave a named but empty file), the directory is fsynced
    after (else the new name itself could be lost).  Never overwrites:
    raises FileExistsError if ``final_path`` exists (the caller moves an old
    file aside first).  Both paths must be in the same directory.
    """
    fsync_file(tmp_path)
    _link_no_clobber(tmp_path, final_path)
    _unlink_if_exists(tmp_path)
    fsync_dir(os.path.dirname(os.path.abspath(final_path)))


def move_aside(path: str) -> str:
    """Rename ``path`` to ``<path>.partial-<n>`` with the lowest free ``n``;
    return the new path.  Durable (directory fsynced) before returning, so
    the name is free for the recovered file.  Never overwrites an older
    aside file and never deletes data: a crash leaves the file under its old
    name, its new name, or both."""
    n = 1
    while True:
        aside = f"{path}{ASIDE_INFIX}{n}"
        try:
            _link_no_clobber(path, aside)
            break
        except FileExistsError:
            n += 1
    if os.path.exists(path) and os.path.samefile(path, aside):
        os.unlink(path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return aside


@dataclass
class ExistingFile:
    """What is at a results file's path.

    ``kind``: ``missing``; ``complete`` (ARTIQ's own complete results file);
    ``recovered`` (written by a recovery; ``fingerprint`` is the journal
    content it was made from); ``partial`` (anything else: truncated,
    unreadable, incomplete or another run's -- ``detail`` says why).
    """

    kind: str
    detail: str = ""
    fingerprint: Any = None
    #: For ``recovered``: the ``artiq_journal`` attributes and problems.
    attrs: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def inspect_existing(path: str, rid: int | None) -> ExistingFile:
    """Classify the file at ``path`` (read-only)."""
    if not os.path.lexists(path):
        return ExistingFile("missing")
    try:
        # locking=False: HDF5's own file locking fails on some network
        # filesystems, and a complete file must not look unreadable.
        with h5py.File(path, "r", locking=False) as f:
            return _classify(f, rid)
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError..
        return ExistingFile("partial", f"cannot be read as HDF5: "
                            f"{type(exc).__name__}: {exc}")


def _read_dataset(name: str, obj: Any) -> None:
    if isinstance(obj, h5py.Dataset):
        obj[()]


def _classify(f: h5py.File, rid: int | None) -> ExistingFile:
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
    # Read every dataset: a file whose writer was killed before closing can
    # open and list every name yet hold unwritten data pages (h5py reports
    # "addr overflow" and the like only when the data is read).  Leaving
    # such a file as "complete" would lose the journaled data.
    f.visititems(_read_dataset)
    file_rid = int(f["rid"][()])
    f["expid"][()]
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
    """The done marker's content, or None (absent or unreadable)."""
    try:
        with open(os.path.join(journal_dir, MARKER_NAME), "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and \
        data.get("format") == MARKER_FORMAT else None


def write_marker(journal_dir: str, content: dict) -> None:
    """Atomically and durably (re)write the done marker."""
    path = os.path.join(journal_dir, MARKER_NAME)
    data = json.dumps({"format": MARKER_FORMAT, **content}, indent=1,
                      sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{MARKER_NAME}.", suffix=_TMP_SUFFIX,
                               dir=journal_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # Data durable before the rename makes it the marker.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_if_exists(tmp)
        raise
    fsync_dir(journal_dir)
