"""Fan-out at fleet sizes one process cannot hold: each side split over child processes.

A process here may hold 20,000 descriptors (the hard limit; raising it needs
CAP_SYS_RESOURCE, which this machine does not give), and so may one mosquitto.
N agents need 2N (a socket and a store file each), N floor devices 2N, and
the broker N connections a side. So above ~3,900 devices (bench_fanout's one
process needs 5N) the measurement runs like this, the same for both sides:

- one mosquitto per side, started from the same config, each holding its own
  N sessions and one operator's (only one side has traffic at any time);
- each side's devices split evenly over the same number of child processes
  (`python -m bench.fanout_shards SIDE ...`), each serving its share on one
  selector loop in one thread, as bench_fanout's single process does;
- the operator in the parent: it publishes (the agents' command per hash
  bucket, the floor's one broadcast) and times to the last ack, as before.

The parent drives the children over their stdin, one word a line, each
answered "ok": `begin` (collect, freeze, no cyclic GC until `end`: the same
as bench_fanout's _OwnHeaps), `end`, `settle` (agents only: half a second of
ticks, so held statuses and events go out, as bench_fanout does after each
round), `stop` (the agents answer with the stages they ended at).
"""
from __future__ import annotations

import gc
import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from typing import Any

from agent import protocol as P
from bench.fanout_devices import (
    FLEET,
    BenchAgent,
    FloorDevice,
    Ticker,
    _agent_fanout,
    _connect_all,
    _link,
    _raise_fd_limit,
)
from firmware_shim.mqtt_paho import MqttLoop
from tests.mqttkit import Broker

FLOOR_TOPIC = "floor/fanout"
FLOOR_ACKS = "floor/ack/%05d"
BROKER_EXTRA = "allow_anonymous true\nmax_inflight_messages 0\n"
HARD_LIMIT_SLACK = 512


