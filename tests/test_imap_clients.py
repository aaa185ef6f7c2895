"""IMAP with real mail clients from Debian: mbsync (isync), offlineimap3, curl and fetchmail, over STARTTLS.

The server trusts no network ("trusted_networks": TEST-NET-1 only), so a password sent
without TLS is refused: a client that got in has used STARTTLS.  What each client stores
must be what was sent in over SMTP (or what the client put on the server), byte for byte
after the trace headers ISMail adds (support.ADDED_HEADERS), the headers the client adds itself
(CLIENT_HEADERS) and the client's line ends.

The certificate (tests.security_support, CN mx.example.test) is checked for real where
the client can:
* mbsync: CertificateFile, and Host mx.example.test, which names 127.0.0.1 through
  nss_wrapper (Debian's libnss-wrapper: LD_PRELOAD with a private hosts file), so
  mbsync checks the name in the certificate too;
* curl: --cacert with --resolve mx.example.test:PORT:127.0.0.1;
* fetchmail: sslcertck, sslcertfile and sslcommonname, as in test_pop3_clients.py;
* offlineimap3 8.0.0 cannot: over STARTTLS it calls imaplib2's starttls() without
  its CA file (imapserver.py __start_tls), so sslcacertfile only counts for "ssl = yes".
  It is given the certificate anyway, and the untrusting server still proves STARTTLS.

offlineimap3's imaplib2 reads its TLS socket in one thread while another writes to it,
which OpenSSL does not allow.  With TLS 1.3 the server's session tickets arrive just as
the first command after STARTTLS goes out, and now and then (1 run in 10 to 30 on a
loaded machine) the client hangs for good there; the same client code hangs the same
way against a twenty-line Python TLS server, so it is not the server's doing.  The test
therefore caps offlineimap at TLS 1.2 through its own OpenSSL configuration file
(OPENSSL_CONF; no tickets after the handshake: no hang in 400 tries), and a run that
still has not finished after OFFLINEIMAP_SECONDS is killed and, a sync being safe to
repeat, run again, at most OFFLINEIMAP_RUNS times.
"""
from __future__ import annotations

import glob
import imaplib
import os
import re
import shutil
import smtplib
import ssl
import stat
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from tests.security_support import PASSWORD, SERVER_NAME, USER, SelfSignedCertificate
from tests.support import ServerProcess, require_program, without_trace
from tests.test_imap_e2e import fetch_flags, fetch_literals, ok

# What the clients add to a message themselves (everything else must be left alone).
CLIENT_HEADERS = {
    "mbsync": (b"X-TUID:",),        # its temporary id, written into every copy it propagates
    "offlineimap": (),   # X-OfflineIMAP only for a server without UIDPLUS (APPENDUID)
    "curl": (),
    "fetchmail": (),
}

MESSAGES = [
    b"From: a@remote.test\r\nTo: user@example.test\r\nSubject: first\r\nMessage-ID: <1@remote.test>\r\n"
    b"\r\nHello.\r\n",
    b"From: a@remote.test\r\nTo: user@example.test\r\nSubject: dots\r\nMessage-ID: <2@remote.test>\r\n"
    b"\r\n.a line with a leading dot\r\n..and two\r\n.\r\nend\r\n",
    "From: a@remote.test\r\nTo: user@example.test\r\nSubject: big\r\nMessage-ID: <3@remote.test>\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n".encode()
    + b"".join(b"%06d " % i + b"y" * 70 + b"\r\n" for i in range(2000)),
]
LOCAL = (b"From: me@example.test\r\nTo: friend@remote.test\r\nSubject: written here\r\n"
         b"Message-ID: <local@example.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
         b"Made in the client's own Maildir.\r\n.\r\n")
NSS_WRAPPER = "libnss_wrapper.so"
OFFLINEIMAP_SECONDS = 30   # a sync here takes about a second
OFFLINEIMAP_RUNS = 3
OPENSSL_TLS12 = """openssl_conf = ismail_test
[ismail_test]
ssl_conf = ismail_test_ssl
[ismail_test_ssl]
system_default = ismail_test_tls
[ismail_test_tls]
MaxProtocol = TLSv1.2
"""


