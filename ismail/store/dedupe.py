"""Duplicate suppression for mail another server retransmits (the RFC 1047 problem).

A server that hands us a message and loses the connection before our 250 arrives (it
crashed, was killed, the network broke) must assume the message was not taken and sends it
again: SMTP cannot tell "stored" from "lost" across a broken connection.  A backup MX that
relays a thousand held messages to its primary meets this whenever the primary goes down
during the run.  Cyrus IMAP suppresses such duplicates by Message-ID; we use a stricter key:
a digest of the whole message as it arrived (a retransmission is the same bytes, down to the
previous hop's Received line with its queue id and time) with the mailbox it went to.  Only
mail that came through another server (it has a Received header) is considered: a mail
program that submits the same text twice on purpose gets two copies.

The journal DATA/delivered.log has one line per local copy: ``<unix time> <key> <file>``,
written *before* the message file is renamed into ``new/`` (so a kill at any moment leaves
either no file, or a line for it).  A repeated key counts as a duplicate only while the
file it names still exists (in ``new/``, or in ``cur/`` once read): a line whose rename
never happened, or whose message the user deleted already, lets the copy through.  So the
journal can cost a duplicate in a corner case, never a message.

Keys older than KEEP_DAYS are forgotten at start and, while the server runs, at the first
record of every hour; the file is rewritten without them at start and whenever it holds
more than twice the lines it needs (a server that runs for months would otherwise keep
every key it ever saw: ~245 bytes of memory and ~120 of file a local copy).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable

from ..fsutil import atomic_write
from ..queue.journal import find_local

log = logging.getLogger("ismail.dedupe")

FILE_NAME = "delivered.log"
KEEP_DAYS = 7
PRUNE_EVERY = 3600        # seconds between looks for keys older than KEEP_DAYS
COMPACT_SLACK = 1000      # lines the file may hold beyond twice the keys before a rewrite


def top_received(head: bytes) -> bytes:
    """The first Received field of a header block (unfolded, whitespace squeezed), b"" if none."""
    lines = head.split(b"\r\n") if b"\r\n" in head else head.split(b"\n")
    field: list[bytes] = []
    for line in lines:
        if not line:
            break
        if field and line[:1] in (b" ", b"\t"):
            field.append(line.strip())
            continue
        if field:
            break
        if line[:9].lower() == b"received:":
            field.append(line.strip())
    return b" ".join(b" ".join(field).split())


class DuplicateFilter:
    """The journal of recent local deliveries; thread safe."""

    def __init__(self, data_dir: Path, mailbox_root: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self.root = Path(mailbox_root)
        # key -> (unix time recorded, file relative to the mailbox root), oldest first
        self._keys: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lines = 0          # lines in the file, kept ones and forgotten ones
        self._next_prune = 0

    def load(self) -> None:
        """Read the journal, keep the last KEEP_DAYS and rewrite it compacted."""
        now = int(time.time())
        cutoff = now - KEEP_DAYS * 86400
        keys: dict[str, tuple[int, str]] = {}
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = b""
        bad = 0
        for line in raw.split(b"\n"):
            parts = line.decode("utf-8", "replace").split(" ", 2)
            if len(parts) != 3 or not parts[0].isdigit() or len(parts[1]) != 40:
                bad += bool(line)  # a line cut short by a crash: nothing depends on it
                continue
            if int(parts[0]) >= cutoff:
                keys.pop(parts[1], None)   # a key recorded again moves to its new place
                keys[parts[1]] = (int(parts[0]), parts[2])
        if bad:
            log.info("%s: %d incomplete line(s) skipped", self.path, bad)
        with self._lock:
            self._close()
            self._keys = keys
            self._rewrite()
            self._next_prune = now + PRUNE_EVERY

    def _rewrite(self) -> None:
        """The file holds the kept keys only (under the lock); OSError if it cannot."""
        self._close()
        try:
            atomic_write(self.path, "".join(f"{t} {k} {f}\n" for k, (t, f) in self._keys.items()).encode())
            self._lines = len(self._keys)
        finally:   # appending to the file as it is, if the rewrite failed
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | getattr(os, "O_BINARY", 0), 0o600)

    def _prune(self, now: int) -> None:
        """Forget keys older than KEEP_DAYS; rewrite the file once it is twice too long."""
        self._next_prune = now + PRUNE_EVERY
        cutoff = now - KEEP_DAYS * 86400
        old = []
        for key, (recorded, _) in self._keys.items():   # oldest first
            if recorded >= cutoff:
                break
            old.append(key)
        for key in old:
            del self._keys[key]
        if self._fd is not None and self._lines > 2 * len(self._keys) + COMPACT_SLACK:
            try:
                self._rewrite()
            except OSError as e:   # a full disk, say: the next prune tries again
                log.warning("%s: could not rewrite it without the keys it forgot: %s", self.path, e)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def digest(chunks: Iterable[bytes]) -> "hashlib._Hash":
        h = hashlib.sha1()
        for chunk in chunks:
            h.update(chunk)
        return h

    @staticmethod
    def key(digest: "hashlib._Hash", mailbox: Path) -> str:
        h = digest.copy()
        h.update(b"\0" + str(mailbox).encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def delivered(self, key: str) -> Path | None:
        """The file a copy with this key went into, if it is still there."""
        with self._lock:
            kept = self._keys.get(key)
        if kept is None:
            return None
        return find_local(self.root / kept[1])  # in new/, or in cur/ once read (a rare hit)

    def record(self, entries: list[tuple[str, Path]]) -> None:
        """Note (key, final file) pairs, before the files are renamed into place."""
        if not entries:
            return
        now = int(time.time())
        lines = []
        with self._lock:
            for key, path in entries:
                try:
                    rel = path.relative_to(self.root).as_posix()
                except ValueError:
                    continue
                self._keys.pop(key, None)   # (recorded again: now the newest)
                self._keys[key] = (now, rel)
                lines.append(f"{now} {key} {rel}\n")
            if self._fd is not None and lines:
                # One append, no fsync: a kill cannot lose what write() handed to the system,
                # and after a power failure a duplicate is the worst a missing line causes.
                os.write(self._fd, "".join(lines).encode("utf-8"))
                self._lines += len(lines)
            if now >= self._next_prune:
                self._prune(now)
