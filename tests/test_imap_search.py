"""IMAP SEARCH: parsing every RFC 3501 key, matching it, and reading only what a key needs."""
import base64
import random
import time
import unittest
from datetime import datetime

from ismail.imap.search import (
    CHARSETS, BadCharset, Criteria, MessageContext, decode_words, field_values, in_sequence_set,
    parse_date, parse_search, parse_sequence_set, raw_fields, split_header,
)

PLAIN = (b"From: John Smith <john@example.com>\r\n"
         b"To: Mary <mary@example.org>, bob@example.net\r\n"
         b"Cc: carol@example.com\r\n"
         b"Bcc: dave@example.com\r\n"
         b"Subject: Quarterly report\r\n"
         b" is folded\r\n"
         b"Date: Tue, 1 Feb 1994 23:30:00 -0800\r\n"
         b"X-Mailer: TestMailer 1.0\r\n"
         b"Message-ID: <abc@example.com>\r\n"
         b"\r\n"
         b"Hello Mary,\r\nthe numbers are in.\r\n")


def local(y, m, d, hour=12):
    return datetime(y, m, d, hour).timestamp()


def context(message=PLAIN, seq=1, uid=10, flags=(), recent=False, date=None, size=None,
            largest_seq=5, largest_uid=50, header_loader=None):
    return MessageContext(seq, uid, flags, recent, local(1994, 2, 3) if date is None else date,
                          len(message) if size is None else size, lambda: message,
                          largest_seq, largest_uid, header_loader)


def search(tokens, **kw):
    return parse_search(tokens).matches(context(**kw))


def forbidden():
    raise AssertionError("the message was read")


class Loads:
    """A loader that counts its calls."""

    def __init__(self, data):
        self.data, self.calls = data, 0

    def __call__(self):
        self.calls += 1
        return self.data


class FlagKeysTest(unittest.TestCase):
    def test_system_flags_and_their_negations(self):
        for key, flag in [("ANSWERED", "\\Answered"), ("DELETED", "\\Deleted"),
                          ("DRAFT", "\\Draft"), ("FLAGGED", "\\Flagged"), ("SEEN", "\\Seen")]:
            with self.subTest(key=key):
                self.assertTrue(search([key], flags={flag}))
                self.assertFalse(search([key], flags={"\\Other"}))
                self.assertFalse(search(["UN" + key], flags={flag}))
                self.assertTrue(search(["UN" + key], flags=()))

    def test_keys_are_case_insensitive_and_flags_too(self):
        self.assertTrue(search(["seen"], flags={"\\SEEN"}))

    def test_keyword_and_unkeyword(self):
        self.assertTrue(search(["KEYWORD", "$Forwarded"], flags={"$Forwarded"}))
        self.assertTrue(search(["KEYWORD", "$forwarded"], flags={"$Forwarded"}))
        self.assertFalse(search(["KEYWORD", "$Junk"], flags={"$Forwarded"}))
        self.assertTrue(search(["UNKEYWORD", "$Junk"], flags={"$Forwarded"}))
        self.assertFalse(search(["UNKEYWORD", "$Forwarded"], flags={"$Forwarded"}))

    def test_recent_new_old(self):
        self.assertTrue(search(["RECENT"], recent=True))
        self.assertFalse(search(["RECENT"], recent=False))
        self.assertTrue(search(["NEW"], recent=True))
        self.assertFalse(search(["NEW"], recent=True, flags={"\\Seen"}))
        self.assertFalse(search(["NEW"], recent=False))
        self.assertTrue(search(["OLD"], recent=False, flags={"\\Seen"}))
        self.assertFalse(search(["OLD"], recent=True))

    def test_all(self):
        self.assertTrue(search(["ALL"]))


