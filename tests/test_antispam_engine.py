"""The anti-spam engine in-process: today's counters, the rate limit's exemptions, the
greylist kept across a stop, and the verdicts a session gets without any DNS."""
from __future__ import annotations

import datetime
import json
import shutil
import tempfile
import unittest
from pathlib import Path

from ismail.antispam.engine import Antispam, AntispamState
from ismail.antispam.state import GREYLIST_FILE
from ismail.config import from_dict
from ismail.stats import Stats


class NoDNS:
    """A resolver that must not be asked."""

    def __getattr__(self, name):
        raise AssertionError(f"DNS asked ({name}) although no check needs it")


QUIET = {"rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off"}


class EngineTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-engine-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.stats = Stats()

    def engine(self, antispam: dict, access: dict | None = None, state: AntispamState | None = None) -> Antispam:
        settings = from_dict({"server_name": "mx.example.test", "primary_domain": "example.test",
                              "antispam": {**QUIET, **antispam}, "access": access or {}})[0]
        if state is None:
            state = AntispamState(self.dir, self.stats)
            self.addCleanup(state.stop)
        return Antispam(settings, NoDNS(), state)

    def test_counters_start_again_each_day(self) -> None:
        day = [datetime.date(2026, 12, 4)]
        state = AntispamState(self.dir, self.stats, today=lambda: day[0])
        self.addCleanup(state.stop)
        state.count("antispam_greylisted")
        state.count("antispam_greylisted")
        self.stats.add("messages_received", 5)
        self.assertEqual(self.stats.get("antispam_greylisted"), 2)
        day[0] = datetime.date(2026, 12, 5)
        state.count("antispam_spf_refused")
        snap = self.stats.snapshot()
        self.assertEqual(snap["antispam_greylisted"], 0)
        self.assertEqual(snap["antispam_spf_refused"], 1)
        self.assertEqual(snap["messages_received"], 5, "only the anti-spam counters are per day")

    def test_rate_limit_and_whitelisted_networks(self) -> None:
        engine = self.engine({"connection_rate": 3}, {"whitelist": ["192.0.2.0/24"]})
        self.assertEqual([engine.admit("198.51.100.7") for _ in range(5)], [True] * 3 + [False] * 2)
        self.assertTrue(all(engine.admit("192.0.2.9") for _ in range(10)))
        self.assertEqual(self.stats.get("antispam_rate_refused"), 2)
        self.assertTrue(all(self.engine({"connection_rate": 0}).admit("198.51.100.8") for _ in range(100)))

    def test_black_and_white_lists_at_mail_from(self) -> None:
        engine = self.engine({}, {"blacklist": ["*@spam.test", "203.0.113.0/24"], "whitelist": ["boss@spam.test"]})
        self.assertTrue(engine.client("198.51.100.1").mail("x@spam.test", "h").startswith(b"554 5.7.1"))
        self.assertIsNone(engine.client("198.51.100.1").mail("boss@spam.test", "h"), "white wins")
        self.assertIn(b"Client host", engine.client("203.0.113.5").mail("a@ok.test", "h"))
        self.assertIsNone(engine.client("198.51.100.1").mail("a@ok.test", "h"))

    def test_greylist_survives_a_stop(self) -> None:
        state = AntispamState(self.dir, self.stats)
        engine = self.engine({"greylisting": True, "greylist_delay_seconds": 1}, state=state)
        checks = engine.client("198.51.100.1")
        checks.mail("a@sender.test", "h")
        self.assertTrue(checks.rcpt("user@example.test").startswith(b"451 4.7.1"))
        state.stop()
        saved = json.loads((self.dir / GREYLIST_FILE).read_text())
        self.assertTrue(saved, "the greylist was written at stop")
        state2 = AntispamState(self.dir, self.stats)
        self.addCleanup(state2.stop)
        grey = self.engine({"greylisting": True, "greylist_delay_seconds": 1}, state=state2).greylist
        self.assertEqual(len(grey), len(state._greylist))

    def test_verdicts_are_remembered_so_a_returning_client_waits_for_nothing(self) -> None:
        class CountingDNS:
            def __init__(self) -> None:
                self.asked = 0

            def ptr(self, ip):
                self.asked += 1
                return ["mail.sender.test"]

            def a(self, name):
                self.asked += 1
                return ["198.51.100.1"] if name == "mail.sender.test" else []

            def txt(self, name):
                self.asked += 1
                return ["v=spf1 ip4:198.51.100.0/24 -all"] if name == "sender.test" else []

            def mx(self, name):
                return []

            def aaaa(self, name):
                return []

        settings = from_dict({"server_name": "mx.example.test", "primary_domain": "example.test",
                              "antispam": {"rdns": "tag", "spf": "tag", "dmarc": "off", "dkim": "off",
                                           "dnsbl": ["bl.test"]}})[0]
        state = AntispamState(self.dir, self.stats)
        self.addCleanup(state.stop)
        dns = CountingDNS()
        engine = Antispam(settings, dns, state)
        first = engine.client("198.51.100.1")
        self.assertTrue(first.may_wait(b"MAIL FROM:<a@sender.test>\r\n", "mail.sender.test"))
        self.assertIsNone(first.mail("a@sender.test", "mail.sender.test"))
        self.assertEqual((first.rdns.result, first.spf.result, first.listing), ("pass", "pass", None))
        asked = dns.asked
        again = engine.client("198.51.100.1")
        self.assertFalse(again.may_wait(b"MAIL FROM:<A@sender.test> SIZE=100\r\n", "mail.sender.test"))
        self.assertTrue(again.may_wait(b"MAIL FROM:<a@sender.test>\r\nMAIL FROM:<b@sender.test>\r\n",
                                       "mail.sender.test"), "one sender not known yet: a thread waits")
        self.assertIsNone(again.mail("a@sender.test", "mail.sender.test"))
        self.assertEqual((again.rdns.result, again.spf.result), ("pass", "pass"))
        self.assertEqual(dns.asked, asked, "nothing asked again")
        self.assertTrue(engine.client("198.51.100.2").may_wait(b"MAIL FROM:<a@sender.test>\r\n", "h"))

    def test_content_rule_verdicts(self) -> None:
        engine = self.engine({"rules": [
            {"name": "pills", "where": "subject", "match": "contains", "pattern": "cheap pills", "action": "junk"},
            {"name": "invoices", "where": "from", "match": "regex", "pattern": r"@billing\.test>?$",
             "action": "folder", "folder": "Invoices"},
            {"name": "bad", "where": "body", "match": "contains", "pattern": "wire the money", "action": "reject"}]})
        checks = engine.client("198.51.100.1")
        checks.mail("a@x.test", "h")
        v = checks.message(b"From: a@x.test\r\nSubject: CHEAP Pills now\r\n\r\nhi\r\n")
        self.assertEqual((v.reply, v.folder), (None, "Junk"))
        self.assertIn(b"X-Spam-Flag: YES", v.header)
        v = checks.message(b"From: <pay@billing.test>\r\nSubject: May\r\n\r\nhi\r\n")
        self.assertEqual(v.folder, "Invoices")
        self.assertNotIn(b"X-Spam-Flag", v.header, "filing into a folder is not a spam verdict")
        v = checks.message(b"From: a@x.test\r\nSubject: hi\r\n\r\nplease wire the money\r\n")
        self.assertTrue(v.reply.startswith(b"550 5.7.1"))
        v = checks.message(b"From: a@x.test\r\nSubject: hi\r\n\r\nhello\r\n")
        self.assertEqual((v.reply, v.folder), (None, ""))
        self.assertTrue(v.header.startswith(b"Authentication-Results: mx.example.test"), v.header)
        self.assertEqual(self.stats.get("antispam_rules_tagged"), 1)
        self.assertEqual(self.stats.get("antispam_rules_refused"), 1)


if __name__ == "__main__":
    unittest.main()
