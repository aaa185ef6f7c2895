"""ismail.porttest: the port-25 test and the SmartHost test, against real peers on loopback.

Postfix's smtp-sink is the real SMTP server; a few hand-made listeners play what the
Internet does to port 25 (accept and never greet, refuse, answer with something else),
and a small scripted server checks AUTH and STARTTLS.  Only loopback addresses are used;
the one name lookup that could leave the machine is replaced by a stub.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail.config import SmartHostSettings
from ismail.queue.dns import DNSError, MXRecord
from ismail.porttest import check_port, cli_check_port, mail_host_for, test_smarthost as smarthost_steps
from tests.support import free_port, require_program, wait_for_banner


class SmtpSink:
    """Postfix's smtp-sink on a loopback port (as root it must be told which user to become)."""

    def __init__(self, test: unittest.TestCase) -> None:
        program = require_program(test, "smtp-sink", "/usr/sbin/smtp-sink")
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen([program, *user, f"127.0.0.1:{self.port}", "10"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_banner("127.0.0.1", self.port, timeout=10)
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Listener:
    """A loopback socket that behaves as told: never accept, close at once, or say something."""

    def __init__(self, say: bytes | None = None, accept: bool = True) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)  # the kernel completes handshakes even if we never accept
        self.port = self.sock.getsockname()[1]
        self.say = say
        self.thread = None
        if accept:
            self.thread = threading.Thread(target=self._serve, daemon=True)
            self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                if self.say:
                    conn.sendall(self.say)
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        conn.recv(100)

    def close(self) -> None:
        self.sock.close()
        if self.thread is not None:
            self.thread.join(10)


class ScriptedSMTP(socketserver.ThreadingTCPServer):
    """Just enough SMTP to answer EHLO, STARTTLS and AUTH PLAIN for one known login."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None = None, login: tuple[str, str] = ("box", "s3cret")) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.tls, self.login = tls, login
        self.auth_seen: list[str] = []
        self.data_seen = False
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        pass  # a client that rejects our certificate is one of the cases under test

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ScriptedHandler(socketserver.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        server: ScriptedSMTP = self.server  # type: ignore[assignment]
        self.wfile.write(b"220 scripted.test ESMTP\r\n")
        secure = False
        for _ in range(20):
            line = self.rfile.readline(1000).decode().strip()
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                ext = [b"250-scripted.test", b"250-AUTH PLAIN"]
                if server.tls is not None and not secure:
                    ext.append(b"250-STARTTLS")
                self.wfile.write(b"\r\n".join(ext) + b"\r\n250 8BITMIME\r\n")
            elif verb == "STARTTLS" and server.tls is not None:
                self.wfile.write(b"220 2.0.0 go ahead\r\n")
                self.request = server.tls.wrap_socket(self.request, server_side=True)
                self.rfile, self.wfile = self.request.makefile("rb"), self.request.makefile("wb", 0)
                secure = True
            elif verb == "AUTH":
                _, _, blob = arg.partition(" ")
                user, password = base64.b64decode(blob).split(b"\0")[1:]
                server.auth_seen.append(user.decode())
                ok = (user.decode(), password.decode()) == server.login
                self.wfile.write(b"235 2.7.0 ok\r\n" if ok else b"535 5.7.8 bad credentials\r\n")
            elif verb in ("MAIL", "RCPT", "DATA"):
                server.data_seen = True
                self.wfile.write(b"503 not in this test\r\n")
            elif verb == "QUIT" or not line:
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"500 what\r\n")


class CheckPortTest(unittest.TestCase):
    def test_smtp_sink_greeting_is_shown(self) -> None:
        sink = SmtpSink(self)
        self.addCleanup(sink.stop)
        check = check_port("127.0.0.1", sink.port, timeout=5)
        self.assertTrue(check.ok, check)
        self.assertTrue(check.banner.startswith("220 "), check.banner)
        self.assertIn("smtp-sink", check.banner)
        self.assertIn("open", check.diagnosis)

    def test_cli_prints_the_banner_and_returns_0(self) -> None:
        sink = SmtpSink(self)
        self.addCleanup(sink.stop)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli_check_port("127.0.0.1", sink.port)
        self.assertEqual(code, 0)
        lines = out.getvalue().splitlines()
        self.assertLessEqual(len(lines), 2)
        self.assertIn("220 smtp-sink", lines[0])

    def test_closed_port_is_refused(self) -> None:
        port = free_port()
        started = time.monotonic()
        check = check_port("127.0.0.1", port, timeout=5)
        self.assertFalse(check.ok)
        self.assertIn("refused", check.diagnosis.lower())
        self.assertLess(time.monotonic() - started, 2)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(cli_check_port("127.0.0.1", port), 1)
        self.assertIn("refused", out.getvalue().lower())

    def test_listener_that_never_greets_times_out_within_the_timeout(self) -> None:
        silent = Listener(accept=False)
        self.addCleanup(silent.close)
        started = time.monotonic()
        check = check_port("127.0.0.1", silent.port, timeout=1.5)
        elapsed = time.monotonic() - started
        self.assertFalse(check.ok)
        self.assertIn("timed out waiting for the greeting", check.diagnosis.lower())
        self.assertGreaterEqual(elapsed, 1.4)
        self.assertLess(elapsed, 3.0)

    def test_port_25_timeout_suggests_a_smarthost_on_587(self) -> None:
        class Unanswered(socket.socket):
            def connect(self, address):  # what a dropped SYN looks like to the program
                raise socket.timeout("timed out")
        with mock.patch("ismail.porttest.socket.socket", Unanswered), \
                mock.patch("ismail.porttest.socket.getaddrinfo",
                           return_value=[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 25))]):
            check = check_port("mx.example.test", 25, timeout=1)
        self.assertFalse(check.ok)
        self.assertIn("Timed out", check.diagnosis)
        self.assertIn("blocked", check.diagnosis)
        self.assertIn("587", check.diagnosis)

    def test_name_not_found(self) -> None:
        error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        with mock.patch("ismail.porttest.socket.getaddrinfo", side_effect=error):
            check = check_port("no-such-host.example.test", 25, timeout=2)
        self.assertFalse(check.ok)
        self.assertIn("Name not found", check.diagnosis)
        self.assertIn("no-such-host.example.test", check.diagnosis)

    def test_accept_and_close_without_greeting(self) -> None:
        closer = Listener(say=None)
        self.addCleanup(closer.close)
        check = check_port("127.0.0.1", closer.port, timeout=3)
        self.assertFalse(check.ok)
        self.assertIn("without a greeting", check.diagnosis)

    def test_something_that_is_not_smtp(self) -> None:
        ssh = Listener(say=b"SSH-2.0-OpenSSH_9.6\r\n")
        self.addCleanup(ssh.close)
        check = check_port("127.0.0.1", ssh.port, timeout=3)
        self.assertFalse(check.ok)
        self.assertIn("not like a mail server", check.diagnosis)

    def test_multiline_greeting_is_read_whole(self) -> None:
        chatty = Listener(say=b"220-mx.example.test welcome\r\n220 ready\r\n")
        self.addCleanup(chatty.close)
        check = check_port("127.0.0.1", chatty.port, timeout=3)
        self.assertTrue(check.ok)
        self.assertEqual(check.banner.splitlines(), ["220-mx.example.test welcome", "220 ready"])

    def test_refusing_greeting_counts_as_reachable(self) -> None:
        busy = Listener(say=b"554 5.7.1 no service for you\r\n")
        self.addCleanup(busy.close)
        check = check_port("127.0.0.1", busy.port, timeout=3)
        self.assertTrue(check.ok)
        self.assertIn("refuses service", check.diagnosis)


class MailHostTest(unittest.TestCase):
    def test_domain_with_mx_tests_its_best_mx(self) -> None:
        resolver = mock.Mock()
        resolver.mx.return_value = [MXRecord(10, "mx1.example.test"), MXRecord(20, "mx2.example.test")]
        self.assertEqual(mail_host_for("example.test", resolver)[0], "mx1.example.test")

    def test_no_mx_or_no_dns_tests_the_name_itself(self) -> None:
        resolver = mock.Mock()
        resolver.mx.side_effect = DNSError("no answer")
        self.assertEqual(mail_host_for("smtp.example.test", resolver), ("smtp.example.test", ""))
        self.assertEqual(mail_host_for("127.0.0.1", resolver), ("127.0.0.1", ""))
        self.assertEqual(resolver.mx.call_count, 1)  # an IP address is never looked up


class SmartHostTest(unittest.TestCase):
    def settings(self, port: int, **kw) -> SmartHostSettings:
        return SmartHostSettings(**{"enabled": True, "host": "127.0.0.1", "port": port, "tls": "none", **kw})

    def test_connect_and_ehlo_against_smtp_sink(self) -> None:
        sink = SmtpSink(self)
        self.addCleanup(sink.stop)
        seen: list[str] = []
        steps = smarthost_steps(self.settings(sink.port), "mx.example.test", timeout=5,
                                on_step=lambda s: seen.append(s.name))
        self.assertEqual([s.name for s in steps], ["Connect", "EHLO"])
        self.assertTrue(all(s.ok for s in steps), steps)
        self.assertIn("220 smtp-sink", steps[0].detail)
        self.assertEqual(seen, ["Connect", "EHLO"])

    def test_starttls_required_but_not_offered(self) -> None:
        sink = SmtpSink(self)
        self.addCleanup(sink.stop)
        steps = smarthost_steps(self.settings(sink.port, tls="starttls"), "mx.example.test", timeout=5)
        self.assertEqual([s.name for s in steps], ["Connect", "EHLO", "STARTTLS"])
        self.assertFalse(steps[-1].ok)
        self.assertIn("does not offer STARTTLS", steps[-1].detail)
        optional = smarthost_steps(self.settings(sink.port, tls="starttls-optional"), "mx.example.test", 5)
        self.assertTrue(optional[-1].ok)
        self.assertIn("unencrypted", optional[-1].detail)

    def test_auth_with_the_saved_credentials(self) -> None:
        server = ScriptedSMTP()
        self.addCleanup(server.close)
        good = smarthost_steps(self.settings(server.port, authenticate=True, account="box", password="s3cret"),
                               "mx.example.test", timeout=5)
        self.assertEqual([(s.name, s.ok) for s in good], [("Connect", True), ("EHLO", True), ("AUTH", True)])
        self.assertIn("logged in as box", good[-1].detail)
        bad = smarthost_steps(self.settings(server.port, authenticate=True, account="box", password="wrong"),
                              "mx.example.test", timeout=5)
        self.assertFalse(bad[-1].ok)
        self.assertIn("refused the account name or password", bad[-1].detail)
        self.assertIn("535", bad[-1].detail)
        self.assertEqual(server.auth_seen, ["box", "box"])
        self.assertFalse(server.data_seen, "the test must not send mail")

    def test_starttls_then_auth(self) -> None:
        openssl = require_program(self, "openssl")
        tmp = Path(tempfile.mkdtemp(prefix="ismail-tls-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                       check=True, capture_output=True, timeout=60)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        server = ScriptedSMTP(tls=ctx)
        self.addCleanup(server.close)
        common = dict(tls="starttls", authenticate=True, account="box", password="s3cret")
        steps = smarthost_steps(self.settings(server.port, verify_certificate=False, **common), "mx.example.test", 5)
        self.assertEqual([(s.name, s.ok) for s in steps],
                         [("Connect", True), ("EHLO", True), ("STARTTLS", True), ("AUTH", True)], steps)
        self.assertIn("TLS", steps[2].detail)
        verified = smarthost_steps(self.settings(server.port, verify_certificate=True, **common), "mx.example.test", 5)
        self.assertEqual(verified[-1].name, "STARTTLS")
        self.assertFalse(verified[-1].ok)
        self.assertIn("Verify certificate", verified[-1].detail)

    def test_refused_smarthost(self) -> None:
        steps = smarthost_steps(self.settings(free_port()), "mx.example.test", timeout=5)
        self.assertEqual(len(steps), 1)
        self.assertEqual(steps[0].name, "Connect")
        self.assertFalse(steps[0].ok)
        self.assertIn("refused", steps[0].detail.lower())

    def test_no_smarthost_set(self) -> None:
        steps = smarthost_steps(SmartHostSettings(), "mx.example.test", timeout=5)
        self.assertFalse(steps[0].ok)
        self.assertIn("No SmartHost", steps[0].detail)


if __name__ == "__main__":
    unittest.main()
