"""Health-rule noise: how often a healthy device rolls itself back by chance.

    python -m bench noise

A device judges its error rate at every health check (30 s) over a 5-minute
window of 10 buckets, and the window starts empty at every stage change. Take
the simulator's healthy traffic (sim.faults.Traffic: 0.5 calls/s, 0.5% of them
failing, so 15 calls a bucket) and its 4-stage run (`fleetstage sim --faults
none`: a device spends about 40 checks at each stage). The probability that
such a device trips the error-rate rule at least once in that run is computed
exactly, not sampled, from the agent's own `agent.health.evaluate` on every
(errors, calls) pair the window can hold:

- the first 10 checks after a stage change (the window still filling: it holds
  the calls since the change, the first bucket partial with 1 to 15 calls, each
  count equally likely) by dynamic programming over the window's error count;
- the checks after that (a full window, 150 calls) by a union bound.

A fleet of N devices then expects N times that many false rollbacks a run.
The same computation for a device whose calls fail 15% of the time (the
default scenario's bad cohort, `rev-b`, from stage 3) gives the chance it is
caught within the first 10 checks (its 5-minute wave). The baseline is the
rule without a minimum error count (`min_errors` 1: the Wilson bound alone,
the rule before issue 10), computed in the same run.
"""
from __future__ import annotations

import math

from agent.config import DEFAULT_THRESHOLDS
from agent.health import evaluate, wilson_lower
from bench.__main__ import figure

BUCKETS = 10
CALLS_PER_BUCKET = 15    # 0.5 calls/s x 30 s buckets (sim.faults.Traffic, the default window)
HEALTHY_RATE = 0.005     # sim.faults.Traffic.error_rate
BAD_RATE = 0.15          # sim.faults.BadCohort.error_rate
STAGES = 4
CHECKS_PER_STAGE = 40    # ~167 checks a device over a 4-stage run of 5-minute waves
FLEETS = (10 ** 5, 10 ** 6)


def _binom(n: int, p: float) -> list[float]:
    return [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]


class Rule:
    """Whether `errors` of `calls` trips the agent's error-rate rule (cached)."""

    def __init__(self, thresholds: dict) -> None:
        self.thresholds = thresholds
        self.cache: dict[tuple[int, int], bool] = {}

    def trips(self, errors: int, calls: int) -> bool:
        key = (errors, calls)
        hit = self.cache.get(key)
        if hit is None:
            source = {"samples": calls, "errors": errors,
                      "error_rate": errors / calls if calls else 0.0,
                      "error_rate_lower": wilson_lower(errors, calls),
                      "latency_p50": None, "latency_p95": None,
                      "in_grace": False, "ignored_in_grace": 0}
            snap = {"samples": calls, "errors": errors, "restarts_per_min": 0.0,
                    "restart_sources": {}, "sources": {"app": source}}
            verdict = evaluate(snap, self.thresholds)
            hit = self.cache[key] = any(v["metric"] == "error_rate"
                                        for v in verdict["violations"])
        return hit


def ramp_trip(rule: Rule, p: float, first: int, checks: int = BUCKETS) -> float:
    """P(the rule trips within `checks` checks of a stage change): the window fills by
    `first` calls, then CALLS_PER_BUCKET a check; each call fails with probability p."""
    alive = {0: 1.0}  # errors so far -> probability, for the paths that have not tripped
    tripped = 0.0
    calls = 0
    for j in range(checks):
        added = first if j == 0 else CALLS_PER_BUCKET
        calls += added
        dist = _binom(added, p)
        nxt: dict[int, float] = {}
        for errors, pr in alive.items():
            for k, q in enumerate(dist):
                total = errors + k
                if rule.trips(total, calls):
                    tripped += pr * q
                else:
                    nxt[total] = nxt.get(total, 0.0) + pr * q
        alive = nxt
    return tripped


def full_window_trip(rule: Rule, p: float) -> float:
    """P(one check of a full window trips the rule)."""
    n = BUCKETS * CALLS_PER_BUCKET
    return sum(q for k, q in enumerate(_binom(n, p)) if rule.trips(k, n))


def per_run(rule: Rule, p: float) -> float:
    firsts = range(1, CALLS_PER_BUCKET + 1)
    ramp = sum(ramp_trip(rule, p, f) for f in firsts) / len(firsts)
    stage = min(1.0, ramp + (CHECKS_PER_STAGE - BUCKETS) * full_window_trip(rule, p))
    return 1 - (1 - stage) ** STAGES


def caught(rule: Rule, p: float) -> float:
    firsts = range(1, CALLS_PER_BUCKET + 1)
    return sum(ramp_trip(rule, p, f) for f in firsts) / len(firsts)


def run(quick: bool = False) -> list[dict]:
    now = Rule(dict(DEFAULT_THRESHOLDS))
    before = Rule(dict(DEFAULT_THRESHOLDS, min_errors=1))
    rows = []
    for rate in (HEALTHY_RATE, 2 * HEALTHY_RATE):
        fp, fp0 = per_run(now, rate), per_run(before, rate)
        rows.append(figure("false self-rollback/device/run @%.1f%%" % (rate * 100), fp, "",
                           "min_errors 1 (Wilson alone)", fp0))
        if rate == HEALTHY_RATE:
            for n in FLEETS:
                rows.append(figure("expected false rollbacks, 10^%d fleet" % round(
                    math.log10(n)), fp * n, "", "min_errors 1", fp0 * n,
                    target="< 0.1 at 10^5" if n == 10 ** 5 else None,
                    met=(fp * n < 0.1) if n == 10 ** 5 else None))
    rows.append(figure("15%-error device caught in 10 checks", caught(now, BAD_RATE), "",
                       "min_errors 1", caught(before, BAD_RATE)))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
