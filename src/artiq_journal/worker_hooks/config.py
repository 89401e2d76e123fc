"""Settings of the worker hooks, read from environment variables.

Set them in the environment of the ARTIQ master (every worker it spawns
inherits the master's environment), or of ``artiq-journal run``.

=============================  ==========================================
``ARTIQ_JOURNAL``              ``1`` (also ``true``/``yes``/``on``) makes
                               every run journal itself (automatic mode,
                               see :mod:`.autoload`).  Default ``0``: the
                               hooks do nothing at all.
``ARTIQ_JOURNAL_FSYNC``        ``group`` (default): a record is durable at
                               most ``ARTIQ_JOURNAL_GROUP_MS`` after the
                               dataset call returned (a background thread
                               syncs); ``always``: every dataset call
                               returns only after ``fdatasync``; ``never``:
                               only snapshots and the close sync.  Under
                               every policy a record is in the kernel when
                               the call returns, so a crash of the worker
                               process alone (SIGKILL, segfault, OOM kill)
                               loses nothing; the policy decides what
                               survives a power loss or kernel crash.
``ARTIQ_JOURNAL_GROUP_MS``     group-commit window in milliseconds
                               (default ``5``; must be > 0).
``ARTIQ_JOURNAL_KEEP``         retention.  ``0`` (default): the journal of
                               a run that finished (``run()`` did not
                               raise) and whose results file ARTIQ wrote
                               completely is closed cleanly, the results
                               file is fsynced, then the journal directory
                               is deleted.  ``1``: such journals are kept
                               (closed cleanly).  Every other journal is
                               always kept: a crashed run's (for
                               ``artiq-recover`` and resume), one whose
                               ``run()`` raised (so it can be resumed), and
                               one whose run ended without a results file.
``ARTIQ_JOURNAL_ON_ERROR``     what happens when the DISK fails under the
                               journal (``JournalFailed`` from the writer:
                               an ``OSError`` from write/fsync, disk full,
                               EIO).  ``stop`` (default): log an error and
                               raise ``JournalFailed`` from the dataset
                               call, and from every later one, so the run
                               ends; ``continue``: log one loud error and
                               keep running unjournaled.  It does NOT apply
                               to the journal's own faults, which never
                               fail a run under any setting (see below).
``ARTIQ_JOURNAL_SNAPSHOT_S``   a checkpoint also writes a snapshot when this
                               many seconds passed since the last one
                               (default ``120``); see
                               :mod:`.attach` ("Snapshot policy").
``ARTIQ_JOURNAL_HEARTBEAT_S``  a live writer appends a heartbeat record this
                               often (default ``10``; ``0``/``off``: none),
                               so ``artiq-journal status`` tells a run
                               waiting on hardware from a frozen one.
``ARTIQ_JOURNAL_RESUME``       rid or journal path of an earlier run for
                               ``JournalResumable.resume_state`` when the
                               experiment's ``resume_from`` argument is
                               empty.  Meant for one run (``artiq-journal
                               resume``); never set it for a whole master.
=============================  ==========================================

Never-break rule vs disk fail-stop.  Two kinds of failure, two answers:

* the disk fails (the only thing ``ARTIQ_JOURNAL_ON_ERROR`` governs):
  ``stop`` ends the run, because a journal that silently stopped being
  durable is worse than a run that stops where the operator sees it;
* our own faults -- an ARTIQ whose ``DatasetManager`` shape is unknown, a
  call or argument type the journal does not understand, a bug in the
  hooks, a value the codec cannot encode, a platform lacking a durability
  primitive (see :mod:`.platform_support`) -- log ONE warning on logger
  ``artiq_journal`` naming the rid and the reason, switch journaling off
  for that run (closing the journal with reason ``hook_error``, or
  ``journal_disabled`` for an unencodable value) and the experiment goes on
  exactly as without artiq-journal, whatever ``ARTIQ_JOURNAL_ON_ERROR``
  says.

Invalid values never switch journaling off silently: the default is used
and the problem is reported (``JournalConfig.problems``) for the caller to
log.  This module uses only the standard library: it is imported by the
``.pth`` start-up hook of every Python process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from collections.abc import Mapping

ENV_ENABLE = "ARTIQ_JOURNAL"
ENV_FSYNC = "ARTIQ_JOURNAL_FSYNC"
ENV_GROUP_MS = "ARTIQ_JOURNAL_GROUP_MS"
ENV_KEEP = "ARTIQ_JOURNAL_KEEP"
ENV_ON_ERROR = "ARTIQ_JOURNAL_ON_ERROR"
ENV_SNAPSHOT_S = "ARTIQ_JOURNAL_SNAPSHOT_S"
ENV_RESUME = "ARTIQ_JOURNAL_RESUME"
ENV_HEARTBEAT_S = "ARTIQ_JOURNAL_HEARTBEAT_S"

FSYNC_CHOICES = ("always", "group", "never")
ON_ERROR_CHOICES = ("stop", "continue")

DEFAULT_FSYNC = "group"
DEFAULT_GROUP_MS = 5.0
DEFAULT_KEEP = False
DEFAULT_ON_ERROR = "stop"
DEFAULT_SNAPSHOT_S = 120.0
DEFAULT_HEARTBEAT_S = 10.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class JournalConfig:
    """The hook settings; see the module docstring for their meaning."""

    enabled: bool = False
    fsync: str = DEFAULT_FSYNC
    group_interval: float = DEFAULT_GROUP_MS / 1000.0
    keep: bool = DEFAULT_KEEP
    on_error: str = DEFAULT_ON_ERROR
    snapshot_interval: float = DEFAULT_SNAPSHOT_S
    #: Seconds between heartbeat records; None: no heartbeats.
    heartbeat_interval: float | None = DEFAULT_HEARTBEAT_S
    resume: str | None = None
    #: Human-readable problems with the environment (defaults were used).
    problems: tuple[str, ...] = field(default=(), compare=False)


def truthy(text: str | None) -> bool | None:
    """``True``/``False`` for the usual spellings, ``None`` if unknown."""
    value = (text or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``ARTIQ_JOURNAL`` asks for automatic journaling (cheap: the
    start-up hook calls this in every Python process)."""
    env = os.environ if environ is None else environ
    return truthy(env.get(ENV_ENABLE)) is True