def plain(data: bytes, client: str, lf: bool) -> bytes:
    """The message as it was sent: the trace headers off its top, the client's own
    header lines out of its header, CRLF line ends."""
    eol = b"\n" if lf else b"\r\n"
    rest = without_trace(data, eol)
    head, sep, body = rest.partition(eol + eol)
    lines = [line for line in head.split(eol) if not line.startswith(CLIENT_HEADERS[client])]
    out = eol.join(lines) + sep + body
    return out.replace(b"\n", b"\r\n") if lf else out


def message_id(data: bytes) -> bytes:
    return re.search(rb"Message-ID: (<[^>]+>)", data).group(1)


class ClientCase(unittest.TestCase):
    client = ""

    @classmethod
    def setUpClass(cls) -> None:
        cls.cert = SelfSignedCertificate(cls())
        cls.addClassCleanup(cls.cert.remove)
        # TEST-NET-1 is never contacted; the point is that loopback is not trusted.
        cls.server = ServerProcess({**cls.cert.settings(), "trusted_networks": ["192.0.2.0/24"]})
        cls.addClassCleanup(cls.server.cleanup)
        cls.server.start()
        cls.imap_port = cls.server.imap_port

    def setUp(self) -> None:
        box = self.server.maildir()
        for folder in (box, box / ".Sent"):
            for sub in ("new", "cur"):
                for f in (folder / sub).glob("*") if (folder / sub).is_dir() else []:
                    f.unlink()
        with smtplib.SMTP("127.0.0.1", self.server.port, timeout=30) as s:
            for m in MESSAGES:
                s.sendmail("a@remote.test", [USER], m)
        self.work = Path(tempfile.mkdtemp(prefix="ismail-imap-client-"))
        self.addCleanup(shutil.rmtree, self.work, True)

    def run_tool(self, argv: list[str], env: dict | None = None, timeout: float = 60,
                 runs: int = 1) -> subprocess.CompletedProcess:
        """Run a client; one that has not finished within ``timeout`` is killed (and run
        again, ``runs`` times in all), then the test fails with what it said."""
        for _ in range(runs):
            try:
                return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL, cwd=self.work,
                                      env={**os.environ, "HOME": str(self.work), **(env or {})})
            except subprocess.TimeoutExpired as e:
                said = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        self.fail(f"{Path(argv[0]).name} did not finish within {timeout}s ({runs} run(s)):\n{said[-3000:]}\n"
                  f"server log:\n{self.server.log_text()[-3000:]}")

    def assert_same_messages(self, saved: list[bytes], lf: bool, want: list[bytes] = MESSAGES) -> None:
        got = sorted(plain(d, self.client, lf) for d in saved)
        self.assertEqual(len(got), len(want), "every message comes down once")
        for g, w in zip(got, sorted(want)):
            self.assertEqual(g, w)

    # -- the server's side, seen through imaplib over STARTTLS -------------------------------
    def imap(self) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        ctx = ssl.create_default_context(cafile=str(self.cert.cert))
        ctx.check_hostname = False
        m.starttls(ssl_context=ctx)
        m.login(USER, PASSWORD)
        ok(m.select("INBOX"))
        self.addCleanup(self._logout, m)
        return m

    @staticmethod
    def _logout(m: imaplib.IMAP4) -> None:
        try:
            m.logout()
        except (imaplib.IMAP4.error, OSError):
            pass

    def on_server(self, m: imaplib.IMAP4) -> dict[bytes, tuple[int, bytes]]:
        """Message-ID -> (UID, the message) of everything in INBOX."""
        out = {}
        for uid, (_, data) in fetch_literals(m, "1:*", "(UID BODY.PEEK[])").items():
            out[message_id(data)] = (uid, data)
        return out

    def server_flags(self, m: imaplib.IMAP4) -> dict[bytes, set[str]]:
        ok(m.noop())
        ids = {uid: mid for mid, (uid, _) in self.on_server(m).items()}
        return {ids[uid]: flags - {"\\Recent"} for uid, flags in fetch_flags(m).items()}


# --- mbsync (isync) ---------------------------------------------------------------------------

