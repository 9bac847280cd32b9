# Types of agent.flash_store (checked against the source by tests/test_stubs.py).
from typing import Any

from agent.store_format import StoreClosedError as StoreClosedError
from agent.store_format import StoreError as StoreError
from agent.store_format import StoreFullError as StoreFullError
from agent.store_format import StoreIOError as StoreIOError
from agent.store_format import StoreValueError as StoreValueError

MAGIC: bytes
HEADER: int
RECORD_HEADER: int
ALIGN: int
COMMIT: int
COPY: int
ERASED_WORD: int
MAX_SEQ: int
RESERVE: int
MIN_PAGES: int

def encode_page_header(page_seq: Any) -> Any: ...

DEAD_AT: int
DEAD: int

def decode_page_header(data: Any) -> Any: ...
def encode_record(kind: Any, seq: Any, payload: Any) -> Any: ...
def decode_record(page: Any, pos: Any) -> Any: ...

class FlashStore:
    dev: Any
    path: Any
    block_size: Any
    blocks: Any
    capacity: Any
    def __init__(self, device: Any, logger: Any = ..., path: Any = ...) -> None: ...
    def get(self, key: str, default: Any = ...) -> Any: ...
    def items(self) -> list[tuple[str, Any]]: ...
    @property
    def seq(self) -> int: ...
    @property
    def needs_reopen(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    def commit(self, changes: dict[str, Any]) -> int | None: ...
    def compact(self) -> None: ...
    def reopen(self) -> None: ...
    def close(self) -> None: ...
