"""Persisted datasets a crashed master never saved, back into its dataset DB.

A run's ``set_dataset(..., persist=True)`` goes to the master, which keeps
it in memory and saves its dataset DB only every 30 s (``autosave_period``)
and at a clean exit.  A master SIGKILLed (or a host that lost power) in
between loses those values, though the run's journal has them: every
``set`` record carries ``persist``.  This module lists them
(:func:`persisted_datasets`) and writes the missing or different ones into
the DB file, in the format of the ARTIQ version that owns it
(:func:`sync_dataset_db`), with the master stopped.

The formats (``artiq/master/databases.py``, ``DatasetDB``):

==========  ====================  ===========================================
ARTIQ       file                  content
==========  ====================  ===========================================
release-7   ``dataset_db.pyon``   one PYON v1 dict ``{key: value}``; no
                                  metadata (it is dropped)
release-8   ``dataset_db.mdb``    LMDB (``subdir=False``): key UTF-8 ->
                                  PYON v1 text of ``(value, metadata)``
master (9)  ``dataset_db.mdb``    LMDB, same layout, PYON v2 text (decoded
                                  with a fall-back to v1)
==========  ====================  ===========================================

Which one a file is: an LMDB environment or PYON text, told from its first
bytes; for LMDB, the PYON version of the entries already there (an empty DB
gets v1, which every release reads; ``pyon_version`` forces one).

Guarantees of :func:`sync_dataset_db`: refuses (``DatasetDBInUse``) while a
process has the DB file open or a live ``artiq_master`` was started on it;
the PYON file is replaced atomically and durably (new file created with
``O_CREAT|O_EXCL|O_NOFOLLOW``, written and fsynced through that fd, renamed
over the old one, directory fsynced), the old content kept as
``<db>.before-persist-<n>``; an LMDB DB is changed in one write transaction
(LMDB commits atomically and, by default, durably), after a copy of it was
written to ``<db>.before-persist-<n>`` the same exclusive way.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterable

from .. import pyon, pyon_v1
from ..errors import JournalError
from ..journal.fsio import fsync_path
from ..runstate import RunState

__all__ = ["PersistedDataset", "DatasetDBInUse", "DatasetDBError",
           "persisted_datasets", "read_dataset_db", "compare",
           "sync_dataset_db", "processes_using"]

#: LMDB data files start with a meta page whose magic 0xBEEFC0DE sits at
#: offset 16 (little-endian on every platform ARTIQ runs on).
_LMDB_MAGIC = (0xBEEFC0DE).to_bytes(4, "little")


class DatasetDBError(JournalError):
    """The dataset DB cannot be read or written."""


class DatasetDBInUse(DatasetDBError):
    """A live process (an ARTIQ master) uses the dataset DB."""


@dataclasses.dataclass(frozen=True)
class PersistedDataset:
    key: str
    value: Any
    metadata: dict
    #: The journal it came from, and that run's RID.
    journal: str = ""
    rid: int | None = None


def persisted_datasets(state: RunState, journal: str = ""
                       ) -> list[PersistedDataset]:
    """The datasets ``state`` (a replayed journal) holds with
    ``persist=True`` at its end -- what the run last asked the master to
    persist -- as (key, value, metadata), in the order they were set.  A
    key set again later without ``persist`` is not listed (the master
    would have stopped persisting it too)."""
    rid = (state.run_info or {}).get("rid")
    return [PersistedDataset(key, value, dict(metadata), journal,
                             rid if isinstance(rid, int) else None)
            for key, (persist, value, metadata)
            in state.datasets.broadcast.items() if persist]


# -- reading the DB -----------------------------------------------------------


def _kind(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(64)
    if head[16:20] == _LMDB_MAGIC:
        return "lmdb"
    return "pyon"


def _lmdb():
    try:
        import lmdb  # optional: only LMDB dataset DBs (ARTIQ >= 8) need it
    except ImportError:
        raise DatasetDBError("this dataset DB is LMDB (ARTIQ >= 8): install "
                             "the 'lmdb' package (pip install lmdb)") from None
    return lmdb


def _decode_entry(text: str) -> tuple[Any, dict, int]:
    """``(value, metadata, pyon version)`` of one LMDB entry."""
    try:
        value, metadata = pyon.decode(text)
        version = 2
    except ValueError:
        value, metadata = pyon_v1.decode(text)
        version = 1
    return value, dict(metadata or {}), version


def read_dataset_db(path: str) -> tuple[str, dict[str, tuple[Any, dict]],
                                        int | None]:
    """``(kind, {key: (value, metadata)}, pyon version)`` of the dataset DB
    at ``path`` ("pyon" or "lmdb"; metadata is ``{}`` for PYON files; the
    version is the majority of the LMDB entries', None when empty).
    A missing file reads as an empty PYON DB when named ``*.pyon``, else
    an empty LMDB."""
    if not os.path.exists(path):
        return ("pyon" if path.endswith(".pyon") else "lmdb"), {}, None
    try:
        kind = _kind(path)
        if kind == "pyon":
            with open(path, encoding="utf-8") as f:
                text = f.read()
            data = pyon_v1.decode(text) if text.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("not a dict")
            return kind, {k: (v, {}) for k, v in data.items()}, 1
        lmdb = _lmdb()
        entries: dict[str, tuple[Any, dict]] = {}
        votes = {1: 0, 2: 0}
        env = lmdb.open(path, subdir=False, readonly=True, lock=False)
        try:
            with env.begin() as txn:
                for key, raw in txn.cursor():
                    value, metadata, version = _decode_entry(raw.decode())
                    entries[key.decode()] = (value, metadata)
                    votes[version] += 1
        finally:
            env.close()
        version = None if not entries else max(votes, key=votes.get)
        return kind, entries, version
    except DatasetDBError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetDBError(f"cannot read dataset DB: {exc}",
                             path=path) from exc
    except Exception as exc:  # lmdb.Error and friends
        raise DatasetDBError(f"cannot read dataset DB: "
                             f"{type(exc).__name__}: {exc}", path=path
                             ) from exc


def _same(a: Any, b: Any) -> bool:
    # The PYON v2 text is a canonical form that tells tuples from lists,
    # dtypes apart, and compares numpy arrays by content.
    try:
        return pyon.encode(a) == pyon.encode(b)
    except (TypeError, ValueError):
        try:
            return bool(a == b)
        except Exception:
            return False


def compare(datasets: Iterable[PersistedDataset],
            db: dict[str, tuple[Any, dict]], with_metadata: bool
            ) -> list[tuple[PersistedDataset, str]]:
    """Each dataset with its status against ``db``: "missing",
    "different" (value, or metadata when the format stores it) or
    "same".  When several journals persisted one key, the last given
    wins (callers pass them oldest first)."""
    latest: dict[str, PersistedDataset] = {}
    for dataset in datasets:
        latest.pop(dataset.key, None)
        latest[dataset.key] = dataset
    result = []
    for dataset in latest.values():
        if dataset.key not in db:
            status = "missing"
        else:
            value, metadata = db[dataset.key]
            same = _same(value, dataset.value) and (
                not with_metadata or _same(metadata, dataset.metadata))
            status = "same" if same else "different"
        result.append((dataset, status))
    return result


# -- who uses it ----------------------------------------------------------------

_DATASET_DB_ARG = re.compile(r"^--dataset-db(?:=(.*))?$")


def processes_using(path: str, proc: str = "/proc") -> list[tuple[int, str]]:
    """``(pid, why)`` of live processes using the DB at ``path``: those with
    it (or LMDB's ``-lock`` file) open, and ``artiq_master`` processes
    whose ``--dataset-db`` (default ``dataset_db.pyon``/``.mdb`` in their
    working directory) names it.  Linux ``/proc``; elsewhere nothing."""
    target = os.path.realpath(path)
    lock = target + "-lock"
    found = []
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return found
    for entry in entries:
        pid = int(entry)
        if pid == os.getpid():
            continue
        base = os.path.join(proc, entry)
        try:
            fds = os.listdir(os.path.join(base, "fd"))
        except OSError:
            fds = []
        why = None
        for fd in fds:
            try:
                opened = os.readlink(os.path.join(base, "fd", fd))
            except OSError:
                continue
            if opened in (target, lock):
                why = f"has {opened} open"
                break
        if why is None:
            why = _master_on(base, target)
        if why is not None:
            found.append((pid, why))
    return found


def _master_on(base: str, target: str) -> str | None:
    try:
        with open(os.path.join(base, "cmdline"), "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0")
                    if a]
        if not any("artiq_master" in a for a in argv[:4]):
            return None
        cwd = os.readlink(os.path.join(base, "cwd"))
    except OSError:
        return None
    names = []
    for i, arg in enumerate(argv):
        match = _DATASET_DB_ARG.match(arg)
        if match:
            names.append(match.group(1) if match.group(1) is not None
                         else (argv[i + 1] if i + 1 < len(argv) else ""))
    if not names:
        names = ["dataset_db.pyon", "dataset_db.mdb"]
    for name in names:
        if os.path.realpath(os.path.join(cwd, name)) == target:
            return f"is an artiq_master using it (cwd {cwd})"
    return None


# -- writing --------------------------------------------------------------------


def _exclusive_fd(path: str) -> int:
    # O_EXCL: never clobber a file; O_NOFOLLOW: never write through a
    # symlink someone planted under the name.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                   | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)


def _backup_name(path: str) -> str:
    n = 1
    while os.path.lexists(f"{path}.before-persist-{n}"):
        n += 1
    return f"{path}.before-persist-{n}"


def _pyon_v1_file_text(data: dict) -> str:
    # As sipyco's v1 store_file: pretty (one key per line, sorted) + "\n".
    if not data:
        return "{}\n"
    lines = [f"    {pyon_v1.encode(k)}: {pyon_v1.encode(v)}"
             for k, v in sorted(data.items())]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _replace_pyon(path: str, data: dict) -> str | None:
    directory = os.path.dirname(os.path.abspath(path))
    backup = None
    if os.path.exists(path):
        backup = _backup_name(path)
        os.link(path, backup)  # the old content stays, under a new name
    tmp = os.path.join(directory, f".{os.path.basename(path)}.new-"
                                  f"{os.getpid()}")
    fd = _exclusive_fd(tmp)
    try:
        _write_all(fd, _pyon_v1_file_text(data).encode())
        # fsync before the rename, or a crash could publish an empty file
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    # fsync the directory, or the rename may be lost on power failure
    fsync_path(directory)
    return backup


def _update_lmdb(path: str, writes: list[PersistedDataset],
                 version: int) -> str | None:
    lmdb = _lmdb()
    encode = pyon.encode if version == 2 else pyon_v1.encode
    existed = os.path.exists(path)
    env = lmdb.open(path, subdir=False, map_size=2 ** 30)
    backup = None
    try:
        if existed:
            backup = _backup_name(path)
            fd = _exclusive_fd(backup)
            try:
                env.copyfd(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
        # One transaction: all of them or none; LMDB syncs on commit.
        with env.begin(write=True) as txn:
            for dataset in writes:
                txn.put(dataset.key.encode(), encode(
                    (dataset.value, dataset.metadata)).encode())
    finally:
        env.close()
    return backup


@dataclasses.dataclass
class SyncResult:
    db: str
    kind: str
    pyon_version: int
    #: (dataset, "missing" | "different" | "same", DB value or None)
    datasets: list = dataclasses.field(default_factory=list)
    written: list = dataclasses.field(default_factory=list)
    backup: str | None = None
    #: Metadata the format cannot store (release-7's PYON file).
    metadata_dropped: bool = False


def sync_dataset_db(path: str, datasets: list[PersistedDataset], *,
                    dry_run: bool = False, pyon_version: int | None = None
                    ) -> SyncResult:
    """Write each of ``datasets`` that is missing from, or different in,
    the dataset DB at ``path`` (as persisted: ``(True, value, metadata)``
    once the master loads it).  Nothing is written with ``dry_run``, or
    when everything is already there.  Raises DatasetDBInUse when a live
    process uses the DB (stop the master first), DatasetDBError when it
    cannot be read or written.  See the module docstring for atomicity."""
    users = processes_using(path)
    if users:
        raise DatasetDBInUse(
            "dataset DB in use: " + "; ".join(
                f"pid {pid} {why}" for pid, why in users) +
            ": stop the master first (its own save would undo this)",
            path=path)
    kind, db, found_version = read_dataset_db(path)
    version = 1 if kind == "pyon" else (pyon_version or found_version or 1)
    result = SyncResult(os.path.abspath(path), kind, version)
    with_metadata = kind == "lmdb"
    for dataset, status in compare(datasets, db, with_metadata):
        result.datasets.append((dataset, status,
                                db.get(dataset.key, (None, {}))[0]))
    writes = [d for d, status, _ in result.datasets if status != "same"]
    result.metadata_dropped = kind == "pyon" and any(
        d.metadata for d in writes)
    if dry_run or not writes:
        return result
    try:
        if kind == "pyon":
            data = {k: v for k, (v, _) in db.items()}
            for dataset in writes:
                data[dataset.key] = dataset.value
            result.backup = _replace_pyon(path, data)
        else:
            result.backup = _update_lmdb(path, writes, version)
    except DatasetDBError:
        raise
    except (OSError, TypeError) as exc:
        raise DatasetDBError(f"cannot write dataset DB: {exc}",
                             path=path) from exc
    except Exception as exc:  # lmdb.Error
        raise DatasetDBError(f"cannot write dataset DB: "
                             f"{type(exc).__name__}: {exc}",
                             path=path) from exc
    result.written = writes
    return result
