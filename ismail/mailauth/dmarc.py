"""DMARC evaluation (RFC 7489), with DMARCbis's DNS Tree Walk instead of a public suffix list.

Model, for one message (``evaluate``):

1. Policy discovery: ``_dmarc.<author domain>``; when that holds no usable record, walk up
   the tree (``_walk``: the name itself, then at most 7 labels, then one label fewer each
   step down to the TLD -- at most 8 queries) and take the first DMARC record found.
2. Alignment: an SPF pass or a DKIM pass counts when its domain equals the author domain
   (strict, ``aspf=s``/``adkim=s``) or has the same Organizational Domain (relaxed).
   The Organizational Domain comes from the same walk (``_org_domain``): the first
   ``psd=n`` domain; one label below the first ``psd=y`` domain; otherwise the record
   with the fewest labels; the domain itself when the walk finds no record at all.
3. Disposition on fail: ``p`` at the author domain; for a subdomain ``np`` when the author
   domain does not exist (NXDOMAIN/NODATA for A, AAAA and MX), else ``sp``, else ``p``.
   ``t=y`` (DMARCbis testing) or a ``pct`` sample that misses lowers it one step
   (reject -> quarantine -> none), as RFC 7489 §6.6.4 says for pct.

Decisions (see the module's tests):

* Several DMARC records at one name are discarded and the walk goes on (DMARCbis
  §4.10); with nothing found further up the result is "none".
* A record whose p= (or sp=) is missing or invalid acts as p=none when rua= names a
  URI (RFC 7489 §6.6.3 step 6), otherwise the result is "permerror".  An invalid np=,
  adkim=, aspf=, pct=, psd= or t= is ignored (defaults apply).
* A temporary DNS failure during discovery is "temperror"; during an alignment walk it
  is "temperror" only when no other identifier aligned.
* ``evaluate_message`` (the header-block front end): no From field, or a From without an
  address, gives "permerror"; several From fields or several author domains are each
  evaluated and the strictest outcome is kept (RFC 7489 §6.6.1 allows that), so a second
  From field cannot be used to dodge the first one's p=reject.  More than
  MAX_AUTHOR_DOMAINS distinct domains is "permerror".
"""
from __future__ import annotations

import functools
import logging
import random
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Protocol

from ..queue.dns import DNSError, DNSTemporaryError, NXDomain, normalize_name
from .fromaddr import from_fields

log = logging.getLogger("ismail.mailauth.dmarc")

__all__ = ["DmarcRecord", "DmarcResult", "parse_record", "evaluate", "evaluate_message",
           "organizational_domain"]

MAX_LABELS_AFTER_FIRST = 7   # DMARCbis: a longer name jumps straight to its last 7 labels
MAX_DKIM_DOMAINS = 10        # distinct passing d= domains tried for alignment
MAX_AUTHOR_DOMAINS = 10      # distinct From domains evaluated by evaluate_message

POLICIES = ("none", "quarantine", "reject")
_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_VERSION = re.compile(r"[ \t]*v[ \t]*=[ \t]*DMARC1[ \t]*(;|\Z)")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+(![0-9]+[kmgt]?)?", re.IGNORECASE)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")


class TxtResolver(Protocol):
    def txt(self, name: str) -> list[str]: ...


class DkimLike(Protocol):
    result: str
    domain: str


@dataclass(frozen=True)
class DmarcRecord:
    """A parsed v=DMARC1 record; ``error`` is set when it gives no usable policy."""

    p: str = "none"
    sp: str = ""
    np: str = ""
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    rua: str = ""
    ruf: str = ""
    fo: str = "0"
    psd: str = "u"
    t: str = "n"
    error: str = ""


@dataclass(frozen=True)
class DmarcResult:
    result: str            # "pass", "fail", "none", "temperror", "permerror"
    from_domain: str
    policy: str            # to apply: "none", "quarantine", "reject"; "none" unless result is fail
    published_policy: str  # p= (or sp=/np=) as published, for the header and the log
    reason: str = ""
    spf_aligned: bool = False
    dkim_aligned_domain: str = ""
    record_domain: str = ""  # where the policy record was found ("" when none)

    def authres(self) -> tuple[str, str, dict[str, str], str]:
        """This result as an ``authres.header`` entry (polrec.* as registered by DMARCbis)."""
        props = {"header.from": self.from_domain} if self.from_domain else {}
        if self.published_policy:
            props["polrec.p"] = self.published_policy
        if self.record_domain and self.record_domain != self.from_domain:
            props["polrec.domain"] = self.record_domain
        comment = f"dis={self.policy}" if self.result == "fail" else ""
        if self.result in ("temperror", "permerror") and self.reason:
            comment = self.reason
        return ("dmarc", self.result, props, comment)


