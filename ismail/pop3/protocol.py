"""POP3 on the connection layer: how net.listener makes, refuses and times POP3 sessions."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config import ListenEntry, Settings
from ..net.limits import PER_HOST, ConnectionLimiter
from ..net.listener import Protocol

if TYPE_CHECKING:
    from .session import Backend, Pop3Session

log = logging.getLogger("ismail.pop3")

# RFC 1939 §3: an autologout timer "of at least 10 minutes".
MIN_IDLE_SECONDS = 600


class Pop3Protocol(Protocol):
    name = "POP3"
    counter = "pop3_"
    stress_timeout = False  # the 10-minute minimum holds even on a busy server

    def __init__(self, limiter: ConnectionLimiter, backend: Backend, settings: Settings) -> None:
        super().__init__(limiter)
        self.backend = backend
        self.settings = settings  # replaced by MailServer.apply

    def session(self, ip: str, entry: ListenEntry, tls_available: bool) -> Pop3Session:
        from .session import Pop3Session  # with the first POP3 connection (as IMAP's)
        s = self.settings
        return Pop3Session(self.backend, s.server_name, ip, trusted=s.is_trusted(ip),
                           allow_plaintext=s.pop3.allow_plaintext, tls_available=tls_available,
                           tls_active=entry.tls)

    def refusal(self, why: str) -> bytes:
        if why == "access":
            return b"-ERR [AUTH] Access denied for your address\r\n"
        which = "from your host (per-host limit)" if why == PER_HOST else "(total limit)"
        return f"-ERR [SYS/TEMP] Too many connections {which}, try again later\r\n".encode()

    def timeouts(self) -> tuple[float, float, int]:
        t = self.settings.timeouts
        return max(MIN_IDLE_SECONDS, t.command_seconds), t.session_seconds, 0

    def ended(self, session: Pop3Session, ip: str, port: int, seconds: float) -> None:
        session.close()  # a session that did not QUIT deletes nothing
        log.info("pop3 connection from %s port %s: %s, %d error(s), %.2fs%s%s", ip, port,
                 session.summary(), session.errors, seconds,
                 ", TLS" if session.tls_active else "", "" if session.quit else ", no QUIT")
