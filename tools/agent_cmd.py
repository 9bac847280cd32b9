"""`fleetstage agent --config PATH`: run the device agent on CPython (a Pi gateway).

Owns: turning the JSON config into a running AgentRuntime: the state-dir lock,
the device key, MigrationControl, the paho link (with the offline last will),
the local console socket, signal handling and logs on stderr (journald).
Must never: start when the config, the key or the lock is wrong: it says which
and exits non-zero, so systemd shows the reason.
"""
import signal
import sys
import time

from agent import protocol as P
from agent.agent_config import ConfigError, load_config
from agent.control import MigrationControl
from agent.plan import Plan
from agent.runtime import AgentRuntime, will_message
from firmware_shim.board import count_agent_start
from firmware_shim.clock import SystemClock
from firmware_shim.mqtt_paho import MqttConfig, MqttError, PahoLink, Will
from tools.local_cmd import ConsoleServer, StateDirLock, StateDirLocked


class AgentStartError(Exception):
    pass


def log(msg):
    sys.stderr.write("{} fleetstage-agent: {}\n".format(time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
    sys.stderr.flush()


def open_control(cfg, clock=None):
    plan = Plan.load(cfg.plan_file) if cfg.plan_file else None
    return MigrationControl.open(cfg.state_dir, plan=plan, config=cfg.control, clock=clock,
                                 log=log)


def load_device_key(cfg):
    """(key or None, warning or None). Missing key: an error unless insecure."""
    try:
        with open(cfg.key_file, "rb") as f:
            info = P.parse_key_file(f.read())
    except FileNotFoundError:
        if cfg.insecure:
            return None, f"key file {cfg.key_file} missing: reports go out unsigned"
        raise AgentStartError(f"config field 'key_file': {cfg.key_file} does not exist") from None
    except (OSError, P.ProtocolError) as exc:
        raise AgentStartError(f"config field 'key_file': {exc}") from None
    try:
        return P.agent_key(info, cfg.device_id)
    except P.ProtocolError as exc:
        raise AgentStartError(f"config field 'key_file': {exc}") from None


def link_config(cfg, key, guard_seq=None):
    topic, payload = will_message(cfg.fleet, cfg.device_id, cfg.groups, key, guard_seq)
    will = Will(topic, payload, qos=1, retain=True)
    return MqttConfig(
        cfg.host, cfg.port, client_id=cfg.device_id, username=cfg.username,
        password=cfg.password, tls=cfg.tls, ca=cfg.tls_ca, cert=cfg.tls_cert, key=cfg.tls_key,
        # TLS's own switch, never the agent's `insecure` (that one is about
        # unsigned commands): a dev fleet still verifies its broker.
        insecure=cfg.tls_skip_hostname_check, keepalive=int(cfg.keepalive_s), will=will,
        clean_session=cfg.clean_session, backoff_min=cfg.backoff_min_s,
        backoff_max=cfg.backoff_max_s)


def build_runtime(cfg, key, control, link):
    return AgentRuntime(
        control, link, cfg.fleet, cfg.device_id, cfg.groups, key=key, clock=control.clock,
        insecure=cfg.insecure, queue_limit=int(cfg.queue_limit),
        health_interval_ms=int(cfg.health_interval_ms),
        status_interval_ms=int(cfg.status_interval_ms),
        monitor_interval_ms=int(cfg.monitor_interval_ms), log=log)


def console_handler(runtime):
    def handle(request):
        op = request.get("op")
        if op == "status":
            return {"ok": True, "status": runtime.control.status()}
        if op == "emergency_rollback":
            reason = request.get("reason")
            if not isinstance(reason, str) or not reason:
                return {"ok": False, "error": "emergency_rollback needs a non-empty reason"}
            result = runtime.local_emergency_rollback(reason)
            return {"ok": True, "result": result, "status": runtime.control.status()}
        return {"ok": False, "error": f"unknown op {op!r}"}
    return handle


def run_agent(cfg):
    key, warning = load_device_key(cfg)
    if warning:
        log("WARNING: " + warning)
    if cfg.insecure:
        log("WARNING: insecure development mode: unsigned commands are ACCEPTED")
    lock = StateDirLock(cfg.state_dir)
    try:
        lock.acquire()
    except StateDirLocked as exc:
        raise AgentStartError(str(exc)) from None
    control = open_control(cfg, SystemClock())
    for note in control.recovered_notes:
        log("store recovery: " + note)
    guard_seq = P.ReplayGuard.from_store(control.store).last_seq
    link = PahoLink(link_config(cfg, key, guard_seq), log=log)
    runtime = build_runtime(cfg, key, control, link)
    console = ConsoleServer(cfg.state_dir, console_handler(runtime))

    def stop(signum, frame):
        runtime.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runtime.start()
    count_agent_start(control, log)  # after start(): a crash-loop rollback is reported too
    link.start()
    log(f"device {cfg.device_id} fleet {cfg.fleet} at stage {control.stage}; broker {cfg.broker}")
    try:
        runtime.run(poll_ms=100, extra_poll=console.poll)
    finally:
        if link.connected:  # a clean DISCONNECT suppresses the will: say offline ourselves
            try:
                link.publish(P.device_topic(cfg.fleet, cfg.device_id, "status"),
                             runtime.status_payload(online=False), 1, True)
                link.poll(100)
            except MqttError:
                pass
        link.close()
        console.close()
        control.close()
        lock.release()
        log("stopped")
    return 0


def _run(args):
    try:
        cfg = load_config(args.config)
        return run_agent(cfg)
    except (ConfigError, AgentStartError, MqttError) as exc:
        log(f"cannot start: {exc}")
        return 2


def register(sub):
    p = sub.add_parser("agent", help="run the device agent (CPython / Raspberry Pi)")
    p.add_argument("--config", required=True, help="the agent's JSON config")
    p.set_defaults(handler=_run)
