"""The link contract of agent.runtime, passed by every link implementation.

    link.connected; link.set_callbacks(on_message, on_connect, on_disconnect);
    link.subscribe(topic, qos) (kept across reconnects); link.publish(topic,
    payload, qos, retain), which raises when it cannot send; link.poll(ms);
    link.set_will(topic, payload, qos, retain) before it connects.

The same tests run against: the paho adapter (firmware_shim.mqtt_paho) and
the board's client (firmware_shim.mqtt_micro, here on CPython; the board
tests run it under the MicroPython unix port) on a real mosquitto; the
simulator's virtual link on its virtual broker; and the core tests' in-memory
link (tests/core/runtimekit.py), whose "broker" is the test itself.
"""
# Stays on a plain broker: it tests the transport contract, not the field setup.
import random
import sys
import time

import pytest

from firmware_shim.mqtt_micro import MicroLink, MicroMqttError
from firmware_shim.mqtt_paho import MqttConfig, MqttError, PahoLink
from sim.broker import VirtualBroker, VirtualLink
from tests.mqttkit import unique

sys.path.insert(0, "tests/core")
from runtimekit import MemoryLink  # noqa: E402


class MosquittoWorld:
    """A real broker; `peer` is a paho client that publishes to the link under test."""

    def __init__(self, broker, make):
        self.broker, self.make = broker, make
        self.links = []
        self.peer = self.link("peer")
        self.connect(self.peer)

    def link(self, name):
        link = self.make(self.broker, unique(name))
        self.links.append(link)
        return link

    def connect(self, link):
        link.start()
        self.pump(lambda: link.connected)
        self.pump(lambda: False, 0.3)  # its SUBSCRIBEs (sent on CONNACK) reach the broker

    def pump(self, done, timeout=10.0):
        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            for link in self.links:
                link.poll(20)
        return done()

    def publish(self, topic, payload, retain=False):
        self.peer.publish(topic, payload, 1, retain)

    def kill(self, link):
        """The link dies without DISCONNECT (power cut): the broker publishes its will."""
        link._sock_for_test().close()

    def close(self):
        for link in self.links:
            link.close()


def _paho(broker, client_id):
    link = PahoLink(MqttConfig(broker.host, broker.port, client_id=client_id, backoff_min=0.2,
                               backoff_max=0.5))
    link._sock_for_test = lambda: link._client.socket()
    return link


def _micro(broker, client_id):
    link = MicroLink(broker.host, broker.port, client_id=client_id, backoff_min_ms=200,
                     backoff_max_ms=500)
    link._sock_for_test = lambda: link.sock
    return link


class VirtualWorld:
    def __init__(self):
        self.vb = VirtualBroker(random.Random(7), latency_ms=(1, 5))
        self.peer = VirtualLink(self.vb, "peer")
        self.peer.connect()

    def link(self, name):
        return VirtualLink(self.vb, unique(name))

    def connect(self, link):
        link.connect()

    def pump(self, done, timeout=None):
        for _ in range(100):
            if done():
                break
            self.vb.deliver_until(self.vb.now + 10)
        return done()

    def publish(self, topic, payload, retain=False):
        self.peer.publish(topic, payload, 1, retain)

    def kill(self, link):
        link.drop()

    def close(self):
        pass


class MemoryWorld:
    """The in-memory link has no broker: the test hands messages to its callback."""

    def __init__(self):
        self.links = []
        self.retained = {}

    def link(self, name):
        link = MemoryLink(connected=False)
        self.links.append(link)
        return link

    def connect(self, link):
        link.connected = True
        for topic, (payload, _r) in sorted(self.retained.items()):
            self._deliver(link, topic, payload, True)
        if link.cb and link.cb[1]:
            link.cb[1]()

    def pump(self, done, timeout=None):
        return done()

    def publish(self, topic, payload, retain=False):
        if retain:
            self.retained[topic] = (payload, True)
        for link in self.links:
            if link.connected:
                self._deliver(link, topic, payload, False)

    def _deliver(self, link, topic, payload, retain):
        if topic in link.subs and link.cb:
            link.cb[0](topic, payload, retain)

    def close(self):
        pass


def _world(request, kind):
    if kind in ("paho", "micro"):
        w = MosquittoWorld(request.getfixturevalue("broker"), _paho if kind == "paho" else _micro)
    elif kind == "virtual":
        w = VirtualWorld()
    else:
        w = MemoryWorld()
    request.addfinalizer(w.close)
    return w


@pytest.fixture(params=["paho", "micro", "virtual", "memory"])
def world(request):
    return _world(request, request.param)


@pytest.fixture(params=["paho", "micro", "virtual"])
def broker_world(request):
    """The links that have a broker behind them (the in-memory one has none to hold a will)."""
    return _world(request, request.param)


class Inbox:
    def __init__(self, link):
        self.messages, self.connects = [], 0
        link.set_callbacks(self.on_message, self.on_connect, lambda why=None: None)

    def on_message(self, topic, payload, retain=False):
        self.messages.append((topic, bytes(payload), bool(retain)))

    def on_connect(self):
        self.connects += 1


def test_publish_raises_while_not_connected(world):
    link = world.link("down")
    assert link.connected is False
    with pytest.raises((OSError, MqttError, MicroMqttError)):  # each link's own error
        link.publish(unique("fleetstage/t") + "/x", b"lost", 1, False)


def test_a_subscription_delivers_topic_payload_and_retain(world):
    link = world.link("sub")
    inbox = Inbox(link)
    topic = unique("fleetstage/t") + "/cmd"
    link.subscribe(topic, 1)  # before connecting: the link sends it once connected
    world.connect(link)
    assert link.connected is True and inbox.connects >= 1
    world.publish(topic, b"\x00payload\xff")
    assert world.pump(lambda: inbox.messages)
    assert inbox.messages == [(topic, b"\x00payload\xff", False)]
    link.publish(topic + "/echo", b"out", 1, False)  # connected: publishing works


def test_a_retained_message_arrives_flagged_retained(world):
    topic = unique("fleetstage/t") + "/desired"
    world.publish(topic, b"kept", retain=True)
    world.pump(lambda: False, 0.3)  # let the broker store it
    link = world.link("late")
    inbox = Inbox(link)
    link.subscribe(topic, 1)
    world.connect(link)
    assert world.pump(lambda: inbox.messages)
    assert inbox.messages[0] == (topic, b"kept", True)


def test_the_will_set_before_connecting_is_published_when_the_link_dies(broker_world):
    world = broker_world
    will_topic = unique("fleetstage/t") + "/status"
    watcher = world.link("watch")
    inbox = Inbox(watcher)
    watcher.subscribe(will_topic, 1)
    world.connect(watcher)
    link = world.link("dies")
    link.set_will(will_topic, b"offline", 1, False)
    world.connect(link)
    world.kill(link)
    assert world.pump(lambda: inbox.messages)
    assert inbox.messages[0][:2] == (will_topic, b"offline")
