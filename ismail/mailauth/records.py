"""The DNS records a local domain needs, and a check of what is published.

``records_for`` says what to publish, as ``Record`` objects (owner name, type, value, and
one line saying why): MX (mail for the domain comes to this server), the server name's
A/AAAA for each known public address, SPF (who may send as the domain), each DKIM
selector's public key, DMARC (start with p=none and read the reports), and for each
public sending address the PTR record its owner (the ISP or host) must set.
``zone_lines`` writes them as a zone file holds them, each under a ``;`` comment.

``check`` looks each one up with ISMail's own resolver (nothing else: the answer is what
this server's DNS servers say) and returns one ``Verdict`` per record, in order, whose
``problem`` says in plain words what is missing or different (see ``check``).  A look-up
that fails for now (time-out, SERVFAIL) says "could not look up: ..."; it is never
reported as missing.

The SPF check is a reasonable evaluation, not RFC 7208's check_host (``spf_syntax``'s
``follow`` and ``evaluate``): it follows include: and redirect= to count look-ups (§4.6.4)
and to see whether this server's addresses get "pass" through ip4/ip6, a, mx, ptr and
include; a term with a macro (%{i}...) needs a real message and is taken as not matching.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field

from ..queue.dns import DNSError, NXDomain, Resolver, normalize_name
from .spf_syntax import PermError, evaluate, follow, is_spf, parse

TTL = 3600
KINDS = ("MX", "A", "SPF", "DKIM", "DMARC", "PTR")


@dataclass
class Record:
    """One record to publish.  Names are lowercase without the final dot; ``value`` is what
    goes into a DNS provider's form: MX "10 host", TXT unquoted and whole, PTR a host name."""

    name: str   # owner name: "example.com", "s1._domainkey.example.com", "7.2.0.192.in-addr.arpa"
    type: str   # "MX", "TXT", "A", "AAAA" or "PTR"
    value: str
    why: str    # one line for a person
    # What check() must find: SPF, the addresses that must get "pass" (a host name: its
    # addresses) and "include:DOMAIN" that must be reached; PTR, the address.
    expect: tuple[str, ...] = ()
    kind: str = ""  # one of KINDS (SPF, DKIM and DMARC are all TXT); worked out when empty

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = ("SPF" if is_spf(self.value) else "DMARC" if self.name.startswith("_dmarc.")
                         else "DKIM" if "._domainkey." in self.name else "A" if self.type == "AAAA"
                         else self.type)


@dataclass
class Verdict:
    record: Record
    ok: bool
    found: list[str] = field(default_factory=list)  # what DNS holds there (the relevant records)
    problem: str = ""  # "" when ok


class _Problem(Exception):
    """A finding that ends the check of one record; its text is the verdict's problem."""


# -- what to publish -----------------------------------------------------------------------------

