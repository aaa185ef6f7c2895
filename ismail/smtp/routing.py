"""Where each RCPT goes (a mixin of smtp.session.Session): an account, an alias or group of
the address book, a relay domain we are the backup MX for, an SRS bounce address, the
outgoing queue - or a refusal.

The order is Postfix's: a local domain (or an alias of one) first, then a relay domain,
then relaying, which only trusted or logged-in clients may do.  What is decided lands in
the transaction: ``_rcpts`` (every recipient), ``_mailboxes`` (local copies), ``_forwarded``
(remote copies an account, alias or group sends on, with SRS), ``_via`` (the alias an
account was reached through, for its auto-reply).
"""
from __future__ import annotations

import logging
from ..mailauth.srs import is_srs_local
from .addresses import Path as SmtpPath, relay_trick
from .replies import reply

log = logging.getLogger("ismail.session")


class Routing:
    def _route(self, path: SmtpPath) -> bytes:
        """Decide a recipient: a local mailbox, the outgoing queue, or a refusal."""
        may_relay = self.may_relay
        if not may_relay and relay_trick(path):
            self.server.stats.add("relay_refused")
            return reply(554, "5.7.1", f"<{path.address}>: Relay access denied")
        local, domain = path.local, path.domain
        if not domain:
            if local.lower() != "postmaster":  # RFC 5321 §4.5.1: <postmaster> alone is valid
                return reply(553, "5.1.3", f"<{path.address}>: Address must include a domain")
            domain = self.settings.primary_domain
        address = f"{path.address}@{domain}" if not path.domain else path.address
        # A source route is ignored (RFC 5321 §3.6.1); strangers using one were refused above.
        local_domain = self.policy.is_local_domain(domain)
        if local_domain or self.server.is_alias_domain(domain):
            if local_domain and is_srs_local(local):
                return self._route_srs(address)
            return self._route_local(address, local, domain, local_domain)
        relayed = self.server.relay_accepts(address)
        if relayed is not None:  # a domain we are a backup MX (or gateway) for
            if not relayed:
                return self._unknown(address)
            if self._checked:
                refusal = self.checks.rcpt(address)
                if refusal is not None:
                    return refusal
        elif not may_relay:
            self.server.stats.add("relay_refused")
            return reply(554, "5.7.1", f"<{address}>: Relay access denied")
        if address in self._rcpts:  # a forward added it already: sent directly, as asked now
            self._forwarded.discard(address)
            return reply(250, "2.1.5", "Ok")
        self._rcpts.append(address)
        return reply(250, "2.1.5", "Ok")

    def _route_local(self, address: str, local: str, domain: str, local_domain: bool) -> bytes:
        """A recipient of one of our domains: an account (the common case, one lookup), else
        an alias, a group, a catch-all or a domain alias, expanded by the address book."""
        box = self.server.lookup_mailbox(local, domain) if local_domain else None
        if box is not None:
            accounts, remote = [(address, box)], []
        else:
            found = self.server.expand(address, self._mail.address, self._sender_is_local())
            if not found.known:
                return self._unknown(address)
            if found.refusal:
                return reply(550, "5.7.1", f"<{address}>: Recipient address rejected: {found.refusal}")
            accounts = []
            for target in found.accounts:
                t_local, _, t_domain = target.rpartition("@")
                t_box = self.server.lookup_mailbox(t_local, t_domain)
                if t_box is not None:  # an account removed a moment ago: the rest still get it
                    accounts.append((target, t_box))
            remote = found.remote
            if not accounts and not remote:
                return self._unknown(address)
        if self._declared and len(accounts) == 1 and not remote:
            target, t_box = accounts[0]
            if not self.server.fits(target, t_box, self._declared):  # RFC 1870 SIZE, RFC 3463
                return reply(452, "4.2.2", f"<{address}>: Mailbox full, try again later")
        if self._checked:
            refusal = self.checks.rcpt(address)
            if refusal is not None:
                return refusal
        for target, t_box in accounts:
            if target != address.lower():
                self._via.setdefault(target, address)
            if target not in self._mailboxes:
                if target not in self._rcpts:
                    self._rcpts.append(target)
                self._mailboxes[target] = t_box
            t_local, _, t_domain = target.rpartition("@")
            self._add_forwards(t_local, t_domain)
        for target in remote:
            # An alias or group member elsewhere: sent on as a forward is (SRS, issue 12).
            if target not in self._rcpts:
                self._rcpts.append(target)
                self._forwarded.add(target)
        return reply(250, "2.1.5", "Ok")

    def _sender_is_local(self) -> bool:
        """For groups open to "local senders only": a sender address of our domains, from a
        client that logged in or is in trusted_networks (anyone can write such an address)."""
        if not (self.authenticated or self.trusted) or self._mail is None:
            return False
        return self.policy.is_local_domain(self._mail.domain or "")

    def _unknown(self, address: str) -> bytes:
        self._unknown_rcpts += 1
        if self._checked and self._unknown_rcpts >= self.settings.antispam.max_unknown_recipients:
            # A harvester tries address after address: it gets no more answers, and the
            # address counts towards a ban, as a failed login does.
            self.closing = True
            banned = self.server.strike(self.client_ip, "unknown recipients")
            self.checks.engine.state.count("antispam_harvest_refused")
            log.info("%s: %d unknown recipients: disconnected%s", self.client_ip, self._unknown_rcpts,
                     " and banned" if banned else "")
            return reply(421, "4.7.0", f"{self.settings.server_name} Error: too many unknown "
                                       "recipients, closing connection")
        if self._unknown_rcpts > 10:
            self.delay += 1.0  # slows down anyone harvesting addresses
        return reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")

    def _route_srs(self, address: str) -> bytes:
        """A reply or bounce to a forwarded copy's sender (an SRS address): it goes back to the
        original sender, whoever the client is - but only if our own signature checks out."""
        try:
            original = self.server.reverse_srs(address)
        except ValueError as e:
            self.server.stats.add("srs_refused")
            return reply(550, "5.1.1", f"<{address}>: Recipient address rejected: {e}")
        if original is None:
            return reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")
        if original in self._rcpts:
            return reply(250, "2.1.5", "Ok")
        o_local, _, o_domain = original.rpartition("@")
        if self.policy.is_local_domain(o_domain):
            box = self.server.lookup_mailbox(o_local, o_domain)
            if box is None:
                return reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")
            self._mailboxes[original] = box
        self._rcpts.append(original)
        return reply(250, "2.1.5", "Ok")

    def _add_forwards(self, local: str, domain: str) -> None:
        """Copies for the addresses the account forwards to (one level: no loops here).

        The account's owner set them up, so they go out whoever the client is."""
        for target in self.server.lookup_forwards(local, domain):
            if target in self._rcpts:
                continue
            t_local, _, t_domain = target.rpartition("@")
            if self.policy.is_local_domain(t_domain):
                box = self.server.lookup_mailbox(t_local, t_domain)
                if box is None:
                    log.warning("%s@%s forwards to %s, which does not exist here", local, domain, target)
                    continue
                self._mailboxes[target] = box
            else:
                self._forwarded.add(target)
            self._rcpts.append(target)
