"""SPF check_host (ismail.mailauth.spf): each mechanism, modifier, macro, limit and result,
against a small in-process zone.  The RFC 7208 test suite runs in test_spf_suite.py."""
from __future__ import annotations

import ipaddress
import unittest

from ismail.mailauth import spf_macro
from ismail.mailauth.spf import SpfResult, check_host, check_mail_from
from ismail.queue.dns import DNSError, DNSTemporaryError, MXRecord, NXDomain

MAX_CNAME_HOPS = 8  # as ismail.queue.dns: a longer chain (or a loop) is a temporary error


class FakeDNS:
    """The resolver's interface over a dict zone: {name: [(type, value), ...]}.

    Types: A, AAAA, TXT (a str), MX ((preference, host)), PTR (a name), CNAME (a name), and
    ("TIMEOUT", None): queries for a type with no record listed before it time out (the RFC
    7208 test suite's meaning).  A value "TIMEOUT" makes that type's queries time out.  A name
    not in the zone is NXDOMAIN; a listed name without the type is NODATA ([]).
    ``queries`` records every (type, name) asked, to count look-ups.
    """

    def __init__(self, zone: dict[str, list[tuple[str, object]]]):
        self.zone = {name.lower().rstrip("."): list(records) for name, records in zone.items()}
        self.queries: list[tuple[str, str]] = []

    def a(self, name: str) -> list[str]:
        return self._lookup(name, "A")

    def aaaa(self, name: str) -> list[str]:
        return self._lookup(name, "AAAA")

    def txt(self, name: str) -> list[str]:
        return self._lookup(name, "TXT")

    def mx(self, name: str) -> list[MXRecord]:
        return [MXRecord(pref, host.lower().rstrip(".")) for pref, host in self._lookup(name, "MX")]

    def ptr(self, ip: str) -> list[str]:
        return [n.rstrip(".") for n in self._lookup(ipaddress.ip_address(ip).reverse_pointer, "PTR")]

    def _lookup(self, name: str, rtype: str) -> list:
        self.queries.append((rtype, name))
        current = name.lower().rstrip(".")
        for _ in range(MAX_CNAME_HOPS + 1):
            if not current or any(not 0 < len(label) <= 63 for label in current.split(".")):
                raise DNSError(f"invalid name {current!r}")
            if current not in self.zone:
                raise NXDomain(current)
            found, alias = [], None
            for rt, value in self.zone[current]:
                if rt == "TIMEOUT":
                    if not found:
                        raise DNSTemporaryError(f"{current}: time-out")
                    break
                if rt == rtype:
                    if value == "TIMEOUT":
                        raise DNSTemporaryError(f"{current} {rtype}: time-out")
                    found.append(value)
                elif rt == "CNAME":
                    alias = str(value).lower().rstrip(".")
            if found or alias is None:
                return found
            current = alias
        raise DNSTemporaryError(f"CNAME chain of {name} too long (or a loop)")


def spf(zone: dict, ip: str, sender: str, helo: str = "mail.example.org", **options) -> SpfResult:
    """check_mail_from against zone, where each name maps to a TXT string or a record list."""
    records = {name: ([("TXT", value)] if isinstance(value, str) else value) for name, value in zone.items()}
    return check_mail_from(ip, sender, helo, FakeDNS(records), **options)


