"""An account's Maildir seen as a POP3 maildrop (RFC 1939): a snapshot, read, then UPDATE.

Model
-----
* ``Maildrops`` is the server's registry of open maildrops (one per mailbox at a time:
  POP3's exclusive lock, kept in memory because ISMail is one process).  ``open`` takes
  the mailbox and lists ``new/`` and ``cur/`` once: that list is the session's snapshot;
  mail delivered later is seen by the next session.
* A message's ``uid`` is its Maildir unique name, the file name before the first ","
  or ":" ("!" on Windows), so it survives restarts, the move from new/ to cur/ and flag
  changes.  POP3 wants 1-70 printable characters; a name outside that gets a stable
  stand-in (the SHA-1 of the name, hex).
* Sizes come from Dovecot's ``,W=<size with CRLF>`` field in the name (ISMail's delivery
  writes it), so opening a large maildrop reads no message.  For other files the size
  is computed once (file size + number of LFs) and remembered in the registry by
  (name, size on disk, mtime).
* Order: by the delivery time in the name (seconds, then ".M<microseconds>"), then the
  name; names without a time (other tools) come after, by name.  Deterministic, oldest
  first, which is what mail programs show.
* ``read`` streams the message with CRLF line ends in chunks of whole lines; ``commit``
  is the UPDATE state: unlink the deleted, move the retrieved to cur/ with the S flag,
  fsync both folders once.  Nothing else ever changes the Maildir, so a dropped
  connection or a crash before ``commit`` deletes nothing.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Iterator

from ..fsutil import fsync_dir

CHUNK = 65536
INFO_SEP = "!" if os.name == "nt" else ":"
_W_FIELD = re.compile(r",W=(\d+)")


class MaildropBusy(Exception):
    """Another session holds this mailbox (POP3 answers -ERR [IN-USE])."""


class DropMessage:
    """One message of the snapshot.  A plain slotted class, with ``path`` made only when
    asked: building 100,000 Path objects would cost most of a large maildrop's login."""

    __slots__ = ("uid", "size", "_folder", "_name")

    def __init__(self, uid: str, size: int, path: Path | str, name: str | None = None) -> None:
        """``DropMessage(uid, size, path)``, or (uid, size, folder, name) to defer the Path."""
        self.uid = uid    # the UIDL
        self.size = size  # octets as sent over POP3: CRLF line ends, before dot-stuffing
        if name is None:
            path, name = os.path.split(path)
        self._folder = str(path)
        self._name = name

    @property
    def path(self) -> Path:
        """Where the file was when the drop was opened."""
        return Path(self._folder, self._name)

    def __repr__(self) -> str:
        return f"DropMessage({self.uid!r}, {self.size})"


def unique_name(filename: str) -> str:
    """The Maildir unique part of a file name: before the first "," or info separator."""
    return filename.partition(",")[0].partition(":")[0].partition("!")[0]


def _uidl(name: str) -> str:
    if 0 < len(name) <= 70 and name.isascii() and name.isprintable() and " " not in name:
        return name
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()


def _order(filename: str) -> tuple:
    seconds, _, rest = filename.partition(".")
    if not seconds.isdigit():
        return (1, 0, 0, filename)
    usec = rest[1:].partition("P")[0] if rest.startswith("M") else ""
    return (0, int(seconds), int(usec) if usec.isdigit() else 0, filename)


