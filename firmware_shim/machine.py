"""The device itself: its id, a reset, and a watchdog.

On CPython (a Raspberry Pi gateway) the id comes from the config or the host
name, reset exits the process so systemd restarts it, and the watchdog is a
no-op (systemd's WatchdogSec can be added by the unit). On a MicroPython board
these map to machine.unique_id(), machine.reset() and machine.WDT.
memory() is what the device reports about its memory: the heap on a board,
the resident set on a Pi.
"""
import gc
import sys

try:
    import machine as _machine  # MicroPython boards (not the unix port)
except ImportError:  # CPython and the MicroPython unix port have no `machine`
    _machine = None


def device_id(default=None):
    if default:
        return default
    if _machine is not None and hasattr(_machine, "unique_id"):
        return "".join("%02x" % b for b in _machine.unique_id())
    try:
        import socket

        return socket.gethostname()
    except (ImportError, AttributeError):
        return "device"


def reset():
    if _machine is not None and hasattr(_machine, "reset"):
        _machine.reset()
    sys.exit(3)


class Watchdog:
    def __init__(self, timeout_ms):
        self._wdt = None
        if _machine is not None and hasattr(_machine, "WDT"):
            self._wdt = _machine.WDT(timeout=timeout_ms)

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()


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
