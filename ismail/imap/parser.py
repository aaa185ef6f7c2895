"""Reading IMAP client commands off the wire (RFC 3501 §9, LITERAL+ RFC 7888, RFC 3516).

Model
-----
`CommandReader` owns no socket.  The connection feeds it whatever arrived (`feed`) and
asks for complete commands (`next`) until it answers None.  A command is one line,
``tag SP name [SP arguments] CRLF``, except that an argument may be a literal: a line
ending in ``{n}`` (synchronising: `next` returns `Continue(n)` once and the session
sends ``+ ...``; only then does the client send the octets), ``{n+}`` (LITERAL+: the
octets follow at once) or ``~{n}`` (literal8, APPEND only).  After the octets the
command line goes on, so a command is a chain of line segments and literals.  Each
segment is tokenized as soon as it is complete, so an error is known before the
session is asked to send a continuation, and the next command is read right after a
bad one.  `read_line` hands the session a raw line between commands (IDLE's DONE,
AUTHENTICATE's responses); `buffered` says whether a client sent more than it should
have (after STARTTLS).

Tokens (imap/tokens.py) are command-neutral; FETCH, SEARCH and the session interpret
them: `Atom`, `String` and `List`.  A fetch attribute with a section,
``BODY.PEEK[HEADER.FIELDS (From)]<0.9>``, is one `FetchAtt`: an Atom whose text is the
attribute (rebuilt, one space between section tokens) with ``.name`` (upper case),
``.section`` (its tokens) and ``.partial``.
Only BODY, BODY.PEEK, BINARY, BINARY.PEEK and BINARY.SIZE open a section: elsewhere
"[" and "]" are atom characters (``LIST "" [Gmail]/*`` is legal).

Decisions
---------
* A bare LF ends a line as CRLF does, as in Dovecot: clients do send it, and message
  text only travels in literals, counted in octets, so no line end can alter it.
* Runs of spaces between arguments (and a trailing space) are accepted, as Dovecot does;
  an empty line is a BadCommand ("*").  `BadCommand.name` is the command name when it
  was read, so the session can answer APPEND's "literal too large" with NO [TOOBIG].
* `max_line` bounds the command's text outside literals, all segments together;
  `max_literal` bounds each literal and the sum of a command's literals.  A command
  over a limit is discarded to its end: a synchronising literal is refused at once
  (the client sends nothing more until told), the octets of a non-synchronising one
  are skipped as they arrive, up to ``skip_limit`` octets (a bigger one is a fatal
  BadCommand: before login the session ends rather than read a stranger's gigabytes,
  as Dovecot's login does).  A client that sends a refused synchronising literal
  anyway gets its octets read as commands, as RFC 3501 §7.5 allows.
* NUL is refused everywhere but in literal8, 8-bit everywhere but in literals.
* ``$`` (SEARCHRES, RFC 5182) is not supported: parse_sequence_set refuses it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .tokens import MAX_NUMBER, Atom, FetchAtt, List, String, one_number

MAX_NESTING = 200           # parentheses, as search.MAX_DEPTH allows
SECTIONED = {b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"}
LITERAL_TOO_LARGE = "literal too large"
LINE_TOO_LONG = "line too long"

_TAG = re.compile(rb'([^\x00-\x20\x7f-\xff(){%*"\\+]+)')
_NAME = re.compile(rb"[A-Za-z0-9._-]+")
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){"]+')
_SECTION_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\[\]]+')
_QCHARS = rb'[^"\\\x00\r\n\x80-\xff]*'
_QUOTED = re.compile(rb'"(' + _QCHARS + rb'(?:\\["\\]' + _QCHARS + rb')*)"')
_UNESCAPE = re.compile(rb"\\(.)")
_LITERAL = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\Z")
_PARTIAL = re.compile(rb"<([0-9]{1,10})\.([0-9]{1,10})>")


# --- results ---------------------------------------------------------------------------

@dataclass
class Command:
    tag: str
    name: str                   # upper case; for "UID FETCH" it is "FETCH" and uid is True
    uid: bool = False
    args: List = field(default_factory=List)
    # A one-line command on messages: its text around the leading sequence set, from
    # after the tag (b" UID FETCH ", b" (BODY.PEEK[])"): see CommandReader.take_repeat.
    repeat: tuple[bytes, bytes] | None = field(default=None, compare=False)


@dataclass
class Continue:
    """A synchronising literal of `size` octets awaits the session's "+" continuation."""
    size: int


