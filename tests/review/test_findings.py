"""Findings of the independent review of the recovery changes (F1-F4).

Each test reproduced its finding first (as a strict xfail, failing on the
code it was found in) and passes since the fix: they guard against the
holes coming back."""

from __future__ import annotations

import importlib
import os

from test_recovery import Journal, journal_dir, sample_journal

from artiq_journal.recovery import recover

recover_mod = importlib.import_module("artiq_journal.recovery.recover")


def test_parent_directory_swapped_for_symlink_after_replay_does_not_redirect_the_write(
        tmp_path, monkeypatch):
    """F1: the results directory is reopened by *path* after the journal
    was read; only its last component is opened O_NOFOLLOW.  A user who can
    write the results tree swaps an intermediate directory for a symlink
    after replay, and a root recovery creates (and chowns to that user)
    <rid>-<Class>.h5 in any directory whose last component matches."""
    root = tmp_path / "results"
    # The attacker's journal lives at results/evil/etc/<rid>-<Class>.journal
    jpath = os.path.join(str(root), "evil", "etc", "000000042-Exp.journal")
    j = Journal(jpath, 42)
    j.op("set", "x", 1, {}, False, False, True)
    j.crash()
    # A directory outside the results tree the attacker cannot write to
    # (stands for /etc, or another user's private results directory).
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)

    real_replay = recover_mod.replay

    def replay_then_swap(path):
        result = real_replay(path)
        # The attacker wins the race between reading and writing.
        os.rename(str(root / "evil"), str(root / "evil.old"))
        os.symlink(str(outside), str(root / "evil"))
        return result

    monkeypatch.setattr(recover_mod, "replay", replay_then_swap)
    recover(str(root))
    assert os.listdir(str(outside / "etc")) == [], \
        "root recovery wrote outside the results tree"


def test_a_long_nested_dataset_name_does_not_stall_recovery(tmp_path):
    """F2: plan_names() builds every prefix of a '/'-name (nests() and the
    ``groups`` set): O(n^2) time and memory in the number of components.
    One 32 KB name "a/a/.../a" in a crafted journal takes ~10 s, 64 KB
    ~40 s; 1 MB takes hours and gigabytes, stalling the whole tree."""
    root = tmp_path / "results"
    j = Journal(journal_dir(root, 42), 42)
    j.op("set", "/".join(["a"] * 16000), 1, {}, False, False, True)
    j.crash()
    import h5py
    import json
    report = recover(str(root))
    assert report.runs[0].outcome in ("recovered", "recovered_partial")
    # Fixed by bounding what is laid out as groups: such a name is escaped
    # (linear work) instead of nested.
    with h5py.File(report.runs[0].output, "r") as f:
        escaped = [json.loads(e) for e in f["artiq_journal/escaped_names"]]
    assert [e[2] for e in escaped] == ["/".join(["a"] * 16000)]


def test_scan_ending_on_a_whole_point_keeps_every_value(tmp_path):
    """F3: points.py takes "lists differ by one and the longer is the
    last appended" as a cut point.  A scan whose lists legitimately differ
    by one (here 'y' starts with a reference value) and whose journal ends
    on a WHOLE point has its last real 'y' value removed from the dataset
    (moved to artiq_journal/partial_point) although nothing was cut."""
    import h5py
    root = tmp_path / "results"
    j = Journal(journal_dir(root, 42), 42)
    j.op("set", "x", [], {}, True, False, True)
    j.op("set", "y", [0.0], {}, True, False, True)   # reference value
    for i in range(5):
        j.op("append_to", "x", i)
        j.op("append_to", "y", float(i) + 0.5)
    j.crash()                                        # after a whole point
    report = recover(str(root))
    with h5py.File(report.runs[0].output, "r") as f:
        y = list(f["datasets/y"][()])
    assert y == [0.0, 0.5, 1.5, 2.5, 3.5, 4.5], y


def test_planted_complete_looking_file_does_not_mark_an_orphan_done(tmp_path):
    """F4: step 5 (_settled) takes any regular file with ARTIQ's layout and
    the right rid as ARTIQ's own complete file, even when the journal never
    reached results_written (no close, stage 'run').  Anyone who may create
    a file in the run's directory (a sticky shared results tree) plants an
    empty 'complete' <rid>-<Class>.h5 beside a crashed run: recovery reports
    already_complete, exit 0, writes the done marker (which gc trusts), and
    every journaled dataset is lost."""
    import h5py
    from artiq_journal.state import DatasetState
    from test_recovery import artiq_write_results
    h5_beside = lambda p: p[:-len(".journal")] + ".h5"  # noqa: E731
    root = tmp_path / "results"
    j = sample_journal(root, 42)                 # crashed during run()
    artiq_write_results(h5_beside(j.path), DatasetState(warn=False), 42)
    report = recover(str(root))
    run = report.runs[0]
    with h5py.File(h5_beside(j.path), "r") as f:
        have = set(f["datasets"]) | set(f["archive"])
    assert run.outcome != "already_complete" or "counts" in have, \
        (run.outcome, report.exit_code, have)
