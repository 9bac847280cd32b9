"""Hostile input for agent.protocol (CPython, hypothesis).

The contract under test: decode_command / decode_desired return a Command
whose every field is valid, or raise CommandRejected with a known reason code.
Any other exception is a bug. Inputs: random bytes, valid commands mutated at
the byte level (bit flips, truncation, insertion, huge length headers), and
envelopes mutated at the field level and then correctly re-signed, so the
checks behind the MAC are reached too. Also: the replay guard's invariants
over random delivery orders, and the committed corpus matching its generator.
"""
import importlib.util
import math
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import protocol as p
from agent.protocol._commands import _CMD_FIELDS, _DESIRED_FIELDS
from firmware_shim import codec, minipack
from firmware_shim.crypto import hmac_sha256

FLEET_KEY = bytes(range(100, 132))
DEVICE = "gw-fuzz"
GROUPS = ["canary", "east"]
KEY = p.derive_device_key(FLEET_KEY, DEVICE)
PLAN = "9f" * 32
# FLEETSTAGE_FUZZ_EXAMPLES=20000 for a deeper run than the suite's default.
FUZZ = settings(max_examples=int(os.environ.get("FLEETSTAGE_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

OPS_ARGS = [
    ("migrate", {"stage": 3}), ("rollback", {"stage": 1}),
    ("emergency_rollback", {"reason": "health"}),
    ("set_flag", {"name": "use_logger_error_context", "value": False}),
    ("clear_flag", {"name": "use_logger_error_context"}), ("clear_quarantine", {}),
]
TARGETS = ["all", "group:canary", "group:east", "device:" + DEVICE]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.binary(max_size=40),
)
keys = st.one_of(st.text(max_size=12), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                 st.binary(max_size=6), st.booleans(), st.none(), st.floats(allow_nan=False))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=16)
FIELDS = list(_CMD_FIELDS)


def _valid(op_index, target_index, seq):
    op, args = OPS_ARGS[op_index]
    return p.encode_command(op, args, TARGETS[target_index], seq, PLAN, FLEET_KEY,
                            devices=[DEVICE, "gw-other"], issued_at=1700000000.25)


def _resign(env, kind="cmd"):
    """A correctly MACed payload for any envelope, canonical or not."""
    try:
        body = codec.canonical(env)
    except codec.CodecError:  # e.g. float keys: still packable, so still MAC-able
        body = codec.packb(env)
    tag = b"fleetstage-cmd\x00" if kind == "cmd" else b"fleetstage-desired\x00"
    sigs = p.device_tag(DEVICE) + hmac_sha256(KEY, tag + body)[:16]
    return codec.packb({"v": 1, "body": body, "sigs": sigs})


def _body(payload):
    return codec.unpackb(codec.unpackb(payload)["body"])


def _check_command(cmd):
    """Every field of an accepted command is of the type and range the runtime relies on."""
    assert isinstance(cmd.id, str) and len(cmd.id) == 16
    assert type(cmd.seq) is int and 1 <= cmd.seq <= p.MAX_SEQ
    assert cmd.plan == PLAN
    assert p.target_matches(cmd.target, DEVICE, GROUPS)
    assert isinstance(cmd.issued_at, (int, float)) and not isinstance(cmd.issued_at, bool)
    assert math.isfinite(cmd.issued_at)
    if isinstance(cmd, p.DesiredState):
        assert type(cmd.stage) is int and 0 <= cmd.stage <= p.MAX_STAGE
        assert isinstance(cmd.emergency, bool)
        return
    assert cmd.op in p.OPS
    calls = []

    class Control:  # records what p.dispatch would run on MigrationControl
        def __getattr__(self, name):
            return lambda *a, extra_changes=None: calls.append((name, a))

    p.dispatch(Control(), cmd.op, cmd.args, {})
    [(name, pos)] = calls
    for a in pos:
        assert type(a) in (int, str, bool)
    if cmd.op in ("migrate", "rollback"):
        assert type(cmd.args["stage"]) is int and 0 <= cmd.args["stage"] <= p.MAX_STAGE


def _decode_contract(payload, desired=False, insecure=False, max_payload=p.MAX_PAYLOAD):
    fn = p.decode_desired if desired else p.decode_command
    try:
        cmd = fn(payload, KEY, DEVICE, GROUPS, plan_hash=PLAN, insecure=insecure,
                 max_payload=max_payload)
    except p.CommandRejected as exc:
        assert exc.reason in p.REASONS
        assert exc.detail is None or isinstance(exc.detail, str)
        assert exc.command_id is None or len(exc.command_id) == 16
        return None
    _check_command(cmd)
    return cmd


@FUZZ
@given(st.binary(max_size=4096), st.booleans(), st.booleans())
def test_random_bytes(payload, desired, insecure):
    _decode_contract(payload, desired, insecure)


@FUZZ
@given(st.lists(st.integers(0, 255), max_size=3).map(bytes),
       st.sampled_from([b"\x80", b"\x90", b"\xdc", b"\xdd", b"\xde", b"\xdf", b"\xdb", b"\xc6",
                        b"\xc7", b"\xc8", b"\xc9", b"\xd4", b"\xd8", b"\xcb", b"\xc1"]),
       st.binary(max_size=64))
def test_length_headers_that_lie(prefix, type_byte, rest):
    _decode_contract(prefix + type_byte + b"\xff\xff\xff\xff" + rest)
    _decode_contract(b"\x8a" + type_byte + b"\xff\xff" + rest)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 16)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("huge"), st.integers(0, 10**6), st.integers(0, 3)),
)


