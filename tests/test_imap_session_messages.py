"""The IMAP session on messages: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT, the
UID forms, two sessions on one folder, IDLE, and a 100,000-message folder (helpers in
test_imap_session)."""
from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import time
import tracemalloc
import unittest
from unittest import mock

from ismail.imap.parser import CommandReader
from ismail.imap.session import IDLE_KEEPALIVE
from ismail.store.folders_flags import INFO_SEP
from tests.test_imap_session import MSG, Client, FakeBackend, SessionCase, flatten

OTHER = b"From: Bob <bob@remote.test>\r\nSubject: second\r\n\r\nsome words here\r\n"


class MessagesCase(SessionCase):
    def setUp(self):
        super().setUp()
        for data in (MSG, OTHER, MSG, OTHER, MSG):
            self.deliver(data)


class FetchTest(MessagesCase):
    def test_items_and_uid_fetch(self):
        c = self.client(select="INBOX")
        reply = c.say("a FETCH 2 (FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (Subject)])")
        self.assertEqual(reply, f"* 2 FETCH (FLAGS (\\Recent) RFC822.SIZE {len(OTHER)} "
                                "BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: second\r\n\r\n)\r\n"
                                "a OK FETCH completed\r\n")
        self.assertEqual(c.say("b UID FETCH 4:5 FLAGS"),
                         "* 4 FETCH (UID 4 FLAGS (\\Recent))\r\n* 5 FETCH (UID 5 FLAGS (\\Recent))\r\n"
                         "b OK UID FETCH completed\r\n")
        self.assertEqual(c.say("c UID FETCH 99 FLAGS"), "c OK UID FETCH completed\r\n")
        self.assertIn("* 5 FETCH (UID 5 FLAGS", c.say("d UID FETCH 99:* FLAGS"))
        whole = c.say("e FETCH 1 BODY.PEEK[]")
        self.assertIn("BODY[] {%d}\r\n%s)" % (len(MSG), MSG.decode()), whole)
        self.assertIn("ENVELOPE (\"Mon, 1 Jan 2024 10:00:00 +0000\" \"hello\" ((\"Ann\" NIL \"ann\" "
                      "\"remote.test\"))", c.say("f FETCH 1 ENVELOPE"))
        self.assertIn('BODYSTRUCTURE ("text" "plain"', c.say("g FETCH 1 BODYSTRUCTURE"))
        self.assertIn("* 1 FETCH (FLAGS (\\Recent) INTERNALDATE", c.say("h FETCH 1 FAST"))

    def test_body_fetch_sets_seen_and_reports_flags(self):
        c = self.client(select="INBOX")
        reply = c.say("a FETCH 1:2 BODY[TEXT]")
        self.assertEqual(reply, "* 1 FETCH (BODY[TEXT] {20}\r\nline one\r\nline two\r\n "
                                "FLAGS (\\Seen \\Recent))\r\n"
                                "* 2 FETCH (BODY[TEXT] {17}\r\nsome words here\r\n FLAGS (\\Seen \\Recent))\r\n"
                                "a OK FETCH completed\r\n")
        self.assertEqual(c.say("b FETCH 1 RFC822.TEXT"), "* 1 FETCH (RFC822.TEXT {20}\r\nline one\r\n"
                                                          "line two\r\n)\r\nb OK FETCH completed\r\n",
                         "already seen: no FLAGS")
        self.assertNotIn("\\Seen", c.say("c FETCH 3 (BODY.PEEK[] FLAGS)"))
        seen = {m.uid for m in self.store().open("INBOX").messages if "\\Seen" in m.flags}
        self.assertEqual(seen, {1, 2})
        self.assertEqual(self.backend.stats.get("imap_fetched"), 4)
        examine = self.client()
        examine.say("d EXAMINE INBOX")
        self.assertNotIn("\\Seen", examine.say("e FETCH 4 RFC822"))
        self.assertNotIn("\\Seen", self.store().open("INBOX").message(4).flags)

    def test_bad_message_numbers(self):
        c = self.client(select="INBOX")
        self.assertIn("a BAD no message 6 (the folder has 5)", c.say("a FETCH 6 FLAGS"))
        self.assertIn("a BAD no message 9", c.say("a FETCH 2:9 FLAGS"))
        self.assertIn("b BAD", c.say("b FETCH 0 FLAGS"))
        self.assertIn("c BAD", c.say("c FETCH 1:2:3 FLAGS"))
        self.assertIn("d OK", c.say("d FETCH 3:* UID"), "* may stand for a smaller number")
        self.assertIn("* 5 FETCH", c.say("e FETCH 9:* UID"))
        self.assertIn("f BAD", c.say('f FETCH "1" FLAGS'))
        self.assertIn("g BAD", c.say("g FETCH 1"))
        empty = self.client(select="Trash")
        self.assertEqual(empty.say("h FETCH 1:* FLAGS"), "h OK FETCH completed\r\n")
        self.assertIn("i BAD", empty.say("i FETCH 1 FLAGS"))

    def test_binary_of_an_unknown_encoding(self):
        c = self.client(select="INBOX")
        text = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 f\r\n"
        c.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(text), text))
        self.assertIn("b NO [UNKNOWN-CTE]", c.say("b FETCH 6 BINARY.PEEK[1]"))

    def test_pipelined_commands_wait_for_the_stream(self):
        c = self.client(select="INBOX")
        out = c.s.feed(b"a FETCH 1:* (UID)\r\nb STORE 1 +FLAGS (\\Flagged)\r\n")
        self.assertNotIn("\\Flagged", self.store().open("INBOX").message(1).flags,
                         "the STORE waits until the FETCH has been sent")
        data = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in out).decode()
        self.assertRegex(data, r"\* 5 FETCH \(UID 5\)\r\na OK FETCH completed\r\n"
                               r"\* 1 FETCH \(UID 1 FLAGS \(\\Flagged \\Recent\)\)\r\nb OK STORE")


    def test_a_repeated_item_list_answers_as_each_command_asks(self):
        """A pipelining client repeats one item list; FETCH and UID FETCH, PEEK or not,
        each get their own answer (UID added only for UID FETCH, \\Seen set only by BODY[])."""
        c = self.client(select="INBOX")
        out = c.send(b"a UID FETCH 1 (BODY.PEEK[])\r\nb FETCH 2 (BODY.PEEK[])\r\n"
                     b"c UID FETCH 3 (BODY.PEEK[])\r\nd FETCH 1 (BODY[])\r\ne UID FETCH 2 (BODY[])\r\n"
                     b"f FETCH 3 (BODY[])\r\n")
        self.assertRegex(out, r"^\* 1 FETCH \(UID 1 BODY\[\] \{%d\}\r\n" % len(MSG))
        self.assertRegex(out, r"\r\na OK UID FETCH completed\r\n\* 2 FETCH \(BODY\[\] \{%d\}" % len(OTHER))
        self.assertRegex(out, r"\r\nb OK FETCH completed\r\n\* 3 FETCH \(UID 3 BODY\[\] ")
        self.assertRegex(out, r"\r\nc OK UID FETCH completed\r\n\* 1 FETCH \(BODY\[\] \{\d+\}\r\n[^*]*"
                              r" FLAGS \(\\Seen \\Recent\)\)\r\nd OK FETCH completed\r\n")
        self.assertRegex(out, r"\r\n\* 2 FETCH \(UID 2 BODY\[\] \{\d+\}\r\n[^*]* FLAGS \(\\Seen \\Recent\)\)"
                              r"\r\ne OK UID FETCH completed\r\n")
        self.assertRegex(out, r"\r\n\* 3 FETCH \(BODY\[\] \{\d+\}\r\n[^*]* FLAGS \(\\Seen \\Recent\)\)"
                              r"\r\nf OK FETCH completed\r\n$")
        seen = {m.uid for m in self.store().open("INBOX").messages if "\\Seen" in m.flags}
        self.assertEqual(seen, {1, 2, 3})


    def test_a_long_item_list_is_answered_and_not_kept(self):
        from ismail.imap import cmd_message
        c = self.client(select="INBOX")
        names = " ".join(f"X-Field-{i}" for i in range(60))
        line = f"a FETCH 2 (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({names} Subject)])"
        first, again = c.say(line), c.say(line)
        self.assertIn("Subject: second", first)
        self.assertEqual(first, again)
        self.assertFalse([k for k in cmd_message._PLANS.values() if "X-Field-59" in str(k[0])])


