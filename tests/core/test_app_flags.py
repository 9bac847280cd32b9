"""agent.app_flags: the snapshot and flagd documents apps read (CPython and MicroPython)."""
import corekit

from agent.app_flags import flagd_document, iso_utc, snapshot
from agent.control import MigrationControl
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock


def test_snapshot_follows_every_change_and_its_revision_only_grows():
    d = corekit.tmpdir("appflags")
    clock = ManualClock()
    c = MigrationControl.open(d, FileSystem(), clock)
    first = snapshot(c, 0)
    assert sorted(first) == ["flags", "plan", "revision", "stage", "state", "updated_at"]
    assert first["stage"] == 0 and first["updated_at"] == "1970-01-01T00:00:00Z"
    c.migrate_to_stage(1)
    second = snapshot(c, 1)
    assert second["revision"] > first["revision"] and second["stage"] == 1
    assert second["flags"] == c.flags.values()
    c.close()
    c = MigrationControl.open(d, FileSystem(), clock)  # a restart keeps the revision
    assert snapshot(c, 2)["revision"] == second["revision"]
    c.set_flag_override("use_genserver_telemetry", True)
    assert snapshot(c, 3)["revision"] > second["revision"]
    assert snapshot(c, 3)["flags"]["use_genserver_telemetry"] is True
    c.close()


def test_flagd_document_holds_each_value_in_its_default_variant():
    doc = flagd_document({"a": True, "b": False})
    assert doc["flags"]["a"] == {"state": "ENABLED", "variants": {"on": True, "off": False},
                                 "defaultVariant": "on"}
    assert doc["flags"]["b"]["defaultVariant"] == "off"


def test_iso_utc():
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    assert iso_utc(1796160600) == "2026-12-01T21:30:00Z"
    assert iso_utc(951782400) == "2000-02-29T00:00:00Z"
