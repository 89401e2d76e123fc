"""Turn a command-line ``JOURNAL_OR_RID`` into a journal directory."""

from __future__ import annotations

import os

from ..errors import NotAJournal
from ..recovery.discover import (find_journals, looks_like_journal,
                                 parse_journal_name)
from ..recovery.report import Problem


def locate(arg: str, results_dir: str = "results") -> str:
    """A journal directory given by path, or by rid: the one
    ``<rid:09d>-<Class>.journal`` under ``results_dir``.  Raises NotAJournal
    when there is none, or more than one (naming them)."""
    if os.path.isdir(arg) and looks_like_journal(arg):
        return os.path.abspath(arg)
    if not arg.isdigit():
        raise NotAJournal("neither a journal directory nor a rid", path=arg)
    rid = int(arg)
    if not os.path.isdir(results_dir):
        raise NotAJournal("results directory not found (use --results)",
                          path=results_dir)
    problems: list[Problem] = []
    matches = [j.path for j in find_journals([results_dir], problems)
               if (parse_journal_name(j.path) or (None,))[0] == rid]
    if not matches:
        raise NotAJournal(f"no journal of rid {rid} "
                          "(<rid:09d>-<Class>.journal)", path=results_dir)
    if len(matches) > 1:
        raise NotAJournal(f"rid {rid} is ambiguous; pass the journal "
                          "directory: " + ", ".join(matches),
                          path=results_dir)
    return matches[0]
