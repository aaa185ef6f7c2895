"""The IMAP command reader, fed bytes as a client would send them (no sockets), and the
token helpers (imap/tokens.py).

What is checked is what the session would get: commands with their tokens, Continue for
each synchronising literal, BadCommand for every malformed command (and the command after
it still read), and the helpers' answers and errors.
"""
from __future__ import annotations

import random
import time
import unittest
from unittest import mock

from ismail.imap import fetch, parser, search
from ismail.imap.parser import (
    LINE_TOO_LONG, LITERAL_TOO_LARGE, BadCommand, Command, CommandReader, Continue,
)
from ismail.imap.tokens import (
    Atom, FetchAtt, List, String, as_list, astring, is_atom, nil_or, nstring, number,
    parse_sequence_set, quote,
)

NOOP = b"Z9 NOOP\r\n"


def read_all(reader: CommandReader) -> list:
    out = []
    while (item := reader.next()) is not None:
        out.append(item)
    return out


def parse(data: bytes, max_literal: int = 1 << 20, max_line: int = 65536) -> list:
    reader = CommandReader(max_literal, max_line)
    reader.feed(data)
    return read_all(reader)


def one(data: bytes) -> Command:
    [cmd] = parse(data)
    assert isinstance(cmd, Command), cmd
    return cmd


class SimpleCommands(unittest.TestCase):
    def test_noop(self):
        self.assertEqual(one(b"a001 noop\r\n"), Command("a001", "NOOP", False, []))

    def test_arguments_keep_their_case(self):
        cmd = one(b"A1 SELECT Inbox\r\n")
        self.assertEqual(cmd.args, [Atom("Inbox")])
        self.assertIsInstance(cmd.args[0], Atom)
        self.assertTrue(is_atom(cmd.args[0], "INBOX"))

    def test_uid_commands(self):
        cmd = one(b"A2 uid fetch 1:*,5 (FLAGS)\r\n")
        self.assertEqual((cmd.name, cmd.uid), ("FETCH", True))
        self.assertEqual(cmd.args, ["1:*,5", ["FLAGS"]])
        self.assertEqual(one(b"A3 UID MOVE 4 Trash\r\n").name, "MOVE")
        self.assertFalse(one(b"A4 FETCH 1 UID\r\n").uid)

    def test_bare_lf_and_extra_spaces_are_accepted(self):
        cmds = parse(b"A1 NOOP\nA2  LOGIN  joe   secret \r\n")
        self.assertEqual([c.name for c in cmds], ["NOOP", "LOGIN"])
        self.assertEqual(cmds[1].args, ["joe", "secret"])

    def test_atoms_with_specials(self):
        cmd = one(b'A1 STORE 2:4 +FLAGS.SILENT (\\Seen \\Deleted $Junk)\r\n')
        self.assertEqual(cmd.args, ["2:4", "+FLAGS.SILENT", ["\\Seen", "\\Deleted", "$Junk"]])
        cmd = one(b'A2 LIST "" [Gmail]/%\r\n')
        self.assertEqual(cmd.args, [b"", "[Gmail]/%"])
        self.assertEqual(one(b"A3 SELECT foo]bar\r\n").args, ["foo]bar"])

    def test_nil_is_an_atom(self):
        cmd = one(b"A1 ID NIL\r\n")
        self.assertIsNone(nstring(cmd.args[0]))
        self.assertEqual(astring(cmd.args[0]), "NIL")   # a mailbox may be called NIL

    def test_pipelining(self):
        data = b"A1 NOOP\r\nA2 SELECT INBOX\r\nA3 FETCH 1 (UID)\r\nA4 LOGOUT\r\n"
        self.assertEqual([c.tag for c in parse(data)], ["A1", "A2", "A3", "A4"])

    def test_any_chunking_gives_the_same_results(self):
        script = (b'A1 LOGIN {3}\r\njoe "se\\"cret"\r\nA2 APPEND INBOX (\\Seen) {5+}\r\nab\r\n)'
                  b'\r\nA3 FETCH 1 BODY[1]<0.5>\nA4 BAD ((\r\nA5 X ' + b"l" * 150 +
                  b' {4+}\r\nA6 Y\r\nA7 APPEND X {500}\r\nA8 FETCH 1 "a\xff"\r\n' + NOOP)
        whole = parse(script, max_literal=100, max_line=100)
        self.assertEqual([getattr(r, "tag", r) for r in whole],
                         [Continue(3), "A1", "A2", "A3", "A4", "A5", "A7", "A8", "Z9"])
        rng = random.Random(5)
        for _ in range(50):
            reader, got, i = CommandReader(100, 100), [], 0
            while i < len(script):
                n = rng.choice((1, 2, 3, 7, 40, 200))
                reader.feed(script[i:i + n])
                got += read_all(reader)
                i += n
            self.assertEqual(got, whole)

    def test_byte_by_byte(self):
        reader = CommandReader(100)
        got = []
        for b in b'A1 LOGIN "j\\"oe" {3+}\r\npw!\r\nA2 NOOP\r\n':
            reader.feed(bytes([b]))
            got += read_all(reader)
        self.assertEqual(got, [Command("A1", "LOGIN", False, [b'j"oe', b"pw!"]),
                               Command("A2", "NOOP", False, [])])


