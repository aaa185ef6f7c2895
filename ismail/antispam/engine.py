"""The anti-spam checks of an SMTP session, in the order a session meets them.

Only clients outside trusted_networks that have not logged in are checked (Postfix's
permit_mynetworks and permit_sasl_authenticated come first), and a whitelisted client or
sender skips every check.  Each check's setting is off, tag or reject:

* at connect (``Antispam.admit``, in the accepting thread): the connection rate;
* at connect, started in the background (``ClientChecks``): the DNS block lists and
  the reverse-DNS check, in parallel, answered by MAIL FROM (at most DNS_WAIT_SECONDS);
* MAIL FROM: the black lists, the DNSBL and rDNS verdicts, SPF (RFC 7208);
* RCPT TO (a local recipient): greylisting;
* after DATA: DKIM (every signature), DMARC, the content rules.

A "tag" verdict delivers the message into the account's Junk folder with an X-Spam-Flag
header; every local copy gets one Authentication-Results header (RFC 8601) naming this
server, and one it did not write that claims to come from this server is removed first.
The session calls these methods only from a thread that may wait (session.may_block
routes MAIL to a worker when checks are on); nothing here runs in the SMTP loop.
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..mailauth import authres, dmarc
from ..mailauth.dkim_verify import verify_message
from ..mailauth.spf import SpfResult, check_mail_from
from ..queue.dns import DNSTemporaryError
from ..smtp.replies import reply
from . import dnsbl
from .lists import AccessLists
from .rules import RuleSet
from .state import AntispamState

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("ismail.antispam")

DNS_WAIT_SECONDS = 5.0       # how long MAIL FROM waits for the connect-time lookups
# A client's connect-time verdicts (reverse DNS, block lists) are kept this long, as Postfix's
# postscreen keeps its DNSBL results: a client that comes back soon is not looked up again,
# and its session needs no thread to wait for DNS.  SPF verdicts per (client, sender, HELO)
# are kept for SPF_CACHE_SECONDS, which only spares evaluating the same records again.
VERDICT_CACHE_SECONDS = 600.0
SPF_CACHE_SECONDS = 60.0
_MAIL_FROM = re.compile(rb"(?i)MAIL FROM:[ ]?<([^<>\r\n]*)>")


@dataclass
class Verdict:
    """The outcome of the checks after DATA."""

    reply: bytes | None = None    # a refusal, or None to deliver
    header: bytes = b""           # Authentication-Results (and X-Spam) lines for local copies
    folder: str = ""              # "" (INBOX), "Junk", or a rule's folder
    tags: list[str] = field(default_factory=list)


class Antispam:
    """The checks as one set of settings configures them (rebuilt by MailServer.apply, as Policy)."""

    def __init__(self, settings: "Settings", resolver, state: AntispamState) -> None:
        self.settings = settings
        self.spam = spam = settings.antispam
        self.server_id = settings.server_name
        self.resolver = resolver
        self.state = state
        self.lists = AccessLists(settings.access.whitelist, settings.access.blacklist)
        self.zones = [dnsbl.parse_zone(z) for z in spam.dnsbl] if spam.dnsbl_action != "off" else []
        self.rules = RuleSet(spam.rules) if spam.rules else None
        state.rate.per_minute = spam.connection_rate
        self.greylist = state.greylist(float(spam.greylist_delay_seconds)) if spam.greylisting else None

    def admit(self, ip: str) -> bool:
        """Count a new connection from an untrusted ``ip``; False past the rate limit."""
        if not self.spam.connection_rate or self.lists.client(ip) == "white":
            return True
        if self.state.rate.hit(ip):
            return True
        self.state.count("antispam_rate_refused")
        return False

    def client(self, ip: str) -> "ClientChecks":
        return ClientChecks(self, ip)

    def plain_header(self, authenticated: str) -> bytes:
        """The Authentication-Results of mail from a client that is not checked."""
        if authenticated:
            return authres.header(self.server_id, [("auth", "pass", {"smtp.auth": authenticated}, "")])
        return authres.header(self.server_id, [])


class ClientChecks:
    """One untrusted client's checks: started at connect, consulted at MAIL, RCPT and DATA."""

    def __init__(self, engine: Antispam, ip: str) -> None:
        self.engine = engine
        self.ip = ip
        listed = engine.lists.client(ip)
        self.white = listed == "white"
        self.black = listed == "black"
        self._rdns: Future | None = None
        self._zones: list[Future] = []
        self.rdns: dnsbl.Reverse | None = None
        self.listing: dnsbl.Listing | None = None
        self._settled = False
        spam = engine.spam
        self._key = (ip, spam.rdns != "off", tuple(engine.zones))
        known = engine.state.recall(engine.state.verdicts, self._key)
        if known is not None:
            self.rdns, self.listing = known
            self._settled = True
        elif not self.white and not self.black:
            pool, resolver = engine.state.pool, engine.resolver
            try:
                if spam.rdns != "off":
                    self._rdns = pool.submit(dnsbl.fcrdns, resolver, ip)
                self._zones = [pool.submit(dnsbl.lookup, resolver, ip, z) for z in engine.zones]
            except RuntimeError:  # the pool is shut down: the server is stopping
                self._rdns, self._zones = None, []
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.sender_white = False
        self.spf: SpfResult | None = None
        self.sender = ""
        self.tags: list[str] = []

    @property
    def skip(self) -> bool:
        return self.white or self.sender_white

    def _settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        futures = [f for f in (self._rdns, *self._zones) if f is not None]
        if futures:
            wait(futures, timeout=DNS_WAIT_SECONDS)
        if self._rdns is not None:
            self.rdns = self._rdns.result() if self._rdns.done() and not self._rdns.exception() \
                else dnsbl.Reverse("temperror")
        for future in self._zones:
            if not future.done():
                continue
            if future.exception() is not None:
                if not isinstance(future.exception(), DNSTemporaryError):
                    log.warning("DNSBL lookup for %s failed: %s", self.ip, future.exception())
                continue
            if future.result() is not None:
                self.listing = future.result()
                break
        complete = all(f.done() and f.exception() is None for f in self._zones)
        if futures and complete and (self.rdns is None or self.rdns.result != "temperror"):
            state = self.engine.state
            state.remember(state.verdicts, self._key, VERDICT_CACHE_SECONDS, self.rdns, self.listing)

    def may_wait(self, text: bytes, helo: str | None) -> bool:
        """Could the MAIL FROM in ``text`` wait for DNS?  Not when this client's verdicts and
        the sender's SPF result are known already (the session then stays in the loop)."""
        if not self._settled and (self._rdns is not None or self._zones):
            return True
        spam = self.engine.spam
        if spam.spf == "off" and spam.dmarc == "off":
            return False
        found = _MAIL_FROM.findall(text)
        if not found or len(found) != text.upper().count(b"MAIL"):
            return True  # anything unusual goes to a thread: waiting there is always safe
        state, helo = self.engine.state, (helo or "").lower()
        return any(state.recall(state.spf, (self.ip, sender.decode("utf-8", "replace").lower(), helo)) is None
                   for sender in found)

    # -- MAIL FROM --------------------------------------------------------------------------------
    def mail(self, sender: str, helo: str) -> bytes | None:
        """A refusal for this sender from this client, or None (the verdicts are kept)."""
        self._reset_transaction()
        self.sender = sender
        engine, spam = self.engine, self.engine.spam
        if self.white:
            return None
        listed = engine.lists.sender(sender) if sender else None
        if listed == "white":
            self.sender_white = True
            engine.state.count("antispam_whitelisted")
            return None
        if self.black or listed == "black":
            engine.state.count("antispam_blacklist_refused")
            who = f"<{sender}>: Sender address" if listed == "black" else f"[{self.ip}]: Client host"
            log.info("%s: MAIL FROM <%s> refused: black list", self.ip, sender)
            return reply(554, "5.7.1", f"{who} rejected: Access denied (black list)")
        self._settle()
        if self.listing is not None:
            if spam.dnsbl_action == "reject":
                engine.state.count("antispam_dnsbl_refused")
                log.info("%s: refused: listed by %s (%s)", self.ip, self.listing.zone, self.listing.answer)
                return reply(554, "5.7.1", f"Service unavailable; Client host [{self.ip}] blocked "
                                           f"using {self.listing.zone}")
            self.tags.append("DNSBL")
        if self.rdns is not None and self.rdns.result != "pass":
            if spam.rdns == "reject":
                engine.state.count("antispam_rdns_refused")
                if self.rdns.result == "temperror":
                    return reply(450, "4.7.25", f"Client host rejected: cannot find your hostname, "
                                                f"[{self.ip}] (DNS did not answer; try again later)")
                return reply(550, "5.7.25", f"Client host rejected: cannot find your hostname, [{self.ip}]")
            if self.rdns.result == "fail":
                self.tags.append("RDNS_NONE")
        if spam.spf != "off" or spam.dmarc != "off":
            key = (self.ip, sender.lower(), helo.lower())
            known = engine.state.recall(engine.state.spf, key)
            if known is not None:
                self.spf = known[0]
            else:
                try:
                    self.spf = check_mail_from(self.ip, sender, helo, engine.resolver, receiver=engine.server_id)
                except Exception:  # a bug must not end the session: the check is left undone
                    log.exception("%s: SPF check of <%s> failed unexpectedly", self.ip, sender)
                    self.spf = SpfResult("temperror", sender.rpartition("@")[2], reason="internal error")
                if self.spf.result != "temperror":
                    engine.state.remember(engine.state.spf, key, SPF_CACHE_SECONDS, self.spf)
            result = self.spf.result
            if spam.spf == "reject" and result == "fail":
                engine.state.count("antispam_spf_refused")
                why = self.spf.explanation or f"{self.spf.domain} does not designate {self.ip} as permitted sender"
                log.info("%s: MAIL FROM <%s> refused: SPF fail (%s)", self.ip, sender, self.spf.reason)
                return reply(550, "5.7.23", f"SPF check failed: {why}")
            if spam.spf == "reject" and result == "temperror":
                return reply(451, "4.7.24", "SPF check could not be done (DNS), try again later")
            if (spam.spf == "tag" and result == "fail") or (spam.spf == "reject" and result == "softfail"):
                self.tags.append("SPF_FAIL" if result == "fail" else "SPF_SOFTFAIL")
        return None

    # -- RCPT TO ----------------------------------------------------------------------------------
    def rcpt(self, recipient: str) -> bytes | None:
        """Greylisting of a local recipient: 451 on first sight (RFC 6647)."""
        greylist = self.engine.greylist
        if greylist is None or self.skip:
            return None
        ok, left = greylist.check(self.ip, self.sender, recipient)
        if ok:
            return None
        self.engine.state.count("antispam_greylisted")
        return reply(451, "4.7.1", f"<{recipient}>: Recipient address rejected: Greylisted, "
                                   f"try again in {max(1, int(left + 0.999))} seconds")

    # -- after DATA -------------------------------------------------------------------------------
    def message(self, message: bytes) -> Verdict:
        """DKIM, DMARC and the content rules on the whole message; the header to add."""
        engine, spam = self.engine, self.engine.spam
        verdict = Verdict(tags=list(self.tags))
        results: list[tuple[str, str, dict[str, str], str]] = []
        if self.skip:
            verdict.header = authres.header(engine.server_id, [])
            return verdict
        if self.spf is not None:
            results.append(("spf", self.spf.result, {"smtp.mailfrom": self.sender or f"postmaster@{self.spf.domain}"},
                            self.spf.reason))
        signatures = []
        if spam.dkim != "off" or spam.dmarc != "off":
            try:
                signatures = verify_message(message, engine.resolver)
            except Exception:
                log.exception("%s: DKIM verification failed unexpectedly", self.ip)
            for sig in signatures:
                results.append(("dkim", sig.result, {"header.d": sig.domain, "header.s": sig.selector,
                                                     "header.b": sig.header_b}, sig.reason))
            if not signatures:
                results.append(("dkim", "none", {}, ""))
        if spam.dkim != "off" and signatures and not any(s.result == "pass" for s in signatures) \
                and any(s.result == "fail" for s in signatures):
            if spam.dkim == "reject":
                engine.state.count("antispam_dkim_refused")
                verdict.reply = reply(550, "5.7.20", "No passing DKIM signature found")
                return verdict
            verdict.tags.append("DKIM_FAIL")
        if spam.dmarc != "off":
            refusal = self._dmarc(message, signatures, results, verdict)
            if refusal:
                verdict.reply = refusal
                return verdict
        # A block list has no registered method (RFC 8601): its verdict is a comment.
        listed = f"listed by {self.listing.zone}: {self.listing.answer}" if self.listing else ""
        if self.rdns is not None:
            results.append(("iprev", self.rdns.result, {"policy.iprev": self.ip},
                            "; ".join(filter(None, [self.rdns.name, listed]))))
        elif listed:
            results.append(("dnsbl", "fail", {"policy.ip": self.ip}, listed))
        if engine.rules is not None:
            try:
                hit = engine.rules.evaluate(message)
            except Exception:
                log.exception("%s: content rules failed unexpectedly; the message is delivered", self.ip)
                hit = None
            if hit is not None:
                if hit.action == "reject":
                    engine.state.count("antispam_rules_refused")
                    log.info("%s: message refused by content rule %r", self.ip, hit.name)
                    verdict.reply = reply(550, "5.7.1", "Message content rejected")
                    return verdict
                if hit.action == "folder":  # the user's filing, not a spam verdict
                    verdict.folder = hit.folder
                else:
                    verdict.tags.append("RULE")
        verdict.header = authres.header(engine.server_id, results)
        if verdict.tags:
            for tag in dict.fromkeys(verdict.tags):
                engine.state.count(f"antispam_{_TAG_CHECK.get(tag, 'rules')}_tagged")
            verdict.folder = verdict.folder or "Junk"
            verdict.header += (b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, tests="
                               + ",".join(dict.fromkeys(verdict.tags)).encode("ascii") + b"\r\n")
        return verdict

    def _dmarc(self, message: bytes, signatures: list, results: list, verdict: Verdict) -> bytes | None:
        engine = self.engine
        end = message.find(b"\r\n\r\n")
        spf = self.spf
        try:
            # No From, several From fields, several author domains: dmarc.evaluate_message
            # keeps the strictest verdict (RFC 7489 §6.6.1), so a second From cannot dodge
            # the first one's policy.
            outcome = dmarc.evaluate_message(message[:end + 2] if end >= 0 else message,
                                             spf.result if spf else "none", spf.domain if spf else "",
                                             signatures, engine.resolver)
        except Exception:
            log.exception("%s: DMARC evaluation failed unexpectedly", self.ip)
            return None
        results.append(outcome.authres())
        if outcome.result == "pass":
            # The From domain vouched for the message (an aligned DKIM signature or SPF): an
            # SPF failure of the envelope sender alone - a forwarder, a mailing list - is no
            # reason for Junk.
            verdict.tags = [t for t in verdict.tags if not t.startswith("SPF_")]
        if outcome.result != "fail":
            return None
        if outcome.policy == "reject" and engine.spam.dmarc == "reject":
            engine.state.count("antispam_dmarc_refused")
            log.info("%s: message refused: DMARC policy of %s", self.ip, outcome.from_domain)
            return reply(550, "5.7.1", f"Unauthenticated email from {outcome.from_domain} is not "
                                       "accepted due to its domain's DMARC policy")
        if outcome.policy in ("reject", "quarantine"):
            verdict.tags.append("DMARC_FAIL")
        return None


_TAG_CHECK = {"DNSBL": "dnsbl", "RDNS_NONE": "rdns", "SPF_FAIL": "spf", "SPF_SOFTFAIL": "spf",
              "DKIM_FAIL": "dkim", "DMARC_FAIL": "dmarc", "RULE": "rules"}
