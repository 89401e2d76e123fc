"""ARTIQ's OWN worker, dataset and scheduler tests, run against each
vendored ARTIQ release (release-7, release-8, master) twice -- with
``ARTIQ_JOURNAL=1`` and without -- must give identical pass/fail results.

Each run is a subprocess ``python -m pytest`` over
``artiq/test/{test_worker,test_datasets,test_scheduler}.py`` of that
release's unmodified tree, with ``PYTHONPATH=<site>:<our src>:<tree>``
where ``<site>/sitecustomize.py`` runs the line of our ``.pth`` (what an
installed artiq-journal does at interpreter start-up: the workers ARTIQ's
tests spawn load the hook exactly as under a real master).  The two runs
differ only in ``ARTIQ_JOURNAL``.  Each ARTIQ test has a timeout (a hang
fails the test instead of stalling CI: ``test_scheduler``'s
test_flush/test_pause/test_steps once hung under the hook when a journal
name collision failed ``build()``), and the whole run has one too.

The two runs of a release go concurrently (they mostly wait).  ``pytest
-s`` prints each release's counts and timings.  Skipped cleanly
when a release's tarball or its dependencies are absent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

import artiq_trees

SUITES = ("test_worker.py", "test_datasets.py", "test_scheduler.py")
#: Seconds per ARTIQ test, and for one whole run of the three files.
TEST_TIMEOUT = 60
RUN_TIMEOUT = 240

_PLUGIN = '''
"""Per-test timeout for ARTIQ's suites (loaded with -p)."""
import os
import signal

import pytest

TIMEOUT = float(os.environ["ARTIQ_SUITE_TEST_TIMEOUT"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    def on_alarm(signum, frame):
        raise TimeoutError(f"{item.nodeid}: still running after "
                           f"{TIMEOUT:g} s (hung?)")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
'''


def _outcomes(junit: str) -> dict[str, str]:
    """test id -> passed | failed | error | skipped, from a JUnit XML."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
        result[name] = outcome
    return result


class _SuiteRun:
    """One run of ARTIQ's suites in its own directory, session and cwd
    (ARTIQ's tests write results/ into the cwd; a hung run is killed with
    all its workers through the group of its pid)."""

    def __init__(self, release: str, tree: str, workdir: str,
                 journal: bool) -> None:
        self.release, self.journal = release, journal
        os.makedirs(workdir)
        site = artiq_trees.hook_site(os.path.join(workdir, "site"))
        with open(os.path.join(site, "journal_suite_timeout.py"), "w") as f:
            f.write(_PLUGIN)
        extra = {"ARTIQ_SUITE_TEST_TIMEOUT": str(TEST_TIMEOUT)}
        if journal:
            extra["ARTIQ_JOURNAL"] = "1"
        env = artiq_trees.child_env(release, site, **extra)
        self.junit = os.path.join(workdir, "junit.xml")
        files = [os.path.join(tree, "artiq", "test", name)
                 for name in SUITES]
        self.start = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-p", "journal_suite_timeout", "--rootdir", workdir,
             f"--junitxml={self.junit}", *files],
            cwd=workdir, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def finish(self, deadline: float) -> tuple[dict[str, str], float, str]:
        """(outcomes, seconds, output tail); fails the test at
        ``deadline`` (monotonic) with the run killed."""
        try:
            output, _ = self.process.communicate(
                timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            output, _ = self.process.communicate()
            pytest.fail(f"ARTIQ {self.release} suites (journal="
                        f"{self.journal}) still running after "
                        f"{RUN_TIMEOUT} s:\n"
                        f"{output.decode(errors='replace')[-3000:]}")
        finally:
            self.kill()  # leftover workers
        elapsed = time.monotonic() - self.start
        tail = output.decode(errors="replace")[-3000:]
        assert os.path.exists(self.junit), tail
        return _outcomes(self.junit), elapsed, tail


@pytest.mark.parametrize("release", artiq_trees.RELEASES,
                         ids=[f"artiq-{r}" for r in artiq_trees.RELEASES])
def test_artiq_worker_suites_pass_identically_with_the_journal(
        release, tmp_path):
    tree = artiq_trees.require(release)
    # Both runs at once: ARTIQ's suites mostly wait (scheduler timings,
    # worker start-up), so this halves the wall time on 2 cores.
    runs = [_SuiteRun(release, tree, str(tmp_path / "plain"), False),
            _SuiteRun(release, tree, str(tmp_path / "journal"), True)]
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        (plain, plain_s, plain_tail), (hooked, hooked_s, hooked_tail) = \
            [run.finish(deadline) for run in runs]
    finally:
        for run in runs:
            run.kill()
    counts = {o: sum(1 for v in plain.values() if v == o)
              for o in ("passed", "failed", "error", "skipped")}
    print(f"\nARTIQ {release}: {len(plain)} tests of {', '.join(SUITES)}; "
          f"without the journal {counts} in {plain_s:.1f} s; with "
          f"ARTIQ_JOURNAL=1 identical: {plain == hooked}, in "
          f"{hooked_s:.1f} s")
    # The suites ran at all, and the journal was really on in the second
    # run: the workers the tests spawn journaled (runs that failed keep
    # their journal).
    assert len(plain) >= 10 and counts["passed"] >= 10, plain_tail
    differences = {name: (plain.get(name), hooked.get(name))
                   for name in set(plain) | set(hooked)
                   if plain.get(name) != hooked.get(name)}
    assert not differences, (
        f"outcomes differ (without, with the journal): {differences}\n"
        f"--- with the journal:\n{hooked_tail}")
    journals = [d for d, _, _ in os.walk(str(tmp_path / "journal"))
                if d.endswith(".journal")]
    assert journals, "no journal was written under ARTIQ_JOURNAL=1"
    assert not [d for d, _, _ in os.walk(str(tmp_path / "plain"))
                if d.endswith(".journal")]
