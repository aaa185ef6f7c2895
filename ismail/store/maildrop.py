"""An account's Maildir seen as a POP3 maildrop (RFC 1939): a snapshot, read, then UPDATE.

Model
-----
* ``Maildrops`` is the server's registry of open maildrops: one session per mailbox at a
  time (POP3's exclusive lock), kept in memory because ISMail is one process, keyed by
  the resolved path so two spellings of one folder are one mailbox.
* ``open`` lists ``new/`` and ``cur/`` once: that list is the session's snapshot, oldest
  delivery first.  Mail delivered later is for the next session.  Names starting with
  "." and anything that is not a regular file are not messages.
* A file name is ``<unique>[,X=..]*[<sep>2,<flags>]``: the Maildir unique name, Dovecot's
  fields (``,S=`` size on disk, ``,W=`` size with CRLF) and the info after ":" (or "!",
  which tools on Windows use because ":" is not allowed there).  The unique name is the
  message's UIDL: it survives restarts, the move from new/ to cur/ and flag changes.
  POP3 wants 1-70 characters in 0x21-0x7E; a name outside that gets a stable stand-in,
  the SHA-1 of the name in hex (40 characters).
* Sizes come from ``,W=`` so a large maildrop opens from its directory listing alone.
  For other files the size is counted with CRLF line ends (a file on disk may have
  LF or CRLF ones: store/lineends.py), computed once and remembered in the registry
  by (file, size on disk, mtime).
* Order: by the delivery time at the front of the unique name (seconds, then the
  ``M<microseconds>`` of the middle part), then the unique name, then the file name;
  names that do not start with a time (not a Maildir writer we know) come after, by
  unique name.  The unique name as tie-break keeps the order across flag changes.
* ``read`` streams the file with CRLF line ends (whichever it had on disk) in ~64 KiB
  chunks of whole lines.  A file that moved since the snapshot (another program read it
  or changed its flags) is looked up by its unique name in new/ and cur/.
* ``commit`` is the UPDATE state: unlink the deleted, move the retrieved to cur/ with the
  S flag, fsync both folders once.  Nothing else changes the Maildir, so a dropped
  connection or a crash before ``commit`` deletes nothing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..fsutil import O_READ, fsync_dir, make_maildirs
from .folders_box import settled_after
from .lineends import file_crlf_size

log = logging.getLogger("ismail.maildrop")

CHUNK = 65536
# A line longer than this is sent in pieces, so no file makes us hold more than this
# in memory; the POP3 session tracks line starts across chunks for dot-stuffing.
LONG_LINE = 16 * CHUNK
INFO_SEP = "!" if os.name == "nt" else ":"  # for names we write; both are read
_SUBFOLDERS = ("new", "cur")
LAST_NAMES_KEPT = 64  # mailboxes whose last listing is remembered by name (see _snapshot)


class MaildropBusy(Exception):
    """Another session holds this mailbox (POP3 answers -ERR [IN-USE])."""


@dataclass(frozen=True, slots=True)
class DropMessage:
    """One message of the snapshot.  ``path`` is built when asked: 100,000 Path objects
    would cost more than the whole rest of opening a large maildrop."""

    uid: str      # the UIDL
    size: int     # octets as sent over POP3: CRLF line ends, before dot-stuffing
    folder: Path  # new/ or cur/ (one shared object per folder)
    name: str     # the file name when the drop was opened

    @property
    def path(self) -> Path:
        """Where the file was when the drop was opened."""
        return self.folder / self.name


# -- file names --------------------------------------------------------------------------------
def split_name(filename: str) -> tuple[str, str, str]:
    """(base, separator, info): the name before the info, ":" or "!" or "", the info."""
    base, sep, info = filename.partition(":")
    if "!" in base:  # a Windows-style name, or "!" before a ":" that belongs to the info
        base, sep, info = filename.partition("!")
    return base, sep, info


def unique_name(filename: str) -> str:
    """The Maildir unique part of a file name: before the first "," or info separator."""
    return split_name(filename)[0].partition(",")[0]


def _uidl(unique: str) -> str:
    if 0 < len(unique) <= 70 and unique.isascii() and unique.isprintable() and " " not in unique:
        return unique
    return hashlib.sha1(unique.encode("utf-8", "surrogateescape")).hexdigest()


def _crlf_size_field(base: str) -> int:
    """The ``,W=`` value of a name's base, or -1."""
    at = base.find(",W=")
    if at < 0:
        return -1
    digits = base[at + 3:].partition(",")[0]
    return int(digits) if digits.isdecimal() else -1


