"""A message's MIME structure as byte offsets: what BODYSTRUCTURE and BODY[section] need.

Model
-----
`parse_structure` takes the whole message (CRLF line ends, as IMAP sends it; a bare LF
is tolerated) and returns a tree of `Part` objects.  A part never holds bytes: it says
where, inside that one bytes object, its header (``data[start:body_start]``, the blank
line included) and its body (``data[body_start:end]``) lie, plus what its Content-*
fields say.  A multipart's `children` are its parts; a message/rfc822 part's `message`
is the embedded message, itself a `Part` whose header is that message's header.  So a
50 MB attachment is scanned with ``bytes.find`` and ``bytes.count`` and never copied.
`find_part` maps IMAP part numbers onto the tree; `iter_fields` walks a header's fields
(for HEADER.FIELDS) and `envelope_fields` gathers what ENVELOPE needs, address lists
with their groups parsed by `parse_addresses`.

Boundaries follow RFC 2046 and Dovecot's parser: a delimiter line is "--" and a
boundary at the start of a line, compared as a prefix (the RFC's note to implementors),
the longest active boundary winning, the innermost among equals; the CRLF before it
belongs to the delimiter.  A boundary of an enclosing multipart ends the inner ones (a
missing close delimiter is tolerated), preamble and epilogue belong to no child, and a
boundary line inside a part's header ends that header.

Malformed input never raises.  A Content-Type without a type/subtype counts as absent
(text/plain; charset=us-ascii, RFC 2045 §5.2), so does a multipart without a boundary,
which keeps its raw body as one text/plain part; Content-* fields count only in a MIME
entity (Mime-Version or Content-Type present, or a multipart's child, as in Dovecot).
Nesting deeper than `MAX_DEPTH` or more than `MAX_PARTS` parts are not descended: such a
part is reported as application/octet-stream with its raw body, as Dovecot does.
Strings keep the header's raw bytes, decoded as UTF-8 with surrogateescape, so
``s.encode("utf-8", "surrogateescape")`` gives back the exact bytes (8-bit headers).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple
from urllib.parse import quote

MAX_DEPTH = 100        # nested multiparts / message/rfc822 (Dovecot's default)
MAX_PARTS = 10_000     # parts in one message (Dovecot's default)
MAX_HEADER = 1 << 20   # bytes of one header that are read for fields
MAX_BOUNDARY = 80      # longer boundaries are cut (Dovecot: prefix matching still works)
_TSPECIALS = set('()<>@,;:\\"/[]?=')
Params = list[tuple[str, str]]


@dataclass(eq=False)
class Part:
    """One entity: header at ``data[start:body_start]``, body at ``data[body_start:end]``."""
    start: int
    body_start: int
    end: int
    type: str = "text"
    subtype: str = "plain"
    params: Params = field(default_factory=list)
    id: str | None = None
    description: str | None = None
    encoding: str | None = None          # None: absent, "7bit" by default
    md5: str | None = None
    disposition: tuple[str, Params] | None = None
    language: list[str] | None = None
    location: str | None = None
    lines: int = 0                       # LF count of the body (0 for a multipart)
    children: list[Part] = field(default_factory=list)
    message: Part | None = None          # message/rfc822: the embedded message

    @property
    def size(self) -> int:
        return self.end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.type.lower() == "multipart"

    @property
    def is_text(self) -> bool:
        return self.type.lower() == "text"

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.params if k.lower() == name.lower()), None)


class Field(NamedTuple):
    """One header field: ``data[start:end]`` is the whole field, folding and CRLF included."""
    name: str
    start: int
    value: int
    end: int


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def iter_fields(data: bytes, start: int, end: int) -> Iterator[Field]:
    """The fields of the header at ``data[start:end]``, in order; the blank line is no field.

    A line without a colon is a field named by the whole line (Dovecot does likewise),
    so HEADER.FIELDS.NOT keeps it.  Only the first `MAX_HEADER` bytes are looked at.
    """
    chunk = data[start:min(end, start + MAX_HEADER)]
    pos, current = 0, None
    while pos < len(chunk):
        eol = chunk.find(b"\n", pos)
        eol = len(chunk) if eol < 0 else eol + 1
        if chunk[pos:pos + 1] in (b" ", b"\t") and current is not None:
            current[2] = eol
        elif chunk[pos:eol].strip(b"\r\n"):
            if current is not None:
                yield _field(chunk, start, *current)
            current = [pos, chunk.find(b":", pos, eol), eol]
        pos = eol
    if current is not None:
        yield _field(chunk, start, *current)


def _field(chunk: bytes, base: int, pos: int, colon: int, end: int) -> Field:
    if colon < 0:
        name, value = chunk[pos:end].rstrip(b"\r\n"), end
    else:
        name, value = chunk[pos:colon].rstrip(b" \t"), colon + 1
    return Field(text(name), base + pos, base + value, base + end)


def field_value(data: bytes, f: Field) -> str:
    """The field's value: leading blanks dropped, unfolded (CR and LF removed)."""
    raw = data[f.value:f.end].lstrip(b" \t").rstrip(b"\r\n")
    return text(raw.replace(b"\n", b"").replace(b"\r", b""))


