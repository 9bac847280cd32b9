"""The generated mosquitto ACL (two fleets on one broker) against a real
broker: device A's credentials cannot publish A's commands, cannot publish
as device B, cannot read B's commands, and cannot read or write anything of
another fleet. Every negative check is followed by an allowed message on
the same path, so "nothing arrived" is decided by order, not by a sleep.
Retained messages left by earlier tests are ignored.
"""
import os

from firmware_shim.mqtt_paho import MqttConfig, MqttConnectError, MqttLoop, PahoLink
from tests.mqttkit import Broker, unique
from tools import mosquitto_acl as acl


def _client(loop, broker, user, password, inbox):
    link = PahoLink(MqttConfig(broker.host, broker.port, client_id=user, username=user,
                               password=password, backoff_min=0.05, backoff_max=0.2))
    link.set_callbacks(on_message=lambda t, p, r: None if r else inbox.append((t, p)))
    loop.add(link)
    link.start()
    return link


def _setup(acl_broker, users=("operator", "dev-a", "dev-b")):
    loop = MqttLoop()
    inbox = {u: [] for u in users}
    links = {u: _client(loop, acl_broker, u, acl_broker.users[u], inbox[u]) for u in inbox}
    assert loop.run_until(lambda: all(lk.connected for lk in links.values()), 10)
    return loop, links, inbox


def _settle(loop, links):
    # A round trip on each link proves the SUBSCRIBEs were processed.
    for _ in range(20):
        loop.run_once(0.01)


def test_device_cannot_publish_commands_or_as_another_device(acl_broker):
    fleet = acl_broker.fleet
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
    fleet = acl_broker.fleet
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


def test_agent_process_runs_under_the_generated_acl(acl_broker, tmp_path):
    """The agent's own traffic fits the ACL: it gets its commands, its reports get out."""
    from agent import protocol as P
    from tests.agentkit import AgentProcess
    from tools.operator_cmd import OperatorClient

    fleet = acl_broker.fleet
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


def test_device_cannot_read_or_write_another_fleet(acl_broker):
    a_fleet, b_fleet = acl_broker.fleet, acl_broker.other_fleet
    loop, links, inbox = _setup(acl_broker, ("operator", "operator-b", "dev-a", "dev-c"))
    a, c = links["dev-a"], links["dev-c"]
    # dev-a (fleet A, group line1) tries fleet B's broadcast, desired and group topics
    for topic in ("cmd/all", "desired/all", "cmd/group/line1", "desired/group/line1"):
        a.subscribe(f"fleetstage/{b_fleet}/{topic}")
        c.subscribe(f"fleetstage/{b_fleet}/{topic}")
    a.subscribe(f"fleetstage/{a_fleet}/cmd/all")
    links["operator"].subscribe(f"fleetstage/{a_fleet}/#")
    links["operator-b"].subscribe(f"fleetstage/{b_fleet}/#")
    _settle(loop, links)
    op_b = links["operator-b"]
    for topic in ("cmd/all", "desired/all", "cmd/group/line1", "desired/group/line1"):
        op_b.publish(f"fleetstage/{b_fleet}/{topic}", b"b:" + topic.encode(), qos=1)
    assert loop.run_until(lambda: len(inbox["dev-c"]) == 4, 10), inbox["dev-c"]
    links["operator"].publish(f"fleetstage/{a_fleet}/cmd/all", b"a-broadcast", qos=1)
    assert loop.run_until(lambda: any(p == b"a-broadcast" for _, p in inbox["dev-a"]), 10)
    assert [p for _, p in inbox["dev-a"]] == [b"a-broadcast"]

    # ...and cannot publish anything under fleet B, not even its own device subtree there
    a.publish(f"fleetstage/{b_fleet}/device/dev-a/ack", b"cross-fleet-ack", qos=1)
    a.publish(f"fleetstage/{b_fleet}/device/dev-c/status", b"as-c", qos=1)
    a.publish(f"fleetstage/{b_fleet}/cmd/all", b"forged-b", qos=1)
    a.publish(f"fleetstage/{a_fleet}/device/dev-a/ack", b"own-ack", qos=1)
    assert loop.run_until(lambda: any(p == b"own-ack" for _, p in inbox["operator"]), 10)
    op_b.publish(f"fleetstage/{b_fleet}/cmd/device/dev-c", b"b-marker", qos=1)
    assert loop.run_until(lambda: any(p == b"b-marker" for _, p in inbox["operator-b"]), 10)
    seen_b = [p for _, p in inbox["operator-b"] if not p.startswith(b"b:")]
    assert seen_b == [b"b-marker"]
    # fleet B's operator cannot command fleet A either
    op_b.publish(f"fleetstage/{a_fleet}/cmd/all", b"b-op-into-a", qos=1)
    links["operator"].publish(f"fleetstage/{a_fleet}/cmd/all", b"a-second", qos=1)
    assert loop.run_until(lambda: any(p == b"a-second" for _, p in inbox["dev-a"]), 10)
    assert b"b-op-into-a" not in [p for _, p in inbox["dev-a"]]
    loop.close()


