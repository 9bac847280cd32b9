# Types of agent.protocol's public door (microdot's way: the device files stay lean).
# tests/test_stubs.py checks that every name and parameter here matches the source.
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

Json = Any  # a msgpack-able value: None, bool, int, float, str, bytes, list, dict

# -- _wire: constants, reason codes, the op table -------------------------------
VERSION: int
MAX_STAGE: int
MAX_PAYLOAD: int
MAX_BODY: int
MAC_BYTES: int
TAG_BYTES: int
KEY_BYTES: int
MAX_ID_LEN: int
MAX_REASON_LEN: int
MAX_FLAG_NAME_LEN: int
RECENT_WINDOW: int
MAX_SEQ: int
MAX_AHEAD_MS: int
MAX_ISSUED_AT: int
BAD_SIGNATURE: str
REPLAYED: str
STALE_SEQUENCE: str
MALFORMED: str
UNKNOWN_OP: str
WRONG_PLAN: str
NOT_READY: str
IN_QUARANTINE: str
REASONS: tuple[str, ...]
NOT_SIGNED_FOR_DEVICE: str
NEW: str
APPLIED: str
DUPLICATE: str
REJECTED: str
RESULTS: tuple[str, ...]
OP_MIGRATE: str
OP_ROLLBACK: str
OP_EMERGENCY_ROLLBACK: str
OP_SET_FLAG: str
OP_CLEAR_FLAG: str
OP_CLEAR_QUARANTINE: str
OPS: tuple[str, ...]
CONTROL_OPS: dict[str, tuple[str, tuple[str, ...]]]
KIND_CMD: str
KIND_DESIRED: str
DEVICE_LEAVES: tuple[str, ...]
REPORT_KINDS: tuple[str, ...]
PREFIX: str
QOS: int

class ProtocolError(ValueError): ...
class LocalProtocolError(ProtocolError): ...
class RemoteProtocolError(ProtocolError): ...
class BadId(LocalProtocolError): ...
class BadTarget(LocalProtocolError): ...
class BadTopic(LocalProtocolError): ...
class KeyFileError(LocalProtocolError): ...

class CommandInvalid(LocalProtocolError):
    reason: str
    detail: Any
    def __init__(self, reason: str, detail: Any = None) -> None: ...

class ReportError(RemoteProtocolError): ...
class GuardStateError(RemoteProtocolError): ...

class CommandRejected(RemoteProtocolError):
    reason: str
    detail: str | list[str] | None
    command_id: str | None
    def __init__(self, reason: str, detail: str | list[str] | None = None,
                 command_id: str | None = None) -> None: ...

# -- _addressing: ids, targets, topics -------------------------------------------
BUCKET_DEPTH: int

def validate_id(value: object, what: str = ...) -> str: ...
def bucket_of(device_id: str) -> str: ...
def parse_target(text: object) -> tuple[str, str | None]: ...
def make_target(kind: str, name: str | None = None) -> str: ...
def target_matches(target: str, device_id: str, groups: Iterable[str] = ()) -> bool: ...
def select_devices(target: str, inventory: Mapping[str, Sequence[str]]) -> list[str]: ...
def cmd_topic(fleet: str, target: str) -> str: ...
def desired_topic(fleet: str, target: str) -> str: ...
def device_topic(fleet: str, device_id: str, leaf: str) -> str: ...
def device_wildcard(fleet: str, leaf: str) -> str: ...
def parse_topic(topic: str) -> tuple[str, str, str, str | None]: ...
def subscriptions(fleet: str, device_id: str,
                  groups: Iterable[str] = ()) -> list[tuple[str, int]]: ...

# -- _keys --------------------------------------------------------------------------
def new_fleet_key() -> bytes: ...
def derive_device_key(fleet_key: bytes, device_id: str) -> bytes: ...

class KeyInfo:
    kind: str
    key: bytes
    device_id: str | None
    def __init__(self, kind: str, key: bytes, device_id: str | None = None) -> None: ...

def format_key_file(key: bytes, kind: str = ..., device_id: str | None = None) -> bytes: ...
def parse_key_file(data: bytes) -> KeyInfo: ...
def agent_key(info: KeyInfo, device_id: str) -> tuple[bytes, str | None]: ...

# -- _commands: signed commands and desired states, dispatch --------------------------
class Command:
    kind: str
    id: str
    seq: int
    plan: str
    target: str
    op: str
    args: dict[str, Json]
    issued_at: int | float
    digest: str
    def __init__(self, command_id: str, seq: int, plan: str, target: str, op: str,
                 args: dict[str, Json], issued_at: int | float, digest: str) -> None: ...

