"""Bad input never crashes, hangs or blows up memory: hypothesis-driven fuzz
of the reader, the snapshot loader and recovery, in bounded CI time.

The checks are the atheris harnesses' own ``check()`` functions (fuzz/), so
"what counts as a crash" has one definition.  Inputs: random bytes; real
journals written by the real writer, then damaged (bit flips, truncation,
splices, duplicated records, 4 GiB length fields); and hostile msgpack in
validly framed records (unknown ext types, lying length headers, deep
nesting, non-UTF-8 strings and keys, unhashable keys).  Runs derandomized:
the same examples every CI run.  Each test prints its counts.
"""

from __future__ import annotations

import collections
import functools
import os
import shutil
import struct
import sys
import tempfile
import traceback
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

FUZZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "fuzz")
if FUZZ not in sys.path:
    sys.path.insert(0, FUZZ)

import damage  # noqa: E402
import fuzz_reader  # noqa: E402
import fuzz_recovery  # noqa: E402
import fuzz_snapshot  # noqa: E402
from _common import pack_journal, scratch_dir, write_file  # noqa: E402
from make_corpus import write_sample_journals  # noqa: E402

from artiq_journal.errors import CorruptSnapshot  # noqa: E402
from artiq_journal.journal import codec, reader as reader_module  # noqa: E402
from artiq_journal.journal.constants import (  # noqa: E402
    RECORD_HEADER_SIZE, REC_SET, SEGMENT_HEADER_SIZE, SNAPSHOT_HEADER,
    SNAPSHOT_MAGIC, SNAPSHOT_NAME)
from artiq_journal.journal.framing import (  # noqa: E402
    encode_record, encode_segment_header, segment_name)
from artiq_journal.journal.reader import JournalReader, read_all  # noqa: E402
from artiq_journal.journal.snapshot import read_snapshot_file  # noqa: E402

FUZZ_SETTINGS = settings(
    derandomize=True, database=None, deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TORTURE = os.environ.get("ARTIQ_JOURNAL_TORTURE") == "1"
N = 20 if TORTURE else 1  # examples multiplier

#: Open bugs that the generated inputs can hit: name -> (exception types,
#: "file.py:function" the exception passes through, or text of its message).
#: Each has a strict-xfail input in tests/fuzz_regressions/; here a hit is
#: counted and printed, so that a *new* crash still fails the test while a
#: known one does not hide the others.
KNOWN_BUGS = {}
COUNTS: collections.Counter = collections.Counter()


def _known_bug(exc: BaseException) -> str | None:
    frames = {f"{os.path.basename(f.filename)}:{f.name}"
              for f in traceback.extract_tb(exc.__traceback__)}
    for name, (exc_types, where) in KNOWN_BUGS.items():
        if isinstance(exc, exc_types) and (where in frames
                                           or where in str(exc)):
            return name
    return None


def run_check(check, data: bytes, kind: str) -> None:
    COUNTS[kind] += 1
    try:
        check(data)
    except Exception as exc:
        bug = _known_bug(exc)
        if bug is None:
            raise
        COUNTS[f"known bug: {bug}"] += 1
        event(f"known bug: {bug}")


@pytest.fixture(scope="module", autouse=True)
def print_counts():
    yield
    lines = [f"{k}: {v}" for k, v in sorted(COUNTS.items())]
    print("\nfuzz inputs tried, by kind:\n  " + "\n  ".join(lines))


# --- real journals, damaged by code ------------------------------------------

@functools.lru_cache(maxsize=1)
def samples() -> dict[str, list[bytes]]:
    """Segments, checkpoint files and packed journals of real journals."""
    root = tempfile.mkdtemp(prefix="artiq-journal-samples-")
    try:
        found = {"segments": [], "snapshots": [], "archives": []}
        for path in write_sample_journals(root):
            found["archives"].append(pack_journal(path))
            for name in sorted(os.listdir(path)):
                with open(os.path.join(path, name), "rb") as f:
                    data = f.read()
                if name.startswith("segment-"):
                    found["segments"].append(data)
                elif name.startswith("checkpoint"):
                    found["snapshots"].append(data)
        return found
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mutation():
    """One damage step: a function bytes -> bytes."""
    i = st.integers(0, 1 << 20)
    return st.one_of(
        i.map(lambda b: lambda d: damage.flip_bit(d, b)),
        i.map(lambda n: lambda d: damage.truncate(d, n % (len(d) + 1))),
        st.tuples(i, st.integers(1, 600)).map(
            lambda a: lambda d: damage.zero_range(d, a[0] % (len(d) + 1),
                                                  a[1])),
        st.tuples(i, i).map(lambda a: lambda d: damage.splice(
            d, d, a[0] % (len(d) + 1), a[1] % (len(d) + 1))),
        i.map(lambda k: lambda d: damage.duplicate_record(d, k)),
        st.tuples(i, st.sampled_from([0xFFFFFFFF, 0x80000000, 1 << 28,
                                      1 << 20])).map(
            lambda a: lambda d: damage.set_length(d, a[0], a[1])),
        st.tuples(i, st.binary(min_size=1, max_size=32)).map(
            lambda a: lambda d: d[:a[0] % (len(d) + 1)] + a[1]
            + d[a[0] % (len(d) + 1):]),
    )


def damaged(kind: str):
    return st.tuples(st.integers(0, 1 << 16),
                     st.lists(mutation(), min_size=1, max_size=4)).map(
        lambda a: _apply(samples()[kind][a[0] % len(samples()[kind])], a[1]))


def _apply(original: bytes, steps) -> tuple[bytes, bytes]:
    data = original
    for step in steps:
        data = step(data)
    return original, data


def _records(segment: bytes) -> dict[int, tuple[int, bytes]]:
    with scratch_dir() as journal:
        write_file(os.path.join(journal, segment_name(1)), segment)
        records, _ = read_all(journal, decode=False)
    return {r.seq: (r.rtype, r.payload) for r in records}


# --- random bytes ------------------------------------------------------------

@settings(FUZZ_SETTINGS, max_examples=300 * N)
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_reader(data):
    run_check(fuzz_reader.check, data, "reader: random bytes")


@settings(FUZZ_SETTINGS, max_examples=150 * N)
@given(st.binary(max_size=4096))
def test_random_bytes_with_a_segment_header_never_crash_the_reader(data):
    run_check(fuzz_reader.check, encode_segment_header(1, 1) + data,
              "reader: header + random bytes")


@settings(FUZZ_SETTINGS, max_examples=200 * N)
@given(st.binary(max_size=2048), st.integers(0, 3),
       st.integers(0, (1 << 64) - 1), st.booleans())
def test_random_snapshot_bodies_never_crash_the_loader(body, version, length,
                                                       honest_length):
    # A header with the right magic, so the fuzz gets past the first check.
    length = len(body) if honest_length else length
    head = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, version, 0, 0, 7, length, 0)
    run_check(fuzz_snapshot.check, head + body, "snapshot: random body")


