"""The wire protocol between the operator and an agent: topics, signed commands
and desired states, the replay rules, device reports and key files.

Owns: every byte format on the MQTT link and every rule that decides whether an
inbound command may be applied (signature, replay, sequence, plan, shape).
Must never: do I/O (bytes, keys and `now` are handed in; the runtime sends and
stores), change agent state (it returns decisions and store changes), or raise
anything but a ProtocolError subclass for bad input. Any other exception type
escaping decode_command is a bug (the fuzz tests hold it to that), except
MemoryError on a board handed a payload above its RAM: pass it a max_payload
it can hold.

This module holds commands, desired states and the replay guard, and is the
front door for the rest: it re-exports agent.wire (constants, reason codes,
errors), agent.addressing (ids, targets, topics), agent.keys and
agent.reports, so callers write `protocol.X` for all of them.

API (all names below are public)
  ids, targets   validate_id(value, what) -> value          BadId
                 parse_target(text) -> (kind, name)          BadTarget; kind all|group|device
                 make_target(kind, name=None) -> "all" | "group:G" | "device:ID"
                 target_matches(target, device_id, groups) -> bool
                 select_devices(target, inventory) -> sorted ids  (inventory {id: [groups]})
  topics         cmd_topic(fleet, target)  desired_topic(fleet, target)
                 device_topic(fleet, device_id, leaf)      leaf in DEVICE_LEAVES
                 device_wildcard(fleet, leaf)               operator: .../device/+/<leaf>
                 parse_topic(topic) -> (fleet, channel, target, leaf)  BadTopic
                 subscriptions(fleet, device_id, groups) -> [(topic, qos)]
  keys           new_fleet_key()  derive_device_key(fleet_key, device_id)
                 format_key_file(key, kind, device_id=None) -> bytes
                 parse_key_file(data) -> KeyInfo(.kind, .key, .device_id)   KeyFileError
                 agent_key(info, device_id) -> (device_key, warning or None)
  commands       new_command_id()  next_seq(last_seq, now_wall)
                 encode_command(op, args, target, seq, plan_hash, fleet_key, devices=None,
                                command_id=None, issued_at=0, max_stage=MAX_STAGE) -> bytes
                 decode_command(payload, key, device_id, groups=(), plan_hash=None,
                                max_stage=MAX_STAGE, insecure=False,
                                max_payload=MAX_PAYLOAD) -> Command    CommandRejected
                 encode_desired(target, stage, seq, plan_hash, fleet_key, devices=None,
                                emergency=False, reason=None, ...) -> bytes
                 decode_desired(...same as decode_command...) -> DesiredState
                 seal(env, kind, fleet_key, devices) -> bytes  (no validation; for tests)
                 pick_desired(states) -> the winning DesiredState or None
                 DesiredState.action(current_stage) -> (op, args) or None
                 control_call(op, args) -> (MigrationControl method name, [positional args])
                 ReplayGuard  (see its docstring: check / record / commit / from_store)
  reports        encode_ack(command_id, result, reason=None, detail=None, state=None, ...)
                 encode_status(device_id, stage, flags, ...)  encode_offline_status(device_id)
                 encode_health(device_id, metrics)  encode_event(device_id, name, payload)
                 decode_report(payload, key=None, kind=None, device_id=None,
                               fleet_key=None) -> dict                      ReportError

Wire format of a command or desired state: a msgpack map {"v": 1, "body": B,
"sigs": T}. B is the canonical msgpack (firmware_shim.codec.canonical) of the
envelope {v, kind, id, seq, plan, target, op, args, issued_at} (desired: stage,
emergency, reason instead of op, args), at most MAX_BODY bytes. T is a table of
24-byte entries sorted by tag: tag = SHA-256("fleetstage-tag:" + device_id)[:8],
then MAC = HMAC-SHA256(K_d, "fleetstage-cmd" + zero byte + B)[:16]
("fleetstage-desired" + zero byte for desired states). A device finds its
entry by binary search and checks the MAC over the exact bytes B before it
parses B: nothing unauthenticated is interpreted (except the id, peeked for
the ack of a rejection), and a broadcast costs a device one HMAC, not an
unpack of the whole table.

Keys and threat model. `fleetstage keygen` makes a 32-byte fleet key that only
the operator holds. Each device holds only its device key,
K_d = HMAC-SHA256(fleet_key, "fleetstage-device:" + device_id). A broadcast
(all, group) carries one MAC per device the operator knows to be in the target;
the operator computes them all from the fleet key. So a device key leaked from
device A forges nothing that device B accepts: B checks only its own entry,
under a key A cannot derive. The price is 24 bytes per targeted device (1,000
devices: 24 KB); MAX_PAYLOAD bounds it, and large fleets address groups. A
device the operator did not know of when signing finds no entry and rejects
the message (bad_signature) until it is re-signed. Devices sign their own
reports (acks, status, health, events) with K_d, so the operator can tell
which device spoke; the broker ACL is the first line, the MAC the second. Not
covered: a stolen fleet key forges everything; a key file of kind "fleet" on a
device works (agent_key derives K_d from it) but makes that device a
fleet-wide forger, so agent_key returns a warning to log. MACs hide nothing.

Sequence numbers are one fleet-wide operator sequence shared by commands and
desired states (next_seq makes them from the wall clock in ms, so several
operator machines with synced clocks stay ordered). A device applies a message
only if its seq is above the highest it has applied; that single rule makes an
emergency rollback outrank everything issued before it, whether queued or
retained, and makes a later decision (higher seq) win over an earlier one.
Limits: a device whose store was wiped (last seq 0) accepts any validly signed
old message once; a fresh retained desired state (higher seq) puts it right.

Runtime recipe. On a cmd topic: cmd = decode_command(...); r = guard.check(cmd);
"duplicate" -> ack DUPLICATE; else name, pos = control_call(cmd.op, cmd.args);
changes = guard.record(cmd); getattr(control, name)(*pos, extra_changes=changes);
guard.commit(changes); ack APPLIED. CommandRejected -> ack REJECTED with .reason
(NotReady -> NOT_READY with its reasons, Quarantined -> QUARANTINED). On a
desired topic: an empty payload means cleared; gather what arrives just after
subscribing and apply pick_desired() of it (so a stale broad state does not
flash through), via .action(current_stage) and the same guard; stale and
duplicate desired states are expected on every reconnect and need no ack.
An operator's emergency rollback should also be published as a retained
desired state (emergency=True), so devices that were offline obey it too.
"""
import hashlib

