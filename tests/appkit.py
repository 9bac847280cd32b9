"""Helpers for the gateway-application end-to-end tests (tests/test_apps_e2e.py).

A Gateway lives on a field lab (tests/fieldlab.py: mosquitto from the shipped
config with the generated ACL, passwords and TLS; the agent a `fleetstage agent`
process with its own login; operator tools as processes with the lab's
profile). On top of the lab it adds the example application
(tools/examples/gateway_app.py) as its own process, `publish-stage` to this one
device, `fleetstage local status` and waits that keep the lab's MQTT loop (its
observer of the device's reports) running.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable

from firmware_shim.mqtt_paho import free_port
from tests.agentkit import REPO, AgentProcess
from tests.fieldlab import FieldLab

CONTROL = {"window_ms": 10000, "cooldown_ms": 600000}


def gateway_lab(field_lab: Callable[..., FieldLab], device: str) -> FieldLab:
    """A field lab whose fleet is this one gateway, in group `apps`."""
    return field_lab(devices=[device], groups={device: ["apps"]})


class Gateway:
    """One gateway of a field lab: its agent process and (optionally) the example app."""

    def __init__(self, lab: FieldLab, device: str, health: dict | None = None,
                 control: dict | None = None) -> None:
        self.lab, self.device = lab, device
        self.config: dict[str, Any] = {"control": dict(CONTROL, **(control or {}))}
        if health is not None:
            self.config["health"] = health
        self.agent: AgentProcess | None = None
        self.run_dir = ""
        self.app: subprocess.Popen | None = None
        self.app_log = os.path.join(lab.tmp, device + "-app.log")
        self.port = 0

    def wait(self, predicate: Callable[[], Any], timeout: float = 30) -> bool:
        """Poll `predicate` while the lab's loop runs (its observer keeps every report)."""
        return self.lab.loop.run_until(lambda: bool(predicate()), timeout)

    def start_agent(self) -> Gateway:
        """The lab's agent process (the device's own login and key), up once it wrote
        flags.json. The process inherits this process's environment (PATH included)."""
        self.agent = self.lab.start_agent(self.device, **self.config)
        self.run_dir = self.agent.run_dir
        flags = os.path.join(self.run_dir, "flags.json")
        assert self.wait(lambda: os.path.exists(flags), 20), self.agent.log()
        return self

    def start_app(self, *args: str, port: int | None = None,
                  wrapper: list[str] | None = None) -> Gateway:
        self.port = port or free_port()
        # 50 ms a request: the jitter of a loaded CI machine stays well inside stage 3's
        # 10% performance budget, so the errors cases are judged on their errors
        cmd = [sys.executable, "-m", "tools.examples.gateway_app", "--port", str(self.port),
               "--run-dir", self.run_dir, "--latency-ms", "50", "--seed", "1", *args]
        if wrapper is not None:
            cmd = wrapper + cmd
        log = open(self.app_log, "ab")
        self.app = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        assert self.wait(lambda: "gateway app on" in self.app_output(), 20), self.app_output()
        return self

    def app_output(self) -> str:
        try:
            with open(self.app_log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def agent_log(self) -> str:
        return self.agent.log() if self.agent is not None else ""

    def publish_stage(self, stage: int) -> dict:
        """`fleetstage publish-stage` (the lab's operator profile) to this device only."""
        r = self.lab.cli("publish-stage", "--target", "device:" + self.device, "--json",
                         "--timeout", "30", str(stage))
        assert r.returncode == 0, (r.stdout, r.stderr, self.agent_log()[-3000:])
        out = json.loads(r.stdout)
        assert out["devices"][self.device]["result"] == "applied", out
        return out

    def local(self, *args: str) -> subprocess.CompletedProcess:
        assert self.agent is not None
        return self.lab.cli("local", *args, "--config", self.agent.config_path)

    def status(self) -> dict:
        r = self.local("status", "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        return json.loads(r.stdout)["status"]

    def snapshot(self) -> dict:
        with open(os.path.join(self.run_dir, "flags.json")) as f:
            return json.load(f)

    def source_samples(self, name: str) -> int:
        src = self.status()["system_health"]["sources"].get(name) or {}
        return int(src.get("samples", 0))

    def events(self) -> list[tuple[str, dict]]:
        """The device's events (name, payload), as the lab's observer verified them."""
        return [(e["name"], e["payload"]) for e in self.lab.observer.of("event")
                if e.get("device") == self.device]

    def event_names(self) -> list[str]:
        return [n for n, _ in self.events()]

    def stop(self) -> None:
        if self.app is not None and self.app.poll() is None:
            self.app.terminate()
            self.app.wait(10)
        if self.agent is not None:
            self.agent.stop()
