"""IMAP SEARCH (RFC 3501 §6.4.4): the criteria as a tree, evaluated lazily per message.

Model
-----
`parse_search` reads the arguments after ``SEARCH`` / ``UID SEARCH`` as tokens (atoms are
`str`, quoted strings and literals `bytes`, parenthesised lists Python lists) and builds a
`Criteria`: a tree of small key objects (`Flag`, `Header`, `Date`, `Not`, `Or`, `And`...).
The tree is the whole grammar: a sequence of keys is an implicit AND, ``NOT`` takes the
next key, ``OR`` the next two, a list is one key.  Errors say what was wrong: `ValueError`
(the session answers BAD), or `BadCharset` for a charset we cannot search in (NO with
``[BADCHARSET (UTF-8 US-ASCII)]``; catch it before `ValueError`, it is a subclass).

A key asks the message only for what it needs, through a context (`SearchContext`):
flags and sequence numbers are plain attributes, headers and body text are methods that
`MessageContext` computes on first use and caches.  `And` and `Or` try their cheap
children first (flags before headers before body), so ``SEEN SUBJECT x`` reads no header
of an unseen message, and a search on flags alone reads no file.  `Criteria.needs` says
in advance which of "flags", "headers", "body", "size", "date" a search touches.

Matching follows RFC 3501: text keys are case-insensitive substrings (casefolded, so
"grüsse" finds "Grüße") of the RFC 2047-decoded, unfolded header, the whole field for
addresses; BEFORE/ON/SINCE compare INTERNALDATE's day in the server's local time;
SENT* compare the day written in the Date: header, zone ignored, falling back to the
INTERNALDATE where Date: is missing or unreadable (as RFC 5256 does for SORT).
BODY searches the decoded text parts (base64 and quoted-printable undone, charsets
decoded, HTML tags dropped); TEXT searches the decoded header as well.
"""
from __future__ import annotations

import binascii
import email
import email.message
import email.utils
import html
import re
from dataclasses import dataclass
from datetime import date, datetime
from email.utils import getaddresses
from typing import Callable, Iterable, Protocol, Sequence, Union

from ..textutil import bytes_to_text

Token = Union[str, bytes, list]
SeqSet = tuple[tuple[Union[int, None], Union[int, None]], ...]  # None stands for "*"

CHARSETS = ("UTF-8", "US-ASCII")
MAX_DEPTH = 200         # NOT/OR/parenthesis nesting: long OR chains are real, 1000 is hostile
MAX_NUMBER = 2**32 - 1  # RFC 3501 number / nz-number
_MONTHS = {m: i for i, m in enumerate(
    "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")
_SEQ_NUMBER = re.compile(r"\*|[1-9][0-9]*\Z")
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")  # RFC 5322 ftext: printable ASCII but ":"


class BadCharset(ValueError):
    """A CHARSET we do not search in; the reply lists `CHARSETS`."""


class SearchContext(Protocol):
    """What a key may ask of one message; see `MessageContext` for the lazy one."""
    seq: int
    uid: int
    largest_seq: int
    largest_uid: int
    flags: frozenset[str]
    recent: bool
    internaldate: float
    size: int

    def header(self, name: str) -> list[str]: ...
    def header_bytes(self) -> bytes: ...
    def body_text(self) -> str: ...


# ---------------------------------------------------------------- the keys

_COST = {"flags": 0, "size": 1, "date": 1, "headers": 2, "body": 3}


class Key:
    """One search key; `needs` names what it reads, `cost` orders AND/OR children."""
    needs: frozenset[str] = frozenset()

    @property
    def cost(self) -> int:
        return max((_COST[n] for n in self.needs), default=0)

    def matches(self, ctx: SearchContext) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class All(Key):
    def matches(self, ctx: SearchContext) -> bool:
        return True


@dataclass(frozen=True)
class Flag(Key):
    flag: str   # "\\Seen" or a keyword; IMAP flags compare case-insensitively
    present: bool
    needs = frozenset({"flags"})

    def matches(self, ctx: SearchContext) -> bool:
        flags = ctx.flags
        found = self.flag in flags or any(f.casefold() == self.flag.casefold() for f in flags)
        return found == self.present


@dataclass(frozen=True)
class Recent(Key):
    present: bool
    needs = frozenset({"flags"})

    def matches(self, ctx: SearchContext) -> bool:
        return bool(ctx.recent) == self.present


@dataclass(frozen=True)
class Size(Key):
    larger: bool
    octets: int
    needs = frozenset({"size"})

    def matches(self, ctx: SearchContext) -> bool:
        return ctx.size > self.octets if self.larger else ctx.size < self.octets


@dataclass(frozen=True)
class Numbers(Key):
    """A sequence set (message numbers) or, with ``uid``, a UID set."""
    ranges: SeqSet
    uid: bool = False

    def matches(self, ctx: SearchContext) -> bool:
        if self.uid:
            return in_sequence_set(ctx.uid, self.ranges, ctx.largest_uid)
        return in_sequence_set(ctx.seq, self.ranges, ctx.largest_seq)


@dataclass(frozen=True)
class Date(Key):
    sent: bool  # Date: header (SENT*) or INTERNALDATE
    op: str     # "BEFORE", "ON" or "SINCE"
    day: date

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"headers", "date"}) if self.sent else frozenset({"date"})

    def matches(self, ctx: SearchContext) -> bool:
        day = sent_day(ctx) if self.sent else internal_day(ctx.internaldate)
        if self.op == "BEFORE":
            return day < self.day
        return day == self.day if self.op == "ON" else day >= self.day