def records_for(domain: str, *, server_name: str, public_ips: list[str], smarthost: str | None,
                smarthost_exclusive: bool, spf_include: str | None, dkim: list[tuple[str, str]],
                postmaster: str) -> list[Record]:
    """The records ``domain`` needs.  ValueError names a bad argument.

    server_name: this server's host name (the MX target; what the PTRs should say).
    public_ips: this server's public addresses, if known ([] when not): they get A/AAAA
        records, ip4:/ip6: terms in SPF (instead of "a": no look-up, and the domain's own
        A is often a web host) and PTR advice.
    smarthost, smarthost_exclusive: the SmartHost's host name if one is used, and whether
        all mail leaves through it (then this server sends nothing itself: no ip4/ip6 in
        SPF, no PTR advice).
    spf_include: the SmartHost provider's SPF domain ("spf.protection.outlook.com"), put
        in SPF as include:; without one an exclusive SmartHost gets "v=spf1 mx a ~all"
        and a why that asks for it.
    dkim: (selector, "v=DKIM1; k=rsa; p=...") for each key, old ones included.
    postmaster: the address DMARC reports go to (rua=mailto:).
    """
    domain, server = _name(domain, "domain"), _name(server_name, "server_name")
    exclusive = smarthost_exclusive and bool(smarthost)
    ips = []
    for ip in public_ips:
        try:
            ips.append(ipaddress.ip_address(ip.strip()))
        except ValueError:
            raise ValueError(f"public_ips: {ip!r} is not an IP address") from None
    out = [Record(domain, "MX", f"10 {server}", f"mail for {domain} is delivered to this server "
                  f"({server}), which must be reachable on port 25 from the internet")]
    for ip in ips:
        out.append(Record(server, "A" if ip.version == 4 else "AAAA", str(ip),
                          f"{server} (the MX host) must lead to this server's address {ip}"))
    out.append(_spf(domain, server, ips, smarthost, exclusive, spf_include))
    for selector, value in dkim:
        out.append(Record(f"{selector}._domainkey.{domain}", "TXT", value,
                          f"DKIM: the public key receivers check ISMail's signatures with (selector "
                          f"{selector}); keep an old key published until no mail signed with it is on its way"))
    out.append(Record(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=none; rua=mailto:{postmaster}",
                      f"DMARC: start with p=none and read the reports sent to {postmaster}; move to "
                      "quarantine or reject once all your mail passes SPF or DKIM"))
    for ip in ([] if exclusive else ips):
        out.append(Record(ip.reverse_pointer, "PTR", server, f"reverse DNS of {ip}: ask your ISP or "
                          f"host to set it to {server}; many receivers reject mail from addresses "
                          "without a matching PTR", expect=(str(ip),)))
    return out


def _spf(domain: str, server: str, ips: list, smarthost: str | None, exclusive: bool,
         include: str | None) -> Record:
    terms, expect = ["mx"], []
    if not exclusive:
        terms += [f"ip{ip.version}:{ip}" for ip in ips] or ["a"]
        expect += [str(ip) for ip in ips] or [server]
    if include and smarthost:  # the include is the SmartHost provider's: without one, none
        include = _name(include, "spf_include")
        terms.append(f"include:{include}")
        expect.append(f"include:{include}")
    why = f"SPF: the servers that may send mail from {domain} (this one as its MX host"
    why += ", and by address)" if ips and not exclusive else ")"
    if smarthost and include:
        why += f"; {smarthost} (your SmartHost) is covered by include:{include}"
    elif exclusive:
        terms[1:] = ["a"]
        why = (f"SPF: mail from {domain} leaves through {smarthost} (your SmartHost): add its "
               "provider's include: before ~all (ask them, or enter it as the SmartHost's SPF include)")
    elif smarthost:
        why += f"; mail sent through {smarthost} also needs its provider's include: before ~all"
    return Record(domain, "TXT", "v=spf1 " + " ".join(terms) + " ~all", why + "; others soft-fail",
                  expect=tuple(expect), kind="SPF")


def _name(text: str, what: str) -> str:
    try:
        return normalize_name(text)
    except DNSError as e:
        raise ValueError(f"{what}: {e}") from None


def zone_lines(records: list[Record], ttl: int = TTL) -> list[str]:
    """Two lines per record: ``; why`` and ``name. TTL IN TYPE value``.  TXT values are quoted
    and cut into strings of at most 255 bytes (one record: receivers join them); a quote or
    backslash is escaped, other bytes outside printable ASCII written as \\DDD."""
    lines = []
    for r in records:
        if r.type == "TXT":
            data = r.value.encode("utf-8")
            value = " ".join(_quoted(data[i:i + 255]) for i in range(0, len(data), 255)) or '""'
        elif r.type in ("MX", "PTR", "CNAME"):
            value = r.value if r.value.endswith(".") else r.value + "."
        else:
            value = r.value
        lines += [f"; {r.why}", f"{r.name}. {ttl} IN {r.type} {value}"]
    return lines


def _quoted(chunk: bytes) -> str:
    return '"' + "".join("\\" + chr(b) if b in b'"\\' else chr(b) if 0x20 <= b < 0x7f else f"\\{b:03d}"
                         for b in chunk) + '"'