def from_env(environ: Mapping[str, str] | None = None) -> JournalConfig:
    """Read every setting; never raises (see ``JournalConfig.problems``)."""
    env = os.environ if environ is None else environ
    problems: list[str] = []

    def choice(name: str, choices: tuple[str, ...], default: str) -> str:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        value = raw.strip().lower()
        if value not in choices:
            problems.append(f"{name}={raw!r} is not one of "
                            f"{', '.join(choices)}; using {default!r}")
            return default
        return value

    def positive(name: str, default: float) -> float:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value > 0:
            problems.append(f"{name}={raw!r} is not a positive number; "
                            f"using {default:g}")
            return default
        return value

    def flag(name: str, default: bool) -> bool:
        raw = env.get(name)
        value = truthy(raw)
        if value is None:
            problems.append(f"{name}={raw!r} is not 0/1; using "
                            f"{int(default)}")
            return default
        return value if raw is not None else default

    on = truthy(env.get(ENV_ENABLE))
    if on is None:
        problems.append(f"{ENV_ENABLE}={env.get(ENV_ENABLE)!r} is not 0/1; "
                        "journaling stays off")
    resume = (env.get(ENV_RESUME) or "").strip() or None
    heartbeat: float | None = DEFAULT_HEARTBEAT_S
    if (env.get(ENV_HEARTBEAT_S) or "").strip().lower() in ("0", "off"):
        heartbeat = None
    else:
        heartbeat = positive(ENV_HEARTBEAT_S, DEFAULT_HEARTBEAT_S)
    return JournalConfig(
        enabled=bool(on),
        fsync=choice(ENV_FSYNC, FSYNC_CHOICES, DEFAULT_FSYNC),
        group_interval=positive(ENV_GROUP_MS, DEFAULT_GROUP_MS) / 1000.0,
        keep=flag(ENV_KEEP, DEFAULT_KEEP),
        on_error=choice(ENV_ON_ERROR, ON_ERROR_CHOICES, DEFAULT_ON_ERROR),
        snapshot_interval=positive(ENV_SNAPSHOT_S, DEFAULT_SNAPSHOT_S),
        heartbeat_interval=heartbeat,
        resume=resume,
        problems=tuple(problems),
    )
