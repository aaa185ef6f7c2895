"""Outgoing SMTP (Postfix's smtp(8)): hand one message's recipients in one domain to a server.

Routing decides where a domain's mail goes:

* SmartHost, exclusive: always the SmartHost.
* Direct: the domain's MX hosts by preference (random among equals), at most
  MAX_MX_HOSTS; no MX means the domain's own address (RFC 5321 §5.1); a null MX
  (RFC 7505) or an MX that is this server itself is a permanent failure.
* SmartHost, not exclusive: direct first, and the SmartHost when direct sending
  fails for a temporary reason (no route, no connection, a 4xx).

A server that cannot be reached or fails before the recipients are given (greeting,
EHLO, TLS, AUTH, MAIL) is a *host* failure: the next destination is tried.  After
RCPT, each recipient has its own Result.  The caller owns the retry policy.

A server that offers PIPELINING (RFC 2920) gets MAIL, the RCPTs and DATA in one
write and answers them together (pipeline.py); any other gets one command at a time.

Each delivery thread keeps its last connection open for a few seconds and reuses it
for the next message to the same destination (Postfix's connection cache); that
connection counts against the outgoing limit like any other, because a thread holds
at most one.
"""
from __future__ import annotations

import ipaddress
import logging
import random
import smtplib
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import pipeline
from .dns import DNSError, DNSTemporaryError, NXDomain, Resolver
from ..net.sockets import client_tls_context, no_delay, set_io_timeout

if TYPE_CHECKING:
    from ..config import Settings
    from ..stats import Stats

log = logging.getLogger("ismail.sender")

MAX_MX_HOSTS = 5
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


