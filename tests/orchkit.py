"""Helpers for the rollout end-to-end tests: `fleetstage rollout` as a process against
agents on a real mosquitto: the field lab's (tests/fieldlab.py: the shipped config, ACL,
passwords, TLS, each agent with its own login), through LabWorld.

InProcessGateways: real agents (agent.boot with the Pi platform, a paho link each,
their own client id and last will) driven in the test's own loop, with a gateway
application's traffic fed into each one's health (control.record_outcome): a
cohort whose calls fail from a given stage on rolls itself back there, as a bad
hardware revision would. Process agents (tests/agentkit.py) have no traffic of
their own, so this is how a stage-3 failure is made real.
"""
import os
import subprocess
import sys

from agent import boot
from agent.agent_config import load_config
from firmware_shim.files import FileSystem
from firmware_shim.mqtt_paho import MqttLoop
from tests.agentkit import REPO, AgentProcess
from tools.agent_cmd import PiPlatform

FAST = {"keepalive_s": 2, "backoff_min_s": 0.05, "backoff_max_s": 0.5,
        "health_interval_ms": 300, "status_interval_ms": 1000, "monitor_interval_ms": 200}


class Gateway:
    def __init__(self, agent, bad_from_stage=None):
        self.agent = agent
        self.bad_from_stage = bad_from_stage

    @property
    def stage(self):
        return self.agent.control.stage

    def traffic(self, calls=5):
        c = self.agent.control
        bad = self.bad_from_stage is not None and c.stage >= self.bad_from_stage
        for _ in range(calls):
            c.record_outcome(not bad, 10.0)


class InProcessGateways:
    def __init__(self, world, specs):
        """specs: {device_id: {"groups": [...], "hw": "rev-b", "bad_from_stage": 3}}."""
        self.loop = MqttLoop()
        self.gateways = {}
        for device_id, spec in specs.items():
            config = dict(FAST)
            config["control"] = {"window_ms": 1000, "thresholds": {"min_samples": 10}}
            config["control"].update(spec.get("control", {}))
            if spec.get("hw"):
                config["hw"] = spec["hw"]
            config.update(world.device_config(device_id))
            files = AgentProcess(os.path.join(world.tmp, "inproc"), world.broker, world.fleet,
                                 world.fleet_key, device_id, groups=spec.get("groups", ()),
                                 config=config)
            agent = boot.boot(load_config(files.config_path, FileSystem()), PiPlatform())
            self.loop.add(agent.link)
            agent.start()
            agent.link.start()
            self.gateways[device_id] = Gateway(agent, spec.get("bad_from_stage"))

    def pump(self, seconds=0.05):
        self.loop.run_once(seconds)
        for gw in self.gateways.values():
            gw.traffic()
            gw.agent.runtime.tick()

    def run_while(self, proc, timeout=120):
        """Pump until the process `proc` ends; returns its (stdout, stderr)."""
        import time

        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("rollout did not finish in %d s" % timeout)
            self.pump()
        return proc.communicate()

    def stages(self):
        return {d: gw.stage for d, gw in self.gateways.items()}

    def close(self):
        for gw in self.gateways.values():
            gw.agent.close()
        self.loop.close()


class LabAgent:
    """An agent process of the lab, started on demand, with the lab's operator CLI."""

    def __init__(self, lab, device_id, config=None):
        self.lab, self.device_id, self.config = lab, device_id, dict(config or {})
        self.proc = None

    def start(self):
        self.proc = self.lab.start_agent(self.device_id, **self.config)
        return self

    def cli(self, *args, timeout=60):
        return self.lab.cli(*args, timeout=timeout)


class LabWorld:
    """The field lab with the few names the rollout tests use (fleet, keys, observer,
    loop, agents, the operator's URL and profile)."""

    def __init__(self, lab):
        self.lab = lab
        self.fleet, self.fleet_key = lab.fleet, lab.fleet_key
        self.fleet_key_file = lab.fleet_key_file
        self.observer, self.loop, self.tmp = lab.observer, lab.loop, lab.tmp
        self.broker = _Url(lab.operator_url)

    def env(self):
        return self.lab.env()

    def agent(self, device_id, config=None):
        assert device_id in self.lab.devices, "give the lab every device up front"
        return LabAgent(self.lab, device_id, config)

    def device_config(self, device_id):
        """Agent config keys for a device's own login on the device TLS listener."""
        login = self.lab.device_login(device_id)
        return {"broker": self.lab.device_url, "tls": {"ca": login.ca},
                "credentials": {"username": login.username, "password": login.password}}

    def publish_as(self, device_id, topic, payload, retain=False):
        """Publish with a device's own broker login (as that device, or an attacker with it)."""
        link = self.lab.device_link(device_id)
        link.publish(topic, payload, qos=1, retain=retain)
        self.loop.run_until(lambda: not link.pending_out(), 5.0)


class _Url:
    def __init__(self, url):
        self.url = url
        rest = url.split("://", 1)[1]
        self.host, port = rest.rsplit(":", 1)
        self.port = int(port)


def rollout_args(world, state, *extra):
    return [sys.executable, "-m", "tools.cli", "rollout", "--broker", world.broker.url,
            "--key", world.fleet_key_file, "--fleet", world.fleet, "--state", state,
            "--timeout", "10", "--to-stage", "4", *extra]  # a later --to-stage in extra wins


def start_rollout(world, state, *extra):
    return subprocess.Popen(rollout_args(world, state, *extra), cwd=REPO, env=world.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_rollout(world, state, *extra, timeout=120):
    return subprocess.run(rollout_args(world, state, *extra), cwd=REPO, env=world.env(),
                          capture_output=True, text=True, timeout=timeout)
