"""The health window (agent.health): memory at any call rate, and the cost of a sample.

    python -m bench health

Memory: tracemalloc's count of the bytes a HealthWindow holds after five
minutes (its whole window) of outcomes at 10, 100 and 1,000 calls a second,
for one source and for the most sources it keeps (MAX_SOURCES), each as a
ratio to the same window at 10 calls/s (flat = 1.0). Target: <= 8 KB a device.
The same on the MicroPython unix port (gc.mem_alloc, one process per rate).
Cost: ns per record_outcome() in the steady state (reservoirs full, so every
sample takes the random draw), as a ratio to a bare counter increment
(`n += 1`) timed the same way in the same run; and the same for the control's
record_outcome() (argument checks + the window), and for a snapshot.
"""
import os
import subprocess
import sys
import tempfile
import timeit
import tracemalloc

from agent.control import MigrationControl
from agent.health import MAX_SOURCES, HealthWindow
from bench.__main__ import figure
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock

WINDOW_MS = 300000
RATES = (10, 100, 1000)
TARGET_BYTES = 8192


def _window_bytes(rate, sources):
    names = ["app"] + ["source-%d" % i for i in range(1, sources)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    w = HealthWindow(window_ms=WINDOW_MS)
    step = 1000 / rate
    n = int(WINDOW_MS / step)
    for i in range(n):
        t = int(i * step)
        for name in names:
            w.record_outcome(i % 50 != 0, 5 + i % 17, t, name)
    for _ in range(80):  # a full restart window too (the rule's limit is 10 a minute)
        w.record_restart(WINDOW_MS - 1, "unit")
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert w.snapshot(WINDOW_MS - 1)["samples"] == n * len(names)
    return held


MICRO_SCRIPT = """
import gc, sys
sys.path.insert(0, ".")
from agent.health import HealthWindow, MAX_SOURCES
rate = int(sys.argv[1])
names = ["app"] + ["source-%d" % i for i in range(1, MAX_SOURCES)]
gc.collect()
before = gc.mem_alloc()
w = HealthWindow(window_ms=300000)
step = 1000 // rate
for t in range(0, 300000, step):
    for n in names:
        w.record_outcome(t % 50 != 0, 5 + t % 17, t, n)
for _ in range(80):
    w.record_restart(299999, "unit")
gc.collect()
print(gc.mem_alloc() - before)
"""


def _micropython_bytes(rate):
    """The MicroPython heap a 5-source window holds (unix port, one process per rate)."""
    exe = os.path.join(os.path.dirname(sys.executable), "micropython")
    if not os.path.exists(exe):
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([exe, "-c", MICRO_SCRIPT, str(rate)], cwd=root, capture_output=True,
                         text=True, timeout=600)
    return int(out.stdout.strip()) if out.returncode == 0 else None


def _ns(stmt, env, number, setup="pass"):
    best = min(timeit.Timer(stmt, setup=setup, globals=env).repeat(number=number, repeat=5))
    return best * 1e9 / number


def run(quick=False):
    rows = []
    for sources in (1, MAX_SOURCES):
        base = None
        for rate in RATES if not quick else RATES[:2]:
            held = _window_bytes(rate, sources)
            base = base or held
            rows.append(figure("window memory, %d source%s, %d calls/s" % (
                sources, "s" if sources > 1 else "", rate), held, "B",
                "same window at 10 calls/s", base, target="<= %d B" % TARGET_BYTES,
                met=held <= TARGET_BYTES))
    base = None
    for rate in (10, 100) if quick else RATES:
        held = _micropython_bytes(rate)
        if held is None:
            continue
        base = base or held
        rows.append(figure("MicroPython heap, %d sources, %d calls/s" % (MAX_SOURCES, rate),
                           held, "B", "same at 10 calls/s", base,
                           target="<= %d B" % TARGET_BYTES, met=held <= TARGET_BYTES))
    number = 20000 if quick else 200000
    w = HealthWindow(window_ms=WINDOW_MS)
    for _ in range(5000):
        w.record_outcome(True, 5.0, 1000, "app")
    env = {"w": w, "n": 0}
    counter = _ns("n += 1", env, number, setup="n = 0")
    sample = _ns("w.record_outcome(True, 12.5, 1000, 'app')", env, number)
    rows.append(figure("one sample: window.record_outcome", sample, "ns", "n += 1", counter))

    with tempfile.TemporaryDirectory() as d:
        c = MigrationControl.open(d, FileSystem(), ManualClock())
        env = {"c": c, "n": 0}
        via_control = _ns("c.record_outcome(True, 12.5, source='app')", env, number // 4)
        rows.append(figure("one sample: control.record_outcome", via_control, "ns", "n += 1",
                           counter))
        c.close()
    env = {"w": w}
    snap = _ns("w.snapshot(1000)", env, 200 if quick else 2000)
    rows.append(figure("snapshot (1 source, reservoirs full)", snap, "ns", "n += 1", counter))
    return rows
