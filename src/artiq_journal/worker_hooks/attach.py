"""Journal every operation of a live ``DatasetManager``: :func:`attach`.

Works on ARTIQ's own ``artiq.master.worker_db.DatasetManager`` of release-7,
release-8 and master, and on the built-in runner's, without subclassing and
without touching ARTIQ: the *instance's* ``set``, ``mutate``, ``append_to``
and ``get`` are shadowed by instance attributes that call the original
method first and then append one record (payloads in docs/FORMAT.md,
"Record types").  Where the code lives:

* :mod:`.adapters` -- how ARTIQ generations differ; chosen here, once;
* :mod:`.hooks` -- the method wrappers;
* :mod:`.live` -- :class:`LiveJournal`: stages, checkpoints, snapshots,
  closing, and the one place that decides what a failure does (the run is
  never broken by the journal's own faults; a failing disk follows
  ``on_error``);
* :mod:`.naming` -- the journal's name, and what happens when it is taken;
* :mod:`.platform_support` -- missing durability primitives (Windows).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
from typing import Any

from ..errors import JournalError, JournalFailed
from ..journal import codec
from ..journal.constants import REC_RUN_INFO, REC_STAGE
from ..journal.fsio import OS_FILE_OPS, fsync_path
from ..journal.writer import JournalWriter
from . import config
from .adapters import EXPID_PYON_MAX, expid_pyon, select_adapter
from .hooks import HOOKED_METHODS
from .live import (DELETING_SUFFIX, LIVE_ATTR, SNAPSHOT_MIN_BYTES,
                   SNAPSHOT_MIN_TIMED_BYTES, LiveJournal, live_journal)
from .naming import claim_journal_dir, journal_dir_name, results_file_name
from .platform_support import (DIR_FSYNC, FATAL, NoDirFsyncOps,
                               platform_support, warn_degraded)
from .results_file import ARTIQ_RESULTS_KEYS

logger = logging.getLogger("artiq_journal")

__all__ = ["attach", "LiveJournal", "live_journal", "journal_dir_name",
           "results_file_name", "SNAPSHOT_MIN_BYTES", "HOOKED_METHODS",
           "LIVE_ATTR", "ARTIQ_RESULTS_KEYS", "DELETING_SUFFIX"]


def _bytes_appended(writer: JournalWriter) -> int:
    """Bytes appended so far by ``writer`` (the snapshot policy's clock)."""
    return writer.bytes_appended


def _fsync_dirs(path: str, levels: int) -> None:
    """fsync ``path`` and its ``levels - 1`` parents: the worker has just
    created results/<date>/<hour> without syncing, and a journal whose
    directory entry is lost is lost entirely."""
    for _ in range(levels):
        fsync_path(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent


def _encodable_expid(rid: int, expid: Any) -> Any:
    """``expid`` itself when the journal can encode it; otherwise a copy
    with each unencodable leaf replaced by its ``repr`` (the exact text is
    in run_info ``expid_pyon``)."""
    try:
        codec.pack(expid)
        return expid
    except TypeError:
        pass

    def clean(obj: Any) -> Any:
        try:
            codec.pack(obj)
            return obj
        except TypeError:
            pass
        if isinstance(obj, dict):
            return {clean(k) if not isinstance(k, str) else k: clean(v)
                    for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return repr(obj)

    logger.warning("artiq-journal: RID %d: expid holds values the journal "
                   "cannot encode; journaled with repr() stand-ins (exact "
                   "PYON in run_info.expid_pyon when sipyco is in use)", rid)
    return clean(expid)


def _pyon_fields(rid: int, expid: Any) -> dict:
    """The run_info keys ``expid_pyon`` (capped) and ``pyon_version``."""
    text, version = expid_pyon(expid)
    fields: dict[str, Any] = {}
    if version is not None:
        fields["pyon_version"] = version
    if text is not None:
        if len(text.encode("utf-8", "surrogatepass")) > EXPID_PYON_MAX:
            logger.warning("artiq-journal: RID %d: the expid's PYON text is "
                           "over %d bytes; not journaled (recovery encodes "
                           "the expid itself)", rid, EXPID_PYON_MAX)
        else:
            fields["expid_pyon"] = text
    return fields


#: Largest experiment file hashed at run start (a file bigger than this is
#: not an experiment; the run is journaled without the hash).
EXPERIMENT_HASH_MAX_BYTES = 16 << 20


def experiment_fingerprint(expid: Any, file: str | None = None) -> dict:
    """``experiment_file`` (absolute path) and ``experiment_sha256`` of the
    file the run executes, so that a resume can tell whether the code it
    is about to run is the code that made the checkpoint.  Empty when the
    file cannot be read as a regular file (ARTIQ with ``content`` in the
    expid, a repository file gone, ...).  Never raises."""
    import hashlib
    from ..journal.safefile import open_regular
    if file is None:
        # ARTIQ's worker resolves a repository file against the checkout
        # (``wd``); the caller passes that path when it knows it.
        file = expid.get("file") if isinstance(expid, dict) else None
    if not isinstance(file, str) or not file:
        return {}
    try:
        path = os.path.abspath(file)
        fd = open_regular(path)
        try:
            if os.fstat(fd).st_size > EXPERIMENT_HASH_MAX_BYTES:
                return {}
            digest = hashlib.sha256()
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
        finally:
            os.close(fd)
    except Exception:  # noqa: BLE001 - only a better resume check needs it
        return {}
    return {"experiment_file": path, "experiment_sha256": digest.hexdigest()}


def attach(dataset_mgr: Any, *, rid: int, expid: dict, class_name: str,
           results_dir: str | os.PathLike, fsync: str = "group",
           pipeline_name: str | None = "main", priority: int | None = 0,
           start_time: float | None = None,
           artiq_version: str | None = None, on_error: str | None = None,
           keep: bool | None = None, group_interval: float | None = None,
           snapshot_interval: float | None = None,
           stage: str | None = "build",
           storage_policy: dict | None = None,
           live_interval: Any = "env",
           experiment_file: str | None = None) -> LiveJournal:
    """Journal every later ``set``/``mutate``/``append_to``/``get(archive=
    True)`` on ``dataset_mgr``, into ``<results_dir>/<rid:09d>-<class_name>
    .journal``, and return the live journal.

    ``results_dir`` is the directory ARTIQ's ``.h5`` goes into.  Writes the
    ``run_info`` record (with ``start_time``, default now; ``artiq_version``,
    default ``artiq.__version__`` if ARTIQ is imported; ``artiq_adapter``;
    and, when sipyco is in use, ``expid_pyon`` and ``pyon_version``) and,
    unless ``stage`` is None, a ``stage`` record (at ``start_time``).
    ``fsync``: always|group|never (see :mod:`.config`), used as given --
    ``ARTIQ_JOURNAL_FSYNC`` is read by the automatic mode, which passes it
    here.  ``on_error``, ``keep``, ``group_interval`` (s) and
    ``snapshot_interval`` (s) default to the ``ARTIQ_JOURNAL_*``
    environment.

    ``storage_policy``: the experiment's storage policy as plain data
    (:meth:`~artiq_journal.storage_policy.StoragePolicy.to_data`), recorded
    as the run-info key ``storage_policy``.  ``live_interval``: seconds
    between refreshes of the live file ``<rid:09>-<Class>.partial.h5``
    (:mod:`.live_file`; None: none; default ``ARTIQ_JOURNAL_LIVE_S``); not
    started when the policy wants no results file.

    A leftover journal of an earlier run under the same name is moved aside
    (:mod:`.naming`); two runs never share a journal.  Raises, leaving the
    manager untouched: JournalFailed when the journal cannot be created
    (I/O); JournalError when the manager's shape is not a known ARTIQ
    generation or the platform cannot journal safely (no ``fcntl``);
    ValueError/TypeError for bad arguments or a manager already journaled.
    """
    env = config.from_env()
    on_error = env.on_error if on_error is None else on_error
    if on_error not in config.ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {config.ON_ERROR_CHOICES}"
                         f", not {on_error!r}")
    if fsync not in config.FSYNC_CHOICES:
        raise ValueError(f"fsync must be one of {config.FSYNC_CHOICES}, "
                         f"not {fsync!r}")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise TypeError(f"rid must be an int, not {type(rid).__name__}")
    if not isinstance(class_name, str) or not class_name or \
            os.sep in class_name or "/" in class_name or \
            class_name in (".", ".."):
        raise ValueError(f"bad experiment class name {class_name!r}")
    if live_journal(dataset_mgr) is not None:
        raise ValueError("this DatasetManager is already journaled")
    adapter = select_adapter(dataset_mgr)
    results_dir = os.path.abspath(os.fspath(results_dir))
    try:
        os.makedirs(results_dir, exist_ok=True)
    except OSError as exc:
        raise JournalFailed(f"cannot create the results directory: {exc}",
                            path=results_dir) from exc
    missing = platform_support(results_dir)
    fatal = [m for m in missing if m in FATAL]
    if fatal:
        raise JournalError(f"this platform lacks {', '.join(fatal)}, which "
                           "the journal's writer lock needs (it tells a live "
                           "journal from a crashed one); not journaling")
    warn_degraded(missing)
    dir_fsync = DIR_FSYNC not in missing
    if artiq_version is None and "artiq" in sys.modules:
        artiq_version = getattr(sys.modules["artiq"], "__version__", None)
    start = time.time() if start_time is None else float(start_time)
    run_info = {
        "rid": rid, "class_name": class_name,
        "expid": _encodable_expid(rid, expid),
        "pipeline_name": pipeline_name, "priority": priority,
        "start_time": start, "artiq_version": artiq_version,
        "results_dir": results_dir,
        "h5_name": results_file_name(rid, class_name),
        "host": socket.gethostname(), "pid": os.getpid(),
        "artiq_adapter": adapter.name,
    }
    run_info.update(_pyon_fields(rid, expid))
    run_info.update(experiment_fingerprint(expid, experiment_file))
    if storage_policy is not None:
        run_info["storage_policy"] = storage_policy
    durable = fsync != "never" and dir_fsync
    try:
        path, moved = claim_journal_dir(results_dir, rid, class_name,
                                        durable=durable)
    except OSError as exc:
        raise JournalFailed(f"cannot create journal directory: {exc}",
                            path=os.path.join(results_dir, journal_dir_name(
                                rid, class_name))) from exc
    writer = None
    try:
        if durable:
            _fsync_dirs(results_dir, 3)
        writer = JournalWriter(
            path, fsync=fsync,
            group_interval=(env.group_interval if group_interval is None
                            else group_interval),
            heartbeat_interval=env.heartbeat_interval,
            ops=OS_FILE_OPS if dir_fsync else NoDirFsyncOps())
        live = LiveJournal(
            dataset_mgr, writer, run_info, on_error=on_error,
            keep=env.keep if keep is None else bool(keep),
            snapshot_interval=(env.snapshot_interval
                               if snapshot_interval is None
                               else snapshot_interval),
            adapter=adapter, snapshot_min_bytes=SNAPSHOT_MIN_BYTES,
            snapshot_min_timed_bytes=SNAPSHOT_MIN_TIMED_BYTES,
            dir_fsync=dir_fsync)
        # Appended directly: a journal that cannot record even this fails
        # attach() itself, whatever on_error says.
        writer.append(REC_RUN_INFO, run_info)
        if stage is not None:
            writer.append(REC_STAGE, [stage, start])
            live._stage, live._stage_time = stage, start
        live._install()
    except BaseException as exc:
        if writer is not None:
            writer.abandon()
        shutil.rmtree(path, ignore_errors=True)
        if isinstance(exc, OSError):
            raise JournalFailed(f"cannot start journal: {exc}",
                                path=path) from exc
        raise
    interval = env.live_interval if live_interval == "env" else live_interval
    if interval and (storage_policy or {}).get("results_file") is not False:
        from .live_file import start
        live.live_file = start(path, results_dir, rid, class_name, interval)
    if moved is not None:
        logger.warning("artiq-journal: RID %d: a journal of an earlier run "
                       "with the same RID and class was in the way; moved it "
                       "(with its results file, if any) to %s -- its data "
                       "stays recoverable there", rid, moved)
    elif os.path.basename(path) != journal_dir_name(rid, class_name):
        logger.warning("artiq-journal: RID %d: %s is taken (by a live run or "
                       "not a journal); journaling to %s", rid,
                       journal_dir_name(rid, class_name), path)
    return live