class ResultsTest(unittest.TestCase):
    def test_each_qualifier_gives_its_result(self):
        for record, result in (("v=spf1 +all", "pass"), ("v=spf1 all", "pass"), ("v=spf1 -all", "fail"),
                               ("v=spf1 ~all", "softfail"), ("v=spf1 ?all", "neutral")):
            with self.subTest(record=record):
                got = spf({"example.com": record}, "192.0.2.1", "a@example.com")
                self.assertEqual(result, got.result)
                self.assertEqual("example.com", got.domain)

    def test_nothing_matching_is_neutral(self):
        got = spf({"example.com": "v=spf1 ip4:198.51.100.1"}, "192.0.2.1", "a@example.com")
        self.assertEqual("neutral", got.result)

    def test_no_record_no_domain_and_other_txt_are_none(self):
        self.assertEqual("none", spf({"example.com": "hello"}, "192.0.2.1", "a@example.com").result)
        self.assertEqual("none", spf({}, "192.0.2.1", "a@example.com").result)
        self.assertEqual("none", spf({"example.com": [("A", "192.0.2.1")]}, "192.0.2.1", "a@example.com").result)

    def test_dns_timeout_is_temperror(self):
        got = spf({"example.com": [("TIMEOUT", None)]}, "192.0.2.1", "a@example.com")
        self.assertEqual("temperror", got.result)
        self.assertIn("example.com", got.reason)

    def test_reason_names_the_matching_term(self):
        got = spf({"example.com": "v=spf1 ip4:192.0.2.0/24 -all"}, "192.0.2.1", "a@example.com")
        self.assertEqual(("pass", "ip4:192.0.2.0/24 matched in example.com"), (got.result, got.reason))

    def test_explanation_only_on_fail(self):
        got = spf({"example.com": "v=spf1 ~all"}, "192.0.2.1", "a@example.com")
        self.assertEqual("", got.explanation)
        got = spf({"example.com": "v=spf1 -all"}, "192.0.2.1", "a@example.com")
        self.assertEqual("example.com does not allow 192.0.2.1 to send its mail (SPF)", got.explanation)


class RecordSelectionTest(unittest.TestCase):
    def test_version_is_case_insensitive_and_exact(self):
        self.assertEqual("fail", spf({"example.com": "V=SpF1 -all"}, "192.0.2.1", "a@example.com").result)
        for text in ("v=spf10 -all", "v=spf1-all", "v=spf2 -all", "spf1 -all"):
            with self.subTest(text=text):
                self.assertEqual("none", spf({"example.com": text}, "192.0.2.1", "a@example.com").result)

    def test_two_spf_records_are_permerror_other_txt_ignored(self):
        zone = {"example.com": [("TXT", "v=spf1 -all"), ("TXT", "v=spf1 +all")]}
        self.assertEqual("permerror", spf(zone, "192.0.2.1", "a@example.com").result)
        zone = {"example.com": [("TXT", "google-site-verification=x"), ("TXT", "v=spf1 -all")]}
        self.assertEqual("fail", spf(zone, "192.0.2.1", "a@example.com").result)

    def test_syntax_error_anywhere_is_permerror(self):
        for text in ("v=spf1 ip4:192.0.2.1 -all moo", "v=spf1 ip4:192.0.2.1 ip4:1.2.3", "v=spf1 -all.",
                     "v=spf1 a:foo.example.com/33", "v=spf1 exp=x.example.com exp=y.example.com -all",
                     "v=spf1 +all a:%{x}.example.com", "v=spf1 +all\tmx", "v=spf1 +all a:%{d0}.example.com",
                     "v=spf1 +all ip6:fe80::1%eth0"):
            with self.subTest(text=text):
                got = spf({"example.com": text}, "192.0.2.1", "a@example.com")
                self.assertEqual("permerror", got.result)
                self.assertIn("example.com", got.reason)

    def test_unknown_modifiers_are_ignored(self):
        got = spf({"example.com": "v=spf1 foo=bar moo.cow-far_out=%{d} -all"}, "192.0.2.1", "a@example.com")
        self.assertEqual("fail", got.result)


