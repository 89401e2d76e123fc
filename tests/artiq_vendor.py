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

Several ARTIQ generations (:data:`RELEASES`): ``"master"`` (the default,
``artiq-src.tar.gz``), ``"8"`` (``artiq8-src.tar.gz``, top dir
``artiq8-src/``) and ``"7"`` (``artiq7-src.tar.gz``).  Each is extracted into
its own directory.  Only one ARTIQ can be imported into a process, and the
test process imports master's; tests of another release run it in a
subprocess (:func:`env`, :func:`release_problem`, :func:`drive_worker`).
Releases 7 and 8 need ``llvmlite<0.45`` (see ../shared/vendor/README.md).

Run as a script (``python artiq_vendor.py drive JOB.json``), this module is
the "master" side of one run through ARTIQ's real ``Worker`` of whatever
ARTIQ is on ``sys.path`` (see :func:`drive_worker`).

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
import subprocess
import sys
import tarfile
import tempfile

__all__ = ["tarball", "path", "available", "require", "add_to_sys_path",
           "env", "import_module"]

ENV_VAR = "ARTIQ_JOURNAL_VENDOR"
TARBALL_NAME = "artiq-src.tar.gz"
#: release -> (tarball name, top directory inside it).
RELEASES = {"master": ("artiq-src.tar.gz", "artiq-src"),
            "8": ("artiq8-src.tar.gz", "artiq8-src"),
            "7": ("artiq7-src.tar.gz", "artiq7-src")}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDOR_DIR = os.path.join(os.path.dirname(_REPO), "shared", "vendor")
DEFAULT_TARBALL = os.path.join(VENDOR_DIR, TARBALL_NAME)


def _is_tree(directory: str) -> bool:
    return all(os.path.isdir(os.path.join(directory, package))
               for package in ("artiq", "sipyco"))


def _source(release: str = "master") -> tuple[str, str] | None:
    """``("tree", dir)`` or ``("tarball", file)``, or None if nothing is
    there."""
    name, top = RELEASES[release]
    default = os.path.join(VENDOR_DIR, name)
    location = os.environ.get(ENV_VAR) or default
    if os.path.isfile(location):
        # A tarball given explicitly: only for the release it is named for.
        if release == "master" or os.path.basename(location) == name:
            return "tarball", os.path.abspath(location)
        location = os.path.join(os.path.dirname(location), name)
        return ("tarball", os.path.abspath(location)) \
            if os.path.isfile(location) else None
    if os.path.isdir(location):
        candidates = [os.path.join(location, top)]
        if release == "master":
            candidates.insert(0, location)
        for candidate in candidates:
            if _is_tree(candidate):
                return "tree", os.path.abspath(candidate)
        inner = os.path.join(location, name)
        if os.path.isfile(inner):
            return "tarball", os.path.abspath(inner)
    return None


def tarball(release: str = "master") -> str | None:
    """The vendored tarball in use, or None (absent, or an extracted tree
    was given)."""
    source = _source(release)
    return source[1] if source and source[0] == "tarball" else None


def _cache_root() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"artiq-journal-vendor-{uid}")


def _extract(archive: str, top: str = "artiq-src") -> str:
    stat = os.stat(archive)
    final = os.path.join(_cache_root(),
                         f"{top}-{stat.st_mtime_ns}-{stat.st_size}")
    tree = os.path.join(final, top)
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
        if not _is_tree(os.path.join(staging, top)):
            raise FileNotFoundError(f"{archive}: no {top}/artiq and "
                                    f"{top}/sipyco inside")
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
def path(release: str = "master") -> str:
    """The extracted source directory of ``release`` (holding ``artiq/``
    and ``sipyco/``), extracting the tarball on first use.
    ``FileNotFoundError`` if there is no such vendored ARTIQ."""
    source = _source(release)
    if source is None:
        location = os.environ.get(ENV_VAR) or os.path.join(
            VENDOR_DIR, RELEASES[release][0])
        raise FileNotFoundError(
            f"no vendored ARTIQ {release} at {location} (set {ENV_VAR})")
    kind, location = source
    return location if kind == "tree" else _extract(location,
                                                    RELEASES[release][1])


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


def env(base: dict | None = None, release: str = "master",
        first: tuple = ()) -> dict:
    """A copy of ``base`` (default ``os.environ``) whose ``PYTHONPATH``
    starts with ``first`` then the vendored sources of ``release``, for
    subprocesses that import ARTIQ."""
    result = dict(os.environ if base is None else base)
    result["PYTHONPATH"] = os.pathsep.join(
        p for p in (*first, path(release), result.get("PYTHONPATH")) if p)
    return result


