"""White and black lists of client networks and sender addresses.

Entry forms (case-insensitive; one list may mix them):

=====================  =========================================================
``192.0.2.7``          one client address (IPv4 or IPv6)
``192.0.2.0/24``       a client network (host bits are ignored: 192.0.2.7/24 = 192.0.2.0/24)
``bob@example.com``    one sender address
``example.com``        senders of that domain exactly (``@example.com`` is the same)
``*.example.com``      senders of any subdomain of it, not of example.com itself
``*@example.com``      the same as ``example.com``
``bob@*``              that local part at any domain
``*spam*@*``           any other pattern: ``*`` is any run of characters, ``?`` one;
                       (no character classes, no regex)
=====================  =========================================================

White wins: a client or a sender on both lists is "white".  The white list is the
administrator's exception to a broad black entry (black ``*.example.com``, white
``mail.example.com``), never the other way round.

Lookups cost the same for 10 entries or 10,000: addresses, local parts and domains are
in sets; networks are in one set per prefix length (a client is masked once per
prefix length in use, at most 33 or 129 times); the remaining wildcards are compiled
into one regular expression per list at construction.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import re
from typing import Any

WHITE = "white"
BLACK = "black"

# Letters of any script (SMTPUTF8 domains), digits, hyphens, underscores in dot-separated labels.
_LABELS = re.compile(r"(?:\w(?:[\w-]*\w)?\.)*\w(?:[\w-]*\w)?\.?")
_BAD_LOCAL = re.compile(r"[\s<>()\[\]\\,;:\"\x00-\x1f\x7f]")
_IP_LIKE = re.compile(r"[0-9.]+(?:/\d*)?|.*:.*|.*/.*")


class _Matcher:
    """One list, compiled."""

    def __init__(self) -> None:
        self.nets: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}  # version -> prefix -> masked ints
        self.addresses: set[str] = set()
        self.locals: set[str] = set()       # "bob@*" -> "bob"
        self.domains: set[str] = set()      # "example.com"
        self.parents: set[str] = set()      # "*.example.com" -> "example.com"
        self.patterns: list[str] = []       # fnmatch patterns against the whole address
        self.regex: re.Pattern[str] | None = None
        self.net_lists: dict[int, tuple[tuple[int, set[int]], ...]] = {4: (), 6: ()}

    def add(self, entry: str) -> None:
        kind, value = _parse(entry)
        if kind == "net":
            bits = value.max_prefixlen
            mask = ((1 << value.prefixlen) - 1) << (bits - value.prefixlen)
            self.nets[value.version].setdefault(value.prefixlen, set()).add(int(value.network_address) & mask)
        elif kind == "patterns":
            self.patterns.append(value)
        else:
            getattr(self, kind).add(value)

    def finish(self) -> None:
        if self.patterns:
            self.regex = re.compile("|".join(_translate(p) for p in self.patterns))
        self.net_lists = {v: tuple((p, s) for p, s in nets.items()) for v, nets in self.nets.items()}

    def client(self, addr: Any) -> bool:
        value, bits = int(addr), addr.max_prefixlen
        for prefix, masked in self.net_lists[addr.version]:
            if (value >> (bits - prefix) << (bits - prefix)) in masked:
                return True
        return False

    def sender(self, address: str, local: str, domain: str) -> bool:
        if address in self.addresses or domain in self.domains or local in self.locals:
            return True
        if self.parents:
            rest = domain
            while "." in rest:
                rest = rest.partition(".")[2]
                if rest in self.parents:
                    return True
        return self.regex is not None and self.regex.match(address) is not None


def _translate(pattern: str) -> str:
    # "[[]" is fnmatch's spelling of a literal "["; its translation of "*" is atomic
    # ((?>.*?x)), so many stars cannot make the match backtrack without end.
    return fnmatch.translate(pattern.replace("[", "[[]"))


def _parse(entry: str) -> tuple[str, Any]:
    """(kind, value) for one entry; ValueError names the entry."""
    if not isinstance(entry, str):
        raise ValueError(f"{entry!r} is not a string")
    text = entry.strip().lower()
    if not text:
        raise ValueError("an empty entry")
    if "@" not in text and "*" not in text and "?" not in text and _IP_LIKE.fullmatch(text):
        try:
            return "net", ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f'"{entry}" is not a valid IP address or network') from None
    if any(c.isspace() for c in text):
        raise ValueError(f'"{entry}" contains a space')
    local, at, domain = text.rpartition("@")
    if not at:
        local, domain = "*", text
    elif text.startswith("@") and text.count("@") == 1:
        local = "*"
    if not local or not domain:
        raise ValueError(f'"{entry}" has an empty local part or domain')
    if _BAD_LOCAL.search(local.replace("*", "").replace("?", "")) or "@" in local:
        raise ValueError(f'"{entry}" has an invalid character in the local part')
    wild_domain = "*" in domain or "?" in domain
    plain_domain = domain.replace("*", "a").replace("?", "a")
    if not _LABELS.fullmatch(plain_domain):
        raise ValueError(f'"{entry}" does not end in a valid domain (letters, digits, hyphens '
                         'in dot-separated labels)')
    domain = domain.rstrip(".")
    wild_local = "*" in local or "?" in local
    if local == "*":
        if not wild_domain:
            return "domains", domain
        if domain.startswith("*.") and "*" not in domain[2:] and "?" not in domain:
            return "parents", domain[2:]
        if domain == "*":
            raise ValueError(f'"{entry}" matches every sender')
    elif not wild_local and domain == "*":
        return "locals", local
    elif not wild_local and not wild_domain:
        return "addresses", f"{local}@{domain}"
    return "patterns", f"{local}@{domain}"


def check_entry(entry: str) -> str | None:
    """None if ``entry`` is a valid list entry, else what is wrong with it (naming it)."""
    try:
        _parse(entry)
    except ValueError as exc:
        return str(exc)
    return None


def _normal_ip(ip: str) -> Any:
    addr: Any = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket's ::ffff:a.b.c.d must meet IPv4 entries
    return addr


def _split_address(address: str) -> tuple[str, str, str]:
    address = address.strip().strip("<>").lower()
    local, at, domain = address.rpartition("@")
    if not at:
        return address, address, ""
    return address, local, domain.rstrip(".")


class AccessLists:
    def __init__(self, whitelist: list[str], blacklist: list[str]) -> None:
        self._white, self._black = _Matcher(), _Matcher()
        for name, entries, matcher in (("whitelist", whitelist, self._white),
                                       ("blacklist", blacklist, self._black)):
            for i, entry in enumerate(entries):
                try:
                    matcher.add(entry)
                except ValueError as exc:
                    raise ValueError(f"{name}[{i}]: {exc}") from None
            matcher.finish()
        self._networks = any(m.net_lists[v] for m in (self._white, self._black) for v in (4, 6))

    def client(self, ip: str) -> str | None:
        """WHITE, BLACK or None for a client address, by the network entries."""
        if not self._networks:  # parsing the address costs more than the rest of the check
            return None
        try:
            addr = _normal_ip(ip)
        except ValueError:
            return None
        if self._white.client(addr):
            return WHITE
        if self._black.client(addr):
            return BLACK
        return None

    def sender(self, address: str) -> str | None:
        """WHITE, BLACK or None for a sender address, by the address and domain entries."""
        if not address:
            return None  # the null sender: bounces are judged by their client, not listed
        full, local, domain = _split_address(address)
        if self._white.sender(full, local, domain):
            return WHITE
        if self._black.sender(full, local, domain):
            return BLACK
        return None
