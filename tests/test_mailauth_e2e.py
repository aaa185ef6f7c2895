"""Issue 12 end to end: mail that leaves ISMail A through a SmartHost (ISMail B) is
DKIM-signed when its From: is ours, and a reference verifier (python3-dkim's
dkimverify, the key served by dnsmasq) accepts the signature as B received it;
forwarded copies get an SRS sender, a bounce to that SRS address finds its way back
to the original sender, and a forged one is refused.  Also the `dkim` and `dns`
commands, with real look-ups against dnsmasq."""
from __future__ import annotations

import re
import smtplib
import subprocess
import time
import unittest
import uuid
from pathlib import Path

from tests.support import Dnsmasq, ServerProcess, cli, require_program

NOGEN = {"dkim": {"auto_keys": False}, "tls": {"self_signed": False}}


def crlf(data: bytes) -> bytes:
    """A Maildir keeps LF line ends; the wire (and DKIM) has CRLF."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def send(port: int, sender: str, rcpts: list[str], text: bytes, source: str = "127.0.0.1") -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as s:
        s.ehlo("client.test")
        code, reply = s.mail(sender)
        assert code == 250, (code, reply)
        for r in rcpts:
            code, reply = s.rcpt(r)
            assert code == 250, (r, code, reply)
        code, reply = s.data(text)
        assert code == 250, (code, reply)
    return reply.decode()


def message(from_: str, to: str, token: str, body: str = "") -> bytes:
    return (f"From: Someone <{from_}>\r\nTo: <{to}>\r\nSubject: test {token}\r\n"
            f"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{token}@client.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"body {token}\r\n{body}").encode()


def wait_file(box: Path, token: str, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sub in ("new", "cur"):
            folder = box / sub
            if folder.is_dir():
                for p in folder.iterdir():
                    data = p.read_bytes()
                    if token.encode() in data:
                        return data
        time.sleep(0.05)
    raise AssertionError(f"{token} did not arrive in {box}")


def dkim_verify(test: unittest.TestCase, data: bytes, dns: Dnsmasq) -> tuple[int, str]:
    """Run python3-dkim's verifier on ``data``, its DNS look-ups answered by ``dns``."""
    require_program(test, "dkimverify")
    script = ("import sys, dkim, dns.resolver\n"
              "r = dns.resolver.Resolver(configure=False)\n"
              f"r.nameservers = ['127.0.0.1']; r.port = {dns.port}\n"
              "def dnsfunc(name, timeout=5):\n"
              "    name = name.decode() if isinstance(name, bytes) else name\n"
              "    try:\n"
              "        ans = r.resolve(name, 'TXT')\n"
              "    except Exception:\n"
              "        return None\n"
              "    return b''.join(b''.join(rr.strings) for rr in ans)\n"
              "ok = dkim.verify(sys.stdin.buffer.read(), dnsfunc=dnsfunc)\n"
              "print('signature ok' if ok else 'signature verification failed')\n"
              "sys.exit(0 if ok else 1)\n")
    r = subprocess.run(["/usr/bin/python3", "-c", script], input=data, capture_output=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


class MailAuthE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.b = ServerProcess({**NOGEN, "server_name": "mx.remote.test", "primary_domain": "remote.test",
                               "additional_domains": ["outside.test"]},
                              accounts=("someone@remote.test", "sender@outside.test")).start()
        cls.a = ServerProcess({**NOGEN, "trusted_networks": ["127.0.0.1/32"],
                               "smarthost": {"enabled": True, "host": "127.0.0.1", "port": cls.b.port,
                                             "exclusive": True, "tls": "none"}},
                              accounts=("user@example.test",))
        r = cli(cls.a.data_dir, "dkim", "new", "example.test", "--bits", "1024", "--selector", "test1")
        assert r.returncode == 0, r.stderr
        # What `dkim new` tells the user to publish.
        m = re.search(r'Publish: (test1\._domainkey\.example\.test) TXT "([^"]+)"', r.stdout)
        assert m, r.stdout
        cls.dkim_value = m.group(2)
        r = cli(cls.a.data_dir, "account", "forward", "user@example.test", "someone@remote.test")
        assert r.returncode == 0, r.stderr
        cls.a.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.a.cleanup()
        cls.b.cleanup()

    def zone(self) -> str:
        r = cli(self.a.data_dir, "dns", "example.test")
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def dnsmasq_with_key(self) -> Dnsmasq:
        program = require_program(self, "dnsmasq")
        value = self.dkim_value
        self.assertTrue(value.startswith("v=DKIM1; k=rsa; p="), value)
        dns = Dnsmasq(program, [f"--txt-record=test1._domainkey.example.test,{value}",
                                "--mx-host=remote.test,mx.remote.test,10"])
        self.addCleanup(dns.stop)
        return dns

    def test_mail_from_our_domain_leaves_signed_and_verifies(self) -> None:
        token = "tok-" + uuid.uuid4().hex
        body = "Grüße, naïve café\r\n" + ("x" * 900 + "\r\n") * 3 + "\r\n\r\n"
        send(self.a.port, "user@example.test", ["someone@remote.test"],
             message("user@example.test", "someone@remote.test", token, body))
        got = crlf(wait_file(self.b.maildir("someone@remote.test"), token))
        self.assertRegex(got, rb"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example\.test;")
        self.assertIn(b"s=test1;", got)
        dns = self.dnsmasq_with_key()
        code, out = dkim_verify(self, got, dns)
        self.assertEqual(code, 0, out)
        # The verifier can say no: a changed body fails.
        code, out = dkim_verify(self, got.replace(token.encode(), b"tok-changed", 1)
                                .replace(b"body tok-", b"body tok-X", 1), dns)
        self.assertNotEqual(code, 0, out)

    def test_mail_from_another_domain_is_not_signed(self) -> None:
        token = "tok-" + uuid.uuid4().hex
        send(self.a.port, "someone@elsewhere.test", ["someone@remote.test"],
             message("someone@elsewhere.test", "someone@remote.test", token))
        got = wait_file(self.b.maildir("someone@remote.test"), token)
        self.assertNotIn(b"DKIM-Signature", got)

    def test_only_mail_from_our_side_gets_our_signature(self) -> None:
        # user@example.test forwards to someone@remote.test.  A stranger (127.0.0.2, not
        # trusted) writing "From: user@example.test" must not get a forwarded copy that
        # carries our signature (it would pass DMARC as us); the same from a trusted
        # client is signed, as OpenDKIM signs for its internal hosts only.
        dns = self.dnsmasq_with_key()
        for source, signed in (("127.0.0.2", False), ("127.0.0.1", True)):
            with self.subTest(source=source):
                token = "tok-" + uuid.uuid4().hex
                send(self.a.port, "user@example.test", ["user@example.test"],
                     message("user@example.test", "user@example.test", token), source=source)
                copy = crlf(wait_file(self.b.maildir("someone@remote.test"), token))
                self.assertEqual(b"DKIM-Signature:" in copy, signed, copy[:600])
                if signed:
                    code, out = dkim_verify(self, copy, dns)
                    self.assertEqual(code, 0, out)

    def test_forwarded_copy_gets_srs_and_its_bounce_goes_back(self) -> None:
        token = "tok-" + uuid.uuid4().hex
        # From outside (127.0.0.2 is not trusted by A): mail for the local user ...
        send(self.a.port, "sender@outside.test", ["user@example.test"],
             message("sender@outside.test", "user@example.test", token), source="127.0.0.2")
        wait_file(self.a.maildir("user@example.test"), token)
        # ... whose forwarded copy leaves with an SRS sender of example.test, unsigned by us.
        copy = wait_file(self.b.maildir("someone@remote.test"), token)
        m = re.search(rb"^Return-Path: <(SRS0=[^>]+@example\.test)>", copy, re.M)
        self.assertIsNotNone(m, copy[:400])
        srs = m.group(1).decode()
        self.assertIn("outside.test", srs)
        self.assertNotIn(b"DKIM-Signature", copy)
        # A bounce to the SRS address, from a stranger, is taken and sent to the original sender.
        bounce_token = "tok-" + uuid.uuid4().hex
        send(self.a.port, "", [srs], message("MAILER-DAEMON@remote.test", srs, bounce_token),
             source="127.0.0.3")
        back = wait_file(self.b.maildir("sender@outside.test"), bounce_token)
        self.assertRegex(back, rb"^Return-Path: <>", )
        # A forged one (another hash) is refused at RCPT.
        local = srs.split("@")[0]
        hash_part = local.split("=")[1]
        forged = srs.replace(f"={hash_part}=", "=" + ("AAAA" if hash_part != "AAAA" else "BBBB") + "=", 1)
        with smtplib.SMTP("127.0.0.1", self.a.port, timeout=30, source_address=("127.0.0.3", 0)) as s:
            s.ehlo("client.test")
            s.mail("")
            code, reply = s.rcpt(forged)
        self.assertEqual(code, 550, reply)

    def test_dns_check_against_a_real_dns_server(self) -> None:
        program = require_program(self, "dnsmasq")
        lines = [l for l in self.zone().splitlines() if l and not l.startswith(";")]
        self.assertTrue(any(" MX " in l for l in lines), lines)
        dkim_value = "".join(re.findall(r'"([^"]*)"', next(l for l in lines if "_domainkey" in l)))
        spf = "".join(re.findall(r'"([^"]*)"', next(l for l in lines if "v=spf1" in l)))
        dmarc = "".join(re.findall(r'"([^"]*)"', next(l for l in lines if "_dmarc" in l)))
        right = ["--mx-host=example.test,mx.example.test,10",
                 "--host-record=mx.example.test,127.0.0.1",
                 f"--txt-record=example.test,{spf}",
                 f"--txt-record=test1._domainkey.example.test,{dkim_value}",
                 f"--txt-record=_dmarc.example.test,{dmarc}"]
        dns = Dnsmasq(program, right, probe="example.test")
        self.addCleanup(dns.stop)
        settings_file = self.a.data_dir / "ismail.json"
        original = settings_file.read_text()
        self.addCleanup(settings_file.write_text, original)
        import json
        data = json.loads(original)
        data["dns_servers"] = [dns.server]
        settings_file.write_text(json.dumps(data))
        r = cli(self.a.data_dir, "dns", "example.test", "--check")
        self.assertIn("\u2713 MX", r.stdout, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"\u2713 TXT +test1\._domainkey\.example\.test")
        self.assertRegex(r.stdout, r"\u2713 TXT +_dmarc\.example\.test")
        # A wrong key published: named, and the exit code says so.
        dns.stop()
        from ismail.mailauth import dkim, rsa
        other_key = dkim.dns_record_value(rsa.generate(1024).public())
        wrong = [a for a in right if "_domainkey" not in a] + [
            f"--txt-record=test1._domainkey.example.test,{other_key}"]
        dns2 = Dnsmasq(program, wrong, probe="example.test")
        self.addCleanup(dns2.stop)
        data["dns_servers"] = [dns2.server]
        settings_file.write_text(json.dumps(data))
        r = cli(self.a.data_dir, "dns", "example.test", "--check")
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"\u2717 TXT +test1\._domainkey\.example\.test: .*(different|key)")


