"""Fan-out: one migrate command to N real agents, against the durable round-trip floor.

    python -m bench fanout                      N = 1,000 and 10,000
    python -m bench fanout --quick              N = 200
    FANOUT_SIZES=1000 python -m bench fanout    the sizes given
    FANOUT_AGED=66 python -m bench fanout       agents as long-lived devices (fanout_devices)

Measured: the time from publishing the command (as the rollout sends it: one
message per hash bucket, each signed for its devices, tools.bucketing) to the
last durable ack, where each of the N agents is a real AgentRuntime +
MigrationControl with its own state directory on disk (an ack leaves only
after the store commit's fsync). Every MQTT socket (agents, subscribers,
operator) is served by ONE selector loop (firmware_shim.mqtt_paho.MqttLoop)
in one thread, on one mosquitto.

The target's baseline, in the same run and process: the durable round-trip
floor, N raw paho subscribers that on the broadcast each append 40 bytes to
their own file, fsync it and publish a QoS 1 ack (FloorDevice): what any
durable acknowledgement through one broker and one disk costs at the least.
Also printed: both against the one-way raw fan-out (N subscribers that only
receive the same bytes), and a row with fsync reduced to a flush, which shows
the software's share. Target: <= 1.3x the floor.

Each round migrates every agent one stage (1, 2, 3, ...), between two floor
rounds and followed by three raw rounds, all with the same payload size, so
machine noise hits every side alike. Times are medians; the target row's ratio
is the median of each agent round against the mean of the floor rounds either
side of it (on a shared machine fsync costs drift by 2x within a minute).
No cyclic garbage collection runs inside a timed round, on any side (_OwnHeaps).

Under each target row: the CPU a device of each side's device processes, and
where the rounds' wall time went (fanout_shards.RoundCpu, /proc/PID/schedstat):
cores busy, cores' worth of waiting for a free core (other jobs on the
machine), the broker's share and, when sharded, the operator's.
"""
import gc
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from agent import protocol as P
from bench import fanout_shards
from bench.__main__ import figure
from bench.fanout_devices import (  # noqa: F401 - LoopOutbox, OutboxLink: bench's own API
    FLEET,
    BenchAgent,
    FloorDevice,
    LoopOutbox,
    OutboxLink,
    Ticker,
    _agent_fanout,
    _connect_all,
    _link,
    _raise_fd_limit,
)
from firmware_shim.files import FileSystem
from firmware_shim.mqtt_paho import MqttLoop
from tests.mqttkit import Broker

TARGET = 3.0          # the old target, against the one-way raw fan-out
FLOOR_TARGET = 1.3    # against the durable round-trip floor (FloorDevice)


class _OwnHeaps:
    """Around a timed round (every side alike): collect first, then no cyclic collection
    until it ends. N devices share one heap here, and a collection during a round walks
    the young objects of every device at once (measured: 35 ms a round at N=1,000, as
    much as 15% of it); on a fleet each device's collector walks its own small heap.
    Allocation is still paid in full."""

    def __enter__(self):
        gc.collect()
        gc.freeze()
        gc.disable()

    def __exit__(self, *exc):
        gc.enable()


def _raw_fanout(loop, publisher, subs, got, topic, payload):
    got.clear()
    t0 = time.perf_counter()
    publisher.publish(topic, payload, qos=1)
    if not loop.run_until(lambda: len(got) >= len(subs), 60):
        raise RuntimeError(f"raw fan-out: {len(got)}/{len(subs)} received")
    return time.perf_counter() - t0


def _floor_fanout(loop, publisher, floor, got, topic, payload):
    got.clear()
    t0 = time.perf_counter()
    publisher.publish(topic, payload, qos=1)
    if not loop.run_until(lambda: len(got) >= len(floor), 120):
        raise RuntimeError(f"floor: {len(got)}/{len(floor)} acks")
    return time.perf_counter() - t0


class FlushOnlyFileSystem(FileSystem):
    """Writes reach the file, but fsync only flushes: for the row that shows what the
    software costs once every device's flash works on its own, as on a real fleet."""

    def fsync(self, f):
        f.flush()


