"""Commands on the selected folder as a whole: CHECK, CLOSE, UNSELECT (RFC 3691), EXPUNGE,
UID EXPUNGE (RFC 4315), COPY with COPYUID (RFC 4315) and MOVE (RFC 6851).

EXPUNGE responses carry the numbers the client knows (selected.expunge_responses),
and messages other sessions expunged meanwhile are reported in the same breath.
CLOSE expunges silently (§6.4.2).  COPY is all or nothing (§6.4.7): if a message it
names was expunged by another session the whole command fails with NO
[EXPUNGEISSUED] before anything is copied.  COPY and MOVE into a folder that does not
exist answer NO [TRYCREATE].  MOVE answers COPYUID in an untagged OK before its
EXPUNGEs, as RFC 6851 §4.3 asks, since the tagged OK comes after them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..store.folders import KeywordLimit
from .cmd_mailbox import folder_may_vanish, open_folder
from .commands import SELECTED, Done, No, arity, command, compress, mailbox, sequence_set

if TYPE_CHECKING:
    from .parser import Command
    from .session import ImapSession


@command("CHECK", SELECTED)
def check(s: "ImapSession", c: "Command") -> Done:
    arity(c, 0, 0, "CHECK")
    return Done("CHECK completed")   # every change is on disk before its response


@command("CLOSE", SELECTED)
def close(s: "ImapSession", c: "Command") -> Done:
    arity(c, 0, 0, "CLOSE")
    sel = s.selected
    s.select(None)
    if not sel.readonly:
        _count(s, sel.folder.expunge())
    return Done("CLOSE completed")


@command("UNSELECT", SELECTED)
def unselect(s: "ImapSession", c: "Command") -> Done:
    arity(c, 0, 0, "UNSELECT")
    s.select(None)
    return Done("UNSELECT completed")


@command("EXPUNGE", SELECTED, uid=True)
def expunge(s: "ImapSession", c: "Command") -> Done:
    sel = s.selected
    if c.uid:
        (arg,) = arity(c, 1, 1, "UID EXPUNGE uid-set")
        wanted = [uid for _, uid in sel.numbered(sequence_set(arg), True)]
    else:
        arity(c, 0, 0, "EXPUNGE")
        wanted = None
    if sel.readonly:
        raise No("the folder is read-only (EXAMINE)", "READ-ONLY")
    gone = sel.folder.expunge(wanted)
    _count(s, gone)
    s.respond(sel.expunge_responses(gone))
    return Done(f"{'UID ' if c.uid else ''}EXPUNGE completed")


def _count(s: "ImapSession", uids: list[int]) -> None:
    if uids:
        s.expunged += len(uids)
        s.backend.stats.add("imap_expunged", len(uids))


def _source(s: "ImapSession", c: "Command") -> tuple[list[int], str]:
    seqset, dest = arity(c, 2, 2, f"{c.name} sequence-set mailbox")
    sel = s.selected
    uids = [uid for _, uid in sel.numbered(sequence_set(seqset), c.uid)]
    name = mailbox(dest)
    present = [uid for uid in uids if sel.folder.message(uid) is not None]
    if len(present) < len(uids) and not c.uid:
        raise No("some of the messages no longer exist", "EXPUNGEISSUED")
    return present, name


@command("COPY", SELECTED, uid=True)
def copy(s: "ImapSession", c: "Command") -> Done:
    uids, name = _source(s, c)
    dest = open_folder(s, name, "TRYCREATE")
    label = f"{'UID ' if c.uid else ''}COPY completed"
    if not uids:
        return Done(label)
    try:
        with folder_may_vanish(s, (name, "TRYCREATE"), (s.selected.name, "NONEXISTENT")):
            pairs = s.selected.folder.copy(uids, dest)
    except KeywordLimit as e:
        raise No(str(e), "LIMIT") from None
    if not pairs:
        raise No("the messages were expunged meanwhile", "EXPUNGEISSUED")
    return Done(label, _copyuid(dest.uidvalidity, pairs))


@command("MOVE", SELECTED, uid=True)
def move(s: "ImapSession", c: "Command") -> Done:
    uids, name = _source(s, c)
    sel = s.selected
    if sel.readonly:
        raise No("the folder is read-only (EXAMINE)", "READ-ONLY")
    dest = open_folder(s, name, "TRYCREATE")
    label = f"{'UID ' if c.uid else ''}MOVE completed"
    if not uids:
        return Done(label)
    try:
        with folder_may_vanish(s, (name, "TRYCREATE"), (sel.name, "NONEXISTENT")):
            pairs = sel.folder.move(uids, dest)
    except KeywordLimit as e:
        raise No(str(e), "LIMIT") from None
    if pairs:
        s.untagged(f"OK [{_copyuid(dest.uidvalidity, pairs)}] Moved".encode())
    s.respond(sel.expunge_responses([src for src, _ in pairs]))
    if not pairs:
        raise No("the messages were expunged meanwhile", "EXPUNGEISSUED")
    return Done(label)


def _copyuid(uidvalidity: int, pairs: list[tuple[int, int]]) -> str:
    return f"COPYUID {uidvalidity} {compress(p[0] for p in pairs)} {compress(p[1] for p in pairs)}"

