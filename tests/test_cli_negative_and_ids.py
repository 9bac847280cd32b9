"""Values a user can mistype: a negative --stale-after or seq --after, a device id the
agent and broker-setup refuse. Each is one line saying what is wrong, a non-zero exit,
and nothing written."""
import os
import subprocess
import sys

from tests.agentkit import REPO


def _cli(tmp_path, *args):
    env = dict(os.environ, FLEETSTAGE_PROFILES=str(tmp_path / "none.json"))
    env.pop("FLEETSTAGE_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def _one_line(done, words):
    err = done.stderr.strip()
    assert done.returncode != 0 and words in err, (done.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_negative_stale_after_and_seq_after_are_refused(tmp_path):
    state = str(tmp_path / "state")
    for value in ("-5", "0", "-0", "nan", "inf"):
        done = _cli(tmp_path, "status", "--stale-after", value, "--fleet", "f",
                    "--broker", "mqtt://127.0.0.1:1", "--key", "none.key")
        _one_line(done, "argument --stale-after: must be a number > 0 seconds")
    _one_line(_cli(tmp_path, "seq", "--after", "-3", "--fleet", "f", "--state-dir", state),
              "argument --after: must be a number >= 0, not -3")
    assert not os.path.exists(state)
    done = _cli(tmp_path, "seq", "--after", "7", "--fleet", "f", "--state-dir", state)
    assert done.returncode == 0 and "last sequence number" in done.stdout, done.stderr


def test_keygen_refuses_a_device_id_the_agent_refuses(tmp_path):
    fleet_key = str(tmp_path / "fleet.key")
    assert _cli(tmp_path, "keygen", "--out", fleet_key).returncode == 0
    for bad in ("gw:1", "gw/1", "gw 1", "x" * 65):
        out = str(tmp_path / "dev.key")
        done = _cli(tmp_path, "keygen", "--device", bad, "--fleet-key", fleet_key,
                    "--out", out)
        _one_line(done, "--device %r:" % bad)
        assert not os.path.exists(out)
    # broker-setup refuses the same id (one line too)
    inv = tmp_path / "devices.json"
    inv.write_text('{"gw:1": {}}')
    (tmp_path / "op.pw").write_text("op\n")
    done = _cli(tmp_path, "broker-setup", "--fleet", "f", "--devices", str(inv),
                "--operator-password-file", str(tmp_path / "op.pw"),
                "--out", str(tmp_path / "out"), "--conf-dir", str(tmp_path / "conf"))
    _one_line(done, "device id 'gw:1'")
    done = _cli(tmp_path, "keygen", "--device", "gw-1.a_b", "--fleet-key", fleet_key,
                "--out", str(tmp_path / "ok.key"))
    assert done.returncode == 0 and os.path.exists(tmp_path / "ok.key"), done.stderr


def test_install_enable_outside_root_refused_before_writing(tmp_path):
    fleet_key, key = str(tmp_path / "fleet.key"), str(tmp_path / "gw7.key")
    assert _cli(tmp_path, "keygen", "--out", fleet_key).returncode == 0
    assert _cli(tmp_path, "keygen", "--device", "gw7", "--fleet-key", fleet_key,
                "--out", key).returncode == 0
    root = tmp_path / "root"
    done = _cli(tmp_path, "install", "--device-id", "gw7", "--fleet", "plant1", "--broker",
                "mqtt://broker.local:1883", "--key", key, "--root", str(root), "--enable")
    _one_line(done, "--enable needs --root /")
    assert done.returncode == 2 and done.stdout == "" and not root.exists()


def test_profile_add_refuses_a_bad_broker_or_a_missing_key(tmp_path):
    store = tmp_path / "profiles.json"
    env = dict(os.environ, FLEETSTAGE_PROFILES=str(store))
    env.pop("FLEETSTAGE_PROFILE", None)
    key = tmp_path / "fleet.key"
    assert _cli(tmp_path, "keygen", "--out", str(key)).returncode == 0

    def add(*args):
        return subprocess.run([sys.executable, "-m", "tools.cli", "profile", "add", "p1",
                               "--fleet", "f", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
    for broker in ("ftp://x", "http://x:1883", "x:1883"):
        _one_line(add("--broker", broker, "--key", str(key)), "scheme must be mqtt:// or mqtts://")
    _one_line(add("--broker", "mqtt://x", "--key", str(tmp_path / "nope.key")),
              "nope.key: no such file")
    assert not store.exists()
    done = add("--broker", "mqtts://x:8883", "--key", str(key))
    assert done.returncode == 0 and store.exists(), done.stderr


def test_a_subcommand_usage_error_names_the_subcommand(tmp_path):
    _one_line(_cli(tmp_path, "sim", "--bogus"),
              "fleetstage sim: unrecognized arguments: --bogus (see fleetstage sim --help)")
    _one_line(_cli(tmp_path, "status", "--bogus", "x"),
              "fleetstage status: unrecognized arguments: --bogus x")
    _one_line(_cli(tmp_path, "--bogus"), "fleetstage: unrecognized arguments: --bogus")
