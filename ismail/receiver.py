"""Sockets and threads for incoming SMTP: one ThreadingTCPServer per listening address.

The accepting thread takes the limiter's slot before any thread is started: a
client over a limit gets its ``421 4.7.0`` and is disconnected right there, so a
flood of connections costs no threads.  Every admitted connection gets a thread
of its own that runs a Connection: read, feed the Session, write its replies.

Reads wait at most POLL_SECONDS at a time so that a thread notices on its own when
the server is stopping or the client has gone quiet for longer than the command
timeout.  The slot is given back the moment the session ends: on QUIT *before* the
221 is sent (a client that reconnects at once finds it free) or when the
connection drops.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import queue
import socket
import socketserver
import threading
import time
from typing import Callable
from typing import TYPE_CHECKING

from .limits import PER_HOST, Slot
from .replies import reply
from .session import Session
from .sockets import WAITED, no_delay, set_io_timeout

if TYPE_CHECKING:
    from .service import MailServer

log = logging.getLogger("ismail.receiver")

POLL_SECONDS = 1.0
RECV_BYTES = 65536
def client_ip(address: str) -> str:
    """The client's address as the limits and trusted networks see it (no IPv4-mapped form)."""
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

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:
                log.exception("a connection thread failed")
            with self._lock:
                self._idle += 1


class Listener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog: bursts of reconnecting clients wait in the kernel
    # On Windows SO_REUSEADDR would let another program take over the port; see server_bind.
    allow_reuse_address = os.name != "nt"

    def __init__(self, host: str, port: int, mail_server: "MailServer") -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.mail_server = mail_server
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        if os.name == "nt" and hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        if self.address_family == socket.AF_INET6:
            # "[::]:25" and "0.0.0.0:25" may both be configured: each takes its own family.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def process_request(self, request: socket.socket, client_address) -> None:
        ms = self.mail_server
        ip = client_ip(client_address[0])
        slot = ms.limiter.acquire(ip)
        if not isinstance(slot, Slot):
            _refuse(ms, request, ip, slot)
            self.shutdown_request(request)
            return
        ms.stats.add("connections_current")
        ms.stats.add("connections_total")
        try:
            ms.workers.submit(lambda: self._serve(request, client_address, ip, slot))
        except BaseException:
            self._finished(ip, slot)
            self.shutdown_request(request)
            raise

    def _serve(self, request: socket.socket, client_address, ip: str, slot: Slot) -> None:
        conn = Connection(self.mail_server, request, ip, client_address[1], slot)
        try:
            conn.run()
        except Exception:
            log.exception("%s: session ended by an unexpected error", ip)
        finally:
            self._finished(ip, slot)
            self.shutdown_request(request)

    def _finished(self, ip: str, slot: Slot) -> None:
        self.mail_server.limiter.release(slot)  # does nothing if QUIT already released it
        self.mail_server.stats.add("connections_current", -1)

    def handle_error(self, request, client_address) -> None:
        log.exception("error serving %s", client_address)


class _Handler(socketserver.BaseRequestHandler):
    """Required by BaseServer; unused, because process_request starts the threads itself
    (it must hold the limiter's slot before a thread exists)."""


def _refuse(ms: "MailServer", sock: socket.socket, ip: str, which: str) -> None:
    if which == PER_HOST:
        ms.stats.add("connections_refused_per_host_limit")
        text = "Too many connections from your host (per-host limit), try again later"
    else:
        ms.stats.add("connections_refused_total_limit")
        text = "Too many connections (total limit), try again later"
    log.warning("refused connection from %s: %s limit reached", ip, which)
    try:
        sock.setblocking(False)  # a fresh socket's send buffer is empty: this never waits
        sock.send(reply(421, "4.7.0", f"{ms.settings.server_name} {text}"))
    except OSError:
        pass


class Connection:
    """One client, from greeting to hang-up."""

    def __init__(self, ms: "MailServer", sock: socket.socket, ip: str, port: int, slot: Slot) -> None:
        self.ms = ms
        self.sock = sock
        self.ip = ip
        self.port = port
        self.slot = slot
        policy = ms.policy
        self.timeout = policy.settings.timeouts.command_seconds
        self.session = Session(ms, policy, ip, trusted=policy.is_trusted(ip))

    def run(self) -> None:
        ms, sock, session = self.ms, self.sock, self.session
        started = time.monotonic()
        no_delay(sock)
        set_io_timeout(sock, POLL_SECONDS)  # short waits, so the thread can look around
        self._send(session.greeting())
        deadline = time.monotonic() + self.timeout
        while not session.closing:
            try:
                data = sock.recv(RECV_BYTES)
            except WAITED:
                if ms.stopping and not session.in_transaction:
                    self._send(session.shutdown_reply())
                elif time.monotonic() > deadline:
                    ms.stats.add("sessions_timed_out")
                    log.info("%s: timeout after %ss idle", self.ip, self.timeout)
                    self._send(session.timeout_reply())
                continue
            except OSError:
                break
            if not data:
                break
            out = session.feed(data)
            deadline = time.monotonic() + self.timeout
            if session.closing:
                ms.limiter.release(self.slot)  # before the 221: a client reconnecting at once fits
            if out:
                self._send(out)
            if ms.stopping and not session.closing and not session.in_transaction:
                self._send(session.shutdown_reply())
        log.info("connection from %s port %s: %d message(s), %d error(s), %.2fs%s", self.ip,
                 self.port, session.messages, session.errors, time.monotonic() - started,
                 "" if session.quit else ", no QUIT")

    def _send(self, data: bytes) -> None:
        """Send it all; a client that reads nothing for the whole command timeout is dropped."""
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout
        while view:
            try:
                sent = self.sock.send(view)
            except WAITED:
                if time.monotonic() < deadline:
                    continue
                self.session.closing = True
                return
            except OSError:
                self.session.closing = True
                return
            view = view[sent:]
