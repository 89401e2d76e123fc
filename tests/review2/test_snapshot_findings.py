"""Review 2, CRC combine (journal/framing.py, used by streamed snapshots
and the parallel CRC of large records)."""

from __future__ import annotations

import sys
import threading

from artiq_journal.journal import framing
from review2_support import reference_combine


def test_crc_combine_cache_stays_correct_when_grown_by_two_threads(
        monkeypatch):
    # R2-2: the cached operators were grown without a lock: two threads
    # growing them at once both squared the same last entry, so entry k no
    # longer meant 2**k zero bytes and every later snapshot of such a
    # length got a wrong CRC, for the life of the process.  A tiny switch
    # interval makes the interleaving the GIL allows frequent enough.
    length = (1 << 34) - 1
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(10):
            monkeypatch.setattr(framing, "_ZEROS", [])
            barrier = threading.Barrier(4)

            def run():
                barrier.wait()
                framing.crc32_combine(0x12345678, 0x9abcdef0, length)
            threads = [threading.Thread(target=run) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for n in (1, 1000, 1 << 20, 20 << 20, 3 << 30, length):
                assert framing.crc32_combine(0xdeadbeef, 0x0badf00d, n) \
                    == reference_combine(0xdeadbeef, 0x0badf00d, n), n
    finally:
        sys.setswitchinterval(old)
