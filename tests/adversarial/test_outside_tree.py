"""Issue 12, "Nothing written outside the tree": recovery is often run as
root over directories other users can write; nothing planted there may
make it write elsewhere, and what it makes belongs to the run's owner."""

from __future__ import annotations

import json
import os
import stat

import h5py
import pytest

import importlib

from adversarial_support import (artiq_write_results, as_root, h5_beside, journal_dir,
                      sample_journal)
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.recovery import recover
from artiq_journal.recovery.publish import MARKER_NAME


@pytest.fixture
def victim(tmp_path):
    """A file outside the results tree that must never change."""
    path = tmp_path / "outside" / "victim.h5"
    path.parent.mkdir()
    path.write_bytes(b"precious")
    return path


def _tree(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    return root


def test_results_file_is_only_ever_written_through_an_exclusive_fd(
        tmp_path, monkeypatch):
    # Deterministic form of the temp-file race: h5py must never open a path
    # in the tree by name (a symlink swapped in would be followed), and
    # every file created there must be O_EXCL|O_NOFOLLOW.
    root = _tree(tmp_path)
    sample_journal(root)
    opened_by_name, created = [], []
    real_file, real_open = h5py.File, os.open

    def spy_file(name, mode="r", *args, **kwargs):
        if isinstance(name, (str, os.PathLike)) and mode != "r":
            opened_by_name.append(os.fspath(name))
        return real_file(name, mode, *args, **kwargs)

    def spy_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append((os.fspath(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy_file)
    monkeypatch.setattr(os, "open", spy_open)
    (run,) = recover(root).runs
    assert run.outcome == "recovered"
    assert opened_by_name == []
    assert created, "no file created?"
    for path, flags in created:
        if os.path.basename(path) == "lock":
            assert flags & os.O_NOFOLLOW, path
            continue
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW, path


def test_symlink_planted_at_the_temp_name_is_never_written_through(
        tmp_path, monkeypatch, victim):
    root = _tree(tmp_path)
    j = sample_journal(root)
    import secrets
    names = iter(["feedfacecafe"])
    real = secrets.token_hex
    monkeypatch.setattr(secrets, "token_hex",
                        lambda n=None: next(names, None) or real(n))
    directory = os.path.dirname(j.path)
    os.symlink(str(victim), os.path.join(
        directory, ".000000042-Exp.h5.feedfacecafe.recover-tmp"))
    (run,) = recover(root).runs
    assert run.outcome == "recovered"
    assert victim.read_bytes() == b"precious"
    with h5py.File(run.output, "r") as f:
        assert "datasets/counts" in f


def test_planted_checkpoint_new_symlink_is_not_written_through(tmp_path,
                                                               victim):
    path = str(tmp_path / "run.journal")
    writer = JournalWriter(path, fsync="never")
    writer.append(3, ["k", 1, {}, False, False, True])
    os.symlink(str(victim), os.path.join(path, "checkpoint.new"))
    writer.write_snapshot({"x": 1})
    writer.close()
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(os.path.join(path, "checkpoint"))


def test_symlink_to_another_complete_file_at_the_h5_name_is_moved_aside(
        tmp_path, victim):
    root = _tree(tmp_path)
    j = sample_journal(root)
    # A complete ARTIQ file of the same RID, elsewhere, linked into place:
    # it is not this run's file, and the journal's data must land.
    artiq_write_results(str(victim), j.model, 42)
    before = victim.read_bytes()
    os.symlink(str(victim), h5_beside(j.path))
    (run,) = recover(root).runs
    assert run.outcome == "recovered", run.problems
    assert not os.path.islink(h5_beside(j.path))
    assert os.path.islink(run.moved_aside)
    assert victim.read_bytes() == before
    with h5py.File(run.output, "r") as f:
        assert f["artiq_journal"].attrs["recovered"]


def test_dangling_symlink_at_the_h5_name_is_moved_aside(tmp_path):
    root = _tree(tmp_path)
    j = sample_journal(root)
    os.symlink(str(tmp_path / "nowhere" / "x.h5"), h5_beside(j.path))
    report = recover(root)
    (run,) = report.runs
    assert run.outcome == "recovered" and report.exit_code == 0
    assert stat.S_ISREG(os.lstat(run.output).st_mode)
    assert not (tmp_path / "nowhere").exists()


def test_marker_pointing_outside_the_directory_is_not_trusted(tmp_path):
    root = _tree(tmp_path)
    j = sample_journal(root)
    outside = tmp_path / "elsewhere.h5"
    artiq_write_results(str(outside), j.model, 42)
    from artiq_journal.recovery.discover import fingerprint
    with open(os.path.join(j.path, MARKER_NAME), "w") as f:
        json.dump({"format": 1, "outcome": "already_complete",
                   "results_file": os.path.relpath(
                       str(outside), os.path.dirname(j.path)),
                   "fingerprint": fingerprint(j.path)}, f)
    (run,) = recover(root).runs
    assert run.outcome == "recovered"
    assert os.path.exists(h5_beside(j.path))


def test_marker_that_is_a_symlink_is_replaced_not_followed(tmp_path,
                                                           victim):
    root = _tree(tmp_path)
    j = sample_journal(root)
    os.symlink(str(victim), os.path.join(j.path, MARKER_NAME))
    (run,) = recover(root).runs
    assert run.outcome == "recovered"
    assert victim.read_bytes() == b"precious"
    marker = os.path.join(j.path, MARKER_NAME)
    assert stat.S_ISREG(os.lstat(marker).st_mode)


def test_files_get_their_mode_from_the_umask(tmp_path):
    root = _tree(tmp_path)
    j = sample_journal(root)
    old = os.umask(0o022)
    try:
        (run,) = recover(root).runs
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(run.output).st_mode) == 0o644
    marker = os.path.join(j.path, MARKER_NAME)
    assert stat.S_IMODE(os.stat(marker).st_mode) == 0o644


@as_root
def test_root_recovery_of_another_users_tree_leaves_files_theirs(tmp_path):
    root = _tree(tmp_path)
    j = sample_journal(root)
    uid, gid = 4242, 4343
    for directory, dirs, files in os.walk(str(root)):
        os.chown(directory, uid, gid)
        for name in files:
            os.chown(os.path.join(directory, name), uid, gid)
    before = {os.path.join(d, n) for d, _, fs in os.walk(str(tmp_path))
              for n in fs + _}
    (run,) = recover(root).runs
    assert run.outcome == "recovered"
    for path in (run.output, os.path.join(j.path, MARKER_NAME)):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (uid, gid), path
    after = {os.path.join(d, n) for d, _, fs in os.walk(str(tmp_path))
             for n in fs + _}
    assert all(str(root) in p for p in after - before)


def test_recover_module_never_reopens_by_name():
    # Guard against a regression to mkstemp + close + reopen.
    module = importlib.import_module("artiq_journal.recovery.recover")
    source = open(module.__file__).read()
    assert "mkstemp" not in source
