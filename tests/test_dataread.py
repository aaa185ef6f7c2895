"""Reading the message text after DATA (ismail/smtp/dataread.py).

What a user would check: the text kept is the text sent, dot-stuffing undone; the message
ends at the first CRLF "." CRLF and nowhere else; a bare CR or LF, an over-long line or an
over-size message is refused whatever else it holds; and none of that depends on how the
client's writes were cut into pieces.

The reader takes whole runs of ordinary lines at once (``_blocks``) and falls back to
reading line by line (``_lines``) for anything unusual.  The line-by-line reading is the
plain statement of the rules, so the main test is a comparison: thousands of random
texts, cut at random points, must give exactly what reading line by line gives.
"""
from __future__ import annotations

import random
import tempfile
import unittest
from pathlib import Path

from ismail.queue.spool import MessageBuffer
from ismail.smtp.dataread import BARE, LONG, SIZE, TEXT_LINE_LIMIT, DataReader


class LineByLine(DataReader):
    """The reference: every line read on its own."""

    def feed(self, buf, pos):
        return self._lines(buf, pos)


def read(cls, pieces, size_limit=10 ** 7, spill=None):
    """Feed ``pieces`` as a session does (unread bytes stay in the buffer); returns what
    a session would see: kept text, flaw, lines counted, and the bytes after the end."""
    reader = cls(MessageBuffer(spill or Path(tempfile.gettempdir())), size_limit)
    buf = bytearray()
    lines_seen = []
    for piece in pieces:
        buf += piece
        pos, ended = reader.feed(buf, 0)
        del buf[:pos]
        lines_seen.append(reader.lines)
        if ended:
            kept = None if reader.flaw else b"".join(reader.buffer.chunks())
            reader.close()
            return kept, reader.flaw, lines_seen, bytes(buf)
    reader.close()
    return "not ended", reader.flaw, lines_seen, bytes(buf)


def cut(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` in random pieces: sometimes whole, sometimes a byte at a time near CRLFs."""
    style = rng.random()
    if style < 0.25:
        return [data]
    pieces, at = [], 0
    while at < len(data):
        step = rng.randint(1, 3) if style < 0.5 else rng.randint(1, 200)
        pieces.append(data[at:at + step])
        at += step
    return pieces


LINES = [b"Subject: hello", b"", b"plain text line", b".stuffed", b"..", b"...", b". ",
         b"tab\there", b"x" * 997, b"y" * 998, b"z" * 999, b"a.b.c", b".", b"\xff\xfe bytes",
         b"bare\nLF", b"bare\rCR", b"ends with CR\r", b"\nstarts with LF", b"\r", b"\n"]


def random_text(rng: random.Random) -> bytes:
    """Lines (mostly ordinary, some flawed), an end, and sometimes a pipelined command."""
    weights = [20, 6, 20, 4, 2, 1, 1, 2, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1, 1]
    body = [rng.choices(LINES, weights)[0] for _ in range(rng.randint(0, 40))]
    sep = rng.choice([b"\r\n"] * 8 + [b"\n", b"\r"])
    text = sep.join(body) + (b"\r\n" if body else b"") + b".\r\n"
    if rng.random() < 0.3:
        text += rng.choice([b"QUIT\r\n", b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
                            b"RSET\r\n.\r\n", b"\n"])
    return text


class CompareWithLineByLine(unittest.TestCase):
    def test_random_texts_in_random_pieces(self):
        rng = random.Random(5321)
        with tempfile.TemporaryDirectory() as spill:
            for i in range(4000):
                text = random_text(rng)
                pieces = cut(text, rng)
                limit = rng.choice([10 ** 7, 10 ** 7, 2000, 500, 0])
                want = read(LineByLine, pieces, limit, Path(spill))
                got = read(DataReader, pieces, limit, Path(spill))
                self.assertEqual(got, want, f"case {i}: {text!r} in {len(pieces)} pieces, limit {limit}")

    def test_a_text_large_enough_to_spill_to_disk(self):
        """Over MessageBuffer's 1 MB the text goes to a temporary file: the same bytes."""
        rng = random.Random(8)
        lines = [rng.choice([b"ordinary text, seventy-odd characters long, as mail programs wrap it",
                             b".a line that starts with a dot", b""]) for _ in range(40000)]
        text = b"\r\n".join(lines) + b"\r\n.\r\n"
        with tempfile.TemporaryDirectory() as spill:
            pieces = [text[i:i + 65536] for i in range(0, len(text), 65536)]
            want = read(LineByLine, pieces, spill=Path(spill))
            got = read(DataReader, pieces, spill=Path(spill))
        self.assertGreater(len(got[0]), 1 << 20)
        self.assertEqual(got, want)


class WhatTheClientSees(unittest.TestCase):
    """The rules themselves, on the reader used in the server."""

    def test_dot_stuffing_is_undone_and_the_end_is_the_lone_dot(self):
        kept, flaw, _, rest = read(DataReader, [b".hidden\r\n..\r\nx.y\r\n.\r\nQUIT\r\n"])
        self.assertIsNone(flaw)
        self.assertEqual(kept, b"hidden\r\n.\r\nx.y\r\n")
        self.assertEqual(rest, b"QUIT\r\n")

    def test_an_empty_text(self):
        self.assertEqual(read(DataReader, [b".\r\n"]), (b"", None, [1], b""))

    def test_smuggling_ends_are_not_ends(self):
        """LF.LF, CR.CR and LF.CRLF are text; the message is refused when it really ends."""
        for fake in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"):
            with self.subTest(fake=fake):
                kept, flaw, _, rest = read(DataReader, [b"one" + fake + b"MAIL FROM:<x@y>\r\n.\r\n"])
                self.assertEqual(flaw, BARE)
                self.assertEqual(rest, b"")

    def test_line_limit_counts_the_crlf_and_the_stuffing_dot(self):
        ok = b"." + b"d" * (TEXT_LINE_LIMIT - 3) + b"\r\n"    # exactly 1000 octets as sent
        self.assertIsNone(read(DataReader, [ok + b".\r\n"])[1])
        self.assertEqual(read(DataReader, [b"d" + ok + b".\r\n"])[1], LONG)

    def test_size_limit(self):
        text = b"0123456789\r\n" * 10 + b".\r\n"
        self.assertIsNone(read(DataReader, [text], size_limit=120)[1])
        self.assertEqual(read(DataReader, [text], size_limit=119)[1], SIZE)

    def test_many_lines_at_once_are_counted_as_lines(self):
        """The session's progress (its idle timer) counts lines, whatever the pieces."""
        _, _, seen, _ = read(DataReader, [b"a\r\nb\r\nc", b"\r\n.\r\n"])
        self.assertEqual(seen, [2, 4])


if __name__ == "__main__":
    unittest.main()
