"""One thread that serves every plain SMTP connection while it only talks.

With a thread per connection, each read and write lets go of the GIL and takes it
back, and ten busy clients turn every one of those into a hand-over between
threads: measured on a 2-core machine, about 200 futex calls per relayed message,
with the interpreter holding the GIL a quarter of the time and the rest lost in
wake-ups.  Here one thread accepts, greets and answers EHLO, MAIL, RCPT, RSET,
NOOP, QUIT and the rest for every connection, with non-blocking sockets and a
selector: no other thread wants the GIL for that work, so taking it back is free.

Whatever may wait goes to a worker thread, which serves the connection exactly as
a thread-per-connection server would (listener.Connection.talk): a large message's
text, or one from a client the anti-spam checks look at, AUTH (a password check),
STARTTLS and everything over TLS, a tarpit delay, a reply the client does not read.
When the session is back to plain command talk the worker hands the connection back.
A session itself decides what may wait (``may_block``); the loop never feeds it
anything else.

A small message's end the loop takes itself: the session *stages* it (appends it to
the journal without waiting for the disk) and its connection waits aside, while one
thread, "smtp-settle", takes the staged messages in order: it waits for the journal's
sync (the first one's serves all staged before it began) and writes the Maildir files
into tmp/, and hands them back to the loop, which renames each into new/ and sends its
250.  Ten worker threads each waiting for its own message's sync spent more time
handing the interpreter's lock around than storing; and a settling thread that also
renamed and answered still handed it to and fro with the loop at each of those system
calls (9-10 thread switches per message at 10 sessions, 3-5 now, and a third less of
the interpreter's time).  When one client is connected and its message is for our own
mailboxes, the loop settles it itself (``_settle_here``): nobody else is waiting for
the loop, and the hand-over to the settling thread and back cost two wake-ups of a
sleeping thread a message (local mail at 1 session +12-16 %, 12 interleaved pairs).
For mail to send on only (the queue's threads want the lock then: the loop settling it
measured 20 % slower), where the loop has nobody else to serve, and where placing one
takes longer than LOOP_PLACE_MAX, the settling thread answers itself.  With one client
it then also waits up to FOLLOW_UP_SECONDS for what the client sends next (its QUIT,
or the next message's MAIL, usually tens of microseconds after the 250) and answers
that too: handing the connection back would wake a loop that slept through the sync,
and on this VM that wake-up took as long as the command (1 session +10-15 %).  Where
placing is slow (a virus scanner looking at each new file, a network disk) staged
messages would wait in line behind each other: a message is staged only while the ones
waiting, times what settling one takes lately (the least of the last SETTLE_SAMPLES:
one not waiting for a sync), come to at most SETTLE_WAIT_MAX; the ends of the others
go to the workers, which store side by side as before.  (A settle's time includes
waits for the interpreter's lock: at 5 ms, 2-4 % of messages went to the workers with
no slowness at all; at 10 ms, 0.1 %.)

The listener stays a socketserver.TCPServer (its limits, refusals and bans are the
same code); the loop accepts on its socket instead of ``serve_forever``.  Time-outs
and a stopping server are checked once a second, as a waiting thread does.
"""
from __future__ import annotations

import collections
import logging
import queue
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Callable

from .listener import RECV_BYTES
from .poller import EpollPoller, SelectorsPoller, make_poller
from .sockets import no_delay

if TYPE_CHECKING:
    from .listener import Connection, Gate, Listener

log = logging.getLogger("ismail.receiver")

ACCEPTS_PER_WAKE = 32   # connections taken from one listener before looking at the others
SCAN_SECONDS = 1.0      # how often idle clients are checked for time-outs and a stop
SETTLE_WAIT_MAX = 0.01   # the longest wait in line for the settling thread a message is staged for
LOOP_PLACE_MAX = 0.0005  # the longest settle (placing, answering) the loop does itself
FOLLOW_UP_SECONDS = 0.001  # how long the settling thread waits for a lone client's next command
SETTLE_SAMPLES = 16      # how many recent settle times give the cost of one (the least of them)


