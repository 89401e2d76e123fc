"""Crash-torture harness: real writer processes, an ack ledger, SIGKILL,
and a model of exactly what was acknowledged.

How one *kill point* works
--------------------------
1. The test process (everything already imported) ``os.fork()``s a child: a
   real process that runs a writer workload -- the journal writer directly,
   or an experiment-like loop through ``worker_hooks.attach`` -- and writes
   one fixed-size message per operation to a pipe *after* the call returned
   (the **ack ledger**: ``(op index, journal seq after the op)``).  The
   child never returns into pytest: its whole life is inside
   ``try: ... finally: os._exit()``.
2. The child is SIGKILLed according to a seeded :class:`KillPlan`: by the
   parent after the n-th ack, after a random delay, a random instant after
   the child announced a snapshot (``BEGIN``), or by the child itself (still
   a real ``SIGKILL``) right before the k-th *structural* file-system call
   of the writer (open/create, fsync, fdatasync, close, rename, unlink,
   truncate, mkdir, directory fsync, a snapshot or segment-header write: so
   every step of segment rotation, snapshot rotation and covered-segment
   deletion is a kill point), or in the middle of the k-th record write
   (a write torn by SIGKILL, which Linux allows for large writes).
3. The parent ``waitpid``s, drains the ledger, and checks the journal on
   disk against an independent model (:class:`Model`) fed with exactly the
   acknowledged operations, allowing only the single in-flight operation
   (called, not yet acknowledged) to be present or absent -- or, for an
   operation that writes several records, any prefix of them:

   * ``replay`` state == model, the sequence continues gap-free and is fully
     trusted, and every record on disk after the snapshot is byte-for-byte
     the record of the operation it claims to be (nothing never performed,
     no duplicates, in order);
   * ``artiq_journal.recovery.recover`` into a fresh output directory:
     outcome ``recovered`` with no data lost, and every ``datasets/<key>``
     (and ``archive/<key>``) of the HDF5 file equal to the model, with its
     metadata attributes;
   * resume: ``last_checkpoint_seq`` is the model's last checkpoint and
     ``worker_hooks.resume.load_checkpoint`` (= ``replay(upto_seq=...)``)
     rebuilds exactly the model's datasets and user state at that
     checkpoint.
4. The next child continues from what is on disk: the direct workload
   reopens the *same* journal (torn tail cut, sequence continues); the
   experiment starts a new run that resumes from the last checkpoint with
   the real ``load_checkpoint``/``restore_datasets`` helpers.  Kill, check,
   repeat: the checks hold across generations.

Any failure is a *violation* with everything needed to reproduce it (master
seed, chain seed, generation, kill plan, writer settings).  Timing makes
kill moments vary from run to run; the plan and workload are seeded.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import random
import select
import shutil
import signal
import struct
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import h5py
import numpy as np

from artiq_journal.journal import codec
from artiq_journal import pyon
from artiq_journal.journal.constants import (REC_APPEND, REC_ARCHIVE,
                                             REC_CHECKPOINT, REC_CLOSE,
                                             REC_MUTATE, REC_RESUMED_FROM,
                                             REC_RUN_INFO, REC_SET, REC_STAGE,
                                             RECORD_TYPE_NAMES)
from artiq_journal.journal.fsio import FileOps
from artiq_journal.journal.reader import JournalReader, Position
from artiq_journal.journal.snapshot import load_snapshot
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.errors import NoSnapshot
from artiq_journal.recovery import recover
from artiq_journal.replay import last_checkpoint_seq, replay
from artiq_journal.runner.datasets import DatasetDB, DatasetManager
from artiq_journal.runstate import RunState
from artiq_journal.worker_hooks.attach import attach
# The module itself (the package exports the *function* ``attach`` under the
# same name).
attach_module = sys.modules["artiq_journal.worker_hooks.attach"]
from artiq_journal.worker_hooks.resume import (RESUMED_FROM_DATASET,
                                               load_checkpoint,
                                               restore_datasets)

FSYNC_POLICIES = ("always", "group", "never")

# =============================================================================
# The ack ledger (child -> parent pipe)
# =============================================================================

#: kind u8, op index (or text length) u32, seq u64.  13 bytes: every message
#: is one write() far below PIPE_BUF, so a kill never tears one.
MSG = struct.Struct("<BIQ")
OPENED, ACK, BEGIN, DONE, ERROR, KILLING = 1, 2, 3, 4, 5, 6
_TEXT_KINDS = (ERROR, KILLING)
_MAX_TEXT = 3000


class Ledger:
    """The child's end of the pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _send(self, kind: int, index: int, seq: int) -> None:
        os.write(self.fd, MSG.pack(kind, index, seq))

    def opened(self, seq: int) -> None:
        """The writer opened the journal and continues after ``seq``."""
        self._send(OPENED, 0, seq)

    def ack(self, index: int, seq: int) -> None:
        """Operation ``index`` returned; the journal's last seq is ``seq``."""
        self._send(ACK, index, seq)

    def begin(self, index: int) -> None:
        """Operation ``index`` is about to write a snapshot (a kill target)."""
        self._send(BEGIN, index, 0)

    def done(self, structural_ops: int) -> None:
        """Every operation of this generation was acknowledged."""
        self._send(DONE, 0, structural_ops)

    def text(self, kind: int, text: str) -> None:
        data = text.encode("utf-8", "replace")[-_MAX_TEXT:]
        os.write(self.fd, MSG.pack(kind, len(data), 0) + data)


# =============================================================================
# Kill plans and the fork server
# =============================================================================

@dataclass
class KillPlan:
    """When the child dies.

    ``acks``: the parent kills as soon as it has read ``n`` acks.
    ``delay``: the parent kills ``delay`` seconds after the fork.
    ``begin``: the parent kills ``delay`` seconds after the ``n``-th BEGIN
    (a snapshot about to be written).
    ``fsop``: the child SIGKILLs itself right before its ``n``-th structural
    file-system call.
    ``torn``: the child writes only the first ``fraction`` of its ``n``-th
    record write, then SIGKILLs itself (a write torn by the kill).
    In every mode the parent kills at once when the child reports DONE.
    """

    mode: str
    n: int = 0
    delay: float = 0.0
    fraction: float = 0.5

    def __str__(self) -> str:
        if self.mode == "acks":
            return f"kill after ack #{self.n}"
        if self.mode == "delay":
            return f"kill {self.delay * 1e3:.2f} ms after fork"
        if self.mode == "begin":
            return f"kill {self.delay * 1e3:.2f} ms after snapshot #{self.n}"
        if self.mode == "fsop":
            return f"self-SIGKILL before structural fs call #{self.n}"
        return (f"self-SIGKILL in record write #{self.n} after "
                f"{self.fraction:.2f} of it")


@dataclass
class ChildOutcome:
    """What the parent learned about one child."""

    plan: KillPlan
    acks: list[tuple[int, int]] = field(default_factory=list)
    opened: int | None = None
    begins: int = 0
    done: bool = False
    structural_ops: int | None = None
    error: str | None = None
    killing: str | None = None
    #: "sigkill" (died of SIGKILL), or a description of anything else.
    death: str = ""
    elapsed: float = 0.0

    @property
    def killed(self) -> bool:
        return self.death == "sigkill"


