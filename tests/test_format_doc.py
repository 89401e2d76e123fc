"""docs/FORMAT.md is the contract: these tests tie it to the code.

* The tables of the document (constants, header layouts, record types, ext
  codes, diagnostic kinds, the name-escaping alphabet) are parsed and
  compared with the values the code uses.
* The reading algorithm of section 8 is transliterated below
  (:class:`DocReader`, from the pseudocode only) and run side by side with
  the real :class:`JournalReader` on journals damaged by code: truncation at
  every byte, a byte flip at every byte, zero-filled tails, inserted
  garbage, crafted resync-budget exhaustion.  Both must report the same
  diagnostics (kind, file, offset, severity, seq) and deliver the same
  records (seq, type, file, offset, trusted).
* Knock-out checks show the comparison can fail: readers built from a
  plausible misreading (no damage-point charge, a reset budget, no "absurdly
  far ahead" test, torn tail only for an empty segment) disagree with the
  code on that corpus.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib

import msgpack
import numpy as np
import pytest

from artiq_journal.journal import codec, constants, reader as reader_mod
from artiq_journal.journal.constants import (RECORD_HEADER, REC_APPEND,
                                             REC_CLOSE, REC_RUN_INFO,
                                             REC_SET, REC_STAGE)
from artiq_journal.journal.framing import encode_record, encode_segment_header
from artiq_journal.journal.reader import JournalReader, Position
from artiq_journal.journal.writer import JournalWriter

DOC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        os.pardir, "docs", "FORMAT.md")
with open(DOC_PATH, encoding="utf-8") as _f:
    DOC = _f.read()


# -- parsing the document -----------------------------------------------------

def section(heading: str) -> str:
    """The text under the first heading starting with ``heading`` up to the
    next heading of the same or a higher level."""
    match = re.search(r"^(#+) " + re.escape(heading) + r".*$", DOC, re.M)
    assert match, f"FORMAT.md has no heading {heading!r}"
    level = len(match.group(1))
    rest = DOC[match.end():]
    end = re.search(r"^#{1,%d} " % level, rest, re.M)
    return rest[:end.start()] if end else rest


def table(text: str, first_column: str) -> list[dict[str, str]]:
    """Rows of the first markdown table in ``text`` whose header's first
    cell is ``first_column``, as {column: cell} with cells stripped."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = _cells(line)
        if cells and cells[0] == first_column:
            header = cells
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, _cells(row))))
            return rows
    raise AssertionError(f"no table with first column {first_column!r}")


def _cells(line: str) -> list[str]:
    if not line.startswith("|"):
        return []
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _int(cell: str) -> int:
    return int(re.match(r"\s*(\d+)", cell).group(1))


def _code(cell: str) -> str:
    return re.search(r"`([^`]*)`", cell).group(1)


# -- tables against the code --------------------------------------------------

CODE_CONSTANTS = {
    "format version": constants.FORMAT_VERSION,
    "segment magic": constants.SEGMENT_MAGIC,
    "segment header size": constants.SEGMENT_HEADER_SIZE,
    "record header size": constants.RECORD_HEADER_SIZE,
    "snapshot magic": constants.SNAPSHOT_MAGIC,
    "snapshot header size": constants.SNAPSHOT_HEADER_SIZE,
    "max record payload": constants.DEFAULT_MAX_RECORD_BYTES,
    "max snapshot payload": constants.DEFAULT_MAX_SNAPSHOT_BYTES,
    "segment rotation size": constants.DEFAULT_SEGMENT_BYTES,
    "resync budget factor": reader_mod._RESYNC_BUDGET_FACTOR,
    "resync budget extra": reader_mod._RESYNC_BUDGET_EXTRA,
    "max array dimensions": 32,          # codec._decode_ndarray
    "max container nesting": codec.MAX_NESTING,
    "max big int bytes": codec.MAX_BIGINT_BYTES,
    "max dtype string length": 32,       # codec._dtype
    "max done-marker size": 1 << 20,     # recovery.publish.read_marker
    "snapshot dataset-state format": None,
    "done-marker format": None,
}


def test_constants_table_matches_the_code():
    from artiq_journal.recovery import publish
    from artiq_journal.state import SNAPSHOT_FORMAT
    code = dict(CODE_CONSTANTS, **{
        "snapshot dataset-state format": SNAPSHOT_FORMAT,
        "done-marker format": publish.MARKER_FORMAT})
    rows = table(section("2. Constants"), "constant")
    documented = {row["constant"]: row["value"] for row in rows}
    assert set(documented) == set(code)
    for name, cell in documented.items():
        value = code[name]
        if isinstance(value, bytes):
            assert _code(cell).encode() == value, name
            hex_bytes = re.search(r"\(([0-9A-F ]+)\)", cell).group(1)
            assert bytes.fromhex(hex_bytes) == value, name
        else:
            assert _int(cell) == value, name


