"""bench board: the agent's heap on the MicroPython unix port, from the bundle as built.

It builds the .mpy bundle (`fleetstage bundle`, the board profile), starts a
mosquitto, and boots the bundle exactly as a user does: `cd BUNDLE &&
micropython main.py` (the folder is the flash). An operator session
(tools.operator_cmd) then sends four signed stage changes through the broker,
each of which must come back acked `applied`. Reported:

- heap after imports: a separate driver in the bundle's folder imports what
  main.py imports, leaves first, and reads gc.mem_alloc() after gc.collect();
  each module's share is what importing it added (approximate: a share also
  holds any qstr pool MicroPython happened to open during that import, and
  modules main.py loads only when used, agent.services, are not in it);
- heap after boot: the heap_alloc of the board's own first status report
  (connected, subscribed; firmware_shim.machine.memory collects first);
- what the ROMFS modules are made of: the string constants of more than 10
  characters and the f-strings (mpy-cross makes each a str object; measured as
  the heap a bundle with them blanked saves, imported the same way), the qstr
  pools' tables (micropython.qstr_info()), and the rest (function, class and
  module objects, their dicts);
- heap after LONG_RUN (64) more commands on the ROMFS bundle (a flag set and cleared
  in turn, each acked): what a board holds once its replay window and history are
  full, not only just after boot;
- peak of a stage change: the smallest `-X heapsize` in which main.py boots
  and applies all four (bisected to 2 KB; a run that logs a MemoryError
  fails): what a board's heap must hold, fragmentation included; on the ROMFS
  bundle also the smallest heap for the four and LONG_RUN more commands (what a
  board needs once its replay window and history are full).

Targets (issue 11): <= 96 KB after boot, <= 128 KB at the peak of a stage
change. The baseline column is the bare interpreter's heap in the same run
(`micropython -c` with nothing imported).

The ROMFS rows boot a `fleetstage bundle --romfs` bundle the same way (its
main.py mounts code.romfs; MicroPython 1.25+ runs bytecode in place from a
board's ROMFS partition). On the unix port the image file is read into the
heap, so its size is subtracted from those figures: the heap a board needs
when the image is in flash.

On the Pi side it measures the resident set (VmRSS) of `fleetstage agent`
idling connected to the broker, beside bare python and python with paho and
msgpack imported, all in the same run (target: the agent <= 25 MB). The target
row runs the agent's modules from bytecode compiled beforehand, as `pip install`
of the wheel leaves them on a Pi; the row below it is the same agent from the
source tree with bytecode writes off (the compiler's memory counted too).
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from agent import protocol as P
from bench.__main__ import figure
from tests.mqttkit import Broker
from tools.board_profile import imports_at_load
from tools.bundle_cmd import ROOT, bundle, romfs_image, sources

KB = 1024
TARGET_BOOT = 96 * KB
TARGET_PEAK = 128 * KB
DEVICE = "bench-board"
LONG_RUN_FLAG = "use_ets_agent_registry"
LONG_RUN = 64  # commands after the stages: the replay window (RECENT_WINDOW) fills
FLEET = "benchfleet"

# The share driver: heap after imports and each module's share. It imports what
# main.py imports, leaves first; the boot and stage-change figures come from
# main.py itself (boot_run below), not from this script.
DRIVER = r"""
import gc, json, sys
image = 0
if "rom" in sys.argv:  # the modules from a ROMFS image: bytecode runs in place
    import vfs
    with open("code.romfs", "rb") as f:
        data = f.read()
    image = len(data)  # a board keeps this in flash: subtracted from every figure
    vfs.mount(vfs.VfsRom(data), "/rom")
    sys.path.insert(0, "/rom")
gc.collect()
bare = gc.mem_alloc()
shares = []
for name in ORDER:
    gc.collect()
    before = gc.mem_alloc()
    __import__(name)
    gc.collect()
    shares.append((name, gc.mem_alloc() - before))
gc.collect()
import agent as _a
import micropython
micropython.qstr_info()  # the qstr pools' line, read by import_shares
print(json.dumps({"bare": bare, "imports": gc.mem_alloc(), "image": image,
                  "from": _a.__file__, "shares": shares}))
