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

Lines older than KEEP_DAYS are dropped when the journal is compacted at start.
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
        self._keys: dict[str, str] = {}   # key -> file (relative to the mailbox root)
        self._lock = threading.Lock()
        self._fd: int | None = None

    def load(self) -> None:
        """Read the journal, keep the last KEEP_DAYS and rewrite it compacted."""
        cutoff = time.time() - KEEP_DAYS * 86400
        keys: dict[str, tuple[str, str]] = {}
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
                keys[parts[1]] = (parts[0], parts[2])
        if bad:
            log.info("%s: %d incomplete line(s) skipped", self.path, bad)
        with self._lock:
            self._close()
            atomic_write(self.path, "".join(f"{t} {k} {f}\n" for k, (t, f) in keys.items()).encode())
            self._keys = {k: f for k, (_, f) in keys.items()}
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0))

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
            rel = self._keys.get(key)
        if rel is None:
            return None
        return find_local(self.root / rel)  # in new/, or in cur/ once read (a rare hit)

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
                self._keys[key] = rel
                lines.append(f"{now} {key} {rel}\n")
            if self._fd is not None and lines:
                # One append, no fsync: a kill cannot lose what write() handed to the system,
                # and after a power failure a duplicate is the worst a missing line causes.
                os.write(self._fd, "".join(lines).encode("utf-8"))
