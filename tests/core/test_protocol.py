"""agent.protocol on both interpreters: signing, every reason code, the replay
guard, topics, targets, keys, reports and the malformed-payload corpus."""
import hashlib
import json

import corekit

from agent import protocol as p
from firmware_shim import codec
from firmware_shim.crypto import hmac_sha256

FLEET_KEY = bytes(range(32))
PLAN = "ab" * 32
KEY_A = p.derive_device_key(FLEET_KEY, "gw-a")
KEY_B = p.derive_device_key(FLEET_KEY, "gw-b")


class CallRecorder:
    """A stand-in control for p.dispatch: records (method, positional args, extra_changes)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args, extra_changes=None):
            self.calls.append((name, list(args), extra_changes))
            return name
        return call


def _dispatched(op, args, extra_changes=None):
    """(MigrationControl method name, positional args) that p.dispatch runs for op/args."""
    rec = CallRecorder()
    assert p.dispatch(rec, op, args, extra_changes) == rec.calls[0][0]
    assert len(rec.calls) == 1 and rec.calls[0][2] == extra_changes
    return rec.calls[0][0], rec.calls[0][1]


def _cmd(op="migrate", args=None, target="device:gw-a", seq=10, plan=PLAN, devices=None,
         command_id=None, key=FLEET_KEY):
    if args is None:
        args = {"stage": 1}
    return p.encode_command(op, args, target, seq, plan, key, devices=devices,
                            command_id=command_id, issued_at=1700000000)


def _decode(payload, device_id="gw-a", key=KEY_A, groups=("canary",), **kw):
    return p.decode_command(payload, key, device_id, groups, plan_hash=PLAN, **kw)


def _reason(payload, **kw):
    exc = corekit.raises(p.CommandRejected, _decode, payload, **kw)
    assert exc.reason in p.REASONS, exc.reason
    return exc.reason


def _resign(env, devices=("gw-a",), key=FLEET_KEY, kind="cmd"):
    """Sign an arbitrary envelope as the operator would (to test post-MAC checks)."""
    return p.seal(env, kind, key, devices)


def _outer(payload):
    return codec.unpackb(payload)


def _env(payload):
    return codec.unpackb(_outer(payload)["body"])


def _entry(device_id, mac_key, body, tag=b"fleetstage-cmd\x00"):
    return p.device_tag(device_id) + hmac_sha256(mac_key, tag + body)[:16]


def _wire(body, sigs=None, **extra):
    outer = {"v": 1, "body": body}
    if sigs is not None:
        outer["sigs"] = sigs
    outer.update(extra)
    return codec.packb(outer)


# ------------------------------------------------------------------ signatures

def test_sign_verify_round_trip_for_each_op():
    flag = "use_ets_agent_registry"
    cases = [("migrate", {"stage": 4}, "migrate_to_stage", [4]),
             ("rollback", {"stage": 0}, "rollback_to_stage", [0]),
             ("emergency_rollback", {"reason": "error rate 40%"}, "emergency_rollback",
              ["error rate 40%"]),
             ("set_flag", {"name": flag, "value": True}, "set_flag_override", [flag, True]),
             ("clear_flag", {"name": flag}, "clear_flag_override", [flag]),
             ("clear_quarantine", {}, "clear_quarantine", [])]
    for op, args, method, positional in cases:
        cmd = _decode(_cmd(op, args, command_id="0123456789abcdef"))
        assert cmd.op == op and cmd.args == args
        assert cmd.id == "0123456789abcdef" and cmd.seq == 10 and cmd.plan == PLAN
        assert cmd.target == "device:gw-a" and cmd.issued_at == 1700000000
        assert len(cmd.digest) == 16
        assert _dispatched(cmd.op, cmd.args, {"k": 1}) == (method, positional)


def test_wire_format_matches_the_documented_layout():
    payload = _cmd(target="all", devices=["gw-b", "gw-a"], command_id="0123456789abcdef")
    outer = _outer(payload)
    assert sorted(outer) == ["body", "sigs", "v"] and outer["v"] == 1
    env = _env(payload)
    assert outer["body"] == codec.canonical(env)
    assert sorted(env) == ["args", "id", "issued_at", "kind", "op", "plan", "seq", "target", "v"]
    entries = sorted([_entry("gw-a", KEY_A, outer["body"]), _entry("gw-b", KEY_B, outer["body"])])
    assert outer["sigs"] == b"".join(entries)
    assert p.device_tag("gw-a") == hashlib.sha256(b"fleetstage-tag:gw-a").digest()[:8]
    assert _decode(payload).digest == "".join(
        "%02x" % b for b in hashlib.sha256(outer["body"]).digest()[:8])


def test_broadcast_carries_one_mac_per_device_and_each_device_verifies_its_own():
    inventory = {"gw-a": ["canary"], "gw-b": [], "gw-c": ["canary", "east"]}
    devices = p.select_devices("all", inventory)
    payload = _cmd(target="all", devices=devices)
    assert len(_outer(payload)["sigs"]) == 3 * 24
    for d in devices:
        cmd = p.decode_command(payload, p.derive_device_key(FLEET_KEY, d), d, inventory[d])
        assert cmd.target == "all"
    group = p.select_devices("group:canary", inventory)
    assert group == ["gw-a", "gw-c"]
    payload = _cmd(target="group:canary", devices=group)
    assert _decode(payload).target == "group:canary"
    # gw-b is not in the group: it has no MAC and is not targeted
    exc = corekit.raises(p.CommandRejected, p.decode_command, payload, KEY_B, "gw-b", [])
    assert exc.reason == p.BAD_SIGNATURE
    # a big table: every device still finds its own entry by binary search
    many = [f"gw-{i}" for i in range(300)]
    payload = _cmd(target="all", devices=many)
    for d in ("gw-0", "gw-150", "gw-299", "gw-77"):
        assert p.decode_command(payload, p.derive_device_key(FLEET_KEY, d), d).seq == 10


def test_broadcast_without_device_list_is_refused_by_the_encoder():
    corekit.raises(p.ProtocolError, _cmd, target="all")
    corekit.raises(p.ProtocolError, _cmd, target="group:canary", devices=[])


def test_leaked_device_key_forges_nothing_for_another_device():
    # gw-b's key leaked: the attacker MACs gw-a's entry with it, or derives from it
    honest = _env(_cmd(target="all", devices=["gw-a", "gw-b"]))
    honest["args"] = {"stage": 4}
    body = codec.canonical(honest)
    assert _reason(_wire(body, _entry("gw-a", KEY_B, body))) == p.BAD_SIGNATURE
    # treating the leaked device key as a fleet key derives a different key for gw-a
    assert p.derive_device_key(KEY_B, "gw-a") != KEY_A
    assert _reason(_resign(honest, key=KEY_B)) == p.BAD_SIGNATURE
    # gw-b itself still accepts commands signed for it (its own key is the leak's scope)
    cmd = p.decode_command(_wire(body, _entry("gw-b", KEY_B, body)), KEY_B, "gw-b", [])
    assert cmd.args == {"stage": 4}
    # and the device keys differ from each other and from the fleet key
    assert KEY_A != KEY_B and KEY_A != FLEET_KEY and len(KEY_A) == 32


def test_bad_signature_cases():
    good = _cmd(command_id="0123456789abcdef")
    outer = _outer(good)
    body, sigs = outer["body"], outer["sigs"]
    tampered = codec.canonical(dict(_env(good), args={"stage": 4}))
    assert _reason(_wire(tampered, sigs)) == p.BAD_SIGNATURE
    exc = corekit.raises(p.CommandRejected, _decode, _wire(tampered, sigs))
    assert exc.command_id == "0123456789abcdef"  # peeked for the ack
    assert _reason(_wire(body)) == p.BAD_SIGNATURE  # unsigned
    assert _reason(_wire(body, b"")) == p.BAD_SIGNATURE
    assert _reason(_wire(body, sigs[:8] + bytes(16))) == p.BAD_SIGNATURE  # right tag, zero MAC
    exc = corekit.raises(p.CommandRejected, _decode, _wire(body, bytes(24)))
    assert exc.reason == p.BAD_SIGNATURE and exc.detail == p.NOT_SIGNED_FOR_DEVICE
    assert _reason(good, key=KEY_B) == p.BAD_SIGNATURE
    assert _reason(good, key=None) == p.BAD_SIGNATURE
    assert _reason(good, device_id="gw-b", key=KEY_B) == p.BAD_SIGNATURE
    assert _reason(_cmd(key=bytes(32))) == p.BAD_SIGNATURE  # another fleet's key
    # several entries under one tag (a collision or junk): the right one still verifies
    assert _decode(_wire(body, sigs[:8] + bytes(16) + sigs)).seq == 10


def test_desired_state_mac_does_not_verify_as_a_command_and_back():
    # the same body MACed under the desired-state domain tag does not verify as a command
    assert _reason(_resign(_env(_cmd()), kind="desired")) == p.BAD_SIGNATURE
    assert _decode(_resign(_env(_cmd()))).op == "migrate"
    cmd_bytes = _cmd()
    exc = corekit.raises(p.CommandRejected, p.decode_desired, cmd_bytes, KEY_A, "gw-a")
    assert exc.reason == p.BAD_SIGNATURE
    desired = p.encode_desired("device:gw-a", 1, 10, PLAN, FLEET_KEY)
    assert _reason(desired) == p.BAD_SIGNATURE
    # behind a valid MAC, a body of the other kind is malformed
    exc = corekit.raises(p.CommandRejected, p.decode_desired, _resign(_env(cmd_bytes),
                         kind="desired"), KEY_A, "gw-a")
    assert exc.reason == p.MALFORMED


def test_insecure_mode_accepts_unsigned_but_still_checks_a_present_signature():
    unsigned = _cmd(key=None)
    assert "sigs" not in _outer(unsigned)
    assert _reason(unsigned) == p.BAD_SIGNATURE
    assert _decode(unsigned, insecure=True).op == "migrate"
    assert _decode(unsigned, key=None, insecure=True).op == "migrate"
    assert _reason(_cmd(), key=KEY_B, insecure=True) == p.BAD_SIGNATURE


# ----------------------------------------------------------------- reason codes

def test_malformed_shapes():
    good = _env(_cmd(command_id="0123456789abcdef"))
    cases = [
        b"", b"\xc1", b"\x93\x01\x02\x03", codec.packb("text"), _cmd()[:-3], _cmd() + b"\x00",
        _resign(dict(good, extra=1)), _resign({k: v for k, v in good.items() if k != "seq"}),
        _wire(_outer(_cmd())["body"], _outer(_cmd())["sigs"], extra=1),
        _wire(_outer(_cmd())["body"], _outer(_cmd())["sigs"], v=2),
        _wire(_outer(_cmd())["body"], _outer(_cmd())["sigs"][:-1]),
        _wire(_outer(_cmd())["body"], "sigs"), _wire("body", b""), _wire(b"", b""),
        codec.packb({"body": _outer(_cmd())["body"], "sigs": _outer(_cmd())["sigs"]}),
        _resign(dict(good, seq="10")), _resign(dict(good, seq=0)), _resign(dict(good, seq=-5)),
        _resign(dict(good, seq=True)), _resign(dict(good, v=2)), _resign(dict(good, v=True)),
        _resign(dict(good, id="XYZ")), _resign(dict(good, id="0123456789ABCDEF")),
        _resign(dict(good, target="group:")), _resign(dict(good, target="device:a/b")),
        _resign(dict(good, target="everyone")), _resign(dict(good, plan="")),
        _resign(dict(good, plan=5)), _resign(dict(good, issued_at=-1)),
        _resign(dict(good, issued_at=float("nan"))), _resign(dict(good, issued_at="now")),
        _resign(dict(good, args=[1])), _resign(dict(good, args={"stage": 5})),
        _resign(dict(good, args={"stage": 0})), _resign(dict(good, args={"stage": True})),
        _resign(dict(good, args={"stage": 1.0})), _resign(dict(good, args={})),
        _resign(dict(good, args={"stage": 1, "force": True})),
        _resign(dict(good, op="emergency_rollback", args={"reason": ""})),
        _resign(dict(good, op="emergency_rollback", args={"reason": "x" * 201})),
        _resign(dict(good, op="set_flag", args={"name": "Use-Flag", "value": True})),
        _resign(dict(good, op="set_flag", args={"name": "use_x", "value": 1})),
        _resign(dict(good, op="rollback", args={"stage": 4})),
        _resign(dict(good, op=7)),
        _resign(dict(good, target="device:gw-b")),  # signed for gw-a, targets gw-b
        _float_key_body(good),  # packable, so MAC-able, but not canonical
        _resign(dict(good, kind="desired")),
    ]
    for i, payload in enumerate(cases):
        exc = corekit.raises(p.CommandRejected, _decode, payload)
        assert exc.reason == p.MALFORMED, (i, exc.reason, exc.detail)
    # the id is echoed once it could be read, for the ack
    exc = corekit.raises(p.CommandRejected, _decode, cases[-2])
    assert exc.command_id == "0123456789abcdef"


def _float_key_body(good):
    body = codec.packb(dict(good, args={"stage": 1, 1.5: 2}))
    return _wire(body, _entry("gw-a", KEY_A, body))


def test_unknown_op_and_wrong_plan():
    assert _reason(_resign(dict(_env(_cmd()), op="format_disk", args={}))) == p.UNKNOWN_OP
    assert _reason(_cmd(plan="cd" * 32)) == p.WRONG_PLAN
    # without a plan to compare, the plan is not checked
    assert p.decode_command(_cmd(plan="cd" * 32), KEY_A, "gw-a").plan == "cd" * 32


def test_payload_size_limit():
    devices = [f"gw-{i:05d}" for i in range(200)] + ["gw-a"]
    big = _cmd(target="all", devices=devices)
    assert len(big) > 4096
    assert _decode(big).op == "migrate"
    exc = corekit.raises(p.CommandRejected, _decode, big, max_payload=4096)
    assert exc.reason == p.MALFORMED and "exceeds" in exc.detail
    # the signed body (without MACs) has its own limit
    huge = dict(_env(_cmd()), op="emergency_rollback", args={"reason": "x" * 5000})
    exc = corekit.raises(p.CommandRejected, _decode, _resign(huge))
    assert exc.reason == p.MALFORMED and "body" in exc.detail
    exc = corekit.raises(p.CommandInvalid, _cmd, "set_flag", {"name": "a" * 65, "value": True})
    # the operator's own mistake is local, never the wire's CommandRejected
    assert isinstance(exc, p.LocalProtocolError) and not isinstance(exc, p.CommandRejected)
    assert exc.reason == p.MALFORMED


def test_all_reason_codes_are_distinct_constants():
    assert len(set(p.REASONS)) == 8
    for name in ("bad_signature", "replayed", "stale_sequence", "malformed", "unknown_op",
                 "wrong_plan", "not_ready", "quarantined"):
        assert name in p.REASONS
    exc = p.CommandRejected(p.NOT_READY, ["stage 1 not enabled"], "0123456789abcdef")
    assert exc.reason == "not_ready" and exc.detail == ["stage 1 not enabled"]
    assert isinstance(exc, p.ProtocolError) and isinstance(exc, ValueError)


# ------------------------------------------------------------------ replay guard

def _msg(seq, command_id=None, stage=1):
    return _decode(_cmd(args={"stage": stage}, seq=seq, command_id=command_id))


def _apply(guard, msg):
    result = guard.check(msg)
    if result == "new":
        guard.commit(guard.record(msg))
    return result


def test_guard_duplicate_is_applied_once():
    guard = p.ReplayGuard()
    first = _msg(5, "00000000000000aa")
    assert _apply(guard, first) == "new"
    again = _msg(5, "00000000000000aa")  # QoS 1 redelivery: same bytes content
    assert guard.check(again) == p.DUPLICATE
    assert guard.last_seq == 5 and len(guard.recent) == 1


def test_guard_replayed_and_stale():
    guard = p.ReplayGuard()
    _apply(guard, _msg(5, "00000000000000aa"))
    _apply(guard, _msg(9, "00000000000000bb"))
    # same id, other content
    exc = corekit.raises(p.CommandRejected, guard.check, _msg(12, "00000000000000aa", 2))
    assert exc.reason == p.REPLAYED
    # same seq, other id
    exc = corekit.raises(p.CommandRejected, guard.check, _msg(9, "00000000000000cc"))
    assert exc.reason == p.REPLAYED
    # older seq, unknown id: stale
    exc = corekit.raises(p.CommandRejected, guard.check, _msg(7, "00000000000000dd"))
    assert exc.reason == p.STALE_SEQUENCE
    assert guard.check(_msg(10, "00000000000000ee")) == "new"


def test_guard_out_of_order_delivery_rejects_the_older_one():
    older, newer = _msg(20, "0000000000000001"), _msg(21, "0000000000000002")
    guard = p.ReplayGuard()
    assert _apply(guard, newer) == "new"
    exc = corekit.raises(p.CommandRejected, guard.check, older)
    assert exc.reason == p.STALE_SEQUENCE


def test_guard_record_is_pure_until_commit_and_survives_the_store():
    guard = p.ReplayGuard()
    msg = _msg(5, "00000000000000aa")
    changes = guard.record(msg)
    assert guard.last_seq == 0 and guard.recent == []  # commit failed -> nothing changed
    assert guard.check(msg) == "new"
    assert changes == {"proto.last_seq": 5, "proto.r.0": ["00000000000000aa", 5, msg.digest]}

    class FakeStore:
        def __init__(self, data):
            self.data = data

        def get(self, key, default=None):
            return self.data.get(key, default)

        def peek(self, key):
            return self.data.get(key)

    reloaded = p.ReplayGuard.from_store(FakeStore(changes))
    assert reloaded.check(msg) == p.DUPLICATE
    assert p.ReplayGuard.from_store(FakeStore({})).last_seq == 0
    corekit.raises(p.GuardStateError, p.ReplayGuard.from_store, FakeStore({"proto.last_seq": "x"}))
    corekit.raises(p.GuardStateError, p.ReplayGuard.from_dict, {"proto.recent": 5})
    junk = p.ReplayGuard.from_dict({"proto.last_seq": 3, "proto.recent": [["a", 1], 7]})
    assert junk.recent == [] and junk.last_seq == 3
    junk = p.ReplayGuard.from_dict({"proto.last_seq": 3, "proto.r.0": "x", "proto.r.1": [1]})
    assert junk.recent == [] and junk.last_seq == 3


class _DictStore:
    def __init__(self):
        self.data = {}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def peek(self, key):
        return self.data.get(key)

    def commit(self, changes):
        for k, v in changes.items():
            if v is None:
                self.data.pop(k, None)
            else:
                self.data[k] = v


def _apply_stored(guard, store, msg):
    result = guard.check(msg)
    if result == "new":
        changes = guard.record(msg)
        store.commit(changes)
        guard.commit(changes)
    return result


def test_guard_holds_the_stores_own_entries_not_a_copy():
    """A board holds the window once: with the store's peek the guard keeps the store's
    objects; an entry the store does not hold as written is copied; rules unchanged."""
    from agent.store import Store
    from firmware_shim.files import FileSystem

    store = Store(corekit.tmpdir("guard-share") + "/state.log", fs=FileSystem(),
                  logger=lambda msg: None)
    guard = p.ReplayGuard.from_store(store)
    for seq in range(1, 6):
        msg = _msg(seq, "%016x" % seq)
        changes = guard.record(msg)
        store.commit(changes)
        guard.commit(changes, store.peek)
        key = "proto.r.%d" % guard.slots[-1]
        assert guard.recent[-1] is store.peek(key)
        assert guard.check(msg) == p.DUPLICATE
    corekit.raises(p.CommandRejected, guard.check, _msg(3, "00000000000000ff"))  # seq reused
    again = p.ReplayGuard.from_store(store)
    assert all(e is store.peek("proto.r.%d" % n) for e, n in zip(again.recent, again.slots))
    lonely = p.ReplayGuard()
    changes = lonely.record(_msg(9, "0000000000000009"))
    lonely.commit(changes, {}.get)  # the store holds nothing of it: a copy
    assert lonely.recent == [changes["proto.r.0"]] and lonely.recent[0] is not changes["proto.r.0"]


def test_guard_commit_writes_one_slot_even_with_a_full_window():
    store, guard = _DictStore(), p.ReplayGuard(window=4)
    msgs = [_msg(100 + i, f"{i:016x}") for i in range(7)]
    for m in msgs[:4]:
        _apply_stored(guard, store, m)
    changes = guard.record(msgs[4])
    # the full window: only the oldest entry's slot is rewritten, never the whole window
    assert sorted(changes) == ["proto.last_seq", "proto.r.0"]
    assert changes["proto.r.0"] == [msgs[4].id, 104, msgs[4].digest]
    store.commit(changes)
    guard.commit(changes)
    _apply_stored(guard, store, msgs[5])
    assert [e[0] for e in guard.recent] == [m.id for m in msgs[2:6]]
    reloaded = p.ReplayGuard.from_store(store, window=4)
    assert reloaded.recent == guard.recent and reloaded.last_seq == 105
    assert reloaded.check(msgs[5]) == p.DUPLICATE and reloaded.check(msgs[3]) == p.DUPLICATE
    exc = corekit.raises(p.CommandRejected, reloaded.check, msgs[1])  # evicted: stale
    assert exc.reason == p.STALE_SEQUENCE
    assert sorted(reloaded.record(msgs[6])) == ["proto.last_seq", "proto.r.2"]  # the oldest


def test_guard_moves_an_older_agents_window_list_into_slots():
    store, old = _DictStore(), [_msg(10 + i, f"{i:016x}") for i in range(3)]
    store.data = {"proto.last_seq": 12,
                  "proto.recent": [[m.id, m.seq, m.digest] for m in old]}
    guard = p.ReplayGuard.from_store(store)
    assert guard.check(old[2]) == p.DUPLICATE  # the old list still counts
    new = _msg(13, "00000000000000ff")
    changes = guard.record(new)
    assert changes["proto.recent"] is None  # deleted in the same commit
    assert [changes[f"proto.r.{n}"][0] for n in range(4)] == [m.id for m in old] + [new.id]
    store.commit(changes)
    guard.commit(changes)
    for g in (guard, p.ReplayGuard.from_store(store)):
        assert [e[0] for e in g.recent] == [m.id for m in old] + [new.id]
        assert g.check(old[0]) == p.DUPLICATE and g.last_seq == 13
    assert sorted(guard.record(_msg(14, "00000000000000fe"))) == ["proto.last_seq", "proto.r.4"]


def test_guard_record_in_a_real_store_stays_small_as_the_window_fills():
    from agent.store import Store
    from firmware_shim.files import FileSystem, join

    store = Store(join(corekit.tmpdir("guardslots"), "state.bin"), FileSystem())
    guard, sizes = p.ReplayGuard.from_store(store), []
    for i in range(80):  # past the 64-entry window
        before = store.stats()["bytes_written"]
        _apply_stored(guard, store, _msg(1000 + i, f"{i:016x}"))
        sizes.append(store.stats()["bytes_written"] - before)
    assert max(sizes[60:]) < 120, sizes  # one entry a commit (the whole window was ~3 KB)
    store.close()
    reopened = Store(store.path, FileSystem())
    guard2 = p.ReplayGuard.from_store(reopened)
    assert guard2.recent == guard.recent and len(guard2.recent) == 64
    assert guard2.check(_msg(1079, f"{79:016x}")) == p.DUPLICATE
    reopened.close()


def test_guard_window_is_bounded_and_evicted_ids_are_stale():
    guard = p.ReplayGuard(window=4)
    msgs = [_msg(100 + i, f"{i:016x}") for i in range(6)]
    for m in msgs:
        assert _apply(guard, m) == "new"
    assert len(guard.recent) == 4 and guard.last_seq == 105
    exc = corekit.raises(p.CommandRejected, guard.check, msgs[0])
    assert exc.reason == p.STALE_SEQUENCE
    assert guard.check(msgs[5]) == p.DUPLICATE


def test_desired_states_share_the_sequence_and_emergency_outranks_older():
    guard = p.ReplayGuard()
    keys = dict(key=KEY_A, device_id="gw-a", groups=["canary"], plan_hash=PLAN)
    retained = p.decode_desired(p.encode_desired("all", 4, 30, PLAN, FLEET_KEY, ["gw-a"]), **keys)
    emergency = p.decode_desired(p.encode_desired(
        "group:canary", 0, 31, PLAN, FLEET_KEY, ["gw-a"], emergency=True, reason="errors"), **keys)
    queued = _msg(29, "0000000000000029", stage=4)
    assert p.pick_desired([retained, None, emergency]) is emergency
    assert emergency.action(3) == ("emergency_rollback", {"reason": "errors"})
    assert retained.action(1) == ("migrate", {"stage": 4})
    assert retained.action(4) is None
    assert p.decode_desired(p.encode_desired("all", 1, 5, PLAN, FLEET_KEY, ["gw-a"]),
                            **keys).action(3) == ("rollback", {"stage": 1})
    assert _apply(guard, emergency) == "new"
    for late in (retained, queued):
        exc = corekit.raises(p.CommandRejected, guard.check, late)
        assert exc.reason == p.STALE_SEQUENCE
    assert guard.check(emergency) == p.DUPLICATE  # the retained copy on every reconnect
    later = p.decode_desired(p.encode_desired("all", 2, 40, PLAN, FLEET_KEY, ["gw-a"]), **keys)
    assert guard.check(later) == "new"  # a later decision needs a higher seq
    corekit.raises(p.CommandInvalid, p.encode_desired, "all", 3, 41, PLAN, FLEET_KEY, ["gw-a"],
                   emergency=True, reason="x")  # an emergency is stage 0


def test_next_seq_is_monotonic():
    assert p.next_seq(0, 1700000000.5) == 1700000000500
    assert p.next_seq(1700000000500, 1700000000.5) == 1700000000501
    assert p.next_seq(5, 0) == 6
    ids = set(p.new_command_id() for _ in range(20))
    assert len(ids) == 20 and all(len(i) == 16 for i in ids)


# ------------------------------------------------------------- topics, targets

def test_topics_build_and_parse():
    assert p.cmd_topic("f1", "all") == "fleetstage/f1/cmd/all"
    assert p.desired_topic("f1", "group:east") == "fleetstage/f1/desired/group/east"
    assert p.cmd_topic("f1", "device:gw-a") == "fleetstage/f1/cmd/device/gw-a"
    assert p.device_topic("f1", "gw-a", "status") == "fleetstage/f1/device/gw-a/status"
    assert p.device_wildcard("f1", "ack") == "fleetstage/f1/device/+/ack"
    assert p.parse_topic("fleetstage/f1/cmd/all") == ("f1", "cmd", "all", None)
    assert p.parse_topic("fleetstage/f1/desired/group/east") == ("f1", "desired", "group:east",
                                                                 None)
    assert p.parse_topic("fleetstage/f1/device/gw-a/ack") == ("f1", "device", "device:gw-a", "ack")
    for t in ("fleetstage/f1/device/gw-a/ack", "fleetstage/f1/cmd/device/gw-a",
              "fleetstage/f1/desired/all"):
        fleet, channel, target, leaf = p.parse_topic(t)
        if channel == "device":
            assert p.device_topic(fleet, target[7:], leaf) == t
        else:
            assert getattr(p, channel + "_topic")(fleet, target) == t
    for bad in ("", "other/f1/cmd/all", "fleetstage/f1/cmd", "fleetstage/f1/cmd/all/x",
                "fleetstage/f1/cmd/group", "fleetstage/f+/cmd/all", "fleetstage/f1/cmd/zone/x",
                "fleetstage/f1/device/gw-a/secrets", "fleetstage/f1/cmd/device/#", 7):
        corekit.raises(p.BadTopic, p.parse_topic, bad)
    corekit.raises(p.BadTopic, p.device_topic, "f1", "gw-a", "secrets")
    corekit.raises(p.BadId, p.cmd_topic, "f/1", "all")


def test_subscriptions_cover_all_groups_and_self():
    subs = p.subscriptions("f1", "gw-a", ["west", "east"])
    topics = [t for t, q in subs]
    assert all(q == 1 for t, q in subs)
    bucket = p.bucket_of("gw-a")
    buckets = []
    for n in range(1, p.BUCKET_DEPTH + 1):
        buckets += ["fleetstage/f1/cmd/bucket/" + bucket[:n],
                    "fleetstage/f1/desired/bucket/" + bucket[:n]]
    assert topics == [
        "fleetstage/f1/cmd/all", "fleetstage/f1/desired/all",
        "fleetstage/f1/cmd/group/east", "fleetstage/f1/desired/group/east",
        "fleetstage/f1/cmd/group/west", "fleetstage/f1/desired/group/west",
    ] + buckets + [
        "fleetstage/f1/cmd/device/gw-a", "fleetstage/f1/desired/device/gw-a",
    ]
    corekit.raises(p.BadId, p.subscriptions, "f1", "gw-a", ["ok", "bad/group"])


def test_bucket_targets_address_every_device_whose_bucket_starts_with_the_prefix():
    b = p.bucket_of("gw-a")
    assert len(b) == p.BUCKET_DEPTH and all(c in "0123456789abcdef" for c in b)
    assert b == p.bucket_of("gw-a") and b != p.bucket_of("gw-b")
    for n in range(1, p.BUCKET_DEPTH + 1):
        target = "bucket:" + b[:n]
        assert p.parse_target(target) == ("bucket", b[:n])
        assert p.target_matches(target, "gw-a")
        topic = p.cmd_topic("f1", target)
        assert topic == "fleetstage/f1/cmd/bucket/" + b[:n]
        assert p.parse_topic(topic) == ("f1", "cmd", target, None)
    other = "0" if b[0] != "0" else "1"
    assert not p.target_matches("bucket:" + other, "gw-a")
    for bad in ("bucket:", "bucket:ABC", "bucket:1234567", "bucket:xyz", "bucket:1/2"):
        corekit.raises(p.BadTarget, p.parse_target, bad)
    corekit.raises(p.BadTopic, p.parse_topic, "fleetstage/f1/cmd/bucket/zz")


def test_a_bucket_command_reaches_its_signed_members_only():
    key = p.new_fleet_key()
    b = p.bucket_of("gw-a")
    target = "bucket:" + b[:1]
    msg = p.encode_command("migrate", {"stage": 1}, target, 5, "h", key, devices=["gw-a"])
    cmd = p.decode_command(msg, p.derive_device_key(key, "gw-a"), "gw-a")
    assert cmd.target == target and cmd.seq == 5
    # a device of another bucket is not in the target (even with a valid MAC)
    other = next(d for d in ("gw-%d" % i for i in range(100)) if p.bucket_of(d)[0] != b[0])
    msg2 = p.encode_command("migrate", {"stage": 1}, target, 6, "h", key, devices=[other])
    corekit.raises(p.CommandRejected, p.decode_command, msg2,
                   p.derive_device_key(key, other), other)


def test_ids_and_targets():
    assert p.validate_id("gw-01.b8:27") == "gw-01.b8:27"
    for bad in ("", "a/b", "a+b", "a#", "a b", "x" * 65, None, 5, "é"):
        corekit.raises(p.BadId, p.validate_id, bad)
    assert p.validate_id("x" * 64) == "x" * 64
    assert p.parse_target("all") == ("all", None)
    assert p.parse_target("group:east") == ("group", "east")
    assert p.parse_target("device:b8:27:eb") == ("device", "b8:27:eb")
    for bad in ("", "ALL", "group:", "zone:x", ":x", "device:a/b", "group:+", None):
        corekit.raises(p.BadTarget, p.parse_target, bad)
    assert p.make_target("group", "east") == "group:east"
    assert p.make_target("all") == "all"
    assert p.target_matches("all", "gw-a", [])
    assert p.target_matches("group:east", "gw-a", ["west", "east"])
    assert not p.target_matches("group:east", "gw-a", ["west"])
    assert p.target_matches("device:gw-a", "gw-a", [])
    assert not p.target_matches("device:gw-b", "gw-a", ["gw-b"])


# ------------------------------------------------------------------------- keys

def test_key_derivation_is_deterministic_and_distinct():
    assert p.derive_device_key(FLEET_KEY, "gw-a") == KEY_A
    assert p.derive_device_key(bytes(32), "gw-a") != KEY_A
    keys = set(p.derive_device_key(FLEET_KEY, f"gw-{i}") for i in range(50))
    assert len(keys) == 50
    corekit.raises(p.KeyFileError, p.derive_device_key, b"short", "gw-a")
    corekit.raises(p.BadId, p.derive_device_key, FLEET_KEY, "a/b")
    k1, k2 = p.new_fleet_key(), p.new_fleet_key()
    assert len(k1) == 32 and k1 != k2


def test_key_files():
    fleet = p.parse_key_file(p.format_key_file(FLEET_KEY))
    assert (fleet.kind, fleet.key, fleet.device_id) == ("fleet", FLEET_KEY, None)
    assert "00010203" not in repr(fleet)
    dev = p.parse_key_file(p.format_key_file(KEY_A, "device", "gw-a"))
    assert (dev.kind, dev.key, dev.device_id) == ("device", KEY_A, "gw-a")
    assert p.agent_key(dev, "gw-a") == (KEY_A, None)
    corekit.raises(p.KeyFileError, p.agent_key, dev, "gw-b")
    key, warning = p.agent_key(fleet, "gw-a")
    assert key == KEY_A and "FLEET" in warning
    raw = p.parse_key_file(FLEET_KEY)
    assert (raw.kind, raw.key) == ("raw", FLEET_KEY)
    hexed = p.parse_key_file(FLEET_KEY.hex().upper().encode() + b"\n")
    assert (hexed.kind, hexed.key) == ("raw", FLEET_KEY)
    for bad in (b"", b"abc", b"fleetstage-key v2 fleet " + FLEET_KEY.hex().encode(),
                b"fleetstage-key v1 fleet " + FLEET_KEY.hex()[:-2].encode(),
                b"fleetstage-key v1 device a/b " + FLEET_KEY.hex().encode(),
                b"fleetstage-key v1 other " + FLEET_KEY.hex().encode(), b"\xff" * 40, "text"):
        corekit.raises(p.KeyFileError, p.parse_key_file, bad)
    corekit.raises(p.KeyFileError, p.format_key_file, b"short")
    corekit.raises(p.KeyFileError, p.format_key_file, FLEET_KEY, "group")


def test_the_key_names_load_their_module_again_after_a_board_released_it():
    # A board frees agent.protocol._keys once its agent runs (agent.boot.BOOT_ONLY_MODULES):
    # the door's names for it load it again when asked for; other names are not invented.
    import sys

    from firmware_shim.board import Board

    name = "agent.protocol._keys"
    p.parse_key_file(FLEET_KEY)  # loaded by now
    kept = sys.modules[name]
    try:
        Board().release_modules((name,))
        assert name not in sys.modules
        dev = p.parse_key_file(p.format_key_file(KEY_A, "device", "gw-a"))
        assert p.agent_key(dev, "gw-a") == (KEY_A, None) and name in sys.modules
        assert p.derive_device_key(FLEET_KEY, "gw-a") == KEY_A
    finally:  # the rest of the run keeps the module it started with (its KeyInfo class)
        sys.modules[name] = kept
        p._keys = kept
    corekit.raises(AttributeError, getattr, p, "no_such_name")


# ---------------------------------------------------------------------- reports

def test_ack_round_trip_and_device_mac():
    payload = p.encode_ack("0123456789abcdef", p.REJECTED, p.NOT_READY,
                           ["stage 1 not enabled", "x" * 500], state={"stage": 0},
                           device_id="gw-a", seq=7, key=KEY_A, now=1700000000)
    body = p.decode_report(payload, key=KEY_A, kind="ack", device_id="gw-a")
    assert body["result"] == "rejected" and body["reason"] == "not_ready"
    assert body["detail"][0] == "stage 1 not enabled" and len(body["detail"][1]) == 200
    assert body["state"] == {"stage": 0} and body["seq"] == 7 and "sig" not in body
    assert p.decode_report(payload, fleet_key=FLEET_KEY)["device"] == "gw-a"
    corekit.raises(p.ReportError, p.decode_report, payload, key=KEY_B)
    corekit.raises(p.ReportError, p.decode_report, payload, kind="status")
    corekit.raises(p.ReportError, p.decode_report, payload, device_id="gw-b")
    # gw-b cannot speak as gw-a
    forged = p.encode_ack("0123456789abcdef", p.APPLIED, device_id="gw-a", key=KEY_B)
    corekit.raises(p.ReportError, p.decode_report, forged, fleet_key=FLEET_KEY)
    unsigned = p.encode_ack("0123456789abcdef", p.DUPLICATE, device_id="gw-a")
    assert p.decode_report(unsigned)["result"] == "duplicate"
    corekit.raises(p.ReportError, p.decode_report, unsigned, key=KEY_A)
    corekit.raises(p.ProtocolError, p.encode_ack, "x", "maybe")
    corekit.raises(p.ProtocolError, p.encode_ack, "x", p.REJECTED)
    corekit.raises(p.ProtocolError, p.encode_ack, "x", p.APPLIED, p.MALFORMED)
    corekit.raises(p.ProtocolError, p.encode_ack, "x", p.REJECTED, "nope")
    assert p.decode_report(p.encode_ack(None, p.REJECTED, p.MALFORMED, "empty payload",
                                        device_id="gw-a"))["id"] is None


def test_status_health_event_and_last_will():
    flags = {"use_ets_agent_registry": True, "enforce_no_process_dict": False}
    status = p.decode_report(p.encode_status(
        "gw-a", 1, flags, health={"error_rate": 0.01}, plan_hash=PLAN, agent_version="0.1.0",
        uptime_s=42, groups=["canary"], quarantined=False, key=KEY_A, now=5), key=KEY_A)
    assert status["online"] is True and status["stage"] == 1 and status["flags"] == flags
    assert status["plan"] == PLAN and status["agent_version"] == "0.1.0"
    assert status["uptime_s"] == 42 and status["health"] == {"error_rate": 0.01}
    will = p.decode_report(p.encode_offline_status("gw-a", key=KEY_A), key=KEY_A, kind="status")
    assert will["online"] is False and will["device"] == "gw-a"
    health = p.decode_report(p.encode_health("gw-a", {"error_rate": 0.2}, now=9), kind="health")
    assert health["metrics"] == {"error_rate": 0.2} and health["at"] == 9
    event = p.decode_report(p.encode_event("gw-a", "migration.rollback", {"to": 0}),
                            kind="event")
    assert event["name"] == "migration.rollback" and event["payload"] == {"to": 0}
    corekit.raises(p.ProtocolError, p.encode_event, "gw-a", "")
    for bad in (b"", b"\xc1", codec.packb([1]), codec.packb({"kind": "ack"}),
                codec.packb({"kind": "ack", "device": "a/b"}), "str"):
        corekit.raises(p.ReportError, p.decode_report, bad)


# ----------------------------------------------------------------------- corpus

def _corpus_dir():
    here = __file__.replace("\\", "/")
    base = here[:here.rfind("/")] if "/" in here else "."
    return base + "/../corpus/malformed"


def test_malformed_corpus_gets_its_reason_code():
    folder = _corpus_dir()
    with open(folder + "/manifest.json") as f:
        manifest = json.load(f)
    fleet_key = bytes.fromhex(manifest["fleet_key"])
    device = manifest["device_id"]
    key = p.derive_device_key(fleet_key, device)
    assert len(manifest["cases"]) >= 20
    seen = set()
    for case in manifest["cases"]:
        with open(folder + "/" + case["file"], "rb") as f:
            payload = f.read()
        decode = p.decode_desired if case.get("desired") else p.decode_command
        exc = corekit.raises(p.CommandRejected, decode, payload, key, device,
                             manifest["groups"], plan_hash=manifest["plan_hash"],
                             max_payload=case.get("max_payload", p.MAX_PAYLOAD))
        assert exc.reason == case["reason"], (case["file"], exc.reason, exc.detail)
        seen.add(exc.reason)
    assert seen == {p.MALFORMED, p.BAD_SIGNATURE, p.WRONG_PLAN, p.UNKNOWN_OP}


def test_errors_split_local_and_remote_under_one_root():
    for cls in (p.BadId, p.BadTarget, p.BadTopic, p.KeyFileError, p.CommandInvalid):
        assert issubclass(cls, p.LocalProtocolError) and issubclass(cls, p.ProtocolError)
        assert not issubclass(cls, p.RemoteProtocolError)
    for cls in (p.CommandRejected, p.ReportError, p.GuardStateError):
        assert issubclass(cls, p.RemoteProtocolError) and issubclass(cls, p.ProtocolError)
        assert not issubclass(cls, p.LocalProtocolError)
    # a bad value that came off the wire is a remote error (the agent acks it)
    env = dict(_env(_cmd()), args={"name": "a" * 65, "value": True}, op="set_flag")
    exc = corekit.raises(p.CommandRejected, _decode, _resign(env))
    assert exc.reason == p.MALFORMED


def test_the_package_has_one_public_door():
    assert sorted(set(p.__all__)) == sorted(p.__all__)
    for name in p.__all__:
        assert not name.startswith("_") and getattr(p, name) is not None
    assert p.IN_QUARANTINE == "quarantined" and p.IN_QUARANTINE in p.REASONS
    assert not hasattr(p, "QUARANTINED")  # the state's name (agent.transitions) only
    assert sorted(p.CONTROL_OPS) == sorted(p.OPS)
    corekit.raises(p.LocalProtocolError, p.dispatch, CallRecorder(), "noop", {})
