"""Helpers for tests/review3 (the third independent review: format 3's
background rotation sync, segment_synced and the unsynced_tail rule)."""

from __future__ import annotations

import os
import threading

from artiq_journal.journal import writer as writer_module
from artiq_journal.journal.constants import REC_SEGMENT_SYNCED, REC_SET
from artiq_journal.journal.fsio import FileOps
from artiq_journal.journal.reader import read_all
from artiq_journal.journal.writer import JournalWriter


def small_background_segments(monkeypatch) -> None:
    """Let 1000-byte segments rotate in the background (as 64 MiB ones do)."""
    monkeypatch.setattr(writer_module, "BACKGROUND_ROTATION_MIN_BYTES", 0)


def record(i: int) -> list:
    return [f"k{i}", b"x" * 300, {}, False, False, True]


def acknowledged_journal(path: str, n: int = 20) -> int:
    """A journal of flagged 1000-byte segments in which every record was
    acknowledged as durable (sync() after each append), left by a killed
    writer (no close).  Returns the last acknowledged seq."""
    w = JournalWriter(path, fsync="group", segment_bytes=1000,
                      group_interval=0.001, heartbeat_interval=None)
    for i in range(n):
        w.append(REC_SET, record(i))
        w.sync()
    acked = w.durable_seq
    assert acked == w.last_seq
    w.abandon()
    return acked


class HeldBackgroundSync(FileOps):
    """The background sync of a rotated segment waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def fdatasync(self, fd):
        if threading.current_thread().name.startswith(
                "artiq-journal segment sync"):
            self.gate.wait(10)
        os.fdatasync(fd)


def journal_with_marker_behind_records(path: str) -> int:
    """Segments 1..4 (flagged); segment 2's segment_synced record for
    segment 1 is NOT its first record (records were appended while
    segment 1 was still syncing, as under any real load).  Every record is
    acknowledged (sync()).  Returns the last acknowledged seq."""
    ops = HeldBackgroundSync()
    w = JournalWriter(path, fsync="group", ops=ops, segment_bytes=1000,
                      group_interval=0.001, heartbeat_interval=None)
    i = 0
    while w._segment == 1:
        w.append(REC_SET, record(i))
        i += 1
    # Segment 1 syncs in the background (held); two records go into 2.
    w.append(REC_SET, record(i))
    w.append(REC_SET, record(i + 1))
    i += 2
    ops.gate.set()
    w.sync()                            # settles 1: its marker comes now
    while w._segment < 4:
        w.append(REC_SET, record(i))
        i += 1
        w.sync()
    w.append(REC_SET, record(i))        # data in the last segment too
    w.sync()
    acked = w.durable_seq
    assert acked == w.last_seq
    w.abandon()
    records, reader = read_all(path)
    assert reader.diagnostics == []
    seg2 = [r for r in records if r.segment == "segment-2.log"]
    assert seg2[0].rtype == REC_SET
    assert any(r.rtype == REC_SEGMENT_SYNCED and r.payload[0] == 1
               for r in seg2[1:])
    return acked


def segment_sizes(path: str) -> dict:
    return {n: os.path.getsize(os.path.join(path, n))
            for n in os.listdir(path) if n.startswith("segment-")}
