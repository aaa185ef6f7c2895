"""The connection rate limit per client address (Postfix anvil's smtpd_client_connection_rate_limit).

Counting is a fixed-window pair, the usual approximation of a sliding window: each
address keeps the count of the current minute (clock time // 60) and of the minute
before, and the rate over "the last 60 seconds" is estimated as

    current + previous * (share of the previous minute still inside the last 60 s)

which assumes the previous minute's connections were spread evenly.  It needs three
numbers per address instead of a time stamp per connection, and one hit is O(1).
Exact at minute boundaries; in between, a client that bunched its connections at the
end of the previous minute can get at most per_minute more in the 60 s that follow.

Every attempt counts, refused ones too, as anvil does: a client that hammers while
refused stays refused until it slows down.  An IPv4-mapped IPv6 address counts as the
IPv4 address.  Each IPv6 address counts on its own (like anvil), not per /64.

Memory is bounded by ``max_clients``: past it, addresses idle for two minutes are
forgotten, and if that frees too little, the least recently active (1 % at a time).
Forgetting only ever forgives, so the bound cannot refuse anyone wrongly.
"""
from __future__ import annotations

import ipaddress
import itertools
import logging
import threading
import time
from typing import Callable, Iterable

log = logging.getLogger("ismail.antispam")

WINDOW = 60.0


def _key(ip: str) -> str:
    if ":" not in ip:
        return ip  # IPv4 text from the socket is already canonical
    try:
        addr = ipaddress.IPv6Address(ip)
    except ValueError:
        return ip
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


class ConnectionRate:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._per_minute = max(0, int(per_minute))
        self.max_clients = max(1, max_clients)
        # address -> [window number, count in that window, count in the window before]
        self._counts: dict[str, list[int]] = {}
        self._exempt: frozenset[str] = frozenset()

    @property
    def per_minute(self) -> int:
        return self._per_minute

    @per_minute.setter
    def per_minute(self, value: int) -> None:
        """0 turns the limit off; counts already made are kept (a change applies at once)."""
        with self._lock:
            self._per_minute = max(0, int(value))
            if not self._per_minute:
                self._counts.clear()

    @property
    def exempt(self) -> frozenset[str]:
        return self._exempt

    @exempt.setter
    def exempt(self, addresses: Iterable[str]) -> None:
        """Addresses never limited (Postfix's smtpd_client_event_limit_exceptions)."""
        self._exempt = frozenset(_key(a.strip()) for a in addresses)

    def hit(self, ip: str) -> bool:
        """Count a new connection from ``ip``; False when it is over the limit."""
        limit = self._per_minute
        if not limit:
            return True
        key = _key(ip)
        if key in self._exempt:
            return True
        now = self._clock()
        window = int(now // WINDOW)
        with self._lock:
            entry = self._counts.get(key)
            if entry is None:
                self._make_room(window)
                self._counts[key] = entry = [window, 0, 0]
            elif entry[0] != window:
                # A new minute: the current count becomes the previous one (or nothing, if
                # the client was away for longer).  Re-inserting keeps the dict in order of
                # activity for the eviction.
                entry[2] = entry[1] if entry[0] == window - 1 else 0
                entry[1] = 0
                entry[0] = window
                del self._counts[key]
                self._counts[key] = entry
            entry[1] += 1
            past_share = 1.0 - (now - window * WINDOW) / WINDOW
            return entry[1] + entry[2] * past_share <= limit

    def count(self, ip: str) -> float:
        """The estimated connections from ``ip`` in the last 60 seconds (for tests and views)."""
        now = self._clock()
        window = int(now // WINDOW)
        with self._lock:
            entry = self._counts.get(_key(ip))
            if entry is None or entry[0] < window - 1:
                return 0.0
            if entry[0] == window - 1:
                current, previous = 0, entry[1]
            else:
                current, previous = entry[1], entry[2]
            return current + previous * (1.0 - (now - window * WINDOW) / WINDOW)

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)

    def _make_room(self, window: int) -> None:
        """With the lock held, before one insert: keep at most max_clients addresses."""
        if len(self._counts) < self.max_clients:
            return
        idle = [k for k, e in self._counts.items() if e[0] < window - 1]
        for key in idle:
            del self._counts[key]
        target = self.max_clients - max(1, self.max_clients // 100)
        if len(self._counts) > target:
            # Still full of active clients (a flood from many addresses): forget the least
            # recently active; a full scan per insert would make every hit O(n).
            for key in list(itertools.islice(self._counts, len(self._counts) - target)):
                del self._counts[key]
            log.warning("connection rate: more than %d active clients; forgot the least recent",
                        self.max_clients)
