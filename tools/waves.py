"""Waves and verdicts: which devices go in which wave, how a wave is judged, who is to blame.

Pure policy for the orchestrator core (tools/orchestrator.py): no I/O, no clock.

    parse_waves("group:canary,10%,50%,100%") -> [WaveSpec, ...]
    plan_waves(specs, devices, seed) -> [[device, ...], ...]   every device in exactly one wave
    parse_threshold("5%" | "0.05" | "3") -> Threshold            a share, or a count of devices
    judge(outcomes, devices, ...) -> WaveResult                  counts, reasons, cohorts, decision
    cohort_analysis(outcomes, devices) -> {"by_reason", "by_group", "by_hw", "blamed"}

A device's outcome in a wave is one of APPLIED (acknowledged this rollout's
command and still at the stage), REJECTED (its ack refused the command, with a
reason code), ROLLED_BACK (it took the stage, then its own health sent it
back), SILENT (no ack by the per-device timeout and no status proving it took
the command) or PENDING (still inside its timeout). REJECTED, ROLLED_BACK and
SILENT are failures.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

APPLIED = "applied"
REJECTED = "rejected"
ROLLED_BACK = "rolled_back"
SILENT = "silent"
PENDING = "pending"
FAILURES = (REJECTED, ROLLED_BACK, SILENT)

ADVANCE, HALT, PAUSE = "advance", "halt", "pause"
DEFAULT_WAVES = "2%,10%,50%,100%"


class WaveError(ValueError):
    """A wave list or threshold the operator wrote that cannot work; the text says why."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the orchestrator knows of one device before it starts (from its status)."""

    groups: tuple[str, ...] = ()
    hw: str | None = None
    online: bool | None = None     # None: no status seen
    stage: int | None = None


@dataclass(frozen=True)
class WaveSpec:
    """One wave: every device of a group, or the fleet up to a cumulative fraction."""

    label: str
    group: str | None = None
    fraction: float | None = None


def parse_waves(text: str) -> list[WaveSpec]:
    """"group:canary,10%,50%,100%" (also 0.1 for 10%) -> specs; fractions are cumulative."""
    specs: list[WaveSpec] = []
    last = 0.0
    for raw in str(text).split(","):
        item = raw.strip()
        if not item:
            raise WaveError("--waves has an empty item: write e.g. group:canary,10%,50%,100%")
        if item.startswith("group:"):
            name = item[len("group:"):]
            if not name or any(c in name for c in "/+# "):
                raise WaveError(f"wave {item!r}: a group wave is group:NAME")
            specs.append(WaveSpec(label=item, group=name))
            continue
        try:
            frac = float(item[:-1]) / 100 if item.endswith("%") else float(item)
        except ValueError:
            raise WaveError(f"wave {item!r} is neither a percentage (10%), a fraction (0.1) "
                            "nor group:NAME") from None
        if not 0 < frac <= 1 + 1e-9:
            raise WaveError(f"wave {item!r} must lie above 0% and at most 100%")
        if frac <= last:
            raise WaveError(f"wave {item!r}: percentages must grow (they are cumulative)")
        last = frac
        specs.append(WaveSpec(label=item, fraction=min(frac, 1.0)))
    if not specs or specs[-1].fraction is None or abs(specs[-1].fraction - 1.0) > 1e-9:
        raise WaveError("the last wave must be 100% (so every device is reached)")
    return specs


def stable_order(device_ids: list[str], seed: str = "fleetstage") -> list[str]:
    """A stable shuffle: the same fleet always gets the same waves, across restarts."""
    def rank(device_id: str) -> bytes:
        return hashlib.sha256((seed + ":" + device_id).encode()).digest()

    return sorted(device_ids, key=rank)


