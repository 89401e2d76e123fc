"""The steps of ``artiq-journal demo``, printed as they happen.

1. Run the example scan (``scan.py``) in a worker subprocess with
   journaling; watch its journal; SIGKILL the worker mid-scan.
2. Show what ARTIQ alone leaves: no results file; and the orphaned journal.
3. Run ``artiq-recover`` (the console script's module, in a subprocess) and
   show the recovered file; check it holds every point measured.
4. Resume the scan from its last checkpoint (``artiq-journal resume``'s
   library functions) to completion.
5. Run the same scan uninterrupted in a separate results tree and check the
   resumed run's data equal it, every point measured exactly once.

Each check prints PASS or FAIL; :meth:`Walkthrough.run` returns whether all
passed.  A step that cannot go on (its run failed) ends the walkthrough with
a FAIL.  Nothing outside the working directory is written or deleted.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from typing import Any, TextIO

import h5py
import numpy as np

import artiq_journal
from ..runner.resume import (find_resume_source, journal_of_run,
                             start_resumed_experiment)
from ..errors import JournalError
from ..journal.lock import is_locked
from ..recovery.discover import closed_cleanly
from ..replay import last_checkpoint_seq, replay
from ..runner import RunningExperiment, start_experiment
from ..runner.launch import find_results_file
from ..worker_hooks.resume import RESUMED_FROM_DATASET
from . import compare
from .scan import (DEFAULT_SEED, DEFAULT_SPAN, planned_detunings,
                   simulated_counts)

__all__ = ["SCAN_FILE", "SCAN_CLASS", "SABOTAGES", "Check", "Walkthrough"]

SCAN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "scan.py")
SCAN_CLASS = "ResonanceScan"
#: Deliberate defects (hidden ``--sabotage``) that the checks must catch.
SABOTAGES = {
    "drop-point": "delete one measured point from the resumed run's "
                  "results file before the comparison",
    "wrong-seed": "resume with a different 'seed' argument, so the resumed "
                  "run does not continue the same measurement",
}
#: Fraction of the scan after which the worker is killed.
KILL_FRACTION = 0.5
#: Point datasets of the scan, one entry per measured point.
POINT_DATASETS = ("scan.x", "scan.counts", "scan.index")

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(
    os.path.abspath(artiq_journal.__file__)))


@dataclasses.dataclass
class Check:
    """One verified claim of the demo."""

    name: str
    ok: bool
    detail: str = ""


class StepFailed(Exception):
    """A step cannot go on; the message says why."""


class Walkthrough:
    """One demo session in ``workdir`` (created if needed; give each
    session a fresh one), printing to ``out``.  Writes only below
    ``workdir``; deletes nothing."""

    def __init__(self, workdir: str, points: int = 40, delay: float = 0.1,
                 checkpoint_every: int = 3, out: TextIO = sys.stdout,
                 sabotage: str | None = None) -> None:
        if points < 4:
            raise ValueError("the demo needs at least 4 points")
        if sabotage is not None and sabotage not in SABOTAGES:
            raise ValueError(f"unknown sabotage {sabotage!r}")
        self.workdir = os.path.abspath(workdir)
        self.results = os.path.join(self.workdir, "results")
        self.reference_results = os.path.join(self.workdir, "reference",
                                              "results")
        self.logs = os.path.join(self.workdir, "logs")
        self.points, self.delay = points, delay
        self.checkpoint_every = checkpoint_every
        self.arguments = {"points": points, "delay": delay,
                          "checkpoint_every": checkpoint_every}
        self.out = out
        self.sabotage = sabotage
        self.checks: list[Check] = []
        # Filled in by the steps.
        self.crashed_rid: int | None = None
        self.journal: str | None = None
        self.checkpoint_at_kill: int | None = None
        self.resumed_h5: str | None = None
        self.recovered_points: int | None = None

    # -- printing ----------------------------------------------------------------

    def say(self, text: str = "", indent: int = 4) -> None:
        for line in text.split("\n"):
            print(" " * indent + line if line else "", file=self.out)
        self.out.flush()

    def step(self, number: int, title: str, why: str) -> None:
        self.say(f"\n[{number}/5] {title}", indent=0)
        self.say(why)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        self.say(f"{'PASS' if ok else 'FAIL'}  {name}"
                 + (f" -- {detail}" if detail else ""), indent=2)
        return bool(ok)

    def rel(self, path: str | None, base: str | None = None) -> str:
        """``path`` relative to ``base`` (default: the working directory)
        when it is below it, for readable output; else absolute."""
        if path is None:
            return "(none)"
        path = os.path.abspath(path)
        base = os.path.abspath(base or self.workdir)
        if os.path.commonpath([path, base]) == base:
            return os.path.relpath(path, base)
        return path

    # -- the whole demo -------------------------------------------------------------

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def run(self) -> bool:
        """Run the five steps; True when every check passed."""
        os.makedirs(self.logs, exist_ok=True)
        self.say(f"artiq-journal demo: a {self.points}-point scan is killed "
                 "with SIGKILL mid-run, recovered,\nresumed from its last "
                 "checkpoint, and compared with an uninterrupted run.\n"
                 "Working directory (paths below are relative to it):\n  "
                 f"{self.rel(self.workdir, os.getcwd())}/", indent=0)
        if self.sabotage:
            self.say(f"SABOTAGE ({self.sabotage}): "
                     f"{SABOTAGES[self.sabotage]}; the checks must FAIL.",
                     indent=0)
        started = time.monotonic()
        try:
            self.step_kill()
            self.step_no_results()
            self.step_recover()
            self.step_resume()
            self.step_compare()
        except (StepFailed, JournalError, OSError) as exc:
            self.check("demo ran to its end", False,
                       f"{type(exc).__name__}: {exc}")
        failed = [c for c in self.checks if not c.ok]
        self.say(f"\n{len(self.checks) - len(failed)}/{len(self.checks)} "
                 f"checks passed in {time.monotonic() - started:.1f} s: "
                 f"{'PASS' if not failed else 'FAIL'}", indent=0)
        for c in failed:
            first_line = c.detail.split("\n", 1)[0]
            self.say(f"FAILED: {c.name}" + (f" -- {first_line}"
                                            if first_line else ""), indent=2)
        self.say(f"Files kept in {self.rel(self.workdir, os.getcwd())}/ "
                 "(worker logs in logs/).", indent=0)
        return self.passed

    # -- running the worker ---------------------------------------------------------

    def _start(self, results: str, name: str, env: dict | None = None,
               resume_source: Any = None) -> RunningExperiment:
        log = open(os.path.join(self.logs, f"{name}.log"), "wb")
        try:
            if resume_source is not None:
                arguments = ({"seed": 7} if self.sabotage == "wrong-seed"
                             else None)
                return start_resumed_experiment(
                    resume_source, results, arguments, stderr=log,
                    stdout=log)
            return start_experiment(SCAN_FILE, SCAN_CLASS,
                                    dict(self.arguments),
                                    results_dir=results, journal=True,
                                    fsync="group", env=env, stdout=log,
                                    stderr=log)
        finally:
            log.close()  # the child has its own copy

    def _wait(self, running: RunningExperiment) -> Any:
        """Wait for a run that should complete; kill it (never leave a
        worker behind) if it takes far too long or we are interrupted."""
        try:
            return running.wait(timeout=60 + 5 * self.points * self.delay)
        except BaseException as exc:
            running.process.kill()
            running.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise StepFailed(f"RID {running.rid} did not finish in "
                                 f"{exc.timeout:.0f} s") from None
            raise

    def _log_tail(self, name: str, lines: int = 12) -> str:
        try:
            with open(os.path.join(self.logs, f"{name}.log"), "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        tail = text.strip().splitlines()[-lines:]
        return "\n".join(["worker log (last lines):"] + tail) if tail else ""

    def _checkpoint_of(self, journal: str) -> int | None:
        """The ``i`` of the journal's last checkpoint (read-only, works
        while the writer is running: a torn tail is just the end)."""
        state = replay(journal).state
        if isinstance(state.checkpoint, dict):
            return state.checkpoint.get("i")
        return None

    # -- step 1 ---------------------------------------------------------------------

    def step_kill(self) -> None:
        self.step(1, "Run the scan with journaling, then kill it mid-run",
                  f"experiment: {SCAN_CLASS} in {SCAN_FILE}\n"
                  f"{self.points} points, {self.delay:g} s each, a checkpoint "
                  f"every {self.checkpoint_every} points.  It runs in a "
                  "worker subprocess,\nas ARTIQ runs experiments; every "
                  "dataset operation goes to a journal beside\nthe results "
                  "file ARTIQ would write.")
        running = self._start(self.results, "1-crashed")
        self.crashed_rid = running.rid
        target = max(1, int(self.points * KILL_FRACTION))
        self.say(f"(as: artiq-journal run {os.path.basename(SCAN_FILE)} "
                 "--results results \\\n       "
                 + " ".join(f"--arg {k}={v}" for k, v in
                            self.arguments.items()) + ")")
        self.say(f"started RID {running.rid} (worker pid "
                 f"{running.process.pid}); waiting until its journal holds\n"
                 f"a checkpoint at point >= {target} ...")
        started = time.monotonic()
        try:
            progress = self._watch(running, target, started)
            self._kill(running, progress, started)
        finally:
            # Never leave a worker behind (a failed step, Ctrl-C).
            if running.process.poll() is None:
                running.process.kill()
                running.wait()

    def _watch(self, running: RunningExperiment, target: int,
               started: float) -> int:
        """Poll the run's journal until its last checkpoint is at point
        ``target`` or later; return that point."""
        deadline = started + 30 + 5 * self.points * self.delay
        while True:
            if running.process.poll() is not None:
                running.wait()
                raise StepFailed(
                    f"the scan ended (exit status {running.process.returncode}"
                    f") before it could be interrupted\n"
                    + self._log_tail("1-crashed"))
            if time.monotonic() > deadline:
                raise StepFailed("no checkpoint appeared in time\n"
                                 + self._log_tail("1-crashed"))
            self.journal = self.journal or journal_of_run(self.results,
                                                          running.rid)
            if self.journal is not None:
                progress = self._checkpoint_of(self.journal)
                if progress is not None and progress >= target:
                    return progress
            time.sleep(0.02)

    def _kill(self, running: RunningExperiment, progress: int,
              started: float) -> None:
        # Let the scan measure a point or two past the checkpoint: those are
        # in the journal (recovery keeps them) but not yet checkpointed
        # (resume measures them again).
        time.sleep(1.5 * self.delay)
        os.kill(running.process.pid, signal.SIGKILL)
        result = running.wait()
        self.checkpoint_at_kill = self._checkpoint_of(self.journal)
        self.say(f"journal {self.rel(self.journal)}/\n"
                 f"reached checkpoint i={progress} after "
                 f"{time.monotonic() - started:.1f} s -> kill -9 "
                 f"{running.process.pid}")
        self.say(f"worker exit status {result.returncode} (killed by "
                 f"SIGKILL: no cleanup, no results file written)")
        self.check("the worker was killed mid-scan",
                   result.returncode == -signal.SIGKILL
                   and self.checkpoint_at_kill is not None
                   and self.checkpoint_at_kill < self.points,
                   f"last checkpoint i={self.checkpoint_at_kill} of "
                   f"{self.points}")

    # -- step 2 ---------------------------------------------------------------------

    def step_no_results(self) -> None:
        self.step(2, "What ARTIQ alone would have left",
                  "ARTIQ keeps datasets in the worker's memory and writes "
                  "the .h5 only when the run ends;\nafter a SIGKILL (or "
                  "segfault, OOM kill, power cut) there is nothing.")
        h5 = find_results_file(self.results, self.crashed_rid)
        expected = os.path.splitext(self.journal)[0] + ".h5"
        self.say(f"results file {self.rel(expected)}: "
                 f"{'EXISTS' if h5 else 'does not exist'}")
        self.check("no results file after the kill", h5 is None
                   and not os.path.exists(expected))
        files = sorted(os.listdir(self.journal))
        sizes = ", ".join(f"{n} {os.path.getsize(os.path.join(self.journal, n))}"
                          " B" for n in files)
        locked, clean = is_locked(self.journal), closed_cleanly(self.journal)
        self.say(f"orphaned journal {self.rel(self.journal)}/\n  {sizes}\n"
                 f"  writer alive: {'yes' if locked else 'no'}; closed "
                 f"cleanly: {'yes' if clean else 'no'}")
        self.check("an orphaned journal is left", not locked and not clean)

    # -- step 3 ---------------------------------------------------------------------

    def step_recover(self) -> None:
        self.step(3, "Recover the results file with artiq-recover",
                  "artiq-recover finds orphaned journals, replays them and "
                  "publishes the .h5\nARTIQ would have written (atomically, "
                  "in ARTIQ's layout), plus an artiq_journal\ngroup saying "
                  "how it was made.")
        self.say(f"$ artiq-recover {self.rel(self.results)}/")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        proc = subprocess.run(
            [sys.executable, "-m", "artiq_journal.cli.recover",
             self.results], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, cwd=self.workdir, timeout=120)
        self.say(proc.stdout.decode("utf-8", "replace").rstrip(), indent=6)
        h5 = find_results_file(self.results, self.crashed_rid)
        self.check("artiq-recover succeeded", proc.returncode == 0
                   and h5 is not None, f"exit status {proc.returncode}")
        if h5 is None:
            raise StepFailed("no recovered results file")
        self.say(f"recovered {self.rel(h5)}:")
        for line in compare.describe_file(h5):
            self.say(line, indent=6)
        data = compare.read_group(h5)
        measured = _points(data)
        model = self.expected_counts(len(measured["scan.index"]))
        self.recovered_points = len(measured["scan.index"])
        self.say(f"the recovered file holds {self.recovered_points} points; "
                 f"the last checkpoint was at i={self.checkpoint_at_kill}:\n"
                 "recovery keeps every operation the journal acknowledged, "
                 "also those after\nthe last checkpoint.")
        self.check("recovered: every point measured before the kill, in "
                   "order, none twice",
                   _consistent(measured)
                   and len(measured["scan.index"]) >= self.checkpoint_at_kill
                   and np.array_equal(measured["scan.counts"], model),
                   f"scan.index = 0..{len(measured['scan.index']) - 1}")
        with h5py.File(h5, "r") as f:
            group = f.get("artiq_journal")
            marked = group is not None and bool(group.attrs.get("recovered"))
            lost = group is not None and bool(group.attrs.get("data_lost"))
        self.check("recovered file is marked as recovered, no data lost",
                   marked and not lost)

    def expected_counts(self, n: int) -> np.ndarray:
        """The counts of the first ``n`` points, from the scan's model."""
        detunings = planned_detunings(self.points, DEFAULT_SPAN)
        return np.array([simulated_counts(i, float(detunings[i]),
                                          DEFAULT_SEED)
                         for i in range(n)], dtype=np.int64)

    # -- step 4 ---------------------------------------------------------------------

    def step_resume(self) -> None:
        self.step(4, "Resume the scan from its last checkpoint",
                  "A NEW run of the same experiment and arguments restores "
                  "the datasets of the last\ncheckpoint (self.resume_state()) "
                  "and continues the scan from there.")
        self.say(f"(as: artiq-journal resume {self.crashed_rid} --results "
                 f"{self.rel(self.results)})")
        source = find_resume_source(self.crashed_rid, self.results)
        i = source.checkpoint.get("i") if isinstance(source.checkpoint,
                                                     dict) else None
        self.say(f"RID {source.rid}'s last checkpoint: seq {source.seq}, "
                 f"state {source.checkpoint!r} -> points {i}.."
                 f"{self.points - 1} remain")
        redo = (self.recovered_points or 0) - (i or 0)
        if redo > 0:
            self.say(f"({redo} point{'s' if redo > 1 else ''} measured after "
                     f"that checkpoint {'are' if redo > 1 else 'is'} "
                     "discarded and measured again.)")
        started = time.monotonic()
        if self.sabotage == "wrong-seed":
            self.say("SABOTAGE: resuming with --arg seed=7")
        running = self._start(self.results, "2-resumed",
                              resume_source=source)
        result = self._wait(running)
        self.resumed_h5 = result.h5_path
        self.say(f"resumed as RID {result.rid}: exit status "
                 f"{result.returncode} after {time.monotonic() - started:.1f}"
                 f" s\nresults file {self.rel(result.h5_path)}")
        if not self.check("the resumed run completed",
                          result.ok and result.h5_path is not None):
            raise StepFailed("the resumed run failed\n"
                             + self._log_tail("2-resumed"))
        data = compare.read_group(result.h5_path)
        raw = data.get(RESUMED_FROM_DATASET)
        info = _json(raw)
        if isinstance(info, dict) and "journal" in info:
            info_shown = dict(info, journal=self.rel(info["journal"]))
        else:
            info_shown = info
        self.say(f"datasets/{RESUMED_FROM_DATASET} =\n  {info_shown}")
        expected_seq = last_checkpoint_seq(source.journal)
        self.check("the resumed run records where it resumed from",
                   isinstance(info, dict)
                   and info.get("rid") == self.crashed_rid
                   and info.get("seq") == expected_seq,
                   f"RID {self.crashed_rid}, seq {expected_seq}")
        if self.sabotage == "drop-point":
            _drop_point(result.h5_path, self.points // 2)
            self.say(f"SABOTAGE: deleted point {self.points // 2} from "
                     f"{', '.join(POINT_DATASETS)} in the resumed file")

    # -- step 5 ---------------------------------------------------------------------

    def step_compare(self) -> None:
        self.step(5, "Compare with the same scan run without interruption",
                  "The measurement is deterministic, so the resumed scan "
                  "must end with exactly the data\nof an uninterrupted run: "
                  "no point lost, none measured twice.")
        started = time.monotonic()
        running = self._start(self.reference_results, "3-reference")
        result = self._wait(running)
        self.say(f"(as: artiq-journal run {os.path.basename(SCAN_FILE)} ... "
                 f"--results {self.rel(self.reference_results)})")
        self.say(f"reference RID {result.rid}: exit status "
                 f"{result.returncode} after "
                 f"{time.monotonic() - started:.1f} s\nresults file "
                 f"{self.rel(result.h5_path)}")
        if not self.check("the uninterrupted run completed",
                          result.ok and result.h5_path is not None):
            raise StepFailed("the reference run failed\n"
                             + self._log_tail("3-reference"))
        compared, differences = compare.compare_results(
            result.h5_path, self.resumed_h5,
            allowed_extra=(RESUMED_FROM_DATASET,))
        self.say(f"compared {compared} datasets (datasets/ and archive/: "
                 "values, dtypes, shapes, units);\n"
                 f"only in the resumed run (allowed): {RESUMED_FROM_DATASET}")
        for line in differences[:10]:
            self.say(f"  differs: {line}")
        self.check("resumed data == uninterrupted data", not differences,
                   f"{len(differences)} difference(s)" if differences
                   else f"{compared} datasets equal")
        measured = _points(compare.read_group(self.resumed_h5))
        self.check("every point measured exactly once",
                   _consistent(measured)
                   and len(measured["scan.index"]) == self.points,
                   f"scan.index has {len(measured['scan.index'])} entries, "
                   f"{len(set(measured['scan.index'].tolist()))} distinct, "
                   f"of {self.points}")


# -- helpers -------------------------------------------------------------------------

def _points(data: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(data.get(name, [])) for name in POINT_DATASETS}


def _consistent(measured: dict[str, np.ndarray]) -> bool:
    """Point datasets of equal length, and ``scan.index`` exactly 0..n-1."""
    index = measured["scan.index"]
    return (len({len(v) for v in measured.values()}) == 1
            and np.array_equal(index, np.arange(len(index))))


def _json(raw: Any) -> Any:
    import json
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def _drop_point(h5_path: str, index: int) -> None:
    """The ``drop-point`` sabotage: remove element ``index`` of each point
    dataset of a results file, keeping attributes."""
    with h5py.File(h5_path, "r+") as f:
        group = f["datasets"]
        for name in POINT_DATASETS:
            attrs = dict(group[name].attrs)
            value = np.delete(group[name][()], index)
            del group[name]
            group[name] = value
            group[name].attrs.update(attrs)