# --- RFC 2045 / 2231 values: type/subtype, token, parameters --------------------------

class _Lexer:
    """Tokens of a structured MIME field value, skipping blanks and (nested) comments."""

    def __init__(self, s: str) -> None:
        self.s, self.i = s, 0

    def skip(self) -> None:
        s, depth = self.s, 0
        while self.i < len(s) and (depth or s[self.i] in " \t\r\n("):
            c = s[self.i]
            if c == "\\" and depth:
                self.i += 1
            elif c == "(":
                depth += 1
            elif c == ")" and depth:
                depth -= 1
            self.i += 1

    def peek(self) -> str:
        self.skip()
        return self.s[self.i:self.i + 1]

    def token(self) -> str:
        self.skip()
        j = self.i
        while j < len(self.s) and self.s[j] not in _TSPECIALS and self.s[j] > " ":
            j += 1
        tok, self.i = self.s[self.i:j], j
        return tok

    def value(self) -> str | None:
        """A token or quoted string; None for an unterminated quoted string."""
        if self.peek() != '"':
            return self.token()
        out, self.i = [], self.i + 1
        while self.i < len(self.s) and self.s[self.i] != '"':
            if self.s[self.i] == "\\":
                self.i += 1
            out.append(self.s[self.i:self.i + 1])
            self.i += 1
        self.i += 1
        return "".join(out) if self.i <= len(self.s) else None


def _parse_params(lex: _Lexer) -> Params:
    """``*(";" attribute "=" value)``, RFC 2231 continuations joined as Dovecot does."""
    raw: Params = []
    while lex.peek() == ";":
        lex.i += 1
        name = lex.token()
        if not name or lex.peek() != "=":
            continue
        lex.i += 1
        value = lex.value()
        if value is None:
            break
        raw.append((name, value))
    return _join_continuations(raw)


def _join_continuations(raw: Params) -> Params:
    """name*0, name*1*, ... become one "name" ("name*" when the first piece is encoded).

    An unindexed parameter of the same name wins over the pieces (as in Dovecot).
    """
    slots: list[tuple[str, str | None]] = []
    pieces: dict[str, list[tuple[int, bool, str]]] = {}
    for name, value in raw:
        base, star, rest = name.partition("*")
        num = rest[:-1] if rest.endswith("*") else rest
        if star and num.isascii() and num.isdigit():
            if base.lower() not in pieces:
                pieces[base.lower()] = []
                slots.append((base, None))
            pieces[base.lower()].append((int(num), rest.endswith("*"), value))
        else:
            slots.append((name, value))
    plain = {n.lower().rstrip("*") for n, v in slots if v is not None}
    out: Params = []
    for name, value in slots:
        if value is not None:
            out.append((name, value))
        elif name.lower() not in plain:
            parts = sorted(pieces[name.lower()], key=lambda p: p[0])
            encoded = parts[0][1]
            value = "".join(v if ext or not encoded else quote(v, safe="")
                            for _, ext, v in parts)
            out.append((name + "*" if encoded else name, value))
    return out


