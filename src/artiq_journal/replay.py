"""Rebuild a run's state from a journal directory: the newest valid
snapshot plus the trusted records after it.

Used by recovery (``artiq-recover``), resume and ``artiq-journal inspect``.
Never raises on damaged input: problems are collected in the result.
"""

from __future__ import annotations

import array
import contextlib
import gc
import itertools
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

from .errors import NoSnapshot
from .journal.constants import (DEFAULT_MAX_RECORD_BYTES, REC_APPEND,
                                REC_ARCHIVE, REC_CHECKPOINT, REC_CLOSE,
                                REC_HEARTBEAT, REC_MUTATE, REC_POINT_BEGIN,
                                REC_POINT_END, REC_RESUMED_FROM,
                                REC_RUN_INFO, REC_SEGMENT_SYNCED, REC_SET,
                                REC_STAGE)
from .journal.framing import type_name
from .journal.reader import Diagnostic, JournalReader, Position
from .journal.snapshot import Snapshot, load_snapshot
from .runstate import BadRecord, RunState
from .trail import RecordTrail


@dataclass
class ReplayResult:
    path: str
    state: RunState
    snapshot: Snapshot | None = None
    #: Why no snapshot / why not the preferred one ("" if none needed).
    snapshot_note: str = ""
    records_applied: int = 0
    #: Intact records left out because something before them was lost.
    records_untrusted: int = 0
    diagnostics: list[Diagnostic] = field(default_factory=list)
    clean_close: bool = False
    #: The point the journal ends inside (a crash mid-point), left out of
    #: the state: ``{"begin_seq", "last_seq", "records"}``; None if none.
    #: ``records`` are its ``(seq, type, payload)`` (kept aside, not applied).
    partial_point: dict | None = None
    #: With ``trail=True``: the shapes of the applied records, in order.
    trail: RecordTrail | None = None

    @property
    def damaged(self) -> bool:
        """True when something that may have been acknowledged is missing."""
        return any(d.severity == "error" for d in self.diagnostics)

    @property
    def last_seq(self) -> int:
        return self.state.last_seq


#: Every diagnostic about a checkpoint file has this severity.  A bad or
#: missing checkpoint loses nothing by itself: replay falls back on an older
#: one (or none) and reads the records after it, and if records it needed
#: were deleted, the reader reports the sequence gap -- that is the error.
#: (An incomplete ``checkpoint.new`` is the normal state after a crash
#: during a snapshot.)
_SNAPSHOT_SEVERITY = "info"


def _snapshot_start(path: str, result: ReplayResult, upto_seq: int | None
                    ) -> tuple[RunState, int, Position | None]:
    try:
        snap = load_snapshot(path)
    except NoSnapshot as exc:
        missing_only = all(p.endswith(": missing")
                           for p in getattr(exc, "problems", ()))
        if not missing_only:
            result.diagnostics.append(Diagnostic(
                "snapshot", path, None, exc.reason,
                severity=_SNAPSHOT_SEVERITY))
        result.snapshot_note = exc.reason
        return RunState(), 0, None
    if upto_seq is not None and snap.seq > upto_seq:
        result.snapshot_note = (f"{snap.name} covers seq {snap.seq}, beyond "
                                f"the requested seq {upto_seq}; not used")
        return RunState(), 0, None
    for problem in snap.problems:
        if not problem.endswith("missing"):
            result.diagnostics.append(Diagnostic(
                "snapshot", path, None, f"{problem} (fell back on "
                f"{snap.name})", severity=_SNAPSHOT_SEVERITY))
    try:
        state, position = _run_state_of(snap)
    except Exception as exc:
        # The CRC matched, so the writer (or a buggy or foreign one) wrote
        # this: whatever its content makes fail, start without it.
        result.diagnostics.append(Diagnostic(
            "snapshot", snap.path, None,
            f"snapshot content is not a run state: {exc}",
            severity=_SNAPSHOT_SEVERITY))
        return RunState(), 0, None
    result.snapshot = snap
    result.snapshot_note = snap.reason
    return state, snap.seq, position


