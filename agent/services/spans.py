"""The span manager (stage 3, flag use_genserver_span_management).

Owns: the stack of open spans (innermost last), the next span id, and a short
list of recently finished spans, in one of two places: LEGACY in the hidden
global state (the process dictionary), NEW in the service object (the
counterpart of the SpanManager GenServer).

The runbook's stage-3 risk is orphaned spans: a span started and never ended
because the code between raised. `with_span(name, meta, fn)` (and the `span()`
scope for `with`) ends its span whatever fn does, and ends any span fn opened
and left open too (counted as `unwound`). Ending a span that has open children
ends the children first. So after an exception the stack is exactly as it was
before the call.

Like the error context, the composites live on the front, so a flag switch
inside fn ends the span in the implementation that holds it by then.

Must never: grow the stack past MAX_DEPTH, keep more than MAX_FINISHED
finished spans, or lose an open span in a switch.
"""
from agent.services.base import LegacyHolder, OwnedHolder, ServiceFront, SpanError, copy_dict

NAME = "spans"
MAX_DEPTH = 64
MAX_FINISHED = 32
METHODS = ("start_span", "end_span", "get_stack", "depth", "finished", "status")


def _empty():
    return {"stack": [], "next_id": 1, "finished": [], "ended": 0, "errors": 0, "unwound": 0}


def _copy_state(state):
    copied = dict(state)
    copied["stack"] = [dict(span) for span in state["stack"]]
    copied["finished"] = [dict(span) for span in state["finished"]]
    return copied


def _index_of(stack, span_id):
    i = len(stack) - 1
    while i >= 0:
        if stack[i]["id"] == span_id:
            return i
        i -= 1
    return -1


class _SpanLogic:
    """What the span manager does; subclasses say where its state lives (`_state`)."""

    def start_span(self, name, meta=None):
        """Open a span under the innermost open one; returns its id."""
        if not isinstance(name, str) or not name:
            raise SpanError(f"span name must be a non-empty str, got {name!r}")
        meta = copy_dict(meta, "span meta", SpanError)
        state = self._state("start_span")
        stack = state["stack"]
        if len(stack) >= MAX_DEPTH:
            raise SpanError(f"span stack full ({MAX_DEPTH} open spans)")
        span_id = state["next_id"]
        state["next_id"] = span_id + 1
        parent = stack[-1]["id"] if stack else None
        stack.append({"id": span_id, "name": name, "meta": meta, "parent": parent,
                      "start_ms": self._clock.monotonic_ms()})
        return span_id

    def end_span(self, span_id=None, error=None, missing_ok=False):
        """End a span (the innermost if span_id is None) and any still open inside it.

        Returns the finished span as a dict, or None when missing_ok and the
        span is not open. `error` (a short string) marks the span as failed.
        """
        state = self._state("end_span")
        stack = state["stack"]
        at = len(stack) - 1 if span_id is None else _index_of(stack, span_id)
        if at < 0:
            if missing_ok:
                return None
            raise SpanError(f"span not open: {span_id!r}")
        now = self._clock.monotonic_ms()
        while len(stack) > at + 1:
            state["unwound"] += 1
            self._finish(state, stack.pop(), now, "unwound")
        return self._finish(state, stack.pop(), now, "error" if error else "ok", error)

    def _finish(self, state, span, now, status, error=None):
        span["end_ms"] = now
        span["duration_ms"] = now - span["start_ms"]
        span["status"] = status
        if error:
            span["error"] = error
            state["errors"] += 1
        state["ended"] += 1
        finished = state["finished"]
        finished.append(span)
        if len(finished) > MAX_FINISHED:
            finished.pop(0)
        return dict(span)

    def get_stack(self):
        """The open spans, outermost first, as copies."""
        return [dict(span) for span in self._state("get_stack")["stack"]]

    def depth(self):
        return len(self._state("depth")["stack"])

    def finished(self):
        """The most recently finished spans, oldest first."""
        return [dict(span) for span in self._state("finished")["finished"]]

    def status(self):
        state = self._state("status")
        return {"impl": self.IMPL, "open": len(state["stack"]), "ended": state["ended"],
                "errors": state["errors"], "unwound": state["unwound"]}


class LegacySpans(LegacyHolder, _SpanLogic):
    NAME = NAME
    _empty = staticmethod(_empty)
    _copy = staticmethod(_copy_state)


class NewSpans(OwnedHolder, _SpanLogic):
    NAME = NAME
    _empty = staticmethod(_empty)
    _copy = staticmethod(_copy_state)


class SpanScope:
    """`with spans.span(name, meta) as scope:`; the span ends on exit, raised or not."""

    def __init__(self, front, name, meta):
        self._front = front
        self.name = name
        self.meta = meta
        self.span_id = None

    def __enter__(self):
        self.span_id = self._front.start_span(self.name, self.meta)
        return self

    def __exit__(self, exc_type, exc, tb):
        error = exc_type.__name__ if exc_type is not None else None
        self._front.end_span(self.span_id, error=error, missing_ok=True)
        return False


class SpanManager(ServiceFront):
    """The handle callers keep; `with_span` and `span` are built from the active primitives."""

    METHODS = METHODS

    def with_span(self, name, meta, fn, *args):
        """Run fn(*args) inside a span; the span (and any fn left open) ends even if fn raises."""
        span_id = self.start_span(name, meta)
        try:
            result = fn(*args)
        except BaseException as exc:
            self.end_span(span_id, error=type(exc).__name__, missing_ok=True)
            raise
        self.end_span(span_id, missing_ok=True)
        return result

    def span(self, name, meta=None):
        return SpanScope(self, name, meta)
