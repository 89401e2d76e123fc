"""The automatic live file ``<rid:09>-<Class>.partial.h5``
(``ARTIQ_JOURNAL_LIVE_S``): while a worker subprocess keeps writing, another
process (this test) opens it in a loop and always finds a complete HDF5
file holding a prefix of the run's operations, with the storage policy
applied; it is removed after a normal end and left (complete, final) after
a SIGKILL, where ``artiq-recover`` still writes the real results file."""

from __future__ import annotations

import glob
import os
import time

import h5py
import numpy as np
import pytest

from artiq_journal.recovery import recover
from artiq_journal.runner import start_experiment
from artiq_journal.worker_hooks import config

from policy_support import experiment_source


def _partial(results):
    found = glob.glob(os.path.join(results, "*", "*", "*.partial.h5"))
    return found[0] if found else None


def _watch(running, results, expect_values):
    """Open the live file in a loop until the worker exits; check each
    view.  Returns (opens, distinct prefix lengths seen)."""
    opens, lengths = 0, set()
    while running.process.poll() is None:
        path = _partial(results)
        if path is None:
            time.sleep(0.02)
            continue
        try:
            f = h5py.File(path, "r")
        except OSError:
            # Removed at the end of the run, between the glob and the open
            # (HDF5 may say "can't retrieve stat info" rather than ENOENT).
            if not os.path.exists(path):
                continue
            raise
        with f:
            # Never a half file: every object is there and readable.
            ys = f["datasets/ys"][()] if "datasets/ys" in f else np.zeros(0)
            last_seq = int(f["artiq_journal"].attrs["last_seq"])
            assert f["artiq_journal"].attrs["exported"]
            assert np.array_equal(ys, expect_values[:len(ys)]), \
                "not a prefix of the operations"
            if "datasets/counts" in f:
                assert f["datasets/counts"].compression == "gzip"
                assert f["datasets/counts"].attrs["amp"] == 2.5
        assert last_seq > 0
        opens += 1
        lengths.add(len(ys))
    return opens, lengths


def _start(tmp_path, rid, arguments):
    exp = tmp_path / "stored.py"
    exp.write_text(experiment_source())
    results = str(tmp_path / "results")
    running = start_experiment(str(exp), arguments=arguments, rid=rid,
                               results_dir=results,
                               env={"ARTIQ_JOURNAL_LIVE_S": "0.2"})
    return running, results


def test_setting_is_off_by_default_and_read_from_the_environment():
    assert config.from_env({}).live_interval is None
    assert config.from_env({"ARTIQ_JOURNAL_LIVE_S": "off"}).live_interval \
        is None
    assert config.from_env({"ARTIQ_JOURNAL_LIVE_S": "2.5"}).live_interval \
        == 2.5
    bad = config.from_env({"ARTIQ_JOURNAL_LIVE_S": "soon"})
    assert bad.live_interval is None and bad.problems


def test_live_file_is_always_complete_and_removed_after_a_normal_end(
        tmp_path):
    n = 300
    expect = np.arange(n) * 0.25
    running, results = _start(tmp_path, 1, {"n": str(n), "delay": "0.01"})
    opens, lengths = _watch(running, results, expect)
    done = running.wait(60)
    assert done.ok, done.stderr
    print(f"\nlive file opened {opens} times while the run went on, "
          f"{len(lengths)} distinct states, never a half file")
    assert opens >= 3 and len(lengths) >= 2
    assert _partial(results) is None, "removed once the results are written"
    with h5py.File(done.h5_path, "r") as f:
        assert np.array_equal(f["datasets/ys"][()], expect)


def test_live_file_after_sigkill_holds_the_last_state_and_recovery_ignores_it(
        tmp_path):
    n = 5000
    expect = np.arange(n) * 0.25
    running, results = _start(tmp_path, 2, {"n": str(n), "delay": "0.005",
                                            "kill": "150"})
    _watch(running, results, expect)
    done = running.wait(60)
    assert done.returncode == -9
    # The side process makes one last refresh when the worker's pipe ends.
    deadline = time.monotonic() + 30
    while True:
        partial = _partial(results)
        if partial is not None:
            with h5py.File(partial, "r") as f:
                final = f["datasets/ys"][()]
            if len(final) == 151 or time.monotonic() > deadline:
                break
        time.sleep(0.1)
    assert np.array_equal(final, expect[:151])
    stat = os.stat(partial)
    report = recover(results)
    (run,) = report.runs
    assert run.outcome == "recovered", run.problems
    assert run.output.endswith("000000002-Stored.h5")
    with h5py.File(run.output, "r") as f:
        assert np.array_equal(f["datasets/ys"][()], expect[:151])
    assert os.stat(partial).st_mtime_ns == stat.st_mtime_ns, \
        "recovery never touches the live file"


WRITE_RESULTS = '''
import numpy as np
from artiq_journal.runner.experiment import *
from artiq_journal.storage_policy import StoragePolicy
from artiq_journal.worker_hooks import JournalResumable, write_results


class Early(JournalResumable, EnvExperiment):
    journal_storage = StoragePolicy(compress_above=100)

    def run(self):
        self.set_dataset("ys", np.arange(1000.0))
        self.set_dataset("n", 1)
        early = self.write_results()
        self.set_dataset("n", 2)
        write_results(self, early + ".second.h5")
        self.set_dataset("n", 3)
'''


def test_write_results_from_the_experiment_is_the_state_of_that_moment(
        tmp_path):
    from artiq_journal.runner import run_experiment
    exp = tmp_path / "early.py"
    exp.write_text(WRITE_RESULTS)
    done = run_experiment(str(exp), rid=3, timeout=60,
                          results_dir=str(tmp_path / "results"))
    assert done.ok
    (early,) = glob.glob(str(tmp_path / "results" / "*" / "*" /
                             "000000003-Early.export.h5"))
    for path, n in ((early, 1), (early + ".second.h5", 2),
                    (done.h5_path, 3)):
        with h5py.File(path, "r") as f:
            assert f["datasets/n"][()] == n
            assert f["datasets/ys"].compression == "gzip"
            assert np.array_equal(f["datasets/ys"][()], np.arange(1000.0))