@dataclass(frozen=True)
class Header(Key):
    name: str    # lower case
    needle: str  # casefolded; "" matches any message that has the field
    needs = frozenset({"headers"})

    def matches(self, ctx: SearchContext) -> bool:
        return self.matches_values(ctx.header(self.name))

    def matches_values(self, values: Sequence[str]) -> bool:
        """Whether the field's decoded values (``decoded_field``) match."""
        if any(self.needle in value.casefold() for value in values):
            return True
        if self.name in _ADDRESS_FIELDS and self.needle:
            # "<user (comment)@ (comment) domain>" holds user@domain only once parsed.
            return any(self.needle in f"{name} {addr}".casefold()
                       for name, addr in getaddresses(values))
        return False


_ADDRESS_FIELDS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender"})


@dataclass(frozen=True)
class Body(Key):
    needle: str
    with_header: bool = False  # TEXT rather than BODY

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"headers", "body"}) if self.with_header else frozenset({"body"})

    def matches(self, ctx: SearchContext) -> bool:
        if self.with_header and self.needle in header_text(ctx.header_bytes()).casefold():
            return True
        return self.needle in ctx.body_text().casefold()


@dataclass(frozen=True)
class Not(Key):
    key: Key

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return self.key.needs

    def matches(self, ctx: SearchContext) -> bool:
        return not self.key.matches(ctx)


@dataclass(frozen=True)
class Or(Key):
    left: Key   # the cheaper of the two, see _or
    right: Key

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return self.left.needs | self.right.needs

    def matches(self, ctx: SearchContext) -> bool:
        return self.left.matches(ctx) or self.right.matches(ctx)


@dataclass(frozen=True)
class And(Key):
    keys: tuple[Key, ...]  # kept cheapest first

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(k.needs for k in self.keys))

    def matches(self, ctx: SearchContext) -> bool:
        return all(k.matches(ctx) for k in self.keys)


def _and(keys: list[Key]) -> Key:
    return keys[0] if len(keys) == 1 else And(tuple(sorted(keys, key=lambda k: k.cost)))


def _or(left: Key, right: Key) -> Or:
    return Or(left, right) if left.cost <= right.cost else Or(right, left)


@dataclass(frozen=True)
class Criteria:
    """A parsed SEARCH: ``criteria.matches(ctx)`` for each message in the folder."""
    root: Key
    charset: str = "US-ASCII"

    def matches(self, ctx: SearchContext) -> bool:
        return self.root.matches(ctx)

    @property
    def needs(self) -> set[str]:
        return set(self.root.needs)

    @property
    def header_fields(self) -> frozenset[str]:
        """The header fields (lower case) the keys read by name: what a cache can keep."""
        out: set[str] = set()
        todo: list[Key] = [self.root]
        while todo:
            key = todo.pop()
            if isinstance(key, Header):
                out.add(key.name)
            elif isinstance(key, Date) and key.sent:
                out.add("date")
            elif isinstance(key, Not):
                todo.append(key.key)
            elif isinstance(key, Or):
                todo += (key.left, key.right)
            elif isinstance(key, And):
                todo += key.keys
        return frozenset(out)


# ---------------------------------------------------------------- parsing

_FLAGS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
          "FLAGGED": "\\Flagged", "SEEN": "\\Seen"}
