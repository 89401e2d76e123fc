"""The storage policy is applied identically by every writer of a results
file: the built-in runner's final file (``artiq-journal run``), the export /
live file, and ``artiq-recover`` after a SIGKILL.  Real worker
subprocesses; layouts, values, compression filters, chunking and attributes
compared object by object."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from artiq_journal.recovery import recover
from artiq_journal.recovery.export import export_journal
from artiq_journal.replay import replay
from artiq_journal.runner import run_experiment

from policy_support import experiment_source, layout, problems


def _run(tmp_path, rid, arguments, custom=False, keep=True, results=None):
    exp = tmp_path / ("custom.py" if custom else "stored.py")
    if not exp.exists():
        exp.write_text(experiment_source(custom))
    results = results or str(tmp_path / "results")
    env = {"ARTIQ_JOURNAL_KEEP": "1" if keep else "0"}
    result = run_experiment(str(exp), arguments=arguments, rid=rid,
                            results_dir=results, env=env, timeout=120)
    return result, results


def _one(results, pattern):
    found = glob.glob(os.path.join(results, "*", "*", pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def _compare_groups(a, b):
    la, lb = layout(a), layout(b)
    for name in sorted(set(la) | set(lb)):
        assert la.get(name) == lb.get(name), name
    return la


@pytest.mark.parametrize("variant", ["", "lzf"])
def test_final_export_and_recovered_files_have_the_same_layout(tmp_path,
                                                               variant):
    done, results = _run(tmp_path, 1, {"variant": variant})
    assert done.ok, done.stderr
    final = _one(results, "000000001-Stored.h5")
    journal = _one(results, "000000001-Stored.journal")
    # The policy set in build() ("lzf") is in the last run_info record.
    policy = replay(journal).state.run_info["storage_policy"]
    assert policy["compression"] == ("lzf" if variant else "gzip")

    exported = export_journal(journal, str(tmp_path / "export.h5")).output
    # Recovery of the same journal, ARTIQ's file moved away.
    aside = str(tmp_path / "final.h5")
    shutil.move(final, aside)
    report = recover(results)
    (run,) = report.runs
    assert run.outcome == "recovered", run.problems
    recovered = run.output

    content = _compare_groups(aside, exported)
    _compare_groups(aside, recovered)
    counts = content["datasets/counts"]
    if variant == "lzf":
        assert counts[4] == "lzf" and content["datasets/ys"][4] == "lzf"
        assert "datasets/fit.amp" in content
    else:
        # compress_above 4096: counts (40000 bytes) is compressed at level 6
        assert counts[4:6] == ("gzip", 6) and counts[6] is not None
        assert content["datasets/ys"][4] is None        # 1600 bytes
        assert content["datasets/small.a"][4] == "gzip"  # by pattern
        attrs = counts[8]
        assert attrs["amp"] == ("<f8", 2.5)
        assert attrs["amp.unit"] == "V" and attrs["unit"] == "Hz"
        assert attrs["params"] == ("<f8", [1.0, 2.0])
        assert "datasets/fit.amp" not in content
        assert "datasets/fit.big" in content, "too big for an attribute"
    with h5py.File(recovered, "r") as f:
        recorded = json.loads(f["artiq_journal"].attrs["storage_policy"])
        assert recorded == policy
    print(f"\n{len(content)} objects identical in ARTIQ-runner, export and "
          "recovered files")


def test_recovery_after_sigkill_equals_a_normal_runs_file(tmp_path):
    done, results = _run(tmp_path, 2, {})
    assert done.ok, done.stderr
    final = _one(results, "000000002-Stored.h5")
    killed, results2 = _run(tmp_path, 3, {"kill": "end"},
                            results=str(tmp_path / "results2"))
    assert killed.returncode == -9 or not killed.ok
    assert glob.glob(os.path.join(results2, "*", "*", "*.h5")) == []
    report = recover(results2)
    (run,) = report.runs
    assert run.outcome == "recovered", run.problems
    _compare_groups(final, run.output)


def test_no_results_file_anywhere(tmp_path):
    done, results = _run(tmp_path, 4, {"variant": "nofile"}, keep=False)
    assert done.ok, done.stderr
    assert glob.glob(os.path.join(results, "*", "*", "*")) == [], \
        "no file, and the journal of a complete run is deleted"
    killed, results = _run(tmp_path, 5, {"variant": "nofile",
                                         "kill": "end"})
    journal = _one(results, "000000005-Stored.journal")
    report = recover(results)
    (run,) = report.runs
    assert run.outcome == "no_results_expected", run.problems
    assert glob.glob(os.path.join(results, "*", "*", "*.h5")) == []
    assert replay(journal).state.run_info["storage_policy"][
        "results_file"] is False


def test_custom_store_dataset_needs_trust_experiment_code(tmp_path):
    from artiq_journal.cli.recover import main
    done, results = _run(tmp_path, 6, {}, custom=True)
    assert done.ok, done.stderr
    final = _one(results, "000000006-Stored.h5")
    assert layout(final)["datasets/counts"][7] is True  # shuffle, custom
    killed, crashed = _run(tmp_path, 7, {"kill": "end"}, custom=True,
                           results=str(tmp_path / "crashed"))
    assert not killed.ok
    journal = _one(crashed, "000000007-Stored.journal")
    assert replay(journal).state.run_info["storage_policy"]["custom"] == \
        ["store_dataset", "write_metadata"]

    # Without consent: the declarative policy, and a clear warning.
    untrusted = str(tmp_path / "untrusted")
    report = recover(crashed, output=untrusted)
    (run,) = report.runs
    assert run.outcome == "recovered"
    warned = [str(p) for p in run.problems if p.severity == "warning"]
    assert any("store_dataset() was not run" in w and
               "--trust-experiment-code" in w for w in warned), warned
    assert any("write_metadata() was not run" in w for w in warned)
    assert any("store_dataset() was not run" in p
               for p in problems(run.output))
    plain = layout(run.output)
    assert plain["datasets/counts"][7] is False
    assert plain != layout(final)

    # With consent: identical to the normal run's file.
    code = main([crashed, "--trust-experiment-code", "-q"])
    assert code == 0
    recovered = _one(crashed, "000000007-Stored.h5")
    _compare_groups(final, recovered)
    assert layout(recovered)["/"][1]["custom_marker"] == \
        "written by write_metadata"

    # The experiment file gone: refused clearly, declarative layout.
    os.unlink(recovered)
    for marker in glob.glob(os.path.join(journal, "recovered*")):
        os.unlink(marker)
    os.rename(tmp_path / "custom.py", tmp_path / "moved.py")
    report = recover(crashed, trust_experiment_code=True)
    (run,) = report.runs
    assert run.outcome == "recovered"
    assert any("experiment file" in str(p) and "not found" in str(p)
               for p in run.problems), run.problems
    assert layout(run.output)["datasets/counts"][7] is False


def test_a_failing_custom_store_dataset_leaves_artiqs_layout(tmp_path):
    exp = tmp_path / "broken.py"
    exp.write_text(experiment_source(False).replace(
        "    def run(self):",
        "    def store_dataset(self, f, name, value):\n"
        "        raise RuntimeError('user bug')\n\n"
        "    def run(self):", 1))
    done = run_experiment(str(exp), arguments={}, rid=8,
                          results_dir=str(tmp_path / "results"),
                          timeout=120, stderr=subprocess.PIPE)
    assert done.ok, done.stderr
    assert b"user bug" in done.stderr
    with h5py.File(done.h5_path, "r") as f:
        assert np.array_equal(f["datasets/counts"][()],
                              np.arange(5000) % 7)
        assert f["datasets/counts"].compression is None
