"""The legacy global state: this project's counterpart of Erlang's process dictionary.

Owns: one module-level dict, `_PDICT`, that every legacy implementation reads
and writes behind the caller's back, the way `Process.put`/`Process.get` do.
That is the pattern the migration removes: the state is hidden, global, outlives
the object that wrote it, and nobody supervises it.

Why it is keyed by owner: one process may hold many agents (the test suite makes
hundreds of `Services`, the simulator thousands of devices). In Erlang each
process has its own dictionary; here each `Services` instance gets an owner id
from `new_owner()` and its own slot `_PDICT[owner]`, so devices never share
state, yet the state still lives outside the object that uses it. `release()`
drops a slot; `Services.close()` calls it, and a device that is never closed
leaks its slot, as a dead process's dictionary would not (see `owner_count()`).

Must never: be used by the new implementations, or by anything but the legacy
implementations, the migration in `Services.apply_flags` and tests. Reads and
writes go through `pdict_get`/`pdict_put`; `tools/check_legacy.py` looks for
those names the way the runbook greps for `Process.put`/`Process.get`.
"""

_PDICT = {}  # type: dict
_next_owner = [0]


def new_owner():
    """A fresh owner id with an empty slot."""
    _next_owner[0] += 1
    owner = _next_owner[0]
    _PDICT[owner] = {}
    return owner


def pdict_get(owner, key, default=None):
    """Read `key` from the owner's hidden slot (Process.get)."""
    slot = _PDICT.get(owner)
    if slot is None:
        return default
    return slot.get(key, default)


def pdict_put(owner, key, value):
    """Write `key` in the owner's hidden slot (Process.put); returns the old value."""
    slot = _PDICT.get(owner)
    if slot is None:
        slot = _PDICT[owner] = {}
    old = slot.get(key)
    slot[key] = value
    return old


def pdict_setdefault(owner, key, factory):
    """The value under `key`, created by `factory()` on first use (get-or-put)."""
    slot = _PDICT.get(owner)
    if slot is None:
        slot = _PDICT[owner] = {}
    value = slot.get(key)
    if value is None:
        value = slot[key] = factory()
    return value


def pdict_erase(owner, key):
    """Remove `key` from the owner's slot (Process.delete); returns the old value."""
    slot = _PDICT.get(owner)
    if slot is None:
        return None
    return slot.pop(key, None)


def release(owner):
    """Forget everything this owner left in the global state."""
    _PDICT.pop(owner, None)


def owner_keys(owner):
    """The keys the owner holds, sorted (for troubleshooting and tests)."""
    return sorted(_PDICT.get(owner, {}))


def owner_count():
    """How many owners hold a slot: a number that only falls when devices are closed."""
    return len(_PDICT)
