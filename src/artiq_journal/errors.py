"""The one exception hierarchy of artiq-journal.

Every error a caller can act on is a subclass of :class:`JournalError`.
Messages name the file and, where there is one, the byte offset, in the form
``segment-3.log:81920: record CRC mismatch (seq 1042)``.

Reading damaged data never raises out of the reader: damage is reported as a
:class:`Diagnostic` value.  The exception classes below are raised by writers,
by loaders asked for something that is not there, and by the CLI.
"""

from __future__ import annotations

import os


def where(path: str | os.PathLike, offset: int | None = None) -> str:
    """``path:offset`` as used at the start of every message."""
    text = os.fspath(path)
    return text if offset is None else f"{text}:{offset}"


class JournalError(Exception):
    """Root of every error raised by artiq-journal."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 offset: int | None = None):
        self.path = None if path is None else os.fspath(path)
        self.offset = offset
        self.reason = message
        if path is not None:
            message = f"{where(path, offset)}: {message}"
        super().__init__(message)


class CorruptRecord(JournalError):
    """A record failed its CRC, length or decoding check."""


class TornTail(JournalError):
    """The journal ends in an incomplete record (normal after a crash)."""


class CorruptSnapshot(JournalError):
    """A checkpoint file is damaged or incomplete."""


class NoSnapshot(JournalError):
    """No loadable checkpoint file exists."""


class UnsupportedVersion(JournalError):
    """The file was written by a newer (or unknown) format version."""


class UnsupportedSnapshotVersion(CorruptSnapshot, UnsupportedVersion):
    """A checkpoint file was written by a newer (or unknown) format version.

    Both a :class:`CorruptSnapshot` (the file cannot be used, so a loader
    falls back on an older checkpoint exactly as for a damaged one) and an
    :class:`UnsupportedVersion` (the remedy is a newer artiq-journal, not
    repair), so a caller can tell the two apart.
    """


class JournalLocked(JournalError):
    """Another live process holds the journal's lock.

    ``holder``, when known, describes the process holding it (pid, user,
    command), read from the kernel's lock table."""

    holder: "dict | None" = None


class JournalFailed(JournalError):
    """The writer hit a write or fsync error and stopped (fail-stop).

    After this no append is accepted: the data that failed to reach the disk
    may be partly on it, and retrying fsync could report success for pages the
    kernel already dropped.
    """


class JournalClosed(JournalError):
    """An append was attempted on a closed journal."""


class NotAJournal(JournalError):
    """The path is not a journal directory (or does not exist)."""


class NotRegularFile(JournalError):
    """A symbolic link, FIFO, device, socket or directory stands where a
    regular file (segment, checkpoint, lock, marker, results file) is
    expected.  Never followed, never opened for reading: a FIFO would block
    and a link could lead anywhere."""


class LockUnknown(JournalError):
    """Whether a live writer holds the journal's lock cannot be told (the
    lock file cannot be opened, or is not a regular file)."""


class RecordTooLarge(JournalError):
    """A record exceeds the configured maximum record size."""


class RecoveryError(JournalError):
    """Recovery of a run could not be carried out."""


class ResumeError(JournalError):
    """A resume was asked for but the earlier run cannot be resumed."""
