"""Benchmark: ``recover()`` of a journal of N scalar ``append_to`` records.

Builds an orphaned journal (run info, the run stage, one ``set`` of an empty
list, then N ``REC_APPEND`` records of a float), and times, interleaved in
the same run so machine noise hits all of them alike:

* ``floor``   -- a pure-Python loop doing only read + CRC + ``msgpack.unpackb``
  over the same records (no state, no checks beyond the CRC);
* ``replay``  -- ``artiq_journal.replay.replay()`` (the state rebuild);
* ``recover`` -- the whole ``recover()`` into a fresh ``output`` directory
  (discovery, probes, replay, HDF5 file, atomic publish).

Prints records/s of each and the ratio recover/floor (target >= 0.5) as the
median over rounds of per-round ratios.

    PYTHONPATH=src python bench/bench_recover.py [--quick] [--records N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib

import msgpack

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "src"))

from artiq_journal.journal.constants import (  # noqa: E402
    RECORD_HEADER, RECORD_HEADER_SIZE, REC_APPEND, REC_RUN_INFO, REC_SET,
    REC_STAGE, SEGMENT_HEADER_SIZE)
from artiq_journal.journal.reader import list_segments  # noqa: E402
from artiq_journal.journal.writer import JournalWriter  # noqa: E402
from artiq_journal.recovery import recover  # noqa: E402
from artiq_journal.replay import replay  # noqa: E402

KEY = "scan.counts"


def build_journal(root: str, n: int) -> str:
    """An orphaned journal with ``n`` scalar appends; returns its path."""
    path = os.path.join(root, "results", "2025-01-01", "00",
                        "000000001-Bench.journal")
    writer = JournalWriter(path, fsync="never")
    writer.append(REC_RUN_INFO, {
        "rid": 1, "class_name": "Bench", "pipeline_name": "main",
        "priority": 0, "start_time": 0.0, "artiq_version": "bench",
        "expid": {"file": "bench.py", "class_name": "Bench",
                  "arguments": {}, "log_level": 30}})
    writer.append(REC_STAGE, ["run", 0.0])
    writer.append(REC_SET, [KEY, [], {}, False, False, True])
    append = writer.append
    for i in range(n):
        append(REC_APPEND, [KEY, i * 0.25])
    writer.abandon()   # no close record: orphaned, as after SIGKILL
    return path


def floor_loop(path: str) -> int:
    """read + CRC + msgpack.unpackb of every record, nothing else."""
    n = 0
    crc32 = zlib.crc32
    unpackb = msgpack.unpackb
    unpack_header = RECORD_HEADER.unpack
    hsize = RECORD_HEADER_SIZE
    for _number, seg in list_segments(path):
        with open(seg, "rb", buffering=1 << 20) as f:
            read = f.read
            read(SEGMENT_HEADER_SIZE)
            while True:
                header = read(hsize)
                if len(header) < hsize:
                    break
                crc, length, _seq, _rtype, _flags, _res = unpack_header(header)
                payload = read(length)
                if crc32(payload, crc32(header[4:])) != crc:
                    break
                unpackb(payload)
                n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="100,000 records instead of 1,000,000")
    parser.add_argument("--records", type=int, help="number of appends")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.records or (100_000 if args.quick else 1_000_000)
    total = n + 3
    scratch = tempfile.mkdtemp(prefix="bench-recover-")
    try:
        t0 = time.perf_counter()
        path = build_journal(scratch, n)
        size = sum(os.path.getsize(s) for _, s in list_segments(path))
        print(f"built journal of {total:,} records ({size / 1e6:.1f} MB) "
              f"in {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {"floor": [], "replay": [],
                                         "recover": []}
        ratios = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            assert floor_loop(path) == total
            times["floor"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            result = replay(path)
            times["replay"].append(time.perf_counter() - t0)
            assert result.records_applied == total
            del result

            out = os.path.join(scratch, f"out{r}")
            t0 = time.perf_counter()
            report = recover(path, output=out)
            times["recover"].append(time.perf_counter() - t0)
            (run,) = report.runs
            assert run.outcome == "recovered", run.to_dict()
            assert run.records_applied == total
            shutil.rmtree(out)
            ratios.append(times["floor"][-1] / times["recover"][-1])
        print(f"{'':10} {'median s':>10} {'records/s':>14}")
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"{name:10} {median:10.3f} {total / median:14,.0f}")
        ratio = statistics.median(ratios)
        replay_ratio = statistics.median(
            f / r for f, r in zip(times["floor"], times["replay"]))
        print(f"recover speed / floor speed: {ratio:.2f} (target >= 0.5); "
              f"replay alone: {replay_ratio:.2f}")
        hdf5_share = 1 - statistics.median(times["replay"]) / \
            statistics.median(times["recover"])
        print(f"time outside replay (probes, HDF5 write, publish): "
              f"{hdf5_share:.0%} of recover")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
