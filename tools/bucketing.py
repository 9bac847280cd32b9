"""Which topics carry one signed command to a set of devices, so that no device receives
more than a bounded number of bytes whatever the fleet size.

Every device subscribes to cmd/bucket/P and desired/bucket/P for each prefix P
(1..BUCKET_DEPTH hex digits) of its bucket (agent.protocol.bucket_of). A
command for `devices` is published at ONE prefix length L, as one message per
bucket prefix that holds some of them, each signed only for its own devices.
A device therefore receives one message per command, with at most MAX_MACS
entries (24 bytes each): at most MAX_MACS * 24 + MAX_BODY bytes, at 10 devices
or at 10^7. Of the lengths that keep every message within MAX_MACS, the
operator takes the one with the fewest publishes plus deliveries (a device of
the bucket that is not in the command hears it too and ignores it).

    plan_addressing(devices, fleet) -> [(target, [devices signed for]), ...]
    bytes_per_device(plan, fleet, body_bytes) -> the most bytes any device receives
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

from agent import protocol as P

MAX_MACS = 256            # entries in one message: 6 KiB of MAC table
ENTRY_BYTES = P.TAG_BYTES + P.MAC_BYTES


def _bucket(device: str) -> str:
    """agent.protocol.bucket_of without its per-character id check (ids here come from
    verified statuses); tests/test_bucketing.py holds the two equal."""
    return hashlib.sha256(b"fleetstage-bucket:" + device.encode()).hexdigest()[:P.BUCKET_DEPTH]


class Buckets:
    """A fleet's bucket ids, computed once (a SHA-256 per device)."""

    def __init__(self, fleet: Iterable[str]) -> None:
        self.of = {d: _bucket(d) for d in fleet}
        self.counts = [Counter(b[:n] for b in self.of.values())
                       for n in range(P.BUCKET_DEPTH + 1)]

    def add(self, device: str) -> str:
        if device not in self.of:
            b = self.of[device] = _bucket(device)
            for n in range(P.BUCKET_DEPTH + 1):
                self.counts[n][b[:n]] += 1
        return self.of[device]


def plan_addressing(devices: Iterable[str], fleet: Buckets,
                    max_macs: int = MAX_MACS) -> list[tuple[str, list[str]]]:
    """One (bucket target, its devices) per message, at the best prefix length."""
    members = sorted(set(devices))
    if not members:
        return []
    buckets = [fleet.add(d) for d in members]
    best: tuple[int, int] | None = None
    per = Counter(buckets)
    levels = {P.BUCKET_DEPTH: per}
    for n in range(P.BUCKET_DEPTH - 1, 0, -1):  # each length from the one below it
        up: Counter = Counter()
        for p, c in per.items():
            up[p[:n]] += c
        levels[n] = per = up
    for n in range(1, P.BUCKET_DEPTH + 1):
        per = levels[n]
        if max(per.values()) > max_macs:
            continue
        cost = len(per) + sum(fleet.counts[n][p] for p in per)
        if best is None or cost < best[0]:
            best = (cost, n)
    if best is None:  # more than max_macs devices share one full bucket id
        raise ValueError("more than %d devices share bucket ids; split the command" % max_macs)
    n = best[1]
    groups: dict[str, list[str]] = {}
    for d, b in zip(members, buckets):
        groups.setdefault(b[:n], []).append(d)
    return [("bucket:" + p, groups[p]) for p in sorted(groups)]


def bytes_per_device(plan: list[tuple[str, list[str]]], fleet: Buckets,
                     body_bytes: int) -> int:
    """The most bytes one device of the fleet receives for this plan: one message each."""
    worst = 0
    for _target, devices in plan:
        worst = max(worst, body_bytes + ENTRY_BYTES * len(devices) + 16)
    return worst


def messages_heard(plan: list[tuple[str, list[str]]], fleet: Buckets) -> Counter:
    """device -> how many messages of the plan reach it (its subscriptions decide)."""
    heard: Counter = Counter()
    prefixes = {t.split(":", 1)[1] for t, _ in plan}
    for d, b in fleet.of.items():
        for n in range(1, P.BUCKET_DEPTH + 1):
            if b[:n] in prefixes:
                heard[d] += 1
    return heard


def main() -> None:
    """`python -m tools.bucketing`: what one device receives per command, by fleet size,
    against one broadcast signed for the whole wave (what MAX_PAYLOAD used to bound)."""
    key = bytes(32)
    print("%-10s %-6s %-9s %-7s %-9s %-16s %s" % (
        "devices", "wave", "messages", "prefix", "max MACs", "max bytes/device",
        "one broadcast"))
    for n in (1000, 1_000_000):
        fleet = ["gw-%07d" % i for i in range(n)]
        buckets = Buckets(fleet)
        for share in (0.02, 1.0):
            members = fleet[:max(1, int(n * share))]
            plan = plan_addressing(members, buckets)
            target, devices = max(plan, key=lambda x: len(x[1]))
            payload = P.encode_command("migrate", {"stage": 1}, target, 1796000000000, "h" * 16,
                                       key, devices=devices, command_id="0123456789abcdef",
                                       issued_at=1796000000, fleet="plant1")
            print("%-10d %-6s %-9d %-7d %-9d %-16d %d" % (
                n, "%g%%" % (100 * share), len(plan), len(target) - len("bucket:"),
                len(devices), len(payload), len(members) * ENTRY_BYTES))


if __name__ == "__main__":
    main()
