"""The POP3 conversation (RFC 1939) as a state machine: bytes in, reply bytes out.

Like smtp.session, a Pop3Session owns no socket.  The connection feeds it what
arrived and sends what ``feed`` returns; every complete line is answered in order, so
a pipelining client (RFC 2449) gets its answers together.  Each verb is a method
``pop3_<VERB>`` found by name, and ``@allowed_in`` says in which state it may be used.

The states are RFC 1939's: AUTHORIZATION until a login opens the maildrop, then
TRANSACTION.  UPDATE is the inside of QUIT, and it is the one place where messages
are deleted (``Maildrop.commit``).  A session that ends any other way (dropped, timed
out, server stopping) deletes nothing: ``close`` lets go of the maildrop.

A message is never read into memory.  RETR and TOP answer with a generator that
reads the maildrop's chunks, dot-stuffs them and ends with ".", and the connection
sends it as it goes.  What the client pipelined after a RETR is handled only once the
message has gone out (``_rest``): a QUIT behind it commits the DELEs only if the
download was sent in full, and a read error in the middle of a message cuts the
connection rather than end a short message as if it were whole.

Extensions: CAPA, RESP-CODES, PIPELINING, TOP, UIDL, USER (RFC 2449), STLS (RFC 2595),
SASL PLAIN and AUTH-RESP-CODE (RFC 5034, RFC 3206).  No APOP: it needs the password
in clear on the server.

Quotas: POP3 has no command for them, so the login's +OK says how full the mailbox is
when the account has a quota ("Logged in, 45 MB of 100 MB used (45 %)"), and QUIT tells
the backend when it removed messages.  Both backend methods are optional (getattr).
"""
from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable, Protocol

from ..net import sasl
from ..stats import Stats
from ..store.maildrop import DropMessage, Maildrop, MaildropBusy
from ..store.quota import describe
from ..textutil import contains

log = logging.getLogger("ismail.pop3")

COMMAND_LINE_LIMIT = 255   # octets including CRLF (RFC 2449 §4)
AUTH_LINE_LIMIT = 8192     # an AUTH continuation line is base64 and may be longer (RFC 5034 §4)
MAX_ERRORS = 20            # as SMTP (Postfix's smtpd_hard_error_limit)

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"

PLAINTEXT_REFUSED = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections"
CONTROL = re.compile(rb"[\x00-\x1f\x7f]")

Answer = bytes | Iterator[bytes]   # one reply, or a message streamed behind its +OK
Output = list[bytes | Iterable[bytes]]


class Backend(Protocol):
    """What a session asks of the mail server (service._Pop3Backend implements it)."""

    stats: Stats

    def check_login(self, address: str, password: str, ip: str) -> str: ...  # ok | failed | banned
    def mailbox_of(self, address: str) -> Path | None: ...
    def open_maildrop(self, mailbox: Path) -> Maildrop: ...  # raises MaildropBusy or OSError
    # Optional, for quotas (imap.cmd_quota.QuotaBackend):
    #   quota(address) -> (used bytes, limit bytes) | None;  quota_changed(address)


class _Refusal(Exception):
    """The command is answered "-ERR <text>"; the session goes on."""


def ok(text: str = "") -> bytes:
    return f"+OK {text}\r\n".encode("utf-8") if text else b"+OK\r\n"


def err(text: str) -> bytes:
    return f"-ERR {text}\r\n".encode("utf-8")


def multiline(first: str, lines: Iterable[str]) -> bytes:
    body = "".join(("." + line if line.startswith(".") else line) + "\r\n" for line in lines)
    return f"+OK {first}\r\n{body}.\r\n".encode("utf-8")


def dot_stuff(chunk: bytes, at_line_start: bool) -> bytes:
    """RFC 1939 §3: a line that starts with "." is sent with one more."""
    if contains(chunk, b"\n."):
        chunk = chunk.replace(b"\n.", b"\n..")
    if at_line_start and chunk[:1] == b".":
        chunk = b"." + chunk
    return chunk


