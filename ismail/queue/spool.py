"""The outgoing queue on disk, and the buffer a message is read into.

Layout under ``DATA/queue/``::

    messages/<id>.msg    one entry: a first line "ISMAIL-QUEUE 1 <n>", the envelope as
                         n bytes of JSON and CRLF, then the message as it will be sent
                         (CRLF lines, with our Received:)
    messages/<id>.state  the envelope and delivery state once an attempt changed them
                         (it wins over the envelope inside the .msg)
    tmp/                 files being written, and spill files of large messages
    journal/             the server's journal segments (journal.py)
    corrupt/             entries that could not be read, set aside for a person to look at
    spare/               empty files made ahead for local deliveries (store/spares.py)
    flush                made by `queue flush` from another process: the running server
                         removes it within a second and retries every entry (scheduler.py)

An entry is one file: written to tmp/ and renamed into messages/.  In the server it
is committed by its copy in the journal, whose fdatasync serves every message written
before it began (group commit; journal.py says how a crash is undone), and the journal
writes the file itself a second later if the entry is still queued: one delivered
before then never has a file (while it is held, ``exists`` and ``read_message`` answer
from the journal).  A message over JOURNAL_MAX, or any once the journal failed, or one
written with no journal (the command line) is fsync'd itself and messages/ fsync'd
after the rename.  Only then does the client get its 250.  A crash before the rename
leaves a file in tmp/ (removed at start-up).

State updates after an attempt rewrite only the small .state, atomically.  Removal
takes the .msg first, then the .state: a crash between leaves a lone .state, which
start-up removes (its message was delivered or bounced).  Removing in the other order
could bring back the first envelope, and with it recipients already delivered.

Older versions kept ``<id>.eml`` (the message) and ``<id>.json`` (the envelope, whose
presence committed the entry); such entries are still read, updated and removed as
they were: an .eml without its .json was never acknowledged and is removed at start-up;
a .json without its .eml cannot come from a crash, so it is set aside in corrupt/.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..fsutil import (DirSync, atomic_write, fsync_dir, make_dirs, next_serial, remove_quietly,
                      write_new_file)
from .journal import JOURNAL_MAX, Journal

log = logging.getLogger("ismail.spool")

SPILL_BYTES = 1 << 20  # a message larger than this is kept in a temp file while it is read
FLUSH_FILE = "flush"   # queue/flush: made by `queue flush` (another process), taken by the scheduler


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
    sign: bool = False   # DKIM-sign as it leaves (mail from our own side; transport.py)
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        # asdict() would deep-copy every field first; the instance dicts already hold them
        # in field order, which is all json needs.
        fields = dict(self.__dict__)
        fields["recipients"] = [r.__dict__ for r in self.recipients]
        # One line: json's C encoder (indent= would take the pure-Python one, 2.5x slower).
        return json.dumps(fields, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, strings: dict[str, str] | None = None) -> "QueueEntry":
        """The entry a .msg / .state / .json file holds.  ``strings``, shared by the entries
        read together (the queue at the start), makes their equal texts one object each."""
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        rcpts = [QueuedRecipient(**r) for r in raw.pop("recipients")]
        entry = cls(recipients=rcpts, **raw)
        if not entry.id or not isinstance(entry.sender, str):
            raise ValueError("missing id or sender")
        if strings is not None:
            entry._share(strings)
        return entry

    def _share(self, strings: dict[str, str]) -> None:
        # A queue that grew while a destination was down repeats its sender, its recipients'
        # domains' errors and states in every entry: 100,000 deferred entries took 1.1 KB each
        # in memory as separate copies.  (Not the id: unique.  Not sys.intern: in CPython 3.12
        # an interned string stays until the process ends, and errors quote remote replies.)
        for name in ("sender", "client_ip", "helo", "body", "last_error"):
            value = getattr(self, name)
            if type(value) is str:
                setattr(self, name, strings.setdefault(value, value))
        for r in self.recipients:
            for name in ("address", "state", "last_error"):
                value = getattr(r, name)
                if type(value) is str:
                    setattr(r, name, strings.setdefault(value, value))


MAGIC = b"ISMAIL-QUEUE"
VERSION = 1
_MAX_ENVELOPE = 1 << 24  # a larger envelope length in the first line means a damaged file


class Spool:
    """The outgoing queue: commit entries durably, list them, update their state."""

    def __init__(self, queue_dir: Path, dirsync: DirSync | None = None, journal: bool = False) -> None:
        self.dir = queue_dir
        # The server's spool commits messages through the journal (journal.py) from
        # prepare() to close(); the command line's and the window's read and remove only.
        self.use_journal = journal
        self.journal: Journal | None = None
        self.dirsync = dirsync
        self.messages = queue_dir / "messages"
        if dirsync is not None:
            dirsync.keep_open(self.messages)  # synced at every message; there while we run
        self.tmp = queue_dir / "tmp"
        self.corrupt = queue_dir / "corrupt"
        # The scheduler hooks in here; it gets the message too when it is small, so the
        # first delivery attempt need not read back what was just written.
        self.on_enqueue: Callable[[QueueEntry, bytes | None], None] | None = None
        # Entries committed by this process and never saved since: they have no .state file,
        # so removing them is one unlink, not two (each a system call, at every message).
        self._stateless: set[str] = set()

    def _path(self, queue_id: str, ext: str) -> Path:
        return self.messages / f"{queue_id}.{ext}"

    def prepare(self) -> list[str]:
        """Create the folders, clear leftovers of a crash, set aside what cannot be read.

        Returns the ids of every complete entry, oldest first.
        """
        self.close()
        make_dirs(self.messages, self.tmp, self.corrupt)
        for leftover in self.tmp.iterdir():
            remove_quietly(leftover)
        if self.use_journal:
            journal = Journal(self.dir / "journal", self.messages)
            journal.recover()
            journal.open()
            self.journal = journal
        names = {p.name for p in self.messages.iterdir()}
        ids = []
        for name in sorted(names):
            stem, dot, ext = name.rpartition(".")
            if ext == "msg":
                ids.append(stem)
            elif ext == "state" and f"{stem}.msg" not in names:
                log.info("removing %s: left by a removal cut short (the message was done)", name)
                remove_quietly(self.messages / name)
            elif ext == "eml" and f"{stem}.json" not in names:
                log.info("removing %s: written before a crash, never acknowledged", name)
                remove_quietly(self.messages / name)
            elif ext == "json":
                if f"{stem}.eml" not in names:
                    self.set_aside(stem, "its message file is missing")
                    continue
                ids.append(stem)
            elif ext == "tmp":  # an atomic_write cut short by a crash
                remove_quietly(self.messages / name)
            elif ext not in ("eml", "state"):
                log.warning("queue: ignoring unexpected file %s", self.messages / name)
        return sorted(ids)

    def list_ids(self) -> list[str]:
        """Ids of the committed entries, oldest first (for the command line, not the hot path)."""
        if not self.messages.is_dir():
            return []
        # A plain listing: with 100,000 entries half the time of scandir and a set of names.
        names = os.listdir(self.messages)
        ids = [n[:-4] for n in names if n.endswith(".msg") and not n.startswith(".")]
        old = [n[:-5] for n in names if n.endswith(".json") and not n.startswith(".")]
        if old:  # entries of older versions: committed by their .json, next to their .eml
            present = set(names)
            ids += [i for i in old if i + ".eml" in present]
        ids.sort()
        return ids

    def count(self) -> int:
        """How many entries there are (one directory listing; an entry being removed may count)."""
        if not self.messages.is_dir():
            return 0
        with os.scandir(self.messages) as it:
            return sum(1 for e in it if e.name.endswith((".msg", ".json")) and not e.name.startswith("."))

    def close(self) -> None:
        """The server stops: checkpoint the journal (every queued file fsync'd on its own)."""
        journal, self.journal = self.journal, None
        if journal is not None:
            journal.close()

    def enqueue(self, entry: QueueEntry, header: bytes, body: MessageBuffer) -> None:
        """Write the entry durably; when this returns, it survives a crash."""
        journal = self.journal
        text = None
        try:
            if journal is not None and body.size <= JOURNAL_MAX:
                head = file_head(entry)
                text = header + b"".join(body.chunks())
                try:
                    # The file is written later, by the journal, if the entry is still
                    # queued by then: most relayed mail is gone before (journal.py).
                    journal.commit(entry.id, head, text, keep=True)
                except OSError:  # reported by the journal: this one is committed on its own
                    self._write_durably(entry.id, (head, text))
            else:
                self._write_durably(entry.id, itertools.chain((file_head(entry) + header,), body.chunks()))
        except BaseException:
            self._not_queued(entry.id)
            raise
        if text is None and body.size <= SPILL_BYTES:
            text = header + b"".join(body.chunks())
        self._queued(entry, text)

    def stage(self, entry: QueueEntry, header: bytes, body: MessageBuffer) -> "StagedEntry | None":
        """enqueue in two steps, for a thread that must not wait for the disk (see
        store.maildir.stage): the entry is appended to the journal here, and
        ``StagedEntry.finish()`` waits for the sync and hands it to the queue.  None when
        the journal cannot take it: enqueue then."""
        journal = self.journal
        if journal is None or body.size > JOURNAL_MAX or not journal.usable:
            return None
        head = file_head(entry)
        text = header + b"".join(body.chunks())
        try:
            ticket = journal.stage(entry.id, head, text)
        except OSError:
            return None
        return StagedEntry(self, journal, entry, head, text, ticket)

    def _write_durably(self, qid: str, pieces) -> None:
        path = self._path(qid, "msg")
        tmp = self.tmp / f"{qid}.{next_serial()}.msg"
        try:
            write_new_file(tmp, pieces)
            os.replace(tmp, path)
        except BaseException:
            remove_quietly(tmp)
            raise
        self._sync_folder()

    def _not_queued(self, qid: str) -> None:
        """After a failure: no trace of entry ``qid`` left (the client is told to try again)."""
        remove_quietly(self._path(qid, "msg"))
        if self.journal is not None:
            # Its record may be in the journal (written, then the sync failed): ended, so
            # a message the client was told to send again never comes back at a start.
            self.journal.ended(qid)

    def _queued(self, entry: QueueEntry, text: bytes | None) -> None:
        self._stateless.add(entry.id)
        if self.on_enqueue is not None:
            self.on_enqueue(entry, text)

    def _sync_folder(self) -> None:
        if self.dirsync is None:
            fsync_dir(self.messages)
        else:
            self.dirsync.sync(self.messages)

    def load(self, queue_id: str, strings: dict[str, str] | None = None) -> QueueEntry:
        """Read an entry; a broken one is moved to corrupt/ and ValueError raised.
        ``strings``: see QueueEntry.from_json."""
        try:
            for ext in ("state", "json"):
                try:
                    return QueueEntry.from_json(self._path(queue_id, ext).read_bytes(), strings)
                except FileNotFoundError:
                    continue
            with open(self._path(queue_id, "msg"), "rb") as f:
                return QueueEntry.from_json(_read_envelope(f), strings)
        except (ValueError, TypeError, KeyError) as e:
            self.set_aside(queue_id, f"unreadable envelope ({e})")
            raise ValueError(f"queue entry {queue_id} is corrupt and was moved to {self.corrupt}")

    def read_message(self, queue_id: str) -> bytes:
        """The message text as it will be sent; FileNotFoundError if the entry is gone."""
        pieces = self.journal.unwritten(queue_id) if self.journal is not None else None
        if pieces is not None:
            return pieces[1]  # (envelope line and JSON, text): see enqueue
        try:
            f = open(self._path(queue_id, "msg"), "rb")
        except FileNotFoundError:
            return self._path(queue_id, "eml").read_bytes()
        with f:
            _read_envelope(f)
            return f.read()

    def exists(self, queue_id: str) -> bool:
        """Whether the entry is still queued (``queue delete`` may have taken it)."""
        journal = self.journal
        # The journal drops an unwritten entry only after its file is in place: asked in
        # this order, an entry being written out is never missed.
        if journal is not None and journal.unwritten(queue_id) is not None:
            return True
        return self._path(queue_id, "msg").exists() or self._path(queue_id, "eml").exists()

    def write_out(self, queue_id: str | None = None) -> None:
        """Entry ``queue_id`` (every entry, without it) has its file from now on: for a
        reader of the folder, such as the queue window or `queue list`."""
        if self.journal is not None:
            self.journal.write_out(queue_id)

    def save(self, entry: QueueEntry) -> None:
        self.write_out(entry.id)  # the .state goes next to its .msg
        self._stateless.discard(entry.id)
        ext = "state" if self._path(entry.id, "msg").exists() else "json"
        atomic_write(self._path(entry.id, ext), entry.to_json(), tmp_dir=self.tmp, dirsync=self.dirsync)

    def remove(self, queue_id: str) -> None:
        """Delivered, bounced or deleted.  The message file goes first: a crash before the
        state file follows leaves a lone .state, which start-up removes.  (An entry of an
        older version: its .json first, so a crash leaves an orphan .eml only.)"""
        stateless = queue_id in self._stateless
        self._stateless.discard(queue_id)
        journal = self.journal
        if journal is not None and journal.take(queue_id):
            journal.ended(queue_id)
            return   # delivered before its file was written: no file at all
        if remove_quietly(self._path(queue_id, "msg")):
            if not stateless:
                remove_quietly(self._path(queue_id, "state"))
            if journal is not None:
                journal.ended(queue_id)
            return   # the usual case: one or two unlinks, not four
        if journal is not None:
            journal.ended(queue_id)
        remove_quietly(self._path(queue_id, "state"))
        remove_quietly(self._path(queue_id, "json"))
        remove_quietly(self._path(queue_id, "eml"))

    def set_aside(self, queue_id: str, why: str) -> None:
        self.write_out(queue_id)
        make_dirs(self.corrupt)
        for ext in ("state", "json", "msg", "eml"):
            src = self._path(queue_id, ext)
            if src.exists():
                shutil.move(str(src), str(self.corrupt / f"{queue_id}.{int(time.time())}.{ext}"))
        log.error("queue entry %s set aside in %s: %s", queue_id, self.corrupt, why)


def file_head(entry: QueueEntry) -> bytes:
    """What a .msg file holds before the message: the first line and the envelope."""
    envelope = entry.to_json()
    return b"%s %d %d\r\n%s\r\n" % (MAGIC, VERSION, len(envelope), envelope)


def _read_envelope(f) -> bytes:
    """The envelope JSON of a .msg file open at its start; the file is left at the message."""
    first = f.readline(100)
    parts = first.split()
    if (len(parts) != 3 or parts[0] != MAGIC or parts[1] != str(VERSION).encode()
            or not parts[2].isdigit() or int(parts[2]) > _MAX_ENVELOPE or not first.endswith(b"\r\n")):
        raise ValueError(f"not an ISMail queue file (first line {first[:40]!r})")
    envelope = f.read(int(parts[2]))
    if len(envelope) != int(parts[2]) or f.read(2) != b"\r\n":
        raise ValueError("queue file cut short in its envelope")
    return envelope


class StagedEntry:
    """A queue entry Spool.stage appended to the journal; ``finish()`` completes it."""

    def __init__(self, spool: Spool, journal: Journal, entry: QueueEntry, head: bytes, text: bytes,
                 ticket: int) -> None:
        self.spool, self.journal, self.entry = spool, journal, entry
        self.head, self.text, self.ticket = head, text, ticket

    def durable(self) -> None:
        """Wait for the journal's sync (``finish`` then need not)."""
        self.journal.wait_synced(self.ticket)

    def finish(self) -> None:
        """Wait for the journal's sync, then queue the entry; OSError if it could not be
        made durable (nothing is queued then)."""
        spool, qid = self.spool, self.entry.id
        try:
            try:
                self.journal.synced(self.ticket, qid)  # JournalBroken if it was closed meanwhile
            except OSError:  # reported by the journal (or closed): committed on its own
                spool._write_durably(qid, (self.head, self.text))
        except BaseException:
            spool._not_queued(qid)
            raise
        spool._queued(self.entry, self.text)

