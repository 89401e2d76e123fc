"""Find, extract and import the vendored (unmodified) ARTIQ and sipyco.

Tests use real ARTIQ as the reference (differential tests, real workers);
the ``artiq_journal`` package itself never imports it. Usage::

    import artiq_vendor

    def test_something():
        artiq_vendor.require()             # skip if ARTIQ is not usable
        from artiq.master.worker_db import DatasetManager
        ...
        subprocess.run([...], env=artiq_vendor.env())   # for child processes

The tarball is ``<repo>/../shared/vendor/artiq-src.tar.gz``; the environment
variable ``ARTIQ_JOURNAL_VENDOR`` overrides it with a tarball, a directory
holding ``artiq-src.tar.gz``, or an already extracted tree (a directory with
``artiq/`` and ``sipyco/``, or one holding ``artiq-src/``).

A tarball is extracted once into ``<tmp>/artiq-journal-vendor-<uid>/``,
keyed by its mtime and size, and renamed into place only when complete, so
concurrent test sessions share it safely and a crashed extraction is never
used.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import sys
import tarfile
import tempfile

__all__ = ["tarball", "path", "available", "require", "add_to_sys_path",
           "env", "import_module"]

ENV_VAR = "ARTIQ_JOURNAL_VENDOR"
TARBALL_NAME = "artiq-src.tar.gz"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TARBALL = os.path.join(os.path.dirname(_REPO), "shared", "vendor",
                               TARBALL_NAME)


def _is_tree(directory: str) -> bool:
    return all(os.path.isdir(os.path.join(directory, package))
               for package in ("artiq", "sipyco"))


def _source() -> tuple[str, str] | None:
    """``("tree", dir)`` or ``("tarball", file)``, or None if nothing is
    there."""
    location = os.environ.get(ENV_VAR) or DEFAULT_TARBALL
    if os.path.isfile(location):
        return "tarball", os.path.abspath(location)
    if os.path.isdir(location):
        for candidate in (location, os.path.join(location, "artiq-src")):
            if _is_tree(candidate):
                return "tree", os.path.abspath(candidate)
        inner = os.path.join(location, TARBALL_NAME)
        if os.path.isfile(inner):
            return "tarball", os.path.abspath(inner)
    return None


def tarball() -> str | None:
    """The vendored tarball in use, or None (absent, or an extracted tree
    was given)."""
    source = _source()
    return source[1] if source and source[0] == "tarball" else None


def _cache_root() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"artiq-journal-vendor-{uid}")


def _extract(archive: str) -> str:
    stat = os.stat(archive)
    final = os.path.join(_cache_root(), f"{stat.st_mtime_ns}-{stat.st_size}")
    tree = os.path.join(final, "artiq-src")
    if _is_tree(tree):
        return tree
    os.makedirs(_cache_root(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix="extracting-", dir=_cache_root())
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # Python without extraction filters (< 3.11.4)
                tar.extractall(staging)
        if not _is_tree(os.path.join(staging, "artiq-src")):
            raise FileNotFoundError(f"{archive}: no artiq-src/artiq and "
                                    f"artiq-src/sipyco inside")
        try:
            # Atomic: a reader sees no directory or a complete one.
            os.rename(staging, final)
        except OSError:
            if not _is_tree(tree):  # not "another session won the race"
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tree


@functools.lru_cache(maxsize=None)
def path() -> str:
    """The extracted ``artiq-src`` directory (holding ``artiq/`` and
    ``sipyco/``), extracting the tarball on first use.
    ``FileNotFoundError`` if there is no vendored ARTIQ."""
    source = _source()
    if source is None:
        location = os.environ.get(ENV_VAR) or DEFAULT_TARBALL
        raise FileNotFoundError(
            f"no vendored ARTIQ at {location} (set {ENV_VAR})")
    kind, location = source
    return location if kind == "tree" else _extract(location)


def add_to_sys_path() -> str:
    """Put the vendored sources first on ``sys.path`` (once); returns
    :func:`path`."""
    tree = path()
    if tree not in sys.path:
        sys.path.insert(0, tree)
    return tree


@functools.lru_cache(maxsize=None)
def _import_problem(module: str) -> str | None:
    try:
        add_to_sys_path()
        importlib.import_module(module)
    except Exception as e:  # missing vendor, missing dependency, ...
        return f"{type(e).__name__}: {e}"
    return None


def available(module: str = "artiq.master.worker_db") -> bool:
    """Whether vendored ARTIQ is present and ``module`` imports with it (its
    dependencies installed). Imports it into this process as a side
    effect."""
    return _import_problem(module) is None


def require(module: str = "artiq.master.worker_db") -> str:
    """Skip the calling test (pytest) unless :func:`available`; returns
    :func:`path`."""
    problem = _import_problem(module)
    if problem is not None:
        import pytest
        pytest.skip(f"vendored ARTIQ unusable ({module}): {problem}")
    return path()


def import_module(module: str):
    """``require(module)``, then the imported module."""
    require(module)
    return importlib.import_module(module)


def env(base: dict | None = None) -> dict:
    """A copy of ``base`` (default ``os.environ``) whose ``PYTHONPATH``
    starts with the vendored sources, for subprocesses that import ARTIQ."""
    result = dict(os.environ if base is None else base)
    result["PYTHONPATH"] = os.pathsep.join(
        p for p in (path(), result.get("PYTHONPATH")) if p)
    return result
