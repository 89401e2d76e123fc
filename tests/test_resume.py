"""Resume: a scan killed anywhere and resumed (possibly killed again, and
resumed again) ends with exactly the datasets of an uninterrupted run --
no duplicated and no missing points.

The crash loop runs the scan in real worker subprocesses of the built-in
runner (``artiq_journal.runner.start_experiment``) and SIGKILLs them at
seeded random points: the experiment kills itself right after a random
dataset operation (exact, covers every gap between operations, before and
after checkpoints) or the test kills it after a random amount of
acknowledged progress (lands anywhere, also inside a journal write).  The
in-process tests pin down the API: what is restored, what is journaled,
how the earlier run is named, and the errors.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

import artiq_vendor
from artiq_journal.errors import ResumeError
from artiq_journal.journal.reader import JournalReader
from artiq_journal.replay import last_checkpoint_seq, replay
from artiq_journal.runner import run_experiment, start_experiment
from artiq_journal.runner import environment as runner_env
from artiq_journal.runner.datasets import DatasetDB, DatasetManager
from artiq_journal.worker_hooks import JournalResumable, attach
from artiq_journal.worker_hooks.attach import live_journal
from artiq_journal.worker_hooks.resume import RESUMED_FROM_DATASET

SCAN = '''
import os
import signal
import time

import numpy as np
from artiq_journal.runner.experiment import *
from artiq_journal.worker_hooks import JournalResumable

KILL_AT = int(os.environ.get("SCAN_KILL_AT", "-1"))


class Scan(JournalResumable, EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(40, precision=0, step=1))
        self.setattr_argument("progress", StringValue(""))
        self.ops = 0

    def op(self, method, *args, **kwargs):
        method(*args, **kwargs)
        self.ops += 1
        if self.ops == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self):
        progress = open(self.progress, "a") if self.progress else None
        n = int(self.n)
        state = self.resume_state(None)
        if state is None:
            self.op(self.set_dataset, "xs", [], broadcast=True)
            self.op(self.set_dataset, "ys", np.zeros(n), unit="V",
                    precision=3)
            self.op(self.set_dataset, "hits", [], archive=True)
            self.op(self.set_dataset, "note", "scan", broadcast=True,
                    archive=False)
            self.op(self.get_dataset, "calib")
            state = {"i": 0, "total": 0.0, "tag": ("scan", 1)}
        total = state["total"]
        for i in range(state["i"], n):
            self.op(self.append_to_dataset, "xs", i * 0.25)
            self.op(self.mutate_dataset, "ys", i, i * 1.5)
            if i % 3 == 0:
                self.op(self.append_to_dataset, "hits", [i, i * i])
            if i % 7 == 0:
                self.op(self.set_dataset, "last", i, broadcast=True)
            total += i
            self.checkpoint(i=i + 1, total=total, tag=state["tag"])
            self.ops += 1
            if self.ops == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
            if progress is not None:
                progress.write(f"{i}\\n")
                progress.flush()
        self.set_dataset("total", total)
'''

N_POINTS = 40
#: Dataset operations plus checkpoints of a fresh run, for kill points.
OPS_PER_RUN = 5 + N_POINTS * 3 + N_POINTS // 3 + N_POINTS // 7 + 2
COUNTS = {"chains": 0, "runs": 0, "kills": 0, "self_kills": 0,
          "timed_kills": 0, "fresh_restarts": 0, "killed_after_results": 0}


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    print(f"\nresume: {COUNTS}")


@pytest.fixture(scope="module")
def scan_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    (root / "scan.py").write_text(SCAN)
    db = DatasetDB(str(root / "datasets.pyon"))
    db.set("calib", np.array([1.0, 2.0]), persist=True)
    db.save()
    return root


def _options(root):
    return {"results_dir": str(root / "results"),
            "dataset_db": str(root / "datasets.pyon"),
            "stderr": subprocess.PIPE}


def _datasets(h5_path):
    content = {}
    with h5py.File(h5_path, "r") as f:
        for group in ("datasets", "archive"):
            for key, item in f[group].items():
                value = item[()]
                content[f"{group}/{key}"] = (
                    item.dtype.str, value.tolist()
                    if isinstance(value, np.ndarray) else value,
                    dict(item.attrs))
    return content


@pytest.fixture(scope="module")
def reference(scan_setup):
    result = run_experiment(str(scan_setup / "scan.py"), "Scan",
                            {"n": N_POINTS}, rid=1, timeout=60,
                            **_options(scan_setup))
    assert result.ok, result.stderr.decode()
    return _datasets(result.h5_path)


def _journal_of(root, rid):
    found = list((root / "results").glob(f"*/*/{rid:09d}-Scan.journal"))
    return str(found[0]) if found else None


def _run_chain(root, rng, rid):
    """Kill and resume until a run completes; return (rid, h5_path)."""
    resume_from = None
    for attempt in range(12):
        arguments = {"n": N_POINTS}
        if resume_from is not None:
            arguments["resume_from"] = str(resume_from)
        timed = rng.random() < 0.3 and attempt < 8
        kill_at = rng.randrange(1, OPS_PER_RUN) if attempt < 8 else -1
        env = {"SCAN_KILL_AT": str(-1 if timed else kill_at)}
        progress = str(root / f"progress-{rid}.txt")
        if timed:
            arguments["progress"] = progress
        running = start_experiment(str(root / "scan.py"), "Scan", arguments,
                                   rid=rid, env=env, **_options(root))
        if timed:
            wanted = rng.randrange(0, N_POINTS // 2)
            deadline = time.monotonic() + 30
            while running.process.poll() is None:
                if _acked(progress) >= wanted:
                    running.process.send_signal(signal.SIGKILL)
                    break
                assert time.monotonic() < deadline
                time.sleep(0.001)
        result = running.wait(timeout=60)
        COUNTS["runs"] += 1
        if result.returncode == 0:
            return rid, result.h5_path
        assert result.returncode == -signal.SIGKILL, result.stderr.decode()
        if result.h5_path is not None:
            # A timed kill that landed after the results file was written
            # (complete: the run is done) or while it was (resume).
            assert timed
            if _complete(result.h5_path):
                COUNTS["killed_after_results"] += 1
                return rid, result.h5_path
        COUNTS["kills"] += 1
        COUNTS["timed_kills" if timed else "self_kills"] += 1
        journal = _journal_of(root, rid)
        if journal is not None and last_checkpoint_seq(journal) is not None:
            resume_from = rid
        elif resume_from is None:
            COUNTS["fresh_restarts"] += 1
        rid += 1
    raise AssertionError("the chain never completed")


def _complete(h5_path):
    # A kill while ARTIQ writes the file can leave one that opens and lists
    # "expid" but fails when its data is read: read everything.
    try:
        with h5py.File(h5_path, "r") as f:
            f.visititems(lambda name, obj: obj[()]
                         if isinstance(obj, h5py.Dataset) else None)
            return "expid" in f
    except Exception:
        return False


def _acked(progress):
    try:
        with open(progress) as f:
            return f.read().count("\n")
    except FileNotFoundError:
        return 0


def test_killed_at_random_points_and_resumed_equals_uninterrupted(
        scan_setup, reference):
    rng = random.Random(0x5EED)
    rid = 100
    for chain in range(16):
        last_rid, h5_path = _run_chain(scan_setup, rng, rid)
        got = _datasets(h5_path)
        resumed = got.pop(f"datasets/{RESUMED_FROM_DATASET}", None)
        if last_rid != rid:
            assert resumed is not None, "a resumed run records resumed_from"
            info = json.loads(resumed[1])
            assert rid <= info["rid"] < last_rid
        assert got == reference, f"chain {chain} (rids {rid}..{last_rid})"
        COUNTS["chains"] += 1
        rid = last_rid + 100


# -- the API, in process ------------------------------------------------------

class FakeDB:
    def __init__(self, data=None):
        self.data = dict(data or {})

    def get(self, key):
        return self.data[key][1]

    def get_metadata(self, key):
        return self.data[key][2]

    def update(self, mod):
        pass


class Resumable(JournalResumable, runner_env.EnvExperiment):
    def build(self):
        self.setattr_argument("n", runner_env.NumberValue(3, precision=0,
                                                          step=1))


def _results_dir(root):
    path = root / "results" / "2026-01-01" / "10"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _crashed_run(root, rid=1, *, checkpoint=True):
    """A journal as a killed run leaves it (never closed)."""
    mgr = DatasetManager(FakeDB({"db": (True, [9, 9], {})}))
    live = attach(mgr, rid=rid, expid={}, class_name="Resumable",
                  results_dir=_results_dir(root), fsync="never")
    shared = [1, 2]
    mgr.set("both", shared, {"unit": "V"}, True, True, True)
    mgr.set("local", np.arange(3.0), {"precision": 2}, False, False, True)
    mgr.set("bcast", "b", {}, True, False, False)
    mgr.set("meta_only", 5, {"unit": "s"}, False, False, False)
    mgr.get("db", archive=True)
    if checkpoint:
        live.checkpoint({"i": 2, "xs": (1, 2.5), "arr": np.ones(2)})
    mgr.append_to("both", 3)     # after the checkpoint: must not come back
    live.abandon()
    return live.path


def _experiment(root, rid, arguments, db=None):
    mgr = DatasetManager(FakeDB(db))
    live = attach(mgr, rid=rid, expid={}, class_name="Resumable",
                  results_dir=_results_dir(root), fsync="never", keep=True)
    exp = Resumable((None, mgr, runner_env.ProcessArgumentManager(arguments),
                     {}))
    return exp, mgr, live


def test_fresh_run_returns_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("ARTIQ_JOURNAL_RESUME", raising=False)
    exp, mgr, live = _experiment(tmp_path, 2, {})
    default = {"i": 0}
    assert exp.resume_state(default) is default
    assert RESUMED_FROM_DATASET not in mgr.local
    live.close()


def test_resume_restores_datasets_flags_metadata_and_archive(tmp_path):
    old = _crashed_run(tmp_path)
    exp, mgr, live = _experiment(tmp_path, 2, {"resume_from": "1"})
    state = exp.resume_state(None)
    assert state["i"] == 2 and state["xs"] == (1, 2.5)
    assert np.array_equal(state["arr"], np.ones(2))
    assert mgr.local["both"] == [1, 2], "state of the checkpoint, not later"
    assert mgr.local["both"] is mgr._broadcaster.raw_view["both"][1]
    assert mgr._broadcaster.raw_view["both"][0] is True      # persist
    assert mgr.metadata["both"] == {"unit": "V"}
    assert np.array_equal(mgr.local["local"], np.arange(3.0))
    assert mgr.metadata["local"] == {"precision": 2}
    assert "bcast" not in mgr.local
    assert mgr._broadcaster.raw_view["bcast"] == (False, "b", {})
    assert "meta_only" not in mgr.local and mgr.metadata["meta_only"] == \
        {"unit": "s"}
    assert mgr.archive == {"db": [9, 9]}
    info = json.loads(mgr.local[RESUMED_FROM_DATASET])
    # The journal is named relative to the results root (results/).
    assert info == {"rid": 1, "seq": last_checkpoint_seq(old),
                    "journal": os.path.relpath(old, str(tmp_path / "results"))}
    assert not os.path.isabs(info["journal"])
    # Idempotent: a second call restores nothing again.
    mgr.append_to("both", 4)
    assert exp.resume_state(None) == state and mgr.local["both"] == [1, 2, 4]
    # The new run's journal alone rebuilds the same state.
    live.close()
    result = replay(live.path)
    datasets = result.state.datasets
    assert datasets.local.keys() == mgr.local.keys()
    assert datasets.broadcast.keys() == mgr._broadcaster.raw_view.keys()
    assert datasets.archive == mgr.archive
    assert datasets.metadata == mgr.metadata
    assert result.state.resumed_from == info
    assert result.state.checkpoint["i"] == 2, "re-checkpointed at once"


def test_resume_chain_from_a_run_killed_right_after_resuming(tmp_path):
    _crashed_run(tmp_path)
    exp, mgr, live = _experiment(tmp_path, 2, {"resume_from": "1"})
    exp.resume_state(None)
    live.abandon()                      # killed before its own checkpoint
    exp3, mgr3, live3 = _experiment(tmp_path, 3, {"resume_from": "2"})
    assert exp3.resume_state(None)["i"] == 2
    assert mgr3.local["both"] == [1, 2]
    live3.close()


def test_resume_by_journal_path_and_from_the_environment(tmp_path,
                                                         monkeypatch):
    old = _crashed_run(tmp_path)
    exp, mgr, live = _experiment(tmp_path, 2, {"resume_from": old})
    assert exp.resume_state(None)["i"] == 2
    live.close()
    monkeypatch.setenv("ARTIQ_JOURNAL_RESUME", "1")
    exp, mgr, live = _experiment(tmp_path, 3, {})
    assert exp.resume_state(None)["i"] == 2
    live.close()


@pytest.mark.parametrize("case", ["missing", "no_checkpoint", "ambiguous",
                                  "live"])
def test_resume_errors(tmp_path, case):
    if case == "no_checkpoint":
        _crashed_run(tmp_path, checkpoint=False)
    elif case == "ambiguous":
        _crashed_run(tmp_path)
        other = tmp_path / "results" / "2026-01-02" / "11"
        other.mkdir(parents=True)
        (other / "000000001-Other.journal").mkdir()
    live_writer = None
    if case == "live":
        path = _crashed_run(tmp_path)
        from artiq_journal.journal.lock import acquire
        live_writer = acquire(path)
    exp, mgr, live = _experiment(tmp_path, 2, {"resume_from": "1"})
    with pytest.raises(ResumeError):
        exp.resume_state(None)
    live.close()
    if live_writer is not None:
        live_writer.release()


def test_checkpoint_accepts_plain_data_only(tmp_path):
    exp, mgr, live = _experiment(tmp_path, 2, {})
    seq = live.writer.last_seq
    with pytest.raises(TypeError):
        exp.checkpoint(i=1, bad=object())
    assert live.writer.last_seq == seq, "nothing written"
    exp.checkpoint(i=1, xs=[1.5, (2, "a")], arr=np.zeros(2), c=1j, b=b"x")
    live.close()
    # Without a journal the same check applies.
    plain = Resumable((None, DatasetManager(FakeDB()),
                       runner_env.ProcessArgumentManager({}), {}))
    with pytest.raises(TypeError):
        plain.checkpoint(f=lambda: 0)
    plain.checkpoint(i=2)


def test_checkpoint_writes_the_record_the_resume_reads(tmp_path):
    exp, mgr, live = _experiment(tmp_path, 2, {})
    exp.checkpoint(i=7)
    live.close()
    checkpoints = [r.payload for r in JournalReader(live.path)
                   if r.type_name == "checkpoint"]
    assert checkpoints == [[{"i": 7}]]


def test_mixin_must_come_before_env_experiment():
    with pytest.raises(TypeError, match="before"):
        class Wrong(runner_env.EnvExperiment, JournalResumable):
            pass


def test_resume_from_is_an_argument_artiq_accepts_and_lists():
    artiq_vendor.require("artiq.language.environment")
    from artiq.language import environment as artiq_env

    class Scan(JournalResumable, artiq_env.EnvExperiment):
        def build(self):
            self.setattr_argument("n", artiq_env.NumberValue(3))

    trace = artiq_env.TraceArgumentManager()          # what examine uses
    Scan((None, None, trace, {}))
    assert list(trace.requested_args) == ["n", "resume_from"]
    processed = artiq_env.ProcessArgumentManager({"resume_from": "12"})
    exp = Scan((None, None, processed, {}))
    processed.check_unprocessed_arguments()           # does not raise
    assert exp._journal_resume_source() == "12"
    assert "build" not in vars(exp)


def test_no_live_journal_means_checkpoint_is_only_validated(tmp_path):
    mgr = DatasetManager(FakeDB())
    exp = Resumable((None, mgr, runner_env.ProcessArgumentManager({}), {}))
    exp.checkpoint(i=1)
    assert live_journal(mgr) is None


def test_resume_uses_the_last_checkpoint_replay_trusts(tmp_path):
    # A checkpoint after a record that cannot be applied is not trusted (it
    # may depend on what that record did): resume from the one before it.
    from artiq_journal.journal.constants import (REC_APPEND, REC_CHECKPOINT,
                                                 REC_RUN_INFO, REC_SET)
    from artiq_journal.journal.writer import JournalWriter
    from artiq_journal.worker_hooks.resume import load_checkpoint

    path = str(tmp_path / "000000001-X.journal")
    writer = JournalWriter(path, fsync="never")
    writer.append(REC_RUN_INFO, {"rid": 1, "class_name": "X"})
    writer.append(REC_SET, ["ys", [1], {}, False, False, True])
    good = writer.append(REC_CHECKPOINT, [{"i": 1}])
    writer.append(REC_APPEND, ["missing", 1])   # KeyError: cannot be applied
    writer.append(REC_CHECKPOINT, [{"i": 2}])
    writer.abandon()
    assert last_checkpoint_seq(path) == good
    _info, state, seq = load_checkpoint(path)
    assert (seq, state.checkpoint) == (good, {"i": 1})
    assert state.datasets.local["ys"] == [1]


def test_journal_point_makes_a_scan_point_one_unit(tmp_path, monkeypatch):
    from artiq_journal.journal.constants import REC_POINT_BEGIN, REC_POINT_END
    from artiq_journal.journal.reader import JournalReader
    monkeypatch.delenv("ARTIQ_JOURNAL_RESUME", raising=False)
    exp, mgr, live = _experiment(tmp_path, 2, {})
    exp.set_dataset("xs", [], archive=True)
    exp.set_dataset("ys", [], archive=True)
    for i in range(3):
        with exp.journal_point():
            exp.append_to_dataset("xs", i)
            exp.append_to_dataset("ys", 2 * i)
        exp.checkpoint(i=i + 1)
    with exp.journal_point():
        exp.append_to_dataset("xs", 3)
        live.abandon()      # the run dies inside the point
    types = [r.rtype for r in JournalReader(live.path)]
    assert types.count(REC_POINT_BEGIN) == 4
    assert types.count(REC_POINT_END) == 3
    result = replay(live.path)
    assert result.state.datasets.local["xs"] == [0, 1, 2]
    assert result.state.datasets.local["ys"] == [0, 2, 4]
    assert result.partial_point is not None


def test_journal_point_without_a_journal_is_a_no_op(tmp_path):
    mgr = DatasetManager(FakeDB(None))
    exp = Resumable((None, mgr, runner_env.ProcessArgumentManager({}), {}))
    with exp.journal_point():
        pass
