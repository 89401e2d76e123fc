"""replay_to_last_checkpoint: the state of ``replay(upto_seq=last
checkpoint)`` in one pass (resume, issue 15)."""

from __future__ import annotations

import os

import pytest

from artiq_journal import replay as replay_module
from artiq_journal.journal.constants import (REC_APPEND, REC_CHECKPOINT,
                                             REC_RUN_INFO, REC_SET)
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.replay import (last_checkpoint_seq, replay,
                                  replay_to_last_checkpoint)


def _journal(tmp_path, n, checkpoints, tail_mutate=False):
    path = os.path.join(tmp_path, "1-X.journal")
    w = JournalWriter(path, fsync="never", heartbeat_interval=None)
    w.append(REC_RUN_INFO, {"rid": 1, "class_name": "X"})
    w.append(REC_SET, ["x", [], {}, False, False, True])
    for i in range(n):
        w.append(REC_APPEND, ["x", float(i)])
        if i in checkpoints:
            w.append(REC_CHECKPOINT, [{"i": i}])
    if tail_mutate:
        w.append(REC_SET, ["x", 5, {}, False, False, True])
    w.abandon()
    return path


@pytest.mark.parametrize("limit", [4, 1000, 1 << 16])
@pytest.mark.parametrize("checkpoints,tail", [
    ({10, 500}, False), ({900}, True), (set(), False), ({0}, True),
    ({100, 101, 999}, False)])
def test_one_pass_equals_replay_upto_the_last_checkpoint(
        tmp_path, monkeypatch, limit, checkpoints, tail):
    monkeypatch.setattr(replay_module, "HOLD_LIMIT", limit)
    path = _journal(tmp_path, 1000, checkpoints, tail)
    got = replay_to_last_checkpoint(path).state
    seq = last_checkpoint_seq(path)
    if seq is None:
        assert got.checkpoint is None
        return
    want = replay(path, upto_seq=seq).state
    assert got.checkpoint_seq == seq and got.last_seq == want.last_seq
    assert got.checkpoint == want.checkpoint
    assert got.datasets.local == want.datasets.local


def test_one_pass_when_the_checkpoint_is_near_the_end(tmp_path, monkeypatch):
    calls = []
    real = replay_module.replay

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(replay_module, "replay", counting)
    monkeypatch.setattr(replay_module, "HOLD_LIMIT", 100)
    path = _journal(tmp_path, 1000, {950})
    state = replay_to_last_checkpoint(path).state
    assert len(calls) == 1 and state.checkpoint == {"i": 950}
