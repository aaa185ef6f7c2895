"""Durable file operations shared by the spool, the Maildirs and the settings files.

The discipline is Postfix's: write a temporary file, flush, fsync, rename it into
place, then fsync the directory so the rename itself survives a power cut.
Windows cannot open a directory to fsync it (NTFS journals the rename itself),
so that one step exists only on POSIX; everything else is the same code.
"""
from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from pathlib import Path

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def next_serial() -> int:
    with _counter_lock:
        return next(_counter)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file name in ``path`` durable (POSIX; a no-op on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next_serial()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


# Maildir names carry the host name; "/" and ":" cannot appear in them (Maildir spec).
_PID = os.getpid()  # ISMail never forks
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def unique_name() -> str:
    """A Maildir-style unique file name: time, microseconds, process and a serial, host."""
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{_PID}Q{next_serial()}.{_HOST}"


def new_queue_id() -> str:
    """16 hex digits: microseconds since the epoch and a serial; sorts by arrival."""
    return f"{time.time_ns() // 1000:013X}{next_serial() & 0xFFF:03X}"
