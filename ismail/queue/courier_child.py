"""The delivery process's own side (``--delivery-process``; courier.py starts it and
says how the two talk): one thread per channel, each with the Transport's cached
connection of the server's delivery thread at the other end; counters and log
records go back over the channel of the thread that made them.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .frames import PICKLE, Frames
from .transport import Transport

if TYPE_CHECKING:   # loaded when a channel opens: a server that sends nothing out never needs it
    from multiprocessing.connection import Connection

# How much lower than the server the delivery process runs (POSIX nice; on Windows the
# server starts it "below normal", courier.py).  Receiving is what a client waits on;
# sending on is background work whose delay nobody sees.  On a machine whose cores are
# all busy the scheduler then serves the SMTP sessions first: the signed relay at 10
# sessions went +6 to +8 % end to end (delivery keeps up: the queue was empty within a
# few messages when the load ended).  Nice 10 gave a little more but let a backlog build;
# 5 leaves delivery a fair share beside other busy programs.
NICE = 5


class _Current(threading.local):
    conn: Connection | None = None


_current = _Current()


class _ChannelStats:
    """The Transport's counters, sent to the server as they change."""

    def add(self, name: str, amount: int = 1) -> None:
        conn = _current.conn
        if conn is not None:
            conn.send_bytes(pickle.dumps(("stat", name, amount), PICKLE))


class _ChannelLog(logging.Handler):
    """Log records go to the server's log, over the channel of the thread that made them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        conn = _current.conn
        try:
            text = self.format(record)
            if conn is not None:
                conn.send_bytes(pickle.dumps(("log", record.levelno, record.name, text), PICKLE))
            elif sys.stderr is not None:
                print(f"ismail delivery process: {text}", file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


class _Reports:
    """Each message's results go to the server as soon as they are known, and the server
    answers "recorded" when it has written them down.  Before the next text goes out the
    process waits for that word (``gate``): a crash of either side then repeats at most
    the one message per connection that was on the wire, as with one message per request.
    The word usually came long before: the next message was signed meanwhile.  A server
    gone ends the request.  The last message's results have no text after them to hold
    back: they go with the request's answer, which saves the two messages back and forth
    (one message per request, at 1 session, is the usual case)."""

    def __init__(self, conn: Connection, frames: "Frames", last: int) -> None:
        self.conn, self.frames, self.last = conn, frames, last
        self.sent = self.recorded = 0
        self.final: list[tuple[int, object]] = []  # (index, results) for the answer

    def report(self, index: int, results) -> bool:
        if index == self.last:
            self.final.append((index, results))
            return True
        try:
            self.conn.send_bytes(pickle.dumps(("item", index, results), PICKLE))
        except (OSError, ValueError):
            return False
        self.sent += 1
        return True

    def gate(self) -> bool:
        try:
            while self.recorded < self.sent:
                if pickle.loads(self.frames.read())[0] == "recorded":
                    self.recorded += 1
        except (EOFError, OSError):
            return False
        return True


def _serve(conn: Connection, transport: Transport) -> None:
    _current.conn = conn
    frames = Frames(conn)
    try:
        while True:
            try:
                request = pickle.loads(frames.read())
            except (EOFError, OSError):
                return
            if request[0] == "recorded":
                continue  # left over from a request that failed before reading it
            try:
                if request[0] == "many":
                    _, config, items = request
                    if config != (transport.helo_name, transport.dns_servers):
                        transport.configure(*config)
                    reports = _Reports(conn, frames, len(items) - 1)
                    transport.attempt_many(items, reports.report, reports.gate)
                    if not reports.gate():  # every "recorded" read: the channel is clear
                        return
                    answer, holding = reports.final, transport.holding()
                else:  # "idle"
                    answer, holding = None, transport.close_idle(request[1])
                reply = ("done", answer, holding)
            except Exception:
                reply = ("error", traceback.format_exc())
            conn.send_bytes(pickle.dumps(reply, PICKLE))
    except (OSError, ValueError):
        return  # the server went away mid-answer
    finally:
        try:
            transport.close_idle(force=True)  # QUIT a cached connection, then go
        except Exception:
            pass
        _current.conn = None
        conn.close()


def child_main() -> int:
    """``--delivery-process``: serve the server that started this process until it goes."""
    stdin = sys.stdin.buffer if sys.stdin is not None else os.fdopen(0, "rb")
    stdout = sys.stdout.buffer if sys.stdout is not None else os.fdopen(1, "wb")
    params = json.loads(stdin.readline() or b"{}")
    if "authkey" not in params:
        print("ismail: --delivery-process is started by the server, not by hand", file=sys.stderr)
        return 2
    if hasattr(os, "nice"):
        try:
            os.nice(NICE)
        except OSError:
            pass  # not allowed to lower it (a restricted account): the same priority, then
    from ..mailauth.keystore import KeyStore
    root = logging.getLogger()
    root.handlers[:] = [_ChannelLog()]
    root.setLevel(logging.INFO)
    transport = Transport(_ChannelStats(), "", (), keys=KeyStore(Path(params["data_dir"])))
    from multiprocessing.connection import Listener
    listener = Listener(authkey=bytes.fromhex(params["authkey"]))

    closing = threading.Event()

    def accept() -> None:
        while not closing.is_set():
            try:
                conn = listener.accept()
            except Exception:
                continue  # a caller without the key (AuthenticationError), or one that gave up
            threading.Thread(target=_serve, args=(conn, transport), name="courier",
                             daemon=True).start()

    threading.Thread(target=accept, name="courier-accept", daemon=True).start()
    stdout.write(json.dumps(listener.address).encode() + b"\n")
    stdout.flush()
    # The server holds the other end of standard input: its close (a stop, or the server's
    # end for any reason) is this process's end.
    while stdin.read(4096):
        pass
    closing.set()
    try:
        listener.close()
    except OSError:
        pass
    return 0