class StoreTest(MessagesCase):
    def test_modes_and_silent(self):
        c = self.client(select="INBOX")
        other = self.client(select="INBOX")
        flags = "\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work"
        self.assertEqual(c.say("a STORE 1 +FLAGS (\\Seen $Work)"),
                         f"* FLAGS ({flags})\r\n* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted\r\n"
                         "* 1 FETCH (UID 1 FLAGS (\\Seen $Work \\Recent))\r\na OK STORE completed\r\n",
                         "a new keyword is announced in FLAGS before a FETCH shows it (RFC 3501 §7.2.6)")
        self.assertEqual(other.say("x NOOP"),
                         f"* FLAGS ({flags})\r\n* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted\r\n"
                         "* 1 FETCH (UID 1 FLAGS (\\Seen $Work))\r\nx OK NOOP completed\r\n",
                         "another session learns of the keyword the same way")
        self.assertEqual(other.say("y NOOP"), "y OK NOOP completed\r\n", "announced once")
        self.assertEqual(c.say("b STORE 1 -FLAGS \\Seen"),
                         "* 1 FETCH (UID 1 FLAGS ($Work \\Recent))\r\nb OK STORE completed\r\n")
        self.assertEqual(c.say("c STORE 1:2 FLAGS (\\Answered \\Recent)"),
                         "* 1 FETCH (UID 1 FLAGS (\\Answered \\Recent))\r\n"
                         "* 2 FETCH (UID 2 FLAGS (\\Answered \\Recent))\r\nc OK STORE completed\r\n")
        self.assertEqual(c.say("d STORE 3 +FLAGS.SILENT (\\Flagged)"), "d OK STORE completed\r\n")
        self.assertEqual(c.say("e UID STORE 3 FLAGS.SILENT ()"), "e OK UID STORE completed\r\n")
        self.assertEqual(self.store().open("INBOX").message(3).flags, frozenset())
        self.assertIn("$Work \\*)]", c.say("f SELECT INBOX"), "the keyword is now known")

    def test_bad_flags(self):
        c = self.client(select="INBOX")
        self.assertIn("a BAD unknown system flag", c.say("a STORE 1 +FLAGS (\\Bogus)"))
        self.assertIn("b BAD invalid flag", c.say("b STORE 1 +FLAGS (a%b)"))
        self.assertIn("c BAD", c.say('c STORE 1 +FLAGS ("quoted")'))
        self.assertIn("d BAD", c.say("d STORE 1 +FLAGS"))
        for n in range(26):
            c.say(f"k STORE 1 +FLAGS.SILENT (kw{n})")
        self.assertIn("e NO [LIMIT]", c.say("e STORE 1 +FLAGS (one-too-many)"))

    def test_read_only(self):
        c = self.client()
        c.say("a EXAMINE INBOX")
        self.assertIn("b NO [READ-ONLY]", c.say("b STORE 1 +FLAGS (\\Seen)"))
        self.assertIn("c NO [READ-ONLY]", c.say("c EXPUNGE"))
        self.assertIn("d NO [READ-ONLY]", c.say("d MOVE 1 Trash"))
        self.assertIn("e OK [COPYUID", c.say("e COPY 1 Trash"), "copying out is reading")