"""


def micropython_binary() -> str:
    """$BOARD_MICROPYTHON when set (e.g. a 32-bit unix port: tools/build_micropython32.sh),
    else the venv's micropython (the pip unix port, 64-bit)."""
    chosen = os.environ.get("BOARD_MICROPYTHON")
    if chosen:
        return chosen
    found = os.path.join(os.path.dirname(sys.executable), "micropython")
    return found if os.path.exists(found) else (shutil.which("micropython") or found)


def binary_word_bits() -> int:
    """The word size of the micropython binary the run uses (32 on a Pico W's RP2040)."""
    proc = subprocess.run([micropython_binary(), "-c", "import struct; "
                           "print(struct.calcsize('P') * 8)"], capture_output=True, text=True,
                          timeout=30)
    return int(proc.stdout.strip())


def _module_path(mod: str) -> str:
    path = os.path.join(ROOT, *mod.split(".")) + ".py"
    return path if os.path.exists(path) else os.path.join(ROOT, *mod.split("."), "__init__.py")


def top_level_imports(mod: str) -> set[str]:
    """What `mod` imports when it loads (imports inside functions are lazy: not counted)."""
    with open(_module_path(mod)) as f:
        found = imports_at_load(ast.parse(f.read()))
    found |= {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}  # packages
    return found


def boot_modules() -> list[str]:
    """The bundle's modules that main.py loads (agent.boot, firmware_shim.board), leaves first.

    A package whose __init__ imports its own submodules loads them as one
    (importing any of them runs the __init__ first), so it is one entry here
    and its share includes theirs.
    """
    every = set()
    for rel in sources():
        mod = rel[:-3].replace("/", ".")
        every.add(mod[:-len(".__init__")] if mod.endswith(".__init__") else mod)
    imports = {m: top_level_imports(m) & every for m in every}

    def node(m: str) -> str:
        parent = m.rpartition(".")[0]
        if parent in every and m in imports[parent]:
            return node(parent)
        return m

    deps: dict[str, set[str]] = {}
    for m in every:
        deps.setdefault(node(m), set()).update(node(d) for d in imports[m])
    order: list[str] = []

    def visit(m: str, stack: tuple[str, ...]) -> None:
        if m in order or m in stack:
            return
        for d in sorted(deps[m] - {m}):
            visit(d, stack + (m,))
        order.append(m)

    visit("agent.boot", ())
    visit("firmware_shim.board", ())
    return order


def build_board(work: str, broker_url: str, romfs: bool = False) -> str:
    """The .mpy bundle as `fleetstage bundle` writes it (with --romfs: code.romfs), plus the
    share driver. Each run writes its own config.json and device.key (boot_run)."""
    out = os.path.join(work, "bundle-rom" if romfs else "bundle")
    bundle(out, compile_mpy=True, romfs=romfs)
    if not romfs:
        _romfs_image(out)  # the share driver's ROMFS mode reads it
    driver = DRIVER.replace("ORDER", repr(boot_modules()))
    with open(os.path.join(out, "bench_heap.py"), "w") as f:
        f.write(driver)
    return out


def _romfs_image(out: str) -> None:
    """code.romfs: the bundle's agent/ and firmware_shim/ as a ROMFS image, built as
    `fleetstage bundle --romfs` builds it (what `mpremote romfs deploy` writes to a
    board's ROMFS partition)."""
    src = os.path.join(os.path.dirname(out), "romfs-src")
    shutil.rmtree(src, ignore_errors=True)
    for pkg in ("agent", "firmware_shim"):
        shutil.copytree(os.path.join(out, pkg), os.path.join(src, pkg))
    image = romfs_image(src)
    with open(os.path.join(out, "code.romfs"), "wb") as f:
        f.write(image)


