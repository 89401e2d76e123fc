"""Issue 12, "Hostile or damaged input costs only its own run": bounded
time, memory and recursion, special files refused at once, odd names and
run info failing only their own run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import h5py
import msgpack
import pytest

from adversarial_support import (SRC, Journal, h5_beside, journal_dir, run_cli,
                      run_info, sample_journal)
from artiq_journal.journal.constants import (REC_RUN_INFO, REC_SET,
                                             REC_STAGE)
from artiq_journal.journal.framing import (encode_record,
                                           encode_segment_header)
from artiq_journal.recovery import recover


def _raw_journal(path: str, set_payload: bytes, rid: int = 1) -> None:
    """A journal whose third record is a ``set`` with ``set_payload``
    (hostile bytes no writer produces)."""
    os.makedirs(path)
    info = msgpack.packb(run_info(path, rid, "Bomb"))
    records = [encode_record(1, REC_RUN_INFO, info),
               encode_record(2, REC_STAGE, msgpack.packb(["run", 2.0])),
               encode_record(3, REC_SET, set_payload)]
    with open(os.path.join(path, "segment-1.log"), "wb") as f:
        f.write(encode_segment_header(1, 1) + b"".join(records))


def _set_payload(value_bytes: bytes) -> bytes:
    return b"\x96\xa1k" + value_bytes + b"\x80\xc2\xc2\xc3"


def _with_good_neighbour(root) -> Journal:
    j = sample_journal(root, rid=2)
    return j


# -- bounded recursion and memory --------------------------------------------------

@pytest.mark.parametrize("depth", [150, 1000, 100_000])
def test_nesting_bomb_costs_only_its_own_run(tmp_path, depth):
    root = tmp_path / "r"
    bomb = journal_dir(root, rid=1, class_name="Bomb")
    _raw_journal(bomb, _set_payload(b"\x91" * depth + b"\xc0"))
    good = _with_good_neighbour(root)
    report = recover(root)
    outcomes = {os.path.basename(r.journal): r for r in report.runs}
    assert outcomes[os.path.basename(good.path)].outcome == "recovered"
    bad = outcomes["000000001-Bomb.journal"]
    assert bad.outcome == "recovered_partial"
    assert any(p.severity == "error" and p.offset is not None
               for p in bad.problems)
    assert report.exit_code == 1


def test_writer_and_reader_share_one_nesting_limit(tmp_path):
    from artiq_journal.journal import codec
    from artiq_journal.journal.reader import read_all
    from artiq_journal.journal.writer import JournalWriter

    def nested(levels):
        value = None
        for _ in range(levels - 1):   # the payload list is level 1
            value = [value]
        return value

    limit = codec.MAX_NESTING
    writer = JournalWriter(str(tmp_path / "j.journal"), fsync="never")
    writer.append(REC_SET, [nested(limit)])
    with pytest.raises(TypeError, match="nested"):
        writer.append(REC_SET, [nested(limit + 1)])
    writer.close()
    records, reader = read_all(str(tmp_path / "j.journal"))
    assert [r.seq for r in records] == [1, 2]      # the refusal wrote none
    assert not reader.damaged
    # Hand-made: one level more than the writer takes is damage.
    raw = str(tmp_path / "raw.journal")
    os.makedirs(raw)
    payload = msgpack.packb([nested(limit + 1)])
    with open(os.path.join(raw, "segment-1.log"), "wb") as f:
        f.write(encode_segment_header(1, 1)
                + encode_record(1, REC_SET, payload))
    _, reader = read_all(raw)
    assert [d.kind for d in reader.diagnostics] == ["bad_payload"]


MEASURE = textwrap.dedent(r"""
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    what, path = sys.argv[2], sys.argv[3]
    import artiq_journal.recovery  # the same libraries loaded in both
    if what == "decode":
        import msgpack
        data = open(path, "rb").read()
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data))
        unpacker.feed(data[int(sys.argv[4]):])
        value = unpacker.unpack()
    else:
        from artiq_journal.recovery import recover
        report = recover(path)
        assert report.runs[0].outcome == "recovered_partial", report.runs
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_container_bomb_costs_its_decoded_size_not_more(tmp_path):
    # A crafted 32 MiB journal of empty maps took 4.9 GiB to recover: the
    # state itself (what decoding it costs) plus copies for the text
    # fallback.  Recovery may cost the state, not a multiple of it.
    root = tmp_path / "r"
    bomb = journal_dir(root, rid=1, class_name="Bomb")
    n = 2_000_000
    value = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n
    _raw_journal(bomb, _set_payload(value))
    seg = os.path.join(bomb, "segment-1.log")
    offset = os.path.getsize(seg) - len(value) - 4   # start of the value

    def peak(*args):
        out = subprocess.run([sys.executable, "-c", MEASURE, SRC, *args],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1]) * 1024

    decoded = peak("decode", seg, str(offset))
    recovered = peak("recover", str(root))
    print(f"\ncontainer bomb of {os.path.getsize(seg)} bytes: decoding "
          f"alone {decoded >> 20} MiB, recovery {recovered >> 20} MiB")
    assert recovered <= 1.3 * decoded + (96 << 20)


