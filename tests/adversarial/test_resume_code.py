"""Issue 12 item 13: ``artiq-journal resume`` runs the experiment file the
journal names -- it shows the path and content hash, refuses when the file
changed since the checkpoint unless told ``--allow-changed``, and a hostile
expid in a journal is a clear error, not a traceback."""

from __future__ import annotations

from adversarial_support import Journal, journal_dir, run_cli, run_info
from artiq_journal.journal.constants import REC_CHECKPOINT

EXPERIMENT = '''
from artiq_journal.runner.experiment import *
from artiq_journal.worker_hooks import JournalResumable


class Steps(JournalResumable, EnvExperiment):
    def run(self):
        state = self.resume_state(None)
        if state is None:
            self.set_dataset("ys", [])
            state = {"i": 0}
        for i in range(state["i"], 6):
            self.append_to_dataset("ys", i)
            self.checkpoint(i=i + 1)
            if i == 2 and FAIL:
                raise RuntimeError("stopped half-way")
'''


def _interrupted_run(tmp_path):
    exp = tmp_path / "steps.py"
    exp.write_text("FAIL = True\n" + EXPERIMENT)
    results = str(tmp_path / "results")
    first = run_cli(["-m", "artiq_journal.cli.main", "run", str(exp),
                     "--results", results, "--rid", "5"], cwd=str(tmp_path))
    assert first.returncode == 1, first.stdout + first.stderr
    return exp, results


def test_resume_shows_the_file_and_refuses_changed_code(tmp_path):
    exp, results = _interrupted_run(tmp_path)
    exp.write_text("FAIL = False\n" + EXPERIMENT)       # the code changed
    refused = run_cli(["-m", "artiq_journal.cli.main", "resume", "5",
                       "--results", results], cwd=str(tmp_path))
    assert refused.returncode == 1
    assert "changed since RID 5 ran" in refused.stderr
    assert "--allow-changed" in refused.stderr
    assert str(exp) in refused.stdout and "sha256" in refused.stdout
    allowed = run_cli(["-m", "artiq_journal.cli.main", "resume", "5",
                       "--results", results, "--allow-changed"],
                      cwd=str(tmp_path))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "CHANGED since that run" in allowed.stdout


def test_resume_of_unchanged_code_says_so(tmp_path):
    exp, results = _interrupted_run(tmp_path)
    exp.write_text(exp.read_text())            # rewritten, same content
    proc = run_cli(["-m", "artiq_journal.cli.main", "resume", "5",
                    "--results", results], cwd=str(tmp_path))
    assert "the file that run executed" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr


def test_hostile_expid_is_a_clear_error(tmp_path):
    results = tmp_path / "results"
    for rid, expid, extra in (
            (7, {"file": 5, "arguments": {}}, {}),
            (8, {"file": "x.py", "arguments": [1, 2]}, {}),
            (9, {"file": "x.py"}, {"expid_pyon": "{\"__jsonclass__\": 1"})):
        path = journal_dir(results, rid=rid, class_name="Evil")
        info = run_info(path, rid, "Evil")
        info["expid"] = expid
        info.update(extra)
        j = Journal(path, rid, "Evil", info=info)
        j.append(REC_CHECKPOINT, [{"i": 1}])
        j.crash()
        proc = run_cli(["-m", "artiq_journal.cli.main", "resume", str(rid),
                        "--results", str(results)], cwd=str(tmp_path))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "error:" in proc.stderr and path in proc.stderr