def plan_waves(specs: list[WaveSpec], devices: Mapping[str, DeviceInfo],
               seed: str = "fleetstage") -> list[list[str]]:
    """The devices each wave adds. A group wave takes the group's devices not yet taken;
    a percentage wave tops the cumulative count up to that share of the fleet (an empty
    wave stays in the list, so wave numbers match the --waves the operator wrote)."""
    ordered = stable_order(list(devices), seed)
    n = len(ordered)
    taken: set[str] = set()
    out: list[list[str]] = []
    for spec in specs:
        if spec.group is not None:
            members = [d for d in ordered if d not in taken and spec.group in devices[d].groups]
        else:
            assert spec.fraction is not None
            want = max(1, round(n * spec.fraction)) - len(taken) if n else 0
            members = [d for d in ordered if d not in taken][:max(0, want)]
        taken.update(members)
        out.append(sorted(members))
    return out


def check_groups(specs: list[WaveSpec], devices: Mapping[str, DeviceInfo]) -> None:
    """A group wave must name a group some device is in: a typo would otherwise make an
    empty canary, and the next wave would take the whole fleet untested."""
    known = sorted({g for info in devices.values() for g in info.groups})
    for spec in specs:
        if spec.group is not None and spec.group not in known:
            raise WaveError("wave %r: no device is in group %r (groups: %s)" % (
                spec.label, spec.group, ", ".join(known[:10]) or "none"))


@dataclass(frozen=True)
class Threshold:
    """A limit on failed devices: a share of the wave (0.05) or a count (3)."""

    value: float
    is_count: bool = False

    def exceeded(self, failed: int, total: int) -> bool:
        if self.is_count:
            return failed > self.value
        return total > 0 and failed / total > self.value + 1e-12

    def describe(self) -> str:
        return "%d devices" % self.value if self.is_count else "%.1f%%" % (100 * self.value)


def parse_threshold(text: str, whole: bool = False) -> Threshold:
    """"5%" or "0.05" -> share; "3" (a whole number) -> a count of devices. `whole`: 100%
    is a share too (a success threshold of every device)."""
    item = str(text).strip()
    try:
        if item.endswith("%"):
            share = float(item[:-1]) / 100
        elif item.isdigit():
            return Threshold(float(int(item)), is_count=True)
        else:
            share = float(item)
    except ValueError:
        raise WaveError(f"threshold {item!r} is neither a share (5%, 0.05) nor a count (3)"
                        ) from None
    if not (0 <= share <= 1 if whole else 0 <= share < 1):
        raise WaveError(f"threshold {item!r}: a share lies in [0%, 100%{']' if whole else ')'}")
    return Threshold(share)


# ------------------------------------------------------------------ the verdict

@dataclass
class WaveResult:
    """What one wave did: counts by outcome, reasons, cohorts and the decision."""

    stage: int
    wave: int
    label: str
    devices: int
    applied: int = 0
    rejected: int = 0
    rolled_back: int = 0
    silent: int = 0
    pending: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)   # device -> reason
    cohorts: dict = field(default_factory=dict)
    decision: str = ADVANCE
    why: str = ""

    @property
    def failed(self) -> int:
        return self.rejected + self.rolled_back + self.silent

    @property
    def halted(self) -> bool:
        return self.decision != ADVANCE

    def to_dict(self) -> dict:
        return {"stage": self.stage, "wave": self.wave, "label": self.label,
                "devices": self.devices, "applied": self.applied, "rejected": self.rejected,
                "rolled_back": self.rolled_back, "silent": self.silent,
                "failed": self.failed, "reasons": dict(sorted(self.reasons.items())),
                "failing": dict(sorted(self.failing.items())), "cohorts": self.cohorts,
                "decision": self.decision, "reason": self.why}