def import_shares(out: str, rom: bool = False) -> dict:
    """Heap after imports and each module's share (the share driver)."""
    argv = [micropython_binary(), "bench_heap.py"] + (["rom"] if rom else [])
    proc = subprocess.run(argv, cwd=out, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RuntimeError("the share driver failed: %s" % (proc.stderr or proc.stdout)[-800:])
    lines = proc.stdout.strip().splitlines()
    got = json.loads(lines[-1])
    pools = [line for line in lines if line.startswith("qstr pool:")][-1]
    fields = dict(f.split("=") for f in pools.split(":", 1)[1].replace(",", " ").split())
    got["qstrs"] = int(fields["n_qstr"])
    # the pools' tables; from ROMFS the names' text stays in the image
    got["qstr_pools"] = int(fields["n_total_bytes"]) - int(fields["n_str_data_bytes"])
    return got


class _Blank(ast.NodeTransformer):
    """Every string constant of more than 10 characters (and every f-string) as "": what
    is left of the heap without them measures what they cost (mpy-cross makes each a
    str object; shorter ones are qstrs)."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str) and len(node.value) > 10:
            return ast.copy_location(ast.Constant(""), node)
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        return ast.copy_location(ast.Constant(""), node)


def blank_strings(text: str) -> str:
    return ast.unparse(_Blank().visit(ast.parse(text)))


def string_cost(work: str) -> int:
    """Heap after imports from ROMFS that the long string constants take (a bundle with
    them blanked, imported the same way; it is never booted)."""
    out = os.path.join(work, "bundle-blank")
    bundle(out, compile_mpy=True, transform=blank_strings)
    _romfs_image(out)
    with open(os.path.join(out, "bench_heap.py"), "w") as f:
        f.write(DRIVER.replace("ORDER", repr(boot_modules())))
    blank = import_shares(out, rom=True)
    return blank["imports"] - blank["image"]


class Lab:
    """A mosquitto, an operator session and an observer of the board's reports (CPython)."""

    def __init__(self, work: str, broker_extra: str = "allow_anonymous true\n",
                 board_config: dict | None = None) -> None:
        """broker_extra: more mosquitto config (bench board_tls: a TLS listener);
        board_config: keys every board's config.json gets on top (its mqtts:// broker)."""
        from firmware_shim.mqtt_paho import MqttConfig, MqttLoop, PahoLink
        from tools.operator_cmd import OperatorClient

        self.broker = Broker(os.path.join(work, "broker"), extra=broker_extra,
                             persist=False).start()
        self.board_config = board_config or {}
        self.fleet_key = P.new_fleet_key()
        self.loop = MqttLoop()
        self.statuses: list[dict] = []  # the boards' verified status reports
        self.watch = PahoLink(MqttConfig(self.broker.host, self.broker.port,
                                         client_id="bench-board-watch"))
        self.watch.set_callbacks(on_message=self._on_status)
        self.watch.subscribe(P.device_wildcard(FLEET, "status"), qos=1)
        self.loop.add(self.watch)
        self.watch.start()
        self.operator = OperatorClient(self.broker.url, FLEET, self.fleet_key, loop=self.loop)
        self.operator.connect()
        self.runs = 0

    def _on_status(self, topic: str, payload: bytes, retain: bool) -> None:
        device = topic.split("/")[3]
        key = P.derive_device_key(self.fleet_key, device)
        self.statuses.append(P.decode_report(payload, key, "status"))

    def close(self) -> None:
        self.loop.close()
        self.broker.stop()


def boot_run(lab: Lab, out: str, heap: int | None = None, flag_commands: int = 0
             ) -> dict | None:
    """`cd BUNDLE && micropython [-X heapsize=HEAP] main.py`, then four signed stage
    changes through mosquitto, each acked `applied`. Returns the heap the board's
    status reported after boot (extra.memory, collected first), or None when the
    board did not boot or did not apply all four in that heap.

    flag_commands: then that many more commands (a flag set and cleared in turn),
    each acked `applied`; "after" is the heap the status after the last one reports
    (every applied command stays in the replay window, each change in the history).

    Every run is a fresh device (its own id, key and empty /state), so nothing
    retained from an earlier run reaches it.
    """
    lab.runs += 1
    device = "%s-%d" % (DEVICE, lab.runs)
    with open(os.path.join(out, "device.key"), "wb") as kf:
        kf.write(P.format_key_file(P.derive_device_key(lab.fleet_key, device), "device", device))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"device_id": device, "fleet": FLEET, "broker": lab.broker.url,
                   "key_file": "/device.key", "state_dir": "/state", "environment": "dev",
                   "health_interval_ms": 3600000, "status_interval_ms": 3600000,
                   **lab.board_config}, f)
    shutil.rmtree(os.path.join(out, "state"), ignore_errors=True)
    argv = [micropython_binary()] + (["-X", "heapsize=%d" % heap] if heap else []) + ["main.py"]
    log_path = os.path.join(out, "board-%d.log" % lab.runs)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=out, stdout=log, stderr=subprocess.STDOUT)

    def online() -> list[dict]:
        return [st for st in lab.statuses if st.get("device") == device and st.get("online")]

    def failed() -> bool:  # it exited, or it ran out of heap (the loop logs and goes on)
        if proc.poll() is not None:
            return True
        with open(log_path, "rb") as f:
            return b"MemoryError" in f.read()

    try:
        lab.loop.run_until(lambda: failed() or bool(online()), 30)
        statuses = online()
        if failed() or not statuses:
            return None
        boot = statuses[0]["extra"]["memory"]["heap_alloc"]
        for stage in range(1, 5):
            outcome = lab.operator.send(P.OP_MIGRATE, {"stage": stage}, "device:" + device,
                                        [device])
            lab.loop.run_until(lambda o=outcome: not o.missing or failed(), 15)
            if outcome.acks.get(device, {}).get("result") != P.APPLIED or failed():
                return None
        got = {"boot": boot, "log": log_path}
        for i in range(flag_commands):
            op, args = ((P.OP_SET_FLAG, {"name": LONG_RUN_FLAG, "value": True}) if i % 2 == 0
                        else (P.OP_CLEAR_FLAG, {"name": LONG_RUN_FLAG}))
            seen = len(online())
            outcome = lab.operator.send(op, args, "device:" + device, [device])
            lab.loop.run_until(lambda o=outcome, n=seen: (not o.missing and len(online()) > n)
                               or failed(), 15)
            if outcome.acks.get(device, {}).get("result") != P.APPLIED or failed():
                return None
            got["after"] = online()[-1]["extra"]["memory"]["heap_alloc"]
        return got
    finally:
        proc.kill()
        proc.wait(10)
        lab.statuses.clear()


