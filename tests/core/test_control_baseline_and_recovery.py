"""agent.control: the latency baseline across stages, and recovery: a cooldown that
ends even when the wall clock is wrong after a reboot, a commit whose fate on flash
is unknown, and a service move that failed."""
import sys

import corekit
import faultfs

from agent import transitions as tr
from agent.control import AT_STAGE, COOLDOWN, MigrationControl
from agent.store import StoreError
from firmware_shim.board import Board
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock

MINUTE = 60000
YEAR_S = 365 * 24 * 3600


def _open(d=None, clock=None, config=None):
    d = d or corekit.tmpdir("ctlrev")
    clock = clock or ManualClock()
    return MigrationControl.open(d, FileSystem(), clock, config=config), d, clock


def _traffic(c, n=30, errors=0, latency=10):
    for i in range(n):
        c.record_outcome(i >= errors, latency)


# -- a baseline that cannot be measured is None, never an older stage's

def test_unmeasurable_baseline_is_committed_as_none_not_kept_from_an_older_stage():
    c, d, clock = _open()
    with corekit.closing(c):
        _traffic(c, latency=10)
        c.migrate_to_stage(1)
        assert c.metrics()["baseline"]["stage"] == 0
        assert c.metrics()["latency_baseline_note"] is None
        _traffic(c, n=2, latency=10)  # too few samples at stage 1 to measure anything
        c.migrate_to_stage(2)
        m = c.metrics()
        assert m["baseline"] is None and m["performance_impact"] is None
        assert "latency checks skipped" in m["latency_baseline_note"]
        assert "latency checks skipped" in c.status()["system_health"]["latency_check"]
        # Stage 2 three times slower than stage 0 was: no baseline, so no latency rollback.
        _traffic(c, latency=30)
        assert c.check_health_and_rollback()["result"] == "ok"
    c, d, clock = _open(d, clock)  # and the None is what is on flash
    assert c.metrics()["baseline"] is None and c.store.get("ctl.baseline") is None
    _traffic(c, latency=30)
    assert c.check_health_and_rollback()["result"] == "ok" and c.stage == 2
    c.close()


def test_a_measurable_baseline_still_catches_a_slow_stage():
    c, d, clock = _open()
    with corekit.closing(c):
        _traffic(c, latency=10)
        c.migrate_to_stage(1)
        _traffic(c, latency=30)
        r = c.check_health_and_rollback()
        assert r["result"] == "rollback_triggered" and r["rolled_back_to"] == 0


# -- a cooldown ends even when the wall clock is wrong after a reboot ---

def _cooling(config):
    c, d, clock = _open(config=config)
    while c.stage < 2:
        _traffic(c)
        c.migrate_to_stage(c.stage + 1)
    _traffic(c, errors=10)
    assert c.check_health_and_rollback()["rolled_back_to"] == 1 and c.state == COOLDOWN
    return c, d, clock


def test_cooldown_deadline_far_ahead_of_a_clock_that_went_back_is_capped_on_restore():
    config = {"cooldown_ms": 5 * MINUTE}
    c, d, clock = _cooling(config)
    c.close()
    # Reboot on a board without RTC: the wall clock now reads 50 years earlier.
    clock2 = ManualClock(start_ms=0, wall_start=clock.wall_time() - 50 * YEAR_S)
    c, d, _ = _open(d, clock2, config)
    with corekit.closing(c):
        assert c.state == COOLDOWN
        assert c.status()["cooldown"]["remaining_ms"] == 5 * MINUTE  # capped, not 50 years
        clock2.advance(5 * MINUTE)
        assert c.status()["state"] == AT_STAGE
        _traffic(c)
        assert c.migrate_to_stage(2)["stage"] == 2


def test_cooldown_cap_holds_when_the_clock_jumps_back_while_running():
    config = {"cooldown_ms": 5 * MINUTE}
    c, d, clock = _cooling(config)
    clock.advance(MINUTE)
    clock.wall_start -= 10 * YEAR_S
    assert c.validate_readiness_for_stage(2)["ready"] is False
    assert c.status()["cooldown"]["remaining_ms"] <= 5 * MINUTE
    clock.advance(5 * MINUTE)
    assert c.state == COOLDOWN and c.status()["state"] == AT_STAGE
    c.close()


def test_operator_may_clear_a_cooldown():
    assert tr.next_state(COOLDOWN, tr.QuarantineCleared) == AT_STAGE
    c, d, clock = _cooling({"cooldown_ms": 50 * MINUTE})
    r = c.clear_quarantine()
    assert r["state"] == AT_STAGE and c.status()["cooldown"] is None
    assert c.store.get("ctl.cooldown_until") is None
    _traffic(c)
    assert c.migrate_to_stage(2)["stage"] == 2
    c.close()


# -- a commit whose fsync failed and that could not be rolled back --------

def test_control_rebuilds_from_flash_when_a_failed_commit_could_not_be_rolled_back():
    _rebuild_after_an_unrolled_back_commit(release=False)


def test_the_rebuild_loads_agent_restore_again_after_a_board_released_it():
    # A board frees agent.restore once its agent runs (agent.boot.BOOT_ONLY_MODULES);
    # the store reopen, its one later caller, imports it afresh.
    _rebuild_after_an_unrolled_back_commit(release=True)
    assert "agent.restore" in sys.modules


def _rebuild_after_an_unrolled_back_commit(release):
    d = corekit.tmpdir("ctlrev")
    fs = faultfs.FaultFS()
    clock = ManualClock()
    with corekit.closing(MigrationControl.open(d, clock=clock, fs=fs)) as c:
        if release:
            Board().release_modules(("agent.restore",))
            assert "agent.restore" not in sys.modules
        _traffic(c)
        c.migrate_to_stage(1)
        _traffic(c)
        fs.fail("fsync", faultfs.EIO)  # the stage-2 record is written, its fsync fails
        fs.fail("open_write", faultfs.ENOSPC)  # and the store cannot roll it back
        corekit.raises(StoreError, c.migrate_to_stage, 2)
        # The control reopened the store: it is usable and agrees with the file.
        assert not c.store.stats()["needs_reopen"]
        if release:  # the reopen itself loaded it again (not the second open below)
            assert "agent.restore" in sys.modules
        before = (c.stage, c.state, c.seq, c.flags.values())
    with corekit.closing(MigrationControl.open(d, clock=clock, fs=faultfs.FaultFS())) as c:
        assert (c.stage, c.state, c.seq, c.flags.values()) == before
        _traffic(c)
        assert c.migrate_to_stage(c.stage + 1)["result"] == "ok"


# -- services move when a flag moves; a failed move is retried -------------------

def test_services_move_only_on_flag_changes_and_a_failed_move_is_retried():
    c, d, clock = _open()
    calls = []
    real = c.services.apply_flags

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("service bug")
        return real()

    c.services.apply_flags = flaky
    c.set_flag_override("use_ets_agent_registry", True)
    assert len(calls) == 1 and c.service_errors == 1
    c.set_flag_override("use_ets_agent_registry", True)  # no flag moves, but a retry is due
    assert len(calls) == 2 and c.services.supervisor.impl_of("registry") == "new"
    c.set_flag_override("use_ets_agent_registry", True)  # nothing moved, nothing failed
    assert len(calls) == 2
    c.clear_flag_override("use_ets_agent_registry")
    assert len(calls) == 3 and c.services.supervisor.impl_of("registry") == "legacy"
    c.close()
