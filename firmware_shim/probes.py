"""The health probes the agent runs on a Pi: http, exec, systemd and prometheus.

Owns: running each probe of the config's "health.probes" every interval_s,
first after initial_delay_s, in worker threads, so a slow endpoint or a
command that hangs never blocks the agent's loop; the threads touch nothing
but their own probe and return a result. `poll()` (from the loop) starts
what is due and hands finished results to the sink, on the loop's thread:
    sink.outcome(ok, latency_ms, source)
    sink.outcomes(calls, errors, latency_ms, source)    (prometheus deltas)
    sink.restarts(name, count)                          (systemd NRestarts rises)

- http: GET url; a 2xx within timeout_s is ok; the time taken is the latency.
- exec: run command; exit 0 within timeout_s is ok; the duration is the latency.
- systemd: `systemctl show -p NRestarts,ActiveState,Result --value UNIT`; a rise
  in NRestarts counts as restarts, Result=watchdog or start-limit-hit (or
  ActiveState=failed) as a failed outcome.
- prometheus: scrape url, parse with prometheus_client's text parser; the
  differences between two scrapes give calls, errors and the mean latency.
"""
from __future__ import annotations

import http.client
import math
import time
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from firmware_shim.selector import parse_selector

if TYPE_CHECKING:
    from concurrent.futures import Future

ACTIVE_STATES = ("active", "reloading", "inactive", "failed", "activating", "deactivating",
                 "maintenance", "refreshing")
FAILED_RESULTS = ("watchdog", "start-limit-hit")


class ProbeError(Exception):
    pass


def http_check(url: str, timeout: float) -> tuple[bool, float | None]:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    start = time.monotonic()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "fleetstage-probe"})
        reply = conn.getresponse()
        reply.read()
        latency = (time.monotonic() - start) * 1000
        return 200 <= reply.status < 300, latency
    except (OSError, http.client.HTTPException):
        return False, None  # refused, reset or timed out: a failure with no latency
    finally:
        conn.close()


def exec_check(command: list[str], timeout: float) -> tuple[bool, float | None]:
    import subprocess  # here: an agent with no exec probe never loads it (idle RSS)

    start = time.monotonic()
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, None
    except OSError:
        return False, None
    return done.returncode == 0, (time.monotonic() - start) * 1000


