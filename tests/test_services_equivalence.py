"""Property: the flags pick where service state lives, never what the services answer.

Two devices get the same random operations at the same times. One stays on
the NEW implementations throughout; the other's flags move between stages 0
and 4 (and its supervisor restarts services) between operations. Every answer
and the final figures must match: switching and restarting lose nothing, and
LEGACY and NEW behave the same. CPython only (hypothesis).
"""
import os
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "core"))

from test_services_kit import StageFlags  # noqa: E402

from agent.services import Services, ServicesError  # noqa: E402
from firmware_shim.machine import ManualClock  # noqa: E402

AGENTS = st.sampled_from(["a", "b", "c", ""])
KEYS = st.sampled_from(["k1", "k2", "k3"])
TASKS = st.sampled_from([1, 2, "t"])
SERVICES = st.sampled_from(["registry", "error_context", "telemetry", "spans",
                            "sampled_events"])

ADVANCE = st.tuples(st.just("advance"), st.integers(0, 3000))
REGISTRY_AND_CONTEXT_OPS = st.one_of(
    st.tuples(st.just("register"), AGENTS, st.booleans()),
    st.tuples(st.just("unregister"), AGENTS),
    st.tuples(st.just("lookup"), AGENTS),
    st.tuples(st.just("set_context"), KEYS, st.integers(0, 3)),
    st.tuples(st.just("update_context"), KEYS, st.integers(0, 3)),
    st.tuples(st.just("spawn_task"), TASKS),
    st.tuples(st.just("run_in_task"), TASKS, KEYS),
    st.tuples(st.just("end_task"), TASKS),
)
SPAN_OPS = st.one_of(
    st.tuples(st.just("start_span"), KEYS),
    st.tuples(st.just("end_span"), st.integers(0, 4)),
    st.tuples(st.just("with_span_raising"), KEYS),
    ADVANCE,
)
EVENT_OPS = st.one_of(
    st.tuples(st.just("emit"), KEYS, st.integers(0, 30)),
    st.tuples(st.just("emit"), KEYS, st.integers(0, 30)),
    st.tuples(st.just("set_rate"), KEYS, st.sampled_from([0, 0.25, 0.5, 1])),
    st.tuples(st.just("drain"),),
    ADVANCE,
)
# between operations, the switched device may change stage or restart a service
DISRUPTIONS = st.one_of(st.none(), st.tuples(st.just("stage"), st.integers(0, 4)),
                        st.tuples(st.just("restart"), SERVICES))


def _apply(s, op):
    kind = op[0]
    if kind == "register":
        return s.registry.register(op[1], {"n": op[1]}, replace=op[2])
    if kind == "unregister":
        return s.registry.unregister(op[1])
    if kind == "lookup":
        return s.registry.lookup(op[1])
    if kind == "set_context":
        return s.error_context.set_context({op[1]: op[2]})
    if kind == "update_context":
        return s.error_context.update_context({op[1]: op[2]})
    if kind == "spawn_task":
        return s.error_context.spawn_task(op[1])
    if kind == "run_in_task":
        ec = s.error_context
        return ec.run_in_task(op[1], lambda: (ec.update_context({op[2]: "t"}), ec.get_context()))
    if kind == "end_task":
        return s.error_context.end_task(op[1])
    if kind == "start_span":
        return s.spans.start_span(op[1])
    if kind == "end_span":
        stack = s.spans.get_stack()
        target = stack[op[1]]["id"] if op[1] < len(stack) else None
        return s.spans.end_span(target)
    if kind == "with_span_raising":
        def leaky():
            s.spans.start_span("orphan")
            raise KeyError(op[1])
        return s.spans.with_span(op[1], None, leaky)
    if kind == "emit":
        return s.sampled_events.emit_event("e-" + op[1], {"v": op[2]}, {"k": op[2]})
    if kind == "set_rate":
        return s.sampled_events.set_rate("e-" + op[1], op[2])
    if kind == "drain":
        return s.telemetry.drain()
    raise AssertionError(kind)


def _outcome(s, op):
    try:
        return ("ok", _apply(s, op))
    except (ServicesError, KeyError) as exc:
        return ("raised", type(exc).__name__)


def _figures(s):
    figures = s.status()["services"]
    for row in figures.values():
        row.pop("impl")
    return figures, s.spans.get_stack(), s.error_context.get_context(), s.registry.list_agents()


def _run(steps, first_stage):
    ref_clock, sw_clock = ManualClock(), ManualClock()
    reference = Services(StageFlags(3), clock=ref_clock)
    sw_flags = StageFlags(first_stage)
    switched = Services(sw_flags, clock=sw_clock)
    try:
        for op, disruption in steps:
            if op[0] == "advance":
                ref_clock.advance(op[1])
                sw_clock.advance(op[1])
                continue
            assert _outcome(switched, op) == _outcome(reference, op), op
            if disruption is None:
                continue
            if disruption[0] == "stage":
                sw_flags.set_stage(disruption[1])
                switched.apply_flags()
            else:
                switched.supervisor.restart_child(disruption[1])
        assert _figures(switched) == _figures(reference)
        assert switched.enforcement.total == 0  # every legacy use happened below stage 4
    finally:
        reference.close()
        switched.close()


PROPERTY = settings(max_examples=150, deadline=None, database=None)


@PROPERTY
@given(st.lists(st.tuples(REGISTRY_AND_CONTEXT_OPS, DISRUPTIONS), min_size=1, max_size=40),
       st.integers(0, 4))
def test_registry_and_context_answer_the_same_whatever_the_switches(steps, first_stage):
    _run(steps, first_stage)


@PROPERTY
@given(st.lists(st.tuples(SPAN_OPS, DISRUPTIONS), min_size=1, max_size=40), st.integers(0, 4))
def test_spans_answer_the_same_whatever_the_switches(steps, first_stage):
    _run(steps, first_stage)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(EVENT_OPS, DISRUPTIONS), min_size=1, max_size=40), st.integers(0, 4))
def test_sampled_events_answer_the_same_whatever_the_switches(steps, first_stage):
    _run(steps, first_stage)
