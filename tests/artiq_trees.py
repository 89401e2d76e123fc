"""The vendored ARTIQ of each release, for tests that run its processes
(a real ``artiq_master``, ARTIQ's own test suites).

``tree(release)`` (``"7"``, ``"8"``, ``"master"``) is
:func:`artiq_vendor.path` (extracted once from ``../shared/vendor``).
``require(release)`` skips the calling test when the tarball is absent or
ARTIQ's master and worker do not import with the installed dependencies
(checked in a subprocess, so several releases never share one
interpreter).  ``hook_site``/``child_env`` give a child process the hook
the way an installed package loads it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tarfile

import artiq_vendor

RELEASES = ("7", "8", "master")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(_REPO, "src")
PTH = os.path.join(SRC, "artiq_journal", "worker_hooks",
                   "artiq_journal_autoload.pth")


def tree(release: str) -> str:
    """The extracted tree of ``release``; FileNotFoundError if absent."""
    return artiq_vendor.path(release)


@functools.lru_cache(maxsize=None)
def problem(release: str) -> str | None:
    """None if ``release``'s master and worker import here, else why not."""
    try:
        location = tree(release)
    except (OSError, tarfile.TarError) as exc:
        return f"no vendored ARTIQ {release}: {exc}"
    proc = subprocess.run(
        [sys.executable, "-c", "import artiq.master.worker_impl, "
         "artiq.frontend.artiq_master, sipyco.pc_rpc"],
        env=dict(os.environ, PYTHONPATH=location), capture_output=True,
        text=True, timeout=120)
    if proc.returncode:
        return (f"ARTIQ {release} does not import: "
                f"{proc.stderr.strip().splitlines()[-1:]}")
    return None


def require(release: str) -> str:
    """Skip unless ``release`` is usable; its tree."""
    why = problem(release)
    if why is not None:
        import pytest
        pytest.skip(why)
    return tree(release)


def hook_site(directory: str) -> str:
    """Write ``sitecustomize.py`` running the ``.pth`` line (what an
    installed artiq-journal does at start-up) into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    with open(PTH) as f:
        line = f.read()
    with open(os.path.join(directory, "sitecustomize.py"), "w") as f:
        f.write(line)
    return directory


def child_env(release: str, site: str | None, **extra: str) -> dict:
    """An environment for an ARTIQ process of ``release``: PYTHONPATH =
    [site,] our src, the tree; every ARTIQ_JOURNAL* variable removed, then
    ``extra`` added."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ARTIQ_JOURNAL")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (site, SRC, tree(release)) if p)
    env.update(extra)
    return env
