"""Local delivery into Maildirs (the `new/ cur/ tmp/` layout any Maildir reader knows).

One message for several local mailboxes is written once, into the first mailbox's
tmp/, fsync'd, then hard-linked into each mailbox's new/ (a copy where the file
system has no links), and each new/ folder is fsync'd.  Only then is the message
acknowledged.  In the server the two fsyncs give way to the journal's (queue/
journal.py): the text is copied there and synced before the file is renamed into
new/, and the files are synced together within a second.  If any step fails, the
links already made are removed again, so a temporary failure (the client will retry)
never leaves a half-delivered message.

Files are stored with LF line ends, the Maildir convention on disk; the SMTP
stream's CRLF is restored when a message is sent on or read over POP3.  Each name
carries Dovecot's size fields, ``<unique>,S=<size on disk>,W=<size with CRLF>``, so
a mail reader learns every message's size from a directory listing alone.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from ..fsutil import DirSync, fsync_dir, make_maildirs, remove_quietly, unique_name, write_new_file
from ..queue.journal import JOURNAL_MAX, Journal, fsync_file
from ..queue.spool import MessageBuffer
from .lineends import to_disk
from .spares import SpareFiles, fill

log = logging.getLogger("ismail.maildir")


class _Sizes:
    """Counts what passes through: bytes on disk and line ends (for the CRLF size)."""

    def __init__(self) -> None:
        self.size = 0
        self.lines = 0

    def count(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        self.lines += chunk.count(b"\n")
        return chunk

    def suffix(self) -> str:
        return f",S={self.size},W={self.size + self.lines}"


def _lf_chunks(header: bytes, body: MessageBuffer, sizes: _Sizes):
    """The message as it is stored (lineends.to_disk): CRLF turned into LF, even where a
    chunk boundary splits a CRLF."""
    for chunk in to_disk(_pieces(header, body)):
        yield sizes.count(chunk)


def _pieces(header: bytes, body: MessageBuffer):
    yield header
    yield from body.chunks()


def deliver(mailboxes: list[Path], header: bytes, body: MessageBuffer,
            dirsync: DirSync | None = None,
            before_commit: Callable[[list[Path]], None] | None = None,
            journal: Journal | None = None) -> list[Path]:
    """Store one message in every mailbox given; returns the new files. Raises OSError.

    ``before_commit`` hears the final file names (one per mailbox, in order) after the text
    is written and before it is committed or any of them appears in ``new/`` (the
    duplicate journal).

    With ``journal`` (the server's, queue/journal.py) a message up to JOURNAL_MAX is made
    durable by its copy in the journal instead of two fsyncs of its own (the file's and
    its folder's): one sync of the journal serves every message written before it began,
    and the files are synced together at the journal's next checkpoint, within a second.
    The copy is on disk before the file appears in new/, so a crash never leaves a
    reader half a message."""
    boxes = list(dict.fromkeys(mailboxes))  # a mailbox named twice gets one copy
    try:
        return _deliver(boxes, header, body, dirsync, before_commit, journal)
    except FileNotFoundError:
        # A mailbox never written to, or whose folders were removed: made now, and the
        # delivery tried once more (asking first would cost a stat at every message).
        # Tried again also when there was nothing left to make: another delivery to the
        # new mailbox may have made its folders since this one failed.
        make_maildirs(*boxes)
        return _deliver(boxes, header, body, dirsync, before_commit, journal)


def _deliver(boxes: list[Path], header: bytes, body: MessageBuffer, dirsync: DirSync | None,
             before_commit: Callable[[list[Path]], None] | None,
             journal: Journal | None) -> list[Path]:
    first = boxes[0]
    tmp = first / "tmp" / unique_name()
    placed: list[Path] = []
    sizes = _Sizes()
    lid = None
    try:
        text = None
        if journal is not None and len(header) + body.size <= JOURNAL_MAX:
            text = list(_lf_chunks(header, body, sizes))
            write_new_file(tmp, text, sync=False)
        else:
            write_new_file(tmp, _lf_chunks(header, body, sizes))
        if len(boxes) == 1:
            dests = [first / "new" / (tmp.name + sizes.suffix())]
        else:
            dests = [box / "new" / (unique_name() + sizes.suffix()) for box in boxes]
        # The duplicate journal's line first: a kill after the record below brings the
        # file back at the next start, and the sender's retry must then find the line.
        if before_commit is not None:
            before_commit(dests)
        if text is not None:
            try:
                lid = journal.commit_local(dests, text)
            except OSError:  # reported by the journal: this one is synced on its own
                fsync_file(tmp)
        _put_in_place(tmp, dests, placed)
        if lid is not None:
            journal.placed(lid)
            return placed
        _sync_new(boxes, dirsync)
    except BaseException:
        for path in [tmp, *placed]:
            remove_quietly(path)
        if lid is not None:
            journal.ended(lid)  # not delivered after all: the record must not bring it back
        raise
    return placed


def stage(mailboxes: list[Path], header: bytes, body: MessageBuffer, journal: Journal,
          before_commit: Callable[[list[Path]], None] | None = None,
          spares: SpareFiles | None = None) -> "Staged | None":
    """deliver() in two steps, for a thread that must not wait for the disk (the SMTP
    loop): here the message is appended to the journal under the names it will have in
    new/, and returned; ``Staged.place()``, in a thread that may wait, waits for the
    journal's sync, then writes the file and renames it into place.  One sync then
    serves every message staged before it, with no thread waiting per message.  None
    when the journal cannot take it (too large, or not in use): deliver() then.  With
    ``spares`` the file is one made ahead where one is ready (store/spares.py)."""
    if len(header) + body.size > JOURNAL_MAX or not journal.usable:
        return None
    boxes = list(dict.fromkeys(mailboxes))
    sizes = _Sizes()
    text = list(_lf_chunks(header, body, sizes))
    dests = [box.joinpath("new", unique_name() + sizes.suffix()) for box in boxes]
    if before_commit is not None:
        before_commit(dests)
    try:
        lid, ticket = journal.stage_local(dests, text)
    except OSError:  # the journal failed just now
        return None
    return Staged(boxes, dests, text, journal, lid, ticket, spares)


class Staged:
    """A local delivery whose text is in the journal's queue of records (maildir.stage)."""

    def __init__(self, boxes: list[Path], dests: list[Path], text: list[bytes], journal: Journal,
                 lid: str, ticket: int, spares: SpareFiles | None = None) -> None:
        self.boxes, self.dests, self.text = boxes, dests, text
        self.journal, self.lid, self.ticket = journal, lid, ticket
        self.spares = spares
        self._written: Path | None = None  # the file, already written (write_ahead)

    def durable(self) -> None:
        """Wait for the journal's sync (``place`` then need not)."""
        self.journal.wait_synced(self.ticket)

    def write_ahead(self) -> bool:
        """Write the file now (``_write``), in a thread that may wait, so that ``place()``
        (in the SMTP loop) only renames it: creating a file is the slow part, and the
        loop must not wait for it.  Best effort: False on failure (``place()`` then does
        it all, and reports what fails)."""
        try:
            self._written = self._write()
        except OSError:
            return False
        return True

    def _write(self) -> Path:
        """The message in a file of its own, not yet in place: one made ahead (spares.py)
        if one is ready, else a new one in tmp/.  OSError if it cannot be written (no
        file is left behind then)."""
        spare = self.spares.take() if self.spares is not None else None
        if spare is not None:
            try:
                fill(spare, self.text)
                return spare
            except OSError:
                remove_quietly(spare)  # gone, or the disk is full: the usual way says which
        tmp = self.boxes[0] / "tmp" / unique_name()
        try:
            write_new_file(tmp, self.text, sync=False)
        except OSError:
            remove_quietly(tmp)
            raise
        return tmp

    def place(self, dirsync: DirSync | None = None) -> list[Path]:
        """Wait until the journal holds the message on disk, then put it in every mailbox;
        returns the new files.  Raises OSError (nothing is placed then, and the record is
        ended).  If the journal's sync fails, the files are synced on their own instead."""
        try:
            self.journal.synced(self.ticket, self.lid)
            lid = self.lid
        except OSError:  # reported by the journal
            lid = None
        try:
            try:
                return self._place(lid, dirsync)
            except FileNotFoundError:  # as in deliver()
                make_maildirs(*self.boxes)
                return self._place(lid, dirsync)
        except BaseException:
            self.journal.ended(self.lid)  # not delivered after all: the record must not bring it back
            raise

    def _place(self, lid: str | None, dirsync: DirSync | None) -> list[Path]:
        tmp, self._written = self._written, None
        placed: list[Path] = []
        try:
            if tmp is None:
                tmp = self._write()
            if lid is None:  # the journal failed: the file is made durable on its own
                fsync_file(tmp)
            _put_in_place(tmp, self.dests, placed)
        except BaseException:
            for path in [tmp, *placed] if tmp is not None else placed:
                remove_quietly(path)
            raise
        if lid is not None:
            self.journal.placed(lid)
        else:
            _sync_new(self.boxes, dirsync)
        return placed


def _put_in_place(tmp: Path, dests: list[Path], placed: list[Path]) -> None:
    """``tmp`` renamed to its one destination, or linked to each; ``placed`` grows as they appear."""
    if len(dests) == 1:
        os.replace(tmp, dests[0])
        placed.append(dests[0])
        return
    for dest in dests:
        _link_or_copy(tmp, dest)
        placed.append(dest)
    tmp.unlink()


def _sync_new(boxes: list[Path], dirsync: DirSync | None) -> None:
    for box in boxes:
        if dirsync is None:
            fsync_dir(box / "new")
        else:
            dirsync.sync(box / "new")



def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        # FAT volumes and some network shares have no hard links.
        tmp = dest.parent.parent / "tmp" / dest.name
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)


def clean_tmp(mailbox_root: Path) -> int:
    """Remove our own leftovers in every mailbox's tmp/ after a crash; returns how many."""
    removed = 0
    if not mailbox_root.is_dir():
        return 0
    for tmpdir in mailbox_root.glob("*/*/tmp"):
        for leftover in tmpdir.iterdir():
            # Only files named the way we name them: a mail client may keep its own here.
            if ".M" in leftover.name and "P" in leftover.name and leftover.is_file():
                try:
                    leftover.unlink()
                    removed += 1
                except OSError as e:
                    log.warning("could not remove %s: %s", leftover, e)
    if removed:
        log.info("removed %d unfinished local deliveries left by a crash", removed)
    return removed
