"""``artiq-journal doctor``: will the hook load in ARTIQ's worker?

Run it with the Python that runs ``artiq_master`` (the worker is started as
``sys.executable -m artiq.master.worker_impl`` with the master's
environment).  Each check is ``ok`` (True), ``failed`` (False: journaling
will not work) or a warning (None: works, but look).  Only reads, except
the results-directory check, which creates and removes one empty file.
"""

from __future__ import annotations

import importlib
import inspect
import os
import secrets
import site
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

PTH_NAME = "artiq_journal_autoload.pth"
AUTOLOAD = "artiq_journal.worker_hooks.autoload"
_PROBE = f"import sys; print({AUTOLOAD!r} in sys.modules)"


@dataclass
class Check:
    name: str
    ok: bool | None
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def _site_dirs() -> list[str]:
    dirs: list[str] = []
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # virtualenv's old site.py
        pass
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    # Nix wraps Python with NIX_PYTHONPATH / sitecustomize.addsitedir: the
    # package's site-packages is then on sys.path, not in getsitepackages.
    dirs += [p for p in sys.path if p.endswith("site-packages")]
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def check_package() -> Check:
    try:
        import artiq_journal
    except ImportError as exc:  # pragma: no cover - we are running in it
        return Check("package", False, f"cannot import artiq_journal: {exc}")
    return Check("package", True, f"artiq_journal {artiq_journal.__version__}"
                 f" from {os.path.dirname(artiq_journal.__file__)}")


def check_site() -> Check:
    if sys.flags.no_site:
        # ARTIQ starts its worker as `sys.executable -m ...` without -S, so
        # this alone does not stop the hook; the "hook" check decides.
        return Check("site", None, "this Python runs with -S "
                     "(sys.flags.no_site): .pth files are not processed in "
                     "it; a worker started without -S still processes them "
                     "(see the hook check)")
    return Check("site", True, "site module active (.pth files are "
                 "processed)")


def check_pth() -> Check:
    found = [os.path.join(d, PTH_NAME) for d in _site_dirs()
             if os.path.isfile(os.path.join(d, PTH_NAME))]
    if not found:
        return Check("pth", False, f"{PTH_NAME} is in no site directory "
                     f"({', '.join(_site_dirs()) or 'none'}); reinstall "
                     "the package (pip install artiq-journal)")
    return Check("pth", True, ", ".join(found))


def check_hook_loads(python: str = sys.executable) -> Check:
    env = dict(os.environ, ARTIQ_JOURNAL="1")
    try:
        out = subprocess.run([python, "-c", _PROBE], env=env, timeout=60,
                             capture_output=True, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("hook", False, f"cannot run {python}: {exc}")
    answer = out.stdout.strip()
    if out.returncode != 0 or answer not in ("True", "False"):
        return Check("hook", False, f"{python} -c ... failed "
                     f"(exit {out.returncode}): {out.stderr.strip()[-300:]}")
    if answer != "True":
        return Check("hook", False, f"with ARTIQ_JOURNAL=1, {python} did not"
                     f" import {AUTOLOAD} at start-up")
    return Check("hook", True, f"with ARTIQ_JOURNAL=1, {python} imports "
                 f"{AUTOLOAD} at start-up")


def check_switch(environ: Any = None) -> Check:
    environ = os.environ if environ is None else environ
    value = environ.get("ARTIQ_JOURNAL")
    on = (value or "").strip().lower() in ("1", "true", "yes", "on")
    if on:
        return Check("switch", True, f"ARTIQ_JOURNAL={value}")
    return Check("switch", None, "ARTIQ_JOURNAL is " + (
        "not set" if value is None else f"{value!r} (off)") +
        " here: start artiq_master with ARTIQ_JOURNAL=1")


def check_results_dir(results: str) -> Check:
    target = results if os.path.isdir(results) else \
        os.path.dirname(os.path.abspath(results))
    probe = os.path.join(target, f".artiq-journal-doctor-"
                                 f"{secrets.token_hex(4)}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_WRONLY, 0o666)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Check("results", False, f"cannot create files in {target}: "
                     f"{exc.strerror or exc}")
    note = "" if target == results else " (does not exist yet; its " \
                                        "parent is writable)"
    return Check("results", True, f"{os.path.abspath(results)} writable"
                 + note)


def check_artiq() -> Check:
    try:
        artiq = importlib.import_module("artiq")
    except Exception as exc:
        return Check("artiq", False, f"ARTIQ is not importable here "
                     f"({type(exc).__name__}: {exc}): run doctor with the "
                     "Python that runs artiq_master")
    version = getattr(artiq, "__version__", "unknown")
    return Check("artiq", True, f"ARTIQ {version} from "
                 f"{os.path.dirname(getattr(artiq, '__file__', '') or '')}")


def check_adapter() -> Check:
    try:
        worker_db = importlib.import_module("artiq.master.worker_db")
        manager = worker_db.DatasetManager
    except Exception as exc:
        return Check("adapter", None, f"artiq.master.worker_db not "
                     f"importable ({type(exc).__name__}: {exc})")
    signature = f"DatasetManager.set{inspect.signature(manager.set)}"
    try:
        adapters = importlib.import_module(
            "artiq_journal.worker_hooks.adapters")
        select = adapters.select_adapter
    except (ImportError, AttributeError):
        return Check("adapter", None, signature)
    try:
        # A manager over an empty stand-in dataset DB: enough for its shape
        # (its constructor binds ddb.update).
        chosen = select(manager(_EmptyDatasetDB()))
    except Exception as exc:
        return Check("adapter", False, f"{signature}: no adapter "
                     f"({type(exc).__name__}: {exc}); runs stay unjournaled")
    return Check("adapter", True, f"{type(chosen).__name__} ({signature})")


class _EmptyDatasetDB:
    """The two methods ARTIQ's DatasetManager calls on its dataset DB."""

    def update(self, mod: Any) -> None:
        pass

    def get(self, key: str) -> Any:
        raise KeyError(key)


def run_checks(results: str = "results") -> list[Check]:
    return [check_package(), check_site(), check_pth(), check_hook_loads(),
            check_switch(), check_results_dir(results), check_artiq(),
            check_adapter()]
