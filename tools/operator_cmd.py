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
import argparse
import json
import os
import sys
import time

from agent import protocol as P
from agent.plan import Plan, PlanError
from firmware_shim.files import FileSystem
from firmware_shim.mqtt_paho import (
    MQTT_5,
    NOT_AUTHORISED,
    MqttConfig,
    MqttConnectError,
    MqttError,
    MqttLoop,
    MqttNotConnected,
    PahoLink,
)
from tools import profile
from tools.bucketing import MAX_MACS, Buckets, plan_addressing
from tools.fleet_inventory import SetupError, load_inventory
from tools.operator_seq import MemorySeq, SeqError, SeqStore, default_state_dir

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


class OperatorError(Exception):
    pass


class Outcome:
    """What came back for one command: {device: ack dict} plus the devices still silent.

    unverified: devices whose ack named this command but did not verify under our
    fleet key (a wrong --key, or a command for another fleet): never "silent".
    """

    def __init__(self, command_id, desired_id, seq, op, args, target, devices):
        self.command_id, self.desired_id, self.seq = command_id, desired_id, seq
        self.op, self.args, self.target = op, args, target
        self.devices = list(devices)
        self.acks = {}
        self.unverified = {}
        self.desired_devices = []
        self.desired_note = None

    @property
    def missing(self):
        return [d for d in self.devices if d not in self.acks and d not in self.unverified]

    @property
    def rejected(self):
        return sorted(d for d, a in self.acks.items() if a.get("result") == P.REJECTED)

    def exit_code(self):
        if self.rejected or self.unverified:
            return EXIT_REJECTED
        if self.missing:
            return EXIT_TIMEOUT
        return EXIT_OK

    def to_dict(self):
        return {"command_id": self.command_id, "desired_id": self.desired_id, "seq": self.seq,
                "op": self.op, "args": self.args, "target": self.target,
                "devices": {d: self.acks.get(d) for d in self.devices},
                "missing": self.missing, "rejected": self.rejected,
                "unverified": sorted(self.unverified),
                "desired_signed_for": self.desired_devices, "desired_note": self.desired_note,
                "ok": self.exit_code() == EXIT_OK}


