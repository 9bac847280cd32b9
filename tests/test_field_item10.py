"""Item 10 of issue 7: setting up the broker, the operator profile, --version, and every
error listed in the issue as one line with a non-zero exit code."""
import json
import os
import pwd
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time

from firmware_shim.mqtt_paho import free_port
from tests.agentkit import REPO
from tests.mqttkit import mosquitto_binary


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)


def test_item10_shipped_config_starts_as_shipped_after_one_setup_command(tmp_path):
    inv = tmp_path / "devices.json"
    inv.write_text(json.dumps({"gw-1": {"groups": ["a"]}, "gw-2": {"password": "pw2"}}))
    op = tmp_path / "op.pw"
    op.write_text("op-secret\n")
    base = tempfile.mkdtemp(prefix="brokersetup-")
    os.chmod(base, 0o755)
    out, conf_dir = os.path.join(base, "fleetstage"), os.path.join(base, "conf.d")
    done = _cli("broker-setup", "--fleet", "plant1", "--devices", str(inv),
                "--operator-password-file", str(op), "--out", out, "--conf-dir", conf_dir)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(conf_dir)) == ["fleetstage.conf"]  # no TLS asked: no cert paths
    conf = open(os.path.join(conf_dir, "fleetstage.conf")).read()
    assert "certfile" not in conf and out + "/devices.passwd" in conf
    if os.geteuid() == 0:  # the broker's own user owns what it reads
        broker = pwd.getpwnam("mosquitto").pw_uid
        for name in ("fleetstage.acl", "devices.passwd", "operators.passwd"):
            st = os.stat(os.path.join(out, name))
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (broker, 0o600), name
    generated = open(os.path.join(out, "device-passwords", "gw-1")).read().strip()
    assert len(generated) >= 20
    # Started with the file as installed (only its ports moved to free ones).
    ports = {1883: free_port(), 1884: free_port()}
    text = re.sub(r"^listener (\d+)", lambda m: "listener %d" % ports[int(m.group(1))], conf,
                  flags=re.M)
    persist = os.path.join(base, "persist")
    os.makedirs(persist)
    if os.geteuid() == 0:
        os.chown(persist, pwd.getpwnam("mosquitto").pw_uid, -1)
    main = os.path.join(base, "mosquitto.conf")
    with open(main, "w") as f:
        f.write("persistence_location %s/\n" % persist + text)
    proc = subprocess.Popen([mosquitto_binary(), "-c", main], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                socket.create_connection(("127.0.0.1", ports[1884]), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        key = tmp_path / "fleet.key"
        assert _cli("keygen", "--out", str(key)).returncode == 0
        url = "mqtt://127.0.0.1:%d" % ports[1884]
        ok = _cli("status", "--broker", url, "--fleet", "plant1", "--key", str(key),
                  "--username", "operator", "--password-file", str(op), "--timeout", "3")
        assert ok.returncode == 1 and "no device of fleet plant1 has reported" in ok.stdout, \
            ok.stdout + ok.stderr
        bad = tmp_path / "bad.pw"
        bad.write_text("wrong\n")
        no = _cli("status", "--broker", url, "--fleet", "plant1", "--key", str(key),
                  "--username", "operator", "--password-file", str(bad), "--timeout", "5")
        assert no.returncode == 2 and "not authorised" in no.stderr, no.stderr
        assert len(no.stderr.strip().splitlines()) == 1
    finally:
        proc.kill()
        proc.wait(5)


def test_item10_profile_keeps_daily_commands_short(tmp_path):
    env = dict(os.environ, FLEETSTAGE_PROFILES=str(tmp_path / "p.json"))
    key = tmp_path / "fleet.key"
    assert _cli("keygen", "--out", str(key)).returncode == 0
    done = _cli("profile", "add", "plant1", "--broker", "mqtt://127.0.0.1:1", "--fleet",
                "plant1", "--key", str(key), "--username", "operator", env=env)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "p.json").st_mode) == 0o600
    shown = json.loads(_cli("profile", "show", env=env).stdout)
    assert shown["broker"] == "mqtt://127.0.0.1:1" and shown["key"].endswith("/fleet.key")
    assert "plant1" in _cli("profile", "list", env=env).stdout
    # The profile's key is used: its absence (removed after the add) is one line naming it.
    key.unlink()
    done = _cli("status", env=env)
    assert done.returncode == 2 and "cannot read the key file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = _cli("status", "--profile", "nope", env=env)
    assert done.returncode == 2 and "no profile 'nope'" in done.stderr


