"""The Authentication-Results header field (ismail/mailauth/authres.py): writing, folding,
quoting, and removing forged copies of ours."""
from __future__ import annotations

import email
import email.policy
import time
import unittest

from ismail.mailauth.authres import authserv_id, header, quote_value, remove_ours


def lines_of(field: bytes) -> list[str]:
    text = field.decode("utf-8")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    return text[:-2].split("\r\n")


class HeaderTest(unittest.TestCase):
    def test_no_results(self):
        self.assertEqual(header("mx.example.net", []), b"Authentication-Results: mx.example.net; none\r\n")

    def test_one_result_per_line(self):
        field = header("mx.example.net", [
            ("spf", "pass", {"smtp.mailfrom": "alice@example.com"}, ""),
            ("dkim", "pass", {"header.d": "example.com", "header.s": "s1", "header.b": "abcd1234"}, ""),
            ("dmarc", "pass", {"header.from": "example.com"}, ""),
        ])
        self.assertEqual(field, b"Authentication-Results: mx.example.net;\r\n"
                                b"\tspf=pass smtp.mailfrom=alice@example.com;\r\n"
                                b"\tdkim=pass header.d=example.com header.s=s1 header.b=abcd1234;\r\n"
                                b"\tdmarc=pass header.from=example.com\r\n")

    def test_iprev_auth_and_comments(self):
        field = header("mx.example.net", [
            ("iprev", "pass", {"policy.iprev": "192.0.2.1"}, "mail.example.com; listed in zen.example.org"),
            ("auth", "pass", {"smtp.auth": "bob"}, ""),
        ])
        self.assertIn(b"\tiprev=pass (mail.example.com; listed in zen.example.org)\r\n"
                      b"\t  policy.iprev=192.0.2.1;\r\n", field)
        self.assertTrue(field.endswith(b"\tauth=pass smtp.auth=bob\r\n"))

    def test_folding_under_78_columns(self):
        long_comment = "a comment with many words " * 6
        field = header("mx.example.net", [
            ("dkim", "pass", {"header.d": "a-rather-long-subdomain.example.com", "header.s": "selector2024",
                              "header.i": "@a-rather-long-subdomain.example.com", "header.b": "abcdEFGH"},
             long_comment),
            ("dmarc", "fail", {"header.from": "example.com", "polrec.p": "reject"}, "dis=quarantine"),
        ])
        for line in lines_of(field):
            self.assertLessEqual(len(line.expandtabs(8)), 78, line)
            self.assertTrue(line.startswith(("Authentication-Results:", "\t")), line)
        # unfolding gives back the words in order
        unfolded = field.decode().replace("\r\n\t  ", " ").replace("\r\n\t", " ")
        self.assertIn("(" + " ".join(long_comment.split()) + ")", unfolded)
        self.assertIn("header.b=abcdEFGH; dmarc=fail (dis=quarantine)", unfolded)

    def test_a_word_longer_than_a_line_stays_whole(self):
        mailfrom = "x" * 90 + "@example.com"
        field = header("mx", [("spf", "pass", {"smtp.mailfrom": mailfrom}, "")])
        self.assertIn(mailfrom.encode(), field)

    def test_quoting(self):
        self.assertEqual(quote_value("example.com"), "example.com")
        self.assertEqual(quote_value("alice@example.com"), "alice@example.com")
        self.assertEqual(quote_value("@example.com"), "@example.com")
        self.assertEqual(quote_value("abc/+="), '"abc/+="')
        self.assertEqual(quote_value("two words"), '"two words"')
        self.assertEqual(quote_value('say "hi"\\'), '"say \\"hi\\"\\\\"')
        self.assertEqual(quote_value("a@b.com", mailbox_ok=False), '"a@b.com"')
        self.assertEqual(quote_value("line\r\nbreak"), '"line break"')
        field = header("mx", [("spf", "pass", {"smtp.mailfrom": '"odd local"@example.com'}, "")])
        self.assertIn(b'smtp.mailfrom="\\"odd local\\"@example.com"', field)

    def test_comment_escaping_and_injection(self):
        field = header("mx", [("spf", "fail", {}, "evil) x=y\r\nX-Injected: yes (\\")])
        self.assertEqual(len(lines_of(field)), 2)
        self.assertIn(b"(evil\\) x=y X-Injected: yes \\(\\\\)", field)

    def test_reason(self):
        field = header("mx", [("dkim", "fail", {"reason": "signature did not verify", "header.d": "x.example"}, "")])
        self.assertIn(b'dkim=fail reason="signature did not verify" header.d=x.example', field)

    def test_bad_method_or_property_raises(self):
        with self.assertRaises(ValueError):
            header("mx", [("spf pass", "pass", {}, "")])
        with self.assertRaises(ValueError):
            header("mx", [("spf", "pass", {"mailfrom": "a@b"}, "")])
        with self.assertRaises(ValueError):
            header("mx", [("spf", "pass", {"smtp.mail from": "a@b"}, "")])

    def test_python_email_reads_it_back(self):
        field = header("mx.example.net", [("spf", "pass", {"smtp.mailfrom": "a@example.com"}, "x"),
                                          ("dkim", "pass", {"header.b": "ab/+"}, "")])
        msg = email.message_from_bytes(field + b"Subject: s\r\n\r\nbody\r\n", policy=email.policy.default)
        value = " ".join(str(msg["Authentication-Results"]).split())
        self.assertEqual(value, 'mx.example.net; spf=pass (x) smtp.mailfrom=a@example.com; dkim=pass header.b="ab/+"')


