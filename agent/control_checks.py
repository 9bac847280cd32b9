"""What MigrationControl checks, judges and reports without changing anything.

Owns: the checks of what callers hand in (outcomes, counts, grace, extra store keys),
the reasons a device is not ready for a stage, the record of one stage change, and
the shape of the reports of status(),
metrics(), check_health_and_rollback() and the operations (the README documents their
keys), built from a health-window snapshot, its verdict and the latency baseline.
MigrationControl (agent/control.py) owns the state and every change of it.

Must never: change state or do I/O; every function here reads what it is given and
returns a new dict (or raises ControlError), so the caller may keep or change it.
"""
from agent import health as health_mod
from agent.transitions import COOLDOWN, QUARANTINED, ControlError

FLAG_PREFIX = "flag."  # the flags in force; agent.restore reads back what is written here
RESERVED = ("ctl.", FLAG_PREFIX, "health.")  # the store keys MigrationControl writes


def check_extra(extra):
    """The caller's extra store keys of an operation, refused if they touch ours."""
    if not isinstance(extra, dict):
        raise ControlError("extra_changes must be a mapping of store keys")
    for key in sorted(extra):
        if not isinstance(key, str):
            raise ControlError(f"extra_changes keys must be strings, not {key!r}")
        for prefix in RESERVED:
            if key.startswith(prefix):
                raise ControlError(f"extra_changes may not write {key!r}: {prefix}* belongs to "
                                   "MigrationControl")
    return extra


def _check_latency(latency_ms):
    if latency_ms is not None and type(latency_ms) is not int and type(latency_ms) is not float:
        raise ControlError(f"latency_ms must be a number or None, not {latency_ms!r}")


def check_outcome(ok, latency_ms, source):
    """Refuse a malformed outcome (ControlError) before it reaches the health window."""
    if ok is not True and ok is not False:
        raise ControlError(f"outcome ok must be True or False, not {ok!r}")
    _check_latency(latency_ms)
    if latency_ms is not None and not 0 <= latency_ms <= 1e12:  # also refuses NaN
        raise ControlError(f"latency_ms must be a finite number >= 0, not {latency_ms!r}")
    if source is not None and not isinstance(source, str):
        raise ControlError(f"outcome source must be a string, not {source!r}")


def check_outcomes(calls, errors, latency_ms, source):
    """Refuse malformed counts of outcomes (a scrape's deltas)."""
    if type(calls) is not int or type(errors) is not int or calls < 0 or errors < 0:
        raise ControlError("calls and errors must be integers >= 0")
    if not isinstance(source, str):
        raise ControlError(f"outcome source must be a string, not {source!r}")
    _check_latency(latency_ms)


def check_grace(grace_ms):
    if type(grace_ms) is not int or grace_ms < 0:
        raise ControlError(f"grace_ms must be an integer >= 0, not {grace_ms!r}")


def readiness_reasons(problem, state, quarantine, cooldown, violations):
    """Why a device may not migrate now ([] when it may): the target's problem (or
    None), the state with its quarantine record and cooldown info, the violations."""
    reasons = []
    if problem is not None:
        reasons.append(problem)
    if state == QUARANTINED:
        q = quarantine or {}
        reasons.append("quarantined at stage {} after {} automatic rollbacks".format(
            q.get("stage"), q.get("rollbacks")))
    elif state == COOLDOWN:
        reasons.append("cooling down after an automatic rollback for {} ms more".format(
            cooldown["remaining_ms"]))
    for v in violations:
        reasons.append("unhealthy: " + v["message"])
    return reasons


def baseline_note(baseline, stage, min_samples):
    """Why latency checks are skipped at this stage, or None."""
    if baseline is not None or stage == 0:
        return None
    return ("no latency baseline: the stage before had fewer than {} samples when the "
            "device migrated; latency checks skipped").format(min_samples)


def source_report(snapshot, baseline):
    """Each source's figures with the baseline's latency_p50 for it (or None)."""
    out = {}
    sources = snapshot.get("sources") or {}
    for name in sources:
        s = dict(sources[name])
        base = None
        if baseline is not None:
            entry = (baseline.get("sources") or {}).get(name)
            base = None if entry is None else entry.get("latency_p50")
        s["baseline_latency_p50"] = base
        out[name] = s
    return out