class MechanismsTest(unittest.TestCase):
    def test_ip4_ip6_and_mapped_addresses(self):
        zone = {"example.com": "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"}
        self.assertEqual("pass", spf(zone, "192.0.2.200", "a@example.com").result)
        self.assertEqual("pass", spf(zone, "::ffff:192.0.2.200", "a@example.com").result)
        self.assertEqual("pass", spf(zone, "2001:db8:5::1", "a@example.com").result)
        self.assertEqual("fail", spf(zone, "198.51.100.1", "a@example.com").result)
        # An IPv4-mapped client is IPv4 only: ip6 never matches it (§5).
        zone = {"example.com": "v=spf1 ip6:::ffff:0:0/96 -all"}
        self.assertEqual("fail", spf(zone, "::ffff:192.0.2.1", "a@example.com").result)

    def test_a_with_default_and_dual_cidr(self):
        zone = {"example.com": [("TXT", "v=spf1 a/24//64 -all"), ("A", "192.0.2.10"), ("AAAA", "2001:db8::1")],
                "other.example": [("TXT", "v=spf1 a:example.com -all")]}
        self.assertEqual("pass", spf(zone, "192.0.2.99", "a@example.com").result)
        self.assertEqual("pass", spf(zone, "2001:db8::ffff", "a@example.com").result)
        self.assertEqual("fail", spf(zone, "2001:db8:1::1", "a@example.com").result)
        self.assertEqual("pass", spf(zone, "192.0.2.10", "a@other.example").result)
        self.assertEqual("fail", spf(zone, "192.0.2.11", "a@other.example").result)

    def test_mx_by_preference_and_null_mx(self):
        zone = {"example.com": [("TXT", "v=spf1 mx -all"), ("MX", (20, "mx2.example.com")),
                                ("MX", (10, "mx1.example.com"))],
                "mx1.example.com": [("A", "192.0.2.1")], "mx2.example.com": [("A", "192.0.2.2")],
                "null.example.com": [("TXT", "v=spf1 mx ~all"), ("MX", (0, ""))]}
        self.assertEqual("pass", spf(zone, "192.0.2.2", "a@example.com").result)
        self.assertEqual("fail", spf(zone, "192.0.2.3", "a@example.com").result)
        self.assertEqual("softfail", spf(zone, "192.0.2.3", "a@null.example.com").result)

    def test_mx_never_falls_back_to_a(self):
        zone = {"example.com": [("TXT", "v=spf1 mx -all"), ("A", "192.0.2.1")]}
        self.assertEqual("fail", spf(zone, "192.0.2.1", "a@example.com").result)

    def test_more_than_ten_mx_is_permerror(self):
        zone = {"example.com": [("TXT", "v=spf1 mx -all")] + [("MX", (i, f"mx{i}.example.com")) for i in range(11)]}
        self.assertEqual("permerror", spf(zone, "192.0.2.1", "a@example.com").result)

    def test_ptr_needs_a_validated_name_under_the_target(self):
        zone = {"example.com": "v=spf1 ptr -all",
                "1.2.0.192.in-addr.arpa": [("PTR", "mail.example.com"), ("PTR", "fake.example.com")],
                "2.2.0.192.in-addr.arpa": [("PTR", "fake.example.com")],
                "mail.example.com": [("A", "192.0.2.1")], "fake.example.com": [("A", "198.51.100.1")]}
        self.assertEqual("pass", spf(zone, "192.0.2.1", "a@example.com").result)
        self.assertEqual("fail", spf(zone, "192.0.2.2", "a@example.com").result)
        self.assertEqual("fail", spf(zone, "192.0.2.3", "a@example.com").result)  # no PTR at all

    def test_ptr_uses_only_the_first_ten_names(self):
        names = [("PTR", f"h{i}.other.example") for i in range(10)] + [("PTR", "mail.example.com")]
        zone = {"example.com": "v=spf1 ptr -all", "1.2.0.192.in-addr.arpa": names,
                "mail.example.com": [("A", "192.0.2.1")]}
        self.assertEqual("fail", spf(zone, "192.0.2.1", "a@example.com").result)

    def test_ptr_dns_trouble_is_no_match(self):
        zone = {"example.com": "v=spf1 ptr -all", "1.2.0.192.in-addr.arpa": [("TIMEOUT", None)]}
        self.assertEqual("fail", spf(zone, "192.0.2.1", "a@example.com").result)
        zone = {"example.com": "v=spf1 ptr -all", "1.2.0.192.in-addr.arpa": [("PTR", "mail.example.com")],
                "mail.example.com": [("TIMEOUT", None)]}
        self.assertEqual("fail", spf(zone, "192.0.2.1", "a@example.com").result)

    def test_exists_asks_for_a_even_for_ipv6(self):
        zone = {"example.com": "v=spf1 exists:%{l}.allow.example.com -all",
                "bob.allow.example.com": [("A", "127.0.0.2")]}
        self.assertEqual("pass", spf(zone, "2001:db8::1", "bob@example.com").result)
        self.assertEqual("fail", spf(zone, "2001:db8::1", "eve@example.com").result)

    def test_include_results(self):
        zone = {"example.com": "v=spf1 include:inc.example.net -all",
                "inc.example.net": "v=spf1 ip4:192.0.2.1 ~all",
                "none.example.com": "v=spf1 include:nothing.example.net -all",
                "nothing.example.net": [("A", "192.0.2.1")],
                "temp.example.com": "v=spf1 include:slow.example.net -all",
                "slow.example.net": [("TIMEOUT", None)]}
        self.assertEqual("pass", spf(zone, "192.0.2.1", "a@example.com").result)
        self.assertEqual("fail", spf(zone, "192.0.2.2", "a@example.com").result)  # inner softfail: no match
        self.assertEqual("permerror", spf(zone, "192.0.2.1", "a@none.example.com").result)
        self.assertEqual("temperror", spf(zone, "192.0.2.1", "a@temp.example.com").result)

    def test_names_dns_cannot_carry_match_nothing(self):
        zone = {"example.com": "v=spf1 a:%{l}.example.com ?all"}
        self.assertEqual("neutral", spf(zone, "192.0.2.1", "x" * 70 + "@example.com").result)

    def test_cname_is_followed(self):
        zone = {"example.com": "v=spf1 include:alias.example.com -all",
                "alias.example.com": [("CNAME", "real.example.net")], "real.example.net": "v=spf1 +all"}
        self.assertEqual("pass", spf(zone, "192.0.2.1", "a@example.com").result)


