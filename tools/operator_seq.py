"""The operator's own sequence numbers: durable, and never taken from a device.

The rule (README "Security", "Sequence numbers"):
  next = max(last issued from this state file + 1, this machine's clock in ms)
A device's report never moves it: a device key can sign any guard_seq it likes,
and following it once let one taken-over device lock out the whole fleet.
`fleetstage seq --after N` lets a person move it on (another operator's clock
ran ahead), but never further than MAX_AHEAD_MS past this machine's clock; and
devices refuse any seq above agent.protocol MAX_SEQ (2**53, year ~287,000 in ms)
and, with a plausible clock of their own, more than MAX_AHEAD_MS past it. So no
one can run the numbers up to a value from which nothing passes.

Numbers are reserved under an exclusive lock on `<file>.lock` and written
(fsync, rename) before they are used, so tools running at once on one machine
never issue the same number, and a crash never reissues one.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import time

from agent.protocol import MAX_AHEAD_MS, MAX_SEQ
from tools.keygen import write_private_file


class SeqError(Exception):
    pass


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "state")
    return os.path.join(base, "fleetstage")


class SeqStore:
    """One fleet's operator sequence, in `<state_dir>/<fleet>.seq` (mode 0600)."""

    def __init__(self, state_dir: str, fleet: str, clock=time.time) -> None:
        self.path = os.path.join(state_dir, fleet + ".seq")
        self.ledger = DesiredLedger(state_dir, fleet)
        self.fleet = fleet
        self.clock = clock

    def _read(self) -> int:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise SeqError(f"cannot read the sequence file {self.path}: {exc}") from None
        last = data.get("last") if isinstance(data, dict) else None
        if not isinstance(last, int) or isinstance(last, bool) or not 0 <= last <= MAX_SEQ:
            raise SeqError(f"the sequence file {self.path} is damaged (no valid 'last')")
        if data.get("fleet") != self.fleet:
            raise SeqError(f"the sequence file {self.path} belongs to fleet "
                           f"{data.get('fleet')!r}, not {self.fleet!r}")
        return last

    def _write(self, last: int) -> None:
        body = json.dumps({"fleet": self.fleet, "last": last}) + "\n"
        write_private_file(self.path, body.encode(), 0o600)

    def _locked(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def last(self) -> int:
        return self._read()

    def reserve(self, count: int = 2) -> int:
        """The first of `count` consecutive fresh numbers, written before it is returned."""
        fd = self._locked()
        try:
            first = max(self._read() + 1, int(self.clock() * 1000))
            last = first + count - 1
            if last > MAX_SEQ:
                raise SeqError(f"{self.path} is at the end of the sequence space")
            self._write(last)
            return first
        finally:
            os.close(fd)

    def raise_to(self, value: int) -> int:
        """Move the sequence past `value` (seq --after); refused beyond the bound."""
        limit = int(self.clock() * 1000) + MAX_AHEAD_MS
        if value > limit:
            raise SeqError(f"{value} is more than {MAX_AHEAD_MS // 86_400_000} days ahead of "
                           "this machine's clock: refused (it would leave every "
                           "operator whose clock is right behind; check the clocks)")
        fd = self._locked()
        try:
            last = max(self._read(), value)
            self._write(last)
            return last
        finally:
            os.close(fd)


class DesiredLedger:
    """What this operator last retained on each desired topic: {topic: {id, seq, payload}}.

    `status` compares the broker's retained desired states with it: one with a
    LOWER seq than ours was put there by someone else (a captured old state
    replayed with the operator's broker password), and `status --repair`
    publishes ours again. Kept beside the sequence file (`<fleet>.desired.json`).
    """

    def __init__(self, state_dir: str | None, fleet: str) -> None:
        self.path = None if state_dir is None else os.path.join(state_dir,
                                                                fleet + ".desired.json")
        self._mem: dict[str, dict] = {}

    def records(self) -> dict[str, dict]:
        if self.path is None:
            return dict(self._mem)
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SeqError(f"cannot read {self.path}: {exc}") from None
        return data if isinstance(data, dict) else {}

    def record(self, topic: str, command_id: str, seq: int, payload: bytes) -> None:
        entry = {"id": command_id, "seq": seq, "payload": base64.b64encode(payload).decode()}
        if self.path is None:
            self._mem[topic] = entry
            return
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self.records()
            if data.get(topic, {}).get("seq", 0) < seq:
                data[topic] = entry
                write_private_file(self.path, (json.dumps(data) + "\n").encode(), 0o600)
        finally:
            os.close(fd)


class MemorySeq:
    """The same rule without a file (library use and tests that need no durability)."""

    def __init__(self, clock=time.time) -> None:
        self._last = 0
        self.clock = clock
        self.ledger = DesiredLedger(None, "")

    def last(self) -> int:
        return self._last

    def reserve(self, count: int = 2) -> int:
        first = max(self._last + 1, int(self.clock() * 1000))
        self._last = first + count - 1
        return first
