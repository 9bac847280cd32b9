"""Rebuilding a MigrationControl's memory from the flag store at boot.

Owns: reading every "ctl.*", "flag.*" and "health.restarts" key back, and the
rule that anything unusable on flash (wrong type, unknown state, unknown flag)
falls back to the safe value (stage 0, AT_STAGE, no overrides) with a note in
`control.recovered_notes` instead of crashing the agent.
Must never: lose committed state that is valid. If the config or plan changed
since the last boot, the flags now in force are committed (one commit, with a
"plan_changed" history entry when the plan hash differs).
"""
from agent import transitions as tr
from agent.flags import FLAG_NAMES, FlagError, check_flag_map
from agent.store import StoreError
from agent.transitions import AT_STAGE

FLAG_PREFIX = "flag."


def restore(control):
    """Rebuild memory from the store; anything unusable falls back to the safe value."""
    get = control.store.get
    control.seq = _int_or(get("ctl.seq"), 0, 0, None, control.recovered_notes, "ctl.seq")
    stage = _int_or(get("ctl.stage"), 0, 0, None, control.recovered_notes, "ctl.stage")
    if stage > control.plan.max_stage:
        control.recovered_notes.append(f"stage {stage} is beyond plan {control.plan.name}; " +
                                       f"using stage {control.plan.max_stage}")
        stage = control.plan.max_stage
    control.stage = stage
    state = get("ctl.state", AT_STAGE)
    if state not in tr.STATES:
        control.recovered_notes.append(f"unknown state {state!r}; using {AT_STAGE}")
        state = AT_STAGE
    control.state = state
    overrides = get("ctl.overrides", {})
    try:
        check_flag_map(overrides, "stored overrides")
    except FlagError as exc:
        control.recovered_notes.append(f"dropped stored overrides: {exc}")
        overrides = {}
    control._overrides = dict(overrides)
    control._cooldown_until = _int_or(get("ctl.cooldown_until"), None, 0, None,
                                   control.recovered_notes, "ctl.cooldown_until")
    q = get("ctl.quarantine")
    control._quarantine = q if isinstance(q, dict) else None
    counts = get("ctl.auto_rollbacks", {})
    control._auto_rollbacks = counts if isinstance(counts, dict) else {}
    baseline = get("ctl.baseline")
    control._baseline = baseline if isinstance(baseline, dict) else None
    control._stage_entered = get("ctl.stage_entered")
    control.history.restore(control.store.items())
    control._cap_cooldown()
    _restore_restarts(control, get("health.restarts", []))
    control.flags.apply(stage_flags=control.plan.flags_for_stage(control.stage),
                     overrides=control._overrides)
    _reconcile_flags(control, get("ctl.plan_hash"))

def _restore_restarts(control, stored):
    now = control.clock.monotonic_ms()
    wall = control._wall_ms()
    log = []
    if isinstance(stored, list):
        for item in stored:
            if (isinstance(item, list) and len(item) == 2 and type(item[0]) is int
                    and item[0] >= wall - control.config.restart_window_ms):
                log.append([item[0], item[1]])
    control._restart_log = log
    # Map wall times onto this boot's monotonic clock.
    control.health.load_restarts([(now - (wall - t), n) for t, n in log])

def _reconcile_flags(control, stored_hash):
    """If config or plan changed since the last boot, commit the flags in force now."""
    values = control.flags.values()
    stale = [n for n in FLAG_NAMES if control.store.get(FLAG_PREFIX + n) != values[n]]
    if stored_hash == control.plan.hash and not stale:
        return
    changes = {}
    for name in FLAG_NAMES:
        changes[FLAG_PREFIX + name] = values[name]
    entry = None
    if stored_hash is not None and stored_hash != control.plan.hash:
        reason = f"plan {stored_hash[:12]} -> {control.plan.hash[:12]}"
        entry = control._entry("plan_changed", control.stage, control.state, reason)
    try:
        control._commit(changes, entry, None, control.state)
    except StoreError as exc:
        # Boot anyway with the right flags in memory; every stage or flag change
        # writes all flags again, so the store catches up at the next commit.
        control.recovered_notes.append(f"could not commit the flags in force: {exc}")


def _int_or(value, default, minimum, maximum, notes, what):
    if value is None:
        return default
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        notes.append(f"invalid {what} {value!r}; using {default!r}")
        return default
    return value
