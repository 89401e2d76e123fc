"""Shared by the fuzz harnesses and tests/test_fuzz_hypothesis.py.

Each harness module defines ``check(data: bytes) -> None``: it feeds the
bytes to one entry point and raises if the entry point misbehaves.  Allowed
outcomes are records, diagnostics, and the documented exceptions
(:class:`JournalError` subclasses where a function documents them); any other
exception propagates and is a crash.  The same ``check`` runs under atheris
(``python fuzz/<name>.py``), under hypothesis in CI, and on every file in
``tests/fuzz_regressions/<harness>/``.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator

_HERE = os.path.dirname(os.path.abspath(__file__))
_SRC = os.path.join(os.path.dirname(_HERE), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from artiq_journal.journal.constants import (  # noqa: E402
    SNAPSHOT_NAME, SNAPSHOT_NEW, SNAPSHOT_OLD)
from artiq_journal.journal.framing import (  # noqa: E402
    encode_record, encode_segment_header, parse_segment_name)

#: Default libFuzzer flags, unless given on the command line: a record or a
#: snapshot must never need more memory or time than this to be read or
#: rejected.  Crashing inputs go to fuzz/corpus/crashes/ (git-ignored).
DEFAULT_FLAGS = ("-rss_limit_mb=1024", "-timeout=20", "-max_len=1048576",
                 "-artifact_prefix=" + os.path.join(_HERE, "corpus",
                                                    "crashes", ""))
SCRATCH_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else None

_scratch: str | None = None


@contextmanager
def scratch_dir() -> Iterator[str]:
    """An empty directory, reused across inputs (created once per process,
    emptied after each use): fuzzing makes millions of them."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.mkdtemp(prefix="artiq-journal-fuzz-",
                                    dir=SCRATCH_ROOT)
    path = os.path.join(_scratch, "run")
    shutil.rmtree(path, ignore_errors=True)
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# --- a journal directory as one byte string --------------------------------
# The recovery harness mutates whole journals.  An archive is a sequence of
# entries: name length u8, name, data length u32 LE, data.  Names are mapped
# to journal file names so no input can write outside the scratch directory.

_ENTRY = struct.Struct("<I")
_KNOWN_NAMES = (SNAPSHOT_NAME, SNAPSHOT_NEW, SNAPSHOT_OLD)


def pack_journal(journal_dir: str) -> bytes:
    """Archive the segment and checkpoint files of a journal directory."""
    out = bytearray()
    for name in sorted(os.listdir(journal_dir)):
        if parse_segment_name(name) is None and name not in _KNOWN_NAMES:
            continue
        with open(os.path.join(journal_dir, name), "rb") as f:
            data = f.read()
        raw = name.encode()
        out += bytes([len(raw)]) + raw + _ENTRY.pack(len(data)) + data
    return bytes(out)


def unpack_journal(data: bytes, journal_dir: str) -> None:
    """Materialize an archive; bytes that do not parse become the last
    segment (so every input is some journal)."""
    pos, index = 0, 0
    while pos < len(data):
        n = data[pos]
        name_end = pos + 1 + n
        if name_end + 4 > len(data):
            break
        name = _safe_name(data[pos + 1:name_end], index)
        (size,) = _ENTRY.unpack_from(data, name_end)
        body = data[name_end + 4:name_end + 4 + size]
        write_file(os.path.join(journal_dir, name), body)
        pos, index = name_end + 4 + size, index + 1
    if pos < len(data):
        write_file(os.path.join(journal_dir, f"segment-{index + 1}.log"),
                   data[pos:])


def _safe_name(raw: bytes, index: int) -> str:
    name = raw.decode("ascii", "replace")
    if name in _KNOWN_NAMES or parse_segment_name(name) is not None:
        return name
    return f"segment-{index + 1}.log"


# --- validly framed records from arbitrary bytes ----------------------------

def frame_records(data: bytes) -> bytes:
    """A segment whose records all have correct CRCs, cut from ``data``:
    byte 0 = number of records (1..8), then per record one byte record type
    and two bytes length (capped by what is left), then the payload.  So
    mutated payloads reach the decoder and replay instead of failing the
    CRC check."""
    out = bytearray(encode_segment_header(1, 1))
    if not data:
        return bytes(out)
    count, pos = data[0] % 8 + 1, 1
    for seq in range(1, count + 1):
        if pos + 3 > len(data):
            break
        rtype = data[pos] % 12
        length = int.from_bytes(data[pos + 1:pos + 3], "little")
        payload = data[pos + 3:pos + 3 + length]
        pos += 3 + len(payload)
        out += encode_record(seq, rtype, payload)
    return bytes(out)


# --- running under atheris ---------------------------------------------------

def fuzz_main(check: Callable[[bytes], None], harness: str) -> None:
    """``python fuzz/<harness>.py [libFuzzer flags] [corpus dirs]``."""
    try:
        import atheris
    except ImportError:
        sys.exit(f"{harness}: atheris is not installed (pip install atheris, "
                 "needs clang/libFuzzer on some platforms).  Without it, run "
                 "the same check under hypothesis: pytest "
                 "tests/test_fuzz_hypothesis.py")
    argv = list(sys.argv)
    # libFuzzer's -jobs/-fork re-run argv[0] through the shell: make that
    # this interpreter on this script, not a bare (non-executable) .py path.
    argv[0] = f"{sys.executable} {os.path.abspath(argv[0])}"
    os.makedirs(os.path.join(_HERE, "corpus", "crashes"), exist_ok=True)
    for flag in DEFAULT_FLAGS:
        if not any(a.startswith(flag.split("=")[0] + "=") for a in argv):
            argv.insert(1, flag)
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = os.path.join(_HERE, "corpus", harness)
        if os.path.isdir(corpus):
            argv.append(corpus)
    atheris.instrument_all()
    atheris.Setup(argv, check)
    # libFuzzer ends the process from C while objects are alive; the weakref
    # and logging callbacks run during teardown then print "Exception
    # ignored" tracebacks that look like crashes and are not.  (A crash in
    # ``check`` is reported by libFuzzer before that, with its exit code.)
    sys.unraisablehook = lambda _unraisable: None
    atheris.Fuzz()