class RouteError(Exception):
    """No destination for a domain. ``result`` says whether that is temporary or final."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.text)
        self.result = result


class HostFailure(Exception):
    def __init__(self, result: Result) -> None:
        super().__init__(result.text)
        self.result = result


class _Cached:
    def __init__(self, smtp: smtplib.SMTP, dest: Destination) -> None:
        self.smtp, self.dest, self.used, self.last = smtp, dest, 0, time.monotonic()


class Sender:
    def __init__(self, settings: "Settings", stats: "Stats", resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.stats = stats
        self.resolver = resolver or Resolver([_server(s) for s in settings.dns_servers] or None)
        self.route_table = None  # store.routes.Routes: per-domain next hops and relay domains
        self._local = threading.local()

    def apply(self, settings: "Settings") -> None:
        if settings.dns_servers != self.settings.dns_servers:
            self.resolver = Resolver([_server(s) for s in settings.dns_servers] or None)
        self.settings = settings

    # -- one domain's recipients --------------------------------------------------------------
    def deliver(self, sender: str, recipients: list[str], domain: str, data: bytes,
                smtputf8: bool = False, body: str = "7BIT") -> dict[str, Result]:
        """Try to hand ``recipients`` (all in ``domain``) on; one Result each."""
        sh = self.settings.smarthost
        try:
            results = self._try(self.routes(domain), sender, recipients, data, smtputf8, body)
        except RouteError as e:
            results = {r: e.result for r in recipients}
        if sh.enabled and not sh.exclusive and not self._routed(domain):
            # The manual's rule: the SmartHost only when direct sending failed for now.
            retry = [r for r, res in results.items() if not res.sent and not res.permanent]
            if retry:
                results.update(self._try([self._smarthost(self.requires_tls(domain))], sender, retry,
                                         data, smtputf8, body))
        return results

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

    def routes(self, domain: str) -> list[Destination]:
        table = self.route_table
        if table is not None:
            # A route (a fixed next hop) and a relay domain (we are its backup MX) both
            # override the SmartHost: that mail has one right place to go.
            route = table.route_for(domain)
            if route is not None:
                return [self._route(route, domain)]
            if table.relay_domain(domain) is not None:
                return self._direct(domain, primary_only=True)
        sh = self.settings.smarthost
        if sh.enabled and sh.exclusive:
            return [self._smarthost(self.requires_tls(domain))]
        return self._direct(domain)

    def _routed(self, domain: str) -> bool:
        table = self.route_table
        return table is not None and (table.route_for(domain) is not None
                                      or table.relay_domain(domain) is not None)

    def _route(self, route, domain: str) -> Destination:
        """A route's next hop.  "starttls" and "tls" encrypt without checking the certificate
        (an office's internal server seldom has a public one: Postfix's "encrypt" level),
        unless the domain is in require_tls_domains."""
        verify = self.requires_tls(domain)
        tls = route.tls
        if verify and tls not in ("tls", "starttls"):
            tls = "starttls"
        return Destination(host=route.host, address=route.host, port=route.port, tls=tls,
                           account=route.username, password=route.password, verify=verify)

    def requires_tls(self, domain: str) -> bool:
        """outgoing.require_tls_domains: mail for ``domain`` only over TLS with a verified
        certificate, else it waits in the queue."""
        domain = domain.lower()
        return any(domain == d.lower() for d in self.settings.outgoing.require_tls_domains)

    def _smarthost(self, require_tls: bool = False) -> Destination:
        sh = self.settings.smarthost
        tls, verify = sh.tls, sh.verify_certificate
        if require_tls:  # whatever the SmartHost's own setting says, this mail needs more
            tls, verify = (tls if tls in ("tls", "starttls") else "starttls"), True
        return Destination(host=sh.host, address=sh.host, port=sh.port, tls=tls, smarthost=True,
                           account=sh.account if sh.authenticate else "",
                           password=sh.password if sh.authenticate else "",
                           verify=verify)

    def _direct(self, domain: str, primary_only: bool = False) -> list[Destination]:
        try:
            mxs = self.resolver.mx(domain)
        except NXDomain:
            raise RouteError(Result(550, f"5.1.2 Host or domain name not found: {domain}"))
        except DNSError as e:
            raise RouteError(Result(450, f"4.4.3 Cannot look up the mail servers of {domain}: {e}"))
        if any(mx.host == "" for mx in mxs):
            raise RouteError(Result(556, f"5.1.10 {domain} does not accept mail (null MX)"))
        port = self.settings.outgoing.mx_port
        if primary_only and mxs:
            mxs = self._better_than_me(domain, mxs, port)
        hosts = [domain] if not mxs else _order(mxs)[:MAX_MX_HOSTS]
        # Opportunistic TLS as everywhere; for a domain that requires it, verified STARTTLS
        # against the MX host's name, and no sending in the clear.
        tls, verify = ("starttls", True) if self.requires_tls(domain) else ("opportunistic", False)
        dests: list[Destination] = []
        temporary: str = ""
        for host in hosts:
            if host.lower() == self.settings.server_name.lower():
                raise RouteError(Result(554, f"5.4.6 Mail for {domain} loops back to myself ({host})"))
            try:
                addresses = self.resolver.addresses(host)
            except DNSTemporaryError as e:
                temporary = f"4.4.3 Cannot look up {host}: {e}"
                continue
            except DNSError:
                continue
            for address in addresses[:2]:
                if self._is_myself(address, port):
                    raise RouteError(Result(554, f"5.4.6 Mail for {domain} loops back to myself ({host})"))
                dests.append(Destination(host=host, address=address, port=port, tls=tls,
                                         verify=verify))
        if not dests:
            if temporary:
                raise RouteError(Result(450, temporary))
            raise RouteError(Result(550, f"5.4.4 No address for the mail servers of {domain}"))
        return dests

    def _better_than_me(self, domain: str, mxs: list, port: int) -> list:
        """A backup MX sends only to the MX hosts preferred over its own record (RFC 5321
        §5.1); if it is itself the best one, the mail waits (a DNS or settings mistake that
        the user can fix) instead of going round in a loop."""
        mine = [mx.preference for mx in mxs if self._is_me(mx.host, port)]
        if not mine:
            return mxs  # not one of the domain's MX hosts: any of them will do
        better = [mx for mx in mxs if mx.preference < min(mine)]
        if not better:
            raise RouteError(Result(450, f"4.4.6 This server is the best mail server (MX) of "
                                         f"relay domain {domain}: nowhere better to send it"))
        return better

    def _is_me(self, host: str, port: int) -> bool:
        if host.lower().rstrip(".") == self.settings.server_name.lower():
            return True
        try:
            addresses = self.resolver.addresses(host)
        except DNSError:
            return False
        return any(self._is_myself(a, port) for a in addresses)

    def _is_myself(self, address: str, port: int) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        for host, listen_port in self.settings.listen_addresses():
            if listen_port != port:
                continue
            listen_ip = ipaddress.ip_address(host)
            if listen_ip == ip or (listen_ip.is_unspecified and ip.is_loopback):
                return True
        return False

    # -- the SMTP conversation ------------------------------------------------------------------
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
        name = self.settings.server_name
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

    def close_idle(self, force: bool = False) -> None:
        """Called by a delivery thread between jobs: hang up a connection nobody used lately."""
        cached = getattr(self._local, "cached", None)
        if cached is not None and (force or time.monotonic() - cached.last >= CACHE_IDLE_SECONDS):
            self._drop(cached.smtp)

    def _address_of(self, dest: Destination) -> str:
        try:
            ipaddress.ip_address(dest.address)
            return dest.address
        except ValueError:
            pass
        if self.settings.dns_servers:
            found = self.resolver.addresses(dest.address)
            if not found:
                raise DNSError(f"{dest.address} has no address")
            return found[0]
        # The SmartHost by name, with no DNS servers set: ask the system like any program
        # would, so the hosts file and a VPN's resolver are honoured.
        return socket.getaddrinfo(dest.address, dest.port, type=socket.SOCK_STREAM)[0][4][0]


def _order(mxs) -> list[str]:
    """Hosts by preference, shuffled among equal preferences (RFC 5321 §5.1)."""
    by_pref: dict[int, list[str]] = {}
    for mx in mxs:
        by_pref.setdefault(mx.preference, []).append(mx.host)
    hosts: list[str] = []
    for pref in sorted(by_pref):
        group = by_pref[pref]
        random.shuffle(group)
        hosts += [h for h in group if h not in hosts]
    return hosts


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


def _server(text: str) -> tuple[str, int]:
    from .dns import parse_server
    return parse_server(text)
