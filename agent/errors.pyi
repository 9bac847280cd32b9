# Types of agent.errors (checked against the source by tests/test_stubs.py).
from typing import Any

class AgentError(Exception):
    refusal: str
    def refusal_detail(self) -> Any: ...

class ConfigError(AgentError):
    field: str
    why: str
    reason: str
    def __init__(self, field: str, why: str) -> None: ...

class PlanError(AgentError): ...