def parse_content_type(value: str) -> tuple[str, str, Params] | None:
    """(type, subtype, params) or None when there is no type "/" subtype."""
    lex = _Lexer(value)
    ctype = lex.token()
    if not ctype or lex.peek() != "/":
        return None
    lex.i += 1
    subtype = lex.token()
    if not subtype:
        return None
    return ctype, subtype, _parse_params(lex)


def parse_disposition(value: str) -> tuple[str, Params] | None:
    lex = _Lexer(value)
    kind = lex.token()
    return (kind, _parse_params(lex)) if kind else None


def parse_language(value: str) -> list[str] | None:
    lex, tags = _Lexer(value), []
    while tag := lex.token():
        tags.append(tag)
        if lex.peek() != ",":
            break
        lex.i += 1
    return tags or None


def _token_only(value: str) -> str | None:
    lex = _Lexer(value)
    tok = lex.token()
    return tok if tok and not lex.peek() else None


# --- the structure -------------------------------------------------------------------

def parse_structure(data: bytes) -> Part:
    """The message as a tree of parts; never raises on malformed input."""
    return _Parser(data).entity(0, mime=False, digest=False, depth=0)[0]


Hit = tuple[int, int]   # (offset of a delimiter line, index of its boundary on the stack)


class _Parser:
    """One pass over the message with a stack of the active boundaries.

    Delimiter lines are found by a regular expression of the active boundaries, so the
    search runs at C speed and stops only at real delimiters; every delimiter ends a
    part, and `MAX_PARTS` bounds them, so the work is linear in the message size.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.stack: list[bytes] = []      # active boundaries, innermost last
        self.parts = 0
        self._patterns: dict[tuple[bytes, ...], re.Pattern[bytes]] = {}

    def entity(self, pos: int, mime: bool, digest: bool, depth: int) -> tuple[Part, Hit | None]:
        """The entity whose header starts at `pos`, and the delimiter line that ended it."""
        self.parts += 1
        body_start, hit, complete = self.header_end(pos)
        part = Part(pos, body_start, body_start)
        if digest:
            part.type, part.subtype = "message", "rfc822"
        self.apply_fields(part, mime)
        rfc822 = (part.type.lower(), part.subtype.lower()) == ("message", "rfc822")
        if (part.is_multipart or rfc822) and (depth + 1 >= MAX_DEPTH or self.parts >= MAX_PARTS):
            part.type, part.subtype, rfc822 = "application", "octet-stream", False
        boundary = part.param("boundary") if part.is_multipart else None
        if part.is_multipart and not boundary:
            part.type, part.subtype, part.params = "text", "plain", []
        if boundary:
            raw = boundary.encode("utf-8", "surrogateescape")[:MAX_BOUNDARY]
            if not complete and self.opens_with(pos, hit, raw):
                part.body_start = body_start = hit[0]
                complete = True
            if complete:
                hit, part.end = self.multipart(part, raw, depth)
        elif rfc822:
            if complete:
                part.message, hit = self.entity(body_start, False, False, depth + 1)
            else:
                part.message = Part(body_start, body_start, body_start)
        if complete and not boundary:
            if not rfc822:
                hit = self.next_boundary(body_start)
            part.end = self.cut(body_start, hit)
        if not boundary:                          # BODYSTRUCTURE needs no multipart's
            part.lines = self.data.count(b"\n", body_start, part.end)
        return part, hit

    def opens_with(self, pos: int, hit: Hit | None, boundary: bytes) -> bool:
        """Is `hit`, right after the blank line of the header at `pos`, the multipart's own
        first delimiter (which had matched an outer boundary that it starts with)?"""
        if hit is None or not self.data.endswith((b"\n\n", b"\n\r\n"), pos, hit[0]):
            return False
        self.stack.append(boundary)
        try:
            return self.boundary_at(hit[0]) == len(self.stack) - 1
        finally:
            self.stack.pop()

    def header_end(self, pos: int) -> tuple[int, Hit | None, bool]:
        """Where the body starts; if no blank line ends the header, the delimiter line that
        does (or None at the end of data) and False.  The search widens step by step, so
        a part's header costs what lies before its blank line, not the rest of the data."""
        data, window = self.data, 4096
        while True:
            end = min(pos + window, len(data))
            hit = self.next_boundary(pos, end + MAX_BOUNDARY + 4)
            limit = self.cut(pos, hit) if hit else end
            for blank in (b"\n", b"\r\n"):
                if data.startswith(blank, pos) and pos + len(blank) <= limit:
                    return pos + len(blank), None, True
            crlf = data.find(b"\n\r\n", pos, limit)
            lf = data.find(b"\n\n", pos, crlf + 2 if crlf >= 0 else limit)
            if lf >= 0 or crlf >= 0:
                return (lf + 2 if lf >= 0 else crlf + 3), None, True
            if hit is not None or end == len(data):
                return limit, hit, False
            window *= 4

    def apply_fields(self, part: Part, mime: bool) -> None:
        found: dict[str, str] = {}
        for f in iter_fields(self.data, part.start, part.body_start):
            name = f.name.lower()
            if (name.startswith("content-") or name == "mime-version") and name not in found:
                found[name] = field_value(self.data, f)
        if not (mime or "content-type" in found or "mime-version" in found):
            return
        ctype = parse_content_type(found.get("content-type", ""))
        if ctype:
            part.type, part.subtype, part.params = ctype
        part.id = found.get("content-id")
        part.description = found.get("content-description")
        part.encoding = _token_only(found.get("content-transfer-encoding", ""))
        part.md5 = found.get("content-md5")
        part.disposition = parse_disposition(found.get("content-disposition", ""))
        part.language = parse_language(found.get("content-language", ""))
        part.location = found.get("content-location")

    def multipart(self, part: Part, boundary: bytes, depth: int) -> tuple[Hit | None, int]:
        """Reads the children; returns the delimiter line that ended the multipart and
        where its body ends."""
        mine = len(self.stack)
        self.stack.append(boundary)
        digest = part.subtype.lower() == "digest"
        hit = self.next_boundary(part.body_start)           # skips the preamble
        while hit is not None and hit[1] == mine:
            after = self.line_after(hit[0])
            if self.data.startswith(b"--", hit[0] + 2 + len(boundary)):
                del self.stack[mine:]                       # close delimiter: epilogue
                hit = self.next_boundary(after)
                if hit is not None and hit[0] == after:     # no epilogue: the close
                    return hit, after                       # line keeps its CRLF
                break
            child, hit = self.entity(after, True, digest, depth + 1)
            part.children.append(child)
        del self.stack[mine:]
        return hit, self.cut(part.body_start, hit)

    def next_boundary(self, pos: int, endpos: int | None = None) -> Hit | None:
        """The first delimiter line of an active boundary at or after line start `pos`
        (whose boundary ends before `endpos`)."""
        if not self.stack or self.parts >= MAX_PARTS:
            return None
        index = self.boundary_at(pos)
        if index is not None:
            return pos, index
        pattern = self._patterns.get(tuple(self.stack))
        if pattern is None:
            names = sorted(set(self.stack), key=len, reverse=True)
            pattern = re.compile(b"\n--(?:" + b"|".join(map(re.escape, names)) + b")")
            self._patterns[tuple(self.stack)] = pattern
        endpos = len(self.data) if endpos is None else endpos
        while m := pattern.search(self.data, pos, endpos):
            index = self.boundary_at(m.start() + 1)
            if index is not None:
                return m.start() + 1, index
            pos = m.end()
        return None

    def boundary_at(self, pos: int) -> int | None:
        """The stack index of the boundary that the line at `pos` is a delimiter of: the
        longest that the line starts with, the innermost of equals, one that is the
        whole line (but for a closing "--") preferred, as in Dovecot."""
        data = self.data
        if not data.startswith(b"--", pos):
            return None
        eol = data.find(b"\n", pos, pos + MAX_BOUNDARY + 8)
        eol = min(len(data), pos + MAX_BOUNDARY + 8) if eol < 0 else eol
        length = eol - pos - 2 - (data[eol - 1:eol] == b"\r")
        best = None
        for i in range(len(self.stack) - 1, -1, -1):
            b = self.stack[i]
            if len(b) <= length and data.startswith(b, pos + 2) and \
                    (best is None or len(b) > len(self.stack[best])):
                best = i
                if length == len(b) or (length == len(b) + 2 and
                                        data.startswith(b"--", pos + 2 + len(b))):
                    break
        return best

    def line_after(self, pos: int) -> int:
        eol = self.data.find(b"\n", pos)
        return len(self.data) if eol < 0 else eol + 1

    def cut(self, body_start: int, hit: Hit | None) -> int:
        """End of a body that the delimiter line `hit` ends (its CRLF is the delimiter's)."""
        if hit is None:
            return len(self.data)
        line = hit[0]
        if line <= body_start:
            return body_start
        newline = 2 if self.data[line - 2:line] == b"\r\n" else 1
        return max(body_start, line - newline)


