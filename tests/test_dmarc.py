"""DMARC evaluation (ismail/mailauth/dmarc.py) and the From-domain reader (fromaddr.py),
against an in-process zone: a dict of names to TXT strings, NXDomain for the rest."""
from __future__ import annotations

import random
import time
import unittest
from dataclasses import dataclass

from ismail.mailauth import dmarc, fromaddr, signing
from ismail.mailauth.dmarc import evaluate, evaluate_message, organizational_domain, parse_record
from ismail.mailauth.fromaddr import from_domains, from_fields
from ismail.queue.dns import DNSTemporaryError, NXDomain, Resolver
from tests.support import Dnsmasq, require_program


class FakeResolver:
    """``zone``: name -> TXT strings (a name present with [] exists without TXT);
    ``failing``: names that answer with a temporary failure.  Every question is logged."""

    def __init__(self, zone: dict[str, list[str]], failing: set[str] = frozenset()) -> None:
        self.zone = {name.lower(): texts for name, texts in zone.items()}
        self.failing = failing
        self.asked: list[str] = []

    def txt(self, name: str) -> list[str]:
        self.asked.append(name)
        if name in self.failing:
            raise DNSTemporaryError(f"SERVFAIL for {name}")
        if name.lower() not in self.zone:
            raise NXDomain(f"{name}: no such domain")
        return list(self.zone[name.lower()])


@dataclass
class Dkim:
    result: str
    domain: str
    selector: str = "s1"


REJECT = "v=DMARC1; p=reject"
QUARANTINE = "v=DMARC1; p=quarantine"


def check(from_domain: str, zone: dict[str, list[str]], spf: tuple[str, str] = ("none", ""),
          dkim: list[Dkim] = (), rand=lambda: 0.0, failing: set[str] = frozenset()) -> dmarc.DmarcResult:
    return evaluate(from_domain, spf[0], spf[1], list(dkim), FakeResolver(zone, failing), rand=rand)


class RecordTest(unittest.TestCase):
    def test_tags_and_defaults(self):
        r = parse_record("v=DMARC1; p=Reject; sp=quarantine; np=reject; adkim=s; pct=50; "
                         "rua=mailto:d@example.com; psd=n; t=y; fo=1")
        self.assertEqual((r.p, r.sp, r.np, r.adkim, r.aspf, r.pct, r.psd, r.t, r.fo, r.error),
                         ("reject", "quarantine", "reject", "s", "r", 50, "n", "y", "1", ""))
        r = parse_record("v=DMARC1;p=none")
        self.assertEqual((r.adkim, r.aspf, r.pct, r.psd, r.t), ("r", "r", 100, "u", "n"))

    def test_not_dmarc(self):
        self.assertIsNone(parse_record("v=spf1 -all"))
        self.assertIsNone(parse_record("p=reject; v=DMARC1"))  # v= must come first
        self.assertIsNone(parse_record("v=DMARC10; p=reject"))
        self.assertIsNotNone(parse_record("v = DMARC1 ; p = reject"))

    def test_invalid_p_with_rua_is_none(self):
        for text in ("v=DMARC1; p=bogus; rua=mailto:r@example.com", "v=DMARC1; rua=mailto:r@example.com",
                     "v=DMARC1; p=reject; sp=bogus; rua=mailto:r@example.com"):
            r = parse_record(text)
            self.assertEqual((r.p, r.error), ("none", ""), text)

    def test_invalid_p_without_rua_is_an_error(self):
        self.assertIn("invalid p=", parse_record("v=DMARC1; p=bogus").error)
        self.assertIn("no p=", parse_record("v=DMARC1; rua=not a uri").error)

    def test_bad_optional_tags_fall_back(self):
        r = parse_record("v=DMARC1; p=reject; pct=150; adkim=x; np=drop; t=maybe; psd=q; bogus")
        self.assertEqual((r.pct, r.adkim, r.np, r.t, r.psd, r.error), (100, "r", "", "n", "u", ""))


