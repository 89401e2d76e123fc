"""``artiq-journal run`` and ``artiq-journal resume``: through ``main([...])``,
with real worker subprocesses and real SIGKILLs.

The sweep below can SIGKILL *itself* at an exact dataset operation
(``crash_at``), so kill points inside a point's group of operations -- after
some of a point's appends but not all, right after a checkpoint -- are hit
deterministically; the external-kill test adds real, timing-dependent kills
from the parent.  In every case the resumed run must end with exactly the
datasets of an uninterrupted run: no point missing, none twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import textwrap
import time

import h5py
import numpy as np
import pytest

from artiq_journal.cli.main import main
from artiq_journal.cli.run import parse_assignment, parse_value
from artiq_journal.replay import last_checkpoint_seq, replay
from artiq_journal.runner import run_experiment, start_experiment

#: Operations per point in the sweep: append ys, append idx, mutate grid,
#: set last, checkpoint (every ``every`` points; the op number is counted
#: anyway).
OPS_PER_POINT = 5

SWEEP = textwrap.dedent("""
    import os
    import signal
    import time

    import numpy as np

    try:
        from artiq.experiment import *
    except ImportError:
        from artiq_journal.runner.experiment import *
    from artiq_journal.worker_hooks import JournalResumable


    def value(i):
        return 0.5 * i * i + np.sin(i)


    class Sweep(JournalResumable, EnvExperiment):
        def build(self):
            self.setattr_argument("n", NumberValue(10, precision=0, step=1))
            self.setattr_argument("every", NumberValue(2, precision=0,
                                                       step=1))
            self.setattr_argument("crash_at", NumberValue(-1, precision=0,
                                                          step=1))
            self.setattr_argument("delay", NumberValue(0.0))
            self.set_dataset("config", np.array([self.n, self.every]),
                             archive=True)

        def op(self, k):
            # SIGKILL ourselves after dataset operation k: an exact crash.
            if k == self.crash_at:
                os.kill(os.getpid(), signal.SIGKILL)

        def run(self):
            state = self.resume_state(None)
            if state is None:
                self.set_dataset("ys", [], broadcast=True, unit="V")
                self.set_dataset("idx", [], broadcast=True)
                self.set_dataset("grid", np.full(self.n, np.nan),
                                 broadcast=True, precision=3)
                self.set_dataset("live", 0, broadcast=True, archive=False)
                state = {"i": 0}
            for i in range(state["i"], self.n):
                k = i * 5
                time.sleep(self.delay)
                self.append_to_dataset("ys", value(i))
                self.op(k)
                self.append_to_dataset("idx", i)
                self.op(k + 1)
                self.mutate_dataset("grid", i, value(i))
                self.op(k + 2)
                self.set_dataset("last", i)
                self.set_dataset("live", i, broadcast=True, archive=False)
                self.op(k + 3)
                if (i + 1) % self.every == 0:
                    self.checkpoint(i=i + 1)
                self.op(k + 4)
""")

NOT_RESUMABLE = textwrap.dedent("""
    from artiq_journal.runner.experiment import *

    class Plain(EnvExperiment):
        def build(self):
            self.setattr_argument("n", NumberValue(3, precision=0, step=1))

        def run(self):
            self.set_dataset("xs", list(range(self.n)))
""")

FAILING = textwrap.dedent("""
    from artiq_journal.runner.experiment import *

    class Broken(EnvExperiment):
        def run(self):
            self.set_dataset("before", 1)
            raise RuntimeError("hardware on fire")
""")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    path = tmp_path_factory.mktemp("experiments") / "sweep.py"
    path.write_text(SWEEP)
    return str(path)


def write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(source)
    return str(path)


def run_main(capsys, *argv):
    """``main(argv)`` -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def h5_of(results, rid):
    found = sorted(results.glob(f"*/*/{rid:09d}-*.h5"))
    assert len(found) == 1, found
    return str(found[0])


def data_of(h5_path):
    """Every dataset of the data groups: {group/name: (value, attrs)}."""
    data = {}
    with h5py.File(h5_path, "r") as f:
        for group in ("datasets", "archive"):
            for name, ds in f[group].items():
                data[f"{group}/{name}"] = (ds[()], dict(ds.attrs))
    return data


def assert_same_data(expected, actual, extra=("datasets/journal.resumed_from",
                                              )):
    assert set(actual) - set(extra) == set(expected)
    for key, (value, attrs) in expected.items():
        got, got_attrs = actual[key]
        assert np.asarray(got).dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(got, value, err_msg=key)
        assert got_attrs == attrs, key