@functools.lru_cache(maxsize=1024)  # the same records arrive with every message from a domain
def parse_record(text: str) -> DmarcRecord | None:
    """The record in a TXT string, or None when it does not start with v=DMARC1."""
    if not _VERSION.match(text):
        return None
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        name, eq, value = part.partition("=")
        name = name.strip(" \t\r\n").lower()
        if eq and name and name not in tags:  # a repeated tag: the first one counts
            tags[name] = value.strip(" \t\r\n")
    rua = tags.get("rua", "")
    has_rua = any(_URI.fullmatch(uri.strip()) for uri in rua.split(","))
    p, sp, error = tags.get("p", "").lower(), tags.get("sp", "").lower(), ""
    if p not in POLICIES or (sp and sp not in POLICIES):
        if has_rua:
            p, sp = "none", ""  # RFC 7489 §6.6.3: act as if p=none were published
        else:
            error = ("no p= tag" if "p" not in tags else
                     f"invalid p={tags['p']}" if p not in POLICIES else f"invalid sp={tags['sp']}")
    np = tags.get("np", "").lower()
    pct = tags.get("pct", "100")
    return DmarcRecord(
        p=p if p in POLICIES else "none", sp=sp, np=np if np in POLICIES else "",
        adkim=_choice(tags.get("adkim"), "rs", "r"), aspf=_choice(tags.get("aspf"), "rs", "r"),
        pct=int(pct) if pct.isdigit() and int(pct) <= 100 else 100,
        rua=rua, ruf=tags.get("ruf", ""), fo=tags.get("fo", "0"),
        psd=_choice(tags.get("psd"), "ynu", "u"), t=_choice(tags.get("t"), "yn", "n"), error=error)


def _choice(value: str | None, allowed: str, default: str) -> str:
    value = (value or "").lower()
    return value if len(value) == 1 and value in allowed else default


def _name(domain: str) -> str:
    """A domain in lowercase A-label form; ValueError when it is no DNS host name."""
    try:
        name = normalize_name(domain)
    except DNSError as e:
        raise ValueError(str(e)) from None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{domain!r} is not a domain name")
    return name


def _walk(domain: str) -> list[str]:
    """The names a DNS Tree Walk queries, longest first (at most 8)."""
    labels = domain.split(".")
    names = [domain]
    count = min(len(labels) - 1, MAX_LABELS_AFTER_FIRST)
    while count >= 1:
        names.append(".".join(labels[-count:]))
        count -= 1
    return names


class _Lookup:
    """The DMARC records of one evaluation, each name asked once."""

    def __init__(self, resolver: TxtResolver) -> None:
        self.resolver = resolver
        self.records: dict[str, DmarcRecord | None] = {}
        self.orgs: dict[str, str] = {}

    def record(self, domain: str) -> DmarcRecord | None:
        """The single DMARC record at _dmarc.domain, or None; DNSTemporaryError passes."""
        if domain not in self.records:
            try:
                texts = self.resolver.txt(f"_dmarc.{domain}")
            except DNSTemporaryError:
                raise
            except DNSError:  # NXDomain, or a name the resolver will not ask for
                texts = []
            found = [r for r in map(parse_record, texts) if r is not None]
            if len(found) > 1:
                log.info("%d DMARC records at _dmarc.%s: all ignored", len(found), domain)
            self.records[domain] = found[0] if len(found) == 1 else None
        return self.records[domain]

    def discover(self, domain: str) -> tuple[str, DmarcRecord] | None:
        for name in _walk(domain):
            record = self.record(name)
            if record is not None:
                return name, record
        return None

    def org_domain(self, domain: str) -> str:
        if domain not in self.orgs:
            self.orgs[domain] = self._org_domain(domain)
        return self.orgs[domain]

    def _org_domain(self, domain: str) -> str:
        labels = domain.split(".")
        shortest = domain  # no record anywhere: the domain is its own organisation
        for name in _walk(domain):
            record = self.record(name)
            if record is None:
                continue
            if record.psd == "n" or (record.psd == "y" and name == domain):
                return name  # (a PSD sending mail as itself is its own organisation)
            if record.psd == "y":
                return ".".join(labels[-(name.count(".") + 2):])  # one label below the PSD
            shortest = name
        return shortest

    def aligned(self, author: str, other: str, mode: str) -> bool:
        if other == author:
            return True
        if mode == "s" or author.rsplit(".", 1)[-1] != other.rsplit(".", 1)[-1]:
            return False  # different TLDs never share an Organizational Domain
        return self.org_domain(author) == self.org_domain(other)


def organizational_domain(domain: str, resolver: TxtResolver) -> str:
    """The Organizational Domain of ``domain`` by the DNS Tree Walk (DNSTemporaryError
    and ValueError pass)."""
    return _Lookup(resolver).org_domain(_name(domain))


