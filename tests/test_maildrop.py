"""The Maildir as a POP3 maildrop (ismail.store.maildrop): snapshot, UIDs, sizes, reading, UPDATE.

Mailboxes here are filled by ISMail's own delivery (store.maildir.deliver), as SMTP fills
them, plus hand-made files the way other Maildir tools name them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import unittest
from pathlib import Path

from ismail.queue.spool import MessageBuffer
from ismail.store.maildir import deliver
from ismail.store.maildrop import MaildropBusy, Maildrops, unique_name

HEADER = b"Return-Path: <a@remote.test>\r\n"


def crlf_of(body: bytes) -> bytes:
    return HEADER + body


class MaildropCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-maildrop-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.box = self.dir / "box"
        self.drops = Maildrops()

    def deliver(self, body: bytes) -> Path:
        buf = MessageBuffer(self.dir)
        buf.write(body)
        try:
            return deliver([self.box], HEADER, buf)[0]
        finally:
            buf.close()

    def opened(self):
        drop = self.drops.open(self.box)
        self.addCleanup(drop.close)
        return drop


class SnapshotTest(MaildropCase):
    def test_missing_mailbox_is_an_empty_maildrop(self):
        drop = self.opened()
        self.assertEqual(drop.messages, [])
        self.assertTrue((self.box / "new").is_dir())

    def test_snapshot_lists_new_and_cur_oldest_first_and_ignores_later_mail(self):
        first = self.deliver(b"Subject: 1\r\n\r\none\r\n")
        second = self.deliver(b"Subject: 2\r\n\r\ntwo\r\n")
        os.replace(second, self.box / "cur" / (second.name + ":2,S"))
        (self.box / "new" / ".hidden").write_bytes(b"x")
        drop = self.opened()
        self.deliver(b"Subject: 3\r\n\r\nthree\r\n")
        self.assertEqual([m.uid for m in drop.messages], [unique_name(first.name), unique_name(second.name)])

    def test_uid_is_stable_across_new_to_cur_and_reopen(self):
        path = self.deliver(b"Subject: u\r\n\r\nbody\r\n")
        drop = self.drops.open(self.box)
        uid = drop.messages[0].uid
        drop.commit(set(), {0})
        drop.close()
        self.assertEqual(list((self.box / "new").iterdir()), [])
        moved = list((self.box / "cur").iterdir())
        self.assertEqual(len(moved), 1)
        self.assertTrue(moved[0].name.endswith(":2,S"))
        self.assertEqual(self.opened().messages[0].uid, uid)
        self.assertTrue(path.name.startswith(uid))

    def test_size_is_the_crlf_size_with_and_without_the_w_field(self):
        body = b"Subject: s\r\n\r\n" + b"line\r\n" * 100
        self.deliver(body)
        (self.box / "new" / "1700000000.foreign.host").write_bytes(crlf_of(body).replace(b"\r\n", b"\n"))
        drop = self.opened()
        self.assertEqual([m.size for m in drop.messages], [len(crlf_of(body))] * 2)
        self.assertEqual(drop.total_size(), 2 * len(crlf_of(body)))

    def test_a_name_pop3_cannot_carry_gets_a_stable_stand_in(self):
        (self.box / "new").mkdir(parents=True)
        (self.box / "new" / ("x" * 80)).write_bytes(b"Subject: long\n\nbody\n")
        first = self.opened().messages[0].uid
        self.drops = Maildrops()
        again = self.drops.open(self.box)
        self.addCleanup(again.close)
        self.assertEqual(again.messages[0].uid, first)
        self.assertLessEqual(len(first), 70)


class ReadTest(MaildropCase):
    def test_read_gives_back_what_smtp_received(self):
        body = b"Subject: r\r\n\r\n.dot\r\n\r\nlast\r\n"
        self.deliver(body)
        drop = self.opened()
        self.assertEqual(b"".join(drop.read(0)), crlf_of(body))

    def test_large_message_comes_in_chunks_of_whole_lines(self):
        body = b"Subject: big\r\n\r\n" + b"".join(b"%07d\r\n" % i for i in range(60000))
        self.deliver(body)
        chunks = list(self.opened().read(0))
        self.assertGreater(len(chunks), 3)
        self.assertTrue(all(c.endswith(b"\r\n") for c in chunks))
        self.assertEqual(b"".join(chunks), crlf_of(body))

    def test_top_gives_header_empty_line_and_n_body_lines(self):
        body = b"Subject: t\r\nX: y\r\n\r\nb1\r\nb2\r\nb3\r\n"
        self.deliver(body)
        drop = self.opened()
        head = HEADER + b"Subject: t\r\nX: y\r\n\r\n"
        self.assertEqual(b"".join(drop.read(0, 0)), head)
        self.assertEqual(b"".join(drop.read(0, 2)), head + b"b1\r\nb2\r\n")
        self.assertEqual(b"".join(drop.read(0, 99)), crlf_of(body))

    def test_a_file_renamed_since_the_snapshot_is_still_found(self):
        path = self.deliver(b"Subject: moved\r\n\r\nbody\r\n")
        drop = self.opened()
        os.replace(path, self.box / "cur" / (path.name + ":2,F"))
        self.assertIn(b"moved", b"".join(drop.read(0)))
        (self.box / "cur" / (path.name + ":2,F")).unlink()
        with self.assertRaises(FileNotFoundError):
            list(drop.read(0))


class UpdateTest(MaildropCase):
    def test_commit_deletes_only_the_marked_and_flags_the_seen(self):
        paths = [self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(3)]
        os.replace(paths[2], self.box / "cur" / (paths[2].name + ":2,F"))
        drop = self.opened()
        self.assertEqual(drop.commit({0}, {1, 2}), 1)
        left = sorted(p.name for p in (self.box / "cur").iterdir())
        self.assertEqual(left, sorted([paths[1].name + ":2,S", paths[2].name + ":2,FS"]))
        self.assertEqual(list((self.box / "new").iterdir()), [])

    def test_close_without_commit_changes_nothing(self):
        for i in range(2):
            self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i)
        before = sorted(self.box.rglob("*"))
        drop = self.drops.open(self.box)
        list(drop.read(0))
        drop.close()
        self.assertEqual(sorted(self.box.rglob("*")), before)

    def test_one_session_per_mailbox(self):
        drop = self.drops.open(self.box)
        with self.assertRaises(MaildropBusy):
            self.drops.open(self.box / "." / "")
        self.assertTrue(self.drops.busy(self.box))
        drop.close()
        drop.close()  # idempotent
        self.opened()


class LargeMaildropTest(MaildropCase):
    def test_100000_messages_open_from_the_listing_alone(self):
        new = self.box / "new"
        new.mkdir(parents=True)
        for i in range(100_000):
            (new / f"{1700000000 + i}.M{i}P1Q{i}.host,S=10,W=12").touch()
        started = time.perf_counter()
        drop = self.opened()
        elapsed = time.perf_counter() - started
        print(f"\n  100,000-message maildrop opened in {elapsed:.2f} s", flush=True)
        self.assertEqual(len(drop.messages), 100_000)
        self.assertEqual(drop.total_size(), 1_200_000)  # the W= sizes: no file was read (they are empty)
        self.assertEqual(drop.messages[0].uid, "1700000000.M0P1Q0.host")
        self.assertEqual(drop.messages[-1].uid, "1700099999.M99999P1Q99999.host")


if __name__ == "__main__":
    unittest.main()
