"""Output helpers shared by the operations verbs: JSON documents, a tqdm
bar on a terminal only, and human-readable sizes and ages."""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

#: Exit codes of every verb (``--help`` says so).
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
EXIT_EPILOG = ("exit status: 0 ok, 1 problems found (see the output), "
               "2 usage error (bad arguments, no such journal).")


def print_json(document: dict) -> None:
    print(json.dumps(document, indent=2, allow_nan=False, default=str))


def tty_progress(desc: str, enabled: bool = True
                 ) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """``(update(done, total), close())``: a tqdm bar on stderr when it is
    a terminal (and ``enabled``), nothing otherwise (scripts stay quiet)."""
    if not (enabled and sys.stderr.isatty()):
        return (lambda done, total: None), (lambda: None)
    from tqdm import tqdm
    bar = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc=desc, unit="journal",
                            file=sys.stderr, leave=False))
        bar[0].n = done
        bar[0].refresh()

    def close() -> None:
        if bar:
            bar[0].close()
    return update, close


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024.0
    return str(n)


def human_age(t: float | None, now: float | None = None) -> str:
    if t is None:
        return "-"
    age = max(0.0, (time.time() if now is None else now) - t)
    if age < 120:
        return f"{age:.0f}s ago"
    if age < 7200:
        return f"{age / 60:.0f}m ago"
    if age < 172800:
        return f"{age / 3600:.1f}h ago"
    return f"{age / 86400:.1f}d ago"
