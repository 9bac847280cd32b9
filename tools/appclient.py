"""fleetstage's helper for the gateway's own Python applications.

    from tools import appclient

    if appclient.enabled("use_genserver_telemetry"):   # reads flags.json, cached
        ...
    snap = appclient.wait_for_change(timeout=30)       # long poll on api.sock
    appclient.report(ok=True, latency_ms=12.5)         # one outcome to metrics.sock

The run directory is FLEETSTAGE_RUN_DIR, or /run/fleetstage (the agent
config's run_dir). `enabled` re-reads <run_dir>/flags.json only when the file
was replaced (the agent replaces it atomically on every change), so it costs
a stat() per call. `report` sends one datagram and never blocks or raises
when no agent listens (the outcome is dropped and counted in `dropped`).
Other languages: see the README ("Gateway applications") for the same with
curl --unix-socket and a datagram socket.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
from typing import Any

DEFAULT_RUN_DIR = "/run/fleetstage"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class FlagsClient:
    def __init__(self, run_dir: str | None = None, source: str | None = None) -> None:
        self.run_dir = run_dir or os.environ.get("FLEETSTAGE_RUN_DIR") or DEFAULT_RUN_DIR
        self.source = source
        self._stamp: tuple[int, int] | None = None
        self._snap: dict[str, Any] = {}
        self._out: socket.socket | None = None
        self.dropped = 0

    # -- reading flags ---------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The current flags.json ({} before the agent first wrote it)."""
        path = os.path.join(self.run_dir, "flags.json")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return self._snap
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._stamp:
            try:
                with open(path, "rb") as f:
                    snap = json.loads(f.read())
            except (OSError, ValueError):
                return self._snap  # replaced between stat and open: the next call reads it
            # a replaced file is the agent's word, even with a lower revision: that is
            # an agent whose state dir was reset, and ignoring it would keep old flags
            self._snap = snap
            self._stamp = stamp
        return self._snap

    @property
    def revision(self) -> int:
        return int(self.snapshot().get("revision", -1))

    def enabled(self, name: str, default: bool = False) -> bool:
        return bool(self.snapshot().get("flags", {}).get(name, default))

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, dict[str, Any] | None]:
        """GET path on api.sock -> (status, JSON body or None)."""
        conn = _UnixHTTPConnection(os.path.join(self.run_dir, "api.sock"), timeout)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            body = reply.read()
            return reply.status, (json.loads(body) if body else None)
        finally:
            conn.close()

    def wait_for_change(self, after: int | None = None, timeout: float = 30.0
                        ) -> dict[str, Any] | None:
        """Block until the revision is not `after` (default: the one last seen; a lower
        one is an agent whose state dir was reset, and is news as well);
        the new snapshot, or None after `timeout` s. Uses the API's long poll; with no
        agent answering, watches flags.json instead."""
        if after is None:
            after = self.revision
        try:
            status, body = self.get(f"/v1/flags?after={after}&wait={timeout:g}", timeout + 5)
        except OSError:
            return self._watch_file(after, timeout)
        if status == 200 and body is not None:
            self._snap = body  # the agent's word, as a replaced flags.json is
            return body
        return None

    def _watch_file(self, after: int, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.snapshot()
            if snap.get("revision", -1) != after:
                return snap
            time.sleep(0.2)
        return None

    # -- reporting outcomes ----------------------------------------------
    def report(self, ok: bool, latency_ms: float | None = None, source: str | None = None
               ) -> bool:
        """One outcome to the agent's health window; False when no agent took it.

        Raises ValueError for what the agent would refuse (ok not a bool, a latency that
        is not a finite number >= 0, a bad source name), before anything is sent: a
        datagram the agent drops would otherwise look delivered."""
        msg: dict[str, Any] = {"ok": ok, "latency_ms": latency_ms}
        if source or self.source:
            msg["source"] = source or self.source
        _check_outcome(msg)
        try:
            if self._out is None:
                self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._out.setblocking(False)
            self._out.sendto(json.dumps(msg).encode() + b"\n",
                             os.path.join(self.run_dir, "metrics.sock"))
            return True
        except OSError:  # no agent, or its queue is full: never block the application
            self.dropped += 1
            return False


_SOURCE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


def _check_outcome(msg: dict[str, Any]) -> None:
    """The agent's own check of an outcome (firmware_shim.app_api.parse_outcome, kept here
    too: this file is standard library only, so an application can copy it)."""
    if msg["ok"] is not True and msg["ok"] is not False:
        raise ValueError("ok must be True or False, not %r" % (msg["ok"],))
    latency = msg["latency_ms"]
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float))
                                or not 0 <= latency < float("inf")):
        raise ValueError("latency_ms must be a finite number >= 0, not %r" % (latency,))
    source = msg.get("source")
    if source is not None and (not isinstance(source, str) or not 0 < len(source) <= 48
                               or not _SOURCE_CHARS.issuperset(source)):
        raise ValueError("source must be a name of 1..48 characters of A-Z a-z 0-9 _ . : -")


_default: FlagsClient | None = None


def client() -> FlagsClient:
    global _default
    if _default is None:
        _default = FlagsClient()
    return _default


def enabled(name: str, default: bool = False) -> bool:
    return client().enabled(name, default)


def snapshot() -> dict[str, Any]:
    return client().snapshot()


def wait_for_change(after: int | None = None, timeout: float = 30.0) -> dict[str, Any] | None:
    return client().wait_for_change(after, timeout)


def report(ok: bool, latency_ms: float | None = None, source: str | None = None) -> bool:
    return client().report(ok, latency_ms, source)
