"""Commands of the not-authenticated state: STARTTLS, LOGIN, AUTHENTICATE (RFC 3501 §6.2).

Passwords travel only over TLS or from trusted networks unless imap.allow_plaintext
is set, as in POP3; otherwise the capabilities say LOGINDISABLED (§6.2.3) and LOGIN
and AUTHENTICATE answer NO [PRIVACYREQUIRED] (RFC 5530).  AUTHENTICATE speaks SASL
PLAIN (RFC 4616), with the initial response on the command line (SASL-IR, RFC 4959)
or after an empty ``+`` challenge; net.sasl does the decoding.  LOGIN (the draft
mechanism) works too, unadvertised, for old clients.  A successful login answers with
the new CAPABILITY list in its OK (§7.1), makes the special-use folders (Sent,
Drafts, Trash, Junk, RFC 6154) where missing, and lifts the literal limit from
PRE_AUTH_LITERAL to the message size limit.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..net import sasl
from .commands import NOT_AUTH, Bad, Done, No, arity, astring_arg, atom, command

if TYPE_CHECKING:
    from .parser import Command
    from .session import ImapSession

log = logging.getLogger("ismail.imap")

PLAINTEXT_REFUSED = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections"


def _check_allowed(s: "ImapSession") -> None:
    if not s.login_allowed():
        hint = "; use STARTTLS first" if s.tls_available else ""
        raise No(PLAINTEXT_REFUSED + hint, "PRIVACYREQUIRED")


@command("STARTTLS", NOT_AUTH)
def starttls(s: "ImapSession", c: "Command") -> Done:
    arity(c, 0, 0, "STARTTLS")
    if s.tls_active:
        raise Bad("TLS is already active")
    if not s.tls_available:
        raise No("STARTTLS is not available (no certificate configured)")
    s.starttls = True   # the session reads nothing more until tls_started()
    return Done("Begin TLS negotiation now")


@command("LOGIN", NOT_AUTH)
def login(s: "ImapSession", c: "Command") -> Done:
    user, password = arity(c, 2, 2, "LOGIN user password")
    user, password = astring_arg(user, "user name"), astring_arg(password, "password")
    _check_allowed(s)
    return log_in(s, user, password)


@command("AUTHENTICATE", NOT_AUTH)
def authenticate(s: "ImapSession", c: "Command") -> Done | None:
    args = arity(c, 1, 2, "AUTHENTICATE mechanism [initial-response]")
    mechanism = atom(args[0], "mechanism").upper()
    initial = atom(args[1], "initial response") if len(args) > 1 else ""
    _check_allowed(s)
    if mechanism not in sasl.MECHANISMS:
        raise No("unsupported authentication mechanism (PLAIN is offered)")
    exchange = sasl.Exchange(mechanism)
    return _outcome(s, c, exchange, exchange.start(initial))


def _outcome(s: "ImapSession", c: "Command", exchange: sasl.Exchange,
             outcome: sasl.Outcome) -> Done | None:
    if isinstance(outcome, sasl.Credentials):
        return log_in(s, outcome.user, outcome.password)
    if isinstance(outcome, sasl.Challenge):
        s.continuation(outcome.b64, lambda line: _step(s, c, exchange, line), c)
        return None
    raise Bad(outcome.reason)   # cancelled ("*", RFC 3501 §6.2.2 says BAD) or undecodable


def _step(s: "ImapSession", c: "Command", exchange: sasl.Exchange, line: bytes) -> None:
    try:
        result = _outcome(s, c, exchange, exchange.step(line.decode("ascii")))
    except UnicodeDecodeError:
        result = Bad("cannot decode the AUTHENTICATE response (base64 expected)")
    except (Bad, No) as e:
        result = e
    if result is not None:
        s.finish(c, result)


def log_in(s: "ImapSession", user: str, password: str) -> Done:
    address = user.strip().lower()
    backend = s.backend
    outcome = backend.check_login(address, password, s.client_ip)
    if outcome != "ok":
        backend.stats.add("imap_logins_failed")
        if outcome == "banned":
            s.untagged(b"BYE Too many failed logins, try again later")
            s.closing = True
        raise No("Authentication failed.", "AUTHENTICATIONFAILED")
    mailbox = backend.mailbox_of(address)
    if mailbox is None:
        log.error("%s: %s logged in but has no mailbox", s.client_ip, address)
        raise No("this account has no mailbox", "SERVERBUG")
    try:
        store = backend.open_store(mailbox)
        store.ensure_special()
    except OSError as e:
        log.error("%s: cannot open the mailbox of %s: %s", s.client_ip, address, e)
        raise No("cannot open the mailbox, try again later", "UNAVAILABLE") from None
    s.logged_in(address, store)
    backend.stats.add("imap_logins")
    log.info("%s: %s logged in (IMAP)", s.client_ip, address)
    return Done("Logged in", "CAPABILITY " + s.capabilities())
