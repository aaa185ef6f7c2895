"""ISMail against real programs nobody here wrote: swaks, Postfix's smtp-source, nmap.

Each test starts a real ``python3 -m ismail run`` on a free loopback port and drives it
with the peer program exactly as an administrator would from a shell, then looks at
what a user would look at: the program's exit code and transcript, and the files in
the Maildir and the outgoing queue.

The peers come from Debian packages (swaks, postfix, nmap).  ``require_program`` skips
a test on a developer machine without them, and fails it under CI=true.
"""
from __future__ import annotations

import email
import email.policy
import mailbox
import subprocess
import sys
import time
import unittest
from pathlib import Path

from tests.support import ServerProcess, SMTPTalk, require_program

# What the relay tests of nmap's smtp-open-relay.nse (nmap 7.93) send, in its order.
# Placeholders: {frm} / {to} are the local parts ("antispam" / "relaytest"), {dom} the
# script's domain, {ip} the server's IP address and {srv} the name in the server's banner.
NSE_RELAY_PATTERNS = [
    ("", "{to}@{dom}"),
    ("{frm}@{dom}", "{to}@{dom}"),
    ("{frm}@{srv}", "{to}@{dom}"),
    ("{frm}@[{ip}]", "{to}@{dom}"),
    ("{frm}@[{ip}]", "{to}%{dom}@[{ip}]"),
    ("{frm}@[{ip}]", "{to}%{dom}@{srv}"),
    ("{frm}@[{ip}]", '"{to}@{dom}"'),
    ("{frm}@[{ip}]", '"{to}%{dom}"'),
    ("{frm}@[{ip}]", "{to}@{dom}@[{ip}]"),
    ("{frm}@[{ip}]", '"{to}@{dom}"@[{ip}]'),
    ("{frm}@[{ip}]", "{to}@{dom}@{srv}"),
    ("{frm}@[{ip}]", "@[{ip}]:{to}@{dom}"),
    ("{frm}@[{ip}]", "@{srv}:{to}@{dom}"),
    ("{frm}@[{ip}]", "{dom}!{to}"),
    ("{frm}@[{ip}]", "{dom}!{to}@[{ip}]"),
    ("{frm}@[{ip}]", "{dom}!{to}@{srv}"),
]

NSE_SCRIPT = Path("/usr/share/nmap/scripts/smtp-open-relay.nse")
NMAP_OPEN = "Server is an open relay"
NMAP_CLOSED = "Server doesn't seem to be an open relay, all tests failed"


def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def stored_files(data_dir: Path) -> list[Path]:
    """Every message file in any Maildir (new/ and cur/) under DATA/mailboxes."""
    root = data_dir / "mailboxes"
    if not root.is_dir():
        return []
    return sorted(p for sub in ("new", "cur") for p in root.glob(f"*/*/{sub}/*") if p.is_file())


def queued_files(data_dir: Path) -> list[Path]:
    messages = data_dir / "queue" / "messages"
    return sorted(messages.iterdir()) if messages.is_dir() else []


class PeerTest(unittest.TestCase):
    def server(self, settings: dict | None = None,
               accounts: tuple[str, ...] = ("user@example.test",)) -> ServerProcess:
        s = ServerProcess(settings, accounts)
        self.addCleanup(s.cleanup)
        s.start()
        return s

    def messages(self, server: ServerProcess, address: str = "user@example.test") -> list[email.message.Message]:
        box = mailbox.Maildir(server.maildir(address), factory=None, create=False)
        return [box[key] for key in box.keys()]

    def diagnose(self, server: ServerProcess, proc: subprocess.CompletedProcess | None = None) -> str:
        text = ""
        if proc is not None:
            text += f"\n--- exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-2000:]}"
        return text + f"\n--- server log\n{server.log_text()[-3000:]}"


