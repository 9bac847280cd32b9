"""The applications' side of the agent on a Pi, piece by piece, without a broker:
the run_dir files, the HTTP API on api.sock (through tools.appclient), the
metrics socket and statsd, and each probe type. The agent's loop is this
test's thread: it calls AppSide.poll() while a client thread waits."""
import http.server
import json
import os
import socket
import sys
import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from agent.control import MigrationControl
from firmware_shim.app_api import HttpConn
from firmware_shim.app_metrics import StatsdBatch
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock
from firmware_shim.mqtt_paho import free_port
from firmware_shim.probes import ProbeRunner, parse_systemctl_values
from tests.agentkit import wait_until
from tools.app_side import AppSide
from tools.appclient import FlagsClient

FLAG = "use_genserver_telemetry"


def _side(tmp_path, health=None, log=None):
    control = MigrationControl.open(str(tmp_path / "state"), FileSystem(), ManualClock())
    side = AppSide(str(tmp_path / "run"), health or {"probes": [], "statsd": None}, control,
                   log=log)
    return side, control


def _serve_while(side, fn):
    """Run fn() in a thread while this thread is the agent's loop; fn's result."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    while t.is_alive():
        side.poll()
        t.join(0.01)
    return out[0]


def test_files_are_written_atomically_with_mode_0640_and_follow_changes(tmp_path):
    side, control = _side(tmp_path)
    run = tmp_path / "run"
    snap = json.loads((run / "flags.json").read_text())
    assert snap["stage"] == 0 and snap["flags"][FLAG] is False
    assert oct(os.stat(run / "flags.json").st_mode & 0o777) == "0o640"
    flagd = json.loads((run / "flags.flagd.json").read_text())
    assert flagd["flags"][FLAG]["defaultVariant"] == "off"
    for _ in range(3):
        control.migrate_to_stage(control.stage + 1)
    side.poll()
    snap2 = json.loads((run / "flags.json").read_text())
    assert snap2["revision"] > snap["revision"] and snap2["flags"][FLAG] is True
    assert json.loads((run / "flags.flagd.json").read_text())["flags"][FLAG][
        "defaultVariant"] == "on"
    assert sorted(os.listdir(run)) == ["api.sock", "flags.flagd.json", "flags.json",
                                       "metrics.sock", "run.lock"]  # no temp files left
    side.close()
    control.close()


def test_api_flags_etag_name_long_poll_and_outcomes(tmp_path):
    side, control = _side(tmp_path)
    client = FlagsClient(str(tmp_path / "run"))
    status, doc = _serve_while(side, lambda: client.get("/v1/flags"))
    assert status == 200 and doc["stage"] == 0 and FLAG in doc["flags"]
    rev = doc["revision"]

    def conditional(tags='"%d"' % rev):
        from tools.appclient import _UnixHTTPConnection
        conn = _UnixHTTPConnection(os.path.join(client.run_dir, "api.sock"), 5)
        conn.request("GET", "/v1/flags", headers={"If-None-Match": tags})
        reply = conn.getresponse()
        return reply.status, reply.getheader("ETag"), reply.read()

    assert _serve_while(side, conditional) == (304, '"%d"' % rev, b"")
    # RFC 9110's If-None-Match: a list, weak comparison, or *
    for tags in ('W/"%d"' % rev, '"%d", "%d"' % (rev + 7, rev), "*"):
        assert _serve_while(side, lambda t=tags: conditional(t))[0] == 304, tags
    assert _serve_while(side, lambda: conditional('"%d"' % (rev + 1)))[0] == 200
    assert _serve_while(side, lambda: client.get("/v1/flags/" + FLAG)) == \
        (200, {"name": FLAG, "value": False, "revision": rev})
    assert _serve_while(side, lambda: client.get("/v1/flags/nope"))[0] == 404
    assert _serve_while(side, lambda: client.get("/v2/x"))[0] == 404
    # long poll: nothing new within the wait -> 304
    assert _serve_while(side, lambda: client.get(f"/v1/flags?after={rev}&wait=0.2"))[0] == 304
    # an app that saw a higher revision before the agent's state dir was reset gets the
    # current document at once: the revision is not the one it saw
    status, doc = _serve_while(side, lambda: client.get(f"/v1/flags?after={rev + 50}&wait=20"))
    assert status == 200 and doc["revision"] == rev
    # long poll answered by a change made while it waits
    waiter = threading.Thread(target=lambda: result.append(client.wait_for_change(timeout=20)))
    result = []
    waiter.start()
    assert wait_until(lambda: (side.poll(), side.api.clients == 1)[1], 10, step=0.01)
    for _ in range(20):
        side.poll()
    assert waiter.is_alive()  # parked, not answered
    control.migrate_to_stage(1)
    while waiter.is_alive():
        side.poll()
        waiter.join(0.01)
    assert result[0]["stage"] == 1 and result[0]["revision"] > rev
    # outcomes: one object, JSON lines, and a bad one (400, nothing recorded)

    def post(body):
        from tools.appclient import _UnixHTTPConnection
        conn = _UnixHTTPConnection(os.path.join(client.run_dir, "api.sock"), 5)
        conn.request("POST", "/v1/outcomes", body=body)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())

    assert _serve_while(side, lambda: post(b'{"ok": false, "latency_ms": 4}')) == \
        (202, {"recorded": 1})
    lines = b'{"ok": true, "latency_ms": 1, "source": "svc"}\n{"ok": true}\n'
    assert _serve_while(side, lambda: post(lines)) == (202, {"recorded": 2})
    status, body = _serve_while(side, lambda: post(b'{"ok": "yes"}'))
    assert status == 400 and "ok" in body["error"]
    # a batch with one bad line: refused whole, and the line is named
    status, body = _serve_while(side, lambda: post(b'{"ok": true}\n{"ok": 3}\n'))
    assert status == 400 and body["error"].startswith("line 2: "), body
    # an empty body records nothing: said, not 202
    status, body = _serve_while(side, lambda: post(b""))
    assert status == 400 and "no outcome" in body["error"]
    status, body = _serve_while(side, lambda: post(b'{"ok": true, "source": "bad name!"}'))
    assert status == 400 and "source" in body["error"]

    def chunked():  # a streamed upload: refused (411), not read as an empty body
        from tools.appclient import _UnixHTTPConnection
        conn = _UnixHTTPConnection(os.path.join(client.run_dir, "api.sock"), 5)
        conn.request("POST", "/v1/outcomes", body=iter([b'{"ok": false}']),
                     encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())

    status, body = _serve_while(side, chunked)
    assert status == 411 and "Content-Length" in body["error"]
    sources = control.status()["system_health"]["sources"]
    assert sources["app"] == dict(sources["app"], samples=2, errors=1)
    assert sources["svc"]["samples"] == 1
    health = _serve_while(side, lambda: client.get("/v1/health"))[1]
    assert health["system_health"]["verdict"] == "inconclusive" and health["stage"] == 1
    side.close()
    control.close()


def test_helper_enabled_is_cached_by_revision_and_report_reaches_the_window(tmp_path):
    side, control = _side(tmp_path)
    client = FlagsClient(str(tmp_path / "run"))
    assert client.enabled(FLAG) is False and client.revision == control.seq
    stamp = client._stamp
    assert client.enabled(FLAG) is False and client._stamp == stamp  # no re-read
    for _ in range(3):
        control.migrate_to_stage(control.stage + 1)
    side.poll()
    assert client.enabled(FLAG) is True and client._stamp != stamp
    assert client.report(False, 30.0, source="ingest") is True
    assert client.report(True, 10.0, source="ingest") is True
    # what the agent would drop is refused here, not sent and called delivered
    for bad in ({"ok": "false", "latency_ms": 5}, {"ok": True, "latency_ms": -1},
                {"ok": True, "source": "x" * 60}, {"ok": True, "source": "bad name!"}):
        try:
            client.report(**bad)
        except ValueError:
            pass
        else:
            raise AssertionError("report(%r) was sent" % (bad,))
    side.poll()
    src = control.status()["system_health"]["sources"]["ingest"]
    assert (src["samples"], src["errors"]) == (2, 1)
    side.close()
    assert FlagsClient(str(tmp_path / "run")).report(True) is False  # no agent: dropped
    control.close()


def test_helper_follows_a_replaced_snapshot_even_when_its_revision_is_lower(tmp_path):
    """The agent's state dir was reset (a new store, revisions from 1 again) while the
    application kept running: the helper must not keep the old agent's flags."""
    from firmware_shim.app_files import write_atomically

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = str(run_dir / "flags.json")
    write_atomically(path, json.dumps({"revision": 9, "flags": {FLAG: True}}).encode())
    client = FlagsClient(str(run_dir))
    assert client.enabled(FLAG) is True and client.revision == 9
    write_atomically(path, json.dumps({"revision": 2, "flags": {FLAG: False}}).encode())
    assert client.enabled(FLAG) is False and client.revision == 2


