"""The operator in the simulator: the orchestrator core of `fleetstage rollout`, in virtual time.

Owns: the I/O that tools/rollout_cmd.py does over MQTT, done on a simulated
link: signing each decision (Send, Retain) for its devices and publishing it,
one message per hash bucket of its devices (the rollout's addressing,
tools.bucketing: a device receives one message of at most 256 MACs whatever
the wave's or the fleet's size), and feeding
the verified acks, statuses and events back in. The decisions themselves are
the core's (tools.orchestrator): the simulator rehearses exactly what the
operator will run. Must never: judge a wave itself, or read a device's memory.

Works over any link with the agent link contract (publish, subscribe,
set_callbacks, connected) and any world that moves time on (`world.run_for`,
`world.now_ms`), so the virtual broker and a real MQTT broker drive it alike.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent import protocol as P
from tools import waves as W
from tools.bucketing import Buckets, plan_addressing
from tools.orchestrator import Finished, Notice, Orchestrator, Retain, RolloutSpec, Send, Wait

POLL_MS = 5_000          # the driver looks at the core again at least this often
POLL_PHASE_MS = 2_500    # ... halfway between two of the agents' health checks
BROKER_WAIT_MS = 10_000  # how often it looks whether a lost broker is back
BROKER_GIVE_UP_MS = 3_600_000


class World(Protocol):
    def run_for(self, ms: int) -> None: ...
    def now_ms(self) -> int: ...
    def wall_time(self) -> float: ...
    def broker_up(self) -> bool: ...


@dataclass
class Decision:
    """One line of the operator's timeline, for the report."""

    t_ms: int
    kind: str
    text: str
    data: dict = field(default_factory=dict)


class OperatorKeys:
    """Each device's key and MAC-table tag, derived once per run, not once per command.

    `cache` is the {device: (tag, K_d)} table agent.protocol.seal fills and reads.
    """

    def __init__(self, fleet_key: bytes) -> None:
        self.fleet_key = fleet_key
        self.cache: dict[str, tuple[bytes, bytes]] = {}

    def key(self, device_id: str) -> bytes:
        tk = self.cache.get(device_id)
        if tk is None:
            tk = self.cache[device_id] = (P.device_tag(device_id),
                                          P.derive_device_key(self.fleet_key, device_id))
        return tk[1]


