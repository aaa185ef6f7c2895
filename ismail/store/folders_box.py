"""One folder on disk: its new/ cur/ tmp/, its UID index and keyword table.

A ``Box`` knows nothing of sessions; ``folders_view.Folder`` builds a session's view
on one, and copy/move use a bare Box for the destination so that a COPY into a
large folder does not list it.  Everything that changes the index happens under
the folder lock, and the index is written *before* the files it names are put in
place: a crash then leaves a UID that names no file (wasted, never reused), never
a file whose UID was handed out but not recorded.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from ..fsutil import fsync_dir, unique_name, write_new_file
from .folders_flags import Keywords, split_name
from .folders_model import NoSuchFolder, UidValidityChanged
from .lineends import file_crlf_size, lf_blocks, to_disk
from .uidlist import CorruptIndex, Index, UidList, next_uidvalidity

log = logging.getLogger("ismail.folders")

TMP_MAX_AGE = 36 * 3600  # the Maildir rule for tmp/ leftovers
_TIME = re.compile(r"(\d{1,12})\.(?:M(\d{1,6})(?!\d))?")
_SIZES = re.compile(r",S=(\d+),W=(\d+)")
_W = re.compile(r",W=(\d+)")

Listing = dict[str, tuple[Path, str, str]]  # key -> (subdir, file name, info)

# A file's or directory's mtime has a granularity: a change in the same clock tick as the
# last one leaves it unchanged, so until that tick is surely over the mtime (and a stat
# with it) does not prove that nothing changed.  A file system that keeps whole seconds
# only (FAT: 2 s) shows it in the mtime itself; the others keep fractions, and their
# clock ticks are at most ~16 ms (Windows; Linux 1-10 ms; exFAT 10 ms).  The fine slack
# is 0.1 s until ``use_measured_slack`` has watched the file system that holds the mail
# (the server does at start): the tick and any lag of its clock behind ours, doubled.
MTIME_SLACK = 2.0
MTIME_SLACK_FINE = 0.1
# Never less, whatever a measurement saw: the system timer's tick (Windows: 15.6 ms, and
# a program may shorten it while we measure, then give it back; Linux: 1-10 ms), doubled.
MTIME_SLACK_FLOOR = 0.032 if os.name == "nt" else 0.01
PROBE_PREFIX = ".ismail-mtime-probe"


def settled_after(mtime_ns: int) -> float:
    """The time after which a later change of a file with this mtime changes the mtime."""
    slack = MTIME_SLACK if mtime_ns % 1_000_000_000 == 0 else MTIME_SLACK_FINE
    return mtime_ns / 1e9 + slack


def slack_from_samples(samples: list[tuple[int, int]]) -> float:
    """The fine slack that ``samples`` call for: pairs of (our clock just after a change of
    a directory's entries, the directory's mtime read after it), in nanoseconds.

    A look at time T that saw mtime M can miss a later change only if that change keeps
    M, i.e. comes within the tick that began at M; every sample that still shows M at
    time t proves the tick (or the file system's clock lagging ours) lasts past t - M.
    The longest such wait, doubled, plus 2 ms; never under MTIME_SLACK_FLOOR.  If the
    mtime never moved, the tick is longer than the samples: the coarse MTIME_SLACK."""
    if len(samples) < 2:
        return MTIME_SLACK_FINE
    if len({mtime for _, mtime in samples}) < 2:
        return MTIME_SLACK
    longest = max(t - mtime for t, mtime in samples) / 1e9
    return max(MTIME_SLACK_FLOOR, 2 * longest + 0.002)


def measure_mtime_slack(folder: Path, seconds: float = 0.05, most: int = 2000) -> float:
    """Watch a directory's mtime in ``folder`` while files come, are renamed and go in it,
    as in a mail folder, for ``seconds`` (at most ``most`` changes): the fine slack this
    file system calls for.  The directory is removed after; ``folder`` must exist.
    (Each kind of change counts: Linux's tmpfs, for one, gives a file created after a look
    a fine time stamp, but a file removed the coarse clock's.)"""
    probe = Path(folder) / f"{PROBE_PREFIX}.{os.getpid()}"
    probe.mkdir(exist_ok=True)
    names = [os.fspath(probe / "a"), os.fspath(probe / "b")]
    probe_s = os.fspath(probe)
    samples: list[tuple[int, int]] = []
    try:
        end = time.monotonic() + seconds
        while len(samples) < most and time.monotonic() < end:
            step = len(samples) % 3
            if step == 0:
                os.close(os.open(names[0], os.O_CREAT | os.O_WRONLY, 0o600))
            elif step == 1:
                os.replace(names[0], names[1])
            else:
                os.unlink(names[1])
            samples.append((time.time_ns(), os.stat(probe_s).st_mtime_ns))
    finally:
        shutil.rmtree(probe)
    return slack_from_samples(samples)


_MEASURED: dict[int, float] = {}   # file system (st_dev) -> its slack, measured once a process


def use_measured_slack(folder: Path) -> float:
    """Measure the file system holding ``folder`` (leftover probes of a crash removed
    first), once a process, and make the result the fine slack; returns it."""
    global MTIME_SLACK_FINE
    for leftover in Path(folder).glob(PROBE_PREFIX + ".*"):
        try:
            shutil.rmtree(leftover)
        except OSError as e:   # not ours after all, or in use: the measurement goes on
            log.warning("could not remove %s: %s", leftover, e)
    device = os.stat(folder).st_dev
    slack = _MEASURED.get(device)
    if slack is None:
        slack = _MEASURED[device] = measure_mtime_slack(folder)
    if slack > 0.1:
        log.warning("changes to mail folders in %s show in their time stamps only %.2f s late "
                    "(a coarse clock, or a file server's clock behind this computer's): "
                    "folders are listed again at every look for that long after a change",
                    folder, slack)
    else:
        log.debug("mail folders in %s: a change is surely seen %.0f ms after the last one",
                  folder, slack * 1000)
    MTIME_SLACK_FINE = slack
    return slack


class _SharedIndexes:
    """Parsed UID indexes of recently used folders, shared by this process's sessions, so
    that ten sessions opening one large folder parse its index once, not ten times.

    An entry is what a read under the folder lock found, for the file's exact stat
    (inode, mtime, size), and only if that read came after the mtime had settled: a
    rewrite in the same clock tick could otherwise keep all three (a reused inode).
    Entries are never changed: writers work on a copy (``Box.index_locked``).
    """

    MAX_FOLDERS = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._map: OrderedDict[Path, tuple[tuple, Index]] = OrderedDict()

    def get(self, path: Path, stat: tuple | None) -> Index | None:
        with self._lock:
            entry = self._map.get(path)
            if entry is None or entry[0] != stat:
                return None
            self._map.move_to_end(path)
            return entry[1]

    def put(self, path: Path, stat: tuple, index: Index, read_at: float) -> None:
        if read_at < settled_after(stat[1]):
            return
        with self._lock:
            self._map[path] = (stat, index)
            self._map.move_to_end(path)
            while len(self._map) > self.MAX_FOLDERS:
                self._map.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._map.clear()


SHARED_INDEXES = _SharedIndexes()


def size_from_key(key: str) -> int | None:
    cut = key.rfind(",W=")
    if cut >= 0 and key[cut + 3:].isdigit():  # the usual case: W= ends the key
        return int(key[cut + 3:])
    m = _W.search(key)
    return int(m.group(1)) if m else None


def date_from_key(key: str, _match=_TIME.match) -> float | None:
    """The delivery time a Maildir name starts with ("1717171717.M52P7..."), if it does."""
    m = _match(key)
    if not m:
        return None
    secs, usecs = m.groups()
    return int(secs) + int(usecs) / 1e6 if usecs else float(secs)


def sizes_suffix(key: str) -> str:
    """The ",S=..,W=.." of a key, for another name of the same file."""
    m = _SIZES.search(key)
    return m.group(0) if m else ""


def arrival(key: str) -> tuple[float, str]:
    """Sort key: oldest delivery first, names without a time last."""
    date = date_from_key(key)
    return (date if date is not None else float("inf"), key)


class Box:
    """The directories and index of one folder. Not a view: no list of messages."""

    def __init__(self, account_root: Path, name: str, path: Path) -> None:
        self.root = account_root
        self.name = name
        self.path = path
        self.new = path / "new"
        self.cur = path / "cur"
        self.tmp = path / "tmp"
        self._new_s, self._cur_s = os.fspath(self.new), os.fspath(self.cur)   # for stat(): no Path work
        self.uidlist = UidList(path)
        self.keywords = Keywords(path)
        self._index: Index | None = None
        self._index_stat: tuple | None = None

    # -- the index ------------------------------------------------------------------------------
    def locked(self):
        return self.uidlist.locked()

    def index(self) -> Index:
        """The current index, to read only (it may be shared with other sessions): the
        cached one if the file has not been replaced since."""
        stat = self.uidlist.stat()
        if self._index is not None and stat == self._index_stat:
            return self._index
        shared = SHARED_INDEXES.get(self.path, stat)
        if shared is not None:
            self._index, self._index_stat = shared, stat
            return shared
        # Read under the lock: a writer puts the files of its new lines in place before it
        # lets go, so every line of what we read here names a file that was placed.
        with self.locked():
            return self._current_locked()

    def index_locked(self) -> Index:
        """The current index for a caller that holds the lock and may change it (and then
        ``write_locked`` it): a copy of its own, never the one ``index`` hands out."""
        return self._current_locked().copy()

    def _current_locked(self) -> Index:
        stat = self.uidlist.stat()
        if self._index is not None and stat == self._index_stat:
            return self._index
        shared = SHARED_INDEXES.get(self.path, stat)
        if shared is not None:
            self._index, self._index_stat = shared, stat
            return shared
        above = self._index.uidvalidity if self._index is not None else 0
        read_at = time.time()
        try:
            index = self.uidlist.read()
        except CorruptIndex as e:
            self.uidlist.set_aside(str(e))
            index, above = None, max(above, e.uidvalidity)
        if index is None:
            if self._index is not None:
                log.warning("UID index of folder %s disappeared; it gets a new UIDVALIDITY", self.name)
            self.uidlist.remove_leftovers()
            index = Index(next_uidvalidity(self.root, above))
            self.write_locked(index)
            return index
        if not index.crlf_sizes:
            index.crlf_sizes = True
            if index.sizes:
                self._measure_again(index)
                self.write_locked(index)
                return index
        self._index, self._index_stat = index, stat
        if stat is not None:
            SHARED_INDEXES.put(self.path, stat, index, read_at)
        return index

    def _measure_again(self, index: Index) -> None:
        """The sizes of an index an older ISMail wrote: it counted a CRLF on disk as two
        line ends.  Once per folder, for the files whose names carry no size."""
        listing = self.scan()
        for key in list(index.sizes):
            where = listing.get(key)
            if where is None:
                continue   # gone: its line goes at the next refresh
            try:
                index.sizes[key] = file_crlf_size(where[0] / where[1])
            except FileNotFoundError:
                pass
        log.info("folder %s: measured the sizes of %d message(s) again", self.name, len(index.sizes))

    @property
    def index_stat(self) -> tuple | None:
        """The index file's stat when this box last read or wrote it."""
        return self._index_stat

    def write_locked(self, index: Index) -> None:
        try:
            self.uidlist.write(index)
        except BaseException:
            self._index = None  # the cached object may hold changes that never reached the disk
            raise
        self._index, self._index_stat = index, self.uidlist.stat()

    def assign(self, unknown: list[str], listing: Listing, gone: set[tuple[int, str]],
               uidvalidity: int) -> Index:
        """Give new files UIDs (oldest first) and drop lines whose files are gone."""
        extra = {key: self.measure(key, listing[key]) for key in unknown if size_from_key(key) is None
                 or date_from_key(key) is None}
        with self.locked():
            index = self.index_locked()
            if uidvalidity and index.uidvalidity != uidvalidity:
                raise UidValidityChanged(f"folder {self.name} was given a new UIDVALIDITY")
            changed = False
            for uid, key in gone:
                if index.uids.get(key) == uid:
                    index.remove(key)
                    changed = True
            for key in sorted(unknown, key=arrival):
                if key not in index.uids:
                    index.add(key, *extra.get(key, (None, None)))
                    changed = True
            if changed:
                self.write_locked(index)
            return index

    def measure(self, key: str, where: tuple[Path, str, str]) -> tuple[int | None, float | None]:
        """Size with CRLF and date for a file whose name does not tell (read once, then indexed)."""
        path = where[0] / where[1]
        size = size_from_key(key)
        try:
            if size is None:
                size = file_crlf_size(path)
            date = None if date_from_key(key) is not None else os.stat(path).st_mtime
        except FileNotFoundError:
            return None, None
        return (size if size_from_key(key) is None else None), date

    # -- the files ------------------------------------------------------------------------------
    def stats(self) -> tuple:
        """What changes when a message comes, goes, or changes flags, or the index is replaced."""
        try:
            return (os.stat(self._new_s).st_mtime_ns, os.stat(self._cur_s).st_mtime_ns, self.uidlist.stat())
        except FileNotFoundError:
            raise NoSuchFolder(f"folder {self.name} no longer exists") from None

    def names(self) -> tuple[list[str], list[str]]:
        """The file names in new/ and cur/ as they are now, new/ listed first (see scan)."""
        try:
            return os.listdir(self.new), os.listdir(self.cur)
        except FileNotFoundError:
            raise NoSuchFolder(f"folder {self.name} no longer exists") from None

    def scan(self, names: tuple[list[str], list[str]] | None = None) -> Listing:
        """Every message file (of ``names``, else listed now): new/ first, then cur/, so a
        file POP3 moves between the two while we list is seen at least once (and cur/ wins
        if it is seen twice)."""
        out: Listing = {}
        for sub, listed in zip((self.new, self.cur), self.names() if names is None else names):
            for name in listed:
                if name[0] == ".":
                    continue
                cut = name.find(":")
                if cut < 0:
                    cut = name.find("!")
                if cut < 0:
                    out[name] = (sub, name, "")
                else:
                    out[name[:cut]] = (sub, name, name[cut + 1:])
        return out

    def locate(self, key: str) -> tuple[Path, str, str] | None:
        """Where the file of ``key`` is now (another session may have renamed it)."""
        for sub in (self.cur, self.new):
            try:
                with os.scandir(sub) as entries:
                    for entry in entries:
                        if entry.name.startswith(key):
                            k, info = split_name(entry.name)
                            if k == key:
                                return sub, entry.name, info
            except FileNotFoundError:
                return None
        return None

    def write_tmp(self, source: bytes | str | Path) -> tuple[Path, int, int]:
        """The message in tmp/ with LF line ends, fsync'd: (path, size on disk, size with CRLF)."""
        self.tmp.mkdir(exist_ok=True)
        path = self.tmp / unique_name()
        counts = [0, 0]

        def count(chunk: bytes) -> bytes:
            counts[0] += len(chunk)
            counts[1] += chunk.count(b"\n")
            return chunk

        def blocks():
            if isinstance(source, (bytes, bytearray, memoryview)):
                yield bytes(source)
                return
            with open(source, "rb") as f:
                while block := f.read(1 << 20):
                    yield block

        def chunks():
            for chunk in to_disk(blocks()):
                yield count(chunk)

        try:
            write_new_file(path, chunks())
        except BaseException:
            discard(path)
            raise
        return path, counts[0], counts[0] + counts[1]

    def clean_tmp(self, max_age: float = TMP_MAX_AGE) -> None:
        """Remove tmp/ files older than a day and a half: writes a crash cut short."""
        limit = time.time() - max_age
        try:
            with os.scandir(self.tmp) as entries:
                for entry in entries:
                    try:
                        if not entry.is_file():
                            continue
                        st = entry.stat()
                        # Not the mtime alone: APPEND dates its file back to the message's
                        # INTERNALDATE before the rename; the change time (POSIX) or the
                        # creation time (Windows) is when the file was really written.
                        if max(st.st_mtime, st.st_ctime) < limit:
                            os.unlink(entry.path)
                    except OSError:
                        pass
        except FileNotFoundError:
            pass

    def sync_dirs(self, dirs) -> None:
        for d in set(dirs):
            fsync_dir(d)


def discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class CrlfReader:
    """A message file read with CRLF line ends (LF or CRLF on disk), block by block (for
    large messages)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._blocks = lf_blocks(f.read, 1 << 16)
        self._pending = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            rest = bytes(self._pending) + b"".join(self._blocks).replace(b"\n", b"\r\n")
            self._pending = memoryview(b"")
            return rest
        while not self._pending:
            block = next(self._blocks, None)
            if block is None:
                return b""
            self._pending = memoryview(block.replace(b"\n", b"\r\n"))
        out = bytes(self._pending[:n])
        self._pending = self._pending[n:]
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __enter__(self) -> "CrlfReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        while block := self.read(1 << 16):
            yield block
