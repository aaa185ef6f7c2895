"""FETCH (RFC 3501 §6.4.5, §7.4.2): the items a client asks for and the data it gets back.

Model
-----
`parse_items` reads the FETCH argument (a macro, one item or a parenthesised list; as a
string, or as the parser's tokens) into `FetchItem`s, or raises `ValueError` with a
message the session sends in its BAD.  `render` turns items and one message into the
parenthesised FETCH data, ``(FLAGS (\\Seen) UID 7 BODY[] {n}\\r\\n...)``, as a list of
pieces: `bytes`, or an iterable of `bytes` for a large literal, so a 50 MB message is
written in 64 KiB slices of the one bytes object the store read.  The message is asked
for its bytes only when an item needs them (FLAGS, UID, RFC822.SIZE and INTERNALDATE
never do) and its MIME structure (`mime.parse_structure`) at most once.  `sets_seen`
tells the session whether the items imply \\Seen; the session stores it and adds FLAGS.

Decisions
---------
* A section that names nothing (BODY[9], BODY[2.HEADER] when part 2 is not
  message/rfc822) answers the empty string: RFC 3501 says nothing for this case, every
  client reads "" as an empty part, and Dovecot answers {0} too.  Part numbers are
  strict (RFC 3501 §6.4.5: a non-multipart has only a part 1), so BODY[1.1] of a
  text/plain part is "", where Dovecot treats N.1 of a leaf as N itself.
* Strings are quoted when 7-bit, free of CR, LF and NUL and at most `QUOTED_MAX`
  bytes; otherwise literals.  Message text is always a literal ("" when empty); a NUL in
  it is sent as 0x80, the same length (literals may not carry NUL; Dovecot does this).
* ENVELOPE's subject and names are "for humans" (Dovecot's term): whitespace runs,
  folding included, become one space and the ends are trimmed; encoded-words are sent
  as they are, RFC 3501 leaves decoding to the client.  Date, Message-ID, In-Reply-To
  and body-structure strings are only unfolded.
* BINARY (RFC 3516) decodes base64 and quoted-printable; another encoding raises
  `UnknownEncoding` (the session answers NO [UNKNOWN-CTE]).  A multipart or
  message/rfc822 part is sent as stored (Dovecot re-encodes an embedded message's parts).
"""
from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Iterator, Protocol, Sequence, Union

from .mime import Address, Part, envelope_fields, find_part, iter_fields, parse_structure

QUOTED_MAX = 512          # longer strings go as literals
CHUNK = 1 << 16           # literal slices handed to the writer
MAX_NUMBER = 2**32 - 1
MACROS = {"ALL": "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE",
          "FAST": "FLAGS INTERNALDATE RFC822.SIZE",
          "FULL": "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY"}