def run_child(child_main: Callable[[Ledger], None], plan: KillPlan, *,
              hang_timeout: float = 30.0) -> ChildOutcome:
    """Fork a child running ``child_main(ledger)``, kill it as ``plan``
    says, reap it and return what its ledger said.

    ``child_main`` returning means every operation was acknowledged: the
    child reports DONE and idles until killed.
    """
    rfd, wfd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # ------------------------------------------------ child
        status = 70
        try:
            os.close(rfd)
            ledger = Ledger(wfd)
            try:
                child_main(ledger)
                ledger.done(_STRUCTURAL_COUNT[0])
                while True:       # idle writer (group-commit thread runs)
                    time.sleep(60)
            except BaseException:  # noqa: BLE001 - reported to the parent
                ledger.text(ERROR, traceback.format_exc())
                status = 3
        finally:
            # Never return into pytest (no teardown, no atexit, no flush of
            # the parent's buffers).
            os._exit(status)
    # --------------------------------------------------------------- parent
    os.close(wfd)
    out = ChildOutcome(plan)
    buf = bytearray()
    kill_at = start + plan.delay if plan.mode == "delay" else None
    sent_kill = False
    eof = False

    def parse() -> None:
        nonlocal buf
        pos = 0
        while len(buf) - pos >= MSG.size:
            kind, index, seq = MSG.unpack_from(buf, pos)
            if kind in _TEXT_KINDS:
                if len(buf) - pos < MSG.size + index:
                    break
                text = bytes(buf[pos + MSG.size:pos + MSG.size + index]
                             ).decode("utf-8", "replace")
                pos += MSG.size + index
                if kind == ERROR:
                    out.error = text
                else:
                    out.killing = text
                continue
            pos += MSG.size
            if kind == ACK:
                out.acks.append((index, seq))
            elif kind == OPENED:
                out.opened = seq
            elif kind == BEGIN:
                out.begins += 1
            elif kind == DONE:
                out.done = True
                out.structural_ops = seq
        del buf[:pos]

    def kill() -> None:
        nonlocal sent_kill
        if not sent_kill:
            sent_kill = True
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    try:
        while not sent_kill and not eof:
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                kill()
                break
            if now - start > hang_timeout:
                out.error = (out.error or "") + \
                    f"\nchild still running after {hang_timeout} s: killed"
                kill()
                break
            timeout = 0.05 if kill_at is None else max(0.0, kill_at - now)
            ready, _, _ = select.select([rfd], [], [], min(timeout, 0.05))
            if not ready:
                continue
            data = os.read(rfd, 1 << 16)
            if not data:
                eof = True
                break
            buf += data
            parse()
            if out.done or out.error:
                kill()
            elif plan.mode == "acks" and len(out.acks) >= plan.n:
                kill()
            elif plan.mode == "begin" and out.begins >= plan.n \
                    and kill_at is None:
                kill_at = time.monotonic() + plan.delay
                if plan.delay <= 0:
                    kill()
        kill()
    finally:
        _, status = os.waitpid(pid, 0)
        # Everything the child wrote before it died is still in the pipe.
        while True:
            data = os.read(rfd, 1 << 16)
            if not data:
                break
            buf += data
        os.close(rfd)
        parse()
    out.elapsed = time.monotonic() - start
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        out.death = "sigkill"
    elif os.WIFSIGNALED(status):
        out.death = f"signal {os.WTERMSIG(status)}"
    else:
        out.death = f"exit status {os.WEXITSTATUS(status)}"
    return out


# =============================================================================
# Kill switch in the writer's file layer (child only)
# =============================================================================

#: Structural file-system calls made so far in this (child) process.
_STRUCTURAL_COUNT = [0]


