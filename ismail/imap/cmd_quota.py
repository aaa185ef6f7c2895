"""Quotas (RFC 9208): GETQUOTAROOT, GETQUOTA, SETQUOTA, and NO [OVERQUOTA] for APPEND and COPY.

Model
-----
An account has at most one quota, on all its folders together: one quota root, named
"" (as Dovecot names its user quota), with one resource, STORAGE, counted in units of
1024 octets (usage rounded up, the limit is whole MiB).  The server keeps the numbers;
a session asks its backend, which may offer two methods (``QuotaBackend``).  A backend
without ``quota`` (the tests' fakes, or a server without quotas) gets no QUOTA
capability, and these commands answer BAD as unknown ones would.

* ``GETQUOTAROOT mailbox`` answers ``* QUOTAROOT mailbox ""`` and ``* QUOTA "" (STORAGE
  used limit)`` when the account has a quota, ``* QUOTAROOT mailbox`` alone when not;
  NO [NONEXISTENT] for a folder that does not exist.
* ``GETQUOTA ""`` answers the QUOTA line; any other root, or "" of an account without a
  quota, is NO [NONEXISTENT] (§4.2: "no such quota root").
* ``SETQUOTA`` is NO [NOPERM]: quotas are the administrator's (QUOTASET is not offered).
* APPEND and COPY that would take the account past its quota answer NO [OVERQUOTA]
  (§4.3.1) and store nothing.  MOVE is not checked: within one account it changes
  nothing the quota counts.  After an APPEND or COPY the backend hears what was added,
  after EXPUNGE, CLOSE and DELETE that something went, so the server's figures (which
  SMTP delivery uses too) stay right.

APPEND, COPY, EXPUNGE, CLOSE and DELETE live in their own modules; this one wraps their
registered handlers (``_guard``), so that everything about quotas is here and those
modules stay as they are.  It is imported after them (it imports them itself).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Callable, Protocol

from ..store.folders_names import normalize
from ..store.quota import size_in_name
from . import cmd_mailbox, cmd_selected  # noqa: F401  (registered before they are wrapped)
from .commands import (AUTH, COMMANDS, SELECTED, Bad, Done, No, arity, astring_arg, command,
                       mailbox, sequence_set, wire_name)
from .tokens import quote

if TYPE_CHECKING:
    from .parser import Command
    from .session import ImapSession

log = logging.getLogger("ismail.imap")

ROOT = ""
CAPABILITIES = ("QUOTA", "QUOTA=RES-STORAGE")


class QuotaBackend(Protocol):
    """What a backend offers for quotas (service._ImapBackend and _Pop3Backend)."""

    def quota(self, address: str) -> tuple[int, int] | None:
        """(bytes used, bytes allowed) of the account's whole Maildir; None: no quota."""

    def quota_changed(self, address: str, added: int = 0) -> None:
        """``added`` > 0: that many bytes were stored; 0: something was removed, measure again."""


def supported(s: "ImapSession") -> bool:
    return getattr(s.backend, "quota", None) is not None


def _quota(s: "ImapSession") -> tuple[int, int] | None:
    ask = getattr(s.backend, "quota", None)
    return ask(s.authenticated) if ask is not None else None


def _changed(s: "ImapSession", added: int = 0) -> None:
    """Tell the backend; the command has been done, so a failure here is only logged."""
    tell = getattr(s.backend, "quota_changed", None)
    if tell is None:
        return
    try:
        if added > 0:
            tell(s.authenticated, added)
        else:
            tell(s.authenticated)
    except Exception:
        log.exception("%s: %s: updating the quota usage failed", s.client_ip, s.authenticated)


def _quota_line(used: int, limit: int) -> bytes:
    return b'QUOTA "" (STORAGE %d %d)' % (-(-used // 1024), limit // 1024)


def _require(s: "ImapSession", c: "Command") -> None:
    if not supported(s):
        raise Bad(f"unknown command {c.name}")


# --- the commands ----------------------------------------------------------------------

@command("GETQUOTAROOT", AUTH, SELECTED)
def getquotaroot(s: "ImapSession", c: "Command") -> Done:
    _require(s, c)
    (arg,) = arity(c, 1, 1, "GETQUOTAROOT mailbox")
    name = mailbox(arg)
    try:
        name = normalize(name)
        exists = s.store.exists(name)
    except ValueError as e:
        raise No(str(e), "CANNOT") from None
    if not exists:
        raise No(f"there is no folder {name}", "NONEXISTENT")
    quota = _quota(s)
    line = b"QUOTAROOT " + quote(wire_name(name))
    if quota is None:
        s.untagged(line)
    else:
        s.untagged(line + b' ""')
        s.untagged(_quota_line(*quota))
    return Done("GETQUOTAROOT completed")


@command("GETQUOTA", AUTH, SELECTED)
def getquota(s: "ImapSession", c: "Command") -> Done:
    _require(s, c)
    (arg,) = arity(c, 1, 1, "GETQUOTA quota-root")
    root = astring_arg(arg, "quota root")
    quota = _quota(s) if root == ROOT else None
    if quota is None:
        raise No(f"there is no quota root {root[:60]!r}", "NONEXISTENT")
    s.untagged(_quota_line(*quota))
    return Done("GETQUOTA completed")


@command("SETQUOTA", AUTH, SELECTED)
def setquota(s: "ImapSession", c: "Command") -> Done:
    _require(s, c)
    arity(c, 2, 2, "SETQUOTA quota-root (resource limit ...)")
    raise No("quotas are set by the administrator", "NOPERM")


# --- APPEND and COPY: refused over quota; they and the removals keep the figures right ------

def _append_size(s: "ImapSession", c: "Command") -> int:
    message = c.args[-1] if c.args else None
    if not isinstance(message, bytes) or not getattr(message, "literal", False):
        return 0   # malformed: the command itself says so
    return len(message) - message.count(b"\r\n")   # stored with LF line ends


def _copy_size(s: "ImapSession", c: "Command") -> int:
    if len(c.args) != 2 or s.selected is None:
        return 0
    try:
        numbered = s.selected.numbered(sequence_set(c.args[0]), c.uid)
    except (Bad, ValueError):
        return 0
    total = 0
    for _, uid in numbered:
        ref = s.selected.folder.message(uid)
        if ref is not None:
            size = size_in_name(ref.key)
            total += size if size is not None else ref.size
    return total


def _guard(name: str, size_of: Callable[["ImapSession", "Command"], int] | None) -> None:
    """Wrap the registered handler of ``name``: with ``size_of``, check the quota first and
    report what was added; without, report a removal after it."""
    inner = COMMANDS[name].run

    def run(s: "ImapSession", c: "Command"):
        if not supported(s):
            return inner(s, c)
        size = size_of(s, c) if size_of is not None else 0
        if size:
            quota = _quota(s)
            if quota is not None and quota[0] + size > quota[1]:
                used, limit = quota
                raise No(f"the mailbox is full: {-(-used // 1024)} of {limit // 1024} KiB used, "
                         f"{-(-size // 1024)} KiB more do not fit", "OVERQUOTA")
        result = inner(s, c)
        if size_of is None or size:
            _changed(s, size)
        return result

    COMMANDS[name] = dataclasses.replace(COMMANDS[name], run=run)


_guard("APPEND", _append_size)
_guard("COPY", _copy_size)
for _name in ("EXPUNGE", "CLOSE", "DELETE"):
    _guard(_name, None)
