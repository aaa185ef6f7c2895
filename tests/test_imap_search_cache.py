"""SEARCH keeps the header fields it decoded (imap/search_cache.py): the next search for
the same field reads no message file, and still sees new mail and expunges."""
from __future__ import annotations

import unittest
from unittest import mock

from ismail.imap.search_cache import HEADERS, HeaderCache
from ismail.store.folders_view import Folder
from tests.test_imap_session import SessionCase


def message(n: int, subject: str) -> bytes:
    return (f"From: Sender {n} <s{n}@remote.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{n}@remote.test>\r\n\r\nbody {n}\r\n").encode()


class HeaderCacheSessionTest(SessionCase):
    def setUp(self):
        super().setUp()
        HEADERS.clear()
        self.addCleanup(HEADERS.clear)
        for n, subject in enumerate(["lunch", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "lunch again", "other"], 1):
            self.deliver(message(n, subject))

    def test_second_search_reads_no_file_and_gives_the_same_answer(self):
        c = self.client(select="INBOX")
        first = c.say('a SEARCH SUBJECT "lunch"')
        self.assertIn("* SEARCH 1 3\r\n", first)
        with mock.patch.object(Folder, "read_head", side_effect=AssertionError("file read")), \
                mock.patch.object(Folder, "read", side_effect=AssertionError("file read")):
            self.assertEqual(c.say('b SEARCH SUBJECT "lunch"'), first.replace("a OK", "b OK"))
            self.assertIn("* SEARCH 2\r\n", c.say('c SEARCH SUBJECT "gr"'), "decoded values are kept")
            self.assertIn("* SEARCH 1 3\r\n", c.say('d SEARCH UNSEEN SUBJECT "lunch"'))
            self.assertIn("* SEARCH 3\r\n", c.say('e UID SEARCH SUBJECT "again"'))
        other = self.client(select="INBOX")   # another session on the folder uses it too
        with mock.patch.object(Folder, "read_head", side_effect=AssertionError("file read")):
            self.assertIn("* SEARCH 1 3\r\n", other.say('f SEARCH SUBJECT "lunch"'))

    def test_new_and_expunged_messages(self):
        c = self.client(select="INBOX")
        c.say('a SEARCH SUBJECT "lunch"')
        self.deliver(message(5, "lunch for five"))
        c.say("b NOOP")
        self.assertIn("* SEARCH 1 3 5\r\n", c.say('c SEARCH SUBJECT "lunch"'))
        c.say("d STORE 1 +FLAGS (\\Deleted)")
        c.say("e EXPUNGE")
        self.assertIn("* SEARCH 2 4\r\n", c.say('f SEARCH SUBJECT "lunch"'))

    def test_other_fields_are_read_from_the_files(self):
        c = self.client(select="INBOX")
        c.say('a SEARCH SUBJECT "lunch"')
        self.assertIn("* SEARCH 4\r\n", c.say('b SEARCH HEADER Message-ID "<4@remote.test>"'))
        self.assertIn("* SEARCH 2\r\n", c.say('c SEARCH FROM "s2@remote.test"'))


class HeaderCacheBoundTest(unittest.TestCase):
    def test_tables_beyond_the_bound_are_dropped_oldest_first(self):
        cache = HeaderCache(max_chars=50)
        keys = {f"k{n}" for n in range(3)}
        cache.add("A", {"subject": {k: ["x" * 10] for k in keys}}, keys)
        cache.add("B", {"subject": {k: ["y" * 10] for k in keys}}, keys)
        self.assertEqual(cache.tables("A", ["subject"])["subject"], {}, "A was the oldest")
        self.assertEqual(len(cache.tables("B", ["subject"])["subject"]), 3)
        cache.add("C", {"subject": {"big": ["z" * 500]}}, {"big"})
        self.assertEqual(cache.tables("C", ["subject"])["subject"], {}, "a table over the bound is not kept")

    def test_entries_of_expunged_messages_are_pruned(self):
        cache = HeaderCache()
        cache.add("F", {"subject": {f"old{n}": ["s"] for n in range(200)}}, {f"old{n}" for n in range(200)})
        cache.add("F", {"subject": {"new": ["s"]}}, {"new"})
        self.assertEqual(set(cache.tables("F", ["subject"])["subject"]), {"new"})


if __name__ == "__main__":
    unittest.main()
