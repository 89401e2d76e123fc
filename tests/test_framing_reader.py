"""The reader against every damage a small journal can suffer.

Every journal here is written by the real JournalWriter; damaged copies are
made by code (truncation at every byte, every single-bit flip, deleted and
rewritten segments).  The invariants, from docs/FORMAT.md section 6:

* the reader never raises;
* a record it returns is exactly a record that was written (same seq, type
  and payload), never damaged data;
* a record is trusted only if every earlier sequence number was returned;
* damage always leaves a diagnostic; cutting bytes off the end is a torn
  tail (severity info), never an error.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from artiq_journal.journal import codec, framing
from artiq_journal.journal.constants import (
    FORMAT_VERSION, RECORD_HEADER_SIZE, REC_APPEND, REC_CHECKPOINT, REC_CLOSE,
    REC_MUTATE, REC_RUN_INFO, REC_SET, REC_STAGE, SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE)
from artiq_journal.journal.reader import JournalReader, read_all
from artiq_journal.journal.writer import JournalWriter

PAYLOADS = [
    (REC_RUN_INFO, {"rid": 7, "class_name": "Scan"}),
    (REC_SET, ["x", np.arange(3, dtype=">i2"), {}, True, False, True]),
    (REC_APPEND, ["y", 1.5]),
    (REC_MUTATE, ["x", (0, 2), -1]),
    (REC_STAGE, ["run", 1700000000.25]),
    (REC_SET, ["t", (1, "a"), None, False, True, False]),
    (REC_CHECKPOINT, [{"i": 3}]),
    (REC_APPEND, ["y", -2]),
    (REC_SET, ["z", np.float32(0.5), {"unit": "V"}, False, False, True]),
    (REC_STAGE, ["analyze", 2.0]),
]
SEGMENT_BYTES = 150


# -- fixtures -----------------------------------------------------------------

def write_journal(path, payloads=PAYLOADS, close=True,
                  segment_bytes=SEGMENT_BYTES) -> dict[int, tuple[int, bytes]]:
    """Write a journal with the real writer; return {seq: (type, packed
    payload)} of what was written (packed bytes: an exact comparison key)."""
    written = {}
    writer = JournalWriter(path, fsync="never", segment_bytes=segment_bytes)
    for rtype, payload in payloads:
        seq = writer.append(rtype, payload)
        written[seq] = (rtype, codec.pack(payload))
    if close:
        writer.close("done")
        written[writer.last_seq] = (REC_CLOSE, codec.pack(["done"]))
    else:
        writer.abandon()
    return written


class Journal:
    """A pristine journal and what was written to it."""

    def __init__(self, path):
        self.path = str(path)
        self.written = write_journal(self.path)
        self.segments = sorted(
            (n for n in os.listdir(self.path)
             if framing.parse_segment_name(n) is not None),
            key=framing.parse_segment_name)
        self.contents = {name: open(os.path.join(self.path, name), "rb").read()
                         for name in self.segments}
        # (segment name, start, end) of every record, in order.
        self.extents = []
        for record in JournalReader(self.path, decode=False):
            self.extents.append((record.segment, record.offset,
                                 record.offset + RECORD_HEADER_SIZE
                                 + len(record.payload), record.seq))

    @property
    def total_bytes(self) -> int:
        return sum(len(c) for c in self.contents.values())

    def copy(self, dest) -> str:
        dest = str(dest)
        shutil.copytree(self.path, dest)
        return dest


@pytest.fixture(scope="module")
def journal(tmp_path_factory) -> Journal:
    j = Journal(tmp_path_factory.mktemp("pristine") / "run.journal")
    with_records = {seg for seg, _, _, _ in j.extents}
    assert len(with_records) >= 3, "fixture must span several segments"
    assert j.total_bytes <= 600, "fixture must stay small: loops are O(bytes)"
    return j


def check_records(records, written) -> list[str]:
    """Violations of: returned == written, trusted => nothing missing."""
    problems = []
    seen = set()
    for record in records:
        original = written.get(record.seq)
        if original is None:
            problems.append(f"seq {record.seq} was never written")
        elif (record.rtype, codec.pack(record.payload)) != original:
            problems.append(f"seq {record.seq} returned with different "
                            "content")
        if record.trusted and not all(s in seen
                                      for s in range(1, record.seq)):
            problems.append(f"seq {record.seq} trusted although an earlier "
                            "record is missing")
        seen.add(record.seq)
    return problems


def errors(reader):
    return [d for d in reader.diagnostics if d.severity == "error"]


# -- the intact journal -------------------------------------------------------

def test_intact_journal_reads_back_exactly_with_no_diagnostics(journal):
    records, reader = read_all(journal.path)
    assert check_records(records, journal.written) == []
    assert [r.seq for r in records] == sorted(journal.written)
    assert all(r.trusted for r in records)
    assert reader.diagnostics == []
    assert reader.clean_close
    assert reader.last_trusted_seq == max(journal.written)


def test_segments_hold_consecutive_sequence_numbers(journal):
    previous_last = 0
    for name in journal.segments:
        header = framing.decode_segment_header(journal.contents[name])
        assert header.number == framing.parse_segment_name(name)
        seqs = [seq for seg, _, _, seq in journal.extents if seg == name]
        if seqs:
            assert header.first_seq == seqs[0] == previous_last + 1
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            previous_last = seqs[-1]


# -- truncation ---------------------------------------------------------------

def _truncated(journal, work, cut) -> tuple[str, int]:
    """Cut the journal at global byte ``cut`` (segments concatenated in
    order): earlier segments intact, later ones gone.  Returns (segment,
    offset inside it)."""
    for name in os.listdir(work):
        if framing.parse_segment_name(name) is not None:
            os.unlink(os.path.join(work, name))
    remaining = cut
    for name in journal.segments:
        data = journal.contents[name]
        with open(os.path.join(work, name), "wb") as f:
            f.write(data[:remaining])
        if remaining <= len(data):
            return name, remaining
        remaining -= len(data)
    raise AssertionError("cut beyond the end")


def test_truncation_at_every_byte_returns_exactly_the_complete_records(
        journal, tmp_path):
    work = journal.copy(tmp_path / "cut.journal")
    order = journal.segments
    violations = []
    cuts = 0
    for cut in range(journal.total_bytes + 1):
        name, offset = _truncated(journal, work, cut)
        if 0 < offset < SEGMENT_HEADER_SIZE:
            continue  # inside a segment header: see the next test
        cuts += 1
        try:
            records, reader = read_all(work)
        except Exception as exc:  # noqa: BLE001 - the property under test
            violations.append(f"cut {cut}: reader raised {exc!r}")
            continue
        index = order.index(name)
        complete = [seq for seg, _, end, seq in journal.extents
                    if order.index(seg) < index
                    or (seg == name and end <= offset)]
        torn = [start for seg, start, end, _ in journal.extents
                if seg == name and start < offset < end]
        where = f"cut {cut} ({name}:{offset})"
        if [r.seq for r in records] != complete:
            violations.append(f"{where}: returned {[r.seq for r in records]},"
                              f" complete were {complete}")
        violations += [f"{where}: {p}"
                       for p in check_records(records, journal.written)]
        if not all(r.trusted for r in records):
            violations.append(f"{where}: a record is untrusted")
        if errors(reader):
            violations.append(f"{where}: truncation reported as damage: "
                              f"{errors(reader)}")
        if torn:
            tails = [d for d in reader.diagnostics if d.kind == "torn_tail"]
            if not (tails and tails[0].severity == "info"
                    and tails[0].offset == torn[0]
                    and os.path.basename(tails[0].path) == name):
                violations.append(f"{where}: no torn tail at offset "
                                  f"{torn[0]}: {reader.diagnostics}")
        elif offset == 0:
            if [d.kind for d in reader.diagnostics] != ["torn_tail"]:
                violations.append(f"{where}: empty last segment is not a "
                                  f"torn tail: {reader.diagnostics}")
        elif reader.diagnostics:
            violations.append(f"{where}: cut at a record boundary gave "
                              f"{reader.diagnostics}")
        clean = bool(complete) and journal.written[complete[-1]][0] \
            == REC_CLOSE
        if reader.clean_close != clean:
            violations.append(f"{where}: clean_close {reader.clean_close}")
    print(f"truncation: {cuts} cuts checked, {len(violations)} violations")
    assert violations == []


def test_truncation_inside_the_last_segment_header_is_a_torn_tail(
        journal, tmp_path):
    # A crash while a segment is being created can leave a partial header
    # (FORMAT.md: an empty last segment is a torn tail; a partial one is the
    # same event).  It must not read as damage, or the writer refuses to
    # reopen the journal and verify reports corruption after a plain crash.
    work = journal.copy(tmp_path / "cut.journal")
    violations = []
    start = 0
    for name in journal.segments:
        for offset in range(1, SEGMENT_HEADER_SIZE):
            _truncated(journal, work, start + offset)
            records, reader = read_all(work)
            expected = [seq for seg, _, _, seq in journal.extents
                        if journal.segments.index(seg)
                        < journal.segments.index(name)]
            if [r.seq for r in records] != expected:
                violations.append(f"{name}:{offset}: wrong records")
            if errors(reader) or not any(d.kind == "torn_tail"
                                         for d in reader.diagnostics):
                violations.append(f"{name}:{offset}: {reader.diagnostics}")
        start += len(journal.contents[name])
    print(f"header truncation: {len(journal.segments) * 31} cuts, "
          f"{len(violations)} violations")
    assert violations == [], violations[:3]


# -- bit flips ----------------------------------------------------------------

def test_bit_flip_anywhere_is_detected(journal, tmp_path):
    work = journal.copy(tmp_path / "flip.journal")
    violations = []
    flips = 0
    for name in journal.segments:
        path = os.path.join(work, name)
        original = journal.contents[name]
        data = bytearray(original)
        for index in range(len(data)):
            for bit in range(8):
                data[index] ^= 1 << bit
                with open(path, "wb") as f:
                    f.write(data)
                data[index] ^= 1 << bit
                flips += 1
                where = f"{name}:{index} bit {bit}"
                try:
                    records, reader = read_all(work)
                except Exception as exc:  # noqa: BLE001
                    violations.append(f"{where}: reader raised {exc!r}")
                    continue
                violations += [f"{where}: {p}"
                               for p in check_records(records,
                                                      journal.written)]
                if not reader.diagnostics:
                    violations.append(f"{where}: flip not detected")
        with open(path, "wb") as f:
            f.write(original)
    print(f"bit flips: {flips} tried, {len(violations)} violations")
    assert violations == [], f"{len(violations)} violations, e.g. " \
                             f"{violations[:5]}"


def test_segment_header_reserved_bytes_must_be_zero(journal, tmp_path):
    # Bytes 28..31 of the segment header are outside its CRC; FORMAT.md says
    # they are 0.  A reader that ignores them lets a flip there go unseen.
    work = journal.copy(tmp_path / "reserved.journal")
    path = os.path.join(work, journal.segments[0])
    data = bytearray(journal.contents[journal.segments[0]])
    data[30] ^= 0x10
    with open(path, "wb") as f:
        f.write(data)
    _, reader = read_all(work)
    assert [d.kind for d in reader.diagnostics] == ["bad_segment_header"]
    assert reader.diagnostics[0].offset == 0


# -- corruption followed by valid data ----------------------------------------

def _rewrite(path, data) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_garbage_between_records_resyncs_and_keeps_trust(journal, tmp_path):
    # Nothing is lost (sequence numbers continue), so later records stay
    # trusted; the damage is still an error at its offset.
    work = journal.copy(tmp_path / "garbage.journal")
    name, start, _, seq = journal.extents[1]
    data = journal.contents[name]
    _rewrite(os.path.join(work, name),
             data[:start] + b"\xa5" * 13 + data[start:])
    records, reader = read_all(work)
    assert check_records(records, journal.written) == []
    assert [r.seq for r in records] == sorted(journal.written)
    assert all(r.trusted for r in records)
    assert [(d.kind, d.severity, d.offset) for d in reader.diagnostics] \
        == [("corrupt", "error", start)]
    assert f"{name}:{start}:" in str(reader.diagnostics[0])


def test_damaged_middle_record_is_skipped_and_later_records_untrusted(
        journal, tmp_path):
    work = journal.copy(tmp_path / "middle.journal")
    name, start, end, bad_seq = journal.extents[1]
    data = bytearray(journal.contents[name])
    data[end - 1] ^= 0xFF
    _rewrite(os.path.join(work, name), data)
    records, reader = read_all(work)
    assert check_records(records, journal.written) == []
    assert [r.seq for r in records] == \
        [s for s in sorted(journal.written) if s != bad_seq]
    assert [r.trusted for r in records] == \
        [r.seq < bad_seq for r in records]
    kinds = [(d.kind, d.offset) for d in reader.diagnostics]
    assert ("corrupt", start) in kinds
    assert any(kind == "gap" for kind, _ in kinds)
    assert reader.last_trusted_seq == bad_seq - 1
    assert not reader.clean_close


def test_damaged_segment_header_alone_loses_no_record(journal, tmp_path):
    work = journal.copy(tmp_path / "header.journal")
    name = journal.segments[1]
    data = bytearray(journal.contents[name])
    data[0:8] = b"NOTAWAL!"
    _rewrite(os.path.join(work, name), data)
    records, reader = read_all(work)
    assert [r.seq for r in records] == sorted(journal.written)
    assert all(r.trusted for r in records)
    assert [(d.kind, os.path.basename(d.path), d.offset)
            for d in reader.diagnostics] == [("bad_segment_header", name, 0)]


def test_deleted_middle_segment_is_a_gap_and_later_records_untrusted(
        journal, tmp_path):
    work = journal.copy(tmp_path / "deleted.journal")
    name = journal.segments[1]
    os.unlink(os.path.join(work, name))
    lost = {seq for seg, _, _, seq in journal.extents if seg == name}
    records, reader = read_all(work)
    assert check_records(records, journal.written) == []
    assert [r.seq for r in records] == \
        [s for s in sorted(journal.written) if s not in lost]
    assert [r.trusted for r in records] == [r.seq < min(lost)
                                            for r in records]
    gaps = [d for d in reader.diagnostics if d.kind == "gap"]
    assert len(gaps) == 1 and gaps[0].severity == "error"
    assert os.path.basename(gaps[0].path) == journal.segments[2]
    assert not reader.clean_close


def test_deleted_segment_before_a_recordless_last_segment_is_detected(
        journal, tmp_path):
    # Right after a rotation the last segment holds only its header.  If the
    # segment before it is lost, no later record reveals the gap through its
    # sequence number, but the header's first_seq (and the missing segment
    # number) still prove records are missing.
    work = tmp_path / "lost.journal"
    writer = JournalWriter(str(work), fsync="never",
                           segment_bytes=SEGMENT_BYTES)

    def segments():
        return sorted((n for n in os.listdir(work)
                       if framing.parse_segment_name(n) is not None),
                      key=framing.parse_segment_name)
    for rtype, payload in PAYLOADS:
        writer.append(rtype, payload)
    # Append until a rotation leaves a new, header-only last segment.
    while os.path.getsize(work / segments()[-1]) != SEGMENT_HEADER_SIZE:
        writer.append(REC_APPEND, ["y", 0])
    writer.abandon()
    assert len(segments()) >= 3
    os.unlink(work / segments()[-2])
    _, reader = read_all(str(work))
    assert errors(reader), "records lost with a whole segment went unseen"


def _header_with_version(data: bytes, version: int) -> bytes:
    magic, _, flags, number, first_seq, _ = SEGMENT_HEADER.unpack_from(data)
    body = SEGMENT_HEADER.pack(magic, version, flags, number, first_seq, 0)
    crc = framing.crc32(body[:24])
    return SEGMENT_HEADER.pack(magic, version, flags, number, first_seq,
                               crc) + data[SEGMENT_HEADER_SIZE:]


@pytest.mark.parametrize("which", [0, 1])
def test_segment_from_a_newer_format_version_is_not_read(journal, tmp_path,
                                                         which):
    work = journal.copy(tmp_path / "newer.journal")
    name = journal.segments[which]
    _rewrite(os.path.join(work, name),
             _header_with_version(journal.contents[name], FORMAT_VERSION + 1))
    records, reader = read_all(work)
    newer = {seq for seg, _, _, seq in journal.extents if seg == name}
    assert not newer & {r.seq for r in records}
    assert check_records(records, journal.written) == []
    unsupported = [d for d in reader.diagnostics
                   if d.kind == "unsupported_version"]
    assert len(unsupported) == 1 and unsupported[0].offset == 0
    assert os.path.basename(unsupported[0].path) == name
    assert all(not r.trusted for r in records if r.seq > min(newer))


@pytest.mark.parametrize("max_record_bytes", [None, 1 << 40])
@pytest.mark.parametrize("which", ["middle", "last"])
def test_huge_length_field_does_not_allocate(journal, tmp_path, which,
                                             max_record_bytes):
    work = journal.copy(tmp_path / "huge.journal")
    name, start, _, seq = journal.extents[1 if which == "middle" else -1]
    data = bytearray(journal.contents[name])
    struct.pack_into("<I", data, start + 4, 0xFFFFFFFF)
    _rewrite(os.path.join(work, name), data)
    kwargs = {} if max_record_bytes is None else \
        {"max_record_bytes": max_record_bytes}
    tracemalloc.start()
    try:
        records, reader = read_all(work, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reader allocated {peak} bytes"
    assert seq not in {r.seq for r in records}
    assert check_records(records, journal.written) == []
    assert reader.diagnostics
    if which == "last":
        # Damage with nothing intact after it: a torn tail in the last
        # segment, trailing garbage in an earlier one.
        expected = "torn_tail" if name == journal.segments[-1] \
            else "trailing_garbage"
        assert [d.kind for d in reader.diagnostics] == [expected]


# -- garbage, empty and zero-filled files -------------------------------------

@pytest.mark.parametrize("size", [0, 1, 20, 31, 32, 33, 100, 4096])
@pytest.mark.parametrize("kind", ["random", "zeros"])
def test_garbage_segment_files_never_raise(tmp_path, size, kind):
    work = tmp_path / "garbage.journal"
    work.mkdir()
    rng = random.Random(size)
    data = bytes(rng.getrandbits(8) for _ in range(size)) \
        if kind == "random" else bytes(size)
    (work / "segment-1.log").write_bytes(data)
    (work / "segment-2.log").write_bytes(data[::-1])
    records, reader = read_all(str(work))
    assert records == []
    assert reader.diagnostics


def test_empty_journal_directory_reports_no_segments(tmp_path):
    records, reader = read_all(str(tmp_path))
    assert records == []
    assert [d.kind for d in reader.diagnostics] == ["no_segments"]


def test_empty_last_segment_is_a_torn_tail(journal, tmp_path):
    work = journal.copy(tmp_path / "empty.journal")
    number = framing.parse_segment_name(journal.segments[-1]) + 1
    open(os.path.join(work, framing.segment_name(number)), "wb").close()
    records, reader = read_all(work)
    assert [r.seq for r in records] == sorted(journal.written)
    assert [(d.kind, d.severity) for d in reader.diagnostics] == \
        [("torn_tail", "info")]


def test_empty_middle_segment_is_an_error(journal, tmp_path):
    work = journal.copy(tmp_path / "empty.journal")
    _rewrite(os.path.join(work, journal.segments[1]), b"")
    records, reader = read_all(work)
    assert check_records(records, journal.written) == []
    assert errors(reader)


def test_zero_filled_tail_is_a_torn_tail(journal, tmp_path):
    # Power loss can extend a file with zeros (size updated, data not).
    work = journal.copy(tmp_path / "zeros.journal")
    with open(os.path.join(work, journal.segments[-1]), "ab") as f:
        f.write(bytes(4096))
    records, reader = read_all(work)
    assert [r.seq for r in records] == sorted(journal.written)
    assert all(r.trusted for r in records)
    assert [(d.kind, d.severity) for d in reader.diagnostics] == \
        [("torn_tail", "info")]


def test_zero_filled_tail_of_an_earlier_segment_is_an_error(journal,
                                                            tmp_path):
    work = journal.copy(tmp_path / "zeros.journal")
    with open(os.path.join(work, journal.segments[0]), "ab") as f:
        f.write(bytes(64))
    records, reader = read_all(work)
    assert [r.seq for r in records] == sorted(journal.written)
    assert [(d.kind, d.severity) for d in reader.diagnostics] == \
        [("trailing_garbage", "error")]


def test_files_that_are_not_segments_are_ignored(journal, tmp_path):
    work = journal.copy(tmp_path / "other.journal")
    for name in ("segment-01.log", "segment-x.log", "segment-9.log.bak",
                 "notes.txt", "segment-.log"):
        with open(os.path.join(work, name), "wb") as f:
            f.write(b"garbage")
    records, reader = read_all(work)
    assert [r.seq for r in records] == sorted(journal.written)
    assert reader.diagnostics == []


def test_undecodable_payload_with_valid_crc_is_reported(journal, tmp_path):
    # Only a writer bug can produce this, but the reader must report it and
    # stop trusting, not raise.
    work = journal.copy(tmp_path / "payload.journal")
    name = journal.segments[-1]
    last = max(journal.written)
    with open(os.path.join(work, name), "ab") as f:
        f.write(framing.encode_record(last + 1, REC_SET, b"\xc1"))
        f.write(framing.encode_record(last + 2, REC_SET, codec.pack([1])))
    records, reader = read_all(work)
    assert [r.seq for r in records][-1] == last + 2
    assert not records[-1].trusted
    assert [d.kind for d in reader.diagnostics] == ["bad_payload"]
    assert reader.last_trusted_seq == last


# Every encoding msgpack decodes as its timestamp ext (-1) itself, bypassing
# our ext hook: minimal (fixext 4/8, ext8 of 12) and padded (ext16, ext32).
TIMESTAMP_ENCODINGS = {
    "fixext4": b"\xd6\xff" + b"\x00" * 4,
    "fixext8": b"\xd7\xff" + b"\x00" * 8,
    "ext8": b"\xc7\x0c\xff" + b"\x00" * 12,
    "ext16": b"\xc8\x00\x0c\xff" + b"\x00" * 12,
    "ext32": b"\xc9\x00\x00\x00\x0c\xff" + b"\x00" * 12,
}


@pytest.mark.parametrize("encoding", sorted(TIMESTAMP_ENCODINGS))
def test_timestamp_ext_in_a_record_is_a_bad_payload_never_a_value(
        journal, tmp_path, encoding):
    # The reader decodes most records inline, not through codec.unpack:
    # both paths must refuse msgpack's timestamps, inside a list too.
    work = journal.copy(tmp_path / "ts.journal")
    last = max(journal.written)
    payload = b"\x92\xa1y" + TIMESTAMP_ENCODINGS[encoding]  # ["y", ts]
    with open(os.path.join(work, journal.segments[-1]), "ab") as f:
        f.write(framing.encode_record(last + 1, REC_APPEND,
                                      codec.pack(["y", 255.0])))
        f.write(framing.encode_record(last + 2, REC_APPEND, payload))
    records, reader = read_all(work)
    assert records[-1].seq == last + 1 and records[-1].trusted
    assert records[-1].payload == ["y", 255.0]
    assert [(d.kind, d.seq) for d in reader.diagnostics] == [
        ("bad_payload", last + 2)]
    assert reader.last_trusted_seq == last + 1


@pytest.mark.parametrize("values", [
    [-1],                    # 0xff in the first record of the segment
    [1, b"\xd7\xff"],        # bytes that look like a timestamp header
    [1.5, -1, b"\xd6\xff", 2],
])
def test_end_is_the_same_with_and_without_decoding(tmp_path, values):
    # ``end`` is where a writer reopening the journal cuts: it must be the
    # end of the last trusted record whichever path decoded it.
    path = str(tmp_path / "end.journal")
    writer = JournalWriter(path, fsync="never")
    # -1 packs as 0xff: the first record of the segment holds one.
    writer.append(REC_SET, ["y", [-1], {}, False, False, True])
    for value in values:
        writer.append(REC_APPEND, ["y", value])
    writer.abandon()
    size = os.path.getsize(os.path.join(path, framing.segment_name(1)))
    ends = []
    for decode in (False, True):
        reader = JournalReader(path, decode=decode)
        assert len(list(reader)) == len(values) + 1
        ends.append(reader.end)
    assert ends[0] == ends[1]
    assert ends[1].offset == size


def test_duplicate_sequence_number_is_ignored_and_reported(journal,
                                                           tmp_path):
    work = journal.copy(tmp_path / "dup.journal")
    name = journal.segments[-1]
    last = max(journal.written)
    with open(os.path.join(work, name), "ab") as f:
        f.write(framing.encode_record(last, REC_SET, codec.pack(["other"])))
    records, reader = read_all(work)
    assert check_records(records, journal.written) == []
    assert [d.kind for d in reader.diagnostics] == ["duplicate"]


# -- arbitrary damage ---------------------------------------------------------

@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_overwrites_never_yield_damaged_records(journal, tmp_path,
                                                          data):
    work = str(tmp_path / f"arb-{random.getrandbits(64):x}.journal")
    shutil.copytree(journal.path, work)
    try:
        for _ in range(data.draw(st.integers(1, 3))):
            name = data.draw(st.sampled_from(journal.segments))
            path = os.path.join(work, name)
            content = bytearray(open(path, "rb").read())
            offset = data.draw(st.integers(0, len(content)))
            patch = data.draw(st.binary(min_size=1, max_size=24))
            content[offset:offset + len(patch)] = patch
            if data.draw(st.booleans()):
                del content[data.draw(st.integers(0, len(content))):]
            _rewrite(path, content)
        records, reader = read_all(work)
        assert check_records(records, journal.written) == []
        for diag in reader.diagnostics:
            assert diag.severity in ("info", "error")
            assert str(diag).startswith(diag.path)
    finally:
        shutil.rmtree(work)
