"""The storage policy in the REAL ARTIQ worker (release-7, release-8 and
master, vendored and unmodified, ``ARTIQ_JOURNAL=1``): ARTIQ's own results
file -- written by ``worker_impl.write_results()`` through the manager's
``write_hdf5``, which the hook wraps -- has exactly the layout of the
export of the run's journal and of the file ``artiq-recover`` rebuilds from
it (declarative policy; custom ``store_dataset``/``write_metadata`` with
``--trust-experiment-code``); "no results file" leaves none."""

from __future__ import annotations

import glob
import os
import shutil

import pytest

import artiq_vendor
from artiq_journal.recovery import recover
from artiq_journal.recovery.export import export_journal

from policy_support import experiment_source, layout

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "src")
PTH = os.path.join(SRC, "artiq_journal", "worker_hooks",
                   "artiq_journal_autoload.pth")


@pytest.fixture(params=["7", "8", "master"])
def worker(tmp_path, request):
    release = request.param
    artiq_vendor.require_release(release)
    site = tmp_path / "site"
    site.mkdir()
    with open(PTH) as f:
        (site / "sitecustomize.py").write_text(f.read())
    master = tmp_path / "master"
    master.mkdir()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("ARTIQ_JOURNAL")}

    def run(rid, arguments, custom=False, **env):
        experiment = tmp_path / ("custom.py" if custom else "stored.py")
        experiment.write_text(experiment_source(custom))
        expid = {"log_level": 30, "file": str(experiment),
                 "class_name": "Stored", "arguments": arguments}
        environment = artiq_vendor.env(dict(base, ARTIQ_JOURNAL="1", **env),
                                       release=release,
                                       first=(str(site), SRC))
        job = {"rid": rid, "expid": expid, "datasets": {}}
        return artiq_vendor.drive_worker(job, environment, str(master))

    run.master = str(master)
    run.release = release
    return run


def _found(master, pattern):
    return sorted(glob.glob(os.path.join(master, "results", "*", "*",
                                         pattern)))


def _same(a, b):
    la, lb = layout(a), layout(b)
    for name in sorted(set(la) | set(lb)):
        assert la.get(name) == lb.get(name), name
    return la


@pytest.mark.parametrize("custom", [False, True])
def test_artiqs_file_equals_export_and_recovery(worker, tmp_path, custom):
    result = worker(20, {}, custom=custom, ARTIQ_JOURNAL_KEEP="1")
    assert result["outcome"] == "completed", result
    (final,) = _found(worker.master, "000000020-Stored.h5")
    (journal,) = _found(worker.master, "000000020-Stored.journal")
    content = layout(final)
    if custom:
        assert content["datasets/counts"][7] is True      # shuffle
        assert content["/"][1]["custom_marker"] == "written by write_metadata"
    else:
        assert content["datasets/counts"][4:6] == ("gzip", 6)
        assert content["datasets/counts"][8]["amp"] == ("<f8", 2.5)
        assert "datasets/fit.amp" not in content
    aside = str(tmp_path / "final.h5")
    shutil.move(final, aside)
    report = recover(os.path.join(worker.master, "results"),
                     trust_experiment_code=custom)
    (run,) = report.runs
    assert run.outcome == "recovered", run.problems
    _same(aside, run.output)
    if not custom:
        exported = export_journal(journal, str(tmp_path / "e.h5")).output
        _same(aside, exported)
    print(f"\nARTIQ {worker.release}: {len(content)} objects identical "
          f"({'custom store_dataset' if custom else 'declarative policy'})")


def test_no_results_file_in_artiq(worker):
    result = worker(21, {"variant": "nofile"})
    assert result["outcome"] == "completed", result
    assert _found(worker.master, "000000021-*") == []
