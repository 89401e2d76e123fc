"""A run's writer in a child process, for the operations tests
(``test_ops_*.py``): the real ``JournalWriter`` journaling a deterministic
sequence of dataset operations, and that sequence as a model.

    python ops_writer.py JOURNAL --ops N [--op-sleep S] [--heartbeat S]
                         [--end close|hold|exit] [--segment-bytes B]
                         [--snapshot-every K] [--seed X]

Prints ``ready <pid>`` once the run-info record is written, ``done <seq>``
after the last operation and ``opseqs [seq, ...]`` (the seq of each
operation), then closes the journal (``close``), keeps it
open forever (``hold``: a live run doing nothing) or exits without closing
(``exit``: an orphan).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import numpy as np

from artiq_journal.journal.constants import (REC_APPEND, REC_CHECKPOINT,
                                             REC_MUTATE, REC_RUN_INFO,
                                             REC_SET, REC_STAGE)
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.runstate import RunState


def operations(n: int, seed: int = 0) -> list[tuple[int, object]]:
    """The ``n`` dataset operations (record type, payload) of a run."""
    rng = random.Random(seed)
    ops: list[tuple[int, object]] = [
        (REC_SET, ["ys", [], {}, False, False, True]),
        (REC_SET, ["arr", np.zeros(16), {"unit": "V"}, True, False, True]),
    ]
    while len(ops) < n:
        roll = rng.random()
        if roll < 0.6:
            ops.append((REC_APPEND, ["ys", rng.random()]))
        elif roll < 0.8:
            ops.append((REC_MUTATE, ["arr", rng.randrange(16),
                                     float(len(ops))]))
        elif roll < 0.95:
            ops.append((REC_SET, ["x", len(ops), {}, False, False, True]))
        else:
            ops.append((REC_CHECKPOINT, [{"i": len(ops)}]))
    return ops[:n]


def model_states(n: int, seed: int = 0) -> list[dict]:
    """``result[k]``: the datasets (key -> value) after the first ``k``
    operations, by ARTIQ's semantics (``RunState``)."""
    state = RunState()
    out = [{}]
    for i, (rtype, payload) in enumerate(operations(n, seed)):
        state.apply(i + 1, rtype, payload)
        out.append({k: np.array(v, copy=True)
                    for k, v in state.datasets.local.items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("journal")
    p.add_argument("--ops", type=int, default=100)
    p.add_argument("--op-sleep", type=float, default=0.0)
    p.add_argument("--heartbeat", type=float, default=None)
    p.add_argument("--end", choices=("close", "hold", "exit"),
                   default="close")
    p.add_argument("--segment-bytes", type=int, default=64 << 20)
    p.add_argument("--snapshot-every", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    w = JournalWriter(args.journal, fsync="group",
                      heartbeat_interval=args.heartbeat,
                      segment_bytes=args.segment_bytes)
    state = RunState()
    run_info = {"rid": 1, "class_name": "Scan", "expid": {"file": "scan.py"},
                "pid": os.getpid(), "start_time": time.time(),
                "artiq_version": "8.0", "host": "test"}
    seq = w.append(REC_RUN_INFO, run_info)
    state.apply(seq, REC_RUN_INFO, run_info)
    stage = ["run", time.time()]
    seq = w.append(REC_STAGE, stage)
    state.apply(seq, REC_STAGE, stage)
    print(f"ready {os.getpid()}", flush=True)
    op_seqs = []
    for i, (rtype, payload) in enumerate(operations(args.ops, args.seed)):
        seq = w.append(rtype, payload)
        op_seqs.append(seq)
        state.apply(seq, rtype, payload)
        if args.snapshot_every and i % args.snapshot_every == 0:
            w.write_snapshot(state.to_snapshot())
        if args.op_sleep:
            time.sleep(args.op_sleep)
    print(f"done {seq}", flush=True)
    # Which seq each operation got (heartbeats take the others).
    print("opseqs " + json.dumps(op_seqs), flush=True)
    if args.end == "close":
        w.close("results_written")
    elif args.end == "hold":
        while True:
            time.sleep(3600)
    else:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
