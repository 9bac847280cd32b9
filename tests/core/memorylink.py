"""An in-memory MQTT link for runtime tests (the link contract of agent.runtime).

It keeps what the agent publishes and refuses to publish while `connected` is
False, as a real link does while the broker is away. Runs on MicroPython.
"""
from agent import protocol as P


class MemoryLink:
    def __init__(self, key, connected=True):
        self.key = key  # the device key its reports are checked with
        self.connected = connected
        self.sent = []
        self.will = None
        self.closed = False

    def set_will(self, topic, payload, qos=1, retain=True):
        self.will = (topic, payload, qos, retain)

    def close(self):
        self.closed = True

    def set_callbacks(self, on_message, on_connect, on_disconnect):
        pass

    def subscribe(self, topic, qos=1):
        pass

    def publish(self, topic, payload, qos=0, retain=False):
        if not self.connected:
            raise OSError("broker down")
        self.sent.append((topic, payload))

    def reports(self, leaf):
        return [P.decode_report(p, self.key) for t, p in self.sent if t.endswith("/" + leaf)]

    def acks_for(self, command_id):
        return [a for a in self.reports("ack") if a["id"] == command_id]
