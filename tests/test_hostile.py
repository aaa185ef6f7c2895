"""Hostile clients and faults (issue 5): smuggling, pipelining abuse, slow clients and floods,
a fuzz run, a full disk, and SIGKILL under load with TLS and AUTH on.

Servers are real ``python3 -m ismail run`` processes (tests.support.ServerProcess) except for
the injected-fault tests, which need to patch a function inside the server and therefore run
an in-process ``MailServer``.  Everything stays on loopback; clients from 127.0.x.y look like
other hosts to the server.  Every loop is bounded in count and in time, and every process,
socket, mount and folder is cleaned up through addCleanup, also when a test fails.

Some tests take a while by nature (the server's own time-outs are what is tested); their
docstrings say how long.  The fuzz run takes 30-60 s on a 2-core machine; the whole file about
2 minutes.
"""
from __future__ import annotations

import email
import email.policy
import errno
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail.queue.journal import fsync_file as journal_fsync_file
from ismail.queue.spool import Spool
from ismail.store.accounts import AccountStore
from ismail.config import from_dict
from ismail.service import MailServer
from tests.security_support import (PASSWORD, REMOTE, SERVER_NAME, USER, SelfSignedCertificate, auth_plain,
                                    files_in, is_root, queue_entries, read_to_eof, said_nothing, starttls, wrap,
                                    vm_rss_kb)
from tests.support import ServerProcess, SMTPTalk, free_port, require_program

REPLY_LINE = re.compile(rb"[2-5][0-9]{2}[ -][^\r\n]*\r\n")
BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def stored(server_dir: Path) -> list[Path]:
    """Every message file in any Maildir under DATA/mailboxes (new/ and cur/)."""
    root = Path(server_dir) / "mailboxes"
    return sorted(p for sub in ("new", "cur") for p in root.glob(f"*/*/{sub}/*")) if root.is_dir() else []


