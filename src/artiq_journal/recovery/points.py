"""Keep the datasets of a scan in step: set aside a point the crash cut.

Scan frameworks (ndscan, DAX, atomiq) and hand-written scans append one
value per point to several datasets in turn (``points.axis_0``, then each
``points.channel_*``).  A crash between those appends leaves some of the
lists one entry longer than the others; readers of such files expect whole
points.  Recovery therefore looks at the records that end the journal:

* the operations of a scan repeat with a fixed period (the same sequence
  of record types and dataset keys per point, checkpoints included);
* the datasets appended in one period must all be lists whose lengths
  differ by at most one, and the longer ones must be exactly the datasets
  appended last, in the period's order (a prefix of one point).

When both hold, the last entry of each longer list is the cut point's: it
is removed from the datasets and kept aside (``artiq_journal/partial_point``
in the recovered file), and the report says so.  Otherwise nothing is
changed: this is framework-aware trimming by evidence, never a guess.
Only the trusted records that replay applied are used (the journal's tail
window, chained up to the last trusted sequence number).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..journal.constants import REC_APPEND, REC_HEARTBEAT
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


def _trusted_tail(journal_dir: str, state: RunState) -> list:
    """The tail records up to the last sequence number replay applied,
    contiguous; empty when the window does not reach it."""
    view = look(journal_dir)
    records = [r for r in view.tail if r.seq <= state.last_seq]
    if not records or records[-1].seq != state.last_seq:
        return []
    chain = [records[-1]]
    for r in reversed(records[:-1]):
        if r.seq != chain[-1].seq - 1 or r.payload is None:
            break
        chain.append(r)
    chain.reverse()
    return [r for r in chain if r.rtype != REC_HEARTBEAT]


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
    records = _trusted_tail(journal_dir, state)
    tokens = [_token(r.rtype, r.payload) for r in records]
    found = _period(tokens)
    if found is None:
        return None
    period, start = found
    tokens = tokens[start:]
    cycle = tokens[-period:]
    appended = [key for rtype, key in cycle if rtype == REC_APPEND]
    if len(appended) < 2 or None in appended or \
            len(set(appended)) != len(appended):
        return None
    lists = {key: _list_of(state, key) for key in appended}
    if any(v is None for v in lists.values()) or \
            len({id(v) for v in lists.values()}) != len(lists):
        return None
    lengths = {key: len(v) for key, v in lists.items()}
    short = min(lengths.values())
    longer = {key for key in appended if lengths[key] == short + 1}
    if not longer or any(n not in (short, short + 1)
                         for n in lengths.values()):
        return None
    # The longer lists must be the ones appended last: a prefix of the
    # point, in its order, ending the journal.
    last_appends = [key for rtype, key in tokens if rtype == REC_APPEND]
    ahead = last_appends[-len(longer):]
    point_order = _rotate_to(appended, ahead)
    if set(ahead) != longer or point_order is None or \
            point_order[:len(ahead)] != ahead:
        return None
    values = {key: lists[key].pop() for key in ahead}
    missing = [key for key in point_order if key not in values]
    return PartialPoint(values, missing)


def _rotate_to(appended: list, ahead: list) -> list | None:
    """``appended`` (one period, starting anywhere) rotated so that it
    starts with ``ahead[0]``: the order of the keys within a point."""
    if not ahead or ahead[0] not in appended:
        return None
    i = appended.index(ahead[0])
    return appended[i:] + appended[:i]
