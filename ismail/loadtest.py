"""Send test mail to an SMTP server and measure it: ``python3 -m ismail loadtest HOST:PORT``.

Postfix's ``smtp-source``, built in (standard library only, so it runs on Windows too).
SESSIONS sessions share MESSAGES numbered messages; by default each message has a
connection of its own (greeting, EHLO, MAIL, RCPT, DATA, the text, QUIT), as smtp-source
does, and ``--per-connection N`` sends up to N over one.  One thread drives every
session, as smtp-source's one process does, with non-blocking sockets and a selector:
each session is a generator that yields what it waits for.  (A thread per session
measured 0.72-0.83 of smtp-source's rate against a server doing ~2,000 messages/s: ten
threads taking the interpreter's lock from each other at every reply; one loop
0.88-0.97, medians of bench/loadtest_check.py.)  Commands go one at a time (smtp-source
has no pipelining either); ``--pipelining`` sends MAIL, RCPT and DATA together when the
server offers PIPELINING.

The client is a lean one on raw sockets: no smtplib, the commands prepared once, the
address looked up once, the selector's registrations changed only when a wait changes.
Every message is BYTES long with CRLF line ends (headers with a unique Message-ID and
Subject, then lines of 76 characters) and dot-stuffed on the way out.

Latency is per message: from the connect (or, on a reused connection, from the end of
the message before) to the 250 after the text.  A refused command counts as an error for
its message and the connection goes on after RSET; a broken connection (closed, timed
out, refused, a 421) costs the message it was carrying and the next message connects
anew.  Sending stops early after --max-errors errors, after --max-seconds, or on Ctrl+C;
what was not sent counts as not accepted.  The result is a few plain lines and an exit
code: 0 when every message was accepted, 1 otherwise (2 for bad arguments).
"""
from __future__ import annotations

import base64
import email.utils
import errno
import ipaddress
import math
import os
import re
import selectors
import socket
import ssl
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace

from .loadtest_cli import DEFAULT_TO
from .net.poller import select_forced
from .net.sockets import client_tls_context, no_delay

MAX_REPLY_BYTES = 65536       # a server that says more than this in one reply is not answering
ERROR_KINDS_SHOWN = 5         # distinct error texts kept (the rest are only counted)
ERROR_TEXT_LIMIT = 200
JOIN_GRACE = 5.0              # seconds past --max-seconds the report waits for the sessions
INTERRUPT_GRACE = 1.0         # seconds after Ctrl+C for the messages under way to finish
FILLER = (b"The quick brown fox jumps over the lazy dog; " * 2)[:76]   # one body line
POLL_SECONDS = 0.2            # the longest the loop waits at once (Ctrl+C is seen on Windows too)
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_CONNECTING = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY,
               getattr(errno, "WSAEWOULDBLOCK", errno.EWOULDBLOCK)}   # Windows' code for it


class Failure(Exception):
    """One message not accepted; ``fatal``: the connection cannot carry another."""

    def __init__(self, text: str, fatal: bool = True) -> None:
        super().__init__(text)
        self.text = " ".join(text.split())[:ERROR_TEXT_LIMIT]
        self.fatal = fatal


# -- this computer ----------------------------------------------------------------------------

def local_name() -> str:
    """This computer's name as EHLO wants it (no DNS look-up: that can take seconds on Windows)."""
    name = re.sub(r"[^a-z0-9.-]", "", socket.gethostname().lower()).strip(".-")
    return name or "localhost"


# -- what is sent -----------------------------------------------------------------------------

