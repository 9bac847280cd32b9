"""Converging to the retained desired state: the runtime's second state machine, as a table.

Theory of operation. Desired states arrive on retained topics (every
reconnect brings them again); the runtime picks the winner of what arrived
together and tries to reach it. A try that the control refuses (not ready,
a storage error) is kept and tried again every RETRY_MS, silently, until it
is reached or made moot (a later command moved the replay guard past it, or
the console's emergency rollback put a hold on every desired state).

    IDLE      nothing to converge to
    TRYING    converging now (one tick)
    WAITING   a desired state could not be reached yet: `pending`, retried at `retry_at`

Only the first try of a desired state answers a refusal with an ack
(ACKS_REFUSAL): retries would repeat the same ack every few seconds.
GUARD_ONLY is the op of a message that asks for what the device already is:
nothing changes but the replay guard's record.
Must never: decode, verify or apply anything itself (agent.runtime does).
"""

RETRY_MS = 5000

IDLE = "IDLE"
TRYING = "TRYING"
WAITING = "WAITING"
STATES = (IDLE, TRYING, WAITING)

Arrived = "Arrived"      # a new winner on the desired topics
RetryDue = "RetryDue"    # the retry time of the pending state came
Reached = "Reached"      # converged, or nothing was left to do
Refused = "Refused"      # the control refused a step: keep it for a retry
Overtaken = "Overtaken"  # a later command or the console hold made the pending one moot
Failed = "Failed"        # the try raised (a bug, a broken store): dropped; the runtime counts it
EVENTS = (Arrived, RetryDue, Reached, Refused, Overtaken, Failed)

# Every move, one a line: "STATE Event NEXT" (one string: a board holds one object for
# it, its text in flash); TRANSITIONS, the same as a dict, is made when asked for.
_MOVES = """
IDLE Arrived TRYING
IDLE Overtaken IDLE
TRYING Reached IDLE
TRYING Refused WAITING
TRYING Failed IDLE
WAITING Arrived TRYING
WAITING RetryDue TRYING
WAITING Overtaken IDLE
"""
TRANSITIONS: dict  # {state: {event: next state}}, made from _MOVES when asked for


def _table():
    table = {}
    for line in _MOVES.split("\n"):
        if line:
            state, event, nxt = line.split(" ")
            table.setdefault(state, {})[event] = nxt
    return table


def __getattr__(name):
    if name == "TRANSITIONS":
        return _table()
    raise AttributeError("module 'agent.desired' has no attribute '%s'" % name)

ACKS_REFUSAL = {Arrived: True, RetryDue: False}

GUARD_ONLY = "guard_only"


class Convergence:
    """Where the runtime stands with the desired state; moves only through the table."""

    def __init__(self):
        self.state = IDLE
        self.pending = None  # the DesiredState being tried or waiting
        self.retry_at = 0

    def move(self, event, pending=None, now=0):
        key = "\n%s %s " % (self.state, event)
        i = _MOVES.find(key)
        if i < 0:  # a bug in the runtime, never bad input
            raise ValueError(f"desired state: {event} in state {self.state}")
        i += len(key)
        nxt = _MOVES[i:_MOVES.index("\n", i)]
        for known in STATES:  # the constant itself, not a slice of the table
            if known == nxt:
                nxt = known
        self.state = nxt
        if nxt == IDLE:
            self.pending = None
        elif pending is not None:
            self.pending = pending
        if event == Refused:
            self.retry_at = now + RETRY_MS

    def retry_due(self, now):
        return self.state == WAITING and now >= self.retry_at


def table_text():
    """The table as text lines ("STATE --Event--> NEXT")."""
    moves = _table()
    lines = []
    for state in STATES:
        for event in sorted(moves[state]):
            lines.append(f"{state} --{event}--> {moves[state][event]}")
    return lines
