"""An independent reader of artiq-journal journals, written from docs/FORMAT.md
alone (the "outsider" check of the format document).

Nothing here imports artiq_journal.  Section numbers refer to docs/FORMAT.md.

Entry point: ``replay(journal_dir) -> Result``.
"""
from __future__ import annotations

import errno
import math
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

# ---------------------------------------------------------------- 2. constants
FORMAT_VERSION = 1           # snapshots (7.1)
SEGMENT_VERSIONS = (1, 2, 3)  # 2. constants: segments of format 3, and 1, 2
SEG_MAGIC = b"ARTIQWAL"
SEG_HEADER = 32
REC_HEADER = 20
SNAP_MAGIC = b"ARTIQCKP"
SNAP_HEADER = 40
MAX_RECORD = 268435456
MAX_SNAPSHOT = 8589934592
RESYNC_FACTOR = 4
RESYNC_EXTRA = 65536
MAX_DIMS = 32
MAX_NESTING = 100
MAX_TUPLE_NESTING = 64
MAX_BIGINT = 4096
MAX_DTYPE = 32
DATASET_STATE_FORMAT = 1

RUN_INFO, STAGE, SET, MUTATE, APPEND_TO, ARCHIVE, CHECKPOINT, RESUMED_FROM, CLOSE = range(1, 10)
HEARTBEAT = 10
SEGMENT_SYNCED = 13          # 6.1, format 3

SEGMENT_RE = re.compile(r"segment-(0|[1-9][0-9]*)\.log")
DTYPE_RE = re.compile(r"[<>|=][biufcSUmM][0-9]+(\[[A-Za-z0-9]+\])?")


def crc32(*parts: bytes) -> int:
    c = 0
    for p in parts:
        c = zlib.crc32(p, c)
    return c & 0xFFFFFFFF


# ------------------------------------------------------------- 9. diagnostics
SEVERITY = {
    "torn_tail": "info", "corrupt": "error", "trailing_garbage": "error",
    "gap": "error", "duplicate": "error", "bad_payload": "error",
    "bad_segment_header": "error", "unsupported_version": "error",
    "unreadable": "error", "no_segments": "info", "not_regular": "error",
    "snapshot_ahead": "error", "snapshot": "info", "bad_record": "error",
    "unsynced_tail": "warning",   # 8.6
}


@dataclass
class Diag:
    kind: str
    path: str
    offset: Optional[int]
    severity: str
    message: str = ""
    seq: Optional[int] = None

    def __str__(self):
        where = self.path if self.offset is None else f"{self.path}:{self.offset}"
        return f"{where}: {self.kind} ({self.severity}) {self.message}"


# ----------------------------------------------------------- 5. payload codec
class Damage(Exception):
    pass


def check_dtype(s) -> np.dtype:
    """5.3: the accepted dtype strings."""
    if not isinstance(s, str) or len(s) > MAX_DTYPE:
        raise Damage("dtype is not a short str")
    if not DTYPE_RE.fullmatch(s):
        raise Damage("dtype spelling")
    try:
        dt = np.dtype(s)
    except Exception as e:  # noqa: BLE001
        raise Damage(f"numpy refuses dtype {s!r}: {e}")
    if dt.str != s or dt.kind not in "biufcSUmM":
        raise Damage(f"dtype {s!r} is not canonical")
    return dt


