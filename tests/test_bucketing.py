"""Hash-bucket addressing: what one device receives per command stays bounded at any size.

Today's broadcast carries one 24-byte MAC per targeted device (MAX_PAYLOAD holds
~10,900), so a 10^6-device wave cannot be one message. Here a wave is published as
one message per bucket prefix, at the prefix length that keeps each message within
MAX_MACS entries; every device hears exactly one message of it.
"""
from agent import protocol as P
from tools.bucketing import MAX_MACS, Buckets, bytes_per_device, messages_heard, plan_addressing
from tools.waves import stable_order

BODY = 200  # a signed migrate body is ~130 bytes


def _fleet(n):
    return ["gw-%07d" % i for i in range(n)]


def _check(plan, buckets, members):
    assert sorted(d for _t, ds in plan for d in ds) == sorted(members)
    assert all(len(ds) <= MAX_MACS for _t, ds in plan)
    for target, ds in plan:
        assert all(P.target_matches(target, d) for d in ds)
    heard = messages_heard(plan, buckets)
    assert max(heard.values()) == 1  # nobody hears two messages of one command


def test_bytes_per_device_stay_bounded_from_ten_devices_to_a_million():
    bound = BODY + MAX_MACS * (P.TAG_BYTES + P.MAC_BYTES) + 16
    worst = {}
    for n in (10, 1000, 1_000_000):
        fleet = _fleet(n)
        buckets = Buckets(fleet)
        ordered = stable_order(fleet) if n <= 1000 else fleet  # any order: bytes depend on ids
        for share in (0.02, 1.0) if n > 1000 else (0.02, 0.5, 1.0):
            members = ordered[:max(1, int(n * share))]
            plan = plan_addressing(members, buckets)
            if n <= 1000:
                _check(plan, buckets, members)
            # one prefix length, distinct prefixes: each device hears at most one message
            targets = [t for t, _ds in plan]
            assert len(set(targets)) == len(targets) and len({len(t) for t in targets}) == 1
            worst[(n, share)] = bytes_per_device(plan, buckets, BODY)
            assert worst[(n, share)] <= bound
    # the whole fleet's broadcast would be 24 MB at 10^6; each device gets a few KB
    assert worst[(1_000_000, 1.0)] < 8 * 1024
    assert 1_000_000 * (P.TAG_BYTES + P.MAC_BYTES) > 100 * worst[(1_000_000, 1.0)]


def test_a_real_bucket_message_fits_and_verifies_for_each_member_only():
    key = P.new_fleet_key()
    fleet = _fleet(5000)
    buckets = Buckets(fleet)
    assert all(buckets.of[d] == P.bucket_of(d) for d in fleet[:500])
    prefix = buckets.of[fleet[0]][:1]
    same = [d for d in fleet if buckets.of[d].startswith(prefix)]
    target, members = "bucket:" + prefix, same[:MAX_MACS]
    payload = P.encode_command("migrate", {"stage": 1}, target, 7, "h" * 16, key,
                               devices=members, fleet="plant")
    assert len(payload) <= BODY + MAX_MACS * 24 + 64
    for d in members[:5]:
        assert P.decode_command(payload, P.derive_device_key(key, d), d).seq == 7
    outsider = same[MAX_MACS]
    try:
        P.decode_command(payload, P.derive_device_key(key, outsider), outsider)
    except P.CommandRejected as exc:
        assert exc.detail == P.NOT_SIGNED_FOR_DEVICE
    else:
        raise AssertionError("a bucket neighbour not in the command accepted it")


def test_a_small_wave_in_a_big_fleet_reaches_few_bystanders():
    fleet = _fleet(100_000)
    buckets = Buckets(fleet)
    members = stable_order(fleet)[:50]
    plan = plan_addressing(members, buckets)
    heard = messages_heard(plan, buckets)
    assert sum(heard.values()) < 2 * len(members)  # deep prefixes: almost no bystanders


def test_operator_commands_for_a_big_fleet_go_out_per_bucket_and_each_device_verifies_its_own():
    """publish-stage / emergency-rollback --target all on 20,000 devices: one message on
    all/ would carry 20,000 MACs (over MAX_PAYLOAD, which every device refuses); the
    operator client splits it per bucket, each message within MAX_PAYLOAD, and every
    device finds exactly one message that names it and verifies with its own key."""
    from tools.operator_cmd import addressed

    fleet_key = bytes(range(32))
    devices = _fleet(20_000)
    assert addressed("all", devices[:MAX_MACS]) == [("all", devices[:MAX_MACS])]
    plan = addressed("all", devices)
    assert len(plan) > 1
    _check(plan, Buckets(devices), devices)
    payloads = {}
    for target, members in plan:
        payload = P.encode_command(P.OP_EMERGENCY_ROLLBACK, {"reason": "drill"}, target, 7,
                                   "h" * 64, fleet_key, devices=members, command_id="c" * 16,
                                   fleet="plant1")
        assert len(payload) <= P.MAX_PAYLOAD
        payloads.update({d: (target, payload) for d in members})
    for device in devices[::997]:  # a spread of devices: each verifies its own message
        target, payload = payloads[device]
        assert P.target_matches(target, device)
        cmd = P.decode_command(payload, P.derive_device_key(fleet_key, device), device,
                               plan_hash="h" * 64, fleet="plant1")
        assert cmd.op == P.OP_EMERGENCY_ROLLBACK and cmd.seq == 7
