"""TLS (mqtts://) against a real mosquitto with a throw-away CA made by openssl:
server verification and client certificates as identity (the transport: a plain
test broker, anonymous behind TLS), and an agent process whose JSON config carries
the tls block (the field lab: the shipped config's client-certificate option)."""
import json
import os
import shutil
import subprocess

import pytest

from firmware_shim.mqtt_paho import MqttConfig, MqttLoop, PahoLink
from tests.agentkit import wait_until
from tests.mqttkit import Broker, unique


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN={name}", cwd=d)


def _leaf(d, ca, name, san=None):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext, cwd=d)
    return os.path.join(d, f"{name}.crt"), os.path.join(d, f"{name}.key")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the test CA (apt-get install openssl)")
    d = str(tmp_path_factory.mktemp("pki"))
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    server = _leaf(d, "ca", "server", san="IP:127.0.0.1")
    certs = {name: _leaf(d, "ca", name) for name in ("dev-a", "operator")}
    certs["rogue"] = _leaf(d, "rogue-ca", "rogue")
    extra = ("allow_anonymous true\n"
             f"cafile {d}/ca.crt\ncertfile {server[0]}\nkeyfile {server[1]}\n"
             "require_certificate true\nuse_identity_as_username true\n")
    b = Broker(os.path.join(d, "mosq"), extra=extra).start()
    b.url = f"mqtts://127.0.0.1:{b.port}"
    b.ca = os.path.join(d, "ca.crt")
    b.rogue_ca = os.path.join(d, "rogue-ca.crt")
    b.certs = certs
    yield b
    b.stop()


def _link(b, ca, cert_name=None):
    cert, key = b.certs[cert_name] if cert_name else (None, None)
    return PahoLink(MqttConfig.from_url(b.url, client_id=unique("c"), ca=ca, cert=cert, key=key,
                                        backoff_min=5, backoff_max=5))


def test_client_certificate_connects_and_carries_traffic(tls_broker):
    loop = MqttLoop()
    inbox = []
    a = loop.add(_link(tls_broker, tls_broker.ca, "dev-a"))
    a.set_callbacks(on_message=lambda t, p, r: inbox.append(p))
    a.subscribe("tls/" + unique())
    a.start()
    assert loop.run_until(lambda: a.connected, 10), a.last_error
    for _ in range(10):
        loop.run_once(0.01)
    a.publish(sorted(a._subs)[0], b"over tls", qos=1)
    assert loop.run_until(lambda: inbox, 10)
    assert inbox == [b"over tls"]
    loop.close()


@pytest.mark.parametrize("ca,cert", [("ca", None), ("rogue_ca", "dev-a"), ("ca", "rogue")])
def test_missing_or_foreign_credentials_are_refused(tls_broker, ca, cert):
    loop = MqttLoop()
    link = loop.add(_link(tls_broker, getattr(tls_broker, ca), cert))
    link.start()
    assert loop.run_until(lambda: link.connected or link.last_error is not None, 10)
    loop.run_until(lambda: link.connected, 0.5)  # a refused handshake never turns into a session
    assert not link.connected and link.sessions == 0
    loop.close()


def test_agent_over_mqtts_with_config_tls_block(field_lab):
    """The shipped TLS listener with its documented client-certificate option: the agent's
    JSON config carries tls {ca, cert, key} and no password; its certificate's CN is its
    login (the ACL applies to it); the operator tools run as processes beside it."""
    lab = field_lab(devices=["dev-a"], client_certs=True)
    cert, key = lab.client_cert("dev-a")
    agent = lab.start_agent("dev-a", tls={"ca": lab.ca, "cert": cert, "key": key},
                            credentials=None)
    lab.wait_stage("dev-a", 0)
    done = lab.cli("publish-stage", "1", "--target", "device:dev-a", "--json", "--timeout", "20")
    assert done.returncode == 0, done.stdout + done.stderr + agent.log()
    assert json.loads(done.stdout)["devices"]["dev-a"]["result"] == "applied"
    lab.wait_stage("dev-a", 1)
    # Without a certificate the device listener refuses the device's password login.
    agent.stop()
    before = len(agent.log())
    refused = lab.start_agent("dev-a", tls={"ca": lab.ca})  # password, no certificate
    assert wait_until(lambda: "broker" in refused.log()[before:].split("at stage", 1)[-1], 20)
    lab.loop.run_until(lambda: False, 2)
    tail = refused.log()[before:]
    assert "connected to broker" not in tail and refused.alive(), tail
    refused.stop()