def health_report(snapshot, verdict, baseline, note):
    """The health figures of a check (and of status()'s "system_health")."""
    return {
        "error_rate": snapshot["error_rate"],
        "restart_frequency": snapshot["restarts_per_min"],
        "restarts": snapshot["restarts"],
        "samples": snapshot["samples"],
        "latency_p50": snapshot["latency_p50"],
        "latency_p95": snapshot["latency_p95"],
        "baseline_latency_p50": None if baseline is None else baseline["latency_p50"],
        "latency_vs_baseline": health_mod.latency_ratio(snapshot, baseline),
        "performance_impact": health_mod.performance_impact(snapshot, baseline),
        "latency_check": note or "against the baseline",
        "healthy": verdict["healthy"],
        "verdict": verdict["verdict"],
        "verdict_reason": verdict["reason"],
        "enough_samples": verdict["enough_samples"],
        "violations": verdict["violations"],
        "sources": source_report(snapshot, baseline),
    }


def status_health(snapshot, verdict, baseline, last_rollback):
    """What a status report carries of health_report() (the same figures, in this
    order), the violations as a count, and last_auto_rollback() when there is one."""
    out = {"healthy": verdict["healthy"], "verdict": verdict["verdict"],
           "error_rate": snapshot["error_rate"],
           "restart_frequency": snapshot["restarts_per_min"], "samples": snapshot["samples"],
           "latency_p50": snapshot["latency_p50"], "latency_p95": snapshot["latency_p95"],
           "performance_impact": health_mod.performance_impact(snapshot, baseline),
           "violations": len(verdict["violations"])}
    if last_rollback is not None:  # which source crossed which threshold, after the reset
        out["last_rollback"] = last_rollback
    return out


def last_auto_rollback(entries):
    """{"from", "to", "at", "violations": [{"source", "metric", "value", "limit"}]} of
    the latest automatic rollback in the history entries (newest first), or None."""
    for entry in entries:
        if entry.get("op") == "auto_rollback":
            violations = []
            for v in entry.get("violations") or ():
                violations.append({"source": v.get("source"), "metric": v["metric"],
                                   "value": v["value"], "limit": v["limit"]})
            return {"from": entry["from"], "to": entry["to"], "at": entry["at"],
                    "violations": violations}
    return None


def health_metrics(snapshot, verdict, baseline, note, last_rollback):
    """The health half of metrics(): verdict, violations, per-source and overall figures."""
    sources = {}
    for name in snapshot.get("sources") or {}:
        f = snapshot["sources"][name]
        sources[name] = {"samples": f["samples"], "errors": f["errors"],
                         "error_rate_lower": f["error_rate_lower"],
                         "latency_p50": f["latency_p50"], "in_grace": f["in_grace"]}
    violations = []
    for v in verdict["violations"]:
        violations.append({"source": v["source"], "metric": v["metric"], "value": v["value"],
                           "limit": v["limit"]})
    return {
        "verdict": verdict["verdict"],
        "verdict_reason": verdict["reason"],
        "violations": violations,
        "sources": sources,
        "last_auto_rollback": last_rollback,
        "performance_impact": health_mod.performance_impact(snapshot, baseline),
        "error_rate": snapshot["error_rate"],
        "restart_frequency": snapshot["restarts_per_min"],
        "latency_p50": snapshot["latency_p50"],
        "latency_p95": snapshot["latency_p95"],
        "samples": snapshot["samples"],
        "baseline": None if baseline is None else dict(baseline),
        "latency_baseline_note": note,
    }


def monitoring_info(interval_ms, next_check_ms, extended_ms, stage_monitor_ms, last_verdict):
    """status()'s "monitoring": the schedule and the last check's verdict."""
    info = {"interval_ms": interval_ms, "next_check_ms": next_check_ms,
            "verdict": None, "reason": None, "extended_ms": extended_ms,
            "stage_monitor_ms": stage_monitor_ms}
    if last_verdict is not None:
        info.update(last_verdict)
    return info


def operation_result(entry, stage, state, seq, flags):
    """What a stage or flag operation returns. A copy of entry: the history keeps
    `entry` itself, and callers may change what they get."""
    return {"result": "ok", "stage": stage, "from": entry["from"], "state": state,
            "seq": seq, "flags": flags, "entry": dict(entry)}
