"""A small DNS stub resolver on plain sockets (RFC 1035), for finding where to deliver mail.

The outgoing delivery code asks ``Resolver.mx(domain)`` and then
``Resolver.addresses(host)`` for each MX host; the DNS records assistant also asks
``Resolver.txt(name)`` (SPF, DKIM, DMARC) and ``Resolver.ptr(ip)``.  The resolver sends
recursive (RD=1) queries to the configured or system name servers and never recurses itself.

Model:

* One query = a fresh UDP socket (the OS picks a random source port) and a random
  16-bit ID.  A datagram counts as the reply only if it comes from the server's
  address and port, has QR set, our ID and echoes our question; anything else is
  ignored until the time-out, so a blind spoofer must guess port and ID.
* ``attempts`` rounds over all servers, each waiting ``timeout`` seconds.  SERVFAIL,
  REFUSED and other error codes, time-outs and malformed replies move on to the next
  server; when all rounds are used up the lookup fails with DNSTemporaryError, which
  the caller treats as "try again later".  NXDOMAIN (RCODE 3) is final: NXDomain.
* A truncated (TC) reply is asked again over TCP to the same server.  Queries carry no
  EDNS0, so any reply over 512 bytes (a TXT record with a 4096-bit DKIM key) comes by TCP.
* A TXT record is one or more character-strings of up to 255 bytes; ``txt`` joins those of
  one record without spaces (RFC 7208 §3.3, RFC 6376 §3.6.2.2) and decodes the bytes as
  UTF-8, an invalid byte becoming U+FFFD (SPF, DKIM and DMARC records are plain ASCII).
* CNAME chains are followed, inside one reply and by asking again for the target,
  up to MAX_CNAME_HOPS.
* Results, including "no such domain" and "no such record", are cached per
  (name, type) for the smallest TTL involved (negative answers: the SOA minimum,
  RFC 2308, else 60 s), at most a day.  One lock guards the cache, so delivery
  threads can share one Resolver; queries themselves run outside the lock.
"""
from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import random
import re
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..net.hostport import split_host_port

log = logging.getLogger("ismail.dns")

