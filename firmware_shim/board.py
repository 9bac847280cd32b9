"""Boot the agent on a MicroPython board (the same code runs on the unix port).

A board's main.py (written by `fleetstage bundle`) is two lines:
    from firmware_shim.board import run_bundle
    run_bundle(__file__)
The folder that holds main.py is the flash: on a board that is "/", and on
the unix port `cd BUNDLE && micropython main.py` serves BUNDLE as "/" (every
absolute path in the config, /config.json, /device.key, /state, resolves
inside it), so the bundle boots as built, with no other path.
It reads the same JSON config as `fleetstage agent` on a Pi, the device key
file, opens MigrationControl on the board's flash (littlefs) and serves the
MQTT contract through firmware_shim.mqtt_micro. A bad config or key stops it
at start with the field at fault, printed; the watchdog (when the board has
one) is fed from the loop, so a hung agent resets the board.
"""
from agent import protocol as P
from agent.agent_config import ConfigError, load_config
from agent.control import MigrationControl
from agent.plan import Plan
from agent.runtime import AgentRuntime
from firmware_shim.clock import SystemClock
from firmware_shim.files import FileSystem, FolderFlash
from firmware_shim.machine import Watchdog
from firmware_shim.mqtt_micro import MicroLink, MicroTlsUnsupported


def log(msg):
    print("fleetstage-agent:", msg)


def load_key(cfg, fs):
    raw = fs.read_bytes(cfg.key_file)
    if raw is None:
        if cfg.insecure:
            log("WARNING: no key file: reports go out unsigned")
            return None
        raise ConfigError("key_file", cfg.key_file + " does not exist")
    try:
        key, warning = P.agent_key(P.parse_key_file(raw), cfg.device_id)
    except P.ProtocolError as exc:
        raise ConfigError("key_file", str(exc)) from None
    if warning:
        log("WARNING: " + warning)
    return key


def load_ca(cfg, fs):
    """The CA bytes for mqtts://, or None for mqtt://.

    A board never connects to a broker it cannot verify: mqtts:// without a
    CA, or on a port whose ssl cannot verify, is a ConfigError at start.
    """
    if not cfg.tls:
        return None
    if cfg.tls_skip_hostname_check:
        raise ConfigError("tls.insecure_skip_hostname_check",
                          "not supported on boards: the broker is always fully verified")
    if not cfg.tls_ca:
        raise ConfigError("tls.ca", "mqtts:// on a board needs the CA that signed the "
                                    "broker's certificate (a board has no system CA store)")
    try:
        ca = fs.read_bytes(cfg.tls_ca)
    except OSError as exc:
        raise ConfigError("tls.ca", "cannot read %s: %s" % (cfg.tls_ca, exc)) from None
    if not ca:
        raise ConfigError("tls.ca", cfg.tls_ca + " does not exist or is empty")
    return ca


def count_agent_start(control, log):
    """Count this start of the agent as a restart, then judge health at once.

    An agent that crashes and is started again (systemd Restart=always, a
    watchdog reset) is a restart like a service's: a crash loop rolls the
    device back one stage by itself. The check runs now, not at the next
    monitoring interval, because a looping agent may never live that long.
    """
    control.record_restart("agent")
    try:
        result = control.check_health_and_rollback()
    except Exception as exc:  # a refused rollback must not stop the agent from starting
        log("start-up health check failed: %s" % exc)
        return None
    if result.get("result") == "rollback_triggered":
        log("WARNING: restarting too often: rolled back to stage %s" % control.stage)
    return result


def start_agent(runtime, control):
    """runtime.start() (it now hears the control's events), then count this start."""
    runtime.start()
    return count_agent_start(control, log)


def build(config_path, fs=None, clock=None):
    """(runtime, link, control) for the config; raises ConfigError before touching flash."""
    fs = fs or FileSystem()
    cfg = load_config(config_path, fs)
    if cfg.tls_cert:
        raise ConfigError("tls.cert", "client certificates are not supported on boards yet")
    ca = load_ca(cfg, fs)
    key = load_key(cfg, fs)
    plan = Plan.load(cfg.plan_file, fs) if cfg.plan_file else None
    will = (P.device_topic(cfg.fleet, cfg.device_id, "status"),
            P.encode_offline_status(cfg.device_id, key), 1, True)  # replaced once flash is open
    try:  # the link first: a port that cannot verify mqtts:// stops us before the flash
        link = MicroLink(cfg.host, cfg.port, client_id=cfg.device_id, username=cfg.username,
                         password=cfg.password, keepalive=int(cfg.keepalive_s), will=will,
                         tls=cfg.tls, ca=ca, clean_session=cfg.clean_session,
                         backoff_min_ms=int(cfg.backoff_min_s * 1000),
                         backoff_max_ms=int(cfg.backoff_max_s * 1000), log=log)
    except MicroTlsUnsupported as exc:
        raise ConfigError("tls.ca", "mqtts:// refused: %s" % exc) from None
    control = MigrationControl.open(cfg.state_dir, plan=plan, config=cfg.control,
                                    clock=clock or SystemClock(), fs=fs, log=log)
    runtime = AgentRuntime(
        control, link, cfg.fleet, cfg.device_id, cfg.groups, key=key, clock=control.clock,
        insecure=cfg.insecure, queue_limit=int(cfg.queue_limit),
        health_interval_ms=int(cfg.health_interval_ms),
        status_interval_ms=int(cfg.status_interval_ms),
        monitor_interval_ms=int(cfg.monitor_interval_ms), log=log)
    topic, payload = runtime.will()  # offline, with the groups and the guard's seq
    link.will = (topic, payload, 1, True)
    return runtime, link, control


def bundle_root(main_file):
    """The absolute folder that holds main.py ("/" on a board)."""
    import os

    i = main_file.rfind("/")
    folder = main_file[:i] if i > 0 else ("/" if i == 0 else "")
    if not folder.startswith("/"):
        cwd = os.getcwd()
        folder = cwd if not folder else (cwd.rstrip("/") + "/" + folder)
    return folder.rstrip("/") or "/"


def run_bundle(main_file, watchdog_ms=30000):
    """main.py's entry: boot from /config.json of the flash the bundle lives on.

    On the unix port a start that fails (a bad config) exits with its code, as
    `fleetstage agent` does; a board returns to its REPL instead of looping.
    """
    import sys

    root = bundle_root(main_file)
    fs = FileSystem() if root == "/" else FolderFlash(root)
    code = run("/config.json", watchdog_ms, fs=fs)
    if code and sys.platform in ("linux", "darwin"):
        sys.exit(code)
    return code


def run(config_path, watchdog_ms=30000, fs=None):
    try:
        runtime, link, control = build(config_path, fs=fs)
    except ConfigError as exc:
        log("cannot start: %s" % exc)
        return 2
    if runtime.insecure:
        log("WARNING: insecure development mode: unsigned commands are ACCEPTED")
    wdt = Watchdog(watchdog_ms)
    start_agent(runtime, control)
    link.start()
    log("device %s at stage %d; broker %s:%d" % (runtime.device_id, control.stage,
                                                 link.host, link.port))
    try:
        runtime.run(poll_ms=100, extra_poll=wdt.feed)
    finally:
        link.close()
        control.close()
    return 0
