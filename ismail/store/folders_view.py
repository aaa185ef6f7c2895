"""``Folder``: one session's live view of one folder.

Several views of one folder may be open at once (a phone and a desktop), and SMTP
delivers into INBOX and POP3 renames and deletes its files behind their backs.  A
view therefore never assumes: ``refresh`` compares the folder with what the view
last saw and reports the difference, and every operation finds a message's file
again by its key if another party has renamed it.

What a view takes in by itself, and what it leaves for ``refresh`` to report:
* its own ``store_flags``, ``expunge`` and ``move`` (the session answers those
  commands itself): the view is updated, refresh does not report them again;
* its own ``append`` and ``copy`` into this same folder: not taken in, so the
  next refresh reports them as ``added`` (the session's EXISTS).

A view belongs to one thread (one session).  Views in different threads or
processes share nothing but the files and the folder lock.
"""
from __future__ import annotations

import bisect
import io
import logging
import operator
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from ..fsutil import O_READ
from .folders_box import Box, CrlfReader, Listing, date_from_key, settled_after, size_from_key
from .folders_flags import INFO_SEP, SYSTEM_FLAGS, change_info, letters, normalize_flags
from .folders_model import Changes, MessageRef, NoSuchMessage, UidValidityChanged
from .lineends import file_crlf_size, to_crlf, to_lf
from .folders_transfer import append_to, copy_into, move_into
from .uidlist import retry_windows

log = logging.getLogger("ismail.folders")

DELETED = "\\Deleted"
_uid_of = operator.attrgetter("uid")


class _Snapshot(NamedTuple):
    """A folder as one complete listing found it, for the next view opened on it."""

    stats: tuple            # Box.stats() before that listing (directories and UID index)
    keywords: tuple | None  # the keyword table's file, as the flags were read with it
    uidvalidity: int
    uidnext: int
    new: Path               # the Path objects the refs hold (views compare them by identity)
    cur: Path
    by_uid: dict[int, MessageRef]
    messages: list[MessageRef]
    settled: bool           # taken after the directories' mtimes had settled


class _Snapshots:
    """The last complete view of recently opened folders, shared by the sessions of this
    process: a SELECT, EXAMINE or STATUS of a folder nobody changed since takes the
    list from here instead of listing and indexing the directory again (Dovecot keeps
    its index on disk for the same end).  A snapshot is used only while the folder's
    directories' stats are exactly those it was taken under (and its index has given
    out no UID since).  One taken before the mtimes had settled (``settled_after``) may
    miss a change made in the same clock tick: a view opened from it lists the folder
    again at its next look, as the view that took it does.  Bounded by messages held,
    oldest dropped first.
    """

    MAX_MESSAGES = 300_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._map: OrderedDict[Path, _Snapshot] = OrderedDict()
        self._held = 0

    def get(self, path: Path, stats: tuple) -> _Snapshot | None:
        """The snapshot of ``path`` if its directories' stats are still ``stats``'s."""
        with self._lock:
            snap = self._map.get(path)
            if snap is None or snap.stats[:2] != stats[:2]:
                return None
            self._map.move_to_end(path)
            return snap

    def put(self, path: Path, snap: _Snapshot) -> None:
        with self._lock:
            old = self._map.pop(path, None)
            if old is not None:
                self._held -= len(old.messages)
            if len(snap.messages) > self.MAX_MESSAGES:
                return
            self._map[path] = snap
            self._held += len(snap.messages)
            while self._held > self.MAX_MESSAGES:
                _, dropped = self._map.popitem(last=False)
                self._held -= len(dropped.messages)

    def clear(self) -> None:
        with self._lock:
            self._map.clear()
            self._held = 0


SNAPSHOTS = _Snapshots()


