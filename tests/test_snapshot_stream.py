"""The streamed snapshot encoder (codec.snapshot_stream_pack) and the
snapshot writer built on it: byte for byte the reference encoding
(``encode_snapshot(seq, codec.pack(payload))``), whatever the chunk and
flush sizes; failures mid-stream leave the previous snapshot; a crash at
every file operation of a large, sliced, hinted write leaves an old or a
new snapshot.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from test_codec import (FLOATS, INTS, SCALARS, VALUES, assert_same,
                        numpy_arrays)
from test_snapshot import CrashAt, _Crash, _loaded, same

from artiq_journal.errors import JournalFailed
from artiq_journal.journal import codec, snapshot
from artiq_journal.journal.constants import (SNAPSHOT_NAME, SNAPSHOT_NEW,
                                             SNAPSHOT_OLD)
from artiq_journal.journal.fsio import FileOps
from artiq_journal.journal.snapshot import (encode_snapshot, load_snapshot,
                                            read_snapshot_file,
                                            write_snapshot)

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def streamed(value, **sizes) -> bytes:
    """The stream's bytes, each piece copied during its sink call."""
    out = bytearray()

    def sink(piece):
        assert isinstance(piece, memoryview) and piece.nbytes > 0
        out.extend(piece)

    codec.snapshot_stream_pack(value, sink, **sizes)
    return bytes(out)


# -- strategies ---------------------------------------------------------------

#: Items a scan list holds, mostly floats: the fast path and every way out
#: of it (an int, a bool, a numpy float 64 -- a float subclass --, None,
#: a nested list, a large array).
SCAN_ITEMS = st.one_of(
    FLOATS, FLOATS, FLOATS, FLOATS, INTS, st.booleans(), st.none(),
    FLOATS.map(np.float64), st.lists(FLOATS, max_size=3), SCALARS)


def big_array(draw_dtype: str, n: int, view: str) -> np.ndarray:
    # At least codec.ZERO_COPY_MIN bytes: passed on from its own memory
    # (a copy first when it is not C-contiguous).
    dtype = np.dtype(draw_dtype)
    count = max(codec.ZERO_COPY_MIN // dtype.itemsize + 1, n)
    a = (np.arange(2 * count) % 100).astype(dtype)
    if view == "strided":
        return a[::2]
    if view == "reversed":
        return a[::-1]
    if view == "2d-transposed":
        return a.reshape(2, -1).T
    if view == "fortran":
        return np.asfortranarray(a.reshape(-1, 2))
    return a


BIG_ARRAYS = st.builds(
    big_array,
    st.sampled_from(["<f8", ">f8", "<i4", ">u2", "|b1", "|u1", "<c16",
                     "<M8[ns]", ">m8[s]", "|S3", "<U2", "<f2"]),
    st.integers(0, 20_000),
    st.sampled_from(["plain", "strided", "reversed", "2d-transposed",
                     "fortran"]))

STATES = st.recursive(
    st.one_of(SCALARS, numpy_arrays(), BIG_ARRAYS,
              st.lists(SCAN_ITEMS, max_size=40),
              st.lists(FLOATS, min_size=1, max_size=40)),
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=6), children, max_size=6),
        st.dictionaries(st.integers(), SCALARS, max_size=6)),
    max_leaves=10)

#: Chunk and flush sizes small enough that a few dozen items cross every
#: boundary; and the defaults.
SIZES = st.one_of(
    st.just({}),
    st.builds(dict, chunk_items=st.integers(1, 9),
              flush_bytes=st.integers(1, 64)))


# -- the encoder --------------------------------------------------------------

@SETTINGS
@given(VALUES, SIZES)
def test_stream_is_exactly_pack_for_every_supported_value(value, sizes):
    assert streamed(value, **sizes) == codec.pack(value)


@SETTINGS
@given(STATES, SIZES)
def test_stream_is_exactly_pack_for_scan_shaped_states(value, sizes):
    assert streamed(value, **sizes) == codec.pack(value)


def test_float_lists_of_every_length_and_chunk_size():
    # Every split of a list into chunks, and every list-header size
    # (fixarray, array 16, array 32) around a chunk.
    for n in list(range(0, 40)) + [65_535, 65_536, 65_537]:
        value = [i * 0.5 - 3 for i in range(n)]
        for chunk_items in (1, 2, 3, 4, 5, 15, 16, 17, 65_535, 65_536):
            if n > 1000 and chunk_items < 15:
                continue
            assert streamed(value, chunk_items=chunk_items) \
                == codec.pack(value), (n, chunk_items)


@pytest.mark.parametrize("chunk_items", [1, 2, 7, 1 << 16])
def test_long_float_lists_with_an_intruder_anywhere(chunk_items):
    floats = [i * 0.25 for i in range(50)]
    for intruder in (1, True, None, np.float64(0.5), [0.5], "x",
                     float("nan"), np.ones(codec.ZERO_COPY_MIN)):
        for at in (0, 1, 24, 48, 49):
            value = floats[:at] + [intruder] + floats[at + 1:]
            assert streamed(value, chunk_items=chunk_items) \
                == codec.pack(value), (intruder, at)


