"""Commands on folders by name: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE,
UNSUBSCRIBE, STATUS (RFC 3501 §6.3) and APPEND (§6.3.11, APPENDUID of RFC 4315).

Names arrive in modified UTF-7 and go to the store as Unicode (commands.mailbox);
the store owns what a valid name is, what CREATE makes on the way (parents) and
what DELETE refuses (INBOX, a folder with sub-folders).  Its errors map to the
response codes of RFC 5530: NONEXISTENT, ALREADYEXISTS, CANNOT, and TRYCREATE where
RFC 3501 asks for it (APPEND and COPY into a folder that does not exist).

Decisions: a SELECT always leaves the previous folder first, so a failed one leaves
none selected (§6.3.1).  DELETE of the selected folder, or RENAME of it (or of a
folder above it), deselects it: its view would point at nothing.  RENAME of INBOX
keeps INBOX selected; its messages leave it, which the next response reports as
EXPUNGEs.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterator

from ..store.folders import (SEP, FolderError, FolderExists, Folder, KeywordLimit, NoSuchFolder)
from ..store.folders_names import normalize
from .commands import (AUTH, SELECTED, Bad, Done, No, arity, command, flag_list,
                       mailbox, wire_name)
from .tokens import as_list, quote
from .selected import Selected

if TYPE_CHECKING:
    from .parser import Command
    from .session import ImapSession

log = logging.getLogger("ismail.imap")

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")
MONTHS = {m: i for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}
_DATE_TIME = re.compile(r" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")


def _same(a: str, b: str) -> bool:
    try:
        return normalize(a) == normalize(b)
    except ValueError:
        return False


def _inside(name: str, top: str) -> bool:
    """Whether folder ``name`` is ``top`` or below it."""
    try:
        name, top = normalize(name), normalize(top)
    except ValueError:
        return False
    return name == top or name.startswith(top + SEP)


def open_folder(s: "ImapSession", name: str, missing_code: str = "NONEXISTENT") -> Folder:
    """The selected folder's own view if it is the one, else a new view; NO if missing."""
    if s.selected is not None and _same(s.selected.name, name):
        return s.selected.folder
    try:
        with folder_may_vanish(s, (name, missing_code)):
            return s.store.open(name)
    except NoSuchFolder:
        raise No(f"there is no folder {name}", missing_code) from None
    except ValueError as e:
        raise No(str(e), "CANNOT") from None


@contextmanager
def folder_may_vanish(s: "ImapSession", *folders: tuple[str, str]) -> Iterator[None]:
    """A command at work in the ``folders`` ((name, response code) pairs): another session
    or program may delete one meanwhile.  Then the command answers NO with that folder's
    code, as if it had come after the deletion, rather than an internal error; what it
    had written there went with the folder."""
    try:
        yield
    except FileNotFoundError:
        for name, code in folders:
            try:
                gone = not s.store.exists(name)
            except (ValueError, OSError):
                gone = False
            if gone:
                log.info("%s: %s: folder %s was deleted while a command worked in it",
                         s.client_ip, s.authenticated, name)
                raise No(f"there is no folder {name} (it was deleted meanwhile)", code) from None
        raise


# --- SELECT and EXAMINE --------------------------------------------------------------------

@command("SELECT", AUTH, SELECTED)
def select(s: "ImapSession", c: "Command") -> Done:
    return _select(s, c, readonly=False)


@command("EXAMINE", AUTH, SELECTED)
def examine(s: "ImapSession", c: "Command") -> Done:
    return _select(s, c, readonly=True)


def _select(s: "ImapSession", c: "Command", readonly: bool) -> Done:
    (arg,) = arity(c, 1, 1, f"{c.name} mailbox")
    name = mailbox(arg)
    s.select(None)
    try:
        with folder_may_vanish(s, (name, "NONEXISTENT")):
            folder = s.store.open(name)
            sel = Selected(folder, readonly)
    except NoSuchFolder:
        raise No(f"there is no folder {name}", "NONEXISTENT") from None
    except ValueError as e:
        raise No(str(e), "CANNOT") from None
    s.respond(sel.flag_lines())
    s.untagged(b"%d EXISTS" % len(sel.uids))
    s.untagged(b"%d RECENT" % sel.recent_count())
    unseen = sel.first_unseen()
    if unseen is not None:
        s.untagged(b"OK [UNSEEN %d] First unseen" % unseen)
    s.untagged(b"OK [UIDVALIDITY %d] UIDs valid" % folder.uidvalidity)
    s.untagged(b"OK [UIDNEXT %d] Predicted next UID" % folder.uidnext)
    s.select(sel)
    return Done(f"{c.name} completed", "READ-ONLY" if readonly else "READ-WRITE")


# --- CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE ----------------------------------------

def _store_errors(action) -> None:
    try:
        action()
    except NoSuchFolder as e:
        raise No(str(e), "NONEXISTENT") from None
    except FolderExists as e:
        raise No(str(e), "ALREADYEXISTS") from None
    except FolderError as e:
        raise No(str(e), "CANNOT") from None
    except ValueError as e:   # a name the store refuses
        raise No(str(e), "CANNOT") from None


