"""Durable file operations shared by the spool, the Maildirs and the settings files.

The discipline is Postfix's: write a temporary file, flush, fsync, rename it into
place, then fsync the directory so the rename itself survives a power cut.
Windows cannot open a directory to fsync it (NTFS journals the rename itself),
so that one step exists only on POSIX; everything else is the same code.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger("ismail.files")

_PID = os.getpid()  # ISMail never forks
_counter = itertools.count(1)


def next_serial() -> int:
    # itertools.count is advanced in one C call under the GIL: no two threads get the
    # same number, and no lock for every message's file names to queue on.
    return next(_counter)


def fsync_dir(path: Path, fd: int | None = None) -> None:
    """Make a rename or a new file name in ``path`` durable (POSIX; a no-op on Windows).
    ``fd``: the folder already open (DirSync keeps the queue's open), else it is opened."""
    if os.name == "nt":
        return
    if fd is not None:
        os.fsync(fd)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(*paths: Path) -> bool:
    """Create each missing directory of ``paths`` with its missing parents, durably: the
    folder above every directory made is synced before this returns, so that a message
    stored in a new Maildir (or queue, or key folder) does not vanish with its folder at
    a power cut.  True if any was made.  Where another thread makes one at the same
    moment, both sync it.  A directory that exists costs one stat.
    """
    made: list[Path] = []
    for path in paths:
        chain = []
        p = Path(path)
        while not p.is_dir() and p.parent != p:
            chain.append(p)
            p = p.parent
        for d in reversed(chain):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise
            made.append(d)
    for parent in dict.fromkeys(d.parent for d in made):
        fsync_dir(parent)
    return bool(made)


def make_maildirs(*boxes: Path) -> bool:
    """The tmp/ new/ cur/ of each Maildir that are missing, made durably (make_dirs);
    True if any was made."""
    return make_dirs(*(Path(box) / sub for box in boxes for sub in ("tmp", "new", "cur")))


WRITE_BYTES = 1 << 16  # pieces are gathered up to this size before they are written
O_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # os.open for reading; Windows: no newline translation
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def write_new_file(path: Path, chunks: Iterable[bytes], sync: bool = True) -> None:
    """Create ``path`` (it must not exist), write, fsync (unless ``sync`` is false: the
    queue's journal makes the file durable another way), close.

    Plain os.open/os.write: a Python file object would add fstat, isatty and
    lseek calls per file, which count at a thousand messages a second.  Small pieces
    (a queue file's envelope and header, then the text) are joined into one write.
    """
    fd = os.open(path, _O_NEW, 0o600)
    try:
        write_chunks(fd, chunks)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_chunks(fd: int, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``fd``, small ones joined into one write (up to WRITE_BYTES)."""
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= WRITE_BYTES:
            _write_all(fd, b"".join(pending) if len(pending) > 1 else pending[0])
            pending, size = [], 0
    if pending:
        _write_all(fd, b"".join(pending) if len(pending) > 1 else pending[0])


def remove_quietly(path: Path) -> bool:
    """Remove ``path`` if it is there; True if it was.  Any other failure is logged."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warning("could not remove %s: %s", path, e)
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class DirSync:
    """Group commit for directory fsyncs: one fsync serves every rename made before it began.

    Under load many threads rename files into the same folder at once; each would
    fsync that folder, and concurrent flushes queue up at the disk.  Here a thread
    takes a ticket after its rename; if no fsync of the folder is running, it starts
    one that covers all tickets issued so far, else it waits for the running one and,
    if that began before its ticket, for the next.  Nobody returns before an fsync
    that began after its own rename has finished, so the guarantee is the same.

    A folder that lives as long as the server (the queue's) can be kept open: its fsync
    is then one system call instead of three, each of which lets another thread have
    the GIL and wants it back.  A mailbox folder is opened each time: it may be
    removed and made again while ISMail runs, and an old handle would sync the old one.
    """

    class _Folder:
        def __init__(self) -> None:
            self.cond = threading.Condition()
            self.issued = 0
            self.done = 0
            self.running = False
            self.keep = False          # keep_open: opened at its first sync ...
            self.fd: int | None = None  # ... and kept here; used by the running thread only

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folders: dict[Path, DirSync._Folder] = {}

    def _folder(self, path: Path) -> "DirSync._Folder":
        with self._lock:
            folder = self._folders.get(path)
            if folder is None:
                folder = self._folders[path] = DirSync._Folder()
            return folder

    def keep_open(self, path: Path) -> None:
        """Keep ``path`` open from its first sync until ``close``."""
        if os.name != "nt":
            self._folder(path).keep = True

    def close(self) -> None:
        """Close the folders kept open (the server stops); later syncs open them each time."""
        with self._lock:
            folders = list(self._folders.values())
        for folder in folders:
            with folder.cond:
                while folder.running:  # its fsync uses the handle
                    folder.cond.wait()
                fd, folder.fd, folder.keep = folder.fd, None, False
            if fd is not None:
                os.close(fd)

    def sync(self, path: Path) -> None:
        if os.name == "nt":
            return
        folder = self._folder(path)
        with folder.cond:
            folder.issued += 1
            ticket = folder.issued
            while folder.done < ticket:
                if folder.running:
                    folder.cond.wait()
                    continue
                folder.running = True
                covered = folder.issued
                folder.cond.release()
                try:
                    if folder.keep and folder.fd is None:
                        folder.fd = os.open(path, os.O_RDONLY)
                    fsync_dir(path, folder.fd)
                finally:
                    folder.cond.acquire()
                    folder.running = False
                    folder.cond.notify_all()
                folder.done = max(folder.done, covered)


def atomic_write(path: Path, data: bytes | tuple[bytes, ...], mode: int | None = None,
                 tmp_dir: Path | None = None, dirsync: "DirSync | None" = None,
                 sync: bool = True, sync_dir: bool = True, make_parent: bool = True) -> None:
    """Replace ``path`` with ``data`` (bytes, or pieces written one after another) so that
    a reader sees the old or the new file, never half.

    ``tmp_dir`` (same file system) keeps the temporary file out of a folder that
    others list, such as the queue; ``dirsync`` shares the folder's fsync.  Without
    ``sync`` neither the file nor its folder is synced (the queue's journal covers it);
    without ``sync_dir`` only the file is, and the caller syncs the folder once for
    several renames.  Without ``make_parent`` a missing folder is FileNotFoundError
    rather than made: a file that belongs in a folder someone may delete (a mail folder's
    index) must not bring back an empty one.
    """
    if make_parent:
        make_dirs(path.parent)
    tmp = (tmp_dir or path.parent) / f".{path.name}.{_PID}.{next_serial()}.tmp"
    try:
        write_new_file(tmp, data if isinstance(data, tuple) else (data,), sync=sync)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    if not sync or not sync_dir:
        return
    if dirsync is None:
        fsync_dir(path.parent)
    else:
        dirsync.sync(path.parent)


# Maildir names carry the host name; "/" and ":" cannot appear in them (Maildir spec).
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def unique_name() -> str:
    """A Maildir-style unique file name: time, microseconds, process and a serial, host."""
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{_PID}Q{next_serial()}.{_HOST}"


def new_queue_id() -> str:
    """16 hex digits: microseconds since the epoch and a serial; sorts by arrival."""
    return f"{time.time_ns() // 1000:013X}{next_serial() & 0xFFF:03X}"


LOCK_TIMEOUT = 10.0   # an edit of a small settings file takes milliseconds; longer is stuck
LOCK_STALE = 60.0     # a lock file this old was left by a crashed process


@contextmanager
def file_lock(path: Path, what: str, error: type[Exception] = OSError,
              timeout: float | None = None) -> Iterator[None]:
    """Hold ``path`` (created exclusively) so that edits of one data file by several processes
    (the window's server, the command line) and objects take turns.  ``error(message)`` is
    raised, naming ``what`` ("the address book"), when it cannot be had."""
    deadline = time.monotonic() + (LOCK_TIMEOUT if timeout is None else timeout)
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except (FileExistsError, PermissionError) as e:
            # Windows answers PermissionError while a deleted lock file is still closing.
            if isinstance(e, PermissionError) and os.name != "nt":
                raise error(f"Could not create the lock file {path}: {e.strerror}.") from e
            try:
                if time.time() - path.stat().st_mtime > LOCK_STALE:
                    log.warning("Removing the stale lock file %s", path)
                    path.unlink()
                    continue
            except OSError:
                continue  # released meanwhile: try again at once
            if time.monotonic() >= deadline:
                raise error(f"{what[:1].upper()}{what[1:]} is locked by {path}; if no ISMail "
                            "is editing it, delete that file.") from None
            time.sleep(0.01)
    try:
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        os.close(fd)
        yield
    finally:
        try:
            path.unlink()
        except OSError:
            pass
