"""The per-folder UID index, ``ismail-uidlist``: Dovecot's ``dovecot-uidlist`` discipline.

The Maildir files are the truth about which messages exist; this small text file
is the truth about their UIDs.  It sits in the folder's directory::

    ismail-uidlist 1 V1717171717 N43 R40 C1
    1 1717171717.M52P7Q1.host,S=120,W=124
    2 1717171790.M10P7Q2.host,S=99,W=101
    41 courier-name W2048 T1717000000.5

The header names the format version, UIDVALIDITY (V), UIDNEXT (N), the first UID
no session has been told is \\Recent (R), and C1: the W sizes count a CRLF on disk as
one line end (store/lineends.py).  An index without C1 was written by an ISMail that
counted it as two; the folder measures those sizes again once (an older ISMail reads
C1 and drops it, and its sizes are then measured again too).  Each line is ``uid key``
(the key is the file name up to the Maildir info, ``:2,...``), in increasing UID order,
plus a ``W`` token (size with CRLF line ends) when the key carries no ``,W=``, and a ``T``
token (internal date) when it differs from the time the name starts with.

Rules, as in Dovecot:
* The file is only ever replaced whole: temp file, fsync, os.replace, fsync of the
  directory (``fsutil.atomic_write``).  A reader sees the old or the new index.
* It is changed only under the folder's lock (``locked``): a lock file held with
  flock(2) on POSIX and LockFile (msvcrt.locking) on Windows, so threads of this
  process and other processes exclude each other alike.
* UIDNEXT only grows, and it is written before a UID is handed out: a crash
  wastes UIDs, never reuses one.
* A file that cannot be parsed, or whose UIDNEXT is not above every UID in it, is
  set aside as ``ismail-uidlist.corrupt-<time>`` (never overwritten) and the folder
  gets a new UIDVALIDITY: clients then forget what they cached.
* UIDVALIDITY values come from one counter per account (``ismail-uidvalidity`` in
  the account's root), so a folder deleted and made again, or rebuilt after
  corruption, never repeats an old value, even within the same second.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..fsutil import atomic_write

if os.name == "nt":
    import msvcrt
else:
    import fcntl

log = logging.getLogger("ismail.uidlist")

NAME = "ismail-uidlist"
MAGIC = "ismail-uidlist"
VERSION = 1
UIDVALIDITY_FILE = "ismail-uidvalidity"
LOCK_SUFFIX = ".lock"
MAX_UID = 0xFFFFFFFF  # RFC 3501: nz-number is 32 bits
LOCK_TIMEOUT = 60.0   # Windows only: POSIX flock waits for as long as the holder lives


class CorruptIndex(ValueError):
    """The index file cannot be trusted; ``uidvalidity`` is its old value if it could be read."""

    def __init__(self, message: str, uidvalidity: int = 0) -> None:
        super().__init__(message)
        self.uidvalidity = uidvalidity


# -- the lock -----------------------------------------------------------------------------------
@contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing). Not re-entrant.

    Each call opens its own descriptor: flock and LockFile belong to the open file,
    so two threads of one process exclude each other as two processes do.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
    try:
        _acquire(fd, path, timeout)
        try:
            yield
        finally:
            _release(fd)
    finally:
        os.close(fd)


if os.name == "nt":
    def _acquire(fd: int, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not lock {path} within {timeout:.0f}s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _release(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    def _acquire(fd: int, path: Path, timeout: float) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel drops it when a holder dies

    def _release(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def retry_windows(action, *args):
    """On Windows a file another thread has open cannot be renamed or removed: wait a little."""
    for delay in (0.01, 0.05, 0.1, 0.25, 0.5, None):
        try:
            return action(*args)
        except PermissionError:
            if os.name != "nt" or delay is None:
                raise
            time.sleep(delay)


def next_uidvalidity(account_root: Path, above: int = 0) -> int:
    """A UIDVALIDITY never handed out before in this account: the time, or one more than the last."""
    counter = account_root / UIDVALIDITY_FILE
    with locked(account_root / (UIDVALIDITY_FILE + LOCK_SUFFIX)):
        try:
            last = int(counter.read_text("ascii").strip() or 0)
        except (OSError, ValueError):
            last = 0
        value = max(int(time.time()), last + 1, above + 1)
        if value > MAX_UID:
            raise ValueError("UIDVALIDITY would pass 2**32-1")
        retry_windows(atomic_write, counter, f"{value}\n".encode("ascii"))
    return value


# -- the index ----------------------------------------------------------------------------------
@dataclass
class Index:
    """One folder's UIDs. ``uids`` keeps file order, which is UID order."""

    uidvalidity: int
    uidnext: int = 1
    first_recent: int = 1
    uids: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)   # only keys without ",W="
    dates: dict[str, float] = field(default_factory=dict)  # only dates not in the name
    crlf_sizes: bool = True   # the sizes count CRLF on disk as one line end (C1)

    def add(self, key: str, size: int | None = None, date: float | None = None) -> int:
        """Give ``key`` the next UID. A key seen before loses its old UID: UIDs are never reused."""
        self.remove(key)
        uid = self.uidnext
        if uid > MAX_UID:
            raise ValueError("the folder has used up its 32-bit UIDs")
        self.uidnext = uid + 1
        self.uids[key] = uid
        if size is not None:
            self.sizes[key] = size
        if date is not None:
            self.dates[key] = date
        return uid

    def copy(self) -> "Index":
        return Index(self.uidvalidity, self.uidnext, self.first_recent,
                     dict(self.uids), dict(self.sizes), dict(self.dates), self.crlf_sizes)

    def remove(self, key: str) -> int | None:
        self.sizes.pop(key, None)
        self.dates.pop(key, None)
        return self.uids.pop(key, None)

    def to_bytes(self) -> bytes:
        out = [f"{MAGIC} {VERSION} V{self.uidvalidity} N{self.uidnext} R{self.first_recent}"
               f"{' C1' if self.crlf_sizes else ''}\n"]
        sizes, dates = self.sizes, self.dates
        for key, uid in self.uids.items():
            if key in sizes or key in dates:
                extra = (f" W{sizes[key]}" if key in sizes else "") + \
                        (f" T{dates[key]!r}" if key in dates else "")
                out.append(f"{uid} {key}{extra}\n")
            else:
                out.append(f"{uid} {key}\n")
        return "".join(out).encode("utf-8", "surrogateescape")


