"""Health: sliding windows over outcomes and restarts, and the verdict on them.

Owns: the recent outcomes (ok/error, latency) and restarts, the figures drawn
from them (error rate, restarts per minute, latency p50/p95), and `evaluate`,
a pure function that compares figures with thresholds and returns violations.
Must never: read a clock (every call takes `now_ms`), touch the store, or
decide on a rollback; MigrationControl does that with the verdict.

A window with fewer than `min_samples` outcomes gives no error-rate or latency
verdict, so one bad call out of two cannot roll a quiet device back. Restarts
are judged at any traffic level: a crash loop is a crash loop.
"""


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = int(fraction * len(sorted_values) + 0.999999)
    if rank < 1:
        rank = 1
    if rank > len(sorted_values):
        rank = len(sorted_values)
    return sorted_values[rank - 1]


class HealthWindow:
    """Outcomes and restarts in time order, kept as parallel lists.

    snapshot() runs on every monitor tick and every health report, so it does
    no per-sample Python loop: the error count is kept running, expiry finds
    its cut by binary search, and the latencies are sorted by the builtin.
    """

    def __init__(self, window_ms=300000, restart_window_ms=60000, max_samples=2000):
        self.window_ms = window_ms
        self.restart_window_ms = restart_window_ms
        self.max_samples = max_samples
        self._times = []    # now_ms of each outcome, oldest first
        self._errors = []   # 1 for an error, 0 for ok, aligned with _times
        self._error_count = 0
        self._has_latency = []  # 1 when the outcome carried a latency, aligned with _times
        self._latencies = []  # the latencies, in the same order (no None in here)
        self._restarts = []  # (now_ms, name), oldest first

    def record_outcome(self, ok, latency_ms, now_ms):
        self._times.append(now_ms)
        bad = 0 if ok else 1
        self._errors.append(bad)
        self._error_count += bad
        if latency_ms is None:
            self._has_latency.append(0)
        else:
            self._has_latency.append(1)
            self._latencies.append(latency_ms)
        if len(self._times) > self.max_samples:
            # Drop a chunk at once, not one per call: cheaper on a board.
            self._drop_outcomes(len(self._times) - self.max_samples + self.max_samples // 10)

    def _drop_outcomes(self, n):
        if n <= 0:
            return
        self._error_count -= sum(self._errors[:n])
        k = sum(self._has_latency[:n])
        del self._times[:n]
        del self._errors[:n]
        del self._has_latency[:n]
        del self._latencies[:k]

    def record_restart(self, now_ms, name=None):
        self._restarts.append((now_ms, name))
        self.prune(now_ms)

    def restarts(self):
        return list(self._restarts)

    def load_restarts(self, restarts):
        """Replace the restart window (e.g. with restarts persisted before a reboot)."""
        self._restarts = sorted(((t, n) for t, n in restarts), key=lambda e: e[0])

    def reset_outcomes(self):
        self._times = []
        self._errors = []
        self._error_count = 0
        self._has_latency = []
        self._latencies = []

    def reset(self):
        self.reset_outcomes()
        self._restarts = []

    def prune(self, now_ms):
        cutoff = now_ms - self.window_ms
        self._drop_outcomes(_first_at_or_after(self._times, cutoff))
        _drop_before(self._restarts, now_ms - self.restart_window_ms)

    def snapshot(self, now_ms):
        """The figures for the window ending at now_ms."""
        self.prune(now_ms)
        samples = len(self._times)
        errors = self._error_count
        latencies = sorted(self._latencies)
        restarts = len(self._restarts)
        minutes = self.restart_window_ms / 60000
        return {
            "samples": samples,
            "errors": errors,
            "error_rate": (errors / samples) if samples else 0.0,
            "restarts": restarts,
            "restarts_per_min": restarts / minutes,
            "latency_p50": percentile(latencies, 0.50),
            "latency_p95": percentile(latencies, 0.95),
        }


def _first_at_or_after(times, cutoff):
    """Index of the first entry >= cutoff in an ascending list (MicroPython has no bisect)."""
    lo, hi = 0, len(times)
    while lo < hi:
        mid = (lo + hi) // 2
        if times[mid] < cutoff:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _drop_before(entries, cutoff):
    i = 0
    n = len(entries)
    while i < n and entries[i][0] < cutoff:
        i += 1
    if i:
        del entries[:i]


def make_baseline(snapshot, stage, min_samples):
    """A latency baseline from a snapshot, or None when it has too few samples."""
    if snapshot["samples"] < min_samples or snapshot["latency_p50"] is None:
        return None
    return {"stage": stage, "latency_p50": snapshot["latency_p50"],
            "latency_p95": snapshot["latency_p95"], "samples": snapshot["samples"]}


def performance_impact(snapshot, baseline):
    """(p50 now - p50 baseline) / p50 baseline, or None without both figures."""
    if baseline is None or snapshot.get("latency_p50") is None:
        return None
    base = baseline.get("latency_p50")
    if not base:
        return None
    return (snapshot["latency_p50"] - base) / base


def latency_ratio(snapshot, baseline):
    impact = performance_impact(snapshot, baseline)
    return None if impact is None else impact + 1.0


def _violation(metric, value, limit, message):
    return {"metric": metric, "value": value, "limit": limit, "message": message}


def evaluate(snapshot, thresholds, baseline=None, criteria=None):
    """Compare figures with thresholds (and a stage's success criteria).

    Returns {"healthy": bool, "violations": [...], "enough_samples": bool}.
    Each violation is {"metric", "value", "limit", "message"}.
    """
    limits = dict(thresholds)
    stage_limits = criteria or {}
    for key in ("max_error_rate", "max_restarts_per_min", "max_latency_ratio"):
        if key in stage_limits:
            # A stage may only tighten the environment's thresholds.
            limits[key] = min(limits[key], stage_limits[key])
    violations = []
    rate = snapshot["restarts_per_min"]
    if rate > limits["max_restarts_per_min"]:
        violations.append(_violation(
            "restart_frequency", rate, limits["max_restarts_per_min"],
            "restart frequency {:.1f}/min > {}/min".format(rate, limits["max_restarts_per_min"])))
    enough = snapshot["samples"] >= limits["min_samples"]
    if enough:
        err = snapshot["error_rate"]
        if err > limits["max_error_rate"]:
            violations.append(_violation(
                "error_rate", err, limits["max_error_rate"],
                "error rate {:.1f}% > {:.1f}%".format(err * 100, limits["max_error_rate"] * 100)))
        ratio = latency_ratio(snapshot, baseline)
        if ratio is not None and ratio > limits["max_latency_ratio"]:
            violations.append(_violation(
                "latency", ratio, limits["max_latency_ratio"],
                "latency p50 {:.3g}x baseline > {}x".format(ratio, limits["max_latency_ratio"])))
        impact = performance_impact(snapshot, baseline)
        max_impact = stage_limits.get("max_performance_impact")
        if impact is not None and max_impact is not None and impact > max_impact:
            violations.append(_violation(
                "performance_impact", impact, max_impact,
                f"performance impact {impact * 100:.1f}% > {max_impact * 100:.1f}%"))
    return {"healthy": not violations, "violations": violations, "enough_samples": enough}