def _after_reply(after: Callable[[], None] | None) -> None:
    """What a settled message leaves for after its reply (its log line: not between the
    sync and the reply)."""
    if after is not None:
        try:
            after()
        except Exception:
            log.exception("SMTP loop: after a reply")


class Reactor:
    def __init__(self, gate: "Gate") -> None:
        self.gate = gate
        self._lock = threading.Lock()  # guards _thread and _listeners
        self._thread: threading.Thread | None = None
        self._listeners: set["Listener"] = set()
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._conns: dict["Connection", "Listener"] = {}  # served by the loop right now
        self._sleeping = False
        self._sel: EpollPoller | SelectorsPoller | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._settling: queue.SimpleQueue | None = None  # staged messages for the settling thread
        self._settler: threading.Thread | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=SETTLE_SAMPLES)
        self._settle_cost = 0.0  # seconds, the least recent settle(): most others also waited for a sync
        self.followed = 0  # inputs the settling thread answered after a 250 (_follow_up; for the tests)
        self.settled_here = 0  # messages the loop settled itself (_settle_here; for the tests)

    # -- from any thread --------------------------------------------------------------------------
    def add_listener(self, listener: "Listener") -> None:
        listener.socket.setblocking(False)
        with self._lock:
            self._listeners.add(listener)
            if self._thread is None:
                self._sel = make_poller()
                log.info("SMTP loop: waits with %s", self._sel.name)
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                self._wake_w.setblocking(False)
                self._sel.register(self._wake_r, None)
                self._thread = threading.Thread(target=self._run, name="smtp-loop", daemon=True)
                self._thread.start()
        self.call(lambda: self._sel.register(listener.socket, listener))

    def remove_listener(self, listener: "Listener", timeout: float = 10.0) -> None:
        """Stop accepting on ``listener``; returns once the loop has let go of its socket."""
        done = threading.Event()

        def remove() -> None:
            try:
                self._sel.unregister(listener.socket)
            except (KeyError, ValueError):
                pass
            with self._lock:
                self._listeners.discard(listener)
            done.set()
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
        if running and threading.current_thread() is not self._thread:
            self.call(remove)
            if not done.wait(timeout):
                log.warning("the SMTP loop did not let go of %s in time", listener.label)
        else:
            remove()

    def take_back(self, listener: "Listener", conn: "Connection") -> None:
        """A worker is done with the part of ``conn`` that could wait: the loop serves it again
        (or, if the loop has ended because the server stopped, the connection ends)."""
        with self._lock:
            if self._thread is not None:
                if self._sel.threadsafe:
                    # epoll takes a new socket while the loop waits: no need to wake it, the
                    # client's next command will.  (Windows' select() would not see it.)
                    self._adopt(listener, conn)
                else:
                    self.call(lambda: self._adopt(listener, conn))
                return
        listener.finish(conn)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the loop's thread, soon."""
        self._calls.append(fn)
        self._wake()

    def _call_if_running(self, fn: Callable[[], None]) -> bool:
        """``call``, unless the loop has ended (the server stopping): False then.  Under
        the lock the loop takes to decide that it ends, so ``fn`` never waits for a loop
        that is gone."""
        with self._lock:
            if self._thread is None:
                return False
            self._calls.append(fn)
        self._wake()
        return True

    def _wake(self) -> None:
        if self._sleeping and self._wake_w is not None:
            try:
                self._wake_w.send(b"\0")
            except OSError:  # its buffer is full: the loop is awake anyway
                pass

    # -- in the loop's thread ---------------------------------------------------------------------
    def open(self, listener: "Listener", conn: "Connection") -> None:
        """A connection just accepted (listener.process_request, in the loop)."""
        sock = conn.sock
        sock.setblocking(False)
        no_delay(sock)
        pause = conn.proto.greeting_pause(conn.ip)
        if pause:  # waited out in a worker: the loop never sleeps for one client
            self.gate.workers.submit(lambda: listener.greet_later(conn, pause))
            return
        if conn.pregreeted():
            listener.finish(conn)
            return
        if not self._send(listener, conn, conn.session.greeting()):
            return
        self._adopt(listener, conn)

    def _adopt(self, listener: "Listener", conn: "Connection") -> None:
        """The loop serves ``conn`` from now on (in the loop, or from a worker with epoll)."""
        if conn.waits:
            conn.sock.setblocking(False)
            conn.waits = False
        self._conns[conn] = listener  # before the selector can report it
        self._sel.register(conn.sock, conn)
        # Input that came while a worker had it is seen by the selector: the socket is readable.

    def _release(self, conn: "Connection") -> "Listener":
        listener = self._conns.pop(conn)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        return listener

    def _to_worker(self, conn: "Connection", data: bytes | None, out: bytes | None) -> None:
        listener = self._release(conn)
        self.gate.workers.submit(lambda: listener.serve_rest(conn, data, out))

    def _settle(self, conn: "Connection", out: bytes) -> None:
        """A message's end was staged (smtp.session.feed with stage): its reply goes out
        after ``out`` once the journal's sync holds it and its file is in place: here
        for a lone client's local mail (``_settle_here``), else by the settling thread
        (``_settle_run``)."""
        if (conn.session.pending_local and self._settle_cost <= LOOP_PLACE_MAX
                and len(self._conns) == 1 and conn.proto.limiter.total == 1
                and (self._settling is None or self._settling.empty())):
            self._settle_here(conn, out)
            return
        listener = self._release(conn)
        if self._settler is None:
            self._settling = queue.SimpleQueue()
            self._settler = threading.Thread(target=self._settle_run, args=(self._settling,),
                                             name="smtp-settle", daemon=True)
            self._settler.start()
        self._settling.put((listener, conn, out))

    def _settle_here(self, conn: "Connection", out: bytes) -> None:
        """(The loop) the message of its one client, for our own mailboxes: made durable,
        put in place and answered here, as the settling thread would (module docstring:
        why).  Nobody else is connected, so nobody waits for the loop meanwhile, but a
        client that connects now waits for this sync before its greeting."""
        session = conn.session
        session.durable()
        out += self._settled(session, 0.0)
        self.settled_here += 1
        after, session.after_reply = session.after_reply, None
        self._reply(conn, out)
        _after_reply(after)

    def _settle_run(self, waiting: queue.SimpleQueue) -> None:
        """One thread takes the staged messages in the order they were staged, all that
        are waiting at once: the first one's wait for a sync covers every message staged
        before it began (group commit, with no thread waiting per message).  Then it
        writes their files into tmp/ and the loop renames and answers them (``_answer``),
        or it answers them itself (module docstring: when and why)."""
        while True:
            batch = [waiting.get()]
            slow = self._settle_cost > LOOP_PLACE_MAX
            while not slow:  # every message staged by now: one sync serves them all
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            for _, conn, _ in batch:
                conn.session.durable()
            if slow or (len(batch) == 1 and not self._conns):
                # Slow to put in place (the loop must not wait for it: here, one at a time,
                # the ones after it waiting in line), or the loop has nobody else to serve
                # (a hand-over would only add a wake-up): here.
                self._answer(batch, [0.0] * len(batch), follow=len(batch) == 1)
                continue
            ahead, local = [], False
            for _, conn, _ in batch:
                began = time.perf_counter()
                local |= conn.session.write_ahead()  # creating a file is the slow part: not in the loop
                ahead.append(time.perf_counter() - began)
            # Mail to send on only, or a loop that has ended (a stop): answered here.
            if not (local and self._call_if_running(lambda b=batch, a=ahead: self._answer(b, a))):
                self._answer(batch, ahead)

    def _answer(self, batch: list, ahead: list[float], follow: bool = False) -> None:
        """Put staged messages whose sync is done in place and answer them (in the loop,
        or in the settling thread); ``ahead``: the seconds each one's file took to write
        ahead (the cost of a message is the sum)."""
        for (listener, conn, out), spent in zip(batch, ahead):
            session = conn.session
            out += self._settled(session, spent)
            after, session.after_reply = session.after_reply, None
            try:
                self._resume(listener, conn, out, follow)
            except Exception:
                log.exception("SMTP loop: serving a connection failed")
                listener.finish(conn)
            _after_reply(after)

    def _settled(self, session, spent: float) -> bytes:
        """``session.settle()``: the staged message put in place, its reply; its cost
        (with ``spent`` writing its file ahead) joins the recent ones."""
        began = time.perf_counter() - spent
        try:
            out = session.settle()
        except Exception:
            log.exception("SMTP loop: answering a stored message failed")
            session.closing = True
            out = b""
        self._recent.append(time.perf_counter() - began)
        self._settle_cost = min(self._recent)
        return out

    def _resume(self, listener: "Listener", conn: "Connection", out: bytes, follow: bool = False) -> None:
        """(The settling thread) the reply sent, the connection goes back to the loop, or
        to a worker if the client pipelined more after its message."""
        session = conn.session
        if self.gate.stopping and not session.closing and not session.buffered:
            out += session.shutdown_reply()  # as the loop says it after any reply
        if session.closing:
            conn.proto.limiter.release(conn.slot)
            if self._send(listener, conn, out):
                listener.finish(conn)
            return
        if not self._send(listener, conn, out):
            return
        if session.buffered:
            self.gate.workers.submit(lambda: listener.serve_rest(conn, b"", None))
        elif follow and not self._conns and self._settling.empty():
            self._follow_up(listener, conn)
        else:
            self.take_back(listener, conn)

    def _follow_up(self, listener: "Listener", conn: "Connection") -> None:
        """(The settling thread, for the one client the loop would serve) its next command
        comes within tens of microseconds of the 250 (a QUIT, or the next MAIL): answered
        here, as the loop would, rather than handed back to a loop asleep since the
        message's end (waking it took as long as the command).  Nothing within
        FOLLOW_UP_SECONDS, or the loop has other clients now, or another message waits
        to be settled: back to the loop."""
        sock = conn.sock
        try:
            ready = select.select([sock], [], [], FOLLOW_UP_SECONDS)[0]
        except (OSError, ValueError):
            ready = [sock]  # the read below says what is wrong
        if not ready or self._conns or not self._settling.empty():
            self.take_back(listener, conn)
            return
        try:
            data = sock.recv(RECV_BYTES)
        except BlockingIOError:
            self.take_back(listener, conn)
            return
        except OSError:
            data = b""
        if not data:
            listener.finish(conn)
            return
        session = conn.session
        if session.may_block(data):  # a message's text, a login, the anti-spam checks
            self.gate.workers.submit(lambda: listener.serve_rest(conn, data, None))
            return
        now = time.monotonic()
        out = session.feed(data)
        conn.progress(data, now)
        self.followed += 1
        if session.delay or session.starttls:  # what follows the reply may wait
            self.gate.workers.submit(lambda: listener.serve_rest(conn, None, out))
            return
        self._resume(listener, conn, out)

    def _end(self, conn: "Connection") -> None:
        self._release(conn).finish(conn)

    def _send(self, listener: "Listener", conn: "Connection", out: bytes) -> bool:
        """Send without waiting.  False when ``conn`` left the loop: what was not sent
        went to a worker, or the client is gone."""
        try:
            sent = conn.sock.send(out)
        except BlockingIOError:
            sent = 0
        except OSError:
            conn.session.closing = True
            if conn in self._conns:
                self._release(conn)
            listener.finish(conn)
            return False
        if sent < len(out):  # a client that does not read: a worker waits for it
            if conn in self._conns:
                self._release(conn)
            self.gate.workers.submit(lambda: listener.serve_rest(conn, None, out[sent:]))
            return False
        return True

    def _readable(self, conn: "Connection") -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end(conn)
            return
        session = conn.session
        # Staged, a message waits for those ahead of it in the settling thread's line.
        waiting = self._settling
        stage = waiting is None or waiting.qsize() * self._settle_cost <= SETTLE_WAIT_MAX
        if session.may_block(data, stage=stage):
            # Even with one client only: the loop making a message durable itself measured
            # 20 % slower on relay, where the delivery threads want the GIL at the same time.
            self._to_worker(conn, data, None)
            return
        now = time.monotonic()
        out = session.feed(data, stage=stage)
        conn.progress(data, now)
        if getattr(session, "pending", None) is not None:
            self._settle(conn, out)
            return
        self._reply(conn, out)

    def _reply(self, conn: "Connection", out: bytes) -> None:
        """(The loop) send what the session answered, then end the connection, hand it to
        a worker or tell the client the server is stopping, as the session now needs."""
        session = conn.session
        if session.closing:
            conn.proto.limiter.release(conn.slot)  # before the goodbye: a client reconnecting at once fits
        elif session.delay or session.starttls:  # what follows the reply may wait
            self._to_worker(conn, None, out)
            return
        if out and not self._send(self._conns[conn], conn, out):
            return
        if session.closing:
            self._end(conn)
        elif session.buffered:  # what a client pipelined after a settled message
            self._to_worker(conn, b"", None)
        elif self.gate.stopping and not session.in_transaction:
            self._say_last(conn, session.shutdown_reply())

    def _say_last(self, conn: "Connection", out: bytes) -> None:
        listener = self._conns[conn]
        conn.proto.limiter.release(conn.slot)
        if self._send(listener, conn, out):
            self._end(conn)

    def _scan(self, now: float) -> None:
        """Once a second: idle clients past their time, and a server that is stopping."""
        for conn in list(self._conns):
            session = conn.session
            out = conn.overdue(now)
            if not out and self.gate.stopping and not session.in_transaction:
                out = session.shutdown_reply()
            if out:
                self._say_last(conn, out)

    def _accept(self, listener: "Listener") -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                request, address = listener.get_request()
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("accepting on %s: %s", listener.label, e)
                return
            try:
                listener.process_request(request, address)
            except Exception:
                log.exception("error serving %s", address)
                listener.shutdown_request(request)
            if len(self._conns) <= 1:
                # Serving nobody else, most likely the only one waiting: no second accept
                # that fails with an exception (the selector reports any other at once).
                # With clients to serve, a burst is taken in one go (measured faster).
                return

    def _run(self) -> None:
        sel, wake_r, wake_w = self._sel, self._wake_r, self._wake_w
        next_scan = time.monotonic() + SCAN_SECONDS
        while True:
            self._sleeping = True
            timeout = 0.0 if self._calls else max(0.0, next_scan - time.monotonic())
            try:
                events = sel.select(timeout)
            except OSError as e:  # a socket closed under the selector (Windows' select)
                log.warning("SMTP loop: %s", e)
                events = []
            self._sleeping = False
            for target in events:
                try:
                    if target is None:
                        while wake_r.recv(4096):
                            pass
                    elif target in self._conns:
                        self._readable(target)
                    elif hasattr(target, "get_request"):
                        self._accept(target)
                except BlockingIOError:
                    pass
                except Exception:
                    log.exception("SMTP loop: serving a connection failed")
                    if target in self._conns:
                        self._end(target)
            while self._calls:
                try:
                    self._calls.popleft()()
                except Exception:
                    log.exception("SMTP loop: a call failed")
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + SCAN_SECONDS
                self._scan(now)
            with self._lock:
                if not self._listeners and not self._conns and not self._calls:
                    self._thread = None  # the next add_listener starts a new loop
                    break
        sel.close()
        wake_r.close()
        wake_w.close()

