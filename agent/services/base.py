"""Shared pieces of the stage-switched services: the error tree and the switch.

Owns: the services' errors, and `ServiceFront`, the stable object a caller
holds (`services.registry`, ...) whose methods are rebound to whichever
implementation the flags picked. Rebinding instead of forwarding keeps the hot
path at one attribute lookup and one call, the same as calling the
implementation directly.

Must never: hold service state itself (that lives in the implementation), or
read a flag on the hot path (the facade swaps implementations in apply_flags).
"""

from agent.errors import AgentError
from agent.services import legacy_state

LEGACY = "legacy"
NEW = "new"


class ServicesError(AgentError):
    """Root of the services' errors; any other exception type from here is a bug."""


class RegistryError(ServicesError):
    """A registry call with a bad agent id, or a duplicate registration."""


class ContextError(ServicesError):
    """An error-context call with bad input, an unknown task, or too many tasks."""


class SpanError(ServicesError):
    """Ending a span that is not open, or a span stack that grew past its bound."""


class EventError(ServicesError):
    """A sampled event with a bad name, measurements or sampling rate."""


class UnknownService(ServicesError):
    """A supervisor call naming a service it does not run."""


class SwitchFailed(ServicesError):
    """apply_flags could not move some services; they stay, whole, where they were.

    `.failed` is [(service, exception type name)], `.moves` the moves that were made.
    """

    def __init__(self, failed, moves):
        names = ", ".join(f"{name} ({why})" for name, why in failed)
        super().__init__("could not switch: " + names)
        self.failed = failed
        self.moves = moves


class LegacyPathViolation(ServicesError):
    """A legacy (global-state) path was used while enforcement is strict."""

    def __init__(self, service, operation):
        super().__init__(f"legacy path used: {service}.{operation}")
        self.service = service
        self.operation = operation


class ServiceFront:
    """The stable handle for one service; its methods belong to the active implementation.

    A caller may keep `services.registry` for as long as it likes: after a
    switch, the same object answers with the other implementation. A caller
    that keeps a bound method (`lookup = services.registry.lookup`) keeps the
    implementation it had; do not do that across `apply_flags`.
    """

    METHODS = ()  # type: tuple[str, ...]

    def __init__(self, name, impl):
        self.name = name
        self.impl = None
        self._bind(impl)

    def _bind(self, impl):
        for method in self.METHODS:
            setattr(self, method, getattr(impl, method))
        self.impl = impl

    @property
    def impl_name(self):
        return self.impl.IMPL

    def __repr__(self):
        return f"<{self.__class__.__name__} {self.name} ({self.impl.IMPL})>"


class LegacyHolder:
    """Where a LEGACY implementation keeps its state: the owner's slot in legacy_state.

    A subclass sets NAME (also the slot key) and gives `_empty()` and
    `_copy(state)` as staticmethods. Every `_state(operation)` call reports to
    the enforcement guard; `export_state` and `release` are the migration's
    own access and report nothing.
    """

    IMPL = LEGACY
    NAME = ""  # set by each implementation: its slot in legacy_state

    def __init__(self, owner, guard, state=None, clock=None):
        self._owner = owner
        self._guard = guard
        self._clock = clock
        legacy_state.pdict_put(owner, self.NAME,
                               self._copy(state) if state else self._empty())

    def _state(self, operation):
        self._guard.note(self.NAME, operation)
        return legacy_state.pdict_setdefault(self._owner, self.NAME, self._empty)

    def export_state(self):
        return self._copy(legacy_state.pdict_setdefault(self._owner, self.NAME, self._empty))

    def release(self):
        legacy_state.pdict_erase(self._owner, self.NAME)


class OwnedHolder:
    """Where a NEW implementation keeps its state: in the service object itself."""

    IMPL = NEW
    NAME = ""  # set by each implementation (names its service in which_services)

    def __init__(self, state=None, clock=None):
        self._clock = clock
        self._own = self._copy(state) if state else self._empty()

    def _state(self, operation):
        return self._own

    def export_state(self):
        return self._copy(self._own)

    def release(self):
        self._own = self._empty()


def copy_dict(value, what, error):
    """A shallow copy of a dict from a caller, or `error` naming `what` if it is not one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error(f"{what} must be a dict, got {type(value).__name__}")
    return dict(value)