def _struct_fields(fmt: str) -> list[tuple[int, int]]:
    """(offset, size) of every field of a little-endian struct format,
    padding bytes (``x``) included as one field."""
    fields, offset = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt.lstrip("<")):
        n = int(count) if count else 1
        if code in "sx":
            fields.append((offset, n))
            offset += n
        else:
            size = struct.calcsize("<" + code)
            for _ in range(n):
                fields.append((offset, size))
                offset += size
    return fields


@pytest.mark.parametrize("heading, fmt, payload", [
    ("4.1 Segment header", constants.SEGMENT_HEADER.format, False),
    ("4.2 Record", constants.RECORD_HEADER.format, True),
    ("7.1 Layout", constants.SNAPSHOT_HEADER.format, True),
])
def test_header_layout_tables_match_the_structs(heading, fmt, payload):
    rows = table(section(heading), "offset")
    documented = [(int(r["offset"]), int(r["size"])) for r in rows
                  if r["size"].isdigit()]
    assert documented == _struct_fields(fmt)
    if payload:  # the last row is the payload, right after the header
        assert int(rows[-1]["offset"]) == struct.calcsize(fmt)
        assert rows[-1]["field"] == "payload"


def test_record_type_table_matches_the_constants():
    rows = table(section("6.1 Record types"), "type")
    assert {int(r["type"]): r["name"] for r in rows} == \
        constants.RECORD_TYPE_NAMES


def test_semantics_table_covers_every_record_type():
    rows = table(section("6.3 Semantics"), "type")
    assert [r["type"] for r in rows[:-1]] == \
        list(constants.RECORD_TYPE_NAMES.values())
    assert rows[-1]["type"] == "any other type"


def test_ext_code_table_matches_the_codec():
    rows = table(section("5.2 Extension types"), "ext code")
    documented = {int(r["ext code"]): r["type"] for r in rows}
    assert documented == {codec.EXT_NDARRAY: "numpy ndarray",
                          codec.EXT_NPSCALAR: "numpy scalar",
                          codec.EXT_TUPLE: "tuple",
                          codec.EXT_COMPLEX: "complex",
                          codec.EXT_BIGINT: "big int"}


def test_documented_byte_layouts_of_values():
    # ext 4: two little-endian f64, real first.
    assert codec.pack(1 + 2j) == b"\xd8\x04" + struct.pack("<dd", 1.0, 2.0)
    # ext 5: little-endian two's complement, minimal length.
    assert codec.pack(2 ** 64) == b"\xc7\x09\x05" + (2 ** 64).to_bytes(
        9, "little", signed=True)
    assert codec.unpack(b"\xc7\x02\x05\xff\xff") == -1  # not minimal: read
    # ext 1: the example of section 5.3, byte for byte (big-endian body).
    example = re.search(r"`np.array\(\[1, 2\], dtype=\">i4\"\)` is\s+"
                        r"`([0-9a-f ]+)`.*?`([0-9a-f ]+)`.*?`([0-9a-f ]+)`",
                        DOC, re.S)
    encoded = bytes.fromhex("".join(example.groups()))
    assert codec.pack(np.array([1, 2], dtype=">i4")) == encoded
    # ext 2 of item size 0: 4 and 1 zero bytes.
    assert codec.pack(np.str_("")).endswith(b"\xc4\x04" + bytes(4))
    assert codec.pack(np.bytes_(b"")).endswith(b"\xc4\x01\x00")
    # Non-canonical dtype strings are damage.
    for bad in ("=i4", "i4", "<i04", "<l"):
        head = codec._PACK_PLAIN([bad, [1]])
        data = head + bytes(4)
        with pytest.raises(codec.DecodeError):
            codec.unpack(codec.msgpack.packb(codec.msgpack.ExtType(1, data)))


def test_escape_table_matches_recovery():
    from artiq_journal.recovery.hdf5_out import escape_name, needs_escape
    rows = table(section("12. Recovered"), "original")
    for row in rows:
        original = row["original"]
        stored = _code(row["stored"])
        if original.startswith("`\"") or original.startswith('`"'):
            name = _code(original).strip('"')
            assert escape_name(name) == stored
        else:
            char = {"NUL": "\0"}.get(original.split()[0].strip("`"),
                                     original.split()[0].strip("`"))
            assert escape_name("a" + char + "/") == \
                "a" + stored + "%2F", original
    assert not needs_escape("a%b") and needs_escape("a/b")


# -- every diagnostic kind the code emits is documented -------------------------

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                   "src", "artiq_journal")