class RemoveOursTest(unittest.TestCase):
    BLOCK = (b"Received: from a by b;\r\n\tTue, 1 Jan 2030 00:00:00 +0000\r\n"
             b"Authentication-Results: mx.example.net;\r\n\tspf=pass smtp.mailfrom=forged@example.com;\r\n"
             b"\tdkim=pass header.d=example.com\r\n"
             b"Authentication-Results: other.example; spf=fail\r\n"
             b"authentication-results : (forged) (a (nested) one)\r\n MX.Example.Net; dkim=pass\r\n"
             b'Authentication-Results: "mx.example.net"; dmarc=pass\r\n'
             b"Authentication-Results: mx.example.net.evil; spf=pass\r\n"
             b"Subject: Authentication-Results: mx.example.net; x\r\n"
             b"\r\n"
             b"Authentication-Results: mx.example.net; in the body\r\n")

    def test_removes_ours_keeps_the_rest_byte_exact(self):
        self.assertEqual(remove_ours(self.BLOCK, "MX.example.net"),
                         b"Received: from a by b;\r\n\tTue, 1 Jan 2030 00:00:00 +0000\r\n"
                         b"Authentication-Results: other.example; spf=fail\r\n"
                         b"Authentication-Results: mx.example.net.evil; spf=pass\r\n"
                         b"Subject: Authentication-Results: mx.example.net; x\r\n"
                         b"\r\n"
                         b"Authentication-Results: mx.example.net; in the body\r\n")

    def test_nothing_to_remove_is_identity(self):
        block = b"From: a@b\nAuthentication-Results: other; none\n\tmore\nX: y"
        self.assertEqual(remove_ours(block, "mx.example.net"), block)

    def test_bare_lf_lines(self):
        block = b"Authentication-Results: mx.example.net;\n\tspf=pass\nSubject: s\n\nbody\n"
        self.assertEqual(remove_ours(block, "mx.example.net"), b"Subject: s\n\nbody\n")

    def test_authserv_id(self):
        self.assertEqual(authserv_id(b" mx.example.net 1; spf=pass"), "mx.example.net")
        self.assertEqual(authserv_id(b"(c) (d (e)) \r\n\t MX.example.NET;"), "mx.example.net")
        self.assertEqual(authserv_id(b' "mx.exa\\mple.net";'), "mx.example.net")
        self.assertIsNone(authserv_id(b" ; spf=pass"))
        self.assertIsNone(authserv_id(b" (unterminated"))

    def test_hostile_field_is_quick(self):
        for junk in (b"(" * 1_000_000, b"(a)" * 300_000, b"\\" * 1_000_000, b"\r\n " * 300_000):
            block = b"Authentication-Results: " + junk + b"\r\nSubject: s\r\n"
            start = time.monotonic()
            self.assertTrue(remove_ours(block, "mx").endswith(b"Subject: s\r\n"))
            self.assertLess(time.monotonic() - start, 5.0, junk[:8])


if __name__ == "__main__":
    unittest.main()
