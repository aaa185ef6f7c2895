"""Tests for ismail.addresses: SMTP path parsing and relay-trick detection."""

import unittest

from ismail.smtp.addresses import (AddressSyntaxError, Path, is_domain, parse_argument,
                              relay_trick)

SRVIP = "[127.0.0.1]"
SRVHOST = "mail.example.test"

# The address patterns nmap's smtp-open-relay script tries.
NMAP_PLAIN = ["<relaytest@nmap.scanme.org>"]
NMAP_TRICKS = [
    f"<relaytest%nmap.scanme.org@{SRVIP}>",
    f"<relaytest%nmap.scanme.org@{SRVHOST}>",
    '<"relaytest@nmap.scanme.org">',
    '<"relaytest%nmap.scanme.org">',
    f"<relaytest@nmap.scanme.org@{SRVIP}>",
    f'<"relaytest@nmap.scanme.org"@{SRVIP}>',
    f"<relaytest@nmap.scanme.org@{SRVHOST}>",
    f"<@{SRVIP}:relaytest@nmap.scanme.org>",
    f"<@{SRVHOST}:relaytest@nmap.scanme.org>",
    "<nmap.scanme.org!relaytest>",
    f"<nmap.scanme.org!relaytest@{SRVIP}>",
    f"<nmap.scanme.org!relaytest@{SRVHOST}>",
]


def path_of(arg: str, keyword: str = "TO") -> Path:
    return parse_argument(f"{keyword}:{arg}", keyword)[0]


class NmapRelayPatterns(unittest.TestCase):
    def test_plain_patterns_parse_without_trick(self):
        for arg in NMAP_PLAIN + [f"<relaytest@{SRVHOST}>", f"<relaytest@{SRVIP}>"]:
            for keyword in ("FROM", "TO"):
                with self.subTest(arg=arg, keyword=keyword):
                    path = path_of(arg, keyword)
                    self.assertEqual(path.local, "relaytest")
                    self.assertIsNone(relay_trick(path))

    def test_every_trick_is_refused_or_flagged(self):
        for arg in NMAP_TRICKS:
            for keyword in ("FROM", "TO"):
                with self.subTest(arg=arg, keyword=keyword):
                    try:
                        path = path_of(arg, keyword)
                    except AddressSyntaxError:
                        continue
                    self.assertIsNotNone(relay_trick(path))

    def test_specific_classification(self):
        expected = {
            f"<relaytest%nmap.scanme.org@{SRVIP}>": "percent hack",
            f"<relaytest%nmap.scanme.org@{SRVHOST}>": "percent hack",
            '<"relaytest%nmap.scanme.org">': "percent hack",
            '<"relaytest@nmap.scanme.org">': "quoted local part with @",
            f'<"relaytest@nmap.scanme.org"@{SRVIP}>': "quoted local part with @",
            f"<@{SRVIP}:relaytest@nmap.scanme.org>": "source route",
            f"<@{SRVHOST}:relaytest@nmap.scanme.org>": "source route",
            "<nmap.scanme.org!relaytest>": "bang path",
            f"<nmap.scanme.org!relaytest@{SRVIP}>": "bang path",
            f"<nmap.scanme.org!relaytest@{SRVHOST}>": "bang path",
        }
        for arg, trick in expected.items():
            with self.subTest(arg=arg):
                self.assertEqual(relay_trick(path_of(arg)), trick)

    def test_double_at_is_syntax_error(self):
        for arg in (f"<relaytest@nmap.scanme.org@{SRVIP}>",
                    f"<relaytest@nmap.scanme.org@{SRVHOST}>", "a@b@c"):
            with self.subTest(arg=arg):
                with self.assertRaisesRegex(AddressSyntaxError, "more than one @"):
                    path_of(arg)

    def test_source_route_fields(self):
        path = path_of("<@A.Example,@b.example:user@C.example>")
        self.assertEqual(path, Path(local="user", domain="c.example",
                                    route=("a.example", "b.example")))
        self.assertEqual(path.address, "user@c.example")
        literal = path_of("<@[IPv6:::1],@[127.0.0.1]:u@x.test>")
        self.assertEqual(literal.route, ("[ipv6:::1]", "[127.0.0.1]"))