class DkimCommandTest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = ServerProcess(NOGEN)
        self.addCleanup(self.server.cleanup)

    def dkim(self, *args: str):
        return cli(self.server.data_dir, "dkim", *args)

    def test_new_list_export_remove_and_refusals(self) -> None:
        openssl = require_program(self, "openssl")
        r = self.dkim("new", "example.test", "--bits", "1024", "--selector", "one")
        self.assertEqual(r.returncode, 0, r.stderr)
        key_file = self.server.data_dir / "dkim" / "example.test" / "one.pem"
        check = subprocess.run([openssl, "pkey", "-in", str(key_file), "-check", "-noout"],
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertEqual(key_file.stat().st_mode & 0o777, 0o600)
        r = self.dkim("new", "example.test", "--bits", "1024", "--selector", "two")
        self.assertEqual(r.returncode, 0, r.stderr)
        listing = self.dkim("list").stdout
        self.assertRegex(listing, r"example\.test\s+two\s+1024 bits\s+signs")
        self.assertRegex(listing, r"example\.test\s+one\s+1024 bits\s+old")
        # Which code makes the signatures: the ssl module's OpenSSL here (Linux, CI).
        self.assertRegex(listing, r"RSA signatures by OpenSSL [0-9.]+.*, the library of Python's ssl module")
        # The signing key cannot be removed; the old one can.
        r = self.dkim("remove", "example.test", "two")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("signs", r.stderr)
        self.assertEqual(self.dkim("remove", "example.test", "one").returncode, 0)
        self.assertFalse(key_file.exists())
        # Not a local domain; a selector taken.
        r = self.dkim("new", "nothere.test")
        self.assertIn("not a local domain", r.stderr)
        r = self.dkim("new", "example.test", "--bits", "1024", "--selector", "two")
        self.assertIn("already", r.stderr)
        # export gives a PEM that openssl reads.
        pem = self.dkim("export", "example.test", "two").stdout
        self.assertTrue(pem.startswith("-----BEGIN PRIVATE KEY-----"), pem[:60])

    def test_import_good_and_bad_keys(self) -> None:
        openssl = require_program(self, "openssl")
        folder = self.server.data_dir / "keys"
        folder.mkdir()
        good = folder / "good.pem"
        subprocess.run([openssl, "genrsa", "-traditional", "-out", str(good), "2048"],
                       check=True, capture_output=True, timeout=60)
        r = self.dkim("import", "example.test", str(good), "--selector", "imported")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(self.dkim("list").stdout, r"imported\s+2048 bits\s+signs")
        before = (self.server.data_dir / "dkim" / "example.test" / "imported.pem").read_bytes()
        junk = folder / "junk.pem"
        junk.write_text("hello, I am not a key\n")
        ec = folder / "ec.pem"
        subprocess.run([openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-out", str(ec)], check=True, capture_output=True, timeout=60)
        for path, words in ((junk, "not"), (ec, "RSA")):
            r = self.dkim("import", "example.test", str(path), "--selector", "imported")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(words, r.stderr)
        # Nothing was overwritten.
        self.assertEqual((self.server.data_dir / "dkim" / "example.test" / "imported.pem").read_bytes(), before)
        self.assertRegex(self.dkim("list").stdout, r"imported\s+2048 bits\s+signs")


class AutoKeysTest(unittest.TestCase):
    def test_each_local_domain_gets_a_key_at_start(self) -> None:
        server = ServerProcess({"tls": {"self_signed": False}, "additional_domains": ["other.test"],
                                "dkim": {"auto_keys": True, "key_bits": 1024}}).start()
        self.addCleanup(server.cleanup)
        deadline = time.monotonic() + 120
        listing = ""
        while time.monotonic() < deadline:
            listing = cli(server.data_dir, "dkim", "list").stdout
            if len(re.findall(r"1024 bits\s+signs", listing)) == 2:
                break
            time.sleep(0.5)
        year = time.gmtime().tm_year
        self.assertRegex(listing, rf"example\.test\s+ismail{year}\s+1024 bits\s+signs")
        self.assertRegex(listing, rf"other\.test\s+ismail{year}\s+1024 bits\s+signs")

    def test_a_stop_while_the_key_is_made_waits_for_it_and_exits_cleanly(self) -> None:
        # OpenSSL makes the key outside the interpreter's lock; a process that ended under
        # that call crashed in OpenSSL's exit cleanup (SIGSEGV in 2 of 10 such stops).
        for attempt in range(6):
            server = ServerProcess({"tls": {"self_signed": False},
                                    "dkim": {"auto_keys": True, "key_bits": 2048}}).start()
            self.addCleanup(server.cleanup)
            time.sleep(0.05 * attempt)  # the key takes 0.1-0.3 s: stop at points along it
            self.assertEqual(server.stop(), 0, f"attempt {attempt}: the server did not exit cleanly")
            listing = cli(server.data_dir, "dkim", "list").stdout
            self.assertRegex(listing, r"example\.test\s+\S+\s+2048 bits\s+signs", f"attempt {attempt}")

    def test_a_domain_added_while_running_gets_its_key(self) -> None:
        import copy
        import shutil
        import tempfile
        from ismail.config import from_dict
        from ismail.service import MailServer
        from tests.support import free_port
        data = Path(tempfile.mkdtemp(prefix="ismail-keys-"))
        self.addCleanup(shutil.rmtree, data, True)
        raw = {"server_name": "mx.example.test", "primary_domain": "example.test",
               "listen": [f"127.0.0.1:{free_port()}"], "pop3": {"enabled": False},
               "imap": {"enabled": False}, "tls": {"self_signed": False},
               "smarthost": {"enabled": True, "host": "127.0.0.1", "port": 9, "tls": "none"},
               "dkim": {"key_bits": 1024}}
        server = MailServer(from_dict(raw)[0], data)
        server.start()
        self.addCleanup(server.stop, 5.0)
        more = copy.deepcopy(raw)
        more["additional_domains"] = ["new.test"]
        server.apply(from_dict(more)[0])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                server.dkim_keys.signing_key("example.test") and server.dkim_keys.signing_key("new.test")):
            time.sleep(0.2)
        self.assertIsNotNone(server.dkim_keys.signing_key("example.test"))
        self.assertIsNotNone(server.dkim_keys.signing_key("new.test"))
        self.assertEqual(server.dkim_keys.signing_key("new.test").key.bits, 1024)


if __name__ == "__main__":
    unittest.main()
