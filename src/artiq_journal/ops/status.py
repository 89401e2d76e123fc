"""``artiq-journal status``: is a run alive, working, idle, hung or dead?

Signals, all read without disturbing the writer:

* the writer lock (``/proc/locks``: held, and by which pid) -- free means
  the process is gone (the kernel drops an flock however a process dies);
* the pid's state (``/proc/<pid>/stat``): ``stopped`` after SIGSTOP;
* heartbeat records (type 10, ``[unix_time]``), which a live writer's
  background thread appends every few seconds even when the experiment
  journals nothing, and the last write time of the segments;
* the last dataset operation: a record other than a heartbeat.  Records
  carry no time, so its age is bounded by the heartbeats around it: at
  least ``now - (first heartbeat after it)``.

Verdicts: ``working`` (heartbeats and operations fresh), ``idle`` (alive,
no dataset operation for longer than the threshold: waiting on hardware,
or computing), ``hung`` (lock held, no heartbeat for longer than the
threshold: the process holds the GIL in C code, deadlocked, or frozen),
``stopped`` (lock held, process stopped by a signal), ``dead`` (lock free,
no clean close: killed or crashed; recover it), ``finished`` (closed
cleanly), ``recovered`` (``artiq-recover`` dealt with it).
"""

from __future__ import annotations

import time
from typing import Any

from ..journal.constants import (CLOSE_RESULTS_WRITTEN, REC_CLOSE,
                                 REC_HEARTBEAT, REC_RUN_INFO, REC_STAGE)
from ..journal.inspect import describe
from ..journal.liveness import probe_lock, process_state
from ..journal.tail import TailRecord, look
from ..recovery.discover import parse_journal_name
from ..recovery.publish import read_marker

#: Heartbeat period assumed when the window holds fewer than two heartbeats
#: (the writer's default, ``DEFAULT_HEARTBEAT_INTERVAL``).
ASSUMED_INTERVAL = 10.0
#: A signal is stale after this many heartbeat periods.
STALE_PERIODS = 3.0
#: Never call anything stale sooner than this (timer jitter, slow disks).
MIN_STALE = 1.0

VERDICTS = ("working", "idle", "hung", "stopped", "dead", "finished",
            "recovered")


def _heartbeat_times(records: list[TailRecord]) -> list[tuple[int, float]]:
    out = []
    for r in records:
        if r.rtype == REC_HEARTBEAT and isinstance(r.payload, list) \
                and r.payload and isinstance(r.payload[0], (int, float)) \
                and not isinstance(r.payload[0], bool):
            out.append((r.seq, float(r.payload[0])))
    return out


def _interval(beats: list[tuple[int, float]]) -> float | None:
    gaps = [b[1] - a[1] for a, b in zip(beats, beats[1:]) if b[1] > a[1]]
    return min(gaps) if gaps else None


