# Types of agent.control (checked against the source by tests/test_stubs.py).
# The operations return plain dicts on the device; their shapes are typed here only.
from typing import Any, Literal, TypedDict

from agent.config import Config as Config
from agent.control_checks import FLAG_PREFIX as FLAG_PREFIX
from agent.events import EventBus, History
from agent.flags import FeatureFlags
from agent.health import HealthWindow
from agent.plan import Plan
from agent.services import Services
from agent.store import Store
from agent.transitions import AT_STAGE as AT_STAGE
from agent.transitions import COOLDOWN as COOLDOWN
from agent.transitions import QUARANTINED as QUARANTINED
from agent.transitions import ControlError as ControlError
from agent.transitions import NotReady as NotReady
from agent.transitions import Quarantined as Quarantined
from agent.transitions import TransitionRefused as TransitionRefused

STORE_FILE: str

class HistoryEntry(TypedDict, total=False):
    seq: int
    at: int
    op: str
    to: int
    state: str
    reason: str
    violations: list[dict[str, Any]]
    overrides_dropped: list[str]

class OperationResult(TypedDict):
    """What migrate/rollback/emergency_rollback/flag overrides/clear_quarantine return."""
    result: Literal["ok"]
    stage: int
    state: str
    seq: int
    flags: dict[str, bool]
    entry: dict[str, Any]  # a HistoryEntry, plus "from" (not a Python name)

class Readiness(TypedDict):
    ready: bool
    reasons: list[str]
    stage: int
    current_stage: int
    state: str

class CheckResult(TypedDict, total=False):
    """check_health_and_rollback(): result is "ok", "inconclusive", "unhealthy" or
    "rollback_triggered"; health is always there (None on an ok or inconclusive
    result with report=False), the rest as the result says."""
    result: str
    health: dict[str, Any] | None
    reason: str
    violations: list[dict[str, Any]]
    rolled_back_to: int | None
    state: str

class MonitoringStarted(TypedDict):
    result: Literal["ok"]
    interval_ms: int
    next_check_ms: int

class MigrationControl:
    store: Store
    plan: Plan
    config: Config
    clock: Any
    events: EventBus
    flags: FeatureFlags
    health: HealthWindow
    history: History
    stage: int
    state: str
    seq: int
    service_errors: int
    restart_persist_errors: int
    recovered_notes: list[str]
    @property
    def services(self) -> Services: ...
    def __init__(self, store: Store, plan: Plan, config: Config, clock: Any,
                 events: EventBus, flags: FeatureFlags) -> None: ...
    @classmethod
    def open(cls, state_dir: str, fs: Any, clock: Any,
             plan: Plan | dict[str, Any] | str | None = None,
             config: Config | dict[str, Any] | str | None = None,
             log: Any = None, store: Any = None) -> MigrationControl: ...
    def close(self) -> None: ...
    def status(self) -> dict[str, Any]: ...
    def report_status(self) -> tuple[dict[str, Any], bool]: ...
    def validate_readiness_for_stage(self, n: int) -> Readiness: ...
    def migrate_to_stage(self, n: int,
                         extra_changes: dict[str, Any] | None = None) -> OperationResult: ...
    def rollback_to_stage(self, n: int, extra_changes: dict[str, Any] | None = None,
                          reason: str = "operator") -> OperationResult: ...
    def emergency_rollback(self, reason: str,
                           extra_changes: dict[str, Any] | None = None) -> OperationResult: ...
    def at_emergency_target(self) -> bool: ...
    def check_health_and_rollback(self, report: bool = ...) -> CheckResult: ...
    def metrics(self) -> dict[str, Any]: ...
    def start_health_monitoring(self, interval_ms: int | None = None) -> MonitoringStarted: ...
    def stop_health_monitoring(self) -> None: ...
    def poll(self, report: bool = ...) -> CheckResult | None: ...
    def set_flag_override(self, name: str, value: bool,
                          extra_changes: dict[str, Any] | None = None) -> OperationResult: ...
    def clear_flag_override(self, name: str,
                            extra_changes: dict[str, Any] | None = None) -> OperationResult: ...
    def clear_quarantine(self,
                         extra_changes: dict[str, Any] | None = None) -> OperationResult: ...
    def record_outcome(self, ok: bool, latency_ms: float | None, service: str | None = None,
                       source: str | None = None) -> None: ...
    def record_outcomes(self, calls: int, errors: int, latency_ms: float | None,
                        source: str) -> None: ...
    def set_source_grace(self, source: str, grace_ms: int) -> None: ...
    def record_restart(self, name: str | None = None) -> None: ...
    def reload_if_store_needs_it(self) -> None: ...
