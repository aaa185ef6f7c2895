"""The Maildir as a POP3 maildrop (ismail.store.maildrop): snapshot, UIDs, sizes, reading, UPDATE.

Mailboxes here are real folders: filled by ISMail's own delivery (store.maildir.deliver),
as SMTP fills them, plus hand-made files named the way other Maildir tools name them.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail.queue.spool import MessageBuffer
from ismail.store import folders_box
from ismail.store import maildrop as maildrop_mod
from ismail.store.maildir import deliver
from ismail.store.maildrop import (CHUNK, INFO_SEP, LONG_LINE, MaildropBusy, Maildrops,
                                   unique_name)

HEADER = b"Return-Path: <a@remote.test>\r\n"  # what delivery puts in front
INFO = INFO_SEP + "2,"  # ":2," (on Windows "!2,": a ":" in a name there opens a data stream)


def smtp_text(body: bytes) -> bytes:
    """The message as SMTP received it (CRLF), with the header delivery adds."""
    return HEADER + body


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class MaildropCase(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="ismail-maildrop-")
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        self.box = self.dir / "box"
        self.drops = Maildrops()
        # "Changed a moment ago" below means within this slack, whatever a server started
        # earlier in this process measured (folders_box.use_measured_slack).
        slack = mock.patch.object(folders_box, "MTIME_SLACK_FINE", 2.0)
        slack.start()
        self.addCleanup(slack.stop)

    def deliver(self, body: bytes) -> Path:
        buf = MessageBuffer(self.dir)
        buf.write(body)
        try:
            return deliver([self.box], HEADER, buf)[0]
        finally:
            buf.close()

    def opened(self, drops: Maildrops | None = None):
        drop = (drops or self.drops).open(self.box)
        self.addCleanup(drop.close)
        return drop

    def files(self, sub: str) -> list[str]:
        return sorted(p.name for p in (self.box / sub).iterdir())

    def state(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.box)): p.read_bytes()
                for p in self.box.rglob("*") if p.is_file()}


class SnapshotTest(MaildropCase):
    def test_missing_mailbox_is_an_empty_maildrop(self):
        drop = self.opened()
        self.assertEqual(drop.messages, [])
        self.assertEqual(drop.total_size(), 0)
        for sub in ("new", "cur", "tmp"):
            self.assertTrue((self.box / sub).is_dir(), sub)

    def test_new_and_cur_together_oldest_first_without_dot_files_or_folders(self):
        first = self.deliver(b"Subject: 1\r\n\r\none\r\n")
        second = self.deliver(b"Subject: 2\r\n\r\ntwo\r\n")
        third = self.deliver(b"Subject: 3\r\n\r\nthree\r\n")
        os.replace(second, self.box / "cur" / (second.name + INFO + "S"))
        write(self.box / "new" / ".hidden", b"x\n")
        write(self.box / "cur" / ".dovecot.lock", b"x\n")
        (self.box / "new" / "1.M1P1.folder").mkdir()
        drop = self.opened()
        self.assertEqual([m.uid for m in drop.messages],
                         [unique_name(p.name) for p in (first, second, third)])

    def test_mail_delivered_after_open_waits_for_the_next_session(self):
        self.deliver(b"Subject: before\r\n\r\nx\r\n")
        drop = self.drops.open(self.box)
        later = self.deliver(b"Subject: after\r\n\r\ny\r\n")
        self.assertEqual(len(drop.messages), 1)
        self.assertNotIn(unique_name(later.name), [m.uid for m in drop.messages])
        drop.close()
        self.assertEqual(self.opened().messages[-1].uid, unique_name(later.name))

    def test_order_is_by_delivery_time_in_the_name_then_foreign_names(self):
        names = ["1700000001.M5P9Q1.h", "1700000000.M900000P9Q2.h,S=2,W=3",
                 "1700000001.M40P9Q3.h" + INFO + "S", "zeta-no-time", "1700000000.M12P9Q4.h",
                 "alpha-no-time" + INFO + "S", "999999999.M999999P9Q5.h"]
        for n, name in enumerate(names):  # created in this order: mtime says nothing
            write(self.box / ("cur" if INFO in name else "new") / name, b"%d\n" % n)
        uids = [m.uid for m in self.opened().messages]
        self.assertEqual(uids, ["999999999.M999999P9Q5.h", "1700000000.M12P9Q4.h",
                                "1700000000.M900000P9Q2.h", "1700000001.M5P9Q1.h",
                                "1700000001.M40P9Q3.h", "alpha-no-time", "zeta-no-time"])
        self.assertEqual(uids, [m.uid for m in Maildrops().open(self.box).messages],
                         "the same order every time")


class RememberedListingTest(MaildropCase):
    """A mailbox that has not changed is not listed again; any change is seen at once."""

    def age(self, seconds: float = 60) -> None:
        past = time.time() - seconds
        for sub in ("new", "cur"):
            os.utime(self.box / sub, (past, past))

    def uids(self) -> list[str]:
        drop = self.drops.open(self.box)
        try:
            return [m.uid for m in drop.messages]
        finally:
            drop.close()

    def test_mail_delivered_after_a_remembered_listing_is_seen(self):
        self.deliver(b"Subject: 1\r\n\r\none\r\n")
        self.age()
        first = self.uids()
        self.assertEqual(self.uids(), first)  # from the remembered listing
        second = self.deliver(b"Subject: 2\r\n\r\ntwo\r\n")
        self.assertEqual(self.uids(), first + [second.name.partition(",")[0]])

    def test_a_commit_and_a_flag_change_by_another_program_are_seen(self):
        paths = [self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(3)]
        self.age()
        self.uids()
        drop = self.drops.open(self.box)
        drop.commit({0}, {1})
        drop.close()
        self.assertEqual(len(self.uids()), 2)
        self.age()
        self.uids()
        os.replace(paths[2], self.box / "cur" / (paths[2].name + INFO + "F"))
        drop = self.drops.open(self.box)
        try:
            self.assertEqual(len(drop.messages), 2)
            self.assertIn(b"Subject: 2", b"".join(drop.read(1)))
        finally:
            drop.close()

    def test_a_listing_of_folders_changed_just_now_is_not_remembered(self):
        self.deliver(b"Subject: 1\r\n\r\none\r\n")
        self.uids()  # new/ changed a moment ago: the file system clock may not have moved
        self.assertEqual(self.drops._listings, {})

    def test_a_listing_is_remembered_once_the_measured_slack_has_passed(self):
        self.deliver(b"Subject: 1\r\n\r\none\r\n")
        slack = folders_box.use_measured_slack(self.dir)   # as the server does at start
        first = self.uids()
        time.sleep(slack + 0.005)
        self.assertEqual(self.uids(), first)
        self.assertIn(self.drops._key(self.box), self.drops._listings, "remembered now")
        with mock.patch.object(maildrop_mod.Maildrop, "_snapshot", side_effect=AssertionError):
            self.assertEqual(self.uids(), first, "from the remembered listing")
        second = self.deliver(b"Subject: 2\r\n\r\ntwo\r\n")
        self.assertEqual(self.uids(), first + [second.name.partition(",")[0]])


class UidTest(MaildropCase):
    def test_uid_is_the_unique_name_stable_across_new_to_cur_and_reopen(self):
        path = self.deliver(b"Subject: u\r\n\r\nbody\r\n")
        self.assertIn(",W=", path.name)  # delivery's name, so the uid must drop the fields
        drop = self.drops.open(self.box)
        uid = drop.messages[0].uid
        self.assertEqual(uid, path.name.partition(",")[0])
        drop.commit(set(), {0})
        drop.close()
        self.assertEqual(self.files("new"), [])
        self.assertEqual(self.files("cur"), [path.name + INFO + "S"])
        self.assertEqual(self.opened().messages[0].uid, uid)
        self.assertEqual(self.opened(Maildrops()).messages[0].uid, uid, "after a restart too")

    def test_windows_info_separator_is_read(self):
        write(self.box / "cur" / "1700000000.M1P2Q3.host,S=5,W=7!2,FS", b"a\nb\nc")
        write(self.box / "cur" / "1700000000.M2P2Q4.host!2,S", b"a\nb\n")
        drop = self.opened()
        self.assertEqual([(m.uid, m.size) for m in drop.messages],
                         [("1700000000.M1P2Q3.host", 7), ("1700000000.M2P2Q4.host", 6)])

    def test_a_name_pop3_cannot_carry_gets_a_stable_stand_in(self):
        for name in ("x" * 80, "with space", "caf\u00e9"):
            write(self.box / "new" / name, b"Subject: odd\n\nbody\n")
        first = [m.uid for m in self.opened().messages]
        again = [m.uid for m in self.opened(Maildrops()).messages]
        self.assertEqual(first, again)
        self.assertEqual(len(set(first)), 3)
        for uid in first:
            self.assertTrue(1 <= len(uid) <= 70, uid)
            self.assertTrue(all(0x21 <= ord(c) <= 0x7E for c in uid), uid)


class RelistedTest(MaildropCase):
    """A mailbox changed a moment ago is listed again at every open; when the same files
    are there, each named with its size, the last snapshot is taken as it was.  Any
    difference in the names - one more, one less, one moved or renamed - is a new one."""

    def snapshot(self) -> list[tuple[str, int, str]]:
        with self.drops.open(self.box) as drop:
            return [(m.uid, m.size, str(m.path)) for m in drop.messages]

    def fresh(self) -> list[tuple[str, int, str]]:
        with Maildrops().open(self.box) as drop:  # a registry that remembers nothing
            return [(m.uid, m.size, str(m.path)) for m in drop.messages]

    def test_every_change_is_seen_and_every_snapshot_equals_a_fresh_one(self):
        paths = [self.deliver(b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i)) for i in range(5)]
        first = self.snapshot()
        self.assertEqual(self.drops._listings, {}, "changed just now: not remembered by time")
        self.assertEqual(self.snapshot(), first)  # the same names
        self.assertIn(self.drops._key(self.box), self.drops._last_names)
        added = self.deliver(b"Subject: 5\r\n\r\nlater\r\n")
        self.assertEqual(self.snapshot(), self.fresh())
        self.assertEqual(len(self.snapshot()), 6)
        paths[1].unlink()
        self.assertEqual(self.snapshot(), self.fresh())
        os.replace(paths[2], self.box / "cur" / (paths[2].name + INFO + "S"))
        self.assertEqual(self.snapshot(), self.fresh())
        os.replace(added, added.with_name(added.name.replace(",W=", ",W=1")))  # a size written anew
        after = self.snapshot()
        self.assertEqual(after, self.fresh())
        self.assertEqual([u for u, _, _ in after], [u for u, _, _ in self.fresh()])
        self.assertEqual(len(after), 5)

    def test_files_without_their_size_in_the_name_are_never_taken_by_name(self):
        path = write(self.box / "new" / "1700000000.foreign", b"a\nb\n")
        self.assertEqual(self.snapshot()[0][1], 6)
        self.assertNotIn(self.drops._key(self.box), self.drops._last_names)
        path.write_bytes(b"a\nb\nc\n")  # the same name, another text (mtime moves)
        os.utime(path, ns=(time.time_ns() + 10**9,) * 2)
        self.assertEqual(self.snapshot()[0][1], 9)

    def test_a_session_cannot_change_the_remembered_list(self):
        self.deliver(b"Subject: 1\r\n\r\none\r\n")
        self.snapshot()
        with self.drops.open(self.box) as drop:
            drop.messages.clear()
        self.assertEqual(len(self.snapshot()), 1)


class SizeTest(MaildropCase):
    def test_size_is_the_crlf_size_with_and_without_the_w_field(self):
        body = b"Subject: s\r\n\r\n" + b"line\r\n" * 100 + b"\r\n.\r\n"
        self.deliver(body)
        lf = smtp_text(body).replace(b"\r\n", b"\n")
        write(self.box / "new" / "1700000000.foreign.host", lf)
        write(self.box / "cur" / ("1700000001.foreign.host,S=1" + INFO + "S"), lf)  # no W=
        drop = self.opened()
        self.assertEqual([m.size for m in drop.messages], [len(smtp_text(body))] * 3)
        self.assertEqual(drop.total_size(), 3 * len(smtp_text(body)))
        for i in range(3):
            self.assertEqual(sum(map(len, drop.read(i))), drop.messages[i].size, "LIST = RETR")

    def test_the_w_field_is_taken_without_reading_the_file(self):
        write(self.box / "new" / "1700000000.M1P1Q1.host,S=3,W=999", b"ab\n")
        self.assertEqual(self.opened().messages[0].size, 999)

    def test_computed_sizes_are_remembered_until_the_file_changes(self):
        path = write(self.box / "new" / "1700000000.foreign", b"a\nb\n")
        with self.drops.open(self.box) as drop:
            self.assertEqual(drop.messages[0].size, 6)
        st = path.stat()
        path.write_bytes(b"abcd")  # same size, mtime put back: looks unchanged
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        drop = self.drops.open(self.box)
        self.assertEqual(drop.messages[0].size, 6, "remembered, not read again")
        drop.close()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        self.assertEqual(self.opened().messages[0].size, 4, "a changed file is read again")


class ReadTest(MaildropCase):
    def test_read_gives_back_what_smtp_received(self):
        body = (b"Subject: r\r\nX-Long: " + b"y" * 990 + b"\r\n\r\n.dot\r\n..two\r\n\r\n"
                b"\tindented \r\nlast\r\n")
        self.deliver(body)
        self.assertEqual(b"".join(self.opened().read(0)), smtp_text(body))

    def test_a_file_without_a_final_line_end(self):
        write(self.box / "new" / "1700000000.foreign", b"Subject: x\n\nno end")
        chunks = list(self.opened().read(0))
        self.assertEqual(b"".join(chunks), b"Subject: x\r\n\r\nno end")

    def test_large_message_comes_in_chunks_of_whole_lines(self):
        body = b"Subject: big\r\n\r\n" + b"".join(b"%07d\r\n" % i for i in range(60000))
        self.deliver(body)
        chunks = list(self.opened().read(0))
        self.assertGreater(len(chunks), 3)
        for chunk in chunks:
            self.assertTrue(chunk.endswith(b"\r\n"))
            self.assertNotIn(b"\r\r", chunk)
            self.assertLessEqual(len(chunk), 2 * (CHUNK + 4096))
        self.assertEqual(b"".join(chunks), smtp_text(body))

    def test_a_line_longer_than_the_limit_comes_in_pieces(self):
        text = b"Subject: huge\n\n" + b"z" * (3 * LONG_LINE) + b"\nend\n"
        write(self.box / "new" / "1700000000.foreign", text)
        chunks = list(self.opened().read(0))
        self.assertLessEqual(max(map(len, chunks)), LONG_LINE + CHUNK)
        self.assertEqual(b"".join(chunks), text.replace(b"\n", b"\r\n"))

    def test_top_gives_header_empty_line_and_n_body_lines(self):
        body = b"Subject: t\r\nX: y\r\n\r\nb1\r\n\r\nb3\r\n"
        self.deliver(body)
        drop = self.opened()
        head = HEADER + b"Subject: t\r\nX: y\r\n\r\n"
        self.assertEqual(b"".join(drop.read(0, 0)), head)
        self.assertEqual(b"".join(drop.read(0, 1)), head + b"b1\r\n")
        self.assertEqual(b"".join(drop.read(0, 2)), head + b"b1\r\n\r\n")
        self.assertEqual(b"".join(drop.read(0, 99)), smtp_text(body))

    def test_top_of_a_message_without_body_or_final_line_end(self):
        write(self.box / "new" / "1700000000.a", b"Subject: only header\n")
        write(self.box / "new" / "1700000001.b", b"Subject: b\n\nb1\nb2")
        drop = self.opened()
        self.assertEqual(b"".join(drop.read(0, 0)), b"Subject: only header\r\n")
        self.assertEqual(b"".join(drop.read(1, 1)), b"Subject: b\r\n\r\nb1\r\n")
        self.assertEqual(b"".join(drop.read(1, 2)), b"Subject: b\r\n\r\nb1\r\nb2")

    def test_top_where_the_header_ends_on_a_chunk_boundary(self):
        line = b"X-Pad: " + b"p" * 56 + b"\n"  # 64 octets: the header fills the first read exactly
        header = line * (CHUNK // len(line))
        body = b"".join(b"body %06d\n" % i for i in range(20000))  # spans several chunks
        write(self.box / "new" / "1700000000.foreign", header + b"\n" + body)
        drop = self.opened()
        crlf_head = (header + b"\n").replace(b"\n", b"\r\n")
        self.assertEqual(b"".join(drop.read(0, 0)), crlf_head)
        many = b"".join(drop.read(0, 15000))
        self.assertEqual(many, crlf_head + b"".join(b"body %06d\r\n" % i for i in range(15000)))

    def test_a_file_another_program_left_with_crlf_line_ends(self):
        """CRLF on disk (Dovecot's mail_save_crlf, a .eml saved on Windows) goes out as it
        was, not with a CR doubled; a lone CR stays; LIST's size is what RETR sends."""
        crlf = b"Subject: crlf\r\nX: y\r\n\r\nb1\r\n.dot\r\nbare\rcr\r\nlf only\n"
        write(self.box / "new" / "1700000000.other.host", crlf)
        drop = self.opened()
        wanted = b"Subject: crlf\r\nX: y\r\n\r\nb1\r\n.dot\r\nbare\rcr\r\nlf only\r\n"
        self.assertEqual(b"".join(drop.read(0)), wanted)
        self.assertEqual(drop.messages[0].size, len(wanted))
        self.assertEqual(b"".join(drop.read(0, 1)), b"Subject: crlf\r\nX: y\r\n\r\nb1\r\n",
                         "TOP finds the blank line of a CRLF header")

    def test_a_crlf_cut_between_two_reads_is_one_line_end(self):
        """The CR of a CRLF as the last byte of one 64 KiB read and its LF the first of the
        next, also inside a line longer than LONG_LINE."""
        first = b"Subject: cut\r\n\r\n" + b"a" * (CHUNK - 16 - 1) + b"\r"
        self.assertEqual(len(first), CHUNK)
        text = first + b"\nnext\r\n" + b"z" * (LONG_LINE - 1) + b"\r\nend\r\n"
        write(self.box / "new" / "1700000000.other.host", text)
        drop = self.opened()
        got = b"".join(drop.read(0))
        self.assertEqual(got, text)
        self.assertEqual(drop.messages[0].size, len(text))

    def test_a_file_renamed_since_the_snapshot_is_still_found(self):
        path = self.deliver(b"Subject: moved\r\n\r\nbody\r\n")
        drop = self.opened()
        moved = self.box / "cur" / (path.name + INFO + "F")
        os.replace(path, moved)
        self.assertEqual(b"".join(drop.read(0)), smtp_text(b"Subject: moved\r\n\r\nbody\r\n"))
        moved.unlink()
        with self.assertRaises(FileNotFoundError):
            drop.read(0)


class UpdateTest(MaildropCase):
    def test_commit_deletes_only_the_marked_and_flags_the_seen(self):
        paths = [self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(5)]
        flagged = self.box / "cur" / (paths[2].name + INFO + "Fa")  # a flag and a keyword
        read_before = self.box / "cur" / (paths[3].name + INFO + "SP")  # as another tool wrote it
        os.replace(paths[2], flagged)
        os.replace(paths[3], read_before)
        drop = self.opened()
        self.assertEqual(drop.commit({0}, {0, 1, 2, 3}), 1)
        self.assertEqual(self.files("new"), [paths[4].name], "not retrieved: left in new/")
        self.assertEqual(self.files("cur"), sorted([paths[1].name + INFO + "S",
                                                    paths[2].name + INFO + "FSa", read_before.name]))
        self.assertEqual(b"".join(Maildrops().open(self.box).read(1)),
                         smtp_text(b"Subject: 2\r\n\r\nx\r\n"), "contents kept")

    def test_deletions_are_synced_before_commit_returns_seen_flags_alone_are_not(self):
        paths = [self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(3)]
        drop = self.opened()
        with mock.patch.object(maildrop_mod, "fsync_dir") as synced:
            drop.commit(set(), {0, 1})
        self.assertEqual(synced.call_count, 0, "only flags changed: no folder sync")
        self.assertEqual(len(self.files("cur")), 2)
        drop = Maildrops().open(self.box)
        self.addCleanup(drop.close)
        names = [m.name for m in drop.messages]
        with mock.patch.object(maildrop_mod, "fsync_dir") as synced:
            drop.commit({names.index(paths[2].name)}, {0})
        self.assertEqual(sorted(c.args[0].name for c in synced.call_args_list), ["cur", "new"],
                         "a deletion is durable before the QUIT's +OK")

    def test_the_windows_separator_is_kept_when_flagging(self):
        write(self.box / "cur" / "1700000000.M1P1Q1.h,S=2,W=3!2,F", b"a\n")
        self.opened().commit(set(), {0})
        self.assertEqual(self.files("cur"), ["1700000000.M1P1Q1.h,S=2,W=3!2,FS"])

    def test_commit_follows_files_another_program_moved(self):
        paths = [self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(2)]
        drop = self.opened()
        for p in paths:
            os.replace(p, self.box / "cur" / (p.name + INFO + "T"))
        self.assertEqual(drop.commit({0}, {1}), 1)
        self.assertEqual(self.files("cur"), [paths[1].name + INFO + "ST"])
        self.assertEqual(self.files("new"), [])

    def test_a_message_already_gone_counts_as_deleted(self):
        paths = [self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(2)]
        drop = self.opened()
        paths[0].unlink()
        self.assertEqual(drop.commit({0}, {1}), 1)
        self.assertEqual(self.files("cur"), [paths[1].name + INFO + "S"])

    def test_a_failed_delete_is_reported_after_the_rest_is_done(self):
        paths = [self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(3)]
        drop = self.opened()
        paths[0].unlink()
        (paths[0] / "in-the-way").mkdir(parents=True)  # a folder cannot be unlinked
        with self.assertRaises(OSError) as caught:
            drop.commit({0, 1}, {2})
        self.assertIn(paths[0].name, str(caught.exception))
        self.assertEqual(self.files("new"), [paths[0].name])
        self.assertEqual(self.files("cur"), [paths[2].name + INFO + "S"])

    def test_flagging_never_replaces_another_file(self):
        path = self.deliver(b"Subject: a\r\n\r\nx\r\n")
        clash = write(self.box / "cur" / (path.name + INFO + "S"), b"another\n")
        drop = Maildrops().open(self.box)
        index = [m.name for m in drop.messages].index(path.name)
        drop.commit(set(), {index})
        drop.close()
        self.assertTrue(path.exists())
        self.assertEqual(clash.read_bytes(), b"another\n")

    def test_marking_many_never_replaces_a_file_made_after_the_login_either(self):
        # From _Folders.MANY messages on, cur/ is listed once at the commit instead of a
        # lookup per file; with whole paths (Windows) or names within open folders (POSIX).
        count = maildrop_mod._Folders.MANY + 6
        for at in (True, False):
            with self.subTest(names_within_folders=at), \
                    mock.patch.object(maildrop_mod._Folders, "_AT", at and maildrop_mod._Folders._AT):
                paths = [self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(count)]
                drop = Maildrops().open(self.box)
                clash = write(self.box / "cur" / (paths[3].name + INFO + "S"), b"another\n")
                names = [m.name for m in drop.messages]
                drop.commit(set(), {names.index(p.name) for p in paths})
                drop.close()
                self.assertTrue(paths[3].exists(), "left in new/")
                self.assertEqual(clash.read_bytes(), b"another\n")
                self.assertEqual(sorted(self.files("cur")),
                                 sorted(p.name + INFO + "S" for p in paths))
                self.assertEqual(self.files("new"), [paths[3].name])
                for path in [*self.box.glob("new/*"), *self.box.glob("cur/*")]:
                    path.unlink()

    def test_marking_many_still_marks_one_another_session_moved_meanwhile(self):
        # An IMAP session may move a message from new/ to cur/ between the login and the
        # QUIT; the commit finds it there and still flags it seen.
        count = maildrop_mod._Folders.MANY + 6
        paths = [self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(count)]
        drop = Maildrops().open(self.box)
        moved = self.box / "cur" / (paths[5].name + INFO)
        paths[5].rename(moved)
        names = [m.name for m in drop.messages]
        drop.commit(set(), {names.index(p.name) for p in paths})
        drop.close()
        self.assertEqual(self.files("new"), [])
        self.assertEqual(sorted(self.files("cur")), sorted(p.name + INFO + "S" for p in paths))

    def test_close_without_commit_changes_nothing(self):
        for i in range(3):
            self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i)
        before = self.state()
        drop = self.drops.open(self.box)
        list(drop.read(0))
        list(drop.read(1, 0))
        drop.close()
        self.assertEqual(self.state(), before)

    def test_commit_after_close_is_refused(self):
        self.deliver(b"Subject: a\r\n\r\nx\r\n")
        drop = self.drops.open(self.box)
        drop.close()
        with self.assertRaises(RuntimeError):
            drop.commit({0}, set())
        self.assertEqual(len(self.files("new")), 1)


