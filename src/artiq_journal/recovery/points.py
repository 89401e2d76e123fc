"""Keep the datasets of a scan in step: set aside a point the crash cut.

Scan frameworks (ndscan, DAX, atomiq) and hand-written scans append one
value per point to several datasets in turn (``points.axis_0``, then each
``points.channel_*``).  A crash between those appends leaves some of the
lists one entry longer than the others; readers of such files expect whole
points.  Recovery therefore looks at the records that end the journal:

* the operations of a scan repeat with a fixed period (the same sequence
  of record types and dataset keys per point, checkpoints included), after
  set-up records that do not repeat (``set`` of the lists, stages);
* points begin where the repeating part begins, so the journal ends inside
  a point exactly when the number of repeating records is not a multiple
  of the period; the datasets that point appended (distinct lists) are the
  cut point's.

Then the last entry of each of those lists is removed from the datasets and
kept aside (``artiq_journal/partial_point`` in the recovered file), and the
report says so.  The records looked at are the trusted ones replay
applied, as replay saw them (their shapes, ``trail.py``: no second read of
the journal); only when those begin inside the scan (replay started from a
snapshot) are the journal's files read: the last 64 KiB, then the whole
last segment.  When the set-up is not in sight either way, where a point
begins is not known, and nothing is changed: trimming by evidence, never
by a guess.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..journal.constants import (REC_APPEND, REC_HEARTBEAT,
                                 REC_SEGMENT_SYNCED)
from ..journal.reader import list_segments
from ..journal.tail import read_tail
from ..runstate import RunState
from ..trail import RecordTrail

#: Longest point (records per period) looked for.
MAX_PERIOD = 256


@dataclass
class PartialPoint:
    """The entries a crash left of the last point: ``values`` maps each
    dataset key to the value removed from its end; ``missing`` lists the
    keys of that point that were never appended."""

    values: dict
    missing: list


def _token(rtype: int, payload: Any) -> tuple:
    key = payload[0] if isinstance(payload, list) and payload and \
        isinstance(payload[0], str) else None
    return (rtype, key)


def _period(tokens: list) -> tuple[int, int] | None:
    """``(p, start)``: the smallest period p with which the END of the
    sequence repeats, over at least two whole periods, and where that
    repeating part starts."""
    n = len(tokens)
    for p in range(1, min(MAX_PERIOD, n // 2) + 1):
        i = n - 1 - p
        while i >= 0 and tokens[i] == tokens[i + p]:
            i -= 1
        if n - (i + 1) >= 2 * p:
            return p, i + 1
    return None


def _leading_key(payload: bytes) -> list:
    """``[key]`` when the payload is an array whose first item is a string,
    else ``[]``: all a token needs, without decoding the rest (the records
    are trusted ones replay decoded already)."""
    head = payload[0] if payload else 0
    if 0x90 <= head <= 0x9f:
        count, pos = head & 0x0f, 1
    elif head == 0xdc and len(payload) >= 3:
        count, pos = int.from_bytes(payload[1:3], "big"), 3
    elif head == 0xdd and len(payload) >= 5:
        count, pos = int.from_bytes(payload[1:5], "big"), 5
    else:
        return []
    if count == 0 or pos >= len(payload):
        return []
    tag = payload[pos]
    if 0xa0 <= tag <= 0xbf:
        size, pos = tag & 0x1f, pos + 1
    elif tag in _STR_SIZE_BYTES:
        n = _STR_SIZE_BYTES[tag]
        size = int.from_bytes(payload[pos + 1:pos + 1 + n], "big")
        pos += 1 + n
    else:
        return []
    if pos + size > len(payload):
        return []
    try:
        return [payload[pos:pos + size].decode("utf-8")]
    except UnicodeDecodeError:
        return []


_STR_SIZE_BYTES = {0xd9: 1, 0xda: 2, 0xdb: 4}


def _trusted_tail(journal_dir: str, state: RunState, window: int) -> list:
    """The tail records up to the last sequence number replay applied,
    contiguous, their payloads reduced to the leading key; empty when the
    window does not reach it."""
    segments = list_segments(journal_dir)
    if not segments:
        return []
    tail, _, _ = read_tail(segments[-1][1], window, decode=_leading_key)
    records = [r for r in tail if r.seq <= state.last_seq]
    if not records or records[-1].seq != state.last_seq:
        return []
    chain = [records[-1]]
    for r in reversed(records[:-1]):
        if r.seq != chain[-1].seq - 1 or r.payload is None:
            break
        chain.append(r)
    chain.reverse()
    return [r for r in chain
            if r.rtype != REC_HEARTBEAT and r.rtype != REC_SEGMENT_SYNCED]


def _last_entries(state: RunState, keys: list) -> dict | None:
    """``{key: its dataset}`` when each key names a distinct, non-empty
    list -- or float64 vector, as recovery compacts float lists -- that
    can give up its last entry; None otherwise."""
    datasets = state.datasets
    found = {}
    for key in keys:
        if key in datasets.broadcast:
            value = datasets.broadcast[key][1]
        else:
            value = datasets.local.get(key)
        if not ((type(value) is list or (isinstance(value, np.ndarray)
                                         and value.ndim == 1))
                and len(value)):
            return None
        found[key] = value
    if len({id(v) for v in found.values()}) != len(found):
        return None
    return found


def _pop_last(state: RunState, key: str, value: Any) -> Any:
    """Remove the last entry of the dataset ``value`` of ``key`` (wherever
    the state holds it) and return that entry."""
    if type(value) is list:
        return value.pop()     # the one list object, local and broadcast
    datasets = state.datasets
    last, shorter = value[-1].item(), value[:-1]
    if datasets.local.get(key) is value:
        datasets.local[key] = shorter
    entry = datasets.broadcast.get(key)
    if entry is not None and entry[1] is value:
        datasets.broadcast[key] = (entry[0], shorter, entry[2])
    return last


def split_partial_point(journal_dir: str, state: RunState,
                        trail: RecordTrail | None = None
                        ) -> PartialPoint | None:
    """Remove from ``state`` the entries of a scan point that the crash cut
    (see the module docstring) and return them; None when the journal ends
    on a whole point or no point structure can be seen.  ``trail``: the
    shapes replay saw (``replay(..., trail=True)``); the journal's files
    are read only when it does not reach back to the scan's start."""
    if trail is not None and trail.valid:
        ids = trail.ids
        found = _cut_point(_TrailTokens(trail), _period_of_ids(ids), state)
        if found is not _UNKNOWN_PHASE:
            return found
        if trail.from_start and not trail.truncated:
            return None    # the whole journal was in sight
    for window in (DEFAULT_WINDOW, MAX_WINDOW):
        tokens = [_token(r.rtype, r.payload)
                  for r in _trusted_tail(journal_dir, state, window)]
        found = _cut_point(tokens, _period(tokens), state)
        if found is not _UNKNOWN_PHASE:
            return found
    return None


