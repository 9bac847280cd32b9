"""Operator commands: sign a stage command, publish it, wait for the acks.

    fleetstage publish-stage N  --fleet F --target all|group:G|device:ID --broker URL --key FILE
    fleetstage rollback N       (same options)
    fleetstage emergency-rollback --reason TEXT (same options)
    common: [--json] [--timeout S] [--expect N | --devices a,b,c] [--plan FILE]
            [--username U --password-file F] [--ca F] [--cert F --client-key F]

Owns: OperatorClient (one MQTT session on the operator side: device discovery
from retained status, signing, publishing the command and the retained desired
state, collecting verified acks) and the CLI around it. `status` and rollout
waves grow from OperatorClient. Must never: report success for a device whose
ack is missing, forged or rejected. Exit codes: 0 all applied, 1 a rejection,
2 usage/connection error, 3 timeout.
"""
import json
import os
import sys
import time

from agent import protocol as P
from agent.plan import Plan
from firmware_shim.files import FileSystem
from firmware_shim.mqtt_paho import MqttConfig, MqttError, MqttLoop, PahoLink

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


class OperatorError(Exception):
    pass


class Outcome:
    """What came back for one command: {device: ack dict} plus the devices still silent."""

    def __init__(self, command_id, desired_id, seq, op, args, target, devices):
        self.command_id, self.desired_id, self.seq = command_id, desired_id, seq
        self.op, self.args, self.target = op, args, target
        self.devices = list(devices)
        self.acks = {}
        self.desired_devices = []

    @property
    def missing(self):
        return [d for d in self.devices if d not in self.acks]

    @property
    def rejected(self):
        return sorted(d for d, a in self.acks.items() if a.get("result") == P.REJECTED)

    def exit_code(self):
        if self.rejected:
            return EXIT_REJECTED
        if self.missing:
            return EXIT_TIMEOUT
        return EXIT_OK

    def to_dict(self):
        return {"command_id": self.command_id, "desired_id": self.desired_id, "seq": self.seq,
                "op": self.op, "args": self.args, "target": self.target,
                "devices": {d: self.acks.get(d) for d in self.devices},
                "missing": self.missing, "rejected": self.rejected,
                "desired_signed_for": self.desired_devices,
                "ok": self.exit_code() == EXIT_OK}


