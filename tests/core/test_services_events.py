"""Sampled events with deduplication and the telemetry emitter (stage 3), both impls."""
import corekit
from test_services_kit import legacy_and_new_telemetry

from agent.services import DUPLICATE, EMITTED, SAMPLED_OUT, EventError
from agent.services import sampled_events as ev_mod

both = legacy_and_new_telemetry


def test_same_key_inside_the_window_is_counted_once():
    for s, _clock, impl in both():
        se = s.sampled_events
        assert se.impl_name == impl and s.telemetry.impl_name == impl
        se.set_window_ms(1000)
        assert se.emit_event("link.down", {"n": 1}, {"peer": "a"}, now_ms=0) == EMITTED
        assert se.emit_event("link.down", {"n": 2}, {"peer": "a"}, now_ms=500) == DUPLICATE
        assert se.emit_event("link.down", {"n": 3}, {"peer": "a"}, now_ms=999) == DUPLICATE
        assert se.emit_event("link.down", {"n": 4}, {"peer": "b"}, now_ms=999) == EMITTED
        # the window has closed: the next one opens a new window and reports the swallowed two
        assert se.emit_event("link.down", {"n": 5}, {"peer": "a"}, now_ms=1000) == EMITTED
        out = s.telemetry.drain()
        assert [(e["measurements"]["n"], e["duplicates"]) for e in out] == [(1, 0), (4, 0), (5, 2)]
        assert out[0]["metadata"] == {"peer": "a"} and out[0]["now_ms"] == 0
        st = se.status()
        assert (st["unique"], st["duplicates"], st["emitted"]) == (3, 2, 3)


def test_dedup_key_ignores_metadata_order_and_honours_explicit_key():
    assert ev_mod.dedup_key("e", {"a": 1, "b": 2}) == ev_mod.dedup_key("e", {"b": 2, "a": 1})
    assert ev_mod.dedup_key("e", {"a": 1}) != ev_mod.dedup_key("e", {"a": 2})
    assert ev_mod.dedup_key("e", {}) != ev_mod.dedup_key("f", {})
    for s, _clock, _impl in both():
        se = s.sampled_events
        assert se.emit_event("e", {}, {"try": 1}, now_ms=0, key="same") == EMITTED
        assert se.emit_event("e", {}, {"try": 2}, now_ms=1, key="same") == DUPLICATE


def test_sampling_is_deterministic_at_the_set_rate():
    for s, _clock, _impl in both():
        se = s.sampled_events
        se.set_rate("tick", 0.25)
        verdicts = [se.emit_event("tick", {"i": i}, {"i": i}, now_ms=i) for i in range(12)]
        emitted = [i for i, v in enumerate(verdicts) if v == EMITTED]
        assert emitted == [0, 4, 8]
        assert verdicts.count(SAMPLED_OUT) == 9
        # other names keep the default rate (all)
        assert se.emit_event("other", {}, None, now_ms=0) == EMITTED
        assert se.emit_event("other", {}, {"x": 1}, now_ms=0) == EMITTED


def test_rate_one_tenth_has_no_float_drift_and_zero_drops_all():
    for s, _clock, _impl in both():
        se = s.sampled_events
        se.set_rate("r", 0.1)
        got = [se.emit_event("r", {}, {"i": i}, now_ms=0) for i in range(30)]
        assert [i for i, v in enumerate(got) if v == EMITTED] == [0, 10, 20]
        se.set_default_rate(0)
        assert se.emit_event("z", {}, None, now_ms=0) == EMITTED  # the first always passes
        assert se.emit_event("z", {}, {"n": 2}, now_ms=0) == SAMPLED_OUT
        assert se.emit_event("z", {}, {"n": 3}, now_ms=0) == SAMPLED_OUT
        se.set_rate("r", None)  # back to the default (0)
        assert se.status()["sampled_out"] == 27 + 2


