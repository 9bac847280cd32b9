"""agent.health: windows, figures, each threshold, stage criteria and the minimum sample count.

Issue 8 changed three rules, and the tests below say where: the window is time
buckets (memory bounded by buckets, not by dropping outcomes), the error-rate
rule uses the Wilson lower bound, and too few samples is "inconclusive"."""
from agent.config import DEFAULT_THRESHOLDS
from agent.health import (
    INCONCLUSIVE,
    MIN_ERRORS,
    HealthWindow,
    evaluate,
    make_baseline,
    percentile,
    performance_impact,
    wilson_lower,
)

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
    # max_samples 200: 20 latencies a bucket, so these 20 are kept exactly (issue 8:
    # above the reservoir's size the percentiles are estimates)
    w = HealthWindow(window_ms=60000, restart_window_ms=60000, max_samples=200)
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
    # Issue 8: every outcome counts (1000), while the latencies kept stay <= max_samples.
    w = HealthWindow(window_ms=10 ** 9, max_samples=100)
    for i in range(1000):
        w.record_outcome(True, i % 7, i)
    assert w.snapshot(1000)["samples"] == 1000
    src = w._sources["app"]
    assert len(src.lat) <= 100 and sum(src.seen) == 1000


def test_error_rate_threshold_is_strictly_above_five_percent():
    exactly = evaluate(_window(95, 5).snapshot(0), T)
    assert exactly["healthy"], exactly
    # Issue 8: the Wilson lower bound must be above 5%: 6% of 100 calls is noise,
    # 6% of 10,000 is not.
    assert evaluate(_window(94, 6).snapshot(0), T)["healthy"]
    above = evaluate(_window(9400, 600).snapshot(0), T)
    assert _metrics(above) == ["error_rate"]
    v = above["violations"][0]
    assert v["limit"] == 0.05 and v["value"] == 0.06 and "error rate" in v["message"]
    assert 0.05 < v["lower_bound"] < 0.06 and v["source"] == "app"


def test_min_sample_count_keeps_one_bad_call_from_triggering():
    few = evaluate(_window(1, 1).snapshot(0), T)
    # Issue 8: too few samples is "inconclusive" (it was "healthy"), with no violation.
    assert few["verdict"] == INCONCLUSIVE and not few["healthy"] and not few["violations"]
    assert not few["enough_samples"] and "app 2/20" in few["reason"]
    enough = evaluate(_window(T["min_samples"] - 8, 8).snapshot(0), T)
    assert enough["enough_samples"] and _metrics(enough) == ["error_rate"]
    # Two errors in the first 20 calls: the lower bound (2.8%) is not above 5%.
    two = evaluate(_window(T["min_samples"] - 2, 2).snapshot(0), T)
    assert two["healthy"] and two["enough_samples"]
    custom = dict(T)
    custom["min_samples"] = 2
    custom["min_errors"] = 2
    assert _metrics(evaluate(_window(0, 2).snapshot(0), custom)) == ["error_rate"]
    custom["min_errors"] = 3  # 2 failed calls of 2: too few failures to count
    assert evaluate(_window(0, 2).snapshot(0), custom)["healthy"]


def test_min_errors_keeps_early_noise_from_rolling_back():
    # Issue 10: 3 failed calls of 20 clear the Wilson bound (5.2% > 5%); a healthy
    # device with a 0.5% rate sees that in the first minutes after a stage change
    # about once in 10^4 checks, and a fleet of 10^5 runs ~167 checks each. Fewer
    # than min_errors (8) failed calls in the window never count as an error rate.
    assert wilson_lower(3, 20) > 0.05
    three = evaluate(_window(17, 3).snapshot(0), T)
    assert three["healthy"] and not three["violations"]
    seven = evaluate(_window(13, 7).snapshot(0), T)   # 35%, lower bound 18%: 7 calls
    assert seven["healthy"]
    eight = evaluate(_window(12, 8).snapshot(0), T)   # the eighth failure counts
    assert _metrics(eight) == ["error_rate"]
    assert eight["violations"][0]["value"] == 0.4
    # The count is no obstacle where the rate is the evidence: 14 of 200 (7%, lower
    # bound 4.2%) is not enough, 30 of 200 (15%) is.
    assert evaluate(_window(186, 14).snapshot(0), T)["healthy"]
    assert _metrics(evaluate(_window(170, 30).snapshot(0), T)) == ["error_rate"]
    # A config may lower it; the default is health.MIN_ERRORS when a caller's
    # thresholds leave it out.
    old = {k: T[k] for k in T if k != "min_errors"}
    assert evaluate(_window(13, 7).snapshot(0), old)["healthy"]
    assert T["min_errors"] == MIN_ERRORS == 8


