"""Admin: the queue and the accounts, with and without a server in this process.

Real files in a temporary data folder; where it matters a real MailServer on loopback,
whose SmartHost is a closed loopback port (127.0.0.1:9), so a queued message is tried,
deferred for an hour, and never leaves the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail.admin import AccountError, Admin, FolderSummary, QueueEntry
from ismail.config import from_dict
from ismail.queue.spool import FLUSH_FILE
from ismail.queue.spool import MessageBuffer, QueuedRecipient, Spool
from ismail.service import MailServer
from ismail.store.folders import MailStore
from tests.support import free_port

DOMAINS = ["example.test"]
# The first try fails at once (nothing listens on port 9); the next is an hour away.
SETTINGS = {"server_name": "mx.example.test", "primary_domain": "example.test", "dkim": {"auto_keys": False}, "tls": {"self_signed": False},
            # No DNS-based anti-spam checks (no test may ask the machine's resolver) and no
            # connection-rate limit (load tests reconnect from one untrusted address); tests/
            # test_antispam_* turn them on, with dnsmasq.
            "antispam": {"rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off",
             "connection_rate": 0},
            "smarthost": {"enabled": True, "host": "127.0.0.1", "port": 9, "exclusive": True, "tls": "none"},
            "retry": {"first_seconds": 3600, "max_interval_seconds": 3600, "lifetime_hours": 1}}


def wait_for(condition, timeout: float = 15.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def enqueue(data_dir: Path, qid: str, next_try: float) -> None:
    """A queue entry written as the server writes one."""
    spool = Spool(data_dir / "queue")
    spool.prepare()
    body = MessageBuffer(spool.tmp)
    body.write(b"Subject: queued\r\n\r\nhello\r\n")
    entry = QueueEntry(id=qid, sender="alice@example.test", recipients=[QueuedRecipient("bob@remote.test")],
                       arrival=time.time() - 60, size=body.size, attempts=1, next_try=next_try)
    spool.enqueue(entry, b"Received: by test\r\n", body)
    body.close()


class FilesTest(unittest.TestCase):
    """No server in this process: the command line, or the window while stopped."""

    def setUp(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="ismail-admin-"))
        self.addCleanup(shutil.rmtree, self.data, True)
        self.admin = Admin(self.data)

    def test_an_empty_data_folder(self) -> None:
        self.assertEqual(self.admin.queue_ids(), [])
        self.assertEqual(self.admin.queue_list(), ([], []))
        self.assertEqual(self.admin.queue_count(), 0)
        self.assertFalse(self.admin.queue_delete("0123456789ABCDEF"))
        self.assertEqual([i.address for i in self.admin.account_list(DOMAINS)],
                         ["postmaster@example.test", "root@example.test"])

    def test_queue_list_count_and_delete(self) -> None:
        later = time.time() + 3600
        for qid in ("00000000000000B2", "00000000000000A1", "00000000000000C3"):
            enqueue(self.data, qid, later)
        self.assertEqual(self.admin.queue_ids(), ["00000000000000A1", "00000000000000B2", "00000000000000C3"])
        self.assertEqual(self.admin.queue_count(), 3)
        entries, problems = self.admin.queue_list()
        self.assertEqual(problems, [])
        self.assertEqual([e.id for e in entries], self.admin.queue_ids())
        self.assertEqual(entries[0].recipients[0].address, "bob@remote.test")
        self.assertTrue(self.admin.queue_delete("00000000000000b2"))  # typed in lower case
        messages = self.data / "queue" / "messages"
        self.assertEqual(list(messages.glob("00000000000000B2.*")), [], "no file of the entry is left")
        self.assertFalse(self.admin.queue_delete("00000000000000B2"))
        self.assertEqual(self.admin.queue_count(), 2)
        with self.assertRaises(OSError):
            self.admin.queue_entry("00000000000000B2")

    def test_an_unreadable_entry_is_reported_and_set_aside(self) -> None:
        enqueue(self.data, "00000000000000A1", 0.0)
        messages = self.data / "queue" / "messages"
        (messages / "00000000000000B2.json").write_text("{ not json")
        (messages / "00000000000000B2.eml").write_bytes(b"x")
        with self.assertLogs("ismail.spool", "ERROR"):
            entries, problems = self.admin.queue_list()
        self.assertEqual([e.id for e in entries], ["00000000000000A1"])
        self.assertEqual(len(problems), 1)
        self.assertIn("00000000000000B2", problems[0])
        self.assertIn("corrupt", problems[0])
        self.assertEqual(len(list((self.data / "queue" / "corrupt").iterdir())), 2)

    def test_flush_leaves_the_flush_file_and_marks_the_entries_given(self) -> None:
        later = time.time() + 3600
        enqueue(self.data, "00000000000000A1", later)
        enqueue(self.data, "00000000000000B2", later)
        self.admin.queue_flush()  # as the window does: the file only, no entry rewritten
        self.assertTrue((self.data / "queue" / FLUSH_FILE).exists())
        self.assertEqual([e.next_try for e in self.admin.queue_list()[0]], [later, later])
        (self.data / "queue" / FLUSH_FILE).unlink()
        entries, _ = self.admin.queue_list()
        self.admin.queue_flush(entries[:1])  # as the command line does, with every entry
        self.assertTrue((self.data / "queue" / FLUSH_FILE).exists())
        self.assertEqual([e.next_try for e in self.admin.queue_list()[0]], [0.0, later])

    def test_flush_creates_the_queue_folder_of_a_fresh_data_folder(self) -> None:
        self.admin.queue_flush()
        self.assertTrue((self.data / "queue" / FLUSH_FILE).exists())

    def test_accounts(self) -> None:
        info = self.admin.account_add("Ann@Example.test", "pw1", DOMAINS)
        self.assertEqual(info.address, "ann@example.test")
        self.assertTrue((self.data / "mailboxes" / "example.test" / "ann" / "new").is_dir())
        listed = {i.address: i for i in self.admin.account_list(DOMAINS)}
        self.assertEqual(sorted(listed), ["ann@example.test", "postmaster@example.test", "root@example.test"])
        self.assertTrue(listed["ann@example.test"].has_password)
        self.assertFalse(listed["postmaster@example.test"].has_password)
        self.admin.account_passwd("ann@example.test", "pw2")
        self.assertTrue(self.admin.account_store.check_password("ann@example.test", "pw2"))
        self.admin.account_forward("ann@example.test", ["friend@example.org"])
        saved = json.loads((self.data / "accounts.json").read_text())["accounts"]
        self.assertEqual(saved["ann@example.test"]["forward"], ["friend@example.org"])
        self.admin.account_forward("ann@example.test", [])
        self.assertEqual(self.admin.account_list(DOMAINS)[0].forward, [])
        with self.assertRaises(AccountError):
            self.admin.account_add("bob@elsewhere.org", "pw", DOMAINS)
        with self.assertRaises(AccountError):
            self.admin.account_remove("postmaster@example.test")
        self.admin.account_remove("ann@example.test")
        self.assertNotIn("ann@example.test", [i.address for i in self.admin.account_list(DOMAINS)])
        self.assertTrue((self.data / "mailboxes" / "example.test" / "ann").is_dir())  # mail is kept

    def test_a_change_by_another_process_is_seen_by_the_next_list(self) -> None:
        self.assertEqual(len(self.admin.account_list(DOMAINS)), 2)
        Admin(self.data).account_add("carl@example.test", "pw", DOMAINS)  # another process's admin
        self.assertIn("carl@example.test", [i.address for i in self.admin.account_list(DOMAINS)])

    def test_a_broken_accounts_file_is_reported_and_left_alone(self) -> None:
        path = self.data / "accounts.json"
        path.write_text("{ this is not json")
        for call in (self.admin.check_accounts, lambda: self.admin.account_list(DOMAINS),
                     lambda: self.admin.account_add("new@example.test", "pw", DOMAINS)):
            with self.assertRaises(AccountError) as caught:
                call()
            self.assertIn("accounts.json", str(caught.exception))
        self.assertEqual(path.read_text(), "{ this is not json")


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root`` with its size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.stat(path)
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found


def put(folder: Path, count: int, body: bytes, sized: bool = True, sub: str = "cur", start: int = 0) -> None:
    """``count`` message files as a delivery leaves them; ``sized``: with ISMail's ",S=..,W=.." in the name."""
    crlf = len(body) + body.count(b"\n")
    for i in range(start, start + count):
        name = f"{1717000000 + i}.M{i}P7Q{i}.host" + (f",S={len(body)},W={crlf}" if sized else "")
        (folder / sub / (name + (":2,S" if sub == "cur" else ""))).write_bytes(body)


