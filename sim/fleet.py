"""The virtual-time fleet simulation: real agents, a virtual broker, a wave rollout.

Every simulated device is the real agent: MigrationControl (store, flags,
health, services) and AgentRuntime (protocol, replay guard, acks, status),
over a MemFS and a VirtualLink. The operator side signs real commands and
desired states with the fleet key and judges each wave only from what comes
back over the wire (acks, statuses, events), as the real orchestrator must.
The world misbehaves as the FaultProfile says.
"""
from __future__ import annotations

import heapq
import random
import time
from dataclasses import dataclass, field

from agent import protocol as P
from agent.control import MigrationControl
from agent.plan import Plan
from agent.runtime import DESIRED_RETRY_MS, AgentRuntime
from firmware_shim.clock import ManualClock
from sim.broker import VirtualBroker, VirtualLink
from sim.faults import BadCohort, FaultProfile
from sim.memfs import MemFS
from tools.strategy import WavePolicy, WaveResult, classify

SAMPLE_MS = 30_000         # the report's devices-per-stage timeline
MONITOR_MS = 30_000        # each agent's health check interval (the runbook's default)
STATUS_MS = 600_000        # the status heartbeat (a status also goes out on every change)
# Health reports are for dashboards; nothing in the simulator reads them, so a
# simulated agent sends one a day rather than paying for one a minute.
HEALTH_REPORT_MS = 86_400_000
ACK_TIMEOUT_MS = 60_000
REBOOT_MS = (5_000, 30_000)
# The agents' own thresholds: the Wilson lower bound keeps a healthy device's
# 0.5% errors from tripping the 5% rule on a few early samples (agent.health).
DEVICE_CONFIG: dict = {}
SETTLE_MS = 120_000        # after the last wave: time for reboots and desired-state retries
BROKER_WAIT_STEP_MS = 10_000  # how often an operator looks whether the broker is back
NEVER = 1 << 62


@dataclass
class SimSettings:
    devices: int = 500
    seed: int = 7
    fleet: str = "simfleet"
    soak_ms: int = 300_000          # how long each wave is watched before the next
    policy: WavePolicy = field(default_factory=WavePolicy)
    profile: FaultProfile = field(default_factory=FaultProfile)


class SkewedClock:
    """The fleet's virtual clock, seen by one device whose wall clock is off."""

    def __init__(self, base: ManualClock, skew_s: float) -> None:
        self.base = base
        self.skew_s = skew_s

    def monotonic_ms(self) -> int:
        return self.base.now_ms

    def wall_time(self) -> float:
        return self.base.wall_time() + self.skew_s


class SimDevice:
    """One real agent, woken only when it has something to do.

    A device wakes when a message reaches it (as a real agent's poll loop
    would tick right after), when its health check is due, and when a
    desired state it could not apply is due for a retry. On each wake it first
    records the calls its apps made since the last wake, spread over that time.
    """

    def __init__(self, sim: Simulation, index: int, device_id: str, groups: list[str],
                 cohort: BadCohort | None, skew_s: float) -> None:
        self.sim = sim
        self.index = index
        self.device_id = device_id
        self.groups = groups
        self.cohort = cohort
        self.fs = MemFS()
        self.clock = SkewedClock(sim.clock, skew_s)
        self.link = VirtualLink(sim.broker, device_id)
        self.key = sim.operator_keys.key(device_id)
        self.rng = random.Random("%d:%s" % (sim.settings.seed, device_id))
        self.power_cuts = 0
        self.down_until: int | None = None
        self.control: MigrationControl | None = None
        self.runtime: AgentRuntime | None = None
        self.next_wake = NEVER
        self.next_check = NEVER
        self.sampled_to = 0
        self.boot()

    def boot(self) -> None:
        now = self.sim.clock.now_ms
        self.control = MigrationControl.open("/state", config=DEVICE_CONFIG, clock=self.clock,
                                             fs=self.fs, log=self.sim.store_log)
        self.runtime = AgentRuntime(
            self.control, self.link, self.sim.settings.fleet, self.device_id, self.groups,
            key=self.key, clock=self.clock, health_interval_ms=HEALTH_REPORT_MS,
            status_interval_ms=STATUS_MS, monitor_interval_ms=MONITOR_MS)
        self.link.will = self.runtime.will()
        self.runtime.start()
        self.next_check = now + MONITOR_MS
        self.sampled_to = now
        on_message = self.link.on_message
        assert on_message is not None  # runtime.start() installed it

        def deliver(topic: str, payload: bytes, retain: bool = False) -> None:
            rate = self.sim.settings.profile.power_cut_rate
            if rate and self.rng.random() < rate:
                self.fs.arm_cut(self.rng.randint(0, 48))
            on_message(topic, payload, retain)
            if self.fs.dead:
                self.lose_power()
            else:
                self.sim.wake(self, self.sim.clock.now_ms)

        self.link.on_message = deliver
        if self.sim.broker.up:
            self.link.connect()
        self.sim.wake(self, self.next_check)

    def lose_power(self) -> None:
        self.power_cuts += 1
        self.sim.counters["power_cuts"] += 1
        self.link.drop()
        self.runtime = None
        self.control = None
        self.fs.power_cut()
        self.down_until = self.sim.clock.now_ms + self.rng.randint(*REBOOT_MS)
        self.sim.wake(self, self.down_until)

    def _record_traffic(self, control: MigrationControl, now: int) -> None:
        """The calls the apps made since the last wake, at their own times."""
        traffic = self.sim.settings.profile.traffic
        gap = int(1000 / traffic.calls_per_s)
        t = self.sampled_to + gap
        if t > now:
            return
        err, lat = traffic.error_rate, traffic.latency_ms
        c = self.cohort
        if c is not None and control.stage >= c.from_stage:
            err, lat = c.error_rate, lat * c.latency_factor
        spread = traffic.latency_jitter * lat
        rnd = self.rng.random
        record = control.health.record_outcome
        while t <= now:
            record(rnd() >= err, lat + spread * (2 * rnd() - 1), t)
            t += gap
        self.sampled_to = t - gap

    def wake_up(self, now: int) -> None:
        self.next_wake = NEVER
        control, runtime = self.control, self.runtime
        if control is None or runtime is None:
            if self.down_until is not None:
                if now >= self.down_until:
                    self.down_until = None
                    self.boot()
                else:
                    self.sim.wake(self, self.down_until)
            return
        self._record_traffic(control, now)
        runtime.tick()
        if self.fs.dead:
            self.lose_power()
            return
        if now >= self.next_check:  # the agent's own rule: the next check is due a period on
            self.next_check = now + MONITOR_MS
        due = self.next_check
        # a desired state the device could not apply yet (a storage error) is retried
        if runtime._pending_desired is not None:
            due = min(due, now + DESIRED_RETRY_MS)
        self.sim.wake(self, due)


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


