import threading
import time
import unittest

from ismail.antispam.ratelimit import ConnectionRate


class FakeClock:
    def __init__(self, now: float = 6000.0) -> None:  # the start of a minute
        self.now = now

    def __call__(self) -> float:
        return self.now


class ConnectionRateTest(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()

    def test_sixty_allowed_then_refused(self) -> None:
        rate = ConnectionRate(60, clock=self.clock)
        for i in range(60):
            self.clock.now += 0.5
            self.assertTrue(rate.hit("192.0.2.1"), i)
        self.assertFalse(rate.hit("192.0.2.1"))
        self.assertTrue(rate.hit("192.0.2.2"))  # per address

    def test_window_slides(self) -> None:
        rate = ConnectionRate(60, clock=self.clock)
        self.clock.now += 30          # 60 connections in the second half of minute 1
        for _ in range(60):
            self.assertTrue(rate.hit("192.0.2.1"))
        self.clock.now += 30          # minute 2 begins: all 60 still within the last 60 s
        self.assertFalse(rate.hit("192.0.2.1"))
        self.clock.now += 20          # a third of the previous minute has slid out
        self.assertTrue(rate.hit("192.0.2.1"))
        self.assertAlmostEqual(rate.count("192.0.2.1"), 2 + 60 * (40 / 60))
        self.clock.now += 60          # a quiet minute later, everything has slid out
        self.assertAlmostEqual(rate.count("192.0.2.1"), 2 * (40 / 60))
        self.clock.now += 60
        self.assertEqual(rate.count("192.0.2.1"), 0.0)
        for _ in range(60):
            self.assertTrue(rate.hit("192.0.2.1"))

    def test_refused_attempts_count(self) -> None:
        rate = ConnectionRate(10, clock=self.clock)
        for _ in range(10):
            rate.hit("192.0.2.1")
        for _ in range(100):  # hammering while refused keeps the client refused
            self.assertFalse(rate.hit("192.0.2.1"))
        self.clock.now += 90
        self.assertFalse(rate.hit("192.0.2.1"))
        self.clock.now += 60
        self.assertTrue(rate.hit("192.0.2.1"))

    def test_ipv4_mapped_counts_as_ipv4(self) -> None:
        rate = ConnectionRate(2, clock=self.clock)
        self.assertTrue(rate.hit("192.0.2.1"))
        self.assertTrue(rate.hit("::ffff:192.0.2.1"))
        self.assertFalse(rate.hit("::FFFF:c000:201"))
        self.assertTrue(rate.hit("2001:db8::1"))
        self.assertTrue(rate.hit("2001:0db8:0::1"))
        self.assertFalse(rate.hit("2001:db8:0:0:0:0:0:1"))  # one address, however written

    def test_off_and_settable(self) -> None:
        rate = ConnectionRate(0, clock=self.clock)
        for _ in range(1000):
            self.assertTrue(rate.hit("192.0.2.1"))
        self.assertEqual(len(rate), 0)
        rate.per_minute = 3
        self.assertEqual([rate.hit("192.0.2.1") for _ in range(4)], [True, True, True, False])
        rate.per_minute = 5
        self.assertTrue(rate.hit("192.0.2.1"))
        rate.exempt = ["192.0.2.1", "::ffff:192.0.2.9"]
        self.assertTrue(all(rate.hit("192.0.2.1") for _ in range(100)))
        self.assertTrue(all(rate.hit("192.0.2.9") for _ in range(100)))

    def test_many_addresses_bounded(self) -> None:
        rate = ConnectionRate(5, clock=self.clock, max_clients=1000)
        for _ in range(5):
            rate.hit("192.0.2.1")
        self.clock.now += 120
        with self.assertLogs("ismail.antispam", "WARNING"):
            for i in range(20_000):
                rate.hit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        self.assertLessEqual(len(rate), 1000)
        # Forgetting only forgives: the latest clients are still counted.
        for _ in range(4):
            self.assertTrue(rate.hit("10.0.78.31"))
        self.assertFalse(rate.hit("10.0.78.31"))

    def test_idle_clients_forgotten_first(self) -> None:
        rate = ConnectionRate(5, clock=self.clock, max_clients=100)
        for i in range(99):
            rate.hit(f"10.0.0.{i}")
        self.clock.now += 180
        for _ in range(5):
            rate.hit("192.0.2.1")
        rate.hit("192.0.2.2")  # over the bound: the 99 idle ones go, the active one stays
        self.assertEqual(len(rate), 2)
        self.assertFalse(rate.hit("192.0.2.1"))

    def test_thread_safe_and_fast(self) -> None:
        rate = ConnectionRate(1_000_000, clock=self.clock)  # a real clock could cross a minute

        def work(n: int) -> None:
            for i in range(20_000):
                rate.hit(f"10.0.{n}.{i % 200}")
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - started
        self.assertAlmostEqual(sum(rate.count(f"10.0.{n}.{i}") for n in range(4) for i in range(200)),
                               80_000, delta=1)
        print(f"\n  ratelimit: {took / 80_000 * 1e6:.2f} us per hit (4 threads)", end=" ")


if __name__ == "__main__":
    unittest.main()
