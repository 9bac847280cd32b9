"""A MicroPython board as a platform for agent.boot (the same code runs on the unix port).

A board's main.py (written by `fleetstage bundle`) hands the composition root in,
naming it only inside a function (a module-level `Board(agent.boot.start)` stays
on main.py's frame, and the start-up's modules could never be freed):
    from firmware_shim.board import Board
    def board():
        import agent.boot
        return Board(agent.boot.start)
    board().run_bundle(__file__)
The folder that holds main.py is the flash: on a board that is "/", and on
the unix port `cd BUNDLE && micropython main.py` serves BUNDLE as "/" (every
absolute path in the config, /config.json, /device.key, /state, resolves
inside it), so the bundle boots as built, with no other path.
agent.boot reads the same JSON config as `fleetstage agent` on a Pi and the
device key, opens MigrationControl on the board's flash (littlefs) and serves
the MQTT contract through the link this module makes (firmware_shim.mqtt_micro).
A bad config or key stops it at start with the field at fault, printed; the
watchdog (when the board has one) is fed from the loop, so a hung agent resets
the board. Must never: import agent (the core sits above the shim; it is handed in).
"""
from firmware_shim import machine
from firmware_shim.files import FileSystem
from firmware_shim.machine import memory, watchdog
from firmware_shim.mqtt_micro import MicroLink, MicroMqttError


def log(msg):
    print("fleetstage-agent:", msg)


class Board:
    """The board's platform objects for agent.boot: flash, clock, log, link, watchdog.

    start: the composition root's entry (agent.boot.start), handed in by main.py;
    only run_config() needs it.
    """

    def __init__(self, start=None, fs=None, clock=None, watchdog_ms=30000):
        self.start = start
        self.fs = fs if fs is not None else FileSystem()
        # the module's monotonic_ms() and wall_time() are SystemClock's: no instance of it
        self.clock = clock if clock is not None else machine
        self.log = log
        self.watchdog_ms = watchdog_ms
        self._wdt = None
        self.memory = memory  # heap_free / heap_alloc in status and health

    def open_link(self, cfg, key, refuse):
        """The MQTT link, made before the flash is opened: a port that cannot verify
        mqtts:// (or a config a board cannot serve) stops the start here.

        A board never connects to a broker it cannot verify: mqtts:// without a
        CA, or on a port whose ssl cannot verify, is refused at start
        (refuse(field, why) raises the core's ConfigError). mqtt:// needs no CA.
        """
        if cfg.tls_cert:
            refuse("tls.cert", "client certificates are not supported on boards yet")
        ca = None
        if cfg.tls:  # the CA bytes (one function here, not two: each is heap on a board)
            if cfg.tls_skip_hostname_check:
                refuse("tls.insecure_skip_hostname_check",
                       "not supported on boards: the broker is always fully verified")
            if not cfg.tls_ca:
                refuse("tls.ca", "mqtts:// on a board needs the CA that signed the "
                                 "broker's certificate (a board has no system CA store)")
            try:
                ca = self.fs.read_bytes(cfg.tls_ca)
            except OSError as exc:
                refuse("tls.ca", "cannot read %s: %s" % (cfg.tls_ca, exc))
            if not ca:
                refuse("tls.ca", cfg.tls_ca + " does not exist or is empty")
        try:
            return MicroLink(cfg.host, cfg.port, client_id=cfg.device_id, username=cfg.username,
                             password=cfg.password, keepalive=int(cfg.keepalive_s), will=None,
                             tls=cfg.tls, ca=ca, clean_session=cfg.clean_session,
                             backoff_min_ms=int(cfg.backoff_min_s * 1000),
                             backoff_max_ms=int(cfg.backoff_max_s * 1000), log=log)
        except MicroMqttError as exc:  # MicroTlsUnsupported: the one a link's making raises
            refuse("tls.ca", "mqtts:// refused: %s" % exc)

    def open_partition(self, name):
        """The raw flash partition for the state (config "state_partition")."""
        from firmware_shim.flash import board_partition

        return board_partition(name, getattr(self.fs, "path", None))

    def poll(self):
        """Called once the agent is built, then every loop turn: arm, then feed the watchdog."""
        wdt = self._wdt
        if wdt is None:  # False once armed on a port without a watchdog
            wdt = self._wdt = watchdog(self.watchdog_ms) or False
        if wdt:
            wdt.feed()

    def run_bundle(self, main_file):
        """main.py's entry: boot from /config.json of the flash the bundle lives on.

        On the unix port a start that fails (a bad config) exits with its code, as
        `fleetstage agent` does; a board returns to its REPL instead of looping.
        """
        import os
        import sys

        # the absolute folder that holds main.py ("/" on a board)
        slash = main_file.rfind("/")
        root = main_file[:slash] if slash > 0 else ("/" if slash == 0 else "")
        if not root.startswith("/"):
            cwd = os.getcwd()
            root = cwd if not root else (cwd.rstrip("/") + "/" + root)
        root = root.rstrip("/") or "/"
        self.fs = FileSystem(None if root == "/" else root)
        code = self.run_config("/config.json")
        if code and sys.platform in ("linux", "darwin"):
            sys.exit(code)
        return code

    def run_config(self, config_path, poll_ms=100):
        """Start the agent for the config (self.start: agent.boot.start), then serve it
        until its loop ends. Returns an exit code (2: a bad config). Runs once: the
        start-up's code is freed after it."""
        if self.start is None:
            raise RuntimeError("Board.run_config runs once; make a new Board(agent.boot.start)")
        start, self.start = self.start, None  # nothing here holds the boot code after
        started = start(config_path, self)
        del start
        if isinstance(started, int):
            return started
        return started.serve(poll_ms, self.poll)

    def release_modules(self, names):
        """Forget modules only the start-up needed (agent.boot.BOOT_ONLY_MODULES):
        out of sys.modules and their package, so once nothing else refers to them the
        collector frees their functions. The interpreter imports one again if asked."""
        import sys

        for name in names:
            sys.modules.pop(name, None)
            i = name.rfind(".")
            parent = sys.modules.get(name[:i]) if i > 0 else None
            if parent is not None and hasattr(parent, name[i + 1:]):
                delattr(parent, name[i + 1:])
