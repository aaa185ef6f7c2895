"""outgoing.require_tls_domains (issue 12): mail for such a domain never leaves without
TLS and a certificate that verifies; it waits in the queue instead, saying why.

ISMail A delivers directly (MX records from dnsmasq on loopback, mx_port pointing at
ISMail B).  B first offers no STARTTLS, then a self-signed certificate; A delivers
only once it trusts that certificate (SSL_CERT_FILE, OpenSSL's own variable)."""
from __future__ import annotations

import os
import time
import unittest
import uuid

from tests.support import Dnsmasq, ServerProcess, cli, require_program
from tests.test_mailauth_e2e import send, message, wait_file

RECORDS = ["--mx-host=secure.test,mx.secure.test,10", "--mx-host=plain.test,mx.secure.test,10",
           "--host-record=mx.secure.test,127.0.0.1"]


class RequireTlsTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dns = Dnsmasq(require_program(self, "dnsmasq"), RECORDS, probe="secure.test")
        self.addCleanup(self.dns.stop)

    def receiver(self, self_signed: bool) -> ServerProcess:
        b = ServerProcess({"server_name": "mx.secure.test", "primary_domain": "secure.test",
                           "additional_domains": ["plain.test"], "dkim": {"auto_keys": False},
                           "tls": {"self_signed": self_signed}},
                          accounts=("someone@secure.test", "someone@plain.test")).start()
        self.addCleanup(b.cleanup)
        return b

    def sender(self, b: ServerProcess) -> ServerProcess:
        a = ServerProcess({"dkim": {"auto_keys": False}, "tls": {"self_signed": False},
                           "smarthost": {"enabled": False}, "dns_servers": [self.dns.server],
                           "outgoing": {"mx_port": b.port, "require_tls_domains": ["secure.test"]},
                           "retry": {"first_seconds": 3600, "max_interval_seconds": 3600,
                                     "lifetime_hours": 1}})
        self.addCleanup(a.cleanup)
        return a.start()

    @staticmethod
    def restart_with(a: ServerProcess, env: dict) -> None:
        """Stop ``a`` and start it again with ``env`` added to its environment."""
        a.stop()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            a.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def queue_says(self, a: ServerProcess, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        listing = ""
        while time.monotonic() < deadline:
            listing = cli(a.data_dir, "queue", "list").stdout
            if text in listing:
                return listing
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not in the queue listing:\n{listing}")

    def test_without_starttls_it_waits_while_other_mail_goes(self) -> None:
        b = self.receiver(self_signed=False)
        a = self.sender(b)
        plain, secure = "tok-" + uuid.uuid4().hex, "tok-" + uuid.uuid4().hex
        send(a.port, "user@example.test", ["someone@plain.test"], message("user@example.test", "x", plain))
        send(a.port, "user@example.test", ["someone@secure.test"], message("user@example.test", "x", secure))
        wait_file(b.maildir("someone@plain.test"), plain)
        listing = self.queue_says(a, "does not offer STARTTLS (TLS is required for this destination)")
        self.assertIn("<someone@secure.test>", listing)
        self.assertEqual(b.count("someone@secure.test"), 0)

    def test_a_certificate_that_does_not_verify_is_not_enough_one_that_does_is(self) -> None:
        b = self.receiver(self_signed=True)
        a = self.sender(b)
        token = "tok-" + uuid.uuid4().hex
        send(a.port, "user@example.test", ["someone@secure.test"], message("user@example.test", "x", token))
        self.queue_says(a, "certificate verify failed")
        self.assertEqual(b.count("someone@secure.test"), 0)
        # The same mail goes once A trusts B's certificate (as a real CA-signed one would be).
        cert = next((b.data_dir / "tls").glob("*.crt"))
        self.restart_with(a, {"SSL_CERT_FILE": str(cert)})
        self.assertEqual(cli(a.data_dir, "queue", "flush").returncode, 0)
        got = wait_file(b.maildir("someone@secure.test"), token, timeout=40)
        self.assertRegex(got, rb"with ESMTPS")


if __name__ == "__main__":
    unittest.main()
