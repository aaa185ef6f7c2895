"""The outgoing queue on disk, and the buffer a message is read into.

Layout under ``DATA/queue/``::

    messages/<id>.eml    the message as it will be sent (CRLF lines, with our Received:)
    messages/<id>.json   its envelope and delivery state; its presence commits the entry
    tmp/                 files being written, and spill files of large messages
    corrupt/             entries that could not be read, set aside for a person to look at

An entry is committed in this order: the .eml is written to tmp/, fsync'd and
renamed into messages/; then the .json likewise; then messages/ is fsync'd.  Only
then does the client get its 250.  A crash before that leaves at most an .eml
without a .json (an unacknowledged message: removed at start-up) or files in tmp/
(removed at start-up).  A .json without its .eml cannot come from a crash of this
code, so it is never silently dropped: it is moved to corrupt/ and logged.

State updates after each delivery attempt rewrite only the small .json, atomically.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..fsutil import DirSync, atomic_write, next_serial, write_new_file

log = logging.getLogger("ismail.spool")

SPILL_BYTES = 1 << 20  # a message larger than this is kept in a temp file while it is read


class MessageBuffer:
    """The message text as read from DATA, in memory until it grows past SPILL_BYTES."""

    def __init__(self, spill_dir: Path) -> None:
        self._spill_dir = spill_dir
        self._parts: list[bytes] = []
        self._file = None
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._parts.append(data)
        if self.size > SPILL_BYTES:
            self._spill_dir.mkdir(parents=True, exist_ok=True)
            # Deleted on close by the OS (and unnamed on Linux), so a crash leaves nothing behind
            # except, on Windows, a file in tmp/ that start-up removes.
            self._file = tempfile.TemporaryFile(dir=self._spill_dir, prefix="spill-")
            self._file.write(b"".join(self._parts))
            self._parts = []

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        if self._file is None:
            if self._parts:
                yield b"".join(self._parts)
            return
        self._file.flush()
        self._file.seek(0)
        while True:
            block = self._file.read(size)
            if not block:
                return
            yield block

    def close(self) -> None:
        self._parts = []
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # a full disk may refuse the last buffered write; the file goes anyway
            self._file = None


@dataclass
class QueuedRecipient:
    address: str
    state: str = "pending"  # pending | sent | bounced
    attempts: int = 0
    last_error: str = ""


@dataclass
class QueueEntry:
    id: str
    sender: str
    recipients: list[QueuedRecipient]
    arrival: float
    client_ip: str = ""
    helo: str = ""
    size: int = 0
    smtputf8: bool = False
    body: str = "7BIT"
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "QueueEntry":
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        rcpts = [QueuedRecipient(**r) for r in raw.pop("recipients")]
        entry = cls(recipients=rcpts, **raw)
        if not entry.id or not isinstance(entry.sender, str):
            raise ValueError("missing id or sender")
        return entry


class Spool:
    """The outgoing queue: commit entries durably, list them, update their state."""

    def __init__(self, queue_dir: Path, dirsync: DirSync | None = None) -> None:
        self.dir = queue_dir
        self.dirsync = dirsync
        self.messages = queue_dir / "messages"
        self.tmp = queue_dir / "tmp"
        self.corrupt = queue_dir / "corrupt"
        # The scheduler hooks in here; it gets the message too when it is small, so the
        # first delivery attempt need not read back what was just written.
        self.on_enqueue: Callable[[QueueEntry, bytes | None], None] | None = None

    def prepare(self) -> list[str]:
        """Create the folders, clear leftovers of a crash, set aside what cannot be read.

        Returns the ids of every complete entry, oldest first.
        """
        for d in (self.messages, self.tmp, self.corrupt):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            _remove_quietly(leftover)
        names = {p.name for p in self.messages.iterdir()}
        ids = []
        for name in sorted(names):
            stem, dot, ext = name.rpartition(".")
            if ext == "eml" and f"{stem}.json" not in names:
                log.info("removing %s: written before a crash, never acknowledged", name)
                _remove_quietly(self.messages / name)
            elif ext == "json":
                if f"{stem}.eml" not in names:
                    self.set_aside(stem, "its message file is missing")
                    continue
                ids.append(stem)
            elif ext == "tmp":  # an atomic_write cut short by a crash
                _remove_quietly(self.messages / name)
            elif ext != "eml":
                log.warning("queue: ignoring unexpected file %s", self.messages / name)
        return ids

    def list_ids(self) -> list[str]:
        """Ids of the committed entries, oldest first (for the command line, not the hot path)."""
        if not self.messages.is_dir():
            return []
        return sorted(p.stem for p in self.messages.glob("*.json") if not p.name.startswith("."))

    def enqueue(self, entry: QueueEntry, header: bytes, body: MessageBuffer) -> None:
        """Write the entry durably; when this returns, it survives a crash."""
        eml = self.messages / f"{entry.id}.eml"
        tmp = self.tmp / f"{entry.id}.{next_serial()}.eml"
        try:
            write_new_file(tmp, itertools.chain((header,), body.chunks()))
            os.replace(tmp, eml)
            # The .json's rename commits the entry; the fsync of messages/ makes both renames last.
            atomic_write(self.messages / f"{entry.id}.json", entry.to_json(), tmp_dir=self.tmp,
                         dirsync=self.dirsync)
        except BaseException:
            _remove_quietly(tmp)
            _remove_quietly(eml)
            raise
        if self.on_enqueue is not None:
            small = body.size <= SPILL_BYTES
            self.on_enqueue(entry, header + b"".join(body.chunks()) if small else None)

    def load(self, queue_id: str) -> QueueEntry:
        """Read an entry; a broken one is moved to corrupt/ and ValueError raised."""
        try:
            return QueueEntry.from_json((self.messages / f"{queue_id}.json").read_bytes())
        except (ValueError, TypeError, KeyError) as e:
            self.set_aside(queue_id, f"unreadable envelope ({e})")
            raise ValueError(f"queue entry {queue_id} is corrupt and was moved to {self.corrupt}")

    def save(self, entry: QueueEntry) -> None:
        atomic_write(self.messages / f"{entry.id}.json", entry.to_json(), tmp_dir=self.tmp,
                     dirsync=self.dirsync)

    def remove(self, queue_id: str) -> None:
        """Delivered or bounced: the .json goes first, so a crash leaves an orphan .eml only."""
        _remove_quietly(self.messages / f"{queue_id}.json")
        _remove_quietly(self.messages / f"{queue_id}.eml")

    def message_path(self, queue_id: str) -> Path:
        return self.messages / f"{queue_id}.eml"

    def set_aside(self, queue_id: str, why: str) -> None:
        self.corrupt.mkdir(parents=True, exist_ok=True)
        for ext in ("json", "eml"):
            src = self.messages / f"{queue_id}.{ext}"
            if src.exists():
                shutil.move(str(src), str(self.corrupt / f"{queue_id}.{int(time.time())}.{ext}"))
        log.error("queue entry %s set aside in %s: %s", queue_id, self.corrupt, why)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("could not remove %s: %s", path, e)