class SwaksTest(PeerTest):
    def swaks(self, server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
        swaks = require_program(self, "swaks")
        return run([swaks, "--server", "127.0.0.1", "--port", str(server.port), *args], timeout=60)

    def test_swaks_delivers_to_local_account(self):
        server = self.server()
        body = "Hello from swaks.\nSecond line of the swaks test body."
        proc = self.swaks(server, "--from", "a@example.org", "--to", "user@example.test",
                          "--header", "Subject: swaks test", "--body", body)
        self.assertEqual(proc.returncode, 0, self.diagnose(server, proc))
        self.assertIn("250 2.0.0", proc.stdout)
        msgs = self.messages(server)
        self.assertEqual(len(msgs), 1, self.diagnose(server, proc))
        msg = msgs[0]
        self.assertEqual(msg["Subject"], "swaks test")
        self.assertEqual(msg["Return-Path"], "<a@example.org>")
        self.assertEqual(len(msg.get_all("Return-Path")), 1)
        received = msg.get_all("Received") or []
        self.assertEqual(len(received), 1, received)
        self.assertIn("by mx.example.test", " ".join(received[0].split()))
        self.assertIn("<user@example.test>", received[0])
        self.assertEqual(msg.get_payload().rstrip("\n"), body)
        # Maildir files use LF line ends; no CR may survive from the SMTP stream.
        raw = next(p for p in stored_files(server.data_dir)).read_bytes()
        self.assertNotIn(b"\r", raw)

    def test_swaks_pipelining_two_local_recipients(self):
        server = self.server()
        body = "Pipelined message for two local mailboxes."
        proc = self.swaks(server, "--pipeline", "--from", "a@example.org",
                          "--to", "user@example.test,postmaster@example.test",
                          "--header", "Subject: swaks pipelined", "--body", body)
        self.assertEqual(proc.returncode, 0, self.diagnose(server, proc))
        # swaks really pipelined: it sent DATA before it read the reply to MAIL FROM.
        lines = [line.strip() for line in proc.stdout.splitlines()]
        data_sent = lines.index("-> DATA")
        mail_ok = next((i for i, line in enumerate(lines)
                        if line.startswith(("<-  250 2.1.0", "<- 250 2.1.0"))), None)
        self.assertIsNotNone(mail_ok, "no 250 for MAIL FROM:\n" + proc.stdout)
        self.assertLess(data_sent, mail_ok, "swaks did not pipeline:\n" + proc.stdout)
        for address in ("user@example.test", "postmaster@example.test"):
            with self.subTest(mailbox=address):
                msgs = self.messages(server, address)
                self.assertEqual(len(msgs), 1, self.diagnose(server, proc))
                self.assertEqual(msgs[0]["Subject"], "swaks pipelined")
                self.assertEqual(msgs[0]["Return-Path"], "<a@example.org>")
                self.assertIn("by mx.example.test", " ".join(msgs[0]["Received"].split()))
                self.assertEqual(msgs[0].get_payload().rstrip("\n"), body)
        self.assertEqual(len(stored_files(server.data_dir)), 2)
        self.assertEqual(queued_files(server.data_dir), [])

    def test_swaks_unknown_local_user_is_refused(self):
        server = self.server()
        proc = self.swaks(server, "--from", "a@example.org", "--to", "nobody@example.test",
                          "--header", "Subject: to nobody", "--body", "should not arrive")
        self.assertNotEqual(proc.returncode, 0, self.diagnose(server, proc))
        self.assertIn("550 5.1.1", proc.stdout + proc.stderr)
        self.assertNotIn("354", proc.stdout, "swaks got as far as DATA")
        self.assertEqual(stored_files(server.data_dir), [])
        self.assertEqual(queued_files(server.data_dir), [])
        self.assertFalse(server.maildir("nobody@example.test").exists())


class SmtpSourceTest(PeerTest):
    MESSAGES = 2000
    SESSIONS = 10
    LENGTH = 2048

    def test_smtp_source_2000_messages_10_sessions(self):
        smtp_source = require_program(self, "smtp-source", "/usr/sbin/smtp-source")
        server = self.server({"incoming": {"max_connections": 100, "max_per_host": 10}})
        started = time.monotonic()
        proc = run([smtp_source, "-s", str(self.SESSIONS), "-m", str(self.MESSAGES),
                    "-l", str(self.LENGTH), "-f", "sender@example.org", "-t", "user@example.test",
                    f"127.0.0.1:{server.port}"], timeout=300)
        elapsed = time.monotonic() - started
        at_exit = server.count()
        print(f"\n[smtp-source] {self.MESSAGES} messages, {self.SESSIONS} sessions in {elapsed:.1f}s: "
              f"{self.MESSAGES / elapsed:.0f} messages/s", file=sys.stderr)
        self.assertEqual(proc.returncode, 0, self.diagnose(server, proc))
        for bad in ("421", "error", "fatal", "warning"):
            self.assertNotIn(bad, proc.stderr.lower(), self.diagnose(server, proc))
        new = server.maildir() / "new"
        count, deadline = at_exit, time.monotonic() + 60
        while count < self.MESSAGES and time.monotonic() < deadline:
            time.sleep(0.2)
            count = server.count()
        self.assertEqual(count, self.MESSAGES, self.diagnose(server, proc))
        # 250 means "on disk": all of them were there when smtp-source had its last reply.
        self.assertEqual(at_exit, self.MESSAGES, "messages appeared only after their 250")
        files = sorted(new.iterdir())
        self.assertEqual(len(files), self.MESSAGES)
        self.assertEqual(list((server.maildir() / "tmp").iterdir()), [])
        for path in files:  # cheap enough to read them all (about 5 MB)
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
            self.assertEqual(msg["Return-Path"], "<sender@example.org>", path)
            self.assertIn("by mx.example.test", " ".join((msg["Received"] or "").split()), path)
            self.assertEqual(msg["To"], "<user@example.test>", path)
            body = msg.get_payload()
            self.assertIsInstance(body, str, path)
            # -l 2048: about 2048 octets of numbered "XXX..." lines (LF line ends on disk).
            self.assertTrue(0.9 * self.LENGTH <= len(body) <= 1.1 * self.LENGTH,
                            f"{path}: body of {len(body)} octets")
            first = body.split("\n", 1)[0]
            self.assertTrue(first.startswith("1XXXXXXXX"), f"{path}: body starts {first[:40]!r}")


class NmapRelayTest(PeerTest):
    def test_nmap_smtp_open_relay_script(self):
        nmap = require_program(self, "nmap")
        self.assertTrue(NSE_SCRIPT.exists(), f"{NSE_SCRIPT} is missing (nmap-common)")
        server = self.server({"trusted_networks": []})
        # The brief's domain (the server's own) and the script's default external domain.
        for args in (["--script-args", "smtp-open-relay.domain=example.test"], []):
            with self.subTest(script_args=args):
                proc = run([nmap, "-n", "-Pn", "-p", str(server.port), "--script", "+smtp-open-relay",
                            *args, "127.0.0.1"], timeout=120)
                self.assertEqual(proc.returncode, 0, self.diagnose(server, proc))
                self.assertIn("smtp-open-relay:", proc.stdout, self.diagnose(server, proc))
                self.assertNotIn(NMAP_OPEN, proc.stdout)
                self.assertIn(NMAP_CLOSED, proc.stdout, self.diagnose(server, proc))
        self.assertEqual(queued_files(server.data_dir), [])
        self.assertEqual(stored_files(server.data_dir), [])

    def test_sixteen_relay_patterns_by_hand(self):
        server = self.server({"trusted_networks": []})
        values = {"frm": "antispam", "to": "relaytest", "dom": "nmap.scanme.org",
                  "ip": "127.0.0.1", "srv": "mx.example.test"}
        self.assertEqual(len(NSE_RELAY_PATTERNS), 16)
        with SMTPTalk(server.port) as c:
            banner = c.reply()
            self.assertTrue(banner.startswith(b"220 mx.example.test "), banner)
            self.assertTrue(c.cmd(f"EHLO {values['dom']}").startswith(b"250"))
            accepted = []
            for number, (frm, to) in enumerate(NSE_RELAY_PATTERNS, 1):
                sender, recipient = frm.format(**values), to.format(**values)
                with self.subTest(test=number, mail_from=sender, rcpt_to=recipient):
                    self.assertTrue(c.cmd("RSET").startswith(b"250 "))
                    mail = c.cmd(f"MAIL FROM:<{sender}>")
                    # The sender must be taken, or a refused RCPT (503) would prove nothing.
                    self.assertTrue(mail.startswith(b"250 "), mail)
                    rcpt = c.cmd(f"RCPT TO:<{recipient}>")
                    if rcpt[:1] != b"5" or rcpt.startswith(b"503"):
                        accepted.append((sender, recipient, rcpt))
                    self.assertEqual(rcpt[:1], b"5", rcpt)
                    self.assertFalse(rcpt.startswith(b"503"), rcpt)
            # Positive control: the same stranger, same session, may still write to a local user.
            self.assertTrue(c.cmd("RSET").startswith(b"250 "))
            self.assertTrue(c.cmd("MAIL FROM:<antispam@nmap.scanme.org>").startswith(b"250 "))
            control = c.cmd("RCPT TO:<user@example.test>")
            self.assertTrue(control.startswith(b"250 "), control)
            self.assertTrue(c.cmd("QUIT").startswith(b"221"))
        self.assertEqual(accepted, [])
        self.assertEqual(queued_files(server.data_dir), [])


if __name__ == "__main__":
    unittest.main()
