"""The agent's door to the gateway's own applications, on a Pi: flags out, health in.

Owns: wiring, for `fleetstage agent`, the run directory's files
(firmware_shim.app_files), the HTTP API on api.sock (firmware_shim.app_api),
the metrics datagram socket and statsd (firmware_shim.app_metrics) and the
probes (firmware_shim.probes) to one MigrationControl, all polled from the
agent's loop, and the run directory's lock (<run_dir>/run.lock, held for the
agent's life: a second agent given the same run_dir is refused before it can
replace the first one's flags.json or sockets). Must never: block that loop
(nothing here waits on a client, a probe or a socket) or let an application's
mistake stop the agent.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from agent import app_flags
from agent.control import ControlError
from firmware_shim.app_api import API_SOCKET, HttpConn
from firmware_shim.app_files import AppFiles, ensure_run_dir
from firmware_shim.app_metrics import MetricsListener
from firmware_shim.probes import ProbeRunner
from firmware_shim.unix_server import StreamServer
from tools.local_cmd import StateDirLock, StateDirLocked, lock_holder_pid

MAX_RESTARTS_PER_READING = 20
RUN_LOCK = "run.lock"


class RunDirInUse(Exception):
    """Another running agent holds <run_dir>/run.lock."""


class AppSide:
    def __init__(self, run_dir: str, health: dict, control: Any,
                 log: Callable[[str], None] | None = None) -> None:
        self.control = control
        self.log = log or (lambda msg: None)
        self.rejected = 0
        self._snapshot: dict = {}
        self.lock = StateDirLock(ensure_run_dir(run_dir), RUN_LOCK)
        try:
            self.lock.acquire()
        except StateDirLocked:
            pid = lock_holder_pid(run_dir, RUN_LOCK)
            raise RunDirInUse("%s is the run_dir of another running agent%s: give each agent "
                              "its own run_dir" % (run_dir, " (PID %d)" % pid if pid else "")
                              ) from None
        try:
            self.files = AppFiles(run_dir, self.current, app_flags.flagd_document, self.log)
            self.files.sync()
            self.api = StreamServer(os.path.join(run_dir, API_SOCKET), lambda: HttpConn(self),
                                    mode=0o660)
        except BaseException:
            self.lock.release()
            raise
        try:
            self.metrics = MetricsListener(run_dir, health.get("statsd"), self.record, self.log)
        except BaseException:
            self.api.close()
            self.lock.release()
            raise
        for probe in health.get("probes", []):
            if probe["initial_delay_s"] > 0:
                control.set_source_grace(probe["name"], int(probe["initial_delay_s"] * 1000))
        self.probes = ProbeRunner(health.get("probes", []), self, log=self.log)

    # -- what the API and the listeners call (on the loop's thread) --------
    def current(self) -> dict:
        """The flags.json document for the control's revision (made again only when it moved)."""
        rev = app_flags.revision_of(self.control)
        if self._snapshot.get("revision") != rev:
            self._snapshot = app_flags.snapshot(self.control, time.time())
        return self._snapshot

    def health(self) -> dict:
        status = self.control.status()
        return {"system_health": status["system_health"], "monitoring": status["monitoring"],
                "stage": status["current_stage"], "state": status["state"],
                "inputs": dict(self.metrics.stats(), refused=self.rejected)}

    def record(self, ok: bool, latency_ms: float | None, source: str | None) -> None:
        try:
            self.control.record_outcome(ok, latency_ms, source=source)
        except ControlError:
            self.rejected += 1

    # -- the probe runner's sink -------------------------------------------
    def outcome(self, ok: bool, latency_ms: float | None, source: str) -> None:
        self.record(ok, latency_ms, source)

    def outcomes(self, calls: int, errors: int, latency_ms: float | None, source: str) -> None:
        self.control.record_outcomes(calls, errors, latency_ms, source)

    def restarts(self, name: str, count: int) -> None:
        for _ in range(min(count, MAX_RESTARTS_PER_READING)):
            self.control.record_restart(name)

    # -- the loop ----------------------------------------------------------
    def poll(self) -> None:
        self.files.sync()
        self.probes.poll()
        self.metrics.poll()
        self.api.poll()

    def close(self) -> None:
        self.probes.close()
        self.metrics.close()
        self.api.close()
        self.lock.release()
