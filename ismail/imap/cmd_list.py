"""LIST and LSUB (RFC 3501 §6.3.8, §6.3.9), with CHILDREN (RFC 3348) and SPECIAL-USE (RFC 6154).

One personal namespace, ``""`` with ``/`` between levels (NAMESPACE says so).  The
pattern is matched against the names as the client spells them, modified UTF-7, so a
pattern is used as given and never has to be decoded: ``*`` matches anything, ``%``
anything but ``/``.  The reference is put in front of the pattern, with a ``/``
between them unless one is already there.  INBOX matches in any case.

Every folder answers with \\HasChildren or \\HasNoChildren, and the four special
folders with their use (\\Sent, \\Drafts, \\Trash, \\Junk).  A level that has
sub-folders but is no folder itself (a directory another program made) is listed
as \\Noselect \\HasChildren.  ``LIST "" ""`` answers the separator (§6.3.8).  LSUB
lists subscribed names whether or not they exist (§6.3.9), and for a trailing
``%`` the levels above subscribed names that are not subscribed themselves, as
\\Noselect.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable

from .commands import AUTH, SELECTED, Bad, Done, arity, command, wire_name
from .tokens import Token, quote

if TYPE_CHECKING:
    from .parser import Command
    from .session import ImapSession

SEP = "/"


def _raw(token: Token) -> str:
    """A LIST argument as sent: mailbox patterns are matched in modified UTF-7."""
    if isinstance(token, list):
        raise Bad("LIST reference and pattern are strings")
    return token.decode("ascii", "replace") if isinstance(token, bytes) else str(token)


def canonical(reference: str, pattern: str) -> str:
    if reference and not reference.endswith(SEP) and not pattern.startswith(SEP):
        reference += SEP
    full = reference + pattern
    head, sep, tail = full.partition(SEP)
    if head.upper() == "INBOX":
        full = "INBOX" + sep + tail
    return full


def compile_pattern(pattern: str) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def parents(name: str) -> list[str]:
    levels = name.split(SEP)
    return [SEP.join(levels[:i]) for i in range(1, len(levels))]


def _line(kind: bytes, attrs: Iterable[str], name: str) -> bytes:
    return kind + b" (" + " ".join(attrs).encode() + b') "/" ' + quote(name)


def _order(name: str) -> tuple[bool, str]:
    return (name != "INBOX", name)


@command("LIST", AUTH, SELECTED)
def list_(s: "ImapSession", c: "Command") -> Done:
    reference, pattern = (_raw(t) for t in arity(c, 2, 2, "LIST reference pattern"))
    if not pattern:
        s.untagged(b'LIST (\\Noselect) "/" ""')
        return Done("LIST completed")
    entries: dict[str, list[str]] = {}
    for info in s.store.list():
        attrs = ["\\HasChildren" if info.has_children else "\\HasNoChildren"]
        if info.special:
            attrs.append(info.special)
        entries[wire_name(info.name)] = attrs
    for name in list(entries):
        for parent in parents(name):
            entries.setdefault(parent, ["\\Noselect", "\\HasChildren"])
    match = compile_pattern(canonical(reference, pattern)).fullmatch
    for name in sorted(entries, key=_order):
        if match(name):
            s.untagged(_line(b"LIST", entries[name], name))
    return Done("LIST completed")


@command("LSUB", AUTH, SELECTED)
def lsub(s: "ImapSession", c: "Command") -> Done:
    reference, pattern = (_raw(t) for t in arity(c, 2, 2, "LSUB reference pattern"))
    if not pattern:
        return Done("LSUB completed")
    full = canonical(reference, pattern)
    match = compile_pattern(full).fullmatch
    subscribed = {wire_name(name): [] for name in s.store.subscriptions()}
    if full.endswith("%"):
        for name in list(subscribed):
            for parent in parents(name):
                subscribed.setdefault(parent, ["\\Noselect"])
    for name in sorted(subscribed, key=_order):
        if match(name):
            s.untagged(_line(b"LSUB", subscribed[name], name))
    return Done("LSUB completed")
