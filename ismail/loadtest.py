"""Send test mail to an SMTP server and measure it: ``python3 -m ismail loadtest HOST:PORT``.

Postfix's ``smtp-source``, built in (standard library only, so it runs on Windows too).
SESSIONS client threads share MESSAGES numbered messages; by default each message has
a connection of its own (greeting, EHLO, MAIL, RCPT, DATA, the text, QUIT), as
smtp-source does, and ``--per-connection N`` sends up to N over one.  Commands go one
at a time (smtp-source has no pipelining either); ``--pipelining`` sends MAIL, RCPT and
DATA together when the server offers PIPELINING.

The client is a lean one on raw sockets: no smtplib, the commands prepared once, the
address looked up once, kernel time-outs (one system call per read or write).  Every
message is BYTES long with CRLF line ends (headers with a unique Message-ID and Subject,
then lines of 76 characters) and dot-stuffed on the way out.

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
import ipaddress
import math
import re
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field, replace

from .loadtest_cli import DEFAULT_TO
from .net.sockets import WAITED, client_tls_context, no_delay, set_io_timeout

MAX_REPLY_BYTES = 65536       # a server that says more than this in one reply is not answering
ERROR_KINDS_SHOWN = 5         # distinct error texts kept (the rest are only counted)
ERROR_TEXT_LIMIT = 200
JOIN_GRACE = 5.0              # seconds past --max-seconds the report waits for the threads
INTERRUPT_GRACE = 1.0         # seconds after Ctrl+C for the messages under way to finish
FILLER = (b"The quick brown fox jumps over the lazy dog; " * 2)[:76]   # one body line


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


class Connection:
    """A lean SMTP client on one socket: each method sends, reads the reply and checks it."""

    def __init__(self, options: Options, address: tuple, family: int, deadline: float) -> None:
        self.o = options
        self.deadline = deadline
        self.wait = min(options.timeout, self._left())
        self.buf = b""
        self.extensions: set[str] = set()
        self.auth: set[str] = set()
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            set_io_timeout(self.sock, self.wait)
            no_delay(self.sock)
            self._io("connect", self.sock.connect, address)
        except BaseException:
            self.sock.close()
            raise

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"stopped: --max-seconds {self.o.max_seconds:g} reached")
        return left

    def _io(self, stage: str, call, *args):
        left = self._left()
        if left < self.wait:  # near the end of --max-seconds: wait no longer than what is left
            self.wait = left
            set_io_timeout(self.sock, left)
        try:
            return call(*args)
        except (*WAITED, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if self.wait < self.o.timeout:  # the wait was cut short by the end of --max-seconds
                raise Failure(f"{stage}: no answer when --max-seconds {self.o.max_seconds:g} "
                              "was reached") from None
            raise Failure(f"{stage}: timed out after {self.o.timeout:g} s") from None
        except OSError as e:
            raise Failure(f"{stage}: {e.strerror or e}") from None

    def reply(self, stage: str, expect: tuple[int, ...]) -> list[bytes]:
        """The lines of one reply (code included); Failure unless its code is expected."""
        lines: list[bytes] = []
        while True:
            nl = self.buf.find(b"\n")
            while nl < 0:
                if len(self.buf) > MAX_REPLY_BYTES:
                    raise Failure(f"{stage}: reply longer than {MAX_REPLY_BYTES} bytes")
                data = self._io(stage, self.sock.recv, 65536)
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

    def command(self, stage: str, line: bytes, expect: tuple[int, ...]) -> list[bytes]:
        self._io(stage, self.sock.sendall, line)
        return self.reply(stage, expect)

    def hello(self, tls: ssl.SSLContext | None) -> None:
        """Greeting, EHLO (HELO if refused), then STARTTLS and AUTH as asked."""
        self.reply("greeting", (220,))
        self._ehlo()
        if tls is not None:
            if "STARTTLS" not in self.extensions:
                raise Failure("STARTTLS: not offered by the server")
            self.command("STARTTLS", b"STARTTLS\r\n", (220,))
            self.buf = b""
            try:
                ip = ipaddress.ip_address(self.o.host)
            except ValueError:
                ip = None
            name = None if ip else self.o.host
            self.sock = self._io("STARTTLS", lambda: tls.wrap_socket(self.sock, server_hostname=name))
            self._ehlo()
        if self.o.user:
            self._login()

    def _ehlo(self) -> None:
        name = self.o.ehlo.encode()
        try:
            lines = self.command("EHLO", b"EHLO " + name + b"\r\n", (250,))
        except Failure as e:
            if e.fatal:
                raise
            self.command("HELO", b"HELO " + name + b"\r\n", (250,))
            self.extensions = set()
            return
        words = [line[4:].decode("ascii", "replace").upper().split() for line in lines[1:]]
        self.extensions = {w[0] for w in words if w}
        self.auth = next((set(w[1:]) for w in words if w and w[0] == "AUTH"), set())

    def _login(self) -> None:
        user, password = self.o.user.encode(), self.o.password.encode()
        if "PLAIN" in self.auth:
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            self.command("AUTH", b"AUTH PLAIN " + token + b"\r\n", (235,))
        elif "LOGIN" in self.auth:
            self.command("AUTH", b"AUTH LOGIN\r\n", (334,))
            self.command("AUTH", base64.b64encode(user) + b"\r\n", (334,))
            self.command("AUTH", base64.b64encode(password) + b"\r\n", (235,))
        else:
            raise Failure("AUTH: the server offers neither AUTH PLAIN nor LOGIN"
                          + ("" if self.o.starttls else " (try --starttls)"))

    def send_mail(self, envelope: tuple[bytes, bytes], text: bytes) -> None:
        mail, rcpt = envelope
        if self.o.pipelining and "PIPELINING" in self.extensions:
            self._io("MAIL", self.sock.sendall, mail + rcpt + b"DATA\r\n")
            first: Failure | None = None
            for stage, expect in (("MAIL", (250,)), ("RCPT", (250, 251)), ("DATA", (354,))):
                try:
                    self.reply(stage, expect)
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
            self.command("MAIL", mail, (250,))
            self.command("RCPT", rcpt, (250, 251))
            self.command("DATA", b"DATA\r\n", (354,))
        self.command("end of data", text + b".\r\n", (250,))

    def reset(self) -> None:
        self.command("RSET", b"RSET\r\n", (250,))

    def close(self, polite: bool) -> None:
        try:
            if polite:
                self.command("QUIT", b"QUIT\r\n", (221,))
        except Failure:
            pass  # every message was answered already: a rude goodbye costs nothing
        finally:
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
    """Run with ``run()``: SESSIONS threads share the numbered messages until all are sent."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.report = Report(options)
        self.messages = Messages(options)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 1
        self._deadline = 0.0
        self._addresses: list[tuple] = []
        self._tls = client_tls_context(verify=False) if options.starttls else None
        params = b" SMTPUTF8" if not (options.sender + options.recipient).isascii() else b""
        self._envelope = (b"MAIL FROM:<" + options.sender.encode() + b">" + params + b"\r\n",
                          b"RCPT TO:<" + options.recipient.encode() + b">\r\n")

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
            with self._lock:
                self._stop_sending("the server's address was not found")
        started = time.perf_counter()
        threads = [threading.Thread(target=self._session, name=f"loadtest-{i}", daemon=True)
                   for i in range(min(self.o.sessions, self.o.messages))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive() and time.monotonic() < self._deadline + JOIN_GRACE:
                    t.join(0.2)  # short waits: Ctrl+C is seen on Windows too
        except KeyboardInterrupt:
            with self._lock:
                self._stop_sending("interrupted (Ctrl+C)")
            give_up = time.monotonic() + INTERRUPT_GRACE  # no waiting out a server that is silent
            for t in threads:
                t.join(max(0.0, give_up - time.monotonic()))
        with self._lock:  # a copy: a thread that outlived the waits cannot change the result
            r = self.report
            r.elapsed = time.perf_counter() - started
            return replace(r, error_kinds=dict(r.error_kinds), latencies=list(r.latencies))

    def _take(self) -> int | None:
        """The next message number, or None when all are taken or sending has stopped."""
        with self._lock:
            if self.stop.is_set() or self._next > self.o.messages:
                return None
            if time.monotonic() >= self._deadline:
                self._stop_sending(self._too_long)
                return None
            self._next += 1
            self.report.attempted += 1
            return self._next - 1

    def _stop_sending(self, reason: str) -> None:
        """The first reason given is the one reported; call with the lock held."""
        self.report.stopped = self.report.stopped or reason
        self.stop.set()

    def _fail(self, text: str) -> None:
        with self._lock:
            r = self.report
            r.errors += 1
            if text in r.error_kinds or len(r.error_kinds) < ERROR_KINDS_SHOWN:
                r.error_kinds[text] = r.error_kinds.get(text, 0) + 1
            if time.monotonic() >= self._deadline:
                self._stop_sending(self._too_long)
            elif self.o.max_errors and r.errors >= self.o.max_errors:
                self._stop_sending(f"after {r.errors} errors (--max-errors {self.o.max_errors})")

    def _open(self) -> Connection:
        """Connect (to the first address that answers), greet, and log in if asked."""
        last = Failure("connect: no address")
        for i, (family, address) in enumerate(list(self._addresses)):
            try:
                conn = Connection(self.o, address, family, self._deadline)
            except Failure as e:
                last = e
                continue
            if i:  # the address that answered goes first from now on
                with self._lock:
                    self._addresses.sort(key=lambda fa: fa[1] != address)
            break
        else:
            raise last
        try:
            conn.hello(self._tls)
        except Failure as e:
            conn.close(polite=False)
            e.fatal = True
            raise
        return conn

    def _session(self) -> None:
        latencies: list[float] = []
        accepted = size = used = 0
        conn: Connection | None = None
        while (n := self._take()) is not None:
            start = time.perf_counter()
            try:
                text = self.messages.text(n)
                if conn is None:
                    conn, used = self._open(), 0
                used += 1
                conn.send_mail(self._envelope, text)
                latencies.append(time.perf_counter() - start)
                accepted += 1
                size += len(text)
            except Failure as e:
                self._fail(e.text)
                if conn is not None and not e.fatal:
                    try:
                        conn.reset()
                    except Failure:
                        e.fatal = True
                if conn is not None and e.fatal:
                    conn.close(polite=False)
                    conn = None
            if conn is not None and used >= self.o.per_connection:
                conn.close(polite=True)
                conn = None
        if conn is not None:
            conn.close(polite=True)
        with self._lock:
            self.report.accepted += accepted
            self.report.bytes_accepted += size
            self.report.latencies += latencies


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
