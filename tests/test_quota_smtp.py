"""Quotas as senders and mail programs meet them (issue 14).

In process: an SMTP session against a real MailServer (Maildirs on disk): 452 4.2.2 at RCPT
when SIZE says it will not fit, 552 5.2.2 after DATA otherwise, a report to the sender when
only some recipients were full, one warning at 90 %.  End to end: `ismail account quota`,
then Python's imaplib (GETQUOTAROOT) and poplib (the login reply) against a running server.
"""
import email
import email.policy
import imaplib
import poplib
import unittest

from tests.support import ServerProcess, cli
from tests.test_session import SessionTestCase

MB = 1024 * 1024


class QuotaSmtpTest(SessionTestCase):
    def setUp(self):
        super().setUp()
        for user in ("ann", "bob"):
            self.server.accounts.add(f"{user}@example.test", "pw", self.config.local_domains())
        self.server.accounts.set_quota("ann@example.test", 1)  # 1 MB
        self.server.accounts.maybe_reload()

    def fill(self, user: str, nbytes: int) -> None:
        """Mail already in the mailbox (a file of nbytes in cur/)."""
        box = self.dir / "mailboxes" / "example.test" / user / "cur"
        box.mkdir(parents=True, exist_ok=True)
        (box / f"1700000000.M{nbytes}P1.host,S={nbytes}:2,S").write_bytes(b"x" * nbytes)
        self.server.aftercare.quota.changed(box.parent)

    def send(self, rcpts, size_param=None, body_bytes=1000, sender="user@example.test"):
        s = self.session(trusted=True)
        s.feed(b"EHLO c.example\r\n")
        mail = f"MAIL FROM:<{sender}>" + (f" SIZE={size_param}" if size_param else "")
        self.assertTrue(s.feed(mail.encode() + b"\r\n").startswith(b"250"))
        answers = [s.feed(f"RCPT TO:<{r}>\r\n".encode()) for r in rcpts]
        if not any(a.startswith(b"250") for a in answers):
            return answers, b""
        self.assertTrue(s.feed(b"DATA\r\n").startswith(b"354"))
        text = b"Subject: quota\r\n\r\n" + (b"y" * 70 + b"\r\n") * (body_bytes // 72 + 1)
        return answers, s.feed(text + b".\r\n")

    def test_declared_size_that_does_not_fit_gets_452_4_2_2_at_rcpt(self):
        self.fill("ann", 900 * 1024)
        answers, _ = self.send(["ann@example.test"], size_param=200 * 1024)
        self.assertTrue(answers[0].startswith(b"452 4.2.2"), answers)
        answers, final = self.send(["ann@example.test"], size_param=50 * 1024, body_bytes=50 * 1024)
        self.assertTrue(final.startswith(b"250"), final)

    def test_undeclared_size_is_refused_after_data_with_552_5_2_2_and_nothing_stored(self):
        self.fill("ann", MB - 500)
        answers, final = self.send(["ann@example.test"], body_bytes=2000)
        self.assertTrue(answers[0].startswith(b"250"))
        self.assertTrue(final.startswith(b"552 5.2.2"), final)
        self.assertEqual(len(self.maildir("ann")), 1)  # only the filler

    def test_one_full_recipient_does_not_stop_the_others_and_the_sender_is_told(self):
        self.fill("ann", MB - 500)
        _, final = self.send(["ann@example.test", "bob@example.test"], body_bytes=2000)
        self.assertTrue(final.startswith(b"250"), final)
        self.assertEqual((len(self.maildir("ann")), len(self.maildir("bob"))), (1, 1))
        [report] = [m for m in self.maildir("user")]
        dsn = email.message_from_bytes(report.as_bytes(), policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        status = dsn.get_payload()[1].as_string()
        self.assertIn("Final-Recipient: rfc822; ann@example.test", status)
        self.assertIn("Status: 5.2.2", status)

    def test_a_warning_at_90_percent_once(self):
        self.fill("ann", 850 * 1024)
        for _ in range(3):
            _, final = self.send(["ann@example.test"], body_bytes=40 * 1024)
            self.assertTrue(final.startswith(b"250"), final)
        warnings = [m for m in self.maildir("ann") if "90 %" in (m["Subject"] or "")]
        self.assertEqual(len(warnings), 1, [m["Subject"] for m in self.maildir("ann")])
        self.assertEqual(warnings[0]["Auto-Submitted"], "auto-generated")

    def test_accounts_without_a_quota_take_anything(self):
        answers, final = self.send(["bob@example.test"], size_param=40 * MB, body_bytes=3 * MB)
        self.assertTrue(answers[0].startswith(b"250"))
        self.assertTrue(final.startswith(b"250"), final)


class QuotaClientsTest(unittest.TestCase):
    def test_imap_getquotaroot_and_pop3_login_report_the_quota(self):
        server = ServerProcess(accounts=("user@example.test",))
        self.addCleanup(server.cleanup)
        r = cli(server.data_dir, "account", "quota", "user@example.test", "10")
        self.assertEqual(r.returncode, 0, r.stderr)
        box = server.maildir() / "cur"
        box.mkdir(parents=True, exist_ok=True)
        (box / "1700000000.M1P1.host,S=2097152:2,S").write_bytes(b"x" * 2097152)
        server.start()
        with imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=20) as imap:
            self.assertIn("QUOTA", imap.capabilities)
            imap.login("user@example.test", "secret-pw")
            typ, data = imap.getquotaroot("INBOX")
            self.assertEqual(typ, "OK", data)
            roots, quotas = data  # imaplib: [QUOTAROOT lines], [QUOTA lines]
            self.assertEqual(roots, [b'"INBOX" ""'])
            self.assertEqual(quotas, [b'"" (STORAGE 2048 10240)'])
        pop = poplib.POP3("127.0.0.1", server.pop3_port, timeout=20)
        try:
            pop.user("user@example.test")
            answer = pop.pass_("secret-pw")
            self.assertIn(b"2 MB of 10 MB used (20 %)", answer)
        finally:
            pop.quit()


if __name__ == "__main__":
    unittest.main()
