"""A message another server sends twice (it lost our 250) is stored once (store/dedupe.py)."""
import logging
import os
import unittest
from pathlib import Path
from unittest import mock

from ismail.service import MailServer
from ismail.store import dedupe
from ismail.store.dedupe import FILE_NAME, KEEP_DAYS, DuplicateFilter, top_received

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

    def filter_with_old_keys(self, count: int, at: int) -> tuple[DuplicateFilter, Path, list[str]]:
        filt = DuplicateFilter(self.dir, self.dir / "mailboxes")
        with mock.patch.object(dedupe.time, "time", return_value=at):
            filt.load()
        self.addCleanup(filt.close)
        box = self.dir / "mailboxes/example.test/user/new"
        box.mkdir(parents=True, exist_ok=True)
        keys = [f"{i:040x}" for i in range(count)]
        with mock.patch.object(dedupe.time, "time", return_value=at):
            filt.record([(k, box / f"old{i}") for i, k in enumerate(keys)])
        (box / "old0").write_bytes(b"still in the mailbox")
        return filt, box, keys

    def test_a_server_that_runs_for_weeks_forgets_keys_older_than_a_week(self):
        # Every key kept for good took ~245 bytes of memory and ~120 of file: a server up
        # for a year with 1,000 messages a day would hold 90 MB of them.
        start = 1_800_000_000
        filt, box, old = self.filter_with_old_keys(3000, start)
        self.assertEqual(filt.delivered(old[0]), box / "old0")
        self.assertEqual(len((self.dir / FILE_NAME).read_bytes().splitlines()), 3000)
        new = f"{10**9:040x}"
        week_later = start + KEEP_DAYS * 86400 + 3600
        with mock.patch.object(dedupe.time, "time", return_value=week_later):
            filt.record([(new, box / "new0")])
        self.assertIsNone(filt.delivered(old[0]), "a key older than a week is forgotten")
        lines = (self.dir / FILE_NAME).read_bytes().splitlines()
        self.assertEqual(lines, [f"{week_later} {new} example.test/user/new/new0".encode()])
        (box / "new0").write_bytes(b"x")
        self.assertEqual(filt.delivered(new), box / "new0")
        # and what the file now holds is what a restart finds
        again = DuplicateFilter(self.dir, self.dir / "mailboxes")
        with mock.patch.object(dedupe.time, "time", return_value=week_later):
            again.load()
        self.addCleanup(again.close)
        self.assertEqual((again.delivered(new), again.delivered(old[0])), (box / "new0", None))

    def test_keys_of_the_last_week_are_kept_and_the_file_is_not_rewritten_for_a_few(self):
        start = 1_800_000_000
        filt, box, old = self.filter_with_old_keys(10, start)
        with mock.patch.object(dedupe.time, "time", return_value=start + KEEP_DAYS * 86400 - 60):
            filt.record([(f"{10**9:040x}", box / "new0")])
        self.assertEqual(filt.delivered(old[0]), box / "old0")   # six days and 23 hours old
        with mock.patch.object(dedupe.time, "time", return_value=start + KEEP_DAYS * 86400 + 3600), \
                mock.patch.object(dedupe, "atomic_write") as rewrite:
            filt.record([(f"{10**9 + 1:040x}", box / "new1")])
        self.assertIsNone(filt.delivered(old[0]))
        rewrite.assert_not_called()   # 12 lines for 2 keys: not worth a rewrite yet
        self.assertEqual(len((self.dir / FILE_NAME).read_bytes().splitlines()), 12)

    def test_a_rewrite_that_fails_loses_no_record(self):
        start = 1_800_000_000
        filt, box, old = self.filter_with_old_keys(3000, start)
        later = start + KEEP_DAYS * 86400 + 3600
        with mock.patch.object(dedupe.time, "time", return_value=later), \
                mock.patch.object(dedupe, "atomic_write", side_effect=OSError(28, "No space left on device")), \
                self.assertLogs("ismail.dedupe", logging.WARNING) as logs:
            filt.record([(f"{10**9:040x}", box / "new0")])
        self.assertIn("No space left", "\n".join(logs.output))
        with mock.patch.object(dedupe.time, "time", return_value=later):
            filt.record([(f"{10**9 + 1:040x}", box / "new1")])   # still appended to the old file
        lines = (self.dir / FILE_NAME).read_bytes().splitlines()
        self.assertEqual(len(lines), 3002)
        self.assertTrue(lines[-1].endswith(b"example.test/user/new/new1"))

    def test_top_received_unfolds_the_first_trace_line_only(self):
        self.assertEqual(top_received(RELAYED), b"Received: from mx2.example.org ([192.0.2.7]) by mx2.example.org "
                                                b"(Postfix) with ESMTP id 4Xy7Zk1abc; Fri, 4 Dec 2026 10:00:00 +0000")
        self.assertEqual(top_received(b"Subject: x\r\nReceived: late\r\n\r\n"), b"Received: late")
        self.assertEqual(top_received(b"Subject: x\r\n\r\nReceived: in the body\r\n"), b"")


if __name__ == "__main__":
    unittest.main()