def _mutate(data, how):
    kind, pos, arg = how
    data = bytearray(data)
    pos = pos % (len(data) + 1)
    if kind == "flip" and pos < len(data):
        data[pos] ^= 1 << arg
    elif kind == "truncate":
        del data[pos:]
    elif kind == "insert":
        data[pos:pos] = bytes((arg,))
    elif kind == "delete":
        del data[pos:pos + arg]
    elif kind == "set" and pos < len(data):
        data[pos] = arg
    elif kind == "huge":
        data[pos:pos] = [b"\xdb\xff\xff\xff\xf0", b"\xdd\x7f\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                         b"\xc6\x10\x00\x00\x00"][arg]
    return bytes(data)


@FUZZ
@given(st.integers(0, len(OPS_ARGS) - 1), st.integers(0, len(TARGETS) - 1),
       st.integers(1, p.MAX_SEQ), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_valid_commands(op_index, target_index, seq, mutations):
    original = _valid(op_index, target_index, seq)
    assert _decode_contract(original) is not None  # the unmutated one is accepted
    data = original
    for how in mutations:
        data = _mutate(data, how)
    cmd = _decode_contract(data)
    if cmd is not None and data != original:
        # a mutation that still verifies cannot have changed the signed content
        ref = p.decode_command(original, KEY, DEVICE, GROUPS, plan_hash=PLAN)
        assert (cmd.digest, cmd.op, cmd.args, cmd.seq) == (ref.digest, ref.op, ref.args, ref.seq)


@FUZZ
@given(st.integers(0, len(OPS_ARGS) - 1), st.integers(0, len(TARGETS) - 1),
       st.dictionaries(st.sampled_from(FIELDS + ["extra", "op_args"]), values, max_size=3),
       st.lists(st.sampled_from(FIELDS), max_size=2), st.booleans())
def test_field_swaps_extra_fields_and_resigning(op_index, target_index, replace, drop, resign):
    original = _valid(op_index, target_index, 77)
    env = _body(original)
    env.update(replace)
    for k in drop:
        env.pop(k, None)
    if resign:
        payload = _resign(env)
    else:  # the original MAC table over a changed body
        outer = codec.unpackb(_resign(env))
        outer["sigs"] = codec.unpackb(original)["sigs"]
        payload = codec.packb(outer)
    _decode_contract(payload)
    _decode_contract(payload, desired=True)
    _decode_contract(payload, insecure=True)


@FUZZ
@given(st.sampled_from(OPS_ARGS + [("migrate", None), ("set_flag", None), ("bogus", None)]),
       st.dictionaries(st.sampled_from(["stage", "reason", "name", "value", "x"]), values,
                       max_size=3))
def test_args_of_every_type_behind_a_valid_mac(op_args, args):
    env = _body(_valid(0, 0, 5))
    env["op"] = op_args[0]
    env["args"] = args if op_args[1] is None else dict(op_args[1], **args)
    _decode_contract(_resign(env))


@FUZZ
@given(st.dictionaries(st.sampled_from(["v", "body", "sigs", "x"]), values, max_size=3),
       st.lists(st.sampled_from(["v", "body", "sigs"]), max_size=2))
def test_outer_map_mutations(replace, drop):
    outer = codec.unpackb(_valid(1, 0, 5))
    outer.update(replace)
    for k in drop:
        outer.pop(k, None)
    _decode_contract(codec.packb(outer))
    _decode_contract(codec.packb(outer), desired=True, insecure=True)


@FUZZ
@given(st.binary(max_size=600), st.integers(0, len(OPS_ARGS) - 1),
       st.lists(mutation, min_size=1, max_size=3))
def test_same_contract_with_the_micropython_codec(data, op_index, mutations):
    """On a board the decoder is firmware_shim.minipack: hold it to the same contract."""
    saved = codec.unpackb
    codec.unpackb = minipack.unpackb
    try:
        _decode_contract(data)
        payload = _valid(op_index, 0, 9)
        assert _decode_contract(payload) is not None
        for how in mutations:
            payload = _mutate(payload, how)
        _decode_contract(payload)
    finally:
        codec.unpackb = saved


@FUZZ
@given(st.integers(0, p.MAX_STAGE), st.booleans(),
       st.one_of(st.none(), st.text(min_size=1, max_size=60), values),
       st.dictionaries(st.sampled_from(list(_DESIRED_FIELDS)), values, max_size=2))
def test_desired_states(stage, emergency, reason, replace):
    env = {"v": 1, "kind": "desired", "id": "0123456789abcdef", "seq": 9, "plan": PLAN,
           "target": "group:canary", "stage": stage, "emergency": emergency, "reason": reason,
           "issued_at": 0}
    env.update(replace)
    state = _decode_contract(_resign(env, "desired"), desired=True)
    if state is not None and state.emergency:
        assert state.stage == 0 and state.action(4)[0] == "emergency_rollback"


@FUZZ
@given(st.binary(max_size=512))
def test_reports_keys_and_topics_raise_only_their_errors(data):
    for call, err in ((lambda: p.decode_report(data, key=KEY), p.ReportError),
                      (lambda: p.decode_report(data, fleet_key=FLEET_KEY), p.ReportError),
                      (lambda: p.parse_key_file(data), p.KeyFileError),
                      (lambda: p.parse_topic(data.decode("latin-1")), p.BadTopic),
                      (lambda: p.parse_target(data.decode("latin-1")), p.BadTarget)):
        try:
            call()
        except err:
            pass


@FUZZ
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 5), st.integers(1, 3)),
                min_size=1, max_size=30))