def _kinds_in_code() -> set[str]:
    kinds = set()
    pattern = re.compile(r"(?:_diag|Diagnostic)\(\s*\"([a-z_]+)\"")
    for root, _dirs, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    kinds.update(pattern.findall(f.read()))
    # Computed in reader._read_segment (kind = ... if ... else ...).
    kinds.update({"unsupported_version", "bad_segment_header"})
    return kinds


def test_every_diagnostic_kind_in_the_code_is_in_the_catalogue():
    rows = table(section("9.1 Kinds"), "kind")
    documented = {_code(r["kind"]) for r in rows}
    missing = _kinds_in_code() - documented
    assert not missing, f"kinds the code reports but FORMAT.md omits: {missing}"


def test_every_documented_kind_exists_unless_pending():
    rows = table(section("9.1 Kinds"), "kind")
    code = _kinds_in_code()
    for row in rows:
        kind = _code(row["kind"])
        if "pending-code" not in row["kind"]:
            assert kind in code, f"{kind} is documented but not in the code"
        sev = row["severity"]
        assert sev.split()[0] in ("info", "error", "warning"), kind


# -- the reading algorithm of section 8, from the pseudocode ---------------------

GAVE_UP, NONE = "GAVE_UP", "NONE"
HSIZE, SHSIZE = 20, 32


