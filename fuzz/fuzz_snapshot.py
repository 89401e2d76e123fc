"""Fuzz the snapshot (checkpoint) loader.

    python fuzz/fuzz_snapshot.py -atheris_runs=100000 [corpus dir]

Each input is a ``checkpoint`` file, used twice: as it is, and re-framed
with a correct header and CRC around its payload bytes (a fuzzer almost never
fixes up a CRC, so only this way do mutated payloads reach the decoder and
``RunState.from_snapshot``).  ``read_snapshot_file`` may raise only
``CorruptSnapshot``; ``load_snapshot`` only ``NoSnapshot``; ``replay`` of a
journal holding it never raises.
"""

from __future__ import annotations

import os

from _common import fuzz_main, scratch_dir, write_file

from artiq_journal.errors import CorruptSnapshot, NoSnapshot
from artiq_journal.journal.constants import (SNAPSHOT_HEADER_SIZE,
                                             SNAPSHOT_NAME)
from artiq_journal.journal.snapshot import (encode_snapshot, load_snapshot,
                                            read_snapshot_file)
from artiq_journal.replay import replay

#: A corrupted length must be refused, never allocated.
MAX_SNAPSHOT_BYTES = 1 << 20


def load(data: bytes) -> None:
    with scratch_dir() as journal:
        path = os.path.join(journal, SNAPSHOT_NAME)
        write_file(path, data)
        try:
            snap = read_snapshot_file(path, MAX_SNAPSHOT_BYTES)
        except CorruptSnapshot as exc:
            assert exc.path == path, exc
            snap = None
        try:
            loaded = load_snapshot(journal, MAX_SNAPSHOT_BYTES)
        except NoSnapshot:
            loaded = None
        assert (snap is None) == (loaded is None)
        replay(journal)


def check(data: bytes) -> None:
    load(data)
    seq = int.from_bytes(data[16:24].ljust(8, b"\0"), "little")
    load(encode_snapshot(seq, data[SNAPSHOT_HEADER_SIZE:]))


if __name__ == "__main__":
    fuzz_main(check, "fuzz_snapshot")