def parse_spf(text: str) -> list[tuple[str, str, str]]:
    """The terms of an SPF record as (qualifier, mechanism, argument), modifiers as ("=", name,
    value); ValueError on a syntax error.  ``spf_syntax.parse`` gives the full detail."""
    record = parse(text)
    return [(d.qualifier, d.mechanism, d.text.split(":", 1)[1] if ":" in d.text else "")
            for d in record.directives] + [("=", m.name, m.value) for m in record.modifiers]


# -- the check -----------------------------------------------------------------------------------

def check(records: list[Record], resolver: Resolver) -> list[Verdict]:
    """One verdict per record, in the same order.  The problems, in these words:

    all     "missing: NAME does not exist in DNS", "could not look up: REASON"
    MX      "missing: no MX record for D ...", "D publishes a null MX ...", "its MX host(s) point
            elsewhere: H - not SERVER ..."
    A/AAAA  "missing: no A record for NAME ...", "NAME points to X, not to IP"
    SPF     "missing: no SPF record ...", "N SPF records: ... (PermError, RFC 7208 §4.5) ...",
            "syntax error in the SPF record: ...", "... has no SPF record (named by include: ...)",
            "the SPF record needs more than 10 DNS look-ups ...", "+all allows anyone ...",
            "it does not name this server: IP gets softfail (from ~all) ...",
            "it does not include X ...", "cannot tell whether it names this server: ..."
    DKIM    "missing: no DKIM record ...", "N TXT records at NAME ...", "syntax error in the DKIM
            record: ...", "a different key is published ...", "the key is revoked ..."
    DMARC   "missing: no DMARC record ...", "the TXT record at NAME does not start with v=DMARC1
            ...", "N DMARC records: ...", "syntax error in the DMARC record: ..."
    PTR     "missing: no PTR record for IP ...", "IP points back to H, not SERVER ...",
            "not forward-confirmed: SERVER does not resolve to IP ..."
    """
    out = []
    for r in records:
        test = _CHECKS.get(r.kind)
        found: list[str] = []
        try:
            if test is None:
                raise _Problem(f"not checked: ISMail does not check {r.kind or r.type} records")
            test(r, resolver, found)  # it adds what it finds to found, then raises _Problem or returns
            out.append(Verdict(r, True, found))
        except _Problem as e:
            out.append(Verdict(r, False, found, str(e)))
        except NXDomain:
            out.append(Verdict(r, False, found, f"missing: {r.name} does not exist in DNS"))
        except DNSError as e:  # DNSTemporaryError and the rest: not "missing"
            out.append(Verdict(r, False, found, f"could not look up: {e}"))
        except ValueError as e:  # a Record not made by records_for, e.g. an A record's bad address
            out.append(Verdict(r, False, found, f"cannot check this record: {e}"))
    return out


def _check_mx(r: Record, resolver: Resolver, found: list[str]) -> None:
    records = resolver.mx(r.name)
    found += [f"{mx.preference} {mx.host or '.'}" for mx in records]
    want = r.value.split()[-1].lower().rstrip(".")
    hosts = [mx.host for mx in records]
    if not hosts:
        raise _Problem(f"missing: no MX record for {r.name} (senders then try its address, if any)")
    if hosts == [""]:
        raise _Problem(f'{r.name} publishes a null MX ("0 ."): it says the domain receives no mail')
    if want not in hosts:
        raise _Problem(f"its MX host(s) point elsewhere: {', '.join(h for h in hosts if h)} - not {want}; "
                       f"mail for {r.name} does not come to this server")


def _check_address(r: Record, resolver: Resolver, found: list[str]) -> None:
    try:
        found += resolver.addresses(r.name)
    except NXDomain:
        raise _Problem(f"missing: no {r.type} record for {r.name} (the name does not exist)") from None
    want = ipaddress.ip_address(r.value)
    same_family = [a for a in found if ipaddress.ip_address(a).version == want.version]
    if not same_family:
        raise _Problem(f"missing: no {r.type} record for {r.name}")
    if want not in map(ipaddress.ip_address, same_family):
        raise _Problem(f"{r.name} points to {', '.join(same_family)}, not to {want}")


