"""AgentRuntime: MigrationControl + protocol + a link + a clock, as one device on the wire.

Owns: what the agent does with each inbound message (decode, verify, replay
guard, control op, ack, status), converging to the retained desired state,
periodic health reports, the automatic-rollback poll, reports held while the
broker is away (agent.report_queue decides what a full queue gives up), and
the console hold after a local emergency rollback.

Must never: import a transport (the link is handed in: paho on CPython, a
umqtt link on a board), block, or die on bad input. Anything a message can
cause is caught here, counted, and answered with a reason code; a failed store
commit leaves the device at its last committed state.

The link contract (duck-typed):
    link.connected                     bool
    link.set_callbacks(on_message, on_connect, on_disconnect)
    link.subscribe(topic, qos)         remembered and re-sent on every reconnect
    link.publish(topic, payload, qos, retain)   raises when it cannot send
    link.poll(timeout_ms)              (only for run()) drive I/O, call callbacks
    link.set_will(topic, payload, qos, retain)   (agent.boot, before start) the last will
    on_message(topic, payload=None)    a message the link read past, too large to hold
Callbacks run inside the link's I/O call, so a QoS 1 command is acknowledged
to the broker only after its store commit: a crash before that means redelivery.
"""
from agent import VERSION
from agent import desired as D
from agent import protocol as P
from agent.control import ControlError
from agent.errors import AgentError
from agent.report_queue import ReportQueue
from agent.store import StoreError

DESIRED_RETRY_MS = D.RETRY_MS
# The console hold: committed with a console (local) emergency rollback. While it
# is set, EVERY desired state is ignored (logged and counted), and only an explicit
# signed command lifts it (in the same commit as that command). It cannot be a
# time: desired-state seqs are the operator's wall clock, and the gateway's may be
# off by minutes or, on a board without an RTC, by decades.
KEY_LOCAL_HOLD = "rt.local_hold"


