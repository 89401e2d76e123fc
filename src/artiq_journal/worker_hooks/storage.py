"""The storage policy inside the worker, and ``write_results()``.

Where the policy is taken from and recorded:

* at attach time (before ``build()``), from the experiment *class*
  (``journal_storage`` class attribute, custom ``store_dataset`` /
  ``write_metadata``): run-info key ``storage_policy``;
* after ``build()``, from the instance (``self.journal_storage = ...`` in
  ``build()``): when it differs, a second ``run_info`` record (the same map,
  new ``storage_policy``; the last run_info record wins).  That policy is
  final: later changes are ignored, so ARTIQ's file, the live file and a
  recovered file all use the one the journal holds.

ARTIQ's own file.  The automatic hook already wraps the manager's
``write_hdf5(f)``; with a policy it writes the groups through
:class:`~artiq_journal.storage_layout.Layout` instead, runs
``write_metadata(f)`` when ARTIQ closes the file (after ARTIQ's root
datasets), and for "no results file" removes the file once ARTIQ closed it.
Never-break rule: if any of that raises (our code or the experiment's
``store_dataset``), ONE warning is logged, the half-written groups are
deleted and ARTIQ's own ``write_hdf5`` writes them: the file is then what
ARTIQ writes without us.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from ..storage_layout import Layout
from .live import LiveJournal, live_journal

logger = logging.getLogger("artiq_journal")

__all__ = ["policy_data", "capture_layout", "write_hdf5_with_layout",
           "write_metadata", "remove_results_file", "write_results"]


def policy_data(experiment: Any) -> "dict | None":
    """The plain-data storage policy of an experiment class or instance, or
    None for ARTIQ's layout.  TypeError for a bad ``journal_storage``."""
    layout = Layout.of_experiment(experiment)
    return None if layout is None else layout.policy.to_data()


def capture_layout(live: "LiveJournal | None", experiment: Any,
                   rid: Any = None) -> "Layout | None":
    """The layout of ``experiment`` after its ``build()``; records it in the
    journal when it differs from the run-info's.  An invalid policy: one
    warning, ARTIQ's layout.  Never raises."""
    try:
        layout = Layout.of_experiment(experiment)
    except Exception as exc:  # noqa: BLE001 - never break the run
        logger.warning("artiq-journal: RID %s: storage policy ignored: %s",
                       rid, exc)
        layout = None
    data = None if layout is None else layout.policy.to_data()
    if live is not None and live.active and \
            data != live.run_info.get("storage_policy"):
        try:
            live.update_run_info(storage_policy=data)
        except Exception as exc:  # noqa: BLE001 - the stop policy raises
            from ..errors import JournalFailed
            if isinstance(exc, JournalFailed):
                raise
            logger.warning("artiq-journal: RID %s: cannot record the storage "
                           "policy: %s", rid, exc)
    if live is not None and layout is not None and \
            not layout.results_file and live.live_file is not None:
        live._end_live_file(True)   # no results file: no live file either
    return layout


def write_hdf5_with_layout(layout: Layout, original: Callable, f: Any,
                           datasets: Callable[[], Any],
                           rid: Any = None) -> None:
    """ARTIQ's ``write_hdf5(f)`` under ``layout``, the datasets from
    ``datasets()``; on any failure, one warning and ARTIQ's own
    ``original(f)`` (whose exceptions propagate, exactly as without
    us)."""
    try:
        layout.write_hdf5(f, datasets())
        return
    except Exception as exc:  # noqa: BLE001 - never break the run
        logger.warning("artiq-journal: RID %s: the storage policy could not "
                       "be applied to the results file (%s: %s); ARTIQ's own "
                       "layout is written instead", rid, type(exc).__name__,
                       exc)
    for name in ("datasets", "archive"):
        try:
            if name in f:
                del f[name]
        except Exception:  # noqa: BLE001 - ARTIQ's write then reports it
            pass
    original(f)


def write_metadata(layout: "Layout | None", f: Any, rid: Any = None) -> None:
    """Run the experiment's ``write_metadata(f)``; a failure is one
    warning.  Never raises."""
    if layout is None or layout.write_metadata is None:
        return
    try:
        layout.write_metadata_into(f)
    except Exception as exc:  # noqa: BLE001 - never break the run
        logger.warning("artiq-journal: RID %s: the experiment's "
                       "write_metadata raised (%s: %s)", rid,
                       type(exc).__name__, exc)


def remove_results_file(path: str) -> None:
    """The storage policy wants no results file: remove the one ARTIQ just
    wrote (and fsync the directory, so it does not come back)."""
    from ..journal.fsio import fsync_path
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    try:
        fsync_path(os.path.dirname(path) or ".")
    except OSError:
        pass  # the file is gone from the name space either way


def _manager_of(experiment_or_mgr: Any) -> Any:
    mgr = getattr(experiment_or_mgr, "_HasEnvironment__dataset_mgr", None)
    return experiment_or_mgr if mgr is None else mgr


def write_results(experiment_or_mgr: Any, path: "str | None" = None) -> str:
    """Write the run's results file as of now -- the state after the last
    journaled record, the storage policy applied (with an experiment, its
    custom ``store_dataset``/``write_metadata`` too) -- and return its path.
    Callable from the experiment at any time (``self`` or its dataset
    manager); the run goes on.  ``path`` defaults to
    ``<rid:09>-<Class>.export.h5`` in the run's results directory.

    Same guarantees and layout as ``artiq-journal export``: atomic
    (``O_EXCL|O_NOFOLLOW`` temp file written through its descriptor,
    fsync, rename, directory fsync; a reader sees the old or the new file),
    ``artiq_journal`` group with ``exported`` true.  ValueError when the
    run is not journaled; OSError when the file cannot be written."""
    from ..recovery.export import (ReplayResult, _write_atomically,
                                   default_output_name)
    from ..recovery.hdf5_out import RecoveryInfo, layout_of_run
    live = live_journal(_manager_of(experiment_or_mgr))
    if live is None or not live.active:
        raise ValueError("write_results(): this run is not journaled "
                         "(ARTIQ_JOURNAL=1, or attach())")
    state = live.run_state()
    if path is None:
        path = os.path.join(live.results_dir, default_output_name(
            live.path, live.rid, live.run_info.get("class_name")))
    layout = None
    if experiment_or_mgr is not _manager_of(experiment_or_mgr):
        layout = capture_layout(None, experiment_or_mgr, live.rid)
        if layout is not None:
            # The recorded declarative policy, the experiment's own code.
            recorded = layout_of_run(live.run_info)
            if recorded is not None:
                layout = Layout(recorded.policy, layout.store_dataset,
                                layout.write_metadata)
    if layout is None:
        layout = layout_of_run(live.run_info)
    info = RecoveryInfo(journal=live.path, rid=live.rid,
                        fingerprint=[], records_applied=state.last_seq)
    result = ReplayResult(live.path, state)
    _write_atomically(os.path.abspath(path), result, info, "live",
                      layout=layout)
    return os.path.abspath(path)
