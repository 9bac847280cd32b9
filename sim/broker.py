"""A virtual MQTT broker and link for the discrete-event simulator.

It keeps the parts of MQTT 3.1.1 that a rollout depends on: topic filters
with + and #, retained messages (delivered on subscribe, cleared by an empty
payload), QoS 1 redelivery modelled as delay rather than loss, QoS 0 loss,
per-message latency, and broker outages that disconnect every client.
Everything happens in virtual time on one heap, so a run is reproducible.
"""
from __future__ import annotations

import heapq
import random
from typing import Callable

from sim.faults import Draws


def topic_matches(filt: str, topic: str) -> bool:
    if filt == topic:
        return True
    fparts = filt.split("/")
    tparts = topic.split("/")
    for i, f in enumerate(fparts):
        if f == "#":
            return True
        if i >= len(tparts):
            return False
        if f != "+" and f != tparts[i]:
            return False
    return len(fparts) == len(tparts)


def _client_id(link: VirtualLink) -> str:
    return link.client_id


class BrokerDown(OSError):
    pass


class LinkFaults:
    """The delay (and loss) of one device's messages in one direction, drawn from its
    own seeded source, one draw sequence per message: the virtual broker and the mqtt
    transport both ask it, so the same messages are late on both."""

    __slots__ = ("rng", "latency_ms", "loss")

    def __init__(self, rng: random.Random | Draws, latency_ms: tuple[int, int],
                 loss: float) -> None:
        self.rng = rng
        self.latency_ms = latency_ms
        self.loss = loss

    def delay(self, qos: int) -> int | None:
        """Milliseconds on the way, or None: lost (QoS 0 only; QoS 1 is resent)."""
        d = self.rng.randint(*self.latency_ms)
        if self.loss and self.rng.random() < self.loss:
            if qos == 0:
                return None
            d += self.rng.randint(1000, 5000)  # the sender's retry after no PUBACK
        return d


class VirtualLink:
    """The link contract agent.runtime expects, served by a VirtualBroker."""

    def __init__(self, broker: VirtualBroker, client_id: str,
                 faults_in: LinkFaults | None = None,
                 faults_out: LinkFaults | None = None) -> None:
        self.broker = broker
        self.client_id = client_id
        # a device's own delays for what reaches it and what it sends, so the same
        # messages are late whatever else the fleet does (None: the broker's source)
        self.faults_in = faults_in
        self.faults_out = faults_out
        self.powered: Callable[[], bool] | None = None  # False: the device just lost power
        # clean_session=False (the agent's default): while away, the broker keeps this
        # client's subscriptions and its QoS 1 messages, and sends them on reconnect
        self.persistent = False
        self.held: list[tuple[str, bytes, bool, VirtualLink | None]] = []
        self.connected = False
        self.subscriptions: list[tuple[str, int]] = []
        self.on_message: Callable | None = None
        self.on_connect: Callable | None = None
        self.on_disconnect: Callable | None = None
        self.will: tuple[str, bytes] | None = None

    def set_callbacks(self, on_message, on_connect, on_disconnect) -> None:
        self.on_message, self.on_connect, self.on_disconnect = on_message, on_connect, on_disconnect

    def set_will(self, topic: str, payload: bytes, qos: int = 1, retain: bool = True) -> None:
        self.will = (topic, payload)  # the virtual broker keeps every will retained

    def subscribe(self, topic: str, qos: int = 1) -> None:
        if (topic, qos) not in self.subscriptions:
            self.subscriptions.append((topic, qos))
        if self.connected:
            self.broker.subscribe(self, topic)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if not self.connected:
            raise BrokerDown("not connected")
        if self.powered is not None and not self.powered():
            raise BrokerDown("no power: nothing leaves a device after its power is cut")
        self.broker.publish(topic, payload, qos, retain, sender=self)

    def poll(self, timeout_ms: int = 0) -> None:
        pass  # the simulator's event loop delivers messages

    def connect(self) -> None:
        self.broker.connect(self)

    def drop(self, graceful: bool = False) -> None:
        """The device lost power or its network: the broker publishes its will."""
        self.broker.disconnect(self, graceful)