def test_large_arrays_are_passed_on_from_their_own_memory():
    array = np.arange(codec.ZERO_COPY_MIN, dtype="<f8")
    pieces = []
    codec.snapshot_stream_pack({"a": array, "b": [1.5] * 10},
                               lambda piece: pieces.append(
                                   (piece.obj, bytes(piece))))
    owners = [owner for owner, _ in pieces]
    assert any(owner is not None and np.shares_memory(owner, array)
               for owner in owners if isinstance(owner, np.ndarray))
    assert b"".join(data for _, data in pieces) == codec.pack(
        {"a": array, "b": [1.5] * 10})


@pytest.mark.parametrize("value", [
    {"s": {1, 2}},
    [0.5] * 100 + [object()],
    {"k": [[0.5] * 3, {"bad": object}]},
    [1.0, 2.0, (1, {1})],
])
@pytest.mark.parametrize("chunk_items", [3, 1 << 16])
def test_unsupported_values_raise_type_error_as_pack_does(value,
                                                          chunk_items):
    with pytest.raises(TypeError):
        codec.pack(value)
    with pytest.raises(TypeError):
        codec.snapshot_stream_pack(value, lambda piece: None,
                                   chunk_items=chunk_items)


def _nested(depth: int, leaf):
    value = leaf
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("make", [
    lambda d: _nested(d, 0.5),
    lambda d: _nested(d, [0.5] * 10),
    lambda d: [0.5, 0.5, _nested(d - 1, 1)],
    lambda d: {"k": _nested(d - 1, {})},
    lambda d: [0.5, 0.25, _nested(d - 1, (1,))],
])
@pytest.mark.parametrize("chunk_items", [2, 1 << 16])
def test_nesting_limit_is_the_same_as_pack(make, chunk_items):
    for depth in (codec.MAX_NESTING - 1, codec.MAX_NESTING,
                  codec.MAX_NESTING + 1, codec.MAX_NESTING + 50, 600):
        value = make(depth)
        try:
            expected = codec.pack(value)
        except TypeError:
            with pytest.raises(TypeError):
                codec.snapshot_stream_pack(value, lambda piece: None,
                                           chunk_items=chunk_items)
        else:
            assert streamed(value, chunk_items=chunk_items) == expected


@pytest.mark.parametrize("value", [
    [[0.5] * 10] * 3,                       # whole pieces of the buffer
    [0.5] * 40 + ["x"] * 40,                # pieces past a list header
    {"a": np.ones(codec.ZERO_COPY_MIN), "b": [1.5] * 30},
])
def test_a_piece_kept_past_its_call_never_shows_other_bytes(value):
    """The contract is "valid during the call"; a sink breaking it must
    fail loudly -- the piece released, or the stream refusing to reuse
    the buffer (BufferError) -- and never read other bytes later."""
    kept = []
    try:
        codec.snapshot_stream_pack(
            value, lambda piece: kept.append((piece, bytes(piece))),
            chunk_items=16, flush_bytes=1)
    except BufferError:
        return
    for piece, data in kept:
        try:
            later = bytes(piece)
        except ValueError:
            continue  # released
        assert later == data


# -- the snapshot file ----------------------------------------------------------

@pytest.fixture
def small_slices(monkeypatch):
    """Slicing and writeback hints at sizes a small state crosses."""
    monkeypatch.setattr(snapshot, "_WRITE_SLICE", 4096)
    monkeypatch.setattr(snapshot, "_WRITEBACK_BYTES", 3 * 4096 + 5)
    hints = []
    real = snapshot._start_writeback

    def record(fd, offset, length):
        hints.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(snapshot, "_start_writeback", record)
    return hints


