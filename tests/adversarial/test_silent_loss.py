"""Issue 12, "Silent loss": nothing a worker acknowledged is lost without a
loud report.  Each test reproduces a path on which the landed code lost
acknowledged data silently (exit 0, "clean")."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import h5py
import msgpack
import numpy as np
import pytest

from adversarial_support import (SRC, Journal, artiq_write_results, h5_beside,
                      journal_dir, run_cli, sample_journal)
from artiq_journal.journal import codec
from artiq_journal.journal.constants import (REC_APPEND, REC_CLOSE,
                                             REC_STAGE)
from artiq_journal.journal.framing import encode_record
from artiq_journal.journal.snapshot import encode_snapshot, \
    read_snapshot_file
from artiq_journal.recovery import recover


# -- 1. a close is not a promise unless the results file holds the data -------

WORKER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from artiq_journal.runner.datasets import DatasetDB, DatasetManager
from artiq_journal.worker_hooks.attach import attach

results, points, acks = sys.argv[2], int(sys.argv[3]), sys.argv[4]
mgr = DatasetManager(DatasetDB())
live = attach(mgr, rid=7, expid={"file": "scan.py", "class_name": "Scan",
              "arguments": {}, "log_level": 30}, class_name="Scan",
              results_dir=results, fsync="never")
live.stage("prepare")
live.stage("run")
parent = os.getppid()
mgr.set("ys", [], {}, True, False, True)
with open(acks, "w") as ack:
    for i in range(points):
        mgr.append_to("ys", float(i))
        ack.write(f"{i}\n")
        ack.flush()
        if i == points // 2:
            # The master dies here; the worker finishes run() alone.
            while os.getppid() == parent:
                time.sleep(0.01)
# Nobody asks for analyze, nobody writes ARTIQ's results file: the hook
# closes the journal at exit without a verified results file.
live.close()
"""

