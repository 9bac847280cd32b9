"""The migration state machine: every allowed (state, event) pair in one table.

Theory of operation. The device is always at a stage (0..N, kept beside the
state) and in one of three states:

    AT_STAGE     normal: the operator may migrate forward or roll back.
    COOLDOWN     an automatic rollback just happened: no advancing until the
                 cooldown expires, so a device cannot flap up and down.
    QUARANTINED  automatic rollbacks kept happening at one stage: no advancing
                 until an operator clears the quarantine.

The operator's clear (QuarantineCleared) also ends a cooldown early: the
cooldown deadline is wall-clock time, and a person must be able to end it even
if that clock is wrong.

Rolling back (by hand, automatically, or the emergency rollback to stage 0) is
allowed in every state: going back is always the safe direction. A pair that
is not allowed in the table (_TABLE; TRANSITIONS) is refused with TransitionRefused,
which names the state, the event and the reason (REFUSALS). Must never: touch the
store, the flags or the clock; MigrationControl does that once the table says yes.
"""
from agent.errors import AgentError
from agent.protocol import IN_QUARANTINE, NOT_READY

AT_STAGE = "AT_STAGE"
COOLDOWN = "COOLDOWN"
QUARANTINED = "QUARANTINED"
STATES = (AT_STAGE, COOLDOWN, QUARANTINED)

MigrateRequested = "MigrateRequested"
RollbackRequested = "RollbackRequested"
EmergencyRollback = "EmergencyRollback"
HealthViolation = "HealthViolation"
RepeatedHealthViolation = "RepeatedHealthViolation"
CooldownExpired = "CooldownExpired"
QuarantineCleared = "QuarantineCleared"
FlagOverrideRequested = "FlagOverrideRequested"
EVENTS = (MigrateRequested, RollbackRequested, EmergencyRollback, HealthViolation,
          RepeatedHealthViolation, CooldownExpired, QuarantineCleared, FlagOverrideRequested)

# The table, one (state, event) pair a line: "STATE Event NEXT" where it is allowed,
# "STATE Event - reason" where it is refused with that reason. A pair not here is
# refused too ("not allowed in this state"). One string, so a board holds one object
# for it (its text stays in flash): TRANSITIONS and REFUSALS, the same table as dicts,
# are made from it when asked for (__getattr__ below).
_TABLE = """
AT_STAGE MigrateRequested AT_STAGE
AT_STAGE RollbackRequested AT_STAGE
AT_STAGE EmergencyRollback AT_STAGE
AT_STAGE HealthViolation COOLDOWN
AT_STAGE RepeatedHealthViolation QUARANTINED
AT_STAGE FlagOverrideRequested AT_STAGE
AT_STAGE CooldownExpired - not cooling down
AT_STAGE QuarantineCleared - not quarantined
COOLDOWN RollbackRequested COOLDOWN
COOLDOWN EmergencyRollback COOLDOWN
COOLDOWN HealthViolation COOLDOWN
COOLDOWN RepeatedHealthViolation QUARANTINED
COOLDOWN CooldownExpired AT_STAGE
COOLDOWN QuarantineCleared AT_STAGE
COOLDOWN FlagOverrideRequested COOLDOWN
COOLDOWN MigrateRequested - cooling down after an automatic rollback
QUARANTINED RollbackRequested QUARANTINED
QUARANTINED EmergencyRollback QUARANTINED
QUARANTINED HealthViolation QUARANTINED
QUARANTINED RepeatedHealthViolation QUARANTINED
QUARANTINED QuarantineCleared AT_STAGE
QUARANTINED FlagOverrideRequested QUARANTINED
QUARANTINED MigrateRequested - quarantined after repeated automatic rollbacks; an operator \
must clear_quarantine first
QUARANTINED CooldownExpired - quarantined, not cooling down
"""
TRANSITIONS: dict  # {state: {event: next state}}, made from _TABLE when asked for
REFUSALS: dict  # {state: {event: reason}}, the same


def _entry(state, event):
    """What _TABLE says for the pair: the next state, "- reason", or None."""
    key = "\n%s %s " % (state, event)
    i = _TABLE.find(key)
    if i < 0:
        return None
    i += len(key)
    return _TABLE[i:_TABLE.index("\n", i)]


def _tables():
    """(TRANSITIONS, REFUSALS) made from _TABLE."""
    allowed, refused = {}, {}
    for line in _TABLE.split("\n"):
        if line:
            state, event, then = line.split(" ", 2)
            if then.startswith("- "):
                refused.setdefault(state, {})[event] = then[2:]
            else:
                allowed.setdefault(state, {})[event] = then
    return allowed, refused