class ValidPaths(unittest.TestCase):
    def test_example_from_spec(self):
        self.assertEqual(
            parse_argument("FROM:<a@b.c> SIZE=100 BODY=8BITMIME", "FROM"),
            (Path(local="a", domain="b.c"), {"SIZE": "100", "BODY": "8BITMIME"}))

    def test_keyword_case_and_spaces(self):
        for text, keyword in (("from:<a@b.c>", "FROM"), ("To:<a@b.c>", "TO"),
                              ("FROM: <a@b.c>", "FROM"), ("TO:   <a@b.c>", "to"),
                              (" FROM:<a@b.c>", "FROM")):
            with self.subTest(text=text):
                self.assertEqual(parse_argument(text, keyword)[0], Path("a", "b.c"))

    def test_domain_lowercased_local_preserved(self):
        path = path_of("<John.Smith@Example.COM>")
        self.assertEqual((path.local, path.domain), ("John.Smith", "example.com"))
        self.assertEqual(str(path), "John.Smith@example.com")
        self.assertTrue(path.is_ascii)
        self.assertFalse(path.null)

    def test_bare_address(self):
        self.assertEqual(path_of("a@b.c"), Path("a", "b.c"))
        path, params = parse_argument("FROM:a@b.c SIZE=5", "FROM")
        self.assertEqual((path, params), (Path("a", "b.c"), {"SIZE": "5"}))

    def test_atext_characters(self):
        local = "!#$%&'*+-/=?^_`{|}~.x1"
        self.assertEqual(path_of(f"<{local}@x.test>").local, local)

    def test_local_only(self):
        self.assertEqual(path_of("<postmaster>"), Path(local="postmaster"))
        self.assertEqual(path_of("<Postmaster>").address, "Postmaster")

    def test_an_argument_seen_before_gives_the_same_answer(self):
        text = "FROM:<repeat@b.c> SIZE=100 BODY=8BITMIME"
        first_path, first_params = parse_argument(text, "FROM")
        first_params["SIZE"] = "changed by the caller"
        del first_params["BODY"]
        path, params = parse_argument(text, "FROM")
        self.assertEqual((path, params),
                         (Path("repeat", "b.c"), {"SIZE": "100", "BODY": "8BITMIME"}))
        self.assertIsNot(params, first_params)
        # The same text under the other keyword is refused, remembered or not.
        with self.assertRaises(AddressSyntaxError):
            parse_argument(text, "TO")
        # A refusal is given every time.
        for _ in range(2):
            with self.assertRaises(AddressSyntaxError):
                parse_argument("FROM:<a@@b.c>", "FROM")
        # Past the memory's bound every argument still gets its own answer.
        for i in range(600):
            self.assertEqual(parse_argument(f"TO:<u{i}@d{i % 7}.test>", "TO")[0],
                             Path(f"u{i}", f"d{i % 7}.test"))
        self.assertEqual(parse_argument(text, "FROM")[0], Path("repeat", "b.c"))

    def test_null_path(self):
        path, params = parse_argument("FROM:<>", "FROM")
        self.assertTrue(path.null)
        self.assertEqual((path.address, str(path), params), ("", "", {}))
        path, params = parse_argument("FROM:<> SIZE=0 BODY=7BIT", "FROM")
        self.assertTrue(path.null)
        self.assertEqual(params, {"SIZE": "0", "BODY": "7BIT"})

    def test_address_literals(self):
        self.assertEqual(path_of("<a@[192.0.2.1]>").domain, "[192.0.2.1]")
        self.assertEqual(path_of("<a@[IPv6:2001:DB8::1]>").domain, "[ipv6:2001:db8::1]")
        self.assertEqual(path_of("<a@[IPv6:::ffff:192.0.2.1]>").address,
                         "a@[ipv6:::ffff:192.0.2.1]")

    def test_quoted_local_parts(self):
        path = path_of('<"john doe"@x.test>')
        self.assertEqual((path.local, path.quoted), ("john doe", True))
        self.assertEqual(path.address, '"john doe"@x.test')
        self.assertIsNone(relay_trick(path))
        escaped = path_of(r'<"a\"b\\c"@x.test>')
        self.assertEqual(escaped.local, 'a"b\\c')
        self.assertEqual(escaped.address, r'"a\"b\\c"@x.test')
        # Quoting that is not needed is dropped on output.
        self.assertEqual(path_of('<"john"@x.test>').address, "john@x.test")
        # Angle brackets and spaces inside quotes do not end the path.
        self.assertEqual(path_of('<"a>b <c"@x.test> SIZE=1').local, "a>b <c")

    def test_address_round_trips(self):
        for arg in ('<"john doe"@x.test>', r'<"a\"b"@x.test>', "<a.b@x.test>",
                    '<"a..b"@x.test>', "<用户@例子.测试>"):
            with self.subTest(arg=arg):
                path = path_of(arg)
                self.assertEqual(path_of(f"<{path.address}>"), path)

    def test_smtputf8(self):
        path, params = parse_argument("FROM:<用户@例子.测试> SMTPUTF8", "FROM")
        self.assertEqual((path.local, path.domain), ("用户", "例子.测试"))
        self.assertFalse(path.is_ascii)
        self.assertEqual(params, {"SMTPUTF8": None})
        self.assertFalse(path_of("<ascii@Bücher.example>").is_ascii)
        self.assertEqual(path_of("<ascii@BÜCHER.example>").domain, "bücher.example")
        self.assertFalse(path_of("<δοκιμή@x.test>").is_ascii)
        self.assertFalse(path_of('<"δ o"@x.test>').is_ascii)

    def test_params(self):
        _, params = parse_argument(
            "FROM:<a@b.c> size=100  body=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159 ", "FROM")
        self.assertEqual(params, {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": None,
                                  "RET": "HDRS", "ENVID": "QQ314159"})
        _, params = parse_argument("TO:<a@b.c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.c",
                                   "TO")
        self.assertEqual(params["ORCPT"], "rfc822;a+40b.c")