def test_restart_threshold_applies_at_any_traffic():
    w = HealthWindow(restart_window_ms=60000)
    for i in range(10):
        w.record_restart(i * 1000, "spans")
    # 10/min is not above 10/min (no traffic: inconclusive, not "healthy", since issue 8)
    assert evaluate(w.snapshot(10000), T)["verdict"] == INCONCLUSIVE
    w.record_restart(10500, "spans")
    verdict = evaluate(w.snapshot(11000), T)
    assert _metrics(verdict) == ["restart_frequency"]
    assert not verdict["enough_samples"]


def test_latency_threshold_against_baseline():
    base = make_baseline(_window(30, 0, latency=10).snapshot(0), 2, T["min_samples"])
    assert base == {"stage": 2, "latency_p50": 10, "latency_p95": 10, "samples": 30,
                    # issue 8: each source also gets its own baseline
                    "sources": {"app": {"latency_p50": 10, "latency_p95": 10, "samples": 30}}}
    assert evaluate(_window(30, 0, latency=20).snapshot(0), T, base)["healthy"]  # 2x: not above
    slow = evaluate(_window(30, 0, latency=21).snapshot(0), T, base)
    assert _metrics(slow) == ["latency"]
    assert slow["violations"][0]["source"] == "app" and "baseline 10 ms" in \
        slow["violations"][0]["message"]
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
    strict = {"max_error_rate": 0.01}  # Wilson (issue 8): 4% of 300, not 2% of 100
    assert _metrics(evaluate(_window(288, 12).snapshot(0), T, None, strict)) == ["error_rate"]
    loose = {"max_error_rate": 0.5}  # a stage can't loosen the environment's limit
    assert _metrics(evaluate(_window(80, 20).snapshot(0), T, None, loose)) == ["error_rate"]


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
    # outcomes without a latency take no latency slot (issue 8: nothing is dropped
    # by a sample cap any more; the buckets bound the memory)
    w2 = HealthWindow(window_ms=10 ** 9, max_samples=100)
    for i in range(10):
        w2.record_outcome(False, None, i)  # errors that carried no latency
    w2.record_outcome(True, 5, 10)
    s2 = w2.snapshot(10)
    assert (s2["samples"], s2["errors"], s2["latency_p50"]) == (11, 10, 5)
    w2.record_outcome(True, 7, 11)
    w2.record_outcome(True, 9, 12)
    s2 = w2.snapshot(12)
    assert (s2["samples"], s2["errors"]) == (13, 10)
    assert (s2["latency_p50"], s2["latency_p95"]) == (7, 9)


# -- issue 8: buckets, sources, grace, Wilson, inconclusive --------------------

def _stored(w):
    """Every slot the window holds: fixed arrays, whatever the traffic."""
    return sum(len(s.lat) + len(s.calls) + len(s.errors) + len(s.seen) + len(s.epoch)
               for s in w._sources.values())


def test_memory_is_the_same_at_any_call_rate():
    sizes = []
    for per_second in (10, 100, 1000):
        w = HealthWindow(window_ms=300000)
        step = 1000 // per_second
        for t in range(0, 300000, step):
            w.record_outcome(t % 50 != 0, 10 + t % 13, t)
        s = w.snapshot(299999)
        assert s["samples"] == 300000 // step
        sizes.append(_stored(w))
    assert sizes[0] == sizes[1] == sizes[2]


def test_sketch_percentiles_at_high_rate_are_close():
    w = HealthWindow(window_ms=60000)
    for t in range(60000):  # 1000 calls/s for a minute, latency uniform 1..100
        w.record_outcome(True, 1 + (t * 37) % 100, t)
    s = w.snapshot(59999)
    assert 40 <= s["latency_p50"] <= 60 and 88 <= s["latency_p95"] <= 100


def test_buckets_slide_out_with_time():
    w = HealthWindow(window_ms=10000)
    for t in range(0, 20000, 10):
        w.record_outcome(t < 10000, 5, t)  # errors only in the second half
    s = w.snapshot(19999)
    assert s["samples"] == 1000 and s["errors"] == 1000
    assert w.snapshot(40000)["samples"] == 0


def test_every_outcome_keeps_its_source_and_violations_name_it():
    w = HealthWindow(window_ms=60000)
    for i in range(100):
        w.record_outcome(True, 10, i, source="http")
        w.record_outcome(i % 3 != 0, 10, i, source="statsd")
    s = w.snapshot(100)
    assert sorted(s["sources"]) == ["http", "statsd"]
    assert s["sources"]["http"]["errors"] == 0 and s["sources"]["statsd"]["errors"] == 34
    verdict = evaluate(s, T)
    assert [(v["source"], v["metric"]) for v in verdict["violations"]] == [("statsd", "error_rate")]
    assert "(source statsd)" in verdict["violations"][0]["message"]


