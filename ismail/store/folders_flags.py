"""Message flags in Maildir file names, and keywords in ``dovecot-keywords``.

A message's flags live in its name, after the key: ``<key>:2,<letters>`` in cur/
("!" instead of ":" on Windows, where ":" cannot be in a file name; both are read
everywhere).  The letters are in ASCII order:

    D \\Draft   F \\Flagged   R \\Answered   S \\Seen   T \\Deleted   (P, passed, is kept as is)

Keywords are the letters a-z, each standing for the keyword on that line of the
folder's ``dovecot-keywords`` file (``0 $Forwarded`` is "a", ``1 Work`` is "b").
That is Dovecot's own file and format, so a Maildir moved to Dovecot keeps its
keywords; the price is at most 26 keywords per folder (``KeywordLimit``).
Keywords are matched without regard to case and keep the spelling first used.
\\Recent is never stored: it belongs to a session (RFC 3501 §2.3.2).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable

from ..fsutil import atomic_write
from .uidlist import retry_windows

INFO_SEP = "!" if os.name == "nt" else ":"
KEYWORDS_FILE = "dovecot-keywords"
MAX_KEYWORDS = 26
RECENT = "\\Recent"

_SYSTEM = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
_LETTER = {flag: letter for letter, flag in _SYSTEM.items()}
_CANONICAL = {flag.lower(): flag for flag in _LETTER}
SYSTEM_FLAGS = frozenset(_LETTER)


class KeywordLimit(ValueError):
    """The folder has no letter left for another keyword."""


def split_name(filename: str) -> tuple[str, str]:
    """(key, info) of a Maildir file name; info is "" when there is none."""
    cut = filename.find(":")
    if cut < 0:
        cut = filename.find("!")
        if cut < 0:
            return filename, ""
    return filename[:cut], filename[cut + 1:]


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    """System flags in their canonical spelling, keywords as given; \\Recent is dropped.

    ValueError for an unknown system flag or a keyword the files cannot hold.
    """
    out = set()
    for flag in flags:
        if flag.startswith("\\"):
            canonical = _CANONICAL.get(flag.lower())
            if canonical is None:
                if flag.lower() == RECENT.lower():
                    continue
                raise ValueError(f"unknown system flag {flag}")
            out.add(canonical)
        elif not flag or any(c.isspace() or not c.isprintable() for c in flag):
            raise ValueError(f"keyword {flag!r} is empty or has white space or control characters")
        else:
            out.add(flag)
    return frozenset(out)


class Keywords:
    """The letter <-> keyword table of one folder, reloaded when the file changes."""

    def __init__(self, folder_dir: Path) -> None:
        self.path = folder_dir / KEYWORDS_FILE
        self.names: list[str | None] = []
        self._stat: tuple | None = None
        self._cache: dict[str, frozenset[str]] = {}

    def reload(self) -> bool:
        """Re-read the file if it changed; True when it did."""
        try:
            st = os.stat(self.path)
            stat = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stat = None
        if stat == self._stat:
            return False
        names: list[str | None] = []
        if stat is not None:
            for line in self.path.read_text("utf-8", "replace").splitlines():
                number, _, name = line.partition(" ")
                if number.isascii() and number.isdigit() and name and int(number) < MAX_KEYWORDS:
                    n = int(number)
                    names.extend([None] * (n + 1 - len(names)))
                    names[n] = name
        self.names, self._stat, self._cache = names, stat, {}
        return True

    @property
    def stat(self) -> tuple | None:
        """The table file as last read (inode, mtime, size), None if there was none."""
        return self._stat

    def flags_of(self, info: str) -> frozenset[str]:
        """The IMAP flags an info part (``2,FSa``) stands for."""
        flags = self._cache.get(info)
        if flags is None:
            out = set()
            if info.startswith("2,"):
                for letter in info[2:]:
                    if letter in _SYSTEM:
                        out.add(_SYSTEM[letter])
                    elif "a" <= letter <= "z":
                        n = ord(letter) - 97
                        if n < len(self.names) and self.names[n]:
                            out.add(self.names[n])
            flags = self._cache[info] = frozenset(out)
        return flags

    def find(self, keyword: str) -> str | None:
        """The letter for ``keyword`` if the table has it."""
        folded = keyword.casefold()
        for n, name in enumerate(self.names):
            if name is not None and name.casefold() == folded:
                return chr(97 + n)
        return None

    def letters_for(self, keywords: Iterable[str]) -> dict[str, str] | None:
        """keyword -> letter if every keyword has one already, else None (call ``define``)."""
        out = {}
        for kw in keywords:
            letter = self.find(kw)
            if letter is None:
                return None
            out[kw] = letter
        return out

    def define(self, keywords: Iterable[str]) -> dict[str, str]:
        """Give each keyword a letter, adding lines to the file. The caller holds the folder lock."""
        self.reload()
        missing = [kw for kw in dict.fromkeys(keywords) if self.find(kw) is None]
        if missing:
            names = list(self.names)
            for kw in missing:
                if kw.casefold() in (n.casefold() for n in names if n):
                    continue  # the same keyword twice in one request, in two spellings
                try:
                    slot = names.index(None)
                    names[slot] = kw
                except ValueError:
                    if len(names) >= MAX_KEYWORDS:
                        raise KeywordLimit(f"this folder already has {MAX_KEYWORDS} keywords") from None
                    names.append(kw)
            text = "".join(f"{n} {name}\n" for n, name in enumerate(names) if name)
            # A reader without the lock may have the file open: on Windows that blocks a replace.
            retry_windows(lambda: atomic_write(self.path, text.encode("utf-8"), make_parent=False))
            self._stat = None
            self.reload()
        table = {kw: self.find(kw) for kw in keywords}
        if None in table.values():   # the file went with the folder, deleted meanwhile
            raise FileNotFoundError(errno.ENOENT, "the folder's keywords are gone", str(self.path))
        return table  # type: ignore[return-value]

    def name_of(self, letter: str) -> str | None:
        n = ord(letter) - 97
        return self.names[n] if 0 <= n < len(self.names) else None


def letters(flags: frozenset[str], keyword_letters: dict[str, str]) -> set[str]:
    """The letters for normalized ``flags``; keywords missing from ``keyword_letters`` are left out."""
    return {_LETTER[f] if f in _LETTER else keyword_letters[f]
            for f in flags if f in _LETTER or f in keyword_letters}


def change_info(info: str, change: set[str], mode: str, keywords: Keywords) -> str:
    """The info part after a STORE of the letters ``change`` in ``mode`` (set, add, remove).

    Letters no IMAP flag stands for (P, a-z without a keyword) survive even "set".
    """
    current = set(info[2:]) if info.startswith("2,") else set()
    if mode == "set":
        result = {c for c in current
                  if c not in _SYSTEM and not ("a" <= c <= "z" and keywords.name_of(c))} | change
    elif mode == "add":
        result = current | change
    elif mode == "remove":
        result = current - change
    else:
        raise ValueError(f"mode must be 'set', 'add' or 'remove', not {mode!r}")
    return "2," + "".join(sorted(result))


def info_keywords(info: str, keywords: Keywords) -> tuple[str, list[str]]:
    """(letters to carry as they are, keyword names) of an info part, for a copy to another
    folder whose keyword table differs: system letters and P carry over, a-z are re-mapped."""
    if not info.startswith("2,"):
        return "", []
    carry, names = [], []
    for c in info[2:]:
        if "a" <= c <= "z":
            name = keywords.name_of(c)
            if name:
                names.append(name)
        else:
            carry.append(c)
    return "".join(carry), names

