"""A board on mqtts://, from the bundle as built, under the real MicroPython unix port.

`cd BUNDLE && micropython main.py` with config.json pointing at a TLS listener of a
real mosquitto (a throw-away EC P-256 CA made by openssl, the broker's certificate
for IP:127.0.0.1); the operator session and the observer of the board's reports
use the plain listener of the same mosquitto (bench board's Lab). The board must
verify the broker against its tls.ca and take signed stages over TLS; given
another CA it never talks to that broker.
"""
import json
import os
import shutil
import subprocess
import time

import pytest

from bench import bench_board
from bench.bench_board_tls import make_pki
from firmware_shim.mqtt_paho import free_port


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the test CA (apt-get install openssl)")
    work = str(tmp_path_factory.mktemp("board-tls"))
    pki = make_pki(work)
    rogue = os.path.join(work, "rogue")
    os.makedirs(rogue)
    rogue_ca = make_pki(rogue)["ca.crt"]
    port = free_port()
    listener = ("allow_anonymous true\nlistener %d 127.0.0.1\nallow_anonymous true\n"
                "cafile %s\ncertfile %s\nkeyfile %s\n"
                % (port, pki["ca.crt"], pki["server.crt"], pki["server.key"]))
    lab = bench_board.Lab(work, broker_extra=listener)
    out = bench_board.build_board(work, lab.broker.url)
    shutil.copy(pki["ca.crt"], os.path.join(out, "ca.crt"))
    shutil.copy(rogue_ca, os.path.join(out, "rogue-ca.crt"))
    lab.board_config = {"broker": "mqtts://127.0.0.1:%d" % port, "tls": {"ca": "/ca.crt"}}
    yield lab, out
    lab.close()


def test_board_on_mqtts_takes_four_signed_stages(tls_lab):
    lab, out = tls_lab
    run = bench_board.boot_run(lab, out)
    assert run is not None, open(os.path.join(out, "board-%d.log" % lab.runs)).read()[-1500:]
    log = open(run["log"]).read()
    assert "connected to broker" in log and "link lost" not in log, log[-1500:]


def test_board_given_another_ca_never_talks_to_the_broker(tls_lab):
    """The same board (the config the first test booted), its tls.ca another CA: every
    handshake fails verification, so it never connects (and keeps retrying)."""
    lab, out = tls_lab
    path = os.path.join(out, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    assert cfg["broker"].startswith("mqtts://")
    cfg["tls"] = {"ca": "/rogue-ca.crt"}
    with open(path, "w") as f:
        json.dump(cfg, f)
    log_path = os.path.join(out, "rogue.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([bench_board.micropython_binary(), "main.py"], cwd=out,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and open(log_path).read().count(" failed (") < 2:
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(10)
    text = open(log_path).read()
    assert text.count("connect to %s failed (" % cfg["broker"][8:]) >= 2, text[-1500:]
    assert "connected to broker" not in text, text[-1500:]