class OperatorClient:
    """One operator MQTT session (MQTT 5, its own client id).

    seq: where sequence numbers come from (tools.operator_seq.SeqStore, durable;
    default MemorySeq). They never come from a device's report. inventory:
    {device: [groups]} from the fleet inventory; when given it is authoritative
    (targets are resolved against it, not against the groups devices report).
    """

    def __init__(self, broker_url, fleet, fleet_key, plan=None, username=None, password=None,
                 ca=None, cert=None, client_key=None, tls_insecure=False, client_id=None,
                 loop=None, seq=None, inventory=None):
        self.fleet = P.validate_id(fleet, "fleet")
        self.fleet_key = fleet_key
        self.plan = plan or Plan.default()
        config = MqttConfig.from_url(
            broker_url, client_id=client_id or "operator-" + P.new_command_id(),
            username=username, password=password, ca=ca, cert=cert, key=client_key,
            insecure=tls_insecure, backoff_min=0.2, backoff_max=2.0, protocol=MQTT_5)
        self.loop = loop or MqttLoop()
        self.link = PahoLink(config)
        self.link.set_callbacks(on_message=self._on_message)
        self.loop.add(self.link)
        self.authoritative = inventory is not None
        self.inventory = {d: sorted(g) for d, g in (inventory or {}).items()}
        self.reported_groups = {}  # device -> groups its verified status claims
        self.online = {}
        self._waiting = {}  # message id -> Outcome
        self._keys = {}  # device id -> its derived key: each derived once per session
        self.bad_reports = 0
        # Each device's guard as its own report claims it: SHOWN (status), never followed.
        self.guard_seqs = {}
        self.seq = seq or MemorySeq()

    # -- connection --------------------------------------------------------
    def connect(self, timeout=10.0):
        self.link.subscribe(P.device_wildcard(self.fleet, "ack"))
        self.link.subscribe(P.device_wildcard(self.fleet, "status"))
        self.link.start()
        if not self.loop.run_until(lambda: self.link.connected or self._refused(), timeout) \
                or not self.link.connected:
            raise OperatorError(connect_failure(self.link))
        return self

    def _refused(self):
        return isinstance(self.link.last_error, MqttConnectError) and \
            self.link.last_error.refusal and self.link.last_error.rc in NOT_AUTHORISED

    def close(self):
        self.loop.run_until(lambda: not self.link.pending_out(), 2.0)
        self.link.close()

    def discover(self, quiet_s=0.3, timeout=3.0, expect=None, device=None):
        """Collect retained statuses until none arrive for quiet_s (or `expect` are known,
        or until `device` is known: then the whole timeout if it never reports)."""
        deadline = time.monotonic() + timeout
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.loop.run_once(0.05)
            if len(self.online) != last_count:
                last_count, last_change = len(self.online), time.monotonic()
            if device is not None:
                if device in self.online:
                    break
                continue
            if expect is not None and len(self.online) >= expect:
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
            if leaf == "ack":
                self._note_unverified_ack(device, payload)
            return
        if report.get("device") != device:
            self.bad_reports += 1
            return
        if leaf == "status":
            groups = report.get("groups")
            if groups is not None:
                self.reported_groups[device] = list(groups)
            if not self.authoritative and (groups is not None or device not in self.inventory):
                self.inventory[device] = list(groups or [])
            self.online[device] = bool(report.get("online"))
            self._note_guard_seq(device, report.get("extra"))
        elif leaf == "ack":
            outcome = self._waiting.get(report.get("id"))
            if outcome is not None and device in outcome.devices:
                self._take_ack(outcome, device, report)

    def _note_unverified_ack(self, device, payload):
        """An ack naming one of our commands that our fleet key cannot verify: the
        device holds a key of another fleet key (ours is wrong), or someone forged it."""
        try:
            claimed = P.decode_report(payload, None, "ack", device)
        except P.ProtocolError:
            return
        outcome = self._waiting.get(claimed.get("id"))
        if outcome is not None and device in outcome.devices and device not in outcome.acks:
            outcome.unverified[device] = claimed.get("reason") or claimed.get("result")

    def _note_guard_seq(self, device, extra):
        seq = extra.get("guard_seq") if isinstance(extra, dict) else None
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= P.MAX_SEQ:
            self.guard_seqs[device] = seq

    def next_seq(self, devices=None):
        """Two fresh numbers from our own sequence (the command, then its desired state).

        `devices` is accepted for old callers and ignored: what a device reports
        never moves the operator's sequence (see tools/operator_seq.py).
        """
        try:
            return self.seq.reserve(2)
        except SeqError as exc:
            raise OperatorError(str(exc)) from None

    def _take_ack(self, outcome, device, ack):
        if ack.get("id") == outcome.command_id and device not in outcome.acks:
            outcome.acks[device] = ack  # the first ack counts; QoS 1 may repeat it
            outcome.unverified.pop(device, None)

    # -- publishing --------------------------------------------------------
    def publish(self, topic, payload, retain=False, timeout=10.0):
        """Publish at QoS 1 and wait for the broker's PUBACK; retried across a reconnect.

        Raises OperatorError when the broker refuses it (MQTT 5 reason code, e.g.
        the ACL: "Not authorized") or when no PUBACK comes within `timeout`.
        """
        if len(payload) > P.MAX_PAYLOAD:
            raise OperatorError(f"message of {len(payload)} bytes exceeds the "
                                f"{P.MAX_PAYLOAD}-byte limit: target groups, not all")
        deadline = time.monotonic() + timeout
        mid = None
        while mid is None:
            if not self.loop.run_until(lambda: self.link.connected,
                                       max(0.0, deadline - time.monotonic())):
                raise OperatorError(f"broker link down, cannot publish to {topic}: "
                                    f"{self.link.last_error}")
            try:
                mid = self.link.publish(topic, payload, qos=1, retain=retain, track=True)
            except MqttNotConnected:
                continue  # dropped between the check and the call: wait for the reconnect
        results = self.link.publish_results
        # paho re-sends an unacknowledged QoS 1 message after a reconnect itself.
        if not self.loop.run_until(lambda: results.get(mid) is not None,
                                   max(0.0, deadline - time.monotonic())):
            results.pop(mid, None)
            raise OperatorError(f"the broker did not acknowledge the publish to {topic}")
        verdict = results.pop(mid)
        if verdict:
            raise OperatorError(f"the broker refused the publish to {topic} ({verdict}): this "
                                f"login may not publish for fleet {self.fleet}; use the "
                                "operator login")

    # -- commands ----------------------------------------------------------
    def known(self, device):
        """Seen in this fleet: a verified status (the inventory alone says nothing about
        the fleet name being right)."""
        return device in self.online

    def devices_for(self, target, devices=None, expect=None):
        if devices:
            for d in devices:
                P.validate_id(d)
            return sorted(set(devices))
        kind, name = P.parse_target(target)
        if kind == "device" and expect in (None, 1):
            return [self._target_device(name)]
        self.discover(expect=expect)
        found = P.select_devices(target, self.inventory)
        if not found:
            raise OperatorError(f"no devices known for target {target} in fleet {self.fleet}: "
                                "check the fleet name (--fleet), or pass --devices / --expect "
                                "(devices announce themselves with a retained status)")
        return found

    def _target_device(self, name):
        """`--target device:NAME` names a device of this fleet, or is refused at once (a
        typo must not wait out the timeout): one the inventory lists (it may be offline
        or not booted yet: then it is silent, exit 3), or without an inventory one that
        has reported (a retained status)."""
        if self.authoritative:
            if name not in self.inventory:
                raise OperatorError(f"device {name} is not in the fleet inventory: check the "
                                    "id, or add the device to the inventory (devices.json) "
                                    "and rerun fleetstage broker-setup")
            return name
        self.discover(device=name)
        if not self.known(name):
            raise OperatorError(f"no device {name} has reported in fleet {self.fleet}: check "
                                "the id and the fleet name (--fleet), or pass --devices "
                                f"{name} to send to it anyway")
        return name

    def send(self, op, args, target, devices):
        """Publish the signed command (QoS 1); returns the Outcome that collects its acks.

        Up to MAX_MACS devices it is one message on the target's own topic; beyond
        that, one message per hash bucket (tools/bucketing.py), each signed only for
        its own devices, so an emergency rollback of a million devices still fits
        what each device accepts. Every message carries the same id and sequence.
        """
        seq = self.next_seq(devices)
        command_id = P.new_command_id()
        outcome = Outcome(command_id, None, seq, op, args, target, devices)
        self._waiting[command_id] = outcome
        for msg_target, members in addressed(target, devices):
            cmd = P.encode_command(op, args, msg_target, seq, self.plan.hash, self.fleet_key,
                                   devices=members, command_id=command_id,
                                   issued_at=int(time.time()), max_stage=self.plan.max_stage,
                                   fleet=self.fleet, keys=self._keys)
            self.publish(P.cmd_topic(self.fleet, msg_target), cmd)
        return outcome

    def publish_desired(self, outcome, stage, emergency=False, reason=None):
        """Retain the desired state for every device that did not refuse the command.

        Published after the acks: a device that refused (not_ready, quarantined)
        finds no signature for itself and stays where it is, as its ack said;
        a silent (offline) device converges from it when it comes back. Nothing
        is retained when an ack did not verify (our key is not the fleet's) or
        when no targeted device is known at all (a typo in a target or a fleet
        name must not leave a retained message behind).
        """
        if outcome.unverified:
            outcome.desired_note = ("nothing retained: acks from {} do not verify with this "
                                    "fleet key (check --key and --fleet)".format(
                                        ", ".join(sorted(outcome.unverified))))
            return None
        devices = [d for d in outcome.devices if d not in outcome.rejected]
        if outcome.devices and not devices:
            outcome.desired_note = "nothing retained: every targeted device refused the command"
            return None
        if not any(self.known(d) or d in outcome.acks for d in devices):
            outcome.desired_note = ("nothing retained: no targeted device is known in fleet "
                                    f"{self.fleet} (check the fleet name and the target)")
            return None
        outcome.desired_devices = devices
        if not devices:
            return None
        outcome.desired_id = P.new_command_id()
        for msg_target, members in addressed(outcome.target, devices):
            payload = P.encode_desired(msg_target, stage, outcome.seq + 1, self.plan.hash,
                                       self.fleet_key, devices=members, emergency=emergency,
                                       reason=reason, command_id=outcome.desired_id,
                                       issued_at=int(time.time()),
                                       max_stage=self.plan.max_stage, fleet=self.fleet,
                                       keys=self._keys)
            topic = P.desired_topic(self.fleet, msg_target)
            self.publish(topic, payload, retain=True)
            try:
                self.seq.ledger.record(topic, outcome.desired_id, outcome.seq + 1, payload)
            except (SeqError, OSError) as exc:  # retained already; only the replay check
                print(f"fleetstage: cannot record the desired state: {exc}", file=sys.stderr)
        if outcome.missing:
            outcome.desired_note = (f"desired state {outcome.desired_id} retained: silent "
                                    "devices converge when they reconnect")
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


