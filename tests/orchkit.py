"""Helpers for the rollout end-to-end tests: `fleetstage rollout` as a process against
agents on a real mosquitto.

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


def rollout_args(world, state, *extra):
    return [sys.executable, "-m", "tools.cli", "rollout", "--broker", world.broker.url,
            "--key", world.fleet_key_file, "--fleet", world.fleet, "--state", state,
            "--timeout", "10", *extra]


def start_rollout(world, state, *extra):
    return subprocess.Popen(rollout_args(world, state, *extra), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_rollout(world, state, *extra, timeout=120):
    return subprocess.run(rollout_args(world, state, *extra), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
