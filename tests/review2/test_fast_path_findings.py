"""Review 2, per-op fast path (codec.encode_append / encode_mutate,
JournalWriter.append_encoded).

Promise: the bytes are exactly ``codec.pack([key, value])`` /
``pack([key, index, value])`` or the slow path is taken."""

from __future__ import annotations

import numpy as np
import pytest

from review2_support import SNAN32_BITS, float32_from_bits

from artiq_journal.journal import codec


@pytest.fixture(autouse=True)
def _float32_registered_by_an_ordinary_value(monkeypatch):
    # Whatever ran before in this process: the first float32 the codec
    # sees is an ordinary one (as in any scan), which registers the type.
    for name in ("_SCALAR_PREFIX", "_SCALAR_STRUCT", "_VALUE_STRUCT"):
        table = getattr(codec, name)
        saved = table.pop(np.float32, None)
        if saved is not None:
            monkeypatch.setitem(table, np.float32, saved)
            table.pop(np.float32)
    codec.pack(np.float32(1.5))


# Fixed: R2-1: _VALUE_STRUCT[np.float32] packs through struct '<f', which
#   goes via a C double and sets the quiet bit of a signalling NaN;
#   pack() uses tobytes() -- the journaled float32 is not ARTIQ's
def test_float32_signalling_nan_append_is_exactly_pack():
    codec.pack(np.float32(1.5))     # any ordinary float32 first (a scan)
    snan = float32_from_bits(SNAN32_BITS)
    data = codec.encode_append("scan.f32", snan)
    expected = codec.pack(["scan.f32", snan])
    assert data is None or data == expected
    if data is not None:
        got = codec.unpack(data)[1]
        assert got.tobytes() == snan.tobytes()


# Fixed: R2-1: as for append: encode_mutate's float32 value goes through
#   struct '<f' (quiet bit set on a signalling NaN)
def test_float32_signalling_nan_mutate_is_exactly_pack():
    codec.pack(np.float32(1.5))
    snan = float32_from_bits(SNAN32_BITS)
    data = codec.encode_mutate("scan.f32", 3, snan)
    expected = codec.pack(["scan.f32", 3, snan])
    assert data is None or data == expected


# Fixed: R2-1: end to end: append_to of a float32 signalling NaN is journaled
#   with the quiet bit set (fast path; the writer's zero-copy packer
#   does the same through _SCALAR_STRUCT), so replay gives other bits
#   than the value ARTIQ holds and writes to HDF5
def test_float32_signalling_nan_survives_the_journal(tmp_path):
    from test_hooks_semantics import MockDatasetDB, journal, make_manager
    from artiq_journal.replay import replay
    codec.pack(np.float32(1.5))
    mgr = make_manager("runner", MockDatasetDB())
    live = journal(mgr, tmp_path)
    # set(key, value, metadata, broadcast, persist, archive)
    mgr.set("scan.f32", [], {}, True, False, True)
    snan = float32_from_bits(SNAN32_BITS)
    mgr.append_to("scan.f32", np.float32(2.5))
    mgr.append_to("scan.f32", snan)
    held = mgr.local["scan.f32"][-1].tobytes()
    path = live.path
    live.abandon()
    got = replay(path).state.datasets.local["scan.f32"][-1]
    assert type(got) is np.float32
    assert got.tobytes() == held
