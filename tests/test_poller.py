"""The SMTP loop's selector (ismail/net/poller.py): epoll on Linux, the selectors
module elsewhere, behind the same calls.  Both are checked here on whatever this
machine has; the loop itself is checked end to end by test_reactor and the SMTP tests,
and on select() (Windows' path) by test_loop_select.  The Windows workflow runs this
module on Windows' own select()."""
import os
import select
import selectors
import socket
import threading
import time
import unittest
from unittest import mock

from ismail.net.poller import EpollPoller, SelectorsPoller, make_poller

# How early a wait may end: Windows' select() counts its time-out in clock ticks of
# 15.6 ms; elsewhere a few milliseconds of rounding.
TICK = 0.016 if os.name == "nt" else 0.005


class _PollerCases:
    make = None

    def setUp(self):
        self.poller = self.make()
        self.addCleanup(self.poller.close)
        self.pairs = [socket.socketpair() for _ in range(3)]
        for a, b in self.pairs:
            a.setblocking(False)
            self.addCleanup(a.close)
            self.addCleanup(b.close)

    def test_reports_what_each_readable_socket_stands_for(self):
        (a1, b1), (a2, b2), (a3, b3) = self.pairs
        for sock, name in ((a1, "one"), (a2, "two"), (a3, None)):
            self.poller.register(sock, name)
        self.assertEqual(self.poller.select(0), [])
        b2.send(b"x")
        b3.send(b"y")
        self.assertEqual(sorted(self.poller.select(1.0), key=str), [None, "two"])
        a2.recv(10)
        a3.recv(10)
        self.assertEqual(self.poller.select(0), [])

    def test_waits_for_the_timeout_and_no_longer(self):
        self.poller.register(self.pairs[0][0], "one")
        began = time.perf_counter()  # monotonic() ticks every 15.6 ms on Windows
        self.assertEqual(self.poller.select(0.05), [])
        self.assertGreaterEqual(time.perf_counter() - began, 0.05 - TICK)
        threading.Timer(0.05, self.pairs[0][1].send, (b"x",)).start()
        began = time.perf_counter()
        self.assertEqual(self.poller.select(5.0), ["one"])
        self.assertLess(time.perf_counter() - began, 4.0)

    def test_a_hang_up_counts_as_readable(self):
        a, b = self.pairs[0]
        self.poller.register(a, "one")
        b.close()
        self.assertEqual(self.poller.select(1.0), ["one"])
        self.assertEqual(a.recv(10), b"")

    def test_unregistered_sockets_are_not_reported_and_can_come_back(self):
        a, b = self.pairs[0]
        self.poller.register(a, "one")
        self.poller.unregister(a)
        b.send(b"x")
        self.assertEqual(self.poller.select(0.05), [])
        self.poller.register(a, "again")
        self.assertEqual(self.poller.select(1.0), ["again"])

    def test_twice_or_never_registered_is_a_key_error(self):
        a, _ = self.pairs[0]
        with self.assertRaises(KeyError):
            self.poller.unregister(a)
        self.poller.register(a, "one")
        with self.assertRaises(KeyError):
            self.poller.register(a, "two")

    def test_a_socket_closed_while_registered_is_forgotten_quietly(self):
        a, b = self.pairs[0]
        other, other_b = self.pairs[1]
        self.poller.register(a, "one")
        self.poller.register(other, "two")
        a.close()
        self.poller.unregister(a)  # no exception: the loop ends connections this way
        other_b.send(b"x")
        self.assertEqual(self.poller.select(1.0), ["two"])
        with self.assertRaises(KeyError):
            self.poller.unregister(a)


@unittest.skipUnless(hasattr(select, "epoll"), "epoll is Linux only")
class EpollPollerTest(_PollerCases, unittest.TestCase):
    make = EpollPoller

    def test_is_the_default_here_and_sees_registrations_while_waiting(self):
        with mock.patch.dict(os.environ):
            os.environ.pop("ISMAIL_POLLER", None)
            default = make_poller()
        self.addCleanup(default.close)
        self.assertIsInstance(default, EpollPoller)
        self.assertEqual(default.name, "epoll")
        a, b = self.pairs[0]
        b.send(b"x")
        # Another thread registers a readable socket while the loop's thread waits:
        # epoll reports it without being woken (what take_back relies on).
        threading.Timer(0.05, self.poller.register, (a, "late")).start()
        self.assertEqual(self.poller.select(5.0), ["late"])


class SelectorsPollerTest(_PollerCases, unittest.TestCase):
    make = SelectorsPoller


class SelectPollerTest(_PollerCases, unittest.TestCase):
    """select() itself, what Windows has, and the switch that picks it anywhere."""
    make = staticmethod(lambda: SelectorsPoller(selectors.SelectSelector))

    def test_the_switch_picks_select(self):
        with mock.patch.dict(os.environ, {"ISMAIL_POLLER": "select"}):
            chosen = make_poller()
        self.addCleanup(chosen.close)
        self.assertIsInstance(chosen, SelectorsPoller)
        self.assertEqual(chosen.name, "select")
        self.assertFalse(chosen.threadsafe)


if __name__ == "__main__":
    unittest.main()
