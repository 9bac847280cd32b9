"""What verifying a command costs an agent, next to merely unpacking its bytes.

Figures (informative, no targets): decode_command (unpack, shape checks, the
device's HMAC-SHA256 over the canonical body, field validation, plan check)
as a ratio to msgpack.unpackb of the same payload, for a device-targeted
command and for a broadcast signed for 1,000 devices; and the operator's
signing of that broadcast as a ratio to msgpack.packb of the same envelope.
"""
import time

import msgpack

from agent import protocol as p
from bench.__main__ import figure

FLEET_KEY = bytes(range(32))
FLEET = "bench"
PLAN = "ab" * 32


def _per_call(fn, n):
    fn()  # warm up
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = (time.perf_counter() - t0) / n
        best = dt if best is None or dt < best else best
    return best


def _decode_row(name, payload, device, n):
    key = p.derive_device_key(FLEET_KEY, device)

    def decode():
        return p.decode_command(payload, key, device, (), plan_hash=PLAN, fleet=FLEET)

    decode()  # must verify, or the figure would time a rejection
    ours = _per_call(decode, n)
    base = _per_call(lambda: msgpack.unpackb(payload, raw=False, strict_map_key=False), n)
    return figure(name, ours * 1e6, "us", "msgpack.unpackb of the same bytes", base * 1e6)


def run(quick=False):
    n = 300 if quick else 3000
    fleet = 200 if quick else 1000
    devices = [f"gw-{i:05d}" for i in range(fleet)]
    one = p.encode_command("migrate", {"stage": 2}, "device:gw-00000", 7, PLAN, FLEET_KEY,
                           fleet=FLEET)
    wide = p.encode_command("migrate", {"stage": 2}, "all", 7, PLAN, FLEET_KEY, devices=devices,
                            fleet=FLEET)
    body = msgpack.unpackb(one, raw=False)["body"]

    def plain_parse():  # what an unsigned protocol would still have to do
        return msgpack.unpackb(msgpack.unpackb(one, raw=False)["body"], raw=False)

    key = p.derive_device_key(FLEET_KEY, "gw-00000")
    ours = _per_call(lambda: p.decode_command(one, key, "gw-00000", (), plan_hash=PLAN,
                                              fleet=FLEET), n)
    rows = [
        _decode_row(f"decode+verify, device command ({len(one)} B)", one, "gw-00000", n),
        figure(f"decode+verify, device command ({len(body)} B body)", ours * 1e6, "us",
               "msgpack.unpackb of envelope and body, no checks", _per_call(plain_parse, n) * 1e6),
        _decode_row(f"decode+verify, broadcast to {fleet} ({len(wide)} B)", wide,
                    devices[fleet // 2], max(n // 20, 20)),
    ]
    outer = msgpack.unpackb(wide, raw=False)

    def sign():
        return p.encode_command("migrate", {"stage": 2}, "all", 7, PLAN, FLEET_KEY,
                                devices=devices, fleet=FLEET)

    reps = 3 if quick else 10
    ours = _per_call(sign, reps)
    base = _per_call(lambda: msgpack.packb(outer, use_bin_type=True), reps * 10)
    rows.append(figure(f"sign broadcast for {fleet} devices", ours * 1e3, "ms",
                       "msgpack.packb of the same payload", base * 1e3))
    return rows
