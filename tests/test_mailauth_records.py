"""The DNS records assistant's check (ismail/mailauth/records.py) against a real DNS server:
dnsmasq on loopback serves right, wrong and missing records; ISMail's own resolver reads
them (TXT and PTR included); each problem is named in words."""
from __future__ import annotations

import unittest

from ismail.mailauth import dkim, rsa
from ismail.mailauth.records import Record, check, parse_spf, records_for, zone_lines
from ismail.queue.dns import Resolver
from tests.support import Dnsmasq, require_program

SERVER = "mx.example.test"
IP = "192.0.2.7"


class RecordsCheckTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.key = rsa.generate(2048)  # its record is over 255 bytes: several strings
        cls.dkim_value = dkim.dns_record_value(cls.key.public())

    def records(self, **kw) -> list[Record]:
        args = dict(server_name=SERVER, public_ips=[IP], smarthost=None, smarthost_exclusive=False,
                    spf_include=None, dkim=[("s1", self.dkim_value)], postmaster="postmaster@example.test")
        args.update(kw)
        return records_for("example.test", **args)

    def serve(self, *extra: str, base: bool = True) -> Resolver:
        program = require_program(self, "dnsmasq")
        records = ["--mx-host=example.test,mx.example.test,10", f"--host-record=mx.example.test,{IP}",
                   f"--txt-record=s1._domainkey.example.test,{self.dkim_value}",
                   "--txt-record=_dmarc.example.test,v=DMARC1; p=none; rua=mailto:postmaster@example.test",
                   f"--ptr-record=7.2.0.192.in-addr.arpa,{SERVER}", "--local=/2.0.192.in-addr.arpa/"]
        dns = Dnsmasq(program, (records if base else []) + list(extra), probe="example.test")
        self.addCleanup(dns.stop)
        return Resolver([("127.0.0.1", dns.port)], timeout=2, attempts=2)

    def verdicts(self, resolver: Resolver, **kw) -> dict[str, object]:
        out = {}
        for v in check(self.records(**kw), resolver):
            key = v.record.type + " " + v.record.name
            out["SPF" if v.record.value.startswith("v=spf1") else key] = v
        return out

    def test_everything_right(self) -> None:
        r = self.serve(f"--txt-record=example.test,v=spf1 mx a ip4:{IP} ~all")
        bad = {k: v.problem for k, v in self.verdicts(r).items() if not v.ok}
        self.assertEqual(bad, {})
        self.assertEqual(r.txt("s1._domainkey.example.test"), [self.dkim_value])  # 255+ bytes, whole

    def test_spf_problems(self) -> None:
        cases = [
            (["--txt-record=example.test,v=spf1 mx ~all", "--txt-record=example.test,v=spf1 a -all"],
             "2 SPF records"),
            (["--txt-record=example.test,v=spf1 mx foo:bar ~all"], "not an SPF mechanism"),
            (["--txt-record=example.test,v=spf1 +all"], "allows anyone"),
            (["--txt-record=example.test,v=spf1 ip4:198.51.100.1 -all"], "does not name this server"),
            ([], "no SPF record"),
        ]
        for records, words in cases:
            with self.subTest(words=words):
                v = self.verdicts(self.serve(*records))["SPF"]
                self.assertFalse(v.ok)
                self.assertIn(words, v.problem)

    def test_more_than_ten_lookups_through_nested_includes(self) -> None:
        chain = ["--txt-record=example.test,v=spf1 mx include:i1.example.test ~all"]
        for i in range(1, 5):
            nxt = f" include:i{i + 1}.example.test" if i < 4 else ""
            chain.append(f"--txt-record=i{i}.example.test,v=spf1 a mx exists:x.example.test{nxt} -all")
        v = self.verdicts(self.serve(*chain))["SPF"]
        self.assertFalse(v.ok)
        self.assertIn("more than 10 DNS look-ups", v.problem)
        # Three levels stay within the limit: the same record is then fine.
        short = chain[:2] + ["--txt-record=i2.example.test,v=spf1 a -all"]
        short[1] = "--txt-record=i1.example.test,v=spf1 a mx include:i2.example.test -all"
        self.assertTrue(self.verdicts(self.serve(*short))["SPF"].ok)

    def test_smarthost_include_is_required_when_one_is_named(self) -> None:
        r = self.serve("--txt-record=example.test,v=spf1 mx ~all")
        v = self.verdicts(r, smarthost="smtp.provider.test", smarthost_exclusive=True,
                          spf_include="spf.provider.test")["SPF"]
        self.assertFalse(v.ok)
        self.assertIn("does not include spf.provider.test", v.problem)

    def test_dkim_dmarc_mx_and_ptr_problems(self) -> None:
        other = dkim.dns_record_value(rsa.generate(1024).public())
        r = self.serve("--mx-host=example.test,mx.elsewhere.test,5",
                       f"--txt-record=s1._domainkey.example.test,{other}",
                       "--txt-record=_dmarc.example.test,v=DMARC1; p=maybe",
                       "--ptr-record=7.2.0.192.in-addr.arpa,host.isp.test", "--local=/2.0.192.in-addr.arpa/",
                       base=False)
        got = self.verdicts(r)
        self.assertIn("point elsewhere", got["MX example.test"].problem)
        self.assertIn("different key", got["TXT s1._domainkey.example.test"].problem)
        self.assertIn("p= must be none, quarantine or reject", got["TXT _dmarc.example.test"].problem)
        self.assertIn("not mx.example.test", got["PTR 7.2.0.192.in-addr.arpa"].problem)
        r = self.serve("--txt-record=s1._domainkey.example.test,v=DKIM1; k=rsa; p=@@@",
                       "--txt-record=_dmarc.example.test,v=DMARC1; p=none",
                       "--txt-record=_dmarc.example.test,v=DMARC1; p=reject",
                       "--local=/2.0.192.in-addr.arpa/", base=False)
        got = self.verdicts(r)
        self.assertIn("syntax error in the DKIM record", got["TXT s1._domainkey.example.test"].problem)
        self.assertIn("2 DMARC records", got["TXT _dmarc.example.test"].problem)
        self.assertIn("missing", got["PTR 7.2.0.192.in-addr.arpa"].problem)
        self.assertIn("missing", got["MX example.test"].problem)

    def test_zone_lines_quote_and_split_long_values(self) -> None:
        lines = zone_lines(self.records())
        dkim_line = next(l for l in lines if l.startswith("s1._domainkey.example.test. 3600 IN TXT "))
        strings = dkim_line.split(" IN TXT ", 1)[1]
        parts = strings.split('" "')
        self.assertGreater(len(parts), 1)
        self.assertTrue(all(len(p.strip('"').encode()) <= 255 for p in parts))
        self.assertEqual("".join(p.strip('"') for p in parts), self.dkim_value)
        self.assertIn("example.test. 3600 IN MX 10 mx.example.test.", lines)
        self.assertIn("7.2.0.192.in-addr.arpa. 3600 IN PTR mx.example.test.", lines)
        self.assertTrue(lines[0].startswith("; "))

    def test_spf_parser_refuses_bad_terms(self) -> None:
        for bad, words in (("v=spf1 ip4:300.1.1.1 -all", "not an address"), ("v=spf2 mx", "v=spf1"),
                           ("v=spf1 include ~all", "needs an argument"), ("v=spf1 ip6:192.0.2.1", "does not match")):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError) as e:
                    parse_spf(bad)
                self.assertIn(words, str(e.exception))


if __name__ == "__main__":
    unittest.main()