class EvaluateTest(unittest.TestCase):
    def test_aligned_spf_pass(self):
        r = check("example.com", {"_dmarc.example.com": [REJECT]}, spf=("pass", "example.com"))
        self.assertEqual((r.result, r.policy, r.published_policy, r.spf_aligned), ("pass", "none", "reject", True))

    def test_aligned_dkim_pass(self):
        r = check("example.com", {"_dmarc.example.com": [REJECT]}, dkim=[Dkim("fail", "example.com"),
                                                                     Dkim("pass", "example.com")])
        self.assertEqual((r.result, r.dkim_aligned_domain, r.spf_aligned), ("pass", "example.com", False))

    def test_unaligned_fails_with_policy(self):
        for record, policy in ((REJECT, "reject"), (QUARANTINE, "quarantine"), ("v=DMARC1; p=none", "none")):
            r = check("example.com", {"_dmarc.example.com": [record]}, spf=("pass", "evil.net"),
                      dkim=[Dkim("pass", "evil.net")])
            self.assertEqual((r.result, r.policy, r.published_policy), ("fail", policy, policy))

    def test_failed_spf_and_dkim_do_not_count(self):
        r = check("example.com", {"_dmarc.example.com": [REJECT]}, spf=("softfail", "example.com"),
                  dkim=[Dkim("fail", "example.com"), Dkim("neutral", "example.com")])
        self.assertEqual((r.result, r.policy), ("fail", "reject"))

    def test_relaxed_alignment_by_organizational_domain(self):
        zone = {"_dmarc.example.com": [REJECT]}
        r = check("news.example.com", zone, spf=("pass", "bounce.example.com"))
        self.assertEqual((r.result, r.spf_aligned), ("pass", True))
        r = check("example.com", zone, dkim=[Dkim("pass", "mail.Example.COM")])
        self.assertEqual((r.result, r.dkim_aligned_domain), ("pass", "mail.example.com"))

    def test_strict_alignment_needs_exact_match(self):
        zone = {"_dmarc.example.com": ["v=DMARC1; p=reject; aspf=s; adkim=s"]}
        r = check("example.com", zone, spf=("pass", "bounce.example.com"), dkim=[Dkim("pass", "mail.example.com")])
        self.assertEqual((r.result, r.policy), ("fail", "reject"))
        r = check("Example.COM", zone, dkim=[Dkim("pass", "example.com.")])
        self.assertEqual(r.result, "pass")

    def test_different_tld_never_aligns_and_costs_no_query(self):
        resolver = FakeResolver({"_dmarc.example.com": [REJECT], "_dmarc.example.net": [REJECT]})
        r = evaluate("example.com", "pass", "example.net", [], resolver)
        self.assertEqual(r.result, "fail")
        self.assertNotIn("_dmarc.example.net", resolver.asked)

    def test_subdomain_policy(self):
        zone = {"_dmarc.example.com": ["v=DMARC1; p=reject; sp=quarantine"], "www.example.com": []}
        r = check("www.example.com", zone)
        self.assertEqual((r.result, r.policy, r.published_policy, r.record_domain),
                         ("fail", "quarantine", "quarantine", "example.com"))
        self.assertEqual(check("example.com", zone).policy, "reject")  # sp is not for the domain itself

    def test_subdomain_without_sp_gets_p(self):
        r = check("a.b.example.com", {"_dmarc.example.com": [QUARANTINE], "a.b.example.com": []})
        self.assertEqual((r.policy, r.record_domain), ("quarantine", "example.com"))

    def test_np_for_a_non_existent_subdomain(self):
        zone = {"_dmarc.example.com": ["v=DMARC1; p=none; sp=quarantine; np=reject"],
                "example.com": [], "www.example.com": []}
        self.assertEqual(check("nosuch.example.com", zone).policy, "reject")
        self.assertEqual(check("www.example.com", zone).policy, "quarantine")
        self.assertEqual(check("example.com", zone).policy, "none")

    def test_np_existence_checked_by_a_aaaa_mx_when_the_resolver_has_them(self):
        class Full(FakeResolver):
            def a(self, name): return [] if name == "txtonly.example.com" else self.txt(name)
            def aaaa(self, name): return self.a(name)
            def mx(self, name): return self.a(name)
        zone = {"_dmarc.example.com": ["v=DMARC1; p=none; np=reject"], "txtonly.example.com": ["hello"],
                "www.example.com": ["something"]}
        # a name with only TXT is "non-existent" for np (NODATA for A, AAAA and MX)
        self.assertEqual(evaluate("txtonly.example.com", "none", "", [], Full(zone)).policy, "reject")
        self.assertEqual(evaluate("www.example.com", "none", "", [], Full(zone)).policy, "none")

    def test_pct_sampling(self):
        zone = {"_dmarc.example.com": ["v=DMARC1; p=reject; pct=50"]}
        self.assertEqual(check("example.com", zone, rand=lambda: 0.3).policy, "reject")
        self.assertEqual(check("example.com", zone, rand=lambda: 0.7).policy, "quarantine")
        zone = {"_dmarc.example.com": ["v=DMARC1; p=quarantine; pct=0"]}
        r = check("example.com", zone, rand=lambda: 0.0)
        self.assertEqual((r.result, r.policy, r.published_policy), ("fail", "none", "quarantine"))
        zone = {"_dmarc.example.com": ["v=DMARC1; p=reject; pct=100"]}
        self.assertEqual(check("example.com", zone, rand=lambda: 0.999).policy, "reject")

    def test_testing_mode_lowers_one_step(self):
        zone = {"_dmarc.example.com": ["v=DMARC1; p=reject; t=y"]}
        r = check("example.com", zone)
        self.assertEqual((r.result, r.policy, r.published_policy), ("fail", "quarantine", "reject"))

    def test_no_record_is_none(self):
        r = check("example.com", {"example.com": ["v=spf1 -all"]})
        self.assertEqual((r.result, r.policy, r.published_policy), ("none", "none", ""))

    def test_two_records_are_ignored(self):
        r = check("example.com", {"_dmarc.example.com": [REJECT, QUARANTINE]})
        self.assertEqual((r.result, r.policy), ("none", "none"))

    def test_two_records_then_the_walk_goes_on(self):
        zone = {"_dmarc.sub.example.com": [REJECT, QUARANTINE], "_dmarc.example.com": ["v=DMARC1; p=quarantine"]}
        r = check("sub.example.com", zone)
        self.assertEqual((r.result, r.policy, r.record_domain), ("fail", "quarantine", "example.com"))

    def test_other_txt_records_beside_the_dmarc_one(self):
        r = check("example.com", {"_dmarc.example.com": ["hello", REJECT]})
        self.assertEqual(r.policy, "reject")

    def test_invalid_record_is_permerror(self):
        r = check("example.com", {"_dmarc.example.com": ["v=DMARC1; p=bogus"]})
        self.assertEqual((r.result, r.policy), ("permerror", "none"))
        self.assertIn("p=bogus", r.reason)

    def test_temporary_dns_failure_is_temperror(self):
        r = check("example.com", {}, failing={"_dmarc.example.com"}, spf=("pass", "example.com"))
        self.assertEqual((r.result, r.policy), ("temperror", "none"))

    def test_temporary_failure_while_aligning(self):
        zone = {"_dmarc.example.com": [REJECT]}
        failing = {"_dmarc.mail.example.com"}
        r = check("example.com", zone, dkim=[Dkim("pass", "mail.example.com")], failing=failing)
        self.assertEqual((r.result, r.policy), ("temperror", "none"))
        # another identifier aligning makes the failure irrelevant
        r = check("example.com", zone, spf=("pass", "example.com"), dkim=[Dkim("pass", "mail.example.com")],
                  failing=failing)
        self.assertEqual(r.result, "pass")

    def test_bad_from_domain(self):
        for bad in ("", "exa mple.com", "a..b", "[192.0.2.1]", "x" * 300):
            self.assertEqual(check(bad, {}).result, "permerror", bad)

    def test_authres_entry(self):
        r = check("www.example.com", {"_dmarc.example.com": [REJECT], "www.example.com": []})
        self.assertEqual(r.authres(), ("dmarc", "fail", {"header.from": "www.example.com", "polrec.p": "reject",
                                                          "polrec.domain": "example.com"}, "dis=reject"))