def smallest_heap(lab: Lab, out: str, high: int, step: int = 2 * KB, flag_commands: int = 0,
                  low: int = 16 * KB) -> int:
    """The smallest heapsize (to `step`) in which main.py boots and applies four stages
    (and then `flag_commands` more, as boot_run)."""
    while high - low > step:
        mid = (low + high) // 2
        if boot_run(lab, out, mid, flag_commands) is None:
            low = mid
        else:
            high = mid
    return high


def bare_heap() -> int:
    proc = subprocess.run([micropython_binary(), "-c", "import gc; gc.collect(); "
                           "print(gc.mem_alloc())"], capture_output=True, text=True, timeout=30)
    return int(proc.stdout.strip())


def measure_board(work: str) -> dict:
    lab = Lab(work)
    try:
        out = build_board(work, lab.broker.url)
        got = import_shares(out)
        run = boot_run(lab, out)
        if run is None:
            raise RuntimeError("the board did not boot and apply four stages in the default heap")
        got["boot"] = run["boot"]
        got["min_heap"] = smallest_heap(lab, out, 512 * KB)
        got["bare_process"] = bare_heap()
        rom_out = build_board(work, lab.broker.url, romfs=True)
        image = os.path.getsize(os.path.join(rom_out, "code.romfs"))
        rom = import_shares(out, rom=True)
        if not rom["from"].startswith("/rom"):
            raise RuntimeError("the ROMFS run did not load from the image: %r" % rom)
        run = boot_run(lab, rom_out, flag_commands=LONG_RUN)
        if run is None:
            raise RuntimeError("the ROMFS board did not boot and apply four stages and "
                               "%d flag commands" % LONG_RUN)
        rom["boot"] = run["boot"] - image
        rom["long_run"] = run["after"] - image
        rom["imports"] -= rom["image"]
        # on the unix port main.py reads the image into the heap; a board maps it in flash
        rom["min_heap"] = smallest_heap(lab, rom_out, 512 * KB) - image
        # what a long-lived board needs: the same with its replay window and history full
        rom["min_heap_long"] = smallest_heap(lab, rom_out, 512 * KB, flag_commands=LONG_RUN,
                                             low=rom["min_heap"] + image) - image
        rom["strings"] = rom["imports"] - string_cost(work)
        got["rom"] = rom
        return got
    finally:
        lab.close()