# -- special files --------------------------------------------------------------

def _cli_all_finish(root: str, journal: str) -> list:
    results = []
    for args in (["-m", "artiq_journal.cli.recover", root],
                 ["-m", "artiq_journal.cli.main", "verify", journal],
                 ["-m", "artiq_journal.cli.main", "inspect", journal]):
        try:
            results.append(run_cli(args, timeout=30))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{args} blocked on a special file")
    return results


@pytest.mark.parametrize("name", ["segment-2.log", "checkpoint",
                                  "recovered", "lock"])
def test_fifo_in_a_journal_never_blocks(tmp_path, name):
    root = tmp_path / "r"
    j = sample_journal(root)
    if os.path.lexists(os.path.join(j.path, name)):
        os.unlink(os.path.join(j.path, name))
    os.mkfifo(os.path.join(j.path, name))
    recover_run, verify_run, inspect_run = _cli_all_finish(str(root), j.path)
    assert "Traceback" not in recover_run.stderr + verify_run.stderr
    if name == "segment-2.log":
        assert verify_run.returncode == 1
        assert "not a regular file" in verify_run.stdout + verify_run.stderr


def test_dev_zero_linked_as_a_segment_is_not_read(tmp_path):
    root = tmp_path / "r"
    j = sample_journal(root)
    os.symlink("/dev/zero", os.path.join(j.path, "segment-2.log"))
    recover_run, verify_run, _ = _cli_all_finish(str(root), j.path)
    assert verify_run.returncode == 1
    assert "symbolic link" in verify_run.stdout


def test_fifo_at_the_results_name_is_moved_aside(tmp_path):
    root = tmp_path / "r"
    j = sample_journal(root)
    os.mkfifo(h5_beside(j.path))
    proc = run_cli(["-m", "artiq_journal.cli.recover", "--json", str(root)],
                   timeout=30)
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["outcome"] == "recovered", run
    with h5py.File(h5_beside(j.path), "r") as f:
        assert "datasets/counts" in f
    assert run["moved_aside"].endswith(".partial-1")


# -- odd names and run info ---------------------------------------------------------

def test_non_utf8_directory_names_fail_nothing(tmp_path):
    root = tmp_path / "r"
    good = sample_journal(root, rid=3)
    odd_hour = os.path.join(os.fsencode(str(root)), b"2025-03-04",
                            b"\xff\xfe")
    os.makedirs(odd_hour)
    odd = os.fsdecode(os.path.join(odd_hour, b"000000004-Exp.journal"))
    j = Journal(odd, rid=4, info=run_info("/lab/results/x", 4, "Exp"))
    j.stage("run", 1.0)
    j.op("set", "x", 1, {}, False, False, True)
    j.crash()
    for args in (["--json"], [], ["-v"]):
        proc = run_cli(["-m", "artiq_journal.cli.recover", *args,
                        str(root)], timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.path.exists(h5_beside(good.path))
    assert os.path.exists(h5_beside(odd))


def test_hostile_run_info_fails_only_its_run(tmp_path):
    root = tmp_path / "r"
    good = sample_journal(root, rid=3)
    path = journal_dir(root, rid=5, class_name="Odd")
    info = run_info(path, 5, "Odd", artiq_version="v\0" + "x" * (1 << 20),
                    host="h\0st", h5_name="../../escape.h5")
    info["expid"] = {"file": "\0" * 10, "arguments": {"a": "b" * (1 << 20)}}
    j = Journal(path, 5, "Odd", info=info)
    j.stage("run", 1.0)
    j.op("set", "y", 2.0, {}, False, False, True)
    j.crash()
    report = recover(root)
    outcomes = {os.path.basename(r.journal): r.outcome for r in report.runs}
    assert outcomes[os.path.basename(good.path)] == "recovered"
    assert outcomes["000000005-Odd.journal"] in ("recovered",
                                                 "recovered_partial")
    with h5py.File(h5_beside(path), "r") as f:
        assert f["datasets/y"][()] == 2.0
    assert not (tmp_path / "escape.h5").exists()
