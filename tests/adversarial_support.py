"""Shared helpers of tests/adversarial/ (issue 12): journals written by
the real writer, hostile trees made from them by code, and subprocess
runners with timeouts so a hang fails instead of stalling CI.

Every test here reproduces a hole that was found in the landed code and
fails on it (run with ``PYTHONPATH=<old checkout>/src`` to see it); most
use only the public entry points (``recover()``, the console scripts, the
writer) so they run unchanged against older code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from test_recovery import (SRC, Journal, artiq_write_results,
                           journal_dir, run_info, sample_journal)

__all__ = ["SRC", "Journal", "artiq_write_results", "journal_dir",
           "run_info", "sample_journal", "run_cli", "h5_beside",
           "as_root"]


def h5_beside(journal: str) -> str:
    return journal[:-len(".journal")] + ".h5"


def run_cli(args: list, *, timeout: float = 60, env: dict | None = None,
            preexec_fn=None, cwd: str | None = None
            ) -> subprocess.CompletedProcess:
    """``python -m artiq_journal.cli.<...>`` in a fresh interpreter, with
    this checkout's package first on the path."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], capture_output=True,
                          text=True, errors="surrogateescape",
                          timeout=timeout, env=full_env,
                          preexec_fn=preexec_fn, cwd=cwd)


as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root (recovery run as root over others' files)")
