"""ReportQueue: the reports an agent holds while the broker is away.

Owns: what to give up when the queue is full, and counting what was given up.
Reports are not worth the same. An ack is what the operator waits on, and an
event (migration.*, feature_flag.*, health.violation) is the only record of
what the device did on its own, e.g. an automatic rollback during an outage:
neither can be rebuilt later. A health report is periodic (the next one says
the same, fresher) and the retained status is re-sent on every reconnect. So
a full queue gives up the oldest health report first, then a status, and the
oldest ack or event only when nothing else is left.

Must never: reorder what it keeps (reports leave in the order they came), do
I/O, or raise on a push.
"""

KIND_HEALTH = "health"
KIND_STATUS = "status"
# Kinds a full queue gives up first, in this order; anything else (acks, events)
# goes only when the queue holds nothing but those, oldest first.
EVICT_FIRST = (KIND_HEALTH, KIND_STATUS)


def kind_of(topic):
    """The report kind of a device topic: its last level (status, health, ack, event)."""
    return topic.rsplit("/", 1)[-1]


class ReportQueue:
    """Reports waiting for the broker: bounded, evicts by kind, counts drops by kind.

    A retained report replaces the queued one on the same topic (only the latest
    retained status matters); that is a replacement, not a drop.
    """

    def __init__(self, limit):
        self.limit = limit
        self.items = []  # (topic, payload, qos, retain, kind), oldest first
        self.dropped_by_kind = {}

    @property
    def dropped(self):
        return sum(self.dropped_by_kind.values())

    def push(self, topic, payload, qos, retain, kind=None):
        if kind is None:
            kind = kind_of(topic)
        if retain:
            kept = []
            for it in self.items:
                if not (it[3] and it[0] == topic):
                    kept.append(it)
            self.items = kept
        self.items.append((topic, payload, qos, retain, kind))
        while len(self.items) > self.limit and self.items:
            self._evict()

    def first(self):
        """(topic, payload, qos, retain) of the oldest report, or None."""
        if not self.items:
            return None
        return self.items[0][:4]

    def pop_first(self):
        self.items.pop(0)

    def _evict(self):
        for kind in EVICT_FIRST:
            for i in range(len(self.items)):
                if self.items[i][4] == kind:
                    self._drop(i)
                    return
        self._drop(0)

    def _drop(self, i):
        kind = self.items.pop(i)[4]
        self.dropped_by_kind[kind] = self.dropped_by_kind.get(kind, 0) + 1

    def __len__(self):
        return len(self.items)
