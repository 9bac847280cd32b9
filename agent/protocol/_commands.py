"""Commands and desired states: their envelopes, MAC tables, checks, and the dispatch.

Owns: encode_* / decode_* for the two signed kinds (see agent.protocol for the
wire format), the order of checks on inbound bytes, and dispatch(), which runs
a verified op on MigrationControl through CONTROL_OPS.
Must never: do I/O, or let bad bytes raise anything but CommandRejected (an
encode_* caller's own mistake is CommandInvalid, a LocalProtocolError).
Private: use agent.protocol.
"""
import hashlib

from agent.protocol._addressing import parse_target, target_matches, validate_id
from agent.protocol._wire import (
    _DOMAIN,
    _ENTRY_BYTES,
    _FLAG_CHARS,
    _HEX,
    BAD_SIGNATURE,
    CONTROL_OPS,
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
    NOT_SIGNED_FOR_DEVICE,
    OP_CLEAR_FLAG,
    OP_EMERGENCY_ROLLBACK,
    OP_MIGRATE,
    OP_ROLLBACK,
    OP_SET_FLAG,
    TAG_BYTES,
    UNKNOWN_OP,
    VERSION,
    WRONG_PLAN,
    BadId,
    BadTarget,
    CommandInvalid,
    CommandRejected,
    LocalProtocolError,
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


def dispatch(control, op, args, extra_changes=None):
    """Run a verified op on `control` through CONTROL_OPS; returns what the operation returns.

    extra_changes (the replay guard's record) land in the operation's own commit.
    An op outside the table is the caller's mistake: decode_command never returns one.
    """
    entry = CONTROL_OPS.get(op)
    if entry is None:
        raise LocalProtocolError(f"unknown op {op!r}")
    name, arg_names = entry
    values = []
    for arg_name in arg_names:
        values.append(args[arg_name])
    return getattr(control, name)(*values, extra_changes=extra_changes)


def new_command_id():
    return _hexstr(random_bytes(8))


def next_seq(last_seq, now_wall):
    """A fleet-wide sequence number: wall-clock ms, and always above last_seq."""
    return max(int(last_seq) + 1, int(now_wall * 1000))


_CMD_FIELDS = ("v", "kind", "id", "seq", "plan", "target", "op", "args", "issued_at")
_DESIRED_FIELDS = ("v", "kind", "id", "seq", "plan", "target", "stage", "emergency", "reason",
                   "issued_at")
# Optional in the body's shape; a decoder given `fleet` (the agent always gives it)
# refuses a body that names another fleet or none.
_OPTIONAL_FIELDS = ("fleet",)
# Every field a body of each kind may have (the unknown-field check, one lookup a key)
_ALLOWED = {KIND_CMD: frozenset(_CMD_FIELDS + _OPTIONAL_FIELDS),
            KIND_DESIRED: frozenset(_DESIRED_FIELDS + _OPTIONAL_FIELDS)}


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
    entry = CONTROL_OPS.get(op)
    if entry is None:
        raise CommandRejected(UNKNOWN_OP, f"unknown op {op[:40]!r}", command_id)
    expected = entry[1]
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
    allowed = _ALLOWED[kind]
    for k in env:
        if k not in allowed:
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
        _malformed("seq must be an integer 1..2**53", command_id)
    _check_text(env["plan"], "plan hash", 128, command_id)
    try:
        parse_target(env["target"])
    except BadTarget as exc:
        _malformed(str(exc), command_id)
    at = env["issued_at"]
    if not (_is_int(at) or isinstance(at, float)) or not 0 <= at <= MAX_ISSUED_AT:
        _malformed("issued_at must be a number 0..2**53", command_id)
    if "fleet" in env:
        try:
            validate_id(env["fleet"], "fleet")
        except BadId as exc:
            _malformed(str(exc), command_id)


def _check_command_id(value):
    if not isinstance(value, str) or len(value) != 16 or not _HEX.issuperset(value):
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


# (device id, its tag), swapped whole (threads may share it): a device looks up its own.
_last_tag = [(None, None)]


def device_tag(device_id):
    """The 8 bytes that index a device's entry in a MAC table (public, not secret)."""
    last = _last_tag[0]
    if device_id == last[0] and device_id is not None:
        return last[1]
    tag = hashlib.sha256(b"fleetstage-tag:" + validate_id(device_id).encode()).digest()[:TAG_BYTES]
    _last_tag[0] = (device_id, tag)
    return tag


def seal(env, kind, fleet_key, devices, keys=None):
    """Wrap an envelope dict for the wire WITHOUT validating it (encode_* validate
    first; tests use this to reach the checks behind the MAC). fleet_key None:
    unsigned. devices: ids to add a MAC for. keys: an operator's cache
    {device id: (tag, K_d)} for this fleet key, filled as it goes, so a fleet's
    keys are derived once, not on every command."""
    body = codec.canonical(env)
    outer = {"v": VERSION, "body": body}
    if fleet_key is not None:
        # operator side only: a board loads agent.protocol._keys at boot and then frees it
        from agent.protocol._keys import derive_device_key

        if keys is None:
            keys = {}
        entries = []
        for d in devices:
            tk = keys.get(d)
            if tk is None:
                tk = keys[d] = (device_tag(d), derive_device_key(fleet_key, d))
            entries.append(tk[0] + _mac(tk[1], kind, body))
        entries.sort()
        outer["sigs"] = b"".join(entries)
    return codec.packb(outer)


def _encode(env, kind, fleet_key, devices, max_stage, keys):
    try:  # the same checks as on the wire, but here the caller is at fault
        _validate(env, kind, max_stage)
    except CommandRejected as exc:
        raise CommandInvalid(exc.reason, exc.detail) from None
    body_len = len(codec.canonical(env))
    if body_len > MAX_BODY:
        raise CommandInvalid(MALFORMED, f"signed body of {body_len} bytes exceeds {MAX_BODY}")
    if fleet_key is not None:
        tkind, tname = parse_target(env["target"])
        if devices is None:
            if tkind != "device":
                raise LocalProtocolError("a broadcast needs the list of devices to sign for")
            devices = [tname]
        if not devices:
            raise LocalProtocolError("no devices to sign for")
    return seal(env, kind, fleet_key, devices, keys)


def encode_command(op, args, target, seq, plan_hash, fleet_key, devices=None, command_id=None,
                   issued_at=0, max_stage=MAX_STAGE, keys=None, fleet=None):
    """Signed command bytes. fleet_key None makes an unsigned one (insecure mode only).

    devices: the ids to sign for (select_devices(target, inventory)); optional for
    a device target. Raises CommandInvalid for what the agent would refuse.
    """
    env = {"v": VERSION, "kind": KIND_CMD, "id": command_id or new_command_id(), "seq": seq,
           "plan": plan_hash, "target": target, "op": op, "args": args,
           "issued_at": issued_at}
    if fleet is not None:
        env["fleet"] = fleet
    return _encode(env, KIND_CMD, fleet_key, devices, max_stage, keys)


def encode_desired(target, stage, seq, plan_hash, fleet_key, devices=None, emergency=False,
                   reason=None, command_id=None, issued_at=0, max_stage=MAX_STAGE, keys=None,
                   fleet=None):
    """Signed desired-state bytes (publish retained on desired_topic(fleet, target))."""
    env = {"v": VERSION, "kind": KIND_DESIRED, "id": command_id or new_command_id(),
           "seq": seq, "plan": plan_hash, "target": target, "stage": stage,
           "emergency": emergency, "reason": reason, "issued_at": issued_at}
    if fleet is not None:
        env["fleet"] = fleet
    return _encode(env, KIND_DESIRED, fleet_key, devices, max_stage, keys)


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
            max_payload, fleet):
    body, sigs = _unwrap(payload, max_payload)
    _verify(body, sigs, kind, key, device_id, insecure)
    try:
        env = codec.unpackb(body)
    except codec.CodecError as exc:
        _malformed(str(exc)[:120], _peek_id(body))
    if not isinstance(env, dict):
        _malformed("body is not a map")
    command_id = _validate(env, kind, max_stage)
    if fleet is not None and env.get("fleet") != fleet:
        # Same key, other fleet: a replay from one fleet's topics onto another's must
        # not apply. A body that names no fleet is refused too (strict binding): it
        # could be replayed onto any fleet that shares the key.
        if "fleet" not in env:
            raise CommandRejected(BAD_SIGNATURE, "signed for no fleet", command_id)
        raise CommandRejected(BAD_SIGNATURE, "signed for fleet {!r}, not this one".format(
            str(env["fleet"])[:MAX_ID_LEN]), command_id)
    if not target_matches(env["target"], device_id, groups):
        _malformed("target {} does not include this device".format(env["target"]), command_id)
    if plan_hash is not None and env["plan"] != plan_hash:
        raise CommandRejected(WRONG_PLAN, "command is for plan " + env["plan"][:16], command_id)
    return env, command_id, _hexstr(hashlib.sha256(body).digest()[:8])


