"""Magic numbers, format version, struct layouts and record types.

This module is the single source of these values; ``docs/FORMAT.md`` documents
them byte for byte.  All integers on disk are little-endian.
"""

from __future__ import annotations

import struct

#: Version of the journal format the writer writes in segment headers.
#: Version 2 added the point records (REC_POINT_BEGIN/REC_POINT_END);
#: version 3 the segment flag SEGMENT_FLAG_BACKGROUND_SYNC and the record
#: REC_SEGMENT_SYNCED (segments rotated without waiting for their sync).
FORMAT_VERSION = 3
#: Segment header versions a reader accepts: version 1 is version 2
#: without point records, version 2 is version 3 without the flag and the
#: segment_synced record.
SEGMENT_VERSIONS = (1, 2, 3)
#: Segment header flag (version 3): the writer may create the next segment
#: before this one is synced (it syncs this one in the background and then
#: writes a REC_SEGMENT_SYNCED record vouching for it).
SEGMENT_FLAG_BACKGROUND_SYNC = 1
#: Version of checkpoint (snapshot) files: unchanged by format version 2.
SNAPSHOT_VERSION = 1

# --- segment files -----------------------------------------------------------

SEGMENT_MAGIC = b"ARTIQWAL"
#: magic, version u16, flags u16, segment number u32, first seq u64,
#: CRC32 of the preceding 24 bytes u32, reserved u32 (zero).
SEGMENT_HEADER = struct.Struct("<8sHHIQI4x")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 32
SEGMENT_PREFIX = "segment-"
SEGMENT_SUFFIX = ".log"

# --- records -------------------------------------------------------------------

#: CRC32 u32 (over the 16 bytes after it AND the payload), payload length u32,
#: sequence number u64, record type u8, flags u8, reserved u16 (zero).
RECORD_HEADER = struct.Struct("<IIQBBH")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 20
#: The part of the header the CRC covers, packed on its own on the hot path.
RECORD_HEADER_TAIL = struct.Struct("<IQBBH")
CRC_FIELD = struct.Struct("<I")

#: Default cap on one record's payload: a corrupted length can never make a
#: reader allocate more than this.
DEFAULT_MAX_RECORD_BYTES = 256 * 1024 * 1024
#: Default size at which the writer starts a new segment.
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

# Record types.  The journal layer itself only interprets CLOSE; the others
# are ARTIQ dataset operations interpreted by artiq_journal.state.
REC_RUN_INFO = 1      # {"rid":..., "class_name":..., "expid":..., ...}
REC_STAGE = 2         # [stage, unix_time]
REC_SET = 3           # [key, value, metadata, broadcast, persist, archive]
REC_MUTATE = 4        # [key, index, value]
REC_APPEND = 5        # [key, value]
REC_ARCHIVE = 6       # [key, value]   (get(key, archive=True))
REC_CHECKPOINT = 7    # [user_state]   (a snapshot covering it follows)
REC_RESUMED_FROM = 8  # {"rid":..., "seq":..., "journal":...}
REC_CLOSE = 9         # [reason]       (writer closed: nothing follows)
REC_HEARTBEAT = 10    # [unix_time]    (the writer's process is alive; no-op)
REC_POINT_BEGIN = 11  # []             (format 2: the records up to the
REC_POINT_END = 12    # []              matching point_end are one unit)
REC_SEGMENT_SYNCED = 13  # [number, last_seq]  (format 3: segment `number`,
#                          rotated with SEGMENT_FLAG_BACKGROUND_SYNC, is
#                          synced; no-op for replay)

#: The one close reason that says the data is elsewhere: ARTIQ's results
#: file was written, read back (same rid) and fsynced before the close.
#: Every other reason (no_results, build_failed, prepare_failed,
#: journal_failed, journal_disabled, hook_error, ...) leaves the journal to
#: artiq-recover exactly like an orphan.
CLOSE_RESULTS_WRITTEN = "results_written"
#: Stages (and close reasons) that say build() or prepare() raised: ARTIQ's
#: worker writes no results file for such a run, so recovery makes none
#: (docs/FORMAT.md, "What ARTIQ writes, per stage").  A run merely killed
#: during build or prepare is recovered: had it not crashed, it would have
#: gone on to write its file.
STAGES_WITHOUT_RESULTS = frozenset({"build_failed", "prepare_failed"})

RECORD_TYPE_NAMES = {
    REC_RUN_INFO: "run_info",
    REC_STAGE: "stage",
    REC_SET: "set",
    REC_MUTATE: "mutate",
    REC_APPEND: "append_to",
    REC_ARCHIVE: "archive",
    REC_CHECKPOINT: "checkpoint",
    REC_RESUMED_FROM: "resumed_from",
    REC_CLOSE: "close",
    REC_HEARTBEAT: "heartbeat",
    REC_POINT_BEGIN: "point_begin",
    REC_POINT_END: "point_end",
    REC_SEGMENT_SYNCED: "segment_synced",
}

# --- checkpoint (snapshot) files -------------------------------------------------

SNAPSHOT_MAGIC = b"ARTIQCKP"
#: magic, version u16, flags u16, reserved u32, covered seq u64,
#: payload length u64, CRC32 over the 32 header bytes before the CRC field
#: AND the payload u32, reserved u32.
SNAPSHOT_HEADER = struct.Struct("<8sHHIQQI4x")
SNAPSHOT_HEADER_SIZE = SNAPSHOT_HEADER.size  # 40
SNAPSHOT_NAME = "checkpoint"
SNAPSHOT_NEW = "checkpoint.new"
SNAPSHOT_OLD = "checkpoint.old"

#: Default cap on a checkpoint payload (it is read whole into memory).
DEFAULT_MAX_SNAPSHOT_BYTES = 8 * 1024 * 1024 * 1024

# --- directory ---------------------------------------------------------------

JOURNAL_SUFFIX = ".journal"
LOCK_NAME = "lock"
