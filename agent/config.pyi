# Types of agent.config (checked against the source by tests/test_stubs.py).
from typing import Any

from agent.errors import ConfigError as ConfigError

ENVIRONMENTS: dict[str, Any]
DEFAULT_THRESHOLDS: dict[str, Any]

class Config:
    environment: Any
    flags: Any
    thresholds: Any
    def __init__(
        self, environment: Any = ..., flags: Any = ..., thresholds: Any = ..., **numbers: Any
    ) -> None: ...
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config: ...
    @classmethod
    def from_json(cls, text: str) -> Config: ...
    @classmethod
    def load(cls, path: str, fs: Any) -> Config: ...
    @classmethod
    def coerce(cls, value: Any) -> Config: ...
    def to_dict(self) -> dict[str, Any]: ...
