"""SIGKILL torture: a real writer process is killed at random moments, over
and over, on the same journal.

The child opens the journal (cutting the previous run's torn tail), appends
records whose payload is a function of their sequence number, and prints
each sequence number after ``append`` returned (acknowledged).  The parent
SIGKILLs it at a random moment (during start-up and reopening too), then
checks the journal:

* every acknowledged record is there with its exact payload;
* nothing beyond one in-flight record exists that was not acknowledged;
* the sequence is gap-free and fully trusted; the only diagnostic allowed is
  a torn tail.

20 kills by default; set ARTIQ_JOURNAL_TORTURE=1 for 300 (or a number for
that many).  The kill moments come from a seeded generator (printed; set
ARTIQ_JOURNAL_TORTURE_SEED to vary it); process timing still varies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import artiq_journal
from artiq_journal.journal import codec
from artiq_journal.journal.constants import REC_SET
from artiq_journal.journal.reader import read_all

#: Where the package under test lives, for child processes' PYTHONPATH.
SRC = os.path.dirname(os.path.dirname(os.path.abspath(
    artiq_journal.__file__)))

PAYLOAD_SOURCE = textwrap.dedent("""
    def payload(seq):
        # Deterministic in seq, varied in size and type.
        blob = bytes((seq * 31 + i) % 251 for i in range(seq % 61))
        return ["key%d" % (seq % 7), seq, blob, (seq, seq / 3.0),
                {"i": -seq}]
""")
_namespace: dict = {}
exec(PAYLOAD_SOURCE, _namespace)  # the same function as in the child
payload = _namespace["payload"]

CHILD = PAYLOAD_SOURCE + textwrap.dedent("""
    import sys
    from artiq_journal.journal.writer import JournalWriter
    path, policy = sys.argv[1], sys.argv[2]
    writer = JournalWriter(path, fsync=policy, segment_bytes=16384,
                           group_interval=0.002)
    out = sys.stdout
    out.write("open %d\\n" % writer.last_seq)
    out.flush()
    while True:
        seq = writer.last_seq + 1
        assert writer.append(3, payload(seq)) == seq
        out.write("%d\\n" % seq)   # acknowledged: append returned
        out.flush()
""")


def _kills() -> int:
    setting = os.environ.get("ARTIQ_JOURNAL_TORTURE", "")
    if setting.isdigit() and int(setting) > 1:
        return int(setting)
    return 300 if setting else 20


def _collect(stream, lines: list) -> None:
    for line in stream:
        lines.append(line)


def test_sigkill_at_random_moments_loses_no_acknowledged_record(tmp_path):
    seed = int(os.environ.get("ARTIQ_JOURNAL_TORTURE_SEED", "20240611"))
    rng = random.Random(seed)
    kills = _kills()
    path = str(tmp_path / "torture.journal")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    acked_max = 0          # highest acknowledged seq over all runs
    on_disk = 0            # complete records found after the previous kill
    checked = violations = 0
    problems: list[str] = []
    expected = {}          # seq -> packed payload, built lazily
    start = time.monotonic()
    for run in range(kills):
        policy = rng.choice(["always", "group", "never"])
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, policy], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        collector = threading.Thread(target=_collect,
                                     args=(child.stdout, lines))
        collector.start()
        if rng.random() < 0.15:
            # Anywhere in start-up, including the reopen's tail cut.
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            deadline = time.monotonic() + 30
            while not lines and child.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.03))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        collector.join()
        stderr = child.stderr.read()
        child.stderr.close()
        if child.returncode != -signal.SIGKILL:
            problems.append(f"run {run}: child exited {child.returncode} "
                            f"before the kill: {stderr[-2000:]}")
            violations += 1
            continue
        if lines and lines[0].startswith("open "):
            reopened_at = int(lines[0].split()[1])
            if reopened_at != on_disk:
                problems.append(f"run {run}: writer reopened at seq "
                                f"{reopened_at}, {on_disk} records were "
                                "on disk")
                violations += 1
            lines = lines[1:]
        # The last line may be cut mid-number by the kill: ignore it unless
        # newline-terminated.
        acked = [int(line) for line in lines if line.endswith("\n")]
        if acked:
            acked_max = max(acked_max, acked[-1])

        records, reader = read_all(path)
        seqs = [r.seq for r in records]
        last = seqs[-1] if seqs else 0
        errors = [d for d in reader.diagnostics if d.severity != "info"]
        if errors:
            problems.append(f"run {run}: damage after SIGKILL: {errors}")
            violations += 1
        if seqs != list(range(1, last + 1)) or \
                not all(r.trusted for r in records):
            problems.append(f"run {run}: sequence not gap-free/trusted")
            violations += 1
        if last < acked_max:
            problems.append(f"run {run}: acknowledged seq {acked_max} "
                            f"missing (journal ends at {last})")
            violations += 1
        # One record may be in flight: written, not yet acknowledged.  An
        # earlier run's in-flight record that reached the file is part of
        # the journal the next run continued from.
        baseline = max(acked_max, on_disk)
        if last > baseline + 1:
            problems.append(f"run {run}: {last - baseline} records beyond "
                            f"the last acknowledged {baseline}")
            violations += 1
        for record in records[on_disk:]:
            if record.seq not in expected:
                expected[record.seq] = codec.pack(payload(record.seq))
            if record.rtype != REC_SET or \
                    codec.pack(record.payload) != expected[record.seq]:
                problems.append(f"run {run}: seq {record.seq} has the wrong "
                                "payload")
                violations += 1
        checked += len(acked)
        on_disk = last
    # Finally every record once more, old ones included: a later reopen
    # must never have changed what an earlier run left.
    records, _ = read_all(path)
    for record in records:
        if codec.pack(record.payload) != expected.get(record.seq):
            problems.append(f"final: seq {record.seq} changed")
            violations += 1
    elapsed = time.monotonic() - start
    print(f"sigkill torture: seed {seed}, {kills} kills, {checked} acked "
          f"appends checked, {on_disk} records on disk, {violations} "
          f"violations, {elapsed:.1f} s")
    assert violations == 0, problems[:10]
    assert checked > 0, "no run got far enough to acknowledge a record"
