"""Two machines: a primary and a backup MX, each a real ISMail, found through DNS (issue 14).

127.0.0.11 plays the primary (MX 10 of primary.test), 127.0.0.12 the backup (MX 20), both
on the same port, with dnsmasq serving the MX and address records.  Postfix's smtp-source
sends 1,000 messages to the backup while the primary is down; the backup holds them; the
primary comes back and sends ETRN; every message arrives exactly once in the primary's
Maildir.  Then the same while the primary is killed (SIGKILL) half way through.

Each message is known by the queue id the backup gave it (its Received line on the primary):
"exactly once" = as many files as messages, and as many distinct ids.
"""
import re
import socket
import subprocess
import time
import unittest

from ismail.admin import Admin
from tests.support import Dnsmasq, ServerProcess, cli, free_port, require_program

MESSAGES = 1000
SESSIONS = 10
# A backup that would retry on its own only in an hour: the primary's ETRN is what moves it.
SLOW_RETRY = {"first_seconds": 3600, "max_interval_seconds": 3600, "lifetime_hours": 24}
BACKUP_ID = re.compile(rb"by mx2\.primary\.test \(ISMail\) with E?SMTPS?A? id ([0-9A-Za-z]+)")


def etrn(host: str, port: int, domain: str) -> bytes:
    with socket.create_connection((host, port), timeout=20) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO mx1.primary.test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        s.sendall(f"ETRN {domain}\r\n".encode())
        answer = f.readline()
        s.sendall(b"QUIT\r\n")
        return answer


class BackupMxTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.primary = cls.backup = cls.dns = None
        dnsmasq = require_program(cls(), "dnsmasq", "/usr/sbin/dnsmasq")
        cls.smtp_source = require_program(cls(), "smtp-source", "/usr/sbin/smtp-source")
        try:
            cls.dns = Dnsmasq(dnsmasq, ["--mx-host=primary.test,mx1.primary.test,10",
                                        "--mx-host=primary.test,mx2.primary.test,20",
                                        "--host-record=mx1.primary.test,127.0.0.11",
                                        "--host-record=mx2.primary.test,127.0.0.12"],
                              probe="primary.test")
            for _ in range(10):  # one port free on both addresses: MX hosts share the SMTP port
                port = free_port("127.0.0.11")
                try:
                    with socket.socket() as probe:
                        probe.bind(("127.0.0.12", port))
                    break
                except OSError:
                    continue
            common = {"dns_servers": [cls.dns.server], "smarthost": {"enabled": False},
                      "outgoing": {"mx_port": port, "max_connections": 4},
                      "incoming": {"max_connections": 100, "max_per_host": 10},
                      "trusted_networks": ["127.0.0.0/8"]}
            cls.primary = ServerProcess(settings={**common, "server_name": "mx1.primary.test",
                                                  "primary_domain": "primary.test",
                                                  "outgoing": {**common["outgoing"],
                                                               "etrn_hosts": [f"127.0.0.12:{port}"]}},
                                        accounts=("user@primary.test",), host="127.0.0.11", port=port)
            cls.backup = ServerProcess(settings={**common, "server_name": "mx2.primary.test",
                                                 "primary_domain": "backup.test", "retry": SLOW_RETRY},
                                       accounts=(), host="127.0.0.12", port=port)
            r = cli(cls.backup.data_dir, "relay-domain", "add", "primary.test", "--lifetime-hours", "480")
            assert r.returncode == 0, r.stderr
            cls.backup.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for server in (cls.primary, cls.backup):
            if server is not None:
                server.cleanup()
        if cls.dns is not None:
            cls.dns.stop()

    def send_to_backup(self, count):
        proc = subprocess.run([self.smtp_source, "-s", str(SESSIONS), "-m", str(count), "-l", "1024",
                    "-f", "sender@elsewhere.test", "-t", "user@primary.test",
                    f"127.0.0.12:{self.backup.port}"], capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertNotIn("error", proc.stderr.lower())

    def held(self) -> int:
        return Admin(self.backup.data_dir).queue_count()

    def wait_held(self, n, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.held() != n:
            time.sleep(0.2)
        return self.held()

    def wait_tried(self, n, timeout=120.0) -> int:
        """How many first tries the backup logged as deferred, once ``n`` have been: a held
        message whose first try is still to come would go straight to a primary started
        meanwhile, not through its ETRN."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.backup.log_text().count("status=deferred") < n:
            time.sleep(0.2)
        return self.backup.log_text().count("status=deferred")

    def arrived(self) -> list[bytes]:
        """The backup's queue id of each message in the primary's Maildir (new and cur)."""
        ids = []
        box = self.primary.maildir("user@primary.test")
        for sub in ("new", "cur"):
            folder = box / sub
            if folder.is_dir():
                for path in folder.iterdir():
                    found = BACKUP_ID.search(path.read_bytes()[:4096])
                    ids.append(found.group(1) if found else b"?")
        return ids

    def wait_arrived(self, n, timeout=180.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.primary.count("user@primary.test") < n:
            time.sleep(0.2)
        time.sleep(1.0)  # anything beyond n (a duplicate) would have shown by now
        return self.arrived()

    def test_backup_holds_mail_while_the_primary_is_down_then_each_message_arrives_once(self):
        # 1. The primary is down: the backup takes everything and holds it.
        self.send_to_backup(MESSAGES)
        self.assertEqual(self.wait_held(MESSAGES), MESSAGES)
        self.assertEqual(self.wait_tried(MESSAGES), MESSAGES)
        self.assertEqual(self.primary.count("user@primary.test"), 0)
        log = self.backup.log_text()
        self.assertIn("127.0.0.11", log)  # it did try the primary, the MX preferred over itself
        self.assertNotIn("loops back to myself", log)

        # 2. The primary comes back and asks for its mail: it sends ETRN to the backup by itself
        #    (outgoing.etrn_hosts), so the backup does not wait for its next retry, an hour away.
        self.primary.start()
        ids = self.wait_arrived(MESSAGES)
        self.assertEqual(len(ids), MESSAGES, self.primary.log_text()[-2000:])
        self.assertEqual(len(set(ids)), MESSAGES)
        self.assertNotIn(b"?", ids)
        self.assertEqual(self.wait_held(0), 0)
        self.assertIn(f"ETRN primary.test at 127.0.0.12:{self.backup.port}: 253 2.0.0 OK, "
                      f"{MESSAGES} pending messages for node primary.test started", self.primary.log_text())
        # Another domain is not the backup's to flush; an empty queue says so.
        self.assertTrue(etrn("127.0.0.12", self.backup.port, "elsewhere.test").startswith(b"459"))
        self.assertTrue(etrn("127.0.0.12", self.backup.port, "primary.test").startswith(b"251"))

        # 3. Down again; another thousand wait; the primary is killed half way through them.
        self.primary.stop()
        self.send_to_backup(MESSAGES)
        self.assertEqual(self.wait_held(MESSAGES), MESSAGES)
        before = self.primary.count("user@primary.test")
        self.primary.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.primary.count("user@primary.test") < before + MESSAGES // 2:
            time.sleep(0.01)
        self.primary.kill()
        got_then = self.primary.count("user@primary.test") - before
        self.assertLess(got_then, MESSAGES, "the kill came too late to test anything")
        time.sleep(1.0)  # the backup's transactions in flight fail and go back to waiting
        self.assertGreater(self.held(), 0)
        self.primary.start()  # ETRN again, at start
        ids = self.wait_arrived(2 * MESSAGES)
        self.assertEqual(len(ids), 2 * MESSAGES,
                         f"{len(ids) - len(set(ids))} duplicate(s); {got_then} had arrived at the kill")
        self.assertEqual(len(set(ids)), 2 * MESSAGES)
        self.assertEqual(self.wait_held(0), 0)
        self.assertEqual(list((self.primary.maildir("user@primary.test") / "tmp").iterdir()), [])


if __name__ == "__main__":
    unittest.main()
