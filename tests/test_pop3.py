"""POP3 end to end: a real ISMail process, mail sent in over SMTP, read back with poplib.

What a user of a mail program would check: every message comes down byte for byte as it
was sent (after the two trace headers ISMail adds on delivery, listed in support.ADDED_HEADERS),
the UIDL of a message never changes, DELE deletes only at QUIT, a second session on the
same mailbox is refused with [IN-USE], mail that arrives during a session waits for the
next one, plaintext logins need TLS unless the client is trusted, and failed POP3 logins
count towards the same ban as SMTP AUTH failures.
"""
from __future__ import annotations

import base64
import os
import poplib
import smtplib
import socket
import time
import unittest
from pathlib import Path

from tests.security_support import PASSWORD, USER, SelfSignedCertificate, tls_client_context
from tests.support import SMTPTalk, ServerProcess, free_port, without_trace


SAMPLES = [
    # An ordinary message.
    b"From: a@remote.test\r\nTo: user@example.test\r\nSubject: one\r\n\r\nHello.\r\n",
    # Lines that start with a dot, one that is only a dot-space, and a CRLF-only line.
    b"From: a@remote.test\r\nSubject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n. \r\n\r\nend\r\n",
    # 8-bit text, a long body and a last line without a final CRLF in the original... SMTP
    # always ends the text with CRLF, so it is complete.
    "From: a@remote.test\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n\r\nGrüße aus Köln\r\n".encode()
    + b"".join(b"line %05d " % i + b"x" * 60 + b"\r\n" for i in range(3000)),
]


def smtp_send(port: int, message: bytes, rcpt: str = USER) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("a@remote.test", [rcpt], message)


def pop(port: int, source: str | None = None) -> poplib.POP3:
    conn = poplib.POP3("127.0.0.1", port, timeout=30) if source is None else _pop_from(port, source)
    return conn


def _pop_from(port: int, source: str) -> poplib.POP3:
    # poplib has no source address: connect the socket ourselves and hand it over.
    class Bound(poplib.POP3):
        def _create_socket(self, timeout):
            return socket.create_connection((self.host, self.port), timeout, source_address=(source, 0))
    return Bound("127.0.0.1", port, timeout=30)


def logged_in(port: int) -> poplib.POP3:
    p = pop(port)
    p.user(USER)
    p.pass_(PASSWORD)
    return p


