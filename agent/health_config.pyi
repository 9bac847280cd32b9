# Types of agent.health_config (checked against the source by tests/test_stubs.py).
from typing import Any

PROBE_TYPES: dict[str, Any]
COMMON: dict[str, Any]
STATSD_FIELDS: tuple[Any, ...]
LOOPBACK: tuple[Any, ...]
MAX_PROBES: int

class HealthConfigError(ValueError):
    field: Any
    why: Any
    def __init__(self, field: Any, why: Any) -> None: ...

def parse_selector(where: Any, text: Any) -> Any: ...
def parse_listen(where: Any, value: Any) -> Any: ...
def parse_health(section: Any) -> Any: ...
