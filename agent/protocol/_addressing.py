"""Addressing: device ids, targets (all, group:G, device:ID, bucket:P) and MQTT topics.

Owns: what a valid id is, how a target names devices, and every topic string
of the MQTT contract (README "MQTT topics and payloads").
Must never: do I/O or sign anything. Private: use agent.protocol.
"""
import hashlib

from agent.protocol._wire import (
    _HEX,
    _ID_CHARS,
    DEVICE_LEAVES,
    MAX_ID_LEN,
    PREFIX,
    QOS,
    BadId,
    BadTarget,
    BadTopic,
    _hexstr,
)

# Hash buckets keep what one device receives bounded at any fleet size: a
# device's bucket is the first BUCKET_DEPTH hex digits of
# SHA-256("fleetstage-bucket:" + id); it subscribes to cmd/bucket/P and
# desired/bucket/P for each prefix P of it (lengths 1..BUCKET_DEPTH), and the
# operator publishes each command at one prefix length, deep enough that no
# message carries more than a bounded number of MACs (tools/bucketing.py).
# 16**6 buckets hold 16.7M devices at one each.
BUCKET_DEPTH = 6
_TARGET_KINDS = ("group", "device", "bucket")

# ---------------------------------------------------------------- ids, targets

# Names that passed validate_id lately: a device checks its own id, its fleet and its
# topics on every message, and one set lookup is ~20x cheaper than the character walk.
_VALID_IDS = set()
_VALID_IDS_MAX = 32


def validate_id(value, what="device id"):
    """A fleet, group or device name: 1..64 of [A-Za-z0-9._:-] (no / + # or spaces)."""
    if not isinstance(value, str):
        raise BadId(f"{what} must be a string")
    if value in _VALID_IDS:
        return value
    if not value or len(value) > MAX_ID_LEN:
        raise BadId(f"{what} must be 1..{MAX_ID_LEN} characters")
    if not _ID_CHARS.issuperset(value):
        raise BadId(f"{what} {value!r} has a character outside [A-Za-z0-9._:-]")
    if len(_VALID_IDS) >= _VALID_IDS_MAX:
        _VALID_IDS.clear()
    _VALID_IDS.add(value)
    return value


# (device id, its bucket), swapped whole (threads may share it): a device asks for its own.
_last_bucket = [(None, None)]


def bucket_of(device_id):
    """The device's bucket: BUCKET_DEPTH lowercase hex digits (public, not secret)."""
    last = _last_bucket[0]
    if device_id == last[0] and device_id is not None:
        return last[1]
    digest = hashlib.sha256(b"fleetstage-bucket:" + validate_id(device_id).encode()).digest()
    bucket = _hexstr(digest)[:BUCKET_DEPTH]
    _last_bucket[0] = (device_id, bucket)
    return bucket


def _check_bucket(name):
    if not 1 <= len(name) <= BUCKET_DEPTH or not _HEX.issuperset(name):
        raise BadTarget(f"bucket {name[:20]!r} must be 1..{BUCKET_DEPTH} lowercase hex digits")


# Targets parsed lately: a device parses each command's target three times (topic,
# envelope, match). Only valid ones are kept, and at most _TARGETS_MAX.
_TARGETS = {}
_TARGETS_MAX = 32


def parse_target(text):
    """"all" -> ("all", None); "group:G" -> ("group", G); "device:ID" -> ("device", ID);
    "bucket:P" -> ("bucket", P): every device whose bucket starts with P."""
    if not isinstance(text, str):
        raise BadTarget("target must be a string")
    parsed = _TARGETS.get(text)
    if parsed is None:
        parsed = _parse_target(text)
        if len(_TARGETS) >= _TARGETS_MAX:
            _TARGETS.clear()
        _TARGETS[text] = parsed
    return parsed


def _parse_target(text):
    if text == "all":
        return ("all", None)
    i = text.find(":")
    kind = text[:i] if i > 0 else ""
    if kind not in _TARGET_KINDS:
        raise BadTarget(f"target {text[:80]!r} is not all, group:NAME, device:ID or bucket:HEX")
    name = text[i + 1:]
    if kind == "bucket":
        _check_bucket(name)
        return (kind, name)
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
    if kind == "bucket":
        return bucket_of(device_id).startswith(name)
    return name == device_id


def select_devices(target, inventory):
    """The ids in inventory ({device_id: groups}) that `target` addresses, sorted."""
    selected = []
    for device_id in inventory:
        if target_matches(target, device_id, inventory[device_id] or ()):
            selected.append(device_id)
    selected.sort()
    return selected


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
            if len(rest) == 2 and rest[0] in _TARGET_KINDS:
                return (fleet, channel, make_target(rest[0], rest[1]), None)
        elif channel == "device" and len(rest) == 2 and rest[1] in DEVICE_LEAVES:
            return (fleet, channel, make_target("device", rest[0]), rest[1])
    except (BadId, BadTarget) as exc:
        raise BadTopic(str(exc)) from None
    raise BadTopic(f"not a fleetstage topic: {topic[:120]!r}")


def subscriptions(fleet, device_id, groups=()):
    """The device's cmd and desired topics for all, each of its groups, each prefix of
    its bucket, and itself."""
    targets = ["all"]  # loops, not comprehensions: each is a function object on a board
    for group in sorted(set(groups)):
        targets.append(make_target("group", validate_id(group, "group name")))
    bucket = bucket_of(device_id)
    for depth in range(1, BUCKET_DEPTH + 1):
        targets.append("bucket:" + bucket[:depth])
    targets.append(make_target("device", device_id))
    out = []
    for t in targets:
        out.append((cmd_topic(fleet, t), QOS))
        out.append((desired_topic(fleet, t), QOS))
    return out
