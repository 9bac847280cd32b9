"""Issue 8 end to end: the gateway's own application, its flags and its health.

Real processes only, on the field lab (tests/fieldlab.py): mosquitto started
from the shipped tools/mosquitto config as `fleetstage broker-setup` installs
it (generated ACL and password files, TLS), the agent (`fleetstage agent`, its
own login and key, on the device TLS listener), the example gateway
application (tools/examples/gateway_app.py) as its own process, and the
operator's `fleetstage publish-stage` and `fleetstage local status` CLIs with
the lab's profile. Events are read by the lab's observer (operator login,
verified with the device's key). Stage 3 turns use_genserver_telemetry on, and
the application's new path is broken in one way per test; the agent must see
it through its probe or the pushed outcomes and roll itself back to 2.
"""
import json
import os
import socket
import sys
import threading
import time

import pytest

from firmware_shim.mqtt_paho import free_port
from tests.appkit import Gateway, gateway_lab
from tools.appclient import FlagsClient

STANDINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standins")
FLAG = "use_genserver_telemetry"


@pytest.fixture
def gateway(field_lab):
    """gateway(device, health=...) -> a Gateway on its own field lab; stopped at the end."""
    made = []

    def make(device, **kw):
        g = Gateway(gateway_lab(field_lab, device), device, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


def _probe(name, kind, **fields):
    d = {"type": kind, "name": name, "interval_s": 0.1, "timeout_s": 2, "initial_delay_s": 0}
    d.update(fields)
    return d


def _to_stage_2_with_samples(g, source, n=25):
    g.publish_stage(1)
    g.publish_stage(2)
    # the stage-2 baseline needs enough outcomes from the same source
    assert g.wait(lambda: g.source_samples(source) >= n, 30), g.status()["system_health"]


def _rolled_back_to_2(g, metric, source):
    assert g.wait(lambda: g.status()["current_stage"] == 2, 60), \
        (g.status()["system_health"], g.agent_log()[-2000:])
    st = g.status()
    entry = st["migration_history"][0]
    assert entry["op"] == "auto_rollback" and entry["from"] == 3 and entry["to"] == 2
    hits = [v for v in entry["violations"] if v["metric"] == metric and v["source"] == source]
    assert hits, entry["violations"]
    v = hits[0]
    assert v["limit"] is not None and ("source " + source) in v["message"]
    assert g.wait(lambda: "migration.rollback" in g.event_names()
                  and "health.violation" in g.event_names(), 30), g.events()
    last = st["last_auto_rollback"]
    assert any(x["source"] == source and x["metric"] == metric for x in last["violations"])
    text = g.local("status").stdout
    assert "last automatic rollback 3->2: " + source + " " + metric in text, text
    rollback = [p for n, p in g.events() if n == "migration.rollback"][-1]
    assert rollback["automatic"] and rollback["to"] == 2
    assert any(x["source"] == source for x in rollback["violations"])
    return v


def _app_recovers(g):
    # the application sees the flag go off through flags.json, and takes the old path
    assert g.snapshot()["flags"][FLAG] is False
    assert g.wait(lambda: "flag %s off" % FLAG in g.app_output().split(
        "flag %s on" % FLAG)[-1], 20), g.app_output()


def _http_json(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(("GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % path).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_errors_seen_by_the_http_probe_roll_the_device_back(gateway):
    port = free_port()
    g = gateway("gw-err", health={"probes": [
        _probe("gateway-http", "http", url="http://127.0.0.1:%d/healthz" % port)]})
    g.start_agent().start_app("--mode", "errors", port=port)
    _to_stage_2_with_samples(g, "gateway-http")
    g.publish_stage(3)
    v = _rolled_back_to_2(g, "error_rate", "gateway-http")
    assert v["limit"] == 0.05 and v["value"] > 0.1 and v["lower_bound"] > 0.05
    _app_recovers(g)
    statuses = [_http_json(port, "/work")[0] for _ in range(20)]
    assert statuses == [200] * 20
    assert _http_json(port, "/state")[1]["telemetry"] is False


def test_errors_pushed_over_statsd_roll_the_device_back(gateway):
    statsd_port = free_port()
    g = gateway("gw-statsd", health={"statsd": {
        "listen": "127.0.0.1:%d" % statsd_port, "requests": "gw.requests",
        "errors": "gw.errors", "latency": "gw.latency"}})
    g.start_agent().start_app("--mode", "errors", "--push", "statsd", "--statsd",
                              "127.0.0.1:%d" % statsd_port, "--traffic", "40")
    _to_stage_2_with_samples(g, "statsd")
    g.publish_stage(3)
    _rolled_back_to_2(g, "error_rate", "statsd")
    _app_recovers(g)
    # a datagram gets no answer: /v1/health is where the app sees a wrong format
    client = FlagsClient(g.run_dir)
    inputs = client.get("/v1/health")[1]["inputs"]
    assert inputs["datagrams"] > 0 and inputs["bad"] == 0, inputs
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.sendto(b'{"ok": "yes"}', os.path.join(g.run_dir, "metrics.sock"))
    sock.close()
    assert g.wait(lambda: client.get("/v1/health")[1]["inputs"]["bad"] == 1, 10)
    assert g.wait(lambda: "metrics: refused outcome line" in g.agent_log(), 10), g.agent_log()


def test_a_three_times_slower_path_crosses_twice_the_baseline(gateway):
    port = free_port()
    g = gateway("gw-lat", health={"probes": [
        _probe("gateway-http", "http", url="http://127.0.0.1:%d/healthz" % port)]})
    g.start_agent().start_app("--mode", "slow", port=port)
    _to_stage_2_with_samples(g, "gateway-http")
    g.publish_stage(3)
    st_base = g.status()["system_health"]["sources"]["gateway-http"]["baseline_latency_p50"]
    assert st_base is not None and st_base >= 50
    v = _rolled_back_to_2(g, "latency", "gateway-http")
    assert v["limit"] == 2.0 and v["value"] > 2.0
    _app_recovers(g)


def test_a_crashing_path_is_seen_as_restarts_by_the_systemd_probe(gateway, tmp_path,
                                                                   monkeypatch):
    # CI has no running systemd: tests/standins/systemctl prints what the real
    # `systemctl show -p NRestarts,ActiveState,Result --value` prints, from the
    # state that tests/standins/supervise.py (Restart=always) keeps. The agent and
    # the supervisor inherit PATH (the stand-in first) and the stand-in's folder.
    fake = str(tmp_path / "systemd")
    os.makedirs(fake)
    monkeypatch.setenv("PATH", STANDINS + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FLEETSTAGE_FAKE_SYSTEMD", fake)
    g = gateway("gw-crash", health={"probes": [
        _probe("gateway-unit", "systemd", unit="gateway-app.service", interval_s=0.2)]})
    g.start_agent()
    wrapper = [sys.executable, os.path.join(STANDINS, "supervise.py"),
               fake, "gateway-app.service", "--"]
    g.start_app("--mode", "crash", "--traffic", "20", wrapper=wrapper)
    g.publish_stage(1)
    g.publish_stage(2)
    assert g.wait(lambda: g.source_samples("gateway-unit") >= 3, 30)
    g.publish_stage(3)
    v = _rolled_back_to_2(g, "restart_frequency", "gateway-app.service")
    assert v["limit"] == 10 and v["value"] > 10
    _app_recovers(g)


def test_a_quiet_device_is_inconclusive_and_stays(gateway):
    g = gateway("gw-quiet", health={"probes": []})
    g.start_agent()
    for stage in (1, 2, 3):
        g.publish_stage(stage)
    # several monitoring checks (one a second) with no outcome at all
    assert g.wait(lambda: g.status()["monitoring"]["extended_ms"] >= 2000, 30), \
        g.status()["monitoring"]
    st = g.status()
    assert st["current_stage"] == 3 and st["state"] == "AT_STAGE"
    assert st["monitoring"]["verdict"] == "inconclusive"
    assert st["system_health"]["verdict"] == "inconclusive"
    assert st["migration_history"][0]["op"] == "migrate"
    g.publish_stage(4)  # no evidence against it: the next stage is not refused
    # a command the only targeted device refuses leaves no retained desired state, and
    # the note says why (not "no device known")
    r = g.lab.cli("publish-stage", "--target", "device:gw-quiet", "--json", "--timeout", "20",
                  "1")
    out = json.loads(r.stdout)
    assert out["devices"]["gw-quiet"]["result"] == "rejected", out
    assert out["desired_id"] is None, out
    assert out["desired_note"] == "nothing retained: every targeted device refused the command"


def test_flagd_provider_in_file_mode_reads_what_flags_json_says(gateway):
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType

    g = gateway("gw-flagd")
    g.start_agent()
    path = os.path.join(g.run_dir, "flags.flagd.json")
    assert oct(os.stat(os.path.join(g.run_dir, "flags.json")).st_mode & 0o777) == "0o640"

    def flagd_values():
        provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=path)
        api.set_provider_and_wait(provider)
        client = api.get_client()
        try:
            return {name: client.get_boolean_value(name, not value)
                    for name, value in g.snapshot()["flags"].items()}
        finally:
            api.shutdown()

    revisions = [g.snapshot()["revision"]]
    for stage in (1, 2, 3):
        g.publish_stage(stage)
        assert g.wait(lambda s=stage: g.snapshot()["stage"] == s, 10)
        snap = g.snapshot()
        revisions.append(snap["revision"])
        assert flagd_values() == snap["flags"]
    assert revisions == sorted(set(revisions))  # grows with every change
    assert g.snapshot()["flags"][FLAG] is True
    # restart: the new agent writes flags.json again at start, and the revision does
    # not go back
    before = os.stat(os.path.join(g.run_dir, "flags.json")).st_ino
    g.agent.stop()
    g.start_agent()
    assert g.wait(lambda: os.stat(os.path.join(g.run_dir, "flags.json")).st_ino != before, 20)
    assert g.snapshot()["revision"] >= revisions[-1]
    assert g.snapshot()["stage"] == 3 and g.snapshot()["flags"][FLAG] is True


def _trickle(path, stop, sent):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:
        for byte in b"GET /v1/flags HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 10000:
            if stop.is_set():
                break
            s.send(bytes([byte]))
            sent.append(byte)
            time.sleep(0.2)
    except OSError as exc:
        sent.append(exc)
    finally:
        s.close()


def test_a_trickling_client_on_the_api_or_console_does_not_delay_a_stage_command(gateway):
    g = gateway("gw-slow")
    g.start_agent()
    stop = threading.Event()
    sent_api, sent_console = [], []
    threads = [
        threading.Thread(target=_trickle, args=(os.path.join(g.run_dir, "api.sock"), stop,
                                                sent_api), daemon=True),
        threading.Thread(target=_trickle, args=(os.path.join(g.agent.state_dir, "agent.sock"),
                                                stop, sent_console), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        assert g.wait(lambda: len(sent_api) > 2 and len(sent_console) > 2, 10)
        before = (len(sent_api), len(sent_console))
        out = g.publish_stage(1)  # acked (asserted inside) ...
        assert out["devices"]["gw-slow"]["result"] == "applied"
        # ... while both tricklers are still connected and sending
        assert all(t.is_alive() for t in threads)
        assert len(sent_api) > before[0] and len(sent_console) > before[1]
        assert not any(isinstance(x, Exception) for x in sent_api + sent_console)
        assert g.status()["current_stage"] == 1  # the console still answers others
    finally:
        stop.set()
        for t in threads:
            t.join(5)
