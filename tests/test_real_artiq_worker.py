"""Integration with the REAL ARTIQ worker (``artiq.master.worker.Worker``
from the vendored, unmodified sources), driven with asyncio as ARTIQ's own
``artiq/test/test_worker.py`` does.

The worker subprocess gets ``ARTIQ_JOURNAL=1`` through the environment the
master's Worker passes on, and loads the hook exactly as an installed
package would: the line of ``artiq_journal_autoload.pth`` is run at start-up
(here as ``sitecustomize``, since a source checkout has no ``.pth``
installed).  Nothing in ARTIQ or in the experiments is changed.

* A normal run: ARTIQ's results file has the same content with and without
  the switch; no journal is left behind; with ``ARTIQ_JOURNAL_KEEP=1`` the
  kept journal holds ARTIQ's exact start_time and run_time, every stage, and
  replays to the file's datasets.
* A run SIGKILLed during ``run()``: ARTIQ leaves no results file;
  ``artiq_journal.recovery.recover`` produces one holding every dataset
  operation the experiment had acknowledged (through a progress file).
* Kill, then resume with the ``resume_from`` argument: ARTIQ accepts the
  argument, and the resumed run's file equals an uninterrupted run's.

Skipped cleanly when the vendored ARTIQ (or its dependencies) is absent.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import signal
import time

import h5py
import numpy as np
import pytest

import artiq_vendor

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "src")
PTH = os.path.join(SRC, "artiq_journal", "worker_hooks",
                   "artiq_journal_autoload.pth")

HEADER = """
import os
import time

import numpy as np
from artiq.experiment import *
from artiq_journal.worker_hooks import JournalResumable


"""

JOURNALED = """
class Journaled(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(20, precision=0, step=1))
        self.setattr_argument("progress", StringValue(""))
        self.set_dataset("built", 1.5)

    def prepare(self):
        self.set_dataset("prepared", np.arange(3), unit="ms", scale=0.001)

    def run(self):
        n = int(self.n)
        progress = open(self.progress, "a") if self.progress else None
        self.set_dataset("xs", [], broadcast=True)
        self.set_dataset("ys", np.full(n, np.nan), unit="V", precision=3)
        self.set_dataset("pairs", [])
        self.set_dataset("only_broadcast", 0, broadcast=True, archive=False)
        calib = self.get_dataset("calib")
        for i in range(n):
            self.append_to_dataset("xs", i * 0.5)
            self.mutate_dataset("ys", i, i * calib)
            self.append_to_dataset("pairs", [i, -i])
            if progress is not None:
                progress.write(f"{i}\\n")
                progress.flush()

    def analyze(self):
        self.set_dataset("fit", float(np.nansum(self.get_dataset("ys"))))
"""

SCAN = """
class Scan(JournalResumable, EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(30, precision=0, step=1))
        self.setattr_argument("progress", StringValue(""))

    def run(self):
        progress = open(self.progress, "a") if self.progress else None
        state = self.resume_state(None)
        if state is None:
            self.set_dataset("xs", [], broadcast=True)
            self.set_dataset("ys", np.zeros(int(self.n)))
            self.get_dataset("calib")
            state = {"i": 0}
        for i in range(state["i"], int(self.n)):
            self.append_to_dataset("xs", i)
            self.mutate_dataset("ys", i, i * i)
            self.checkpoint(i=i + 1)
            if progress is not None:
                progress.write(f"{i}\\n")
                progress.flush()
            time.sleep(0.002)
