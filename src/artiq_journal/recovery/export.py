"""Export a run's journal -- live, orphaned or finished -- as an HDF5 file in
ARTIQ's layout, consistent as of one sequence number.

Guarantees:

* **Consistent**: the file holds exactly the state after records 1..N (N is
  the ``artiq_journal/last_seq`` attribute), rebuilt by :func:`replay` like
  a recovery.  A record being written while we read is a torn tail to the
  reader: the export is the state as of the last complete record.
* **Does not disturb the writer**: takes no lock, writes nothing into the
  journal directory (monitoring only reads; see ``journal/liveness.py``).
* **Atomic**: written to a temporary file created with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` in the destination's directory, *through
  that descriptor* (never reopened by name, so nobody can swap the file
  under us), fsynced, renamed over the destination, directory fsynced.  A
  reader of the destination sees the previous file or the new complete one,
  also after a power loss.

The ``artiq_journal`` group is the recovery layout with ``recovered`` False
and ``exported`` True, ``exported_at``, ``writer`` (``live``, ``orphaned``
or ``closed`` when the export was made).
"""

from __future__ import annotations

import datetime
import os
import secrets
from dataclasses import dataclass, field

import h5py

from ..journal.liveness import probe_lock
from ..replay import ReplayResult, replay
from .discover import fingerprint, parse_journal_name
from .hdf5_out import GROUP, LIBVER, RecoveryInfo, write_results_file
from .publish import fsync_dir
from .report import Problem

#: Attempts at a replay without damage while a live writer works (a segment
#: deleted by its snapshot rotation between listing and opening).
_LIVE_ATTEMPTS = 3
_TMP_SUFFIX = ".export-tmp"


@dataclass
class ExportResult:
    journal: str
    output: str
    rid: int | None
    class_name: str | None
    last_seq: int
    writer: str
    records_applied: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def data_lost(self) -> bool:
        return any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict:
        return {"journal": self.journal, "output": self.output,
                "rid": self.rid, "class_name": self.class_name,
                "last_seq": self.last_seq, "writer": self.writer,
                "records_applied": self.records_applied,
                "data_lost": self.data_lost,
                "problems": [str(p) for p in self.problems]}


def default_output_name(journal_dir: str, rid: int | None,
                        class_name: str | None) -> str:
    """``<rid:09>-<Class>.export.h5`` (from the directory name if the run
    info is unknown)."""
    if rid is not None and class_name:
        return f"{rid:09}-{class_name}.export.h5"
    base = os.path.basename(os.path.normpath(journal_dir))
    if base.endswith(".journal"):
        base = base[:-len(".journal")]
    return f"{base}.export.h5"


def _replay_consistent(journal_dir: str, live: bool) -> ReplayResult:
    result = replay(journal_dir)
    for _ in range(_LIVE_ATTEMPTS - 1):
        if not (live and result.damaged):
            break
        result = replay(journal_dir)
    return result


def _problems(result: ReplayResult) -> list[Problem]:
    problems = [Problem(d.path, d.offset, d.message,
                        "info" if d.severity == "info" else "error")
                for d in result.diagnostics]
    if result.records_untrusted:
        problems.append(Problem(result.path, None,
                                f"{result.records_untrusted} intact records "
                                "after the damage were left out"))
    return problems


def export_journal(journal_dir: str, output: str | None = None, *,
                   directory: str = ".") -> ExportResult:
    """Write the state of ``journal_dir`` to ``output`` (default:
    :func:`default_output_name` in ``directory``), atomically.  Overwrites
    an existing export (it is replaced whole by a rename).  Raises OSError
    if the file cannot be written (nothing is left behind then)."""
    journal_dir = os.path.abspath(journal_dir)
    live = probe_lock(journal_dir).held
    result = _replay_consistent(journal_dir, live)
    state = result.state
    named = parse_journal_name(journal_dir)
    rid, class_name = named if named else (None, None)
    if state.run_info is not None:
        rid, class_name = state.run_info["rid"], state.run_info["class_name"]
    if output is None:
        output = os.path.join(directory, default_output_name(
            journal_dir, rid, class_name))
    output = os.path.abspath(output)
    writer = "live" if live else ("closed" if result.clean_close
                                  else "orphaned")
    problems = _problems(result)
    info = RecoveryInfo(
        journal=journal_dir, rid=rid if rid is not None else -1,
        fingerprint=fingerprint(journal_dir) or [],
        records_applied=result.records_applied,
        records_untrusted=result.records_untrusted,
        snapshot=result.snapshot.name if result.snapshot else None,
        snapshot_seq=result.snapshot.seq if result.snapshot else None,
        snapshot_note=result.snapshot_note, problems=list(problems))
    problems += _write_atomically(output, result, info, writer)
    return ExportResult(journal_dir, output, rid, class_name,
                        state.last_seq, writer, result.records_applied,
                        problems)


def _write_atomically(output: str, result: ReplayResult, info: RecoveryInfo,
                      writer: str) -> list[Problem]:
    directory, name = os.path.split(output)
    tmp = os.path.join(directory,
                       f".{name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
    # O_EXCL|O_NOFOLLOW: a name planted in the directory (a symlink to
    # someone's file) makes this fail instead of writing through it.
    # O_RDWR, not O_WRONLY: HDF5 reads back what it wrote while writing.
    # Mode 0o666 & ~umask, like any file the user creates.
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_RDWR
                 | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "w+b") as f:
            # Through the descriptor: the file we created is the file we
            # write and publish, whatever happens to the name meanwhile.
            storage = write_results_file(f, result.state, info,
                                         output_name=output)
            f.flush()
            with h5py.File(f, "r+", libver=LIBVER) as h5:
                _mark_export(h5, writer)
            f.flush()
            # Data durable before the rename gives it the final name, else
            # a power loss could leave the name on an empty file.
            os.fsync(f.fileno())
        os.rename(tmp, output)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # The rename is durable only once the directory is.
    fsync_dir(directory)
    return storage


def _mark_export(h5: h5py.File, writer: str) -> None:
    attrs = h5[GROUP].attrs
    attrs["recovered"] = False
    attrs["exported"] = True
    attrs["exported_at"] = datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds")
    attrs["writer"] = writer
