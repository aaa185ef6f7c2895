"""The IMAP4rev1 conversation (RFC 3501) as a state machine: bytes in, responses out.

Like pop3.session, an ImapSession owns no socket.  The connection feeds it what
arrived (``feed``), sends what comes back, and calls ``tick`` about once a second
while the client is silent.  The parser (parser.CommandReader) cuts the input into
commands; each command is a function in a ``cmd_*.py`` module, found by name in
commands.COMMANDS (Dovecot's "one command, one file" idea), and valid in the states
it was registered for: not authenticated, authenticated, selected (RFC 3501 §3).

The session itself does what every command shares:

* the tagged response, and before it the untagged EXISTS / EXPUNGE / FETCH that
  report what other sessions and SMTP delivery changed in the selected folder
  (selected.Selected.sync), after every command, and before the commands that take
  message numbers (so they work on the folder as it is now); EXPUNGE is held back at
  that point and after FETCH, STORE and SEARCH (RFC 3501 §7.4.1), and goes out at
  the next command that allows it;
* streaming: a command may answer with a generator (FETCH 1:* of a large folder);
  what the client pipelined behind it is worked on only once it has been sent, as
  in pop3.session (``_rest``); the same command sent again right behind it with
  another tag and message number (a mail program downloading message after message)
  is taken by the stream itself (``_repeat``), not tokenized again;
* the two raw-line modes between commands: AUTHENTICATE's responses and IDLE's DONE
  (RFC 2177), during which ``tick`` reports new mail;
* the error budget: every BAD counts, and at MAX_ERRORS the session says BYE, as SMTP
  and POP3 end at 20 errors.

Literals: the reader announces a synchronising literal (parser.Continue) and the
session answers ``+``; before login a literal may be at most PRE_AUTH_LITERAL octets
(a LOGIN password), after it ``max_message_bytes`` (APPEND).  A message is stored only
once its literal is complete, so a client that drops mid-APPEND leaves nothing behind.
"""
from __future__ import annotations

import logging
import time
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable, Protocol

from ..stats import Stats
from ..store.folders import MailStore, NoSuchFolder, UidValidityChanged
from . import cmd_any, cmd_auth, cmd_mailbox, cmd_list, cmd_message, cmd_search, cmd_selected  # noqa: F401
from . import cmd_quota  # after the others: it wraps their APPEND, COPY, EXPUNGE...
from .cmd_message import download_plan
from .commands import AUTH, COMMANDS, NOT_AUTH, SELECTED, Bad, Done, No
from .fetch_fast import BATCH, literal_prefix, whole_text
from .parser import LITERAL_TOO_LARGE, BadCommand, Command, CommandReader, Continue
from .selected import Selected

log = logging.getLogger("ismail.imap")

MAX_ERRORS = 20             # BAD responses before BYE, as SMTP and POP3
MAX_LINE = 65536            # octets of command text outside literals
PRE_AUTH_LITERAL = 8192     # a literal before login is a user name or a password
IDLE_KEEPALIVE = 1800       # seconds an IDLE counts as activity (RFC 2177: re-IDLE every 29 min)
NO_EXPUNGE = ("FETCH", "STORE", "SEARCH")   # RFC 3501 §7.4.1, for the non-UID forms
FRESH_ENOUGH = 0.005        # seconds: a look at the folder this recent stands for "now"
                            # (timed by perf_counter: 3.11's monotonic has 15.6 ms ticks on Windows)
BASE_CAPABILITIES = ("IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE",
                     "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE")

Output = list[bytes | Iterable[bytes]]


class Backend(Protocol):
    """What a session asks of the mail server."""

    stats: Stats

    def check_login(self, address: str, password: str, ip: str) -> str: ...  # ok | failed | banned
    def mailbox_of(self, address: str) -> Path | None: ...
    def open_store(self, mailbox: Path) -> MailStore: ...


