"""Commands about the session itself: CAPABILITY, NOOP, LOGOUT (RFC 3501 §6.1), ID (RFC 2971),
ENABLE (RFC 5161), NAMESPACE (RFC 2342) and IDLE (RFC 2177).

NOOP needs no code of its own: every command ends with the untagged updates of the
selected folder (session._complete), so "NOOP" is just a command that does nothing
else.  ENABLE is answered truthfully: none of the extensions it can turn on
(CONDSTORE, QRESYNC, UTF8=ACCEPT) is offered, so ``* ENABLED`` lists none.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import __version__
from .commands import ANY, AUTH, SELECTED, Bad, Done, arity, atom, command, nil_or_list
from .tokens import String, is_atom, quote

if TYPE_CHECKING:
    from .parser import Command
    from .session import ImapSession

MAX_ID_FIELDS = 30   # RFC 2971 §3.3


@command("CAPABILITY", *ANY)
def capability(s: "ImapSession", c: "Command") -> Done:
    arity(c, 0, 0, "CAPABILITY")
    s.untagged(b"CAPABILITY " + s.capabilities().encode())
    return Done("CAPABILITY completed")


@command("NOOP", *ANY)
def noop(s: "ImapSession", c: "Command") -> Done:
    arity(c, 0, 0, "NOOP")
    return Done("NOOP completed")


@command("LOGOUT", *ANY)
def logout(s: "ImapSession", c: "Command") -> Done:
    arity(c, 0, 0, "LOGOUT")
    s.untagged(b"BYE ISMail logging out")
    s.closing = s.quit = True
    s.selected = None   # no untagged updates after the BYE
    return Done("LOGOUT completed")


@command("ID", *ANY)
def id_(s: "ImapSession", c: "Command") -> Done:
    (arg,) = arity(c, 1, 1, "ID NIL or ID (field value ...)")
    if not nil_or_list(arg):
        if len(arg) % 2 or len(arg) > 2 * MAX_ID_FIELDS:
            raise Bad("ID takes field-value pairs, at most 30")
        for i, token in enumerate(arg):
            if not isinstance(token, String) and not (i % 2 and is_atom(token, "NIL")):
                raise Bad("ID fields are strings, values strings or NIL")
    s.untagged(b"ID (" + quote("name") + b" " + quote("ISMail") + b" " + quote("version") + b" "
               + quote(__version__) + b")")
    return Done("ID completed")


@command("ENABLE", AUTH)
def enable(s: "ImapSession", c: "Command") -> Done:
    names = arity(c, 1, 100, "ENABLE capability ...")
    for token in names:
        atom(token, "capability")
    s.untagged(b"ENABLED")
    return Done("ENABLE completed")


@command("NAMESPACE", AUTH, SELECTED)
def namespace(s: "ImapSession", c: "Command") -> Done:
    arity(c, 0, 0, "NAMESPACE")
    s.untagged(b'NAMESPACE (("" "/")) NIL NIL')
    return Done("NAMESPACE completed")


@command("IDLE", AUTH, SELECTED)
def idle(s: "ImapSession", c: "Command") -> None:
    arity(c, 0, 0, "IDLE")
    s.start_idle(c)   # "+ idling"; DONE ends it (session._idle_line)
