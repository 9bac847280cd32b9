"""Reading MigrationControl's state back from the flag store at boot, validated.

Owns: what every "ctl.*", "flag.*" and "health.restarts" key may hold, and the
rule that anything unusable on flash (wrong type, unknown state, unknown flag)
falls back to the safe value (stage 0, AT_STAGE, no overrides) with a note
instead of crashing the agent; and which flags must be committed again when
the config or plan changed since the last boot.
Must never: touch MigrationControl (it returns a StoredState; MigrationControl
adopts it in _restore()), write the store, or lose committed state that is valid.
A board frees this module once the agent runs (agent.boot.BOOT_ONLY_MODULES): only
MigrationControl._restore imports it, at open and at a rare store reopen.
"""
from agent import transitions as tr
from agent.control_checks import FLAG_PREFIX
from agent.events import PREFIX  # the history's keys
from agent.flags import FLAG_NAMES, FlagError, check_flag_map
from agent.transitions import AT_STAGE


class StoredState:
    """What the store holds for MigrationControl, every value usable."""

    def __init__(self):
        self.seq = 0
        self.stage = 0
        self.state = AT_STAGE
        self.overrides = {}
        self.cooldown_until = None
        self.quarantine = None
        self.auto_rollbacks = {}
        self.baseline = None
        self.stage_entered = None
        self.restarts = []  # [wall_ms, name], within the restart window
        self.plan_hash = None


def read_state(store, plan, restart_window_ms, wall_ms, notes):
    """StoredState from `store`; each value that cannot be used is replaced and noted."""
    get = store.get
    s = StoredState()
    s.seq = _int_or(get("ctl.seq"), 0, 0, None, notes, "ctl.seq")
    stage = _int_or(get("ctl.stage"), 0, 0, None, notes, "ctl.stage")
    if stage > plan.max_stage:
        notes.append(f"stage {stage} is beyond plan {plan.name}; " +
                     f"using stage {plan.max_stage}")
        stage = plan.max_stage
    s.stage = stage
    state = get("ctl.state", AT_STAGE)
    if state not in tr.STATES:
        notes.append(f"unknown state {state!r}; using {AT_STAGE}")
        state = AT_STAGE
    s.state = state
    overrides = get("ctl.overrides", {})
    try:
        check_flag_map(overrides, "stored overrides")
    except FlagError as exc:
        notes.append(f"dropped stored overrides: {exc}")
        overrides = {}
    s.overrides = dict(overrides)
    s.cooldown_until = _int_or(get("ctl.cooldown_until"), None, 0, None, notes,
                               "ctl.cooldown_until")
    q = get("ctl.quarantine")
    s.quarantine = q if isinstance(q, dict) else None
    counts = get("ctl.auto_rollbacks", {})
    s.auto_rollbacks = counts if isinstance(counts, dict) else {}
    baseline = get("ctl.baseline")
    s.baseline = baseline if isinstance(baseline, dict) else None
    s.stage_entered = get("ctl.stage_entered")
    s.restarts = _restarts(get("health.restarts", []), wall_ms, restart_window_ms)
    s.plan_hash = get("ctl.plan_hash")
    return s


def _restarts(stored, wall_ms, window_ms):
    log = []
    if isinstance(stored, list):
        for item in stored:
            if (isinstance(item, list) and len(item) == 2 and type(item[0]) is int
                    and item[0] >= wall_ms - window_ms):
                log.append([item[0], item[1]])
    return log


def flags_to_commit(store, stored_hash, plan_hash, values):
    """(changes, plan-change reason or None) when the flags in force differ from flash
    or the plan changed since the last boot; (None, None) when flash is current."""
    stale = [n for n in FLAG_NAMES if store.get(FLAG_PREFIX + n) != values[n]]
    if stored_hash == plan_hash and not stale:
        return None, None
    changes = {}
    for name in FLAG_NAMES:
        changes[FLAG_PREFIX + name] = values[name]
    reason = None
    if stored_hash is not None and stored_hash != plan_hash:
        reason = f"plan {stored_hash[:12]} -> {plan_hash[:12]}"
    return changes, reason


def _int_or(value, default, minimum, maximum, notes, what):
    if value is None:
        return default
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        notes.append(f"invalid {what} {value!r}; using {default!r}")
        return default
    return value


def read_history(items):
    """The migration history's entries among the store's (key, value) `items`, newest
    first (History.restore keeps as many as it holds); ignores everything else."""
    found = [(k, v) for k, v in items if k.startswith(PREFIX) and isinstance(v, dict)]
    found.sort(key=lambda e: e[0])
    found.reverse()
    return found
