"""The composition root: the one place that wires an agent from a config and a platform.

Owns: the order a device comes up in (device key, the link, the flash, the
runtime, the final last will), counting each start as a restart, the console's
two operations (status, emergency rollback) for a running agent and for a
store opened directly, and the board's start (start(): the board then serves the
runtime and frees this module, the config's and agent.restore: BOOT_ONLY_MODULES).
Must never: do I/O of its own or pick a platform. The Pi agent
(tools/agent_cmd.py), the board (main.py with firmware_shim.board.Board) and
the console (tools/local_cmd.py) hand their platform objects in.

A platform is duck-typed:
    platform.fs        a firmware_shim.files.FileSystem (or a stand-in)
    platform.clock     monotonic_ms() / wall_time()
    platform.log       log(msg)
    platform.open_link(cfg, key, refuse) -> link
        the MQTT link (see agent.runtime for the contract) with a provisional
        last will; it is made BEFORE the flash is opened, so a config the
        platform cannot serve (a board without verifying TLS) stops the start
        with refuse(field, why) (it raises ConfigError) and touches nothing.
    platform.open_partition(name)  (optional) the raw flash block device the config's
                       state_partition names (agent.flash_store keeps the state there)
    platform.release_modules(names)  (optional, start()) forget BOOT_ONLY_MODULES
    platform.memory()  (optional) {name: bytes} for status and health: heap_free and
                       heap_alloc on a board, rss on a Pi (firmware_shim.machine.memory)
    platform.poll()    (only for start()) called once the agent is built; the board
                       then hands it to runtime.serve, which calls it every loop
                       turn: a board arms and feeds its watchdog there
"""
from agent import apps
from agent import protocol as P
from agent.control import MigrationControl
from agent.errors import ConfigError
from agent.plan import Plan
from agent.runtime import KEY_LOCAL_HOLD, AgentRuntime, local_hold_changes


def load_key(cfg, fs, log):
    """The device key the agent verifies with, or None (insecure, no key file)."""
    try:
        raw = fs.read_bytes(cfg.key_file)
    except OSError as exc:
        raise ConfigError("key_file", str(exc)) from None
    if raw is None:
        if cfg.insecure:
            log("WARNING: key file %s missing: reports go out unsigned" % cfg.key_file)
            return None
        raise ConfigError("key_file", cfg.key_file + " does not exist")
    try:
        key, warning = P.agent_key(P.parse_key_file(raw), cfg.device_id)
    except P.ProtocolError as exc:
        raise ConfigError("key_file", str(exc)) from None
    if warning:
        log("WARNING: " + warning)
    return key


def open_state_store(cfg, platform, log):
    """The FlashStore on the partition the config names, or None for the file store."""
    if not cfg.state_partition:
        return None
    open_partition = getattr(platform, "open_partition", None)
    if open_partition is None:
        raise ConfigError("state_partition", "this platform has no raw flash partitions")
    try:
        device = open_partition(cfg.state_partition)
    except OSError as exc:
        raise ConfigError("state_partition", str(exc)) from None
    from agent.flash_store import FlashStore  # boards with a partition only

    return FlashStore(device, logger=log, path=cfg.state_partition)


def open_control(cfg, fs, clock, log, platform=None):
    """MigrationControl on the device's flash, with the config's plan and control settings."""
    plan = Plan.load(cfg.plan_file, fs) if cfg.plan_file else None
    store = open_state_store(cfg, platform, log)
    return MigrationControl.open(cfg.state_dir, fs, clock, plan=plan, config=cfg.control,
                                 log=log, store=store)


def build_runtime(cfg, key, control, link, log, memory=None):
    return AgentRuntime(
        control, link, cfg.fleet, cfg.device_id, cfg.groups, key=key, clock=control.clock,
        insecure=cfg.insecure, queue_limit=int(cfg.queue_limit),
        health_interval_ms=int(cfg.health_interval_ms),
        status_interval_ms=int(cfg.status_interval_ms),
        monitor_interval_ms=int(cfg.monitor_interval_ms), log=log, hw=cfg.hw,
        memory=memory)


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