@dataclass
class Options:
    host: str
    port: int
    sessions: int = 1
    messages: int = 100
    length: int = 2048
    per_connection: int = 1
    sender: str = ""
    recipient: str = DEFAULT_TO
    ehlo: str = ""
    timeout: float = 60.0
    max_seconds: float = 600.0
    max_errors: int = 10
    starttls: bool = False
    user: str = ""
    password: str = ""
    pipelining: bool = False

    def __post_init__(self) -> None:
        self.ehlo = self.ehlo or local_name()
        self.sender = self.sender or f"loadtest@{self.ehlo}"

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def dot_stuff(text: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line that starts with "." gets another in front."""
    text = text.replace(b"\r\n.", b"\r\n..")
    return b"." + text if text.startswith(b".") else text


def body(size: int) -> bytes:
    """``size`` bytes of 76-character lines, ending in CRLF (2 bytes for a size of 1)."""
    line = FILLER + b"\r\n"
    lines, rest = divmod(max(size, 0), len(line))
    if rest == 0:
        return line * lines
    if rest >= 2:
        return line * lines + FILLER[:rest - 2] + b"\r\n"
    if lines == 0:
        return b"\r\n"
    return line * (lines - 1) + FILLER[:-1] + b"\r\n\r\n"   # 77 + 2 bytes for the 79 wanted


class Messages:
    """Message number n as sent: unique Message-ID and Subject, exactly ``length`` bytes."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.run = uuid.uuid4().hex[:16]
        self._bodies: dict[int, bytes] = {}  # by size: the header's length varies only a little

    def text(self, n: int) -> bytes:
        o = self.options
        head = (f"From: <{o.sender}>\r\nTo: <{o.recipient}>\r\n"
                f"Subject: ISMail loadtest message {n} of {o.messages}\r\n"
                f"Date: {email.utils.formatdate(localtime=True)}\r\n"
                f"Message-ID: <loadtest.{self.run}.{n}@{o.ehlo}>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
        need = o.length - len(head)
        filler = self._bodies.get(need)
        if filler is None:
            filler = self._bodies.setdefault(need, body(need))
        return dot_stuff(head + filler)


# -- one connection ---------------------------------------------------------------------------

def _plain_reply(lines: list[bytes]) -> str:
    return " ".join(line.decode("utf-8", "replace") for line in lines)


class _Expired(Exception):
    """Thrown into a session whose wait ran out (the loop's clock)."""


class Connection:
    """A lean SMTP client on one non-blocking socket.  Its methods are generators (``yield
    from`` them): each sends, waits for the reply and checks it, yielding ``(socket,
    events, until)`` to the loop (LoadTest._drive) whenever it must wait."""

    def __init__(self, options: Options, deadline: float, loop: "LoadTest") -> None:
        self.o = options
        self.deadline = deadline
        self.loop = loop
        self.buf = b""
        self.extensions: set[str] = set()
        self.auth: set[str] = set()
        self.sock: socket.socket | None = None

    def connect(self, address: tuple, family: int):
        sock = self.sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        no_delay(sock)
        try:
            err = sock.connect_ex(address)
            if err in _CONNECTING:
                yield from self._wait("connect", WRITE)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:
            raise Failure(f"connect: {e.strerror or e}") from None
        if err:  # Windows' socket errors have their texts in socket.errorTab
            raise Failure(f"connect: {getattr(socket, 'errorTab', {}).get(err) or os.strerror(err)}")

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"stopped: --max-seconds {self.o.max_seconds:g} reached")
        return left

    def _wait(self, stage: str, events: int):
        """Wait until the socket is ready for ``events``: at most --timeout, and not past
        --max-seconds."""
        left = self._left()
        cut = left < self.o.timeout  # near the end of --max-seconds: wait no longer than what is left
        try:
            yield self.sock, events, time.monotonic() + min(left, self.o.timeout)
        except _Expired:
            if cut:
                raise Failure(f"{stage}: no answer when --max-seconds {self.o.max_seconds:g} "
                              "was reached") from None
            raise Failure(f"{stage}: timed out after {self.o.timeout:g} s") from None

    def _io(self, stage: str, call, arg, blocked: int):
        """``call(arg)`` on the non-blocking socket, waiting whenever it would block (for
        ``blocked``, or for what TLS asks)."""
        while True:
            try:
                return call(arg)
            except BlockingIOError:
                yield from self._wait(stage, blocked)
            except ssl.SSLWantReadError:
                yield from self._wait(stage, READ)
            except ssl.SSLWantWriteError:
                yield from self._wait(stage, WRITE)
            except OSError as e:
                raise Failure(f"{stage}: {e.strerror or e}") from None

    def _recv(self, stage: str):
        sock = self.sock
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            yield from self._wait(stage, READ)  # a reply is never there the moment we ask
        return (yield from self._io(stage, sock.recv, 65536, READ))

    def _send(self, stage: str, data: bytes):
        view = memoryview(data)
        while view:
            view = view[(yield from self._io(stage, self.sock.send, view, WRITE)):]

    def reply(self, stage: str, expect: tuple[int, ...]):
        """The lines of one reply (code included); Failure unless its code is expected."""
        lines: list[bytes] = []
        while True:
            nl = self.buf.find(b"\n")
            while nl < 0:
                if len(self.buf) > MAX_REPLY_BYTES:
                    raise Failure(f"{stage}: reply longer than {MAX_REPLY_BYTES} bytes")
                data = yield from self._recv(stage)
                if not data:
                    raise Failure(f"{stage}: connection closed by the server")
                self.buf += data
                nl = self.buf.find(b"\n")
            line, self.buf = self.buf[:nl].rstrip(b"\r"), self.buf[nl + 1:]
            lines.append(line)
            if line[3:4] != b"-" or len(lines) > 1000:
                break
        code = int(line[:3]) if line[:3].isdigit() else 0
        if code not in expect:
            raise Failure(f"{stage}: {_plain_reply(lines)}", fatal=code in (0, 421))
        return lines

    def command(self, stage: str, line: bytes, expect: tuple[int, ...]):
        yield from self._send(stage, line)
        return (yield from self.reply(stage, expect))

    def hello(self, tls: ssl.SSLContext | None):
        """Greeting, EHLO (HELO if refused), then STARTTLS and AUTH as asked."""
        yield from self.reply("greeting", (220,))
        yield from self._ehlo()
        if tls is not None:
            if "STARTTLS" not in self.extensions:
                raise Failure("STARTTLS: not offered by the server")
            yield from self.command("STARTTLS", b"STARTTLS\r\n", (220,))
            self.buf = b""
            yield from self._handshake(tls)
            yield from self._ehlo()
        if self.o.user:
            yield from self._login()

    def _handshake(self, tls: ssl.SSLContext):
        try:
            ip = ipaddress.ip_address(self.o.host)
        except ValueError:
            ip = None
        self.loop.forget(self.sock)  # the TLS socket takes over the descriptor
        try:
            self.sock = tls.wrap_socket(self.sock, server_hostname=None if ip else self.o.host,
                                        do_handshake_on_connect=False)
        except OSError as e:
            raise Failure(f"STARTTLS: {e.strerror or e}") from None
        yield from self._io("STARTTLS", lambda _: self.sock.do_handshake(), None, READ)

    def _ehlo(self):
        name = self.o.ehlo.encode()
        try:
            lines = yield from self.command("EHLO", b"EHLO " + name + b"\r\n", (250,))
        except Failure as e:
            if e.fatal:
                raise
            yield from self.command("HELO", b"HELO " + name + b"\r\n", (250,))
            self.extensions = set()
            return
        words = [line[4:].decode("ascii", "replace").upper().split() for line in lines[1:]]
        self.extensions = {w[0] for w in words if w}
        self.auth = next((set(w[1:]) for w in words if w and w[0] == "AUTH"), set())

    def _login(self):
        user, password = self.o.user.encode(), self.o.password.encode()
        if "PLAIN" in self.auth:
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            yield from self.command("AUTH", b"AUTH PLAIN " + token + b"\r\n", (235,))
        elif "LOGIN" in self.auth:
            yield from self.command("AUTH", b"AUTH LOGIN\r\n", (334,))
            yield from self.command("AUTH", base64.b64encode(user) + b"\r\n", (334,))
            yield from self.command("AUTH", base64.b64encode(password) + b"\r\n", (235,))
        else:
            raise Failure("AUTH: the server offers neither AUTH PLAIN nor LOGIN"
                          + ("" if self.o.starttls else " (try --starttls)"))

    def send_mail(self, envelope: tuple[bytes, bytes], text: bytes):
        mail, rcpt = envelope
        if self.o.pipelining and "PIPELINING" in self.extensions:
            yield from self._send("MAIL", mail + rcpt + b"DATA\r\n")
            first: Failure | None = None
            for stage, expect in (("MAIL", (250,)), ("RCPT", (250, 251)), ("DATA", (354,))):
                try:
                    yield from self.reply(stage, expect)
                except Failure as e:
                    if e.fatal:
                        raise
                    first = first or e
                    continue
                if stage == "DATA" and first is not None:
                    first.fatal = True  # the server waits for a text that will not come
            if first is not None:
                raise first
        else:
            yield from self.command("MAIL", mail, (250,))
            yield from self.command("RCPT", rcpt, (250, 251))
            yield from self.command("DATA", b"DATA\r\n", (354,))
        yield from self.command("end of data", text + b".\r\n", (250,))

    def reset(self):
        yield from self.command("RSET", b"RSET\r\n", (250,))

    def close(self, polite: bool):
        try:
            if polite:
                yield from self.command("QUIT", b"QUIT\r\n", (221,))
        except Failure:
            pass  # every message was answered already: a rude goodbye costs nothing
        finally:
            self.shut()

    def shut(self) -> None:
        """Close the socket at once (also when the loop gives up on the session)."""
        if self.sock is not None:
            self.loop.forget(self.sock)
            self.sock.close()


# -- the run ----------------------------------------------------------------------------------

@dataclass
class Report:
    options: Options
    attempted: int = 0
    accepted: int = 0
    bytes_accepted: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)  # the first few distinct texts
    stopped: str = ""
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.accepted == self.options.messages and not self.errors and not self.stopped


