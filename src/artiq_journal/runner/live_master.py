"""Is a live ``artiq_master`` using this results tree?

ARTIQ's master keeps its RID counter in memory (seeded from
``last_rid.pyon`` in its working directory at start-up) and writes
``results/`` under that working directory.  A run started beside it by
anything else -- ``artiq-journal resume`` without ``--master`` -- would take
a RID the master later hands out again, and one of the two results files
would overwrite the other.  So such commands first look for a master that
owns the tree: a process whose command line runs ``artiq_master`` (the
console script, or ``python -m artiq.frontend.artiq_master``) and whose
working directory is the parent of the results directory.

Linux only (``/proc/<pid>/cmdline`` and ``/proc/<pid>/cwd``); elsewhere, and
for processes of other users whose cwd cannot be read, nothing is found.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["LiveMaster", "masters_owning"]


@dataclasses.dataclass(frozen=True)
class LiveMaster:
    pid: int
    cwd: str
    cmdline: str


def _is_master(argv: list[str]) -> bool:
    for i, arg in enumerate(argv[:4]):
        name = os.path.basename(arg)
        if name in ("artiq_master", "artiq_master.py"):
            return True
        if arg == "-m" and i + 1 < len(argv) and \
                argv[i + 1] == "artiq.frontend.artiq_master":
            return True
    return False


def masters_owning(results_dir: str, proc: str = "/proc") -> list[LiveMaster]:
    """Live ``artiq_master`` processes whose working directory is the
    parent of ``results_dir`` (both compared after resolving symlinks)."""
    owner = os.path.realpath(os.path.dirname(os.path.abspath(results_dir)))
    found = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                argv = [a.decode(errors="replace")
                        for a in f.read().split(b"\0") if a]
            if not _is_master(argv):
                continue
            cwd = os.readlink(os.path.join(proc, entry, "cwd"))
        except OSError:  # gone meanwhile, or another user's process
            continue
        if os.path.realpath(cwd) == owner:
            found.append(LiveMaster(int(entry), cwd, " ".join(argv)))
    return found
