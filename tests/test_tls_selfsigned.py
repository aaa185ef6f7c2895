"""TLS out of the box (issue 12): with no certificate configured, the first start makes a
self-signed one for server_name, and STARTTLS (SMTP), STLS (POP3) and STARTTLS (IMAP)
work at once, and so do TLS-from-the-first-byte ports (IMAPS 993, POP3S 995, SMTPS 465)
- checked with OpenSSL's own client, the way an administrator would."""
from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from tests.support import ServerProcess, _another_port, require_program

SETTINGS = {"tls": {"self_signed": True}, "dkim": {"auto_keys": False}}


def s_client(openssl: str, port: int, proto: str, ca: Path | None = None) -> str:
    args = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", proto,
            "-servername", "mx.example.test", "-showcerts"]
    if ca is not None:
        args += ["-CAfile", str(ca), "-verify_hostname", "mx.example.test", "-verify_return_error"]
    r = subprocess.run(args, input=b"", capture_output=True, timeout=30)
    return (r.stdout + r.stderr).decode(errors="replace")


class SelfSignedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ServerProcess(SETTINGS).start()
        cls.tls_dir = cls.server.data_dir / "tls"

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.cleanup()

    def setUp(self) -> None:
        self.openssl = require_program(self, "openssl")

    def files(self) -> tuple[Path, Path]:
        certs = sorted(self.tls_dir.glob("*.crt"))
        keys = sorted(self.tls_dir.glob("*.key"))
        self.assertEqual((len(certs), len(keys)), (1, 1), list(self.tls_dir.iterdir()))
        return certs[0], keys[0]

    def test_starttls_pop3_stls_and_imap_starttls_are_encrypted_with_it(self) -> None:
        cert, _ = self.files()
        for port, proto in ((self.server.port, "smtp"), (self.server.pop3_port, "pop3"),
                            (self.server.imap_port, "imap")):
            out = s_client(self.openssl, port, proto, ca=cert)
            self.assertRegex(out, r"Verify return code: 0 \(ok\)", f"{proto}: {out[-1500:]}")
            self.assertRegex(out, r"subject=.*CN\s*=\s*mx\.example\.test", proto)
            self.assertRegex(out, r"Protocol *: *TLSv1\.[23]|New, TLSv1\.[23]", proto)

    def test_openssl_accepts_the_certificate_and_the_key(self) -> None:
        cert, key = self.files()
        text = subprocess.run([self.openssl, "x509", "-in", str(cert), "-noout", "-text"],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("DNS:mx.example.test", text.stdout)
        self.assertRegex(text.stdout, r"Public-Key: \(2048 bit\)")
        self.assertIn("sha256WithRSAEncryption", text.stdout)
        years = re.findall(r"Not (?:Before|After) *: \w+ +\d+ [\d:]+ (\d{4})", text.stdout)
        self.assertEqual(int(years[1]) - int(years[0]), 10, years)
        verify = subprocess.run([self.openssl, "verify", "-CAfile", str(cert), str(cert)],
                                capture_output=True, text=True, timeout=30)
        self.assertIn("OK", verify.stdout, verify.stderr)
        check = subprocess.run([self.openssl, "pkey", "-in", str(key), "-check", "-noout"],
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertIn("valid", (check.stdout + check.stderr).lower())
        if os.name != "nt":
            self.assertEqual(key.stat().st_mode & 0o777, 0o600)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))  # what ISMail itself does

    def test_a_restart_keeps_the_same_certificate(self) -> None:
        cert, key = self.files()
        before = (cert.read_bytes(), key.read_bytes())
        self.server.stop()
        self.server.start()
        cert2, key2 = self.files()
        self.assertEqual((cert2.read_bytes(), key2.read_bytes()), before)
        self.assertRegex(s_client(self.openssl, self.server.port, "smtp", ca=cert2),
                         r"Verify return code: 0 \(ok\)")


