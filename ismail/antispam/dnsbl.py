"""Connect-time DNS checks: DNS block lists (RFC 5782) and the client's reverse DNS (FCrDNS).

A DNSBL zone lists an address when ``<reversed address>.<zone>`` has an A record.  The
answer says why (Spamhaus ZEN: 127.0.0.2 SBL, .3 CSS, .4-.7 XBL, .9 DROP, .10-.11 PBL), so
an entry may name the answers that count: ``zen.spamhaus.org=127.0.0.2-127.0.0.11``.
Without a list, any answer in 127.0.0.0/8 counts except 127.255.255.0/24, which Spamhaus
and others use for "your query was refused" (from a public resolver, or over quota): such
an answer is logged, never taken as a listing.

FCrDNS (forward-confirmed reverse DNS, RFC 8601's "iprev"): one of the client's PTR names
must have an address record holding the client's address.  Results: pass, fail (no PTR
name, or none resolves back), temperror (DNS did not answer).
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from ..queue.dns import DNSTemporaryError, NXDomain

log = logging.getLogger("ismail.antispam")

MAX_PTR_NAMES = 10  # as SPF's ptr mechanism: a client with more names is not checked further
_REFUSED = ipaddress.ip_network("127.255.255.0/24")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@dataclass(frozen=True)
class Zone:
    name: str
    codes: tuple[tuple[int, int], ...] = ()  # inclusive ranges of answers that count; () = any

    def counts(self, answer: str) -> bool:
        try:
            addr = ipaddress.IPv4Address(answer)
        except ValueError:
            return False
        if self.codes:
            return any(lo <= int(addr) <= hi for lo, hi in self.codes)
        return addr in _LOOPBACK and addr not in _REFUSED


def parse_zone(text: str) -> Zone:
    """ "zone" or "zone=127.0.0.2,127.0.0.4-127.0.0.7"; ValueError with a reason for the user."""
    name, equals, codes_text = text.strip().partition("=")
    name = name.strip().lower().rstrip(".")
    labels = name.split(".")
    if len(labels) < 2 or any(not label or len(label) > 63 for label in labels) or len(name) > 200 \
            or not all(c.isalnum() or c in "-._" for c in name):
        raise ValueError(f"{name!r} is not a DNS zone name")
    codes = []
    for part in filter(None, (p.strip() for p in codes_text.split(","))):
        lo_text, _, hi_text = part.partition("-")
        try:
            lo = int(ipaddress.IPv4Address(lo_text.strip()))
            hi = int(ipaddress.IPv4Address(hi_text.strip())) if hi_text else lo
        except ValueError:
            raise ValueError(f"{part!r} is not an answer address or range such as 127.0.0.2-127.0.0.11") from None
        if hi < lo:
            raise ValueError(f"{part!r}: the range ends before it starts")
        codes.append((lo, hi))
    if equals and not codes:
        raise ValueError("nothing after '=' (expected answer addresses such as 127.0.0.2)")
    return Zone(name, tuple(codes))


def check_zone(text: str) -> str | None:
    try:
        parse_zone(text)
    except ValueError as e:
        return str(e)
    return None


def query_name(ip: str, zone: str) -> str:
    """1.2.0.192.zone for 192.0.2.1; 32 nibbles for IPv6 (RFC 5782 §2.4)."""
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        addr = mapped
    reverse = addr.reverse_pointer  # "1.2.0.192.in-addr.arpa" / "...ip6.arpa"
    return reverse.rsplit(".", 2)[0] + "." + zone


@dataclass(frozen=True)
class Listing:
    zone: str
    answer: str


def lookup(resolver, ip: str, zone: Zone) -> Listing | None:
    """The listing of ``ip`` in ``zone``, or None; DNSTemporaryError when DNS did not answer."""
    try:
        answers = resolver.a(query_name(ip, zone.name))
    except NXDomain:
        return None
    for answer in answers:
        if zone.counts(answer):
            return Listing(zone.name, answer)
        if ipaddress.IPv4Address(answer) in _REFUSED:
            log.warning("%s refused our query for %s (answer %s): it does not serve queries from "
                        "public DNS resolvers or over its free quota; see README.txt", zone.name, ip, answer)
    return None


@dataclass(frozen=True)
class Reverse:
    result: str   # pass | fail | temperror
    name: str = ""  # the confirmed name (pass) or the first PTR name


def fcrdns(resolver, ip: str) -> Reverse:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        addr = mapped
    try:
        names = resolver.ptr(str(addr))
    except NXDomain:
        return Reverse("fail")
    except DNSTemporaryError:
        return Reverse("temperror")
    if not names:
        return Reverse("fail")
    temporary = False
    for name in names[:MAX_PTR_NAMES]:
        try:
            found = resolver.a(name) if addr.version == 4 else resolver.aaaa(name)
        except NXDomain:
            continue
        except DNSTemporaryError:
            temporary = True
            continue
        if any(_same(a, addr) for a in found):
            return Reverse("pass", name)
    return Reverse("temperror" if temporary else "fail", names[0])


def _same(text: str, addr) -> bool:
    try:
        return ipaddress.ip_address(text) == addr
    except ValueError:
        return False