def parse_systemctl_values(text: str) -> dict[str, Any]:
    """The --value lines of NRestarts, ActiveState and Result, in whatever order systemctl
    prints them (it prints in its own property order, not the order of -p)."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        value = line.strip()
        if not value:
            continue
        if value.isdigit():
            out["NRestarts"] = int(value)
        elif value in ACTIVE_STATES and "ActiveState" not in out:
            out["ActiveState"] = value
        else:
            out["Result"] = value
    if "NRestarts" not in out:
        raise ProbeError("systemctl printed no NRestarts (is the unit a service?): %r"
                         % text[:200])
    return out


def systemd_read(unit: str, timeout: float) -> dict[str, Any]:
    import subprocess  # here: an agent with no systemd probe never loads it (idle RSS)

    done = subprocess.run(["systemctl", "show", "-p", "NRestarts,ActiveState,Result", "--value",
                           unit], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise ProbeError("systemctl show %s exited %d: %s" % (unit, done.returncode,
                                                              done.stderr.strip()[:200]))
    return parse_systemctl_values(done.stdout)


def _total(samples: list[Any], selector: str | None) -> float | None:
    if selector is None:
        return None
    name, labels = parse_selector(selector)  # checked at config load (agent.health_config)
    names = (name, name + "_total")
    found = None
    for s in samples:
        if s.name in names and all(s.labels.get(k) == v for k, v in labels.items()):
            found = (found or 0.0) + s.value
    return found


def prometheus_scrape(probe: dict, timeout: float) -> dict[str, float | None]:
    parts = urlsplit(probe["url"])
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=timeout)
    try:
        conn.request("GET", parts.path or "/metrics")
        reply = conn.getresponse()
        body = reply.read().decode("utf-8", "replace")
        if reply.status != 200:
            raise ProbeError("scrape %s: HTTP %d" % (probe["url"], reply.status))
    finally:
        conn.close()
    # here, not at the top: prometheus_client loads ~3 MB resident (wsgiref, http.server),
    # which an agent with no prometheus probe never needs (idle RSS target: 25 MB)
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for fam in text_string_to_metric_families(body) for s in fam.samples]
    latency = probe.get("latency")
    scale = 1.0 if latency and (latency.endswith("_ms") or latency.endswith("_milliseconds")) \
        else 1000.0
    lat_sum = _total(samples, latency + "_sum") if latency else None
    # a labelled counter that has not counted yet has no sample: that is 0
    counters = {"requests": _total(samples, probe["requests"]) or 0.0,
                "errors": _total(samples, probe["errors"]) or 0.0,
                "latency_sum_ms": None if lat_sum is None else lat_sum * scale,
                "latency_count": _total(samples, latency + "_count") if latency else None}
    for field, value in counters.items():
        # NaN or an infinity (the text format allows both) would reach the health window
        # as a latency no percentile can order: the scrape fails instead, said once
        if value is not None and not math.isfinite(value):
            raise ProbeError("scrape %s: %s is %r, not a finite number" % (
                probe["url"], field, value))
    return counters


class _Probe:
    def __init__(self, spec: dict, now: float) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.next_due = now + spec["initial_delay_s"]
        self.future: Future | None = None
        self.last: Any = None        # previous systemd / prometheus reading
        self.runs = 0
        self.errors = 0
        self.last_error: str | None = None

    def work(self) -> Any:
        spec, timeout = self.spec, self.spec["timeout_s"]
        kind = spec["type"]
        if kind == "http":
            return http_check(spec["url"], timeout)
        if kind == "exec":
            return exec_check(spec["command"], timeout)
        if kind == "systemd":
            return systemd_read(spec["unit"], timeout)
        return prometheus_scrape(spec, timeout)


class ProbeRunner:
    def __init__(self, probes: list[dict], sink: Any, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = None) -> None:
        self.sink = sink
        self.clock = clock
        self.log = log or (lambda msg: None)
        now = clock()
        self.probes = [_Probe(spec, now) for spec in probes]
        self._pool = None
        if probes:  # here: an agent with no probes never loads concurrent.futures
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="probe")

    def poll(self) -> None:
        now = self.clock()
        for p in self.probes:
            if p.future is not None and p.future.done():
                future, p.future = p.future, None
                try:
                    self._apply(p, future.result())
                except Exception as exc:  # the probe could not run: a failure, said once
                    p.errors += 1
                    if p.last_error != str(exc):
                        self.log("probe %s: %s" % (p.name, exc))
                    p.last_error = str(exc)
                    if p.spec["type"] in ("systemd", "prometheus"):
                        self.sink.outcome(False, None, p.name)
            if p.future is None and now >= p.next_due and self._pool is not None:
                p.next_due = max(p.next_due + p.spec["interval_s"], now)
                p.runs += 1
                p.future = self._pool.submit(p.work)

    def _apply(self, p: _Probe, result: Any) -> None:
        kind = p.spec["type"]
        if kind in ("http", "exec"):
            ok, latency = result
            self.sink.outcome(ok, latency, p.name)
            return
        if kind == "systemd":
            prev, p.last = p.last, result
            if prev is not None and result["NRestarts"] > prev["NRestarts"]:
                self.sink.restarts(p.spec["unit"], result["NRestarts"] - prev["NRestarts"])
            failed = result.get("Result") in FAILED_RESULTS or result.get("ActiveState") == "failed"
            self.sink.outcome(not failed, None, p.name)
            return
        prev, p.last = p.last, result
        if prev is None:
            return  # the first scrape only sets the counters' starting point
        calls = result["requests"] - prev["requests"]
        errors = result["errors"] - prev["errors"]
        if calls < 0 or errors < 0:
            return  # the application restarted and its counters with it: start again
        latency = None
        if result["latency_count"] is not None and prev["latency_count"] is not None:
            n = result["latency_count"] - prev["latency_count"]
            if n > 0:
                latency = (result["latency_sum_ms"] - prev["latency_sum_ms"]) / n
                if latency < 0:
                    latency = None  # the sum fell while the count rose: no mean to trust
        if calls > 0:
            self.sink.outcomes(int(calls), int(min(errors, calls)), latency, p.name)

    def stats(self) -> dict[str, Any]:
        return {p.name: {"runs": p.runs, "errors": p.errors, "last_error": p.last_error}
                for p in self.probes}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
