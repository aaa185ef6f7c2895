"""The queue's journal (queue/journal.py): what a crash leaves is brought back, nothing
acknowledged is lost, delivered mail stays delivered, and a failing journal is reported
and stepped around without losing the message.

A crash is simulated by copying the queue folder while the server's spool is still open
(what the disk holds when the process dies), then damaging the copy the way a power cut
can (a renamed file lost, a file's data lost, a record half written) and starting a
second spool on it.
"""
import os
import shutil
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail import fsutil
from ismail.queue import journal as journal_mod
from ismail.queue.journal import HEADER, JOURNAL_MAX, parse_local, read_segment
from ismail.queue.spool import MessageBuffer, QueueEntry, QueuedRecipient, Spool
from ismail.store import maildir
from ismail.store.dedupe import DuplicateFilter


def body(spill: Path, data: bytes) -> MessageBuffer:
    buf = MessageBuffer(spill)
    buf.write(data)
    return buf


def entry(qid: str) -> QueueEntry:
    return QueueEntry(id=qid, sender="me@example.test", arrival=1.5,
                      recipients=[QueuedRecipient("a@remote.example")], client_ip="127.0.0.1")


def wait_for(what, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.02)
    return what()


class SpoolCase(unittest.TestCase):
    """A server's spool with its journal, and what a crash leaves of it."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-journal-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.spool = Spool(self.dir / "queue", journal=True)
        self.assertEqual(self.spool.prepare(), [])
        self.addCleanup(self.spool.close)

    def put(self, qid: str, text: bytes = b"Subject: t\r\n\r\nhello\r\n") -> None:
        self.spool.enqueue(entry(qid), b"Received: x\r\n", body(self.spool.tmp, text))

    def put_in_thread(self, qid: str, errors: list) -> threading.Thread:
        """A started thread that enqueues ``qid``; what it raises goes to ``errors``."""
        def run():
            try:
                self.put(qid)
            except Exception as e:  # pragma: no cover - reported by the caller
                errors.append(e)
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def segments(self, queue: Path | None = None) -> list[Path]:
        return sorted(((queue or self.dir / "queue") / "journal").glob("*.jnl"))

    def crash(self) -> Path:
        """What the disk holds if the process dies now: a copy of the queue folder.

        The journal's own thread may be writing a file meanwhile; one renamed or removed
        between the listing and its copy is left out, as a crash a moment later would.
        """
        copy = self.dir / f"crashed{len(list(self.dir.glob('crashed*')))}"

        def copy_if_still_there(src, dst):
            try:
                return shutil.copy2(src, dst)
            except FileNotFoundError:
                return dst
        shutil.copytree(self.dir / "queue", copy, copy_function=copy_if_still_there)
        return copy

    def restart(self, queue: Path) -> tuple[Spool, list[str]]:
        spool = Spool(queue, journal=True)
        ids = spool.prepare()
        self.addCleanup(spool.close)
        return spool, ids


class JournalTest(SpoolCase):
    def test_a_message_is_in_the_journal_before_enqueue_returns_and_its_file_follows(self):
        self.put("0000000000000A01")
        self.assertEqual(self.spool.read_message("0000000000000A01"),
                         b"Received: x\r\nSubject: t\r\n\r\nhello\r\n")
        self.assertTrue(self.spool.exists("0000000000000A01"))
        [segment] = self.segments()
        records, end = read_segment(segment.read_bytes())
        self.assertEqual(end, segment.stat().st_size)
        self.assertEqual([k for k, _ in records], [b"Q"])
        qid, _, data = records[0][1].partition(b"\n")
        self.assertEqual(qid, b"0000000000000A01")
        # The file is written by the journal once the entry has waited WRITE_AFTER (mail
        # relayed at once never gets one); then it holds exactly what the record holds.
        path = self.spool.messages / "0000000000000A01.msg"
        self.assertFalse(path.exists(), "not written yet: most relayed mail is gone before")
        self.assertTrue(wait_for(path.exists, journal_mod.WRITE_AFTER + 5))
        self.assertEqual(data, path.read_bytes())
        self.assertEqual(self.spool.list_ids(), ["0000000000000A01"])
        self.assertEqual(self.spool.read_message("0000000000000A01"),
                         b"Received: x\r\nSubject: t\r\n\r\nhello\r\n")

    def test_the_250_waits_for_a_sync_that_began_after_the_record_was_written(self):
        sizes = []
        real = journal_mod._fdatasync

        def spy(fd):
            sizes.append(os.fstat(fd).st_size)
            real(fd)
        with mock.patch.object(journal_mod, "_fdatasync", spy):
            for n in range(3):
                self.put(f"0000000000000B0{n}")
                self.assertEqual(sizes[-1], self.segments()[0].stat().st_size,
                                 "the last sync before enqueue returned covered the whole record")
        self.assertEqual(len(sizes), 3)

    def test_messages_arriving_together_share_a_sync(self):
        real = journal_mod._fdatasync

        def slow(fd):  # a disk that takes 30 ms a flush: the others queue behind it
            time.sleep(0.03)
            real(fd)
        errors = []
        before = self.spool.journal.syncs
        with mock.patch.object(journal_mod, "_fdatasync", slow):
            threads = [self.put_in_thread(f"00000000000C{n:04X}", errors) for n in range(12)]
            for t in threads:
                t.join(10)
        self.assertEqual(errors, [])
        self.assertTrue(all(self.spool.exists(f"00000000000C{n:04X}") for n in range(12)))
        self.spool.write_out()
        self.assertEqual(len(self.spool.list_ids()), 12)
        syncs = self.spool.journal.syncs - before
        self.assertLess(syncs, 12, "a sync serves every message written before it began")
        self.assertGreaterEqual(syncs, 1)

    def test_records_that_arrive_during_a_stalled_write_share_the_next_write(self):
        """No thread holds the journal's lock across a write or a sync: while one record's
        write stalls (a slow disk), the messages behind it append theirs and bookkeeping
        goes on, and what piled up goes out in one write after it."""
        real = journal_mod._write_all
        stalled, go = threading.Event(), threading.Event()
        records_per_write: list[int] = []

        def stalling(fd, data):
            if not stalled.is_set():
                stalled.set()
                go.wait(10)
            records_per_write.append(bytes(data).count(b"Received: x\r\n"))
            real(fd, data)
        errors = []
        with mock.patch.object(journal_mod, "_write_all", stalling):
            first = self.put_in_thread("00000000000E0000", errors)
            self.assertTrue(stalled.wait(5))
            others = [self.put_in_thread(f"00000000000E{n:04X}", errors) for n in range(1, 6)]
            time.sleep(0.3)  # they append and wait
            started = time.monotonic()
            self.spool.journal.placed("L0000000000000000")  # takes the journal's lock
            self.assertLess(time.monotonic() - started, 0.2, "the lock is free during the write")
            self.assertTrue(all(t.is_alive() for t in others), "nothing is committed before it is written")
            go.set()
            for t in [first, *others]:
                t.join(10)
        self.assertEqual(errors, [])
        self.assertTrue(all(self.spool.exists(f"00000000000E{n:04X}") for n in range(6)))
        self.assertEqual(records_per_write, [1, 5])

    def test_a_lost_or_damaged_file_is_written_again_from_the_journal(self):
        for n in range(4):
            self.put(f"0000000000000D0{n}", b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n))
        self.spool.write_out()  # as the journal does after WRITE_AFTER; not synced
        want = {p.name: p.read_bytes() for p in self.spool.messages.iterdir()}
        crashed = self.crash()
        (crashed / "messages" / "0000000000000D00.msg").unlink()               # its rename never reached the disk
        (crashed / "messages" / "0000000000000D01.msg").write_bytes(b"")       # its data never did
        (crashed / "messages" / "0000000000000D02.msg").write_bytes(b"\0" * 40)  # part of it
        with self.assertLogs("ismail.spool", "WARNING") as logs:
            spool, ids = self.restart(crashed)
        self.assertEqual(ids, sorted(i[:-4] for i in want))
        self.assertEqual({p.name: p.read_bytes() for p in spool.messages.iterdir()}, want)
        self.assertEqual(sum("written again from the journal" in line for line in logs.output), 3)
        self.assertEqual(spool.load("0000000000000D01"), entry("0000000000000D01"))
        self.assertEqual(self.segments(crashed), [self.segments(crashed)[0]], "one new segment, the old ones gone")
        self.assertEqual(read_segment(self.segments(crashed)[0].read_bytes())[0], [])

    def test_a_delivered_message_does_not_come_back(self):
        self.put("0000000000000E01")
        self.put("0000000000000E02")
        self.spool.remove("0000000000000E01")  # delivered
        self.put("0000000000000E03")  # its sync carries the end of E01 too
        crashed = self.crash()
        spool, ids = self.restart(crashed)
        self.assertEqual(ids, ["0000000000000E02", "0000000000000E03"])

    def test_the_end_of_a_message_is_synced_within_a_second_without_new_mail(self):
        self.put("0000000000000F01")
        self.spool.remove("0000000000000F01")
        self.assertTrue(wait_for(lambda: b"D" in [k for k, _ in read_segment(self.segments()[0].read_bytes())[0]]
                                 and not self.spool.journal._unsynced_ends, 5))
        spool, ids = self.restart(self.crash())
        self.assertEqual(ids, [])

    def test_a_half_written_record_at_the_end_is_ignored_and_the_rest_kept(self):
        self.put("0000000000000G01")
        self.put("0000000000000G02")
        crashed = self.crash()
        self.assertFalse((crashed / "messages" / "0000000000000G02.msg").exists(), "not written yet")
        segment = self.segments(crashed)[0]
        whole = segment.read_bytes()
        # a third message whose record was cut short as the power went: never acknowledged
        rec = journal_mod.record(b"Q", b"0000000000000G03\n" + b"x" * 500)
        segment.write_bytes(whole + rec[:200])
        with self.assertLogs("ismail.spool", "WARNING") as logs:
            spool, ids = self.restart(crashed)
        self.assertEqual(ids, ["0000000000000G01", "0000000000000G02"])
        self.assertTrue(any("after its last whole record ignored" in line for line in logs.output))

    def test_a_record_that_fails_its_checksum_ends_the_segment(self):
        self.put("0000000000000H01")
        self.put("0000000000000H02")
        crashed = self.crash()
        self.assertEqual(files(crashed / "messages"), [], "not written yet")
        segment = self.segments(crashed)[0]
        data = bytearray(segment.read_bytes())
        records, _ = read_segment(bytes(data))
        second = len(HEADER) + 9 + len(records[0][1])
        data[second + 30] ^= 0xFF  # a flipped byte in the second record's payload
        segment.write_bytes(bytes(data))
        with self.assertLogs("ismail.spool", "WARNING"):
            spool, ids = self.restart(crashed)
        self.assertEqual(ids, ["0000000000000H01"])

    def test_a_segment_that_is_not_a_journal_is_set_aside_and_reported(self):
        self.put("0000000000000J01")
        crashed = self.crash()
        (crashed / "journal" / "000000000099.jnl").write_bytes(b"something else entirely\r\n")
        with self.assertLogs("ismail.spool", "ERROR") as logs:
            spool, ids = self.restart(crashed)
        self.assertEqual(ids, ["0000000000000J01"])
        self.assertIn("not an ISMail journal", "\n".join(logs.output))
        [kept] = (crashed / "corrupt").glob("000000000099.*.jnl")
        self.assertEqual(kept.read_bytes(), b"something else entirely\r\n")

    def test_a_segment_cut_short_as_it_was_made_is_removed_quietly(self):
        crashed = self.crash()
        (crashed / "journal" / "000000000007.jnl").write_bytes(HEADER[:5])
        with self.assertNoLogs("ismail.spool", "WARNING"):
            spool, ids = self.restart(crashed)
        self.assertEqual(ids, [])
        self.assertFalse((crashed / "journal" / "000000000007.jnl").exists())

    def test_full_segments_are_checkpointed_and_removed_and_a_clean_stop_leaves_none(self):
        with mock.patch.object(journal_mod, "SEGMENT_BYTES", 4096):
            for n in range(20):
                self.put(f"0000000000000K{n:02d}", b"Subject: k\r\n\r\n" + b"y" * 900 + b"\r\n")
            for n in range(0, 20, 2):
                self.spool.remove(f"0000000000000K{n:02d}")
            self.assertTrue(wait_for(lambda: len(self.segments()) == 1), [p.name for p in self.segments()])
            self.assertGreater(int(self.segments()[0].stem), 5, "many segments were made")
            journal = self.spool.journal
            self.assertTrue(wait_for(lambda: not journal._unsynced_ends),
                            "the ends are synced within a second")
            crashed = self.crash()
            spool, ids = self.restart(crashed)
            self.assertEqual(ids, [f"0000000000000K{n:02d}" for n in range(1, 20, 2)])
        self.spool.close()
        self.assertEqual(self.segments(), [])
        self.assertEqual(len(self.spool.list_ids()), 10)
        # after the stop a message is committed the old way, one fsync each
        self.put("0000000000000K99")
        self.assertEqual(self.segments(), [])
        self.assertIn("0000000000000K99", self.spool.list_ids())

    def test_a_large_message_is_not_copied_into_the_journal(self):
        self.put("0000000000000L01", b"Subject: big\r\n\r\n" + b"z" * JOURNAL_MAX + b"\r\n")
        self.assertEqual(read_segment(self.segments()[0].read_bytes())[0], [])
        self.assertEqual(len(self.spool.read_message("0000000000000L01")), 13 + 16 + JOURNAL_MAX + 2)

    def test_a_failing_journal_is_reported_once_and_mail_is_still_committed(self):
        with mock.patch.object(journal_mod, "_fdatasync", side_effect=OSError(5, "Input/output error")):
            with self.assertLogs("ismail.spool", "ERROR") as logs:
                self.put("0000000000000M01")
                self.put("0000000000000M02")
        self.assertEqual(len(logs.output), 1, logs.output)
        self.assertIn("one fsync each", logs.output[0])
        self.assertEqual(self.spool.list_ids(), ["0000000000000M01", "0000000000000M02"])
        with mock.patch("ismail.queue.spool.os.fsync", wraps=os.fsync) as fsync:
            self.put("0000000000000M03")
        self.assertGreaterEqual(fsync.call_count, 1, "committed by its own fsync")
        spool, ids = self.restart(self.crash())
        self.assertEqual(ids, ["0000000000000M01", "0000000000000M02", "0000000000000M03"])

    def test_the_journal_is_used_again_after_a_restart(self):
        with mock.patch.object(journal_mod, "_fdatasync", side_effect=OSError(5, "Input/output error")):
            with self.assertLogs("ismail.spool", "ERROR"):
                self.put("0000000000000N01")
        self.spool.close()
        self.assertEqual(self.spool.prepare(), ["0000000000000N01"])
        self.put("0000000000000N02")
        self.assertEqual(len(read_segment(self.segments()[0].read_bytes())[0]), 1)


class LocalDeliveryTest(unittest.TestCase):
    """Local deliveries committed by the journal (store/maildir.deliver with a journal).

    A crash is simulated in place: the segments as the disk holds them are copied, the
    spool is closed (its checkpoint syncs everything), the copies are put back and the
    mailbox damaged the way a power cut can; then a new spool recovers."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-journal-local-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.spool = Spool(self.dir / "queue", journal=True)
        self.spool.prepare()
        self.addCleanup(self.spool.close)
        self.box = self.dir / "mail" / "example.test" / "user"
        self.other = self.dir / "mail" / "example.test" / "other"

    def deliver(self, text: bytes, boxes=None) -> list[Path]:
        return maildir.deliver(boxes or [self.box], b"Return-Path: <a@b.test>\r\n",
                               body(self.spool.tmp, text), journal=self.spool.journal)

    def held(self) -> dict[str, list[Path]]:
        """L records not ended in the segments on disk."""
        local, ended = {}, set()
        for segment in sorted((self.dir / "queue" / "journal").glob("*.jnl")):
            for kind, payload in read_segment(segment.read_bytes())[0]:
                if kind == b"L":
                    lid, paths, _ = parse_local(payload)
                    local[lid] = paths
                elif kind == b"D":
                    ended.add(payload.decode())
        return {lid: paths for lid, paths in local.items() if lid not in ended}

    def crash_and_restart(self, damage) -> Spool:
        folder = self.dir / "queue" / "journal"
        saved = {p.name: p.read_bytes() for p in folder.glob("*.jnl")}
        self.spool.close()
        for name, data in saved.items():
            (folder / name).write_bytes(data)
        damage()
        spool = Spool(self.dir / "queue", journal=True)
        spool.prepare()
        self.addCleanup(spool.close)
        return spool

    def test_the_text_is_in_the_journal_before_deliver_returns_and_the_file_in_new(self):
        placed = self.deliver(b"Subject: one\r\n\r\nhello\r\n")
        self.assertEqual([p.parent for p in placed], [self.box / "new"])
        want = b"Return-Path: <a@b.test>\nSubject: one\n\nhello\n"
        self.assertEqual(placed[0].read_bytes(), want)
        records = [parse_local(payload) for segment in (self.dir / "queue" / "journal").glob("*.jnl")
                   for kind, payload in read_segment(segment.read_bytes())[0] if kind == b"L"]
        self.assertEqual([(paths, text) for _, paths, text in records], [(placed, want)])
        self.assertGreaterEqual(self.spool.journal.syncs, 1)

    def test_lost_or_damaged_files_are_written_again_where_they_are(self):
        one = self.deliver(b"Subject: one\r\n\r\nfirst\r\n")[0]
        two, three = self.deliver(b"Subject: two\r\n\r\nfor two boxes\r\n", [self.box, self.other])
        four = self.deliver(b"Subject: four\r\n\r\nread, then lost\r\n")[0]
        want = {p: p.read_bytes() for p in (one, two, three, four)}
        seen = self.box / "cur" / f"{four.name}:2,S"

        def damage():
            one.unlink()                    # the rename never reached the disk
            three.write_bytes(b"")          # the data never did (two is the same file: a hard link)
            four.rename(seen)               # a mail program read it ...
            seen.write_bytes(b"\0" * 10)    # ... and then its data was lost
        with self.assertLogs("ismail.spool", "WARNING") as logs:
            self.crash_and_restart(damage)
        self.assertEqual({p: p.read_bytes() for p in (one, two, three)}, {p: want[p] for p in (one, two, three)})
        self.assertEqual(seen.read_bytes(), want[four], "written again where the mail program put it")
        self.assertFalse(four.exists(), "not a second copy in new/")
        self.assertEqual(sum("written again from the journal" in line for line in logs.output), 4, logs.output)
        self.assertEqual(files(self.box / "tmp") + files(self.other / "tmp"), [])

    def test_a_message_that_cannot_be_written_back_is_set_aside_not_dropped(self):
        placed = self.deliver(b"Subject: kept\r\n\r\nnowhere to go\r\n")[0]
        want = placed.read_bytes()

        def damage():  # the mailbox broke along with the file: its tmp/ is now a file
            placed.unlink()
            shutil.rmtree(self.box / "tmp")
            (self.box / "tmp").write_bytes(b"not a folder")
        with self.assertLogs("ismail.spool", "ERROR") as logs:
            self.crash_and_restart(damage)
        kept = list((self.dir / "queue" / "corrupt").glob("*.eml"))
        self.assertEqual([p.read_bytes() for p in kept], [want])
        self.assertTrue(any(str(kept[0]) in line and "could not be written again" in line
                            for line in logs.output), logs.output)
        self.assertEqual(self.held(), {}, "the segment is done with (nothing read twice)")

    def test_the_duplicate_filter_has_its_line_before_the_journal_record_is_written(self):
        # A kill after the record brings the file back at the next start; the sending server
        # never saw its 250 and sends the message again, and the duplicate filter must then
        # know the file, or the mailbox gets it twice (tests/test_backup_mx.py met this).
        dup = DuplicateFilter(self.dir, self.dir / "mail")
        dup.load()
        self.addCleanup(dup.close)
        journal = self.spool.journal
        real = journal.commit_local
        lines_then = []

        def commit(paths, text):
            lines_then.append(dup.path.read_text())
            return real(paths, text)
        with mock.patch.object(journal, "commit_local", commit):
            placed = maildir.deliver([self.box], b"Received: from backup\r\n",
                                     body(self.spool.tmp, b"Subject: d\r\n\r\nonce\r\n"),
                                     before_commit=lambda dests: dup.record([("k" * 40, dests[0])]),
                                     journal=journal)
        self.assertEqual(len(lines_then), 1)
        self.assertIn(placed[0].name, lines_then[0])

    def test_deliveries_are_checkpointed_within_a_second_and_then_left_alone(self):
        placed = self.deliver(b"Subject: cp\r\n\r\nsoon synced\r\n")[0]
        journal = self.spool.journal
        self.assertTrue(wait_for(lambda: not self.held() and not journal._unsynced_ends, 5),
                        "the delivery's record is ended on disk within a second or so")
        # Read and deleted by the user afterwards: a crash now must not bring it back.
        self.crash_and_restart(placed.unlink)
        self.assertEqual(files(self.box / "new") + files(self.box / "cur"), [])

    def test_without_syncfs_the_checkpoint_syncs_each_file_wherever_it_is_now(self):
        # Windows and macOS have no syncfs: each file is fsync'd, found in cur/ if it was read.
        with mock.patch.object(journal_mod, "_syncfs", None), \
                mock.patch.object(journal_mod, "fsync_file", wraps=journal_mod.fsync_file) as fsync:
            one = self.deliver(b"Subject: one\r\n\r\nstays in new\r\n")[0]
            two = self.deliver(b"Subject: two\r\n\r\nread at once\r\n")[0]
            seen = self.box / "cur" / f"{two.name}:2,S"
            two.rename(seen)
            journal = self.spool.journal
            self.assertTrue(wait_for(lambda: not self.held() and not journal._unsynced_ends, 5))
        # (two is found in cur/, unless the checkpoint came between its delivery and its move)
        self.assertIn({c.args[0] for c in fsync.call_args_list}, ({one, seen}, {one, two}))

    def test_a_delivery_that_fails_after_its_record_is_not_brought_back(self):
        with mock.patch("ismail.store.maildir.os.replace", side_effect=OSError(28, "No space left on device")):
            with self.assertRaises(OSError):
                self.deliver(b"Subject: failed\r\n\r\nnot delivered\r\n")
        self.assertEqual(files(self.box / "new") + files(self.box / "tmp"), [])
        placed = self.deliver(b"Subject: next\r\n\r\ndelivered\r\n")
        self.assertEqual(list(self.held().values()), [placed], "the failed one ended (with the next record)")
        self.crash_and_restart(lambda: None)
        self.assertEqual(len(files(self.box / "new")), 1)

    def test_a_new_mailbox_made_at_the_same_moment_by_another_delivery(self):
        # Two first deliveries to a mailbox that does not exist yet (two bounces to the
        # postmaster): both find no tmp/, and the other one makes the folders first.  This
        # one then found nothing left to make and gave up with FileNotFoundError; the
        # bounce it carried was lost.
        real = maildir.make_maildirs

        def the_other_delivery_first(*boxes):
            real(*boxes)
            return real(*boxes)

        text = b"Subject: first\r\n\r\nhello\r\n"
        for way in ("deliver", "stage"):
            with self.subTest(way=way):
                box = self.dir / "mail" / "example.test" / f"new-{way}"
                with mock.patch.object(maildir, "make_maildirs", the_other_delivery_first):
                    if way == "deliver":
                        placed = self.deliver(text, [box])
                    else:
                        staged = maildir.stage([box], b"Return-Path: <a@b.test>\r\n",
                                               body(self.spool.tmp, text), self.spool.journal)
                        placed = staged.place()
                self.assertEqual([p.parent for p in placed], [box / "new"])
                self.assertTrue(placed[0].read_bytes().endswith(b"hello\n"))

    def test_a_large_message_is_synced_on_its_own(self):
        with mock.patch("ismail.store.maildir.fsync_dir", wraps=maildir.fsync_dir) as dirsync:
            placed = self.deliver(b"Subject: big\r\n\r\n" + b"z" * JOURNAL_MAX + b"\r\n")
        self.assertEqual(dirsync.call_count, 1)
        self.assertEqual(self.held(), {})
        self.assertEqual(placed[0].stat().st_size, 24 + 14 + JOURNAL_MAX + 1)

    def test_a_failing_journal_still_delivers_with_fsyncs(self):
        with mock.patch.object(journal_mod, "_fdatasync", side_effect=OSError(5, "Input/output error")):
            with self.assertLogs("ismail.spool", "ERROR"):
                with mock.patch("ismail.store.maildir.fsync_file", wraps=journal_mod.fsync_file) as fsync:
                    placed = self.deliver(b"Subject: io\r\n\r\nstill here\r\n")
        self.assertEqual(fsync.call_count, 1)
        self.assertTrue(placed[0].exists())


