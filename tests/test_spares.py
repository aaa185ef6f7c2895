"""Files made ahead for local deliveries (ismail/store/spares.py): handed out empty, used
for real messages, removed at a stop, what a crash left removed at a start, and a
folder that cannot be used costs a warning, never a message."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import smtplib
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail.service import MailServer
from ismail.store import spares
from ismail.store.spares import SpareFiles
from tests.test_receiver import USER, ReceiverTestCase, maildir_files

OTHER = "other@example.test"


def take_within(pool: SpareFiles, seconds: float = 10.0) -> Path:
    """The next file the pool hands out, waiting (bounded) for its thread to make some."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = pool.take()
        if path is not None:
            return path
        time.sleep(0.01)
    raise AssertionError(f"no file made ahead within {seconds} s")


class PoolTest(unittest.TestCase):
    def setUp(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="ismail-spares-"))
        self.addCleanup(shutil.rmtree, self.data, True)
        self.boxes = self.data / "mailboxes"

    def pool(self) -> SpareFiles:
        pool = SpareFiles.for_server(self.data, self.boxes)
        self.assertIsNotNone(pool)
        self.addCleanup(pool.close)
        return pool

    def test_files_are_made_ahead_in_two_folders_and_handed_out_empty_and_once(self) -> None:
        pool = self.pool()
        self.assertIsNone(pool.take(), "nothing is made before the first file is asked for")
        taken = [take_within(pool) for _ in range(3 * spares.BATCH)]
        self.assertEqual(len(set(taken)), len(taken), "a file was handed out twice")
        for path in taken:
            self.assertIn(path.parent, pool.folders)
            self.assertEqual(path.stat().st_size, 0, path)
        self.assertEqual({p.parent for p in taken}, set(pool.folders),
                         "the two folders take turns")
        self.assertGreaterEqual(pool.made, len(taken))

    def test_a_clean_stop_removes_the_files_and_the_folders(self) -> None:
        pool = self.pool()
        used = take_within(pool)
        used.write_bytes(b"a message renamed away later")
        ready = [p for folder in pool.folders for p in folder.iterdir() if p != used]
        self.assertTrue(ready, "files waiting to be taken")
        pool.close()
        self.assertFalse((self.data / "queue" / "spare").exists())

    def test_a_start_removes_what_a_crash_left(self) -> None:
        for name, text in (("a", b""), ("b", b"half a message\n")):
            folder = self.data / "queue" / "spare" / name
            folder.mkdir(parents=True)
            (folder / "1796580000.M1P1Q1.host").write_bytes(text)
        pool = self.pool()
        for folder in pool.folders:
            self.assertEqual(list(folder.iterdir()), [], folder)

    def test_a_folder_that_cannot_be_used_costs_a_warning_and_takes_give_none(self) -> None:
        pool = self.pool()
        shutil.rmtree(pool.folders[1])
        pool.folders[1].write_bytes(b"")  # a file where the folder should be
        with self.assertLogs("ismail.spares", logging.WARNING) as logged:
            self.assertIsNone(pool.take())
            deadline = time.monotonic() + 10
            while not logged.records and time.monotonic() < deadline:
                time.sleep(0.01)
        self.assertIn("could not make a file ahead", logged.output[0])
        self.assertIsNone(pool.take())

    def test_no_pool_when_the_mailboxes_are_on_another_file_system(self) -> None:
        real_stat = Path.stat

        def stat(path, *args, **kwargs):
            st = real_stat(path, *args, **kwargs)
            if path == self.boxes:
                return os.stat_result((st.st_mode, st.st_ino, st.st_dev + 1, *tuple(st)[3:]))
            return st
        with mock.patch.object(Path, "stat", stat), self.assertLogs("ismail.spares", logging.INFO):
            self.assertIsNone(SpareFiles.for_server(self.data, self.boxes))
        self.assertFalse((self.data / "queue" / "spare").exists())