def sched_seconds(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's main
    thread so far (Linux /proc/PID/schedstat, ns); (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on_cpu, waiting = f.read().split()[:2]
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


class RoundCpu:
    """Where timed rounds' wall time went, for groups of processes ("devices": a side's
    shards or the one bench process, "broker", "operator"): CPU seconds and run-queue
    waits, as cores (seconds / wall seconds) and medians over the rounds."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.samples: list[dict[str, float]] = []

    def _now(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name, pids in self.groups.items():
            times = [sched_seconds(pid) for pid in pids]
            out[name] = (sum(t[0] for t in times), sum(t[1] for t in times))
        return out

    def timed(self, fn: Any) -> Any:
        """Runs fn(), which returns its wall seconds (or a tuple starting with them)."""
        before = self._now()
        result = fn()
        after = self._now()
        wall = result[0] if isinstance(result, tuple) else result
        sample = {}
        for name in self.groups:
            sample[name] = (after[name][0] - before[name][0]) / wall
            sample[name + "_wait"] = (after[name][1] - before[name][1]) / wall
        self.samples.append(sample)
        return result

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(s[k] for s in self.samples) for k in self.samples[0]}


def shards_needed(per_device_fds: int, n: int) -> int:
    """How many processes hold n devices of per_device_fds descriptors each."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    room = max(1000, hard - HARD_LIMIT_SLACK)
    return max(1, -(-per_device_fds * n // room))


class _Where:
    """What _link needs of a broker: its address."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


class _Control:
    """The child's stdin on its selector loop (MqttLoop asks key.data._read())."""

    def __init__(self, loop: MqttLoop) -> None:
        self.words: list[str] = []
        self._buf = b""
        self._client = self
        os.set_blocking(0, False)
        loop._sel.register(0, selectors.EVENT_READ, self)

    def socket(self) -> int:
        return 0

    def _read(self) -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        if not data:
            self.words.append("stop")
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        self.words += [w.decode().strip() for w in lines if w.strip()]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def child(side: str, host: str, port: int, lo: int, hi: int, key_hex: str,
          workdir: str) -> None:
    """One shard: devices lo..hi-1 of one side, served until `stop`."""
    _raise_fd_limit(2 * (hi - lo) + 64)
    where = _Where(host, port)
    loop = MqttLoop(misc_interval=1.0)
    agents: list[BenchAgent] = []
    floor: list[FloorDevice] = []
    if side == "agents":
        key = bytes.fromhex(key_hex)
        agents = [BenchAgent(where, workdir, i, key, None) for i in range(lo, hi)]
        for a in agents:
            loop.add(a.link)
            a.start()
        links = [a.link for a in agents]
    else:
        for i in range(lo, hi):
            fd = FloorDevice(where, workdir, i, FLOOR_ACKS)
            loop.add(fd.link)
            fd.link.subscribe(FLOOR_TOPIC)
            fd.link.start()
            floor.append(fd)
        links = [f.link for f in floor]
    _connect_all(loop, links, timeout=600)
    control = _Control(loop)
    ticker = Ticker(loop, agents)
    _say("ready")
    while True:
        loop.run_once(0.05)
        while control.words:
            word = control.words.pop(0)
            if word == "begin":
                gc.collect()
                gc.freeze()
                gc.disable()
            elif word == "end":
                gc.enable()
            elif word == "settle":
                ticker.run_until(lambda: False, 0.5)
            elif word == "stop":
                import resource
                _say(json.dumps({"stages": sorted({a.control.stage for a in agents}),
                                 "rss_mb": resource.getrusage(
                                     resource.RUSAGE_SELF).ru_maxrss / 1024}))
                loop.close()
                for a in agents:
                    a.control.close()
                for f in floor:
                    f.close()
                return
            _say("ok")


class Side:
    """The parent's handle on one side: its broker, its children, its operator link."""

    def __init__(self, name: str, n: int, shards: int, workdir: str, fleet_key: bytes) -> None:
        self.name, self.n = name, n
        os.makedirs(os.path.join(workdir, name), exist_ok=True)
        self.broker = Broker(os.path.join(workdir, "mosq-" + name), persist=False,
                             extra=BROKER_EXTRA).start()
        per = -(-n // shards)
        self.children = []
        for lo in range(0, n, per):
            self.children.append(subprocess.Popen(
                [sys.executable, "-m", "bench.fanout_shards", name, self.broker.host,
                 str(self.broker.port), str(lo), str(min(n, lo + per)), fleet_key.hex(),
                 os.path.join(workdir, name)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))

    def wait_ready(self) -> None:
        for c in self.children:
            line = c.stdout.readline() if c.stdout else ""
            if line.strip() != "ready":
                raise RuntimeError(f"{self.name} shard did not start (exit {c.poll()})")

    def tell(self, word: str) -> list[str]:
        for c in self.children:
            assert c.stdin is not None
            c.stdin.write(word + "\n")
            c.stdin.flush()
        return [c.stdout.readline().strip() if c.stdout else "" for c in self.children]

    def pids(self) -> dict[str, list[int]]:
        return {"devices": [c.pid for c in self.children], "broker": [self.broker.proc.pid]}

    def close(self) -> None:
        for c in self.children:
            if c.poll() is None:
                c.kill()
            c.wait()
        self.broker.stop()


def measure(n: int, rounds: int, workdir: str,
            cpu: dict[str, dict[str, float]] | None = None) -> tuple[float, float, int, float]:
    """(median agent round, median floor round, payload bytes, paired ratio) at n devices,
    with both sides sharded alike. cpu, when given, gets each side's RoundCpu medians."""
    shards = max(shards_needed(2, n), 2)
    _raise_fd_limit(4 * n)  # not more than the hard limit: each broker holds one side
    fleet_key = P.new_fleet_key()
    sides: dict[str, Side] = {}
    loop = MqttLoop(misc_interval=1.0)
    try:
        for name in ("agents", "floor"):
            sides[name] = Side(name, n, shards, workdir, fleet_key)
        for side in sides.values():
            side.wait_ready()
        acks: dict[Any, Any] = {}
        floor_got: list[int] = []

        def on_ack(topic: str, payload: bytes, retain: bool) -> None:
            body = P.decode_report(payload)  # as bench_fanout: the MAC check is not timed
            k = (body.get("id"), body.get("result"))
            acks[k] = acks.get(k, 0) + 1

        op_agents = loop.add(_link(sides["agents"].broker, "bench-operator"))
        op_agents.set_callbacks(on_message=on_ack)
        op_agents.subscribe(P.device_wildcard(FLEET, "ack"))
        op_floor = loop.add(_link(sides["floor"].broker, "floor-operator"))
        op_floor.set_callbacks(on_message=lambda t, p, r: floor_got.append(1))
        op_floor.subscribe("floor/ack/+")
        for op in (op_agents, op_floor):
            op.start()
        _connect_all(loop, [op_agents, op_floor])
        from agent.plan import Plan
        plan_hash = Plan.default().hash
        devices = [f"dev{i:05d}" for i in range(n)]
        ticker = Ticker(loop, [])
        agent_times: list[float] = []
        floor_times: list[float] = []
        payload = b""

        me = {"operator": [os.getpid()]}
        floor_cpu = RoundCpu({**sides["floor"].pids(), **me})
        agents_cpu = RoundCpu({**sides["agents"].pids(), **me})

        def floor_once() -> float:
            floor_got.clear()
            t0 = time.perf_counter()
            op_floor.publish(FLOOR_TOPIC, payload or b"x" * 1975, qos=1)
            if not loop.run_until(lambda: len(floor_got) >= n, 300):
                raise RuntimeError(f"floor: {len(floor_got)}/{n} acks")
            return time.perf_counter() - t0

        def floor_round() -> None:
            sides["floor"].tell("begin")
            floor_times.append(floor_cpu.timed(floor_once))
            sides["floor"].tell("end")
            loop.run_until(lambda: False, 0.2)

        for r in range(rounds):
            if r == 0:  # the first floor round needs the agents' payload size: take it
                from tools.bucketing import Buckets, plan_addressing
                target, members = max(plan_addressing(devices, Buckets(devices)),
                                      key=lambda x: len(x[1]))
                payload = P.encode_command(P.OP_MIGRATE, {"stage": 1}, target, 1, plan_hash,
                                           fleet_key, devices=members, fleet=FLEET)
            floor_round()
            sides["agents"].tell("begin")
            out: list[bytes] = []

            def agents_once(stage: int = r + 1, out: list[bytes] = out) -> float:
                t, data = _agent_fanout(ticker, op_agents, acks, fleet_key, devices, plan_hash,
                                        stage)
                out.append(data)
                return t

            agent_times.append(agents_cpu.timed(agents_once))
            payload = out[0]
            sides["agents"].tell("end")
            sides["agents"].tell("settle")
            loop.run_until(lambda: False, 0.5)
            floor_round()
        stages = set()
        for line in sides["agents"].tell("stop"):
            stages.update(json.loads(line)["stages"])
        if stages != {rounds}:
            raise RuntimeError(f"agents ended at stages {sorted(stages)}, not {rounds}")
        paired = statistics.median(t / ((floor_times[2 * i] + floor_times[2 * i + 1]) / 2)
                                   for i, t in enumerate(agent_times))
        if cpu is not None:
            cpu["agents"], cpu["floor"] = agents_cpu.medians(), floor_cpu.medians()
        return (statistics.median(agent_times), statistics.median(floor_times), len(payload),
                paired)
    finally:
        loop.close()
        for side in sides.values():
            side.close()


def floor_only(n: int, rounds: int, workdir: str, payload: bytes) -> tuple[float, float]:
    """The floor alone, sharded like measure(): (median seconds to the last of n acks,
    the shards' peak memory added up, MB)."""
    side = Side("floor", n, max(shards_needed(2, n), 2), workdir, bytes(32))
    loop = MqttLoop(misc_interval=1.0)
    try:
        side.wait_ready()
        got: list[int] = []
        op = loop.add(_link(side.broker, "floor-operator"))
        op.set_callbacks(on_message=lambda t, p, r: got.append(1))
        op.subscribe("floor/ack/+")
        op.start()
        _connect_all(loop, [op])
        times = []
        for _ in range(rounds):
            side.tell("begin")
            got.clear()
            t0 = time.perf_counter()
            op.publish(FLOOR_TOPIC, payload, qos=1)
            if not loop.run_until(lambda: len(got) >= n, 300):
                raise RuntimeError(f"floor: {len(got)}/{n} acks")
            times.append(time.perf_counter() - t0)
            side.tell("end")
        rss = sum(json.loads(line)["rss_mb"] for line in side.tell("stop"))
        return statistics.median(times), rss
    finally:
        loop.close()
        side.close()


if __name__ == "__main__":
    a = sys.argv[1:]
    child(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), a[5], a[6])
