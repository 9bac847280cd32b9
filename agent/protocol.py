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

from firmware_shim import codec
from firmware_shim.crypto import compare_digest, hmac_sha256, random_bytes

VERSION = 1
MAX_STAGE = 4  # the default plan's stage count; pass the plan's own to encode/decode
MAX_PAYLOAD = 256 * 1024  # a broadcast signed for ~10,000 devices; boards may pass less
MAX_BODY = 4096  # the signed envelope without its MAC table
MAC_BYTES = 16
TAG_BYTES = 8
_ENTRY_BYTES = TAG_BYTES + MAC_BYTES
KEY_BYTES = 32
MAX_ID_LEN = 64
MAX_REASON_LEN = 200
MAX_FLAG_NAME_LEN = 64
RECENT_WINDOW = 64  # applied command ids remembered for duplicate detection
MAX_SEQ = 2**63 - 1
MAX_ISSUED_AT = 2**53

# Reason codes in a rejected ack. NOT_READY and QUARANTINED come from the
# runtime, which maps MigrationControl's NotReady / Quarantined onto them.
BAD_SIGNATURE = "bad_signature"
REPLAYED = "replayed"
STALE_SEQUENCE = "stale_sequence"
MALFORMED = "malformed"
UNKNOWN_OP = "unknown_op"
WRONG_PLAN = "wrong_plan"
NOT_READY = "not_ready"
QUARANTINED = "quarantined"
REASONS = (BAD_SIGNATURE, REPLAYED, STALE_SEQUENCE, MALFORMED, UNKNOWN_OP, WRONG_PLAN,
           NOT_READY, QUARANTINED)

# Detail of a bad_signature when the MAC table has no entry for this device (the
# operator left it out of a broadcast); a runtime may treat that as "not for us".
NOT_SIGNED_FOR_DEVICE = "no signature for this device"

NEW = "new"  # ReplayGuard.check: not seen before, may be applied
APPLIED = "applied"
DUPLICATE = "duplicate"
REJECTED = "rejected"
RESULTS = (APPLIED, DUPLICATE, REJECTED)

OP_MIGRATE = "migrate"
OP_ROLLBACK = "rollback"
OP_EMERGENCY_ROLLBACK = "emergency_rollback"
OP_SET_FLAG = "set_flag"
OP_CLEAR_FLAG = "clear_flag"
OP_CLEAR_QUARANTINE = "clear_quarantine"
OPS = (OP_MIGRATE, OP_ROLLBACK, OP_EMERGENCY_ROLLBACK, OP_SET_FLAG, OP_CLEAR_FLAG,
       OP_CLEAR_QUARANTINE)
# op -> (MigrationControl method, its positional argument names); see control_call.
_CONTROL = {
    OP_MIGRATE: ("migrate_to_stage", ("stage",)),
    OP_ROLLBACK: ("rollback_to_stage", ("stage",)),
    OP_EMERGENCY_ROLLBACK: ("emergency_rollback", ("reason",)),
    OP_SET_FLAG: ("set_flag_override", ("name", "value")),
    OP_CLEAR_FLAG: ("clear_flag_override", ("name",)),
    OP_CLEAR_QUARANTINE: ("clear_quarantine", ()),
}

KIND_CMD = "cmd"
KIND_DESIRED = "desired"
DEVICE_LEAVES = ("status", "health", "ack", "event")
REPORT_KINDS = ("ack", "status", "health", "event")
PREFIX = "fleetstage"
QOS = 1

# Domain tags keep a MAC made for one kind of message from verifying as another.
_DOMAIN = {KIND_CMD: b"fleetstage-cmd\x00", KIND_DESIRED: b"fleetstage-desired\x00"}
_REPORT_DOMAIN = b"fleetstage-report\x00"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
_FLAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_HEX = frozenset("0123456789abcdef")


class ProtocolError(ValueError):
    """Root of every error this module raises for bad input."""


class BadId(ProtocolError):
    pass


class BadTarget(ProtocolError):
    pass


class BadTopic(ProtocolError):
    pass


class KeyFileError(ProtocolError):
    pass


class ReportError(ProtocolError):
    """A device report (ack, status...) that is malformed or fails its MAC."""


class GuardStateError(ProtocolError):
    """The replay guard's stored state is unusable (never silently reset)."""


