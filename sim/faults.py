"""Fault profiles for the fleet simulator.

A profile says how the world misbehaves: which devices belong to a bad cohort
(and how badly they do at which stage), how flaky the links are, when the
broker is out, how often power is cut during a write, how far clocks drift.
Profiles are data; the simulator applies them with its seeded random source,
so a run is reproducible from (profile, seed).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

_MASK = (1 << 64) - 1


class Draws:
    """A small seeded random source (SplitMix64) for the few draws a device's faults
    make (its power cuts, each of its messages' delay and loss): 56 bytes where a
    random.Random holds 2.5 KB of state, which at 10^5 devices and three sources each
    was 750 MB. Seeded by a string, reproducibly on any machine and Python."""

    __slots__ = ("state",)

    def __init__(self, seed: str) -> None:
        self.state = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(),
                                    "big")

    def _next(self) -> int:
        x = self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
        return x ^ (x >> 31)

    def random(self) -> float:
        """Uniform in [0, 1)."""
        return (self._next() >> 11) * (1.0 / (1 << 53))

    def randint(self, a: int, b: int) -> int:
        """Uniform in [a, b], both included."""
        return a + (self._next() >> 11) * (b - a + 1) // (1 << 53)


@dataclass(frozen=True)
class Traffic:
    """What the apps on a healthy device do: calls per second and how they fare.

    Half a call a second keeps ~150 outcomes in the agent's 5-minute window:
    a bad cohort's 15% errors show within ~2 minutes of a stage change, without
    paying for samples nothing judges.
    """

    calls_per_s: float = 0.5
    error_rate: float = 0.005
    latency_ms: float = 20.0
    # +-10%: the p50 of ~150 samples then moves by ~1%, well inside the plan's
    # 10% performance-impact limit (at +-25% a healthy device crossed it now and then)
    latency_jitter: float = 0.10


@dataclass(frozen=True)
class BadCohort:
    """A slice of the fleet (say, one hardware revision) that breaks at a stage."""

    name: str = "rev-b"
    fraction: float = 0.08
    from_stage: int = 3
    error_rate: float = 0.15
    latency_factor: float = 1.0


@dataclass(frozen=True)
class FaultProfile:
    name: str = "default"
    traffic: Traffic = field(default_factory=Traffic)
    cohorts: tuple[BadCohort, ...] = ()
    loss: float = 0.0                 # probability a message is dropped
    latency_ms: tuple[int, int] = (20, 200)  # uniform one-way delivery delay
    broker_outages: tuple[tuple[int, int], ...] = ()  # (start_ms, end_ms) of virtual time
    power_cut_rate: float = 0.0       # probability a device loses power during a given commit
    clock_skew_s: float = 0.0         # wall clocks drift uniformly within +/- this


PROFILES = {
    "none": FaultProfile(name="none"),      # no faults at all: every device completes
    "clean": FaultProfile(name="clean"),    # the same, by its older name
    "default": FaultProfile(
        name="default",
        cohorts=(BadCohort(),),
        loss=0.01,
        power_cut_rate=0.01,
        clock_skew_s=30.0,
    ),
    "bad-cohort": FaultProfile(name="bad-cohort", cohorts=(BadCohort(),)),
    "flaky-links": FaultProfile(name="flaky-links", loss=0.05, latency_ms=(50, 2000)),
    "broker-outage": FaultProfile(name="broker-outage", broker_outages=((60_000, 240_000),)),
    "power-cuts": FaultProfile(name="power-cuts", power_cut_rate=0.05),
    "clock-skew": FaultProfile(name="clock-skew", clock_skew_s=600.0),
}


def profile(name: str) -> FaultProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            "unknown fault profile %r (known: %s)" % (name, ", ".join(sorted(PROFILES)))
        ) from None
