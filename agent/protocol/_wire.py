"""The wire protocol's shared vocabulary: constants, reason codes, the op table, errors.

Owns: the names every protocol module and the runtime agree on (ops, results,
reason codes, topic leaves, limits, MAC domain tags), CONTROL_OPS (the one
table from a wire op to the MigrationControl operation it runs) and the error
tree, whose root ProtocolError is the only exception the protocol raises.
Must never: hold logic. Private: import it through agent.protocol.
"""

from binascii import hexlify

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
# Sequence numbers are the operator's clock in ms (tools/operator_seq.py). 2**53 ms is
# year ~287,000: no clock reaches it, JSON and doubles carry it exactly, and a seq above
# it is malformed, so nothing can push a guard to where no number is left above it.
MAX_SEQ = 2**53
# How far past its own clock the operator may be moved by hand (fleetstage seq --after).
MAX_AHEAD_MS = 30 * 86_400_000
MAX_ISSUED_AT = 2**53

# Reason codes in a rejected ack. NOT_READY and IN_QUARANTINE come from the
# runtime, which maps MigrationControl's NotReady / Quarantined onto them.
# (IN_QUARANTINE is the reason code; agent.transitions.QUARANTINED is the state.)
BAD_SIGNATURE = "bad_signature"
REPLAYED = "replayed"
STALE_SEQUENCE = "stale_sequence"
MALFORMED = "malformed"
UNKNOWN_OP = "unknown_op"
WRONG_PLAN = "wrong_plan"
NOT_READY = "not_ready"
IN_QUARANTINE = "quarantined"
REASONS = (BAD_SIGNATURE, REPLAYED, STALE_SEQUENCE, MALFORMED, UNKNOWN_OP, WRONG_PLAN,
           NOT_READY, IN_QUARANTINE)

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
# The dispatch table: op -> (MigrationControl method, its argument names in
# order). decode_command accepts exactly these ops with exactly these arguments,
# and agent.protocol.dispatch runs them; nothing else names the ops' methods.
CONTROL_OPS = {
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
    """Root of every error the protocol raises. Two branches below it, as in h11:

    LocalProtocolError   the caller handed in something invalid (an operator's
                         id, target, key file, or a command it must not sign)
    RemoteProtocolError  bytes from the wire (or the flash) are bad: the agent
                         answers with a reason code and keeps running
    decode_* turn a local error about a value that came off the wire into a
    remote one, so a message from outside never raises a local error.
    """


class LocalProtocolError(ProtocolError):
    """The caller misused the protocol; fix the call (nothing hostile happened)."""


class RemoteProtocolError(ProtocolError):
    """Bad input from outside: a command, desired state, report or stored state."""


class BadId(LocalProtocolError):
    pass


class BadTarget(LocalProtocolError):
    pass


class BadTopic(LocalProtocolError):
    pass


class CommandInvalid(LocalProtocolError):
    """encode_command / encode_desired refused what the agent would refuse.

    `.reason` is the reason code an agent would answer with (e.g. malformed),
    `.detail` says what is wrong.
    """

    def __init__(self, reason, detail=None):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class ReportError(RemoteProtocolError):
    """A device report (ack, status...) that is malformed or fails its MAC."""


class GuardStateError(RemoteProtocolError):
    """The replay guard's stored state is unusable (never silently reset)."""


class CommandRejected(RemoteProtocolError):
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
    return hexlify(data).decode()