def test_statsd_over_udp_and_json_lines_on_the_metrics_socket(tmp_path):
    port = free_port()
    said = []
    side, control = _side(tmp_path, {"probes": [], "statsd": {
        "listen": ("127.0.0.1", port), "requests": "gw.req", "errors": "gw.err",
        "latency": "gw.lat"}}, log=said.append)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(10):
        lines = ["gw.req:1|c", "gw.lat:%d|ms" % (10 + i)]
        if i < 3:
            lines.append("gw.err:1|c")
        udp.sendto("\n".join(lines).encode(), ("127.0.0.1", port))
    udp.sendto(b"gw.req:5|c|@0.5\nnot a metric\nother.thing:1|c", ("127.0.0.1", port))
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.sendto(b'{"ok": false, "latency_ms": 7}\n{"ok": 1}\n', str(tmp_path / "run" /
                                                                       "metrics.sock"))
    assert wait_until(lambda: (side.poll(), control.status()["system_health"]["samples"])[1]
                      >= 21, 10)
    sources = control.status()["system_health"]["sources"]
    assert (sources["statsd"]["samples"], sources["statsd"]["errors"]) == (20, 3)
    assert (sources["app"]["samples"], sources["app"]["errors"]) == (1, 1)
    # the app can see what it got wrong: counted in /v1/health, the first one logged
    assert wait_until(lambda: (side.poll(), side.health()["inputs"]["datagrams"])[1] >= 12, 10)
    assert side.health()["inputs"] == {"datagrams": 12, "bad": 1, "ignored": 2, "refused": 0}
    dgram.sendto(b"\xff\xfe not text", str(tmp_path / "run" / "metrics.sock"))
    assert wait_until(lambda: (side.poll(), side.health()["inputs"]["bad"])[1] == 2, 10)
    said = [line for line in said if "metrics: refused" in line]
    assert len(said) == 1 and "'{\"ok\": 1}'" in said[0] and "ok" in said[0], said
    side.close()
    control.close()


