"""Delivery status notifications: the bounce (or delay warning) mailed back to a sender.

`build_dsn` writes an RFC 3464 DSN inside an RFC 6522 ``multipart/report`` with three
parts, as Postfix does: a plain-words explanation (text/plain, UTF-8), the
machine-readable ``message/delivery-status``, and the original's header block
(``text/rfc822-headers``) or, on request, the whole original (``message/rfc822``).

The caller MUST send the result with the null reverse-path ``MAIL FROM:<>`` (RFC 5321
§4.5.5, RFC 3461 §6.2), so that a DSN that cannot be delivered is dropped instead of
bouncing back and forth; and it sends none for a message whose sender was ``<>``.
`is_bounce_loop` spots the other kind of loop: a message that has been relayed in circles.

The output has CRLF lines and stays 7-bit, so any server can relay it: the text part is
quoted-printable unless plain ASCII; UTF-8 addresses in delivery-status fields use RFC
6533's ``utf-8`` type in its 7-bit ``\\x{HEX}`` form; non-ASCII in remote replies is
backslash-escaped there; an 8-bit header block is returned quoted-printable and an 8-bit
original as headers only.  Only a UTF-8 To:/From: address is written raw (RFC 6532): mail
to it needs SMTPUTF8 anyway.  ``Original-Recipient`` is omitted: RFC 3464 §2.3.1 takes it
from the ORCPT parameter, which the queue does not record.
"""
from __future__ import annotations

import functools
import re
import textwrap
import time
from dataclasses import dataclass
from email.message import EmailMessage, Message, MIMEPart
from email.utils import formatdate, make_msgid

__all__ = ["FailedRecipient", "build_dsn", "is_bounce_loop", "MAX_RETURNED_BODY"]

MAX_RETURNED_BODY = 100 * 1024  # larger originals come back as headers only (a DSN must stay small)
MAX_DIAGNOSTIC = 500            # characters of a remote reply kept: plenty for a human, far below 998
_MAX_FIELD = 900                # last-resort cap on any DSN field value, so no line passes 998 octets
_WIDTH = 78                     # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
_MAX_LINE = 998                 # ... and MUST stay within 998

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_SMTP_REPLY = re.compile(r"[2-5]\d\d(?:[ -]|\Z)")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


@functools.cache
def _part_policy():
    """Parts are encoded when built; cte_type="7bit" keeps set_content from ever choosing
    8bit.  email.policy (~0.6 MB with the header parser it brings) loads with the first
    report, not in every server."""
    from email.policy import SMTP
    return SMTP.clone(cte_type="7bit")


@dataclass
class FailedRecipient:
    address: str            # the envelope recipient
    status: str             # RFC 3463 code: "5.1.1"; "4.4.1" for a delay; "5.4.7" when the lifetime ran out
    diagnostic: str = ""    # the remote server's reply, e.g. "550 5.1.1 <x@y>: User unknown"; "" if none
    remote_mta: str = ""    # host name of the server that answered; "" if none
    action: str = "failed"  # "failed" or "delayed"


class _Field(str):
    """A delivery-status field value that the generator writes exactly as folded here.

    EmailPolicy.fold() hands any stored value with a ``name`` attribute to its fold()
    method.  A plain string longer than 78 columns would instead be re-parsed as
    unstructured text, and a long word (an address) turned into an RFC 2047
    encoded-word, which means nothing to a program reading RFC 3464 fields.
    """

    name: str

    def __new__(cls, name: str, value: str) -> "_Field":
        self = super().__new__(cls, value)
        self.name = name
        return self

    def fold(self, *, policy) -> str:  # an email.policy.Policy
        # Fold only at the single spaces _one_line left; a word too long for 78
        # columns keeps its own line, which _MAX_FIELD holds under 998 octets.
        lines, line = [], f"{self.name}:"
        for i, word in enumerate(str(self).split(" ")):
            if i and len(line) + 1 + len(word) > _WIDTH:
                lines.append(line)
                line = ""
            line += " " + word
        return policy.linesep.join(lines + [line]) + policy.linesep


