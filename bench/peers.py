"""What a physicist would use instead of the journal, measured in the same
run: the cost of saving one more scan point when the scan already holds N.

* ``pickle + atomic rename``: the whole state pickled per point, written to
  a temp file, fsynced, renamed over the checkpoint (the protocol from the
  seed Q&A).  O(N) per point.
* ``HDF5 open early + flush``: the results file opened at the start, one
  resizable dataset, ``resize`` + write + ``File.flush()`` per point.
* ``SQLite WAL``: ``journal_mode=WAL``, ``synchronous=NORMAL``, one INSERT
  committed per point (QCoDeS-style storage).
* ``us``: ``append_to`` on a DatasetManager journaled by ``attach`` with
  ``fsync="group"``; and ``JournalWriter.append`` with ``fsync="always"``
  (durable per point, like the pickle peer).

The cost is marginal: every store is prepared holding N points (untimed),
then the stores take turns saving k more points each, for several cycles
(see ``_at_length``); k fills a small time budget, so an O(N) store saves
few points and N barely moves.

NOTE: pickle is used ONLY here, as the peer we compare against.  The
``artiq_journal`` package never pickles (its format is msgpack, decodable
without executing code).
"""

from __future__ import annotations

import os
import pickle  # peer benchmark only -- never in the package (see above)
import shutil
import sqlite3
import statistics

import numpy as np

from common import Config, Scratch, no_gc, now, progress
import subjects

from artiq_journal.journal.constants import REC_APPEND
from artiq_journal.journal.writer import JournalWriter

KEY = "scan.counts"


class PicklePeer:
    label = "pickle + atomic rename (per point)"

    def __init__(self, directory: str, n: int) -> None:
        os.makedirs(directory)
        self.state = {KEY: [i * 0.25 for i in range(n)], "point": n}
        self.tmp = os.path.join(directory, "checkpoint.tmp")
        self.final = os.path.join(directory, "checkpoint.pickle")
        self.directory = directory

    def point(self, value: float) -> None:
        self.state[KEY].append(value)
        self.state["point"] += 1
        data = pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.final)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class HDF5Peer:
    label = "HDF5 open early + flush (per point)"

    def __init__(self, directory: str, n: int) -> None:
        import h5py
        os.makedirs(directory)
        self.directory = directory
        self.f = h5py.File(os.path.join(directory, "results.h5"), "w")
        self.ds = self.f.create_dataset(
            KEY, data=np.arange(n, dtype=np.float64) * 0.25,
            maxshape=(None,), chunks=True)
        self.n = n
        self.f.flush()

    def point(self, value: float) -> None:
        n = self.n
        self.ds.resize((n + 1,))
        self.ds[n] = value
        self.n = n + 1
        self.f.flush()

    def close(self) -> None:
        self.f.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class SQLitePeer:
    label = "SQLite WAL, synchronous=NORMAL (INSERT per point)"

    def __init__(self, directory: str, n: int) -> None:
        os.makedirs(directory)
        self.directory = directory
        # isolation_level=None: autocommit, one transaction per INSERT.
        self.db = sqlite3.connect(os.path.join(directory, "results.db"),
                                  isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, "
                        "value REAL)")
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO results (value) VALUES (?)",
                            ((i * 0.25,) for i in range(n)))
        self.db.execute("COMMIT")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.sql = "INSERT INTO results (value) VALUES (?)"

    def point(self, value: float) -> None:
        self.db.execute(self.sql, (value,))

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class OursPeer:
    """Journaled ``append_to`` (attach, group commit).  Without attach (not
    written yet): ``JournalWriter.append``, labelled so."""

    label = "us: journaled append_to, fsync=group"

    def __init__(self, directory: str, n: int) -> None:
        self.directory = directory
        if subjects.ATTACH is not None:
            self.subject = subjects.journaled(directory, "group")
            dm = self.subject.dm
            dm.set(KEY, [], {}, False, False, True)
            for i in range(n):
                dm.append_to(KEY, i * 0.25)
            self.dm = dm
            self.writer = None
        else:
            self.subject = None
            self.writer = JournalWriter(directory, fsync="group")
            append = self.writer.append
            for i in range(n):
                append(REC_APPEND, [KEY, i * 0.25])

    def point(self, value: float) -> None:
        if self.writer is None:
            self.dm.append_to(KEY, value)
        else:
            self.writer.append(REC_APPEND, [KEY, value])

    def close(self) -> None:
        if self.subject is not None:
            self.subject.close()
        else:
            self.writer.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class OursAlwaysPeer:
    label = "us: JournalWriter.append, fsync=always"

    def __init__(self, directory: str, n: int) -> None:
        self.directory = directory
        # Fill without per-record syncs, then reopen the same journal with
        # fsync="always": only the timed points pay a sync each.
        writer = JournalWriter(directory, fsync="never")
        append = writer.append
        for i in range(n):
            append(REC_APPEND, [KEY, i * 0.25])
        writer.sync()  # the fill's dirty pages are not the timed points' cost
        writer.abandon()
        self.writer = JournalWriter(directory, fsync="always")

    def point(self, value: float) -> None:
        self.writer.append(REC_APPEND, [KEY, value])

    def close(self) -> None:
        self.writer.close()
        shutil.rmtree(self.directory, ignore_errors=True)


PEERS = (PicklePeer, HDF5Peer, SQLitePeer, OursPeer, OursAlwaysPeer)


def _at_length(scratch: Scratch, n: int, cycles: int, budget: float
               ) -> dict[str, float]:
    """Per-point cost of every peer at scan length ``n``.

    All peers are prepared with ``n`` points, then ``cycles`` cycles run in
    which each peer in turn (order alternating) saves its ``k`` points,
    timed as one batch: peers see the same disk at the same moments, which
    matters for the fsync-bound ones on a shared disk.  ``k`` fills
    ``budget`` seconds per peer and cycle, and stays small against ``n``
    for the O(N) peers.  Returns the median over cycles of batch time / k.
    """
    peers = [cls(scratch.path("peer"), n) for cls in PEERS]
    try:
        ks = []
        for peer in peers:
            peer.point(0.5)                # warm: first point after setup
            t0 = now()
            peer.point(0.5)
            first = now() - t0
            k = int(budget / max(first, 1e-7))
            ks.append(max(2, min(k, max(n, 2000) // cycles, 20_000)))
        costs: list[list[float]] = [[] for _ in peers]
        for c in range(cycles):
            order = range(len(peers)) if c % 2 == 0 else \
                range(len(peers) - 1, -1, -1)
            for i in order:
                point, k = peers[i].point, ks[i]
                with no_gc():
                    t0 = now()
                    for j in range(k):
                        point(j * 0.5)
                    costs[i].append((now() - t0) / k)
    finally:
        for peer in peers:
            peer.close()
    return {peer.label: statistics.median(c) for peer, c in zip(peers, costs)}


def peers(cfg: Config, scratch: Scratch) -> dict:
    """{label: {N: seconds per point}}."""
    lengths = cfg.peer_lengths
    progress(f"peers: per-point cost at N = "
             f"{', '.join(f'{n:.0e}' for n in lengths)}")
    curves: dict = {p.label: {} for p in PEERS}
    for n in lengths:
        for label, cost in _at_length(scratch, n, cfg.peer_rounds,
                                      cfg.peer_budget_s).items():
            curves[label][n] = cost
    if subjects.ATTACH is None:
        curves["_note"] = ("attach unavailable: 'us' measured with "
                           "JournalWriter.append, fsync=group")
    return curves