class MaildirClient:
    """A client's local Maildir: read it, put a message in, set flags by renaming."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def files(self) -> list[Path]:
        return sorted(p for sub in ("new", "cur") for p in (self.path / sub).glob("*"))

    def by_id(self) -> dict[bytes, Path]:
        return {message_id(p.read_bytes()): p for p in self.files()}

    def put(self, message: bytes) -> None:
        (self.path / "new").mkdir(parents=True, exist_ok=True)
        (self.path / "new" / f"{int(time.time())}.local1.test").write_bytes(message.replace(b"\r\n", b"\n"))

    def flags(self, path: Path) -> str:
        return path.name.rpartition(":2,")[2] if ":2," in path.name else ""

    def add_flag(self, path: Path, letter: str) -> None:
        base = path.name.rpartition(":2,")[0] if ":2," in path.name else path.name
        flags = "".join(sorted(set(self.flags(path) + letter)))
        path.rename(self.path / "cur" / f"{base}:2,{flags}")


class MbsyncTest(ClientCase):
    client = "mbsync"

    def mbsync(self, tls: bool = True) -> subprocess.CompletedProcess:
        mbsync = require_program(self, "mbsync")
        found = sorted(glob.glob(f"/usr/lib/*/{NSS_WRAPPER}") + glob.glob(f"/usr/lib/{NSS_WRAPPER}"))
        wrapper = require_program(self, f"{NSS_WRAPPER} (Debian: libnss-wrapper)", found[0] if found else None)
        hosts = self.work / "hosts"
        hosts.write_text(f"127.0.0.1 {SERVER_NAME}\n")
        (self.work / "mail").mkdir(exist_ok=True)   # mbsync makes the folders, not their parent
        rc = self.work / "mbsyncrc"
        rc.write_text(
            "IMAPAccount test\n"
            f"Host {SERVER_NAME}\nPort {self.imap_port}\n"
            f"User {USER}\nPass {PASSWORD}\n"
            f"SSLType {'STARTTLS' if tls else 'None'}\n"
            f"CertificateFile {self.cert.cert}\n"
            "AuthMechs PLAIN LOGIN\n\n"
            "IMAPStore remote\nAccount test\n\n"
            f"MaildirStore local\nPath {self.work}/mail/\nInbox {self.work}/mail/INBOX\n\n"
            "Channel test\nFar :remote:\nNear :local:\nPatterns INBOX\n"
            "Create Both\nExpunge Both\nSyncState *\nSync All\n")
        rc.chmod(stat.S_IRUSR | stat.S_IWUSR)
        return self.run_tool([mbsync, "-c", str(rc), "test"],
                             env={"LD_PRELOAD": wrapper, "NSS_WRAPPER_HOSTS": str(hosts),
                                  "NSS_WRAPPER_PASSWD": "/etc/passwd", "NSS_WRAPPER_GROUP": "/etc/group"})

    def sync(self) -> None:
        r = self.mbsync()
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)

    def test_mbsync_syncs_both_ways(self):
        local = MaildirClient(self.work / "mail" / "INBOX")
        self.sync()
        self.assert_same_messages([p.read_bytes() for p in local.files()], lf=True)
        # A message written into the local Maildir goes up, unchanged.
        local.put(LOCAL)
        self.sync()
        m = self.imap()
        server = self.on_server(m)
        self.assertEqual(len(server), len(MESSAGES) + 1)
        self.assertEqual(plain(server[b"<local@example.test>"][1], self.client, lf=False), LOCAL)
        # A flag set on the server comes down; one set locally goes up.
        ok(m.uid("STORE", str(server[b"<1@remote.test>"][0]), "+FLAGS", "(\\Flagged)"))
        local.add_flag(local.by_id()[b"<2@remote.test>"], "R")
        self.sync()
        self.assertIn("F", local.flags(local.by_id()[b"<1@remote.test>"]))
        self.assertIn("\\Answered", self.server_flags(m)[b"<2@remote.test>"])
        # Expunged on the server: gone locally; deleted locally: expunged on the server.
        ok(m.uid("STORE", str(server[b"<3@remote.test>"][0]), "+FLAGS", "(\\Deleted)"))
        ok(m.expunge())
        local.add_flag(local.by_id()[b"<local@example.test>"], "T")
        self.sync()
        self.assertEqual(sorted(local.by_id()), [b"<1@remote.test>", b"<2@remote.test>"])
        self.assertEqual(sorted(self.on_server(m)), [b"<1@remote.test>", b"<2@remote.test>"])
        self.assertEqual(self.server.count(), 2)

    def test_mbsync_without_tls_is_refused(self):
        r = self.mbsync(tls=False)
        self.assertNotEqual(r.returncode, 0, "a password without TLS from an untrusted network")
        self.assertEqual([p for p in (self.work / "mail").rglob("*") if p.is_file()], [])


# --- offlineimap3 ------------------------------------------------------------------------------

class OfflineimapTest(ClientCase):
    client = "offlineimap"

    def offlineimap(self) -> None:
        offlineimap = require_program(self, "offlineimap")
        rc = self.work / "offlineimaprc"
        rc.write_text(
            "[general]\naccounts = test\n"
            f"metadata = {self.work}/meta\nmaxsyncaccounts = 1\nui = basic\n\n"
            "[Account test]\nlocalrepository = local\nremoterepository = remote\n\n"
            f"[Repository local]\ntype = Maildir\nlocalfolders = {self.work}/mail\n\n"
            "[Repository remote]\ntype = IMAP\n"
            f"remotehost = 127.0.0.1\nremoteport = {self.imap_port}\n"
            f"remoteuser = {USER}\nremotepass = {PASSWORD}\n"
            # STARTTLS (ssl = no, starttls = yes); see the module docstring on sslcacertfile.
            f"ssl = no\nstarttls = yes\nsslcacertfile = {self.cert.cert}\n"
            "auth_mechanisms = PLAIN\nmaxconnections = 1\n"
            "folderfilter = lambda name: name == 'INBOX'\n")
        conf = self.work / "openssl.cnf"
        conf.write_text(OPENSSL_TLS12)
        r = self.run_tool([offlineimap, "-c", str(rc), "-o", "-u", "basic"], env={"OPENSSL_CONF": str(conf)},
                          timeout=OFFLINEIMAP_SECONDS, runs=OFFLINEIMAP_RUNS)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        # offlineimap reports some failures only in its output, with status 0.
        self.assertNotRegex(r.stdout + r.stderr, r"ERROR|WARNING|Traceback")

    def test_offlineimap_syncs_both_ways(self):
        local = MaildirClient(self.work / "mail" / "INBOX")
        self.offlineimap()
        self.assert_same_messages([p.read_bytes() for p in local.files()], lf=True)
        local.put(LOCAL)
        self.offlineimap()
        m = self.imap()
        server = self.on_server(m)
        self.assertEqual(len(server), len(MESSAGES) + 1)
        self.assertEqual(plain(server[b"<local@example.test>"][1], self.client, lf=False), LOCAL)
        ok(m.uid("STORE", str(server[b"<1@remote.test>"][0]), "+FLAGS", "(\\Flagged)"))
        local.add_flag(local.by_id()[b"<2@remote.test>"], "S")
        self.offlineimap()
        self.assertIn("F", local.flags(local.by_id()[b"<1@remote.test>"]))
        self.assertIn("\\Seen", self.server_flags(m)[b"<2@remote.test>"])


# --- curl ----------------------------------------------------------------------------------------

class CurlTest(ClientCase):
    client = "curl"

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        curl = require_program(self, "curl")
        return subprocess.run(
            [curl, "--silent", "--show-error", "--ssl-reqd", "--cacert", str(self.cert.cert),
             "--resolve", f"{SERVER_NAME}:{self.imap_port}:127.0.0.1",
             "--user", f"{USER}:{PASSWORD}", "--max-time", "30", *args],
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)

    def url(self, path: str = "") -> str:
        return f"imap://{SERVER_NAME}:{self.imap_port}/{path}"

    def got(self, *args: str) -> bytes:
        r = self.curl(*args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_curl_lists_fetches_and_searches(self):
        listing = self.got(self.url()).decode()
        for name in ("INBOX", "Sent", "Drafts", "Trash", "Junk"):
            self.assertRegex(listing, rf'\* LIST \([^)]*\) "/" "?{name}"?\r\n')
        found = self.got(self.url("INBOX?ALL")).decode().split()
        self.assertEqual(found, ["*", "SEARCH", "1", "2", "3"])
        by_index = [self.got(self.url(f"INBOX;MAILINDEX={n}")) for n in (1, 2, 3)]
        self.assert_same_messages(by_index, lf=False)
        uids = self.got(self.url("INBOX"), "--request", "UID SEARCH ALL").decode().split()[2:]
        by_uid = [self.got(self.url(f"INBOX;UID={uid}")) for uid in uids]
        self.assertEqual(by_uid, by_index)
        self.assertEqual(self.got(self.url("INBOX?SUBJECT%20dots")).decode().split(), ["*", "SEARCH", "2"])
        self.assertEqual(self.got(self.url("INBOX?UNSEEN")).decode().split(), ["*", "SEARCH"],
                         "a fetch without PEEK set \\Seen")
        text = self.got(self.url(f"INBOX;UID={uids[1]};SECTION=TEXT"))
        self.assertEqual(text, MESSAGES[1].split(b"\r\n\r\n", 1)[1])

    def test_curl_uploads_a_message_unchanged(self):
        upload = self.work / "message.eml"
        upload.write_bytes(LOCAL)
        self.got("--upload-file", str(upload), self.url("Sent"))
        m = self.imap()
        ok(m.select("Sent"))
        stored = [data for _, data in fetch_literals(m, "1:*", "(UID BODY.PEEK[])").values()]
        self.assertEqual(stored, [LOCAL])

    def test_a_message_another_program_left_with_crlf_line_ends(self):
        """A .eml saved on Windows and dropped into new/ (CRLF on disk): the message, its
        text and a search of its header are what the file holds, no CR doubled."""
        text = b"From: w@remote.test\r\nSubject: saved on Windows\r\n\r\nline one\r\nline two\r\n"
        (self.server.maildir() / "new" / "1700000000.M1P1.windows").write_bytes(text)
        found = self.got(self.url("INBOX?SUBJECT%20windows")).decode().split()
        self.assertEqual(found[:2], ["*", "SEARCH"])
        self.assertEqual(len(found), 3, found)
        self.assertEqual(self.got(self.url(f"INBOX;MAILINDEX={found[2]}")), text)
        self.assertEqual(self.got(self.url(f"INBOX;MAILINDEX={found[2]};SECTION=TEXT")),
                         b"line one\r\nline two\r\n")
        size = self.got(self.url("INBOX"), "--request", f"FETCH {found[2]} RFC822.SIZE").decode()
        self.assertIn(f"RFC822.SIZE {len(text)})", size)

    def test_curl_without_tls_is_refused(self):
        curl = require_program(self, "curl")
        r = subprocess.run([curl, "--silent", "--max-time", "30", "--user", f"{USER}:{PASSWORD}",
                            f"imap://127.0.0.1:{self.imap_port}/INBOX;MAILINDEX=1"],
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertNotEqual(r.returncode, 0, "a password without TLS from an untrusted network")
        self.assertEqual(r.stdout, b"")


# --- fetchmail -----------------------------------------------------------------------------------

class FetchmailTest(ClientCase):
    client = "fetchmail"

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
            f'poll {SERVER_NAME} via 127.0.0.1 protocol IMAP service {self.imap_port} auth password\n'
            f'  user "{USER}" password "{PASSWORD}"\n'
            f'  sslproto "tls1.2+" sslcertck sslcertfile "{self.cert.cert}" sslcommonname "{SERVER_NAME}"\n'
            f'  mda "{mda}" {"keep" if keep else "nokeep"} fetchall\n')
        rc.chmod(stat.S_IRUSR | stat.S_IWUSR)
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        return self.run_tool([fetchmail, "-f", str(rc), "--nodetach", "--invisible", "--norewrite",
                              "--pidfile", str(self.work / "fetchmail.pid")],
                             env={"HOME": str(home), "FETCHMAILHOME": str(home)})

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
        self.assertEqual(self.server.count(), 0, "nokeep: deleted and expunged on the server")


if __name__ == "__main__":
    unittest.main()