class CommandRejected(ProtocolError):
    """An inbound command or desired state refused; `.reason` is in REASONS.

    `.command_id` is the envelope's id when it could be read (for the ack),
    else None. `.detail` is a short string, or a list of strings for not_ready.
    """

    def __init__(self, reason, detail=None, command_id=None):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.command_id = command_id


def _hexstr(data):
    return "".join(f"{b:02x}" for b in data)


# ---------------------------------------------------------------- ids, targets

def validate_id(value, what="device id"):
    """A fleet, group or device name: 1..64 of [A-Za-z0-9._:-] (no / + # or spaces)."""
    if not isinstance(value, str):
        raise BadId(f"{what} must be a string")
    if not value or len(value) > MAX_ID_LEN:
        raise BadId(f"{what} must be 1..{MAX_ID_LEN} characters")
    for ch in value:
        if ch not in _ID_CHARS:
            raise BadId(f"{what} {value!r} has a character outside [A-Za-z0-9._:-]")
    return value


def parse_target(text):
    """"all" -> ("all", None); "group:G" -> ("group", G); "device:ID" -> ("device", ID)."""
    if not isinstance(text, str):
        raise BadTarget("target must be a string")
    if text == "all":
        return ("all", None)
    i = text.find(":")
    kind = text[:i] if i > 0 else ""
    if kind not in ("group", "device"):
        raise BadTarget(f"target {text[:80]!r} is not all, group:NAME or device:ID")
    name = text[i + 1:]
    try:
        validate_id(name, kind + " name" if kind == "group" else "device id")
    except BadId as exc:
        raise BadTarget(str(exc)) from None
    return (kind, name)


def make_target(kind, name=None):
    if kind == "all":
        return "all"
    text = f"{kind}:{name}"
    parse_target(text)
    return text


def target_matches(target, device_id, groups=()):
    kind, name = parse_target(target)
    if kind == "all":
        return True
    if kind == "group":
        return name in groups
    return name == device_id


def select_devices(target, inventory):
    """The ids in inventory ({device_id: groups}) that `target` addresses, sorted."""
    return sorted(d for d in inventory if target_matches(target, d, inventory[d] or ()))


# ---------------------------------------------------------------------- topics

def _target_path(target):
    kind, name = parse_target(target)
    return "all" if kind == "all" else kind + "/" + name


def cmd_topic(fleet, target):
    return "{}/{}/cmd/{}".format(PREFIX, validate_id(fleet, "fleet"), _target_path(target))


def desired_topic(fleet, target):
    return "{}/{}/desired/{}".format(PREFIX, validate_id(fleet, "fleet"), _target_path(target))


def device_topic(fleet, device_id, leaf):
    if leaf not in DEVICE_LEAVES:
        raise BadTopic("device topic leaf must be one of " + ", ".join(DEVICE_LEAVES))
    return "{}/{}/device/{}/{}".format(PREFIX, validate_id(fleet, "fleet"), validate_id(device_id),
                                   leaf)


def device_wildcard(fleet, leaf):
    """What the operator subscribes to for one leaf of every device."""
    if leaf not in DEVICE_LEAVES:
        raise BadTopic("device topic leaf must be one of " + ", ".join(DEVICE_LEAVES))
    return "{}/{}/device/+/{}".format(PREFIX, validate_id(fleet, "fleet"), leaf)


def parse_topic(topic):
    """-> (fleet, channel, target, leaf). channel: cmd | desired | device.

    For cmd/desired, leaf is None; for device topics target is "device:ID".
    """
    if not isinstance(topic, str):
        raise BadTopic("topic must be a string")
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != PREFIX:
        raise BadTopic(f"not a fleetstage topic: {topic[:120]!r}")
    try:
        fleet = validate_id(parts[1], "fleet")
        channel, rest = parts[2], parts[3:]
        if channel in ("cmd", "desired"):
            if rest == ["all"]:
                return (fleet, channel, "all", None)
            if len(rest) == 2 and rest[0] in ("group", "device"):
                return (fleet, channel, make_target(rest[0], rest[1]), None)
        elif channel == "device" and len(rest) == 2 and rest[1] in DEVICE_LEAVES:
            return (fleet, channel, make_target("device", rest[0]), rest[1])
    except (BadId, BadTarget) as exc:
        raise BadTopic(str(exc)) from None
    raise BadTopic(f"not a fleetstage topic: {topic[:120]!r}")


