"""The span manager (stage 3), in both implementations: stack, with_span, no orphans."""
import corekit
from test_services_kit import legacy_and_new_telemetry, make

from agent.services import NEW, SpanError
from agent.services import spans as spans_mod

both = legacy_and_new_telemetry


def test_start_end_and_stack_order():
    for s, clock, impl in both():
        sp = s.spans
        assert sp.impl_name == impl
        outer = sp.start_span("outer", {"k": 1})
        clock.advance(5)
        inner = sp.start_span("inner")
        stack = sp.get_stack()
        assert [x["name"] for x in stack] == ["outer", "inner"]
        assert stack[0]["parent"] is None and stack[1]["parent"] == outer
        assert stack[0]["meta"] == {"k": 1}
        clock.advance(7)
        done = sp.end_span()
        assert done["id"] == inner and done["duration_ms"] == 7 and done["status"] == "ok"
        done = sp.end_span(outer)
        assert done["duration_ms"] == 12
        assert sp.get_stack() == [] and sp.depth() == 0
        assert [x["name"] for x in sp.finished()] == ["inner", "outer"]


def test_ending_a_parent_ends_its_open_children():
    for s, _clock, _impl in both():
        sp = s.spans
        a = sp.start_span("a")
        sp.start_span("b")
        sp.start_span("c")
        assert sp.end_span(a)["status"] == "ok"
        assert sp.get_stack() == []
        assert [(x["name"], x["status"]) for x in sp.finished()] == [
            ("c", "unwound"), ("b", "unwound"), ("a", "ok")]
        assert sp.status()["unwound"] == 2


def test_end_span_errors():
    for s, _clock, _impl in both():
        sp = s.spans
        corekit.raises(SpanError, sp.end_span)
        sid = sp.start_span("x")
        corekit.raises(SpanError, sp.end_span, sid + 100)
        assert sp.end_span(sid + 100, missing_ok=True) is None
        assert sp.depth() == 1
        corekit.raises(SpanError, sp.start_span, "")
        corekit.raises(SpanError, sp.start_span, "y", "meta must be a dict")


def test_with_span_returns_the_result_and_closes():
    for s, _clock, _impl in both():
        _with_span_returns(s.spans)


def _with_span_returns(sp):
    seen = []

    def work(x):
        seen.append([y["name"] for y in sp.get_stack()])
        return x * 2

    assert sp.with_span("calc", {"n": 21}, work, 21) == 42
    assert seen == [["calc"]]
    assert sp.get_stack() == []
    assert sp.finished()[-1]["status"] == "ok"


def test_with_span_leaves_no_orphans_when_fn_raises():
    for s, _clock, _impl in both():
        _with_span_no_orphans(s.spans)


def _with_span_no_orphans(sp):
    keep = sp.start_span("request")

    def leaky():
        sp.start_span("left-open-1")
        sp.start_span("left-open-2")
        raise ValueError("boom")

    corekit.raises(ValueError, sp.with_span, "handler", None, leaky)
    stack = sp.get_stack()
    assert [x["id"] for x in stack] == [keep]  # exactly as before the call
    last = sp.finished()[-3:]
    assert [(x["name"], x["status"]) for x in last] == [
        ("left-open-2", "unwound"), ("left-open-1", "unwound"), ("handler", "error")]
    assert last[-1]["error"] == "ValueError"
    assert sp.status()["errors"] == 1


def test_with_span_tolerates_fn_ending_its_own_span():
    for s, _clock, _impl in both():
        sp = s.spans
        assert sp.with_span("self-ending", None, sp.end_span) is not None
        assert sp.get_stack() == []


def test_span_scope_with_statement():
    for s, _clock, _impl in both():
        sp = s.spans
        with sp.span("scoped", {"a": 1}) as scope:
            assert sp.get_stack()[-1]["id"] == scope.span_id
        assert sp.get_stack() == []
        try:
            with sp.span("failing"):
                sp.start_span("orphan")
                raise KeyError("k")
        except KeyError:
            pass
        assert sp.get_stack() == []
        assert sp.finished()[-1]["status"] == "error"
        assert sp.finished()[-1]["error"] == "KeyError"


def test_stack_and_history_are_bounded():
    for s, _clock, _impl in both():
        sp = s.spans
        for i in range(spans_mod.MAX_DEPTH):
            sp.start_span(f"s{i}")
        corekit.raises(SpanError, sp.start_span, "too-deep")
        sp.end_span(sp.get_stack()[0]["id"])
        assert len(sp.finished()) == spans_mod.MAX_FINISHED
        assert sp.status()["ended"] == spans_mod.MAX_DEPTH


def test_switch_inside_with_span_ends_the_span_in_the_new_impl():
    s, flags, _clock, _events = make(stage=2)
    sp = s.spans

    def migrate():
        flags.set_stage(3)
        s.apply_flags()
        return sp.impl_name

    assert sp.with_span("migrate", None, migrate) == NEW
    assert sp.get_stack() == []
    assert sp.finished()[-1]["name"] == "migrate"
    assert sp.finished()[-1]["status"] == "ok"