_UNTIMED = 1 << 62  # after every real time


def _delivered(unique: str) -> int:
    """Microseconds since the epoch from "<seconds>.<middle>.<host>" with "M<microseconds>"
    in the middle (ISMail's and Dovecot's names); _UNTIMED if it does not start with a time."""
    seconds, _, rest = unique.partition(".")
    if not seconds.isdecimal():
        return _UNTIMED
    middle = rest.partition(".")[0]
    after = middle[middle.find("M") + 1:] if "M" in middle else ""
    digits = after[:len(after) - len(after.lstrip("0123456789"))]
    return int(seconds) * 1_000_000 + (min(int(digits), 999_999) if digits else 0)


def seen_name(filename: str) -> str | None:
    """The file name with the seen flag added (other flags and keywords kept, flags in
    ASCII order); None for an info this module does not understand (not "2,")."""
    base, sep, info = split_name(filename)
    if not sep:
        return f"{filename}{INFO_SEP}2,S"
    if not info.startswith("2,"):
        return None
    flags = info[2:]
    if "S" in flags:
        return filename
    upper = sorted({c for c in flags if "A" <= c <= "Z"} | {"S"})
    others = "".join(c for c in flags if not "A" <= c <= "Z")  # Dovecot's keywords a-z
    return f"{base}{sep}2,{''.join(upper)}{others}"


