"""agent.agent_config on CPython and MicroPython: the same JSON, the same verdicts."""
import json

from corekit import raises

from agent.agent_config import AgentConfig, ConfigError, parse_broker, parse_config

BASE = {"device_id": "gw-1", "fleet": "plant", "broker": "mqtts://broker.lan:8884",
        "key_file": "/etc/fleetstage/gw-1.key", "state_dir": "/var/lib/fleetstage",
        "environment": "prod"}


def with_(**changes):
    d = dict(BASE)
    d.update(changes)
    return d


def test_minimal_config_and_defaults():
    c = parse_config(json.dumps(BASE))
    assert (c.host, c.port, c.tls) == ("broker.lan", 8884, True)
    assert c.insecure is False and c.groups == [] and c.username is None
    assert c.control.environment == "prod"
    assert c.keepalive_s == 30 and c.queue_limit == 256


def test_broker_urls():
    assert parse_broker("b", "mqtt://h") == ("h", 1883, False)
    assert parse_broker("b", "mqtts://h") == ("h", 8883, True)
    assert parse_broker("b", "mqtt://[::1]:1999") == ("::1", 1999, False)
    for bad in ("http://h", "mqtt://", "mqtt://h:0", "mqtt://h:x", "mqtt://u@h", "mqtt://h/p"):
        assert raises(ConfigError, parse_broker, "broker", bad).field == "broker"


def test_each_bad_field_is_named():
    cases = [
        (with_(device_id="a/b"), "device_id"),
        (with_(device_id=""), "device_id"),
        (with_(fleet=7), "fleet"),
        (with_(groups="pilot"), "groups"),
        (with_(groups=["ok", "no#"]), "groups[1]"),
        (with_(broker="tcp://h"), "broker"),
        (with_(insecure="yes"), "insecure"),
        (with_(environment="moon"), "environment"),
        (with_(tls={"ca": "ca.pem", "pin": "x"}), "tls.pin"),
        (with_(tls={"cert": "c.pem"}), "tls"),
        (with_(broker="mqtt://h", tls={"ca": "ca.pem"}), "tls"),
        (with_(credentials={"password": "p"}), "credentials.username"),
        (with_(keepalive_s=0), "keepalive_s"),
        (with_(queue_limit=True), "queue_limit"),
        (with_(backoff_min_s=10, backoff_max_s=1), "backoff_min_s"),
        (with_(control={"cooldown_ms": -1}), "control.cooldown_ms"),
        (with_(colour="red"), "colour"),
    ]
    for d, field in cases:
        err = raises(ConfigError, AgentConfig, d)
        assert err.field == field, (field, err.field, str(err))
        assert field in str(err)
    for missing in ("device_id", "fleet", "broker", "key_file", "state_dir", "environment"):
        d = dict(BASE)
        del d[missing]
        assert raises(ConfigError, AgentConfig, d).field == missing


def test_not_json_or_not_an_object():
    assert raises(ConfigError, parse_config, "{nope").field == "(file)"
    assert raises(ConfigError, parse_config, b"\xff\xfe").field == "(file)"
    assert raises(ConfigError, parse_config, "[1, 2]").field == "(top level)"


def test_tls_and_credentials():
    c = AgentConfig(with_(tls={"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"},
                          credentials={"username": "gw-1", "password": "s3cret"}))
    assert (c.tls_ca, c.tls_cert, c.tls_key) == ("ca.pem", "c.pem", "k.pem")
    assert (c.username, c.password) == ("gw-1", "s3cret")


def test_tls_hostname_check_is_its_own_switch_and_off_by_default():
    c = parse_config(json.dumps(with_(insecure=True, tls={"ca": "/etc/ca.pem"})))
    assert c.insecure is True and c.tls_skip_hostname_check is False  # unsigned != unverified
    assert c.tls_ca == "/etc/ca.pem"
    c = parse_config(json.dumps(with_(tls={"ca": "/c", "insecure_skip_hostname_check": True})))
    assert c.tls_skip_hostname_check is True and c.insecure is False and c.tls_ca == "/c"
    c = parse_config(json.dumps(with_(tls={"insecure_skip_hostname_check": False})))
    assert c.tls_skip_hostname_check is False and c.tls_ca is None


def test_tls_hostname_switch_is_validated():
    flag = "insecure_skip_hostname_check"
    for tls, field in (({flag: "yes"}, "tls." + flag), ({flag: 1}, "tls." + flag),
                       ({"ca": "/c", "verify": False}, "tls.verify")):
        assert raises(ConfigError, parse_config, json.dumps(with_(tls=tls))).field == field
    plain = with_(broker="mqtt://h", tls={"insecure_skip_hostname_check": True})
    assert raises(ConfigError, parse_config, json.dumps(plain)).field == "tls"


def test_hw_names_the_hardware_revision():
    assert parse_config(json.dumps(BASE)).hw is None
    assert parse_config(json.dumps(with_(hw="rev-b"))).hw == "rev-b"
    for bad in ("", "rev b", 7, "x" * 65):
        assert raises(ConfigError, AgentConfig, with_(hw=bad)).field == "hw"
