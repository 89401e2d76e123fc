"""The shape of the records a replay applied: one small integer per record
naming its (record type, dataset key), in order.

Recovery looks for a scan point the crash cut by the period with which
these shapes repeat (``recovery/points.py``).  Collected while replay
decodes the records anyway, it costs 2 bytes and well under 100 ns per
record, where reading the journal's last segment again to find the scan's
set-up cost as much as the replay itself -- twice.
"""

from __future__ import annotations

import array
from typing import Any

from .journal.constants import REC_APPEND

#: Distinct shapes kept apart; a journal with more gives up the trail.
MAX_SHAPES = 1 << 16
#: Characters of the keys the shapes hold, all told (a journal of long
#: distinct keys gives up the trail instead of holding them all).
MAX_KEY_CHARS = 16 << 20
#: Records remembered; beyond, the oldest half is dropped (and with it the
#: sight of the scan's start: the analysis then says "not known").
MAX_RECORDS = 1 << 25


class RecordTrail:
    """Shape ids of the applied records (``ids``) and what each id stands
    for (``shapes[id] == (rtype, key or None)``)."""

    def __init__(self, from_start: bool) -> None:
        self.ids = array.array("H")
        self.shapes: list[tuple[int, Any]] = []
        self._index: dict[tuple[int, Any], int] = {}
        self._key_chars = 0
        #: The trail begins with the journal's first record (no snapshot).
        self.from_start = from_start
        #: Records were dropped from its beginning (MAX_RECORDS).
        self.truncated = False
        #: False once it cannot be trusted: too many shapes, or a record
        #: that could not be applied (then nothing after it was).
        self.valid = True

    def shape_id(self, rtype: int, key: Any) -> int:
        shape = (rtype, key)
        found = self._index.get(shape)
        if found is not None:
            return found
        if key is not None:
            self._key_chars += len(key)
        if len(self.shapes) >= MAX_SHAPES or \
                self._key_chars > MAX_KEY_CHARS:
            # Given up: the analysis reads the journal's last segment.
            self.valid = False
            self.shapes, self._index = [(0, None)], {}
            return 0
        found = self._index[shape] = len(self.shapes)
        self.shapes.append(shape)
        return found

    def trim(self) -> None:
        """Keep memory bounded (called per batch, not per record)."""
        ids = self.ids
        if len(ids) > MAX_RECORDS:
            del ids[:len(ids) // 2]
            self.truncated = True

    def add(self, rtype: int, payload: Any) -> None:
        """One applied record (any type but heartbeats)."""
        key = payload[0] if type(payload) is list and payload and \
            type(payload[0]) is str else None
        self.ids.append(self.shape_id(rtype, key))

    def append_key_id(self, key: str) -> int:
        """The id of an ``append`` to ``key`` (kept by replay's fast path)."""
        return self.shape_id(REC_APPEND, key)
