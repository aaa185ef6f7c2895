"""The delivery process: outgoing SMTP conversations and DKIM signing in a second process.

CPython runs one thread of Python at a time in a process.  Receiving mail (the SMTP
sessions, the queue file and its fsync) and sending it on (the client conversation,
the DKIM signature) took turns on that one lock, so a relaying server used one core
of the machine at most.  Postfix splits the same work over processes (smtpd, cleanup,
qmgr, smtp).  ISMail keeps everything that decides - the queue, the routing, retries,
bounces, the statistics and the log - in the server's process, and hands only the
transactions themselves to this one: "for each of these messages: these recipients,
this text, these destinations in this order; sign it for this domain".  The answer is
one Result per recipient, as transport.Transport gives in-process.

How the two talk:

* The server starts the process the first time a delivery needs it (a server that
  sends nothing out never has one): this same program with ``--delivery-process``
  (courier_command()).  It reads a key and the data folder from its standard input,
  opens a ``multiprocessing.connection.Listener`` (a Unix socket, a named pipe on
  Windows) that only holders of the key may use, and prints its address.
* Each delivery thread of the server opens a channel of its own and has a thread of
  its own at the other end, which keeps that thread's cached connection; so the
  outgoing limit (the pool's size) still bounds the connections.
* Requests and answers are pickled tuples.  While a request runs, the process may
  send counter changes ("outgoing_current") and log records first; the server's
  thread applies them as they come, then takes the answer.
* A request may hold several messages (the queue's batch for one next hop).  Each
  message's results come back as an "item" as soon as they are known; the server's
  thread records the message (removed from the queue, or deferred) and answers
  "recorded", and the process sends no further message text before that word.  So
  however the two processes end, at most one message per connection was handed on
  and not recorded (and is sent again: at worst twice, never lost), as with one
  message per request.
* It runs at a lower priority than the server (courier_child.NICE): when the machine's
  cores are all busy, the SMTP sessions a client waits on go first.
* The process ends when its standard input closes: when the server stops, and also
  when the server's process dies for any reason.  The server also stops it after
  IDLE_STOP_SECONDS without a delivery (a desktop server sends now and then; the
  process costs ~25 MB while it runs), and starts it again for the next one.

If the process dies during a request, the recipients of its messages not yet
reported are deferred (a temporary failure) and retried later: a delivery may at
worst be repeated, never lost.  The next delivery starts a new process.  If it
cannot be started at all, deliveries run in the server's process (logged) and
starting is tried again a minute later.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .frames import PICKLE, Frames
from .transport import Destination, Result, Transport

if TYPE_CHECKING:
    import subprocess
    from multiprocessing.connection import Connection
    from ..mailauth.keystore import KeyStore
    from ..stats import Stats

log = logging.getLogger("ismail.courier")

CHILD_FLAG = "--delivery-process"
START_TIMEOUT = 30.0     # seconds for the process to say where it listens
RETRY_START_AFTER = 60.0  # after a start that failed, deliver in-process this long
IDLE_STOP_SECONDS = 60.0  # no delivery for this long: the process is stopped until the next
ENDING_WAIT = 2.0         # a process whose socket refuses may be ending: this long for its end


def _dumps(message: tuple) -> bytes:
    import pickle  # here: loaded with the first delivery, not in a server that sends nothing (~0.4 MB)
    return pickle.dumps(message, PICKLE)


def _loads(data: bytes) -> tuple:
    import pickle
    return pickle.loads(data)


@functools.cache
def _recorded() -> bytes:
    """A message's results are written down: the process may go on."""
    return _dumps(("recorded",))


