"""Writes tests/corpus/malformed/: hand-built hostile command payloads and the
reason code each must be rejected with (manifest.json).

    .venv/bin/python tests/corpus/make_malformed.py

The output is deterministic (fixed fleet key and command ids), so a rerun only
changes files when a case changed; tests/test_protocol_fuzz.py checks the
committed files match. tests/core/test_protocol.py decodes every file on
CPython and MicroPython.
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


def envelope():
    return codec.unpackb(signed())


def resign(env, devices=(DEVICE,), tag=b"fleetstage-cmd\x00", key=FLEET_KEY):
    """MAC an arbitrary envelope as the operator would, to reach the checks after the MAC."""
    env = dict(env)
    env.pop("sigs", None)
    body = codec.canonical(env)
    env["sigs"] = {d: hmac_sha256(p.derive_device_key(key, d), tag + body)[:16]
                   for d in devices}
    return codec.packb(env)


def raw_map(pairs, extra=b""):
    """A msgpack map written by hand (to place bytes the encoder would never produce);
    extra: one more raw key+value pair."""
    out = bytes((0x80 | (len(pairs) + (1 if extra else 0)),))
    for k, v in pairs:
        out += codec.packb(k) + v
    return out + extra


def cases():
    good = signed()
    env = envelope()
    ordered = [(k, codec.packb(env[k])) for k in sorted(env)]
    with_raw = lambda key, raw: raw_map([(k, raw if k == key else v) for k, v in ordered])  # noqa: E731
    unsigned = dict(env)
    del unsigned["sigs"]
    bomb = b"\x91" * 1000 + b"\x00"
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
    yield "args_length_lies", with_raw("args", b"\xde\xff\xff\x00"), "malformed", {}
    yield "nested_array_bomb", with_raw("args", bomb), "malformed", {}
    yield "nested_map_bomb", with_raw("args", b"\x81\xa1k" * 200 + b"\x00"), "malformed", {}
    yield "ext_type_issued_at", with_raw("issued_at", b"\xd4\x05\x01"), "malformed", {}
    yield "timestamp_ext", with_raw("issued_at", b"\xd6\xff" + struct.pack(">I", 1)), \
        "malformed", {}
    yield "invalid_utf8_op", with_raw("op", b"\xa4mi\xffg"), "malformed", {}
    yield "invalid_utf8_key", raw_map(ordered, extra=b"\xa2\xc3\x28\x00"), "malformed", {}
    yield "extra_field", resign(dict(unsigned, debug=True)), "malformed", {}
    yield "missing_seq", codec.packb({k: v for k, v in env.items() if k != "seq"}), \
        "malformed", {}
    yield "seq_is_string", resign(dict(unsigned, seq="1000")), "malformed", {}
    yield "seq_is_bool", resign(dict(unsigned, seq=True)), "malformed", {}
    yield "seq_zero", resign(dict(unsigned, seq=0)), "malformed", {}
    yield "seq_float", resign(dict(unsigned, seq=1000.0)), "malformed", {}
    yield "id_not_hex", resign(dict(unsigned, id="not-a-hex-id-xx!")), "malformed", {}
    yield "id_bytes", resign(dict(unsigned, id=b"\x00" * 8)), "malformed", {}
    yield "version_2", resign(dict(unsigned, v=2)), "malformed", {}
    yield "target_bad", resign(dict(unsigned, target="group:a/#")), "malformed", {}
    yield "target_other_device", resign(dict(unsigned, target="device:gw-other")), \
        "malformed", {}
    yield "issued_at_nan", resign(dict(unsigned, issued_at=float("nan"))), "malformed", {}
    yield "args_list", resign(dict(unsigned, args=[1])), "malformed", {}
    yield "args_extra", resign(dict(unsigned, args={"stage": 1, "force": True})), "malformed", {}
    yield "stage_bool", resign(dict(unsigned, args={"stage": True})), "malformed", {}
    yield "stage_too_high", resign(dict(unsigned, args={"stage": 99})), "malformed", {}
    yield "stage_negative", resign(dict(unsigned, op="rollback", args={"stage": -1})), \
        "malformed", {}
    yield "reason_too_long", resign(dict(unsigned, op="emergency_rollback",
                                         args={"reason": "r" * 201})), "malformed", {}
    yield "flag_value_int", resign(dict(unsigned, op="set_flag",
                                        args={"name": "use_x", "value": 1})), "malformed", {}
    yield "flag_name_bad", resign(dict(unsigned, op="set_flag",
                                       args={"name": "../etc", "value": True})), "malformed", {}
    yield "body_too_big", resign(dict(unsigned, op="emergency_rollback",
                                      args={"reason": "r" * 5000})), "malformed", {}
    yield "float_map_key", codec.packb(dict(env, args={"stage": 1, 0.5: 1})), "malformed", {}
    yield "sigs_not_a_map", codec.packb(dict(env, sigs=[1])), "malformed", {}
    yield "desired_on_cmd", p.encode_desired("device:" + DEVICE, 1, 1000, PLAN, FLEET_KEY,
                                             command_id=CID), "malformed", {}
    yield "unsigned", codec.packb(unsigned), "bad_signature", {}
    yield "empty_sigs", codec.packb(dict(env, sigs={})), "bad_signature", {}
    yield "forged_mac", codec.packb(dict(env, sigs={DEVICE: b"\x00" * 16})), "bad_signature", {}
    yield "short_mac", codec.packb(dict(env, sigs={DEVICE: env["sigs"][DEVICE][:4]})), \
        "bad_signature", {}
    yield "tampered_stage", codec.packb(dict(env, args={"stage": 4})), "bad_signature", {}
    yield "other_device_only", signed(target="all", devices=["gw-other"]), "bad_signature", {}
    yield "leaked_device_key", resign(unsigned, key=p.derive_device_key(FLEET_KEY, "gw-other")), \
        "bad_signature", {}
    yield "other_fleet", resign(unsigned, key=b"\x01" * 32), "bad_signature", {}
    yield "desired_domain_tag", resign(unsigned, tag=b"fleetstage-desired\x00"), \
        "bad_signature", {}
    yield "wrong_plan", signed(plan="d0" * 32), "wrong_plan", {}
    yield "unknown_op", resign(dict(unsigned, op="format_flash", args={})), "unknown_op", {}
    yield "desired_wrong_plan", p.encode_desired("all", 2, 1000, "d0" * 32, FLEET_KEY, [DEVICE],
                                                 command_id=CID), "wrong_plan", {"desired": True}
    yield "desired_emergency_stage", resign(
        {"v": 1, "kind": "desired", "id": CID, "seq": 1000, "plan": PLAN, "target": "all",
         "stage": 3, "emergency": True, "reason": "x", "issued_at": 0},
        tag=b"fleetstage-desired\x00"), "malformed", {"desired": True}
    yield "command_on_desired", good, "malformed", {"desired": True}


def main():
    out = os.path.join(HERE, "malformed")
    os.makedirs(out, exist_ok=True)
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
