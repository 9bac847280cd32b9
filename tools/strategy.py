"""Rollout strategies: which devices go in which wave, and when a wave has failed.

Pure policy, no I/O and no clock: the simulator and the operator's rollout
orchestrator both feed it what they observed and act on its verdict, so a
strategy proved in the simulator is the one that runs against the fleet.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

DEFAULT_WAVES = (0.02, 0.10, 0.50, 1.0)


@dataclass(frozen=True)
class WavePolicy:
    """Cumulative wave sizes and the thresholds that halt a rollout.

    waves: cumulative fractions of the fleet, ending at 1.0 (2%, 10%, 50%, 100%).
    max_failure_ratio: a wave whose devices failed (rejected, rolled themselves
        back, or never answered) above this fraction halts the rollout.
    min_ack_ratio: the fraction of a wave that must acknowledge in time.
    """

    waves: tuple[float, ...] = DEFAULT_WAVES
    max_failure_ratio: float = 0.05
    min_ack_ratio: float = 0.95
    seed: str = "fleetstage"

    def __post_init__(self) -> None:
        if not self.waves or abs(self.waves[-1] - 1.0) > 1e-9:
            raise ValueError("waves must be cumulative fractions ending at 1.0")
        if any(b <= a for a, b in zip(self.waves, self.waves[1:])) or self.waves[0] <= 0:
            raise ValueError("waves must increase strictly from above 0")
        if not 0 <= self.max_failure_ratio < 1 or not 0 < self.min_ack_ratio <= 1:
            raise ValueError("ratios must lie in [0, 1)")

    def order(self, device_ids: list[str]) -> list[str]:
        """A stable shuffle: the same fleet always gets the same waves, across restarts."""
        def rank(device_id: str) -> bytes:
            return hashlib.sha256((self.seed + ":" + device_id).encode()).digest()

        return sorted(device_ids, key=rank)

    def split(self, device_ids: list[str]) -> list[list[str]]:
        """The devices each wave adds (every device in exactly one wave, none empty)."""
        ordered = self.order(device_ids)
        n = len(ordered)
        out: list[list[str]] = []
        start = 0
        for frac in self.waves:
            end = max(start + 1, round(n * frac)) if start < n else n
            end = min(end, n)
            if end > start:
                out.append(ordered[start:end])
            start = end
        return out


@dataclass
class WaveResult:
    """What one wave did: counts by outcome, and the verdict."""

    stage: int
    wave: int
    devices: int
    applied: int = 0
    rejected: int = 0
    unanswered: int = 0
    rolled_back: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    halted: bool = False
    why: str = ""

    @property
    def failed(self) -> int:
        return self.rejected + self.unanswered + self.rolled_back


def judge_wave(policy: WavePolicy, result: WaveResult) -> WaveResult:
    """Fill in `halted` and `why` from the counts; the caller acts on it."""
    if result.devices == 0:
        return result
    acked = (result.applied + result.rejected + result.rolled_back) / result.devices
    failure = result.failed / result.devices
    if acked < policy.min_ack_ratio:
        result.halted = True
        result.why = "only %.1f%% acknowledged (need %.1f%%)" % (
            100 * acked, 100 * policy.min_ack_ratio)
    elif failure > policy.max_failure_ratio:
        result.halted = True
        result.why = "%.1f%% of the wave failed (limit %.1f%%)" % (
            100 * failure, 100 * policy.max_failure_ratio)
    return result


def classify(policy: WavePolicy, stage: int, wave: int, members: list[str],
             acks: dict[str, dict], statuses: dict[str, dict]) -> WaveResult:
    """Judge one wave by where each device stands now, as its reports say.

    acks: device -> its ack of this wave's command; statuses: device -> its
    latest status. A first ack of `rejected` for a transient reason (a power
    cut during the commit) does not fail a device that has since converged from
    the retained desired state; a device whose status shows a lower stage than
    it acknowledged rolled itself back.
    """
    result = WaveResult(stage=stage, wave=wave, devices=len(members))
    for d in members:
        ack = acks.get(d)
        st = statuses.get(d, {})
        at_stage = st.get("stage") == stage and st.get("online", True) is not False
        if ack is not None and ack.get("result") == "rejected" and not at_stage:
            result.rejected += 1
            reason = ack.get("reason", "?")
            result.reasons[reason] = result.reasons.get(reason, 0) + 1
        elif at_stage:
            result.applied += 1
        elif ack is not None:
            result.rolled_back += 1  # it took the stage, then its health sent it back
        else:
            result.unanswered += 1
    return judge_wave(policy, result)