def courier_command() -> list[str]:
    """How this program starts its delivery process (the .exe itself when frozen)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, CHILD_FLAG]
    root = str(Path(__file__).resolve().parents[2])
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); "
            "from ismail.queue.courier_child import child_main; sys.exit(child_main())"]


class CourierLost(Exception):
    """The delivery process ended (or could not be reached) during a request."""


class Courier:
    """Transport's interface (attempt, close_idle, configure, close), run by the process."""

    def __init__(self, stats: "Stats", data_dir: Path, helo_name: str,
                 dns_servers: Iterable[str] = (), keys: "KeyStore | None" = None) -> None:
        self.stats = stats
        self.data_dir = Path(data_dir)
        self.keys = keys
        self._config = (helo_name, tuple(dns_servers))
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._address = None
        self._authkey = b""
        # Which process a channel leads to: a thread whose channel is of an older one
        # closes it itself (a channel is only ever touched by its own thread).
        self._generation = 0
        self._local = threading.local()
        self._fallback: Transport | None = None
        self._no_start_until = 0.0
        self._closed = False
        self._in_flight = 0      # requests under way, in every thread
        self._last_used = time.monotonic()

    # -- Transport's interface ------------------------------------------------------------------
    def configure(self, helo_name: str, dns_servers: Iterable[str]) -> None:
        self._config = (helo_name, tuple(dns_servers))
        if self._fallback is not None:
            self._fallback.configure(*self._config)

    def attempt(self, dests: list[Destination], sender: str, recipients: list[str], data: bytes,
                smtputf8: bool = False, body: str = "7BIT", sign_domain: str = "") -> dict[str, Result]:
        return self.attempt_many([(dests, sender, recipients, data, smtputf8, body, sign_domain)])[0]

    def attempt_many(self, items: list[tuple], report=None) -> list[dict[str, Result]]:
        """Transport.attempt_many in the process: one request; each message's results come
        back as soon as the process knows them, and go to ``report`` then."""
        out: list[dict[str, Result] | None] = [None] * len(items)

        def arrived(index: int, results: dict[str, Result]) -> None:
            out[index] = results
            if report is not None:
                report(index, results)

        try:
            answered = self._call(("many", self._config, items), arrived)
        except CourierLost as e:
            # The ones not answered yet may or may not have gone: each waits in the queue
            # and goes again (at worst twice, never lost).
            log.warning("the delivery process ended during a delivery (%s); its recipients "
                        "will be tried again", e)
            answered = True
        if answered is None:  # no process: this thread delivers itself
            return self._in_process().attempt_many(items, report)
        if answered is not True:  # the last message's results came with the answer
            for index, results in answered:
                arrived(index, results)
        for index, results in enumerate(out):
            if results is None:
                arrived(index, {r: Result(0, "4.4.2 The delivery process ended during the "
                                             "transaction") for r in items[index][2]})
        return out

    def close_idle(self, force: bool = False) -> bool:
        """Called by each delivery thread between jobs: its idle SMTP connection is hung up,
        and a process nobody used for IDLE_STOP_SECONDS is stopped."""
        if self._fallback is not None:
            self._fallback.close_idle(force)
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.generation != self._generation:
            self._drop_channel()   # its process was stopped, and its connections with it
            conn = None
        if conn is None or not (force or getattr(self._local, "holding", False)):
            self._stop_if_idle()
            return False
        try:
            self._exchange(conn, ("idle", force))
        except CourierLost:
            return False
        finally:
            if force:
                self._drop_channel()
        return bool(getattr(self._local, "holding", False))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the process (its open connections are closed by it, or with it)."""
        with self._lock:
            self._closed = True
            proc, self._proc, address = self._proc, None, self._address
            self._generation += 1
        if proc is not None:
            _stop(proc, timeout, address)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _stop_if_idle(self) -> None:
        with self._lock:
            proc = self._proc
            if (proc is None or self._in_flight
                    or time.monotonic() - self._last_used < IDLE_STOP_SECONDS):
                return
            self._proc, address = None, self._address   # (a new process has a new one)
            self._generation += 1   # every thread is between requests: the next one reconnects
        _stop(proc, 5.0, address)
        log.info("delivery process stopped after %.0f s without mail to send", IDLE_STOP_SECONDS)

    # -- requests -------------------------------------------------------------------------------
    def _call(self, request: tuple, on_item=None):
        """The answer to ``request`` (True when it has none of its own); None when there is
        no process to ask.  ``on_item(index, results)`` takes each result as it comes."""
        with self._lock:
            self._in_flight += 1
        try:
            return self._ask(request, on_item)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._last_used = time.monotonic()

    def _ask(self, request: tuple, on_item=None):
        conn = self._channel()
        if conn is None:
            return None
        payload = _dumps(request)
        try:
            conn.send_bytes(payload)
        except (OSError, ValueError):
            # The process this channel led to has ended (a crash, or a restart by another
            # thread): the request never arrived, so it may go to a new one.
            self._drop_channel()
            conn = self._channel()
            if conn is None:
                return None
            try:
                conn.send_bytes(payload)
            except (OSError, ValueError) as e:
                self._drop_channel()
                raise CourierLost(str(e) or e.__class__.__name__)
        answer = self._replies(conn, on_item)
        return True if answer is None else answer

    def _exchange(self, conn: Connection, request: tuple):
        with self._lock:
            self._in_flight += 1
        try:
            try:
                conn.send_bytes(_dumps(request))
            except (OSError, ValueError) as e:
                self._drop_channel()
                raise CourierLost(str(e) or e.__class__.__name__)
            return self._replies(conn)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _replies(self, conn: Connection, on_item=None):
        frames = self._local.frames
        while True:
            try:
                message = _loads(frames.read())
            except (EOFError, OSError) as e:
                self._drop_channel()
                raise CourierLost(str(e) or "the process ended")
            kind = message[0]
            if kind == "item":
                try:
                    on_item(message[1], message[2])
                except Exception:  # recorded as well as it could be: the process goes on
                    log.exception("recording a delivery's result failed")
                try:
                    conn.send_bytes(_recorded())  # the process may send the next text
                except (OSError, ValueError) as e:
                    self._drop_channel()
                    raise CourierLost(str(e) or e.__class__.__name__)
            elif kind == "stat":
                self.stats.add(message[1], message[2])
                if message[1] == "outgoing_current":
                    self._local.open = getattr(self._local, "open", 0) + message[2]
            elif kind == "log":
                logging.getLogger(message[2]).log(message[1], "%s", message[3])
            elif kind == "done":
                self._local.holding = message[2]
                return message[1]
            else:  # "error": a bug on the other side, reported with its traceback
                raise RuntimeError(f"the delivery process failed: {message[1]}")

    # -- channels and the process ---------------------------------------------------------------
    def _channel(self) -> Connection | None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self._local.generation == self._generation:
                return conn
            self._drop_channel()   # it led to a process that has been stopped since
        address, authkey, generation = self._running()
        if address is None:
            return None
        from multiprocessing.connection import Client   # here: a server that sends nothing never loads it
        for retry in (False, True):
            try:
                conn = Client(address, authkey=authkey)
                break
            except (OSError, EOFError) as e:
                if retry or not self._ended(generation):
                    log.error("cannot reach the delivery process: %s", e)
                    return None
            # It was ending (a kill): a new one takes over.
            address, authkey, generation = self._running()
            if address is None:
                return None
        self._local.conn, self._local.open, self._local.holding = conn, 0, False
        self._local.frames = Frames(conn)
        self._local.generation = generation
        return conn

    def _ended(self, generation: int) -> bool:
        """Has the process of ``generation`` ended, waiting up to ENDING_WAIT for it?  A
        killed process's leader is a zombie before its threads end: poll() says it runs
        while its socket already refuses."""
        import subprocess
        with self._lock:
            proc = self._proc if self._generation == generation else None
        if proc is None:
            return True   # stopped or replaced meanwhile
        try:
            proc.wait(ENDING_WAIT)
        except subprocess.TimeoutExpired:
            return False  # it runs and does not answer: reported, the mail goes from here
        return True

    def _drop_channel(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        try:
            conn.close()
        except OSError:
            pass
        # Connections the process had open for this thread are gone with it (or closed).
        left = getattr(self._local, "open", 0)
        if left:
            self.stats.add("outgoing_current", -left)
        self._local.open, self._local.holding = 0, False

    def _running(self):
        """(address, key, generation) of a running process, started if need be; address
        None for none."""
        with self._lock:
            if self._closed:
                return None, b"", 0
            proc = self._proc
            if proc is not None and proc.poll() is None:
                return self._address, self._authkey, self._generation
            if proc is not None:
                log.warning("the delivery process ended (exit code %s); starting it again",
                            proc.returncode)
                self._proc = None
                _stop(proc, 1.0, self._address)
            if time.monotonic() < self._no_start_until:
                return None, b"", 0
            try:
                self._proc, self._address, self._authkey = _start(self.data_dir)
            except (OSError, ValueError) as e:
                self._no_start_until = time.monotonic() + RETRY_START_AFTER
                log.error("cannot start the delivery process (%s): sending from the server's "
                          "own process for now", e)
                return None, b"", 0
            self._generation += 1
            log.info("delivery process started (pid %d)", self._proc.pid)
            return self._address, self._authkey, self._generation

    def _in_process(self) -> Transport:
        with self._lock:
            if self._fallback is None:
                self._fallback = Transport(self.stats, *self._config, keys=self.keys)
            return self._fallback


def _start(data_dir: Path) -> tuple[subprocess.Popen, object, bytes]:
    import subprocess  # here, as pickle: loaded with the first delivery
    authkey = os.urandom(32)
    # Windows: no console window for it, and a priority below the server's (courier_child.NICE
    # says why; on POSIX the process lowers its own).
    flags = (getattr(subprocess, "CREATE_NO_WINDOW", 0)
             | getattr(subprocess, "BELOW_NORMAL_PRIORITY_CLASS", 0))
    proc = subprocess.Popen(courier_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            creationflags=flags)
    try:
        proc.stdin.write(json.dumps({"authkey": authkey.hex(), "data_dir": str(data_dir)}).encode()
                         + b"\n")
        proc.stdin.flush()
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not line or not line[0].strip():
            raise OSError("it did not start" if line else f"no answer within {START_TIMEOUT:.0f} s")
        address = json.loads(line[0])
        if isinstance(address, list):
            address = tuple(address)
    except BaseException:
        _stop(proc, 1.0)
        raise
    proc.stdout.close()
    return proc, address, authkey


def _stop(proc: subprocess.Popen, timeout: float, address=None) -> None:
    """End the process (it stops by itself at the end of its input) and, once it is gone,
    clear what a killed one leaves behind: on POSIX its listening socket, in a ``pymp-``
    folder of the temporary folder that only its own orderly exit removes."""
    import subprocess
    try:
        if proc.stdin is not None:
            proc.stdin.close()  # its end of input: it stops by itself
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if isinstance(address, str) and not address.startswith(("\\\\", "\0")):
        socket_path = Path(address)   # a file's path, not a Windows pipe or an abstract name
        try:
            socket_path.unlink()
        except OSError:
            pass   # already gone: it exited in order (as it usually does), or was removed
        if socket_path.parent.name.startswith("pymp-"):
            try:
                socket_path.parent.rmdir()   # only when empty: nothing else of anyone's goes
            except OSError:
                pass
