# Types of agent.runtime (checked against the source by tests/test_stubs.py).
from typing import Any

from agent.control import ControlError as ControlError
from agent.control import MigrationControl

STATUS_HEALTH_KEYS: tuple[Any, ...]
DESIRED_RETRY_MS: Any
KEY_LOCAL_HOLD: str

class AgentRuntime:
    control: MigrationControl
    link: Any
    fleet: Any
    device_id: Any
    groups: Any
    hw: Any
    key: Any
    clock: Any
    insecure: Any
    queue: Any
    health_interval_ms: Any
    status_interval_ms: Any
    monitor_interval_ms: Any
    log: Any
    memory: Any
    guard: Any
    counters: Any
    desired: Any
    last_error: Any
    stopping: Any
    def __init__(
        self,
        control: MigrationControl,
        link: Any,
        fleet: Any,
        device_id: Any,
        groups: Any = ...,
        key: Any = ...,
        clock: Any = ...,
        insecure: Any = ...,
        queue_limit: Any = ...,
        health_interval_ms: Any = ...,
        status_interval_ms: Any = ...,
        monitor_interval_ms: Any = ...,
        log: Any = ...,
        hw: Any = ...,
        memory: Any = ...,
    ) -> None: ...
    def start(self) -> Any: ...
    def will(self) -> Any: ...
    def run(self, poll_ms: Any = ..., extra_poll: Any = ...) -> Any: ...
    def on_connect(self) -> Any: ...
    def on_disconnect(self, why: Any = ...) -> Any: ...
    def refresh_will(self) -> Any: ...
    def on_message(self, topic: Any, payload: Any, retain: Any = ...) -> Any: ...
    def tick(self) -> Any: ...
    def status_payload(self, online: Any = ...) -> Any: ...
    def memory_report(self) -> Any: ...
    def publish_status(self) -> Any: ...
    def publish_health(self) -> Any: ...
    def flush_reports(self) -> Any: ...
    def uptime_s(self) -> Any: ...
    def local_emergency_rollback(self, reason: Any) -> Any: ...

def local_hold_changes(clock: Any, reason: Any = ...) -> Any: ...
def already_there(op: Any, args: Any, stage: Any) -> Any: ...
def will_message(
    fleet: Any, device_id: Any, groups: Any, key: Any, guard_seq: Any = ..., hw: Any = ...
) -> Any: ...
def refusal_of(exc: Any) -> Any: ...
