"""The IMAP session on folders by name: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE,
LIST, LSUB, STATUS and APPEND, over a real MailStore (see test_imap_session for the helpers)."""
from __future__ import annotations

import re
import shutil
import unittest
from datetime import datetime
from unittest import mock

from ismail.store import folders_flags, utf7
from ismail.store.folders_box import Box
from tests.test_imap_session import MSG, SessionCase


class SelectTest(SessionCase):
    def test_select_answers(self):
        self.deliver()
        self.deliver()
        store = self.store()
        inbox = store.open("INBOX")
        inbox.store_flags([1], ["\\Seen", "$Forwarded"], "add")
        c = self.client()
        lines = c.lines("a SELECT INBOX")
        self.assertEqual(lines[0], "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)")
        self.assertEqual(lines[1], "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
                                   "$Forwarded \\*)] Flags permitted")
        self.assertEqual(lines[2:5], ["* 2 EXISTS", "* 2 RECENT", "* OK [UNSEEN 2] First unseen"])
        self.assertEqual(lines[5], f"* OK [UIDVALIDITY {inbox.uidvalidity}] UIDs valid")
        self.assertEqual(lines[6], "* OK [UIDNEXT 3] Predicted next UID")
        self.assertEqual(lines[7], "a OK [READ-WRITE] SELECT completed")
        self.assertEqual(c.s.state, "selected")
        other = self.client()
        self.assertIn("* 0 RECENT", other.say("b SELECT INBOX"), "\\Recent goes to one session only")
        self.assertIn("* 0 RECENT", c.say("c SELECT inbox"), "\\Recent was told once, and that was it")

    def test_examine_is_read_only_and_claims_nothing(self):
        self.deliver()
        c = self.client()
        reply = c.say("a EXAMINE INBOX")
        self.assertIn("* OK [PERMANENTFLAGS ()] Read-only folder", reply)
        # It reports the unclaimed recent message, as Dovecot does (ImapTest checks it) ...
        self.assertIn("* 1 RECENT", reply)
        self.assertIn("a OK [READ-ONLY] EXAMINE completed", reply)
        self.assertIn("* 1 RECENT", self.client().say("b SELECT INBOX"), "... without claiming it")

    def test_failed_select_leaves_no_folder_selected(self):
        c = self.client(select="INBOX")
        self.assertIn("a NO [NONEXISTENT]", c.say("a SELECT Nowhere"))
        self.assertEqual(c.s.state, "authenticated")
        self.assertIn("b BAD no folder selected", c.say("b FETCH 1 FLAGS"))
        self.assertIn("c NO [CANNOT]", c.say("c SELECT &Jjo"))
        self.assertIn("d BAD", c.say("d SELECT INBOX (CONDSTORE)"))

    def test_selecting_a_special_folder_and_unicode_names(self):
        c = self.client()
        self.assertIn("a OK [READ-WRITE]", c.say("a SELECT Sent"))
        wire = utf7.encode("Entwürfe")
        self.assertIn("b OK", c.say(f"b CREATE {wire}"))
        self.assertTrue(self.store().exists("Entwürfe"))
        self.assertIn("c OK", c.say(f'c SELECT "{wire}"'))