def test_replay_guard_applies_each_command_once_and_in_order(deliveries):
    """Random redelivery/reordering/id reuse: applied seqs strictly increase, no id twice."""
    guard = p.ReplayGuard(window=4)
    applied_ids, applied_seqs = [], []
    for seq, id_n, stage in deliveries:
        cmd = p.decode_command(p.encode_command(
            "migrate", {"stage": stage}, "all", seq, PLAN, FLEET_KEY, [DEVICE],
            command_id=f"{id_n:016x}", issued_at=0), KEY, DEVICE, GROUPS)
        try:
            verdict = guard.check(cmd)
        except p.CommandRejected as exc:
            assert exc.reason in (p.REPLAYED, p.STALE_SEQUENCE)
            continue
        if verdict == p.DUPLICATE:
            assert cmd.id in applied_ids
            continue
        assert verdict == "new"
        assert cmd.id not in applied_ids[-4:]
        assert not applied_seqs or cmd.seq > applied_seqs[-1]
        guard.commit(guard.record(cmd))
        applied_ids.append(cmd.id)
        applied_seqs.append(cmd.seq)
        # the state survives a store round trip
        guard = p.ReplayGuard.from_dict(codec.unpackb(codec.packb(guard.state())), window=4)


def test_committed_corpus_matches_its_generator():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    spec = importlib.util.spec_from_file_location("make_malformed",
                                                  os.path.join(here, "make_malformed.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    names = []
    for name, payload, _reason, _extra in gen.cases():
        with open(os.path.join(here, "malformed", name + ".bin"), "rb") as f:
            on_disk = f.read()
        assert on_disk == payload, name
        names.append(name)
    assert len(names) == len(set(names)) >= 50
