"""MigrationControl: the runbook's operations on one device.

Owns: the current stage and migration state, the operator's flag overrides,
cooldown and quarantine, the latency baseline, the migration history and the
change sequence number, all kept in the flag store. It asks the transition
table (agent.transitions) whether a request is allowed, the health window
(agent.health) whether the device is healthy, and then makes the change.

Must never: do I/O of its own (store, clock and file system are handed in),
show a state that is not on flash, or commit half a change. Every change is
built as one dict of store changes (stage, every flag, state, history entry,
sequence number and the caller's `extra_changes`) and committed at once; only
after the commit returns are the flags, services and health window updated
and the events emitted. If the commit fails, the in-memory state is untouched
and the StoreError reaches the caller.

Persisted times (cooldown deadline, restarts, history) are wall-clock ms, since
the monotonic clock restarts at every boot; the health window itself runs on
the monotonic clock.
"""
from agent import control_checks as checks
from agent import health as health_mod
from agent import transitions as tr
from agent.config import Config
from agent.control_checks import FLAG_PREFIX
from agent.events import EventBus, History
from agent.flags import FLAG_NAMES, FeatureFlags, check_flag_value
from agent.plan import Plan
from agent.store import Store, StoreError
from agent.transitions import (  # noqa: F401 - re-exported: callers catch these from here
    AT_STAGE,
    COOLDOWN,
    QUARANTINED,
    ControlError,
    NotReady,
    Quarantined,
    TransitionRefused,
)
from firmware_shim.files import join

STORE_FILE = "agent.store"
_MAX_PERSISTED_RESTARTS = 64


