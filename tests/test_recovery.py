"""artiq_journal.recovery: orphaned journals back into ARTIQ results files.

Journals are built with the real JournalWriter (payloads as the worker hooks
write them) next to a model ``DatasetState``; damaged journals are made from
good ones by code.  The helpers at the top are shared with
test_recovery_model.py and test_recover_cli.py.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import artiq_vendor
from artiq_journal.journal import lock as journal_lock
from artiq_journal.journal.constants import (REC_APPEND, REC_ARCHIVE,
                                             REC_MUTATE, REC_RESUMED_FROM,
                                             REC_RUN_INFO, REC_SET, REC_STAGE)
from artiq_journal.journal.reader import JournalReader
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.recovery import OUTCOMES, recover
from artiq_journal.recovery.discover import find_journals
from artiq_journal.recovery.hdf5_out import escape_name
from artiq_journal.recovery.publish import MARKER_NAME, Directory
from artiq_journal import pyon
from artiq_journal.runstate import RunState
from artiq_journal.state import DatasetState

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "src")
OP_RECORDS = {"set": REC_SET, "mutate": REC_MUTATE, "append_to": REC_APPEND,
              "archive": REC_ARCHIVE}
EXPID = {"log_level": 30, "file": "repo/exp.py", "class_name": None,
         "arguments": {"n": 10, "span": (1.0, 2.0), "ids": [1, 2]},
         "repo_rev": "abc123"}


# --- shared helpers ----------------------------------------------------------

def journal_dir(root, rid=42, class_name="Exp", date="2025-03-04",
                hour="10") -> str:
    return os.path.join(str(root), date, hour,
                        f"{rid:09d}-{class_name}.journal")


def run_info(path: str, rid: int, class_name: str, **extra) -> dict:
    info = {"rid": rid, "class_name": class_name, "expid": EXPID,
            "pipeline_name": "main", "priority": 0,
            "start_time": 1741082400.25, "artiq_version": "9.0+test",
            "results_dir": os.path.dirname(path),
            "h5_name": f"{rid:09d}-{class_name}.h5", "host": "lab1",
            "pid": 1234}
    info.update(extra)
    return info


class Journal:
    """A journal written with the real writer, a model DatasetState that
    saw the same operations, and a RunState built alongside (for
    snapshots).  Only operations that succeeded on the model are
    journaled, as the worker hooks do."""

    def __init__(self, path: str, rid: int = 42, class_name: str = "Exp",
                 *, segment_bytes: int = 64 << 20, info: dict | None = None):
        self.path = path
        self.writer = JournalWriter(path, fsync="never",
                                    segment_bytes=segment_bytes)
        self.model = DatasetState(warn=False)
        self.runstate = RunState()
        #: (seq, op name, args as journaled) of every dataset operation.
        self.ops: list[tuple[int, str, list]] = []
        self.append(REC_RUN_INFO, info if info is not None
                    else run_info(path, rid, class_name))

    def append(self, rtype: int, payload) -> int:
        seq = self.writer.append(rtype, payload)
        self.runstate.apply(seq, rtype, copy.deepcopy(payload))
        return seq

    def op(self, name: str, *args) -> bool:
        """Apply to the model; journal it only if it succeeded."""
        try:
            self.model.apply(name, copy.deepcopy(list(args)))
        except Exception:
            return False
        seq = self.append(OP_RECORDS[name], list(args))
        self.ops.append((seq, name, copy.deepcopy(list(args))))
        return True

    def stage(self, name: str, when: float) -> int:
        return self.append(REC_STAGE, [name, when])

    def snapshot(self) -> int:
        return self.writer.write_snapshot(self.runstate.to_snapshot())

    def crash(self) -> None:
        self.writer.abandon()

    def close(self, reason: str = "results_written") -> None:
        self.writer.close(reason)


def model_upto(ops, last_seq: int) -> DatasetState:
    """The model after the journaled operations with seq <= last_seq."""
    model = DatasetState(warn=False)
    for seq, name, args in ops:
        if seq <= last_seq:
            model.apply(name, copy.deepcopy(args))
    return model


def write_model(model: DatasetState, path: str) -> str:
    """The file ARTIQ's DatasetManager.write_hdf5 would write."""
    with h5py.File(path, "w") as f:
        model.write_hdf5(f)
    return path


def _canon(value, dtype):
    if dtype.kind == "O":
        return np.asarray(value, dtype=object).tolist()
    return np.asarray(value).tobytes()  # bitwise: NaN == NaN, -0.0 != 0.0


def _attrs(obj) -> dict:
    out = {}
    for name, value in obj.attrs.items():
        arr = np.asarray(value)
        out[name] = (arr.dtype.str, arr.shape, _canon(value, arr.dtype)
                     if arr.dtype.kind != "U" else str(value))
    return out


