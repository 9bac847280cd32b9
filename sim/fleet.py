"""The virtual-time fleet simulation: real agents, a virtual broker, a wave rollout.

Every simulated device is the real agent: MigrationControl (store, flags,
health, services) and AgentRuntime (protocol, replay guard, acks, status),
over a MemFS and a VirtualLink. The operator side signs real commands and
desired states with the fleet key and judges each wave only from what comes
back over the wire (acks, statuses, events), as the real orchestrator must.
The world misbehaves as the FaultProfile says.
"""
from __future__ import annotations

import gc
import heapq
import math
import random
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable

from agent.config import Config
from agent.control import MigrationControl
from agent.desired import WAITING
from agent.plan import Plan
from agent.runtime import DESIRED_RETRY_MS, AgentRuntime
from firmware_shim.machine import ManualClock
from sim import report
from sim.broker import LinkFaults, VirtualBroker, VirtualLink
from sim.driver import OperatorKeys, SimOperator
from sim.faults import PROFILES, BadCohort, Draws, FaultProfile
from sim.memfs import MemFS
from tools import waves as W
from tools.orchestrator import RolloutSpec, soak_from_plan

SAMPLE_MS = 30_000         # the report's devices-per-stage timeline
MONITOR_MS = 30_000        # each agent's health check interval (the runbook's default)
STATUS_MS = 600_000        # the status heartbeat (a status also goes out on every change)
# Health reports are for dashboards; nothing in the simulator reads them, so a
# simulated agent sends one a day rather than paying for one a minute.
HEALTH_REPORT_MS = 86_400_000
ACK_TIMEOUT_MS = 60_000
REBOOT_MS = (5_000, 30_000)
# The agents' own thresholds: the Wilson lower bound and min_errors keep a healthy
# device's 0.5% errors from tripping the 5% rule on a few early samples (agent.health).
DEVICE_CONFIG: dict = {}
SETTLE_MS = 120_000        # after the last wave: time for reboots and desired-state retries
NEVER = 1 << 62
WALL_START = 1_800_000_000.0  # the fleet's wall clock when a run begins
HEALTHY_HW = "rev-a"
# Each app call's latency is uniform within +-latency_jitter of its mean. They are drawn
# once a run into a table of this many, and each wake takes its calls' latencies as one
# stretch of it at a random place: the same distribution as a draw a call, for one draw
# a wake (each device's window holds ~10 stretches of ~15 from 65,536)
LATENCY_TABLE = 65_536
GC_YOUNG = 20_000          # allocations between two young collections (CPython's default: 700)


def _index(dev: SimDevice) -> int:
    return dev.index