from agent.addressing import (  # noqa: F401 - re-exported
    cmd_topic,
    desired_topic,
    device_topic,
    device_wildcard,
    make_target,
    parse_target,
    parse_topic,
    select_devices,
    subscriptions,
    target_matches,
    validate_id,
)
from agent.keys import (  # noqa: F401 - re-exported
    KeyInfo,
    agent_key,
    derive_device_key,
    format_key_file,
    new_fleet_key,
    parse_key_file,
)
from agent.reports import (  # noqa: F401 - re-exported
    decode_report,
    encode_ack,
    encode_event,
    encode_health,
    encode_offline_status,
    encode_status,
)
from agent.wire import (  # noqa: F401 - re-exported
    _CONTROL,
    _DOMAIN,
    _ENTRY_BYTES,
    _FLAG_CHARS,
    _HEX,
    APPLIED,
    BAD_SIGNATURE,
    DEVICE_LEAVES,
    DUPLICATE,
    KEY_BYTES,
    KIND_CMD,
    KIND_DESIRED,
    MAC_BYTES,
    MALFORMED,
    MAX_BODY,
    MAX_FLAG_NAME_LEN,
    MAX_ID_LEN,
    MAX_ISSUED_AT,
    MAX_PAYLOAD,
    MAX_REASON_LEN,
    MAX_SEQ,
    MAX_STAGE,
    NEW,
    NOT_READY,
    NOT_SIGNED_FOR_DEVICE,
    OP_CLEAR_FLAG,
    OP_CLEAR_QUARANTINE,
    OP_EMERGENCY_ROLLBACK,
    OP_MIGRATE,
    OP_ROLLBACK,
    OP_SET_FLAG,
    OPS,
    PREFIX,
    QOS,
    QUARANTINED,
    REASONS,
    RECENT_WINDOW,
    REJECTED,
    REPLAYED,
    REPORT_KINDS,
    RESULTS,
    STALE_SEQUENCE,
    TAG_BYTES,
    UNKNOWN_OP,
    VERSION,
    WRONG_PLAN,
    BadId,
    BadTarget,
    BadTopic,
    CommandRejected,
    GuardStateError,
    KeyFileError,
    ProtocolError,
    ReportError,
    _hexstr,
)
from firmware_shim import codec
from firmware_shim.crypto import compare_digest, hmac_sha256, random_bytes