class DesiredState(Command):
    stage: int
    emergency: bool
    reason: str | None
    def __init__(self, command_id: str, seq: int, plan: str, target: str, stage: int,
                 emergency: bool, reason: str | None, issued_at: int | float,
                 digest: str) -> None: ...
    def action(self, current_stage: int) -> tuple[str, dict[str, Json]] | None: ...

KeyCache = dict[str, tuple[bytes, bytes]]  # device id -> (tag, K_d)

def pick_desired(states: Iterable[DesiredState | None]) -> DesiredState | None: ...
def dispatch(control: Any, op: str, args: Mapping[str, Json],
             extra_changes: dict[str, Json] | None = None) -> Any: ...
def new_command_id() -> str: ...
def next_seq(last_seq: int, now_wall: float) -> int: ...
def device_tag(device_id: str) -> bytes: ...
def seal(env: dict[str, Json], kind: str, fleet_key: bytes | None, devices: Iterable[str],
         keys: KeyCache | None = None) -> bytes: ...
def encode_command(op: str, args: dict[str, Json], target: str, seq: int, plan_hash: str,
                   fleet_key: bytes | None, devices: Iterable[str] | None = None,
                   command_id: str | None = None, issued_at: int | float = 0,
                   max_stage: int = ..., keys: KeyCache | None = None,
                   fleet: str | None = None) -> bytes: ...
def encode_desired(target: str, stage: int, seq: int, plan_hash: str, fleet_key: bytes | None,
                   devices: Iterable[str] | None = None, emergency: bool = False,
                   reason: str | None = None, command_id: str | None = None,
                   issued_at: int | float = 0, max_stage: int = ...,
                   keys: KeyCache | None = None, fleet: str | None = None) -> bytes: ...
def decode_command(payload: bytes | None, key: bytes | None, device_id: str,
                   groups: Iterable[str] = (), plan_hash: str | None = None,
                   max_stage: int = ..., insecure: bool = False, max_payload: int = ...,
                   fleet: str | None = None) -> Command: ...
def decode_desired(payload: bytes | None, key: bytes | None, device_id: str,
                   groups: Iterable[str] = (), plan_hash: str | None = None,
                   max_stage: int = ..., insecure: bool = False, max_payload: int = ...,
                   fleet: str | None = None) -> DesiredState: ...

# -- _replay --------------------------------------------------------------------------
class ReplayGuard:
    KEY_SEQ: str
    KEY_RECENT: str
    KEY_SLOT: str
    last_seq: int
    recent: list[list[Any]]
    window: int
    slots: list[int]
    legacy: bool
    def __init__(self, last_seq: int = 0, recent: Iterable[list[Any]] | None = None,
                 window: int = ..., slots: Iterable[int] | None = None,
                 legacy: bool = False) -> None: ...
    @classmethod
    def from_store(cls, store: Any, window: int = ...) -> ReplayGuard: ...
    @classmethod
    def from_dict(cls, state: Mapping[str, Json], window: int = ...) -> ReplayGuard: ...
    def state(self) -> dict[str, Json]: ...
    def check(self, msg: Command) -> str: ...
    def record(self, msg: Command) -> dict[str, Json]: ...
    def commit(self, changes: Mapping[str, Json],
               peek: Callable[[str], Any] | None = None) -> None: ...

# -- _reports: acks, status, health, events ---------------------------------------------
def encode_ack(command_id: str | None, result: str, reason: str | None = None,
               detail: Any = None, state: str | None = None, device_id: str = ...,
               seq: int | None = None, key: bytes | None = None, now: int | None = None,
               fleet: str | None = None) -> bytes: ...
def encode_status(device_id: str, stage: int | None, flags: dict[str, bool] | None,
                  health: dict[str, Json] | None = None, plan_hash: str | None = None,
                  agent_version: str | None = None, uptime_s: int | None = None,
                  online: bool = True, groups: list[str] | None = None,
                  quarantined: bool | None = None, extra: dict[str, Json] | None = None,
                  key: bytes | None = None, now: int | None = None,
                  hw: dict[str, Json] | None = None, fleet: str | None = None) -> bytes: ...
def encode_offline_status(device_id: str, key: bytes | None = None,
                          fleet: str | None = None) -> bytes: ...
def encode_health(device_id: str, metrics: dict[str, Json], key: bytes | None = None,
                  now: int | None = None, fleet: str | None = None) -> bytes: ...
def encode_event(device_id: str, name: str, payload: dict[str, Json] | None = None,
                 key: bytes | None = None, now: int | None = None,
                 fleet: str | None = None) -> bytes: ...
def decode_report(payload: bytes | None, key: bytes | None = None, kind: str | None = None,
                  device_id: str | None = None, fleet_key: bytes | None = None,
                  max_payload: int = ..., fleet: str | None = None) -> dict[str, Any]: ...
