"""The one runtime harness of the core tests: one set of keys, one in-memory link, one device.

test_runtime*.py and test_boot.py build on it. Runs on CPython and MicroPython
(no pytest, no contextlib: Device is its own context manager).
"""
from corekit import tmpdir

from agent import protocol as P
from agent.control import MigrationControl
from agent.runtime import AgentRuntime
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock

FLEET_KEY = bytes(range(32))
FLEET = "fl"


def device_key(device_id):
    return P.derive_device_key(FLEET_KEY, device_id)


class MemoryLink:
    """The link contract of agent.runtime, in memory.

    It keeps what the agent publishes, as (topic, payload, qos, retain), and refuses
    to publish while `connected` is False, as a real link does while the broker is
    away. `key`: the device key its reports are checked with.
    """

    def __init__(self, key=None, connected=True):
        self.key = key
        self.connected = connected
        self.sent = []
        self.subs = []
        self.cb = None
        self.will = None
        self.closed = False

    def set_will(self, topic, payload, qos=1, retain=True):
        self.will = (topic, payload, qos, retain)

    def set_callbacks(self, on_message, on_connect, on_disconnect):
        self.cb = (on_message, on_connect, on_disconnect)

    def subscribe(self, topic, qos=1):
        self.subs.append(topic)

    def publish(self, topic, payload, qos=0, retain=False):
        if not self.connected:
            raise OSError("broker down")
        self.sent.append((topic, payload, qos, retain))

    def close(self):
        self.closed = True

    def reports(self, leaf):
        """Every report sent on `leaf` (ack, status, health, event), MAC checked, in order."""
        return [P.decode_report(p, self.key) for t, p, _q, _r in self.sent
                if t.endswith("/" + leaf)]

    leaf = reports

    def acks_for(self, command_id):
        return [a for a in self.reports("ack") if a["id"] == command_id]


def signed_command(control, op, args, seq, device_id, target=None, key=FLEET_KEY, cid=None):
    return P.encode_command(op, args, target or "device:" + device_id, seq, control.plan.hash,
                            key, devices=[device_id], command_id=cid, fleet=FLEET)


class Device:
    """One agent: ManualClock, MigrationControl on a temp directory, MemoryLink, runtime.

    with Device(...) as d: ... closes its store even when the test fails.
    """

    def __init__(self, device_id="dev-1", groups=(), config=None, fs=None, link=None,
                 connected=True, **runtime_options):
        self.device_id = device_id
        self.key = device_key(device_id)
        self.clock = ManualClock()
        self.control = MigrationControl.open(tmpdir("rt"), fs or FileSystem(), self.clock,
                                             config=config)
        self.link = link if link is not None else MemoryLink(self.key, connected)
        if self.link.key is None:
            self.link.key = self.key
        self.rt = AgentRuntime(self.control, self.link, FLEET, device_id, groups, key=self.key,
                               clock=self.clock, **runtime_options)
        self.rt.start()
        self.seq = 100

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        self.control.close()

    def deliver(self, target, payload, channel="cmd", retain=False):
        topic = (P.cmd_topic if channel == "cmd" else P.desired_topic)(FLEET, target)
        self.rt.on_message(topic, payload, retain)
        self.rt.tick()  # the agent's loop ticks after each poll: events and status go out

    def command(self, op, args):
        """Sign and deliver one command; returns its ack."""
        self.seq += 1
        cid = P.new_command_id()
        self.deliver("device:" + self.device_id,
                     signed_command(self.control, op, args, self.seq, self.device_id, cid=cid))
        acks = self.link.acks_for(cid)
        assert len(acks) == 1, acks
        return acks[0]

    def desired(self, stage):
        """Sign and deliver a retained desired state; returns its id."""
        self.seq += 1
        cid = P.new_command_id()
        payload = P.encode_desired("device:" + self.device_id, stage, self.seq,
                                   self.control.plan.hash, FLEET_KEY, command_id=cid, fleet=FLEET)
        self.deliver("device:" + self.device_id, payload, "desired", retain=True)
        return cid

    def fail_health(self):
        """Bad outcomes, then the monitoring interval: the agent rolls itself back."""
        for _ in range(50):
            self.control.record_outcome(False, 5)
        self.clock.advance(1000)
        self.rt.tick()