class LockTest(MaildropCase):
    def test_one_session_per_mailbox(self):
        drop = self.drops.open(self.box)
        with self.assertRaises(MaildropBusy):
            self.drops.open(self.box / ".." / "box")
        self.assertTrue(self.drops.busy(self.box))
        other = self.drops.open(self.dir / "other")  # another mailbox is free
        other.close()
        drop.close()
        drop.close()  # idempotent
        self.assertFalse(self.drops.busy(self.box))
        self.opened()

    @unittest.skipIf(os.name == "nt", "symbolic links need privileges on Windows")
    def test_a_link_to_the_mailbox_is_the_same_mailbox(self):
        (self.dir / "alias").symlink_to(self.box, target_is_directory=True)
        self.opened()
        with self.assertRaises(MaildropBusy):
            self.drops.open(self.dir / "alias")

    def test_racing_logins_get_one_maildrop(self):
        self.deliver(b"Subject: a\r\n\r\nx\r\n")
        results: list[str] = []
        start = threading.Barrier(8)

        def login() -> None:
            start.wait()
            try:
                self.addCleanup(self.drops.open(self.box).close)
                results.append("open")
            except MaildropBusy:
                results.append("busy")

        threads = [threading.Thread(target=login) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(results), ["busy"] * 7 + ["open"])

    def test_an_unreadable_mailbox_raises_and_stays_free(self):
        write(self.dir / "file-not-folder", b"x")
        with self.assertRaises(OSError):
            self.drops.open(self.dir / "file-not-folder")
        self.assertFalse(self.drops.busy(self.dir / "file-not-folder"))


class LargeMaildropTest(MaildropCase):
    def test_100000_messages_open_from_the_listing_alone(self):
        new, cur = self.box / "new", self.box / "cur"
        new.mkdir(parents=True)
        cur.mkdir()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        for i in range(100_000):  # empty files: a size read from them would be 0
            name = f"{1700000000 + i}.M{i % 1000000}P1Q{i}.host,S={i % 500},W={i % 500 + 7}"
            folder = new if i % 2 else cur
            os.close(os.open(folder / (name if i % 2 else name + INFO + "S"), flags))
        started = time.perf_counter()
        drop = self.opened()
        elapsed = time.perf_counter() - started
        print(f"\n  100,000-message maildrop opened in {elapsed:.3f} s", flush=True)
        self.assertEqual(len(drop.messages), 100_000)
        self.assertEqual([m.size for m in drop.messages[:3]], [7, 8, 9])
        self.assertEqual(drop.total_size(), sum(i % 500 + 7 for i in range(100_000)))
        self.assertEqual(drop.messages[0].uid, "1700000000.M0P1Q0.host")
        self.assertEqual(drop.messages[-1].uid, "1700099999.M99999P1Q99999.host")


if __name__ == "__main__":
    unittest.main()