def tally(stage: int, wave: int, label: str, outcomes: Mapping[str, tuple[str, str]],
          devices: Mapping[str, DeviceInfo]) -> WaveResult:
    """outcomes: device -> (APPLIED|REJECTED|ROLLED_BACK|SILENT|PENDING, reason)."""
    result = WaveResult(stage=stage, wave=wave, label=label, devices=len(outcomes))
    for device, (kind, reason) in outcomes.items():
        setattr(result, kind, getattr(result, kind) + 1)
        if kind in FAILURES:
            result.reasons[reason] = result.reasons.get(reason, 0) + 1
            result.failing[device] = reason
    result.cohorts = cohort_analysis(outcomes, devices)
    return result


def judge(result: WaveResult, success: float, error: Threshold, final: bool,
          on_failure: str = HALT) -> WaveResult:
    """Fill in decision and why. Not final: only the error threshold can end it early."""
    n = result.devices
    blamed = result.cohorts.get("blamed")
    blame = "; blamed cohort %s" % blamed["text"] if blamed else ""
    why = ""
    if error.exceeded(result.failed, n):
        why = "%d of %d devices failed (limit %s): %s%s" % (
            result.failed, n, error.describe(), _reason_text(result.reasons), blame)
    elif final and n and result.applied / n < success:
        why = "only %d of %d devices applied and stayed healthy (need %.1f%%)%s" % (
            result.applied, n, 100 * success, blame)
    if why:
        result.decision = PAUSE if on_failure == PAUSE else HALT
        result.why = why
    return result


def _reason_text(reasons: Mapping[str, int]) -> str:
    return ", ".join("%s %d" % (r, c) for r, c in sorted(reasons.items(), key=lambda x: -x[1]))


# ------------------------------------------------------------------ cohorts

def cohort_analysis(outcomes: Mapping[str, tuple[str, str]],
                    devices: Mapping[str, DeviceInfo]) -> dict:
    """Failures grouped by reason, group and hardware revision, each with its lift.

    A cohort is blamed when it holds at least 60% of the failures, the rest of the
    wave failed at most a quarter as often, and either half of it failed or none of
    the rest did (the first few failures of a wave halted early name their cohort).
    """
    failed = {d for d, (kind, _r) in outcomes.items() if kind in FAILURES}
    by_reason: dict[str, int] = {}
    for d in sorted(failed):
        reason = outcomes[d][1]
        by_reason[reason] = by_reason.get(reason, 0) + 1
    members: dict[str, dict[str, list[str]]] = {"group": {}, "hw": {}}
    for d in outcomes:
        info = devices.get(d, DeviceInfo())
        for g in info.groups:
            members["group"].setdefault(g, []).append(d)
        members["hw"].setdefault(info.hw or "unknown", []).append(d)
    n = len(outcomes)
    tables: dict[str, list[dict]] = {}
    blamed: dict | None = None
    best = (0, 0.0)
    for dim, cohorts in members.items():
        rows = []
        for name, ds in sorted(cohorts.items()):
            f_in = sum(1 for d in ds if d in failed)
            n_out = n - len(ds)
            f_out = len(failed) - f_in
            row = {"cohort": name, "failed": f_in, "devices": len(ds),
                   "others_failed": f_out, "others": n_out,
                   "text": "%s: %d of %d failed; others: %d of %d" % (
                       name, f_in, len(ds), f_out, n_out)}
            rate_in = f_in / len(ds)
            rate_out = f_out / n_out if n_out else None
            row["lift"] = None if not rate_out else round(rate_in / rate_out, 2)
            if f_in:
                rows.append(row)
            stands_out = (rate_out is not None and f_in >= 0.6 * len(failed)
                          and rate_out <= rate_in / 4 and (rate_in >= 0.5 or rate_out == 0))
            if stands_out and (blamed is None or (f_in, rate_in) > best):
                blamed, best = dict(row, dimension=dim), (f_in, rate_in)
        tables[dim] = sorted(rows, key=lambda r: (-r["failed"], r["cohort"]))
    return {"by_reason": dict(sorted(by_reason.items(), key=lambda x: (-x[1], x[0]))),
            "by_group": tables["group"], "by_hw": tables["hw"], "blamed": blamed}
