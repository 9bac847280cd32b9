"""bench board: the agent's heap on the MicroPython unix port, from the bundle as built.

It builds the .mpy bundle (`fleetstage bundle`), starts a mosquitto, and runs
the `micropython` binary in the bundle's folder (the folder is the flash, as
`cd BUNDLE && micropython main.py` serves it). A small driver script boots
the agent the way main.py does (agent.boot.build with firmware_shim.board.Board,
then start), then
feeds it four signed stage changes as the link would, and reports:

- heap after imports: gc.mem_alloc() after gc.collect(), every module the
  board imports at boot loaded; each module's share is what importing it
  added (modules imported leaves first, so a share is the module's own, plus
  any qstr pool chunk MicroPython happened to open during that import);
- heap after boot: connected, subscribed, status published, collected;
- peak of a stage change, two ways: the smallest `-X heapsize` in which the
  boot and all four stage changes complete (bisected: what a board's heap
  must hold, fragmentation included), and, as a bound, what a stage change
  allocates with the collector off (every byte of garbage counted).

Targets (issue 11): <= 96 KB after boot, <= 128 KB at the peak of a stage
change. The baseline column is the bare interpreter's heap in the same run
(`micropython -c` with nothing imported).

The ROMFS rows load the same modules from a ROMFS image of the bundle
(mpremote's builder; MicroPython 1.25+ runs bytecode in place from a board's
ROMFS partition), with the image's own bytes subtracted: the heap a board
would need if it kept the code in flash.

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
from agent.plan import Plan
from bench.__main__ import figure
from tests.mqttkit import Broker
from tools.bundle_cmd import ROOT, bundle, romfs_image, sources

KB = 1024
TARGET_BOOT = 96 * KB
TARGET_PEAK = 128 * KB
DEVICE = "bench-board"
FLEET = "benchfleet"

DRIVER = r'''
import gc, json, sys
BOUND = "bound" in sys.argv  # the collector off during each stage change
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
imports = gc.mem_alloc()
from agent import boot
from firmware_shim import board
from firmware_shim.files import FolderFlash
agent = boot.build("/config.json", board.Board(fs=FolderFlash(board.bundle_root(__file__))))
runtime, link, control = agent.runtime, agent.link, agent.control
agent.start()
link.start()
for _ in range(200):
    link.poll(20)
    runtime.tick()
    if link.connected and not runtime.queue.items and runtime.counters["published"] > 0:
        break
if not link.connected:
    raise SystemExit("no broker")
for _ in range(10):
    link.poll(20)
    runtime.tick()
gc.collect()
boot = gc.mem_alloc()
topic = "fleetstage/%s/cmd/device/%s" % (FLEET, DEVICE)
bounds = []
for n in range(1, 5):
    with open("cmd%d.bin" % n, "rb") as f:
        payload = f.read()
    gc.collect()
    if BOUND:
        gc.disable()
    runtime.on_message(topic, payload, False)
    runtime.tick()
    bounds.append(gc.mem_alloc())
    gc.enable()
    for _ in range(5):
        link.poll(20)
        runtime.tick()
del payload
gc.collect()
import agent as _a
print(json.dumps({"bare": bare, "imports": imports, "boot": boot, "bounds": bounds,
                  "image": image, "from": _a.__file__,
                  "stage": control.stage, "shares": shares, "after": gc.mem_alloc()}))
'''


def micropython_binary() -> str:
    found = os.path.join(os.path.dirname(sys.executable), "micropython")
    return found if os.path.exists(found) else (shutil.which("micropython") or found)


def _module_path(mod: str) -> str:
    path = os.path.join(ROOT, *mod.split(".")) + ".py"
    return path if os.path.exists(path) else os.path.join(ROOT, *mod.split("."), "__init__.py")


def top_level_imports(mod: str) -> set[str]:
    """What `mod` imports when it loads (imports inside functions are lazy: not counted)."""
    with open(_module_path(mod)) as f:
        tree = ast.parse(f.read())
    found: set[str] = set()
    nodes = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(node.module + "." + a.name for a in node.names)
        elif isinstance(node, ast.Try):
            nodes.extend(node.body)
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


def _signed_commands(out: str, fleet_key: bytes) -> None:
    plan = Plan.default()
    now = int(time.time())
    for n in range(1, 5):
        cmd = P.encode_command(P.OP_MIGRATE, {"stage": n}, "device:" + DEVICE,
                               P.next_seq(0, now) + n, plan.hash, fleet_key, devices=[DEVICE],
                               issued_at=now, max_stage=plan.max_stage)
        with open(os.path.join(out, "cmd%d.bin" % n), "wb") as f:
            f.write(cmd)


def build_board(work: str, broker_url: str) -> str:
    """The .mpy bundle with a config and key, plus the driver and four signed commands."""
    fleet_key = P.new_fleet_key()
    key = os.path.join(work, "device.key")
    with open(key, "wb") as f:
        f.write(P.format_key_file(P.derive_device_key(fleet_key, DEVICE), "device", DEVICE))
    config = os.path.join(work, "config.json")
    with open(config, "w") as f:
        json.dump({"device_id": DEVICE, "fleet": FLEET, "broker": broker_url,
                   "key_file": "/device.key", "state_dir": "/state", "environment": "dev",
                   "health_interval_ms": 3600000, "status_interval_ms": 3600000}, f)
    out = os.path.join(work, "bundle")
    bundle(out, compile_mpy=True, config=config, key=key)
    _signed_commands(out, fleet_key)
    _romfs_image(out)
    driver = DRIVER.replace("ORDER", repr(boot_modules())).replace(
        "FLEET", repr(FLEET)).replace("DEVICE", repr(DEVICE))
    with open(os.path.join(out, "bench_heap.py"), "w") as f:
        f.write(driver)
    return out


def _romfs_image(out: str) -> None:
    """code.romfs: the bundle's agent/ and firmware_shim/ as a ROMFS image, built as
    `fleetstage bundle --romfs` builds it (what `mpremote romfs deploy` writes to a
    board's ROMFS partition)."""
    src = os.path.join(os.path.dirname(out), "romfs-src")
    for pkg in ("agent", "firmware_shim"):
        shutil.copytree(os.path.join(out, pkg), os.path.join(src, pkg))
    image = romfs_image(src)
    with open(os.path.join(out, "code.romfs"), "wb") as f:
        f.write(image)


def _run_driver(out: str, heap: int | None = None, bound: bool = False,
                rom: bool = False) -> dict | None:
    """One boot + four stage changes; None when it ran out of heap."""
    state = os.path.join(out, "state")
    shutil.rmtree(state, ignore_errors=True)
    argv = [micropython_binary()] + (["-X", "heapsize=%d" % heap] if heap else [])
    argv += ["bench_heap.py"] + (["bound"] if bound else []) + (["rom"] if rom else [])
    proc = subprocess.run(argv, cwd=out, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        if "MemoryError" in proc.stderr + proc.stdout:
            return None
        raise RuntimeError("the board driver failed: %s" % (proc.stderr or proc.stdout)[-800:])
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if got["stage"] != 4:
        raise RuntimeError("the board did not reach stage 4: %s" % proc.stdout[-800:])
    return got


def smallest_heap(out: str, high: int, step: int = 2 * KB) -> int:
    """The smallest heapsize (to `step`) in which boot + four stage changes complete."""
    low = 16 * KB
    while high - low > step:
        mid = (low + high) // 2
        if _run_driver(out, mid) is None:
            low = mid
        else:
            high = mid
    return high


def bare_heap() -> int:
    proc = subprocess.run([micropython_binary(), "-c", "import gc; gc.collect(); "
                           "print(gc.mem_alloc())"], capture_output=True, text=True, timeout=30)
    return int(proc.stdout.strip())


def measure(work: str) -> dict:
    broker = Broker(os.path.join(work, "broker"), persist=False).start()
    try:
        out = build_board(work, broker.url)
        got = _run_driver(out, bound=True)
        if got is None:
            raise RuntimeError("the board ran out of the default heap")
        got["min_heap"] = smallest_heap(out, max(got["bounds"]) + 64 * KB)
        got["bare_process"] = bare_heap()
        got["pi"] = pi_footprint(work, broker.url)
        rom = _run_driver(out, rom=True)
        if rom is None or not rom["from"].startswith("/rom"):
            raise RuntimeError("the ROMFS run did not load from the image: %r" % rom)
        got["rom"] = rom
        return got
    finally:
        broker.stop()


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
        figure("heap after imports", got["imports"] / KB, "KB", base, bare / KB),
        figure("heap after boot", got["boot"] / KB, "KB", base, bare / KB,
               target="<= 96 KB", met=got["boot"] <= TARGET_BOOT),
        figure("peak of a stage change: smallest heap that runs it", got["min_heap"] / KB,
               "KB", base, bare / KB, target="<= 128 KB", met=got["min_heap"] <= TARGET_PEAK),
        figure("peak of a stage change, no GC (upper bound)", max(got["bounds"]) / KB, "KB",
               base, bare / KB),
    ]
    rom = got["rom"]
    rows += [
        figure("ROMFS image: heap after imports", (rom["imports"] - rom["image"]) / KB, "KB",
               "loaded from .mpy files", got["imports"] / KB),
        figure("ROMFS image: heap after boot", (rom["boot"] - rom["image"]) / KB, "KB",
               "loaded from .mpy files", got["boot"] / KB, target="<= 96 KB",
               met=rom["boot"] - rom["image"] <= TARGET_BOOT),
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
    for name, size in sorted(got["shares"], key=lambda s: -s[1]):
        rows.append(figure("  share: " + name, size / KB, "KB", "all modules", total / KB))
    return rows
