"""The replay guard: duplicate, replay and ordering rules over applied messages.

Owns: the highest applied seq and the recent (id, seq, digest) window, and how
they are kept in the store. Must never: write the store itself (it returns the
changes; the caller commits them with the operation). Private: use agent.protocol.
"""
from agent.protocol._wire import (
    DUPLICATE,
    MAX_SEQ,
    NEW,
    RECENT_WINDOW,
    REPLAYED,
    STALE_SEQUENCE,
    CommandRejected,
    GuardStateError,
)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class ReplayGuard:
    """Duplicate, replay and ordering rules over commands and desired states.

    State: the highest applied seq and the last RECENT_WINDOW applied
    (id, seq, digest) entries, kept in the store under KEY_SEQ / KEY_RECENT.

      check(msg) -> "new" | "duplicate", or raises CommandRejected:
        same id and same content as an applied one     -> "duplicate" (ack, don't apply)
        same id, other content / same seq, other id    -> replayed
        seq <= highest applied (and id unknown)        -> stale_sequence
      record(msg) -> dict of store changes; pass it as extra_changes to the
        control operation so it lands in the same atomic commit; then call
        commit(changes) (only once the store commit succeeded).
    Only applied messages are recorded, so a rejected one (not_ready) may be
    applied when it is delivered again.
    """

    KEY_SEQ = "proto.last_seq"
    KEY_RECENT = "proto.recent"

    def __init__(self, last_seq=0, recent=None, window=RECENT_WINDOW):
        self.last_seq = last_seq
        self.recent = list(recent or [])
        self.window = window

    @classmethod
    def from_store(cls, store, window=RECENT_WINDOW):
        return cls.from_dict({cls.KEY_SEQ: store.get(cls.KEY_SEQ, 0),
                              cls.KEY_RECENT: store.get(cls.KEY_RECENT, [])}, window)

    @classmethod
    def from_dict(cls, state, window=RECENT_WINDOW):
        last_seq = state.get(cls.KEY_SEQ, 0)
        if last_seq is None:
            last_seq = 0
        if not _is_int(last_seq) or last_seq < 0:
            raise GuardStateError(f"stored {cls.KEY_SEQ} is not a sequence number")
        if last_seq > MAX_SEQ:
            # Pushed past the end (the old operator followed a device's reported guard):
            # no operator could ever pass it again, so it counts as a fresh device.
            last_seq = 0
        recent = state.get(cls.KEY_RECENT) or []
        if not isinstance(recent, list):
            raise GuardStateError(f"stored {cls.KEY_RECENT} is not a list")
        kept = []
        for entry in recent:  # an unreadable entry only weakens duplicate detection
            if (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and _is_int(entry[1]) and isinstance(entry[2], str)):
                kept.append(entry)
        return cls(last_seq, kept[-window:], window)

    def state(self):
        return {self.KEY_SEQ: self.last_seq, self.KEY_RECENT: [list(e) for e in self.recent]}

    def check(self, msg):
        for cid, seq, digest in self.recent:
            if cid == msg.id:
                if seq == msg.seq and digest == msg.digest:
                    return DUPLICATE
                raise CommandRejected(REPLAYED, "command id reused with other content", msg.id)
        for cid, seq, _digest in self.recent:
            if seq == msg.seq:
                raise CommandRejected(REPLAYED, f"sequence {seq} already used by {cid}",
                                      msg.id)
        if msg.seq <= self.last_seq:
            raise CommandRejected(STALE_SEQUENCE,
                                  f"seq {msg.seq} <= last applied {self.last_seq}", msg.id)
        return NEW

    def record(self, msg):
        recent = [list(e) for e in self.recent if e[0] != msg.id]
        recent.append([msg.id, msg.seq, msg.digest])
        return {self.KEY_SEQ: max(self.last_seq, msg.seq), self.KEY_RECENT: recent[-self.window:]}

    def commit(self, changes):
        self.last_seq = changes[self.KEY_SEQ]
        self.recent = [list(e) for e in changes[self.KEY_RECENT]]