def h5_content(path: str, groups=("datasets", "archive")) -> dict:
    """Every group and dataset under ``groups``: kind, dtype, shape, value
    (bitwise) and attributes."""
    out = {}
    with h5py.File(path, "r") as f:
        for group in groups:
            if group not in f:
                out[group] = None
                continue
            out[group] = ("group", _attrs(f[group]))

            def visit(name, obj, group=group):
                if isinstance(obj, h5py.Group):
                    out[f"{group}/{name}"] = ("group", _attrs(obj))
                else:
                    out[f"{group}/{name}"] = (
                        "dataset", obj.dtype.str, obj.shape,
                        _canon(obj[()], obj.dtype), _attrs(obj))
            f[group].visititems(visit)
    return out


def tree_state(root) -> dict:
    """path -> (size, mtime_ns, bytes) of every file and directory."""
    state = {}
    for directory, dirs, files in os.walk(str(root)):
        for name in dirs:
            path = os.path.join(directory, name)
            state[path] = ("dir", os.stat(path).st_mtime_ns)
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                state[path] = ("file", os.stat(path).st_mtime_ns, f.read())
    return state


def artiq_write_results(path: str, model: DatasetState, rid: int) -> None:
    """What ARTIQ's worker_impl.write_results writes."""
    with h5py.File(path, "w") as f:
        model.write_hdf5(f)
        f["artiq_version"] = "9.0"
        f["rid"] = rid
        f["start_time"] = 1.0
        f["run_time"] = 2.0
        f["expid"] = pyon.encode(EXPID)


def sample_journal(root, rid=42, crash=True, **kw) -> Journal:
    j = Journal(journal_dir(root, rid), rid, **kw)
    j.stage("build", 1741082400.5)
    j.op("set", "counts", [], {"unit": "Hz"}, False, False, True)
    j.op("set", "wave", np.zeros((2, 3)), {"scale": 1e-3, "unit": "V"},
         True, False, True)
    j.op("set", "live_only", 7, {}, True, False, False)
    j.stage("prepare", 1741082401.0)
    j.stage("run", 1741082401.5)
    for i in range(20):
        j.op("append_to", "counts", i * 10)
    j.op("mutate", "wave", ((0, 1), (1, 3)), 5.0)
    assert not j.op("mutate", "live_only", 0, 8)  # an int: never journaled
    j.op("archive", "calib.f0", 101.5)
    if crash:
        j.crash()
    return j


# --- the normal case ---------------------------------------------------------

def test_orphaned_journal_becomes_artiq_results_file(tmp_path):
    j = sample_journal(tmp_path)
    report = recover(tmp_path)
    assert report.exit_code == 0, report.to_json()
    (run,) = report.runs
    assert run.outcome == "recovered"
    assert (run.rid, run.class_name, run.stage) == (42, "Exp", "run")
    assert run.records_applied == j.writer.last_seq == len(j.ops) + 4
    assert run.records_untrusted == 0
    h5 = os.path.join(os.path.dirname(j.path), "000000042-Exp.h5")
    assert run.output == h5
    expected = write_model(j.model, str(tmp_path / "model.h5"))
    assert h5_content(h5) == h5_content(expected)
    with h5py.File(h5, "r") as f:
        assert "live_only" not in f["datasets"]   # broadcast, not archived
        assert list(f["archive"]) == ["calib.f0"]
        assert f["datasets/counts"].attrs["unit"] == "Hz"
        assert f["rid"].dtype == np.int64 and f["rid"][()] == 42
        assert f["start_time"].dtype == np.float64
        assert f["start_time"][()] == 1741082400.25
        assert f["run_time"][()] == 1741082401.5
        assert f["artiq_version"][()].decode() == "9.0+test"
        assert pyon.decode(f["expid"][()].decode()) == EXPID
        meta = f["artiq_journal"].attrs
        assert meta["recovered"] and meta["format_version"] == 3
        assert meta["stage"] == "run" and meta["last_seq"] == j.writer.last_seq
        assert meta["records_applied"] == run.records_applied
        assert meta["journal"] == j.path and not meta["data_lost"]
        assert list(f["artiq_journal/problems"][()]) == []


def test_expid_is_read_back_by_artiqs_own_pyon_decoder(tmp_path):
    artiq_vendor.require("sipyco.pyon")
    from sipyco import pyon as sipyco_pyon
    j = sample_journal(tmp_path)
    recover(tmp_path)
    with h5py.File(os.path.join(os.path.dirname(j.path),
                                "000000042-Exp.h5"), "r") as f:
        assert sipyco_pyon.decode(f["expid"][()].decode()) == EXPID


def test_file_uses_hdf5_1_10_compatible_format(tmp_path):
    j = sample_journal(tmp_path)
    recover(tmp_path)
    h5 = os.path.join(os.path.dirname(j.path), "000000042-Exp.h5")
    with open(h5, "rb") as f:
        head = f.read(9)
    # Superblock v0 (v3 would come with the newest-format bound or SWMR).
    assert head[:8] == b"\x89HDF\r\n\x1a\n" and head[8] == 0
    # Bounded at v110: opening for writing with those bounds succeeds.
    with h5py.File(h5, "r+", libver=("earliest", "v110")) as f:
        assert f["rid"][()] == 42


