"""Writes tests/corpus/malformed/: hand-built hostile command payloads and the
reason code each must be rejected with (manifest.json).

    .venv/bin/python tests/corpus/make_malformed.py

The output is deterministic (fixed fleet key and command ids), so a rerun only
changes files when a case changed; tests/test_protocol_fuzz.py checks the
committed files match. tests/core/test_protocol.py decodes every file on
CPython and MicroPython. Cases cover the outer map, the MAC table, and (behind
a valid MAC, as a compromised operator or a bug would send) the body.
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from agent import protocol as p  # noqa: E402
from firmware_shim import codec  # noqa: E402
from firmware_shim.crypto import hmac_sha256  # noqa: E402

FLEET_KEY = bytes.fromhex("5a" * 32)
DEVICE = "gw-corpus"
GROUPS = ["canary"]
PLAN = "c0" * 32
CID = "00c0ffee00c0ffee"
MAX_SMALL = 4096


def signed(op="migrate", args=None, target="device:" + DEVICE, seq=1000, plan=PLAN,
           devices=None):
    return p.encode_command(op, {"stage": 1} if args is None else args, target, seq, plan,
                            FLEET_KEY, devices=devices, command_id=CID, issued_at=1700000000)


def outer(payload):
    return codec.unpackb(payload)


def envelope():
    return codec.unpackb(outer(signed())["body"])


def entry(body, device=DEVICE, key=None, tag=b"fleetstage-cmd\x00"):
    key = key or p.derive_device_key(FLEET_KEY, device)
    return p.device_tag(device) + hmac_sha256(key, tag + body)[:16]


def wire(body, sigs=None, **extra):
    out = {"v": 1, "body": body}
    if sigs is not None:
        out["sigs"] = sigs
    out.update(extra)
    return codec.packb(out)


def resign(env, key=FLEET_KEY, kind="cmd"):
    """MAC an arbitrary envelope as the operator would, to reach the checks behind the MAC."""
    return p.seal(env, kind, key, [DEVICE])


def body_with_raw(env, key, raw):
    """A body with one value replaced by raw bytes (never made by the encoder), correctly
    MACed, so the body parser itself is attacked."""
    pairs = [(k, raw if k == key else codec.canonical(env[k])) for k in sorted(env)]
    body = bytes((0x80 | len(pairs),)) + b"".join(codec.packb(k) + v for k, v in pairs)
    return wire(body, entry(body))


def _outer_cases():
    good = signed()
    o = outer(good)
    body, sigs = o["body"], o["sigs"]
    yield "empty", b"", "malformed", {}
    yield "single_byte_reserved", b"\xc1", "malformed", {}
    yield "truncated_half", good[: len(good) // 2], "malformed", {}
    yield "truncated_last_byte", good[:-1], "malformed", {}
    yield "trailing_garbage", good + b"\x00junk", "malformed", {}
    yield "not_a_map", codec.packb([1, 2, 3]), "malformed", {}
    yield "oversized_for_board", signed(target="all", devices=[DEVICE] + [
        f"gw-{i:05d}" for i in range(300)]), "malformed", {"max_payload": MAX_SMALL}
    yield "str32_length_4gib", b"\xdb\xff\xff\xff\xff" + b"x" * 16, "malformed", {}
    yield "map32_length_4gib", b"\xdf\xff\xff\xff\xff" + b"\x00" * 16, "malformed", {}
    yield "bin32_body_length_lies", b"\x82\xa1v\x01\xa4body\xc6\x7f\xff\xff\xff" + body, \
        "malformed", {}
    yield "outer_extra_field", wire(body, sigs, debug=True), "malformed", {}
    yield "outer_version_2", wire(body, sigs, v=2), "malformed", {}
    yield "outer_no_version", codec.packb({"body": body, "sigs": sigs}), "malformed", {}
    yield "body_is_string", wire("body", sigs), "malformed", {}
    yield "body_empty", wire(b"", sigs), "malformed", {}
    yield "body_too_big", wire(b"\x00" * 5000, sigs), "malformed", {}
    yield "sigs_not_bytes", wire(body, [sigs]), "malformed", {}
    yield "sigs_ragged", wire(body, sigs + b"\x00"), "malformed", {}
    yield "ext_type_outer", b"\x84" + wire(body, sigs)[1:] + b"\xa1x\xd4\x05\x01", "malformed", {}


def _signature_cases():
    good = signed()
    o = outer(good)
    body, sigs = o["body"], o["sigs"]
    env = envelope()
    other_key = p.derive_device_key(FLEET_KEY, "gw-other")
    yield "unsigned", wire(body), "bad_signature", {}
    yield "empty_sigs", wire(body, b""), "bad_signature", {}
    yield "forged_mac", wire(body, sigs[:8] + bytes(16)), "bad_signature", {}
    yield "no_entry_for_device", wire(body, bytes(24) * 3), "bad_signature", {}
    yield "tampered_stage", wire(codec.canonical(dict(env, args={"stage": 4})), sigs), \
        "bad_signature", {}
    yield "other_device_only", signed(target="all", devices=["gw-other"]), "bad_signature", {}
    yield "leaked_device_key", wire(body, entry(body, key=other_key)), "bad_signature", {}
    yield "leaked_key_as_fleet_key", resign(env, key=other_key), "bad_signature", {}
    yield "other_fleet", resign(env, key=b"\x01" * 32), "bad_signature", {}
    yield "desired_domain_tag", resign(env, kind="desired"), "bad_signature", {}
    yield "desired_on_cmd", p.encode_desired("device:" + DEVICE, 1, 1000, PLAN, FLEET_KEY,
                                             command_id=CID), "bad_signature", {}
    yield "command_on_desired", good, "bad_signature", {"desired": True}


def _body_cases():
    env = envelope()
    bomb = b"\x91" * 1000 + b"\x00"
    yield "body_not_msgpack", wire(b"\xc1\xc1", entry(b"\xc1\xc1")), "malformed", {}
    yield "body_not_a_map", wire(b"\x93\x01\x02\x03", entry(b"\x93\x01\x02\x03")), \
        "malformed", {}
    yield "args_length_lies", body_with_raw(env, "args", b"\xde\xff\xff\x00"), "malformed", {}
    yield "nested_array_bomb", body_with_raw(env, "args", bomb), "malformed", {}
    yield "nested_map_bomb", body_with_raw(env, "args", b"\x81\xa1k" * 200 + b"\x00"), \
        "malformed", {}
    yield "ext_type_issued_at", body_with_raw(env, "issued_at", b"\xd4\x05\x01"), "malformed", {}
    yield "timestamp_ext", body_with_raw(env, "issued_at", b"\xd6\xff" + struct.pack(">I", 1)), \
        "malformed", {}
    yield "invalid_utf8_op", body_with_raw(env, "op", b"\xa4mi\xffg"), "malformed", {}
    yield "float_map_key", body_with_raw(env, "args", b"\x82\xa5stage\x01\xcb" + struct.pack(
        ">d", 0.5) + b"\x01"), "malformed", {}
    yield "extra_field", resign(dict(env, debug=True)), "malformed", {}
    yield "missing_seq", resign({k: v for k, v in env.items() if k != "seq"}), "malformed", {}
    yield "seq_is_string", resign(dict(env, seq="1000")), "malformed", {}
    yield "seq_is_bool", resign(dict(env, seq=True)), "malformed", {}
    yield "seq_zero", resign(dict(env, seq=0)), "malformed", {}
    yield "seq_float", resign(dict(env, seq=1000.0)), "malformed", {}
    yield "seq_too_big", resign(dict(env, seq=2**64 - 1)), "malformed", {}
    yield "id_not_hex", resign(dict(env, id="not-a-hex-id-xx!")), "malformed", {}
    yield "id_bytes", resign(dict(env, id=b"\x00" * 8)), "malformed", {}
    yield "body_version_2", resign(dict(env, v=2)), "malformed", {}
    yield "kind_desired", resign(dict(env, kind="desired")), "malformed", {}
    yield "target_bad", resign(dict(env, target="group:a/#")), "malformed", {}
    yield "target_other_device", resign(dict(env, target="device:gw-other")), "malformed", {}
    yield "target_other_group", resign(dict(env, target="group:west")), "malformed", {}
    yield "issued_at_nan", resign(dict(env, issued_at=float("nan"))), "malformed", {}
    yield "issued_at_negative", resign(dict(env, issued_at=-1)), "malformed", {}
    yield "plan_not_str", resign(dict(env, plan=b"\xc0" * 32)), "malformed", {}
    yield "op_not_str", resign(dict(env, op=1)), "malformed", {}
    yield "args_list", resign(dict(env, args=[1])), "malformed", {}
    yield "args_extra", resign(dict(env, args={"stage": 1, "force": True})), "malformed", {}
    yield "args_missing", resign(dict(env, args={})), "malformed", {}
    yield "stage_bool", resign(dict(env, args={"stage": True})), "malformed", {}
    yield "stage_too_high", resign(dict(env, args={"stage": 99})), "malformed", {}
    yield "migrate_to_zero", resign(dict(env, args={"stage": 0})), "malformed", {}
    yield "stage_negative", resign(dict(env, op="rollback", args={"stage": -1})), "malformed", {}
    yield "reason_empty", resign(dict(env, op="emergency_rollback", args={"reason": ""})), \
        "malformed", {}
    yield "reason_too_long", resign(dict(env, op="emergency_rollback",
                                         args={"reason": "r" * 201})), "malformed", {}
    yield "flag_value_int", resign(dict(env, op="set_flag",
                                        args={"name": "use_x", "value": 1})), "malformed", {}
    yield "flag_name_bad", resign(dict(env, op="set_flag",
                                       args={"name": "../etc", "value": True})), "malformed", {}


def _semantic_cases():
    env = envelope()
    desired = {"v": 1, "kind": "desired", "id": CID, "seq": 1000, "plan": PLAN,
               "target": "all", "stage": 3, "emergency": True, "reason": "x", "issued_at": 0}
    yield "desired_emergency_stage", resign(desired, kind="desired"), "malformed", \
        {"desired": True}
    yield "desired_emergency_no_reason", resign(dict(desired, stage=0, reason=None),
                                                kind="desired"), "malformed", {"desired": True}
    yield "wrong_plan", signed(plan="d0" * 32), "wrong_plan", {}
    yield "desired_wrong_plan", p.encode_desired("all", 2, 1000, "d0" * 32, FLEET_KEY, [DEVICE],
                                                 command_id=CID), "wrong_plan", {"desired": True}
    yield "unknown_op", resign(dict(env, op="format_flash", args={})), "unknown_op", {}
    yield "unknown_op_lookalike", resign(dict(env, op="migrate\u200b", args={"stage": 1})), \
        "unknown_op", {}


def cases():
    yield from _outer_cases()
    yield from _signature_cases()
    yield from _body_cases()
    yield from _semantic_cases()


def main():
    out = os.path.join(HERE, "malformed")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):  # cases that were renamed or dropped
        if name.endswith(".bin"):
            os.remove(os.path.join(out, name))
    manifest = {"fleet_key": FLEET_KEY.hex(), "device_id": DEVICE, "groups": GROUPS,
                "plan_hash": PLAN, "cases": []}
    for name, payload, reason, extra in cases():
        fname = name + ".bin"
        with open(os.path.join(out, fname), "wb") as f:
            f.write(payload)
        case = {"file": fname, "reason": reason}
        case.update(extra)
        manifest["cases"].append(case)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(manifest['cases'])} cases to {out}")


if __name__ == "__main__":
    main()