def resumed_from(h5_path):
    with h5py.File(h5_path, "r") as f:
        return json.loads(f["datasets/journal.resumed_from"][()])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(sweep, n, every)``: the datasets of an uninterrupted
    sweep, run once per (n, every) in this module."""
    cache = {}

    def get(sweep_file, n=10, every=2):
        if (n, every) not in cache:
            results = tmp_path_factory.mktemp("reference") / "results"
            result = run_experiment(sweep_file, arguments={"n": n,
                                                           "every": every},
                                    results_dir=str(results), timeout=60)
            assert result.ok
            cache[n, every] = data_of(result.h5_path)
        return cache[n, every]
    return get


# -- --arg parsing ------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("3", 3), ("-2.5e-3", -2.5e-3), ("'abc'", "abc"), ("(1, 2)", (1, 2)),
    ("[1, [2]]", [1, [2]]), ("None", None), ("True", True), ("1+2j", 1 + 2j),
    ("{'a': 1}", {"a": 1}), ("true", True), ("null", None),
    ("scan_1", "scan_1"), ("", ""), ("hello world", "hello world"),
])
def test_arg_values_are_literals_else_strings(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_arg_values_are_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    text = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    assert parse_value(text) == text
    assert parse_value("1 + 1") == "1 + 1"  # no arithmetic either
    assert not marker.exists()


def test_arg_splits_at_the_first_equals_sign():
    assert parse_assignment("expr=a=b") == ("expr", "a=b")
    assert parse_assignment(" n =5") == ("n", 5)


@pytest.mark.parametrize("bad", ["novalue", "=3"])
def test_arg_without_key_is_a_usage_error(sweep, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", sweep, "--arg", bad])
    assert exc.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


# -- run ------------------------------------------------------------------------------

def test_run_completes_and_prints_rid_results_and_journal(sweep, tmp_path,
                                                          capsys):
    results = tmp_path / "results"
    code, out, _ = run_main(capsys, "run", sweep, "--arg", "n=4", "--rid",
                            "17", "--results", results, "--fsync", "always")
    assert code == 0
    h5 = h5_of(results, 17)
    assert "rid:          17 -- completed" in out
    assert f"results file: {h5}" in out
    journal = h5[:-3] + ".journal"
    assert f"journal:      {journal} (removed" in out
    assert not os.path.exists(journal)  # default retention: removed
    data = data_of(h5)
    assert data["datasets/idx"][0].tolist() == [0, 1, 2, 3]
    assert data["datasets/ys"][1] == {"unit": "V"}
    assert "datasets/live" not in data  # archive=False


def test_run_keeps_the_journal_when_asked(sweep, tmp_path, capsys,
                                          monkeypatch):
    monkeypatch.setenv("ARTIQ_JOURNAL_KEEP", "1")
    results = tmp_path / "results"
    code, out, _ = run_main(capsys, "run", sweep, "--arg", "n=3",
                            "--results", results)
    assert code == 0
    journal = h5_of(results, 0)[:-3] + ".journal"
    assert os.path.isdir(journal) and f"{journal} (kept)" in out


def test_run_allocates_increasing_rids(sweep, tmp_path, capsys):
    results = tmp_path / "results"
    for rid in range(2):
        code, out, _ = run_main(capsys, "run", sweep, "--arg", "n=2",
                                "--results", results)
        assert code == 0 and f"rid:          {rid} -- completed" in out


def test_run_without_journal_writes_only_the_results_file(sweep, tmp_path,
                                                          capsys):
    results = tmp_path / "results"
    code, out, _ = run_main(capsys, "run", sweep, "--arg", "n=2",
                            "--no-journal", "--results", results)
    assert code == 0 and "(journaling off)" in out
    assert not list(results.glob("*/*/*.journal"))
    assert h5_of(results, 0)


def test_run_json_is_one_document(sweep, tmp_path, capsys):
    results = tmp_path / "results"
    code, out, _ = run_main(capsys, "run", sweep, "--arg", "n=2", "--json",
                            "--results", results)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["rid"] == 0
    assert report["results_file"] == h5_of(results, 0)
    assert report["resumed_from"] is None


def test_failing_experiment_exits_1(tmp_path, capsys):
    file = write(tmp_path, "broken.py", FAILING)
    code, out, _ = run_main(capsys, "run", file, "--results",
                            tmp_path / "results")
    assert code == 1
    assert "FAILED (worker exit status 1)" in out
    # ARTIQ writes the results file when run() raises; so does the runner.
    assert data_of(h5_of(tmp_path / "results", 0))["datasets/before"][0] == 1


def test_crashed_run_exits_1_and_keeps_its_journal(sweep, tmp_path, capsys):
    results = tmp_path / "results"
    code, out, _ = run_main(capsys, "run", sweep, "--arg", "crash_at=7",
                            "--results", results)
    assert code == 1
    assert f"FAILED (worker exit status {-signal.SIGKILL})" in out
    assert "results file: (none written)" in out
    assert "artiq-journal resume 0" in out
    assert len(list(results.glob("*/*/000000000-Sweep.journal"))) == 1


def test_missing_experiment_file_is_a_usage_error(tmp_path, capsys):
    code, _, err = run_main(capsys, "run", tmp_path / "nope.py")
    assert code == 2 and "no such file" in err


# -- resume ------------------------------------------------------------------------------

def crash_then_resume(capsys, sweep, results, crash_at, n=10, every=2,
                      fsync="group"):
    """Run the sweep until it kills itself after op ``crash_at``, resume
    it; return the resumed run's (exit code, stdout, h5 path)."""
    code, _, _ = run_main(capsys, "run", sweep, "--arg", f"n={n}", "--arg",
                          f"every={every}", "--arg", f"crash_at={crash_at}",
                          "--results", results, "--fsync", fsync)
    assert code == 1, f"crash_at={crash_at} did not crash the run"
    journal = str(next(results.glob("*/*/000000000-Sweep.journal")))
    seq = last_checkpoint_seq(journal)
    code, out, err = run_main(capsys, "resume", "0", "--results", results,
                              "--arg", "crash_at=-1")
    assert code == 0, err
    assert f"resumed from: RID 0, checkpoint seq {seq}" in out
    return out, h5_of(results, 1), seq


