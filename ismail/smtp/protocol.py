"""SMTP on the connection layer: how net.listener makes, refuses and times SMTP sessions."""
from __future__ import annotations

import logging

from ..config import ListenEntry
from ..net.limits import PER_HOST, ConnectionLimiter
from ..net.listener import Protocol
from .policy import Policy
from .replies import reply
from .session import Server, Session

log = logging.getLogger("ismail.receiver")


class SmtpProtocol(Protocol):
    name = "SMTP"
    counter = ""
    pregreet_check = True
    loop = True  # command talk on plain connections is served by net.reactor's loop

    def __init__(self, limiter: ConnectionLimiter, backend: Server, policy: Policy) -> None:
        super().__init__(limiter)
        self.backend = backend
        self.policy = policy  # replaced by MailServer.apply; a session keeps the one it started with

    def session(self, ip: str, entry: ListenEntry, tls_available: bool) -> Session:
        policy = self.policy
        return Session(self.backend, policy, ip, trusted=policy.is_trusted(ip),
                       tls_available=tls_available, tls_active=entry.tls,
                       submission=entry.submission)

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

    def pregreet_reply(self) -> bytes:
        return reply(554, "5.5.1", f"{self.policy.settings.server_name} Protocol error: "
                                   "you talked before the greeting")

    def ended(self, session: Session, ip: str, port: int, seconds: float) -> None:
        log.info("connection from %s port %s: %d message(s), %d error(s), %.2fs%s%s%s", ip,
                 port, session.messages, session.errors, seconds,
                 ", TLS" if session.tls_active else "",
                 f", user {session.authenticated}" if session.authenticated else "",
                 "" if session.quit else ", no QUIT")
