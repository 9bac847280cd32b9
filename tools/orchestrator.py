"""The rollout orchestrator core: one state machine, no I/O, for `rollout` and the simulator.

What goes in: acks, statuses, events, operator commands seen on the wire, and
the time (seconds, any clock: wall for `fleetstage rollout`, virtual for the
simulator). What comes out: decisions. The driver does the I/O.

    from tools.orchestrator import Orchestrator, RolloutSpec, Send, Retain, Wait, Notice, Finished
    from tools.waves import DeviceInfo, parse_waves, parse_threshold

    spec = RolloutSpec(to_stage=4, waves=parse_waves("group:canary,10%,50%,100%"),
                       soak_s={1: 1800, 2: 7200, 3: 14400, 4: 86400},   # soak_from_plan(plan)
                       ack_timeout_s=60, success=0.95, error=parse_threshold("5%"),
                       on_failure="rollback")          # or "pause"
    orch = Orchestrator(spec, {"gw-1": DeviceInfo(groups=("canary",), hw="rev-b",
                                                  online=True, stage=0), ...})
    # or Orchestrator(spec, devices, state=saved) to resume (state from orch.state())
    while orch.outcome is None:
        for d in orch.step(now):
            Send(key, op, args, devices, command_id, seq, issued_at)
                sign `op args` for `devices` and publish it (QoS 1). When command_id
                is set, reuse it with that seq and issued_at (a resend after a
                restart: devices that had it ack `duplicate`, nothing applies twice).
                Before publishing: orch.sent(key, command_id, seq, issued_at, now),
                then persist orch.state() -- a restart then resends, never re-issues.
            Retain(key, stage, devices, ...)  the same for a retained desired state
                (devices: who should be at `stage` from now on); also call sent().
            Wait(until)      nothing to do before `until` unless an input arrives
            Notice(kind, text, data)   tell the operator (offline devices, wave start...)
            Finished(outcome, reason, blamed)  outcome: completed|halted|paused|preempted
        feed what arrives: orch.on_ack(device, ack, now)   ack: the verified ack body
                           orch.on_status(device, status, now)
                           orch.on_event(device, name, payload, now)
                           orch.on_command(command_id, seq, op, devices, now)
                               (any signed operator command or desired state seen on
                               the fleet's cmd/desired topics)
    orch.results: [WaveResult]   (tools.waves; .to_dict() for JSON and reports)
    orch.progress(now) -> dict   the live view: wave, phase, acks, soak left, health, failing
    orch.resume_paused()         after Finished(paused): the operator accepts that wave
    orch.state() -> dict         JSON-able; small (no per-device acks), safe to commit often

Rules it keeps (issue 7 items 3-5, issue 10):
- Emergency rollback always wins: an emergency-rollback event from any of its
  devices, or an ack/command of any operator command it did not issue with a
  seq above its first one, preempts the rollout at once: no further Send or
  Retain, outcome "preempted", and the wave in progress is not judged.
- A wave is judged on this rollout's own acks (ids it issued). A device whose
  ack was lost counts as applied only if its status shows the stage with a
  guard seq at or above the command's. Silent past ack_timeout_s is a failure.
- Waves end early when the error threshold is already exceeded.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from tools import waves as W
from tools.waves import DeviceInfo, Threshold, WaveResult, WaveSpec

STATE_VERSION = 1
EMERGENCY_EVENT = "migration.emergency_rollback"
ROLLBACK_EVENT = "migration.rollback"
STATUS_KEPT = ("stage", "online")  # of a status, what the judging reads (and "health")
ACK_KEPT = ("result", "reason")
HEALTH_KEPT = ("samples", "error_rate", "latency_p50", "latency_p95", "performance_impact")

# phases of the cursor (stage, wave): a table of what each waits for
SEND, ACKS, RETAIN, SOAK = "send", "acks", "retain", "soak"
RB_SEND, RB_ACKS, RB_RETAIN = "rollback_send", "rollback_acks", "rollback_retain"
DONE = "done"
COMPLETED, HALTED, PAUSED, PREEMPTED, ABORTED = (
    "completed", "halted", "paused", "preempted", "aborted")
NEXT_PHASE = {SEND: ACKS, ACKS: RETAIN, RETAIN: SOAK,
              RB_SEND: RB_ACKS, RB_ACKS: RB_RETAIN, RB_RETAIN: DONE}


@dataclass
class RolloutSpec:
    to_stage: int
    waves: list[WaveSpec] = field(default_factory=lambda: W.parse_waves(W.DEFAULT_WAVES))
    soak_s: dict[int, float] = field(default_factory=dict)   # stage -> seconds (default 0)
    ack_timeout_s: float = 60.0
    success: float = 0.95
    error: Threshold = field(default_factory=lambda: Threshold(0.05))
    on_failure: str = "rollback"
    seed: str = "fleetstage"

    def fingerprint(self) -> dict:
        """What a saved state must match to be resumed (see Orchestrator.mismatch)."""
        return {"to_stage": self.to_stage, "waves": [w.label for w in self.waves]}


def soak_from_plan(plan, scale: float = 1.0, fixed: float | None = None) -> dict[int, float]:
    """stage -> monitoring seconds: the plan's monitor_minutes x scale, or `fixed` for all."""
    out = {}
    for n in range(1, plan.max_stage + 1):
        out[n] = fixed if fixed is not None else plan.stage(n).monitor_minutes * 60 * scale
    return out


