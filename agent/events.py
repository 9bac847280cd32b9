"""What happened: the agent's telemetry events (EventBus) and the migration history (History).

EventBus delivers telemetry events to subscribed handlers.
Owns: the handler lists and the count of handlers that raised.
Must never: let a handler's exception reach the caller. A migration that has
committed must finish even if a dashboard hook is broken, so a raising handler
is counted (`errors`), remembered (`last_error`) and skipped.

Event names follow the runbook: "migration.stage_enabled", "migration.rollback",
"migration.emergency_rollback", "feature_flag.changed", plus "health.violation"
and "services.restart". A handler subscribed to "*" sees every event.

History: what changed, when and why, newest first, bounded.

Owns: the in-memory list and the store keys it lives under. Each entry is its
own key ("ctl.hist.<seq>"), so a stage change writes one small record instead
of rewriting the whole history, and the entry that falls off the end is
deleted in the SAME commit as the entry that pushes it out.
Must never: commit by itself. It hands MigrationControl the changes to put in
the stage change's one atomic commit, and is told afterwards that it landed.
With `peek` (the store's: key -> the value it holds, not a copy) it keeps only
the keys and reads each entry from the store: a board holds the history once
(each entry is some 300 bytes of heap, 50 of them by default), not twice.
(One module for both: a board pays for each module it holds.)
"""

WILDCARD = "*"


class EventBus:
    def __init__(self, log=None):
        self._handlers = {}
        self._log = log  # optional callable(str); the core prints nothing itself
        self.errors = 0
        self.emitted = 0
        self.last_error = None

    def subscribe(self, name, handler):
        if not callable(handler):
            raise TypeError("event handler must be callable")
        handlers = self._handlers.setdefault(name, [])
        if handler not in handlers:
            handlers.append(handler)

    def unsubscribe(self, name, handler):
        handlers = self._handlers.get(name)
        if handlers and handler in handlers:
            handlers.remove(handler)

    def emit(self, name, payload):
        self.emitted += 1
        # Copy the lists: a handler may unsubscribe itself while we iterate.
        named = self._handlers.get(name)
        wild = self._handlers.get(WILDCARD)
        if named:
            targets = named + wild if wild else named[:]
        else:
            targets = wild[:] if wild else ()
        for handler in targets:
            try:
                handler(name, payload)
            except Exception as exc:  # noqa: BLE001 - handlers must never break the caller
                self.errors += 1
                self.last_error = f"{name}: {type(exc).__name__}: {exc}"
                if self._log is not None:
                    try:
                        self._log("event handler failed: " + self.last_error)
                    except Exception:  # noqa: BLE001 - a broken logger is no reason to crash
                        pass

    def handler_count(self, name=None):
        if name is None:
            count = 0
            for handlers in self._handlers.values():
                count += len(handlers)
            return count
        return len(self._handlers.get(name, ()))


# ---------------------------------------------------------------- the history

PREFIX = "ctl.hist."


def history_key(seq):
    return f"{PREFIX}{seq:010d}"


class History:
    def __init__(self, length, peek=None):
        self.length = length
        self._peek = peek
        self._entries = []  # newest first: (key, entry), or (key, None) with peek
        self._stale = []    # keys beyond `length` found on open, deleted on next commit

    def restore(self, found):
        """Load the entries the store holds, newest first: (key, entry) pairs, every key
        under PREFIX (agent.restore.read_history picks them from the store's items)."""
        self._entries = []
        for key, entry in found[:self.length]:
            self._entries.append((key, None if self._peek else entry))
        self._stale = []  # a loop, not a comprehension: each is a function on a board
        for key, _ in found[self.length:]:
            self._stale.append(key)

    def changes_for(self, seq, entry):
        """Store changes that add `entry` and drop what no longer fits."""
        changes = {history_key(seq): entry}
        for key in self._stale:
            changes[key] = None
        overflow = len(self._entries) + 1 - self.length
        if overflow > 0:
            for key, _ in self._entries[len(self._entries) - overflow:]:
                changes[key] = None
        return changes

    def committed(self, seq, entry):
        """The commit that carried `changes_for(seq, entry)` succeeded."""
        self._entries.insert(0, (history_key(seq), None if self._peek else entry))
        del self._entries[self.length:]
        self._stale = []

    def entries(self, limit=None):
        peek = self._peek
        out = []
        for key, entry in self._entries:
            if peek is not None:
                entry = peek(key)
            if entry is not None:
                out.append(dict(entry))
        return out if limit is None else out[:limit]

    def __len__(self):
        return len(self._entries)
