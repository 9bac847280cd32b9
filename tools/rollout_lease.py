"""One rollout at a time per fleet: a lock on the state file and a lease on the broker.

The lock (flock on STATE.lock) stops two orchestrators on one machine sharing a
state file. The lease is a retained message on
`fleetstage/<fleet>/rollout/lease` that every operator machine sees: who holds
it (host, pid, rollout id), until when (wall clock, renewed every ttl/3), and
a MAC under the fleet key, so only a fleet-key holder can write a valid one
(the broker ACL lets only the operator user publish there). A rollout that
finds a valid lease of another rollout, not yet expired, refuses to start;
the same rollout (resumed from its state file after a crash) takes its own
lease back at once. An empty retained payload releases it.

Limits: MQTT has no compare-and-swap, so two machines starting within the same
second can both publish; each re-reads the topic after publishing and the one
that sees the other's lease backs off. Clocks must agree to within the ttl.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time

from agent import protocol as P
from firmware_shim import codec
from firmware_shim.crypto import compare_digest, hmac_sha256

LEASE_DOMAIN = b"fleetstage-lease\x00"


class LeaseHeld(Exception):
    """Another rollout holds the fleet; the text names it and says what to do."""


def lease_topic(fleet: str) -> str:
    return "%s/%s/rollout/lease" % (P.PREFIX, P.validate_id(fleet, "fleet"))


def encode_lease(fleet_key: bytes, rollout: str, holder: str, expires: float,
                 to_stage: int) -> bytes:
    body = codec.canonical({"rollout": rollout, "holder": holder, "expires": float(expires),
                            "to_stage": to_stage})
    return codec.packb({"body": body, "mac": hmac_sha256(fleet_key, LEASE_DOMAIN + body)[:16]})


def decode_lease(fleet_key: bytes, payload: bytes) -> dict | None:
    """The lease, or None when empty, garbled or not signed with this fleet key."""
    if not payload:
        return None
    try:
        outer = codec.unpackb(bytes(payload))
        body, mac = outer["body"], outer["mac"]
        if not compare_digest(hmac_sha256(fleet_key, LEASE_DOMAIN + body)[:16], mac):
            return None
        lease = codec.unpackb(body)
    except Exception:  # noqa: BLE001 - anything unreadable is no lease at all
        return None
    return lease if isinstance(lease, dict) else None


class StateLock:
    """flock on STATE.lock; held for the life of the process (the kernel drops it on death)."""

    def __init__(self, state_path: str) -> None:
        self.path = state_path + ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LeaseHeld("another fleetstage rollout on this machine is using %s; wait for "
                            "it to finish or stop it" % self.path[:-5]) from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Lease:
    """The retained lease of one rollout, over a connected OperatorClient's link and loop."""

    def __init__(self, client, rollout: str, to_stage: int, ttl_s: float = 60.0) -> None:
        self.client = client
        self.rollout = rollout
        self.to_stage = to_stage
        self.ttl_s = ttl_s
        self.topic = lease_topic(client.fleet)
        self.holder = "%s:%d" % (socket.gethostname(), os.getpid())
        self.seen: dict | None = None
        self.seen_any = False
        self.renew_at = 0.0
        self.held = False

    def on_message(self, topic: str, payload: bytes, retain: bool) -> bool:
        """Feed every message; True when it was the lease topic."""
        if topic != self.topic:
            return False
        self.seen_any = True
        self.seen = decode_lease(self.client.fleet_key, payload)
        return True

    def _other(self) -> dict | None:
        lease = self.seen
        if lease is None or lease.get("rollout") == self.rollout:
            return None
        if not isinstance(lease.get("expires"), float) or lease["expires"] <= time.time():
            return None
        return lease

    def _refuse(self, lease: dict) -> None:
        left = int(lease["expires"] - time.time())
        raise LeaseHeld("another rollout (%s on %s, to stage %s) holds fleet %s for %d s more; "
                        "wait for it to finish, or stop it (rollout --abort on its machine)" % (
                            lease.get("rollout"), lease.get("holder"), lease.get("to_stage"),
                            self.client.fleet, left))

    def acquire(self, settle_s: float = 1.0) -> None:
        loop = self.client.loop
        self.client.link.subscribe(self.topic, 1)
        loop.run_until(lambda: self.seen_any, settle_s)
        other = self._other()
        if other is not None:
            self._refuse(other)
        self.renew(force=True)
        loop.run_until(lambda: False, min(settle_s, 0.5))  # a racing rollout shows up here
        other = self._other()
        if other is not None:
            self.held = False
            self._refuse(other)

    def renew(self, force: bool = False) -> None:
        now = time.time()
        if not force and now < self.renew_at:
            return
        payload = encode_lease(self.client.fleet_key, self.rollout, self.holder,
                               now + self.ttl_s, self.to_stage)
        self.client.link.publish(self.topic, payload, qos=1, retain=True)
        self.renew_at = now + self.ttl_s / 3
        self.held = True

    def clear_if_ours(self, settle_s: float = 1.0) -> None:
        """--abort: release the lease if this rollout still holds it."""
        self.client.link.subscribe(self.topic, 1)
        self.client.loop.run_until(lambda: self.seen_any, settle_s)
        if self.seen is not None and self.seen.get("rollout") == self.rollout:
            self.held = True
            self.release()

    def release(self) -> None:
        if not self.held:
            return
        try:
            self.client.link.publish(self.topic, b"", qos=1, retain=True)
            self.client.loop.run_until(lambda: not self.client.link.pending_out(), 2.0)
        except Exception:  # noqa: BLE001 - the lease expires by itself anyway
            pass
        self.held = False
