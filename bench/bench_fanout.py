"""Fan-out: one migrate command to N real agents, against the durable round-trip floor.

    python -m bench fanout                      N = 1,000 and 10,000
    python -m bench fanout --quick              N = 200
    FANOUT_SIZES=1000 python -m bench fanout    the sizes given

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
"""
import collections
import gc
import os
import resource
import selectors
import shutil
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from agent import protocol as P
from agent.control import MigrationControl
from agent.runtime import AgentRuntime
from bench.__main__ import figure
from firmware_shim.clock import SystemClock
from firmware_shim.files import FileSystem
from firmware_shim.mqtt_paho import MqttConfig, MqttLoop, PahoLink
from tests.mqttkit import Broker
from tools.bucketing import Buckets, plan_addressing

FLEET = "bench"
TARGET = 3.0          # the old target, against the one-way raw fan-out
FLOOR_TARGET = 1.3    # against the durable round-trip floor (FloorDevice)
BROADCAST_MAX = 0     # commands go out as the rollout sends them: per hash bucket


def _raise_fd_limit(n):
    """At least n descriptors for this process and the broker it starts (which inherits
    the limit). Root may raise the hard limit too (10,000 devices need ~50,000 here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n + 256)
    if want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):  # not root: as far as the hard limit goes
            want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _link(broker, cid):
    return PahoLink(MqttConfig(broker.host, broker.port, client_id=cid, keepalive=120,
                               backoff_min=0.2, backoff_max=2.0))


class LoopOutbox:
    """Publishes made on flash threads, carried over to the loop thread.

    A paho client must be driven from one thread: a publish from a pool thread
    races with the loop thread's write path (paho's write-interest flag can be
    cleared just after the other thread queued a packet, and that ack then sits
    in the client's queue). That lost wake-up is what made `--quick` fail once
    with "199/200 acks": the wait was long enough, the ack never left. So the
    pool threads only queue here and wake the loop through a socket pair; the
    loop thread does every publish.
    """

    def __init__(self, loop):
        self.items: collections.deque = collections.deque()
        self.errors = 0
        self.thread = threading.get_ident()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._client = self  # MqttLoop asks key.data._client.socket() before writes
        loop._sel.register(self._r, selectors.EVENT_READ, self)

    def socket(self):
        return self._r

    def post(self, link, topic, payload, qos, retain):
        self.items.append((link, topic, payload, qos, retain))
        try:
            self._w.send(b"!")
        except BlockingIOError:
            pass  # the loop has wake-ups pending already

    def _read(self):
        try:
            while self._r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self.items:
            link, topic, payload, qos, retain = self.items.popleft()
            try:
                link.publish(topic, payload, qos, retain)
            except Exception:  # noqa: BLE001 - counted; the run then fails on a missing ack
                self.errors += 1

    def close(self):
        self._r.close()
        self._w.close()


class OutboxLink:
    """The runtime's view of a link whose publishes may come from a flash thread."""

    def __init__(self, link, outbox):
        self.link, self.outbox = link, outbox

    @property
    def connected(self):
        return self.link.connected

    def set_callbacks(self, *args):
        self.link.set_callbacks(*args)

    def subscribe(self, topic, qos=1):
        self.link.subscribe(topic, qos)

    def publish(self, topic, payload, qos=0, retain=False):
        if threading.get_ident() == self.outbox.thread:
            self.link.publish(topic, payload, qos, retain)
        else:
            self.outbox.post(self.link, topic, payload, qos, retain)


class BenchAgent:
    """One device: runtime + control + link; its message handling may go to a pool."""

    def __init__(self, broker, root, i, fleet_key, pool, outbox=None, fs=None):
        self.device_id = f"dev{i:05d}"
        self.control = MigrationControl.open(os.path.join(root, self.device_id),
                                             fs or FileSystem(), SystemClock())
        self.link = _link(broker, self.device_id)
        rt_link = self.link if outbox is None else OutboxLink(self.link, outbox)
        self.runtime = AgentRuntime(self.control, rt_link, FLEET, self.device_id,
                                    key=P.derive_device_key(fleet_key, self.device_id),
                                    health_interval_ms=10**9, status_interval_ms=10**9)
        self.pool = pool
        self.lock = threading.Lock()

    def start(self):
        self.runtime.start()
        if self.pool is not None:
            self.link.set_callbacks(self._to_pool, self.runtime.on_connect,
                                    self.runtime.on_disconnect)
        self.link.start()

    def _to_pool(self, topic, payload, retain):
        self.pool.submit(self._handle, topic, payload, retain)

    def _handle(self, topic, payload, retain):
        with self.lock:  # one message at a time per device, as on the device
            self.runtime.on_message(topic, payload, retain)

    def tick(self):
        with self.lock:
            self.runtime.tick()


