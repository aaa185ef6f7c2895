import json
import tempfile
import threading
import time
import unittest
from pathlib import Path

from ismail.antispam.greylist import Greylist, client_network


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class GreylistTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.path = Path(self.tmp.name) / "greylist.json"
        self.clock = FakeClock()

    def make(self, **kw) -> Greylist:
        return Greylist(self.path, clock=self.clock, **kw)

    def test_first_sight_deferred_then_retry_after_delay_passes(self) -> None:
        g = self.make(delay=300)
        self.assertEqual(g.check("192.0.2.10", "a@x.test", "u@local.test"), (False, 300.0))
        self.clock.now += 100
        ok, left = g.check("192.0.2.10", "a@x.test", "u@local.test")
        self.assertFalse(ok)
        self.assertAlmostEqual(left, 200.0)
        self.clock.now += 200
        self.assertEqual(g.check("192.0.2.10", "a@x.test", "u@local.test"), (True, 0.0))
        self.clock.now += 86400  # passed triplets are remembered
        self.assertEqual(g.check("192.0.2.10", "a@x.test", "u@local.test"), (True, 0.0))

    def test_triplet_is_network_and_lower_cased(self) -> None:
        g = self.make(delay=10)
        g.check("192.0.2.10", "A@X.test", "U@Local.TEST")
        self.clock.now += 11
        # Another address of the same /24, other letter case: the same triplet.
        self.assertEqual(g.check("192.0.2.99", "a@x.test", "u@local.test"), (True, 0.0))
        self.assertFalse(g.check("192.0.3.10", "b@y.test", "u@local.test")[0])
        self.assertEqual(client_network("::ffff:192.0.2.10"), "192.0.2.0/24")
        self.assertEqual(client_network("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(client_network("not an ip"), "not an ip")

    def test_ipv4_mapped_counts_as_ipv4(self) -> None:
        g = self.make(delay=10)
        g.check("::ffff:192.0.2.10", "a@x.test", "u@local.test")
        self.clock.now += 11
        self.assertTrue(g.check("192.0.2.10", "a@x.test", "u@local.test")[0])

    def test_ipv6_slash_64(self) -> None:
        g = self.make(delay=10)
        g.check("2001:db8::1", "a@x.test", "u@local.test")
        self.clock.now += 11
        self.assertTrue(g.check("2001:db8::ffff:2", "a@x.test", "u@local.test")[0])
        self.assertFalse(g.check("2001:db8:0:1::1", "b@x.test", "v@local.test")[0])

    def test_retry_after_window_starts_again(self) -> None:
        g = self.make(delay=300, retry_window=3600)
        g.check("192.0.2.1", "a@x.test", "u@l.test")
        self.clock.now += 3601
        self.assertEqual(g.check("192.0.2.1", "a@x.test", "u@l.test"), (False, 300.0))
        self.clock.now += 300
        self.assertTrue(g.check("192.0.2.1", "a@x.test", "u@l.test")[0])

    def test_passed_triplet_expires(self) -> None:
        g = self.make(delay=10, pass_lifetime=1000)
        g.check("192.0.2.1", "", "u@l.test")  # the null sender: no auto-whitelist
        self.clock.now += 10
        self.assertTrue(g.check("192.0.2.1", "", "u@l.test")[0])
        self.clock.now += 999  # each pass renews the lifetime
        self.assertTrue(g.check("192.0.2.1", "", "u@l.test")[0])
        self.clock.now += 1001
        self.assertFalse(g.check("192.0.2.1", "", "u@l.test")[0])

    def test_auto_whitelist_network_and_sender_domain(self) -> None:
        g = self.make(delay=10)
        g.check("192.0.2.1", "a@x.test", "u@l.test")
        self.clock.now += 10
        self.assertTrue(g.check("192.0.2.1", "a@x.test", "u@l.test")[0])
        # Same network and sender domain, other sender and recipient: not deferred.
        self.assertTrue(g.check("192.0.2.77", "b@X.TEST", "other@l.test")[0])
        # Another domain from that network, or the domain from elsewhere: deferred.
        self.assertFalse(g.check("192.0.2.1", "a@y.test", "other@l.test")[0])
        self.assertFalse(g.check("198.51.100.1", "a@x.test", "other@l.test")[0])

    def test_null_sender_does_not_whitelist(self) -> None:
        g = self.make(delay=10)
        g.check("192.0.2.1", "", "u@l.test")
        self.clock.now += 10
        self.assertTrue(g.check("192.0.2.1", "", "u@l.test")[0])
        self.assertFalse(g.check("192.0.2.1", "", "v@l.test")[0])
        self.assertFalse(g.check("192.0.2.1", "x@", "v@l.test")[0])

    def test_persist_across_new_instance(self) -> None:
        g = self.make(delay=10)
        g.check("192.0.2.1", "a@x.test", "u@l.test")       # pending
        g.check("192.0.2.2", "b@ü.test", "v@l.test")
        self.clock.now += 10
        g.check("192.0.2.2", "b@ü.test", "v@l.test")       # passed + whitelisted
        g.save()
        self.assertEqual(len(g), 3)
        h = self.make(delay=10)
        self.assertEqual(len(h), 3)
        self.assertTrue(h.check("192.0.2.1", "a@x.test", "u@l.test")[0])  # waited long enough
        self.assertTrue(h.check("192.0.2.2", "c@ü.test", "w@l.test")[0])
        self.assertEqual(list(Path(self.tmp.name).iterdir()), [self.path])  # no temporary left

    def test_save_skips_when_unchanged(self) -> None:
        g = self.make()
        g.save()
        mtime = self.path.stat().st_mtime_ns
        time.sleep(0.01)
        g.save()
        self.assertEqual(self.path.stat().st_mtime_ns, mtime)

    def test_corrupt_file_set_aside_not_overwritten(self) -> None:
        self.path.write_bytes(b'{"version": 1, "pending": [[1, 2')
        with self.assertLogs("ismail.antispam", "ERROR") as logs:
            g = self.make()
        self.assertEqual(len(g), 0)
        aside = [p for p in Path(self.tmp.name).iterdir() if ".corrupt-" in p.name]
        self.assertEqual(len(aside), 1, list(Path(self.tmp.name).iterdir()))
        self.assertEqual(aside[0].read_bytes(), b'{"version": 1, "pending": [[1, 2')
        self.assertIn(aside[0].name, logs.output[0])
        g.check("192.0.2.1", "a@x.test", "u@l.test")
        g.save()
        self.assertEqual(len(self.make()), 1)
        # A second corrupt file on the same second does not replace the first one aside.
        self.path.write_bytes(b"\x00\xff garbage")
        with self.assertLogs("ismail.antispam", "ERROR"):
            self.make()
        self.assertEqual(len([p for p in Path(self.tmp.name).iterdir() if ".corrupt-" in p.name]), 2)

    def test_wrong_shape_counts_as_corrupt(self) -> None:
        for bad in ({"version": 1, "pending": [["n", "s", "r", "x"]], "passed": [], "clients": []},
                    {"version": 2}, [1, 2, 3]):
            self.path.write_text(json.dumps(bad))
            with self.assertLogs("ismail.antispam", "ERROR"):
                self.assertEqual(len(self.make()), 0)
            self.assertFalse(self.path.exists())

    def test_prune_drops_expired(self) -> None:
        g = self.make(delay=10, retry_window=100, pass_lifetime=1000)
        g.check("192.0.2.1", "a@x.test", "u@l.test")
        self.clock.now += 10
        g.check("192.0.2.1", "a@x.test", "u@l.test")   # passed + whitelisted
        g.check("198.51.100.1", "b@y.test", "u@l.test")  # pending
        self.assertEqual(len(g), 3)
        self.assertEqual(g.prune(), 0)
        self.clock.now += 101
        self.assertEqual(g.prune(), 1)  # the pending one, past its retry window
        self.clock.now += 1000
        self.assertEqual(g.prune(), 2)
        self.assertEqual(len(g), 0)

    def test_bounded_drops_oldest_pending_first(self) -> None:
        g = self.make(delay=10, max_entries=1000)
        g.check("192.0.2.1", "a@x.test", "u@l.test")
        self.clock.now += 10
        g.check("192.0.2.1", "a@x.test", "u@l.test")   # 2 entries: passed + whitelist
        with self.assertLogs("ismail.antispam", "WARNING"):
            for i in range(2000):
                self.clock.now += 0.001
                g.check("198.51.100.1", f"s{i}@spam.test", "u@l.test")
        self.assertLessEqual(len(g), 1000)
        self.assertTrue(g.check("192.0.2.1", "a@x.test", "u@l.test")[0])   # survived the flood
        self.assertFalse(g.check("198.51.100.1", "s0@spam.test", "u@l.test")[0])  # dropped: new again
        self.assertFalse(g.check("198.51.100.1", "s1999@spam.test", "u@l.test")[0])
        self.clock.now += 10
        self.assertTrue(g.check("198.51.100.1", "s1999@spam.test", "u@l.test")[0])

    def test_thread_safety(self) -> None:
        g = Greylist(self.path, delay=0)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(2000):
                    g.check(f"10.{n}.{i % 250}.1", f"s{i}@d{n}.test", "u@l.test")
                    if i % 500 == 0:
                        g.save()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        g.save()
        self.assertEqual(len(Greylist(self.path, delay=0)), len(g))

    def test_save_100k_entries_time(self) -> None:
        g = self.make(delay=10)
        for i in range(100_000):
            g.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"sender{i}@example{i % 977}.test",
                    f"user{i % 50}@local.test")
        self.assertEqual(len(g), 100_000)
        started = time.perf_counter()
        g.save()
        took = time.perf_counter() - started
        started = time.perf_counter()
        h = self.make(delay=10)
        load = time.perf_counter() - started
        self.assertEqual(len(h), 100_000)
        print(f"\n  greylist: save of 100,000 entries {took * 1000:.0f} ms "
              f"({self.path.stat().st_size / 1e6:.1f} MB), load {load * 1000:.0f} ms", end=" ")


if __name__ == "__main__":
    unittest.main()