def _run_state_of(snap: Snapshot) -> tuple[RunState, Position]:
    """The run state and reading position a checkpoint holds (FORMAT.md,
    section 5); raises BadRecord if its content has another shape."""
    body = snap.state
    if type(body) is not dict or "state" not in body \
            or "position" not in body:
        raise BadRecord("expected a map with 'state' and 'position'")
    position = body["position"]
    # A list as written (FORMAT.md); a tuple too, as the writer accepts it.
    if not (type(position) in (list, tuple) and len(position) == 2
            and all(type(v) is int for v in position)
            and 0 <= position[0] < 1 << 32 and 0 <= position[1] < 1 << 63):
        raise BadRecord("'position' is not [segment number, byte offset]")
    state = RunState.from_snapshot(body["state"], snap.seq)
    return state, Position(position[0], position[1])


_gc_lock = threading.Lock()
_gc_pauses = 0          # replays running with the collector paused
_gc_was_enabled = False


@contextlib.contextmanager
def cyclic_gc_paused():
    """Pause CPython's cyclic garbage collector for a bulk load.

    Replay allocates millions of short-lived containers (records, payload
    lists) and keeps many values: the collector would scan the growing
    state over and over (~6% of replay time) to find cycles that decoded
    msgpack cannot form.  Reference counting still frees everything.
    Concurrent replays (threads) share one pause: the last to finish
    restores the collector to what it was before the first began."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def replay(path: str | os.PathLike, *, upto_seq: int | None = None,
           max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
           on_record: Callable[[int], None] | None = None,
           compact_floats: bool = False,
           trail: bool = False,
           _hold: dict | None = None) -> ReplayResult:
    """Rebuild the state of the journal at ``path``.

    ``upto_seq``: stop after this sequence number (resume uses the seq of the
    last checkpoint).  Only *trusted* records are applied: a record whose
    predecessors are not all present is counted in ``records_untrusted`` and
    left out.  ``on_record(seq)`` is called per applied record (progress).

    ``compact_floats`` (recovery): a list dataset that only ever received
    Python floats by ``append_to`` (an empty list set, then float appends)
    comes back as a float64 numpy array instead of a list -- the same
    content in an HDF5 file, 8 bytes per value instead of ~32.

    ``trail`` (recovery): keep ``result.trail``, the shape of each applied
    record (for finding a scan point the crash cut).
    """
    path = os.fspath(path)
    result = ReplayResult(path, RunState())
    state, after_seq, position = _snapshot_start(path, result, upto_seq)
    result.state = state
    reader = JournalReader(path, max_record_bytes=max_record_bytes,
                           after_seq=after_seq, start=position)
    apply = state.apply
    seen = untrusted = bad = 0
    if trail:
        shapes = result.trail = RecordTrail(from_start=position is None
                                            and after_seq == 0)
        shape_of, shape_ids = shapes.add, shapes.ids.append
    else:
        shapes = shape_of = shape_ids = None
    # Set after a record that cannot be applied: everything after it
    # depends on it, so nothing later is trusted either.
    poisoned = False
    # Scalar appends to plain-list datasets (most records of a long scan,
    # often to several datasets in turn) go straight to the lists: the same
    # effect as DatasetState.append_to, which cannot fail on a list.
    # key -> [list, float column or None]; with compact_floats, float
    # values go to the column (an array('d'), the dataset's tail) and are
    # moved into the list only when something else needs it.  An entry is
    # valid until a record that may touch its key (see ``forget``).
    targets: dict[str, list] = {}
    list_target = state.datasets.list_target

    def fast_target(key):
        target = list_target(key)
        if target is None:
            return None
        entry = targets[key] = [
            target, array.array("d") if compact_floats and not target
            else None, shapes.append_key_id(key) if shapes is not None
            else None]
        return entry

    def forget(key=None):
        # The datasets must be whole lists again before a record other
        # than a fast append can look at them: this key's, or all.
        for k in ([key] if key is not None else list(targets)):
            entry = targets.pop(k, None)
            if entry is not None and entry[1]:
                entry[0].extend(entry[1])
    fast_seq = 0  # last record applied that way, not yet in state.last_seq
    # With a per-record callback every record goes through apply().
    append_type = REC_APPEND if on_record is None else None
    stop_after = upto_seq if upto_seq is not None else 1 << 64
    # Records of an open point (format 2): applied together when its
    # point_end is read, left out when the journal ends before it.
    pending: list | None = None
    pending_begin = 0

    def bad_record(seq, rtype, segment, offset, exc):
        result.diagnostics.append(Diagnostic(
            "bad_record", os.path.join(path, segment), offset,
            f"record seq {seq} ({type_name(rtype)}) cannot be "
            f"applied: {exc}; later records are not trusted",
            seq=seq))

    batches = reader.iter_batches()
    if _hold is not None:
        batches = _upto_last_checkpoint(batches, _hold)
    with cyclic_gc_paused():
        for batch in batches:
            done = batch[-1][0] > stop_after
            if done:
                batch = list(itertools.takewhile(
                    lambda r: r[0] <= stop_after, batch))
            seen += len(batch)
            if shapes is not None:
                shapes.trim()
            for seq, rtype, payload, segment, offset, trusted in batch:
                if not trusted or poisoned:
                    untrusted += 1
                    continue
                # Fast appends note their shape below, where the key's
                # entry holds it.
                if shape_of is not None and rtype not in _UNSHAPED and \
                        (rtype != REC_APPEND or pending is not None):
                    shape_of(rtype, payload)
                if pending is not None:
                    if rtype == REC_POINT_END and type(payload) is list:
                        if fast_seq:
                            state.last_seq, state.closed = fast_seq, False
                            fast_seq = 0
                        forget()
                        for i, record in enumerate(pending):
                            try:
                                apply(*record[:3])
                            except BadRecord as exc:
                                bad_record(*record[:2], *record[3:], exc)
                                poisoned = True
                                bad += 1
                                untrusted += len(pending) - i - 1
                                break
                            if on_record is not None:
                                on_record(record[0])
                        pending = None
                        if poisoned:
                            untrusted += 1
                            continue
                        state.last_seq, state.closed = seq, False
                        continue
                    if rtype != REC_CLOSE and rtype != REC_POINT_BEGIN \
                            and rtype != REC_POINT_END:
                        pending.append((seq, rtype, payload, segment,
                                        offset))
                        continue
                    # A close inside a point (the writer stopped mid-point)
                    # ends it unfinished; a nested point_begin is damage.
                    if rtype == REC_CLOSE:
                        result.partial_point = {
                            "begin_seq": pending_begin,
                            "last_seq": pending[-1][0] if pending
                            else pending_begin,
                            "records": [r[:3] for r in pending]}
                        pending = None
                if rtype == REC_POINT_BEGIN and pending is None \
                        and type(payload) is list:
                    if fast_seq:
                        state.last_seq, state.closed = fast_seq, False
                        fast_seq = 0
                    pending, pending_begin = [], seq
                    continue
                if rtype == append_type and type(payload) is list \
                        and len(payload) == 2 and type(payload[0]) is str:
                    entry = targets.get(payload[0]) or \
                        fast_target(payload[0])
                    if entry is not None:
                        column = entry[1]
                        value = payload[1]
                        if column is not None and type(value) is float:
                            column.append(value)
                        else:
                            if column:
                                entry[0].extend(column)
                                del column[:]
                            entry[0].append(value)
                        fast_seq = seq
                        if shape_ids is not None:
                            shape_ids(entry[2])
                        continue
                if shape_of is not None and rtype == REC_APPEND:
                    shape_of(rtype, payload)
                if fast_seq:
                    state.last_seq, state.closed, fast_seq = fast_seq, False, 0
                if targets:
                    if rtype in _KEYED and type(payload) is list and payload \
                            and type(payload[0]) is str:
                        forget(payload[0])
                    elif rtype not in _NO_DATASETS:
                        forget()
                try:
                    if rtype == REC_POINT_BEGIN or rtype == REC_POINT_END:
                        raise BadRecord(
                            "point marker is not an array"
                            if type(payload) is not list else
                            "point_begin inside an open point"
                            if rtype == REC_POINT_BEGIN else
                            "point_end without point_begin")
                    apply(seq, rtype, payload)
                except BadRecord as exc:
                    bad_record(seq, rtype, segment, offset, exc)
                    poisoned = True
                    bad += 1
                    continue
                if on_record is not None:
                    on_record(seq)
            if done:
                break
    if pending is not None:
        # The journal ends inside a point (a crash before its point_end):
        # none of it is applied -- it is kept aside, and said.
        result.partial_point = {
            "begin_seq": pending_begin,
            "last_seq": pending[-1][0] if pending else pending_begin,
            "records": [r[:3] for r in pending]}
    if fast_seq:
        state.last_seq, state.closed = fast_seq, False
    if poisoned and shapes is not None:
        shapes.valid = False    # it holds the shape of the bad record
    if compact_floats:
        _columns_to_arrays(state, targets)
    forget()
    result.diagnostics[:0] = reader.diagnostics
    partial = result.partial_point
    left_aside = 0 if partial is None else len(partial["records"]) + 1
    result.records_applied = seen - untrusted - bad - left_aside
    result.records_untrusted = untrusted
    result.clean_close = state.closed
    return result


#: Records the writer adds on its own timing (not the experiment's): a
#: scan's pattern of records is looked for without them.
_UNSHAPED = frozenset((REC_HEARTBEAT, REC_SEGMENT_SYNCED))
#: Record types whose only dataset effect is on the key in payload[0].
_KEYED = frozenset((REC_SET, REC_MUTATE, REC_APPEND))
#: Record types that change no dataset of ``local``/``broadcast``.
_NO_DATASETS = frozenset((REC_RUN_INFO, REC_STAGE, REC_ARCHIVE,
                          REC_CHECKPOINT, REC_RESUMED_FROM, REC_CLOSE,
                          REC_HEARTBEAT, REC_POINT_BEGIN, REC_POINT_END,
                          REC_SEGMENT_SYNCED))


def _columns_to_arrays(state: RunState, targets: dict) -> None:
    """compact_floats: each dataset that is an empty list plus a float
    column becomes that column as a float64 array (no copy), wherever the
    list object is (``local`` and, shared, ``broadcast``)."""
    import numpy as np
    datasets = state.datasets
    for key, (target, column, _) in list(targets.items()):
        if not column or target:
            continue
        values = np.frombuffer(column, dtype=np.float64)
        if datasets.local.get(key) is target:
            datasets.local[key] = values
        entry = datasets.broadcast.get(key)
        if entry is not None and entry[1] is target:
            datasets.broadcast[key] = (entry[0], values, entry[2])
        del targets[key]


#: Records held back by replay_to_last_checkpoint before it gives up the
#: one-pass replay (bounds the memory of decoded records kept).
HOLD_LIMIT = 1 << 16


def _upto_last_checkpoint(batches, hold: dict):
    """The batches of a reader, cut after the last trusted checkpoint
    record: records after one are held back until the next one releases
    them, and never yielded when none follows.  If more than
    ``hold["limit"]`` records would be held, the oldest are yielded
    anyway and ``hold["overran"]`` is set (and cleared again by a later
    checkpoint: then they were before it)."""
    limit = hold.get("limit", HOLD_LIMIT)
    held: list = []
    count = 0
    for batch in batches:
        rtypes = [r[1] for r in batch]
        k = len(rtypes) - 1 - rtypes[::-1].index(REC_CHECKPOINT) \
            if REC_CHECKPOINT in rtypes else None
        if k is not None and batch[k][5]:
            yield from held
            held, count = [], 0
            # What overran before is before this checkpoint: harmless.
            hold["overran"] = False
            yield batch[:k + 1]
            batch = batch[k + 1:]
            if not batch:
                continue
        held.append(batch)
        count += len(batch)
        while count > limit:
            hold["overran"] = True
            first = held.pop(0)
            count -= len(first)
            yield first


def replay_to_last_checkpoint(path: str | os.PathLike,
                              max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
                              ) -> ReplayResult:
    """The state at the last checkpoint :func:`replay` trusts and applies:
    the same state as ``replay(path, upto_seq=last_checkpoint_seq(path))``
    (``state.checkpoint`` None when there is none), in one pass over the
    journal when the records after that checkpoint are fewer than
    :data:`HOLD_LIMIT` (they are decoded and held back, not applied); else,
    or when a record after it was applied anyway, in two."""
    hold: dict = {"overran": False}
    result = replay(path, max_record_bytes=max_record_bytes, _hold=hold)
    state = result.state
    if state.checkpoint is None or (not hold["overran"]
                                    and state.last_seq
                                    == state.checkpoint_seq):
        return result
    return replay(path, upto_seq=state.checkpoint_seq,
                  max_record_bytes=max_record_bytes)


def last_checkpoint_seq(path: str | os.PathLike,
                        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
                        ) -> int | None:
    """Seq of the last checkpoint that :func:`replay` trusts and applies.

    A replay, not a raw scan: a checkpoint record after one that does not
    decode or cannot be applied is not trusted, and one covered by the
    snapshot (whose segments may be deleted) comes from the snapshot."""
    state = replay(path, max_record_bytes=max_record_bytes).state
    return state.checkpoint_seq if state.checkpoint is not None else None
