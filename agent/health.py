"""Health: time-bucket windows over outcomes and restarts, and the verdict on them.

Owns: the recent outcomes (ok/error, latency) per source (a probe, statsd, an
app), the restarts, the figures drawn from them (error rate and its Wilson
lower bound, restarts per minute, latency p50/p95) and `evaluate`, a pure
function that compares figures with thresholds and returns a verdict:
"healthy", "unhealthy" (with violations) or "inconclusive" (too few samples).
Must never: read a clock (every call takes `now_ms`), touch the store, or
decide on a rollback; MigrationControl does that with the verdict.

Memory is fixed at any call rate. Each source keeps BUCKETS time buckets
(window_ms / BUCKETS wide); a bucket holds a count of calls, of errors and of
calls that carried a latency, and a reservoir of at most
max_samples // BUCKETS latencies (Vitter's algorithm R: every latency of the
bucket has the same chance to be kept, one random draw per sample, O(1)).
p50/p95 come from the union of the reservoirs, each value weighted by the
calls it stands for; with fewer calls than the reservoir holds they are exact.
At most MAX_SOURCES sources are kept; later names are counted as "other".
Restarts are counted the same way: RESTART_BUCKETS buckets over the restart
window, for at most MAX_RESTART_NAMES names (then "other").
The bound, with the defaults (10 buckets, max_samples 160 -> 16 latencies a
bucket, stored as 4-byte floats; counters 4-byte ints):
    per source  4 x 10 x 4 B + 160 x 4 B + arrays/object headers  < 1.4 KB
    restarts    MAX_RESTART_NAMES x (2 x 12 x 4 B + headers)       < 1.2 KB
    per device  MAX_SOURCES (5) x 1.3 KB + restarts + dicts        < 8 KB
`python -m bench health` measures it at 10, 100 and 1,000 calls a second.

Verdict rules:
- restarts are judged at any traffic level (a crash loop is a crash loop);
- error rate: a source is unhealthy when the lower end of the 95% Wilson
  interval of its error rate is above max_error_rate, so two early errors
  on a device with a true 0.5% rate do not roll it back, and at least
  min_errors (MIN_ERRORS, 8) of its calls in the window failed. Each check is
  a 97.5% test; a device checks ~40 times a stage and a fleet has 10^5 of
  them. The false alarms come right after a stage change, when the window
  holds 20-60 calls and 3-5 chance errors clear the bound: with 0.5 calls/s
  at 0.5% errors, a false self-rollback in a 4-stage run is 6.6e-5 a device
  on the bound alone and 2.3e-8 with the count (`python -m bench noise`);
- latency: a source's p50 over its own p50 before the stage (the baseline,
  measured from the same source);
- a source with fewer than min_samples outcomes gives no error or latency
  verdict; a device with no source that has enough is "inconclusive": no
  rollback, and it does not block the next stage (there is no evidence
  against it).
- a source inside its grace period (a probe's initial_delay_s after a start
  or a stage change) records nothing: its outcomes are counted as ignored.
"""
try:
    from array import array
except ImportError:  # pragma: no cover - every port we ship has array
    array = None

BUCKETS = 10
EMPTY = -2147483647  # a slot that holds no bucket yet (bucket numbers may be negative)
FREE = float("-inf")  # a reservoir place that holds no latency: it sorts before every one
MAX_SOURCES = 5  # e.g. 3 probes, statsd and the apps' own pushes ("app")
DEFAULT_SOURCE = "app"
OTHER_SOURCE = "other"
RESTART_BUCKETS = 12       # restarts: counts in 12 buckets of restart_window_ms / 12
MAX_RESTART_NAMES = 4      # restarting units/services named apart; later ones as "other"
WILSON_Z = 1.96            # 95% two-sided interval
MIN_ERRORS = 8             # failed calls a source needs in the window before its error rate counts

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
INCONCLUSIVE = "inconclusive"


def percentile(sorted_values, fraction, n=None):
    """Nearest-rank percentile of an already sorted list (None when empty); with n,
    of its first n values."""
    if n is None:
        n = len(sorted_values)
    if not n:
        return None
    rank = int(fraction * n + 0.999999)
    if rank < 1:
        rank = 1
    if rank > n:
        rank = n
    return sorted_values[rank - 1]


