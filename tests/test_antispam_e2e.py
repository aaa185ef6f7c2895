"""The anti-spam checks end to end: a real ISMail, a real DNS server (dnsmasq) serving PTR, A,
TXT (SPF, DKIM, DMARC) and DNS block list records, real clients (swaks, dkimpy's dkimsign,
smtplib) connecting from 127.0.0.2-127.0.0.9 as different "hosts" of the Internet.

Trusted is 127.0.0.1 only, so every other loopback address is a stranger.
"""
from __future__ import annotations

import base64
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import uuid
from email import message_from_bytes
from pathlib import Path

from tests.support import Dnsmasq, ServerProcess, free_port, require_program

ACCOUNT = "user@example.test"
BL_ZONE = "bl.test"


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 60)
    return subprocess.run(args, capture_output=True, text=True, **kw)


def new_rsa_key(directory: Path) -> tuple[Path, str]:
    """A 1024-bit RSA key (so its TXT record fits one string) and the p= value to publish."""
    key = directory / "dkim.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "1024"], check=True, capture_output=True, timeout=60)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=60).stdout
    return key, base64.b64encode(der).decode()


def message(from_: str, token: str, subject: str = "hello", extra: str = "") -> bytes:
    return (f"From: <{from_}>\r\nTo: <{ACCOUNT}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{token}@test>\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\n{extra}"
            f"\r\nbody {token}\r\n").encode()