A, CNAME, SOA, PTR, MX, TXT, AAAA = 1, 5, 6, 12, 15, 16, 28
CLASS_IN = 1
TYPE_NAMES = {A: "A", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", MX: "MX", TXT: "TXT", AAAA: "AAAA"}
RCODE_NAMES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
MAX_CNAME_HOPS = 8
MAX_CACHE_TTL = 86400
DEFAULT_NEGATIVE_TTL = 60
CACHE_LIMIT = 4096  # entries; beyond this expired ones are dropped, then the oldest


class DNSError(Exception):
    """Base; str() is a short human reason.  Raised as such for bad names (permanent)."""


class NXDomain(DNSError):
    """The name does not exist (permanent: RCODE 3)."""


class DNSTemporaryError(DNSError):
    """Time-out, SERVFAIL, REFUSED, TC-and-TCP-failed, no servers, bad reply: try again later."""


@dataclass(frozen=True)
class MXRecord:
    preference: int
    host: str  # lowercased, no trailing dot; "" for the null MX "." (RFC 7505)


@dataclass(frozen=True)
class _RR:
    name: str
    rtype: int
    ttl: int
    data: Any  # A/AAAA: address str; CNAME: name; MX: MXRecord; SOA: its MINIMUM field


@dataclass(frozen=True)
class _Reply:
    rcode: int
    truncated: bool
    answers: list[_RR]
    authority: list[_RR]


@dataclass(frozen=True)
class _Entry:
    """One cached outcome for (name, type): records, an alias to follow, or NXDOMAIN."""

    expires: float
    records: tuple = ()
    alias: str = ""  # the chain stopped at this CNAME target without data for it
    nxdomain: bool = False
    hops: int = 0  # CNAMEs followed inside the reply


class _Skip(Exception):
    """A datagram that is not our reply (wrong ID, not a reply, other question)."""


# ---------------------------------------------------------------- names and packets

def normalize_name(name: str) -> str:
    """Lowercase ASCII form (IDNA for non-ASCII) without trailing dot; DNSError if invalid."""
    text = name.strip() if isinstance(name, str) else ""
    text = text[:-1] if text.endswith(".") else text
    if not text:
        raise DNSError(f"empty domain name {name!r}")
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise DNSError(f"invalid international domain name {name!r}: {e}") from None
    text = text.lower()
    if any(c <= " " or c == "\x7f" for c in text):
        raise DNSError(f"invalid character in domain name {name!r}")
    if len(text) > 253:
        raise DNSError(f"domain name longer than 253 characters: {text[:40]}...")
    for label in text.split("."):
        if not label or len(label) > 63:
            raise DNSError(f"empty or over-long (>63) label in domain name {text!r}")
    return text


def _build_query(qid: int, name: str, qtype: int) -> bytes:
    wire = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire + b"\0" + struct.pack("!HH", qtype, CLASS_IN)


def _read_name(msg: bytes, off: int) -> tuple[str, int]:
    """The name at off (following compression pointers) and the offset after it."""
    labels: list[str] = []
    end, jumps, length = -1, 0, 0
    while True:
        if off >= len(msg):
            raise DNSTemporaryError("malformed reply: name runs past the end")
        n = msg[off]
        if n >= 0xC0:
            if off + 1 >= len(msg):
                raise DNSTemporaryError("malformed reply: cut-off compression pointer")
            if end < 0:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            jumps += 1
            # A legal name has at most 127 labels, so more jumps than that means a loop.
            if jumps > 127 or off >= len(msg):
                raise DNSTemporaryError("malformed reply: compression pointer loop or out of range")
            continue
        if n & 0xC0:
            raise DNSTemporaryError("malformed reply: unknown label type")
        off += 1
        if n == 0:
            return ".".join(labels), (end if end >= 0 else off)
        length += n + 1
        if off + n > len(msg) or length > 255:
            raise DNSTemporaryError("malformed reply: label past the end or name too long")
        labels.append(msg[off:off + n].decode("ascii", "backslashreplace").lower())
        off += n


def _parse_reply(msg: bytes, qid: int, name: str, qtype: int) -> _Reply:
    """Check that msg answers our question, then decode it.  _Skip if it is not our reply."""
    try:
        return _parse_checked(msg, qid, name, qtype)
    except (struct.error, IndexError, ValueError) as e:  # belt and braces: never let these escape
        raise DNSTemporaryError(f"malformed reply: {e}") from None


def _parse_checked(msg: bytes, qid: int, name: str, qtype: int) -> _Reply:
    if len(msg) < 12:
        raise _Skip("short datagram")
    rid, flags, qd, an, ns, _ar = struct.unpack_from("!HHHHHH", msg)
    if rid != qid or not flags & 0x8000:
        raise _Skip("wrong ID or not a reply")
    rcode, off = flags & 0x000F, 12
    if qd != 1 and not (qd == 0 and rcode not in (0, 3)):  # error replies may omit the question
        raise _Skip("question count")
    if qd == 1:
        qname, off = _read_name(msg, off)
        if off + 4 > len(msg) or (qname, *struct.unpack_from("!HH", msg, off)) != (name, qtype, CLASS_IN):
            raise _Skip("another question")
        off += 4
    sections: list[list[_RR]] = [[], []]
    for count, records in ((an, sections[0]), (ns, sections[1])):
        for _ in range(count):
            owner, off = _read_name(msg, off)
            if off + 10 > len(msg):
                raise DNSTemporaryError("malformed reply: record header past the end")
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
            off += 10
            if off + rdlen > len(msg):
                raise DNSTemporaryError("malformed reply: record data past the end")
            data = _decode_rdata(msg, off, rdlen, rtype)
            off += rdlen
            if rclass == CLASS_IN and data is not None:
                # RFC 2181 8: a TTL with the top bit set is to be read as zero.
                records.append(_RR(owner, rtype, 0 if ttl & 0x80000000 else ttl, data))
    return _Reply(rcode, bool(flags & 0x0200), sections[0], sections[1])


def _decode_rdata(msg: bytes, off: int, rdlen: int, rtype: int) -> Any:
    rdata = msg[off:off + rdlen]
    if rtype == A and rdlen == 4:
        return str(ipaddress.IPv4Address(rdata))
    if rtype == AAAA and rdlen == 16:
        return str(ipaddress.IPv6Address(rdata))
    if rtype in (A, AAAA):
        raise DNSTemporaryError(f"malformed reply: {TYPE_NAMES[rtype]} record of {rdlen} bytes")
    if rtype in (CNAME, PTR):
        return _read_name(msg, off)[0]
    if rtype == TXT:
        # One or more <length><bytes> strings, joined without spaces (RFC 7208 §3.3).
        parts, at, end = [], off, off + rdlen
        while at < end:
            n = msg[at]
            if at + 1 + n > end:
                raise DNSTemporaryError("malformed reply: TXT string runs past its record")
            parts.append(msg[at + 1:at + 1 + n])
            at += 1 + n
        return b"".join(parts).decode("utf-8", "replace")
    if rtype == MX:
        if rdlen < 3:
            raise DNSTemporaryError("malformed reply: short MX record")
        return MXRecord(struct.unpack_from("!H", msg, off)[0], _read_name(msg, off + 2)[0])
    if rtype == SOA:
        after = _read_name(msg, _read_name(msg, off)[1])[1]
        if after + 20 > off + rdlen:
            raise DNSTemporaryError("malformed reply: short SOA record")
        return struct.unpack_from("!I", msg, after + 16)[0]
    return None  # other types are not needed


# ---------------------------------------------------------------- server addresses

def parse_server(text: str) -> tuple[str, int]:
    """ "192.0.2.53", "127.0.0.1:5353", "[::1]:5353" or a bare "::1" -> (address, port).

    The same syntax as the dns_servers setting, so net.hostport.split_host_port does the work."""
    s = text.strip()
    if not s:
        raise ValueError("DNS server address is empty")
    try:
        host, port = split_host_port(s, need_port=False)
    except ValueError as e:
        raise ValueError(f"DNS server {text!r}: {e}") from None
    return str(ipaddress.ip_address(host)), port or 53


def _posix_nameservers(resolv_conf: Path) -> list[str]:
    try:
        lines = resolv_conf.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        log.debug("cannot read %s: %s", resolv_conf, e)
        return []
    found = []
    for line in lines:
        words = re.split(r"[#;]", line, maxsplit=1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1])
    return found