def console_reply(request, control, runtime=None):
    """The console's answer to one request: from the running agent (runtime given),
    or from a store opened directly while no agent runs."""
    op = request.get("op")
    if op == "status":
        return {"ok": True, "status": _console_status(control)}
    if op == "emergency_rollback":
        reason = request.get("reason")
        if not isinstance(reason, str) or not reason:
            return {"ok": False, "error": "emergency_rollback needs a non-empty reason"}
        if runtime is not None:
            result = runtime.local_emergency_rollback(reason)
        else:
            result = control.emergency_rollback(
                "local: " + reason, extra_changes=local_hold_changes(control.clock))
        return {"ok": True, "result": result, "status": _console_status(control)}
    return {"ok": False, "error": f"unknown op {op!r}"}


def _console_status(control):
    """control.status() plus console_hold: whether a console emergency rollback holds the
    device (the operator's status report carries the same; it lives in the store)."""
    status = control.status()
    status["console_hold"] = control.store.get(KEY_LOCAL_HOLD) is not None
    return status


def _refuse(field, why):
    raise ConfigError(field, why)


class Agent:
    """A wired agent: what boot() returns. start() it, drive runtime.run(), close() it."""

    def __init__(self, cfg, key, control, runtime, link, log):
        self.cfg = cfg
        self.key = key
        self.control = control
        self.runtime = runtime
        self.link = link
        self.log = log

    def start(self):
        """runtime.start() (it now hears the control's events), then count this start."""
        self.runtime.start()
        return count_agent_start(self.control, self.log)

    def console(self, request):
        return console_reply(request, self.control, self.runtime)

    def close(self):
        self.runtime.close()


def boot(cfg, platform):
    """The wired Agent for a loaded config; raises ConfigError before touching flash."""
    log = platform.log
    key = load_key(cfg, platform.fs, log)
    link = platform.open_link(cfg, key, _refuse)  # first: a refusal leaves the flash alone
    try:
        control = open_control(cfg, platform.fs, platform.clock, log, platform)
    except BaseException:
        link.close()
        raise
    for note in control.recovered_notes:
        log("store recovery: " + note)
    runtime = build_runtime(cfg, key, control, link, log, getattr(platform, "memory", None))
    topic, payload = runtime.will()  # offline, with the groups and the guard's seq
    link.set_will(topic, payload, 1, True)
    apps.attach(control)  # applications in this interpreter: from agent import apps
    return Agent(cfg, key, control, runtime, link, log)


def build(config_path, platform):
    """boot() for the JSON config at config_path (read through platform.fs)."""
    from agent.agent_config import load_config  # boot only: a board releases it (start)

    return boot(load_config(config_path, platform.fs), platform)


# What only the start-up needs. A board drops these modules once its agent runs
# (platform.release_modules, firmware_shim.board), so their functions and the
# parsed config leave the heap before the first stage change comes in. The key file's
# parser (agent.protocol._keys) is one: the package loads it when a key name is asked
# for (P.parse_key_file), and loads it again if one ever is later; so is the config's
# validation (agent.config_rules: the loaded Config keeps no reference to it), the plan's
# (agent.plan_rules) and the store's open path (agent.store_recovery: a reopen loads it).
BOOT_ONLY_MODULES = ("agent.boot", "agent.agent_config", "agent.restore", "agent.protocol._keys",
                     "agent.config_rules", "agent.store_recovery", "agent.plan_rules")


def start(config_path, platform):
    """A board's start: boot, start the agent, start the link. Returns the running
    AgentRuntime for the platform to serve (runtime.serve), or an exit code (2: a
    bad config). Nothing the runtime holds refers back to this module or the config's."""
    log = platform.log
    try:
        agent = build(config_path, platform)
    except ConfigError as exc:
        log("cannot start: %s" % exc)
        return 2
    if agent.runtime.insecure:
        log("WARNING: insecure development mode: unsigned commands are ACCEPTED")
    try:
        platform.poll()  # a board's watchdog runs from here on
        agent.start()
        agent.link.start()
        log("device %s at stage %d; broker %s:%d" % (agent.cfg.device_id, agent.control.stage,
                                                     agent.cfg.host, agent.cfg.port))
        release = getattr(platform, "release_modules", None)
        if release is not None:
            release(BOOT_ONLY_MODULES)
    except BaseException:
        agent.close()
        raise
    return agent.runtime