class SizeAndDateKeysTest(unittest.TestCase):
    def test_larger_and_smaller_are_strict(self):
        self.assertTrue(search(["LARGER", "99"], size=100))
        self.assertFalse(search(["LARGER", "100"], size=100))
        self.assertTrue(search(["SMALLER", "101"], size=100))
        self.assertFalse(search(["SMALLER", "100"], size=100))

    def test_internal_date_keys_use_the_day_only(self):
        late = local(1994, 2, 1, hour=23)
        self.assertTrue(search(["ON", "1-Feb-1994"], date=late))
        self.assertFalse(search(["ON", "2-Feb-1994"], date=late))
        self.assertTrue(search(["BEFORE", "2-Feb-1994"], date=late))
        self.assertFalse(search(["BEFORE", "1-Feb-1994"], date=late))
        self.assertTrue(search(["SINCE", "1-Feb-1994"], date=late))
        self.assertFalse(search(["SINCE", "2-Feb-1994"], date=late))

    def test_sent_keys_use_the_date_header_as_written(self):
        # 23:30 -0800 is already 2 February in UTC; RFC 3501 ignores the zone.
        self.assertTrue(search(["SENTON", "1-Feb-1994"]))
        self.assertFalse(search(["SENTON", "3-Feb-1994"]))  # the INTERNALDATE's day
        self.assertTrue(search(["SENTBEFORE", "2-Feb-1994"]))
        self.assertFalse(search(["SENTBEFORE", "1-Feb-1994"]))
        self.assertTrue(search(["SENTSINCE", "1-Feb-1994"]))
        self.assertFalse(search(["SENTSINCE", "2-Feb-1994"]))

    def test_sent_date_falls_back_to_internal_date(self):
        for msg in (b"Subject: no date\r\n\r\nbody", b"Date: garbage\r\n\r\nbody"):
            with self.subTest(msg=msg):
                self.assertTrue(search(["SENTON", "3-Feb-1994"], message=msg))

    def test_date_forms(self):
        self.assertEqual(parse_date("1-Feb-1994"), parse_date("01-feb-1994"))
        self.assertEqual(parse_date("29-FEB-2000").day, 29)
        self.assertTrue(search(["ON", b"3-Feb-1994"]))  # date may be quoted


