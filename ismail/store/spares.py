"""Empty files made ahead for local deliveries, so that a message's 250 does not wait
for the file system to create one.

Creating a file is the slowest step of putting a message in a Maildir, and the one
that varies most: on ext4 without a journal, a new inode is looked for past every
inode freed in the last seconds (one Maildir emptied by a mail program, or a folder
of old mail deleted, makes each new file cost 300-400 microseconds of kernel time
instead of 30-70: measured, a sixth to a third of local mail's rate with one client),
and on Windows a virus scanner looks at each file created.  Here a thread of its own
creates empty files ahead, in DATA/queue/spare/a and b, and a delivery takes one,
writes the message into it and renames it into the Maildir's new/ - the same rename,
as atomic as from tmp/ (the folders are on the same file system, checked at start).

Two folders, because creating a file holds its folder's lock in the kernel for the
whole creation and a rename out of that folder waits for it: the thread fills one
folder while deliveries take from the other, and they change places when the one
taken from is empty and the other full.  When none is ready (the first messages
after a start, or more mail than the thread keeps up with), a delivery creates its
file in tmp/ as before.  The thread starts with the first file taken; a server that
never delivers locally never makes one.  A clean stop removes the files and the
folders; a start removes what a crash left (empty files, or a message whose rename
never happened - the journal restores that one from its record).
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable

from ..fsutil import _O_NEW, make_dirs, remove_quietly, unique_name, write_chunks

log = logging.getLogger("ismail.spares")

BATCH = 64              # files made into a folder at a time (the folder then changes places)
RETRY_SECONDS = 30.0    # after a failure (disk full, no permission) the thread waits this long
_O_FILL = os.O_WRONLY | getattr(os, "O_BINARY", 0)


class SpareFiles:
    """The pool of empty files (module docstring).  ``take()`` from any thread."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.folders = (self.root / "a", self.root / "b")
        self._lock = threading.Lock()
        self._current = 0                                    # the folder taken from
        self._ready: collections.deque[Path] = collections.deque()  # its files
        self._full: list[Path] = []                          # the other folder's, once all are made
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.made = 0          # files made (for tests and the log)
        self.taken = 0         # files handed out

    @classmethod
    def for_server(cls, data_dir: Path, mailbox_root: Path) -> "SpareFiles | None":
        """The pool under DATA/queue/spare, what a crash left there removed; None when it
        cannot be on the mailboxes' file system (a rename would not work) or be made."""
        root = Path(data_dir) / "queue" / "spare"
        pool = cls(root)
        try:
            pool.clear()
            make_dirs(mailbox_root)  # the Maildirs' folder: made durably, as they are
            for folder in pool.folders:
                folder.mkdir(parents=True, exist_ok=True)
            if root.stat().st_dev != mailbox_root.stat().st_dev:
                log.info("the mailboxes are on another file system than %s: no files are made "
                         "ahead for local deliveries", root)
                pool.clear()
                return None
        except OSError as e:
            log.warning("cannot make files ahead for local deliveries in %s: %s", root, e)
            return None
        return pool

    @property
    def ready(self) -> int:
        """How many files can be taken now."""
        with self._lock:
            return len(self._ready) + len(self._full)

    def take(self) -> Path | None:
        """An empty file to write a message into and rename into place, or None (none is
        ready: the caller creates its own)."""
        with self._lock:
            if not self._ready and self._full:
                self._swap()
            path = self._ready.popleft() if self._ready else None
            if path is not None:
                self.taken += 1
            start = self._thread is None and not self._stopping
            if start:
                self._thread = threading.Thread(target=self._run, name="spare-files", daemon=True)
        if start:
            self._thread.start()
        if path is None:
            self._wake.set()  # none ready: the thread makes some (if it is not at it already)
        return path

    def _swap(self) -> None:
        """(Under the lock) take from the folder just filled; the thread fills the other."""
        self._current ^= 1
        self._ready.extend(self._full)
        self._full = []
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                if self._stopping:
                    return
                if self._full:
                    continue  # both folders have files: wait until one is used up
                folder = self.folders[self._current ^ 1]
            made: list[Path] = []
            try:
                for _ in range(BATCH):
                    path = folder / unique_name()
                    os.close(os.open(path, _O_NEW, 0o600))
                    made.append(path)
            except OSError as e:
                log.warning("could not make a file ahead for local deliveries in %s (%s); "
                            "trying again in %d s", folder, e, RETRY_SECONDS)
                if self._stopped_within(RETRY_SECONDS):
                    return
            with self._lock:
                self.made += len(made)
                self._full = made
                if not self._ready and made:
                    self._swap()  # takers found nothing: these at once, and the other filled
                if self._stopping:
                    return

    def _stopped_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self._lock:
                if self._stopping:
                    return True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Stop making files; remove them and the folders (at a clean stop)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._ready.clear()
            self._full = []
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.clear()

    def clear(self) -> None:
        """Remove the files in the pool's folders, and the folders (what a crash left, or
        at a stop).  Only ISMail puts files there."""
        for folder in self.folders:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            except NotADirectoryError:  # a file where ours should be: the name is ours
                remove_quietly(folder)
                continue
            except OSError as e:
                log.warning("cannot clear %s: %s", folder, e)
                continue
            for name in names:
                remove_quietly(folder / name)
            try:
                folder.rmdir()
            except OSError:
                pass
        try:
            self.root.rmdir()
        except OSError:
            pass


def fill(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` into the empty file ``path`` (from ``SpareFiles.take``); OSError
    if that fails (the caller removes it)."""
    fd = os.open(path, _O_FILL)
    try:
        write_chunks(fd, chunks)
    finally:
        os.close(fd)

