"""ETRN from our side (queue/etrn.py): the setting's syntax, and a backup that is down."""
import unittest

from ismail.config import ConfigError, from_dict
from ismail.queue.etrn import at_start, parse_host
from tests.support import free_port


class ParseTest(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(parse_host("backup.example.com"), ("backup.example.com", 25))
        self.assertEqual(parse_host("192.0.2.25:2525"), ("192.0.2.25", 2525))
        self.assertEqual(parse_host("[2001:db8::25]:26"), ("2001:db8::25", 26))
        self.assertEqual(parse_host("[2001:db8::25]"), ("2001:db8::25", 25))
        self.assertEqual(parse_host("2001:db8::25"), ("2001:db8::25", 25))  # bare: no port
        for bad in ("", "a b.example", "x.example:0", "x.example:70000", "x.example:port",
                    "[2001:db8::25"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                parse_host(bad)

    def test_a_bad_setting_names_the_field(self):
        with self.assertRaises(ConfigError) as caught:
            from_dict({"outgoing": {"etrn_hosts": ["backup.example.com", "x.example:0"]}})
        self.assertIn("outgoing.etrn_hosts[1]", str(caught.exception))


class BackupDownTest(unittest.TestCase):
    def test_a_backup_that_does_not_answer_is_logged_and_left_alone(self):
        port = free_port()  # nothing listens there
        settings, _ = from_dict({"primary_domain": "example.test", "server_name": "mx.example.test",
                                 "outgoing": {"etrn_hosts": [f"127.0.0.1:{port}"]}})
        with self.assertLogs("ismail.etrn", "WARNING") as logs:
            thread = at_start(settings)
            thread.join(30)
        self.assertFalse(thread.is_alive())
        self.assertIn(f"ETRN at 127.0.0.1:{port} failed", logs.output[0])

    def test_no_hosts_no_thread(self):
        settings, _ = from_dict({"primary_domain": "example.test"})
        self.assertIsNone(at_start(settings))


if __name__ == "__main__":
    unittest.main()