@settings(FUZZ_SETTINGS, max_examples=30 * N)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_recovery(data):
    run_check(fuzz_recovery.check, data, "recovery: random bytes")


# --- damaged real journals ---------------------------------------------------

@settings(FUZZ_SETTINGS, max_examples=300 * N)
@given(damaged("segments"))
def test_damaged_segments_yield_only_records_that_were_written(case):
    original, data = case
    run_check(fuzz_reader.check, data, "reader: damaged real segment")
    # Damage is detected: whatever is still read back (trusted or not) is
    # byte for byte a record the writer wrote.
    written = _records(original)
    for seq, record in _records(data).items():
        assert written.get(seq) == record, f"seq {seq} read back altered"


@settings(FUZZ_SETTINGS, max_examples=200 * N)
@given(damaged("snapshots"))
def test_damaged_snapshots_load_unaltered_or_not_at_all(case):
    original, data = case
    run_check(fuzz_snapshot.check, data, "snapshot: damaged real snapshot")
    with scratch_dir() as journal:
        path = os.path.join(journal, SNAPSHOT_NAME)
        write_file(path, original)
        want = read_snapshot_file(path).state
        write_file(path, data)
        try:
            got = read_snapshot_file(path).state
        except CorruptSnapshot:
            return
    assert codec.pack(got) == codec.pack(want)


@settings(FUZZ_SETTINGS, max_examples=40 * N)
@given(damaged("archives"))
def test_damaged_journals_never_crash_recovery(case):
    run_check(fuzz_recovery.check, case[1], "recovery: damaged real journal")


# --- hostile msgpack in validly framed records -------------------------------

def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)


def _map_header(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)


def _ext(code: int, body: bytes) -> bytes:
    return b"\xc7" + bytes([len(body) % 256]) + struct.pack("b", code) \
        + body[:255]


_plain = st.one_of(st.none(), st.booleans(),
                   st.integers(-(1 << 63), (1 << 64) - 1),
                   st.floats(), st.text(max_size=8),
                   st.binary(max_size=8)).map(
    lambda v: msgpack.packb(v, use_bin_type=True))
_bad_str = st.binary(max_size=15).map(lambda b: bytes([0xa0 | len(b)]) + b)
_lying_header = st.sampled_from([
    b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xc1"])
_dtype = st.sampled_from(["<f8", ">i4", "|b1", "<c16", "|S3", "<U2",
                          "<M8[s]", "O", "V4", "i4,i4", "(2,)i4", "|S0",
                          "<U0", "x", "<f8" * 20, "(01,)i4", "i4,(1e9,)f8"])
_shape = st.lists(st.one_of(st.integers(0, 4), st.integers(-2, (1 << 64) - 1)),
                  max_size=4)
_known_ext = st.one_of(
    st.tuples(_dtype, _shape, st.binary(max_size=64)).map(
        lambda a: _ext(1, msgpack.packb([a[0], a[1]]) + a[2])),
    st.tuples(_dtype, st.binary(max_size=16)).map(
        lambda a: _ext(2, msgpack.packb([a[0], a[1]]))),
    st.binary(max_size=20).map(lambda b: _ext(4, b)),
    st.binary(max_size=20).map(lambda b: _ext(5, b)))
_unknown_ext = st.tuples(st.integers(-128, 127), st.binary(max_size=16)).map(
    lambda a: _ext(a[0], a[1]))
_leaf = st.one_of(_plain, _bad_str, _lying_header, _known_ext, _unknown_ext)
hostile_msgpack = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(
        lambda xs: _array_header(len(xs)) + b"".join(xs)),
    st.lists(st.tuples(inner, inner), max_size=3).map(
        lambda kv: _map_header(len(kv)) + b"".join(k + v for k, v in kv)),
    inner.map(lambda x: _ext(3, b"\x91" + x)),  # a tuple around it
), max_leaves=16)
_deep = st.one_of(st.integers(1, 3000).map(damage.nested_arrays),
                  st.integers(1, 200).map(damage.nested_tuples))
