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
report says so.  When the set-up is not in sight (the last 64 KiB, then the
whole last segment, begin inside the scan) where a point begins is not
known, and nothing is changed: trimming by evidence, never by a guess.
Only the trusted records that replay applied are used (the journal's tail,
chained up to the last trusted sequence number).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..journal.constants import (REC_APPEND, REC_HEARTBEAT,
                                 REC_SEGMENT_SYNCED)
from ..journal.tail import look
from ..runstate import RunState

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


def _trusted_tail(journal_dir: str, state: RunState, window: int) -> list:
    """The tail records up to the last sequence number replay applied,
    contiguous; empty when the window does not reach it."""
    view = look(journal_dir, window)
    records = [r for r in view.tail if r.seq <= state.last_seq]
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


def _list_of(state: RunState, key: str) -> Any:
    datasets = state.datasets
    if key in datasets.broadcast:
        value = datasets.broadcast[key][1]
    else:
        value = datasets.local.get(key)
    return value if type(value) is list else None


def split_partial_point(journal_dir: str, state: RunState
                        ) -> PartialPoint | None:
    """Remove from ``state`` the entries of a scan point that the crash cut
    (see the module docstring) and return them; None when the journal ends
    on a whole point or no point structure can be seen."""
    for window in (DEFAULT_WINDOW, MAX_WINDOW):
        found = _cut_point(journal_dir, state, window)
        if found is not _UNKNOWN_PHASE:
            return found
    return None


#: ``_cut_point``'s answer when the window shows no start of the scan.
_UNKNOWN_PHASE = object()
#: A second, larger look when the first window began inside the scan.
DEFAULT_WINDOW = 64 << 10
MAX_WINDOW = 64 << 20


def _cut_point(journal_dir: str, state: RunState, window: int) -> Any:
    records = _trusted_tail(journal_dir, state, window)
    tokens = [_token(r.rtype, r.payload) for r in records]
    found = _period(tokens)
    if found is None:
        return None
    period, start = found
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
    point = tokens[start:start + period]
    appended = [key for rtype, key in point if rtype == REC_APPEND]
    if len(appended) < 2 or None in appended or \
            len(set(appended)) != len(appended):
        return None
    done = [key for rtype, key in tokens[-cut:] if rtype == REC_APPEND]
    if not done:
        return None         # the cut point appended nothing yet
    lists = {key: _list_of(state, key) for key in done}
    if any(v is None or not v for v in lists.values()) or \
            len({id(v) for v in lists.values()}) != len(lists):
        return None
    values = {key: lists[key].pop() for key in done}
    missing = [key for key in appended if key not in values]
    return PartialPoint(values, missing)