class WriteBehindTest(SpoolCase):
    """A queued message's file is written only if it is still queued a moment later: the
    relay's usual message is delivered first and never has a file at all."""

    def test_a_message_delivered_at_once_never_has_a_file(self):
        with mock.patch("ismail.fsutil.write_new_file", wraps=fsutil.write_new_file) as write:
            self.put("00000000000W0001")
            self.assertEqual(self.spool.read_message("00000000000W0001")[:13], b"Received: x\r\n"[:13])
            self.spool.remove("00000000000W0001")  # delivered
            self.assertFalse(self.spool.exists("00000000000W0001"))
            time.sleep(journal_mod.WRITE_AFTER + 2 * journal_mod.FLUSH_SECONDS)
        self.assertEqual([c for c in write.call_args_list if "00000000000W0001" in str(c.args[0])], [],
                         "no file was ever written for it")
        self.assertEqual(files(self.spool.messages), [])
        self.assertEqual(files(self.spool.tmp), [])
        spool, ids = self.restart(self.crash())
        self.assertEqual(ids, [], "delivered mail does not come back")

    def test_a_deferred_message_gets_its_file_before_its_state(self):
        self.put("00000000000W0002")
        e = entry("00000000000W0002")
        e.attempts, e.last_error = 1, "451 4.3.0 try later"
        self.spool.save(e)
        self.assertEqual(files(self.spool.messages), ["00000000000W0002.msg", "00000000000W0002.state"])
        self.assertEqual(self.spool.load("00000000000W0002").last_error, "451 4.3.0 try later")
        self.assertIn(b"hello", self.spool.read_message("00000000000W0002"))
        self.spool.remove("00000000000W0002")
        self.assertEqual(files(self.spool.messages), [])

    def test_a_crash_before_the_files_are_written_loses_nothing(self):
        texts = {f"00000000000W01{n:02d}": b"Subject: %d\r\n\r\nunwritten %d\r\n" % (n, n) for n in range(6)}
        for qid, text in texts.items():
            self.put(qid, text)
            if qid == "00000000000W0104":
                self.spool.remove("00000000000W0103")  # delivered; W0105's sync carries its end
        crashed = self.crash()
        self.assertEqual(files(crashed / "messages"), [], "nothing written yet")
        with self.assertLogs("ismail.spool", "WARNING") as logs:
            spool, ids = self.restart(crashed)
        self.assertEqual(ids, sorted(q for q in texts if q != "00000000000W0103"))
        for qid in ids:
            self.assertEqual(spool.read_message(qid), b"Received: x\r\n" + texts[qid])
            self.assertEqual(spool.load(qid), entry(qid))
        self.assertEqual(sum("written again from the journal" in line for line in logs.output), 5)

    def test_a_clean_stop_writes_and_syncs_every_file(self):
        for n in range(5):
            self.put(f"00000000000W02{n:02d}")
        with mock.patch("ismail.queue.journal.os.fsync", wraps=os.fsync) as fsync:
            self.spool.close()
        self.assertGreaterEqual(fsync.call_count, 5, "each file synced on its own")
        self.assertEqual(len(self.spool.list_ids()), 5)
        self.assertEqual(self.segments(), [])
        spool, ids = self.restart(self.dir / "queue")
        self.assertEqual(len(ids), 5)

    def test_without_room_in_memory_the_file_is_written_at_once(self):
        with mock.patch.object(journal_mod, "UNWRITTEN_MAX", 100):
            self.put("00000000000W0301")  # ~150 bytes: more than the room
        self.assertTrue((self.spool.messages / "00000000000W0301.msg").exists())
        self.assertIsNone(self.spool.journal.unwritten("00000000000W0301"))
        self.assertEqual(len(read_segment(self.segments()[0].read_bytes())[0]), 1, "still journalled")

    def test_a_file_that_cannot_be_written_is_reported_and_kept_in_memory(self):
        self.put("00000000000W0401")
        with mock.patch("ismail.fsutil.write_new_file", side_effect=OSError(28, "No space left on device")):
            with self.assertLogs("ismail.spool", "ERROR") as logs:
                time.sleep(journal_mod.WRITE_AFTER + 2 * journal_mod.FLUSH_SECONDS)
        self.assertIn("No space left on device", "\n".join(logs.output))
        self.assertTrue(self.spool.exists("00000000000W0401"))
        self.assertIn(b"hello", self.spool.read_message("00000000000W0401"))
        self.assertTrue(wait_for((self.spool.messages / "00000000000W0401.msg").exists,
                                 2 * journal_mod.FLUSH_SECONDS + 5), "written once the disk has room")

    def test_delivery_racing_the_write_leaves_no_orphan_file(self):
        # The journal's thread writes files while delivery threads remove entries: an entry
        # removed halfway through its file's writing must not leave that file behind (it
        # would be sent again at the next start).
        stop = threading.Event()

        def writer():
            while not stop.is_set():
                self.spool.write_out()
        t = threading.Thread(target=writer)
        t.start()
        try:
            for n in range(300):
                qid = f"0000000000X{n:05X}"
                self.put(qid)
                if n % 7:
                    self.spool.remove(qid)
        finally:
            stop.set()
            t.join(10)
        kept = [f"0000000000X{n:05X}" for n in range(300) if not n % 7]
        self.spool.write_out()
        self.assertEqual(self.spool.list_ids(), kept)
        self.assertEqual(files(self.spool.tmp), [])


