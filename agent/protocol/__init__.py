"""agent.protocol: the wire protocol between the operator and an agent: topics, signed commands
and desired states, the replay rules, device reports and key files.

Owns: every byte format on the MQTT link and every rule that decides whether an
inbound command may be applied (signature, replay, sequence, plan, shape).
Must never: do I/O (bytes, keys and `now` are handed in; the runtime sends and
stores), change agent state (it returns decisions and store changes), or raise
anything but a ProtocolError subclass for bad input. Any other exception type
escaping decode_command is a bug (the fuzz tests hold it to that), except
MemoryError on a board handed a payload above its RAM: pass it a max_payload
it can hold.

This package is the one door: callers write `from agent import protocol as P`
and use the names in __all__. The modules behind it are private:
  _wire        constants, reason codes, CONTROL_OPS (the dispatch table), errors
  _addressing  ids, targets, topics
  _keys        fleet and device keys, key files
  _commands    commands and desired states: encode, decode, dispatch
  _replay      ReplayGuard
  _reports     device reports (acks, status, health, events)

Errors (h11's split): ProtocolError is the root. LocalProtocolError: the
caller handed in something invalid (BadId, BadTarget, BadTopic, KeyFileError,
CommandInvalid from encode_*). RemoteProtocolError: bad input from outside
(CommandRejected with a reason code, ReportError, GuardStateError).

API (all names below are public)
  ids, targets   validate_id(value, what) -> value          BadId
                 parse_target(text) -> (kind, name)   BadTarget; kind all|group|device|bucket
                 bucket_of(device_id) -> BUCKET_DEPTH hex digits; "bucket:P" targets every
                                device whose bucket starts with P (cmd/bucket/P topics)
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
                 (encode_* raise CommandInvalid where decode_* would reject)
                 encode_desired(target, stage, seq, plan_hash, fleet_key, devices=None,
                                emergency=False, reason=None, ...) -> bytes
                 decode_desired(...same as decode_command...) -> DesiredState
                 seal(env, kind, fleet_key, devices) -> bytes  (no validation; for tests)
                 pick_desired(states) -> the winning DesiredState or None
                 DesiredState.action(current_stage) -> (op, args) or None
                 dispatch(control, op, args, extra_changes) -> runs CONTROL_OPS[op] on control
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

What agent.runtime does with it. On a cmd topic: cmd = decode_command(...);
guard.check(cmd) == "duplicate" -> ack DUPLICATE; else changes =
guard.record(cmd); dispatch(control, cmd.op, cmd.args, changes);
guard.commit(changes, store.peek); ack APPLIED. CommandRejected -> ack REJECTED with .reason
(NotReady -> NOT_READY with its reasons, Quarantined -> IN_QUARANTINE). On a
desired topic: an empty payload means cleared; gather what arrives just after
subscribing and apply pick_desired() of it (so a stale broad state does not
flash through), via .action(current_stage) and the same guard; stale and
duplicate desired states are expected on every reconnect and need no ack.
An operator's emergency rollback should also be published as a retained
desired state (emergency=True), so devices that were offline obey it too.
"""
from agent.protocol._addressing import (
    BUCKET_DEPTH,
    bucket_of,
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
from agent.protocol._commands import (
    Command,
    DesiredState,
    decode_command,
    decode_desired,
    device_tag,
    dispatch,
    encode_command,
    encode_desired,
    new_command_id,
    next_seq,
    pick_desired,
    seal,
)
from agent.protocol._replay import (
    ReplayGuard,
)
from agent.protocol._reports import (
    decode_report,
    encode_ack,
    encode_event,
    encode_health,
    encode_offline_status,
    encode_status,
)
from agent.protocol._wire import (
    APPLIED,
    BAD_SIGNATURE,
    CONTROL_OPS,
    DEVICE_LEAVES,
    DUPLICATE,
    IN_QUARANTINE,
    KEY_BYTES,
    KIND_CMD,
    KIND_DESIRED,
    MAC_BYTES,
    MALFORMED,
    MAX_AHEAD_MS,
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
    CommandInvalid,
    CommandRejected,
    GuardStateError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ReportError,
)

# The key names (KeyFileError too) come from agent.protocol._keys, loaded when one is first
# asked for (__getattr__ below, on CPython and MicroPython alike): only the start-up reads a key
# file, so a board frees that module once its agent runs (agent.boot.BOOT_ONLY_MODULES).
_LAZY_MODULE = "agent.protocol._keys"
_LAZY_NAMES = ("KeyFileError", "KeyInfo", "agent_key", "derive_device_key", "format_key_file",
               "new_fleet_key", "parse_key_file")


def __getattr__(name):
    if name in _LAZY_NAMES:
        import agent.protocol._keys

        return getattr(agent.protocol._keys, name)
    raise AttributeError("module 'agent.protocol' has no attribute '%s'" % name)

__all__ = [
    "APPLIED",
    "BAD_SIGNATURE",
    "BUCKET_DEPTH",
    "BadId",
    "BadTarget",
    "BadTopic",
    "CONTROL_OPS",
    "Command",
    "CommandInvalid",
    "CommandRejected",
    "DEVICE_LEAVES",
    "DUPLICATE",
    "DesiredState",
    "GuardStateError",
    "IN_QUARANTINE",
    "KEY_BYTES",
    "KIND_CMD",
    "KIND_DESIRED",
    "KeyFileError",
    "KeyInfo",
    "LocalProtocolError",
    "MAC_BYTES",
    "MALFORMED",
    "MAX_BODY",
    "MAX_FLAG_NAME_LEN",
    "MAX_ID_LEN",
    "MAX_ISSUED_AT",
    "MAX_PAYLOAD",
    "MAX_REASON_LEN",
    "MAX_AHEAD_MS",
    "MAX_SEQ",
    "MAX_STAGE",
    "NEW",
    "NOT_READY",
    "NOT_SIGNED_FOR_DEVICE",
    "OPS",
    "OP_CLEAR_FLAG",
    "OP_CLEAR_QUARANTINE",
    "OP_EMERGENCY_ROLLBACK",
    "OP_MIGRATE",
    "OP_ROLLBACK",
    "OP_SET_FLAG",
    "PREFIX",
    "ProtocolError",
    "QOS",
    "REASONS",
    "RECENT_WINDOW",
    "REJECTED",
    "REPLAYED",
    "REPORT_KINDS",
    "RESULTS",
    "RemoteProtocolError",
    "ReplayGuard",
    "ReportError",
    "STALE_SEQUENCE",
    "TAG_BYTES",
    "UNKNOWN_OP",
    "VERSION",
    "WRONG_PLAN",
    "agent_key",
    "bucket_of",
    "cmd_topic",
    "decode_command",
    "decode_desired",
    "decode_report",
    "derive_device_key",
    "desired_topic",
    "device_tag",
    "device_topic",
    "device_wildcard",
    "dispatch",
    "encode_ack",
    "encode_command",
    "encode_desired",
    "encode_event",
    "encode_health",
    "encode_offline_status",
    "encode_status",
    "format_key_file",
    "make_target",
    "new_command_id",
    "new_fleet_key",
    "next_seq",
    "parse_key_file",
    "parse_target",
    "parse_topic",
    "pick_desired",
    "seal",
    "select_devices",
    "subscriptions",
    "target_matches",
    "validate_id",
]