SIMPLE = {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE", "UID",
          "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
SECTIONED = {"BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"}
TEXTS = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"}
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
EMPTY_PART = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'
_LITERAL_NEEDED = re.compile(rb"[\x00\r\n\x80-\xff]")
_WORD = re.compile(r"[A-Za-z0-9.]*")
_NUMBER = re.compile(r"[0-9]+")
_QUOTED = re.compile(r'"((?:[^"\\\r\n]|\\["\\])*)"')
_LITERAL = re.compile(r"\{([0-9]+)\+?\}\r\n")
_ASTRING = re.compile(r"[^\x00-\x20\x7f(){%*\"\\]+")
Token = Union[str, bytes, list]
Piece = Union[bytes, Iterable[bytes]]


class UnknownEncoding(Exception):
    """BINARY of a part whose Content-Transfer-Encoding we cannot undo."""


class Message(Protocol):
    uid: int
    flags: list[str]
    internaldate: float   # epoch seconds
    size: int             # RFC822.SIZE: the size with CRLF line ends

    def data(self) -> bytes: ...


@dataclass(frozen=True)
class FetchItem:
    """One fetch-att.  `section` is None without brackets, () for BODY[] / BODY[TEXT]."""
    name: str
    section: tuple[int, ...] | None = None
    text: str = ""                      # "", HEADER, HEADER.FIELDS[.NOT], TEXT, MIME
    fields: tuple[str, ...] = ()        # HEADER.FIELDS names, upper case
    partial: tuple[int, int] | None = None

    def label(self) -> bytes:
        """The name the response gives: BODY.PEEK[1] answers as BODY[1], <o.n> as <o>."""
        if self.section is None:
            return self.name.encode()
        spec = ".".join([str(n) for n in self.section] + ([self.text] if self.text else []))
        if self.fields:
            spec += " (" + " ".join(_astring(f) for f in self.fields) + ")"
        name = self.name.replace(".PEEK", "")
        origin = f"<{self.partial[0]}>" if self.partial else ""
        return f"{name}[{spec}]{origin}".encode("utf-8", "surrogateescape")


# --- parsing -------------------------------------------------------------------------

def parse_items(tokens: str | Sequence[Token]) -> list[FetchItem]:
    """The FETCH argument: "ALL", "BODY[1]", "(FLAGS UID)", or the parser's tokens
    (atoms `str`, strings `bytes`, lists `list`; several tokens are read as one list)."""
    if isinstance(tokens, str):
        text = tokens
    else:
        text = " ".join(_token_text(t) for t in tokens)
        if len(tokens) > 1:
            text = f"({text})"
    known = _PARSED.get(text)
    if known is not None:
        return list(known)
    if len(_PARSED) > 256:
        _PARSED.clear()
    items = _parse_items(text)
    _PARSED[text] = tuple(items)   # clients send the same few item lists again and again
    return items


_PARSED: dict[str, tuple[FetchItem, ...]] = {}


def _parse_items(text: str) -> list[FetchItem]:
    if text.strip().upper() in MACROS:
        text = f"({MACROS[text.strip().upper()]})"
    r = _Reader(text.strip())
    if r.peek() == "(":
        r.i += 1
        items = [_item(r)]
        while r.peek() == " ":
            r.spaces()
            items.append(_item(r))
        r.expect(")")
    else:
        items = [_item(r)]
    if r.i != len(r.s):
        raise ValueError(f"unexpected {r.s[r.i:r.i + 20]!r} in FETCH items")
    return items


def sets_seen(items: Iterable[FetchItem]) -> bool:
    """BODY[...], BINARY[...], RFC822 and RFC822.TEXT set \\Seen (RFC 3501, RFC 3516)."""
    return any(i.name in ("RFC822", "RFC822.TEXT", "BINARY") or
               (i.name == "BODY" and i.section is not None) for i in items)


def _token_text(t: Token) -> str:
    if isinstance(t, list):
        return "(" + " ".join(_token_text(x) for x in t) + ")"
    if isinstance(t, bytes):
        return _quote(t.decode("utf-8", "surrogateescape"))
    return t


class _Reader:
    def __init__(self, s: str) -> None:
        self.s, self.i = s, 0

    def peek(self) -> str:
        return self.s[self.i:self.i + 1]

    def expect(self, c: str) -> None:
        if self.peek() != c:
            got = self.s[self.i:self.i + 20] or "end of line"
            raise ValueError(f"expected {c!r} in FETCH items, got {got!r}")
        self.i += 1

    def spaces(self) -> None:
        while self.peek() == " ":
            self.i += 1

    def word(self) -> str:
        return self.match(_WORD).upper()

    def match(self, pattern: re.Pattern[str]) -> str:
        m = pattern.match(self.s, self.i)
        if not m:
            return ""
        self.i = m.end()
        return m.group()

    def number(self, what: str) -> int:
        digits = self.match(_NUMBER)
        if not digits or int(digits) > MAX_NUMBER:
            raise ValueError(f"bad {what} in FETCH items")
        return int(digits)

    def astring(self) -> str:
        """A header field name: atom, quoted string or literal."""
        if self.peek() == '"':
            quoted = self.match(_QUOTED)
            if not quoted:
                raise ValueError("bad quoted string in FETCH items")
            return re.sub(r"\\(.)", r"\1", quoted[1:-1])
        if self.peek() == "{":
            head = _LITERAL.match(self.s, self.i)
            if not head or head.end() + int(head.group(1)) > len(self.s):
                raise ValueError("bad literal in FETCH items")
            self.i = head.end() + int(head.group(1))
            return self.s[head.end():self.i]
        atom = self.match(_ASTRING)
        if not atom:
            raise ValueError("expected a header field name in FETCH items")
        return atom


def _item(r: _Reader) -> FetchItem:
    name = r.word()
    if name in SECTIONED and r.peek() == "[":
        section, text, fields = _section(r, name.startswith("BINARY"))
        partial = _partial(r) if r.peek() == "<" and name != "BINARY.SIZE" else None
        return FetchItem(name, section, text, fields, partial)
    if name in SIMPLE:
        return FetchItem(name)
    if name in SECTIONED:
        raise ValueError(f"{name} needs a [section]")
    raise ValueError(f"unknown FETCH item {name or r.s[r.i:r.i + 20]!r}")


def _section(r: _Reader, binary: bool) -> tuple[tuple[int, ...], str, tuple[str, ...]]:
    r.expect("[")
    numbers: list[int] = []
    while r.peek().isdigit():
        n = r.number("part number")
        if n == 0:
            raise ValueError("part numbers start at 1")
        numbers.append(n)
        if r.peek() != ".":
            break
        r.i += 1
        if not r.peek().isalnum():
            raise ValueError("bad section in FETCH items")
    text, fields = "", ()
    if r.peek() != "]":
        text = r.word()
        if not text:
            r.expect("]")
        if binary or text not in TEXTS or (text == "MIME" and not numbers):
            raise ValueError(f"bad section text {text or r.s[r.i:r.i + 20]!r}")
    if text.startswith("HEADER.FIELDS"):
        r.expect(" ")
        r.expect("(")
        names = [r.astring()]
        while r.peek() == " ":
            r.spaces()
            names.append(r.astring())
        r.expect(")")
        fields = tuple(n.upper() for n in names)
    r.expect("]")
    return tuple(numbers), text, fields


def _partial(r: _Reader) -> tuple[int, int]:
    r.expect("<")
    origin = r.number("partial origin")
    r.expect(".")
    length = r.number("partial length")
    r.expect(">")
    if length == 0:
        raise ValueError("partial length must not be 0")
    return origin, length


# --- rendering -----------------------------------------------------------------------

def render(items: Sequence[FetchItem], msg: Message) -> list[Piece]:
    """The parenthesised FETCH data for one message, without "* n FETCH ".

    The caller writes each `bytes` piece and each chunk of the other (iterable) pieces,
    in order; joined, they are the response.  A repeated item is answered once.
    """
    view = _View(msg)
    out: list[Piece] = []
    buf = bytearray(b"(")
    seen: set[FetchItem] = set()
    for item in items:
        if item in seen:
            continue
        if seen:
            buf += b" "
        seen.add(item)
        for piece in _render_item(item, view):
            if isinstance(piece, (bytes, bytearray)):
                buf += piece
            else:
                out += [bytes(buf), piece]
                buf = bytearray()
    buf += b")"
    out.append(bytes(buf))
    return out


class _View:
    """The message's bytes and structure, read on first use."""

    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self._data: bytes | None = None
        self._root: Part | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.msg.data()
        return self._data

    @property
    def root(self) -> Part:
        if self._root is None:
            self._root = parse_structure(self.data)
        return self._root


def _render_item(item: FetchItem, view: _View) -> Iterator[Piece]:
    name, msg = item.name, view.msg
    if name == "FLAGS":
        yield b"FLAGS (" + " ".join(msg.flags).encode() + b")"
    elif name == "UID":
        yield b"UID %d" % msg.uid
    elif name == "RFC822.SIZE":
        yield b"RFC822.SIZE %d" % msg.size
    elif name == "INTERNALDATE":
        yield b'INTERNALDATE "' + internaldate(msg.internaldate).encode() + b'"'
    elif name == "ENVELOPE":
        yield b"ENVELOPE " + envelope(view.data, view.root)
    elif name in ("BODY", "BODYSTRUCTURE") and item.section is None:
        yield name.encode() + b" " + bodystructure(view.data, view.root, name == "BODYSTRUCTURE")
    elif name == "RFC822":
        yield b"RFC822 "
        yield from _literal(view.data, 0, len(view.data))
    elif name.startswith("RFC822."):
        root = view.root
        yield name.encode() + b" "
        yield from _literal(view.data, *((root.start, root.body_start) if name.endswith("HEADER")
                                         else (root.body_start, root.end)))
    elif name.startswith("BINARY"):
        yield from _binary(item, view)
    else:
        yield item.label() + b" "
        yield from _section_content(item, view)


def _section_content(item: FetchItem, view: _View) -> Iterator[Piece]:
    data = view.data
    if not item.section and not item.text:   # BODY[]: the whole message, no parsing
        yield from _literal(data, *_clip((0, len(data)), item.partial))
        return
    root = view.root
    target = find_part(root, list(item.section)) if item.section else root
    message = root if not item.section else target.message if target else None
    if target is None or (item.text not in ("", "MIME") and message is None):
        span: tuple[int, int] | bytes = b""
    elif item.text == "MIME":
        span = (target.start, target.body_start)
    elif item.text == "":
        span = (target.body_start, target.end) if item.section else (0, len(data))
    elif item.text == "TEXT":
        span = (message.body_start, message.end)
    elif item.text == "HEADER":
        span = (message.start, message.body_start)
    else:
        span = header_fields(data, message, item.fields, item.text.endswith(".NOT"))
    if isinstance(span, bytes):
        data, span = span, (0, len(span))
    yield from _literal(data, *_clip(span, item.partial))


def header_fields(data: bytes, message: Part, names: Sequence[str], exclude: bool) -> bytes:
    """HEADER.FIELDS[.NOT]: the matching fields in the message's order, with the blank
    line when the header has one (RFC 3501: it is part of every header fetch)."""
    wanted = {n.lower() for n in names}
    kept = [data[f.start:f.end] for f in iter_fields(data, message.start, message.body_start)
            if (f.name.lower() in wanted) != exclude]
    header = data[max(message.start, message.body_start - 4):message.body_start]
    blank = header in (b"\n", b"\r\n") or header.endswith((b"\n\n", b"\n\r\n"))
    kept = [f if f.endswith(b"\n") else f + b"\r\n" for f in kept]
    return b"".join(kept) + (b"\r\n" if blank else b"")


def _clip(span: tuple[int, int], partial: tuple[int, int] | None) -> tuple[int, int]:
    start, end = span
    if partial:
        start = min(start + partial[0], end)
        end = min(start + partial[1], end)
    return start, end


def _literal(data: bytes, start: int, end: int, binary: bool = False) -> Iterator[Piece]:
    """``data[start:end]`` as a literal, in slices when large.  A NUL becomes 0x80, or,
    for BINARY, makes it a literal8 (RFC 3516)."""
    if end <= start:
        yield b'""'
        return
    nul = data.find(b"\0", start, end) >= 0
    yield (b"~{%d}\r\n" if nul and binary else b"{%d}\r\n") % (end - start)
    nul = nul and not binary
    if end - start <= CHUNK:
        chunk = data[start:end]
        yield chunk.replace(b"\0", b"\x80") if nul else chunk
    else:
        yield _slices(data, start, end, nul)


def _slices(data: bytes, start: int, end: int, nul: bool) -> Iterator[bytes]:
    for i in range(start, end, CHUNK):
        chunk = data[i:min(i + CHUNK, end)]
        yield chunk.replace(b"\0", b"\x80") if nul else chunk


def _binary(item: FetchItem, view: _View) -> Iterator[Piece]:
    """RFC 3516: the part with its transfer encoding undone (BINARY[] is the message)."""
    target = find_part(view.root, list(item.section)) if item.section else None
    if item.section and target is None:
        data, start, end = b"", 0, 0
    elif target is None:
        data, start, end = view.data, 0, len(view.data)
    else:
        data, start, end = decode_part(view.data, target)
    if item.name == "BINARY.SIZE":
        yield item.label() + b" %d" % (end - start)
        return
    yield item.label() + b" "
    yield from _literal(data, *_clip((start, end), item.partial), binary=True)


def decode_part(data: bytes, part: Part) -> tuple[bytes, int, int]:
    """The part's content with base64 / quoted-printable undone, as (buffer, start, end);
    the message's own bytes, not copied, when there is nothing to undo."""
    encoding = (part.encoding or "7bit").lower()
    if part.is_multipart or part.message is not None or \
            encoding in ("7bit", "8bit", "binary"):
        return data, part.body_start, part.end
    body = data[part.body_start:part.end]
    if encoding == "base64":
        try:
            decoded = binascii.a2b_base64(body)
        except binascii.Error:
            raise UnknownEncoding("invalid base64 content") from None
    elif encoding == "quoted-printable":
        decoded = binascii.a2b_qp(body)
    else:
        raise UnknownEncoding(f"unknown Content-Transfer-Encoding {part.encoding!r}")
    return decoded, 0, len(decoded)


# --- ENVELOPE, BODYSTRUCTURE, strings ---------------------------------------------

def internaldate(epoch: float) -> str:
    """"dd-Mon-yyyy hh:mm:ss +zzzz" in the server's local time zone."""
    try:
        d = datetime.fromtimestamp(epoch, timezone.utc).astimezone()
    except (OverflowError, OSError, ValueError):
        d = datetime.fromtimestamp(0, timezone.utc)
    minutes = int(d.utcoffset().total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return f"{d.day:02d}-{MONTHS[d.month - 1]}-{d.year:04d} {d:%H:%M:%S} {zone}"


def envelope(data: bytes, message: Part) -> bytes:
    """ENVELOPE of `message` (the root, or a message/rfc822 part's `message`)."""
    strings, addresses = envelope_fields(data, message)
    sender = addresses.get("from")   # RFC 3501: also for an absent or empty Sender/Reply-To
    parts = [nstring(strings.get("date")), nstring(_for_humans(strings.get("subject"))),
             _addresses(sender), _addresses(addresses.get("sender") or sender),
             _addresses(addresses.get("reply-to") or sender), _addresses(addresses.get("to")),
             _addresses(addresses.get("cc")), _addresses(addresses.get("bcc")),
             nstring(strings.get("in-reply-to")), nstring(strings.get("message-id"))]
    return b"(" + b" ".join(parts) + b")"


def _addresses(addresses: list[Address] | None) -> bytes:
    if not addresses:
        return b"NIL"
    """An address list; a group's end, all None, comes out as (NIL NIL NIL NIL)."""
    out = [b"(%s %s %s %s)" % (nstring(_for_humans(name)), nstring(adl), nstring(mailbox),
                               nstring(host)) for name, adl, mailbox, host in addresses]
    return b"(" + b"".join(out) + b")"


def _for_humans(value: str | None) -> str | None:
    """Whitespace runs (folding included) as one space, ends trimmed."""
    return None if value is None else re.sub(r"[ \t\r\n]+", " ", value).strip(" ")


def bodystructure(data: bytes, part: Part, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (`extended`) or BODY of one part, RFC 3501 §7.4.2."""
    if part.is_multipart:
        children = b"".join(bodystructure(data, c, extended) for c in part.children)
        # No part at all is not allowed: Dovecot writes an empty text/plain one.
        children = children or EMPTY_PART + (b" NIL NIL NIL NIL)" if extended else b")")
        out = [children + b" " + nstring(part.subtype)]
        if extended:
            out += [_params(part.params), *_common_extension(part)]
        return b"(" + b" ".join(out) + b")"
    params = list(part.params)
    if part.is_text and not any(k.lower() == "charset" for k, _ in params):
        params.append(("charset", "us-ascii"))
    out = [nstring(part.type), nstring(part.subtype), _params(params), nstring(part.id),
           nstring(part.description), nstring(part.encoding or "7bit"), b"%d" % part.size]
    if part.message is not None:
        out += [envelope(data, part.message), bodystructure(data, part.message, extended),
                b"%d" % part.lines]
    elif part.is_text:
        out.append(b"%d" % part.lines)
    if extended:
        out += [nstring(part.md5), *_common_extension(part)]
    return b"(" + b" ".join(out) + b")"


def _common_extension(part: Part) -> list[bytes]:
    """body-fld-dsp, body-fld-lang, body-fld-loc."""
    disposition = b"NIL" if part.disposition is None else \
        b"(" + nstring(part.disposition[0]) + b" " + _params(part.disposition[1]) + b")"
    language = b"NIL" if not part.language else \
        b"(" + b" ".join(nstring(t) for t in part.language) + b")"
    return [disposition, language, nstring(part.location)]


def _params(params: list[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(nstring(k) + b" " + nstring(v) for k, v in params) + b")"


def nstring(value: str | None) -> bytes:
    """NIL, a quoted string, or a literal when the value is 8-bit, multi-line or long."""
    if value is None:
        return b"NIL"
    raw = value.replace("\0", "\ufffd").encode("utf-8", "surrogateescape")
    if len(raw) <= QUOTED_MAX and not _LITERAL_NEEDED.search(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _astring(value: str) -> str:
    """A header field name as the response label echoes it: an atom when it can be."""
    atom = _ASTRING.fullmatch(value) and "]" not in value and value.upper() != "NIL"
    return value if atom else _quote(value)
