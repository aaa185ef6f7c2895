"""Routes and relay domains as data: the two entry types, what may be saved, and the file's
layout (``parse`` / ``to_json``).  ``routes`` holds the file, the locking and the lookups.

Every check raises ``RouteError`` whose text names the entry, the field and what is allowed;
the same checks run on a file read from disk, where a failure makes the file unusable.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from ..config import TLS_MODES, host_name_problem
from ..platform.protect import ProtectError, protect, unprotect
from .addressbook_rules import address_problem
from .jsonfile import Corrupt, document

FORMAT_VERSION = 1
MAX_LIFETIME_HOURS = 8760  # a year: longer than any primary should stay down
_ROUTE_KEYS = ("host", "port", "tls", "username", "password")
_RELAY_KEYS = ("recipients", "lifetime_hours")
_TOP_KEYS = ("version", "routes", "relay_domains")
_DOMAIN_FORM = 'expected a domain name such as "corp.example"; wildcards are not supported'


class RouteError(ValueError):
    """A refused edit or unusable file; str() names the entry, the field and what is allowed."""


@dataclass(frozen=True)
class Route:
    """A fixed next hop for ``domain``: overrides MX lookup and the SmartHost."""
    domain: str
    host: str
    port: int = 25
    tls: str = "starttls-optional"
    username: str = ""
    password: str = field(default="", repr=False)  # in clear in memory; protected on disk


@dataclass(frozen=True)
class RelayDomain:
    """A domain ISMail accepts and queues for its primary (backup MX)."""
    domain: str
    recipients: tuple[str, ...] = ()  # lowercased; empty = any address of the domain
    lifetime_hours: int | None = None  # None = retry.lifetime_hours


@dataclass
class _Table:
    """One state of the file.  A published table is never mutated: edits work on copy()."""
    routes: dict[str, Route] = field(default_factory=dict)
    relays: dict[str, RelayDomain] = field(default_factory=dict)
    accepts: dict[str, frozenset[str]] = field(default_factory=dict)  # relay -> recipients
    extras: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # unknown keys
    top_extras: dict[str, Any] = field(default_factory=dict)
    # domain -> (password in clear, as stored): an unchanged password keeps its stored form,
    # so a DPAPI blob that cannot be opened here survives edits of other entries.
    stored: dict[str, tuple[str, str]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # domain -> why, for problems()

    def copy(self) -> "_Table":
        return _Table(dict(self.routes), dict(self.relays), dict(self.accepts),
                      dict(self.extras), dict(self.top_extras), dict(self.stored),
                      dict(self.unreadable))

    def put_route(self, route: Route) -> None:
        self.routes[route.domain] = route
        self.stored.pop(route.domain, None)
        self.unreadable.pop(route.domain, None)

    def drop_route(self, domain: str) -> None:
        if self.routes.pop(domain, None) is None:
            raise RouteError(f"There is no route for {domain}.")
        self.extras.pop(("routes", domain), None)
        self.stored.pop(domain, None)
        self.unreadable.pop(domain, None)

    def put_relay(self, relay: RelayDomain) -> None:
        self.relays[relay.domain] = relay
        self.accepts[relay.domain] = frozenset(relay.recipients)

    def drop_relay(self, domain: str) -> None:
        if self.relays.pop(domain, None) is None:
            raise RouteError(f"There is no relay domain {domain}.")
        self.accepts.pop(domain, None)
        self.extras.pop(("relay_domains", domain), None)

    def to_json(self) -> dict[str, Any]:
        routes: dict[str, Any] = {}
        for dom, r in sorted(self.routes.items()):
            clear, stored = self.stored.get(dom, ("", ""))
            if r.password != clear or not stored:
                try:
                    stored = protect(r.password)  # DPAPI on Windows; see platform.protect
                except ProtectError as e:
                    raise RouteError(f"route {dom}: the password {e}.") from None
            routes[dom] = {"host": r.host, "port": r.port, "tls": r.tls, "username": r.username,
                           "password": stored, **self.extras.get(("routes", dom), {})}
        relays = {dom: {"recipients": list(r.recipients), "lifetime_hours": r.lifetime_hours,
                        **self.extras.get(("relay_domains", dom), {})}
                  for dom, r in sorted(self.relays.items())}
        return {"version": FORMAT_VERSION, "routes": routes, "relay_domains": relays,
                **self.top_extras}


# ----- names -----
def _forbidden_chars(where: str, what: str, value: str) -> None:
    if any(c in value for c in "\r\n\0"):
        raise RouteError(f"{where}: {what} contains a line break or NUL character, "
                         "which is not allowed")


def _dotted_name_problem(name: str) -> str | None:
    problem = host_name_problem(name)
    if problem is None and name.rpartition(".")[2].isdigit():
        # "127.1" passes as labels but the resolver reads it as an address.
        return "it ends in a number, like an IP address, but is not a valid one"
    return problem


def clean_domain(domain: Any, kind: str = "route") -> str:
    """``domain`` lowercased without its trailing dot; RouteError if it is not a domain name."""
    if not isinstance(domain, str):
        raise RouteError(f"{kind} {domain!r}: the domain is not text ({_DOMAIN_FORM})")
    _forbidden_chars(f"{kind} {domain!r}", "the domain", domain)
    name = domain.strip().lower().removesuffix(".")
    problem = _dotted_name_problem(name)
    if problem:
        raise RouteError(f"{kind} {domain!r}: the domain is not valid: {problem} ({_DOMAIN_FORM})")
    return name


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def clean_host(host: Any, where: str) -> str:
    """A host name lowercased, or an IP address in its short form (IPv6 without brackets)."""
    form = 'expected a host name such as "exchange.corp.example" or an IP address'
    if not isinstance(host, str):
        raise RouteError(f"{where}: host {host!r} is not text ({form})")
    _forbidden_chars(where, "host", host)
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    ip = _ip(text)
    if ip is not None:
        if ip.is_unspecified or ip.is_multicast:
            raise RouteError(f"{where}: host {host!r} is not the address of one host ({form})")
        return str(ip)
    name = text.lower().removesuffix(".")
    problem = _dotted_name_problem(name)
    if problem:
        raise RouteError(f"{where}: host {host!r} is not valid: {problem} ({form})")
    return name


def _same_host_key(name: str) -> str:
    """How two spellings of one host compare: IPv4-mapped IPv6 as IPv4, names lowercased."""
    text = name.strip().lower().removesuffix(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    ip = _ip(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip) if ip is not None else text


def is_own_host(host: str, own_names: Iterable[str]) -> bool:
    """True if ``host`` is one of ``own_names`` (the caller's names and exact listen IPs).
    A wildcard listen address among them stands for the loopback addresses it also covers."""
    own = {_same_host_key(n) for n in own_names if isinstance(n, str)}
    key = _same_host_key(host)
    if key in own:
        return True
    ip = _ip(key)
    return ip is not None and ip.is_loopback and ("::" in own or (ip.version == 4 and "0.0.0.0" in own))


# ----- entries -----
def clean_route(route: Route, *, password_known: bool = True) -> Route:
    """The route with its domain and host normalised; RouteError naming the field otherwise.
    ``password_known`` False: the stored password could not be opened (reported elsewhere)."""
    if not isinstance(route, Route):
        raise RouteError(f"expected a Route, not {type(route).__name__}")
    domain = clean_domain(route.domain, "route")
    where = f"route {domain}"
    host = clean_host(route.host, where)
    if type(route.port) is not int:  # type(): True is an int
        raise RouteError(f"{where}: port {route.port!r} is not a whole number (allowed 1-65535)")
    if not 1 <= route.port <= 65535:
        raise RouteError(f"{where}: port {route.port} is out of range (allowed 1-65535)")
    if route.tls not in TLS_MODES:
        raise RouteError(f"{where}: tls {route.tls!r} is not valid (allowed "
                         + ", ".join(f'"{m}"' for m in TLS_MODES) + ")")
    for what in ("username", "password"):
        value = getattr(route, what)
        if not isinstance(value, str):
            raise RouteError(f"{where}: {what} is not text")
        _forbidden_chars(where, what, value)
    if password_known and bool(route.username) != bool(route.password):
        given, missing = ("username", "password") if route.username else ("password", "username")
        raise RouteError(f"{where}: a {given} without a {missing} is not allowed "
                         "(give both to log in, or neither)")
    return replace(route, domain=domain, host=host)


def check_route_target(route: Route, *, local_domains: Iterable[str], own_names: Iterable[str],
                       own_ports: Iterable[int]) -> None:
    """Refuse a cleaned route for a local domain or one that points back at ISMail."""
    where = f"route {route.domain}"
    if route.domain in norm_domains(local_domains):
        raise RouteError(f"{where}: {route.domain} is a local domain; its mail is delivered "
                         "here, so it cannot have a route")
    if is_own_host(route.host, own_names) and route.port in set(own_ports):
        raise RouteError(f"{where}: {route.host}:{route.port} would deliver to ISMail itself: "
                         "a loop (that host is this server and it listens on that port)")


def clean_relay(relay: RelayDomain) -> RelayDomain:
    """The relay domain normalised (recipients lowercased, each once); RouteError otherwise."""
    if not isinstance(relay, RelayDomain):
        raise RouteError(f"expected a RelayDomain, not {type(relay).__name__}")
    domain = clean_domain(relay.domain, "relay domain")
    where = f"relay domain {domain}"
    if (not isinstance(relay.recipients, (list, tuple))
            or not all(isinstance(r, str) for r in relay.recipients)):
        raise RouteError(f"{where}: recipients must be a list of addresses")
    recipients: dict[str, None] = {}
    foreign: list[str] = []
    for raw in relay.recipients:
        _forbidden_chars(where, "a recipient", raw)
        addr = raw.strip().lower()
        local, _, dom = addr.rpartition("@")
        addr = f"{local}@{dom.removesuffix('.')}"
        problem = address_problem(addr)
        if problem:
            raise RouteError(f"{where}: recipient {raw!r} {problem}")
        if addr.rpartition("@")[2] != domain:
            foreign.append(raw.strip())
        recipients[addr] = None
    if foreign:
        raise RouteError(f"{where}: recipients must be addresses of {domain}; "
                         f"not {', '.join(foreign)}")
    hours = relay.lifetime_hours
    if hours is not None and (type(hours) is not int or not 1 <= hours <= MAX_LIFETIME_HOURS):
        raise RouteError(f"{where}: lifetime_hours {hours!r} is not valid (allowed "
                         f"1-{MAX_LIFETIME_HOURS}, or none to use retry.lifetime_hours)")
    return RelayDomain(domain, tuple(recipients), hours)


def check_relay_target(relay: RelayDomain, *, local_domains: Iterable[str]) -> None:
    if relay.domain in norm_domains(local_domains):
        raise RouteError(f"relay domain {relay.domain}: {relay.domain} is a local domain; "
                         "ISMail is its final destination, so it cannot also be relayed")


def norm_domains(domains: Iterable[str]) -> set[str]:
    return {d.strip().lower().removesuffix(".") for d in domains}


def problems_of(table: _Table, local_domains: Iterable[str]) -> list[str]:
    """What is wrong with a stored table now (a domain made local later, a lost password)."""
    domains = norm_domains(local_domains)
    out = [f"route {d}: {d} is now a local domain; the route is not used for its mail"
           for d in sorted(table.routes) if d in domains]
    out += [f"relay domain {d}: {d} is now a local domain; its mail is delivered here, "
            "not relayed" for d in sorted(table.relays) if d in domains]
    out += [f"route {d}: the stored password {why}; the route logs in without one until then"
            for d, why in sorted(table.unreadable.items())]
    return out


# ----- the file -----
def parse(raw: bytes) -> _Table:
    doc = document(raw, FORMAT_VERSION)
    table = _Table(top_extras={k: v for k, v in doc.items() if k not in _TOP_KEYS})
    try:
        for dom, entry in _section(doc, "routes", "route").items():
            table.routes[dom] = _parse_route(table, dom, entry)
        for dom, entry in _section(doc, "relay_domains", "relay domain").items():
            recipients = entry.get("recipients", [])
            if not isinstance(recipients, list):
                raise RouteError(f"relay domain {dom}: recipients must be a list of addresses")
            table.put_relay(clean_relay(RelayDomain(dom, tuple(recipients),
                                                    entry.get("lifetime_hours"))))
            table.extras[("relay_domains", dom)] = _extras(entry, _RELAY_KEYS)
    except RouteError as e:
        raise Corrupt(str(e)) from None
    return table


def _section(doc: dict[str, Any], name: str, kind: str) -> dict[str, dict[str, Any]]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise Corrupt(f"'{name}' is not an object")
    out: dict[str, dict[str, Any]] = {}
    for key, entry in value.items():
        dom = clean_domain(key, kind)
        if dom in out:
            raise Corrupt(f"'{name}' lists {dom} twice")
        if not isinstance(entry, dict):
            raise Corrupt(f"{kind} {dom} is not an object")
        out[dom] = entry
    return out


def _parse_route(table: _Table, dom: str, entry: dict[str, Any]) -> Route:
    stored = entry.get("password", "")
    if not isinstance(stored, str):
        raise RouteError(f"route {dom}: password is not text")
    try:
        clear = unprotect(stored)
    except (ValueError, OSError) as e:  # ProtectError, or a blob Windows opens to non-UTF-8
        clear = ""
        table.unreadable[dom] = (str(e) if isinstance(e, ProtectError)
                                 else "could not be unprotected; enter the password again")
    table.stored[dom] = (clear, stored)
    table.extras[("routes", dom)] = _extras(entry, _ROUTE_KEYS)
    defaults = Route(dom, "")
    return clean_route(Route(dom, entry.get("host"), entry.get("port", defaults.port),
                             entry.get("tls", defaults.tls), entry.get("username", ""), clear),
                       password_known=dom not in table.unreadable)


def _extras(entry: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in known}