def test_statsd_batch_spreads_latencies_over_calls():
    got = []
    b = StatsdBatch({"requests": None, "errors": "e", "latency": "l"})
    for line in ("l:5|ms", "l:6|ms", "e:1|c"):
        b.line(line)
    assert b.flush(lambda ok, lat, src: got.append((ok, lat, src))) == 2
    assert got == [(False, 5.0, "statsd"), (True, 6.0, "statsd")]


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self):  # noqa: N802
        if self.path == "/fail":
            self.send_response(500)
            self.end_headers()
            return
        data = type(self).body
        self.send_response(type(self).status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _ProbeSink:
    def __init__(self):
        self.single, self.bulk, self.restart = [], [], []

    def outcome(self, ok, latency, source):
        self.single.append((ok, latency, source))

    def outcomes(self, calls, errors, latency, source):
        self.bulk.append((calls, errors, latency, source))

    def restarts(self, name, count):
        self.restart.append((name, count))


def _run_until(runner, predicate):
    assert wait_until(lambda: (runner.poll(), predicate())[1], 15, step=0.01)


def test_http_probe_ok_error_and_refused():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    dead = free_port()
    sink = _ProbeSink()
    specs = [{"type": "http", "name": n, "interval_s": 0.05, "timeout_s": 2,
              "initial_delay_s": 0, "url": url} for n, url in (
        ("ok", "http://127.0.0.1:%d/metrics" % port), ("bad", "http://127.0.0.1:%d/fail" % port),
        ("gone", "http://127.0.0.1:%d/" % dead))]
    runner = ProbeRunner(specs, sink)
    _run_until(runner, lambda: {s for _, _, s in sink.single} == {"ok", "bad", "gone"})
    by = {s: (ok, lat) for ok, lat, s in sink.single}
    assert by["ok"][0] is True and by["ok"][1] > 0
    assert by["bad"][0] is False and by["bad"][1] is not None
    assert by["gone"] == (False, None)
    runner.close()
    server.shutdown()


def test_exec_probe_never_blocks_the_loop(tmp_path):
    marker = tmp_path / "release"
    slow = [sys.executable, "-c", "import os,time\nwhile not os.path.exists(%r): "
            "time.sleep(0.01)" % str(marker)]
    sink = _ProbeSink()
    specs = [{"type": "exec", "name": "slow", "interval_s": 60, "timeout_s": 30,
              "initial_delay_s": 0, "command": slow},
             {"type": "exec", "name": "fails", "interval_s": 60, "timeout_s": 30,
              "initial_delay_s": 0, "command": [sys.executable, "-c", "raise SystemExit(3)"]}]
    runner = ProbeRunner(specs, sink)
    _run_until(runner, lambda: any(s == "fails" for _, _, s in sink.single))
    for _ in range(50):
        runner.poll()  # returns while the slow command still runs
    assert [s for _, _, s in sink.single] == ["fails"] and runner.probes[0].future is not None
    marker.write_text("go")
    _run_until(runner, lambda: any(s == "slow" for _, _, s in sink.single))
    assert (True, "slow") in [(ok, s) for ok, _, s in sink.single]
    assert (False, "fails") in [(ok, s) for ok, _, s in sink.single]
    runner.close()


def test_systemctl_values_in_any_order():
    for text in ("success\n3\nactive\n", "active\nsuccess\n3\n", "3\nactive\nwatchdog\n"):
        v = parse_systemctl_values(text)
        assert v["NRestarts"] == 3 and v["ActiveState"] == "active"
    assert parse_systemctl_values("start-limit-hit\n0\nfailed\n")["Result"] == "start-limit-hit"


def test_systemd_probe_counts_restart_rises_and_watchdog_failures(tmp_path, monkeypatch):
    # CI has no running systemd: tests/standins/systemctl prints what the real one prints.
    standins = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standins")
    monkeypatch.setenv("PATH", standins + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FLEETSTAGE_FAKE_SYSTEMD", str(tmp_path))
    state = tmp_path / "gw.service.json"
    state.write_text(json.dumps({"ActiveState": "active", "NRestarts": 2, "Result": "success"}))
    sink = _ProbeSink()
    runner = ProbeRunner([{"type": "systemd", "name": "unit", "interval_s": 0.05,
                           "timeout_s": 5, "initial_delay_s": 0, "unit": "gw.service"}], sink)
    _run_until(runner, lambda: len(sink.single) >= 1)
    assert sink.restart == [] and sink.single[0] == (True, None, "unit")
    state.write_text(json.dumps({"ActiveState": "active", "NRestarts": 7, "Result": "watchdog"}))
    _run_until(runner, lambda: sink.restart)
    assert sink.restart[0] == ("gw.service", 5)
    _run_until(runner, lambda: sink.single[-1][0] is False)
    runner.close()


def test_prometheus_probe_takes_differences_between_scrapes():
    reg = CollectorRegistry()
    reqs = Counter("http_requests", "requests", ["code"], registry=reg)
    lat = Histogram("http_request_duration_seconds", "latency", registry=reg)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Metrics.body = generate_latest(reg)
    sink = _ProbeSink()
    runner = ProbeRunner([{
        "type": "prometheus", "name": "prom", "interval_s": 0.05, "timeout_s": 2,
        "initial_delay_s": 0, "url": "http://127.0.0.1:%d/metrics" % server.server_address[1],
        "requests": "http_requests_total", "errors": 'http_requests_total{code="500"}',
        "latency": "http_request_duration_seconds"}], sink)
    _run_until(runner, lambda: runner.probes[0].last is not None or runner.probes[0].errors > 3)
    assert runner.probes[0].last is not None, runner.probes[0].last_error
    for i in range(100):
        reqs.labels(code="500" if i < 30 else "200").inc()
        lat.observe(0.040)
    _Metrics.body = generate_latest(reg)
    _run_until(runner, lambda: sink.bulk)
    calls, errors, latency, source = sink.bulk[0]
    assert (calls, errors, source) == (100, 30, "prom") and abs(latency - 40.0) < 1e-6
    runner.close()
    server.shutdown()


def test_a_prometheus_scrape_with_a_nan_latency_sum_fails_and_feeds_no_latency():
    # The text format allows NaN and +Inf: such a mean would reach the health window as a
    # latency no percentile can order. The scrape fails instead (a failed outcome, the
    # error said once), and a good scrape after it is taken as usual.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    text = ("# TYPE reqs counter\nreqs_total %d\n# TYPE lat summary\n"
            "lat_sum %s\nlat_count %d\n")
    _Metrics.body = (text % (10, "0.5", 10)).encode()
    sink = _ProbeSink()
    runner = ProbeRunner([{
        "type": "prometheus", "name": "prom", "interval_s": 0.05, "timeout_s": 2,
        "initial_delay_s": 0, "url": "http://127.0.0.1:%d/metrics" % server.server_address[1],
        "requests": "reqs_total", "errors": "errs_total", "latency": "lat"}], sink)
    _run_until(runner, lambda: runner.probes[0].last is not None)
    _Metrics.body = (text % (20, "NaN", 20)).encode()
    _run_until(runner, lambda: runner.probes[0].errors > 0)
    assert "latency_sum_ms is nan, not a finite number" in runner.probes[0].last_error
    assert (False, None, "prom") in sink.single and sink.bulk == []
    _Metrics.body = (text % (30, "1.5", 30)).encode()
    _run_until(runner, lambda: sink.bulk)
    calls, errors, latency, source = sink.bulk[0]
    assert (calls, errors, source) == (20, 0, "prom") and abs(latency - 50.0) < 1e-6
    _Metrics.body = (text % (40, "1.0", 40)).encode()  # the sum fell: no mean to trust
    _run_until(runner, lambda: len(sink.bulk) > 1)
    assert sink.bulk[1] == (10, 0, None, "prom")
    runner.close()
    server.shutdown()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_any_bytes_into_the_http_parser_get_an_answer_or_wait(chunks):
    class Backend:
        def current(self):
            return {"revision": 1, "flags": {FLAG: True}}

        def record(self, ok, latency, source):
            pass

        def health(self):
            return {}

    conn = HttpConn(Backend())
    for chunk in chunks:
        conn.feed(chunk)
        conn.tick(0.0)
    conn.eof()
    if conn.out:
        assert conn.out.startswith(b"HTTP/1.1 ") and conn.done


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.text(max_size=80).map(str.encode),
    st.sampled_from([b"gw.req:1|c", b"gw.err:x|c", b"gw.lat:|ms", b'{"ok": true}', b"{",
                     b'{"ok": false, "latency_ms": -1}', b'{"ok": true, "source": 7}',
                     b"gw.req:1|c|@0", b":|", b"\xff\xfe", b"gw.lat:-5|ms", b"gw.lat:nan|ms",
                     b"gw.req:inf|c", b'{"ok": true, "latency_ms": 1e400}'])), max_size=10))
