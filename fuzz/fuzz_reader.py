"""Fuzz the record reader and the payload decoder.

    python fuzz/fuzz_reader.py -atheris_runs=100000 [corpus dir]

Each input is used three ways: as a whole segment file read by
``JournalReader``; as one msgpack value given to ``codec.unpack``; and cut
into validly framed records (``_common.frame_records``) so that damaged
payloads get past the CRC to the decoder and to ``replay``.  The reader and
replay must never raise; ``codec.unpack`` may raise only ``DecodeError``.
"""

from __future__ import annotations

import os

from _common import fuzz_main, frame_records, scratch_dir, write_file

from artiq_journal.journal import codec
from artiq_journal.journal.constants import (RECORD_HEADER_SIZE,
                                             SEGMENT_HEADER_SIZE)
from artiq_journal.journal.framing import segment_name
from artiq_journal.journal.reader import JournalReader
from artiq_journal.replay import replay

#: Small, so a damaged length field is refused rather than read.
MAX_RECORD_BYTES = 1 << 20


def read_journal(journal_dir: str) -> None:
    """Read everything; check what the reader promises about what it
    returns (trusted records contiguous from seq 1)."""
    reader = JournalReader(journal_dir, max_record_bytes=MAX_RECORD_BYTES)
    expected = 1
    for record in reader:
        if record.trusted:
            assert record.seq == expected, (record.seq, expected)
            expected += 1
    assert reader.last_trusted_seq == expected - 1
    for d in reader.diagnostics:
        assert d.severity in ("info", "error") and isinstance(d.message, str)


def decode(data: bytes) -> None:
    try:
        codec.unpack(data)
    except codec.DecodeError:
        pass


def check(data: bytes) -> None:
    with scratch_dir() as journal:
        write_file(os.path.join(journal, segment_name(1)), data)
        read_journal(journal)
    decode(data)
    # A real segment's first payload starts here: mutations of seed
    # journals reach the decoder directly.
    decode(data[SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE:])
    with scratch_dir() as journal:
        write_file(os.path.join(journal, segment_name(1)),
                   frame_records(data))
        read_journal(journal)
        replay(journal, max_record_bytes=MAX_RECORD_BYTES)


if __name__ == "__main__":
    fuzz_main(check, "fuzz_reader")
