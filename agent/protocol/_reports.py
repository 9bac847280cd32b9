"""Device reports: acks, status, health and events, signed with the device key.

Owns: the report envelope and its MAC; decode_report is the operator's check.
Must never: do I/O; raise anything but ReportError for a bad report (a caller's
own mistake in encode_* is a LocalProtocolError). Private: use agent.protocol.
"""
from agent.protocol._addressing import validate_id
from agent.protocol._wire import (
    _REPORT_DOMAIN,
    MAC_BYTES,
    MAX_ID_LEN,
    MAX_PAYLOAD,
    MAX_REASON_LEN,
    REASONS,
    REJECTED,
    REPORT_KINDS,
    RESULTS,
    VERSION,
    BadId,
    LocalProtocolError,
    ReportError,
)
from firmware_shim import codec
from firmware_shim.crypto import compare_digest

# --------------------------------------------------------------------- reports

def _encode_report(kind, device_id, body, key, now, fleet):
    body["v"] = VERSION
    body["kind"] = kind
    body["device"] = validate_id(device_id)
    if fleet is not None:
        body["fleet"] = fleet  # signed: a report cannot be replayed onto another fleet
    if now is not None:
        body["at"] = now
    if key is not None:
        body["sig"] = codec.canonical_mac(key, _REPORT_DOMAIN, body)[:MAC_BYTES]
    return codec.packb(body)


def _short(detail):
    if detail is None:
        return None
    if isinstance(detail, (list, tuple)):
        out = []  # a loop, not a comprehension: one function object fewer on a board
        for item in detail[:20]:
            out.append(str(item)[:MAX_REASON_LEN])
        return out
    return str(detail)[:MAX_REASON_LEN]


def encode_ack(command_id, result, reason=None, detail=None, state=None, device_id="unknown",
               seq=None, key=None, now=None, fleet=None):
    """The ack for one command: result applied|duplicate|rejected (+ reason code)."""
    if result not in RESULTS:
        raise LocalProtocolError("ack result must be one of " + ", ".join(RESULTS))
    if (result == REJECTED) != (reason is not None):
        raise LocalProtocolError("a rejected ack needs a reason; others have none")
    if reason is not None and reason not in REASONS:
        raise LocalProtocolError(f"unknown reason code {reason!r}")
    body = {"id": command_id, "result": result}
    for name, value in (("reason", reason), ("detail", _short(detail)), ("state", state),
                        ("seq", seq)):
        if value is not None:
            body[name] = value
    return _encode_report("ack", device_id, body, key, now, fleet)


def encode_status(device_id, stage, flags, health=None, plan_hash=None, agent_version=None,
                  uptime_s=None, online=True, groups=None, quarantined=None, extra=None,
                  key=None, now=None, hw=None, fleet=None):
    """The retained status. flags: {name: bool}; health: a small summary dict.
    `now` (the device's wall clock, ms) becomes "at": the operator shows its age."""
    body = {"online": bool(online), "stage": stage, "flags": flags}
    for name, value in (("health", health), ("plan", plan_hash), ("agent_version", agent_version),
                        ("uptime_s", uptime_s), ("groups", groups),
                        ("quarantined", quarantined), ("extra", extra), ("hw", hw)):
        if value is not None:
            body[name] = value
    return _encode_report("status", device_id, body, key, now, fleet)


def encode_offline_status(device_id, key=None, fleet=None):
    """The last will (registered at connect, so it carries no live state)."""
    return _encode_report("status", device_id, {"online": False}, key, None, fleet)


def encode_health(device_id, metrics, key=None, now=None, fleet=None):
    return _encode_report("health", device_id, {"metrics": metrics}, key, now, fleet)


def encode_event(device_id, name, payload=None, key=None, now=None, fleet=None):
    _check_report_text(name)
    return _encode_report("event", device_id, {"name": name, "payload": payload or {}}, key, now,
                          fleet)


def _check_report_text(name):
    if not isinstance(name, str) or not name or len(name) > MAX_ID_LEN:
        raise LocalProtocolError(f"event name must be a string of 1..{MAX_ID_LEN} characters")


def decode_report(payload, key=None, kind=None, device_id=None, fleet_key=None,
                  max_payload=MAX_PAYLOAD, fleet=None):
    """Operator side: report bytes -> dict (without "sig"), or raises ReportError.

    kind / device_id: what the topic says it must be. key: the sender's K_d;
    fleet_key instead derives K_d from the report's device. With either, an
    absent or wrong MAC is refused. fleet: the fleet the topic names; a report
    that names another fleet is refused (one that names none is let through:
    agents older than the fleet binding).
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
        from agent.protocol._keys import derive_device_key  # operator side only (see seal)

        key = derive_device_key(fleet_key, sender)
    if key is not None:
        try:
            want = codec.canonical_mac(key, _REPORT_DOMAIN, body)[:MAC_BYTES]
        except codec.CodecError as exc:
            raise ReportError(str(exc)[:120]) from None
        if not isinstance(sig, bytes) or not compare_digest(sig, want):
            raise ReportError("report MAC does not verify")
    if fleet is not None and body.get("fleet", fleet) != fleet:
        raise ReportError("report of another fleet")
    return body