def test_any_datagram_is_an_outcome_or_counted_as_bad(datagrams):
    from firmware_shim.app_metrics import MetricsListener

    got = []
    listener = MetricsListener.__new__(MetricsListener)  # no sockets: the parsing only
    listener.record = lambda ok, lat, src: got.append((ok, lat, src))
    listener.batch = StatsdBatch({"requests": "gw.req", "errors": "gw.err", "latency": "gw.lat"})
    listener.bad = listener.received = 0
    said = []
    listener.log = said.append
    for d in datagrams:
        listener._datagram(d)
    listener.batch.flush(listener.record)
    assert len(said) == (1 if listener.bad else 0)  # the first bad one is said, once
    for ok, lat, src in got:
        assert ok in (True, False) and (lat is None or 0 <= lat < float("inf"))
        assert src is None or isinstance(src, str)


def test_a_run_dir_that_cannot_be_made_stops_the_agent_with_one_line(tmp_path):
    import subprocess

    from agent import protocol as P
    from tests.agentkit import REPO, AgentProcess

    class NoBroker:
        url = "mqtt://127.0.0.1:9"

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    agent = AgentProcess(str(tmp_path), NoBroker(), "plant", P.new_fleet_key(), "gw1",
                         config={"run_dir": str(blocker / "run")})
    r = subprocess.run([sys.executable, "-m", "tools.cli", "agent", "--config",
                        agent.config_path], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if "cannot start" in ln]
    assert len(lines) == 1 and "run_dir" in lines[0] and "Traceback" not in r.stderr


