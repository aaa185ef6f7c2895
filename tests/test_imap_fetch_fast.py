"""FETCH's fast path (imap/fetch_fast.py) answers exactly as the general renderer does.

Each case sends the same FETCH to two fresh sessions, one with the fast path and one
with it switched off, and compares every byte: the fast path exists for speed only.
"""
from __future__ import annotations

import contextlib
import os
import time
import unittest
from unittest import mock

from ismail.imap import cmd_message, fetch_fast
from tests.test_imap_session import MSG, SessionCase

NUL = b"From: x@remote.test\r\nSubject: binary\r\n\r\nzero \x00 byte\r\n"
BIG = b"From: x@remote.test\r\nSubject: big\r\n\r\n" + b"y" * 998 + b"\r\n" + \
      b"".join(b"line %d of a message larger than one write\r\n" % n for n in range(3000))
ITEM_LISTS = [
    "(UID FLAGS RFC822.SIZE)", "FLAGS", "UID", "(INTERNALDATE UID)", "FAST", "(UID UID FLAGS)",
    "(UID BODY.PEEK[])", "BODY.PEEK[]", "(BODY.PEEK[] UID FLAGS RFC822.SIZE)",
    "(FLAGS BODY.PEEK[] INTERNALDATE)", "RFC822", "(UID RFC822 RFC822.SIZE)", "BODY[]",
    "(UID BODY.PEEK[]<0.10>)", "(UID BODY.PEEK[] BODY.PEEK[HEADER])", "ALL",
]


@contextlib.contextmanager
def general_renderer():
    """FETCH without its fast path: no plan, and none remembered from an earlier FETCH of
    the same item list (cmd_message._PLANS).  Yields the renderer, wrapped, to check that
    it answered."""
    with mock.patch.object(cmd_message, "plan", return_value=None), \
            mock.patch.object(cmd_message, "_PLANS", {}), \
            mock.patch.object(cmd_message, "render", wraps=cmd_message.render) as render:
        yield render


