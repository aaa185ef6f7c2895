"""Sockets and threads for every protocol: one ThreadingTCPServer per listening address.

A listener serves one protocol (SMTP, POP3, ...), described by a ``Protocol``
object: its connection limiter, how to make a session, its refusals and
time-outs.  What all listeners share is a ``Gate``: the stop flag, the ban list,
the counters, the TLS context and the worker threads.

The accepting thread takes the limiter's slot before any thread is involved: a
client over a limit gets the protocol's refusal (SMTP ``421 4.7.0``, POP3
``-ERR [SYS/TEMP]``) and is disconnected right there, so a flood of connections
costs no threads.  Every admitted connection is run by a pooled thread as a
Connection: read, feed the session, write what it returns.  Plain SMTP is the
exception: its listeners are served by one loop (net.reactor) that answers the
command talk of every connection and passes a connection to a pooled thread only
for what may wait (the message text and its fsync, AUTH, TLS), and takes it back.

A session is a state machine that never touches a socket (smtp.session,
pop3.session).  ``feed(data)`` returns the bytes to send: one ``bytes``, or a list
whose items are ``bytes`` or iterables of ``bytes`` (a POP3 RETR streams the
message from disk this way).  A session may also have ``tick()``, called about once
a second while the client is silent, for what it has to say unasked (IMAP's IDLE).  Reads wait at most POLL_SECONDS at a time so that a
thread notices on its own when the server is stopping or the client has gone quiet
for longer than the command timeout.  The slot is given back the moment the session
ends: on QUIT *before* the goodbye is sent (a client that reconnects at once finds
it free) or when the connection drops.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import queue
import select
import socket
import socketserver
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..config import ListenEntry
from ..logsetup import Repeats
from ..stats import Stats
from .guard import Guard
from .limits import PER_HOST, ConnectionLimiter, Slot
from .sockets import WAITED, no_delay, set_io_timeout

if TYPE_CHECKING:
    from .reactor import Reactor

log = logging.getLogger("ismail.receiver")

POLL_SECONDS = 1.0
RECV_BYTES = 65536
HANDSHAKE_SECONDS = 30.0
STRESS_SHARE = 0.8      # at 80 % of the total limit, the server counts as busy
STRESS_TIMEOUT = 10     # seconds an idle client may take then (Postfix: smtpd_timeout ${stress?10})
DATA_RATE_GRACE = 30.0  # seconds before the minimum data rate is enforced
SEND_BATCH = 65536      # streamed output is sent in writes of about this size


_CLIENT_IPS: dict[str, str] = {}


def client_ip(address: str) -> str:
    """The client's address as the limits and trusted networks see it (no IPv4-mapped form)."""
    known = _CLIENT_IPS.get(address)
    if known is None:
        if len(_CLIENT_IPS) >= 4096:
            _CLIENT_IPS.clear()
        known = _CLIENT_IPS[address] = _client_ip(address)
    return known


