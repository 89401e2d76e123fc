"""Review 2, streamed snapshot (journal/snapshot.py)."""

from __future__ import annotations

import sys
import threading

import pytest

from artiq_journal.journal import snapshot as snapshots
from artiq_journal.journal.framing import crc32_combine


@pytest.mark.xfail(strict=True, reason=(
    "R2-2: _APPEND_ZEROS (the cached CRC-combine operators) is extended "
    "without a lock: two threads growing it at once both square the same "
    "last entry and append, so entry k no longer means 2**k zero bytes; "
    "every later snapshot of such a length gets a wrong CRC (rejected on "
    "load), for the life of the process"))
def test_crc_combine_cache_stays_correct_when_grown_by_two_threads(
        monkeypatch):
    # Two journals in one process (two LiveJournals / writers driven from
    # their own threads) whose snapshots cross a new power of two at
    # about the same time.  A tiny switch interval only makes the
    # interleaving the GIL already allows frequent enough to see.
    monkeypatch.setattr(snapshots, "_APPEND_ZEROS", [])
    length = (1 << 34) - 1
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(10):
            snapshots._APPEND_ZEROS.clear()
            barrier = threading.Barrier(4)

            def run():
                barrier.wait()
                snapshots._crc32_combine(0x12345678, 0x9abcdef0, length)
            threads = [threading.Thread(target=run) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for n in (1, 1000, 1 << 20, 20 << 20, 3 << 30, length):
                assert snapshots._crc32_combine(0xdeadbeef, 0x0badf00d, n) \
                    == crc32_combine(0xdeadbeef, 0x0badf00d, n), n
    finally:
        sys.setswitchinterval(old)
