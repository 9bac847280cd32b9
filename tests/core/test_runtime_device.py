"""The device itself in the runtime: memory in status and health, the watchdog fed by the loop.

Runs on CPython and MicroPython (no pytest imports). The watchdog tests boot
a board through the composition root exactly as main.py does
(agent.boot.start with firmware_shim.board.Board.run_config); only two parts are stand-ins:
the link (an in-memory one whose poll can hang) and machine.WDT, which
neither CPython nor the unix port has. The stand-in resets the "board" when
its timeout passes without a feed, on the same ManualClock the agent runs on.
"""
import gc
import json
import os
import sys

from corekit import tmpdir
from runtimekit import FLEET_KEY, MemoryLink, device_key

from agent import boot
from agent import protocol as P
from agent.control import MigrationControl
from agent.runtime import AgentRuntime
from firmware_shim import board, machine
from firmware_shim.files import FileSystem, join
from firmware_shim.machine import ManualClock

DEV = "dev-1"
KEY = device_key(DEV)


class BoardReset(BaseException):
    """What machine.WDT does on timeout: nothing in the program can catch it as an error."""


class StandInWatchdog:
    def __init__(self, clock, timeout_ms):
        self.clock = clock
        self.timeout_ms = timeout_ms
        self.feeds = 0
        self.last = clock.monotonic_ms()

    def feed(self):
        self.feeds += 1
        self.last = self.clock.monotonic_ms()

    def check(self):
        if self.clock.monotonic_ms() - self.last > self.timeout_ms:
            raise BoardReset()


class PowerOff(BaseException):
    """The test's end of a healthy run: the loop would otherwise serve forever."""


class LoopLink(MemoryLink):
    """A link whose poll takes poll_ms of the clock; on turn `hang_at` it never returns."""

    def __init__(self, clock, hang_at=None, turns=300):
        MemoryLink.__init__(self, KEY)
        self.clock, self.hang_at, self.max_turns = clock, hang_at, turns
        self.turns = 0
        self.watchdog = None  # the board arms it once the agent is built

    def set_will(self, topic, payload, qos, retain):
        self.will = (topic, payload, qos, retain)

    def start(self):
        pass

    def close(self):
        pass

    def poll(self, timeout_ms):
        self.turns += 1
        if self.turns == self.hang_at:
            while True:  # hung: time passes, nobody feeds
                self.clock.advance(100)
                self.watchdog.check()
        self.clock.advance(timeout_ms)
        self.watchdog.check()
        if self.turns >= self.max_turns:
            raise PowerOff()


class StandInBoard(board.Board):
    """firmware_shim.board.Board with the in-memory link."""

    def __init__(self, link, clock):
        board.Board.__init__(self, boot.start, clock=clock, watchdog_ms=5000)
        self.link = link
        self.released = []

    def release_modules(self, names):
        # recorded, not done: the test runner keeps agent.boot (the release itself is
        # test_release_modules_forgets_a_package_module_and_frees_it)
        self.released.append(names)

    def open_link(self, cfg, key, refuse):
        return self.link


def _boot_board(hang_at=None):
    """Board.run_config on the stand-in board -> (link, watchdogs made, how it ended, board)."""
    d = tmpdir("wdt")
    with open(join(d, "device.key"), "wb") as f:
        f.write(P.format_key_file(P.derive_device_key(FLEET_KEY, DEV), "device", DEV))
    with open(join(d, "config.json"), "w") as f:
        f.write(json.dumps({"device_id": DEV, "fleet": "fl", "broker": "mqtt://127.0.0.1:1",
                            "key_file": join(d, "device.key"), "state_dir": join(d, "state"),
                            "environment": "dev"}))
    clock = ManualClock()
    link = LoopLink(clock, hang_at)
    made = []

    def watchdog(timeout_ms):
        made.append(StandInWatchdog(clock, timeout_ms))
        link.watchdog = made[-1]
        return made[-1]

    real, board.watchdog = board.watchdog, watchdog  # machine.WDT's stand-in
    stand_in = StandInBoard(link, clock)
    try:
        stand_in.run_config(join(d, "config.json"))
        ended = "returned"
    except BoardReset:
        ended = "reset"
    except PowerOff:
        ended = "power off"
    finally:
        board.watchdog = real
    return link, made, ended, stand_in


