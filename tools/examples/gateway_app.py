"""An example gateway application: an HTTP service whose code path follows a flag.

    python -m tools.examples.gateway_app --port 8080 [--mode errors|slow|crash]
        [--run-dir /run/fleetstage] [--latency-ms 20] [--push none|json|statsd]
        [--statsd 127.0.0.1:8125] [--traffic 50]

GET /healthz and GET /work run one request. While the flag
use_genserver_telemetry is off they take the old path (ok, --latency-ms).
While it is on they take a deliberately broken new path:
    errors  about 30% of requests fail with 500
    slow    3x slower
    crash   the process exits (systemd, or whoever runs it, restarts it)
GET /state says which path runs: {"telemetry", "revision", "mode"}.

The flag comes from <run_dir>/flags.json through tools.appclient (a stat per
request; re-read only when the agent replaced it). With --push the app also
reports each request's outcome itself: JSON lines on <run_dir>/metrics.sock,
or statsd lines (gw.requests, gw.errors, gw.latency) over UDP. --traffic N
makes it serve N requests a second to itself, so a pushed outcome stream
exists without outside load. Every flag change it sees is printed:
    flag use_genserver_telemetry on (revision 7)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tools.appclient import FlagsClient

FLAG = "use_genserver_telemetry"


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.flags = FlagsClient(args.run_dir, source="gateway-app")
        self.rng = random.Random(args.seed)
        self.lock = threading.Lock()
        self.seen: tuple[bool, int] | None = None
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host, _, port = args.statsd.rpartition(":")
        self.statsd = (host, int(port))

    def telemetry(self) -> bool:
        on = self.flags.enabled(FLAG)
        now = (on, self.flags.revision)
        with self.lock:
            if self.seen is None or self.seen[0] != on:
                print("flag %s %s (revision %d)" % (FLAG, "on" if on else "off", now[1]),
                      flush=True)
            self.seen = now
        return on

    def serve_one(self) -> tuple[int, float]:
        """One request: (HTTP status, latency ms)."""
        start = time.monotonic()
        base = self.args.latency_ms / 1000
        status = 200
        if self.telemetry():
            mode = self.args.mode
            if mode == "crash":
                print("new path: crashing", flush=True)
                os._exit(3)
            if mode == "slow":
                time.sleep(base * 3)
            else:
                time.sleep(base)
                with self.lock:
                    if self.rng.random() < 0.30:
                        status = 500
        else:
            time.sleep(base)
        latency = (time.monotonic() - start) * 1000
        self.push(status < 400, latency)
        return status, latency

    def push(self, ok: bool, latency: float) -> None:
        if self.args.push == "json":
            self.flags.report(ok, latency)
        elif self.args.push == "statsd":
            lines = ["gw.requests:1|c", "gw.latency:%.3f|ms" % latency]
            if not ok:
                lines.append("gw.errors:1|c")
            try:
                self.udp.sendto("\n".join(lines).encode(), self.statsd)
            except OSError:
                pass

    def state(self) -> dict:
        return {"telemetry": self.flags.enabled(FLAG), "revision": self.flags.revision,
                "mode": self.args.mode}


def handler_for(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            if self.path == "/state":
                self._reply(200, app.state())
            elif self.path in ("/healthz", "/work"):
                status, latency = app.serve_one()
                self._reply(status, {"ok": status < 400, "latency_ms": round(latency, 2)})
            else:
                self._reply(404, {"error": "try /work, /healthz or /state"})

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


def self_traffic(app: App, per_second: float) -> None:
    gap = 1.0 / per_second
    while True:
        app.serve_one()
        time.sleep(gap)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gateway_app", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--mode", choices=("errors", "slow", "crash"), default="errors")
    p.add_argument("--run-dir", default=None, help="the agent's run_dir (default "
                   "$FLEETSTAGE_RUN_DIR or /run/fleetstage)")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--push", choices=("none", "json", "statsd"), default="none")
    p.add_argument("--statsd", default="127.0.0.1:8125")
    p.add_argument("--traffic", type=float, default=0.0, help="requests a second to itself")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    app = App(args)
    try:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(app))
    except OSError as exc:
        print("gateway_app: cannot listen on 127.0.0.1:%d: %s (pick another --port)"
              % (args.port, exc.strerror or exc), file=sys.stderr)
        return 2
    app.telemetry()
    print("gateway app on 127.0.0.1:%d mode %s" % (args.port, args.mode), flush=True)
    if args.traffic > 0:
        threading.Thread(target=self_traffic, args=(app, args.traffic), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