def decode_command(payload, key, device_id, groups=(), plan_hash=None, max_stage=MAX_STAGE,
                   insecure=False, max_payload=MAX_PAYLOAD, fleet=None):
    """Bytes from a cmd topic -> Command, or raises CommandRejected.

    Order of checks (the first failing one names the reason): size and outer
    shape (malformed), this device's MAC over the body bytes (bad_signature;
    unsigned is refused unless insecure), then, on authenticated bytes only,
    the body's fields and op (malformed / unknown_op), target includes this
    device (malformed), plan hash (wrong_plan). Replay and sequence are
    ReplayGuard's job; not_ready / quarantined are the runtime's.
    """
    env, command_id, digest = _decode(payload, KIND_CMD, key, device_id, groups, plan_hash,
                                      max_stage, insecure, max_payload, fleet)
    return Command(command_id, env["seq"], env["plan"], env["target"], env["op"],
                   env["args"], env["issued_at"], digest)


def decode_desired(payload, key, device_id, groups=(), plan_hash=None, max_stage=MAX_STAGE,
                   insecure=False, max_payload=MAX_PAYLOAD, fleet=None):
    """Bytes from a desired topic -> DesiredState (same checks as decode_command).

    An empty retained payload means "cleared": the runtime skips it before calling.
    """
    env, command_id, digest = _decode(payload, KIND_DESIRED, key, device_id, groups, plan_hash,
                                      max_stage, insecure, max_payload, fleet)
    return DesiredState(command_id, env["seq"], env["plan"], env["target"], env["stage"],
                        env["emergency"], env["reason"], env["issued_at"], digest)
