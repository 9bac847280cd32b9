"""The shipped mosquitto ACL against a real broker: device A's credentials
cannot publish A's commands, cannot publish as device B, cannot read B's
commands. Every negative check is followed by an allowed message from the
same sender on the same path, so "nothing arrived" is decided by order, not
by a sleep.
"""
from firmware_shim.mqtt_paho import MqttConfig, MqttConnectError, MqttLoop, PahoLink
from tests.mqttkit import unique


def _client(loop, broker, user, password, inbox):
    link = PahoLink(MqttConfig(broker.host, broker.port, client_id=user, username=user,
                               password=password, backoff_min=0.05, backoff_max=0.2))
    link.set_callbacks(on_message=lambda t, p, r: inbox.append((t, p)))
    loop.add(link)
    link.start()
    return link


def _setup(acl_broker):
    loop = MqttLoop()
    inbox = {"operator": [], "dev-a": [], "dev-b": []}
    links = {u: _client(loop, acl_broker, u, acl_broker.users[u], inbox[u]) for u in inbox}
    assert loop.run_until(lambda: all(lk.connected for lk in links.values()), 10)
    return loop, links, inbox


def _settle(loop, links):
    # A round trip on each link proves the SUBSCRIBEs were processed.
    for _ in range(20):
        loop.run_once(0.01)


def test_device_cannot_publish_commands_or_as_another_device(acl_broker):
    fleet = unique("f")
    loop, links, inbox = _setup(acl_broker)
    links["operator"].subscribe(f"fleetstage/{fleet}/#")
    links["dev-a"].subscribe(f"fleetstage/{fleet}/cmd/device/dev-a")
    _settle(loop, links)
    a = links["dev-a"]
    a.publish(f"fleetstage/{fleet}/cmd/device/dev-a", b"forged-cmd", qos=1)
    a.publish(f"fleetstage/{fleet}/desired/all", b"forged-desired", qos=1, retain=True)
    a.publish(f"fleetstage/{fleet}/device/dev-b/ack", b"as-b", qos=1)
    a.publish(f"fleetstage/{fleet}/device/dev-a/ack", b"own-ack", qos=1)
    assert loop.run_until(lambda: any(p == b"own-ack" for _, p in inbox["operator"]), 10)
    seen = [p for _, p in inbox["operator"]]
    assert seen == [b"own-ack"]
    assert inbox["dev-a"] == []
    loop.close()


def test_device_cannot_read_another_devices_commands(acl_broker):
    fleet = unique("f")
    loop, links, inbox = _setup(acl_broker)
    links["dev-a"].subscribe(f"fleetstage/{fleet}/cmd/device/dev-b")
    links["dev-a"].subscribe("fleetstage/#")
    links["dev-a"].subscribe(f"fleetstage/{fleet}/cmd/device/dev-a")
    links["dev-b"].subscribe(f"fleetstage/{fleet}/cmd/device/dev-b")
    _settle(loop, links)
    op = links["operator"]
    op.publish(f"fleetstage/{fleet}/cmd/device/dev-b", b"for-b", qos=1)
    op.publish(f"fleetstage/{fleet}/cmd/device/dev-a", b"for-a", qos=1)
    assert loop.run_until(lambda: any(p == b"for-a" for _, p in inbox["dev-a"]), 10)
    assert loop.run_until(lambda: any(p == b"for-b" for _, p in inbox["dev-b"]), 10)
    assert all(p != b"for-b" for _, p in inbox["dev-a"])
    loop.close()


def test_wrong_password_is_refused(acl_broker):
    loop = MqttLoop()
    link = PahoLink(MqttConfig(acl_broker.host, acl_broker.port, client_id="dev-a",
                               username="dev-a", password="wrong", backoff_min=5, backoff_max=5))
    loop.add(link)
    link.start()
    assert loop.run_until(lambda: link.last_error is not None, 10)
    assert isinstance(link.last_error, MqttConnectError)
    assert not link.connected
    loop.close()


def test_agent_process_runs_under_the_shipped_acl(acl_broker, tmp_path):
    """The agent's own traffic fits the ACL: it gets its commands, its reports get out."""
    from agent import protocol as P
    from tests.agentkit import AgentProcess
    from tools.operator_cmd import OperatorClient

    fleet = unique("f")
    fleet_key = P.new_fleet_key()
    agent = AgentProcess(str(tmp_path), acl_broker, fleet, fleet_key, "dev-a", groups=(),
                         config={"credentials": {"username": "dev-a",
                                                 "password": acl_broker.users["dev-a"]}})
    agent.start()
    try:
        op = OperatorClient(acl_broker.url, fleet, fleet_key, username="operator",
                            password=acl_broker.users["operator"])
        op.connect()
        op.discover(expect=1, timeout=15)
        assert op.inventory == {"dev-a": []} and op.online["dev-a"] is True
        out = op.publish_stage(1, "all", ["dev-a"], timeout=15)
        assert out.acks["dev-a"]["result"] == "applied", out.to_dict()
        op.close()
    finally:
        agent.stop()