class FastPathTest(SessionCase):
    def setUp(self):
        super().setUp()
        for data in (MSG, NUL, MSG, BIG):
            self.deliver(data)
        first = self.client(select="INBOX")       # \Recent goes to this one; later sessions
        first.say("f STORE 1 +FLAGS (\\Flagged $Work)")  # see a keyword and a system flag
        first.say("g STORE 2 +FLAGS (\\Seen)")

    def both(self, command: str, examine: bool = False) -> tuple[str, str]:
        """The answers with and without the fast path; if ``command`` sets \\Seen, the
        state before it is put back in between (the flags of the Maildir files)."""
        before = self.flag_state()
        fast = self.session(examine).say(command)
        self.restore(before)
        with general_renderer() as render:
            general = self.session(examine).say(command)
        self.assertTrue(render.called, f"{command}: the general renderer was not used")
        self.restore(before)
        return fast, general

    def session(self, examine: bool):
        if not examine:
            return self.client(select="INBOX")
        c = self.client()
        c.say("x EXAMINE INBOX")
        return c

    def flag_state(self) -> dict:
        return {p: p.name for p in (self.root / "cur").iterdir()} | \
               {p: p.name for p in (self.root / "new").iterdir()}

    def restore(self, state: dict) -> None:
        now = {p.name.split(":")[0]: p for p in list((self.root / "cur").iterdir()) +
               list((self.root / "new").iterdir())}
        for old in state:
            current = now[old.name.split(":")[0]]
            if current != old:
                current.rename(old)

    def test_same_bytes_as_the_general_renderer(self):
        self.compare_all()

    def test_same_bytes_once_every_message_is_seen(self):
        # BODY[] and RFC822 set \Seen: the first session to fetch them changes what the
        # second one answers, so compare them again when there is nothing left to set.
        self.client(select="INBOX").say("z FETCH 1:* BODY[TEXT]")
        self.compare_all()

    def test_same_bytes_read_only(self):
        self.compare_all(examine=True)

    def compare_all(self, examine: bool = False):
        for items in ITEM_LISTS:
            for command in (f"a FETCH 1:* {items}", f"a UID FETCH 2:3 {items}"):
                with self.subTest(command=command):
                    fast, general = self.both(command, examine)
                    self.assertEqual(fast, general)
                    self.assertTrue(fast.endswith("FETCH completed\r\n"), fast[-200:])

    def test_same_bytes_in_small_chunks(self):
        with mock.patch.object(fetch_fast, "ROWS", 3):   # rows are made a chunk at a time
            for items in ("(UID FLAGS RFC822.SIZE)", "FAST", "(FLAGS UID)"):
                for command in (f"a FETCH 1:* {items}", f"a UID FETCH 2:4 {items}"):
                    with self.subTest(command=command):
                        fast, general = self.both(command)
                        self.assertEqual(fast, general)

    def test_same_bytes_for_the_session_holding_recent(self):
        self.deliver(MSG)
        self.deliver(NUL)
        c = self.client(select="INBOX")   # \Recent on the two new messages goes to it
        for command in ("a FETCH 1:* (UID FLAGS)", "b UID FETCH 4:* (FLAGS RFC822.SIZE UID)"):
            with self.subTest(command=command):
                fast = c.say(command)
                with general_renderer():
                    general = c.say(command)
                self.assertEqual(fast, general)
                self.assertIn("\\Recent", fast)
        self.assertEqual(c.say("c FETCH 5:6 FLAGS").count("\\Recent"), 2)
        self.assertNotIn("\\Recent", c.say("d FETCH 1:4 FLAGS"))

    def test_recent_by_whole_chunks(self):
        """A chunk of rows whose messages all show \\Recent, or none does, takes the text of
        its flags from one table (Selected.recent_texts); one that mixes them goes message
        by message.  Chunks of 1 to 4 rows over 4 old messages, 3 new ones (one of them
        expunged, so the new UIDs have a gap) and one more that another session claimed,
        for the session holding \\Recent and for one that EXAMINEs the folder while the new
        mail is unclaimed."""
        for _ in range(3):
            self.deliver(MSG)
        examining = self.client()
        examining.say("e EXAMINE INBOX")   # sees 5-7 as \Recent, claims nothing
        c = self.client(select="INBOX")     # claims 5-7
        c.say("s STORE 6 +FLAGS.SILENT (\\Deleted)")
        c.say("x EXPUNGE")
        self.deliver(MSG)                   # UID 8, claimed by another session: not \\Recent in c
        self.client(select="INBOX")
        c.say("m NOOP")
        examining.say("n NOOP")             # the expunge reaches it before the comparisons
        for name, session in (("holder", c), ("examining", examining)):
            for rows in (1, 2, 3, 4):
                for command in ("a FETCH 1:* (UID FLAGS)", "b UID FETCH 3:* (FLAGS RFC822.SIZE UID)",
                                "c UID FETCH 5,7 FLAGS"):
                    with self.subTest(session=name, rows=rows, command=command), \
                            mock.patch.object(fetch_fast, "ROWS", rows):
                        fast = session.say(command)
                        with general_renderer():
                            general = session.say(command)
                        self.assertEqual(fast, general)
                        if session is c:
                            self.assertEqual(fast.count("\\Recent"), 2, "UIDs 5 and 7")

    def test_nul_byte_and_flags_in_the_answer(self):
        fast, _ = self.both("a FETCH 2 (UID FLAGS BODY.PEEK[])")
        self.assertIn("zero \ufffd byte", fast, "0x80 in place of the NUL (read as UTF-8 here)")
        self.assertNotIn("\x00", fast)
        self.assertIn("FLAGS (\\Seen)", fast)
        fast, _ = self.both("a FETCH 1 FLAGS")
        self.assertIn("FLAGS (\\Flagged $Work)", fast)

    def test_message_expunged_by_another_session(self):
        for fast_path in (True, False):
            with self.subTest(fast_path=fast_path):
                watcher = self.client(select="INBOX")
                other = self.client(select="INBOX")
                other.say("a STORE 2 +FLAGS (\\Deleted)")
                other.say("b EXPUNGE")
                commands = ("c FETCH 1:3 (UID BODY.PEEK[])", "d FETCH 1:3 (UID FLAGS)")
                if fast_path:
                    replies = [watcher.say(command) for command in commands]
                else:
                    with general_renderer():
                        replies = [watcher.say(command) for command in commands]
                self.assertIn("* 1 FETCH (UID 1 BODY[]", replies[0])
                self.assertRegex(replies[0], r"\* 3 FETCH \(UID \d+ BODY\[\]")
                self.assertIn("c NO [EXPUNGEISSUED]", replies[0])
                self.assertRegex(replies[1], r"^\* 1 FETCH \(UID 1 FLAGS \([^)]*\)\)\r\n"
                                             r"\* 3 FETCH \(UID \d+ FLAGS \([^)]*\)\)\r\n"
                                             r"d NO \[EXPUNGEISSUED\]")
                self.deliver(NUL)   # put a message back for the next round


if __name__ == "__main__":
    unittest.main()


