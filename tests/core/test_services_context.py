"""The error context (stage 2), in both implementations: records, tasks, switches."""
import corekit
from test_services_kit import make

from agent.services import LEGACY, NEW, ContextError
from agent.services import error_context as ctx_mod


def both():
    return [(make(stage=1)[0], LEGACY), (make(stage=2)[0], NEW)]


def test_set_update_get_clear():
    for s, impl in both():
        ec = s.error_context
        assert ec.impl_name == impl
        assert ec.get_context() == {}
        ec.set_context({"command_id": "c1"})
        ec.update_context({"stage": 2})
        assert ec.get_context() == {"command_id": "c1", "stage": 2}
        ec.set_context({"only": 1})
        assert ec.get_context() == {"only": 1}
        ec.clear()
        assert ec.get_context() == {}


def test_context_does_not_alias_the_callers_dict():
    for s, _impl in both():
        ec = s.error_context
        mine = {"a": 1}
        ec.set_context(mine)
        mine["a"] = 2
        got = ec.get_context()
        got["b"] = 3
        assert ec.get_context() == {"a": 1}


def test_enrich_attaches_context_to_every_record():
    for s, _impl in both():
        ec = s.error_context
        assert ec.enrich({"msg": "boot"})["context"] == {}
        ec.set_context({"command_id": "c9"})
        record = {"msg": "applied", "level": "info"}
        out = ec.enrich(record)
        assert out == {"msg": "applied", "level": "info", "context": {"command_id": "c9"}}
        assert "context" not in record
        out["context"]["x"] = 1  # a consumer's edit does not reach the service
        assert ec.get_context() == {"command_id": "c9"}


def test_run_with_context_restores_even_when_fn_raises():
    for s, _impl in both():
        _run_with_context_restores(s.error_context)


def _run_with_context_restores(ec):
    ec.set_context({"outer": True})
    seen = ec.run_with_context({"inner": 1}, ec.get_context)
    assert seen == {"inner": 1}
    assert ec.get_context() == {"outer": True}

    def boom():
        ec.update_context({"during": "boom"})
        raise ValueError("boom")

    corekit.raises(ValueError, ec.run_with_context, {"inner": 2}, boom)
    assert ec.get_context() == {"outer": True}


def test_spawned_task_inherits_and_keeps_its_own_changes():
    for s, _impl in both():
        _spawned_task_inherits(s.error_context)


def _spawned_task_inherits(ec):
    ec.set_context({"command_id": "c1"})
    assert ec.spawn_task("ack-sender") == {"command_id": "c1"}
    ec.set_context({"command_id": "c2"})  # the parent moves on

    def step(extra):
        ctx = ec.get_context()
        ec.update_context(extra)
        return ctx

    assert ec.run_in_task("ack-sender", step, {"attempt": 1}) == {"command_id": "c1"}
    assert ec.get_context() == {"command_id": "c2"}
    assert ec.context_for_task("ack-sender") == {"command_id": "c1", "attempt": 1}
    assert ec.tasks() == ["ack-sender"]
    assert ec.end_task("ack-sender") is True
    assert ec.end_task("ack-sender") is False
    corekit.raises(ContextError, ec.run_in_task, "ack-sender", step, {})


def test_task_step_that_raises_still_restores_the_caller():
    for s, _impl in both():
        _task_step_raises(s.error_context)


def _task_step_raises(ec):
    ec.set_context({"main": 1})
    ec.spawn_task(7)

    def bad():
        ec.update_context({"tried": True})
        raise KeyError("x")

    corekit.raises(KeyError, ec.run_in_task, 7, bad)
    assert ec.get_context() == {"main": 1}
    assert ec.context_for_task(7) == {"main": 1, "tried": True}


def test_task_ended_inside_its_own_step_stays_ended():
    for s, _impl in both():
        ec = s.error_context
        ec.spawn_task("t")
        ec.run_in_task("t", ec.end_task, "t")
        assert ec.tasks() == []


def test_bad_input_and_bounds():
    for s, _impl in both():
        ec = s.error_context
        corekit.raises(ContextError, ec.set_context, "not a dict")
        corekit.raises(ContextError, ec.update_context, [1])
        corekit.raises(ContextError, ec.context_for_task, "nobody")
        big = {}
        for i in range(ctx_mod.MAX_KEYS + 1):
            big[f"k{i}"] = i
        corekit.raises(ContextError, ec.set_context, big)
        assert ec.get_context() == {}
        for i in range(ctx_mod.MAX_TASKS):
            ec.spawn_task(i)
        corekit.raises(ContextError, ec.spawn_task, "one-more")
        ec.spawn_task(0)  # re-spawning a known task is not growth


def test_switch_inside_a_task_step_lands_in_the_new_implementation():
    s, flags, _clock, _events = make(stage=1)
    ec = s.error_context
    ec.set_context({"main": 1})
    ec.spawn_task("cmd")

    def migrate():
        ec.update_context({"command": "migrate"})
        flags.set_stage(2)
        s.apply_flags()  # the command task applies stage 2 mid-step

    ec.run_in_task("cmd", migrate)
    assert ec.impl_name == NEW
    assert ec.get_context() == {"main": 1}
    assert ec.context_for_task("cmd") == {"main": 1, "command": "migrate"}