def percentile(ordered: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p % of the values at or below it."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class LoadTest:
    """Run with ``run()``: SESSIONS sessions share the numbered messages until all are
    sent, one thread driving them all (module docstring)."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.report = Report(options)
        self.messages = Messages(options)
        self.stopping = False
        self._next = 1
        self._deadline = 0.0
        self._addresses: list[tuple] = []
        self._tls = client_tls_context(verify=False) if options.starttls else None
        params = b" SMTPUTF8" if not (options.sender + options.recipient).isascii() else b""
        self._envelope = (b"MAIL FROM:<" + options.sender.encode() + b">" + params + b"\r\n",
                          b"RCPT TO:<" + options.recipient.encode() + b">\r\n")
        self._selector: selectors.BaseSelector | None = None
        self._watched: dict[socket.socket, int] = {}  # socket -> the events it is registered for

    @property
    def _too_long(self) -> str:
        return f"--max-seconds {self.o.max_seconds:g} reached"

    def run(self) -> Report:
        self._deadline = time.monotonic() + self.o.max_seconds
        try:
            self._addresses = [(family, address) for family, _, _, _, address in socket.getaddrinfo(
                self.o.host, self.o.port, type=socket.SOCK_STREAM)]
        except socket.gaierror as e:
            self._fail(f"look-up of {self.o.host}: {e.strerror or e}")
            self._stop_sending("the server's address was not found")
        started = time.perf_counter()
        self._drive([self._session() for _ in range(min(self.o.sessions, self.o.messages))])
        r = self.report
        r.elapsed = time.perf_counter() - started
        return replace(r, error_kinds=dict(r.error_kinds), latencies=list(r.latencies))

    # -- the loop ---------------------------------------------------------------------------------
    def _drive(self, sessions: list) -> None:
        """Step every session until it ends: each yields ``(socket, events, until)``, and is
        resumed when the socket is ready, or has _Expired thrown in at ``until``."""
        sel = self._selector = (selectors.SelectSelector() if select_forced()  # as on Windows
                                else selectors.DefaultSelector())
        ready: deque = deque((session, None) for session in sessions)
        until: dict = {}  # waiting session -> when its wait runs out
        live = set(sessions)
        give_up = self._deadline + JOIN_GRACE
        try:
            while live:
                try:
                    while ready:
                        session, thrown = ready.popleft()
                        try:
                            sock, events, until[session] = (session.throw(thrown) if thrown
                                                            else session.send(None))
                        except StopIteration:
                            live.discard(session)
                            continue
                        if self._watched.get(sock) != events:
                            if sock in self._watched:
                                sel.modify(sock, events, session)
                            else:
                                sel.register(sock, events, session)
                            self._watched[sock] = events
                    now = time.monotonic()
                    if not live or now >= give_up:
                        break
                    wait = min(min(until.values()) - now, POLL_SECONDS)
                    for key, _ in sel.select(max(wait, 0.0)):
                        if until.pop(key.data, None) is not None:
                            ready.append((key.data, None))
                    now = time.monotonic()
                    for session in [s for s, t in until.items() if t <= now]:
                        del until[session]
                        ready.append((session, _Expired()))
                except KeyboardInterrupt:
                    self._stop_sending("interrupted (Ctrl+C)")
                    # No waiting out a server that is silent: a second for what is under way.
                    give_up = min(give_up, time.monotonic() + INTERRUPT_GRACE)
                    live = {s for s in live if s.gi_frame is not None}  # one interrupted mid-step ended
        finally:
            for session in live:
                session.close()  # its socket closes (_session's finally)
            sel.close()

    def forget(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (before it is closed or wrapped in TLS)."""
        if self._watched.pop(sock, None) is not None:
            self._selector.unregister(sock)

    # -- the sessions -----------------------------------------------------------------------------
    def _take(self) -> int | None:
        """The next message number, or None when all are taken or sending has stopped."""
        if self.stopping or self._next > self.o.messages:
            return None
        if time.monotonic() >= self._deadline:
            self._stop_sending(self._too_long)
            return None
        self._next += 1
        self.report.attempted += 1
        return self._next - 1

    def _stop_sending(self, reason: str) -> None:
        """The first reason given is the one reported."""
        self.report.stopped = self.report.stopped or reason
        self.stopping = True

    def _fail(self, text: str) -> None:
        r = self.report
        r.errors += 1
        if text in r.error_kinds or len(r.error_kinds) < ERROR_KINDS_SHOWN:
            r.error_kinds[text] = r.error_kinds.get(text, 0) + 1
        if time.monotonic() >= self._deadline:
            self._stop_sending(self._too_long)
        elif self.o.max_errors and r.errors >= self.o.max_errors:
            self._stop_sending(f"after {r.errors} errors (--max-errors {self.o.max_errors})")

    def _open(self):
        """Connect (to the first address that answers), greet, and log in if asked."""
        last = Failure("connect: no address")
        for i, (family, address) in enumerate(list(self._addresses)):
            conn = Connection(self.o, self._deadline, self)
            try:
                yield from conn.connect(address, family)
            except Failure as e:
                conn.shut()
                last = e
                continue
            except BaseException:  # the loop gave up (a stop, Ctrl+C)
                conn.shut()
                raise
            if i:  # the address that answered goes first from now on
                self._addresses.sort(key=lambda fa: fa[1] != address)
            break
        else:
            raise last
        try:
            yield from conn.hello(self._tls)
        except Failure as e:
            conn.shut()
            e.fatal = True
            raise
        except BaseException:
            conn.shut()
            raise
        return conn

    def _session(self):
        r = self.report
        conn: Connection | None = None
        used = 0
        try:
            while (n := self._take()) is not None:
                start = time.perf_counter()
                try:
                    text = self.messages.text(n)
                    if conn is None:
                        conn, used = (yield from self._open()), 0
                    used += 1
                    yield from conn.send_mail(self._envelope, text)
                    r.latencies.append(time.perf_counter() - start)
                    r.accepted += 1
                    r.bytes_accepted += len(text)
                except Failure as e:
                    self._fail(e.text)
                    if conn is not None and not e.fatal:
                        try:
                            yield from conn.reset()
                        except Failure:
                            e.fatal = True
                    if conn is not None and e.fatal:
                        conn.shut()
                        conn = None
                if conn is not None and used >= self.o.per_connection:
                    yield from conn.close(polite=True)
                    conn = None
            if conn is not None:
                yield from conn.close(polite=True)
                conn = None
        finally:
            if conn is not None:  # the loop gave up on this session
                conn.shut()


# -- the result -------------------------------------------------------------------------------

def format_report(r: Report) -> str:
    o = r.options
    each = "a new connection for each" if o.per_connection == 1 else f"up to {o.per_connection} per connection"
    lines = [f"loadtest {o.target}: {o.sessions} session(s), {o.messages} messages of "
             f"{o.length} bytes, {each}",
             f"messages:    {r.attempted} sent, {r.accepted} accepted, "
             f"{o.messages - r.attempted} not sent",
             f"errors:      {r.errors}"]
    for text, count in r.error_kinds.items():
        lines.append(f"  {count:>6} x  {text}")
    shown = sum(r.error_kinds.values())
    if r.errors > shown:
        lines.append(f"  {r.errors - shown:>6} x  (other errors)")
    if r.stopped:
        lines.append(f"stopped:     {r.stopped}")
    seconds = max(r.elapsed, 1e-9)
    lines += [f"elapsed:     {r.elapsed:.3f} s",
              f"messages/s:  {r.accepted / seconds:.1f}",
              f"MB/s:        {r.bytes_accepted / seconds / 1e6:.3f}"]
    if r.latencies:
        ordered = sorted(r.latencies)
        lines.append("latency ms:  " + "  ".join(f"{name} {percentile(ordered, p) * 1000:.1f}" for name, p in
                                                  (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))))
    else:
        lines.append("latency ms:  none (no message was accepted)")
    return "\n".join(lines)