def test_file_is_read_by_hdf5_1_10_h5dump(tmp_path):
    h5dump = shutil.which("h5dump")
    if h5dump is None:
        pytest.skip("h5dump (e.g. Debian hdf5-tools 1.10) not installed")
    version = subprocess.run([h5dump, "--version"], capture_output=True,
                             text=True).stdout
    j = sample_journal(tmp_path, crash=False)
    j.op("set", "c", np.array([1 + 2j, 3j]), {"unit": "V"}, False, False,
         True)
    j.op("set", "none", None, {}, False, False, True)
    j.op("set", "a/b", [b"x", b"yz"], {}, False, False, True)
    j.op("set", "s", "text", {"precision": 3}, False, False, True)
    j.snapshot()
    j.crash()
    (run,) = recover(tmp_path).runs
    proc = subprocess.run([h5dump, run.output], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "error" not in proc.stderr.lower(), \
        proc.stderr
    assert '"a%2Fb"' in proc.stdout and "H5T_COMPOUND" in proc.stdout
    print(f"\n{version.strip()}: read {len(proc.stdout)} characters")


@pytest.mark.parametrize("reason", ["no_results", "journal_disabled",
                                    "hook_error", "closed"])
def test_a_close_without_artiq_results_file_is_recovered(tmp_path, reason):
    # Reproduces issue 12 item 1 (a master SIGKILLed mid-run: the worker
    # closed its journal "no_results" and recovery skipped it as clean).
    j = sample_journal(tmp_path, crash=False)
    j.close(reason)
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered", run
    assert report.exit_code == 0
    with h5py.File(run.output, "r") as f:
        assert list(f["datasets/counts"][()]) == [i * 10 for i in range(20)]


def test_results_written_close_with_artiq_file_is_already_complete(tmp_path):
    j = sample_journal(tmp_path, crash=False)
    j.close()
    h5 = os.path.join(os.path.dirname(j.path), "000000042-Exp.h5")
    artiq_write_results(h5, j.model, 42)
    with open(h5, "rb") as f:
        original = f.read()
    report = recover(tmp_path)
    assert [r.outcome for r in report.runs] == ["already_complete"]
    assert report.exit_code == 0
    with open(h5, "rb") as f:
        assert f.read() == original


def test_results_written_close_but_no_results_file_is_rebuilt(tmp_path):
    # "Closed cleanly" is a promise the data is elsewhere; when the file is
    # gone the journal is the only copy.
    j = sample_journal(tmp_path, crash=False)
    j.close()
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered"
    assert any("rebuilding it" in p.reason for p in run.problems)
    with h5py.File(run.output, "r") as f:
        assert list(f["datasets/counts"][()]) == [i * 10 for i in range(20)]


HOLD_LOCK = """
import sys
sys.path.insert(0, sys.argv[1])
from artiq_journal.journal.writer import JournalWriter
w = JournalWriter(sys.argv[2], fsync="never")
print("locked", flush=True)
sys.stdin.read()
"""


def test_live_journal_is_skipped_unless_forced(tmp_path):
    j = sample_journal(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, SRC, j.path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert journal_lock.is_locked(j.path)
        report = recover(tmp_path)
        assert [r.outcome for r in report.runs] == ["skipped_live"]
        assert report.exit_code == 0
        assert not os.path.exists(os.path.join(os.path.dirname(j.path),
                                               "000000042-Exp.h5"))
        forced = recover(tmp_path, force=True)
        (run,) = forced.runs
        assert run.outcome == "recovered" and os.path.exists(run.output)
        assert any("lock is held" in p.reason for p in run.problems)
    finally:
        holder.stdin.close()
        holder.wait(10)


# --- existing results files, idempotence, --output, dry run ------------------

def test_complete_artiq_file_is_left_alone_and_journal_marked_done(tmp_path):
    j = sample_journal(tmp_path)
    h5 = os.path.join(os.path.dirname(j.path), "000000042-Exp.h5")
    artiq_write_results(h5, j.model, 42)
    with open(h5, "rb") as f:
        original = f.read()
    report = recover(tmp_path)
    assert [r.outcome for r in report.runs] == ["already_complete"]
    with open(h5, "rb") as f:
        assert f.read() == original
    with open(os.path.join(j.path, MARKER_NAME)) as f:
        marker = json.load(f)
    assert marker["outcome"] == "already_complete"
    assert marker["results_file"] == "000000042-Exp.h5"
    before = tree_state(tmp_path)
    again = recover(tmp_path)
    assert [r.outcome for r in again.runs] == ["already_complete"]
    assert tree_state(tmp_path) == before and again.exit_code == 0


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, "truncated"])
def test_partial_results_file_is_kept_aside(tmp_path, content):
    j = sample_journal(tmp_path)
    h5 = os.path.join(os.path.dirname(j.path), "000000042-Exp.h5")
    if content == "truncated":
        artiq_write_results(h5, j.model, 42)
        with open(h5, "rb") as f:
            content = f.read()[:2000]
    with open(h5, "wb") as f:
        f.write(content)
    with open(h5 + ".partial-1", "wb") as f:
        f.write(b"older aside file")
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered" and report.exit_code == 0
    assert run.moved_aside == h5 + ".partial-2"
    with open(h5 + ".partial-1", "rb") as f:
        assert f.read() == b"older aside file"   # never overwritten
    with open(h5 + ".partial-2", "rb") as f:
        assert f.read() == content
    expected = write_model(j.model, str(tmp_path / "model.h5"))
    assert h5_content(h5) == h5_content(expected)