class Strings(unittest.TestCase):
    def test_quoted_with_escapes(self):
        cmd = one(b'A1 LOGIN "us\\\\er" "pa\\"ss word"\r\n')
        self.assertEqual(cmd.args, [b"us\\er", b'pa"ss word'])
        self.assertFalse(cmd.args[0].literal)
        self.assertEqual(astring(cmd.args[1]), 'pa"ss word')

    def test_quoted_may_hold_parentheses_and_braces(self):
        self.assertEqual(one(b'A1 SEARCH SUBJECT "(a) {5}"\r\n').args, ["SUBJECT", b"(a) {5}"])
        self.assertEqual(one(b'A1 LOGIN "" "x{3}"\r\n').args, [b"", b"x{3}"])

    def test_nested_lists(self):
        cmd = one(b"A1 SEARCH OR (FROM a (TO b)) NOT ((SEEN))\r\n")
        self.assertEqual(cmd.args, ["OR", ["FROM", "a", ["TO", "b"]], "NOT", [["SEEN"]]])
        self.assertIsInstance(cmd.args[1][2], List)
        self.assertEqual(one(b"A2 STORE 1 FLAGS ()\r\n").args[2], [])

    def test_search_with_charset(self):
        cmd = one(b'A1 UID SEARCH CHARSET "UTF-8" (OR SUBJECT "x y" (FROM "bob")) UNSEEN\r\n')
        self.assertEqual(cmd.args, ["CHARSET", b"UTF-8",
                                    ["OR", "SUBJECT", b"x y", ["FROM", b"bob"]], "UNSEEN"])
        self.assertEqual(search.parse_search(cmd.args).charset, "UTF-8")