"""

EXPERIMENT = HEADER + JOURNALED + SCAN


@pytest.fixture
def artiq_worker(tmp_path, monkeypatch):
    """(run, master_dir): ``run(rid, class_name, arguments, kill_after=None)``
    runs one experiment through a real Worker in ``master_dir`` (the
    master's working directory), optionally SIGKILLing it during run()
    once ``kill_after`` lines of progress were acknowledged."""
    vendor = artiq_vendor.require("artiq.master.worker")
    from artiq.master.worker import Worker, WorkerError
    from sipyco.sync_struct import process_mod

    site = tmp_path / "site"
    site.mkdir()
    with open(PTH) as f:
        (site / "sitecustomize.py").write_text(f.read())
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(site), SRC, vendor] + [p for p in [os.environ.get(
            "PYTHONPATH")] if p]))
    for name in list(os.environ):
        if name.startswith("ARTIQ_JOURNAL"):
            monkeypatch.delenv(name)
    master = tmp_path / "master"
    master.mkdir()
    monkeypatch.chdir(master)
    experiment = tmp_path / "experiment.py"
    experiment.write_text(EXPERIMENT)
    datasets = {"calib": (True, 2.5, {"unit": "V"})}

    handlers = artiq_vendor.master_handlers(datasets, process_mod)

    async def drive(rid, expid, progress, kill_after):
        worker = Worker(handlers)
        try:
            await worker.build(rid, "main", None, expid, 0)
            await worker.prepare()
            if kill_after is None:
                await worker.run()
                await worker.analyze()
                return "completed"
            running = asyncio.ensure_future(worker.run())
            deadline = time.monotonic() + 60
            while not running.done():
                if len(acknowledged(progress)) >= kill_after:
                    os.kill(worker.ipc.process.pid, signal.SIGKILL)
                    break
                assert time.monotonic() < deadline, "no progress"
                await asyncio.sleep(0.002)
            with pytest.raises(WorkerError):
                await running
            return "killed"
        finally:
            await worker.close()

    def run(rid, class_name, arguments, kill_after=None):
        progress = str(tmp_path / f"progress-{rid}.txt")
        if kill_after is not None:
            arguments = dict(arguments, progress=progress)
        expid = {"log_level": logging.WARNING, "file": str(experiment),
                 "class_name": class_name, "arguments": arguments}
        outcome = asyncio.run(drive(rid, expid, progress, kill_after))
        return outcome, acknowledged(progress)

    return run, master


def acknowledged(progress):
    """Iterations the experiment reported complete (whole lines only)."""
    try:
        with open(progress) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split("\n")[:-1]]


def results_files(master, pattern="*.h5"):
    return sorted(glob.glob(os.path.join(master, "results", "*", "*",
                                         pattern)))


def h5_content(path, skip=("start_time", "run_time")):
    """Every dataset and attribute of the file, as comparable Python data."""
    content = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and name not in skip:
            value = obj[()]
            content[name] = (obj.dtype.str, obj.shape,
                             value.tolist() if isinstance(value, np.ndarray)
                             else value, dict(obj.attrs))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        content["/groups"] = sorted(f.keys())
    return content


def test_normal_run_leaves_artiq_results_unchanged_and_no_journal(
        artiq_worker, monkeypatch):
    run, master = artiq_worker
    arguments = {"n": 12}
    run(1, "Journaled", arguments)                       # switch off
    (plain,) = results_files(master, "000000001-*.h5")
    os.rename(plain, os.path.join(master, "plain.h5"))
    monkeypatch.setenv("ARTIQ_JOURNAL", "1")
    run(1, "Journaled", arguments)                       # switch on
    (journaled,) = results_files(master, "000000001-*.h5")
    # Everything but the two wall-clock times is identical: groups,
    # datasets, dtypes, shapes, values, attributes, rid, expid.
    assert h5_content(os.path.join(master, "plain.h5")) == \
        h5_content(journaled)
    leftovers = [p for p in glob.glob(os.path.join(master, "results", "*",
                                                   "*", "*"))
                 if not p.endswith(".h5")]
    assert leftovers == [], "no journal (or half-deleted one) may remain"


def test_kept_journal_has_artiqs_exact_times_stages_and_datasets(
        artiq_worker, monkeypatch):
    from artiq_journal.replay import replay
    run, master = artiq_worker
    monkeypatch.setenv("ARTIQ_JOURNAL", "1")
    monkeypatch.setenv("ARTIQ_JOURNAL_KEEP", "1")
    run(3, "Journaled", {"n": 8})
    (h5,) = results_files(master, "000000003-Journaled.h5")
    (journal,) = results_files(master, "000000003-Journaled.journal")
    result = replay(journal)
    state = result.state
    assert result.clean_close and state.close_reason == "results_written"
    with h5py.File(h5) as f:
        assert state.run_info["start_time"] == f["start_time"][()]
        assert state.run_time == f["run_time"][()]
        assert state.run_info["rid"] == 3
        assert state.run_info["class_name"] == "Journaled"
        assert state.run_info["results_dir"] == os.path.dirname(h5)
        assert state.run_info["artiq_version"] == \
            f["artiq_version"][()].decode()
        for group, values in (("datasets", state.datasets.local),
                              ("archive", state.datasets.archive)):
            assert sorted(f[group]) == sorted(values)
            for key, value in values.items():
                assert np.array_equal(f[group][key][()], np.asarray(value),
                                      equal_nan=True), key
                assert dict(f[group][key].attrs) == \
                    state.datasets.metadata.get(key, {})
    stages = [p[0] for p in _payloads(journal, "stage")]
    assert stages == ["build", "prepare", "run", "analyze",
                      "results_written"]


def _payloads(journal, type_name):
    from artiq_journal.journal.reader import JournalReader
    return [r.payload for r in JournalReader(journal)
            if r.type_name == type_name]


def test_sigkill_during_run_recovers_every_acknowledged_operation(
        artiq_worker, monkeypatch):
    from artiq_journal.recovery import recover
    run, master = artiq_worker
    monkeypatch.setenv("ARTIQ_JOURNAL", "1")
    outcome, acked = run(4, "Journaled", {"n": 10**6}, kill_after=400)
    assert outcome == "killed" and len(acked) >= 400
    assert results_files(master, "000000004-*.h5") == [], \
        "ARTIQ alone leaves nothing after SIGKILL"
    report = recover(os.path.join(master, "results"))
    (run_report,) = [r for r in report.runs if r.rid == 4]
    assert run_report.outcome == "recovered", run_report
    (h5,) = results_files(master, "000000004-Journaled.h5")
    last = acked[-1]
    with h5py.File(h5) as f:
        datasets = f["datasets"]
        xs, ys, pairs = (datasets[k][()] for k in ("xs", "ys", "pairs"))
        assert len(xs) > last and len(pairs) > last
        assert xs[:last + 1].tolist() == [i * 0.5 for i in range(last + 1)]
        assert ys[:last + 1].tolist() == [i * 2.5 for i in range(last + 1)]
        assert pairs[:last + 1].tolist() == [[i, -i]
                                             for i in range(last + 1)]
        assert dict(datasets["ys"].attrs) == {"unit": "V", "precision": 3}
        assert datasets["built"][()] == 1.5
        assert datasets["prepared"][()].tolist() == [0, 1, 2]
        assert "only_broadcast" not in datasets
        assert f["archive"]["calib"][()] == 2.5
        assert f["rid"][()] == 4
    print(f"\nkilled after {len(acked)} acknowledged iterations; recovered "
          f"{len(xs)} points")


def test_killed_run_resumed_through_the_resume_from_argument(
        artiq_worker, monkeypatch):
    run, master = artiq_worker
    monkeypatch.setenv("ARTIQ_JOURNAL", "1")
    run(10, "Scan", {"n": 30})                           # uninterrupted
    (reference,) = results_files(master, "000000010-Scan.h5")
    outcome, acked = run(11, "Scan", {"n": 30}, kill_after=9)
    assert outcome == "killed"
    run(12, "Scan", {"n": 30, "resume_from": "11"})
    (resumed,) = results_files(master, "000000012-Scan.h5")
    expected = h5_content(reference)
    got = h5_content(resumed)
    info = json.loads(got.pop("datasets/journal.resumed_from")[2])
    assert info["rid"] == 11 and info["seq"] > 0
    assert info["journal"].endswith("000000011-Scan.journal")
    for key in ("rid", "expid"):
        expected.pop(key), got.pop(key)
    assert got == expected


@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_journal_that_cannot_be_created_follows_on_error(
        artiq_worker, monkeypatch, caplog, policy, tmp_path):
    from artiq.master.worker import WorkerInternalException
    run, master = artiq_worker
    monkeypatch.setenv("ARTIQ_JOURNAL", "1")
    monkeypatch.setenv("ARTIQ_JOURNAL_ON_ERROR", policy)
    # A disk that refuses the journal directory (ENOSPC), in the worker.
    with open(tmp_path / "site" / "sitecustomize.py", "a") as f:
        f.write("\nimport errno, os\n"
                "_mkdir = os.mkdir\n"
                "def mkdir(path, *args, **kwargs):\n"
                "    if str(path).endswith('.journal'):\n"
                "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)"
                ", path)\n"
                "    return _mkdir(path, *args, **kwargs)\n"
                "os.mkdir = mkdir\n")
    with caplog.at_level(logging.ERROR):
        if policy == "stop":
            with pytest.raises(WorkerInternalException):
                run(20, "Journaled", {"n": 3})
            assert results_files(master, "000000020-*.h5") == []
        else:
            assert run(20, "Journaled", {"n": 3})[0] == "completed"
            assert len(results_files(master, "000000020-*.h5")) == 1
    assert any("artiq-journal" in r.getMessage() and "RID 20" in
               r.getMessage() for r in caplog.records), \
        "the error reaches the master's log"


def test_examine_is_not_journaled_and_lists_resume_from(artiq_worker,
                                                         monkeypatch):
    from artiq.master.worker import Worker
    run, master = artiq_worker
    monkeypatch.setenv("ARTIQ_JOURNAL", "1")
    experiment = os.path.join(os.path.dirname(master), "examined.py")
    with open(experiment, "w") as f:
        f.write(HEADER + SCAN)   # Journaled sets a dataset in build()

    async def examine():
        worker = Worker({"get_device_db": lambda: {}})
        try:
            return await worker.examine("scan", experiment)
        finally:
            await worker.close()

    found = asyncio.run(examine())
    assert "resume_from" in found["Scan"]["arginfo"]
    assert found["Scan"]["arginfo"]["resume_from"][1] == "Journal"
    assert not os.path.exists(os.path.join(master, "results"))


def test_internal_hook_error_never_breaks_the_run(artiq_worker, monkeypatch,
                                                  tmp_path, caplog):
    run, master = artiq_worker
    monkeypatch.setenv("ARTIQ_JOURNAL", "1")
    with open(tmp_path / "site" / "sitecustomize.py", "a") as f:
        f.write("\nimport importlib\n"
                "m = importlib.import_module("
                "'artiq_journal.worker_hooks.attach')\n"
                "def broken(*args, **kwargs):\n"
                "    raise RuntimeError('injected bug')\n"
                "m.attach = broken\n")
    with caplog.at_level(logging.WARNING):
        assert run(21, "Journaled", {"n": 3})[0] == "completed"
    assert len(results_files(master, "000000021-Journaled.h5")) == 1
    assert results_files(master, "*.journal") == []
    warnings = [r for r in caplog.records
                if "internal error in the worker hook" in r.getMessage()]
    assert len(warnings) == 1 and "RID 21" in warnings[0].getMessage()


def test_startup_hook_costs_nothing_when_off(tmp_path):
    """The .pth line imports nothing while ARTIQ_JOURNAL is off, and only
    the stdlib-light hook (no numpy, msgpack, h5py) while it is on."""
    import subprocess
    import sys
    site = tmp_path / "site"
    site.mkdir()
    with open(PTH) as f:
        (site / "sitecustomize.py").write_text(f.read())
    probe = ("import sys; print(sorted(m for m in ('artiq_journal', "
             "'numpy', 'msgpack', 'h5py') if m in sys.modules)); "
             "m = sys.modules.get('artiq_journal.worker_hooks.autoload'); "
             "print(bool(m and m.installed()))")
    outputs = {}
    for switch in ("0", "1"):
        env = dict(os.environ, ARTIQ_JOURNAL=switch,
                   PYTHONPATH=os.pathsep.join([str(site), SRC]))
        outputs[switch] = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True,
            text=True, check=True).stdout.split("\n")[:2]
    assert outputs["0"] == ["[]", "False"]
    assert outputs["1"] == ["['artiq_journal']", "True"]
