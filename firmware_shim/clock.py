"""Clocks: a monotonic millisecond counter and wall time.

The core never reads a clock itself; the runtime reads these and passes `now`
in. `ManualClock` is the clock handed to tests and to the virtual-time simulator.
"""
import time

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