class DamagedTest(unittest.TestCase):
    def test_a_damaged_certificate_of_its_own_is_kept_aside_and_made_again(self) -> None:
        """ISMail's own certificate file spoilt (a disk error, an edit): the server still
        starts, with a new certificate, and the damaged files are kept, renamed."""
        server = ServerProcess(SETTINGS).start()
        self.addCleanup(server.cleanup)
        tls_dir = server.data_dir / "tls"
        [cert] = tls_dir.glob("*.crt")
        server.stop()
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        server.start()
        kept = sorted(p.name for p in tls_dir.glob("*.damaged-*"))
        self.assertEqual([n.split(".damaged-")[0] for n in kept],
                         [cert.name, cert.name.replace(".crt", ".key")], kept)
        ctx = ssl.create_default_context(cafile=str(cert))   # the new one, verified
        with socket.create_connection(("127.0.0.1", server.imap_port), timeout=30) as raw:
            raw.recv(1024)
            raw.sendall(b"a STARTTLS\r\n")
            self.assertIn(b"a OK", raw.recv(1024))
            with ctx.wrap_socket(raw, server_hostname="mx.example.test") as tls:
                self.assertIn(tls.version(), ("TLSv1.2", "TLSv1.3"))
        self.assertIn("could not be used", server.log_text())


class ImplicitTlsTest(unittest.TestCase):
    def test_imaps_pop3s_and_smtps_ports_use_it_without_a_certificate_configured(self) -> None:
        """Phones offer "SSL/TLS" on 993 first: such a port works with the certificate
        ISMail made, as STARTTLS does, instead of the settings being refused."""
        server = ServerProcess(SETTINGS)
        self.addCleanup(server.cleanup)
        taken = {server.port, server.pop3_port, server.imap_port}
        ports = {name: _another_port(taken) for name in ("smtps", "pop3s", "imaps")}
        server.settings["listen"].append(f"127.0.0.1:{ports['smtps']} tls")
        server.settings["pop3"] = {"listen": [f"127.0.0.1:{server.pop3_port}", f"127.0.0.1:{ports['pop3s']} tls"]}
        server.settings["imap"] = {"listen": [f"127.0.0.1:{server.imap_port}", f"127.0.0.1:{ports['imaps']} tls"]}
        server.write_settings()
        server.start()
        cert = sorted((server.data_dir / "tls").glob("*.crt"))[0]
        ctx = ssl.create_default_context(cafile=str(cert))   # verifies it, and the name
        for name, port in ports.items():
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                    ctx.wrap_socket(raw, server_hostname="mx.example.test") as tls:
                greeting = tls.recv(1024)
                self.assertRegex(greeting, {"smtps": rb"^220 ", "pop3s": rb"^\+OK", "imaps": rb"^\* OK"}[name])
                self.assertIn(tls.version(), ("TLSv1.2", "TLSv1.3"))
        with socket.create_connection(("127.0.0.1", ports["imaps"]), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="mx.example.test") as tls:
            tls.recv(1024)
            tls.sendall(b"a LOGIN user@example.test secret-pw\r\n")
            self.assertIn(b"a OK", tls.recv(4096), "a password is welcome over TLS")

    def test_without_a_certificate_of_any_kind_a_tls_port_is_refused_by_name(self) -> None:
        server = ServerProcess({"tls": {"self_signed": False}, "dkim": {"auto_keys": False}})
        self.addCleanup(server.cleanup)
        server.settings["imap"] = {"listen": [f"127.0.0.1:{server.imap_port} tls"]}
        server.write_settings()
        r = subprocess.run([sys.executable, "-m", "ismail", "--data-dir", str(server.data_dir), "run"],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('imap.listen', r.stderr)
        self.assertIn("tls.self_signed", r.stderr)


class NotWantedTest(unittest.TestCase):
    def test_switched_off_no_certificate_and_no_starttls(self) -> None:
        server = ServerProcess({"tls": {"self_signed": False}, "dkim": {"auto_keys": False}}).start()
        self.addCleanup(server.cleanup)
        import smtplib
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as s:
            s.ehlo("client.test")
            self.assertFalse(s.has_extn("starttls"))
        self.assertFalse((server.data_dir / "tls").exists())

    def test_a_configured_certificate_wins(self) -> None:
        openssl = require_program(self, "openssl")
        folder = Path(tempfile.mkdtemp(prefix="ismail-cert-"))
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(folder)]))
        cert, key = folder / "c.pem", folder / "k.pem"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", "/CN=real.example.test"],
                       check=True, capture_output=True, timeout=60)
        server = ServerProcess({"tls": {"certificate": str(cert), "key": str(key)},
                                "dkim": {"auto_keys": False}}).start()
        self.addCleanup(server.cleanup)
        out = s_client(openssl, server.port, "smtp")
        self.assertRegex(out, r"subject=.*CN\s*=\s*real\.example\.test")
        self.assertFalse((server.data_dir / "tls").exists())


if __name__ == "__main__":
    unittest.main()