class Literals(unittest.TestCase):
    def test_synchronising_literal(self):
        reader = CommandReader(100)
        reader.feed(b"A1 LOGIN {3}\r\n")
        self.assertEqual(reader.next(), Continue(3))
        self.assertIsNone(reader.next())            # Continue is returned once
        reader.feed(b"joe {6}\r\n")
        self.assertEqual(reader.next(), Continue(6))
        self.assertIsNone(reader.next())
        reader.feed(b"secret\r\nA2 NOOP\r\n")
        cmd = reader.next()
        self.assertEqual(cmd.args, [b"joe", b"secret"])
        self.assertTrue(all(a.literal for a in cmd.args))
        self.assertEqual(reader.next().tag, "A2")
        self.assertIsNone(reader.next())

    def test_literal_plus_needs_no_continuation(self):
        results = parse(b"A1 LOGIN {3+}\r\njoe {6+}\r\nsecret\r\n" + NOOP)
        self.assertEqual(results[0].args, [b"joe", b"secret"])
        self.assertEqual(results[1].tag, "Z9")

    def test_literal_split_across_many_feeds(self):
        body = b"Subject: x\r\n\r\n" + b"line\r\n" * 200
        reader = CommandReader(1 << 20)
        wire = b"A1 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n" + NOOP
        got = []
        for i in range(0, len(wire), 7):
            reader.feed(wire[i:i + 7])
            got += read_all(reader)
        self.assertEqual(got[0].args, [Atom("INBOX"), body])
        self.assertEqual(got[1].tag, "Z9")

    def test_literal_with_crlf_paren_and_header_inside(self):
        data = b"a\r\n)\r\n{5}\r\n"
        cmd = one(b"A1 SEARCH (BODY {%d+}\r\n" % len(data) + data + b" SEEN)\r\n")
        self.assertEqual(cmd.args, [["BODY", data, "SEEN"]])

    def test_literal_followed_directly_by_closing_paren(self):
        self.assertEqual(one(b"A1 X (a {1+}\r\nb)\r\n").args, [["a", b"b"]])

    def test_empty_literal(self):
        reader = CommandReader(10)
        reader.feed(b"A1 LOGIN {0}\r\n")
        self.assertEqual(reader.next(), Continue(0))
        reader.feed(b" x\r\n")
        self.assertEqual(reader.next().args, [b"", "x"])

    def test_literal8_for_append_only(self):
        cmd = one(b"A1 APPEND INBOX ~{3+}\r\na\x00b\r\n")
        self.assertEqual(cmd.args[1], b"a\x00b")
        self.assertTrue(cmd.args[1].binary)
        results = parse(b"A1 LOGIN ~{3+}\r\nabc\r\n" + NOOP)
        self.assertEqual(results[0], BadCommand("A1", "literal8 is for APPEND only", "LOGIN"))
        self.assertEqual(results[1].tag, "Z9")

    def test_append_with_flags_date_and_literal(self):
        message = b"From: a@b\r\n\r\nhi\r\n"
        reader = CommandReader(1000)
        reader.feed(b'A1 APPEND Sent (\\Seen \\Draft) "05-Mar-2024 10:00:00 +0100" {%d}\r\n'
                    % len(message))
        self.assertEqual(reader.next(), Continue(len(message)))
        reader.feed(message + b"\r\n")
        cmd = reader.next()
        mailbox, flags, date, text = cmd.args
        self.assertEqual(astring(mailbox), "Sent")
        self.assertEqual(as_list(flags), ["\\Seen", "\\Draft"])
        self.assertEqual(date, b"05-Mar-2024 10:00:00 +0100")
        self.assertFalse(date.literal)
        self.assertTrue(text.literal)
        self.assertEqual(text, message)

    def test_ten_megabytes_in_4k_chunks(self):
        body = (b"x" * 1023 + b"\n") * 10240
        reader = CommandReader(len(body))
        reader.feed(b"A1 APPEND INBOX {%d}\r\n" % len(body))
        self.assertEqual(reader.next(), Continue(len(body)))
        start = time.perf_counter()
        for i in range(0, len(body), 4096):
            reader.feed(body[i:i + 4096])
            self.assertIsNone(reader.next())
        reader.feed(b"\r\n")
        cmd = reader.next()
        elapsed = time.perf_counter() - start
        print(f"\n  10 MB literal in 4 KiB chunks: {elapsed * 1000:.0f} ms", end=" ")
        self.assertEqual(len(cmd.args[1]), len(body))
        self.assertTrue(cmd.args[1] == body)


class FetchAttributes(unittest.TestCase):
    def test_section_and_partial_are_one_token(self):
        cmd = one(b"A1 FETCH 1 (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)\r\n")
        att = cmd.args[1][1]
        self.assertIsInstance(att, FetchAtt)
        self.assertEqual(att, "BODY.PEEK[HEADER.FIELDS (From To)]<0.100>")
        self.assertEqual((att.name, att.section, att.partial),
                         ("BODY.PEEK", ["HEADER.FIELDS", ["From", "To"]], (0, 100)))

    def test_part_numbers_and_binary(self):
        cmd = one(b"A1 UID FETCH 5 (body[1.2.HEADER.FIELDS.NOT (Subject)]<10.20> BINARY.PEEK[1]"
                  b" BODY[] BINARY.SIZE[2])\r\n")
        a, b, c, d = cmd.args[1]
        self.assertEqual((a.name, a.section, a.partial),
                         ("BODY", ["1.2.HEADER.FIELDS.NOT", ["Subject"]], (10, 20)))
        self.assertEqual(a, "body[1.2.HEADER.FIELDS.NOT (Subject)]<10.20>")
        self.assertEqual((b.name, b.section, b.partial), ("BINARY.PEEK", ["1"], None))
        self.assertEqual((c.name, c.section), ("BODY", []))
        self.assertEqual(d, "BINARY.SIZE[2]")

    def test_single_attribute_without_list(self):
        self.assertEqual(one(b"A1 FETCH 1:3 BODY[TEXT]\r\n").args[1].section, ["TEXT"])

    def test_literal_inside_section(self):
        cmd = one(b"A1 FETCH 1 BODY[HEADER.FIELDS ({4+}\r\nFrom)]\r\n")
        self.assertEqual(cmd.args[1].section, ["HEADER.FIELDS", [b"From"]])

    def test_fetch_module_reads_the_tokens(self):
        cmd = one(b"A1 FETCH 1 (UID BODY.PEEK[1.HEADER.FIELDS (Subject)]<5.10>)\r\n")
        items = fetch.parse_items(cmd.args[1:])
        self.assertEqual(items[1].section, (1,))
        self.assertEqual(items[1].fields, ("SUBJECT",))
        self.assertEqual(items[1].partial, (5, 10))

    def test_bad_partials_and_brackets(self):
        for line in (b"A1 FETCH 1 BODY[]<0>", b"A1 FETCH 1 BODY[]<1.0>", b"A1 FETCH 1 BODY[]<x.1>",
                     b"A1 FETCH 1 BODY[1", b"A1 FETCH 1 (BODY[1)]", b"A1 FETCH 1 BODY[1]]",
                     b"A1 FETCH 1 BODY[HEADER.FIELDS (From]", b"A1 FETCH 1 BODY[1]x",
                     b"A1 FETCH 1 BODY[BODY[1]]"):
            with self.subTest(line=line):
                results = parse(line + b"\r\n" + NOOP)
                self.assertIsInstance(results[0], BadCommand)
                self.assertEqual(results[0].tag, "A1")
                self.assertEqual(results[1].tag, "Z9")


