"""`fleetstage sim --transport mqtt`: the same fleet and rollout, over a real MQTT broker.

Every simulated device is the same real agent as in virtual mode, but it
holds its own MQTT session through the project's paho adapter
(firmware_shim.mqtt_paho.PahoLink): its own client id, its last will, its
subscriptions, clean_session false (the agent's default). One selector loop
(MqttLoop) drives every session and the operator's in one thread. With no
--broker an embedded broker (amqtt) runs in this process on a free loopback
port; with --broker mqtt://HOST:PORT the run goes through that broker
(mosquitto, or a cluster).

Time: the fleet's clock runs SCALE times faster than the wall clock, so the
plan's monitoring times are seconds (a 5-minute soak takes 10 s at the
default 30x). A power cut drops the device's connection without a DISCONNECT
(the broker publishes its will); the message it was handling comes again
after the reboot, as its session would send it. Every message to or from a
device is also held back by the same seeded delay the virtual broker gives
it (its latency, and the resend after a lost QoS 1 packet), so the same
faults hit the same devices on both transports.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from typing import Any, Callable

from firmware_shim.mqtt_paho import (
    MqttConfig,
    MqttLoop,
    MqttNotConnected,
    PahoLink,
    free_port,
    parse_broker_url,
)
from sim.fleet import SAMPLE_MS, WALL_START, SimDevice, SimSettings, Simulation, run

BROKER_ANSWER_S = 5.0
# amqtt matches every message against every subscription (18 a device, with the hash
# buckets) and keeps no session for an anonymous client: fine for a few dozen devices
EMBEDDED_MAX_DEVICES = 50
SCALE = 30.0   # virtual milliseconds per real millisecond (a 5-minute soak: 10 s)
CONNECT_TIMEOUT_S = 30.0  # every session connected, or the run is refused


class MqttSetupError(Exception):
    """The broker could not be reached or started; the text says what to do."""


class ScaledClock:
    """Virtual time that runs SCALE times faster than the host's monotonic clock."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.t0: float | None = None  # stands at 0 until start(): the fleet boots at 0

    def start(self) -> None:
        self.t0 = time.monotonic()

    @property
    def now_ms(self) -> int:
        if self.t0 is None:
            return 0
        return int((time.monotonic() - self.t0) * 1000 * self.scale)

    def wall_time(self) -> float:
        return WALL_START + self.now_ms / 1000

    def real_s(self, virtual_ms: float) -> float:
        return virtual_ms / 1000 / self.scale


