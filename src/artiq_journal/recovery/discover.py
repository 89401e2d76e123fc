"""Find journal directories under results trees, and probe them cheaply.

A results tree (``results/<YYYY-MM-DD>/<HH>/...``) may hold thousands of
runs, so the walk uses ``os.scandir`` (one ``getdents`` per directory, file
types without a ``stat`` each), never descends into a ``*.journal``
directory, never follows symbolic links (a link loop must not hang
recovery), and turns an unreadable directory into a :class:`Problem` instead
of an exception.  Everything here only reads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import msgpack

from ..journal.constants import (CLOSE_RESULTS_WRITTEN, JOURNAL_SUFFIX,
                                 RECORD_HEADER,
                                 RECORD_HEADER_SIZE, REC_CLOSE,
                                 SEGMENT_HEADER_SIZE, SNAPSHOT_NAME,
                                 SNAPSHOT_NEW, SNAPSHOT_OLD)
from ..errors import JournalError
from ..journal.framing import crc32, parse_segment_name
from ..journal.safefile import open_regular_file
from .report import Problem

#: ``<rid:09d>-<ClassName>.journal``: rid and class name of the run.
_JOURNAL_NAME = re.compile(r"^(\d+)-(.+)" + re.escape(JOURNAL_SUFFIX) + "$")
_SNAPSHOT_NAMES = (SNAPSHOT_NAME, SNAPSHOT_NEW, SNAPSHOT_OLD)
#: How far from the end of the last segment a clean-close record is looked
#: for (its payload is ``[reason]``, a few bytes).
_CLOSE_WINDOW = 4096


@dataclass(frozen=True)
class FoundJournal:
    """A journal directory and the PATH argument it was found under (the
    root of the relative layout used with ``--output``)."""

    path: str
    root: str


def parse_journal_name(path: str) -> tuple[int, str] | None:
    """``(rid, class_name)`` from a ``<rid>-<Class>.journal`` directory
    name, or None for any other name."""
    match = _JOURNAL_NAME.match(os.path.basename(os.path.normpath(path)))
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def looks_like_journal(path: str) -> bool:
    """True for a ``*.journal`` directory, or a directory holding segment
    or checkpoint files (a journal given explicitly under another name)."""
    if not os.path.isdir(path):
        return False
    if path.rstrip(os.sep).endswith(JOURNAL_SUFFIX):
        return True
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(parse_segment_name(n) is not None or n in _SNAPSHOT_NAMES
               for n in names)


def find_journals(paths: Iterable[str], problems: list[Problem]
                  ) -> list[FoundJournal]:
    """Every journal directory at or below each of ``paths``, each once, in
    a stable order (sorted names, depth first: chronological for ARTIQ's
    date/hour layout).  Unreadable directories are appended to
    ``problems``.  ``paths`` must exist (the caller checks)."""
    seen: set[str] = set()
    found: list[FoundJournal] = []
    for raw in paths:
        root = os.path.abspath(os.fspath(raw))
        if looks_like_journal(root):
            candidates: Iterable[str] = (root,)
            layout_root = os.path.dirname(root)
        else:
            candidates = _walk(root, problems)
            layout_root = root
        # _walk follows no symlink below root: the real path of what it
        # finds is the root's real path plus the rest (one realpath per
        # root, not one per journal).
        real_root = os.path.realpath(root)
        for path in candidates:
            key = real_root + path[len(root):] if path != root \
                else os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                found.append(FoundJournal(path, layout_root))
    return found


def _walk(root: str, problems: list[Problem]) -> Iterator[str]:
    # An explicit stack instead of recursion: trees are shallow in practice,
    # but a pathological one must not hit the recursion limit.
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted((e.name, e.path) for e in it
                                 if e.is_dir(follow_symlinks=False))
        except OSError as exc:
            problems.append(Problem(directory, None, "cannot search "
                                    f"directory: {exc.strerror or exc}"))
            continue
        subdirs = []
        for name, path in entries:
            if name.endswith(JOURNAL_SUFFIX):
                yield path
            else:
                subdirs.append(path)
        # Reversed so that popping visits them in sorted order.
        stack.extend(reversed(subdirs))


def fingerprint(journal_dir: str) -> list[list] | None:
    """``[[name, size], ...]`` of the segment and checkpoint files, sorted;
    None if the directory cannot be listed.

    An orphaned journal never changes, so an unchanged fingerprint means an
    earlier recovery saw exactly this content (used for idempotence).  Sizes,
    not mtimes: copying a results tree must not make it look new.
    """
    items = []
    try:
        with os.scandir(journal_dir) as it:
            for entry in it:
                if parse_segment_name(entry.name) is not None \
                        or entry.name in _SNAPSHOT_NAMES:
                    try:
                        items.append([entry.name,
                                      entry.stat(follow_symlinks=False)
                                      .st_size])
                    except OSError:
                        items.append([entry.name, -1])
    except OSError:
        return None
    items.sort()
    return items


def tail_close_reason(journal_dir: str) -> str | None:
    """Cheap check: the reason of an intact close record ending the last
    segment, or None.

    Reads at most the last few KiB, so the finished runs of a large tree
    are sorted out without replaying them.  It does not re-verify the
    records before the close: a caller may only use a close that says
    ARTIQ's results file was written (:data:`CLOSE_RESULTS_WRITTEN`) as a
    hint to check that file -- never as a verdict on the journal.  None
    whenever in doubt (the full replay then decides).  Never raises.
    """
    segments = []
    try:
        for name in os.listdir(journal_dir):
            number = parse_segment_name(name)
            if number is not None:
                segments.append((number, os.path.join(journal_dir, name)))
        if not segments:
            return None
        with open_regular_file(max(segments)[1]) as f:
            size = os.fstat(f.fileno()).st_size
            start = max(SEGMENT_HEADER_SIZE, size - _CLOSE_WINDOW)
            if size <= start:
                # Nothing after the header: a new segment, or one whose
                # header a crash cut short (a legal crash state).  No close
                # record to find.
                return None
            f.seek(start)
            tail = f.read(size - start)
    except (OSError, JournalError):
        return None
    hsize = RECORD_HEADER_SIZE
    # The close record ends exactly at the end of the file: try each start
    # position from the end backwards (a close payload is a few bytes).
    for pos in range(len(tail) - hsize, -1, -1):
        crc, length, _seq, rtype, flags, reserved = \
            RECORD_HEADER.unpack_from(tail, pos)
        if rtype != REC_CLOSE or flags or reserved \
                or pos + hsize + length != len(tail):
            continue
        payload = tail[pos + hsize:]
        if crc32(payload, crc32(tail[pos + 4:pos + hsize])) != crc:
            continue
        try:
            reason = msgpack.unpackb(payload, raw=False)
        except Exception:  # noqa: BLE001 - not a close we understand
            return None
        if isinstance(reason, list) and len(reason) == 1 \
                and isinstance(reason[0], str):
            return reason[0]
        return None
    return None


def closed_cleanly(journal_dir: str) -> bool:
    """Whether the journal ends (cheap tail check) in a close record saying
    ARTIQ's results file was written and verified."""
    return tail_close_reason(journal_dir) == CLOSE_RESULTS_WRITTEN
