"""Who may not even connect: blocked networks, and addresses banned after failed logins.

hMailServer's rule, with its defaults: after ``auth.ban_after_failures`` failed
logins from one address within ``auth.ban_window_minutes``, that address is refused
at connect time for ``auth.ban_minutes``.  A ban is logged once when it starts, not
for every refused connection.  State lives in memory (a restart forgives), bounded:
stale entries are dropped as new ones arrive.
"""
from __future__ import annotations

import collections
import ipaddress
import logging
import threading
import time

from ..config import Settings, ip_in_networks

log = logging.getLogger("ismail.guard")

BLOCKED = "blocked"
BANNED = "banned"
MAX_TRACKED = 10_000


class Guard:
    def __init__(self, settings: Settings, clock=time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._failures: dict[str, collections.deque] = {}
        self._banned: dict[str, float] = {}
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        auth = settings.auth
        with self._lock:
            self._blocked = [ipaddress.ip_network(n, strict=False) for n in settings.access.blocked]
            self._limit = auth.ban_after_failures
            self._window = auth.ban_window_minutes * 60.0
            self._ban = auth.ban_minutes * 60.0

    def refused(self, ip: str) -> str | None:
        """BLOCKED, BANNED or None, for a client connecting from ``ip``."""
        if self._blocked and ip_in_networks(ip, self._blocked):
            return BLOCKED
        if not self._banned:
            return None
        with self._lock:
            until = self._banned.get(ip)
            if until is None:
                return None
            if self._clock() < until:
                return BANNED
            del self._banned[ip]
            return None

    def login_failed(self, ip: str) -> bool:
        """Count a failed login; True when this one starts a ban."""
        now = self._clock()
        with self._lock:
            if len(self._failures) > MAX_TRACKED:
                self._forget_stale(now)
            times = self._failures.setdefault(ip, collections.deque())
            times.append(now)
            while times and now - times[0] > self._window:
                times.popleft()
            if len(times) < self._limit:
                return False
            del self._failures[ip]
            self._banned[ip] = now + self._ban
        log.warning("%s banned for %d minutes after %d failed logins", ip, self._ban // 60, self._limit)
        return True

    def login_succeeded(self, ip: str) -> None:
        with self._lock:
            self._failures.pop(ip, None)

    def _forget_stale(self, now: float) -> None:
        for ip in [ip for ip, t in self._failures.items() if not t or now - t[-1] > self._window]:
            del self._failures[ip]
        for ip in [ip for ip, until in self._banned.items() if until <= now]:
            del self._banned[ip]
