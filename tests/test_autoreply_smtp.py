"""Auto-replies as they leave ISMail (issue 14): real messages into a real MailServer, the
reply read back from the outgoing queue (null sender, RFC 3834 headers) or a local Maildir."""
import datetime
import email
import email.policy
import unittest

from ismail.store.autoreply import AutoReply
from tests.support import ServerProcess, cli
from tests.test_session import SessionTestCase

DOMAINS = {"example.test", "other.test"}


def message(to="ann@example.test", sender="friend@elsewhere.example", extra=""):
    return (f"From: Friend <{sender}>\r\nTo: <{to}>\r\nSubject: lunch?\r\n"
            f"Message-ID: <m1@elsewhere.example>\r\nDate: Fri, 4 Dec 2026 10:00:00 +0000\r\n"
            f"{extra}\r\nAre you free?\r\n").encode()


class AutoReplySmtpTest(SessionTestCase):
    def setUp(self):
        super().setUp()
        self.server.accounts.add("ann@example.test", "pw", self.config.local_domains())
        self.server.autoreplies.reload_interval = 0
        self.server.autoreplies.set(AutoReply("ann@example.test", "Out of office",
                                              "I am away until Monday.", days=7))

    def send(self, data, rcpt="ann@example.test", sender="friend@elsewhere.example"):
        s = self.session()
        s.feed(b"EHLO mx.elsewhere.example\r\n")
        self.assertTrue(s.feed(f"MAIL FROM:<{sender}>\r\n".encode()).startswith(b"250"))
        self.assertTrue(s.feed(f"RCPT TO:<{rcpt}>\r\n".encode()).startswith(b"250"))
        self.assertTrue(s.feed(b"DATA\r\n").startswith(b"354"))
        self.assertTrue(s.feed(data + b".\r\n").startswith(b"250"))

    def replies(self):
        out = []
        for entry, data in self.queued():
            msg = email.message_from_bytes(data, policy=email.policy.default)
            out.append((entry["sender"], [r["address"] for r in entry["recipients"]], msg))
        return out

    def test_a_reply_goes_back_from_the_null_sender_once_per_sender(self):
        self.send(message())
        [(sender, rcpts, msg)] = self.replies()
        self.assertEqual((sender, rcpts), ("", ["friend@elsewhere.example"]))
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        self.assertEqual(msg["Subject"], "Out of office")
        self.assertEqual(msg["In-Reply-To"], "<m1@elsewhere.example>")
        self.assertIn("ann@example.test", msg["From"])
        self.assertIn("I am away until Monday.", msg.get_content())
        self.send(message())  # the same sender again within 7 days: no second reply
        self.assertEqual(len(self.replies()), 1)
        self.assertEqual(len(self.maildir("ann")), 2)  # the mail itself is stored each time

    def test_no_reply_to_lists_bulk_auto_submitted_or_null_senders(self):
        for n, extra in enumerate(["List-Id: <cooks.lists.example>\r\n", "Precedence: bulk\r\n",
                                   "Auto-Submitted: auto-generated\r\n"]):
            self.send(message(sender=f"s{n}@elsewhere.example", extra=extra),
                      sender=f"s{n}@elsewhere.example")
        self.send(message(sender="mailer-daemon@elsewhere.example"), sender="")
        self.assertEqual(self.replies(), [])
        self.assertEqual(len(self.maildir("ann")), 4)

    def test_no_reply_when_the_account_is_only_bcc(self):
        self.send(message(to="someone-else@elsewhere.example"))
        self.assertEqual(self.replies(), [])

    def test_mail_through_an_alias_is_answered_when_the_alias_is_in_to(self):
        self.server.addresses.reload_interval = 0
        accounts = {i.address for i in self.server.accounts.list(DOMAINS)}
        self.server.addresses.set_alias("info@example.test", ["ann@example.test"], accounts=accounts,
                                        local_domains=DOMAINS)
        self.send(message(to="info@example.test"), rcpt="info@example.test")
        [(_, rcpts, _)] = self.replies()
        self.assertEqual(rcpts, ["friend@elsewhere.example"])

    def test_outside_its_dates_it_is_silent(self):
        tomorrow = datetime.date.today() + datetime.timedelta(days=1)
        self.server.autoreplies.set(AutoReply("ann@example.test", "Away", "Later.", start=tomorrow))
        self.send(message())
        self.assertEqual(self.replies(), [])

    def test_a_local_sender_gets_the_reply_in_its_mailbox(self):
        self.send(message(sender="user@example.test"), sender="user@example.test")
        [reply] = list(self.maildir("user"))
        self.assertEqual(reply["Auto-Submitted"], "auto-replied")
        self.assertEqual(reply["Return-Path"], "<>")


class AutoReplyCliTest(unittest.TestCase):
    def test_cli_sets_it_and_the_running_server_answers(self):
        server = ServerProcess(accounts=("user@example.test", "ann@example.test"))
        self.addCleanup(server.cleanup)
        server.start()
        r = cli(server.data_dir, "account", "autoreply", "ann@example.test", "--subject", "Away",
                "--body", "Back soon.")
        self.assertEqual(r.returncode, 0, r.stderr)
        import smtplib
        import time
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as s:
                s.sendmail("user@example.test", ["ann@example.test"],
                           message(sender="user@example.test").replace(b"m1@", f"{time.time()}@".encode()))
            replies = [p for sub in ("new", "cur") for p in (server.maildir() / sub).glob("*")]
            if replies:
                break
            time.sleep(0.5)
        self.assertEqual(len(replies), 1)
        self.assertIn(b"Auto-Submitted: auto-replied", replies[0].read_bytes())
        shown = cli(server.data_dir, "account", "autoreply", "ann@example.test")
        self.assertIn("Subject: Away", shown.stdout)


if __name__ == "__main__":
    unittest.main()
