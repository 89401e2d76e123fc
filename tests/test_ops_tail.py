"""``journal/tail.py``: the cheap head/tail view agrees with a full read,
also when the tail window starts in the middle of a record."""

from __future__ import annotations

import numpy as np

from artiq_journal.journal.constants import (REC_APPEND, REC_CLOSE,
                                             REC_HEARTBEAT, REC_RUN_INFO,
                                             REC_SET)
from artiq_journal.journal.reader import read_all
from artiq_journal.journal.tail import look
from artiq_journal.journal.writer import JournalWriter


def _journal(tmp_path, n, close=True):
    path = tmp_path / "000000001-Scan.journal"
    w = JournalWriter(path, heartbeat_interval=None)
    w.append(REC_RUN_INFO, {"rid": 1, "class_name": "Scan", "pid": 7})
    w.append(REC_SET, ["ys", [], {}, False, False, True])
    for i in range(n):
        # Payload sizes vary, so window starts fall anywhere in records.
        w.append(REC_APPEND, ["ys", np.arange(i % 7, dtype=float).tolist()])
        if i % 100 == 0:
            w.append(REC_HEARTBEAT, [1000.0 + i])
    if close:
        w.close()
    else:
        w.abandon()
    return path


def test_tail_view_matches_full_read_for_many_window_sizes(tmp_path):
    path = _journal(tmp_path, 5000)
    records, _ = read_all(str(path))
    for window in (100, 1000, 4096, 10_007, 65_536):
        view = look(str(path), window=window)
        assert view.tail, window
        expected = [(r.seq, r.rtype, r.payload) for r in records
                    [-len(view.tail):]]
        assert [(r.seq, r.rtype, r.payload) for r in view.tail] == expected
        assert view.tail[-1].rtype == REC_CLOSE and not view.torn_tail
        assert view.head[0].payload["pid"] == 7
        assert view.last_seq == records[-1].seq
    print(f"{len(records)} records; tail of a 64 KiB window: "
          f"{len(look(str(path)).tail)} records")


def test_torn_and_damaged_tails_are_told_apart(tmp_path):
    path = _journal(tmp_path, 300, close=False)
    seg = path / "segment-1.log"
    data = seg.read_bytes()
    seg.write_bytes(data + b"\x01\x02\x03")  # a record being written
    view = look(str(path))
    assert view.torn_tail and not view.damage_seen
    assert view.last_seq == read_all(str(path))[0][-1].seq
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x40
    seg.write_bytes(bytes(flipped))
    view = look(str(path))
    assert view.damage_seen and not view.torn_tail