def status(journal_dir: str, *, n: int = 10, stale_after: float | None = None,
           now: float | None = None) -> dict[str, Any]:
    """The status of one journal as plain (JSON-ready) data; see the module
    docstring for ``verdict``.  Read-only; never raises for damage."""
    now = time.time() if now is None else now
    named = parse_journal_name(journal_dir)
    lock = probe_lock(journal_dir)
    view = look(journal_dir)
    records = view.records()
    run_info = next((r.payload for r in view.head if r.rtype == REC_RUN_INFO
                     and isinstance(r.payload, dict)), None)
    info_pid = run_info.get("pid") if run_info else None
    pid = lock.pid if lock.pid is not None else (
        info_pid if isinstance(info_pid, int) else None)
    proc = process_state(pid) if pid is not None else None

    beats = _heartbeat_times(view.tail)
    interval = _interval(beats)
    threshold = stale_after if stale_after is not None else max(
        STALE_PERIODS * (interval or ASSUMED_INTERVAL), MIN_STALE)
    last_beat = beats[-1][1] if beats else None
    activity = max([t for t in (last_beat, view.last_write)
                    if t is not None], default=None)
    activity_age = None if activity is None else max(0.0, now - activity)

    ops = [r for r in view.tail if r.rtype != REC_HEARTBEAT]
    last_op = next((r for r in reversed(ops) if r.rtype != REC_CLOSE), None)
    if last_op is not None and last_op.seq == view.last_seq:
        idle_for = None if view.last_write is None \
            else max(0.0, now - view.last_write)
        idle_exact = True
    else:
        after = [t for s, t in beats
                 if last_op is None or s > last_op.seq]
        idle_for = max(0.0, now - after[0]) if after else None
        idle_exact = False
    closed = bool(view.tail) and view.tail[-1].rtype == REC_CLOSE \
        and not view.torn_tail
    stage = next((r.payload[0] for r in reversed(records)
                  if r.rtype == REC_STAGE and isinstance(r.payload, list)
                  and r.payload), None)

    def ago(t: float | None) -> str:
        return "never" if t is None else f"{t:.1f} s ago"

    idle_text = ("unknown" if idle_for is None else
                 f"{'' if idle_exact else 'at least '}{idle_for:.1f} s")
    if not lock.held:
        marker = read_marker(journal_dir)
        if marker is not None:
            verdict, message = "recovered", (
                f"dead, recovered by artiq-recover ({marker.get('outcome')}:"
                f" {marker.get('results_file')})")
        elif closed:
            reason = view.tail[-1].payload
            if isinstance(reason, list) and reason:
                reason = reason[0]
            if reason == CLOSE_RESULTS_WRITTEN:
                verdict, message = "finished", ("finished (closed: ARTIQ's "
                                                "results file written)")
            else:
                verdict, message = "dead", (
                    f"ended without a verified results file (closed: "
                    f"{reason}); recover it with artiq-recover")
            proc = None
        else:
            verdict, message = "dead", (
                "dead: the writer is gone without closing (killed or "
                "crashed); recover it with artiq-recover")
        if verdict != "finished" and proc not in (None, "gone"):
            message += (f"; note: pid {pid} exists ({proc}) but does not "
                        "hold the lock (pid reused?)")
    elif proc in ("stopped", "traced"):
        verdict, message = "stopped", (
            f"hung or stopped: process {pid} is {proc} (SIGSTOP?); last "
            f"heartbeat {ago(None if last_beat is None else now - last_beat)}")
    elif activity_age is None or activity_age > threshold:
        verdict, message = "hung", (
            f"hung or stopped: no heartbeat or write for "
            f"{'?' if activity_age is None else f'{activity_age:.1f}'} s "
            f"(threshold {threshold:.1f} s; process {pid}: "
            f"{proc or 'unknown'})")
        if not beats:
            message += ("; no heartbeat records in this journal (writer "
                        "without heartbeats?)")
    elif idle_for is not None and idle_for > threshold:
        verdict, message = "idle", (
            f"alive, no dataset operation for {idle_text} (heartbeat "
            f"{ago(None if last_beat is None else now - last_beat)})")
    else:
        verdict, message = "working", (
            f"alive and working: last dataset operation {idle_text} ago")

    shown = [r for r in records if r.rtype != REC_HEARTBEAT][-n:] if n else []
    return {
        "path": journal_dir,
        "rid": named[0] if named else (run_info or {}).get("rid"),
        "class_name": named[1] if named else (run_info or {}).get(
            "class_name"),
        "verdict": verdict,
        "message": message,
        "lock_held": lock.held,
        "lock_probe": lock.method,
        "pid": pid,
        "run_info_pid": info_pid,
        "process": proc,
        "stage": stage,
        "last_seq": view.last_seq,
        "last_write": view.last_write,
        "last_heartbeat": last_beat,
        "heartbeat_age": None if last_beat is None else now - last_beat,
        "heartbeat_interval": interval,
        "stale_after": threshold,
        "idle_for": idle_for,
        "idle_for_exact": idle_exact,
        "closed": closed,
        "now": now,
        "last_ops": [{"seq": r.seq, "type": r.type_name,
                      "summary": describe(r.payload)} for r in shown],
    }