_payload = st.one_of(hostile_msgpack, _deep,
                     hostile_msgpack.map(damage.set_record_with),
                     st.sampled_from(sorted(damage.hostile_payloads())).map(
                         lambda name: damage.hostile_payloads()[name]))


def _framed(records: list[tuple[int, bytes]]) -> bytes:
    out = bytes([len(records) - 1])
    for rtype, payload in records:
        payload = payload[:0xFFFF]
        out += bytes([rtype]) + len(payload).to_bytes(2, "little") + payload
    return out


@settings(FUZZ_SETTINGS, max_examples=400 * N)
@given(st.lists(st.tuples(st.integers(0, 11), _payload), min_size=1,
                max_size=6))
def test_hostile_msgpack_in_valid_records_is_reported_not_raised(records):
    run_check(fuzz_reader.check, _framed(records),
              "reader+replay: hostile msgpack records")
    for _, payload in records:
        try:
            codec.unpack(payload)
        except codec.DecodeError:
            pass
        except Exception as exc:
            if _known_bug(exc) is None:
                raise
    assert not os.path.exists(damage.PICKLE_MARKER)


# --- memory and time are bounded ---------------------------------------------

def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("max_record_bytes", [None, 1 << 40])
def test_a_4gib_record_length_does_not_allocate(tmp_path, max_record_bytes):
    segment = damage.set_length(samples()["segments"][0], 3, 0xFFFFFFFF)
    write_file(str(tmp_path / segment_name(1)), segment)
    kwargs = {} if max_record_bytes is None else {
        "max_record_bytes": max_record_bytes}
    peak = _peak_mib(lambda: list(JournalReader(str(tmp_path), **kwargs)))
    print(f"\npeak while reading a 4 GiB length field: {peak:.2f} MiB")
    assert peak < 8


def test_a_huge_snapshot_length_does_not_allocate(tmp_path):
    body = b"\x00" * 64
    for length in (0xFFFFFFFF, (1 << 64) - 1, 8 << 30):
        head = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, 1, 0, 0, 1, length, 0)
        path = str(tmp_path / SNAPSHOT_NAME)
        write_file(path, head + body)

        def load(path=path):
            with pytest.raises(CorruptSnapshot):
                read_snapshot_file(path, max_bytes=1 << 62)
        assert _peak_mib(load) < 8


def test_lying_msgpack_headers_do_not_allocate():
    for name, payload in damage.hostile_payloads().items():
        if "4g" not in name:
            continue

        def decode(payload=payload):
            with pytest.raises(codec.DecodeError):
                codec.unpack(payload, max_bytes=1 << 40)
        assert _peak_mib(decode) < 8, name


def test_resync_over_crafted_garbage_is_linear(tmp_path, monkeypatch):
    # k fake headers, each claiming a payload that runs almost to the end.
    k, tail = 2000, 20_000
    body = b"".join(
        struct.pack("<IIQBBH", 0x12345678, (k - i - 1) * RECORD_HEADER_SIZE
                    + tail - 8, 1, REC_SET, 0, 0) for i in range(k))
    segment = encode_segment_header(1, 1) + body + bytes(tail)
    write_file(str(tmp_path / segment_name(1)), segment)
    crc_bytes = 0
    real_crc = reader_module.crc32

    def counting_crc(data, value=0):
        nonlocal crc_bytes
        crc_bytes += len(data)
        return real_crc(data, value)
    monkeypatch.setattr(reader_module, "crc32", counting_crc)
    list(JournalReader(str(tmp_path)))
    print(f"\nCRC work for a {len(segment)}-byte segment: {crc_bytes} bytes")
    assert crc_bytes <= 16 * len(segment)


def test_framed_record_helper_frames_valid_records():
    # The framed mode of the harness must really produce valid records, or
    # the hostile-msgpack tests would test nothing past the CRC.
    payload = codec.pack(["k", 1, {}, False, False, True])
    data = _framed([(REC_SET, payload)])
    with scratch_dir() as journal:
        write_file(os.path.join(journal, segment_name(1)),
                   fuzz_reader.frame_records(data))
        records, reader = read_all(journal)
    assert [(r.seq, r.payload) for r in records] == [
        (1, ["k", 1, {}, False, False, True])]
    assert reader.diagnostics == []
    assert encode_record(1, REC_SET, payload) in fuzz_reader.frame_records(
        data)
    assert SEGMENT_HEADER_SIZE == 32
