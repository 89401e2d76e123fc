"""Review 2, recovery's scan-point detection from replay's trail
(trail.py, replay.py, recovery/points.py)."""

from __future__ import annotations

import h5py
import numpy as np

from review2_support import scan_with_dataset_replaced_in_each_point

from artiq_journal.journal.constants import REC_STAGE
from artiq_journal.recovery import recover
from artiq_journal.recovery.points import split_partial_point
from artiq_journal.replay import replay
from test_recovery import Journal, journal_dir


# Fixed: R2-3: _last_entries/_pop_last now take any 1-D ndarray, not only the
#   float vectors recovery compacted: a dataset the cut point replaced
#   by set() after appending to it loses the last element of the array
#   the experiment set (a value no point appended); at a4f511a such a
#   dataset stopped the trim
def test_an_array_set_after_the_cut_points_append_is_not_trimmed(tmp_path):
    scan_with_dataset_replaced_in_each_point(
        str(tmp_path), lambda i: np.array([100.0 + i, 200.0 + i]))
    (run,) = recover(str(tmp_path)).runs
    assert run.outcome == "recovered", run.problems
    with h5py.File(run.output, "r") as f:
        # What ARTIQ held when the run died: a = the array point 5 set.
        assert list(f["datasets/a"][()]) == [105.0, 205.0]


# Fixed: R2-3 (older: the list form was trimmed at a4f511a too): the cut
#   point's keys are trimmed by position, without checking that the
#   append is still the key's last record -- a list set() after it loses
#   its own last entry
def test_a_list_set_after_the_cut_points_append_is_not_trimmed(tmp_path):
    j = scan_with_dataset_replaced_in_each_point(
        str(tmp_path), lambda i: [100 + i, 200 + i])
    result = replay(j.path, compact_floats=True, trail=True)
    split_partial_point(j.path, result.state, result.trail)
    assert result.state.datasets.local["a"] == [105, 205]


# Fixed: R2-4: RecordTrail.shapes keeps the key string of every distinct
#   (type, key) shape, up to 65536 of them, for the whole replay: a
#   journal of many records with distinct long leading strings (stage
#   names) makes recovery hold all of them -- memory grows with the
#   journal, where the file-based path read at most a 64 MiB window
def test_trail_memory_does_not_grow_with_distinct_long_keys(tmp_path):
    j = Journal(journal_dir(str(tmp_path)))
    name_bytes = 1 << 20
    for i in range(80):                     # an 80 MiB journal
        j.append(REC_STAGE, [f"{i:08d}" + "x" * name_bytes, 1.0])
    j.crash()
    result = replay(j.path, trail=True)
    held = sum(len(key) for _, key in result.trail.shapes
               if isinstance(key, str))
    assert held <= 64 << 20, f"{held >> 20} MiB of keys held by the trail"