class ManageTest(SessionCase):
    def test_create_list_rename_delete(self):
        c = self.client()
        self.assertIn("a OK", c.say("a CREATE Work/2024"))
        self.assertIn("b NO [ALREADYEXISTS]", c.say("b CREATE Work"))
        self.assertIn("b NO [ALREADYEXISTS]", c.say("b CREATE inbox"))
        self.assertIn("c OK", c.say("c CREATE Notes/"))
        self.assertTrue(self.store().exists("Notes"))
        listing = c.say('d LIST "" *')
        self.assertIn('* LIST (\\HasChildren) "/" "Work"\r\n', listing)
        self.assertIn('* LIST (\\HasNoChildren) "/" "Work/2024"\r\n', listing)
        self.assertIn("e NO [CANNOT]", c.say("e DELETE Work"))
        self.assertIn("f OK", c.say("f RENAME Work Projects"))
        self.assertEqual(c.say('g LIST "" Projects/%'), '* LIST (\\HasNoChildren) "/" "Projects/2024"\r\n'
                                                        'g OK LIST completed\r\n')
        self.assertIn("h NO [NONEXISTENT]", c.say("h RENAME Work Other"))
        self.assertIn("i NO [ALREADYEXISTS]", c.say("i RENAME Projects Sent"))
        self.assertIn("j OK", c.say("j DELETE Projects/2024"))
        self.assertIn("k NO [NONEXISTENT]", c.say("k DELETE Projects/2024"))
        self.assertIn("l NO [CANNOT] INBOX cannot be deleted", c.say("l DELETE INBOX"))
        self.assertIn("m NO [CANNOT]", c.say("m CREATE a//b"))

    def test_delete_or_rename_of_the_selected_folder_deselects_it(self):
        c = self.client()
        c.say("a CREATE Old")
        c.select("Old")
        self.assertIn("b OK", c.say("b RENAME Old New"))
        self.assertEqual(c.s.state, "authenticated")
        c.select("New")
        self.assertIn("c OK", c.say("c DELETE New"))
        self.assertEqual(c.s.state, "authenticated")
        self.assertIn("d OK", c.say("d NOOP"))

    def test_rename_inbox_moves_its_messages_and_keeps_it_selected(self):
        self.deliver()
        self.deliver()
        c = self.client(select="INBOX")
        reply = c.say("a RENAME INBOX Old-Mail")
        self.assertIn("* 1 EXPUNGE\r\n* 1 EXPUNGE\r\na OK", reply)
        self.assertEqual(c.s.state, "selected")
        self.assertIn("* STATUS \"Old-Mail\" (MESSAGES 2)", c.say("b STATUS Old-Mail (MESSAGES)"))

    def test_subscriptions_and_lsub(self):
        c = self.client()
        c.say("a CREATE Work/2024")
        self.assertIn("b OK", c.say("b SUBSCRIBE Work/2024"))
        self.assertIn("b OK", c.say("b SUBSCRIBE Gone"))
        self.assertEqual(c.say('c LSUB "" Work/*'), '* LSUB () "/" "Work/2024"\r\nc OK LSUB completed\r\n')
        self.assertIn('* LSUB (\\Noselect) "/" "Work"', c.say('d LSUB "" %'))
        self.assertIn('* LSUB () "/" "Gone"', c.say('d LSUB "" %'), "a name need not exist (§6.3.9)")
        self.assertIn('* LSUB () "/" "INBOX"', c.say('d LSUB "" *'))
        self.assertIn("e OK", c.say("e UNSUBSCRIBE Work/2024"))
        self.assertNotIn("Work", c.say('f LSUB "" *'))
        self.assertEqual(c.say('g LSUB "" ""'), "g OK LSUB completed\r\n")


class ListTest(SessionCase):
    def setUp(self):
        super().setUp()
        self.c = self.client()
        for name in ("Work/2024/Q1", "Work/2023", utf7.encode("Entwürfe"), "INBOX/Lists"):
            self.assertIn("OK", self.c.say(f'x CREATE "{name}"'))

    def names(self, reference: str, pattern: str) -> list[str]:
        reply = self.c.say(f'l LIST "{reference}" "{pattern}"')
        self.assertTrue(reply.endswith("l OK LIST completed\r\n"), reply)
        return re.findall(r'^\* LIST \([^)]*\) "/" "([^"]*)"', reply, re.M)

    def test_wildcards(self):
        self.assertEqual(self.names("", "*"), ["INBOX", "Drafts", "Entw&APw-rfe", "INBOX/Lists", "Junk",
                                               "Sent", "Trash", "Work", "Work/2023", "Work/2024",
                                               "Work/2024/Q1"])
        self.assertEqual(self.names("", "%"), ["INBOX", "Drafts", "Entw&APw-rfe", "Junk", "Sent",
                                               "Trash", "Work"])
        self.assertEqual(self.names("", "Work/%"), ["Work/2023", "Work/2024"])
        self.assertEqual(self.names("Work", "%"), ["Work/2023", "Work/2024"])
        self.assertEqual(self.names("Work/", "*"), ["Work/2023", "Work/2024", "Work/2024/Q1"])
        self.assertEqual(self.names("", "W*4"), ["Work/2024"])
        self.assertEqual(self.names("", "inbox"), ["INBOX"])
        self.assertEqual(self.names("", "Inbox/%"), ["INBOX/Lists"])
        self.assertEqual(self.names("", "Nothing*"), [])

    def test_attributes(self):
        reply = self.c.say('l LIST "" *')
        self.assertIn('* LIST (\\HasNoChildren \\Sent) "/" "Sent"', reply)
        self.assertIn('* LIST (\\HasNoChildren \\Trash) "/" "Trash"', reply)
        self.assertIn('* LIST (\\HasNoChildren \\Junk) "/" "Junk"', reply)
        self.assertIn('* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"', reply)
        self.assertIn('* LIST (\\HasChildren) "/" "INBOX"', reply)
        self.assertIn('* LIST (\\HasChildren) "/" "Work/2024"', reply)

    def test_separator_and_levels_without_a_folder(self):
        self.assertEqual(self.c.say('l LIST "" ""'), '* LIST (\\Noselect) "/" ""\r\nl OK LIST completed\r\n')
        (self.root / ".Lost.Child" / "cur").mkdir(parents=True)
        (self.root / ".Lost.Child" / "new").mkdir()
        (self.root / ".Lost.Child" / "tmp").mkdir()
        reply = self.c.say('l LIST "" "Lost*"')
        self.assertIn('* LIST (\\Noselect \\HasChildren) "/" "Lost"', reply)
        self.assertIn('* LIST (\\HasNoChildren) "/" "Lost/Child"', reply)

    def test_bad_arguments(self):
        self.assertIn("l BAD", self.c.say('l LIST ""'))
        self.assertIn("l BAD", self.c.say('l LIST "" (x)'))


