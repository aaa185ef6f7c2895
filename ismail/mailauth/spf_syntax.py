"""The syntax of an SPF record (RFC 7208 §4.5, §4.6, §5, §6, §7.1): text in, terms out.

``parse("v=spf1 mx ip4:192.0.2.0/24 include:_spf.example.net ~all")`` gives an
``SPFRecord`` whose ``directives`` keep their order (a check_host evaluation walks them
first to last) and whose ``modifiers`` (redirect=, exp=, and unknown ones, which
receivers ignore) are kept apart.  Parsing touches no DNS and expands no macros: that
is for whoever evaluates the record.

What is checked, as the ABNF of RFC 7208 says:
  * the version "v=spf1" first, terms separated by spaces (a tab is not a separator);
  * a directive: an optional qualifier (+ - ~ ?), then one of the eight mechanisms, with
    the argument that mechanism takes: a domain-spec (include, exists, and optionally
    a, mx, ptr), an address (ip4, ip6), a CIDR prefix length (a, mx: "/24", "//64",
    "/24//64"; ip4 up to 32, ip6 up to 128; no leading zeros);
  * a domain-spec: a macro-string (visible ASCII; % only as a valid macro: %{s}, %{d2r},
    %{l-}, %%, %_, %-) that ends in a top-level label (".com") or in a macro;
  * a modifier: name "=" macro-string; redirect and exp need a domain-spec and may
    appear at most once each (§6).
Names of mechanisms, modifiers and the version are case-insensitive (RFC 5234 strings).
A syntax error is a ``ValueError`` whose message names the term and what is wrong.

The end of the module follows a record through DNS, for the DNS records assistant until a
full check_host exists: ``record_of`` fetches the one SPF record of a domain, ``follow``
walks include: and redirect= counting look-ups (at most 10, §4.6.4), and ``evaluate``
says whether an address gets "pass": ip4/ip6, a, mx, ptr, include and redirect are
evaluated; a term with a macro needs the message (sender, HELO) and counts as no match.
Anything that makes a receiver's evaluation a PermError raises ``PermError``; DNS
time-outs raise the resolver's DNSTemporaryError.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from ..queue.dns import NXDomain, Resolver

MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
# RFC 7208 §4.6.4: the terms that cost a DNS look-up, at most 10 per check_host evaluation.
LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists", "redirect")
MAX_LOOKUPS = 10

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_MACRO = re.compile(r"%(?:\{[slodiphcrtvSLODIPHCRTV][0-9]*[rR]?[-.+,/_=]*\}|[%_-])")
_TOPLABEL = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")
_DUAL_CIDR = re.compile(r"(?P<arg>.*?)(?:/(?P<v4>[0-9]+))?(?://(?P<v6>[0-9]+))?\Z", re.S)


@dataclass(frozen=True)
class Directive:
    """One mechanism with its qualifier: ``~all``, ``mx/24``, ``include:_spf.example.net``."""

    qualifier: str          # "+", "-", "~" or "?"; "+" when none was written
    mechanism: str          # one of MECHANISMS, lowercased
    argument: str = ""      # the domain-spec (macros unexpanded) or the ip4/ip6 address; "" if none
    cidr4: int | None = None  # a, mx, ip4: the prefix length written, None if none
    cidr6: int | None = None  # a, mx, ip6
    text: str = ""          # the term as written, for messages

    @property
    def result(self) -> str:
        """What a match gives: pass, fail, softfail or neutral."""
        return QUALIFIERS[self.qualifier]

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """ip4/ip6: the network the term names (host bits ignored, as §5.6 says)."""
        if self.mechanism == "ip4":
            return ipaddress.IPv4Network(f"{self.argument}/{32 if self.cidr4 is None else self.cidr4}", strict=False)
        if self.mechanism == "ip6":
            return ipaddress.IPv6Network(f"{self.argument}/{128 if self.cidr6 is None else self.cidr6}", strict=False)
        raise ValueError(f"{self.text!r} is not an ip4 or ip6 mechanism")


@dataclass(frozen=True)
class Modifier:
    name: str   # lowercased: "redirect", "exp", or an unknown one (ignored by receivers)
    value: str  # a macro-string (for redirect/exp a checked domain-spec)


@dataclass(frozen=True)
class SPFRecord:
    directives: tuple[Directive, ...]
    modifiers: tuple[Modifier, ...]

    def modifier(self, name: str) -> str | None:
        return next((m.value for m in self.modifiers if m.name == name), None)

    @property
    def redirect(self) -> str | None:
        """The redirect= domain, or None; a record with an "all" mechanism never follows it (§6.1)."""
        return None if any(d.mechanism == "all" for d in self.directives) else self.modifier("redirect")

    def lookups(self) -> int:
        """The DNS-querying terms of this record alone (§4.6.4), includes not followed."""
        return sum(d.mechanism in LOOKUP_TERMS for d in self.directives) + (self.redirect is not None)


def is_spf(text: str) -> bool:
    """Whether a TXT record is an SPF record at all: "v=spf1" alone or followed by a space (§4.5)."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def parse(text: str) -> SPFRecord:
    """The terms of an SPF record; ValueError naming the term on a syntax error."""
    if not is_spf(text):
        raise ValueError(f"it does not start with v=spf1 (it starts {text[:12]!r})")
    directives: list[Directive] = []
    modifiers: list[Modifier] = []
    for term in text[6:].split(" "):
        if not term:
            continue  # several spaces in a row, or trailing spaces
        bad = next((c for c in term if not "\x21" <= c <= "\x7e"), None)
        if bad is not None:
            raise ValueError(f"{term!r} holds {bad!r}: only visible ASCII characters are allowed, "
                             "and terms are separated by spaces")
        found = _NAME.match(term)
        if found and term[found.end():found.end() + 1] == "=":
            modifiers.append(_modifier(term, found.group().lower(), term[found.end() + 1:], modifiers))
        else:
            directives.append(_directive(term))
    return SPFRecord(tuple(directives), tuple(modifiers))