def subscriptions(fleet, device_id, groups=()):
    """The device's cmd and desired topics for all, each of its groups, and itself."""
    targets = ["all"] + [make_target("group", validate_id(g, "group name"))
                         for g in sorted(set(groups))]
    targets.append(make_target("device", device_id))
    out = []
    for t in targets:
        out.append((cmd_topic(fleet, t), QOS))
        out.append((desired_topic(fleet, t), QOS))
    return out


# ------------------------------------------------------------------------ keys

def new_fleet_key():
    return random_bytes(KEY_BYTES)


def derive_device_key(fleet_key, device_id):
    _check_key(fleet_key, "fleet key")
    return hmac_sha256(bytes(fleet_key), b"fleetstage-device:" + validate_id(device_id).encode())


def _check_key(key, what):
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise KeyFileError(f"{what} must be {KEY_BYTES} bytes")


class KeyInfo:
    """A parsed key file. kind: "fleet", "device" (device_id set) or "raw" (bare bytes/hex)."""

    def __init__(self, kind, key, device_id=None):
        self.kind = kind
        self.key = key
        self.device_id = device_id

    def __repr__(self):  # never print the key itself
        return f"KeyInfo({self.kind}, {self.device_id})"


def format_key_file(key, kind="fleet", device_id=None):
    """Text the CLI writes (mode 0600): 'fleetstage-key v1 fleet HEX' or '... device ID HEX'."""
    _check_key(key, "key")
    if kind == "fleet":
        return (f"fleetstage-key v1 fleet {_hexstr(key)}\n").encode()
    if kind == "device":
        return (f"fleetstage-key v1 device {validate_id(device_id)} {_hexstr(key)}\n").encode()
    raise KeyFileError("key kind must be fleet or device")


def _parse_hex_key(text):
    text = text.lower()
    if len(text) != 2 * KEY_BYTES or any(c not in _HEX for c in text):
        raise KeyFileError(f"key must be {2 * KEY_BYTES} hex characters")
    return bytes.fromhex(text)


def parse_key_file(data):
    """Bytes of a key file -> KeyInfo. Accepts our format, 64 hex chars, or 32 raw bytes."""
    if not isinstance(data, (bytes, bytearray)):
        raise KeyFileError("key file content must be bytes")
    data = bytes(data)
    if len(data) == KEY_BYTES and not data.startswith(b"fleetstage-key"):
        try:
            return KeyInfo("raw", _parse_hex_key(data.decode()))
        except (KeyFileError, UnicodeError, ValueError):
            return KeyInfo("raw", data)
    try:
        text = data.decode().strip()
    except (UnicodeError, ValueError):
        raise KeyFileError(f"key file is neither text nor {KEY_BYTES} raw bytes") from None
    words = text.split()
    if len(words) == 1:
        return KeyInfo("raw", _parse_hex_key(words[0]))
    if len(words) < 4 or words[0] != "fleetstage-key" or words[1] != "v1":
        raise KeyFileError("key file does not start with 'fleetstage-key v1'")
    if words[2] == "fleet" and len(words) == 4:
        return KeyInfo("fleet", _parse_hex_key(words[3]))
    if words[2] == "device" and len(words) == 5:
        try:
            device_id = validate_id(words[3])
        except BadId as exc:
            raise KeyFileError(str(exc)) from None
        return KeyInfo("device", _parse_hex_key(words[4]), device_id)
    raise KeyFileError("key file kind must be 'fleet HEX' or 'device ID HEX'")


def agent_key(info, device_id):
    """The device key an agent verifies with, and a warning to log (or None)."""
    if info.kind == "device":
        if info.device_id != device_id:
            raise KeyFileError(f"key file is for device {info.device_id!r}, not {device_id!r}")
        return info.key, None
    if info.kind == "fleet":
        return derive_device_key(info.key, device_id), (
            "the key file holds the FLEET key: anyone who reads this device can forge "
            "commands for every device; give it a device key (keygen --device)")
    return info.key, None  # raw: taken to be this device's key


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


# --------------------------------------------------------------------- reports

