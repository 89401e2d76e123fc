"""The hooks on a platform without POSIX durability primitives (Windows):
they never break an experiment.  Without ``os.O_DIRECTORY`` (and with
directories that cannot be opened) or ``os.O_NOFOLLOW`` the journal degrades
with one warning and still replays; without ``fcntl`` it stays off with one
warning, and the experiment's dataset calls -- through ARTIQ's real worker
too -- work exactly as without artiq-journal.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys

import pytest

import artiq_vendor
from artiq_journal.replay import replay
from artiq_journal.runner.datasets import DatasetManager as RunnerManager
from artiq_journal.worker_hooks import attach
from artiq_journal.worker_hooks import platform_support

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "src")


class DB:
    def __init__(self):
        self.data = {"calib": (True, 2.5, {})}

    def get(self, key):
        return self.data[key][1]

    def get_metadata(self, key):
        return self.data[key][2]

    def update(self, mod):
        pass


def _windows_like(monkeypatch):
    """No O_DIRECTORY, no O_NOFOLLOW, and opening a directory fails as it
    does on Windows (PermissionError)."""
    monkeypatch.delattr(os, "O_DIRECTORY", raising=False)
    monkeypatch.delattr(os, "O_NOFOLLOW", raising=False)
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(platform_support, "_warned", set())


def test_missing_primitives_are_reported(monkeypatch, tmp_path):
    assert platform_support.platform_support(str(tmp_path)) == []
    _windows_like(monkeypatch)
    assert platform_support.platform_support(str(tmp_path)) == [
        "directory fsync", "O_NOFOLLOW"]


@pytest.mark.parametrize("fsync", ["always", "group"])
def test_without_directory_fsync_or_nofollow_the_journal_degrades(
        monkeypatch, tmp_path, caplog, fsync):
    _windows_like(monkeypatch)
    mgr = RunnerManager(DB())
    with caplog.at_level(logging.WARNING, logger="artiq_journal"):
        live = attach(mgr, rid=1, expid={"class_name": "Exp"},
                      class_name="Exp", results_dir=str(tmp_path / "r"),
                      fsync=fsync, keep=True)
        mgr.set("ys", [], {"unit": "V"}, True, False, True)
        for i in range(5):
            mgr.append_to("ys", i)
            live.checkpoint({"i": i})
        mgr.mutate("ys", 0, 9)
        mgr.get("calib", True)
        live.close()
        attach(RunnerManager(DB()), rid=2, expid={}, class_name="Exp",
               results_dir=str(tmp_path / "r"), fsync=fsync).close()
    warned = [r.getMessage() for r in caplog.records]
    assert len([m for m in warned if "directory fsync" in m]) == 1, warned
    assert len([m for m in warned if "O_NOFOLLOW" in m]) == 1, warned
    monkeypatch.undo()
    state = replay(live.path).state
    assert state.datasets.local["ys"] == [9, 1, 2, 3, 4]
    assert state.datasets.archive == {"calib": 2.5}
    assert state.close_reason == "no_results"


PROBE = r"""
import logging, os, sys
sys.modules["fcntl"] = None          # as on Windows: import fcntl fails
for name in ("O_DIRECTORY", "O_NOFOLLOW"):
    if hasattr(os, name):
        delattr(os, name)
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("artiq_journal").addHandler(Keep())
from artiq_journal.errors import JournalError
from artiq_journal.worker_hooks import attach
from artiq.master.worker_db import DatasetManager
class DB:
    def get(self, key): return 2.5
    def update(self, mod): pass
mgr = DatasetManager(DB())
try:
    attach(mgr, rid=1, expid={}, class_name="Exp", results_dir=sys.argv[1])
    print("attached")
except JournalError as exc:
    print("refused:", exc)
mgr.set("ys", [], {}, True, False, True)
mgr.append_to("ys", 1)
mgr.mutate("ys", 0, 5)
print(mgr.local["ys"], mgr.get("calib", True), mgr.archive,
      sorted(vars(mgr)), os.listdir(sys.argv[1]))
"""


def test_without_fcntl_attach_refuses_and_dataset_calls_work(tmp_path):
    vendor = artiq_vendor.require("artiq.master.worker_db")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, vendor])),
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    refused, calls = out.stdout.splitlines()
    assert refused.startswith("refused:") and "fcntl" in refused
    assert calls == ("[5] 2.5 {'calib': 2.5} ['_broadcaster', 'archive', "
                     "'ddb', 'local', 'metadata'] []")


def test_without_fcntl_the_real_worker_runs_unjournaled(tmp_path):
    """Through ARTIQ's worker with ARTIQ_JOURNAL=1: one warning, the run
    and its results file as without artiq-journal."""
    artiq_vendor.require_release("master")
    pth = os.path.join(SRC, "artiq_journal", "worker_hooks",
                       "artiq_journal_autoload.pth")
    site = tmp_path / "site"
    site.mkdir()
    with open(pth) as f:
        (site / "sitecustomize.py").write_text(
            "import sys\nsys.modules['fcntl'] = None\n" + f.read())
    experiment = tmp_path / "exp.py"
    experiment.write_text(
        "from artiq.experiment import *\n"
        "class Exp(EnvExperiment):\n"
        "    def run(self):\n"
        "        self.set_dataset('ys', [], broadcast=True, unit='V')\n"
        "        self.append_to_dataset('ys', 1.5)\n"
        "        self.mutate_dataset('ys', 0, 2.5)\n")
    master = tmp_path / "master"
    master.mkdir()
    environment = artiq_vendor.env(
        {k: v for k, v in os.environ.items()
         if not k.startswith("ARTIQ_JOURNAL")} | {"ARTIQ_JOURNAL": "1"},
        first=(str(site), SRC))
    result = artiq_vendor.drive_worker(
        {"rid": 4, "datasets": {},
         "expid": {"log_level": 30, "file": str(experiment),
                   "class_name": "Exp", "arguments": {}}},
        environment, str(master))
    assert result["outcome"] == "completed", result
    warnings = [m for _, m in result["log"] if "artiq-journal:" in m]
    assert len(warnings) == 1 and "fcntl" in warnings[0] and \
        "RID 4" in warnings[0], warnings
    import glob
    import h5py
    (h5,) = glob.glob(str(master / "results" / "*" / "*" / "*"))
    with h5py.File(h5) as f:
        assert f["datasets"]["ys"][()].tolist() == [2.5]
        assert dict(f["datasets"]["ys"].attrs) == {"unit": "V"}
