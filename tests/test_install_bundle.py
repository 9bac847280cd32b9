"""`fleetstage install` and `fleetstage bundle` as an operator runs them."""
# No broker here: install/bundle only write files (an agent with the password_file login
# install writes, on the field lab: tests/test_field_item9.py).
import json
import os
import stat
import subprocess
import sys

from agent import protocol as P
from agent.agent_config import load_config
from firmware_shim.files import FileSystem
from tests.agentkit import REPO


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _device_key_file(fleet_key, device_id):
    return P.format_key_file(P.derive_device_key(fleet_key, device_id), "device", device_id)


def _board_config(path, device_id):
    path.write_text(json.dumps({
        "device_id": device_id, "fleet": "f", "broker": "mqtt://10.0.0.2:1883",
        "key_file": "/device.key", "state_dir": "/state", "environment": "prod"}))
    return str(path)


def test_install_writes_a_valid_config_key_and_unit(tmp_path):
    key = tmp_path / "gw7.key"
    key.write_bytes(P.format_key_file(P.derive_device_key(P.new_fleet_key(), "gw7"), "device",
                                      "gw7"))
    root = tmp_path / "root"
    ca = tmp_path / "fleet-ca.pem"
    ca.write_text(_PEM)
    r = _cli("install", "--device-id", "gw7", "--fleet", "plant1", "--broker",
             "mqtts://broker.local:8883", "--key", str(key), "--group", "line-a",
             "--ca", str(ca), "--root", str(root),
             "--exe", "/opt/fs/bin/fleetstage")
    assert r.returncode == 0, r.stderr
    import pwd
    try:
        pwd.getpwnam("fleetstage")
    except KeyError:  # staged: this machine has no service user, and install says what to do
        assert "chown -R fleetstage:fleetstage /etc/fleetstage /var/lib/fleetstage" in r.stdout
    cfg = load_config(str(root / "etc/fleetstage/agent.json"), FileSystem())
    assert (cfg.device_id, cfg.fleet, cfg.groups, cfg.tls) == ("gw7", "plant1", ["line-a"], True)
    assert cfg.state_dir == "/var/lib/fleetstage" and cfg.key_file == "/etc/fleetstage/device.key"
    key_path = root / "etc/fleetstage/device.key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert key_path.read_bytes() == key.read_bytes()
    unit = (root / "etc/systemd/system/fleetstage-agent.service").read_text()
    assert "ExecStart=/opt/fs/bin/fleetstage agent --config /etc/fleetstage/agent.json" in unit
    assert "Restart=always" in unit and "ReadWritePaths=/var/lib/fleetstage" in unit


_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_install_copies_the_ca_beside_the_key(tmp_path):
    # A new user's `install ... --ca ca.crt` (the README says to copy ca.crt to the device)
    # wrote "tls": {"ca": "ca.crt"} into the config: relative to the unit's cwd (/), and a
    # CA in /home or /tmp is hidden from the agent by ProtectHome and PrivateTmp.
    key = tmp_path / "gw7.key"
    key.write_bytes(_device_key_file(P.new_fleet_key(), "gw7"))
    (tmp_path / "ca.crt").write_text(_PEM)
    root = tmp_path / "root"
    r = subprocess.run([sys.executable, "-m", "tools.cli", "install", "--device-id", "gw7",
                        "--fleet", "plant1", "--broker", "mqtts://broker.local:8883",
                        "--key", str(key), "--ca", "ca.crt", "--root", str(root)],
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert str(root / "etc/fleetstage/ca.crt") in r.stdout
    cfg = json.loads((root / "etc/fleetstage/agent.json").read_text())
    assert cfg["tls"] == {"ca": "/etc/fleetstage/ca.crt"}
    copied = root / "etc/fleetstage/ca.crt"
    assert copied.read_text() == _PEM and stat.S_IMODE(os.stat(copied).st_mode) == 0o600
    # a CA that cannot be read, or is no PEM certificate: one line, exit 2, nothing written
    (tmp_path / "notpem").write_text("hello")
    for bad, words in (("missing.crt", "cannot read --ca missing.crt"),
                       ("notpem", "--ca notpem holds no PEM certificate")):
        other = tmp_path / ("root-" + bad)
        r = subprocess.run([sys.executable, "-m", "tools.cli", "install", "--device-id", "gw7",
                            "--fleet", "plant1", "--broker", "mqtts://broker.local:8883",
                            "--key", str(key), "--ca", bad, "--root", str(other)],
                           cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO),
                           capture_output=True, text=True, timeout=120)
        err = r.stderr.strip()
        assert r.returncode == 2 and words in err and len(err.splitlines()) == 1, err
        assert not other.exists()


def test_install_refuses_a_bad_broker_and_writes_nothing(tmp_path):
    key = tmp_path / "k"
    key.write_bytes(P.format_key_file(P.new_fleet_key(), "fleet"))
    r = _cli("install", "--device-id", "gw7", "--fleet", "plant1", "--broker", "http://x",
             "--key", str(key), "--root", str(tmp_path / "root"))
    assert r.returncode == 2 and "broker" in r.stderr
    assert not (tmp_path / "root").exists()