class Maildrops:
    """The registry of open maildrops, owned by the server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[Path] = set()
        self._sizes: dict[tuple[str, int, int], int] = {}  # computed sizes of names without W=

    def open(self, mailbox: Path) -> "Maildrop":
        key = Path(os.path.abspath(mailbox))
        with self._lock:
            if key in self._open:
                raise MaildropBusy(str(mailbox))
            self._open.add(key)
        try:
            return Maildrop(self, key)
        except BaseException:
            self._release(key)
            raise

    def busy(self, mailbox: Path) -> bool:
        with self._lock:
            return Path(os.path.abspath(mailbox)) in self._open

    def _release(self, key: Path) -> None:
        with self._lock:
            self._open.discard(key)

    def _size(self, entry: os.DirEntry) -> int:
        st = entry.stat()
        key = (entry.path, st.st_size, st.st_mtime_ns)
        size = self._sizes.get(key)
        if size is None:
            lines = 0
            with open(entry.path, "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    lines += block.count(b"\n")
            size = st.st_size + lines
            if len(self._sizes) > 200_000:  # bounded: other tools' files only
                self._sizes.clear()
            self._sizes[key] = size
        return size


class Maildrop:
    """One session's view of a mailbox, from login to QUIT (or a dropped connection)."""

    def __init__(self, registry: Maildrops, mailbox: Path) -> None:
        self._registry = registry
        self.mailbox = mailbox
        self._closed = False
        for sub in ("new", "cur", "tmp"):  # an account that has had no mail yet
            (mailbox / sub).mkdir(parents=True, exist_ok=True)
        found: list[tuple[tuple, DropMessage]] = []
        for sub in ("new", "cur"):
            folder = str(mailbox / sub)
            with os.scandir(folder) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue
                    w = _W_FIELD.search(name)
                    try:
                        size = int(w.group(1)) if w else registry._size(entry)
                    except OSError:
                        continue  # vanished while listing
                    found.append((_order(name), DropMessage(_uidl(unique_name(name)), size,
                                                            folder, name)))
        found.sort(key=lambda pair: pair[0])
        self.messages: list[DropMessage] = [m for _, m in found]

    def total_size(self) -> int:
        return sum(m.size for m in self.messages)

    # -- reading ---------------------------------------------------------------------------------
    def _locate(self, msg: DropMessage) -> Path:
        """The message's file now: where it was, or renamed since (new/ -> cur/, flags)."""
        if msg.path.exists():
            return msg.path
        unique = unique_name(msg.path.name)
        for sub in ("cur", "new"):
            try:
                with os.scandir(self.mailbox / sub) as it:
                    for entry in it:
                        if unique_name(entry.name) == unique:
                            return Path(entry.path)
            except FileNotFoundError:
                pass
        raise FileNotFoundError(f"message {msg.uid} is no longer in {self.mailbox}")

    def read(self, index: int, body_lines: int | None = None) -> Iterator[bytes]:
        """The message with CRLF line ends, in chunks of whole lines (the last may lack its
        line end if the file does); ``body_lines``: the header, the empty line and so many
        lines of the body (POP3 TOP)."""
        path = self._locate(self.messages[index])
        f = open(path, "rb")
        return self._chunks(f, body_lines)

    @staticmethod
    def _chunks(f, body_lines: int | None) -> Iterator[bytes]:
        with f:
            carry = b""
            in_body = False
            left = body_lines
            while True:
                block = f.read(CHUNK)
                if not block:
                    if carry:
                        yield carry.replace(b"\n", b"\r\n")
                    return
                block = carry + block
                cut = block.rfind(b"\n") + 1
                whole, carry = block[:cut], block[cut:]
                if not whole:
                    continue
                if left is not None:
                    whole, done, in_body, left = _top(whole, in_body, left)
                    if whole:
                        yield whole.replace(b"\n", b"\r\n")
                    if done:
                        return
                    continue
                yield whole.replace(b"\n", b"\r\n")

    # -- UPDATE ------------------------------------------------------------------------------------
    def commit(self, deleted: set[int], seen: set[int]) -> int:
        """Delete what was marked, flag what was read as seen; returns how many were deleted.

        Raises OSError at the end if some file could not be changed; everything else is done.
        """
        removed = 0
        problems: list[str] = []
        for index in sorted(deleted):
            try:
                self._locate(self.messages[index]).unlink()
                removed += 1
            except FileNotFoundError:
                removed += 1  # gone already: deleted, as asked
            except OSError as e:
                problems.append(f"{self.messages[index].uid}: {e}")
        for index in sorted(seen - deleted):
            try:
                self._mark_seen(self._locate(self.messages[index]))
            except FileNotFoundError:
                pass
            except OSError as e:
                problems.append(f"{self.messages[index].uid}: {e}")
        for sub in ("new", "cur"):
            try:
                fsync_dir(self.mailbox / sub)
            except OSError as e:
                problems.append(f"{sub}/: {e}")
        if problems:
            raise OSError(f"could not update {self.mailbox}: " + "; ".join(problems))
        return removed

    def _mark_seen(self, path: Path) -> None:
        name = path.name
        base, sep, info = name.partition(":2," if ":2," in name else "!2,")
        if sep:
            flags = {c for c in info if c.isupper()}
            keywords = "".join(c for c in info if not c.isupper())
            if "S" in flags and path.parent.name == "cur":
                return
            flags.add("S")
            new_name = f"{base}{sep}{''.join(sorted(flags))}{keywords}"
        else:
            new_name = f"{name}{INFO_SEP}2,S"
        os.replace(path, self.mailbox / "cur" / new_name)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._registry._release(self.mailbox)


def _top(data: bytes, in_body: bool, left: int) -> tuple[bytes, bool, bool, int]:
    """Cut whole LF lines for TOP: (what to send, finished, in the body now, body lines left)."""
    out = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos) + 1
        line = data[pos:end]
        if in_body:
            if left <= 0:
                return b"".join(out), True, in_body, left
            left -= 1
        elif line in (b"\n", b"\r\n"):
            in_body = True
        out.append(line)
        pos = end
    return b"".join(out), in_body and left <= 0, in_body, left
