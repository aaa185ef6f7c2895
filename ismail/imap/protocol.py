"""IMAP on the connection layer: how net.listener makes, refuses and times IMAP sessions."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config import ListenEntry, Settings
from ..net.limits import PER_HOST, ConnectionLimiter
from ..net.listener import Protocol

if TYPE_CHECKING:
    from .session import Backend, ImapSession

log = logging.getLogger("ismail.imap")

# RFC 3501 §5.4: an autologout timer "of at least 30 minutes" once logged in; an IDLE
# client re-issues IDLE within 29 minutes (RFC 2177), which counts as activity.
MIN_IDLE_SECONDS = 1800


class ImapProtocol(Protocol):
    name = "IMAP"
    counter = "imap_"
    stress_timeout = False  # phones hold IDLE connections for long: the minimum holds

    def __init__(self, limiter: ConnectionLimiter, backend: Backend, settings: Settings) -> None:
        super().__init__(limiter)
        self.backend = backend
        self.settings = settings  # replaced by MailServer.apply

    def session(self, ip: str, entry: ListenEntry, tls_available: bool) -> ImapSession:
        # Here, not at the top: the IMAP code (~1.4 MB with what it imports) loads with the
        # first IMAP connection, not in a server that nobody reads mail from over IMAP.
        from .session import ImapSession
        s = self.settings
        return ImapSession(self.backend, s.server_name, ip, trusted=s.is_trusted(ip),
                           allow_plaintext=s.imap.allow_plaintext,
                           max_message_bytes=s.max_message_bytes, tls_available=tls_available,
                           tls_active=entry.tls)

    def refusal(self, why: str) -> bytes:
        if why == "access":
            return b"* BYE Access denied for your address\r\n"
        which = "from your host (per-host limit)" if why == PER_HOST else "(total limit)"
        return f"* BYE [UNAVAILABLE] Too many connections {which}, try again later\r\n".encode()

    def timeouts(self) -> tuple[float, float, int]:
        t = self.settings.timeouts
        # No whole-session limit: a phone keeps one IMAP connection open for days.
        return max(MIN_IDLE_SECONDS, t.command_seconds), 10 * 365 * 86400, 0

    def ended(self, session: ImapSession, ip: str, port: int, seconds: float) -> None:
        session.close()
        log.info("imap connection from %s port %s: %s, %d error(s), %.2fs%s%s", ip, port,
                 session.summary(), session.errors, seconds,
                 ", TLS" if session.tls_active else "", "" if session.quit else ", no LOGOUT")
