"""SMTP on the connection layer: how net.listener makes, refuses and times SMTP sessions."""
from __future__ import annotations

import logging

from ..antispam.engine import Antispam
from ..config import ListenEntry
from ..logsetup import Repeats
from ..net.limits import PER_HOST, ConnectionLimiter
from ..net.listener import Protocol
from .policy import Policy
from .replies import reply
from .session import Server, Session

log = logging.getLogger("ismail.receiver")


class SmtpProtocol(Protocol):
    name = "SMTP"
    counter = ""
    loop = True  # command talk on plain connections is served by net.reactor's loop

    def __init__(self, limiter: ConnectionLimiter, backend: Server, policy: Policy,
                 antispam: Antispam | None = None) -> None:
        super().__init__(limiter)
        self.refusals = Repeats(log)
        self.backend = backend
        # Both replaced by MailServer.apply; a session keeps the ones it started with.
        self.policy = policy
        self.antispam = antispam

    def admit(self, ip: str) -> bytes | None:
        """The connection rate (Postfix's anvil): trusted networks are not counted."""
        antispam = self.antispam
        if antispam is None or self.policy.is_trusted(ip) or antispam.admit(ip):
            return None
        self.refusals.warning(ip, f"SMTP connections refused from {ip} (rate)",
                              "refused SMTP connection from %s: more than %d a minute", ip,
                              antispam.spam.connection_rate)
        return reply(421, "4.7.0", f"{self.policy.settings.server_name} Error: too many "
                                   "connections from your address, try again later")

    def greeting_pause(self, ip: str) -> float:
        antispam = self.antispam
        if antispam is None or not antispam.spam.greeting_pause_ms or self.policy.is_trusted(ip):
            return 0.0
        return antispam.spam.greeting_pause_ms / 1000.0

    def session(self, ip: str, entry: ListenEntry, tls_available: bool) -> Session:
        policy, antispam = self.policy, self.antispam
        trusted = policy.is_trusted(ip)
        return Session(self.backend, policy, ip, trusted=trusted,
                       tls_available=tls_available, tls_active=entry.tls,
                       submission=entry.submission,
                       checks=None if trusted or antispam is None else antispam.client(ip))

    def refusal(self, why: str) -> bytes:
        name = self.policy.settings.server_name
        if why == "access":
            return reply(554, "5.7.1", f"{name} Access denied")
        if why == PER_HOST:
            text = "Too many connections from your host (per-host limit), try again later"
        else:
            text = "Too many connections (total limit), try again later"
        return reply(421, "4.7.0", f"{name} {text}")

    def timeouts(self) -> tuple[float, float, int]:
        t = self.policy.settings.timeouts
        return t.command_seconds, t.session_seconds, t.min_data_rate

    def checks_pregreet(self, ip: str) -> bool:
        # Our own machines are not spam bots (Postfix's postscreen permits mynetworks too):
        # a scanner or script that talks at once is served, and they cost no look-ahead.
        return not self.policy.is_trusted(ip)

    def pregreeted(self, ip: str) -> None:
        if self.antispam is not None:
            self.antispam.state.count("antispam_pregreet_refused")

    def pregreet_reply(self) -> bytes:
        return reply(554, "5.5.1", f"{self.policy.settings.server_name} Protocol error: "
                                   "you talked before the greeting")

    def ended(self, session: Session, ip: str, port: int, seconds: float) -> None:
        log.info("connection from %s port %s: %d message(s), %d error(s), %.2fs%s%s%s", ip,
                 port, session.messages, session.errors, seconds,
                 ", TLS" if session.tls_active else "",
                 f", user {session.authenticated}" if session.authenticated else "",
                 "" if session.quit else ", no QUIT")
