"""Start and kill a real ``artiq_master`` (vendored sources) for tests.

``RealMaster(release, workdir, site=...)`` runs ``python -m
artiq.frontend.artiq_master`` with cwd ``workdir`` (results go to
``workdir/results``), its own repository/device DB/dataset DB in
``workdir``, bound to 127.0.0.1 on free ports, in its own process group.
``stop()`` SIGKILLs that group (by pid); tests call it in ``finally``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import artiq_trees

DEVICE_DB = "device_db = {}\n"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel considers free right now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class RealMaster:
    def __init__(self, release: str, workdir: str, site: str | None,
                 experiments: dict[str, str] | None = None,
                 env: dict[str, str] | None = None,
                 dataset_db: str | None = None) -> None:
        self.release = release
        self.workdir = workdir
        self.site = site
        self.repository = os.path.join(workdir, "repository")
        os.makedirs(self.repository, exist_ok=True)
        for name, text in (experiments or {}).items():
            with open(os.path.join(self.repository, name), "w") as f:
                f.write(text)
        self.device_db = os.path.join(workdir, "device_db.py")
        if not os.path.exists(self.device_db):
            with open(self.device_db, "w") as f:
                f.write(DEVICE_DB)
        self.dataset_db = dataset_db or os.path.join(
            workdir, "dataset_db.pyon" if release == "7"
            else "dataset_db.mdb")
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(workdir, "master.log")

    def start(self, timeout: float = 60.0) -> "RealMaster":
        (self.port_notify, self.port_control, self.port_logging,
         self.port_broadcast) = free_ports(4)
        env = artiq_trees.child_env(self.release, self.site,
                                    **self.extra_env)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "artiq.frontend.artiq_master",
             "--bind", "127.0.0.1", "--no-localhost-bind",
             "--port-notify", str(self.port_notify),
             "--port-control", str(self.port_control),
             "--port-logging", str(self.port_logging),
             "--port-broadcast", str(self.port_broadcast),
             "--device-db", self.device_db,
             "--dataset-db", self.dataset_db,
             "-r", self.repository],
            cwd=self.workdir, env=env, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"artiq_master exited with "
                                   f"{self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(
                        ("127.0.0.1", self.port_control), 0.5) as s:
                    s.settimeout(2)
                    s.sendall(b"ARTIQ pc_rpc\n")
                    if s.recv(4096):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"artiq_master did not start:\n"
                                   f"{self.log()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def workers(self) -> list[int]:
        """Live worker processes of this master."""
        return [p for p in children(self.pid)
                if "artiq.master.worker_impl" in cmdline(p) and alive(p)]

    def wait_worker(self, timeout: float = 30.0) -> int:
        """The worker running an experiment: the one whose working
        directory is under results/ (ARTIQ's build() chdirs there).  The
        master also starts workers that only examine the repository's
        files; under load they overlap with a run."""
        deadline = time.monotonic() + timeout
        results = os.path.join(os.path.realpath(self.workdir), "results")
        while time.monotonic() < deadline:
            for pid in self.workers():
                try:
                    cwd = os.readlink(f"/proc/{pid}/cwd")
                except OSError:
                    continue
                if cwd.startswith(results + os.sep):
                    return pid
            time.sleep(0.05)
        raise AssertionError(f"no worker running an experiment:\n"
                             f"{self.log()}")

    def kill(self) -> None:
        """SIGKILL the master process alone (its workers live on)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGKILL the master's whole process group (by its pid)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def terminate(self, timeout: float = 20.0) -> None:
        """SIGTERM the master and wait (it saves its dataset DB)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stop()
