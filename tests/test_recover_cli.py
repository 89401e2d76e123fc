"""``artiq-recover``: arguments, output modes and exit codes.

The library behaviour is specified in test_recovery.py; these tests check
that the command line exposes it faithfully.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from test_recovery import (HOLD_LOCK, SRC, artiq_write_results, journal_dir,
                           sample_journal,
                           tree_state)
from artiq_journal.cli.recover import main


def _damaged(root, rid):
    j = sample_journal(root, rid=rid, segment_bytes=600)
    os.unlink(os.path.join(j.path, "segment-2.log"))
    return j


def test_recovers_and_exits_0(tmp_path, capsys):
    sample_journal(tmp_path)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "recovered" in out and "000000042-Exp.h5" in out
    assert "1 recovered (1 journal)" in out


def test_default_path_is_results_in_the_working_directory(tmp_path,
                                                          monkeypatch,
                                                          capsys):
    sample_journal(tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert os.path.exists(os.path.join(
        os.path.dirname(journal_dir(tmp_path / "results")),
        "000000042-Exp.h5"))


def test_missing_path_is_a_usage_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope: no such file or directory" in err


def test_file_as_path_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "x.h5").write_bytes(b"")
    assert main([str(tmp_path / "x.h5")]) == 2
    assert "x.h5: not a directory" in capsys.readouterr().err


def test_missing_default_results_is_a_usage_error(tmp_path, monkeypatch,
                                                  capsys):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert "results: no such file" in capsys.readouterr().err


def test_bad_option_is_a_usage_error(capsys):
    assert main(["--frobnicate"]) == 2
    assert "usage: artiq-recover" in capsys.readouterr().err


def test_output_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main([str(tmp_path), "--output", str(tmp_path / "f")]) == 2


def test_help_documents_outcomes_and_exit_codes(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in ("--dry-run", "--json", "--force", "--output",
                 "recovered_partial", "skipped_live", "exit status",
                 ".partial-N"):
        assert word in text


def test_data_loss_exits_1_and_names_the_damage(tmp_path, capsys):
    sample_journal(tmp_path, rid=1)
    _damaged(tmp_path, rid=2)
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "recovered_partial" in out and "sequence gap" in out


def test_json_is_one_document_with_every_run(tmp_path, capsys):
    sample_journal(tmp_path, rid=1)
    _damaged(tmp_path, rid=2)
    code = main([str(tmp_path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == doc["exit_code"] == 1
    runs = {r["rid"]: r for r in doc["runs"]}
    assert runs[1]["outcome"] == "recovered"
    assert runs[2]["outcome"] == "recovered_partial"
    assert runs[2]["records_untrusted"] > 0
    for run in doc["runs"]:
        for key in ("rid", "class_name", "journal", "output",
                    "records_applied", "snapshot", "problems", "outcome"):
            assert key in run
    assert any(p["offset"] is not None and "file" in p
               for p in runs[2]["problems"])


def test_dry_run_writes_nothing(tmp_path, capsys):
    sample_journal(tmp_path, rid=1)
    before = tree_state(tmp_path)
    assert main([str(tmp_path), "--dry-run"]) == 0
    assert tree_state(tmp_path) == before
    out = capsys.readouterr().out
    assert "would be recovered" in out and "nothing written" in out


def test_output_writes_elsewhere(tmp_path, capsys):
    results, out_dir = tmp_path / "results", tmp_path / "out"
    sample_journal(results)
    before = tree_state(results)
    assert main([str(results), "--output", str(out_dir)]) == 0
    assert tree_state(results) == before
    assert (out_dir / "2025-03-04" / "10" / "000000042-Exp.h5").exists()


def test_quiet_prints_nothing_when_all_is_fine(tmp_path, capsys):
    sample_journal(tmp_path)
    assert main([str(tmp_path), "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_quiet_still_reports_losses(tmp_path, capsys):
    _damaged(tmp_path, rid=2)
    assert main([str(tmp_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "recovered_partial" in out and "artiq-recover:" in out


def test_verbose_lists_routine_runs_too(tmp_path, capsys):
    j = sample_journal(tmp_path, crash=False)
    j.close()
    artiq_write_results(os.path.join(os.path.dirname(j.path),
                                     "000000042-Exp.h5"), j.model, 42)
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "artiq-recover: 1 already_complete (1 journal)"]
    assert main([str(tmp_path), "-v"]) == 0
    assert capsys.readouterr().out.startswith("already_complete ")


def test_second_run_reports_already_recovered(tmp_path, capsys):
    sample_journal(tmp_path)
    assert main([str(tmp_path)]) == 0
    before = tree_state(tmp_path)
    assert main([str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    assert tree_state(tmp_path) == before


def test_force_recovers_a_live_journal(tmp_path, capsys):
    j = sample_journal(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, SRC, j.path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main([str(tmp_path)]) == 0
        assert "skipped_live" in capsys.readouterr().out
        assert main([str(tmp_path), "--force"]) == 0
        assert "recovered" in capsys.readouterr().out
    finally:
        holder.stdin.close()
        holder.wait(10)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    sample_journal(tmp_path, rid=1)
    sample_journal(tmp_path, rid=2)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([str(tmp_path), "--dry-run"]) == 0
    assert "artiq-recover" in terminal.getvalue()     # tqdm drew the bar
    assert "/2 [" in terminal.getvalue()             # counts journals


def test_command_runs_as_a_program_with_plain_output(tmp_path):
    sample_journal(tmp_path)
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run([sys.executable, "-m", "artiq_journal.cli.recover",
                           str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""            # no progress bar without a TTY
    assert proc.stdout.splitlines()[0].startswith("recovered")
