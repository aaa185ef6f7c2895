"""The DNS records assistant (ismail/mailauth/records.py, spf_syntax.py) and the resolver's TXT
and PTR look-ups (ismail/queue/dns.py), against a real DNS server: dnsmasq on a loopback port
answers only .test names and the reverse zones of 192.0.2.0/24 and 2001:db8::/32 from the
records each test gives it.  Every check is asserted by the words of its problem."""
from __future__ import annotations

import random
import re
import socket
import unittest

from ismail.mailauth import dkim, rsa
from ismail.mailauth.records import Record, check, records_for, zone_lines
from ismail.mailauth.spf_syntax import MAX_LOOKUPS, parse
from ismail.queue.dns import DNSError, NXDomain, Resolver
from tests.support import Dnsmasq, require_program

DOMAIN, SERVER, IP, IP6 = "example.test", "mx.example.test", "192.0.2.7", "2001:db8::7"
REVERSE6 = "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
# dnsmasq answers these itself (NXDOMAIN for what it lacks) instead of refusing them.
ZONES = ["--local=/2.0.192.in-addr.arpa/", "--local=/8.b.d.0.1.0.0.2.ip6.arpa/",
         "--host-record=probe.test,127.0.0.9"]


def key_record(bits: int, seed: int) -> str:
    """A DKIM key record of the size a real key of ``bits`` gives (the modulus need not be
    a product of primes for DNS: generating real 2048- and 4096-bit keys takes seconds)."""
    n = random.Random(seed).getrandbits(bits) | (1 << (bits - 1)) | 1
    return dkim.dns_record_value(rsa.PublicKey(n, 65537))


KEY, OTHER_KEY = key_record(2048, 1), key_record(2048, 2)


def good_zone() -> dict[str, list[str]]:
    """dnsmasq options for a domain published as it should be, by part (a test replaces parts).
    The server's addresses come from --address, which (unlike --host-record) adds no PTR; but
    a name given by --address alone is NXDOMAIN for other types (real DNS says NODATA), so a
    test that leaves out one address family uses --host-record."""
    return {
        "mx": [f"--mx-host={DOMAIN},{SERVER},10"],
        "address": [f"--address=/{SERVER}/{IP}", f"--address=/{SERVER}/{IP6}"],
        "spf": [f"--txt-record={DOMAIN},v=spf1 mx ~all"],
        "dkim": [f"--txt-record=s1._domainkey.{DOMAIN},{KEY}"],
        "dmarc": [f"--txt-record=_dmarc.{DOMAIN},v=DMARC1; p=none; rua=mailto:postmaster@{DOMAIN}"],
        "ptr": [f"--ptr-record=7.2.0.192.in-addr.arpa,{SERVER}", f"--ptr-record={REVERSE6},{SERVER}"],
    }


class DnsCase(unittest.TestCase):
    def serve(self, *extra: str, **parts: list[str]) -> Resolver:
        """A resolver asking a fresh dnsmasq that serves the good zone with ``parts`` replaced
        ([] leaves a part out) and ``extra`` added."""
        program = require_program(self, "dnsmasq", "/usr/sbin/dnsmasq")
        zone = good_zone()
        unknown = set(parts) - set(zone)
        if unknown:
            raise AssertionError(f"no such part of the zone: {unknown}")
        zone.update(parts)
        server = Dnsmasq(program, [a for p in zone.values() for a in p] + list(extra) + ZONES, probe="probe.test")
        self.addCleanup(server.stop)
        self.dns = server
        return Resolver([("127.0.0.1", server.port)], timeout=1.0, attempts=2)

    def records(self, **kw) -> list[Record]:
        args = dict(server_name=SERVER, public_ips=[IP, IP6], smarthost=None, smarthost_exclusive=False,
                    spf_include=None, dkim=[("s1", KEY)], postmaster=f"postmaster@{DOMAIN}")
        args.update(kw)
        return records_for(DOMAIN, **args)

    def verdicts(self, resolver: Resolver, **kw) -> dict:
        """Verdicts by "MX", "A 192.0.2.7", "SPF", "DKIM s1", "DMARC", "PTR 192.0.2.7"."""
        out = {}
        for v in check(self.records(**kw), resolver):
            r = v.record
            detail = {"A": r.value, "PTR": r.expect[0] if r.expect else "", "DKIM": r.name.split(".")[0]}
            key = f"{r.kind} {detail[r.kind]}" if r.kind in detail else r.kind
            self.assertNotIn(key, out)
            out[key] = v
        return out

    def problem(self, verdict) -> str:
        self.assertFalse(verdict.ok, "expected a problem")
        self.assertTrue(verdict.problem)
        return verdict.problem