def first_checkpoint_op(every):
    """The last op before the sweep's first checkpoint (which follows op
    ``k + 3`` of point ``every - 1``)."""
    return (every - 1) * OPS_PER_POINT + 3


def test_resume_continues_from_the_last_checkpoint(sweep, tmp_path, capsys,
                                                   reference):
    out, h5, seq = crash_then_resume(capsys, sweep, tmp_path / "results",
                                     crash_at=21)
    # op 21 = point 4's second op: points 0..3 checkpointed at i=4, point 4
    # half-measured (ys and idx appended, grid not) -- and must be measured
    # again exactly once.
    assert "resuming RID 0 (Sweep) from its last checkpoint" in out
    assert "{'i': 4}" in out
    assert "rid:          1 -- completed" in out
    assert_same_data(reference(sweep), data_of(h5))
    info = resumed_from(h5)
    assert (info["rid"], info["seq"]) == (0, seq)
    assert info["journal"].endswith("000000000-Sweep.journal")


@pytest.mark.parametrize("seed", range(6))
def test_kill_at_random_operation_then_resume_equals_uninterrupted(
        sweep, tmp_path, capsys, reference, seed):
    rng = random.Random(seed)
    n, every = 10, rng.choice([1, 2, 3])
    crash_at = rng.randrange(first_checkpoint_op(every) + 1,
                             n * OPS_PER_POINT)
    fsync = rng.choice(["always", "group", "never"])
    _, h5, _ = crash_then_resume(capsys, sweep, tmp_path / "results",
                                 crash_at, n=n, every=every, fsync=fsync)
    expected = dict(reference(sweep, n, every))
    got = data_of(h5)
    print(f"seed {seed}: every={every} crash_at={crash_at} fsync={fsync}")
    assert_same_data(expected, got)
    assert got["datasets/idx"][0].tolist() == list(range(n))


def test_external_sigkill_at_random_times_then_resume(sweep, tmp_path,
                                                      capsys, reference):
    rng = random.Random(1234)
    expected = reference(sweep, 10, 2)
    for case in range(3):
        results = tmp_path / f"case{case}" / "results"
        running = start_experiment(sweep, arguments={"n": 10, "every": 2,
                                                     "delay": 0.03},
                                   results_dir=str(results))
        journal = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until a first checkpoint
            found = list(results.glob("*/*/*.journal"))
            if found and replay(str(found[0])).state.checkpoint:
                journal = str(found[0])
                break
            time.sleep(0.01)
        assert journal is not None
        time.sleep(rng.uniform(0, 0.2))
        running.process.send_signal(signal.SIGKILL)
        assert running.wait().returncode == -signal.SIGKILL
        code, out, err = run_main(capsys, "resume", running.rid,
                                  "--results", results)
        assert code == 0, err
        got = data_of(h5_of(results, 1))
        assert_same_data(expected, got)