@dataclass(frozen=True)
class Send:
    key: str
    op: str
    args: dict
    devices: list[str]
    command_id: str | None = None
    seq: int | None = None
    issued_at: int | None = None


@dataclass(frozen=True)
class Retain:
    key: str
    stage: int
    devices: list[str]
    command_id: str | None = None
    seq: int | None = None
    issued_at: int | None = None


@dataclass(frozen=True)
class Wait:
    until: float


@dataclass(frozen=True)
class Notice:
    kind: str          # offline | wave | result | halt | rollback | preempted | resume
    text: str
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Finished:
    outcome: str
    reason: str
    blamed: dict | None = None


class Orchestrator:
    def __init__(self, spec: RolloutSpec, devices: Mapping[str, DeviceInfo],
                 state: dict | None = None) -> None:
        self.spec = spec
        self.devices = dict(devices)
        # device -> what it judges of the device's latest status (STATUS_KEPT, the
        # health figures of HEALTH_KEPT and extra.guard_seq as "guard_seq"): at 10^6
        # devices a whole decoded status each would be ~12 GB
        self.status: dict[str, dict] = {}
        self.acks: dict[str, dict[str, dict]] = {}      # command key -> device -> ack
        self.auto_rollbacks: dict[str, tuple[int, str]] = {}  # device -> (from stage, why)
        self.results: list[WaveResult] = []
        self.outcome: str | None = None
        self.reason = ""
        self._finished: Finished | None = None
        self._pending: list = []          # decisions produced by inputs (preemption)
        self._outbox_key: str | None = None
        if state is None:
            W.check_groups(spec.waves, self.devices)  # WaveError: a group no device is in
            self.waves = W.plan_waves(spec.waves, self.devices, spec.seed)
            known = [i.stage for i in self.devices.values() if i.stage is not None]
            self.from_stage = (min(known) if known else 0) + 1
            self.stage, self.wave, self.phase = self.from_stage, 0, SEND
            self.commands: dict[str, dict] = {}      # key -> {id, seq, issued_at, at}
            self.deadline = 0.0
            self.reached: list[str] = []
            self._started = False
            if self.from_stage > spec.to_stage:
                self._finish(COMPLETED, "every device is at stage %d or above" % spec.to_stage)
            else:
                self._skip_empty()
        else:
            self._restore(state)

    # ------------------------------------------------------------ persistence
    def state(self) -> dict:
        return {"v": STATE_VERSION, "spec": self.spec.fingerprint(),
                "fleet": fleet_digest(self.devices), "devices": len(self.devices),
                "from_stage": self.from_stage, "stage": self.stage, "wave": self.wave,
                "phase": self.phase, "commands": self.commands, "deadline": self.deadline,
                "reached": self.reached, "results": [r.to_dict() for r in self.results],
                "outcome": self.outcome, "reason": self.reason}

    @staticmethod
    def mismatch(spec: RolloutSpec, devices: Mapping[str, DeviceInfo], state: dict) -> str | None:
        """Why a saved state cannot be resumed with this spec and fleet, or None."""
        if state.get("v") != STATE_VERSION:
            return "it was written by another version of fleetstage"
        saved = state.get("spec") or {}
        if saved.get("to_stage") != spec.to_stage:
            return "it is a rollout to stage %s, not --to-stage %d" % (
                saved.get("to_stage"), spec.to_stage)
        if saved.get("waves") != [w.label for w in spec.waves]:
            return "it has waves %s, not --waves %s" % (
                ",".join(saved.get("waves") or []), ",".join(w.label for w in spec.waves))
        if state.get("fleet") != fleet_digest(devices):
            return ("the fleet changed since it began (it had %s devices, now %d, or their "
                    "groups moved)" % (state.get("devices"), len(devices)))
        return None

    def _restore(self, st: dict) -> None:
        self.waves = W.plan_waves(self.spec.waves, self.devices, self.spec.seed)
        self.from_stage, self.stage, self.wave = st["from_stage"], st["stage"], st["wave"]
        self.phase = st["phase"]
        self.commands = {k: dict(v) for k, v in st["commands"].items()}
        self.deadline = st["deadline"]
        self.reached = list(st["reached"])
        self.results = [_result_from_dict(r) for r in st.get("results", [])]
        self.outcome, self.reason = st.get("outcome"), st.get("reason", "")
        self._started = True
        # Acks are not kept: a phase that waited on them sends the same command again
        # (same id, seq and bytes), and devices that had it answer `duplicate`.
        self.phase = {ACKS: SEND, RB_ACKS: RB_SEND}.get(self.phase, self.phase)
        if self.outcome is not None:
            self._finished = Finished(self.outcome, self.reason, self._blamed())

    # ------------------------------------------------------------ inputs
    def _ours(self) -> dict[str, str]:
        return {c["id"]: k for k, c in self.commands.items()}

    def _first_seq(self) -> int | None:
        seqs = [c["seq"] for c in self.commands.values() if c.get("seq") is not None]
        return min(seqs) if seqs else None

    def on_ack(self, device: str, ack: Mapping, now: float) -> None:
        key = self._ours().get(ack.get("id"))  # type: ignore[arg-type]
        if key is None:
            seq = ack.get("seq")
            if (ack.get("result") == "applied" and isinstance(seq, int) and device in
                    self.devices and self._newer(seq)):
                self._preempt("%s applied operator command %s (seq %d), which this rollout "
                              "did not send" % (device, ack.get("id"), seq), now)
            return
        got = self.acks.setdefault(key, {})
        if device not in got:  # the first counts (QoS 1 may repeat it); what judging reads
            got[device] = {k: ack[k] for k in ACK_KEPT if k in ack}

    def on_status(self, device: str, status: Mapping, now: float) -> None:
        kept = self.status.get(device)
        if kept is None:
            kept = self.status[device] = {}
        for k in STATUS_KEPT:
            if k in status:
                kept[k] = status[k]
        health = status.get("health")
        if isinstance(health, Mapping):
            kept["health"] = {k: health[k] for k in HEALTH_KEPT if k in health}
        extra = status.get("extra")
        if isinstance(extra, Mapping) and "guard_seq" in extra:
            kept["guard_seq"] = extra["guard_seq"]

    def on_event(self, device: str, name: str, payload: Mapping, now: float) -> None:
        if device not in self.devices:
            return
        if name == EMERGENCY_EVENT:
            why = payload.get("reason") if isinstance(payload, Mapping) else None
            self._preempt("%s made an emergency rollback (%s)" % (device, why or "no reason"),
                          now)
        elif name == ROLLBACK_EVENT and isinstance(payload, Mapping) and payload.get("automatic"):
            violations = payload.get("violations") or []
            metrics = sorted({v.get("metric", "?") for v in violations if isinstance(v, dict)})
            reason = "health:" + "+".join(metrics) if metrics else "health"
            frm = payload.get("from")
            self.auto_rollbacks[device] = (frm if isinstance(frm, int) else -1, reason)

    def on_command(self, command_id: str, seq: int, op: str, devices: list[str],
                   now: float) -> None:
        if command_id in self._ours() or not self._newer(seq):
            return
        if any(d in self.devices for d in devices):
            self._preempt("another operator command %s (%s, seq %d) addresses this rollout's "
                          "devices" % (command_id, op, seq), now)

    def _newer(self, seq: int) -> bool:
        first = self._first_seq()
        return first is not None and seq > first

    def _preempt(self, why: str, now: float) -> None:
        if self.outcome is not None:
            return
        self._pending.append(Notice("preempted", "STOP: " + why + "; this rollout raises "
                                    "no device again", {"reason": why}))
        self._finish(PREEMPTED, why)

    def sent(self, key: str, command_id: str, seq: int, issued_at: int, now: float) -> None:
        """The driver is about to publish decision `key` with these values."""
        self.commands[key] = {"id": command_id, "seq": seq, "issued_at": issued_at, "at": now}
        if self._outbox_key == key:
            self._outbox_key = None
            self.phase = NEXT_PHASE[self.phase]
            if self.phase in (ACKS, RB_ACKS):
                self.deadline = now + self.spec.ack_timeout_s
            elif self.phase == SOAK:
                self.deadline = now + self.spec.soak_s.get(self.stage, 0.0)
            elif self.phase == DONE:
                self._finish(HALTED, self.reason)

    def resume_paused(self) -> None:
        if self.outcome != PAUSED:
            return
        self.outcome, self.reason, self._finished = None, "", None
        self._pending.append(Notice("resume", "resuming after the paused stage %d wave %d" % (
            self.stage, self.wave + 1)))
        self._advance()

    # ------------------------------------------------------------ the machine
    def step(self, now: float) -> list:
        out, self._pending = self._pending, []
        if not self._started:
            self._started = True
            out.extend(self._offline_notice())
        if self._finished is not None:
            return out + [self._finished]
        if self._outbox_key is not None:
            return out  # a decision handed out waits for sent()
        handler = getattr(self, "_phase_" + self.phase)
        out.extend(handler(now))
        if self._finished is not None and not any(isinstance(d, Finished) for d in out):
            out.append(self._finished)
        return out

    def _members(self) -> list[str]:
        return self.waves[self.wave]

    def _key(self, what: str = "w") -> str:
        return "s%d%s%d" % (self.stage, what, self.wave + 1)

    def _phase_send(self, now: float) -> list:
        members = self._members()
        offline = [d for d in members if self._offline(d)]
        notes = [Notice("wave", "stage %d wave %d (%s): %d devices" % (
            self.stage, self.wave + 1, self.spec.waves[self.wave].label, len(members)),
            {"stage": self.stage, "wave": self.wave + 1, "devices": len(members)})]
        if offline:
            notes.append(Notice("offline", "  %d of them offline now (they count as silent "
                                "unless they answer in time): %s" % (
                                    len(offline), _names(offline)), {"devices": offline}))
        return notes + [self._send(self._key(), "migrate", {"stage": self.stage}, members)]

    def _send(self, key: str, op: str, args: dict, devices: list[str]) -> Send:
        self._outbox_key = key
        c = self.commands.get(key)
        if c is None:
            return Send(key, op, args, devices)
        missing = [d for d in devices if d not in self.acks.get(key, {})]
        return Send(key, op, args, missing or devices, c["id"], c["seq"], c["issued_at"])

    def _retain(self, key: str, stage: int, devices: list[str]) -> Retain:
        self._outbox_key = key
        c = self.commands.get(key)
        if c is None:
            return Retain(key, stage, devices)
        return Retain(key, stage, devices, c["id"], c["seq"], c["issued_at"])

    def _phase_acks(self, now: float) -> list:
        key = self._key()
        if self._quick_failed() > self._limit():
            return self._conclude(self._tally(now), now)
        if len(self.acks.get(key, {})) < len(self._members()) and now < self.deadline:
            return [Wait(self.deadline)]
        result = self._tally(now)
        if self._fails_early(result):
            return self._conclude(result, now)
        self.phase = RETAIN
        self._note_reached()
        return self._phase_retain(now)

    def _note_reached(self) -> None:
        got = self.acks.get(self._key(), {})
        rejected = {d for d, a in got.items() if a.get("result") == "rejected"}
        self.reached = sorted(set(self.reached) | (set(self._members()) - rejected))

    def _limit(self) -> float:
        """Failures above which the wave fails at once (the error threshold as a count)."""
        e = self.spec.error
        return e.value if e.is_count else e.value * len(self._members())

    def _quick_failed(self) -> int:
        """Failures known without a full tally: rejections and health rollbacks so far."""
        n = 0
        for d, a in self.acks.get(self._key(), {}).items():
            if a.get("result") == "rejected":
                n += 1
            else:
                auto = self.auto_rollbacks.get(d)
                if auto is not None and auto[0] == self.stage:
                    n += 1
        return n

    def _phase_retain(self, now: float) -> list:
        return [self._retain(self._key("d"), self.stage, self.reached)]

    def _phase_soak(self, now: float) -> list:
        if now >= self.deadline or self._quick_failed() > self._limit():
            return self._conclude(self._tally(now), now)
        return [Wait(self.deadline)]

    def _phase_rollback_send(self, now: float) -> list:
        devices = self.reached or self._members()
        return [self._send(self._key("r"), "rollback", {"stage": self.stage - 1}, devices)]

    def _phase_rollback_acks(self, now: float) -> list:
        key = self._key("r")
        devices = self.reached or self._members()
        got = self.acks.get(key, {})
        if len(got) < len(devices) and now < self.deadline:
            return [Wait(self.deadline)]
        self.phase = RB_RETAIN
        silent = [d for d in devices if d not in got]
        notes = []
        if silent:
            notes.append(Notice("rollback", "rollback not acknowledged by %d devices: %s (the "
                                "retained desired state brings them back when they answer)" % (
                                    len(silent), _names(silent)), {"devices": silent}))
        return notes + self._phase_rollback_retain(now)

    def _phase_rollback_retain(self, now: float) -> list:
        everyone = sorted(d for wave in self.waves for d in wave)
        return [self._retain(self._key("q"), self.stage - 1, everyone)]

    def _phase_done(self, now: float) -> list:
        return []

    # ------------------------------------------------------------ judging
    def _offline(self, device: str) -> bool:
        st = self.status.get(device)
        if st is not None:
            return st.get("online") is False
        return self.devices[device].online is False

    def _outcome_of(self, device: str, key: str, now: float) -> tuple[str, str]:
        ack = self.acks.get(key, {}).get(device)
        st = self.status.get(device, {})
        stage = st.get("stage")
        auto = self.auto_rollbacks.get(device)
        cmd = self.commands.get(key, {})
        if ack is not None and ack.get("result") == "rejected":
            return W.REJECTED, str(ack.get("reason") or "rejected")
        # A status written after the device applied this command (or a later one of
        # ours) carries a guard seq at or above the command's: only such a status can
        # prove a lost ack, or show a stage it dropped to by itself.
        guard = st.get("guard_seq")
        fresh = isinstance(guard, int) and cmd.get("seq") is not None and guard >= cmd["seq"]
        took = ack is not None or (fresh and stage == self.stage)
        if took:
            if auto is not None and auto[0] == self.stage:
                return W.ROLLED_BACK, auto[1]
            if fresh and isinstance(stage, int) and stage < self.stage:
                return W.ROLLED_BACK, "stage_dropped"
            return W.APPLIED, ""
        if now >= self.deadline or self.phase == SOAK:
            return W.SILENT, "silent" if not self._offline(device) else "offline"
        return W.PENDING, ""

    def _tally(self, now: float) -> WaveResult:
        key = self._key()
        outcomes = {d: self._outcome_of(d, key, now) for d in self._members()}
        return W.tally(self.stage, self.wave + 1, self.spec.waves[self.wave].label, outcomes,
                       self.devices)

    def _fails_early(self, result: WaveResult) -> bool:
        return self.spec.error.exceeded(result.failed, result.devices)

    def _conclude(self, result: WaveResult, now: float) -> list:
        final = self.phase == SOAK and now >= self.deadline
        on_failure = W.PAUSE if self.spec.on_failure == "pause" else W.HALT
        W.judge(result, self.spec.success, self.spec.error, final, on_failure)
        if self.phase == ACKS:
            self._note_reached()
        self.results.append(result)
        notes = [Notice("result", "  applied %d, rejected %d, rolled back %d, silent %d%s%s" % (
            result.applied, result.rejected, result.rolled_back, result.silent,
            # decided before every ack was in (the error threshold was already crossed)
            (", not yet answered %d" % result.pending) if result.pending else "",
            (": " + W._reason_text(result.reasons)) if result.reasons else ""),
            result.to_dict())]
        if not result.halted:
            self._advance()
            return notes
        why = "stage %d wave %d: %s" % (self.stage, self.wave + 1, result.why)
        if result.decision == W.PAUSE:
            self._finish(PAUSED, why)
            return notes + [Notice("halt", "PAUSE " + why, result.to_dict())]
        self.reason = why
        self.phase = RB_SEND
        notes.append(Notice("halt", "HALT %s; rolling %d devices back to stage %d" % (
            why, len(self.reached), self.stage - 1), result.to_dict()))
        return notes + self._phase_rollback_send(now)

    def _advance(self) -> None:
        self.wave += 1
        self.phase = SEND
        self._skip_empty()

    def _skip_empty(self) -> None:
        while True:
            if self.wave >= len(self.waves):
                if self.stage >= self.spec.to_stage:
                    self._finish(COMPLETED, "every wave of every stage done, up to stage %d%s"
                                 % (self.spec.to_stage, self._left_behind()))
                    return
                self.stage += 1
                self.wave = 0
                self.reached = []
                continue
            if self.waves[self.wave]:
                return
            self.wave += 1

    def _left_behind(self) -> str:
        """A wave resumed after a pause left its failed devices where they were."""
        behind = sorted({d for r in self.results if r.decision == W.PAUSE for d in r.failing})
        if not behind:
            return ""
        more = " ..." if len(behind) > 10 else ""
        return "; left behind by the paused wave: " + ", ".join(behind[:10]) + more

    def _finish(self, outcome: str, reason: str) -> None:
        self.outcome, self.reason = outcome, reason
        self.phase = DONE
        self._outbox_key = None
        self._finished = Finished(outcome, reason, self._blamed())

    def _blamed(self) -> dict | None:
        if self.results and self.results[-1].halted:
            return self.results[-1].cohorts.get("blamed")
        return None

    # ------------------------------------------------------------ the live view
    def progress(self, now: float) -> dict:
        """The wave in progress, for the operator's view (tools/rollout_view.py)."""
        if self.outcome is not None or self.wave >= len(self.waves):
            return {"phase": DONE, "outcome": self.outcome}
        members = self._members()
        key = self._key()
        got = self.acks.get(key, {})
        samples, errors, p95s, impacts = 0, 0.0, [], []
        for d in members:
            health = self.status.get(d, {}).get("health")
            if not isinstance(health, dict):
                continue
            raw = health.get("samples")
            n = raw if isinstance(raw, int) else 0
            rate = health.get("error_rate")
            samples += n
            if isinstance(rate, (int, float)):
                errors += rate * n
            lat = health.get("latency_p95", health.get("latency_p50"))
            if isinstance(lat, (int, float)):
                p95s.append(lat)
            if isinstance(health.get("performance_impact"), (int, float)):
                impacts.append(health["performance_impact"])
        tally = self._tally(now) if self.phase in (ACKS, RETAIN, SOAK) else None
        p95s.sort()
        return {"stage": self.stage, "wave": self.wave + 1, "waves": len(self.waves),
                "label": self.spec.waves[self.wave].label, "phase": self.phase,
                "devices": len(members), "acked": len(got),
                "soak_left_s": max(0.0, self.deadline - now) if self.phase == SOAK else None,
                "soak_s": self.spec.soak_s.get(self.stage, 0.0),
                "samples": samples, "error_rate": errors / samples if samples else None,
                "latency_p95": p95s[int(0.95 * (len(p95s) - 1))] if p95s else None,
                "performance_impact": max(impacts) if impacts else None,
                "failing": dict(tally.failing) if tally else {}}

    def _offline_notice(self) -> list:
        offline = sorted(d for d in self.devices if self._offline(d))
        unknown = sorted(d for d, i in self.devices.items()
                         if i.online is None and d not in self.status)
        out = []
        if offline:
            out.append(Notice("offline", "%d devices offline before the rollout: %s" % (
                len(offline), _names(offline)), {"devices": offline}))
        if unknown:
            out.append(Notice("offline", "%d devices have no status: %s" % (
                len(unknown), _names(unknown)), {"devices": unknown}))
        return out


def fleet_digest(devices: Mapping[str, DeviceInfo]) -> str:
    """Names the fleet a state belongs to: its device ids and their groups."""
    h = hashlib.sha256()
    for d in sorted(devices):
        h.update(("%s:%s\n" % (d, ",".join(sorted(devices[d].groups)))).encode())
    return h.hexdigest()[:32]


def _names(devices: list[str], limit: int = 10) -> str:
    more = len(devices) - limit
    return ", ".join(devices[:limit]) + (" and %d more" % more if more > 0 else "")


def _result_from_dict(d: dict) -> WaveResult:
    r = WaveResult(stage=d["stage"], wave=d["wave"], label=d.get("label", ""),
                   devices=d["devices"], applied=d["applied"], rejected=d["rejected"],
                   rolled_back=d["rolled_back"], silent=d["silent"],
                   reasons=dict(d.get("reasons") or {}), failing=dict(d.get("failing") or {}),
                   cohorts=d.get("cohorts") or {}, decision=d.get("decision", W.ADVANCE),
                   why=d.get("reason", ""))
    return r