class BadCommands(unittest.TestCase):
    CASES = [
        (b"A1 NOOP (a", "A1", "unbalanced parentheses"),
        (b"A1 NOOP a)", "A1", "unbalanced parentheses"),
        (b"A1 NOOP ((a) b", "A1", "unbalanced parentheses"),
        (b"A1 FETCH 1 BODY[1", "A1", "unbalanced brackets"),
        (b'A1 LOGIN "joe secret', "A1", "unterminated quoted string"),
        (b'A1 LOGIN "j\xc3\xb6e" x', "A1", "8-bit character in quoted string (use a literal)"),
        (b'A1 LOGIN "j\\oe" x', "A1", "bad escape in quoted string"),
        (b'A1 LOGIN "j\roe" x', "A1", "CR or LF in quoted string"),
        (b"A1 LOGIN j\xc3\xb6e x", "A1", "8-bit character outside a literal"),
        (b"A1 LOGIN j\x01oe x", "A1", "control character in command"),
        (b"A1 NOOP \x00", "A1", "NUL in command"),
        (b"A1\x00 NOOP", "*", "invalid tag"),
        (b"", "*", "empty command line"),
        (b" NOOP", "*", "missing tag"),
        (b"A+1 NOOP", "*", "invalid tag"),
        (b"A*1 NOOP", "*", "invalid tag"),
        (b'A"1 NOOP', "*", "invalid tag"),
        (b"(A1) NOOP", "*", "invalid tag"),
        (b"A1", "A1", "empty command name"),
        (b"A1 ", "A1", "empty command name"),
        (b"A1 UID", "A1", "UID needs a command name"),
        (b"A1 NO(OP", "A1", "invalid command name"),
        (b'A1 LOGIN "a""b"', "A1", "missing space between arguments"),
        (b"A1 NOOP (a)(b)", "A1", "missing space between arguments"),
        (b"A1 LOGIN {3}x", "A1", "bad literal: {n} must end the line"),
        (b"A1 LOGIN {x}", "A1", "bad literal: {n} must end the line"),
    ]

    def test_each_case_then_a_good_command(self):
        for line, tag, reason in self.CASES:
            with self.subTest(line=line):
                results = parse(line + b"\r\n" + NOOP)
                self.assertEqual(len(results), 2, results)
                self.assertEqual(results[0].tag, tag)
                self.assertEqual(results[0].reason, reason)
                self.assertEqual(results[1], Command("Z9", "NOOP", False, []))

    def test_quoted_string_broken_by_crlf(self):
        results = parse(b'A1 LOGIN "jo\r\ne" x\r\n' + NOOP)
        self.assertEqual(results[0], BadCommand("A1", "unterminated quoted string", "LOGIN"))
        self.assertIsInstance(results[1], BadCommand)        # the line after it is junk too
        self.assertEqual(results[-1].tag, "Z9")

    def test_nul_in_literal(self):
        results = parse(b"A1 LOGIN {3+}\r\na\x00b x\r\n" + NOOP)
        self.assertEqual(results[0], BadCommand("A1", "NUL in literal", "LOGIN"))
        self.assertEqual(results[1].tag, "Z9")

    def test_error_before_a_sync_literal_asks_for_no_octets(self):
        reader = CommandReader(100)
        reader.feed(b"A1 LOGIN (joe {3}\r\n")
        self.assertEqual(reader.next(), Continue(3))     # a list may hold a literal
        reader = CommandReader(100)
        reader.feed(b'A1 LOGIN "jo\xffe" {3}\r\n')
        self.assertEqual(reader.next().reason, "8-bit character in quoted string (use a literal)")
        reader.feed(NOOP)
        self.assertEqual(reader.next().tag, "Z9")

    def test_bad_segment_after_a_literal_plus_skips_the_rest(self):
        results = parse(b"A1 LOGIN {3+}\r\njoe ))) {4+}\r\nA2 X\r\n" + NOOP)
        self.assertEqual(results[0], BadCommand("A1", "unbalanced parentheses", "LOGIN"))
        self.assertEqual(results[1].tag, "Z9")

    def test_too_deep(self):
        results = parse(b"A1 SEARCH " + b"(" * 300 + b"ALL" + b")" * 300 + b"\r\n" + NOOP)
        self.assertEqual(results[0].reason, "too deeply nested")
        self.assertEqual(results[1].tag, "Z9")