class DocReader:
    """Section 8.2-8.4 of FORMAT.md, line by line.  The knobs reproduce
    misreadings (for the knock-out tests); defaults are the document."""

    def __init__(self, path, after_seq=0, start=None, *, factor=4,
                 extra=65536, max_len=constants.DEFAULT_MAX_RECORD_BYTES,
                 damage_charge=True, damage_cost=HSIZE, reset_budget=False,
                 far_ahead=True, short_header_torn=True):
        self.path, self.after_seq, self.start = path, after_seq, start
        self.factor, self.extra, self.max_len = factor, extra, max_len
        self.damage_charge, self.reset_budget = damage_charge, reset_budget
        self.damage_cost = damage_cost
        self.far_ahead, self.short_header_torn = far_ahead, short_header_torn
        self.diags, self.records = [], []

    def diag(self, kind, file, offset, severity="error", seq=None):
        self.diags.append((kind, os.path.basename(file), offset, severity,
                           seq))

    def run(self):
        segs = []
        for name in os.listdir(self.path):
            m = re.fullmatch(r"segment-(0|[1-9][0-9]*)\.log", name)
            if m:
                segs.append((int(m.group(1)), os.path.join(self.path, name)))
        segs.sort()
        if not segs:
            self.diag("no_segments", self.path, None, "info")
            return self
        first_offset = None
        all_segs = segs
        if self.start and any(n == self.start.segment for n, _ in segs):
            segs = [s for s in segs if s[0] >= self.start.segment]
            first_offset = self.start.offset
        elif self.start and segs[-1][0] < self.start.segment:
            self.diag("snapshot_ahead", self.path, None)
        self.next_seq, self.trusting = self.after_seq + 1, True
        self.rescan = False
        self.ended, self.unsettled, self.all = False, None, all_segs
        for i, (number, file) in enumerate(segs):
            self.read_segment(number, file, i == len(segs) - 1,
                              first_offset if i == 0 else None)
            if self.rescan:
                self.next_seq, self.trusting = self.after_seq + 1, True
                self.ended, self.unsettled = False, None
                for j, (n2, f2) in enumerate(all_segs):
                    self.read_segment(n2, f2, j == len(all_segs) - 1, None)
                    if self.ended:
                        break
                break
            if self.ended:
                break
        return self

    def unsynced_tear(self, k, file, o):
        self.unsettled = None
        for n, later in self.all:
            if n > k and self.vouching(later, k)[0]:
                return False
        self.diag("unsynced_tail", file, o, "warning")
        self.ended = True
        return True

    def vouching(self, last, k):
        with open(last, "rb") as f:
            data = f.read()
        size, count, vouched, o = len(data), 0, False, 32
        while o + HSIZE <= size:
            crc, length, seq, rtype, flags, reserved = \
                RECORD_HEADER.unpack_from(data, o)
            if length > self.max_len or o + HSIZE + length > size:
                break
            if zlib.crc32(data[o + 4:o + HSIZE + length]) != crc \
                    or flags or reserved:
                break
            count += 1
            if rtype == 13:
                try:
                    value = msgpack.unpackb(data[o + HSIZE:o + HSIZE + length])
                except Exception:  # noqa: BLE001
                    value = None
                if isinstance(value, list) and value and \
                        type(value[0]) is int and value[0] == k:
                    vouched = True
            o += HSIZE + length
        return vouched, count

    def position_wrong(self, data, size, o):
        if o < 32 or o > size:
            return True
        if o + HSIZE > size:
            return False
        crc, length, seq, rtype, flags, reserved = \
            RECORD_HEADER.unpack_from(data, o)
        if flags or reserved or seq == self.after_seq + 1 \
                or length > min(self.max_len, size - o - HSIZE):
            return False
        return zlib.crc32(data[o + HSIZE:o + HSIZE + length],
                          zlib.crc32(data[o + 4:o + HSIZE])) == crc

    def check_header(self, head):
        if len(head) < 32:
            return "short"
        magic, version, flags, number, first_seq, crc = \
            struct.unpack_from("<8sHHIQI", head)
        if magic != b"ARTIQWAL" or zlib.crc32(head[:24]) != crc \
                or head[28:32] != bytes(4):
            return "bad"
        if version not in (1, 2, 3):
            return "version"
        if flags & ~(1 if version == 3 else 0):
            return "bad"
        return (number, first_seq, flags)

    def read_segment(self, number, file, is_last, start_offset):
        prev, self.unsettled = self.unsettled, None
        with open(file, "rb") as f:
            self.data = data = f.read()
        size = len(data)
        if start_offset is not None and \
                self.position_wrong(data, size, start_offset):
            self.diag("snapshot_ahead", file, start_offset)
            self.rescan = True
            return
        head = data[:32]
        header = self.check_header(head)
        if not isinstance(header, tuple):
            if is_last and len(head) < 32 and (self.short_header_torn
                                               or size == 0):
                self.diag("torn_tail", file, 0, "info")
                return
            if is_last and not any(data):
                self.diag("torn_tail", file, 0, "info")
                return
            if header != "version" and prev is not None \
                    and self.unsynced_tear(prev[0], file, 0):
                return
            if header == "version":
                self.diag("unsupported_version", file, 0)
                self.trusting = False
                return
            self.diag("bad_segment_header", file, 0)
            header = None
        if header and prev is not None and header[1] > self.next_seq \
                and self.unsynced_tear(*prev):
            return
        if header and not is_last and header[2] & 1:
            self.unsettled = (number, file, size)
        if header and header[0] != number:
            self.diag("bad_segment_header", file, 0)
        if header and header[1] > self.next_seq:
            self.diag("gap", file, 16, seq=header[1])
            self.trusting, self.next_seq = False, header[1]
        o = 32 if start_offset is None else start_offset
        self.budget0 = self.factor * max(size - o, 0) + self.extra
        self.budget = self.budget0
        self.scan(number, file, size, o, is_last)

    def problem(self, o, size):
        data = self.data
        if size - o < HSIZE:
            return "incomplete", 0
        crc, length, seq, rtype, flags, reserved = \
            RECORD_HEADER.unpack_from(data, o)
        if length > self.max_len:
            return "too long", length
        if o + HSIZE + length > size:
            return "past end", length
        if zlib.crc32(data[o + 4:o + HSIZE + length]) != crc:
            return "crc", length
        if flags or reserved:
            return "flags", length
        return None, length

    def scan(self, number, file, size, o, is_last):
        while o < size:
            problem, length = self.problem(o, size)
            if problem:
                if self.unsettled is not None and \
                        self.unsettled[0] == number and \
                        self.unsynced_tear(number, file, o):
                    return
                if problem in ("crc", "flags") and self.damage_charge:
                    self.budget -= self.damage_cost + length
                r = self.resync(size, o + 1)
                if r == GAVE_UP:
                    self.diag("corrupt", file, o)
                    return
                if r == NONE:
                    if is_last:
                        self.diag("torn_tail", file, o, "info")
                    else:
                        self.diag("trailing_garbage", file, o)
                    return
                self.diag("corrupt", file, o)
                if self.reset_budget:
                    self.budget = self.budget0
                o = r
                continue
            self.accept(file, o)
            o += HSIZE + length

    def resync(self, size, p0):
        data, min_seq, p = self.data, self.next_seq, p0
        while p + HSIZE <= size:
            crc, length, seq, rtype, flags, reserved = \
                RECORD_HEADER.unpack_from(data, p)
            if not (flags or reserved or seq < min_seq
                    or length > self.max_len or p + HSIZE + length > size
                    or (self.far_ahead and seq > min_seq + size)):
                cost = 16 + length
                if cost > self.budget:
                    return GAVE_UP
                self.budget -= cost
                if zlib.crc32(data[p + 4:p + HSIZE + length]) == crc:
                    return p
            p += 1
        return NONE

    def accept(self, file, o):
        crc, length, seq, rtype, flags, reserved = \
            RECORD_HEADER.unpack_from(self.data, o)
        if seq < self.next_seq:
            if seq > self.after_seq:
                self.diag("duplicate", file, o, seq=seq)
            return
        if seq > self.next_seq:
            self.diag("gap", file, o, seq=seq)
            self.trusting = False
        self.next_seq = seq + 1
        try:
            codec.unpack(self.data[o + HSIZE:o + HSIZE + length],
                         self.max_len)
        except ValueError:
            self.diag("bad_payload", file, o, seq=seq)
            self.trusting = False
            return
        self.records.append((seq, rtype, os.path.basename(file), o,
                             self.trusting))


