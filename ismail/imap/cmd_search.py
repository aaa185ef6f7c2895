"""SEARCH and UID SEARCH (RFC 3501 §6.4.4): the criteria of search.py over the selected folder.

Flags, sizes and dates come from the folder view; a header key reads the message's
first 64 KiB (its header), BODY and TEXT the whole message.  Header fields a search
decoded are kept in search_cache.HEADERS, so the next search for the same field in
the same folder reads no file; a search that is one HEADER key (SUBJECT, FROM, ...)
makes no per-message context at all.

A message another session expunged but this client has not yet been told about (a
ghost, see selected.py) is never found.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from ..store.folders import NoSuchMessage
from .commands import SELECTED, Done, No, command
from .search import (CHARSETS, BadCharset, Header, MessageContext, decoded_field, parse_search,
                     split_header)
from .search_cache import HEADERS

if TYPE_CHECKING:
    from ..store.folders import Folder, MessageRef
    from .selected import Selected
    from .parser import Command
    from .search import Criteria
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
    root = criteria.root
    if isinstance(root, Header):
        found = _one_field(sel, root, cached[root.name], learned[root.name], c.uid)
    else:
        found = _any_criteria(sel, criteria, cached, learned, c.uid)
    if any(learned.values()):
        HEADERS.add(folder.path, learned, {m.key for m in folder.messages})
    s.untagged(b" ".join([b"SEARCH", *(b"%d" % n for n in found)]))
    return Done(f"{'UID ' if c.uid else ''}SEARCH completed")


def _one_field(sel: "Selected", key: Header, cached: dict[str, tuple[str, ...]],
               learned: dict[str, tuple[str, ...]], by_uid: bool) -> list[int]:
    """The messages one HEADER key (or SUBJECT, FROM, ...) finds: the field's values from
    the cache, else from the message's header, decoded and added to ``learned``; no
    per-message context."""
    read_head, name, matches = sel.folder.read_head, key.name, key.matches_values
    found: list[int] = []
    for seq, uid, ref in _messages(sel):
        values = cached.get(ref.key)
        if values is None:
            try:
                head = split_header(read_head(uid, HEADER_BYTES))
            except (NoSuchMessage, FileNotFoundError):
                continue   # expunged while we looked: the next response reports it
            values = learned[ref.key] = tuple(decoded_field(head, name))
        if matches(values):
            found.append(uid if by_uid else seq)
    return found


def _any_criteria(sel: "Selected", criteria: "Criteria", cached: dict[str, dict[str, tuple[str, ...]]],
                  learned: dict[str, dict[str, tuple[str, ...]]], by_uid: bool) -> list[int]:
    """The messages ``criteria`` finds, each through a MessageContext that starts with the
    cached header fields and reads the file only for what else it needs."""
    folder = sel.folder
    fields = criteria.header_fields
    found: list[int] = []
    for seq, uid, ref in _messages(sel):
        known = {f: v for f in fields if (v := cached[f].get(ref.key)) is not None}
        had = len(known)   # the context adds what it decodes to ``known``
        ctx = MessageContext(seq, uid, ref.flags, sel.is_recent(uid), ref.internaldate, ref.size,
                             _loader(folder, uid), len(sel.uids), sel.uids[-1],
                             _header_loader(folder, uid), known)
        try:
            if criteria.matches(ctx):
                found.append(uid if by_uid else seq)
        except (NoSuchMessage, FileNotFoundError):
            continue   # expunged while we looked: the next response reports it
        if had < len(fields):
            for f, values in ctx.decoded.items():
                if f in learned and ref.key not in cached[f]:
                    learned[f][ref.key] = tuple(values)
    return found


def _messages(sel: "Selected") -> Iterator[tuple[int, int, "MessageRef"]]:
    """(sequence number, UID, message) of each message the client knows and the folder has."""
    message = sel.folder.message
    for seq, uid in enumerate(sel.uids, 1):
        ref = message(uid)
        if ref is not None:
            yield seq, uid, ref


def _loader(folder: "Folder", uid: int):
    return lambda: folder.read(uid)


def _header_loader(folder: "Folder", uid: int):
    return lambda: folder.read_head(uid, HEADER_BYTES)

