"""``artiq-journal demo`` as a user runs it: a subprocess of
``python -m artiq_journal.cli.main demo``.  It must pass and say so step by
step -- and it must be able to fail: with a deliberately dropped point
(hidden ``--sabotage drop-point``) its checks must catch it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import artiq_journal
import artiq_vendor
from artiq_journal.cli.main import main
from artiq_journal.cli.run import journal_of_run
from artiq_journal.demo.compare import read_group
from artiq_journal.demo.scan import (DEFAULT_SEED, DEFAULT_SPAN,
                                     planned_detunings, simulated_counts)
from artiq_journal.demo.walkthrough import SCAN_FILE
from artiq_journal.replay import replay
from artiq_journal.runner import start_experiment
from artiq_journal.runner.launch import find_results_file

SRC = os.path.dirname(os.path.dirname(os.path.abspath(artiq_journal.__file__)))

#: Small and quick, yet slow enough per point to be killed half-way.
SMALL = ["--points", "12", "--delay", "0.05"]

STEPS = ("[1/5] Run the scan with journaling, then kill it mid-run",
         "[2/5] What ARTIQ alone would have left",
         "[3/5] Recover the results file with artiq-recover",
         "[4/5] Resume the scan from its last checkpoint",
         "[5/5] Compare with the same scan run without interruption")

CHECKS = ("the worker was killed mid-scan",
          "no results file after the kill",
          "an orphaned journal is left",
          "artiq-recover succeeded",
          "recovered: every point measured before the kill",
          "recovered file is marked as recovered, no data lost",
          "the resumed run completed",
          "the resumed run records where it resumed from",
          "the uninterrupted run completed",
          "resumed data == uninterrupted data",
          "every point measured exactly once")


def run_demo(tmp_path, *extra):
    """Run the demo in ``tmp_path/cwd`` with ``--dir tmp_path/out``."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (SRC, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "artiq_journal.cli.main", "demo", *SMALL,
         "--dir", str(tmp_path / "out"), *extra],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, timeout=120)
    print(proc.stdout)
    print(proc.stderr, file=sys.stderr)
    return proc


def test_demo_passes_and_explains_every_step(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("not the demo's")
    proc = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    positions = [text.index(step) for step in STEPS]
    assert positions == sorted(positions)
    for check in CHECKS:
        assert f"PASS  {check}" in text
    assert "FAIL" not in text
    assert f"{len(CHECKS)}/{len(CHECKS)} checks passed" in text
    assert "does not exist" in text                      # no .h5 after kill
    assert "$ artiq-recover" in text and "artiq_journal/" in text
    assert "datasets/scan.counts" in text and "unit='MHz'" in text
    assert "datasets/journal.resumed_from =\n      {'rid': 0" in text
    # Everything went into one new directory under --dir; nothing else
    # was touched.
    assert (out / "precious.txt").read_text() == "not the demo's"
    workdirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(workdirs) == 1 and workdirs[0].name.startswith("demo-")
    assert len(list(workdirs[0].glob("results/*/*/*.h5"))) == 2
    assert len(list(workdirs[0].glob("reference/results/*/*/*.h5"))) == 1
    assert not list((tmp_path / "cwd").iterdir())


@pytest.mark.parametrize("sabotage, caught_by", [
    ("drop-point", ["resumed data == uninterrupted data",
                    "every point measured exactly once"]),
    ("wrong-seed", ["resumed data == uninterrupted data"]),
])
def test_sabotaged_demo_fails(tmp_path, sabotage, caught_by):
    proc = run_demo(tmp_path, "--sabotage", sabotage)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = proc.stdout
    assert "SABOTAGE" in text
    for check in caught_by:
        assert f"FAIL  {check}" in text
    failed = len(caught_by)
    assert (f"{len(CHECKS) - failed}/{len(CHECKS)} checks passed" in text
            and ": FAIL" in text)
    # The checks before the comparison still passed: the comparison caught
    # the defect, not a crash of the demo.
    assert "PASS  the resumed run records where it resumed from" in text


@pytest.mark.parametrize("argv", [["--points", "2"], ["--delay", "-1"],
                                  ["--sabotage", "nonsense"]])
def test_bad_options_are_usage_errors(tmp_path, argv):
    proc = subprocess.run(
        [sys.executable, "-m", "artiq_journal.cli.main", "demo", *argv,
         "--dir", str(tmp_path / "out")],
        env=dict(os.environ, PYTHONPATH=SRC), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 2
    assert not (tmp_path / "out").exists()


# -- the demo's scan as an experiment of its own ----------------------------------

def model_counts(points, n):
    detunings = planned_detunings(points, DEFAULT_SPAN)
    return [simulated_counts(i, float(detunings[i]), DEFAULT_SEED)
            for i in range(n)]


def test_scan_stops_on_termination_request_and_resumes_later(
        tmp_path, monkeypatch, capsys):
    """Stop now, resume later: a graceful stop ends the run normally (its
    results file is written); with ARTIQ_JOURNAL_KEEP=1 its journal stays
    and ``resume`` completes the scan."""
    monkeypatch.setenv("ARTIQ_JOURNAL_KEEP", "1")
    results = tmp_path / "results"
    points = 30
    running = start_experiment(SCAN_FILE, arguments={"points": points,
                                                     "delay": 0.02},
                               results_dir=str(results))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        journal = journal_of_run(str(results), running.rid)
        state = replay(journal).state.checkpoint if journal else None
        if state and state["i"] >= 3:
            break
        time.sleep(0.01)
    running.request_termination()
    stopped = running.wait(timeout=60)
    assert stopped.ok
    index = read_group(stopped.h5_path)["scan.index"].tolist()
    assert 3 <= len(index) < points and index == list(range(len(index)))

    assert main(["resume", str(stopped.rid), "--results", str(results)]) == 0
    assert "resumed from: RID 0" in capsys.readouterr().out
    data = read_group(find_results_file(str(results), 1))
    assert data["scan.index"].tolist() == list(range(points))
    assert data["scan.counts"].tolist() == model_counts(points, points)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ARTIQ's imports
def test_scan_runs_unchanged_under_artiq_run(tmp_path):
    """The same file under ARTIQ's own ``artiq_run`` (vendored, unmodified):
    it imports ``artiq.experiment`` and measures the same values.

    Only mutated and plain datasets are compared: ``artiq_run`` appends
    twice to *broadcast* lists (its in-process dataset DB shares the value
    object with the broadcaster, so the append is applied again when the
    modification is published); ARTIQ's master does not.
    """
    artiq_vendor.require("artiq.frontend.artiq_run")
    (tmp_path / "device_db.py").write_text("device_db = {}\n")
    env = artiq_vendor.env(dict(os.environ))
    env["PYTHONPATH"] = os.pathsep.join([SRC, env["PYTHONPATH"]])
    proc = subprocess.run(
        [sys.executable, "-m", "artiq.frontend.artiq_run", "--device-db",
         "device_db.py", "--dataset-db", "datasets.mdb", "-o", "out.h5",
         SCAN_FILE, "points=6", "delay=0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = read_group(str(tmp_path / "out.h5"))
    assert data["scan.counts_grid"].tolist() == model_counts(6, 6)
    assert data["scan.detunings"].tolist() == planned_detunings(
        6, DEFAULT_SPAN).tolist()
    assert "scan.progress" not in data  # archive=False
