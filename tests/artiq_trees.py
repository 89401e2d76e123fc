"""The vendored ARTIQ trees of each release, extracted (tests only).

``tree("7")``, ``tree("8")``, ``tree("master")``: the directory holding
``artiq/`` and ``sipyco/`` of ARTIQ release-7, release-8 or master, from
``<repo>/../shared/vendor/{artiq7-src,artiq8-src,artiq-src}.tar.gz``
(``ARTIQ_JOURNAL_VENDOR_DIR`` overrides the directory).  Each tarball is
extracted once per session-independent cache key (mtime, size) into
``<tmp>/artiq-journal-trees-<uid>/`` and renamed into place only when
complete.  ``require(release)`` skips the calling test when the tarball is
absent or ARTIQ's worker does not import with the installed dependencies
(checked in a subprocess, so several releases never share one
interpreter).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

RELEASES = ("7", "8", "master")
_TOP = {"7": "artiq7-src", "8": "artiq8-src", "master": "artiq-src"}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(_REPO, "src")
PTH = os.path.join(SRC, "artiq_journal", "worker_hooks",
                   "artiq_journal_autoload.pth")


def vendor_dir() -> str:
    return os.environ.get("ARTIQ_JOURNAL_VENDOR_DIR") or os.path.join(
        os.path.dirname(_REPO), "shared", "vendor")


def _is_tree(directory: str) -> bool:
    return all(os.path.isdir(os.path.join(directory, p))
               for p in ("artiq", "sipyco"))


@functools.lru_cache(maxsize=None)
def tree(release: str) -> str:
    """The extracted tree of ``release``; FileNotFoundError if absent."""
    top = _TOP[release]
    archive = os.path.join(vendor_dir(), top + ".tar.gz")
    st = os.stat(archive)
    cache = os.path.join(tempfile.gettempdir(),
                         f"artiq-journal-trees-{os.getuid()}")
    final = os.path.join(cache, f"{top}-{st.st_mtime_ns}-{st.st_size}")
    result = os.path.join(final, top)
    if _is_tree(result):
        return result
    os.makedirs(cache, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="extracting-", dir=cache)
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:
                tar.extractall(staging)
        if not _is_tree(os.path.join(staging, top)):
            raise FileNotFoundError(f"{archive}: no {top}/artiq, sipyco")
        try:
            os.rename(staging, final)  # atomic: none or a complete tree
        except OSError:
            if not _is_tree(result):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


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
