"""`fleetstage rollout`: the orchestrator. Waves, thresholds, automatic halt and rollback.

    fleetstage rollout --to-stage 4 --broker URL --key fleet.key --fleet F
                       [--waves 0.02,0.1,0.5,1] [--max-failure 0.05] [--soak 1800]
                       [--expect N] [--state FILE]

For each stage from the fleet's current one up to --to-stage, and each wave
(the same stable shuffle as the simulator's, sim.strategy.WavePolicy), it
signs a migrate command for every device of the wave, waits for the acks,
watches the wave's verified statuses for --soak seconds, and judges it with
the same classify() the simulator uses. A failed wave halts the rollout and
rolls every device that reached the stage back to the stage before.

Its progress is kept in a fleetstage store (--state, crash-safe like the
devices' own), so a killed orchestrator resumes at the wave it was in; a
halted rollout stays halted until the file is removed by a person.
Exit codes: 0 done, 1 halted, 2 usage or connection error.
"""
from __future__ import annotations

import argparse
import sys
import time

from agent import protocol as P
from agent.store import Store, StoreError
from firmware_shim.mqtt_paho import MqttConfig, MqttError, PahoLink
from sim.strategy import WavePolicy, WaveResult, classify
from tools.operator_cmd import (
    OperatorClient,
    OperatorError,
    add_connection_options,
    client_from_args,
)
from tools.status_cmd import FleetView


class Rollout:
    def __init__(self, client: OperatorClient, view: FleetView, policy: WavePolicy,
                 store: Store, state_path: str, soak_s: float, ack_timeout_s: float,
                 log=print) -> None:
        self.client = client
        self.view = view
        self.policy = policy
        self.store = store
        self.state_path = state_path
        self.soak_s = soak_s
        self.ack_timeout_s = ack_timeout_s
        self.log = log

    # -- one wave ----------------------------------------------------------------
    def _command_each(self, op: str, stage: int, devices: list[str]) -> dict[str, dict]:
        """One signed command per device (each signed only for itself); -> acks."""
        outcomes = [self.client.send(op, {"stage": stage}, "device:" + d, [d]) for d in devices]
        deadline = time.monotonic() + self.ack_timeout_s
        for outcome in outcomes:
            self.client.wait(outcome, max(0.0, deadline - time.monotonic()))
        for outcome in outcomes:
            self.client.publish_desired(outcome, stage)  # silent devices converge later
        acks = {}
        for outcome in outcomes:
            acks.update(outcome.acks)
        return acks

    def _soak(self) -> None:
        end = time.monotonic() + self.soak_s
        while time.monotonic() < end:
            self.client.loop.run_once(0.1)

    def run_wave(self, stage: int, wave: int, members: list[str]) -> WaveResult:
        acks = self._command_each(P.OP_MIGRATE, stage, members)
        self._soak()
        return classify(self.policy, stage, wave, members, acks, self.view.status)

    # -- the whole rollout -----------------------------------------------------------
    def run(self, devices: list[str], to_stage: int) -> int:
        if self.store.get("status") == "halted":
            self.log("rollout halted earlier: %s (remove %s to start again)" % (
                self.store.get("why"), self.state_path))
            return 1
        if self.store.get("devices") not in (None, devices):
            self.log("the fleet changed since this rollout began; resuming with the devices"
                     " it started with")
            devices = self.store.get("devices")
        waves = self.policy.split(devices)
        done = {tuple(x) for x in self.store.get("done", [])}
        self.store.commit({"devices": devices, "to_stage": to_stage, "status": "running"})
        first = self.store.get("from_stage")
        if first is None:
            first = min((st.get("stage") or 0) for st in self.view.status.values()) + 1
            self.store.commit({"from_stage": first})
        for stage in range(first, to_stage + 1):
            for number, members in enumerate(waves, 1):
                if (stage, number) in done:
                    continue
                self.log("stage %d wave %d: %d devices" % (stage, number, len(members)))
                result = self.run_wave(stage, number, members)
                self.log("  applied %d, rejected %d %s, rolled back %d, unanswered %d" % (
                    result.applied, result.rejected, result.reasons or "", result.rolled_back,
                    result.unanswered))
                if result.halted:
                    return self.halt(stage, number, waves, result)
                done.add((stage, number))
                self.store.commit({"done": sorted([list(x) for x in done])})
        self.store.commit({"status": "done"})
        self.log("rollout done: every device at stage %d" % to_stage)
        return 0

    def halt(self, stage: int, wave: int, waves: list[list[str]], result: WaveResult) -> int:
        why = "stage %d wave %d: %s" % (stage, wave, result.why)
        self.store.commit({"status": "halted", "why": why})
        reached = [d for members in waves[:wave] for d in members]
        self.log("HALT %s; rolling %d devices back to stage %d" % (why, len(reached), stage - 1))
        acks = self._command_each(P.OP_ROLLBACK, stage - 1, reached)
        bad = [d for d in reached if acks.get(d, {}).get("result") not in ("applied", "duplicate")]
        if bad:
            self.log("  rollback not acknowledged by %d devices: %s (retained desired state "
                     "brings them back when they answer)" % (len(bad), ", ".join(bad[:10])))
        return 1


