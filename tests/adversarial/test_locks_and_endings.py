"""Issue 12 items 4 and 6: a lock that cannot be read, or is held by a
process that is not the journal's writer, is reported -- never taken for
dead, never skipped without a word; errors at the very end are reported as
what they are."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

import h5py
import pytest

from adversarial_support import SRC, as_root, h5_beside, journal_dir, run_cli, \
    sample_journal
from artiq_journal.recovery import recover


@pytest.fixture
def shared_tree():
    """A results tree any user may read (tmp_path's parents are 0700)."""
    top = tempfile.mkdtemp(prefix="artiq-journal-shared-")
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _readable_by_all(top: str) -> None:
    for directory, _dirs, files in os.walk(top):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)


def _recover_as_nobody(root: str) -> dict:
    """``recover(root, dry_run=True)`` in a forked child running as uid
    65534, its report as a dict (the code is loaded before the fork: the
    interpreter's own files may not be readable by that user)."""
    import fcntl  # noqa: F401 - loaded before dropping privileges
    import pwd  # noqa: F401
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            os.setgid(65534)
            os.setuid(65534)
            data = recover(root, dry_run=True).to_json().encode()
            os.write(wfd, data)
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while True:
        chunk = os.read(rfd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rfd)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


@as_root
def test_a_lock_the_recovering_user_cannot_read_is_not_taken_for_dead(
        shared_tree):
    root = os.path.join(shared_tree, "results")
    j = sample_journal(root)
    _readable_by_all(shared_tree)
    os.chmod(os.path.join(j.path, "lock"), 0o000)
    report = _recover_as_nobody(root)
    (run,) = report["runs"]
    assert run["outcome"] == "skipped_unknown", run
    assert report["exit_code"] == 1
    text = " ".join(p["reason"] for p in run["problems"])
    assert "lock" in text and "owned by" in text


@as_root
def test_a_lock_readable_but_not_writable_is_probed_read_only(shared_tree):
    root = os.path.join(shared_tree, "results")
    sample_journal(root)
    _readable_by_all(shared_tree)          # lock 0644: nobody may only read
    (run,) = _recover_as_nobody(root)["runs"]
    assert run["outcome"] == "dry_run", run     # not locked: recoverable


HOLD_FLOCK = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_held_by_another_process_names_it_and_exits_1(tmp_path):
    j = sample_journal(tmp_path)            # run info: pid 1234, host lab1
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FLOCK, os.path.join(j.path, "lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        report = recover(tmp_path)
        (run,) = report.runs
        assert run.outcome in ("skipped_live", "skipped_locked")
        text = " ".join(p.reason for p in run.problems)
        assert f"pid {holder.pid}" in text
        assert not os.path.exists(h5_beside(j.path))
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_lock_held_by_a_stranger_on_this_host_is_skipped_locked(tmp_path):
    import socket
    from adversarial_support import Journal, run_info
    path = journal_dir(tmp_path)
    j = Journal(path, info=run_info(path, 42, "Exp",
                                    host=socket.gethostname(), pid=1))
    j.stage("run", 1.0)
    j.op("set", "x", 1, {}, False, False, True)
    j.crash()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FLOCK, os.path.join(path, "lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        report = recover(tmp_path)
        (run,) = report.runs
        assert run.outcome == "skipped_locked"
        assert report.exit_code == 1
        assert any("not the run's writer (pid 1)" in p.reason
                   for p in run.problems)
    finally:
        holder.stdin.close()
        holder.wait(10)


# -- 6. errors at the very end -------------------------------------------------------

def test_disk_full_on_the_done_marker_is_not_a_failed_recovery(
        tmp_path, monkeypatch):
    import artiq_journal.recovery.publish as publish
    sample_journal(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(publish, "write_marker", full)
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered" and report.exit_code == 0
    with h5py.File(run.output, "r") as f:
        assert "datasets/counts" in f
    assert any("marker" in p.reason and p.severity == "warning"
               for p in run.problems)


def test_two_recoveries_into_one_output_do_not_report_a_failure(
        tmp_path, monkeypatch):
    # Deterministic form of the race: a second recovery publishes the
    # same file while the first is writing its own.
    import importlib
    recover_module = importlib.import_module("artiq_journal.recovery.recover")
    sample_journal(tmp_path / "tree")
    out = tmp_path / "out"
    real = recover_module.write_results_file
    raced = []

    def racing(*args, **kwargs):
        if not raced:
            raced.append(None)
            raced[0] = recover(tmp_path / "tree", output=out)
        return real(*args, **kwargs)
    monkeypatch.setattr(recover_module, "write_results_file", racing)
    report = recover(tmp_path / "tree", output=out)
    (first,) = raced[0].runs
    (second,) = report.runs
    assert first.outcome == "recovered"
    assert second.outcome == "already_recovered", second.problems
    assert report.exit_code == 0


LIMITED = r"""
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]),) * 2)
from artiq_journal.cli.recover import main
sys.exit(main([sys.argv[2]]))
"""


def test_hdf5_write_error_exits_cleanly_and_leaves_the_journal(tmp_path):
    j = sample_journal(tmp_path / "tree", crash=False)
    import numpy as np
    j.op("set", "big", np.zeros(400_000), {}, False, False, True)
    j.crash()
    before = {n: open(os.path.join(j.path, n), "rb").read()
              for n in os.listdir(j.path) if n != "lock"}
    proc = subprocess.run([sys.executable, "-c", LIMITED, SRC,
                           str(tmp_path / "tree"), str(1 << 20)],
                          capture_output=True, text=True, timeout=120)
    # A clean exit with a report: no SIGBUS/SIGSEGV, no traceback.
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "failed" in proc.stdout
    after = {n: open(os.path.join(j.path, n), "rb").read()
             for n in os.listdir(j.path) if n != "lock"}
    assert after == before
    hour = os.path.dirname(j.path)
    assert not [n for n in os.listdir(hour) if n.endswith(".recover-tmp")]
    assert not os.path.exists(h5_beside(j.path))
