"""firmware_shim.mqtt_paho against a real mosquitto: URLs, config, backoff,
one selector loop for many links, reconnect after the broker dies, and that no
paho type reaches the caller."""
# Stays on the plain `broker` fixture: it tests the MQTT transport, not the field setup.
import random

import pytest

from firmware_shim.mqtt_paho import (
    Backoff,
    MqttConfig,
    MqttConfigError,
    MqttLoop,
    MqttNotConnected,
    PahoLink,
    Will,
    parse_broker_url,
)
from tests.mqttkit import Broker, unique


def test_parse_broker_url():
    assert parse_broker_url("mqtt://h") == ("h", 1883, False)
    assert parse_broker_url("mqtts://h") == ("h", 8883, True)
    assert parse_broker_url("mqtt://10.0.0.2:1999") == ("10.0.0.2", 1999, False)
    for bad in ("http://h", "mqtt://", "mqtt://h:0", "mqtt://h:99999", "mqtt://h/x", "", None):
        with pytest.raises(MqttConfigError):
            parse_broker_url(bad)


def test_config_is_read_only_and_checked():
    c = MqttConfig.from_url("mqtts://broker:8884", client_id="d1")
    assert (c.host, c.port, c.tls) == ("broker", 8884, True)
    with pytest.raises(AttributeError):
        c.port = 1
    assert c.replace(port=1).port == 1 and c.port == 8884
    with pytest.raises(MqttConfigError):
        MqttConfig("h", cert="c.pem")  # a cert without its key
    with pytest.raises(MqttConfigError):
        MqttConfig("h", backoff_min=5, backoff_max=1)


def test_backoff_grows_is_jittered_and_bounded():
    b = Backoff(0.5, 30.0, random.Random(7))
    delays = [b.next_delay() for _ in range(40)]
    assert all(0.5 <= d <= 30.0 for d in delays)
    assert max(delays[:3]) <= 2.0 < max(delays[10:])
    assert len(set(delays)) > 30  # jitter: not one fixed schedule for every device
    b.reset()
    assert b.next_delay() == 0.5


def _link(broker, cid, inbox=None, **kw):
    link = PahoLink(MqttConfig(broker.host, broker.port, client_id=cid,
                               backoff_min=0.05, backoff_max=0.3, **kw))
    if inbox is not None:
        link.set_callbacks(on_message=lambda t, p, r: inbox.append((t, p, r)))
    return link


def test_one_loop_serves_many_links(broker):
    topic = f"fleetstage/{unique()}/cmd/all"
    loop = MqttLoop()
    inboxes = [[] for _ in range(50)]
    links = [loop.add(_link(broker, unique("c"), inboxes[i])) for i in range(50)]
    for lk in links:
        lk.subscribe(topic)
        lk.start()
    pub = loop.add(_link(broker, unique("p")))
    pub.start()
    assert loop.run_until(lambda: pub.connected and all(lk.connected for lk in links), 10)
    for _ in range(10):
        loop.run_once(0.01)
    pub.publish(topic, b"\x00\x01payload", qos=1)
    assert loop.run_until(lambda: all(inboxes), 10)
    for inbox in inboxes:
        assert inbox == [(topic, b"\x00\x01payload", False)]
        t, p, r = inbox[0]
        assert type(t) is str and type(p) is bytes and type(r) is bool
    loop.close()


def test_publish_while_down_raises_and_reconnect_resubscribes(tmp_path):
    b = Broker(str(tmp_path / "mosq")).start()
    try:
        topic = f"x/{unique()}"
        inbox = []
        loop = MqttLoop()
        link = loop.add(_link(b, unique("c"), inbox))
        link.subscribe(topic)
        link.start()
        assert loop.run_until(lambda: link.connected, 10)
        b.kill()
        assert loop.run_until(lambda: not link.connected, 10)
        with pytest.raises(MqttNotConnected):
            link.publish(topic, b"x")
        b.start()
        assert loop.run_until(lambda: link.connected, 15)
        assert link.sessions == 2
        pub = loop.add(_link(b, unique("p")))
        pub.start()
        assert loop.run_until(lambda: pub.connected, 10)
        for _ in range(10):
            loop.run_once(0.01)
        pub.publish(topic, b"after", qos=1)
        assert loop.run_until(lambda: inbox, 10)
        assert inbox[0][1] == b"after"
        loop.close()
    finally:
        b.stop()


def test_last_will_is_published_when_link_dies(broker):
    status = f"fleetstage/{unique()}/device/d1/status"
    loop = MqttLoop()
    seen = []
    watcher = loop.add(_link(broker, unique("w"), seen))
    watcher.subscribe(status)
    watcher.start()
    dying = loop.add(_link(broker, unique("d"), will=Will(status, b"offline", 1, True),
                           keepalive=1))
    dying.start()
    assert loop.run_until(lambda: watcher.connected and dying.connected, 10)
    # Drop the TCP connection without DISCONNECT, as a power cut would.
    dying._closed = True
    dying._client.socket().close()
    assert loop.run_until(lambda: seen, 10)
    assert seen[0][1] == b"offline"
    loop.close()
