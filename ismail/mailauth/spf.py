"""SPF: may this client send mail for this domain?  RFC 7208's check_host(), complete.

The SMTP session asks at MAIL FROM: ``check_mail_from(ip, mail_from, helo, resolver)``
gives an ``SpfResult`` (none, neutral, pass, fail, softfail, temperror or permerror) with
the domain checked, the explanation for a fail and a short reason for the log.

Model: one ``_Check`` per question holds what every record on the way shares - the
client, the macro context, the DNS budget (10 look-up terms, 2 void look-ups, a time
limit) - and ``evaluate(domain)`` walks a record's directives first to last.  include:
evaluates the named domain with the same budget (a nested call; each one first spends a
look-up, so nesting stops at the limit); redirect= replaces the domain in a loop.  An
error anywhere ends the whole check: ``_PermError`` and ``_TempError`` carry the reason
up to ``check_host``.

Records are read with ``spf_syntax.parse`` (the structural parser the DNS records
assistant uses); the stricter rules that only matter here (c, r, t letters outside
explanations, zero part counts) are checked before a record's first term runs, so a
syntax error anywhere in it is a PermError (§4.6).  Choices where the RFC leaves room:

  * a name a macro makes that DNS cannot carry (an empty or over-long label) matches
    nothing, as if it did not exist; for include: that is "none", so PermError;
  * a void look-up (NXDOMAIN or no records) counts once per term, for the name the term
    asks about (a, mx, ptr, exists); the address look-ups of MX hosts and PTR names do not,
    nor does the exp= look-up (§4.6.4: the limit is on terms);
  * more than 10 MX records is PermError (§4.6.4); of PTR names the first 10 are used;
  * a DNS error while validating a PTR name skips that name; one on the PTR look-up itself
    makes ptr not match (§5.5).
"""
from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass

from ..queue.dns import DNSError, DNSTemporaryError, NXDomain
from . import spf_macro
from .spf_macro import MacroContext, MacroError
from .spf_syntax import Directive, SPFRecord, is_spf, parse

log = logging.getLogger("ismail.spf")

MAX_LOOKUPS = 10      # §4.6.4: include, a, mx, ptr, exists and redirect= per check
MAX_VOID_LOOKUPS = 2  # §4.6.4: look-ups answered NXDOMAIN or with no records
MAX_MX_NAMES = 10     # §4.6.4: more MX records than this is PermError
MAX_PTR_NAMES = 10    # §4.6.4: PTR names beyond these are ignored
TIME_LIMIT = 20.0     # §4.6.4: at least 20 seconds, then TempError
DEFAULT_EXPLANATION = "%{o} does not allow %{c} to send its mail (SPF)"


@dataclass(frozen=True)
class SpfResult:
    result: str             # "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"
    domain: str             # the domain that was checked
    explanation: str = ""   # for fail: the exp= text (macro-expanded) or a default
    reason: str = ""        # short human/log text: the mechanism matched or the error


class _PermError(Exception):
    """The record is broken: the check ends with permerror; str() is the reason."""


class _TempError(Exception):
    """DNS failed for now: the check ends with temperror."""


class _TimeUp(_TempError):
    """The whole check took longer than its time limit (never skipped like a DNS error)."""


def check_mail_from(ip: str, mail_from: str, helo: str, resolver, *, receiver: str = "unknown",
                    default_explanation: str = DEFAULT_EXPLANATION) -> SpfResult:
    """The SPF result for MAIL FROM:<mail_from> from ip after HELO/EHLO helo (§2.4)."""
    address = mail_from.strip().strip("<>")
    if not address:
        sender, domain = f"postmaster@{helo}", helo  # the null sender: check the HELO identity
    else:
        local, _, domain = address.rpartition("@")
        sender = f"{local or 'postmaster'}@{domain}"
    return check_host(ip, domain, sender, resolver, helo=helo, receiver=receiver,
                      default_explanation=default_explanation)


def check_host(ip: str, domain: str, sender: str, resolver, *, helo: str = "", receiver: str = "unknown",
               max_lookups: int = MAX_LOOKUPS, max_void: int = MAX_VOID_LOOKUPS, timeout: float = TIME_LIMIT,
               default_explanation: str = DEFAULT_EXPLANATION) -> SpfResult:
    """RFC 7208 check_host(ip, domain, sender); ValueError if ip is not an address."""
    address = ipaddress.ip_address(ip.strip())
    if address.version == 6 and address.ipv4_mapped:  # §5: an IPv4 client behind IPv6 is IPv4
        address = address.ipv4_mapped
    domain = domain[:-1] if domain.endswith(".") else domain
    local, _, sender_domain = sender.rpartition("@")
    if not sender_domain:
        sender_domain = domain
    ctx = MacroContext(sender=f"{local or 'postmaster'}@{sender_domain}", ip=address, helo=helo,
                       receiver=receiver, timestamp=int(time.time()))
    if not spf_macro.is_check_domain(domain):
        return _done(SpfResult("none", domain, reason=f"{domain!r} is not a fully qualified domain name"), ip)
    check = _Check(address, ctx, resolver, max_lookups, max_void, time.monotonic() + timeout)
    try:
        outcome = check.evaluate(domain)
    except _PermError as e:
        return _done(SpfResult("permerror", domain, reason=str(e)), ip)
    except _TempError as e:
        return _done(SpfResult("temperror", domain, reason=str(e)), ip)
    result, reason, record, at = outcome
    explanation = check.explain(record, at, default_explanation) if result == "fail" else ""
    return _done(SpfResult(result, domain, explanation, reason), ip)