# -- the resolver's TXT and PTR look-ups -----------------------------------------------------------

class TxtAndPtrTest(DnsCase):
    def test_long_dkim_record_in_several_strings_is_read_back_whole(self):
        head, tail = KEY[:200], KEY[200:]
        r = self.serve(f"--txt-record=two.example.test,{head},{tail}")  # a comma: two strings
        self.assertGreater(len(KEY.encode()), 255)  # so dnsmasq too must cut s1's into strings
        reply = self.raw_txt_reply("two.example.test")
        self.assertIn(bytes([200]) + head.encode(), reply)  # on the wire: two character-strings
        self.assertIn(bytes([len(tail)]) + tail.encode(), reply)
        self.assertEqual(r.txt("two.example.test"), [KEY])
        self.assertEqual(r.txt("s1._domainkey.example.test"), [KEY])

    def raw_txt_reply(self, name: str) -> bytes:
        from ismail.queue import dns
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(dns._build_query(4242, name, dns.TXT), ("127.0.0.1", self.dns.port))
            return s.recv(4096)

    def test_record_over_512_bytes_comes_over_tcp(self):
        big = key_record(4096, 3)
        self.assertGreater(len(big), 700)
        r = self.serve(f"--txt-record=big._domainkey.example.test,{big}")
        self.assertGreater(len(self.raw_txt_reply("big._domainkey.example.test")), 0)
        with self.assertLogs("ismail.dns", "DEBUG") as logs:
            self.assertEqual(r.txt("big._domainkey.example.test"), [big])
        self.assertTrue(any("asking over TCP" in line for line in logs.output), logs.output)

    def test_several_records_none_nxdomain_cname_and_bad_bytes(self):
        r = self.serve("--txt-record=multi.example.test,one", "--txt-record=multi.example.test,two",
                       "--cname=alias.example.test,multi.example.test",
                       "--txt-record=bytes.example.test,caf\u00e9 \udcff end")  # \udcff: the byte 0xff
        self.assertEqual(sorted(r.txt("multi.example.test")), ["one", "two"])
        self.assertEqual(sorted(r.txt("alias.example.test")), ["one", "two"])
        self.assertEqual(r.txt("probe.test"), [])  # the name exists, without TXT
        with self.assertRaises(NXDomain):
            r.txt("nosuch.example.test")
        self.assertEqual(r.txt("bytes.example.test"), ["caf\u00e9 \ufffd end"])

    def test_txt_answers_are_cached_for_their_ttl(self):
        r = self.serve("--local-ttl=300")
        self.assertEqual(r.txt(DOMAIN), ["v=spf1 mx ~all"])
        self.dns.stop()
        self.assertEqual(r.txt(DOMAIN), ["v=spf1 mx ~all"])  # no server now: from the cache
        with self.assertRaises(DNSError):
            r.txt("_dmarc.example.test")  # never asked, so not cached

    def test_ptr_ipv4_ipv6_missing_and_not_an_address(self):
        r = self.serve()
        self.assertEqual(r.ptr(IP), [SERVER])
        self.assertEqual(r.ptr(IP6), [SERVER])
        with self.assertRaises(NXDomain):
            r.ptr("192.0.2.8")
        with self.assertRaises(DNSError) as e:
            r.ptr("mx.example.test")
        self.assertIn("not an IP address", str(e.exception))


