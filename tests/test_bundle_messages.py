"""What `fleetstage bundle` tells a new user after (or instead of) building. Found by one:
`--out` naming a file said "[Errno 20] Not a directory: 'x.json/agent'"; a bundle built
with --config but no --key said only "its key_file should be /device.key" (printed
whatever the config said), and its mpremote line left device.key out, so the board
could not boot; with --key but no --config it said the bundle had no device.key."""
import json
import subprocess
import sys

from agent import protocol as P
from tests.agentkit import REPO


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tools.cli", "bundle", "--source", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def _files(tmp_path, key_file="/device.key"):
    cfg = tmp_path / ("c%s.json" % len(key_file))
    cfg.write_text(json.dumps({"device_id": "b1", "fleet": "f", "broker": "mqtt://10.0.0.2",
                               "key_file": key_file, "state_dir": "/state",
                               "environment": "prod"}))
    key = tmp_path / "b1.key"
    key.write_bytes(P.format_key_file(P.derive_device_key(P.new_fleet_key(), "b1"), "device",
                                      "b1"))
    return str(cfg), str(key)


def test_bundle_out_is_a_file(tmp_path):
    cfg, key = _files(tmp_path)
    before = open(cfg).read()
    done = _cli("--out", cfg, "--config", cfg, "--key", key)
    assert done.returncode == 2 and done.stderr.strip() == (
        "fleetstage bundle: --out %s is a file: give a folder (it is made if missing)" % cfg)
    assert open(cfg).read() == before


def test_bundle_says_what_the_board_still_needs(tmp_path):
    cfg, key = _files(tmp_path)
    done = _cli("--out", str(tmp_path / "a"), "--config", cfg, "--key", key)
    assert done.returncode == 0, done.stderr
    assert "device.key" in done.stdout.splitlines()[2]          # the mpremote line
    assert "no device.key" not in done.stdout and "key_file" not in done.stdout, done.stdout
    done = _cli("--out", str(tmp_path / "b"), "--config", cfg)
    assert done.returncode == 0, done.stderr
    assert ("this bundle has no device.key yet: the board needs its own key (build with "
            "--key F, or copy it to its root as device.key)") in done.stdout, done.stdout
    done = _cli("--out", str(tmp_path / "c"), "--key", key)
    assert done.returncode == 0, done.stderr
    assert "this bundle has no config.json yet" in done.stdout, done.stdout
    assert "no config.json and device.key" not in done.stdout, done.stdout
    other, _ = _files(tmp_path, key_file="/flash/gw.key")
    done = _cli("--out", str(tmp_path / "d"), "--config", other, "--key", key)
    assert done.returncode == 0, done.stderr
    assert ("config.json has key_file /flash/gw.key, but the bundle's key is /device.key: "
            "set key_file to /device.key") in done.stdout, done.stdout
