"""Greylisting (RFC 6647): defer the first delivery attempt of an unknown triplet.

A triplet is (client network, sender, recipient).  The network is the client's /24
(IPv4) or /64 (IPv6), because large senders retry from a different address of the
same farm; an IPv4-mapped IPv6 address (::ffff:a.b.c.d, what a dual-stack socket
reports) counts as the IPv4 address.  Sender and recipient are compared lower-cased;
the null sender (bounces) is "".

The life of a triplet, as in Postgrey:

* first sight: it is *pending*; deferred (451 4.7.1) until ``delay`` seconds have passed;
* a retry after the delay and within ``retry_window`` of the first sight passes; the
  triplet is *passed* and later mail with it is not deferred for ``pass_lifetime``
  (renewed by each message, so a regular correspondent never expires);
* a retry after ``retry_window`` counts as a new first sight (the sender did not look
  like a real queue).

Auto-whitelist, our simple rule: one pass of any triplet whitelists the pair (client
network, sender domain) for ``pass_lifetime``, renewed by each use.  A server that has
proven once that it queues and retries is not deferred again for other senders of that
domain or other recipients.  Postgrey whitelists the whole client after five passes;
ours is narrower (the domain must match too), so one pass is enough.  The null sender
and a sender without a domain never whitelist anything: bounces are where backscatter
lives, and an empty domain would match every other domain-less sender.

State is three insertion-ordered dicts under one lock; every ``check`` is O(1).  The
total is bounded by ``max_entries``: when full, the oldest pending triplets go first
(a flood of one-off spam triplets must not push out passed ones), then the oldest
passed, then the oldest whitelisted pairs.  Eviction takes 1 % at a time, because
taking the first key of a dict one by one rescans the holes left by earlier deletes.

Persistence: one compact JSON object written with fsutil.atomic_write (temporary
file, fsync, rename, fsync of the folder), so a crash leaves the old file or the new
one.  A file that cannot be read back is renamed aside (``<name>.corrupt-<time>``),
logged, and a fresh list started: never silently overwritten.
"""
from __future__ import annotations

import functools
import ipaddress
import itertools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..fsutil import atomic_write

log = logging.getLogger("ismail.antispam")

FORMAT_VERSION = 1
MAX_ENTRIES = 200_000
_CHUNK = 5_000  # rows per json.dumps call: each C call holds the GIL, keep them short

Triplet = tuple[str, str, str]
Pair = tuple[str, str]


