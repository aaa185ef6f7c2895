"""A message another server sends twice (it lost our 250) is stored once (store/dedupe.py)."""
import os
import unittest

from ismail.service import MailServer
from ismail.store.dedupe import FILE_NAME, DuplicateFilter, top_received
from tests.test_session import SessionTestCase

RELAYED = (b"Received: from mx2.example.org ([192.0.2.7])\r\n"
           b"\tby mx2.example.org (Postfix) with ESMTP id 4Xy7Zk1abc; Fri, 4 Dec 2026 10:00:00 +0000\r\n"
           b"From: a@example.org\r\nTo: user@example.test\r\nSubject: held by the backup\r\n\r\ntext\r\n")


class DuplicateTest(SessionTestCase):
    def setUp(self):
        super().setUp()
        self.server.duplicates.load()
        self.addCleanup(self.server.duplicates.close)

    def send(self, message: bytes, rcpts=("user@example.test",), server=None) -> bytes:
        from ismail.smtp.policy import Policy
        from ismail.smtp.session import Session
        server = server or self.server
        s = Session(server, Policy(self.config), "192.0.2.7", trusted=False)
        s.feed(b"EHLO mx2.example.org\r\nMAIL FROM:<a@example.org>\r\n")
        for r in rcpts:
            self.assertTrue(s.feed(f"RCPT TO:<{r}>\r\n".encode()).startswith(b"250"))
        self.assertTrue(s.feed(b"DATA\r\n").startswith(b"354"))
        return s.feed(message + b".\r\n")

    def test_a_retransmission_is_acknowledged_and_stored_once(self):
        self.assertTrue(self.send(RELAYED).startswith(b"250"))
        self.assertTrue(self.send(RELAYED).startswith(b"250"))  # the sender must stop sending it
        self.assertEqual(len(self.maildir()), 1)
        self.assertEqual(self.server.stats.get("duplicates_suppressed"), 1)

    def test_a_different_message_from_the_same_hop_is_stored(self):
        self.send(RELAYED)
        self.send(RELAYED.replace(b"text", b"other text"))
        self.send(RELAYED.replace(b"4Xy7Zk1abc", b"4Xy7Zk1abd"))
        self.assertEqual(len(self.maildir()), 3)

    def test_mail_without_a_received_line_is_never_suppressed(self):
        plain = RELAYED.split(b"\r\n", 2)[2]
        self.send(plain)
        self.send(plain)
        self.assertEqual(len(self.maildir()), 2)

    def test_each_mailbox_is_judged_on_its_own(self):
        self.server.accounts.add("ann@example.test", "pw", self.config.local_domains())
        self.send(RELAYED)  # user only
        self.send(RELAYED, rcpts=("user@example.test", "ann@example.test"))
        self.assertEqual((len(self.maildir()), len(self.maildir("ann"))), (1, 1))

    def test_a_copy_read_since_still_counts_and_a_deleted_one_does_not(self):
        self.send(RELAYED)
        [name] = os.listdir(self.dir / "mailboxes/example.test/user/new")
        box = self.dir / "mailboxes/example.test/user"
        os.rename(box / "new" / name, box / "cur" / (name + ":2,S"))  # a mail program read it
        self.send(RELAYED)
        self.assertEqual(len(self.maildir()), 1)
        os.unlink(box / "cur" / (name + ":2,S"))  # the user deleted it: a new arrival is new
        self.send(RELAYED)
        self.assertEqual(len(self.maildir()), 1)

    def test_the_journal_outlives_a_restart_and_a_torn_last_line(self):
        self.send(RELAYED)
        self.server.duplicates.close()
        with open(self.dir / FILE_NAME, "ab") as f:
            f.write(b"1733300000 deadbeef")  # a line cut short by a crash
        again = MailServer(self.config, self.dir)
        again.accounts.load()
        again.spool.prepare()
        self.addCleanup(again.spool.close)
        again.duplicates.load()
        self.addCleanup(again.duplicates.close)
        self.assertTrue(self.send(RELAYED, server=again).startswith(b"250"))
        self.assertEqual(len(self.maildir()), 1)
        self.assertNotIn(b"deadbeef", (self.dir / FILE_NAME).read_bytes())  # compacted at start

    def test_a_crash_between_journal_and_rename_loses_nothing(self):
        # The journal line is written before the file is renamed into new/: if the rename never
        # happened, the line names a file that does not exist, and the retransmission is stored.
        filt = DuplicateFilter(self.dir, self.dir / "mailboxes")
        filt.load()
        self.addCleanup(filt.close)
        digest = filt.digest([RELAYED])
        box = self.dir / "mailboxes/example.test/user"
        filt.record([(filt.key(digest, box), box / "new" / "1733300000.M1P1.host,S=10")])
        self.assertIsNone(filt.delivered(filt.key(digest, box)))

    def test_top_received_unfolds_the_first_trace_line_only(self):
        self.assertEqual(top_received(RELAYED), b"Received: from mx2.example.org ([192.0.2.7]) by mx2.example.org "
                                                b"(Postfix) with ESMTP id 4Xy7Zk1abc; Fri, 4 Dec 2026 10:00:00 +0000")
        self.assertEqual(top_received(b"Subject: x\r\nReceived: late\r\n\r\n"), b"Received: late")
        self.assertEqual(top_received(b"Subject: x\r\n\r\nReceived: in the body\r\n"), b"")


if __name__ == "__main__":
    unittest.main()
