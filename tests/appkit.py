"""Helpers for the gateway-application end-to-end tests (tests/test_apps_e2e.py).

A mosquitto with TLS (a throw-away CA; every client verifies the broker) and
the project's generated ACL and password file (every client logs in: the
operator CLI as `operator`, each agent as its own device), the
agent as a `fleetstage agent` process, the example application
(tools/examples/gateway_app.py) as its own process, operator commands through
the `fleetstage` CLI, and the device's reports read with the operator login.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading

from agent import protocol as P
from firmware_shim.mqtt_paho import MqttConfig, MqttLoop, PahoLink, free_port
from tests.agentkit import REPO, AgentProcess, wait_until
from tests.mqttkit import Broker, unique
from tools.mosquitto_acl import render_acl, render_passwords

DEVICES = ("gw-err", "gw-statsd", "gw-lat", "gw-crash", "gw-quiet", "gw-flagd", "gw-slow")


def _openssl(d, *args):
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)


def _pki(d):
    """A throw-away CA and a broker certificate for 127.0.0.1 -> (ca, cert, key) paths."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(d, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=apps-test-ca")
    _openssl(d, "req", *ec, "-keyout", "broker.key", "-out", "broker.csr", "-subj",
             "/CN=127.0.0.1")
    with open(os.path.join(d, "broker.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    _openssl(d, "x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "broker.crt", "-days", "2", "-extfile", "broker.ext")
    return (os.path.join(d, "ca.crt"), os.path.join(d, "broker.crt"),
            os.path.join(d, "broker.key"))


class Lab:
    """One fleet on one ACL'd broker, shared by a test module."""

    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix="fleetstage-apps-")
        self.fleet = unique("apps")
        self.fleet_key = P.new_fleet_key()
        self.passwords = {"operator": "op-" + unique("pw")}
        for d in DEVICES:
            self.passwords[d] = "pw-" + unique(d)
        pw_path = os.path.join(self.workdir, "passwd")
        with open(pw_path, "w") as f:
            f.write(render_passwords(self.passwords))
        os.chmod(pw_path, 0o600)
        acl_path = os.path.join(self.workdir, "acl")
        with open(acl_path, "w") as f:
            f.write(render_acl(self.fleet, {d: ["apps"] for d in DEVICES}))
        # (no use_username_as_clientid: the observer and each CLI run log in as the
        # operator at the same time, each with its own client id)
        self.ca, cert, key = _pki(self.workdir)
        extra = (f"allow_anonymous false\npassword_file {pw_path}\nacl_file {acl_path}\n"
                 f"certfile {cert}\nkeyfile {key}\n")
        self.broker = Broker(self.workdir, extra=extra).start()
        self.broker.url = "mqtts://127.0.0.1:%d" % self.broker.port
        self.key_file = os.path.join(self.workdir, "fleet.key")
        with open(self.key_file, "wb") as f:
            f.write(P.format_key_file(self.fleet_key, "fleet"))
        self.op_password_file = os.path.join(self.workdir, "operator.pw")
        with open(self.op_password_file, "w") as f:
            f.write(self.passwords["operator"] + "\n")
        os.chmod(self.op_password_file, 0o600)

    def close(self):
        self.broker.stop()