def scan_state(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"run_info": {"rid": seed}, "stage": "run", "stage_time": 1.5,
            "datasets": {"format": 1, "datasets": [
                ["scan.x", [float(x) for x in rng.random(n)], {}, False,
                 False, True],
                ["scan.i", list(range(n)), {"unit": "s"}, True, False, True],
                ["scan.img", rng.random((n // 8 + 1, 9)), {}, False, False,
                 True],
                ["scan.t", np.arange(n).astype("<M8[us]")[::3], {}, True,
                 True, False]],
                "archive": [["a", (1, 2.5, "x")]]}}


@SETTINGS
@given(STATES, st.integers(0, 2 ** 64 - 1))
def test_snapshot_file_is_byte_identical_to_the_reference(tmp_path_factory,
                                                          state, seq):
    path = tmp_path_factory.mktemp("snap")
    payload = {"position": [1, 32], "state": state}
    size = write_snapshot(str(path), seq, payload, sync=False)
    data = (path / SNAPSHOT_NAME).read_bytes()
    assert data == encode_snapshot(seq, codec.pack(payload))
    assert size == len(data)
    snap = read_snapshot_file(str(path / SNAPSHOT_NAME))
    assert snap.seq == seq
    assert_same(codec.unpack(codec.pack(payload)), snap.state)


@pytest.mark.parametrize("n", [0, 1, 5000, 70_000, 200_000])
def test_large_snapshot_sliced_and_hinted_is_the_reference(tmp_path,
                                                           small_slices, n):
    state = scan_state(n)
    write_snapshot(str(tmp_path), 7, state)
    data = (tmp_path / SNAPSHOT_NAME).read_bytes()
    assert data == encode_snapshot(7, codec.pack(state))
    assert same(load_snapshot(str(tmp_path)).state, state)
    # Hints cover the payload in order, each range once, inside the file.
    end = snapshot.SNAPSHOT_HEADER_SIZE
    for offset, length in small_slices:
        assert offset == end and length >= snapshot._WRITEBACK_BYTES
        end += length
    assert end <= len(data)
    if n >= 5000:
        assert small_slices


def test_type_error_after_many_pieces_removes_the_new_file(tmp_path,
                                                           small_slices):
    write_snapshot(str(tmp_path), 1, scan_state(10))
    bad = scan_state(100_000)
    bad["datasets"]["archive"].append(["b", {1, 2}])
    with pytest.raises(TypeError):
        write_snapshot(str(tmp_path), 2, bad)
    assert small_slices  # it did write a lot before failing
    assert sorted(os.listdir(tmp_path)) == [SNAPSHOT_NAME]
    assert _loaded(tmp_path)[0] == 1


@pytest.mark.parametrize("fail_at", [1, 3, 40])
def test_enospc_mid_stream_keeps_the_previous_snapshot(tmp_path,
                                                       small_slices,
                                                       fail_at):
    write_snapshot(str(tmp_path), 1, scan_state(10))

    class Full(FileOps):
        writes = 0

        def write(self, fd, data):
            Full.writes += 1
            if Full.writes == fail_at:
                os.write(fd, memoryview(data)[:len(data) // 2])
                return len(data) // 2
            if Full.writes > fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.write(fd, data)

    with pytest.raises(JournalFailed) as info:
        write_snapshot(str(tmp_path), 2, scan_state(100_000), ops=Full())
    assert SNAPSHOT_NEW in str(info.value)
    assert os.strerror(errno.ENOSPC) in str(info.value)
    assert _loaded(tmp_path)[0] == 1
    # checkpoint.new, if left, is invalid (zero header) and never used.
    snap = load_snapshot(str(tmp_path))
    assert snap.name == SNAPSHOT_NAME and snap.seq == 1


@pytest.mark.parametrize("prior", ["none", "one", "two"])
def test_crash_at_every_step_of_a_large_sliced_rotation(tmp_path,
                                                        small_slices, prior):
    states = {s: scan_state(6000, s) for s in (1, 2, 9, 10)}
    violations = []
    k = 0
    while True:
        k += 1
        path = tmp_path / f"{prior}-{k}"
        path.mkdir()
        acceptable = [None]
        if prior != "none":
            write_snapshot(str(path), 1, states[1])
            acceptable = [(1, states[1])]
        if prior == "two":
            write_snapshot(str(path), 2, states[2])
            acceptable = [(2, states[2])]
        acceptable.append((9, states[9]))
        ops = CrashAt(k)
        try:
            write_snapshot(str(path), 9, states[9], ops=ops)
            completed = True
        except _Crash:
            completed = False
        got = _loaded(path)
        if not any(got is a or (got is not None and a is not None
                                and got[0] == a[0] and same(got[1], a[1]))
                   for a in acceptable):
            violations.append(f"crash at call {k} ({ops.log[-1]}) left "
                              f"{None if got is None else got[0]}")
        if completed:
            assert got is not None and got[0] == 9
            break
        write_snapshot(str(path), 10, states[10])
        assert _loaded(path)[0] == 10
        assert load_snapshot(str(path)).name == SNAPSHOT_NAME
        if prior != "none":
            assert read_snapshot_file(str(path / SNAPSHOT_OLD)).seq in (1, 2,
                                                                        9)
    assert k > 20  # the write really was cut into many calls
    assert violations == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=3000),
       st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1),
       st.integers(0, 2 ** 63))
def test_cached_crc_combine_is_the_crc_of_the_concatenation(a, b, crc1, crc2,
                                                            length):
    import zlib

    from artiq_journal.journal.framing import crc32_combine
    from review2_support import reference_combine
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) \
        == zlib.crc32(a + b)
    assert crc32_combine(crc1, crc2, length) \
        == reference_combine(crc1, crc2, length)
