"""Helpers for the services tests (a flag set per runbook stage, an event recorder),
and the tests of the legacy global state itself: one slot per Services, no sharing.
"""
from agent.services import LEGACY, NEW, Services, legacy_state
from firmware_shim.machine import ManualClock

# the runbook's stages, cumulative: stage n turns on its flags and keeps the earlier ones
STAGE_FLAGS = {
    1: ("use_ets_agent_registry", "enable_migration_monitoring"),
    2: ("use_logger_error_context",),
    3: ("use_genserver_telemetry", "use_genserver_span_management", "use_ets_sampled_events"),
    4: ("enforce_no_process_dict",),
}


def legacy_and_new_telemetry():
    """[(services, clock, impl)]: stage 2 runs the legacy telemetry paths, stage 3 the new."""
    out = []
    for stage, impl in ((2, LEGACY), (3, NEW)):
        s, _flags, clock, _events = make(stage=stage)
        out.append((s, clock, impl))
    return out


class StageFlags:
    """The `.enabled(name)` object Services needs, driven by stage and overrides."""

    def __init__(self, stage=0):
        self.values = {}
        self.overrides = {}
        self.reads = 0
        self.set_stage(stage)

    def set_stage(self, stage):
        self.values = {}
        for n in range(1, stage + 1):
            for name in STAGE_FLAGS[n]:
                self.values[name] = True

    def override(self, name, value):
        self.overrides[name] = value

    def enabled(self, name):
        self.reads += 1
        if name in self.overrides:
            return self.overrides[name]
        return self.values.get(name, False)


class EventLog:
    def __init__(self):
        self.seen = []

    def emit(self, name, payload):
        self.seen.append((name, payload))


def make(stage=0, **kwargs):
    flags = StageFlags(stage)
    clock = ManualClock(start_ms=1000)
    events = EventLog()
    services = Services(flags, events=events, clock=clock, **kwargs)
    return services, flags, clock, events


def test_each_services_has_its_own_legacy_slot():
    a, _, _, _ = make(stage=0)
    b, _, _, _ = make(stage=0)
    a.registry.register("agent-1", {"role": "a"})
    b.registry.register("agent-1", {"role": "b"})
    assert a.registry.lookup("agent-1") == {"role": "a"}
    assert b.registry.lookup("agent-1") == {"role": "b"}
    a.error_context.set_context({"device": "a"})
    assert b.error_context.get_context() == {}
    assert a.owner != b.owner


def test_legacy_state_lives_outside_the_service_and_new_state_does_not():
    legacy, _, _, _ = make(stage=0)
    legacy.registry.register("x")
    hidden = legacy_state.pdict_get(legacy.owner, "registry")
    assert "x" in hidden["entries"]  # visible to anyone holding the owner id: the hazard
    new, _, _, _ = make(stage=4)
    new.registry.register("x")
    assert legacy_state.owner_keys(new.owner) == []


def test_close_releases_the_global_slot():
    before = legacy_state.owner_count()
    s, _, _, _ = make(stage=0)
    s.registry.register("x")
    assert legacy_state.owner_count() == before + 1
    s.close()
    assert legacy_state.owner_count() == before
    assert legacy_state.pdict_get(s.owner, "registry") is None


def test_pdict_primitives():
    owner = legacy_state.new_owner()
    assert legacy_state.pdict_get(owner, "k", "dflt") == "dflt"
    assert legacy_state.pdict_put(owner, "k", 1) is None
    assert legacy_state.pdict_put(owner, "k", 2) == 1
    assert legacy_state.pdict_setdefault(owner, "k", list) == 2
    assert legacy_state.pdict_setdefault(owner, "l", list) == []
    assert legacy_state.owner_keys(owner) == ["k", "l"]
    assert legacy_state.pdict_erase(owner, "k") == 2
    legacy_state.release(owner)
    assert legacy_state.pdict_erase(owner, "l") is None
