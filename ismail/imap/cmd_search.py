"""SEARCH and UID SEARCH (RFC 3501 §6.4.4): the criteria of search.py over the selected folder.

Flags, sizes and dates come from the folder view; a header key reads the message's
first 64 KiB (its header), BODY and TEXT the whole message.  Header fields a search
decoded are kept in search_cache.HEADERS, so the next search for the same field in
the same folder reads no file; a search that is one HEADER key and finds every value
there makes no per-message context at all.

A message another session expunged but this client has not yet been told about (a
ghost, see selected.py) is never found.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from ..store.folders import NoSuchMessage
from .commands import SELECTED, Done, No, command
from .search import CHARSETS, BadCharset, Header, MessageContext, parse_search
from .search_cache import HEADERS

if TYPE_CHECKING:
    from ..store.folders import Folder, MessageRef
    from .selected import Selected
    from .parser import Command
    from .session import ImapSession

HEADER_BYTES = 65536   # what SEARCH reads of a message for a header key


@command("SEARCH", SELECTED, uid=True)
def search(s: "ImapSession", c: "Command") -> Done:
    try:
        criteria = parse_search(c.args)
    except BadCharset as e:
        raise No(str(e), f"BADCHARSET ({' '.join(CHARSETS)})") from None
    sel = s.selected
    folder = sel.folder
    fields = criteria.header_fields
    cached = HEADERS.tables(folder.path, fields) if fields else {}
    learned: dict[str, dict[str, tuple[str, ...]]] = {f: {} for f in fields}
    only_header = cached[criteria.root.name] if isinstance(criteria.root, Header) else None
    found: list[int] = []
    for seq, uid, ref in _messages(sel):
        if only_header is not None and (values := only_header.get(ref.key)) is not None:
            if criteria.root.matches(_Values(values)):   # cached: no context, no file
                found.append(uid if c.uid else seq)
            continue
        known = {f: v for f in fields if (v := cached[f].get(ref.key)) is not None}
        had = len(known)   # the context adds what it decodes to ``known``
        ctx = MessageContext(seq, uid, ref.flags, sel.is_recent(uid), ref.internaldate, ref.size,
                             _loader(folder, uid), len(sel.uids), sel.uids[-1],
                             _header_loader(folder, uid), known)
        try:
            if criteria.matches(ctx):
                found.append(uid if c.uid else seq)
        except (NoSuchMessage, FileNotFoundError):
            continue   # expunged while we looked: the next response reports it
        if had < len(fields):
            for f, values in ctx.decoded.items():
                if f in learned and ref.key not in cached[f]:
                    learned[f][ref.key] = tuple(values)
    if any(learned.values()):
        HEADERS.add(folder.path, learned, {m.key for m in folder.messages})
    s.untagged(b" ".join([b"SEARCH", *(b"%d" % n for n in found)]))
    return Done(f"{'UID ' if c.uid else ''}SEARCH completed")


def _messages(sel: "Selected") -> Iterator[tuple[int, int, "MessageRef"]]:
    """(sequence number, UID, message) of each message the client knows and the folder has."""
    message = sel.folder.message
    for seq, uid in enumerate(sel.uids, 1):
        ref = message(uid)
        if ref is not None:
            yield seq, uid, ref


class _Values:
    """The context a single HEADER key needs when the cache has the field's values."""
    __slots__ = ("values",)

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values

    def header(self, name: str) -> tuple[str, ...]:
        return self.values


def _loader(folder: "Folder", uid: int):
    return lambda: folder.read(uid)


def _header_loader(folder: "Folder", uid: int):
    return lambda: folder.read_head(uid, HEADER_BYTES)

