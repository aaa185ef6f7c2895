"""Outgoing mail's routing (the part of Postfix's qmgr and smtp(8) that picks the next hop):
where one message's recipients in one domain go, then transport.py's transaction there.

Routing decides where a domain's mail goes:

* SmartHost, exclusive: always the SmartHost.
* Direct: the domain's MX hosts by preference (random among equals), at most
  MAX_MX_HOSTS; no MX means the domain's own address (RFC 5321 §5.1); a null MX
  (RFC 7505) or an MX that is this server itself is a permanent failure.
* SmartHost, not exclusive: direct first, and the SmartHost when direct sending
  fails for a temporary reason (no route, no connection, a 4xx).

The transaction itself (connection cache, TLS, AUTH, PIPELINING, DKIM signing) is
the Transport's: in this process, or in the delivery process (courier.py).
"""
from __future__ import annotations

import ipaddress
import logging
import random
from typing import TYPE_CHECKING

from .dns import DNSError, DNSTemporaryError, NXDomain, Resolver
from .transport import Destination, HostFailure, Result, Transport

if TYPE_CHECKING:
    from ..config import Settings
    from ..stats import Stats

__all__ = ["Destination", "HostFailure", "Result", "RouteError", "Sender"]

log = logging.getLogger("ismail.sender")

MAX_MX_HOSTS = 5


class RouteError(Exception):
    """No destination for a domain. ``result`` says whether that is temporary or final."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.text)
        self.result = result


class Sender:
    """``transport`` runs the transactions (a Transport, or the delivery process's Courier);
    by default a Transport in this process, which signs with ``keys`` when given."""

    def __init__(self, settings: "Settings", stats: "Stats", resolver: Resolver | None = None,
                 transport=None, keys=None) -> None:
        self.settings = settings
        self.stats = stats
        self.resolver = resolver or Resolver([_server(s) for s in settings.dns_servers] or None)
        self.route_table = None  # store.routes.Routes: per-domain next hops and relay domains
        self.transport = transport if transport is not None else Transport(
            stats, settings.server_name, settings.dns_servers, keys)

    def apply(self, settings: "Settings") -> None:
        if settings.dns_servers != self.settings.dns_servers:
            self.resolver = Resolver([_server(s) for s in settings.dns_servers] or None)
        self.settings = settings
        self.transport.configure(settings.server_name, settings.dns_servers)

    def close_idle(self, force: bool = False) -> None:
        """Called by a delivery thread between jobs (``force``: as it ends)."""
        self.transport.close_idle(force)

    # -- one domain's recipients --------------------------------------------------------------
    def deliver(self, sender: str, recipients: list[str], domain: str, data: bytes,
                smtputf8: bool = False, body: str = "7BIT", sign_domain: str = "") -> dict[str, Result]:
        """Try to hand ``recipients`` (all in ``domain``) on; one Result each.  With
        ``sign_domain``, the text leaves signed with that domain's DKIM key."""
        return self.deliver_many([(sender, recipients, domain, data, smtputf8, body, sign_domain)])[0]

    def deliver_many(self, items: list[tuple], report=None) -> list[dict[str, Result]]:
        """``deliver`` for each (sender, recipients, domain, data, smtputf8, body,
        sign_domain), in order, in one request to the transport: messages for the same
        next hop share its connection (transport.attempt_many).  ``report(index,
        results)`` is called as soon as each item's results are final."""
        out: list[dict[str, Result] | None] = [None] * len(items)
        sh = self.settings.smarthost
        fallback = [sh.enabled and not sh.exclusive and not self._routed(item[2]) for item in items]
        routes: dict[str, list[Destination] | RouteError] = {}
        jobs, where = [], []

        def final(index: int, results: dict[str, Result]) -> None:
            out[index] = results
            if report is not None and not fallback[index]:
                report(index, results)

        for index, (sender, recipients, domain, data, smtputf8, body, sign_domain) in enumerate(items):
            if domain not in routes:
                try:
                    routes[domain] = self.routes(domain)
                except RouteError as e:
                    routes[domain] = e
            dests = routes[domain]
            if isinstance(dests, RouteError):
                final(index, {r: dests.result for r in recipients})
                continue
            jobs.append((dests, sender, recipients, data, smtputf8, body, sign_domain))
            where.append(index)
        if jobs:
            self.transport.attempt_many(jobs, lambda j, results: final(where[j], results))
        for index, (sender, recipients, domain, data, smtputf8, body, sign_domain) in enumerate(items):
            if not fallback[index]:
                continue
            # The manual's rule: the SmartHost only when direct sending failed for now.
            results = out[index]
            retry = [r for r, res in results.items() if not res.sent and not res.permanent]
            if retry:
                results.update(self.transport.attempt(
                    [self._smarthost(self.requires_tls(domain))], sender, retry, data,
                    smtputf8, body, sign_domain))
            if report is not None:
                report(index, results)
        return out

    def lane(self, domain: str) -> tuple:
        """Which next hop ``domain``'s mail goes to, as far as that is known without asking
        the DNS: mail with the same lane may share a connection (the queue batches it)."""
        table = self.route_table
        if table is not None:
            route = table.route_for(domain)
            if route is not None:
                return ("route", route.host.lower(), route.port, self.requires_tls(domain))
            if table.relay_domain(domain) is not None:
                return ("mx", domain.lower())
        sh = self.settings.smarthost
        if sh.enabled and sh.exclusive:
            return ("smarthost", self.requires_tls(domain))
        return ("mx", domain.lower())

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


def _server(text: str) -> tuple[str, int]:
    from .dns import parse_server
    return parse_server(text)
