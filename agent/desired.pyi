# Types of agent.desired (checked against the source by tests/test_stubs.py).
from typing import Any

RETRY_MS: int
IDLE: str
TRYING: str
WAITING: str
STATES: tuple[str, ...]
Arrived: str
RetryDue: str
Reached: str
Refused: str
Overtaken: str
Failed: str
EVENTS: tuple[str, ...]
TRANSITIONS: dict[str, dict[str, str]]
ACKS_REFUSAL: dict[str, bool]
GUARD_ONLY: str

class Convergence:
    state: str
    pending: Any
    retry_at: int
    def __init__(self) -> None: ...
    def move(self, event: str, pending: Any = None, now: int = 0) -> None: ...
    def retry_due(self, now: int) -> bool: ...

def table_text() -> list[str]: ...