# -------------------------------------------------------------------- messages

class Command:
    """A verified command. `.digest` (hex) identifies its signed content."""

    kind = KIND_CMD

    def __init__(self, command_id, seq, plan, target, op, args, issued_at, digest):
        self.id = command_id
        self.seq = seq
        self.plan = plan
        self.target = target
        self.op = op
        self.args = args
        self.issued_at = issued_at
        self.digest = digest

    def __repr__(self):
        return f"Command({self.id} seq={self.seq} {self.op} {self.args!r} -> {self.target})"


class DesiredState(Command):
    """A verified retained desired state; op is "desired", args mirror the fields."""

    kind = KIND_DESIRED

    def __init__(self, command_id, seq, plan, target, stage, emergency, reason, issued_at,
                 digest):
        args = {"stage": stage, "emergency": emergency, "reason": reason}
        Command.__init__(self, command_id, seq, plan, target, "desired", args, issued_at, digest)
        self.stage = stage
        self.emergency = emergency
        self.reason = reason

    def action(self, current_stage):
        """(op, args) that converges a device at current_stage, or None if it is there."""
        if self.emergency:
            return (OP_EMERGENCY_ROLLBACK, {"reason": self.reason})
        if self.stage > current_stage:
            return (OP_MIGRATE, {"stage": self.stage})
        if self.stage < current_stage:
            return (OP_ROLLBACK, {"stage": self.stage})
        return None


def pick_desired(states):
    """The desired state that wins among those received together: the highest seq.

    One fleet-wide seq makes this the operator's latest decision; an emergency
    wins a tie (only possible between two issuers that collided).
    """
    best = None
    for s in states:
        if s is None:
            continue
        if best is None or (s.seq, s.emergency) > (best.seq, best.emergency):
            best = s
    return best


def control_call(op, args):
    """(MigrationControl method name, positional args) for a verified op/args, e.g.
    getattr(control, name)(*pos, extra_changes=guard.record(cmd))."""
    name, arg_names = _CONTROL[op]
    return name, [args[a] for a in arg_names]


def new_command_id():
    return _hexstr(random_bytes(8))


def next_seq(last_seq, now_wall):
    """A fleet-wide sequence number: wall-clock ms, and always above last_seq."""
    return max(int(last_seq) + 1, int(now_wall * 1000))


_CMD_FIELDS = ("v", "kind", "id", "seq", "plan", "target", "op", "args", "issued_at")
_DESIRED_FIELDS = ("v", "kind", "id", "seq", "plan", "target", "stage", "emergency", "reason",
                   "issued_at")


def _malformed(detail, command_id=None):
    raise CommandRejected(MALFORMED, detail, command_id)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_stage(value, low, high, command_id):
    if not _is_int(value) or not low <= value <= high:
        _malformed(f"stage must be an integer {low}..{high}", command_id)


def _check_text(value, what, max_len, command_id, required=True):
    if value is None and not required:
        return
    if not isinstance(value, str) or not value or len(value) > max_len:
        _malformed(f"{what} must be a string of 1..{max_len} characters", command_id)