class TreeWalkTest(unittest.TestCase):
    def test_finds_the_record_three_labels_up(self):
        resolver = FakeResolver({"_dmarc.example.com": [QUARANTINE]})
        r = evaluate("a.b.c.example.com", "none", "", [], resolver)
        self.assertEqual((r.result, r.policy, r.record_domain), ("fail", "quarantine", "example.com"))
        self.assertEqual(resolver.asked, ["_dmarc.a.b.c.example.com", "_dmarc.b.c.example.com",
                                          "_dmarc.c.example.com", "_dmarc.example.com"])

    def test_the_closest_record_wins(self):
        zone = {"_dmarc.b.example.com": [QUARANTINE], "_dmarc.example.com": [REJECT]}
        self.assertEqual(check("a.b.example.com", zone).record_domain, "b.example.com")

    def test_long_names_jump_to_seven_labels_and_ask_at_most_eight(self):
        resolver = FakeResolver({})
        name = "l1.l2.l3.l4.l5.l6.l7.l8.l9.l10.example.com"
        self.assertEqual(evaluate(name, "none", "", [], resolver).result, "none")
        self.assertEqual(len(resolver.asked), 8)
        self.assertEqual(resolver.asked[:2], [f"_dmarc.{name}", "_dmarc.l6.l7.l8.l9.l10.example.com"])
        self.assertEqual(resolver.asked[-1], "_dmarc.com")

    def test_organizational_domain_is_the_shortest_record(self):
        zone = {"_dmarc.b.example.com": [QUARANTINE], "_dmarc.example.com": [REJECT]}
        self.assertEqual(organizational_domain("a.b.example.com", FakeResolver(zone)), "example.com")
        self.assertEqual(organizational_domain("x.other.com", FakeResolver(zone)), "x.other.com")

    def test_psd_y_stops_the_walk_one_label_below(self):
        resolver = FakeResolver({"_dmarc.gov.example": ["v=DMARC1; p=reject; psd=y"],
                                 "_dmarc.example": ["v=DMARC1; p=none"]})
        self.assertEqual(organizational_domain("mail.agency.gov.example", resolver), "agency.gov.example")
        self.assertNotIn("_dmarc.example", resolver.asked)  # psd=y ended the walk

    def test_psd_y_keeps_sibling_agencies_apart(self):
        zone = {"_dmarc.gov.example": ["v=DMARC1; p=reject; psd=y"]}
        r = check("agency.gov.example", zone, spf=("pass", "other.gov.example"))
        self.assertEqual((r.result, r.policy, r.record_domain), ("fail", "reject", "gov.example"))
        r = check("agency.gov.example", zone, spf=("pass", "bounces.agency.gov.example"))
        self.assertEqual(r.result, "pass")

    def test_psd_n_marks_the_organizational_domain(self):
        zone = {"_dmarc.dept.example.com": ["v=DMARC1; p=reject; psd=n"], "_dmarc.example.com": [REJECT]}
        self.assertEqual(organizational_domain("x.dept.example.com", FakeResolver(zone)), "dept.example.com")
        r = check("dept.example.com", zone, spf=("pass", "example.com"))
        self.assertEqual(r.result, "fail")  # example.com is another organisation now

    def test_psd_y_at_the_start_is_its_own_organization(self):
        zone = {"_dmarc.gov.example": ["v=DMARC1; p=reject; psd=y"]}
        self.assertEqual(organizational_domain("gov.example", FakeResolver(zone)), "gov.example")