def test_duplicates_do_not_consume_the_sample():
    for s, _clock, _impl in both():
        se = s.sampled_events
        se.set_rate("d", 0.5)
        assert se.emit_event("d", {}, {"k": 1}, now_ms=0) == EMITTED
        assert se.emit_event("d", {}, {"k": 1}, now_ms=1) == DUPLICATE
        assert se.emit_event("d", {}, {"k": 2}, now_ms=2) == SAMPLED_OUT
        assert se.emit_event("d", {}, {"k": 3}, now_ms=3) == EMITTED


def test_time_comes_from_the_clock_when_not_given():
    for s, clock, _impl in both():
        se = s.sampled_events
        se.set_window_ms(100)
        assert se.emit_event("c", {}) == EMITTED
        clock.advance(99)
        assert se.emit_event("c", {}) == DUPLICATE
        clock.advance(1)
        assert se.emit_event("c", {}) == EMITTED
        assert [e["now_ms"] for e in s.telemetry.drain()] == [1000, 1100]


def test_bad_input_is_a_named_error():
    for s, _clock, _impl in both():
        se = s.sampled_events
        corekit.raises(EventError, se.emit_event, "", {})
        corekit.raises(EventError, se.emit_event, None, {})
        corekit.raises(EventError, se.emit_event, "x", [1])
        corekit.raises(EventError, se.emit_event, "x", {}, "meta")
        for bad in (-0.1, 1.5, "half", True, None):
            corekit.raises(EventError, se.set_default_rate, bad)
        corekit.raises(EventError, se.set_rate, "x", 2)
        corekit.raises(EventError, se.set_window_ms, -1)
        corekit.raises(EventError, se.set_window_ms, 1.5)
        assert se.status()["unique"] == 0


def test_dedup_table_and_buffer_are_bounded():
    for s, _clock, _impl in both():
        se = s.sampled_events
        se.set_window_ms(10 ** 9)  # nothing expires: eviction must make room
        for i in range(ev_mod.MAX_KEYS + 5):
            assert se.emit_event("k", {}, {"i": i}, now_ms=i) == EMITTED
        st = se.status()
        assert st["keys"] == ev_mod.MAX_KEYS and st["evicted"] == 5
        # the oldest were evicted, so key 0 counts as new again; the newest is still a duplicate
        assert se.emit_event("k", {}, {"i": 0}, now_ms=10 ** 6) == EMITTED
        assert se.emit_event("k", {}, {"i": ev_mod.MAX_KEYS + 4}, now_ms=10 ** 6) == DUPLICATE
        tel = s.telemetry.status()
        assert tel["pending"] == ev_mod.MAX_BUFFER
        assert tel["dropped"] == ev_mod.MAX_KEYS + 6 - ev_mod.MAX_BUFFER
        events = s.telemetry.drain()
        assert events[-1]["metadata"] == {"i": 0}
        assert s.telemetry.pending() == 0


def test_expired_keys_are_pruned_before_evicting():
    for s, _clock, _impl in both():
        se = s.sampled_events
        se.set_window_ms(10)
        for i in range(ev_mod.MAX_KEYS):
            se.emit_event("p", {}, {"i": i}, now_ms=0)
        se.emit_event("p", {}, {"i": "late"}, now_ms=50)
        st = se.status()
        assert st["keys"] == 1 and st["evicted"] == 0


def test_telemetry_emitter_direct_use():
    for s, _clock, impl in both():
        tel = s.telemetry
        assert tel.impl_name == impl
        tel.emit("boot", {"ms": 12}, None, 5)
        corekit.raises(EventError, tel.emit, 7, {})
        corekit.raises(EventError, tel.emit, "x", "not a dict")
        assert tel.pending() == 1
        assert tel.drain() == [{"name": "boot", "measurements": {"ms": 12}, "metadata": {},
                                "now_ms": 5, "duplicates": 0}]
        assert tel.drain() == []
        assert tel.status()["drained"] == 1 and tel.status()["emitted"] == 1