def _check_flag_name(value, command_id):
    _check_text(value, "flag name", MAX_FLAG_NAME_LEN, command_id)
    for ch in value:
        if ch not in _FLAG_CHARS:
            _malformed("flag name must be [a-z0-9_]", command_id)


def _check_args(op, args, max_stage, command_id):
    """Exact arguments of each op, types and ranges; unknown op -> unknown_op."""
    expected = {
        OP_MIGRATE: ("stage",), OP_ROLLBACK: ("stage",), OP_EMERGENCY_ROLLBACK: ("reason",),
        OP_SET_FLAG: ("name", "value"), OP_CLEAR_FLAG: ("name",), OP_CLEAR_QUARANTINE: (),
    }.get(op)
    if expected is None:
        raise CommandRejected(UNKNOWN_OP, f"unknown op {op[:40]!r}", command_id)
    if not isinstance(args, dict):
        _malformed("args must be a map", command_id)
    for k in args:
        if k not in expected:
            _malformed(f"unexpected argument {str(k)[:40]!r} for {op}", command_id)
    for k in expected:
        if k not in args:
            _malformed(f"{op} needs argument {k!r}", command_id)
    if op == OP_MIGRATE:
        _check_stage(args["stage"], 1, max_stage, command_id)
    elif op == OP_ROLLBACK:
        _check_stage(args["stage"], 0, max_stage - 1, command_id)
    elif op == OP_EMERGENCY_ROLLBACK:
        _check_text(args["reason"], "reason", MAX_REASON_LEN, command_id)
    elif op in (OP_SET_FLAG, OP_CLEAR_FLAG):
        _check_flag_name(args["name"], command_id)
        if op == OP_SET_FLAG and not isinstance(args["value"], bool):
            _malformed("flag value must be true or false", command_id)


def _check_common(env, kind, fields, command_id):
    """Fields every signed envelope has; raises malformed."""
    for k in env:
        if k not in fields:
            _malformed(f"unknown field {str(k)[:40]!r}", command_id)
    for k in fields:
        if k not in env:
            _malformed(f"missing field {k!r}", command_id)
    if env["v"] != VERSION or isinstance(env["v"], bool):
        _malformed("unsupported protocol version", command_id)
    if env["kind"] != kind:
        _malformed(f"expected a {kind} message", command_id)
    seq = env["seq"]
    if not _is_int(seq) or not 1 <= seq <= MAX_SEQ:
        _malformed("seq must be an integer 1..2**63-1", command_id)
    _check_text(env["plan"], "plan hash", 128, command_id)
    try:
        parse_target(env["target"])
    except BadTarget as exc:
        _malformed(str(exc), command_id)
    at = env["issued_at"]
    if not (_is_int(at) or isinstance(at, float)) or not 0 <= at <= MAX_ISSUED_AT:
        _malformed("issued_at must be a number 0..2**53", command_id)


def _check_command_id(value):
    if not isinstance(value, str) or len(value) != 16 or any(c not in _HEX for c in value):
        _malformed("id must be 16 lowercase hex characters")
    return value


def _check_desired(env, max_stage, command_id):
    _check_stage(env["stage"], 0, max_stage, command_id)
    if not isinstance(env["emergency"], bool):
        _malformed("emergency must be true or false", command_id)
    _check_text(env["reason"], "reason", MAX_REASON_LEN, command_id, required=False)
    if env["emergency"] and (env["stage"] != 0 or env["reason"] is None):
        _malformed("an emergency desired state has stage 0 and a reason", command_id)


def _validate(env, kind, max_stage):
    """Full check of an envelope (without sigs); returns the command id."""
    fields = _CMD_FIELDS if kind == KIND_CMD else _DESIRED_FIELDS
    command_id = _check_command_id(env.get("id"))
    _check_common(env, kind, fields, command_id)
    if kind == KIND_CMD:
        if not isinstance(env["op"], str):
            _malformed("op must be a string", command_id)
        _check_args(env["op"], env["args"], max_stage, command_id)
    else:
        _check_desired(env, max_stage, command_id)
    return command_id


