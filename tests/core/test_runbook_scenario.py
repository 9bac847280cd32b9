"""The runbook from stage 0 to stage 4 on one device, with errors injected at stage 3.

Each step checks what the runbook asks an operator to check: status, readiness,
flags, the migration history and the telemetry events; the services switch
with the flags and keep what they hold. Time is a ManualClock; health is polled
every 30 s as `start_health_monitoring(30_000)` asks.
"""
import corekit

from agent.control import AT_STAGE, COOLDOWN, MigrationControl, NotReady, TransitionRefused
from agent.flags import FLAG_NAMES
from agent.plan import Plan
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock

TICK = 30000
PROD = {"environment": "prod", "cooldown_ms": 600000}


def _expected_flags(stage):
    on = Plan.default().flags_for_stage(stage)
    values = {name: bool(on.get(name)) for name in FLAG_NAMES}
    values["enable_migration_monitoring"] = True  # config/prod.exs
    return values


class Device:
    def __init__(self):
        self.clock = ManualClock()
        self.control = MigrationControl.open(corekit.tmpdir("runbook"), FileSystem(),
                                             self.clock, config=PROD)
        self.events = []
        self.control.events.subscribe("*", lambda n, p: self.events.append((n, p)))

    def take_events(self):
        out, self.events = self.events, []
        return out

    def traffic(self, seconds, errors_per_10=0, latency=10):
        """Ten calls a second for `seconds`, with `errors_per_10` of every ten failing."""
        for _ in range(seconds):
            for i in range(10):
                self.control.record_outcome(i >= errors_per_10, latency)
            self.clock.advance(1000)

    def monitor(self):
        """Let the monitor tick once (30 s of quiet time) and return its result."""
        self.clock.advance(TICK - (self.clock.now_ms % TICK))
        return self.control.poll()


def _migrate(dev, stage):
    c = dev.control
    readiness = c.validate_readiness_for_stage(stage)
    assert readiness["ready"], readiness
    result = c.migrate_to_stage(stage)
    assert result["result"] == "ok" and result["stage"] == stage
    status = c.status()
    assert status["current_stage"] == stage and status["state"] == AT_STAGE
    assert status["flags"] == _expected_flags(stage)
    entry = status["migration_history"][0]
    assert (entry["op"], entry["from"], entry["to"]) == ("migrate", stage - 1, stage)
    events = dev.take_events()
    changed = sorted(p["name"] for n, p in events if n == "feature_flag.changed")
    assert changed == sorted(f for f in Plan.default().stage(stage).flags
                             if f != "enable_migration_monitoring")
    assert events[-1][0] == "migration.stage_enabled" and events[-1][1]["stage"] == stage
    return status


def test_runbook_stage_0_to_4_with_automatic_rollback_at_stage_3():
    dev = Device()
    c = dev.control
    services = c.services
    # Prerequisites: status and readiness for stage 1.
    status = c.status()
    assert status["current_stage"] == 0 and status["flags"] == _expected_flags(0)
    assert c.flags.source("enable_migration_monitoring") == "config"
    assert c.validate_readiness_for_stage(1)["ready"]
    corekit.raises(NotReady, c.migrate_to_stage, 2)
    assert c.start_health_monitoring(TICK)["interval_ms"] == TICK
    services.registry.register("agent-1", {"role": "worker"})

    # Stage 1: registry.
    dev.traffic(60, latency=10)
    _migrate(dev, 1)
    assert services.supervisor.impl_of("registry") == "new"
    assert services.registry.lookup("agent-1") == {"role": "worker"}
    dev.traffic(60, latency=10)
    assert dev.monitor()["result"] == "ok"

    # Stage 2: error context.
    _migrate(dev, 2)
    assert services.supervisor.impl_of("error_context") == "new"
    services.error_context.set_context({"test": "migration_test"})
    assert services.error_context.get_context()["test"] == "migration_test"
    dev.traffic(60, latency=10)
    assert dev.monitor()["result"] == "ok"

    # Stage 3: telemetry, then errors and slower calls.
    _migrate(dev, 3)
    assert services.supervisor.impl_of("spans") == "new"
    assert services.spans.with_span("test_span", {"test": True}, lambda: "ok") == "ok"
    assert services.spans.get_stack() == []
    dev.traffic(25, errors_per_10=1, latency=12)  # 10% errors, 20% slower
    result = dev.monitor()
    assert result["result"] == "rollback_triggered" and result["rolled_back_to"] == 2
    assert sorted(v["metric"] for v in result["violations"]) == ["error_rate",
                                                                "performance_impact"]
    status = c.status()
    assert status["current_stage"] == 2 and status["state"] == COOLDOWN
    assert status["flags"] == _expected_flags(2)
    entry = status["migration_history"][0]
    assert entry["op"] == "auto_rollback" and entry["violations"] == result["violations"]
    events = dev.take_events()
    names = [n for n, _ in events]
    assert names[0] == "health.violation" and names[-1] == "migration.rollback"
    assert sorted(p["name"] for n, p in events if n == "feature_flag.changed") == sorted(
        Plan.default().stage(3).flags)
    assert events[-1][1]["automatic"] and events[-1][1]["violations"] == result["violations"]
    assert services.supervisor.impl_of("spans") == "legacy"
    assert services.registry.lookup("agent-1") == {"role": "worker"}

    # Cooling down: the device will not go back to stage 3 yet.
    assert not c.validate_readiness_for_stage(3)["ready"]
    corekit.raises(TransitionRefused, c.migrate_to_stage, 3)
    dev.traffic(600, latency=10)  # ten healthy minutes
    assert dev.monitor()["result"] == "ok"
    assert c.status()["state"] == AT_STAGE

    # Stage 3 again, healthy this time: within the 10% performance budget.
    _migrate(dev, 3)
    dev.traffic(60, latency=10.5)
    ok = dev.monitor()
    assert ok["result"] == "ok" and ok["health"]["performance_impact"] < 0.10
    assert abs(c.metrics()["performance_impact"] - 0.05) < 1e-9

    # Stage 4: enforcement.
    _migrate(dev, 4)
    assert services.enforcement.active
    dev.traffic(60, latency=10)
    assert dev.monitor()["result"] == "ok"
    assert services.enforcement.violations() == []
    history = c.status()["migration_history"]
    assert [(e["op"], e["to"]) for e in history] == [
        ("migrate", 4), ("migrate", 3), ("auto_rollback", 2), ("migrate", 3),
        ("migrate", 2), ("migrate", 1)]
    seqs = [e["seq"] for e in history]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)

    # Emergency rollback: everything off again but the environment's config.
    c.emergency_rollback("Reason for rollback")
    status = c.status()
    assert status["current_stage"] == 0 and status["flags"] == _expected_flags(0)
    assert dev.take_events()[-1] == ("migration.emergency_rollback", {
        "from": 4, "to": 0, "reason": "Reason for rollback", "overrides_dropped": [],
        "seq": c.seq})
    assert services.supervisor.impl_of("registry") == "legacy"
    assert services.registry.lookup("agent-1") == {"role": "worker"}
    c.close()
