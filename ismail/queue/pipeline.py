"""SMTP PIPELINING (RFC 2920) on top of smtplib, for the sender.

A pipelined transaction writes MAIL FROM, every RCPT TO and DATA together and then
reads their replies in order: one round trip instead of one per command.  DATA must
end the group (§3.1), so the message text is only sent after DATA's 354, by which
time every earlier reply has been read.  The text may begin a group (§3.1: "the
actual transfer of message content is explicitly allowed to be the first command in
a group"): when the next message goes over the same connection, one message's text
and its "." go in one write with the next one's MAIL, RCPTs and DATA (``replies``'
``prefix``), so each message after the first costs one round trip, not two.

smtplib reads replies from ``smtp.file``, a buffered reader, so several replies that
arrive in one packet are taken one after another by ``smtp.getreply()``.  Commands
are written exactly as ``smtplib.SMTP.mail()``/``rcpt()`` write them, in the same
encoding (``command_encoding``, UTF-8 after SMTPUTF8), and the text is dot-stuffed
as ``smtplib.SMTP.data()`` does for bytes.

This module knows the wire, not the policy: what a refusal means for each recipient
is decided by ``sender.Sender``.
"""
from __future__ import annotations

import re
import smtplib
from typing import Iterator

from ..textutil import contains

# Commands in flight at most.  A server answers each command as it reads it; with
# thousands of recipients its replies could fill both socket buffers while we are
# still writing, and neither side would read again.  A window never lets that happen,
# and one of this size keeps an ordinary transaction (the scheduler sends 50
# recipients at most) in one write.
WINDOW = 100

# An address with nothing smtplib.quoteaddr() would parse away or change (no quotes,
# comments, spaces, brackets or route syntax): quoteaddr() gives "<address>" for it,
# without its parse through email.utils (~10 us an address in the delivery process).
_PLAIN_ADDRESS = re.compile(r"[^\s()<>\"\\,;:\[\]@]+@[^\s()<>\"\\,;:\[\]@]+")


def quoteaddr(address: str) -> str:
    """``smtplib.quoteaddr(address)``, faster for the usual address."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def envelope(smtp: smtplib.SMTP, sender: str, options: list[str], recipients: list[str]) -> list[str]:
    """MAIL, the RCPTs and DATA, as smtplib would write them one by one."""
    optionlist = ""
    if options and smtp.does_esmtp:
        if any(o.lower() == "smtputf8" for o in options):
            smtp.command_encoding = "utf-8"  # what smtplib.SMTP.mail() switches to
        optionlist = " " + " ".join(options)
    commands = [f"mail FROM:{quoteaddr(sender)}{optionlist}"]
    commands += [f"rcpt TO:{quoteaddr(r)}" for r in recipients]
    commands.append("data")
    for command in commands:
        if "\r" in command or "\n" in command:  # smtplib's putcmd() refuses these too
            raise ValueError(f"command contains a line break: {command!r}")
    return commands


def replies(smtp: smtplib.SMTP, commands: list[str], prefix: bytes = b"") -> Iterator[tuple[int, bytes]]:
    """Write ``commands`` without waiting and yield their replies, one per command, in order.

    The first WINDOW commands go in one write; each further window is written once
    the replies to the one before have been read.  ``prefix``, the text of the message
    before as ``wire_text`` gives it, goes first in that same write, and its reply is
    the first one yielded.
    """
    written = 0
    if prefix:
        window = commands[:WINDOW]
        smtp.send(prefix + "".join(c + "\r\n" for c in window).encode(smtp.command_encoding))
        written = len(window)
        yield smtp.getreply()
    for i in range(len(commands)):
        if i == written:
            window = commands[written:written + WINDOW]
            smtp.send("".join(c + "\r\n" for c in window))
            written += len(window)
        yield smtp.getreply()


# A reply line (RFC 5321 §4.2): a code from 200 to 599, then a space, a hyphen (more lines
# follow) or the end of the line.
_REPLY_LINE = re.compile(rb"[2-5][0-9][0-9](?:[ -]|\r?\n?$)")
MAX_REPLY_LINES = 1000  # a multi-line reply longer than this is a server talking nonsense


class ProtocolError(smtplib.SMTPException):
    """The server said something that is no SMTP reply.  Which command the following
    replies belong to is then unknown, so the connection is closed at once."""


class CheckedReplies:
    """``smtplib.SMTP.getreply`` that refuses what is no SMTP reply, for the sender.

    smtplib takes a line without a reply code as a reply of its own (code -1) and leaves
    what follows to be read as the reply to the next command.  With PIPELINING (or a
    server that answers one command twice) every later reply is then read as another
    command's: a RCPT's 250 could pass for the end of a message that was never taken.  A
    line that is no reply line closes the connection instead, and the messages it carried
    wait in the queue: at worst sent twice, never lost.  (Postfix reads such lines as part
    of the reply and warns that mail may be lost with PIPELINING.)
    """

    def getreply(self):
        lines = []
        if self.file is None:
            self.file = self.sock.makefile("rb")
        while True:
            try:
                line = self.file.readline(smtplib._MAXLINE + 1)
            except OSError as e:
                self.close()
                raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {e}")
            if not line:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            if len(line) > smtplib._MAXLINE:
                self.close()
                raise smtplib.SMTPResponseException(500, "Line too long.")
            if not _REPLY_LINE.match(line):
                self.close()
                text = line.rstrip(b"\r\n").decode("utf-8", "replace")[:80]
                raise ProtocolError(f"protocol error: the server answered {text!r}, "
                                    "which is no SMTP reply")
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)
            if len(lines) >= MAX_REPLY_LINES:
                self.close()
                raise ProtocolError(f"protocol error: a reply of more than {MAX_REPLY_LINES} lines")


class SMTP(CheckedReplies, smtplib.SMTP):
    pass


class SMTP_SSL(CheckedReplies, smtplib.SMTP_SSL):
    pass


def wire_text(data: bytes) -> bytes:
    """The message as it goes after DATA's 354: dot-stuffed, ended with CRLF "." CRLF."""
    # Every line that starts with a dot gets one more (RFC 5321 §4.5.2).  bytes.replace
    # rather than a regular expression: a 100 KB message in ~0.1 ms instead of ~0.4; and
    # only if there is one (its search for none is the slow one: textutil.contains).
    text = data.replace(b"\n.", b"\n..") if contains(data, b"\n.") else data
    if text[:1] == b".":
        text = b"." + text
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text + b".\r\n"


def send_text(smtp: smtplib.SMTP, data: bytes) -> tuple[int, bytes]:
    """After DATA's 354: the message dot-stuffed and ended with "."; the final reply."""
    smtp.send(wire_text(data))
    return smtp.getreply()


def end_empty(smtp: smtplib.SMTP) -> tuple[int, bytes]:
    """A 354 nobody should have got (no sender or no recipient accepted): a lone "." ends
    the message without sending a byte of it (RFC 2920 §3.1)."""
    smtp.send(b".\r\n")
    return smtp.getreply()
