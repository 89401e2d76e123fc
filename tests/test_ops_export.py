"""``artiq-journal export`` against a journal that a child process keeps
writing through the real JournalWriter (segments rotating, snapshots
deleting old segments, heartbeats interleaving): every export is valid HDF5,
is published atomically, and equals the model's state after some prefix of
the operations -- exactly the prefix its ``artiq_journal/last_seq`` says.
The journal directory is never written to and its lock never taken."""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from artiq_journal.recovery.export import export_journal

import ops_writer

TESTS = os.path.dirname(os.path.abspath(__file__))
CLI = [sys.executable, "-m", "artiq_journal.cli.main"]
N_OPS = 3000


def _start_writer(journal, *args):
    child = subprocess.Popen(
        [sys.executable, os.path.join(TESTS, "ops_writer.py"), str(journal),
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    assert line.startswith("ready"), child.stderr.read()
    return child


def _datasets(path) -> tuple[int, dict]:
    with h5py.File(path, "r") as f:
        last_seq = int(f["artiq_journal"].attrs["last_seq"])
        assert f["artiq_journal"].attrs["exported"]
        assert not f["artiq_journal"].attrs["recovered"]
        assert int(f["rid"][()]) == 1
        return last_seq, {k: f["datasets"][k][()] for k in f["datasets"]}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def test_exports_of_a_live_run_are_consistent_prefixes(tmp_path):
    journal = tmp_path / "results" / "000000001-Scan.journal"
    out = tmp_path / "out"
    out.mkdir()
    child = _start_writer(journal, "--ops", str(N_OPS), "--op-sleep",
                          "0.0007", "--heartbeat", "0.01",
                          "--segment-bytes", "16384",
                          "--snapshot-every", "400", "--end", "close")
    exports = []
    try:
        i = 0
        while child.poll() is None:
            target = out / f"e{i}.h5"
            if i % 5 == 0:
                # The real command line, now and then (it is slower).
                res = subprocess.run(
                    CLI + ["export", str(journal), "--out", str(target),
                           "--json"], capture_output=True, text=True)
                assert res.returncode == 0, res.stderr
                doc = json.loads(res.stdout)
                assert doc["writer"] in ("live", "closed")
            else:
                result = export_journal(str(journal), str(target))
                assert not result.data_lost, result.problems
            exports.append(target)
            # The journal directory only ever holds the writer's files.
            assert all(n == "lock" or n.startswith(("segment-",
                                                    "checkpoint"))
                       for n in os.listdir(journal)), os.listdir(journal)
            i += 1
    finally:
        child.kill() if child.poll() is None else None
        child.wait()
    assert child.returncode == 0, child.stderr.read()
    final = export_journal(str(journal), str(out / "final.h5"))
    assert final.writer == "closed"
    exports.append(out / "final.h5")
    # Published by rename: no temporary file left behind.
    assert sorted(os.listdir(out)) == sorted(p.name for p in exports)

    # The writer reported which seq each operation got; an export with
    # last_seq L must hold exactly the operations with seq <= L.
    lines = child.stdout.read().splitlines()
    op_seqs = json.loads(next(l for l in lines
                              if l.startswith("opseqs "))[len("opseqs "):])
    assert len(op_seqs) == N_OPS
    models = ops_writer.model_states(N_OPS)
    seen_k = set()
    for path in exports:
        last_seq, data = _datasets(path)
        k = bisect.bisect_right(op_seqs, last_seq)
        assert _equal(data, models[k]), f"{path}: not the state after {k} ops"
        seen_k.add(k)
    print(f"{len(exports)} exports during the run, {len(seen_k)} distinct "
          f"prefixes, up to {max(seen_k)} of {N_OPS} operations")
    assert len(seen_k) >= 3
    assert max(seen_k) == N_OPS  # the last export saw the closed journal


def test_export_of_orphan_with_torn_tail_is_state_of_last_complete_record(
        tmp_path):
    journal = tmp_path / "000000001-Scan.journal"
    child = _start_writer(journal, "--ops", "50", "--end", "exit")
    child.wait()
    segment = journal / "segment-1.log"
    with open(segment, "ab") as f:
        f.write(b"\x07" * 11)  # a record cut short by the crash
    result = export_journal(str(journal), str(tmp_path / "o.h5"))
    assert result.writer == "orphaned"
    assert not result.data_lost  # a torn tail loses nothing acknowledged
    last_seq, data = _datasets(tmp_path / "o.h5")
    assert last_seq == 52
    assert _equal(data, ops_writer.model_states(50)[50])


def test_export_replaces_a_symlink_never_writes_through_it(tmp_path):
    journal = tmp_path / "000000001-Scan.journal"
    _start_writer(journal, "--ops", "5").wait()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "000000001-Scan.export.h5"
    os.symlink(victim, link)
    res = subprocess.run(CLI + ["export", str(journal)], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(link)
    assert _datasets(link)[0] == 8


def test_export_by_rid_and_usage_errors(tmp_path):
    journal = tmp_path / "results" / "2026-01-01" / "10" / \
        "000000001-Scan.journal"
    _start_writer(journal, "--ops", "5").wait()
    res = subprocess.run(CLI + ["export", "1", "--json"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["output"] == str(tmp_path / "000000001-Scan.export.h5")
    assert doc["last_seq"] == 8 and doc["writer"] == "closed"
    res = subprocess.run(CLI + ["export", "2"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "no journal of rid 2" in res.stderr
