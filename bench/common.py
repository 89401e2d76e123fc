"""Shared machinery of the benchmarks: side-by-side timing, result rows,
the table, scratch directories and a counting file layer.

Every target in ``bench/`` is a *ratio of two things measured in the same
run*: the candidates are interleaved (A B B A A B ...), each round times
every candidate once, and the figure is the median over rounds of the
per-round ratio.  On a noisy 2-core machine absolute numbers drift by tens
of percent between minutes; a ratio of neighbours in time does not.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run as "python bench/run.py" from a checkout without PYTHONPATH=src.
if importlib.util.find_spec("artiq_journal") is None:
    sys.path.insert(0, os.path.join(REPO, "src"))

from artiq_journal.journal.fsio import FileOps  # noqa: E402

now = time.perf_counter


# --- configuration ------------------------------------------------------------


@dataclass
class Config:
    """Sizes and repetition counts; ``quick()`` must finish in < 60 s."""

    mode: str = "full"
    rounds: int = 11            # interleaved rounds for the ratio figures
    hot_rounds: int = 61        # rounds of the hot-path figures (1, 2)
    hot_calls: int = 5_000      # calls per timed batch (~10 ms)
    always_ops: int = 300       # fdatasync'ed appends per batch
    array_mib: int = 64         # size of the large array
    array_rounds: int = 7
    recovery_records: int = 1_000_000
    recovery_rounds: int = 3
    snapshot_sizes: tuple = (1_000, 10_000, 100_000, 1_000_000)
    snapshot_run_lengths: tuple = (1_000, 1_000_000)
    snapshot_rounds: int = 7
    checkpoint_scan_lengths: tuple = (100_000, 1_000_000)
    scaling_sizes: tuple = (10_000, 100_000, 1_000_000)
    scaling_rounds: int = 3
    #: Largest N replayed in figure 7 (quick mode keeps replays short).
    scaling_replay_max: int = 10**8
    peer_lengths: tuple = (100, 1_000, 10_000, 100_000, 1_000_000)
    peer_rounds: int = 7        # cycles per scan length (see peers.py)
    peer_budget_s: float = 0.05  # time spent per (peer, length, round)

    @classmethod
    def quick(cls) -> "Config":
        return cls(mode="quick", rounds=7, hot_rounds=25, hot_calls=5_000,
                   always_ops=60, array_mib=32, array_rounds=4,
                   recovery_records=100_000, recovery_rounds=3,
                   snapshot_sizes=(1_000, 10_000, 100_000),
                   snapshot_run_lengths=(1_000, 100_000), snapshot_rounds=5,
                   checkpoint_scan_lengths=(50_000, 200_000),
                   scaling_sizes=(10_000, 100_000, 1_000_000),
                   scaling_rounds=3, scaling_replay_max=100_000,
                   peer_lengths=(100, 1_000, 10_000, 100_000), peer_rounds=5,
                   peer_budget_s=0.02)

    @classmethod
    def long(cls) -> "Config":
        return cls(mode="long", scaling_sizes=(10_000, 100_000, 1_000_000,
                                               10_000_000))


# --- results ------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table.  ``ratio`` is what the target is about;
    ``value`` and ``floor`` are the medians it came from, for the reader."""

    figure: str
    name: str
    value: str
    floor: str = ""
    ratio: float | None = None
    target: str = ""
    status: str = "INFO"      # PASS, MISS, INFO or n/a
    note: str = ""
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def check(ratio: float | None, target: str) -> str:
    """PASS/MISS for ``target`` of the form '<= x' or '>= x' (a unit may
    follow the number)."""
    if ratio is None or not target:
        return "INFO"
    op, bound = target.split()[:2]
    bound = float(bound.rstrip("x"))
    ok = ratio <= bound if op == "<=" else ratio >= bound
    return "PASS" if ok else "MISS"