class Reports:
    """A device's events and statuses, read with the operator's login."""

    def __init__(self, lab, device):
        self.loop = MqttLoop()
        self.events = []
        key = P.derive_device_key(lab.fleet_key, device)
        cfg = MqttConfig(lab.broker.host, lab.broker.port, client_id=unique("operator-obs"),
                         username="operator", password=lab.passwords["operator"], tls=True,
                         ca=lab.ca)
        self.link = PahoLink(cfg)

        def on(topic, payload, retain):
            leaf = topic.split("/")[-1]
            try:
                rep = P.decode_report(payload, key, leaf)
            except P.ProtocolError:
                return
            if leaf == "event":
                self.events.append((rep["name"], rep["payload"]))

        ready = []

        def on_any(topic, payload, retain):
            if topic.endswith("/obs-ready"):
                ready.append(1)
            else:
                on(topic, payload, retain)

        self.link.set_callbacks(on_message=on_any)
        self.link.subscribe(f"fleetstage/{lab.fleet}/device/{device}/event", qos=1)
        ready_topic = f"fleetstage/{lab.fleet}/device/{device}/obs-ready"
        self.link.subscribe(ready_topic, qos=1)
        self.loop.add(self.link)
        self.link.start()
        assert self.loop.run_until(lambda: self.link.connected, 10)
        for _ in range(50):  # a round trip: the subscriptions are in place
            self.link.publish(ready_topic, b"1", qos=1)
            if self.loop.run_until(lambda: ready, 0.2):
                break
        assert ready
        # the loop runs in its own thread from here: no report is missed while a
        # test waits on the agent, and keepalives go out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.loop.run_once(0.05)

    def wait(self, predicate, timeout=30):
        return wait_until(predicate, timeout)

    def names(self):
        return [n for n, _ in list(self.events)]

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.loop.close()


class Gateway:
    """One gateway: its agent process and (optionally) the example app process."""

    def __init__(self, lab, tmp, device, health=None, control=None, env=None):
        self.lab, self.device = lab, device
        self.env = dict(os.environ, **(env or {}))
        config = {"credentials": {"username": device, "password": lab.passwords[device]},
                  "tls": {"ca": lab.ca},
                  "groups": ["apps"],
                  "control": dict({"window_ms": 10000, "cooldown_ms": 600000}, **(control or {}))}
        if health is not None:
            config["health"] = health
        self.agent = AgentProcess(str(tmp), lab.broker, lab.fleet, lab.fleet_key, device,
                                  groups=("apps",), config=config)
        self.run_dir = self.agent.run_dir
        self.app = None
        self.app_log = os.path.join(str(tmp), device + "-app.log")

    def start_agent(self):
        log = open(self.agent.log_path, "ab")
        self.agent.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "agent", "--config", self.agent.config_path],
            cwd=REPO, stdout=log, stderr=log, env=self.env)
        log.close()
        assert wait_until(lambda: os.path.exists(os.path.join(self.run_dir, "flags.json")),
                          20), self.agent.log()
        return self

    def start_app(self, *args, port=None, wrapper=None):
        self.port = port or free_port()
        # 50 ms a request: the jitter of a loaded CI machine stays well inside stage 3's
        # 10% performance budget, so the errors cases are judged on their errors
        cmd = [sys.executable, "-m", "tools.examples.gateway_app", "--port", str(self.port),
               "--run-dir", self.run_dir, "--latency-ms", "50", "--seed", "1", *args]
        if wrapper is not None:
            cmd = wrapper + cmd
        log = open(self.app_log, "ab")
        self.app = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    env=self.env)
        log.close()
        assert wait_until(lambda: "gateway app on" in self.app_output(), 20), self.app_output()
        return self

    def app_output(self):
        try:
            with open(self.app_log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def cli(self, *args, timeout=60):
        return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def publish_stage(self, stage):
        lab = self.lab
        r = self.cli("publish-stage", "--broker", lab.broker.url, "--key", lab.key_file,
                     "--fleet", lab.fleet, "--ca", lab.ca, "--username", "operator",
                     "--password-file", lab.op_password_file, "--devices", self.device, "--target",
                     "device:" + self.device, "--json", "--timeout", "30", str(stage))
        assert r.returncode == 0, (r.stdout, r.stderr, self.agent.log()[-3000:])
        out = json.loads(r.stdout)
        assert out["devices"][self.device]["result"] == "applied", out
        return out

    def status(self):
        r = self.cli("local", "status", "--config", self.agent.config_path, "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        return json.loads(r.stdout)["status"]

    def snapshot(self):
        with open(os.path.join(self.run_dir, "flags.json")) as f:
            return json.load(f)

    def source_samples(self, name):
        src = self.status()["system_health"]["sources"].get(name) or {}
        return src.get("samples", 0)

    def stop(self):
        if self.app is not None and self.app.poll() is None:
            self.app.terminate()
            self.app.wait(10)
        self.agent.stop()