class SpareSegmentTest(SpoolCase):
    """A busy journal writes into a segment made ahead (zeros), which a crash leaves whole."""

    def test_a_busy_journal_moves_to_a_segment_made_ahead_and_it_is_recovered(self):
        with mock.patch.object(journal_mod, "SEGMENT_BYTES", 256 << 10), \
                mock.patch.object(journal_mod, "SPARE_AFTER", 2048):
            journal = self.spool.journal
            n = 0
            deadline = time.monotonic() + 10
            while journal._plain and time.monotonic() < deadline:
                self.put(f"0000000000000S{n:02X}", b"Subject: s\r\n\r\n" + b"s" * 500 + b"\r\n")
                n += 1
                time.sleep(0.01)
            self.assertFalse(journal._plain, "a segment made ahead is in use")
            segment = self.segments()[-1]
            self.assertEqual(segment.stat().st_size, len(HEADER) + (256 << 10), "its size does not grow")
            self.put("0000000000000SFF", b"Subject: last\r\n\r\nafter the switch\r\n")
            crashed = self.crash()
            self.assertFalse((crashed / "messages" / "0000000000000SFF.msg").exists(), "not written yet")
            with self.assertLogs("ismail.spool", "WARNING") as logs:
                spool, ids = self.restart(crashed)
            self.assertEqual([line for line in logs.output if "after its last whole record" in line], [],
                             "the zeros read as the end of the records")
            self.assertIn("0000000000000SFF", ids)
            self.assertEqual(len(ids), n + 1)
            self.assertIn(b"after the switch", spool.read_message("0000000000000SFF"))
        self.spool.close()
        self.assertEqual([p.name for p in (self.dir / "queue" / "journal").iterdir()], [],
                         "a clean stop leaves no segment and no spare")

    def test_a_segment_of_the_first_version_is_still_read(self):
        crashed = self.crash()
        message = b"ISMAIL-QUEUE x\r\nwhatever the file held\r\n"
        (crashed / "journal" / "000000000009.jnl").write_bytes(
            journal_mod.OLD_HEADERS[0] + journal_mod.record(b"Q", b"0000000000000V01\n", message))
        with self.assertLogs("ismail.spool", "WARNING"):
            self.restart(crashed)
        self.assertEqual((crashed / "messages" / "0000000000000V01.msg").read_bytes(), message)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


if __name__ == "__main__":
    unittest.main()
