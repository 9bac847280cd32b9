"""Sampled events with deduplication (stage 3, flag use_ets_sampled_events), and the
telemetry emitter they feed (stage 3, flag use_genserver_telemetry).

Owns, for sampled events: the dedup table (key -> when its window opened and
how many duplicates it swallowed), one sampling accumulator per event name,
the sampling rates, the window length and the counters. For the emitter: the
bounded buffer of events waiting for the runtime to `drain()` them towards the
broker. LEGACY keeps each in the hidden global state, NEW in the service
object (the counterparts of an ETS table and the telemetry GenServer).

Rules, in order, for `emit_event(name, measurements, metadata, now_ms)`:
1. Dedup: the key is the name plus the metadata (or an explicit `key`). The
   first event of a key opens a window of `window_ms`; the same key again
   inside the window is a DUPLICATE, counted once into that window and not
   emitted. The first event after the window closes opens a new one and
   carries the previous window's duplicate count (`duplicates`).
2. Sampling: a unique event is emitted at the name's rate, deterministically:
   an integer accumulator per name lets through the first event and then one
   in every 1/rate (rate 0.25: the 1st, 5th, 9th, ...). No randomness, so a
   test or a simulated fleet repeats exactly.
Time comes in as `now_ms` (the caller's clock), or from the clock handed in.

Must never: keep more than MAX_KEYS dedup keys or MAX_BUFFER buffered events
(the oldest go first, counted), or lose either table in a switch.
"""
from agent.services.base import EventError, LegacyHolder, OwnedHolder, ServiceFront, copy_dict

NAME = "sampled_events"
TELEMETRY = "telemetry"
EMITTED = "emitted"
DUPLICATE = "duplicate"
SAMPLED_OUT = "sampled_out"
SCALE = 10000  # sampling rates kept as integer parts per SCALE: no float drift
DEFAULT_WINDOW_MS = 5000
MAX_KEYS = 512
MAX_BUFFER = 256
SAMPLER_METHODS = ("admit", "set_rate", "set_default_rate", "set_window_ms", "status")
EMITTER_METHODS = ("emit", "drain", "pending", "status")


def _parts(rate):
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise EventError(f"sampling rate must be a number in [0, 1], got {rate!r}")
    return int(rate * SCALE + 0.5)


def dedup_key(name, metadata):
    """The dedup key of an event: its name and its metadata, independent of key order."""
    if not metadata:
        return name
    return name + "|" + ",".join(sorted(repr(k) + "=" + repr(v) for k, v in metadata.items()))


def _empty_sampler():
    return {"dedup": {}, "acc": {}, "rates": {}, "default_parts": SCALE,
            "window_ms": DEFAULT_WINDOW_MS, "unique": 0, "duplicates": 0,
            "sampled_out": 0, "emitted": 0, "evicted": 0}


def _copy_sampler(state):
    copied = dict(state)
    copied["dedup"] = {k: dict(v) for k, v in state["dedup"].items()}
    copied["acc"] = dict(state["acc"])
    copied["rates"] = dict(state["rates"])
    return copied


def _make_room(state, now_ms):
    """Drop expired dedup keys; if the table is still full, the one opened longest ago."""
    dedup = state["dedup"]
    window = state["window_ms"]
    for key in [k for k, v in dedup.items() if now_ms - v["first_ms"] >= window]:
        del dedup[key]
    if len(dedup) >= MAX_KEYS:
        oldest = min(dedup, key=lambda k: dedup[k]["first_ms"])
        del dedup[oldest]
        state["evicted"] += 1


