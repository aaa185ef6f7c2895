import time
import unittest

from ismail.antispam.lists import BLACK, WHITE, AccessLists, check_entry


class EntryFormsTest(unittest.TestCase):
    def test_ip_address_and_networks(self) -> None:
        lists = AccessLists([], ["192.0.2.7", "198.51.100.0/24", "2001:db8::/32", "10.1.2.3/8"])
        self.assertEqual(lists.client("192.0.2.7"), BLACK)
        self.assertIsNone(lists.client("192.0.2.8"))
        self.assertEqual(lists.client("198.51.100.200"), BLACK)
        self.assertIsNone(lists.client("198.51.101.1"))
        self.assertEqual(lists.client("2001:db8:ffff::1"), BLACK)
        self.assertIsNone(lists.client("2001:db9::1"))
        self.assertEqual(lists.client("10.200.0.1"), BLACK)   # host bits of 10.1.2.3/8 ignored
        self.assertEqual(lists.client("::ffff:198.51.100.9"), BLACK)  # dual-stack socket form
        self.assertIsNone(lists.client("garbage"))
        self.assertIsNone(lists.sender("bob@198.51.100.1"))

    def test_sender_address(self) -> None:
        lists = AccessLists([], ["Bob@Example.COM"])
        self.assertEqual(lists.sender("bob@example.com"), BLACK)
        self.assertEqual(lists.sender("<BOB@example.com>"), BLACK)
        self.assertIsNone(lists.sender("bobby@example.com"))
        self.assertIsNone(lists.sender("bob@mail.example.com"))
        self.assertIsNone(lists.sender(""))

    def test_domain_forms(self) -> None:
        for entry in ("example.com", "@example.com", "*@example.com"):
            lists = AccessLists([], [entry])
            self.assertEqual(lists.sender("anyone@EXAMPLE.com"), BLACK, entry)
            self.assertIsNone(lists.sender("anyone@mail.example.com"), entry)
            self.assertIsNone(lists.sender("anyone@notexample.com"), entry)

    def test_subdomains(self) -> None:
        for entry in ("*.example.com", "*@*.example.com", "@*.example.com"):
            lists = AccessLists([], [entry])
            self.assertEqual(lists.sender("a@mail.example.com"), BLACK, entry)
            self.assertEqual(lists.sender("a@x.y.example.com"), BLACK, entry)
            self.assertIsNone(lists.sender("a@example.com"), entry)
            self.assertIsNone(lists.sender("a@badexample.com"), entry)

    def test_local_part_at_any_domain(self) -> None:
        lists = AccessLists([], ["bob@*"])
        self.assertEqual(lists.sender("Bob@a.test"), BLACK)
        self.assertEqual(lists.sender("bob@b.test"), BLACK)
        self.assertIsNone(lists.sender("bobby@a.test"))

    def test_wildcards(self) -> None:
        lists = AccessLists([], ["*spam*@*", "news-??@*.test", "*.bulk*"])
        self.assertEqual(lists.sender("bigSPAMmer@a.test"), BLACK)
        self.assertEqual(lists.sender("news-01@list.test"), BLACK)
        self.assertIsNone(lists.sender("news-001@list.test"))
        self.assertEqual(lists.sender("x@mail.bulkmail.test"), BLACK)  # domain-only pattern
        self.assertIsNone(lists.sender("bulk@x.test"))

    def test_white_wins_over_black(self) -> None:
        lists = AccessLists(["mail.example.com", "192.0.2.5"], ["*.example.com", "192.0.2.0/24"])
        self.assertEqual(lists.sender("a@mail.example.com"), WHITE)
        self.assertEqual(lists.sender("a@www.example.com"), BLACK)
        self.assertEqual(lists.client("192.0.2.5"), WHITE)
        self.assertEqual(lists.client("192.0.2.6"), BLACK)


class InvalidEntriesTest(unittest.TestCase):
    def test_check_entry_accepts_every_form(self) -> None:
        for entry in ("192.0.2.7", "192.0.2.0/24", "2001:db8::/32", "::1", "bob@example.com",
                      "example.com", "@example.com", "*.example.com", "*@example.com", "bob@*",
                      "*spam*@*", "b?b@x.test", "mail.bücher.de", " padded.test "):
            self.assertIsNone(check_entry(entry), entry)

    def test_check_entry_names_the_bad_entry(self) -> None:
        for entry in ("192.0.2.300", "192.0.2.0/33", "1.2.3", "fe80::zz", "", "bob@", "@",
                      "bob smith@x.test", "a@b@c", "<a@b.test>", "*", "*@*", "exa mple.com",
                      "ex..ample.com", "a@-", "a,b@x.test", "-x.test", "a[1]@x.test"):
            problem = check_entry(entry)
            self.assertIsNotNone(problem, entry)
            if entry.strip():
                self.assertIn(entry, problem)

    def test_constructor_raises_naming_list_and_index(self) -> None:
        with self.assertRaises(ValueError) as cm:
            AccessLists(["ok.test"], ["fine.test", "192.0.2.999"])
        self.assertIn("blacklist[1]", str(cm.exception))
        self.assertIn("192.0.2.999", str(cm.exception))
        with self.assertRaises(ValueError):
            AccessLists([42], [])  # type: ignore[list-item]


class SpeedTest(unittest.TestCase):
    def test_ten_thousand_entries_cost_nothing_per_lookup(self) -> None:
        black = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(5000)]
        black += [f"2001:db8:{i:x}::/48" for i in range(2000)]
        black += [f"user{i}@spam{i}.test" for i in range(2000)]
        black += [f"domain{i}.test" for i in range(1000)]
        black += [f"*bad{i}*@*" for i in range(50)]
        started = time.perf_counter()
        lists = AccessLists([], black)
        build = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(10_000):
            lists.client(f"192.0.{i & 255}.1")
            lists.sender(f"someone{i}@example.test")
        each = (time.perf_counter() - started) / 20_000
        self.assertEqual(lists.client("10.3.7.1"), BLACK)
        self.assertEqual(lists.sender("x@domain999.test"), BLACK)
        self.assertEqual(lists.sender("verybad49x@a.test"), BLACK)
        print(f"\n  lists: built 10,050 entries in {build * 1000:.0f} ms; "
              f"{each * 1e6:.1f} us per lookup", end=" ")
        self.assertLess(each, 0.001)


if __name__ == "__main__":
    unittest.main()