def _number(token: str, what: str) -> int:
    if not (token.isascii() and token.isdigit()):
        raise CorruptIndex(f"{what} {token!r} is not a number")
    return int(token)


def parse(data: bytes) -> Index:
    """The index in ``data``; CorruptIndex for anything that is not exactly what we write."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if len(lines) < 2 or lines[-1] != "":
        raise CorruptIndex("empty or cut short (no final line end)")
    head = lines[0].split(" ")
    if len(head) < 4 or head[0] != MAGIC or head[1] != str(VERSION):
        raise CorruptIndex(f"unknown header {lines[0][:80]!r}")
    fields = {}
    for token in head[2:]:
        if not token or token[0] in fields:
            raise CorruptIndex(f"bad header field {token!r}")
        fields[token[0]] = _number(token[1:], f"header {token[0]}")
    validity = fields.get("V", 0)
    if not 0 < validity <= MAX_UID or "N" not in fields:
        raise CorruptIndex("header without a valid UIDVALIDITY and UIDNEXT")
    index = Index(validity, fields["N"], fields.get("R", 1), crlf_sizes=fields.get("C", 0) >= 1)
    uids, sizes, dates = index.uids, index.sizes, index.dates
    last = 0
    try:
        for n, line in enumerate(lines[1:-1], 2):
            parts = line.split(" ")
            uid = _number(parts[0], f"line {n}: UID")
            if uid <= last or len(parts) < 2 or not parts[1] or parts[1] in uids:
                raise CorruptIndex(f"line {n}: UIDs out of order, or a key missing or repeated",
                                   validity)
            key = parts[1]
            uids[key] = last = uid
            for token in parts[2:]:
                if token[:1] == "W":
                    sizes[key] = _number(token[1:], f"line {n}: size")
                elif token[:1] == "T":
                    dates[key] = float(token[1:])
                else:
                    raise CorruptIndex(f"line {n}: unknown field {token!r}", validity)
    except CorruptIndex as e:
        e.uidvalidity = validity
        raise
    except ValueError as e:
        raise CorruptIndex(f"unreadable date: {e}", validity) from None
    if last >= index.uidnext:
        raise CorruptIndex(f"UIDNEXT {index.uidnext} is not above UID {last}", validity)
    return index


class UidList:
    """The index file of one folder directory: read, write, lock, set aside."""

    def __init__(self, folder_dir: Path) -> None:
        self.dir = folder_dir
        self.path = folder_dir / NAME
        self._path_s = os.fspath(self.path)
        self.lock_path = folder_dir / (NAME + LOCK_SUFFIX)

    def locked(self):
        return locked(self.lock_path)

    def stat(self) -> tuple[int, int, int] | None:
        """What changes whenever the file is replaced (a new inode each time)."""
        try:
            st = os.stat(self._path_s)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def header(self) -> tuple[int, int, int] | None:
        """(UIDVALIDITY, UIDNEXT, first recent UID) from the first line alone, without the
        lock; None if there is no file or its first line is not as we write it."""
        try:
            with open(self.path, "rb") as f:
                line = f.read(128).split(b"\n", 1)
        except FileNotFoundError:
            return None
        head = line[0].decode("ascii", "replace").split(" ")
        if len(line) < 2 or len(head) < 4 or head[0] != MAGIC or head[1] != str(VERSION):
            return None
        fields = {t[0]: t[1:] for t in head[2:] if t}
        try:
            return int(fields["V"]), int(fields["N"]), int(fields.get("R", "1"))
        except (KeyError, ValueError):
            return None

    def read(self) -> Index | None:
        """The index, None if there is none yet; CorruptIndex if it cannot be trusted."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return parse(data)

    def write(self, index: Index) -> None:
        """Replace the file durably. The caller holds the lock.  FileNotFoundError if the
        folder is gone (another session deleted it): it is not made again."""
        atomic_write(self.path, index.to_bytes(), make_parent=False)

    def set_aside(self, reason: str) -> Path:
        """Move a bad index out of the way (never overwrite it: a person may want to look)."""
        stamp = int(time.time())
        dest = self.dir / f"{NAME}.corrupt-{stamp}"
        n = 1
        while dest.exists():
            dest = self.dir / f"{NAME}.corrupt-{stamp}-{n}"
            n += 1
        os.replace(self.path, dest)
        log.warning("UID index %s is corrupt (%s): kept as %s; the folder gets a new UIDVALIDITY",
                    self.path, reason, dest.name)
        return dest

    def remove_leftovers(self) -> None:
        """Temp files of writes cut short by a crash. The caller holds the lock."""
        for stale in self.dir.glob(f".{NAME}.*.tmp"):
            try:
                stale.unlink()
            except OSError:
                pass