class OperatorClient:
    def __init__(self, broker_url, fleet, fleet_key, plan=None, username=None, password=None,
                 ca=None, cert=None, client_key=None, tls_insecure=False, client_id=None,
                 loop=None):
        self.fleet = P.validate_id(fleet, "fleet")
        self.fleet_key = fleet_key
        self.plan = plan or Plan.default()
        config = MqttConfig.from_url(
            broker_url, client_id=client_id or "operator-" + P.new_command_id(),
            username=username, password=password, ca=ca, cert=cert, key=client_key,
            insecure=tls_insecure, backoff_min=0.2, backoff_max=2.0)
        self.loop = loop or MqttLoop()
        self.link = PahoLink(config)
        self.link.set_callbacks(on_message=self._on_message)
        self.loop.add(self.link)
        self.inventory = {}  # device -> groups, from retained status
        self.online = {}
        self._waiting = {}  # message id -> Outcome
        self.bad_reports = 0
        # Highest sequence number any device's guard holds (its verified status
        # says so), and the last one we issued: the next command goes above both.
        self.guard_seqs = {}
        self._last_seq = 0

    # -- connection --------------------------------------------------------
    def connect(self, timeout=10.0):
        self.link.subscribe(P.device_wildcard(self.fleet, "ack"))
        self.link.subscribe(P.device_wildcard(self.fleet, "status"))
        self.link.start()
        if not self.loop.run_until(lambda: self.link.connected, timeout):
            raise OperatorError(f"cannot connect to the broker: {self.link.last_error}")
        return self

    def close(self):
        self.loop.run_until(lambda: not self.link.pending_out(), 2.0)
        self.link.close()

    def discover(self, quiet_s=0.3, timeout=3.0, expect=None):
        """Collect retained statuses until none arrive for quiet_s (or `expect` are known)."""
        deadline = time.monotonic() + timeout
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.loop.run_once(0.05)
            if len(self.inventory) != last_count:
                last_count, last_change = len(self.inventory), time.monotonic()
            if expect is not None and len(self.inventory) >= expect:
                break
            if expect is None and time.monotonic() - last_change >= quiet_s:
                break
        return dict(self.inventory)

    # -- inbound -----------------------------------------------------------
    def _device_of(self, topic):
        try:
            _fleet, _channel, target, leaf = P.parse_topic(topic)
            return P.parse_target(target)[1], leaf
        except P.ProtocolError:
            return None, None

    def _on_message(self, topic, payload, retain):
        device, leaf = self._device_of(topic)
        if device is None or not payload:
            return
        try:
            report = P.decode_report(payload, P.derive_device_key(self.fleet_key, device), leaf)
        except P.ProtocolError:
            self.bad_reports += 1  # forged or garbled: never counted as an answer
            return
        if report.get("device") != device:
            self.bad_reports += 1
            return
        if leaf == "status":
            if report.get("groups") is not None or device not in self.inventory:
                self.inventory[device] = list(report.get("groups") or [])
            self.online[device] = bool(report.get("online"))
            self._note_guard_seq(device, report.get("extra"))
        elif leaf == "ack":
            outcome = self._waiting.get(report.get("id"))
            if outcome is not None and device in outcome.devices:
                self._take_ack(outcome, device, report)

    def _note_guard_seq(self, device, extra):
        seq = extra.get("guard_seq") if isinstance(extra, dict) else None
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < P.MAX_SEQ:
            self.guard_seqs[device] = max(seq, self.guard_seqs.get(device, 0))

    def next_seq(self, devices=None):
        """Above our wall clock in ms, above every guard we have seen, above our last one.

        A command once sent from a machine whose clock ran fast left the
        devices' guards far ahead; with the wall clock alone every later
        command (emergency rollback too) would be stale_sequence. `devices`
        narrows the guards considered to the targeted ones (None: all seen).
        """
        seen = self.guard_seqs.values() if devices is None else [
            self.guard_seqs.get(d, 0) for d in devices]
        seq = P.next_seq(max([self._last_seq, *seen]), time.time())
        if seq + 1 > P.MAX_SEQ:  # +1: the desired state goes out as seq + 1
            raise OperatorError(f"a device's guard holds sequence {seq - 1}: no higher "
                                "sequence number is left")
        self._last_seq = seq
        return seq

    def _await_guards(self, devices, timeout=1.0):
        """Give the targeted devices' retained statuses a moment to arrive (carry guard_seq).

        Only a device with no status at all is waited for: an offline one's
        retained status is its last will, which carries no guard_seq.
        """
        self.loop.run_until(lambda: all(d in self.inventory for d in devices), timeout)

    def _take_ack(self, outcome, device, ack):
        if ack.get("id") == outcome.command_id and device not in outcome.acks:
            outcome.acks[device] = ack  # the first ack counts; QoS 1 may repeat it

    # -- commands ----------------------------------------------------------
    def devices_for(self, target, devices=None, expect=None):
        if devices:
            for d in devices:
                P.validate_id(d)
            return sorted(set(devices))
        kind, name = P.parse_target(target)
        if kind == "device" and expect in (None, 1):
            return [name]
        self.discover(expect=expect)
        found = P.select_devices(target, self.inventory)
        if not found:
            raise OperatorError(f"no devices known for target {target}: pass --devices or "
                                "--expect (devices announce themselves with retained status)")
        return found

    def send(self, op, args, target, devices):
        """Publish the signed command (QoS 1); returns the Outcome that collects its acks."""
        self._await_guards(devices)
        # desired state goes out as seq + 1: keep both above every guard
        seq = self.next_seq(devices)
        self._last_seq = seq + 1
        command_id = P.new_command_id()
        cmd = P.encode_command(op, args, target, seq, self.plan.hash, self.fleet_key,
                               devices=devices, command_id=command_id, issued_at=int(time.time()),
                               max_stage=self.plan.max_stage)
        outcome = Outcome(command_id, None, seq, op, args, target, devices)
        self._waiting[command_id] = outcome
        self.link.publish(P.cmd_topic(self.fleet, target), cmd, qos=1)
        return outcome

    def publish_desired(self, outcome, stage, emergency=False, reason=None):
        """Retain the desired state for every device that did not refuse the command.

        Published after the acks: a device that refused (not_ready, quarantined)
        finds no signature for itself and stays where it is, as its ack said;
        a silent (offline) device converges from it when it comes back.
        """
        devices = [d for d in outcome.devices if d not in outcome.rejected]
        outcome.desired_devices = devices
        if not devices:
            return None
        outcome.desired_id = P.new_command_id()
        payload = P.encode_desired(outcome.target, stage, outcome.seq + 1, self.plan.hash,
                                   self.fleet_key, devices=devices, emergency=emergency,
                                   reason=reason, command_id=outcome.desired_id,
                                   issued_at=int(time.time()), max_stage=self.plan.max_stage)
        self.link.publish(P.desired_topic(self.fleet, outcome.target), payload, qos=1,
                          retain=True)
        self.loop.run_until(lambda: not self.link.pending_out(), 5.0)
        return outcome.desired_id

    def wait(self, outcome, timeout):
        self.loop.run_until(lambda: not outcome.missing, timeout)
        return outcome

    def publish_stage(self, stage, target, devices, timeout):
        outcome = self.wait(self.send(P.OP_MIGRATE, {"stage": stage}, target, devices), timeout)
        self.publish_desired(outcome, stage)
        return outcome

    def rollback(self, stage, target, devices, timeout):
        outcome = self.wait(self.send(P.OP_ROLLBACK, {"stage": stage}, target, devices), timeout)
        self.publish_desired(outcome, stage)
        return outcome

    def emergency_rollback(self, reason, target, devices, timeout):
        outcome = self.wait(self.send(P.OP_EMERGENCY_ROLLBACK, {"reason": reason}, target,
                                      devices), timeout)
        self.publish_desired(outcome, 0, emergency=True, reason=reason)
        return outcome


