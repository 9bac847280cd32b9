"""agent.boot on both interpreters: one composition root for the Pi, the board, the console."""
import json

import corekit
from runtimekit import MemoryLink

from agent import boot
from agent import protocol as P
from agent.agent_config import ConfigError
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock

FLEET_KEY = bytes(range(40, 72))


class Platform:
    """A stand-in host: real files in a temp dir, a fake clock, an in-memory link."""

    def __init__(self, refuse_field=None):
        self.fs = FileSystem()
        self.clock = ManualClock()
        self.lines = []
        self.links = []
        self.refuse_field = refuse_field

    def log(self, msg):
        self.lines.append(msg)

    def open_link(self, cfg, key, refuse):
        if self.refuse_field:
            refuse(self.refuse_field, "this platform cannot")
        link = MemoryLink(key)
        self.links.append(link)
        return link

    def poll(self):
        pass


def _config(tmp, key=True, **fields):
    key_file = tmp + "/gw.key"
    if key:
        with open(key_file, "wb") as f:
            f.write(P.format_key_file(P.derive_device_key(FLEET_KEY, "gw-1"), "device", "gw-1"))
    d = {"device_id": "gw-1", "fleet": "plant", "broker": "mqtt://127.0.0.1:1",
         "key_file": key_file, "state_dir": tmp + "/state", "environment": "dev",
         "groups": ["canary"]}
    d.update(fields)
    path = tmp + "/gw.json"
    with open(path, "w") as f:
        f.write(json.dumps(d))
    return path


def test_boot_wires_key_control_runtime_and_the_final_will():
    tmp = corekit.tmpdir("boot")
    platform = Platform()
    agent = boot.build(_config(tmp), platform)
    try:
        assert agent.key == P.derive_device_key(FLEET_KEY, "gw-1")
        assert agent.runtime.link is agent.link and agent.runtime.control is agent.control
        assert agent.control.clock is platform.clock
        topic, payload, qos, retain = agent.link.will
        assert topic == P.device_topic("plant", "gw-1", "status") and qos == 1 and retain
        will = P.decode_report(payload, agent.key)
        assert will["online"] is False and will["groups"] == ["canary"]
        assert will["extra"]["guard_seq"] == 0
        assert agent.start()["result"] in ("ok", "inconclusive")
        assert agent.control.status()["system_health"] is not None
    finally:
        agent.close()
    assert agent.link.closed


def test_a_refusal_from_the_platform_comes_before_the_flash():
    tmp = corekit.tmpdir("boot")
    exc = corekit.raises(ConfigError, boot.build, _config(tmp), Platform(refuse_field="tls.ca"))
    assert exc.field == "tls.ca"
    try:
        import os

        os.stat(tmp + "/state")
    except OSError:
        pass  # no state directory: the flash was never opened
    else:
        raise AssertionError("the flash was opened before the platform refused")


def test_a_missing_key_stops_the_start_unless_insecure():
    tmp = corekit.tmpdir("boot")
    exc = corekit.raises(ConfigError, boot.build, _config(tmp, key=False), Platform())
    assert exc.field == "key_file" and "does not exist" in str(exc)
    platform = Platform()
    agent = boot.build(_config(tmp, key=False, insecure=True), platform)
    try:
        assert agent.key is None
        assert any("missing: reports go out unsigned" in line for line in platform.lines)
    finally:
        agent.close()


def test_console_reply_is_the_same_for_a_running_agent_and_the_store():
    tmp = corekit.tmpdir("boot")
    agent = boot.build(_config(tmp), Platform())
    try:
        agent.start()
        assert agent.console({"op": "status"})["status"]["current_stage"] == 0
        bad = agent.console({"op": "emergency_rollback", "reason": ""})
        assert bad == {"ok": False, "error": "emergency_rollback needs a non-empty reason"}
        assert agent.console({"op": "nope"})["ok"] is False
        reply = agent.console({"op": "emergency_rollback", "reason": "smoke"})
        assert reply["ok"] and reply["status"]["current_stage"] == 0
        status = P.decode_report(agent.runtime.status_payload(), agent.key)
        assert status["extra"]["console_hold"] is True  # the hold is on: status says so
        direct = boot.console_reply({"op": "emergency_rollback", "reason": "again"},
                                    agent.control)
        assert direct["ok"] and agent.control.store.get("rt.local_hold") is not None
    finally:
        agent.close()