def code_view(path, after_seq=0, start=None):
    r = JournalReader(path, after_seq=after_seq, start=start)
    records = [(x.seq, x.rtype, x.segment, x.offset, x.trusted) for x in r]
    diags = [(d.kind, os.path.basename(d.path), d.offset, d.severity, d.seq)
             for d in r.diagnostics]
    return diags, records


def doc_view(path, after_seq=0, start=None, **knobs):
    d = DocReader(path, after_seq, start, **knobs).run()
    return d.diags, d.records


# -- corpora -------------------------------------------------------------------

PAYLOADS = [
    (REC_RUN_INFO, {"rid": 5, "class_name": "Scan"}),
    (REC_SET, ["x", np.arange(4, dtype=">i4"), {"unit": "V"}, True, False,
               True]),
    (REC_APPEND, ["ys", 1.5]),
    (REC_STAGE, ["run", 1700000000.5]),
    (REC_SET, ["t", (1, "a", b"\x00\xff"), {}, False, False, True]),
    (REC_APPEND, ["ys", -3]),
    (REC_APPEND, ["ys", 2 ** 70]),
    (REC_STAGE, ["analyze", 1700000001.0]),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("doc") / "000000005-Scan.journal")
    writer = JournalWriter(path, fsync="never", segment_bytes=160)
    for rtype, payload in PAYLOADS:
        writer.append(rtype, payload)
    writer.close("results_written")
    segs = sorted(os.listdir(path))
    assert sum(n.startswith("segment-") for n in segs) >= 3
    return path


def _segments(path):
    return reader_mod.list_segments(path)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _cuts(path):
    """(segment index, byte) for every byte position of every segment."""
    for index, (_n, seg) in enumerate(_segments(path)):
        for cut in range(os.path.getsize(seg)):
            yield index, cut


def _truncated(pristine, work, index, cut):
    if os.path.exists(work):
        shutil.rmtree(work)
    _copy(pristine, work)
    segs = _segments(work)
    for _n, later in segs[index + 1:]:
        os.unlink(later)
    os.truncate(segs[index][1], cut)
    return work


def test_doc_reader_agrees_on_the_intact_journal(pristine):
    assert doc_view(pristine) == code_view(pristine)
    assert code_view(pristine)[0] == []


def test_truncation_at_every_byte_agrees_and_is_never_an_error(pristine,
                                                              tmp_path):
    work = str(tmp_path / "j.journal")
    cases = 0
    for index, cut in _cuts(pristine):
        _truncated(pristine, work, index, cut)
        code = code_view(work)
        assert doc_view(work) == code, (index, cut)
        kinds = [d[0] for d in code[0]]
        assert kinds in ([], ["torn_tail"]), (index, cut, code[0])
        assert all(d[3] == "info" for d in code[0])
        assert all(r[4] for r in code[1])
        cases += 1
    print(f"truncations checked: {cases}")


def test_byte_flip_at_every_byte_agrees_with_the_document(pristine,
                                                          tmp_path):
    work = str(tmp_path / "j.journal")
    cases = disagreements = 0
    for index, (_n, seg) in enumerate(_segments(pristine)):
        size = os.path.getsize(seg)
        for at in range(size):
            if os.path.exists(work):
                shutil.rmtree(work)
            _copy(pristine, work)
            target = _segments(work)[index][1]
            with open(target, "r+b") as f:
                f.seek(at)
                byte = f.read(1)[0]
                f.seek(at)
                f.write(bytes([byte ^ 0xFF]))
            code = code_view(work)
            cases += 1
            if doc_view(work) != code:
                disagreements += 1
                assert doc_view(work) == code, (index, at)
            assert code[0], (index, at)  # damage is always reported
    print(f"byte flips checked: {cases}, disagreements: {disagreements}")


def _record_offsets(seg):
    with open(seg, "rb") as f:
        data = f.read()
    o, offsets = SHSIZE, []
    while o + HSIZE <= len(data):
        length = RECORD_HEADER.unpack_from(data, o)[1]
        offsets.append(o)
        o += HSIZE + length
    return offsets


def test_flip_mid_journal_is_corrupt_at_the_record_then_a_gap(pristine,
                                                              tmp_path):
    work = _copy(pristine, str(tmp_path / "j.journal"))
    number, seg = _segments(work)[0]
    offsets = _record_offsets(seg)
    assert len(offsets) >= 2
    victim = offsets[0]
    with open(seg, "r+b") as f:
        f.seek(victim + HSIZE)           # first payload byte
        byte = f.read(1)[0]
        f.seek(victim + HSIZE)
        f.write(bytes([byte ^ 0x01]))
    diags, records = code_view(work)
    assert diags[0][:4] == ("corrupt", os.path.basename(seg), victim, "error")
    assert diags[1][0] == "gap" and diags[1][2] == offsets[1]
    assert all(not r[4] for r in records)
    assert doc_view(work) == (diags, records)


