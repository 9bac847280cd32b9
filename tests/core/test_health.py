"""agent.health: windows, figures, each threshold, stage criteria and the minimum sample count."""
from agent.config import DEFAULT_THRESHOLDS
from agent.health import HealthWindow, evaluate, make_baseline, percentile, performance_impact

T = DEFAULT_THRESHOLDS


def _window(ok, bad, latency=10, now=0, w=None):
    w = w or HealthWindow(window_ms=60000, restart_window_ms=60000)
    for _ in range(ok):
        w.record_outcome(True, latency, now)
    for _ in range(bad):
        w.record_outcome(False, latency, now)
    return w


def _metrics(verdict):
    return sorted(v["metric"] for v in verdict["violations"])


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.95) == 95
    assert percentile([7], 0.95) == 7
    assert percentile([], 0.5) is None


def test_snapshot_figures():
    w = HealthWindow(window_ms=60000, restart_window_ms=60000)
    for i in range(1, 21):
        w.record_outcome(i % 4 != 0, i, 1000)
    w.record_restart(1000, "spans")
    w.record_restart(2000, "registry")
    s = w.snapshot(2000)
    assert s["samples"] == 20 and s["errors"] == 5 and s["error_rate"] == 0.25
    assert s["latency_p50"] == 10 and s["latency_p95"] == 19
    assert s["restarts"] == 2 and s["restarts_per_min"] == 2.0


def test_window_slides():
    w = HealthWindow(window_ms=10000, restart_window_ms=60000)
    w.record_outcome(False, 5, 0)
    w.record_outcome(True, 5, 9000)
    assert w.snapshot(9999)["samples"] == 2
    assert w.snapshot(10001)["samples"] == 1
    assert w.snapshot(10001)["errors"] == 0
    w.record_restart(0)
    assert w.snapshot(59999)["restarts"] == 1
    assert w.snapshot(60001)["restarts"] == 0


def test_window_memory_is_bounded():
    w = HealthWindow(window_ms=10 ** 9, max_samples=100)
    for i in range(1000):
        w.record_outcome(True, 1, i)
    assert w.snapshot(1000)["samples"] <= 100


def test_error_rate_threshold_is_strictly_above_five_percent():
    exactly = evaluate(_window(95, 5).snapshot(0), T)
    assert exactly["healthy"], exactly
    above = evaluate(_window(94, 6).snapshot(0), T)
    assert _metrics(above) == ["error_rate"]
    v = above["violations"][0]
    assert v["limit"] == 0.05 and v["value"] == 0.06 and "error rate" in v["message"]


def test_min_sample_count_keeps_one_bad_call_from_triggering():
    few = evaluate(_window(1, 1).snapshot(0), T)
    assert few["healthy"] and not few["enough_samples"]
    enough = evaluate(_window(T["min_samples"] - 2, 2).snapshot(0), T)
    assert enough["enough_samples"] and _metrics(enough) == ["error_rate"]
    custom = dict(T)
    custom["min_samples"] = 2
    assert _metrics(evaluate(_window(1, 1).snapshot(0), custom)) == ["error_rate"]


def test_restart_threshold_applies_at_any_traffic():
    w = HealthWindow(restart_window_ms=60000)
    for i in range(10):
        w.record_restart(i * 1000, "spans")
    assert evaluate(w.snapshot(10000), T)["healthy"]  # 10/min is not above 10/min
    w.record_restart(10500, "spans")
    verdict = evaluate(w.snapshot(11000), T)
    assert _metrics(verdict) == ["restart_frequency"]
    assert not verdict["enough_samples"]


def test_latency_threshold_against_baseline():
    base = make_baseline(_window(30, 0, latency=10).snapshot(0), 2, T["min_samples"])
    assert base == {"stage": 2, "latency_p50": 10, "latency_p95": 10, "samples": 30}
    assert evaluate(_window(30, 0, latency=20).snapshot(0), T, base)["healthy"]  # 2x: not above
    slow = evaluate(_window(30, 0, latency=21).snapshot(0), T, base)
    assert _metrics(slow) == ["latency"]
    assert evaluate(_window(30, 0, latency=50).snapshot(0), T, None)["healthy"]  # no baseline
    assert make_baseline(_window(3, 0).snapshot(0), 0, T["min_samples"]) is None


def test_stage_success_criteria_add_performance_impact_and_may_tighten():
    base = make_baseline(_window(30, 0, latency=100).snapshot(0), 2, T["min_samples"])
    s = _window(30, 0, latency=111).snapshot(0)
    assert abs(performance_impact(s, base) - 0.11) < 1e-9
    assert evaluate(s, T, base)["healthy"]
    stage3 = {"max_performance_impact": 0.10}
    assert _metrics(evaluate(s, T, base, stage3)) == ["performance_impact"]
    assert evaluate(_window(30, 0, latency=110).snapshot(0), T, base, stage3)["healthy"]
    strict = {"max_error_rate": 0.01}
    assert _metrics(evaluate(_window(98, 2).snapshot(0), T, None, strict)) == ["error_rate"]
    loose = {"max_error_rate": 0.5}  # a stage can't loosen the environment's limit
    assert _metrics(evaluate(_window(90, 10).snapshot(0), T, None, loose)) == ["error_rate"]


def test_thresholds_are_configurable():
    custom = dict(T)
    custom.update(max_error_rate=0.2, max_restarts_per_min=1, max_latency_ratio=5.0)
    assert evaluate(_window(85, 15).snapshot(0), custom)["healthy"]
    w = HealthWindow()
    w.record_restart(0)
    w.record_restart(1)
    assert _metrics(evaluate(w.snapshot(2), custom)) == ["restart_frequency"]


def test_several_violations_are_all_reported():
    base = make_baseline(_window(30, 0, latency=10).snapshot(0), 1, T["min_samples"])
    w = _window(20, 10, latency=40)
    for _ in range(11):
        w.record_restart(0)
    verdict = evaluate(w.snapshot(0), T, base, {"max_performance_impact": 0.1})
    assert _metrics(verdict) == ["error_rate", "latency", "performance_impact",
                                 "restart_frequency"]


def test_window_expiry_keeps_errors_and_latencies_aligned():
    w = HealthWindow(window_ms=1000, max_samples=50)
    # old, bad and slow; then new, good and fast, some without a latency
    for i in range(30):
        w.record_outcome(False, 500, i)
    for i in range(40):
        w.record_outcome(True, None if i % 2 else 10, 2000 + i)
    s = w.snapshot(2100)
    assert s["samples"] == 40 and s["errors"] == 0
    assert s["latency_p50"] == 10 and s["latency_p95"] == 10
    # the sample cap drops the oldest outcomes together with their own latencies only
    w2 = HealthWindow(window_ms=10 ** 9, max_samples=10)
    for i in range(10):
        w2.record_outcome(False, None, i)  # errors that carried no latency
    w2.record_outcome(True, 5, 10)  # 11 > 10: the two oldest go
    s2 = w2.snapshot(10)
    assert (s2["samples"], s2["errors"], s2["latency_p50"]) == (9, 8, 5)
    w2.record_outcome(True, 7, 11)
    w2.record_outcome(True, 9, 12)  # 11 again: two more errors go
    s2 = w2.snapshot(12)
    assert (s2["samples"], s2["errors"]) == (9, 6)
    assert (s2["latency_p50"], s2["latency_p95"]) == (7, 9)
