"""A run's state rebuilt from its journal: identity, stage, datasets, the
user's last checkpoint.  ``apply(record)`` is the one interpretation of
journal records (used by recovery, resume and inspection); dataset
semantics themselves live in :mod:`artiq_journal.state`.

Record payloads are documented in docs/FORMAT.md ("Record types").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .journal.constants import (REC_APPEND, REC_ARCHIVE, REC_CHECKPOINT,
                                REC_CLOSE, REC_HEARTBEAT, REC_MUTATE,
                                REC_POINT_BEGIN, REC_POINT_END,
                                REC_RESUMED_FROM, REC_RUN_INFO,
                                REC_SEGMENT_SYNCED, REC_SET, REC_STAGE)
from .state import DatasetState

#: Stage names in the order a run goes through them.
STAGES = ("build", "prepare", "run", "analyze", "results_written")


class BadRecord(ValueError):
    """A record's payload does not have the documented shape."""


@dataclass
class RunState:
    run_info: dict | None = None
    stage: str | None = None
    stage_time: float | None = None
    run_time: float | None = None
    # warn=False: the live run already logged ARTIQ's warnings once.
    datasets: DatasetState = field(
        default_factory=lambda: DatasetState(warn=False))
    #: User state of the last ``checkpoint(**state)`` and its sequence number.
    checkpoint: dict | None = None
    checkpoint_seq: int | None = None
    resumed_from: dict | None = None
    closed: bool = False
    close_reason: str | None = None
    last_seq: int = 0
    #: Unix time of the last heartbeat record (the writer's process was
    #: alive then); heartbeats change nothing else.  Not in snapshots.
    last_heartbeat: float | None = None

    def apply(self, seq: int, rtype: int, payload: Any) -> None:
        """Apply one decoded record.  Raises BadRecord, and nothing else,
        for a record that cannot be applied: a payload of the wrong shape,
        or an operation that fails the way ARTIQ's DatasetManager would
        (the writer journals only operations that succeeded, so such a
        record is not what the writer wrote).  The state may then be
        partly changed; callers trust nothing after it."""
        if rtype == REC_APPEND and type(payload) is list \
                and len(payload) == 2 and type(payload[0]) is str:
            # Fast path: scalar appends are most records of a long scan.
            try:
                self.datasets.append_to(payload[0], payload[1])
            except Exception as exc:
                raise BadRecord(f"{type(exc).__name__}: {exc}") from None
            self.last_seq = seq
            self.closed = False
            return
        try:
            handler = _HANDLERS[rtype]
        except KeyError:
            raise BadRecord(f"unknown record type {rtype}") from None
        try:
            handler(self, payload)
        except BadRecord:
            raise
        except Exception as exc:
            # The writer journals only operations that succeeded, so a
            # failing one means the record is not what the writer wrote --
            # whatever it raises (numpy: OverflowError for an out-of-range
            # integer assignment).
            raise BadRecord(f"{type(exc).__name__}: {exc}") from None
        if rtype == REC_CHECKPOINT:
            self.checkpoint_seq = seq
        self.last_seq = seq
        if rtype != REC_CLOSE:
            self.closed = False

    # -- snapshots --------------------------------------------------------------

    def to_snapshot(self) -> dict:
        """Plain data for a checkpoint file (see FORMAT.md, "Snapshot
        state")."""
        return {
            "run_info": self.run_info,
            "stage": self.stage,
            "stage_time": self.stage_time,
            "run_time": self.run_time,
            "datasets": self.datasets.to_snapshot(),
            "checkpoint": self.checkpoint,
            "checkpoint_seq": self.checkpoint_seq,
            "resumed_from": self.resumed_from,
        }

    @classmethod
    def from_snapshot(cls, data: Any, seq: int) -> "RunState":
        if not isinstance(data, dict):
            raise BadRecord("snapshot state is not a map")
        try:
            return cls(
                run_info=_opt_dict(data.get("run_info")),
                stage=data.get("stage"),
                stage_time=data.get("stage_time"),
                run_time=data.get("run_time"),
                datasets=DatasetState.from_snapshot(data["datasets"]),
                checkpoint=_opt_dict(data.get("checkpoint")),
                checkpoint_seq=data.get("checkpoint_seq"),
                resumed_from=_opt_dict(data.get("resumed_from")),
                last_seq=seq,
            )
        except BadRecord:
            raise
        except Exception as exc:
            # CorruptSnapshot from the dataset state, or anything else a
            # hostile structure makes it raise.
            raise BadRecord(f"bad snapshot state: {exc}") from None