class Limits(unittest.TestCase):
    def test_sync_literal_too_large_is_refused_without_continuation(self):
        reader = CommandReader(max_literal=10)
        reader.feed(b"A1 APPEND INBOX {11}\r\n")
        self.assertEqual(reader.next(), BadCommand("A1", LITERAL_TOO_LARGE, "APPEND"))
        reader.feed(NOOP)                                  # the client sent no octets
        self.assertEqual(reader.next().tag, "Z9")

    def test_huge_literal_size(self):
        results = parse(b"A1 APPEND INBOX {99999999999999999}\r\n" + NOOP, max_literal=10)
        self.assertEqual(results[0].reason, LITERAL_TOO_LARGE)
        self.assertEqual(results[1].tag, "Z9")

    def test_literal_plus_too_large_is_skipped_as_it_arrives(self):
        reader = CommandReader(max_literal=1000)
        reader.feed(b"A1 APPEND INBOX {100000+}\r\n")
        for _ in range(100):
            reader.feed(b"A2 DELETE INBOX\r\n"[:17] + b"x" * 983)   # looks like a command
            self.assertIsNone(reader.next())
            self.assertLess(reader.buffered, 2000)
        reader.feed(b" more {3+}\r\nabc\r\n" + NOOP)
        self.assertEqual(reader.next(), BadCommand("A1", LITERAL_TOO_LARGE, "APPEND"))
        self.assertEqual(reader.next().tag, "Z9")

    def test_sum_of_literals_is_bounded(self):
        results = parse(b"A1 X {6+}\r\naaaaaa {6+}\r\nbbbbbb\r\n" + NOOP, max_literal=10)
        self.assertEqual(results[0].reason, LITERAL_TOO_LARGE)
        self.assertEqual(results[1].tag, "Z9")

    def test_long_line(self):
        self.assertEqual(parse(b"A1 X " + b"x" * 95 + b"\r\n", max_line=100)[0].name, "X")
        self.assertEqual(parse(b"A1 X " + b"x" * 96 + b"\r\n", max_line=100)[0].reason,
                         LINE_TOO_LONG)
        results = parse(b"A1 NOOP " + b"x" * 200 + b"\r\n" + NOOP, max_line=100)
        self.assertEqual(results[0], BadCommand("A1", LINE_TOO_LONG, "NOOP"))
        self.assertEqual(results[1].tag, "Z9")

    def test_long_line_in_pieces_is_not_kept(self):
        reader = CommandReader(100, max_line=100)
        reader.feed(b"A7 LOGIN ")
        for _ in range(1000):
            reader.feed(b"y" * 50)
            self.assertIsNone(reader.next())
            self.assertLessEqual(reader.buffered, 200)
        reader.feed(b"\r\n" + NOOP)
        self.assertEqual(reader.next(), BadCommand("A7", LINE_TOO_LONG, "LOGIN"))
        self.assertEqual(reader.next().tag, "Z9")

    def test_long_line_ending_in_literal_plus(self):
        reader = CommandReader(100, max_line=100)
        reader.feed(b"A1 X " + b"z" * 300 + b" {5+}\r\n")
        self.assertIsNone(reader.next())
        reader.feed(b"B1 N\r\n" + NOOP)              # the five octets are skipped
        self.assertEqual(reader.next().reason, LINE_TOO_LONG)
        self.assertEqual(reader.next().tag, "Z9")

    def test_limit_counts_all_segments(self):
        results = parse(b"A1 X " + b"a" * 60 + b" {1+}\r\nb " + b"c" * 60 + b"\r\n" + NOOP,
                        max_line=100)
        self.assertEqual(results[0].reason, LINE_TOO_LONG)
        self.assertEqual(results[1].tag, "Z9")

    def test_read_line(self):
        reader = CommandReader(100, max_line=20)
        reader.feed(b"A1 IDLE\r\nDO")
        self.assertEqual(reader.next().name, "IDLE")
        self.assertIsNone(reader.read_line())
        reader.feed(b"NE\r\n" + b"q" * 50 + b"\r\n" + NOOP)
        self.assertEqual(reader.read_line(), b"DONE")
        with self.assertRaises(ValueError):
            reader.read_line()
        self.assertEqual(reader.next().tag, "Z9")
        self.assertEqual(reader.buffered, 0)