def _check_ptr(r: Record, resolver: Resolver, found: list[str]) -> None:
    ip = r.expect[0] if r.expect else _ip_of(r.name)
    want = r.value.lower().rstrip(".")
    ask = f"ask your ISP or host to set it to {want}"
    try:
        found += resolver.ptr(ip)
    except NXDomain:
        pass
    if not found:
        raise _Problem(f"missing: no PTR record for {ip}: {ask}")
    if want not in found:
        raise _Problem(f"{ip} points back to {', '.join(found)}, not {want}: {ask}")
    try:
        forward = resolver.addresses(want)
    except NXDomain:
        forward = []
    if ipaddress.ip_address(ip) not in map(ipaddress.ip_address, forward):
        raise _Problem(f"not forward-confirmed: {want} does not resolve to {ip} "
                       f"({'it resolves to ' + ', '.join(forward) if forward else 'it has no address'})")


def _ip_of(reverse_name: str) -> str:
    labels = reverse_name.lower().rstrip(".").split(".")
    if labels[-2:] == ["in-addr", "arpa"]:
        return ".".join(reversed(labels[:-2]))
    nibbles = "".join(reversed(labels[:-2]))
    return str(ipaddress.ip_address(":".join(nibbles[i:i + 4] for i in range(0, 32, 4))))


# -- SPF -----------------------------------------------------------------------------------------

def _check_spf(r: Record, resolver: Resolver, found: list[str]) -> None:
    texts = resolver.txt(r.name)
    spf = [t for t in texts if is_spf(t)]
    if not spf:
        raise _Problem(f"missing: no SPF record (a TXT record starting with v=spf1) at {r.name}")
    found += spf
    if len(spf) > 1:
        raise _Problem(f"{len(spf)} SPF records: receivers treat that as an error (PermError, RFC 7208 "
                       "§4.5) and check none of them; merge them into one")
    try:
        record = parse(spf[0])
    except ValueError as e:
        raise _Problem(f"syntax error in the SPF record: {e}") from None
    try:
        walk = follow(r.name, record, resolver)
        if walk.plus_all:
            raise _Problem(f"+all allows anyone at all to send as {r.name}" + (
                f" (in {walk.plus_all}'s record, which it includes)" if walk.plus_all != r.name else "")
                + ": end the record with ~all or -all")
        for want in r.expect:
            if want.startswith("include:"):
                if want[8:] not in walk.reached:
                    raise _Problem(f"it does not include {want[8:]} (your SmartHost provider's SPF): add "
                                   f"{want} before ~all")
                continue
            for ip in _sending_addresses(want, resolver):
                result, term = evaluate(ip, r.name, record, resolver)
                if result != "pass":
                    raise _Problem(f"it does not name this server: {ip} gets {result} ({term}); add mx "
                                   f"(this server is the MX host) or ip{ipaddress.ip_address(ip).version}:{ip}")
    except PermError as e:
        raise _Problem(str(e)) from None


def _sending_addresses(want: str, resolver: Resolver) -> list[str]:
    try:
        return [str(ipaddress.ip_address(want))]
    except ValueError:
        pass
    try:
        addresses = resolver.addresses(want)
    except NXDomain:
        addresses = []
    if not addresses:
        raise _Problem(f"cannot tell whether it names this server: {want} has no address in DNS")
    return addresses


# -- DKIM and DMARC ------------------------------------------------------------------------------

_TAG = re.compile(r"[ \t\r\n]*([A-Za-z][A-Za-z0-9_]*)[ \t\r\n]*=[ \t\r\n]*([\x21-\x3a\x3c-\x7e \t\r\n]*?)[ \t\r\n]*\Z")


