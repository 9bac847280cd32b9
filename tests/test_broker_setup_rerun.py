"""Re-running `fleetstage broker-setup` after adding a device (what the README says to do)
keeps every existing device's password: the real broker, restarted on the files the
second run wrote, still lets the old device in with its old password and the new one
with its new password. And `fleetstage mosquitto-acl` reads the README's own inventory
(no "password" entries) the way broker-setup does."""
import json
import os
import subprocess
import sys

from tests.agentkit import REPO


def _setup(lab, inventory):
    with open(inventory) as f:
        assert "password" not in f.read()
    done = lab.cli("broker-setup", "--fleet", lab.fleet, "--devices", inventory,
                   "--operator-password-file", lab.operator_password_file, "--out", lab.out,
                   "--conf-dir", lab.conf_dir, "--tls", "--hostname", "127.0.0.1",
                   "--hostname", "localhost")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _generated(lab, device_id):
    with open(os.path.join(lab.out, "device-passwords", device_id)) as f:
        return f.read().strip()


def test_rerun_after_adding_a_device_keeps_the_old_devices_password(field_lab, tmp_path):
    lab = field_lab(devices=["gw-1"])
    inventory = str(tmp_path / "devices.json")
    with open(inventory, "w") as f:
        json.dump({"gw-1": {"groups": ["line-a"]}}, f)  # as in the README: no password
    _setup(lab, inventory)
    lab.stop_broker()
    lab.restart_broker()
    old = _generated(lab, "gw-1")
    lab.passwords["gw-1"] = old  # what the operator copied onto the device
    lab.device_link("gw-1")
    # A device is added; broker-setup is run again, the broker restarted.
    with open(inventory, "w") as f:
        json.dump({"gw-1": {"groups": ["line-a"]}, "gw-3": {"groups": ["line-a"]}}, f)
    out = _setup(lab, inventory)
    lab.stop_broker()
    lab.restart_broker()
    lab.passwords["gw-3"] = _generated(lab, "gw-3")
    assert lab.device_link("gw-1").connected  # the old device: its old password
    assert lab.device_link("gw-3").connected  # the new device: its new password
    assert lab.operator_link().connected  # the operator's, from the file given again
    assert "not authorised" not in lab.broker_log()
    assert "device-passwords/gw-3" in out and "device-passwords/gw-1" not in out, out
    assert _generated(lab, "gw-1") == old
    assert lab.passwords["gw-3"] != old and len(lab.passwords["gw-3"]) >= 20


def _acl(tmp_path, inventory, out):
    op = tmp_path / "op.pw"
    op.write_text("op-secret\n")
    return subprocess.run([sys.executable, "-m", "tools.cli", "mosquitto-acl", "--fleet",
                           "plant1", "--devices", str(inventory), "--operator-password-file",
                           str(op), "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_mosquitto_acl_reads_the_readme_inventory_and_keeps_its_passwords(tmp_path):
    inv = tmp_path / "devices.json"
    inv.write_text(json.dumps({"gw-0042": {"groups": ["line-a"]},
                               "gw-0043": {"groups": ["line-a"], "password": "pw43"}}))
    out = tmp_path / "out"
    done = _acl(tmp_path, inv, out)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    kept = (out / "device-passwords" / "gw-0042").read_text()
    assert len(kept.strip()) >= 20 and not (out / "device-passwords" / "gw-0043").exists()
    users = [line.split(":")[0] for line in (out / "devices.passwd").read_text().splitlines()]
    assert users == ["gw-0042", "gw-0043"]
    assert "user gw-0042" in (out / "fleetstage.acl").read_text()
    done = _acl(tmp_path, inv, out)  # run again: the generated password stays
    assert done.returncode == 0, done.stderr
    assert (out / "device-passwords" / "gw-0042").read_text() == kept


def test_mosquitto_acl_bad_inventory_is_one_line_as_in_broker_setup(tmp_path):
    cases = [(["gw-1", "gw-2"], "expected {\"device-id\""),
             ({"gw-1": ["line-a"]}, "entry 'gw-1' must be an object"),
             ({"gw:1": {}}, "device id 'gw:1'"),
             ({"gw-1": {"password": ""}}, "gw-1.password must be a non-empty string")]
    for data, words in cases:
        inv = tmp_path / "devices.json"
        inv.write_text(json.dumps(data))
        done = _acl(tmp_path, inv, tmp_path / "out")
        err = done.stderr.strip()
        assert done.returncode == 2 and words in err, (data, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (data, err)
        assert err.startswith("fleetstage mosquitto-acl: "), err
        assert not (tmp_path / "out" / "devices.passwd").exists()