class ImapSession:
    in_data = False     # no DATA phase: the idle time-out always applies
    delay = 0.0         # no tarpit

    def __init__(self, backend: Backend, server_name: str, client_ip: str, trusted: bool,
                 allow_plaintext: bool, max_message_bytes: int, tls_available: bool = False,
                 tls_active: bool = False) -> None:
        self.backend = backend
        self.server_name = server_name
        self.client_ip = client_ip
        self.trusted = trusted
        self.allow_plaintext = allow_plaintext
        self.max_message_bytes = max_message_bytes
        self.tls_available = tls_available  # a certificate is configured
        self.tls_active = tls_active        # the connection is encrypted
        self.state = NOT_AUTH
        self.authenticated = ""             # the account that logged in
        self.store: MailStore | None = None
        self.selected: Selected | None = None
        self.starttls = False               # STARTTLS answered: upgrade, then tls_started()
        self.closing = False
        self.quit = False                   # the client said LOGOUT
        self.in_transaction = False         # an APPEND's literal is being received
        self.lines = 0                      # progress: commands, literal chunks, IDLE ticks
        self.errors = 0
        self.fetched = self.appended = self.expunged = 0
        self._reader = CommandReader(PRE_AUTH_LITERAL, MAX_LINE, skip_limit=PRE_AUTH_LITERAL)
        self._out: Output = []
        self._waiting: tuple[Command, Callable[[bytes], None]] | None = None  # raw-line mode
        self._idle_since: float | None = None
        self._deferred = False              # input waits until a stream has been sent
        self._streams: list[Iterator] = []  # generators handed out, closed by close()
        self._batch = 0                     # input batches (feed calls) so far
        self._synced_at = 0.0               # perf_counter time of the last look at the folder
        self._synced_batch = -1             # and the batch it was made in

    # -- the connection's side ------------------------------------------------------------
    def greeting(self) -> bytes:
        return b"* OK [CAPABILITY %s] %s ISMail IMAP4rev1 ready\r\n" % (
            self.capabilities().encode(), self.server_name.encode("utf-8", "replace"))

    def capabilities(self) -> str:
        caps = list(BASE_CAPABILITIES)
        if self.state == NOT_AUTH:
            if self.tls_available and not self.tls_active:
                caps.append("STARTTLS")
            caps.append("AUTH=PLAIN" if self.login_allowed() else "LOGINDISABLED")
        if cmd_quota.supported(self):
            caps += cmd_quota.CAPABILITIES
        return " ".join(caps)

    def login_allowed(self) -> bool:
        """Passwords only over TLS or from trusted networks, unless imap.allow_plaintext."""
        return self.tls_active or self.trusted or self.allow_plaintext

    def feed(self, data: bytes) -> Output:
        """Take bytes from the client; return what to send, in order (bytes, or iterables
        of bytes sent to their end before the session is fed again)."""
        if self.closing or self.starttls:
            return []   # after STARTTLS: sent in the clear, never to be taken as sent over TLS
        self._streams.clear()   # what was handed out before has been sent (or never will be)
        self._batch += 1
        if self._reader.literal_for is not None:
            self.lines += 1   # a literal coming in slowly is still progress
        self._reader.feed(data)
        if self._deferred:
            return []
        out = self._run()
        if self._deferred:
            rest = self._rest()
            self._streams.append(rest)
            out.append(rest)
        return out

    def tick(self) -> list[bytes]:
        """Called about once a second while the client is silent: IDLE reports changes."""
        if self._idle_since is None or self.closing:
            return []
        if time.monotonic() - self._idle_since < IDLE_KEEPALIVE:
            self.lines += 1
        if self.selected is None:
            return []
        return self._sync(expunge_ok=True)

    def tls_started(self) -> None:
        """The handshake after STARTTLS succeeded: what came before it is forgotten."""
        self.starttls = False
        self.tls_active = True
        self._reader = CommandReader(PRE_AUTH_LITERAL, MAX_LINE, skip_limit=PRE_AUTH_LITERAL)
        self._waiting = None

    def timeout_reply(self) -> bytes:
        self.closing = True
        return b"* BYE Autologout; idle for too long\r\n"

    def shutdown_reply(self) -> bytes:
        self.closing = True
        return b"* BYE Server shutting down\r\n"

    def close(self) -> None:
        """The connection is over, however it ended: let go of everything; idempotent."""
        self.closing = True
        streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()
        self.selected = None
        self.store = None
        self._waiting = None
        self._idle_since = None
        self.in_transaction = False

    def summary(self) -> str:
        return (f"user={self.authenticated or '-'} fetched={self.fetched} "
                f"appended={self.appended} expunged={self.expunged}")

    # -- what handlers use --------------------------------------------------------------------
    def untagged(self, line: bytes) -> None:
        """Queue ``* <line>`` (CRLF added)."""
        self._out.append(b"* " + line + b"\r\n")

    def respond(self, lines: list[bytes]) -> None:
        """Queue whole response lines (``* 3 EXPUNGE\\r\\n``...)."""
        self._out += lines

    def continuation(self, text: str, then: Callable[[bytes], None], cmd: Command) -> None:
        """Send ``+ text``; the next raw line goes to ``then`` (AUTHENTICATE, IDLE), which
        ends the command with ``finish`` or asks again."""
        self._out.append(b"+ " + text.encode("ascii") + b"\r\n")
        self._waiting = (cmd, then)

    def finish(self, cmd: Command, result: Done | No | Bad) -> None:
        """The tagged response of a command that went on past its handler (raw-line modes)."""
        self._waiting = None
        self._out += self._complete(cmd, result)

    def logged_in(self, address: str, store: MailStore) -> None:
        self.authenticated, self.store, self.state = address, store, AUTH
        self._reader.max_literal = self.max_message_bytes
        self._reader.skip_limit = None   # a user's too-big APPEND is read through: NO [TOOBIG]

    def select(self, selected: Selected | None) -> None:
        """Enter (or, with None, leave) the selected state; nothing is expunged."""
        self.selected = selected
        self.state = AUTH if selected is None else SELECTED

    def start_idle(self, cmd: Command) -> None:
        self._idle_since = time.monotonic()
        self.continuation("idling", self._idle_line, cmd)
        if self.selected is not None:
            self._out += self._sync(expunge_ok=True)

    def _idle_line(self, line: bytes) -> None:
        cmd = self._waiting[0]
        self._idle_since = None
        if line.upper() == b"DONE":
            self.finish(cmd, Done("IDLE terminated"))
        else:
            self.finish(cmd, Bad("expected DONE to end IDLE"))

    # -- the input loop -----------------------------------------------------------------------
    def _run(self) -> Output:
        """Answer every complete command in the input, up to the first streamed answer."""
        out: Output = []
        self._out = out
        reader = self._reader
        while not self.closing and not self.starttls:
            if self._waiting is not None:
                if not self._raw_line():
                    break
                continue
            item = reader.next()
            if item is None:
                break
            if isinstance(item, Continue):
                out.append(b"+ Ready for literal data\r\n")
                continue
            self.lines += 1
            if isinstance(item, BadCommand):
                self._bad_command(item)
                continue
            stream = self._execute(item)
            if stream is not None:
                out.append(stream)
                self._deferred = True
                break
        self.in_transaction = reader.literal_for == "APPEND"
        return out

    def _rest(self) -> Iterator[bytes]:
        """The answers to what came after a streamed answer, once it has been sent."""
        while self._deferred:
            self._deferred = False
            for item in self._run():
                if isinstance(item, (bytes, bytearray)):
                    yield item
                else:
                    yield from item

    def _raw_line(self) -> bool:
        """One line for the raw-line mode; False until it has come."""
        cmd, then = self._waiting
        try:
            line = self._reader.read_line()
        except ValueError as e:
            self._idle_since = None
            self.finish(cmd, Bad(str(e)))
            return True
        if line is None:
            return False
        self.lines += 1
        try:
            then(line)
        except Exception as e:
            self.finish(cmd, self._internal_error(cmd, e))
        return True

    def _bad_command(self, bad: BadCommand) -> None:
        if bad.reason == LITERAL_TOO_LARGE and bad.name == "APPEND" and self.state != NOT_AUTH:
            self._tagged(bad.tag, "NO", "TOOBIG",
                         f"message too large (at most {self.max_message_bytes} octets)")
        elif bad.reason == LITERAL_TOO_LARGE and self.state == NOT_AUTH:
            self._tagged(bad.tag, "BAD", "", f"{LITERAL_TOO_LARGE} before login")
        else:
            self._tagged(bad.tag, "BAD", "", bad.reason)
        if bad.fatal and not self.closing:
            self._out.append(b"* BYE Literal too large\r\n")
            self.closing = True

    def _execute(self, cmd: Command) -> Iterator[bytes] | None:
        """Run ``cmd``: its answer is queued, or it is a generator to stream (returned,
        wrapped to end with the tagged response), or it waits for a raw line (None)."""
        result = self._dispatch(cmd)
        if result is None:
            return None
        if isinstance(result, types.GeneratorType):
            stream = self._stream(cmd, result)
            self._streams.append(stream)
            return stream
        self._out += self._complete(cmd, result)
        return None

    def _dispatch(self, cmd: Command) -> Iterator[bytes] | Done | No | Bad | ValueError | None:
        """The handler's result for ``cmd`` (after the checks every command gets: the
        answer, a generator, or None when it waits for a raw line); responses that come
        before it are queued."""
        handler = COMMANDS.get(cmd.name)
        if handler is None:
            self._tagged(cmd.tag, "BAD", "", f"unknown command {cmd.name[:40]}")
            return None
        if cmd.uid and not handler.uid:
            self._tagged(cmd.tag, "BAD", "", "UID goes with COPY, FETCH, MOVE, SEARCH, STORE or EXPUNGE")
            return None
        if self.state not in handler.states:
            self._tagged(cmd.tag, "BAD", "", self._wrong_state(handler.states))
            return None
        if handler.uid and self.selected is not None and not self._just_looked():
            # A command on messages works on the folder as it is now: new mail and flags
            # are announced first, expunges held back (the client's numbers stay valid).
            self._out += self._sync(expunge_ok=False)
            if self.selected is None:
                self._tagged(cmd.tag, "NO", "", "the selected folder is gone")
                return None
        try:
            return handler.run(self, cmd)   # None: it goes on, a continuation was sent
        except (Bad, No, ValueError) as e:
            return e
        except Exception as e:
            return self._internal_error(cmd, e)

    def _stream(self, cmd: Command, body: Iterator[bytes]) -> Iterator[bytes]:
        """A streamed answer, its tagged response, then those of the same command sent
        again right behind it (``_repeat``)."""
        while True:
            try:
                result = (yield from body) or Done()
            except (Bad, No, ValueError) as e:
                result = e
            except Exception as e:
                result = self._internal_error(cmd, e)
            finally:
                body.close()
            yield from self._complete(cmd, result)
            while True:
                yield from self._downloads(cmd)
                after = self._repeat(cmd)
                if after is None:
                    return
                cmd, before, result = after
                if before:
                    yield b"".join(before)
                if result is None:
                    return   # it waits for a raw line: _run takes it from here
                if isinstance(result, types.GeneratorType):
                    body = result
                    break
                yield from self._complete(cmd, result)

    def _downloads(self, cmd: Command) -> Iterator[bytes]:
        """The answers to ``UID FETCH n (BODY.PEEK[])`` (cmd_message.download_plan) sent
        again and again right behind ``cmd``, one UID each, as mail programs download:
        byte for byte what ``_repeat`` and the FETCH handler give, without their steps
        per command (a Command, the checks, a generator: a third of the time of one).
        Each of them is taken only while ``_repeat`` would take it and its ``_dispatch``
        would not look at the folder first (it was looked at a moment ago); anything
        else is left to ``_repeat``."""
        shape = download_plan(cmd)
        if shape is None:
            return
        reader, stats = self._reader, self.backend.stats
        head, tail = shape.head, shape.tail
        ok = self._line("", "OK", "", "UID FETCH completed")   # b" OK ...": after the tag
        batch: list[bytes] = []
        size = 0
        while not (self.closing or self.starttls or self._waiting is not None
                   or self.selected is None) and self._just_looked():
            taken = reader.take_download(cmd)
            if taken is None:
                break
            tag, uid = taken
            self.lines += 1
            sel = self.selected
            seq = sel.seq(uid)
            ref = sel.folder.message(uid) if seq is not None else None
            data = whole_text(sel.folder, uid) if ref is not None else None
            if data is not None:
                line = head % (seq, ref.uid) + literal_prefix(data)
                if len(data) >= BATCH:   # a large message goes out as it is: no copy into a batch
                    batch.append(line)
                    yield b"".join(batch)
                    yield data
                    batch, size = [tail], len(tail)
                else:
                    batch += (line, data, tail)
                    size += len(line) + len(data) + len(tail)
                self.fetched += 1
                stats.add("imap_fetched")
            if self._closing_look_due():
                answer = self._complete(Command(tag, cmd.name, cmd.uid, cmd.args, cmd.repeat),
                                        Done("UID FETCH completed"))
            else:   # what _complete gives then, without its objects
                answer = [tag.encode("ascii") + ok]
            batch += answer
            size += sum(map(len, answer))
            if size >= BATCH:
                yield b"".join(batch)
                batch, size = [], 0
        if batch:
            yield b"".join(batch)

    def _repeat(self, cmd: Command) -> tuple[Command, list[bytes], object | None] | None:
        """The next command, when the client pipelined ``cmd`` again right behind it with
        another tag and sequence set (a mail program downloading message after message,
        ``UID FETCH n (BODY.PEEK[])``): taken from the reader without tokenizing it, and
        run as ``_run`` would have run it (its checks and looks the same), so it needs no
        new pass through ``_run`` and the stream goes straight on.  The command, what
        comes before its answer, and the handler's result; None when none follows."""
        if self.closing or self.starttls or self._waiting is not None or self.selected is None:
            return None
        nxt = self._reader.take_repeat(cmd)
        if nxt is None:
            return None
        self.lines += 1
        out, self._out = self._out, []
        try:
            result = self._dispatch(nxt)
            before = self._out
        finally:
            self._out = out
        return nxt, before, result

    def _internal_error(self, cmd: Command, e: Exception) -> No:
        if isinstance(e, OSError):
            log.error("%s: %s: %s failed: %s", self.client_ip, self.authenticated, cmd.name, e)
            return No("the mail store could not be read or written, try again later", "UNAVAILABLE")
        log.exception("%s: %s: %s failed", self.client_ip, self.authenticated, cmd.name)
        return No("internal error", "SERVERBUG")

    def _wrong_state(self, states: tuple[str, ...]) -> str:
        if self.state == NOT_AUTH:
            return "log in first"
        if NOT_AUTH in states:
            return "already logged in"
        if SELECTED in states:
            return "no folder selected (SELECT or EXAMINE first)"
        return "not valid with a folder selected"

    # -- responses --------------------------------------------------------------------------------
    def _complete(self, cmd: Command, result: Done | No | Bad | ValueError) -> list[bytes]:
        """The untagged updates the command may carry, then its tagged response."""
        out: list[bytes] = []
        if (self.selected is not None and not isinstance(result, (Bad, ValueError))
                and self._closing_look_due()):
            out += self._sync(expunge_ok=cmd.uid or cmd.name not in NO_EXPUNGE)
        if isinstance(result, Done):
            out.append(self._line(cmd.tag, "OK", result.code, result.text))
        elif isinstance(result, No):
            out.append(self._line(cmd.tag, "NO", result.code, str(result)))
        else:
            out += self._bad(cmd.tag, str(result))
        return out

    def _closing_look_due(self) -> bool:
        """Whether a command ending now looks at the folder before its tagged response.
        In a pipeline, a command followed by another already here skips it when the folder
        was looked at a moment ago: the last one looks for all."""
        return not (self._reader.buffered and self._just_looked())

    def _just_looked(self) -> bool:
        """Whether the previous command, sent in the same batch as this one (a pipeline),
        looked at the folder when it ended, a moment ago: a change since then is no
        different from one a moment later, which this command's closing look reports."""
        return self._synced_batch == self._batch and time.perf_counter() - self._synced_at < FRESH_ENOUGH

    def _sync(self, expunge_ok: bool) -> list[bytes]:
        try:
            out = self.selected.sync(expunge_ok)
            self._synced_at, self._synced_batch = time.perf_counter(), self._batch
            return out
        except OSError as e:   # the disk may be back next time; the client loses nothing
            if not (isinstance(e, FileNotFoundError) and self._selected_is_gone()):
                log.error("%s: %s: cannot look at %s: %s", self.client_ip, self.authenticated,
                          self.selected.name, e)
                return []
            return self._selected_gone(NoSuchFolder(f"folder {self.selected.name} was deleted"))
        except (NoSuchFolder, UidValidityChanged) as e:
            return self._selected_gone(e)

    def _selected_is_gone(self) -> bool:
        try:
            return not self.store.exists(self.selected.name)
        except (ValueError, OSError):
            return False

    def _selected_gone(self, e: Exception) -> list[bytes]:
        log.info("%s: %s: %s", self.client_ip, self.authenticated, e)
        self.closing = True
        self.selected = None
        why = "UIDVALIDITY changed" if isinstance(e, UidValidityChanged) else "was deleted or renamed"
        return [b"* BYE The selected folder %s\r\n" % why.encode()]

    def _tagged(self, tag: str, status: str, code: str, text: str) -> None:
        if status == "BAD":
            self._out += self._bad(tag, text)
        else:
            self._out.append(self._line(tag, status, code, text))

    def _bad(self, tag: str, text: str) -> list[bytes]:
        self.errors += 1
        out = [self._line(tag, "BAD", "", text)]
        if self.errors >= MAX_ERRORS and not self.closing:
            self.closing = True
            out.append(b"* BYE Too many invalid commands\r\n")
        return out

    @staticmethod
    def _line(tag: str, status: str, code: str, text: str) -> bytes:
        code = f"[{code}] " if code else ""
        text = text.replace("\r", " ").replace("\n", " ")
        return f"{tag} {status} {code}{text}\r\n".encode("utf-8", "replace")