class FoldersTest(unittest.TestCase):
    """Admin.account_folders: what Settings > Accounts shows of an account's folders."""

    BODY = b"Subject: hello\n\nthree\nshort\nlines\n"
    DISK, CRLF = len(BODY), len(BODY) + BODY.count(b"\n")  # 34 bytes on disk, 39 as mail programs count

    def setUp(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="ismail-admin-"))
        self.addCleanup(shutil.rmtree, self.data, True)
        self.admin = Admin(self.data)
        self.mailbox = self.admin.account_add("ann@example.test", "pw1", DOMAINS).mailbox

    def test_folders_with_counts_and_crlf_sizes(self) -> None:
        store = MailStore(self.mailbox)
        for name in ("Archive/2024", "Sent"):
            store.create(name)
        put(self.mailbox, 3, self.BODY)
        put(self.mailbox, 2, self.BODY, sub="new", start=3)
        put(store.path("Archive/2024"), 4, self.BODY)
        self.assertEqual(self.admin.account_folders("Ann@Example.test"), [
            FolderSummary("INBOX", 5, 5 * self.CRLF), FolderSummary("Archive", 0, 0),
            FolderSummary("Archive/2024", 4, 4 * self.CRLF), FolderSummary("Sent", 0, 0)])
        self.assertEqual(self.admin.account_folders("root@example.test"), [("INBOX", 0, 0)])  # postmaster's

    def test_the_same_figures_as_status_without_changing_anything(self) -> None:
        store = MailStore(self.mailbox)
        store.create("Imported")
        put(self.mailbox, 5, self.BODY)
        put(store.path("Imported"), 6, self.BODY, sized=False, sub="new")  # a foreign Maildir's names
        before = files_of(self.mailbox)
        looked = self.admin.account_folders("ann@example.test")
        self.assertEqual(files_of(self.mailbox), before, "a look changed the mailbox")
        for folder in ("", ".Imported"):
            self.assertFalse((self.mailbox / folder / "ismail-uidlist").exists(), "UIDs were handed out")
        # Never opened and no size in the names: the size on disk, without reading the files.
        self.assertEqual(looked, [("INBOX", 5, 5 * self.CRLF), ("Imported", 6, 6 * self.DISK)])
        # Once a session has opened the folder, the index has the CRLF sizes: the look agrees with STATUS.
        status = {name: store.status(name) for name in ("INBOX", "Imported")}
        self.assertTrue((self.mailbox / ".Imported" / "ismail-uidlist").exists())  # status() hands out UIDs
        self.assertEqual(self.admin.account_folders("ann@example.test"),
                         [(name, s.messages, s.size) for name, s in status.items()])

    def test_a_mailbox_never_made_is_an_empty_inbox_and_stays_unmade(self) -> None:
        mailbox = self.data / "mailboxes" / "example.test" / "postmaster"
        self.assertFalse(mailbox.exists())
        self.assertEqual(self.admin.account_folders("postmaster@example.test"), [("INBOX", 0, 0)])
        self.assertFalse(mailbox.exists())

    def test_an_unknown_account(self) -> None:
        for address in ("nobody@example.test", "not an address"):
            with self.assertRaises(AccountError):
                self.admin.account_folders(address)

    def test_ten_thousand_messages_stay_quick(self) -> None:
        store = MailStore(self.mailbox)
        store.create("Big")
        put(self.mailbox, 10_000, self.BODY)
        put(store.path("Big"), 10_000, self.BODY, sized=False)
        started = time.perf_counter()
        looked = self.admin.account_folders("ann@example.test")
        took = time.perf_counter() - started
        self.assertEqual(looked, [("INBOX", 10_000, 10_000 * self.CRLF), ("Big", 10_000, 10_000 * self.DISK)])
        # A few hundredths of a second here (status() takes several times longer and writes
        # the index); the bound leaves room for a slow, busy test machine.
        self.assertLess(took, 3.0)


