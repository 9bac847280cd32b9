"""The agent config's run_dir and "health" section (CPython and MicroPython)."""
from corekit import raises

from agent.agent_config import AgentConfig, ConfigError

BASE = {"device_id": "gw-1", "fleet": "plant", "broker": "mqtt://127.0.0.1:1883",
        "key_file": "/k", "state_dir": "/s", "environment": "prod"}


def _cfg(health=None, **more):
    d = dict(BASE)
    d.update(more)
    if health is not None:
        d["health"] = health
    return AgentConfig(d)


def test_defaults_run_dir_and_no_probes():
    c = _cfg()
    assert c.run_dir == "/run/fleetstage"
    assert c.health == {"probes": [], "statsd": None}
    assert _cfg(run_dir="/tmp/x").run_dir == "/tmp/x"
    from agent.health_config import parse_health

    assert c.health == parse_health(None)  # no section: the same, without its module
    assert _cfg({}).health == parse_health({}) == c.health


def test_every_probe_type_with_its_fields():
    c = _cfg({"probes": [
        {"type": "http", "name": "h", "url": "http://127.0.0.1:8080/healthz",
         "interval_s": 1, "timeout_s": 0.5, "initial_delay_s": 3},
        {"type": "exec", "name": "e", "command": ["/bin/true", "x"]},
        {"type": "systemd", "name": "s", "unit": "gateway-app.service"}],
        "statsd": {"listen": "127.0.0.1:8125", "requests": "r", "errors": "e",
                   "latency": "l"}})
    h, e, s = c.health["probes"]
    prom = {"type": "prometheus", "name": "p", "url": "http://127.0.0.1:9100/metrics",
            "requests": "reqs", "errors": 'reqs{code="500"}', "latency": "lat_seconds"}
    p = _cfg({"probes": [prom]}).health["probes"][0]
    assert (h["interval_s"], h["timeout_s"], h["initial_delay_s"]) == (1, 0.5, 3)
    assert (e["interval_s"], e["timeout_s"], e["initial_delay_s"]) == (10, 2, 0)
    assert e["command"] == ["/bin/true", "x"] and s["unit"] == "gateway-app.service"
    assert p["errors"] == 'reqs{code="500"}' and p["latency"] == "lat_seconds"
    assert c.health["statsd"]["listen"] == ("127.0.0.1", 8125)


def test_each_mistake_names_its_field():
    cases = [
        ({"probes": {}}, "health.probes"),
        ({"probes": [{"type": "ping", "name": "x"}]}, "health.probes[0].type"),
        ({"probes": [{"type": "http", "name": "x"}]}, "health.probes[0].url"),
        ({"probes": [{"type": "http", "name": "x", "url": "ftp://h"}]}, "health.probes[0].url"),
        ({"probes": [{"type": "http", "url": "http://h"}]}, "health.probes[0].name"),
        ({"probes": [{"type": "exec", "name": "x", "command": "ls"}]},
         "health.probes[0].command"),
        ({"probes": [{"type": "exec", "name": "x", "command": ["a"], "interval_s": 0}]},
         "health.probes[0].interval_s"),
        ({"probes": [{"type": "exec", "name": "x", "command": ["a"], "unit": "u"}]},
         "health.probes[0].unit"),
        ({"probes": [{"type": "exec", "name": "x", "command": ["a"]},
                     {"type": "exec", "name": "x", "command": ["b"]}]},
         "health.probes[1].name"),
        ({"statsd": {"listen": "0.0.0.0:8125", "requests": "r"}}, "health.statsd.listen"),
        ({"statsd": {"listen": "127.0.0.1:99999", "requests": "r"}}, "health.statsd.listen"),
        ({"statsd": {"errors": "e"}}, "health.statsd"),
        ({"statsd": {"requests": "r", "gauge": "g"}}, "health.statsd.gauge"),
        ({"pings": []}, "health.pings"),
        ({"probes": [{"type": "exec", "name": "p%d" % i, "command": ["a"]} for i in range(4)]},
         "health.probes"),
        # a prometheus selector that can never match fails at start, not at every scrape
        ({"probes": [{"type": "prometheus", "name": "p", "url": "http://127.0.0.1:9100/m",
                      "requests": "reqs", "errors": 'reqs{code="500"'}]},
         "health.probes[0].errors"),
        ({"probes": [{"type": "prometheus", "name": "p", "url": "http://127.0.0.1:9100/m",
                      "requests": "reqs", "errors": "e", "latency": "lat{le}"}]},
         "health.probes[0].latency"),
    ]
    for health, field in cases:
        exc = raises(ConfigError, _cfg, health)
        assert exc.field == field, (health, exc.field, str(exc))
    assert raises(ConfigError, _cfg, None, run_dir="").field == "run_dir"
    # 5 meant as 5% would switch the error-rate rule off: a fraction is asked for
    exc = raises(ConfigError, _cfg, None, control={"thresholds": {"max_error_rate": 5}})
    assert exc.field == "control.thresholds.max_error_rate" and "0.05 is 5%" in str(exc), exc
    assert _cfg(None, control={"thresholds": {"max_error_rate": 1}}).control.thresholds[
        "max_error_rate"] == 1
    # max_samples bounds the memory of every health window: it has a ceiling too
    exc = raises(ConfigError, _cfg, None, control={"max_samples": 10 ** 9})
    assert exc.field == "control.max_samples" and "<= 2000" in str(exc), exc
    assert _cfg(None, control={"max_samples": 2000}).control.max_samples == 2000
