"""``artiq-journal verify`` and ``artiq-journal inspect``.

Exit status: 0 clean, 1 damaged (any diagnostic, a torn tail included), 2
usage (no such path, not a journal), with the message on stderr.  Problems
are printed as ``FILE:OFFSET: MESSAGE``.  Journals are written by the real
writer; damaged copies are made from them by code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

import artiq_journal
from artiq_journal.cli import main as cli
from artiq_journal.journal import framing
from artiq_journal.journal.constants import (REC_APPEND, REC_RUN_INFO,
                                             REC_SET, SNAPSHOT_NAME)
from artiq_journal.journal.reader import read_all
from artiq_journal.journal.writer import JournalWriter

#: Where the package under test lives, for child processes' PYTHONPATH.
SRC = os.path.dirname(os.path.dirname(os.path.abspath(
    artiq_journal.__file__)))

VALUES = [
    np.arange(6, dtype=">f4").reshape(2, 3), b"\x00\xffbytes",
    float("nan"), float("-inf"), 2 ** 100, -(2 ** 70), 1 + 2j,
    {(1, "a"): "tuple key", 3: "int key"}, (1, [2, (3,)]), np.float32(0.5),
    np.datetime64("2024-01-01T00:00"), "x" * 300, [[[[["deep"]]]]],
]


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        status = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return status, out, err


def write_journal(path, *, close=True, segment_bytes=200,
                  reason="results_written") -> JournalWriter:
    writer = JournalWriter(path, fsync="never", segment_bytes=segment_bytes)
    writer.append(REC_RUN_INFO, {"rid": 1, "class_name": "Scan"})
    for i, value in enumerate(VALUES):
        writer.append(REC_SET, [f"v{i}", value, {}, False, False, True])
    writer.write_snapshot({"datasets": {"a": np.zeros(3)}})
    for i in range(4):
        writer.append(REC_APPEND, ["trace", i])
    if close:
        writer.close(reason)
    return writer


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "run.journal")
    write_journal(path)
    return path


@pytest.fixture
def copy(clean, tmp_path):
    def make(name="copy.journal") -> str:
        dest = str(tmp_path / name)
        shutil.copytree(clean, dest)
        return dest
    return make


def segments(path) -> list[str]:
    return sorted((n for n in os.listdir(path)
                   if framing.parse_segment_name(n) is not None),
                  key=framing.parse_segment_name)


def tear_last_record(path, cut: int):
    """Cut ``cut`` bytes off the last record, as a crash during its write
    would (header-only segments after it, from a rotation, go too)."""
    records, _ = read_all(path)
    last = records[-1]
    names = segments(path)
    for name in names[names.index(last.segment) + 1:]:
        os.unlink(os.path.join(path, name))
    seg = os.path.join(path, last.segment)
    os.truncate(seg, os.path.getsize(seg) - cut)
    return last


# -- verify -------------------------------------------------------------------

def test_verify_clean_journal_exits_0_with_a_summary_line(clean, capsys):
    status, out, err = run(["verify", clean], capsys)
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 1, out
    records, _ = read_all(clean)
    summary = lines[0]
    assert "clean" in summary and f"{len(records)} records" in summary
    assert f"last seq {records[-1].seq}" in summary
    assert "clean close: yes" in summary
    assert "snapshot: checkpoint (seq" in summary
    assert err == ""


def test_verify_quiet_prints_nothing_for_a_clean_journal(clean, capsys):
    assert run(["verify", "-q", clean], capsys) == (0, "", "")


def test_verify_unclosed_intact_journal_is_clean(tmp_path, capsys):
    path = str(tmp_path / "live.journal")
    writer = write_journal(path, close=False)
    status, out, _ = run(["verify", path], capsys)  # live writer
    assert status == 0 and "clean close: no" in out and "writer: live" in out
    writer.abandon()
    status, out, _ = run(["verify", path], capsys)  # orphaned
    assert status == 0 and "writer: orphaned" in out


@pytest.mark.parametrize("reason", ["no_results", "build_failed", "done"])
def test_a_close_without_verified_results_is_not_a_clean_close(
        tmp_path, capsys, reason):
    # "Clean" promises ARTIQ's results file holds the data: only the
    # results_written close says so.
    path = str(tmp_path / f"{reason}.journal")
    write_journal(path, reason=reason)
    status, out, _ = run(["verify", path], capsys)
    assert status == 0 and "clean close: no" in out
    status, out, _ = run(["inspect", path], capsys)
    assert f"close reason: {reason}" in out
    assert "closed WITHOUT a verified results file" in out


def test_verify_bit_flip_exits_1_naming_segment_and_offset(clean, copy,
                                                           capsys):
    path = copy()
    records, _ = read_all(path)
    victim = next(r for r in records if r.segment == "segment-2.log")
    following = records[records.index(victim) + 1]
    seg = os.path.join(path, victim.segment)
    data = bytearray(open(seg, "rb").read())
    data[victim.offset + 22] ^= 0x08
    open(seg, "wb").write(data)
    status, out, _ = run(["verify", path], capsys)
    assert status == 1
    assert f"segment-2.log:{victim.offset}: " in out
    assert f"{os.path.join(path, 'segment-2.log')}:{victim.offset}: " in out
    assert "sequence gap" in out and f"found {following.seq}" in out
    assert "DAMAGED" in out.splitlines()[-1]


def test_verify_truncated_journal_exits_1_with_torn_tail(clean, copy,
                                                         capsys):
    path = copy()
    last = tear_last_record(path, 3)
    status, out, _ = run(["verify", path], capsys)
    assert status == 1
    assert f"{last.segment}:{last.offset}: torn tail (normal after a " \
           f"crash)" in out
    assert "clean close: no" in out


def test_verify_segments_deleted_by_snapshots_are_not_a_gap(tmp_path,
                                                            capsys):
    path = str(tmp_path / "rotated.journal")
    writer = JournalWriter(path, fsync="never", segment_bytes=100)
    for round_ in range(3):
        for i in range(10):
            writer.append(REC_SET, ["k", i])
        writer.write_snapshot({"round": round_})
    writer.close()
    assert "segment-1.log" not in os.listdir(path), \
        "test must exercise segment deletion"
    status, out, _ = run(["verify", path], capsys)
    assert status == 0, out


def test_verify_deleted_middle_segment_exits_1_with_gap(clean, copy, capsys):
    path = copy()
    os.unlink(os.path.join(path, segments(path)[1]))
    status, out, _ = run(["verify", path], capsys)
    assert status == 1 and "sequence gap" in out


def test_verify_lost_tail_behind_a_snapshot_exits_1(tmp_path, capsys):
    # The snapshot proves records up to its seq were durable; segments that
    # end before it have lost them, even though no record is damaged.
    path = str(tmp_path / "lost.journal")
    writer = JournalWriter(path, fsync="never", segment_bytes=100)
    for i in range(10):
        writer.append(REC_SET, ["k", i])
    covered = writer.write_snapshot({"n": 10})
    writer.abandon()
    for name in segments(path)[-2:]:
        os.unlink(os.path.join(path, name))
    status, out, _ = run(["verify", path], capsys)
    assert status == 1
    assert f"covers records up to seq {covered}" in out


def test_verify_damaged_checkpoint_says_which_snapshot_was_used(
        tmp_path, capsys):
    path = str(tmp_path / "snap.journal")
    writer = JournalWriter(path, fsync="never")
    writer.append(REC_SET, ["k", 1])
    writer.write_snapshot({"n": 1})
    writer.append(REC_SET, ["k", 2])
    writer.write_snapshot({"n": 2})
    writer.close()
    ckpt = os.path.join(path, SNAPSHOT_NAME)
    os.truncate(ckpt, os.path.getsize(ckpt) - 1)
    status, out, _ = run(["verify", path], capsys)
    assert status == 1
    assert f"{ckpt}:" in out
    assert "snapshot: checkpoint.old (seq 1), because checkpoint:" in out


def test_verify_reports_leftover_incomplete_checkpoint_new(copy, capsys):
    path = copy()
    with open(os.path.join(path, "checkpoint.new"), "wb") as f:
        f.write(b"ARTIQCKP\x01")  # a snapshot write cut short by a crash
    status, out, _ = run(["verify", path], capsys)
    assert status == 1
    assert "checkpoint.new:0: incomplete checkpoint.new (normal after a " \
           "crash during a snapshot)" in out
    assert "snapshot: checkpoint (seq" in out


def test_verify_one_segment_file_reports_only_that_file(clean, copy, capsys):
    path = copy()
    names = segments(path)
    seg = os.path.join(path, names[0])
    data = bytearray(open(seg, "rb").read())
    data[-2] ^= 0x01
    open(seg, "wb").write(data)
    status, out, _ = run(["verify", seg], capsys)
    assert status == 1 and f"{names[0]}:" in out
    status, out, _ = run(["verify", os.path.join(path, names[-1])], capsys)
    assert status == 0, out


def test_verify_checkpoint_file(clean, copy, capsys):
    path = copy()
    ckpt = os.path.join(path, SNAPSHOT_NAME)
    assert run(["verify", ckpt], capsys)[0] == 0
    with open(ckpt, "r+b") as f:
        f.seek(0)
        f.write(b"XXXX")
    status, out, _ = run(["verify", ckpt], capsys)
    assert status == 1 and f"{ckpt}:0: " in out


@pytest.mark.parametrize("verb", ["verify", "inspect"])
def test_missing_path_is_a_usage_error(tmp_path, capsys, verb):
    missing = str(tmp_path / "nope.journal")
    status, out, err = run([verb, missing], capsys)
    assert status == 2 and out == ""
    assert missing in err and "no such file" in err


@pytest.mark.parametrize("verb", ["verify", "inspect"])
def test_plain_file_is_a_usage_error(tmp_path, capsys, verb):
    plain = tmp_path / "notes.txt"
    plain.write_text("hello")
    status, out, err = run([verb, str(plain)], capsys)
    assert status == 2 and out == ""
    assert str(plain) in err and "not a journal" in err


def test_directory_that_is_not_a_journal_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "other").mkdir()
    status, out, err = run(["verify", str(tmp_path / "other")], capsys)
    assert status == 2 and "not a journal" in err


def test_missing_argument_is_a_usage_error(capsys):
    assert run(["verify"], capsys)[0] == 2


def test_verify_json_parses_and_matches_exit_status(clean, copy, capsys):
    status, out, _ = run(["verify", "--json", clean], capsys)
    doc = json.loads(out)
    assert status == 0 and doc["ok"] is True and doc["diagnostics"] == []
    path = copy()
    last = tear_last_record(path, 1)
    status, out, _ = run(["verify", "--json", path], capsys)
    doc = json.loads(out)
    assert status == 1 and doc["ok"] is False and doc["torn_tail"]
    (diag,) = doc["diagnostics"]
    assert diag["kind"] == "torn_tail" and diag["severity"] == "info"
    assert diag["file"].endswith(last.segment)
    assert diag["offset"] == last.offset


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_verify_never_tracebacks_on_damaged_journals(clean, tmp_path,
                                                     capsys):
    rng = random.Random(7)
    statuses = []
    for i in range(60):
        path = str(tmp_path / f"d{i}.journal")
        shutil.copytree(clean, path)
        victims = [n for n in os.listdir(path) if n != "lock"]
        for _ in range(rng.randint(1, 4)):
            name = os.path.join(path, rng.choice(victims))
            data = bytearray(open(name, "rb").read())
            how = rng.choice(["flip", "cut", "garbage", "empty"])
            if how == "flip" and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif how == "cut":
                del data[rng.randrange(len(data) + 1):]
            elif how == "garbage":
                at = rng.randrange(len(data) + 1)
                data[at:at + 8] = rng.randbytes(8)
            else:
                data = bytearray()
            open(name, "wb").write(data)
        for argv in (["verify", path], ["inspect", "--json", "--records",
                                        path]):
            status, out, err = run(argv, capsys)
            assert status in (0, 1), (argv, status, err)
            assert "internal error" not in err, err
            if "--json" in argv:
                _strict_json(out)
        statuses.append(status)
    assert statuses.count(1) > 50
    print(f"damaged journals: {len(statuses)} checked, "
          f"{statuses.count(1)} reported damaged")


# -- inspect ------------------------------------------------------------------

def test_inspect_describes_segments_snapshots_lock_and_records(clean,
                                                               capsys):
    status, out, _ = run(["inspect", clean], capsys)
    assert status == 0
    for name in segments(clean):
        assert name in out
    assert "checkpoint.old" in out and "missing" in out
    assert "writer: none (closed cleanly: ARTIQ's results file holds" in out
    assert "clean close: yes" in out
    assert f"set            {len(VALUES)}" in out
    assert "append_to      4" in out
    assert "diagnostics: none" in out


def test_inspect_records_lists_one_line_per_record(clean, capsys):
    records, _ = read_all(clean)
    status, out, _ = run(["inspect", "--records", clean], capsys)
    assert status == 0
    listing = out.split("\nrecords:\n", 1)[1].splitlines()
    assert len(listing) == len(records)
    for line, record in zip(listing, records):
        assert line.split()[:3] == [str(record.seq), record.type_name,
                                    f"{record.segment}:{record.offset}"]
        assert len(line) < 200, "payloads must be shown truncated"
    status, out, _ = run(["inspect", "--records", "--limit", "2", clean],
                         capsys)
    listing = out.split("\nrecords:\n", 1)[1].splitlines()
    assert len(listing) == 3 and "more" in listing[-1]


def test_inspect_json_renders_every_value_safely(clean, capsys):
    status, out, _ = run(["inspect", "--json", "--records", clean], capsys)
    assert status == 0
    doc = _strict_json(out)
    assert doc["writer"] == "closed" and doc["clean_close"] is True
    assert doc["records"]["by_type"]["set"] == len(VALUES)
    assert [s["name"] for s in doc["snapshots"] if s["exists"]] == \
        [SNAPSHOT_NAME]
    payloads = [r["payload"] for r in doc["record_list"] if r["type"] == "set"]
    array = payloads[0][1]
    assert array["ndarray"] == {"dtype": ">f4", "shape": [2, 3]}
    assert payloads[1][1]["bytes"] == len(VALUES[1])
    assert payloads[2][1] == {"float": "nan"}
    assert payloads[4][1] == {"int": hex(2 ** 100)}


def test_inspect_reports_live_and_orphaned_writers(tmp_path, capsys):
    path = str(tmp_path / "live.journal")
    writer = write_journal(path, close=False)
    _, out, _ = run(["inspect", "--json", path], capsys)
    assert json.loads(out)["writer"] == "live"
    writer.abandon()
    _, out, _ = run(["inspect", "--json", path], capsys)
    doc = json.loads(out)
    assert doc["writer"] == "orphaned" and doc["clean_close"] is False


def test_inspect_damaged_journal_exits_1_and_lists_untrusted(clean, copy,
                                                             capsys):
    path = copy()
    os.unlink(os.path.join(path, segments(path)[1]))
    status, out, _ = run(["inspect", "--json", path], capsys)
    doc = json.loads(out)
    assert status == 1 and doc["damaged"]
    assert doc["records"]["untrusted"] > 0
    assert any(d["kind"] == "gap" for d in doc["diagnostics"])


# -- the real entry point -----------------------------------------------------

def test_verify_through_python_dash_m(clean, copy):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "artiq_journal.cli.main"]
    ok = subprocess.run(command + ["verify", clean], env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "clean" in ok.stdout
    path = copy()
    tear_last_record(path, 2)
    bad = subprocess.run(command + ["verify", path], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "torn tail" in bad.stdout
    usage = subprocess.run(command + ["verify", path + ".missing"], env=env,
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert path + ".missing" in usage.stderr
