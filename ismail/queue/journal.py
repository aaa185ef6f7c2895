"""The journal: one fsync commits every message that arrived while the last ran.

Without it each message costs two fsyncs before its 250: its file's, then its
folder's (for the rename).  With it a queued message's bytes are appended to the
journal, a file that only grows, and the 250 waits for an fdatasync of the journal that
began after they were written.  One fdatasync serves every message written before it
began (group commit).  The message's own file is written later, and only if it is still
needed: a queued message delivered at once - most of the relay - never has a file at all
(no create, rename and unlink; measured, a fifth of the server's CPU per relayed
message).  Local deliveries (store/maildir.py) go through the journal too: their files
in the Maildirs' new/ are synced together at the next checkpoint, within a second.

A queued message's file (messages/<id>.msg, as spool.py describes it) is written,
without a sync, by the first of: the checkpoint thread, once the entry has been queued
for WRITE_AFTER seconds (so a message waiting for a slow server, and ``queue list``
in another process, sees it within one or two seconds); the first attempt deferring
it (its state is saved next to it); anyone reading the folder in this process (the
queue window); its segment's checkpoint; a clean stop.  Until then the journal holds
its bytes in memory (at most UNWRITTEN_MAX; past that the file is written at once, as
before the record).  A lock held while one is written keeps a delivery from removing
an entry halfway through its file's writing.

Layout under ``DATA/queue/journal/``::

    <n>.jnl     a segment: the line "ISMAIL-JOURNAL 2" (CRLF; version 1, the same
                without L records, is read too), then records, each kind (1 byte),
                payload length (4 bytes), CRC-32 of kind, length and payload (4
                bytes), payload.  Q, a queued message: the queue id, LF, the message
                file's bytes.  L, a local delivery: one line of JSON (its id and the
                file names it was given in new/), LF, the file's bytes.  D: the id of a
                Q or L record that no longer needs it.
    spare.tmp   the next segment, made ahead on a busy server (see below)

A segment holds SEGMENT_BYTES; the next one is made (its header fsync'd, the folder
fsync'd) before the first record goes in.  The full one is then checkpointed by a
thread of its own: the message files of its records that are still queued (or were
delivered locally and not yet checkpointed) are fsync'd, the messages/ folder too, and
the segment is removed; from then on those files stand on their own, as they would have
without the journal.  A clean stop checkpoints them all and leaves no segment.

Once a segment holds SPARE_AFTER bytes, the thread makes the next one ahead: the header
and SEGMENT_BYTES of zeros, synced.  A record written over bytes the file already has
is made durable by a cheaper fdatasync than one that makes the file longer (no new size
to commit to the file system's own journal): 150 instead of 230 microseconds on this
machine's disk.  A server that starts writes into a plain segment that grows, and moves
to the spare as soon as it is ready; a quiet one never makes one.

Local deliveries are checkpointed every FLUSH_SECONDS by the same thread: the files
renamed into new/ since the last look are synced (on Linux by one syncfs per file
system, elsewhere file by file, and their folders), and their records ended with D.

At start (Spool.prepare, before the queue is read) whatever segments a crash left are
read in order up to the first record that is cut short or fails its CRC - records are
written in order by one thread at a time (those that pile up meanwhile in one call), and
a message is acknowledged only after a sync that covers its record and every record
before it, so what follows a bad record was never acknowledged.  Every Q record without
a D record is compared with its message file (often missing: not written yet); every L
record without one with its files, looked up in new/ and, under the same name with
flags after it, in cur/ (a mail program read it).  A file that is missing or differs
(the crash took it, or part of it) is written again from the record, durably; one that
matches is fsync'd.  Then the segments are removed.

A D record is written at once when an entry leaves the queue (delivered, bounced,
deleted) or local files are checkpointed, so a server process that dies (killed, or a
bug) keeps it, and it becomes durable with the next sync (a message arriving, or within
a second).  After a power cut, an entry whose D record was not yet on disk comes back
and is sent again: at most about a second of deliveries, the same kind of duplicate any
mail server risks when it stops between a delivery and its bookkeeping.  Likewise a
local message that a mail program fetched and deleted (or moved to another folder)
within about a second of its arrival, just before a crash, is back in the inbox after
it.  ``queue delete`` from another process (the server running elsewhere) writes no D
record; a message so deleted may come back after a crash before the next checkpoint.

Messages larger than JOURNAL_MAX keep the two fsyncs (a second copy of 50 MB is not
cheaper than a sync); so does every message once the journal has failed (an I/O error:
it is reported once and not used again until the next start).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

from ..fsutil import _O_NEW, _write_all, atomic_write, fsync_dir, make_dirs, new_queue_id, write_new_file

log = logging.getLogger("ismail.spool")

HEADER = b"ISMAIL-JOURNAL 2\r\n"
OLD_HEADERS = (b"ISMAIL-JOURNAL 1\r\n",)  # read too: the same records, without L
SEGMENT_BYTES = 8 << 20      # a segment is closed and checkpointed past this size
JOURNAL_MAX = 256 << 10      # a larger message is not copied into the journal
FLUSH_SECONDS = 0.5          # D records no sync took along are synced within twice this
SPARE_NAME = "spare.tmp"     # the next segment, made ahead (header and zeros, synced)
SPARE_AFTER = 256 << 10      # a segment this full has the next one made ahead (a busy server)
WRITE_AFTER = 1.0            # a queued message still queued this long gets its file (seconds)
UNWRITTEN_MAX = 16 << 20     # at most this much queued text waits for its file in memory
_REC = struct.Struct("!cII")  # kind, payload length, CRC-32
KINDS = (b"Q", b"D", b"L")
_fdatasync = getattr(os, "fdatasync", os.fsync)  # Windows has only fsync


class JournalBroken(OSError):
    """The journal cannot be used (an earlier write or sync failed)."""


def record(kind: bytes, *parts: bytes) -> bytes:
    """One record whose payload is ``parts`` joined (joined once, with the record's head)."""
    size = sum(map(len, parts))
    crc = zlib.crc32(struct.pack("!cI", kind, size))
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join((_REC.pack(kind, size, crc), *parts))


def segment_header(data: bytes) -> bytes | None:
    """The header a segment's bytes start with (this version's or an older one), or None."""
    return next((h for h in (HEADER, *OLD_HEADERS) if data.startswith(h)), None)


def read_segment(data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """The records of a segment's bytes up to the first bad one, and where reading stopped."""
    records = []
    pos = len(segment_header(data) or HEADER)
    while pos + _REC.size <= len(data):
        kind, size, crc = _REC.unpack_from(data, pos)
        end = pos + _REC.size + size
        if kind not in KINDS or end > len(data):
            break
        payload = data[pos + _REC.size:end]
        if zlib.crc32(payload, zlib.crc32(struct.pack("!cI", kind, size))) != crc:
            break
        records.append((kind, payload))
        pos = end
    return records, pos


def _write_batch(fd: int, batch: list[bytes]) -> None:
    if batch:
        _write_all(fd, batch[0] if len(batch) == 1 else b"".join(batch))


def fsync_file(path: Path) -> bool:
    """fsync a file by name (opened for writing: Windows flushes only such handles);
    False if it is gone."""
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return False
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def local_record(lid: str, paths: list[Path], message: list[bytes]) -> bytes:
    """An L record: a local delivery's id and final file names (JSON, one line), then its text."""
    head = json.dumps({"id": lid, "files": [os.fspath(p) for p in paths]}).encode("ascii")
    return record(b"L", head, b"\n", *message)


def parse_local(payload: bytes) -> tuple[str, list[Path], bytes]:
    head, _, message = payload.partition(b"\n")
    fields = json.loads(head)
    return fields["id"], [Path(p) for p in fields["files"]], message


def find_local(path: Path) -> Path | None:
    """Where a Maildir file delivered as ``path`` (in new/) is now: there, or in cur/ with
    flags after its name (a mail program has seen it); None if it is gone."""
    if path.exists():
        return path
    try:
        with os.scandir(path.parent.parent / "cur") as entries:
            for entry in entries:
                if entry.name.startswith(path.name) and entry.name[len(path.name):][:1] in (":", "!"):
                    return Path(entry.path)
    except OSError:
        pass
    return None


def sync_files(paths: list[Path]) -> None:
    """Make these files (local deliveries, wherever a mail program has moved them since) and
    their folders durable.  On Linux one syncfs per file system does it: a thousand fsyncs
    would take the disk for a fifth of a second, syncfs for a few milliseconds."""
    folders = {path.parent for path in paths} | {path.parent.parent / "cur" for path in paths}
    if _syncfs is not None:
        devices: set[int] = set()
        for folder in folders:
            try:
                fd = os.open(folder, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                device = os.fstat(fd).st_dev
                if device not in devices:
                    devices.add(device)
                    if _syncfs(fd) != 0:
                        errno = ctypes.get_errno()
                        raise OSError(errno, f"syncfs: {os.strerror(errno)}", str(folder))
            finally:
                os.close(fd)
        return
    for path in paths:
        found = find_local(path)
        if found is not None:
            fsync_file(found)
    for folder in folders:
        if folder.is_dir():
            fsync_dir(folder)


def _load_syncfs():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


class Journal:
    """Group commit for the queue's message files (see the module's docstring)."""

    def __init__(self, folder: Path, messages: Path) -> None:
        self.folder = folder
        self.messages = messages
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._seq = 0
        self._size = 0
        # Records are appended to _batch under the lock and written, in order, by one thread
        # at a time outside it (see _wait): no thread holds the lock across a system call.
        self._batch: list[bytes] = []   # records appended, not written yet
        self._issued = 0     # records (and flush requests) appended, numbered
        self._written = 0    # every one up to this number is written to the segment
        self._done = 0       # every one up to this number is on disk
        self._writing = False  # a thread is writing the batch
        self._syncing = False  # a thread is syncing the segment
        self._broken: BaseException | None = None
        self._unsynced_ends = False             # D records written, not yet synced
        self._where: dict[str, int] = {}          # queue id -> segment of its Q record
        self._alive: dict[int, set[str]] = {}     # segment -> ids still queued
        self._full: list[int] = []                # closed segments waiting for their checkpoint
        self._local: dict[str, list[Path]] = {}   # L record id -> its files, until checkpointed
        self._unplaced: set[str] = set()          # L records whose files are not renamed in yet
        self._placed: list[str] = []              # L records renamed in, for the next checkpoint
        # Queued messages whose file is not written yet (commit with keep=True): id -> (the
        # file's pieces, when committed).  Guarded by _files, which is also held while one is
        # written, so an entry is never taken (delivered) halfway through its file's writing.
        self._unwritten: dict[str, tuple[tuple[bytes, ...], float]] = {}
        self._unwritten_bytes = 0
        self._files = threading.Lock()
        self._plain = True          # the segment in use grows as it is written (not made ahead)
        self._no_spares = False     # making one failed: not tried again until the next start
        self._spare = "none"        # the next segment made ahead: "none", "making", "ready"
        self._stopping = False
        self._thread: threading.Thread | None = None
        # The checkpoint thread's own alarm: the writers' notify_all must not wake it at
        # every sync (it did, two thousand times a second under load).
        self._wake = threading.Event()
        self.syncs = 0       # fdatasyncs made (for the benchmark and the tests)

    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:012d}.jnl"

    # -- start and stop -------------------------------------------------------------------------
    def recover(self) -> int:
        """Bring back what the segments a crash left hold; remove them.  Returns how many
        message files (queued or local) were written again.  Call before the queue is read,
        with no server."""
        make_dirs(self.folder)
        (self.folder / SPARE_NAME).unlink(missing_ok=True)  # made ahead, never written to
        segments = sorted(p for p in self.folder.iterdir() if p.suffix == ".jnl" and p.stem.isdigit())
        queued: dict[str, bytes] = {}
        local: dict[str, tuple[list[Path], bytes]] = {}
        ended: set[str] = set()
        for path in segments:
            data = path.read_bytes()
            if segment_header(data) is None:
                if data.strip(b"\0") and not HEADER.startswith(data.rstrip(b"\0")):
                    corrupt = self.messages.parent / "corrupt"
                    make_dirs(corrupt)
                    os.replace(path, corrupt / f"{path.stem}.{time.time_ns()}.jnl")  # never over another
                    log.error("queue journal %s is not an ISMail journal (it starts %r): set aside in %s",
                              path.name, data[:20], corrupt)
                # else cut short as it was made: nothing in it was ever acknowledged
                continue
            records, stop = read_segment(data)
            if data[stop:].strip(b"\0") and stop < len(data):
                log.warning("journal %s: %d byte(s) after its last whole record ignored "
                            "(written as the server stopped, never acknowledged)", path.name, len(data) - stop)
            for kind, payload in records:
                if kind == b"Q":
                    qid, _, message = payload.partition(b"\n")
                    queued[qid.decode("ascii")] = message
                    ended.discard(qid.decode("ascii"))
                elif kind == b"L":
                    lid, paths, message = parse_local(payload)
                    local[lid] = (paths, message)
                else:
                    ended.add(payload.decode("ascii"))
        restored = 0
        for qid, message in queued.items():
            if qid in ended:
                continue
            path = self.messages / f"{qid}.msg"
            if self._restore(path, message, self.messages.parent / "tmp" / f"{qid}.journal.msg"):
                restored += 1
                log.warning("queue entry %s written again from the journal (its file was not "
                            "written yet, or the crash took it; if it was already delivered it "
                            "goes out twice)", qid)
        folders: set[Path] = set()
        for lid, (paths, message) in local.items():
            if lid in ended:
                continue
            for n, path in enumerate(paths):
                found = find_local(path) or path
                folders.add(found.parent)
                tmp = path.parent.parent / "tmp" / f"{path.name}.journal"
                try:
                    if self._restore(found, message, tmp):
                        restored += 1
                        log.warning("%s written again from the journal (the crash took it; if it had "
                                    "just been read and deleted, it is back once more)", found)
                except OSError as e:
                    # That mailbox cannot be written (removed, no space, no permission): the
                    # message is set aside where the queue keeps what it cannot use, never
                    # dropped; if even that fails, the start fails and the segment stays.
                    corrupt = self.messages.parent / "corrupt"
                    make_dirs(corrupt)
                    kept = corrupt / f"{lid}.{n}.eml"
                    kept.unlink(missing_ok=True)
                    write_new_file(kept, (message,))
                    fsync_dir(corrupt)
                    log.error("%s could not be written again from the journal (%s); the message "
                              "is kept in %s", found, e, kept)
        if segments:
            fsync_dir(self.messages)
            for folder in sorted(folders):
                fsync_dir(folder)
            for path in segments:
                path.unlink(missing_ok=True)  # a corrupt one was moved away
            fsync_dir(self.folder)
        return restored

    @staticmethod
    def _restore(path: Path, message: bytes, tmp: Path) -> bool:
        """Make ``path`` hold ``message`` durably; True if it had to be written again."""
        try:
            with open(path, "rb") as f:
                same = f.read(len(message) + 1) == message
        except FileNotFoundError:
            same = False
        if same:
            fsync_file(path)
            return False
        make_dirs(tmp.parent, path.parent)
        tmp.unlink(missing_ok=True)
        write_new_file(tmp, (message,))
        os.replace(tmp, path)
        return True

    def open(self) -> None:
        """Start the first segment and the checkpoint thread (after ``recover``)."""
        with self._cond:
            self._stopping = False
            self._broken = None
            # After any segment still there (recover removes them; one it could not remove
            # must not make the new segment's exclusive create fail).
            kept = [int(p.stem) for p in self.folder.glob("*.jnl") if p.stem.isdigit()]
            self._new_segment(max(kept, default=0) + 1)
        self._thread = threading.Thread(target=self._run, name="queue-journal", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Checkpoint everything and remove the segments (the server stops)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cond:
            while self._writing or self._syncing:
                self._cond.wait()
            fd, self._fd = self._fd, None
            batch, self._batch = self._batch, []
            if fd is not None:
                try:
                    if self._broken is None:
                        _write_batch(fd, batch)  # D records: the segments stay if a checkpoint fails
                except OSError as e:
                    self._fail(e)
                os.close(fd)
            segments = sorted(set(self._alive) | set(self._full) | {self._seq})
            self._full.clear()
        for seq in segments:
            self._checkpoint(seq)
        (self.folder / SPARE_NAME).unlink(missing_ok=True)
        self._spare = "none"

    # -- the hot path ---------------------------------------------------------------------------
    def commit(self, qid: str, *message: bytes, keep: bool = False) -> None:
        """Append ``message`` (the whole file of entry ``qid``, in pieces) and return once it
        is on disk.  With ``keep`` the caller has not written the file: the journal keeps the
        pieces and writes messages/<qid>.msg itself when the entry is still queued after
        WRITE_AFTER seconds, or sooner when asked (``write_out``); an entry delivered before
        then (``take``) never has a file at all.  Without room for it in memory
        (UNWRITTEN_MAX) the file is written here, before the record."""
        self.synced(self._stage_queued(qid, message, keep), qid)

    def unwritten(self, qid: str) -> tuple[bytes, ...] | None:
        """The pieces of entry ``qid``'s file if it is not written yet, else None."""
        held = self._unwritten.get(qid)
        return held[0] if held is not None else None

    def take(self, qid: str) -> bool:
        """Entry ``qid`` leaves the queue: True if its file was never written (nothing to
        remove).  The caller then calls ``ended``."""
        with self._files:
            return self._drop(qid)

    def write_out(self, qid: str | None = None, older_than: float | None = None) -> None:
        """Write the file of entry ``qid`` now if it is not written yet (every such entry
        without ``qid``; only those committed before ``older_than``, a time.monotonic()).
        Not synced: the Q record covers the file until its segment's checkpoint syncs it."""
        with self._files:
            if qid is not None:
                ids = [qid] if qid in self._unwritten else []
            else:
                ids = [q for q, (_, when) in self._unwritten.items()
                       if older_than is None or when < older_than]
        for q in ids:
            with self._files:
                held = self._unwritten.get(q)
                if held is None:
                    continue  # taken (delivered) meanwhile
                self._write_file(q, held[0])
                self._drop(q)

    def _drop(self, qid: str) -> bool:
        held = self._unwritten.pop(qid, None)
        if held is None:
            return False
        self._unwritten_bytes -= sum(map(len, held[0]))
        return True

    def _write_file(self, qid: str, pieces: tuple[bytes, ...]) -> None:
        atomic_write(self.messages / f"{qid}.msg", pieces, tmp_dir=self.messages.parent / "tmp",
                     sync=False)

    def commit_local(self, paths: list[Path], message: list[bytes]) -> str:
        """A local delivery: append ``message`` (the file's bytes, in pieces) with the names
        it is about to get in its Maildirs' new/ and return once it is on disk.  The caller
        then renames the files into place and calls ``placed`` (or ``ended`` if it failed);
        the files are made durable on their own at the next checkpoint, within a second."""
        lid, ticket = self.stage_local(paths, message)
        self.synced(ticket, lid)
        return lid

    def stage_local(self, paths: list[Path], message: list[bytes]) -> tuple[str, int]:
        """commit_local without the wait, for a thread that must not wait (the SMTP loop):
        the record is appended, to be written with the next write, and (its id, its
        ticket) returned.  Whoever then calls ``synced(ticket, lid)`` waits for a sync
        that covers it; meanwhile more records can join that sync."""
        lid = "L" + new_queue_id()
        with self._cond:
            return lid, self._append_record(lid, local_record(lid, paths, message), paths)

    def stage(self, qid: str, *message: bytes) -> int:
        """commit(keep=True) without the wait (see stage_local): the ticket to pass to
        ``synced``."""
        return self._stage_queued(qid, message, keep=True)

    def _stage_queued(self, qid: str, message: tuple[bytes, ...], keep: bool) -> int:
        # Read without the lock: the bound is for memory, a message more or less is no matter.
        if keep and self._unwritten_bytes + sum(map(len, message)) > UNWRITTEN_MAX:
            keep = False
            self._write_file(qid, message)
        rec = record(b"Q", qid.encode("ascii") + b"\n", *message)
        with self._cond:
            return self._append_record(qid, rec, unwritten=message if keep else None)

    def synced(self, ticket: int, rid: str) -> None:
        """Return once staged record ``ticket`` (of ``rid``) is on disk; OSError if the
        journal failed (the message is then the caller's to make durable another way)."""
        with self._cond:
            try:
                self._wait(ticket)
            except BaseException:
                self._unplaced.discard(rid)
                with self._files:
                    self._drop(rid)
                raise

    def wait_synced(self, ticket: int) -> None:
        """Return once staged record ``ticket`` is on disk, or the journal has failed
        (then quietly: ``synced`` tells whoever settles the record)."""
        with self._cond:
            try:
                self._wait(ticket)
            except OSError:
                pass

    @property
    def usable(self) -> bool:
        return self._broken is None and self._fd is not None

    def _append_record(self, rid: str, rec: bytes, paths: list[Path] | None = None,
                       unwritten: tuple[bytes, ...] | None = None) -> int:
        """(Inside the lock) append record ``rec`` of ``rid`` (with ``paths``: a local
        delivery's; with ``unwritten``: a queued message's file, not written yet); returns
        its ticket, for ``synced``."""
        if self._broken is not None or self._fd is None:
            raise JournalBroken(f"the queue journal is not in use ({self._broken or 'closed'})")
        if ((self._size + len(rec) > SEGMENT_BYTES and self._size > len(HEADER))
                or (self._plain and self._spare == "ready")):
            self._rotate()
        ticket = self._append(rec)
        self._where[rid] = self._seq
        self._alive.setdefault(self._seq, set()).add(rid)
        if paths is not None:
            self._local[rid] = list(paths)
            self._unplaced.add(rid)
        if unwritten is not None:
            # Before the sync: a checkpoint of this segment (started by a later record)
            # must find the file's pieces, to write the file before it syncs it.
            with self._files:
                self._unwritten[rid] = (unwritten, time.monotonic())
                self._unwritten_bytes += sum(map(len, unwritten))
        return ticket

    def placed(self, lid: str) -> None:
        """The files of L record ``lid`` are in their Maildirs: checkpoint them soon."""
        with self._cond:
            if lid in self._unplaced:
                self._unplaced.discard(lid)
                self._placed.append(lid)

    def ended(self, *ids: str) -> None:
        """Entries ``ids`` left the queue (or L records were checkpointed or given up): D
        records, written before this returns, in one write (a server process that dies
        keeps them: the entry is not sent again) and made durable by the next sync (so a
        power cut may lose them)."""
        with self._cond:
            ends = []
            for rid in ids:
                self._unplaced.discard(rid)
                self._local.pop(rid, None)
                seq = self._where.pop(rid, None)
                if seq is None:
                    continue  # not in a segment (checkpointed, or never journalled): nothing to undo
                alive = self._alive.get(seq)
                if alive is not None:
                    alive.discard(rid)
                ends.append(record(b"D", rid.encode("ascii")))
            if not ends or self._fd is None:
                return
            try:
                if self._broken is not None:
                    # Also into a journal that failed (its segments are read at the next
                    # start): a message refused because its commit failed must not come
                    # back from there.  (Under the lock: the journal is out of use anyway.)
                    _write_all(self._fd, b"".join(ends))
                    return
                self._unsynced_ends = True
                self._wait(self._append(b"".join(ends)), sync=False)
            except OSError:
                return  # reported by _fail; at worst the entry is sent again after a crash

    # -- inside the lock ------------------------------------------------------------------------
    def _append(self, rec: bytes) -> int:
        """Queue ``rec`` (b"": a request for a sync only) for the segment; returns its ticket."""
        if rec:
            self._batch.append(rec)
            self._size += len(rec)
        self._issued += 1
        return self._issued

    def _fail(self, e: BaseException) -> None:
        # What was appended and not written is dropped: each of its writers hears of the
        # failure (and a D record in it at worst lets an entry be sent again after a crash).
        self._batch.clear()
        if self._broken is None:
            self._broken = e
            log.error("queue journal %s failed (%s): messages are now committed one fsync each "
                      "until the next start", self._path(self._seq), e)

    def _wait(self, ticket: int, sync: bool = True) -> None:
        """Return once record ``ticket`` and every one before it are written to the segment
        and, with ``sync``, on disk (a sync that began after they were written has ended).

        The records are written in order by one thread at a time, outside the lock, each
        time every record appended so far in one call; syncs run one at a time, also
        outside the lock.  Whoever needs a sync while none runs writes what is waiting and
        syncs; whoever comes while one runs waits for the next, which serves them all
        (group commit).  D records (no sync) are written by their own thread unless a
        write is under way, also while a sync runs.  Holding the lock across the system
        calls, as this did before, made every thread that only wanted to append wait for
        the disk and for the interpreter's lock (the holder lost it during the call): 10
        sessions of local mail spent more time waiting for the lock than for the sync."""
        cond = self._cond
        while (self._done if sync else self._written) < ticket:
            if self._broken is not None or self._fd is None:
                raise JournalBroken(f"the queue journal failed: {self._broken or 'closed'}")
            if self._writing or (sync and self._syncing):
                cond.wait()
                continue
            # Write what is waiting; or, if all is written (sync is true then), sync it.
            writing = self._written < self._issued
            if writing:
                self._writing = True
                batch, self._batch = self._batch, []
                covered = self._issued
            else:
                self._syncing = True
                covered = self._written
            fd = self._fd
            failed: OSError | None = None
            cond.release()
            try:
                if writing:
                    _write_batch(fd, batch)
                else:
                    _fdatasync(fd)
            except OSError as e:
                failed = e
            finally:
                cond.acquire()
            if writing:
                self._writing = False
                if failed is None:
                    self._written = covered
            else:
                self._syncing = False
                if failed is None:
                    self.syncs += 1
                    self._done = max(self._done, covered)
                    self._unsynced_ends = self._unsynced_ends and self._issued > covered
            if failed is not None:
                self._fail(failed)
            cond.notify_all()
            if failed is not None:
                raise failed

    def _rotate(self) -> None:
        """Close the full segment (written and synced first) and start the next."""
        while self._writing or self._syncing:
            self._cond.wait()
        if self._done < self._issued:
            batch, self._batch = self._batch, []
            try:
                _write_batch(self._fd, batch)  # under the lock: once a segment
                _fdatasync(self._fd)
            except OSError as e:
                self._fail(e)
                raise
            self.syncs += 1
            self._written = self._done = self._issued
        os.close(self._fd)
        self._fd = None
        self._full.append(self._seq)
        self._wake.set()
        self._new_segment(self._seq + 1)
        self._cond.notify_all()

    def _new_segment(self, seq: int) -> None:
        """Start segment ``seq``: the spare made ahead if there is one, else a new file."""
        path = self._path(seq)
        plain = self._spare != "ready"
        try:
            if plain:
                fd = os.open(path, _O_NEW, 0o600)
            else:
                self._spare = "none"
                os.rename(self.folder / SPARE_NAME, path)  # closed: Windows renames no open file
                fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
            try:
                if plain:
                    _write_all(fd, HEADER)
                    os.fsync(fd)
                else:
                    os.lseek(fd, len(HEADER), os.SEEK_SET)
                fsync_dir(self.folder)
            except BaseException:
                os.close(fd)
                raise
        except OSError as e:
            self._fail(e)
            raise
        self._fd, self._seq, self._size, self._plain = fd, seq, len(HEADER), plain

    def _make_spare(self) -> None:
        """Make the next segment ahead: its header, then SEGMENT_BYTES of zeros, synced.
        A record written over bytes the file already has is made durable by a cheaper sync
        than one that makes the file longer: fdatasync then has no size to commit to the
        file system's own journal (150 instead of 230 microseconds on this machine's disk).
        The zeros read as the end of the records (read_segment stops at them)."""
        path = self.folder / SPARE_NAME
        try:
            path.unlink(missing_ok=True)
            fd = os.open(path, _O_NEW, 0o600)
            try:
                _write_all(fd, HEADER)
                zeros = bytes(1 << 20)
                for at in range(0, SEGMENT_BYTES, len(zeros)):
                    _write_all(fd, zeros[:SEGMENT_BYTES - at])
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            path.unlink(missing_ok=True)
            with self._cond:
                self._spare = "none"
            log.warning("queue journal: the next segment could not be made ahead (%s); "
                        "segments grow as they are written", e)
            self._no_spares = True
            return
        with self._cond:
            self._spare = "ready"

    # -- the checkpoint thread ------------------------------------------------------------------
    def _run(self) -> None:
        syncs = -1
        failing_since: float | None = None  # writing queued files has failed since then
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            with self._cond:
                if self._stopping:
                    return
                full = self._full[:1]
                if full:
                    self._wake.set()  # the next one, if any, at once
                # D records written since the last sync, and no sync since the last look
                flush = (not full and self._unsynced_ends and self.syncs == syncs
                         and self._broken is None and self._fd is not None)
                syncs = self.syncs
                if flush:
                    try:
                        self._wait(self._append(b""))  # a sync for the D records written before it
                    except OSError:
                        pass  # reported by _fail
                placed, self._placed = self._placed, []
                files = [path for lid in placed for path in self._local.get(lid, ())]
                spare = (self._spare == "none" and self._size >= SPARE_AFTER and not self._no_spares
                         and self._broken is None and not self._stopping)
                if spare:
                    self._spare = "making"
            if files:
                self._checkpoint_local(placed, files)
            if self._unwritten:
                try:
                    self.write_out(older_than=time.monotonic() - WRITE_AFTER)
                    failing_since = None
                except OSError as e:
                    # They stay in memory, safe in their segment, and are tried again at the
                    # next look; said once a minute while it lasts, not twice a second.
                    now = time.monotonic()
                    if failing_since is None or now - failing_since >= 60:
                        failing_since = now
                        log.error("queue journal: queued messages could not be written to %s "
                                  "(%s); they are kept in the journal and tried again", self.messages, e)
            if spare:
                self._make_spare()
            for seq in full:
                try:
                    self._checkpoint(seq)
                except OSError as e:
                    log.error("queue journal: checkpoint of %s failed (%s); it is kept and read "
                              "at the next start", self._path(seq), e)
                with self._cond:
                    self._full.remove(seq)

    def _checkpoint_local(self, placed: list[str], files: list[Path]) -> None:
        """Local deliveries renamed in since the last look: sync them, then end their records."""
        try:
            sync_files(files)
        except OSError as e:
            # Their records stay: the files are still safe, and synced again when the
            # segment is checkpointed (or restored from it at the next start).
            log.error("queue journal: local deliveries could not be synced (%s); their "
                      "records are kept until their segment is checkpointed", e)
            return
        self.ended(*placed)

    def _checkpoint(self, seq: int) -> None:
        """fsync the files of segment ``seq``'s entries still queued or delivered locally,
        then remove it."""
        deadline = time.monotonic() + 30
        with self._cond:
            # A local delivery whose files are being renamed in: wait, or they would be
            # synced before they are there.  (Microseconds; the bound is for a stuck disk.)
            while (self._unplaced.intersection(self._alive.get(seq, ()))
                   and time.monotonic() < deadline):
                self._cond.wait(0.05)
            ids = list(self._alive.get(seq, ()))
            local = [path for lid in ids for path in self._local.get(lid, ())]
            queued = [qid for qid in ids if qid not in self._local]
        for qid in queued:
            self.write_out(qid)
            fsync_file(self.messages / f"{qid}.msg")
        if local:
            sync_files(local)
        fsync_dir(self.messages)
        self._path(seq).unlink(missing_ok=True)
        with self._cond:
            for qid in self._alive.pop(seq, ()):
                if self._where.get(qid) == seq:
                    del self._where[qid]