def _client_ip(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class WorkerPool:
    """Threads that serve one connection after another.

    socketserver's ThreadingMixIn starts a thread per connection, and the accepting
    thread waits until the new thread has run; with busy threads competing for the GIL
    that wait throttles every accept.  Here a connection goes to an idle worker, and a
    thread is started only when none is idle.  The limiter caps connections, so the
    pool never grows past the largest total limit that was in force.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0
        self._stopped = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0
            if start:
                self._count += 1
            else:
                self._idle -= 1
        if start:
            threading.Thread(target=self._work, name=f"smtp-worker-{self._count}", daemon=True).start()
        self._jobs.put(job)

    def stop(self) -> None:
        """Idle threads end now; busy ones after their connection (the server stops accepting)."""
        with self._lock:
            self._stopped = True
            idle, self._idle = self._idle, 0
            self._count -= idle
        for _ in range(idle):
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                log.exception("a connection thread failed")
            with self._lock:
                if self._stopped:
                    self._count -= 1
                    return
                self._idle += 1


class Gate:
    """What every listener shares, whatever its protocol."""

    def __init__(self, guard: Guard, stats: Stats, workers: WorkerPool) -> None:
        self.guard = guard
        self.stats = stats
        self.workers = workers
        self.stopping = False
        self.tls_context: ssl.SSLContext | None = None
        self.handshake_seconds = HANDSHAKE_SECONDS  # antispam.tls_handshake_seconds
        self.refusals = Repeats(log)  # refused connections: one line a minute per address


class Protocol:
    """One protocol's side of the connection layer; smtp/ and pop3/ subclass it.

    ``counter`` names the protocol's connection counters: "" for SMTP (the names the
    statistics have always had), "pop3_" for POP3.
    """

    name = "?"
    counter = ""
    stress_timeout = True    # a busy server cuts idle clients after STRESS_TIMEOUT
    loop = False             # plain connections may be served by a loop (net.reactor)

    def __init__(self, limiter: ConnectionLimiter) -> None:
        self.limiter = limiter

    def session(self, ip: str, entry: ListenEntry, tls_available: bool) -> Any:
        raise NotImplementedError

    def refusal(self, why: str) -> bytes:
        """The one line a refused client gets: ``why`` is "access", TOTAL or PER_HOST."""
        raise NotImplementedError

    def timeouts(self) -> tuple[float, float, int]:
        """(idle seconds, whole-session seconds, minimum bytes/s while in DATA or 0)."""
        raise NotImplementedError

    def admit(self, ip: str) -> bytes | None:
        """A refusal for a new connection from ``ip`` (a rate limit), or None."""
        return None

    def greeting_pause(self, ip: str) -> float:
        """Seconds to wait before greeting ``ip`` (a client that talks meanwhile is refused)."""
        return 0.0

    def checks_pregreet(self, ip: str) -> bool:
        """Whether ``ip`` is refused when it talks before the greeting (SMTP, strangers)."""
        return False

    def pregreeted(self, ip: str) -> None:
        """A client talked before the greeting (counted by the protocol that cares)."""

    def pregreet_reply(self) -> bytes:
        return b""

    def ended(self, session: Any, ip: str, port: int, seconds: float) -> None:
        """The connection is over: close what the session holds, write the log line."""


class Listener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog: bursts of reconnecting clients wait in the kernel
    # On Windows SO_REUSEADDR would let another program take over the port; see server_bind.
    allow_reuse_address = os.name != "nt"

    def __init__(self, entry: ListenEntry, gate: Gate, protocol: Protocol) -> None:
        self.address_family = socket.AF_INET6 if ":" in entry.host else socket.AF_INET
        self.gate = gate
        self.protocol = protocol
        self.entry = entry
        self.label = entry.label if protocol.name == "SMTP" else f"{protocol.name} {entry.label}"
        self.reactor: Reactor | None = None  # the loop serving this listener, if one does
        super().__init__((entry.host, entry.port), _Handler)

    def server_bind(self) -> None:
        if os.name == "nt" and hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        if self.address_family == socket.AF_INET6:
            # "[::]:25" and "0.0.0.0:25" may both be configured: each takes its own family.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def start(self, reactor: "Reactor | None") -> threading.Thread | None:
        """Serve: from ``reactor``'s loop if the protocol and the address allow it, else
        from a thread of its own (returned)."""
        if reactor is not None and self.protocol.loop and not self.entry.tls:
            self.reactor = reactor
            reactor.add_listener(self)
            return None
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                  name=f"listen-{self.label}", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        if self.reactor is not None:
            self.reactor.remove_listener(self)
        else:
            super().shutdown()

    def process_request(self, request: socket.socket, client_address) -> None:
        gate, proto = self.gate, self.protocol
        ip = client_ip(client_address[0])
        stats, prefix = gate.stats, proto.counter
        if gate.guard.refused(ip):
            stats.add(f"{prefix}connections_refused_access")
            _say(request, proto.refusal("access"))
            self.shutdown_request(request)
            return
        refusal = proto.admit(ip)
        if refusal is not None:
            stats.add(f"{prefix}connections_refused_access")
            _say(request, refusal)
            self.shutdown_request(request)
            return
        slot = proto.limiter.acquire(ip)
        if not isinstance(slot, Slot):
            _refuse(gate, proto, request, ip, slot)
            self.shutdown_request(request)
            return
        stats.add(f"{prefix}connections_current")
        stats.add(f"{prefix}connections_total")
        try:
            conn = Connection(self.gate, self.protocol, request, ip, client_address[1], slot, self.entry)
            if self.reactor is not None:
                self.reactor.open(self, conn)
            else:
                gate.workers.submit(lambda: self._serve(conn))
        except BaseException:
            self._finished(ip, slot)
            self.shutdown_request(request)
            raise

    def _serve(self, conn: "Connection") -> None:
        try:
            conn.run()
        except Exception:
            log.exception("%s: session ended by an unexpected error", conn.ip)
        finally:
            self.finish(conn)

    def greet_later(self, conn: "Connection", pause: float) -> None:
        """In a worker thread, for the loop: the greeting pause, the greeting, and the talk
        until the connection can go back to the loop."""
        def serve() -> bool:
            if conn.pregreeted(pause):
                return False
            conn._wait_style()
            conn._send(conn.session.greeting())
            return conn.talk(handback=True)
        self._serve_then_hand_back(conn, serve)

    def serve_rest(self, conn: "Connection", data: bytes | None, out: bytes | None) -> None:
        """In a worker thread, for the loop: serve ``conn`` until it can go back, or ends."""
        self._serve_then_hand_back(conn, lambda: conn.talk(data, out, handback=True))

    def _serve_then_hand_back(self, conn: "Connection", serve: Callable[[], bool]) -> None:
        back = False
        try:
            back = serve()
        except Exception:
            log.exception("%s: session ended by an unexpected error", conn.ip)
        if back and self.reactor is not None:
            self.reactor.take_back(self, conn)
        else:
            self.finish(conn)

    def finish(self, conn: "Connection") -> None:
        """The connection is over: its slot back, the session's log line, the socket closed."""
        self._finished(conn.ip, conn.slot)
        try:
            self.protocol.ended(conn.session, conn.ip, conn.port, conn.seconds())
        except Exception:
            log.exception("%s: closing the session failed", conn.ip)
        if conn.sock is not conn.request:  # the TLS socket took over the connection
            try:
                conn.sock.close()
            except OSError:
                pass
        self.shutdown_request(conn.request)

    def _finished(self, ip: str, slot: Slot) -> None:
        self.protocol.limiter.release(slot)  # does nothing if QUIT already released it
        self.gate.stats.add(f"{self.protocol.counter}connections_current", -1)

    def handle_error(self, request, client_address) -> None:
        log.exception("error serving %s", client_address)