def connect_failure(link):
    """One line for a link that did not connect."""
    err = link.last_error
    host = f"{link.config.host}:{link.config.port}"
    if err is None:
        return f"cannot connect to the broker at {host}: no answer"
    text = str(err)
    if isinstance(err, MqttConnectError) and err.refusal and err.rc in NOT_AUTHORISED:
        return f"broker at {host}: not authorised (check --username and --password-file)"
    if "Errno" in text or "refused" in text.lower() or "timed out" in text:
        return f"cannot connect to the broker at {host} (is it running, is the port right?)"
    return f"cannot connect to the broker at {host}: {text}"


# ---------------------------------------------------------------- the CLI

def addressed(target, devices):
    """(message target, devices signed for) for one command: the target itself while its
    MAC table fits MAX_MACS entries, else one hash-bucket message per bucket prefix."""
    devices = list(devices)
    if len(devices) <= MAX_MACS:
        return [(target, devices)]
    return plan_addressing(devices, Buckets(devices))


def _print_table(outcome):
    print(f"command {outcome.command_id} seq {outcome.seq}: {outcome.op} {outcome.args} "
          f"-> {outcome.target}")
    print("  {:<28} {:<10} {:<16} {}".format("DEVICE", "RESULT", "REASON", "DETAIL"))
    for d in outcome.devices:
        ack = outcome.acks.get(d)
        if ack is None and d in outcome.unverified:
            print("  {:<28} {:<10} {:<16} {}".format(d, "?", "unverified",
                                                    "its ack does not verify with this key"))
            continue
        if ack is None:
            print("  {:<28} {:<10} {:<16} {}".format(d, "-", "timeout", "no ack"))
            continue
        detail = ack.get("detail")
        if isinstance(detail, list):
            detail = "; ".join(str(x) for x in detail)
        print("  {:<28} {:<10} {:<16} {}".format(d, str(ack.get("result")),
                                                str(ack.get("reason") or ""), detail or ""))
    n = len(outcome.devices)
    print(f"{n - len(outcome.missing) - len(outcome.rejected) - len(outcome.unverified)}/{n} "
          f"applied, {len(outcome.rejected)} rejected, {len(outcome.unverified)} unverified, "
          f"{len(outcome.missing)} silent")
    if outcome.desired_note:
        print(outcome.desired_note)