# --- ENVELOPE fields: RFC 5322 address lists with groups ----------------------------

Address = tuple[str | None, str | None, str | None, str | None]   # name, adl, mailbox, host
GROUP_END: Address = (None, None, None, None)
ADDRESS_FIELDS = ("from", "sender", "reply-to", "to", "cc", "bcc")
STRING_FIELDS = ("date", "subject", "in-reply-to", "message-id")


def envelope_fields(data: bytes, part: Part
                    ) -> tuple[dict[str, str], dict[str, list[Address]]]:
    """The ENVELOPE's raw material from the header of message `part` (root or embedded):
    `STRING_FIELDS` and `ADDRESS_FIELDS` by lower-case name.

    Strings: the first field of each name, unfolded.  Addresses: every field of a name
    merged, as if comma-separated (Dovecot does this so a second From: cannot hide).
    """
    strings: dict[str, str] = {}
    addresses: dict[str, list[Address]] = {}
    for f in iter_fields(data, part.start, part.body_start):
        name = f.name.lower()
        if name in STRING_FIELDS and name not in strings:
            strings[name] = field_value(data, f)
        elif name in ADDRESS_FIELDS:
            addresses.setdefault(name, []).extend(parse_addresses(field_value(data, f)))
    return strings, addresses


def parse_addresses(value: str) -> list[Address]:
    """An address list as IMAP wants it: a group is (None, None, name, None) ...
    `GROUP_END`.  A mailbox without domain gets host "MISSING_DOMAIN" (as in Dovecot:
    a None host would mean a group); a missing local part "MISSING_MAILBOX"."""
    toks, out, pos, group = _address_tokens(value), [], 0, False
    while pos < len(toks):
        phrase, comment, pos = _phrase(toks, pos)
        kind = toks[pos][0] if pos < len(toks) else ","
        pos += 1
        if kind == ":" and not group:
            out.append((None, None, _words(phrase), None))
            group = True
        elif kind == "<":
            adl, mailbox, host, pos = _angle_addr(toks, pos)
            out.append((_words(phrase) or None, adl, mailbox, host))
        elif kind == "@":
            host, comment2, pos = _domain(toks, pos, ",;")
            name = comment2 if comment2 is not None else comment
            out.append((name or None, None, _local(phrase), host))
        elif phrase:
            out.append((comment or None, None, _local(phrase), "MISSING_DOMAIN"))
        if kind == ";" and group:
            out.append(GROUP_END)
            group = False
    if group:
        out.append(GROUP_END)
    return out