def _measure(n, pool_size, rounds, workdir, fs=None, with_floor=False, cpu=None):
    _raise_fd_limit(5 * n)  # agents' sockets and stores, raw and floor sockets and files
    broker = Broker(os.path.join(workdir, "mosq"), persist=False, extra=(
        "allow_anonymous true\nmax_inflight_messages 0\n")).start()
    loop = MqttLoop(misc_interval=1.0)
    pool = ThreadPoolExecutor(pool_size) if pool_size else None
    outbox = LoopOutbox(loop) if pool_size else None
    fleet_key = P.new_fleet_key()
    try:
        agents = [BenchAgent(broker, workdir, i, fleet_key, pool, outbox, fs)
                  for i in range(n)]
        for a in agents:
            loop.add(a.link)
            a.start()
        devices = [a.device_id for a in agents]
        acks: dict = {}

        def on_ack(topic, payload, retain):
            body = P.decode_report(payload)  # the MAC check is the operator's, not timed here
            k = (body.get("id"), body.get("result"))
            acks[k] = acks.get(k, 0) + 1
            if body.get("result") != P.APPLIED:
                acks.setdefault("why", []).append((body.get("device"), body.get("reason"),
                                                   body.get("detail")))

        operator = loop.add(_link(broker, "bench-operator"))
        operator.set_callbacks(on_message=on_ack)
        operator.subscribe(P.device_wildcard(FLEET, "ack"))
        operator.start()
        got = []
        subs = []
        raw_topic = "raw/fanout"
        for i in range(n):
            s = loop.add(_link(broker, f"raw{i:05d}"))
            s.set_callbacks(on_message=lambda t, p, r: got.append(len(p)))
            s.subscribe(raw_topic)
            s.start()
            subs.append(s)
        floor_got = []
        floor = []
        floor_topic = "floor/fanout"
        if with_floor:
            floor_dir = os.path.join(workdir, "floor")
            os.makedirs(floor_dir, exist_ok=True)
            for i in range(n):
                fd = FloorDevice(broker, floor_dir, i, "floor/ack/%05d")
                loop.add(fd.link)
                fd.link.subscribe(floor_topic)
                fd.link.start()
                floor.append(fd)
            operator.subscribe("floor/ack/+")
        operator.set_callbacks(on_message=lambda t, p, r: (
            floor_got.append(1) if t.startswith("floor/") else on_ack(t, p, r)))
        _connect_all(loop, [a.link for a in agents] + subs + [operator] +
                     [f.link for f in floor])
        plan_hash = agents[0].control.plan.hash
        ticker = Ticker(loop, agents)
        agent_times, raw_times, floor_times = [], [], []
        groups = {"devices": [os.getpid()], "broker": [broker.proc.pid]}
        agents_cpu, floor_cpu = fanout_shards.RoundCpu(groups), fanout_shards.RoundCpu(groups)
        payload = P.encode_command(P.OP_MIGRATE, {"stage": 1}, "all", 1, plan_hash, fleet_key,
                                   devices=devices, fleet=FLEET)
        _raw_fanout(loop, operator, subs, got, raw_topic, payload)  # warm-up, not counted
        for r in range(rounds):
            if floor:  # a floor sample on each side of every agent round
                with _OwnHeaps():
                    floor_times.append(floor_cpu.timed(lambda payload=payload: _floor_fanout(
                        loop, operator, floor, floor_got, floor_topic, payload)))
                loop.run_until(lambda: False, 0.2)
            with _OwnHeaps():
                t_agents, payload = agents_cpu.timed(lambda stage=r + 1: _agent_fanout(
                    ticker, operator, acks, fleet_key, devices, plan_hash, stage))
            agent_times.append(t_agents)
            ticker.run_until(lambda: False, 0.5)  # statuses/events go out; then quiet
            for _ in range(3):  # the raw side is cheap: sample it more, same bytes
                with _OwnHeaps():
                    raw_times.append(_raw_fanout(loop, operator, subs, got, raw_topic,
                                                 payload))
                loop.run_until(lambda: False, 0.05)
            if floor:
                with _OwnHeaps():
                    floor_times.append(floor_cpu.timed(lambda payload=payload: _floor_fanout(
                        loop, operator, floor, floor_got, floor_topic, payload)))
                loop.run_until(lambda: False, 0.2)
        if cpu is not None and floor:
            cpu["agents"], cpu["floor"] = agents_cpu.medians(), floor_cpu.medians()
        stages = {a.control.stage for a in agents}
        if stages != {rounds}:
            raise RuntimeError(f"agents ended at stages {sorted(stages)}, not {rounds}")
        t_floor = statistics.median(floor_times) if floor_times else None
        paired = None
        if floor_times:  # each agent round against the floor rounds either side of it
            paired = statistics.median(
                t / ((floor_times[2 * i] + floor_times[2 * i + 1]) / 2)
                for i, t in enumerate(agent_times))
        return (statistics.median(agent_times), statistics.median(raw_times), len(payload),
                t_floor, paired)
    finally:
        loop.close()
        for f in locals().get("floor", []):
            f.close()
        if pool is not None:
            pool.shutdown()
        if outbox is not None:
            outbox.close()
        for a in locals().get("agents", []):
            a.control.close()
        broker.stop()


