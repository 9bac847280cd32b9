"""`fleetstage agent --config PATH`: run the device agent on CPython (a Pi gateway).

Owns: the Pi's platform for agent.boot (the composition root, which wires the
key, MigrationControl, the runtime and the last will): the paho link, files,
clock and logs on stderr (journald); plus the state-dir lock, the local console
socket, the applications' side (tools.app_side: run_dir files, api.sock,
metrics.sock, statsd, probes) and signal handling.
Must never: start when the config, the key or the lock is wrong: it says which
and exits non-zero, so systemd shows the reason.
"""
import os
import signal
import sys
import time

from agent import boot
from agent import protocol as P
from agent.agent_config import ConfigError, load_config
from agent.runtime import will_message
from agent.store import StoreError
from firmware_shim.app_metrics import StatsdListenError
from firmware_shim.files import FileSystem
from firmware_shim.machine import SystemClock, memory
from firmware_shim.mqtt_paho import MqttConfig, MqttError, PahoLink, Will
from tools.app_side import AppSide, RunDirInUse
from tools.local_cmd import ConsoleServer, StateDirLock, StateDirLocked
from tools.sd_notify import SdNotifier


class AgentStartError(Exception):
    pass


def log(msg):
    sys.stderr.write("{} fleetstage-agent: {}\n".format(time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
    sys.stderr.flush()


class PiPlatform:
    """A Pi gateway's platform objects for agent.boot: files, clock, stderr, paho."""

    def __init__(self, clock=None):
        self.fs = FileSystem()
        self.clock = clock if clock is not None else SystemClock()
        self.log = log
        self.memory = memory  # the resident set in status and health

    def open_link(self, cfg, key, refuse):
        return PahoLink(link_config(cfg, key), log=log)

    def poll(self):
        pass


def open_control(cfg, clock=None):
    """MigrationControl for the config on this machine's files (the agent holds the lock)."""
    return boot.open_control(cfg, FileSystem(), clock if clock is not None else SystemClock(),
                             log)


def broker_password(cfg):
    """credentials.password, or the first line of credentials.password_file."""
    if cfg.password_file is None:
        return cfg.password
    try:
        with open(cfg.password_file) as f:
            return f.readline().strip()
    except OSError as exc:
        raise AgentStartError(f"config field 'credentials.password_file': cannot read "
                              f"{cfg.password_file}: {exc.strerror}") from None


def link_config(cfg, key, guard_seq=None):
    topic, payload = will_message(cfg.fleet, cfg.device_id, cfg.groups, key, guard_seq)
    will = Will(topic, payload, qos=1, retain=True)
    return MqttConfig(
        cfg.host, cfg.port, client_id=cfg.device_id, username=cfg.username,
        password=broker_password(cfg), tls=cfg.tls, ca=cfg.tls_ca, cert=cfg.tls_cert,
        key=cfg.tls_key,
        # TLS's own switch, never the agent's `insecure` (that one is about
        # unsigned commands): a dev fleet still verifies its broker.
        insecure=cfg.tls_skip_hostname_check, keepalive=int(cfg.keepalive_s), will=will,
        clean_session=cfg.clean_session, backoff_min=cfg.backoff_min_s,
        backoff_max=cfg.backoff_max_s)


def prepare_state_dir(path):
    """The state dir, 0700 (created so, or narrowed if it is ours); files in it 0600."""
    os.umask(0o077)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise AgentStartError(f"state dir {path}: {exc.strerror}") from None


def run_agent(cfg):
    if cfg.insecure:
        log("WARNING: insecure development mode: unsigned commands are ACCEPTED")
    prepare_state_dir(cfg.state_dir)
    lock = StateDirLock(cfg.state_dir)
    try:
        lock.acquire()
    except StateDirLocked as exc:
        raise AgentStartError(str(exc)) from None
    except OSError as exc:  # e.g. a full disk: the lock file cannot be written
        raise AgentStartError(f"state dir {cfg.state_dir}: cannot write the lock file: "
                              f"{exc.strerror}") from None
    try:
        agent = boot.boot(cfg, PiPlatform())
    except StoreError as exc:
        lock.release()
        raise AgentStartError(f"the store in {cfg.state_dir} cannot be opened: {exc} (it is "
                              "left untouched; an agent of the matching version reads it)"
                              ) from None
    except BaseException:
        lock.release()
        raise
    runtime, link, control = agent.runtime, agent.link, agent.control
    console = ConsoleServer(cfg.state_dir, agent.console)
    try:
        apps = AppSide(cfg.run_dir, cfg.health, control, log)
    except (OSError, RunDirInUse) as exc:
        console.close()
        agent.close()
        lock.release()
        if isinstance(exc, StatsdListenError):
            raise AgentStartError(f"config field 'health.statsd.listen': {exc.strerror} (is "
                                  "another statsd listener on that port? pick a free one)"
                                  ) from None
        what = exc if isinstance(exc, RunDirInUse) else f"{cfg.run_dir}: {exc}"
        raise AgentStartError(f"config field 'run_dir': {what}") from None

    notifier = SdNotifier(log=log)

    def extra_poll():
        console.poll()
        apps.poll()
        notifier.tick()  # the watchdog sees the loop turning, not just the process alive

    def stop(signum, frame):
        runtime.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    agent.start()  # after runtime.start(): a crash-loop rollback is reported too
    link.start()
    log(f"device {cfg.device_id} fleet {cfg.fleet} at stage {control.stage}; broker {cfg.broker}")
    notifier.ready(f"stage {control.stage}")
    try:
        runtime.run(poll_ms=100, extra_poll=extra_poll)
    finally:
        notifier.stopping()
        if link.connected:  # a clean DISCONNECT suppresses the will: say offline ourselves
            try:
                link.publish(P.device_topic(cfg.fleet, cfg.device_id, "status"),
                             runtime.status_payload(online=False), 1, True)
                link.poll(100)
            except MqttError:
                pass
        apps.close()
        agent.close()
        console.close()
        lock.release()
        notifier.close()
        log("stopped")
    return 0


def _run(args):
    try:
        cfg = load_config(args.config, FileSystem())
        return run_agent(cfg)
    except (ConfigError, AgentStartError, MqttError) as exc:
        log(f"cannot start: {exc}")
        return 2
    except OSError as exc:  # anything else the disk refuses at start: one line, no traceback
        log(f"cannot start: {exc.filename or ''}: {exc.strerror or exc}")
        return 2


def register(sub):
    p = sub.add_parser("agent", help="run the device agent (CPython / Raspberry Pi)")
    p.add_argument("--config", required=True, help="the agent's JSON config")
    p.set_defaults(handler=_run)