@functools.lru_cache(maxsize=4096)  # the same clients come back; ipaddress parsing is slow
def client_network(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) holding ``ip``, as text; garbage is returned as it is."""
    try:
        addr: Any = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 4:
        return f"{ipaddress.IPv4Address(int(addr) & 0xFFFFFF00)}/24"
    return f"{ipaddress.IPv6Address(int(addr) >> 64 << 64)}/64"


def _domain(sender: str) -> str:
    at = sender.rfind("@")
    return sender[at + 1:] if at >= 0 else ""


class Greylist:
    def __init__(self, path: Path, *, delay: float = 300.0, retry_window: float = 4 * 3600.0,
                 pass_lifetime: float = 36 * 86400.0, clock: Callable[[], float] = time.time,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.path = Path(path)
        self.delay = delay                  # settable: MailServer.apply changes it live
        self.retry_window = retry_window
        self.pass_lifetime = pass_lifetime
        self.max_entries = max(3, max_entries)
        self._clock = clock                 # wall clock: the times are saved and outlive the process
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # two saves at once could replace new with old
        self._pending: dict[Triplet, float] = {}   # -> first sight
        self._passed: dict[Triplet, float] = {}    # -> expiry
        self._clients: dict[Pair, float] = {}      # (network, sender domain) -> expiry
        self._dirty = False
        self._load()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._passed) + len(self._clients)

    # -- the check --------------------------------------------------------------------------------
    def check(self, client_ip: str, sender: str, recipient: str) -> tuple[bool, float]:
        """(True, 0) to let the recipient through; (False, seconds left) to defer it."""
        net = client_network(client_ip)
        sender, recipient = sender.lower(), recipient.lower()
        domain = _domain(sender)
        pair = (net, domain)
        key = (net, sender, recipient)
        now = self._clock()
        with self._lock:
            self._dirty = True
            expiry = self._clients.get(pair) if domain else None
            if expiry is not None and expiry > now:
                self._renew(self._clients, pair, now)
                return True, 0.0
            expiry = self._passed.get(key)
            if expiry is not None:
                if expiry > now:
                    self._renew(self._passed, key, now)
                    self._whitelist(pair, now)
                    return True, 0.0
                del self._passed[key]
            first = self._pending.get(key)
            if first is None or now - first > self.retry_window or first > now:
                # New, too late to count as a retry, or the clock went back: start again.
                self._pending.pop(key, None)
                self._make_room()
                self._pending[key] = now
                return False, float(self.delay)
            waited = now - first
            if waited < self.delay:
                return False, self.delay - waited
            del self._pending[key]
            self._passed[key] = now + self.pass_lifetime
            self._whitelist(pair, now)
            return True, 0.0

    def _renew(self, table: dict, key: Any, now: float) -> None:
        # Re-inserting keeps each dict in (roughly) expiry order, so eviction drops the stalest.
        del table[key]
        table[key] = now + self.pass_lifetime

    def _whitelist(self, pair: Pair, now: float) -> None:
        if not pair[1]:
            return
        if pair in self._clients:
            self._renew(self._clients, pair, now)
            return
        self._make_room()
        self._clients[pair] = now + self.pass_lifetime

    def _make_room(self) -> None:
        """Called with the lock held before one insert: keep the total under max_entries."""
        total = len(self._pending) + len(self._passed) + len(self._clients)
        if total < self.max_entries:
            return
        excess = total - self.max_entries + max(1, self.max_entries // 100)
        dropped = 0
        for table in (self._pending, self._passed, self._clients):
            victims = list(itertools.islice(table, excess - dropped))
            for key in victims:
                del table[key]
            dropped += len(victims)
            if dropped >= excess:
                break
        log.warning("greylist full (%d entries): dropped the %d oldest", self.max_entries, dropped)

    # -- upkeep -----------------------------------------------------------------------------------
    def prune(self) -> int:
        """Drop expired entries (pending past the retry window, passed and whitelisted past
        their lifetime); returns how many."""
        now = self._clock()
        with self._lock:
            dropped = 0
            limit = now - self.retry_window
            for table, stale in ((self._pending, lambda t: t < limit),
                                 (self._passed, lambda t: t <= now),
                                 (self._clients, lambda t: t <= now)):
                victims = [k for k, t in table.items() if stale(t)]
                for key in victims:
                    del table[key]
                dropped += len(victims)
            if dropped:
                self._dirty = True
        if dropped:
            log.debug("greylist: pruned %d expired entries", dropped)
        return dropped

    # -- persistence ------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the list atomically (skipped when nothing changed since the last save)."""
        with self._save_lock:
            with self._lock:
                if not self._dirty and self.path.exists():
                    return
                # Copies are C-speed: the lock is held for milliseconds, not for the encoding.
                pending = list(self._pending.items())
                passed = list(self._passed.items())
                clients = list(self._clients.items())
                self._dirty = False
            try:
                data = _encode(pending, passed, clients, self._clock())
                atomic_write(self.path, data)
            except BaseException:
                with self._lock:
                    self._dirty = True
                raise

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            # Unreadable is not corrupt: keep the file, start empty, and let save() report.
            log.error("cannot read the greylist %s: %s; starting with an empty list", self.path, exc)
            return
        try:
            pending, passed, clients = _decode(raw)
        except (ValueError, TypeError, KeyError) as exc:
            self._set_aside(f"{type(exc).__name__}: {exc}")
            return
        now = self._clock()
        limit = now - self.retry_window
        # Sorted so that the insertion order the eviction relies on is restored.
        self._pending = {k: t for k, t in sorted(pending, key=lambda r: r[1]) if t >= limit}
        self._passed = {k: t for k, t in sorted(passed, key=lambda r: r[1]) if t > now}
        self._clients = {k: t for k, t in sorted(clients, key=lambda r: r[1]) if t > now}
        total = len(self._pending) + len(self._passed) + len(self._clients)
        if total > self.max_entries:
            self._make_room()
        log.info("greylist: loaded %d entries from %s", len(self), self.path)

    def _set_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        serial = 1
        while aside.exists():  # os.replace would overwrite an earlier one on Windows and POSIX
            serial += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{serial}")
        try:
            self.path.replace(aside)
        except OSError as exc:
            log.error("greylist %s is corrupt (%s) and cannot be renamed aside (%s); "
                      "starting with an empty list", self.path, why, exc)
            return
        log.error("greylist %s is corrupt (%s): renamed to %s; starting with an empty list",
                  self.path, why, aside.name)


def _encode(pending: list, passed: list, clients: list, now: float) -> bytes:
    """One JSON object; the rows are flat lists ([net, sender, rcpt, time]), the most
    compact form json can read back without a schema per row."""
    parts = [f'{{"version":{FORMAT_VERSION},"saved":{now!r}']
    for name, items in (("pending", pending), ("passed", passed), ("clients", clients)):
        rows = [[*key, t] for key, t in items]
        chunks = [json.dumps(rows[i:i + _CHUNK], ensure_ascii=False, separators=(",", ":"))[1:-1]
                  for i in range(0, len(rows), _CHUNK)]
        parts.append(f',"{name}":[' + ",".join(chunks) + "]")
    parts.append("}\n")
    return "".join(parts).encode("utf-8")


def _decode(raw: bytes) -> tuple[list, list, list]:
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ValueError("not a greylist file of version %d" % FORMAT_VERSION)
    tables = []
    for name, width in (("pending", 3), ("passed", 3), ("clients", 2)):
        rows = data[name]
        if not isinstance(rows, list):
            raise ValueError(f"{name} is not a list")
        table = []
        for row in rows:
            if not (isinstance(row, list) and len(row) == width + 1
                    and all(isinstance(v, str) for v in row[:width])
                    and isinstance(row[width], (int, float)) and not isinstance(row[width], bool)):
                raise ValueError(f"bad {name} row {str(row)[:80]}")
            table.append((tuple(row[:width]), float(row[width])))
        tables.append(table)
    return tables[0], tables[1], tables[2]