_TCPIP_KEYS = (r"SYSTEM\CurrentControlSet\Services\Tcpip\Parameters",
               r"SYSTEM\CurrentControlSet\Services\Tcpip6\Parameters")


def _windows_registry_nameservers(winreg: Any) -> list[str]:
    """NameServer (static, wins) or DhcpNameServer of Tcpip and each interface key."""
    def servers_of(key: Any) -> list[str]:
        for value_name in ("NameServer", "DhcpNameServer"):
            try:
                value = winreg.QueryValueEx(key, value_name)[0]
            except OSError:
                continue
            items = [v for v in re.split(r"[\s,]+", str(value or "")) if v]
            if items:
                return items
        return []

    found: list[str] = []
    for path in _TCPIP_KEYS:
        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, path) as key:
                found += servers_of(key)
        except OSError as e:
            log.debug("registry key %s: %s", path, e)
        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, path + r"\Interfaces") as interfaces:
                for i in range(4096):  # bounded: EnumKey raises OSError after the last one
                    try:
                        guid = winreg.EnumKey(interfaces, i)
                    except OSError:
                        break
                    try:
                        with winreg.OpenKey(interfaces, guid) as key:
                            found += servers_of(key)
                    except OSError:
                        continue
        except OSError as e:
            log.debug("registry key %s: %s", path, e)
    return found


class _IPAddrString(ctypes.Structure):
    pass