class FromFieldTest(unittest.TestCase):
    def test_simple_and_display_names(self):
        self.assertEqual(from_domains(b"From: alice@Example.COM\r\n\r\n"), ["example.com"])
        self.assertEqual(from_domains(b'From: "ceo@bank.example" <x@evil.example>\r\n'), ["evil.example"])
        self.assertEqual(from_domains(b"From: Joe Q. Public <joe@example.com>\r\n"), ["example.com"])

    def test_encoded_word_display_name(self):
        self.assertEqual(from_domains(b"From: =?utf-8?q?ceo@bank.example?= <x@evil.example>\r\n"), ["evil.example"])
        self.assertEqual(from_domains(b"From: =?utf-8?b?QsO2Yg==?= <bob@example.com>\r\n"), ["example.com"])

    def test_groups_and_lists(self):
        self.assertEqual(from_fields(b"From: team: a@x.example, b@y.example;, c@z.example\r\n"),
                         [["x.example", "y.example", "z.example"]])
        self.assertEqual(from_fields(b"From: undisclosed-recipients:;\r\n"), [[]])
        self.assertEqual(from_domains(b"From: a@x.example, \"B\" <b@x.example>\r\n"), ["x.example"])

    def test_comments_routes_and_obsolete_syntax(self):
        self.assertEqual(from_domains(b"From: Joe (a (nested @bad.example) comment) <joe@example.com>\r\n"),
                         ["example.com"])
        self.assertEqual(from_domains(b"From: <@relay.example,@r2.example:u@real.example>\r\n"), ["real.example"])
        self.assertEqual(from_domains(b"From : joe@example . com (obs-domain)\r\n"), ["example.com"])
        self.assertEqual(from_domains(b'From: "quoted@local"@example.com\r\n'), ["example.com"])

    def test_folded_and_several_fields(self):
        block = b"From: a@b.example,\r\n\tc@d.example\r\nSubject: x\r\nFROM: e@f.example\r\n\r\nFrom: body@x.example\r\n"
        self.assertEqual(from_fields(block), [["b.example", "d.example"], ["f.example"]])

    def test_unreadable_addresses(self):
        self.assertEqual(from_fields(b"Subject: no from\r\n"), [])
        self.assertEqual(from_domains(b"From: root\r\n"), [""])
        self.assertEqual(from_domains(b"From: joe@exa mple.com\r\n"), [""])
        self.assertEqual(from_domains(b'From: "unterminated <x@y.example>\r\n'), [""])
        self.assertEqual(from_domains(b"From: a@[192.0.2.1]\r\n"), ["[192.0.2.1]"])

    def test_the_shortcut_for_one_plain_address_agrees_with_the_tokenizer(self):
        """One "Name <user@domain>" or bare address is read without the tokenizer: on
        20,000 random values the answer is the tokenizer's, wherever the shortcut applies."""
        rnd = random.Random(7489)
        parts = ["a", "b.c", "@", "<", ">", " ", '"', "(", ")", ",", ".", "Jo", "\u00e9", "\t", "[",
                 "]", "\\", ":", ";", "x@y.z", "<u@d.example>", "EXAMPLE.TEST", "+tag", "=?", "?=", ".."]
        shortcut = 0
        for _ in range(20000):
            value = "".join(rnd.choice(parts) for _ in range(rnd.randint(0, 8)))
            fast = fromaddr._simple(value)
            if fast is not None:
                shortcut += 1
                slow = [fromaddr._domain(a) for a in fromaddr._addresses(fromaddr._tokens(value))]
                self.assertEqual(fast, slow, repr(value))
        self.assertGreater(shortcut, 300)
        self.assertEqual(fromaddr._simple("Joe Q. Public <joe@Example.COM>"), ["example.com"])
        self.assertIsNone(fromaddr._simple('"ceo@bank.example" <x@evil.example>'))
        # an encoded word is a display name even where it looks like a bare address
        self.assertEqual(from_fields(b"From: =?utf-8?q?ceo@bank.example?=\r\n"), [[""]])

    def test_the_signing_domain_is_the_domain_dmarc_reads(self):
        """DKIM signs with the key of the first From: domain as DMARC sees it, so the two
        never disagree on a display name dressed up as an address."""
        for header, want in ((b'From: "me@local.test" <x@other.test>\r\n', "other.test"),
                             (b"From: =?utf-8?q?a@local.test?= <x@other.test>\r\n", "other.test"),
                             (b"From: Me <me@Local.TEST>\r\n", "local.test"),
                             (b"From: me@local.test (Me)\r\n", "local.test"),
                             (b"From: team: me@local.test;\r\n", "local.test"),
                             (b"Subject: none\r\n", "")):
            with self.subTest(header=header):
                message = header + b"\r\nFrom: body@body.test\r\n"
                self.assertEqual(signing.from_domain(message), want)
                self.assertEqual(from_domains(message)[:1], [want] if want else [])

    def test_hostile_input_is_linear(self):
        for junk in (b'"' * 1_000_000, b"(" * 1_000_000, b"<" * 1_000_000, b"\\" * 1_000_000,
                     b"@." * 500_000, b"[" * 1_000_000, b"=?" * 500_000, b"a@b.c," * 170_000,
                     b"\xff\xfe" * 500_000, b"\r\n " * 300_000):
            start = time.monotonic()
            from_fields(b"From: " + junk + b"\r\n")
            self.assertLess(time.monotonic() - start, 5.0, junk[:8])


