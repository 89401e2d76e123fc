"""The worker hooks inside the REAL worker of ARTIQ release-7, release-8 and
master (vendored, unmodified), under ``ARTIQ_JOURNAL=1``.

Each run goes through ``artiq.master.worker.Worker`` of that release, driven
by a subprocess playing the master (``artiq_vendor.drive_worker``), so each
release runs with its own ARTIQ and sipyco.  The hook is loaded exactly as
an installed package loads it: the ``.pth`` line, here as ``sitecustomize``.

Shown for every release: dataset calls (with metadata keywords on 8/master,
without on 7) work and the kept journal replays to the datasets of ARTIQ's
own results file; run_info names the adapter and holds the exact PYON text
of the file's expid; a leftover journal with the same name does not fail
the run and both stay recoverable; build()/prepare() raising close the
journal with build_failed/prepare_failed; an internal error of the hook logs
one warning and leaves ARTIQ's results file as an unjournaled run's; a
worker orphaned by a killed master closes its journal as no_results.
"""

from __future__ import annotations

import glob
import os
import time

import h5py
import numpy as np
import pytest

import artiq_vendor

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "src")
PTH = os.path.join(SRC, "artiq_journal", "worker_hooks",
                   "artiq_journal_autoload.pth")
RELEASES = ["7", "8", "master"]
ADAPTER = {"7": "artiq7", "8": "artiq8", "master": "artiq8"}
PYON_VERSION = {"7": 1, "8": 1, "master": 2}

EXPERIMENT = '''
import inspect
import time

import numpy as np
from artiq.experiment import *


def meta(exp, **kwargs):
    """Metadata keywords where set_dataset takes them (not release-7)."""
    params = inspect.signature(exp.set_dataset).parameters
    return kwargs if "unit" in params else {}


class Journaled(EnvExperiment):
    def build(self):
        self.setattr_argument("n", StringValue("8"))
        self.setattr_argument("progress", StringValue(""))
        self.setattr_argument("fail", StringValue(""))
        self.set_dataset("built", 1.5)
        if self.fail == "build":
            raise ValueError("build fails on purpose")

    def prepare(self):
        self.set_dataset("prepared", np.arange(3),
                         **meta(self, unit="ms", scale=0.001))
        if self.fail == "prepare":
            raise ValueError("prepare fails on purpose")

    def run(self):
        n = int(self.n)
        progress = open(self.progress, "a") if self.progress else None
        self.set_dataset("xs", [], broadcast=True)
        self.set_dataset("ys", np.full(n, np.nan),
                         **meta(self, unit="V", precision=3))
        self.set_dataset("pairs", [])
        self.set_dataset("only_broadcast", 0, broadcast=True, archive=False)
        calib = self.get_dataset("calib")
        for i in range(n):
            if progress is None:
                # Broadcast updates talk to the master: not in runs whose
                # master may be gone.
                self.append_to_dataset("xs", i * 0.5)
            self.mutate_dataset("ys", i, i * calib)
            self.append_to_dataset("pairs", [i, -i])
            if progress is not None:
                progress.write(f"{i}\\n")
                progress.flush()
                time.sleep(0.0005)

    def analyze(self):
        self.set_dataset("fit", float(np.nansum(self.get_dataset("ys"))))
'''


@pytest.fixture(params=RELEASES)
def release(request):
    artiq_vendor.require_release(request.param)
    return request.param


@pytest.fixture
def worker(tmp_path, release):
    """``run(rid, arguments, env=None, **job)`` -> driver result; runs
    in ``master`` (the master's working directory)."""
    site = tmp_path / "site"
    site.mkdir()
    with open(PTH) as f:
        (site / "sitecustomize.py").write_text(f.read())
    master = tmp_path / "master"
    master.mkdir()
    experiment = tmp_path / "experiment.py"
    experiment.write_text(EXPERIMENT)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("ARTIQ_JOURNAL")}
    calib = (True, 2.5) if release == "7" else (True, 2.5, {"unit": "V"})

    def run(rid, arguments, env=None, **job):
        expid = {"log_level": 30, "file": str(experiment),
                 "class_name": "Journaled", "arguments": arguments}
        environment = artiq_vendor.env(dict(base, **(env or {})),
                                       release=release,
                                       first=(str(site), SRC))
        job = dict(job, rid=rid, expid=expid, datasets={"calib": calib})
        return artiq_vendor.drive_worker(job, environment, str(master))

    run.master = str(master)
    run.site = site
    run.tmp = tmp_path
    return run


def found(master, pattern):
    return sorted(glob.glob(os.path.join(master, "results", "*", "*",
                                         pattern)))


def records(journal):
    from artiq_journal.journal.reader import JournalReader
    return [(r.type_name, r.payload) for r in JournalReader(journal)]


def h5_content(path, skip=("start_time", "run_time")):
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


def test_journal_replays_to_artiqs_own_results_file(worker, release):
    from artiq_journal.replay import replay
    result = worker(3, {"n": "6"}, env={"ARTIQ_JOURNAL": "1",
                                        "ARTIQ_JOURNAL_KEEP": "1"})
    assert result["outcome"] == "completed", result
    (h5,) = found(worker.master, "000000003-Journaled.h5")
    (journal,) = found(worker.master, "000000003-Journaled.journal")
    state = replay(journal).state
    assert state.close_reason == "results_written"
    info = state.run_info
    assert info["artiq_adapter"] == ADAPTER[release]
    assert info["pyon_version"] == PYON_VERSION[release]
    with h5py.File(h5) as f:
        assert info["expid_pyon"] == f["expid"][()].decode()
        assert state.run_time == f["run_time"][()]
        assert info["start_time"] == f["start_time"][()]
        for group, values in (("datasets", state.datasets.local),
                              ("archive", state.datasets.archive)):
            assert sorted(f[group]) == sorted(values)
            for key, value in values.items():
                assert np.array_equal(f[group][key][()], np.asarray(value),
                                      equal_nan=True), key
                assert dict(f[group][key].attrs) == \
                    state.datasets.metadata.get(key, {}), key
        if release == "7":
            assert dict(f["datasets"]["ys"].attrs) == {}
        else:
            assert dict(f["datasets"]["ys"].attrs) == {"unit": "V",
                                                       "precision": 3}
    sets = [p for t, p in records(journal) if t == "set"]
    assert all(len(p) == 6 and isinstance(p[2], dict) for p in sets)
    print(f"\nARTIQ {release}: {len(sets)} set records, adapter "
          f"{info['artiq_adapter']}, PYON v{info['pyon_version']}")


