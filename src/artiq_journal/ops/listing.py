"""``artiq-journal ls``: one line per journal under a tree.

Cheap by default -- a lock probe from /proc/locks, a directory listing and
at most ~128 KiB read per journal (the head of its first segment and the
tail of its last, see ``journal/tail.py``); so ``stage`` is the last stage
record in those windows and ``records`` is the last sequence number seen.
``verify=True`` reads every record (and replays, for the exact stage and
last checkpoint) of each journal that no live writer holds.

States, first match wins:

``running``    a live process holds the writer lock
``recovered``  ``artiq-recover`` dealt with it (the ``recovered`` marker)
``damaged``    the reader found error-level damage (cheaply: only damage
               inside the tail window; ``verify``: anywhere)
``finished``   the last record is a clean close (``results_written``:
               ARTIQ's results file holds the data)
``orphaned``   lock free and no clean close: ``artiq-recover`` will take it
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

from ..journal.constants import (CLOSE_RESULTS_WRITTEN, REC_CHECKPOINT,
                                 REC_CLOSE, REC_STAGE)
from ..journal.liveness import probe_lock
from ..journal.tail import look
from ..recovery.discover import find_journals, parse_journal_name
from ..recovery.publish import read_marker
from ..recovery.report import Problem
from ..replay import replay

STATES = ("running", "recovered", "damaged", "finished", "orphaned")


@dataclass
class JournalRow:
    path: str
    rid: int | None
    class_name: str | None
    state: str
    stage: str | None
    #: Last sequence number (records written, heartbeats included).
    records: int | None
    size: int
    last_write: float | None
    last_checkpoint_seq: int | None
    pid: int | None = None
    #: Verified by a full read (``verify=True``) rather than looked at.
    verified: bool = False
    problems: int | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def describe_journal(path: str, *, verify: bool = False) -> JournalRow:
    """The row of one journal.  Read-only; never raises for damage."""
    named = parse_journal_name(path)
    rid, class_name = named if named else (None, None)
    lock = probe_lock(path)
    view = look(path)
    records = view.records()
    stage = next((r.payload[0] for r in reversed(records)
                  if r.rtype == REC_STAGE and isinstance(r.payload, list)
                  and r.payload), None)
    checkpoint = next((r.seq for r in reversed(view.tail)
                       if r.rtype == REC_CHECKPOINT), None)
    close_reason = view.tail[-1].payload[0] if view.tail \
        and view.tail[-1].rtype == REC_CLOSE and not view.torn_tail \
        and isinstance(view.tail[-1].payload, list) \
        and view.tail[-1].payload else None
    # "finished" promises the data is in ARTIQ's results file: only a
    # results_written close says so; any other is artiq-recover's.
    closed = close_reason == CLOSE_RESULTS_WRITTEN
    row = JournalRow(path, rid, class_name, "orphaned", stage,
                     view.last_seq, view.size, view.last_write, checkpoint,
                     pid=lock.pid)
    for r in view.head[:1]:
        if isinstance(r.payload, dict) and r.rtype == 1:
            row.pid = row.pid or r.payload.get("pid")
    if lock.held:
        row.state = "running"
        return row
    if verify:
        result = replay(path)
        row.verified = True
        errors = [d for d in result.diagnostics if d.severity == "error"]
        row.problems = len(errors)
        row.records = result.last_seq
        row.stage = result.state.stage
        row.last_checkpoint_seq = result.state.checkpoint_seq
        closed = result.clean_close
        if errors:
            row.detail = str(errors[0])
    if view.damage_seen and not row.verified:
        row.problems = 1
        row.detail = "damage in the last segment's tail (run verify)"
    marker = read_marker(path)
    if marker is not None:
        row.state = "recovered"
        row.detail = row.detail or (f"{marker.get('outcome')}: "
                                    f"{marker.get('results_file')}")
    elif row.problems:
        row.state = "damaged"
    elif closed:
        row.state = "finished"
    elif close_reason is not None:
        row.detail = row.detail or (f"closed without a verified results "
                                    f"file ({close_reason}): artiq-recover "
                                    "will take it")
    return row


def list_journals(roots: Iterable[str], *, verify: bool = False,
                  progress: Callable[[int, int], None] | None = None
                  ) -> tuple[list[JournalRow], list[Problem]]:
    """Rows for every journal under ``roots`` (sorted as found: date/hour
    order for ARTIQ's layout), and directories that could not be searched."""
    problems: list[Problem] = []
    found = find_journals([os.fspath(r) for r in roots], problems)
    rows = []
    for i, journal in enumerate(found):
        rows.append(describe_journal(journal.path, verify=verify))
        if progress is not None:
            progress(i + 1, len(found))
    return rows, problems