class KillSwitchOps(FileOps):
    """The writer's file operations, with a SIGKILL switch.

    Counts *structural* calls (everything but record appends) and kills the
    process with SIGKILL right before call number ``kill_before``; or tears
    record write number ``tear_write`` (writes its first ``fraction``, then
    SIGKILL).  Before dying it tells the parent which call it was.
    """

    def __init__(self, ledger: Ledger, *, kill_before: int = 0,
                 tear_write: int = 0, fraction: float = 0.5,
                 policy: str = "group", fault: str | None = None) -> None:
        self.ledger = ledger
        #: A deliberate writer bug, to prove the checks catch it:
        #: "buffer" keeps record writes in user space and hands them to the
        #: kernel every 8th (acknowledged before they are in the kernel);
        #: "duplicate" writes every 5th record twice.
        self.fault = fault
        self.held: list[tuple[int, bytes]] = []
        #: What the workload is doing ("open", "append", "snapshot"): set by
        #: the child, part of each kill point's label.
        self.phase = "open"
        self.policy = policy
        #: The last call was a record write (so an fdatasync now, under
        #: fsync="always", is the append's own sync).
        self.after_record_write = False
        self.kill_before = kill_before
        self.tear_write = tear_write
        self.fraction = fraction
        self.record_writes = 0
        self.names: dict[int, str] = {}
        #: fds of just-created segments: their next write is the header.
        self.fresh: set[int] = set()
        self.mutex = threading.Lock()

    # -- the switch -------------------------------------------------------------

    def _die(self, label: str) -> None:
        self.ledger.text(KILLING, label)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)

    def _step(self, label: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            # The group-commit thread's syncs come at timer-driven moments:
            # counting them would make kill points irreproducible (random
            # delays kill there anyway).
            return
        if self.after_record_write and self.policy == "always" \
                and label == "fdatasync segment":
            # fsync="always": each append's own sync.  Killing there is
            # "written, not acknowledged", which ack-count kills reach.
            self.after_record_write = False
            return
        self.after_record_write = False
        with self.mutex:
            _STRUCTURAL_COUNT[0] += 1
            n = _STRUCTURAL_COUNT[0]
        if n == self.kill_before:
            self._die(f"{self.phase}: {label}")

    def _name(self, fd: int) -> str:
        return self.names.get(fd, f"fd {fd}")

    # -- FileOps --------------------------------------------------------------------

    def open(self, path, flags, mode=0o777):
        name = os.path.basename(path)
        create = " (create)" if flags & os.O_CREAT else ""
        self._step(f"open {_kind(name)}{create}")
        fd = os.open(path, flags, mode)
        self.names[fd] = name
        if flags & os.O_CREAT and name.startswith("segment-"):
            self.fresh.add(fd)
        return fd

    def write(self, fd, data):
        name = self._name(fd)
        if fd in self.fresh or not name.startswith("segment-"):
            self.fresh.discard(fd)
            self._step(f"write {_kind(name)}"
                       + (" header" if name.startswith("segment-") else ""))
            return os.write(fd, data)
        self.record_writes += 1
        self.after_record_write = True
        if self.record_writes == self.tear_write:
            data = bytes(data)
            os.write(fd, data[:max(1, int(len(data) * self.fraction))])
            self._die(f"torn record write ({len(data)} bytes)")
        if self.fault == "buffer":
            self.held.append((fd, bytes(data)))
            if len(self.held) >= 8:
                for held_fd, held in self.held:
                    os.write(held_fd, held)
                self.held.clear()
            return len(data)
        if self.fault == "duplicate" and self.record_writes % 5 == 0:
            os.write(fd, data)
        return os.write(fd, data)

    def writev(self, fd, buffers):
        self.record_writes += 1
        self.after_record_write = True
        if self.record_writes == self.tear_write:
            data = b"".join(bytes(b) for b in buffers)
            os.write(fd, data[:max(1, int(len(data) * self.fraction))])
            self._die(f"torn large-record writev ({len(data)} bytes)")
        return os.writev(fd, buffers)

    def fsync(self, fd):
        self._step(f"fsync {_kind(self._name(fd))}")
        return os.fsync(fd)

    def fdatasync(self, fd):
        self._step(f"fdatasync {_kind(self._name(fd))}")
        return os.fdatasync(fd)

    def close(self, fd):
        self._step(f"close {_kind(self._name(fd))}")
        self.names.pop(fd, None)
        self.fresh.discard(fd)
        return os.close(fd)

    def rename(self, src, dst):
        self._step(f"rename {os.path.basename(src)} -> "
                   f"{os.path.basename(dst)}")
        return os.replace(src, dst)

    def unlink(self, path):
        self._step(f"unlink {_kind(os.path.basename(path))}")
        return os.unlink(path)

    def ftruncate(self, fd, length):
        self._step(f"ftruncate {_kind(self._name(fd))} (torn-tail cut)")
        return os.ftruncate(fd, length)

    def mkdir(self, path, mode=0o777):
        self._step("mkdir")
        return os.mkdir(path, mode)

    def fsync_dir(self, path):
        self._step("fsync directory")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _kind(name: str) -> str:
    return "segment" if name.startswith("segment-") else name


def make_ops(ledger: Ledger, plan: KillPlan, policy: str,
             fault: str | None = None) -> KillSwitchOps:
    """The file layer for a child under ``plan`` (counting in every mode,
    so the parent learns how many structural calls a generation makes)."""
    _STRUCTURAL_COUNT[0] = 0
    if plan.mode == "fsop":
        return KillSwitchOps(ledger, kill_before=plan.n, policy=policy,
                             fault=fault)
    if plan.mode == "torn":
        return KillSwitchOps(ledger, tear_write=plan.n,
                             fraction=plan.fraction, policy=policy,
                             fault=fault)
    return KillSwitchOps(ledger, policy=policy, fault=fault)


def kill_point_class(label: str | None) -> str:
    """Coverage class of a self-kill label ("<phase>: <call>")."""
    if not label:
        return "none"
    if "torn" in label:
        return "torn record write"
    phase, _, call = label.partition(": ")
    if phase == "snapshot":
        if call.startswith("unlink segment"):
            return "covered-segment deletion"
        if "checkpoint" in call or call == "fsync directory":
            return "snapshot rotation"
        return "snapshot: journal sync"
    if phase == "open":
        if call.startswith("ftruncate"):
            return "reopen: torn-tail cut"
        return "open/reopen"
    return "segment create/rotate"


# =============================================================================
# Values: exact comparison
# =============================================================================

def norm(value: Any) -> Any:
    """A hashable, type-exact image of a dataset value (what the codec
    promises to round-trip exactly)."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape,
                np.ascontiguousarray(value).tobytes())
    if isinstance(value, np.generic):
        return ("npscalar", value.dtype.str, value.tobytes())
    if type(value) is list:
        return ("list", tuple(norm(v) for v in value))
    if type(value) is tuple:
        return ("tuple", tuple(norm(v) for v in value))
    if type(value) is dict:
        return ("dict", tuple(sorted((repr(k), norm(v))
                                     for k, v in value.items())))
    return (type(value).__name__, value)


def digest(payload: Any) -> bytes:
    return hashlib.blake2b(codec.pack(payload), digest_size=16).digest()


def convert_index(index: Any) -> Any:
    """ARTIQ's mutate index conversion (written again: the model must not
    share code with what it checks)."""
    if not isinstance(index, tuple):
        return index
    if isinstance(index[0], tuple):
        return tuple(slice(*dim) for dim in index)
    return slice(*index)


# =============================================================================
# The model: what exactly the acknowledged operations must have produced
# =============================================================================

@dataclass
class Op:
    """One workload operation and the records it journals, in order."""

    kind: str
    args: tuple = ()
    records: list = field(default_factory=list)  # [(rtype, payload)]


#: How many checkpoint states a model keeps (resume may only ever pick one of
#: the last few).
KEEP_CHECKPOINTS = 32

#: Bugs found by this harness that are still open, each with a strict-xfail
#: regression test in test_crash_torture.py.  While listed, a violation of
#: exactly that shape is counted as a *known* bug hit (printed) instead of a
#: violation, so that the torture keeps checking everything else; set
#: ARTIQ_JOURNAL_TORTURE_STRICT=1 to count them as violations.
KNOWN_BUGS: dict[str, str] = {}


def known_bugs() -> set[str]:
    if os.environ.get("ARTIQ_JOURNAL_TORTURE_STRICT", "").strip():
        return set()
    return set(KNOWN_BUGS)


class Model:
    """An independent model of a run's datasets (ARTIQ's DatasetManager
    semantics for the operations the workloads use), fed with records.

    Attribute names are DatasetState's, so :func:`dataset_view` reads both.
    """

    def __init__(self) -> None:
        self.local: dict = {}
        self.broadcast: dict = {}
        self.metadata: dict = {}
        self.archive: dict = {}
        self.run_info: dict | None = None
        self.checkpoint: dict | None = None
        self.checkpoint_seq: int | None = None
        self.resumed_from: dict | None = None
        #: checkpoint seq -> deep copy of the state at that checkpoint record
        #: (the last ``KEEP_CHECKPOINTS`` of them).
        self.cp_states: dict[int, Model] = {}
        self.last_seq = 0
        #: seq -> (rtype, digest or None) of every record applied.
        self.record_log: dict[int, tuple[int, Any]] = {}

    def apply(self, rtype: int, payload: Any) -> None:
        self.last_seq += 1
        seq = self.last_seq
        if rtype in (REC_RUN_INFO, REC_STAGE):
            # Host, pid and times are not the model's to predict.
            self.record_log[seq] = (rtype, ("run_info", payload["rid"],
                                            payload["class_name"])
                                    if rtype == REC_RUN_INFO
                                    else ("stage", payload[0]))
        elif rtype == REC_CLOSE:
            self.record_log[seq] = (rtype, None)   # any reason will do
        else:
            self.record_log[seq] = (rtype, digest(payload))
        p = copy.deepcopy(payload)
        if rtype == REC_RUN_INFO:
            self.run_info = {"rid": p["rid"], "class_name": p["class_name"]}
        elif rtype == REC_SET:
            key, value, metadata, broadcast, persist, archive = p
            if persist:
                broadcast = True
            if broadcast:
                self.broadcast[key] = (persist, value, metadata)
            else:
                self.broadcast.pop(key, None)
            if archive:
                self.local[key] = value
            else:
                self.local.pop(key, None)
            self.metadata[key] = metadata
        elif rtype == REC_APPEND:
            key, value = p
            self._target(key).append(value)
        elif rtype == REC_MUTATE:
            key, index, value = p
            self._target(key)[convert_index(index)] = value
        elif rtype == REC_ARCHIVE:
            key, value = p
            self.archive[key] = value
        elif rtype == REC_CHECKPOINT:
            (self.checkpoint,) = p
            self.checkpoint_seq = seq
            snap = Model.__new__(Model)
            snap.__dict__.update({k: v for k, v in self.__dict__.items()
                                  if k not in ("cp_states", "record_log")})
            self.cp_states[seq] = copy.deepcopy(snap)
            if len(self.cp_states) > KEEP_CHECKPOINTS:
                del self.cp_states[min(self.cp_states)]
        elif rtype == REC_RESUMED_FROM:
            self.resumed_from = p
        elif rtype not in (REC_STAGE, REC_CLOSE):
            raise AssertionError(f"model: unexpected record type {rtype}")

    def _target(self, key: str) -> Any:
        if key in self.broadcast:
            return self.broadcast[key][1]
        target = self.local.get(key)
        if target is None:
            raise AssertionError(f"model: workload mutates unknown {key!r}")
        return target

    def snapshot_entries(self) -> list:
        """``DatasetState.to_snapshot()["datasets"]`` order (what
        ``restore_datasets`` sets, in that order)."""
        keys = list(self.local)
        keys += [k for k in self.metadata if k not in self.local]
        keys += [k for k in self.broadcast
                 if k not in self.local and k not in self.metadata]
        entries = []
        for key in keys:
            if key in self.broadcast:
                persist, value, metadata = self.broadcast[key]
                broadcast = True
            else:
                persist, broadcast = False, False
                value = self.local.get(key)
                metadata = self.metadata.get(key, {})
            entries.append([key, value, self.metadata.get(key, metadata),
                            broadcast, persist, key in self.local])
        return entries


def dataset_view(state: Any) -> dict:
    """Everything about datasets that must survive, comparable exactly
    (Model and DatasetState alike).  ``local_order`` is the order ARTIQ
    writes the results file in."""
    return {
        "local": {k: norm(v) for k, v in state.local.items()},
        "local_order": list(state.local),
        "broadcast": {k: (bool(p), norm(v), norm(md))
                      for k, (p, v, md) in state.broadcast.items()},
        "metadata": {k: norm(md) for k, md in state.metadata.items()},
        "archive": {k: norm(v) for k, v in state.archive.items()},
    }


def diff_views(expected: dict, got: dict) -> str:
    """A short description of how two dataset views differ ("" if not)."""
    out = []
    for part in expected:
        e, g = expected[part], got[part]
        if e == g:
            continue
        if isinstance(e, dict):
            keys = sorted(set(e) | set(g))
            bad = [k for k in keys if e.get(k) != g.get(k)]
            details = []
            for k in bad[:3]:
                details.append(f"{k}: expected {_short(e.get(k))}, "
                               f"got {_short(g.get(k))}")
            out.append(f"{part} differs for {bad[:6]} ({'; '.join(details)})")
        else:
            out.append(f"{part}: expected {e}, got {g}")
    return "; ".join(out)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_h5(path: str, model: Model) -> list[str]:
    """The recovered results file holds exactly the model's archived
    datasets (values, dtypes, shapes, metadata) and archive group."""
    problems = []
    with h5py.File(path, "r") as f:
        # A scan point the crash cut is kept aside, not in the datasets
        # (arrays stay in step): its entries count as recovered there.
        aside = {}
        node = f.get("artiq_journal/partial_point")
        if node is not None:
            raw = node[()]
            aside = pyon.decode(raw.decode() if isinstance(raw, bytes)
                                else raw)
        for group_name, expected in (("datasets", model.local),
                                     ("archive", model.archive)):
            group = f.get(group_name)
            if group is None:
                problems.append(f"{path}: no '{group_name}' group")
                continue
            if set(group) != set(expected):
                problems.append(
                    f"{path}: {group_name}/ holds {sorted(group)}, "
                    f"expected {sorted(expected)}")
            for key, value in expected.items():
                if key not in group:
                    continue
                got = group[key][()]
                if group_name == "datasets" and key in aside:
                    got = np.append(got, aside[key])
                if isinstance(value, str):
                    ok = (got.decode() if isinstance(got, bytes)
                          else got) == value
                else:
                    want = np.asarray(value)
                    got = np.asarray(got)
                    ok = (want.dtype == got.dtype and want.shape == got.shape
                          and np.array_equal(want, got))
                if not ok:
                    problems.append(f"{path}: {group_name}/{key} = "
                                    f"{_short(got)}, expected "
                                    f"{_short(value)}")
                if group_name == "datasets":
                    attrs = group[key].attrs
                    for name, want_attr in model.metadata.get(key,
                                                              {}).items():
                        if name not in attrs or attrs[name] != want_attr:
                            problems.append(
                                f"{path}: {group_name}/{key} attribute "
                                f"{name!r} is {attrs.get(name)!r}, expected "
                                f"{want_attr!r}")
    return problems


# =============================================================================
# The checks after one kill
# =============================================================================

@dataclass
class Verdict:
    problems: list[str]
    landed: int            # records of the in-flight op found on disk
    disk_seq: int          # last seq on disk
    op_landed: bool        # the in-flight op's records are all there
    #: The checkpoint seq resume picks (last_checkpoint_seq), if checked.
    resume_seq: int | None = None
    #: Known-bug hits (see KNOWN_BUGS): (bug id, description).
    known: list = field(default_factory=list)
    #: The journal ends in a torn record (the next writer must cut it).
    torn_tail: bool = False


def check_journal(path: str, model: Model, next_op: Op | None,
                  verified_upto: int, out_dir: str) -> Verdict:
    """Check the journal at ``path`` after a kill.

    ``model`` holds every acknowledged op (the caller applied them);
    ``next_op`` is the op that was in flight (called, never acknowledged),
    if any.  Applies the landed part of ``next_op`` to ``model``.  Records
    with seq > ``verified_upto`` are compared with the model's record log.
    """
    problems: list[str] = []
    result = replay(path)
    disk_seq = result.state.last_seq
    torn_tail = any(d.kind == "torn_tail" and d.offset not in (None, 0)
                    for d in result.diagnostics)
    for d in result.diagnostics:
        if d.severity != "info":
            problems.append(f"replay diagnostic: {d}")
    if result.records_untrusted:
        problems.append(f"{result.records_untrusted} untrusted records")
    acked_seq = model.last_seq
    pending = next_op.records if next_op is not None else []
    landed = disk_seq - acked_seq
    if landed < 0:
        problems.append(
            f"acknowledged records lost: the journal ends at seq {disk_seq}, "
            f"seq {acked_seq} was acknowledged")
        return Verdict(problems, 0, disk_seq, False)
    if landed > len(pending):
        problems.append(
            f"records never performed: the journal ends at seq {disk_seq}, "
            f"but only seq {acked_seq} was acknowledged and the in-flight op "
            f"({next_op.kind if next_op else 'none'}) writes {len(pending)}")
        return Verdict(problems, 0, disk_seq, False)
    for rtype, payload in pending[:landed]:
        model.apply(rtype, payload)
    op_landed = bool(pending) and landed == len(pending)

    # -- the state replay rebuilds ----------------------------------------------
    state = result.state
    diff = diff_views(dataset_view(model), dataset_view(state.datasets))
    if diff:
        problems.append(f"replayed datasets differ from the acknowledged "
                        f"ops: {diff}")
    if model.run_info is not None and (
            state.run_info is None
            or state.run_info.get("rid") != model.run_info["rid"]
            or state.run_info.get("class_name")
            != model.run_info["class_name"]):
        problems.append(f"run_info is {state.run_info}, expected "
                        f"{model.run_info}")
    if norm(state.checkpoint) != norm(model.checkpoint) or \
            state.checkpoint_seq != model.checkpoint_seq:
        problems.append(f"checkpoint {state.checkpoint}@"
                        f"{state.checkpoint_seq}, expected "
                        f"{model.checkpoint}@{model.checkpoint_seq}")

    # -- the records themselves (after the snapshot) -------------------------------
    problems += _check_records(path, model, verified_upto)

    # -- artiq-recover -------------------------------------------------------------------
    if disk_seq > 0:
        report = recover([path], output=out_dir)
        runs = report.runs
        if len(runs) != 1:
            problems.append(f"recover found {len(runs)} runs")
        else:
            run = runs[0]
            if run.outcome != "recovered" or run.data_lost:
                problems.append(
                    f"recover: outcome {run.outcome}, problems "
                    f"{[str(p) for p in run.problems if p.severity == 'error']}")
            if run.last_seq != disk_seq:
                problems.append(f"recover applied up to seq {run.last_seq}, "
                                f"journal ends at {disk_seq}")
            if run.output and os.path.exists(run.output):
                problems += check_h5(run.output, model)
            else:
                problems.append(f"recover wrote no file ({run.output})")

    # -- resume ----------------------------------------------------------------------------
    known = []
    cp = last_checkpoint_seq(path)
    if cp != model.checkpoint_seq:
        text = (f"last_checkpoint_seq is {cp}, the last acknowledged/landed "
                f"checkpoint is seq {model.checkpoint_seq}")
        problems.append(text)
        cp = None
    if cp is not None:
        try:
            _info, cp_state, seq = load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - a violation, reported
            problems.append(f"load_checkpoint: {type(exc).__name__}: {exc}")
        else:
            expected = model.cp_states[cp]
            diff = diff_views(dataset_view(expected),
                              dataset_view(cp_state.datasets))
            if seq != cp or diff or \
                    norm(cp_state.checkpoint) != norm(expected.checkpoint):
                problems.append(
                    f"resume state at checkpoint seq {cp} differs: seq {seq},"
                    f" user state {cp_state.checkpoint} (expected "
                    f"{expected.checkpoint}); {diff}")
    return Verdict(problems, landed, disk_seq, op_landed, cp, known,
                   torn_tail)


def _check_records(path: str, model: Model, verified_upto: int) -> list[str]:
    """Every record after the snapshot and after ``verified_upto`` is the
    record the model says that seq holds: same type, same bytes."""
    problems = []
    after, start = 0, None
    try:
        snap = load_snapshot(path)
        after = snap.seq
        seg, off = snap.state["position"]
        start = Position(int(seg), int(off))
    except NoSnapshot:
        pass
    reader = JournalReader(path, after_seq=after, start=start)
    expect_seq = after + 1
    for rec in reader:
        if rec.seq != expect_seq:
            problems.append(f"record seq {rec.seq} where {expect_seq} was "
                            "expected (gap or duplicate)")
            break
        expect_seq += 1
        if rec.seq <= verified_upto:
            continue
        want = model.record_log.get(rec.seq)
        if want is None:
            problems.append(f"record seq {rec.seq} "
                            f"({RECORD_TYPE_NAMES.get(rec.rtype)}) was never "
                            "performed")
            continue
        rtype, want_digest = want
        if rec.rtype == REC_RUN_INFO:
            got = ("run_info", rec.payload.get("rid"),
                   rec.payload.get("class_name"))
        elif rec.rtype == REC_STAGE:
            got = ("stage", rec.payload[0])
        elif rec.rtype == REC_CLOSE:
            got = None
        else:
            got = digest(rec.payload)
        if rec.rtype != rtype or got != want_digest:
            problems.append(
                f"record seq {rec.seq} is a {RECORD_TYPE_NAMES.get(rec.rtype)}"
                f" that differs from the op performed as seq {rec.seq} "
                f"({RECORD_TYPE_NAMES.get(rtype)})")
    return problems


# =============================================================================
# Workload (a): the JournalWriter directly
# =============================================================================

DIRECT_CLASS = "Torture"


def direct_op(seed: int, i: int, rid: int, cp_rate: float = 0.08) -> Op:
    """Operation ``i`` of the direct workload with ``seed`` (a pure
    function, so parent and child agree without sending ops around)."""
    if i == 0:
        return Op("record", records=[(REC_RUN_INFO,
                                      {"rid": rid,
                                       "class_name": DIRECT_CLASS})])
    init = _DIRECT_INIT
    if i <= len(init):
        key, make, md, bc, persist, archive = init[i - 1]
        return Op("record", records=[
            (REC_SET, [key, make(), md, bc, persist, archive])])
    rng = random.Random(seed * 1_000_003 + i)
    if rng.random() < cp_rate:
        return Op("checkpoint", (rng.random() < 0.5,),
                  records=[(REC_CHECKPOINT, [{"i": i, "tag": f"cp{i}"}])])
    u = 0.08 + 0.92 * rng.random()
    if u < 0.40:
        key = rng.choice(("l0", "l1", "b0"))
        value = rng.choice((i, i / 4, -i))
        return Op("record", records=[(REC_APPEND, [key, value])])
    if u < 0.55:
        key = rng.choice(("l0", "l1", "b0"))
        return Op("record", records=[
            (REC_MUTATE, [key, rng.randrange(4), i * 10])])
    if u < 0.66:
        if rng.random() < 0.5:
            index = rng.randrange(8)
        else:
            a = rng.randrange(7)
            index = (a, rng.randrange(a + 1, 9))
        return Op("record", records=[(REC_MUTATE, ["a0", index, i / 8])])
    if u < 0.74:
        r0 = rng.randrange(2)
        c0 = rng.randrange(3)
        index = ((r0, rng.randrange(r0 + 1, 3)), (c0, rng.randrange(c0 + 1, 4)))
        return Op("record", records=[(REC_MUTATE, ["a1", index, i])])
    if u < 0.90:
        return Op("record", records=[
            (REC_SET, ["s0", rng.choice((i, i / 2)), {"unit": "s"}, False,
                       False, True])])
    if u < 0.95:
        key, make, md, bc, persist, archive = rng.choice(init[:2] + init[4:5])
        return Op("record", records=[
            (REC_SET, [key, [i, i + 1, i + 2, i + 3], md, bc, persist,
                       archive])])
    if u < 0.975:
        # >= 64 KiB: framed by the zero-copy writev path.
        return Op("record", records=[
            (REC_SET, ["big", np.full(8192, float(i)), {}, False, False,
                       True])])
    return Op("record", records=[
        (REC_SET, ["a0", np.linspace(0.0, i, 8), {"unit": "V"}, False, False,
                   True])])


_DIRECT_INIT = [
    ("l0", lambda: [0, 1, 2, 3], {"unit": "V"}, False, False, True),
    ("l1", lambda: [0.5, 1.5, 2.5, 3.5], {}, True, False, True),
    ("a0", lambda: np.zeros(8), {"unit": "V"}, False, False, True),
    ("a1", lambda: np.zeros((2, 3), dtype=np.int32), {}, True, True, True),
    ("b0", lambda: [1, 2, 3, 4], {}, True, False, False),
    ("s0", lambda: 0, {"unit": "s"}, False, False, True),
]


@dataclass
class DirectConfig:
    path: str
    seed: int
    rid: int
    fsync: str
    segment_bytes: int
    group_interval: float
    max_ops: int
    cp_rate: float = 0.08
    #: A deliberate writer bug (KillSwitchOps.fault), for the self-test.
    fault: str | None = None


def direct_child(cfg: DirectConfig, start: int, plan: KillPlan,
                 ledger: Ledger) -> None:
    """Child: reopen (or create) the journal, rebuild the run state from
    what is on disk, and perform ops ``start``, ``start + 1``, ... acking
    each one after it returned."""
    ops = make_ops(ledger, plan, cfg.fsync, cfg.fault)
    writer = JournalWriter(cfg.path, fsync=cfg.fsync,
                           segment_bytes=cfg.segment_bytes,
                           group_interval=cfg.group_interval, ops=ops)
    ledger.opened(writer.last_seq)
    state = replay(cfg.path).state if writer.last_seq else RunState()
    if state.last_seq != writer.last_seq:
        raise AssertionError(f"reopened writer continues after seq "
                             f"{writer.last_seq}, replay ends at "
                             f"{state.last_seq}")
    ops.phase = "append"
    for i in range(start, start + cfg.max_ops):
        op = direct_op(cfg.seed, i, cfg.rid, cfg.cp_rate)
        for rtype, payload in op.records:
            seq = writer.append(rtype, payload)
            state.apply(seq, rtype, payload)
        if op.kind == "checkpoint" and op.args[0]:
            ledger.begin(i)
            ops.phase = "snapshot"
            covered = writer.write_snapshot(state.to_snapshot())
            ops.phase = "append"
            if covered != writer.last_seq:
                raise AssertionError(f"snapshot covers {covered}, last seq "
                                     f"{writer.last_seq}")
        ledger.ack(i, writer.last_seq)


# =============================================================================
# Workload (b): an experiment through worker_hooks.attach, resumed after kills
# =============================================================================

EXP_CLASS = "Scan"
EXPID = {"file": "scan.py", "class_name": EXP_CLASS, "arguments": {}}
CALIB = np.array([1.5, 2.5, 4.0])


def _set_op(key, value, md, bc, persist, archive, kind="set") -> Op:
    payload = [key, value, md, bc, persist, archive]
    return Op(kind, tuple(payload), [(REC_SET, payload)])


def scan_points(seed: int, first: int, points: int) -> list[Op]:
    """The loop body of the scan for points ``first..points-1``."""
    ops = []
    for i in range(first, points):
        rng = random.Random(seed * 7919 + i)
        ops.append(Op("append_to", ("ys", i * 0.25),
                      [(REC_APPEND, ["ys", i * 0.25])]))
        ops.append(Op("mutate", ("counts", i % 16, i),
                      [(REC_MUTATE, ["counts", i % 16, i])]))
        ops.append(Op("append_to", ("trace", i), [(REC_APPEND, ["trace", i])]))
        if i % 3 == 0:
            index = ((0, 2), (i % 4, i % 4 + 1))
            ops.append(Op("mutate", ("img", index, float(i)),
                          [(REC_MUTATE, ["img", index, float(i)])]))
        if i % 4 == 1:
            ops.append(Op("mutate", ("trace", 0, -i),
                          [(REC_MUTATE, ["trace", 0, -i])]))
        ops.append(_set_op("last_i", i, {}, True, True, False))
        if i % 5 == 2:
            ops.append(_set_op("big", np.full(8192, float(i)), {}, False,
                               False, True))
        if i == points - 1 or rng.random() < 0.35:
            state = {"i": i + 1, "phase": (i, "scan")}
            ops.append(Op("checkpoint", (state,),
                          [(REC_CHECKPOINT, [state])]))
    return ops


def fresh_run_ops(rid: int, seed: int, points: int) -> list[Op]:
    return [
        Op("attach", (rid,), [(REC_RUN_INFO, {"rid": rid,
                                              "class_name": EXP_CLASS}),
                              (REC_STAGE, ["build", None])]),
        Op("get_archive", ("calib",), [(REC_ARCHIVE, ["calib", CALIB])]),
        _set_op("ys", [], {"unit": "V"}, True, False, True),
        _set_op("counts", np.zeros(16, dtype=np.int64), {"unit": "1"}, False,
                False, True),
        _set_op("img", np.zeros((4, 4)), {}, True, False, False),
        _set_op("trace", [], {}, False, False, True),
        Op("checkpoint", ({"i": 0, "phase": (0, "start")},),
           [(REC_CHECKPOINT, [{"i": 0, "phase": (0, "start")}])]),
    ] + scan_points(seed, 0, points) + [CLOSE_WITHOUT_RESULTS]


#: A run that ends without ARTIQ's results file (e.g. its master died): the
#: journal is closed, but "closed" promises nothing -- recovery must still
#: publish every acknowledged op.
CLOSE_WITHOUT_RESULTS = Op("close", (), [(REC_CLOSE, ["no_results"])])


def resumed_run_ops(rid: int, seed: int, points: int, source: "RunRecord"
                    ) -> list[Op]:
    """A run resuming ``source`` at its last checkpoint: exactly the records
    ``load_checkpoint`` + ``restore_datasets`` + ``resume_state`` write."""
    cp = source.model.cp_states[source.cp_seq]
    ops = [Op("attach", (rid,), [(REC_RUN_INFO, {"rid": rid,
                                                 "class_name": EXP_CLASS}),
                                 (REC_STAGE, ["build", None])])]
    for entry in cp.snapshot_entries():
        ops.append(_set_op(*entry, kind="restore_set"))
    for key, value in cp.archive.items():
        ops.append(Op("restore_archive", (key, value),
                      [(REC_ARCHIVE, [key, value])]))
    info = {"rid": source.rid, "seq": source.cp_seq, "journal": source.path}
    ops.append(Op("resumed_from", (info,), [(REC_RESUMED_FROM, info)]))
    ops.append(_set_op(RESUMED_FROM_DATASET, json.dumps(info), {}, False,
                       False, True))
    user_state = dict(cp.checkpoint)
    ops.append(Op("checkpoint", (user_state,),
                  [(REC_CHECKPOINT, [user_state])]))
    return ops + scan_points(seed, user_state["i"], points) + \
        [CLOSE_WITHOUT_RESULTS]


@dataclass
class ExperimentConfig:
    results_dir: str
    rid: int
    fsync: str
    segment_bytes: int
    group_interval: float
    snapshot_min_bytes: int
    snapshot_interval: float
    source_path: str | None
    ops: list


def experiment_child(cfg: ExperimentConfig, plan: KillPlan,
                     ledger: Ledger) -> None:
    """Child: an ARTIQ-like run on the runner's DatasetManager, journaled
    by ``attach``; a resumed run restores with the real resume helpers.

    Test knobs (this process only): smaller snapshot thresholds and
    segments, so that snapshot and segment rotation happen every few
    points instead of every MiB.
    """
    ops_layer = make_ops(ledger, plan, cfg.fsync)
    attach_module.SNAPSHOT_MIN_BYTES = cfg.snapshot_min_bytes
    attach_module.SNAPSHOT_MIN_TIMED_BYTES = cfg.snapshot_min_bytes
    attach_module.JournalWriter = functools.partial(
        JournalWriter, segment_bytes=cfg.segment_bytes, ops=ops_layer)
    ddb = DatasetDB()
    ddb.data["calib"] = (True, CALIB.copy(), {"unit": "Hz"})
    mgr = DatasetManager(ddb)
    ops = cfg.ops
    live = None
    i = 0
    while i < len(ops):
        op = ops[i]
        ops_layer.phase = "open" if op.kind == "attach" else "append"
        if op.kind == "attach":
            live = attach(mgr, rid=cfg.rid, expid=EXPID, class_name=EXP_CLASS,
                          results_dir=cfg.results_dir, fsync=cfg.fsync,
                          group_interval=cfg.group_interval,
                          snapshot_interval=cfg.snapshot_interval,
                          on_error="stop", keep=True)
            ledger.opened(0)
        elif op.kind == "restore_set":
            i = _resume(cfg, mgr, live, ops, i, ledger, ops_layer)
            continue
        elif op.kind == "get_archive":
            mgr.get(op.args[0], archive=True)
        elif op.kind == "set":
            mgr.set(*op.args)
        elif op.kind == "append_to":
            mgr.append_to(*op.args)
        elif op.kind == "mutate":
            mgr.mutate(*op.args)
        elif op.kind == "checkpoint":
            ledger.begin(i)
            ops_layer.phase = "snapshot"
            live.checkpoint(op.args[0])
        elif op.kind == "close":
            ledger.begin(i)
            ops_layer.phase = "close"
            live.close()    # no verified results file: reason no_results
            ledger.ack(i, live.writer.last_seq)
            i += 1
            continue
        else:
            raise AssertionError(f"unknown op {op.kind}")
        ledger.ack(i, live.writer.last_seq)
        i += 1


def _resume(cfg: ExperimentConfig, mgr: Any, live: Any, ops: list, i: int,
            ledger: Ledger, ops_layer: KillSwitchOps) -> int:
    """What ``JournalResumable.resume_state`` does, with the real helpers,
    acking every journaled step; checks each against the expected op."""
    _run_info, state, seq = load_checkpoint(cfg.source_path)
    cursor = [i]

    def expect(kind: str, args: tuple) -> int:
        index = cursor[0]
        want = ops[index]
        if want.kind != kind or norm(list(want.args)) != norm(list(args)):
            raise AssertionError(
                f"resume step {index - i}: did {kind}{_short(args)}, the "
                f"model expected {want.kind}{_short(want.args)}")
        cursor[0] += 1
        return index

    hooked_set = mgr.set

    def acking_set(key, value, metadata, broadcast, persist, archive):
        hooked_set(key, value, metadata, broadcast, persist, archive)
        index = expect("restore_set", (key, value, metadata, broadcast,
                                       persist, archive))
        ledger.ack(index, live.writer.last_seq)

    hooked_archive = live.record_archive

    def acking_archive(key, value):
        hooked_archive(key, value)
        index = expect("restore_archive", (key, value))
        ledger.ack(index, live.writer.last_seq)

    mgr.set = acking_set
    live.record_archive = acking_archive
    try:
        restore_datasets(mgr, state.datasets, live)
    finally:
        mgr.set = hooked_set
        del live.record_archive
    info = {"rid": _run_info["rid"], "seq": seq, "journal": cfg.source_path}
    live.record_resumed_from(info["rid"], seq, cfg.source_path)
    ledger.ack(expect("resumed_from", (info,)), live.writer.last_seq)
    mgr.set(RESUMED_FROM_DATASET, json.dumps(info), {}, False, False, True)
    ledger.ack(expect("set", (RESUMED_FROM_DATASET, json.dumps(info), {},
                              False, False, True)), live.writer.last_seq)
    user_state = dict(state.checkpoint)
    index = cursor[0]
    ledger.begin(index)
    ops_layer.phase = "snapshot"
    live.checkpoint(user_state)
    ledger.ack(expect("checkpoint", (user_state,)), live.writer.last_seq)
    return cursor[0]


# =============================================================================
# The torture loop
# =============================================================================

@dataclass
class RunRecord:
    """A run (journal) of the experiment workload and its model."""

    rid: int
    path: str
    model: Model
    #: The checkpoint resume will pick (``last_checkpoint_seq``).
    cp_seq: int


@dataclass
class Tally:
    """Counts of one torture test (printed and asserted)."""

    name: str
    master_seed: int
    kills: int = 0
    acked: int = 0
    violations: list[str] = field(default_factory=list)
    plans: Counter = field(default_factory=Counter)
    points: Counter = field(default_factory=Counter)
    landed: int = 0
    generations: int = 0
    reopened: int = 0
    #: Reopens of a journal that ended in a torn record.
    torn_reopened: int = 0
    resumed: int = 0
    fsync: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    kept: list[str] = field(default_factory=list)
    known: Counter = field(default_factory=Counter)
    known_examples: dict = field(default_factory=dict)

    def line(self) -> str:
        return (f"kill points: {self.kills}, acknowledged ops checked: "
                f"{self.acked}, violations: {len(self.violations)}")

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        return (f"[{self.name}] master seed {self.master_seed} "
                f"(ARTIQ_JOURNAL_TORTURE_SEED), {elapsed:.1f} s, "
                f"{self.generations} generations, {self.reopened} reopened "
                f"({self.torn_reopened} after a torn tail), "
                f"{self.resumed} resumed, in-flight op landed {self.landed} "
                f"times; plans {dict(self.plans)}; fsync {dict(self.fsync)}; "
                f"structural kill points {dict(self.points)}"
                + (f"; KNOWN BUG hits {dict(self.known)}" if self.known
                   else ""))


def choose_plan(rng: random.Random, max_acks: int, structural: int,
                weights: dict[str, float] | None = None) -> KillPlan:
    weights = weights or {"acks": 0.30, "delay": 0.12, "begin": 0.16,
                          "fsop": 0.30, "torn": 0.12}
    mode = rng.choices(list(weights), list(weights.values()))[0]
    if mode == "acks":
        return KillPlan("acks", n=rng.randint(0, max_acks))
    if mode == "delay":
        return KillPlan("delay", delay=rng.uniform(0.0, 0.03))
    if mode == "begin":
        return KillPlan("begin", n=rng.randint(1, 4),
                        delay=rng.choice((0.0, rng.uniform(0.0, 0.002))))
    if mode == "fsop":
        return KillPlan("fsop", n=rng.randint(1, max(structural, 8)))
    return KillPlan("torn", n=rng.randint(1, max_acks),
                    fraction=rng.uniform(0.05, 0.95))


class Torture:
    """Runs chains of generations (fork, kill, check) and keeps the tally."""

    def __init__(self, tally: Tally, root: str, keep_failures: int = 5):
        self.tally = tally
        self.root = root
        self.keep_failures = keep_failures
        #: Structural calls per generation, per fsync policy (calibrated
        #: from DONE reports): the range fsop kill points are drawn from.
        self.structural: Counter = Counter()

    def _violation(self, where: str, problems: list[str], path: str) -> None:
        text = f"{where}: " + " | ".join(problems)
        self.tally.violations.append(text)
        if len(self.tally.kept) < self.keep_failures and os.path.exists(path):
            keep = os.path.join(self.root, "failures",
                                f"{len(self.tally.kept)}-"
                                f"{os.path.basename(path)}")
            shutil.copytree(path, keep, dirs_exist_ok=True)
            self.tally.kept.append(keep)

    def _run_child(self, child, plan, fsync: str):
        """One generation: run ``child`` under ``plan``, and count it."""
        out = run_child(child, plan)
        self.tally.generations += 1
        self.tally.plans[plan.mode] += 1
        self.tally.fsync[fsync] += 1
        if out.killed:
            self.tally.kills += 1
        return out

    def _known(self, verdict: Verdict, where: str) -> None:
        for bug, text in verdict.known:
            self.tally.known[bug] += 1
            self.tally.known_examples.setdefault(bug, f"{where}: {text}")

    def _child_problems(self, out: ChildOutcome, policy: str) -> list[str]:
        problems = []
        if not out.killed:
            problems.append(f"child died of {out.death}, not SIGKILL")
        if out.error:
            problems.append(f"child error: {out.error.strip()[-1500:]}")
        if out.done and out.structural_ops:
            self.structural[policy] = max(self.structural[policy],
                                          out.structural_ops)
        if out.plan.mode in ("fsop", "torn"):
            self.tally.points[kill_point_class(out.killing)] += 1
        return problems

    # -- workload (a) -----------------------------------------------------------

    def direct_chain(self, chain_seed: int, generations: int,
                     kill_budget: int, *, fsync: str | None = None,
                     segment_bytes: int | None = None,
                     first_plan: KillPlan | None = None,
                     max_ops: int = 160, cp_rate: float = 0.08,
                     plan_seed: int | None = None,
                     fault: str | None = None) -> None:
        """One journal, ``generations`` children, each reopening it.
        ``plan_seed``: seed of the kill plans (default: ``chain_seed``)."""
        rng = random.Random(chain_seed)
        plan_rng = rng if plan_seed is None else random.Random(plan_seed)
        rid = 1 + chain_seed % 100000
        path = os.path.join(self.root, f"a{chain_seed}",
                            f"{rid:09d}-{DIRECT_CLASS}.journal")
        model = Model()
        start = 0          # next op index to perform
        disk_seq = 0       # last seq on disk after the previous check
        verified = 0
        torn_tail = False
        for gen in range(generations):
            if self.tally.kills >= kill_budget:
                break
            cfg = DirectConfig(
                path=path, seed=chain_seed, rid=rid,
                fsync=fsync or rng.choice(FSYNC_POLICIES),
                segment_bytes=segment_bytes or rng.choice((512, 1024, 4096)),
                group_interval=rng.choice((0.001, 0.005)), max_ops=max_ops,
                cp_rate=cp_rate, fault=fault)
            plan = first_plan if (gen == 0 and first_plan) else \
                choose_plan(plan_rng, max_ops,
                            self.structural[cfg.fsync] or 40)
            where = (f"direct chain seed {chain_seed} gen {gen}: {plan}, "
                     f"fsync={cfg.fsync}, segment_bytes={cfg.segment_bytes}, "
                     f"ops from #{start}")
            out = self._run_child(
                functools.partial(direct_child, cfg, start, plan), plan,
                cfg.fsync)
            problems = self._child_problems(out, cfg.fsync)
            if out.opened is not None:
                if gen:
                    self.tally.reopened += 1
                    self.tally.torn_reopened += torn_tail
                if out.opened != disk_seq:
                    problems.append(f"writer reopened after seq {out.opened},"
                                    f" the journal held {disk_seq}")
            # Acks: consecutive ops from `start`, each at the seq the model
            # says.
            for n, (index, seq) in enumerate(out.acks):
                op = direct_op(chain_seed, index, rid, cp_rate)
                if index != start + n:
                    problems.append(f"ack for op #{index}, expected "
                                    f"#{start + n}")
                    break
                for rtype, payload in op.records:
                    model.apply(rtype, payload)
                if seq != model.last_seq:
                    problems.append(f"op #{index} acknowledged at seq {seq},"
                                    f" expected {model.last_seq}")
            self.tally.acked += len(out.acks)
            start += len(out.acks)
            if not problems and not os.path.isdir(path):
                # Killed before the journal directory existed.
                continue
            next_op = direct_op(chain_seed, start, rid, cp_rate)
            out_dir = os.path.join(self.root, "out")
            verdict = check_journal(path, model, next_op, verified, out_dir) \
                if not problems else None
            shutil.rmtree(out_dir, ignore_errors=True)
            if verdict is not None:
                problems += verdict.problems
                self._known(verdict, where)
            if problems:
                self._violation(where, problems, path)
                break     # the model no longer describes this journal
            if verdict.op_landed:
                start += 1
                self.tally.landed += 1
            disk_seq = verified = verdict.disk_seq
            torn_tail = verdict.torn_tail
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    # -- workload (b) -----------------------------------------------------------------

    def experiment_chain(self, chain_seed: int, generations: int,
                         kill_budget: int, points: int = 24) -> None:
        """Runs of one scan: each killed, the next resuming the last run
        that reached a checkpoint (a fresh run if none did)."""
        rng = random.Random(chain_seed)
        results_dir = os.path.join(self.root, f"b{chain_seed}", "results",
                                   "2026-01-01", "10")
        source: RunRecord | None = None
        rid = 1000 + (chain_seed % 1000) * 100
        for gen in range(generations):
            if self.tally.kills >= kill_budget:
                break
            rid += 1
            if source is None:
                ops = fresh_run_ops(rid, chain_seed, points)
            else:
                ops = resumed_run_ops(rid, chain_seed, points, source)
            cfg = ExperimentConfig(
                results_dir=results_dir, rid=rid,
                fsync=rng.choice(FSYNC_POLICIES),
                segment_bytes=rng.choice((1024, 4096, 1 << 16)),
                group_interval=rng.choice((0.001, 0.005)),
                snapshot_min_bytes=rng.choice((0, 4096, 32768)),
                snapshot_interval=rng.choice((0.0, 3600.0)),
                source_path=source.path if source else None, ops=ops)
            plan = choose_plan(rng, len(ops),
                               self.structural[cfg.fsync] or 60)
            where = (f"experiment chain seed {chain_seed} gen {gen} rid "
                     f"{rid}{' resuming ' + str(source.rid) if source else ''}"
                     f": {plan}, fsync={cfg.fsync}, segment_bytes="
                     f"{cfg.segment_bytes}, snapshot_min_bytes="
                     f"{cfg.snapshot_min_bytes}")
            out = self._run_child(
                functools.partial(experiment_child, cfg, plan), plan,
                cfg.fsync)
            problems = self._child_problems(out, cfg.fsync)
            path = os.path.join(results_dir,
                                f"{rid:09d}-{EXP_CLASS}.journal")
            model = Model()
            for n, (index, seq) in enumerate(out.acks):
                if index != n:
                    problems.append(f"ack for op #{index}, expected #{n}")
                    break
                for rtype, payload in ops[index].records:
                    model.apply(rtype, payload)
                if seq != model.last_seq:
                    problems.append(f"op #{index} ({ops[index].kind}) "
                                    f"acknowledged at seq {seq}, expected "
                                    f"{model.last_seq}")
            self.tally.acked += len(out.acks)
            if source is not None and out.acks:
                self.tally.resumed += 1
            if not problems and not os.path.isdir(path):
                continue      # killed before attach created the journal
            next_op = ops[len(out.acks)] if len(out.acks) < len(ops) \
                else None
            out_dir = os.path.join(self.root, "out")
            verdict = check_journal(path, model, next_op, 0, out_dir) \
                if not problems else None
            shutil.rmtree(out_dir, ignore_errors=True)
            if verdict is not None:
                problems += verdict.problems
                self._known(verdict, where)
                if verdict.landed:
                    self.tally.landed += 1
            if problems:
                self._violation(where, problems, path)
                break
            if verdict.resume_seq is not None:
                source = RunRecord(rid, path, model, verdict.resume_seq)
                if model.cp_states[verdict.resume_seq].checkpoint["i"] \
                        >= points:
                    break     # the scan is complete
        shutil.rmtree(os.path.join(self.root, f"b{chain_seed}"),
                      ignore_errors=True)


def kill_budget(ci: int, opt_in: int) -> int:
    """``ARTIQ_JOURNAL_TORTURE``: unset -> ``ci``; a number > 1 -> that
    many; anything else (e.g. ``1``) -> ``opt_in``."""
    setting = os.environ.get("ARTIQ_JOURNAL_TORTURE", "").strip()
    if not setting:
        return ci
    if setting.isdigit() and int(setting) > 1:
        return int(setting)
    return opt_in


def opt_in() -> bool:
    """True in the long mode (``ARTIQ_JOURNAL_TORTURE`` set)."""
    return bool(os.environ.get("ARTIQ_JOURNAL_TORTURE", "").strip())


def master_seed(default: int) -> int:
    value = os.environ.get("ARTIQ_JOURNAL_TORTURE_SEED", "").strip()
    return int(value) if value else default


def report(tally: Tally) -> None:
    print()
    print(tally.summary())
    for v in tally.violations[:10]:
        print("VIOLATION:", v)
    for bug, example in tally.known_examples.items():
        print(f"KNOWN BUG {bug} hit {tally.known[bug]} times "
              f"({KNOWN_BUGS[bug]}); e.g. {example}")
    if tally.kept:
        print("journals of the first violations kept in:", *tally.kept)
    print(tally.line())
    sys.stdout.flush()
