"""systemd's notify protocol for the Pi agent: READY=1 at start, WATCHDOG=1 from the loop.

Owns: talking to $NOTIFY_SOCKET (a unix datagram socket; a leading '@' is the
abstract namespace) and pacing watchdog pings at half of $WATCHDOG_USEC, as
sd_notify(3) and sd_watchdog_enabled(3) describe. The unit sets Type=notify
and WatchdogSec (tools/install_cmd.py): if the agent's loop stops ticking,
systemd restarts the agent, and the agent's store counts the restart.
Must never: raise into the agent's loop (a lost datagram is only logged once),
or run in the core: the core has no I/O; this is Pi-side code.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Mapping


class SdNotifier:
    def __init__(self, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        self.clock = clock
        self.log = log or (lambda _msg: None)
        self.interval: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.interval = int(usec) / 2e6
        self._next = 0.0
        self._warned = False
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), addr)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                self.log(f"sd_notify to {self.address} failed: {exc.strerror or exc}")
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + ("\nSTATUS=" + status if status else ""))

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def tick(self) -> None:
        """Call from every turn of the agent's loop: pings the watchdog when due."""
        if self.interval is None or self.address is None:
            return
        now = self.clock()
        if now >= self._next:
            self._next = now + self.interval
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
