"""The services supervisor: which_services, restart_child, counts, intensity, listener."""
import corekit
from test_services_kit import make

from agent.services import ESCALATED, LEGACY, NEW, RUNNING, UnknownService


def test_which_services_names_each_impl_and_status():
    s, _flags, _clock, _events = make(stage=1)
    rows = s.which_services()
    assert [r["name"] for r in rows] == [
        "registry", "error_context", "telemetry", "spans", "sampled_events"]
    by = {r["name"]: r for r in rows}
    assert by["registry"]["impl"] == NEW and by["spans"]["impl"] == LEGACY
    assert all(r["status"] == RUNNING and r["restarts"] == 0 for r in rows)


def test_restart_keeps_state_by_default_in_both_impls():
    for stage in (0, 3):
        s, _flags, _clock, _events = make(stage=stage)
        s.registry.register("a", {"x": 1})
        sid = s.spans.start_span("open")
        old_impl = s.registry.impl
        result = s.supervisor.restart_child("registry")
        assert result["kept_state"] is True and result["restarts"] == 1
        assert s.registry.impl is not old_impl  # a fresh object
        assert s.registry.lookup("a") == {"x": 1}
        s.supervisor.restart_child("spans")
        assert [x["id"] for x in s.spans.get_stack()] == [sid]
        assert s.supervisor.restart_counts() == {
            "registry": 1, "error_context": 0, "telemetry": 0, "spans": 1,
            "sampled_events": 0}


def test_crash_restart_without_state_comes_back_empty():
    for stage in (0, 1):
        s, _flags, _clock, _events = make(stage=stage)
        s.registry.register("a")
        result = s.supervisor.restart_child("registry", keep_state=False)
        assert result["kept_state"] is False
        assert s.registry.count() == 0
        assert s.registry.status()["registrations"] == 0
        s.registry.register("b")  # and works
        assert s.registry.list_agents() == ["b"]


def test_restart_of_a_wedged_service_still_happens():
    s, _flags, _clock, _events = make(stage=3)

    def wedged():
        raise RuntimeError("state unreadable")

    s.spans.impl.export_state = wedged
    result = s.supervisor.restart_child("spans")
    assert result["kept_state"] is False
    assert s.supervisor.status()["state_lost"] == 1
    assert s.spans.with_span("after", None, s.spans.depth) == 1


def test_listener_and_event_get_every_restart():
    s, _flags, clock, events = make(stage=3)
    heard = []
    s.set_restart_listener(lambda name, now_ms: heard.append((name, now_ms)))
    s.supervisor.restart_child("registry")
    clock.advance(250)
    s.supervisor.restart_child("sampled_events")
    assert heard == [("registry", 1000), ("sampled_events", 1250)]
    restarts = [p for name, p in events.seen if name == "services.restart"]
    assert [(p["service"], p["now_ms"], p["restarts"]) for p in restarts] == [
        ("registry", 1000, 1), ("sampled_events", 1250, 1)]


def test_a_failing_listener_does_not_stop_a_restart():
    s, _flags, _clock, _events = make(stage=3)
    s.registry.register("a")

    def bad(name, now_ms):
        raise ValueError("listener bug")

    s.set_restart_listener(bad)
    s.supervisor.restart_child("registry")
    assert s.registry.list_agents() == ["a"]
    assert s.supervisor.status()["listener_errors"] == 1
    s.set_restart_listener(None)
    s.supervisor.restart_child("registry")
    assert s.supervisor.restart_counts()["registry"] == 2


def test_intensity_escalates_after_too_many_restarts_in_the_period():
    s, _flags, clock, events = make(stage=3, max_restarts=3, period_ms=5000)
    for _ in range(3):
        s.supervisor.restart_child("registry")
        clock.advance(1000)
    assert s.supervisor.state == RUNNING
    result = s.supervisor.restart_child("spans")  # the 4th inside 5 s
    assert result["supervisor"] == ESCALATED
    assert s.supervisor.status()["state"] == ESCALATED
    assert s.supervisor.status()["escalations"] == 1
    assert events.seen[-1][1]["supervisor"] == ESCALATED
    s.registry.register("still-works")
    assert s.registry.lookup("still-works") == {}
    s.supervisor.reset_intensity()
    assert s.supervisor.state == RUNNING


def test_restarts_spread_over_time_do_not_escalate():
    s, _flags, clock, _events = make(stage=3, max_restarts=3, period_ms=5000)
    for _ in range(10):
        s.supervisor.restart_child("telemetry")
        clock.advance(2000)  # at most 3 inside any 5 s
    assert s.supervisor.state == RUNNING
    assert s.supervisor.restart_counts()["telemetry"] == 10
    assert s.supervisor.status()["restarts"] == 10


def test_unknown_service_is_a_named_error():
    s, _flags, _clock, _events = make(stage=0)
    err = corekit.raises(UnknownService, s.supervisor.restart_child, "RegistryETS")
    assert "registry" in str(err)
    corekit.raises(UnknownService, s.supervisor.switch, "nope", NEW)


def test_status_summarises_everything():
    s, _flags, _clock, _events = make(stage=2)
    st = s.status()
    assert st["services"]["registry"]["impl"] == NEW
    assert st["services"]["spans"]["impl"] == LEGACY
    assert st["enforcement"]["active"] is False
    assert st["supervisor"]["state"] == RUNNING