@dataclass
class SimSettings:
    devices: int = 500
    seed: int = 7
    fleet: str = "simfleet"
    soak_ms: int = 300_000          # how long each wave is watched before the next
    waves: str = W.DEFAULT_WAVES    # as `fleetstage rollout --waves`
    error_threshold: str = "5%"     # as `--error-threshold`: a share or a count
    success: float = 0.95           # as `--success`
    on_failure: str = "rollback"
    profile: FaultProfile = field(default_factory=lambda: PROFILES["default"])

    def spec(self, plan: Plan) -> RolloutSpec:
        """The rollout `fleetstage rollout` would run with the same options."""
        return RolloutSpec(to_stage=plan.max_stage, waves=W.parse_waves(self.waves),
                           soak_s=soak_from_plan(plan, fixed=self.soak_ms / 1000),
                           ack_timeout_s=ACK_TIMEOUT_MS / 1000, success=self.success,
                           error=W.parse_threshold(self.error_threshold),
                           on_failure=self.on_failure)


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

    def __init__(self, sim: Simulation, index: int, device_id: str,
                 cohort: BadCohort | None, skew_s: float) -> None:
        self.sim = sim
        self.index = index
        self.device_id = device_id
        self.cohort = cohort
        self.hw = cohort.name if cohort is not None else HEALTHY_HW
        self.groups = [self.hw]  # the fleet's inventory groups devices by hardware
        self.fs = MemFS()
        self.clock = SkewedClock(sim.clock, skew_s)
        seed = sim.settings.seed
        # power cuts, the virtual broker's loss and delay on this device's messages, and
        # the apps' traffic each draw from their own source, so none shifts another (and
        # the same power cuts hit the same devices on both transports)
        self.rng = Draws("%d:%s:faults" % (seed, device_id))  # power cuts, reboots
        prof = sim.settings.profile
        self.faults_in = LinkFaults(Draws("%d:%s:in" % (seed, device_id)),
                                    prof.latency_ms, prof.loss)
        self.faults_out = LinkFaults(Draws("%d:%s:out" % (seed, device_id)),
                                     prof.latency_ms, prof.loss)
        self.traffic_rng = random.Random("%d:%s:traffic" % (seed, device_id))
        self.error_rate = -1.0  # the apps' failure rate good_left was drawn at (none yet)
        self.good_left = 0      # calls that succeed before the apps' next failure
        self.link: Any = None  # the world's: a VirtualLink, or a session on a real broker
        self.key = sim.operator_keys.key(device_id)
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
        self.control = MigrationControl.open("/state", config=self.sim.device_config,
                                             clock=self.clock, fs=self.fs,
                                             plan=self.sim.plan, log=self.sim.store_log)
        self.link = self.sim.link_for(self)
        self.runtime = AgentRuntime(
            self.control, self.link, self.sim.settings.fleet, self.device_id, self.groups,
            key=self.key, clock=self.clock, health_interval_ms=HEALTH_REPORT_MS,
            status_interval_ms=STATUS_MS, monitor_interval_ms=MONITOR_MS)
        self.runtime.start()
        self.next_check = now + MONITOR_MS
        # the apps' calls: a fixed grid, half a gap off the health checks' 30 s grid, so
        # the calls a check records all fall in one bucket of the health window
        gap = self.sim.call_gap_ms
        self.sampled_to = now - (now - gap // 2) % gap
        on_message = self.sim.delivery_of(self.link)  # what runtime.start() installed

        def deliver(topic: str, payload: bytes, retain: bool = False) -> None:
            if self.control is not None:  # what the apps did up to this moment
                self._record_traffic(self.control, self.sim.clock.now_ms)
            rate = self.sim.settings.profile.power_cut_rate
            if rate and self.rng.random() < rate:
                self.fs.arm_cut(self.rng.randint(0, 48))
            on_message(topic, payload, retain)
            if self.fs.dead:
                self.sim.unacked(self, topic, payload, retain)
                self.lose_power()
            else:
                self.sim.wake(self, self.sim.clock.now_ms)

        self.sim.set_delivery(self.link, deliver)
        self.sim.go_online(self, self.runtime.will())
        self.sim.wake(self, self.next_check)

    def lose_power(self) -> None:
        self.power_cuts += 1
        self.sim.counters["power_cuts"] += 1
        self.sim.go_offline(self)
        self.runtime = None
        self.control = None
        self.fs.power_cut()
        self.down_until = self.sim.clock.now_ms + self.rng.randint(*REBOOT_MS)
        self.sim.wake(self, self.down_until)

    def _record_traffic(self, control: MigrationControl, now: int) -> None:
        """The calls the apps made since the last look, recorded together (as a statsd
        flush would be), but each in the health window's bucket of its own call time:
        one record_calls a bucket it touches (one or two), never one per call. The
        window then holds exactly what per-call records would give it."""
        traffic = self.sim.traffic
        gap = self.sim.call_gap_ms
        first = self.sampled_to + gap  # the first call not recorded yet
        n = (now - self.sampled_to) // gap
        if n <= 0:
            return
        self.sampled_to += n * gap
        err, lat = traffic.error_rate, traffic.latency_ms
        c = self.cohort
        if c is not None and control.stage >= c.from_stage:
            err, lat = c.error_rate, lat * c.latency_factor
        table = self.sim.latencies.get(lat)
        if table is None:
            table = self.sim.latency_table(lat)
        # n calls' latencies: a stretch of the table at a random place (n uniform draws)
        at = int(self.traffic_rng.random() * (LATENCY_TABLE - n)) if n < LATENCY_TABLE else 0
        latencies = table[at:at + n]
        if len(latencies) < n:  # more calls than the table holds (a very long gap)
            latencies = (table * (n // LATENCY_TABLE + 1))[:n]
        # Which calls fail: a Bernoulli process at rate err, drawn as the run of good
        # calls before the next failure (geometric; it has no memory, so a new rate
        # draws a new run), one draw a failure rather than one a call.
        if err != self.error_rate:
            self.error_rate = err
            self.good_left = self._good_run(err)
        failed: list[int] = []  # the failing calls' places in this batch
        pos = self.good_left
        while pos < n:
            failed.append(pos)
            pos += 1 + self._good_run(err)
        self.good_left = pos - n
        health = control.health
        bucket_ms = health.bucket_ms
        last = first + (n - 1) * gap
        if first // bucket_ms == last // bucket_ms:  # the usual case: one bucket
            health.record_calls(n, len(failed), latencies, last)
            return
        done = 0
        while done < n:
            t = first + done * gap
            ends = t - t % bucket_ms + bucket_ms  # the calls before this go in t's bucket
            upto = done + min(n - done, (ends - t + gap - 1) // gap)
            health.record_calls(upto - done, len([i for i in failed if done <= i < upto]),
                                latencies[done:upto], first + (upto - 1) * gap)
            done = upto

    def _good_run(self, err: float) -> int:
        """How many calls succeed before the next failure, at failure rate err."""
        if err <= 0.0:
            return NEVER
        if err >= 1.0:
            return 0
        return int(math.log(1.0 - self.traffic_rng.random()) / math.log(1.0 - err))

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
        if runtime.desired.state == WAITING:
            due = min(due, now + DESIRED_RETRY_MS)
        self.sim.wake(self, due)


class Simulation:
    """The world: a fleet of real agents, a virtual broker, virtual time, and faults.

    Every random choice about a device (its cohort, clock skew, power cuts,
    what happens to messages to and from it, its apps' traffic) comes from
    random sources seeded by (seed, device id), so the same faults hit the
    same devices whatever order the world runs them in.
    """

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        prof = settings.profile
        self.clock: Any = ManualClock(start_ms=0, wall_start=WALL_START)
        self.broker = VirtualBroker(self.rng, prof.latency_ms, prof.loss)
        self.setup_transport()
        self.fleet_key = bytes(self.rng.getrandbits(8) for _ in range(32))
        self.operator_keys = OperatorKeys(self.fleet_key)
        # devices to wake, by time: most wake together (the fleet boots together, and
        # checks health on one 30 s grid), so a heap of times and a list a time
        self.wake_at: dict[int, list[SimDevice]] = {}
        self.wake_times: list[int] = []  # the keys of wake_at, a heap
        self.next_sample = 0
        self.counters = {"power_cuts": 0, "store_log_lines": 0}
        self.store_log_tail: list[str] = []
        self.timeline: list[dict] = []
        # one plan and one config object for the whole fleet (each agent only reads them)
        self.plan = Plan.default()
        self.device_config = Config.coerce(DEVICE_CONFIG)
        self.plan_hash = self.plan.hash
        self.stages = self.plan.max_stage
        self.outages = sorted(prof.broker_outages)
        self.traffic = prof.traffic
        self.call_gap_ms = int(1000 / prof.traffic.calls_per_s)
        # mean latency -> its table, as the health window keeps latencies (4-byte
        # floats): a wake's stretch is copied into the window's reservoir as bytes
        self.latencies: dict[float, array] = {}
        self.devices: list[SimDevice] = []
        for i in range(settings.devices):
            device_id = "gw-%05d" % i
            pick = random.Random("%d:%s:profile" % (settings.seed, device_id))
            cohort = None
            for c in prof.cohorts:
                if pick.random() < c.fraction:
                    cohort = c
            skew = pick.uniform(-prof.clock_skew_s, prof.clock_skew_s)
            self.devices.append(SimDevice(self, i, device_id, cohort, skew))
        self.operator_link = self.make_operator_link()
        self.operator = SimOperator(self, self.operator_link, settings.fleet,
                                    self.operator_keys, self.plan, settings.seed)
        self.connect_operator()
        self.by_id = {dev.device_id: dev for dev in self.devices}
        self.device_thresholds = dict(self.devices[0].control.config.thresholds) if (
            self.devices and self.devices[0].control) else {}
        self.baseline_p95: float | None = None
        self.wave_health: list[dict] = []
        self.operator.on_result = self._wave_health

    def latency_table(self, mean_ms: float) -> array:
        """LATENCY_TABLE latencies uniform within +-latency_jitter of mean_ms (seeded), as
        4-byte floats (what the health window would round each to)."""
        spread = self.traffic.latency_jitter * mean_ms
        low, width = mean_ms - spread, 2 * spread
        rnd = random.Random("%d:latencies:%r" % (self.settings.seed, mean_ms)).random
        table = self.latencies[mean_ms] = array(
            "f", [low + width * rnd() for _ in range(LATENCY_TABLE)])
        return table

    def fleet_latency_p95(self) -> float | None:
        """The 95th percentile of the devices' own p95 latencies now (before a rollout:
        the baseline the report draws each wave's latency against)."""
        now = self.clock.now_ms
        p95s = sorted(p for p in (dev.control.health.snapshot(now)["latency_p95"]
                                  for dev in self.devices if dev.control is not None)
                      if p is not None)
        return p95s[int(0.95 * (len(p95s) - 1))] if p95s else None

    def _wave_health(self, result: dict) -> None:
        """The health the wave's own devices measured when it was judged, for the report's
        plots (the operator's decisions come from the wire, never from here)."""
        orch = self.operator.orch
        assert orch is not None
        now = self.clock.now_ms
        samples = errors = 0
        p95s = []
        for d in orch.waves[result["wave"] - 1]:
            control = self.by_id[d].control
            if control is None:
                continue
            snap = control.health.snapshot(now)
            samples += snap["samples"]
            errors += snap["errors"]
            if snap["latency_p95"] is not None:
                p95s.append(snap["latency_p95"])
        p95s.sort()
        self.wave_health.append({
            "stage": result["stage"], "wave": result["wave"], "t_ms": now,
            "samples": samples, "error_rate": errors / samples if samples else None,
            "latency_p95": p95s[int(0.95 * (len(p95s) - 1))] if p95s else None})

    # the transport: a virtual broker here (sim.mqtt_transport: a real one) ------
    mode = "virtual"

    def setup_transport(self) -> None:
        pass

    def make_operator_link(self) -> Any:
        return VirtualLink(self.broker, "operator")

    def connect_operator(self) -> None:
        self.operator_link.connect()

    # a device's link, as the world provides it ---------------------------------
    def link_for(self, dev: SimDevice) -> Any:
        if dev.link is None:
            dev.link = VirtualLink(self.broker, dev.device_id, dev.faults_in, dev.faults_out)
            dev.link.powered = lambda: not dev.fs.dead
            dev.link.persistent = True  # the agent's default: clean_session false
        return dev.link

    def delivery_of(self, link: Any) -> Callable:
        assert link.on_message is not None
        return link.on_message

    def set_delivery(self, link: Any, deliver: Callable) -> None:
        link.on_message = deliver

    def go_online(self, dev: SimDevice, will: tuple[str, bytes]) -> None:
        dev.link.will = will
        if self.broker.up:
            dev.link.connect()

    def go_offline(self, dev: SimDevice) -> None:
        dev.link.drop()

    def unacked(self, dev: SimDevice, topic: str, payload: bytes, retain: bool) -> None:
        self.broker.unacked(dev.link, topic, payload, retain)

    # the world, as the operator's driver sees it ----------------------------
    def now_ms(self) -> int:
        return self.clock.now_ms

    def wall_time(self) -> float:
        return self.clock.wall_time()

    def broker_up(self) -> bool:
        return self.broker.up

    def inventory(self) -> dict[str, W.DeviceInfo]:
        """What the operator knows before it starts: each device's groups and hardware."""
        out = {}
        for dev in self.devices:
            st = self.operator.status.get(dev.device_id, {})
            stage = st.get("stage") if isinstance(st.get("stage"), int) else None
            online = st.get("online") if isinstance(st.get("online"), bool) else None
            out[dev.device_id] = W.DeviceInfo(groups=tuple(dev.groups), hw=dev.hw,
                                              online=online, stage=stage)
        return out

    def store_log(self, msg: str) -> None:
        """Devices' store recovery lines: counted and kept (the last 20) for the report."""
        self.counters["store_log_lines"] += 1
        self.store_log_tail = (self.store_log_tail + [msg])[-20:]

    # the event loop ----------------------------------------------------------
    def wake(self, dev: SimDevice, when: int) -> None:
        """Wake `dev` at `when` (or earlier, if it is already due earlier)."""
        if when < dev.next_wake:
            dev.next_wake = when
            due = self.wake_at.get(when)
            if due is None:
                self.wake_at[when] = [dev]
                heapq.heappush(self.wake_times, when)
            else:
                due.append(dev)

    def next_wake_ms(self, default: int) -> int:
        return self.wake_times[0] if self.wake_times else default

    def wake_due(self, t: int) -> None:
        """Wake every device due by t: in time order, and at one time in device order."""
        times = self.wake_times
        while times and times[0] <= t:
            when = heapq.heappop(times)
            due = self.wake_at.pop(when)
            due.sort(key=_index)  # already in order unless a later device moved earlier
            for dev in due:
                if when == dev.next_wake:  # else a stale entry: it was moved earlier
                    dev.wake_up(t)

    def _next_event(self, end: int) -> int:
        t = end
        if self.broker.queue and self.broker.queue[0][0] < t:
            t = self.broker.queue[0][0]
        if self.wake_times and self.wake_times[0] < t:
            t = self.wake_times[0]
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
            self.wake_due(t)
            if t >= self.next_sample:
                self._sample()
                self.next_sample = t + SAMPLE_MS
            if t >= end and not (self.broker.queue and self.broker.queue[0][0] <= t) and not (
                    self.wake_times and self.wake_times[0] <= t):
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
            reopened = MigrationControl.open("/state", config=self.device_config,
                                             clock=dev.clock, fs=dev.fs, plan=self.plan,
                                             log=self.store_log)
            if reopened.stage != control.stage or reopened.flags.values() != st["flags"]:
                problems.append("%s: flash holds stage %d, memory %d" % (
                    dev.device_id, reopened.stage, control.stage))
            if reopened.services is not None:  # always set by open()
                reopened.services.close()
        return problems


def run(settings: SimSettings, world: Callable[[SimSettings], Simulation] | None = None
        ) -> dict:
    """One rollout on a simulated fleet; the report (sim.report's contract) as a dict."""
    started = time.perf_counter()
    threshold = gc.get_threshold()
    # A fleet is millions of objects that live the whole run, and every health check
    # makes a few dozen that die at once: collect the young ones less often, and keep
    # the fleet itself out of the collector's scans (gc.freeze) once it is built.
    gc.set_threshold(GC_YOUNG, *threshold[1:])
    try:
        sim = (world or Simulation)(settings)
        gc.freeze()
        spec = settings.spec(sim.plan)
        sim.run_for(ACK_TIMEOUT_MS // 2)  # the fleet reports in; the operator reads statuses
        sim.baseline_p95 = sim.fleet_latency_p95()
        finished = sim.operator.run(spec, sim.inventory())
        sim.run_for(SETTLE_MS)  # devices still rebooting converge from their desired state
        problems = sim.check_consistency()
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    return report.build(sim, finished, problems, wall_s=time.perf_counter() - started,
                        mode=sim.mode)