def test_item10_version_and_every_listed_error_is_one_line(tmp_path):
    env = dict(os.environ, FLEETSTAGE_PROFILES=str(tmp_path / "none.json"))
    v = _cli("--version", env=env)
    assert v.returncode == 0 and re.match(r"fleetstage \d+\.\d+", v.stdout)
    key = tmp_path / "fleet.key"
    assert _cli("keygen", "--out", str(key), env=env).returncode == 0
    cases = [
        (("publish-stage", "9", "--broker", "mqtt://127.0.0.1:1", "--key", str(key),
          "--fleet", "f"), "stage must be 1..4"),
        (("publish-stage", "1", "--broker", "mqtt://127.0.0.1:1", "--key", "nope.key",
          "--fleet", "f"), "cannot read the key file nope.key: No such file or directory"),
        (("status", "--broker", "mqtt://127.0.0.1:%d" % free_port(), "--key", str(key),
          "--fleet", "f", "--timeout", "2"), "cannot connect to the broker"),
        (("status", "--key", str(key), "--fleet", "f"), "no broker"),
        (("publish-stage", "1", "--broker", "mqtt://127.0.0.1:1", "--key", str(key)),
         "--fleet is required"),
    ]
    for args, words in cases:
        done = _cli(*args, env=env)
        err = done.stderr.strip()
        assert done.returncode != 0 and words in err, (args, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert "Errno" not in err and "('" not in err, (args, err)


def test_item10_mosquitto_acl_writes_the_files_the_shipped_config_names(tmp_path):
    inv = tmp_path / "devices.json"
    inv.write_text(json.dumps({"gw-1": {"groups": [], "password": "pw1"}}))
    op = tmp_path / "op.pw"
    op.write_text("op\n")
    done = _cli("mosquitto-acl", "--fleet", "plant1", "--devices", str(inv),
                "--operator-password-file", str(op), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    conf = open(os.path.join(REPO, "tools", "mosquitto", "mosquitto.conf")).read()
    for name in ("fleetstage.acl", "devices.passwd", "operators.passwd"):
        assert (tmp_path / "out" / name).exists() and "/" + name in conf
    assert (tmp_path / "out" / "devices.passwd").read_text().startswith("gw-1:")
    assert (tmp_path / "out" / "operators.passwd").read_text().startswith("operator:")
    done = _cli("mosquitto-acl", "--fleet", "plant1", "--devices", "nope.json",
                "--operator-password-file", str(op), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stderr.strip() == \
        "fleetstage mosquitto-acl: nope.json: No such file or directory"


def test_item10_tls_conf_is_read_after_the_main_conf_through_include_dir(tmp_path):
    """Debian's mosquitto reads conf.d in sorted order; the TLS listeners need
    per_listener_settings from fleetstage.conf first (as fleetstage-tls.conf it sorted
    first and mosquitto refused to start: "Duplicate password_file value"). The field lab
    starts every broker through include_dir, so each lab test starts it that way."""
    from tools import broker_setup

    inv = {"gw-1": {"groups": ["a"], "password": "pw1"}}
    out, conf_dir = str(tmp_path / "fleetstage"), str(tmp_path / "conf.d")
    os.makedirs(conf_dir)
    legacy = os.path.join(conf_dir, "fleetstage-tls.conf")  # left by an older setup
    open(legacy, "w").write("listener 8883\n")
    broker_setup.setup("plant1", inv, "op", out, conf_dir, tls=True, hostnames=["127.0.0.1"])
    names = sorted(os.listdir(conf_dir))
    assert names == ["fleetstage.conf", broker_setup.TLS_CONF_NAME], names
    assert "per_listener_settings true" in open(os.path.join(conf_dir, names[0])).read()
    assert "ca.srl" not in os.listdir(out)  # openssl's serial file stays in its temp folder
