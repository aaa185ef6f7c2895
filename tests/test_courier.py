"""The delivery process (ismail/queue/courier.py): outgoing SMTP conversations and DKIM
signing run in a second process that the server starts, restarts and ends.

What a user would check: relayed mail arrives; the helper is a process of the server's
own, gone when the server stops or dies; a helper killed in the middle of a delivery
loses nothing (the message stays queued and goes out on the next try); if the helper
cannot be started at all, mail still goes out; the setting is checked like any other.
"""
from __future__ import annotations

import logging
import os
import re
import select
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
import unittest
import uuid
from pathlib import Path
from unittest import mock

from ismail.queue import courier
from ismail.queue.courier import Courier
from ismail.queue.courier_child import NICE
from ismail.queue.frames import Frames
from ismail.queue.transport import Destination
from ismail.stats import Stats
from tests.support import ServerProcess, cli

FAST_RETRY = {"first_seconds": 1, "max_interval_seconds": 2, "lifetime_hours": 1}
PID = re.compile(r"delivery process started \(pid (\d+)\)")
TOKEN = re.compile(r"tok-[0-9a-f]{32}")


class Destination25:
    """A small SMTP server on loopback that keeps what it acknowledged.  With ``hold`` set,
    it reads a message's text and then waits (no reply) until ``release`` is set."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(20)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.hold = threading.Event()
        self.holding = threading.Event()   # set while a text waits for its reply
        self.release = threading.Event()
        self.refuse = threading.Event()    # set: every MAIL gets a 451 (try again later)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self.release.set()
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        f = conn.makefile("rb")
        try:
            conn.sendall(b"220 dest.test ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250 dest.test\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    text = b""
                    while not text.endswith(b"\r\n.\r\n"):
                        chunk = f.readline()
                        if not chunk:
                            return  # the client went away: nothing acknowledged, nothing kept
                        text += chunk
                    if self.hold.is_set():
                        self.holding.set()
                        self.release.wait(30)
                        if self._stop or self._client_gone(conn):
                            return  # nobody to acknowledge it to: not kept
                    conn.sendall(b"250 2.0.0 kept\r\n")
                    self.received.append(text)
                elif verb == b"MAIL" and self.refuse.is_set():
                    conn.sendall(b"451 4.3.0 not now\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            return
        finally:
            conn.close()

    @staticmethod
    def _client_gone(conn: socket.socket) -> bool:
        ready, _, _ = select.select([conn], [], [], 0)
        if not ready:
            return False
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def count(self, token: str) -> int:
        return sum(token.encode() in text for text in self.received)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "State:\tZ" not in status.read_text()


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def send(port: int, token: str) -> None:
    import smtplib
    text = (f"From: <user@example.test>\r\nTo: <friend@remote.test>\r\nSubject: {token}\r\n\r\n"
            f"body {token}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
        s.sendmail("user@example.test", ["friend@remote.test"], text)


class DeliveryProcessTest(unittest.TestCase):
    def start(self, **outgoing) -> tuple[ServerProcess, Destination25]:
        dest = Destination25()
        self.addCleanup(dest.close)
        server = ServerProcess({"trusted_networks": ["127.0.0.1/32"], "retry": FAST_RETRY,
                                "outgoing": {"max_connections": 2, **outgoing},
                                "smarthost": {"enabled": True, "host": "127.0.0.1", "port": dest.port,
                                              "exclusive": True, "tls": "none"}})
        self.addCleanup(server.cleanup)
        return server.start(), dest

    def log(self, server: ServerProcess) -> str:
        """The mail log (DATA/logs/maillog.log), where the user reads what the server did."""
        path = server.data_dir / "logs" / "maillog.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self, server: ServerProcess, at_least: int = 0) -> list[int]:
        """The delivery processes the log says were started (waiting for ``at_least``)."""
        found: list[int] = []

        def enough() -> bool:
            found[:] = [int(p) for p in PID.findall(self.log(server))]
            return len(found) >= at_least
        wait_until(enough, 10, f"{at_least} delivery process start(s) in the log")
        return found

    def relay_one(self, server: ServerProcess, dest: Destination25) -> int:
        """Relay a message; the pid of the delivery process the log says sent it."""
        token = "tok-" + uuid.uuid4().hex
        send(server.port, token)
        wait_until(lambda: dest.count(token) == 1, 30, "the relayed message")
        [pid] = self.pids(server, 1)
        return pid

    def test_relayed_mail_goes_out_through_a_process_of_the_servers_own_that_ends_with_it(self):
        server, dest = self.start()
        pid = self.relay_one(server, dest)
        self.assertNotEqual(pid, server.proc.pid)
        self.assertEqual(parent_of(pid), server.proc.pid)
        self.assertTrue(alive(pid))
        server.stop()
        wait_until(lambda: not alive(pid), 10, "the delivery process to end with the server")
        said = server.log_path.read_text(errors="replace")   # stdout and stderr of `run`
        self.assertNotIn("Traceback", said)
        self.assertIn("ISMail stopped", said)

    @unittest.skipUnless(hasattr(os, "getpriority"), "POSIX priorities")
    def test_it_runs_at_a_lower_priority_than_the_server(self):
        # Receiving goes first when the cores are busy; sending on is background work.
        server, dest = self.start()
        pid = self.relay_one(server, dest)
        self.assertEqual(os.getpriority(os.PRIO_PROCESS, pid),
                         os.getpriority(os.PRIO_PROCESS, server.proc.pid) + NICE)
        # and it still delivers: a second message goes through the same process
        self.assertEqual(self.relay_one(server, dest), pid)

    def test_it_ends_even_when_the_server_is_killed(self):
        server, dest = self.start()
        pid = self.relay_one(server, dest)
        server.kill()
        wait_until(lambda: not alive(pid), 10, "the delivery process to end after the server's death")

    def test_a_process_killed_during_a_delivery_loses_nothing_and_a_new_one_takes_over(self):
        server, dest = self.start()
        first = "tok-" + uuid.uuid4().hex
        dest.hold.set()
        send(server.port, first)  # the 250 came: the message is ISMail's to deliver now
        wait_until(dest.holding.is_set, 30, "the text at the destination")
        [pid] = self.pids(server, 1)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), 10, "the killed process to be gone")
        dest.hold.clear()
        dest.release.set()  # the destination sees its client gone: that text is not kept
        wait_until(lambda: "ended during a delivery" in self.log(server), 15, "the loss to be logged")
        # The next try (retry.first_seconds = 1) goes through a new process.
        wait_until(lambda: dest.count(first) == 1, 30, "the message, delivered on the next try")
        second = "tok-" + uuid.uuid4().hex
        send(server.port, second)
        wait_until(lambda: dest.count(second) == 1, 30, "the next message")
        pids = self.pids(server, 2)
        self.assertEqual(len(pids), 2, self.log(server)[-2000:])
        self.assertNotEqual(pids[0], pids[1])
        self.assertTrue(alive(pids[1]))
        self.assertEqual(dest.count(first), 1)  # never acknowledged twice

    def test_mail_waiting_in_the_queue_leaves_signed_with_the_key_active_when_it_goes(self):
        server, dest = self.start()
        r = cli(server.data_dir, "dkim", "new", "example.test", "--bits", "1024", "--selector", "old")
        self.assertEqual(r.returncode, 0, r.stderr)
        dest.refuse.set()
        token = "tok-" + uuid.uuid4().hex
        send(server.port, token)
        wait_until(lambda: "451 4.3.0 not now" in self.log(server), 15, "the first try to be refused")
        r = cli(server.data_dir, "dkim", "new", "example.test", "--bits", "1024", "--selector", "new")
        self.assertEqual(r.returncode, 0, r.stderr)
        dest.refuse.clear()
        wait_until(lambda: dest.count(token) == 1, 30, "the message, on a later try")
        [text] = [t for t in dest.received if token.encode() in t]
        head = text.split(b"\r\n\r\n", 1)[0]
        self.assertEqual(head.count(b"DKIM-Signature:"), 1, head)
        self.assertRegex(head, rb"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example\.test;"
                               rb"[^\n]*(\r\n\s[^\n]*)*s=new;")

    def test_switched_off_no_process_and_the_mail_still_goes(self):
        server, dest = self.start(delivery_process=False)
        token = "tok-" + uuid.uuid4().hex
        send(server.port, token)
        wait_until(lambda: dest.count(token) == 1, 30, "the relayed message")
        self.assertEqual(self.pids(server), [])

    def test_a_setting_that_is_not_true_or_false_is_refused_by_name(self):
        server = ServerProcess({"outgoing": {"delivery_process": "yes"}}, accounts=())
        self.addCleanup(server.cleanup)
        r = cli(server.data_dir, "check-config")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("outgoing.delivery_process", r.stderr)


class CourierUnitTest(unittest.TestCase):
    """The Courier without a server around it."""

    def setUp(self) -> None:
        self.dest = Destination25()
        self.addCleanup(self.dest.close)
        self.stats = Stats()
        self.data_dir = Path(tempfile.mkdtemp(prefix="ismail-courier-"))
        self.addCleanup(shutil.rmtree, self.data_dir, True)

    def deliver(self, c: Courier, token: str) -> dict:
        dests = [Destination("127.0.0.1", "127.0.0.1", self.dest.port, "none", smarthost=True)]
        text = f"From: <a@example.test>\r\nSubject: {token}\r\n\r\nbody {token}\r\n".encode()
        return c.attempt(dests, "a@example.test", ["b@remote.test"], text)

    def test_when_the_process_cannot_be_started_the_server_sends_itself(self):
        c = Courier(self.stats, self.data_dir, "mx.example.test")
        self.addCleanup(c.close)
        with mock.patch.object(courier, "courier_command", return_value=[str(self.data_dir / "missing")]), \
                self.assertLogs("ismail.courier", logging.ERROR) as logs:
            token = "tok-" + uuid.uuid4().hex
            results = self.deliver(c, token)
        self.assertTrue(results["b@remote.test"].sent, results)
        self.assertEqual(self.dest.count(token), 1)
        self.assertIsNone(c.pid)
        self.assertIn("cannot start the delivery process", "\n".join(logs.output))
        c.close_idle(force=True)
        self.assertEqual(self.stats.get("outgoing_current"), 0)

    def test_counters_and_the_cached_connection_follow_the_process(self):
        c = Courier(self.stats, self.data_dir, "mx.example.test")
        self.addCleanup(c.close)
        for _ in range(3):
            token = "tok-" + uuid.uuid4().hex
            self.assertTrue(self.deliver(c, token)["b@remote.test"].sent)
            self.assertEqual(self.dest.count(token), 1)
        self.assertIsNotNone(c.pid)
        self.assertNotEqual(c.pid, os.getpid())
        # One connection, reused for the three messages, counted here as it was opened there.
        self.assertEqual(self.stats.get("outgoing_total"), 1)
        self.assertEqual(self.stats.get("outgoing_current"), 1)
        self.assertTrue(c.close_idle(force=False))  # fresh: kept
        c.close_idle(force=True)
        self.assertEqual(self.stats.get("outgoing_current"), 0)
        pid = c.pid
        c.close()
        wait_until(lambda: not alive(pid), 10, "the process to end on close()")

    def test_an_unused_process_is_stopped_and_the_next_delivery_starts_another(self):
        c = Courier(self.stats, self.data_dir, "mx.example.test")
        self.addCleanup(c.close)
        with mock.patch.object(courier, "IDLE_STOP_SECONDS", 0.5):
            self.assertTrue(self.deliver(c, "tok-" + uuid.uuid4().hex)["b@remote.test"].sent)
            first = c.pid
            self.assertIsNotNone(first)
            c.close_idle(force=True)  # this thread's connection closed, as the pool does
            c.close_idle()
            self.assertEqual(c.pid, first)  # used a moment ago: kept
            time.sleep(0.6)
            with self.assertLogs("ismail.courier", logging.INFO) as logs:
                c.close_idle()  # what each idle delivery thread calls every second
            self.assertIsNone(c.pid)
            wait_until(lambda: not alive(first), 10, "the idle process to end")
            self.assertIn("delivery process stopped", "\n".join(logs.output))
            token = "tok-" + uuid.uuid4().hex
            self.assertTrue(self.deliver(c, token)["b@remote.test"].sent)
            self.assertEqual(self.dest.count(token), 1)
            self.assertNotIn(c.pid, (None, first))

    @unittest.skipUnless(hasattr(signal, "SIGKILL"), "POSIX: the process listens on a socket file")
    def test_a_killed_process_leaves_nothing_in_the_temporary_folder(self):
        # Its listening socket sits in a pymp- folder of TEMP, which only its own orderly
        # exit removes: one folder more for every crash, else.
        c = Courier(self.stats, self.data_dir, "mx.example.test")
        self.addCleanup(c.close)
        self.assertTrue(self.deliver(c, "tok-" + uuid.uuid4().hex)["b@remote.test"].sent)
        killed, folder = c.pid, Path(c._address).parent
        self.assertTrue(folder.name.startswith("pymp-") and folder.is_dir(), folder)
        os.kill(killed, signal.SIGKILL)
        # (gone for the Courier too: a killed leader is a zombie before its threads end)
        wait_until(lambda: c.pid is None, 10, "the killed process to be gone")
        with self.assertLogs("ismail.courier", logging.WARNING):
            self.deliver(c, "tok-" + uuid.uuid4().hex)   # finds it gone, starts another
        token = "tok-" + uuid.uuid4().hex
        self.assertTrue(self.deliver(c, token)["b@remote.test"].sent)
        self.assertNotIn(c.pid, (None, killed))
        self.assertFalse(folder.exists(), list(folder.iterdir()) if folder.exists() else None)
        second = Path(c._address).parent
        self.assertTrue(second.is_dir())
        c.close()   # the new one exits in order and takes its folder with it
        self.assertFalse(second.exists())

    @unittest.skipUnless(hasattr(signal, "SIGKILL"), "POSIX: the process listens on a socket file")
    def test_a_process_that_stops_listening_as_it_ends_is_replaced_not_bypassed(self):
        # A killed process's leader is a zombie before its threads end, and poll() says it
        # runs: a delivery then finds its socket refusing.  It waits for the end and starts
        # another, rather than logging an error and sending from the server's own process.
        c = Courier(self.stats, self.data_dir, "mx.example.test")
        self.addCleanup(c.close)
        self.assertTrue(self.deliver(c, "tok-" + uuid.uuid4().hex)["b@remote.test"].sent)
        ending, folder = c.pid, Path(c._address).parent
        Path(c._address).unlink()   # it listens no more; it has not ended yet
        killer = threading.Timer(0.3, os.kill, (ending, signal.SIGKILL))
        killer.start()
        self.addCleanup(killer.cancel)
        token, results = "tok-" + uuid.uuid4().hex, {}
        with self.assertLogs("ismail.courier", logging.INFO) as logs:
            # Another thread, as a delivery thread of the pool: it has no channel open yet.
            t = threading.Thread(target=lambda: results.update(self.deliver(c, token)))
            t.start()
            t.join(30)
        said = "\n".join(logs.output)
        self.assertTrue(results["b@remote.test"].sent, results)
        self.assertEqual(self.dest.count(token), 1)
        self.assertNotIn("cannot reach the delivery process", said)
        self.assertIn("delivery process started", said)
        self.assertNotIn(c.pid, (None, ending))
        # Its pymp- folder goes with it, though its socket was gone already.
        self.assertFalse(folder.exists(), list(folder.iterdir()) if folder.exists() else None)

    def test_a_refused_connection_is_logged_here(self):
        c = Courier(self.stats, self.data_dir, "mx.example.test")
        self.addCleanup(c.close)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        dests = [Destination("127.0.0.1", "127.0.0.1", closed, "none")]
        with self.assertLogs("ismail.sender", logging.INFO) as logs:
            results = c.attempt(dests, "a@example.test", ["b@remote.test"], b"Subject: x\r\n\r\nx\r\n")
        result = results["b@remote.test"]
        self.assertFalse(result.sent or result.permanent, result)
        self.assertIn("Cannot connect", result.text)
        self.assertIn(f"127.0.0.1[127.0.0.1]:{closed}: 4.4.1 Cannot connect", "\n".join(logs.output))


class CourierBatchTest(unittest.TestCase):
    """Several messages in one request to the process: each result comes back as soon as
    it is known, and the next text waits until the server has recorded it."""

    def setUp(self) -> None:
        from tests.test_sender_pipelining import RecordingServer
        self.recorder = RecordingServer()   # offers PIPELINING: texts go with the next envelope
        self.addCleanup(self.recorder.close)
        self.stats = Stats()
        self.data_dir = Path(tempfile.mkdtemp(prefix="ismail-courier-"))
        self.addCleanup(shutil.rmtree, self.data_dir, True)

    def items(self, count: int) -> tuple[list, list[str]]:
        dests = [Destination("127.0.0.1", "127.0.0.1", self.recorder.port, "none", smarthost=True)]
        tokens = ["tok-" + uuid.uuid4().hex for _ in range(count)]
        return [(dests, "a@example.test", ["b@remote.test"],
                 f"From: <a@example.test>\r\nSubject: {t}\r\n\r\nbody {t}\r\n".encode(),
                 False, "7BIT", "") for t in tokens], tokens

    def test_no_text_goes_before_the_result_of_the_one_before_is_recorded(self):
        c = Courier(self.stats, self.data_dir, "mx.example.test")
        self.addCleanup(c.close)
        items, tokens = self.items(4)
        seen_while_recording: list[tuple[int, int]] = []

        def record(index: int, results: dict) -> None:
            self.assertTrue(results["b@remote.test"].sent, results)
            time.sleep(0.3)  # a slow disk: the process must wait for this before the next text
            seen_while_recording.append((index, self.recorder.texts_seen))

        results = c.attempt_many(items, record)
        self.assertIsNotNone(c.pid, "not sent by the delivery process")
        self.assertEqual([r["b@remote.test"].text for r in results],
                         [f"250 2.0.0 Ok: queued as Q{i}" for i in range(1, 5)])
        # While message n was being recorded, the destination had seen n texts, not n + 1.
        self.assertEqual(seen_while_recording, [(0, 1), (1, 2), (2, 3), (3, 4)])
        self.assertEqual([TOKEN.search(m.data.decode()).group(0) for m in self.recorder.messages], tokens)
        self.assertEqual(len(self.recorder.connections), 1)
        c.close_idle(force=True)

    def test_a_process_killed_in_the_middle_of_a_request_defers_only_what_it_did_not_report(self):
        c = Courier(self.stats, self.data_dir, "mx.example.test")
        self.addCleanup(c.close)
        items, tokens = self.items(5)
        reported: list[int] = []

        def record(index: int, results: dict) -> None:
            reported.append(index)
            if index == 1:
                os.kill(c.pid, signal.SIGKILL)

        with self.assertLogs("ismail.courier", logging.WARNING):
            results = c.attempt_many(items, record)
        for i in (0, 1):
            self.assertTrue(results[i]["b@remote.test"].sent, results[i])
        for i in (2, 3, 4):
            self.assertEqual(results[i]["b@remote.test"].code, 0)   # tried again later
            self.assertIn("delivery process ended", results[i]["b@remote.test"].text)
        self.assertEqual(sorted(reported), [0, 1, 2, 3, 4])  # each reported once
        # Killed while the second result was being recorded: the third text never went.
        time.sleep(0.3)
        got = [TOKEN.search(m.data.decode()).group(0) for m in self.recorder.messages]
        self.assertEqual(got, tokens[:2])


class FramesTest(unittest.TestCase):
    """The channel's reader gives each message whole and in order, however the bytes come."""

    def pair(self):
        from multiprocessing.connection import Pipe
        a, b = Pipe()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return a, Frames(b)

    def test_messages_of_every_size_arrive_whole_and_in_order(self):
        sender, frames = self.pair()
        sizes = [0, 1, 3, 4, 5, 100, 65536, Frames.CHUNK - 4, Frames.CHUNK, 3 * Frames.CHUNK + 7]
        messages = [os.urandom(n) for n in sizes]
        writer = threading.Thread(target=lambda: [sender.send_bytes(m) for m in messages])
        writer.start()
        got = [frames.read() for _ in messages]
        writer.join(10)
        self.assertEqual([len(m) for m in got], sizes)
        self.assertEqual(got, messages)

    def test_several_messages_in_one_read_and_one_cut_in_the_middle(self):
        sender, frames = self.pair()
        raw = b"".join(struct.pack("!i", len(m)) + m for m in (b"one", b"two", b"three"))
        os.write(sender.fileno(), raw[:9])          # "one" whole and half of two's header
        self.assertEqual(frames.read(), b"one")
        os.write(sender.fileno(), raw[9:])
        self.assertEqual((frames.read(), frames.read()), (b"two", b"three"))

    def test_the_other_end_closing_is_eof(self):
        sender, frames = self.pair()
        os.write(sender.fileno(), struct.pack("!i", 10) + b"short")
        sender.close()
        with self.assertRaises(EOFError):
            frames.read()


if __name__ == "__main__":
    unittest.main()
