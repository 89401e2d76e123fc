"""A minimal client of an ARTIQ master's control port (sipyco ``pc_rpc``),
so that ``artiq-journal resume --master`` can submit a run without sipyco.

The protocol (sipyco ``pc_rpc``; one line per message, UTF-8, ``\\n``
terminated):

1. client: ``ARTIQ pc_rpc`` -- server: its identification, a map
   ``{"targets": [...], "description": ..., "features": [...]}``, written so
   that it is both JSON and PYON v1 (masters of release-7/8 send no
   ``features``);
2. client: the target name, followed by `` pyon_v2`` only when the server
   offered the ``pyon_v2`` feature -- server: the target's method names
   (a PYON set);
3. per call, client: ``{"action": "call", "name": NAME, "args": [...],
   "kwargs": {...}}`` -- server: ``{"status": "ok", "ret": VALUE}`` or
   ``{"status": "failed", "exception": {"class", "message",
   "traceback"}}``.

Every message after the identification is PYON v2 (:mod:`artiq_journal.
pyon`) when ``pyon_v2`` was selected, PYON v1 (:mod:`artiq_journal.pyon_v1`)
otherwise: a release-7/8 master decodes v1 with ``eval`` and would reject
(or misread) v2 text.  Replies are decoded without ``eval``.

The master's scheduler is the target ``schedule`` (``master_schedule`` on
release-7); its
``submit(pipeline_name, expid, priority=0, due_date=None, flush=False)``
returns the new run's RID.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Callable

from . import pyon, pyon_v1
from .errors import JournalError

__all__ = ["MasterClient", "MasterError", "RemoteError", "DEFAULT_PORT",
           "parse_address"]

#: ``artiq_master``'s default control port (``--port-control``).
DEFAULT_PORT = 3251
_BANNER = b"ARTIQ pc_rpc\n"
#: The scheduler's target name: ARTIQ >= 8, release-7.
SCHEDULER_TARGETS = ("schedule", "master_schedule")
#: A reply line longer than this is not a reply to submit(): refuse it.
_MAX_LINE = 64 << 20


class MasterError(JournalError):
    """The master cannot be reached, or does not speak the protocol."""


class RemoteError(MasterError):
    """The call reached the master and raised there; ``remote_class`` is the
    exception's class name on the master."""

    def __init__(self, remote_class: str, message: str) -> None:
        super().__init__(f"the master raised {remote_class}: {message}")
        self.remote_class = remote_class
        self.remote_message = message


def parse_address(text: str, default_port: int = DEFAULT_PORT
                  ) -> tuple[str, int]:
    """``"HOST[:PORT]"`` (``"[::1]:3251"`` for IPv6) -> ``(host, port)``.
    ValueError for a malformed address."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad master address {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"bad master address {text!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad master address {text!r}: port must be "
                         "1..65535")
    return host, int(port_text)


class MasterClient:
    """A connection to one target of a sipyco RPC server (default: the
    master's scheduler, ``schedule`` or release-7's ``master_schedule``).
    Blocking; ``timeout`` (seconds) bounds each socket operation.  Use as a
    context manager, or call :meth:`close`."""

    def __init__(self, host: str, port: int = DEFAULT_PORT,
                 target: str | None = None, timeout: float | None = 10.0
                 ) -> None:
        self.address = (host, port)
        try:
            self._socket = socket.create_connection((host, port), timeout)
        except OSError as exc:
            raise MasterError(f"cannot connect to the master at "
                              f"{host}:{port}: {exc}") from exc
        self._buffer = b""
        try:
            self._socket.sendall(_BANNER)
            try:
                ident = json.loads(self._readline())
            except ValueError as exc:
                raise MasterError(f"{host}:{port} is not a sipyco RPC "
                                  f"server ({exc})") from None
            if not isinstance(ident, dict) or \
                    not isinstance(ident.get("targets"), list):
                raise MasterError(f"{host}:{port}: unexpected server "
                                  "identification")
            self.targets = list(ident["targets"])
            if target is None:
                target = next((t for t in SCHEDULER_TARGETS
                               if t in self.targets), SCHEDULER_TARGETS[0])
            self.target = target
            if target not in self.targets:
                raise MasterError(f"{host}:{port} has no RPC target "
                                  f"{target!r} (it has "
                                  f"{', '.join(map(str, self.targets))}): "
                                  "is it an ARTIQ master's control port?")
            #: True when the server speaks PYON v2 (ARTIQ >= 9's sipyco).
            self.pyon_v2 = "pyon_v2" in (ident.get("features") or [])
            self._encode: Callable[[Any], str] = (
                pyon.encode if self.pyon_v2 else pyon_v1.encode)
            self._decode: Callable[[str], Any] = (
                pyon.decode if self.pyon_v2 else pyon_v1.decode)
            line = target + (" pyon_v2" if self.pyon_v2 else "") + "\n"
            self._socket.sendall(line.encode())
            self.methods = set(self._receive())
        except BaseException:
            self._socket.close()
            raise

    def __enter__(self) -> "MasterClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()

    def _readline(self) -> str:
        while b"\n" not in self._buffer:
            try:
                chunk = self._socket.recv(65536)
            except socket.timeout:
                raise MasterError(f"{self.address[0]}:{self.address[1]}: no "
                                  "reply in time") from None
            except OSError as exc:
                raise MasterError(f"connection to the master failed: {exc}"
                                  ) from exc
            if not chunk:
                raise MasterError("the master closed the connection")
            self._buffer += chunk
            if len(self._buffer) > _MAX_LINE:
                raise MasterError("reply line too long")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _receive(self) -> Any:
        line = self._readline()
        try:
            return self._decode(line)
        except (ValueError, TypeError, RecursionError) as exc:
            raise MasterError(f"undecodable reply from the master: {exc}"
                              ) from None

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``name(*args, **kwargs)`` on the target and return its
        result.  RemoteError if it raised on the master; MasterError for
        protocol or connection failures."""
        if name not in self.methods:
            raise MasterError(f"the master's target has no method {name!r}")
        request = {"action": "call", "name": name, "args": list(args),
                   "kwargs": kwargs}
        try:
            self._socket.sendall((self._encode(request) + "\n").encode())
        except OSError as exc:
            raise MasterError(f"connection to the master failed: {exc}"
                              ) from exc
        reply = self._receive()
        if not isinstance(reply, dict):
            raise MasterError("malformed reply from the master")
        if reply.get("status") == "ok":
            return reply.get("ret")
        if reply.get("status") == "failed":
            exc_info = reply.get("exception") or {}
            raise RemoteError(str(exc_info.get("class", "?")),
                              str(exc_info.get("message", "")))
        raise MasterError("malformed reply from the master")

    def submit(self, pipeline_name: str, expid: dict, priority: int = 0,
               due_date: float | None = None, flush: bool = False) -> int:
        """Submit ``expid`` to the master's scheduler; the RID it assigned.
        """
        rid = self.call("submit", pipeline_name, expid, priority, due_date,
                        flush)
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise MasterError(f"submit() returned {rid!r}, not a RID")
        return rid
