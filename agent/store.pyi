# Types of agent.store (checked against the source by tests/test_stubs.py).
from typing import Any

from agent.store_format import StoreClosedError as StoreClosedError
from agent.store_format import StoreError as StoreError
from agent.store_format import StoreFormatError as StoreFormatError
from agent.store_format import StoreFullError as StoreFullError
from agent.store_format import StoreIOError as StoreIOError
from agent.store_format import StoreNeedsReopenError as StoreNeedsReopenError
from agent.store_format import StoreValueError as StoreValueError

OPEN: str
NEEDS_REPAIR: str
NEEDS_REOPEN: str
CLOSED: str
STORE_STATES: tuple[str, ...]
DAMAGED: str
COMMIT_UNSURE: str
REWRITTEN: str
READ_BACK: str
CLOSE: str
STORE_TRANSITIONS: dict[str, dict[str, str]]

class Store:
    path: str
    state: str
    def __init__(self, path: str, fs: Any, compact_min_bytes: int = 8192,
                 compact_factor: int = 8, logger: Any = None) -> None: ...
    def get(self, key: str, default: Any = None) -> Any: ...
    def peek(self, key: str) -> Any: ...
    def items(self) -> list[tuple[str, Any]]: ...
    def __contains__(self, key: str) -> bool: ...
    def __len__(self) -> int: ...
    @property
    def seq(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def needs_reopen(self) -> bool: ...
    def reopen(self) -> None: ...
    def commit(self, changes: dict[str, Any]) -> int | None: ...  # its seq; None: no change
    def compact(self) -> None: ...
    def close(self) -> None: ...
