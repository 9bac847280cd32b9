"""The error context (stage 2, flag use_logger_error_context).

Owns: the context of the running task (a small dict such as
{"command_id": ..., "stage": ...}) and the saved context of every other task
the agent runs, in one of two places: LEGACY keeps them in the hidden global
state (the process dictionary), NEW in the service object (the counterpart of
Logger metadata owned by a supervised process).

How context reaches log records: `enrich(record)` returns the record with a
"context" field, with no logging handler involved, so MicroPython can use it
as is. How it crosses tasks: the agent's scheduler calls `spawn_task(child)`
from the parent (the child inherits a copy of the parent's context) and runs
each step of the child in `run_in_task(child, fn)`, which installs the child's
context, runs fn, saves what fn changed, and puts the caller's context back,
even when fn raises. `run_with_context(ctx, fn)` does the same for a one-off.

The composite calls (`run_in_task`, `run_with_context`) live on the front,
built from the implementation's primitives, so a flag switch inside fn (a task
that applies a migration) restores the context into the implementation that
is active when fn returns.

Must never: let a caller's dict alias the stored context, hold more than
MAX_TASKS tasks or MAX_KEYS keys per context, or lose context in a switch.
"""
from agent.services.base import (
    ContextError,
    LegacyHolder,
    OwnedHolder,
    ServiceFront,
    copy_dict,
)

NAME = "error_context"
MAX_TASKS = 256
MAX_KEYS = 64
METHODS = ("set_context", "update_context", "get_context", "clear", "enrich",
           "spawn_task", "context_for_task", "end_task", "tasks", "swap_context",
           "store_task", "status")


def _empty():
    return {"current": {}, "tasks": {}}


def _copy_state(state):
    tasks = {}
    for task_id, ctx in state["tasks"].items():
        tasks[task_id] = dict(ctx)
    return {"current": dict(state["current"]), "tasks": tasks}


def _checked(ctx):
    ctx = copy_dict(ctx, "context", ContextError)
    if len(ctx) > MAX_KEYS:
        raise ContextError(f"context has {len(ctx)} keys, at most {MAX_KEYS}")
    return ctx


class _ContextLogic:
    """What the error context does; subclasses say where its state lives (`_state`)."""

    def set_context(self, ctx):
        """Replace the running task's context."""
        self._state("set_context")["current"] = _checked(ctx)

    def update_context(self, ctx):
        """Merge keys into the running task's context."""
        state = self._state("update_context")
        merged = dict(state["current"])
        merged.update(copy_dict(ctx, "context", ContextError))
        state["current"] = _checked(merged)

    def get_context(self):
        """A copy of the running task's context."""
        return dict(self._state("get_context")["current"])

    def clear(self):
        self._state("clear")["current"] = {}

    def enrich(self, record):
        """A copy of a log record (dict) with the running task's context under "context"."""
        enriched = dict(record)
        enriched["context"] = dict(self._state("enrich")["current"])
        return enriched

    def spawn_task(self, task_id):
        """Start tracking a task; it inherits a copy of the running task's context."""
        state = self._state("spawn_task")
        tasks = state["tasks"]
        if task_id not in tasks and len(tasks) >= MAX_TASKS:
            raise ContextError(f"too many tasks with context ({MAX_TASKS})")
        tasks[task_id] = dict(state["current"])
        return dict(state["current"])

    def context_for_task(self, task_id):
        """A copy of the context saved for a task."""
        ctx = self._state("context_for_task")["tasks"].get(task_id)
        if ctx is None:
            raise ContextError(f"no such task: {task_id!r}")
        return dict(ctx)

    def end_task(self, task_id):
        """Forget a finished task; returns False if it was unknown."""
        return self._state("end_task")["tasks"].pop(task_id, None) is not None

    def tasks(self):
        return sorted(self._state("tasks")["tasks"], key=repr)

    def swap_context(self, ctx):
        """Install ctx (not copied) as the running context; return the previous one."""
        state = self._state("swap_context")
        previous = state["current"]
        state["current"] = ctx
        return previous

    def store_task(self, task_id, ctx):
        """Save ctx as a known task's context (a task ended meanwhile stays ended)."""
        tasks = self._state("store_task")["tasks"]
        if task_id in tasks:
            tasks[task_id] = ctx

    def status(self):
        state = self._state("status")
        return {"impl": self.IMPL, "keys": len(state["current"]), "tasks": len(state["tasks"])}


class LegacyErrorContext(LegacyHolder, _ContextLogic):
    NAME = NAME
    _empty = staticmethod(_empty)
    _copy = staticmethod(_copy_state)


class NewErrorContext(OwnedHolder, _ContextLogic):
    NAME = NAME
    _empty = staticmethod(_empty)
    _copy = staticmethod(_copy_state)


class ErrorContext(ServiceFront):
    """The handle callers keep; composites are built here from the active primitives."""

    METHODS = METHODS

    def run_with_context(self, ctx, fn, *args):
        """Run fn(*args) with ctx as the running context; the old one comes back after."""
        previous = self.swap_context(_checked(ctx))
        try:
            return fn(*args)
        finally:
            self.swap_context(previous)

    def run_in_task(self, task_id, fn, *args):
        """Run one step of a task under its own context and keep what the step changed."""
        own = self.context_for_task(task_id)
        previous = self.swap_context(own)
        try:
            return fn(*args)
        finally:
            self.store_task(task_id, self.swap_context(previous))
