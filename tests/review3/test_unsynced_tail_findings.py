"""Review 3: format 3's reading rule for segments synced in the background
(FORMAT.md 8.6) and the writer's reopen after an unsynced tear (11).

Real damage to a journal whose every record was acknowledged as durable
(sync() returned) must be reported as an error, and the writer's reopen
must never delete acknowledged segments.  Today a deleted segment, or one
zeroed sector at the start of a segment, makes the reader call the rest of
the journal an ``unsynced_tail`` (a warning: "nothing after this was
acknowledged") and drop it, and the writer's reopen unlinks it."""

from __future__ import annotations

import os

import pytest

from review3_support import (acknowledged_journal,
                             journal_with_marker_behind_records,
                             small_background_segments)

from artiq_journal.errors import JournalError
from artiq_journal.journal.reader import read_all
from artiq_journal.journal.writer import JournalWriter


@pytest.fixture(autouse=True)
def _background(monkeypatch):
    small_background_segments(monkeypatch)


def _reopen(path):
    try:
        JournalWriter(path, fsync="group", segment_bytes=1000,
                      heartbeat_interval=None).abandon()
    except JournalError:
        pass            # refusing a damaged journal is fine


# R3-1: reader.py:289-292 (_read_segment, first_seq > next_seq after a
#   flagged segment) + _unsynced_tear looking only for a segment_synced
#   record naming exactly the unsettled segment: a deleted middle segment
#   (which held that record) is taken for a power-loss tear.
# Fixed: R3-1: a deleted middle segment is reported as unsynced_tail
#   (warning) and every later, acknowledged segment is dropped without
#   an error; later segments' segment_synced records (settled strictly
#   in order) prove the earlier segment was synced
def test_deleted_middle_segment_is_an_error_not_an_unsynced_tail(tmp_path):
    path = str(tmp_path / "a.journal")
    acked = acknowledged_journal(path)
    assert len([n for n in os.listdir(path) if n.startswith("segment-")]) >= 5
    os.unlink(os.path.join(path, "segment-3.log"))
    records, reader = read_all(path)
    assert reader.damaged, reader.diagnostics
    assert any(d.severity == "error" for d in reader.diagnostics)
    # The records after the hole are still read (untrusted), as format 2
    # did for a missing segment (gap).
    assert max(r.seq for r in records) == acked


# Fixed: R3-2: writer.py:351-366 -- reopening a journal with a deleted middle
#   segment unlinks every later segment, although each held records
#   acknowledged by sync()
def test_reopen_never_deletes_acknowledged_segments_after_a_hole(tmp_path):
    path = str(tmp_path / "a.journal")
    acknowledged_journal(path)
    os.unlink(os.path.join(path, "segment-3.log"))
    before = sorted(os.listdir(path))
    _reopen(path)
    after = sorted(os.listdir(path))
    assert [n for n in before if n not in after] == []


# R3-3: reader.py:275-277 + _vouching (reader.py:696-736) stops at the
#   first record that is not intact, so an intact segment_synced record
#   for segment 1 *behind* a zeroed sector of segment 2 is not seen.
# Fixed: R3-3: one zeroed 512-byte sector at the start of a segment (header +
#   first record) is reported as unsynced_tail (warning), the rest of
#   the journal -- all acknowledged, including an intact segment_synced
#   record for the segment before -- is silently dropped
def test_zeroed_sector_at_a_segment_start_is_an_error(tmp_path):
    path = str(tmp_path / "a.journal")
    acked = journal_with_marker_behind_records(path)
    with open(os.path.join(path, "segment-2.log"), "r+b") as f:
        f.write(bytes(512))
    records, reader = read_all(path)
    assert reader.damaged, reader.diagnostics
    assert not any(d.kind == "unsynced_tail" for d in reader.diagnostics)
    assert max(r.seq for r in records) == acked


# Fixed: R3-3 (writer side): reopening after that zeroed sector unlinks
#   segment 2 and every later segment (acknowledged data)
def test_reopen_after_a_zeroed_sector_deletes_nothing(tmp_path):
    path = str(tmp_path / "a.journal")
    journal_with_marker_behind_records(path)
    with open(os.path.join(path, "segment-2.log"), "r+b") as f:
        f.write(bytes(512))
    before = sorted(os.listdir(path))
    _reopen(path)
    after = sorted(os.listdir(path))
    assert [n for n in before if n not in after] == []
