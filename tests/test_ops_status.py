"""``artiq-journal status`` tells, from the journal alone and without
disturbing the writer: a working run, an idle one (alive, no dataset
operation), a SIGSTOPped one, a SIGKILLed one, and a finished one.  The
writers are real child processes with a short heartbeat interval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
CLI = [sys.executable, "-m", "artiq_journal.cli.main"]
HEARTBEAT = 0.1


def _start(journal, *args):
    child = subprocess.Popen(
        [sys.executable, os.path.join(TESTS, "ops_writer.py"), str(journal),
         "--heartbeat", str(HEARTBEAT), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    assert line.startswith("ready"), child.stderr.read()
    return child


def _status(journal, *extra):
    res = subprocess.run(CLI + ["status", str(journal), "--json", *extra],
                         capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    doc = json.loads(res.stdout)
    assert doc["exit_status"] == res.returncode
    return doc


@pytest.fixture
def children():
    started = []
    yield started
    for child in started:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
        child.wait()


def test_slow_but_working_run_is_working(tmp_path, children):
    # One operation every 0.3 s, for longer than the stale threshold.
    journal = tmp_path / "000000001-Scan.journal"
    child = _start(journal, "--ops", "40", "--op-sleep", "0.3",
                   "--end", "hold")
    children.append(child)
    verdicts = []
    for _ in range(4):
        time.sleep(0.6)
        doc = _status(journal)
        verdicts.append(doc["verdict"])
        assert doc["lock_held"] and doc["pid"] == child.pid
        assert doc["last_ops"] and doc["last_ops"][-1]["type"] != "heartbeat"
    print("slow run:", verdicts)
    assert verdicts == ["working"] * 4


def test_idle_run_is_alive_without_operations(tmp_path, children):
    journal = tmp_path / "000000001-Scan.journal"
    child = _start(journal, "--ops", "3", "--end", "hold")
    children.append(child)
    time.sleep(2.0)
    doc = _status(journal, "-n", "2")
    print("idle run:", doc["message"])
    assert doc["verdict"] == "idle"
    assert doc["heartbeat_age"] < 1.0 and doc["idle_for"] > 1.0
    assert doc["heartbeat_interval"] == pytest.approx(HEARTBEAT, abs=0.05)
    assert len(doc["last_ops"]) == 2 and doc["exit_status"] == 0


def test_sigstop_sigkill_and_close_are_told_apart(tmp_path, children):
    stopped = tmp_path / "000000001-Scan.journal"
    killed = tmp_path / "000000002-Scan.journal"
    a = _start(stopped, "--ops", "3", "--end", "hold")
    b = _start(killed, "--ops", "3", "--end", "hold")
    children += [a, b]
    time.sleep(0.5)
    os.kill(a.pid, signal.SIGSTOP)
    os.kill(b.pid, signal.SIGKILL)
    b.wait()
    time.sleep(1.5)
    doc_stopped = _status(stopped)
    doc_killed = _status(killed)
    print("stopped:", doc_stopped["message"])
    print("killed:", doc_killed["message"])
    assert doc_stopped["verdict"] == "stopped"
    assert doc_stopped["lock_held"] and doc_stopped["process"] == "stopped"
    # No heartbeat since the stop: stale by the journal's own evidence too.
    assert doc_stopped["heartbeat_age"] > doc_stopped["stale_after"]
    assert doc_killed["verdict"] == "dead" and not doc_killed["lock_held"]
    assert doc_stopped["exit_status"] == doc_killed["exit_status"] == 1
    # Continued, it is working again (heartbeats resume).
    os.kill(a.pid, signal.SIGCONT)
    time.sleep(0.5)
    assert _status(stopped)["verdict"] == "idle"

    finished = tmp_path / "000000003-Scan.journal"
    c = _start(finished, "--ops", "3", "--end", "close")
    children.append(c)
    c.wait()
    doc = _status(finished)
    assert doc["verdict"] == "finished" and doc["exit_status"] == 0


def test_heartbeat_age_alone_flags_a_frozen_writer(tmp_path, children):
    # Without /proc/<pid>/stat (or a hung process that is not stopped) the
    # heartbeat age decides: the status library judged at a later "now".
    from artiq_journal.ops.status import status
    journal = tmp_path / "000000001-Scan.journal"
    child = _start(journal, "--ops", "3", "--end", "hold")
    children.append(child)
    time.sleep(0.5)
    later = time.time() + 5.0
    doc = status(str(journal), now=later)
    assert doc["process"] in ("sleeping", "running")
    assert doc["verdict"] == "hung", doc["message"]


def test_status_does_not_disturb_a_writer_taking_the_lock(tmp_path,
                                                         children):
    # A writer opening the journal while status polls it must never find
    # the lock taken: status only reads /proc/locks (taking the lock to
    # probe it, as `lock.is_locked` does, fails this test).
    import threading
    from artiq_journal.errors import JournalLocked
    from artiq_journal.journal import lock as journal_lock
    from artiq_journal.ops.status import status
    journal = tmp_path / "000000001-Scan.journal"
    _start(journal, "--ops", "2", "--end", "close").wait()
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            status(str(journal))
    poller = threading.Thread(target=poll)
    poller.start()
    refused = tries = 0
    deadline = time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            tries += 1
            try:
                journal_lock.acquire(str(journal)).release()
            except JournalLocked:
                refused += 1
    finally:
        stop.set()
        poller.join()
    print(f"{tries} lock acquisitions during status polling, "
          f"{refused} refused")
    assert refused == 0
