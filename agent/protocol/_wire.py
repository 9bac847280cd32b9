"""The wire protocol's shared vocabulary: constants, reason codes and errors.

Owns: the names every protocol module and the runtime agree on (ops, results,
reason codes, topic leaves, limits, MAC domain tags) and the error tree, whose
root ProtocolError is the only exception bad input may raise.
Must never: hold logic; agent.protocol is the front door that re-exports this.
"""

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