def tags(text: str) -> dict[str, str]:
    """A DKIM tag-list (RFC 6376 §3.2, also DMARC's): "v=DKIM1; k=rsa; p=..." -> {"v": ..., ...};
    ValueError on a part that is not tag=value or on a tag given twice."""
    out: dict[str, str] = {}
    parts = text.split(";")
    for i, part in enumerate(parts):
        if not part.strip() and i == len(parts) - 1:
            continue  # a trailing ";" is allowed
        found = _TAG.match(part)
        if not found:
            raise ValueError(f"{part.strip()!r} is not a tag=value pair")
        if found.group(1) in out:
            raise ValueError(f"the tag {found.group(1)}= appears twice")
        out[found.group(1)] = found.group(2)
    return out


def _check_dkim(r: Record, resolver: Resolver, found: list[str]) -> None:
    try:
        found += resolver.txt(r.name)
    except NXDomain:
        raise _Problem(f"missing: no DKIM record at {r.name} (no such name in DNS)") from None
    if not found:
        raise _Problem(f"missing: no DKIM record (TXT) at {r.name}")
    if len(found) > 1:
        raise _Problem(f"{len(found)} TXT records at {r.name}: the DKIM key must be the only one there "
                       "(receivers pick one at random, RFC 6376 §3.6.2.2)")
    try:
        key = _dkim_key(found[0])
    except ValueError as e:
        raise _Problem(f"syntax error in the DKIM record: {e}") from None
    if not key:
        raise _Problem("the key is revoked (p= is empty): mail signed with this selector fails DKIM")
    if key != _dkim_key(r.value):
        raise _Problem(f"a different key is published: mail signed with selector {r.name.split('.')[0]} "
                       "would fail DKIM; publish the value shown here")


def _dkim_key(text: str) -> str:
    """The p= value of a DKIM key record, whitespace removed; ValueError naming what is wrong."""
    found = tags(text)
    if "v" in found and (next(iter(found)) != "v" or found["v"] != "DKIM1"):
        raise ValueError("v=DKIM1 must come first when v= is there")
    if found.get("k", "rsa") != "rsa":
        raise ValueError(f"k={found['k']}: not an RSA key (ISMail signs with RSA)")
    if "h" in found and "sha256" not in re.split(r"[\s:]+", found["h"]):
        raise ValueError(f"h={found['h']} leaves out sha256, which ISMail signs with")
    if "p" not in found:
        raise ValueError("no p= tag (the public key)")
    key = re.sub(r"[ \t\r\n]", "", found["p"])
    try:
        base64.b64decode(key, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("p= is not base64") from None
    return key


def _check_dmarc(r: Record, resolver: Resolver, found: list[str]) -> None:
    try:
        texts = resolver.txt(r.name)
    except NXDomain:
        texts = []
    found += [t for t in texts if re.match(r"v[ \t]*=[ \t]*DMARC1[ \t]*(;|\Z)", t)]
    if not texts:
        raise _Problem(f"missing: no DMARC record (a TXT record starting with v=DMARC1) at {r.name}")
    if not found:
        found += texts
        raise _Problem(f"the TXT record at {r.name} does not start with v=DMARC1, so receivers ignore it")
    if len(found) > 1:
        raise _Problem(f"{len(found)} DMARC records: receivers ignore them all (RFC 7489 §6.6.3); keep one")
    try:
        policy = tags(found[0])
        for tag in ("p", "sp"):
            if tag in policy and policy[tag].lower() not in ("none", "quarantine", "reject"):
                raise ValueError(f"{tag}={policy[tag]}: {tag}= must be none, quarantine or reject")
        if "p" not in policy:
            raise ValueError("no p= tag (the policy: none, quarantine or reject)")
        if not re.fullmatch(r"[0-9]{1,3}", policy.get("pct", "100")) or int(policy.get("pct", "100")) > 100:
            raise ValueError(f"pct={policy['pct']}: pct= is a whole number from 0 to 100")
    except ValueError as e:
        raise _Problem(f"syntax error in the DMARC record: {e}") from None


_CHECKS = {"MX": _check_mx, "A": _check_address, "SPF": _check_spf, "DKIM": _check_dkim,
           "DMARC": _check_dmarc, "PTR": _check_ptr}