def test_latency_is_judged_against_the_same_source_before_the_stage():
    w = HealthWindow(window_ms=60000)
    for i in range(30):
        w.record_outcome(True, 10, i, source="app")
        w.record_outcome(True, 100, i, source="probe")
    base = make_baseline(w.snapshot(30), 1, T["min_samples"])
    w.reset(31)
    for i in range(30):
        w.record_outcome(True, 25, 40 + i, source="app")   # 2.5x its own baseline
        w.record_outcome(True, 150, 40 + i, source="probe")  # 1.5x
    verdict = evaluate(w.snapshot(80), T, base)
    assert [(v["source"], v["metric"]) for v in verdict["violations"]] == [("app", "latency")]


def test_sources_are_capped_and_later_ones_count_as_other():
    w = HealthWindow()
    for i in range(20):
        w.record_outcome(True, 1, 0, source="s%d" % i)
    names = w.sources()
    assert len(names) <= 5 and "other" in names
    assert w.snapshot(0)["samples"] == 20


def test_grace_period_ignores_a_source_after_start_and_after_each_reset():
    w = HealthWindow()
    w.set_grace("probe", 5000, 0)
    w.record_outcome(False, 1, 4999, source="probe")
    s = w.snapshot(4999)
    assert s["sources"]["probe"]["samples"] == 0 and s["sources"]["probe"]["in_grace"]
    assert s["sources"]["probe"]["ignored_in_grace"] == 1
    assert "(grace)" in evaluate(s, T)["reason"]
    w.record_outcome(False, 1, 5000, source="probe")
    assert w.snapshot(5000)["sources"]["probe"]["samples"] == 1
    w.reset(10000)  # a stage change: the grace starts again
    w.record_outcome(False, 1, 12000, source="probe")
    assert w.snapshot(12000)["sources"]["probe"]["samples"] == 0


def test_wilson_lower_bound():
    assert wilson_lower(0, 0) == 0.0 and wilson_lower(0, 100) == 0.0
    assert 0.027 < wilson_lower(2, 20) < 0.029   # two early errors: not above 5%
    assert 0.21 < wilson_lower(30, 100) < 0.22
    # a device with a true 0.5% rate needs 3 errors in its first 20 calls (a
    # chance of 1 in 2,400) before the bound passes 5%
    assert wilson_lower(2, 20) < 0.05 < wilson_lower(3, 20)


def test_no_traffic_is_inconclusive_not_healthy():
    verdict = evaluate(HealthWindow().snapshot(0), T)
    assert verdict["verdict"] == INCONCLUSIVE and verdict["reason"].startswith("no samples")


def test_record_outcomes_adds_a_scrape_in_one_step():
    w = HealthWindow(window_ms=60000)
    w.record_outcomes(1000, 300, 12.5, 0, source="prom")
    w.record_outcomes(0, 0, None, 1, source="prom")  # nothing happened: nothing recorded
    s = w.snapshot(10)["sources"]["prom"]
    assert (s["samples"], s["errors"], s["latency_p50"]) == (1000, 300, 12.5)
    assert _metrics(evaluate(w.snapshot(10), T)) == ["error_rate"]


def test_outcomes_recorded_together_count_as_each_one():
    # the simulator records an app's calls since its last wake in one call
    one, many = HealthWindow(), HealthWindow()
    lat = [10 + i for i in range(30)]
    for i, x in enumerate(lat):
        one.record_outcome(i % 10 != 0, x, 45000)
    many.record_calls(30, 3, lat, 45000)
    a, b = one.snapshot(60000), many.snapshot(60000)
    assert (a["samples"], a["errors"]) == (b["samples"], b["errors"]) == (30, 3)
    assert (a["latency_p50"], a["latency_p95"]) == (b["latency_p50"], b["latency_p95"])
    many.set_grace("app", 10000, 70000)
    many.record_calls(5, 1, [1, 2, 3, 4, 5], 75000)  # inside the grace period
    assert many.snapshot(76000)["sources"]["app"]["ignored_in_grace"] == 5
    assert many.snapshot(76000)["samples"] == 30


def _by_hand(w, now, source="app"):
    """p50/p95 of the window's kept latencies, gathered slot by slot (every latency
    stands for one call: fewer calls a bucket than its reservoir holds)."""
    src = w._sources[source]
    values = []
    for slot in w._live_slots(src, now):
        base = slot * src.per
        values.extend(src.lat[base:base + src.seen[slot]])
    values.sort()
    return round(percentile(values, 0.50), 3), round(percentile(values, 0.95), 3)


