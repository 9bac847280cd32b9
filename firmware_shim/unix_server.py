"""Non-blocking unix-socket servers polled from the agent's loop (CPython, a Pi).

Owns: accepting, reading and writing for the local console (one JSON line
each way) and the applications' HTTP API, without ever waiting on a client.
Every `poll()` accepts what is queued, reads what has arrived, writes what
the socket takes and returns: a client that sends one byte every 1.5 s, or
none at all, or never reads its answer, costs a few microseconds per poll and
is dropped after `idle_timeout_s` of silence or twice that without a whole
request (or at `max_clients`, the least recently heard first).
Must never: block, or hand a half-read request to a handler.

A protocol is an object made per connection by `factory()`:
    feed(data: bytes) -> None     bytes arrived
    eof() -> None                 the client closed its side
    tick(now: float) -> None      every poll (long polls answer from here)
    out: bytearray                bytes to send; the server drains it
    done: bool                    close once `out` is drained
    busy: bool                    a parked long poll: not idle while True
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

try:
    import grp
except ImportError:  # pragma: no cover - not on a Pi
    grp = None  # type: ignore[assignment]

APP_GROUP = "fleetstage"


def local_group_id(name: str, group_file: str = "/etc/group") -> int | None:
    """The gid of a local group, read from /etc/group (None when it has no such line).

    Not grp.getgrnam: its NSS modules (nss-systemd and libcap here) stay loaded
    and cost the agent ~0.5 MB resident for its whole life (idle RSS target
    25 MB), and the group `fleetstage install` makes is a local one.
    """
    try:
        with open(group_file) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                    return int(fields[2])
    except OSError:
        return None
    return None


def share_with_group(path: str, mode: int) -> None:
    """chmod path; chgrp it to the `fleetstage` group when that group exists (a Pi)."""
    os.chmod(path, mode)
    if grp is None:
        return
    gid = local_group_id(APP_GROUP)
    if gid is None:
        return
    try:
        os.chown(path, -1, gid)
    except OSError:
        pass


def bind_unix(path: str, kind: int, mode: int) -> socket.socket:
    """A non-blocking unix socket at path (a stale one from a crashed agent is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(path)
        share_with_group(path, mode)
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Client:
    __slots__ = ("sock", "proto", "last", "started", "closed_in")

    def __init__(self, sock: socket.socket, proto: Any, now: float) -> None:
        self.sock = sock
        self.proto = proto
        self.last = now
        self.started = now
        self.closed_in = False


class StreamServer:
    def __init__(self, path: str, factory: Callable[[], Any], mode: int = 0o600,
                 max_clients: int = 32, idle_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.factory = factory
        self.max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self._sock = bind_unix(path, socket.SOCK_STREAM, mode)
        self._clients: list[_Client] = []
        self.dropped = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def clients(self) -> int:
        return len(self._clients)

    def poll(self) -> None:
        now = self.clock()
        self._accept(now)
        for client in list(self._clients):
            try:
                self._service(client, now)
            except Exception:  # a client that misbehaves must not hurt the agent
                self._drop(client)

    def _accept(self, now: float) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            if len(self._clients) >= self.max_clients:
                self._drop(min(self._clients, key=lambda c: c.last))
            self._clients.append(_Client(conn, self.factory(), now))

    def _service(self, client: _Client, now: float) -> None:
        proto = client.proto
        for _ in range(4):  # bounded work per client per poll
            if client.closed_in or proto.done:
                break
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                client.closed_in = True
                proto.eof()
                break
            client.last = now
            proto.feed(data)
        proto.tick(now)
        if proto.out:
            try:
                sent = client.sock.send(proto.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent:
                del proto.out[:sent]
                client.last = now
        if proto.done and not proto.out:
            self._drop(client)
        elif client.closed_in and not proto.out and not proto.busy:
            self._drop(client)
        elif not proto.busy and (now - client.last > self.idle_timeout_s
                                 or now - client.started > 2 * self.idle_timeout_s):
            self._drop(client)  # silent, or trickling a request that never ends

    def _drop(self, client: _Client) -> None:
        if client in self._clients:
            self._clients.remove(client)
            self.dropped += 1
        try:
            client.sock.close()
        except OSError:
            pass

    def close(self) -> None:
        for client in list(self._clients):
            self._drop(client)
        self._sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