class HostileCase(unittest.TestCase):
    def server(self, settings: dict | None = None, **kw) -> ServerProcess:
        s = ServerProcess(settings, **kw)
        self.addCleanup(s.cleanup)
        s.start()
        return s

    def talk(self, port: int, source: str | None = None, timeout: float = 15) -> SMTPTalk:
        t = SMTPTalk(port, source=source, timeout=timeout)
        self.addCleanup(t.close)
        return t

    def greeted(self, port: int, source: str | None = None) -> SMTPTalk:
        t = self.talk(port, source)
        self.assertRegex(t.reply(), rb"^220 ")
        return t

    def assert_reply(self, talk: SMTPTalk, line: str | bytes, pattern: bytes) -> bytes:
        answer = talk.cmd(line)
        self.assertRegex(answer, b"^" + pattern, f"reply to {line!r}")
        return answer

    def start_data(self, port: int, rcpts: tuple[str, ...] = (USER,)) -> SMTPTalk:
        t = self.greeted(port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assert_reply(t, "MAIL FROM:<sender@example.org>", rb"250 ")
        for rcpt in rcpts:
            self.assert_reply(t, f"RCPT TO:<{rcpt}>", rb"250 ")
        self.assert_reply(t, "DATA", rb"354 ")
        return t


# ------------------------------------------------------------------------------------ smuggling
SMUGGLING_ENDS = {
    "LF.LF": b"\n.\n", "LF.CRLF": b"\n.\r\n", "CRLF.LF": b"\r\n.\n", "CR.CR": b"\r.\r",
    "CRLF.CR": b"\r\n.\r", "CR.CRLF": b"\r.\r\n", "LF.CR": b"\n.\r", "CR.LF": b"\r.\n",
}


class SmugglingTest(HostileCase):
    def test_fake_ends_of_data_never_end_the_message(self):
        """Each fake end, then a whole smuggled transaction, then the real CRLF.CRLF: one reply."""
        server = self.server()
        smuggled = (f"MAIL FROM:<admin@example.test>\r\nRCPT TO:<{USER}>\r\nRCPT TO:<{REMOTE}>\r\n"
                    "DATA\r\nSubject: smuggled\r\n\r\nsmuggled body").encode()
        for name, end in SMUGGLING_ENDS.items():
            with self.subTest(fake_end=name):
                t = self.start_data(server.port, (USER,))
                t.send(b"Subject: outer\r\n\r\nhello" + end + smuggled + b"\r\n.\r\n")
                self.assertRegex(t.reply(), rb"^550 5\.5\.2 [^\r\n]*\r\n$")
                self.assertEqual(said_nothing(t, 0.7), b"", "more than one reply to one message")
                self.assert_reply(t, "NOOP", rb"250 2\.0\.0 Ok\r\n$")
                self.assert_reply(t, f"RCPT TO:<{USER}>", rb"503 5\.5\.1 ")  # no smuggled MAIL in force
                self.assert_reply(t, "QUIT", rb"221 ")
                t.close()
        time.sleep(0.3)
        self.assertEqual(stored(server.data_dir), [])
        self.assertEqual(queue_entries(server.data_dir), {})

    def test_fake_end_split_across_packets(self):
        """The same, with the fake end and the smuggled command arriving in separate writes."""
        server = self.server()
        for name in ("LF.LF", "CRLF.CR", "CR.CR"):
            with self.subTest(fake_end=name):
                t = self.start_data(server.port)
                t.send(b"Subject: split\r\n\r\nhello")
                for piece in (SMUGGLING_ENDS[name], b"RSET\r\n", b"MAIL FROM:<a@b.example>\r\n",
                              f"RCPT TO:<{USER}>\r\n".encode(), b"DATA\r\n", b"x\r\n.\r\n"):
                    time.sleep(0.05)
                    t.send(piece)
                self.assertRegex(t.reply(), rb"^550 5\.5\.2 ")
                self.assertEqual(said_nothing(t, 0.7), b"")
                t.close()
        time.sleep(0.3)
        self.assertEqual(stored(server.data_dir), [])


class NoBareLineEndsOnwardTest(HostileCase):
    """What ISMail relays reaches the next server with CRLF line ends only."""

    def message_lines(self, big: bool) -> list[bytes]:
        lines = [b"From: <sender@example.org>", b"To: <x@remote.test>", b"Subject: line ends",
                 b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8",
                 b"Content-Transfer-Encoding: 8bit", b"", b".leading dot", b"..two dots", b".",
                 b"trailing space \t", b"", "Gr\u00fc\u00dfe aus K\u00f6ln".encode(), b"x" * 998, b"end"]
        if big:  # over the 1 MB spill threshold; line lengths vary so CRLFs straddle any chunk size
            lines += [(b"%07d " % i) + b"abcdefghij" * (i % 97) for i in range(20000)]
        return lines

    def relay(self, port: int, lines: list[bytes]) -> None:
        t = self.greeted(port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assert_reply(t, "MAIL FROM:<sender@example.org> BODY=8BITMIME", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"250 ")
        self.assert_reply(t, "DATA", rb"354 ")
        t.send(b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n")
        self.assertRegex(t.reply(), rb"^250 2\.0\.0 ")
        self.assert_reply(t, "QUIT", rb"221 ")

    def wait_for(self, predicate, within: float, what: str, server: ServerProcess):
        deadline = time.monotonic() + within
        while not (value := predicate()):
            if time.monotonic() > deadline:
                self.fail(f"not within {within}s: {what}\n{server.log_text()[-3000:]}")
            time.sleep(0.1)
        return value

    def test_relayed_through_smtp_sink(self):
        program = require_program(self, "smtp-sink", "/usr/sbin/smtp-sink")
        sink_dir = Path(tempfile.mkdtemp(prefix="ismail-sink-"))
        self.addCleanup(shutil.rmtree, sink_dir, True)
        dumps = sink_dir / "dumps"
        dumps.mkdir()
        for d in (sink_dir, dumps):
            os.chmod(d, 0o777)  # smtp-sink run by root becomes nobody
        port = free_port()
        args = [program, "-c", "-h", "sink", "-d", f"{dumps}/%M.", *(["-u", "nobody"] if is_root() else []),
                f"127.0.0.1:{port}", "10"]
        out = open(sink_dir / "out", "wb")
        self.addCleanup(out.close)
        sink = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: (sink.poll() is None and sink.kill(), sink.wait(10)))
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    if s.recv(100).startswith(b"220 sink"):
                        s.sendall(b"QUIT\r\n")
                        break
            except OSError:
                pass
            self.assertLess(time.monotonic(), deadline, "smtp-sink did not start")
            time.sleep(0.05)
        server = self.server({"smarthost": {"enabled": True, "host": "127.0.0.1", "port": port,
                                            "exclusive": True, "tls": "none"}})
        for big in (False, True):
            with self.subTest(big=big):
                for old in dumps.iterdir():
                    old.unlink()
                lines = self.message_lines(big)
                self.relay(server.port, lines)
                self.wait_for(lambda: not queue_entries(server.data_dir), 30, "the queue to empty", server)
                [dump] = self.wait_for(lambda: list(dumps.iterdir()), 10, "a dump file", server)
                raw = dump.read_bytes()
                # smtp-sink writes each line it received with a LF; a bare CR would survive in it.
                self.assertNotIn(b"\r", raw)
                self.assertIn(b"X-Rcpt-Args: <x@remote.test>", raw)
                text_lines = raw.split(b"\n")
                start = text_lines.index(b"From: <sender@example.org>")
                self.assertEqual(text_lines[start:start + len(lines)], lines)

    def test_relayed_to_a_raw_capturing_smarthost(self):
        """A stdlib SMTP peer that keeps the exact bytes: every CR is followed by LF and vice versa."""
        capture = CapturingServer()
        self.addCleanup(capture.close)
        server = self.server({"smarthost": {"enabled": True, "host": "127.0.0.1", "port": capture.port,
                                            "exclusive": True, "tls": "none"}})
        for big in (False, True):
            with self.subTest(big=big):
                lines = self.message_lines(big)
                before = len(capture.transactions)
                self.relay(server.port, lines)
                self.wait_for(lambda: len(capture.transactions) > before, 30, "the relayed message", server)
                commands, data = capture.transactions[before]
                self.assertIsNone(BARE_CR_OR_LF.search(commands), commands[-500:])
                self.assertIsNone(BARE_CR_OR_LF.search(data), repr(data[:200]))
                self.assertTrue(data.endswith(b"\r\n.\r\n"))
                received = [line[1:] if line.startswith(b".") else line
                            for line in data[:-5].split(b"\r\n")]
                start = received.index(b"From: <sender@example.org>")
                self.assertEqual(received[start:], lines)
                self.assertIn(b"Received: from client.example.org", data)


class CapturingServer:
    """A minimal SMTP server on 127.0.0.1 that records each transaction's raw bytes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.transactions: list[tuple[bytes, bytes]] = []  # (command bytes, DATA bytes with the end)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        buf, commands = b"", b""
        deadline = time.monotonic() + 60
        try:
            conn.sendall(b"220 capture ESMTP\r\n")
            while time.monotonic() < deadline and not self.stop.is_set():
                while b"\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                line += b"\n"
                commands += line
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-capture\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    while b"\r\n.\r\n" not in buf and time.monotonic() < deadline:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    end = buf.index(b"\r\n.\r\n") + 5
                    data, buf = buf[:end], buf[end:]
                    self.transactions.append((commands, data))
                    commands = b""
                    conn.sendall(b"250 2.0.0 captured\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


# ----------------------------------------------------------------------------------- pipelining
class PipeliningTest(HostileCase):
    def test_talking_before_the_greeting(self):
        """A client that sends EHLO at once, before it could have seen the greeting: 554, closed.

        The server can only see bytes that arrived before it sent its greeting, so a client
        whose EHLO is a few microseconds late is indistinguishable from a quick honest one
        (a busy machine can make a few of them late): of at most twenty immediate senders,
        eight must be caught, and every one caught must be closed without an answer to its
        EHLO.  A client of our own (trusted_networks) is
        not checked: it is served even when it talks at once, as Postfix's postscreen
        permits mynetworks.
        """
        def talk_at_once(port: int, words: bytes) -> tuple[bytes, bool]:
            """Send ``words`` the moment the connection is open; all that came back, and
            whether the server closed the connection."""
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(words)
                t = SMTPTalk.__new__(SMTPTalk)
                t.sock, t.buf = s, b""
                return read_to_eof(t, 5)

        server = self.server({"trusted_networks": []})
        caught = 0
        for i in range(20):
            if caught == 8:
                break
            data, closed = talk_at_once(server.port, b"EHLO early.example.org\r\n")
            if data.startswith(b"554 "):
                caught += 1
                self.assertRegex(data, rb"^554 5\.5\.1 [^\r\n]*\r\n$", f"attempt {i}: only the 554")
                self.assertTrue(closed, f"attempt {i}: the connection must be closed")
            else:
                self.assertRegex(data, rb"^220 ", f"attempt {i}")
        self.assertGreaterEqual(caught, 8, "clients talking before the greeting were let in")
        # An honest client (waits for the greeting) is served.
        t = self.greeted(server.port)
        self.assert_reply(t, "EHLO honest.example.org", rb"250-")
        # The same early talk from a trusted address: greeted and answered, every time.
        own = self.server()  # loopback is trusted by default
        for i in range(5):
            data, _ = talk_at_once(own.port, b"EHLO scanner.example.org\r\nQUIT\r\n")
            self.assertRegex(data, rb"^220 [^\r\n]*\r\n250-", f"trusted attempt {i}")
            self.assertIn(b"\r\n221 ", data, f"trusted attempt {i}")

    def test_message_text_sent_with_data_before_354(self):
        server = self.server()
        t = self.greeted(server.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assert_reply(t, "MAIL FROM:<sender@example.org>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{USER}>", rb"250 ")
        t.send(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")  # one write: text before the 354
        data, closed = read_to_eof(t, 10)
        self.assertRegex(data, rb"^554 5\.5\.0 [^\r\n]*\r\n$")
        self.assertTrue(closed)
        time.sleep(0.3)
        self.assertEqual(stored(server.data_dir), [])

    def test_whole_pipelined_transaction_in_one_write(self):
        """MAIL, RCPT and DATA pipelined (RFC 2920 allows it), the text only after the 354."""
        server = self.server()
        t = self.greeted(server.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        t.send(f"MAIL FROM:<sender@example.org>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode())
        self.assertRegex(t.reply(), rb"^250 ")
        self.assertRegex(t.reply(), rb"^250 ")
        self.assertRegex(t.reply(), rb"^354 ")
        t.send(b"Subject: pipelined\r\n\r\nfine\r\n.\r\nQUIT\r\n")
        self.assertRegex(t.reply(), rb"^250 2\.0\.0 ")
        self.assertRegex(t.reply(), rb"^221 ")
        self.assertEqual(len(stored(server.data_dir)), 1)


# --------------------------------------------------------------------------------- slow clients
def trickle(t, pieces) -> tuple[bytes, float]:
    """Send one piece a second (each recv waits up to 1 s) until the server answers or
    hangs up; returns what it said and how long that took."""
    start = time.monotonic()
    got = b""
    t.sock.settimeout(1.0)
    for piece in pieces:
        try:
            t.sock.send(piece)
        except OSError:
            break
        try:
            chunk = t.sock.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        got += chunk
        if not chunk or b"\r\n" in got:
            break
    return got, time.monotonic() - start


class SlowClientTest(HostileCase):
    def test_trickling_command_line_is_cut_off(self):
        """One byte a second, never a whole line: 421 after timeouts.command_seconds (10 s); ~11 s."""
        server = self.server({"timeouts": {"command_seconds": 10}})
        t = self.greeted(server.port)
        self.assert_reply(t, "EHLO slow.example.org", rb"250-")
        payload = b"NOOP " + b"x" * 100
        got, elapsed = trickle(t, (payload[i:i + 1] for i in range(30)))  # at most 30 s
        self.assertRegex(got, rb"^421 4\.4\.2 ", f"after {elapsed:.1f}s")
        self.assertGreater(elapsed, 9.0)
        self.assertLess(elapsed, 15.0)
        rest, closed = read_to_eof(t, 5)
        self.assertTrue(closed)

    def test_slow_data_is_cut_off_by_the_minimum_rate(self):
        """DATA at 10 bytes a second (whole lines, so never idle) against min_data_rate 500:
        cut off once the 30 s grace is over; this test takes about 31 s."""
        server = self.server({"timeouts": {"command_seconds": 10, "min_data_rate": 500}})
        t = self.start_data(server.port)
        got, elapsed = trickle(t, (b"%08d\r\n" % i for i in range(40)))  # 10 bytes/s, at most 40 s
        self.assertRegex(got, rb"^421 4\.4\.2 ", f"after {elapsed:.1f}s")
        self.assertGreater(elapsed, 28.0)
        self.assertLess(elapsed, 37.0)
        self.assertEqual(stored(server.data_dir), [])

    def test_flood_of_trickling_clients_does_not_lock_out_a_normal_one(self):
        """100 clients from 50 addresses (127.0.1.1-50, 2 each) take every slot and trickle a
        byte a second; refused or cut off, each tries again 2.5-7.5 s later.  A normal client from
        127.0.2.1 that retries on 421 must get its message in within 20 s: the total limit (20)
        keeps the flood from taking more, and at 80 % of it the idle timeout drops from 300 s to
        10 s (stress mode), so the slots turn over.  About 12 s."""
        server = self.server()  # default limits: 20 in all, 5 per host; command timeout 300 s
        result = flood(server.port, retry_after=5.0, normal_retry=0.2, window=25.0)
        print(f"\n[flood] {result}", file=sys.stderr)
        self.assertIsNotNone(result["accepted_after"], result)
        self.assertGreater(result["normal_refusals"], 0, f"the flood never filled the server: {result}")
        self.assertLess(result["accepted_after"], 20.0, result)
        self.assertGreaterEqual(result["connected"], 20, result)
        self.assertGreater(result["refused"], 0, result)
        msgs = [p.read_bytes() for p in stored(server.data_dir)]
        self.assertEqual(len(msgs), 1)
        self.assertIn(b"Subject: normal client", msgs[0])


def flood(port: int, retry_after: float, normal_retry: float, window: float,
          tricklers: int = 100, addresses: int = 50) -> dict:
    """Trickling clients from 127.0.1.x and one normal client from 127.0.2.1; what happened."""
    stop = threading.Event()
    counters = {"connected": 0, "refused": 0, "errors": 0}
    lock = threading.Lock()
    hard_deadline = time.monotonic() + window + 30

    def trickler(source: str, seed: int) -> None:
        rng = random.Random(seed)  # bots are not in step with each other: retries are spread
        while not stop.is_set() and time.monotonic() < hard_deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5,
                                              source_address=(source, 0)) as s:
                    s.settimeout(1.0)
                    first = s.recv(200)
                    if first.startswith(b"220"):
                        with lock:
                            counters["connected"] += 1
                        while not stop.is_set() and time.monotonic() < hard_deadline:
                            s.send(b"X")  # one byte a second, never a whole line
                            try:
                                s.recv(200)  # the 421 that cuts us off, or the close
                                break
                            except socket.timeout:
                                pass
                    else:
                        with lock:
                            counters["refused"] += 1
            except OSError:
                with lock:
                    counters["errors"] += 1
            stop.wait(retry_after * rng.uniform(0.5, 1.5))

    per_address = tricklers // addresses
    sources = [f"127.0.1.{i}" for i in range(1, addresses + 1) for _ in range(per_address)]
    threads = [threading.Thread(target=trickler, args=(src, i), daemon=True) for i, src in enumerate(sources)]
    try:
        for th in threads:
            th.start()
        time.sleep(1.5)  # let the flood take the slots
        start = time.monotonic()
        refusals, accepted = 0, None
        while time.monotonic() - start < window and accepted is None:
            t = SMTPTalk(port, source="127.0.2.1", timeout=10)
            try:
                first = t.reply()
                if first.startswith(b"421"):
                    refusals += 1
                    time.sleep(normal_retry)
                    continue
                if not first.startswith(b"220"):
                    raise AssertionError(f"normal client greeted with {first!r}")
                for line, code in (("EHLO normal.example.org", b"250"), ("MAIL FROM:<normal@example.org>", b"250"),
                                   (f"RCPT TO:<{USER}>", b"250"), ("DATA", b"354")):
                    answer = t.cmd(line)
                    if not answer.startswith(code):
                        raise AssertionError(f"normal client: {line!r} -> {answer!r}")
                t.send(b"Subject: normal client\r\n\r\nthrough the flood\r\n.\r\n")
                answer = t.reply()
                if not answer.startswith(b"250"):
                    raise AssertionError(f"normal client: end of data -> {answer!r}")
                accepted = round(time.monotonic() - start, 2)
                t.cmd("QUIT")
            finally:
                t.close()
    finally:
        stop.set()
        for th in threads:
            th.join(10)
    with lock:
        return {"accepted_after": accepted, "normal_refusals": refusals, **counters}


# ------------------------------------------------------------------------------------------ fuzz
def _transcripts() -> list[list[bytes]]:
    """Real sessions (each a list of lines as a client sends them), the fuzz's seeds."""
    body = [b"From: <sender@example.org>", b"To: <user@example.test>", b"Subject: fuzz seed",
            b"Message-ID: <seed@example.org>", b"", b"Hello,", b"..a stuffed dot line", b"",
            "8-bit: Gr\u00fc\u00dfe".encode(), b"-- ", b"sender"]
    data = [line + b"\r\n" for line in body] + [b".\r\n"]
    return [
        [b"EHLO client.example.org\r\n", b"MAIL FROM:<sender@example.org>\r\n",
         f"RCPT TO:<{USER}>\r\n".encode(), b"DATA\r\n", *data, b"QUIT\r\n"],
        [b"HELO client.example.org\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<postmaster@example.test>\r\n",
         b"RCPT TO:<Root>\r\n", b"RCPT TO:<nobody@example.test>\r\n", b"DATA\r\n", *data,
         b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n"],
        [b"EHLO [192.0.2.1]\r\n", b"MAIL FROM:<s@example.org> SIZE=1000 BODY=8BITMIME\r\n",
         f"RCPT TO:<{USER}>\r\n".encode(), b"RCPT TO:<x@remote.test>\r\n",
         b"RCPT TO:<user%remote.test@example.test>\r\n", b"RCPT TO:<@example.test:x@remote.test>\r\n",
         b"DATA\r\n", *data, b"MAIL FROM:<second@example.org>\r\n", f"RCPT TO:<{USER}>\r\n".encode(),
         b"DATA\r\n", *data, b"QUIT\r\n"],
        [b"EHLO client.example.org\r\n", b"MAIL FROM:<\xc3\xbcser@example.org> SMTPUTF8\r\n",
         "RCPT TO:<user@example.test>\r\n".encode(), b"VRFY user\r\n", b"EXPN staff\r\n",
         b"HELP\r\n", b"DATA\r\n", *data, b"QUIT\r\n"],
        [b"EHLO client.example.org\r\n", auth_plain().encode() + b"\r\n",
         b"MAIL FROM:<user@example.test>\r\n", f"RCPT TO:<{USER}>\r\n".encode(), b"DATA\r\n", *data,
         b"QUIT\r\n"],
        [b"EHLO client.example.org\r\n", b"AUTH LOGIN\r\n", b"dXNlckBleGFtcGxlLnRlc3Q=\r\n",
         b"d3JvbmctcGFzc3dvcmQ=\r\n", b"STARTTLS\r\n", b"BDAT 10 LAST\r\n", b"QUIT\r\n"],
        [b"EHLO client.example.org\r\n", b"MAIL FROM:<a@example.org>\r\n", f"RCPT TO:<{USER}>\r\n".encode(),
         b"DATA\r\n", b"Subject: x\r\n", b"\r\n", b"x" * 990 + b"\r\n", b"\r\n.\r\n", b"QUIT\r\n"],
    ]


TRANSCRIPTS = _transcripts()
SPECIAL = [b"\r", b"\n", b"\0", b"\xff", b"\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b".", b":", b"<", b">",
           b"@", b"%", b"\"", b" ", b"\t", b"DATA\r\n", b"\xc3", b"\xe2\x80\xae"]


def mutate(rng: random.Random, lines: list[bytes]) -> bytes:
    """One to four mutations of a real session: flips, cuts, copies, control bytes, long tokens."""
    data = bytearray(b"".join(lines))
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(9)
        pos = rng.randrange(len(data) + 1)
        if kind == 0 and data:                      # flip a bit
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:                             # cut short
            del data[pos:]
        elif kind == 2 and data:                    # duplicate a slice
            end = min(len(data), pos + rng.randint(1, 200))
            data[pos:pos] = data[pos:end] * rng.randint(1, 3)
        elif kind == 3:                             # insert a special byte sequence
            data[pos:pos] = rng.choice(SPECIAL) * rng.randint(1, 3)
        elif kind == 4:                             # a very long token
            data[pos:pos] = bytes([rng.choice(b"Aa0.@<>:%")]) * rng.choice((100, 513, 600, 1001, 5000, 70000))
        elif kind == 5 and data:                    # delete a slice
            del data[pos:pos + rng.randint(1, 50)]
        elif kind == 6:                             # random bytes
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        elif kind == 7:                             # swap two lines
            parts = bytes(data).split(b"\n")
            if len(parts) > 2:
                i, j = rng.randrange(len(parts)), rng.randrange(len(parts))
                parts[i], parts[j] = parts[j], parts[i]
                data = bytearray(b"\n".join(parts))
        else:                                       # change case
            end = min(len(data), pos + rng.randint(1, 30))
            data[pos:end] = bytes(data[pos:end]).swapcase()
    return bytes(data)


class FuzzStats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions = 0
        self.bad: list[str] = []       # malformed replies (and what was sent)
        self.hangs: list[str] = []     # sessions the server never finished
        self.codes: dict[bytes, int] = {}
        self.accepted = 0              # messages the server took (250 ... queued as)
        self.noop_checks: list[tuple[int, bytes]] = []


def _final_replies(data: bytes) -> int:
    return sum(1 for line in data.split(b"\r\n")[:-1] if line[3:4] != b"-")


def fuzz_session(port: int, source: str, sent: bytes, early: bool) -> tuple[bytes, str]:
    """Send one mutated session (text after DATA only once a 354 came, unless it talks early)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cut = sent.find(b"DATA\r\n")
        stages = [sent] if early or cut < 0 else [sent[:cut + 6], sent[cut + 6:]]
        got = b""
        if not early:
            got, how = _read_until(s, lambda d: _final_replies(d) >= 1, 10)
            if how != "ok":
                return got, how
        for n, stage in enumerate(stages):
            try:
                s.sendall(stage)
            except OSError:
                break
            if n < len(stages) - 1:
                # Wait for the answers to the commands so far (the 354, or a refusal).
                want = _final_replies(got) + stage.count(b"\n")
                got2, how = _read_until(s, lambda d: _final_replies(got + d) >= want or
                                        re.search(rb"(^|\r\n)354 ", d) is not None, 2.0)
                got += got2
                if how in ("eof", "reset"):
                    return got, how
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        rest, how = _read_until(s, lambda d: False, 20)  # until the server closes
        return got + rest, how


def _read_until(sock: socket.socket, done, within: float) -> tuple[bytes, str]:
    """Read until done(data): (data, "ok" | "eof" | "reset" | "timeout")."""
    deadline = time.monotonic() + within
    data = b""
    while not done(data):
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except (ConnectionResetError, ConnectionAbortedError):
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
    return data, "ok"


def malformed(data: bytes) -> list[bytes]:
    """Reply lines that are not ``^[2-5][0-9]{2}[ -]...CRLF``, and a tail without its CRLF."""
    parts = data.split(b"\r\n")
    bad = [line for line in parts[:-1] if not REPLY_LINE.fullmatch(line + b"\r\n")]
    if parts[-1]:
        bad.append(b"<no CRLF> " + parts[-1][:100])
    return bad


class FuzzTest(HostileCase):
    SESSIONS = 10_000
    THREADS = 8
    SEED = 20240611

    def test_fuzz_mutated_sessions(self):
        """10,000 mutated real sessions from 8 threads (about a minute on 2 cores): every reply
        line well-formed, a NOOP answered every 1,000 sessions, memory growth under 50 MB."""
        server = self.server({"trusted_networks": [], "auth": {"allow_plaintext": True},
                              "incoming": {"max_connections": 100, "max_per_host": 10},
                              "timeouts": {"command_seconds": 10}})
        pid = server.proc.pid
        rss_start = vm_rss_kb(pid)
        stats = FuzzStats()
        next_index = iter(range(self.SESSIONS))
        index_lock = threading.Lock()
        deadline = time.monotonic() + 240
        started = time.monotonic()

        def noop_check(n: int) -> None:
            try:
                with SMTPTalk(server.port, timeout=15) as c:
                    greeting = c.reply()
                    answer = c.cmd("NOOP") if greeting.startswith(b"220") else greeting
            except OSError as e:
                answer = f"<{e}>".encode()
            with stats.lock:
                stats.noop_checks.append((n, answer))

        def worker(k: int) -> None:
            while time.monotonic() < deadline:
                with index_lock:
                    n = next(next_index, None)
                if n is None:
                    return
                rng = random.Random(self.SEED * 100_003 + n)
                sent = mutate(rng, rng.choice(TRANSCRIPTS))
                early = rng.random() < 0.01
                # A new address per session: failed logins in one session cannot ban the next.
                source = f"127.{64 + n // 65536}.{n // 256 % 256}.{n % 256 or 1}"
                try:
                    data, how = fuzz_session(server.port, source, sent, early)
                except OSError as e:
                    data, how = b"", f"error {e}"
                bad = malformed(data) if how != "timeout" else []
                with stats.lock:
                    stats.sessions += 1
                    if how not in ("eof", "reset"):
                        stats.hangs.append(f"session {n}: {how}; sent {sent[:300]!r}")
                    if bad:
                        stats.bad.append(f"session {n}: {bad[:3]!r}; sent {sent[:300]!r}")
                    for line in data.split(b"\r\n")[:-1]:
                        stats.codes[line[:3]] = stats.codes.get(line[:3], 0) + 1
                    stats.accepted += data.count(b" queued as ")
                    done = stats.sessions
                if done % 1000 == 0:
                    noop_check(done)

        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(self.THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(max(1.0, deadline + 30 - time.monotonic()))
        elapsed = time.monotonic() - started
        self.assertFalse(any(th.is_alive() for th in threads), "fuzz threads did not finish")
        self.assertIsNone(server.proc.poll(), "the server died:\n" + server.log_text()[-3000:])
        rss_end = vm_rss_kb(pid)
        noop_check(-1)
        summary = (f"{stats.sessions} sessions in {elapsed:.0f}s, {stats.accepted} messages accepted, "
                   f"RSS {rss_start} -> {rss_end} kB, codes {dict(sorted(stats.codes.items()))}")
        print(f"\n[fuzz] {summary}", file=sys.stderr)
        self.assertEqual(stats.sessions, self.SESSIONS, summary)
        self.assertEqual(len(stats.bad), 0, f"{len(stats.bad)} session(s) with malformed replies, e.g.\n"
                         + "\n".join(b[:1000] for b in stats.bad[:5]) + f"\n{summary}")
        self.assertEqual(len(stats.hangs), 0, f"{len(stats.hangs)} session(s) never finished, e.g.\n"
                         + "\n".join(h[:1000] for h in stats.hangs[:5]) + f"\n{summary}")
        self.assertEqual(len(stats.noop_checks), self.SESSIONS // 1000 + 1)
        for n, answer in stats.noop_checks:
            self.assertEqual(answer, b"250 2.0.0 Ok\r\n", f"NOOP after {n} sessions")
        # The fuzz reached deep into the protocol: messages were taken and refused.
        self.assertGreater(stats.accepted, self.SESSIONS // 20, summary)
        for code in (b"354", b"550", b"500", b"503", b"554"):
            self.assertGreater(stats.codes.get(code, 0), 0, f"no {code!r} reply at all: {summary}")
        self.assertNotIn("Traceback", server.log_text())
        self.assertLess(rss_end - rss_start, 50 * 1024, "memory grew: " + summary)


# ------------------------------------------------------------------------------------ disk full
def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def half_then_enospc(real):
    """A write_new_file that creates the file, writes part of the first chunk, then: disk full."""
    def write_new_file(path, chunks, sync=True):
        def pieces():
            for chunk in chunks:
                yield bytes(chunk[: max(1, len(chunk) // 2)])
                break
            raise _enospc()
        return real(path, pieces(), sync)
    return write_new_file


class InjectedDiskFullTest(HostileCase):
    """OSError(ENOSPC) injected at the write, in an in-process MailServer."""

    def setUp(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="ismail-enospc-"))
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.port = free_port()
        settings, _ = from_dict({
            "server_name": SERVER_NAME, "primary_domain": "example.test", "listen": [f"127.0.0.1:{self.port}"], "pop3": {"enabled": False}, "imap": {"enabled": False},
            "dkim": {"auto_keys": False}, "tls": {"self_signed": False},
            # No DNS-based anti-spam checks (no test may ask the machine's resolver) and no
            # connection-rate limit (load tests reconnect from one untrusted address); tests/
            # test_antispam_* turn them on, with dnsmasq.
            "antispam": {"rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off",
             "connection_rate": 0},
            "smarthost": {"enabled": True, "host": "127.0.0.1", "port": 9, "exclusive": True, "tls": "none"}})
        AccountStore(self.data_dir).add(USER, PASSWORD, sorted(settings.local_domains()))
        # The server's log comes here instead of the test output; the refusal must be logged.
        self.records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = self.records.append
        logger = logging.getLogger("ismail")
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        self.ms = MailServer(settings, self.data_dir)
        self.ms.start()
        self.addCleanup(self.ms.stop, 5.0)
        self.box = self.data_dir / "mailboxes" / "example.test" / "user"

    def send(self, t: SMTPTalk, rcpts: tuple[str, ...], subject: str) -> bytes:
        self.assert_reply(t, "MAIL FROM:<sender@example.org>", rb"250 ")
        for rcpt in rcpts:
            self.assert_reply(t, f"RCPT TO:<{rcpt}>", rb"250 ")
        self.assert_reply(t, "DATA", rb"354 ")
        t.send(f"Subject: {subject}\r\n\r\n".encode() + b"line of text\r\n" * 2000 + b".\r\n")
        return t.reply()

    def assert_nothing_left(self) -> None:
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(files_in(self.box / sub), [], f"Maildir {sub}/")
        self.assertEqual(files_in(self.data_dir / "queue" / "tmp"), [], "queue/tmp")
        self.assertEqual(files_in(self.data_dir / "queue" / "messages"), [], "queue/messages")

    def check(self, target: str, replacement, rcpts: tuple[str, ...]) -> None:
        t = self.greeted(self.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        with mock.patch(target, replacement):
            answer = self.send(t, rcpts, "disk full")
        self.assertRegex(answer, rb"^452 4\.3\.1 ")
        self.assert_nothing_left()
        self.assertEqual(self.ms.stats.get("messages_received"), 0)
        logged = [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]
        self.assertTrue(any("No space left on device" in m for m in logged), logged)
        self.assertFalse(any(r.exc_info for r in self.records), "a traceback was logged")
        # Space is back: the same session, and a new one, get their messages in.
        self.assertRegex(self.send(t, rcpts, "after, same session"), rb"^250 2\.0\.0 ")
        t2 = self.greeted(self.port)
        self.assert_reply(t2, "EHLO client.example.org", rb"250-")
        self.assertRegex(self.send(t2, rcpts, "after, new session"), rb"^250 2\.0\.0 ")
        if USER in rcpts:
            self.assertEqual(len(files_in(self.box / "new")), 2)
        if REMOTE in rcpts:
            self.assertEqual(len(queue_entries(self.data_dir)), 2)

    def test_maildir_write_fails_half_way(self):
        import ismail.store.maildir
        self.check("ismail.store.maildir.write_new_file", half_then_enospc(ismail.store.maildir.write_new_file), (USER,))

    def test_queue_write_fails_after_the_local_copy_was_made(self):
        # The queued copy goes into the journal (its file is written later); a journal that
        # cannot take it hands it to a file of its own, fsync'd: when both fail, no 250, and
        # the local copy made before is taken back.
        import ismail.queue.spool
        with mock.patch("ismail.queue.journal._write_all", side_effect=_enospc()):
            self.check("ismail.queue.spool.write_new_file",
                       half_then_enospc(ismail.queue.spool.write_new_file), (USER, REMOTE))

    def test_queue_folder_sync_fails_after_the_queue_file_is_in_place(self):
        # The entry's one file is written and renamed into messages/; making it durable
        # fails - the journal's sync, then the file's own fsync and its folder's that
        # stand in for it: no 250, and the file that is in place is taken away again.
        # (The journal is then out of use until a restart: the messages after it are
        # committed one fsync each.)
        def fsync_dir(path, fd=None):
            raise _enospc()
        with mock.patch("ismail.queue.journal._fdatasync", side_effect=_enospc()):
            self.check("ismail.fsutil.fsync_dir", fsync_dir, (REMOTE,))

    def test_queue_journal_sync_fails_and_the_message_is_committed_on_its_own(self):
        t = self.greeted(self.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        with mock.patch("ismail.queue.journal._fdatasync", side_effect=_enospc()):
            self.assertRegex(self.send(t, (REMOTE,), "journal full"), rb"^250 2\.0\.0 ")
        self.assertEqual(len(queue_entries(self.data_dir)), 1)
        logged = [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]
        self.assertTrue(any("No space left on device" in m and "journal" in m for m in logged), logged)
        self.assertRegex(self.send(t, (REMOTE,), "after"), rb"^250 2\.0\.0 ")
        self.assertEqual(len(queue_entries(self.data_dir)), 2)

    def test_journal_sync_fails_and_local_mail_is_committed_on_its_own(self):
        t = self.greeted(self.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        with mock.patch("ismail.queue.journal._fdatasync", side_effect=_enospc()), \
                mock.patch("ismail.store.maildir.fsync_file", wraps=journal_fsync_file) as own_fsync:
            self.assertRegex(self.send(t, (USER,), "journal full"), rb"^250 2\.0\.0 ")
        self.assertEqual(own_fsync.call_count, 1, "the file was fsync'd on its own")
        self.assertEqual(len(files_in(self.box / "new")), 1)
        logged = [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]
        self.assertTrue(any("No space left on device" in m and "journal" in m for m in logged), logged)
        self.assertRegex(self.send(t, (USER,), "after"), rb"^250 2\.0\.0 ")
        self.assertEqual(len(files_in(self.box / "new")), 2)

    def test_fsync_fails(self):
        # Every way of making data durable fails: the journal's sync (which commits both the
        # local copy and the queued one), then the fsyncs that stand in for it.
        def fsync(fd):
            raise _enospc()
        with mock.patch("ismail.queue.journal._fdatasync", side_effect=_enospc()):
            self.check("os.fsync", fsync, (USER, REMOTE))


class TmpfsDiskFullTest(HostileCase):
    """A real full disk: the data folder on a 4 MB tmpfs (root only; skipped elsewhere)."""

    def setUp(self) -> None:
        if not is_root() or not shutil.which("mount"):
            self.skipTest("mounting a tmpfs needs root")
        self.mnt = Path(tempfile.mkdtemp(prefix="ismail-tmpfs-"))
        self.addCleanup(self.mnt.rmdir)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(self.mnt)],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", str(self.mnt)], timeout=30)
        self.server_ = ServerProcess(data_dir=self.mnt)
        self.log_dir = Path(tempfile.mkdtemp(prefix="ismail-tmpfs-log-"))
        self.addCleanup(shutil.rmtree, self.log_dir, True)
        self.server_.log_path = self.log_dir / "run.stderr"  # keep our view of the log off the full disk
        self.addCleanup(self.server_.cleanup)
        self.server_.start()
        self.filler = self.mnt / "filler"

    def fill(self, leave: int) -> None:
        """Fill the volume, then give back ``leave`` bytes."""
        block = b"\0" * 65536
        with open(self.filler, "wb") as f:
            for _ in range(1000):  # 64 MB at most; the volume holds 4
                try:
                    f.write(block)
                    f.flush()
                except OSError as e:
                    self.assertEqual(e.errno, errno.ENOSPC)
                    break
            else:
                self.fail("the tmpfs never filled up")
        os.truncate(self.filler, max(0, self.filler.stat().st_size - leave))

    def message(self, t: SMTPTalk, rcpt: str, size: int) -> bytes:
        self.assert_reply(t, "MAIL FROM:<sender@example.org>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{rcpt}>", rb"250 ")
        self.assert_reply(t, "DATA", rb"354 ")
        line = b"y" * 98 + b"\r\n"
        t.send(b"Subject: big\r\n\r\n" + line * (size // 100) + b".\r\n")
        return t.reply()

    def assert_nothing_left(self) -> None:
        box = self.server_.maildir(USER)
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(files_in(box / sub), [], f"Maildir {sub}/")
        self.assertEqual(files_in(self.mnt / "queue" / "tmp"), [], "queue/tmp")
        self.assertEqual(files_in(self.mnt / "queue" / "messages"), [], "queue/messages")

    def recovers(self) -> None:
        self.filler.unlink()
        t = self.greeted(self.server_.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertRegex(self.message(t, USER, 200_000), rb"^250 2\.0\.0 ")
        self.assertEqual(self.server_.count(USER), 1)
        self.assertIsNone(self.server_.proc.poll())

    def test_full_disk_refuses_with_452_and_recovers(self):
        self.fill(leave=32 * 1024)
        t = self.greeted(self.server_.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        for rcpt in (USER, REMOTE):
            with self.subTest(rcpt=rcpt):
                self.assertRegex(self.message(t, rcpt, 200_000), rb"^452 4\.3\.1 ")
                self.assert_reply(t, "NOOP", rb"250 ")
        self.assert_nothing_left()
        self.recovers()

    def test_full_disk_with_a_message_too_big_for_memory(self):
        """Over 1 MB a message is spilled to DATA/queue/tmp while it is read: that write fails too."""
        self.fill(leave=256 * 1024)
        t = self.greeted(self.server_.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        answer = self.message(t, USER, 1_500_000)
        self.assertRegex(answer, rb"^452 4\.3\.1 ", "a full disk while reading a large message")
        self.assert_reply(t, "NOOP", rb"250 ")
        self.assert_nothing_left()
        self.recovers()


# ----------------------------------------------------------------------- crash with TLS and AUTH
CRASH_THREADS = 6
CRASH_PER_CONNECTION = 5
QUEUED_AS = re.compile(rb"^250 .*queued as ([0-9A-Za-z]+)")


class CrashWithTLSAndAuthTest(HostileCase):
    """SIGKILL under load while clients use STARTTLS + AUTH to relay (SmartHost closed, so every
    message stays queued); restart; every acknowledged message is in the queue exactly once."""

    def setUp(self) -> None:
        self.cert = SelfSignedCertificate(self)
        self.addCleanup(self.cert.remove)
        self.srv = ServerProcess({"trusted_networks": [], **self.cert.settings(),
                                  "incoming": {"max_connections": 100, "max_per_host": 10}})
        self.addCleanup(self.srv.cleanup)
        self.stop = threading.Event()
        self.killing = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, str] = {}
        self.attempted: set[str] = set()
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []
        self.addCleanup(self._stop_clients)

    def _stop_clients(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(20)

    def client(self, index: int) -> None:
        serial = 0
        deadline = time.monotonic() + 60
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                with SMTPTalk(self.srv.port, timeout=15) as c:
                    expect(c.reply(), b"220")
                    expect(c.cmd(f"EHLO client{index}.example.org"), b"250")
                    expect(c.cmd("STARTTLS"), b"220")
                    wrap(c)
                    expect(c.cmd(f"EHLO client{index}.example.org"), b"250")
                    expect(c.cmd(auth_plain()), b"235")
                    for _ in range(CRASH_PER_CONNECTION):
                        if self.stop.is_set():
                            break
                        serial += 1
                        token = f"tok-{index:02d}-{serial:05d}"
                        expect(c.cmd(f"MAIL FROM:<{USER}>"), b"250")
                        expect(c.cmd(f"RCPT TO:<{REMOTE}>"), b"250")
                        expect(c.cmd("DATA"), b"354")
                        with self.lock:
                            self.attempted.add(token)
                        c.send(crash_message(token))
                        answer = c.reply()
                        m = QUEUED_AS.match(answer)
                        if not m:
                            raise UnexpectedReply(f"after DATA: {answer!r}")
                        with self.lock:
                            self.acked[token] = m.group(1).decode()
                    c.cmd("QUIT")
        except (OSError, UnexpectedReply) as e:
            if not self.killing.is_set():
                with self.lock:
                    self.errors.append(f"client {index}: {type(e).__name__}: {e}")

    def test_sigkill_under_tls_and_auth_load(self):
        """About 10 s: 3 s of load, the kill, a restart, a clean stop."""
        self.srv.start()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                        for i in range(CRASH_THREADS)]
        started = time.monotonic()
        for th in self.threads:
            th.start()
        while True:
            time.sleep(0.05)
            with self.lock:
                acks, errors = len(self.acked), list(self.errors)
            elapsed = time.monotonic() - started
            if errors or elapsed > 30 or (elapsed > 3.0 and acks >= 20):
                break
        self.assertEqual(errors, [], self.srv.log_text()[-3000:])
        self.assertGreaterEqual(acks, 20, "too few messages acknowledged to test anything:\n"
                                + self.srv.log_text()[-3000:])
        self.killing.set()
        self.srv.kill()
        self._stop_clients()
        self.assertFalse(any(th.is_alive() for th in self.threads))
        self.assertEqual(self.errors, [])
        with self.lock:
            acked, attempted = dict(self.acked), set(self.attempted)
        print(f"\n[crash/tls] killed after {time.monotonic() - started:.1f}s: {len(acked)} acknowledged, "
              f"{len(attempted) - len(acked)} in flight", file=sys.stderr)

        self.srv.start()  # same folder, same port: start-up clears what the kill left
        t = self.greeted(self.srv.port)  # and it serves TLS + AUTH again
        starttls(self, t)
        self.assert_reply(t, "EHLO again.example.org", rb"250-")
        self.assert_reply(t, auth_plain(), rb"235 ")
        self.assert_reply(t, "QUIT", rb"221 ")
        self.assertEqual(self.srv.stop(), 0)

        messages = self.srv.data_dir / "queue" / "messages"
        names = files_in(messages)
        for name in names:
            stem, _, ext = name.rpartition(".")
            self.assertIn(ext, ("msg", "state"), f"unexpected file in the queue: {name}")
            if ext == "state":
                self.assertIn(f"{stem}.msg", names, f"{name} alone")
        self.assertEqual(files_in(self.srv.data_dir / "queue" / "tmp"), [])
        self.assertEqual(files_in(self.srv.data_dir / "queue" / "corrupt"), [])
        holders: dict[str, list[str]] = {}
        for qid in queue_entries(self.srv.data_dir):
            raw = Spool(messages.parent).read_message(qid)
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            token = (msg["Subject"] or "").removeprefix("crash test ")
            self.assertIn(token, attempted, f"{qid}: a message nobody sent")
            self.assertEqual(msg.get_payload(), crash_body(token), f"{qid}: {token} damaged")
            holders.setdefault(token, []).append(qid)
        entries = queue_entries(self.srv.data_dir)
        missing = sorted(tok for tok in acked if tok not in holders)
        twice = {tok: q for tok, q in holders.items() if len(q) > 1}
        self.assertEqual(missing, [], f"{len(missing)} acknowledged message(s) lost")
        self.assertEqual(twice, {}, "message(s) queued more than once")
        for token, qid in acked.items():
            self.assertEqual(holders[token], [qid])
            self.assertEqual(entries[qid]["sender"], USER)
            self.assertEqual([r["address"] for r in entries[qid]["recipients"]], [REMOTE])


class UnexpectedReply(Exception):
    pass


def expect(answer: bytes, code: bytes) -> bytes:
    if not answer.startswith(code):
        raise UnexpectedReply(f"expected {code!r}, got {answer!r}")
    return answer


def crash_body(token: str) -> str:
    serial = int(token.rsplit("-", 1)[1])
    return "".join(f"{token} line {i:03d} " + "abcdefghijklmnopqrstuvwxyz"[: 5 + (i * 7) % 21] + "\r\n"
                   for i in range(20 + serial % 40))


def crash_message(token: str) -> bytes:
    head = f"From: <{USER}>\r\nTo: <{REMOTE}>\r\nSubject: crash test {token}\r\n\r\n"
    return (head + crash_body(token)).encode() + b".\r\n"



if __name__ == "__main__":
    unittest.main()
