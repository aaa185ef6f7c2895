"""An authenticating SmartHost: a second ISMail that takes relay mail only after AUTH.

The first ISMail relays through the second with smarthost.authenticate; a wrong
password keeps the message queued with the SmartHost's own refusal visible in
`queue list`; the right one (after a settings change and a restart) delivers it.
"""
import mailbox
import unittest

from tests.support import cli
from tests.test_delivery import DeliveryCase, new_token, submit


class AuthenticatingSmartHostTest(DeliveryCase):
    def relay_pair(self, password: str):
        # B offers AUTH without TLS to loopback (a trusted network) and holds the account A
        # logs in with; A always logs in (smarthost.authenticate), which B's Received: header
        # records as ESMTPA, and a refused login keeps A's message queued.
        b = self.server({"server_name": "smarthost.example.test", "primary_domain": "b.test",
                         "smarthost": {"enabled": True,
                         "host": "127.0.0.1", "port": 9, "exclusive": True, "tls": "none"}},
                        accounts=("relay@b.test", "user@b.test"))
        a = self.server({"smarthost": {"enabled": True, "host": "127.0.0.1", "port": b.port,
                                       "exclusive": True, "authenticate": True,
                                       "account": "relay@b.test", "password": password,
                                       "tls": "none"},
                         "retry": {"first_seconds": 3600, "max_interval_seconds": 3600,
                                   "lifetime_hours": 1}})
        return a, b

    def test_right_password_delivers(self):
        a, b = self.relay_pair("secret-pw")  # ServerProcess gives every account this password
        token = new_token()
        submit(a.port, "user@example.test", ["user@b.test"], token)
        self.wait_for(lambda: b.count("user@b.test") == 1, 20, "the message at B")
        self.wait_queue_empty(a)
        [msg] = mailbox.Maildir(b.maildir("user@b.test"), create=False).values()
        self.assertEqual(msg["Subject"], f"test {token}")
        self.assertIn("ESMTPA", " ".join(msg.get_all("Received")))  # B logged the login

    def test_wrong_password_is_deferred_with_the_reply_visible(self):
        a, b = self.relay_pair("wrong-pw")
        submit(a.port, "user@example.test", ["user@b.test"])
        listing = self.wait_for(lambda: (lambda out: out if "535" in out else "")(
            cli(a.data_dir, "queue", "list").stdout), 20, "the deferral in queue list")
        self.assertIn("<user@b.test>", listing)
        self.assertIn("refused the login for relay@b.test", listing)
        self.assertEqual(b.count("user@b.test"), 0)
        # The user fixes the password; after a restart and a flush the message goes.
        a.stop()
        a.settings["smarthost"]["password"] = "secret-pw"
        a.write_settings()
        a.start()
        self.assertEqual(cli(a.data_dir, "queue", "flush").returncode, 0)
        self.wait_for(lambda: b.count("user@b.test") == 1, 20, "the message at B after the fix")
        self.wait_queue_empty(a)


if __name__ == "__main__":
    unittest.main()
