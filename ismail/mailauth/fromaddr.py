"""The author domain(s): the domains of the addresses in a message's RFC 5322 From field.

DMARC (RFC 7489 §3.1, §6.6.1) judges a message by the domain a reader sees in From:, so
this reader has to agree with what a mail program would show and must not be fooled by
what an attacker writes around the address:

* a display name is never an address, even when it holds an "@" (quoted or encoded);
* of ``Name <addr>`` only ``addr`` counts; an obsolete route (``<@a,@b:user@c>``) is dropped;
* groups (``team: a@x, b@y;``) give their members; an empty group gives no address;
* comments (nested, with quoted-pairs) vanish; an unterminated quote, comment or ``<`` runs
  to the end of the field instead of raising.

The tokenizer is one regular expression with possessive quantifiers (Python 3.11), so a
hostile 1 MB header takes time linear in its size and never backtracks.  We do not use
``email.utils.getaddresses``: it silently returns ('', '') or splits at the wrong "@" on
the malformed input that spoofers send, and it does not say how many From fields there were.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger("ismail.mailauth.fromaddr")

__all__ = ["from_fields", "from_domains", "field_values"]

_TOKEN = re.compile(r"""
     (?P<ws>[ \t\r\n]++)
    |(?P<quoted>"(?:[^"\\]++|\\.)*+"?)
    |(?P<literal>\[(?:[^\[\]\\]++|\\.)*+\]?)
    |(?P<ew>=\?[^?\s]{1,75}\?[bBqQ]\?[^?\s]*+\?=)
    |(?P<atom>[^ \t\r\n()<>\[\]:;@,.\\"]++)
    |(?P<comment>\()
    |(?P<special>.)
""", re.VERBOSE | re.DOTALL)
_COMMENT_STOP = re.compile(r"[()\\]")
_HEADER_END = re.compile(rb"\n\r?\n")  # the line end before the first empty line

Token = tuple[str, str]  # (kind, text); kind "special" for one of <>:;@,.\)] and strays


def field_values(header_block: bytes, name: bytes = b"from") -> list[str]:
    """The unfolded values of every header field called ``name`` (case-insensitive),
    decoded as UTF-8 (a bad byte becomes U+FFFD).  Reading stops at the first empty
    line, so the whole message may be passed."""
    values: list[str] = []
    current: list[bytes] | None = None
    end = _HEADER_END.search(header_block)
    if end is not None:  # only the header is split into lines, not a whole message
        header_block = header_block[:end.start() + 1]
    for line in header_block.split(b"\n"):
        line = line[:-1] if line.endswith(b"\r") else line
        if not line:
            break  # end of the header block
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            values.append(b"".join(current).decode("utf-8", "replace"))
            current = None
        field, colon, value = line.partition(b":")
        # obs-optional (RFC 5322 §4.5.1) allows blanks between the name and the colon
        if colon and field.rstrip(b" \t").lower() == name:
            current = [value]
    if current is not None:
        values.append(b"".join(current).decode("utf-8", "replace"))
    return values


def from_fields(header_block: bytes) -> list[list[str]]:
    """One list per From field: the domain of each address in it, lowercased, in order.

    An address whose domain cannot be read (no "@", a broken domain) is given as "";
    a group without members gives no entry.  ``[]`` means the message has no From field;
    more than one inner list means several From fields (invalid per RFC 5322 §3.6)."""
    return [_simple(value) or [_domain(address) for address in _addresses(_tokens(value))]
            for value in field_values(header_block)]


# The usual From: one "Name <user@domain>" or a bare address, with nothing the tokenizer
# is there for (quotes, comments, groups, lists, routes, domain literals, encoded words).
# Its answer is the tokenizer's, without building tokens: ~1 us instead of ~10, and it
# runs at every message that is signed or checked.
# Possessive quantifiers, like the tokenizer's: linear time on hostile input.
_ATEXT = r'[^\s"(),:;<>@\[\]\\]++'
_SIMPLE = re.compile(rf'\s*+(?:[^"(),:;<>@\[\]\\]*+<\s*+({_ATEXT}@{_ATEXT})\s*+>|({_ATEXT}@{_ATEXT}))\s*+')
_DOT_ATOM = re.compile(r"[^.]++(?:\.[^.]++)*+")


def _simple(value: str) -> list[str] | None:
    """from_fields' answer for one simple field value; None for anything else."""
    found = _SIMPLE.fullmatch(value)
    if found is None or "=?" in value:
        return None
    domain = (found.group(1) or found.group(2)).rpartition("@")[2]
    return [domain.lower() if _DOT_ATOM.fullmatch(domain) else ""]


def from_domains(header_block: bytes) -> list[str]:
    """The distinct author domains of all From fields, in order of appearance
    ("" stands for an address whose domain could not be read)."""
    seen: dict[str, None] = {}
    for field in from_fields(header_block):
        for domain in field:
            seen.setdefault(domain, None)
    return list(seen)


# -- lexing ------------------------------------------------------------------------------------

def _tokens(value: str) -> list[Token]:
    """Tokens of a header value without white space and comments."""
    out: list[Token] = []
    pos, end = 0, len(value)
    while pos < end:
        found = _TOKEN.match(value, pos)
        if found is None:  # cannot happen (the last branch takes any character); be safe
            break
        kind = found.lastgroup or "special"
        pos = found.end()
        if kind == "comment":
            pos = _skip_comment(value, pos)
        elif kind != "ws":
            out.append((kind, found.group()))
    return out


def _skip_comment(value: str, pos: int) -> int:
    """The position after the comment whose "(" ends just before ``pos``."""
    depth = 1
    while depth:
        found = _COMMENT_STOP.search(value, pos)
        if found is None:
            return len(value)  # unterminated comment: it swallows the rest
        pos = found.end()
        char = found.group()
        if char == "\\":
            pos += 1  # quoted-pair: skip the escaped character
        else:
            depth += 1 if char == "(" else -1
    return pos


# -- parsing -----------------------------------------------------------------------------------

def _addresses(tokens: list[Token]) -> list[list[Token]]:
    """The addr-spec tokens of each mailbox in an address-list (groups flattened)."""
    found: list[list[Token]] = []
    bare: list[Token] = []      # tokens of the current mailbox outside <...>
    angle: list[Token] | None = None
    had_angle = False
    for token in tokens:
        kind, text = token
        if angle is not None:
            if kind == "special" and text == ">":
                found.append(angle)
                angle, had_angle = None, True
            else:
                angle.append(token)
            continue
        if kind != "special":
            bare.append(token)
        elif text == "<":
            angle = []
        elif text in ",;":
            if bare and not had_angle:
                found.append(bare)
            bare, had_angle = [], False
        elif text == ":":
            bare = []  # what came before was a group's display name
        else:
            bare.append(token)
    if angle is not None:
        found.append(angle)  # unterminated "<": take what there is
    elif bare and not had_angle:
        found.append(bare)
    return found


def _domain(addr: list[Token]) -> str:
    """The domain of an addr-spec, lowercased; "" when there is none or it is malformed."""
    colons = [i for i, (kind, text) in enumerate(addr) if kind == "special" and text == ":"]
    if colons:
        addr = addr[colons[-1] + 1:]  # obs-route "@a,@b:" before the real address
    ats = [i for i, (kind, text) in enumerate(addr) if kind == "special" and text == "@"]
    if not ats:
        return ""
    part = addr[ats[-1] + 1:]
    if len(part) == 1 and part[0][0] == "literal":
        return part[0][1].lower() if part[0][1].endswith("]") else ""
    # dot-atom, or obs-domain with CFWS around the dots (already dropped): atom *("." atom)
    if len(part) % 2 == 0:
        return ""
    for i, (kind, text) in enumerate(part):
        if (kind == "atom") if i % 2 == 0 else (kind == "special" and text == "."):
            continue
        return ""
    return "".join(text for _, text in part).lower()
