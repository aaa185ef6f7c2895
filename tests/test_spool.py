"""The queue on disk and local Maildir delivery: what survives, what is cleaned, what is set aside."""
import json
import mailbox
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from ismail import fsutil
from ismail.fsutil import DirSync
from ismail.store import maildir
from ismail.queue.spool import SPILL_BYTES, MessageBuffer, QueueEntry, QueuedRecipient, Spool

from tests.support import recorded_syncs, synced


def buffer_of(spill: Path, *parts: bytes) -> MessageBuffer:
    buf = MessageBuffer(spill)
    for p in parts:
        buf.write(p)
    return buf


class SpoolTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-spool-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.spool = Spool(self.dir / "queue")
        self.assertEqual(self.spool.prepare(), [])

    def entry(self, qid="0000000000001000", rcpts=("a@remote.example",)) -> QueueEntry:
        return QueueEntry(id=qid, sender="me@example.test", arrival=1.5,
                          recipients=[QueuedRecipient(r) for r in rcpts], client_ip="127.0.0.1")

    def test_enqueue_commits_message_and_envelope(self):
        seen = []
        self.spool.on_enqueue = lambda entry, data: seen.append((entry, data))
        body = buffer_of(self.spool.tmp, b"Subject: q\r\n\r\n", b"text\r\n")
        self.spool.enqueue(self.entry(), b"Received: x\r\n", body)
        self.assertEqual(self.spool.read_message("0000000000001000"),
                         b"Received: x\r\nSubject: q\r\n\r\ntext\r\n")
        loaded = self.spool.load("0000000000001000")
        self.assertEqual(loaded, self.entry())
        self.assertEqual([(e.id, data) for e, data in seen],
                         [("0000000000001000", b"Received: x\r\nSubject: q\r\n\r\ntext\r\n")])
        self.assertEqual(list(self.spool.tmp.iterdir()), [])
        self.assertEqual([p.name for p in self.spool.messages.iterdir()], ["0000000000001000.msg"],
                         "one file an entry: envelope and message together")
        with mock.patch("ismail.queue.spool.os.fsync", wraps=__import__("os").fsync) as fsync:
            self.spool.enqueue(self.entry("0000000000001001"), b"", buffer_of(self.spool.tmp, b"x\r\n"))
        self.assertEqual(fsync.call_count, 2, "the file and its folder: one fsync each")

    def test_prepare_keeps_complete_entries_and_removes_crash_leftovers(self):
        for qid in ("0000000000000001", "0000000000000002"):
            self.spool.enqueue(self.entry(qid), b"", buffer_of(self.spool.tmp, b"x\r\n"))
        msgs = self.spool.messages
        (msgs / "0000000000000003.eml").write_bytes(b"half")  # (old layout) crashed before its .json
        (msgs / ".0000000000000004.state.77.1.tmp").write_bytes(b"{")  # an atomic write cut short
        (self.spool.tmp / "0000000000000005.9.msg").write_bytes(b"partial")  # crashed before the rename
        (msgs / "0000000000000006.state").write_bytes(self.entry("0000000000000006").to_json())  # a removal cut short
        with self.assertNoLogs("ismail.spool", "ERROR"):
            ids = Spool(self.dir / "queue").prepare()
        self.assertEqual(ids, ["0000000000000001", "0000000000000002"])
        self.assertEqual(sorted(p.name for p in msgs.iterdir()),
                         ["0000000000000001.msg", "0000000000000002.msg"])
        self.assertEqual(list(self.spool.tmp.iterdir()), [])
        self.assertEqual(list(self.spool.corrupt.iterdir()), [])

    def test_entries_of_the_old_two_file_layout_are_still_served(self):
        old = self.entry("00000000000000C1")
        (self.spool.messages / "00000000000000C1.eml").write_bytes(b"Subject: old\r\n\r\nkept\r\n")
        (self.spool.messages / "00000000000000C1.json").write_bytes(old.to_json())
        self.spool.enqueue(self.entry("00000000000000C2"), b"", buffer_of(self.spool.tmp, b"new\r\n"))
        self.assertEqual(Spool(self.dir / "queue").prepare(), ["00000000000000C1", "00000000000000C2"])
        self.assertEqual(self.spool.list_ids(), ["00000000000000C1", "00000000000000C2"])
        self.assertEqual(self.spool.count(), 2)
        self.assertEqual(self.spool.load("00000000000000C1"), old)
        self.assertEqual(self.spool.read_message("00000000000000C1"), b"Subject: old\r\n\r\nkept\r\n")
        old.attempts = 3
        self.spool.save(old)
        self.assertEqual(json.loads((self.spool.messages / "00000000000000C1.json").read_text())["attempts"], 3)
        self.spool.remove("00000000000000C1")
        self.assertFalse(self.spool.exists("00000000000000C1"))
        self.assertEqual(self.spool.list_ids(), ["00000000000000C2"])

    def test_envelope_without_message_is_set_aside_not_dropped(self):
        (self.spool.messages / "00000000000000AA.json").write_bytes(self.entry("00000000000000AA").to_json())
        with self.assertLogs("ismail.spool", "ERROR") as logs:
            self.assertEqual(self.spool.prepare(), [])
        self.assertIn("00000000000000AA", logs.output[0])
        self.assertEqual([p.name.split(".")[-1] for p in self.spool.corrupt.iterdir()], ["json"])

    def test_corrupt_envelope_is_moved_to_corrupt_and_reported(self):
        self.spool.enqueue(self.entry("00000000000000BB"), b"", buffer_of(self.spool.tmp, b"x\r\n"))
        (self.spool.messages / "00000000000000BB.state").write_text("{not json")
        with self.assertLogs("ismail.spool", "ERROR"):
            with self.assertRaises(ValueError) as ctx:
                self.spool.load("00000000000000BB")
        self.assertIn("corrupt", str(ctx.exception))
        self.assertEqual(list(self.spool.messages.iterdir()), [])
        self.assertEqual(len(list(self.spool.corrupt.iterdir())), 2)  # both files kept for a person

    def test_damaged_queue_file_is_moved_to_corrupt_and_reported(self):
        for n, damage in enumerate([b"garbage\r\n", b"ISMAIL-QUEUE 1 999\r\n{\"id\": 1}", b""]):
            qid = f"00000000000000D{n}"
            self.spool.enqueue(self.entry(qid), b"", buffer_of(self.spool.tmp, b"x\r\n"))
            (self.spool.messages / f"{qid}.msg").write_bytes(damage)
            with self.subTest(damage=damage), self.assertLogs("ismail.spool", "ERROR"):
                with self.assertRaises(ValueError):
                    self.spool.load(qid)
            self.assertFalse(self.spool.exists(qid))
        self.assertEqual(len(list(self.spool.corrupt.iterdir())), 3)

    def test_failed_write_leaves_nothing_behind(self):
        body = buffer_of(self.spool.tmp, b"x\r\n")
        with mock.patch("ismail.queue.spool.os.fsync", side_effect=OSError(28, "No space left on device")):
            with self.assertRaises(OSError):
                self.spool.enqueue(self.entry(), b"", body)
        self.assertEqual(list(self.spool.messages.iterdir()), [])
        self.assertEqual(list(self.spool.tmp.iterdir()), [])

    def test_entries_read_together_share_their_equal_texts_and_nothing_else(self):
        for qid in ("0000000000000001", "0000000000000002"):
            self.spool.enqueue(self.entry(qid), b"", buffer_of(self.spool.tmp, b"x\r\n"))
        odd = json.loads(self.entry("0000000000000003").to_json())
        odd["helo"] = 5   # not text: left as it is, not an error
        (self.spool.messages / "0000000000000003.json").write_text(json.dumps(odd))
        (self.spool.messages / "0000000000000003.eml").write_bytes(b"x\r\n")
        strings: dict[str, str] = {}
        one, two, three = (self.spool.load(q, strings) for q in self.spool.list_ids())
        self.assertEqual(one, self.entry("0000000000000001"))
        self.assertEqual(two, self.entry("0000000000000002"))
        self.assertIs(one.sender, two.sender)
        self.assertIs(one.recipients[0].address, three.recipients[0].address)
        self.assertEqual(three.helo, 5)
        self.assertIsNot(one.extra, two.extra)   # only texts are shared, never what changes
        self.assertIsNot(one.recipients[0], two.recipients[0])
        two.recipients[0].state = "sent"
        self.assertEqual(one.recipients[0].state, "pending")
        self.assertIsNot(self.spool.load("0000000000000001").sender, one.sender)   # alone: its own

    def test_state_update_and_remove(self):
        self.spool.enqueue(self.entry(), b"", buffer_of(self.spool.tmp, b"x\r\n"))
        e = self.spool.load("0000000000001000")
        e.attempts, e.recipients[0].state, e.last_error = 1, "sent", "250 ok"
        self.spool.save(e)
        self.assertEqual(json.loads((self.spool.messages / "0000000000001000.state").read_text())["attempts"], 1)
        self.assertEqual(self.spool.load("0000000000001000"), e, "the state file wins over the first envelope")
        self.assertEqual(self.spool.read_message("0000000000001000"), b"x\r\n")
        with mock.patch("ismail.queue.spool.remove_quietly", wraps=fsutil.remove_quietly) as removed:
            self.spool.remove("0000000000001000")
        self.assertEqual([c.args[0].suffix for c in removed.call_args_list][:2], [".msg", ".state"],
                         "the message first: a crash between never brings back the first envelope")
        self.assertEqual(list(self.spool.messages.iterdir()), [])


