"""Routes and relay domains as mail meets them (issue 14).

End to end: a real ISMail whose route for corp.test points at an smtp-sink, while its
SmartHost (another sink) takes everything else.  In process: the SMTP session accepting
relay-domain recipients from strangers (only listed ones when a list is set), ETRN's
replies, and the longer lifetime of a relay domain.
"""
import smtplib
import time
import unittest

from ismail.store.routes import RelayDomain, Route
from tests.support import cli
from tests.test_delivery import DeliveryCase, new_token, queue_ids, smarthost, submit
from tests.test_session import SessionTestCase

DOMAINS = {"example.test", "other.test"}


class RouteDeliveryTest(DeliveryCase):
    def test_mail_only_relayed_for_a_backup_domain_meets_the_content_checks(self):
        # The primary trusts its backup, so what the backup passes on is checked nowhere else.
        s = self.server({"smarthost": smarthost(9), "trusted_networks": ["127.0.0.1/32"],
                         "antispam": {"rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off",
                                      "connection_rate": 0, "rules": [
                                          {"name": "pills", "where": "subject", "match": "contains",
                                           "pattern": "cheap pills", "action": "reject", "enabled": True}]}},
                        start=False)
        r = cli(s.data_dir, "relay-domain", "add", "primary.test")
        self.assertEqual(r.returncode, 0, r.stderr)
        s.start()
        replies = {}
        for subject in ("cheap pills today", "the minutes"):
            with smtplib.SMTP("127.0.0.1", s.port, timeout=30, source_address=("127.0.0.2", 0)) as c:
                c.ehlo("stranger.example")
                self.assertEqual(c.mail("someone@elsewhere.example")[0], 250)
                self.assertEqual(c.rcpt("ann@primary.test")[0], 250)
                try:
                    code, text = c.data(f"From: someone@elsewhere.example\r\nSubject: {subject}\r\n\r\nx\r\n")
                except smtplib.SMTPDataError as e:
                    code, text = e.smtp_code, e.smtp_error
                replies[subject] = (code, text)
        self.assertEqual(replies["cheap pills today"][0], 550, replies)
        self.assertIn(b"5.7.1", replies["cheap pills today"][1])
        self.assertEqual(replies["the minutes"][0], 250, replies)
        self.assertEqual(len(queue_ids(s.data_dir)), 1)  # only the clean one waits for the primary

    def test_a_route_overrides_the_smarthost_for_its_domain_only(self):
        route_sink = self.sink(name="exchange")
        smart = self.sink(name="smarthost")
        s = self.server({"smarthost": smarthost(smart.port), "retry": {"first_seconds": 1,
                                                                        "max_interval_seconds": 2}},
                        start=False)
        r = cli(s.data_dir, "route", "add", "corp.test", "127.0.0.1", "--port", str(route_sink.port),
                "--tls", "none")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"corp.test\t127.0.0.1:{route_sink.port}\ttls none",
                      cli(s.data_dir, "route", "list").stdout)
        s.start()
        inside, outside = new_token(), new_token()
        submit(s.port, "user@example.test", ["ann@corp.test"], inside)
        submit(s.port, "user@example.test", ["bob@elsewhere.test"], outside)
        self.wait_delivered(route_sink, inside)
        self.wait_delivered(smart, outside)
        self.assertEqual((route_sink.count(outside), smart.count(inside)), (0, 0))
        [dump] = route_sink.dumps_with(inside)
        self.assertEqual(dump.rcpts, ["<ann@corp.test>"])
        # Removed while running: the SmartHost takes corp.test again (within a second).
        self.assertEqual(cli(s.data_dir, "route", "remove", "corp.test").returncode, 0)
        time.sleep(1.2)
        later = new_token()
        submit(s.port, "user@example.test", ["ann@corp.test"], later)
        self.wait_delivered(smart, later)
        self.assertEqual(route_sink.count(later), 0)

    def test_a_route_with_required_tls_defers_when_the_host_offers_none(self):
        route_sink = self.sink(name="plain")  # smtp-sink offers no STARTTLS by default
        smart = self.sink(name="smarthost")
        s = self.server({"smarthost": smarthost(smart.port)}, start=False)
        self.assertEqual(cli(s.data_dir, "route", "add", "corp.test", "127.0.0.1", "--port",
                             str(route_sink.port), "--tls", "starttls").returncode, 0)
        s.start()
        token = new_token()
        qid = submit(s.port, "user@example.test", ["ann@corp.test"], token)
        self.wait_for(lambda: "STARTTLS" in cli(s.data_dir, "queue", "list").stdout, 20,
                      "the queue to say why it waits")
        self.assertEqual((route_sink.count(token), smart.count(token)), (0, 0))
        self.assertIn(qid, cli(s.data_dir, "queue", "list").stdout)