class StatusTest(SessionCase):
    def test_status(self):
        self.deliver()
        self.deliver()
        self.store().open("INBOX").store_flags([2], ["\\Seen"], "add")
        c = self.client()
        validity = self.store().open("INBOX").uidvalidity
        self.assertEqual(c.say("a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"),
                         f'* STATUS "INBOX" (MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY {validity} UNSEEN 1)\r\n'
                         "a OK STATUS completed\r\n")
        self.assertIn('* STATUS "INBOX" (UNSEEN 1)', c.say("b STATUS inbox (unseen)"))
        self.assertIn("c BAD unknown STATUS item SIZES", c.say("c STATUS INBOX (SIZES)"))
        self.assertIn("d BAD", c.say("d STATUS INBOX ()"))
        self.assertIn("e NO [NONEXISTENT]", c.say("e STATUS Nowhere (MESSAGES)"))
        self.assertIn("f BAD", c.say("f STATUS INBOX MESSAGES"))


class AppendTest(SessionCase):
    def test_append_with_flags_and_date(self):
        c = self.client()
        validity = self.store().open("Drafts").uidvalidity
        reply = c.send(b'a APPEND Drafts (\\Draft \\Seen $Work) "05-Feb-2024 13:14:15 +0100" {%d}\r\n' % len(MSG))
        self.assertEqual(reply, "+ Ready for literal data\r\n")
        reply = c.send(MSG + b"\r\n")
        self.assertEqual(reply, f"a OK [APPENDUID {validity} 1] APPEND completed\r\n")
        folder = self.store().open("Drafts")
        ref = folder.messages[0]
        self.assertEqual(ref.flags, frozenset({"\\Draft", "\\Seen", "$Work"}))
        self.assertEqual(ref.internaldate, 1707135255.0)
        self.assertEqual(folder.read(1), MSG)
        self.assertEqual(self.backend.stats.get("imap_appended"), 1)
        self.assertIn("appended=1", c.s.summary())

    def test_append_forms(self):
        c = self.client()
        self.assertIn("a OK [APPENDUID", c.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(MSG), MSG)))
        self.assertIn("b OK [APPENDUID", c.send(b'b APPEND INBOX " 5-Feb-2024 13:14:15 -0000" {3+}\r\nx\r\n\r\n'))
        self.assertIn("c OK [APPENDUID", c.send(b"c APPEND INBOX () ~{4+}\r\nx\0y\n\r\n"))
        self.assertIn("d BAD", c.send(b"d APPEND INBOX \"hello\"\r\n"))
        self.assertIn("e BAD bad date-time", c.send(b'e APPEND INBOX "yesterday" {1+}\r\nx\r\n'))
        self.assertIn("f BAD", c.send(b"f APPEND INBOX (\\Bogus) {1+}\r\nx\r\n"))
        self.assertIn("g NO", c.send(b"g APPEND INBOX {0+}\r\n\r\n"))
        self.assertIn("h BAD", c.send(b'h APPEND INBOX "31-Feb-2024 00:00:00 +0000" {1+}\r\nx\r\n'))
        self.assertEqual(len(self.store().open("INBOX").messages), 3)

    def test_append_to_a_missing_folder_says_trycreate(self):
        c = self.client()
        self.assertIn("a NO [TRYCREATE]", c.send(b"a APPEND Nowhere {1+}\r\nx\r\n"))

    def test_append_to_the_selected_folder_is_reported(self):
        c = self.client(select="INBOX")
        reply = c.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(MSG), MSG))
        self.assertRegex(reply, r"^\* 1 EXISTS\r\n\* 1 RECENT\r\na OK \[APPENDUID \d+ 1\]")

    def test_a_folder_deleted_by_another_session_during_a_command(self):
        """Another mail program deletes the folder while APPEND, COPY or STATUS works in
        it: NO with the code of a missing folder, as if the command had come after the
        deletion, and no internal error in the log; the session goes on."""
        c = self.client(select="INBOX")
        c.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(MSG), MSG))
        write_tmp, index, index_locked = Box.write_tmp, Box.index, Box.index_locked

        def deleted_first(original):
            def run(box, *args, **kw):
                if box.name == "Work":
                    shutil.rmtree(box.path)   # the other session's DELETE, at the worst moment
                return original(box, *args, **kw)
            return run

        cases = [("b APPEND Work {1+}\r\nx\r\n", "write_tmp", write_tmp, "b NO [TRYCREATE]"),
                 ("c COPY 1 Work\r\n", "index_locked", index_locked, "c NO [TRYCREATE]"),
                 ("d MOVE 1 Work\r\n", "index_locked", index_locked, "d NO [TRYCREATE]"),
                 ("d MOVE 1 Work\r\n", "index", index, "d NO [TRYCREATE]"),
                 ("e STATUS Work (MESSAGES)\r\n", "index", index, "e NO [NONEXISTENT]"),
                 ("h EXAMINE Work\r\n", "index", index, "h NO [NONEXISTENT]")]
        for line, method, original, answer in cases:
            self.assertIn("OK", c.say("x CREATE Work"))
            with mock.patch.object(Box, method, deleted_first(original)), \
                    self.assertNoLogs("ismail", "ERROR"):
                reply = c.send(line.encode())
            self.assertIn(answer, reply, line)
            self.assertFalse((self.root / ".Work").exists(), (line, method, sorted(str(p) for p in (self.root / ".Work").rglob("*"))))
        self.assertIn("OK", c.say("x CREATE Work"))
        write = folders_flags.atomic_write

        def written_then_deleted(path, *args, **kw):   # the DELETE just after the keywords' file
            write(path, *args, **kw)
            shutil.rmtree(path.parent)

        with mock.patch.object(folders_flags, "atomic_write", written_then_deleted), \
                self.assertNoLogs("ismail", "ERROR"):
            self.assertIn("g NO [TRYCREATE]", c.send(b"g APPEND Work (Later) {1+}\r\nx\r\n"))
        self.assertIn("f OK", c.say("f SELECT INBOX"))
        self.assertEqual(len(self.store().open("INBOX").messages), 1, "MOVE moved nothing")
        # the folder another session has selected, deleted while it looks for news
        self.assertIn("OK", c.say("x CREATE Work"))
        other = self.client(select="Work")
        other.s.selected.folder._box.uidlist.path.touch()   # looks changed: it is read again
        with mock.patch.object(Box, "index", deleted_first(index)), self.assertNoLogs("ismail", "ERROR"):
            self.assertIn("* BYE The selected folder was deleted or renamed", other.say("n NOOP"))
        self.assertTrue(other.s.closing)

    def test_too_large_is_refused_before_the_continuation(self):
        c = self.client(max_message_bytes=1000)
        reply = c.send(b"a APPEND INBOX {1001}\r\n")
        self.assertEqual(reply, "a NO [TOOBIG] message too large (at most 1000 octets)\r\n")
        reply = c.send(b"b APPEND INBOX {1001+}\r\n" + b"x" * 1001 + b"\r\nc NOOP\r\n")
        self.assertEqual(reply, "b NO [TOOBIG] message too large (at most 1000 octets)\r\n"
                                "c OK NOOP completed\r\n")
        self.assertEqual(self.store().open("INBOX").messages, [])

    def test_a_client_that_drops_mid_append_leaves_nothing(self):
        c = self.client()
        c.send(b"a APPEND INBOX {%d}\r\n" % len(MSG))
        c.send(MSG[:30])
        self.assertTrue(c.s.in_transaction)
        c.s.close()
        self.assertFalse(c.s.in_transaction)
        inbox = self.root
        self.assertEqual([p for sub in ("new", "cur", "tmp") for p in (inbox / sub).iterdir()], [])

    def test_internaldate_round_trips(self):
        c = self.client(select="INBOX")
        c.send(b'a APPEND INBOX "05-Feb-2024 13:14:15 +0000" {1+}\r\nx\r\n')
        got = re.search(r'INTERNALDATE "([^"]+)"', c.say("b FETCH 1 INTERNALDATE")).group(1)
        self.assertEqual(datetime.strptime(got, "%d-%b-%Y %H:%M:%S %z").timestamp(), 1707138855.0)


if __name__ == "__main__":
    unittest.main()