class MessageBufferTest(unittest.TestCase):
    def test_large_message_spills_to_a_temp_file_and_reads_back_whole(self):
        spill = Path(tempfile.mkdtemp(prefix="ismail-buf-"))
        self.addCleanup(shutil.rmtree, spill, ignore_errors=True)
        line = b"y" * 98 + b"\r\n"
        buf = MessageBuffer(spill)
        for _ in range(SPILL_BYTES // 100 + 500):
            buf.write(line)
        self.assertIsNotNone(buf._file)
        data = b"".join(buf.chunks(size=4096))
        self.assertEqual(len(data), buf.size)
        self.assertEqual(data, line * (SPILL_BYTES // 100 + 500))
        buf.close()
        self.assertEqual(list(spill.iterdir()), [])  # the spill file goes with the message


class MaildirTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-maildir-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.root = self.dir / "mailboxes"

    def box(self, name):
        return self.root / "example.test" / name

    def test_one_message_for_several_mailboxes(self):
        body = buffer_of(self.dir, b"Subject: s\r\n\r\nhello\r\n")
        placed = maildir.deliver([self.box("a"), self.box("b"), self.box("a")], b"Return-Path: <x@y>\r\n", body)
        self.assertEqual(len(placed), 2)  # a mailbox named twice gets one copy
        for name in ("a", "b"):
            md = mailbox.Maildir(self.box(name), create=False)
            [msg] = md.values()
            self.assertEqual(msg["Subject"], "s")
            self.assertEqual(msg.get_payload(), "hello\n")
            self.assertEqual(list((self.box(name) / "tmp").iterdir()), [])

    def test_crlf_split_across_chunks_becomes_lf(self):
        class Chunked(MessageBuffer):
            def chunks(self, size=1):
                yield from (b"a\r", b"\nb\r", b"\n", b"c\r\n")
        placed = maildir.deliver([self.box("c")], b"H: 1\r\n", Chunked(self.dir))
        self.assertEqual(placed[0].read_bytes(), b"H: 1\na\nb\nc\n")

    def test_failure_removes_everything_written(self):
        body = buffer_of(self.dir, b"x\r\n")
        maildir.deliver([self.box("a")], b"", body)  # creates the folders
        with mock.patch("ismail.store.maildir.fsync_dir", side_effect=OSError(5, "I/O error")):
            with self.assertRaises(OSError):
                maildir.deliver([self.box("a"), self.box("b")], b"", body)
        self.assertEqual(len(list((self.box("a") / "new").iterdir())), 1)  # only the first message
        self.assertEqual(list((self.box("b") / "new").iterdir()), [])
        self.assertEqual(list((self.box("a") / "tmp").iterdir()), [])

    def test_links_fall_back_to_copies(self):
        body = buffer_of(self.dir, b"x\r\n")
        with mock.patch("ismail.store.maildir.os.link", side_effect=OSError(1, "Operation not permitted")):
            placed = maildir.deliver([self.box("a"), self.box("b")], b"", body)
        self.assertEqual([p.read_bytes() for p in placed], [b"x\n", b"x\n"])

    def test_removed_folders_are_made_again_and_the_message_delivered(self):
        maildir.deliver([self.box("a")], b"", buffer_of(self.dir, b"first\r\n"))
        shutil.rmtree(self.box("a") / "new")  # a user tidying up by hand
        shutil.rmtree(self.box("a") / "tmp")
        [placed] = maildir.deliver([self.box("a")], b"", buffer_of(self.dir, b"second\r\n"))
        self.assertEqual(placed.read_bytes(), b"second\n")
        self.assertEqual([p.name for p in (self.box("a") / "new").iterdir()], [placed.name])
        self.assertTrue((self.box("a") / "cur").is_dir())

    def test_a_mailbox_made_by_its_first_message_is_durable_with_it(self):
        """The folders made for a mailbox's first message are recorded on disk before the
        delivery returns: a power cut after the 250 must not take the new Maildir, and the
        message with it, away."""
        with recorded_syncs(self) as events:
            [placed] = maildir.deliver([self.box("a")], b"", buffer_of(self.dir, b"first\r\n"))
        base = self.dir.resolve()
        for folder in (base, base / "mailboxes", base / "mailboxes" / "example.test",
                       base / "mailboxes" / "example.test" / "a", placed.parent.resolve()):
            self.assertIn(folder, synced(events))
        with recorded_syncs(self) as events:  # the next message: its own syncs only
            maildir.deliver([self.box("a")], b"", buffer_of(self.dir, b"second\r\n"))
        self.assertNotIn(base / "mailboxes" / "example.test", synced(events))

    def test_a_missing_file_with_every_folder_there_is_an_error_not_a_loop(self):
        maildir.deliver([self.box("a")], b"", buffer_of(self.dir, b"x\r\n"))
        with mock.patch("ismail.store.maildir.os.replace", side_effect=FileNotFoundError(2, "gone")) as rep:
            with self.assertRaises(FileNotFoundError):
                maildir.deliver([self.box("a")], b"", buffer_of(self.dir, b"y\r\n"))
        # One more try (another delivery may have made the folders since), then the error.
        self.assertEqual(rep.call_count, 2)
        self.assertEqual(list((self.box("a") / "tmp").iterdir()), [])

    def test_clean_tmp_removes_only_our_leftovers(self):
        maildir.deliver([self.box("a")], b"", buffer_of(self.dir, b"x\r\n"))
        ours = self.box("a") / "tmp" / "1700000000.M1P2Q3.host"
        theirs = self.box("a") / "tmp" / "draft-from-mail-client"
        ours.write_bytes(b"partial")
        theirs.write_bytes(b"keep me")
        self.assertEqual(maildir.clean_tmp(self.root), 1)
        self.assertFalse(ours.exists())
        self.assertTrue(theirs.exists())
        self.assertEqual(len(list((self.box("a") / "new").iterdir())), 1)


class MakeDirsTest(unittest.TestCase):
    """fsutil.make_dirs: folders made with their parents, each recorded by a sync of the
    folder above it."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-makedirs-")).resolve()
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def test_missing_folders_are_made_with_their_parents(self):
        a = self.dir / "a"
        self.assertTrue(fsutil.make_dirs(a / "b" / "new", a / "b" / "cur", self.dir / "x"))
        for d in (a / "b" / "new", a / "b" / "cur", self.dir / "x"):
            self.assertTrue(d.is_dir(), d)
        self.assertFalse(fsutil.make_dirs(a / "b" / "new", self.dir))

    def test_each_folder_made_is_recorded_by_a_sync_of_its_parent_once(self):
        a = self.dir / "a"
        with recorded_syncs(self) as events:
            fsutil.make_dirs(a / "b" / "new", a / "b" / "cur", self.dir / "x")
        self.assertEqual(sorted(synced(events)), sorted([self.dir, a, a / "b"]))
        with recorded_syncs(self) as events:
            fsutil.make_dirs(a / "b" / "new", self.dir)
        self.assertEqual(events, [], "folders that exist need no sync")

    def test_a_file_in_the_way_is_an_error(self):
        (self.dir / "a").write_bytes(b"not a folder")
        with self.assertRaises(OSError):
            fsutil.make_dirs(self.dir / "a")
        with self.assertRaises(OSError):
            fsutil.make_dirs(self.dir / "a" / "new")
        self.assertEqual((self.dir / "a").read_bytes(), b"not a folder")


class DirSyncTest(unittest.TestCase):
    """The queue's folder is opened once and kept; mailbox folders are opened each time."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-dirsync-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    @unittest.skipIf(os.name == "nt", "Windows has no folder fsync")
    def test_kept_folder_is_opened_once_and_closed_at_the_end(self):
        kept, other = self.dir / "messages", self.dir / "box"
        kept.mkdir()
        other.mkdir()
        sync = DirSync()
        sync.keep_open(kept)
        real_open, real_fsync = os.open, os.fsync
        opened, synced = [], []
        with mock.patch("ismail.fsutil.os.open", side_effect=lambda p, *a: opened.append(Path(p)) or real_open(p, *a)), \
                mock.patch("ismail.fsutil.os.fsync", side_effect=lambda fd: synced.append(fd) or real_fsync(fd)):
            for _ in range(3):
                sync.sync(kept)
                sync.sync(other)
            self.assertEqual(opened.count(kept), 1)
            self.assertEqual(opened.count(other), 3)
            self.assertEqual(len(synced), 6)  # every sync still flushes
            sync.close()
            sync.sync(kept)  # after close: opened for this sync only
            self.assertEqual(opened.count(kept), 2)
            self.assertEqual(len(synced), 7)
        fds = {int(n) for n in os.listdir("/proc/self/fd")} if Path("/proc/self/fd").is_dir() else set()
        for fd in fds:
            try:
                self.assertNotEqual(os.readlink(f"/proc/self/fd/{fd}"), str(kept))
            except OSError:
                pass

    def test_a_failing_sync_is_an_error_and_the_next_one_runs(self):
        kept = self.dir / "messages"
        kept.mkdir()
        sync = DirSync()
        sync.keep_open(kept)
        if os.name != "nt":
            with mock.patch("ismail.fsutil.os.fsync", side_effect=OSError(5, "I/O error")):
                with self.assertRaises(OSError):
                    sync.sync(kept)
        sync.sync(kept)
        sync.close()


if __name__ == "__main__":
    unittest.main()
