"""What happens around a local delivery besides storing it: quotas and auto-replies.

* Quotas (per account, accounts.json "quota_mb"): ``fits`` answers RCPT when the client
  declared the size (452 4.2.2 when it would not fit); ``over_quota`` is the check after
  DATA, when the size is known: a recipient that does not fit is taken out of the
  delivery, and ``after_delivery`` tells the sender in a delivery status report (the
  others get the message; when nobody is left, the session answers 552 5.2.2 instead).
  Usage is kept by store/quota.QuotaTracker; at 90 % the account gets one warning mail.
* Auto-replies (store/autoreply.py, RFC 3834): after the message is stored, each account
  with an auto-reply on may answer the sender once per N days, from the null sender.
  Mail that was filed as spam (the Junk folder) never gets one.

System messages that ISMail writes itself (bounces, warnings, auto-replies) go through
MailServer.inject and are never held back by a quota: a full mailbox still hears why.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .queue.bounce import FailedRecipient, build_dsn
from .store.quota import QuotaTracker, describe, size_in_name, warning_message

if TYPE_CHECKING:
    from .queue.spool import MessageBuffer
    from .service import MailServer
    from .smtp.session import Envelope

log = logging.getLogger("ismail.aftercare")

HEADER_LIMIT = 64 * 1024  # enough header for the auto-reply rules; the body is not needed


class Aftercare:
    def __init__(self, server: "MailServer") -> None:
        self.server = server
        self.quota = QuotaTracker()

    # -- quotas ---------------------------------------------------------------------------------
    def limit(self, address: str) -> int | None:
        local, _, domain = address.rpartition("@")
        return self.server.accounts.quota_for(local, domain)

    def fits(self, address: str, box: Path, size: int) -> bool:
        limit = self.limit(address)
        return limit is None or self.quota.check(box, limit, size)

    def over_quota(self, envelope: "Envelope") -> list[str]:
        """The local recipients this message would take past their quota."""
        return [address for address, box in envelope.mailboxes.items()
                if not self.fits(address, box, envelope.size)]

    def usage(self, address: str) -> tuple[int, int] | None:
        """(used, limit) bytes for POP3 and IMAP; None without a quota."""
        limit = self.limit(address)
        if limit is None:
            return None
        local, _, domain = address.rpartition("@")
        box = self.server.accounts.mailbox_for(local, domain)
        return None if box is None else (self.quota.usage(box), limit)

    def changed(self, address: str, added: int = 0) -> None:
        local, _, domain = address.rpartition("@")
        box = self.server.accounts.mailbox_for(local, domain)
        if box is None:
            return
        if added > 0:
            self.quota.added(box, added)
        else:
            self.quota.changed(box)

    # -- around storing the message --------------------------------------------------------------
    def usage_before(self, envelope: "Envelope") -> dict[str, int]:
        """Usage of each quota account's mailbox before this message is stored (cached by
        the check after DATA, so no second scan), for the 90 % warning."""
        out = {}
        for address, box in envelope.mailboxes.items():
            if self.limit(address) is not None:
                out[address] = self.quota.usage(box)
        return out

    def after_delivery(self, envelope: "Envelope", body: "MessageBuffer", placed: list[Path],
                       full: list[str], before: dict[str, int]) -> None:
        """Count the new files, warn at 90 %, bounce for full mailboxes, send auto-replies.
        Never raises: the message is stored and acknowledged whatever happens here."""
        try:
            self._count(envelope, placed, before)
            if full:
                self._bounce_full(envelope, body, full)
            if envelope.folder != "Junk":
                self._auto_replies(envelope, body)
        except Exception:
            log.exception("%s: after delivery", envelope.id)

    def _count(self, envelope: "Envelope", placed: list[Path], usage: dict[str, int]) -> None:
        sizes = {path.parent.parent: size_in_name(path.name) or 0 for path in placed} if usage else {}
        for address, before in usage.items():
            box, limit = envelope.mailboxes.get(address), self.limit(address)
            if box is None or limit is None:
                continue  # accounts without a quota are not tracked: measured when first needed
            # The copy is in the account's Maildir, or in a folder of it (Junk).
            added = next((n for folder, n in sizes.items() if folder == box or folder.parent == box), 0)
            self.quota.added(box, added)
            if self.quota.crossed_warning(box, limit, before, before + added):
                log.info("%s: mailbox of %s is at %s: warning sent", envelope.id, address,
                         describe(before + added, limit))
                self.server.inject("", [address], warning_message(address, before + added, limit,
                                                                  self.server.settings.server_name))

    def _bounce_full(self, envelope: "Envelope", body: "MessageBuffer", full: list[str]) -> None:
        settings = self.server.settings
        if not envelope.sender:
            log.info("%s: not stored for %s (mailbox full); null sender, no report", envelope.id,
                     ", ".join(full))
            return
        failed = [FailedRecipient(a, "5.2.2", f"552 5.2.2 <{a}>: Mailbox full (quota exceeded)",
                                  settings.server_name) for a in full]
        report = build_dsn(reporting_mta=settings.server_name,
                           postmaster=f"MAILER-DAEMON@{settings.primary_domain}", to=envelope.sender,
                           queue_id=envelope.id, arrival=envelope.received_at, recipients=failed,
                           original=_head(body))
        self.server.inject("", [envelope.sender], report)
        self.server.stats.add("recipients_bounced", len(full))

    def _auto_replies(self, envelope: "Envelope", body: "MessageBuffer") -> None:
        replies = getattr(self.server, "autoreplies", None)
        if replies is None or not envelope.sender:
            return
        head = b""
        for address in envelope.mailboxes:
            if replies.get(address) is None:
                continue
            if not head:
                head = _head(body)
            via = envelope.via.get(address, address)
            message = replies.reply_for(address, recipient=via, sender=envelope.sender, header=head,
                                        own_addresses=dict.fromkeys([address, via]))
            if message is not None:
                log.info("%s: auto-reply from %s to <%s>", envelope.id, address, envelope.sender)
                self.server.inject("", [envelope.sender], message)


def _head(body: "MessageBuffer") -> bytes:
    """The header block of the message (up to HEADER_LIMIT bytes)."""
    out = bytearray()
    for chunk in body.chunks():
        out += chunk
        end = out.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(out[:end + 2])
        if len(out) >= HEADER_LIMIT:
            break
    return bytes(out[:HEADER_LIMIT])