class SimOperator:
    """Signs the core's decisions, publishes them, and hands it what comes back."""

    def __init__(self, world: World, link: Any, fleet: str, keys: OperatorKeys,
                 plan: Any, seed: int) -> None:
        self.world = world
        self.link = link
        self.fleet = fleet
        self.keys = keys
        self.plan = plan
        self.rng = random.Random("%d:operator" % seed)  # command ids: reproducible runs
        self.seq = 0
        self.orch: Orchestrator | None = None
        self.buckets: Buckets | None = None
        self.published = 0             # messages the operator published
        self.published_bytes = 0
        self.status: dict[str, dict] = {}        # device -> its latest stage and online
        self.events: dict[str, int] = {}         # event name -> count
        self.acks = 0
        self.bad_reports = 0
        self.timeline: list[Decision] = []
        self.on_result: Any = None   # called with each wave result's dict (for the report)
        link.set_callbacks(self.on_message, None, None)
        for leaf in ("ack", "status", "event"):
            link.subscribe(P.device_wildcard(fleet, leaf), 1)

    # -- inbound -------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, retain: bool = False) -> None:
        parts = topic.split("/")  # fleetstage/FLEET/device/ID/LEAF
        if len(parts) != 5 or not payload:
            return
        device, leaf = parts[3], parts[4]
        try:
            body = P.decode_report(payload, key=self.keys.key(device), kind=leaf,
                                   device_id=device)
        except P.ProtocolError:
            self.bad_reports += 1
            return
        now = self.world.now_ms() / 1000
        orch = self.orch
        if leaf == "status":
            # what the inventory needs (the orchestrator keeps the whole status)
            known = self.status.setdefault(device, {})
            for k in ("stage", "online"):
                if k in body:
                    known[k] = body[k]
            if orch is not None:
                orch.on_status(device, body, now)
        elif leaf == "ack":
            self.acks += 1
            if orch is not None:
                orch.on_ack(device, body, now)
        elif leaf == "event":
            name = str(body.get("name"))
            self.events[name] = self.events.get(name, 0) + 1
            if orch is not None:
                raw = body.get("payload")
                orch.on_event(device, name, raw if isinstance(raw, dict) else {}, now)

    # -- outbound ------------------------------------------------------------
    def publish(self, decision: Send | Retain) -> None:
        orch = self.orch
        assert orch is not None
        self.wait_for_broker()
        wall = self.world.wall_time()
        if decision.command_id is None:
            self.seq = P.next_seq(self.seq, wall)
            cid, seq, issued = "%016x" % self.rng.getrandbits(64), self.seq, int(wall)
        else:
            cid, seq, issued = decision.command_id, int(decision.seq or 0), int(
                decision.issued_at or 0)
        orch.sent(decision.key, cid, seq, issued, self.world.now_ms() / 1000)
        plan, fleet, cache = self.plan, self.fleet, self.keys.cache
        assert self.buckets is not None
        for target, devices in plan_addressing(decision.devices, self.buckets):
            if isinstance(decision, Send):
                payload = P.encode_command(decision.op, decision.args, target, seq, plan.hash,
                                           self.keys.fleet_key, devices=devices,
                                           command_id=cid, issued_at=issued,
                                           max_stage=plan.max_stage, keys=cache, fleet=fleet)
                self.link.publish(P.cmd_topic(fleet, target), payload, 1, False)
            else:
                payload = P.encode_desired(target, decision.stage, seq, plan.hash,
                                           self.keys.fleet_key, devices=devices,
                                           command_id=cid, issued_at=issued,
                                           max_stage=plan.max_stage, keys=cache, fleet=fleet)
                self.link.publish(P.desired_topic(fleet, target), payload, 1, True)
            self.published += 1
            self.published_bytes += len(payload)

    def wait_for_broker(self) -> None:
        """An orchestrator does not publish into a dead broker: it waits, bounded."""
        waited = 0
        while not self.world.broker_up() and waited < BROKER_GIVE_UP_MS:
            self.world.run_for(BROKER_WAIT_MS)
            waited += BROKER_WAIT_MS
        if waited:
            self.note("broker", "operator waited %d s for the broker" % (waited // 1000))

    def note(self, kind: str, text: str, data: dict | None = None) -> None:
        self.timeline.append(Decision(self.world.now_ms(), kind, text, data or {}))

    # -- the loop --------------------------------------------------------------
    def run(self, spec: RolloutSpec, devices: dict[str, W.DeviceInfo]) -> Finished:
        """Drive the core until it finishes; time moves only inside world.run_for."""
        orch = self.orch = Orchestrator(spec, devices)
        self.buckets = Buckets(devices)
        while True:
            now = self.world.now_ms() / 1000
            until = None
            for d in orch.step(now):
                if isinstance(d, Finished):
                    self.note("finished", "%s: %s" % (d.outcome, d.reason),
                              {"outcome": d.outcome, "blamed": d.blamed})
                    return d
                if isinstance(d, Notice):
                    self.note(d.kind, d.text, _small(d.data))
                    if d.kind == "result" and self.on_result is not None:
                        self.on_result(d.data)
                elif isinstance(d, (Send, Retain)):
                    self.publish(d)
                elif isinstance(d, Wait):
                    until = d.until
            if until is None:
                continue  # it handed out a decision: ask again at once
            self.world.run_for(self._next_look() - self.world.now_ms())

    def _next_look(self) -> int:
        """The driver looks at the core on a fixed grid of virtual time (POLL_PHASE_MS
        into every POLL_MS), never just as a health check fires: the agents check on
        the 30 s grid, so what a check sends has arrived by the next look, on either
        transport, and both make the same decisions from the same reports."""
        now = self.world.now_ms()
        return now + POLL_MS - (now - POLL_PHASE_MS) % POLL_MS


def _small(data: dict) -> dict:
    """A notice's data without per-device lists (the report keeps the wave results)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, list) and len(v) > 20:
            out[k] = "%d items" % len(v)
        elif k in ("failing", "cohorts", "reasons"):
            continue
        else:
            out[k] = v
    return out