class _Handler(socketserver.BaseRequestHandler):
    """Required by BaseServer; unused, because process_request starts the threads itself
    (it must hold the limiter's slot before a thread exists)."""


def _refuse(gate: Gate, proto: Protocol, sock: socket.socket, ip: str, which: str) -> None:
    kind = "per_host" if which == PER_HOST else "total"
    gate.stats.add(f"{proto.counter}connections_refused_{kind}_limit")
    if which == PER_HOST:
        key, what = (proto.name, ip), f"{proto.name} connections refused from {ip} ({which} limit)"
    else:  # a crowd of addresses at the total limit: one line a minute for all of them
        key, what = (proto.name, which), f"{proto.name} connections refused ({which} limit)"
    gate.refusals.warning(key, what, "refused %s connection from %s: %s limit reached",
                      proto.name, ip, which)
    _say(sock, proto.refusal(which))


def _say(sock: socket.socket, data: bytes) -> None:
    """One reply on a connection we are about to close, from the accepting thread."""
    try:
        sock.setblocking(False)  # a fresh socket's send buffer is empty: this never waits
        sock.send(data)
    except OSError:
        pass


class Connection:
    """One client, from greeting to hang-up.

    In a thread, ``run()`` serves it from the greeting and ``talk()`` from any later
    point; with a loop (net.reactor) the loop serves its command talk and passes it to
    ``talk()`` in a thread for whatever may wait, and takes it back afterwards.
    """

    def __init__(self, gate: Gate, proto: Protocol, sock: socket.socket, ip: str, port: int,
                 slot: Slot, entry: ListenEntry) -> None:
        self.gate = gate
        self.proto = proto
        self.sock = sock
        self.request = sock  # the accepted socket, whatever TLS wraps around it
        self.ip = ip
        self.port = port
        self.slot = slot
        self.entry = entry
        self.timeout, self.session_seconds, self.min_data_rate = proto.timeouts()
        self.tls = gate.tls_context
        self.started = time.monotonic()
        self._dead = False  # a send failed: the client is gone, send nothing more
        self.waits = False  # the socket is in the waiting mode of _wait_style (not the loop's)
        self.session = proto.session(ip, entry, self.tls is not None)
        # Progress, for the time-outs: complete lines seen, and when the last one came.
        self.last_lines, self.idle_since = 0, self.started
        self.data_since, self.data_bytes = 0.0, 0  # while in DATA: since when, how much
        self.session_end = self.started + self.session_seconds

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def run(self) -> None:
        no_delay(self.sock)
        if self.entry.tls and not self._handshake():
            return
        if self.pregreeted(self.proto.greeting_pause(self.ip)):
            return
        self._wait_style()
        self._send(self.session.greeting())
        self.talk()

    def pregreeted(self, pause: float = 0.0) -> bool:
        """A client that talked before the greeting (or during the pause before it, which
        is waited out here): answered, to be hung up on."""
        if self.entry.tls or not self.proto.checks_pregreet(self.ip) or not _talks_first(self.sock, pause):
            return False
        self.proto.pregreeted(self.ip)
        # Real mail servers wait for the greeting; spam bots often do not (Postfix's
        # postscreen calls it "pregreet").
        self.gate.stats.add("protocol_errors")
        log.info("%s: talked before the greeting: disconnected", self.ip)
        self._send(self.proto.pregreet_reply())
        return True

    def talk(self, data: bytes | None = None, out: bytes | None = None, handback: bool = False) -> bool:
        """Serve the client until the session ends.

        ``out`` is a reply still to be sent (with what follows a feed: a delay, STARTTLS),
        ``data`` input not yet fed.  With ``handback``, return True as soon as the session is
        back to plain command talk (the loop's part); False means the connection is over.
        """
        gate, session = self.gate, self.session
        if out is not None and not self._answer(out, time.monotonic()):
            return False
        if data is not None and not session.closing:
            if not self._take(data, time.monotonic()):
                return False
        tick = getattr(session, "tick", None)
        while not session.closing:
            if handback and self.loop_may_serve():
                return True
            if not self.waits:  # from the loop's non-blocking mode: only now that a read must wait
                self._wait_style()
            try:
                data = self.sock.recv(RECV_BYTES)
            except WAITED:
                data = None
            except OSError:
                break
            now = time.monotonic()
            if data is None:
                if gate.stopping and not session.in_transaction:
                    self._send(session.shutdown_reply())
                    continue
                if tick is not None:  # a session that reports on its own (IMAP IDLE)
                    out = tick()
                    if out:
                        self._send(out)
                    if session.lines != self.last_lines:
                        self.last_lines, self.idle_since = session.lines, now
                self._send_overdue(now)
                continue
            if not data or not self._take(data, now):
                break
        return False

    def loop_may_serve(self) -> bool:
        """Nothing under way that could wait: a loop can serve what comes next."""
        session = self.session
        return (not session.closing and not session.in_data and not session.starttls
                and not session.delay and not isinstance(self.sock, ssl.SSLSocket)
                and not getattr(session, "awaiting_answer", False))

    def progress(self, data: bytes, now: float) -> None:
        """Bookkeeping after a feed: a whole line is progress; DATA's pace is measured."""
        session = self.session
        if session.lines != self.last_lines:
            self.last_lines, self.idle_since = session.lines, now
        if session.in_data:
            if not self.data_since:
                self.data_since, self.data_bytes = now, 0
            self.data_bytes += len(data)
        else:
            self.data_since = 0.0

    def _take(self, data: bytes, now: float) -> bool:
        """Feed what the client sent and act on the session's answer; False when it is over."""
        out = self.session.feed(data)
        self.progress(data, now)
        return self._answer(out, now)

    def _answer(self, out: bytes | list, now: float) -> bool:
        gate, session = self.gate, self.session
        if session.closing:
            self.proto.limiter.release(self.slot)  # before the goodbye: a client reconnecting at once fits
        if session.delay:
            time.sleep(min(session.delay, 10.0))
            session.delay = 0.0
        if out:
            self._send(out)
        if session.starttls and not session.closing:
            if not self._handshake():
                return False
            session.tls_started()
            return True
        self._send_overdue(now)
        if gate.stopping and not session.closing and not session.in_transaction:
            self._send(session.shutdown_reply())
        return True

    def _send_overdue(self, now: float) -> None:
        out = self.overdue(now)
        if out:
            self._send(out)

    def overdue(self, now: float) -> bytes:
        """Cut off clients that are idle, too slow, or simply never finish: the last reply."""
        session = self.session
        if session.closing:
            return b""
        limit = self.timeout
        if self.proto.stress_timeout and self.proto.limiter.busy(STRESS_SHARE):
            limit = min(limit, STRESS_TIMEOUT)  # busy: idle clients make room sooner (Postfix's stress mode)
        why = ""
        if now - self.idle_since > limit:
            why = f"timeout after {limit}s without a complete command"
        elif now > self.session_end:
            why = f"session longer than {self.session_seconds}s"
        elif (self.data_since and self.min_data_rate and now - self.data_since > DATA_RATE_GRACE
              and self.data_bytes / (now - self.data_since) < self.min_data_rate):
            why = f"data slower than {self.min_data_rate} bytes/s"
        if not why:
            return b""
        self.gate.stats.add(f"{self.proto.counter}sessions_timed_out")
        log.info("%s: %s", self.ip, why)
        return session.timeout_reply()

    def _wait_style(self) -> None:
        self.waits = True
        # Plain connections: kernel time-outs (one system call per read); TLS: Python's,
        # as an expired kernel wait inside OpenSSL is not a clean "try again".
        if isinstance(self.sock, ssl.SSLSocket):
            self.sock.settimeout(POLL_SECONDS)
        else:
            set_io_timeout(self.sock, POLL_SECONDS)

    def _handshake(self) -> bool:
        """Upgrade to TLS (port 465 at once, or after STARTTLS); False if it failed."""
        if self.tls is None:
            return False
        self.sock.settimeout(self.gate.handshake_seconds)
        try:
            self.sock = self.tls.wrap_socket(self.sock, server_side=True)
        except (OSError, ValueError) as e:
            log.info("%s: TLS handshake failed: %s", self.ip, e)
            return False
        self._wait_style()
        return True

    def _send(self, out: bytes | list) -> None:
        """Send a session's output: bytes, or a list of bytes and iterables of bytes.

        Streamed pieces are gathered into writes of about SEND_BATCH bytes, so a POP3
        client downloading small messages costs one system call per batch, not per line.
        """
        if isinstance(out, (bytes, bytearray)):
            self._write(out)
            return
        batch = bytearray()
        for item in out:
            pieces: Iterable[bytes] = (item,) if isinstance(item, (bytes, bytearray)) else item
            for piece in pieces:
                if not batch and len(piece) >= SEND_BATCH:   # big enough: no copy into a batch
                    if not self._write(piece):
                        return
                    continue
                batch += piece
                if len(batch) >= SEND_BATCH:
                    if not self._write(batch):
                        return
                    batch = bytearray()
        if batch:
            self._write(batch)

    def _write(self, data: bytes | bytearray) -> bool:
        """Send it all; a client that reads nothing for the whole command timeout is dropped."""
        if self._dead:
            return False
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout
        while view:
            try:
                sent = self.sock.send(view)
            except WAITED:
                if not self.waits:  # the loop's non-blocking socket: from here on, wait
                    self._wait_style()
                    continue
                if time.monotonic() < deadline:
                    continue
                self._dead = True
                self.session.closing = True
                return False
            except OSError:
                self._dead = True
                self.session.closing = True
                return False
            view = view[sent:]
        return True


def _talks_first(sock: socket.socket, pause: float = 0.0) -> bool:
    """Has the client sent anything before our greeting (waiting ``pause`` seconds for it)?

    With a pause, the answer comes from a read that waits the whole pause, not from where
    the scheduler happened to be: a client that talks within it is always seen."""
    try:
        if not pause and sock.gettimeout() == 0.0:  # non-blocking (the loop's): one system call
            return bool(sock.recv(1, socket.MSG_PEEK))
        readable, _, _ = select.select([sock], [], [], pause)
        if not readable:
            return False
        return bool(sock.recv(1, socket.MSG_PEEK))
    except (OSError, ValueError):
        return False
