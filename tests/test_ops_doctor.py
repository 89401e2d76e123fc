"""``artiq-journal doctor`` in real interpreters: what it says in this
environment, with the vendored ARTIQ importable, and under ``python -S``
(where .pth files, and so the hook, are never processed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import artiq_vendor

CLI = [sys.executable, "-m", "artiq_journal.cli.main", "doctor", "--json"]
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "src")


def _doctor(tmp_path, env, argv=CLI):
    res = subprocess.run(argv + ["--results", str(tmp_path)], env=env,
                         capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    doc = json.loads(res.stdout)
    assert doc["exit_status"] == res.returncode
    return {c["name"]: c for c in doc["checks"]}, res.returncode


def test_installed_package_passes_the_hook_checks(tmp_path):
    env = dict(os.environ, ARTIQ_JOURNAL="1")
    env.pop("PYTHONPATH", None)
    checks, _ = _doctor(tmp_path, env)
    for name in ("package", "site", "pth", "hook", "switch", "results"):
        assert checks[name]["ok"] is True, checks[name]
    env["ARTIQ_JOURNAL"] = "0"
    checks, _ = _doctor(tmp_path, env)
    assert checks["switch"]["ok"] is None  # a warning: set it for the master
    assert checks["hook"]["ok"] is True  # the subprocess sets it itself


def test_artiq_and_adapter_reported_when_artiq_is_importable(tmp_path):
    artiq_vendor.require()
    env = artiq_vendor.env(dict(os.environ, ARTIQ_JOURNAL="1"))
    checks, status = _doctor(tmp_path, env)
    print("artiq:", checks["artiq"]["detail"])
    print("adapter:", checks["adapter"]["detail"])
    assert checks["artiq"]["ok"] is True
    assert "DatasetManager.set(" in checks["adapter"]["detail"]
    assert status == 0 or checks["adapter"]["ok"] is False


def test_no_site_interpreter_is_flagged(tmp_path):
    # Importable through PYTHONPATH (not a site dir: no .pth processed).
    purelib = sysconfig.get_paths()["purelib"]
    env = dict(os.environ, ARTIQ_JOURNAL="1",
               PYTHONPATH=os.pathsep.join([SRC, purelib]))
    checks, _ = _doctor(tmp_path, env, [sys.executable, "-S"] + CLI[1:])
    assert checks["site"]["ok"] is None
    assert "-S" in checks["site"]["detail"]
    # ARTIQ's worker is started without -S: the hook check still passes.
    assert checks["hook"]["ok"] is True


def test_hook_check_fails_where_the_pth_is_not_processed(tmp_path):
    from artiq_journal.ops import doctor
    check = doctor.check_hook_loads(python=sys.executable)
    assert check.ok is True
    # An interpreter wrapper that always runs with -S: the probe fails.
    wrapper = tmp_path / "python-S"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    wrapper.chmod(0o755)
    check = doctor.check_hook_loads(python=str(wrapper))
    assert check.ok is False, check


def test_unwritable_results_directory_fails(tmp_path):
    if os.geteuid() == 0:
        # root writes anywhere; use a path under a regular file instead
        target = tmp_path / "file"
        target.write_text("")
        bad = target / "results"
    else:
        bad = tmp_path / "ro"
        bad.mkdir(mode=0o500)
    env = dict(os.environ, ARTIQ_JOURNAL="1")
    res = subprocess.run(CLI + ["--results", str(bad)], env=env,
                         capture_output=True, text=True)
    doc = json.loads(res.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["results"]["ok"] is False and res.returncode == 1