class AgentRuntime:
    def __init__(self, control, link, fleet, device_id, groups=(), key=None, clock=None,
                 insecure=False, queue_limit=256, health_interval_ms=30000,
                 status_interval_ms=60000, monitor_interval_ms=None, log=None, hw=None,
                 memory=None):
        self.control = control
        self.link = link
        self.fleet = P.validate_id(fleet, "fleet")
        self.device_id = P.validate_id(device_id)
        self.groups = sorted(groups)
        self.hw = hw  # hardware revision (agent config `hw`): rollouts group failures by it
        self.key = key
        self.clock = clock or control.clock
        self.insecure = insecure
        self.queue = ReportQueue(queue_limit)
        self.health_interval_ms = health_interval_ms
        self.status_interval_ms = status_interval_ms
        self.monitor_interval_ms = monitor_interval_ms
        self.log = log or _quiet
        # () -> {name: bytes} for status and health (firmware_shim.machine.memory)
        self.memory = memory
        self.guard = P.ReplayGuard.from_store(control.store)
        self._local_hold = control.store.get(KEY_LOCAL_HOLD)
        self.counters = {"messages": 0, "applied": 0, "duplicate": 0, "rejected": 0,
                         "errors": 0, "published": 0, "queued": 0, "reconnects": 0,
                         "desired_held": 0}
        self._started_ms = self.clock.monotonic_ms()
        self._next_health = self._started_ms + health_interval_ms
        self._next_status = self._started_ms + status_interval_ms
        self._desired_inbox = {}  # topic -> payload, arrived since the last tick
        self.desired = D.Convergence()  # the desired-state table (agent.desired)
        self._topics = {}
        self._events = []
        self._status_dirty = False
        self.last_error = None
        self.stopping = False

    # -- life cycle --------------------------------------------------------
    def start(self):
        if self.key is None and not self.insecure:
            raise ControlError("no key: commands cannot be verified (set insecure only for dev)")
        if self.insecure:
            self.log("WARNING: insecure mode: unsigned commands are accepted")
        self.link.set_callbacks(self.on_message, self.on_connect, self.on_disconnect)
        for topic, qos in P.subscriptions(self.fleet, self.device_id, self.groups):
            self.link.subscribe(topic, qos)
        for leaf in P.DEVICE_LEAVES:
            self._topics[leaf] = P.device_topic(self.fleet, self.device_id, leaf)
        self.control.events.subscribe("*", self._on_event)
        if self.monitor_interval_ms is not None:
            self.control.start_health_monitoring(self.monitor_interval_ms)
        if getattr(self.link, "connected", False):
            self.on_connect()

    def will(self):
        """(topic, payload) the link registers as its last will: marks the device offline."""
        return will_message(self.fleet, self.device_id, self.groups, self.key,
                            self.guard.last_seq, self.hw)

    def run(self, poll_ms=100, extra_poll=None):
        """Blocking loop for a single agent (the Pi, a board); `stopping` ends it.

        extra_poll() runs once per turn: a board feeds its watchdog there
        (firmware_shim.board), so a loop that hangs in the link, a handler or
        the store stops feeding it and the board resets.
        """
        while not self.stopping:
            try:
                self.link.poll(poll_ms)
            except Exception as exc:  # the link's own trouble: it reconnects by itself
                self._count_error("link", exc)
            if extra_poll is not None:
                try:
                    extra_poll()
                except Exception as exc:  # e.g. the local console ran out of descriptors
                    self._count_error("extra poll", exc)
            self.tick()

    def serve(self, poll_ms=100, extra_poll=None):
        """A board's whole life once agent.boot.start returned: run(), then close()."""
        try:
            self.run(poll_ms, extra_poll)
        finally:
            self.close()
        return 0

    def close(self):
        """Close the link, then the store (the agent is done)."""
        try:
            self.link.close()
        finally:
            self.control.close()

    # -- link callbacks ----------------------------------------------------
    def on_connect(self):
        self.counters["reconnects"] += 1
        self.log("connected to broker")
        # What waited goes first, in order; then the fresh status, which a queue
        # full of acks and events would otherwise give up at once.
        self._flush()
        self.flush_reports()
        self.publish_status()

    def on_disconnect(self, why=None):
        if self.stopping:  # our own DISCONNECT at shutdown: nothing was lost
            self.log("disconnected from broker")
            return
        self.log(f"broker link lost ({why}); running on local flags")
        self.refresh_will()

    def refresh_will(self):
        """Give the link a will with the guard's seq as it is NOW; the broker takes it at
        the next CONNECT (a link without set_will keeps the one it started with)."""
        set_will = getattr(self.link, "set_will", None)
        if set_will is None:
            return
        try:
            topic, payload = self.will()
            set_will(topic, payload, 1, True)
        except Exception as exc:  # a will is a courtesy: never stop the loop for it
            self._count_error("will", exc)

    def on_message(self, topic, payload, retain=False):
        """Never raises: every failure becomes an ack with a reason code or a counted error."""
        self.counters["messages"] += 1
        try:
            _fleet, channel, target, _leaf = P.parse_topic(topic)
        except P.ProtocolError as exc:  # not one of ours (a broker or ACL mistake): ignore
            self.counters["ignored"] = self.counters.get("ignored", 0) + 1
            self.log(f"ignored message on {topic[:80]!r}: {exc}")
            return
        try:
            if payload is None:  # the link skipped a message too large for this device
                self._ack(None, P.REJECTED, P.MALFORMED, "message too large for this device")
            elif channel == P.KIND_CMD:
                self._handle_command(payload, target.startswith("bucket:"))
            elif channel == P.KIND_DESIRED:
                if payload:  # an empty retained payload clears the desired state
                    self._desired_inbox[topic] = payload
        except Exception as exc:  # a bug or a broken store: keep running, report it
            self._count_error("message", exc)

    # -- commands ----------------------------------------------------------
    def _decode(self, payload, decoder):
        return decoder(payload, self.key, self.device_id, self.groups,
                       plan_hash=self.control.plan.hash, max_stage=self.control.plan.max_stage,
                       insecure=self.insecure, fleet=self.fleet)

    def _handle_command(self, payload, bucket):
        try:
            cmd = self._decode(payload, P.decode_command)
            if self.guard.check(cmd) == P.DUPLICATE:
                self._ack(cmd.id, P.DUPLICATE, seq=cmd.seq)
                return
        except P.CommandRejected as exc:
            if bucket and exc.detail == P.NOT_SIGNED_FOR_DEVICE:
                # A bucket command carries only the MACs of the devices it moves; the
                # rest of the bucket hears it too and is not named: nothing to answer.
                self.counters["not_for_us"] = self.counters.get("not_for_us", 0) + 1
                return
            self._ack(exc.command_id, P.REJECTED, exc.reason, exc.detail)
            return
        detail = already_there(cmd.op, cmd.args, self.control.stage)
        if detail is not None:  # converged already (e.g. by a desired state): a no-op
            self._apply(cmd, D.GUARD_ONLY, {}, detail=detail)
        else:
            self._apply(cmd, cmd.op, cmd.args)

    def _apply(self, msg, op, args, ack_refusal=True, detail=None):
        """Run one op with the guard's record in the same commit; ack the outcome."""
        record = self.guard.record(msg)
        changes = dict(record)
        if self._local_hold is not None:
            changes[KEY_LOCAL_HOLD] = None  # the operator has spoken since the console
        try:
            self._dispatch(op, args, changes)
        except AgentError as exc:  # refused: the error says how to answer
            if isinstance(exc, StoreError):
                self._resync_with_flash()
            if ack_refusal:
                self._refused(msg, *refusal_of(exc))
            return False
        self.guard.commit(record, self.control.store.peek)
        self._local_hold = None
        self._ack(msg.id, P.APPLIED, detail=detail, seq=msg.seq)
        self._status_dirty = True
        return True

    def _resync_with_flash(self):
        """After a failed commit whose fate on flash is unknown, believe only flash."""
        try:
            self.control.reload_if_store_needs_it()
            self.guard = P.ReplayGuard.from_store(self.control.store)
        except Exception as exc:  # still unreadable: every commit stays refused, retried later
            self._count_error("resync", exc)

    def _refused(self, msg, reason, detail):
        self._ack(msg.id, P.REJECTED, reason, detail, seq=msg.seq)
        return False

    def _dispatch(self, op, args, record):
        if op == D.GUARD_ONLY:  # already there: only the guard moves on
            self.control.store.commit(record)
        elif op in P.CONTROL_OPS:  # the protocol's one table: op -> control operation
            P.dispatch(self.control, op, args, record)
        else:  # decode_command already refused unknown ops; keep the table honest
            raise ControlError(f"unknown op {op!r}")

    # -- desired state -----------------------------------------------------
    def _take_desired(self):
        """Decode what arrived on desired topics since the last tick; pick the winner."""
        inbox, self._desired_inbox = self._desired_inbox, {}
        states = []
        for topic in sorted(inbox):
            try:
                state = self._decode(inbox[topic], P.decode_desired)
                if self.guard.check(state) == P.DUPLICATE:
                    continue  # already applied: a retained copy seen again on reconnect
                if self._local_hold is not None:
                    self.counters["desired_held"] += 1
                    self._status_dirty = True  # the status shows the operator why
                    self.log(f"desired state {state.id} (stage {state.stage}) ignored: held "
                             "since the console emergency rollback, until a command")
                    continue
            except P.CommandRejected as exc:
                if exc.reason == P.STALE_SEQUENCE:
                    continue  # an old retained state, overtaken: normal after a reconnect
                if exc.reason == P.BAD_SIGNATURE and exc.detail == P.NOT_SIGNED_FOR_DEVICE:
                    # The operator left us out (we refused the command): not ours to apply.
                    self.log(f"desired state {exc.command_id} is not signed for this device")
                    continue
                self._ack(exc.command_id, P.REJECTED, exc.reason, exc.detail)
                continue
            states.append(state)
        return P.pick_desired(states)

    def _converge(self, state, ack_refusal):
        """Step toward state.stage: forward one stage at a time, rollbacks straight."""
        c = self.control
        action = state.action(c.stage)
        if action is not None and action[0] == P.OP_EMERGENCY_ROLLBACK and \
                c.at_emergency_target():
            action = None  # already obeyed (the command before it): no second event
        op, args = action if action is not None else (D.GUARD_ONLY, {})
        if op == P.OP_MIGRATE:
            while c.stage + 1 < state.stage:
                try:
                    c.migrate_to_stage(c.stage + 1)  # intermediate: no guard record
                except AgentError as exc:
                    if ack_refusal:
                        self._refused(state, *refusal_of(exc))
                    return False
                self._status_dirty = True
        return self._apply(state, op, args, ack_refusal=ack_refusal)

    def _handle_desired(self, now):
        """One step of agent.desired's table: a new winner, or the pending one's retry."""
        d = self.desired
        state = self._take_desired() if self._desired_inbox else None
        if state is not None:
            self._try_desired(state, D.Arrived, now)
        elif d.retry_due(now):
            try:
                fresh = self.guard.check(d.pending) == P.NEW
            except P.CommandRejected:
                fresh = False  # overtaken by a later command
            if self._local_hold is not None:
                fresh = False  # held since the console (it also dropped what was pending)
            if fresh:
                self._try_desired(d.pending, D.RetryDue, now)
            else:
                d.move(D.Overtaken)

    def _try_desired(self, state, event, now):
        self.desired.move(event, state)
        try:
            reached = self._converge(state, D.ACKS_REFUSAL[event])
        except BaseException:
            self.desired.move(D.Failed)  # tick() counts the error
            raise
        self.desired.move(D.Reached if reached else D.Refused, now=now)

    # -- periodic work -----------------------------------------------------
    def tick(self):
        """Call every ~100 ms: desired state, health check / rollback, reports, queue."""
        now = self.clock.monotonic_ms()
        try:
            self._handle_desired(now)
        except Exception as exc:
            self._count_error("desired", exc)
        try:
            result = self.control.poll(report=False)  # it only logs what the check did
            quiet = ("ok", "unhealthy", "inconclusive")
            if result is not None and result.get("result") not in quiet:
                self.log(_health_line(result))
                self._status_dirty = True
        except Exception as exc:  # a store error during an automatic rollback
            self._count_error("health", exc)
        if now >= self._next_health:
            self._next_health = now + self.health_interval_ms
            self.publish_health()
        if now >= self._next_status:
            self._next_status = now + self.status_interval_ms
            self._status_dirty = True
        self.flush_reports()
        if self.queue.items and getattr(self.link, "connected", False):
            self._flush()

    # -- reports -----------------------------------------------------------
    def _ack(self, command_id, result, reason=None, detail=None, seq=None):
        self.counters[result] = self.counters.get(result, 0) + 1
        if result == P.REJECTED:
            self.log(f"rejected {command_id}: {reason} {detail}")
        payload = P.encode_ack(command_id, result, reason, detail, state=self.control.state,
                               device_id=self.device_id, seq=seq, key=self.key,
                               now=self._now(), fleet=self.fleet)
        self._send(self._topics["ack"], payload, 1, False)

    def status_payload(self, online=True):
        memory = self.memory_report()  # first: what the agent holds, not this report's parts
        c = self.control
        summary, quarantined = c.report_status()
        flags = c.flags.values()
        flag_sources = {}
        for name in flags:
            flag_sources[name] = c.flags.source(name)
        return P.encode_status(
            self.device_id, c.stage, flags, health=summary, plan_hash=c.plan.hash,
            agent_version=VERSION, uptime_s=self.uptime_s(), online=online, groups=self.groups,
            quarantined=quarantined, hw=self.hw,
            extra={"state": c.state, "seq": c.seq, "guard_seq": self.guard.last_seq,
                   "queue_dropped": self.queue.dropped,
                   "queue_dropped_by_kind": dict(self.queue.dropped_by_kind),
                   "console_hold": self._local_hold is not None,
                   "desired_held": self.counters["desired_held"],
                   "flag_sources": flag_sources,
                   "memory": memory},
            key=self.key, now=self._now(), fleet=self.fleet)

    def memory_report(self):
        """heap_free/heap_alloc on a board, rss on a Pi (bytes); {} when not wired."""
        if self.memory is None:
            return {}
        try:
            return dict(self.memory())
        except Exception as exc:  # a report must go out even if the platform cannot say
            self._count_error("memory", exc)
            return {}

    def publish_status(self):
        self._status_dirty = False
        self._send(self._topics["status"], self.status_payload(), 1, True)

    def publish_health(self):
        try:
            metrics = self.control.metrics()
            metrics["runtime"] = dict(self.counters)
            metrics["runtime"]["queue_len"] = len(self.queue)
            metrics["runtime"]["queue_dropped"] = self.queue.dropped
            metrics["runtime"]["queue_dropped_by_kind"] = dict(self.queue.dropped_by_kind)
            metrics["memory"] = self.memory_report()
            payload = P.encode_health(self.device_id, metrics, key=self.key, now=self._now(),
                                      fleet=self.fleet)
        except Exception as exc:
            self._count_error("health report", exc)
            return
        self._send(self._topics["health"], payload, 0, False)

    def _on_event(self, name, payload):
        # Held until the ack is out (acks are what the operator waits on); the
        # next tick or flush_reports() sends them, in order, within ~100 ms.
        self._events.append((name, payload, self._now()))

    def flush_reports(self):
        """Send the events held since the last flush, then the status if it changed."""
        events, self._events = self._events, []
        for name, payload, at in events:
            try:
                data = P.encode_event(self.device_id, name, payload, key=self.key, now=at,
                                      fleet=self.fleet)
            except Exception as exc:  # an event payload the codec cannot carry
                self._count_error("event", exc)
                continue
            self._send(self._topics["event"], data, 1, False)
        if self._status_dirty:
            self.publish_status()

    def _send(self, topic, payload, qos, retain):
        if getattr(self.link, "connected", False) and not self.queue.items:
            try:
                self.link.publish(topic, payload, qos, retain)
                self.counters["published"] += 1
                return
            except Exception as exc:  # the link went down under us: keep the report
                self.last_error = exc
        self.counters["queued"] += 1
        self.queue.push(topic, payload, qos, retain)

    def _flush(self):
        while self.queue.items and getattr(self.link, "connected", False):
            topic, payload, qos, retain = self.queue.first()
            try:
                self.link.publish(topic, payload, qos, retain)
            except Exception as exc:
                self.last_error = exc
                return
            self.queue.pop_first()
            self.counters["published"] += 1

    # -- helpers -----------------------------------------------------------
    def uptime_s(self):
        return (self.clock.monotonic_ms() - self._started_ms) // 1000

    def _now(self):
        return int(self.clock.wall_time() * 1000)

    def _count_error(self, where, exc):
        self.counters["errors"] += 1
        self.last_error = exc
        self.log(f"error in {where}: {exc.__class__.__name__}: {exc}")

    def local_emergency_rollback(self, reason):
        """The console path (no broker needed): no command, so no guard record, but
        the hold, in the same commit, so it also survives a reboot."""
        changes = local_hold_changes(self.clock, reason)
        result = self.control.emergency_rollback("local: " + reason, extra_changes=changes)
        self._local_hold = changes[KEY_LOCAL_HOLD]
        if self.desired.state == D.WAITING:
            self.desired.move(D.Overtaken)
        self._status_dirty = True
        self.flush_reports()
        return result