def read_secret(path, what="--password-file"):
    if not path:
        return None
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        raise OperatorError(f"cannot read {what} {path}: {exc.strerror}") from None


def read_fleet_key(path):
    """The fleet key from a key file; OperatorError (one line) for anything else."""
    if not path:
        raise OperatorError("no fleet key: pass --key FILE or set it in a profile "
                            "(fleetstage profile add ...)")
    try:
        with open(path, "rb") as f:
            info = P.parse_key_file(f.read())
    except OSError as exc:
        raise OperatorError(f"cannot read the key file {path}: {exc.strerror}") from None
    except P.ProtocolError as exc:
        raise OperatorError(f"{path} is not a fleetstage key file: {exc}") from None
    if info.kind == "device":
        raise OperatorError(f"{path} is a device key; the operator signs with the fleet key")
    return info.key


def read_inventory(path):
    """{device: [groups]} from the fleet inventory (the devices.json of broker-setup),
    checked as broker-setup checks it."""
    if not path:
        return None
    try:
        devices = load_inventory(path)
    except SetupError as exc:
        raise OperatorError(f"the inventory: {exc}") from None
    return {device: sorted(spec.get("groups", [])) for device, spec in devices.items()}


def resolve_args(args):
    """Apply the profile, then check what every operator command needs; returns args."""
    try:
        profile.apply(args)
    except profile.ProfileError as exc:
        raise OperatorError(str(exc)) from None
    args.fleet = args.fleet or os.environ.get("FLEETSTAGE_FLEET")
    if not args.broker:
        raise OperatorError("no broker: pass --broker URL or use a profile "
                            "(fleetstage profile add NAME --broker ... --fleet ... --key ...)")
    if not args.fleet:
        raise OperatorError("--fleet is required (or a profile, or FLEETSTAGE_FLEET)")
    try:
        P.validate_id(args.fleet, "fleet")
    except P.ProtocolError as exc:
        raise OperatorError(str(exc)) from None
    return args