def evaluate(from_domain: str, spf_result: str, spf_domain: str, dkim_results: Iterable[DkimLike],
             resolver: TxtResolver, *, rand: Callable[[], float] = random.random) -> DmarcResult:
    """The DMARC verdict for one author domain, given the SPF and DKIM outcomes."""
    try:
        author = _name(from_domain)
    except ValueError as e:
        return DmarcResult("permerror", from_domain, "none", "", reason=f"bad From domain: {e}")
    lookup = _Lookup(resolver)
    try:
        found = lookup.discover(author)
    except DNSTemporaryError as e:
        return DmarcResult("temperror", author, "none", "", reason=f"DNS: {e}")
    if found is None:
        return DmarcResult("none", author, "none", "", reason="no DMARC record")
    where, record = found
    if record.error:
        return DmarcResult("permerror", author, "none", "", reason=f"_dmarc.{where}: {record.error}",
                           record_domain=where)
    published = record.p if where == author else (record.sp or record.p)
    spf_ok, dkim_domain, trouble = _alignment(lookup, author, record, spf_result, spf_domain, dkim_results)
    if spf_ok or dkim_domain:
        return DmarcResult("pass", author, "none", published, spf_aligned=spf_ok,
                           dkim_aligned_domain=dkim_domain, record_domain=where)
    if trouble:
        return DmarcResult("temperror", author, "none", published, reason=trouble, record_domain=where)
    if where != author and record.np and record.np != published:
        try:
            if not _exists(resolver, author):
                published = record.np
        except DNSTemporaryError as e:
            return DmarcResult("temperror", author, "none", published, reason=f"DNS: {e}",
                               record_domain=where)
    policy, reason = published, "no aligned SPF or DKIM pass"
    if record.t == "y" and policy != "none":
        policy, reason = _LOWER[policy], reason + "; t=y (testing): one step lower"
    elif record.pct < 100 and not rand() * 100 < record.pct:
        policy, reason = _LOWER[policy], reason + f"; outside the pct={record.pct} sample"
    return DmarcResult("fail", author, policy, published, reason=reason, record_domain=where)


def _alignment(lookup: _Lookup, author: str, record: DmarcRecord, spf_result: str, spf_domain: str,
               dkim_results: Iterable[DkimLike]) -> tuple[bool, str, str]:
    """(SPF aligned, first aligned DKIM d=, why a DNS failure left it open)."""
    trouble = ""
    candidates: list[tuple[str, str]] = []
    if (spf_result or "").lower() == "pass" and spf_domain:
        candidates.append(("spf", spf_domain))
    dkim_domains = {getattr(r, "domain", "") or "" for r in dkim_results
                    if (getattr(r, "result", "") or "").lower() == "pass"}
    candidates += [("dkim", d) for d in sorted(dkim_domains)[:MAX_DKIM_DOMAINS]]
    spf_ok = False
    for method, domain in candidates:
        try:
            name = _name(domain)
            mode = record.aspf if method == "spf" else record.adkim
            if not lookup.aligned(author, name, mode):
                continue
        except ValueError:
            continue
        except DNSTemporaryError as e:
            trouble = trouble or f"DNS while aligning {domain}: {e}"
            continue
        if method == "dkim":
            return spf_ok, name, ""
        spf_ok = True
    return spf_ok, "", "" if spf_ok else trouble


def _exists(resolver: Any, domain: str) -> bool:
    """Whether ``domain`` exists for DMARCbis's np=: some A, AAAA or MX record.  A resolver
    with only ``txt`` is asked for TXT, where NXDOMAIN is the answer for a missing name."""
    lookups = [getattr(resolver, kind, None) for kind in ("a", "aaaa", "mx")]
    if all(callable(look) for look in lookups):
        for look in lookups:
            try:
                if look(domain):
                    return True
            except NXDomain:
                return False
        return False
    try:
        resolver.txt(domain)
    except NXDomain:
        return False
    return True


_RANK = {"pass": 0, "none": 1, "permerror": 2, "temperror": 3, "fail": 4}


def _severity(r: DmarcResult) -> tuple[int, int]:
    return _RANK.get(r.result, 2), POLICIES.index(r.policy) if r.policy in POLICIES else 0


def evaluate_message(header_block: bytes, spf_result: str, spf_domain: str, dkim_results: Iterable[DkimLike],
                     resolver: TxtResolver, *, rand: Callable[[], float] = random.random) -> DmarcResult:
    """``evaluate`` for the author domain(s) of a message's From field(s); see the module
    docstring for no From, several From fields and several domains."""
    fields = from_fields(header_block)
    if not fields:
        return DmarcResult("permerror", "", "none", "", reason="no From header field")
    domains = list(dict.fromkeys(d for field in fields for d in field))
    if not domains:
        return DmarcResult("permerror", "", "none", "", reason="the From field has no address")
    if len(domains) > MAX_AUTHOR_DOMAINS:
        return DmarcResult("permerror", domains[0], "none", "",
                           reason=f"{len(domains)} author domains in From")
    dkim_results = list(dkim_results)
    results = [evaluate(d, spf_result, spf_domain, dkim_results, resolver, rand=rand) if d else
               DmarcResult("permerror", "", "none", "", reason="a From address without a domain")
               for d in domains]
    worst = max(results, key=_severity)
    if len(fields) > 1 or len(domains) > 1:
        note = f"{len(fields)} From fields" if len(fields) > 1 else f"{len(domains)} author domains"
        worst = replace(worst, reason="; ".join(filter(None, [note + ", strictest kept", worst.reason])))
    return worst
