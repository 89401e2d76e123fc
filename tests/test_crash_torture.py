"""Crash torture with real processes: every acknowledged operation survives
SIGKILL at any moment, in order, without duplicates and without anything
that was never performed -- in the journal, in ``artiq-recover``'s results
file and in what ``resume`` restores; and the journal can be appended to
(or resumed from) after every kill.

How it works is in ``tests/torture.py``.  Budgets:

* default (CI): >= 200 kill points in total, well under a minute;
* ``ARTIQ_JOURNAL_TORTURE=1``: >= 5,000 kill points (a number > 1 sets the
  kill points per test instead);
* ``ARTIQ_JOURNAL_TORTURE_SEED=<int>`` changes the master seed (printed).

Each test prints ``kill points: N, acknowledged ops checked: M,
violations: 0`` and asserts that there was no violation.  "Acknowledged ops
checked" counts each acknowledged operation once, in the check right after
the kill that followed its acknowledgement (later checks re-verify it as
part of the whole state).
"""

from __future__ import annotations

import random

import pytest

import torture

FSYNC = torture.FSYNC_POLICIES
TOTAL = torture.Tally("all crash torture tests", 0)


@pytest.fixture(scope="module", autouse=True)
def _grand_total():
    yield
    if TOTAL.kills:
        print()
        print("[crash torture, all tests]")
        print(TOTAL.line())


def _finish(tally: torture.Tally, minimum_kills: int) -> None:
    torture.report(tally)
    TOTAL.kills += tally.kills
    TOTAL.acked += tally.acked
    TOTAL.violations += tally.violations
    assert not tally.violations, "\n".join(tally.violations[:5])
    assert tally.kills >= minimum_kills, tally.summary()
    assert tally.acked > 0


def test_sigkill_anywhere_keeps_every_acknowledged_op(tmp_path):
    """The JournalWriter directly, with tiny segments (rotation every few
    records), snapshots after checkpoints (snapshot rotation and deletion of
    covered segments), large records (writev), every fsync policy: killed
    after a random number of acks, after a random delay, right after a
    snapshot began, before a random structural file-system call, or inside a
    record write.  After each kill the same journal is reopened and appended
    to by the next process."""
    budget = torture.kill_budget(ci=150, opt_in=2600)
    tally = torture.Tally("direct JournalWriter", torture.master_seed(
        20240611))
    harness = torture.Torture(tally, str(tmp_path))
    seeds = random.Random(tally.master_seed)
    while tally.kills < budget and len(tally.violations) < 10:
        harness.direct_chain(seeds.randrange(1 << 30), generations=20,
                             kill_budget=budget)
    _finish(tally, budget)
    # The kill points reached what makes crashes hard.
    assert tally.reopened > 0 and tally.torn_reopened > 0, tally.summary()
    for mode in ("acks", "delay", "begin", "fsop", "torn"):
        assert tally.plans[mode], f"no '{mode}' kill in {tally.plans}"


@pytest.mark.parametrize("fsync", FSYNC)
def test_sigkill_at_every_step_of_segment_and_snapshot_rotation(tmp_path,
                                                                fsync):
    """Kill before each structural file-system call of a generation in turn
    (create/rotate segment, write its header, fdatasync, directory fsync,
    write/fsync/close checkpoint.new, the two renames, unlinking covered
    segments, truncating a torn tail on reopen), then reopen and continue
    with a random kill: all acknowledged ops survive each one."""
    tally = torture.Tally(f"every structural step, fsync={fsync}",
                          torture.master_seed(7))
    harness = torture.Torture(tally, str(tmp_path))
    # How many structural calls one generation makes (same seed, same ops).
    settings = dict(fsync=fsync, segment_bytes=SWEEP_SEGMENT,
                    max_ops=SWEEP_OPS, cp_rate=0.2)
    probe = torture.Torture(torture.Tally("probe", 0), str(tmp_path))
    probe.direct_chain(tally.master_seed, generations=1, kill_budget=1,
                       first_plan=torture.KillPlan("acks", n=10 ** 6),
                       **settings)
    assert not probe.tally.violations, probe.tally.violations
    steps = probe.structural[fsync]
    assert steps > 10, probe.structural
    for k in range(1, steps + 1):
        harness.direct_chain(tally.master_seed, generations=2,
                             kill_budget=10 ** 9, plan_seed=k,
                             first_plan=torture.KillPlan("fsop", n=k),
                             **settings)
    _finish(tally, steps)
    classes = ["open/reopen", "segment create/rotate", "snapshot rotation",
               "covered-segment deletion"]
    if fsync != "always":   # (with "always" the journal is already synced)
        classes.append("snapshot: journal sync")
    for cls in classes:
        assert tally.points[cls], f"no kill during {cls}: {tally.points}"


