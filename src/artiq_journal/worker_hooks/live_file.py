"""The automatic live file: ``<rid:09>-<Class>.partial.h5`` beside the
journal, refreshed while the run goes on (``ARTIQ_JOURNAL_LIVE_S``).

Why a side process.  The refresher is a separate Python process started by
the worker when the journal is attached.  It rebuilds the state from the
journal alone (``replay()``, exactly like ``artiq-journal export``), so it
takes no lock, shares no object with the experiment, never holds the
experiment's GIL, and always sees a consistent prefix of the records (a
record being written is a torn tail to it).  The experiment thread's only
cost is one non-blocking one-byte ``write`` to a pipe per checkpoint.

Publication.  Every refresh is :func:`~artiq_journal.recovery.export
.export_journal`: a temporary file created ``O_CREAT|O_EXCL|O_NOFOLLOW`` in
the results directory, written through its descriptor, fsynced and renamed
over ``.partial.h5``.  A reader (h5py, MATLAB, HDF5 tools; no SWMR needed)
that opens the file at any moment gets a complete file: the previous
refresh or the new one.  The file is the run's state as of the record
named by its ``artiq_journal/last_seq`` attribute, with the run's storage
policy applied (declarative part; custom ``store_dataset`` is not run, the
file's ``artiq_journal/problems`` says so).

When it is refreshed: every ``ARTIQ_JOURNAL_LIVE_S`` seconds, and at a
checkpoint once half a period has passed since the last refresh (pokes
arriving meanwhile are merged; so frequent checkpoints cannot keep a core
busy, and the file is at a checkpoint whenever the run checkpoints often);
never while the journal did not change.  The side process runs at a lower
CPU priority (``nice`` +10) than the experiment.

When the run ends (the pipe tells the side process):

* results file verified (or the storage policy wants none): the worker
  asks the side process to remove ``.partial.h5`` and waits for it to exit
  (before the journal may be deleted), then removes it too if still there;
* anything else -- the worker crashed or was killed (the pipe reaches EOF),
  ``run()`` ended without a verified results file, journaling stopped --:
  one last refresh, then the file is LEFT in place: it is the state as of
  the last journaled record.  ``artiq-recover`` writes the real
  ``<rid:09>-<Class>.h5`` (it never reads or touches ``.partial.h5``).

Run as ``python -m artiq_journal.worker_hooks.live_file JOURNAL OUTPUT
PERIOD``; stdin is the pipe (``c``: checkpoint, ``d``: done, remove the
file and exit; EOF: final refresh and exit).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

logger = logging.getLogger("artiq_journal")

__all__ = ["LiveFile", "partial_file_name", "PARTIAL_SUFFIX", "start"]

PARTIAL_SUFFIX = ".partial.h5"
#: Shortest time between two refreshes.
MIN_GAP_S = 1.0
#: How long the worker waits for the side process to finish at the end.
FINISH_TIMEOUT_S = 60.0
_POKE, _DONE = b"c", b"d"


def partial_file_name(rid: int, class_name: str) -> str:
    return f"{rid:09}-{class_name}{PARTIAL_SUFFIX}"


class LiveFile:
    """Worker side: the side process and the pipe to it.  ``poke`` and
    ``finish`` never raise and never block the experiment."""

    def __init__(self, journal_dir: str, output: str, interval: float) -> None:
        self.output = output
        env = dict(os.environ)
        # The side process must not journal itself, nor load the hook.
        env["ARTIQ_JOURNAL"] = "0"
        src = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(
            [src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                     if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "artiq_journal.worker_hooks.live_file",
             journal_dir, output, repr(float(interval))],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
            close_fds=True)
        self._fd = self.proc.stdin.fileno()
        os.set_blocking(self._fd, False)
        self._open = True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poke(self) -> None:
        """Ask for a refresh (a checkpoint): one non-blocking write."""
        if not self._open:
            return
        try:
            os.write(self._fd, _POKE)
        except BlockingIOError:
            pass  # the pipe is full: a refresh is asked for already
        except OSError:
            self._open = False  # the side process is gone

    def finish(self, remove: bool) -> None:
        """End the refresher: with ``remove``, the partial file is removed
        and the side process waited for; otherwise it makes one last
        refresh by itself and the file stays.  Never raises."""
        if not self._open and self.proc.stdin is None:
            return
        try:
            if remove and self._open:
                os.set_blocking(self._fd, True)
                try:
                    os.write(self._fd, _DONE)
                except OSError:
                    pass
            self._open = False
            self.proc.stdin.close()
            if remove:
                try:
                    self.proc.wait(FINISH_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.terminate()
                    self.proc.wait(10)
                try:
                    os.unlink(self.output)
                except FileNotFoundError:
                    pass
        except Exception as exc:  # noqa: BLE001 - never break the run
            logger.warning("artiq-journal: live file %s: cannot stop its "
                           "refresher cleanly: %s", self.output, exc)


def start(journal_dir: str, results_dir: str, rid: int, class_name: str,
          interval: float) -> "LiveFile | None":
    """Start the refresher of a run's live file; None (one warning) when it
    cannot be started -- the run goes on without a live file."""
    output = os.path.join(results_dir, partial_file_name(rid, class_name))
    try:
        return LiveFile(journal_dir, output, interval)
    except Exception as exc:  # noqa: BLE001 - never break the run
        logger.warning("artiq-journal: RID %s: cannot start the live file "
                       "%s: %s; the run goes on without it", rid, output, exc)
        return None


# -- the side process -------------------------------------------------------------


class _Follower:
    """The journal's state, kept up to date by reading only the records
    appended since the last refresh (a refresh of a scan of 10^6 points
    must not replay 10^6 records every few seconds).  Any doubt -- damage,
    an untrusted or unappliable record, a snapshot that moved the start --
    falls back on a full replay, which is what export does anyway."""

    def __init__(self, journal_dir: str) -> None:
        self.journal_dir = journal_dir
        self.result: Any = None
        self.end: Any = None

    def update(self) -> Any:
        from ..replay import replay
        if self.result is None or not self._follow():
            self.result = replay(self.journal_dir)
            self.end = None
        return self.result

    def _follow(self) -> bool:
        from ..journal.reader import JournalReader
        from ..runstate import BadRecord
        state = self.result.state
        reader = JournalReader(self.journal_dir, after_seq=state.last_seq,
                               start=self.end)
        applied = 0
        try:
            for batch in reader.iter_batches():
                for seq, rtype, payload, _seg, _off, trusted in batch:
                    if not trusted:
                        return False
                    state.apply(seq, rtype, payload)
                    applied += 1
        except BadRecord:
            return False
        if any(d.severity == "error" for d in reader.diagnostics):
            return False
        self.result.records_applied += applied
        self.result.clean_close = state.closed
        if reader.end is not None:
            self.end = reader.end
        return True


def _refresh(journal_dir: str, output: str, seen: Any,
             follower: "_Follower | None" = None) -> Any:
    from ..recovery.discover import fingerprint
    from ..recovery.export import export_journal
    now = fingerprint(journal_dir)
    if not now or now == seen:
        return seen     # nothing new (or the journal is gone)
    try:
        result = follower.update() if follower is not None else None
        export_journal(journal_dir, output, result=result)
    except OSError as exc:
        print(f"artiq-journal live file {output}: {exc}", file=sys.stderr)
        return seen
    return now


def _remove(output: str) -> None:
    try:
        os.unlink(output)
    except FileNotFoundError:
        pass


def main(argv: "list[str] | None" = None) -> int:
    journal_dir, output, period = (sys.argv[1:] if argv is None else argv)
    interval = max(float(period), 0.01)
    # Ctrl-C in the terminal of a run reaches this process too; it ends
    # when the worker's end of the pipe closes, never half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(10)     # the experiment's process comes first
    except (AttributeError, OSError):
        pass

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(0)  # unwinds export's clean-up of its temp file
    signal.signal(signal.SIGTERM, terminate)
    seen = None
    follower = _Follower(journal_dir)
    wanted = False
    last = 0.0
    due = time.monotonic() + interval
    while True:
        now = time.monotonic()
        if wanted:
            due = min(due, last + max(MIN_GAP_S, interval / 2))
        ready, _, _ = select.select([0], [], [], max(0.0, due - now))
        if ready:
            data = os.read(0, 4096)
            if _DONE in data:
                _remove(output)
                return 0
            if not data:
                # The last state, replayed whole: it is the one left behind.
                _refresh(journal_dir, output, seen)
                return 0
            wanted = True
            continue
        seen = _refresh(journal_dir, output, seen, follower)
        last = time.monotonic()
        wanted = False
        due = last + interval


if __name__ == "__main__":
    sys.exit(main())
