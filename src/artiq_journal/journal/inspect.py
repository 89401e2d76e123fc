"""Read-only examination of a journal: what ``artiq-journal verify`` and
``artiq-journal inspect`` report, as plain data.

:func:`summarize` reads every segment (every record CRC-checked and decoded)
and every checkpoint file, and returns a JSON-serializable dict.  It never
writes to the journal and never raises on damaged data: damage is listed in
``summary["diagnostics"]``.  Only a path that is not a journal at all raises
:class:`~artiq_journal.errors.NotAJournal`.

Records removed by snapshot rotation are not damage: when the first segment
starts after seq 1 and a valid snapshot covers everything before it, reading
starts there.  Anything else missing is a gap.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any

import numpy as np

from ..errors import CorruptSnapshot, NoSnapshot, NotAJournal, NotRegularFile
from .constants import (CLOSE_RESULTS_WRITTEN, DEFAULT_MAX_RECORD_BYTES,
                        FORMAT_VERSION, REC_CLOSE, SEGMENT_HEADER_SIZE,
                        SNAPSHOT_NAME, SNAPSHOT_NEW, SNAPSHOT_OLD)
from .liveness import probe_lock
from .framing import decode_segment_header, parse_segment_name
from .reader import (Diagnostic, JournalReader, Position, check_position,
                     list_segments)
from .safefile import open_regular_file
from .snapshot import Snapshot, load_snapshot, read_snapshot_file

SNAPSHOT_NAMES = (SNAPSHOT_NAME, SNAPSHOT_NEW, SNAPSHOT_OLD)
#: Width of a payload's one-line description in record listings.
PAYLOAD_WIDTH = 80
#: Nesting depth beyond which values are shown as an ellipsis (msgpack
#: allows deeper nesting than ``repr`` or ``json`` can recurse through).
_MAX_DEPTH = 32
#: Lists longer than this are summarised (length, element types, min/max
#: and the first few items), never listed in full.
LONG_LIST = 16
#: Items of a long list shown as its head.
_HEAD_ITEMS = 4
#: Ints wider than this are rendered in hex: ``str()`` of a huge int raises
#: ValueError (sys.int_info.default_max_str_digits) and JSON readers lose
#: precision beyond 64 bits anyway.
_WIDE_INT_BITS = 64


# -- which journal, which file ------------------------------------------------

def resolve(path: str | os.PathLike) -> tuple[str, str | None]:
    """``(journal_dir, file_name)`` for a journal directory (file_name None)
    or for a segment or checkpoint file inside one.  Raises NotAJournal."""
    text = os.fspath(path)
    if not os.path.lexists(text):
        raise NotAJournal("no such file or directory", path=text)
    if os.path.isdir(text):
        try:
            names = os.listdir(text)
        except OSError as exc:
            raise NotAJournal(f"cannot read directory: {exc.strerror or exc}",
                              path=text) from None
        if (os.path.basename(os.path.normpath(text)).endswith(".journal")
                or any(_is_journal_file(n) for n in names)):
            return text, None
        raise NotAJournal(
            "not a journal directory (no segment-<n>.log or checkpoint "
            "files, and the name does not end in .journal)", path=text)
    if os.path.isfile(text):
        name = os.path.basename(text)
        if _is_journal_file(name):
            return os.path.dirname(text) or ".", name
        raise NotAJournal(
            "is a file but not a journal segment (segment-<n>.log) or "
            "checkpoint file; pass the *.journal directory", path=text)
    raise NotAJournal("not a regular file or directory", path=text)


def _is_journal_file(name: str) -> bool:
    return parse_segment_name(name) is not None or name in SNAPSHOT_NAMES


# -- the summary --------------------------------------------------------------

def summarize(path: str | os.PathLike, *, records: bool = False,
              limit: int | None = None,
              max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> dict:
    """Everything ``verify`` and ``inspect`` report about ``path``.

    Read-only (the lock probe reads /proc/locks; only where that is
    missing does it take and drop the lock if it is free).
    Never raises on damaged content; raises NotAJournal for a path that is
    not a journal.  With ``records`` the result holds one entry per record
    (at most ``limit``) with a JSON-safe payload and a one-line description.
    When ``path`` names one file, diagnostics and records are those of that
    file, judged in the context of the whole journal.
    """
    journal_dir, target = resolve(path)
    shown_dir = os.path.normpath(os.fspath(path)) if target is None \
        else os.path.dirname(os.fspath(path)) or "."

    def shown(file_path: str) -> str:
        if os.path.normpath(file_path) == os.path.normpath(journal_dir):
            return shown_dir
        return os.path.join(shown_dir, os.path.basename(file_path))

    diagnostics: list[Diagnostic] = []
    snapshots, used, snapshot_note = _examine_snapshots(journal_dir,
                                                        diagnostics)
    segments = _examine_segments(journal_dir)
    first_seq = segments[0]["first_seq"] if segments else None
    after_seq = _start_after(first_seq, used)

    reader = JournalReader(journal_dir, max_record_bytes=max_record_bytes,
                           after_seq=after_seq)
    by_type: Counter = Counter()
    per_segment: Counter = Counter()
    listing: list[dict] = []
    trusted = untrusted = 0
    first_read = last_read = None
    highest = after_seq  # highest seq present in any segment
    close_reason = None
    for record in reader:
        highest = max(highest, record.seq)
        if record.trusted:
            close_reason = (record.payload[0]
                            if record.rtype == REC_CLOSE
                            and isinstance(record.payload, list)
                            and record.payload
                            and isinstance(record.payload[0], str)
                            else None)
        if target is not None and record.segment != target:
            continue
        by_type[record.type_name] += 1
        per_segment[record.segment] += 1
        if record.trusted:
            trusted += 1
        else:
            untrusted += 1
        if first_read is None:
            first_read = record.seq
        last_read = record.seq
        if records and (limit is None or len(listing) < limit):
            listing.append({
                "seq": record.seq, "type": record.type_name,
                "segment": record.segment, "offset": record.offset,
                "trusted": record.trusted,
                "summary": describe(record.payload),
                "payload": jsonable(record.payload)})
    diagnostics[:0] = reader.diagnostics

    position = _snapshot_position(used)
    if position is not None and target is None:
        misplaced = check_position(journal_dir, position, used.seq)
        if misplaced is not None:
            diagnostics.append(misplaced)
    if used is not None and target is None and used.seq > highest:
        # The writer syncs every record before a snapshot covering it, and
        # never deletes the segment it writes: the tail is gone.
        diagnostics.append(Diagnostic(
            "snapshot_ahead", journal_dir, None,
            f"{used.name} covers records up to seq {used.seq}, but the "
            f"segments end at seq {highest}: durable records are missing"))

    for seg in segments:
        seg["records"] = per_segment.get(seg["name"], 0)
    if target is not None:
        diagnostics = [d for d in diagnostics
                       if os.path.basename(d.path) == target
                       and os.path.normpath(d.path)
                       != os.path.normpath(journal_dir)]

    live = probe_lock(journal_dir).held
    writer_closed = reader.clean_close and close_reason is not None
    # "Clean" promises the data is elsewhere: only a close after ARTIQ's
    # results file was verified says so.  Any other close leaves the
    # journal to artiq-recover, like an orphan.
    clean = writer_closed and close_reason == CLOSE_RESULTS_WRITTEN \
        and not any(d.severity == "error" for d in diagnostics)
    if live:
        writer = "live"
    elif clean:
        writer = "closed"
    elif writer_closed:
        writer = "closed_without_results"
    else:
        writer = "orphaned"
    return {
        "path": shown_dir if target is None else shown(target),
        "journal": shown_dir,
        "file": target,
        "format_version": FORMAT_VERSION,
        "writer": writer,
        "clean_close": clean,
        "close_reason": close_reason if writer_closed else None,
        "segments": segments if target is None else
        [s for s in segments if s["name"] == target],
        "snapshots": snapshots if target is None else
        [s for s in snapshots if s["name"] == target],
        "snapshot_used": None if used is None else {
            "name": used.name, "seq": used.seq, "size": used.size,
            "reason": used.reason},
        "snapshot_note": snapshot_note,
        "read_after_seq": after_seq,
        "records": {"total": trusted + untrusted, "trusted": trusted,
                    "untrusted": untrusted, "by_type": dict(by_type)},
        "first_seq": first_read,
        "last_seq": last_read,
        "last_trusted_seq": reader.last_trusted_seq,
        "torn_tail": any(d.kind == "torn_tail" for d in diagnostics),
        "damaged": bool(diagnostics),
        "diagnostics": [_diagnostic_dict(d, shown(d.path))
                        for d in diagnostics],
        "record_list": listing if records else None,
    }


def _snapshot_position(used: Snapshot | None) -> Position | None:
    body = used.state if used is not None else None
    position = body.get("position") if isinstance(body, dict) else None
    if isinstance(position, (list, tuple)) and len(position) == 2 \
            and all(type(v) is int and v >= 0 for v in position):
        return Position(position[0], position[1])
    return None


def _start_after(first_seq: int | None, used: Snapshot | None) -> int:
    # Segments wholly covered by a snapshot are deleted on purpose
    # (snapshot rotation step 6): start reading where the files start, as
    # long as the snapshot covers everything before.  If it does not, read
    # after the snapshot (or from seq 1) so the reader reports the gap.
    if used is None:
        return 0
    if first_seq is not None and first_seq - 1 <= used.seq:
        return max(first_seq - 1, 0)
    return used.seq


def _examine_segments(journal_dir: str) -> list[dict]:
    try:
        found = list_segments(journal_dir)
    except OSError:
        return []  # the reader reports the unreadable directory
    segments = []
    for number, seg_path in found:
        entry: dict[str, Any] = {"name": os.path.basename(seg_path),
                                 "number": number, "size": None,
                                 "first_seq": None, "header": "ok"}
        try:
            with open_regular_file(seg_path) as f:
                entry["size"] = os.fstat(f.fileno()).st_size
                head = f.read(SEGMENT_HEADER_SIZE)
            entry["first_seq"] = decode_segment_header(head).first_seq
        except (OSError, ValueError, NotRegularFile) as exc:
            entry["header"] = getattr(exc, "reason", None) \
                or getattr(exc, "strerror", None) or str(exc)
        segments.append(entry)
    return segments


def _examine_snapshots(journal_dir: str, diagnostics: list[Diagnostic]
                       ) -> tuple[list[dict], Snapshot | None, str]:
    try:
        used: Snapshot | None = load_snapshot(journal_dir)
        note = used.reason
    except NoSnapshot as exc:
        used, note = None, exc.reason
    files = []
    for name in SNAPSHOT_NAMES:
        path = os.path.join(journal_dir, name)
        entry: dict[str, Any] = {
            "name": name, "exists": False, "valid": False, "seq": None,
            "size": None, "used": used is not None and used.name == name,
            "problem": None}
        files.append(entry)
        if not os.path.lexists(path):
            continue
        entry["exists"] = True
        try:
            entry["size"] = os.stat(path).st_size
            snap = used if entry["used"] else read_snapshot_file(path)
        except CorruptSnapshot as exc:
            entry["problem"] = exc.reason
            if name == SNAPSHOT_NEW:
                # Step 2 of the rotation was cut short: the file was never
                # renamed into place, so nothing depended on it.
                diagnostics.append(Diagnostic(
                    "snapshot", path, exc.offset,
                    f"incomplete checkpoint.new (normal after a crash during "
                    f"a snapshot): {exc.reason}", severity="info"))
            else:
                diagnostics.append(Diagnostic(
                    "snapshot", path, exc.offset,
                    f"damaged snapshot: {exc.reason}"))
            continue
        except OSError as exc:
            entry["problem"] = f"cannot read: {exc.strerror or exc}"
            diagnostics.append(Diagnostic("snapshot", path, None,
                                          entry["problem"]))
            continue
        entry["valid"] = True
        entry["seq"] = snap.seq
    return files, used, note


def _diagnostic_dict(diag: Diagnostic, shown_path: str) -> dict:
    message = diag.message
    if diag.kind == "torn_tail":
        detail = message[len("torn tail: "):] \
            if message.startswith("torn tail: ") else message
        message = f"torn tail (normal after a crash): {detail}"
    text = shown_path if diag.offset is None \
        else f"{shown_path}:{diag.offset}"
    return {"kind": diag.kind, "severity": diag.severity, "file": shown_path,
            "offset": diag.offset, "seq": diag.seq, "message": message,
            "text": f"{text}: {message}"}


# -- rendering payloads -------------------------------------------------------

def describe(value: Any, width: int = PAYLOAD_WIDTH) -> str:
    """A one-line description of a decoded payload, at most ``width``
    characters; cost bounded by ``width``, not by the size of ``value``."""
    budget = [width + 1]
    text = _describe(value, 0, budget)
    if len(text) > width:
        text = text[:max(width - 1, 0)] + "…"
    return text


def _describe(value: Any, depth: int, budget: list[int]) -> str:
    if budget[0] <= 0 or depth > _MAX_DEPTH:
        return "…"
    if isinstance(value, np.ndarray):
        text = f"ndarray({value.dtype.str}, shape={tuple(value.shape)}"
        bounds = _bounds(value)
        if bounds is not None:
            text += f", min={bounds[0]!r}, max={bounds[1]!r}"
        text += ")"
    elif isinstance(value, list) and len(value) > LONG_LIST:
        info = _list_info(value)
        text = f"list(len={len(value)}, {'|'.join(info['types'])}"
        if "min" in info:
            text += f", min={info['min']!r}, max={info['max']!r}"
        text += ")"
    elif isinstance(value, np.generic):
        text = _bounded_repr(value, budget[0])
    elif isinstance(value, bool) or value is None:
        text = repr(value)
    elif isinstance(value, int):
        text = _int_text(value)
    elif isinstance(value, (str, bytes)):
        head = value[:budget[0]]
        text = repr(head) + ("…" if len(head) < len(value) else "")
        if isinstance(value, bytes) and len(value) > 16:
            text += f"({len(value)} bytes)"
    elif isinstance(value, (list, tuple)):
        opening, closing = ("[", "]") if isinstance(value, list) \
            else ("(", ",)" if len(value) == 1 else ")")
        text = opening + _join(value, depth, budget) + closing
    elif isinstance(value, dict):
        parts = []
        for key, item in value.items():
            if budget[0] <= 0:
                parts.append("…")
                break
            part = (_describe(key, depth + 1, budget) + ": "
                    + _describe(item, depth + 1, budget))
            parts.append(part)
        text = "{" + ", ".join(parts) + "}"
    else:
        text = _bounded_repr(value, budget[0])
    budget[0] -= len(text)
    return text


def _join(items, depth: int, budget: list[int]) -> str:
    parts = []
    for item in items:
        if budget[0] <= 0:
            parts.append("…")
            break
        parts.append(_describe(item, depth + 1, budget))
    return ", ".join(parts)


def _int_text(value: int) -> str:
    if value.bit_length() > _WIDE_INT_BITS:
        return f"{hex(value)} ({value.bit_length()}-bit int)"
    return str(value)


def _bounded_repr(value: Any, width: int) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError) as exc:
        text = f"<{type(value).__name__}: {exc}>"
    return text[:max(width, 1)]


def jsonable(value: Any, _depth: int = 0) -> Any:
    """``value`` as something ``json.dumps(..., allow_nan=False)`` accepts.

    Lossless for str, bool, None, finite floats, 64-bit ints, lists and
    str-keyed dicts; other types become tagged objects: ``{"tuple": [...]}``,
    ``{"map": [[key, value], ...]}`` (non-str keys), ``{"float": "nan"}``,
    ``{"int": "0x..."}`` (beyond 64 bits), ``{"complex": [re, im]}``,
    ``{"bytes": n, "hex": ...}`` (first 64 bytes),
    ``{"ndarray": {"dtype", "shape"}, "preview": ...}``,
    ``{"numpy": dtype, "value": ...}``; anything else its repr.
    """
    if _depth > _MAX_DEPTH:
        return "…"
    if isinstance(value, np.ndarray):
        out = {"ndarray": {"dtype": value.dtype.str,
                           "shape": list(value.shape)},
               "preview": _array_preview(value)}
        bounds = _bounds(value)
        if bounds is not None:
            out["min"], out["max"] = jsonable(bounds[0]), jsonable(bounds[1])
        return out
    if isinstance(value, np.generic):
        try:
            item = value.item()
        except (ValueError, TypeError, OverflowError):
            item = repr(value)
        return {"numpy": value.dtype.str, "value": jsonable(item, _depth + 1)}
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << _WIDE_INT_BITS):
            return int(value)
        return {"int": hex(value)}
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, complex):
        return {"complex": [jsonable(value.real), jsonable(value.imag)]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value), "hex": bytes(value[:64]).hex()
                + ("…" if len(value) > 64 else "")}
    if isinstance(value, list):
        if len(value) > LONG_LIST:
            info = _list_info(value)
            out = {"list": {"length": len(value), "types": info["types"]},
                   "head": [jsonable(v, _depth + 1)
                            for v in value[:_HEAD_ITEMS]]}
            if "min" in info:
                out["min"], out["max"] = info["min"], info["max"]
            return out
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [jsonable(v, _depth + 1) for v in value]}
    if isinstance(value, dict):
        if all(type(k) is str for k in value):
            return {k: jsonable(v, _depth + 1) for k, v in value.items()}
        return {"map": [[jsonable(k, _depth + 1), jsonable(v, _depth + 1)]
                        for k, v in value.items()]}
    return _bounded_repr(value, 200)


def _bounds(array: np.ndarray) -> tuple[Any, Any] | None:
    """(min, max) of a non-empty numeric array as Python scalars (NaNs
    ignored); None for other dtypes or all-NaN."""
    if array.size == 0 or array.dtype.kind not in "biuf":
        return None
    try:
        with np.errstate(all="ignore"):
            if array.dtype.kind == "f":
                if np.isnan(array).all():
                    return None
                return np.nanmin(array).item(), np.nanmax(array).item()
            return array.min().item(), array.max().item()
    except (ValueError, TypeError):
        return None


def _list_info(items: list) -> dict:
    """Element type names of a long list and, if every element is a real
    number (bool excluded), its finite min and max."""
    types = sorted({type(v).__name__ for v in items})
    info: dict[str, Any] = {"types": types}
    if all(isinstance(v, (int, float, np.integer, np.floating))
           and not isinstance(v, (bool, np.bool_)) for v in items):
        finite = [v for v in items if not isinstance(v, (float, np.floating))
                  or math.isfinite(v)]
        if finite:
            low, high = min(finite), max(finite)
            info["min"] = jsonable(low.item() if isinstance(low, np.generic)
                                   else low)
            info["max"] = jsonable(high.item() if isinstance(high, np.generic)
                                   else high)
    return info


def _array_preview(array: np.ndarray) -> str:
    try:
        text = np.array2string(array, threshold=16, edgeitems=3,
                               max_line_width=PAYLOAD_WIDTH)
    except (ValueError, TypeError, OverflowError) as exc:
        return f"<unprintable: {exc}>"
    return text if len(text) <= 200 else text[:199] + "…"