def seq_store(args):
    return SeqStore(args.state_dir or default_state_dir(), args.fleet)


def client_from_args(args):
    resolve_args(args)
    key = read_fleet_key(args.key)
    try:
        plan = Plan.load(args.plan, FileSystem()) if args.plan else None
    except (OSError, ValueError, PlanError) as exc:
        raise OperatorError(f"cannot load the plan {args.plan}: {exc}") from None
    try:
        return OperatorClient(args.broker, args.fleet, key, plan=plan, username=args.username,
                              password=read_secret(args.password_file), ca=args.ca,
                              cert=args.cert, client_key=args.client_key,
                              tls_insecure=args.tls_insecure, seq=seq_store(args),
                              inventory=read_inventory(args.inventory))
    except MqttError as exc:
        raise OperatorError(str(exc)) from None


def _run(args):
    try:
        client = client_from_args(args)
        client.connect(min(args.timeout, 10.0))
    except (OperatorError, MqttError, P.ProtocolError) as exc:
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
    except P.CommandRejected as exc:
        print(f"fleetstage {args.command}: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    except (OperatorError, MqttError, P.ProtocolError) as exc:
        print(f"fleetstage {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        client.close()
    return report_outcome(args, outcome)


def report_outcome(args, outcome) -> int:
    """A command's outcome as --json or the ack table; its exit code."""
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2, sort_keys=True, default=repr))
    else:
        _print_table(outcome)
    return outcome.exit_code()


def add_connection_options(p):
    """The options client_from_args reads: profile, broker, fleet key, fleet, plan,
    credentials, TLS, inventory, state dir. Every operator-side command takes these;
    any left out comes from the profile (tools/profile.py)."""
    profile.add_profile_option(p)
    p.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (operator listener)")
    p.add_argument("--key", help="the fleet key file")
    p.add_argument("--fleet", help="fleet name (default: the profile's, or $FLEETSTAGE_FLEET)")
    p.add_argument("--plan", help="plan file (default: the built-in runbook plan)")
    p.add_argument("--username", help="broker login (the operator's)")
    p.add_argument("--password-file", help="file holding the broker password")
    p.add_argument("--ca", help="CA certificate for mqtts://")
    p.add_argument("--cert", help="client certificate (with --client-key)")
    p.add_argument("--client-key")
    p.add_argument("--tls-insecure", action="store_true", help="skip the TLS host-name check")
    p.add_argument("--inventory", help="fleet inventory JSON (authoritative groups)")
    p.add_argument("--state-dir", help="where this operator keeps its sequence numbers "
                   "(default ~/.local/state/fleetstage)")