class VirtualBroker:
    def __init__(self, rng: random.Random, latency_ms: tuple[int, int] = (20, 200),
                 loss: float = 0.0) -> None:
        self.rng = rng
        self.latency_ms = latency_ms
        self.loss = loss
        self.faults = LinkFaults(rng, latency_ms, loss)
        self.now = 0
        self.up = True
        self.links: set[VirtualLink] = set()
        # topic -> its one subscriber, or a set of them: nearly every exact topic is one
        # device's own (a set a topic cost ~3 KB a device)
        self.exact: dict[str, VirtualLink | set[VirtualLink]] = {}
        self.wild: dict[str, set[VirtualLink]] = {}
        # topic -> (wild_version, the links whose wildcard filters match it, by client
        # id): a device's report topics are matched against the filters once, not at
        # every report (the version moves whenever a wildcard subscription does)
        self.wild_routes: dict[str, tuple[int, tuple[VirtualLink, ...]]] = {}
        self.wild_version = 0
        # topic -> (payload, sender): a retained copy keeps its place in its sender's order
        self.retained: dict[str, tuple[bytes, VirtualLink | None]] = {}
        self.queue: list = []
        self.last_delivery: dict[tuple[int, int], int] = {}
        self._n = 0
        self.counters = {"published": 0, "delivered": 0, "lost_qos0": 0, "redelivered_qos1": 0,
                         "dropped_outage": 0, "held_for_session": 0}

    # clients --------------------------------------------------------------
    def connect(self, link: VirtualLink) -> None:
        if not self.up:
            return
        link.connected = True
        self.links.add(link)
        for topic, _qos in link.subscriptions:
            self.subscribe(link, topic)
        held, link.held = link.held, []
        for topic, payload, retain, sender in held:  # the session's messages, in order
            self._schedule(link, topic, payload, retain, 1, sender)
        if link.on_connect:
            link.on_connect()

    def unacked(self, link: VirtualLink, topic: str, payload: bytes, retain: bool) -> None:
        """A QoS 1 message the client took but never acknowledged (it lost power while
        handling it): a persistent session sends it again on reconnect."""
        if link.persistent:
            link.held.insert(0, (topic, payload, retain, None))

    def disconnect(self, link: VirtualLink, graceful: bool = False) -> None:
        if not link.connected:
            return
        link.connected = False
        self.links.discard(link)
        # only the link's own filters: a scan of every subscription made each
        # disconnect cost O(fleet), and a broker outage O(fleet^2)
        for filt, _qos in ([] if link.persistent else link.subscriptions):
            if "+" in filt or "#" in filt:
                self.wild.get(filt, set()).discard(link)
                self.wild_version += 1
            else:
                subs = self.exact.get(filt)
                if subs is link:
                    del self.exact[filt]
                elif isinstance(subs, set):
                    subs.discard(link)
        if link.will and not graceful and self.up:
            self.publish(link.will[0], link.will[1], 1, True)
        if link.on_disconnect:
            link.on_disconnect("connection lost")

    def subscribe(self, link: VirtualLink, filt: str) -> None:
        if "+" in filt or "#" in filt:
            self.wild.setdefault(filt, set()).add(link)
            self.wild_version += 1
            hits = [(t, r) for t, r in self.retained.items() if topic_matches(filt, t)]
        else:
            subs = self.exact.get(filt)
            if subs is None:
                self.exact[filt] = link
            elif isinstance(subs, set):
                subs.add(link)
            elif subs is not link:
                self.exact[filt] = {subs, link}
            hits = [(filt, self.retained[filt])] if filt in self.retained else []
        for topic, (payload, sender) in hits:
            self._schedule(link, topic, payload, True, 1, sender)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                sender: VirtualLink | None = None) -> None:
        self.counters["published"] += 1
        if retain:
            if payload:
                self.retained[topic] = (payload, sender)
            else:
                self.retained.pop(topic, None)
        subs = self.exact.get(topic)
        route = self.wild_routes.get(topic)
        if route is None or route[0] != self.wild_version:
            matched: set[VirtualLink] = set()
            for filt, links in self.wild.items():
                if links and topic_matches(filt, topic):
                    matched.update(links)
            route = (self.wild_version, tuple(sorted(matched, key=_client_id)))
            self.wild_routes[topic] = route
        if subs is None:
            targets = route[1]  # already in client id order
        else:
            union = set(subs) if isinstance(subs, set) else {subs}
            union.update(route[1])
            targets = tuple(sorted(union, key=_client_id))
        for link in targets:
            self._schedule(link, topic, payload, False, qos, sender)

    def _schedule(self, link: VirtualLink, topic: str, payload: bytes, retain: bool,
                  qos: int, sender: VirtualLink | None = None) -> None:
        faults = link.faults_in or (sender.faults_out if sender is not None else None)
        if faults is None:
            faults = self.faults
        delay = faults.delay(qos)
        if delay is None:
            self.counters["lost_qos0"] += 1
            return
        if delay >= 1000:
            self.counters["redelivered_qos1"] += 1
        when = self.now + delay
        # MQTT keeps one client's messages in order on the way to another client
        pair = (id(sender), id(link))
        when = max(when, self.last_delivery.get(pair, 0))
        self.last_delivery[pair] = when
        self._n += 1
        heapq.heappush(self.queue, (when, self._n, link, topic, payload, retain, qos, sender))

    # time -----------------------------------------------------------------
    def deliver_until(self, t: int) -> None:
        while self.queue and self.queue[0][0] <= t:
            when, _n, link, topic, payload, retain, qos, sender = heapq.heappop(self.queue)
            self.now = max(self.now, when)
            if not self.up or not link.connected:
                if link.persistent and qos == 1:
                    link.held.append((topic, payload, retain, sender))
                    self.counters["held_for_session"] += 1
                else:
                    self.counters["dropped_outage"] += 1
                continue
            self.counters["delivered"] += 1
            if link.on_message:
                link.on_message(topic, payload, retain)
        self.now = max(self.now, t)

    def go_down(self) -> None:
        self.up = False
        for link in sorted(self.links, key=lambda lk: lk.client_id):
            self.disconnect(link)
        self.queue.clear()
        self.last_delivery.clear()

    def come_up(self, links: list[VirtualLink]) -> None:
        self.up = True
        for link in links:
            if not link.connected:
                self.connect(link)
