"""SPF macros (RFC 7208 §7) and the domain-name rules check_host needs (§4.3, §4.8, §7.3).

A record's domain-specs and its explanation text may hold macros: ``%{ir}.%{v}._spf.%{d2}``.
``expand`` turns one into text for the message being checked, described by a ``MacroContext``.
The rules kept here:

  * letters s l o d i p h v everywhere; c r t only in explanation text (§7.1), so a
    domain-spec holding them is a syntax error (PermError for the caller);
  * transformers: a count of right-hand parts (never zero), ``r`` to reverse; delimiters
    split the value (default "."), and the parts are joined again with "." (§7.3);
  * an upper-case letter expands like the lower-case one and is then URL-escaped (all but
    the unreserved characters ALPHA DIGIT - . _ ~);
  * ``%%`` is "%", ``%_`` a space, ``%-`` "%20"; any other "%" is a syntax error;
  * a name built for a DNS query loses a trailing dot and, past 253 characters, its
    left-most labels (§7.3); an explanation keeps its dots.

Validity of names: ``is_query_name`` (what DNS can be asked: labels of 1 to 63 characters,
at most 253 in all) and ``is_check_domain`` (what check_host accepts as <domain>: also more
than one label, no address literal, visible ASCII; anything else gives "none", §4.3).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote

DOMAIN_LETTERS = frozenset("slodiphv")
EXPLANATION_LETTERS = DOMAIN_LETTERS | frozenset("crt")
MAX_NAME = 253  # RFC 1035 names, written without the trailing dot

_MACRO = re.compile(r"%(?:\{(?P<letter>[A-Za-z])(?P<digits>[0-9]*)(?P<reverse>[rR]?)"
                    r"(?P<delims>[-.+,/_=]*)\}|(?P<escape>[%_-]))")
_ESCAPES = {"%": "%", "_": " ", "-": "%20"}


class MacroError(ValueError):
    """A macro-string that breaks §7.1; for a domain-spec the caller's result is PermError."""


@dataclass
class MacroContext:
    """What the macros of one check_host evaluation stand for."""

    sender: str                 # s: "local@domain" (local part "postmaster" if it had none)
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address  # i, c, v; IPv4-mapped already unmapped
    helo: str = ""              # h
    receiver: str = "unknown"   # r (explanations only)
    timestamp: int = 0          # t (explanations only)
    # p: the client's validated host names, fetched only if a record uses %{p} (§7.3: costly).
    validated_names: Callable[[], list[str]] = field(default=lambda: [])
    _names: list[str] | None = field(default=None, init=False, repr=False)

    @property
    def local(self) -> str:
        return self.sender.rpartition("@")[0]

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2]

    def value(self, letter: str, domain: str) -> str:
        """The value of one (lower-case) macro letter while evaluating ``domain``."""
        if letter == "p":
            return self._client_name(domain)
        values = {
            "s": self.sender, "l": self.local, "o": self.sender_domain, "d": domain,
            "i": dotted(self.ip), "v": "in-addr" if self.ip.version == 4 else "ip6",
            "h": self.helo, "c": str(self.ip), "r": self.receiver, "t": str(self.timestamp),
        }
        return values[letter]

    def _client_name(self, domain: str) -> str:
        # §7.3: the domain itself if validated, else a name under it, else any, else "unknown".
        if self._names is None:
            self._names = [n.lower().rstrip(".") for n in self.validated_names()]
        domain = domain.lower()
        for name in self._names:
            if name == domain:
                return name
        for name in self._names:
            if name.endswith("." + domain):
                return name
        return self._names[0] if self._names else "unknown"


def dotted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The "i" macro: dotted quad for IPv4, 32 dot-separated nibbles for IPv6 (§7.3).

    The nibbles are upper-case, as pyspf writes them and the RFC 7208 test suite expects
    (v-macro-ip6); DNS ignores the case, so only explanation texts can tell.
    """
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", "").upper())


def check(text: str, letters: frozenset[str] = DOMAIN_LETTERS) -> None:
    """MacroError unless every "%" in text starts a valid macro using only ``letters``."""
    for _ in _macros(text, letters):
        pass


def expand(text: str, ctx: MacroContext, domain: str, *, explanation: bool = False) -> str:
    """text with its macros replaced; ``explanation`` allows c, r and t (§7.1)."""
    letters = EXPLANATION_LETTERS if explanation else DOMAIN_LETTERS
    out: list[str] = []
    at = 0
    for found in _macros(text, letters):
        out.append(text[at:found.start()])
        at = found.end()
        if found["escape"]:
            out.append(_ESCAPES[found["escape"]])
            continue
        letter = found["letter"]
        value = _transform(ctx.value(letter.lower(), domain), found["digits"], found["reverse"], found["delims"])
        out.append(quote(value, safe="") if letter.isupper() else value)
    out.append(text[at:])
    return "".join(out)


def query_name(text: str) -> str:
    """An expanded domain-spec as a name to ask DNS about: no trailing dot, at most 253
    characters, shortened from the left a whole label at a time (§7.3)."""
    name = text[:-1] if text.endswith(".") else text
    while len(name) > MAX_NAME and "." in name:
        name = name.split(".", 1)[1]
    return name


def is_query_name(name: str) -> bool:
    """Whether DNS can be asked about name: labels of 1 to 63 characters, 253 in all."""
    name = name[:-1] if name.endswith(".") else name
    labels = name.split(".")
    return 0 < len(name) <= MAX_NAME and all(0 < len(label) <= 63 for label in labels)


def is_check_domain(name: str) -> bool:
    """Whether name is a <domain> check_host evaluates (§4.3): a fully qualified domain name
    (two labels or more, visible ASCII, not an address literal, top label not all digits)."""
    bare = name[:-1] if name.endswith(".") else name
    if not is_query_name(bare) or "." not in bare or bare.startswith("["):
        return False
    if any(not "\x21" <= c <= "\x7e" for c in bare):
        return False
    return not bare.rsplit(".", 1)[1].isdigit()


def _macros(text: str, letters: frozenset[str]):
    """The macros of text in order; MacroError at the first "%" that does not start one."""
    at = text.find("%")
    while at >= 0:
        found = _MACRO.match(text, at)
        if not found:
            raise MacroError(f"{text[at:at + 6]!r} is not a macro (a literal % is written %%)")
        letter = found["letter"]
        if letter and letter.lower() not in letters:
            if letter.lower() in EXPLANATION_LETTERS:
                raise MacroError(f"%{{{letter}}} is allowed only in explanation text (RFC 7208 §7.1)")
            raise MacroError(f"%{{{letter}}} is not a macro letter (s l o d i p h c r t v)")
        if found["digits"] and int(found["digits"]) == 0:
            raise MacroError(f"{found.group()!r}: the number of parts to keep must not be zero")
        yield found
        at = text.find("%", found.end())


def _transform(value: str, digits: str, reverse: str, delimiters: str) -> str:
    if not (digits or reverse or delimiters):
        return value
    parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
    if reverse:
        parts.reverse()
    if digits:
        parts = parts[-int(digits):]
    return ".".join(parts)
