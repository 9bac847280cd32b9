"""Stage-4 enforcement: the guard every legacy path reports to.

Owns: whether enforcement is on (flag enforce_no_process_dict, set by
`Services.apply_flags`), the bounded list of recorded violations, and their
counts. Each legacy implementation calls `note(service, operation)` before it
touches the global state; with enforcement off that is one attribute test.

Decision: a violation is recorded and counted, and the legacy call still works
(the device keeps running; the count is what operators and the health report
read). With `strict=True` the guard raises `LegacyPathViolation` instead, for
tests and for boards whose owner wants a hard failure. The migration machinery
(moving state between implementations) does not go through `note`, so a
rollback never counts as a violation.

Must never: raise in the default mode, grow without bound, or read the clock
when enforcement is off.
"""
from agent.services.base import LegacyPathViolation

MAX_VIOLATIONS = 64


class Enforcement:
    """Records use of legacy paths while stage-4 enforcement is on."""

    def __init__(self, clock, strict=False, max_violations=MAX_VIOLATIONS):
        self._clock = clock
        self.strict = strict
        self.active = False
        self.max_violations = max_violations
        self._recent = []
        self.total = 0
        self.dropped = 0
        self._by_service = {}

    def set_active(self, active):
        self.active = bool(active)

    def note(self, service, operation):
        """Called by a legacy implementation on every use of the global state."""
        if not self.active:
            return
        self.total += 1
        self._by_service[service] = self._by_service.get(service, 0) + 1
        self._recent.append({"service": service, "operation": operation,
                             "now_ms": self._clock.monotonic_ms()})
        if len(self._recent) > self.max_violations:
            # keep the newest: they describe what is still using legacy paths now
            self._recent.pop(0)
            self.dropped += 1
        if self.strict:
            raise LegacyPathViolation(service, operation)

    def violations(self):
        """The most recent violations, oldest first (at most max_violations)."""
        return [dict(v) for v in self._recent]

    def counts(self):
        """Violations per service since start (or the last reset)."""
        return dict(self._by_service)

    def reset(self):
        self._recent = []
        self.total = 0
        self.dropped = 0
        self._by_service = {}

    def status(self):
        return {"active": self.active, "strict": self.strict, "total": self.total,
                "dropped": self.dropped, "by_service": self.counts()}