class RelayDomainSessionTest(SessionTestCase):
    def setUp(self):
        super().setUp()
        self.routes = self.server.routes
        self.routes.reload_interval = 0

    def rcpt(self, address, trusted=False):
        s = self.session(trusted=trusted)
        s.feed(b"EHLO c.example\r\nMAIL FROM:<a@elsewhere.example>\r\n")
        return s.feed(f"RCPT TO:<{address}>\r\n".encode())

    def test_strangers_may_send_to_a_relay_domain_and_nowhere_else(self):
        self.assertTrue(self.rcpt("x@backup.example").startswith(b"554 5.7.1"))
        self.routes.set_relay_domain(RelayDomain("backup.example"), local_domains=DOMAINS)
        self.assertTrue(self.rcpt("x@Backup.Example").startswith(b"250"))
        self.assertTrue(self.rcpt("x@other.example").startswith(b"554 5.7.1"))
        self.assertTrue(self.rcpt("x@sub.backup.example").startswith(b"554 5.7.1"))

    def test_a_recipient_list_refuses_what_the_primary_would_refuse(self):
        self.routes.set_relay_domain(RelayDomain("backup.example", ("ann@backup.example",)),
                                     local_domains=DOMAINS)
        self.assertTrue(self.rcpt("Ann@backup.example").startswith(b"250"))
        self.assertTrue(self.rcpt("nobody@backup.example").startswith(b"550 5.1.1"))

    def test_relayed_mail_is_queued_not_stored(self):
        self.routes.set_relay_domain(RelayDomain("backup.example"), local_domains=DOMAINS)
        s = self.session()
        answer = s.feed(b"EHLO c\r\nMAIL FROM:<a@elsewhere.example>\r\nRCPT TO:<x@backup.example>\r\n"
                        b"DATA\r\n")
        self.assertTrue(answer.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n"), answer)
        self.assertTrue(s.feed(b"Subject: held\r\n\r\nx\r\n.\r\n").startswith(b"250"))
        [(entry, _)] = self.queued()
        self.assertEqual([r["address"] for r in entry["recipients"]], ["x@backup.example"])
        self.assertEqual(entry["sender"], "a@elsewhere.example")  # not a forward: no SRS

    def test_etrn_replies(self):
        s = self.session()
        self.assertTrue(s.feed(b"ETRN backup.example\r\n").startswith(b"503"))  # before EHLO
        answer = s.feed(b"EHLO c\r\n")
        self.assertIn(b"250-ETRN\r\n", answer)
        self.assertTrue(s.feed(b"ETRN\r\n").startswith(b"501"))
        self.assertTrue(s.feed(b"ETRN bad..name\r\n").startswith(b"501"))
        self.assertTrue(s.feed(b"ETRN #queue\r\n").startswith(b"458"))
        self.assertTrue(s.feed(b"ETRN backup.example\r\n").startswith(b"459 4.7.1"))
        self.routes.set_relay_domain(RelayDomain("backup.example"), local_domains=DOMAINS)
        # Not serving (no queue manager here): the server cannot start a run.
        self.assertTrue(s.feed(b"ETRN backup.example\r\n").startswith(b"459"))
        s.feed(b"MAIL FROM:<a@b.example>\r\n")
        self.assertTrue(s.feed(b"ETRN backup.example\r\n").startswith(b"503"))

    def test_relay_domains_may_have_a_longer_lifetime(self):
        self.assertEqual(self.server.lifetime_hours("backup.example"), self.config.retry.lifetime_hours)
        self.routes.set_relay_domain(RelayDomain("backup.example", (), 480), local_domains=DOMAINS)
        self.assertEqual(self.server.lifetime_hours("backup.example"), 480)
        self.assertEqual(self.server.lifetime_hours("elsewhere.example"), self.config.retry.lifetime_hours)

    def test_a_route_is_what_the_sender_uses(self):
        from ismail.queue.scheduler import QueueManager
        qm = QueueManager(self.server)
        self.routes.set_route(Route("corp.example", "exchange.corp.example", 2525, "tls", "relay", "pw"),
                              local_domains=DOMAINS, own_names={"mx.example.test"}, own_ports={25})
        [dest] = qm.sender.routes("corp.example")
        self.assertEqual((dest.host, dest.port, dest.tls, dest.account, dest.password, dest.verify),
                         ("exchange.corp.example", 2525, "tls", "relay", "pw", False))
        self.config.outgoing.require_tls_domains = ["corp.example"]
        [dest] = qm.sender.routes("corp.example")
        self.assertTrue(dest.verify)


if __name__ == "__main__":
    unittest.main()