MASTER = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
print(child.pid, flush=True)
time.sleep(3600)
"""


def test_master_sigkill_while_worker_finishes_alone_is_recovered(tmp_path):
    results = str(tmp_path / "results" / "2026-01-01" / "10")
    os.makedirs(results)
    acks = str(tmp_path / "acks")
    points = 400
    master = subprocess.Popen(
        [sys.executable, "-c", MASTER, WORKER, SRC, results, str(points),
         acks], stdout=subprocess.PIPE, text=True)
    worker_pid = int(master.stdout.readline())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(acks) and \
                len(open(acks).read().split()) > points // 2:
            break
        time.sleep(0.01)
    os.kill(master.pid, signal.SIGKILL)      # the master dies mid-run
    master.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:       # the orphaned worker goes on
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    acked = [float(x) for x in open(acks).read().split()]
    assert len(acked) == points
    proc = run_cli(["-m", "artiq_journal.cli.recover",
                    str(tmp_path / "results")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recovered" in proc.stdout and "skipped_clean" not in proc.stdout
    with h5py.File(os.path.join(results, "000000007-Scan.h5"), "r") as f:
        assert list(f["datasets/ys"][()]) == acked
    verify = run_cli(["-m", "artiq_journal.cli.main", "verify",
                      os.path.join(results, "000000007-Scan.journal")])
    assert "clean close: no" in verify.stdout, verify.stdout


def test_artiq_journal_run_and_artiq_recover_agree(tmp_path):
    # The experiment sets a value h5py refuses (a dict): ARTIQ's own
    # write_results raises, the results file is incomplete.  "run" says
    # the journal is kept for artiq-recover; artiq-recover must then
    # recover it (not skip it as clean), keeping every other dataset.
    exp = tmp_path / "dicty.py"
    exp.write_text(
        "from artiq_journal.runner.experiment import *\n"
        "class Dicty(EnvExperiment):\n"
        "    def run(self):\n"
        "        self.set_dataset('good', [1, 2, 3])\n"
        "        self.set_dataset('bad', {'a': 1})\n")
    results = str(tmp_path / "r")
    run = run_cli(["-m", "artiq_journal.cli.main", "run", str(exp),
                   "--results", results], cwd=str(tmp_path))
    assert run.returncode == 1 and "recover it with artiq-recover" in \
        run.stdout, run.stdout + run.stderr
    rec = run_cli(["-m", "artiq_journal.cli.recover", "--json", results])
    report = json.loads(rec.stdout)
    (entry,) = report["runs"]
    assert entry["outcome"] in ("recovered", "recovered_partial"), entry
    with h5py.File(entry["output"], "r") as f:
        assert list(f["datasets/good"][()]) == [1, 2, 3]
        assert f["datasets/bad"].attrs["artiq_journal_encoding"] == "pyon"


# -- 2. no invented files ----------------------------------------------------------

def test_build_that_raised_gets_no_results_file(tmp_path):
    j = Journal(journal_dir(tmp_path))
    j.stage("build", 1.0)
    j.op("set", "x", 1, {}, False, False, True)
    j.stage("build_failed", 2.0)
    j.crash()                      # SIGTERMed before any close record
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "no_results_expected"
    assert report.exit_code == 0
    assert not os.path.exists(h5_beside(j.path))
    assert any("build() raised" in p.reason for p in run.problems)


def test_a_run_killed_during_prepare_is_still_recovered(tmp_path):
    j = Journal(journal_dir(tmp_path))
    j.stage("build", 1.0)
    j.stage("prepare", 2.0)
    j.op("set", "x", 1, {}, False, False, True)
    j.crash()
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered"
    with h5py.File(run.output, "r") as f:
        assert f["datasets/x"][()] == 1


# -- 3. damage before a close is damage ------------------------------------------

def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def test_bit_flip_before_an_intact_results_written_close_is_not_clean(
        tmp_path):
    j = sample_journal(tmp_path, crash=False)
    j.close("results_written")       # but no results file exists
    seg = os.path.join(j.path, "segment-1.log")
    _flip(seg, os.path.getsize(seg) // 2)
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered_partial", run
    assert report.exit_code == 1
    assert any(p.offset is not None and p.file.endswith("segment-1.log")
               for p in run.problems if p.severity == "error")
    verify = run_cli(["-m", "artiq_journal.cli.main", "verify", j.path])
    assert verify.returncode == 1 and "clean close: no" in verify.stdout


def test_close_frame_inside_the_last_value_is_not_a_close(tmp_path):
    # A CRC-valid close record embedded at the end of the last record's
    # value fooled the quick tail check.
    j = Journal(journal_dir(tmp_path))
    j.stage("run", 1.0)
    j.op("set", "x", [], {}, False, False, True)
    fake = encode_record(99, REC_CLOSE, codec.pack(["results_written"]))
    j.op("append_to", "x", fake)
    j.crash()
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered"
    with h5py.File(run.output, "r") as f:
        assert "datasets/x" in f


def test_gap_then_close_is_not_clean(tmp_path):
    j = Journal(journal_dir(tmp_path), segment_bytes=300)
    j.stage("run", 1.0)
    j.op("set", "x", [], {}, False, False, True)
    for i in range(60):
        j.op("append_to", "x", i)
    j.close("results_written")
    segments = sorted(n for n in os.listdir(j.path) if n.startswith("seg"))
    os.unlink(os.path.join(j.path, segments[1]))    # records lost
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered_partial" and report.exit_code == 1
    assert any("gap" in p.reason for p in run.problems)


def _rewrite_position(journal: str, segment: int, offset: int) -> None:
    path = os.path.join(journal, "checkpoint")
    snap = read_snapshot_file(path)
    body = dict(snap.state)
    body["position"] = [segment, offset]
    with open(path, "wb") as f:
        f.write(encode_snapshot(snap.seq, codec.pack(body)))


def _journal_with_snapshot_in_the_middle(root) -> Journal:
    """Twenty appends to ``x``, a snapshot after the tenth, crashed."""
    j = Journal(journal_dir(root))
    j.stage("run", 1.0)
    j.op("set", "x", [], {}, False, False, True)
    for i in range(10):
        j.op("append_to", "x", i)
    j.snapshot()
    for i in range(10, 20):
        j.op("append_to", "x", i)
    j.crash()
    return j


def test_snapshot_position_past_the_segment_end_drops_nothing(tmp_path):
    j = _journal_with_snapshot_in_the_middle(tmp_path)
    seg = os.path.join(j.path, "segment-1.log")
    _rewrite_position(j.path, 1, os.path.getsize(seg) + 4096)
    report = recover(tmp_path)
    (run,) = report.runs
    # Every record is still there: all of them come back, and the
    # checkpoint that disagrees with its segment is reported as damage.
    with h5py.File(run.output, "r") as f:
        assert list(f["datasets/x"][()]) == list(range(20))
    assert any(p.file.endswith("segment-1.log") and p.severity == "error"
               and "snapshot" in p.reason for p in run.problems)
    assert report.exit_code == 1
    verify = run_cli(["-m", "artiq_journal.cli.main", "verify", j.path])
    assert verify.returncode == 1, verify.stdout


def test_segment_cut_below_the_snapshot_position_is_reported(tmp_path):
    j = _journal_with_snapshot_in_the_middle(tmp_path)
    seg = os.path.join(j.path, "segment-1.log")
    os.truncate(seg, 100)          # the records after the snapshot: gone
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered_partial" and report.exit_code == 1
    assert any("snapshot" in p.reason and p.severity == "error"
               for p in run.problems)


# -- 5. salvage, not all-or-nothing ------------------------------------------------

def test_values_hdf5_cannot_store_cost_only_themselves(tmp_path):
    j = Journal(journal_dir(tmp_path))
    j.stage("run", 1.0)
    j.op("set", "before", 1.5, {}, False, False, True)
    deep = None
    for _ in range(90):           # deeper than h5py/numpy take
        deep = [deep]
    j.op("set", "deep", deep, {}, False, False, True)
    j.op("set", "nul", "a\0b", {}, False, False, True)
    j.op("set", "huge_int", 2 ** 100, {}, False, False, True)
    j.op("set", "nul\0key", 3, {}, False, False, True)
    j.append(8, {"rid": 1, "seq": 2, "journal": "x" * (1 << 20)})
    j.op("set", "after", np.arange(4), {}, False, False, True)
    j.crash()
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome in ("recovered", "recovered_partial"), run.problems
    with h5py.File(run.output, "r") as f:
        d = f["datasets"]
        assert d["before"][()] == 1.5
        assert list(d["after"][()]) == [0, 1, 2, 3]
        for name in ("deep", "nul", "huge_int"):
            assert d[name].attrs["artiq_journal_encoding"] == "pyon", name
        assert len(f["artiq_journal"].attrs["resumed_from"]) < 64 << 10


def test_a_value_with_no_storable_form_is_listed_and_exits_1(tmp_path):
    j = Journal(journal_dir(tmp_path))
    j.stage("run", 1.0)
    j.op("set", "ok", 1, {}, False, False, True)
    big = [{} for _ in range((1 << 20) + 10)]   # beyond the PYON fallback
    j.op("set", "maps", big, {}, False, False, True)
    j.crash()
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered_partial" and report.exit_code == 1
    with h5py.File(run.output, "r") as f:
        assert f["datasets/ok"][()] == 1
        (entry,) = [json.loads(u) for u in f["artiq_journal/unstored"]]
        assert entry[:2] == ["datasets", "maps"]