def test_one_sort_of_the_reservoirs_gives_the_gathered_percentiles():
    # The snapshot sorts a source's whole reservoir array at once; the places that
    # hold no latency (never used, or emptied when a bucket was reused) sort first.
    w = HealthWindow()  # 10 buckets of 30 s, 16 latencies each
    for k in range(25):  # the buckets are reused twice over
        now = 30000 * k + 1000
        w.record_calls(9 + k % 7, 0, [100 - 3 * k + i * 0.5 for i in range(9 + k % 7)], now)
        snap = w.snapshot(now)
        assert (snap["latency_p50"], snap["latency_p95"]) == _by_hand(w, now)
    # a bucket that slid out but was not reused is left out, and only fresh buckets count
    later = now + 200000
    w.record_calls(3, 0, [1.0, 2.0, 3.0], later)
    snap = w.snapshot(later)
    # (bucket k starts at 30000 k: the window keeps the buckets starting after later - 300 s)
    assert snap["samples"] == 3 + sum(9 + k % 7 for k in range(25) if 30000 * k >= later - 300000)
    assert snap["samples"] < 3 + sum(9 + k % 7 for k in range(15, 25))
    assert (snap["latency_p50"], snap["latency_p95"]) == _by_hand(w, later)
    w.reset_outcomes()
    assert w.snapshot(later)["latency_p50"] is None
    w.record_calls(2, 0, [7.0, 5.0], later)
    assert (w.snapshot(later)["latency_p50"], w.snapshot(later)["latency_p95"]) == (5.0, 7.0)


class _Lcg:
    """A seeded source that runs on both interpreters (MicroPython has no random.Random)."""

    def __init__(self, seed):
        self.x = seed

    def random(self):
        self.x = (self.x * 1103515245 + 12345) % 2147483648
        return self.x / 2147483648

    def choice(self, items):
        return items[int(self.random() * len(items))]


def test_a_quick_snapshot_gets_the_whole_snapshots_verdict_or_none():
    # The agent's periodic check takes snapshot(now, latency=False) (no sort): evaluate
    # tries the latency rules on each source's largest latency (its p95 there), and
    # gives the verdict the whole snapshot gets, or None when a rule could fire under
    # that bound.
    rnd = _Lcg(11)
    bounded = judged = 0
    for case in range(400):
        w = HealthWindow(window_ms=60000, max_samples=40)
        now = 0
        mean = rnd.choice((10.0, 50.0, 200.0))
        for _ in range(int(rnd.random() * 120)):
            now += rnd.choice((0, 100, 900, 7000))
            source = rnd.choice(("app", "app", "probe", "statsd"))
            lat = mean * (0.5 + rnd.random() * rnd.choice((1.0, 1.2, 3.0)))
            if rnd.random() < 0.03:
                lat = rnd.choice((float("nan"), float("inf"), 0.0, None))
            if rnd.random() < 0.5:
                w.record_outcome(rnd.random() > 0.08, lat, now, source)
            elif lat is not None:
                w.record_calls(3, int(rnd.random() * 1.3), [lat, lat * 0.9, lat * 1.1], now,
                               source)
        base_at = rnd.choice((0.0, -1.0, mean * 0.6, mean, mean * 1.5, None))
        baseline = None
        if base_at is not None:
            sources = {n: {"latency_p50": base_at, "latency_p95": base_at, "samples": 30}
                       for n in ("app", "probe", "statsd") if rnd.random() < 0.8}
            baseline = {"stage": 1, "latency_p50": base_at, "latency_p95": base_at,
                        "samples": 30, "sources": sources}
        criteria = rnd.choice((None, {}, {"max_performance_impact": 0.1},
                               {"max_latency_ratio": 1.2}))
        quick = w.snapshot(now, latency=False)
        full = w.snapshot(now)
        for name in full["sources"]:
            top = quick["sources"][name]["latency_p95"]  # the bound: the largest latency
            assert quick["sources"][name]["latency_p50"] is None
            p50 = full["sources"][name]["latency_p50"]
            assert (top is None) == (p50 is None)
            if p50 is not None and p50 == p50 and top == top:
                assert p50 <= round(top, 3)
        want = evaluate(full, T, baseline, criteria)
        if want["violations"]:
            judged += 1
        if baseline is None:  # no baseline: no latency figure needed at all
            assert evaluate(w.snapshot(now, None), T, None, criteria) == want
        got = evaluate(quick, T, baseline, criteria)
        if got is not None:
            bounded += 1
            assert got == want, case
    assert bounded > 100 and judged > 20  # both kinds of case were met


def test_a_reused_slot_forgets_its_old_largest_latency():
    # Each slot keeps the largest latency it took since its reuse (the quick check's
    # bound): once the window has slid past a slow call, the bound is the new calls'.
    w = HealthWindow(window_ms=60000, max_samples=40)
    w.record_outcome(True, 900.0, 0, "app")
    for i in range(30):
        w.record_outcome(True, 10.0 + i % 3, 120000 + i * 100, "app")
    quick = w.snapshot(123000, latency=False)["sources"]["app"]
    assert quick["latency_p95"] == 12.0
    assert w.snapshot(123000)["sources"]["app"]["latency_p95"] <= 12.0
