"""The devices of bench fanout, shared by its one-process run (bench_fanout) and its
sharded run (fanout_shards): the agents as they are measured, the durable floor,
the loop ticker, and one timed agent round. See bench/bench_fanout.py.
"""
import collections
import os
import resource
import selectors
import socket
import threading
import time
from typing import Any

from agent import protocol as P
from agent.control import MigrationControl
from agent.runtime import AgentRuntime
from firmware_shim.files import FileSystem
from firmware_shim.machine import SystemClock
from firmware_shim.mqtt_paho import MqttConfig, PahoLink
from tools.bucketing import Buckets, plan_addressing

FLEET = "bench"
BROADCAST_MAX = 0     # commands go out as the rollout sends them: per hash bucket
# FANOUT_AGED=K: each agent first applies K signed flag commands (not timed), so it is
# measured as a long-lived device is: a full replay window (64), history, overrides
# set and cleared. 0 (the default): fresh devices, as the figures before it were.
AGED = int(os.environ.get("FANOUT_AGED", "0") or 0)


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
        if AGED:
            self._age(AGED, fleet_key)

    def _age(self, count, fleet_key):
        """Apply `count` signed set_flag/clear_flag commands through the real path, before
        the link is used (acks go nowhere) and with fsync reduced to a flush (setup only:
        what a long-lived device's store and window hold is the same either way)."""
        from agent.flags import FLAG_NAMES

        rt = self.runtime
        store: Any = self.control.store  # its fs is swapped for the aging only
        link, fs = rt.link, store.fs
        rt.link, store.fs = _NoLink(), _FlushOnly(fs)
        target = "device:" + self.device_id
        topic = P.cmd_topic(FLEET, target)
        plan_hash = self.control.plan.hash
        try:
            for k in range(count):
                if k < count - 1:
                    op, args = P.OP_SET_FLAG, {"name": FLAG_NAMES[0], "value": k % 2 == 0}
                else:  # the last one leaves no override behind
                    op, args = P.OP_CLEAR_FLAG, {"name": FLAG_NAMES[0]}
                rt.on_message(topic, P.encode_command(op, args, target, k + 1, plan_hash,
                                                      fleet_key, fleet=FLEET))
        finally:
            rt.link, store.fs = link, fs
        if rt.counters["applied"] != count:
            raise RuntimeError(f"{self.device_id}: aging applied {rt.counters['applied']} of "
                               f"{count} commands")

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


class _NoLink:
    connected = True

    def publish(self, topic, payload, qos=0, retain=False):
        pass


class _FlushOnly:
    """A file system whose fsync is a flush, over the real one (aging only)."""

    def __init__(self, fs):
        self._fs = fs

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def fsync(self, f):
        f.flush()


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