class Operator:
    """The rollout orchestrator's view: signs commands, reads reports."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.link = VirtualLink(sim.broker, "operator")
        self.seq = 0
        self.acks: dict[str, dict[str, dict]] = {}   # command id -> device -> ack body
        self.status: dict[str, dict] = {}            # device -> latest status body
        self.events: list[tuple[int, str, str]] = []
        self.bad_reports = 0
        fleet = sim.settings.fleet
        self.link.set_callbacks(self.on_message, None, None)
        for leaf in ("ack", "status", "event"):
            self.link.subscribe(P.device_wildcard(fleet, leaf), 1)
        self.link.connect()

    def on_message(self, topic: str, payload: bytes, retain: bool = False) -> None:
        try:
            sender = topic.split("/")[-2]  # fleetstage/FLEET/device/ID/LEAF
            body = P.decode_report(payload, key=self.sim.operator_keys.key(sender),
                                   device_id=sender)
        except (P.ReportError, P.ProtocolError):
            self.bad_reports += 1
            return
        device = body["device"]
        kind = body["kind"]
        if kind == "ack":
            self.acks.setdefault(body["id"], {})[device] = body
        elif kind == "status":
            prev = self.status.get(device, {})
            merged = dict(prev)
            merged.update(body)
            self.status[device] = merged
        elif kind == "event":
            self.events.append((self.sim.clock.now_ms, device, body.get("name", "?")))

    def send(self, op: str, args: dict, target: str, devices: list[str], stage: int) -> str:
        self.seq = P.next_seq(self.seq, self.sim.clock.wall_time())
        plan_hash = self.sim.plan_hash
        key = self.sim.fleet_key
        command_id = P.new_command_id()
        keys = self.sim.operator_keys.cache
        desired = P.encode_desired(target, stage, self.seq, plan_hash, key, devices=devices,
                                   emergency=(op == "emergency_rollback"), keys=keys)
        fleet = self.sim.settings.fleet
        if self.sim.broker.up:
            self.link.publish(P.desired_topic(fleet, target), desired, 1, True)
            self.seq = P.next_seq(self.seq, self.sim.clock.wall_time())
            cmd = P.encode_command(op, args, target, self.seq, plan_hash, key, devices=devices,
                                   command_id=command_id, keys=keys)
            self.link.publish(P.cmd_topic(fleet, target), cmd, 1, False)
        return command_id


class Simulation:
    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.clock = ManualClock(start_ms=0, wall_start=1_800_000_000.0)
        prof = settings.profile
        self.broker = VirtualBroker(self.rng, prof.latency_ms, prof.loss)
        self.fleet_key = bytes(self.rng.getrandbits(8) for _ in range(32))
        self.operator_keys = OperatorKeys(self.fleet_key)
        self.wakeups: list[tuple[int, int, SimDevice]] = []  # (when, index, device), a heap
        self.next_sample = 0
        self.counters = {"power_cuts": 0, "store_log_lines": 0}
        self.store_log_tail: list[str] = []
        self.timeline: list[dict] = []
        self.waves: list[WaveResult] = []
        ids = ["gw-%05d" % i for i in range(settings.devices)]
        self.wave_of = {}
        for w, members in enumerate(settings.policy.split(ids), 1):
            for d in members:
                self.wave_of[d] = w
        self.wave_count = max(self.wave_of.values())
        self.devices: list[SimDevice] = []
        for i, d in enumerate(ids):
            cohort = None
            for c in prof.cohorts:
                if self.rng.random() < c.fraction:
                    cohort = c
            groups = ["wave-%d" % self.wave_of[d]] + ([cohort.name] if cohort else [])
            skew = self.rng.uniform(-prof.clock_skew_s, prof.clock_skew_s)
            self.devices.append(SimDevice(self, i, d, groups, cohort, skew))
        self.plan = Plan.default()
        self.plan_hash = self.plan.hash
        self.stages = self.plan.max_stage
        self.operator = Operator(self)
        self.outages = sorted(prof.broker_outages)

    def store_log(self, msg: str) -> None:
        """Devices' store recovery lines: counted and kept (the last 20) for the report."""
        self.counters["store_log_lines"] += 1
        self.store_log_tail = (self.store_log_tail + [msg])[-20:]

    # the event loop ----------------------------------------------------------
    def wake(self, dev: SimDevice, when: int) -> None:
        """Wake `dev` at `when` (or earlier, if it is already due earlier)."""
        if when < dev.next_wake:
            dev.next_wake = when
            heapq.heappush(self.wakeups, (when, dev.index, dev))

    def _next_event(self, end: int) -> int:
        t = end
        if self.broker.queue and self.broker.queue[0][0] < t:
            t = self.broker.queue[0][0]
        if self.wakeups and self.wakeups[0][0] < t:
            t = self.wakeups[0][0]
        if self.next_sample < t:
            t = self.next_sample
        for start, stop in self.outages:
            for edge in (start, stop):
                if self.clock.now_ms < edge < t:
                    t = edge
        return max(t, self.clock.now_ms)

    def run_for(self, ms: int) -> None:
        """Deliver messages and wake devices in time order until `ms` from now."""
        end = self.clock.now_ms + ms
        while True:
            t = self._next_event(end)
            self.clock.advance(t - self.clock.now_ms)
            self._outages()
            self.broker.deliver_until(t)
            wakeups = self.wakeups
            while wakeups and wakeups[0][0] <= t:
                when, _i, dev = heapq.heappop(wakeups)
                if when == dev.next_wake:  # else a stale entry: it was moved earlier
                    dev.wake_up(t)
            if t >= self.next_sample:
                self._sample()
                self.next_sample = t + SAMPLE_MS
            if t >= end and not (self.broker.queue and self.broker.queue[0][0] <= t) and not (
                    wakeups and wakeups[0][0] <= t):
                return

    def _outages(self) -> None:
        now = self.clock.now_ms
        for start, end in self.outages:
            if start <= now < end and self.broker.up:
                self.broker.go_down()
                self.timeline.append({"t_ms": now, "event": "broker down"})
            elif now >= end and not self.broker.up and not any(
                    s <= now < e for s, e in self.outages):
                links = [d.link for d in self.devices if d.control is not None]
                self.broker.come_up([self.operator.link] + links)
                self.timeline.append({"t_ms": now, "event": "broker up"})

    def _sample(self) -> None:
        counts = [0] * (self.stages + 1)
        for dev in self.devices:
            if dev.control is not None:
                counts[dev.control.stage] += 1
        self.timeline.append({"t_ms": self.clock.now_ms, "stages": counts})

    # the rollout -------------------------------------------------------------
    def rollout(self) -> str:
        for stage in range(1, self.stages + 1):
            for wave in range(1, self.wave_count + 1):
                members = sorted(d for d, w in self.wave_of.items() if w == wave)
                target = "group:wave-%d" % wave
                self.wait_for_broker()
                cid = self.operator.send("migrate", {"stage": stage}, target, members, stage)
                self.run_for(ACK_TIMEOUT_MS)
                self.run_for(self.settings.soak_ms)
                result = self._judge(stage, wave, cid, members)
                self.waves.append(result)
                if result.halted:
                    self._halt(stage, wave)
                    return "halted at stage %d wave %d: %s" % (stage, wave, result.why)
        self.run_for(SETTLE_MS)  # devices still rebooting converge from the desired state
        behind = sum(1 for d in self.devices
                     if d.control is None or d.control.stage != self.stages)
        if behind:
            return "completed all waves; %d devices not at stage %d" % (behind, self.stages)
        return "completed: every device at stage %d" % self.stages

    def wait_for_broker(self, limit_ms: int = 3_600_000) -> None:
        """An orchestrator does not publish into a dead broker: it waits, bounded."""
        waited = 0
        while not self.broker.up and waited < limit_ms:
            self.run_for(BROKER_WAIT_STEP_MS)
            waited += BROKER_WAIT_STEP_MS
        if waited:
            why = "operator waited %d s for the broker" % (waited // 1000)
            self.timeline.append({"t_ms": self.clock.now_ms, "event": why})

    def _judge(self, stage: int, wave: int, cid: str, members: list[str]) -> WaveResult:
        return classify(self.settings.policy, stage, wave, members,
                        self.operator.acks.get(cid, {}), self.operator.status)

    def _halt(self, stage: int, wave: int) -> None:
        """Roll back every wave that reached `stage`, through the same signed path."""
        self.wait_for_broker()
        for w in range(1, wave + 1):
            members = sorted(d for d, x in self.wave_of.items() if x == w)
            self.operator.send("rollback", {"stage": stage - 1}, "group:wave-%d" % w, members,
                               stage - 1)
        self.run_for(ACK_TIMEOUT_MS + self.settings.soak_ms)

    # the verdict ---------------------------------------------------------------
    def booted_devices(self) -> list[tuple[SimDevice, MigrationControl]]:
        """Every device with its control; one still rebooting boots from its flash now."""
        out = []
        for dev in self.devices:
            if dev.control is None:
                dev.fs.power_cut()
                dev.boot()
            assert dev.control is not None
            out.append((dev, dev.control))
        return out

    def check_consistency(self) -> list[str]:
        """Each device's flags are exactly its stage's flags, and flash agrees with memory."""
        problems = []
        for dev, control in self.booted_devices():
            st = control.status()
            on = self.plan.flags_for_stage(st["current_stage"])
            want = {name: on.get(name, False) for name in st["flags"]}
            want.update(st["overrides"])
            if st["flags"] != want:
                problems.append("%s: stage %d with flags %s" % (
                    dev.device_id, st["current_stage"], st["flags"]))
            # what a reboot would find must be what the device shows now
            reopened = MigrationControl.open("/state", config=DEVICE_CONFIG, clock=dev.clock,
                                             fs=dev.fs, log=self.store_log)
            if reopened.stage != control.stage or reopened.flags.values() != st["flags"]:
                problems.append("%s: flash holds stage %d, memory %d" % (
                    dev.device_id, reopened.stage, control.stage))
            reopened.services.close()
        return problems


def run(settings: SimSettings) -> dict:
    started = time.perf_counter()
    sim = Simulation(settings)
    setup_s = time.perf_counter() - started
    outcome = sim.rollout()
    problems = sim.check_consistency()
    wall_s = time.perf_counter() - started
    final = [0] * (sim.stages + 1)
    quarantined = auto_rollbacks = stores_recovered = 0
    for _dev, control in sim.booted_devices():
        st = control.status()
        final[st["current_stage"]] += 1
        quarantined += st["quarantine"] is not None
        auto_rollbacks += sum(st["auto_rollbacks"].values())
        stores_recovered += bool(control.store.stats().get("recovered"))
    events: dict[str, int] = {}
    for _t, _d, name in sim.operator.events:
        events[name] = events.get(name, 0) + 1
    return {
        "settings": {"devices": settings.devices, "seed": settings.seed,
                     "profile": settings.profile.name, "waves": list(settings.policy.waves),
                     "soak_ms": settings.soak_ms,
                     "max_failure_ratio": settings.policy.max_failure_ratio},
        "outcome": outcome,
        "consistent": not problems,
        "problems": problems[:50],
        "virtual_time_s": sim.clock.now_ms / 1000,
        "wall_time_s": round(wall_s, 2),
        "setup_s": round(setup_s, 2),
        "final_stages": final,
        "cohorts": {c.name: sum(1 for d in sim.devices if d.cohort is c)
                    for c in settings.profile.cohorts},
        "waves": [vars(w) | {"failed": w.failed} for w in sim.waves],
        "auto_rollbacks": auto_rollbacks,
        "quarantined": quarantined,
        "power_cuts": sim.counters["power_cuts"],
        "stores_recovered_after_cut": stores_recovered,
        "store_log_lines": sim.counters["store_log_lines"],
        "store_log_tail": sim.store_log_tail,
        "events": events,
        "broker": dict(sim.broker.counters),
        "bad_reports": sim.operator.bad_reports,
        "timeline": [t for t in sim.timeline if "stages" in t][:: max(1, len(sim.timeline) // 400)],
        "incidents": [t for t in sim.timeline if "event" in t],
    }