class SearchTest(MessagesCase):
    def test_search_keys(self):
        c = self.client(select="INBOX")
        c.say("a STORE 2 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(c.say("b SEARCH SUBJECT second"), "* SEARCH 2 4\r\nb OK SEARCH completed\r\n")
        self.assertIn("* SEARCH 4\r\n", c.say("c SEARCH UNSEEN FROM bob"))
        self.assertIn("* SEARCH 1 3 5\r\n", c.say("d SEARCH BODY \"line two\""))
        self.assertIn("* SEARCH 4 5\r\n", c.say("e UID SEARCH 4:*"))
        self.assertIn("* SEARCH 2\r\n", c.say("f SEARCH SEEN"))
        self.assertIn("* SEARCH 1 2 3 4 5\r\n", c.say("g SEARCH RECENT"))
        self.assertIn("* SEARCH 3\r\n", c.say("h SEARCH CHARSET UTF-8 3 ALL"))
        self.assertIn("* SEARCH\r\n", c.say("i SEARCH OR DELETED DRAFT"))
        self.assertIn("j NO [BADCHARSET (UTF-8 US-ASCII)]", c.say("j SEARCH CHARSET KOI8-R ALL"))
        self.assertIn("k BAD", c.say("k SEARCH"))
        self.assertIn("l BAD", c.say("l SEARCH SINCE yesterday"))
        self.assertIn("* SEARCH 1 3 5\r\n", c.send(b"m SEARCH CHARSET UTF-8 TEXT {4}\r\n") + c.send(b"line\r\n"))


class CopyMoveExpungeTest(MessagesCase):
    def test_copy_answers_copyuid(self):
        c = self.client(select="INBOX")
        trash = self.store().open("Trash")
        self.assertEqual(c.say("a COPY 2:4 Trash"),
                         f"a OK [COPYUID {trash.uidvalidity} 2:4 1:3] COPY completed\r\n")
        self.assertEqual(c.say("b UID COPY 1,5 Trash"),
                         f"b OK [COPYUID {trash.uidvalidity} 1,5 4:5] UID COPY completed\r\n")
        self.assertIn("c NO [TRYCREATE]", c.say("c COPY 1 Nowhere"))
        self.assertEqual(c.say("d UID COPY 77 Trash"), "d OK UID COPY completed\r\n")
        self.assertEqual(len(self.store().open("Trash").messages), 5)
        self.assertEqual(len(self.store().open("INBOX").messages), 5)
        reply = c.say("e COPY 1 INBOX")
        self.assertRegex(reply, r"^\* 6 EXISTS\r\n\* 6 RECENT\r\ne OK \[COPYUID \d+ 1 6\]")

    def test_move(self):
        c = self.client(select="INBOX")
        validity = self.store().open("Junk").uidvalidity
        self.assertEqual(c.say("a MOVE 2:3 Junk"),
                         f"* OK [COPYUID {validity} 2:3 1:2] Moved\r\n* 2 EXPUNGE\r\n* 2 EXPUNGE\r\n"
                         "a OK MOVE completed\r\n")
        self.assertEqual(c.say("b UID MOVE 5 Junk"),
                         f"* OK [COPYUID {validity} 5 3] Moved\r\n* 3 EXPUNGE\r\nb OK UID MOVE completed\r\n")
        self.assertEqual([m.uid for m in self.store().open("INBOX").messages], [1, 4])
        self.assertIn("c NO [TRYCREATE]", c.say("c MOVE 1 Nowhere"))

    def test_expunge_numbers(self):
        c = self.client(select="INBOX")
        c.say("a STORE 2,3,5 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(c.say("b EXPUNGE"), "* 2 EXPUNGE\r\n* 2 EXPUNGE\r\n* 3 EXPUNGE\r\nb OK EXPUNGE completed\r\n")
        self.assertEqual(c.say("c FETCH 1:* UID"), "* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 4)\r\nc OK FETCH completed\r\n")
        self.assertEqual(self.backend.stats.get("imap_expunged"), 3)
        self.assertIn("expunged=3", c.s.summary())

    def test_uid_expunge_only_the_named(self):
        c = self.client(select="INBOX")
        c.say("a STORE 1:* +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(c.say("b UID EXPUNGE 2:3"), "* 2 EXPUNGE\r\n* 2 EXPUNGE\r\nb OK UID EXPUNGE completed\r\n")
        self.assertEqual([m.uid for m in self.store().open("INBOX").messages], [1, 4, 5])
        self.assertIn("c BAD", c.say("c UID EXPUNGE"))

    def test_close_expunges_silently_unselect_does_not(self):
        c = self.client(select="INBOX")
        c.say("a STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(c.say("b UNSELECT"), "b OK UNSELECT completed\r\n")
        self.assertEqual(len(self.store().open("INBOX").messages), 5)
        c.select()
        self.assertEqual(c.say("c CLOSE"), "c OK CLOSE completed\r\n")
        self.assertEqual(c.s.state, "authenticated")
        self.assertEqual(len(self.store().open("INBOX").messages), 4)
        c.say("d EXAMINE INBOX")
        self.store().open("INBOX").store_flags([2], ["\\Deleted"], "add")
        c.say("e CLOSE")
        self.assertEqual(len(self.store().open("INBOX").messages), 4, "CLOSE of EXAMINE removes nothing")
        self.assertEqual(c.say("f CHECK"), "f BAD no folder selected (SELECT or EXAMINE first)\r\n")


class RepeatedCommandTest(MessagesCase):
    """A mail program downloading message after message pipelines one command again and
    again (``UID FETCH n (BODY.PEEK[])``); the session answers each one after the other
    straight from the stream (session._repeat), and must answer byte for byte as when
    every command goes through the reader and the command loop, whatever the commands
    find: a UID that is not there, a bad number, \\Seen to set, a message expunged by
    another session, new mail, another command in between."""

    SCRIPTS = {
        "download": [f"a{n} UID FETCH {n} (BODY.PEEK[])" for n in (1, 2, 99, 3, 4, 5)],
        "with UID and flags": [f"a{n} UID FETCH {n} (UID RFC822.SIZE BODY.PEEK[] FLAGS)" for n in (5, 4, 3)],
        "sequence numbers": [f"b{n} FETCH {n} (BODY.PEEK[])" for n in (1, 2, 9, 3)],
        "setting \\Seen": [f"c{n} UID FETCH {n} (BODY[])" for n in (1, 2, 3)],
        "ranges": ["d1 UID FETCH 1:* (FLAGS UID)", "d2 UID FETCH 2:3 (FLAGS UID)", "d3 UID FETCH 4,1 (FLAGS UID)"],
        "general renderer": [f"e{n} FETCH {n} (ENVELOPE BODY.PEEK[HEADER.FIELDS (Subject)])" for n in (1, 2)],
        "store": [f"f{n} UID STORE {n} +FLAGS (\\Flagged)" for n in (1, 2, 3)],
        "copy": [f"g{n} UID COPY {n} Archive" for n in (1, 2)],
        "another command between": ["h1 UID FETCH 1 (BODY.PEEK[])", "h2 NOOP", "h3 UID FETCH 2 (BODY.PEEK[])",
                                    "h4 UID FETCH 3 (BODY.PEEK[])", "h5 FETCH 1 (BODY.PEEK[])"],
    }

    def session_on_a_copy(self, name: str) -> Client:
        root = self.dir / name / "example.test" / "user"
        shutil.copytree(self.root, root)
        return Client(FakeBackend(root))

    MODES = ("downloads", "repeats", "loop")

    def answers(self, name: str, lines: list[str], lane, before=None, midway=None) -> str:
        """The session's answers to ``lines`` sent at once; ``before(root)`` runs first,
        ``midway(root)`` once the first command's tagged response has been sent.  ``lane``:
        "downloads" (or True) as the session runs, "repeats" without the downloads lane
        (session._downloads), "loop" (or False) every command through the command loop."""
        c = self.session_on_a_copy(name)
        self.addCleanup(c.s.close)
        c.login()
        c.say("a0 CREATE Archive")
        c.select("INBOX")
        root = c.s.store.root
        if before is not None:
            before(root)
        data = "".join(line + "\r\n" for line in lines).encode()
        first_done = (lines[0].split()[0] + " OK").encode()
        sent: list[bytes] = []
        with contextlib.ExitStack() as stack:
            if lane in ("repeats", "loop", False):
                stack.enter_context(mock.patch.object(CommandReader, "take_download", return_value=None))
            if lane in ("loop", False):
                stack.enter_context(mock.patch.object(CommandReader, "take_repeat", return_value=None))
            for item in c.s.feed(data):
                for piece in [item] if isinstance(item, bytes) else item:
                    sent.append(bytes(piece))
                    if midway is not None and piece.startswith(first_done):
                        midway(root)
        answer = b"".join(sent).decode("latin-1")   # a NUL made 0x80 is no UTF-8
        # Archive, made just now in each copy, gets the time as its UIDVALIDITY: runs a
        # second apart differ there and nowhere else.
        return re.sub(r"\[COPYUID \d+ ", "[COPYUID V ", answer)

    def elsewhere(self, root, *commands: str) -> None:
        """Another session on the INBOX at ``root`` says ``commands``; then new mail comes."""
        other = Client(FakeBackend(root))
        self.addCleanup(other.s.close)
        other.login()
        other.select("INBOX")
        for command in commands:
            other.say(command)
        self.deliver(OTHER, root)

    def test_a_pipeline_of_repeats_answers_as_the_command_loop_does(self):
        for name, lines in self.SCRIPTS.items():
            with self.subTest(name):
                direct = self.answers(name + "-1", lines, lane=True)
                looped = self.answers(name + "-2", lines, lane=False)
                self.assertEqual(direct, looped)
                self.assertEqual(self.answers(name + "-3", lines, lane="repeats"), looped)
                for line in lines:
                    self.assertIn("\r\n" + line.split()[0] + " ", "\r\n" + direct, "every command answered")

    # Downloads (session._downloads) among what they must leave to the other ways.
    DOWNLOADS = {
        "odd sets between": ["a1 UID FETCH 1 (BODY.PEEK[])", "a2 UID FETCH 2 (BODY.PEEK[])",
                             "a3 UID FETCH 01 (BODY.PEEK[])", "a4 UID FETCH 3 (BODY.PEEK[])",
                             "a5 UID FETCH 4294967296 (BODY.PEEK[])", "a6 UID FETCH 0 (BODY.PEEK[])",
                             "a7 UID FETCH 4294967295 (BODY.PEEK[])", "a8 UID FETCH 2:3 (BODY.PEEK[])",
                             "a9 UID FETCH 5 (BODY.PEEK[])", "a10 UID FETCH * (BODY.PEEK[])",
                             "a11 UID FETCH 4 (BODY.PEEK[])"],
        "UID named": [f"b{n} UID FETCH {n} (UID BODY.PEEK[])" for n in (3, 1, 2)],
        "UID after the text": [f"c{n} UID FETCH {n} (BODY.PEEK[] UID)" for n in (3, 1, 2)],
        "RFC822 sets \\Seen": [f"d{n} UID FETCH {n} RFC822" for n in (2, 1, 3)],
        "more items after the text": [f"f{n} UID FETCH {n} (BODY.PEEK[] RFC822.SIZE)" for n in (3, 2)],
        "a large message and a NUL": [f"e{n} UID FETCH {n} (BODY.PEEK[])" for n in (1, 7, 8, 7, 2)],
    }

    def test_downloads_answer_as_the_command_loop_does(self):
        """With UID 1 expunged by another session first (so no UID is its message number),
        new mail (UID 6), a message over the 64 KiB batch (UID 7) and one with a NUL (8)."""
        large = b"Subject: large\r\n\r\n" + b"0123456789" * 9000 + b"\r\n"
        nul = b"Subject: nul\r\n\r\nbefore\0after\r\n"

        def more_mail(root):
            self.elsewhere(root, "x1 STORE 1 +FLAGS.SILENT (\\Deleted)", "x2 EXPUNGE")
            self.deliver(large, root)
            self.deliver(nul, root)
        for name, lines in self.DOWNLOADS.items():
            with self.subTest(name):
                lines = ["x0 NOOP", *lines]   # its closing look announces the expunge
                got = {mode: self.answers(f"{name}-{mode}", lines, lane=mode, before=more_mail)
                       for mode in self.MODES}
                self.assertTrue(got["downloads"] == got["loop"], "as the command loop")
                self.assertTrue(got["repeats"] == got["loop"], "as the repeats")
                for line in lines:
                    tag = line.split()[0]
                    self.assertTrue(f"\r\n{tag} " in "\r\n" + got["loop"], f"{tag} answered")
        shown = got["loop"]
        self.assertTrue(0 <= shown.find("* 1 EXPUNGE\r\n") < shown.find("x0 OK"), "the expunge first")
        for text in ("* 6 FETCH (UID 7 BODY[] {%d}\r\n" % len(large),
                     "* 7 FETCH (UID 8 BODY[] {%d}\r\nSubject: nul\r\n\r\nbefore\x80after\r\n)" % len(nul),
                     "* 1 FETCH (UID 2 BODY[]"):
            self.assertTrue(text in shown, f"{text!r} in the answers")

    def test_new_mail_during_downloads_comes_before_the_last_answer(self):
        """The last download of a pipeline looks at the folder before its tagged response,
        as every command does: mail that came while the others were answered is announced."""
        def midway(root):
            self.deliver(OTHER, root)
        lines = [f"a{n} UID FETCH {n} (BODY.PEEK[])" for n in (1, 2, 3, 4)]
        got = {mode: self.answers(f"mail-{mode}", lines, lane=mode, midway=midway) for mode in self.MODES}
        self.assertEqual(got["downloads"], got["loop"])
        self.assertEqual(got["repeats"], got["loop"])
        self.assertTrue(got["loop"].index("* 4 FETCH") < got["loop"].index("* 6 EXISTS")
                        < got["loop"].index("a4 OK"), got["loop"])

    def test_a_wrapped_fetch_handler_sees_every_download(self):
        """Should FETCH's handler be wrapped (as cmd_quota wraps APPEND and COPY), the
        downloads lane steps aside: the wrapper runs for each command."""
        import dataclasses
        from ismail.imap.commands import COMMANDS
        inner = COMMANDS["FETCH"]
        calls = []

        def run(s, c):
            calls.append(c.tag)
            return inner.run(s, c)
        c = self.client(select="INBOX")
        with mock.patch.dict(COMMANDS, {"FETCH": dataclasses.replace(inner, run=run)}):
            out = c.send(b"".join(b"w%d UID FETCH %d (BODY.PEEK[])\r\n" % (n, n) for n in range(1, 6)))
        self.assertEqual(out.count(" OK UID FETCH completed\r\n"), 5)
        self.assertEqual(calls, [f"w{n}" for n in range(1, 6)])

    def test_downloads_take_no_command_apart(self):
        """The downloads lane answers what follows the first command: neither the command
        loop nor the general repeat reads those commands."""
        c = self.client(select="INBOX")
        with mock.patch.object(CommandReader, "take_repeat", autospec=True,
                               side_effect=CommandReader.take_repeat) as repeats:
            out = c.send(b"".join(b"r%d UID FETCH %d (BODY.PEEK[])\r\n" % (n, n) for n in range(1, 6)))
        self.assertEqual(out.count(" OK UID FETCH completed\r\n"), 5)
        self.assertEqual(re.findall(r"\* \d+ FETCH \(UID (\d+) BODY", out), ["1", "2", "3", "4", "5"])
        self.assertLessEqual(repeats.call_count, 1, "only to find that nothing follows")

    def test_expunged_elsewhere_and_new_mail(self):
        def meanwhile(root):
            self.elsewhere(root, "x1 STORE 3 +FLAGS.SILENT (\\Deleted)", "x2 EXPUNGE")
        lines = [f"b{n} FETCH {n} (BODY.PEEK[])" for n in (2, 3, 4)] + \
                [f"u{n} UID FETCH {n} (BODY.PEEK[])" for n in (3, 6)]
        direct = self.answers("elsewhere-1", lines, lane=True, before=meanwhile)
        looped = self.answers("elsewhere-2", lines, lane=False, before=meanwhile)
        self.assertEqual(direct, looped)
        self.assertIn("b3 NO [EXPUNGEISSUED]", direct)
        self.assertIn("* 6 EXISTS", direct)
        self.assertIn("* 6 FETCH (UID 6 BODY[]", direct)

    def test_a_change_between_two_repeats(self):
        """Each repeat looks at the folder before it runs, as the command loop does, when
        the last look is not recent (FRESH_ENOUGH): what another session did in between
        comes before its answer."""
        def midway(root):
            self.elsewhere(root, "x1 STORE 4 +FLAGS.SILENT (\\Flagged)")
        lines = [f"a{n} UID FETCH {n} (BODY.PEEK[])" for n in (1, 2, 3)]
        with mock.patch("ismail.imap.session.FRESH_ENOUGH", -1.0):
            direct = self.answers("change-1", lines, lane=True, midway=midway)
            looped = self.answers("change-2", lines, lane=False, midway=midway)
        self.assertEqual(direct, looped)
        self.assertTrue(direct.index("a1 OK") < direct.index("* 6 EXISTS") < direct.index("* 2 FETCH"), direct)
        self.assertIn("* 4 FETCH (UID 4 FLAGS (\\Flagged \\Recent))\r\n* 2 FETCH", direct)

    def test_a_long_pipeline_in_pieces(self):
        """3,000 commands (past the reader's 64 KiB buffer) arriving in pieces cut anywhere:
        each answered once, in order, with its message."""
        c = self.client(select="INBOX")
        rng = random.Random(3)
        uids = [rng.randint(1, 5) for _ in range(3000)]
        data = b"".join(b"p%d UID FETCH %d (BODY.PEEK[])\r\n" % (n, uid) for n, uid in enumerate(uids))
        out, pos = [], 0
        while pos < len(data):
            step = rng.randint(1, 200)
            out.append(flatten(c.s.feed(data[pos:pos + step])))
            pos += step
        answers = re.findall(rb"\* \d+ FETCH \(UID (\d+) BODY\[\] \{\d+\}\r\n.*?\)\r\np(\d+) OK UID FETCH completed\r\n",
                             b"".join(out), re.S)
        self.assertEqual([(int(uid), int(n)) for uid, n in answers], [(uid, n) for n, uid in enumerate(uids)])

    def test_the_repeats_are_answered_from_the_stream(self):
        c = self.client(select="INBOX")
        with mock.patch.object(CommandReader, "next", wraps=c.s._reader.next) as reads:
            c.s._reader.next = reads
            out = c.send(b"".join(b"r%d UID FETCH %d (BODY.PEEK[])\r\n" % (n, n) for n in range(1, 6)))
        self.assertEqual(out.count(" OK UID FETCH completed\r\n"), 5)
        self.assertLessEqual(reads.call_count, 3, "the first command and the end of the input")


class TwoSessionsTest(MessagesCase):
    def test_each_sees_the_others_changes(self):
        a, b = self.client(select="INBOX"), self.client(select="INBOX")
        b.say("b1 STORE 1 +FLAGS (\\Flagged)")
        self.assertEqual(a.say("a1 NOOP"),
                         "* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\na1 OK NOOP completed\r\n")
        b.say("b2 STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertIn("* 2 EXPUNGE", b.say("b3 EXPUNGE"))
        reply = a.say("a2 FETCH 1:* UID")
        self.assertNotIn(" EXPUNGE\r\n", reply, "no EXPUNGE during FETCH (RFC 3501 §7.4.1)")
        self.assertIn("* 3 FETCH (UID 3)", reply, "numbers as the client knows them")
        self.assertIn("a2 NO [EXPUNGEISSUED]", reply)
        self.assertNotIn("EXPUNGE\r\n", a.say("a3 STORE 3 +FLAGS (\\Seen)"))
        self.assertEqual(a.say("a4 SEARCH ALL"), "* SEARCH 1 3 4 5\r\na4 OK SEARCH completed\r\n")
        self.assertEqual(a.say("a5 NOOP"), "* 2 EXPUNGE\r\na5 OK NOOP completed\r\n")
        self.assertEqual(a.say("a6 FETCH 2 UID"), "* 2 FETCH (UID 3)\r\na6 OK FETCH completed\r\n")
        self.deliver(OTHER)
        reply = a.say("a7 UID FETCH 1 UID")
        self.assertIn("* 5 EXISTS\r\n* 5 RECENT\r\n", reply)
        self.assertIn("* 5 EXISTS\r\n* 0 RECENT\r\n", b.say("b4 NOOP"), "one session gets \\Recent")

    def test_a_pipeline_reports_new_mail_once_and_before_it_ends(self):
        a, b = self.client(select="INBOX"), self.client(select="INBOX")
        self.deliver(OTHER)
        out = a.s.feed(b"p1 UID FETCH 1 (FLAGS)\r\np2 UID FETCH 2 (FLAGS)\r\np3 UID FETCH 3 (FLAGS)\r\n")
        data = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in out).decode()
        self.assertEqual(data.count("* 6 EXISTS\r\n"), 1, data)
        self.assertLess(data.index("* 6 EXISTS"), data.index("p3 OK"), "announced within the pipeline")
        self.assertEqual(a.say("p4 NOOP"), "p4 OK NOOP completed\r\n", "and not again")
        # A change made while a pipeline runs is reported by its last command at the latest.
        first = a.s.feed(b"q1 UID FETCH 1 (FLAGS)\r\n")
        data = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in first).decode()
        b.say("b1 STORE 2 +FLAGS (\\Flagged)")
        out = a.s.feed(b"q2 UID FETCH 1 (FLAGS)\r\nq3 UID FETCH 1 (FLAGS)\r\n")
        data += b"".join(p if isinstance(p, bytes) else b"".join(p) for p in out).decode()
        flagged = data.find("* 2 FETCH (UID 2 FLAGS (\\Flagged")
        self.assertTrue(data.index("q1 OK") < flagged < data.index("q3 OK"), data)

    def test_uid_commands_may_report_expunges(self):
        a, b = self.client(select="INBOX"), self.client(select="INBOX")
        b.say("b1 STORE 4 +FLAGS.SILENT (\\Deleted)")
        b.say("b2 EXPUNGE")
        self.assertEqual(a.say("a1 UID FETCH 4:5 UID"), "* 5 FETCH (UID 5)\r\n* 4 EXPUNGE\r\n"
                                                          "a1 OK UID FETCH completed\r\n")
        self.assertEqual(a.say("a2 FETCH 4 UID"), "* 4 FETCH (UID 5)\r\na2 OK FETCH completed\r\n")

    def test_copy_of_a_message_expunged_elsewhere_copies_nothing(self):
        a, b = self.client(select="INBOX"), self.client(select="INBOX")
        b.say("b1 STORE 2 +FLAGS.SILENT (\\Deleted)")
        b.say("b2 EXPUNGE")
        self.assertIn("a1 NO [EXPUNGEISSUED]", a.say("a1 COPY 1:3 Trash"))
        self.assertEqual(self.store().open("Trash").messages, [])

    def test_folder_deleted_under_a_session(self):
        a, b = self.client(), self.client()
        a.say("a1 CREATE Box")
        a.select("Box")
        b.say("b1 DELETE Box")
        self.assertEqual(a.say("a2 NOOP"), "* BYE The selected folder was deleted or renamed\r\n"
                                            "a2 OK NOOP completed\r\n")
        self.assertTrue(a.s.closing)


class IdleTest(MessagesCase):
    def test_idle_reports_new_mail_flags_and_expunges(self):
        a, b = self.client(select="INBOX"), self.client(select="INBOX")
        self.assertEqual(a.say("i1 IDLE"), "+ idling\r\n")
        self.assertEqual(a.s.tick(), [])
        started = time.monotonic()
        self.deliver(OTHER)
        reported = b""
        while b"EXISTS" not in reported and time.monotonic() - started < 2:
            reported += b"".join(a.s.tick())
            time.sleep(0.05)
        self.assertEqual(reported, b"* 6 EXISTS\r\n* 6 RECENT\r\n")
        b.say("b1 STORE 1 +FLAGS.SILENT (\\Deleted)")
        b.say("b2 EXPUNGE")
        self.assertEqual(b"".join(a.s.tick()), b"* 1 EXPUNGE\r\n", "EXPUNGE is allowed during IDLE")
        lines = a.s.lines
        a.s.tick()
        self.assertGreater(a.s.lines, lines, "an IDLE client is not idle")
        self.assertEqual(a.say("DONE"), "i1 OK IDLE terminated\r\n")
        self.assertEqual(a.s.tick(), [])

    def test_idle_counts_as_activity_for_30_minutes(self):
        c = self.client(select="INBOX")
        c.say("i1 IDLE")
        now = time.monotonic()
        with mock.patch("ismail.imap.session.time.monotonic", return_value=now + IDLE_KEEPALIVE - 5):
            lines = c.s.lines
            c.s.tick()
            self.assertEqual(c.s.lines, lines + 1)
        with mock.patch("ismail.imap.session.time.monotonic", return_value=now + IDLE_KEEPALIVE + 5):
            c.s.tick()
            self.assertEqual(c.s.lines, lines + 1, "then the autologout timer runs (RFC 2177: "
                                                   "clients re-issue IDLE within 29 minutes)")

    def test_idle_in_authenticated_state_and_wrong_end(self):
        c = self.client()
        self.assertEqual(c.send(b"i1 IDLE\r\ndone\r\ni2 NOOP\r\n"),
                         "+ idling\r\ni1 OK IDLE terminated\r\ni2 OK NOOP completed\r\n")
        c.say("i3 IDLE")
        self.assertEqual(c.say("i4 NOOP"), "i3 BAD expected DONE to end IDLE\r\n")
        self.assertIn("i5 BAD", c.say("i5 IDLE now"))

    def test_idle_reports_what_was_pending(self):
        a, b = self.client(select="INBOX"), self.client(select="INBOX")
        b.say("b1 STORE 5 +FLAGS.SILENT (\\Deleted)")
        b.say("b2 EXPUNGE")
        a.say("a1 FETCH 1 UID")
        self.assertEqual(a.say("a2 IDLE"), "+ idling\r\n* 5 EXPUNGE\r\n")


class LargeFolderTest(SessionCase):
    COUNT = 100_000

    def test_fetch_of_100000_messages_streams(self):
        cur = str(self.root / "cur") + os.sep
        self.client(login=True)  # makes the Maildir
        body = b"Subject: s\n\nbody\n"
        suffix = f",S={len(body)},W={len(body) + 3}{INFO_SEP}2,S"
        for i in range(self.COUNT):
            fd = os.open(f"{cur}{1700000000 + i // 10}.M{i % 10}P1Q{i}.host{suffix}",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, body)
            os.close(fd)
        c = self.client(select="INBOX")
        self.assertEqual(c.s.selected.uids.itemsize, 4, "4 bytes a message in the session")
        tracemalloc.start()
        try:
            t0 = time.perf_counter()
            out = c.s.feed(b"f FETCH 1:* (UID FLAGS)\r\n")
            base = tracemalloc.get_traced_memory()[0]
            growth = count = 0
            tail = b""
            for item in out:
                for piece in ((item,) if isinstance(item, bytes) else item):
                    count += piece.count(b" FETCH (")
                    tail = (tail + piece)[-200:]
                    if count % 5000 == 0:
                        growth = max(growth, tracemalloc.get_traced_memory()[0] - base)
            seconds = time.perf_counter() - t0
        finally:
            tracemalloc.stop()
        self.assertEqual(count, self.COUNT)
        self.assertTrue(tail.endswith(b"* 100000 FETCH (UID 100000 FLAGS (\\Seen \\Recent))\r\n"
                                      b"f OK FETCH completed\r\n"), tail)
        self.assertLess(growth, 1_000_000, "the responses are made as they are sent")
        print(f"\n  FETCH 1:* (UID FLAGS) of 100,000 messages: {seconds:.2f}s (traced), "
              f"memory growth {growth} bytes", flush=True)
        reply = c.say("s SEARCH UNSEEN")
        self.assertEqual(reply, "* SEARCH\r\ns OK SEARCH completed\r\n")


if __name__ == "__main__":
    unittest.main()
