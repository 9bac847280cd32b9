"""TLS verification of the broker, on the Pi agent and on a board.

A throw-away CA (openssl) signs two server certificates: one for 127.0.0.1
and one for another host name. A rogue CA signs nothing we trust.
- Pi: the agent's `insecure` (unsigned commands, dev mode) no longer turns
  off the host-name check; only tls.insecure_skip_hostname_check does, and a
  foreign CA is refused either way.
- Board (real MicroPython): the broker is verified against tls.ca; a board
  whose port cannot verify, or that has no CA, refuses mqtts:// at start.
"""
# Stays on its own TLS test brokers: it tests TLS verification of the link (wrong host, rogue CA).
import json
import os
import shutil
import subprocess
import sys

import pytest

from agent import boot
from agent import protocol as P
from agent.agent_config import ConfigError, parse_config
from firmware_shim import board, mqtt_micro
from firmware_shim.mqtt_paho import MqttLoop, PahoLink
from tests.agentkit import REPO
from tests.mqttkit import Broker
from tools.agent_cmd import link_config

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")


def _openssl(d, *args):
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)


def _make_ca(d, name):
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", name + ".key", "-out", name + ".crt", "-days", "2",
             "-subj", "/CN=" + name)
    return os.path.join(d, name + ".crt")


def _server_cert(d, name, san):
    _openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\n" % san)
    _openssl(d, "x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", name + ".ext")
    return os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")


class Pki:
    pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the test CA (apt-get install openssl)")
    d = str(tmp_path_factory.mktemp("tls-pki"))
    p = Pki()
    p.ca, p.rogue_ca = _make_ca(d, "ca"), _make_ca(d, "rogue-ca")
    brokers = []
    for attr, san in (("good", "IP:127.0.0.1"), ("wrong_name", "DNS:not-this-host.example")):
        cert, key = _server_cert(d, attr, san)
        b = Broker(os.path.join(d, "mosq-" + attr), persist=False,
                   extra="allow_anonymous true\ncertfile %s\nkeyfile %s\n" % (cert, key)).start()
        b.url = "mqtts://127.0.0.1:%d" % b.port
        setattr(p, attr, b)
        brokers.append(b)
    yield p
    for b in brokers:
        b.stop()


def _pi_config(broker, tmp_path, **fields):
    d = {"device_id": "gw1", "fleet": "plant", "broker": broker.url,
         "key_file": str(tmp_path / "gw1.key"), "state_dir": str(tmp_path / "state"),
         "environment": "dev"}
    d.update(fields)
    return parse_config(json.dumps(d))


def _pi_connects(cfg):
    """Connect the link the agent would build for cfg -> (connected, last error text)."""
    key = P.derive_device_key(P.new_fleet_key(), cfg.device_id)
    loop = MqttLoop()
    link = loop.add(PahoLink(link_config(cfg, key)))
    try:
        link.start()
        loop.run_until(lambda: link.connected or link.last_error is not None, 10)
        return link.connected, str(link.last_error)
    finally:
        loop.close()


def test_pi_dev_mode_still_checks_the_broker_host_name(pki, tmp_path):
    cfg = _pi_config(pki.wrong_name, tmp_path, insecure=True, tls={"ca": pki.ca})
    connected, error = _pi_connects(cfg)
    assert not connected
    assert "mismatch" in error or "verify failed" in error, error


def test_pi_host_name_check_has_its_own_switch(pki, tmp_path):
    cfg = _pi_config(pki.wrong_name, tmp_path,
                     tls={"ca": pki.ca, "insecure_skip_hostname_check": True})
    assert _pi_connects(cfg)[0] is True
    assert _pi_connects(_pi_config(pki.good, tmp_path, tls={"ca": pki.ca}))[0] is True


@pytest.mark.parametrize("fields", [{}, {"insecure": True},
                                    {"tls": {"insecure_skip_hostname_check": True}}])
def test_pi_refuses_a_broker_not_signed_by_the_configured_ca(pki, tmp_path, fields):
    tls = dict(fields.get("tls", {}), ca=pki.rogue_ca)
    cfg = _pi_config(pki.good, tmp_path, **dict(fields, tls=tls))
    connected, error = _pi_connects(cfg)
    assert not connected and "verify failed" in error, error


# ---------------------------------------------------------------- boards

BOARD_PROBE = """
import sys
sys.path.insert(0, '.')
from agent import boot
from firmware_shim import board
from agent.agent_config import ConfigError
try:
    agent = boot.build(%r, board.Board())
    link, control = agent.link, agent.control
except ConfigError as exc:
    print('REFUSED', exc.field)
    sys.exit(0)
link.start()
for _ in range(200):
    link.poll(50)
    if link.connected or link.counters['failures']:
        break
print('CONNECTED' if link.connected else 'FAILED', link.counters['failures'])
link.close()
control.close()
"""


def _board_config(tmp_path, name, broker, tls=None):
    fleet_key = P.new_fleet_key()
    key_file = str(tmp_path / (name + ".key"))
    with open(key_file, "wb") as f:
        f.write(P.format_key_file(P.derive_device_key(fleet_key, name), "device", name))
    d = {"device_id": name, "fleet": "plant", "broker": broker.url, "key_file": key_file,
         "state_dir": str(tmp_path / ("state-" + name)), "environment": "dev",
         "backoff_min_s": 5, "backoff_max_s": 5}
    if tls is not None:
        d["tls"] = tls
    path = str(tmp_path / (name + ".json"))
    with open(path, "w") as f:
        json.dump(d, f)
    return path


def _run_boards(paths):
    procs = [subprocess.Popen([MICROPYTHON, "-c", BOARD_PROBE % p], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in paths]
    return [proc.communicate(timeout=60)[0] for proc in procs]


def test_board_verifies_the_broker_against_its_ca(pki, tmp_path):
    good = _board_config(tmp_path, "b-good", pki.good, {"ca": pki.ca})
    rogue = _board_config(tmp_path, "b-rogue", pki.good, {"ca": pki.rogue_ca})
    wrong_host = _board_config(tmp_path, "b-host", pki.wrong_name, {"ca": pki.ca})
    no_ca = _board_config(tmp_path, "b-noca", pki.good)
    out = _run_boards([good, rogue, wrong_host, no_ca])
    assert "CONNECTED 0" in out[0], out[0]
    assert "FAILED 1" in out[1], out[1]
    assert "FAILED 1" in out[2], out[2]
    assert "REFUSED tls.ca" in out[3], out[3]


def test_board_refuses_mqtts_when_the_port_cannot_verify(pki, tmp_path, monkeypatch):
    class OldSsl:  # a port with ssl.wrap_socket but no SSLContext
        @staticmethod
        def wrap_socket(sock, **kw):
            raise AssertionError("an unverified socket must never be made")

    monkeypatch.setattr(mqtt_micro, "_ssl", OldSsl)
    path = _board_config(tmp_path, "b-old", pki.good, {"ca": pki.ca})
    with pytest.raises(ConfigError) as err:
        boot.build(path, board.Board())
    assert err.value.field == "tls.ca" and "SSLContext" in str(err.value)
    assert not os.path.exists(str(tmp_path / "state-b-old"))  # refused before the flash
    skip = _board_config(tmp_path, "b-skip", pki.good,
                         {"ca": pki.ca, "insecure_skip_hostname_check": True})
    with pytest.raises(ConfigError) as err:
        boot.build(skip, board.Board())
    assert err.value.field == "tls.insecure_skip_hostname_check"