def _mac(key, kind, body):
    return hmac_sha256(key, _DOMAIN[kind] + body)[:MAC_BYTES]


def device_tag(device_id):
    """The 8 bytes that index a device's entry in a MAC table (public, not secret)."""
    return hashlib.sha256(b"fleetstage-tag:" + validate_id(device_id).encode()).digest()[:TAG_BYTES]


def seal(env, kind, fleet_key, devices):
    """Wrap an envelope dict for the wire WITHOUT validating it (encode_* validate
    first; tests use this to reach the checks behind the MAC). fleet_key None:
    unsigned. devices: ids to add a MAC for."""
    body = codec.canonical(env)
    outer = {"v": VERSION, "body": body}
    if fleet_key is not None:
        entries = sorted(device_tag(d) + _mac(derive_device_key(fleet_key, d), kind, body)
                         for d in devices)
        outer["sigs"] = b"".join(entries)
    return codec.packb(outer)


def _encode(env, kind, fleet_key, devices, max_stage):
    _validate(env, kind, max_stage)
    body_len = len(codec.canonical(env))
    if body_len > MAX_BODY:
        _malformed(f"signed body of {body_len} bytes exceeds {MAX_BODY}")
    if fleet_key is not None:
        tkind, tname = parse_target(env["target"])
        if devices is None:
            if tkind != "device":
                raise ProtocolError("a broadcast needs the list of devices to sign for")
            devices = [tname]
        if not devices:
            raise ProtocolError("no devices to sign for")
    return seal(env, kind, fleet_key, devices)


def encode_command(op, args, target, seq, plan_hash, fleet_key, devices=None, command_id=None,
                   issued_at=0, max_stage=MAX_STAGE):
    """Signed command bytes. fleet_key None makes an unsigned one (insecure mode only).

    devices: the ids to sign for (select_devices(target, inventory)); optional for
    a device target. Raises CommandRejected for what the agent would refuse.
    """
    env = {"v": VERSION, "kind": KIND_CMD, "id": command_id or new_command_id(), "seq": seq,
           "plan": plan_hash, "target": target, "op": op, "args": args,
           "issued_at": issued_at}
    return _encode(env, KIND_CMD, fleet_key, devices, max_stage)


def encode_desired(target, stage, seq, plan_hash, fleet_key, devices=None, emergency=False,
                   reason=None, command_id=None, issued_at=0, max_stage=MAX_STAGE):
    """Signed desired-state bytes (publish retained on desired_topic(fleet, target))."""
    env = {"v": VERSION, "kind": KIND_DESIRED, "id": command_id or new_command_id(),
           "seq": seq, "plan": plan_hash, "target": target, "stage": stage,
           "emergency": emergency, "reason": reason, "issued_at": issued_at}
    return _encode(env, KIND_DESIRED, fleet_key, devices, max_stage)