def _common(p, target_required=False):
    """target_required: no default target (a command that changes devices one by one
    names what it changes; publish-stage and the rollbacks default to all)."""
    if target_required:
        p.add_argument("--target", required=True, help="all | group:NAME | device:ID")
    else:
        p.add_argument("--target", default="all", help="all | group:NAME | device:ID")
    add_connection_options(p)
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.add_argument("--timeout", type=number_at_least(0, float, " seconds", strict=True),
                   default=30.0, help="seconds to wait for acks")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--expect", type=number_at_least(1), help="wait until N devices are known")
    who.add_argument("--devices", type=_device_ids,
                     help="comma-separated device ids to sign for and wait on")
    p.set_defaults(handler=_run)


def _device_ids(text):
    """An argparse type: a comma-separated list that names at least one device (an empty
    one would otherwise mean "every device"); returned as given."""
    if not any(d.strip() for d in text.split(",")):
        raise argparse.ArgumentTypeError("must name at least one device id (a,b,...)")
    return text


def _stage(max_stage=P.MAX_STAGE, low=0):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a stage number") from None
        if not low <= value <= max_stage:
            raise argparse.ArgumentTypeError(f"stage must be {low}..{max_stage}")
        return value
    return parse


def _reason(text):
    """An argparse type: the emergency rollback's reason, 1..MAX_REASON_LEN characters (what
    the encoder and every device accept), refused before connecting."""
    if not 1 <= len(text) <= P.MAX_REASON_LEN:
        raise argparse.ArgumentTypeError(
            f"must be 1..{P.MAX_REASON_LEN} characters, not {len(text)}")
    return text


def number_at_least(low, kind=int, unit="", strict=False):
    """An argparse type: a finite number >= low (> low when strict; a negative or NaN is
    a mistake)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > low if strict else value >= low) or value == float("inf"):
            op = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be a number {op} {low}{unit}, not {text}")
        return value
    return parse


def _seq(args):
    """fleetstage seq: show this operator's last sequence number, or move it past N."""
    try:
        profile.apply(args)
        args.fleet = args.fleet or os.environ.get("FLEETSTAGE_FLEET")
        if not args.fleet:
            raise OperatorError("--fleet is required (or a profile, or FLEETSTAGE_FLEET)")
        store = seq_store(args)
        last = store.raise_to(args.after) if args.after is not None else store.last()
    except (OperatorError, SeqError, profile.ProfileError) as exc:
        print(f"fleetstage seq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"fleet {args.fleet}: last sequence number {last} ({store.path})")
    return EXIT_OK


def register(sub):
    p = sub.add_parser("seq", help="this operator's sequence number (show, or --after N)")
    profile.add_profile_option(p)
    p.add_argument("--fleet")
    p.add_argument("--state-dir")
    p.add_argument("--after", type=number_at_least(0), help="move past N (a guard another "
                   "operator's fast clock left ahead); refused beyond 30 days past this clock")
    p.set_defaults(handler=_seq)
    p = sub.add_parser("publish-stage", help="move devices to stage N (signed, waits for acks)")
    p.add_argument("stage", type=_stage(low=1))
    _common(p)
    p = sub.add_parser("rollback", help="roll devices back to stage N")
    p.add_argument("stage", type=_stage(P.MAX_STAGE - 1))
    _common(p)
    p = sub.add_parser("emergency-rollback", help="every targeted device straight to stage 0")
    p.add_argument("--reason", required=True, type=_reason,
                   help=f"why (1..{P.MAX_REASON_LEN} characters; in the devices' history)")
    _common(p)
