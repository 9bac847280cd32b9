"""Helpers for end-to-end tests: an agent PROCESS, an observer of its reports,
and an operator client, all on a real mosquitto (tests/mqttkit.py)."""
import json
import os
import signal
import subprocess
import sys
import time

from agent import protocol as P
from agent.plan import Plan
from firmware_shim.mqtt_paho import MqttConfig, MqttLoop, PahoLink
from tests.mqttkit import unique
from tools.operator_cmd import OperatorClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN = Plan.default()


class Observer:
    """Collects every report of a fleet, verified with each device's key."""

    def __init__(self, broker, fleet, fleet_key, loop):
        self.fleet, self.fleet_key, self.loop = fleet, fleet_key, loop
        self.reports = []  # (leaf, report dict, retained)
        self.bad = 0
        # A persistent session: QoS 1 reports sent while we reconnect still reach us.
        self.link = PahoLink(MqttConfig(broker.host, broker.port, client_id=unique("obs"),
                                        clean_session=False, backoff_min=0.05,
                                        backoff_max=0.3))
        self.link.set_callbacks(on_message=self._on)
        self.link.subscribe(f"fleetstage/{fleet}/device/#", qos=1)
        loop.add(self.link)
        self.link.start()
        assert loop.run_until(lambda: self.link.connected, 10)

    def _on(self, topic, payload, retain):
        device = topic.split("/")[3]
        leaf = topic.split("/")[4]
        try:
            rep = P.decode_report(payload, P.derive_device_key(self.fleet_key, device), leaf)
        except P.ProtocolError:
            self.bad += 1
            return
        self.reports.append((leaf, rep, retain))

    def of(self, leaf):
        return [r for lf, r, _ in self.reports if lf == leaf]

    def wait_for(self, predicate, timeout=15.0):
        ok = self.loop.run_until(predicate, timeout)
        assert ok, f"timed out; last reports: {self.reports[-5:]}"

    def last_status(self):
        statuses = self.of("status")
        return statuses[-1] if statuses else None

    def wait_stage(self, stage, timeout=15.0):
        def at_stage():
            st = self.last_status()
            return st is not None and st.get("online") and st.get("stage") == stage
        self.wait_for(at_stage, timeout)
        return self.last_status()


class AgentProcess:
    """`python -m tools.cli agent --config ...` in a subprocess."""

    def __init__(self, workdir, broker, fleet, fleet_key, device_id="gw1", groups=("pilot",),
                 config=None):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.device_id = device_id
        self.key_file = os.path.join(workdir, device_id + ".key")
        with open(self.key_file, "wb") as f:
            f.write(P.format_key_file(P.derive_device_key(fleet_key, device_id), "device",
                                      device_id))
        self.state_dir = os.path.join(workdir, "state-" + device_id)
        self.run_dir = os.path.join(workdir, "run-" + device_id)
        cfg = {
            "device_id": device_id, "fleet": fleet, "groups": list(groups),
            "broker": broker.url, "key_file": self.key_file, "state_dir": self.state_dir,
            "run_dir": self.run_dir, "environment": "dev", "keepalive_s": 2, "backoff_min_s": 0.05,
            "backoff_max_s": 0.5, "health_interval_ms": 300, "status_interval_ms": 1000,
            "monitor_interval_ms": 1000,
        }
        cfg.update(config or {})
        self.config_path = os.path.join(workdir, device_id + ".json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f)
        self.log_path = os.path.join(workdir, device_id + ".log")
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "agent", "--config", self.config_path],
            cwd=REPO, stdout=log, stderr=log)
        log.close()
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.alive():
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self):
        self.kill(signal.SIGTERM)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def cli(self, *args, timeout=30):
        return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)


class World:
    """One fleet on one broker: key, loop, observer, operator."""

    def __init__(self, broker, tmp_path):
        self.broker = broker
        self.fleet = unique("fleet")
        self.fleet_key = P.new_fleet_key()
        self.tmp = str(tmp_path)
        self.loop = MqttLoop()
        self.observer = Observer(broker, self.fleet, self.fleet_key, self.loop)
        self.operator = OperatorClient(broker.url, self.fleet, self.fleet_key, loop=self.loop)
        self.operator.connect()
        self.agents = []
        self.fleet_key_file = os.path.join(self.tmp, "fleet.key")
        with open(self.fleet_key_file, "wb") as f:
            f.write(P.format_key_file(self.fleet_key, "fleet"))

    def agent(self, device_id="gw1", **kw):
        a = AgentProcess(self.tmp, self.broker, self.fleet, self.fleet_key, device_id, **kw)
        self.agents.append(a)
        return a

    def publish_raw(self, target, payload, desired=False, retain=False):
        topic = (P.desired_topic if desired else P.cmd_topic)(self.fleet, target)
        self.operator.link.publish(topic, payload, qos=1, retain=retain)

    def close(self):
        for a in self.agents:
            a.stop()
        self.loop.close()


def wait_until(predicate, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