def measure_floor(n, rounds=3):
    """The floor alone (for bench rollout): (median seconds from one broadcast to the
    last of n durable acks, peak memory of the processes holding them in MB, or None
    when that is this process)."""
    workdir = tempfile.mkdtemp(prefix="fleetstage-floor-", dir="/var/tmp")
    if fanout_shards.shards_needed(2, n) > 1:
        try:
            return fanout_shards.floor_only(n, rounds, workdir, b"x" * 600)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    _raise_fd_limit(2 * n)
    broker = Broker(os.path.join(workdir, "mosq"), persist=False, extra=(
        "allow_anonymous true\nmax_inflight_messages 0\n")).start()
    loop = MqttLoop(misc_interval=1.0)
    floor = []
    try:
        got = []
        operator = loop.add(_link(broker, "floor-operator"))
        operator.set_callbacks(on_message=lambda t, p, r: got.append(1))
        operator.subscribe("floor/ack/+")
        operator.start()
        for i in range(n):
            fd = FloorDevice(broker, workdir, i, "floor/ack/%05d")
            loop.add(fd.link)
            fd.link.subscribe("floor/fanout")
            fd.link.start()
            floor.append(fd)
        _connect_all(loop, [operator] + [f.link for f in floor])
        times = [_floor_fanout(loop, operator, floor, got, "floor/fanout", b"x" * 600)
                 for _ in range(rounds)]
        return statistics.median(times), None
    finally:
        loop.close()
        for f in floor:
            f.close()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _cpu_rows(n, cpu, t_agents, t_floor, sharded):
    """Where the rounds' time went: each side's device processes' CPU a device, and how
    busy each kind of process kept the machine's cores (run-queue waits: runnable, no
    core free). The operator shares the one process when not sharded."""
    rows = []
    a, f = cpu["agents"], cpu["floor"]
    who = "the 2+ shards" if sharded else "the one process (devices and operator)"

    def busy(c):
        text = "%.2f cores busy, %.2f waiting for a core; broker %.2f" % (
            c["devices"], c["devices_wait"], c["broker"])
        if sharded:
            text += ", operator %.2f" % c["operator"]
        return text

    rows.append(figure(f"  CPU a device, agents, {who}: {busy(a)}",
                       a["devices"] * t_agents / n * 1e6, "us",
                       f"floor: {busy(f)}", f["devices"] * t_floor / n * 1e6))
    return rows


def run(quick=False):
    sizes = [200] if quick else [1000, 10_000]
    rounds = 3 if quick else 4  # one stage per round: the plan has four
    if os.environ.get("FANOUT_SIZES"):
        sizes = [int(x) for x in os.environ["FANOUT_SIZES"].split(",")]
    rows = []
    for n in sizes:
        workdir = tempfile.mkdtemp(prefix="fleetstage-fanout-", dir="/var/tmp")
        # one process holds 5 descriptors a device; FANOUT_SHARDED=1 shards any size
        sharded = fanout_shards.shards_needed(5, n) > 1 or os.environ.get("FANOUT_SHARDED")
        try:
            cpu: dict = {}
            if sharded:
                t_agents, t_floor, size, paired = fanout_shards.measure(n, rounds, workdir, cpu)
                t_raw = None
            else:
                t_agents, t_raw, size, t_floor, paired = _measure(n, 0, rounds, workdir,
                                                                  with_floor=True, cpu=cpu)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        label = f"command -> last durable ack, N={n}"
        if sharded:  # how it ran (bench/fanout_shards.py); it has no raw side
            label += " (a mosquitto and 2+ processes a side)"
        row = figure(label, t_agents, "s",
                     f"floor: {n} paho subs, 40 B append + fsync + QoS1 ack", t_floor,
                     target=f"<= {FLOOR_TARGET}x", met=paired <= FLOOR_TARGET)
        row["ratio"] = paired  # the median of the rounds' own ratios (module docstring)
        rows.append(row)
        rows += _cpu_rows(n, cpu, t_agents, t_floor, sharded)
        if t_raw is not None:
            rows.append(figure(f"  the same, N={n}", t_agents, "s",
                               f"one-way raw paho fan-out, {size} B", t_raw))
            rows.append(figure(f"  the floor itself, N={n}", t_floor, "s",
                               f"one-way raw paho fan-out, {size} B", t_raw))
    # Where the time goes: the same run with fsync reduced to a flush. On one disk the
    # N fsyncs are serial; on a fleet each device has its own flash. Not the target row.
    n = sizes[0]
    if fanout_shards.shards_needed(5, n) > 1:
        return rows  # the flush row runs in one process only
    workdir = tempfile.mkdtemp(prefix="fleetstage-fanout-", dir="/var/tmp")
    try:
        t_agents, t_raw, size, _, _ = _measure(n, 0, rounds, workdir, FlushOnlyFileSystem())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows.append(figure(f"same, N={n}, fsync reduced to flush (per-device flash)", t_agents,
                       "s", f"one-way raw paho fan-out, N={n}, {size} B", t_raw))
    return rows
