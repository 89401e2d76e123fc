"""What ``recover()`` found and did, per run and in total.

A :class:`Report` is plain data: the CLI prints it, ``--json`` serialises
it with :meth:`Report.to_json`, and library callers inspect it.  Nothing in
here touches the disk.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

#: Every outcome a run can have, and what it means:
#:
#: ``recovered``          results file written; nothing known to be lost
#: ``recovered_partial``  results file written, but some data was lost or
#:                        could not be stored (see the problems)
#: ``skipped_live``       the journal's writer is alive (lock held)
#: ``skipped_locked``     the lock is held by a process that is not the
#:                        writer the journal names (reported: pid, user)
#: ``skipped_unknown``    whether a writer is alive cannot be told (lock
#:                        file unreadable or not a regular file)
#: ``no_results_expected`` build() or prepare() raised: ARTIQ writes no
#:                        results file for such a run, so none is made
#: ``skipped_clean``      the journal was closed cleanly, or holds no file
#:                        at all: nothing to recover
#: ``already_complete``   ARTIQ's own results file is complete; left alone
#: ``already_recovered``  an earlier ``recover`` wrote the results file from
#:                        this very journal content
#: ``failed``             no results file could be written (see problems)
#: ``dry_run``            ``dry_run=True``: would be recovered (``would_be``
#:                        says whether fully or partially); nothing written
OUTCOMES = ("recovered", "recovered_partial", "skipped_live",
            "skipped_locked", "skipped_unknown", "skipped_clean",
            "no_results_expected", "already_complete", "already_recovered",
            "failed", "dry_run")

#: Outcomes that leave nothing for the user to do.
FINE_OUTCOMES = frozenset({"recovered", "skipped_live", "skipped_clean",
                           "no_results_expected", "already_complete",
                           "already_recovered"})

#: ``info``: expected or harmless (torn tail after a crash, escaped name);
#: ``warning``: all data kept but stored differently than ARTIQ would;
#: ``error``: data lost, untrusted or not stored.
SEVERITIES = ("info", "warning", "error")


@dataclass
class Problem:
    """One thing that went wrong, located as ``file:offset: reason``."""

    file: str
    offset: int | None
    reason: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.file if self.offset is None else \
            f"{self.file}:{self.offset}"
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunReport:
    """The result for one journal directory."""

    journal: str
    outcome: str = "failed"
    rid: int | None = None
    class_name: str | None = None
    #: The results file written, found, or (dry run) that would be written.
    output: str | None = None
    #: Where an earlier, partial or unreadable results file was moved.
    moved_aside: str | None = None
    records_applied: int = 0
    records_untrusted: int = 0
    last_seq: int | None = None
    #: Name of the checkpoint file the state started from (None: none).
    snapshot: str | None = None
    #: Why that checkpoint (or why none); "" when there is nothing to say.
    snapshot_note: str = ""
    #: Last stage the run reached (build/prepare/run/analyze/results_written).
    stage: str | None = None
    problems: list[Problem] = field(default_factory=list)
    #: For ``dry_run``: the outcome a real run would have.
    would_be: str | None = None

    @property
    def data_lost(self) -> bool:
        """True when some journaled data did not make it into the file."""
        return any(p.severity == "error" for p in self.problems)

    @property
    def fine(self) -> bool:
        """True when nothing needs the user's attention."""
        if self.outcome == "dry_run":
            return self.would_be == "recovered"
        # already_recovered of a partial recovery is still not fine: a
        # second run must give the same answer as the first.
        return self.outcome in FINE_OUTCOMES and not self.data_lost

    def to_dict(self) -> dict:
        data = asdict(self)
        data["problems"] = [p.to_dict() for p in self.problems]
        return data


@dataclass
class Report:
    """Everything one ``recover()`` call did."""

    runs: list[RunReport] = field(default_factory=list)
    #: Problems not tied to one run (unreadable directories, ...).
    problems: list[Problem] = field(default_factory=list)
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        """0: every run is fine (recovered, or nothing to do); 1: some run
        was not fully recovered, or part of a tree could not be searched."""
        if any(p.severity == "error" for p in self.problems):
            return 1
        return 0 if all(run.fine for run in self.runs) else 1

    def counts(self) -> dict[str, int]:
        """Number of runs per outcome (only outcomes that occurred)."""
        return dict(Counter(run.outcome for run in self.runs))

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, "dry_run": self.dry_run,
                "exit_code": self.exit_code, "counts": self.counts(),
                "problems": [p.to_dict() for p in self.problems],
                "runs": [run.to_dict() for run in self.runs]}

    def to_json(self, indent: int | None = None) -> str:
        """The whole report as one JSON document."""
        return json.dumps(self.to_dict(), indent=indent, default=_plain)


def _plain(value: Any) -> Any:
    # numpy scalars read back from an HDF5 file, and anything unexpected:
    # a report must always serialise.
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)