def allowed_in(*states: str) -> Callable:
    def mark(method: Callable) -> Callable:
        method.states = states
        return method
    return mark


def _close(iterator: Iterator[bytes] | None) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


class Pop3Session:
    in_data = False         # POP3 has no DATA phase: the idle time-out always applies
    in_transaction = False  # a stopping server may cut a POP3 session: without QUIT nothing is deleted
    delay = 0.0             # no tarpit

    def __init__(self, backend: Backend, server_name: str, client_ip: str, trusted: bool,
                 allow_plaintext: bool, tls_available: bool = False, tls_active: bool = False) -> None:
        self.backend = backend
        self.server_name = server_name
        self.client_ip = client_ip
        self.trusted = trusted
        self.allow_plaintext = allow_plaintext
        self.tls_available = tls_available  # a certificate is configured
        self.tls_active = tls_active        # the connection is encrypted (STLS done, or port 995)
        self.state = AUTHORIZATION
        self.authenticated = ""             # the account that logged in
        self.starttls = False               # STLS answered: the connection upgrades, then tls_started()
        self.closing = False                # hang up after sending
        self.quit = False                   # the client said QUIT
        self.lines = 0                      # complete lines received: progress, for the time-outs
        self.errors = 0
        self.retrieved = 0
        self.deleted = 0
        self.bytes_sent = 0                 # message text sent by RETR and TOP
        self._buf = bytearray()
        self._skip_line = False             # discarding the rest of an over-long line
        self._user: str | None = None       # USER given, PASS expected
        self._auth: sasl.Exchange | None = None  # the next line answers its challenge
        self._drop: Maildrop | None = None
        self._deleted: set[int] = set()     # indexes (0 = message 1) marked by DELE
        self._seen: set[int] = set()        # indexes sent whole by RETR
        self._stream: Iterator[bytes] | None = None   # the RETR or TOP answer being sent
        self._reading: Iterator[bytes] | None = None  # and the maildrop reader under it
        self._deferred = False              # input waits until the message before it is sent

    # -- the connection's side -------------------------------------------------------------
    def greeting(self) -> bytes:
        return ok(f"{self.server_name} POP3 ISMail ready")

    def feed(self, data: bytes) -> Output:
        """Take bytes from the client; return the answers due, in order.

        The items are bytes or iterators of bytes (a message being downloaded); the caller
        sends each item in full, in order, before it feeds the session again.
        """
        if self.closing or self.starttls:
            return []  # after STLS: sent in the clear, never to be taken as sent over TLS
        self._buf += data
        if self._deferred:
            return []  # _rest handles it, once the message before it has been sent
        out = self._run()
        if self._deferred:
            out.append(self._rest())
        return out

    def tls_started(self) -> None:
        """The handshake after STLS succeeded: what was learnt before it is forgotten."""
        self.starttls = False
        self.tls_active = True
        self._buf.clear()
        self._skip_line = False
        self._user = None
        self._auth = None

    def timeout_reply(self) -> bytes:
        self.closing = True  # RFC 1939 §3: an autologout does not enter UPDATE
        return err("autologout: idle for too long")

    def shutdown_reply(self) -> bytes:
        self.closing = True
        return err("[SYS/TEMP] server shutting down")

    def close(self) -> None:
        """Let go of the maildrop (nothing is deleted unless QUIT committed); idempotent."""
        self.closing = True
        stream, self._stream = self._stream, None
        _close(stream)
        reading, self._reading = self._reading, None
        _close(reading)
        drop, self._drop = self._drop, None
        if drop is not None:
            drop.close()

    def summary(self) -> str:
        return (f"user={self.authenticated or '-'} retrieved={self.retrieved} "
                f"deleted={self.deleted} bytes={self.bytes_sent}")

    # -- lines ---------------------------------------------------------------------------------
    def _run(self) -> Output:
        """Answer every complete line in the buffer, up to the first streamed message."""
        out: Output = []
        buf = self._buf
        while not self.closing and not self.starttls:
            limit = AUTH_LINE_LIMIT if self._auth else COMMAND_LINE_LIMIT
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > limit:
                    buf.clear()
                    if not self._skip_line:
                        self._skip_line = True
                        self._answer(out, self._too_long())
                break
            line = bytes(buf[:nl + 1])
            del buf[:nl + 1]
            self.lines += 1
            if self._skip_line:  # the tail of an over-long line that was already answered
                self._skip_line = False
                continue
            if len(line) > limit:
                self._answer(out, self._too_long())
                continue
            answer = self._auth_step(line) if self._auth else self._command(line)
            if isinstance(answer, bytes):
                self._answer(out, answer)
            else:
                self._stream = answer
                out.append(answer)
                self._deferred = True
                break
        if self.closing or self.starttls:
            buf.clear()
        return out

    def _rest(self) -> Iterator[bytes]:
        """The answers to what came after a RETR or TOP, worked out once it has been sent."""
        while self._deferred:
            self._deferred = False
            for item in self._run():
                if isinstance(item, bytes):
                    yield item
                else:
                    yield from item

    def _answer(self, out: Output, answer: bytes) -> None:
        if answer.startswith(b"-ERR"):
            self.errors += 1
            if self.errors >= MAX_ERRORS and not self.closing:
                self.closing = True
                answer = err("Too many errors")  # still one answer per command
        out.append(answer)

    def _too_long(self) -> bytes:
        self._auth = None  # an AUTH exchange ends with its over-long line
        return err("line too long")

    def _command(self, raw: bytes) -> Answer:
        text = raw.rstrip(b"\r\n")
        if CONTROL.search(text):
            return err("control characters in command")
        verb, _, rest = text.partition(b" ")
        name = verb.decode("ascii").upper() if verb.isalpha() else ""
        handler = getattr(self, "pop3_" + name, None) if name else None
        if handler is None:
            return err("unknown command")
        if self.state not in handler.states:
            return err("log in first (USER and PASS, or AUTH)" if self.state == AUTHORIZATION
                       else f"{name} not allowed after login")
        try:
            if name == "PASS":  # a password may be any text; UTF-8 as in AUTH PLAIN
                arg = rest.decode("utf-8")
            elif rest.isascii():
                arg = rest.decode("ascii")
            else:
                return err("non-ASCII characters in command")
        except UnicodeDecodeError:
            return err("password is not valid UTF-8")
        try:
            return handler(arg)
        except _Refusal as e:
            return err(str(e))

    @staticmethod
    def _words(arg: str, fewest: int, most: int, usage: str) -> list[str]:
        words = arg.split()
        if len(words) < fewest:
            raise _Refusal(f"missing argument: {usage}")
        if len(words) > most:
            raise _Refusal(f"too many arguments: {usage}")
        return words

    def _index(self, word: str) -> int:
        """The index (0 = message 1) of a message number that names a message not deleted."""
        if not (word.isascii() and word.isdigit()):
            raise _Refusal(f"invalid message number: {word}")
        n, count = int(word), len(self._drop.messages)
        if n == 0:
            raise _Refusal("invalid message number 0: messages are numbered from 1")
        if n > count:
            raise _Refusal(f"no such message: {n} (the maildrop has {count})")
        if n - 1 in self._deleted:
            raise _Refusal(f"message {n} already deleted")
        return n - 1

    def _live(self) -> list[tuple[int, DropMessage]]:
        return [(i, m) for i, m in enumerate(self._drop.messages) if i not in self._deleted]

    # -- AUTHORIZATION ------------------------------------------------------------------------
    def _login_allowed(self) -> bool:
        """Passwords only over TLS, or from trusted networks, unless pop3.allow_plaintext."""
        return self.tls_active or self.trusted or self.allow_plaintext

    def _check_login_allowed(self) -> None:
        if not self._login_allowed():
            # Not [AUTH]: the credentials are not the problem (RFC 3206 §4), the channel is.
            raise _Refusal(PLAINTEXT_REFUSED + ("; use STLS first" if self.tls_available else "."))

    @allowed_in(AUTHORIZATION, TRANSACTION)
    def pop3_CAPA(self, arg: str) -> bytes:
        self._words(arg, 0, 0, "CAPA")
        caps = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
        if self.state == AUTHORIZATION:
            if self._login_allowed():
                caps += ["USER", "SASL PLAIN"]
            if self.tls_available and not self.tls_active:
                caps.append("STLS")
        caps.append("IMPLEMENTATION ISMail")
        return multiline("Capability list follows", caps)

    @allowed_in(AUTHORIZATION)
    def pop3_STLS(self, arg: str) -> bytes:
        self._words(arg, 0, 0, "STLS")
        if self.tls_active:
            raise _Refusal("TLS is already active")
        if not self.tls_available:
            raise _Refusal("STLS not available (no certificate configured)")
        self.starttls = True
        return ok("Begin TLS negotiation")

    @allowed_in(AUTHORIZATION)
    def pop3_USER(self, arg: str) -> bytes:
        self._check_login_allowed()
        self._user = self._words(arg, 1, 1, "USER name")[0]
        return ok("Send PASS")

    @allowed_in(AUTHORIZATION)
    def pop3_PASS(self, arg: str) -> bytes:
        self._check_login_allowed()
        if self._user is None:
            raise _Refusal("send USER first")
        if not arg:
            raise _Refusal("missing argument: PASS password")
        user, self._user = self._user, None
        return self._login(user, arg)  # RFC 1939 §7: spaces may be part of the password

    @allowed_in(AUTHORIZATION)
    def pop3_AUTH(self, arg: str) -> bytes:
        self._check_login_allowed()
        words = self._words(arg, 0, 2, "AUTH mechanism [initial-response]")
        if not words:  # the mechanism list, for clients of RFC 1734
            return multiline("SASL mechanisms follow", ["PLAIN"])
        if words[0].upper() != "PLAIN":
            raise _Refusal("unsupported authentication mechanism (PLAIN is offered)")
        exchange = sasl.Exchange("PLAIN")
        return self._sasl(exchange, exchange.start(words[1] if len(words) > 1 else ""))

    def _auth_step(self, raw: bytes) -> bytes:
        exchange, self._auth = self._auth, None
        try:
            line = raw.rstrip(b"\r\n").decode("ascii")
        except UnicodeDecodeError:
            return err("cannot decode the AUTH response (base64 expected)")
        return self._sasl(exchange, exchange.step(line))

    def _sasl(self, exchange: sasl.Exchange, outcome: sasl.Outcome) -> bytes:
        if isinstance(outcome, sasl.Credentials):
            return self._login(outcome.user, outcome.password)
        if isinstance(outcome, sasl.Challenge):
            self._auth = exchange
            return f"+ {outcome.b64}\r\n".encode("ascii")
        return err(outcome.reason)  # cancelled or malformed: not the credentials, so no [AUTH]

    def _login(self, user: str, password: str) -> bytes:
        address = user.strip().lower()
        backend = self.backend
        outcome = backend.check_login(address, password, self.client_ip)
        if outcome != "ok":
            backend.stats.add("pop3_logins_failed")
            if outcome == "banned":
                self.closing = True
                return err("[AUTH] Too many failed logins, try again later")
            return err("[AUTH] Authentication failed.")
        mailbox = backend.mailbox_of(address)
        if mailbox is None:
            log.error("%s: %s logged in but has no mailbox", self.client_ip, address)
            return err("[SYS/PERM] This account has no mailbox")
        try:
            drop = backend.open_maildrop(mailbox)
        except MaildropBusy:
            return err("[IN-USE] Mailbox is locked by another POP3 session")
        except OSError as e:
            log.error("%s: cannot open the mailbox of %s: %s", self.client_ip, address, e)
            return err("[SYS/TEMP] Cannot open the mailbox, try again later")
        self._drop, self.authenticated, self.state = drop, address, TRANSACTION
        backend.stats.add("pop3_logins")
        log.info("%s: %s logged in (POP3), %d message(s)", self.client_ip, address, len(drop.messages))
        usage = self._quota_text(address)
        return ok(f"Logged in, {usage}" if usage else "Logged in.")

    def _quota_text(self, address: str) -> str:
        """"45 MB of 100 MB used (45 %)" if the account has a quota; "" if not, or unknown."""
        ask = getattr(self.backend, "quota", None)
        if ask is None:
            return ""
        try:
            quota = ask(address)
        except OSError as e:   # the login stands; only the figure is missing
            log.error("%s: cannot measure the mailbox of %s: %s", self.client_ip, address, e)
            return ""
        return describe(*quota) if quota is not None else ""

    @allowed_in(AUTHORIZATION, TRANSACTION)
    def pop3_APOP(self, arg: str) -> bytes:
        raise _Refusal("APOP is not offered (use USER and PASS, or AUTH PLAIN)")

    @allowed_in(AUTHORIZATION, TRANSACTION)
    def pop3_QUIT(self, arg: str) -> bytes:
        self.closing = self.quit = True
        if self._drop is None:
            return ok("Logging out.")
        return self._update()

    def _update(self) -> bytes:
        """RFC 1939's UPDATE state: the DELEs take effect now, and only now."""
        drop = self._drop
        try:
            removed = drop.commit(set(self._deleted), self._seen - self._deleted)
        except OSError as e:
            log.error("%s: %s: removing %d message(s) failed: %s", self.client_ip,
                      self.authenticated, len(self._deleted), e)
            return err("[SYS/TEMP] some deleted messages not removed")
        finally:
            self.close()
        self.deleted = removed
        self.backend.stats.add("pop3_deleted", removed)
        tell = getattr(self.backend, "quota_changed", None)
        if removed and tell is not None:
            try:
                tell(self.authenticated)
            except Exception:   # the messages are gone either way; the figure heals by itself
                log.exception("%s: %s: updating the quota usage failed", self.client_ip,
                              self.authenticated)
        return ok(f"Logging out, {removed} messages deleted.")

    # -- TRANSACTION --------------------------------------------------------------------------
    @allowed_in(TRANSACTION)
    def pop3_STAT(self, arg: str) -> bytes:
        self._words(arg, 0, 0, "STAT")
        if not self._deleted:  # the usual case, and the one to be quick at 100,000 messages
            return ok(f"{len(self._drop.messages)} {self._drop.total_size()}")
        live = self._live()
        return ok(f"{len(live)} {sum(m.size for _, m in live)}")

    @allowed_in(TRANSACTION)
    def pop3_LIST(self, arg: str) -> bytes:
        words = self._words(arg, 0, 1, "LIST [msg]")
        if words:
            i = self._index(words[0])
            return ok(f"{i + 1} {self._drop.messages[i].size}")
        return self._whole_listing("LIST", lambda live: multiline(
            f"{len(live)} messages ({sum(m.size for _, m in live)} octets)",
            (f"{i + 1} {m.size}" for i, m in live)))

    @allowed_in(TRANSACTION)
    def pop3_UIDL(self, arg: str) -> bytes:
        words = self._words(arg, 0, 1, "UIDL [msg]")
        if words:
            i = self._index(words[0])
            return ok(f"{i + 1} {self._drop.messages[i].uid}")
        return self._whole_listing("UIDL", lambda live: multiline(
            "unique-id listing follows", (f"{i + 1} {m.uid}" for i, m in live)))

    def _whole_listing(self, name: str, build: Callable[[list[tuple[int, DropMessage]]], bytes]) -> bytes:
        """LIST or UIDL of the whole maildrop; with nothing marked deleted the answer is the
        same for every session on an unchanged mailbox, and the maildrop remembers it."""
        memo = getattr(self._drop, "memo", None)
        if self._deleted or memo is None:
            return build(self._live())
        answer = memo.get(name)
        if answer is None:
            answer = memo[name] = build(self._live())
        return answer

    @allowed_in(TRANSACTION)
    def pop3_RETR(self, arg: str) -> Answer:
        i = self._index(self._words(arg, 1, 1, "RETR msg")[0])
        return self._message(i, None, f"{self._drop.messages[i].size} octets")

    @allowed_in(TRANSACTION)
    def pop3_TOP(self, arg: str) -> Answer:
        words = self._words(arg, 2, 2, "TOP msg lines")
        i = self._index(words[0])
        if not (words[1].isascii() and words[1].isdigit()):
            raise _Refusal(f"invalid number of lines: {words[1]}")
        return self._message(i, int(words[1]), "top of message follows")

    @allowed_in(TRANSACTION)
    def pop3_DELE(self, arg: str) -> bytes:
        i = self._index(self._words(arg, 1, 1, "DELE msg")[0])
        self._deleted.add(i)
        return ok(f"message {i + 1} deleted")

    @allowed_in(TRANSACTION)
    def pop3_RSET(self, arg: str) -> bytes:
        self._words(arg, 0, 0, "RSET")
        self._deleted.clear()  # what RETR sent stays seen: the client has it
        live = self._live()
        return ok(f"maildrop has {len(live)} messages ({sum(m.size for _, m in live)} octets)")

    @allowed_in(TRANSACTION)
    def pop3_NOOP(self, arg: str) -> bytes:
        self._words(arg, 0, 0, "NOOP")
        return ok()

    # -- sending a message ----------------------------------------------------------------------
    def _message(self, index: int, body_lines: int | None, first_line: str) -> Iterator[bytes]:
        """The +OK and the message, streamed; a file that cannot be opened gets -ERR instead."""
        try:
            reader = self._drop.read(index, body_lines)
            first = next(reader, None)  # opens the file: a failure can still be answered
        except FileNotFoundError:
            # Another session or program removed it: gone for good, but no system error.
            raise _Refusal(f"message {index + 1} is no longer available") from None
        except OSError as e:
            log.error("%s: %s: cannot read message %d: %s", self.client_ip, self.authenticated,
                      index + 1, e)
            raise _Refusal(f"[SYS/TEMP] cannot read message {index + 1}, try again later") from None
        self._reading = reader
        return self._stream_text(index, ok(first_line), first, reader, whole=body_lines is None)

    def _stream_text(self, index: int, head: bytes, first: bytes | None, reader: Iterator[bytes],
                     whole: bool) -> Iterator[bytes]:
        sent = 0
        try:
            yield head
            at_line_start = True
            chunks = itertools.chain((first,), reader) if first is not None else ()
            for chunk in chunks:
                data = dot_stuff(chunk, at_line_start)
                at_line_start = chunk.endswith(b"\n")
                sent += len(data)
                yield data
            end = b".\r\n" if at_line_start else b"\r\n.\r\n"
            sent += len(end)
            yield end
        except OSError as e:
            # Hang up: to a client a cut connection is an error, a message ended early is not.
            log.error("%s: %s: reading message %d failed after %d bytes: %s", self.client_ip,
                      self.authenticated, index + 1, sent, e)
            self.closing = True
            return
        finally:
            _close(reader)
            self._stream = self._reading = None
            self.bytes_sent += sent
            self.backend.stats.add("pop3_bytes_sent", sent)
        if whole:
            self._seen.add(index)
            self.retrieved += 1
            self.backend.stats.add("pop3_retrieved")
