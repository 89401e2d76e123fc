"""End to end under a REAL ``artiq_master`` (vendored, unmodified ARTIQ of
release-7, release-8 and master), started as ``python -m
artiq.frontend.artiq_master`` with its own repository, device DB, dataset
DB and free ports, ``ARTIQ_JOURNAL=1`` in its environment and the hook
loaded by its workers as an installed package's ``.pth`` would (here a
``sitecustomize`` on PYTHONPATH).  Experiments are submitted through the
master's control port with our own RPC client
(:mod:`artiq_journal.master_client`); processes are SIGKILLed by pid.

* (a) a normal run: ARTIQ's results file, no journal left;
* (b) worker SIGKILLed mid-run: ``artiq-recover`` (the installed console
  script) writes the file with every acknowledged point;
* (c) master SIGKILLed while the worker finishes ``run()`` alone: nobody
  writes a results file; ``artiq-recover`` writes it with all points (its
  journal was closed ``no_results``: only ``results_written`` is clean);
* persisted datasets the killed master never saved are written back into
  its dataset DB with ``artiq-journal persist-datasets``;
* (d) a new master on the same tree after (b)/(c): a new run gets a fresh
  RID, ``artiq-journal resume RID --master`` resumes the crashed run
  through it (the master assigns the RID), and ``artiq-recover`` then has
  nothing left to do for the resumed run.

Skipped cleanly when a release's vendored tree (or its dependencies) is
absent.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest

import artiq_trees
from artiq_master_proc import RealMaster, alive

from artiq_journal.master_client import MasterClient

BIN = os.path.dirname(sys.executable)
RECOVER = os.path.join(BIN, "artiq-recover")
JOURNAL_CLI = os.path.join(BIN, "artiq-journal")

EXPERIMENT = '''
import os
import time

from artiq.experiment import *
from artiq_journal.worker_hooks import JournalResumable


class Scan(JournalResumable, EnvExperiment):
    """Appends n points; after each append (acknowledged), writes the
    number of points appended so far to the progress file."""

    def build(self):
        self.setattr_argument("n", NumberValue(40, step=1))
        self.setattr_argument("delay", NumberValue(0.02))
        self.setattr_argument("progress", StringValue(""))

    def run(self):
        state = self.resume_state(None)
        if state is None:
            self.set_dataset("ys", [])
            try:
                self.set_dataset("calib.persisted", 1.25, unit="V",
                                 persist=True)
            except TypeError:  # release-7: datasets have no metadata
                self.set_dataset("calib.persisted", 1.25, persist=True)
            state = {"i": 0}
        progress = open(self.progress, "a") if self.progress else None
        for i in range(state["i"], int(self.n)):
            self.append_to_dataset("ys", i * i)
            self.checkpoint(i=i + 1)
            if progress is not None:
                progress.write(f"{i + 1}\\n")
                progress.flush()
            time.sleep(self.delay)
'''

TIMEOUT = 40.0


def _release_params():
    return [pytest.param(r, id=f"artiq-{r}") for r in artiq_trees.RELEASES]


@pytest.fixture(params=_release_params())
def master_env(request, tmp_path):
    """(release, workdir, make_master): ``make_master()`` starts a master on
    ``workdir`` (every master started is SIGKILLed, process group and all,
    at teardown)."""
    release = request.param
    artiq_trees.require(release)
    site = artiq_trees.hook_site(str(tmp_path / "site"))
    workdir = tmp_path / "master"
    workdir.mkdir()
    started: list[RealMaster] = []

    def make_master() -> RealMaster:
        master = RealMaster(release, str(workdir), site,
                            experiments={"scan.py": EXPERIMENT},
                            env={"ARTIQ_JOURNAL": "1",
                                 "ARTIQ_JOURNAL_FSYNC": "never"})
        started.append(master)
        return master.start()

    try:
        yield release, workdir, make_master
    finally:
        for master in started:
            master.stop()


def _expid(progress: str, n: int = 40, delay: float = 0.02) -> dict:
    return {"log_level": 30, "file": "scan.py", "class_name": "Scan",
            "arguments": {"n": n, "delay": delay, "progress": progress},
            "repo_rev": None}


def _submit(master: RealMaster, expid: dict) -> int:
    with MasterClient("127.0.0.1", master.port_control) as client:
        return client.submit("main", expid, 0, None, False)


def _acknowledged(progress: str) -> int:
    try:
        with open(progress) as f:
            lines = [line for line in f.read().split("\n") if line]
    except FileNotFoundError:
        return 0
    return int(lines[-1]) if lines else 0


def _wait_progress(progress: str, at_least: int, master: RealMaster) -> None:
    deadline = time.monotonic() + TIMEOUT
    while _acknowledged(progress) < at_least:
        if time.monotonic() > deadline or \
                "Terminating with exception" in master.log():
            raise AssertionError(f"no progress in {progress}:\n"
                                 f"{master.log()}")
        time.sleep(0.02)


def _wait_run_gone(master: RealMaster, rid: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    with MasterClient("127.0.0.1", master.port_control) as client:
        while rid in client.call("get_status"):
            if time.monotonic() > deadline:
                raise AssertionError(f"RID {rid} still scheduled:\n"
                                     f"{master.log()}")
            time.sleep(0.05)


def _files(workdir, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(str(workdir), "results", "*", "*",
                                         pattern)))


def _ys(h5: str) -> list:
    with h5py.File(h5, "r") as f:
        return [int(v) for v in f["datasets/ys"][()]]


def _recover(workdir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RECOVER, "--json", *extra, os.path.join(str(workdir), "results")],
        capture_output=True, text=True, timeout=60)


def _kill_worker_mid_run(master: RealMaster, workdir, progress: str,
                         after: int) -> tuple[int, int]:
    """Submit a run, SIGKILL its worker once ``after`` points were
    acknowledged; (rid, points acknowledged)."""
    rid = _submit(master, _expid(progress, n=400))
    _wait_progress(progress, after, master)
    worker = master.wait_worker()
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while alive(worker):
        assert time.monotonic() < deadline, "SIGKILLed worker still alive"
        time.sleep(0.02)
    return rid, _acknowledged(progress)


def test_normal_run_writes_artiq_file_and_leaves_no_journal(master_env):
    release, workdir, make_master = master_env
    master = make_master()
    progress = str(workdir / "progress-a")
    rid = _submit(master, _expid(progress, n=12, delay=0.0))
    _wait_run_gone(master, rid)
    (h5,) = _files(workdir, f"{rid:09d}-Scan.h5")
    assert _ys(h5) == [i * i for i in range(12)]
    assert _files(workdir, "*.journal") == []


def test_worker_sigkill_then_artiq_recover_has_every_acknowledged_point(
        master_env):
    release, workdir, make_master = master_env
    master = make_master()
    progress = str(workdir / "progress-b")
    rid, acknowledged = _kill_worker_mid_run(master, workdir, progress, 8)
    assert _files(workdir, f"{rid:09d}-*.h5") == []
    proc = _recover(workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = _files(workdir, f"{rid:09d}-Scan.h5")
    assert len(found) == 1, f"artiq-recover wrote no file: {proc.stdout}"
    ys = _ys(found[0])
    # every acknowledged point, in order; at most the one in flight more
    assert len(ys) in (acknowledged, acknowledged + 1)
    assert ys == [i * i for i in range(len(ys))]


def test_master_sigkill_worker_finishes_alone_then_recover_writes_all(
        master_env):
    release, workdir, make_master = master_env
    master = make_master()
    progress = str(workdir / "progress-c")
    n = 60
    rid = _submit(master, _expid(progress, n=n, delay=0.02))
    _wait_progress(progress, 5, master)
    worker = master.wait_worker()
    master.kill()  # the master alone: its worker lives on
    deadline = time.monotonic() + TIMEOUT
    while alive(worker):
        assert time.monotonic() < deadline, "worker did not finish"
        time.sleep(0.05)
    # run() completed without a master
    assert _acknowledged(progress) == n, master.log()
    assert _files(workdir, f"{rid:09d}-*.h5") == []  # nobody wrote results
    proc = _recover(workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = _files(workdir, f"{rid:09d}-Scan.h5")
    assert len(found) == 1, f"artiq-recover wrote no file: {proc.stdout}"
    assert _ys(found[0]) == [i * i for i in range(n)]


def test_master_restart_then_resume_through_master_and_recover(master_env):
    """(d): after a worker SIGKILL, a NEW master on the same tree hands out
    a fresh RID; ``artiq-journal resume --master`` submits the crashed run's
    expid through it (no arguments retyped) with ``resume_from`` = the
    journal's path relative to results/, and the resumed run's file holds
    every point exactly once."""
    release, workdir, make_master = master_env
    master = make_master()
    progress = str(workdir / "progress-d")
    n = 400
    rid, acknowledged = _kill_worker_mid_run(master, workdir, progress, 8)
    master.stop()

    master = make_master()
    fresh = _submit(master, _expid(str(workdir / "progress-d2"), n=3,
                                   delay=0.0))
    assert fresh > rid
    _wait_run_gone(master, fresh)
    assert len(_files(workdir, f"{fresh:09d}-Scan.h5")) == 1

    # standalone resume would take a RID next to a live master: refused
    proc = subprocess.run(
        [JOURNAL_CLI, "resume", str(rid), "--results",
         str(workdir / "results")], capture_output=True, text=True,
        timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "artiq_master" in proc.stderr and "--master" in proc.stderr

    proc = subprocess.run(
        [JOURNAL_CLI, "resume", str(rid), "--json", "--results",
         str(workdir / "results"), "--master",
         f"127.0.0.1:{master.port_control}",
         "--arg", "delay=0.0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    submitted = json.loads(proc.stdout)
    resumed = submitted["rid"]
    assert resumed > fresh
    assert submitted["resume_from"].startswith(
        tuple("0123456789")) and not os.path.isabs(submitted["resume_from"])
    _wait_run_gone(master, resumed)
    (h5,) = _files(workdir, f"{resumed:09d}-Scan.h5")
    ys = _ys(h5)
    assert ys == [i * i for i in range(n)], master.log()
    with h5py.File(h5, "r") as f:
        info = json.loads(f["datasets/journal.resumed_from"][()])
    assert info["rid"] == rid

    proc = _recover(workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the crashed run's own file is recovered too, with its acknowledged
    # points; the resumed run's file is left as ARTIQ wrote it
    (crashed,) = _files(workdir, f"{rid:09d}-Scan.h5")
    assert len(_ys(crashed)) in (acknowledged, acknowledged + 1)
    assert _ys(h5) == ys


_DB_SEED = """
import sys
from artiq.master.databases import DatasetDB
db = DatasetDB(sys.argv[1])
try:
    db.set("keep", 7, persist=True)
    db.set("calib.persisted", 0.5, persist=True)