# -- what to publish -------------------------------------------------------------------------------

class RecordsForTest(DnsCase):
    def spf(self, **kw) -> Record:
        return next(r for r in self.records(**kw) if r.kind == "SPF")

    def test_the_records_of_a_domain(self):
        got = [(r.kind, r.type, r.name, r.value) for r in self.records()]
        self.assertEqual(got, [
            ("MX", "MX", DOMAIN, f"10 {SERVER}"), ("A", "A", SERVER, IP), ("A", "AAAA", SERVER, IP6),
            ("SPF", "TXT", DOMAIN, f"v=spf1 mx ip4:{IP} ip6:{IP6} ~all"),
            ("DKIM", "TXT", "s1._domainkey.example.test", KEY),
            ("DMARC", "TXT", "_dmarc.example.test", "v=DMARC1; p=none; rua=mailto:postmaster@example.test"),
            ("PTR", "PTR", "7.2.0.192.in-addr.arpa", SERVER), ("PTR", "PTR", REVERSE6, SERVER)])
        self.assertTrue(all(r.why and "\n" not in r.why for r in self.records()))

    def test_spf_choices(self):
        self.assertEqual(self.spf(public_ips=[]).value, "v=spf1 mx a ~all")
        excl = dict(smarthost="smtp.provider.test", smarthost_exclusive=True)
        self.assertEqual(self.spf(**excl, spf_include="spf.provider.test").value,
                         "v=spf1 mx include:spf.provider.test ~all")
        bare = self.spf(**excl)
        self.assertEqual(bare.value, "v=spf1 mx a ~all")
        self.assertIn("add its provider's include:", bare.why)
        both = self.spf(smarthost="smtp.provider.test", spf_include="spf.provider.test")
        self.assertEqual(both.value, f"v=spf1 mx ip4:{IP} ip6:{IP6} include:spf.provider.test ~all")
        self.assertEqual(self.spf(spf_include="spf.provider.test").value,  # no SmartHost: no include
                         f"v=spf1 mx ip4:{IP} ip6:{IP6} ~all")
        # An exclusive SmartHost sends everything: no PTR advice for this server's addresses.
        self.assertNotIn("PTR", [r.kind for r in self.records(**excl)])

    def test_bad_arguments_are_named(self):
        for kw, words in ((dict(public_ips=["192.0.2.300"]), "public_ips: '192.0.2.300' is not an IP address"),
                          (dict(server_name="bad name.test"), "server_name:")):
            with self.subTest(words=words), self.assertRaises(ValueError) as e:
                self.records(**kw)
            self.assertIn(words, str(e.exception))

    def test_zone_lines_quote_and_cut_txt_into_255_byte_strings(self):
        odd = 'v=DKIM1; n="quoted\\back"; x=caf\u00e9; p=' + "A" * 600
        recs = self.records(dkim=[("s1", KEY), ("odd", odd)])
        lines = zone_lines(recs)
        self.assertEqual(len(lines), 2 * len(recs))
        for why_line, rec, line in zip(lines[::2], recs, lines[1::2]):
            self.assertEqual(why_line, "; " + rec.why)
            self.assertTrue(line.startswith(f"{rec.name}. 3600 IN {rec.type} "), line)
        self.assertIn(f"{DOMAIN}. 3600 IN MX 10 {SERVER}.", lines)
        self.assertIn(f"{SERVER}. 3600 IN A {IP}", lines)
        self.assertIn(f"7.2.0.192.in-addr.arpa. 3600 IN PTR {SERVER}.", lines)
        self.assertIn(f'{DOMAIN}. 3600 IN TXT "v=spf1 mx ip4:{IP} ip6:{IP6} ~all"', lines)
        for value, name in ((KEY, "s1._domainkey"), (odd, "odd._domainkey")):
            line = next(l for l in lines if l.startswith(f"{name}.{DOMAIN}. 3600 IN TXT "))
            strings = self.unquote(line.split(" IN TXT ", 1)[1])
            self.assertEqual(len(strings), -(-len(value.encode()) // 255))
            self.assertTrue(all(len(s) <= 255 for s in strings))
            self.assertEqual(b"".join(strings).decode(), value)
        self.assertIn(r'n=\"quoted\\back\"; x=caf\195\169;', lines[lines.index(line)])

    @staticmethod
    def unquote(text: str) -> list[bytes]:
        """The character-strings of zone-file TXT data (RFC 1035 §5.1: \\X and \\DDD)."""
        self_check = re.fullmatch(r'(?:"(?:[^"\\]|\\.)*"(?: |$))+', text)
        assert self_check, f"not a list of quoted strings: {text!r}"
        out = []
        for body in re.findall(r'"((?:[^"\\]|\\.)*)"', text):
            raw = re.sub(r"\\([0-9]{3})", lambda m: chr(int(m.group(1))), body)
            out.append(re.sub(r"\\(.)", r"\1", raw).encode("latin-1"))
        return out


# -- the check ---------------------------------------------------------------------------------------

class CheckTest(DnsCase):
    def test_all_records_right(self):
        got = self.verdicts(self.serve())
        self.assertEqual({k: v.problem for k, v in got.items() if not v.ok}, {})
        self.assertEqual(set(got), {"MX", f"A {IP}", f"A {IP6}", "SPF", "DKIM s1", "DMARC",
                                    f"PTR {IP}", f"PTR {IP6}"})
        self.assertEqual(got["MX"].found, [f"10 {SERVER}"])
        self.assertEqual(got["DKIM s1"].found, [KEY])

    def test_each_kind_missing(self):
        r = self.serve(mx=[], address=[], spf=[], dkim=[], dmarc=[], ptr=[])
        got = self.verdicts(r)
        self.assertEqual(self.problem(got["MX"]), f"missing: {DOMAIN} does not exist in DNS")
        self.assertEqual(self.problem(got["SPF"]), f"missing: {DOMAIN} does not exist in DNS")
        self.assertIn(f"missing: no A record for {SERVER}", self.problem(got[f"A {IP}"]))
        self.assertIn(f"missing: no AAAA record for {SERVER}", self.problem(got[f"A {IP6}"]))
        self.assertIn("missing: no DKIM record at s1._domainkey.example.test", self.problem(got["DKIM s1"]))
        self.assertIn("missing: no DMARC record", self.problem(got["DMARC"]))
        self.assertIn(f"missing: no PTR record for {IP}: ask your ISP", self.problem(got[f"PTR {IP}"]))
        # The domain exists (an MX) but has no TXT at all, and the server's name has no AAAA.
        got = self.verdicts(self.serve(spf=[], address=[f"--host-record={SERVER},{IP}"]))
        self.assertIn(f"missing: no SPF record (a TXT record starting with v=spf1) at {DOMAIN}",
                      self.problem(got["SPF"]))
        self.assertEqual(self.problem(got[f"A {IP6}"]), f"missing: no AAAA record for {SERVER}")
        self.assertTrue(got["MX"].ok and got[f"A {IP}"].ok)

    def test_mx_pointing_elsewhere_and_null_mx(self):
        got = self.verdicts(self.serve(mx=[f"--mx-host={DOMAIN},mx.other.test,5"]))
        self.assertIn(f"its MX host(s) point elsewhere: mx.other.test - not {SERVER}", self.problem(got["MX"]))
        self.assertEqual(got["MX"].found, ["5 mx.other.test"])
        got = self.verdicts(self.serve(mx=[f"--mx-host={DOMAIN},.,0"]))
        self.assertIn("null MX", self.problem(got["MX"]))

    def test_address_of_the_server_name_differs(self):
        got = self.verdicts(self.serve(address=[f"--host-record={SERVER},192.0.2.99,{IP6}"]))
        self.assertEqual(self.problem(got[f"A {IP}"]), f"{SERVER} points to 192.0.2.99, not to {IP}")

    def test_dkim_wrong_key_revoked_and_syntax_errors(self):
        p = KEY.split("p=")[1]
        cases = {  # selector: (published record, words of the problem)
            "other": (OTHER_KEY, "a different key is published: mail signed with selector other would fail"),
            "spaced": (f"v=DKIM1; k=rsa; p={p[:100]} {p[100:]}", None),  # spaces in p= do not count
            "revoked": ("v=DKIM1; k=rsa; p=", "the key is revoked (p= is empty)"),
            "notb64": ("v=DKIM1; k=rsa; p=@@@@", "syntax error in the DKIM record: p= is not base64"),
            "notfirst": (f"k=rsa; v=DKIM1; p={p}", "syntax error in the DKIM record: v=DKIM1 must come first"),
            "version": (f"v=DKIM2; p={p}", "syntax error in the DKIM record: v=DKIM1 must come first"),
            "ed": (f"v=DKIM1; k=ed25519; p={p}", "syntax error in the DKIM record: k=ed25519: not an RSA key"),
            "notag": (f"v=DKIM1; rsa; p={p}", "syntax error in the DKIM record: 'rsa' is not a tag=value pair"),
            "twice": (f"v=DKIM1; p={p}; p={p}", "syntax error in the DKIM record: the tag p= appears twice"),
            "nop": ("v=DKIM1; k=rsa", "syntax error in the DKIM record: no p= tag"),
            "sha1": (f"v=DKIM1; h=sha1; p={p}", "h=sha1 leaves out sha256"),
        }
        # A comma in dnsmasq's --txt-record starts a new string; none of these have one.
        r = self.serve(dkim=[f"--txt-record={sel}._domainkey.{DOMAIN},{text}" for sel, (text, _) in cases.items()]
                       + [f"--txt-record=two._domainkey.{DOMAIN},{KEY}", f"--txt-record=two._domainkey.{DOMAIN},x"])
        got = self.verdicts(r, dkim=[(sel, KEY) for sel in [*cases, "two"]])
        for sel, (_, words) in cases.items():
            with self.subTest(selector=sel):
                if words is None:
                    self.assertTrue(got[f"DKIM {sel}"].ok, got[f"DKIM {sel}"].problem)
                else:
                    self.assertIn(words, self.problem(got[f"DKIM {sel}"]))
        self.assertIn("2 TXT records at two._domainkey.example.test", self.problem(got["DKIM two"]))

    def test_two_spf_records(self):
        got = self.verdicts(self.serve(spf=[f"--txt-record={DOMAIN},v=spf1 mx ~all",
                                            f"--txt-record={DOMAIN},v=spf1 a -all"]))
        self.assertIn("2 SPF records: receivers treat that as an error (PermError, RFC 7208 §4.5)",
                      self.problem(got["SPF"]))
        self.assertEqual(sorted(got["SPF"].found), ["v=spf1 a -all", "v=spf1 mx ~all"])

    def test_spf_syntax_errors(self):
        for record, words in (("v=spf1 mx foo ~all", "'foo' is not an SPF mechanism"),
                              ("v=spf1 mx *all", "'*all': '*' is not a qualifier"),
                              ("v=spf1 ip4:192.0.2.300 ~all", "'ip4:192.0.2.300': '192.0.2.300' is not an address"),
                              ("v=spf1 mx redirect=a.test redirect=b.test", "redirect= appears more than once")):
            with self.subTest(record=record):
                got = self.verdicts(self.serve(spf=[f"--txt-record={DOMAIN},{record}"]))
                self.assertIn("syntax error in the SPF record: " + words, self.problem(got["SPF"]))

    def include_chain(self, last: str) -> list[str]:
        """example.test -> i1 -> i2 -> i3: 2 + 3 + 3 look-ups, then i3's record ``last``."""
        return [f"--txt-record={DOMAIN},v=spf1 mx include:i1.example.test ~all",
                "--txt-record=i1.example.test,v=spf1 a mx include:i2.example.test -all",
                "--txt-record=i2.example.test,v=spf1 a mx include:i3.example.test -all",
                f"--txt-record=i3.example.test,{last}"]

    def test_spf_more_than_ten_lookups_counted_through_nested_includes(self):
        got = self.verdicts(self.serve(spf=self.include_chain("v=spf1 a mx exists:e.example.test -all")))
        self.assertIn(f"the SPF record needs more than {MAX_LOOKUPS} DNS look-ups (11 counted when "
                      "i3.example.test's record is reached", self.problem(got["SPF"]))
        got = self.verdicts(self.serve(spf=self.include_chain("v=spf1 a mx -all")))  # exactly 10
        self.assertTrue(got["SPF"].ok, got["SPF"].problem)
        loop = [f"--txt-record={DOMAIN},v=spf1 mx include:loop.example.test ~all",
                f"--txt-record=loop.example.test,v=spf1 include:{DOMAIN} -all"]
        self.assertIn("more than 10 DNS look-ups", self.problem(self.verdicts(self.serve(spf=loop))["SPF"]))
        redirect = [f"--txt-record={DOMAIN},v=spf1 a mx ptr redirect=r.example.test",
                    "--txt-record=r.example.test,v=spf1 a mx ptr exists:x.example.test a:y.example.test "
                    "mx:z.example.test include:i3.example.test ~all", "--txt-record=i3.example.test,v=spf1 -all"]
        self.assertIn("(11 counted", self.problem(self.verdicts(self.serve(spf=redirect))["SPF"]))

    def test_spf_include_without_record_is_a_permerror(self):
        got = self.verdicts(self.serve(spf=[f"--txt-record={DOMAIN},v=spf1 mx include:none.example.test ~all"]))
        self.assertIn("none.example.test has no SPF record (named by include:none.example.test in "
                      "example.test's record): receivers treat that as an error (PermError)",
                      self.problem(got["SPF"]))

    def test_spf_plus_all(self):
        for spf in ([f"--txt-record={DOMAIN},v=spf1 mx +all"], [f"--txt-record={DOMAIN},v=spf1 all"],
                    [f"--txt-record={DOMAIN},v=spf1 include:lax.example.test -all",
                     "--txt-record=lax.example.test,v=spf1 +all"]):
            with self.subTest(spf=spf):
                problem = self.problem(self.verdicts(self.serve(spf=spf))["SPF"])
                self.assertIn(f"+all allows anyone at all to send as {DOMAIN}", problem)
                if len(spf) > 1:  # the +all is in the included record, which is named
                    self.assertIn("in lax.example.test's record", problem)

    def test_spf_that_does_not_authorize_this_server(self):
        for spf, words in (
                ([f"--txt-record={DOMAIN},v=spf1 ip4:198.51.100.1 ~all"], f"{IP} gets softfail (from ~all)"),
                ([f"--txt-record={DOMAIN},v=spf1 a -all"], f"{IP} gets fail (from -all)"),
                ([f"--txt-record={DOMAIN},v=spf1 include:_spf.example.test",
                  "--txt-record=_spf.example.test,v=spf1 ip4:192.0.2.0/24 -all"], f"{IP6} gets neutral"),
                ([f"--txt-record={DOMAIN},v=spf1 -mx mx ~all"], f"{IP} gets fail (from -mx)")):
            with self.subTest(spf=spf):
                problem = self.problem(self.verdicts(self.serve(spf=spf))["SPF"])
                self.assertIn("it does not name this server: " + words, problem)

    def test_spf_that_authorizes_this_server_other_ways(self):
        for spf in ([f"--txt-record={DOMAIN},v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"],
                    [f"--txt-record={DOMAIN},v=spf1 a:web.example.test/24//64 -all",
                     "--address=/web.example.test/192.0.2.99", "--address=/web.example.test/2001:db8::99"],
                    [f"--txt-record={DOMAIN},v=spf1 include:_spf.example.test -all",
                     "--txt-record=_spf.example.test,v=spf1 mx:example.test -all"],
                    [f"--txt-record={DOMAIN},v=spf1 redirect=_spf.example.test",
                     f"--txt-record=_spf.example.test,v=spf1 ip4:{IP} ip6:{IP6} -all"],
                    [f"--txt-record={DOMAIN},v=spf1 ptr:example.test -all"]):
            with self.subTest(spf=spf):
                got = self.verdicts(self.serve(spf=spf))
                self.assertTrue(got["SPF"].ok, got["SPF"].problem)

    def test_spf_for_an_exclusive_smarthost(self):
        kw = dict(smarthost="smtp.provider.test", smarthost_exclusive=True, spf_include="spf.provider.test")
        got = self.verdicts(self.serve(), **kw)
        self.assertIn("it does not include spf.provider.test (your SmartHost provider's SPF): add "
                      "include:spf.provider.test before ~all", self.problem(got["SPF"]))
        got = self.verdicts(self.serve(spf=[f"--txt-record={DOMAIN},v=spf1 mx include:spf.provider.test ~all",
                                            "--txt-record=spf.provider.test,v=spf1 ip4:198.51.100.0/24 -all"]), **kw)
        self.assertTrue(got["SPF"].ok, got["SPF"].problem)

    def test_dmarc_missing_duplicated_and_malformed(self):
        for texts, words in (
                ([], "missing: no DMARC record (a TXT record starting with v=DMARC1) at _dmarc.example.test"),
                (["v=DMARC1; p=none", "v=DMARC1; p=reject"], "2 DMARC records: receivers ignore them all"),
                (["p=none; v=DMARC1"], "the TXT record at _dmarc.example.test does not start with v=DMARC1"),
                (["v=DMARC1; p=maybe"], "syntax error in the DMARC record: p=maybe: p= must be none, "
                                        "quarantine or reject"),
                (["v=DMARC1; rua=mailto:postmaster@example.test"], "syntax error in the DMARC record: no p= tag"),
                (["v=DMARC1; p=none; pct=150"], "pct=150: pct= is a whole number from 0 to 100"),
                (["v=DMARC1; p=reject; sp=quarantine; adkim=s"], None)):
            with self.subTest(texts=texts):
                got = self.verdicts(self.serve(dmarc=[f"--txt-record=_dmarc.{DOMAIN},{t}" for t in texts]))
                if words is None:
                    self.assertTrue(got["DMARC"].ok, got["DMARC"].problem)
                else:
                    self.assertIn(words, self.problem(got["DMARC"]))

    def test_ptr_wrong_and_not_forward_confirmed(self):
        got = self.verdicts(self.serve(ptr=["--ptr-record=7.2.0.192.in-addr.arpa,host.isp.test"]))
        self.assertEqual(self.problem(got[f"PTR {IP}"]), f"{IP} points back to host.isp.test, not {SERVER}: "
                                                         f"ask your ISP or host to set it to {SERVER}")
        self.assertIn(f"missing: no PTR record for {IP6}", self.problem(got[f"PTR {IP6}"]))
        got = self.verdicts(self.serve(address=[f"--host-record={SERVER},{IP}"]))  # PTRs right, no AAAA
        self.assertTrue(got[f"PTR {IP}"].ok, got[f"PTR {IP}"].problem)
        self.assertEqual(self.problem(got[f"PTR {IP6}"]), f"not forward-confirmed: {SERVER} does not "
                                                          f"resolve to {IP6} (it resolves to {IP})")

    def test_lookups_that_fail_are_not_reported_as_missing(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))  # a "DNS server" that never answers
            r = Resolver([silent.getsockname()], timeout=0.2, attempts=1)
            verdicts = check(self.records(), r)
        self.assertEqual(len(verdicts), 8)
        for v in verdicts:
            with self.subTest(record=f"{v.record.kind} {v.record.name}"):
                self.assertTrue(self.problem(v).startswith("could not look up: no answer from DNS servers"),
                                v.problem)


# -- the SPF parser, for the checker to come -------------------------------------------------------

class SpfSyntaxTest(unittest.TestCase):
    def test_terms(self):
        record = parse("V=SPF1 -MX/24//64 a:mail.example.com ~ip4:192.0.2.0/24 ip6:2001:db8::/32 "
                       "include:_spf.%{d} exists:%{ir}.sbl.example.org ptr ?all  exp=why.%{d} x-y=z")
        got = [(d.qualifier, d.mechanism, d.argument, d.cidr4, d.cidr6) for d in record.directives]
        self.assertEqual(got, [("-", "mx", "", 24, 64), ("+", "a", "mail.example.com", None, None),
                               ("~", "ip4", "192.0.2.0", 24, None), ("+", "ip6", "2001:db8::", None, 32),
                               ("+", "include", "_spf.%{d}", None, None),
                               ("+", "exists", "%{ir}.sbl.example.org", None, None),
                               ("+", "ptr", "", None, None), ("?", "all", "", None, None)])
        self.assertEqual([(m.name, m.value) for m in record.modifiers], [("exp", "why.%{d}"), ("x-y", "z")])
        self.assertEqual(record.directives[2].result, "softfail")
        self.assertEqual(str(record.directives[3].network()), "2001:db8::/32")
        self.assertEqual(record.lookups(), 5)  # mx, a, include, exists, ptr
        self.assertIsNone(record.redirect)
        self.assertEqual(parse("v=spf1 mx redirect=_spf.example.com").redirect, "_spf.example.com")
        self.assertIsNone(parse("v=spf1 -all redirect=_spf.example.com").redirect)  # all wins, §6.1

    def test_syntax_errors_name_the_term(self):
        for bad, words in (
                ("v=spf2 mx", "it does not start with v=spf1"), ("v=spf10 mx", "it does not start with v=spf1"),
                ("v=spf1 include", "'include' needs an argument"), ("v=spf1 exists:", "needs an argument"),
                ("v=spf1 ip4:300.1.1.1", "'300.1.1.1' is not an address"),
                ("v=spf1 ip6:192.0.2.1", "is an IPv4 address, which does not match ip6"),
                ("v=spf1 a/33", "/33 is not a prefix length (0 to 32"), ("v=spf1 mx//129", "(0 to 128"),
                ("v=spf1 a/024", "/024 is not a prefix length"), ("v=spf1 all:x", "all takes no argument"),
                ("v=spf1 ++mx", "one qualifier (+) and then a mechanism name"),
                ("v=spf1 mxx", "'mxx' is not an SPF mechanism"),
                ("v=spf1 include:localhost", "'localhost' is not a domain name"),
                ("v=spf1 include:%{x}.example.com", "'%{x}.exa' is not a valid macro"),
                ("v=spf1 redirect=", "redirect= needs a domain"),
                ("v=spf1 exp=a.com exp=b.com", "exp= appears more than once"),
                ("v=spf1 mx\t-all", "only visible ASCII characters are allowed")):
            with self.subTest(record=bad), self.assertRaises(ValueError) as e:
                parse(bad)
            self.assertIn(words, str(e.exception))


if __name__ == "__main__":
    unittest.main()
