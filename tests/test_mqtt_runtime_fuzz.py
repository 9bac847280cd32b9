"""Hypothesis fuzz of what the agent does with bytes from the wire.

Whatever arrives on the device's topics: on_message and tick never raise, no
internal error is counted (that would be a bug caught by the safety net), every
message on a command topic is answered by exactly one rejected ack with a known
reason code (except on a hash-bucket topic, where a command carrying no MAC for
this device is for other members of the bucket: counted as not_for_us, never
answered), and the device's state does not move.
"""
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import protocol as P
from firmware_shim import codec

sys.path.insert(0, "tests/core")
from test_runtime import DEV, FLEET_KEY, cmd, make  # noqa: E402

RT, LINK, CONTROL, CLOCK = make()
VALID = cmd(CONTROL, "migrate", {"stage": 1}, 10)
TOPICS = [t for t, _q in P.subscriptions("fl", DEV, ["g1"])]
CMD_TOPICS = [t for t in TOPICS if "/cmd/" in t]


def _mutate(data, flips):
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.text(max_size=20), st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
envelopes = st.fixed_dictionaries({"v": st.one_of(st.just(1), scalars), "body": values},
                                  optional={"sigs": st.one_of(st.binary(max_size=60), values)})
payloads = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda cut: VALID[:cut], st.integers(0, len(VALID))),
    st.builds(_mutate, st.just(VALID), st.lists(st.tuples(st.integers(0, 10**6),
                                                          st.integers(0, 255)),
                                                min_size=1, max_size=6)),
    envelopes.map(codec.packb),
    values.map(codec.packb),
).filter(lambda p: p != VALID)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(topic=st.sampled_from(TOPICS + ["fleetstage/fl/cmd", "junk/#", ""]),
       payload=payloads, retain=st.booleans())
def test_wire_bytes_never_hurt_the_agent(topic, payload, retain):
    before = len(LINK.sent)
    ignored = RT.counters.get("not_for_us", 0)
    RT.on_message(topic, payload, retain)
    RT.tick()
    assert RT.counters["errors"] == 0, RT.last_error
    assert CONTROL.stage == 0 and CONTROL.state == "AT_STAGE"
    acks = [P.decode_report(p, P.derive_device_key(FLEET_KEY, DEV), "ack")
            for t, p, _q, _r in LINK.sent[before:] if t.endswith("/ack")]
    not_for_us = RT.counters.get("not_for_us", 0) - ignored
    if topic in CMD_TOPICS and "/bucket/" in topic and not_for_us:
        assert not_for_us == 1 and acks == [], acks
    elif topic in CMD_TOPICS:
        assert not_for_us == 0
        assert len(acks) == 1, acks
        assert acks[0]["result"] == "rejected" and acks[0]["reason"] in P.REASONS
    assert all(ack["result"] == "rejected" for ack in acks)