def _address_tokens(s: str) -> list[tuple[str, str]]:
    """("a", atom) ("q", quoted) ("c", comment) or (special, special)."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c in " \t\r\n":
            i += 1
        elif c in '"(':
            i, val = _delimited(s, i)
            out.append(("q" if c == '"' else "c", val))
        elif c == "[":
            j = s.find("]", i)
            j = len(s) if j < 0 else j + 1
            out.append(("a", s[i:j]))
            i = j
        elif c in "<>@,:;":
            out.append((c, c))
            i += 1
        elif c == ")":                  # a stray comment end: nothing
            i += 1
        else:
            j = i + 1
            while j < len(s) and s[j] not in ' \t\r\n"()[<>@,:;':
                j += 1
            out.append(("a", s[i:j]))
            i = j
    return out


def _delimited(s: str, i: int) -> tuple[int, str]:
    """A quoted string or (nested) comment starting at s[i]: (end, unescaped content)."""
    close, depth, out, i = ('"' if s[i] == '"' else ")"), 1, [], i + 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            out.append(s[i + 1:i + 2])
            i += 2
            continue
        if close == ")" and c in "()":
            depth += 1 if c == "(" else -1
        if c == close and (close == '"' or depth == 0):
            return i + 1, "".join(out)
        out.append(c)
        i += 1
    return i, "".join(out)


def _phrase(toks: list, pos: int) -> tuple[list, str | None, int]:
    words, comment = [], None
    while pos < len(toks) and toks[pos][0] in "aqc":
        if toks[pos][0] == "c":
            comment = toks[pos][1]
        else:
            words.append(toks[pos])
        pos += 1
    return words, comment, pos


def _words(phrase: list) -> str:
    return " ".join(v for _, v in phrase)


def _local(phrase: list) -> str:
    return "".join(v for _, v in phrase) or "MISSING_MAILBOX"


def _domain(toks: list, pos: int, stop: str) -> tuple[str, str | None, int]:
    host, comment = [], None
    while pos < len(toks) and toks[pos][0] not in stop:
        if toks[pos][0] == "c":
            comment = toks[pos][1]
        elif toks[pos][0] in "aq":
            host.append(toks[pos][1])
        pos += 1
    return "".join(host) or "MISSING_DOMAIN", comment, pos


def _angle_addr(toks: list, pos: int) -> tuple[str | None, str, str, int]:
    """After "<": [route ":"] local "@" domain ">"; returns (adl, mailbox, host, pos)."""
    route = []
    while pos < len(toks) and toks[pos][0] in "@,":
        if toks[pos][0] == "@":
            host, _, pos = _domain(toks, pos + 1, ",:>")
            route.append("@" + host)
        else:
            pos += 1
    if route and pos < len(toks) and toks[pos][0] == ":":
        pos += 1
    local, _, pos = _phrase(toks, pos)
    host = "MISSING_DOMAIN"
    if pos < len(toks) and toks[pos][0] == "@":
        host, _, pos = _domain(toks, pos + 1, ">,;")
    while pos < len(toks) and toks[pos][0] not in ">,;":
        pos += 1
    if pos < len(toks) and toks[pos][0] == ">":
        pos += 1
    return ",".join(route) or None, _local(local), host, pos


# --- section numbers -----------------------------------------------------------------

def find_part(root: Part, numbers: list[int]) -> Part | None:
    """The part that IMAP's section number (e.g. [2, 1, 3]) names, or None.

    Part 1 of a non-multipart message is its body; the numbers after a message/rfc822
    part go into the embedded message.  Numbering a leaf deeper (1.1 of a text/plain
    part) names nothing, as RFC 3501 §6.4.5 says ("only have a part 1").
    """
    target: Part | None = None
    for n in numbers:
        if target is None:
            container = root
        elif target.message is not None:
            container = target.message
        elif target.is_multipart:
            container = target
        else:
            return None
        if container.is_multipart:
            target = container.children[n - 1] if 0 < n <= len(container.children) else None
        else:
            target = container if n == 1 else None
        if target is None:
            return None
    return target
