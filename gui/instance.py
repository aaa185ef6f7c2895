"""One ISMail per data folder: an operating-system lock on DATA/ismail.lock.

The lock belongs to the open file, so the system drops it when the process ends,
however it ends; a stale lock left by a crash cannot exist, and the PID written into
the file is only there to tell the user which process holds it.  Windows locks a
byte range (``msvcrt.locking``) and refuses reads of locked bytes, so the byte locked
lies far past the PID text; elsewhere ``fcntl.flock`` locks the whole file.
"""
from __future__ import annotations

import os
from pathlib import Path

LOCK_FILE = "ismail.lock"
_LOCK_OFFSET = 1 << 20  # Windows: lock a byte beyond the PID so others can still read it


def _try_lock(fd: int) -> bool:
    if os.name == "nt":
        import msvcrt
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    if os.name == "nt":
        import msvcrt
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_UN)


class InstanceLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True if this process now holds the data folder; False if another ISMail does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        if not _try_lock(fd):
            os.close(fd)
            return False
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return True

    def holder(self) -> int | None:
        """The PID written by the process holding the lock, if it can be read."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            _unlock(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
