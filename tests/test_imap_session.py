"""The IMAP session state machine, fed bytes directly (no sockets): the protocol and login side.

A real MailStore in a temporary directory and a tiny fake backend; what is checked
is what a client would read.  The helpers here (`SessionCase`, `Client`) are shared
by test_imap_session_folders.py and test_imap_session_messages.py.
"""
from __future__ import annotations

import base64
import shutil
import tempfile
import unittest
from pathlib import Path

from ismail.imap.session import MAX_ERRORS, PRE_AUTH_LITERAL, ImapSession
from ismail.queue.spool import MessageBuffer
from ismail.stats import Stats
from ismail.store import maildir
from ismail.store.folders import MailStore

USER, PASSWORD = "user@example.test", "secret"
MSG = b"From: Ann <ann@remote.test>\r\nTo: user@example.test\r\nSubject: hello\r\n" \
      b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@remote.test>\r\n\r\nline one\r\nline two\r\n"


def flatten(out: list) -> bytes:
    """What the connection sends for one feed: every item in order, streams to the end."""
    data = bytearray()
    for item in out:
        if isinstance(item, (bytes, bytearray)):
            data += item
        else:
            for piece in item:
                data += piece
    return bytes(data)


def plain(user: str = USER, password: str = PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class FakeBackend:
    def __init__(self, root: Path) -> None:
        self.stats = Stats()
        self.root = root
        self.banned = False
        self.logins: list[tuple[str, str, str]] = []

    def check_login(self, address: str, password: str, ip: str) -> str:
        self.logins.append((address, password, ip))
        if self.banned:
            return "banned"
        return "ok" if (address, password) == (USER, PASSWORD) else "failed"

    def mailbox_of(self, address: str) -> Path | None:
        return self.root if address == USER else None

    def open_store(self, mailbox: Path) -> MailStore:
        return MailStore(mailbox)


class Client:
    """One session driven as a client drives it: lines in, the response text back."""

    def __init__(self, backend: FakeBackend, trusted: bool = True, allow_plaintext: bool = False,
                 max_message_bytes: int = 1_000_000, tls_available: bool = False,
                 tls_active: bool = False) -> None:
        self.s = ImapSession(backend, "mx.example.test", "192.0.2.7", trusted, allow_plaintext,
                             max_message_bytes, tls_available, tls_active)
        self.banner = self.s.greeting().decode()

    def send(self, data: bytes) -> str:
        return flatten(self.s.feed(data)).decode("utf-8", "replace")

    def say(self, line: str | bytes) -> str:
        data = line.encode() if isinstance(line, str) else line
        return self.send(data + b"\r\n")

    def lines(self, line: str | bytes) -> list[str]:
        return self.say(line).split("\r\n")[:-1]

    def login(self) -> str:
        reply = self.say(f"L1 LOGIN {USER} {PASSWORD}")
        assert "L1 OK" in reply, reply
        return reply

    def select(self, name: str = "INBOX") -> str:
        reply = self.say(f"S1 SELECT {name}")
        assert "S1 OK" in reply, reply
        return reply


class SessionCase(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-imap-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.root = self.dir / "example.test" / "user"
        self.backend = FakeBackend(self.root)

    def client(self, login: bool = True, select: str | None = None, **kw) -> Client:
        c = Client(self.backend, **kw)
        self.addCleanup(c.s.close)
        if login:
            c.login()
        if select:
            c.select(select)
        return c

    def store(self) -> MailStore:
        return MailStore(self.root)

    def deliver(self, data: bytes = MSG, folder: Path | None = None) -> Path:
        """A message arriving over SMTP, written as the receiver writes it."""
        target = folder or self.root
        for sub in ("tmp", "new", "cur"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        buf = MessageBuffer(target / "tmp")
        buf.write(data)
        try:
            return maildir.deliver([target], b"", buf)[0]
        finally:
            buf.close()

    def assertOk(self, reply: str, tag: str) -> None:
        self.assertIn(f"{tag} OK", reply)


# --- greeting, capabilities, TLS, login ----------------------------------------------------------

class GreetingTest(SessionCase):
    def test_greeting_carries_capabilities(self):
        c = self.client(login=False, tls_available=True)
        self.assertTrue(c.banner.startswith("* OK [CAPABILITY IMAP4rev1 "), c.banner)
        self.assertIn("mx.example.test ISMail IMAP4rev1 ready\r\n", c.banner)
        for cap in ("LITERAL+", "IDLE", "UIDPLUS", "MOVE", "NAMESPACE", "SPECIAL-USE", "ID",
                    "ENABLE", "UNSELECT", "CHILDREN", "SASL-IR", "STARTTLS", "AUTH=PLAIN"):
            self.assertIn(f" {cap}", c.banner)
        self.assertNotIn("LOGINDISABLED", c.banner)

    def test_capability_in_every_state(self):
        c = self.client(login=False, tls_available=True)
        reply = c.say("a CAPABILITY")
        self.assertRegex(reply, r"^\* CAPABILITY IMAP4rev1 .*STARTTLS AUTH=PLAIN\r\na OK ")
        login = c.login()
        self.assertRegex(login, r"L1 OK \[CAPABILITY IMAP4rev1 [^]]*\] Logged in")
        self.assertNotIn("AUTH=", login)
        self.assertNotIn("STARTTLS", c.say("b CAPABILITY"))
        c.select()
        self.assertIn("c OK", c.say("c CAPABILITY"))

    def test_logindisabled_without_tls_from_an_untrusted_network(self):
        c = self.client(login=False, trusted=False, tls_available=True)
        self.assertIn("LOGINDISABLED", c.banner)
        self.assertNotIn("AUTH=PLAIN", c.banner)
        self.assertIn("a NO [PRIVACYREQUIRED]", c.say(f"a LOGIN {USER} {PASSWORD}"))
        self.assertIn("use STARTTLS", c.say(f"a LOGIN {USER} {PASSWORD}"))
        self.assertIn("b NO [PRIVACYREQUIRED]", c.say(f"b AUTHENTICATE PLAIN {plain()}"))
        self.assertEqual(self.backend.logins, [], "the password was never even looked at")
        self.assertEqual(c.s.state, "not authenticated")

    def test_plaintext_allowed_by_setting_by_tls_or_trust(self):
        for kw in ({"trusted": False, "allow_plaintext": True}, {"trusted": False, "tls_active": True},
                   {"trusted": True}):
            c = self.client(login=False, **kw)
            self.assertIn("AUTH=PLAIN", c.banner, kw)
            self.assertNotIn("LOGINDISABLED", c.banner, kw)
            self.assertIn("a OK", c.say(f"a LOGIN {USER} {PASSWORD}"), kw)


class StartTlsTest(SessionCase):
    def test_pipelined_input_after_starttls_is_discarded(self):
        c = self.client(login=False, trusted=False, tls_available=True)
        reply = c.send(f"a STARTTLS\r\nb LOGIN {USER} {PASSWORD}\r\n".encode())
        self.assertEqual(reply, "a OK Begin TLS negotiation now\r\n")
        self.assertTrue(c.s.starttls)
        self.assertEqual(c.send(b"c NOOP\r\n"), "", "nothing is read before the handshake")
        c.s.tls_started()
        self.assertTrue(c.s.tls_active)
        self.assertFalse(c.s.starttls)
        caps = c.say("d CAPABILITY")
        self.assertNotIn("STARTTLS", caps)
        self.assertIn("AUTH=PLAIN", caps)
        self.assertNotIn(" b ", caps)
        self.assertEqual(self.backend.logins, [], "the LOGIN sent in the clear was never used")
        self.assertIn("e OK", c.say(f"e LOGIN {USER} {PASSWORD}"))

    def test_starttls_refusals(self):
        c = self.client(login=False)
        self.assertIn("a NO STARTTLS is not available", c.say("a STARTTLS"))
        c = self.client(login=False, tls_available=True, tls_active=True)
        self.assertIn("a BAD TLS is already active", c.say("a STARTTLS"))
        c = self.client(tls_available=True)
        self.assertIn("a BAD already logged in", c.say("a STARTTLS"))
        self.assertIn("b BAD", c.say("b STARTTLS now"))


class LoginTest(SessionCase):
    def test_login_makes_the_special_folders_and_counts(self):
        c = self.client(login=False)
        self.assertIn("a NO [AUTHENTICATIONFAILED] Authentication failed.", c.say(f"a LOGIN {USER} wrong"))
        self.assertEqual(self.backend.stats.get("imap_logins_failed"), 1)
        c.login()
        self.assertEqual(c.s.authenticated, USER)
        self.assertEqual(self.backend.stats.get("imap_logins"), 1)
        self.assertEqual([f.name for f in self.store().list()],
                         ["INBOX", "Drafts", "Junk", "Sent", "Trash"])
        self.assertEqual(c.s.summary(), f"user={USER} fetched=0 appended=0 expunged=0")
        self.assertEqual(self.backend.logins[-1], (USER, PASSWORD, "192.0.2.7"))

    def test_user_name_is_case_folded_and_quoted_strings_work(self):
        c = self.client(login=False)
        self.assertIn("a OK", c.say('a LOGIN "User@Example.TEST" "secret"'))
        self.assertEqual(c.s.authenticated, USER)

    def test_banned_client_gets_bye(self):
        self.backend.banned = True
        c = self.client(login=False)
        reply = c.say(f"a LOGIN {USER} {PASSWORD}")
        self.assertEqual(reply, "* BYE Too many failed logins, try again later\r\n"
                                "a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        self.assertTrue(c.s.closing)

    def test_password_as_synchronising_literals(self):
        c = self.client(login=False)
        self.assertEqual(c.send(b"a LOGIN {17}\r\n"), "+ Ready for literal data\r\n")
        self.assertEqual(c.send(USER.encode() + b" {6}\r\n"), "+ Ready for literal data\r\n")
        self.assertIn("a OK", c.send(b"secret\r\n"))

    def test_password_as_literal_plus(self):
        c = self.client(login=False)
        self.assertIn("a OK", c.send(b"a LOGIN {17+}\r\n" + USER.encode() + b" {6+}\r\nsecret\r\n"))

    def test_literal_before_login_is_small(self):
        c = self.client(login=False)
        reply = c.say(f"a LOGIN {USER} {{{PRE_AUTH_LITERAL + 1}}}")
        self.assertIn("a BAD literal too large", reply)
        self.assertNotIn("+ ", reply)
        self.assertIn("b OK", c.say("b NOOP"))

    def test_a_big_non_synchronising_literal_before_login_ends_the_session(self):
        """LITERAL+ commits the client to send the octets unasked: before login the server
        will not read a stranger's gigabytes to find the next command (Dovecot's login
        does the same); a small one is still skipped and the session goes on."""
        c = self.client(login=False)
        reply = c.say("a FROB {300+}\r\n" + "x" * 300)
        self.assertIn("a BAD unknown command FROB", reply)
        self.assertIn("b OK", c.say("b NOOP"), "300 octets read through")
        reply = c.say(f"c LOGIN {USER} {{{4 << 30}+}}")
        self.assertEqual(reply, "c BAD literal too large before login\r\n* BYE Literal too large\r\n")
        self.assertTrue(c.s.closing)
        self.assertEqual(c.send(b"x" * 100_000 + b"\r\nd NOOP\r\n"), "", "nothing more is read")
        after = self.client()   # logged in: a too-big APPEND is read through and refused
        reply = after.send(b"e APPEND INBOX {2000000+}\r\n" + b"x" * 2_000_000 + b"\r\nf NOOP\r\n")
        self.assertIn("e NO [TOOBIG]", reply)
        self.assertIn("f OK", reply)

    def test_authenticate_plain_with_initial_response(self):
        c = self.client(login=False)
        self.assertRegex(c.say(f"a AUTHENTICATE PLAIN {plain()}"), r"^a OK \[CAPABILITY ")
        self.assertEqual(c.s.authenticated, USER)

    def test_authenticate_plain_after_a_challenge(self):
        c = self.client(login=False)
        self.assertEqual(c.say("a AUTHENTICATE PLAIN"), "+ \r\n")
        self.assertIn("a OK", c.say(plain()))
        self.assertEqual(self.backend.stats.get("imap_logins"), 1)

    def test_authenticate_failures(self):
        c = self.client(login=False)
        c.say("a AUTHENTICATE PLAIN")
        self.assertEqual(c.say("*"), "a BAD Authentication cancelled\r\n")
        c.say("b AUTHENTICATE PLAIN")
        self.assertIn("b BAD Cannot decode", c.say("!!!"))
        c.say("c AUTHENTICATE PLAIN")
        self.assertIn("c NO [AUTHENTICATIONFAILED]", c.say(plain(password="nope")))
        self.assertIn("d NO unsupported authentication mechanism", c.say("d AUTHENTICATE CRAM-MD5"))
        self.assertIn("e OK", c.say("e NOOP"), "the session goes on")

    def test_authenticate_login_mechanism_is_understood(self):
        c = self.client(login=False)
        self.assertEqual(c.say("a AUTHENTICATE LOGIN"), "+ VXNlcm5hbWU6\r\n")
        self.assertEqual(c.say(base64.b64encode(USER.encode()).decode()), "+ UGFzc3dvcmQ6\r\n")
        self.assertIn("a OK", c.say(base64.b64encode(PASSWORD.encode()).decode()))


# --- states, errors, limits ----------------------------------------------------------------------

class StateTest(SessionCase):
    def test_commands_in_the_wrong_state(self):
        c = self.client(login=False)
        for line in ("a SELECT INBOX", "a LIST \"\" *", "a FETCH 1 FLAGS", "a IDLE", "a ENABLE X",
                     "a APPEND INBOX {1+}\r\nx"):
            self.assertIn("a BAD log in first", c.say(line), line)
        c.login()
        for line in ("a FETCH 1 FLAGS", "a EXPUNGE", "a CLOSE", "a UID SEARCH ALL", "a CHECK"):
            self.assertIn("a BAD no folder selected", c.say(line), line)
        self.assertIn("a BAD already logged in", c.say(f"a LOGIN {USER} {PASSWORD}"))
        c.select()
        self.assertIn("a BAD not valid with a folder selected", c.say("a ENABLE CONDSTORE"))

    def test_unknown_and_malformed_commands_and_the_session_goes_on(self):
        c = self.client(select="INBOX")
        cases = {"a FROB": "a BAD unknown command FROB", "a UID LIST": "a BAD UID goes with",
                 "a NOOP now": "a BAD too many arguments", "a SELECT": "a BAD missing arguments",
                 "a FETCH x FLAGS": "a BAD bad sequence set", "a FETCH 1 (FLAGS": "a BAD unbalanced",
                 "a FETCH 1 (FROB)": "a BAD unknown FETCH item", "": "* BAD empty command line",
                 "a STORE 1 FLIP (\\Seen)": "a BAD STORE takes", "a SEARCH FROB": "a BAD unknown search key",
                 "(x NOOP": "* BAD invalid tag", "a LOGIN \"x": "a BAD unterminated quoted string"}
        for line, expected in cases.items():
            self.assertIn(expected, c.say(line), line)
        self.assertIn("b OK", c.say("b NOOP"))
        self.assertEqual(c.s.errors, len(cases))
        self.assertFalse(c.s.closing)

    def test_lines_over_64_kib_are_refused(self):
        c = self.client()
        self.assertIn("a BAD line too long", c.say(b"a NOOP " + b"x" * 70000))
        self.assertIn("b OK", c.say("b NOOP"))

    def test_too_many_bad_commands_end_the_session(self):
        c = self.client()
        for n in range(MAX_ERRORS - 1):
            self.assertIn(f"t{n} BAD", c.say(f"t{n} FROB"))
        self.assertFalse(c.s.closing)
        reply = c.say("last FROB")
        self.assertEqual(reply, "last BAD unknown command FROB\r\n* BYE Too many invalid commands\r\n")
        self.assertTrue(c.s.closing)
        self.assertEqual(c.send(b"x NOOP\r\n"), "")

    def test_no_answers_do_not_count_as_errors(self):
        c = self.client()
        for n in range(MAX_ERRORS + 5):
            self.assertIn("NO [NONEXISTENT]", c.say(f"t{n} SELECT Nowhere"))
        self.assertFalse(c.s.closing)


class SessionCommandsTest(SessionCase):
    def test_noop_in_every_state(self):
        c = self.client(login=False)
        self.assertEqual(c.say("a NOOP"), "a OK NOOP completed\r\n")
        c.login()
        self.assertEqual(c.say("b NOOP"), "b OK NOOP completed\r\n")
        c.select()
        self.assertEqual(c.say("c NOOP"), "c OK NOOP completed\r\n")

    def test_id_enable_namespace(self):
        c = self.client(login=False)
        self.assertRegex(c.say("a ID NIL"), r'^\* ID \("name" "ISMail" "version" "[^"]+"\)\r\na OK')
        self.assertIn("b OK", c.say('b ID ("name" "Thunderbird" "version" NIL)'))
        self.assertIn("c BAD", c.say('c ID ("name")'))
        self.assertIn("d BAD", c.say("d ID"))
        c.login()
        self.assertEqual(c.say("e ENABLE CONDSTORE"), "* ENABLED\r\ne OK ENABLE completed\r\n")
        self.assertEqual(c.say("f NAMESPACE"), '* NAMESPACE (("" "/")) NIL NIL\r\nf OK NAMESPACE completed\r\n')

    def test_logout(self):
        c = self.client(select="INBOX")
        self.assertEqual(c.say("z LOGOUT"), "* BYE ISMail logging out\r\nz OK LOGOUT completed\r\n")
        self.assertTrue(c.s.closing and c.s.quit)

    def test_time_out_shutdown_and_close(self):
        c = self.client(select="INBOX")
        self.assertEqual(c.s.timeout_reply(), b"* BYE Autologout; idle for too long\r\n")
        self.assertTrue(c.s.closing)
        self.assertFalse(c.s.quit)
        c = self.client()
        self.assertEqual(c.s.shutdown_reply(), b"* BYE Server shutting down\r\n")
        c.s.close()
        c.s.close()
        self.assertIsNone(c.s.selected)
        self.assertEqual(c.s.tick(), [])

    def test_progress_counter(self):
        c = self.client()
        before = c.s.lines
        c.say("a NOOP")
        self.assertEqual(c.s.lines, before + 1)
        c.select()
        c.send(b"b APPEND INBOX {100}\r\n")
        self.assertTrue(c.s.in_transaction)
        for _ in range(3):
            mark = c.s.lines
            c.send(b"x" * 10)
            self.assertGreater(c.s.lines, mark, "each chunk of a literal is progress")
        self.assertIn("b OK", c.send(b"y" * 70 + b"\r\n"))
        self.assertFalse(c.s.in_transaction)


if __name__ == "__main__":
    unittest.main()