def _run(args: argparse.Namespace) -> int:
    try:
        policy = WavePolicy(waves=tuple(float(x) for x in args.waves.split(",")),
                            max_failure_ratio=args.max_failure)
    except ValueError as exc:
        print("fleetstage rollout: %s" % exc, file=sys.stderr)
        return 2
    try:
        client = client_from_args(args)
        client.connect()
        view = FleetView(client.fleet, client.fleet_key)
        status_link = PahoLink(MqttConfig.from_url(
            args.broker, client_id="rollout-status-" + P.new_command_id(),
            username=args.username, password=client.link.config.password, ca=args.ca,
            cert=args.cert, key=args.client_key, insecure=args.tls_insecure))
        status_link.set_callbacks(on_message=view.on_message)
        status_link.subscribe(P.device_wildcard(client.fleet, "status"))
        client.loop.add(status_link)
        status_link.start()
        devices = sorted(client.devices_for("all", None, args.expect))
    except (OperatorError, MqttError, OSError, P.ProtocolError) as exc:
        print("fleetstage rollout: %s" % exc, file=sys.stderr)
        return 2
    to_stage = args.to_stage if args.to_stage is not None else client.plan.max_stage
    if not 1 <= to_stage <= client.plan.max_stage:
        print("fleetstage rollout: --to-stage must be 1..%d" % client.plan.max_stage,
              file=sys.stderr)
        return 2
    client.loop.run_until(lambda: set(view.status) >= set(devices), 10.0)
    state = args.state or "fleetstage-rollout-%s.store" % client.fleet
    try:
        store = Store(state)
    except (StoreError, OSError) as exc:
        print("fleetstage rollout: cannot open %s: %s" % (state, exc), file=sys.stderr)
        return 2
    rollout = Rollout(client, view, policy, store, state, args.soak, args.timeout,
                      log=lambda m: (print(m), sys.stdout.flush()))
    try:
        return rollout.run(devices, to_stage)
    except StoreError as exc:
        # Progress that cannot be recorded must not be acted on: stop here; a rerun
        # reopens the file and resumes from what it really holds.
        print("fleetstage rollout: cannot record progress in %s: %s" % (state, exc),
              file=sys.stderr)
        return 2
    finally:
        store.close()
        status_link.close()
        client.close()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="roll the plan out in waves; halt and roll back on failure",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to-stage", type=int, help="last stage (default: the plan's last)")
    add_connection_options(p)
    p.add_argument("--waves", default="0.02,0.1,0.5,1", help="cumulative wave fractions")
    p.add_argument("--max-failure", type=float, default=0.05,
                   help="halt when more than this fraction of a wave fails (default 0.05)")
    p.add_argument("--soak", type=float, default=1800.0,
                   help="seconds each wave is watched before the next (default 1800)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for acks")
    p.add_argument("--expect", type=int, help="wait until N devices have announced themselves")
    p.add_argument("--state", help="progress file (default fleetstage-rollout-FLEET.store)")
    p.set_defaults(handler=_run)