except TypeError:
    raise
db.save()
getattr(db, "close_db", lambda: None)()
"""

_DB_DUMP = """
import json, sys
from artiq.master.databases import DatasetDB
db = DatasetDB(sys.argv[1])
print(json.dumps({k: list(v) for k, v in db.data.raw_view.items()}))
getattr(db, "close_db", lambda: None)()
"""


def _vendored_db(release: str, script: str, path: str) -> str:
    proc = subprocess.run([sys.executable, "-c", script, path],
                          env=artiq_trees.child_env(release, None),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_persisted_dataset_lost_with_the_master_is_written_back(master_env):
    """A run's persist=True dataset reaches the master, which is SIGKILLed
    before its autosave: ``artiq-journal persist-datasets`` lists it from
    the journal and writes it into the DB in that release's own format
    (loaded back with the vendored ``DatasetDB``); it refuses while a
    master uses the DB."""
    release, workdir, make_master = master_env
    db_path = str(workdir / ("dataset_db.pyon" if release == "7"
                             else "dataset_db.mdb"))
    _vendored_db(release, _DB_SEED, db_path)
    master = make_master()
    progress = str(workdir / "progress-p")
    _submit(master, _expid(progress, n=400))
    _wait_progress(progress, 3, master)
    master.stop()  # master and worker SIGKILLed: no autosave happened
    before = json.loads(_vendored_db(release, _DB_DUMP, db_path))
    assert before["calib.persisted"][1] == 0.5

    command = [JOURNAL_CLI, "persist-datasets", str(workdir / "results"),
               "--dataset-db", db_path, "--json"]
    proc = subprocess.run(command + ["--dry-run"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(d["key"], d["status"]) for d in report["datasets"]] == \
        [("calib.persisted", "different")]
    assert report["written"] == []
    assert json.loads(_vendored_db(release, _DB_DUMP, db_path)) == before

    master = make_master()  # a live master on the DB: refused
    proc = subprocess.run(command, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "in use" in proc.stderr, proc.stderr
    master.stop()

    proc = subprocess.run(command, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["written"] == ["calib.persisted"]
    after = json.loads(_vendored_db(release, _DB_DUMP, db_path))
    if release == "7":  # a PYON dict: no metadata
        assert after == {"keep": [True, 7], "calib.persisted": [True, 1.25]}
    else:
        assert after == {"keep": [True, 7, {}],
                         "calib.persisted": [True, 1.25, {"unit": "V"}]}
    proc = subprocess.run(command, capture_output=True, text=True,
                          timeout=60)  # idempotent
    assert proc.returncode == 0 and json.loads(proc.stdout)["written"] == []