def test_zero_filled_tails_and_headers(pristine, tmp_path):
    # A last segment of zeros is a torn tail at 0; in the middle it is a bad
    # header plus trailing garbage at 32.
    for which in (-1, 0):
        work = str(tmp_path / f"z{which}.journal")
        _copy(pristine, work)
        seg = _segments(work)[which][1]
        size = os.path.getsize(seg)
        with open(seg, "wb") as f:
            f.write(bytes(size))
        code = code_view(work)
        assert doc_view(work) == code
        if which == -1:
            assert code[0] == [("torn_tail", os.path.basename(seg), 0,
                                "info", None)]
        else:
            assert [d[:3] for d in code[0][:2]] == [
                ("bad_segment_header", os.path.basename(seg), 0),
                ("trailing_garbage", os.path.basename(seg), 32)]
    # A short last header with non-zero content is a torn tail too.
    work = _copy(pristine, str(tmp_path / "short.journal"))
    seg = _segments(work)[-1][1]
    os.truncate(seg, 31)
    assert code_view(work)[0] == [("torn_tail", os.path.basename(seg), 0,
                                   "info", None)]
    assert doc_view(work) == code_view(work)
    assert doc_view(work, short_header_torn=False) != code_view(work)


def test_garbage_between_records_keeps_trust(pristine, tmp_path):
    work = _copy(pristine, str(tmp_path / "g.journal"))
    seg = _segments(work)[0][1]
    offsets = _record_offsets(seg)
    with open(seg, "rb") as f:
        data = f.read()
    cut = offsets[1]
    with open(seg, "wb") as f:
        f.write(data[:cut] + b"\x07" * 23 + data[cut:])
    diags, records = code_view(work)
    assert [d[:3] for d in diags] == [("corrupt", os.path.basename(seg), cut)]
    assert all(r[4] for r in records)
    assert doc_view(work) == (diags, records)


# -- the budget -------------------------------------------------------------------

def _crafted_segment(path, n_bad, pad, bad_seq=1):
    """Segment 1 of a fresh journal: n_bad pairs of (a header claiming a
    payload up to the end of the file with a wrong CRC, then an intact
    record), then ``pad`` bytes of 0x07.  Each damaged header costs the
    budget about the rest of the file."""
    os.makedirs(path)
    good = [encode_record(seq, REC_APPEND, codec.pack(["k", seq]))
            for seq in range(1, n_bad + 1)]
    size = SHSIZE + n_bad * HSIZE + sum(map(len, good)) + pad
    body, o = b"", SHSIZE
    for seq in range(1, n_bad + 1):
        length = size - (o + HSIZE)
        body += RECORD_HEADER.pack(0xDEADBEEF, length, 0, REC_APPEND, 0, 0)
        body += good[seq - 1]
        o += HSIZE + len(good[seq - 1])
    data = encode_segment_header(1, 1) + body + b"\x07" * pad
    assert len(data) == size
    with open(os.path.join(path, "segment-1.log"), "wb") as f:
        f.write(data)
    return data


def test_budget_exhaustion_is_corrupt_never_a_torn_tail(tmp_path):
    # Many damage points in the last segment: each charges 20 + length,
    # so the budget runs out; the document says which resync gives up.
    path = str(tmp_path / "b.journal")
    _crafted_segment(path, n_bad=12, pad=100_000)
    code = code_view(path)
    assert doc_view(path) == code
    kinds = [d[0] for d in code[0]]
    assert "torn_tail" not in kinds
    assert 0 < kinds.count("corrupt") < 12      # it gave up part way
    last = JournalReader(path)
    list(last)
    assert "gave up" in last.diagnostics[-1].message


def _corrupts(path, **knobs):
    return [d[0] for d in doc_view(path, **knobs)[0]].count("corrupt")


@pytest.fixture(scope="module")
def budget_edge(tmp_path_factory):
    """Journals at the exact padding where the document says the resync of
    the last damage point starts to give up (found by bisection with the
    document's arithmetic), and one byte either side."""
    base = tmp_path_factory.mktemp("edge")
    made = {}

    def build(pad):
        if pad not in made:
            path = str(base / f"p{pad}.journal")
            _crafted_segment(path, n_bad=N_EDGE, pad=pad)
            made[pad] = path
        return made[pad]

    lo, hi = 0, 400_000          # at lo every damage resyncs, at hi not
    assert _corrupts(build(lo)) == N_EDGE
    assert _corrupts(build(hi)) < N_EDGE
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _corrupts(build(mid)) == N_EDGE:
            lo = mid
        else:
            hi = mid
    return [build(pad) for pad in (lo - 1, lo, hi, hi + 1)]