class _NoBroker:
    url = "mqtt://127.0.0.1:9"


def _agent_cmd(agent):
    return [sys.executable, "-m", "tools.cli", "agent", "--config", agent.config_path]


def test_a_second_agent_on_the_same_run_dir_is_refused_and_the_first_keeps_its_files(
        tmp_path):
    """Two configs that differ in state_dir only: the second agent says so in one line and
    exits 2 before it touches the first one's flags.json or sockets."""
    import subprocess

    from agent import protocol as P
    from tests.agentkit import REPO, AgentProcess

    key = P.new_fleet_key()
    run_dir = str(tmp_path / "run")
    first = AgentProcess(str(tmp_path / "a"), _NoBroker(), "plant", key, "gw1",
                         config={"run_dir": run_dir}).start()
    try:
        snapshot = os.path.join(run_dir, "flags.json")
        assert wait_until(lambda: os.path.exists(snapshot) and os.path.exists(
            os.path.join(run_dir, "metrics.sock")), 20), first.log()
        client = FlagsClient(run_dir)
        client.report(True, 5)  # the first agent is busy serving applications
        before = os.stat(snapshot).st_ino
        second = AgentProcess(str(tmp_path / "b"), _NoBroker(), "plant", key, "gw1",
                              config={"run_dir": run_dir})
        r = subprocess.run(_agent_cmd(second), cwd=REPO, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2, (r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert ("config field 'run_dir': %s is the run_dir of another running agent (PID %d)"
                % (run_dir, first.proc.pid)) in lines[0], lines
        assert "give each agent its own run_dir" in lines[0]
        # the first agent's files and sockets are its own still
        assert first.alive()
        assert os.stat(snapshot).st_ino == before
        assert client.get("/v1/flags")[0] == 200
        assert client.get("/v1/health")[1]["system_health"]["sources"]["app"]["samples"] == 1
    finally:
        first.stop()
    # once the first agent stopped, the same run_dir is free again
    again = AgentProcess(str(tmp_path / "b"), _NoBroker(), "plant", key, "gw1",
                         config={"run_dir": run_dir}).start()
    try:
        assert wait_until(lambda: os.stat(snapshot).st_ino != before, 20), again.log()
        assert again.alive()
    finally:
        again.stop()


def test_a_statsd_port_in_use_is_one_line_that_names_the_field(tmp_path):
    import subprocess

    from agent import protocol as P
    from tests.agentkit import REPO, AgentProcess

    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        listen = "127.0.0.1:%d" % taken.getsockname()[1]
        agent = AgentProcess(str(tmp_path), _NoBroker(), "plant", P.new_fleet_key(), "gw1",
                             config={"health": {"statsd": {"listen": listen,
                                                           "requests": "gw.requests"}}})
        r = subprocess.run(_agent_cmd(agent), cwd=REPO, capture_output=True, text=True,
                           timeout=60)
    finally:
        taken.close()
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "config field 'health.statsd.listen': cannot listen on UDP " + listen in lines[0]
    assert "Address already in use" in lines[0] and "pick a free one" in lines[0]


def test_local_status_into_a_closed_pipe_exits_without_a_traceback(tmp_path):
    """`fleetstage local status | head -1`: the reader goes away before the output ends."""
    import subprocess

    from agent import protocol as P
    from agent.control import MigrationControl
    from firmware_shim.files import FileSystem
    from firmware_shim.machine import SystemClock
    from tests.agentkit import REPO, AgentProcess

    agent = AgentProcess(str(tmp_path), _NoBroker(), "plant", P.new_fleet_key(), "gw1")
    # the device's state, as an agent that ran once leaves it (with none `local` refuses)
    MigrationControl.open(agent.state_dir, FileSystem(), SystemClock()).close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write fails with EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "tools.cli", "local", "status", "--config",
                            agent.config_path], cwd=REPO, stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert r.returncode == 1, r.stderr
    assert r.stderr == "", r.stderr


def test_a_probe_waits_its_initial_delay_then_runs_every_interval():
    now = [100.0]
    sink = _ProbeSink()
    runner = ProbeRunner([{"type": "exec", "name": "late", "interval_s": 5, "timeout_s": 5,
                           "initial_delay_s": 30, "command": [sys.executable, "-c", "pass"]}],
                         sink, clock=lambda: now[0])
    for _ in range(20):
        runner.poll()
    assert runner.probes[0].runs == 0  # still in its grace period
    now[0] = 130.0
    runner.poll()
    assert runner.probes[0].runs == 1
    assert wait_until(lambda: (runner.poll(), sink.single)[1], 15)
    runner.poll()
    assert runner.probes[0].runs == 1  # next one due at 135
    now[0] = 135.0
    runner.poll()
    assert runner.probes[0].runs == 2
    runner.close()