def __getattr__(name):
    if name == "TRANSITIONS":
        return _tables()[0]
    if name == "REFUSALS":
        return _tables()[1]
    raise AttributeError("module 'agent.transitions' has no attribute '%s'" % name)


class ControlError(AgentError):
    """Base of every error MigrationControl raises on purpose."""


class TransitionRefused(ControlError):
    """`refusal`: the ack's reason code; `detail`: what the ack says (the reason in a list
    by default). Its two kinds below say only who raised them, so that on a board (the
    board profile) all three are one class."""

    def __init__(self, state, event, reason, refusal=NOT_READY, detail=None):
        super().__init__(f"{event} refused in state {state}: {reason}")
        self.state = state
        self.event = event
        self.reason = reason
        self.refusal = refusal
        self.detail = [reason] if detail is None else detail

    def refusal_detail(self):
        return self.detail


class NotReady(TransitionRefused):
    """validate_readiness_for_stage said no: not_ready(state, event, reasons) makes one,
    its detail the list of reasons."""


class Quarantined(TransitionRefused):
    """The device is quarantined and will not advance: in_quarantine, the reason as text."""


def not_ready(state, event, reasons):
    """The NotReady for readiness `reasons` (a list of texts)."""
    return NotReady(state, event, "; ".join(reasons), NOT_READY, list(reasons))


def next_state(state, event):
    """The state after `event`, or TransitionRefused (Quarantined when that is why)."""
    if state not in STATES:
        raise TransitionRefused(state, event, "unknown state")
    then = _entry(state, event)
    if then is not None and not then.startswith("- "):
        for known in STATES:  # the constant itself, not a slice of the table
            if known == then:
                return known
    if then is not None:
        reason = then[2:]
    else:
        reason = "unknown event" if event not in EVENTS else "not allowed in this state"
    if state == QUARANTINED and event == MigrateRequested:
        raise Quarantined(state, event, reason, IN_QUARANTINE, reason)
    raise TransitionRefused(state, event, reason)


# -- the rules that go with the table ----------------------------------------
# MigrationControl asks these; it decides none of them itself.

def violation_event(rollbacks_from_stage, quarantine_after):
    """HealthViolation, or RepeatedHealthViolation once the automatic rollbacks from
    one stage (this one included) reach quarantine_after."""
    if rollbacks_from_stage >= quarantine_after:
        return RepeatedHealthViolation
    return HealthViolation


def migrate_target_problem(n, stage, max_stage, plan_name):
    """Why stage n cannot be migrated to from `stage` (forward one step only), or None."""
    if type(n) is not int or n < 1 or n > max_stage:
        return f"plan {plan_name} has stages 1..{max_stage}, not {n!r}"
    if stage != n - 1:
        return f"at stage {stage}; stage {n} needs stage {n - 1} first"
    return None


def rollback_target_problem(n, stage):
    """Why n is not a stage to roll back to from `stage` (any stage below it), or None."""
    if type(n) is not int or n < 0 or n >= stage:
        return (f"target must be a stage from 0 to {stage - 1}, " +  # no adjacent f-strings:
                f"below the current stage {stage}, not {n!r}")  # older mpy-cross refuses them
    return None


def automatic_rollback_target(stage):
    """An automatic rollback goes back one stage; None at stage 0 (nothing to undo)."""
    return stage - 1 if stage > 0 else None


def cooldown_deadline(now_wall_ms, cooldown_ms):
    return now_wall_ms + cooldown_ms


def clamp_cooldown(until, now_wall_ms, cooldown_ms):
    """A deadline further away than one whole cooldown means the wall clock went back:
    it becomes now + cooldown_ms, so a cooldown always ends."""
    cap = now_wall_ms + cooldown_ms
    return cap if until > cap else until


def cooldown_remaining_ms(until, now_wall_ms, cooldown_ms):
    remaining = clamp_cooldown(until, now_wall_ms, cooldown_ms) - now_wall_ms
    return remaining if remaining > 0 else 0


def table_text():
    """The table as text lines ("STATE --Event--> NEXT", then the refusals). The README's
    state diagram is this text (tests/test_readme_tables.py checks it), so the
    diagram is drawn from the same table the code obeys."""
    moves, refusals = _tables()
    lines = []
    for state in STATES:
        for event in sorted(moves[state]):
            lines.append(f"{state} --{event}--> {moves[state][event]}")
    for state in STATES:
        for event in sorted(refusals.get(state, {})):
            lines.append(f"{state} --{event}--x refused: {refusals[state][event]}")
    return lines