N_EDGE = 6


def test_budget_arithmetic_is_exact_to_the_byte(budget_edge):
    for path in budget_edge:
        assert doc_view(path) == code_view(path), path
    # The code too changes its answer exactly there.
    counts = [[d[0] for d in code_view(p)[0]].count("corrupt")
              for p in budget_edge]
    assert counts[1] == N_EDGE and counts[2] < N_EDGE, counts


def test_knock_outs_show_the_comparison_can_fail(budget_edge):
    """Misreadings of section 8.3 that an outsider might make each disagree
    with the code at the budget's edge."""
    wrong = {
        "no charge at the damage point": dict(damage_charge=False),
        "budget reset after each resync": dict(reset_budget=True),
        "damage point charged 16 + length": dict(damage_cost=16),
        "budget factor 3": dict(factor=3),
        "no 64 KiB extra": dict(extra=0),
        "64000 bytes extra": dict(extra=64000),
    }
    for name, knobs in wrong.items():
        assert any(doc_view(p, **knobs) != code_view(p)
                   for p in budget_edge), name


def test_far_ahead_candidates_are_not_resync_points(tmp_path):
    # An intact record whose seq is more than the segment size beyond the
    # expected one does not end a resync: the damage is a torn tail.
    path = str(tmp_path / "f.journal")
    os.makedirs(path)
    first = encode_record(1, REC_APPEND, codec.pack(["k", 1]))
    far = encode_record(10 ** 6, REC_APPEND, codec.pack(["k", 2]))
    data = encode_segment_header(1, 1) + first + b"\x01" * 25 + far
    with open(os.path.join(path, "segment-1.log"), "wb") as f:
        f.write(data)
    code = code_view(path)
    assert code[0] == [("torn_tail", "segment-1.log", SHSIZE + len(first),
                        "info", None)]
    assert doc_view(path) == code
    assert doc_view(path, far_ahead=False) != code


# -- where reading and trust start ---------------------------------------------------

def test_position_and_after_seq_agree(pristine, tmp_path):
    segs = _segments(pristine)
    number, seg = segs[1]
    offsets = _record_offsets(seg)
    with open(seg, "rb") as f:
        data = f.read()
    first_seq = struct.unpack_from("<Q", data, 16)[0]
    # Start at the second record of segment 2, as a snapshot would.
    start = Position(number, offsets[1])
    assert doc_view(pristine, first_seq, start) == \
        code_view(pristine, first_seq, start)
    diags, records = code_view(pristine, first_seq, start)
    assert diags == [] and records[0][0] == first_seq + 1
    # A position inside the header or past the end of its segment, or a
    # segment past the last one: snapshot_ahead, then every segment is read
    # from its start.
    for pos in (Position(number, 3), Position(99, 40),
                Position(number, 10 ** 9), Position(number, offsets[2])):
        doc, code = doc_view(pristine, first_seq, pos), \
            code_view(pristine, first_seq, pos)
        assert doc == code
        assert [d[0] for d in code[0]] == ["snapshot_ahead"]
        assert code[1][0][0] == first_seq + 1   # nothing skipped


def test_first_segment_after_seq_one_without_snapshot_is_a_gap(pristine,
                                                               tmp_path):
    work = _copy(pristine, str(tmp_path / "d.journal"))
    os.unlink(_segments(work)[0][1])
    diags, records = code_view(work)
    assert diags[0][0] == "gap" and diags[0][2] == 16
    assert doc_view(work) == (diags, records)


# -- 8.6: a segment synced in the background (format 3) ---------------------------


@pytest.fixture(scope="module")
def pristine_bg(tmp_path_factory):
    """The same journal, written with background rotation (forced on for
    these tiny segments): every rotated segment but the last has the flag,
    and a segment_synced record for it opens the next."""
    from artiq_journal.journal import writer as writer_mod
    path = str(tmp_path_factory.mktemp("docbg") / "000000005-Scan.journal")
    mp = pytest.MonkeyPatch()
    mp.setattr(writer_mod, "BACKGROUND_ROTATION_MIN_BYTES", 0)
    try:
        writer = JournalWriter(path, fsync="group", segment_bytes=160,
                               heartbeat_interval=None)
        for rtype, payload in PAYLOADS:
            writer.append(rtype, payload)
        writer.close("results_written")
    finally:
        mp.undo()
    segs = _segments(path)
    assert len(segs) >= 3
    for _n, seg in segs:
        with open(seg, "rb") as f:
            assert struct.unpack_from("<H", f.read(12), 10)[0] == 1
    return path