class _Decoder:
    def __init__(self, data, tuple_depth=0):
        self.d = memoryview(data)
        self.p = 0
        self.tuple_depth = tuple_depth

    def take(self, n: int) -> memoryview:
        if n < 0 or self.p + n > len(self.d):
            raise Damage("value runs past the end")
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def value(self, level: int):
        t = self.uint(1)
        if t <= 0x7F:
            return t
        if t >= 0xE0:
            return t - 0x100
        if 0x80 <= t <= 0x8F:
            return self.map(t & 0x0F, level)
        if 0x90 <= t <= 0x9F:
            return self.array(t & 0x0F, level)
        if 0xA0 <= t <= 0xBF:
            return self.str(t & 0x1F)
        if t == 0xC0:
            return None
        if t == 0xC2:
            return False
        if t == 0xC3:
            return True
        if t in (0xC4, 0xC5, 0xC6):
            n = self.uint({0xC4: 1, 0xC5: 2, 0xC6: 4}[t])
            if n > MAX_RECORD:
                raise Damage("bin too long")
            return bytes(self.take(n))
        if t in (0xC7, 0xC8, 0xC9):
            n = self.uint({0xC7: 1, 0xC8: 2, 0xC9: 4}[t])
            code = struct.unpack(">b", self.take(1))[0]
            if n > MAX_RECORD:
                raise Damage("ext too long")
            return self.ext(code, self.take(n), level)
        if t == 0xCA:
            return float(struct.unpack(">f", self.take(4))[0])
        if t == 0xCB:
            return struct.unpack(">d", self.take(8))[0]
        if 0xCC <= t <= 0xCF:
            return self.uint(1 << (t - 0xCC))
        if 0xD0 <= t <= 0xD3:
            n = 1 << (t - 0xD0)
            return int.from_bytes(self.take(n), "big", signed=True)
        if 0xD4 <= t <= 0xD8:
            n = 1 << (t - 0xD4)
            code = struct.unpack(">b", self.take(1))[0]
            return self.ext(code, self.take(n), level)
        if t in (0xD9, 0xDA, 0xDB):
            return self.str(self.uint({0xD9: 1, 0xDA: 2, 0xDB: 4}[t]))
        if t in (0xDC, 0xDD):
            return self.array(self.uint(2 if t == 0xDC else 4), level)
        if t in (0xDE, 0xDF):
            return self.map(self.uint(2 if t == 0xDE else 4), level)
        raise Damage(f"byte 0x{t:02x} is not a msgpack type")  # 0xc1

    def str(self, n: int) -> str:
        if n > MAX_RECORD:
            raise Damage("str too long")
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise Damage("invalid UTF-8")

    def _container(self, n: int, level: int, per_item: int):
        if level > MAX_NESTING:
            raise Damage("nesting too deep")
        if n * per_item > len(self.d) - self.p:
            raise Damage("container longer than the payload")

    def array(self, n: int, level: int):
        self._container(n, level, 1)
        return [self.value(level + 1) for _ in range(n)]

    def map(self, n: int, level: int):
        self._container(n, level, 2)
        out = {}
        for _ in range(n):
            k = self.value(level + 1)
            try:
                hash(k)
            except TypeError:
                raise Damage("unhashable map key")
            out[k] = self.value(level + 1)
        return out

    def ext(self, code: int, data: memoryview, level: int):
        if code == 1:
            return self.ndarray(data, level)
        if code == 2:
            return self.npscalar(data, level)
        if code == 3:
            if self.tuple_depth + 1 > MAX_TUPLE_NESTING:
                raise Damage("tuples nested too deep")
            sub = _Decoder(data, self.tuple_depth + 1)
            t = sub.uint(1) if len(data) else None
            if t is None or not (0x90 <= t <= 0x9F or t in (0xDC, 0xDD)):
                raise Damage("ext 3 does not hold an array")
            sub.p = 0
            items = sub.value(level)
            if sub.p != len(data):
                raise Damage("bytes after the tuple's array")
            return tuple(items)
        if code == 4:
            if len(data) != 16:
                raise Damage("complex is not 16 bytes")
            re_, im = struct.unpack("<dd", data)
            return complex(re_, im)
        if code == 5:
            if not 1 <= len(data) <= MAX_BIGINT:
                raise Damage("big int length")
            return int.from_bytes(data, "little", signed=True)
        raise Damage(f"unknown ext type {code}")

    def _header(self, data: memoryview, level: int):
        sub = _Decoder(data, self.tuple_depth)
        h = sub.value(level)
        if not isinstance(h, list) or len(h) != 2:
            raise Damage("numpy header is not an array of 2")
        return h, sub, data[sub.p:]

    def ndarray(self, data: memoryview, level: int):
        (dts, dims), sub, raw = self._header(data, level)
        dt = check_dtype(dts)
        if not isinstance(dims, list) or len(dims) > MAX_DIMS:
            raise Damage("dims")
        for d in dims:
            if type(d) is not int or d < 0:
                raise Damage("dim")
        if dt.itemsize == 0:
            raise Damage("item size 0")
        n = math.prod(dims)
        if n * dt.itemsize != len(raw):
            raise Damage("element bytes do not match the shape")
        try:
            if n == 0:
                return np.empty(dims, dtype=dt)
            return np.frombuffer(bytes(raw), dtype=dt).reshape(dims).copy()
        except Exception as e:  # noqa: BLE001
            raise Damage(f"numpy: {e}")

    def npscalar(self, data: memoryview, level: int):
        (dts, raw), sub, rest = self._header(data, level)
        if len(rest):
            raise Damage("bytes after the scalar")
        dt = check_dtype(dts)
        if not isinstance(raw, bytes):
            raise Damage("scalar raw is not bin")
        if dt.itemsize == 0:
            if len(raw) > 4 or any(raw):
                raise Damage("empty scalar raw")
            if dt.kind == "U":
                return np.str_("")
            if dt.kind == "S":
                return np.bytes_(b"")
            raise Damage("item size 0")
        if len(raw) != dt.itemsize:
            raise Damage("scalar raw size")
        try:
            return np.frombuffer(raw, dtype=dt)[0]
        except Exception as e:  # noqa: BLE001
            raise Damage(f"numpy: {e}")


