"""The device itself: its clocks, its id, a reset, a watchdog and its memory.

Clocks: a monotonic millisecond counter and wall time (SystemClock). The core
never reads a clock itself; the runtime reads these and passes `now` in.
`ManualClock` is the clock handed to tests and to the virtual-time simulator.

On CPython (a Raspberry Pi gateway) the id comes from the config or the host
name, reset exits the process so systemd restarts it, and the watchdog is a
no-op (systemd's WatchdogSec can be added by the unit). On a MicroPython board
these map to machine.unique_id(), machine.reset() and machine.WDT.
memory() is what the device reports about its memory: the heap on a board,
the resident set on a Pi.
"""
import gc
import sys
import time
from binascii import hexlify

try:
    import machine as _machine  # MicroPython boards (not the unix port)
except ImportError:  # CPython and the MicroPython unix port have no `machine`
    _machine = None


def device_id(default=None):
    if default:
        return default
    if _machine is not None and hasattr(_machine, "unique_id"):
        return hexlify(_machine.unique_id()).decode()
    try:
        import socket

        return socket.gethostname()
    except (ImportError, AttributeError):
        return "device"


def reset():
    if _machine is not None and hasattr(_machine, "reset"):
        _machine.reset()
    sys.exit(3)


def watchdog(timeout_ms):
    """The board's machine.WDT armed for `timeout_ms` (feed() it), or None on a port
    without one (the unix port, CPython): nothing to feed there."""
    if _machine is not None and hasattr(_machine, "WDT"):
        return _machine.WDT(timeout=timeout_ms)
    return None


def memory():
    """{"heap_free", "heap_alloc"} (gc, bytes) on MicroPython; {"rss"} (bytes) on CPython.

    On a board the heap is collected first, so heap_alloc is what the agent holds
    (live objects), not the garbage since the last collection.
    """
    if hasattr(gc, "mem_free"):  # MicroPython: CPython's gc has no mem_free
        gc.collect()
        return {"heap_free": gc.mem_free(), "heap_alloc": gc.mem_alloc()}
    try:
        with open("/proc/self/statm") as f:  # Linux (Raspberry Pi OS): resident pages
            import os

            return {"rss": int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")}
    except (OSError, ValueError, IndexError, AttributeError):
        import resource  # no /proc (macOS): the peak, the best it offers

        return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ---------------------------------------------------------------- clocks

try:
    _ticks_ms = time.ticks_ms  # MicroPython: wraps at 2**30, so we widen it below
    _ticks_diff = time.ticks_diff
    _IS_TICKS = True
except AttributeError:  # CPython has no ticks_ms; monotonic_ns never wraps
    _IS_TICKS = False

_origin = None
_last = 0
_acc = 0


def monotonic_ms():
    """Milliseconds since an arbitrary origin; never goes backwards, never wraps."""
    global _origin, _last, _acc
    if not _IS_TICKS:
        return time.monotonic_ns() // 1000000
    now = _ticks_ms()
    if _origin is None:
        _origin = now
        _last = now
    _acc += _ticks_diff(now, _last)
    _last = now
    return _acc


def wall_time():
    """Seconds since the Unix epoch, as a float (MicroPython boards without RTC may be off)."""
    return time.time()


def sleep_ms(ms):
    try:
        time.sleep_ms(ms)  # MicroPython
    except AttributeError:  # CPython has only sleep(seconds)
        time.sleep(ms / 1000)


class ManualClock:
    """A clock that moves only when told to: for tests and virtual time."""

    def __init__(self, start_ms=0, wall_start=1700000000.0):
        self.now_ms = start_ms
        self.wall_start = wall_start

    def monotonic_ms(self):
        return self.now_ms

    def wall_time(self):
        return self.wall_start + self.now_ms / 1000

    def advance(self, ms):
        self.now_ms += ms
        return self.now_ms


class SystemClock:
    """The real clocks behind the same interface as ManualClock."""

    def monotonic_ms(self):
        return monotonic_ms()

    def wall_time(self):
        return wall_time()
