"""The SMTP conversation (RFC 5321) as a state machine: bytes in, reply bytes out.

A Session owns no socket.  The receiver feeds it whatever arrived
(``feed(data)``) and sends back what it returns; every complete line in the input
is answered in order, so a pipelining client (RFC 2920) gets its replies in one
write.  Each verb is a method ``smtp_<VERB>`` found by name, as in aiosmtpd.

What the session needs from the server is small: the settings in force when the
connection arrived, the counters, a mailbox lookup and ``accept_message`` (which
makes the message durable and raises OSError when it cannot).

The message text after DATA is read by dataread.DataReader (only CRLF.CRLF ends
it); AUTH's PLAIN and LOGIN exchanges live in net/sasl.py.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from ..config import host_name_problem
from ..net import sasl
from .addresses import AddressSyntaxError, Path as SmtpPath, parse_argument
from .policy import Policy
from .routing import Routing
from ..fsutil import new_queue_id
from .replies import is_error, multiline, reply
from .dataread import BARE, LONG, SIZE, STORAGE, TEXT_LINE_LIMIT, DataReader
from ..queue.spool import MessageBuffer
from ..stats import Stats

if TYPE_CHECKING:
    from ..service import StagedMessage as Staged
    from ..antispam.engine import ClientChecks
    from ..store.addressbook import Expansion

log = logging.getLogger("ismail.session")

COMMAND_LINE_LIMIT = 512      # octets including CRLF (RFC 5321 §4.5.3.1.4)
MAIL_EXTENSION_ALLOWANCE = 64  # SIZE=, BODY= and SMTPUTF8 lengthen MAIL FROM (RFC 1870 §3)
MAX_RECIPIENTS = 1000
# The loop takes a message's end itself (feed(stage=True)) only up to this size: its text
# is parsed in the loop, and a larger one would keep the other clients waiting.
STAGE_MAX = 64 << 10
MAX_ERRORS = 20               # Postfix's smtpd_hard_error_limit

HELP_TEXT = ["2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY ETRN",
             "2.0.0 See RFC 5321. End data with <CR><LF>.<CR><LF>"]


class Server(Protocol):
    """What a session asks of the mail server (MailServer implements it)."""

    stats: Stats
    spill_dir: Path

    def lookup_mailbox(self, local: str, domain: str) -> Path | None: ...
    def lookup_forwards(self, local: str, domain: str) -> list[str]: ...
    def is_alias_domain(self, domain: str) -> bool: ...  # delivers as one of our domains
    def expand(self, address: str, sender: str, sender_is_local: bool) -> "Expansion": ...
    def fits(self, address: str, box: Path, size: int) -> bool: ...  # under the account's quota
    def over_quota(self, envelope: "Envelope") -> list[str]: ...
    def relay_accepts(self, address: str) -> bool | None: ...  # None: not a relay domain
    def etrn(self, domain: str) -> int | None: ...  # messages now sent on; None: not allowed
    def reverse_srs(self, address: str) -> str | None: ...  # None: not an SRS address of ours
    def accept_message(self, envelope: "Envelope", body: MessageBuffer) -> None: ...
    def stage_message(self, envelope: "Envelope", body: MessageBuffer) -> "Staged | None": ...
    def check_login(self, address: str, password: str, ip: str) -> str: ...  # ok | failed | banned
    def strike(self, ip: str, why: str) -> bool: ...  # counts towards a ban; True when one starts


@dataclass
class Envelope:
    id: str
    sender: str
    recipients: list[str] = field(default_factory=list)
    mailboxes: dict[str, Path] = field(default_factory=dict)  # local recipients -> Maildir
    forwarded: set[str] = field(default_factory=set)  # remote copies an account forwards
    helo: str = ""
    client_ip: str = ""
    protocol: str = "SMTP"
    smtputf8: bool = False
    body_type: str = "7BIT"
    received_at: float = 0.0
    size: int = 0
    folder: str = ""         # local copies go into this folder ("Junk" when tagged as spam)
    auth_header: bytes = b""  # Authentication-Results (and X-Spam) lines for local copies
    authenticated: str = ""   # the account the client logged in as
    via: dict[str, str] = field(default_factory=dict)  # account -> the alias/group it came through
    over_quota: list[str] = field(default_factory=list)  # left out: mailbox full (reported after)
    # From our own side: a logged-in client, a trusted network, or ISMail itself (a bounce).
    # Only such mail is DKIM-signed, as OpenDKIM signs only for its InternalHosts and logins.
    internal: bool = False

    @property
    def remote_recipients(self) -> list[str]:
        return [r for r in self.recipients if r not in self.mailboxes]

    def received_header(self, server_name: str) -> bytes:
        """The trace header of RFC 5321 §4.4 (`for` only when there is one recipient)."""
        ip = f"IPv6:{self.client_ip}" if ":" in self.client_ip else self.client_ip
        lines = [f"Received: from {self.helo or 'unknown'} ([{ip}])",
                 f"\tby {server_name} (ISMail) with {self.protocol} id {self.id}"]
        date = _date_of_second(int(self.received_at))
        if len(self.recipients) == 1:
            lines.append(f"\tfor <{self.recipients[0]}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    """The RFC 5322 date of a Received line: made once a second, not once a message."""
    return formatdate(second, localtime=True)


class Session(Routing):
    def __init__(self, server: Server, policy: Policy, client_ip: str, trusted: bool,
                 tls_available: bool = False, tls_active: bool = False, submission: bool = False,
                 checks: "ClientChecks | None" = None) -> None:
        self.server = server
        self.policy = policy      # a connection keeps the settings it started with
        self.settings = policy.settings
        self.client_ip = client_ip
        self.trusted = trusted
        self.tls_available = tls_available  # a certificate is configured
        self.tls_active = tls_active        # the connection is encrypted (STARTTLS done, or port 465)
        self.submission = submission        # this listener wants AUTH before relaying
        self.authenticated = ""             # the account that logged in
        self.starttls = False               # STARTTLS answered: the receiver upgrades, then tls_started()
        self.delay = 0.0                    # seconds the receiver waits before answering (tarpit)
        self.lines = 0                      # complete lines received: progress, for the time-outs
        self.helo: str | None = None
        self.esmtp = False
        self.errors = 0
        self.closing = False          # QUIT answered or too many errors: hang up after sending
        self.quit = False             # the client said QUIT
        self.messages = 0
        self._buf = bytearray()
        self._skip_line = False       # discarding the rest of an over-long command line
        self._auth_step: sasl.Exchange | None = None  # the next line answers its challenge
        self._unknown_rcpts = 0
        self._pipelined = False       # more input follows the command being handled
        self._stage = False           # this feed may leave a message's end to settle()
        self.pending: "tuple[Staged, Envelope, DataReader] | None" = None  # see settle()
        self.after_reply: Callable[[], None] | None = None  # see settle()
        self.checks = checks          # anti-spam checks (None: a trusted client)
        self._reset()

    # -- the receiver's side ---------------------------------------------------------------
    def greeting(self) -> bytes:
        return reply(220, "", f"{self.settings.server_name} ESMTP ISMail")

    @property
    def in_data(self) -> bool:
        return self._data is not None

    @property
    def in_transaction(self) -> bool:
        """Between MAIL and the end of DATA: a stop waits for this to finish."""
        return self._mail is not None or self._data is not None

    @property
    def awaiting_answer(self) -> bool:
        """An AUTH challenge is out: the next line is its answer."""
        return self._auth_step is not None

    def may_block(self, data: bytes, stage: bool = False) -> str:
        """What ``feed(data, stage)`` could wait for: "" (nothing), "disk" (the end of a
        message is made durable; not for a small one with ``stage``, which is staged
        instead), "login" (a password check) or "dns" (the anti-spam verdicts at MAIL).

        The receiver's loop (net.reactor) feeds only input that waits for nothing; anything
        else goes to a thread.  Erring towards waiting costs a hand-over, never a wrong answer.
        """
        if self._auth_step is not None or self.delay:
            return "login"
        if self._data is not None:
            return "" if stage and self._stageable(self._data.buffer.size + len(data)) else "disk"
        text = bytes(self._buf) + data if self._buf else data
        upper = text.upper()
        if b"AUTH" in upper:
            return "login"
        if (self.checks is not None and not self.authenticated and b"MAIL" in upper
                and self.checks.may_wait(text, self.helo)):
            return "dns"  # the anti-spam verdicts (DNSBL, rDNS, SPF) are waited for at MAIL
        at = upper.find(b"DATA")
        while at >= 0:  # DATA with more input after its line: the text (and its end) may be there
            eol = upper.find(b"\n", at)
            if eol >= 0 and eol + 1 < len(upper):
                return "" if stage and self._stageable(len(text)) else "disk"
            at = upper.find(b"DATA", at + 4)
        return ""

    @property
    def buffered(self) -> bool:
        """Input received and not yet fed (what a client pipelined after a staged message)."""
        return bool(self._buf)

    @property
    def pending_local(self) -> bool:
        """Is the staged message (``pending``) for our own mailboxes only?"""
        return self.pending is not None and self.pending[0].local

    def _stageable(self, size: int) -> bool:
        """Can the end of the message under way (``size`` bytes at most so far) be staged:
        stored without waiting for the disk, its 250 sent by ``settle()`` later?  Mail for
        our own mailboxes only or for elsewhere only (MailServer.stage_message has the last
        word), not checked (the checks may ask DNS), and small."""
        return (size <= STAGE_MAX and not self._checked and not self._forwarded
                and bool(self._rcpts) and len(self._mailboxes) in (0, len(self._rcpts)))

    def durable(self) -> None:
        """Wait until the journal's sync holds the staged message (``pending``), in a
        thread that may wait: ``settle()`` then waits for nothing.  A failed sync is
        left for ``settle()`` to answer."""
        if self.pending is not None:
            self.pending[0].durable()

    def write_ahead(self) -> bool:
        """The staged message's file written ahead of ``settle()`` (which then only
        renames it), in a thread that may wait; False when it has none (mail to send
        on only, or writing failed: ``settle()`` does it all then)."""
        return self.pending is not None and self.pending[0].write_ahead()

    def settle(self) -> bytes:
        """The reply to the message ``feed(stage=True)`` staged (``pending``), once the
        journal's sync holds it and its files are in place: its 250, or the 452 a failure
        gets.  In a thread that may wait; the feed after this one goes on with the input
        that followed the message (a client that pipelines).  ``after_reply`` is then what
        is left to do once the reply is sent (the message's log line), or None."""
        staged, envelope, reader = self.pending
        self.pending = None
        stats = self.server.stats
        try:
            staged.finish()
        except OSError as e:
            log.error("%s: could not store message from <%s>: %s", self.client_ip, envelope.sender, e)
            return self._settled(reply(452, "4.3.1", "Insufficient system storage, try again later"))
        except Exception:
            log.exception("%s: unexpected error while storing a message", self.client_ip)
            return self._settled(reply(451, "4.3.0", "Local error in processing, try again later"))
        finally:
            reader.close()
        self.messages += 1
        stats.add("messages_received")
        stats.add("bytes_received", envelope.size)
        self.after_reply = getattr(staged, "log", None)
        return reply(250, "2.0.0", f"Ok: queued as {envelope.id}")

    def _settled(self, answer: bytes) -> bytes:
        out: list[bytes] = []
        self._answer(out, answer)
        return b"".join(out)

    def feed(self, data: bytes, stage: bool = False) -> bytes:
        """Take bytes from the client; return every reply due, in order.

        With ``stage`` (the receiver's loop, which must not wait for the disk) the end of a
        message that ``may_block`` found stageable may be left pending: the replies up to
        it are returned, the input after it is kept, and ``settle()`` gives its reply."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        self._stage = stage
        while not self.closing:
            if self._data is not None:
                before = self._data.lines
                pos, ended = self._data.feed(buf, pos)
                self.lines += self._data.lines - before
                if not ended:
                    break
                answer = self._end_of_data()
                if self.pending is not None:
                    break  # what follows waits for this message's reply
                self._answer(out, answer)
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) - pos > COMMAND_LINE_LIMIT + MAIL_EXTENSION_ALLOWANCE:
                    pos = len(buf)
                    if not self._skip_line:
                        self._skip_line = True
                        self._answer(out, reply(500, "5.5.2", "Error: line too long"))
                break
            line = bytes(buf[pos:nl + 1])
            pos = nl + 1
            self.lines += 1
            if self._skip_line:  # the tail of an over-long line that was already answered
                self._skip_line = False
                continue
            self._pipelined = pos < len(buf)
            if self._auth_step is not None:
                self._answer(out, self._auth_response(line))
            else:
                self._answer(out, self._command(line))
            if self.starttls:
                # Whatever the client sent after STARTTLS was sent in the clear and must not
                # be taken as coming over TLS (CVE-2011-0411): it is thrown away.
                pos = len(buf)
                break
        del buf[:pos]
        if self.closing:
            buf.clear()
        return b"".join(out)

    def tls_started(self) -> None:
        """The handshake after STARTTLS succeeded: the session starts over (RFC 3207 §4.2)."""
        self.starttls = False
        self.tls_active = True
        self.helo, self.esmtp = None, False
        self.authenticated = ""  # RFC 3207 §4.2: forget everything learnt before TLS
        self._buf.clear()
        self._reset()

    def timeout_reply(self) -> bytes:
        self.closing = True
        return reply(421, "4.4.2", f"{self.settings.server_name} Error: timeout exceeded")

    def shutdown_reply(self) -> bytes:
        self.closing = True
        return reply(421, "4.3.2", f"{self.settings.server_name} Service shutting down, try again later")

    # -- commands ------------------------------------------------------------------------------
    def _answer(self, out: list[bytes], data: bytes) -> None:
        out.append(data)
        if is_error(data) and not self.closing:
            self.errors += 1
            self.server.stats.add("protocol_errors")
            if self.errors >= MAX_ERRORS:
                self.closing = True
                out.append(reply(421, "4.7.0", f"{self.settings.server_name} Error: too many errors"))

    def _command(self, raw: bytes) -> bytes:
        line_limit = COMMAND_LINE_LIMIT
        if raw[:5].upper() == b"MAIL ":
            line_limit += MAIL_EXTENSION_ALLOWANCE
        if len(raw) > line_limit:
            return reply(500, "5.5.2", "Error: line too long")
        try:
            line = raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError:
            return reply(500, "5.5.2", "Error: command is not valid UTF-8")
        if not line.isprintable():
            return reply(500, "5.5.2", "Error: control characters in command")
        verb, _, arg = line.partition(" ")
        handler = getattr(self, "smtp_" + verb.upper(), None) if verb.isalpha() else None
        if handler is None:
            if verb.upper() in ("STARTTLS", "AUTH", "BDAT", "ETRN", "TURN", "ATRN", "SEND", "SOML", "SAML"):
                return reply(502, "5.5.1", f"Error: {verb.upper()} not implemented")
            return reply(500, "5.5.2", "Error: command not recognized")
        return handler(arg.strip())

    def smtp_EHLO(self, arg: str) -> bytes:
        bad = self._helo_error(arg)
        if bad:
            return bad
        self.helo, self.esmtp = arg, True
        self._reset()
        return multiline(250, [f"{self.settings.server_name} Hello {arg} [{self.client_ip}]",
                               *self.extensions()])

    def extensions(self) -> list[str]:
        """The EHLO keywords, in one place (STARTTLS and AUTH join here when they exist)."""
        keywords = ["PIPELINING", f"SIZE {self.settings.max_message_bytes}", "8BITMIME",
                    "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self.tls_available and not self.tls_active:
            keywords.append("STARTTLS")
        if self._auth_offered() and not self.authenticated:
            keywords.append("AUTH PLAIN LOGIN")
        return keywords + ["ETRN", "HELP"]

    def _auth_offered(self) -> bool:
        """Passwords only over TLS, or from trusted networks, unless auth.allow_plaintext."""
        return self.tls_active or self.trusted or self.settings.auth.allow_plaintext

    @property
    def may_relay(self) -> bool:
        if self.authenticated:
            return True
        return self.trusted and not (self.submission or self.settings.auth.require_for_relay)

    def smtp_HELO(self, arg: str) -> bytes:
        bad = self._helo_error(arg)
        if bad:
            return bad
        self.helo, self.esmtp = arg, False
        self._reset()
        return reply(250, "", self.settings.server_name)

    def _helo_error(self, arg: str) -> bytes | None:
        if not arg:
            return reply(501, "5.5.4", "Syntax: EHLO hostname")
        if " " in arg or len(arg) > 255:
            return reply(501, "5.5.4", "Error: invalid host name")
        return None

    def smtp_STARTTLS(self, arg: str) -> bytes:
        if self.tls_active:
            return reply(503, "5.5.1", "Error: TLS is already active")
        if not self.tls_available:
            return reply(502, "5.5.1", "Error: STARTTLS not available (no certificate configured)")
        if arg:
            return reply(501, "5.5.4", "Syntax: STARTTLS")
        self.starttls = True
        return reply(220, "2.0.0", "Ready to start TLS")

    def smtp_AUTH(self, arg: str) -> bytes:
        if not self.esmtp:
            return reply(503, "5.5.1", "Error: send EHLO first")
        if self.authenticated:
            return reply(503, "5.5.1", "Error: already authenticated")
        if self._mail is not None:
            return reply(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")
        if not self._auth_offered():
            return reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
        mechanism, _, initial = arg.partition(" ")
        exchange = sasl.Exchange(mechanism)
        return self._auth_next(exchange, exchange.start(initial.strip()))

    def _auth_response(self, raw: bytes) -> bytes:
        exchange, self._auth_step = self._auth_step, None
        return self._auth_next(exchange, exchange.step(raw.rstrip(b"\r\n").decode("ascii", "replace")))

    def _auth_next(self, exchange: sasl.Exchange, outcome: sasl.Outcome) -> bytes:
        if isinstance(outcome, sasl.Credentials):
            return self._login(outcome.user, outcome.password)
        if isinstance(outcome, sasl.Challenge):
            self._auth_step = exchange  # the next line is the answer to this challenge
            return f"334 {outcome.b64}\r\n".encode("ascii")
        if outcome.kind == sasl.UNKNOWN_MECHANISM:
            return reply(504, "5.5.4", outcome.reason)
        if outcome.kind == sasl.CANCELLED:
            return reply(501, "5.7.0", outcome.reason)
        return reply(501, "5.5.2", outcome.reason)

    def _login(self, user: str, password: str) -> bytes:
        address = user.strip().lower()
        if "@" not in address:
            address = f"{address}@{self.settings.primary_domain}"
        outcome = self.server.check_login(address, password, self.client_ip)
        if outcome == "ok":
            self.authenticated = address
            log.info("%s: logged in as %s", self.client_ip, address)
            return reply(235, "2.7.0", "Authentication successful")
        if outcome == "banned":
            self.closing = True
            return reply(421, "4.7.0", f"{self.settings.server_name} Too many failed logins, "
                                       "try again later")
        return reply(535, "5.7.8", "Authentication credentials invalid")

    def smtp_MAIL(self, arg: str) -> bytes:
        if self.helo is None:
            return reply(503, "5.5.1", "Error: send HELO/EHLO first")
        if self._mail is not None:
            return reply(503, "5.5.1", "Error: nested MAIL command")
        try:
            path, params = parse_argument(arg, "FROM")
        except AddressSyntaxError as e:
            return reply(501, "5.1.7", f"Bad sender address syntax: {e}")
        if params and not self.esmtp:
            return reply(555, "5.5.4", "MAIL parameters need EHLO")
        smtputf8, body, declared = False, "7BIT", 0
        for key, value in params.items():
            if key == "SIZE":
                if not value or not value.isdigit():
                    return reply(501, "5.5.4", "Bad SIZE parameter")
                if int(value) > self.settings.max_message_bytes:
                    return reply(552, "5.3.4", "Message size exceeds fixed limit")
                declared = int(value)
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    return reply(501, "5.5.4", "Bad BODY parameter (7BIT or 8BITMIME)")
                body = value.upper()
            elif key == "SMTPUTF8" and value is None:
                smtputf8 = True
            else:
                return reply(555, "5.5.4", f"Unsupported MAIL parameter {key}")
        if not path.is_ascii and not smtputf8:
            return reply(553, "5.6.7", "Sender address needs SMTPUTF8")
        if (self.authenticated and self.settings.auth.enforce_sender
                and path.address.lower() != self.authenticated):
            return reply(553, "5.7.1", f"<{path.address}>: Sender address rejected: "
                                       f"not owned by {self.authenticated}")
        if self._checked:
            refusal = self.checks.mail(path.address, self.helo)
            if refusal is not None:
                return refusal
        self._mail = path
        self._smtputf8, self._body, self._declared = smtputf8, body, declared
        return reply(250, "2.1.0", "Ok")

    @property
    def _checked(self) -> bool:
        """Does this session's mail go through the anti-spam checks?"""
        return self.checks is not None and not self.authenticated

    def smtp_RCPT(self, arg: str) -> bytes:
        if self._mail is None:
            return reply(503, "5.5.1", "Error: need MAIL command")
        if len(self._rcpts) >= MAX_RECIPIENTS:
            return reply(452, "4.5.3", "Error: too many recipients")
        try:
            path, params = parse_argument(arg, "TO")
        except AddressSyntaxError as e:
            return reply(501, "5.1.3", f"Bad recipient address syntax: {e}")
        if path.null:
            return reply(501, "5.1.3", "Bad recipient address syntax: empty address")
        if params:
            return reply(555, "5.5.4", f"Unsupported RCPT parameter {next(iter(params))}")
        if not path.is_ascii and not self._smtputf8:
            return reply(553, "5.6.7", "Recipient address needs SMTPUTF8")
        answer = self._route(path)
        if answer[:1] == b"5":
            log.info("%s: RCPT <%s> refused: %s", self.client_ip, path.address,
                     answer.decode("utf-8", "replace").strip())
        return answer

    def smtp_DATA(self, arg: str) -> bytes:
        if arg:
            return reply(501, "5.5.4", "Syntax: DATA")
        if self._mail is None:
            return reply(503, "5.5.1", "Error: need MAIL command")
        if not self._rcpts:
            return reply(554, "5.5.1", "Error: no valid recipients")
        if self._pipelined:
            # RFC 2920: DATA ends a pipelined group; text sent before our 354 means the
            # client does not follow the protocol (or is smuggling): we stop talking.
            self.closing = True
            self._reset()
            return reply(554, "5.5.0", "Error: improper use of SMTP command pipelining "
                                       "(data sent before the 354 reply)")
        self._data = DataReader(MessageBuffer(self.server.spill_dir), self.settings.max_message_bytes)
        return reply(354, "", "End data with <CR><LF>.<CR><LF>")

    def smtp_RSET(self, arg: str) -> bytes:
        if arg:
            return reply(501, "5.5.4", "Syntax: RSET")
        self._reset()
        return reply(250, "2.0.0", "Ok")

    def smtp_NOOP(self, arg: str) -> bytes:
        return reply(250, "2.0.0", "Ok")

    def smtp_QUIT(self, arg: str) -> bytes:
        self.closing = self.quit = True
        self._reset()
        return reply(221, "2.0.0", "Bye")

    def smtp_HELP(self, arg: str) -> bytes:
        return multiline(214, HELP_TEXT)

    def smtp_VRFY(self, arg: str) -> bytes:
        if not arg:
            return reply(501, "5.5.4", "Syntax: VRFY address")
        # Never confirm or deny an account: that would hand out the user list.
        return reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_ETRN(self, arg: str) -> bytes:
        """RFC 1985: a domain's primary server, back up, asks us (its backup MX) to send what we
        hold for it now.  Only relay domains may be named; anyone may ask, as it only moves
        mail towards its rightful servers sooner."""
        if self.helo is None:
            return reply(503, "5.5.1", "Error: send HELO/EHLO first")
        if self._mail is not None:
            return reply(503, "5.5.1", "Error: ETRN is not allowed inside a mail transaction")
        if not arg or " " in arg:
            return reply(501, "5.5.4", "Syntax: ETRN domain")
        if arg.startswith("#"):
            return reply(458, "4.5.1", f"Unable to queue messages for node {arg}: queue names "
                                       "are not supported")
        node = arg.lstrip("@").rstrip(".").lower()
        if host_name_problem(node):
            return reply(501, "5.5.4", f"Syntax: ETRN domain ({node!r} is not a domain name)")
        count = self.server.etrn(node)
        if count is None:
            return reply(459, "4.7.1", f"Node {node} not allowed: not a relay domain of this server")
        if count == 0:
            return reply(251, "2.0.0", f"OK, no messages waiting for node {node}")
        return reply(253, "2.0.0", f"OK, {count} pending messages for node {node} started")

    def smtp_EXPN(self, arg: str) -> bytes:
        return reply(502, "5.5.1", "Error: EXPN not available")

    def _reset(self) -> None:
        self._mail: SmtpPath | None = None
        self._rcpts: list[str] = []
        self._mailboxes: dict[str, Path] = {}
        self._forwarded: set[str] = set()
        self._smtputf8 = False
        self._body = "7BIT"
        self._declared = 0
        self._via: dict[str, str] = {}
        buffer = getattr(self, "_data", None)
        if buffer is not None:
            buffer.close()
        self._data: DataReader | None = None

    # -- DATA -------------------------------------------------------------------------------
    def _end_of_data(self) -> bytes:
        flaw, data = self._data.flaw, self._data.buffer
        stats = self.server.stats
        try:
            if flaw == BARE:
                stats.add("messages_refused")
                return reply(550, "5.5.2", "Message refused: bare CR or LF in the text "
                                           "(lines must end with CRLF)")
            if flaw == LONG:
                stats.add("messages_refused")
                return reply(550, "5.5.2", f"Message refused: a line is longer than "
                                           f"{TEXT_LINE_LIMIT} octets")
            if flaw == SIZE:
                stats.add("messages_refused")
                return reply(552, "5.3.4", "Message size exceeds fixed limit")
            if flaw == STORAGE:
                log.error("%s: could not keep the message text: %s", self.client_ip, self._data.error)
                return reply(452, "4.3.1", "Insufficient system storage, try again later")
            protocol = ("UTF8SMTP" if self._smtputf8 else "ESMTP") if self.esmtp else "SMTP"
            if self.tls_active:
                protocol += "S"
            if self.authenticated:
                protocol += "A"
            envelope = Envelope(
                id=new_queue_id(), sender=self._mail.address, recipients=list(self._rcpts),
                mailboxes=dict(self._mailboxes), forwarded=set(self._forwarded),
                helo=self.helo or "", client_ip=self.client_ip,
                protocol=protocol, smtputf8=self._smtputf8, body_type=self._body,
                received_at=time.time(), size=data.size, authenticated=self.authenticated,
                via=dict(self._via), internal=bool(self.authenticated) or self.trusted)
            # Also mail a stranger sends only on (a relay domain we are the backup MX for):
            # the primary will trust it as coming from us, so its checks happen here or nowhere.
            if self._checked:
                refusal = self._verdict(envelope, data)
                if refusal is not None:
                    stats.add("messages_refused")
                    return refusal
            full = self.server.over_quota(envelope) if envelope.mailboxes else []
            if full:
                for address in full:
                    del envelope.mailboxes[address]
                    envelope.recipients.remove(address)
                if not envelope.recipients:
                    stats.add("messages_refused")
                    return reply(552, "5.2.2", f"Mailbox full: {', '.join(full)}")
                envelope.over_quota = full  # the others get it; the sender hears of these
            try:
                if self._stage and self._stageable(data.size):
                    staged = self.server.stage_message(envelope, data)
                    if staged is not None:
                        # The reader (and its buffer) now belong to the staged message.
                        self.pending, self._data = (staged, envelope, self._data), None
                        return b""
                self.server.accept_message(envelope, data)
            except OSError as e:
                log.error("%s: could not store message from <%s>: %s", self.client_ip,
                          envelope.sender, e)
                return reply(452, "4.3.1", "Insufficient system storage, try again later")
            except Exception:
                log.exception("%s: unexpected error while storing a message", self.client_ip)
                return reply(451, "4.3.0", "Local error in processing, try again later")
            self.messages += 1
            stats.add("messages_received")
            stats.add("bytes_received", envelope.size)
            return reply(250, "2.0.0", f"Ok: queued as {envelope.id}")
        finally:
            self._reset()

    def _verdict(self, envelope: Envelope, data: MessageBuffer) -> bytes | None:
        """The checks after DATA: a refusal, or None with the folder and the
        Authentication-Results header set on ``envelope`` (for its local copies; a copy
        relayed on leaves as it came)."""
        verdict = self.checks.message(b"".join(data.chunks()))
        if verdict.reply is not None:
            log.info("%s: message from <%s> refused: %s", self.client_ip, envelope.sender,
                     verdict.reply.decode("utf-8", "replace").strip())
            return verdict.reply
        envelope.folder, envelope.auth_header = verdict.folder, verdict.header
        return None
