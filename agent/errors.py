"""The core's error tree: one root, and each error knows how a refused command is answered.

    AgentError                 every error the core raises on purpose
      ConfigError              a config the device cannot run (.field names the key)
      PlanError                a plan that cannot be used
      FlagError > UnknownFlag  a flag set to something not allowed (agent.flags)
      ControlError             MigrationControl refused (agent.transitions)
        TransitionRefused > NotReady, Quarantined
      StoreError > ...         the store refused or could not (agent.store)
      ServicesError > ...      a service call with bad input (agent.services)
The protocol keeps its own root behind its door (agent.protocol.ProtocolError:
local vs remote). Any other exception type out of the core is a bug.

A command the core refuses is answered with `.refusal` (the ack's reason code:
not_ready, quarantined or malformed) and `.refusal_detail()`; the runtime asks
the error instead of sorting it.
Must never: import anything but the protocol's reason codes.
"""
from agent.protocol import MALFORMED


class AgentError(Exception):
    """Root of the core's errors. Refused by default as arguments it cannot take."""

    refusal = MALFORMED

    def refusal_detail(self):
        return str(self)


class ConfigError(AgentError):
    """A config that cannot run; `.field` names the key at fault (one class for the
    agent's JSON config and the control settings inside it)."""

    def __init__(self, field, why):
        super().__init__(f"config field '{field}': {why}")
        self.field = field
        self.why = why
        self.reason = why


class PlanError(AgentError):
    """A plan that cannot be used, with the reason (agent.plan re-exports it)."""
