"""Folders, flags and persistent UIDs on an account's Maildir (ismail.store.folders).

The store is driven the way an IMAP session, SMTP delivery and POP3 will drive it:
several views of one folder at once, mail arriving through maildir.deliver, POP3
renaming new/ -> cur/ and deleting behind the views' backs, a child process killed
with SIGKILL in the middle of appends, copies, moves and expunges, and a folder of
100,000 messages (the times are printed, not asserted).
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail.queue.spool import MessageBuffer
from ismail.store import folders_names, maildir, utf7
from ismail.store.folders import (Changes, FolderError, FolderExists, KeywordLimit, MailStore,
                                  NoSuchFolder, NoSuchMessage, UidValidityChanged)
from ismail.store.folders_box import Box
from ismail.store.folders_flags import INFO_SEP
from ismail.store.uidlist import CorruptIndex, parse

from tests.support import recorded_syncs

ROOT = Path(__file__).resolve().parent.parent
MSG = b"From: a@example.test\r\nSubject: hello\r\n\r\nline one\r\nline two\r\n"


def deliver(root: Path, data: bytes) -> Path:
    """A message arriving over SMTP, written the way the receiver writes it."""
    buf = MessageBuffer(root / "tmp")
    buf.write(data)
    try:
        return maildir.deliver([root], b"", buf)[0]
    finally:
        buf.close()


def age_dirs(*paths: Path, seconds: float = 60) -> None:
    """Put directory mtimes in the past, as on a folder nobody touched for a while."""
    then = time.time() - seconds
    for p in paths:
        os.utime(p, (then, then))


class StoreCase(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-folders-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.root = self.dir / "mailboxes" / "example.test" / "user"
        self.store = MailStore(self.root)


class Utf7Test(unittest.TestCase):
    def test_rfc3501_example_round_trips(self):
        text = "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"
        self.assertEqual(utf7.encode(text), "~peter/mail/&U,BTFw-/&ZeVnLIqe-")
        self.assertEqual(utf7.decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-"), text)

    def test_ampersand_umlauts_and_astral_characters(self):
        for text, wire in [("a&b", "a&-b"), ("Entw\u00fcrfe", "Entw&APw-rfe"), ("&", "&-"),
                           ("\U0001F600", "&2D3eAA-"), ("", "")]:
            self.assertEqual(utf7.encode(text), wire)
            self.assertEqual(utf7.decode(wire), text)

    def test_malformed_spellings_are_refused(self):
        for bad in ["&", "&U,BTFw", "&AGE-",          # unterminated; "a" hidden in base64
                    "&U,BTFw-&ZeVnLIqe-",             # two runs where encode makes one
                    "&2D3-", "&U,BTF-", "&U,B-",       # lone surrogate, bad lengths
                    "&U/BTFw-", "Entw\u00fcrfe", "a\tb", "&APx-"]:  # "/" not ","; raw 8-bit; stray bits
            with self.assertRaises(ValueError, msg=bad):
                utf7.decode(bad)


class NameTest(unittest.TestCase):
    def test_directory_names(self):
        for name, entry in [("Sent", ".Sent"), ("Work/2024", ".Work.2024"),
                            ("Entw\u00fcrfe", ".Entw&APw-rfe"), ("v1.2", ".v1%2E2"),
                            ("a:b?", ".a%3Ab%3F"), ("100%", ".100%25"), ("INBOX/Lists", ".INBOX.Lists")]:
            self.assertEqual(folders_names.dirname(name), entry)
            self.assertEqual(folders_names.from_dirname(entry), name)

    def test_inbox_in_any_case(self):
        self.assertEqual(folders_names.normalize("inbox"), "INBOX")
        self.assertEqual(folders_names.normalize("Inbox/Lists"), "INBOX/Lists")
        self.assertEqual(folders_names.normalize("Work/inbox"), "Work/inbox")

    def test_bad_names_say_why(self):
        cases = {"": "empty", "/a": "start or end", "a/": "start or end", "a//b": "empty level",
                 "..": "not a folder name", "a/../b": "not a folder name", "a/./b": "not a folder name",
                 "CON": "device", "Work/nul.txt": "device", "com1": "device", "LPT9/x": "device",
                 "a ": "space", "a\nb": "control", "a\x00": "control", "x" * 300: "too long"}
        for name, reason in cases.items():
            with self.assertRaises(ValueError, msg=name) as ctx:
                folders_names.normalize(name)
            self.assertIn(reason, str(ctx.exception), name)

    def test_no_name_leaves_the_account_directory(self):
        store_root = Path(tempfile.mkdtemp(prefix="ismail-names-"))
        self.addCleanup(shutil.rmtree, store_root, ignore_errors=True)
        store = MailStore(store_root)
        for name in ["../x", "a/../../b", "..\\x", "a\\..\\..", "C:\\x", "/etc", "~/x", ".hidden"]:
            try:
                path = store.path(name)
            except ValueError:
                continue
            self.assertEqual(path.parent, store_root, name)
            self.assertTrue(path.name.startswith("."), name)
            self.assertNotIn("..", path.name, name)

    def test_foreign_directories_are_not_folders(self):
        for entry in [".", "..", ".a%2", ".a%2e", ".&AGE-", ".CON", ".INBOX", ".a..b"]:
            with self.assertRaises(ValueError, msg=entry):
                folders_names.from_dirname(entry)


class MailStoreTest(StoreCase):
    def test_special_folders_are_made_once_and_subscribed(self):
        self.assertEqual(self.store.ensure_special(), ["Sent", "Drafts", "Trash", "Junk"])
        self.assertEqual(self.store.ensure_special(), [])
        infos = self.store.list()
        self.assertEqual([i.name for i in infos], ["INBOX", "Drafts", "Junk", "Sent", "Trash"])
        self.assertEqual({i.name: i.special for i in infos},
                         {"INBOX": None, "Drafts": "\\Drafts", "Junk": "\\Junk", "Sent": "\\Sent",
                          "Trash": "\\Trash"})
        self.assertTrue(all(i.subscribed for i in infos))
        for name in ("Sent", "Drafts", "Trash", "Junk"):
            self.assertTrue((self.root / f".{name}" / "maildirfolder").is_file())
            for sub in ("new", "cur", "tmp"):
                self.assertTrue((self.root / f".{name}" / sub).is_dir())

    def test_special_folders_are_durable_when_made(self):
        """Each folder is synced before it is renamed into place, and the account's folder
        after the last rename (the folders and the subscriptions file), so a power cut
        after the login loses none of them."""
        with recorded_syncs(self) as events:
            self.assertEqual(self.store.ensure_special(), ["Sent", "Drafts", "Trash", "Junk"])
        renames = [i for i, e in enumerate(events) if e[0] == "rename"]
        self.assertEqual(sorted(e[2].name for e in events if e[0] == "rename"),
                         [".Drafts", ".Junk", ".Sent", ".Trash", "subscriptions"])
        for i in renames:  # a folder built under a private name, or the new subscriptions file
            self.assertIn(("sync", events[i][1].resolve()), events[:i],
                          f"{events[i][2].name} not synced before its rename")
        self.assertEqual(events[-1], ("sync", self.root.resolve()), "the account's folder is not synced last")
        self.assertEqual(sum(1 for e in events if e[0] == "sync"), 6)
        self.assertEqual(self.store.subscriptions(), ["INBOX", "Sent", "Drafts", "Trash", "Junk"])

    def test_special_folders_made_before_a_failure_are_kept_and_recorded(self):
        real_make = MailStore._make

        def make(store, name, sync_root=True):
            if name == "Trash":
                raise FolderError("could not create folder Trash: No space left on device")
            return real_make(store, name, sync_root)
        with recorded_syncs(self) as events, mock.patch.object(MailStore, "_make", make):
            with self.assertRaises(FolderError):
                self.store.ensure_special()
        self.assertTrue(self.store.exists("Sent") and self.store.exists("Drafts"))
        self.assertEqual(self.store.subscriptions(), ["INBOX", "Sent", "Drafts"])
        self.assertEqual(events[-1], ("sync", self.root.resolve()), "the folders made are not recorded")
        self.assertEqual(self.store.ensure_special(), ["Trash", "Junk"])  # the next login
        self.assertEqual(self.store.subscriptions(), ["INBOX", "Sent", "Drafts", "Trash", "Junk"])

    def test_a_users_own_spelling_of_a_special_folder_is_kept(self):
        self.store.create("sent")  # made by a mail program before the first login here
        self.assertEqual(self.store.ensure_special(), ["Drafts", "Trash", "Junk"])
        self.assertEqual(self.store.ensure_special(), [])
        self.assertEqual([i.name for i in self.store.list()], ["INBOX", "Drafts", "Junk", "Trash", "sent"])
        self.assertEqual(self.store.subscriptions(), ["INBOX", "Drafts", "Trash", "Junk"])

    def test_user_unsubscribe_survives_ensure_special(self):
        self.store.ensure_special()
        self.store.unsubscribe("Junk")
        self.store.ensure_special()
        self.assertFalse({i.name: i for i in self.store.list()}["Junk"].subscribed)

    def test_create_makes_parents_and_names_are_ascii_on_disk(self):
        self.store.create("Work/2024/Q1")
        self.store.create("\u53f0\u5317")
        infos = {i.name: i for i in self.store.list()}
        self.assertEqual(sorted(infos), ["INBOX", "Work", "Work/2024", "Work/2024/Q1", "\u53f0\u5317"])
        self.assertTrue(infos["Work"].has_children and infos["Work/2024"].has_children)
        self.assertFalse(infos["Work/2024/Q1"].has_children or infos["INBOX"].has_children)
        self.assertTrue((self.root / ".Work.2024.Q1" / "maildirfolder").is_file())
        self.assertTrue((self.root / ".&U,BTFw-").is_dir())
        self.assertTrue(all(p.name.isascii() for p in self.root.iterdir()))
        self.assertFalse([p for p in self.root.iterdir() if p.name.startswith("ismail-new-")])

    def test_create_refuses_existing_names_in_any_case(self):
        self.store.create("Work")
        for name in ("Work", "work", "WORK", "INBOX", "inbox"):
            with self.assertRaises(FolderExists, msg=name):
                self.store.create(name)
        with self.assertRaises(ValueError):
            self.store.create("Work//x")

    def test_delete(self):
        self.store.create("Work/2024")
        with self.assertRaises(FolderError):
            self.store.delete("INBOX")
        with self.assertRaises(FolderError) as ctx:
            self.store.delete("Work")
        self.assertIn("sub-folders", str(ctx.exception))
        self.store.open("Work/2024").append(MSG)
        self.store.delete("Work/2024")
        self.store.delete("Work")
        with self.assertRaises(NoSuchFolder):
            self.store.delete("Work")
        with self.assertRaises(NoSuchFolder):
            self.store.open("Work/2024")
        self.assertEqual([i.name for i in self.store.list()], ["INBOX"])
        self.assertFalse([p for p in self.root.iterdir() if p.name.startswith("ismail-deleted-")])

    def test_deleted_and_recreated_folder_has_a_new_uidvalidity(self):
        self.store.create("Work")
        old = self.store.status("Work").uidvalidity
        self.store.delete("Work")
        self.store.create("Work")
        self.assertGreater(self.store.status("Work").uidvalidity, old)

    def test_rename_takes_children_and_subscriptions_along(self):
        self.store.create("Work/2024")
        self.store.subscribe("Work/2024")
        folder = self.store.open("Work/2024")
        uid = folder.append(MSG, ["\\Flagged"])
        validity = folder.uidvalidity
        self.store.rename("Work", "Jobs/Old")
        self.assertEqual([i.name for i in self.store.list()],
                         ["INBOX", "Jobs", "Jobs/Old", "Jobs/Old/2024"])
        moved = self.store.open("Jobs/Old/2024")
        self.assertEqual((moved.uidvalidity, [m.uid for m in moved.messages]), (validity, [uid]))
        self.assertEqual(self.store.subscriptions(), ["Jobs/Old/2024"])
        with self.assertRaises(NoSuchFolder):
            folder.refresh()
        with self.assertRaises(NoSuchFolder):
            self.store.rename("Work", "X")
        self.store.create("Other")
        with self.assertRaises(FolderExists):
            self.store.rename("Jobs", "other")
        for inside in ("Jobs/Sub", "jobs/old/2024"):
            with self.assertRaises(FolderError, msg=inside):
                self.store.rename("Jobs", inside)
        self.store.rename("Jobs", "jobs")  # only the case changes
        self.assertIn("jobs/Old/2024", [i.name for i in self.store.list()])

    def test_rename_inbox_moves_its_messages_and_leaves_it_empty(self):
        self.store.create("INBOX/Lists")
        inbox = self.store.open("INBOX")
        uids = [inbox.append(MSG), inbox.append(MSG + b"2\r\n", ["\\Seen"])]
        deliver(self.root, b"Subject: third\r\n\r\n")
        inbox.refresh()
        self.store.rename("INBOX", "Old mail")
        old = self.store.open("Old mail")
        self.assertEqual(len(old.messages), 3)
        self.assertEqual([m.flags for m in old.messages][:2], [frozenset(), frozenset({"\\Seen"})])
        changes = inbox.refresh()
        self.assertEqual(changes.expunged, uids + [3])
        self.assertEqual(inbox.messages, [])
        self.assertEqual(self.store.status("INBOX").messages, 0)
        self.assertGreater(self.store.status("INBOX").uidnext, 3)  # INBOX's UIDs stay used
        self.assertIn("INBOX/Lists", [i.name for i in self.store.list()])

    def test_subscriptions_file(self):
        self.store.subscribe("Lists/python")  # need not exist
        self.store.subscribe("Entw\u00fcrfe")
        self.store.subscribe("Entw\u00fcrfe")
        self.store.unsubscribe("Lists/python")
        self.assertEqual((self.root / "subscriptions").read_text("utf-8"), "Entw\u00fcrfe\n")
        self.assertEqual(MailStore(self.root).subscriptions(), ["Entw\u00fcrfe"])

    def test_status(self):
        self.store.create("Work")
        folder = self.store.open("Work")
        folder.append(MSG, ["\\Seen"])
        folder.append(MSG + b"x\n")
        st = self.store.status("Work")
        self.assertEqual((st.messages, st.recent, st.uidnext, st.unseen, st.size),
                         (2, 2, 3, 1, 2 * len(MSG) + 3))
        self.assertEqual(folder.refresh().added[0].uid, 1)
        self.assertEqual(folder.claim_recent(), [1, 2])
        self.assertEqual(self.store.open("Work").claim_recent(), [])  # only one session gets them
        self.assertEqual(self.store.status("Work").recent, 0)


class FlagTest(StoreCase):
    def test_first_flag_change_moves_a_message_from_new_to_cur(self):
        path = deliver(self.root, b"Subject: x\r\n\r\nbody\r\n")
        inbox = self.store.open("INBOX")
        [ref] = inbox.messages
        self.assertEqual((ref.subdir, ref.flags), (self.root / "new", frozenset()))
        [ref] = inbox.store_flags([ref.uid], ["\\seen", "\\Recent"], "add")
        self.assertEqual(ref.flags, {"\\Seen"})
        self.assertFalse(path.exists())
        self.assertEqual(ref.path, self.root / "cur" / f"{path.name}{INFO_SEP}2,S")
        self.assertEqual(inbox.refresh(), Changes())  # its own change is not reported again

    def test_letters_and_keywords_in_file_names(self):
        inbox = self.store.open("INBOX")
        uid = inbox.append(MSG)
        inbox.refresh()  # a view takes in its own appends on refresh, as new mail
        [ref] = inbox.store_flags([uid], ["\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "\\Seen",
                                          "$Forwarded", "Work"], "set")
        self.assertTrue(ref.filename.endswith(INFO_SEP + "2,DFRSTab"))
        self.assertEqual((self.root / "dovecot-keywords").read_text(), "0 $Forwarded\n1 Work\n")
        [ref] = inbox.store_flags([uid], ["work", "\\Deleted"], "remove")  # keywords match in any case
        self.assertEqual(ref.flags, {"\\Answered", "\\Flagged", "\\Draft", "\\Seen", "$Forwarded"})
        self.assertTrue(ref.filename.endswith(INFO_SEP + "2,DFRSa"))
        [ref] = inbox.store_flags([uid], ["WORK"], "add")
        self.assertIn("Work", ref.flags)  # the spelling first used
        self.assertEqual(inbox.keywords, ["$Forwarded", "Work"])
        with self.assertRaises(ValueError):
            inbox.store_flags([uid], ["\\Bogus"], "add")
        with self.assertRaises(ValueError):
            inbox.store_flags([uid], ["two words"], "add")
        with self.assertRaises(ValueError):
            inbox.store_flags([uid], ["\\Seen"], "toggle")

    def test_letters_the_store_does_not_know_survive(self):
        inbox = self.store.open("INBOX")
        uid = inbox.append(MSG)
        inbox.refresh()
        ref = inbox.message(uid)
        os.rename(ref.path, ref.subdir / f"{ref.key}{INFO_SEP}2,PSz")  # passed, and an unknown keyword
        inbox.refresh()
        [ref] = inbox.store_flags([uid], ["\\Flagged"], "set")
        self.assertEqual(ref.filename, f"{ref.key}{INFO_SEP}2,FPz")
        self.assertEqual(ref.flags, {"\\Flagged"})

    def test_at_most_26_keywords(self):
        inbox = self.store.open("INBOX")
        uid = inbox.append(MSG)
        inbox.refresh()
        inbox.store_flags([uid], [f"k{n}" for n in range(26)], "add")
        with self.assertRaises(KeywordLimit):
            inbox.store_flags([uid], ["one-too-many"], "add")
        self.assertEqual(len(inbox.message(uid).flags), 26)

    def test_windows_separator_is_read_too(self):
        (self.root / "cur" / "1700000000.M1P1Q1.host,S=3,W=4!2,FS").write_bytes(b"hi\n")
        [ref] = self.store.open("INBOX").messages
        self.assertEqual((ref.key, ref.flags, ref.size, ref.internaldate),
                         ("1700000000.M1P1Q1.host,S=3,W=4", {"\\Flagged", "\\Seen"}, 4, 1700000000.000001))


class ViewTest(StoreCase):
    def setUp(self):
        super().setUp()
        self.store.create("Archive")
        self.a = self.store.open("INBOX")
        self.uids = [self.a.append(MSG + str(n).encode()) for n in range(3)]
        self.a.refresh()
        self.b = self.store.open("INBOX")

    def test_two_views_see_each_others_changes(self):
        self.assertEqual([m.uid for m in self.b.messages], self.uids)
        self.a.store_flags([self.uids[0]], ["\\Seen", "Urgent"], "add")
        self.a.store_flags([self.uids[1]], ["\\Deleted"], "add")
        self.assertEqual(self.a.expunge(), [self.uids[1]])
        path = deliver(self.root, b"Subject: new\r\n\r\nfresh\r\n")
        changes = self.b.refresh()
        self.assertEqual(changes.expunged, [self.uids[1]])
        self.assertEqual([(m.uid, m.flags) for m in changes.flags_changed],
                         [(self.uids[0], {"\\Seen", "Urgent"})])
        [new] = changes.added
        self.assertEqual((new.uid, new.key, new.size), (4, path.name, len(b"Subject: new\r\n\r\nfresh\r\n")))
        self.assertEqual(self.b.read(4), b"Subject: new\r\n\r\nfresh\r\n")
        changes = self.a.refresh()  # a sees the delivery, not its own changes
        self.assertEqual((changes.expunged, [m.uid for m in changes.added], changes.flags_changed),
                         ([], [4], []))
        self.assertEqual(self.b.refresh(), Changes())

    def test_flag_changes_merge_with_what_another_view_did(self):
        self.a.store_flags([self.uids[0]], ["\\Seen"], "add")
        self.b.store_flags([self.uids[0]], ["\\Flagged"], "add")  # b's view still has the old name
        self.assertEqual(self.b.message(self.uids[0]).flags, {"\\Seen", "\\Flagged"})
        self.assertEqual(self.a.refresh().flags_changed[0].flags, {"\\Seen", "\\Flagged"})

    def test_pop3_retrieval_and_deletion(self):
        path = deliver(self.root, b"Subject: pop\r\n\r\n")
        self.a.refresh()
        self.b.refresh()
        uid = self.a.messages[-1].uid
        os.rename(path, self.root / "cur" / (path.name + INFO_SEP + "2,S"))  # what POP3 does on RETR
        changes = self.a.refresh()
        self.assertEqual([(m.uid, m.flags) for m in changes.flags_changed], [(uid, {"\\Seen"})])
        self.assertEqual(MailStore(self.root).open("INBOX").message(uid).key, path.name)
        self.assertEqual(self.b.read(uid), b"Subject: pop\r\n\r\n")  # b's old path: found again
        (self.root / "cur" / (path.name + INFO_SEP + "2,S")).unlink()  # DELE + QUIT
        self.assertEqual(self.a.refresh().expunged, [uid])
        self.assertEqual(self.b.refresh().expunged, [uid])
        with self.assertRaises(NoSuchMessage):
            self.a.read(uid)

    def test_refresh_does_not_list_an_unchanged_folder(self):
        age_dirs(self.root / "new", self.root / "cur")
        folder = self.store.open("INBOX")
        with mock.patch.object(Box, "scan", side_effect=AssertionError("listed")):
            for _ in range(3):
                self.assertEqual(folder.refresh(), Changes())
        deliver(self.root, b"x\n")
        self.assertEqual(len(folder.refresh().added), 1)

    def test_a_listing_that_misses_a_new_file_holds_the_later_ones_back(self):
        real_scan = Box.scan
        raced = []

        def racing_scan(box):
            if raced:
                return real_scan(box)
            raced.extend([self.b.append(MSG), self.b.append(MSG)])  # placed while a lists
            listing = real_scan(box)
            key = {uid: key for key, uid in box.uidlist.read().uids.items()}[raced[0]]
            del listing[key]  # readdir may miss an entry added while it runs
            return listing

        with mock.patch.object(Box, "scan", racing_scan):
            self.assertEqual(self.a.refresh(), Changes())  # not 5 now and 4 never
            self.assertEqual([m.uid for m in self.a.refresh().added], raced)

    def test_expunge_needs_deleted_in_the_view_and_on_disk(self):
        self.a.store_flags(self.uids, ["\\Deleted"], "add")
        self.b.refresh()
        self.a.store_flags([self.uids[0]], ["\\Deleted"], "remove")  # b has not seen this
        self.assertEqual(self.b.expunge([self.uids[0], self.uids[1]]), [self.uids[1]])  # UID EXPUNGE
        self.assertEqual([m.uid for m in self.b.messages], [self.uids[0], self.uids[2]])
        self.assertEqual(self.b.expunge(), [self.uids[2]])
        self.assertEqual(self.a.refresh().expunged, self.uids[1:])

    def test_copy_keeps_flags_keywords_and_date_and_links_the_file(self):
        self.a.store_flags([self.uids[0]], ["\\Flagged", "Later", "Work"], "add")
        self.store.open("Archive").append(MSG, ["Work"])  # Archive's "a" is Work, not Later
        pairs = self.a.copy([self.uids[0], self.uids[2], 99], "Archive")
        self.assertEqual(pairs, [(self.uids[0], 2), (self.uids[2], 3)])
        archive = self.store.open("Archive")
        copy = archive.message(2)
        src = self.a.message(self.uids[0])
        self.assertEqual(copy.flags, {"\\Flagged", "Later", "Work"})
        self.assertEqual((copy.size, copy.internaldate), (src.size, src.internaldate))
        self.assertEqual(archive.read(2), self.a.read(self.uids[0]))
        if os.name != "nt":
            self.assertEqual(os.stat(copy.path).st_ino, os.stat(src.path).st_ino)
        self.assertEqual(len(self.a.messages), 3)

    def test_move_is_one_rename_and_the_source_forgets(self):
        src = self.a.message(self.uids[1])
        pairs = self.a.move([self.uids[1]], "Archive")
        self.assertEqual(pairs, [(self.uids[1], 1)])
        self.assertEqual([m.uid for m in self.a.messages], [self.uids[0], self.uids[2]])
        self.assertFalse(src.path.exists())
        moved = self.store.open("Archive").message(1)
        self.assertEqual((moved.key, moved.internaldate), (src.key, src.internaldate))
        self.assertEqual(self.b.refresh().expunged, [self.uids[1]])
        self.assertNotIn(src.key, (self.root / "ismail-uidlist").read_text())
        # Moving it back gives a new UID: the old one is never brought back to life.
        back = self.store.open("Archive").move([1], self.a)
        self.assertEqual(back, [(1, 4)])
        self.assertEqual([m.uid for m in self.a.refresh().added], [4])

    def test_append_from_a_file_with_crlf_split_across_blocks(self):
        body = b"Subject: big\r\n\r\n" + b"x" * ((1 << 20) - 17) + b"\r\n" + b"y\r\n" * 1000
        self.assertEqual(body[(1 << 20) - 1:(1 << 20) + 1], b"\r\n")
        spill = self.dir / "literal.tmp"
        spill.write_bytes(body)
        when = 1_600_000_000.0
        uid = self.a.append(spill, ["\\Seen", "Big"], internaldate=when)
        self.assertTrue(spill.exists())  # the caller's file
        [ref] = self.a.refresh().added
        self.assertEqual((ref.uid, ref.size, ref.internaldate, ref.flags),
                         (uid, len(body), when, {"\\Seen", "Big"}))
        self.assertNotIn(b"\r", ref.path.read_bytes())
        self.assertEqual(self.a.read(uid), body)
        with self.a.open_stream(uid) as stream:
            self.assertEqual(b"".join(iter(lambda: stream.read(7000), b"")), body)
        self.assertEqual(MailStore(self.root).open("INBOX").message(uid).internaldate, when)

    def test_a_file_another_program_left_with_crlf_line_ends(self):
        """CRLF on disk (Dovecot's mail_save_crlf, a .eml saved on Windows) is read as it
        was: no CR doubled, a lone CR kept, the size what a FETCH sends; also with the CR
        and the LF of one line end in two 64 KiB reads of a stream."""
        small = b"Subject: crlf\r\nX: y\r\n\r\nbare\rcr\r\nlf only\n"
        big = b"Subject: big\r\n\r\n" + b"a" * ((1 << 16) - 16 - 1) + b"\r\n" + b"b\r\n" * 40000
        self.assertEqual(big[(1 << 16) - 1:(1 << 16) + 1], b"\r\n")
        (self.root / "new" / "1700000001.other.host").write_bytes(small)
        (self.root / "new" / "1700000002.other.host").write_bytes(big)
        inbox = MailStore(self.root).open("INBOX")
        refs = [m for m in inbox.messages if m.key.endswith(".other.host")]
        want = [small.replace(b"only\n", b"only\r\n"), big]
        self.assertEqual([m.size for m in refs], [len(w) for w in want])
        for ref, text in zip(refs, want):   # (== rather than a diff of 150 kB)
            self.assertTrue(inbox.read(ref.uid) == text, f"read of UID {ref.uid}")
            with inbox.open_stream(ref.uid) as stream:
                self.assertTrue(b"".join(iter(lambda: stream.read(7000), b"")) == text, "in pieces")
            with inbox.open_stream(ref.uid) as stream:
                self.assertTrue(stream.read() == text, "whole")
        self.assertEqual(inbox.read_head(refs[0].uid, 1000), b"Subject: crlf\nX: y\n\nbare\rcr\nlf only\n")

    def test_an_append_with_a_cr_before_a_line_end_reads_back_at_its_size(self):
        """A client's CR CR LF: the file holds no CRLF (a reader would take it for a line
        end), the stray CR is dropped, and the size is what a FETCH sends."""
        for data in (b"Subject: x\r\n\r\na\rb\r\r\nc\r\n", b"a\r", b"\r\r\r\n"):
            uid = self.a.append(data)
            ref = self.a.refresh().added[0]
            self.assertNotIn(b"\r\n", ref.path.read_bytes(), data)
            self.assertEqual(self.a.read(uid), data.replace(b"\r\r\r\n", b"\r\n").replace(b"\r\r\n", b"\r\n"))
            self.assertEqual(ref.size, len(self.a.read(uid)), data)

    def test_unknown_uid(self):
        with self.assertRaises(NoSuchMessage):
            self.a.read(99)
        self.assertEqual(self.a.store_flags([99], ["\\Seen"], "add"), [])
        self.assertEqual(self.a.copy([99], "Archive"), [])
        with self.assertRaises(NoSuchFolder):
            self.a.copy(self.uids, "Nowhere")


class PersistenceTest(StoreCase):
    def test_uids_survive_reopen_and_are_never_reused(self):
        inbox = self.store.open("INBOX")
        uids = [inbox.append(MSG) for _ in range(3)]
        deliver(self.root, b"x\n")
        inbox.refresh()
        inbox.store_flags(uids[1:] + [4], ["\\Deleted"], "add")
        self.assertEqual(inbox.expunge(), [2, 3, 4])
        again = MailStore(self.root).open("INBOX")
        self.assertEqual(([m.uid for m in again.messages], again.uidvalidity, again.uidnext),
                         ([1], inbox.uidvalidity, 5))
        self.assertEqual(again.append(MSG), 5)

    def test_files_the_index_does_not_know_get_uids_oldest_first(self):
        for t in (1700000300, 1700000100, 1700000200):
            (self.root / "cur" / f"{t}.M0P1Q{t}.host{INFO_SEP}2,").write_bytes(b"a\nb\n")
        (self.root / "new" / "foreign-name").write_bytes(b"x\n")
        inbox = self.store.open("INBOX")
        self.assertEqual([(m.uid, m.internaldate) for m in inbox.messages][:3],
                         [(1, 1700000100), (2, 1700000200), (3, 1700000300)])
        self.assertEqual([(m.uid, m.key, m.size) for m in inbox.messages][3], (4, "foreign-name", 3))
        self.assertIn("4 foreign-name W3 T", (self.root / "ismail-uidlist").read_text())

    def test_index_line_without_file_is_an_expunge(self):
        inbox = self.store.open("INBOX")
        uid = inbox.append(MSG)
        inbox.refresh()
        inbox.message(uid).path.unlink()
        self.assertEqual(MailStore(self.root).open("INBOX").messages, [])
        self.assertEqual(inbox.refresh().expunged, [uid])
        self.assertEqual(parse((self.root / "ismail-uidlist").read_bytes()).uids, {})

    def assert_rebuilt(self, bad: bytes, reason: str):
        inbox = self.store.open("INBOX")
        inbox.append(MSG)
        inbox.append(MSG)
        old = inbox.uidvalidity
        (self.root / "ismail-uidlist").write_bytes(bad)
        with self.assertLogs("ismail.uidlist", "WARNING") as logs:
            reopened = MailStore(self.root).open("INBOX")
        self.assertIn(reason, logs.output[0])
        self.assertGreater(reopened.uidvalidity, old)
        self.assertEqual([m.uid for m in reopened.messages], [1, 2])
        aside = list(self.root.glob("ismail-uidlist.corrupt-*"))
        self.assertEqual([p.read_bytes() for p in aside], [bad])
        with self.assertRaises(UidValidityChanged):
            inbox.refresh()

    def test_unparseable_index_is_set_aside_and_rebuilt(self):
        self.assert_rebuilt(b"\x00garbage\n", "header")

    def test_uidnext_below_a_uid_is_corrupt(self):
        self.assert_rebuilt(b"ismail-uidlist 1 V5 N2 R1\n1 a\n7 b\n", "UIDNEXT")

    def test_cut_short_index_is_corrupt(self):
        self.assert_rebuilt(b"ismail-uidlist 1 V5 N9 R1\n1 a\n2 b", "cut short")

    def test_lost_index_gives_a_new_uidvalidity(self):
        inbox = self.store.open("INBOX")
        inbox.append(MSG)
        (self.root / "ismail-uidlist").unlink()
        self.assertGreater(MailStore(self.root).open("INBOX").uidvalidity, inbox.uidvalidity)

    def test_sizes_an_older_ismail_counted_are_measured_again_once(self):
        """Before C1 a CRLF on disk counted as two line ends: such an index's W sizes are
        measured again when the folder is first opened, and written back with C1."""
        crlf = b"Subject: old\r\n\r\nbody\r\n"
        for sub in ("new", "cur", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "new" / "1700000001.other.host").write_bytes(crlf)
        (self.root / "new" / "1700000002.lf.host").write_bytes(b"a\nb\n")
        (self.root / "ismail-uidlist").write_bytes(
            b"ismail-uidlist 1 V5 N3 R1\n1 1700000001.other.host W%d\n2 1700000002.lf.host W6\n"
            % (len(crlf) + crlf.count(b"\n")))
        with self.assertLogs("ismail.folders", "INFO") as logs:
            inbox = MailStore(self.root).open("INBOX")
        self.assertIn("measured the sizes of 2 message(s) again", "\n".join(logs.output))
        self.assertEqual([(m.uid, m.size) for m in inbox.messages], [(1, len(crlf)), (2, 6)])
        self.assertEqual(inbox.uidvalidity, 5, "the UIDs stay")
        written = (self.root / "ismail-uidlist").read_bytes()
        self.assertEqual(written, b"ismail-uidlist 1 V5 N3 R1 C1\n1 1700000001.other.host W%d\n"
                                  b"2 1700000002.lf.host W6\n" % len(crlf))
        with mock.patch("ismail.store.folders_box.file_crlf_size") as measure:
            self.assertEqual(MailStore(self.root).open("INBOX").message(1).size, len(crlf))
        measure.assert_not_called()

    def test_parser_is_strict(self):
        good = b"ismail-uidlist 1 V5 N9 R3\n1 a\n2 b W10 T1.5\n"
        index = parse(good)
        self.assertEqual((index.uidvalidity, index.uidnext, index.first_recent, index.uids,
                          index.sizes, index.dates), (5, 9, 3, {"a": 1, "b": 2}, {"b": 10}, {"b": 1.5}))
        self.assertEqual(index.to_bytes(), good)
        for bad in [b"", b"ismail-uidlist 1 V0 N1\n", b"ismail-uidlist 2 V5 N9\n",
                    b"ismail-uidlist 1 V5 N9\n2 a\n1 b\n", b"ismail-uidlist 1 V5 N9\n1 a\n2 a\n",
                    b"ismail-uidlist 1 V5 N9\n+1 a\n", b"ismail-uidlist 1 V5 N9\n1 a X\n"]:
            with self.assertRaises(CorruptIndex, msg=bad):
                parse(bad)


# -- SIGKILL at random moments -------------------------------------------------------------------
CHILD = textwrap.dedent(r"""
    import random, sys
    from pathlib import Path
    from ismail.queue.spool import MessageBuffer
    from ismail.store import maildir
    from ismail.store.folders import MailStore

    root, run, log = Path(sys.argv[1]), int(sys.argv[2]), open(sys.argv[3], "a")
    rnd = random.Random(run)
    store = MailStore(root)
    inbox, archive = store.open("INBOX"), store.open("Archive")

    def say(*words):
        log.write(" ".join(map(str, words)) + "\n")
        log.flush()

    def token(folder, uid):
        return folder.read(uid).split(b"\r\n", 1)[0].decode().split()[-1]

    say("READY")
    n = 0
    while True:
        n += 1
        tok = f"r{run}n{n}"
        body = f"Subject: {tok}\n\n".encode() + b"x" * rnd.randint(0, 20000) + f"\nEND {tok}\n".encode()
        if rnd.random() < 0.2:                      # SMTP delivery: no UID until someone looks
            buf = MessageBuffer(root / "tmp")
            buf.write(body)
            maildir.deliver([root], b"", buf)
            buf.close()
        else:
            uid = inbox.append(body, ["\\Seen"] if n % 2 else [])
            say("A", "INBOX", uid, tok)
            if rnd.random() < 0.3:
                inbox.refresh()  # a view copies what it has seen
                for src, dst in inbox.copy([uid], "Work"):
                    say("A", "Work", dst, tok)
        inbox.refresh()
        archive.refresh()
        r = rnd.random()
        if r < 0.35 and inbox.messages:
            m = rnd.choice(inbox.messages)
            tok_m = token(inbox, m.uid)
            for src, dst in inbox.move([m.uid], "Archive"):
                say("A", "Archive", dst, tok_m)
        elif r < 0.5 and archive.messages:
            m = rnd.choice(archive.messages)
            tok_m = token(archive, m.uid)
            for src, dst in archive.move([m.uid], inbox):
                say("A", "INBOX", dst, tok_m)
        elif r < 0.7 and inbox.messages:
            m = rnd.choice(inbox.messages)
            inbox.store_flags([m.uid], ["\\Deleted", "Gone"], "add")
            inbox.expunge([m.uid])
        elif inbox.messages:
            m = rnd.choice(inbox.messages)
            inbox.store_flags([m.uid], ["\\Flagged", "Later"], rnd.choice(["add", "remove"]))