class TextKeysTest(unittest.TestCase):
    def test_address_keys_match_the_whole_field(self):
        cases = [("FROM", b"smith"), ("FROM", b"john@EXAMPLE.com"), ("FROM", b"John Smith <"),
                 ("TO", b"mary"), ("TO", b"bob@example.net"), ("CC", b"carol"),
                 ("BCC", b"dave@"), ("SUBJECT", b"REPORT"), ("SUBJECT", b"report is folded")]
        for key, text in cases:
            with self.subTest(key=key, text=text):
                self.assertTrue(search([key, text]))
        for key in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            with self.subTest(key=key):
                self.assertFalse(search([key, b"nobody-here"]))

    def test_atom_is_an_astring(self):
        self.assertTrue(search(["FROM", "smith"]))

    def test_header_key(self):
        self.assertTrue(search(["HEADER", b"X-Mailer", b"testmailer"]))
        self.assertTrue(search(["HEADER", "x-mailer", "1.0"]))
        self.assertFalse(search(["HEADER", b"X-Mailer", b"outlook"]))
        self.assertFalse(search(["HEADER", b"X-Other", b"testmailer"]))

    def test_header_with_empty_string_means_the_field_exists(self):
        self.assertTrue(search(["HEADER", b"Message-ID", b""]))
        self.assertFalse(search(["HEADER", b"In-Reply-To", b""]))
        self.assertFalse(search(["NOT", "HEADER", b"message-id", b""]))

    def test_body_and_text(self):
        self.assertTrue(search(["BODY", b"NUMBERS ARE"]))
        self.assertFalse(search(["BODY", b"quarterly"]))  # only in the header
        self.assertTrue(search(["TEXT", b"quarterly"]))
        self.assertTrue(search(["TEXT", b"numbers"]))
        self.assertFalse(search(["TEXT", b"absent"]))

    def test_rfc2047_subject_and_from(self):
        msg = (b"From: =?utf-8?q?Gr=C3=BC=C3=9Fe?= <g@example.com>\r\n"
               b"Subject: =?iso-8859-1?b?" + base64.b64encode("Grüße aus Köln".encode("latin-1"))
               + b"?=\r\n\r\nbody\r\n")
        self.assertTrue(search(["FROM", "grüße".encode()], message=msg))
        self.assertTrue(search(["FROM", "GRÜSSE".encode()], message=msg))  # casefold: ß = ss
        self.assertTrue(search(["SUBJECT", "köln".encode()], message=msg))
        self.assertFalse(search(["SUBJECT", b"=?iso"], message=msg))
        self.assertTrue(search(["TEXT", "aus köln".encode()], message=msg))

    def test_encoded_words_join_and_keep_plain_text(self):
        self.assertEqual(decode_words("=?utf-8?q?Gr=C3=BC?= =?utf-8?q?=C3=9Fe?= all"),
                         "Grüße all")
        self.assertEqual(decode_words("Re: =?utf-8?b?w7w=?= x"), "Re: ü x")
        self.assertEqual(decode_words("a =?x-unknown?q?caf=C3=A9?= b"), "a café b")
        self.assertEqual(decode_words("=?utf-8?q?a_b?="), "a b")
        self.assertEqual(decode_words("=?utf-8?q?Gr=C3?=\r =?UTF-8?q?=BC?="), "Grü")  # split char
        self.assertEqual(decode_words("=?utf-8*de?q?Gr=C3=BC?="), "Grü")  # RFC 2231 language
        self.assertEqual(decode_words("no words here"), "no words here")

    def test_raw_utf8_header(self):
        msg = "Subject: Grüße\r\n\r\nbody".encode()
        self.assertTrue(search(["SUBJECT", "grüße".encode()], message=msg))

    def test_lf_only_message_and_header_without_body(self):
        self.assertTrue(search(["SUBJECT", b"lf"], message=b"Subject: lf\n\nbody\n"))
        self.assertTrue(search(["BODY", b"body"], message=b"Subject: lf\n\nbody\n"))
        self.assertTrue(search(["SUBJECT", b"only"], message=b"Subject: only"))
        self.assertFalse(search(["SUBJECT", b""], message=b"\r\nSubject: in the body"))


class AddressKeysTest(unittest.TestCase):
    def test_from_matches_the_address_inside_comments(self):
        # ImapTest's search-addresses: the field text never holds "user-from@domain.org".
        msg = b"From: <user-from (comment)@ (comment) domain.org>\r\nSubject: x\r\n\r\nb\r\n"
        self.assertTrue(search(["FROM", b"user-from@domain.org"], message=msg))
        self.assertFalse(search(["FROM", b"other@domain.org"], message=msg))
        self.assertTrue(search(["FROM", b"comment"], message=msg), "the field text still counts")