class ModifiersTest(unittest.TestCase):
    def test_redirect_changes_the_domain(self):
        zone = {"example.com": [("TXT", "v=spf1 redirect=_spf.example.net"), ("A", "192.0.2.1")],
                "_spf.example.net": [("TXT", "v=spf1 a -all"), ("A", "192.0.2.2")]}
        self.assertEqual("pass", spf(zone, "192.0.2.2", "a@example.com").result)
        got = spf(zone, "192.0.2.1", "a@example.com")
        self.assertEqual(("fail", "example.com"), (got.result, got.domain))

    def test_redirect_is_ignored_with_all_and_needs_a_record(self):
        zone = {"example.com": "v=spf1 ?all redirect=_spf.example.net", "_spf.example.net": "v=spf1 -all",
                "bad.example.com": "v=spf1 redirect=missing.example.net"}
        self.assertEqual("neutral", spf(zone, "192.0.2.1", "a@example.com").result)
        self.assertEqual("permerror", spf(zone, "192.0.2.1", "a@bad.example.com").result)

    def test_exp_is_expanded_and_used_only_from_the_deciding_record(self):
        zone = {"example.com": "v=spf1 -all exp=why.example.com",
                "why.example.com": "%{l} may not send from %{c} for %{o}",
                "outer.example.com": "v=spf1 exp=why.example.com redirect=plain.example.com",
                "plain.example.com": "v=spf1 -all"}
        got = spf(zone, "192.0.2.1", "bob@example.com")
        self.assertEqual("bob may not send from 192.0.2.1 for example.com", got.explanation)
        got = spf(zone, "192.0.2.1", "bob@outer.example.com", default_explanation="DEFAULT")
        self.assertEqual(("fail", "DEFAULT"), (got.result, got.explanation))

    def test_broken_exp_falls_back_to_the_default(self):
        for why in ([("TXT", "a"), ("TXT", "b")], [("TIMEOUT", None)], [("TXT", "%{x}")], [("TXT", "caf\xe9")],
                    [("A", "192.0.2.1")]):
            with self.subTest(why=why):
                zone = {"example.com": "v=spf1 -all exp=why.example.com", "why.example.com": why}
                got = spf(zone, "192.0.2.1", "bob@example.com", default_explanation="DEFAULT")
                self.assertEqual(("fail", "DEFAULT"), (got.result, got.explanation))

    def test_exp_lookup_is_not_a_void_lookup(self):
        zone = {"example.com": "v=spf1 a:n1.example.com a:n2.example.com -all exp=n3.example.com"}
        self.assertEqual("fail", spf(zone, "192.0.2.1", "bob@example.com").result)


