"""The migration history: what changed, when and why, newest first, bounded.

Owns: the in-memory list and the store keys it lives under. Each entry is its
own key ("ctl.hist.<seq>"), so a stage change writes one small record instead
of rewriting the whole history, and the entry that falls off the end is
deleted in the SAME commit as the entry that pushes it out.
Must never: commit by itself. It hands MigrationControl the changes to put in
the stage change's one atomic commit, and is told afterwards that it landed.
With `peek` (the store's: key -> the value it holds, not a copy) it keeps only
the keys and reads each entry from the store: a board holds the history once
(each entry is some 300 bytes of heap, 50 of them by default), not twice.
"""

PREFIX = "ctl.hist."


def history_key(seq):
    return f"{PREFIX}{seq:010d}"


class History:
    def __init__(self, length, peek=None):
        self.length = length
        self._peek = peek
        self._entries = []  # newest first: (key, entry), or (key, None) with peek
        self._stale = []    # keys beyond `length` found on open, deleted on next commit

    def restore(self, items):
        """Load from the store's (key, value) pairs; ignores everything else."""
        found = [(k, v) for k, v in items if k.startswith(PREFIX) and isinstance(v, dict)]
        found.sort(key=lambda e: e[0])
        found.reverse()
        self._entries = [(k, None if self._peek else v) for k, v in found[: self.length]]
        self._stale = [k for k, _ in found[self.length:]]

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
        if peek is None:
            out = [dict(e) for _, e in self._entries]
        else:
            out = [dict(e) for e in (peek(k) for k, _ in self._entries) if e is not None]
        return out if limit is None else out[:limit]

    def __len__(self):
        return len(self._entries)
