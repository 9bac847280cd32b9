"""agent.control: the review's findings on the latency baseline (item 5) and a
cooldown that must end even when the wall clock is wrong after a reboot (item 6)."""
import corekit

from agent.control import MigrationControl
from firmware_shim.clock import ManualClock

MINUTE = 60000


def _open(d=None, clock=None, config=None):
    d = d or corekit.tmpdir("ctlrev")
    clock = clock or ManualClock()
    return MigrationControl.open(d, config=config, clock=clock), d, clock


def _traffic(c, n=30, errors=0, latency=10):
    for i in range(n):
        c.record_outcome(i >= errors, latency)


# -- item 5: a baseline that cannot be measured is None, never an older stage's

def test_unmeasurable_baseline_is_committed_as_none_not_kept_from_an_older_stage():
    c, d, clock = _open()
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
    c.close()
    c, d, clock = _open(d, clock)  # and the None is what is on flash
    assert c.metrics()["baseline"] is None and c.store.get("ctl.baseline") is None
    _traffic(c, latency=30)
    assert c.check_health_and_rollback()["result"] == "ok" and c.stage == 2
    c.close()


def test_a_measurable_baseline_still_catches_a_slow_stage():
    c, d, clock = _open()
    _traffic(c, latency=10)
    c.migrate_to_stage(1)
    _traffic(c, latency=30)
    r = c.check_health_and_rollback()
    assert r["result"] == "rollback_triggered" and r["rolled_back_to"] == 0
    c.close()
