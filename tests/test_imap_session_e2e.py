"""IMAP end to end: Python's imaplib against a real ``python3 -m ismail run`` over loopback.

Loopback is not a trusted network here, so a password needs TLS first: the client sees
LOGINDISABLED, upgrades with STARTTLS (a self-signed certificate made by openssl) and
logs in.  Mail arrives over SMTP (smtplib), as it does in real life; IDLE must report
it within 2 seconds.
"""
from __future__ import annotations

import imaplib
import re
import smtplib
import socket
import time
import unittest

from tests.security_support import PASSWORD, USER, SelfSignedCertificate, tls_client_context
from tests.support import ServerProcess

MESSAGE = b"From: a@remote.test\r\nTo: user@example.test\r\nSubject: e2e\r\n\r\nHello over IMAP.\r\n"


class ImapClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.cert = SelfSignedCertificate(cls())
        cls.addClassCleanup(cls.cert.remove)
        cls.server = ServerProcess({**cls.cert.settings(), "trusted_networks": ["192.0.2.0/24"],
                                    "max_message_size_mb": 1})
        cls.addClassCleanup(cls.server.cleanup)
        cls.server.start()

    def setUp(self) -> None:
        self.connections: list[imaplib.IMAP4] = []

    def tearDown(self) -> None:
        for m in self.connections:
            try:
                m.logout()
            except (imaplib.IMAP4.error, OSError):
                pass

    def connect(self, login: bool = True) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.server.imap_port, timeout=30)
        self.connections.append(m)
        m.starttls(tls_client_context())
        if login:
            m.login(USER, PASSWORD)
        return m

    def deliver(self, count: int = 1) -> None:
        with smtplib.SMTP("127.0.0.1", self.server.port, timeout=30) as s:
            for _ in range(count):
                s.sendmail("a@remote.test", [USER], MESSAGE)

    def clear_inbox(self) -> None:
        m = self.connect()
        m.select("INBOX")
        m.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
        m.expunge()
        m.logout()
        self.connections.remove(m)

    def test_plaintext_refused_until_starttls(self):
        m = imaplib.IMAP4("127.0.0.1", self.server.imap_port, timeout=30)
        self.connections.append(m)
        self.assertIn("LOGINDISABLED", m.capabilities)
        self.assertIn("STARTTLS", m.capabilities)
        with self.assertRaisesRegex(imaplib.IMAP4.error, "PRIVACYREQUIRED"):
            m.login(USER, PASSWORD)
        m.starttls(tls_client_context())
        self.assertIn("AUTH=PLAIN", m.capabilities)
        self.assertNotIn("LOGINDISABLED", m.capabilities)
        self.assertEqual(m.login(USER, PASSWORD)[0], "OK")

    def test_a_mail_client_session(self):
        self.clear_inbox()
        self.deliver(2)
        m = self.connect()
        typ, listing = m.list()
        self.assertEqual(typ, "OK")
        names = {re.search(rb'"/" "?([^"]*)"?$', line).group(1): line for line in listing}
        self.assertIn(b"\\Sent", names[b"Sent"])
        self.assertIn(b"\\Trash", names[b"Trash"])
        typ, data = m.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"2"]))
        typ, data = m.fetch("1:2", "(FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])")
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0][1], b"Subject: e2e\r\n\r\n")
        typ, data = m.fetch("1", "(BODY[TEXT])")
        self.assertEqual(data[0][1], b"Hello over IMAP.\r\n")
        self.assertEqual(m.search(None, "SEEN"), ("OK", [b"1"]))
        typ, data = m.append("Drafts", "(\\Draft)", imaplib.Time2Internaldate(time.time()), MESSAGE)
        self.assertEqual(typ, "OK")
        self.assertRegex(data[0], rb"^\[APPENDUID \d+ \d+\] APPEND completed")
        typ, data = m.copy("1:2", "Trash")
        self.assertRegex(data[0], rb"^\[COPYUID \d+ \d+:\d+ \d+:\d+\]")
        typ, data = m.uid("MOVE", "1:*", "Junk")
        self.assertEqual(typ, "OK")
        self.assertEqual(m.select("INBOX")[1], [b"0"])
        self.assertEqual(m.status("Junk", "(MESSAGES)")[1], [b'"Junk" (MESSAGES 2)'])
        m.select("Junk")
        m.store("1", "+FLAGS", "(\\Deleted)")
        self.assertEqual(m.expunge(), ("OK", [b"1"]))
        self.assertEqual(m.create("Projects/2024")[0], "OK")
        self.assertEqual(m.rename("Projects", "Archive")[0], "OK")
        self.assertIn(b'"Archive/2024"', b"".join(m.list('""', "Archive/*")[1]))

    def test_idle_reports_new_mail_within_two_seconds(self):
        self.clear_inbox()
        m = self.connect()
        m.select("INBOX")
        m.send(b"i1 IDLE\r\n")
        self.assertEqual(m.readline(), b"+ idling\r\n")
        time.sleep(1.5)   # IDLE has been quiet for a while when the mail comes
        self.deliver()
        delivered = time.monotonic()
        m.sock.settimeout(10)
        line = m.readline()
        waited = time.monotonic() - delivered
        self.assertEqual(line, b"* 1 EXISTS\r\n")
        self.assertLess(waited, 2.0, f"IDLE took {waited:.2f}s to report the new mail")
        print(f"\n  IDLE reported the SMTP delivery after {waited:.2f}s", flush=True)
        m.send(b"DONE\r\n")
        lines = [m.readline() for _ in range(2)]
        self.assertEqual(lines[-1], b"i1 OK IDLE terminated\r\n")

    def test_two_connections_see_each_others_changes(self):
        self.clear_inbox()
        self.deliver(3)
        a, b = self.connect(), self.connect()
        a.select("INBOX")
        b.select("INBOX")
        b.store("2", "+FLAGS", "(\\Deleted)")
        b.expunge()
        a.untagged_responses.clear()
        a.noop()
        self.assertEqual(a.untagged_responses.get("EXPUNGE"), [b"2"])
        self.deliver()
        a.untagged_responses.clear()
        a.noop()
        self.assertEqual(a.untagged_responses.get("EXISTS"), [b"3"])

    def test_message_over_the_limit_is_refused_before_it_is_sent(self):
        m = self.connect()
        big = b"Subject: big\r\n\r\n" + b"x" * (1024 * 1024 + 10)
        typ, data = m.append("INBOX", None, None, big)
        self.assertEqual(typ, "NO")
        self.assertRegex(data[0], rb"^\[TOOBIG\] ")
        self.assertEqual(m.noop()[0], "OK", "the session goes on")

    def test_garbage_gets_bad_and_the_connection_goes_on(self):
        m = self.connect()
        m.send(b"x1 FROB\r\n")
        self.assertEqual(m.readline(), b"x1 BAD unknown command FROB\r\n")
        self.assertEqual(m.noop()[0], "OK")

    def test_logout_says_bye(self):
        m = self.connect()
        self.connections.remove(m)
        self.assertEqual(m.logout()[0], "BYE")
        with self.assertRaises((OSError, imaplib.IMAP4.abort, socket.timeout)):
            m.noop()


if __name__ == "__main__":
    unittest.main()