class Folder:
    """A live view: ``messages`` in UID order, kept current by ``refresh``."""

    def __init__(self, box: Box, open_box: Callable[[str], Box]) -> None:
        self._box = box
        self._open_box = open_box
        self.name = box.name
        self.uidvalidity = 0
        self.uidnext = 1
        self.messages: list[MessageRef] = []
        self._by_uid: dict[int, MessageRef] = {}
        self._stats: tuple | None = None
        self._still: tuple | None = None   # (index stat, file names) of an unsettled look
        # The shared snapshot whose very messages this view holds (None once they differ):
        # what sessions may share beyond the listing, such as rendered FETCH rows.
        self.origin: _Snapshot | None = None
        self._highest = 0
        box.clean_tmp()
        self._sync()

    # -- looking -------------------------------------------------------------------------------
    def refresh(self) -> Changes:
        """What changed since the last refresh: expunged UIDs, new messages, new flags.

        Cheap when nothing did (two directory stats and one of the index).  Raises
        NoSuchFolder if the folder was deleted or renamed, UidValidityChanged if its
        index was rebuilt: the session must then close it.
        """
        return self._sync()

    @property
    def path(self) -> Path:
        """The folder's directory."""
        return self._box.path

    def message(self, uid: int) -> MessageRef | None:
        return self._by_uid.get(uid)

    def message_getter(self) -> Callable[[int], MessageRef | None]:
        """``message`` for a loop over many UIDs (no method call each): valid until the
        next refresh, which makes a new table."""
        return self._by_uid.get

    @property
    def keywords(self) -> list[str]:
        """The keywords defined in this folder (for FLAGS and PERMANENTFLAGS)."""
        return [name for name in self._box.keywords.names if name]

    def _sync(self) -> Changes:
        box = self._box
        now = time.time()
        stats = box.stats()
        if stats == self._stats:   # kept only from a look made after the mtimes had settled
            return Changes()
        if not self.uidvalidity and self._adopt(stats):
            return Changes(added=list(self.messages))
        still, self._still = self._still, None
        index = box.index()
        if self.uidvalidity and index.uidvalidity != self.uidvalidity:
            raise UidValidityChanged(f"folder {self.name} was given a new UIDVALIDITY")
        table_changed = box.keywords.reload()
        names = box.names()
        if still is not None and still == (stats[2], names) and not table_changed:
            # Looked at a moment ago, before the mtimes had settled: the same file names
            # (flags are in the names) and the same index are the same view.
            if self._settle(stats, names, now):   # and now it is sure: other views may take it
                self._share(stats, True)
            return Changes()
        listing = box.scan(names)
        gone = [key for key in index.uids if key not in listing]
        if gone or any(ref.key not in listing for ref in self._by_uid.values()):
            # A file renamed (new flags) while we listed may be missing from that listing;
            # it is gone only if a second listing does not have it either.
            listing.update(box.scan())
            gone = [key for key in gone if key not in listing]
            names = None
        unknown = [key for key in listing if key not in index.uids]
        if unknown or gone:
            index = box.assign(unknown, listing, {(index.uids[k], k) for k in gone}, index.uidvalidity)
            stats = stats[:2] + (box.index_stat,)   # the index as assign left it, not as before
        cap = self._first_unseen_line(index, listing)
        changes = self._take(listing, index, table_changed, cap)
        self.uidvalidity, self.uidnext = index.uidvalidity, index.uidnext
        settled = self._settle(stats, names, now, complete=cap is None)
        if cap is None:
            self._share(stats, settled)
        return changes

    def _share(self, stats: tuple, settled: bool) -> None:
        """This view, complete, as the snapshot the next view opened on the folder takes."""
        box = self._box
        self.origin = _Snapshot(stats, box.keywords.stat, self.uidvalidity, self.uidnext, box.new,
                                box.cur, dict(self._by_uid), list(self.messages), settled)
        SNAPSHOTS.put(box.path, self.origin)

    def _settle(self, stats: tuple, names: tuple | None, now: float, complete: bool = True) -> bool:
        """Remember what the look at ``now`` saw; whether the mtimes had settled then.

        Equal stats prove nothing changed only if they were read after the mtimes had
        settled: a change in the same clock tick as the last one leaves the mtime as it
        was.  Until a look made after that, every look lists again (whenever it comes),
        and the file names of this look (kept until then) say whether the view changed.
        Not ``complete`` (messages wait for their files): look in full next time."""
        settled = now >= max(settled_after(stats[0]), settled_after(stats[1]))
        self._stats = stats if complete and settled else None   # None: look again next time
        self._still = (stats[2], names) if complete and not settled and names is not None else None
        return settled

    def _adopt(self, stats: tuple) -> bool:
        """Open from the shared snapshot if the folder is exactly as it was taken."""
        box = self._box
        snap = SNAPSHOTS.get(box.path, stats)
        if snap is None:
            return False
        if snap.stats[2] != stats[2]:
            # The index was rewritten since, with the same files in place (the directories
            # say so): what matters is that it still has the same UIDVALIDITY and that
            # it has given out no new UIDs (a \Recent claim rewrites it too).
            head = box.uidlist.header()
            if head is None or head[:2] != (snap.uidvalidity, snap.uidnext):
                return False
        box.keywords.reload()
        if box.keywords.stat != snap.keywords:
            return False
        box.new, box.cur = snap.new, snap.cur
        self._by_uid = dict(snap.by_uid)
        self.messages = list(snap.messages)
        self.origin = snap
        self.uidvalidity, self.uidnext = snap.uidvalidity, snap.uidnext
        if self.messages:
            self._highest = self.messages[-1].uid
        self._stats = stats if snap.settled else None   # not settled: list again at the next look
        return True

    def _first_unseen_line(self, index, listing: Listing) -> int | None:
        """The lowest new UID whose file this listing did not show, if any.

        A listing can miss a file placed while it ran and still show a later one.
        Messages from that UID on wait for the next refresh: showing the later one
        now would make the earlier one impossible to announce (UIDs only go up).
        A UID whose file never comes (a crash between index and rename) is dropped
        from the index by the next refresh, and the wait ends.
        """
        cap = None
        for key in reversed(index.uids):
            uid = index.uids[key]
            if uid <= self._highest:
                break
            if key not in listing:
                cap = uid
        return cap

    def _take(self, listing: Listing, index, table_changed: bool, cap: int | None = None) -> Changes:
        """Make ``listing`` the view; return how it differs from the old one."""
        self.origin = None
        uids, dates, flags_of, old = index.uids, index.dates, self._box.keywords.flags_of, self._by_uid
        highest, cap, new_ref = self._highest, cap if cap is not None else 1 << 33, tuple.__new__
        by_uid: dict[int, MessageRef] = {}
        added: list[MessageRef] = []
        changed: list[MessageRef] = []
        for key, (sub, filename, info) in listing.items():
            uid = uids.get(key)
            if uid is None:
                continue
            prev = old.get(uid)
            if prev is not None and prev.key == key:
                if prev.filename == filename and prev.subdir is sub and not table_changed:
                    by_uid[uid] = prev
                    continue
                ref = prev._replace(flags=flags_of(info), subdir=sub, filename=filename)
                by_uid[uid] = ref
                if ref.flags != prev.flags:
                    changed.append(ref)
                continue
            if uid <= highest or uid >= cap:
                # IMAP lets new messages only come after all others: a file that shows up
                # under a UID below one already shown waits for the folder's next opening.
                continue
            cut = key.rfind(",W=")  # the usual name ends in ",W=<size>": no function call
            size = int(key[cut + 3:]) if cut > 0 and key[cut + 3:].isdigit() else None
            if size is None:
                size = self._size(key, index, sub, filename)
            date = dates.get(key) if dates else None
            if date is None:
                date = date_from_key(key)
                if date is None:
                    date = self._date(key, index, sub, filename)
            ref = new_ref(MessageRef, (uid, key, flags_of(info), size, date, sub, filename))
            by_uid[uid] = ref
            added.append(ref)
        expunged = [uid for uid in old if uid not in by_uid]
        self._by_uid = by_uid
        self.messages = [by_uid[uid] for uid in sorted(by_uid)]
        if self.messages:
            self._highest = max(self._highest, self.messages[-1].uid)
        added.sort(key=_uid_of)
        changed.sort(key=_uid_of)
        expunged.sort()
        return Changes(expunged, added, changed)

    @staticmethod
    def _size(key: str, index, sub: Path, filename: str) -> int:
        size = size_from_key(key)
        if size is None:
            size = index.sizes.get(key)
        if size is None:
            try:
                size = file_crlf_size(sub / filename)
            except FileNotFoundError:
                size = 0
        return size

    @staticmethod
    def _date(key: str, index, sub: Path, filename: str) -> float:
        date = index.dates.get(key)
        if date is None:
            date = date_from_key(key)
        if date is None:
            try:
                date = os.stat(sub / filename).st_mtime
            except FileNotFoundError:
                date = 0.0
        return date

    def _replace_refs(self, refs: Iterable[MessageRef]) -> None:
        self.origin = None
        for ref in refs:
            self._by_uid[ref.uid] = ref
            i = bisect.bisect_left(self.messages, ref.uid, key=_uid_of)
            self.messages[i] = ref

    def _drop(self, uids: Iterable[int]) -> None:
        dropped = {uid for uid in uids if self._by_uid.pop(uid, None) is not None}
        if dropped:
            self.origin = None
            self.messages = [ref for ref in self.messages if ref.uid not in dropped]

    # -- recent ------------------------------------------------------------------------------------
    def claim_recent(self) -> list[int]:
        """The UIDs this session is the first to see (its \\Recent, RFC 3501 §2.3.2.).

        Only one session gets each UID; call it on SELECT (not EXAMINE) and after a
        refresh that added messages.
        """
        if not self.messages:
            return []
        top = self.messages[-1].uid
        box = self._box
        head = box.uidlist.header()   # the first line is enough to see nothing is left to claim
        if (head[2] if head is not None else box.index().first_recent) > top:
            return []
        with box.locked():
            index = box.index_locked()
            start = index.first_recent
            if start > top:
                return []
            index.first_recent = top + 1
            box.write_locked(index)
        i = bisect.bisect_left(self.messages, start, key=_uid_of)
        return [ref.uid for ref in self.messages[i:]]

    def recent_count(self) -> int:
        """How many messages no session has claimed as recent yet (for STATUS)."""
        head = self._box.uidlist.header()
        start = head[2] if head is not None else self._box.index().first_recent
        return len(self.messages) - bisect.bisect_left(self.messages, start, key=_uid_of)

    # -- flags ----------------------------------------------------------------------------------------
    def store_flags(self, uids: Iterable[int], flags: Iterable[str], mode: str = "set") -> list[MessageRef]:
        """Set, add or remove flags; returns the messages (of ``uids`` still present) as they are now.

        Flags are merged with what is on disk at the moment of the rename, so a flag
        another session set meanwhile is kept.  A message in new/ moves to cur/.
        """
        if mode not in ("set", "add", "remove"):
            raise ValueError(f"mode must be 'set', 'add' or 'remove', not {mode!r}")
        wanted = normalize_flags(flags)
        box = self._box
        names = sorted(f for f in wanted if f not in SYSTEM_FLAGS)
        box.keywords.reload()
        table = box.keywords.letters_for(names) if names else {}
        if table is None:
            if mode == "remove":
                table = {kw: box.keywords.find(kw) for kw in names if box.keywords.find(kw)}
            else:
                with box.locked():
                    table = box.keywords.define(names)
        change = letters(wanted, table)
        out: list[MessageRef] = []
        touched: set[Path] = set()
        for uid in sorted(set(uids)):
            ref = self._by_uid.get(uid)
            if ref is None:
                continue
            new = self._rename_flags(ref, change, mode, touched)
            out.append(new if new is not None else ref)
        box.sync_dirs(touched)
        self._replace_refs([r for r in out if r is not self._by_uid.get(r.uid)])
        return out

    def _rename_flags(self, ref: MessageRef, change: set[str], mode: str,
                      touched: set[Path]) -> MessageRef | None:
        box = self._box
        sub, filename = ref.subdir, ref.filename
        for _ in range(10):
            info = filename[len(ref.key) + 1:]
            new_info = change_info(info, change, mode, box.keywords)
            target = ref.key + INFO_SEP + new_info
            if (sub is box.cur and filename == target) or (sub is box.new and new_info == "2," and not info):
                break
            try:
                retry_windows(os.replace, sub / filename, box.cur / target)
            except FileNotFoundError:
                found = box.locate(ref.key)
                if found is None:
                    return None  # expunged by someone else: refresh will say so
                sub, filename, _ = found
                continue
            touched.update((sub, box.cur))
            sub, filename = box.cur, target
            break
        info = filename[len(ref.key) + 1:]
        return ref._replace(flags=box.keywords.flags_of(info), subdir=sub, filename=filename)

    # -- adding -----------------------------------------------------------------------------------------
    def append(self, data: bytes | str | Path, flags: Iterable[str] = (),
               internaldate: float | None = None) -> int:
        """Store a message (bytes, or the path of a file the caller keeps); returns its UID.

        CRLF becomes LF on disk.  The UID is in the index, durably, before this returns.
        The view takes the message in on its next refresh, as new mail.
        """
        return append_to(self._box, data, flags, internaldate)

    def _target(self, dest: "Folder | str") -> Box:
        return dest._box if isinstance(dest, Folder) else self._open_box(dest)

    def _refs(self, uids: Iterable[int]) -> list[MessageRef]:
        return [self._by_uid[uid] for uid in sorted(set(uids)) if uid in self._by_uid]

    def copy(self, uids: Iterable[int], dest: "Folder | str") -> list[tuple[int, int]]:
        """Copy messages (hard links where the file system has them); [(source UID, new UID)].

        Flags, keywords and internal date come along.  A message another session
        expunged meanwhile is left out of the answer.
        """
        refs = self._refs(uids)
        return copy_into(self._box, refs, self._target(dest)) if refs else []

    def move(self, uids: Iterable[int], dest: "Folder | str") -> list[tuple[int, int]]:
        """Move messages (RFC 6851); [(source UID, new UID)]. The view forgets the moved ones.

        Each file is renamed from this folder into the destination's cur/: one atomic
        step, so at every instant the message is in exactly one place.
        """
        refs = self._refs(uids)
        if not refs:
            return []
        pairs = move_into(self._box, refs, self._target(dest))
        self._drop(uid for uid, _ in pairs)
        return pairs

    # -- removing ------------------------------------------------------------------------------------------
    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only those of ``uids`` if given); their UIDs.

        A message counts as deleted only if both this view and its file say so.
        """
        wanted = None if uids is None else set(uids)
        box = self._box
        done: list[MessageRef] = []
        touched: set[Path] = set()
        for ref in self.messages:
            if DELETED not in ref.flags or (wanted is not None and ref.uid not in wanted):
                continue
            sub, filename = ref.subdir, ref.filename
            for _ in range(10):
                info = filename[len(ref.key) + 1:]
                if not (info.startswith("2,") and "T" in info[2:]):
                    break  # someone took \Deleted off meanwhile
                try:
                    retry_windows(os.unlink, sub / filename)
                except FileNotFoundError:
                    found = box.locate(ref.key)
                    if found is None:
                        break
                    sub, filename, _ = found
                    continue
                except PermissionError:
                    log.warning("could not expunge %s: the file is in use", sub / filename)
                    break
                touched.add(sub)
                done.append(ref)
                break
        if not done:
            return []
        box.sync_dirs(touched)
        with box.locked():
            index = box.index_locked()
            for ref in done:
                if index.uids.get(ref.key) == ref.uid:
                    index.remove(ref.key)
            box.write_locked(index)
        self._drop(ref.uid for ref in done)
        return [ref.uid for ref in done]

    # -- reading --------------------------------------------------------------------------------------------
    def read(self, uid: int) -> bytes:
        """The whole message with CRLF line ends (exactly ``size`` bytes), whether it has LF
        or CRLF ones on disk."""
        return to_crlf(read_whole(self._open(uid, raw=True)))

    def read_head(self, uid: int, limit: int) -> bytes:
        """The message's first bytes with LF line ends (CRLF on disk read as LF), up to its
        blank line after the header if that comes within ``limit`` bytes of the file (read in
        small steps: most headers are short)."""
        fd = self._open(uid, raw=True)
        try:
            data = os.read(fd, min(limit, 8192))
            while len(data) < limit and b"\n\n" not in data and b"\n\r\n" not in data:
                more = os.read(fd, min(limit - len(data), len(data) or 8192))
                if not more:
                    break
                data += more
            return to_lf(data)
        finally:
            os.close(fd)

    def open_stream(self, uid: int) -> CrlfReader:
        """The message as a binary stream with CRLF line ends, for large ones. Close it."""
        return CrlfReader(self._open(uid))

    def _open(self, uid: int, raw: bool = False):
        """The message's file opened for reading: a file object, or with ``raw`` a plain
        descriptor (a whole read of a file object costs an fstat, an ioctl and an lseek
        more, per message of a FETCH)."""
        ref = self._by_uid.get(uid)
        if ref is None:
            raise NoSuchMessage(f"no message with UID {uid} in {self.name}")
        opener = _open_raw if raw else _open_file
        try:
            return opener(f"{os.fspath(ref.subdir)}{os.sep}{ref.filename}")  # no Path object
        except FileNotFoundError:
            found = self._box.locate(ref.key)
            if found is None:
                raise NoSuchMessage(f"message UID {uid} in {self.name} has been expunged") from None
            return opener(os.path.join(found[0], found[1]))




def _open_raw(path: str) -> int:
    return os.open(path, O_READ)


def _open_file(path: str) -> io.BufferedReader:
    return open(path, "rb")


def read_whole(fd: int) -> bytes:
    """Everything in the open file ``fd``, which is closed."""
    try:
        parts = []
        while block := os.read(fd, 1 << 16):
            parts.append(block)
        return parts[0] if len(parts) == 1 else b"".join(parts)  # an empty file: b""
    finally:
        os.close(fd)