class RepeatedShapes(unittest.TestCase):
    """A pipelining client repeats one command with another message number each time;
    the reader tokenizes such a shape once.  What the session gets must not show it."""

    LINES = [b"UID FETCH 17 (BODY.PEEK[])", b"UID FETCH 18 (BODY.PEEK[])", b"FETCH 1:*,4 (FLAGS UID)",
             b"FETCH 2 (BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100> RFC822.SIZE)",
             b"FETCH 3 BODY[1.2.MIME]", b"UID STORE 9 +FLAGS.SILENT (\\Seen $Junk)",
             b'UID SEARCH 1:* SUBJECT "a (b) {c}"', b"SEARCH OR 3 4", b"UID COPY 5 Trash",
             b"SELECT INBOX", b"LIST \"\" [Gmail]/*", b"NOOP", b"FETCH 4 ( FLAGS  UID )",
             # bad ones: the same BAD however often they come
             b"FETCH 5 (BODY[)", b"FETCH 6 (FLAGS", b"FETCH 7 FLAGS)", b"FETCH 8 \xe9t\xe9",
             b"FETCH 9 (BODY[]<0.0>)", b'SEARCH 10 SUBJECT "open', b"FETCH 11(FLAGS)"]

    def test_a_repeated_shape_reads_as_the_first_time(self):
        def tokenized(data: bytes) -> list:   # the reader without its shapes
            with mock.patch.object(parser, "_from_shape", lambda *args: False):
                return parse(data)

        parser._SHAPES.clear()
        reader = CommandReader(1 << 20)
        for rnd in range(3):
            for n, line in enumerate(self.LINES):
                with self.subTest(line=line, round=rnd):
                    reader.feed(b"T%d " % n + line + b"\r\n")
                    got = read_all(reader)
                    fresh = tokenized(b"T%d " % n + line + b"\r\n")
                    self.assertEqual(got, fresh)
                    self.assertEqual([type(t) for t in getattr(got[0], "args", [])],
                                     [type(t) for t in getattr(fresh[0], "args", [])])
        bad = parse(b"B1 FETCH 5 (BODY[)\r\nB2 FETCH 5 (BODY[)\r\n")
        self.assertEqual([type(b) for b in bad], [BadCommand, BadCommand])

    def test_only_the_message_number_changes(self):
        a, b = parse(b"A1 UID FETCH 17 (BODY.PEEK[] UID)\r\nA2 UID FETCH 18:20 (BODY.PEEK[] UID)\r\n")
        self.assertEqual((a.args[0], b.args[0]), ("17", "18:20"))
        self.assertEqual(a.args[1:], b.args[1:])
        att = b.args[1][0]
        self.assertIsInstance(att, FetchAtt)
        self.assertEqual((att.name, att.section, att.partial), ("BODY.PEEK", [], None))

    def test_a_repeat_is_taken_as_next_would_read_it(self):
        """take_repeat (the session's short cut for a pipeline of one command again and
        again) gives the command next() gives, or nothing and leaves the line to next()."""
        first = b"A1 UID FETCH 17 (BODY.PEEK[])\r\n"
        cases = {   # the next line: is it the first one again (another tag, another set)?
            b"A2 UID FETCH 18 (BODY.PEEK[])\r\n": True,
            b"x.y_z UID FETCH 1:*,4:6 (BODY.PEEK[])\n": True,   # a bare LF ends a line too
            b"A3 UID FETCH 18 (BODY.PEEK[] FLAGS)\r\n": False,
            b"A4 UID FETCH 18 (BODY[])\r\n": False,
            b"A5 uid fetch 18 (BODY.PEEK[])\r\n": False,         # written otherwise: next() reads it
            b"A6 UID  FETCH 18 (BODY.PEEK[])\r\n": False,
            b"A7 FETCH 18 (BODY.PEEK[])\r\n": False,
            b"A8 UID STORE 18 (BODY.PEEK[])\r\n": False,
            b"A+9 UID FETCH 18 (BODY.PEEK[])\r\n": False,        # a bad tag: next() answers BAD
            b"A10 UID FETCH 18x (BODY.PEEK[])\r\n": False,
            b"A11 UID FETCH $ (BODY.PEEK[])\r\n": False,
            b"A12 UID FETCH 18 (BODY.PEEK[])\r\r\n": False,
            b"A13 UID FETCH 18 (BODY.PEEK[]) {5}\r\n": False,
            b"A14 UID FETCH 18 (BODY.PEEK[])": False,             # not complete yet
            b"\r\n": False,
        }
        for line, repeats in cases.items():
            with self.subTest(line=line):
                reader = CommandReader(1 << 20)
                reader.feed(first + line)
                cmd = reader.next()
                self.assertEqual(cmd.repeat, (b" UID FETCH ", b" (BODY.PEEK[])"))
                got = reader.take_repeat(cmd)
                if repeats:
                    self.assertEqual(got, parse(line)[0])
                    self.assertEqual(got.repeat, cmd.repeat, "and the one after it may repeat too")
                    self.assertEqual(reader.buffered, 0)
                else:
                    self.assertIsNone(got)
                    self.assertEqual(reader.buffered, len(line), "nothing read")
                    self.assertEqual(read_all(reader), parse(line))

    def test_a_long_pipeline_of_repeats(self):
        """Thousands of repeats, fed in pieces that cut lines anywhere: every one read once,
        in order, also when the reader drops what it has read from its buffer (64 KiB)."""
        lines = [b"T%d UID FETCH %d (BODY.PEEK[])\r\n" % (n, n) for n in range(1, 6001)]
        data = b"".join(lines)
        items = parse(lines[0])[0].args[1:]
        reader = CommandReader(1 << 20)
        rng = random.Random(5)
        got: list[str] = []
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 300)
            reader.feed(data[pos:pos + step])
            pos += step
            while (cmd := reader.next()) is not None:
                while cmd is not None:
                    got.append(f"{cmd.tag} {cmd.args[0]}")
                    self.assertEqual(cmd.args[1:], items)
                    cmd = reader.take_repeat(cmd)
        self.assertEqual(got, [f"T{n} {n}" for n in range(1, 6001)])

    def test_no_repeat_past_a_limit_or_after_a_literal(self):
        reader = CommandReader(1 << 20, max_line=40)
        reader.feed(b"A1 UID FETCH 17 (BODY.PEEK[])\r\n" + b"T" * 30 + b" UID FETCH 18 (BODY.PEEK[])\r\n")
        cmd = reader.next()
        self.assertIsNone(reader.take_repeat(cmd))
        self.assertIsInstance(reader.next(), BadCommand, "over max_line: next() says so")
        reader = CommandReader(1 << 20)
        reader.feed(b"A1 UID FETCH 17 (BODY.PEEK[HEADER.FIELDS {4+}\r\nFrom])\r\n"
                    b"A2 UID FETCH 18 (BODY.PEEK[HEADER.FIELDS {4+}\r\nFrom])\r\n")
        cmd = reader.next()
        self.assertIsNone(cmd.repeat, "a command with a literal is never repeated")
        self.assertIsNone(reader.take_repeat(cmd))
        self.assertEqual(reader.next().tag, "A2")

    def test_only_short_commands_on_messages_are_kept(self):
        """The kept shapes are shared by every session: no password, no large list."""
        parser._SHAPES.clear()
        long_list = b"(" + b" ".join(b"X-FIELD-%d" % i for i in range(100)) + b")"
        parse(b"A1 LOGIN joe s3cret-pass\r\nA2 UID FETCH 4 " + long_list + b"\r\n"
              b"A3 SEARCH 1:4 UNSEEN\r\nA4 SELECT INBOX\r\nA5 UID FETCH 5 (FLAGS)\r\n"
              b"A6 STORE 2 +FLAGS (\\Seen)\r\nA7 COPY 1:3 Trash\r\nA8 UID MOVE 9 Junk\r\n")
        kept = b"".join(parser._SHAPES)
        self.assertNotIn(b"s3cret", kept)
        self.assertNotIn(b"X-FIELD", kept)
        self.assertEqual(sorted(parser._SHAPES),
                         [b" (FLAGS)", b" +FLAGS (\\Seen)", b" Junk", b" Trash"])
        for n in range(parser.SHAPES_KEPT * 2):   # bounded however many shapes come
            parse(b"B%d FETCH %d (BODY.PEEK[HEADER.FIELDS (X-%d)])\r\n" % (n, n + 1, n))
        self.assertLessEqual(len(parser._SHAPES), parser.SHAPES_KEPT)

    def test_each_command_has_its_own_argument_list(self):
        a, b = parse(b"A1 FETCH 1 (FLAGS)\r\nA2 FETCH 2 (FLAGS)\r\n")
        a.args.append(Atom("EXTRA"))
        self.assertEqual(b.args, ["2", ["FLAGS"]])
        self.assertEqual(one(b"A3 FETCH 3 (FLAGS)\r\n").args, ["3", ["FLAGS"]])


