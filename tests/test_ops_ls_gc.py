"""``ls``, ``gc`` and ``inspect`` over a results tree holding a live run
(a child process holding its writer open), an orphan (SIGKILLed writer), a
recovered run (``recovery.recover`` after SIGKILL), a damaged journal (a
bit flipped in a closed one) and a finished run with ARTIQ's complete
results file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from artiq_journal.journal.constants import REC_SET
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.recovery import recover

TESTS = os.path.dirname(os.path.abspath(__file__))
CLI = [sys.executable, "-m", "artiq_journal.cli.main"]
KINDS = ("live", "orphaned", "recovered", "damaged", "finished")


def _cli(*args, cwd=None):
    res = subprocess.run(CLI + list(args), capture_output=True, text=True,
                         cwd=cwd)
    assert res.returncode in (0, 1), res.stderr
    return res


def _writer(journal, *args):
    child = subprocess.Popen(
        [sys.executable, os.path.join(TESTS, "ops_writer.py"), str(journal),
         "--heartbeat", "0.2", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().startswith("ready"), child.stderr.read()
    return child


def _artiq_results_file(path, rid):
    # What ARTIQ's worker_impl.write_results leaves: both groups and the
    # root datasets (publish.inspect_existing calls this "complete").
    with h5py.File(path, "w") as f:
        f.create_group("datasets")["ys"] = np.arange(3.0)
        f.create_group("archive")
        f["artiq_version"] = "8.0"
        f["rid"] = np.int64(rid)
        f["start_time"] = 1.0
        f["run_time"] = 2.0
        f["expid"] = "{}"


@pytest.fixture
def tree(tmp_path):
    hour = tmp_path / "results" / "2026-01-01" / "10"
    paths = {kind: hour / f"00000000{i + 1}-Scan.journal"
             for i, kind in enumerate(KINDS)}
    live = _writer(paths["live"], "--ops", "20", "--end", "hold")
    for kind in ("orphaned", "recovered"):
        child = _writer(paths[kind], "--ops", "20", "--end", "hold")
        child.stdout.readline()  # done
        child.send_signal(signal.SIGKILL)
        child.wait()
    report = recover([str(paths["recovered"])])
    assert report.runs[0].outcome == "recovered", report.runs[0]
    for kind in ("damaged", "finished"):
        _writer(paths[kind], "--ops", "200").wait()
        _artiq_results_file(hour / f"{paths[kind].name[:-8]}.h5",
                            int(paths[kind].name[:9]))
    segment = paths["damaged"] / "segment-1.log"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x10
    segment.write_bytes(bytes(data))
    yield tmp_path, paths
    live.kill()
    live.wait()


def test_ls_tells_every_state(tree):
    root, paths = tree
    cheap = json.loads(_cli("ls", "--json", cwd=root).stdout)
    states = {os.path.basename(r["path"]): r["state"]
              for r in cheap["journals"]}
    print("ls:", states)
    assert states == {paths["live"].name: "running",
                      paths["orphaned"].name: "orphaned",
                      paths["recovered"].name: "recovered",
                      # small: the tail window covers the flipped bit
                      paths["damaged"].name: "damaged",
                      paths["finished"].name: "finished"}
    live_row = next(r for r in cheap["journals"] if r["state"] == "running")
    assert live_row["rid"] == 1 and live_row["class_name"] == "Scan"
    assert live_row["stage"] == "run" and live_row["records"] >= 22
    assert live_row["pid"] and live_row["size"] > 0

    res = _cli("ls", "--verify", "--json", cwd=root)
    verified = {os.path.basename(r["path"]): r["state"]
                for r in json.loads(res.stdout)["journals"]}
    assert verified[paths["damaged"].name] == "damaged"
    assert verified[paths["finished"].name] == "finished"
    assert res.returncode == 1  # damage found

    text = _cli("ls", cwd=root).stdout.splitlines()
    assert text[0].split()[:4] == ["RID", "CLASS", "STATE", "STAGE"]
    assert len(text) == 1 + len(KINDS)


def test_gc_deletes_only_what_is_safe_and_says_why(tree):
    root, paths = tree
    before = {p: p.exists() for p in paths.values()}
    dry = json.loads(_cli("gc", "--older-than", "0", "--dry-run", "--json",
                          cwd=root).stdout)
    assert {p: p.exists() for p in paths.values()} == before
    actions = {os.path.basename(r["path"]): (r["action"], r["reason"])
               for r in dry["journals"]}
    for name, (action, reason) in sorted(actions.items()):
        print(f"gc --dry-run: {name}: {action}: {reason}")
    assert actions[paths["finished"].name][0] == "would_delete"
    assert actions[paths["recovered"].name][0] == "would_delete"
    assert actions[paths["live"].name][0] == "kept"
    assert "running" in actions[paths["live"].name][1]
    assert "not recovered" in actions[paths["orphaned"].name][1]
    assert actions[paths["damaged"].name][1].startswith("damaged")

    # Too young: everything kept.
    young = json.loads(_cli("gc", "--json", cwd=root).stdout)
    assert {r["action"] for r in young["journals"]} == {"kept"}

    # A symbolic link inside a doomed journal is removed, not followed.
    outside = root / "outside.txt"
    outside.write_text("keep me")
    os.symlink(outside, paths["finished"] / "link")
    res = _cli("gc", "--older-than", "0", "--json", cwd=root)
    assert res.returncode == 0
    assert not paths["finished"].exists() and not paths["recovered"].exists()
    assert paths["live"].exists() and paths["orphaned"].exists()
    assert paths["damaged"].exists()
    assert outside.read_text() == "keep me"
    hour = paths["live"].parent
    assert not [n for n in os.listdir(hour) if n.endswith(".deleted")]
    # The results files stay.
    assert (hour / f"{paths['finished'].name[:-8]}.h5").exists()
    assert (hour / f"{paths['recovered'].name[:-8]}.h5").exists()


def test_inspect_summarises_large_values(tmp_path):
    journal = tmp_path / "000000001-Big.journal"
    w = JournalWriter(journal, heartbeat_interval=None)
    w.append(REC_SET, ["trace", np.linspace(-2.0, 3.0, 200_000), {}, False,
                       False, True])
    w.append(REC_SET, ["ys", [float(i) for i in range(50_000)], {}, False,
                       False, True])
    w.close()
    res = _cli("inspect", "--records", "--json", str(journal))
    assert len(res.stdout) < 20_000  # nothing dumped in full
    records = json.loads(res.stdout)["record_list"]
    trace = records[0]["payload"][1]
    assert trace["ndarray"] == {"dtype": "<f8", "shape": [200_000]}
    assert (trace["min"], trace["max"]) == (-2.0, 3.0)
    ys = records[1]["payload"][1]
    assert ys["list"] == {"length": 50_000, "types": ["float"]}
    assert (ys["min"], ys["max"]) == (0.0, 49_999.0)
    assert ys["head"] == [0.0, 1.0, 2.0, 3.0]
    table = _cli("inspect", "--records", str(journal)).stdout
    assert "ndarray(<f8, shape=(200000,), min=-2.0, max=3.0)" in table
    assert "list(len=50000, float, min=0.0, max=49999.0)" in table
    assert max(len(line) for line in table.splitlines()) < 200