@functools.lru_cache(maxsize=None)
def release_problem(release: str,
                    module: str = "artiq.master.worker_impl") -> str | None:
    """None if ``module`` of ``release`` imports in a fresh interpreter
    (this venv's dependencies), else why not."""
    try:
        environment = env(release=release)
    except FileNotFoundError as exc:
        return str(exc)
    done = subprocess.run([sys.executable, "-c", f"import {module}"],
                          env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["?"])[-1]
    return None


def require_release(release: str) -> str:
    """Skip the calling test unless ``release`` is usable in a subprocess;
    returns its source directory."""
    problem = release_problem(release)
    if problem is not None:
        import pytest
        pytest.skip(f"vendored ARTIQ {release} unusable: {problem}")
    return path(release)


def drive_worker(job: dict, environment: dict, cwd: str,
                 timeout: float = 120) -> dict:
    """Run one experiment through the real ``artiq.master.worker.Worker``
    of the ARTIQ on ``environment``'s PYTHONPATH, in a subprocess playing
    the master (working directory ``cwd``).  ``job``: ``rid``, ``expid``,
    ``datasets`` (key -> [persist, value, metadata], the master's dataset
    DB), optional ``kill_worker_after`` / ``kill_master_after`` (SIGKILL the
    worker / this "master" once the experiment's ``progress`` file has that
    many lines).  Returns ``{"outcome", "error", "log"}`` (``log``: the
    messages the master received); outcome "master_killed" when the master
    was killed (its worker lives on, orphaned)."""
    import json
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=cwd,
                                     delete=False) as f:
        json.dump(job, f)
    out = f.name + ".out"
    done = subprocess.run([sys.executable, os.path.abspath(__file__),
                           "drive", f.name, out], env=environment, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode == -9 and job.get("kill_master_after") is not None:
        return {"outcome": "master_killed", "error": None, "log": []}
    try:
        with open(out) as result:
            return json.load(result)
    except FileNotFoundError:
        raise AssertionError(f"driver failed ({done.returncode}): "
                             f"{done.stderr[-3000:]}") from None


def master_handlers(datasets: dict, process_mod) -> dict:
    """What a master answers its ``Worker``: dataset DB reads and broadcast
    updates on ``datasets`` (key -> (persist, value, metadata), changed in
    place), no devices, never a pause or termination request."""
    import copy

    def update(mod):
        process_mod(datasets, copy.deepcopy(mod))

    return {
        "get_dataset": lambda key: datasets[key][1],
        "get_dataset_metadata": lambda key: datasets[key][2],
        "update_dataset": update,
        "get_device_db": lambda: {},
        "scheduler_check_pause": lambda rid: False,
        "scheduler_check_termination": lambda rid: False,
    }


def _progress_lines(progress: str) -> int:
    try:
        with open(progress) as f:
            return f.read().count("\n")
    except FileNotFoundError:
        return 0


def _drive(job_file: str, out_file: str) -> None:
    """The master side of :func:`drive_worker` (runs in the subprocess)."""
    import asyncio
    import json
    import logging
    import signal
    import time
    from artiq.master.worker import Worker
    from sipyco.sync_struct import process_mod

    with open(job_file) as f:
        job = json.load(f)
    datasets = {k: tuple(v) for k, v in job.get("datasets", {}).items()}
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append([record.levelname, record.getMessage()])

    logging.getLogger().addHandler(Collect())
    logging.getLogger().setLevel(logging.INFO)

    handlers = master_handlers(datasets, process_mod)
    progress = job.get("progress") or ""

    async def watch(worker, running, n, kill_master):
        deadline = time.monotonic() + 60
        while not running.done():
            if _progress_lines(progress) >= n:
                if kill_master:
                    os.kill(os.getpid(), signal.SIGKILL)
                os.kill(worker.ipc.process.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "no progress"
            await asyncio.sleep(0.002)
        await running

    async def drive():
        worker = Worker(handlers)
        try:
            await worker.build(job["rid"], "main", None, job["expid"], 0)
            await worker.prepare()
            kill_worker = job.get("kill_worker_after")
            kill_master = job.get("kill_master_after")
            if kill_worker is None and kill_master is None:
                await worker.run()
                await worker.analyze()
            else:
                running = asyncio.ensure_future(worker.run())
                await watch(worker, running, kill_worker or kill_master,
                            kill_master is not None)
            return "completed"
        finally:
            await worker.close()

    result = {"outcome": None, "error": None}
    try:
        result["outcome"] = asyncio.run(drive())
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result["outcome"] = "failed"
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["log"] = messages
    with open(out_file, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if sys.argv[1:2] == ["drive"]:
        _drive(sys.argv[2], sys.argv[3])
