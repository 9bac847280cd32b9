"""`fleetstage rollout`: the plan, stage by stage, in waves, over MQTT.

    fleetstage rollout --to-stage 4 --broker URL --key fleet.key --fleet F
        [--waves group:canary,2%,10%,50%,100%] [--soak S | --soak-scale F]
        [--timeout S] [--success 95%] [--error-threshold 5% | N]
        [--on-failure rollback|pause] [--expect N] [--state FILE] [--json]
    fleetstage rollout --resume ...     continue a paused (or interrupted) rollout
    fleetstage rollout --abort ...      end the rollout in the state file, release the fleet

Each wave: a signed migrate command for its devices, their acks (each device
has --timeout seconds; a silent one fails), a retained desired state, then the
stage's monitoring time (the plan's: 30 min, 2 h, 4 h, 24 h; --soak S or
--soak-scale F overrides). The wave passes when at least --success of it
applied and stayed healthy and no more than --error-threshold (a share, 5%,
or a count, 3) rejected, rolled back by itself, or stayed silent. A failed
wave rolls back what the stage reached (--on-failure rollback) or pauses
(--on-failure pause; --resume accepts the wave and goes on).

Safety: an emergency rollback of any of its devices, or any newer operator
command for them, stops the rollout at once (exit 5); it raises no device
again. One rollout per fleet: a lock on the state file and a lease on
fleetstage/<fleet>/rollout/lease that other machines see. Progress lives in a
crash-safe store (--state): a killed rollout resumes where it was, resending
the same signed command (devices answer `duplicate`), never a new one. A state
file that does not match --to-stage, --waves or the fleet is refused.

Exit codes:
  0  completed: every wave of every stage passed
  1  halted: a wave failed; what it reached was rolled back
  2  failed: could not run (usage, broker, state file refused, fleet held)
  3  paused: a wave failed with --on-failure pause (--resume goes on)
  4  aborted: --abort ended it, or Ctrl-C interrupted it (rerun to resume)
  5  preempted: an emergency rollback or a newer operator command won
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from agent import protocol as P
from agent.store import Store, StoreError
from firmware_shim import codec
from firmware_shim.files import FileSystem
from firmware_shim.mqtt_paho import MqttError, MqttNotConnected
from tools import waves as W
from tools.bucketing import Buckets, plan_addressing
from tools.operator_cmd import (
    OperatorClient,
    OperatorError,
    add_connection_options,
    client_from_args,
    number_at_least,
)
from tools.orchestrator import (
    Finished,
    Notice,
    Orchestrator,
    Retain,
    RolloutSpec,
    Send,
    Wait,
    soak_from_plan,
)
from tools.rollout_lease import Lease, LeaseHeld, StateLock
from tools.rollout_view import PlainView, RichView, make_view

EXIT = {"completed": 0, "halted": 1, "failed": 2, "paused": 3, "aborted": 4, "preempted": 5}
TERMINAL = ("completed", "halted", "preempted")
ENTRY = P.TAG_BYTES + P.MAC_BYTES  # one entry of a signed message's MAC table


class RolloutError(Exception):
    """The rollout cannot run; the text says why and what to do."""


class Wire:
    """The orchestrator core's I/O: one operator connection, decisions out, reports in."""

    def __init__(self, client: OperatorClient, lease: Lease | None = None,
                 on_sent: Callable[[], None] | None = None) -> None:
        self.client = client
        self.on_sent = on_sent or (lambda: None)
        self.lease = lease
        self.orch: Orchestrator | None = None
        self.status: dict[str, dict] = {}
        self._tags: dict[bytes, str] | None = None
        self.buckets: Buckets | None = None
        self._keys: dict = {}  # device -> (tag, K_d), so each device key is derived once
        self.bad = 0
        self._chain = client._on_message
        client.link.set_callbacks(on_message=self.on_message)
        fleet = client.fleet
        for channel in ("cmd", "desired"):
            client.link.subscribe("%s/%s/%s/#" % (P.PREFIX, fleet, channel), 1)
        client.link.subscribe(P.device_wildcard(fleet, "event"), 1)

    # -- inbound -------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        if self.lease is not None and self.lease.on_message(topic, payload, retain):
            return
        self._chain(topic, payload, retain)
        try:
            _fleet, channel, target, leaf = P.parse_topic(topic)
        except P.ProtocolError:
            return
        if not payload:
            return
        if channel == "device":
            device = P.parse_target(target)[1]
            if device is not None and leaf is not None:  # always, for a device topic
                self._report(device, leaf, payload)
        else:
            self._command(channel, payload)

    def _report(self, device: str, leaf: str, payload: bytes) -> None:
        try:
            rep = P.decode_report(payload, P.derive_device_key(self.client.fleet_key, device),
                                  leaf, device_id=device, fleet=self.client.fleet)
        except P.ProtocolError:
            self.bad += 1
            return
        now = time.time()
        if leaf == "status":
            merged = dict(self.status.get(device, {}))
            merged.update(rep)
            self.status[device] = merged
        if self.orch is None:
            return
        if leaf == "status":
            self.orch.on_status(device, rep, now)
        elif leaf == "ack":
            self.orch.on_ack(device, rep, now)
        elif leaf == "event":
            raw = rep.get("payload")
            self.orch.on_event(device, str(rep.get("name")), raw if isinstance(raw, dict) else {},
                               now)

    def _command(self, channel: str, payload: bytes) -> None:
        """An operator command or desired state on the wire: whose, and for whom?"""
        if self.orch is None:
            return
        try:
            outer = codec.unpackb(bytes(payload))
            env = codec.unpackb(outer["body"])
            cid, seq, sigs = env["id"], env["seq"], outer.get("sigs") or b""
        except Exception:  # noqa: BLE001 - not ours to judge; devices ack it
            return
        if cid in {c["id"] for c in self.orch.commands.values()} or not isinstance(seq, int):
            return
        if not self.orch._newer(seq):
            return
        tags = self._tag_map()
        addressed = sorted({tags[sigs[i:i + P.TAG_BYTES]]
                            for i in range(0, len(sigs) - ENTRY + 1, ENTRY)
                            if sigs[i:i + P.TAG_BYTES] in tags})
        if not addressed:
            return
        d = addressed[0]
        decode = P.decode_command if channel == "cmd" else P.decode_desired
        groups = self.orch.devices[d].groups
        try:
            msg = decode(payload, P.derive_device_key(self.client.fleet_key, d), d, groups,
                         fleet=self.client.fleet)
        except P.ProtocolError:
            self.bad += 1  # not signed with our fleet key: it cannot move a device
            return
        self.orch.on_command(cid, seq, msg.op, addressed, time.time())

    def _tag_map(self) -> dict[bytes, str]:
        if self._tags is None:
            assert self.orch is not None
            self._tags = {P.device_tag(d): d for d in self.orch.devices}
        return self._tags

    def drain(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.client.loop.run_once(0)

    # -- outbound ------------------------------------------------------------
    def publish(self, decision: Send | Retain) -> bool:
        """Sign and publish one decision; False when the rollout ended before it went out."""
        orch = self.orch
        assert orch is not None
        self.drain()  # an emergency rollback that just arrived must win over this publish
        if orch.outcome is not None:
            return False
        c = self.client
        plan = c.plan
        if decision.command_id is None:
            cid, seq, issued = P.new_command_id(), c.next_seq(decision.devices), int(time.time())
        else:
            cid, seq, issued = decision.command_id, int(decision.seq or 0), int(
                decision.issued_at or 0)
        orch.sent(decision.key, cid, seq, issued, time.time())
        self.on_sent()
        if self.buckets is None:
            self.buckets = Buckets(orch.devices)
        sent = []
        for target, devices in address(decision.devices, self.buckets):
            if isinstance(decision, Send):
                topic = P.cmd_topic(c.fleet, target)
                payload = P.encode_command(decision.op, decision.args, target, seq, plan.hash,
                                           c.fleet_key, devices=devices, command_id=cid,
                                           issued_at=issued, max_stage=plan.max_stage,
                                           keys=self._keys, fleet=c.fleet)
            else:
                topic = P.desired_topic(c.fleet, target)
                payload = P.encode_desired(target, decision.stage, seq, plan.hash, c.fleet_key,
                                           devices=devices, command_id=cid, issued_at=issued,
                                           max_stage=plan.max_stage, keys=self._keys,
                                           fleet=c.fleet)
            sent.append((topic, self._publish(topic, payload, isinstance(decision, Retain))))
            c.loop.run_once(0)
        self._confirm(sent)
        return True

    def _publish(self, topic: str, payload: bytes, retain: bool) -> int:
        """QoS 1 with the broker's verdict tracked; waits out a dropped link once."""
        link = self.client.link
        for _attempt in range(2):
            try:
                return link.publish(topic, payload, qos=1, retain=retain, track=True)
            except MqttNotConnected:
                self.client.loop.run_until(lambda: link.connected, 10.0)
        raise RolloutError("broker link down, cannot publish to %s: %s" % (
            topic, link.last_error))

    def _confirm(self, sent: list[tuple[str, int]]) -> None:
        """Every PUBACK in, none refused (an ACL drop is an MQTT 5 reason code)."""
        results = self.client.link.publish_results
        done = self.client.loop.run_until(
            lambda: all(results.get(mid) is not None for _t, mid in sent), 30.0)
        verdicts = [(topic, results.pop(mid, None)) for topic, mid in sent]
        if not done:
            raise RolloutError("the broker did not acknowledge %d publishes (first: %s)" % (
                sum(1 for _t, v in verdicts if v is None), verdicts[0][0]))
        refused = [(t, v) for t, v in verdicts if v]
        if refused:
            raise RolloutError("the broker refused the publish to %s (%s): this login may not "
                               "publish for fleet %s; use the operator login" % (
                                   refused[0][0], refused[0][1], self.client.fleet))


def address(devices: list[str], buckets: Buckets) -> list[tuple[str, list[str]]]:
    """(target, devices signed for) per message: hash-bucket topics, so what a device
    receives stays one message of at most MAX_MACS entries at any fleet size."""
    return plan_addressing(devices, buckets)


# ------------------------------------------------------------------ the driver

class Driver:
    def __init__(self, args: argparse.Namespace, client: OperatorClient, wire: Wire,
                 store: Store, view: PlainView | RichView) -> None:
        self.args = args
        self.client = client
        self.wire = wire
        self.store = store
        self.view = view
        self.say = view.say
        wire.on_sent = self.save  # the state is on flash before anything goes out

    def save(self) -> None:
        orch = self.wire.orch
        assert orch is not None
        self.store.commit({"orch": orch.state(), "status": orch.outcome or "running"})

    def run(self, orch: Orchestrator) -> Finished:
        now = time.time()
        for device, status in self.wire.status.items():  # retained, seen before it began
            orch.on_status(device, status, now)
        self.wire.orch = orch
        loop = self.client.loop
        while True:
            if self.wire.lease is not None:
                self.wire.lease.renew()
            until = None
            for d in orch.step(time.time()):
                if isinstance(d, Finished):
                    self.save()
                    return d
                if isinstance(d, Notice):
                    self.say(d.text)
                elif isinstance(d, (Send, Retain)):
                    self.wire.publish(d)
                elif isinstance(d, Wait):
                    until = d.until
            self.view.update(orch.progress(time.time()))
            # inputs can change the picture at any time: look again within 0.2 s
            loop.run_once(0 if until is None else min(0.2, max(0.0, until - time.time())))


def build_spec(args: argparse.Namespace, plan) -> RolloutSpec:
    if args.to_stage is None and not (args.resume or args.abort):
        raise RolloutError("--to-stage N is required: the last stage to roll out (1..%d)"
                           % plan.max_stage)
    to_stage = args.to_stage if args.to_stage is not None else plan.max_stage
    if not 1 <= to_stage <= plan.max_stage:
        raise RolloutError("--to-stage must be 1..%d" % plan.max_stage)
    if args.soak is not None and args.soak_scale is not None:
        raise RolloutError("give --soak or --soak-scale, not both")
    try:
        waves = W.parse_waves(args.waves)
        error = W.parse_threshold(args.error_threshold)
        success = W.parse_threshold(args.success, whole=True)
    except W.WaveError as exc:
        raise RolloutError(str(exc)) from None
    if success.is_count:
        raise RolloutError("--success is a share of the wave (95% or 0.95)")
    soak = soak_from_plan(plan, args.soak_scale if args.soak_scale is not None else 1.0,
                          args.soak)
    return RolloutSpec(to_stage=to_stage, waves=waves, soak_s=soak, ack_timeout_s=args.timeout,
                       success=success.value, error=error, on_failure=args.on_failure)


def device_infos(client: OperatorClient, wire: Wire, devices: list[str]) -> dict:
    out = {}
    for d in devices:
        st = wire.status.get(d, {})
        hw = st.get("hw") if isinstance(st.get("hw"), str) else None
        stage = st.get("stage") if isinstance(st.get("stage"), int) else None
        online = st.get("online") if isinstance(st.get("online"), bool) else None
        out[d] = W.DeviceInfo(groups=tuple(client.inventory.get(d) or ()), hw=hw,
                              online=online, stage=stage)
    return out


def _open_orchestrator(args, spec, infos, store, say) -> tuple[Orchestrator | None, int | None]:
    """(orchestrator, None) to run, or (None, exit code) when the state file says no."""
    status = store.get("status")
    saved = store.get("orch")
    try:  # the arguments must hold for this fleet, whatever the state file records
        fresh = Orchestrator(spec, infos)
    except W.WaveError as exc:
        raise RolloutError(str(exc)) from None
    if saved is None or status == "aborted":
        if args.resume:
            raise RolloutError("nothing to resume in %s: start a rollout without --resume" %
                               args.state)
        return fresh, None
    why = Orchestrator.mismatch(spec, infos, saved)
    if status == "completed":
        behind = sorted(d for d, i in infos.items() if (i.stage or 0) < spec.to_stage)
        if why is None and not behind:
            return _earlier(args, say, "completed",
                            "rollout done earlier: every device at stage %d" % spec.to_stage)
        why = why or "%d devices are below stage %d now (%s)" % (
            len(behind), spec.to_stage, ", ".join(
                "%s at %s" % (d, infos[d].stage) for d in behind[:5]))
        raise RolloutError("%s records a finished rollout, but %s; run with --abort to clear "
                           "it, then start again" % (args.state, why))
    if status in ("halted", "preempted"):
        return _earlier(args, say, status, "rollout %s earlier: %s (run with --abort to clear "
                        "%s, then start again)" % (status, store.get("orch", {}).get("reason"),
                                                   args.state))
    if why is not None:
        raise RolloutError("%s cannot be resumed: %s; run with --abort to clear it" % (
            args.state, why))
    orch = Orchestrator(spec, infos, state=saved)
    if status == "paused":
        if not args.resume:
            return _earlier(args, say, "paused", "rollout paused earlier: %s (--resume goes "
                            "on, --abort ends it)" % orch.reason)
        orch.resume_paused()
    else:
        say("resuming the rollout in %s at stage %d wave %d" % (args.state, orch.stage,
                                                                orch.wave + 1))
    return orch, None


def _earlier(args, say, outcome: str, text: str) -> tuple[None, int]:
    """The state file's recorded outcome, nothing run: said, and with --json printed
    as the outcome object on stdout (with "earlier": true)."""
    say(text)
    code = EXIT[outcome]
    if args.json:
        print(json.dumps({"outcome": outcome, "reason": text, "exit_code": code,
                          "earlier": True, "state": args.state}, sort_keys=True))
    return None, code


def _abort(args, client: OperatorClient | None, store: Store, say) -> int:
    status = store.get("status")
    if store.get("orch") is None or status == "aborted":
        say("no rollout to abort in %s" % args.state)
        return EXIT["aborted"]
    rollout_id = store.get("rollout_id") or "?"
    store.commit({"status": "aborted"})
    if client is not None:
        Lease(client, rollout_id, 0).clear_if_ours()
    say("rollout %s aborted (was %s); devices stay where they are: use `fleetstage rollback` "
        "or a new rollout" % (rollout_id, status))
    return EXIT["aborted"]


def _run(args: argparse.Namespace) -> int:
    plain = PlainView(sys.stderr if args.json else sys.stdout)
    say = plain.say

    def fail(msg: str) -> int:
        print("fleetstage rollout: %s" % msg, file=sys.stderr)
        if args.json:
            print(json.dumps({"outcome": "failed", "reason": msg, "exit_code": EXIT["failed"]}))
        return EXIT["failed"]

    try:
        client = client_from_args(args)
        spec = build_spec(args, client.plan)
    except (OperatorError, RolloutError, OSError, ValueError, P.ProtocolError) as exc:
        return fail(str(exc))
    args.state = args.state or "fleetstage-rollout-%s.store" % client.fleet
    lock = StateLock(args.state)
    try:
        lock.acquire()
        store = Store(args.state, FileSystem())
    except LeaseHeld as exc:
        return fail(str(exc))
    except (StoreError, OSError) as exc:
        return fail("cannot open %s: %s" % (args.state, exc))
    wire = None
    try:
        lease = Lease(client, store.get("rollout_id") or P.new_command_id(), spec.to_stage,
                      args.lease_ttl)
        wire = Wire(client, lease)
        client.connect()
        if args.abort:
            return _abort(args, client, store, say)
        devices = sorted(client.devices_for("all", None, args.expect))
        client.loop.run_until(lambda: set(wire.status) >= set(devices), 5.0)
        infos = device_infos(client, wire, devices)
        orch, code = _open_orchestrator(args, spec, infos, store, say)
        if orch is None:
            return code if code is not None else EXIT["failed"]
        lease.acquire()
        if store.get("rollout_id") != lease.rollout or store.get("status") == "aborted":
            store.commit({"rollout_id": lease.rollout, "status": "running",
                          "orch": orch.state()})
        with make_view(args.json) as view:
            driver = Driver(args, client, wire, store, view)
            try:
                done = driver.run(orch)
            except KeyboardInterrupt:
                view.say("interrupted: the state is kept in %s; run again to resume" %
                         args.state)
                return EXIT["aborted"]
        if not args.json:
            view.summary(orch.results)
        return report(args, orch, done, view.say)
    except (LeaseHeld, RolloutError) as exc:
        return fail(str(exc))
    except StoreError as exc:
        # Progress that cannot be recorded must not be acted on: stop here; a rerun
        # reopens the file and resumes from what it really holds.
        return fail("cannot record progress in %s: %s" % (args.state, exc))
    except (OperatorError, MqttError, OSError, P.ProtocolError) as exc:
        return fail(str(exc))
    finally:
        if wire is not None and wire.lease is not None:
            wire.lease.release()
        store.close()
        lock.release()
        client.close()


def report(args: argparse.Namespace, orch: Orchestrator, done: Finished, say) -> int:
    code = EXIT.get(done.outcome, EXIT["failed"])
    if args.json:
        print(json.dumps({"outcome": done.outcome, "reason": done.reason, "exit_code": code,
                          "blamed": done.blamed, "to_stage": orch.spec.to_stage,
                          "from_stage": orch.from_stage, "state": args.state,
                          "waves": [r.to_dict() for r in orch.results]},
                         indent=2, sort_keys=True, default=repr))
        return code
    last = orch.results[-1] if orch.results else None
    if last is not None and last.halted:
        rows = (last.cohorts.get("by_hw") or []) + (last.cohorts.get("by_group") or [])
        for row in sorted((r for r in rows if r["others"]), key=lambda r: -r["failed"])[:6]:
            say("  cohort %s" % row["text"])
        if done.blamed:
            say("  blamed: %s %s" % (done.blamed["dimension"], done.blamed["text"]))
    say("rollout %s: %s" % (done.outcome, done.reason))
    return code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="roll the plan out in waves; halt and roll back on failure",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to-stage", type=int,
                   help="last stage to roll out (required; with --resume or --abort the "
                        "plan's last when left out)")
    add_connection_options(p)
    p.add_argument("--waves", default=W.DEFAULT_WAVES,
                   help="waves: group:NAME and cumulative percentages, mixed, ending at 100%% "
                        "(default %(default)s)")
    p.add_argument("--soak", type=number_at_least(0, float, " seconds"),
                   help="seconds each wave is watched (default: the "
                        "plan's monitoring time for the stage)")
    p.add_argument("--soak-scale", type=number_at_least(0, float, strict=True),
                   help="multiply the plan's monitoring times (e.g. 0.01 for a rehearsal)")
    p.add_argument("--success", default="95%",
                   help="share of a wave that must apply and stay healthy (default 95%%)")
    p.add_argument("--error-threshold", "--max-failure", dest="error_threshold", default="5%",
                   help="failed devices that halt a wave: a share (5%%, 0.05) or a count (3)")
    p.add_argument("--on-failure", choices=("rollback", "pause"), default="rollback")
    p.add_argument("--timeout", type=number_at_least(0, float, " seconds", strict=True),
                   default=60.0,
                   help="seconds each device has to ack before it counts as silent")
    p.add_argument("--expect", type=number_at_least(1),
                   help="wait until N devices have announced themselves")
    p.add_argument("--state", help="progress file (default fleetstage-rollout-FLEET.store)")
    p.add_argument("--json", action="store_true", help="print the outcome and waves as JSON")
    p.add_argument("--lease-ttl", type=float, default=60.0, help=argparse.SUPPRESS)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="go on after a pause")
    mode.add_argument("--abort", action="store_true",
                      help="end the rollout recorded in --state and release the fleet")
    p.set_defaults(handler=_run)