class Limits(unittest.TestCase):
    def test_local_part_64_octets(self):
        self.assertEqual(len(path_of(f"<{'a' * 64}@x.test>").local), 64)
        with self.assertRaisesRegex(AddressSyntaxError, "local part longer than 64"):
            path_of(f"<{'a' * 65}@x.test>")
        # Octets, not characters: 21 * 3 + 1 = 64, 22 * 3 = 66.
        path_of(f"<{'用' * 21}a@x.test>")
        with self.assertRaises(AddressSyntaxError):
            path_of(f"<{'用' * 22}@x.test>")

    def test_quoted_local_part_counts_quotes(self):
        path_of(f'<"{"a" * 62}"@x.test>')
        with self.assertRaisesRegex(AddressSyntaxError, "64"):
            path_of(f'<"{"a" * 63}"@x.test>')

    def test_domain_255_octets(self):
        domain = ".".join(["a" * 63] * 4)  # 255 octets
        self.assertTrue(is_domain(domain))
        self.assertFalse(is_domain(".".join(["a" * 63] * 3 + ["a" * 62, "b"])))  # 256
        self.assertTrue(is_domain("a" * 63 + ".test"))
        self.assertFalse(is_domain("a" * 64 + ".test"))

    def test_path_256_octets(self):
        domain = ".".join(["d" * 63, "e" * 63, "f" * 58, "de"])  # 189 octets
        # '<' + 64 + '@' + 189 + '>' = 256
        self.assertEqual(path_of(f"<{'a' * 64}@{domain}>").domain, domain)
        with self.assertRaisesRegex(AddressSyntaxError, "path longer than 256"):
            path_of(f"<{'a' * 64}@{domain}x>")


