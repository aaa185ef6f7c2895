"""The SMTP client side of a delivery (Postfix's smtp(8) conversation): one transaction
with the first of a list of destinations that takes it.

The routing (which destinations, in which order: sender.py) is decided before; this
module connects, says EHLO, starts TLS, logs in, sends the envelope and the text, and
tells what became of each recipient.  It also signs: mail that the queue marks for
DKIM is signed here, just before it goes out, with the domain's active key.

A server that cannot be reached or fails before the recipients are given (greeting,
EHLO, TLS, AUTH, MAIL) is a *host* failure: the next destination is tried.  After
RCPT, each recipient has its own Result.  The caller owns the retry policy.

A server that offers PIPELINING (RFC 2920) gets MAIL, the RCPTs and DATA in one
write and answers them together (pipeline.py); any other gets one command at a time.

Several messages for one destination may come in one request (``attempt_many``: the
queue batches what waits for the same next hop).  They go over one connection one
after the other, and with PIPELINING each message's text goes in the same write as
the next message's envelope: the text is *held* after its 354 until the next
envelope is ready, and its reply is the first of the next group's.  Each message
still has its own transaction and its own result; one that fails does not stop the
next (a connection lost with a held text defers that message, as a connection lost
after any text does, and the next one is tried on a new connection).

Each delivery thread keeps its last connection open for a few seconds and reuses it
for the next message to the same destination (Postfix's connection cache); that
connection counts against the outgoing limit like any other, because a thread holds
at most one.

A Transport runs in the server's process, or in the delivery process (courier.py),
where each of the server's delivery threads has a thread of its own.
"""
from __future__ import annotations

import ipaddress
import logging
import smtplib
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from . import pipeline
from .dns import DNSError, Resolver, parse_server
from ..mailauth.signing import sign_message
from ..net.sockets import client_tls_context, no_delay, set_io_timeout

if TYPE_CHECKING:
    from ..mailauth.keystore import KeyStore

log = logging.getLogger("ismail.sender")

CONNECT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 300.0  # a reply, or the end of DATA (Postfix waits 300 s and 600 s)
CACHE_IDLE_SECONDS = 5.0
CACHE_MAX_MESSAGES = 100