def _modifier(term: str, name: str, value: str, before: list[Modifier]) -> Modifier:
    if name in ("redirect", "exp"):
        if not value:
            raise ValueError(f"{term!r}: {name}= needs a domain")
        check_domain_spec(value, term)
        if any(m.name == name for m in before):
            raise ValueError(f"{name}= appears more than once (it may appear once, RFC 7208 §6)")
    else:
        check_macro_string(value, term)
    return Modifier(name, value)


def _directive(term: str) -> Directive:
    qualifier, body = ("+", term) if term[0] not in QUALIFIERS else (term[0], term[1:])
    found = _NAME.match(body)
    if not found and body is not term:
        raise ValueError(f"{term!r}: one qualifier ({term[0]}) and then a mechanism name, not {body[:1]!r}")
    if not found:
        raise ValueError(f"{term!r}: {term[0]!r} is not a qualifier (+, -, ~ or ?) nor the start of a mechanism")
    name, rest = found.group().lower(), body[found.end():]
    if name not in MECHANISMS or rest[:1] not in ("", ":", "/"):
        raise ValueError(f"{term!r} is not an SPF mechanism (all, include, a, mx, ptr, ip4, ip6, exists)"
                         " nor a modifier (name=value)")
    if name == "all":
        if rest:
            raise ValueError(f"{term!r}: all takes no argument")
        return Directive(qualifier, name, text=term)
    if name in ("ip4", "ip6"):
        return _ip_directive(term, qualifier, name, rest)
    # include, exists and ptr take no prefix length: a "/" there is part of the domain-spec.
    parts = _DUAL_CIDR.match(rest).groupdict() if name in ("a", "mx") else {"arg": rest}
    arg = parts["arg"]
    if arg and not arg.startswith(":"):
        raise ValueError(f"{term!r}: a domain follows {name} after a colon ({name}:example.com)")
    arg = arg[1:]
    if name in ("include", "exists") and not arg:
        raise ValueError(f"{term!r} needs an argument: {name}:DOMAIN")
    if arg or rest.startswith(":"):
        check_domain_spec(arg, term)
    return Directive(qualifier, name, arg, _cidr(parts.get("v4"), 32, term), _cidr(parts.get("v6"), 128, term),
                     text=term)


def _ip_directive(term: str, qualifier: str, name: str, rest: str) -> Directive:
    if not rest.startswith(":") or len(rest) < 2:
        raise ValueError(f"{term!r} needs an argument: {name}:ADDRESS or {name}:ADDRESS/LENGTH")
    address, slash, length = rest[1:].partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{term!r}: {address!r} is not an address (an {name} mechanism needs an "
                         f"{'IPv4' if name == 'ip4' else 'IPv6'} address)") from None
    if ip.version != (4 if name == "ip4" else 6):
        raise ValueError(f"{term!r}: {address} is an IPv{ip.version} address, which does not match "
                         f"{name} (write ip{ip.version}:)")
    cidr = _cidr(length if slash else None, 32 if name == "ip4" else 128, term)
    if slash and cidr is None:
        raise ValueError(f"{term!r}: the prefix length after / is empty")
    return Directive(qualifier, name, address, cidr if name == "ip4" else None,
                     cidr if name == "ip6" else None, text=term)


def _cidr(digits: str | None, limit: int, term: str) -> int | None:
    if not digits:
        return None
    if len(digits) > 1 and digits[0] == "0" or int(digits) > limit:
        raise ValueError(f"{term!r}: /{digits} is not a prefix length (0 to {limit}, no leading zero)")
    return int(digits)


def check_macro_string(text: str, term: str = "") -> None:
    """ValueError unless every % in text starts a valid macro (§7.1)."""
    at = text.find("%")
    while at >= 0:
        found = _MACRO.match(text, at)
        if not found:
            raise ValueError(f"{term or text!r}: {text[at:at + 8]!r} is not a valid macro (%{{s}}, %{{d}}, "
                             "%{l}, ..., %%, %_ or %-; a literal % is written %%)")
        at = text.find("%", found.end())


