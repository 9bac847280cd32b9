"""The field lab: the product set up the way the README tells an operator to set it up.

Use it (not the anonymous `broker` fixture) for operator-side and end-to-end tests.

    def test_x(field_lab):                      # fixture in tests/conftest.py
        lab = field_lab(devices=["gw-1", "gw-2"], groups={"gw-1": ["line-a"]})
        lab.start_agent("gw-1"); lab.start_agent("gw-2")
        lab.wait_status("gw-1", lambda st: st.get("stage") == 0)
        done = lab.cli("publish-stage", "1", "--target", "all")     # a real process
        assert done.returncode == 0, done.stdout + done.stderr
        evil = lab.device_link("gw-2")                               # the attacker's login
        evil.publish(lab.topic("gw-2", "status"), payload, qos=1, retain=True)

What it is:
  * mosquitto started with the SHIPPED tools/mosquitto/mosquitto.conf and tls.conf,
    as `fleetstage broker-setup` installs them (only ports and paths rewritten), the
    generated ACL and password files, TLS with a CA and server certificate made by
    broker-setup (openssl) once per test session. Run as root, the broker drops to
    the `mosquitto` user as on Debian, so file ownership is tested too.
  * agents as processes (`python -m tools.cli agent`), each with its own broker
    login, device key and state dir, on the device TLS listener;
  * operator tools as processes (`lab.cli(...)`, `lab.cli_bg(...)`) with the lab's
    operator profile (FLEETSTAGE_PROFILES points at it): TLS operator listener,
    operator login from a password file, fleet key, inventory, their own state dir.

API (FieldLab)
  FieldLab(tmp_path, devices=("gw-1", "gw-2"), groups=None, fleet=None, pki=None,
           agent_config=None, client_certs=False)   groups: {device: [group]}; pki: a
                                      LabPKI; client_certs: the device TLS listener takes
                                      client certificates (tls.conf's documented option)
  .client_cert(name) -> (cert, key)   a client certificate CN=name from the lab CA
  .fleet .fleet_key .fleet_key_file .inventory_file .profiles_file .state_dir
  .operator_url / .device_url         mqtts:// operator (8884-like) / device (8883-like)
  .operator_plain_url / .device_plain_url   the loopback plain listeners
  .ca                                 the CA certificate file
  .agent(id, **config) -> tests.agentkit.AgentProcess   configured, not started
  .start_agent(id, **config) -> that agent, started (config: agent JSON overrides)
  .agents[id]                         .stop() .kill() .alive() .log() .state_dir
  .cli(*args, timeout=60) -> subprocess.CompletedProcess (text), with the default
                                      profile "lab"; `--profile lab-discovery` is the same
                                      without the inventory (devices found from their reports)
  .cli_bg(*args) -> subprocess.Popen  (stdout/stderr pipes, text)
  .device_login(id) -> Login(username, password, key, key_file, ca)
  .device_link(id) -> connected PahoLink as that device on the device TLS listener
  .operator_link(**kw) -> connected PahoLink with the operator login (MQTT 5)
  .operator_client(**kw) -> connected tools.operator_cmd.OperatorClient (in process)
  .observer                           verified reports of the fleet (tests.agentkit.Observer
                                      API: .of(leaf), .wait_for(pred), .last_status())
  .status_of(id) -> the last verified status dict of a device or None
  .wait_status(id, pred, timeout=20) -> that status once pred(status) holds
  .wait_stage(id, stage, timeout=20) -> that device's status once online at `stage`
  .publish_raw(target, payload, desired=False, retain=False)   with the operator login,
                                      on cmd/desired topics (hostile or hand-made payloads)
  .topic(id, leaf)                    fleetstage/<fleet>/device/<id>/<leaf>
  .kill_broker() .restart_broker() .stop_broker() .broker_log() .close()
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple

from agent import protocol as P
from firmware_shim.mqtt_paho import MQTT_5, MqttConfig, MqttLoop, PahoLink, free_ports
from tests.agentkit import REPO, AgentProcess
from tests.mqttkit import mosquitto_binary, unique
from tools import broker_setup
from tools.operator_cmd import OperatorClient
from tools.operator_seq import SeqStore

HOSTNAMES = ["127.0.0.1", "localhost"]
OPERATOR_PASSWORD = "operator-pw-" + "x" * 8



def _terminal_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

class Login(NamedTuple):
    username: str
    password: str
    key: bytes
    key_file: str
    ca: str


class LabPKI:
    """A CA and a server certificate for 127.0.0.1/localhost, made by broker-setup's own
    openssl path, once per session; each lab copies them so broker-setup keeps them."""

    FILES = ("ca.crt", "ca.key", "server.crt", "server.key")

    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        broker_setup.make_pki(directory, HOSTNAMES, None)

    def copy_to(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)
        for name in self.FILES:
            dst = os.path.join(out_dir, name)
            shutil.copyfile(os.path.join(self.dir, name), dst)
            os.chmod(dst, 0o600)


class _Address:
    def __init__(self, url: str) -> None:
        self.url = url


def _rewrite(conf: str, ports: dict[int, int]) -> str:
    """Only ports and paths change: each `listener N` gets a free port."""
    def port(m: re.Match) -> str:
        return "listener %d%s" % (ports[int(m.group(1))], m.group(2))
    return re.sub(r"^listener (\d+)(.*)$", port, conf, flags=re.M)


class FieldLab:
    def __init__(self, tmp_path: Any, devices: Any = ("gw-1", "gw-2"),
                 groups: dict[str, list[str]] | None = None, fleet: str | None = None,
                 pki: LabPKI | None = None, agent_config: dict | None = None,
                 client_certs: bool = False) -> None:
        self.tmp = str(tmp_path)
        os.makedirs(self.tmp, exist_ok=True)
        self.fleet = fleet or unique("lab")
        self.devices = list(devices)
        self.groups = {d: list((groups or {}).get(d, [])) for d in self.devices}
        self.agent_config = dict(agent_config or {})
        self.agents: dict[str, AgentProcess] = {}
        self._every_agent: list[AgentProcess] = []
        self._links: list[PahoLink] = []
        self._procs: list[subprocess.Popen] = []
        self._clients: list[OperatorClient] = []
        self._raw: PahoLink | None = None
        self.loop = MqttLoop()
        self.proc: subprocess.Popen | None = None
        # Keys and the inventory (what an operator keeps on their own machine).
        self.fleet_key = P.new_fleet_key()
        self.fleet_key_file = os.path.join(self.tmp, "fleet.key")
        with open(self.fleet_key_file, "wb") as f:
            f.write(P.format_key_file(self.fleet_key, "fleet"))
        self.passwords = {d: "pw-" + d + "-" + unique("") for d in self.devices}
        self.inventory_file = os.path.join(self.tmp, "devices.json")
        with open(self.inventory_file, "w") as f:
            json.dump({d: {"groups": self.groups[d], "password": self.passwords[d]}
                       for d in self.devices}, f)
        self.operator_password_file = os.path.join(self.tmp, "operator.pw")
        with open(self.operator_password_file, "w") as f:
            f.write(OPERATOR_PASSWORD + "\n")
        os.chmod(self.operator_password_file, 0o600)
        # The broker's files live where the broker's user can reach them (pytest's
        # tmp_path is 0700 root): a 0755 folder of our own, removed by close().
        self.broker_dir = tempfile.mkdtemp(prefix="fieldlab-")
        os.chmod(self.broker_dir, 0o755)
        self.out = os.path.join(self.broker_dir, "fleetstage")
        conf_dir = os.path.join(self.broker_dir, "conf.d")
        (pki or LabPKI(os.path.join(self.tmp, "pki"))).copy_to(self.out)
        broker_setup.setup(self.fleet, json.load(open(self.inventory_file)),
                           OPERATOR_PASSWORD, self.out, conf_dir, tls=True,
                           hostnames=HOSTNAMES)
        self.ca = os.path.join(self.tmp, "ca.crt")
        shutil.copyfile(os.path.join(self.out, "ca.crt"), self.ca)
        self.conf_dir = conf_dir
        if client_certs:  # the option tls.conf documents: uncomment its two lines
            tls_conf = os.path.join(conf_dir, broker_setup.TLS_CONF_NAME)
            with open(tls_conf) as f:
                text = f.read()
            for line in ("require_certificate true", "use_identity_as_username true"):
                assert "#" + line in text, "tls.conf no longer documents " + line
                text = text.replace("#" + line, line)
            with open(tls_conf, "w") as f:
                f.write(text)
        for attempt in range(3):
            self._pick_ports()
            try:
                self._start_broker(conf_dir, fresh=attempt == 0)
                break
            except RuntimeError:
                # another process took a chosen port between free_ports and mosquitto's bind
                if attempt == 2 or "Address already in use" not in self.broker_log():
                    raise
        # The operator's profile and state (sequence numbers), as `profile add` writes them.
        self.state_dir = os.path.join(self.tmp, "operator-state")
        self.profiles_file = os.path.join(self.tmp, "profiles.json")
        lab_profile = {
            "broker": self.operator_url, "fleet": self.fleet, "key": self.fleet_key_file,
            "username": "operator", "password_file": self.operator_password_file,
            "ca": self.ca, "inventory": self.inventory_file, "state_dir": self.state_dir}
        discovery = {k: v for k, v in lab_profile.items() if k != "inventory"}
        with open(self.profiles_file, "w") as f:
            json.dump({"default": "lab", "profiles": {"lab": lab_profile,
                                                      "lab-discovery": discovery}}, f)
        self.observer = _LabObserver(self)

    # -- the broker -----------------------------------------------------------
    def _pick_ports(self) -> None:
        self.ports = dict(zip((1883, 1884, 8883, 8884), free_ports(4)))
        self.device_plain_url = "mqtt://127.0.0.1:%d" % self.ports[1883]
        self.operator_plain_url = "mqtt://127.0.0.1:%d" % self.ports[1884]
        self.device_url = "mqtts://127.0.0.1:%d" % self.ports[8883]
        self.operator_url = "mqtts://127.0.0.1:%d" % self.ports[8884]

    def _start_broker(self, conf_dir: str, fresh: bool = True) -> None:
        persist = os.path.join(self.broker_dir, "persist")
        os.makedirs(persist, exist_ok=not fresh)
        # conf.d as broker-setup wrote it, each file with only its ports rewritten, read
        # through include_dir (in mosquitto's own order, as on Debian).
        run_dir = os.path.join(self.broker_dir, "conf.d-run")
        os.makedirs(run_dir, exist_ok=True)
        for name in os.listdir(conf_dir):
            with open(os.path.join(conf_dir, name)) as f:
                text = _rewrite(f.read(), self.ports)
            with open(os.path.join(run_dir, name), "w") as f:
                f.write(text)
        # What Debian's /etc/mosquitto/mosquitto.conf adds around include_dir.
        head = "persistence_location %s/\n" % persist
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("mosquitto")
                os.chown(persist, owner.pw_uid, owner.pw_gid)
            except KeyError:
                head += "user root\n"
        self.conf_path = os.path.join(self.broker_dir, "mosquitto.conf")
        with open(self.conf_path, "w") as f:
            f.write(head + "include_dir %s\n" % run_dir)
        self.log_path = os.path.join(self.broker_dir, "mosquitto.log")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", self.conf_path], stdout=log,
                                     stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("mosquitto exited: " + self.broker_log()[-2000:])
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("mosquitto did not listen: "
                                           + self.broker_log()[-2000:]) from None
                    time.sleep(0.02)

    def broker_log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def kill_broker(self) -> None:
        """SIGKILL, as in a crash (retained messages survive via persistence autosave)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart_broker(self) -> None:
        """Start the same broker again on the same ports (after kill_broker/stop_broker)."""
        self._start_broker(self.conf_dir, fresh=False)

    def stop_broker(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    # -- devices --------------------------------------------------------------
    def device_login(self, device_id: str) -> Login:
        key = P.derive_device_key(self.fleet_key, device_id)
        key_file = os.path.join(self.tmp, "login-%s.key" % device_id)
        if not os.path.exists(key_file):
            with open(key_file, "wb") as f:
                f.write(P.format_key_file(key, "device", device_id))
        return Login(device_id, self.passwords[device_id], key, key_file, self.ca)

    def agent(self, device_id: str, /, **config: Any) -> AgentProcess:
        """The agent process of a device, configured (its own login, key and state dir,
        the device TLS listener; `config` overrides agent JSON fields) but not started."""
        cfg = {"broker": self.device_url, "tls": {"ca": self.ca},
               "credentials": {"username": device_id, "password": self.passwords[device_id]}}
        cfg.update(self.agent_config)
        cfg.update(config)
        agent = AgentProcess(os.path.join(self.tmp, "agents"), _Address(cfg["broker"]),
                             self.fleet, self.fleet_key, device_id,
                             groups=self.groups.get(device_id, []), config=cfg)
        self.agents[device_id] = agent
        self._every_agent.append(agent)  # close() stops it even once another replaced it
        return agent

    def client_cert(self, name: str) -> tuple[str, str]:
        """(cert, key) files of a client certificate with CN=name, signed by the lab CA
        (what an operator makes for a device when the broker takes client certificates)."""
        d = os.path.join(self.tmp, "client-certs")
        os.makedirs(d, exist_ok=True)
        cert, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
        ext = os.path.join(d, name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
        for args in (["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", key, "-out", key + ".csr", "-subj", "/CN=" + name],
                     ["x509", "-req", "-in", key + ".csr", "-CA", os.path.join(self.out, "ca.crt"),
                      "-CAkey", os.path.join(self.out, "ca.key"), "-CAcreateserial",
                      "-out", cert, "-days", "2", "-extfile", ext]):
            subprocess.run(["openssl", *args], check=True, capture_output=True)
        return cert, key

    def start_agent(self, device_id: str, /, **config: Any) -> AgentProcess:
        """Start a device's agent: the one configured already (restart after stop/kill,
        with the same state) unless it runs or `config` is given."""
        agent = self.agents.get(device_id)
        if agent is None or agent.alive() or config:
            agent = self.agent(device_id, **config)
        agent.start()
        return agent

    def topic(self, device_id: str, leaf: str) -> str:
        return P.device_topic(self.fleet, device_id, leaf)

    def _link(self, url: str, username: str, password: str, protocol: str, client_id: str,
              on_message: Callable | None = None, wait: bool = True) -> PahoLink:
        link = PahoLink(MqttConfig.from_url(url, client_id=client_id, username=username,
                                            password=password, ca=self.ca, backoff_min=0.05,
                                            backoff_max=0.5, protocol=protocol))
        link.set_callbacks(on_message=on_message)
        self.loop.add(link)
        link.start()
        self._links.append(link)
        if wait and not self.loop.run_until(lambda: link.connected, 10):
            raise AssertionError("lab link %s did not connect: %s" % (username, link.last_error))
        return link

    def device_link(self, device_id: str, on_message: Callable | None = None) -> PahoLink:
        """A session with a device's own broker login (what a taken-over device holds)."""
        login = self.device_login(device_id)
        return self._link(self.device_url, login.username, login.password, "3.1.1", device_id,
                          on_message)

    def operator_link(self, on_message: Callable | None = None, wait: bool = True) -> PahoLink:
        return self._link(self.operator_url, "operator", OPERATOR_PASSWORD, MQTT_5,
                          unique("lab-op-"), on_message, wait)

    def operator_client(self, **kw: Any) -> OperatorClient:
        from tools.operator_cmd import read_inventory
        client = OperatorClient(self.operator_url, self.fleet, self.fleet_key,
                                username="operator", password=OPERATOR_PASSWORD, ca=self.ca,
                                seq=SeqStore(self.state_dir, self.fleet),
                                inventory=kw.pop("inventory", read_inventory(self.inventory_file)),
                                **kw)
        client.connect()
        self._clients.append(client)
        return client

    # -- operator tools as processes -------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLEETSTAGE_PROFILES"] = self.profiles_file
        env.pop("FLEETSTAGE_PROFILE", None)
        env["PYTHONPATH"] = REPO
        return env

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=REPO,
                              env=self.env(), capture_output=True, text=True, timeout=timeout)

    def cli_bg(self, *args: str) -> subprocess.Popen:
        # As from an operator's terminal: Ctrl-C (SIGINT) reaches the tool even when the
        # test run itself was started in the background, where SIGINT is inherited ignored.
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", *args], cwd=REPO,
                                env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=_terminal_signals)
        self._procs.append(proc)
        return proc

    # -- observing -----------------------------------------------------------
    def status_of(self, device_id: str) -> dict | None:
        found = [r for r in self.observer.of("status") if r.get("device") == device_id]
        return found[-1] if found else None

    def wait_status(self, device_id: str, pred: Callable[[dict], bool],
                    timeout: float = 20.0) -> dict:
        def ok() -> bool:
            st = self.status_of(device_id)
            return st is not None and bool(pred(st))
        if not self.loop.run_until(ok, timeout):
            agent = self.agents.get(device_id)
            raise AssertionError("status of %s never matched; last %r; agent log tail %s" % (
                device_id, self.status_of(device_id),
                agent.log()[-1500:] if agent is not None else "-"))
        return self.status_of(device_id)  # type: ignore[return-value]

    def wait_stage(self, device_id: str, stage: int, timeout: float = 20.0) -> dict:
        return self.wait_status(device_id, lambda st: bool(st.get("online"))
                                and st.get("stage") == stage, timeout)

    def publish_raw(self, target: str, payload: bytes, desired: bool = False,
                    retain: bool = False) -> None:
        """Publish bytes on a command or desired topic with the operator's login (MQTT 5),
        and wait until the broker has them."""
        if self._raw is None:
            self._raw = self.operator_link()
        topic = (P.desired_topic if desired else P.cmd_topic)(self.fleet, target)
        self._raw.publish(topic, payload, qos=1, retain=retain)
        raw = self._raw
        if not self.loop.run_until(lambda: not raw.pending_out(), 10):
            raise AssertionError("the broker did not take the publish on " + topic)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        for agent in self._every_agent:
            agent.stop()
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        self._clients = []
        self.loop.close()
        self.stop_broker()
        shutil.rmtree(self.broker_dir, ignore_errors=True)


class _LabObserver:
    """Every report of the lab's fleet, verified with each device's key (operator login)."""

    def __init__(self, lab: FieldLab) -> None:
        self.lab = lab
        self.reports: list[tuple[str, dict, bool]] = []
        self.bad = 0
        self.link = lab._link(lab.operator_url, "operator", OPERATOR_PASSWORD, MQTT_5,
                              unique("lab-obs-"), self._on)
        self.link.subscribe("fleetstage/%s/device/#" % lab.fleet, qos=1)

    def _on(self, topic: str, payload: bytes, retain: bool) -> None:
        parts = topic.split("/")
        if len(parts) != 5 or not payload:
            return
        try:
            rep = P.decode_report(payload, P.derive_device_key(self.lab.fleet_key, parts[3]),
                                  parts[4])
        except P.ProtocolError:
            self.bad += 1
            return
        self.reports.append((parts[4], rep, retain))

    def of(self, leaf: str) -> list[dict]:
        return [r for lf, r, _ in self.reports if lf == leaf]

    def last_status(self) -> dict | None:
        statuses = self.of("status")
        return statuses[-1] if statuses else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        assert self.lab.loop.run_until(predicate, timeout), \
            "timed out; last reports: %r" % (self.reports[-5:],)