_CONSTANT: dict[str, Key] = {"ALL": All(), "RECENT": Recent(True), "OLD": Recent(False),
                             "NEW": And((Recent(True), Flag("\\Seen", False)))}
_CONSTANT.update({k: Flag(f, True) for k, f in _FLAGS.items()})
_CONSTANT.update({"UN" + k: Flag(f, False) for k, f in _FLAGS.items()})
_FIELD_KEYS = {"BCC", "CC", "FROM", "SUBJECT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}


class _Reader:
    """Walks one token list; a parenthesised list gets a reader of its own."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.tokens, self.pos = tokens, 0

    def done(self) -> bool:
        return self.pos >= len(self.tokens)

    def take(self, what: str) -> Token:
        if self.done():
            raise ValueError(f"missing {what}")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def atom(self, what: str) -> str:
        tok = self.take(what)
        if not isinstance(tok, str):
            raise ValueError(f"{what} must be an atom, got {_describe(tok)}")
        return tok

    def text(self, what: str) -> str:
        """An astring: atom or string; strings are UTF-8 (US-ASCII is a subset of it)."""
        tok = self.take(what)
        if isinstance(tok, str):
            return tok
        if isinstance(tok, (bytes, bytearray)):
            try:
                return bytes(tok).decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{what} is not valid UTF-8") from None
        raise ValueError(f"{what} must be a string, got {_describe(tok)}")

    def number(self, what: str) -> int:
        tok = self.atom(what)
        if not tok.isascii() or not tok.isdigit() or len(tok) > 10 or int(tok) > MAX_NUMBER:
            raise ValueError(f"{what} must be a number, got {tok!r}")
        return int(tok)


def _describe(tok: Token) -> str:
    return "a parenthesised list" if isinstance(tok, list) else f"the string {tok!r}"


def parse_search(tokens: Sequence[Token]) -> Criteria:
    """The SEARCH arguments as a `Criteria`; raises `BadCharset` or `ValueError`."""
    reader = _Reader(tokens)
    charset = "US-ASCII"
    if not reader.done() and isinstance(tokens[0], str) and tokens[0].upper() == "CHARSET":
        reader.take("CHARSET")
        charset = reader.text("charset name after CHARSET").upper()
        if charset not in CHARSETS:
            raise BadCharset(f"charset {charset} is not supported")
    keys = _keys(reader, 0)
    if not keys:
        raise ValueError("SEARCH needs at least one search key")
    return Criteria(_and(keys), charset)


def _keys(reader: _Reader, depth: int) -> list[Key]:
    keys = []
    while not reader.done():
        keys.append(_key(reader, depth))
    return keys


def _key(reader: _Reader, depth: int) -> Key:
    """One search key; ``depth`` counts the NOT, OR and parentheses around it."""
    if depth > MAX_DEPTH:
        raise ValueError("search criteria nested too deeply")
    tok = reader.take("search key")
    if isinstance(tok, list):
        keys = _keys(_Reader(tok), depth + 1)
        if not keys:
            raise ValueError("empty parentheses in search criteria")
        return _and(keys)
    if not isinstance(tok, str):
        raise ValueError(f"expected a search key, got {_describe(tok)}")
    name = tok.upper()
    if name in _CONSTANT:
        return _CONSTANT[name]
    if name in _FIELD_KEYS:
        return Header(name.lower(), reader.text(f"string after {name}").casefold())
    if name in _DATE_KEYS:
        sent = name.startswith("SENT")
        return Date(sent, name[4:] if sent else name, parse_date(reader.text(f"date after {name}")))
    if name == "NOT":
        return Not(_key(reader, depth + 1))
    if name == "OR":
        return _or(_key(reader, depth + 1), _key(reader, depth + 1))
    return _argument_key(reader, name, tok)


def _argument_key(reader: _Reader, name: str, tok: str) -> Key:
    if name in ("BODY", "TEXT"):
        return Body(reader.text(f"string after {name}").casefold(), name == "TEXT")
    if name == "HEADER":
        field = reader.text("field name after HEADER")
        if not _FIELD_NAME.match(field):
            raise ValueError(f"bad header field name {field!r}")
        return Header(field.lower(), reader.text(f"string after HEADER {field}").casefold())
    if name in ("KEYWORD", "UNKEYWORD"):
        return Flag(reader.atom(f"flag after {name}"), name == "KEYWORD")
    if name in ("LARGER", "SMALLER"):
        return Size(name == "LARGER", reader.number(f"size after {name}"))
    if name == "UID":
        return Numbers(parse_sequence_set(reader.atom("UID set")), uid=True)
    if tok[:1].isdigit() or tok[:1] == "*":
        return Numbers(parse_sequence_set(tok))
    raise ValueError(f"unknown search key {tok!r}")


def parse_sequence_set(text: str) -> SeqSet:
    """``"1:5,7,9:*"`` as ((1, 5), (7, 7), (9, None)); raises ValueError."""
    ranges = []
    for part in text.split(","):
        ends = part.split(":")
        if len(ends) > 2 or not all(_SEQ_NUMBER.match(e) and len(e) <= 10 for e in ends):
            raise ValueError(f"bad sequence set {text!r}")
        lo, hi = (None if e == "*" else int(e) for e in (ends[0], ends[-1]))
        if (lo or 0) > MAX_NUMBER or (hi or 0) > MAX_NUMBER:
            raise ValueError(f"number too large in sequence set {text!r}")
        ranges.append((lo, hi))
    return tuple(ranges)


def in_sequence_set(number: int, ranges: SeqSet, largest: int) -> bool:
    """Whether ``number`` is in the set; ``*`` is ``largest``, ``n:m`` equals ``m:n``."""
    for lo, hi in ranges:
        lo = largest if lo is None else lo
        hi = largest if hi is None else hi
        if min(lo, hi) <= number <= max(lo, hi):
            return True
    return False


def parse_date(text: str) -> date:
    """An IMAP date, ``1-Feb-1994`` (month in any case); raises ValueError."""
    m = _DATE.match(text)
    month = _MONTHS.get(m.group(2).upper()) if m else None
    if m is None or month is None:
        raise ValueError(f"bad date {text!r}, expected d-Mon-yyyy")
    try:
        return date(int(m.group(3)), month, int(m.group(1)))
    except ValueError:
        raise ValueError(f"no such date {text!r}") from None


# ---------------------------------------------------------------- reading messages

def internal_day(timestamp: float) -> date:
    """The INTERNALDATE's day in the server's local time (where FETCH shows it)."""
    try:
        return datetime.fromtimestamp(timestamp).date()
    except (OverflowError, OSError, ValueError):  # Windows refuses times before 1970
        return date(1970, 1, 1)


def sent_day(ctx: SearchContext) -> date:
    """The day written in the Date: header, zone ignored; else the INTERNALDATE's."""
    for value in ctx.header("date")[:1]:
        try:
            parts = email.utils.parsedate_tz(value)
            if parts:
                return date(parts[0], parts[1], parts[2])
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return internal_day(ctx.internaldate)


def split_header(message: bytes) -> bytes:
    """The header block of a message (or of its first bytes), without the blank line."""
    if message.startswith((b"\n", b"\r\n")):
        return b""
    end = message.find(b"\n\n")
    crlf = message.find(b"\n\r\n", 0, len(message) if end < 0 else end + 2)   # one before it
    if crlf >= 0:
        end = crlf
    return message if end < 0 else message[:end + 1]


_LOGICAL_LINE = re.compile(rb"\r?\n(?![ \t])")  # a line break that is not a fold


def parse_fields(raw: bytes) -> list[tuple[str, str]]:
    """Header fields as (name, unfolded value) pairs, in order; junk lines are skipped."""
    return [(name.decode("latin-1"), bytes_to_text(value, None)) for name, value in raw_fields(raw)]


def raw_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Like ``parse_fields``, the values unfolded but not decoded."""
    fields: list[tuple[bytes, bytes]] = []
    for line in _LOGICAL_LINE.split(raw):
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")
        if colon and name and b" " not in name and b"\n" not in name:
            fields.append((name, value.replace(b"\r", b"").replace(b"\n", b"").strip()))
    return fields


def field_values(raw: bytes, name: str) -> list[bytes]:
    """The unfolded, undecoded values of every ``name`` field of a header block, in order
    (what ``raw_fields`` gives for that name, found without splitting every field: the
    name is looked for after each line break of a lower-cased copy)."""
    low = b"\n" + raw.lower()   # low[i + 1] is raw[i]; a line break before the first line too
    key = b"\n" + name.lower().encode("latin-1", "replace")
    size, length = len(raw), len(key) - 1
    out: list[bytes] = []
    at = low.find(key)   # the name is raw[at:at + length]
    while at >= 0:
        colon = at + length
        while colon < size and raw[colon] in b" \t":
            colon += 1
        if colon < size and raw[colon] == 58:   # ":"
            end = raw.find(b"\n", colon)
            while 0 <= end < size - 1 and raw[end + 1] in b" \t":   # a folded line goes on
                end = raw.find(b"\n", end + 1)
            value = raw[colon + 1:] if end < 0 else raw[colon + 1:end]
            out.append(value.replace(b"\r", b"").replace(b"\n", b"").strip())
        at = low.find(key, at + 1)
    return out


def decoded_field(raw: bytes, name: str) -> list[str]:
    """The values of every ``name`` field of a header block as SEARCH compares them:
    unfolded, as text, encoded words decoded."""
    return [decode_words(bytes_to_text(v, None)) for v in field_values(raw, name)]


def header_text(raw: bytes) -> str:
    """The header block decoded for TEXT: ``Name: value`` lines."""
    return "\n".join(f"{n}: {decode_words(v)}" for n, v in parse_fields(raw))


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; adjacent words of one charset decode together."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending, pending_charset, pos = b"", "", 0
    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos:m.start()]
        charset = m.group(1).split("*")[0]  # RFC 2231 adds "*language"
        if gap.strip() or charset.lower() != pending_charset.lower():
            out.append(bytes_to_text(pending, pending_charset))
            pending = b""
            if gap.strip() or pos == 0:  # white space between two words goes (§6.2)
                out.append(gap)
        pending += _word_bytes(m.group(2), m.group(3))
        pending_charset, pos = charset, m.end()
    out.append(bytes_to_text(pending, pending_charset))
    out.append(value[pos:])
    return "".join(out)


def _word_bytes(encoding: str, text: str) -> bytes:
    data = text.encode("ascii", "replace")
    try:
        if encoding in "Qq":
            return binascii.a2b_qp(data, header=True)
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return data


_TAG = re.compile(r"<[^<>]*>")  # [^<>] keeps it linear on a flood of "<"


def message_text(message: bytes) -> str:
    """The decoded text of every text/* part, HTML tags dropped, parts joined by newlines.

    Mail nested deeper than the email package can recurse is searched as it is stored.
    """
    try:
        return "\n".join(_part_text(p) for p in email.message_from_bytes(message).walk()
                         if p.get_content_maintype() == "text" and not p.is_multipart())
    except RecursionError:
        return bytes_to_text(message[len(split_header(message)):], None)


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    text = bytes_to_text(payload if isinstance(payload, bytes) else b"", part.get_content_charset())
    if part.get_content_subtype() == "html":
        text = html.unescape(_TAG.sub("", text))
    return text


class MessageContext:
    """One message as SEARCH sees it: header and body parsed on first use, then cached.

    ``loader()`` returns the whole message; it is called at most once, and only for
    BODY/TEXT, or for headers when no ``header_loader`` is given.  ``header_loader()``
    returns the message's first bytes, at least up to the blank line after the header
    (the store may read the first ~64 KiB); what follows the blank line is ignored.
    ``known``: decoded header fields already at hand (a cache), by lower-case name;
    ``decoded`` gives them back with those this context decoded itself.
    """

    def __init__(self, seq: int, uid: int, flags: Iterable[str], recent: bool,
                 internaldate: float, size: int, loader: Callable[[], bytes],
                 largest_seq: int, largest_uid: int,
                 header_loader: Callable[[], bytes] | None = None,
                 known: dict[str, list[str]] | None = None) -> None:
        self.seq, self.uid = seq, uid
        self.largest_seq, self.largest_uid = largest_seq, largest_uid
        self.flags = frozenset(flags)
        self.recent, self.internaldate, self.size = recent, internaldate, size
        self._loader, self._header_loader = loader, header_loader
        self._message: bytes | None = None
        self._header: bytes | None = None
        self._decoded: dict[str, list[str]] = known if known is not None else {}
        self._body: str | None = None

    def message(self) -> bytes:
        if self._message is None:
            self._message = self._loader()
        return self._message

    def header_bytes(self) -> bytes:
        if self._header is None:
            use_full = self._message is not None or self._header_loader is None
            self._header = split_header(self.message() if use_full else self._header_loader())
        return self._header

    @property
    def decoded(self) -> dict[str, list[str]]:
        return self._decoded

    def header(self, name: str) -> list[str]:
        key = name.lower()
        if key not in self._decoded:
            self._decoded[key] = decoded_field(self.header_bytes(), key)
        return self._decoded[key]

    def body_text(self) -> str:
        if self._body is None:
            self._body = message_text(self.message())
        return self._body
