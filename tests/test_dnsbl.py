"""DNS block list entries, queries and answers, and the reverse-DNS (FCrDNS) check."""
from __future__ import annotations

import unittest

from ismail.antispam.dnsbl import Listing, Reverse, check_zone, fcrdns, lookup, parse_zone, query_name
from ismail.queue.dns import DNSTemporaryError, NXDomain


class Zone:
    """A resolver answering from a dict: name -> list (A, AAAA, PTR by type key)."""

    def __init__(self, records: dict[tuple[str, str], list[str] | Exception]) -> None:
        self.records = records
        self.asked: list[tuple[str, str]] = []

    def _get(self, kind: str, name: str) -> list[str]:
        self.asked.append((kind, name))
        value = self.records.get((kind, name))
        if value is None:
            raise NXDomain(name)
        if isinstance(value, Exception):
            raise value
        return value

    def a(self, name: str) -> list[str]:
        return self._get("A", name)

    def aaaa(self, name: str) -> list[str]:
        return self._get("AAAA", name)

    def ptr(self, ip: str) -> list[str]:
        return self._get("PTR", ip)


class ZoneEntryTest(unittest.TestCase):
    def test_plain_zone_and_answer_ranges(self) -> None:
        self.assertEqual(parse_zone("zen.spamhaus.org").name, "zen.spamhaus.org")
        zone = parse_zone("zen.spamhaus.org=127.0.0.2, 127.0.0.4-127.0.0.7")
        self.assertTrue(zone.counts("127.0.0.2"))
        self.assertTrue(zone.counts("127.0.0.5"))
        self.assertFalse(zone.counts("127.0.0.3"))
        self.assertFalse(zone.counts("127.0.0.10"))

    def test_refused_query_answers_never_count(self) -> None:
        zone = parse_zone("zen.spamhaus.org")
        self.assertTrue(zone.counts("127.0.0.11"))
        self.assertFalse(zone.counts("127.255.255.254"))  # "query via a public resolver"
        self.assertFalse(zone.counts("10.0.0.2"))

    def test_bad_entries_are_named(self) -> None:
        self.assertIn("not a DNS zone", check_zone("localhost"))
        self.assertIn("not a DNS zone", check_zone("bad zone.org"))
        self.assertIn("127.0.0.x", check_zone("zen.spamhaus.org=127.0.0.x"))
        self.assertIn("ends before", check_zone("zen.spamhaus.org=127.0.0.9-127.0.0.2"))
        self.assertIn("nothing after", check_zone("zen.spamhaus.org="))
        self.assertIsNone(check_zone("bl.example.net=127.0.0.2-127.0.0.11"))

    def test_query_names(self) -> None:
        self.assertEqual(query_name("192.0.2.99", "bl.test"), "99.2.0.192.bl.test")
        self.assertEqual(query_name("::ffff:192.0.2.99", "bl.test"), "99.2.0.192.bl.test")
        v6 = query_name("2001:db8::1", "bl.test")
        self.assertTrue(v6.startswith("1.0.0.0.0.0.0.0"), v6)
        self.assertTrue(v6.endswith(".8.b.d.0.1.0.0.2.bl.test"), v6)


class LookupTest(unittest.TestCase):
    def test_listed_not_listed_and_dns_trouble(self) -> None:
        dns = Zone({("A", "2.0.0.127.bl.test"): ["127.0.0.2"],
                    ("A", "3.0.0.127.bl.test"): ["127.255.255.254"],
                    ("A", "4.0.0.127.bl.test"): DNSTemporaryError("timeout")})
        zone = parse_zone("bl.test")
        self.assertEqual(lookup(dns, "127.0.0.2", zone), Listing("bl.test", "127.0.0.2"))
        self.assertIsNone(lookup(dns, "127.0.0.9", zone))
        with self.assertLogs("ismail.antispam", "WARNING"):
            self.assertIsNone(lookup(dns, "127.0.0.3", zone))
        with self.assertRaises(DNSTemporaryError):
            lookup(dns, "127.0.0.4", zone)


class ReverseTest(unittest.TestCase):
    def test_forward_confirmed(self) -> None:
        dns = Zone({("PTR", "192.0.2.7"): ["mail.example.test"], ("A", "mail.example.test"): ["192.0.2.7"]})
        self.assertEqual(fcrdns(dns, "192.0.2.7"), Reverse("pass", "mail.example.test"))

    def test_name_that_does_not_lead_back(self) -> None:
        dns = Zone({("PTR", "192.0.2.8"): ["liar.test"], ("A", "liar.test"): ["192.0.2.99"]})
        self.assertEqual(fcrdns(dns, "192.0.2.8"), Reverse("fail", "liar.test"))

    def test_no_name_and_temporary_failures(self) -> None:
        self.assertEqual(fcrdns(Zone({}), "192.0.2.9").result, "fail")
        self.assertEqual(fcrdns(Zone({("PTR", "192.0.2.9"): []}), "192.0.2.9").result, "fail")
        self.assertEqual(fcrdns(Zone({("PTR", "192.0.2.9"): DNSTemporaryError("x")}), "192.0.2.9").result,
                         "temperror")
        dns = Zone({("PTR", "192.0.2.9"): ["a.test"], ("A", "a.test"): DNSTemporaryError("x")})
        self.assertEqual(fcrdns(dns, "192.0.2.9").result, "temperror")

    def test_ipv6_and_mapped_addresses(self) -> None:
        dns = Zone({("PTR", "2001:db8::5"): ["v6.test"], ("AAAA", "v6.test"): ["2001:db8:0::5"]})
        self.assertEqual(fcrdns(dns, "2001:db8::5").result, "pass")
        dns = Zone({("PTR", "192.0.2.7"): ["m.test"], ("A", "m.test"): ["192.0.2.7"]})
        self.assertEqual(fcrdns(dns, "::ffff:192.0.2.7").result, "pass")

    def test_at_most_ten_names_are_tried(self) -> None:
        names = [f"n{i}.test" for i in range(30)]
        dns = Zone({("PTR", "192.0.2.7"): names, ("A", "n20.test"): ["192.0.2.7"]})
        self.assertEqual(fcrdns(dns, "192.0.2.7").result, "fail")
        self.assertEqual(len([q for q in dns.asked if q[0] == "A"]), 10)


if __name__ == "__main__":
    unittest.main()