def _encode_report(kind, device_id, body, key, now):
    body["v"] = VERSION
    body["kind"] = kind
    body["device"] = validate_id(device_id)
    if now is not None:
        body["at"] = now
    if key is not None:
        body["sig"] = hmac_sha256(key, _REPORT_DOMAIN + codec.canonical(body))[:MAC_BYTES]
    return codec.packb(body)


def _short(detail):
    if detail is None:
        return None
    if isinstance(detail, (list, tuple)):
        return [str(d)[:MAX_REASON_LEN] for d in detail[:20]]
    return str(detail)[:MAX_REASON_LEN]


def encode_ack(command_id, result, reason=None, detail=None, state=None, device_id="unknown",
               seq=None, key=None, now=None):
    """The ack for one command: result applied|duplicate|rejected (+ reason code)."""
    if result not in RESULTS:
        raise ProtocolError("ack result must be one of " + ", ".join(RESULTS))
    if (result == REJECTED) != (reason is not None):
        raise ProtocolError("a rejected ack needs a reason; others have none")
    if reason is not None and reason not in REASONS:
        raise ProtocolError(f"unknown reason code {reason!r}")
    body = {"id": command_id, "result": result}
    for name, value in (("reason", reason), ("detail", _short(detail)), ("state", state),
                        ("seq", seq)):
        if value is not None:
            body[name] = value
    return _encode_report("ack", device_id, body, key, now)


def encode_status(device_id, stage, flags, health=None, plan_hash=None, agent_version=None,
                  uptime_s=None, online=True, groups=None, quarantined=None, extra=None,
                  key=None, now=None):
    """The retained status. flags: {name: bool}; health: a small summary dict."""
    body = {"online": bool(online), "stage": stage, "flags": flags}
    for name, value in (("health", health), ("plan", plan_hash), ("agent_version", agent_version),
                        ("uptime_s", uptime_s), ("groups", groups),
                        ("quarantined", quarantined), ("extra", extra)):
        if value is not None:
            body[name] = value
    return _encode_report("status", device_id, body, key, now)


def encode_offline_status(device_id, key=None):
    """The last will (registered at connect, so it carries no live state)."""
    return _encode_report("status", device_id, {"online": False}, key, None)


def encode_health(device_id, metrics, key=None, now=None):
    return _encode_report("health", device_id, {"metrics": metrics}, key, now)


def encode_event(device_id, name, payload=None, key=None, now=None):
    _check_report_text(name)
    return _encode_report("event", device_id, {"name": name, "payload": payload or {}}, key, now)


def _check_report_text(name):
    if not isinstance(name, str) or not name or len(name) > MAX_ID_LEN:
        raise ProtocolError(f"event name must be a string of 1..{MAX_ID_LEN} characters")


def decode_report(payload, key=None, kind=None, device_id=None, fleet_key=None,
                  max_payload=MAX_PAYLOAD):
    """Operator side: report bytes -> dict (without "sig"), or raises ReportError.

    kind / device_id: what the topic says it must be. key: the sender's K_d;
    fleet_key instead derives K_d from the report's device. With either, an
    absent or wrong MAC is refused.
    """
    if (not isinstance(payload, (bytes, bytearray, memoryview)) or not len(payload)
            or len(payload) > max_payload):
        raise ReportError(f"report payload must be 1..{max_payload} bytes")
    try:
        body = codec.unpackb(bytes(payload))
    except codec.CodecError as exc:
        raise ReportError(str(exc)[:120]) from None
    if not isinstance(body, dict) or body.get("kind") not in REPORT_KINDS:
        raise ReportError("not a fleetstage report")
    if kind is not None and body["kind"] != kind:
        raise ReportError(f"expected a {kind} report")
    sender = body.get("device")
    try:
        validate_id(sender)
    except BadId as exc:
        raise ReportError(str(exc)) from None
    if device_id is not None and sender != device_id:
        raise ReportError(f"report from {sender} on the topic of {device_id}")
    sig = body.pop("sig", None)
    if key is None and fleet_key is not None:
        key = derive_device_key(fleet_key, sender)
    if key is not None:
        try:
            want = hmac_sha256(key, _REPORT_DOMAIN + codec.canonical(body))[:MAC_BYTES]
        except codec.CodecError as exc:
            raise ReportError(str(exc)[:120]) from None
        if not isinstance(sig, bytes) or not compare_digest(sig, want):
            raise ReportError("report MAC does not verify")
    return body