def _done(result: SpfResult, ip: str) -> SpfResult:
    log.debug("SPF %s for %s from %s: %s", result.result, result.domain, ip, result.reason)
    return result


class _Check:
    """One check_host question: the client, the macro values and the shared DNS budget."""

    def __init__(self, ip, ctx: MacroContext, resolver, max_lookups: int, max_void: int, deadline: float):
        self.ip, self.ctx, self.resolver = ip, ctx, resolver
        self.max_lookups, self.max_void, self.deadline = max_lookups, max_void, deadline
        self.lookups = self.voids = 0
        ctx.validated_names = self._all_validated_names

    # -- records ---------------------------------------------------------------------------

    def evaluate(self, domain: str) -> tuple[str, str, SPFRecord | None, str]:
        """(result, reason, the record that decided, its domain) for domain's SPF record."""
        redirected_from = ""
        while True:
            record = self._record(domain)
            if record is None:
                if redirected_from:
                    raise _PermError(f"redirect={domain} in {redirected_from}: {domain} has no SPF record")
                return "none", f"{domain} has no SPF record", None, domain
            for directive in record.directives:
                if self._matches(directive, domain):
                    return directive.result, f"{directive.text} matched in {domain}", record, domain
            target = record.redirect
            if target is None:
                return "neutral", f"nothing matched in {domain}", record, domain
            self._spend_lookup(f"redirect={target}")
            name = self._target(target, domain)
            if name is None:
                raise _PermError(f"redirect={target} in {domain} names no valid domain")
            redirected_from, domain = domain, name

    def _record(self, domain: str) -> SPFRecord | None:
        """domain's one SPF record; None if it has none; _PermError if several or broken."""
        if not spf_macro.is_query_name(domain):
            return None
        texts = [t for t in (self._ask("txt", domain) or []) if is_spf(t)]
        if len(texts) > 1:
            raise _PermError(f"{domain} has {len(texts)} SPF records (RFC 7208 §4.5)")
        if not texts:
            return None
        try:
            record = parse(texts[0])
            _check_strict(record)
        except ValueError as e:  # MacroError too
            raise _PermError(f"SPF record of {domain}: {e}") from None
        return record

    # -- mechanisms --------------------------------------------------------------------------

    def _matches(self, d: Directive, domain: str) -> bool:
        if d.mechanism == "all":
            return True
        if d.mechanism in ("ip4", "ip6"):
            network = d.network()
            return network.version == self.ip.version and self.ip in network
        self._spend_lookup(d.text)
        target = self._target(d.argument, domain) if d.argument else domain
        if d.mechanism == "include":
            return self._include(d, target, domain)
        if target is None:
            return False
        return getattr(self, "_match_" + d.mechanism)(d, target)

    def _include(self, d: Directive, target: str | None, domain: str) -> bool:
        if target is None:
            raise _PermError(f"{d.text} in {domain} names no valid domain")
        result, reason, _, _ = self.evaluate(target)
        if result == "none":
            raise _PermError(f"{d.text} in {domain}: {reason}")
        return result == "pass"

    def _match_a(self, d: Directive, target: str) -> bool:
        addresses = self._ask("a" if self.ip.version == 4 else "aaaa", target)
        if not addresses:
            self._void(d.text)
        return self._in_cidr(addresses or [], d)

    def _match_mx(self, d: Directive, target: str) -> bool:
        records = self._ask("mx", target)
        if not records:
            self._void(d.text)
            return False
        if len(records) > MAX_MX_NAMES:
            raise _PermError(f"{d.text}: {target} has {len(records)} MX records (at most {MAX_MX_NAMES})")
        family = "a" if self.ip.version == 4 else "aaaa"
        for mx in sorted(records, key=lambda r: r.preference):
            if mx.host and spf_macro.is_query_name(mx.host):  # "" is a null MX (RFC 7505)
                if self._in_cidr(self._ask(family, mx.host) or [], d):
                    return True
        return False

    def _match_ptr(self, d: Directive, target: str) -> bool:
        names = self._ptr_names()
        if not names:
            self._void(d.text)
            return False
        target = target.lower()
        under = [n for n in names if n == target or n.endswith("." + target)]
        return any(self._validated(name) for name in under)

    def _match_exists(self, d: Directive, target: str) -> bool:
        if self._ask("a", target):  # always A, whatever the client's address family (§5.7)
            return True
        self._void(d.text)
        return False

    def _in_cidr(self, addresses: list[str], d: Directive) -> bool:
        length = d.cidr4 if self.ip.version == 4 else d.cidr6
        for text in addresses:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if address.version != self.ip.version:
                continue
            prefix = address.max_prefixlen if length is None else length
            if self.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
                return True
        return False

    # -- the client's host names (ptr mechanism, %{p}) ---------------------------------------------

    def _ptr_names(self) -> list[str]:
        """The first 10 names the client's address maps back to; [] on any DNS error (§5.5)."""
        try:
            names = self._ask("ptr", str(self.ip)) or []
        except _TimeUp:
            raise
        except _TempError:
            return []
        return [n.lower().rstrip(".") for n in names[:MAX_PTR_NAMES]]

    def _validated(self, name: str) -> bool:
        """Whether name's addresses include the client's (forward-confirmed); errors: no (§5.5)."""
        if not spf_macro.is_query_name(name):
            return False
        try:
            addresses = self._ask("a" if self.ip.version == 4 else "aaaa", name) or []
        except _TimeUp:
            raise
        except _TempError:
            return False
        return any(ipaddress.ip_address(a) == self.ip for a in addresses if _is_address(a))

    def _all_validated_names(self) -> list[str]:
        return [name for name in self._ptr_names() if self._validated(name)]

    # -- explanation ---------------------------------------------------------------------------------

    def explain(self, record: SPFRecord | None, domain: str, default: str) -> str:
        """The exp= text of the record that failed, or default; any trouble with exp= means
        default (§6.2): it is looked up after the result, outside the look-up limits."""
        spec = record.modifier("exp") if record is not None else None
        text = None
        if spec is not None:
            try:
                text = self._explanation_text(spec, domain)
            except (MacroError, _PermError, _TempError) as e:
                log.debug("exp=%s of %s ignored: %s", spec, domain, e)
        if text is None:
            try:
                text = spf_macro.expand(default, self.ctx, domain, explanation=True)
            except MacroError:
                text = default
        # It ends up in an SMTP reply: a UTF-8 local part (SMTPUTF8) must not break that line.
        return "".join(c if " " <= c <= "~" else "?" for c in text)

    def _explanation_text(self, spec: str, domain: str) -> str | None:
        name = self._target(spec, domain)
        texts = self._ask("txt", name) if name else None
        if not texts or len(texts) != 1:
            return None
        if any(not " " <= c <= "~" for c in texts[0]):  # §6.2: ASCII only
            return None
        return spf_macro.expand(texts[0], self.ctx, domain, explanation=True)

    # -- DNS and the budget ---------------------------------------------------------------------------

    def _target(self, spec: str, domain: str) -> str | None:
        """A domain-spec expanded into a name to ask DNS about; None if DNS cannot carry it."""
        try:
            name = spf_macro.query_name(spf_macro.expand(spec, self.ctx, domain))
        except MacroError as e:  # checked with the record, so only a broken caller gets here
            raise _PermError(str(e)) from None
        return name if spf_macro.is_query_name(name) else None

    def _ask(self, kind: str, name: str) -> list | None:
        """resolver.<kind>(name); None when the name does not exist (or is no DNS name)."""
        if time.monotonic() > self.deadline:
            raise _TimeUp("the SPF check took longer than its time limit")
        try:
            return getattr(self.resolver, kind)(name)
        except NXDomain:
            return None
        except DNSTemporaryError as e:
            raise _TempError(f"DNS {kind.upper()} look-up of {name} failed: {e}") from None
        except DNSError:
            return None  # a name the resolver refuses to send (a space, say) exists nowhere

    def _spend_lookup(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > self.max_lookups:
            raise _PermError(f"more than {self.max_lookups} DNS look-ups ({term} is one too many)")

    def _void(self, term: str) -> None:
        self.voids += 1
        if self.voids > self.max_void:
            raise _PermError(f"more than {self.max_void} void DNS look-ups ({term} found nothing)")


def _check_strict(record: SPFRecord) -> None:
    """What spf_syntax lets through but check_host must refuse (§7.1, §5.6); ValueError."""
    for d in record.directives:
        if d.mechanism in ("ip4", "ip6"):
            if "%" in d.argument:  # ipaddress accepts "fe80::1%eth0"; SPF has no zones
                raise ValueError(f"{d.text!r}: not an address")
        elif d.argument:
            spf_macro.check(d.argument)
    for m in record.modifiers:
        if m.name in ("redirect", "exp"):
            spf_macro.check(m.value)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