class Malformed(unittest.TestCase):
    CASES = [
        ("FROM<a@b.c>", "FROM"), ("FROM <a@b.c>", "FROM"), ("TO:<a@b.c>", "FROM"),
        ("FROMX:<a@b.c>", "FROM"), ("", "FROM"), ("FROM:", "FROM"), ("FROM:   ", "FROM"),
        ("FROM:<a@b.c", "FROM"), ("FROM:a@b.c>", "FROM"), ("FROM:<<a@b.c>>", "FROM"),
        ("FROM:<a@b.c>>", "FROM"), ("FROM:<a@b.c>SIZE=1", "FROM"),
        ("FROM:<a b@c.d>", "FROM"), ("FROM:<a@b c.d>", "FROM"), ("FROM:< a@b.c>", "FROM"),
        ("FROM:<a@b.c\r\n>", "FROM"), ("FROM:<a\x00@b.c>", "FROM"),
        ("FROM:<a@b.c>\tSIZE=1", "FROM"), ("FROM:<a\udcff@b.c>", "FROM"),
        ("FROM:<a\x85@b.c>", "FROM"),
        ("FROM:<@:a@b.c>", "FROM"), ("FROM:<@a.b>", "FROM"), ("FROM:<@a,@b>", "FROM"),
        ("FROM:<@a:>", "FROM"), ("FROM:<@a,b:c@d.e>", "FROM"), ("FROM:<@a.,@b:c@d.e>", "FROM"),
        ("FROM:<@>", "FROM"), ("FROM:<@b.c>", "FROM"),
        ("FROM:<.a@b.c>", "FROM"), ("FROM:<a.@b.c>", "FROM"), ("FROM:<a..b@c.d>", "FROM"),
        ("FROM:<a(b)@c.d>", "FROM"), ("FROM:<a,b@c.d>", "FROM"), ("FROM:<a\\b@c.d>", "FROM"),
        ("FROM:<a\"b\"@c.d>", "FROM"), ('FROM:<"a"b@c.d>', "FROM"), ('FROM:<"ab@c.d>', "FROM"),
        ('FROM:<""@c.d>', "FROM"), ('FROM:<"a"@>', "FROM"),
        ("FROM:<a@>", "FROM"), ("FROM:<a@b.c.>", "FROM"), ("FROM:<a@.b.c>", "FROM"),
        ("FROM:<a@b..c>", "FROM"), ("FROM:<a@-b.c>", "FROM"), ("FROM:<a@b-.c>", "FROM"),
        ("FROM:<a@b_c.d>", "FROM"), ("FROM:<a@1.2.3.4>", "FROM"),
        ("FROM:<a@[1.2.3]>", "FROM"), ("FROM:<a@[1.2.3.256]>", "FROM"),
        ("FROM:<a@[127.0.0.1>", "FROM"), ("FROM:<a@127.0.0.1]>", "FROM"),
        ("FROM:<a@[IPv6:1.2.3.4]>", "FROM"), ("FROM:<a@[::1]>", "FROM"),
        ("FROM:<a@[IPv6:fe80::1%eth0]>", "FROM"), ("FROM:<a@[x400:foo]>", "FROM"),
        ("FROM:<a@b.c> SIZE=1 SIZE=2", "FROM"), ("FROM:<a@b.c> SIZE=1 size=2", "FROM"),
        ("FROM:<a@b.c> SIZE=", "FROM"), ("FROM:<a@b.c> =1", "FROM"),
        ("FROM:<a@b.c> -X=1", "FROM"), ("FROM:<a@b.c> X_Y=1", "FROM"),
        ("FROM:<a@b.c> A=b=c", "FROM"), ("FROM:<a@b.c> A=\u00a0", "FROM"),
        ("FROM:<a@b.c> ÄÖ=1", "FROM"),
    ]

    def test_malformed_inputs_raise(self):
        for text, keyword in self.CASES:
            with self.subTest(text=text):
                with self.assertRaises(AddressSyntaxError) as ctx:
                    parse_argument(text, keyword)
                self.assertTrue(str(ctx.exception))

    def test_reasons(self):
        for text, reason in (
            ("FROM:<<a@b.c>>", "unbalanced angle brackets"),
            ("FROM:<a@b.c", "unbalanced angle brackets"),
            ("FROM:<a b@c.d>", "space in unquoted address"),
            ("FROM:<@:a@b.c>", "empty domain in source route"),
            ("FROM:<a@b.c> SIZE=1 SIZE=2", "duplicate parameter SIZE"),
            ("FROM:<a@b.c.>", "trailing dot in domain"),
            ("FROM:<a@b.c\r\n>", "control character"),
            ('FROM:<"ab@c.d>', "unterminated quoted string"),
            ("FROM<a@b.c>", "expected FROM:"),
            ("FROM:", "missing path"),
        ):
            with self.subTest(text=text):
                with self.assertRaisesRegex(AddressSyntaxError, reason):
                    parse_argument(text, "FROM")

    def test_error_is_value_error(self):
        with self.assertRaises(ValueError):
            parse_argument("FROM:<a..b@c.d>", "FROM")


class IsDomain(unittest.TestCase):
    def test_valid(self):
        for name in ("localhost", "mail.example.test", "Mail-1.Example.COM", "例子.测试",
                     "xn--bcher-kva.example", "a.b-c.d", "1a.example", "123.example"):
            with self.subTest(name=name):
                self.assertTrue(is_domain(name))

    def test_invalid(self):
        for name in ("", ".", "a.", ".a", "a..b", "-a.b", "a-.b", "a_b.c", "a b.c",
                     "[127.0.0.1]", "127.0.0.1", "a@b", "a\x00b", "a\u00a0b.c", "a\ud800.c",
                     "a\r\n.c", None, 5):
            with self.subTest(name=name):
                self.assertFalse(is_domain(name))


class RelayTrick(unittest.TestCase):
    def test_ordinary(self):
        for arg in ("<a@b.c>", "<postmaster>", '<"a b"@c.d>', "<用户@例子.测试>", "<>"):
            with self.subTest(arg=arg):
                self.assertIsNone(relay_trick(path_of(arg)))

    def test_each_trick_on_constructed_paths(self):
        self.assertEqual(relay_trick(Path("u", "x", route=("r",))), "source route")
        self.assertEqual(relay_trick(Path("u%v", "x")), "percent hack")
        self.assertEqual(relay_trick(Path("v!u", "x")), "bang path")
        self.assertEqual(relay_trick(Path("u@v", "x", quoted=True)), "quoted local part with @")
        self.assertEqual(relay_trick(path_of('<"a%b"@c.d>')), "percent hack")


if __name__ == "__main__":
    unittest.main()