def test_bundle_holds_bytecode_config_and_key(tmp_path):
    cfg = {"device_id": "b1", "fleet": "f", "broker": "mqtt://10.0.0.2:1883",
           "key_file": "/device.key", "state_dir": "/state", "environment": "prod"}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    (tmp_path / "d.key").write_bytes(_device_key_file(P.new_fleet_key(), "b1"))
    out = tmp_path / "out"
    r = _cli("bundle", "--out", str(out), "--config", str(tmp_path / "c.json"),
             "--key", str(tmp_path / "d.key"))
    assert r.returncode == 0, r.stderr
    assert (out / "agent/runtime.mpy").exists() and (out / "main.py").exists()
    assert json.loads((out / "config.json").read_text())["device_id"] == "b1"
    assert "run_bundle(__file__)" in (out / "main.py").read_text()
    # the key and the config (it may hold the broker password) stay private, whatever
    # the mode of the files they were copied from
    (out / "config.json").chmod(0o644)  # a rerun over an existing bundle: made 0600 again
    r = _cli("bundle", "--out", str(out), "--config", str(tmp_path / "c.json"),
             "--key", str(tmp_path / "d.key"))
    assert r.returncode == 0, r.stderr
    for name in ("config.json", "device.key"):
        assert (out / name).stat().st_mode & 0o777 == 0o600, name
    assert (out / "device.key").read_bytes() == (tmp_path / "d.key").read_bytes()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert "%d bytes" % size in r.stdout and "mpremote connect PORT reset" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(cfg, fleet="a/b")))
    r = _cli("bundle", "--out", str(tmp_path / "o2"), "--config", str(bad))
    assert r.returncode == 2 and "fleet" in r.stderr


def test_bundle_refuses_a_bytecode_version_it_cannot_make_in_one_line(tmp_path):
    for args, says in ((("--mpy-version", "5"), "needs MicroPython 1.22 or newer"),
                       (("--micropython", "1.20"), "needs MicroPython 1.22 or newer"),
                       (("--mpy-version", "9"), "unknown .mpy version 9"),
                       (("--micropython", "one"), "not a release like 1.22")):
        r = _cli("bundle", "--out", str(tmp_path / "o"), *args)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_bundle_refuses_a_key_that_is_not_the_boards_own_before_writing_anything(tmp_path):
    """The README's Security section: each device holds only its own key. bundle refuses
    the fleet key, another device's key, a bare key and a missing file as `install` does:
    one line saying what to do, exit 2, no output folder (nothing half-built to flash)."""
    fleet_key = P.new_fleet_key()
    (tmp_path / "fleet.key").write_bytes(P.format_key_file(fleet_key, "fleet"))
    (tmp_path / "gw-0042.key").write_bytes(_device_key_file(fleet_key, "gw-0042"))
    (tmp_path / "bare.key").write_bytes(P.derive_device_key(fleet_key, "gw-0043"))
    (tmp_path / "junk.key").write_bytes(b"k")
    cfg42 = _board_config(tmp_path / "gw-0042.json", "gw-0042")
    cfg43 = _board_config(tmp_path / "gw-0043.json", "gw-0043")
    out = tmp_path / "board2"
    keygen = "fleetstage keygen --device %s --fleet-key FLEET.key --out %s.key"
    for config, key, says in (
            (cfg42, "fleet.key", "is the FLEET key"),
            (None, "fleet.key", "is the FLEET key"),
            (cfg43, "gw-0042.key", "is the key of device 'gw-0042', not of 'gw-0043'"),
            (cfg43, "bare.key", "names no device"),
            (cfg43, "junk.key", "is not a fleetstage key file"),
            (cfg43, "nope.key", "cannot read --key %s: No such file or directory"
             % (tmp_path / "nope.key"))):
        args = ["bundle", "--out", str(out) + "/", "--key", str(tmp_path / key)]
        r = _cli(*args, *(["--config", config] if config else []))
        assert r.returncode == 2, (key, r.stdout, r.stderr)
        assert says in r.stderr, (key, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        if config and key != "junk.key":  # what to do: the device's own key, by name
            assert keygen % ("gw-0043", "gw-0043") in r.stderr or \
                keygen % ("gw-0042", "gw-0042") in r.stderr, r.stderr
        assert not out.exists(), key
    # the device's own key, and without --config any device key file, still bundle
    r = _cli("bundle", "--out", str(out), "--source", "--key", str(tmp_path / "gw-0042.key"))
    assert r.returncode == 0, r.stderr
    assert (out / "device.key").read_bytes() == (tmp_path / "gw-0042.key").read_bytes()


def test_bundle_romfs_prints_the_image_path_without_a_double_slash(tmp_path):
    fleet_key = P.new_fleet_key()
    (tmp_path / "gw-0042.key").write_bytes(_device_key_file(fleet_key, "gw-0042"))
    out = str(tmp_path / "boardr") + "/"
    r = _cli("bundle", "--out", out, "--romfs", "--config",
             _board_config(tmp_path / "gw-0042.json", "gw-0042"),
             "--key", str(tmp_path / "gw-0042.key"))
    assert r.returncode == 0, r.stderr
    image = os.path.join(str(tmp_path / "boardr"), "code.romfs")
    assert "romfs deploy %s " % image in r.stdout, r.stdout
    assert "//" not in r.stdout and os.path.getsize(image) > 0