_IPAddrString._fields_ = [("Next", ctypes.POINTER(_IPAddrString)), ("IpAddress", ctypes.c_char * 16),
                          ("IpMask", ctypes.c_char * 16), ("Context", ctypes.c_uint32)]


class _FixedInfo(ctypes.Structure):  # FIXED_INFO of iptypes.h
    _fields_ = [("HostName", ctypes.c_char * 132), ("DomainName", ctypes.c_char * 132),
                ("CurrentDnsServer", ctypes.POINTER(_IPAddrString)), ("DnsServerList", _IPAddrString),
                ("NodeType", ctypes.c_uint), ("ScopeId", ctypes.c_char * 260),
                ("EnableRouting", ctypes.c_uint), ("EnableProxy", ctypes.c_uint), ("EnableDns", ctypes.c_uint)]


def _windows_iphlpapi_nameservers(get_network_params: Callable | None = None) -> list[str]:
    """IPv4 servers from GetNetworkParams (IP Helper API), the fallback when the registry has none."""
    if get_network_params is None:
        try:
            get_network_params = ctypes.WinDLL("iphlpapi").GetNetworkParams  # type: ignore[attr-defined]
        except (AttributeError, OSError) as e:
            log.debug("GetNetworkParams unavailable: %s", e)
            return []
    size = ctypes.c_ulong(0)
    get_network_params(None, ctypes.pointer(size))  # ERROR_BUFFER_OVERFLOW, with the size needed
    buf = ctypes.create_string_buffer(max(size.value, ctypes.sizeof(_FixedInfo)))
    size.value = len(buf)
    if get_network_params(buf, ctypes.pointer(size)) != 0:
        return []
    entry, found = ctypes.cast(buf, ctypes.POINTER(_FixedInfo)).contents.DnsServerList, []
    for _ in range(64):  # bounded walk of the linked list
        address = entry.IpAddress.decode("ascii", "replace").strip()
        if address and address != "0.0.0.0":
            found.append(address)
        if not entry.Next:
            break
        entry = entry.Next.contents
    return found


def _windows_nameservers(winreg: Any = None, get_network_params: Callable | None = None) -> list[str]:
    if winreg is None:
        try:
            import winreg  # type: ignore[no-redef]  # Windows only
        except ImportError:
            winreg = None
    found = _windows_registry_nameservers(winreg) if winreg is not None else []
    return found or _windows_iphlpapi_nameservers(get_network_params)


_IS_WINDOWS = os.name == "nt"
_warned_none = False


def system_nameservers(*, resolv_conf: Path | None = None) -> list[tuple[str, int]]:
    """The system's name servers: /etc/resolv.conf, or on Windows the registry / IP Helper API."""
    global _warned_none
    if resolv_conf is None and _IS_WINDOWS:
        raw = _windows_nameservers()
    else:
        raw = _posix_nameservers(resolv_conf or Path("/etc/resolv.conf"))
    servers: list[tuple[str, int]] = []
    for text in raw:
        try:
            server = parse_server(text)
        except ValueError as e:
            log.debug("ignoring system name server: %s", e)
            continue
        if server not in servers:
            servers.append(server)
    if not servers and not _warned_none:
        _warned_none = True
        log.warning("no DNS servers found in the system settings; direct delivery cannot look up "
                    "mail servers until DNS servers are configured")
    return servers


# ---------------------------------------------------------------- the resolver

def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%")[0]) == ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return False