class MacroTest(unittest.TestCase):
    def ctx(self, ip="192.0.2.3", sender="strong-bad@email.example.com"):
        return spf_macro.MacroContext(sender=sender, ip=ipaddress.ip_address(ip), helo="mx.example.org",
                                      receiver="rx.example.net", timestamp=1234,
                                      validated_names=lambda: ["mx.example.org"])

    def test_rfc_7208_section_7_4_examples(self):
        ctx, d = self.ctx(), "email.example.com"
        for spec, want in (("%{s}", "strong-bad@email.example.com"), ("%{o}", "email.example.com"),
                           ("%{d}", "email.example.com"), ("%{d4}", "email.example.com"),
                           ("%{d3}", "email.example.com"), ("%{d2}", "example.com"), ("%{d1}", "com"),
                           ("%{dr}", "com.example.email"), ("%{d2r}", "example.email"), ("%{l}", "strong-bad"),
                           ("%{l-}", "strong.bad"), ("%{lr}", "strong-bad"), ("%{lr-}", "bad.strong"),
                           ("%{l1r-}", "strong"), ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
                           ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
                           ("%{p}", "mx.example.org"), ("%{p2}", "example.org"), ("%{h}", "mx.example.org"),
                           ("%%%_%-", "% %20")):
            with self.subTest(spec=spec):
                self.assertEqual(want, spf_macro.expand(spec, ctx, d))

    def test_ipv6_i_and_c(self):
        ctx = self.ctx(ip="2001:db8::cb01")
        self.assertEqual("1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6",
                         spf_macro.expand("%{ir}.%{v}", ctx, "example.com"))
        self.assertEqual("2001:db8::cb01", spf_macro.expand("%{c}", ctx, "example.com", explanation=True))

    def test_upper_case_is_url_escaped(self):
        ctx = self.ctx(sender="~jack&jill=up-a_b3.c@example.com")
        self.assertEqual("~jack%26jill%3Dup-a_b3.c", spf_macro.expand("%{L}", ctx, "example.com"))

    def test_c_r_t_only_in_explanations(self):
        ctx = self.ctx()
        self.assertEqual("192.0.2.3 rx.example.net 1234",
                         spf_macro.expand("%{c} %{r} %{t}", ctx, "d.example", explanation=True))
        for letter in "crt":
            with self.assertRaises(spf_macro.MacroError):
                spf_macro.expand("%{" + letter + "}.example.com", ctx, "d.example")

    def test_bad_macros(self):
        for text in ("%", "%x", "%{", "%{a}", "%{d0}", "%(d)", "%{d", "foo%.bar"):
            with self.subTest(text=text), self.assertRaises(spf_macro.MacroError):
                spf_macro.check(text)

    def test_multiple_delimiters_and_long_names(self):
        ctx = self.ctx(sender="foo-bar+zip+quux@example.com")
        self.assertEqual("bar.foo", spf_macro.expand("%{l2r+-}", ctx, "example.com"))
        long = ".".join(["a" * 60] * 4) + ".example.com."  # 255 characters without the dot
        self.assertEqual(".".join(["a" * 60] * 3) + ".example.com", spf_macro.query_name(long))

    def test_p_prefers_the_domain_then_a_subdomain(self):
        ctx = spf_macro.MacroContext(sender="a@example.com", ip=ipaddress.ip_address("192.0.2.1"),
                                     validated_names=lambda: ["mx.other.net", "mx.example.com"])
        self.assertEqual("mx.example.com", spf_macro.expand("%{p}", ctx, "example.com"))
        ctx = spf_macro.MacroContext(sender="a@example.com", ip=ipaddress.ip_address("192.0.2.1"))
        self.assertEqual("unknown", spf_macro.expand("%{p}", ctx, "example.com"))

    def test_macros_in_a_record(self):
        zone = {"example.com": "v=spf1 exists:%{ir}.%{l1r-}.bl.%{d} -all",
                "1.2.0.192.alice.bl.example.com": [("A", "127.0.0.2")]}
        self.assertEqual("pass", spf(zone, "192.0.2.1", "alice-bob@example.com").result)
        self.assertEqual("fail", spf(zone, "192.0.2.1", "bob-alice@example.com").result)

    def test_p_macro_in_a_record(self):
        zone = {"example.com": "v=spf1 exists:%{p}.ok.example.com -all",
                "1.2.0.192.in-addr.arpa": [("PTR", "mx.example.com")], "mx.example.com": [("A", "192.0.2.1")],
                "mx.example.com.ok.example.com": [("A", "127.0.0.2")]}
        self.assertEqual("pass", spf(zone, "192.0.2.1", "a@example.com").result)
        self.assertEqual("fail", spf(zone, "192.0.2.9", "a@example.com").result)  # unknown.ok.example.com