def _opt_dict(value: Any) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise BadRecord("expected a map")
    return value


def _fields(payload: Any, n: int) -> list:
    if not isinstance(payload, list) or len(payload) != n:
        raise BadRecord(f"expected a list of {n} fields")
    return payload


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise BadRecord("dataset key is not a string")
    return key


def _run_info(st: RunState, p: Any) -> None:
    if not isinstance(p, dict) or not isinstance(p.get("rid"), int) \
            or not isinstance(p.get("class_name"), str):
        raise BadRecord("run_info needs integer 'rid' and string 'class_name'")
    st.run_info = p


def _stage(st: RunState, p: Any) -> None:
    name, when = _fields(p, 2)
    if not isinstance(name, str):
        raise BadRecord("stage name is not a string")
    st.stage, st.stage_time = name, when
    if name == "run":
        st.run_time = when


def _set(st: RunState, p: Any) -> None:
    key, value, metadata, broadcast, persist, archive = _fields(p, 6)
    if not isinstance(metadata, dict):
        raise BadRecord("metadata is not a map")
    st.datasets.set(_key(key), value, metadata, bool(broadcast),
                    bool(persist), bool(archive))


def _mutate(st: RunState, p: Any) -> None:
    key, index, value = _fields(p, 3)
    st.datasets.mutate(_key(key), index, value)


def _append(st: RunState, p: Any) -> None:
    key, value = _fields(p, 2)
    st.datasets.append_to(_key(key), value)


def _archive(st: RunState, p: Any) -> None:
    key, value = _fields(p, 2)
    st.datasets.archive_value(_key(key), value)


def _checkpoint(st: RunState, p: Any) -> None:
    (user_state,) = _fields(p, 1)
    if not isinstance(user_state, dict):
        raise BadRecord("checkpoint state is not a map")
    st.checkpoint = user_state


def _resumed_from(st: RunState, p: Any) -> None:
    if not isinstance(p, dict):
        raise BadRecord("resumed_from is not a map")
    st.resumed_from = p


def _heartbeat(st: RunState, p: Any) -> None:
    # [unix_time, ...]: later fields, if a future writer adds any, are
    # ignored.  A no-op for the datasets.
    if not isinstance(p, list) or not p or isinstance(p[0], bool) \
            or not isinstance(p[0], (int, float)):
        raise BadRecord("heartbeat is not [unix_time, ...]")
    st.last_heartbeat = float(p[0])


def _point_marker(st: RunState, p: Any) -> None:
    # point_begin / point_end: [] (later fields ignored).  Grouping the
    # records between them is replay's business (replay.py); applied on
    # its own a marker changes nothing.
    if not isinstance(p, list):
        raise BadRecord("point marker is not an array")


def _close(st: RunState, p: Any) -> None:
    (reason,) = _fields(p, 1)
    st.closed = True
    st.close_reason = reason if isinstance(reason, str) else None


_HANDLERS = {
    REC_RUN_INFO: _run_info,
    REC_STAGE: _stage,
    REC_SET: _set,
    REC_MUTATE: _mutate,
    REC_APPEND: _append,
    REC_ARCHIVE: _archive,
    REC_CHECKPOINT: _checkpoint,
    REC_RESUMED_FROM: _resumed_from,
    REC_CLOSE: _close,
    REC_HEARTBEAT: _heartbeat,
    REC_POINT_BEGIN: _point_marker,
    REC_POINT_END: _point_marker,
    # format 3: [number, last_seq] vouches that a segment was synced (the
    # reader's business, FORMAT.md 8.6); for the run state a no-op.
    REC_SEGMENT_SYNCED: _point_marker,
}