class DeliveryTest(ReceiverTestCase):
    """A real server: the messages land in the files made ahead, whole, and a stop
    leaves no spare file behind."""

    def start(self) -> MailServer:
        return self.start_inprocess(accounts=(USER, OTHER))

    def send(self, n: int, recipients: list[str]) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as client:
            client.sendmail("a@example.test", recipients,
                            f"Subject: spare {n}\r\n\r\nbody of message {n}\r\n".encode())

    def spare_inodes(self, ms: MailServer, wanted: int) -> set[int]:
        """The inodes of the files in the pool's folders, once ``wanted`` can be taken."""
        deadline = time.monotonic() + 10
        while ms.spares.ready < wanted:
            if time.monotonic() > deadline:
                self.fail(f"fewer than {wanted} files made ahead within 10 s")
            time.sleep(0.01)
        return {p.stat().st_ino for folder in ms.spares.folders for p in folder.iterdir()}

    def test_messages_are_written_into_files_made_ahead_and_a_stop_removes_the_rest(self) -> None:
        ms = self.start()
        self.assertIsNotNone(ms.spares)
        self.send(0, [USER])  # the first local message starts the pool
        before = self.spare_inodes(ms, 4)
        for n in range(1, 4):
            self.send(n, [USER])
        files = maildir_files(self.data_dir)
        self.assertEqual(len(files), 4)
        bodies = sorted(f.read_bytes().split(b"\n\n", 1)[1] for f in files)
        self.assertEqual(bodies, [f"body of message {n}\n".encode() for n in range(4)])
        made_ahead = [f for f in files if f.stat().st_ino in before]
        self.assertEqual(len(made_ahead), 3, "the three messages after the first took files made ahead")
        ms.stop(5.0)
        self.assertFalse((self.data_dir / "queue" / "spare").exists())
        self.assertEqual(len(maildir_files(self.data_dir)), 4)

    def test_a_disk_full_while_writing_into_one_gets_452_and_leaves_nothing(self) -> None:
        ms = self.start()
        self.send(0, [USER])
        self.spare_inodes(ms, 2)
        taken = ms.spares.taken
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def half_then_full(fd, chunks):  # part of the text, then: disk full
            data = b"".join(chunks)
            os.write(fd, data[:len(data) // 2])
            raise full

        def new_file_half_then_full(path, chunks, sync=True):  # the way back: tmp/, as full
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                half_then_full(fd, chunks)
            finally:
                os.close(fd)
        logger = logging.getLogger("ismail")
        with mock.patch("ismail.store.spares.write_chunks", half_then_full), \
                mock.patch("ismail.store.maildir.write_new_file", new_file_half_then_full), \
                self.assertLogs(logger, logging.ERROR) as logged:
            with self.assertRaises(smtplib.SMTPDataError) as refused:
                self.send(1, [USER])
        self.assertTrue(any("No space left on device" in line for line in logged.output), logged.output)
        self.assertFalse(any("queue journal" in line for line in logged.output), "the journal took no harm")
        self.errors.records.clear()  # the failure is logged as an error: expected here
        self.assertEqual(refused.exception.smtp_code, 452)
        self.assertEqual(ms.spares.taken, taken + 1, "the message went to a file made ahead")
        self.assertEqual(len(maildir_files(self.data_dir)), 1, "only the message before it")
        box = self.data_dir / "mailboxes" / "example.test" / "user"
        self.assertEqual(list((box / "tmp").iterdir()), [], "half a message left in tmp/")
        sizes = {p.stat().st_size for folder in ms.spares.folders for p in folder.iterdir()}
        self.assertLessEqual(sizes, {0}, "half a message left among the files made ahead")
        self.send(2, [USER])  # space is back
        self.assertEqual(len(maildir_files(self.data_dir)), 2)

    def test_a_file_made_ahead_serves_two_mailboxes_and_is_not_left_behind(self) -> None:
        ms = self.start()
        self.send(0, [USER])
        self.spare_inodes(ms, 2)
        taken = ms.spares.taken
        self.send(1, [USER, OTHER])
        self.assertEqual(ms.spares.taken, taken + 1)
        mine = [f for f in maildir_files(self.data_dir) if b"message 1" in f.read_bytes()]
        theirs = maildir_files(self.data_dir, OTHER)
        self.assertEqual(len(mine), 1)
        self.assertEqual(len(theirs), 1)
        self.assertEqual(mine[0].read_bytes(), theirs[0].read_bytes())
        self.assertEqual(theirs[0].stat().st_nlink, 2, "one file linked into both mailboxes")


if __name__ == "__main__":
    unittest.main()