@dataclass
class Result:
    """What became of one recipient in one attempt."""

    code: int            # the SMTP reply code; 0 when no server answered for it
    text: str            # the server's reply, or what went wrong
    remote: str = ""     # the server that answered

    @property
    def sent(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def status(self) -> str:
        """An RFC 3463 code for bounces: the server's own if it gave one."""
        words = self.text.split(" ", 2)
        if words and words[0].isdigit() and len(words[0]) == 3:
            words = words[1:]  # "550 5.1.1 User unknown": the enhanced code follows the reply code
        first = words[0] if words else ""
        parts = first.split(".")
        if len(parts) == 3 and first[:1] in "245" and all(p.isdigit() for p in parts):
            return first
        return "5.0.0" if self.permanent else "4.0.0"


@dataclass(frozen=True)
class Destination:
    host: str                 # the name, for TLS and for the log
    address: str              # the IP to connect to
    port: int
    tls: str                  # none | starttls | starttls-optional | tls | opportunistic
    smarthost: bool = False
    account: str = ""
    password: str = ""
    verify: bool = True

    @property
    def label(self) -> str:
        return f"{self.host}[{self.address}]:{self.port}"

    @property
    def key(self) -> tuple:
        return (self.address, self.port, self.tls, self.account, self.password, self.verify)


class HostFailure(Exception):
    def __init__(self, result: Result) -> None:
        super().__init__(result.text)
        self.result = result


class _Cached:
    def __init__(self, smtp: smtplib.SMTP, dest: Destination) -> None:
        self.smtp, self.dest, self.used, self.last = smtp, dest, 0, time.monotonic()


class _Held:
    """A message whose DATA got its 354 and whose text waits to go with the next envelope."""

    def __init__(self, smtp: smtplib.SMTP, dest: Destination, data: bytes, accepted: list[str],
                 results: dict[str, "Result"], index: int) -> None:
        self.smtp, self.dest, self.data = smtp, dest, data
        self.accepted, self.results, self.index = accepted, results, index


# One delivery request: (destinations, sender, recipients, text, smtputf8, body, sign_domain).
Item = tuple


class _Abandoned(Exception):
    """The server that asked is gone (attempt_many's report or gate said so): nothing
    more is sent for the request."""


class Transport:
    """``stats`` takes add(name, delta) for the outgoing connection counters; ``keys`` signs."""

    def __init__(self, stats, helo_name: str, dns_servers: Iterable[str] = (),
                 keys: "KeyStore | None" = None) -> None:
        self.stats = stats
        self.keys = keys
        self.helo_name = helo_name
        self.dns_servers: tuple[str, ...] = ()
        self.resolver: Resolver | None = None
        self.configure(helo_name, dns_servers)
        self._local = threading.local()

    def configure(self, helo_name: str, dns_servers: Iterable[str]) -> None:
        """The name this server gives in EHLO, and the DNS servers that find a SmartHost or
        route given by name (none: the system's resolver)."""
        self.helo_name = helo_name
        servers = tuple(dns_servers)
        if servers != self.dns_servers or self.resolver is None:
            self.resolver = Resolver([parse_server(s) for s in servers] or None)
            self.dns_servers = servers

    def attempt(self, dests: list[Destination], sender: str, recipients: list[str], data: bytes,
                smtputf8: bool = False, body: str = "7BIT", sign_domain: str = "") -> dict[str, Result]:
        """Hand ``recipients`` to the first of ``dests`` that takes the transaction; with
        ``sign_domain``, the text goes out with that domain's DKIM signature on top."""
        return self.attempt_many([(dests, sender, recipients, data, smtputf8, body, sign_domain)])[0]

    def attempt_many(self, items: list[Item], report=None, gate=None) -> list[dict[str, Result]]:
        """``attempt`` for each item, in order, over as few connections and round trips as
        their destinations allow; one dict of Results per item.

        ``report(index, results)`` is called as each item's results are known (the queue
        records each message as soon as it has gone, so a crash repeats only those under
        way); a report that returns False ends the request after the item under way.
        ``gate()`` is called before each message text goes out and returns once every
        result reported so far is recorded (the delivery process waits for the server's
        word: never more than one message per connection sent and not yet recorded); False
        ends the request there, that text unsent."""
        local = self._local
        out: list[dict[str, Result] | None] = [None] * len(items)
        local.out, local.held, local.report, local.abandoned = out, None, report, False
        local.gate = gate
        local.dead = {}  # destinations that could not be reached during this request
        try:
            for index, (dests, sender, recipients, data, smtputf8, body, sign_domain) in enumerate(items):
                if local.abandoned:
                    break
                following = items[index + 1][0] if index + 1 < len(items) else None
                local.next_key = following[0].key if following else None
                local.index = index
                if sign_domain and self.keys is not None:
                    try:
                        data = sign_message(self.keys, sign_domain, data)
                    except Exception as e:  # a bug: this one waits, the others go
                        log.exception("signing a message failed unexpectedly")
                        self._done(index, {r: Result(0, f"4.3.0 Internal error: {e.__class__.__name__}: {e}")
                                           for r in recipients})
                        continue
                try:
                    results = self._try(dests, sender, recipients, data, smtputf8, body)
                except _Abandoned:
                    break
                except Exception as e:
                    # A bug must not cost the other messages of the request their delivery:
                    # this one waits in the queue and is tried again later, and the
                    # connection, in a state nobody knows, is closed.
                    log.exception("a delivery failed unexpectedly")
                    self._hang_up()
                    results = {r: Result(0, f"4.3.0 Internal error: {e.__class__.__name__}: {e}")
                               for r in recipients}
                if results is not None:  # None: its text is held, and settled with the next
                    self._done(index, results)
            if not local.abandoned:
                self._flush_held()
        except _Abandoned:
            pass
        finally:
            local.next_key = None
            if local.abandoned or local.held is not None:
                self._hang_up()
            local.out = local.report = local.gate = None
        for index, results in enumerate(out):
            if results is None:  # a held text lost to a bug, or a request ended early
                results = {r: Result(0, "4.3.0 No reply was read for this message")
                           for r in items[index][2]}
                out[index] = results
                if report is not None and not local.abandoned:
                    report(index, results)
        return out

    def _try(self, dests: list[Destination], sender: str, recipients: list[str], data: bytes,
             smtputf8: bool, body: str) -> dict[str, Result]:
        """The first destination that takes the transaction answers for every recipient."""
        failure = Result(0, "4.4.0 No destination")
        for dest in dests:
            try:
                return self._transaction(dest, sender, recipients, data, smtputf8, body)
            except HostFailure as e:
                failure = e.result
                log.info("%s: %s", dest.label, failure.text)
        return {r: failure for r in recipients}

    def _transaction(self, dest: Destination, sender: str, recipients: list[str], data: bytes,
                     smtputf8: bool, body: str) -> dict[str, Result] | None:
        dead = self._local.dead.get(dest.key)
        if dead is not None:  # it failed a moment ago, for a message before this one
            raise HostFailure(dead)
        for attempt in (1, 2):
            try:
                smtp, reused = self._connection(dest)
            except HostFailure as e:
                self._local.dead[dest.key] = e.result
                raise
            self._local.mail_given = False
            try:
                return self._send(smtp, dest, sender, recipients, data, smtputf8, body)
            except HostFailure:
                self._drop(smtp)
                raise
            except (smtplib.SMTPException, OSError) as e:
                self._drop(smtp)
                if reused and attempt == 1 and not self._local.mail_given:
                    continue  # the cached connection had gone stale: once more on a new one
                raise HostFailure(Result(0, f"4.4.2 Lost connection with {dest.label}: {_why(e)}",
                                         dest.host))
        raise AssertionError("unreachable")

    def _send(self, smtp: smtplib.SMTP, dest: Destination, sender: str, recipients: list[str],
              data: bytes, smtputf8: bool, body: str) -> dict[str, Result] | None:
        """The transaction's Results; None when its text is held for the next message."""
        options = []
        pipelining = smtp.has_extn("pipelining")
        if not pipelining or (smtputf8 and not smtp.has_extn("smtputf8")):
            self._flush_held()  # no envelope for a held text to go with
        if smtputf8:
            if not smtp.has_extn("smtputf8"):
                return {r: Result(553, f"5.6.7 {dest.host} does not support SMTPUTF8", dest.host)
                        for r in recipients}
            options.append("SMTPUTF8")
        if body == "8BITMIME" and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(data)}")
        if pipelining:
            return self._send_pipelined(smtp, dest, sender, recipients, data, options)
        code, text = smtp.mail(sender, options)
        self._local.mail_given = True
        if code >= 400:
            self._reset(smtp)
            raise HostFailure(Result(code, _reply(code, text), dest.host))
        results: dict[str, Result] = {}
        accepted = []
        for rcpt in recipients:
            code, text = smtp.rcpt(rcpt)
            results[rcpt] = Result(code, _reply(code, text), dest.host)
            if 200 <= code < 300:
                accepted.append(rcpt)
        if not accepted:
            self._reset(smtp)
            return results
        self._gate()
        code, text = smtp.data(data)
        for rcpt in accepted:
            results[rcpt] = Result(code, _reply(code, text), dest.host)
        self._local.cached.used += 1
        self._local.cached.last = time.monotonic()
        return results

    def _send_pipelined(self, smtp: smtplib.SMTP, dest: Destination, sender: str,
                        recipients: list[str], data: bytes,
                        options: list[str]) -> dict[str, Result] | None:
        """_send's transaction with MAIL, every RCPT and DATA in one write (RFC 2920), after
        the held text of the message before if there is one."""
        commands = pipeline.envelope(smtp, sender, options, recipients)
        held = self._local.held
        if held is not None:
            self._gate()  # (raises _Abandoned: the held text stays unsent)
        self._local.held = None
        replies = pipeline.replies(smtp, commands, pipeline.wire_text(held.data) if held else b"")
        if held is not None:
            try:
                code, text = next(replies)
            except (OSError, smtplib.SMTPException) as e:
                # Perhaps taken, perhaps not: it waits in the queue (as after send_text).  This
                # message had no reply yet, so it may go on a new connection (_transaction).
                self._settle(held, Result(0, f"4.4.2 Lost connection with {dest.label}: {_why(e)}",
                                          dest.host))
                raise
            self._settle(held, Result(code, _reply(code, text), dest.host))
        code, text = next(replies)
        # As one command at a time: a failure before MAIL's reply (on the write, or the EOF of
        # a stale cached connection) may be retried on a new connection.  That cannot deliver
        # twice: the text goes only after DATA's 354, so after every reply of this group.  A
        # server that answered was alive: later failures are its own, not a stale connection's.
        self._local.mail_given = True
        mail = Result(code, _reply(code, text), dest.host)
        results: dict[str, Result] = {}
        accepted = []
        try:
            for rcpt in recipients:
                code, text = next(replies)
                results[rcpt] = Result(code, _reply(code, text), dest.host)
                if 200 <= code < 300:
                    accepted.append(rcpt)
            code, text = next(replies)  # DATA's: every reply of the group is read from here on
        except (OSError, smtplib.SMTPException):
            if mail.code < 400:
                raise
            raise HostFailure(mail)  # MAIL refused with 421, and the server hung up
        if mail.code >= 400 or not accepted:
            self._reset(smtp, end_data=code == 354)  # 354: a server that should have refused DATA
            if mail.code >= 400:
                raise HostFailure(mail)
            return results
        if code != 354:
            raise smtplib.SMTPDataError(code, text)  # what smtp.data() raises one command at a time
        cached = self._local.cached
        cached.used += 1
        cached.last = time.monotonic()
        if self._local.abandoned:
            # Nobody will record it (the server is gone): the text stays unsent.
            self._local.held = _Held(smtp, dest, data, accepted, results, self._local.index)
            return None
        if self._local.next_key == dest.key and cached.used < CACHE_MAX_MESSAGES:
            # The next message goes here too: this text goes with its envelope.
            self._local.held = _Held(smtp, dest, data, accepted, results, self._local.index)
            return None
        self._gate()  # (raises _Abandoned: the connection is closed, the text unsent)
        code, text = pipeline.send_text(smtp, data)
        for rcpt in accepted:
            results[rcpt] = Result(code, _reply(code, text), dest.host)
        return results

    def _gate(self) -> None:
        """Before a message text goes out: every result reported so far is recorded."""
        gate = self._local.gate
        if gate is not None and not gate():
            self._local.abandoned = True
            raise _Abandoned

    def _hang_up(self) -> None:
        """The request ends early (the server that asked is gone, or a bug): a held text is
        never sent, and the connection, perhaps in the middle of DATA, is closed without
        the "." that would deliver it (and without a QUIT, which would be taken as text
        and wait for a reply that never comes)."""
        held, self._local.held = self._local.held, None
        cached = getattr(self._local, "cached", None)
        smtp = held.smtp if held is not None else cached.smtp if cached is not None else None
        if smtp is None or getattr(smtp, "_ismail_dropped", False):
            return
        smtp._ismail_dropped = True
        if cached is not None and cached.smtp is smtp:
            self._local.cached = None
        smtp.close()
        self.stats.add("outgoing_current", -1)

    def _flush_held(self) -> None:
        """A held text goes now, on its own; its reply settles its message."""
        held = getattr(self._local, "held", None)
        if held is None:
            return
        self._gate()  # (raises _Abandoned: the held text stays unsent)
        self._local.held = None
        try:
            code, text = pipeline.send_text(held.smtp, held.data)
            result = Result(code, _reply(code, text), held.dest.host)
        except (OSError, smtplib.SMTPException) as e:
            result = Result(0, f"4.4.2 Lost connection with {held.dest.label}: {_why(e)}", held.dest.host)
            self._drop(held.smtp)
        self._settle(held, result)

    def _settle(self, held: _Held, result: Result) -> None:
        for rcpt in held.accepted:
            held.results[rcpt] = result
        self._done(held.index, held.results)

    def _done(self, index: int, results: dict[str, Result]) -> None:
        local = self._local
        local.out[index] = results
        if local.report is not None and local.report(index, results) is False:
            local.abandoned = True

    def _connection(self, dest: Destination) -> tuple[smtplib.SMTP, bool]:
        """This thread's open connection to ``dest`` if it is fresh, else a new one."""
        cached: _Cached | None = getattr(self._local, "cached", None)
        if cached is not None:
            fresh = (cached.dest.key == dest.key and cached.used < CACHE_MAX_MESSAGES
                     and time.monotonic() - cached.last < CACHE_IDLE_SECONDS)
            if fresh:
                return cached.smtp, True
            self._flush_held()  # a text held for this connection goes before it is closed
            if self._local.cached is not cached:
                cached = None   # it was lost sending that text (and dropped)
        if cached is not None:
            self._drop(cached.smtp)
        smtp = self._open(dest)
        self._local.cached = _Cached(smtp, dest)
        return smtp, False

    def _open(self, dest: Destination) -> smtplib.SMTP:
        name = self.helo_name
        try:
            address = self._address_of(dest)
            if dest.tls == "tls":
                smtp = pipeline.SMTP_SSL(local_hostname=name, timeout=CONNECT_TIMEOUT,
                                         context=client_tls_context(dest.verify))
            else:
                smtp = pipeline.SMTP(local_hostname=name, timeout=CONNECT_TIMEOUT)
            smtp._host = dest.host  # the name TLS checks the certificate against; we connect to the IP
            code, text = smtp.connect(address, dest.port)
            no_delay(smtp.sock)
            set_io_timeout(smtp.sock, COMMAND_TIMEOUT)
        except (OSError, smtplib.SMTPException, DNSError) as e:
            raise HostFailure(Result(0, f"4.4.1 Cannot connect to {dest.label}: {_why(e)}", dest.host))
        self.stats.add("outgoing_current")
        self.stats.add("outgoing_total")
        try:
            if code != 220:
                raise HostFailure(Result(code, _reply(code, text), dest.host))
            self._hello(smtp, dest)
            if dest.account:
                try:
                    smtp.login(dest.account, dest.password)
                except smtplib.SMTPAuthenticationError as e:
                    raise HostFailure(Result(450, f"4.7.8 {dest.host} refused the login for "
                                                  f"{dest.account}: {_why(e)}", dest.host))
                except smtplib.SMTPNotSupportedError:
                    raise HostFailure(Result(450, f"4.7.0 {dest.host} does not offer AUTH "
                                                  "(Authenticate is on)", dest.host))
        except HostFailure:
            self._drop(smtp)
            raise
        except (OSError, smtplib.SMTPException) as e:
            self._drop(smtp)
            raise HostFailure(Result(0, f"4.4.2 {dest.label}: {_why(e)}", dest.host))
        return smtp

    def _hello(self, smtp: smtplib.SMTP, dest: Destination) -> None:
        code, text = smtp.ehlo()
        if not 200 <= code < 300:
            code, text = smtp.helo()
            if not 200 <= code < 300:
                raise HostFailure(Result(code, _reply(code, text), dest.host))
        wants = dest.tls in ("starttls", "starttls-optional", "opportunistic")
        if wants and smtp.has_extn("starttls"):
            smtp.starttls(context=client_tls_context(dest.verify))
            set_io_timeout(smtp.sock, COMMAND_TIMEOUT)  # the TLS socket is a new object
            smtp.ehlo()
        elif dest.tls == "starttls":
            why = ("the SmartHost's TLS is set to starttls" if dest.smarthost and not dest.verify
                   else "TLS is required for this destination")
            raise HostFailure(Result(0, f"4.7.4 {dest.host} does not offer STARTTLS ({why})", dest.host))

    def _reset(self, smtp: smtplib.SMTP, end_data: bool = False) -> None:
        try:
            if end_data:
                pipeline.end_empty(smtp)
            code, _text = smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop(smtp)
            return
        if code != 250:
            # An answer to something else (a server that answers a command twice): every
            # later reply would be out of step.  Closed without QUIT, which such a server
            # may take as message text and never answer.
            smtp.close()
            self._drop(smtp)

    def _drop(self, smtp: smtplib.SMTP) -> None:
        if getattr(smtp, "_ismail_dropped", False):
            return  # a failed _reset dropped it already; count it once
        smtp._ismail_dropped = True
        cached = getattr(self._local, "cached", None)
        if cached is not None and cached.smtp is smtp:
            self._local.cached = None
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
        self.stats.add("outgoing_current", -1)

    def holding(self) -> bool:
        """Whether this thread keeps a connection open for the next message."""
        return getattr(self._local, "cached", None) is not None

    def close(self) -> None:
        """Nothing to stop: each delivery thread closes its own connection as it ends."""

    def close_idle(self, force: bool = False) -> bool:
        """Called by a delivery thread between jobs: hang up a connection nobody used lately
        (``force``: any).  True while this thread still holds one."""
        cached = getattr(self._local, "cached", None)
        if cached is not None and (force or time.monotonic() - cached.last >= CACHE_IDLE_SECONDS):
            self._drop(cached.smtp)
        return self.holding()

    def _address_of(self, dest: Destination) -> str:
        try:
            ipaddress.ip_address(dest.address)
            return dest.address
        except ValueError:
            pass
        if self.dns_servers:
            found = self.resolver.addresses(dest.address)
            if not found:
                raise DNSError(f"{dest.address} has no address")
            return found[0]
        # The SmartHost by name, with no DNS servers set: ask the system like any program
        # would, so the hosts file and a VPN's resolver are honoured.
        return socket.getaddrinfo(dest.address, dest.port, type=socket.SOCK_STREAM)[0][4][0]



def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}"


def _why(e: BaseException) -> str:
    if isinstance(e, smtplib.SMTPResponseException):
        return _reply(e.smtp_code, e.smtp_error)
    if isinstance(e, socket.timeout):
        return "timed out"
    return str(e) or e.__class__.__name__


