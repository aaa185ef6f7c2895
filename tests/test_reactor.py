"""The SMTP loop (ismail/net/reactor.py): clients that only talk hold no thread, and a
connection goes to a worker and back as often as it needs, with nothing lost or reordered.

Run against a real `python3 -m ismail run`; threads are counted in /proc (Linux, where
the tests run)."""
from __future__ import annotations

import re
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail.net import reactor as reactor_module
from ismail.store import maildir
from tests.support import ServerProcess, SMTPTalk, queued_entries, queued_message
from tests.test_receiver import ReceiverTestCase, maildir_files


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line in /proc status")


def message(n: int) -> bytes:
    return (f"From: a@example.test\r\nTo: user@example.test\r\nSubject: loop {n}\r\n\r\n"
            f"body of message {n}\r\n").encode()


class ReactorTest(unittest.TestCase):
    def setUp(self) -> None:
        if not Path("/proc/self/status").exists():
            self.skipTest("counts threads in /proc (Linux)")
        self.server = ServerProcess({"incoming": {"max_connections": 100, "max_per_host": 10},
                                     "trusted_networks": []}).start()
        self.addCleanup(self.server.cleanup)
        self.talks: list[SMTPTalk] = []
        self.addCleanup(lambda: [t.close() for t in self.talks])

    def talk(self, source: str = "127.0.0.1") -> SMTPTalk:
        t = SMTPTalk(self.server.port, source=source, timeout=20)
        self.talks.append(t)
        self.assertRegex(t.reply(), rb"^220 ")
        return t

    def wait_count(self, n: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while self.server.count() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.server.count()

    def test_sixty_talking_clients_hold_no_thread_and_all_get_their_mail_in(self) -> None:
        pid = self.server.proc.pid
        # One message first, so the thread that makes a message durable exists already.
        first = self.talk()
        first.cmd("EHLO first.test")
        first.cmd("MAIL FROM:<a@example.test>")
        first.cmd("RCPT TO:<user@example.test>")
        self.assertRegex(first.cmd("DATA"), rb"^354 ")
        self.assertRegex(first.cmd(message(0) + b"."), rb"^250 ")
        self.assertRegex(first.cmd("QUIT"), rb"^221 ")
        time.sleep(0.5)
        before = threads_of(pid)
        clients = [self.talk(f"127.0.0.{2 + i // 10}") for i in range(60)]  # 10 per host: the limit
        for i, c in enumerate(clients):
            self.assertRegex(c.cmd(f"EHLO client{i}.test"), rb"^250[ -]")
            self.assertRegex(c.cmd("MAIL FROM:<a@example.test>"), rb"^250 ")
            self.assertRegex(c.cmd("RCPT TO:<user@example.test>"), rb"^250 ")
        during = threads_of(pid)
        self.assertLessEqual(during - before, 3,
                             f"60 clients in the middle of a transaction took {during - before} threads")
        for i, c in enumerate(clients):
            self.assertRegex(c.cmd("DATA"), rb"^354 ")
        for i, c in enumerate(clients):
            c.send(message(i + 1) + b".\r\n")
        for i, c in enumerate(clients):
            self.assertRegex(c.reply(), rb"^250 ", f"client {i}")
        self.assertEqual(self.wait_count(61), 61)
        # Back in the loop after the message: the next command is answered there.
        for c in clients:
            self.assertRegex(c.cmd("NOOP"), rb"^250 ")
            self.assertRegex(c.cmd("QUIT"), rb"^221 ")
        texts = sorted(p.read_bytes() for sub in ("new", "cur")
                       for p in (self.server.maildir() / sub).iterdir())
        self.assertEqual(list((self.server.maildir() / "tmp").iterdir()), [],
                         "every file written ahead was renamed into new/")
        for n in range(61):
            self.assertEqual(sum(f"body of message {n}\n".encode() in t for t in texts), 1, n)

    def test_several_messages_on_one_connection_while_another_talks(self) -> None:
        a, b = self.talk(), self.talk("127.0.0.2")
        a.cmd("EHLO a.test")
        b.cmd("EHLO b.test")
        for n in range(5):
            self.assertRegex(a.cmd("MAIL FROM:<a@example.test>"), rb"^250 ")
            self.assertRegex(b.cmd("NOOP"), rb"^250 ")
            self.assertRegex(a.cmd("RCPT TO:<user@example.test>"), rb"^250 ")
            self.assertRegex(a.cmd("DATA"), rb"^354 ")
            self.assertRegex(b.cmd("RSET"), rb"^250 ")
            self.assertRegex(a.cmd(message(n) + b"."), rb"^250 ")
        self.assertRegex(a.cmd("QUIT"), rb"^221 ")
        self.assertRegex(b.cmd("QUIT"), rb"^221 ")
        self.assertEqual(self.wait_count(5), 5)
        maillog = self.server.data_dir / "logs" / "maillog.log"
        deadline = time.monotonic() + 10
        while "5 message(s), 0 error(s)" not in maillog.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIn("5 message(s), 0 error(s)", maillog.read_text())

    def test_a_client_that_does_not_read_gets_every_reply_in_order_later(self) -> None:
        c = self.talk()
        c.cmd("EHLO slow-reader.test")
        lines = 20000  # ~400 kB of replies: more than both socket buffers hold
        done = threading.Event()

        def write() -> None:
            try:
                c.send(b"".join(f"NOOP {i}\r\n".encode() for i in range(lines)) + b"QUIT\r\n")
            finally:
                done.set()
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(1.5)  # the server's replies pile up unread
        got = b""
        deadline = time.monotonic() + 60
        while got.count(b"\r\n") < lines + 1 and time.monotonic() < deadline:
            data = c.sock.recv(1 << 16)
            if not data:
                break
            got += data
        self.assertTrue(done.wait(30))
        replies = got.split(b"\r\n")
        self.assertEqual(len([r for r in replies if r.startswith(b"250 ")]), lines)
        self.assertRegex(replies[lines], rb"^221 ")
        # Meanwhile the server went on serving others.
        other = self.talk("127.0.0.2")
        self.assertRegex(other.cmd("NOOP"), rb"^250 ")

    def test_commands_sent_right_after_the_dot_are_answered_after_its_250(self) -> None:
        # The message is stored (by the loop itself: the client is alone) and what the
        # client sends without waiting for the 250 must still be answered after it.
        c = self.talk()
        c.cmd("EHLO eager.test")
        rounds = 100
        for n in range(rounds):
            self.assertRegex(c.cmd("MAIL FROM:<a@example.test>"), rb"^250 ")
            self.assertRegex(c.cmd("RCPT TO:<user@example.test>"), rb"^250 ")
            self.assertRegex(c.cmd("DATA"), rb"^354 ")
            c.send(message(n) + b".\r\n")
            c.send(b"NOOP after %d\r\n" % n)  # a write of its own: usually a read of its own
            c.send(b"RSET\r\n")
            first, second, third = c.reply(), c.reply(), c.reply()
            self.assertRegex(first, rb"^250 2\.0\.0 Ok: queued as ", f"round {n}")
            self.assertEqual((second[:4], third[:4]), (b"250 ", b"250 "), f"round {n}")
            self.assertNotIn(b"queued", second + third, f"round {n}")
        self.assertRegex(c.cmd("QUIT"), rb"^221 ")
        self.assertEqual(self.wait_count(rounds), rounds)

    def test_auth_and_starttls_free_commands_still_pipeline_in_one_answer(self) -> None:
        c = self.talk()
        c.send(b"EHLO p.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<user@example.test>\r\n"
               b"RCPT TO:<nobody@example.test>\r\nDATA\r\n")
        got = b""
        deadline = time.monotonic() + 20
        while got.count(b"\r\n") < 12 and not re.search(rb"\r\n354 ", got) and time.monotonic() < deadline:
            got += c.sock.recv(65536)
        codes = [line[:3] for line in got.split(b"\r\n") if line and line[3:4] == b" "]
        self.assertEqual(codes, [b"250", b"250", b"250", b"550", b"354"], got)
        self.assertRegex(c.cmd(message(1) + b"."), rb"^250 ")
        self.assertEqual(self.wait_count(1), 1)


if __name__ == "__main__":
    unittest.main()


class SlowPlacingTest(ReceiverTestCase):
    """One thread puts every staged message in place.  Where that is slow (a virus scanner
    looking at each new file on Windows, a network disk), messages must not queue behind
    it: the loop hands their ends to the workers, which store side by side, and stages
    again once placing is quick."""

    def test_slow_placing_sends_messages_to_the_workers_and_staging_comes_back(self) -> None:
        ms = self.start_inprocess({"incoming": {"max_connections": 100, "max_per_host": 10},
                                   "trusted_networks": ["127.0.0.0/8"]})
        counts = {"staged": 0, "stored": 0}
        lock = threading.Lock()
        stage_message, accept_message = ms.stage_message, ms.accept_message

        def staging(*args):
            staged = stage_message(*args)
            with lock:
                counts["staged"] += staged is not None
            return staged

        def storing(*args):
            with lock:
                counts["stored"] += 1
            return accept_message(*args)
        place = maildir.Staged.place
        slow = threading.Event()
        slow.set()

        def slow_place(staged, *args, **kwargs):
            if slow.is_set():
                time.sleep(0.03)  # 30 ms a file: ten clients at once wait 300 ms in line
            return place(staged, *args, **kwargs)
        clients, per_client, later = 10, 6, 20
        failures: list[str] = []

        def client(n: int, count: int) -> None:
            try:
                with SMTPTalk(self.port, timeout=30) as t:
                    t.reply()
                    t.cmd(f"EHLO c{n}.test")
                    for m in range(count):
                        t.cmd("MAIL FROM:<a@example.test>")
                        t.cmd("RCPT TO:<user@example.test>")
                        t.cmd("DATA")
                        got = t.cmd(message(n * 100 + m) + b".")
                        if not got.startswith(b"250 "):
                            failures.append(f"client {n} message {m}: {got!r}")
                    t.cmd("QUIT")
            except OSError as e:
                failures.append(f"client {n}: {e}")
        with mock.patch.object(ms, "stage_message", staging), \
                mock.patch.object(ms, "accept_message", storing), \
                mock.patch.object(maildir.Staged, "place", slow_place):
            threads = [threading.Thread(target=client, args=(n, per_client)) for n in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(failures, [])
            self.assertGreater(counts["staged"], 0, "staged while placing kept up")
            self.assertGreater(counts["stored"], 0, "workers stored messages once it fell behind")
            self.assertEqual(counts["staged"] + counts["stored"], clients * per_client)
            # Placing is quick again: as soon as the settling thread's recent times show it
            # (the least of them), messages are staged again.
            slow.clear()
            before = dict(counts)
            threads = [threading.Thread(target=client, args=(n, later)) for n in range(20, 22)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(failures, [])
            # At most the first one after the change goes to the workers (the other client's
            # while the first is being settled); the cost then seen is the quick one.
            self.assertGreaterEqual(counts["staged"] - before["staged"], 2 * later - 2)
        texts = [p.read_bytes() for p in maildir_files(self.data_dir)]
        for n, count in [*((n, per_client) for n in range(clients)), (20, later), (21, later)]:
            for m in range(count):
                body = f"body of message {n * 100 + m}\n".encode()  # stored with LF line ends
                self.assertEqual(sum(t.endswith(body) for t in texts), 1, (n, m))
        self.assertEqual(len(texts), clients * per_client + 2 * later)


class OneClientCase(ReceiverTestCase):
    """An in-process server and one client sending messages to ``RCPT``."""
    RCPT = "user@example.test"

    def setUp(self) -> None:
        self.ms = self.start_inprocess({"trusted_networks": ["127.0.0.0/8"]})

    def send_one(self, t: SMTPTalk, n: int) -> None:
        self.assertRegex(t.cmd("MAIL FROM:<a@example.test>"), rb"^250 ")
        self.assertRegex(t.cmd(f"RCPT TO:<{self.RCPT}>"), rb"^250 ")
        self.assertRegex(t.cmd("DATA"), rb"^354 ")
        self.assertRegex(t.cmd(message(n) + b"."), rb"^250 2\.0\.0 Ok: queued as ")

    def up_to_data(self, t: SMTPTalk, helo: str) -> None:
        """Greeting, EHLO, MAIL, RCPT and DATA: the message's text comes next."""
        self.assertRegex(t.reply(), rb"^220 ")
        self.assertRegex(t.cmd(f"EHLO {helo}"), rb"^250")
        self.assertRegex(t.cmd("MAIL FROM:<a@example.test>"), rb"^250 ")
        self.assertRegex(t.cmd(f"RCPT TO:<{self.RCPT}>"), rb"^250 ")
        self.assertRegex(t.cmd("DATA"), rb"^354 ")


class LoneClientTest(OneClientCase):
    """With one client connected, the loop itself makes its message for our own mailboxes
    durable, puts it in place and answers (net.reactor._settle_here): nobody else waits
    for the loop meanwhile.  The client must get the answers it always gets; a second
    client, a pipelined QUIT and a server stopping must change nothing but the path."""

    def setUp(self) -> None:
        super().setUp()
        # Placing a message counts as quick up to a second here (a busy test machine may
        # take longer than the usual half millisecond, and the loop then leaves it to the
        # settling thread: SlowPlacingTest).
        quick = mock.patch.object(reactor_module, "LOOP_PLACE_MAX", 1.0)
        quick.start()
        self.addCleanup(quick.stop)

    def stored(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + 10
        while len(maildir_files(self.data_dir)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return [p.read_bytes() for p in maildir_files(self.data_dir)]

    def assert_stored_once(self, numbers, count: int) -> None:
        texts = self.stored(count)
        self.assertEqual(len(texts), count)
        for n in numbers:
            self.assertEqual(sum(x.endswith(f"body of message {n}\n".encode()) for x in texts), 1, n)
        self.assertEqual(list((self.data_dir / "mailboxes" / "example.test" / "user" / "tmp").iterdir()), [])

    def test_a_lone_clients_messages_are_settled_by_the_loop(self) -> None:
        reactor = self.ms.reactor
        with SMTPTalk(self.port, timeout=15) as t:
            self.assertRegex(t.reply(), rb"^220 ")
            self.assertRegex(t.cmd("EHLO lone.test"), rb"^250")
            for n in range(3):
                self.send_one(t, n)
                # In new/ by the time the client hears its 250, as ever.
                self.assertEqual(len(maildir_files(self.data_dir)), n + 1)
            self.assertRegex(t.cmd("NOOP"), rb"^250 ")
            self.assertRegex(t.cmd("QUIT"), rb"^221 ")
            self.assertEqual(t.sock.recv(100), b"", "the connection ends after the 221")
        self.assertEqual((reactor.settled_here, reactor.followed), (3, 0))
        self.assert_stored_once(range(3), 3)
        # The slot went back: the per-host limit lets the next connections in.
        for n in range(12):
            with SMTPTalk(self.port, timeout=15) as t:
                self.assertRegex(t.reply(), rb"^220 ")
                self.assertRegex(t.cmd("QUIT"), rb"^221 ")

    def test_with_a_second_client_connected_the_settling_thread_answers(self) -> None:
        reactor = self.ms.reactor
        with SMTPTalk(self.port, timeout=15) as a, SMTPTalk(self.port, timeout=15) as b:
            a.reply()
            b.reply()
            a.cmd("EHLO a.test")
            self.assertRegex(b.cmd("EHLO b.test"), rb"^250")
            self.send_one(a, 1)
            self.assertEqual(reactor.settled_here, 0, "the loop settled a message while another client was connected")
            self.assertRegex(b.cmd("NOOP"), rb"^250 ")
            self.assertRegex(b.cmd("QUIT"), rb"^221 ")
            self.assertEqual(b.sock.recv(100), b"")
            deadline = time.monotonic() + 10
            while self.ms.limiter.total > 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.send_one(a, 2)  # alone now
            self.assertRegex(a.cmd("QUIT"), rb"^221 ")
        self.assertEqual(reactor.settled_here, 1)
        self.assert_stored_once((1, 2), 2)

    def test_a_quit_sent_with_the_message_is_answered_after_its_250(self) -> None:
        with SMTPTalk(self.port, timeout=15) as t:
            self.up_to_data(t, "hasty.test")
            t.send(message(1) + b".\r\nNOOP\r\nQUIT\r\n")
            self.assertRegex(t.reply(), rb"^250 2\.0\.0 Ok: queued as ")
            self.assertRegex(t.reply(), rb"^250 ")
            self.assertRegex(t.reply(), rb"^221 ")
            self.assertEqual(t.sock.recv(100), b"")
        self.assertEqual(self.ms.reactor.settled_here, 1)
        self.assert_stored_once((1,), 1)

    def test_a_server_stopping_says_so_after_the_250(self) -> None:
        with SMTPTalk(self.port, timeout=15) as t:
            self.up_to_data(t, "late.test")
            with mock.patch.object(self.ms.gate, "stopping", True):
                self.assertRegex(t.cmd(message(1) + b"."), rb"^250 2\.0\.0 Ok: queued as ")
                self.assertRegex(t.reply(), rb"^421 4\.3\.2 ")
                self.assertEqual(t.sock.recv(100), b"")
        self.assertEqual(self.ms.reactor.settled_here, 1)
        self.assert_stored_once((1,), 1)
        deadline = time.monotonic() + 10
        while self.ms.limiter.total and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(self.ms.limiter.total, 0, "the slot went back")


class FollowUpTest(OneClientCase):
    """With one client sending mail on (to a SmartHost; the loop settles a lone client's
    local mail itself), the thread that sends a message's 250 also answers what the
    client sends next, if it comes at once (net.reactor._follow_up): the QUIT, or the
    next message's commands.  Whatever it is, the client must get the answers the loop
    would give, and what it cannot answer without waiting goes on as usual."""

    RCPT = "friend@remote.test"

    def waiting_longer(self):
        """The settling thread waits a whole second for the next command (a busy test
        machine may take longer than the usual millisecond to send it)."""
        return mock.patch.object(reactor_module, "FOLLOW_UP_SECONDS", 1.0)

    def stored(self, count: int) -> list[bytes]:
        """The texts of the messages queued to be sent on (the SmartHost never answers)."""
        deadline = time.monotonic() + 10
        while len(queued_entries(self.data_dir)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return [queued_message(self.data_dir, qid) for qid in queued_entries(self.data_dir)]

    def test_commands_right_after_the_250_and_the_quit_are_answered(self) -> None:
        reactor = self.ms.reactor
        with self.waiting_longer(), SMTPTalk(self.port, timeout=15) as t:
            self.assertRegex(t.reply(), rb"^220 ")
            self.assertRegex(t.cmd("EHLO lone.test"), rb"^250")
            for n in range(3):
                self.send_one(t, n)  # each MAIL comes right after the 250 before it
            before = reactor.followed
            self.assertRegex(t.cmd("QUIT"), rb"^221 ")
            self.assertEqual(t.sock.recv(100), b"", "the connection ends after the 221")
        self.assertGreaterEqual(before, 2, "the MAILs after the 250s were not answered at once")
        self.assertEqual(reactor.settled_here, 0, "mail to send on is settled by the settling thread")
        texts = self.stored(3)
        for n in range(3):
            self.assertEqual(sum(x.endswith(f"body of message {n}\r\n".encode()) for x in texts), 1)
        # The slot went back: the per-host limit lets the next connections in.
        for n in range(12):
            with SMTPTalk(self.port, timeout=15) as t:
                self.assertRegex(t.reply(), rb"^220 ")
                self.assertRegex(t.cmd("QUIT"), rb"^221 ")

    def test_a_pipelined_group_after_the_250_then_the_text(self) -> None:
        with self.waiting_longer(), SMTPTalk(self.port, timeout=15) as t:
            t.reply()
            t.cmd("EHLO lone.test")
            self.send_one(t, 1)
            t.send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<friend@remote.test>\r\n"
                   b"RCPT TO:<nobody@example.test>\r\nDATA\r\n")
            codes = [t.reply()[:3] for _ in range(4)]
            self.assertEqual(codes, [b"250", b"250", b"550", b"354"])
            self.assertRegex(t.cmd(message(2) + b"."), rb"^250 ")
            # The text of a message sent at once after a 250 (the client does not wait for
            # the 354, as a broken client might) is refused as the loop refuses it.
            t.send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<friend@remote.test>\r\nDATA\r\n"
                   + message(3) + b".\r\n")
            answers = b""
            deadline = time.monotonic() + 10
            while b"554 " not in answers and time.monotonic() < deadline:
                got = t.sock.recv(4096)
                if not got:
                    break
                answers += got
            self.assertIn(b"554 5.5.0 Error: improper use of SMTP command pipelining", answers)
        self.assertEqual(len(self.stored(2)), 2)

    def test_a_client_that_waits_after_its_250_is_served_by_the_loop(self) -> None:
        reactor = self.ms.reactor
        with SMTPTalk(self.port, timeout=15) as t:
            t.reply()
            t.cmd("EHLO patient.test")
            self.send_one(t, 1)
            time.sleep(0.2)  # far longer than the settling thread waits
            before = reactor.followed
            self.assertRegex(t.cmd("NOOP"), rb"^250 ")
            self.assertRegex(t.cmd("QUIT"), rb"^221 ")
        self.assertEqual(reactor.followed, before, "the loop answered them")

    def test_a_client_that_hangs_up_after_its_250(self) -> None:
        for n in range(12):  # more than the per-host limit: each slot must come back
            with SMTPTalk(self.port, timeout=15) as t:
                t.reply()
                t.cmd("HELO gone.test")
                self.send_one(t, n)
        self.assertEqual(len(self.stored(12)), 12)
        with SMTPTalk(self.port, timeout=15) as t:
            self.assertRegex(t.reply(), rb"^220 ")
            self.assertRegex(t.cmd("QUIT"), rb"^221 ")
        deadline = time.monotonic() + 10
        while self.ms.stats.get("connections_current") and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(self.ms.stats.get("connections_current"), 0)


class StopUnderLoadTest(ReceiverTestCase):
    """A server stopped while ten clients send: each message gets its 250 or a 421, none
    is left without an answer (the loop may end while staged messages are being settled),
    and every message that got its 250 is in the mailbox."""

    def test_every_client_is_answered_and_every_250_is_delivered(self) -> None:
        ms = self.start_inprocess({"incoming": {"max_connections": 100, "max_per_host": 10},
                                   "trusted_networks": ["127.0.0.0/8"]})
        accepted: list[int] = []
        problems: list[str] = []
        lock = threading.Lock()
        started = threading.Barrier(11)

        def client(n: int) -> None:
            try:
                with SMTPTalk(self.port, timeout=20) as t:
                    t.reply()
                    t.cmd(f"EHLO c{n}.test")
                    started.wait(10)
                    for m in range(1000):
                        for line in ("MAIL FROM:<a@example.test>", "RCPT TO:<user@example.test>", "DATA"):
                            got = t.cmd(line)
                            if got[:1] != b"2" and got[:1] != b"3":
                                self.assertRegex(got, rb"^421 ")
                                return
                        got = t.cmd(message(n * 1000 + m) + b".")
                        if not got.startswith(b"250 "):
                            self.assertRegex(got, rb"^421 ")
                            return
                        with lock:
                            accepted.append(n * 1000 + m)
            except (OSError, AssertionError) as e:
                with lock:
                    problems.append(f"client {n}: {e!r}")
        threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
        for t in threads:
            t.start()
        started.wait(10)
        time.sleep(0.5)  # messages flowing
        ms.stop(10.0)
        for t in threads:
            t.join(30)
        self.assertFalse(any(t.is_alive() for t in threads), "a client still waits for an answer")
        # A client cut off without a 421 (the stop closed its connection) is not an error;
        # one left waiting is (its read would time out: socket.timeout is an OSError too).
        self.assertEqual([p for p in problems if "timed out" in p], [])
        self.assertGreater(len(accepted), 0)
        texts = [p.read_bytes() for p in maildir_files(self.data_dir)]
        for number in accepted:
            body = f"body of message {number}\n".encode()
            self.assertEqual(sum(t.endswith(body) for t in texts), 1, number)