def local_hold_changes(clock, reason=None):
    """Store changes a console emergency rollback commits with its stage change.

    Only the key's presence matters; the wall time and reason are for people.
    """
    return {KEY_LOCAL_HOLD: {"at": int(clock.wall_time() * 1000), "reason": reason}}


def already_there(op, args, stage):
    """Ack detail when a migrate/rollback command asks for what the device already
    is (an applied no-op), else None.

    A device may get there first by a retained desired state, and the operator's
    retry must not see it refused. MigrationControl refuses these on purpose (a
    direct caller asked for a change that cannot happen); the wire decides here.
    A rollback to N from below N must not migrate up: that is "already below".
    """
    if op not in (P.OP_MIGRATE, P.OP_ROLLBACK):
        return None
    target = args["stage"]
    if target == stage:
        return f"already at stage {target}"
    if op == P.OP_ROLLBACK and stage < target:
        return f"already below stage {target}"
    return None


def will_message(fleet, device_id, groups, key, guard_seq=None, hw=None):
    """The last will: offline, stage unknown, but WITH the groups and the guard's seq.

    The operator signs a group broadcast for the devices it knows to be in the
    group, from their retained status; a will without groups would drop an
    offline device from the group, and it could not converge from the retained
    desired state when it comes back. The guard's sequence number (as of
    connecting) lets an operator whose clock is behind still pick a seq the
    device will accept.
    """
    topic = P.device_topic(fleet, device_id, "status")
    extra = None if guard_seq is None else {"guard_seq": guard_seq}
    return topic, P.encode_status(device_id, None, None, online=False,
                                  groups=sorted(groups), extra=extra, key=key, hw=hw,
                                  fleet=fleet)


def refusal_of(exc):
    """(reason code, detail) for an AgentError a control operation raised (agent.errors)."""
    return exc.refusal, exc.refusal_detail()


def _quiet(msg):
    return None


def _health_line(result):
    """The log line for what a health check did: the rollback's target and each
    violation's message, so the journal says which source crossed which limit."""
    line = "health: {}".format(result.get("result"))
    if result.get("rolled_back_to") is not None:
        line += " to stage {}".format(result["rolled_back_to"])
    messages = []
    for violation in result.get("violations") or ():
        if violation.get("message"):
            messages.append(violation.get("message"))
    if messages:
        line += ": " + "; ".join(messages)
    return line
