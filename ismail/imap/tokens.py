"""IMAP tokens as the command reader hands them over, and the helpers that read them
(RFC 3501 §9): atoms, strings, lists, fetch attributes, sequence sets, numbers, and
quoting for responses.

Tokens subclass the built-in types the FETCH and SEARCH modules take, so they pass
straight in: `Atom` (a `str`: NIL, numbers, flags, sequence sets, mailbox patterns, case
kept), `String` (`bytes`, quoted or literal; ``.literal`` and ``.binary`` tell which) and
`List` (a `list`).  A fetch attribute with a section is one `FetchAtt`.  The helpers
raise ValueError for a token of the wrong kind: the session answers BAD.
"""
from __future__ import annotations

import bisect
import re
from typing import Iterator, Union

MAX_NUMBER = 2**32 - 1      # RFC 3501 number / nz-number
QUOTED_MAX = 1024           # quote() sends longer strings as literals

_SEQ_RANGE = re.compile(r"(\*|[1-9][0-9]{0,9})(?::(\*|[1-9][0-9]{0,9}))?")
_NEEDS_LITERAL = re.compile(rb"[\x00\r\n\x80-\xff]")


# --- tokens ----------------------------------------------------------------------------

class Atom(str):
    """An atom as the client wrote it; compare with `is_atom` (case-insensitive)."""
    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class FetchAtt(Atom):
    """``name[section]<partial>``: the text is the whole attribute, for fetch.parse_items."""

    def __new__(cls, name: str, section: "List", partial: tuple[int, int] | None = None
                ) -> "FetchAtt":
        text = f"{name}[{' '.join(_render(t) for t in section)}]"
        if partial:
            text += f"<{partial[0]}.{partial[1]}>"
        self = super().__new__(cls, text)
        self.name, self.section, self.partial = name.upper(), section, partial
        return self


class String(bytes):
    """A quoted string (unescaped) or a literal; `binary` marks a literal8."""

    def __new__(cls, data: bytes, literal: bool = False, binary: bool = False) -> "String":
        self = super().__new__(cls, data)
        self.literal, self.binary = literal, binary
        return self

    def __repr__(self) -> str:
        flags = ", literal=True" if self.literal else ""
        return f"String({bytes(self[:60])!r}{'...' if len(self) > 60 else ''}{flags})"


class List(list):
    """A parenthesised list of tokens."""
    __slots__ = ()

    def __repr__(self) -> str:
        return f"List({list.__repr__(self)})"


Token = Union[Atom, String, List]


def _render(token: Token) -> str:
    if isinstance(token, list):
        return "(" + " ".join(_render(t) for t in token) + ")"
    if isinstance(token, bytes):
        return quote(token).decode("utf-8", "surrogateescape")
    return str(token)


# --- helpers for the session (ValueError means: answer BAD) -----------------------------

class SequenceSet:
    """A sequence-set, ``1:*,5``: ranges as written, a bound None standing for "*"."""

    def __init__(self, ranges: tuple[tuple[int | None, int | None], ...]) -> None:
        self.ranges = ranges
        self._cache: tuple[int, list[int], list[int]] = (-1, [], [])

    def __repr__(self) -> str:
        return f"SequenceSet({self.ranges!r})"

    def spans(self, largest: int) -> list[tuple[int, int]]:
        """Ascending, merged (low, high) pairs within 1..largest; "*" is `largest`.
        ``5:*`` with largest 3 is 3:5, so 3 (RFC 3501 §6.4.8)."""
        spans = []
        for a, b in self.ranges:
            a = largest if a is None else a
            b = largest if b is None else b
            low, high = max(min(a, b), 1), min(max(a, b), largest)
            if low <= high:
                spans.append((low, high))
        if len(spans) < 2:   # the usual case: one number or one range, nothing to merge
            return spans
        spans.sort()
        merged: list[tuple[int, int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
            else:
                merged.append((low, high))
        return merged

    def contains(self, n: int, largest: int) -> bool:
        if self._cache[0] != largest:
            spans = self.spans(largest)
            self._cache = (largest, [s[0] for s in spans], [s[1] for s in spans])
        _, lows, highs = self._cache
        k = bisect.bisect_right(lows, n) - 1
        return k >= 0 and n <= highs[k]

    def expand(self, largest: int) -> Iterator[int]:
        """The numbers in the set, ascending, each once, none above `largest` (lazily)."""
        for low, high in self.spans(largest):
            yield from range(low, high + 1)


def one_number(text: str) -> int | None:
    """The sequence set ``text`` if it is one valid number (the usual pipelined
    command's), else None (it may still be a valid set of another form)."""
    if text.isdigit() and text.isascii() and text[0] != "0" and len(text) <= 10:
        n = int(text)
        if n <= MAX_NUMBER:
            return n
    return None


def parse_sequence_set(text: str) -> SequenceSet:
    n = one_number(text)
    if n is not None:
        return SequenceSet(((n, n),))
    if text == "$":
        raise ValueError("$ (SEARCHRES) is not supported")
    ranges = []
    for part in text.split(","):
        m = _SEQ_RANGE.fullmatch(part)
        if not m:
            raise ValueError(f"bad sequence set {text[:40]!r}")
        a = _seq_number(m.group(1))
        ranges.append((a, a if m.group(2) is None else _seq_number(m.group(2))))
    return SequenceSet(tuple(ranges))


def _seq_number(text: str) -> int | None:
    if text == "*":
        return None
    if int(text) > MAX_NUMBER:
        raise ValueError(f"number {text} is too large")
    return int(text)


def is_atom(token: Token, word: str) -> bool:
    """Whether `token` is the atom `word`, case-insensitively (``is_atom(t, "NIL")``)."""
    return isinstance(token, str) and token.upper() == word.upper()


def astring(token: Token) -> str:
    """An atom or a string as text; strings are UTF-8, other octets kept (surrogateescape)."""
    if isinstance(token, bytes):
        return token.decode("utf-8", "surrogateescape")
    if isinstance(token, str):    # a FetchAtt too: a mailbox may be called Body[1]
        return str(token)
    raise ValueError(f"expected an atom or a string, got {_describe(token)}")


def nstring(token: Token) -> str | None:
    """A string, or None for NIL."""
    if is_atom(token, "NIL"):
        return None
    if isinstance(token, bytes):
        return astring(token)
    raise ValueError(f"expected a string or NIL, got {_describe(token)}")


def as_list(token: Token) -> List:
    if isinstance(token, list):
        return token
    raise ValueError(f"expected a parenthesised list, got {_describe(token)}")


def number(token: Token) -> int:
    """An RFC 3501 number (32 bits, unsigned)."""
    if isinstance(token, str) and token.isascii() and token.isdigit() and len(token) <= 10:
        if int(token) <= MAX_NUMBER:
            return int(token)
    raise ValueError(f"expected a number, got {_describe(token)}")


def _describe(token: Token) -> str:
    if isinstance(token, list):
        return "a parenthesised list"
    kind = "a literal" if getattr(token, "literal", False) else "a string"
    return f"the atom {str(token)[:40]!r}" if isinstance(token, str) else kind


def quote(text: str | bytes) -> bytes:
    """A response string: quoted when short and plain 7-bit, else a literal ``{n}``."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    if len(data) <= QUOTED_MAX and not _NEEDS_LITERAL.search(data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def nil_or(value: str | bytes | None) -> bytes:
    """NIL for None, else `quote(value)` (an nstring in a response)."""
    return b"NIL" if value is None else quote(value)
