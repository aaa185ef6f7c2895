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
        if sign_domain and self.keys is not None:
            data = sign_message(self.keys, sign_domain, data)
        return self._try(dests, sender, recipients, data, smtputf8, body)

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
                     smtputf8: bool, body: str) -> dict[str, Result]:
        for attempt in (1, 2):
            smtp, reused = self._connection(dest)
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
              data: bytes, smtputf8: bool, body: str) -> dict[str, Result]:
        options = []
        if smtputf8:
            if not smtp.has_extn("smtputf8"):
                return {r: Result(553, f"5.6.7 {dest.host} does not support SMTPUTF8", dest.host)
                        for r in recipients}
            options.append("SMTPUTF8")
        if body == "8BITMIME" and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(data)}")
        if smtp.has_extn("pipelining"):
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
        code, text = smtp.data(data)
        for rcpt in accepted:
            results[rcpt] = Result(code, _reply(code, text), dest.host)
        self._local.cached.used += 1
        self._local.cached.last = time.monotonic()
        return results

    def _send_pipelined(self, smtp: smtplib.SMTP, dest: Destination, sender: str,
                        recipients: list[str], data: bytes, options: list[str]) -> dict[str, Result]:
        """_send's transaction with MAIL, every RCPT and DATA in one write (RFC 2920)."""
        replies = pipeline.replies(smtp, pipeline.envelope(smtp, sender, options, recipients))
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
        code, text = pipeline.send_text(smtp, data)
        for rcpt in accepted:
            results[rcpt] = Result(code, _reply(code, text), dest.host)
        self._local.cached.used += 1
        self._local.cached.last = time.monotonic()
        return results

    def _connection(self, dest: Destination) -> tuple[smtplib.SMTP, bool]:
        """This thread's open connection to ``dest`` if it is fresh, else a new one."""
        cached: _Cached | None = getattr(self._local, "cached", None)
        if cached is not None:
            fresh = (cached.dest.key == dest.key and cached.used < CACHE_MAX_MESSAGES
                     and time.monotonic() - cached.last < CACHE_IDLE_SECONDS)
            if fresh:
                return cached.smtp, True
            self._drop(cached.smtp)
        smtp = self._open(dest)
        self._local.cached = _Cached(smtp, dest)
        return smtp, False

    def _open(self, dest: Destination) -> smtplib.SMTP:
        name = self.helo_name
        try:
            address = self._address_of(dest)
            if dest.tls == "tls":
                smtp = smtplib.SMTP_SSL(local_hostname=name, timeout=CONNECT_TIMEOUT,
                                        context=client_tls_context(dest.verify))
            else:
                smtp = smtplib.SMTP(local_hostname=name, timeout=CONNECT_TIMEOUT)
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
            smtp.rset()
        except (OSError, smtplib.SMTPException):
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


