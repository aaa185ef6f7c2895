"""What the SMTP loop (net.reactor) asks of a selector, and no more: which of its
sockets can be read, each named by the object it stands for.

On Linux this is epoll itself.  The selectors module's layer over it builds a key
(a named tuple) per registration and, at every wake, a list of (key, events) pairs
through a Python loop; at one client the loop wakes seven times a message and
registers a connection three times, and that layer was a measurable part of its
time (30 us of CPU a message; bench/RESULTS.txt, 2026-12-06).  Elsewhere (Windows'
select(), the BSDs' kqueue) the selectors module serves, behind the same four calls.

Both: ``register(sock, data)`` (KeyError if the socket's descriptor is registered
already), ``unregister(sock)`` (KeyError if it is not; a socket closed meanwhile is
forgotten quietly), ``select(timeout)`` -> the data of the readable sockets (a socket
with an error or a hang-up counts as readable: its read says which), ``close()``.
``threadsafe`` is true when another thread may register while the loop waits and the
loop sees it without being woken (epoll's nature; select() only looks at the sockets
it was given).

The environment variable ISMAIL_POLLER=select makes the loop use select() where epoll
exists too: Windows' path, which the tests then run on Linux (tests/test_loop_select.py).
"""
from __future__ import annotations

import os
import select
import selectors
import socket
from typing import Any

_MAX_EVENTS = 256  # readable sockets taken per wake; any more are reported at the next


class EpollPoller:
    threadsafe = True
    name = "epoll"

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._data: dict[int, Any] = {}              # descriptor -> what it stands for
        self._fds: dict[socket.socket, int] = {}     # socket -> its descriptor when registered

    def register(self, sock: socket.socket, data: Any) -> None:
        fd = sock.fileno()
        if fd < 0:
            raise ValueError(f"{sock!r} is closed")
        if fd in self._data:
            raise KeyError(f"descriptor {fd} is already registered")
        self._data[fd] = data  # before epoll can report it
        self._fds[sock] = fd
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            del self._data[fd], self._fds[sock]
            raise

    def unregister(self, sock: socket.socket) -> None:
        fd = self._fds.pop(sock)  # KeyError: not registered
        self._data.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:  # closed meanwhile: epoll has forgotten it already
            pass

    def select(self, timeout: float) -> list[Any]:
        """The data of the sockets that can be read, waiting up to ``timeout`` seconds
        (rounded up to a millisecond by epoll's wrapper, so a short wait never spins)."""
        try:
            ready = self._epoll.poll(timeout, _MAX_EVENTS)
        except InterruptedError:
            return []
        data = self._data
        return [data[fd] for fd, _ in ready if fd in data]

    def close(self) -> None:
        self._epoll.close()
        self._data.clear()
        self._fds.clear()


class SelectorsPoller:
    threadsafe = False

    def __init__(self, kind: type[selectors.BaseSelector] = selectors.DefaultSelector) -> None:
        self._sel = kind()
        self.name = self._sel.__class__.__name__.removesuffix("Selector").lower()  # "select" on Windows
        # kqueue and devpoll see sockets registered while they wait, but take_back's
        # hand-over through the loop is only skipped where that was measured (epoll).

    def register(self, sock: socket.socket, data: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, data)

    def unregister(self, sock: socket.socket) -> None:
        try:
            self._sel.unregister(sock)
        except ValueError:  # closed, and not registered either
            raise KeyError(f"{sock!r} is not registered") from None

    def select(self, timeout: float) -> list[Any]:
        return [key.data for key, _ in self._sel.select(timeout)]

    def close(self) -> None:
        self._sel.close()


def select_forced() -> bool:
    """ISMAIL_POLLER=select: select() wanted where something better exists (module
    docstring; the load generator's loop honours it too)."""
    return os.environ.get("ISMAIL_POLLER") == "select"


def make_poller() -> EpollPoller | SelectorsPoller:
    """epoll where there is one (Linux), else the selectors module's best; select()
    with ISMAIL_POLLER=select."""
    if select_forced():
        return SelectorsPoller(selectors.SelectSelector)
    return EpollPoller() if hasattr(select, "epoll") else SelectorsPoller()