def weighted_percentiles(pairs, fractions):
    """Nearest-rank percentiles of (value, weight) pairs; the same as percentile()
    when every weight is 1. Returns a list aligned with fractions (None when empty).
    fractions ascend; one pass over the sorted pairs finds them all."""
    if not pairs:
        return [None for _ in fractions]
    pairs.sort()
    total = 0.0
    for p in pairs:
        total += p[1]
    out = []
    cum = 0.0
    i = 0
    n = len(pairs)
    for fraction in fractions:
        target = fraction * total - 1e-9
        while i < n and cum + pairs[i][1] < target:
            cum += pairs[i][1]
            i += 1
        out.append(_tidy(pairs[i][0] if i < n else pairs[-1][0]))
    return out


def _tidy_or_none(value):
    return None if value is None else _tidy(value)


def _tidy(value):
    # Latencies are kept as 4-byte floats: 0.1 comes back as 0.10000000149.
    return round(value, 3)


def wilson_lower(errors, samples, z=WILSON_Z):
    """Lower end of the Wilson score interval for errors/samples (0.0 when no samples)."""
    if samples <= 0:
        return 0.0
    p = errors / samples
    z2 = z * z
    denom = 1 + z2 / samples
    centre = p + z2 / (2 * samples)
    spread = z * ((p * (1 - p) / samples + z2 / (4 * samples * samples)) ** 0.5)
    low = (centre - spread) / denom
    return low if low > 0 else 0.0


class _Source:
    """One source's buckets: flat arrays indexed by slot (and slot * per for latencies)."""

    __slots__ = ("per", "epoch", "calls", "errors", "seen", "lat", "max", "grace_ms",
                 "grace_until", "ignored")

    def __init__(self, per_bucket):
        self.per = per_bucket
        self.epoch = _numbers("i", BUCKETS, EMPTY)  # which bucket number each slot holds
        self.calls = _numbers("I", BUCKETS, 0)
        self.errors = _numbers("I", BUCKETS, 0)
        self.seen = _numbers("I", BUCKETS, 0)    # calls that carried a latency
        self.lat = _numbers("f", BUCKETS * per_bucket, FREE)
        # each slot's largest latency since its reuse (NaN sticks): the quick check's bound
        self.max = _numbers("f", BUCKETS, FREE)
        self.grace_ms = 0
        self.grace_until = None
        self.ignored = 0

    def clear(self):
        for i in range(BUCKETS):
            self.reuse(i, EMPTY)

    def reuse(self, slot, number):
        """Give the slot to bucket `number`, empty (its kept latencies back to FREE)."""
        seen = self.seen[slot]
        per = self.per
        base = slot * per
        if seen:  # one slice (a loop of single stores cost ~2k instructions a reuse)
            n = seen if seen < per else per
            self.lat[base:base + n] = _numbers("f", n, FREE)
        self.epoch[slot] = number
        self.max[slot] = FREE
        self.calls[slot] = 0
        self.errors[slot] = 0
        self.seen[slot] = 0


def _numbers(code, n, value):
    if array is None:
        return [value] * n
    return array(code, [value] * n)


def _numbers_of(latencies):
    """latencies in the reservoir's own kind (an array slice takes only an array)."""
    if array is None:
        return list(latencies)
    return array("f", latencies)