class BodyDecodingTest(unittest.TestCase):
    def test_base64_body(self):
        body = base64.encodebytes("Die Übergabe ist morgen.".encode("utf-8"))
        msg = (b"Content-Type: text/plain; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n" + body)
        self.assertTrue(search(["BODY", "übergabe".encode()], message=msg))
        self.assertFalse(search(["BODY", b"RGllI"], message=msg))

    def test_quoted_printable_body_in_latin1(self):
        msg = (b"Content-Type: text/plain; charset=iso-8859-1\r\n"
               b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
               b"Caf=E9 au lait, a long line that is soft-=\r\nbroken here\r\n")
        self.assertTrue(search(["BODY", "café".encode()], message=msg))
        self.assertTrue(search(["BODY", b"soft-broken"], message=msg))
        self.assertFalse(search(["BODY", b"=E9"], message=msg))

    def test_multipart_text_parts_html_and_attachments(self):
        msg = (b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
               b"--XX\r\nContent-Type: text/plain\r\n\r\nplain part\r\n"
               b"--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
               b"<p>Tom &amp; Jerry</p>\r\n"
               b"--XX\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(b"secret binary") +
               b"--XX--\r\n")
        self.assertTrue(search(["BODY", b"plain part"], message=msg))
        self.assertTrue(search(["BODY", b"tom & jerry"], message=msg))
        self.assertFalse(search(["BODY", b"<p>"], message=msg))
        self.assertFalse(search(["BODY", b"secret"], message=msg))

    def test_unknown_charset_and_bad_utf8_still_search(self):
        msg = b"Content-Type: text/plain; charset=x-nonsense\r\n\r\nplain \xff ascii\r\n"
        self.assertTrue(search(["BODY", b"ascii"], message=msg))

    def test_absurdly_nested_multipart_is_searched_as_stored(self):
        msg = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                       for i in range(2000)) + b"Content-Type: text/plain\r\n\r\ndeep text\r\n"
        self.assertTrue(search(["BODY", b"deep text"], message=msg))

    def test_message_rfc822_attachment_text_is_searched(self):
        msg = (b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
               b"--XX\r\nContent-Type: text/plain\r\n\r\ncover note\r\n"
               b"--XX\r\nContent-Type: message/rfc822\r\n\r\n"
               b"Subject: inner\r\n\r\nforwarded words\r\n--XX--\r\n")
        self.assertTrue(search(["BODY", b"forwarded words"], message=msg))
        self.assertFalse(search(["SUBJECT", b"inner"], message=msg))

    def test_html_flood_is_linear(self):
        msg = b"Content-Type: text/html\r\n\r\n" + b"<" * 200_000
        start = time.perf_counter()
        self.assertFalse(search(["BODY", b"x"], message=msg))
        self.assertLess(time.perf_counter() - start, 5)


class CombinationTest(unittest.TestCase):
    def test_implicit_and(self):
        self.assertTrue(search(["SEEN", "FLAGGED"], flags={"\\Seen", "\\Flagged"}))
        self.assertFalse(search(["SEEN", "FLAGGED"], flags={"\\Seen"}))

    def test_not_binds_to_one_key(self):
        tokens = ["NOT", "SEEN", "FLAGGED"]  # (NOT SEEN) AND FLAGGED
        self.assertTrue(search(tokens, flags={"\\Flagged"}))
        self.assertFalse(search(tokens, flags=()))
        self.assertFalse(search(tokens, flags={"\\Seen", "\\Flagged"}))

    def test_or_takes_two_keys(self):
        tokens = ["OR", "SEEN", "FLAGGED", "DELETED"]  # (SEEN OR FLAGGED) AND DELETED
        self.assertTrue(search(tokens, flags={"\\Seen", "\\Deleted"}))
        self.assertTrue(search(tokens, flags={"\\Flagged", "\\Deleted"}))
        self.assertFalse(search(tokens, flags={"\\Seen"}))
        self.assertFalse(search(tokens, flags={"\\Deleted"}))

    def test_parentheses_group(self):
        tokens = ["NOT", ["SEEN", "FLAGGED"]]
        self.assertTrue(search(tokens, flags={"\\Seen"}))
        self.assertFalse(search(tokens, flags={"\\Seen", "\\Flagged"}))
        tokens = ["OR", "SEEN", ["UNSEEN", "SMALLER", "100"]]
        self.assertTrue(search(tokens, flags={"\\Seen"}, size=500))
        self.assertTrue(search(tokens, flags=(), size=50))
        self.assertFalse(search(tokens, flags=(), size=500))

    def test_nested_not_and_or(self):
        self.assertTrue(search(["NOT", "NOT", "SEEN"], flags={"\\Seen"}))
        tokens = ["OR", "NOT", "SEEN", "OR", "FLAGGED", ["DELETED", "DRAFT"]]
        self.assertTrue(search(tokens, flags=()))
        self.assertTrue(search(tokens, flags={"\\Seen", "\\Flagged"}))
        self.assertTrue(search(tokens, flags={"\\Seen", "\\Deleted", "\\Draft"}))
        self.assertFalse(search(tokens, flags={"\\Seen", "\\Deleted"}))

    def test_brief_example(self):
        c = parse_search(["CHARSET", b"UTF-8", "FROM", b"smith", "OR", "SEEN",
                          ["UNSEEN", "SMALLER", "100"], "1:5,7"])
        self.assertIsInstance(c, Criteria)
        self.assertEqual(c.charset, "UTF-8")
        self.assertEqual(c.needs, {"headers", "flags", "size"})
        self.assertTrue(c.matches(context(seq=7, flags={"\\Seen"})))
        self.assertFalse(c.matches(context(seq=6, flags={"\\Seen"})))
        self.assertFalse(c.matches(context(seq=1, flags=(), size=1000)))

    def test_long_or_chain_is_fine_and_absurd_nesting_is_refused(self):
        chain = []
        for n in range(150):
            chain += ["OR", "UID", str(n + 1)]
        chain.append("SEEN")
        self.assertTrue(search(chain, uid=150))
        self.assertFalse(search(chain, uid=151))
        with self.assertRaisesRegex(ValueError, "nested too deeply"):
            parse_search(["NOT"] * 1000 + ["SEEN"])
        deep = ["SEEN"]
        for _ in range(1000):
            deep = [deep]
        with self.assertRaisesRegex(ValueError, "nested too deeply"):
            parse_search(deep)


