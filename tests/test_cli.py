"""The command line as a user meets it: one clear line and an exit code, never a traceback."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from ismail import __version__
from tests.support import ROOT, cli, free_port


class CliTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-cli-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def write(self, settings: dict) -> Path:
        path = self.dir / "ismail.json"
        path.write_text(json.dumps(settings))
        return path

    def assertOneLineError(self, r, code: int, *words: str):
        self.assertEqual(r.returncode, code, r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        self.assertTrue(r.stderr.startswith("ismail: error: "), r.stderr)
        for w in words:
            self.assertIn(w, r.stderr)

    def test_version(self):
        r = subprocess.run([sys.executable, "-m", "ismail", "--version"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0)
        self.assertEqual(r.stdout.strip(), f"ISMail {__version__}")

    def test_check_config_prints_settings_without_the_password(self):
        self.write({"primary_domain": "example.test",
                    "smarthost": {"enabled": True, "host": "relay.example.net", "port": 587,
                                  "authenticate": True, "account": "me", "password": "hunter2"}})
        r = cli(self.dir, "check-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("hunter2", r.stdout)
        shown = json.loads(r.stdout.split("\n", 1)[1])
        self.assertEqual(shown["smarthost"]["port"], 587)
        self.assertEqual(shown["incoming"], {"max_connections": 20, "max_per_host": 5})

    def test_invalid_settings_stop_start_up_with_exit_2_and_the_file_is_kept(self):
        path = self.write({"incoming": {"max_connections": 500}})
        before = path.read_bytes()
        for command in (["check-config"], ["run"]):
            r = cli(self.dir, *command)
            self.assertOneLineError(r, 2, "incoming.max_connections", "500", "10", "100")
        self.assertEqual(path.read_bytes(), before)

    def test_broken_json_names_the_file(self):
        path = self.dir / "ismail.json"
        path.write_text('{"listen": ["127.0.0.1:25",]}')
        r = cli(self.dir, "check-config")
        self.assertOneLineError(r, 2, str(path))
        self.assertEqual(path.read_text(), '{"listen": ["127.0.0.1:25",]}')

    def test_accounts(self):
        self.write({"primary_domain": "example.test"})
        r = cli(self.dir, "account", "add", "Ann@Example.test", stdin="pw1\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue((self.dir / "mailboxes" / "example.test" / "ann" / "new").is_dir())
        self.assertNotIn("pw1", (self.dir / "accounts.json").read_text())
        listing = cli(self.dir, "account", "list").stdout
        for address in ("ann@example.test", "postmaster@example.test", "root@example.test"):
            self.assertIn(address, listing)
        self.assertOneLineError(cli(self.dir, "account", "add", "ann@example.test", stdin="x\n"), 1, "ann@example.test")
        self.assertOneLineError(cli(self.dir, "account", "add", "bob@elsewhere.org", stdin="x\n"), 1, "elsewhere.org")
        self.assertOneLineError(cli(self.dir, "account", "remove", "postmaster@example.test"), 1, "postmaster")
        self.assertOneLineError(cli(self.dir, "account", "add", "carl@example.test", stdin="\n"), 1)
        self.assertEqual(cli(self.dir, "account", "passwd", "ann@example.test", stdin="pw2\n").returncode, 0)
        self.assertEqual(cli(self.dir, "account", "remove", "ann@example.test").returncode, 0)
        self.assertNotIn("ann@", cli(self.dir, "account", "list").stdout)
        self.assertTrue((self.dir / "mailboxes" / "example.test" / "ann").is_dir())  # mail is never deleted

    def test_corrupt_accounts_file_is_reported_and_left_alone(self):
        self.write({"primary_domain": "example.test"})
        accounts = self.dir / "accounts.json"
        accounts.write_text("{ this is not json")
        for args in (("account", "list"), ("account", "add", "new@example.test")):
            r = cli(self.dir, *args, stdin="pw\n")
            self.assertOneLineError(r, 1, "accounts.json")
        self.assertEqual(accounts.read_text(), "{ this is not json")

    def test_run_with_a_corrupt_accounts_file_says_so_in_one_line(self):
        """The server refuses to start (setting the file aside would refuse every account's
        mail): one sentence naming the file, not a traceback, and the file left alone."""
        self.write({"primary_domain": "example.test", "listen": [f"127.0.0.1:{free_port()}"],
                    "pop3": {"enabled": False}, "imap": {"enabled": False},
                    "tls": {"self_signed": False}, "dkim": {"auto_keys": False},
                    "smarthost": {"enabled": True, "host": "127.0.0.1", "port": 9, "exclusive": True,
                                  "tls": "none"}})
        accounts = self.dir / "accounts.json"
        accounts.write_text('{"accounts": [garbage')
        r = cli(self.dir, "run", timeout=60)
        self.assertOneLineError(r, 1, "accounts.json", "not valid JSON", "fix or restore it")
        self.assertEqual(accounts.read_text(), '{"accounts": [garbage')

    def test_queue_list_goes_on_past_an_unreadable_entry(self):
        from ismail.fsutil import new_queue_id
        from ismail.queue.spool import QueueEntry, QueuedRecipient, file_head
        self.write({"primary_domain": "example.test"})
        messages = self.dir / "queue" / "messages"
        messages.mkdir(parents=True)
        ids = []
        for n in range(3):
            e = QueueEntry(id=new_queue_id(), sender=f"s{n}@example.test",
                           recipients=[QueuedRecipient(f"r{n}@remote.test")], arrival=1.0e9 + n, size=5)
            (messages / f"{e.id}.msg").write_bytes(file_head(e) + b"x\r\n\r\n")
            ids.append(e.id)
        (messages / f"{ids[1]}.msg").write_bytes(b"ISMAIL-QUEUE 1 9999\r\nnot json")
        r = cli(self.dir, "queue", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("<s0@example.test>", r.stdout)
        self.assertIn("<s2@example.test>", r.stdout)
        self.assertNotIn("<s1@example.test>", r.stdout)
        self.assertIn(ids[1], r.stderr)
        self.assertIn("corrupt", r.stderr)
        self.assertEqual(len(list((self.dir / "queue" / "corrupt").iterdir())), 1)  # set aside, not lost

    def test_run_on_a_port_in_use_says_so(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            self.write({"listen": [f"127.0.0.1:{port}"]})
            r = cli(self.dir, "run", timeout=30)
        self.assertOneLineError(r, 1, f"127.0.0.1:{port}", "in use")

    def test_usage_errors_exit_2(self):
        r = cli(self.dir, "account", "frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertNotIn("Traceback", r.stderr)

    def test_data_dir_from_environment(self):
        self.write({"primary_domain": "env.example"})
        env = {**os.environ, "ISMAIL_HOME": str(self.dir)}
        r = subprocess.run([sys.executable, "-m", "ismail", "check-config"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('"primary_domain": "env.example"', r.stdout)


if __name__ == "__main__":
    unittest.main()
