"""Reading and marking messages: FETCH, STORE and their UID forms (RFC 3501 §6.4).

FETCH and STORE answer with generators: one ``* n FETCH`` response is made only
when the connection is ready to send it, so ``FETCH 1:* (UID FLAGS)`` of 100,000
messages holds one message's response at a time, and reads a message file only
for an item that needs its text (fetch.render).  The arguments are all checked
before the first response is made, so a malformed command gets a plain BAD.

\\Seen: a FETCH of body text (BODY[...] without .PEEK, RFC822, RFC822.TEXT,
BINARY[...]) in a folder opened with SELECT sets \\Seen on every message it names
first, in one store operation, and adds FLAGS to the responses of the messages
whose flags that changed (§6.4.5).

A message another session expunged but this client has not yet been told about (a
ghost, see selected.py): FETCH sends the others and answers NO [EXPUNGEISSUED]
(RFC 2180 §4.1.2); UID FETCH and STORE leave it out.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterator

from ..store.folders import KeywordLimit, NoSuchMessage
from .commands import COMMANDS, SELECTED, Bad, Done, No, command, flag_list, sequence_set
from .fetch import FetchItem, UnknownEncoding, parse_items, render, sets_seen
from .fetch_fast import Plan, fetch_fast, plan
from .tokens import Atom

if TYPE_CHECKING:
    from ..store.folders import Folder, MessageRef
    from .parser import Command
    from .selected import Selected
    from .session import ImapSession

log = logging.getLogger("ismail.imap")

STORE_MODES = {"FLAGS": "set", "+FLAGS": "add", "-FLAGS": "remove"}
_HEADER_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "MIME")
SEEN = "\\Seen"


class _Message:
    """One message as fetch.render reads it."""
    __slots__ = ("uid", "flags", "internaldate", "size", "_folder")

    def __init__(self, ref: "MessageRef", flags: list[str], folder: "Folder") -> None:
        self.uid, self.flags = ref.uid, flags
        self.internaldate, self.size = ref.internaldate, ref.size
        self._folder = folder

    def data(self) -> bytes:
        return self._folder.read(self.uid)


def sends_body(items: list[FetchItem]) -> bool:
    """Whether the response carries message text (the "imap_fetched" counter)."""
    return any(i.name in ("RFC822", "RFC822.TEXT") or
               (i.section is not None and i.name != "BINARY.SIZE" and i.text not in _HEADER_TEXTS)
               for i in items)


# --- FETCH ---------------------------------------------------------------------------------

@command("FETCH", SELECTED, uid=True)
def fetch(s: "ImapSession", c: "Command") -> Iterator[bytes]:
    if len(c.args) < 2:
        raise Bad("FETCH sequence-set items")
    seqset = sequence_set(c.args[0])
    items, marks_seen, shape = _items(c)
    sel = s.selected
    numbered = sel.numbered(seqset, c.uid)   # a bad message number is a BAD before anything is sent
    seen_now: set[int] = set()
    if marks_seen and not sel.readonly:
        message = sel.folder.message
        unseen = [uid for _, uid in numbered
                  if (ref := message(uid)) is not None and SEEN not in ref.flags]
        if unseen:
            seen_now = {ref.uid for ref in sel.folder.store_flags(unseen, [SEEN], "add")}
        numbered = sel.numbered(seqset, c.uid)
    everything = seqset.ranges == ((1, None),)
    if shape is not None and not seen_now:
        return fetch_fast(s, c, sel, numbered, shape, everything)
    return _fetch_stream(s, c, sel, numbered, items, seen_now)


def _items(c: "Command") -> tuple[list[FetchItem], bool, Plan | None]:
    """The items (UID added for UID FETCH), whether they set \\Seen, and the fast path's
    plan (fetch_fast.plan).  Worked out once per item list: the reader hands a pipelining
    client's repeated list over as the same token object each time (parser._SHAPES), and
    tokens are never changed, so a hit on that very object is a hit on the same text."""
    token = c.args[1] if len(c.args) == 2 else None
    known = _PLANS.get((id(token), c.uid)) if token is not None else None
    if known is not None and known[0] is token:   # the entry keeps it alive: its id is its own
        return list(known[1]), known[2], known[3]
    items = parse_items(c.args[1:])
    if c.uid and not any(i.name == "UID" for i in items):
        items.insert(0, FetchItem("UID"))
    marks_seen, shape = sets_seen(items), plan(items)
    if token is not None and _small(token):
        if len(_PLANS) >= PLANS_KEPT:
            _PLANS.clear()
        _PLANS[(id(token), c.uid)] = (token, tuple(items), marks_seen, shape)
    return items, marks_seen, shape


def download_plan(c: "Command") -> Plan | None:
    """The fast path's plan when ``c`` is the usual download, ``UID FETCH n (BODY.PEEK[])``:
    UID, then one whole message text that sets no \\Seen, nothing else; None for anything
    else.  The session answers that command, pipelined again and again, straight from
    its stream (ImapSession._downloads), so only while FETCH is this module's handler,
    wrapped by nothing."""
    if c.name != "FETCH" or not c.uid or len(c.args) < 2 or COMMANDS["FETCH"].run is not fetch:
        return None
    try:
        _, marks_seen, shape = _items(c)
    except (Bad, ValueError):
        return None
    if marks_seen or shape is None or shape.label is None or shape.before != ["UID"] or shape.after:
        return None
    return shape


def _small(token) -> bool:
    """An item list worth keeping (the entries are shared by every session: no large
    list is held on to)."""
    if isinstance(token, list):
        return len(token) <= 8 and all(isinstance(t, str) and len(t) <= 100 for t in token)
    return isinstance(token, str) and len(token) <= 100


_PLANS: dict[tuple[int, bool], tuple] = {}
PLANS_KEPT = 256


def _fetch_stream(s: "ImapSession", c: "Command", sel: "Selected", numbered, items: list[FetchItem],
                  seen_now: set[int]) -> Iterator[bytes]:
    """The general way: every item through fetch.render."""
    folder = sel.folder
    with_flags = items + [FetchItem("FLAGS")] if not any(i.name == "FLAGS" for i in items) else items
    body = sends_body(items)
    missing = 0
    for seq, uid in numbered:
        ref = folder.message(uid)
        if ref is None:
            missing += 1
            continue
        try:
            pieces = render(with_flags if uid in seen_now else items,
                            _Message(ref, sel.flags(ref), folder))
        except UnknownEncoding as e:
            raise No(str(e), "UNKNOWN-CTE") from None
        except (NoSuchMessage, FileNotFoundError):
            missing += 1
            continue
        if len(pieces) == 1:   # no large literal: one response, one piece
            yield b"* %d FETCH %s\r\n" % (seq, pieces[0])
        else:
            yield b"* %d FETCH " % seq
            for piece in pieces:
                if isinstance(piece, (bytes, bytearray)):
                    yield piece
                else:
                    yield from piece
            yield b"\r\n"
        if body:
            s.fetched += 1
            s.backend.stats.add("imap_fetched")
    if missing and not c.uid:
        raise No("some of the requested messages no longer exist", "EXPUNGEISSUED")
    return Done(f"{'UID ' if c.uid else ''}FETCH completed")


# --- STORE ---------------------------------------------------------------------------------

@command("STORE", SELECTED, uid=True)
def store(s: "ImapSession", c: "Command") -> Iterator[bytes] | Done:
    if len(c.args) < 3:
        raise Bad("STORE sequence-set (+|-)FLAGS[.SILENT] (flags)")
    seqset = sequence_set(c.args[0])
    item = str(c.args[1]).upper() if isinstance(c.args[1], Atom) else ""
    silent = item.endswith(".SILENT")
    mode = STORE_MODES.get(item[:-7] if silent else item)
    if mode is None:
        raise Bad("STORE takes FLAGS, +FLAGS or -FLAGS (optionally .SILENT)")
    rest = c.args[2:]
    flags = flag_list(rest[0] if len(rest) == 1 and isinstance(rest[0], list) else rest)
    sel = s.selected
    uids = [uid for _, uid in sel.numbered(seqset, c.uid)]
    if sel.readonly:
        raise No("the folder is read-only (EXAMINE)", "READ-ONLY")
    try:
        refs = sel.folder.store_flags(uids, flags, mode)
    except KeywordLimit as e:
        raise No(str(e), "LIMIT") from None
    except ValueError as e:
        raise Bad(str(e)) from None
    done = Done(f"{'UID ' if c.uid else ''}STORE completed")
    if silent:
        return done
    return _store_stream(sel, refs, done)


def _store_stream(sel: "Selected", refs: list["MessageRef"], done: Done) -> Iterator[bytes]:
    yield from sel.new_keyword_lines()   # a keyword this STORE made: FLAGS first (§7.2.6)
    for ref in refs:
        seq = sel.seq(ref.uid)
        if seq is not None:
            yield b"* %d FETCH (UID %d %s)\r\n" % (seq, ref.uid, sel.flags_bytes(ref))
    return done
