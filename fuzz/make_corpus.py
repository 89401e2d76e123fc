"""Generate the seed corpus: real journals written by the real writer, and
damaged variants made from them by code (fuzz/damage.py).

    python fuzz/make_corpus.py            # writes fuzz/corpus/<harness>/
    python fuzz/make_corpus.py --out DIR

The corpus is generated, never committed (fuzz/corpus/ is git-ignored):
regenerate it whenever the format changes, so it never rots.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile

import numpy as np

from _common import pack_journal

from damage import (duplicate_record, flip_bit, hostile_payloads,
                    segment_with_version, set_length, snapshot_with_version,
                    truncate, zero_range)
from artiq_journal.journal import codec
from artiq_journal.journal.constants import (REC_APPEND, REC_ARCHIVE,
                                             REC_CHECKPOINT, REC_MUTATE,
                                             REC_RUN_INFO, REC_SET, REC_STAGE,
                                             SNAPSHOT_NAME, SNAPSHOT_OLD)
from artiq_journal.journal.reader import list_segments
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.runstate import RunState

HERE = os.path.dirname(os.path.abspath(__file__))

#: Values of every supported type, so seeds cover every codec branch.
SAMPLE_VALUES = [
    None, True, 42, -7, 2 ** 70, -(2 ** 80), 3.5, float("nan"), 1 + 2j,
    "text", "\u00e9\u4e2d", b"\x00\xff", [1, [2, [3]]], (1, (2, "x")),
    {"a": 1, 2: [3]}, np.arange(6, dtype="<f8").reshape(2, 3),
    np.array([1, 2], dtype=">i4"), np.array([True, False]),
    np.array([b"ab", b"c"]), np.array(["uni", "x"]),
    np.array(["2024-01-01"], dtype="M8[D]"), np.array([1 + 1j], dtype="c16"),
    np.float32(1.5), np.int64(-3), np.complex64(2j), np.zeros((0, 3)),
]


def _records() -> list[tuple[int, object]]:
    recs = [(REC_RUN_INFO, {"rid": 42, "class_name": "FuzzExperiment",
                            "expid": {"file": "x.py"}, "arguments": {}}),
            (REC_STAGE, ["run", 1700000000.0])]
    for i, value in enumerate(SAMPLE_VALUES):
        recs.append((REC_SET, [f"v{i}", value, {"unit": "s"}, i % 2 == 0,
                               i % 3 == 0, True]))
    recs += [(REC_SET, ["lst", [0, 0, 0], {}, False, False, True]),
             (REC_MUTATE, ["lst", 1, 5]),
             (REC_MUTATE, ["v15", ((0, 1), (0, 2)), 9.0]),
             (REC_APPEND, ["lst", 7]),
             (REC_ARCHIVE, ["from_db", 3.0]),
             (REC_CHECKPOINT, [{"step": 3}])]
    return recs


def write_sample_journals(root: str) -> list[str]:
    """Real journals in ``root``: closed, rotated with snapshots and not
    closed (orphaned), and with a torn tail.  Returns their paths."""
    records = _records()
    paths = []

    def journal(name, **kwargs):
        path = os.path.join(root, f"{len(paths) + 1:09d}-{name}.journal")
        paths.append(path)
        return JournalWriter(path, fsync="never", **kwargs), RunState()

    writer, _ = journal("Closed")
    for rtype, obj in records:
        writer.append(rtype, obj)
    writer.close()

    writer, state = journal("Rotated", segment_bytes=600)
    for i, (rtype, obj) in enumerate(records * 2, 1):
        state.apply(writer.append(rtype, obj), rtype, codec.unpack(
            codec.pack(obj)))
        if i % 12 == 0:
            writer.write_snapshot(state.to_snapshot())
    writer.abandon()

    writer, _ = journal("Torn")
    for rtype, obj in records[:10]:
        writer.append(rtype, obj)
    writer.abandon()
    last = list_segments(paths[-1])[-1][1]
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) - 5)
    return paths


def _segment_variants(seg: bytes) -> dict[str, bytes]:
    size = len(seg)
    out = {"intact": seg, "dup": duplicate_record(seg, 1),
           "len4g": set_length(seg, 2), "len4g-first": set_length(seg, 0),
           "zero-sector": zero_range(seg, 512, 512),
           "newer-version": segment_with_version(seg, 2)}
    for i, cut in enumerate((0, 31, 32, 40, size // 2, size - 1)):
        out[f"trunc{i}"] = truncate(seg, cut)
    for i, bit in enumerate((3, 8 * 40 + 1, 8 * (size // 2), 8 * size - 1)):
        out[f"flip{i}"] = flip_bit(seg, bit)
    return out


def _framed_seed(rtype: int, payload: bytes) -> bytes:
    """Input for fuzz_reader's framed mode: one record."""
    payload = payload[:0xFFFF]
    return bytes([0, rtype]) + len(payload).to_bytes(2, "little") + payload


def corpus_files(root: str) -> dict[str, dict[str, bytes]]:
    """harness -> {label: input bytes}."""
    corpus: dict[str, dict[str, bytes]] = {
        "fuzz_reader": {}, "fuzz_snapshot": {}, "fuzz_recovery": {}}
    reader, snap, recovery = corpus.values()
    for path in write_sample_journals(root):
        name = os.path.basename(path).split("-", 1)[1].split(".")[0]
        archive = pack_journal(path)
        recovery[f"{name}-intact"] = archive
        recovery[f"{name}-trunc"] = archive[:len(archive) * 2 // 3]
        recovery[f"{name}-flip"] = flip_bit(archive, 8 * len(archive) // 2)
        for number, seg_path in list_segments(path):
            with open(seg_path, "rb") as f:
                seg = f.read()
            for label, data in _segment_variants(seg).items():
                reader[f"{name}-seg{number}-{label}"] = data
        for fname in (SNAPSHOT_NAME, SNAPSHOT_OLD):
            snap_path = os.path.join(path, fname)
            if not os.path.exists(snap_path):
                continue
            with open(snap_path, "rb") as f:
                data = f.read()
            snap.update({f"{name}-{fname}": data,
                         f"{name}-{fname}-trunc": data[:len(data) // 2],
                         f"{name}-{fname}-flip": flip_bit(data, 8 * 50),
                         f"{name}-{fname}-v2": snapshot_with_version(data, 2)})
    for rtype, obj in _records():
        reader[f"framed-type{rtype}-{len(reader)}"] = _framed_seed(
            rtype, codec.pack(obj))
    for label, payload in hostile_payloads().items():
        reader[f"framed-hostile-{label}"] = _framed_seed(REC_SET, payload)
    return corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(HERE, "corpus"),
                        help="corpus root (default: fuzz/corpus)")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="artiq-journal-corpus-")
    try:
        for harness, files in corpus_files(tmp).items():
            out = os.path.join(args.out, harness)
            os.makedirs(out, exist_ok=True)
            for label, data in files.items():
                digest = hashlib.sha1(data).hexdigest()[:12]
                with open(os.path.join(out, f"{label}-{digest}"), "wb") as f:
                    f.write(data)
            print(f"{harness}: {len(files)} seeds in {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