class Ticker:
    """Runs the loop and ticks every agent every 100 ms, as each agent's own loop would.

    One thread stands in for N devices' CPUs, so it serves sockets first: the
    periodic work (deferred events and statuses, health) runs when the loop is
    idle, or when it is a full second late. On a fleet, device A's status
    report never delays device B's ack; FIFO in one thread would pretend it does.
    """

    def __init__(self, loop, agents, interval=0.1, max_late=5.0):
        self.loop, self.agents = loop, agents
        self.interval, self.max_late = interval, max_late
        self.next = 0.0

    def run_until(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        busy = True
        while not predicate():
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= self.next and (not busy or now >= self.next + self.max_late):
                self.next = now + self.interval
                for a in self.agents:
                    a.tick()
            busy = self.loop.run_once(0.01) > 0
        return True


def _connect_all(loop, links, timeout=120):
    if not loop.run_until(lambda: all(lk.connected for lk in links), timeout):
        n = sum(1 for lk in links if lk.connected)
        raise RuntimeError(f"only {n}/{len(links)} links connected")
    for _ in range(20):  # let SUBACKs and retained statuses settle
        loop.run_once(0.02)


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


class FloorDevice:
    """The durable round-trip floor: a raw paho subscriber that, on the broadcast, appends
    40 bytes to its own file, fsyncs it and publishes a QoS 1 ack. No decode, no MAC, no
    state machine: what any durable acknowledgement costs at the least."""

    RECORD = b"x" * 39 + b"\n"

    def __init__(self, broker, workdir, i, acks_topic):
        self.link = _link(broker, f"floor{i:05d}")
        self.fd = os.open(os.path.join(workdir, f"floor{i:05d}.log"),
                          os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.ack_topic = acks_topic % i
        self.link.set_callbacks(on_message=self.on_message)

    def on_message(self, topic, payload, retain):
        os.write(self.fd, self.RECORD)
        os.fsync(self.fd)
        self.link.publish(self.ack_topic, b"ok", qos=1)

    def close(self):
        os.close(self.fd)


def _floor_fanout(loop, publisher, floor, got, topic, payload):
    got.clear()
    t0 = time.perf_counter()
    publisher.publish(topic, payload, qos=1)
    if not loop.run_until(lambda: len(got) >= len(floor), 120):
        raise RuntimeError(f"floor: {len(got)}/{len(floor)} acks")
    return time.perf_counter() - t0


def _agent_fanout(ticker, operator, acks, fleet_key, devices, plan_hash, stage):
    acks.clear()
    seq = P.next_seq(0, time.time())
    cid = P.new_command_id()
    if len(devices) <= BROADCAST_MAX:  # one message on cmd/all, a MAC for every device
        plan = [("all", devices)]
    else:  # the rollout's addressing: one message per hash bucket, <= 256 MACs each
        plan = plan_addressing(devices, Buckets(devices))
    messages = [(P.cmd_topic(FLEET, target), P.encode_command(
        P.OP_MIGRATE, {"stage": stage}, target, seq, plan_hash, fleet_key, devices=members,
        command_id=cid, fleet=FLEET)) for target, members in plan]
    payload = max((m[1] for m in messages), key=len)
    t0 = time.perf_counter()
    for topic, data in messages:
        operator.publish(topic, data, qos=1)
    if not ticker.run_until(lambda: acks.get((cid, P.APPLIED), 0) >= len(devices), 120):
        other = {k[1]: v for k, v in acks.items() if k[0] == cid and k[1] != P.APPLIED}
        why = (acks.get("why") or [])[:5]
        raise RuntimeError(f"agents: {acks.get((cid, P.APPLIED), 0)}/{len(devices)} acks "
                           f"applied; other results: {other}; first reasons: {why}")
    return time.perf_counter() - t0, payload


class FlushOnlyFileSystem(FileSystem):
    """Writes reach the file, but fsync only flushes: for the row that shows what the
    software costs once every device's flash works on its own, as on a real fleet."""

    def fsync(self, f):
        f.flush()


def _measure(n, pool_size, rounds, workdir, fs=None, with_floor=False):
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
        payload = P.encode_command(P.OP_MIGRATE, {"stage": 1}, "all", 1, plan_hash, fleet_key,
                                   devices=devices, fleet=FLEET)
        _raw_fanout(loop, operator, subs, got, raw_topic, payload)  # warm-up, not counted
        for r in range(rounds):
            if floor:  # a floor sample on each side of every agent round
                with _OwnHeaps():
                    floor_times.append(_floor_fanout(loop, operator, floor, floor_got,
                                                     floor_topic, payload))
                loop.run_until(lambda: False, 0.2)
            with _OwnHeaps():
                t_agents, payload = _agent_fanout(ticker, operator, acks, fleet_key, devices,
                                                  plan_hash, r + 1)
            agent_times.append(t_agents)
            ticker.run_until(lambda: False, 0.5)  # statuses/events go out; then quiet
            for _ in range(3):  # the raw side is cheap: sample it more, same bytes
                with _OwnHeaps():
                    raw_times.append(_raw_fanout(loop, operator, subs, got, raw_topic,
                                                 payload))
                loop.run_until(lambda: False, 0.05)
            if floor:
                with _OwnHeaps():
                    floor_times.append(_floor_fanout(loop, operator, floor, floor_got,
                                                     floor_topic, payload))
                loop.run_until(lambda: False, 0.2)
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
    from bench import fanout_shards

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


def run(quick=False):
    from bench import fanout_shards
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
            if sharded:
                t_agents, t_floor, size, paired = fanout_shards.measure(n, rounds, workdir)
                t_raw = None
            else:
                t_agents, t_raw, size, t_floor, paired = _measure(n, 0, rounds, workdir,
                                                                  with_floor=True)
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