@dataclass
class BadCommand:
    """Answer ``tag BAD reason`` (tag "*" when no valid tag was read); `name` if known.
    ``fatal``: a non-synchronising literal over ``skip_limit`` follows, which the reader
    will not read through; the session ends."""
    tag: str
    reason: str
    name: str = ""
    fatal: bool = False


class _Bad(Exception):
    """A syntax error in the command being read; its text is the BAD reason."""


# --- the reader ------------------------------------------------------------------------

class CommandReader:
    """Bytes in (`feed`), commands out (`next`); see the module docstring."""

    def __init__(self, max_literal: int, max_line: int = 65536, skip_limit: int | None = None) -> None:
        self.max_literal = max_literal
        self.max_line = max_line
        # The most octets of a refused non-synchronising literal read and thrown away
        # (None: any number); before login, a stranger's gigabytes are not worth reading.
        self.skip_limit = skip_limit
        self._buf = bytearray()
        self._pos = 0                        # first unread octet
        self._scan = 0                       # where the search for LF goes on
        self._cmd: _Partial | None = None    # the command being read
        self._bad: str | None = None         # why the rest of the command is discarded
        self._want: int | None = None        # literal octets still to come
        self._skip = False                   # ... to be skipped, not kept
        self._overlong = False               # skipping the rest of an over-long line
        self._head = b""                     # its first octets: the tag
        self._tail = b""                     # its last octets: did it end in {n+}?

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Octets received but not yet read (after STARTTLS there must be none)."""
        return len(self._buf) - self._pos

    @property
    def literal_for(self) -> str | None:
        """While literal octets are awaited (or skipped): the command's name, "" if none was
        read; else None.  The session tells an APPEND in progress by it."""
        if self._want is None:
            return None
        return self._cmd.name if self._cmd is not None else ""

    def next(self) -> Command | Continue | BadCommand | None:
        """The next complete command or event; None when more input is needed."""
        while True:
            if self._want is not None:
                if not self._read_literal():
                    return None
                continue
            line = self._read_line()
            if line is None:
                return None
            result = self._segment(line)
            if result is not None:
                return result

    def read_line(self) -> bytes | None:
        """One raw line between commands (IDLE's DONE, an AUTHENTICATE response), without
        its line end; None until it is complete.  ValueError for one over max_line."""
        if self._cmd is not None or self._want is not None:
            raise RuntimeError("read_line in the middle of a command")
        line = self._read_line()
        if line is None:
            return None
        if self._overlong or len(_strip_cr(line)) > self.max_line:
            self._overlong, self._tail = False, b""
            raise ValueError(LINE_TOO_LONG)
        return _strip_cr(line)

    def take_repeat(self, cmd: Command) -> Command | None:
        """The next command if it is complete and is ``cmd`` again, but for its tag and
        its leading sequence set, written the same way (a client pipelining ``UID FETCH
        n (BODY.PEEK[])`` for n after n); None, reading nothing, otherwise.  The command
        is what ``next`` would have made of the line (the same tokens), found without
        tokenizing it again."""
        m = self._repeated(cmd)
        if m is None:
            return None
        tag, seqset = self._take(m)
        return Command(tag, cmd.name, cmd.uid, List([Atom(seqset), *cmd.args[1:]]), cmd.repeat)

    def take_download(self, cmd: Command) -> tuple[str, int] | None:
        """``take_repeat`` for a command whose set is one number (``UID FETCH 4711
        (BODY.PEEK[])``): its tag and the number, with no Command made; None, reading
        nothing, if the next command is not that."""
        m = self._repeated(cmd)
        if m is None:
            return None
        number = one_number(m.group(2).decode("ascii"))
        if number is None:
            return None
        return self._take(m)[0], number

    def _repeated(self, cmd: Command) -> re.Match | None:
        """The next line matched whole as ``cmd`` again (take_repeat), not yet read."""
        if cmd.repeat is None or self._cmd is not None or self._want is not None \
                or self._overlong or self._bad is not None:
            return None
        pattern = _REPEATS.get(cmd.repeat)
        if pattern is None:
            if len(_REPEATS) >= SHAPES_KEPT:
                _REPEATS.clear()
            middle, tail = cmd.repeat   # the tag's characters and the sequence set's, as next reads them:
            pattern = _REPEATS[cmd.repeat] = re.compile(   # none of them is a space or a line end
                _TAG.pattern + re.escape(middle) + b"(" + _SEQ_SET.pattern + b")" + re.escape(tail) + b"\r?\n")
        m = pattern.match(self._buf, self._pos)
        if m is None or m.end() - self._pos > self.max_line:
            return None
        return m

    def _take(self, m: re.Match) -> tuple[str, str]:
        """Read the line ``_repeated`` matched: its tag and sequence set."""
        tag, seqset = m.group(1).decode("ascii"), m.group(2).decode("ascii")   # before _compact
        self._pos = self._scan = m.end()   # moves the buffer under the match
        self._compact()
        return tag, seqset

    # -- octets

    def _read_line(self) -> bytes | None:
        """The next line without its LF (a CR before it is kept), or None."""
        buf = self._buf
        nl = buf.find(b"\n", self._scan)
        if nl < 0:
            self._scan = len(buf)
            if self._overlong or len(buf) - self._pos > self.max_line + 1:
                self._drop_overlong()
            return None
        line = bytes(buf[self._pos:nl])
        self._pos = self._scan = nl + 1
        self._compact()
        return line

    def _drop_overlong(self) -> None:
        if not self._overlong:
            self._head = bytes(self._buf[self._pos:self._pos + 256])
        self._overlong = True
        self._tail = (self._tail + self._buf[max(self._pos, len(self._buf) - 40):])[-40:]
        del self._buf[:]
        self._pos = self._scan = 0

    def _read_literal(self) -> bool:
        """Take (or skip) literal octets; True once the literal is complete."""
        avail = len(self._buf) - self._pos
        if self._skip:
            taken = min(avail, self._want)
            self._pos += taken
            self._want -= taken
            self._compact()
            if self._want:
                return False
        else:
            if avail < self._want:
                return False
            try:   # one copy, straight from the buffer into the token
                with memoryview(self._buf)[self._pos:self._pos + self._want] as data:
                    self._cmd.add_literal(data)
            except _Bad as e:
                self._bad = str(e)
            self._pos += self._want
            self._compact()
        self._want, self._scan = None, self._pos
        return True

    def _compact(self) -> None:
        if self._pos > 65536 and 2 * self._pos > len(self._buf):
            del self._buf[:self._pos]
            self._scan -= self._pos
            self._pos = 0

    # -- segments

    def _segment(self, line: bytes) -> Command | Continue | BadCommand | None:
        if self._overlong:
            self._overlong = False
            self._bad = self._bad or LINE_TOO_LONG
            self._cmd = self._cmd or _Partial.head_of(self._head)
            tail, self._tail = _strip_cr(self._tail + line), b""
            return self._discard(_LITERAL.search(tail[-40:]))
        seg = _strip_cr(line)
        if self._bad is not None:
            return self._discard(_LITERAL.search(seg[-40:]))
        try:
            self._tokenize(seg)
            return self._literal_or_end()
        except _Bad as e:
            self._bad = str(e)
            return self._discard(_LITERAL.search(seg[-40:]))

    def _tokenize(self, seg: bytes) -> None:
        if self._cmd is None:
            if len(seg) > self.max_line:
                self._cmd = _Partial.head_of(seg[:256])
                raise _Bad(LINE_TOO_LONG)
            cmd = self._cmd = _Partial()
            cmd.text_size = len(seg)
            start = cmd.read_head(seg)
            if (cmd.name not in _SHAPED or b"{" in seg or b"\0" in seg
                    or not _from_shape(cmd, seg, start)):
                cmd.add_text(seg, start)
        else:
            self._cmd.text_size += len(seg)
            if self._cmd.text_size > self.max_line:
                raise _Bad(LINE_TOO_LONG)
            self._cmd.add_text(seg)

    def _literal_or_end(self) -> Command | Continue | None:
        cmd = self._cmd
        if cmd.pending is None:
            command = cmd.finish()
            self._cmd = None
            return command
        size, sync, _ = cmd.pending
        cmd.literal_size += size
        if size > self.max_literal or cmd.literal_size > self.max_literal:
            raise _Bad(LITERAL_TOO_LARGE)
        self._want, self._skip = size, False
        return Continue(size) if sync else None

    def _discard(self, header: re.Match | None) -> BadCommand | None:
        """The command is bad: skip a non-synchronising literal, else report it now."""
        fatal = False
        if header is not None and header.group(3):
            size = int(header.group(2))
            if self.skip_limit is None or size <= self.skip_limit:
                self._want, self._skip = size, True
                return None
            fatal = True
        cmd, reason = self._cmd or _Partial(), self._bad
        self._cmd = self._bad = None
        return BadCommand(cmd.tag, reason, cmd.name, fatal)


# A pipelining client sends the same command again and again, one message number apart
# ("UID FETCH 17 (BODY.PEEK[])"): the arguments after the leading sequence set are
# tokenized once per shape.  Only the commands on messages, and only short shapes, are
# kept (the cache is shared by every session: no LOGIN line, no large list goes into it).
# Tokens are shared between the commands of one shape, so nothing may change them
# (handlers only read them).
_SHAPED = frozenset(("FETCH", "STORE", "COPY", "MOVE"))
_SEQ_FIRST = re.compile(rb" ([0-9*][0-9:*,]*)(?= |\Z)")
_SEQ_SET = re.compile(rb"[0-9*][0-9:*,]*")
_REPEATS: dict[tuple[bytes, bytes], re.Pattern[bytes]] = {}   # CommandReader.take_repeat's
_SHAPES: dict[bytes, tuple] = {}
SHAPES_KEPT = 256
SHAPE_MAX = 200    # octets after the sequence set


def _from_shape(cmd: "_Partial", seg: bytes, start: int) -> bool:
    """Give ``cmd`` the arguments of the complete line ``seg`` (no literal in it) from the
    shape last seen; False when the line must be tokenized in full (an error in it, no
    sequence set first, a long line)."""
    m = _SEQ_FIRST.match(seg, start)
    if m is None or len(seg) - m.end() > SHAPE_MAX:
        return False
    tail = seg[m.end():]
    tokens = _SHAPES.get(tail)
    if tokens is None:
        probe = _Partial()
        try:
            probe.add_text(tail)
            if len(probe.stack) > 1:
                return False
        except _Bad:
            return False
        if len(_SHAPES) >= SHAPES_KEPT:
            _SHAPES.clear()
        tokens = _SHAPES[tail] = tuple(probe.items)
    items = cmd.items
    items.append(Atom(m.group(1).decode("ascii")))
    items += tokens
    cmd.repeat = (seg[len(cmd.tag):m.start(1)], tail)
    return True


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


# --- tokenizing one command ------------------------------------------------------------

class _Partial:
    """A command being read: tag, name and the tokens so far, across literals."""

    def __init__(self) -> None:
        self.tag, self.name, self.uid = "*", "", False
        # frames: (b"(" for a list, the fetch-att name for a section, b"" at the root; items)
        self.stack: list[tuple[bytes, List]] = [(b"", List())]
        self.sections = 0          # open "[" frames (0 or 1)
        self.need_sep = False      # a token just ended: a space must come first
        self.pending: tuple[int, bool, bool] | None = None   # size, sync, binary
        self.text_size = 0
        self.literal_size = 0
        self.repeat: tuple[bytes, bytes] | None = None   # see Command.repeat

    @classmethod
    def head_of(cls, start: bytes) -> "_Partial":
        """What can be told of a command from its first octets (for a BAD's tag)."""
        cmd = cls()
        try:
            cmd.read_head(start)
        except _Bad:
            pass
        return cmd

    def read_head(self, seg: bytes) -> int:
        """Tag and command name (after UID, the next one); the index after them."""
        if not seg:
            raise _Bad("empty command line")
        m = _TAG.match(seg)
        if not m or (m.end() < len(seg) and seg[m.end()] != 0x20):
            raise _Bad("missing tag" if seg[:1] == b" " else "invalid tag")
        self.tag = m.group().decode("ascii")
        self.name, i = self._word(seg, m.end())
        if self.name == "UID":
            self.uid = True
            self.name, i = self._word(seg, i)
        return i

    def _word(self, seg: bytes, i: int) -> tuple[str, int]:
        while seg[i:i + 1] == b" ":
            i += 1
        end = seg.find(b" ", i)
        end = len(seg) if end < 0 else end
        if end == i:
            raise _Bad("UID needs a command name" if self.uid else "empty command name")
        if not _NAME.fullmatch(seg, i, end):
            raise _Bad("invalid command name")
        return seg[i:end].decode("ascii").upper(), end

    @property
    def items(self) -> List:
        return self.stack[-1][1]

    def add_text(self, seg: bytes, i: int = 0) -> None:
        if b"\0" in seg:
            raise _Bad("NUL in command")
        n = len(seg)
        while i < n:
            c = seg[i]
            if c == 0x20:
                i += 1
                self.need_sep = False
            elif c == 0x29:                          # )
                self._close_list()
                i += 1
            elif c == 0x5D and self.sections:        # ]
                i = self._close_section(seg, i + 1)
            elif self.need_sep:
                raise _Bad(_char_error(c) if c < 0x20 or c >= 0x7F else
                           "missing space between arguments")
            elif c == 0x28:                          # (
                self._open(b"(")
                i += 1
            elif c == 0x22:                          # "
                i = self._quoted(seg, i)
            elif c == 0x7B or seg.startswith(b"~{", i):
                self._literal_header(seg, i)
                return
            else:
                i = self._atom(seg, i)

    def add_literal(self, data: bytes | memoryview) -> None:
        _, _, binary = self.pending
        self.pending = None
        token = String(data, literal=True, binary=binary)
        self.items.append(token)
        self.need_sep = True
        if not binary and b"\0" in token:
            raise _Bad("NUL in literal")

    def finish(self) -> Command:
        if len(self.stack) > 1:
            raise _Bad("unbalanced brackets" if self.sections else "unbalanced parentheses")
        return Command(self.tag, self.name, self.uid, self.items, self.repeat)

    def _open(self, opener: bytes) -> None:
        if len(self.stack) > MAX_NESTING:
            raise _Bad("too deeply nested")
        self.stack.append((opener, List()))

    def _close_list(self) -> None:
        if self.stack[-1][0] != b"(":
            raise _Bad("unbalanced brackets" if self.sections else "unbalanced parentheses")
        items = self.stack.pop()[1]
        self.items.append(items)
        self.need_sep = True

    def _close_section(self, seg: bytes, i: int) -> int:
        if self.stack[-1][0] == b"(":
            raise _Bad("unbalanced brackets")
        name, section = self.stack.pop()
        self.sections -= 1
        partial = None
        if seg.startswith(b"<", i):
            m = _PARTIAL.match(seg, i)
            if not m or int(m.group(2)) == 0 or max(int(m.group(1)), int(m.group(2))) > MAX_NUMBER:
                raise _Bad("bad partial <origin.length>")
            partial, i = (int(m.group(1)), int(m.group(2))), m.end()
        self.items.append(FetchAtt(name.decode("ascii"), section, partial))
        self.need_sep = True
        return i

    def _quoted(self, seg: bytes, i: int) -> int:
        m = _QUOTED.match(seg, i)
        if not m:
            raise _Bad(_quoted_error(seg, i + 1))
        raw = m.group(1)
        self.items.append(String(_UNESCAPE.sub(rb"\1", raw) if b"\\" in raw else raw))
        self.need_sep = True
        return m.end()

    def _literal_header(self, seg: bytes, i: int) -> None:
        m = _LITERAL.match(seg, i)
        if not m:
            raise _Bad("bad literal: {n} must end the line")
        if m.group(1) and self.name != "APPEND":
            raise _Bad("literal8 is for APPEND only")
        self.pending = (int(m.group(2)), not m.group(3), bool(m.group(1)))

    def _atom(self, seg: bytes, i: int) -> int:
        m = (_SECTION_ATOM if self.sections else _ATOM).match(seg, i)
        if not m:
            raise _Bad(_char_error(seg[i]))
        text = m.group()
        bracket = text.find(b"[")
        if bracket > 0 and not self.sections and text[:bracket].upper() in SECTIONED:
            self._open(text[:bracket])
            self.sections += 1
            return i + bracket + 1
        self.items.append(Atom(text.decode("ascii")))
        self.need_sep = True
        return m.end()


def _char_error(c: int) -> str:
    if c >= 0x80:
        return "8-bit character outside a literal"
    if c < 0x20 or c == 0x7F:
        return "control character in command"
    return "unbalanced brackets" if c in b"[]" else f"unexpected {chr(c)!r}"


def _quoted_error(seg: bytes, i: int) -> str:
    while i < len(seg):
        c = seg[i]
        if c == 0x5C and seg[i + 1:i + 2] not in (b'"', b"\\"):
            return "bad escape in quoted string"
        if c >= 0x80:
            return "8-bit character in quoted string (use a literal)"
        if c in b"\r\n":
            return "CR or LF in quoted string"
        i += 2 if c == 0x5C else 1
    return "unterminated quoted string"