class SharedRowsTest(SessionCase):
    """Sessions holding the same unchanged folder share the rows of FETCH 1:* (view items):
    the second one sends the first one's bytes, and any change is seen, never old rows."""

    COMMAND = "a FETCH 1:* (UID FLAGS RFC822.SIZE)"

    def setUp(self):
        super().setUp()
        fetch_fast.RENDERS.clear()
        for data in (MSG, NUL, MSG):
            self.deliver(data)
        self.first = self.client(select="INBOX")   # it holds \Recent: later ones do not
        self.first.say("f STORE 1 +FLAGS (\\Flagged $Work)")
        self.settle()

    def settle(self) -> None:
        """Age the folder's directories, as if the last change were seconds ago: only a
        view of a folder whose mtimes have settled is shared as it is (store.folders_view)."""
        past = time.time() - 10
        for sub in ("new", "cur"):
            os.utime(self.root / sub, (past, past))

    def fetch(self, client, command: str = COMMAND) -> tuple[str, bool]:
        """The answer, and whether it came from kept rows."""
        hits: list[bool] = []
        real = fetch_fast.RENDERS.get

        def spy(*args):
            found = real(*args)
            hits.append(found is not None)
            return found
        with mock.patch.object(fetch_fast.RENDERS, "get", side_effect=spy):
            reply = client.say(command)
        return reply, any(hits)

    def general(self, client, command: str = COMMAND) -> str:
        with general_renderer():
            return client.say(command)

    def test_the_second_session_sends_the_first_ones_rows_which_are_right(self):
        b, c = self.client(select="INBOX"), self.client(select="INBOX")
        first, hit = self.fetch(b)
        self.assertFalse(hit)
        second, hit = self.fetch(c)
        self.assertTrue(hit, "the second session made its rows again")
        self.assertEqual(second, first)
        self.assertEqual(second, self.general(c))
        self.assertIn("FLAGS (\\Flagged $Work)", second)
        self.assertNotIn("\\Recent", second)
        uid, hit = self.fetch(c, "u UID FETCH 1:* (UID FLAGS RFC822.SIZE)")
        self.assertEqual(uid, self.general(c, "u UID FETCH 1:* (UID FLAGS RFC822.SIZE)"))

    def test_a_sessions_own_flag_change_is_in_its_next_rows(self):
        b, c = self.client(select="INBOX"), self.client(select="INBOX")
        self.fetch(b)
        c.say("s STORE 2 +FLAGS (\\Answered)")
        reply, hit = self.fetch(c)
        self.assertFalse(hit)
        self.assertIn("* 2 FETCH (UID 2 FLAGS (\\Answered)", reply)
        self.assertEqual(reply, self.general(c))

    def test_a_flag_change_pipelined_before_the_fetch_is_in_the_rows(self):
        # In one batch only the last command looks at the folder: the STORE's new flags
        # reach the FETCH through the session's own view, which then differs from the
        # shared snapshot the kept rows were made from.
        b, c = self.client(select="INBOX"), self.client(select="INBOX")
        self.fetch(b)
        reply = c.send(b"s STORE 2 +FLAGS.SILENT (\\Answered)\r\n" + self.COMMAND.encode() + b"\r\n")
        self.assertIn("* 2 FETCH (UID 2 FLAGS (\\Answered)", reply)

    def test_another_sessions_change_and_new_mail_are_in_the_rows(self):
        b = self.client(select="INBOX")
        self.fetch(b)
        self.first.say("g STORE 3 +FLAGS (\\Seen)")
        self.deliver(MSG)
        self.settle()
        c = self.client(select="INBOX")   # \Recent for the new message goes to c
        d = self.client(select="INBOX")
        for client in (b, d):
            client.say("n NOOP")
            reply, _ = self.fetch(client)
            self.assertIn("* 3 FETCH (UID 3 FLAGS (\\Seen)", reply)
            self.assertIn("* 4 FETCH (UID 4 ", reply)
            self.assertEqual(reply, self.general(client))
        self.assertIn("* 4 FETCH (UID 4 FLAGS (\\Recent)", self.fetch(c)[0])

    def test_the_session_holding_recent_makes_its_own_rows(self):
        self.fetch(self.client(select="INBOX"))
        reply, hit = self.fetch(self.first)
        self.assertFalse(hit)
        self.assertIn("\\Recent", reply)
        self.assertEqual(reply, self.general(self.first))

    def test_an_expunge_not_yet_announced_keeps_the_session_off_the_kept_rows(self):
        b, c = self.client(select="INBOX"), self.client(select="INBOX")
        self.fetch(b)
        self.first.say("d STORE 2 +FLAGS (\\Deleted)")
        self.first.say("e EXPUNGE")
        reply, hit = self.fetch(c)   # FETCH may not announce the expunge (RFC 3501 §7.4.1)
        self.assertFalse(hit)
        self.assertEqual(reply, self.general(c))