def _unwrap(payload, max_payload):
    """Outer map -> (body bytes, sigs bytes or None); raises malformed."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        _malformed("payload must be bytes")
    if len(payload) > max_payload:
        _malformed(f"payload of {len(payload)} bytes exceeds {max_payload}")
    if not len(payload):
        _malformed("empty payload")
    try:
        outer = codec.unpackb(bytes(payload))
    except codec.CodecError as exc:
        _malformed(str(exc)[:120])
    if not isinstance(outer, dict):
        _malformed("payload is not a map")
    for k in outer:
        if k not in ("v", "body", "sigs"):
            _malformed(f"unknown field {str(k)[:40]!r}")
    if outer.get("v") != VERSION or isinstance(outer.get("v"), bool):
        _malformed("unsupported protocol version")
    body, sigs = outer.get("body"), outer.get("sigs")
    if not isinstance(body, bytes) or not body:
        _malformed("body must be non-empty bytes")
    if len(body) > MAX_BODY:
        _malformed(f"signed body of {len(body)} bytes exceeds {MAX_BODY}")
    if sigs is not None and (not isinstance(sigs, bytes) or len(sigs) % _ENTRY_BYTES):
        _malformed(f"sigs must be bytes in entries of {_ENTRY_BYTES}")
    return body, sigs


def _macs_for(sigs, tag):
    """Candidate MACs under `tag` in a table sorted by tag (binary search)."""
    n = len(sigs) // _ENTRY_BYTES
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        at = mid * _ENTRY_BYTES
        if sigs[at:at + TAG_BYTES] < tag:
            lo = mid + 1
        else:
            hi = mid
    found = []
    while lo < n and len(found) < 4:  # equal tags: a 64-bit collision, or junk
        at = lo * _ENTRY_BYTES
        if sigs[at:at + TAG_BYTES] != tag:
            break
        found.append(sigs[at + TAG_BYTES:at + _ENTRY_BYTES])
        lo += 1
    return found


def _peek_id(body):
    """The id of a body that failed its MAC, for the ack; None if unreadable."""
    try:
        env = codec.unpackb(body)
        return _check_command_id(env.get("id"))
    except (codec.CodecError, CommandRejected, AttributeError):
        return None


def _verify(body, sigs, kind, key, device_id, insecure):
    """Checks this device's MAC over the body bytes, before the body is parsed."""
    if not sigs:
        if insecure:
            return
        raise CommandRejected(BAD_SIGNATURE, "unsigned", _peek_id(body))
    if key is None:
        if insecure:
            return
        raise CommandRejected(BAD_SIGNATURE, "no key to verify with", _peek_id(body))
    candidates = _macs_for(sigs, device_tag(device_id))
    if not candidates:
        raise CommandRejected(BAD_SIGNATURE, NOT_SIGNED_FOR_DEVICE, _peek_id(body))
    want = _mac(key, kind, body)
    for mac in candidates:
        if compare_digest(mac, want):
            return
    raise CommandRejected(BAD_SIGNATURE, "signature does not verify", _peek_id(body))


def _decode(payload, kind, key, device_id, groups, plan_hash, max_stage, insecure,
            max_payload):
    body, sigs = _unwrap(payload, max_payload)
    _verify(body, sigs, kind, key, device_id, insecure)
    try:
        env = codec.unpackb(body)
    except codec.CodecError as exc:
        _malformed(str(exc)[:120], _peek_id(body))
    if not isinstance(env, dict):
        _malformed("body is not a map")
    command_id = _validate(env, kind, max_stage)
    if not target_matches(env["target"], device_id, groups):
        _malformed("target {} does not include this device".format(env["target"]), command_id)
    if plan_hash is not None and env["plan"] != plan_hash:
        raise CommandRejected(WRONG_PLAN, "command is for plan " + env["plan"][:16], command_id)
    return env, command_id, _hexstr(hashlib.sha256(body).digest()[:8])


def decode_command(payload, key, device_id, groups=(), plan_hash=None, max_stage=MAX_STAGE,
                   insecure=False, max_payload=MAX_PAYLOAD):
    """Bytes from a cmd topic -> Command, or raises CommandRejected.

    Order of checks (the first failing one names the reason): size and outer
    shape (malformed), this device's MAC over the body bytes (bad_signature;
    unsigned is refused unless insecure), then, on authenticated bytes only,
    the body's fields and op (malformed / unknown_op), target includes this
    device (malformed), plan hash (wrong_plan). Replay and sequence are
    ReplayGuard's job; not_ready / quarantined are the runtime's.
    """
    env, command_id, digest = _decode(payload, KIND_CMD, key, device_id, groups, plan_hash,
                                      max_stage, insecure, max_payload)
    return Command(command_id, env["seq"], env["plan"], env["target"], env["op"],
                   env["args"], env["issued_at"], digest)