def test_shipped_acl_is_fleet_specific(tmp_path):
    with open(acl.SHIPPED_ACL) as f:
        rules = [ln.split() for ln in f if ln.startswith(("topic", "pattern"))]
    assert rules and all(r[-1].startswith(f"fleetstage/{acl.FLEET_PLACEHOLDER}/") for r in rules)
    # filled in, on a real broker: the fleet's broadcast reaches the device, another's not
    fleet, other = unique("fa"), unique("fb")
    workdir = str(tmp_path / "mosq")
    os.makedirs(workdir)
    users = {"operator": "op", "dev-a": "pw-a"}
    with open(os.path.join(workdir, "passwd"), "w") as f:
        f.write(acl.render_passwords(users))
    with open(os.path.join(workdir, "acl"), "w") as f:
        f.write(acl.render_shipped_acl(fleet))
    b = Broker(workdir, persist=False, extra=(
        f"allow_anonymous false\npassword_file {workdir}/passwd\nacl_file {workdir}/acl\n"))
    b.start()
    b.users = users
    try:
        loop, links, inbox = _setup(b, ("operator", "dev-a"))
        links["dev-a"].subscribe(f"fleetstage/{other}/cmd/all")
        links["dev-a"].subscribe(f"fleetstage/{fleet}/cmd/all")
        _settle(loop, links)
        links["operator"].publish(f"fleetstage/{other}/cmd/all", b"other", qos=1)
        links["operator"].publish(f"fleetstage/{fleet}/cmd/all", b"mine", qos=1)
        assert loop.run_until(lambda: inbox["dev-a"], 10)
        assert [p for _, p in inbox["dev-a"]] == [b"mine"]
        loop.close()
    finally:
        b.stop()


def test_device_reads_its_own_bucket_topics_and_no_other_bucket(acl_broker):
    """Hash-bucket commands (big waves): dev-a may read each prefix of its own bucket,
    never dev-b's (unless they share that prefix)."""
    from agent import protocol as P

    fleet = acl_broker.fleet
    loop, links, inbox = _setup(acl_broker)
    mine, theirs = P.bucket_of("dev-a"), P.bucket_of("dev-b")
    n = next(i for i in range(1, P.BUCKET_DEPTH + 1) if mine[:i] != theirs[:i])
    links["dev-a"].subscribe(f"fleetstage/{fleet}/cmd/bucket/{theirs[:n]}")
    links["dev-a"].subscribe(f"fleetstage/{fleet}/cmd/bucket/{mine[:P.BUCKET_DEPTH]}")
    links["dev-a"].subscribe(f"fleetstage/{fleet}/desired/bucket/{mine[:1]}")
    _settle(loop, links)
    op = links["operator"]
    op.publish(f"fleetstage/{fleet}/cmd/bucket/{theirs[:n]}", b"for-b", qos=1)
    op.publish(f"fleetstage/{fleet}/desired/bucket/{mine[:1]}", b"desired-a", qos=1)
    op.publish(f"fleetstage/{fleet}/cmd/bucket/{mine}", b"for-a", qos=1)
    assert loop.run_until(lambda: len(inbox["dev-a"]) >= 2, 10)
    loop.run_until(lambda: False, 0.3)
    assert sorted(p for _, p in inbox["dev-a"]) == [b"desired-a", b"for-a"]
    loop.close()
