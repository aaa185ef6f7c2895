import base64
import time
import unittest

from ismail.antispam.rules import RuleHit, RuleSet, check_rule, regex_danger


def rule(pattern: str, where: str = "body", match: str = "contains", action: str = "junk",
         **extra) -> dict:
    r = {"name": extra.pop("name", f"{where}:{pattern}"), "where": where, "match": match,
         "pattern": pattern, "action": action, "enabled": True}
    r.update(extra)
    return r


def message(subject: str = "Hello", body: bytes = b"Just a note.\r\n", headers: bytes = b"") -> bytes:
    return (b"From: Alice Example <alice@example.test>\r\n"
            b"To: bob@local.test\r\n"
            b"Cc: Carol <carol@other.test>\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            + headers + b"Message-ID: <1@example.test>\r\n\r\n" + body)


MULTIPART = (b"From: a@example.test\r\nTo: b@local.test\r\nSubject: parts\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
             b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             + base64.encodebytes("Grüße: cheap wätches today\n".encode()).replace(b"\n", b"\r\n")
             + b"--XX\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
             b"Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>Caf=E9 <b>special=\r\n offer</b></p>\r\n"
             b"--XX\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=x.txt\r\n\r\n"
             b"attached secret word\r\n--XX--\r\n")


class WhereAndMatchTest(unittest.TestCase):
    def hit(self, rules: list[dict], msg: bytes) -> RuleHit | None:
        return RuleSet(rules).evaluate(msg)

    def test_subject_contains_is_case_insensitive(self) -> None:
        self.assertIsNotNone(self.hit([rule("FREE money", "subject")], message("Get free MONEY now")))
        self.assertIsNone(self.hit([rule("free money", "subject")], message("Hello")))
        self.assertIsNone(self.hit([rule("Just a note", "subject")], message("Hello")))  # body is not subject

    def test_from_and_to(self) -> None:
        msg = message()
        self.assertIsNotNone(self.hit([rule("alice example", "from")], msg))
        self.assertIsNone(self.hit([rule("bob@", "from")], msg))
        self.assertIsNotNone(self.hit([rule("bob@local.test", "to")], msg))
        self.assertIsNotNone(self.hit([rule("carol@other.test", "to")], msg))  # Cc counts as "to"

    def test_headers_and_one_header(self) -> None:
        msg = message(headers=b"X-Mailer: BulkBlaster 9000\r\n")
        self.assertIsNotNone(self.hit([rule("x-mailer: bulkblaster", "headers")], msg))
        self.assertIsNotNone(self.hit([rule("bulkblaster", "header:X-Mailer")], msg))
        self.assertIsNone(self.hit([rule("bulkblaster", "header:User-Agent")], msg))

    def test_folded_header_is_unfolded(self) -> None:
        msg = message(headers=b"X-Offer: very\r\n special\r\n\tdeal\r\n")
        self.assertIsNotNone(self.hit([rule("very special\tdeal", "header:x-offer")], msg))
        self.assertIsNotNone(self.hit([rule(r"^very special\sdeal$", "header:X-Offer", "regex")], msg))

    def test_encoded_subject(self) -> None:
        msg = message("=?utf-8?b?" + base64.b64encode("Günstige Uhren ".encode()).decode() + "?=\r\n"
                      " =?iso-8859-1?q?f=FCr_Sie?=")
        self.assertIsNotNone(self.hit([rule("günstige uhren für sie", "subject")], msg))
        self.assertIsNotNone(self.hit([rule(r"uhren\s+für", "subject", "regex")], msg))
        broken = message("=?bogus-charset?q?abc?= plain")
        self.assertIsNotNone(self.hit([rule("plain", "subject")], broken))

    def test_raw_utf8_header(self) -> None:
        msg = message(headers="X-Note: naïve café\r\n".encode())
        self.assertIsNotNone(self.hit([rule("CAFÉ", "header:x-note")], msg))

    def test_body_base64_quoted_printable_and_charset(self) -> None:
        self.assertIsNotNone(self.hit([rule("CHEAP WÄTCHES")], MULTIPART))
        self.assertIsNotNone(self.hit([rule("café <b>special offer")], MULTIPART))  # QP soft break, latin-1
        self.assertIsNone(self.hit([rule("secret word")], MULTIPART))  # attachments are not text to judge
        self.assertIsNotNone(self.hit([rule(r"cheap\s+w.tches", match="regex")], MULTIPART))

    def test_plain_8bit_body_without_mime(self) -> None:
        self.assertIsNotNone(self.hit([rule("crème brûlée")], message(body="Crème brûlée\r\n".encode())))

    def test_regex_is_case_insensitive_unless_turned_off(self) -> None:
        msg = message("Order NOW")
        self.assertIsNotNone(self.hit([rule(r"\border now\b", "subject", "regex")], msg))
        self.assertIsNone(self.hit([rule(r"(?-i:order now)", "subject", "regex")], msg))


class ActionsTest(unittest.TestCase):
    def test_each_action_and_first_match_wins(self) -> None:
        rules = [rule("nothing-here", action="reject"),
                 rule("note", action="folder", folder="Notes", name="notes"),
                 rule("note", action="reject")]
        self.assertEqual(RuleSet(rules).evaluate(message()), RuleHit("notes", "folder", "Notes"))
        self.assertEqual(RuleSet([rule("note", action="reject", name="r")]).evaluate(message()),
                         RuleHit("r", "reject", ""))
        self.assertEqual(RuleSet([rule("note", name="j")]).evaluate(message()), RuleHit("j", "junk", ""))

    def test_disabled_rule_skipped(self) -> None:
        rules = [rule("note", action="reject", enabled=False), rule("note", name="second")]
        self.assertEqual(RuleSet(rules).evaluate(message()).name, "second")
        self.assertIsNone(RuleSet([rule("note", enabled=False)]).evaluate(message()))


class BudgetTest(unittest.TestCase):
    def test_budget_exhaustion_skips_the_rest(self) -> None:
        ticks = iter(range(1000))
        clock = lambda: next(ticks) * 0.1  # noqa: E731 - every look at the clock costs 0.1 s
        rules = [rule(f"absent{i}") for i in range(5)] + [rule("note", name="late")]
        rs = RuleSet(rules, budget=0.25, clock=clock)
        with self.assertLogs("ismail.antispam", "WARNING") as logs:
            self.assertIsNone(rs.evaluate(message()))
        self.assertIn("not evaluated", logs.output[0])
        self.assertEqual(RuleSet(rules).evaluate(message()).name, "late")  # with time to spare

    def test_budget_checked_between_pieces_of_one_regex(self) -> None:
        # An accepted but slow-ish pattern (O(n^2) per piece) on 400 KB of hostile text.
        body = (b"a" * 1999 + b"\r\n") * 200
        rs = RuleSet([rule(r"a.*b", match="regex"), rule("a", name="never")], budget=0.05)
        started = time.perf_counter()
        with self.assertLogs("ismail.antispam", "WARNING"):
            self.assertIsNone(rs.evaluate(message(body=body)))
        took = time.perf_counter() - started
        print(f"\n  rules: hostile a.*b stopped after {took * 1000:.0f} ms (budget 50 ms)", end=" ")
        self.assertLess(took, 1.0)


class CheckRuleTest(unittest.TestCase):
    def test_valid(self) -> None:
        self.assertIsNone(check_rule(rule("x")))
        self.assertIsNone(check_rule(rule("x", "header:X-Spam", "regex", "folder", folder="Spam")))
        r = rule("x")
        del r["enabled"]
        self.assertIsNone(check_rule(r))

    def test_fields_named(self) -> None:
        cases = [({"where": "nowhere"}, "where:"), ({"where": "header:"}, "where:"),
                 ({"match": "glob"}, "match:"), ({"pattern": ""}, "pattern:"),
                 ({"pattern": "x" * 1001}, "pattern:"), ({"action": "drop"}, "action:"),
                 ({"action": "folder"}, "folder:"), ({"enabled": "yes"}, "enabled:"),
                 ({"name": ""}, "name:"), ({"patern": "x"}, "patern:")]
        for change, field in cases:
            r = rule("x", name="mine")
            r.update(change)
            problem = check_rule(r)
            self.assertIsNotNone(problem, change)
            self.assertTrue(problem.startswith(field), problem)
        self.assertIsNotNone(check_rule("not a dict"))  # type: ignore[arg-type]

    def test_bad_regex_names_the_rule(self) -> None:
        problem = check_rule(rule("(unclosed", match="regex", name="broken one"))
        self.assertTrue(problem.startswith("pattern:"), problem)
        self.assertIn('"broken one"', problem)
        with self.assertRaises(ValueError) as cm:
            RuleSet([rule("ok"), rule("[z-a]", match="regex")])
        self.assertIn("rules[1].pattern", str(cm.exception))

    def test_catastrophic_patterns_refused(self) -> None:
        for pattern in (r"(a+)+$", r"(a*)*b", r"(a|aa)+$", r"(.*a){12}", r"(\w+\s?)+$", r"(x+x+)+y",
                        r"(foo|f\w)+", r".*a.*b", r"\d+\d+x", r"\s*\s*\s*$", r"^.*a.*b.*c", r"(?:a|)+",
                        r"(?=(a+)+b)", r".{0,100}a.{0,100}b"):
            problem = check_rule(rule(pattern, match="regex"))
            self.assertIsNotNone(problem, pattern)
            self.assertIn("refused", problem)

    def test_ordinary_patterns_accepted(self) -> None:
        for pattern in (r"viagra", r"v[i1!]agra", r"\bfree\s+money\b", r"foo.*bar", r"^.*a.*b",
                        r"(\d{3}-)+\d{4}", r"https?://\S+\.ru/", r"(?:re|fwd):\s*", r"(ab?)+",
                        r"^[A-Z0-9._%+-]+@[A-Z0-9.-]+\.[A-Z]{2,}$", r".{0,30}a.{0,30}b",
                        r"(?>a+)+b", r"a++b", r"[a-z]+\d+", r"(ab|cd)+"):
            self.assertIsNone(regex_danger(pattern), pattern)

    def test_accepted_pattern_worst_case_per_piece(self) -> None:
        # The worst shapes still accepted, on the hostile piece for them: tens of ms, not seconds.
        line = b"a" * 1999 + b"\r\n"
        worst = 0.0
        for pattern in (r"a.*b", r"^.*a.*b", r".{0,30}a.{0,30}b", r"\w+\s+x"):
            rs = RuleSet([rule(pattern, match="regex")], budget=10)
            started = time.perf_counter()
            rs.evaluate(message(body=line))
            worst = max(worst, time.perf_counter() - started)
        print(f"\n  rules: worst accepted pattern on one 2,000-char piece {worst * 1000:.0f} ms", end=" ")
        self.assertLess(worst, 0.5)


class BoundedTest(unittest.TestCase):
    def test_ten_megabyte_messages_are_bounded(self) -> None:
        attachment = base64.encodebytes(bytes(range(256)) * 30000).replace(b"\n", b"\r\n")  # ~10 MB
        big = (b"From: a@example.test\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
               b"--B\r\nContent-Type: text/plain\r\n\r\nthe needle is here\r\n"
               b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + attachment + b"--B--\r\n")
        self.assertGreater(len(big), 10_000_000)
        rs = RuleSet([rule("never there"), rule(r"needle\s+is", match="regex", name="found")])
        started = time.perf_counter()
        self.assertEqual(rs.evaluate(big).name, "found")
        took_mime = time.perf_counter() - started
        # One 10 MB text body: only the first max_body_bytes are examined.
        text = (b"lorem ipsum dolor sit amet " * 40 + b"\r\n") * 9500 + b"late needle\r\n"
        plain = b"From: a@example.test\r\nSubject: big\r\n\r\n" + text
        self.assertGreater(len(plain), 10_000_000)
        rs = RuleSet([rule("late needle"), rule(r"late\s+needle", match="regex")])
        started = time.perf_counter()
        self.assertIsNone(rs.evaluate(plain))
        took_text = time.perf_counter() - started
        self.assertIsNotNone(RuleSet([rule("late needle")], max_body_bytes=len(text) + 10).evaluate(plain))
        print(f"\n  rules: 10 MB with attachment {took_mime * 1000:.0f} ms, "
              f"10 MB text {took_text * 1000:.0f} ms", end=" ")


if __name__ == "__main__":
    unittest.main()