def test_resume_of_a_resumed_run(sweep, tmp_path, capsys, reference):
    results = tmp_path / "results"
    assert run_main(capsys, "run", sweep, "--arg", "crash_at=13",
                    "--results", results)[0] == 1
    # The resumed run dies too (later), and is resumed in turn.
    assert run_main(capsys, "resume", 0, "--arg", "crash_at=37",
                    "--results", results)[0] == 1
    code, out, err = run_main(capsys, "resume", 1, "--arg", "crash_at=-1",
                              "--results", results)
    assert code == 0, err
    h5 = h5_of(results, 2)
    assert resumed_from(h5)["rid"] == 1
    assert_same_data(reference(sweep), data_of(h5))


def test_resume_replaces_an_earlier_resume_from_argument(sweep, tmp_path,
                                                         capsys, reference):
    results = tmp_path / "results"
    assert run_main(capsys, "run", sweep, "--arg", "crash_at=13",
                    "--results", results)[0] == 1
    # Run 1 resumes run 0 through the experiment argument, and dies.
    assert run_main(capsys, "run", sweep, "--arg", "resume_from='0'",
                    "--arg", "crash_at=37", "--results", results)[0] == 1
    code, _, err = run_main(capsys, "resume", 1, "--arg", "crash_at=-1",
                            "--results", results)
    assert code == 0, err
    h5 = h5_of(results, 2)
    assert resumed_from(h5)["rid"] == 1  # not 0, as the argument said
    assert_same_data(reference(sweep), data_of(h5))


def test_resume_json(sweep, tmp_path, capsys):
    results = tmp_path / "results"
    run_main(capsys, "run", sweep, "--arg", "crash_at=13", "--results",
             results)
    code, out, _ = run_main(capsys, "resume", 0, "--arg", "crash_at=-1",
                            "--results", results, "--json")
    report = json.loads(out)
    assert code == 0 and report["rid"] == 1
    assert report["resumed_from"]["rid"] == 0


def test_resume_unknown_rid_exits_1(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    code, _, err = run_main(capsys, "resume", 5, "--results",
                            tmp_path / "results")
    assert code == 1 and "no journal of RID 5" in err


def test_resume_before_the_first_checkpoint_exits_1(sweep, tmp_path,
                                                    capsys):
    results = tmp_path / "results"
    assert run_main(capsys, "run", sweep, "--arg", "crash_at=2",
                    "--results", results)[0] == 1
    code, _, err = run_main(capsys, "resume", 0, "--results", results)
    assert code == 1 and "no checkpoint" in err
    assert not list(results.glob("*/*/000000001-*"))  # nothing started


def test_resume_of_an_experiment_that_cannot_resume_exits_1(tmp_path,
                                                            capsys):
    """A journal with a checkpoint whose experiment never calls
    resume_state(): the new run completes but did not resume -- say so."""
    results = tmp_path / "results"
    source = SWEEP + textwrap.dedent("""
        class Forgetful(Sweep):
            def run(self):
                if os.environ.get("ARTIQ_JOURNAL_RESUME"):
                    self.set_dataset("ys", [])  # starts over, no resume
                    return
                Sweep.run(self)
    """)
    file = write(tmp_path, "forgetful.py", source)
    assert run_main(capsys, "run", file, "--class", "Forgetful", "--arg",
                    "crash_at=13", "--results", results)[0] == 1
    code, _, err = run_main(capsys, "resume", 0, "--results", results)
    assert code == 1 and "did not resume" in err


def test_resume_while_the_run_is_alive_exits_1(sweep, tmp_path, capsys):
    results = tmp_path / "results"
    running = start_experiment(sweep, arguments={"n": 200, "delay": 0.02},
                               results_dir=str(results))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = list(results.glob("*/*/*.journal"))
            if found and replay(str(found[0])).state.checkpoint:
                break
            time.sleep(0.01)
        code, _, err = run_main(capsys, "resume", running.rid, "--results",
                                results)
        assert code == 1 and "still being written" in err
    finally:
        running.process.kill()
        running.wait()