#: ``_cut_point``'s answer when the window shows no start of the scan.
_UNKNOWN_PHASE = object()
#: A second, larger look when the first window began inside the scan.
DEFAULT_WINDOW = 64 << 10
MAX_WINDOW = 64 << 20


class _TrailTokens:
    """A trail read as a sequence of ``(rtype, key)`` tokens."""

    def __init__(self, trail: RecordTrail) -> None:
        self._ids, self._shapes = trail.ids, trail.shapes

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: slice) -> list:
        shapes = self._shapes
        return [shapes[i] for i in self._ids[index]]


def _period_of_ids(ids: array.array) -> tuple[int, int] | None:
    """:func:`_period` of a trail of shape ids, in time independent of
    how long the scan ran: which period qualifies depends only on the last
    2 * MAX_PERIOD records; where the repetition starts is then found with
    one vectorised comparison."""
    tail = ids[-(2 * MAX_PERIOD + 1):]
    found = _period(list(tail))
    if found is None:
        return None
    period, start = found
    if start > 0 or len(tail) == len(ids):
        return period, len(ids) - len(tail) + start
    a = np.frombuffer(ids, dtype=np.uint16)
    differ = np.flatnonzero(a[:-period] != a[period:])
    return period, int(differ[-1]) + 1 if differ.size else 0


def _cut_point(tokens: Any, found: tuple[int, int] | None,
               state: RunState) -> Any:
    """The cut point from ``tokens`` (a sequence of ``(rtype, key)``) and
    their period and its start (:func:`_period`)."""
    if found is None:
        return None
    period, start = found
    # Which datasets a point appends to does not depend on where in the
    # period points begin: decided before (and without) looking further
    # back, so a scan that appends to one list -- or to one list several
    # times per point -- never costs the read of the whole last segment.
    appended = [key for rtype, key in tokens[start:start + period]
                if rtype == REC_APPEND]
    if len(appended) < 2 or None in appended or \
            len(set(appended)) != len(appended):
        return None
    if start == 0:
        # The repeating part begins where the window does: where a point
        # begins is not known, and guessing could cut a whole point.
        return _UNKNOWN_PHASE
    # The scan starts at ``start`` (after its set-up records): points are
    # the periods from there, so the journal ends inside one exactly when
    # the count of its repeating records is not a multiple of the period.
    cut = (len(tokens) - start) % period
    if cut == 0:
        return None
    cut_part = tokens[len(tokens) - cut:]
    done = [key for rtype, key in cut_part if rtype == REC_APPEND]
    if not done:
        return None         # the cut point appended nothing yet
    # Each such append must still be the last record naming its key: a
    # set or mutate after it (in the cut point) made the dataset something
    # whose last entry no point appended.
    last = {key: rtype for rtype, key in cut_part}
    if any(last[key] != REC_APPEND for key in done):
        return None
    lists = _last_entries(state, done)
    if lists is None:
        return None
    values = {key: _pop_last(state, key, lists[key]) for key in done}
    missing = [key for key in appended if key not in values]
    return PartialPoint(values, missing)
