"""Checking ARTIQ's results file before a journal may call itself done.

A journal is closed with reason ``results_written`` (and maybe deleted) only
after ARTIQ's own file is verified here: it opens as HDF5, holds the groups
ARTIQ's ``write_results`` writes, names the same RID, and is on the disk.
The file's name and root objects are the same in ARTIQ release-7, release-8
and master.
"""

from __future__ import annotations

import os

from ..journal.fsio import fsync_path

__all__ = ["ARTIQ_RESULTS_KEYS", "check_results_file", "fsync_file_and_dir"]

#: Root objects of the HDF5 file ARTIQ's worker writes; all present means
#: ``write_results`` ran to its end.
ARTIQ_RESULTS_KEYS = ("datasets", "archive", "artiq_version", "rid",
                      "start_time", "run_time", "expid")


def check_results_file(path: str, keys: tuple[str, ...],
                       rid: int | None = None) -> str | None:
    """None if ``path`` opens as HDF5, holds ``keys`` and (when ``rid`` is
    given) a root ``rid`` equal to it; else the problem, as text."""
    import h5py  # a dependency of the package; only needed here
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if rid is not None and not missing:
                if "rid" not in f:
                    return "has no rid"
                found = f["rid"][()]
                if found != rid:
                    return f"names RID {found}, not {rid}"
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return f"cannot be read as HDF5 ({exc})"
    if missing:
        return f"lacks {', '.join(missing)}"
    return None


def fsync_file_and_dir(path: str, directory: bool = True) -> None:
    """fsync ``path`` and (unless ``directory`` is false: a platform that
    cannot fsync directories) its directory.  ARTIQ never fsyncs its results
    file; once the journal is deleted the file is the only copy, so it must
    be on the disk first."""
    fsync_path(path)
    if directory:
        fsync_path(os.path.dirname(path))