@command("CREATE", AUTH, SELECTED)
def create(s: "ImapSession", c: "Command") -> Done:
    (arg,) = arity(c, 1, 1, "CREATE mailbox")
    name = mailbox(arg)
    name = name[:-1] if name.endswith(SEP) else name   # "a/" declares a parent (§6.3.3)
    _store_errors(lambda: s.store.create(name))
    return Done("CREATE completed")


@command("DELETE", AUTH, SELECTED)
def delete(s: "ImapSession", c: "Command") -> Done:
    (arg,) = arity(c, 1, 1, "DELETE mailbox")
    name = mailbox(arg)
    _store_errors(lambda: s.store.delete(name))
    if s.selected is not None and _same(s.selected.name, name):
        s.select(None)
    return Done("DELETE completed")


@command("RENAME", AUTH, SELECTED)
def rename(s: "ImapSession", c: "Command") -> Done:
    old, new = arity(c, 2, 2, "RENAME old new")
    old, new = mailbox(old), mailbox(new)
    _store_errors(lambda: s.store.rename(old, new))
    if s.selected is not None and old != "INBOX" and _inside(s.selected.name, old):
        s.select(None)
    return Done("RENAME completed")


@command("SUBSCRIBE", AUTH, SELECTED)
def subscribe(s: "ImapSession", c: "Command") -> Done:
    (arg,) = arity(c, 1, 1, "SUBSCRIBE mailbox")
    name = mailbox(arg)
    _store_errors(lambda: s.store.subscribe(name))
    return Done("SUBSCRIBE completed")


@command("UNSUBSCRIBE", AUTH, SELECTED)
def unsubscribe(s: "ImapSession", c: "Command") -> Done:
    (arg,) = arity(c, 1, 1, "UNSUBSCRIBE mailbox")
    name = mailbox(arg)
    _store_errors(lambda: s.store.unsubscribe(name))
    return Done("UNSUBSCRIBE completed")


# --- STATUS --------------------------------------------------------------------------------

@command("STATUS", AUTH, SELECTED)
def status(s: "ImapSession", c: "Command") -> Done:
    arg, items = arity(c, 2, 2, "STATUS mailbox (items)")
    name = mailbox(arg)
    wanted = [str(t).upper() if isinstance(t, str) else "" for t in as_list(items)]
    if not wanted:
        raise Bad("STATUS needs at least one item")
    for item in wanted:
        if item not in STATUS_ITEMS:
            raise Bad(f"unknown STATUS item {item[:40] or 'that is not an atom'}")
    try:
        with folder_may_vanish(s, (name, "NONEXISTENT")):
            st = s.store.status(name)
    except NoSuchFolder:
        raise No(f"there is no folder {name}", "NONEXISTENT") from None
    except ValueError as e:
        raise No(str(e), "CANNOT") from None
    values = {"MESSAGES": st.messages, "RECENT": st.recent, "UIDNEXT": st.uidnext,
              "UIDVALIDITY": st.uidvalidity, "UNSEEN": st.unseen}
    pairs = " ".join(f"{item} {values[item]}" for item in dict.fromkeys(wanted))
    s.untagged(b"STATUS " + quote(wire_name(normalize(name))) + b" (" + pairs.encode() + b")")
    return Done("STATUS completed")


# --- APPEND --------------------------------------------------------------------------------

@command("APPEND", AUTH, SELECTED)
def append(s: "ImapSession", c: "Command") -> Done:
    args = arity(c, 2, 4, "APPEND mailbox [(flags)] [date-time] message")
    name, message = mailbox(args[0]), args[-1]
    flags: list[str] = []
    date: float | None = None
    for i, token in enumerate(args[1:-1]):
        if isinstance(token, list) and i == 0:
            flags = flag_list(token)
        elif isinstance(token, bytes) and not token.literal and date is None:
            date = parse_date_time(token.decode("ascii", "replace"))
        else:
            raise Bad("APPEND mailbox [(flags)] [date-time] message")
    if not isinstance(message, bytes) or not message.literal:
        raise Bad("the message must be a literal")
    if not message:
        raise No("an empty message cannot be stored")
    dest = open_folder(s, name, "TRYCREATE")
    try:
        with folder_may_vanish(s, (name, "TRYCREATE")):
            uid = dest.append(bytes(message), flags, date)
    except KeywordLimit as e:
        raise No(str(e), "LIMIT") from None
    except ValueError as e:   # an unknown system flag
        raise Bad(str(e)) from None
    s.appended += 1
    s.backend.stats.add("imap_appended")
    return Done("APPEND completed", f"APPENDUID {dest.uidvalidity} {uid}")


def parse_date_time(text: str) -> float:
    """``"17-Jul-1996 02:44:25 -0700"`` (RFC 3501 date-time) as seconds since the epoch."""
    m = _DATE_TIME.match(text)
    month = MONTHS.get(m.group(2).upper()) if m else None
    if m is None or month is None:
        raise Bad(f"bad date-time {text[:40]!r}, expected \"dd-Mon-yyyy hh:mm:ss +zzzz\"")
    day, year, hh, mm, ss = (int(m.group(i)) for i in (1, 3, 4, 5, 6))
    offset = timedelta(hours=int(m.group(8)), minutes=int(m.group(9)))
    try:
        zone = timezone(-offset if m.group(7) == "-" else offset)
        return datetime(year, month, day, hh, mm, ss, tzinfo=zone).timestamp()
    except (ValueError, OverflowError):
        raise Bad(f"no such date-time {text[:40]!r}") from None