class _SamplerLogic:
    """The dedup and sampling decision; subclasses say where its state lives (`_state`)."""

    def admit(self, name, metadata, now_ms, key=None):
        """Decide one event: (EMITTED | DUPLICATE | SAMPLED_OUT, duplicates of the last window)."""
        state = self._state("admit")
        if key is None:
            key = dedup_key(name, metadata)
        dedup = state["dedup"]
        entry = dedup.get(key)
        if entry is not None and now_ms - entry["first_ms"] < state["window_ms"]:
            entry["dups"] += 1
            state["duplicates"] += 1
            return DUPLICATE, 0
        carried = entry["dups"] if entry is not None else 0
        if entry is None and len(dedup) >= MAX_KEYS:
            _make_room(state, now_ms)
        dedup[key] = {"first_ms": now_ms, "dups": 0}
        state["unique"] += 1
        acc = state["acc"].get(name, SCALE)
        parts = state["rates"].get(name, state["default_parts"])
        verdict = SAMPLED_OUT
        if acc >= SCALE:
            acc -= SCALE
            verdict = EMITTED
        state["acc"][name] = acc + parts
        state[verdict] += 1
        return verdict, carried

    def set_rate(self, name, rate):
        """Sampling rate for one event name; None goes back to the default rate."""
        rates = self._state("set_rate")["rates"]
        if rate is None:
            rates.pop(name, None)
        else:
            rates[name] = _parts(rate)

    def set_default_rate(self, rate):
        self._state("set_default_rate")["default_parts"] = _parts(rate)

    def set_window_ms(self, window_ms):
        if isinstance(window_ms, bool) or not isinstance(window_ms, int) or window_ms < 0:
            raise EventError(f"dedup window must be an int >= 0 ms, got {window_ms!r}")
        self._state("set_window_ms")["window_ms"] = window_ms

    def status(self):
        state = self._state("status")
        result = {"impl": self.IMPL, "keys": len(state["dedup"]),
                  "window_ms": state["window_ms"]}
        for counter in ("unique", "duplicates", "sampled_out", "emitted", "evicted"):
            result[counter] = state[counter]
        return result


class LegacySampledEvents(LegacyHolder, _SamplerLogic):
    NAME = NAME
    _empty = staticmethod(_empty_sampler)
    _copy = staticmethod(_copy_sampler)


class NewSampledEvents(OwnedHolder, _SamplerLogic):
    NAME = NAME
    _empty = staticmethod(_empty_sampler)
    _copy = staticmethod(_copy_sampler)


class SampledEvents(ServiceFront):
    """The handle callers keep; `emit_event` runs the decision and feeds the emitter."""

    METHODS = SAMPLER_METHODS

    def __init__(self, name, impl, emitter, clock):
        super().__init__(name, impl)
        self._emitter = emitter
        self._clock = clock

    def emit_event(self, name, measurements, metadata=None, now_ms=None, key=None):
        """Offer one event; returns EMITTED, DUPLICATE or SAMPLED_OUT."""
        if not isinstance(name, str) or not name:
            raise EventError(f"event name must be a non-empty str, got {name!r}")
        measurements = copy_dict(measurements, "measurements", EventError)
        metadata = copy_dict(metadata, "metadata", EventError)
        if now_ms is None:
            now_ms = self._clock.monotonic_ms()
        verdict, carried = self.admit(name, metadata, now_ms, key)
        if verdict == EMITTED:
            self._emitter.emit(name, measurements, metadata, now_ms, carried)
        return verdict


def _empty_emitter():
    return {"buffer": [], "emitted": 0, "dropped": 0, "drained": 0}


def _copy_emitter(state):
    copied = dict(state)
    copied["buffer"] = [dict(event) for event in state["buffer"]]
    return copied


class _EmitterLogic:
    """The telemetry buffer; subclasses say where its state lives (`_state`)."""

    def emit(self, name, measurements, metadata=None, now_ms=0, duplicates=0):
        """Buffer one event as is (sampling is emit_event's job; this one sends everything)."""
        if not isinstance(name, str) or not isinstance(measurements, dict):
            raise EventError(f"telemetry needs a str name and a dict, got {name!r}")
        state = self._state("emit")
        buffer = state["buffer"]
        buffer.append({"name": name, "measurements": measurements,
                       "metadata": metadata or {}, "now_ms": now_ms,
                       "duplicates": duplicates})
        state["emitted"] += 1
        if len(buffer) > MAX_BUFFER:
            # the runtime fell behind: keep the newest, count what was dropped
            buffer.pop(0)
            state["dropped"] += 1

    def drain(self):
        """Take every buffered event, oldest first."""
        state = self._state("drain")
        events = state["buffer"]
        state["buffer"] = []
        state["drained"] += len(events)
        return events

    def pending(self):
        return len(self._state("pending")["buffer"])

    def status(self):
        state = self._state("status")
        return {"impl": self.IMPL, "pending": len(state["buffer"]), "emitted": state["emitted"],
                "dropped": state["dropped"], "drained": state["drained"]}


class LegacyTelemetry(LegacyHolder, _EmitterLogic):
    NAME = TELEMETRY
    _empty = staticmethod(_empty_emitter)
    _copy = staticmethod(_copy_emitter)


class NewTelemetry(OwnedHolder, _EmitterLogic):
    NAME = TELEMETRY
    _empty = staticmethod(_empty_emitter)
    _copy = staticmethod(_copy_emitter)


class Telemetry(ServiceFront):
    METHODS = EMITTER_METHODS
