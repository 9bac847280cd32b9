"""The status report's health figures: report_status() builds only what it sends,
and sends the same bytes as the figures taken from the whole health report.

Runs on CPython and MicroPython (no pytest imports)."""
import sys

from runtimekit import Device

from firmware_shim import codec

# What status_payload() used to keep of status()["system_health"], in this order.
OLD_KEYS = ("healthy", "verdict", "error_rate", "restart_frequency", "samples",
            "latency_p50", "latency_p95", "performance_impact")


def _old_summary(control):
    """The summary as status_payload() built it from the whole report (before)."""
    st = control.status()
    health = st["system_health"]
    summary = {}
    for key in OLD_KEYS:
        summary[key] = health.get(key)
    summary["violations"] = len(health.get("violations") or ())
    last = st.get("last_auto_rollback")
    if last is not None:
        summary["last_rollback"] = last
    return summary, st["quarantine"] is not None


def _same(d):
    old, old_q = _old_summary(d.control)
    new, new_q = d.control.report_status()
    assert sorted(new) == sorted(old), (sorted(new), sorted(old))
    for key in old:  # each figure's bytes (NaN != NaN)
        assert codec.packb(new[key]) == codec.packb(old[key]), (key, new, old)
    if sys.implementation.name == "cpython":  # a MicroPython dict keeps no insertion order
        assert list(new) == list(old), (list(new), list(old))
        assert codec.packb(new) == codec.packb(old), (new, old)
    assert new_q == old_q


def _calls(d, latencies, errors=0, source=None):
    h = d.control.health
    h.record_calls(len(latencies), errors, latencies, d.clock.monotonic_ms(), source)


def test_no_samples_and_no_baseline():
    with Device() as d:
        _same(d)
        d.command("migrate", {"stage": 1})  # too few samples at stage 0: no baseline
        _same(d)
        _calls(d, [1.0, 2.0, 3.0])
        _same(d)


def test_odd_latencies_with_and_without_a_baseline():
    odd = [0.0, 0.0, 5.0, float("inf"), 1.5, float("nan"), 2.25, 0.125]
    with Device() as d:
        for i in range(30):
            _calls(d, [1.0 + i % 7, 2.0, 0.5])
            d.clock.advance(1000)
        d.command("migrate", {"stage": 1})  # a baseline now
        _same(d)
        for lat in (odd, [0.0] * 40, [float("inf")] * 3, [float("nan")] * 25, odd * 5):
            _calls(d, lat, errors=1)
            _same(d)
            _calls(d, [3.0] * 20, source="probe")  # two sources: the weighted path
            _same(d)
            d.clock.advance(7000)
            _same(d)


def test_errors_rollback_and_restarts():
    with Device() as d:
        for _ in range(30):
            _calls(d, [1.0, 2.0])
            d.clock.advance(1000)
        d.command("migrate", {"stage": 1})
        d.control.health.record_restart(d.clock.monotonic_ms(), "svc")
        _calls(d, [40.0] * 30, errors=20)
        _same(d)
        d.control.check_health_and_rollback()  # rolls itself back: a last rollback
        assert "last_rollback" in d.control.report_status()[0]
        _same(d)
        _calls(d, [0.0] * 10)
        d.clock.advance(400000)  # the window slides past every sample
        _same(d)