class MessageTest(unittest.TestCase):
    ZONE = {"_dmarc.example.com": [REJECT], "_dmarc.example.org": ["v=DMARC1; p=quarantine"]}

    def run_on(self, block: bytes, spf=("none", ""), dkim=()) -> dmarc.DmarcResult:
        return evaluate_message(block, spf[0], spf[1], list(dkim), FakeResolver(self.ZONE))

    def test_one_from(self):
        r = self.run_on(b"From: Alice <alice@example.com>\r\n", dkim=[Dkim("pass", "example.com")])
        self.assertEqual((r.result, r.from_domain), ("pass", "example.com"))

    def test_no_from_or_no_address_is_permerror(self):
        self.assertEqual(self.run_on(b"Subject: x\r\n").result, "permerror")
        self.assertEqual(self.run_on(b"From: undisclosed-recipients:;\r\n").result, "permerror")
        self.assertEqual(self.run_on(b"From: root\r\n").result, "permerror")

    def test_second_from_cannot_hide_the_first(self):
        block = b"From: ceo@example.com\r\nFrom: me@attacker.example\r\n"
        r = self.run_on(block, spf=("pass", "attacker.example"))
        self.assertEqual((r.result, r.policy, r.from_domain), ("fail", "reject", "example.com"))
        self.assertIn("2 From fields", r.reason)

    def test_several_domains_strictest_wins(self):
        block = b"From: a@example.org, b@example.com\r\n"
        r = self.run_on(block)
        self.assertEqual((r.result, r.policy), ("fail", "reject"))
        r = self.run_on(block, dkim=[Dkim("pass", "example.com"), Dkim("pass", "example.org")])
        self.assertEqual(r.result, "pass")

    def test_too_many_domains(self):
        block = b"From: " + b", ".join(b"a@d%d.example" % i for i in range(dmarc.MAX_AUTHOR_DOMAINS + 1)) + b"\r\n"
        self.assertEqual(self.run_on(block).result, "permerror")