def fmt_ns(seconds: float) -> str:
    """Human duration: ns / us / ms / s."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def fmt_rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e9:.2f} GB/s"


def table(rows: list[Row]) -> str:
    head = ("fig", "figure", "value", "floor (same run)", "ratio", "target",
            "")
    cells = [head] + [
        (r.figure, r.name, r.value, r.floor,
         "" if r.ratio is None else f"{r.ratio:.3g}x", r.target, r.status)
        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  [{r.figure}] {r.name}: {r.note}" for r in rows if r.note]
    if notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(notes)
    return "\n".join(lines)


# --- timing -------------------------------------------------------------------


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Collect, then keep the cyclic GC out of the timed region (as
    ``timeit`` does): a collection landing in one candidate's batch and not
    the other's is noise, not cost."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def interleave(candidates: dict[str, Callable[[], float]], rounds: int,
               warmup: int = 1) -> list[dict[str, float]]:
    """Run every candidate once per round, alternating the order (ABBA) so
    neither side always runs first; return one ``{name: sample}`` per round.
    A candidate returns its own measurement (seconds per op, usually).
    The first ``warmup`` rounds (cold caches, first page faults of new
    files) are run and discarded."""
    names = list(candidates)
    samples = []
    for r in range(warmup + rounds):
        order = names if r % 2 == 0 else names[::-1]
        sample = {}
        for name in order:
            with no_gc():
                sample[name] = candidates[name]()
        if r >= warmup:
            samples.append(sample)
    return samples


def median_of(samples: list[dict[str, float]], name: str) -> float:
    return statistics.median(s[name] for s in samples)


def median_ratio(samples: list[dict[str, float]],
                 num: Callable[[dict], float],
                 den: Callable[[dict], float]) -> float:
    """Median over rounds of num(round)/den(round)."""
    return statistics.median(num(s) / den(s) for s in samples)


# --- files --------------------------------------------------------------------


class Scratch:
    """A scratch directory on the same file system as the repository's
    default temp dir; removed on exit.  ``BENCH_DIR`` overrides where (to
    benchmark another disk)."""

    def __init__(self) -> None:
        base = os.environ.get("BENCH_DIR") or None
        self.root = tempfile.mkdtemp(prefix="artiq-journal-bench-", dir=base)
        self._n = itertools.count()

    def path(self, stem: str) -> str:
        """A fresh, not yet existing path under the scratch root."""
        return os.path.join(self.root, f"{stem}-{next(self._n)}")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def tree_bytes(path: str) -> int:
    """Total size of the files under ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


class CountingFileOps(FileOps):
    """The real file operations, counting syncs: data syncs of files
    (``fsync``/``fdatasync`` on a file descriptor) apart from directory
    syncs (``fsync_dir``)."""

    def __init__(self) -> None:
        self.file_syncs = 0
        self.dir_syncs = 0

    def fsync(self, fd: int) -> None:
        self.file_syncs += 1
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.file_syncs += 1
        os.fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        self.dir_syncs += 1
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def reset(self) -> tuple[int, int]:
        counts = (self.file_syncs, self.dir_syncs)
        self.file_syncs = self.dir_syncs = 0
        return counts


class TimingFileOps(FileOps):
    """The real file operations, recording how long each fdatasync took."""

    def __init__(self) -> None:
        self.sync_seconds: list[float] = []

    def fdatasync(self, fd: int) -> None:
        t0 = now()
        os.fdatasync(fd)
        self.sync_seconds.append(now() - t0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else float("nan")


_T0 = time.perf_counter()


def progress(msg: str) -> None:
    """One line on stderr (the table goes to stdout), with the seconds
    since the start."""
    print(f"[bench {time.perf_counter() - _T0:5.1f} s] {msg}",
          file=sys.stderr, flush=True)


def optional(module: str) -> Any:
    """Import ``module`` or return None (for parts written by others that
    may not exist yet, and for optional extras); the reason is kept in
    ``IMPORT_PROBLEMS[module]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        IMPORT_PROBLEMS[module] = f"{type(exc).__name__}: {exc}"
        return None


IMPORT_PROBLEMS: dict[str, str] = {}