class SequenceSets(unittest.TestCase):
    def test_valid(self):
        s = parse_sequence_set("1:3,7,10:*")
        self.assertEqual(list(s.expand(12)), [1, 2, 3, 7, 10, 11, 12])
        self.assertTrue(s.contains(11, 12))
        self.assertFalse(s.contains(8, 12))
        self.assertFalse(s.contains(13, 12))

    def test_reversed_and_overlapping(self):
        self.assertEqual(list(parse_sequence_set("5:2,3:4,4").expand(9)), [2, 3, 4, 5])
        self.assertEqual(list(parse_sequence_set("*:4").expand(6)), [4, 5, 6])

    def test_star(self):
        self.assertEqual(list(parse_sequence_set("*").expand(7)), [7])
        self.assertEqual(list(parse_sequence_set("9:*").expand(7)), [7])   # 7:9
        self.assertEqual(list(parse_sequence_set("1:*").expand(0)), [])

    def test_expansion_is_clipped_and_lazy(self):
        s = parse_sequence_set("1:4294967295")
        self.assertEqual(s.spans(10), [(1, 10)])
        self.assertEqual(sum(1 for _ in s.expand(100000)), 100000)
        self.assertTrue(s.contains(4294967295, 4294967295))

    def test_invalid(self):
        for text in ("", "0", "1:0", "0:*", "a", "1,", ",1", "1,,2", "1:2:3", ":", "1:", "-1",
                     "+1", " 1", "1 ", "01", "4294967296", "1.5", "**", "$", "\u0661"):
            with self.subTest(text=text):
                with self.assertRaises(ValueError):
                    parse_sequence_set(text)


