"""Security (issue 5): TLS, SMTP AUTH, bans and blocked networks, user enumeration, nmap.

Every test runs a real ``python3 -m ismail run`` (tests.support.ServerProcess) on loopback and
talks to it with the real tools an administrator or an attacker would use - swaks, openssl
s_client, nmap - or with a raw socket where exact bytes matter (STARTTLS command injection,
CVE-2011-0411).  The test certificate is made here with the openssl command (a self-signed
certificate for mx.example.test in a temporary folder); no key is kept in the repository.

Clients from 127.0.0.2, 127.0.0.3 ... are "other hosts" to the server (Linux routes the whole
127/8 to loopback).  ``trusted_networks: []`` makes every client a stranger to the server.
"""
from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import time
import unittest
import warnings
from pathlib import Path

from tests.security_support import (PASSWORD, REMOTE, SERVER_NAME, USER, SelfSignedCertificate, auth_plain,
                                    ehlo_keywords, files_in, queue_entries, read_to_eof, run,
                                    said_nothing, starttls, vm_rss_kb, wrap)
from tests.support import IN_CI, ServerProcess, SMTPTalk, cli, free_port, queued_message, require_program

UNTRUSTED = {"trusted_networks": []}


class SecurityCase(unittest.TestCase):
    cert: SelfSignedCertificate

    @classmethod
    def setUpClass(cls) -> None:
        cls.cert = SelfSignedCertificate(cls())
        cls.addClassCleanup(cls.cert.remove)

    def server(self, settings: dict | None = None, extra_listen: tuple[str, ...] = (),
               tls: bool = True) -> ServerProcess:
        """A running ISMail; ``extra_listen`` are more listen entries with "{port}" filled in."""
        settings = dict(settings or {})
        if tls:
            settings.update(self.cert.settings())
        s = ServerProcess(settings)
        self.addCleanup(s.cleanup)
        self.extra_ports = []
        for entry in extra_listen:
            port = free_port()
            self.extra_ports.append(port)
            s.settings["listen"].append(entry.format(port=port))
        s.write_settings()
        s.start()
        return s

    def talk(self, port: int, source: str | None = None) -> SMTPTalk:
        t = SMTPTalk(port, source=source, timeout=15)
        self.addCleanup(t.close)
        return t

    def greeted(self, port: int, source: str | None = None) -> SMTPTalk:
        t = self.talk(port, source)
        greeting = t.reply()
        self.assertRegex(greeting, rb"^220 ", "no greeting")
        return t

    def swaks(self, port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        swaks = require_program(self, "swaks")
        return run([swaks, "--server", "127.0.0.1", "--port", str(port), "--timeout", "20", *args],
                   timeout=timeout)

    def require_swaks_tls(self) -> None:
        """swaks does TLS through Net::SSLeay / IO::Socket::SSL: without them it is a missing peer."""
        swaks = require_program(self, "swaks")
        support = run([swaks, "--support"], timeout=30)
        if "TLS supported" not in support.stdout + support.stderr:
            message = "swaks has no TLS support (Perl modules Net::SSLeay / IO::Socket::SSL missing)"
            if IN_CI:
                self.fail(message + " - CI=true, so this is a failure, not a skip")
            self.skipTest(message)

    def diagnose(self, server: ServerProcess, proc: subprocess.CompletedProcess | None = None) -> str:
        text = ""
        if proc is not None:
            text += (f"\n--- exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                     f"\n--- stderr\n{proc.stderr[-2000:]}")
        return text + f"\n--- server log\n{server.log_text()[-3000:]}"

    def wait_log(self, server: ServerProcess, text: str, within: float = 5.0) -> str:
        """The server's log once it holds ``text`` (the log is written in batches)."""
        deadline = time.monotonic() + within
        while text not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        return server.log_text()

    def assert_reply(self, talk: SMTPTalk, line: str | bytes, pattern: bytes) -> bytes:
        answer = talk.cmd(line)
        self.assertRegex(answer, b"^" + pattern, f"reply to {line!r}")
        return answer


# ---------------------------------------------------------------------------------------------- TLS
class TLSTest(SecurityCase):
    def test_swaks_starttls_delivers_to_local_account(self):
        self.require_swaks_tls()
        server = self.server()
        proc = self.swaks(server.port, "--tls", "--from", "a@example.org", "--to", USER,
                          "--header", "Subject: over TLS", "--body", "sent with STARTTLS")
        self.assertEqual(proc.returncode, 0, self.diagnose(server, proc))
        self.assertIn("TLS started with cipher TLSv1.", proc.stdout)
        self.assertIn(f'TLS peer DN="/CN={SERVER_NAME}"', proc.stdout)
        self.assertEqual(server.count(USER), 1, self.diagnose(server, proc))
        [stored] = [p for p in (server.maildir(USER) / "new").iterdir()]
        text = stored.read_text("utf-8")
        self.assertIn("Subject: over TLS", text)
        # RFC 3848: the Received: header says the message came over TLS.
        self.assertRegex(text, r"with ESMTPS id ")

    def test_openssl_s_client_starttls_shows_the_certificate(self):
        openssl = require_program(self, "openssl")
        server = self.server()
        proc = run([openssl, "s_client", "-starttls", "smtp", "-crlf", "-ign_eof", "-servername", SERVER_NAME,
                    "-connect", f"127.0.0.1:{server.port}"], timeout=30, stdin="NOOP\nQUIT\n")
        out = proc.stdout
        self.assertRegex(out, r"(?m)^subject=\s*CN\s*=\s*mx\.example\.test\s*$", self.diagnose(server, proc))
        self.assertRegex(out, r"New, TLSv1\.[23], Cipher is ")
        # The commands typed after the handshake were answered over TLS.
        self.assertIn("250 2.0.0 Ok", out)
        self.assertIn("221 2.0.0 Bye", out)

    def test_implicit_tls_listener(self):
        """A "tls" listener (port 465 style): TLS from the first byte; swaks --tlsc and s_client."""
        openssl = require_program(self, "openssl")
        self.require_swaks_tls()
        server = self.server(extra_listen=("127.0.0.1:{port} tls",))
        port = self.extra_ports[0]
        proc = run([openssl, "s_client", "-crlf", "-ign_eof", "-servername", SERVER_NAME, "-connect",
                    f"127.0.0.1:{port}"], timeout=30, stdin="EHLO client.example.org\nQUIT\n")
        self.assertRegex(proc.stdout, r"(?m)^subject=\s*CN\s*=\s*mx\.example\.test\s*$",
                         self.diagnose(server, proc))
        self.assertIn(f"220 {SERVER_NAME} ESMTP", proc.stdout)
        # Already encrypted: STARTTLS is not offered again, AUTH is.
        ehlo = proc.stdout[proc.stdout.index("250-"):]
        self.assertNotIn("STARTTLS", ehlo)
        self.assertIn("AUTH PLAIN LOGIN", ehlo)

        proc = self.swaks(port, "--tlsc", "--from", "a@example.org", "--to", USER,
                          "--header", "Subject: implicit TLS")
        self.assertEqual(proc.returncode, 0, self.diagnose(server, proc))
        self.assertIn("TLS started with cipher TLSv1.", proc.stdout)
        self.assertEqual(server.count(USER), 1)
        # A plain-text client on that port gets no greeting in clear text.
        t = self.talk(port)
        t.send(b"EHLO plain.example.org\r\n")
        data, closed = read_to_eof(t, 10)
        self.assertNotIn(b"220 ", data)
        self.assertNotIn(b"250", data)

    def test_tls_1_1_is_refused(self):
        openssl = require_program(self, "openssl")
        server = self.server(extra_listen=("127.0.0.1:{port} tls",))
        old = ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]
        if not self._local_openssl_speaks_tls_1_1(openssl, old):
            self.skipTest("the local openssl cannot make a TLS 1.1 handshake at all")
        for label, argv in (("STARTTLS", ["-starttls", "smtp", "-connect", f"127.0.0.1:{server.port}"]),
                            ("implicit", ["-connect", f"127.0.0.1:{self.extra_ports[0]}"])):
            with self.subTest(label):
                proc = run([openssl, "s_client", *argv, *old], timeout=30, stdin="QUIT\n")
                self.assertNotEqual(proc.returncode, 0, self.diagnose(server, proc))
                self.assertRegex(proc.stdout, r"Cipher is \(NONE\)")  # no session was made
                self.assertNotIn(f"CN = {SERVER_NAME}", proc.stdout)
                self.assertRegex(proc.stdout + proc.stderr, r"(?i)alert protocol version|unsupported protocol|wrong version")
                # ... while the same server speaks TLS 1.2 to the same tool.
                proc = run([openssl, "s_client", *argv, "-tls1_2"], timeout=30, stdin="QUIT\n")
                self.assertRegex(proc.stdout, r"New, TLSv1\.2, Cipher is ", self.diagnose(server, proc))

    def _local_openssl_speaks_tls_1_1(self, openssl: str, old: list[str]) -> bool:
        """Control: a TLS 1.1-only server (Python's ssl) - can this openssl client reach it?"""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
                ctx.load_cert_chain(self.cert.cert, self.cert.key)
            except (ValueError, ssl.SSLError):
                return False
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(20)
        result: list[str] = []

        def serve():
            try:
                conn, _ = listener.accept()
                conn.settimeout(20)
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    result.append(tls.version() or "")
            except (OSError, ssl.SSLError):
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        run([openssl, "s_client", "-connect", f"127.0.0.1:{listener.getsockname()[1]}", *old],
            timeout=30, stdin="")
        t.join(25)
        return result == ["TLSv1.1"]

    def test_starttls_twice_and_with_argument(self):
        server = self.server()
        t = self.greeted(server.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250[ -]")
        self.assert_reply(t, "STARTTLS now", rb"501 ")
        self.assert_reply(t, "STARTTLS", rb"220 ")
        wrap(t)
        ehlo = self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertNotIn("STARTTLS", ehlo_keywords(ehlo))
        self.assert_reply(t, "STARTTLS", rb"503 ")


class NoTLSTest(SecurityCase):
    def test_without_certificate_starttls_is_not_offered(self):
        server = self.server(tls=False)
        t = self.greeted(server.port)
        ehlo = self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertNotIn("STARTTLS", ehlo_keywords(ehlo))
        self.assert_reply(t, "STARTTLS", rb"502 5\.5\.1 ")
        self.assert_reply(t, "NOOP", rb"250 ")  # still talking in clear text

    def test_missing_certificate_or_key_is_a_clear_startup_error(self):
        for missing in ("certificate", "key"):
            with self.subTest(missing=missing):
                server = ServerProcess({"tls": {
                    "certificate": str(self.cert.dir / "no-such-cert.pem") if missing == "certificate"
                    else str(self.cert.cert),
                    "key": str(self.cert.dir / "no-such-key.pem") if missing == "key" else str(self.cert.key)}})
                self.addCleanup(server.cleanup)
                wanted = server.settings["tls"][missing]
                proc = cli(server.data_dir, "run", timeout=30)
                self.assertNotEqual(proc.returncode, 0)
                errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
                self.assertEqual(len(errors), 1, proc.stderr)
                self.assertIn(wanted, errors[0])
                self.assertNotIn("Traceback", proc.stderr)
                # Nothing is listening: it really did not start.
                with self.assertRaises(OSError):
                    socket.create_connection(("127.0.0.1", server.port), timeout=2).close()

    def test_key_that_does_not_match_is_a_clear_startup_error(self):
        other = SelfSignedCertificate(self)
        self.addCleanup(other.remove)
        server = ServerProcess({"tls": {"certificate": str(self.cert.cert), "key": str(other.key)}})
        self.addCleanup(server.cleanup)
        proc = cli(server.data_dir, "run", timeout=30)
        self.assertNotEqual(proc.returncode, 0)
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        self.assertEqual(len(errors), 1, proc.stderr)
        self.assertIn(str(self.cert.cert), errors[0])
        self.assertNotIn("Traceback", proc.stderr)


class StartTLSInjectionTest(SecurityCase):
    """CVE-2011-0411: commands sent in clear text behind STARTTLS must not run inside TLS."""

    def inject(self, injected: bytes) -> SMTPTalk:
        server = self.server()
        self.srv = server
        t = self.greeted(server.port)
        ehlo = self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertIn("STARTTLS", ehlo_keywords(ehlo))
        t.send(b"STARTTLS\r\n" + injected)  # one write, one packet
        self.assertRegex(t.reply(), rb"^220 2\.0\.0 ")
        # Not one byte may follow the 220 in clear text (no answer to the injected command).
        self.assertEqual(t.buf, b"")
        wrap(t)
        # After the handshake the server must be waiting for us: no reply of its own.
        self.assertEqual(said_nothing(t, 1.0), b"", "the server answered an injected command over TLS")
        return t

    def test_injected_rset(self):
        t = self.inject(b"RSET\r\n")
        ehlo = self.assert_reply(t, "EHLO again.example.org", rb"250-")  # the answer to OUR command
        self.assertIn(b"Hello again.example.org", ehlo)
        self.assert_reply(t, "NOOP", rb"250 2\.0\.0 Ok\r\n$")
        self.assertEqual(said_nothing(t, 0.5), b"")

    def test_injected_mail_and_ehlo_required_again(self):
        t = self.inject(b"MAIL FROM:<a@b>\r\n")
        # The session starts over: MAIL before EHLO is refused ...
        self.assert_reply(t, "MAIL FROM:<c@example.org>", rb"503 5\.5\.1 ")
        self.assert_reply(t, "EHLO again.example.org", rb"250-")
        # ... and the injected MAIL is not in force.
        self.assert_reply(t, f"RCPT TO:<{USER}>", rb"503 5\.5\.1 ")
        self.assert_reply(t, "MAIL FROM:<c@example.org>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{USER}>", rb"250 ")

    def test_injected_whole_transaction_is_not_delivered(self):
        t = self.inject(f"MAIL FROM:<a@b.example>\r\nRCPT TO:<{USER}>\r\nDATA\r\n"
                        "Subject: injected\r\n\r\nx\r\n.\r\n".encode())
        self.assert_reply(t, "EHLO again.example.org", rb"250-")
        self.assert_reply(t, "QUIT", rb"221 ")
        time.sleep(0.3)
        self.assertEqual(self.srv.count(USER), 0)
        self.assertEqual(queue_entries(self.srv.data_dir), {})


# --------------------------------------------------------------------------------------------- AUTH
class AuthTest(SecurityCase):
    def test_swaks_auth_plain_and_login_over_tls_relay(self):
        self.require_swaks_tls()
        server = self.server(UNTRUSTED)
        for mechanism in ("PLAIN", "LOGIN"):
            with self.subTest(mechanism=mechanism):
                before = set(queue_entries(server.data_dir))
                proc = self.swaks(server.port, "--tls", "--auth", mechanism, "--auth-user", USER,
                                  "--auth-password", PASSWORD, "--from", USER, "--to", REMOTE,
                                  "--header", f"Subject: relayed after AUTH {mechanism}")
                self.assertEqual(proc.returncode, 0, self.diagnose(server, proc))
                self.assertIn("235 2.7.0", proc.stdout)
                new = {k: v for k, v in queue_entries(server.data_dir).items() if k not in before}
                self.assertEqual(len(new), 1, self.diagnose(server, proc))
                [(qid, entry)] = new.items()
                self.assertEqual([r["address"] for r in entry["recipients"]], [REMOTE])
                self.assertEqual(entry["sender"], USER)
                eml = queued_message(server.data_dir, qid).decode("utf-8")
                self.assertIn(f"Subject: relayed after AUTH {mechanism}", eml)
                self.assertIn("with ESMTPSA id", eml)  # RFC 3848: TLS and AUTH

    def test_swaks_wrong_password_535_and_nothing_queued(self):
        self.require_swaks_tls()
        server = self.server(UNTRUSTED)
        proc = self.swaks(server.port, "--tls", "--auth", "PLAIN", "--auth-user", USER,
                          "--auth-password", "wrong-pw", "--from", USER, "--to", REMOTE)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("535 5.7.8", proc.stdout, self.diagnose(server, proc))
        self.assertEqual(files_in(server.data_dir / "queue" / "messages"), [])
        self.assertIn("failed login as user@example.test", self.wait_log(server, "failed login"))
        self.assertNotIn("wrong-pw", server.log_text())

    def test_no_auth_in_clear_text_for_strangers(self):
        server = self.server(UNTRUSTED)
        t = self.greeted(server.port)
        ehlo = self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertNotIn("AUTH", ehlo_keywords(ehlo))
        self.assert_reply(t, auth_plain(), rb"538 5\.7\.11 ")
        self.assert_reply(t, "AUTH LOGIN", rb"538 5\.7\.11 ")
        # No login, no relay.
        self.assert_reply(t, f"MAIL FROM:<{USER}>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"554 5\.7\.1 ")
        self.assert_reply(t, "RSET", rb"250 ")
        # Over TLS the same stranger is offered AUTH, but without it still may not relay.
        starttls(self, t)
        ehlo = self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertIn("AUTH", ehlo_keywords(ehlo))
        self.assertIn("AUTH PLAIN LOGIN", ehlo.decode())
        self.assert_reply(t, f"MAIL FROM:<{USER}>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"554 5\.7\.1 ")

    def test_allow_plaintext_offers_auth_without_tls(self):
        server = self.server({**UNTRUSTED, "auth": {"allow_plaintext": True}}, tls=False)
        t = self.greeted(server.port)
        ehlo = self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertIn("AUTH PLAIN LOGIN", ehlo.decode())
        self.assert_reply(t, "AUTH LOGIN", rb"334 VXNlcm5hbWU6\r\n")       # Username:
        self.assert_reply(t, "dXNlckBleGFtcGxlLnRlc3Q=", rb"334 UGFzc3dvcmQ6\r\n")  # user@example.test
        self.assert_reply(t, "c2VjcmV0LXB3", rb"235 2\.7\.0 ")                # secret-pw
        self.assert_reply(t, f"MAIL FROM:<{USER}>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"250 ")

    def test_starttls_discards_a_login_made_before_it(self):
        """RFC 3207 4.2: after the handshake the server MUST forget what the client told it in
        clear text; a login made before STARTTLS (over a wire anyone could have written on) is
        part of that."""
        server = self.server({**UNTRUSTED, "auth": {"allow_plaintext": True}})
        t = self.greeted(server.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assert_reply(t, auth_plain(), rb"235 ")
        self.assert_reply(t, "STARTTLS", rb"220 ")
        wrap(t)
        ehlo = self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertIn("AUTH", ehlo_keywords(ehlo), "the login from before TLS is still in force")
        self.assert_reply(t, f"MAIL FROM:<{USER}>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"554 5\.7\.1 ")

    def test_enforce_sender(self):
        server = self.server({**UNTRUSTED, "auth": {"enforce_sender": True}})
        t = self.greeted(server.port)
        starttls(self, t)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assert_reply(t, auth_plain(), rb"235 ")
        self.assert_reply(t, "MAIL FROM:<other@example.test>", rb"553 ")
        self.assert_reply(t, "MAIL FROM:<postmaster@example.test>", rb"553 ")
        self.assert_reply(t, "MAIL FROM:<>", rb"553 ")
        self.assert_reply(t, "MAIL FROM:<User@Example.Test>", rb"250 ")  # the account, any case
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"250 ")

    def test_auth_commands_out_of_place(self):
        server = self.server(UNTRUSTED)
        t = self.greeted(server.port)
        starttls(self, t)
        self.assert_reply(t, auth_plain(), rb"503 ")  # EHLO again first
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assert_reply(t, "AUTH CRAM-MD5", rb"504 ")
        self.assert_reply(t, "AUTH PLAIN !!!notbase64", rb"501 ")
        self.assert_reply(t, "AUTH PLAIN", rb"334 ")
        self.assert_reply(t, "*", rb"501 ")  # cancelled
        self.assert_reply(t, auth_plain(), rb"235 ")
        self.assert_reply(t, auth_plain(), rb"503 ")  # already logged in
        ehlo = self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertNotIn("AUTH", ehlo_keywords(ehlo))


class LoginMemoryTest(SecurityCase):
    def test_logins_keep_memory_bounded(self):
        """Password checks cost memory (scrypt: 16 MB each); 240 logins from 8 clients at once
        may not leave the server much bigger than before (limit: 50 MB more)."""
        server = self.server({"incoming": {"max_connections": 100, "max_per_host": 10}}, tls=False)
        before = vm_rss_kb(server.proc.pid)
        failures: list[str] = []

        def client(k: int) -> None:
            for i in range(30):
                try:
                    with SMTPTalk(server.port, source=f"127.0.3.{k + 1}", timeout=30) as t:
                        t.reply()
                        t.cmd("EHLO client.example.org")
                        answer = t.cmd(auth_plain())
                        if not answer.startswith(b"235"):
                            failures.append(f"client {k}: {answer!r}")
                        t.cmd("QUIT")
                except OSError as e:
                    failures.append(f"client {k}: {e}")

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        self.assertFalse(any(th.is_alive() for th in threads))
        self.assertEqual(failures, [])
        after = vm_rss_kb(server.proc.pid)
        self.assertLess(after - before, 50 * 1024, f"VmRSS {before} kB -> {after} kB after 240 logins")


class SubmissionTest(SecurityCase):
    def test_submission_listener_needs_auth_to_relay(self):
        # Default trusted_networks: 127.0.0.1 is trusted - but not on a "submission" listener.
        server = self.server(extra_listen=("127.0.0.1:{port} submission",))
        sub = self.extra_ports[0]
        t = self.greeted(sub)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assert_reply(t, f"MAIL FROM:<{USER}>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"554 5\.7\.1 ")
        self.assert_reply(t, "QUIT", rb"221 ")

        t = self.greeted(server.port)  # the normal listener: trusted, relays
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assert_reply(t, f"MAIL FROM:<{USER}>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"250 ")
        self.assert_reply(t, "QUIT", rb"221 ")

        t = self.greeted(sub)  # submission with AUTH (trusted: offered without TLS too)
        ehlo = self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assertIn("AUTH", ehlo_keywords(ehlo))
        self.assert_reply(t, auth_plain(), rb"235 ")
        self.assert_reply(t, f"MAIL FROM:<{USER}>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"250 ")
        self.assert_reply(t, "DATA", rb"354 ")
        t.send(b"Subject: submitted\r\n\r\nvia the submission port\r\n.\r\n")
        self.assertRegex(t.reply(), rb"^250 2\.0\.0 ")
        entries = queue_entries(server.data_dir)
        self.assertEqual([[r["address"] for r in e["recipients"]] for e in entries.values()], [[REMOTE]])

    def test_require_for_relay_applies_to_every_listener(self):
        server = self.server({"auth": {"require_for_relay": True}})
        t = self.greeted(server.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        self.assert_reply(t, f"MAIL FROM:<{USER}>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"554 5\.7\.1 ")
        self.assert_reply(t, f"RCPT TO:<{USER}>", rb"250 ")  # local delivery needs no login
        self.assert_reply(t, "RSET", rb"250 ")
        self.assert_reply(t, auth_plain(), rb"235 ")
        self.assert_reply(t, f"MAIL FROM:<{USER}>", rb"250 ")
        self.assert_reply(t, f"RCPT TO:<{REMOTE}>", rb"250 ")


# ------------------------------------------------------------------------------- bans and blocking
BAN = {"auth": {"ban_after_failures": 3, "ban_window_minutes": 30, "ban_minutes": 60}}


class BanTest(SecurityCase):
    def failed_login(self, t: SMTPTalk) -> bytes:
        return t.cmd(auth_plain(USER, "wrong-password"))

    def test_three_failed_logins_ban_the_address(self):
        server = self.server(BAN, tls=False)  # 127.0.0.x is trusted: AUTH offered in clear text
        t = self.greeted(server.port, "127.0.0.2")
        self.assert_reply(t, "EHLO bad.example.org", rb"250-")
        self.assertRegex(self.failed_login(t), rb"^535 5\.7\.8 ")
        self.assertRegex(self.failed_login(t), rb"^535 5\.7\.8 ")
        t.close()
        t = self.greeted(server.port, "127.0.0.2")
        self.assert_reply(t, "EHLO bad.example.org", rb"250-")
        third = self.failed_login(t)
        self.assertRegex(third, rb"^421 4\.7\.0 ")
        rest, closed = read_to_eof(t, 5)
        self.assertTrue(closed, "the connection must be closed after the login that starts the ban")
        # The right password comes too late: the address may not even connect now.
        for i in range(5):
            t = self.talk(server.port, "127.0.0.2")
            data, closed = read_to_eof(t, 5)
            self.assertRegex(data, rb"^554 5\.7\.1 [^\r\n]*\r\n$", f"connection {i}")
            self.assertTrue(closed, f"connection {i} from a banned address must be closed")
            t.close()
        # Another address is not affected.
        t = self.greeted(server.port, "127.0.0.3")
        self.assert_reply(t, "EHLO good.example.org", rb"250-")
        self.assert_reply(t, auth_plain(), rb"235 ")
        self.assert_reply(t, "QUIT", rb"221 ")
        # Logged once per ban, not once per attempt or refused connection.
        time.sleep(0.6)  # the mail log is written in batches
        for name, text in (("stderr", server.log_text()),
                           ("maillog.log", (server.data_dir / "logs" / "maillog.log").read_text("utf-8"))):
            ban_lines = [line for line in text.splitlines() if "banned" in line.lower()]
            self.assertEqual(len(ban_lines), 1, f"{name}: {ban_lines}")
            self.assertIn("127.0.0.2", ban_lines[0])
            self.assertNotIn("127.0.0.3", "\n".join(line for line in text.splitlines() if "ban" in line.lower()))

    def test_banned_address_cannot_log_in_on_a_connection_opened_before(self):
        """The ban holds for the address, not only for new connections: a second session opened
        before the ban (a brute-forcer keeps several) gets no more tries, and no login."""
        server = self.server(BAN, tls=False)
        early = self.greeted(server.port, "127.0.0.7")
        self.assert_reply(early, "EHLO bad.example.org", rb"250-")
        t = self.greeted(server.port, "127.0.0.7")
        self.assert_reply(t, "EHLO bad.example.org", rb"250-")
        for _ in range(2):
            self.assertRegex(self.failed_login(t), rb"^535 ")
        self.assertRegex(self.failed_login(t), rb"^421 4\.7\.0 ")  # the ban starts
        # The right password, on the connection that was already open, during the ban:
        answer = early.cmd(auth_plain())
        self.assertNotRegex(answer, rb"^235", "a banned address logged in")
        self.assertRegex(answer, rb"^(421|535|554) ")

    def test_failures_from_several_addresses_do_not_add_up(self):
        server = self.server(BAN, tls=False)
        for source in ("127.0.0.5", "127.0.0.6", "127.0.0.5", "127.0.0.6"):
            t = self.greeted(server.port, source)
            self.assert_reply(t, "EHLO x.example.org", rb"250-")
            self.assertRegex(self.failed_login(t), rb"^535 ")
            t.close()
        # Two failures each: nobody banned; a good login clears the count.
        t = self.greeted(server.port, "127.0.0.5")
        self.assert_reply(t, "EHLO x.example.org", rb"250-")
        self.assert_reply(t, auth_plain(), rb"235 ")
        t.close()
        t = self.greeted(server.port, "127.0.0.5")
        self.assert_reply(t, "EHLO x.example.org", rb"250-")
        self.assertRegex(self.failed_login(t), rb"^535 ")  # 1 since the good login, not 3
        self.greeted(server.port, "127.0.0.6")

    def test_blocked_network_refused_at_connect(self):
        server = self.server({"access": {"blocked": ["127.0.0.4/32", "127.0.9.0/24"]}}, tls=False)
        for source in ("127.0.0.4", "127.0.9.77"):
            with self.subTest(source=source):
                t = self.talk(server.port, source)
                data, closed = read_to_eof(t, 5)
                self.assertRegex(data, rb"^554 5\.7\.1 [^\r\n]*\r\n$")
                self.assertTrue(closed)
        t = self.greeted(server.port, "127.0.0.5")
        self.assert_reply(t, "NOOP", rb"250 ")


# ------------------------------------------------------------------------------ user enumeration
class EnumerationTest(SecurityCase):
    def test_vrfy_and_expn_reveal_nothing(self):
        server = self.server(UNTRUSTED, tls=False)
        t = self.greeted(server.port)
        self.assert_reply(t, "EHLO client.example.org", rb"250-")
        for verb in ("VRFY", "EXPN"):
            with self.subTest(verb=verb):
                answers = {arg: t.cmd(f"{verb} {arg}") for arg in
                           (USER, "user", "nobody-here@example.test", "nobody-here", "postmaster", "root")}
                self.assertEqual(len(set(answers.values())), 1, answers)  # real or not: the same words
                # Neither "yes, that user exists" (250/251) nor "no such user" (550/551/553).
                self.assertRegex(next(iter(answers.values())), rb"^(252|502) [^\r\n]*\r\n$")
                self.assertNotIn(b"example.test", next(iter(answers.values())))

    def test_unknown_recipients_are_tarpitted_after_ten(self):
        server = self.server(UNTRUSTED, tls=False)
        t = self.greeted(server.port)
        self.assert_reply(t, "EHLO harvester.example.org", rb"250-")
        self.assert_reply(t, "MAIL FROM:<h@harvester.example.org>", rb"250 ")
        times = []
        for i in range(1, 14):
            start = time.monotonic()
            self.assert_reply(t, f"RCPT TO:<guess{i:02d}@example.test>", rb"550 5\.1\.1 ")
            times.append(time.monotonic() - start)
        self.assertTrue(all(d < 0.5 for d in times[:10]), f"the first ten must be fast: {times}")
        self.assertTrue(all(d >= 0.9 for d in times[11:]), f"the 12th and later must be slow: {times}")
        # A real recipient still gets its honest answer.
        self.assert_reply(t, f"RCPT TO:<{USER}>", rb"250 ")
        # A new session starts fast again.
        t2 = self.greeted(server.port)
        self.assert_reply(t2, "EHLO other.example.org", rb"250-")
        self.assert_reply(t2, "MAIL FROM:<h@other.example.org>", rb"250 ")
        start = time.monotonic()
        self.assert_reply(t2, "RCPT TO:<guess99@example.test>", rb"550 ")
        self.assertLess(time.monotonic() - start, 0.5)


# -------------------------------------------------------------------------------------------- nmap
NMAP_ENUM_SCRIPT = Path("/usr/share/nmap/scripts/smtp-enum-users.nse")
NMAP_USERNAMES = Path("/usr/share/nmap/nselib/data/usernames.lst")


class NmapTest(SecurityCase):
    def nmap(self, port: int, *args: str) -> subprocess.CompletedProcess:
        nmap = require_program(self, "nmap")
        return run([nmap, "-n", "-Pn", "-p", str(port), *args, "127.0.0.1"], timeout=180)

    def test_nmap_open_relay_enum_users_commands(self):
        server = self.server(UNTRUSTED)
        proc = self.nmap(server.port, "--script", "+smtp-open-relay,+smtp-enum-users,+smtp-commands")
        out = proc.stdout
        self.assertEqual(proc.returncode, 0, self.diagnose(server, proc))
        self.assertIn("smtp-open-relay: Server doesn't seem to be an open relay, all tests failed", out,
                      self.diagnose(server, proc))
        self.assertNotIn("Server is an open relay", out)
        # smtp-commands shows the EHLO keywords.
        m = re.search(r"smtp-commands: (.*)", out)
        self.assertIsNotNone(m, out)
        for keyword in ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS"):
            self.assertIn(keyword, m.group(1))
        self.assertNotIn("AUTH", m.group(1))  # a stranger without TLS is not offered AUTH
        self.assertIn("smtp-enum-users:", out)
        self.assertEqual(self.enumerated(out), [], out)
        self.assertEqual(queue_entries(server.data_dir), {})
        self.assertEqual(server.count(USER), 0)

    def test_nmap_enum_users_vrfy_expn_on_the_local_domain(self):
        """Aimed at example.test, where user@ and root@ exist: VRFY and EXPN find no one."""
        server = self.server(UNTRUSTED, tls=False)
        proc = self.nmap(server.port, "--script", "+smtp-enum-users", "--script-args",
                         "smtp-enum-users.domain=example.test,smtp-enum-users.methods={VRFY,EXPN}")
        self.assertEqual(proc.returncode, 0, self.diagnose(server, proc))
        # The wording of nmap 7.9x's smtp-enum-users.nse when nothing was found.
        if NMAP_ENUM_SCRIPT.is_file():
            self.assertIn("Couldn't find any accounts", NMAP_ENUM_SCRIPT.read_text(errors="replace"))
        self.assertIn("Couldn't find any accounts", proc.stdout, self.diagnose(server, proc))
        self.assertEqual(self.enumerated(proc.stdout), [])

    def enumerated(self, out: str) -> list[str]:
        """User names nmap's smtp-enum-users reported as found."""
        names = {"root", "admin", "administrator", "webadmin", "sysadmin", "netadmin", "guest",
                 "user", "web", "test"}
        if NMAP_USERNAMES.is_file():
            names |= {n.strip() for n in NMAP_USERNAMES.read_text(errors="replace").splitlines()
                      if n.strip() and not n.startswith("#")}
        block = out[out.index("smtp-enum-users:"):] if "smtp-enum-users:" in out else ""
        found = []
        for line in block.splitlines()[1:]:
            if not line.startswith("|"):
                break
            word = line.lstrip("|_ ").strip()
            if word.split(",")[-1].strip() in names:
                found.append(word)
        return found


if __name__ == "__main__":
    unittest.main()