# -- the registry ------------------------------------------------------------------------------
class Maildrops:
    """The registry of open maildrops, owned by the server (sessions run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[str] = set()
        # mailbox -> {file: (size on disk, mtime_ns, CRLF size)} for names without W=,
        # replaced at each open so that files gone since do not pile up.
        self._sizes: dict[str, dict[str, tuple[int, int, int]]] = {}
        # mailbox -> (the folders' (mtime, inode, size) when listed, the messages): see Maildrop._listed
        self._listings: dict[str, tuple[tuple, list[DropMessage], dict[str, bytes]]] = {}
        # mailbox -> (the file names of new/ and cur/ as listed, the messages in order) of its
        # last snapshot when every name carried its size: the same names again need no parsing
        # and no sorting (a mailbox listed again before its mtimes have settled).
        self._last_names: dict[str, tuple[tuple[list[str], ...], list[DropMessage]]] = {}

    @staticmethod
    def _key(mailbox: Path) -> str:
        return os.path.normcase(os.path.realpath(mailbox))

    def open(self, mailbox: Path) -> "Maildrop":
        """Take the mailbox for one session.  Raises MaildropBusy, or OSError if it cannot
        be listed; a mailbox that has had no mail yet is created empty."""
        key = self._key(mailbox)
        with self._lock:
            if key in self._open:
                raise MaildropBusy(str(mailbox))
            self._open.add(key)
        try:
            return Maildrop(self, key, Path(os.path.realpath(mailbox)))
        except BaseException:
            self._release(key)
            raise

    def busy(self, mailbox: Path) -> bool:
        with self._lock:
            return self._key(mailbox) in self._open

    def _release(self, key: str) -> None:
        with self._lock:
            self._open.discard(key)

    def _size_memory(self, key: str, sizes: dict[str, tuple[int, int, int]] | None = None
                     ) -> dict[str, tuple[int, int, int]]:
        """The computed sizes of a mailbox; with ``sizes``, replace them.  Only the session
        holding the mailbox uses its entry, and a dict get or set is atomic: no lock."""
        if sizes is not None:
            self._sizes[key] = sizes
        return self._sizes.get(key, {})


# -- one session's maildrop --------------------------------------------------------------------
class Maildrop:
    """One session's view of a mailbox, from login to QUIT (or a dropped connection)."""

    def __init__(self, registry: Maildrops, key: str, mailbox: Path) -> None:
        self._registry = registry
        self._key = key
        self.mailbox = mailbox
        self._closed = False
        self._listing: dict[str, Path] | None = None  # during commit
        self._total: int | None = None  # total_size
        make_maildirs(mailbox)  # an account that has had no mail yet
        # Answers derived from the whole snapshot (POP3's LIST and UIDL), shared by every
        # session that gets the same remembered listing.
        self.memo: dict[str, bytes] = {}
        self.messages: list[DropMessage] = self._listed()

    def _listed(self) -> list[DropMessage]:
        """The snapshot: the last session's listing when neither folder changed since,
        else a new one.  A listing is reused only if it was made when both folders' mtimes
        had settled already (``folders_box.settled_after``): a file added in the same
        clock tick as the listing cannot hide behind an unchanged modification time (git's
        "racy" rule)."""
        now = time.time()
        try:
            signature = tuple((st.st_mtime_ns, st.st_ino, st.st_size)
                              for st in (os.stat(self.mailbox / sub) for sub in _SUBFOLDERS))
        except OSError:
            return self._snapshot()
        cached = self._registry._listings.get(self._key)
        if cached is not None and cached[0] == signature:
            self.memo = cached[2]
            return list(cached[1])
        messages = self._snapshot()
        if now >= settled_after(max(s[0] for s in signature)):
            if len(self._registry._listings) > 1000:  # bounded: one entry per active mailbox
                self._registry._listings.clear()
            self._registry._listings[self._key] = (signature, messages, self.memo)
        else:
            self._registry._listings.pop(self._key, None)
        return list(messages)

    def _snapshot(self) -> list[DropMessage]:
        # Names only (100,000 DirEntry objects would double the memory a login needs for a
        # moment); the entries of names without a size field are kept for their stat.
        listed: list[tuple[Path, list[str]]] = []
        unsized: dict[str, os.DirEntry] = {}
        for sub in _SUBFOLDERS:
            folder = self.mailbox / sub
            names_here: list[str] = []
            with os.scandir(folder) as it:
                for entry in it:
                    name = entry.name
                    if name[:1] == "." or not entry.is_file(follow_symlinks=False):
                        continue
                    names_here.append(name)
                    if ",W=" not in name:
                        unsized[entry.path] = entry
            listed.append((folder, names_here))
        names = tuple(names_here for _, names_here in listed)
        registry = self._registry
        last = registry._last_names.get(self._key)
        if last is not None and last[0] == names:
            return list(last[1])  # the same files, each named with its size: nothing to work out
        known = registry._size_memory(self._key)
        computed: dict[str, tuple[int, int, int]] = {}
        # Keys and messages in two lists, sorted by index: (int, str, str) keys hold no
        # objects, so the garbage collector stops tracking them, which counts at 100,000.
        keys: list[tuple[int, str, str]] = []
        found: list[DropMessage] = []
        for folder, names_here in listed:
            for name in names_here:
                base = split_name(name)[0]
                size = _crlf_size_field(base)
                if size < 0:
                    size = self._measure(os.path.join(folder, name), unsized, known, computed)
                    if size < 0:
                        continue
                unique = base.partition(",")[0]
                keys.append((_delivered(unique), unique, name))
                found.append(DropMessage(_uidl(unique), size, folder, name))
        registry._size_memory(self._key, computed)
        messages = [found[i] for i in sorted(range(len(keys)), key=keys.__getitem__)]
        if not computed and len(found) == sum(map(len, names)):  # every size from a name
            if len(registry._last_names) >= LAST_NAMES_KEPT:
                registry._last_names.clear()
            registry._last_names[self._key] = (names, messages)
            return list(messages)  # the remembered list is never the one a session holds
        registry._last_names.pop(self._key, None)
        return messages

    def _measure(self, path: str, entries: dict[str, os.DirEntry], known: dict, computed: dict) -> int:
        """The CRLF size of a file without W=, from the registry's memory or by reading it;
        -1 if it vanished or cannot be read (it is then not part of this session)."""
        try:
            entry = entries.get(path)  # its stat is free on Windows
            st = (entry.stat(follow_symlinks=False) if entry is not None
                  else os.stat(path, follow_symlinks=False))
            cached = known.get(path)
            if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
                size = cached[2]
            else:
                size = file_crlf_size(path)
        except FileNotFoundError:
            return -1  # taken away while we listed
        except OSError as e:
            # Listing it without a size would break LIST; leaving it out loses nothing.
            log.warning("%s: left out of the POP3 session, cannot read it: %s", path, e)
            return -1
        computed[path] = (st.st_size, st.st_mtime_ns, size)
        return size

    def total_size(self) -> int:
        """Octets of the whole snapshot (worked out once: STAT at 100,000 messages)."""
        if self._total is None:
            self._total = sum(m.size for m in self.messages)
        return self._total

    # -- finding a message that moved ------------------------------------------------------------
    def _current_names(self) -> dict[str, Path]:
        """Unique name -> file now, over new/ and cur/ (cur/ wins: it is the later place)."""
        where: dict[str, Path] = {}
        for sub in _SUBFOLDERS:
            folder = self.mailbox / sub
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.name[:1] != ".":
                            where[unique_name(entry.name)] = folder / entry.name
            except FileNotFoundError:
                pass
        return where

    # -- reading -------------------------------------------------------------------------------
    def read(self, index: int, body_lines: int | None = None) -> "MessageReader":
        """The message with CRLF line ends, in chunks of whole lines (the last may lack its
        line end if the file does; a line over LONG_LINE comes in pieces).  ``body_lines``
        (POP3 TOP): the header, the empty line and at most so many lines of the body.
        Opens the file now, so FileNotFoundError or OSError comes from this call."""
        msg = self.messages[index]
        try:
            fd = os.open(os.path.join(msg.folder, msg.name), O_READ)
        except FileNotFoundError:
            moved = self._current_names().get(unique_name(msg.name))
            if moved is None:
                raise FileNotFoundError(2, f"message {msg.uid} is no longer in the mailbox",
                                        str(msg.path)) from None
            fd = os.open(moved, O_READ)
        return MessageReader(fd, body_lines)

    # -- UPDATE --------------------------------------------------------------------------------
    def commit(self, deleted: set[int], seen: set[int]) -> int:
        """Delete what was marked, flag what was read as seen; returns how many were deleted.

        A message already gone counts as done.  If a file could not be changed the rest is
        still done and OSError is raised at the end.  Deletions are made durable (the
        folders synced) before this returns: a message deleted and then back after a
        crash would be downloaded twice.  Seen flags alone are not: a crash can cost a
        flag, never a message (a rename leaves the file in new/ or in cur/), and the two
        syncs were ~2 ms of the ~45 of a QUIT that marks 5,000 read here (Dovecot does
        not sync for flags either).
        """
        if self._closed:
            raise RuntimeError("commit on a closed maildrop: another session may hold it now")
        if not deleted and not seen:
            return 0  # a session that only looked: no folder to sync
        problems: list[str] = []
        self._listing = None
        removed = 0
        to_mark = sorted(seen - deleted)
        with _Folders(self.mailbox, many=len(to_mark) >= _Folders.MANY) as folders:
            for index in sorted(deleted):
                if self._update(self.messages[index], folders.unlink, problems):
                    removed += 1
            for index in folders.mark_new_seen(self.messages, to_mark):
                self._update(self.messages[index], folders.mark_seen, problems)
            for sub in _SUBFOLDERS if deleted else ():
                try:
                    folders.sync(sub)
                except OSError as e:
                    problems.append(f"{sub}/: {e}")
        if problems:
            raise OSError(f"could not update {self.mailbox}: " + "; ".join(problems))
        return removed

    def _update(self, msg: DropMessage, change: Callable[[str, str], object],
                problems: list[str]) -> bool:
        """Apply ``change`` (folder, name) to the message's file, where it is now; False
        if it failed.  A commit of thousands of messages is mostly this."""
        folder = str(msg.folder)
        try:
            try:
                change(folder, msg.name)
            except FileNotFoundError:
                if self._listing is None:  # list the folders once per commit, not per file
                    self._listing = self._current_names()
                moved = self._listing.get(unique_name(msg.name))
                if moved is not None and (str(moved.parent), moved.name) != (folder, msg.name):
                    change(str(moved.parent), moved.name)
        except FileNotFoundError:
            pass  # gone since the listing: nothing left to do
        except OSError as e:
            problems.append(f"{msg.name}: {e}")
            return False
        return True

    def close(self) -> None:
        """Let another session open the mailbox; idempotent."""
        if not self._closed:
            self._closed = True
            self._registry._release(self._key)

    def __enter__(self) -> "Maildrop":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Folders:
    """new/ and cur/ of one mailbox while a commit changes their files.

    Where the system takes names relative to an open folder (POSIX), the folders are
    opened once and each file is named within its folder: no walk of the whole path per
    call, and the folders' sync reuses them.  Elsewhere (Windows) whole paths.  A file is
    never moved over one of the same name in cur/: with ``many`` messages to mark, cur/
    is listed once and the names are looked up in memory (a lookup per file by the
    system raises an exception per message in Python, a third of the time of a QUIT
    that marks thousands); with few, each is looked at.  The listing misses only a file
    made in the milliseconds of the commit itself, under a name the delivery made unique.
    """

    _AT = os.rename in os.supports_dir_fd and os.stat in os.supports_dir_fd and \
        os.unlink in os.supports_dir_fd
    MANY = 64  # messages to mark from which cur/ is listed once

    def __init__(self, mailbox: Path, many: bool = False) -> None:
        self._mailbox = mailbox
        self.new, self.cur = str(mailbox / "new"), str(mailbox / "cur")
        self._fds: dict[str, int] = {}
        if self._AT:
            try:
                for sub in _SUBFOLDERS:
                    path = str(mailbox / sub)
                    self._fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                self.close()
        self._in_cur: set[str] | None = None
        if many:
            try:
                self._in_cur = set(os.listdir(self._fds.get(self.cur, self.cur)))
            except OSError:
                pass  # looked at one by one, then

    def unlink(self, folder: str, name: str) -> None:
        fd = self._fds.get(folder)
        if fd is None:
            os.unlink(os.path.join(folder, name))
        else:
            os.unlink(name, dir_fd=fd)

    def mark_new_seen(self, messages: list[DropMessage], indices: list[int]) -> list[int]:
        """The usual QUIT in one tight pass: each message still in new/ under a name with
        no info moves to cur/ with the seen flag (never over a name taken there).  Returns
        the indices left to ``mark_seen`` one by one: the others, and any whose move
        failed (a file moved since, an error), which that tries again and reports."""
        src, dst, in_cur = self._fds.get(self.new), self._fds.get(self.cur), self._in_cur
        if src is None or dst is None or in_cur is None:
            return indices
        new, suffix, rename = self.new, INFO_SEP + "2,S", os.rename
        left: list[int] = []
        for index in indices:
            msg = messages[index]
            name = msg.name
            if ":" in name or "!" in name or str(msg.folder) != new:
                left.append(index)
                continue
            target = name + suffix
            if target in in_cur:
                continue  # as mark_seen: a name clash must not cost a message
            try:
                rename(name, target, src_dir_fd=src, dst_dir_fd=dst)
            except OSError:
                left.append(index)
                continue
            in_cur.add(target)
        return left

    def mark_seen(self, folder: str, name: str) -> None:
        """The message moved to cur/ with the seen flag; never over a file of that name."""
        new_name = seen_name(name)
        if new_name is None:
            return  # an info we do not understand: leave the file as it is
        cur = self.cur
        if new_name == name and folder == cur:
            return
        src, dst = self._fds.get(folder), self._fds.get(cur)
        in_cur = self._in_cur
        if in_cur is not None:
            taken = new_name in in_cur
        elif dst is None:
            taken = os.path.lexists(os.path.join(cur, new_name))
        else:
            try:
                os.stat(new_name, dir_fd=dst, follow_symlinks=False)
                taken = True
            except FileNotFoundError:
                taken = False
        if taken:
            return  # never overwrite: a name clash must not cost a message
        if src is None or dst is None:
            os.replace(os.path.join(folder, name), os.path.join(cur, new_name))
        else:
            os.rename(name, new_name, src_dir_fd=src, dst_dir_fd=dst)  # POSIX: rename is replace
        if in_cur is not None:
            in_cur.add(new_name)  # only once it is there: a file moved meanwhile is tried again

    def sync(self, sub: str) -> None:
        path = self._mailbox / sub
        fsync_dir(path, self._fds.get(str(path)))

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> "_Folders":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- streaming -----------------------------------------------------------------------------------
class MessageReader:
    """An iterator of CRLF chunks over one open file; ``close`` (or the end) closes it,
    even when iteration never started.

    The file is a plain descriptor read with os.read: a Python file object adds an
    fstat, an ioctl and an lseek to every message, half the system calls of a RETR."""

    def __init__(self, fd: int, body_lines: int | None) -> None:
        self._fd: int | None = fd
        blocks = _lf_blocks(fd)
        self._blocks = blocks if body_lines is None else _top(blocks, max(body_lines, 0))

    def __iter__(self) -> "MessageReader":
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._blocks).replace(b"\n", b"\r\n")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._blocks.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _lf_blocks(fd: int) -> Iterator[bytes]:
    """The file in blocks of whole LF lines (a CRLF on disk read as LF, as lineends.lf_blocks
    does, inline: this is every RETR's loop); the last may lack its LF, and a line longer
    than LONG_LINE comes in pieces."""
    pending: list[bytes] = []
    pending_len = 0
    cr = b""   # a CR that ended the last read: an LF may follow
    while block := os.read(fd, CHUNK):
        if cr:
            block, cr = cr + block, b""
        if b"\r" in block:
            if block[-1:] == b"\r":
                block, cr = block[:-1], b"\r"
            block = block.replace(b"\r\n", b"\n")
        cut = block.rfind(b"\n") + 1
        if not cut:
            pending.append(block)
            pending_len += len(block)
            if pending_len >= LONG_LINE:
                yield b"".join(pending)
                pending, pending_len = [], 0
            continue
        pending.append(block[:cut])
        yield b"".join(pending)
        pending = [block[cut:]]
        pending_len = len(block) - cut
    if cr:
        pending.append(cr)
        pending_len += 1
    if pending_len:
        yield b"".join(pending)


def _top(blocks: Iterator[bytes], body_lines: int) -> Iterator[bytes]:
    """The header, the empty line that ends it, and at most ``body_lines`` body lines."""
    line_start = True  # the block before ended with a line end
    for block in blocks:
        if line_start and block[:1] == b"\n":
            body = 1
        else:
            body = block.find(b"\n\n")
            body = body + 2 if body >= 0 else -1
        if body < 0:  # still in the header
            yield block
            line_start = block.endswith(b"\n")
            continue
        yield from _body_lines(block, body, blocks, body_lines)
        return


def _body_lines(block: bytes, start: int, blocks: Iterator[bytes], left: int) -> Iterator[bytes]:
    """``block`` from 0, then the rest, cut after ``left`` lines counted from ``start``."""
    while True:
        lines = block.count(b"\n", start)
        if lines < left:  # a line without its end yet is line lines+1: still wanted
            yield block
            left -= lines
            block = next(blocks, None)
            if block is None:
                return
            start = 0
            continue
        end = start
        for _ in range(left):
            end = block.index(b"\n", end) + 1
        if end:
            yield block[:end]
        return