def text_of(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


class Pop3Case(unittest.TestCase):
    """One running server per test class (starting one costs a second)."""

    settings: dict = {}

    @classmethod
    def setUpClass(cls) -> None:
        cls.cert = SelfSignedCertificate(cls())
        cls.addClassCleanup(cls.cert.remove)
        cls.server = ServerProcess({**cls.cert.settings(), **cls.settings})
        cls.addClassCleanup(cls.server.cleanup)
        cls.server.start()
        cls.port = cls.server.pop3_port

    def setUp(self) -> None:
        self.empty_mailbox()

    def empty_mailbox(self) -> None:
        box = self.server.maildir()
        for sub in ("new", "cur"):
            for f in (box / sub).glob("*") if (box / sub).is_dir() else []:
                f.unlink()

    def deliver(self, *messages: bytes) -> None:
        for m in messages:
            smtp_send(self.server.port, m)

    def files(self) -> list[Path]:
        box = self.server.maildir()
        return sorted(p for sub in ("new", "cur") for p in (box / sub).glob("*"))


class DownloadTest(Pop3Case):
    def test_every_message_comes_down_byte_for_byte(self):
        self.deliver(*SAMPLES)
        p = logged_in(self.port)
        try:
            count, total = p.stat()
            self.assertEqual(count, len(SAMPLES))
            sizes = [int(line.split()[1]) for line in p.list()[1]]
            self.assertEqual(sum(sizes), total)
            for n, original in enumerate(SAMPLES, 1):
                resp, lines, octets = p.retr(n)
                full = text_of(lines)
                self.assertEqual(without_trace(full), original, f"message {n} changed")
                # LIST's size is the exact size of the message as sent (RFC 1939 §11).
                self.assertEqual(len(full), sizes[n - 1])
                self.assertTrue(full.startswith(b"Return-Path: <a@remote.test>\r\n"
                                            b"Authentication-Results: mx.example.test; none\r\nReceived: "))
        finally:
            p.quit()

    def test_top_gives_the_header_and_so_many_body_lines(self):
        self.deliver(SAMPLES[2])
        p = logged_in(self.port)
        try:
            header, _, body = without_trace(text_of(p.retr(1)[1])).partition(b"\r\n\r\n")
            for n in (0, 1, 5):
                lines = p.top(1, n)[1]
                got = without_trace(text_of(lines))
                want_body = b"".join(l + b"\r\n" for l in body.split(b"\r\n")[:n])
                self.assertEqual(got, header + b"\r\n\r\n" + want_body, f"TOP 1 {n}")
        finally:
            p.quit()

    def test_uidl_is_the_maildir_name_and_never_changes(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        p = logged_in(self.port)
        first = [line.split()[1] for line in p.uidl()[1]]
        self.assertEqual(len(set(first)), 2)
        p.retr(1)
        p.quit()
        # RETR marked it seen: it moved to cur/ with the S flag, under the same unique name.
        seen = [f for f in self.files() if f.parent.name == "cur"]
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen[0].name.endswith(":2,S"), seen[0].name)
        self.assertEqual(seen[0].name.split(",")[0].split(":")[0].encode(), first[0])
        p = logged_in(self.port)
        try:
            self.assertEqual([line.split()[1] for line in p.uidl()[1]], first)
            self.assertEqual(p.uidl(2).split()[2], first[1])
        finally:
            p.quit()

    def test_mail_arriving_during_a_session_waits_for_the_next_one(self):
        self.deliver(SAMPLES[0])
        p = logged_in(self.port)
        self.assertEqual(p.stat()[0], 1)
        self.deliver(SAMPLES[1])
        self.assertEqual(p.stat()[0], 1, "a session sees the maildrop as it was at login")
        p.dele(1)
        p.quit()
        p = logged_in(self.port)
        try:
            self.assertEqual(p.stat()[0], 1)
            self.assertEqual(without_trace(text_of(p.retr(1)[1])), SAMPLES[1])
        finally:
            p.quit()

    def test_the_mail_log_records_the_session(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        p = logged_in(self.port)
        p.retr(1)
        p.dele(2)
        p.quit()
        log = self.server.data_dir / "logs" / "maillog.log"

        def lines() -> list[str]:  # other tests of this class log sessions too, none like this one
            return [l for l in log.read_text().splitlines()
                    if "pop3 connection from 127.0.0.1" in l and "retrieved=1 deleted=1" in l]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not lines():
            time.sleep(0.05)
        self.assertEqual(len(lines()), 1, log.read_text()[-2000:])
        line = lines()[0]
        self.assertIn(USER, line)
        self.assertIn("retrieved=1", line)
        self.assertRegex(line, r"bytes=\d{3,}")


class DeleteTest(Pop3Case):
    def test_dele_deletes_only_at_quit(self):
        self.deliver(SAMPLES[0], SAMPLES[1], SAMPLES[0])
        p = logged_in(self.port)
        p.dele(2)
        self.assertEqual(len(self.files()), 3, "nothing is deleted before QUIT")
        # A deleted message is gone from STAT, LIST and UIDL, and cannot be read.
        self.assertEqual(p.stat()[0], 2)
        self.assertEqual([l.split()[0] for l in p.list()[1]], [b"1", b"3"])
        self.assertEqual([l.split()[0] for l in p.uidl()[1]], [b"1", b"3"])
        with self.assertRaisesRegex(poplib.error_proto, "deleted"):
            p.retr(2)
        self.assertTrue(p.quit().startswith(b"+OK"))
        self.assertEqual(len(self.files()), 2)

    def test_rset_undoes_dele(self):
        self.deliver(SAMPLES[0])
        p = logged_in(self.port)
        p.dele(1)
        p.rset()
        self.assertEqual(p.stat()[0], 1)
        p.quit()
        self.assertEqual(len(self.files()), 1)

    def test_a_dropped_connection_deletes_nothing(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        p = logged_in(self.port)
        p.dele(1)
        p.dele(2)
        p.file.close()  # no QUIT: the session never reaches the UPDATE state
        p.sock.close()
        time.sleep(0.3)
        self.assertEqual(len(self.files()), 2)
        p = logged_in(self.port)  # and the mailbox is free again
        try:
            self.assertEqual(p.stat()[0], 2)
        finally:
            p.quit()


class RememberedListingTest(Pop3Case):
    def age_folders(self) -> None:
        past = time.time() - 60
        for sub in ("new", "cur"):
            (self.server.maildir() / sub).mkdir(parents=True, exist_ok=True)
            os.utime(self.server.maildir() / sub, (past, past))

    def listing(self, p: poplib.POP3) -> tuple[list[bytes], list[bytes]]:
        return p.list()[1], p.uidl()[1]

    def test_list_and_uidl_stay_true_when_the_mailbox_is_remembered(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        self.age_folders()
        p = logged_in(self.port)
        first = self.listing(p)
        p.quit()
        p = logged_in(self.port)
        self.assertEqual(self.listing(p), first)
        p.dele(1)  # marks: the answers are made afresh, without message 1
        self.assertEqual([l.split()[0] for l in p.list()[1]], [b"2"])
        self.assertEqual(p.uidl()[1], first[1][1:])
        p.rset()
        self.assertEqual(self.listing(p), first)
        p.quit()
        self.deliver(SAMPLES[0])
        p = logged_in(self.port)
        try:
            lists, uidls = self.listing(p)
            self.assertEqual(len(lists), 3, "a delivery after the remembered listing is seen")
            self.assertEqual(uidls[:2], first[1])
        finally:
            p.quit()


class LockTest(Pop3Case):
    def test_a_second_session_gets_in_use_until_the_first_quits(self):
        self.deliver(SAMPLES[0])
        first = logged_in(self.port)
        second = pop(self.port)
        second.user(USER)
        with self.assertRaisesRegex(poplib.error_proto, r"\[IN-USE\]"):
            second.pass_(PASSWORD)
        first.quit()
        second.user(USER)  # the refused session stays in AUTHORIZATION and may try again
        second.pass_(PASSWORD)
        self.assertEqual(second.stat()[0], 1)
        second.quit()


class ErrorTest(Pop3Case):
    def raw(self) -> SMTPTalk:
        t = SMTPTalk(self.port)
        self.addCleanup(t.close)
        self.assertTrue(t.reply().startswith(b"+OK"))
        return t

    def test_commands_before_login_are_refused_and_the_session_goes_on(self):
        t = self.raw()
        for cmd in ("STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 1", "RSET"):
            self.assertTrue(t.cmd(cmd).startswith(b"-ERR"), cmd)
        self.assertTrue(t.cmd("NOOP").startswith(b"-ERR"))
        self.assertTrue(t.cmd("CAPA").startswith(b"+OK"))

    def test_bad_arguments_get_err_with_a_reason(self):
        self.deliver(SAMPLES[0])
        t = self.raw()
        t.cmd(f"USER {USER}")
        self.assertTrue(t.cmd(f"PASS {PASSWORD}").startswith(b"+OK"))
        for cmd in ("RETR 0", "RETR 2", "RETR x", "RETR", "LIST 1 2", "DELE -1", "TOP 1",
                    "TOP 1 x", "UIDL 99", "XYZZY", "APOP user 0123456789abcdef0123456789abcdef"):
            answer = t.cmd(cmd)
            self.assertTrue(answer.startswith(b"-ERR "), f"{cmd}: {answer!r}")
            self.assertGreater(len(answer.strip()), len(b"-ERR "), f"{cmd}: no reason given")
        self.assertTrue(t.cmd("STAT").startswith(b"+OK 1 "), "the session goes on after errors")
        t.cmd("QUIT")

    def test_an_overlong_line_is_refused_and_the_session_goes_on(self):
        t = self.raw()
        self.assertTrue(t.cmd("NOOP " + "x" * 400).startswith(b"-ERR"))
        self.assertTrue(t.cmd("CAPA").startswith(b"+OK"))

    def test_twenty_errors_end_the_session(self):
        t = self.raw()
        answers = [t.cmd("BOGUS") for _ in range(20)]
        self.assertTrue(all(a.startswith(b"-ERR") for a in answers))
        t.sock.settimeout(5)
        self.assertEqual(t.sock.recv(100), b"", "the server hangs up after 20 errors")

    def test_wrong_password_is_refused(self):
        p = pop(self.port)
        p.user(USER)
        with self.assertRaisesRegex(poplib.error_proto, r"\[AUTH\]"):
            p.pass_("wrong")
        p.quit()

    def test_capa_lists_the_extensions(self):
        p = pop(self.port)
        try:
            caps = p.capa()
        finally:
            p.quit()
        for cap in ("TOP", "UIDL", "RESP-CODES", "PIPELINING", "USER", "STLS", "SASL"):
            self.assertIn(cap, caps)
        self.assertIn("PLAIN", caps["SASL"])


class AuthPlainTest(Pop3Case):
    def test_auth_plain_with_initial_response_and_with_a_continuation(self):
        self.deliver(SAMPLES[0])
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        t = SMTPTalk(self.port)
        self.addCleanup(t.close)
        t.reply()
        self.assertTrue(t.cmd(f"AUTH PLAIN {token}").startswith(b"+OK"))
        self.assertTrue(t.cmd("STAT").startswith(b"+OK 1 "))
        t.cmd("QUIT")
        t = SMTPTalk(self.port)
        self.addCleanup(t.close)
        t.reply()
        self.assertTrue(t.cmd("AUTH PLAIN").startswith(b"+ "))
        self.assertTrue(t.cmd(token).startswith(b"+OK"))
        t.cmd("QUIT")


class PlaintextTest(Pop3Case):
    """A client that is not in trusted_networks must use TLS before it sends a password."""

    settings = {"trusted_networks": ["127.0.0.1/32"]}

    def test_untrusted_client_must_use_stls_first(self):
        self.deliver(SAMPLES[0])
        p = pop(self.port, source="127.0.0.2")
        try:
            self.assertNotIn("USER", p.capa())
            with self.assertRaises(poplib.error_proto):
                p.user(USER)
            p.stls(context=tls_client_context())
            self.assertNotIn("STLS", p.capa())
            p.user(USER)
            p.pass_(PASSWORD)
            self.assertEqual(p.stat()[0], 1)
        finally:
            p.quit()

    def test_trusted_client_may_log_in_without_tls(self):
        p = logged_in(self.port)  # from 127.0.0.1
        p.quit()


class ImplicitTLSTest(unittest.TestCase):
    def test_pop3s_listener(self):
        cert = SelfSignedCertificate(self)
        self.addCleanup(cert.remove)
        port = free_port()
        server = ServerProcess({**cert.settings(), "pop3": {"listen": [f"127.0.0.1:{port} tls"]}})
        self.addCleanup(server.cleanup)
        server.start()
        smtp_send(server.port, SAMPLES[0])
        p = poplib.POP3_SSL("127.0.0.1", port, context=tls_client_context(), timeout=30)
        try:
            p.user(USER)
            p.pass_(PASSWORD)
            self.assertEqual(without_trace(text_of(p.retr(1)[1])), SAMPLES[0])
        finally:
            p.quit()


class SharedBanTest(unittest.TestCase):
    def test_three_failed_pop3_logins_ban_the_address_for_smtp_too(self):
        server = ServerProcess()
        self.addCleanup(server.cleanup)
        server.start()
        for _ in range(3):
            p = pop(server.pop3_port, source="127.0.0.3")
            p.user(USER)
            try:
                p.pass_("wrong")
            except poplib.error_proto:
                pass
            try:
                p.quit()
            except (poplib.error_proto, OSError):
                pass  # the third failure ends the session
        with SMTPTalk(server.port, source="127.0.0.3") as t:
            self.assertTrue(t.reply().startswith(b"554"), "SMTP refuses the banned address")
        with SMTPTalk(server.pop3_port, source="127.0.0.3") as t:
            self.assertTrue(t.reply().startswith(b"-ERR"), "and so does POP3")
        with SMTPTalk(server.port, source="127.0.0.4") as t:
            self.assertTrue(t.reply().startswith(b"220"), "other addresses are not banned")


if __name__ == "__main__":
    unittest.main()