def _one_line(text: str, limit: int, ascii_only: bool) -> str:
    """Unfold into one line of printable characters, cut to `limit` characters."""
    text = " ".join(text.split())  # CR, LF, tabs and runs of spaces all become one space
    text = "".join(c if c.isprintable() else "?" for c in text)
    if ascii_only:
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _address_field(address: str) -> str:
    address = _one_line(address, _MAX_FIELD, ascii_only=False)
    if address.isascii():
        return "rfc822; " + address
    # RFC 6533 utf-8-addr-xtext: QCHAR as is; "+", "=", "\", space and non-ASCII as \x{HEX}.
    return "utf-8; " + "".join(
        c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):02X}}}" for c in address)


def _block(fields: list[tuple[str, str]]) -> Message:
    block = Message()
    for name, value in fields:
        block[name] = _Field(name, value[:_MAX_FIELD])
    return block


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _header_block(original: bytes) -> bytes:
    """The original's header lines, up to (not including) the blank line before the body."""
    if original.startswith((b"\n", b"\r\n")):
        return b""
    m = _BLANK_LINE.search(original)
    return original if m is None else original[: m.start() + 1]


def _seven_bit(data: bytes) -> bool:
    """True when `data` (CRLF lines) may travel as Content-Transfer-Encoding 7bit (RFC 2045 §2.7)."""
    lines = data.split(b"\r\n")
    return (data.isascii() and b"\0" not in data and b"\r" not in b"".join(lines)
            and all(len(line) <= _MAX_LINE for line in lines))


def _returned_part(original: bytes, include_body: bool) -> tuple[MIMEPart, bool]:
    """The third part, and whether it holds the whole original."""
    part = MIMEPart(policy=_part_policy())
    whole = _crlf(original)
    if include_body and len(original) <= MAX_RETURNED_BODY and _seven_bit(whole):
        part["Content-Type"] = "message/rfc822"
        part["Content-Description"] = "Undelivered Message"
        # A string payload is written verbatim: re-generating a parsed copy could refold
        # (and so break the signatures of) the sender's own headers.
        part.set_payload(whole.decode("ascii"))
        return part, True
    head = _crlf(_header_block(original))
    safe = _seven_bit(head)
    part.set_content(head.decode("utf-8", "replace"), subtype="rfc822-headers",
                     charset="us-ascii" if safe else "utf-8",
                     cte="7bit" if safe else "quoted-printable")
    part["Content-Description"] = "Undelivered Message Headers"
    return part, False


def _explain(reporting_mta: str, failed: list[FailedRecipient], delayed: list[FailedRecipient],
             retry_until: float | None, whole: bool) -> str:
    """The human part, in Postfix's words where they fit."""
    def para(text: str, width: int = 72, indent: str = "") -> str:
        return textwrap.fill(text, width, subsequent_indent=indent, break_long_words=False,
                             break_on_hyphens=False)

    def entries(rcpts: list[FailedRecipient]) -> list[str]:
        out = []
        for r in rcpts:
            diag = _one_line(r.diagnostic, MAX_DIAGNOSTIC, ascii_only=False)
            if diag and r.remote_mta:
                said = f"host {_one_line(r.remote_mta, 255, False)} said: {diag}"
            else:
                said = diag or f"delivery status {r.status}"
            out.append(para(f"<{_one_line(r.address, _MAX_FIELD, False)}>: {said}", 76, "    "))
        return out

    until = ("until " + formatdate(retry_until, localtime=True)) if retry_until is not None else "for a while"
    text = [f"This is the mail system at host {reporting_mta}.", ""]
    if failed:
        attached = "It is attached below." if whole else "Its headers are attached below."
        text += [para("I'm sorry to have to inform you that your message could not be delivered "
                      f"to one or more recipients. {attached}"), "",
                 para("For further assistance, please send mail to postmaster. If you do so, "
                      "please include this problem report."), "",
                 "                   The mail system", ""] + entries(failed)
        if delayed:
            text += ["", para("Delivery to the following recipients is delayed; the mail system "
                              f"will keep trying {until}:"), ""] + entries(delayed)
    else:
        text += ["#" * 68, "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
                 "#" * 68, "",
                 para("Your message could not be delivered yet to the recipients below. The mail "
                      f"system will keep trying {until}."), ""] + entries(delayed)
    return "\n".join(text) + "\n"