def test_background_journal_reads_clean(pristine_bg):
    diags, records = code_view(pristine_bg)
    assert diags == [] and doc_view(pristine_bg) == (diags, records)
    types = [r[1] for r in records]
    assert types.count(13) == len(_segments(pristine_bg)) - 1
    assert types[-1] == REC_CLOSE


def _bg_case(pristine_bg, work, k_cut, last_cut):
    """Segments up to the second-to-last kept; that one cut at ``k_cut``,
    the next (now last) cut at ``last_cut``: what power loss can leave
    while the second-to-last was syncing in the background."""
    if os.path.exists(work):
        shutil.rmtree(work)
    _copy(pristine_bg, work)
    segs = _segments(work)
    index = 1  # segment 2 of >= 3: every segment after 3 removed
    for _n, later in segs[index + 2:]:
        os.unlink(later)
    os.truncate(segs[index][1], k_cut)
    os.truncate(segs[index + 1][1], last_cut)
    return work, segs[index], segs[index + 1]


def test_unsynced_tear_with_and_without_the_marker(pristine_bg, tmp_path):
    """Every cut of the flagged segment k, with the last segment holding
    its records up to each record boundary: without the segment_synced
    record for k the tear is an unsynced tail (warning; reading stops, the
    records of the last segment are counted, none delivered); with it the
    same bytes are damage as before (errors).  Code and document agree."""
    work = str(tmp_path / "j.journal")
    segs = _segments(pristine_bg)
    k_size = os.path.getsize(segs[1][1])
    last_offsets = _record_offsets(segs[2][1])
    last_size = os.path.getsize(segs[2][1])
    with open(segs[2][1], "rb") as f:
        data = f.read()
    # The segment_synced record for k: wherever the writer put it (the
    # group-commit thread writes it when k's sync returns).
    marker_end = next(
        o + HSIZE + RECORD_HEADER.unpack_from(data, o)[1]
        for o in last_offsets if RECORD_HEADER.unpack_from(data, o)[3] == 13
        and msgpack.unpackb(data[o + HSIZE:o + HSIZE + RECORD_HEADER.unpack_from(data, o)[1]])[0] == segs[1][0])
    seen = set()
    for k_cut in range(SHSIZE, k_size):
        for last_cut in [SHSIZE] + last_offsets[1:] + [last_size]:
            work, (kn, kseg), (ln, lseg) = _bg_case(pristine_bg, work,
                                                    k_cut, last_cut)
            code = code_view(work)
            assert doc_view(work) == code, (k_cut, last_cut)
            diags, records = code
            kinds = [d[0] for d in diags]
            if last_cut >= marker_end:
                # Vouched: k was synced; a tear in it is damage.
                assert "unsynced_tail" not in kinds
                assert any(d[3] == "error" for d in diags), (k_cut, last_cut)
                seen.add("vouched")
            else:
                assert kinds == ["unsynced_tail"], (k_cut, last_cut, diags)
                d = diags[0]
                assert d[1] == os.path.basename(kseg) and d[3] == "warning"
                assert all(r[4] for r in records)
                assert all(r[2] != os.path.basename(lseg) for r in records)
                seen.add("unsynced")
    assert seen == {"vouched", "unsynced"}


def test_unsynced_tear_needs_the_flag(pristine, tmp_path):
    """Without the flag (format 2 writers, fsync=always) the same cut is
    the error it always was."""
    work = str(tmp_path / "j.journal")
    _copy(pristine, work)
    segs = _segments(work)
    for _n, later in segs[3:]:
        os.unlink(later)
    os.truncate(segs[1][1], os.path.getsize(segs[1][1]) - 1)
    os.truncate(segs[2][1], SHSIZE)
    diags, records = code_view(work)
    assert [d[0] for d in diags] == ["trailing_garbage", "gap"]
    assert doc_view(work) == (diags, records)


def test_byte_flip_of_background_journal_agrees(pristine_bg, tmp_path):
    work = str(tmp_path / "j.journal")
    for index, (_n, seg) in enumerate(_segments(pristine_bg)):
        for at in range(os.path.getsize(seg)):
            if os.path.exists(work):
                shutil.rmtree(work)
            _copy(pristine_bg, work)
            target = _segments(work)[index][1]
            with open(target, "r+b") as f:
                f.seek(at)
                byte = f.read(1)[0]
                f.seek(at)
                f.write(bytes([byte ^ 0xFF]))
            code = code_view(work)
            assert doc_view(work) == code, (index, at)
            assert code[0], (index, at)


def test_truncation_of_background_journal_agrees(pristine_bg, tmp_path):
    work = str(tmp_path / "j.journal")
    for index, cut in _cuts(pristine_bg):
        _truncated(pristine_bg, work, index, cut)
        code = code_view(work)
        assert doc_view(work) == code, (index, cut)
        assert [d[0] for d in code[0]] in ([], ["torn_tail"]), (index, cut)