#: The sweep's generation: a few segment rotations, several snapshots (so
#: covered segments get deleted); every structural call of it is killed.
SWEEP_OPS = 400 if torture.opt_in() else 50
SWEEP_SEGMENT = 512


def test_sigkill_during_experiment_keeps_every_acknowledged_op_and_resumes(
        tmp_path):
    """An experiment-like scan through ``worker_hooks.attach`` on the
    runner's DatasetManager (set / append_to / mutate on lists and numpy
    arrays, broadcast and archived, get(archive=True), checkpoint every few
    points with amortised snapshots), killed at random; each next run
    resumes from the last checkpoint with ``load_checkpoint`` and
    ``restore_datasets`` and is killed in turn -- also while restoring."""
    budget = torture.kill_budget(ci=150, opt_in=2600)
    tally = torture.Tally("experiment via attach + resume",
                          torture.master_seed(424242))
    harness = torture.Torture(tally, str(tmp_path))
    seeds = random.Random(tally.master_seed)
    while tally.kills < budget and len(tally.violations) < 10:
        harness.experiment_chain(seeds.randrange(1 << 30), generations=12,
                                 kill_budget=budget)
    _finish(tally, budget)
    assert tally.resumed > 0, tally.summary()


@pytest.mark.parametrize("fault", ["buffer", "duplicate"])
def test_the_checks_catch_a_writer_that_loses_or_duplicates_acked_ops(
        tmp_path, fault):
    """The harness has teeth: a writer that acknowledges records it still
    holds in user space ("buffer"), or writes some twice ("duplicate"),
    is reported as violating -- by the same checks as above."""
    tally = torture.Tally(f"self-test: writer bug '{fault}'", 99)
    harness = torture.Torture(tally, str(tmp_path), keep_failures=0)
    seeds = random.Random(99)
    for _ in range(6):
        harness.direct_chain(seeds.randrange(1 << 30), generations=3,
                             kill_budget=10 ** 9, fault=fault)
    print()
    print(tally.summary())
    print(f"self-test: {len(tally.violations)} of {tally.kills} kill points "
          f"flagged, e.g. {tally.violations[0][:300] if tally.violations else None}")
    assert len(tally.violations) >= 3, tally.violations


def test_resume_finds_the_last_acknowledged_checkpoint_after_segments_were_deleted(
        tmp_path):
    """Regression test for a bug the torture found (deterministic, in one
    process): checkpoints with a snapshot after each (what LiveJournal
    does), small segments, then one more acknowledged checkpoint.  The
    second snapshot deleted the segments the first covered; resume must
    still start from the last checkpoint, seq 86 here (it got 65)."""
    from artiq_journal.journal.constants import (REC_APPEND, REC_CHECKPOINT,
                                                 REC_RUN_INFO, REC_SET)
    from artiq_journal.journal.writer import JournalWriter
    from artiq_journal.replay import last_checkpoint_seq, replay
    from artiq_journal.runstate import RunState
    from artiq_journal.worker_hooks.resume import load_checkpoint

    path = str(tmp_path / "000000001-T.journal")
    writer = JournalWriter(path, fsync="never", segment_bytes=256)
    state = RunState()

    def append(rtype, payload):
        seq = writer.append(rtype, payload)
        state.apply(seq, rtype, payload)
        return seq

    append(REC_RUN_INFO, {"rid": 1, "class_name": "T"})
    append(REC_SET, ["ys", [], {}, False, False, True])
    for i in range(3):
        for j in range(20):
            append(REC_APPEND, ["ys", j])
        append(REC_CHECKPOINT, [{"i": i}])
        writer.write_snapshot(state.to_snapshot())
    for j in range(20):
        append(REC_APPEND, ["ys", j])
    last = append(REC_CHECKPOINT, [{"i": 99}])
    writer.abandon()         # as after SIGKILL: no close record

    assert replay(path).state.checkpoint_seq == last       # passes
    assert last_checkpoint_seq(path) == last               # was 65, not 86
    _info, resumed, seq = load_checkpoint(path)
    assert (seq, resumed.checkpoint) == (last, {"i": 99})
