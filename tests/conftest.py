"""Shared pytest fixtures: a real mosquitto on loopback (see tests/mqttkit.py).

`broker`: one anonymous mosquitto for the whole session; tests isolate
themselves with unique fleet names (`fleet_name`). `acl_broker`: a second
mosquitto with the shipped ACL (tools/mosquitto/acl) plus a generated password
file. Tests that kill the broker start their own with mqttkit.Broker.
"""
import os
import tempfile

import pytest

from tests.mqttkit import Broker, BrokerMissing, mosquitto_binary, unique


def _need_mosquitto():
    try:
        mosquitto_binary()
    except BrokerMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def broker():
    _need_mosquitto()
    workdir = tempfile.mkdtemp(prefix="fleetstage-mosq-")
    b = Broker(workdir).start()
    yield b
    b.stop()


ACL_USERS = {"operator": "op-secret", "dev-a": "pw-a", "dev-b": "pw-b"}


@pytest.fixture(scope="session")
def acl_broker():
    _need_mosquitto()
    from tools.mosquitto_acl import SHIPPED_ACL, render_passwords

    workdir = tempfile.mkdtemp(prefix="fleetstage-mosq-acl-")
    pw_path = os.path.join(workdir, "passwd")
    with open(pw_path, "w") as f:
        f.write(render_passwords(ACL_USERS))
    os.chmod(pw_path, 0o600)
    extra = (
        f"allow_anonymous false\npassword_file {pw_path}\nacl_file {SHIPPED_ACL}\n"
        "use_username_as_clientid true\n"
    )
    b = Broker(workdir, extra=extra).start()
    b.users = dict(ACL_USERS)
    yield b
    b.stop()


@pytest.fixture
def fleet_name():
    return unique("fleet")