def test_the_board_loop_feeds_the_watchdog_every_turn():
    link, made, ended, stand_in = _boot_board()
    assert stand_in.released == [boot.BOOT_ONLY_MODULES] and stand_in.start is None
    assert ended == "power off" and link.turns == 300  # 300 turns, 30 s of clock: never reset
    assert len(made) == 1 and made[0].timeout_ms == 5000
    assert made[0].feeds == 300  # at start, then each of the 299 whole turns (300: power off)


def test_a_hung_loop_stops_feeding_the_watchdog_and_the_board_resets():
    link, made, ended, _ = _boot_board(hang_at=20)
    wdt = made[0]
    assert ended == "reset" and wdt.feeds == 20  # at start, then each of the 19 whole turns
    assert wdt.clock.monotonic_ms() - wdt.last > 5000  # nothing fed it while it hung


def test_release_modules_forgets_a_package_module_and_frees_it():
    d = tmpdir("release")
    os.mkdir(join(d, "relpkg"))
    with open(join(d, "relpkg", "__init__.py"), "w") as f:
        f.write("")
    with open(join(d, "relpkg", "big.py"), "w") as f:
        f.write("BLOCK = bytearray(40000)\n")
    sys.path.insert(0, d)
    try:
        import relpkg.big  # noqa: F401 - loaded to be released

        gc.collect()
        held = _heap_alloc()
        board.Board().release_modules(("relpkg.big",))
        gc.collect()
        assert "relpkg.big" not in sys.modules and not hasattr(sys.modules["relpkg"], "big")
        if held is not None:  # MicroPython: the module's 40 KB went back to the heap
            assert held - _heap_alloc() >= 39000
        import relpkg.big as again  # asked again: imported afresh

        assert len(again.BLOCK) == 40000
    finally:
        sys.path.remove(d)
        sys.modules.pop("relpkg.big", None)
        sys.modules.pop("relpkg", None)


def _heap_alloc():
    return gc.mem_alloc() if hasattr(gc, "mem_alloc") else None


def _runtime(link, clock, memory=None):
    control = MigrationControl.open(tmpdir("rtdev"), FileSystem(), clock)
    rt = AgentRuntime(control, link, "fl", DEV, ("g1",), key=P.derive_device_key(FLEET_KEY, DEV),
                      clock=clock, health_interval_ms=1000, memory=memory)
    rt.start()
    return rt, control


def test_status_and_health_carry_what_the_device_reports_about_its_memory():
    clock = ManualClock()
    link = MemoryLink(KEY)
    rt, control = _runtime(link, clock, memory=lambda: {"heap_free": 70000, "heap_alloc": 90000})
    rt.publish_status()
    rt.publish_health()
    assert link.leaf("status")[-1]["extra"]["memory"] == {"heap_free": 70000,
                                                           "heap_alloc": 90000}
    assert link.leaf("health")[-1]["metrics"]["memory"]["heap_alloc"] == 90000
    control.close()


def test_a_memory_report_that_fails_leaves_the_report_whole():
    def broken():
        raise OSError("no /proc")

    clock = ManualClock()
    link = MemoryLink(KEY)
    rt, control = _runtime(link, clock, memory=broken)
    rt.publish_status()
    status = link.leaf("status")[-1]
    assert status["extra"]["memory"] == {} and status["stage"] == 0
    control.close()


def test_the_platform_reports_heap_on_micropython_and_rss_on_cpython():
    report = machine.memory()
    if sys.implementation.name == "micropython":
        assert set(report) == {"heap_free", "heap_alloc"}
        assert report["heap_free"] > 0 and report["heap_alloc"] > 0
    else:
        assert set(report) == {"rss"} and report["rss"] > 1024 * 1024