def decode_desired(payload, key, device_id, groups=(), plan_hash=None, max_stage=MAX_STAGE,
                   insecure=False, max_payload=MAX_PAYLOAD):
    """Bytes from a desired topic -> DesiredState (same checks as decode_command).

    An empty retained payload means "cleared": the runtime skips it before calling.
    """
    env, command_id, digest = _decode(payload, KIND_DESIRED, key, device_id, groups, plan_hash,
                                      max_stage, insecure, max_payload)
    return DesiredState(command_id, env["seq"], env["plan"], env["target"], env["stage"],
                        env["emergency"], env["reason"], env["issued_at"], digest)


# ---------------------------------------------------------------- replay guard

class ReplayGuard:
    """Duplicate, replay and ordering rules over commands and desired states.

    State: the highest applied seq and the last RECENT_WINDOW applied
    (id, seq, digest) entries, kept in the store under KEY_SEQ / KEY_RECENT.

      check(msg) -> "new" | "duplicate", or raises CommandRejected:
        same id and same content as an applied one     -> "duplicate" (ack, don't apply)
        same id, other content / same seq, other id    -> replayed
        seq <= highest applied (and id unknown)        -> stale_sequence
      record(msg) -> dict of store changes; pass it as extra_changes to the
        control operation so it lands in the same atomic commit; then call
        commit(changes) (only once the store commit succeeded).
    Only applied messages are recorded, so a rejected one (not_ready) may be
    applied when it is delivered again.
    """

    KEY_SEQ = "proto.last_seq"
    KEY_RECENT = "proto.recent"

    def __init__(self, last_seq=0, recent=None, window=RECENT_WINDOW):
        self.last_seq = last_seq
        self.recent = list(recent or [])
        self.window = window

    @classmethod
    def from_store(cls, store, window=RECENT_WINDOW):
        return cls.from_dict({cls.KEY_SEQ: store.get(cls.KEY_SEQ, 0),
                              cls.KEY_RECENT: store.get(cls.KEY_RECENT, [])}, window)

    @classmethod
    def from_dict(cls, state, window=RECENT_WINDOW):
        last_seq = state.get(cls.KEY_SEQ, 0)
        if last_seq is None:
            last_seq = 0
        if not _is_int(last_seq) or not 0 <= last_seq <= MAX_SEQ:
            raise GuardStateError(f"stored {cls.KEY_SEQ} is not a sequence number")
        recent = state.get(cls.KEY_RECENT) or []
        if not isinstance(recent, list):
            raise GuardStateError(f"stored {cls.KEY_RECENT} is not a list")
        kept = []
        for entry in recent:  # an unreadable entry only weakens duplicate detection
            if (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and _is_int(entry[1]) and isinstance(entry[2], str)):
                kept.append(entry)
        return cls(last_seq, kept[-window:], window)

    def state(self):
        return {self.KEY_SEQ: self.last_seq, self.KEY_RECENT: [list(e) for e in self.recent]}

    def check(self, msg):
        for cid, seq, digest in self.recent:
            if cid == msg.id:
                if seq == msg.seq and digest == msg.digest:
                    return DUPLICATE
                raise CommandRejected(REPLAYED, "command id reused with other content", msg.id)
        for cid, seq, _digest in self.recent:
            if seq == msg.seq:
                raise CommandRejected(REPLAYED, f"sequence {seq} already used by {cid}",
                                      msg.id)
        if msg.seq <= self.last_seq:
            raise CommandRejected(STALE_SEQUENCE,
                                  f"seq {msg.seq} <= last applied {self.last_seq}", msg.id)
        return NEW

    def record(self, msg):
        recent = [list(e) for e in self.recent if e[0] != msg.id]
        recent.append([msg.id, msg.seq, msg.digest])
        return {self.KEY_SEQ: max(self.last_seq, msg.seq), self.KEY_RECENT: recent[-self.window:]}

    def commit(self, changes):
        self.last_seq = changes[self.KEY_SEQ]
        self.recent = [list(e) for e in changes[self.KEY_RECENT]]
