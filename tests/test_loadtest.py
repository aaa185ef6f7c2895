"""``python3 -m ismail loadtest``: the load generator, against a real ISMail on loopback.

The command is run as a user runs it (a subprocess, bounded by a time-out) and judged by
its exit code, its report and what arrived in the Maildir.  The message builder and the
HOST:PORT parser are checked directly.  Nothing here talks beyond 127.0.0.1.
"""
from __future__ import annotations

import email
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest

from ismail.loadtest import Messages, Options, body, dot_stuff, percentile
from ismail.loadtest_cli import MAX_SESSIONS, parse_target
from tests.security_support import PASSWORD, USER, SelfSignedCertificate
from tests.support import ROOT, ServerProcess, free_port, without_trace

UNKNOWN = "nobody@example.test"


def loadtest(*args: str, password: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ISMAIL_LOADTEST_PASSWORD"}
    if password is not None:
        env["ISMAIL_LOADTEST_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "ismail", "loadtest", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def figure(report: str, label: str) -> str:
    m = re.search(rf"^{re.escape(label)}:\s+(.*)$", report, re.M)
    assert m, f"no {label!r} line in:\n{report}"
    return m.group(1)


def stored(server: ServerProcess, count: int, address: str = USER, timeout: float = 10) -> list[bytes]:
    """The messages in the account's Maildir once there are ``count`` (bounded wait)."""
    deadline = time.monotonic() + timeout
    while server.count(address) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    box = server.maildir(address)
    return [(box / sub / name).read_bytes() for sub in ("new", "cur") if (box / sub).is_dir()
            for name in sorted(os.listdir(box / sub))]


class PartsTest(unittest.TestCase):
    def test_targets(self):
        self.assertEqual(parse_target("127.0.0.1:2525"), ("127.0.0.1", 2525))
        self.assertEqual(parse_target("mx.example.test"), ("mx.example.test", 25))
        self.assertEqual(parse_target("[::1]:2525"), ("::1", 2525))
        self.assertEqual(parse_target("[::1]"), ("::1", 25))
        self.assertEqual(parse_target("::1"), ("::1", 25))
        for bad in ("", ":25", "host:", "host:0", "host:65536", "host:x", "[::1", "[::1]2525", "[]:25"):
            with self.assertRaises(Exception, msg=bad):
                parse_target(bad)

    def test_messages_have_the_size_asked_for_and_lines_of_76(self):
        for size in (0, 1, 300, 301, 302, 379, 2048, 10000):
            self.assertEqual(len(body(size)), max(size, 2) if size else 0, size)
        for length in (400, 401, 2048, 10000, 65537):
            maker = Messages(Options("127.0.0.1", 25, messages=100000, length=length, ehlo="client.test"))
            for n in (1, 9, 10, 99999):
                text = maker.text(n)
                self.assertEqual(len(text), length, (length, n))
                self.assertTrue(text.endswith(b"\r\n"))
                self.assertFalse(re.search(rb"[^\r]\n|\r[^\n]", text))
                head, _, rest = text.partition(b"\r\n\r\n")
                self.assertTrue(all(len(line) <= 76 for line in rest.split(b"\r\n")))
                self.assertIn(f"Subject: ISMail loadtest message {n} of 100000".encode(), head)
        a, b = maker.text(1), maker.text(2)
        self.assertNotEqual(email.message_from_bytes(a)["Message-ID"], email.message_from_bytes(b)["Message-ID"])

    def test_defaults_and_dot_stuffing(self):
        o = Options("127.0.0.1", 25, ehlo="client.test")
        self.assertEqual((o.sender, o.recipient), ("loadtest@client.test", "postmaster"))
        self.assertEqual(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n")
        self.assertEqual([percentile([1.0, 2.0, 3.0, 4.0], p) for p in (50, 90, 100)], [2.0, 4.0, 4.0])


class WithoutISMailTest(unittest.TestCase):
    def test_bad_arguments_exit_2_naming_the_option(self):
        for args, named in ((["no-port:"], "HOST:PORT"), (["127.0.0.1:99999"], "HOST:PORT"),
                            (["127.0.0.1:2525", "-s", "0"], "-s/--sessions"),
                            (["127.0.0.1:2525", "-s", str(MAX_SESSIONS + 1)], "-s/--sessions"),
                            (["127.0.0.1:2525", "-m", "many"], "-m/--messages"),
                            (["127.0.0.1:2525", "--timeout", "0"], "--timeout")):
            r = loadtest(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(f"argument {named}", r.stderr)
            self.assertNotIn("Traceback", r.stderr)
        # The allowed range is named (one thread's selector: 500 sockets where it is select()).
        self.assertIn(f"out of range (1 to {MAX_SESSIONS})",
                      loadtest("127.0.0.1:2525", "-s", str(MAX_SESSIONS + 1)).stderr)

    def test_nothing_listening_is_an_error_reported_at_once(self):
        port = free_port()
        started = time.monotonic()
        r = loadtest(f"127.0.0.1:{port}", "-m", "5", "--max-errors", "0", "--timeout", "5")
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(figure(r.stdout, "errors"), "5")
        self.assertRegex(r.stdout, r"5 x  connect: .*refused")
        self.assertEqual(figure(r.stdout, "latency ms"), "none (no message was accepted)")

    def test_a_silent_server_costs_at_most_the_timeout_and_max_seconds(self):
        with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never greets
            target = f"127.0.0.1:{silent.getsockname()[1]}"
            started = time.monotonic()
            r = loadtest(target, "-m", "2", "--timeout", "0.5", "--max-errors", "0")
            self.assertLess(time.monotonic() - started, 8)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("2 x  greeting: timed out after 0.5 s", r.stdout)
            started = time.monotonic()
            r = loadtest(target, "-s", "2", "-m", "100", "--max-seconds", "1")
            self.assertLess(time.monotonic() - started, 8)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertEqual(figure(r.stdout, "stopped"), "--max-seconds 1 reached")
            self.assertIn("2 x  greeting: no answer when --max-seconds 1 was reached", r.stdout)
            self.assertIn("98 not sent", r.stdout)

    @unittest.skipIf(os.name == "nt", "sends SIGINT (Ctrl+C) to the process")
    def test_ctrl_c_stops_at_once_and_reports(self):
        with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never greets
            p = subprocess.Popen([sys.executable, "-m", "ismail", "loadtest",
                                  f"127.0.0.1:{silent.getsockname()[1]}", "-s", "2", "-m", "100"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 stdin=subprocess.DEVNULL)
            try:
                time.sleep(1.0)  # both sessions wait for a greeting that never comes
                asked = time.monotonic()
                p.send_signal(signal.SIGINT)
                out, err = p.communicate(timeout=20)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        self.assertLess(time.monotonic() - asked, 5, "a silent server is not waited out")
        self.assertEqual(p.returncode, 1, out + err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(figure(out, "stopped"), "interrupted (Ctrl+C)")
        self.assertEqual(figure(out, "messages"), "2 sent, 0 accepted, 98 not sent")


class AgainstISMailTest(unittest.TestCase):
    """One ISMail for the whole class; 127.0.0.1 is a trusted client of it (the default)."""

    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess()
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()

    def setUp(self):
        box = self.server.maildir()
        for sub in ("new", "cur"):
            for name in os.listdir(box / sub) if (box / sub).is_dir() else ():
                os.unlink(box / sub / name)

    def test_every_message_arrives_and_is_counted(self):
        r = loadtest(f"127.0.0.1:{self.server.port}", "-s", "3", "-m", "30", "--to", USER)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(figure(r.stdout, "messages"), "30 sent, 30 accepted, 0 not sent")
        self.assertEqual(figure(r.stdout, "errors"), "0")
        self.assertGreater(float(figure(r.stdout, "messages/s")), 0)
        self.assertRegex(figure(r.stdout, "latency ms"), r"^p50 [\d.]+  p90 [\d.]+  p99 [\d.]+  max [\d.]+$")
        messages = stored(self.server, 30)
        self.assertEqual(len(messages), 30)
        ids = {email.message_from_bytes(m)["Message-ID"] for m in messages}
        subjects = {email.message_from_bytes(m)["Subject"] for m in messages}
        self.assertEqual(len(ids), 30)
        self.assertEqual(subjects, {f"ISMail loadtest message {n} of 30" for n in range(1, 31)})

    def test_several_messages_per_connection_pipelined(self):
        r = loadtest(f"127.0.0.1:{self.server.port}", "-s", "2", "-m", "20", "--per-connection", "5",
                     "--pipelining", "--to", USER)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("up to 5 per connection", r.stdout)
        self.assertEqual(len(stored(self.server, 20)), 20)

    def test_the_size_asked_for_is_what_is_stored(self):
        r = loadtest(f"127.0.0.1:{self.server.port}", "-m", "1", "-l", "10000", "--to", USER)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        [message] = stored(self.server, 1)
        eol = b"\r\n" if b"\r\n" in message else b"\n"
        sent = without_trace(message, eol).replace(eol, b"\r\n")
        self.assertEqual(len(sent), 10000)
        self.assertLess(len(message) - 10000, 400)  # ISMail's trace headers

    def test_a_refused_recipient_is_an_error_with_its_reply(self):
        r = loadtest(f"127.0.0.1:{self.server.port}", "-s", "2", "-m", "5", "--max-errors", "0",
                     "--to", UNKNOWN)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(figure(r.stdout, "messages"), "5 sent, 0 accepted, 0 not sent")
        self.assertIn(f"5 x  RCPT: 550 5.1.1 <{UNKNOWN}>", r.stdout)
        # Pipelined, on one connection: each refusal is its message's, then RSET and go on.
        r = loadtest(f"127.0.0.1:{self.server.port}", "-m", "6", "--per-connection", "3", "--pipelining",
                     "--max-errors", "0", "--to", UNKNOWN)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(figure(r.stdout, "errors"), "6")
        self.assertIn(f"6 x  RCPT: 550 5.1.1 <{UNKNOWN}>", r.stdout)

    def test_sending_stops_after_max_errors(self):
        r = loadtest(f"127.0.0.1:{self.server.port}", "-m", "50", "--max-errors", "3", "--to", UNKNOWN)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(figure(r.stdout, "errors"), "3")
        self.assertIn("47 not sent", r.stdout)
        self.assertIn("--max-errors 3", figure(r.stdout, "stopped"))


class TLSAndLoginTest(unittest.TestCase):
    """An ISMail that trusts no network: relaying is refused, AUTH is offered only over TLS."""

    @classmethod
    def setUpClass(cls):
        cls.cert = SelfSignedCertificate(cls())
        cls.server = ServerProcess({**cls.cert.settings(), "trusted_networks": []})
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            cls.cert.remove()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.cert.remove()

    def test_relaying_refused(self):
        r = loadtest(f"127.0.0.1:{self.server.port}", "-m", "2", "--to", "x@remote.test")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("2 x  RCPT: 554 5.7.1 <x@remote.test>: Relay access denied", r.stdout)

    def test_starttls_and_login(self):
        target = f"127.0.0.1:{self.server.port}"
        r = loadtest(target, "-s", "2", "-m", "4", "--starttls", "--auth", USER, "--to", USER,
                     password=PASSWORD)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn(PASSWORD, r.stdout + r.stderr)
        self.assertEqual(len(stored(self.server, 4)), 4)
        wrong = loadtest(target, "-m", "1", "--starttls", "--auth", USER, "--to", USER, password="wrong")
        self.assertEqual(wrong.returncode, 1)
        self.assertIn("AUTH: 535 5.7.8", wrong.stdout)
        plain = loadtest(target, "-m", "1", "--auth", USER, "--to", USER, password=PASSWORD)
        self.assertEqual(plain.returncode, 1)
        self.assertIn("AUTH: the server offers neither AUTH PLAIN nor LOGIN (try --starttls)", plain.stdout)
        nopw = loadtest(target, "-m", "1", "--auth", USER, "--to", USER)
        self.assertEqual(nopw.returncode, 2)
        self.assertIn("ISMAIL_LOADTEST_PASSWORD", nopw.stderr)


if __name__ == "__main__":
    unittest.main()