def check_domain_spec(text: str, term: str = "") -> None:
    """ValueError unless text is a domain-spec: a macro-string ending in a top label or a macro."""
    check_macro_string(text, term)
    if any(found.end() == len(text) for found in _MACRO.finditer(text)):
        return
    body = text[:-1] if text.endswith(".") else text
    dot = body.rfind(".")
    if dot <= 0 or not _TOPLABEL.fullmatch(body, dot + 1):
        raise ValueError(f"{term or text!r}: {text!r} is not a domain name (it must end in a top-level "
                         "label such as .com, or in a macro)")


def has_macros(text: str) -> bool:
    """Whether a domain-spec needs macro expansion (then only a real evaluation can follow it)."""
    return "%" in text


# -- following a record through DNS --------------------------------------------------------------

class PermError(ValueError):
    """A record receivers would answer with PermError; str() says why, for a person."""


@dataclass
class Walk:
    lookups: int = 0                             # DNS-querying terms, through includes and redirects
    reached: set[str] = field(default_factory=set)  # the domains include: and redirect= name
    plus_all: str = ""                           # the first domain whose record has +all


def record_of(domain: str, resolver: Resolver, named_by: str = "") -> SPFRecord:
    """The one SPF record of domain; PermError if it has none, several or a broken one."""
    try:
        texts = [t for t in resolver.txt(domain) if is_spf(t)]
    except NXDomain:
        texts = []
    by = f" (named by {named_by})" if named_by else ""
    if len(texts) != 1:
        raise PermError(f"{domain} has {len(texts) or 'no'} SPF record{'s' * (len(texts) > 1)}{by}: "
                        "receivers treat that as an error (PermError)")
    try:
        return parse(texts[0])
    except ValueError as e:
        raise PermError(f"syntax error in the SPF record of {domain}{by}: {e}") from None


def follow(domain: str, record: SPFRecord, resolver: Resolver, walk: Walk | None = None) -> Walk:
    """Count the look-ups of record and of every record its include: and redirect= name."""
    walk = Walk() if walk is None else walk
    walk.lookups += record.lookups()
    if walk.lookups > MAX_LOOKUPS:
        raise PermError(f"the SPF record needs more than {MAX_LOOKUPS} DNS look-ups ({walk.lookups} counted "
                        f"when {domain}'s record is reached; include:, a, mx, ptr, exists and redirect= "
                        "count, through every include: and redirect=): receivers give up with a "
                        "PermError (RFC 7208 §4.6.4)")
    if any(d.mechanism == "all" and d.qualifier == "+" for d in record.directives):
        walk.plus_all = walk.plus_all or domain
    targets = [("include:", d.argument) for d in record.directives if d.mechanism == "include"]
    targets += [("redirect=", record.redirect)] if record.redirect else []
    for term, target in targets:
        target = target.lower().rstrip(".")
        walk.reached.add(target)
        if not has_macros(target):  # each costs a look-up, so a loop ends at the limit
            follow(target, record_of(target, resolver, f"{term}{target} in {domain}'s record"), resolver, walk)
    return walk


def evaluate(ip: str, domain: str, record: SPFRecord, resolver: Resolver, depth: int = 0) -> tuple[str, str]:
    """(result, the term that gave it) for mail from ip, record being domain's SPF record."""
    address = ipaddress.ip_address(ip)
    for d in record.directives:
        if _matches(address, domain, d, resolver, depth):
            return d.result, f"from {d.text}"
    if record.redirect and not has_macros(record.redirect) and depth < MAX_LOOKUPS:
        inner = record_of(record.redirect, resolver, f"redirect={record.redirect}")
        return evaluate(ip, record.redirect, inner, resolver, depth + 1)
    return "neutral", "no term matches it"


def _matches(ip, domain: str, d: Directive, resolver: Resolver, depth: int) -> bool:
    target = (d.argument or domain).lower().rstrip(".")
    if d.mechanism == "all":
        return True
    if d.mechanism in ("ip4", "ip6"):
        return ip.version == d.network().version and ip in d.network()
    if has_macros(target) or depth >= MAX_LOOKUPS:
        return False
    if d.mechanism == "include":
        inner = record_of(target, resolver, f"include:{target}")
        return evaluate(str(ip), target, inner, resolver, depth + 1)[0] == "pass"
    if d.mechanism == "ptr":  # validated names (forward-confirmed) in target or below it, §5.5
        names = [n for n in _or_none(resolver.ptr, str(ip)) if n == target or n.endswith("." + target)]
        return any(ip in map(ipaddress.ip_address, _or_none(resolver.addresses, n)) for n in names[:10])
    if d.mechanism == "exists":
        return bool(_or_none(resolver.addresses, target))
    hosts = [target] if d.mechanism == "a" else [mx.host for mx in _or_none(resolver.mx, target) if mx.host]
    length = d.cidr4 if ip.version == 4 else d.cidr6
    for host in hosts[:10]:
        for address in map(ipaddress.ip_address, _or_none(resolver.addresses, host)):
            prefix = address.max_prefixlen if length is None else length
            if address.version == ip.version and ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
                return True
    return False


def _or_none(ask, name: str) -> list:
    """A look-up where "no such domain" means no records (a void look-up, §4.6.4)."""
    try:
        return ask(name)
    except NXDomain:
        return []
