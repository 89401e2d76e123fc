"""Is a journal's writer alive?  Probes that never disturb the writer.

:func:`journal.lock.is_locked` answers by *taking* the lock for an instant:
a writer opening the journal at that instant would fail with JournalLocked.
Monitoring tools (``ls``, ``status``, ``export``, ``inspect``) run against
live runs all the time, so they ask the kernel instead: on Linux,
``/proc/locks`` lists every flock with the holder's pid and the locked
file's device and inode.  Only where that file is unavailable (not Linux)
do they fall back on the take-and-release probe, and say so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import lock as journal_lock

@dataclass
class LockProbe:
    """``held``: a live process holds the writer lock.  ``pid``: the
    holder (as seen in this pid namespace), when known.  ``method``:
    ``proc-locks`` (passive), ``flock-probe`` (took and released the lock:
    not passive), or ``no-lock-file`` (no writer ever locked it)."""

    held: bool
    pid: int | None
    method: str


def probe_lock(journal_dir: str) -> LockProbe:
    """Who holds ``journal_dir``'s writer lock; passive where possible.
    Never raises."""
    path = journal_lock.lock_path(journal_dir)
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return LockProbe(False, None, "no-lock-file")
    pids = journal_lock.proc_lock_holders(st.st_dev, st.st_ino)
    if pids is None:
        return LockProbe(journal_lock.is_locked(journal_dir), None,
                         "flock-probe")
    return LockProbe(bool(pids), pids[0] if pids else None, "proc-locks")


#: /proc/<pid>/stat state letters, in words.
_STATES = {"R": "running", "S": "sleeping", "D": "disk-wait",
           "T": "stopped", "t": "traced", "Z": "zombie", "X": "dead",
           "I": "idle", "P": "parked", "W": "paging", "K": "wakekill"}


def process_state(pid: int) -> str | None:
    """``running``, ``sleeping``, ``stopped`` (SIGSTOP/SIGTSTP), ``zombie``,
    ... for a live ``pid``; ``gone`` if no such process; None if unknown
    (no /proc and no permission to signal it)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "gone"
    except OSError:
        data = b""
    if data:
        # "pid (comm) S ...": comm may hold spaces and parentheses.
        close = data.rfind(b")")
        letter = data[close + 2:close + 3].decode("ascii", "replace")
        return _STATES.get(letter, letter or None)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "gone"
    except (PermissionError, OverflowError, ValueError):
        return None
    return "alive"
