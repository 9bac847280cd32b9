"""agent.apps: the board's import for applications in the agent's interpreter."""
import corekit

from agent import apps
from agent.control import MigrationControl
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock

FLAG = "use_genserver_telemetry"


def test_enabled_on_change_and_record_follow_the_attached_control():
    apps.detach()
    assert apps.enabled(FLAG) is False and apps.enabled(FLAG, True) is True
    assert apps.record(True, 5) is False
    c = MigrationControl.open(corekit.tmpdir("apps"), FileSystem(), ManualClock())
    seen = []
    apps.on_change(lambda name, value: seen.append((name, value)))

    @apps.on_change
    def broken(name, value):
        raise RuntimeError("an application's bug")

    apps.attach(c)
    try:
        for _ in range(3):
            c.migrate_to_stage(c.stage + 1)
        assert apps.enabled(FLAG) is True and (FLAG, True) in seen
        assert apps.callback_errors >= 1 and c.stage == 3  # the bug stopped nothing
        assert apps.record(False, 12.5) and apps.record(True, 3, source="sensor-loop")
        sources = c.status()["system_health"]["sources"]
        assert sources["app"]["errors"] == 1 and sources["sensor-loop"]["samples"] == 1
        assert apps.revision() == c.seq
    finally:
        apps.remove_callback(broken)
        apps._callbacks[:] = []
        apps.detach()
        c.close()
