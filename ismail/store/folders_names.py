"""Folder names: what a name may be, and the directory it lives in (Maildir++).

A name is Unicode text with "/" between levels ("Work/2024"); INBOX (any case) is
the account's Maildir itself.  Every other folder is one directory directly in
it, named "." plus the levels joined by "." (Maildir++, as Courier and Dovecot
lay it out), each level in modified UTF-7::

    Sent            .Sent
    Work/2024       .Work.2024
    Entwürfe        .Entw&APw-rfe
    v1.2            .v1%2E2
    INBOX/Lists     .INBOX.Lists

Escapes: "." inside a level would read as a level break, so it is written
``%2E``; the escape character itself and the characters Windows forbids in file
names (``\\ : * ? " < > |``) are escaped the same way.  That is Dovecot's
listescape scheme (``\\NN`` hex codes) with ``listescape_char = "%"``, because
"\\" itself cannot appear in a Windows file name.

Refused (ValueError naming the reason): an empty name or level, a leading or
trailing "/", control characters, "." or ".." as a level, a level that ends in a
space (Windows drops it), a level that Windows reserves for a device (CON, NUL,
COM1 ... with or without an extension), and a directory name longer than 255.
"""
from __future__ import annotations

import unicodedata

from . import utf7

SEP = "/"
INBOX = "INBOX"
MAX_DIRNAME = 255
_ESCAPE = "%"
_ESCAPED = frozenset('.%\\:*?"<>|')
_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{d}{n}" for d in ("COM", "LPT") for n in list("0123456789") + ["¹", "²", "³"]])


def normalize(name: str) -> str:
    """The canonical form of a valid name ("inbox/x" -> "INBOX/x"); ValueError otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError("the folder name is empty")
    if name.startswith(SEP) or name.endswith(SEP):
        raise ValueError(f'a folder name cannot start or end with "{SEP}"')
    levels = name.split(SEP)
    if levels[0].upper() == INBOX:
        levels[0] = INBOX
    for level in levels:
        _check_level(level)
    canonical = SEP.join(levels)
    if len(dirname(canonical)) > MAX_DIRNAME:
        raise ValueError(f"the folder name is too long (more than {MAX_DIRNAME} characters on disk)")
    return canonical


def _check_level(level: str) -> None:
    if not level:
        raise ValueError(f'a folder name cannot contain "{SEP}{SEP}" (an empty level)')
    if level in (".", ".."):
        raise ValueError(f'"{level}" is not a folder name')
    for ch in level:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError(f"a folder name cannot contain the control character {ch!r}")
    if level.endswith(" "):
        raise ValueError(f'"{level}" ends with a space, which Windows file names cannot')
    if level.split(".")[0].rstrip(" ").upper() in _DEVICES:
        raise ValueError(f'"{level}" is a device name on Windows')


def _escape(text: str) -> str:
    return "".join(f"{_ESCAPE}{ord(c):02X}" if c in _ESCAPED else c for c in text)


def _unescape(text: str) -> str:
    parts = text.split(_ESCAPE)
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:2]
        if len(code) < 2 or not all(c in "0123456789ABCDEF" for c in code):
            raise ValueError(f"bad escape {_ESCAPE}{code}")
        out.append(chr(int(code, 16)) + part[2:])
    return "".join(out)


def dirname(name: str) -> str:
    """The directory name of a normalized folder name inside the account root ("" for INBOX)."""
    if name == INBOX:
        return ""
    return "." + ".".join(_escape(utf7.encode(level)) for level in name.split(SEP))


def from_dirname(entry: str) -> str:
    """The folder name a directory stands for; ValueError if it is not one we would write."""
    if not entry.startswith(".") or entry in (".", ".."):
        raise ValueError(f"{entry!r} is not a Maildir++ folder directory")
    name = SEP.join(utf7.decode(_unescape(level)) for level in entry[1:].split("."))
    if normalize(name) != name or dirname(name) != entry:
        raise ValueError(f"{entry!r} is not in the canonical spelling")
    return name


def parent_names(name: str) -> list[str]:
    """The names above ``name``, top first: "a/b/c" -> ["a", "a/b"]."""
    levels = name.split(SEP)
    return [SEP.join(levels[:i]) for i in range(1, len(levels))]
