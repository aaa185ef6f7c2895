import threading
import unittest

from ismail.net.limits import PER_HOST, TOTAL, ConnectionLimiter, Slot


class LimiterTest(unittest.TestCase):
    def test_per_host_limit_refuses_the_sixth_from_one_address(self):
        lim = ConnectionLimiter(20, 5)
        slots = [lim.acquire("127.0.0.1") for _ in range(5)]
        self.assertTrue(all(isinstance(s, Slot) for s in slots))
        self.assertEqual(lim.acquire("127.0.0.1"), PER_HOST)
        self.assertIsInstance(lim.acquire("127.0.0.2"), Slot)

    def test_total_limit_counts_every_host(self):
        lim = ConnectionLimiter(10, 5)
        for n in range(10):
            self.assertIsInstance(lim.acquire(f"127.0.0.{n + 2}"), Slot)
        self.assertEqual(lim.acquire("127.0.0.99"), TOTAL)
        self.assertEqual(lim.total, 10)

    def test_refused_connection_holds_nothing(self):
        lim = ConnectionLimiter(10, 1)
        lim.acquire("10.0.0.1")
        self.assertEqual(lim.acquire("10.0.0.1"), PER_HOST)
        self.assertEqual((lim.total, lim.count("10.0.0.1")), (1, 1))

    def test_release_is_idempotent(self):
        lim = ConnectionLimiter(10, 1)
        slot = lim.acquire("10.0.0.1")
        self.assertTrue(lim.release(slot))
        self.assertFalse(lim.release(slot))  # the second release must not free someone else's place
        other = lim.acquire("10.0.0.1")
        self.assertIsInstance(other, Slot)
        self.assertFalse(lim.release(slot))
        self.assertEqual(lim.count("10.0.0.1"), 1)
        self.assertFalse(lim.release(None))

    def test_per_host_dict_forgets_hosts_that_left(self):
        lim = ConnectionLimiter(100, 10)
        slots = [lim.acquire(f"10.0.{n // 250}.{n % 250}") for n in range(100)]
        for s in slots:
            lim.release(s)
        self.assertEqual(lim._per_host, {})
        self.assertEqual(lim.total, 0)

    def test_resize_applies_to_new_connections_only(self):
        lim = ConnectionLimiter(20, 5)
        held = [lim.acquire("127.0.0.1") for _ in range(5)]
        lim.resize(20, 3)
        self.assertEqual(lim.acquire("127.0.0.1"), PER_HOST)
        self.assertEqual(lim.count("127.0.0.1"), 5)  # open ones are not dropped
        for s in held[:2]:
            lim.release(s)
        self.assertEqual(lim.acquire("127.0.0.1"), PER_HOST)  # 3 still open = the new limit
        lim.release(held[2])
        self.assertIsInstance(lim.acquire("127.0.0.1"), Slot)
        lim.resize(20, 10)
        self.assertEqual(lim.limits, (20, 10))
        self.assertIsInstance(lim.acquire("127.0.0.1"), Slot)

    def test_concurrent_acquire_never_exceeds_limits(self):
        lim = ConnectionLimiter(50, 7)
        got: list = []
        lock = threading.Lock()

        def worker(ip):
            for _ in range(200):
                s = lim.acquire(ip)
                if isinstance(s, Slot):
                    with lock:
                        got.append(s)
                        self.assertLessEqual(lim.count(ip), 7)
                        self.assertLessEqual(lim.total, 50)
                    lim.release(s)

        threads = [threading.Thread(target=worker, args=(f"10.1.1.{i % 12}",)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(lim.total, 0)
        self.assertGreater(len(got), 0)


if __name__ == "__main__":
    unittest.main()