class Resolver:
    def __init__(self, servers: list[tuple[str, int]] | None = None, timeout: float = 3.0, attempts: int = 2,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout <= 0 or attempts < 1:
            raise ValueError("timeout must be > 0 and attempts >= 1")
        # None means "the system's", read on the first query so constructing one touches nothing.
        self._servers = None if servers is None else list(servers)
        self.timeout, self.attempts, self._clock = timeout, attempts, clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], _Entry] = {}

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def mx(self, domain: str) -> list[MXRecord]:
        records = list(dict.fromkeys(self._resolve(normalize_name(domain), MX)))
        random.shuffle(records)  # RFC 5321 5.1: spread load over hosts of equal preference
        return sorted(records, key=lambda r: r.preference)

    def txt(self, name: str) -> list[str]:
        """The TXT records of ``name``, each one's strings joined (UTF-8, bad bytes replaced);
        [] when there are none; NXDomain when the name does not exist."""
        return list(self._resolve(normalize_name(name), TXT))

    def ptr(self, ip: str) -> list[str]:
        """The names a reverse look-up of ``ip`` gives (in-addr.arpa / ip6.arpa); DNSError if
        ``ip`` is not an address."""
        try:
            name = ipaddress.ip_address(ip.strip()).reverse_pointer
        except (ValueError, AttributeError):
            raise DNSError(f"not an IP address: {ip!r}") from None
        return [n.rstrip(".") for n in self._resolve(name, PTR)]

    def a(self, name: str) -> list[str]:
        """The IPv4 addresses of ``name`` ([] when it has none; NXDomain when it does not exist)."""
        return list(self._resolve(normalize_name(name), A))

    def aaaa(self, name: str) -> list[str]:
        """The IPv6 addresses of ``name`` ([] when it has none; NXDomain when it does not exist)."""
        return list(self._resolve(normalize_name(name), AAAA))

    def addresses(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        name = normalize_name(host)
        v4 = self._resolve(name, A)
        try:
            v6 = self._resolve(name, AAAA)
        except DNSTemporaryError as e:
            if not v4:
                raise
            # Some broken servers fail AAAA queries; IPv4 addresses are enough to deliver.
            log.info("AAAA lookup for %s failed (%s); using its IPv4 addresses", name, e)
            v6 = ()
        return list(dict.fromkeys([*v4, *v6]))

    def _resolve(self, name: str, qtype: int) -> tuple:
        current, hops = name, 0
        while True:  # ends: each pass returns, raises or uses up at least one of MAX_CNAME_HOPS
            with self._lock:
                entry = self._cache.get((current, qtype))
                if entry is not None and entry.expires <= self._clock():
                    entry = None
            if entry is None:
                entry = self._fetch(current, qtype)
            hops += entry.hops
            if hops > MAX_CNAME_HOPS:
                raise DNSTemporaryError(f"CNAME chain of {name} longer than {MAX_CNAME_HOPS}")
            if entry.nxdomain:
                raise NXDomain(f"{name}: no such domain" + (f" (alias of {current})" if current != name else ""))
            if not entry.alias:
                return entry.records
            current = entry.alias

    def _fetch(self, name: str, qtype: int) -> _Entry:
        """Ask the servers and cache the outcome for (name, qtype)."""
        reply = self._query(name, qtype)
        target, ttls, hops, records = name, [], 0, []
        for _ in range(MAX_CNAME_HOPS + 1):  # the chain inside this reply
            records = [rr for rr in reply.answers if rr.name == target and rr.rtype == qtype]
            alias = next((rr for rr in reply.answers if rr.name == target and rr.rtype == CNAME), None)
            if records or alias is None:
                break
            ttls.append(alias.ttl)
            target, hops = alias.data, hops + 1
        if hops > MAX_CNAME_HOPS:
            raise DNSTemporaryError(f"CNAME chain of {name} longer than {MAX_CNAME_HOPS} (or a loop)")
        negative = [min(rr.ttl, rr.data) for rr in reply.authority if rr.rtype == SOA]
        if records:
            entry = _Entry(0, tuple(rr.data for rr in records), hops=hops)
            ttls += [rr.ttl for rr in records]
        elif reply.rcode == 3:
            entry = _Entry(0, nxdomain=True, hops=hops)
            ttls += negative[:1] or [DEFAULT_NEGATIVE_TTL]
        elif target != name:
            entry = _Entry(0, alias=target, hops=hops)
        else:
            entry = _Entry(0, hops=hops)  # NODATA: the name exists without such records
            ttls += negative[:1] or [DEFAULT_NEGATIVE_TTL]
        ttl = max(0, min([*ttls, MAX_CACHE_TTL]))
        with self._lock:
            entry = replace(entry, expires=self._clock() + ttl)
            self._cache[(name, qtype)] = entry
            if len(self._cache) > CACHE_LIMIT:
                now = self._clock()
                for key in [k for k, v in self._cache.items() if v.expires <= now]:
                    del self._cache[key]
                while len(self._cache) > CACHE_LIMIT:  # dicts keep insertion order: drop oldest
                    del self._cache[next(iter(self._cache))]
        log.debug("%s %s -> %s (ttl %d)", name, TYPE_NAMES[qtype], entry, ttl)
        return entry

    def _get_servers(self) -> list[tuple[str, int]]:
        with self._lock:
            if self._servers is None:
                found = system_nameservers()
                if not found:
                    return []  # not kept: DNS may be configured later (network coming up)
                self._servers = found
            return self._servers

    def _query(self, name: str, qtype: int) -> _Reply:
        """A reply with RCODE 0 or 3 from one of the servers, or DNSTemporaryError."""
        servers = self._get_servers()
        if not servers:
            raise DNSTemporaryError("no DNS servers configured")
        last = ""
        for _round in range(self.attempts):
            for server in servers:
                where = f"{server[0]}:{server[1]}"
                try:
                    reply = self._udp(server, name, qtype)
                    if reply is None:
                        last = f"{where}: no reply within {self.timeout:g}s"
                        continue
                    if reply.truncated:
                        log.debug("truncated reply from %s for %s; asking over TCP", where, name)
                        reply = self._tcp(server, name, qtype)
                except DNSTemporaryError as e:
                    last = f"{where}: {e}"
                    continue
                if reply.rcode in (0, 3):
                    return reply
                last = f"{where} answered {RCODE_NAMES.get(reply.rcode, f'RCODE {reply.rcode}')}"
                log.debug("%s for %s %s", last, name, TYPE_NAMES[qtype])
        raise DNSTemporaryError(f"no answer from DNS servers for {name} {TYPE_NAMES[qtype]} (last: {last})")

    def _udp(self, server: tuple[str, int], name: str, qtype: int) -> _Reply | None:
        qid = secrets.randbits(16)
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        deadline = time.monotonic() + self.timeout
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                # Connected: a server that is not running (its port closed, as when a local
                # resolver is down) answers with ICMP, and the recv fails at once with
                # ConnectionRefused (ConnectionReset on Windows) instead of waiting out the
                # time-out on every attempt.  Datagrams from elsewhere never reach us.
                sock.connect(server)
                sock.send(_build_query(qid, name, qtype))
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    try:
                        data, source = sock.recvfrom(65535)
                    except TimeoutError:
                        return None
                    if source[1] != server[1] or not _same_address(source[0], server[0]):
                        continue
                    try:
                        return _parse_reply(data, qid, name, qtype)
                    except _Skip as e:
                        log.debug("ignoring datagram from %s: %s", server[0], e)
        except OSError as e:  # includes ICMP port unreachable (ConnectionRefused/Reset on Windows)
            raise DNSTemporaryError(f"UDP query failed: {e}") from None
        return None

    def _tcp(self, server: tuple[str, int], name: str, qtype: int) -> _Reply:
        qid = secrets.randbits(16)
        query = _build_query(qid, name, qtype)
        deadline = time.monotonic() + self.timeout
        try:
            with socket.create_connection(server, timeout=self.timeout) as sock:
                sock.sendall(struct.pack("!H", len(query)) + query)
                data = b""
                while len(data) < 2 or len(data) < 2 + struct.unpack_from("!H", data)[0]:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("timed out")
                    sock.settimeout(left)
                    chunk = sock.recv(65537)
                    if not chunk:
                        raise DNSTemporaryError("TCP connection closed before the whole reply")
                    data += chunk
        except OSError as e:
            raise DNSTemporaryError(f"query over TCP after a truncated reply failed: {e}") from None
        try:
            return _parse_reply(data[2:2 + struct.unpack_from("!H", data)[0]], qid, name, qtype)
        except _Skip as e:
            raise DNSTemporaryError(f"bad reply over TCP: {e}") from None