class SequenceSetTest(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(parse_sequence_set("1:5,7,9:*"), ((1, 5), (7, 7), (9, None)))
        self.assertEqual(parse_sequence_set("*"), ((None, None),))

    def test_membership_with_star_and_reversed_ranges(self):
        s = parse_sequence_set("2,4:3,10:*")
        self.assertEqual([n for n in range(1, 14) if in_sequence_set(n, s, 12)],
                         [2, 3, 4, 10, 11, 12])
        # n:* with n beyond the largest still holds the largest (RFC 3501 §9)
        self.assertEqual([n for n in range(1, 7) if in_sequence_set(n, s, 6)], [2, 3, 4, 6])

    def test_sequence_set_key(self):
        self.assertTrue(search(["1:5,7"], seq=7))
        self.assertFalse(search(["1:5,7"], seq=6))
        self.assertTrue(search(["*"], seq=5, largest_seq=5))
        self.assertFalse(search(["*"], seq=4, largest_seq=5))
        self.assertTrue(search(["*:4"], seq=5, largest_seq=5))
        self.assertFalse(search(["*:4"], seq=3, largest_seq=5))

    def test_uid_key(self):
        self.assertTrue(search(["UID", "10"], uid=10))
        self.assertFalse(search(["UID", "10"], uid=11, seq=10))
        self.assertTrue(search(["UID", "40:*"], uid=50, largest_uid=50))
        self.assertFalse(search(["UID", "*"], uid=49, largest_uid=50))
        self.assertTrue(search(["UID", "60:*"], uid=50, largest_uid=50))
        self.assertTrue(search(["NOT", "UID", "1:9"], uid=10))

    def test_malformed_sets(self):
        for bad in ("0", "1:", ",", "1,", "1::2", "1:2:3", "01", "1-3", "99999999999",
                    "4294967296"):
            with self.subTest(bad=bad):
                with self.assertRaisesRegex(ValueError, "sequence set"):
                    parse_sequence_set(bad)
        with self.assertRaisesRegex(ValueError, "sequence set"):
            parse_search(["UID", "1:x"])


class CharsetTest(unittest.TestCase):
    def test_supported_charsets(self):
        for name in ("UTF-8", "utf-8", "US-ASCII", "us-ascii"):
            with self.subTest(name=name):
                self.assertEqual(parse_search(["CHARSET", name, "ALL"]).charset, name.upper())
                self.assertEqual(parse_search(["charset", name.encode(), "ALL"]).charset,
                                 name.upper())
        self.assertEqual(parse_search(["ALL"]).charset, "US-ASCII")
        self.assertEqual(CHARSETS, ("UTF-8", "US-ASCII"))

    def test_other_charsets_are_refused_with_bad_charset(self):
        for name in ("ISO-8859-1", b"KOI8-R", "UTF8"):
            with self.subTest(name=name):
                with self.assertRaises(BadCharset) as caught:
                    parse_search(["CHARSET", name, "SUBJECT", b"x"])
                self.assertIsInstance(caught.exception, ValueError)

    def test_utf8_strings(self):
        c = parse_search(["CHARSET", "UTF-8", "BODY", "ÜBER".encode()])
        msg = "Content-Type: text/plain; charset=utf-8\r\n\r\nüber alles".encode()
        self.assertTrue(c.matches(context(message=msg)))
        with self.assertRaisesRegex(ValueError, "not valid UTF-8"):
            parse_search(["CHARSET", "UTF-8", "BODY", b"\xff\xfe"])

    def test_charset_must_come_first_and_have_a_name(self):
        with self.assertRaisesRegex(ValueError, "unknown search key 'CHARSET'"):
            parse_search(["ALL", "CHARSET", "UTF-8"])
        with self.assertRaisesRegex(ValueError, "missing charset"):
            parse_search(["CHARSET"])
        with self.assertRaisesRegex(ValueError, "at least one search key"):
            parse_search(["CHARSET", "UTF-8"])


class MalformedTest(unittest.TestCase):
    def assertBad(self, tokens, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            parse_search(tokens)

    def test_messages_say_what_is_wrong(self):
        self.assertBad([], "at least one search key")
        self.assertBad(["FOO"], "unknown search key 'FOO'")
        self.assertBad([b"SEEN"], "expected a search key, got the string b'SEEN'")
        self.assertBad([[]], "empty parentheses")
        self.assertBad(["FROM"], "missing string after FROM")
        self.assertBad(["FROM", ["x"]], "string after FROM must be a string, got a parenthesised")
        self.assertBad(["HEADER", b"Subject"], "missing string after HEADER Subject")
        self.assertBad(["HEADER", b"Bad Name", b"x"], "bad header field name")
        self.assertBad(["HEADER", b"", b"x"], "bad header field name")
        self.assertBad(["HEADER", b"Sub:ject", b"x"], "bad header field name")
        self.assertBad(["LARGER"], "missing size after LARGER")
        self.assertBad(["LARGER", "abc"], "size after LARGER must be a number, got 'abc'")
        self.assertBad(["SMALLER", b"100"], "must be an atom")
        self.assertBad(["SMALLER", "-1"], "must be a number")
        self.assertBad(["LARGER", "4294967296"], "must be a number")
        self.assertBad(["LARGER", "9" * 5000], "must be a number")
        self.assertBad(["KEYWORD"], "missing flag after KEYWORD")
        self.assertBad(["KEYWORD", b"$Junk"], "flag after KEYWORD must be an atom")
        self.assertBad(["UID"], "missing UID set")
        self.assertBad(["NOT"], "missing search key")
        self.assertBad(["OR", "SEEN"], "missing search key")
        self.assertBad(["SEEN", ["FLAGGED", "BOGUS"]], "unknown search key 'BOGUS'")

    def test_bad_dates(self):
        for bad in ("1994-02-01", "1-Foo-1994", "32-Jan-1994", "29-Feb-1993", "1-Feb-94",
                    "001-Feb-1994", "1-Feb-1994x", "0-Jan-2000"):
            with self.subTest(bad=bad):
                self.assertBad(["SINCE", bad], "date")
        self.assertBad(["SENTON"], "missing date after SENTON")


class HeaderScanTest(unittest.TestCase):
    """SEARCH finds one field by scanning the header for its name (field_values); it must
    find exactly what splitting the whole header into fields finds, junk lines and all."""

    def test_field_values_agree_with_a_full_split(self):
        pieces = [b"Subject", b"subject", b"SUBJECT", b"X-Subject", b"Subjects", b" ", b"\t", b":",
                  b"\r\n", b"\n", b"a", b"Subject :", b"Subject\t:", b"\r\n ", b"\n\t", b"\xe9"]
        rng = random.Random(7)
        for _ in range(20_000):
            raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
            for name in ("subject", "x-subject"):
                expected = [v for k, v in raw_fields(raw) if k.lower() == name.encode()]
                self.assertEqual(field_values(raw, name), expected, raw)

    def test_field_values_of_a_real_header(self):
        self.assertEqual(field_values(PLAIN, "subject"), [b"Quarterly report is folded"])
        self.assertEqual(field_values(PLAIN, "to"), [b"Mary <mary@example.org>, bob@example.net"])
        self.assertEqual(field_values(b"subject: a\nX-Subject: b\nSUBJECT:c", "subject"), [b"a", b"c"])
        self.assertEqual(field_values(PLAIN, "received"), [])

    def test_split_header_stops_at_the_first_blank_line_of_either_kind(self):
        self.assertEqual(split_header(PLAIN), PLAIN[:PLAIN.index(b"\r\n\r\n") + 2])
        self.assertEqual(split_header(b"a: 1\n\r\nb: 2\n\nbody"), b"a: 1\n")
        self.assertEqual(split_header(b"a: 1\n\nb: 2\n\r\nbody"), b"a: 1\n")
        self.assertEqual(split_header(b"a: 1 \n\r\n\n"), b"a: 1 \n")
        self.assertEqual(split_header(b"a: 1\r\nno blank line"), b"a: 1\r\nno blank line")
        self.assertEqual(split_header(b"\r\nbody only"), b"")


class LazinessTest(unittest.TestCase):
    def lazy(self, **kw):
        return MessageContext(3, 30, {"\\Seen"}, True, local(1994, 2, 3), 1234, forbidden,
                              5, 50, kw.get("header_loader", forbidden))

    def test_flags_sizes_dates_and_sets_read_no_message(self):
        tokens = ["SEEN", "NOT", "DELETED", "RECENT", "LARGER", "10", "SINCE", "1-Jan-1990",
                  "OR", "KEYWORD", "x", "ALL", "UID", "1:*", "1:*", "NEW", ["OLD"]]
        c = parse_search(tokens)
        self.assertFalse(c.matches(self.lazy()))  # NEW and OLD can't both hold
        self.assertEqual(c.needs, {"flags", "size", "date"})
        self.assertTrue(parse_search(tokens[:-3]).matches(self.lazy()))

    def test_header_search_reads_only_the_header(self):
        head = Loads(PLAIN[:PLAIN.index(b"\r\n\r\n") + 4] + b"Mary body bytes beyond the blank")
        ctx = self.lazy(header_loader=head)
        self.assertTrue(parse_search(["SUBJECT", b"report", "FROM", b"smith"]).matches(ctx))
        self.assertFalse(parse_search(["SUBJECT", b"blank"]).matches(ctx))  # body is no header
        self.assertTrue(parse_search(["SENTON", "1-Feb-1994"]).matches(ctx))
        self.assertEqual(head.calls, 1)

    def test_cheap_keys_are_tried_first(self):
        unseen = MessageContext(1, 1, (), False, 0.0, 10, forbidden, 1, 1, forbidden)
        for tokens in (["SUBJECT", b"x", "SEEN"], ["BODY", b"x", "SEEN"],
                       ["OR", "SUBJECT", b"x", "UNSEEN"], ["TEXT", b"x", ["SEEN", "ALL"]]):
            with self.subTest(tokens=tokens):
                # would raise if the subject or the body were read
                self.assertEqual(parse_search(tokens).matches(unseen), tokens[0] == "OR")

    def test_message_is_loaded_once_and_serves_the_header_too(self):
        whole = Loads(PLAIN)
        ctx = MessageContext(1, 1, (), False, 0.0, 10, whole, 1, 1, forbidden)
        c = parse_search(["BODY", b"numbers", "TEXT", b"hello"])
        self.assertTrue(c.matches(ctx))
        self.assertEqual(c.needs, {"headers", "body"})
        # the header now comes from the loaded message, not from header_loader
        c = parse_search(["SUBJECT", b"quarterly", "HEADER", b"x-mailer", b"", "TEXT", b"mary"])
        self.assertTrue(c.matches(ctx))
        self.assertEqual(whole.calls, 1)

    def test_without_header_loader_the_message_is_read_once(self):
        whole = Loads(PLAIN)
        ctx = MessageContext(1, 1, (), False, 0.0, 10, whole, 1, 1)
        self.assertTrue(parse_search(["SUBJECT", b"report", "TO", b"mary"]).matches(ctx))
        self.assertTrue(parse_search(["BODY", b"numbers"]).matches(ctx))
        self.assertEqual(whole.calls, 1)

    def test_needs(self):
        self.assertEqual(parse_search(["UID", "1:*"]).needs, set())
        self.assertEqual(parse_search(["SENTON", "1-Feb-1994"]).needs, {"headers", "date"})
        self.assertEqual(parse_search(["TEXT", b"x"]).needs, {"headers", "body"})
        self.assertEqual(parse_search(["NOT", "BODY", b"x"]).needs, {"body"})
        self.assertEqual(parse_search(["OR", "SEEN", "ON", "1-Feb-1994"]).needs, {"flags", "date"})


class SpeedTest(unittest.TestCase):
    """Measured, not asserted: the numbers are printed for the record."""
    COUNT = 10_000

    def folder(self, header_calls, body_calls):
        contexts = []
        for n in range(1, self.COUNT + 1):
            subject = "x marks the spot" if n % 100 == 0 else f"message number {n}"
            head = (f"From: Sender {n} <s{n}@example.com>\r\nTo: you@example.org\r\n"
                    f"Subject: {subject}\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
                    "Message-ID: <{n}@example.com>\r\n\r\n").encode()
            body = b"Line of body text.\r\n" * 50

            def load_head(head=head):
                header_calls.append(1)
                return head

            def load_all(data=head + body):
                body_calls.append(1)
                return data

            flags = {"\\Seen"} if n % 2 else set()
            contexts.append(MessageContext(n, n * 3, flags, False, 760000000.0 + n,
                                           len(head) + 1000, load_all, self.COUNT,
                                           self.COUNT * 3, load_head))
        return contexts

    def run_search(self, tokens, label):
        header_calls, body_calls = [], []
        contexts = self.folder(header_calls, body_calls)
        criteria = parse_search(tokens)
        start = time.perf_counter()
        found = [c.uid for c in contexts if criteria.matches(c)]
        elapsed = time.perf_counter() - start
        print(f"\n  SEARCH {label} over {self.COUNT} messages: {len(found)} found in "
              f"{elapsed * 1000:.0f} ms ({len(header_calls)} header reads, "
              f"{len(body_calls)} message reads)", flush=True)
        return found, len(header_calls), len(body_calls)

    def test_subject_search_reads_only_headers(self):
        found, heads, bodies = self.run_search(["SUBJECT", b"x"], 'SUBJECT "x"')
        self.assertEqual(len(found), self.COUNT // 100)
        self.assertEqual((heads, bodies), (self.COUNT, 0))

    def test_flag_search_reads_nothing(self):
        found, heads, bodies = self.run_search(["UNSEEN", "LARGER", "10"], "UNSEEN LARGER 10")
        self.assertEqual(len(found), self.COUNT // 2)
        self.assertEqual((heads, bodies), (0, 0))

    def test_body_search_for_comparison(self):
        found, heads, bodies = self.run_search(["BODY", b"spot"], 'BODY "spot"')
        self.assertEqual(found, [])
        self.assertEqual((heads, bodies), (0, self.COUNT))


if __name__ == "__main__":
    unittest.main()