class MigrationControl:
    def __init__(self, store, plan, config, clock, events, flags):
        self.store = store
        self.plan = plan
        self.config = config
        self.clock = clock
        self.events = events
        self.flags = flags
        self._services = None  # agent.services, loaded when first used (the services property)
        self.health = health_mod.HealthWindow(config.window_ms, config.restart_window_ms,
                                              config.max_samples)
        self.history = History(config.history_length, peek=store.peek)  # store: never replaced
        self.stage = 0
        self.state = AT_STAGE
        self.seq = 0
        self._overrides = {}
        self._cooldown_until = None
        self._quarantine = None
        self._auto_rollbacks = {}
        self._baseline = None
        self._stage_entered = None
        self._restart_log = []  # [wall_ms, name], oldest first; mirrors "health.restarts"
        self._monitor_interval = None
        self._next_check = None
        self._last_verdict = None     # the last check's verdict and reason
        self._extended_ms = 0         # monitoring time added by inconclusive checks
        self._last_check = None
        self.service_errors = 0
        self._services_behind = False  # a service move failed: retry at the next flag apply
        self.restart_persist_errors = 0
        self.recovered_notes = []

    # -- wiring -------------------------------------------------------------

    @classmethod
    def open(cls, state_dir, fs, clock, plan=None, config=None, log=None, store=None):
        """Open (or create) the device state in `state_dir` and wire flags and services.

        fs, clock: the platform's (firmware_shim.files.FileSystem and
        firmware_shim.machine.SystemClock on a device; agent.boot hands them in).

        plan: a Plan, a plan dict or the path of a plan JSON file (default: the runbook's).
        config: a Config, a config dict or the path of a config JSON file (default env).
        log: where the store's recovery lines go (default: nowhere).
        store: an open store to use instead of the file in state_dir (a board's raw
        flash partition: agent.flash_store.FlashStore).
        """
        if store is None:
            fs.makedirs(state_dir)
        if plan is None:
            plan = Plan.default()
        elif isinstance(plan, dict):
            plan = Plan.from_dict(plan)
        elif isinstance(plan, str):
            plan = Plan.load(plan, fs)
        config = Config.load(config, fs) if isinstance(config, str) else Config.coerce(config)
        events = EventBus()
        # The flags get the bus only after the stored state is restored, so
        # rebuilding the state at boot is not reported as a flag change.
        flags = FeatureFlags(config.flags)
        if store is None:
            store = Store(join(state_dir, STORE_FILE), fs=fs, logger=log)
        control = cls(store, plan, config, clock, events, flags)
        try:
            control._restore()
            flags.attach_events(events)
        except BaseException:
            store.close()
            raise
        return control

    @property
    def services(self):
        """The stage-switched services (agent.services), made the first time they are used.

        Until something calls them they hold nothing, so making them later from the
        flags in force gives what every move since open() would have: each service
        on the implementation its flag picks, with empty state. A device whose
        applications never call them (usually a board's) never loads their code.
        """
        if self._services is None:
            from agent.services import Services

            self._services = Services(self.flags, events=self.events, clock=self.clock)
            self._services.set_restart_listener(self._on_service_restart)
        return self._services

    def close(self):
        if self._services is not None:
            self._services.close()
        self.store.close()

    # -- the runbook's operations ------------------------------------------

    def status(self):
        self._refresh_timers()
        now = self.clock.monotonic_ms()
        return {
            "current_stage": self.stage,
            "state": self.state,
            "flags": self.flags.values(),
            "overrides": dict(self._overrides),
            "system_health": self._system_health(now),
            "migration_history": self.history.entries(),
            "plan": self.plan.summary(),
            "environment": self.config.environment,
            "seq": self.seq,
            "cooldown": self._cooldown_info(),
            "quarantine": None if self._quarantine is None else dict(self._quarantine),
            "auto_rollbacks": dict(self._auto_rollbacks),
            "monitoring": self._monitoring_info(),
            "last_auto_rollback": self._last_auto_rollback(),
        }

    def report_status(self):
        """(health, quarantined): what a status report carries of status(), built alone
        (checks.status_health: not the whole health report, history, plan and the rest)."""
        self._refresh_timers()
        snapshot = self.health.snapshot(self.clock.monotonic_ms())
        return (checks.status_health(snapshot, self._verdict(snapshot), self._baseline,
                                     self._last_auto_rollback()),
                self._quarantine is not None)

    def validate_readiness_for_stage(self, n):
        """{"ready": bool, "reasons": [...]}: may the device go to stage n now?"""
        self._refresh_timers()
        return self._readiness(n, self.health.snapshot(self.clock.monotonic_ms()))

    def _readiness(self, n, snapshot):
        problem = tr.migrate_target_problem(n, self.stage, self.plan.max_stage, self.plan.name)
        reasons = checks.readiness_reasons(problem, self.state, self._quarantine,
                                          self._cooldown_info(),
                                          self._verdict(snapshot)["violations"])
        return {"ready": not reasons, "reasons": reasons, "stage": n,
                "current_stage": self.stage, "state": self.state}

    def migrate_to_stage(self, n, extra_changes=None):
        self._refresh_timers()
        event = tr.MigrateRequested
        new_state = tr.next_state(self.state, event)
        # One snapshot for both the readiness verdict and the baseline.
        snapshot = self.health.snapshot(self.clock.monotonic_ms())
        readiness = self._readiness(n, snapshot)
        if not readiness["ready"]:
            raise tr.not_ready(self.state, event, readiness["reasons"])
        baseline = health_mod.make_baseline(snapshot, self.stage,
                                            self.config.thresholds["min_samples"])
        # Always replace the baseline: when this stage had too few samples to
        # measure one, None (latency checks skipped) is right; keeping an older
        # stage's figure would judge stage n against a stage two steps back.
        more = {"ctl.baseline": baseline}
        entry = self._change_stage(n, new_state, "migrate", "operator", more, extra_changes)
        self._baseline = baseline
        stage = self.plan.stage(n)
        self.events.emit("migration.stage_enabled", {
            "stage": n, "from": entry["from"], "name": stage.name, "risk": stage.risk,
            "flags": list(stage.flags), "seq": self.seq})
        return self._result(entry)

    def rollback_to_stage(self, n, extra_changes=None, reason="operator"):
        self._refresh_timers()
        event = tr.RollbackRequested
        new_state = tr.next_state(self.state, event)
        problem = tr.rollback_target_problem(n, self.stage)
        if problem is not None:
            raise TransitionRefused(self.state, event, problem)
        if not isinstance(reason, str):
            raise ControlError("rollback reason must be a string")
        entry = self._change_stage(n, new_state, "rollback", reason,
                                   extra_changes=extra_changes)
        self.events.emit("migration.rollback", {
            "from": entry["from"], "to": n, "reason": reason, "automatic": False,
            "seq": self.seq})
        return self._result(entry)

    def emergency_rollback(self, reason, extra_changes=None):
        """Straight to stage 0, whatever the state; operator overrides are dropped too."""
        self._refresh_timers()
        if not isinstance(reason, str) or not reason:
            raise ControlError("emergency_rollback needs a reason (a non-empty string)")
        event = tr.EmergencyRollback
        new_state = tr.next_state(self.state, event)
        dropped = sorted(self._overrides)
        entry = self._change_stage(
            0, new_state, "emergency_rollback", reason, extra_changes=extra_changes,
            overrides={}, details={"overrides_dropped": dropped} if dropped else None)
        self.events.emit("migration.emergency_rollback", {
            "from": entry["from"], "to": 0, "reason": reason, "overrides_dropped": dropped,
            "seq": self.seq})
        return self._result(entry)

    def at_emergency_target(self):
        """An emergency rollback would change nothing here: stage 0, no overrides (its
        state is the one it keeps). The retained emergency that follows the command a
        device already obeyed then only moves the replay guard (agent.runtime)."""
        return self.stage == 0 and not self._overrides

    def check_health_and_rollback(self, report=True):
        """ok with the health figures, or an automatic one-stage rollback with the violations.

        report=False (the agent's own periodic check, which only logs what it did):
        an ok or inconclusive result leaves its figures out ("health": None)."""
        self._refresh_timers()
        now = self.clock.monotonic_ms()
        snapshot = verdict = None
        if not report:
            # Its figures are only read if it finds a problem: without the latencies'
            # sort while no latency rule could fire (agent.health.evaluate on a bound).
            quick = self.health.snapshot(now, False if self._baseline is not None else None)
            verdict = self._verdict(quick)
            if verdict is not None and verdict["verdict"] == health_mod.UNHEALTHY:
                verdict = None  # reported: with the whole figures
            else:
                snapshot = quick
        if verdict is None:
            snapshot = self.health.snapshot(now)
            verdict = self._verdict(snapshot)
        self._note_verdict(now, verdict)
        if verdict["verdict"] == health_mod.INCONCLUSIVE:
            # No evidence either way: nothing is rolled back, and the stage's
            # monitoring time is extended by the time it stayed inconclusive.
            return {"result": "inconclusive", "reason": verdict["reason"],
                    "health": self._health_report(snapshot, verdict) if report else None}
        if verdict["healthy"]:
            self._forgive_proven_stage()
            return {"result": "ok",
                    "health": self._health_report(snapshot, verdict) if report else None}
        report = self._health_report(snapshot, verdict)
        violations = verdict["violations"]
        self.events.emit("health.violation", {"stage": self.stage, "violations": violations})
        if tr.automatic_rollback_target(self.stage) is None:
            # Nothing left to roll back: report it, and let the operator decide.
            return {"result": "unhealthy", "violations": violations, "rolled_back_to": None,
                    "health": report}
        return self._automatic_rollback(violations, report)

    def metrics(self):
        now = self.clock.monotonic_ms()
        snapshot = self.health.snapshot(now)
        out = checks.health_metrics(snapshot, self._verdict(snapshot), self._baseline,
                                    self._baseline_note(), self._last_auto_rollback())
        out.update({
            "stage": self.stage,
            "state": self.state,
            "seq": self.seq,
            "event_handler_errors": self.events.errors,
            "events_emitted": self.events.emitted,
            "flag_unknown_reads": self.flags.unknown_read_total,
            "flag_unknown_names": dict(self.flags.unknown_reads),
            "service_errors": self.service_errors,
            "restart_persist_errors": self.restart_persist_errors,
            "store": self.store.stats(),
        })
        return out

    def start_health_monitoring(self, interval_ms=None):
        """Check health every interval_ms (default: the config's, 30 s) when poll() is called."""
        if interval_ms is None:
            interval_ms = self.config.monitoring_interval_ms
        if type(interval_ms) is not int or interval_ms <= 0:
            raise ControlError(f"interval_ms must be a positive integer, not {interval_ms!r}")
        self._monitor_interval = interval_ms
        self._next_check = self.clock.monotonic_ms() + interval_ms
        return {"result": "ok", "interval_ms": interval_ms, "next_check_ms": self._next_check}

    def stop_health_monitoring(self):
        self._monitor_interval = None
        self._next_check = None

    def poll(self, report=True):
        """Run the health check if it is due; returns its result, or None (report: as
        check_health_and_rollback's)."""
        self._refresh_timers()
        if self._monitor_interval is None:
            return None
        now = self.clock.monotonic_ms()
        if now < self._next_check:
            return None
        self._next_check = now + self._monitor_interval
        return self.check_health_and_rollback(report)

    # -- flags and quarantine ----------------------------------------------

    def set_flag_override(self, name, value, extra_changes=None):
        check_flag_value(name, value)
        overrides = dict(self._overrides)
        overrides[name] = value
        return self._change_overrides(overrides, "flag_override",
                                      "{}={}".format(name, "true" if value else "false"),
                                      extra_changes)

    def clear_flag_override(self, name, extra_changes=None):
        check_flag_value(name, False)
        overrides = dict(self._overrides)
        overrides.pop(name, None)
        return self._change_overrides(overrides, "flag_override_cleared", name, extra_changes)

    def clear_quarantine(self, extra_changes=None):
        self._refresh_timers()
        new_state = tr.next_state(self.state, tr.QuarantineCleared)
        more = {"ctl.quarantine": None, "ctl.auto_rollbacks": {}, "ctl.cooldown_until": None}
        entry = self._entry("quarantine_cleared", self.stage, new_state, "operator")
        self._commit(more, entry, extra_changes, new_state)
        self._quarantine = None
        self._auto_rollbacks = {}
        self._cooldown_until = None
        return self._result(entry)

    # -- what services and apps report ------------------------------------

    def record_outcome(self, ok, latency_ms, service=None, source=None):
        """One call's outcome (ok: True/False; latency_ms: a number or None).

        source (or service): who saw it, e.g. a probe's name; default "app"."""
        name = source if source is not None else service
        checks.check_outcome(ok, latency_ms, name)
        self.health.record_outcome(ok, latency_ms, self.clock.monotonic_ms(), name)

    def record_outcomes(self, calls, errors, latency_ms, source):
        """calls outcomes at once, errors of them failed (a scrape's deltas)."""
        checks.check_outcomes(calls, errors, latency_ms, source)
        self.health.record_outcomes(calls, errors, latency_ms, self.clock.monotonic_ms(), source)

    def set_source_grace(self, source, grace_ms):
        """A source's startup grace (a probe's initial_delay_s): its outcomes are
        ignored for grace_ms from now and again after every stage change."""
        checks.check_grace(grace_ms)
        self.health.set_grace(source, grace_ms, self.clock.monotonic_ms())

    def record_restart(self, name=None):
        """Count a restart; it is committed so a crash loop is seen across reboots."""
        now = self.clock.monotonic_ms()
        wall = self._wall_ms()
        self.health.record_restart(now, name)
        since = wall - self.config.restart_window_ms
        log = []
        for restart in self._restart_log:
            if restart[0] >= since:
                log.append(restart)
        log.append([wall, name])
        log = log[-_MAX_PERSISTED_RESTARTS:]
        try:
            self.store.commit({"health.restarts": log})
        except StoreError:
            # A full or failing flash must not take the supervisor down with it;
            # the in-memory window still counts this restart.
            self.restart_persist_errors += 1
            return
        self._restart_log = log

    def _on_service_restart(self, name, now_ms):
        # The supervisor emits "services.restart" itself; here we only count it.
        self.record_restart(name)

    # -- internals: changing state -----------------------------------------

    def _automatic_rollback(self, violations, report):
        from_stage = self.stage
        to_stage = tr.automatic_rollback_target(from_stage)
        count = self._auto_rollbacks.get(str(from_stage), 0) + 1
        new_state = tr.next_state(self.state,
                                  tr.violation_event(count, self.config.quarantine_after))
        counts = dict(self._auto_rollbacks)
        counts[str(from_stage)] = count
        wall = self._wall_ms()
        cooldown_until = tr.cooldown_deadline(wall, self.config.cooldown_ms)
        quarantine = self._quarantine
        if new_state == QUARANTINED and quarantine is None:
            messages = []
            for violation in violations:
                messages.append(violation["message"])
            quarantine = {"stage": to_stage, "from_stage": from_stage, "since": wall,
                          "rollbacks": count, "reason": "; ".join(messages)}
        more = {"ctl.auto_rollbacks": counts, "ctl.cooldown_until": cooldown_until,
                "ctl.quarantine": quarantine}
        self._change_stage(to_stage, new_state, "auto_rollback", "health", more,
                           violations=violations)
        self._auto_rollbacks = counts
        self._cooldown_until = cooldown_until
        self._quarantine = quarantine
        self.events.emit("migration.rollback", {
            "from": from_stage, "to": to_stage, "reason": "health", "automatic": True,
            "violations": violations, "state": new_state, "seq": self.seq})
        return {"result": "rollback_triggered", "violations": violations,
                "rolled_back_to": to_stage, "state": new_state, "health": report}

    def _forgive_proven_stage(self):
        """Forget earlier automatic rollbacks from this stage once it has held for its
        whole monitoring time: quarantine is for flapping, not for a bad week long ago."""
        key = str(self.stage)
        if self.stage == 0 or key not in self._auto_rollbacks or self.state != AT_STAGE:
            return
        held = self._wall_ms() - (self._stage_entered or 0)
        needed = self.plan.stage(self.stage).monitor_ms + self._extended_ms
        if self._stage_entered is None or held < needed:
            return
        counts = dict(self._auto_rollbacks)
        del counts[key]
        try:
            self._commit({"ctl.auto_rollbacks": counts}, None, None, self.state)
        except StoreError:
            return  # still counted; the next healthy check tries again
        self._auto_rollbacks = counts

    def _change_stage(self, n, new_state, op, reason, more=None, extra_changes=None,
                      overrides=None, violations=None, details=None):
        """Commit one stage change in one store commit, then update memory: to stage n,
        the state after, what the history entry says (op, reason, violations, details),
        the extra store keys of the operation (`more`), the caller's `extra_changes`,
        and the overrides that hold afterwards (None: keep the current ones)."""
        if overrides is None:
            overrides = self._overrides
        stage_flags = self.plan.flags_for_stage(n)
        values = self.flags.preview(stage_flags, overrides)
        wall = self._wall_ms()
        changes = {
            "ctl.stage": n, "ctl.overrides": dict(overrides), "ctl.stage_entered": wall,
            # The new stage starts with a clean health window: restarts and
            # errors of the stage we left must not count against this one.
            "health.restarts": [],
        }
        for name in FLAG_NAMES:
            changes[FLAG_PREFIX + name] = values[name]
        if more:
            changes.update(more)
        entry = self._entry(op, n, new_state, reason)
        if violations:
            entry["violations"] = violations
        if details:
            entry.update(details)
        self._commit(changes, entry, extra_changes, new_state)
        self.stage = n
        self._overrides = dict(overrides)
        self._stage_entered = wall
        self._restart_log = []
        self.health.reset(self.clock.monotonic_ms())
        self._extended_ms = 0
        self._last_verdict = None
        self._last_check = None
        self._apply_flags(stage_flags, overrides)
        return entry

    def _change_overrides(self, overrides, op, reason, extra_changes):
        self._refresh_timers()
        new_state = tr.next_state(self.state, tr.FlagOverrideRequested)
        values = self.flags.preview(None, overrides)
        changes = {"ctl.overrides": dict(overrides)}
        for name in FLAG_NAMES:
            changes[FLAG_PREFIX + name] = values[name]
        entry = self._entry(op, self.stage, new_state, reason)
        self._commit(changes, entry, extra_changes, new_state)
        self._overrides = dict(overrides)
        self._apply_flags(None, overrides)
        return self._result(entry)

    def _entry(self, op, to_stage, new_state, reason):
        return {"seq": self.seq + 1, "at": self._wall_ms(), "op": op, "from": self.stage,
                "to": to_stage, "state": new_state, "reason": reason}

    def _commit(self, changes, entry, extra_changes, new_state):
        """One atomic store commit: changes + state + sequence number + history + extras."""
        batch = {}
        if extra_changes:
            batch.update(checks.check_extra(extra_changes))
        batch.update(changes)
        seq = self.seq + 1
        batch["ctl.seq"] = seq
        batch["ctl.state"] = new_state
        batch["ctl.plan_hash"] = self.plan.hash
        if entry is not None:
            batch.update(self.history.changes_for(seq, entry))
        try:
            self.store.commit(batch)  # raises StoreError; nothing in memory has changed yet
        except StoreError:
            self.reload_if_store_needs_it()
            raise
        self.seq = seq
        self.state = new_state
        if entry is not None:
            self.history.committed(seq, entry)

    def reload_if_store_needs_it(self):
        """The store lost track of whether a failed commit is on flash (fsync failed,
        rollback failed): reopen it and rebuild memory from what it then holds, so
        this control never shows a state that differs from flash. Callers that
        commit to control.store directly call this after a StoreError."""
        if not self.store.needs_reopen:
            return
        try:
            self.store.reopen()
        except StoreError:
            return  # still NEEDS_REOPEN: every commit is refused; tried again next time
        self._restore()
        self._apply_services()

    def _restore(self):
        """Adopt what the store holds (agent.restore reads and validates it). Imported
        here only: a board frees it once the agent runs (agent.boot.BOOT_ONLY_MODULES),
        and a store reopen, the one later caller, loads it again."""
        from agent.restore import flags_to_commit, read_history, read_state

        s = read_state(self.store, self.plan, self.config.restart_window_ms, self._wall_ms(),
                       self.recovered_notes)
        self.seq, self.stage, self.state = s.seq, s.stage, s.state
        self._overrides = s.overrides
        self._cooldown_until = s.cooldown_until
        self._quarantine = s.quarantine
        self._auto_rollbacks = s.auto_rollbacks
        self._baseline = s.baseline
        self._stage_entered = s.stage_entered
        self.history.restore(read_history(self.store.items()))
        self._cap_cooldown()
        self._restart_log = s.restarts
        now, wall = self.clock.monotonic_ms(), self._wall_ms()
        restarts = []  # wall times onto this boot's clock (a loop: no function object kept)
        for wall_ms, name in s.restarts:
            restarts.append((now - (wall - wall_ms), name))
        self.health.load_restarts(restarts)
        self.flags.apply(stage_flags=self.plan.flags_for_stage(self.stage),
                         overrides=self._overrides)
        changes, reason = flags_to_commit(self.store, s.plan_hash, self.plan.hash,
                                          self.flags.values())
        if changes is None:
            return
        entry = None if reason is None else self._entry("plan_changed", self.stage,
                                                        self.state, reason)
        try:
            self._commit(changes, entry, None, self.state)
        except StoreError as exc:
            # Boot anyway with the right flags in memory; every stage or flag change
            # writes all flags again, so the store catches up at the next commit.
            self.recovered_notes.append(f"could not commit the flags in force: {exc}")

    def _apply_flags(self, stage_flags, overrides):
        changes = self.flags.apply(stage_flags=stage_flags, overrides=overrides)
        # Services only move when a flag moved (or an earlier move failed and is retried).
        if changes or self._services_behind:
            self._apply_services()

    def _apply_services(self):
        if self._services is None:  # not made yet: made from the flags when first used
            return
        try:
            self._services.apply_flags()
        except Exception:  # noqa: BLE001 - the flags are committed; a service bug is counted
            self.service_errors += 1
            self._services_behind = True
            return
        self._services_behind = False

    def _refresh_timers(self):
        if self.state != COOLDOWN or self._cooldown_until is None:
            return
        self._cap_cooldown()
        if self._wall_ms() < self._cooldown_until:
            return
        new_state = tr.next_state(self.state, tr.CooldownExpired)
        try:
            self._commit({"ctl.cooldown_until": None}, None, None, new_state)
        except StoreError:
            return  # stay in COOLDOWN (the safe side) and try again on the next call
        self._cooldown_until = None

    def _cap_cooldown(self):
        """A deadline further away than one whole cooldown means the wall clock went
        back (a board without RTC after a reboot, a bad NTP step): clamp it to
        now + cooldown_ms, so the cooldown always ends, and commit the clamp so the
        next boot does not start the count again. If the commit fails the clamp
        holds in memory and is made again on the next read."""
        if self.state != COOLDOWN or self._cooldown_until is None:
            return
        cap = tr.clamp_cooldown(self._cooldown_until, self._wall_ms(), self.config.cooldown_ms)
        if cap == self._cooldown_until:
            return
        try:
            self._commit({"ctl.cooldown_until": cap}, None, None, self.state)
        except StoreError:
            pass
        self._cooldown_until = cap

    # -- internals: reading ------------------------------------------------

    def _wall_ms(self):
        return int(self.clock.wall_time() * 1000)

    def _verdict(self, snapshot):
        """evaluate() on `snapshot` with this stage's thresholds, baseline and criteria
        (None for a snapshot(now, latency=False) when a latency rule could fire)."""
        criteria = self.plan.stage(self.stage).success_criteria if self.stage else None
        return health_mod.evaluate(snapshot, self.config.thresholds, self._baseline, criteria)

    def _health_report(self, snapshot, verdict):
        return checks.health_report(snapshot, verdict, self._baseline, self._baseline_note())

    def _last_auto_rollback(self):
        return checks.last_auto_rollback(self.history.entries())

    def _note_verdict(self, now, verdict):
        if verdict["verdict"] == health_mod.INCONCLUSIVE and self._last_check is not None:
            self._extended_ms += now - self._last_check
        self._last_check = now
        self._last_verdict = {"verdict": verdict["verdict"], "reason": verdict["reason"]}

    def _monitoring_info(self):
        monitor_ms = self.plan.stage(self.stage).monitor_ms if self.stage else None
        return checks.monitoring_info(self._monitor_interval, self._next_check,
                                      self._extended_ms, monitor_ms, self._last_verdict)

    def _system_health(self, now):
        snapshot = self.health.snapshot(now)
        return self._health_report(snapshot, self._verdict(snapshot))

    def _baseline_note(self):
        return checks.baseline_note(self._baseline, self.stage,
                                    self.config.thresholds["min_samples"])

    def _cooldown_info(self):
        if self.state != COOLDOWN or self._cooldown_until is None:
            return None
        remaining = tr.cooldown_remaining_ms(self._cooldown_until, self._wall_ms(),
                                             self.config.cooldown_ms)
        return {"until": self._cooldown_until, "remaining_ms": remaining}

    def _result(self, entry):
        return checks.operation_result(entry, self.stage, self.state, self.seq,
                                       self.flags.values())