class HealthWindow:
    """Outcomes per source in BUCKETS time buckets, and restarts in time order."""

    def __init__(self, window_ms=300000, restart_window_ms=60000, max_samples=160):
        self.window_ms = window_ms
        self.restart_window_ms = restart_window_ms
        self.max_samples = max_samples
        self.bucket_ms = (window_ms + BUCKETS - 1) // BUCKETS
        self.per_bucket = max(1, max_samples // BUCKETS)
        self.restart_bucket_ms = (restart_window_ms + RESTART_BUCKETS - 1) // RESTART_BUCKETS
        self._sources = {}
        self._grace = {}   # source -> grace_ms, kept across resets
        self._restarts = {}  # name -> (epoch, count): RESTART_BUCKETS time buckets each
        self._rng_a = 1  # _below()'s generators
        self._rng_b = 2

    def _below(self, n):
        """A draw in [0, n): Wichmann-Hill's first two generators, whose products stay
        below 2**23, so a board with 31-bit small ints never allocates (the combined
        draw is < 2**30)."""
        self._rng_a = a = (self._rng_a * 171) % 30269
        self._rng_b = b = (self._rng_b * 172) % 30307
        return (a * 30307 + b) % n

    # -- sources and grace ------------------------------------------------
    def _source(self, name):
        src = self._sources.get(name)
        if src is None:
            if len(self._sources) >= MAX_SOURCES - 1 and name != OTHER_SOURCE:
                name = OTHER_SOURCE
                src = self._sources.get(name)
            if src is None:
                src = _Source(self.per_bucket)
                self._sources[name] = src
                if name in self._grace:
                    src.grace_ms = self._grace[name]
        return src

    def set_grace(self, source, grace_ms, now_ms):
        """Ignore `source` for grace_ms from now, and again after every reset(now_ms)."""
        self._grace[source] = grace_ms
        src = self._source(source)
        src.grace_ms = grace_ms
        src.grace_until = now_ms + grace_ms if grace_ms > 0 else None

    def sources(self):
        return sorted(self._sources)

    # -- recording --------------------------------------------------------
    def record_outcome(self, ok, latency_ms, now_ms, source=None):
        src, slot = self._slot(source, now_ms, 1)
        if src is None:
            return
        src.calls[slot] += 1
        if not ok:
            src.errors[slot] += 1
        if latency_ms is not None:
            self._keep_latency(src, slot, latency_ms)

    def record_calls(self, calls, errors, latencies, now_ms, source=None):
        """`calls` outcomes seen together at now_ms (a simulated app's last half
        minute), `errors` of them failed; latencies: each one that carried one. The
        same as that many record_outcome calls at now_ms, at the cost of one (unlike
        record_outcomes, every latency is kept as its own observation)."""
        src, slot = self._slot(source, now_ms, calls)
        if src is None:
            return
        src.calls[slot] += calls
        src.errors[slot] += errors
        if latencies:
            top = max(latencies)  # NaN only if first: a later one is passed over (see snapshot)
            if top > src.max[slot] or top != top:
                src.max[slot] = top
        # _keep_latency, inlined: the same draws in the same order, without a call a sample
        seen = src.seen[slot]
        per = src.per
        base = slot * per
        lat = src.lat
        room = per - seen
        if room > 0 and len(latencies) <= room:
            # the usual case: every latency fits the bucket's free places, one copy
            n = len(latencies)
            lat[base + seen:base + seen + n] = _numbers_of(latencies)
            src.seen[slot] = seen + n
            return
        for latency_ms in latencies:
            seen += 1
            if seen <= per:
                lat[base + seen - 1] = latency_ms
            else:
                j = self._below(seen)
                if j < per:
                    lat[base + j] = latency_ms
        src.seen[slot] = seen

    def _slot(self, source, now_ms, n):
        """(source, bucket slot) for n outcomes at now_ms; (None, None) when not kept."""
        src = self._source(source or DEFAULT_SOURCE)
        if src.grace_until is not None:
            if now_ms < src.grace_until:
                src.ignored += n
                return None, None
            src.grace_until = None
        number = now_ms // self.bucket_ms
        slot = number % BUCKETS
        held = src.epoch[slot]
        if held != number:
            if held > number:
                return None, None  # older than the whole window (the clock never goes back)
            src.reuse(slot, number)
        return src, slot

    def _keep_latency(self, src, slot, latency_ms):
        if latency_ms > src.max[slot] or latency_ms != latency_ms:
            src.max[slot] = latency_ms
        seen = src.seen[slot] + 1
        src.seen[slot] = seen
        per = src.per
        if seen <= per:
            src.lat[slot * per + seen - 1] = latency_ms
        else:
            j = self._below(seen)
            if j < per:
                src.lat[slot * per + j] = latency_ms

    def record_outcomes(self, calls, errors, latency_ms, now_ms, source=None):
        """Many calls at once (a scrape's deltas): counts added in O(1); the latency,
        if any, is one observation (a mean over those calls)."""
        if calls <= 0:
            return
        if errors > calls:
            errors = calls
        src = self._source(source or DEFAULT_SOURCE)
        if src.grace_until is not None:
            if now_ms < src.grace_until:
                src.ignored += calls
                return
            src.grace_until = None
        self.record_outcome(errors == 0, latency_ms, now_ms, source)
        slot = (now_ms // self.bucket_ms) % BUCKETS
        if src.epoch[slot] == now_ms // self.bucket_ms:
            src.calls[slot] += calls - 1
            src.errors[slot] += errors - (1 if errors else 0)

    def record_restart(self, now_ms, name=None):
        key = name or "restart"
        entry = self._restarts.get(key)
        if entry is None:
            if len(self._restarts) >= MAX_RESTART_NAMES and key != OTHER_SOURCE:
                key = OTHER_SOURCE
                entry = self._restarts.get(key)
            if entry is None:
                entry = (_numbers("i", RESTART_BUCKETS, EMPTY), _numbers("I", RESTART_BUCKETS, 0))
                self._restarts[key] = entry
        epoch, count = entry
        number = now_ms // self.restart_bucket_ms
        slot = number % RESTART_BUCKETS
        held = epoch[slot]
        if held != number:
            if held > number:
                return  # older than the restart window
            epoch[slot] = number
            count[slot] = 0
        count[slot] += 1

    def restarts(self, now_ms):
        """{name: restarts in the restart window ending at now_ms}."""
        cutoff = now_ms - self.restart_window_ms
        out = {}
        for name in self._restarts:
            epoch, count = self._restarts[name]
            n = 0
            for slot in range(RESTART_BUCKETS):
                number = epoch[slot]
                start = number * self.restart_bucket_ms
                if number != EMPTY and cutoff <= start <= now_ms:
                    n += count[slot]
            if n:
                out[name] = n
        return out

    def load_restarts(self, restarts):
        """Replace the restart window (e.g. with restarts persisted before a reboot)."""
        self._restarts = {}
        for t, name in sorted(restarts, key=lambda e: e[0]):
            self.record_restart(t, name)

    def reset_outcomes(self, now_ms=None):
        """Forget every outcome; with now_ms, every source's grace period starts again."""
        for name in self._sources:
            src = self._sources[name]
            src.clear()
            src.ignored = 0
            if now_ms is not None and src.grace_ms > 0:
                src.grace_until = now_ms + src.grace_ms

    def reset(self, now_ms=None):
        self.reset_outcomes(now_ms)
        self._restarts = {}

    def prune(self, now_ms):
        """Nothing to drop: buckets are reused in place (kept for callers)."""

    # -- figures ----------------------------------------------------------
    def _live_slots(self, src, now_ms):
        """The slots whose bucket starts inside the window ending at now_ms."""
        bms = self.bucket_ms
        first = -((self.window_ms - now_ms) // bms)  # the first bucket number starting in it
        last = now_ms // bms
        epoch = src.epoch
        slots = []
        for slot in range(BUCKETS):
            number = epoch[slot]
            if first <= number <= last and number != EMPTY:
                slots.append(slot)
        return slots

    def _source_figures(self, src, now_ms, pairs_out, latency):
        bms = self.bucket_ms
        first = -((self.window_ms - now_ms) // bms)
        last = now_ms // bms
        calls = errors = kept = 0
        per = src.per
        seen_at = src.seen
        if not latency:
            # no p50/p95 (no sort): the largest latency the window holds bounds both
            top = FREE
            for number, n_calls, n_errors, seen, most in zip(src.epoch, src.calls, src.errors,
                                                             seen_at, src.max):
                if first <= number <= last and number != EMPTY:
                    calls += n_calls
                    errors += n_errors
                    kept += seen
                    if most > top or most != most:
                        top = most  # a NaN sticks: no bound
            # p95: the largest latency the window's slots took (each slot keeps its own
            # since its reuse, one it later dropped included: still a bound on p50 and
            # p95). A NaN makes it NaN (no bound), except one that came after the first
            # of a record_calls batch: passed over, it is no p50 to judge (a p50 of a
            # window holding it is some held value, an average of two, or NaN).
            return self._figures(src, now_ms, calls, errors, None,
                                 top if kept and latency is False else None)
        uniform = True   # every kept latency stands for one call
        outside = False  # a slot outside the window still holds latencies
        for number, n_calls, n_errors, seen in zip(src.epoch, src.calls, src.errors, seen_at):
            if first <= number <= last and number != EMPTY:
                calls += n_calls
                errors += n_errors
                if seen > per:
                    uniform = False
                kept += seen
            elif seen:
                outside = True
        if uniform and pairs_out is None and not outside:
            # Only the window's latencies are in the reservoirs, every other place
            # is FREE and sorts first: one sort of the whole array, no gathering.
            p50 = p95 = None
            if kept:
                values = sorted(src.lat)
                del values[:len(values) - kept]
                p50 = _tidy(percentile(values, 0.50))
                p95 = _tidy(percentile(values, 0.95))
            return self._figures(src, now_ms, calls, errors, p50, p95)
        values = []
        lat = src.lat
        slots = self._live_slots(src, now_ms)
        for slot in slots:
            seen = seen_at[slot]
            if seen:
                base = slot * per
                values.extend(lat[base:base + (seen if seen < per else per)])
        if uniform and pairs_out is None:
            values.sort()
            return self._figures(src, now_ms, calls, errors,
                                 _tidy_or_none(percentile(values, 0.50)),
                                 _tidy_or_none(percentile(values, 0.95)))
        pairs = []
        i = 0
        for slot in slots:  # each kept value with the calls it stands for
            seen = seen_at[slot]
            if seen:
                n = seen if seen < per else per
                weight = seen / n
                for v in values[i:i + n]:
                    pairs.append((v, weight))
                i += n
        if pairs_out is not None:
            pairs_out.extend(pairs)
        p50, p95 = weighted_percentiles(pairs, (0.50, 0.95))
        return self._figures(src, now_ms, calls, errors, p50, p95)

    def _figures(self, src, now_ms, calls, errors, p50, p95):
        return {
            "samples": calls,
            "errors": errors,
            "error_rate": (errors / calls) if calls else 0.0,
            "error_rate_lower": wilson_lower(errors, calls),
            "latency_p50": p50,
            "latency_p95": p95,
            "in_grace": src.grace_until is not None and now_ms < src.grace_until,
            "ignored_in_grace": src.ignored,
        }

    def snapshot(self, now_ms, latency=True):
        """The figures for the window ending at now_ms, overall and per source.

        latency=False sorts no latencies: every p50 is None, the overall p95 too, and
        each source's p95 is the largest latency it holds, a bound evaluate() can
        judge on (the agent's own periodic check, whose figures nobody reads unless
        it finds a problem); latency=None gives no latency figure at all (a check
        with no baseline, which no latency rule can judge)."""
        sources = {}
        # pairs for the overall p50/p95; with one source its own figures are those
        pairs = [] if len(self._sources) > 1 and latency else None
        samples = errors = 0
        for name in sorted(self._sources):
            figures = self._source_figures(self._sources[name], now_ms, pairs, latency)
            sources[name] = figures
            samples += figures["samples"]
            errors += figures["errors"]
        if pairs is None:
            p50 = p95 = None
            for figures in sources.values() if latency else ():
                p50, p95 = figures["latency_p50"], figures["latency_p95"]
        else:
            p50, p95 = weighted_percentiles(pairs, (0.50, 0.95))
        by_name = self.restarts(now_ms)
        restarts = 0
        for name in by_name:
            restarts += by_name[name]
        minutes = self.restart_window_ms / 60000
        return {
            "samples": samples,
            "errors": errors,
            "error_rate": (errors / samples) if samples else 0.0,
            "restarts": restarts,
            "restarts_per_min": restarts / minutes,
            "restart_sources": by_name,
            "latency_p50": p50,
            "latency_p95": p95,
            "sources": sources,
        }


def make_baseline(snapshot, stage, min_samples):
    """A latency baseline from a snapshot, or None when no source has enough samples.

    {"stage", "latency_p50", "latency_p95", "samples", "sources": {name: {...}}}:
    the overall figures, and each source's own, so a source is judged against
    itself before the stage (a probe's latency is not an app's)."""
    per_source = {}
    for name in snapshot.get("sources") or {}:
        s = snapshot["sources"][name]
        if s["samples"] >= min_samples and s["latency_p50"] is not None:
            per_source[name] = {"latency_p50": s["latency_p50"],
                                "latency_p95": s["latency_p95"], "samples": s["samples"]}
    if snapshot["samples"] < min_samples or snapshot["latency_p50"] is None:
        if not per_source:
            return None
    return {"stage": stage, "latency_p50": snapshot["latency_p50"],
            "latency_p95": snapshot["latency_p95"], "samples": snapshot["samples"],
            "sources": per_source}


def _impact(p50, base):
    if p50 is None or not base:
        return None
    return (p50 - base) / base


def performance_impact(snapshot, baseline):
    """(p50 now - p50 baseline) / p50 baseline, or None without both figures."""
    if baseline is None:
        return None
    return _impact(snapshot.get("latency_p50"), baseline.get("latency_p50"))


def latency_ratio(snapshot, baseline):
    impact = performance_impact(snapshot, baseline)
    return None if impact is None else impact + 1.0


def _source_baseline(baseline, name):
    if baseline is None:
        return None
    sources = baseline.get("sources")
    if sources is None:  # a baseline committed before sources existed: overall figures
        return baseline.get("latency_p50")
    entry = sources.get(name)
    return None if entry is None else entry.get("latency_p50")


def _violation(metric, value, limit, message, source):
    return {"metric": metric, "value": value, "limit": limit, "source": source,
            "message": message + " (source " + source + ")"}


def _limits(thresholds, criteria):
    stage_limits = criteria or {}
    limits = thresholds  # only read: copied when a stage tightens one
    for key in ("max_error_rate", "max_restarts_per_min", "max_latency_ratio"):
        if key in stage_limits:
            if limits is thresholds:
                limits = dict(thresholds)
            # A stage may only tighten the environment's thresholds.
            limits[key] = min(limits[key], stage_limits[key])
    return limits, stage_limits


def _judge_source(name, s, limits, stage_limits, baseline, violations):
    lower = s["error_rate_lower"]
    if lower > limits["max_error_rate"] and s["errors"] >= limits.get("min_errors", MIN_ERRORS):
        v = _violation(
            "error_rate", s["error_rate"], limits["max_error_rate"],
            "error rate {:.1f}% (95% lower bound {:.1f}%) > {:.1f}% over {} calls".format(
                s["error_rate"] * 100, lower * 100, limits["max_error_rate"] * 100,
                s["samples"]), name)
        v["lower_bound"] = lower
        violations.append(v)
    base = _source_baseline(baseline, name)
    p50 = s["latency_p50"]
    # p50 None with a p95: a snapshot(now, latency=False), its p95 a bound on p50 (a
    # whole snapshot has both or neither)
    top = s["latency_p95"] if p50 is None else None
    if top is not None and base:
        # No p50, a bound on it: the rules below are monotonic in p50 (with a baseline
        # above 0), so none can fire if none fires on the bound. True: undecided.
        if not base > 0 or top != top:
            return True
        p50 = top + 0.001  # at least _tidy(top) (no round: ~2k instructions), still a bound
    impact = _impact(p50, base)
    if impact is None:
        return False
    ratio = impact + 1.0
    if ratio > limits["max_latency_ratio"]:
        if top is not None:
            return True
        violations.append(_violation(
            "latency", ratio, limits["max_latency_ratio"],
            "latency p50 {:.3g} ms = {:.3g}x baseline {:.3g} ms > {}x".format(
                s["latency_p50"], ratio, base, limits["max_latency_ratio"]), name))
    max_impact = stage_limits.get("max_performance_impact")
    if max_impact is not None and impact > max_impact:
        if top is not None:
            return True
        violations.append(_violation(
            "performance_impact", impact, max_impact,
            "performance impact {:.1f}% > {:.1f}%".format(impact * 100, max_impact * 100),
            name))
    return False


def evaluate(snapshot, thresholds, baseline=None, criteria=None):
    """Compare figures with thresholds (and a stage's success criteria).

    Returns {"verdict": healthy|unhealthy|inconclusive, "healthy": bool,
    "violations": [...], "enough_samples": bool, "inconclusive": [source, ...],
    "reason": str or None}. Each violation is {"metric", "value", "limit",
    "source", "message"} (error-rate ones add "lower_bound").

    On a snapshot(now, latency=False) (no p50s; each p95 the source's largest
    latency) the latency rules are tried on that bound, and the verdict is the
    whole snapshot's; None when a latency rule could fire under the bound (the
    caller takes the whole snapshot then).
    """
    limits, stage_limits = _limits(thresholds, criteria)
    violations = []
    rate = snapshot["restarts_per_min"]
    if rate > limits["max_restarts_per_min"]:
        names = snapshot.get("restart_sources") or {}
        source = ",".join(sorted(names)) if names else "restarts"
        violations.append(_violation(
            "restart_frequency", rate, limits["max_restarts_per_min"],
            "restart frequency {:.1f}/min > {}/min".format(rate, limits["max_restarts_per_min"]),
            source))
    sources = snapshot.get("sources") or {}
    conclusive = []
    short = []
    for name in sorted(sources):
        s = sources[name]
        if s["samples"] >= limits["min_samples"]:
            conclusive.append(name)
            if _judge_source(name, s, limits, stage_limits, baseline, violations):
                return None
        elif s["samples"] or s["in_grace"]:
            short.append(name)
    enough = bool(conclusive)
    reason = None
    if violations:
        verdict = UNHEALTHY
    elif enough:
        verdict = HEALTHY
    else:
        verdict = INCONCLUSIVE
        if short:
            reason = "too few samples: " + ", ".join(
                "{} {}/{}{}".format(n, sources[n]["samples"], limits["min_samples"],
                                    " (grace)" if sources[n]["in_grace"] else "")
                for n in short)
        else:
            reason = "no samples: nothing reported an outcome in the window"
    return {"verdict": verdict, "healthy": verdict == HEALTHY, "violations": violations,
            "enough_samples": enough, "inconclusive": short, "reason": reason}