def smtp_send(port: int, source: str, sender: str, data: bytes, rcpt: str = ACCOUNT) -> tuple[int, str]:
    """(code, text) of the first refusal, or of the reply after DATA."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as s:
        s.ehlo("client.test")
        code, text = s.mail(sender)
        if code != 250:
            return code, text.decode()
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code, text.decode()
        code, text = s.data(data)
        return code, text.decode()


def find(box: Path, token: str, timeout: float = 15.0) -> bytes | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sub in ("new", "cur"):
            d = box / sub
            if d.is_dir():
                for f in d.iterdir():
                    data = f.read_bytes()
                    if token.encode() in data:
                        return data
        time.sleep(0.05)
    return None


class AntispamE2E(unittest.TestCase):
    dns: Dnsmasq | None = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = Path(tempfile.mkdtemp(prefix="ismail-spam-"))
        program = shutil.which("dnsmasq")
        cls.key_path = None
        if program is None or shutil.which("openssl") is None:
            return  # each test reports the missing program (skip, or fail under CI)
        cls.key_path, pub = new_rsa_key(cls.tmp)
        records = [
            "--local=/127.in-addr.arpa/",
            # DNSBL: 127.0.0.2 is listed (answer 127.0.0.2), 127.0.0.3 with an answer (127.0.0.10)
            # that a zone restricted to 127.0.0.2 does not count.
            f"--host-record=2.0.0.127.{BL_ZONE},127.0.0.2",
            f"--host-record=3.0.0.127.{BL_ZONE},127.0.0.10",
            # Reverse DNS: 127.0.0.7 is host7.test and back; 127.0.0.8 claims liar.test, which is not it.
            "--ptr-record=7.0.0.127.in-addr.arpa,host7.test", "--host-record=host7.test,127.0.0.7",
            "--ptr-record=8.0.0.127.in-addr.arpa,liar.test", "--host-record=liar.test,127.0.0.99",
            "--ptr-record=5.0.0.127.in-addr.arpa,host5.test", "--host-record=host5.test,127.0.0.5",
            "--ptr-record=6.0.0.127.in-addr.arpa,host6.test", "--host-record=host6.test,127.0.0.6",
            # SPF and DMARC: only 127.0.0.5 may send for spf.test (p=reject) and q.test (p=quarantine).
            "--txt-record=spf.test,v=spf1 ip4:127.0.0.5 -all",
            "--txt-record=_dmarc.spf.test,v=DMARC1; p=reject",
            "--txt-record=q.test,v=spf1 ip4:127.0.0.5 -all",
            "--txt-record=_dmarc.q.test,v=DMARC1; p=quarantine",
            "--txt-record=soft.test,v=spf1 ip4:127.0.0.5 -all",
            # DKIM: signed.test signs (no host may send by SPF), p=reject.
            "--txt-record=signed.test,v=spf1 -all",
            "--txt-record=_dmarc.signed.test,v=DMARC1; p=reject",
            f"--txt-record=sel._domainkey.signed.test,v=DKIM1; k=rsa; p={pub}",
        ]
        cls.dns = Dnsmasq(program, records, probe="spf.test")

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.dns is not None:
            cls.dns.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self) -> None:
        require_program(self, "dnsmasq")
        require_program(self, "openssl")
        self.assertIsNotNone(self.dns)

    def server(self, **antispam) -> ServerProcess:
        spam = {"rdns": "tag", "dnsbl": [BL_ZONE], "dnsbl_action": "reject", "spf": "tag",
                "dkim": "tag", "dmarc": "reject", "connection_rate": 0, **antispam}
        access = spam.pop("access", {})
        server = ServerProcess({"trusted_networks": ["127.0.0.1/32"], "dns_servers": [self.dns.server],
                                "antispam": spam, "access": access})
        self.addCleanup(server.cleanup)
        return server.start()

    def swaks(self, server: ServerProcess, source: str, *args: str) -> subprocess.CompletedProcess:
        swaks = require_program(self, "swaks")
        return run([swaks, "--server", "127.0.0.1", "--port", str(server.port), "--local-interface", source,
                    "--timeout", "20", "--to", ACCOUNT, *args])

    def junk(self, server: ServerProcess) -> Path:
        return server.maildir(ACCOUNT) / ".Junk"

    # -- connection level ---------------------------------------------------------------------------
    def test_dnsbl_listed_client_is_refused_naming_the_list(self) -> None:
        server = self.server()
        proc = self.swaks(server, "127.0.0.2", "--from", "a@host7.test")
        self.assertNotEqual(proc.returncode, 0, proc.stdout)
        self.assertRegex(proc.stdout, r"554 5\.7\.1 .*blocked using bl\.test")
        token = uuid.uuid4().hex
        proc = self.swaks(server, "127.0.0.7", "--from", "a@host7.test", "--body", f"clean {token}")
        self.assertEqual(proc.returncode, 0, proc.stdout + server.log_text()[-2000:])
        data = find(server.maildir(ACCOUNT), token)
        self.assertIsNotNone(data, "the clean client's message is in INBOX")
        self.assertIn(b"iprev=pass", data)

    def test_dnsbl_return_codes_are_respected(self) -> None:
        server = self.server(dnsbl=[f"{BL_ZONE}=127.0.0.2"])
        # 127.0.0.3 is in the zone, but with an answer this entry does not count.
        token = uuid.uuid4().hex
        proc = self.swaks(server, "127.0.0.3", "--from", "a@elsewhere.test", "--body", token)
        self.assertEqual(proc.returncode, 0, proc.stdout)
        proc = self.swaks(server, "127.0.0.2", "--from", "a@elsewhere.test")
        self.assertRegex(proc.stdout, r"554 5\.7\.1 .*bl\.test")

    def test_connection_rate_limit_gives_421(self) -> None:
        server = self.server(connection_rate=5)
        replies = []
        for _ in range(7):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                          source_address=("127.0.0.4", 0)) as s:
                replies.append(s.recv(512))
        self.assertTrue(all(r.startswith(b"220") for r in replies[:5]), replies)
        self.assertTrue(replies[5].startswith(b"421 4.7.0"), replies)
        self.assertIn(b"too many connections", replies[5])
        # Another address is not affected, and swaks sees the 421 too.
        proc = self.swaks(server, "127.0.0.4", "--from", "a@host7.test", "--quit-after", "CONNECT")
        self.assertIn("421 4.7.0", proc.stdout)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                      source_address=("127.0.0.5", 0)) as s:
            self.assertTrue(s.recv(512).startswith(b"220"))
        # A client that goes on in a loop is one line in the mail log, not one a refusal.
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                          source_address=("127.0.0.4", 0)) as s:
                self.assertTrue(s.recv(512).startswith(b"421 4.7.0"))
        lines = [line for line in server.log_text().splitlines()
                 if "refused SMTP connection from 127.0.0.4" in line]
        self.assertEqual(len(lines), 1, lines[:5])
        self.assertIn("more than 5 a minute (more in the next 60 s are counted", lines[0])

    def test_early_talker_refused_every_time_with_the_pause_on(self) -> None:
        server = self.server(greeting_pause_ms=150)
        refused, greeted = [], []

        def client(source: str, tries: int) -> None:
            for _ in range(tries):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                              source_address=(source, 0)) as s:
                    s.sendall(b"EHLO early.test\r\n")  # at once, before any greeting
                    data = s.recv(512)
                    (refused if data.startswith(b"554") else greeted).append(data)

        threads = [threading.Thread(target=client, args=(f"127.0.0.{i}", 50)) for i in (2, 3, 4, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(len(refused), 200, greeted[:3])
        # A client that waits for the greeting gets it after the pause.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                      source_address=("127.0.0.6", 0)) as s:
            started = time.monotonic()
            self.assertTrue(s.recv(512).startswith(b"220"))
            self.assertGreaterEqual(time.monotonic() - started, 0.14)

    def test_greylisting_defers_then_accepts(self) -> None:
        server = self.server(greylisting=True, greylist_delay_seconds=2)
        token = uuid.uuid4().hex
        proc = self.swaks(server, "127.0.0.6", "--from", "a@host6.test", "--body", token)
        self.assertIn("451 4.7.1", proc.stdout)
        self.assertIn("Greylisted", proc.stdout)
        time.sleep(2.2)
        proc = self.swaks(server, "127.0.0.6", "--from", "a@host6.test", "--body", token)
        self.assertEqual(proc.returncode, 0, proc.stdout)
        self.assertIsNotNone(find(server.maildir(ACCOUNT), token))
        # Trusted clients are never greylisted.
        token2 = uuid.uuid4().hex
        proc = self.swaks(server, "127.0.0.1", "--from", "new@host6.test", "--body", token2)
        self.assertEqual(proc.returncode, 0, proc.stdout)

    # -- sender authentication ------------------------------------------------------------------------
    def test_spf_fail_rejected_when_set_to_reject(self) -> None:
        server = self.server(spf="reject", dmarc="off")
        code, text = smtp_send(server.port, "127.0.0.6", "x@soft.test", message("x@soft.test", "t"))
        self.assertEqual(code, 550, text)
        self.assertIn("5.7.23", text)
        token = uuid.uuid4().hex
        code, text = smtp_send(server.port, "127.0.0.5", "x@soft.test", message("x@soft.test", token))
        self.assertEqual(code, 250, text)
        data = find(server.maildir(ACCOUNT), token)
        self.assertIn(b"spf=pass", data)

    def test_spf_fail_tagged_goes_to_junk_with_results(self) -> None:
        server = self.server(dmarc="off")
        token = uuid.uuid4().hex
        code, text = smtp_send(server.port, "127.0.0.6", "x@soft.test", message("x@soft.test", token))
        self.assertEqual(code, 250, text)
        data = find(self.junk(server), token)
        self.assertIsNotNone(data, "a tagged message goes into Junk")
        msg = message_from_bytes(data)
        self.assertEqual(msg["X-Spam-Flag"], "YES")
        results = msg.get_all("Authentication-Results")
        self.assertEqual(len(results), 1, results)
        self.assertTrue(results[0].startswith("mx.example.test;"), results)
        self.assertIn("spf=fail", results[0])
        self.assertIsNone(find(server.maildir(ACCOUNT), token, timeout=0.2))

    def test_dmarc_reject_and_quarantine(self) -> None:
        server = self.server()
        code, text = smtp_send(server.port, "127.0.0.6", "x@spf.test", message("x@spf.test", "t1"))
        self.assertEqual(code, 550, text)
        self.assertIn("DMARC", text)
        token = uuid.uuid4().hex
        code, text = smtp_send(server.port, "127.0.0.6", "x@q.test", message("x@q.test", token))
        self.assertEqual(code, 250, text)
        data = find(self.junk(server), token)
        self.assertIsNotNone(data, "quarantine means the Junk folder")
        self.assertIn(b"dmarc=fail", data)
        # From an address SPF allows, the same mail passes DMARC into INBOX.
        token = uuid.uuid4().hex
        code, text = smtp_send(server.port, "127.0.0.5", "x@spf.test", message("x@spf.test", token))
        self.assertEqual(code, 250, text)
        data = find(server.maildir(ACCOUNT), token)
        self.assertIn(b"dmarc=pass", data)

    def dkimsign(self, data: bytes) -> bytes:
        sign = require_program(self, "dkimsign")
        proc = subprocess.run([sign, "sel", "signed.test", str(self.key_path)], input=data,
                              capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc.stdout

    def test_dkim_signed_by_dkimpy_passes_dmarc_and_a_changed_one_fails(self) -> None:
        server = self.server()
        token = uuid.uuid4().hex
        signed = self.dkimsign(message("news@signed.test", token, extra="X-Long: " + "word " * 40 + "\r\n"))
        code, text = smtp_send(server.port, "127.0.0.6", "news@signed.test", signed)
        self.assertEqual(code, 250, text)
        data = find(server.maildir(ACCOUNT), token)
        self.assertIsNotNone(data, find(self.junk(server), token, timeout=0.5))
        results = message_from_bytes(data)["Authentication-Results"]
        self.assertIn("dkim=pass", results)
        self.assertIn("header.d=signed.test", results)
        self.assertIn("dmarc=pass", results)
        # One header changed on the way: the signature fails, and DMARC with it (p=reject).
        forged = self.dkimsign(message("news@signed.test", uuid.uuid4().hex)).replace(b"Subject: hello",
                                                                                       b"Subject: HELLO")
        code, text = smtp_send(server.port, "127.0.0.6", "news@signed.test", forged)
        self.assertEqual(code, 550, text)

    def test_reverse_dns_tag(self) -> None:
        server = self.server(dmarc="off", spf="off")
        token = uuid.uuid4().hex
        code, text = smtp_send(server.port, "127.0.0.8", "x@any.test", message("x@any.test", token))
        self.assertEqual(code, 250, text)
        data = find(self.junk(server), token)
        self.assertIsNotNone(data)
        self.assertIn(b"iprev=fail", data)
        self.assertIn(b"RDNS_NONE", data)

    # -- lists, harvest, forged results -----------------------------------------------------------------
    def test_black_and_white_lists(self) -> None:
        server = self.server(access={"blacklist": ["*@spam.test"], "whitelist": ["127.0.0.2/32"]})
        code, text = smtp_send(server.port, "127.0.0.6", "boss@spam.test", message("boss@spam.test", "t"))
        self.assertEqual(code, 554, text)
        # 127.0.0.2 is on the DNS block list, but whitelisted: every check is skipped.
        token = uuid.uuid4().hex
        code, text = smtp_send(server.port, "127.0.0.2", "x@spf.test", message("x@spf.test", token))
        self.assertEqual(code, 250, text)
        self.assertIsNotNone(find(server.maildir(ACCOUNT), token))

    def test_harvester_is_cut_off_and_banned(self) -> None:
        server = ServerProcess({"trusted_networks": ["127.0.0.1/32"], "dns_servers": [self.dns.server],
                                "antispam": {"max_unknown_recipients": 5, "rdns": "off", "spf": "off",
                                             "dkim": "off", "dmarc": "off", "connection_rate": 0},
                                "auth": {"ban_after_failures": 1}})
        self.addCleanup(server.cleanup)
        server.start()
        with smtplib.SMTP("127.0.0.1", server.port, source_address=("127.0.0.9", 0), timeout=30) as s:
            s.ehlo("h.test")
            s.mail("a@h.test")
            codes = [s.rcpt(f"nobody{i}@example.test")[0] for i in range(5)]
        self.assertEqual(codes[:4], [550] * 4)
        self.assertEqual(codes[4], 421)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                      source_address=("127.0.0.9", 0)) as s:
            self.assertTrue(s.recv(512).startswith(b"554"), "the harvester's address is banned")

    def test_forged_results_header_is_removed(self) -> None:
        server = self.server(dmarc="off", spf="off", rdns="off")
        token = uuid.uuid4().hex
        forged = message("x@any.test", token, extra="Authentication-Results: mx.example.test;\r\n"
                                                     "\tspf=pass smtp.mailfrom=x@any.test\r\n"
                                                     "Authentication-Results: other.test; dkim=pass\r\n")
        code, text = smtp_send(server.port, "127.0.0.6", "x@any.test", forged)
        self.assertEqual(code, 250, text)
        msg = message_from_bytes(find(server.maildir(ACCOUNT), token))
        ours = [h for h in msg.get_all("Authentication-Results") if h.startswith("mx.example.test")]
        self.assertEqual(len(ours), 1, ours)
        self.assertNotIn("spf=pass", ours[0])
        self.assertIn("other.test; dkim=pass", msg.get_all("Authentication-Results"))

    def test_forged_results_removed_from_a_big_message_too(self) -> None:
        server = self.server(dmarc="off", spf="off", rdns="off")
        token = uuid.uuid4().hex
        body = ("".join(f"line {i} of a long message {token}\r\n" for i in range(60000))).encode()
        forged = message("x@any.test", token, extra="Authentication-Results: MX.example.test; dkim=pass\r\n")
        forged = forged.replace(f"\r\nbody {token}\r\n".encode(), b"\r\n" + body)
        self.assertGreater(len(forged), 3_000_000)
        code, text = smtp_send(server.port, "127.0.0.6", "x@any.test", forged)
        self.assertEqual(code, 250, text)
        data = find(server.maildir(ACCOUNT), token)
        head, _, stored_body = data.partition(b"\n\n")
        self.assertNotIn(b"dkim=pass", head)
        self.assertEqual(stored_body, body.replace(b"\r\n", b"\n"), "the text is delivered whole")

    def test_tls_handshake_time_limit(self) -> None:
        openssl = require_program(self, "openssl")
        cert, key = self.tmp / "tls.crt", self.tmp / "tls.key"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=mx.example.test",
                        "-keyout", str(key), "-out", str(cert), "-days", "2"], check=True, capture_output=True,
                       timeout=60)
        server = ServerProcess({"trusted_networks": ["127.0.0.1/32"], "dns_servers": [self.dns.server],
                                "tls": {"certificate": str(cert), "key": str(key), "self_signed": False},
                                "antispam": {"tls_handshake_seconds": 1, "rdns": "off", "spf": "off",
                                             "dkim": "off", "dmarc": "off"}})
        self.addCleanup(server.cleanup)
        tls_port = free_port()
        server.settings["listen"].append(f"127.0.0.1:{tls_port} tls")
        server.write_settings()
        server.start()
        with socket.create_connection(("127.0.0.1", tls_port), timeout=10,
                                      source_address=("127.0.0.6", 0)) as s:
            started = time.monotonic()
            try:
                gone = s.recv(100)  # a client that never starts the handshake
            except ConnectionResetError:
                gone = b""
            waited = time.monotonic() - started
        self.assertEqual(gone, b"")
        self.assertLess(waited, 5, "cut off after about tls_handshake_seconds")
        self.assertGreaterEqual(waited, 0.9)

    def test_clean_client_gets_through_while_fifty_addresses_hammer(self) -> None:
        server = self.server(connection_rate=10, dmarc="off", spf="off", rdns="off")
        stop = time.monotonic() + 8
        hammered = [0]

        def hammer(source: str) -> None:
            while time.monotonic() < stop:
                try:
                    with socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                                  source_address=(source, 0)) as s:
                        s.recv(512)
                        hammered[0] += 1
                except OSError:
                    pass

        threads = [threading.Thread(target=hammer, args=(f"127.0.1.{i}",), daemon=True) for i in range(1, 51)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            token = uuid.uuid4().hex
            code, text = smtp_send(server.port, "127.0.0.7", "x@host7.test", message("x@host7.test", token))
            self.assertEqual(code, 250, text)
            self.assertIsNotNone(find(server.maildir(ACCOUNT), token))
        finally:
            for t in threads:
                t.join(15)
        self.assertGreater(hammered[0], 50)


if __name__ == "__main__":
    unittest.main()