class RunningServerTest(unittest.TestCase):
    """A MailServer in this process: the window after Start."""

    def setUp(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="ismail-admin-"))
        self.addCleanup(shutil.rmtree, self.data, True)
        settings, _ = from_dict({**SETTINGS, "listen": [f"127.0.0.1:{free_port()}"],
                                 "pop3": {"enabled": False}})
        self.server = MailServer(settings, self.data)
        self.server.start()
        self.addCleanup(self.server.stop, 2.0)
        self.admin = Admin(self.data, self.server)

    def deferred(self) -> str:
        """A message for a remote address, tried once and deferred for an hour."""
        qid = self.server.inject("alice@example.test", ["bob@remote.test"], b"Subject: t\r\n\r\nx\r\n")
        wait_for(lambda: self.admin.queue_entry(qid).attempts == 1, what="the first attempt")
        return qid

    def test_accounts_are_the_servers_and_count_at_once(self) -> None:
        self.assertIs(self.admin.account_store, self.server.accounts)
        self.admin.account_add("dora@example.test", "pw", DOMAINS)
        # The server's own store: no reload interval to wait for.
        self.assertIsNotNone(self.server.lookup_mailbox("dora", "example.test"))
        self.admin.account_forward("dora@example.test", ["postmaster@example.test"])
        self.assertEqual(self.server.lookup_forwards("dora", "example.test"), ["postmaster@example.test"])
        self.admin.account_remove("dora@example.test")
        self.assertIsNone(self.server.lookup_mailbox("dora", "example.test"))

    def test_delete_takes_the_message_from_the_queue_manager_too(self) -> None:
        qid = self.deferred()
        self.assertEqual(self.admin.queue_count(), 1)
        self.assertEqual(self.admin.queue_ids(), [qid])
        self.assertTrue(self.admin.queue_delete(qid))
        self.assertEqual(self.server.qmgr.entries(), [])
        self.assertEqual(self.admin.queue_ids(), [])
        self.assertEqual(self.admin.queue_count(), 0)

    def test_a_message_on_its_way_is_listed_here_at_once_and_elsewhere_soon(self) -> None:
        # A SmartHost that takes the connection and never answers: the message stays on its
        # way (its first attempt under way), and has no file of its own yet.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        self.addCleanup(silent.close)
        settings, _ = from_dict({**SETTINGS, "listen": self.server.settings.listen,
                                 "pop3": {"enabled": False},
                                 "smarthost": {**SETTINGS["smarthost"], "port": silent.getsockname()[1]}})
        self.server.apply(settings)
        first = self.server.inject("alice@example.test", ["bob@remote.test"], b"Subject: 1\r\n\r\nx\r\n")
        started = time.monotonic()
        wait_for(lambda: Admin(self.data).queue_ids() == [first], timeout=5.0,
                 what="`queue list` in another process to list it")
        self.assertGreater(time.monotonic() - started, 0.5, "not written at once: it might have left")
        second = self.server.inject("alice@example.test", ["bob@remote.test"], b"Subject: 2\r\n\r\nx\r\n")
        self.assertEqual(sorted(self.admin.queue_ids()), sorted([first, second]),
                         "the window lists the newest at once")
        self.assertEqual(self.admin.queue_entry(second).sender, "alice@example.test")
        self.assertTrue(all(e.attempts == 0 for e in self.server.qmgr.entries()), "still on their first attempt")

    def test_flush_retries_now_without_a_flush_file(self) -> None:
        qid = self.deferred()
        self.admin.queue_flush()
        self.assertFalse((self.data / "queue" / FLUSH_FILE).exists())
        wait_for(lambda: self.admin.queue_entry(qid).attempts == 2, what="the retry after the flush")

    def test_retry_now_while_a_message_is_being_tried_tries_it_again_after(self) -> None:
        # "Retry now" pressed while an attempt is under way (say against a server the user
        # has just brought back): if that attempt defers the message, it goes again at once,
        # not in an hour.  Here the flush comes after the attempt deferred the message and
        # saved its state, before the attempt ends.
        saved, go = threading.Event(), threading.Event()
        save = self.server.spool.save

        def slow_save(entry: QueueEntry) -> None:
            save(entry)
            saved.set()
            go.wait(10)
        with mock.patch.object(self.server.spool, "save", slow_save):
            qid = self.server.inject("alice@example.test", ["bob@remote.test"], b"Subject: t\r\n\r\nx\r\n")
            self.assertTrue(saved.wait(15), "the first attempt did not end")
            self.assertEqual(self.admin.queue_entry(qid).attempts, 1)
            self.admin.queue_flush()
            go.set()
            wait_for(lambda: self.admin.queue_entry(qid).attempts == 2, what="the retry after the flush")

    def test_the_flush_file_reaches_a_server_this_admin_does_not_hold(self) -> None:
        qid = self.deferred()
        Admin(self.data).queue_flush()  # as `ismail queue flush` does from another process
        wait_for(lambda: self.admin.queue_entry(qid).attempts == 2, what="the retry after the flush file")
        self.assertFalse((self.data / "queue" / FLUSH_FILE).exists())  # the server took it

    def test_a_stopped_server_leaves_the_files(self) -> None:
        self.server.stop(1.0)
        self.assertIsNot(self.admin.account_store, self.server.accounts)
        self.admin.account_add("erin@example.test", "pw", DOMAINS)
        self.assertIn("erin@example.test", [i.address for i in Admin(self.data).account_list(DOMAINS)])
        self.admin.queue_flush()
        self.assertTrue((self.data / "queue" / FLUSH_FILE).exists())


if __name__ == "__main__":
    unittest.main()