# ---------------------------------------------------------------- the CLI

def _print_table(outcome):
    print(f"command {outcome.command_id} seq {outcome.seq}: {outcome.op} {outcome.args} "
          f"-> {outcome.target}")
    print("  {:<28} {:<10} {:<16} {}".format("DEVICE", "RESULT", "REASON", "DETAIL"))
    for d in outcome.devices:
        ack = outcome.acks.get(d)
        if ack is None:
            print("  {:<28} {:<10} {:<16} {}".format(d, "-", "timeout", "no ack"))
            continue
        detail = ack.get("detail")
        if isinstance(detail, list):
            detail = "; ".join(detail)
        print("  {:<28} {:<10} {:<16} {}".format(d, ack.get("result"), ack.get("reason") or "",
                                                detail or ""))
    n = len(outcome.devices)
    print(f"{n - len(outcome.missing) - len(outcome.rejected)}/{n} applied, "
          f"{len(outcome.rejected)} rejected, {len(outcome.missing)} silent")
    if outcome.missing and outcome.desired_id:
        print(f"desired state {outcome.desired_id} retained: silent devices converge when "
              "they reconnect")


def _read_secret(path):
    if not path:
        return None
    with open(path) as f:
        return f.read().strip()


def client_from_args(args):
    with open(args.key, "rb") as f:
        info = P.parse_key_file(f.read())
    if info.kind == "device":
        raise OperatorError(f"{args.key} is a device key; the operator signs with the fleet key")
    fleet = args.fleet or os.environ.get("FLEETSTAGE_FLEET")
    if not fleet:
        raise OperatorError("--fleet is required (or set FLEETSTAGE_FLEET)")
    plan = Plan.load(args.plan, FileSystem()) if args.plan else None
    return OperatorClient(args.broker, fleet, info.key, plan=plan, username=args.username,
                          password=_read_secret(args.password_file), ca=args.ca, cert=args.cert,
                          client_key=args.client_key, tls_insecure=args.tls_insecure)


def _run(args):
    try:
        client = client_from_args(args)
        client.connect(min(args.timeout, 10.0))
    except (OperatorError, OSError, MqttError, P.ProtocolError, ValueError) as exc:
        print(f"fleetstage {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        devices = None
        if args.devices:
            devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        devices = client.devices_for(args.target, devices, args.expect)
        if args.command == "publish-stage":
            outcome = client.publish_stage(args.stage, args.target, devices, args.timeout)
        elif args.command == "rollback":
            outcome = client.rollback(args.stage, args.target, devices, args.timeout)
        else:
            outcome = client.emergency_rollback(args.reason, args.target, devices, args.timeout)
    except (OperatorError, MqttError, P.ProtocolError) as exc:
        print(f"fleetstage {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        client.close()
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2, sort_keys=True, default=repr))
    else:
        _print_table(outcome)
    return outcome.exit_code()


def add_connection_options(p):
    """The options client_from_args reads: broker, fleet key, fleet, plan, credentials, TLS.
    Every operator-side command (publish-stage, rollback, rollout...) takes these."""
    p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--key", required=True, help="the fleet key file")
    p.add_argument("--fleet", help="fleet name (default: $FLEETSTAGE_FLEET)")
    p.add_argument("--plan", help="plan file (default: the built-in runbook plan)")
    p.add_argument("--username")
    p.add_argument("--password-file")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--client-key")
    p.add_argument("--tls-insecure", action="store_true", help="skip the TLS host-name check")


def _common(p):
    p.add_argument("--target", default="all", help="all | group:NAME | device:ID")
    add_connection_options(p)
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acks")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--expect", type=int, help="wait until N devices are known")
    who.add_argument("--devices", help="comma-separated device ids to sign for and wait on")
    p.set_defaults(handler=_run)


def register(sub):
    p = sub.add_parser("publish-stage", help="move devices to stage N (signed, waits for acks)")
    p.add_argument("stage", type=int)
    _common(p)
    p = sub.add_parser("rollback", help="roll devices back to stage N")
    p.add_argument("stage", type=int)
    _common(p)
    p = sub.add_parser("emergency-rollback", help="every targeted device straight to stage 0")
    p.add_argument("--reason", required=True)
    _common(p)
