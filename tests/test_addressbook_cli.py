"""`ismail alias|group|catch-all|domain-alias` against a running server, with swaks as the client.

The command line edits DATA/addresses.json in its own process; the server picks the change
up by itself (within a second) and the next message is delivered by it.
"""
import json
import subprocess
import time
import unittest

from tests.support import ServerProcess, cli, require_program

ACCOUNTS = ("user@example.test", "ann@example.test", "bob@example.test")


class AddressCliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess(settings={"additional_domains": ["other.test"]}, accounts=ACCOUNTS)
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()

    def setUp(self):
        self.swaks = require_program(self, "swaks")

    def run_cli(self, *args):
        return cli(self.server.data_dir, *args)

    def swaks_to(self, rcpt, sender="someone@elsewhere.example"):
        return subprocess.run([self.swaks, "--server", f"127.0.0.1:{self.server.port}", "--to", rcpt,
                               "--from", sender, "--helo", "client.example", "--timeout", "20",
                               "--header", f"Subject: to {rcpt}"],
                              capture_output=True, text=True, timeout=60)

    def wait_count(self, address, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.server.count(address) < n:
            time.sleep(0.05)
        return self.server.count(address)

    def deliver_after_edit(self, rcpt, sender="someone@elsewhere.example"):
        """swaks until the server has seen the edit (it reloads within a second), max 5 s."""
        deadline = time.monotonic() + 5
        while True:
            r = self.swaks_to(rcpt, sender)
            if r.returncode == 0 or time.monotonic() > deadline:
                return r
            time.sleep(0.3)

    def test_alias_add_list_deliver_remove(self):
        r = self.run_cli("alias", "add", "Sales@example.test", "ann@example.test", "bob@example.test")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("sales@example.test delivers to ann@example.test, bob@example.test", r.stdout)
        listed = self.run_cli("alias", "list")
        self.assertIn("sales@example.test\tann@example.test, bob@example.test", listed.stdout)
        before = (self.server.count("ann@example.test"), self.server.count("bob@example.test"))
        r = self.deliver_after_edit("sales@example.test")
        self.assertEqual(r.returncode, 0, r.stdout[-2000:])
        self.assertEqual(self.wait_count("ann@example.test", before[0] + 1), before[0] + 1)
        self.assertEqual(self.wait_count("bob@example.test", before[1] + 1), before[1] + 1)
        self.assertEqual(self.run_cli("alias", "remove", "sales@example.test").returncode, 0)
        deadline = time.monotonic() + 5
        while True:
            r = self.swaks_to("sales@example.test")
            if r.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("550 5.1.1", r.stdout)

    def test_refusals_name_the_conflict_and_change_nothing(self):
        path = self.server.data_dir / "addresses.json"
        before = path.read_bytes() if path.exists() else None
        cases = [
            (("alias", "add", "ann@example.test", "bob@example.test"), "ann@example.test"),  # shadows an account
            (("alias", "add", "x@nowhere.example", "ann@example.test"), "nowhere.example"),  # not our domain
            (("alias", "add", "bad address@example.test", "ann@example.test"), "bad address"),
            (("group", "add", "g@example.test", "ann@example.test", "--senders", "friends"), "friends"),
            (("catch-all", "add", "example.test", "nobody@example.test"), "nobody@example.test"),
            (("domain-alias", "add", "example.test", "other.test"), "example.test"),
            (("alias", "remove", "never@example.test"), "never@example.test"),
        ]
        for args, named in cases:
            with self.subTest(args=args):
                r = self.run_cli(*args)
                self.assertNotEqual(r.returncode, 0, r.stdout)
                self.assertIn(named, r.stderr)
                self.assertNotIn("Traceback", r.stderr)
        self.assertEqual(path.read_bytes() if path.exists() else None, before)

    def test_a_loop_through_aliases_and_groups_is_refused(self):
        self.assertEqual(self.run_cli("alias", "add", "loop-a@example.test", "loop-g@example.test",
                                      "ann@example.test").returncode, 1)  # loop-g does not exist yet
        self.assertEqual(self.run_cli("group", "add", "loop-g@example.test", "bob@example.test").returncode, 0)
        self.assertEqual(self.run_cli("alias", "add", "loop-a@example.test", "loop-g@example.test").returncode, 0)
        r = self.run_cli("group", "add", "loop-g@example.test", "bob@example.test", "loop-a@example.test")
        self.assertEqual(r.returncode, 1)
        self.assertIn("loop", r.stderr)
        book = json.loads((self.server.data_dir / "addresses.json").read_text())
        self.assertEqual(book["groups"]["loop-g@example.test"]["members"], ["bob@example.test"])
        for args in (("alias", "remove", "loop-a@example.test"), ("group", "remove", "loop-g@example.test")):
            self.assertEqual(self.run_cli(*args).returncode, 0)

    def test_group_members_only(self):
        r = self.run_cli("group", "add", "board@example.test", "ann@example.test", "user@example.test",
                         "--senders", "members")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("board@example.test\t(senders: members)", self.run_cli("group", "list").stdout)
        deadline = time.monotonic() + 5
        while True:
            r = self.swaks_to("board@example.test", sender="stranger@elsewhere.example")
            if "5.7.1" in r.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.assertIn("550 5.7.1", r.stdout)
        before = self.server.count("user@example.test")
        r = self.swaks_to("board@example.test", sender="ann@example.test")
        self.assertEqual(r.returncode, 0, r.stdout[-2000:])
        self.assertEqual(self.wait_count("user@example.test", before + 1), before + 1)
        self.assertEqual(self.run_cli("group", "remove", "board@example.test").returncode, 0)

    def test_catch_all_and_domain_alias(self):
        self.assertEqual(self.run_cli("catch-all", "add", "other.test", "bob@example.test").returncode, 0)
        self.assertEqual(self.run_cli("domain-alias", "add", "example.net", "example.test").returncode, 0)
        self.assertIn("other.test\tbob@example.test", self.run_cli("catch-all", "list").stdout)
        self.assertIn("example.net\texample.test", self.run_cli("domain-alias", "list").stdout)
        bob = self.server.count("bob@example.test")
        self.assertEqual(self.deliver_after_edit("whoever@other.test").returncode, 0)
        self.assertEqual(self.wait_count("bob@example.test", bob + 1), bob + 1)
        user = self.server.count("user@example.test")
        self.assertEqual(self.deliver_after_edit("user@example.net").returncode, 0)
        self.assertEqual(self.wait_count("user@example.test", user + 1), user + 1)
        # An account cannot be made in an alias domain, nor under an alias's address.
        r = cli(self.server.data_dir, "account", "add", "new@example.net", stdin="pw-123456\n")
        self.assertEqual(r.returncode, 1)
        self.assertIn("domain alias", r.stderr)
        for args in (("catch-all", "remove", "other.test"), ("domain-alias", "remove", "example.net")):
            self.assertEqual(self.run_cli(*args).returncode, 0)
        r = self.run_cli("catch-all", "remove", "other.test")
        self.assertEqual(r.returncode, 1)
        self.assertIn("has no catch-all", r.stderr)

    def test_removing_an_account_named_by_an_alias_warns(self):
        self.assertEqual(cli(self.server.data_dir, "account", "add", "temp@example.test",
                             stdin="pw-123456\n").returncode, 0)
        self.assertEqual(self.run_cli("alias", "add", "help@example.test", "temp@example.test",
                                      "ann@example.test").returncode, 0)
        r = cli(self.server.data_dir, "account", "remove", "temp@example.test")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("alias help@example.test", r.stderr)
        listed = self.run_cli("alias", "list")
        self.assertIn("temp@example.test", listed.stdout)  # a warning, not a silent edit
        self.assertEqual(self.run_cli("alias", "remove", "help@example.test").returncode, 0)


if __name__ == "__main__":
    unittest.main()