class Helpers(unittest.TestCase):
    def test_astring(self):
        self.assertEqual(astring(Atom("INBOX")), "INBOX")
        self.assertEqual(astring(String(b"caf\xc3\xa9")), "café")
        self.assertEqual(astring(String(b"\xff")), "\udcff")
        self.assertEqual(astring(one(b"A1 SELECT Body[1]\r\n").args[0]), "Body[1]")
        with self.assertRaises(ValueError):
            astring(List([]))

    def test_nstring_as_list_number(self):
        self.assertEqual(nstring(String(b"x")), "x")
        self.assertIsNone(nstring(Atom("nil")))
        with self.assertRaises(ValueError):
            nstring(Atom("x"))
        self.assertEqual(as_list(List([Atom("a")])), ["a"])
        with self.assertRaises(ValueError):
            as_list(Atom("a"))
        self.assertEqual(number(Atom("4294967295")), 4294967295)
        for bad in (Atom("4294967296"), Atom("-1"), String(b"1"), Atom("\u0661")):
            with self.assertRaises(ValueError):
                number(bad)

    def test_quote(self):
        self.assertEqual(quote("INBOX"), b'"INBOX"')
        self.assertEqual(quote('a"b\\c'), b'"a\\"b\\\\c"')
        self.assertEqual(quote("café"), b"{5}\r\ncaf\xc3\xa9")
        self.assertEqual(quote(b"a\r\nb"), b"{4}\r\na\r\nb")
        self.assertEqual(quote("x" * 2000)[:8], b"{2000}\r\n")
        self.assertEqual(nil_or(None), b"NIL")
        self.assertEqual(nil_or(""), b'""')

    def test_quote_round_trips_through_the_reader(self):
        for text in ("plain", 'q"uo\\te', "ünï", "two\r\nlines", ""):
            with self.subTest(text=text):
                *_, cmd = parse(b"A1 LOGIN " + quote(text) + b" x\r\n")
                self.assertEqual(astring(cmd.args[0]), text)


if __name__ == "__main__":
    unittest.main()
