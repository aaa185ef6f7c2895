"""Line ends on disk (ismail.store.lineends): what a reader makes of LF, CRLF and a lone CR,
and what ISMail writes, whichever way the text is cut into pieces."""
from __future__ import annotations

import io
import random
import re
import unittest

from ismail.store.lineends import crlf_size, lf_blocks, to_crlf, to_disk, to_lf

ALPHABET = b"ab\r\n."


def pieces(rng: random.Random, data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 5, 64))
        out.append(data[i:i + n])
        i += n
    return out


class ReadTest(unittest.TestCase):
    def test_lf_and_crlf_are_each_one_line_end_and_a_lone_cr_stays(self):
        self.assertEqual(to_crlf(b"a\nb\r\nc\rd\r\r\n"), b"a\r\nb\r\nc\rd\r\r\n")
        self.assertEqual(to_lf(b"a\nb\r\nc\rd"), b"a\nb\nc\rd")
        data = b"x"
        self.assertIs(to_lf(data), data, "a block without a CR is not copied")

    def test_blocks_cut_anywhere_read_as_the_whole(self):
        rng = random.Random(7)
        for _ in range(300):
            data = bytes(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60)))
            size = rng.choice((1, 2, 3, 7))
            blocks = list(lf_blocks(io.BytesIO(data).read, size))
            self.assertNotIn(b"", blocks)
            self.assertEqual(b"".join(blocks), to_lf(data), data)
            self.assertEqual(crlf_size(io.BytesIO(data).read, size), len(to_crlf(data)), data)


class WriteTest(unittest.TestCase):
    def test_what_is_stored_reads_back_as_the_message_less_crs_before_a_line_end(self):
        self.assertEqual(b"".join(to_disk([b"a\rb\r\r\nc\r\n"])), b"a\rb\nc\n")
        rng = random.Random(11)
        for _ in range(300):
            data = bytes(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60)))
            whole = b"".join(to_disk([data]))
            self.assertEqual(b"".join(to_disk(pieces(rng, data))), whole, data)
            self.assertNotIn(b"\r\n", whole, "nothing a reader would take for a CRLF")
            # what a reader sends: the client's text, the CRs just before each LF gone
            self.assertEqual(to_crlf(whole), re.sub(rb"\r*\n", b"\r\n", data), data)
            self.assertEqual(len(to_crlf(whole)), len(whole) + whole.count(b"\n"),
                             "the size in the name (S + line ends) is what is sent")


if __name__ == "__main__":
    unittest.main()
