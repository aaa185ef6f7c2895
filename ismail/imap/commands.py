"""The IMAP command table, and what every command module shares.

Model
-----
Each command is a function ``handler(session, command)`` in a ``cmd_*.py`` module,
registered by name with ``@command("FETCH", SELECTED, uid=True)`` (the states it is
valid in; ``uid`` if ``UID FETCH`` exists too, which is to say it works on messages:
the session refreshes the selected folder before running it).  The session looks the
name up in `COMMANDS`, checks the state, and runs it.  A handler

* writes untagged responses with ``session.untagged(b"...")``;
* returns `Done` (the tagged OK's code and text), or ``None`` when the command goes on
  past this call (AUTHENTICATE's challenge, IDLE), or a generator that yields the
  response bytes as they are made and *returns* `Done` (FETCH of a large folder);
* raises `No` (tagged NO with an optional response code) or `Bad` (tagged BAD).
  A ``ValueError`` from the parser's helpers (astring, number, sequence sets) is a
  BAD too; its text says what was wrong.

The untagged EXISTS/EXPUNGE/FETCH that report other sessions' changes, and the
tagged line itself, are the session's business (session.py, selected.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from ..store import utf7
from .tokens import Atom, SequenceSet, Token, astring, is_atom, parse_sequence_set

if TYPE_CHECKING:
    from .parser import Command
    from .session import ImapSession

NOT_AUTH = "not authenticated"
AUTH = "authenticated"
SELECTED = "selected"
ANY = (NOT_AUTH, AUTH, SELECTED)

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_FLAG = re.compile(r"\\?[^\x00-\x20\x7f-\uffff(){%*\"\\\]]+\Z")


class Bad(Exception):
    """Answer ``tag BAD <text>``: the command or its arguments are malformed."""


class No(Exception):
    """Answer ``tag NO [code] <text>``: well formed, but it cannot be done."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


@dataclass
class Done:
    """The tagged OK: ``tag OK [code] text``."""
    text: str = "completed"
    code: str = ""


@dataclass(frozen=True)
class Handler:
    name: str
    run: Callable[["ImapSession", "Command"], object]
    states: tuple[str, ...]
    uid: bool


COMMANDS: dict[str, Handler] = {}


def command(name: str, *states: str, uid: bool = False) -> Callable:
    """Register a handler for ``name`` (upper case), valid in ``states``."""
    def register(run: Callable) -> Callable:
        COMMANDS[name] = Handler(name, run, states, uid)
        return run
    return register


# --- arguments ---------------------------------------------------------------------------

def arity(cmd: "Command", fewest: int, most: int, usage: str) -> list[Token]:
    """The arguments, if there are between ``fewest`` and ``most`` of them; else Bad."""
    n = len(cmd.args)
    if n < fewest or n > most:
        raise Bad(f"{'missing' if n < fewest else 'too many'} arguments: {usage}")
    return list(cmd.args)


def atom(token: Token, what: str) -> str:
    if not isinstance(token, str):
        raise Bad(f"{what} must be an atom")
    return str(token)


def astring_arg(token: Token, what: str) -> str:
    if isinstance(token, list):
        raise Bad(f"{what} must be an atom or a string")
    return astring(token)


def sequence_set(token: Token) -> SequenceSet:
    if not isinstance(token, Atom):
        raise Bad("expected a sequence set")
    return parse_sequence_set(str(token))


def mailbox(token: Token) -> str:
    """A mailbox name as the store spells it: modified UTF-7 decoded (RFC 3501 §5.1.3)."""
    if isinstance(token, list):
        raise Bad("expected a mailbox name")
    text = token.decode("utf-8", "surrogateescape") if isinstance(token, bytes) else str(token)
    try:
        name = utf7.decode(text)
    except ValueError:
        raise No(f"mailbox name {text[:60]!r} is not valid modified UTF-7", "CANNOT") from None
    if name.upper() == "INBOX":
        return "INBOX"
    return name


def wire_name(name: str) -> str:
    """A store name as the client sees it: modified UTF-7."""
    return utf7.encode(name)


def flag_list(tokens: Iterable[Token]) -> list[str]:
    """Flags from a parenthesised list (or the atoms of STORE's short form)."""
    flags = []
    for t in tokens:
        if not isinstance(t, Atom) or not _FLAG.match(t):
            raise Bad(f"invalid flag {str(t)[:40]!r}" if isinstance(t, str) else "flags must be atoms")
        flags.append(str(t))
    return flags


def nil_or_list(token: Token) -> bool:
    """True for NIL, False for a list; Bad for anything else."""
    if is_atom(token, "NIL"):
        return True
    if isinstance(token, list):
        return False
    raise Bad("expected NIL or a parenthesised list")


def compress(numbers: Iterable[int]) -> str:
    """A UID set for COPYUID / APPENDUID: ``1:3,7`` (in the order given, runs joined)."""
    out: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)