class EmbeddedBroker:
    """amqtt's broker on a free loopback port, in its own thread and event loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="amqtt", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(CONNECT_TIMEOUT_S) or self._error is not None:
            raise MqttSetupError("the embedded MQTT broker (amqtt) did not start: %s; give "
                                 "--broker mqtt://HOST:PORT of a running broker" % (
                                     self._error or "timed out"))

    def _main(self) -> None:
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            from amqtt.broker import Broker
            config = {"listeners": {"default": {"type": "tcp",
                                                "bind": "127.0.0.1:%d" % self.port,
                                                "max_connections": 0}},
                      "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                                  {"allow_anonymous": True}}}
            self._broker = Broker(config, loop=loop)
            loop.run_until_complete(self._broker.start())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._broker is None or not loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop).result(10)
        except Exception:  # noqa: BLE001 - shutting down: nothing left to save
            pass
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)


class PoweredLink:
    """A device's PahoLink as its runtime sees it: nothing leaves once the device has
    lost power (the virtual link has the same rule), and what it sends is late by the
    device's own seeded draws (the virtual broker's), so both transports agree."""

    def __init__(self, world: MqttWorld, dev: SimDevice, link: PahoLink) -> None:
        self.world = world
        self.dev = dev
        self.link = link

    @property
    def connected(self) -> bool:
        return self.link.connected

    def set_callbacks(self, on_message: Any = None, on_connect: Any = None,
                      on_disconnect: Any = None) -> None:
        self.link.set_callbacks(on_message, on_connect, on_disconnect)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.link.subscribe(topic, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if self.dev.fs.dead:
            raise MqttNotConnected("no power: nothing leaves a device after its power is cut")
        if not self.link.connected:
            raise MqttNotConnected("link down: cannot publish to %s" % topic)
        self.world.send_later(self.dev, self.link, topic, payload, qos, retain)


class MqttWorld(Simulation):
    """The simulator's world with every device on a real broker, in scaled real time."""

    mode = "mqtt"

    def __init__(self, settings: SimSettings, broker_url: str | None = None,
                 scale: float = SCALE) -> None:
        self.broker_url = broker_url
        self.scale = scale
        self.embedded: EmbeddedBroker | None = None
        super().__init__(settings)

    # -- the transport ---------------------------------------------------------
    def setup_transport(self) -> None:
        self.inbound: list = []     # (due, n, device, topic, payload, retain): a heap
        self.outbound: list = []    # (due, n, link, topic, payload, qos, retain): a heap
        self.last_in: dict[int, int] = {}
        self.last_out: dict[int, int] = {}
        self.held: dict[int, list] = {}
        self.deliver_fn: dict[int, Callable] = {}
        self._n = 0
        self.clock = ScaledClock(self.scale)
        self.loop = MqttLoop(misc_interval=0.5)
        if self.broker_url is None:
            self.embedded = EmbeddedBroker()
            self.embedded.start()
            self.host, self.port = "127.0.0.1", self.embedded.port
        else:
            try:
                parsed = parse_broker_url(self.broker_url)
            except Exception as exc:  # noqa: BLE001 - the adapter's config error, one line
                raise MqttSetupError("bad --broker %r: %s" % (self.broker_url, exc)) from None
            if parsed[2]:
                raise MqttSetupError("--broker: the simulator speaks mqtt:// only (its "
                                     "devices have no certificates)")
            self.host, self.port = parsed[0], parsed[1]

    def _config(self, client_id: str, clean: bool) -> MqttConfig:
        return MqttConfig(self.host, self.port, client_id=client_id, keepalive=120,
                          clean_session=clean, backoff_min=0.05, backoff_max=1.0)

    def make_operator_link(self) -> PahoLink:
        return PahoLink(self._config("sim-operator-%d" % self.settings.seed, True))

    def connect_operator(self) -> None:
        link = self.operator_link
        self.loop.add(link)
        link.start()
        if not self.loop.run_until(lambda: link.connected, BROKER_ANSWER_S):
            self.close()
            if "not authorised" in str(link.last_error or ""):
                raise MqttSetupError(
                    "the MQTT broker at %s:%d refused the simulator's anonymous clients (not "
                    "authorised): --broker needs a mosquitto with allow_anonymous true, not "
                    "the fleet's broker; or leave out --broker for the embedded one" % (
                        self.host, self.port))
            raise MqttSetupError("no MQTT broker answers at %s:%d (%s); start one, or leave "
                                 "out --broker for the embedded one" % (
                                     self.host, self.port, link.last_error or "no answer"))
        everyone = [self.operator_link] + [d.link.link for d in self.devices]
        if not self.loop.run_until(lambda: all(lk.connected for lk in everyone),
                                   CONNECT_TIMEOUT_S):
            down = sum(1 for lk in everyone if not lk.connected)
            self.close()
            raise MqttSetupError("%d of %d MQTT sessions could not connect to %s:%d (%s)" % (
                down, len(everyone), self.host, self.port,
                next((lk.last_error for lk in everyone if lk.last_error), "no answer")))
        for _ in range(50):  # SUBACKs and retained messages settle before time starts
            self.loop.run_once(0.02)
        self.clock.start()

    def link_for(self, dev: SimDevice) -> Any:
        # every boot is a new connection, with the device's own client id: the broker
        # resumes its session (clean_session false) and so its subscriptions and messages
        return PoweredLink(self, dev, PahoLink(self._config(dev.device_id, False)))

    def delivery_of(self, link: Any) -> Callable:
        return link.link._on_message

    def set_delivery(self, link: Any, deliver: Callable) -> None:
        dev = link.dev
        self.deliver_fn[dev.index] = deliver

        def arrived(topic: str, payload: bytes, retain: bool = False) -> None:
            self.receive_later(dev, topic, payload, retain)

        link.link._on_message = arrived

    def go_online(self, dev: SimDevice, will: tuple[str, bytes]) -> None:
        dev.link.link.set_will(*will)
        self.loop.add(dev.link.link)
        dev.link.link.start()
        held, self.held[dev.index] = self.held.get(dev.index, []), []
        for topic, payload, retain in held:  # the session's messages, after the reboot
            self.receive_later(dev, topic, payload, retain)

    def go_offline(self, dev: SimDevice) -> None:
        dev.link.link.abort()

    def unacked(self, dev: SimDevice, topic: str, payload: bytes, retain: bool) -> None:
        # it reached the device (the broker has its PUBACK) but the device died handling
        # it: the session would send it again, and so does this one after the reboot
        self.held.setdefault(dev.index, []).insert(0, (topic, payload, retain))

    # -- the same delays as the virtual broker's -------------------------------
    def receive_later(self, dev: SimDevice, topic: str, payload: bytes, retain: bool) -> None:
        delay = dev.faults_in.delay(1)
        due = max(self.clock.now_ms + (delay or 0), self.last_in.get(dev.index, 0))
        self.last_in[dev.index] = due
        self._n += 1
        heapq.heappush(self.inbound, (due, self._n, dev, topic, payload, retain))

    def send_later(self, dev: SimDevice, link: PahoLink, topic: str, payload: bytes,
                   qos: int, retain: bool) -> None:
        delay = dev.faults_out.delay(qos)
        if delay is None:
            return  # a lost QoS 0 message
        due = max(self.clock.now_ms + delay, self.last_out.get(dev.index, 0))
        self.last_out[dev.index] = due
        self._n += 1
        heapq.heappush(self.outbound, (due, self._n, link, topic, payload, qos, retain))

    def _due_messages(self, now: int) -> None:
        while self.outbound and self.outbound[0][0] <= now:
            _due, _n, link, topic, payload, qos, retain = heapq.heappop(self.outbound)
            try:  # it left the device already: a power cut since does not stop it
                link.publish(topic, payload, qos, retain)
            except Exception:  # noqa: BLE001 - the connection went: the broker never got it
                self.counters["lost_in_flight"] = self.counters.get("lost_in_flight", 0) + 1
        while self.inbound and self.inbound[0][0] <= now:
            _due, _n, dev, topic, payload, retain = heapq.heappop(self.inbound)
            if dev.control is None:  # down: the session keeps it for the reboot
                self.held.setdefault(dev.index, []).append((topic, payload, retain))
                continue
            self.deliver_fn[dev.index](topic, payload, retain)

    def broker_up(self) -> bool:
        return self.operator_link.connected

    # -- time ------------------------------------------------------------------
    def run_for(self, ms: int) -> None:
        """Serve every session and wake devices as they come due, for `ms` virtual ms."""
        end = self.clock.now_ms + ms
        while True:
            now = self.clock.now_ms
            self._due_messages(now)
            self.wake_due(now)
            if now >= self.next_sample:
                self._sample()
                self.next_sample = now + SAMPLE_MS
            if now >= end:
                return
            due = min(end, self.next_wake_ms(end),
                      self.inbound[0][0] if self.inbound else end,
                      self.outbound[0][0] if self.outbound else end)
            self.loop.run_once(max(0.0, min(0.02, self.clock.real_s(due - now))))

    def close(self) -> None:
        try:
            self.loop.close()
        finally:
            if self.embedded is not None:
                self.embedded.stop()


def run_mqtt(settings: SimSettings, broker_url: str | None = None,
             scale: float = SCALE) -> dict:
    """One rollout with every device on a real broker; the same report as virtual mode."""
    holder: list[MqttWorld] = []

    def world(s: SimSettings) -> Simulation:
        w = MqttWorld(s, broker_url, scale)
        holder.append(w)
        return w

    try:
        return run(settings, world)
    finally:
        for w in holder:
            w.close()