def test_second_run_changes_nothing(tmp_path):
    sample_journal(tmp_path, rid=1)
    sample_journal(tmp_path, rid=2)
    first = recover(tmp_path)
    assert [r.outcome for r in first.runs] == ["recovered", "recovered"]
    before = tree_state(tmp_path)
    second = recover(tmp_path)
    assert [r.outcome for r in second.runs] == ["already_recovered"] * 2
    assert tree_state(tmp_path) == before
    assert [r.records_applied for r in second.runs] == \
        [r.records_applied for r in first.runs]


def test_rerun_of_partial_recovery_keeps_reporting_the_loss(tmp_path):
    j = sample_journal(tmp_path, segment_bytes=600)
    segments = sorted(os.listdir(j.path))
    os.unlink(os.path.join(j.path, "segment-2.log"))
    first = recover(tmp_path)
    assert first.runs[0].outcome == "recovered_partial", segments
    second = recover(tmp_path)
    assert second.runs[0].outcome == "already_recovered"
    assert second.exit_code == first.exit_code == 1
    assert [p.reason for p in second.runs[0].problems] == \
        [p.reason for p in first.runs[0].problems]


def test_changed_journal_is_recovered_again_keeping_the_old_file(tmp_path):
    j = sample_journal(tmp_path, crash=False)
    j.crash()
    recover(tmp_path)
    h5 = os.path.join(os.path.dirname(j.path), "000000042-Exp.h5")
    w = JournalWriter(j.path, fsync="never")   # e.g. a forced, live recovery
    w.append(REC_APPEND, ["counts", 999])
    w.abandon()
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered" and run.moved_aside == h5 + ".partial-1"
    with h5py.File(h5, "r") as f:
        assert f["datasets/counts"][-1] == 999


