"""FETCH without the general renderer, for the two shapes clients send most.

* Opening a folder: ``FETCH 1:* (UID FLAGS RFC822.SIZE)`` and the like, only items the
  view knows (UID, FLAGS, RFC822.SIZE, INTERNALDATE): no file is read.
* Downloading: those plus one whole message, ``BODY.PEEK[]``, ``BODY[]`` or ``RFC822``
  without a partial range (mbsync, offlineimap, fetchmail, phones): the file is read and
  sent as one literal; no MIME parsing.

Each response is byte for byte what ``fetch.render`` gives for the same items (the
tests compare the two); responses are joined into writes of about ``BATCH`` bytes.

Sessions that open the same unchanged folder hold the same shared snapshot of it
(store.folders_view: ``Folder.origin``).  The rows of a ``FETCH 1:*`` of view items
for such a folder are the same bytes for every one of them that holds no \\Recent and
has no expunge still to announce, so the first one's rows are kept (RENDERS, bounded
in bytes) and the next ones send them as they are: ten mail programs opening one big
INBOX at once render it once, not ten times in one interpreter.
Anything else (sections, partial ranges, ENVELOPE, BODYSTRUCTURE, a FETCH that sets
\\Seen on some of its messages) goes the general way.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from functools import partial
from itertools import islice
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, Sequence

from ..store.folders import NoSuchMessage
from .commands import Done, No
from .fetch import FetchItem, internaldate

if TYPE_CHECKING:
    from .parser import Command
    from .selected import Selected
    from .session import ImapSession

META_ITEMS = frozenset(("UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE"))
WHOLE_ITEMS = frozenset(("BODY", "BODY.PEEK", "RFC822"))
BATCH = 1 << 16
_FORMATS = {"UID": b"UID %d", "FLAGS": b"FLAGS %s", "RFC822.SIZE": b"RFC822.SIZE %d",
            "INTERNALDATE": b'INTERNALDATE "%s"'}


def _whole(item: FetchItem) -> bool:
    if item.name == "RFC822":
        return True
    return item.name in WHOLE_ITEMS and item.section == () and not item.text and item.partial is None


class Plan(NamedTuple):
    """How this path answers an item list (cmd_message keeps it per item list)."""
    before: list[str]      # items before the message text (all of them without one)
    after: list[str]       # items after it
    label: bytes | None    # the message text's label, b"BODY[]"; None: no text
    head: bytes            # with a text: the response's format up to the literal
    tail: bytes            # ... and after it


def plan(items: Sequence[FetchItem]) -> Plan | None:
    """How this path answers ``items``; None if it cannot."""
    before: list[str] = []
    after: list[str] = []
    label: bytes | None = None
    seen: set[FetchItem] = set()
    for item in items:
        if item in seen:
            continue   # a repeated item is answered once, as render does
        seen.add(item)
        if item.name in META_ITEMS and item.section is None:
            (before if label is None else after).append(item.name)
        elif label is None and _whole(item):
            label = item.label()
        else:
            return None
    head = tail = b""
    if label is not None:
        head = b"* %d FETCH (" + b" ".join(_FORMATS[n] for n in before)
        head += (b" " if before else b"") + label + b" "
        tail = (b" " + b" ".join(_FORMATS[n] for n in after) if after else b"") + b")\r\n"
    return Plan(before, after, label, head, tail)


def fetch_fast(s: "ImapSession", c: "Command", sel: "Selected", numbered, shape: Plan,
               everything: bool = False) -> Iterator[bytes]:
    """The responses for ``shape`` (from ``plan``), then Done, or No [EXPUNGEISSUED].
    ``everything``: the set is 1:*, every message the session knows."""
    before, after, label, head, tail = shape
    folder = sel.folder
    message = folder.message
    date = _dates()
    if label is None:
        return (yield from _meta_rows(c, sel, numbered, before, date, everything))
    getters = {"UID": _UID_OF, "RFC822.SIZE": _SIZE_OF, "INTERNALDATE": date, "FLAGS": sel.flag_list}
    # UID FETCH n (BODY.PEEK[]), the usual download: one function, no list of getters
    row = _seq_and_uid if before == _JUST_UID else _row([getters[n] for n in before])
    after_values = [getters[n] for n in after]
    missing = 0
    batch: list[bytes] = []
    size = 0
    for seq, uid in numbered:
        ref = message(uid)
        if ref is None:
            missing += 1
            continue
        line = head % row(seq, ref)
        data = whole_text(folder, uid)
        if data is None:
            missing += 1
            continue
        literal = literal_prefix(data)
        end = tail % tuple(get(ref) for get in after_values) if after else tail
        if len(data) >= BATCH:   # a large message goes out as it is: no copy into a batch
            batch += (line, literal)
            yield b"".join(batch)
            yield data
            batch, size = [end], len(end)
        else:
            batch += (line, literal, data, end)
            size += len(line) + len(literal) + len(data) + len(end)
        s.fetched += 1
        s.backend.stats.add("imap_fetched")
        if size >= BATCH:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)
    if missing and not c.uid:
        raise No("some of the requested messages no longer exist", "EXPUNGEISSUED")
    return Done(f"{'UID ' if c.uid else ''}FETCH completed")


def whole_text(folder, uid: int) -> bytes | None:
    """The message's text as its literal holds it (CRLF line ends, NUL made 0x80, as
    fetch._literal does: NUL is not allowed); None if it is gone."""
    try:
        data = folder.read(uid)
    except (NoSuchMessage, FileNotFoundError):
        return None
    if b"\0" in data:
        data = data.replace(b"\0", b"\x80")
    return data


def literal_prefix(data: bytes) -> bytes:
    """What goes before ``data`` sent as a literal ({n} and CRLF; an empty one is "")."""
    return b"{%d}\r\n" % len(data) if data else b'""'


def _dates() -> Callable:
    """ref -> its INTERNALDATE text, each date worked out once."""
    dates: dict[float, bytes] = {}

    def date(ref) -> bytes:
        text = dates.get(ref.internaldate)
        if text is None:
            text = dates[ref.internaldate] = internaldate(ref.internaldate).encode()
        return text
    return date


_JUST_UID = ["UID"]


def _seq_and_uid(seq: int, ref) -> tuple[int, int]:
    return seq, ref.uid


def _meta_rows(c: "Command", sel: "Selected", numbered, names: list[str],
               date: Callable, everything: bool = False) -> Iterator[bytes]:
    """The responses for items the view knows (no message text), ROWS at a time: each
    column is made by map() over the chunk's messages and the lines by one format per
    row, so the loops run in C (FETCH 1:* of 10,000 messages: ~0.4 us a row, was ~1.1)."""
    done = Done(f"{'UID ' if c.uid else ''}FETCH completed")
    origin = sel.folder.origin
    shared = (everything and origin is not None and not sel.gone and not sel.holds_recent()
              and len(sel.uids) == len(origin.messages))
    if shared:
        key = (tuple(names), c.uid)
        uids = sel.uids.tobytes()
        chunks = RENDERS.get(origin, key, uids)
        if chunks is not None:
            yield from chunks
            return done
        made: list[bytes] | None = []
    else:
        made = None
    lookup = sel.folder.message_getter()
    head = b"* %d FETCH (" + b" ".join(_FORMATS[n] for n in names) + b")\r\n"
    if sel.holds_recent():
        def flags(refs: list) -> Iterator[bytes]:
            # A chunk is in UID order: all \Recent (the first look at new mail) or none
            # needs no look per message either.
            texts = sel.recent_texts(refs[0].uid, refs[-1].uid) if refs else None
            if texts is None:
                return map(sel.flag_list, refs)
            return map(texts.__getitem__, map(_FLAGS_OF, refs))
    else:   # the flags alone decide the text: one dict lookup in C a row
        texts = sel.flag_texts
        flags = lambda refs: map(texts.__getitem__, map(_FLAGS_OF, refs))  # noqa: E731
    columns = {"UID": partial(map, _UID_OF), "RFC822.SIZE": partial(map, _SIZE_OF),
               "INTERNALDATE": partial(map, date), "FLAGS": flags}
    makers = [columns[n] for n in names]
    missing = 0
    pairs_left = iter(numbered)
    while pairs := list(islice(pairs_left, ROWS)):
        refs = list(map(lookup, map(_UID_OF_PAIR, pairs)))
        if None in refs:   # gone since the view was made: left out
            kept = [(pair, ref) for pair, ref in zip(pairs, refs) if ref is not None]
            missing += len(pairs) - len(kept)
            pairs, refs = [pair for pair, _ in kept], [ref for _, ref in kept]
        rows = zip(map(_SEQ_OF_PAIR, pairs), *[make(refs) for make in makers])
        chunk = b"".join(map(head.__mod__, rows))
        if made is not None:
            made.append(chunk)
        yield chunk
    if missing and not c.uid:
        raise No("some of the requested messages no longer exist", "EXPUNGEISSUED")
    if made is not None and not missing:
        RENDERS.put(origin, key, uids, made)
    return done


class _Renders:
    """Rendered rows by (snapshot, item names): at most MAX_BYTES of them, the least
    recently used dropped first.  An entry keeps its snapshot alive, so the snapshot's
    id stays its own while the entry lives, and holds the UIDs the rows were made for."""

    MAX_BYTES = 8 << 20
    MAX_ENTRIES = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._map: OrderedDict[tuple, tuple] = OrderedDict()
        self._bytes = 0

    def get(self, snapshot, key: tuple, uids: bytes) -> list[bytes] | None:
        with self._lock:
            entry = self._map.get((id(snapshot), key))
            if entry is None or entry[0] is not snapshot or entry[1] != uids:
                return None
            self._map.move_to_end((id(snapshot), key))
            return entry[2]

    def put(self, snapshot, key: tuple, uids: bytes, chunks: list[bytes]) -> None:
        size = sum(map(len, chunks)) + len(uids)
        if size > self.MAX_BYTES // 4:
            return
        with self._lock:
            old = self._map.pop((id(snapshot), key), None)
            if old is not None:
                self._bytes -= old[3]
            self._map[(id(snapshot), key)] = (snapshot, uids, chunks, size)
            self._bytes += size
            while self._bytes > self.MAX_BYTES or len(self._map) > self.MAX_ENTRIES:
                _, dropped = self._map.popitem(last=False)
                self._bytes -= dropped[3]

    def clear(self) -> None:
        with self._lock:
            self._map.clear()
            self._bytes = 0


RENDERS = _Renders()


ROWS = 1024   # rows a chunk: about 50 KB of responses
_UID_OF, _SIZE_OF, _FLAGS_OF = attrgetter("uid"), attrgetter("size"), attrgetter("flags")
_SEQ_OF_PAIR, _UID_OF_PAIR = itemgetter(0), itemgetter(1)


def _row(getters: list[Callable]) -> Callable:
    """(seq, ref) -> the values for the response's format: one call, no loop, for the
    usual one to three items."""
    if len(getters) == 1:
        (a,) = getters
        return lambda seq, ref: (seq, a(ref))
    if len(getters) == 2:
        a, b = getters
        return lambda seq, ref: (seq, a(ref), b(ref))
    if len(getters) == 3:
        a, b, c = getters
        return lambda seq, ref: (seq, a(ref), b(ref), c(ref))
    return lambda seq, ref: (seq, *[get(ref) for get in getters])