def build_dsn(*, reporting_mta: str, postmaster: str, to: str, queue_id: str, arrival: float,
              recipients: list[FailedRecipient], original: bytes, now: float | None = None,
              retry_until: float | None = None, include_body: bool = False) -> bytes:
    """Return a complete DSN message (CRLF lines, none over 998 octets) for `recipients`.

    `to` is the original's envelope sender; the caller sends the result to it with the
    null reverse-path ``<>``.  `original` is the message as queued (CRLF or LF lines).
    Its body is returned only when `include_body` is true, it is at most
    MAX_RETURNED_BODY bytes, and it is 7-bit; otherwise only its headers are.
    `retry_until` (for delayed recipients) and the dates are Unix times.
    Raises ValueError for no recipients, an empty `to`, or a malformed action or status.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if not to:
        raise ValueError("no DSN is sent for a message whose sender was <>")
    for r in recipients:
        if r.action not in ("failed", "delayed") or not _STATUS.fullmatch(r.status):
            raise ValueError(f"bad action/status for {r.address!r}: {r.action!r} {r.status!r}")
    now = time.time() if now is None else now
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action == "delayed"]

    # Raw UTF-8 headers only when an address demands it (see the module docstring).
    utf8 = not (to.isascii() and postmaster.isascii())
    from email.headerregistry import Address
    from email.policy import SMTP, SMTPUTF8
    msg = EmailMessage(policy=SMTPUTF8 if utf8 else SMTP)
    msg["From"] = Address("Mail Delivery System", addr_spec=postmaster)
    msg["To"] = to
    msg["Subject"] = ("Undelivered Mail Returned to Sender" if failed
                      else "Delayed Mail (still being retried)")
    msg["Date"] = formatdate(now, localtime=True)
    msg["Message-ID"] = make_msgid("dsn", domain=reporting_mta)
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: no vacation reply to a bounce
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/report; report-type=delivery-status"

    returned, whole = _returned_part(original, include_body)
    human = MIMEPart(policy=_part_policy())
    human.set_content(_explain(reporting_mta, failed, delayed, retry_until, whole), charset="utf-8")
    human["Content-Description"] = "Notification"

    blocks = [_block([("Reporting-MTA", "dns; " + _one_line(reporting_mta, 255, True)),
                      ("X-ISMail-Queue-ID", _one_line(queue_id, 255, True)),
                      ("Arrival-Date", formatdate(arrival, localtime=True))])]
    for r in recipients:
        fields = [("Final-Recipient", _address_field(r.address)),
                  ("Action", r.action), ("Status", r.status)]
        if r.remote_mta:
            fields.append(("Remote-MTA", "dns; " + _one_line(r.remote_mta, 255, True)))
        diag = _one_line(r.diagnostic, MAX_DIAGNOSTIC, ascii_only=True)
        if diag:
            # "smtp" promises an SMTP reply (RFC 3464 §2.3.6); our own errors get an X- type.
            kind = "smtp" if _SMTP_REPLY.match(diag) else "X-ISMail"
            fields.append(("Diagnostic-Code", f"{kind}; {diag}"))
        fields.append(("Last-Attempt-Date", formatdate(now, localtime=True)))
        if r.action == "delayed" and retry_until is not None:
            fields.append(("Will-Retry-Until", formatdate(retry_until, localtime=True)))
        blocks.append(_block(fields))
    status = MIMEPart(policy=_part_policy())
    status["Content-Type"] = "message/delivery-status"
    status["Content-Description"] = "Delivery report"
    status.set_payload(blocks)
    for part in (human, status, returned):
        msg.attach(part)
    return msg.as_bytes()


def is_bounce_loop(original: bytes, limit: int = 50) -> bool:
    """True when the header block has more than `limit` Received: fields (RFC 5321 §6.3)."""
    return len(_RECEIVED.findall(_header_block(original))) > limit