def test_output_dir_leaves_the_results_tree_untouched(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    j = sample_journal(results)
    before = tree_state(results)
    report = recover(results, output=out)
    (run,) = report.runs
    assert run.outcome == "recovered"
    assert run.output == str(out / "2025-03-04" / "10" / "000000042-Exp.h5")
    assert tree_state(results) == before
    expected = write_model(j.model, str(tmp_path / "model.h5"))
    assert h5_content(run.output) == h5_content(expected)
    again = recover(results, output=out)
    assert again.runs[0].outcome == "already_recovered"
    # A journal given directly: the file goes straight into DIR.
    direct = recover(j.path, output=tmp_path / "out2")
    assert direct.runs[0].output == str(tmp_path / "out2" / "000000042-Exp.h5")


def test_dry_run_writes_nothing(tmp_path):
    sample_journal(tmp_path, rid=1)
    damaged = sample_journal(tmp_path, rid=2, segment_bytes=600)
    os.unlink(os.path.join(damaged.path, "segment-2.log"))
    before = tree_state(tmp_path)
    report = recover(tmp_path, dry_run=True)
    assert tree_state(tmp_path) == before
    assert [(r.outcome, r.would_be) for r in report.runs] == \
        [("dry_run", "recovered"), ("dry_run", "recovered_partial")]
    assert report.exit_code == 1 and report.dry_run
    assert report.runs[0].records_applied > 0


# --- damaged journals --------------------------------------------------------

def _records(path):
    return [r for r in JournalReader(path, decode=False)]


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def _check_prefix(tmp_path, j, run, last_seq):
    expected = write_model(model_upto(j.ops, last_seq),
                           str(tmp_path / "expected.h5"))
    assert h5_content(run.output) == h5_content(expected)


def _file_problems(path):
    with h5py.File(path, "r") as f:
        return ([p.decode() for p in f["artiq_journal/problems"][()]],
                bool(f["artiq_journal"].attrs["data_lost"]))


def test_torn_tail_recovers_everything_before_it(tmp_path):
    j = sample_journal(tmp_path)
    records = _records(j.path)
    last = records[-1]
    seg = os.path.join(j.path, last.segment)
    os.truncate(seg, last.offset + 7)           # crash inside the last write
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered" and report.exit_code == 0
    assert run.last_seq == last.seq - 1
    assert any("torn tail" in p.reason and p.severity == "info"
               for p in run.problems)
    _check_prefix(tmp_path, j, run, last.seq - 1)
    problems, lost = _file_problems(run.output)
    assert any("torn tail" in p for p in problems) and not lost


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_bit_flip_keeps_the_trusted_prefix_and_reports_the_rest(tmp_path,
                                                                 where):
    j = sample_journal(tmp_path)
    records = _records(j.path)
    victim = records[int(len(records) * where)]
    _flip(os.path.join(j.path, victim.segment), victim.offset + 22)
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered_partial" and report.exit_code == 1
    assert run.last_seq == victim.seq - 1
    assert run.records_untrusted == len(records) - records.index(victim) - 1
    _check_prefix(tmp_path, j, run, victim.seq - 1)
    problems, lost = _file_problems(run.output)
    assert lost and any(f"{victim.offset}: record CRC mismatch" in p
                        for p in problems)
    assert any("left out" in p for p in problems)


def test_missing_segment_leaves_out_what_follows(tmp_path):
    j = sample_journal(tmp_path, segment_bytes=600)
    segs = sorted(n for n in os.listdir(j.path) if n.startswith("segment-"))
    assert len(segs) >= 3
    first_of_2 = min(r.seq for r in _records(j.path)
                     if r.segment == "segment-2.log")
    os.unlink(os.path.join(j.path, "segment-2.log"))
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered_partial" and report.exit_code == 1
    assert run.records_untrusted > 0 and run.last_seq == first_of_2 - 1
    assert any("sequence gap" in p.reason for p in run.problems)
    _check_prefix(tmp_path, j, run, first_of_2 - 1)


def _snapshotted_journal(tmp_path) -> Journal:
    j = Journal(journal_dir(tmp_path), segment_bytes=400)
    j.op("set", "x", [], {}, False, False, True)
    for round_ in range(3):
        for i in range(15):
            j.op("append_to", "x", round_ * 100 + i)
        j.snapshot()
    for i in range(5):
        j.op("append_to", "x", -i)
    j.crash()
    return j


def test_damaged_snapshot_falls_back_on_the_previous_one(tmp_path):
    j = _snapshotted_journal(tmp_path)
    _flip(os.path.join(j.path, "checkpoint"), 60)
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.snapshot == "checkpoint.old"
    assert run.last_seq == j.writer.last_seq     # nothing lost
    assert run.outcome == "recovered" and report.exit_code == 0
    _check_prefix(tmp_path, j, run, j.writer.last_seq)
    assert any("checkpoint" in p.reason for p in run.problems)


def test_missing_snapshots_with_deleted_segments_report_the_loss(tmp_path):
    j = _snapshotted_journal(tmp_path)
    assert "segment-1.log" not in os.listdir(j.path)   # covered, deleted
    for name in ("checkpoint", "checkpoint.old"):
        os.unlink(os.path.join(j.path, name))
    report = recover(tmp_path)
    (run,) = report.runs
    assert run.outcome == "recovered_partial" and report.exit_code == 1
    assert run.records_untrusted > 0
    assert any("sequence gap" in p.reason for p in run.problems)
    problems, lost = _file_problems(run.output)
    assert lost and problems


def test_any_damage_never_crashes(tmp_path):
    rng = random.Random(1234)
    base = sample_journal(tmp_path / "base", segment_bytes=500)
    base_files = {n: open(os.path.join(base.path, n), "rb").read()
                  for n in os.listdir(base.path) if n != "lock"}
    for case in range(25):
        path = journal_dir(tmp_path / f"case{case}", rid=case)
        os.makedirs(path)
        for name, data in base_files.items():
            data = bytearray(data)
            for _ in range(rng.randrange(0, 4)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[:rng.randrange(len(data) + 1)]
            if rng.random() < 0.15:
                data = bytearray(rng.randbytes(rng.randrange(200)))
            if rng.random() > 0.1:
                with open(os.path.join(path, name), "wb") as f:
                    f.write(data)
    report = recover(tmp_path)
    assert len(report.runs) == 26
    assert all(r.outcome in OUTCOMES and r.outcome != "failed"
               for r in report.runs), [r.to_dict() for r in report.runs
                                       if r.outcome == "failed"]
    json.loads(report.to_json())


def test_journal_without_records_or_name_does_not_crash(tmp_path):
    from artiq_journal.journal.framing import encode_segment_header
    for name in ("000000007-Empty.journal", "000000008-Header.journal",
                 "weird.journal"):
        os.makedirs(tmp_path / "r" / name)
    for name in ("000000008-Header.journal", "weird.journal"):
        # Crash right after creating segment 1: its header, no record.
        (tmp_path / "r" / name / "segment-1.log").write_bytes(
            encode_segment_header(1, 1))
    before = os.listdir(tmp_path / "r" / "000000007-Empty.journal")
    report = recover(tmp_path / "r")
    outcome = {os.path.basename(r.journal): r.outcome for r in report.runs}
    assert outcome == {"000000007-Empty.journal": "skipped_clean",
                       "000000008-Header.journal": "recovered",
                       "weird.journal": "failed"}
    # A journal whose writer may be starting: not even its lock touched.
    assert os.listdir(tmp_path / "r" / "000000007-Empty.journal") == before
    with h5py.File(tmp_path / "r" / "000000008-Header.h5", "r") as f:
        assert f["rid"][()] == 8 and len(f["datasets"]) == 0
    assert report.exit_code == 1


# --- names and values HDF5 cannot take as they are ---------------------------

def test_dataset_names_never_escape_their_group(tmp_path):
    j = Journal(journal_dir(tmp_path))
    keys = ["/abs", "a/b", "..", ".", "", "x\0y", "a%2Fb", "ok.name"]
    for n, key in enumerate(keys):
        j.op("set", key, n, {}, False, False, True)
    j.op("archive", "../up", 1.5)
    j.crash()
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered"
    with h5py.File(run.output, "r") as f:
        assert sorted(f) == ["archive", "artiq_journal", "artiq_version",
                             "datasets", "expid", "rid", "start_time"]
        assert len(f["datasets"]) == len(keys)
        escaped = [json.loads(e) for e in f["artiq_journal/escaped_names"]]
        stored = {orig: [group, name] for group, name, orig in escaped}
        # "a/b" nests as ARTIQ's own group["a/b"] = v nests it.
        assert "a/b" not in stored and f["datasets/a/b"][()] == 1
        for n, key in enumerate(keys):
            if key != "a/b":
                group, name = stored[key] if key in stored else \
                    ["datasets", key]
                assert isinstance(f[group][name], h5py.Dataset), key
                assert f[group][name][()] == n, key
        assert f["datasets/a%2Fb"][()] == 6     # the literal key keeps it
        assert f["archive"][escape_name("../up")][()] == 1.5
    assert {p.severity for p in run.problems} == {"info"}


def test_a_name_that_is_also_another_names_group_is_escaped(tmp_path):
    # ARTIQ itself fails on "x" and "x/y" together; recovery keeps both.
    j = Journal(journal_dir(tmp_path))
    j.op("set", "x", 1, {}, False, False, True)
    j.op("set", "x/y", 2, {}, False, False, True)
    j.op("set", "g/h/i", 3, {}, False, False, True)
    j.crash()
    (run,) = recover(tmp_path).runs
    with h5py.File(run.output, "r") as f:
        assert f["datasets/x"][()] == 1 and f["datasets/g/h/i"][()] == 3
        assert f["datasets"][escape_name("x/y")][()] == 2


def test_unstorable_values_are_kept_as_pyon_and_do_not_stop_the_file(tmp_path):
    j = Journal(journal_dir(tmp_path))
    odd = {"none": None, "ragged": [1, [2, 3]], "mapping": {"a": 1},
           "huge": 2 ** 70, "when": np.datetime64("2020-01-01"),
           "blob": b"a\0b"}
    j.op("set", "first", 1.0, {}, False, False, True)
    for key, value in odd.items():
        j.op("set", key, value, {"unit": "V"}, False, False, True)
    j.op("set", "bad_meta", 2.0, {"unit": None}, False, False, True)
    j.op("set", "last", np.arange(3), {}, False, False, True)
    j.crash()
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered"
    with h5py.File(run.output, "r") as f:
        d = f["datasets"]
        assert d["first"][()] == 1.0 and list(d["last"][()]) == [0, 1, 2]
        for key, value in odd.items():
            assert d[key].attrs["artiq_journal_encoding"] == "pyon"
            assert pyon.decode(d[key][()].decode()) == value
            assert d[key].attrs["unit"] == "V"
        assert pyon.decode(d["bad_meta"].attrs["unit"]) is None
    warned = [p.reason for p in run.problems if p.severity == "warning"]
    assert len(warned) == len(odd) + 1


def test_resume_and_snapshot_are_recorded_in_the_file(tmp_path):
    j = Journal(journal_dir(tmp_path))
    j.append(REC_RESUMED_FROM, {"rid": 41, "seq": 12, "journal": "/x/y"})
    j.op("set", "x", 1, {}, False, False, True)
    seq = j.snapshot()
    j.stage("analyze", 5.0)
    j.crash()
    (run,) = recover(tmp_path).runs
    with h5py.File(run.output, "r") as f:
        meta = f["artiq_journal"].attrs
        assert meta["snapshot"] == "checkpoint" and meta["snapshot_seq"] == seq
        assert json.loads(meta["resumed_from"])["rid"] == 41
        assert meta["stage"] == "analyze"
        assert "run_time" not in f      # the run stage was never reached


def test_explicit_journal_with_other_name_uses_run_info(tmp_path):
    path = str(tmp_path / "copied")
    j = Journal(path, rid=9, class_name="Scan")
    j.op("set", "x", 1, {}, False, False, True)
    j.crash()
    (run,) = recover(path).runs
    assert run.output == str(tmp_path / "000000009-Scan.h5")


def test_names_from_the_journal_never_leave_its_directory(tmp_path):
    path = str(tmp_path / "sub" / "copied")
    info = run_info(path, 9, "../../Evil", h5_name="../../evil.h5")
    j = Journal(path, info=info)
    j.crash()
    (run,) = recover(path).runs
    assert run.outcome == "failed" and run.output is None
    assert sorted(os.listdir(tmp_path)) == ["sub"]
    assert sorted(os.listdir(tmp_path / "sub")) == ["copied"]


# --- discovery and publishing ------------------------------------------------

def test_discovery_scales_and_never_enters_journals(tmp_path):
    made = []
    for day in range(10):
        for hour in range(20):
            for rid in range(15):
                path = journal_dir(tmp_path, day * 1000 + hour * 20 + rid,
                                   date=f"2025-01-{day + 1:02d}",
                                   hour=f"{hour:02d}")
                made.append(path)
    for path in made:
        os.makedirs(os.path.join(path, "nested.journal"))
    os.symlink(tmp_path, tmp_path / "loop")
    problems = []
    start = time.perf_counter()
    found = find_journals([str(tmp_path)], problems)
    elapsed = time.perf_counter() - start
    assert [f.path for f in found] == sorted(made) and not problems
    assert elapsed < 5, elapsed
    print(f"\ndiscovery: {len(found)} journals in {elapsed:.3f} s")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_directory_is_reported_not_fatal(tmp_path):
    sample_journal(tmp_path, rid=1)
    locked = tmp_path / "2025-03-05"
    os.makedirs(locked / "10")
    os.chmod(locked, 0)
    try:
        report = recover(tmp_path)
    finally:
        os.chmod(locked, 0o755)
    assert [r.outcome for r in report.runs] == ["recovered"]
    assert report.problems and report.exit_code == 1


def test_unreadable_directory_is_reported_even_as_root(tmp_path,
                                                      monkeypatch):
    from artiq_journal.recovery import discover
    sample_journal(tmp_path, rid=1)
    bad = str(tmp_path / "2025-03-05")
    os.makedirs(bad)
    real_scandir = os.scandir

    def scandir(path):
        if isinstance(path, (str, os.PathLike)) and os.fspath(path) == bad:
            raise PermissionError(13, "Permission denied", bad)
        return real_scandir(path)
    monkeypatch.setattr(discover.os, "scandir", scandir)
    report = recover(tmp_path)
    assert [r.outcome for r in report.runs] == ["recovered"]
    (problem,) = report.problems
    assert problem.file == bad and "Permission denied" in problem.reason
    assert report.exit_code == 1


def test_close_followed_by_an_empty_segment_is_still_clean(tmp_path):
    from artiq_journal.journal.framing import encode_segment_header
    j = sample_journal(tmp_path, crash=False)
    j.close()
    artiq_write_results(os.path.join(os.path.dirname(j.path),
                                     "000000042-Exp.h5"), j.model, 42)
    with open(os.path.join(j.path, "segment-2.log"), "wb") as f:
        f.write(encode_segment_header(2, j.writer.last_seq + 1))
    assert [r.outcome for r in recover(tmp_path).runs] == \
        ["already_complete"]


def test_temp_file_of_a_killed_recovery_is_cleaned_up(tmp_path):
    j = sample_journal(tmp_path)
    stale = os.path.join(os.path.dirname(j.path),
                         ".000000042-Exp.h5.k1ll3d.recover-tmp")
    with open(stale, "wb") as f:
        f.write(b"half an HDF5 file")
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered" and not os.path.exists(stale)
    assert sorted(os.listdir(os.path.dirname(j.path))) == [
        "000000042-Exp.h5", "000000042-Exp.journal"]


def test_library_refuses_paths_that_are_not_directories(tmp_path):
    from artiq_journal.errors import RecoveryError
    with pytest.raises(RecoveryError, match="no such file"):
        recover(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(RecoveryError, match="not a directory"):
        recover([tmp_path, tmp_path / "file"])


def test_publish_never_overwrites(tmp_path):
    tmp, final = tmp_path / "t", tmp_path / "f.h5"
    tmp.write_bytes(b"new")
    final.write_bytes(b"old")
    with Directory(str(tmp_path)) as d:
        with pytest.raises(FileExistsError):
            d.publish("t", "f.h5")
        assert final.read_bytes() == b"old"
        assert d.move_aside("f.h5") == "f.h5.partial-1"
        d.publish("t", "f.h5")
        assert final.read_bytes() == b"new" and not tmp.exists()
        final.write_bytes(b"newer")   # same name again: next free number
        assert d.move_aside("f.h5") == "f.h5.partial-2"
    assert (tmp_path / "f.h5.partial-1").read_bytes() == b"old"
    assert (tmp_path / "f.h5.partial-2").read_bytes() == b"newer"
    assert not final.exists()


# --- SIGKILL at random points ------------------------------------------------

KILL_CHILD = r"""
import copy, os, sys, time
sys.path.insert(0, sys.argv[1])
from artiq_journal.journal import codec
from artiq_journal.journal.constants import REC_RUN_INFO
from artiq_journal.journal.writer import JournalWriter
from artiq_journal.runstate import RunState
with open(sys.argv[3], "rb") as f:
    info, ops = codec.unpack(f.read())
w = JournalWriter(sys.argv[2], fsync="never", segment_bytes=2048)
rs = RunState()
def append(rtype, payload):
    rs.apply(w.append(rtype, payload), rtype, copy.deepcopy(payload))
append(REC_RUN_INFO, info)
os.write(1, b"ready\n")
for i, (rtype, payload) in enumerate(ops):
    if not os.read(0, 1):          # one permit per operation
        break
    if rtype == 0:
        w.write_snapshot(rs.to_snapshot())
    else:
        append(rtype, payload)
    os.write(1, b"%d\n" % i)       # acknowledged
time.sleep(60)
"""


def kill_ops(seed: int, count: int = 150) -> list[tuple[str, list]]:
    """Operations that succeed on ARTIQ's semantics (checked on a model),
    with snapshots ("snapshot", None) in between."""
    rng = random.Random(seed)
    model = DatasetState(warn=False)
    ops = []
    keys = ["a", "b", "c", "d"]
    while len(ops) < count:
        key = rng.choice(keys)
        kind = rng.random()
        if kind < 0.05:
            ops.append(("snapshot", None))
            continue
        if kind < 0.25:
            value = rng.choice([[], [rng.random()], np.arange(6.0),
                                rng.randrange(100), np.zeros((3, 4))])
            args = [key, value, rng.choice([{}, {"unit": "s"}]),
                    rng.random() < 0.3, rng.random() < 0.1,
                    rng.random() < 0.8]
            name = "set"
        elif kind < 0.7:
            name, args = "append_to", [key, rng.randrange(1000)]
        elif kind < 0.9:
            index = rng.choice([0, 1, (0, 2), (1, 5, 2), ((0, 1), (1, 3))])
            name, args = "mutate", [key, index, float(rng.randrange(50))]
        else:
            name, args = "archive", [key, rng.random()]
        try:
            model.apply(name, copy.deepcopy(args))
        except Exception:
            continue
        ops.append((name, args))
    return ops


@pytest.mark.parametrize("seed", range(24))
def test_sigkill_at_random_points_loses_no_acknowledged_operation(tmp_path,
                                                                  seed):
    rng = random.Random(seed)
    ops = kill_ops(seed)
    path = journal_dir(tmp_path, rid=seed)
    opsfile = tmp_path / "ops.bin"
    from artiq_journal.journal import codec
    encoded = [(0, None) if name == "snapshot" else
               (OP_RECORDS[name], args) for name, args in ops]
    opsfile.write_bytes(codec.pack([run_info(path, seed, "Exp"), encoded]))
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, SRC, path, str(opsfile)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    permits = rng.randrange(1, len(ops) + 1)
    child.stdin.write(b"x" * permits)
    child.stdin.flush()
    time.sleep(rng.random() * 0.02)
    child.send_signal(signal.SIGKILL)
    acks = child.stdout.read().split()
    child.wait()
    acked = len(acks)
    assert [int(a) for a in acks] == list(range(acked))
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered", json.dumps(run.to_dict(), indent=1,
                                                  default=str)
    recovered = h5_content(run.output)
    candidates = []
    for done in (acked, acked + 1):     # + at most one in-flight operation
        model = DatasetState(warn=False)
        for name, args in ops[:done]:
            if name != "snapshot":
                model.apply(name, copy.deepcopy(args))
        candidates.append(h5_content(write_model(
            model, str(tmp_path / f"model{done}.h5"))))
    assert recovered in candidates, (seed, permits, acked)
    print(f"seed {seed}: {permits} permitted, {acked} acknowledged, "
          f"recovered {run.records_applied} records")


def test_replay_pauses_the_cyclic_gc_and_restores_it(tmp_path):
    import gc
    import threading

    from artiq_journal.replay import cyclic_gc_paused, replay

    path = tmp_path / "j"
    w = JournalWriter(str(path), fsync="never")
    w.append(REC_SET, ["k", [], {}, False, False, True])
    w.close()
    assert gc.isenabled()
    seen = []
    inner_done = threading.Event()

    def other_replay():
        with cyclic_gc_paused():
            seen.append(gc.isenabled())
            inner_done.set()

    with cyclic_gc_paused():
        seen.append(gc.isenabled())
        t = threading.Thread(target=other_replay)
        t.start()
        inner_done.wait(5)
        t.join()
        seen.append(gc.isenabled())   # the other replay ended first
        replay(str(path))
        seen.append(gc.isenabled())
    assert seen == [False, False, False, False]
    assert gc.isenabled()
    gc.disable()
    try:
        replay(str(path))
        assert not gc.isenabled()     # left as the caller had it
    finally:
        gc.enable()


def test_marker_is_trusted_only_while_the_results_file_is_unchanged(
        tmp_path):
    j = sample_journal(tmp_path)
    h5 = os.path.join(os.path.dirname(j.path), "000000042-Exp.h5")
    artiq_write_results(h5, j.model, 42)
    assert [r.outcome for r in recover(tmp_path).runs] == \
        ["already_complete"]
    # Someone truncates ARTIQ's file after it was checked: the marker no
    # longer describes it, so it is looked at again and the journal's data
    # lands (the damaged file kept aside).
    with open(h5, "r+b") as f:
        f.truncate(100)
    (run,) = recover(tmp_path).runs
    assert run.outcome == "recovered" and run.moved_aside
    with h5py.File(h5, "r") as f:
        assert list(f["datasets/counts"][()]) == [i * 10 for i in range(20)]