class LimitsTest(unittest.TestCase):
    def test_ten_lookups_pass_eleven_are_permerror(self):
        zone = {f"n{i}.example.com": [("A", "198.51.100.1")] for i in range(11)}
        zone["ten.example.com"] = "v=spf1 " + " ".join(f"a:n{i}.example.com" for i in range(10)) + " +all"
        zone["eleven.example.com"] = "v=spf1 " + " ".join(f"a:n{i}.example.com" for i in range(11)) + " +all"
        self.assertEqual("pass", spf(zone, "192.0.2.1", "a@ten.example.com").result)
        got = spf(zone, "192.0.2.1", "a@eleven.example.com")
        self.assertEqual("permerror", got.result)
        self.assertIn("look-ups", got.reason)

    def test_lookups_count_through_includes_and_redirects(self):
        zone = {"loop.example.com": "v=spf1 include:loop.example.com -all",
                "redir.example.com": "v=spf1 redirect=redir.example.com"}
        self.assertEqual("permerror", spf(zone, "192.0.2.1", "a@loop.example.com").result)
        self.assertEqual("permerror", spf(zone, "192.0.2.1", "a@redir.example.com").result)

    def test_limits_are_parameters(self):
        dns = FakeDNS({"example.com": [("TXT", "v=spf1 a a a +all"), ("A", "198.51.100.1")]})
        self.assertEqual("pass", check_host("192.0.2.1", "example.com", "a@example.com", dns).result)
        self.assertEqual("permerror", check_host("192.0.2.1", "example.com", "a@example.com", dns,
                                                 max_lookups=2).result)
        dns = FakeDNS({"example.com": [("TXT", "v=spf1 a a +all")]})
        self.assertEqual("pass", check_host("192.0.2.1", "example.com", "a@example.com", dns).result)
        self.assertEqual("permerror", check_host("192.0.2.1", "example.com", "a@example.com", dns,
                                                 max_void=1).result)

    def test_two_void_lookups_pass_three_are_permerror(self):
        zone = {"two.example.com": "v=spf1 a:x1.example.com mx:x2.example.com ?all",
                "three.example.com": "v=spf1 a:x1.example.com mx:x2.example.com exists:x3.example.com ?all",
                "x2.example.com": [("A", "192.0.2.9")]}  # exists, but no MX: NODATA is void too
        self.assertEqual("neutral", spf(zone, "192.0.2.1", "a@two.example.com").result)
        got = spf(zone, "192.0.2.1", "a@three.example.com")
        self.assertEqual("permerror", got.result)
        self.assertIn("void", got.reason)

    def test_void_lookups_count_once_per_term(self):
        # The address look-ups of MX hosts are not terms of the record (pyspf counts them).
        zone = {"example.com": [("TXT", "v=spf1 mx ?all")] + [("MX", (i, f"gone{i}.example.com")) for i in range(3)]}
        self.assertEqual("neutral", spf(zone, "192.0.2.1", "a@example.com").result)

    def test_an_ignored_redirect_costs_no_lookup(self):
        names = " ".join(f"a:n{i}.example.com" for i in range(10))
        zone = {f"n{i}.example.com": [("A", "198.51.100.1")] for i in range(10)}
        zone["example.com"] = f"v=spf1 {names} ip4:192.0.2.1 redirect=other.example.com -all"
        self.assertEqual("pass", spf(zone, "192.0.2.1", "a@example.com").result)

    def test_time_limit_is_temperror(self):
        dns = FakeDNS({"example.com": [("TXT", "v=spf1 -all")]})
        got = check_host("192.0.2.1", "example.com", "a@example.com", dns, timeout=-1)
        self.assertEqual("temperror", got.result)
        self.assertIn("time limit", got.reason)


