# Types of agent.plan (checked against the source by tests/test_stubs.py).
from typing import Any

from agent.errors import PlanError as PlanError

RISKS: tuple[Any, ...]
CRITERIA: tuple[Any, ...]
def default_plan() -> dict[str, Any]: ...

class Stage:
    number: Any
    name: Any
    risk: Any
    flags: Any
    monitor_minutes: Any
    success_criteria: Any
    description: Any
    def __init__(
        self,
        number: Any,
        name: Any,
        risk: Any,
        flags: Any,
        monitor_minutes: Any,
        success_criteria: Any,
        description: Any,
    ) -> None: ...
    @property
    def monitor_ms(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

class Plan:
    name: Any
    stages: Any
    description: Any
    hash: str
    def __init__(self, name: Any, stages: Any, description: Any = ...) -> None: ...
    @classmethod
    def default(cls) -> Plan: ...
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan: ...
    @classmethod
    def from_json(cls, text: str) -> Plan: ...
    @classmethod
    def load(cls, path: str, fs: Any) -> Plan: ...
    @property
    def max_stage(self) -> int: ...
    def stage(self, n: int) -> Stage: ...
    def flags_for_stage(self, n: int) -> dict[str, bool]: ...
    def to_dict(self) -> dict[str, Any]: ...
    def summary(self) -> dict[str, Any]: ...