""")


def stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()  # SIGKILL
    child.wait()


@unittest.skipIf(os.name == "nt", "SIGKILL does not exist on Windows")
class TmpCleanupTest(StoreCase):
    """Opening a folder clears what a crash left in tmp/, and nothing that is being written."""

    def test_an_append_dated_in_the_past_is_not_taken_for_a_leftover(self):
        # ImapTest found it: APPEND sets the file's mtime to the message's date before the
        # rename, and another session's open removed the "old" file from under it.
        folder = self.store.open("INBOX")
        tmp = self.root / "tmp" / "1700000000.M1P1Q1.host"
        tmp.write_bytes(b"Subject: old\n\nbody\n")
        two_years = time.time() - 2 * 365 * 86400
        os.utime(tmp, (two_years, two_years))
        self.store.open("INBOX")
        self.assertTrue(tmp.exists(), "a file written just now survives whatever its mtime")
        uid = folder.append(b"Subject: dated\r\n\r\nx\r\n", internaldate=two_years)
        self.store.open("INBOX")
        folder.refresh()
        self.assertIn(b"dated", folder.read(uid))

    def test_a_real_leftover_is_removed(self):
        self.store.open("INBOX")
        tmp = self.root / "tmp" / "1700000000.M2P1Q2.host"
        tmp.write_bytes(b"half")
        with mock.patch("time.time", return_value=time.time() + 3 * 86400):
            self.store.open("INBOX")
        self.assertFalse(tmp.exists())


class KillTest(StoreCase):
    KILLS = 30

    def test_sigkill_at_random_moments_loses_nothing_and_reuses_no_uid(self):
        self.store.create("Archive")
        self.store.create("Work")
        log, errors = self.dir / "uids.log", self.dir / "child-errors.log"
        rnd = random.Random(4711)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        seen_validity: dict[str, int] = {}
        for run in range(self.KILLS):
            with open(errors, "ab") as err:
                child = subprocess.Popen([sys.executable, "-c", CHILD, str(self.root), str(run), str(log)],
                                         cwd=ROOT, env=env, stderr=err)
            self.addCleanup(stop, child)
            deadline = time.monotonic() + 30
            while (log.read_text() if log.exists() else "").count("READY\n") <= run:
                if child.poll() is not None or time.monotonic() > deadline:
                    self.fail(f"child {run} did not start: {errors.read_text()[-2000:]}")
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.05, 0.3))
            self.assertIsNone(child.poll(), errors.read_text()[-2000:])  # killed, not crashed
            stop(child)
            self.check_invariants(log, seen_validity)

    def check_invariants(self, log: Path, seen_validity: dict[str, int]) -> None:
        handed: dict[str, list[tuple[int, str]]] = {"INBOX": [], "Archive": [], "Work": []}
        for line in log.read_text().split("\n")[:-1]:  # a line cut short by the kill has no "\n"
            words = line.split()
            if words[0] == "A":
                handed[words[1]].append((int(words[2]), words[3]))
        store = MailStore(self.root)
        where: dict[str, list[str]] = {}
        for name in handed:
            folder = store.open(name)
            seen_validity.setdefault(name, folder.uidvalidity)
            self.assertEqual(folder.uidvalidity, seen_validity[name], "UIDVALIDITY changed")
            uids = [m.uid for m in folder.messages]
            self.assertEqual(uids, sorted(set(uids)))
            present = {}
            for m in folder.messages:
                data = folder.read(m.uid)
                self.assertEqual(len(data), m.size)
                tok = data.split(b"\r\n", 1)[0].decode().split()[-1]
                self.assertTrue(data.endswith(f"\r\nEND {tok}\r\n".encode()), f"half a message: {m}")
                present[m.uid] = tok
                where.setdefault(tok, []).append(name)
            # UIDs handed out went up in every run, and none was given to another message.
            issued = [uid for uid, _ in handed[name]]
            self.assertEqual(issued, sorted(set(issued)), f"{name}: a UID was handed out twice")
            if issued:
                self.assertGreater(folder.uidnext, issued[-1])
            for uid, tok in handed[name]:
                if uid in present:
                    self.assertEqual(present[uid], tok, f"{name}: UID {uid} reused")
            self.assertFalse(list(folder._box.path.glob("ismail-uidlist.corrupt-*")))
        for tok, names in where.items():
            # Never twice after a MOVE: a message is in INBOX or Archive, once; a copy in Work at most once.
            self.assertLessEqual(sum(n in ("INBOX", "Archive") for n in names), 1, (tok, names))
            self.assertLessEqual(names.count("Work"), 1, (tok, names))


# -- 100,000 messages ----------------------------------------------------------------------------
class LargeFolderTest(StoreCase):
    COUNT = 100_000

    def test_open_and_refresh_of_100000_messages(self):
        cur = self.root / "cur"
        body = b"Subject: s\n\nbody\n"
        w = len(body) + body.count(b"\n")
        t0 = time.perf_counter()
        for i in range(self.COUNT):
            name = f"{1700000000 + i // 10}.M{i % 10}P1Q{i}.host,S={len(body)},W={w}{INFO_SEP}2,S"
            fd = os.open(cur / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0))
            os.write(fd, body)
            os.close(fd)
        made = time.perf_counter() - t0
        age_dirs(cur, self.root / "new")

        t0 = time.perf_counter()
        first = self.store.open("INBOX")
        t_first = time.perf_counter() - t0
        self.assertEqual([m.uid for m in first.messages[:3]], [1, 2, 3])
        self.assertEqual(len(first.messages), self.COUNT)

        real_stat, real_open = os.stat, open
        stats, opened = [], []
        with mock.patch("os.stat", side_effect=lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k)), \
                mock.patch("builtins.open", side_effect=lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k)):
            t0 = time.perf_counter()
            view = MailStore(self.root).open("INBOX")
            t_open = time.perf_counter() - t0
        self.assertEqual(len(view.messages), self.COUNT)
        self.assertEqual((view.messages[-1].uid, view.messages[-1].size), (self.COUNT, w))
        self.assertLess(len(stats), 20, "open() must not stat every message")
        self.assertFalse([p for p in opened if Path(p).parent == cur], "open() read message files")

        t0 = time.perf_counter()
        self.assertEqual(view.refresh(), Changes())
        t_idle = time.perf_counter() - t0

        deliver(self.root, b"Subject: one more\r\n\r\n")
        first.store_flags([5], ["\\Flagged"], "add")
        t0 = time.perf_counter()
        changes = view.refresh()
        t_changed = time.perf_counter() - t0
        self.assertEqual(([m.uid for m in changes.added], [m.uid for m in changes.flags_changed]),
                         ([self.COUNT + 1], [5]))
        t0 = time.perf_counter()
        uid = view.append(body)
        t_append = time.perf_counter() - t0
        self.assertEqual(uid, self.COUNT + 2)
        print(f"\n  100,000 messages: made in {made:.1f}s; first open (assigns UIDs) {t_first:.3f}s, "
              f"open with index {t_open:.3f}s, refresh unchanged {t_idle * 1000:.2f}ms, "
              f"refresh after a delivery and a flag change {t_changed:.3f}s, append {t_append:.3f}s",
              flush=True)


if __name__ == "__main__":
    unittest.main()