class IdentityTest(unittest.TestCase):
    ZONE = {"example.com": "v=spf1 -all exp=why.example.com", "why.example.com": "%{s}",
            "helo.example.net": "v=spf1 ip4:192.0.2.1 -all exp=why.example.com"}

    def test_null_sender_checks_the_helo_name(self):
        got = spf(self.ZONE, "192.0.2.1", "", helo="helo.example.net")
        self.assertEqual(("pass", "helo.example.net"), (got.result, got.domain))
        got = spf(self.ZONE, "192.0.2.2", "<>", helo="helo.example.net")
        self.assertEqual(("fail", "postmaster@helo.example.net"), (got.result, got.explanation))

    def test_explanation_is_plain_ascii(self):
        got = spf(self.ZONE, "192.0.2.1", "j\xf6rg@example.com")
        self.assertEqual("j?rg@example.com", got.explanation)

    def test_no_local_part_is_postmaster(self):
        got = spf(self.ZONE, "192.0.2.1", "@example.com")
        self.assertEqual("postmaster@example.com", got.explanation)

    def test_invalid_domains_are_none(self):
        for sender, helo in (("a@localhost", "x.example"), ("a@[192.0.2.1]", "x.example"), ("", "OEMCOMPUTER"),
                             ("", "[192.0.2.1]"), ("a@" + "x" * 64 + ".example.com", "x.example"),
                             ("a@a..example.com", "x.example"), ("a@192.0.2.1", "x.example"), ("", "")):
            with self.subTest(sender=sender, helo=helo):
                self.assertEqual("none", spf(self.ZONE, "192.0.2.1", sender, helo=helo).result)

    def test_check_host_takes_domain_and_sender_apart(self):
        dns = FakeDNS({"example.com": [("TXT", "v=spf1 exists:%{l}.%{o}.ok.%{d} -all")],
                       "bob.sender.example.ok.example.com": [("A", "127.0.0.2")]})
        got = check_host("192.0.2.1", "example.com", "bob@sender.example", dns, helo="h.example")
        self.assertEqual(("pass", "example.com"), (got.result, got.domain))

    def test_bad_client_address_is_a_caller_error(self):
        with self.assertRaises(ValueError):
            check_host("not-an-ip", "example.com", "a@example.com", FakeDNS({}))


if __name__ == "__main__":
    unittest.main()