def test_leftover_journal_of_the_same_name_does_not_fail_the_run(worker):
    from artiq_journal.recovery import recover
    on = {"ARTIQ_JOURNAL": "1"}
    progress = str(worker.tmp / "p")
    killed = worker(5, {"n": "100000", "progress": progress}, env=on,
                    kill_worker_after=50, progress=progress)
    assert killed["outcome"] == "failed", killed    # WorkerError: killed
    (leftover,) = found(worker.master, "000000005-Journaled.journal")
    hour = os.path.dirname(leftover)
    if time.strftime("%H") != os.path.basename(hour):
        pytest.skip("the hour turned between the two runs")
    second = worker(5, {"n": "4"}, env=on)
    assert second["outcome"] == "completed", second
    moved = os.path.join(hour, "000000005-Journaled.1.journal")
    assert os.path.isdir(moved)
    assert found(worker.master, "000000005-Journaled.journal") == [], \
        "the second run ended normally: its own journal is deleted"
    with h5py.File(os.path.join(hour, "000000005-Journaled.h5")) as f:
        assert len(f["datasets"]["pairs"]) == 4
    assert any("moved it" in m for _, m in second["log"])
    report = recover(os.path.join(worker.master, "results"))
    (run,) = [r for r in report.runs
              if os.path.normpath(r.journal) == moved]
    assert run.outcome == "recovered", report.runs
    assert run.output == os.path.join(hour, "000000005-Journaled.1.h5")
    with h5py.File(os.path.join(hour, "000000005-Journaled.1.h5")) as f:
        assert len(f["datasets"]["pairs"]) >= 50, "the first run's data"
        assert f["rid"][()] == 5
    with h5py.File(os.path.join(hour, "000000005-Journaled.h5")) as f:
        assert len(f["datasets"]["pairs"]) == 4, "never mixed"


@pytest.mark.parametrize("stage", ["build", "prepare"])
def test_failing_stage_closes_the_journal_with_its_reason(worker, stage):
    result = worker(7, {"fail": stage}, env={"ARTIQ_JOURNAL": "1"})
    assert result["outcome"] == "failed"
    assert "on purpose" in result["error"] or result["error"], result
    assert found(worker.master, "000000007-*.h5") == []
    (journal,) = found(worker.master, "000000007-Journaled.journal")
    tail = records(journal)[-2:]
    assert tail[0][0] == "stage" and tail[0][1][0] == f"{stage}_failed"
    assert tail[1] == ("close", [f"{stage}_failed"])


def _break_the_hook(site):
    with open(site / "sitecustomize.py", "a") as f:
        f.write("\nfrom artiq_journal.worker_hooks import adapters\n"
                "def broken(self):\n"
                "    def make(args, kwargs):\n"
                "        raise RuntimeError('injected bug')\n"
                "    return make\n"
                "adapters.Artiq8Adapter.set_payload_maker = broken\n"
                "adapters.Artiq7Adapter.set_payload_maker = broken\n")


def test_internal_error_warns_once_and_results_are_an_unjournaled_runs(
        worker):
    plain = worker(9, {"n": "5"})
    assert plain["outcome"] == "completed", plain
    (h5,) = found(worker.master, "000000009-Journaled.h5")
    reference = h5_content(h5)
    os.unlink(h5)
    _break_the_hook(worker.site)
    for policy in ("stop", "continue"):
        broken = worker(9, {"n": "5"}, env={
            "ARTIQ_JOURNAL": "1", "ARTIQ_JOURNAL_ON_ERROR": policy})
        assert broken["outcome"] == "completed", broken
        (h5,) = found(worker.master, "000000009-Journaled.h5")
        assert h5_content(h5) == reference
        warnings = [m for level, m in broken["log"] if "artiq-journal:" in m]
        assert len(warnings) == 1, warnings
        assert "RID 9" in warnings[0] and "injected bug" in warnings[0]
        (journal,) = found(worker.master, "000000009-Journaled*.journal")
        assert records(journal)[-1] == ("close", ["hook_error"])
        os.unlink(h5)
        os.rename(journal, f"{journal}.seen-{policy}")


def test_worker_orphaned_by_a_killed_master_closes_as_no_results(worker):
    from artiq_journal.replay import replay
    progress = str(worker.tmp / "p")
    result = worker(11, {"n": "3000", "progress": progress},
                    env={"ARTIQ_JOURNAL": "1"}, kill_master_after=20,
                    progress=progress)
    assert result["outcome"] == "master_killed", result
    deadline = time.monotonic() + 60
    while True:
        (journal,) = found(worker.master, "000000011-Journaled.journal")
        state = replay(journal).state
        if state.closed or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert state.close_reason == "no_results"
    assert found(worker.master, "000000011-*.h5") == []
    assert len(state.datasets.local["pairs"]) == 3000, \
        "the orphaned worker finished run(), journaled"
