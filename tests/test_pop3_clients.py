"""POP3 with real mail clients from Debian: mpop, fetchmail and curl, over STLS.

Each client downloads over STLS with the test certificate checked for real (the server is
named mx.example.test; each client is told to connect to 127.0.0.1 under that name).  The
server trusts no network, so a password without TLS would be refused: a client that got
in has used TLS.  What the clients save must be what was sent in over SMTP, byte for byte
(line ends as the client stores them) after the headers ISMail adds (support.ADDED_HEADERS).

Crash safety: a SIGKILL in the middle of a session with DELEs pending deletes nothing.
"""
from __future__ import annotations

import os
import smtplib
import stat
import subprocess
import tempfile
import unittest
from pathlib import Path

from tests.security_support import PASSWORD, SERVER_NAME, USER, SelfSignedCertificate
from tests.support import SMTPTalk, ServerProcess, require_program, without_trace


MESSAGES = [
    b"From: a@remote.test\r\nTo: user@example.test\r\nSubject: first\r\nMessage-ID: <1@remote.test>\r\n"
    b"\r\nHello.\r\n",
    b"From: a@remote.test\r\nTo: user@example.test\r\nSubject: dots\r\nMessage-ID: <2@remote.test>\r\n"
    b"\r\n.a line with a leading dot\r\n..and two\r\n.\r\nend\r\n",
    "From: a@remote.test\r\nTo: user@example.test\r\nSubject: big\r\nMessage-ID: <3@remote.test>\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n".encode()
    + b"".join(b"%06d " % i + b"y" * 70 + b"\r\n" for i in range(2000)),
]


def as_stored(message: bytes, lf: bool) -> bytes:
    return message.replace(b"\r\n", b"\n") if lf else message


class ClientCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.cert = SelfSignedCertificate(cls())
        cls.addClassCleanup(cls.cert.remove)
        # TEST-NET-1 is never contacted; the point is that loopback is not trusted.
        cls.server = ServerProcess({**cls.cert.settings(), "trusted_networks": ["192.0.2.0/24"]})
        cls.addClassCleanup(cls.server.cleanup)
        cls.server.start()
        cls.pop3_port = cls.server.pop3_port

    def setUp(self) -> None:
        box = self.server.maildir()
        for sub in ("new", "cur"):
            for f in (box / sub).glob("*") if (box / sub).is_dir() else []:
                f.unlink()
        with smtplib.SMTP("127.0.0.1", self.server.port, timeout=30) as s:
            for m in MESSAGES:
                s.sendmail("a@remote.test", [USER], m)
        self.work = Path(tempfile.mkdtemp(prefix="ismail-pop3-client-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.work)])

    def assert_same_messages(self, saved: list[bytes], lf: bool) -> None:
        got = sorted(without_trace(d, b"\n" if lf else b"\r\n") for d in saved)
        want = sorted(as_stored(m, lf) for m in MESSAGES)
        self.assertEqual(len(got), len(want), "every message comes down once")
        for g, w in zip(got, want):
            self.assertEqual(g, w)

    def run_tool(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=self.work)
        return proc


class MpopTest(ClientCase):
    def mpop(self, target: Path, keep: bool, only_new: bool = True) -> subprocess.CompletedProcess:
        mpop = require_program(self, "mpop")
        for sub in ("new", "cur", "tmp"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        rc = self.work / "mpoprc"
        rc.write_text(
            "defaults\n"
            f"uidls_file {self.work / 'uidls'}\n"
            "account test\n"
            f"host 127.0.0.1\nport {self.pop3_port}\n"
            "tls on\ntls_starttls on\n"
            f"tls_trust_file {self.cert.cert}\ntls_host_override {SERVER_NAME}\n"
            f"user {USER}\npassword {PASSWORD}\nauth user\n"
            f"delivery maildir {target}\n"
            f"keep {'on' if keep else 'off'}\nonly_new {'on' if only_new else 'off'}\n"
            "received_header off\n")
        rc.chmod(stat.S_IRUSR | stat.S_IWUSR)  # mpop refuses a password in a readable file
        return self.run_tool([mpop, "-C", str(rc), "test"])

    def test_mpop_downloads_keeps_and_then_deletes(self):
        first = self.work / "first"
        r = self.mpop(first, keep=True)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        saved = [p.read_bytes() for p in (first / "new").iterdir()]
        self.assert_same_messages(saved, lf=True)
        self.assertEqual(self.server.count(), len(MESSAGES), "keep on: the server keeps them")
        # The UIDLs did not change: a second run finds nothing new.
        again = self.work / "again"
        r = self.mpop(again, keep=True)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assertEqual(list((again / "new").iterdir()), [])
        # keep off, every message: all come down again and are deleted on the server.
        last = self.work / "last"
        r = self.mpop(last, keep=False, only_new=False)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assert_same_messages([p.read_bytes() for p in (last / "new").iterdir()], lf=True)
        self.assertEqual(self.server.count(), 0)


    def test_a_message_another_program_left_with_crlf_line_ends(self):
        """A .eml saved on Windows and dropped into new/ (CRLF on disk) comes down as it
        was, without a CR doubled in every line."""
        text = b"From: w@remote.test\r\nSubject: saved on Windows\r\n\r\nline one\r\nline two\r\n"
        (self.server.maildir() / "new" / "1700000000.M1P1.windows").write_bytes(text)
        target = self.work / "crlf"
        r = self.mpop(target, keep=True)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        saved = [p.read_bytes() for p in (target / "new").iterdir()]
        self.assertEqual(len(saved), len(MESSAGES) + 1)
        mine = [m for m in saved if b"saved on Windows" in m]
        self.assertEqual(mine, [text.replace(b"\r\n", b"\n")])

class FetchmailTest(ClientCase):
    def fetchmail(self, keep: bool) -> subprocess.CompletedProcess:
        fetchmail = require_program(self, "fetchmail")
        out = self.work / "out"
        out.mkdir(exist_ok=True)
        # The MDA: each message into a file of its own, as it comes (fetchmail pipes it in).
        mda = self.work / "mda.sh"
        mda.write_text(f'#!/bin/sh\nexec cat > "{out}/$(date +%s%N).$$"\n')
        mda.chmod(0o700)
        rc = self.work / "fetchmailrc"
        rc.write_text(
            f'poll {SERVER_NAME} via 127.0.0.1 protocol pop3 service {self.pop3_port} auth password\n'
            f'  user "{USER}" password "{PASSWORD}"\n'
            f'  sslproto "tls1.2+" sslcertck sslcertfile "{self.cert.cert}" sslcommonname "{SERVER_NAME}"\n'
            f'  mda "{mda}" {"keep" if keep else "nokeep"} fetchall\n')
        rc.chmod(stat.S_IRUSR | stat.S_IWUSR)
        env_home = self.work / "home"
        env_home.mkdir(exist_ok=True)
        fetchmail_cmd = [fetchmail, "-f", str(rc), "--nodetach", "--invisible", "--norewrite",
                         "--pidfile", str(self.work / "fetchmail.pid")]
        proc = subprocess.run(fetchmail_cmd, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, cwd=self.work,
                              env={**os.environ, "HOME": str(env_home), "FETCHMAILHOME": str(env_home)})
        return proc

    def saved(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted((self.work / "out").iterdir())]

    def test_fetchmail_keeps_then_deletes(self):
        r = self.fetchmail(keep=True)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assert_same_messages(self.saved(), lf=True)
        self.assertEqual(self.server.count(), len(MESSAGES))
        for f in (self.work / "out").iterdir():
            f.unlink()
        r = self.fetchmail(keep=False)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assert_same_messages(self.saved(), lf=True)
        self.assertEqual(self.server.count(), 0)


class CurlTest(ClientCase):
    def curl(self, *args: str) -> subprocess.CompletedProcess:
        curl = require_program(self, "curl")
        return subprocess.run(
            [curl, "--silent", "--show-error", "--ssl-reqd", "--cacert", str(self.cert.cert),
             "--resolve", f"{SERVER_NAME}:{self.pop3_port}:127.0.0.1",
             "--user", f"{USER}:{PASSWORD}", "--max-time", "30", *args],
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)

    def url(self, path: str = "") -> str:
        return f"pop3://{SERVER_NAME}:{self.pop3_port}/{path}"

    def test_curl_lists_retrieves_and_deletes(self):
        listing = self.curl(self.url())
        self.assertEqual(listing.returncode, 0, listing.stderr)
        lines = listing.stdout.decode().split()
        numbers = lines[0::2]
        self.assertEqual(numbers, [str(i) for i in range(1, len(MESSAGES) + 1)])
        saved = []
        for n in numbers:
            got = self.curl(self.url(n))
            self.assertEqual(got.returncode, 0, got.stderr)
            saved.append(got.stdout)
        self.assert_same_messages(saved, lf=False)
        gone = self.curl("--request", "DELE", "--list-only", self.url("1"))
        self.assertEqual(gone.returncode, 0, gone.stderr)
        self.assertEqual(self.server.count(), len(MESSAGES) - 1)

    def test_curl_without_tls_is_refused(self):
        curl = require_program(self, "curl")
        r = subprocess.run([curl, "--silent", "--max-time", "30", "--user", f"{USER}:{PASSWORD}",
                            f"pop3://127.0.0.1:{self.pop3_port}/"],
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertNotEqual(r.returncode, 0, "a password without TLS from an untrusted network")
        self.assertEqual(self.server.count(), len(MESSAGES))


class CrashTest(unittest.TestCase):
    def test_sigkill_with_deletes_pending_deletes_nothing(self):
        server = ServerProcess()
        self.addCleanup(server.cleanup)
        server.start()
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            for m in MESSAGES:
                s.sendmail("a@remote.test", [USER], m)
        before = sorted(p.name for sub in ("new", "cur") for p in (server.maildir() / sub).iterdir())
        t = SMTPTalk(server.pop3_port)
        self.addCleanup(t.close)
        t.reply()
        t.cmd(f"USER {USER}")
        self.assertTrue(t.cmd(f"PASS {PASSWORD}").startswith(b"+OK"))
        for n in range(1, len(MESSAGES) + 1):
            self.assertTrue(t.cmd(f"DELE {n}").startswith(b"+OK"))
        server.kill()
        after = sorted(p.name for sub in ("new", "cur") for p in (server.maildir() / sub).iterdir())
        self.assertEqual(after, before, "a killed session deletes nothing")
        # After a restart the maildrop is whole and free.
        server.start()
        t2 = SMTPTalk(server.pop3_port)
        self.addCleanup(t2.close)
        t2.reply()
        t2.cmd(f"USER {USER}")
        self.assertTrue(t2.cmd(f"PASS {PASSWORD}").startswith(b"+OK"))
        self.assertTrue(t2.cmd("STAT").startswith(f"+OK {len(MESSAGES)} ".encode()))
        t2.cmd("QUIT")


if __name__ == "__main__":
    unittest.main()
