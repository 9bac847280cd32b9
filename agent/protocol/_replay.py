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
    (id, seq, digest) entries, kept in the store under KEY_SEQ and one key a
    window slot (KEY_SLOT + n): a commit writes the new entry's slot only (the
    oldest entry's, once the window is full), not the whole window. A store
    written by an older agent holds the window as one list under KEY_RECENT;
    it is read, and the first record moves it into slots (and deletes it).

      check(msg) -> "new" | "duplicate", or raises CommandRejected:
        same id and same content as an applied one     -> "duplicate" (ack, don't apply)
        same id, other content / same seq, other id    -> replayed
        seq <= highest applied (and id unknown)        -> stale_sequence
      record(msg) -> dict of store changes; pass it as extra_changes to the
        control operation so it lands in the same atomic commit; then call
        commit(changes, store.peek) (only once the store commit succeeded).
    With a store's peek the window's entries are the store's own objects, not a
    second copy (a board holds the window once: about 0.2 KB an entry less), and
    check() scans the window once (64 entries) instead of keeping two maps of it.
    Only applied messages are recorded, so a rejected one (not_ready) may be
    applied when it is delivered again.
    """

    KEY_SEQ = "proto.last_seq"
    KEY_RECENT = "proto.recent"  # the older layout: the whole window as one list
    KEY_SLOT = "proto.r."

    def __init__(self, last_seq=0, recent=None, window=RECENT_WINDOW, slots=None, legacy=False):
        self.last_seq = last_seq
        self.recent = list(recent or [])  # oldest first; entries are never edited
        self.window = window
        # the store slot of each entry of `recent` (same order)
        self.slots = list(range(len(self.recent))) if slots is None else list(slots)
        self.legacy = legacy  # KEY_RECENT is still in the store: the next record moves it

    @classmethod
    def from_store(cls, store, window=RECENT_WINDOW):
        state = {cls.KEY_SEQ: store.get(cls.KEY_SEQ, 0),
                 cls.KEY_RECENT: store.peek(cls.KEY_RECENT)}
        for n in range(window):
            entry = store.peek(cls.KEY_SLOT + str(n))  # held, never edited
            if entry is not None:
                state[cls.KEY_SLOT + str(n)] = entry
        return cls.from_dict(state, window)

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
        recent = state.get(cls.KEY_RECENT)
        legacy = recent is not None
        recent = recent or []
        if not isinstance(recent, list):
            raise GuardStateError(f"stored {cls.KEY_RECENT} is not a list")
        found = []  # (entry, slot); loops, not comprehensions: each is a function on a board
        for entry in recent:
            found.append((entry, None))
        for n in range(window):
            entry = state.get(cls.KEY_SLOT + str(n))
            if entry is not None:
                found.append((entry, n))
        kept = []  # (seq, index in found): equal seqs stay in the order found
        for index, (entry, _slot) in enumerate(found):
            # an unreadable entry only weakens duplicate detection
            if (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and _is_int(entry[1]) and isinstance(entry[2], str)):
                kept.append((entry[1], index))
        kept.sort()
        kept = kept[-window:]
        entries = []
        slots = []
        for _seq, index in kept:
            entry, n = found[index]
            entries.append(entry)
            slots.append(n)
        if legacy:  # slots are given out afresh when the list moves into them
            return cls(last_seq, entries, window, None, True)
        return cls(last_seq, entries, window, slots)

    def state(self):
        """The store keys this guard stands for (the slot layout)."""
        out = {self.KEY_SEQ: self.last_seq}
        for entry, n in zip(self.recent, self.slots):
            out[self.KEY_SLOT + str(n)] = list(entry)
        return out

    def check(self, msg):
        seq_used_by = None  # an id match decides first, wherever it is in the window
        for entry in self.recent:
            if entry[0] == msg.id:
                if entry[1] == msg.seq and entry[2] == msg.digest:
                    return DUPLICATE
                raise CommandRejected(REPLAYED, "command id reused with other content", msg.id)
            if entry[1] == msg.seq:
                seq_used_by = entry[0]
        if seq_used_by is not None:
            raise CommandRejected(REPLAYED, f"sequence {msg.seq} already used by {seq_used_by}",
                                  msg.id)
        if msg.seq <= self.last_seq:
            raise CommandRejected(STALE_SEQUENCE,
                                  f"seq {msg.seq} <= last applied {self.last_seq}", msg.id)
        return NEW

    def record(self, msg):
        entry = [msg.id, msg.seq, msg.digest]
        changes = {self.KEY_SEQ: max(self.last_seq, msg.seq)}
        if self.legacy:  # one last big commit: the old list into slots, oldest dropped
            recent = []
            for e in self.recent:
                if e[0] != msg.id:
                    recent.append(e)
            recent.append(entry)
            changes[self.KEY_RECENT] = None
            for n, e in enumerate(recent[-self.window:]):
                changes[self.KEY_SLOT + str(n)] = list(e)
            return changes
        changes[self.KEY_SLOT + str(self._slot_for(msg.id))] = entry
        return changes

    def _slot_for(self, command_id):
        """The slot a new entry takes: the one its id already holds, else a free one,
        else the oldest entry's."""
        for i, e in enumerate(self.recent):
            if e[0] == command_id:
                return self.slots[i]
        if len(self.recent) < self.window:
            taken = set(self.slots)
            n = len(self.recent)
            while n in taken or n >= self.window:
                n = (n + 1) % self.window
            return n
        return self.slots[0]

    def commit(self, changes, peek=None):
        """The record is on flash: take its entries. peek: the store's (key -> the value
        it holds, or None); an entry it holds as written is kept, not copied."""
        self.last_seq = changes[self.KEY_SEQ]
        if self.legacy:
            self.recent, self.slots, self.legacy = [], [], False
        prefix = self.KEY_SLOT
        # oldest first (a MicroPython dict keeps no order)
        written = [(entry[1], int(key[len(prefix):]), entry)
                   for key, entry in changes.items() if key.startswith(prefix)]
        if len(written) > 1:
            written.sort()
        for _seq, n, entry in written:
            if n in self.slots:
                self._drop(self.slots.index(n))
            held = None if peek is None else peek(self.KEY_SLOT + str(n))
            self.recent.append(held if held == entry else list(entry))
            self.slots.append(n)
        while len(self.recent) > self.window:
            self._drop(0)

    def _drop(self, i):
        del self.recent[i]
        del self.slots[i]