def decode(payload) -> Any:
    """Exactly one msgpack value (section 5); raises Damage otherwise."""
    dec = _Decoder(payload)
    v = dec.value(1)
    if dec.p != len(dec.d):
        raise Damage("bytes after the value")
    return v


# ------------------------------------------------------------- file helpers
def open_regular(path: str):
    """Section 3: O_NOFOLLOW | O_NONBLOCK, must be a regular file.
    Returns (fd, None) or (None, 'not_regular'|'unreadable'|'missing')."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "not_regular"
        return None, "unreadable"
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None, "unreadable"
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None, "not_regular"
    return fd, None


def read_all(fd) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def list_segments(d: str):
    names = os.listdir(d)
    segs = []
    for n in names:
        m = SEGMENT_RE.fullmatch(n)
        if m:
            segs.append((int(m.group(1)), os.path.join(d, n)))
    segs.sort()
    return segs


# ------------------------------------------------------- 8.6 vouching
def vouching(last: str, k: int):
    """(segment file `last` holds an intact segment_synced record for k or
    a later segment, found anywhere by its header bytes 16..19; how many
    intact records it holds read in order from offset 32)."""
    fd, err = open_regular(last)
    if fd is None:
        return False, 0
    try:
        data = read_all(fd)
    except OSError:
        return False, 0
    finally:
        os.close(fd)
    size, best = len(data), -1
    tag = bytes([SEGMENT_SYNCED, 0, 0, 0])
    hit = data.find(tag, SEG_HEADER + 16)
    while hit >= 0:
        o = hit - 16
        crc, length = struct.unpack_from("<II", data, o)
        if length <= 64 and o + REC_HEADER + length <= size \
                and crc32(data[o + 4:o + REC_HEADER + length]) == crc:
            try:
                v = decode(data[o + REC_HEADER:o + REC_HEADER + length])
            except Exception:  # noqa: BLE001
                v = None
            if isinstance(v, list) and v and type(v[0]) is int:
                best = max(best, v[0])
        hit = data.find(tag, hit + 1)
    o, count = SEG_HEADER, 0
    while o + REC_HEADER <= size:
        crc, length, seq, rtype, flags, reserved = struct.unpack_from("<IIQBBH", data, o)
        if length > MAX_RECORD or o + REC_HEADER + length > size:
            break
        if crc32(data[o + 4:o + REC_HEADER + length]) != crc or flags or reserved:
            break
        count += 1
        o += REC_HEADER + length
    return best >= k, count


# ------------------------------------------------------- 4.1 segment header
def check_segment_header(head: bytes):
    """Returns (header dict, None) or (None, (check number, reason))."""
    if len(head) < SEG_HEADER:
        return None, (1, "segment header truncated")
    if head[0:8] != SEG_MAGIC:
        return None, (2, "bad segment magic")
    version, flags, number, first_seq, hcrc = struct.unpack_from("<HHIQI", head, 8)
    if crc32(head[0:24]) != hcrc:
        return None, (3, "segment header CRC mismatch")
    if any(head[28:32]):
        return None, (4, "nonzero reserved bytes in segment header")
    if version not in SEGMENT_VERSIONS:
        return None, (5, f"unsupported version {version}")
    # 6: only bit 0 (background sync) is known, and only in version 3.
    if flags & ~(1 if version == 3 else 0):
        return None, (6, "unknown segment flags")
    return {"number": number, "first_seq": first_seq, "flags": flags}, None


# --------------------------------------------------------------- 4.2 record
def record_problem(data: bytes, size: int, o: int):
    """First failing intact-check of 4.2, as (reason, crc_computed, length),
    or (None, False, header tuple) for an intact record."""
    if size - o < REC_HEADER:
        return "incomplete record header", False, 0
    crc, length, seq, rtype, flags, reserved = struct.unpack_from("<IIQBBH", data, o)
    if length > MAX_RECORD:
        return f"record length {length} exceeds the maximum", False, length
    if o + REC_HEADER + length > size:
        return f"record length {length} runs past the end of the file", False, length
    if crc32(data[o + 4:o + REC_HEADER + length]) != crc:
        return "record CRC mismatch", True, length
    if flags or reserved:
        return "unknown record flags", True, length
    return None, False, (length, seq, rtype)


@dataclass
class Record:
    seq: int
    type: int
    payload: Any
    trusted: bool
    file: str
    offset: int


# ---------------------------------------------------------- 8. the reader
class Reader:
    def __init__(self, d, after_seq=0, start=None, decode_payloads=True, diags=None):
        self.dir = d
        self.after_seq = after_seq
        self.start = start
        self.decode = decode_payloads
        self.diags = diags if diags is not None else []
        self.records: list[Record] = []
        self.next_seq = after_seq + 1
        self.trusting = True
        self.last_trusted_seq = None
        self.clean_close = False

    def diag(self, kind, path, offset, message="", seq=None, severity=None):
        self.diags.append(Diag(kind, path, offset, severity or SEVERITY[kind], message, seq))

    def run(self):
        try:
            segs = list_segments(self.dir)
        except OSError:
            self.diag("unreadable", self.dir, None, "cannot list the journal directory")
            return self
        if not segs:
            self.diag("no_segments", self.dir, None, "no segment files")
            return self
        self.all = segs          # 8.6 looks at the last two of all segments
        first_offset = None
        if self.start is not None and any(n == self.start[0] for n, _ in segs):
            segs = [(n, f) for n, f in segs if n >= self.start[0]]
            first_offset = self.start[1]
        self.ended = False
        self.unsettled = None
        for i, (number, path) in enumerate(segs):
            self.read_segment(number, path, i == len(segs) - 1,
                              first_offset if i == 0 else None)
            if self.ended:
                break
        return self

    # 8.6: a segment synced in the background
    def unsynced_tear(self, k, path, o):
        self.unsettled = None
        count = 0
        for n, later in self.all:
            if n > k:
                vouched, c = vouching(later, k)
                if vouched:
                    return False
                count += c      # (all of them: no later one vouches)
        self.diag("unsynced_tail", path, o,
                  f"unsynced tear; {count} intact records of later segments not applied")
        self.ended = True
        return True

    def read_segment(self, number, path, is_last, start_offset):
        prev, self.unsettled = self.unsettled, None   # 8.6
        fd, err = open_regular(path)
        if fd is None:
            if err == "not_regular":
                self.diag("not_regular", path, None, "not a regular file")
            else:
                self.diag("unreadable", path, None, "cannot open")
            self.trusting = False
            return
        try:
            data = read_all(fd)
        except OSError:
            self.diag("unreadable", path, None, "read error")
            self.trusting = False
            return
        finally:
            os.close(fd)
        size = len(data)
        head = data[:SEG_HEADER]
        header, problem = check_segment_header(head)
        if header is None:
            if is_last and len(head) < SEG_HEADER:
                self.diag("torn_tail", path, 0, "segment header truncated")
                return
            if is_last and not any(data):
                self.diag("torn_tail", path, 0, "zero-filled segment")
                return
            if problem[0] != 5 and prev is not None and self.unsynced_tear(prev[0], path, 0):
                return
            if problem[0] == 5:
                self.diag("unsupported_version", path, 0, problem[1])
                self.trusting = False
                return
            self.diag("bad_segment_header", path, 0, problem[1])
        if header is not None and prev is not None \
                and header["first_seq"] > self.next_seq \
                and self.unsynced_tear(*prev):
            return
        if header is not None and not is_last and header["flags"] & 1:
            self.unsettled = (number, path, size)
        if header is not None and header["number"] != number:
            self.diag("bad_segment_header", path, 0, "segment number mismatch")
        if header is not None and header["first_seq"] > self.next_seq:
            self.diag("gap", path, 16, "first_seq too high", seq=header["first_seq"])
            self.trusting = False
            self.next_seq = header["first_seq"]
        o = SEG_HEADER
        if start_offset is not None and start_offset >= SEG_HEADER:
            o = min(start_offset, max(size, SEG_HEADER))
        self.budget = RESYNC_FACTOR * max(size - o, 0) + RESYNC_EXTRA
        self.scan(number, path, data, size, o, is_last)

    def scan(self, number, path, data, size, o, is_last):
        while o < size:
            problem, crc_done, info = record_problem(data, size, o)
            if problem:
                if self.unsettled is not None and self.unsettled[0] == number \
                        and self.unsynced_tear(number, path, o):
                    return
                if crc_done:
                    self.budget -= REC_HEADER + info
                r = self.resync(data, size, o + 1)
                if r == "GAVE_UP":
                    self.diag("corrupt", path, o, problem + " (resync budget exhausted)")
                    return
                if r is None:
                    if is_last:
                        self.diag("torn_tail", path, o, problem)
                    else:
                        self.diag("trailing_garbage", path, o, problem)
                    return
                self.diag("corrupt", path, o, problem)
                o = r
                continue
            length, seq, rtype = info
            self.accept(path, data, o, length, seq, rtype)
            o += REC_HEADER + length

    def resync(self, data, size, p0):
        min_seq = self.next_seq
        p = p0
        while p + REC_HEADER <= size:
            crc, length, seq, rtype, flags, reserved = struct.unpack_from("<IIQBBH", data, p)
            p_ = p
            p += 1
            if flags or reserved:
                continue
            if seq < min_seq:
                continue
            if length > MAX_RECORD:
                continue
            if p_ + REC_HEADER + length > size:
                continue
            if seq > min_seq + size:
                continue
            cost = 16 + length
            if cost > self.budget:
                return "GAVE_UP"
            self.budget -= cost
            if crc32(data[p_ + 4:p_ + REC_HEADER + length]) == crc:
                return p_
        return None

    def accept(self, path, data, o, length, seq, rtype):
        if seq < self.next_seq:
            if seq > self.after_seq:
                self.diag("duplicate", path, o, "repeated record", seq=seq)
            return
        if seq > self.next_seq:
            self.diag("gap", path, o, f"expected seq {self.next_seq}", seq=seq)
            self.trusting = False
        self.next_seq = seq + 1
        payload = None
        if self.decode:
            try:
                payload = decode(data[o + REC_HEADER:o + REC_HEADER + length])
            except (Damage, RecursionError) as e:
                self.diag("bad_payload", path, o, str(e), seq=seq)
                self.trusting = False
                return
        self.records.append(Record(seq, rtype, payload, self.trusting, path, o))
        if self.trusting:
            self.last_trusted_seq = seq
            self.clean_close = rtype == CLOSE


def position_wrong(data: bytes, o: int, after_seq: int):
    size = len(data)
    if o < SEG_HEADER:
        return "inside the segment header"
    if o > size:
        return "past the end of the segment"
    if o + REC_HEADER > size:
        return None
    crc, length, seq, rtype, flags, reserved = struct.unpack_from("<IIQBBH", data, o)
    if flags or reserved or seq == after_seq + 1 or length > min(MAX_RECORD, size - o - REC_HEADER):
        return None
    if crc32(data[o + 4:o + REC_HEADER + length]) == crc:
        return f"holds seq {seq}, not {after_seq + 1}"
    return None


# ------------------------------------------------------------ 7. snapshots
SNAPSHOT_ORDER = ("checkpoint", "checkpoint.new", "checkpoint.old")


def check_snapshot(data: bytes):
    """7.1: returns (seq, payload value, None) or (None, None, (offset, reason))."""
    if len(data) < SNAP_HEADER:
        return None, None, (0, "snapshot header truncated")
    if data[0:8] != SNAP_MAGIC:
        return None, None, (0, "bad snapshot magic")
    if any(data[36:40]):
        return None, None, (36, "nonzero reserved bytes")
    version, flags, reserved, seq, length, crc = struct.unpack_from("<HHIQQI", data, 8)
    if version != FORMAT_VERSION:
        return None, None, (8, f"unsupported snapshot version {version}")
    if length > MAX_SNAPSHOT or SNAP_HEADER + length != len(data):
        return None, None, (24, "payload length does not match the file size")
    if crc32(data[0:32], data[40:]) != crc:
        return None, None, (40, "snapshot CRC mismatch")
    try:
        value = decode(data[40:])
    except (Damage, RecursionError):
        return None, None, (40, "payload cannot be decoded")
    return seq, value, None


@dataclass
class Datasets:
    local: dict = field(default_factory=dict)
    archive: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    broadcast: dict = field(default_factory=dict)


@dataclass
class State:
    run_info: Any = None
    stage: Any = None
    stage_time: Any = None
    run_time: Any = None
    datasets: Datasets = field(default_factory=Datasets)
    checkpoint: Any = None
    checkpoint_seq: Any = None
    resumed_from: Any = None
    closed: bool = False
    close_reason: Any = None
    last_seq: int = 0


class NotRunState(Exception):
    pass


def state_from_snapshot(value, seq):
    """7.2: returns (state, (segment, offset)) or raises NotRunState."""
    if not isinstance(value, dict) or "position" not in value or "state" not in value:
        raise NotRunState("not a map with position and state")
    pos = value["position"]
    if not (isinstance(pos, list) and len(pos) == 2
            and all(type(x) is int for x in pos)
            and 0 <= pos[0] < 2**32 and 0 <= pos[1] < 2**63):
        raise NotRunState("bad position")
    S = value["state"]
    if not isinstance(S, dict):
        raise NotRunState("state is not a map")
    st = State(last_seq=seq)
    for k in ("run_info", "checkpoint", "resumed_from"):
        v = S.get(k)
        if v is not None and not isinstance(v, dict):
            raise NotRunState(f"{k} is not a map or nil")
        setattr(st, k, v)
    st.stage = S.get("stage")
    st.stage_time = S.get("stage_time")
    st.run_time = S.get("run_time")
    st.checkpoint_seq = S.get("checkpoint_seq")
    D = S.get("datasets")
    if not isinstance(D, dict):
        raise NotRunState("datasets missing")
    if type(D.get("format")) is not int or D.get("format") != DATASET_STATE_FORMAT:
        raise NotRunState("dataset state format")
    entries, arch = D.get("datasets"), D.get("archive")
    if not isinstance(entries, list) or not isinstance(arch, list):
        raise NotRunState("dataset tables")
    ds = st.datasets
    for e in entries:
        if not (isinstance(e, list) and len(e) == 6 and isinstance(e[0], str)
                and isinstance(e[2], dict) and all(type(x) is bool for x in e[3:6])):
            raise NotRunState("bad dataset entry")
        key, val, md, bc, persist, archive = e
        if bc:
            ds.broadcast[key] = (persist, val, md)
        if archive:
            ds.local[key] = val
        ds.metadata[key] = md
    for e in arch:
        if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)):
            raise NotRunState("bad archive entry")
        ds.archive[e[0]] = e[1]
    return st, (pos[0], pos[1])


def load_snapshot(d, diags):
    """7.4. Returns (state or None, start or None, used file name or None)."""
    failed = []
    used = None
    for name in SNAPSHOT_ORDER:
        path = os.path.join(d, name)
        fd, err = open_regular(path)
        if err == "missing":
            continue
        if fd is None:
            # 3.: a snapshot file that is not regular is reported as a
            # damaged snapshot (7.4), not as not_regular.
            failed.append((name, None, err))
            continue
        try:
            data = read_all(fd)
        except OSError:
            failed.append((name, None, "unreadable"))
            continue
        finally:
            os.close(fd)
        seq, value, problem = check_snapshot(data)
        if problem:
            failed.append((name, problem[0], problem[1]))
            continue
        used = (name, seq, value)
        break
    if used is None:
        # 7.4: none valid -> ONE combined diagnostic (unless all missing).
        if failed:
            diags.append(Diag("snapshot", d, None, "info", "no usable "
                              "snapshot (" + "; ".join(
                                  f"{n}: {r}" for n, _o, r in failed) + ")"))
        return None, None, None
    for name, off, reason in failed:
        diags.append(Diag("snapshot", d, None, "info", f"{name}: {reason}"))
    name, seq, value = used
    try:
        st, start = state_from_snapshot(value, seq)
    except NotRunState as e:
        diags.append(Diag("snapshot", os.path.join(d, name), None, "info",
                          f"snapshot content is not a run state ({e})"))
        return None, None, None
    return st, start, name


# ------------------------------------------------------- 6.3 record semantics
class BadRecord(Exception):
    pass


def _arr(p, n):
    if not isinstance(p, list) or len(p) != n:
        raise BadRecord(f"payload is not an array of {n}")
    return p


def _target(ds: Datasets, key):
    if key in ds.broadcast:
        t = ds.broadcast[key][1]
    else:
        t = ds.local.get(key)
    if t is None:
        raise BadRecord(f"no dataset {key!r} to mutate")
    return t


def apply(st: State, rec: Record):
    p, t, ds = rec.payload, rec.type, st.datasets
    try:
        if t == RUN_INFO:
            if not (isinstance(p, dict) and isinstance(p.get("rid"), int)
                    and isinstance(p.get("class_name"), str)):
                raise BadRecord("bad run_info")
            st.run_info = p
        elif t == STAGE:
            _arr(p, 2)
            if not isinstance(p[0], str):
                raise BadRecord("stage is not a str")
            st.stage, st.stage_time = p
            if p[0] == "run":
                st.run_time = p[1]
        elif t == SET:
            key, value, md, bc, persist, archive = _arr(p, 6)
            if not isinstance(key, str) or not isinstance(md, dict):
                raise BadRecord("bad set")
            bc, persist, archive = bool(bc), bool(persist), bool(archive)
            if persist:
                bc = True
            if bc:
                ds.broadcast[key] = (persist, value, md)
            else:
                ds.broadcast.pop(key, None)
            if archive:
                ds.local[key] = value
            else:
                ds.local.pop(key, None)
            ds.metadata[key] = md
        elif t == MUTATE:
            key, index, value = _arr(p, 3)
            if not isinstance(key, str):
                raise BadRecord("key")
            target = _target(ds, key)
            if isinstance(index, tuple):
                if index and isinstance(index[0], tuple):
                    index = tuple(slice(*i) for i in index)
                elif index == ():
                    raise BadRecord("empty index")
                else:
                    index = slice(*index)
            target[index] = value
        elif t == APPEND_TO:
            key, value = _arr(p, 2)
            if not isinstance(key, str):
                raise BadRecord("key")
            target = _target(ds, key)
            if not hasattr(target, "append"):
                raise BadRecord("target has no append")
            target.append(value)
        elif t == ARCHIVE:
            key, value = _arr(p, 2)
            if not isinstance(key, str):
                raise BadRecord("key")
            ds.archive[key] = value
        elif t == CHECKPOINT:
            _arr(p, 1)
            if not isinstance(p[0], dict):
                raise BadRecord("checkpoint state is not a map")
            st.checkpoint, st.checkpoint_seq = p[0], rec.seq
        elif t == RESUMED_FROM:
            if not isinstance(p, dict):
                raise BadRecord("resumed_from is not a map")
            st.resumed_from = p
        elif t == CLOSE:
            _arr(p, 1)
            st.close_reason = p[0] if isinstance(p[0], str) else None
        elif t == HEARTBEAT:
            # 6.3: a non-empty array whose first item is a number.
            if not isinstance(p, list) or not p or isinstance(p[0], bool) \
                    or not isinstance(p[0], (int, float)):
                raise BadRecord("heartbeat is not [unix_time, ...]")
        elif t == SEGMENT_SYNCED:
            # 6.3: an array; nothing changes (it matters to the reader only).
            if not isinstance(p, list):
                raise BadRecord("segment_synced is not an array")
        else:
            raise BadRecord(f"unknown record type {t}")
    except BadRecord:
        raise
    except Exception as e:  # noqa: BLE001  (assignment failed)
        raise BadRecord(f"{type(e).__name__}: {e}")
    st.last_seq = rec.seq
    st.closed = t == CLOSE


@dataclass
class Result:
    state: State
    diagnostics: list
    applied: list            # seqs of the trusted records applied, in order
    records_untrusted: int
    snapshot: Optional[str]
    clean_close: bool        # 10.2: last trusted record is close "results_written"
    reader_clean_close: bool  # 8.4's variable: last trusted record is a close

    @property
    def records_applied(self):
        return len(self.applied)


def replay(d: str) -> Result:
    d = os.fspath(d)
    diags: list = []
    st, start, snap_name = load_snapshot(d, diags)
    after_seq = 0
    if st is None:
        st = State()
    else:
        after_seq = st.last_seq
    if start is not None:
        try:
            segs = list_segments(d)
        except OSError:
            segs = []
        match = [f for n, f in segs if n == start[0]]
        if match:
            fd, err = open_regular(match[0])
            data = None
            if fd is not None:
                try:
                    data = read_all(fd)
                except OSError:
                    data = None
                finally:
                    os.close(fd)
            if data is not None:
                why = position_wrong(data, start[1], after_seq)
                if why:
                    diags.append(Diag("snapshot_ahead", match[0], start[1], "error", why))
                    start = None
        elif segs and segs[-1][0] < start[0]:
            diags.append(Diag("snapshot_ahead", d, None, "error",
                              "the snapshot's segment is past the last segment"))
    reader = Reader(d, after_seq, start, True, diags).run()
    applied, untrusted, ok = [], 0, True
    for rec in reader.records:
        if not (ok and rec.trusted):
            untrusted += 1
            continue
        try:
            apply(st, rec)
        except BadRecord as e:
            diags.append(Diag("bad_record", rec.file, rec.offset, "error", str(e), rec.seq))
            ok = False
            # 9.2 "N intact records *after* the damage were left out": the
            # failing record itself is not counted (the code agrees).
            continue
        applied.append(rec.seq)
    clean = st.closed and st.close_reason == "results_written"
    return Result(st, diags, applied, untrusted, snap_name, clean, reader.clean_close)


if __name__ == "__main__":  # pragma: no cover
    import sys
    for d in sys.argv[1:]:
        r = replay(d)
        print(d, "last_seq", r.state.last_seq, "applied", r.records_applied,
              "untrusted", r.records_untrusted, "stage", r.state.stage,
              "closed", r.state.closed, r.state.close_reason)
        for x in r.diagnostics:
            print("  ", x)
