"""Parsing of SMTP ``MAIL FROM:`` / ``RCPT TO:`` arguments and relay-trick detection.

Model
-----
The argument of ``MAIL FROM:<path> params`` / ``RCPT TO:<path> params`` (RFC 5321
§4.1.2, extended by RFC 6531 SMTPUTF8 to allow non-ASCII UTF-8) is read in three
layers, each checked on its own:

* the keyword and its colon (``FROM:`` / ``TO:``, case-insensitive; spaces after the
  colon are tolerated because many clients send ``MAIL FROM: <a@b>``);
* the path, normally between angle brackets.  Like Postfix we also accept a bare
  address without spaces.  ``<>`` is the null reverse path;
* ESMTP parameters ``KEY`` / ``KEY=VALUE`` separated by spaces, returned as a dict
  with upper-cased keys and values left uninterpreted.

A path is ``[@route,@route:]local[@domain]``.  It becomes a `Path` holding the
*decoded* local part (quotes and backslash escapes removed, case preserved), the
lower-cased domain (address literals keep their brackets) and the obsolete source
route.  Nothing here decides policy: `relay_trick` merely names the classic ways of
smuggling a second destination into one address (source route, ``%``, ``!``,
quoted ``@``), so the server can refuse them from untrusted clients.

This runs at least twice per message, so it uses string methods and a few
precompiled regexes whose alternatives are disjoint (linear time, no
catastrophic backtracking).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

__all__ = ["AddressSyntaxError", "Path", "parse_argument", "relay_trick", "is_domain"]


class AddressSyntaxError(ValueError):
    """str(e) is a short human reason, e.g. 'unbalanced angle brackets'."""


# RFC 5322 atext; RFC 6531 adds every non-ASCII character.  C1 controls and lone
# surrogates (bytes that were not valid UTF-8, decoded with surrogateescape) are
# refused for the whole argument before any of these patterns run.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\U0010ffff"
_DOT_ATOM = re.compile("[" + _ATEXT + "]+(?:\\.[" + _ATEXT + "]+)*")
_ATEXT_CHAR = re.compile("[" + _ATEXT + "]")
_LD = r"A-Za-z0-9\x80-\U0010ffff"
_LABEL = re.compile("[" + _LD + "](?:[" + _LD + "-]*[" + _LD + "])?")
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# <...> with quoted strings honoured, so '>' or '<' inside quotes do not end it.
_BRACKETED = re.compile(r'<((?:[^<>"]|"(?:[^"\\]|\\.)*")*)>')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")
# A route hop is a literal (which may contain ':') or anything up to ',' / ':'.
_ROUTE_HOP = re.compile(r"\[[^\]]*\]|[^,:\[\]@]*")
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")

_MAX_LOCAL, _MAX_DOMAIN, _MAX_PATH, _MAX_LABEL = 64, 255, 256, 63


def _octets(text: str) -> int:
    # Limits are in octets of the UTF-8 form; skip encoding in the common ASCII case.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class Path:
    """A parsed reverse-path or forward-path.  ``Path()`` is the null path ``<>``."""

    local: str = ""
    domain: str = ""
    route: tuple[str, ...] = ()
    quoted: bool = False

    @property
    def null(self) -> bool:
        # The parser refuses empty local parts, so empty local means '<>'.
        return not self.local and not self.domain and not self.route

    @property
    def is_ascii(self) -> bool:
        return (self.local.isascii() and self.domain.isascii()
                and all(hop.isascii() for hop in self.route))

    @functools.cached_property  # a parsed path is reused (parse_argument): worked out once
    def address(self) -> str:
        if self.null:
            return ""
        local = self.local
        if not _DOT_ATOM.fullmatch(local):
            # Re-quote only when needed: RFC 5321 §4.1.2 says not to quote a dot-atom.
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local

    def __str__(self) -> str:
        return self.address


_NULL = Path()


def _domain_error(domain: str) -> str | None:
    """Reason why *domain* is not a valid host name (no literal), or None."""
    if not domain:
        return "empty domain"
    if domain.endswith("."):
        return "trailing dot in domain"
    labels = domain.split(".")
    for label in labels:
        if not label:
            return "empty label in domain"
        if not _LABEL.fullmatch(label):
            if label[0] == "-" or label[-1] == "-":
                return "domain label starts or ends with a hyphen"
            return "invalid character in domain"
        if label.isascii():
            if len(label) > _MAX_LABEL:
                return "domain label longer than 63 octets"
        else:
            # U-labels are accepted as-is, but must be printable text and fit in
            # DNS once converted to their "xn--" A-label form.
            if not label.isprintable():
                return "invalid character in domain"
            if len(label.lower().encode("punycode")) + 4 > _MAX_LABEL:
                return "domain label longer than 63 octets"
    tld = labels[-1]
    if tld.isascii() and tld.isdigit():
        # '1.2.3.4' must be written as the literal '[1.2.3.4]' (RFC 3696 §2).
        return "numeric top-level domain (use an address literal)"
    if _octets(domain) > _MAX_DOMAIN:
        return "domain longer than 255 octets"
    return None


def _literal_error(literal: str) -> str | None:
    """Reason why ``[...]`` is not an IPv4 / IPv6 address literal, or None."""
    body = literal[1:-1]
    if body[:5].lower() == "ipv6:":
        body, kind = body[5:], ipaddress.IPv6Address
    else:
        kind = ipaddress.IPv4Address
    # ipaddress accepts '%scope' suffixes, which have no place in mail addresses.
    if not body.isascii() or "%" in body:
        return "invalid address literal"
    try:
        kind(body)
        return None
    except ValueError:
        return "invalid address literal"


def _check_domain(domain: str) -> str:
    """Validate a domain or address literal; return it lower-cased."""
    if domain.startswith("["):
        error = _literal_error(domain) if domain.endswith("]") else "unterminated address literal"
    elif "]" in domain:
        error = "invalid address literal"
    else:
        error = _domain_error(domain)
    if error:
        raise AddressSyntaxError(error)
    return domain.lower()


def _local_error(local: str) -> str | None:
    if not local:
        return "empty local part"
    if _DOT_ATOM.fullmatch(local):
        return None
    if " " in local:
        return "space in unquoted address"
    if local[0] == "." or local[-1] == ".":
        return "local part starts or ends with a dot"
    if ".." in local:
        return "consecutive dots in local part"
    bad = next((c for c in local if c != "." and not _ATEXT_CHAR.match(c)), "?")
    return f"invalid character {bad!r} in local part"


def _parse_route(text: str) -> tuple[tuple[str, ...], str]:
    """Split ``@a,@b:rest`` into (('a', 'b'), 'rest')."""
    if ":" not in text:
        # '<@example.com>' is a mailbox with nothing before the '@', not a route.
        raise AddressSyntaxError("malformed source route" if "," in text else "empty local part")
    hops: list[str] = []
    pos = 0
    while True:
        if text[pos:pos + 1] != "@":
            raise AddressSyntaxError("malformed source route")
        match = _ROUTE_HOP.match(text, pos + 1)
        if not match.group():
            raise AddressSyntaxError("empty domain in source route")
        hops.append(_check_domain(match.group()))
        pos = match.end()
        sep = text[pos:pos + 1]
        if sep == ":":
            return tuple(hops), text[pos + 1:]
        if sep != ",":
            raise AddressSyntaxError("malformed source route")
        pos += 1


def _parse_path(inner: str) -> Path:
    """Parse the text between the angle brackets."""
    if not inner:
        return _NULL
    # RFC 5321 §4.5.3.1.3 counts the angle brackets too.  Checked first so that
    # oversized input is refused before any further work.
    if _octets(inner) + 2 > _MAX_PATH:
        raise AddressSyntaxError("path longer than 256 octets")
    route: tuple[str, ...] = ()
    body = inner
    if body[0] == "@":
        route, body = _parse_route(body)
        if not body:
            raise AddressSyntaxError("missing mailbox after source route")
    if body[0] == '"':
        match = _QUOTED.match(body)
        if not match:
            raise AddressSyntaxError("unterminated quoted string")
        raw_local = match.group()
        local = match.group(1)
        if "\\" in local:
            local = _ESCAPE.sub(r"\1", local)
        if not local:
            raise AddressSyntaxError("empty local part")
        rest = body[match.end():]
        if rest and rest[0] != "@":
            raise AddressSyntaxError("unexpected text after quoted local part")
        has_domain, domain = bool(rest), rest[1:]
        quoted = True
    else:
        raw_local, at, domain = body.partition("@")
        has_domain, local, quoted = bool(at), raw_local, False
        error = _local_error(local)
        if error:
            raise AddressSyntaxError(error)
    # The limit applies to the local part as sent, quotes included.  An SRS address (a
    # bounce to a forwarded copy) wraps a whole other address and may be longer, as
    # Postfix and libsrs2 allow; the path limit still holds.
    if _octets(raw_local) > _MAX_LOCAL and not (local[:4].upper() in ("SRS0", "SRS1") and not quoted):
        raise AddressSyntaxError("local part longer than 64 octets")
    if has_domain:
        if "@" in domain:
            raise AddressSyntaxError("more than one @")
        domain = _check_domain(domain)
    return Path(local=local, domain=domain, route=route, quoted=quoted)


def _parse_params(tail: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in tail.split(" "):
        if not item:
            continue  # tolerate repeated and trailing spaces
        key, eq, value = item.partition("=")
        if not _PARAM_KEY.fullmatch(key):
            raise AddressSyntaxError("invalid parameter name")
        key = key.upper()
        if key in params:
            raise AddressSyntaxError(f"duplicate parameter {key}")
        if eq and not value:
            raise AddressSyntaxError(f"empty value for parameter {key}")
        if "=" in value or not value.isprintable():
            raise AddressSyntaxError(f"invalid value for parameter {key}")
        params[key] = value if eq else None
    return params


_PARSED: dict[tuple[str, str], tuple[Path, tuple[tuple[str, str | None], ...]]] = {}
_PARSED_MAX = 256  # arguments remembered; a server sees the same few senders and recipients


def parse_argument(text: str, keyword: str) -> tuple[Path, dict[str, str | None]]:
    """Parse ``FROM:<path> params`` (keyword "FROM") or ``TO:<path> params`` ("TO").

    An argument parsed before is answered from memory (the parse is a function of the
    text alone, and a Path cannot change): parsing was about half of MAIL's and RCPT's
    time in the loop at one session.  Refusals are not remembered."""
    known = _PARSED.get((text, keyword))
    if known is not None:
        return known[0], dict(known[1])  # a dict of its own: the caller may change it
    path, params = _parse_argument(text, keyword)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[(text, keyword)] = (path, tuple(params.items()))
    return path, params


def _parse_argument(text: str, keyword: str) -> tuple[Path, dict[str, str | None]]:
    bad = _BAD_CHAR.search(text)
    if bad:
        surrogate = "\ud800" <= bad.group() <= "\udfff"
        raise AddressSyntaxError("invalid UTF-8" if surrogate else "control character in argument")
    text = text.lstrip(" ")
    n = len(keyword)
    if text[:n].upper() != keyword.upper() or text[n:n + 1] != ":":
        raise AddressSyntaxError(f"expected {keyword.upper()}:")
    rest = text[n + 1:].lstrip(" ")
    if not rest:
        raise AddressSyntaxError("missing path")
    if rest[0] == "<":
        match = _BRACKETED.match(rest)
        if not match:
            if ">" not in rest or "<" in rest[1:]:
                raise AddressSyntaxError("unbalanced angle brackets")
            raise AddressSyntaxError("unterminated quoted string")
        inner, tail = match.group(1), rest[match.end():]
        if tail and tail[0] != " ":
            raise AddressSyntaxError(
                "unbalanced angle brackets" if tail[0] == ">" else "missing space after path")
    else:
        inner, _, tail = rest.partition(" ")
        if "<" in inner or ">" in inner:
            raise AddressSyntaxError("unbalanced angle brackets")
    path = _parse_path(inner)
    return path, (_parse_params(tail) if tail else {})


def relay_trick(path: Path) -> str | None:
    """Name the relay trick hidden in *path*, or None for an ordinary address."""
    if path.route:
        return "source route"
    if "%" in path.local:
        return "percent hack"
    if "!" in path.local:
        return "bang path"
    if path.quoted and "@" in path.local:
        return "quoted local part with @"
    return None


def is_domain(text: str) -> bool:
    """True if *text* is a host/domain name (ASCII or U-labels; no address literal)."""
    return isinstance(text, str) and _domain_error(text) is None