class RealResolverTest(unittest.TestCase):
    """The same walk through ismail.queue.dns.Resolver and dnsmasq (skipped without it)."""

    def setUp(self):
        program = require_program(self, "dnsmasq", "/usr/sbin/dnsmasq")
        server = Dnsmasq(program, [
            "--txt-record=_dmarc.example.test,v=DMARC1; p=reject; sp=quarantine; np=reject",
            "--host-record=example.test,192.0.2.1", "--host-record=www.example.test,192.0.2.2",
            "--host-record=probe.test,127.0.0.9"], probe="probe.test")
        self.addCleanup(server.stop)
        self.resolver = Resolver([("127.0.0.1", server.port)], timeout=1.0, attempts=2)

    def test_walk_alignment_and_np(self):
        r = evaluate("a.b.example.test", "pass", "bounces.example.test", [], self.resolver)
        self.assertEqual((r.result, r.record_domain, r.spf_aligned), ("pass", "example.test", True))
        self.assertEqual(evaluate("www.example.test", "none", "", [], self.resolver).policy, "quarantine")
        self.assertEqual(evaluate("nosuch.example.test", "none", "", [], self.resolver).policy, "reject")
        self.assertEqual(evaluate("example.test", "none", "", [], self.resolver).policy, "reject")
        self.assertEqual(evaluate("other.test", "none", "", [], self.resolver).result, "none")


if __name__ == "__main__":
    unittest.main()
