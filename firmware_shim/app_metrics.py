"""Outcomes pushed by applications: statsd over UDP on loopback, and datagrams on
<run_dir>/metrics.sock (statsd lines, or JSON lines {"ok": bool, "latency_ms": n}).

Owns: the two datagram sockets, non-blocking, read a bounded number of
datagrams per poll, and turning what they carry into outcomes:
    <requests>:1|c    one call        (|@0.1 sample rates are honoured)
    <errors>:1|c      one failed call
    <latency>:12|ms   one call's latency (a timer; |h and |d are taken too)
Counts gathered in one poll become outcomes then: errors first, the rest ok,
the latencies spread over them. With no "requests" name, each latency is a
call. Unknown names and bad lines are counted and ignored (the first bad JSON
line is logged; the counts are in /v1/health's "inputs"). Outcomes from
statsd have the source "statsd"; JSON lines have their "source" or "app".
"""
from __future__ import annotations

import json
import os
import socket
from typing import Any, Callable

from firmware_shim.app_api import OutcomeError, parse_outcome
from firmware_shim.unix_server import bind_unix

METRICS_SOCKET = "metrics.sock"
STATSD_SOURCE = "statsd"
MAX_DATAGRAMS_PER_POLL = 2000
Record = Callable[[bool, "float | None", "str | None"], None]


class StatsdListenError(OSError):
    """health.statsd.listen cannot be bound (the port is taken, or the address is not here)."""


class StatsdBatch:
    def __init__(self, names: dict | None) -> None:
        names = names or {}
        self.requests = names.get("requests")
        self.errors = names.get("errors")
        self.latency = names.get("latency")
        self.calls = 0.0
        self.failed = 0.0
        self.latencies: list[float] = []
        self.ignored = 0

    def line(self, text: str) -> None:
        try:
            name, rest = text.split(":", 1)
            fields = rest.split("|")
            value = float(fields[0])
            kind = fields[1] if len(fields) > 1 else ""
            rate = 1.0
            for extra in fields[2:]:
                if extra.startswith("@"):
                    rate = float(extra[1:])
        except (ValueError, IndexError):
            self.ignored += 1
            return
        if value != value or value in (float("inf"), float("-inf")):
            self.ignored += 1  # nan / inf
            return
        if rate <= 0 or rate > 1:
            rate = 1.0
        if kind == "c" and name == self.requests:
            self.calls += value / rate
        elif kind == "c" and name == self.errors:
            self.failed += value / rate
        elif kind in ("ms", "h", "d") and name == self.latency and value >= 0:
            self.latencies.append(value)
        else:
            self.ignored += 1

    def flush(self, record: Record) -> int:
        calls = int(round(self.calls)) if self.requests else len(self.latencies)
        failed = int(round(self.failed))
        if failed > calls:
            calls = failed
        lat = self.latencies
        for i in range(calls):
            record(i >= failed, lat[i] if i < len(lat) else None, STATSD_SOURCE)
        self.calls = self.failed = 0.0
        self.latencies = []
        return calls


class MetricsListener:
    def __init__(self, run_dir: str, statsd: dict | None, record: Record,
                 log: Callable[[str], None] | None = None) -> None:
        self.record = record
        self.log = log or (lambda msg: None)
        self.batch = StatsdBatch(statsd)
        self.bad = 0
        self.received = 0
        self.path = os.path.join(run_dir, METRICS_SOCKET)
        self._socks: list[socket.socket] = [bind_unix(self.path, socket.SOCK_DGRAM, 0o660)]
        listen = (statsd or {}).get("listen")
        if listen is not None:
            host, port = listen
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.bind((host, port))
                udp.setblocking(False)
            except OSError as exc:
                udp.close()
                self.close()
                raise StatsdListenError(exc.errno, "cannot listen on UDP %s:%d: %s" % (
                    host, port, exc.strerror or exc)) from None
            except BaseException:
                udp.close()
                self.close()
                raise
            self._socks.append(udp)

    def poll(self) -> None:
        budget = MAX_DATAGRAMS_PER_POLL
        for sock in self._socks:
            while budget > 0:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                budget -= 1
                self.received += 1
                self._datagram(data)
        self.batch.flush(self.record)

    def _datagram(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeError:
            self._bad("a datagram that is not UTF-8")
            return
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    ok, latency, source = parse_outcome(json.loads(line))
                except (ValueError, OutcomeError) as exc:
                    self._bad("outcome line %r: %s" % (line[:80], exc))
                    continue
                self.record(ok, latency, source)
            else:
                self.batch.line(line)

    def _bad(self, what: str) -> None:
        """Count it; say the first one (an app pushing a wrong format pushes it all day)."""
        self.bad += 1
        if self.bad == 1:
            self.log("metrics: refused %s (later ones are only counted: /v1/health "
                     "inputs.bad)" % what)

    def stats(self) -> dict[str, Any]:
        """What /v1/health shows under "inputs": datagrams taken, bad ones (not UTF-8, or a
        JSON outcome line refused) and statsd lines ignored (unknown name or not a metric)."""
        return {"datagrams": self.received, "bad": self.bad, "ignored": self.batch.ignored}

    def close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks = []
        try:
            os.unlink(self.path)
        except OSError:
            pass