def measure(work: str) -> dict:
    got = measure_board(work)
    broker = Broker(os.path.join(work, "pi-broker"), persist=False).start()
    try:
        got["pi"] = pi_footprint(work, broker.url)
    finally:
        broker.stop()
    return got


def _rss_of(proc: subprocess.Popen) -> int:
    with open("/proc/%d/status" % proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KB
    raise RuntimeError("no VmRSS for %d" % proc.pid)


def _idle_rss(argv: list[str], ready: str | None, log_path: str, settle_s: float = 2.0,
              cwd: str = ROOT, env: dict[str, str] | None = None) -> int:
    """The resident set of a process once `ready` shows in its output and it has idled."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while ready is not None:
            with open(log_path, errors="replace") as f:
                if ready in f.read():
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("not ready: %s" % open(log_path).read()[-500:])
            time.sleep(0.05)
        time.sleep(settle_s)
        return _rss_of(proc)
    finally:
        proc.terminate()
        proc.wait(10)


def _installed_tree(work: str) -> tuple[str, dict[str, str]]:
    """The agent's packages as a Pi runs them: `pip install` of the wheel (README, Pi setup)
    compiles every module to bytecode at install, so the agent loads .pyc files and never
    runs the compiler (~1 MB of resident set that a run from source, with bytecode writes
    off, pays at start). A copy in `work` is compiled the same way (the tree is untouched)."""
    tree = os.path.join(work, "installed")
    for pkg in ("agent", "firmware_shim", "tools"):
        shutil.copytree(os.path.join(ROOT, pkg), os.path.join(tree, pkg),
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", "agent", "firmware_shim",
                    "tools"], cwd=tree, check=True)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # nothing left to write: all compiled above
    return tree, env


def pi_footprint(work: str, broker_url: str) -> dict:
    """Idle RSS of `fleetstage agent` beside bare python and python with paho imported."""
    fleet_key = P.new_fleet_key()
    key = os.path.join(work, "pi.key")
    with open(key, "wb") as f:
        f.write(P.format_key_file(P.derive_device_key(fleet_key, "bench-pi"), "device",
                                  "bench-pi"))
    config = os.path.join(work, "pi.json")
    with open(config, "w") as f:
        json.dump({"device_id": "bench-pi", "fleet": FLEET, "broker": broker_url,
                   "key_file": key, "state_dir": os.path.join(work, "pi-state"),
                   "environment": "dev"}, f)
    py = sys.executable
    wait = "import sys, time; print('ready', flush=True); time.sleep(60)"
    agent = [py, "-m", "tools.cli", "agent", "--config", config]
    tree, env = _installed_tree(work)
    return {
        "installed": _idle_rss(agent, "connected to broker", os.path.join(work, "inst.log"),
                               cwd=tree, env=env),
        "bare": _idle_rss([py, "-c", wait], "ready", os.path.join(work, "bare.log")),
        "paho": _idle_rss([py, "-c", "import paho.mqtt.client, msgpack; " + wait], "ready",
                          os.path.join(work, "paho.log")),
        "agent": _idle_rss(agent, "connected to broker", os.path.join(work, "agent.log")),
    }


def run(quick: bool = False) -> list[dict]:
    work = tempfile.mkdtemp(prefix="bench-board-")
    try:
        got = measure(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bare = got["bare_process"]
    base = "bare micropython"
    rows = [
        figure("micropython binary (%s; BOARD_MICROPYTHON picks it)" % micropython_binary(),
               binary_word_bits(), "bit", "a Pico W's RP2040", 32),
        figure("heap after imports", got["imports"] / KB, "KB", base, bare / KB),
        figure("heap after boot (main.py, its status report)", got["boot"] / KB, "KB", base,
               bare / KB, target="<= 96 KB", met=got["boot"] <= TARGET_BOOT),
        figure("peak of a stage change: smallest heap that runs it", got["min_heap"] / KB,
               "KB", base, bare / KB, target="<= 128 KB", met=got["min_heap"] <= TARGET_PEAK),
    ]
    rom = got["rom"]
    rows += [  # what the after-boot figure is made of
        figure("  after boot: the modules (heap after imports)", got["imports"] / KB, "KB",
               "heap after boot", got["boot"] / KB),
        figure("  after boot: runtime objects (boot minus imports)",
               (got["boot"] - got["imports"]) / KB, "KB", "heap after boot", got["boot"] / KB),
        figure("  the modules' bytecode (.mpy minus ROMFS, after imports)",
               (got["imports"] - rom["imports"]) / KB, "KB", "heap after imports",
               got["imports"] / KB),
    ]
    rows += [
        figure("ROMFS image: heap after imports", rom["imports"] / KB, "KB",
               "loaded from .mpy files", got["imports"] / KB),
        figure("ROMFS image: heap after boot", rom["boot"] / KB, "KB",
               "loaded from .mpy files", got["boot"] / KB, target="<= 96 KB",
               met=rom["boot"] <= TARGET_BOOT),
        figure("ROMFS image: smallest heap for a stage change", rom["min_heap"] / KB, "KB",
               "loaded from .mpy files", got["min_heap"] / KB, target="<= 128 KB",
               met=rom["min_heap"] <= TARGET_PEAK),
        figure("ROMFS image: heap after %d more commands (replay window and history full)"
               % LONG_RUN, rom["long_run"] / KB, "KB", "ROMFS heap after boot",
               rom["boot"] / KB),
        figure("ROMFS image: smallest heap for the stage changes and %d more commands "
               "(what a long-lived board needs)" % LONG_RUN, rom["min_heap_long"] / KB, "KB",
               "the same for the stage changes alone", rom["min_heap"] / KB),
    ]
    rest = rom["imports"] - rom["strings"] - rom["qstr_pools"]
    rows += [  # what the ROMFS modules are made of (heap after imports)
        figure("  ROMFS modules: string constants of 10+ chars, f-strings (blanked: the "
               "difference)", rom["strings"] / KB, "KB", "ROMFS heap after imports",
               rom["imports"] / KB),
        figure("  ROMFS modules: qstr pool tables (%d qstrs)" % rom["qstrs"],
               rom["qstr_pools"] / KB, "KB", "ROMFS heap after imports", rom["imports"] / KB),
        figure("  ROMFS modules: the rest (function, class, module objects and dicts)",
               rest / KB, "KB", "ROMFS heap after imports", rom["imports"] / KB),
    ]
    pi, mb = got["pi"], 1024.0 * KB
    rows += [
        figure("Pi agent idle RSS (fleetstage agent, bytecode compiled as pip installs it)",
               pi["installed"] / mb, "MB", "bare python", pi["bare"] / mb, target="<= 25 MB",
               met=pi["installed"] <= 25 * mb),
        figure("  the same from the source tree, compiled at start", pi["agent"] / mb, "MB",
               "bare python", pi["bare"] / mb),
        figure("  python with paho + msgpack imported", pi["paho"] / mb, "MB", "bare python",
               pi["bare"] / mb),
    ]
    total = sum(size for _, size in got["shares"]) or 1
    rom_shares = dict(rom["shares"])
    for name, size in sorted(got["shares"], key=lambda s: -s[1]):
        rows.append(figure("  share: " + name, size / KB, "KB", "all modules", total / KB))
        rows.append(figure("  share from ROMFS: " + name, rom_shares.get(name, 0) / KB, "KB",
                           "from .mpy", size / KB))
    return rows
