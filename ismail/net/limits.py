"""The connection limiter (Postfix calls its twin "anvil").

Two limits hold for incoming SMTP connections: a total across all clients and a
count per client IP address. Both are checked and taken in one step under one
lock, so a connection either holds a slot in both or in neither.

The total works like a bounded semaphore that never blocks: a connection over a
limit is refused at once (the receiver answers 421 and hangs up) rather than
queued, because a client left hanging ties up its own sockets and ours.  A plain
``threading.BoundedSemaphore`` cannot be resized, and the limits must change live
(``MailServer.apply``) without touching connections already open: lowering a
limit only affects connections that arrive afterwards, so the counts may sit
above a new, lower limit until those sessions end.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

TOTAL = "total"
PER_HOST = "per-host"


@dataclass(frozen=True)
class Slot:
    """Proof that a connection holds a place; released exactly once."""

    ip: str
    serial: int


class ConnectionLimiter:
    def __init__(self, max_total: int, max_per_host: int) -> None:
        self._lock = threading.Lock()
        self._max_total = max_total
        self._max_per_host = max_per_host
        self._total = 0
        self._per_host: dict[str, int] = {}
        self._held: set[int] = set()
        self._serial = 0

    def acquire(self, ip: str) -> Slot | str:
        """Take a slot for ``ip``; returns the Slot, or TOTAL / PER_HOST naming the limit hit."""
        with self._lock:
            if self._total >= self._max_total:
                return TOTAL
            count = self._per_host.get(ip, 0)
            if count >= self._max_per_host:
                return PER_HOST
            self._total += 1
            self._per_host[ip] = count + 1
            self._serial += 1
            self._held.add(self._serial)
            return Slot(ip, self._serial)

    def release(self, slot: Slot | None) -> bool:
        """Give the slot back. Safe to call twice: the second call does nothing."""
        if slot is None:
            return False
        with self._lock:
            if slot.serial not in self._held:
                return False
            self._held.discard(slot.serial)
            self._total -= 1
            count = self._per_host[slot.ip] - 1
            if count:
                self._per_host[slot.ip] = count
            else:
                del self._per_host[slot.ip]  # keeps the dict as small as the clients connected now
            return True

    def resize(self, max_total: int, max_per_host: int) -> None:
        with self._lock:
            self._max_total = max_total
            self._max_per_host = max_per_host

    def busy(self, share: float) -> bool:
        """Are at least ``share`` of the total places taken?  Read without the lock: an
        estimate for deciding time-outs, asked after every read of every session."""
        return self._total >= share * self._max_total

    @property
    def limits(self) -> tuple[int, int]:
        with self._lock:
            return self._max_total, self._max_per_host

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    def count(self, ip: str) -> int:
        with self._lock:
            return self._per_host.get(ip, 0)
