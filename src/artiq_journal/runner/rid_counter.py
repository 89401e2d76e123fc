"""Run ids for the built-in runner, allocated like ARTIQ's master does.

The last RID is cached in ``last_rid.pyon`` (a decimal number and a newline,
as ARTIQ writes it); without the cache it is recovered from the names of the
files under ``results/<date>/<hour>/``. Unlike ARTIQ's counter, allocation
holds a file lock (several runners may share a results directory) and the
cache is written durably: a RID reused after a power failure would give a
crashed run's journal and a new run the same name.
"""

from __future__ import annotations

import os
import re
import tempfile

from filelock import FileLock

__all__ = ["RIDCounter"]

_DAY = re.compile(r"\d\d\d\d-\d\d-\d\d")
_HOUR = re.compile(r"\d\d(-\d\d)?")
# Results files, and anything else named after a run (journals of runs that
# crashed before writing results) -- they own their RID too.
_RUN_FILE = re.compile(r"(\d{9})-.*\.(h5|journal)")


class RIDCounter:
    """Hands out increasing RIDs; safe across processes sharing the files."""

    def __init__(self, cache_filename: str = "last_rid.pyon",
                 results_dir: str = "results") -> None:
        self.cache_filename = os.path.abspath(cache_filename)
        self.results_dir = results_dir
        self._lock = FileLock(self.cache_filename + ".lock")

    def get(self) -> int:
        """A RID never returned before for these files; the cache holding it
        is on disk (fsynced) before it is returned."""
        with self._lock:
            try:
                with open(self.cache_filename, "r") as f:
                    last = int(f.read())
            except FileNotFoundError:
                last = self._last_rid_from_results()
            rid = last + 1
            self._store(rid)
        return rid

    def _store(self, rid: int) -> None:
        directory = os.path.dirname(self.cache_filename)
        with tempfile.NamedTemporaryFile("w", dir=directory,
                                         delete=False) as f:
            f.write(f"{rid}\n")
            f.flush()
            # fsync before the rename, or a crash could leave an empty cache
            os.fsync(f.fileno())
            tmpname = f.name
        os.replace(tmpname, self.cache_filename)
        # fsync the directory, or the rename may be lost on power failure
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _last_rid_from_results(self) -> int:
        last = -1
        for day in _listdir(self.results_dir, _DAY):
            day_path = os.path.join(self.results_dir, day)
            for hour in _listdir(day_path, _HOUR):
                for name in _listdir(os.path.join(day_path, hour), _RUN_FILE):
                    last = max(last, int(name[:9]))
        return last


def _listdir(path: str, pattern: re.Pattern) -> list[str]:
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [name for name in names if pattern.fullmatch(name)]
