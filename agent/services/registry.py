"""The agent registry (stage 1, flag use_ets_agent_registry).

Owns: the table of registered agents (id -> info dict) and its counters, in one
of two places: LEGACY keeps them in the hidden global state
(`legacy_state`, like the process dictionary), NEW keeps them in the service
object (like an ETS table owned by a supervised process). Both run the same
logic (`_RegistryLogic`), so switching changes where the state lives, never
what the registry answers.

Must never: accept a non-string agent id, grow past MAX_AGENTS, or let a
migration between implementations drop an entry or a counter.
"""
from agent.services.base import (
    LegacyHolder,
    OwnedHolder,
    RegistryError,
    ServiceFront,
    copy_dict,
)

NAME = "registry"
MAX_AGENTS = 1024
METHODS = ("register", "unregister", "lookup", "list_agents", "count", "status")


def _empty():
    return {"entries": {}, "lookups": 0, "failures": 0, "registrations": 0,
            "unregistrations": 0}


def _copy_state(state):
    copied = dict(state)
    copied["entries"] = dict(state["entries"])
    return copied


class _RegistryLogic:
    """What the registry does; subclasses say where its state lives (`_state`)."""

    def register(self, agent_id, info=None, replace=False):
        """Add an agent; a second registration of the same id is refused unless replace."""
        if not isinstance(agent_id, str) or not agent_id:
            raise RegistryError(f"agent id must be a non-empty str, got {agent_id!r}")
        info = copy_dict(info, "agent info", RegistryError)
        state = self._state("register")
        entries = state["entries"]
        if agent_id in entries:
            if not replace:
                raise RegistryError(f"agent already registered: {agent_id}")
        elif len(entries) >= MAX_AGENTS:
            raise RegistryError(f"registry full ({MAX_AGENTS} agents)")
        entries[agent_id] = info
        state["registrations"] += 1

    def unregister(self, agent_id):
        """Remove an agent; returns False if it was not registered."""
        state = self._state("unregister")
        if state["entries"].pop(agent_id, None) is None:
            return False
        state["unregistrations"] += 1
        return True

    def lookup(self, agent_id):
        """The agent's info dict (do not mutate it), or None; misses count as failures."""
        state = self._state("lookup")
        state["lookups"] += 1
        info = state["entries"].get(agent_id)
        if info is None:
            state["failures"] += 1
        return info

    def list_agents(self):
        return sorted(self._state("list_agents")["entries"])

    def count(self):
        return len(self._state("count")["entries"])

    def status(self):
        """For troubleshooting: the implementation in use, size and lookup counters."""
        state = self._state("status")
        return {"impl": self.IMPL, "count": len(state["entries"]),
                "lookups": state["lookups"], "failures": state["failures"],
                "registrations": state["registrations"],
                "unregistrations": state["unregistrations"]}


class LegacyRegistry(LegacyHolder, _RegistryLogic):
    """State in the owner's slot of the global dict; every use is reported to the guard."""

    NAME = NAME
    _empty = staticmethod(_empty)
    _copy = staticmethod(_copy_state)


class NewRegistry(OwnedHolder, _RegistryLogic):
    """State owned by this object, which the supervisor runs and can rebuild."""

    NAME = NAME
    _empty = staticmethod(_empty)
    _copy = staticmethod(_copy_state)


class Registry(ServiceFront):
    METHODS = METHODS
