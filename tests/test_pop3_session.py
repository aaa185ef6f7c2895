"""The POP3 state machine, fed bytes directly (no sockets), with a fake backend and maildrop.

What is checked is what a client would see: the exact answer bytes, a message as it
comes down (dot-stuffed, ended by "."), and what reaches the maildrop at QUIT.
"""
from __future__ import annotations

import base64
import os
import shutil
import tempfile
import unittest
from dataclasses import dataclass
from pathlib import Path

from ismail.pop3.session import COMMAND_LINE_LIMIT, MAX_ERRORS, Pop3Session
from ismail.stats import Stats
from ismail.store.maildrop import INFO_SEP, MaildropBusy, Maildrops

USER, PASSWORD = "user@example.test", "secret"

MESSAGES = [
    b"From: a@remote.test\r\nSubject: one\r\n\r\nHello.\r\nSecond line.\r\nThird line.\r\n",
    b"From: b@remote.test\r\nSubject: two\r\n\r\nBody two.\r\n",
    b"From: c@remote.test\r\nSubject: three\r\n\r\n3\r\n",
]


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


def undot(wire: bytes) -> bytes:
    """A message as a client reads it back: the "." line ends it, one leading dot goes."""
    lines = wire.split(b"\r\n")
    assert lines[-2:] == [b".", b""], wire[-20:]
    return b"".join((l[1:] if l.startswith(b".") else l) + b"\r\n" for l in lines[:-2])


@dataclass(frozen=True)
class FakeMessage:
    uid: str
    size: int


class FakeMaildrop:
    """The Maildrop API over texts in memory; records commit and close, can fail on demand."""

    def __init__(self, texts: list[bytes], chunk_lines: int = 2) -> None:
        self.texts = list(texts)
        self.messages = [FakeMessage(f"uid{i + 1}", len(t)) for i, t in enumerate(texts)]
        self.chunk_lines = chunk_lines
        self.commits: list[tuple[set[int], set[int]]] = []
        self.closes = 0
        self.missing: set[int] = set()  # indexes whose file is gone
        self.unreadable: set[int] = set()  # OSError when opened
        self.broken: set[int] = set()   # OSError after the first chunk
        self.commit_error: OSError | None = None
        self.readers_open = 0

    def total_size(self) -> int:
        return sum(m.size for m in self.messages)

    def read(self, index: int, body_lines: int | None = None):
        if index in self.missing:
            raise FileNotFoundError(2, "No such file", self.messages[index].uid)
        if index in self.unreadable:
            raise PermissionError(13, "Permission denied")
        lines = self.texts[index].splitlines(keepends=True)
        if body_lines is not None:
            blank = next((n for n, l in enumerate(lines) if l in (b"\r\n", b"\n")), len(lines))
            lines = lines[:blank + 1 + body_lines]
        self.readers_open += 1
        try:
            for n in range(0, len(lines), self.chunk_lines):
                if n and index in self.broken:
                    raise OSError(5, "Input/output error")
                yield b"".join(lines[n:n + self.chunk_lines])
        finally:
            self.readers_open -= 1

    def commit(self, deleted: set[int], seen: set[int]) -> int:
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append((set(deleted), set(seen)))
        return len(deleted)

    def close(self) -> None:
        self.closes += 1


class FakeBackend:
    def __init__(self, texts: list[bytes] = MESSAGES) -> None:
        self.stats = Stats()
        self.passwords = {USER: PASSWORD}
        self.boxes: dict[str, Path] = {USER: Path("/mailboxes/example.test/user")}
        self.drop = FakeMaildrop(texts)
        self.banned = False
        self.busy = False
        self.open_error: OSError | None = None
        self.checked: list[tuple[str, str, str]] = []
        self.opened = 0
        self.drops: Maildrops | None = None  # the real maildrops, when set

    def check_login(self, address: str, password: str, ip: str) -> str:
        self.checked.append((address, password, ip))
        if self.banned:
            return "banned"
        return "ok" if self.passwords.get(address) == password else "failed"

    def mailbox_of(self, address: str) -> Path | None:
        return self.boxes.get(address)

    def open_maildrop(self, mailbox: Path):
        if self.drops is not None:
            return self.drops.open(mailbox)
        if self.busy:
            raise MaildropBusy(str(mailbox))
        if self.open_error is not None:
            raise self.open_error
        self.opened += 1
        return self.drop


class Pop3TestCase(unittest.TestCase):
    texts = MESSAGES

    def setUp(self) -> None:
        self.backend = FakeBackend(self.texts)
        self.drop = self.backend.drop

    def session(self, trusted: bool = True, allow_plaintext: bool = False, tls_available: bool = False,
                tls_active: bool = False) -> Pop3Session:
        s = Pop3Session(self.backend, "mx.example.test", "192.0.2.1", trusted=trusted,
                        allow_plaintext=allow_plaintext, tls_available=tls_available,
                        tls_active=tls_active)
        self.addCleanup(s.close)
        return s

    def send(self, s: Pop3Session, *lines: str | bytes) -> list[bytes]:
        """Feed each line on its own; return what the client gets for each."""
        return [flatten(s.feed(l if isinstance(l, bytes) else l.encode() + b"\r\n")) for l in lines]

    def one(self, s: Pop3Session, line: str | bytes) -> bytes:
        return self.send(s, line)[0]

    def logged_in(self, **kw) -> Pop3Session:
        s = self.session(**kw)
        self.assertEqual(self.send(s, f"USER {USER}", f"PASS {PASSWORD}"),
                         [b"+OK Send PASS\r\n", b"+OK Logged in.\r\n"])
        return s

    def stat(self, name: str) -> int:
        return self.backend.stats.get(name)

    def assert_err(self, answer: bytes, *words: str) -> None:
        self.assertTrue(answer.startswith(b"-ERR ") and answer.endswith(b"\r\n"), answer)
        self.assertEqual(answer.count(b"\r\n"), 1, f"one line: {answer!r}")
        for w in words:
            self.assertIn(w.encode(), answer)


class AuthorizationTest(Pop3TestCase):
    def test_greeting(self):
        self.assertEqual(self.session().greeting(), b"+OK mx.example.test POP3 ISMail ready\r\n")

    def test_user_and_pass_log_in_and_open_the_maildrop(self):
        s = self.session()
        self.assertEqual(self.one(s, "USER User@Example.TEST"), b"+OK Send PASS\r\n")
        self.assertEqual(s.authenticated, "")
        self.assertEqual(self.one(s, f"PASS {PASSWORD}"), b"+OK Logged in.\r\n")
        self.assertEqual(s.authenticated, USER)
        self.assertEqual(self.backend.checked, [(USER, PASSWORD, "192.0.2.1")])
        self.assertEqual(self.backend.opened, 1)
        self.assertEqual(self.stat("pop3_logins"), 1)
        self.assertEqual(self.stat("pop3_logins_failed"), 0)
        self.assertEqual(self.one(s, "STAT"), b"+OK 3 %d\r\n" % sum(map(len, MESSAGES)))

    def test_verbs_are_case_insensitive(self):
        s = self.session()
        self.assertEqual(self.send(s, f"user {USER}", f"pAsS {PASSWORD}", "stat")[1:],
                         [b"+OK Logged in.\r\n", b"+OK 3 %d\r\n" % sum(map(len, MESSAGES))])

    def test_a_wrong_password_is_refused_and_user_must_be_sent_again(self):
        s = self.session()
        answers = self.send(s, f"USER {USER}", "PASS wrong", f"PASS {PASSWORD}")
        self.assertEqual(answers[1], b"-ERR [AUTH] Authentication failed.\r\n")
        self.assert_err(answers[2], "USER first")
        self.assertEqual(s.authenticated, "")
        self.assertFalse(s.closing)
        self.assertEqual(self.stat("pop3_logins_failed"), 1)
        self.assertEqual(self.backend.opened, 0)
        self.assertEqual(self.send(s, f"USER {USER}", f"PASS {PASSWORD}")[1], b"+OK Logged in.\r\n")
        self.assertEqual(s.errors, 2)

    def test_a_banned_client_is_told_and_cut_off(self):
        self.backend.banned = True
        s = self.session()
        out = flatten(s.feed(f"USER {USER}\r\nPASS {PASSWORD}\r\nCAPA\r\n".encode()))
        self.assertEqual(out, b"+OK Send PASS\r\n-ERR [AUTH] Too many failed logins, try again later\r\n")
        self.assertTrue(s.closing)
        self.assertEqual(self.backend.opened, 0)
        self.assertEqual(self.stat("pop3_logins_failed"), 1)
        self.assertEqual(s.feed(b"CAPA\r\n"), [])

    def test_pass_takes_the_whole_rest_of_the_line_and_utf8(self):
        self.backend.passwords[USER] = "two  wörds "
        s = self.session()
        self.assertEqual(self.send(s, f"USER {USER}", "PASS two  wörds ")[1], b"+OK Logged in.\r\n")
        self.assertEqual(self.backend.checked[0][1], "two  wörds ")

    def test_pass_needs_a_password_and_user_needs_one_name(self):
        s = self.session()
        self.assert_err(self.one(s, "USER"), "missing argument")
        self.assert_err(self.one(s, "USER a b"), "too many arguments")
        self.assert_err(self.one(s, "PASS x"), "USER first")
        self.one(s, f"USER {USER}")
        self.assert_err(self.one(s, "PASS"), "missing argument")
        self.assertEqual(self.one(s, f"PASS {PASSWORD}"), b"+OK Logged in.\r\n")
        self.assertEqual(len(self.backend.checked), 1)

    def test_password_that_is_not_utf8_is_refused(self):
        s = self.session()
        self.one(s, f"USER {USER}")
        self.assert_err(self.one(s, b"PASS \xff\xfe\r\n"), "UTF-8")
        self.assertEqual(self.backend.checked, [])

    def test_an_account_without_a_mailbox(self):
        del self.backend.boxes[USER]
        s = self.session()
        with self.assertLogs("ismail.pop3", "ERROR"):
            answer = self.send(s, f"USER {USER}", f"PASS {PASSWORD}")[1]
        self.assert_err(answer, "[SYS/PERM]")
        self.assertEqual(s.authenticated, "")
        self.assertEqual(self.stat("pop3_logins"), 0)
        self.assert_err(self.one(s, "STAT"), "log in first")

    def test_a_locked_maildrop_gives_in_use_and_the_session_may_try_again(self):
        self.backend.busy = True
        s = self.session()
        answer = self.send(s, f"USER {USER}", f"PASS {PASSWORD}")[1]
        self.assertEqual(answer, b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n")
        self.assertFalse(s.closing)
        self.assertEqual(s.authenticated, "")
        self.assert_err(self.one(s, "STAT"), "log in first")
        self.backend.busy = False
        self.assertEqual(self.send(s, f"USER {USER}", f"PASS {PASSWORD}")[1], b"+OK Logged in.\r\n")

    def test_a_maildrop_that_cannot_be_opened(self):
        self.backend.open_error = PermissionError(13, "Permission denied")
        s = self.session()
        with self.assertLogs("ismail.pop3", "ERROR") as logs:
            self.assert_err(self.send(s, f"USER {USER}", f"PASS {PASSWORD}")[1], "[SYS/TEMP]")
        self.assertIn("Permission denied", logs.output[0])
        self.assertEqual(s.authenticated, "")
        self.assertFalse(s.closing)

    def test_transaction_commands_before_login(self):
        s = self.session()
        for cmd in ("STAT", "LIST", "LIST 1", "RETR 1", "DELE 1", "UIDL", "TOP 1 1", "RSET", "NOOP"):
            self.assert_err(self.one(s, cmd), "log in first")
        self.assertFalse(s.closing)
        self.assertTrue(self.one(s, "CAPA").startswith(b"+OK"))

    def test_authorization_commands_after_login(self):
        s = self.logged_in(tls_available=True)
        for cmd in (f"USER {USER}", f"PASS {PASSWORD}", f"AUTH PLAIN {plain()}", "STLS"):
            self.assert_err(self.one(s, cmd), "not allowed after login")
        self.assertEqual(len(self.backend.checked), 1)
        self.assertFalse(s.starttls)
        self.assertEqual(self.one(s, "NOOP"), b"+OK\r\n")

    def test_quit_before_login(self):
        s = self.session()
        self.one(s, f"USER {USER}")
        self.assertEqual(self.one(s, "QUIT"), b"+OK Logging out.\r\n")
        self.assertTrue(s.closing and s.quit)
        self.assertEqual(self.backend.opened, 0)

    def test_apop_is_not_offered(self):
        s = self.session()
        self.assert_err(self.one(s, "APOP user 0123456789abcdef0123456789abcdef"), "APOP")
        self.assertEqual(self.backend.checked, [])
        s = self.logged_in()
        self.assert_err(self.one(s, "APOP user 0123456789abcdef0123456789abcdef"), "APOP")

    def test_unknown_and_empty_commands(self):
        s = self.session()
        for cmd in ("XYZZY", "", "LAST", "R3TR 1", " CAPA", "_CAPA"):
            self.assert_err(self.one(s, cmd), "unknown command")
        self.assertEqual(s.errors, 6)
        self.assertTrue(self.one(s, "CAPA").startswith(b"+OK"))


class PlaintextTest(Pop3TestCase):
    """No password in the clear from outside trusted networks, unless allow_plaintext."""

    def test_untrusted_without_tls_cannot_log_in(self):
        s = self.session(trusted=False)
        for cmd in (f"USER {USER}", f"PASS {PASSWORD}", f"AUTH PLAIN {plain()}", "AUTH"):
            answer = self.one(s, cmd)
            self.assert_err(answer, "Plaintext authentication disallowed")
            self.assertNotIn(b"[AUTH]", answer)
            self.assertNotIn(b"STLS", answer)  # none to offer
        self.assertEqual(self.backend.checked, [])
        capa = self.one(s, "CAPA")
        self.assertNotIn(b"\r\nUSER\r\n", capa)
        self.assertNotIn(b"SASL", capa)

    def test_the_refusal_points_to_stls_when_there_is_one(self):
        s = self.session(trusted=False, tls_available=True)
        self.assert_err(self.one(s, f"USER {USER}"), "Plaintext", "use STLS")
        self.assertIn(b"\r\nSTLS\r\n", self.one(s, "CAPA"))

    def test_allowed_over_tls_from_trusted_networks_or_when_configured(self):
        for kw in ({"trusted": False, "tls_active": True}, {"trusted": True},
                   {"trusted": False, "allow_plaintext": True}):
            with self.subTest(**kw):
                s = self.session(**kw)
                capa = self.one(s, "CAPA")
                self.assertIn(b"\r\nUSER\r\nSASL PLAIN\r\n", capa)
                self.assertEqual(self.send(s, f"USER {USER}", f"PASS {PASSWORD}")[1],
                                 b"+OK Logged in.\r\n")
                s.close()


class CapaTest(Pop3TestCase):
    def test_capa_before_login(self):
        s = self.session(tls_available=True)
        self.assertEqual(self.one(s, "CAPA"),
                         b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
                         b"AUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\nIMPLEMENTATION ISMail\r\n.\r\n")

    def test_capa_over_tls_and_after_login(self):
        s = self.session(tls_available=True, tls_active=True)
        self.assertNotIn(b"STLS", self.one(s, "CAPA"))
        self.send(s, f"USER {USER}", f"PASS {PASSWORD}")
        self.assertEqual(self.one(s, "CAPA"),
                         b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
                         b"AUTH-RESP-CODE\r\nIMPLEMENTATION ISMail\r\n.\r\n")

    def test_capa_takes_no_argument(self):
        self.assert_err(self.one(self.session(), "CAPA x"), "too many arguments")


class StlsTest(Pop3TestCase):
    def test_stls_discards_what_was_pipelined_after_it(self):
        s = self.session(trusted=False, tls_available=True)
        out = flatten(s.feed(f"STLS\r\nUSER {USER}\r\nPASS {PASSWORD}\r\n".encode()))
        self.assertEqual(out, b"+OK Begin TLS negotiation\r\n")
        self.assertTrue(s.starttls)
        self.assertEqual(s.feed(b"CAPA\r\n"), [], "nothing more in the clear")
        s.tls_started()
        self.assertFalse(s.starttls)
        self.assertTrue(s.tls_active)
        self.assertEqual(self.backend.checked, [])
        self.assert_err(self.one(s, f"PASS {PASSWORD}"), "USER first")
        capa = self.one(s, "CAPA")
        self.assertNotIn(b"STLS", capa)
        self.assertIn(b"\r\nUSER\r\n", capa)
        self.assertEqual(self.send(s, f"USER {USER}", f"PASS {PASSWORD}")[1], b"+OK Logged in.\r\n")

    def test_stls_forgets_a_user_given_before_it(self):
        s = self.session(allow_plaintext=True, tls_available=True)
        self.assertEqual(self.send(s, f"USER {USER}", "STLS"), [b"+OK Send PASS\r\n",
                                                               b"+OK Begin TLS negotiation\r\n"])
        s.tls_started()
        self.assert_err(self.one(s, f"PASS {PASSWORD}"), "USER first")

    def test_stls_refused(self):
        self.assert_err(self.one(self.session(), "STLS"), "not available")
        self.assert_err(self.one(self.session(tls_available=True, tls_active=True), "STLS"), "already active")
        s = self.session(tls_available=True)
        self.assert_err(self.one(s, "STLS now"), "too many arguments")
        self.assertFalse(s.starttls)


class AuthTest(Pop3TestCase):
    def test_auth_plain_with_an_initial_response(self):
        s = self.session()
        self.assertEqual(self.one(s, f"AUTH PLAIN {plain()}"), b"+OK Logged in.\r\n")
        self.assertEqual(s.authenticated, USER)
        self.assertEqual(self.stat("pop3_logins"), 1)

    def test_auth_plain_with_a_continuation(self):
        s = self.session()
        self.assertEqual(self.one(s, "auth plain"), b"+ \r\n")
        self.assertEqual(s.authenticated, "")
        self.assertEqual(self.one(s, plain()), b"+OK Logged in.\r\n")
        self.assertEqual(s.authenticated, USER)

    def test_a_continuation_may_be_longer_than_a_command(self):
        long_password = "p" * 600
        self.backend.passwords[USER] = long_password
        s = self.session()
        self.one(s, "AUTH PLAIN")
        token = plain(password=long_password)
        self.assertGreater(len(token), COMMAND_LINE_LIMIT)
        self.assertEqual(self.one(s, token), b"+OK Logged in.\r\n")

    def test_a_continuation_over_8k_is_refused_and_ends_the_exchange(self):
        s = self.session()
        self.one(s, "AUTH PLAIN")
        self.assert_err(self.one(s, "A" * 9000), "too long")
        self.assertEqual(self.one(s, plain()).startswith(b"-ERR unknown command"), True,
                         "the exchange is over: the next line is a command")
        self.assertEqual(self.backend.checked, [])

    def test_star_cancels(self):
        s = self.session()
        self.one(s, "AUTH PLAIN")
        answer = self.one(s, "*")
        self.assert_err(answer, "cancel")
        self.assertNotIn(b"[AUTH]", answer)
        self.assertEqual(self.backend.checked, [])
        self.assertTrue(self.one(s, "CAPA").startswith(b"+OK"), "back to commands")

    def test_wrong_password_and_malformed_responses(self):
        s = self.session()
        self.assertEqual(self.one(s, f"AUTH PLAIN {plain(password='nope')}"),
                         b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(self.stat("pop3_logins_failed"), 1)
        for token in ("!!!notbase64", base64.b64encode(b"no-nuls-here").decode()):
            answer = self.one(s, f"AUTH PLAIN {token}")
            self.assert_err(answer)
            self.assertNotIn(b"[AUTH]", answer)
        self.one(s, "AUTH PLAIN")
        self.assert_err(self.one(s, b"\xc3\xa9\xc3\xa9\r\n"))
        self.assertEqual(len(self.backend.checked), 1)

    def test_only_plain_is_offered(self):
        s = self.session()
        self.assertEqual(self.one(s, "AUTH"), b"+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n")
        for mech in ("LOGIN", "CRAM-MD5", "XOAUTH2"):
            self.assert_err(self.one(s, f"AUTH {mech}"), "unsupported", "PLAIN")
        self.assert_err(self.one(s, f"AUTH PLAIN {plain()} extra"), "too many arguments")
        self.assertEqual(s.authenticated, "")


class TransactionTest(Pop3TestCase):
    def test_stat_list_uidl(self):
        s = self.logged_in()
        sizes = [len(m) for m in MESSAGES]
        self.assertEqual(self.one(s, "STAT"), b"+OK 3 %d\r\n" % sum(sizes))
        self.assertEqual(self.one(s, "LIST"),
                         b"+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n"
                         % (sum(sizes), *sizes))
        self.assertEqual(self.one(s, "LIST 2"), b"+OK 2 %d\r\n" % sizes[1])
        self.assertEqual(self.one(s, "UIDL"),
                         b"+OK unique-id listing follows\r\n1 uid1\r\n2 uid2\r\n3 uid3\r\n.\r\n")
        self.assertEqual(self.one(s, "UIDL 3"), b"+OK 3 uid3\r\n")
        self.assertEqual(self.one(s, "NOOP"), b"+OK\r\n")

    def test_retr_sends_the_message_and_counts_it(self):
        s = self.logged_in()
        answer = self.one(s, "RETR 1")
        self.assertEqual(answer, b"+OK %d octets\r\n" % len(MESSAGES[0]) + MESSAGES[0] + b".\r\n")
        self.assertEqual(s.retrieved, 1)
        self.assertEqual(self.stat("pop3_retrieved"), 1)
        self.assertEqual(s.bytes_sent, len(MESSAGES[0]) + 3)
        self.assertEqual(self.stat("pop3_bytes_sent"), len(MESSAGES[0]) + 3)
        self.assertEqual(self.drop.readers_open, 0, "the file is closed once sent")

    def test_top_sends_the_header_and_so_many_body_lines(self):
        s = self.logged_in()
        header = b"From: a@remote.test\r\nSubject: one\r\n\r\n"
        for n, body in ((0, b""), (1, b"Hello.\r\n"), (2, b"Hello.\r\nSecond line.\r\n"),
                        (99, b"Hello.\r\nSecond line.\r\nThird line.\r\n")):
            self.assertEqual(self.one(s, f"TOP 1 {n}"),
                             b"+OK top of message follows\r\n" + header + body + b".\r\n")
        self.assertEqual(s.retrieved, 0, "TOP does not count as retrieving")
        self.one(s, "QUIT")
        self.assertEqual(self.drop.commits, [(set(), set())], "nor does it mark the message seen")

    def test_deleted_messages_are_hidden_until_rset(self):
        s = self.logged_in()
        sizes = [len(m) for m in MESSAGES]
        self.assertEqual(self.one(s, "DELE 2"), b"+OK message 2 deleted\r\n")
        self.assertEqual(self.one(s, "STAT"), b"+OK 2 %d\r\n" % (sizes[0] + sizes[2]))
        self.assertEqual(self.one(s, "LIST"), b"+OK 2 messages (%d octets)\r\n1 %d\r\n3 %d\r\n.\r\n"
                         % (sizes[0] + sizes[2], sizes[0], sizes[2]))
        self.assertEqual(self.one(s, "UIDL"), b"+OK unique-id listing follows\r\n1 uid1\r\n3 uid3\r\n.\r\n")
        for cmd in ("LIST 2", "UIDL 2", "RETR 2", "TOP 2 0", "DELE 2"):
            self.assertEqual(self.one(s, cmd), b"-ERR message 2 already deleted\r\n", cmd)
        self.assertEqual(self.one(s, "RSET"), b"+OK maildrop has 3 messages (%d octets)\r\n" % sum(sizes))
        self.assertEqual(self.one(s, "STAT"), b"+OK 3 %d\r\n" % sum(sizes))
        self.assertEqual(self.one(s, "LIST 2"), b"+OK 2 %d\r\n" % sizes[1])
        self.one(s, "QUIT")
        self.assertEqual(self.drop.commits, [(set(), set())])

    def test_quit_commits_exactly_the_marked_messages(self):
        s = self.logged_in()
        self.send(s, "RETR 2", "RETR 1", "DELE 1", "DELE 3")
        self.assertEqual(self.drop.commits, [], "nothing before QUIT")
        self.assertEqual(self.one(s, "QUIT"), b"+OK Logging out, 2 messages deleted.\r\n")
        # Indexes count from 0; a message both read and deleted is not worth marking seen.
        self.assertEqual(self.drop.commits, [({0, 2}, {1})])
        self.assertEqual(self.drop.closes, 1)
        self.assertTrue(s.closing and s.quit)
        self.assertEqual((s.deleted, s.retrieved), (2, 2))
        self.assertEqual(self.stat("pop3_deleted"), 2)
        self.assertEqual(s.summary(), f"user={USER} retrieved=2 deleted=2 bytes={s.bytes_sent}")
        s.close()
        self.assertEqual(self.drop.closes, 1, "close after QUIT does nothing more")

    def test_a_session_that_ends_without_quit_deletes_nothing(self):
        s = self.logged_in()
        self.send(s, "DELE 1", "RETR 2")
        s.close()
        s.close()
        self.assertEqual(self.drop.commits, [])
        self.assertEqual(self.drop.closes, 1)
        self.assertEqual(self.stat("pop3_deleted"), 0)

    def test_timeout_and_shutdown_close_without_update(self):
        for reply, want in (("timeout_reply", b"-ERR autologout: idle for too long\r\n"),
                            ("shutdown_reply", b"-ERR [SYS/TEMP] server shutting down\r\n")):
            with self.subTest(reply):
                self.setUp()
                s = self.logged_in()
                self.one(s, "DELE 1")
                self.assertEqual(getattr(s, reply)(), want)
                self.assertTrue(s.closing)
                self.assertFalse(s.quit)
                self.assertEqual(s.feed(b"QUIT\r\n"), [], "nothing is read after the last word")
                s.close()
                self.assertEqual(self.drop.commits, [])
                self.assertEqual(self.drop.closes, 1)

    def test_a_failed_commit_is_reported(self):
        s = self.logged_in()
        self.drop.commit_error = OSError(13, "Permission denied")
        self.one(s, "DELE 1")
        with self.assertLogs("ismail.pop3", "ERROR"):
            self.assertEqual(self.one(s, "QUIT"), b"-ERR [SYS/TEMP] some deleted messages not removed\r\n")
        self.assertTrue(s.closing)
        self.assertEqual(self.drop.closes, 1)
        self.assertEqual(self.stat("pop3_deleted"), 0)

    def test_an_empty_maildrop(self):
        self.backend.drop = self.drop = FakeMaildrop([])
        s = self.logged_in()
        self.assertEqual(self.send(s, "STAT", "LIST", "UIDL"),
                         [b"+OK 0 0\r\n", b"+OK 0 messages (0 octets)\r\n.\r\n",
                          b"+OK unique-id listing follows\r\n.\r\n"])
        self.assert_err(self.one(s, "RETR 1"), "no such message")
        self.assertEqual(self.one(s, "QUIT"), b"+OK Logging out, 0 messages deleted.\r\n")

    def test_a_message_whose_file_is_gone(self):
        s = self.logged_in()
        self.drop.missing.add(0)
        self.drop.unreadable.add(1)
        self.assertEqual(self.one(s, "RETR 1"), b"-ERR message 1 is no longer available\r\n")
        self.assertEqual(self.one(s, "TOP 1 0"), b"-ERR message 1 is no longer available\r\n")
        with self.assertLogs("ismail.pop3", "ERROR"):
            self.assert_err(self.one(s, "RETR 2"), "[SYS/TEMP]", "message 2")
        self.assertFalse(s.closing)
        self.assertEqual(s.retrieved, 0)
        self.assertEqual(self.one(s, "RETR 3"),
                         b"+OK %d octets\r\n" % len(MESSAGES[2]) + MESSAGES[2] + b".\r\n")


class ArgumentTest(Pop3TestCase):
    def test_every_bad_argument_gets_a_reason_and_the_session_goes_on(self):
        s = self.logged_in()
        cases = {
            "RETR 0": "numbered from 1", "RETR 4": "no such message: 4",
            "RETR x": "invalid message number: x", "RETR -1": "invalid message number: -1",
            "RETR +1": "invalid message number", "RETR 1.0": "invalid message number",
            "RETR": "missing argument", "RETR 1 2": "too many arguments",
            "LIST 0": "numbered from 1", "LIST 1 2": "too many arguments",
            "LIST 99999999999999999999": "no such message", "UIDL 9": "no such message",
            "UIDL a": "invalid message number", "DELE": "missing argument", "DELE -1": "invalid",
            "DELE 1 1": "too many arguments", "TOP 1": "missing argument", "TOP": "missing argument",
            "TOP 1 x": "invalid number of lines: x", "TOP 1 -1": "invalid number of lines",
            "TOP x 1": "invalid message number", "TOP 0 1": "numbered from 1",
            "TOP 1 2 3": "too many arguments", "STAT 1": "too many arguments",
            "RSET x": "too many arguments", "NOOP x": "too many arguments", "RETR \u0661": "non-ASCII",
        }
        items = list(cases.items())
        for start in range(0, len(items), 10):  # a fresh session before the error limit
            s = self.logged_in() if start else s
            for cmd, why in items[start:start + 10]:
                self.assert_err(self.one(s, cmd), why)
            self.assertEqual(s.errors, len(items[start:start + 10]))
            self.assertFalse(s.closing)
            self.assertEqual(self.one(s, "STAT"), b"+OK 3 %d\r\n" % sum(map(len, MESSAGES)))
            s.close()

    def test_leading_zeros_are_still_the_number(self):
        s = self.logged_in()
        self.assertEqual(self.one(s, "LIST 002"), b"+OK 2 %d\r\n" % len(MESSAGES[1]))


class DotStuffingTest(Pop3TestCase):
    texts = [
        b".starts with a dot\r\nSubject: x\r\n\r\n.leading\r\n..two\r\n.\r\nplain\r\n. \r\n",
        b"no final line end\r\n\r\n.last",
        b"",
        b"Subject: dot in the body only\r\n\r\n.\r\n",
    ]

    def test_lines_starting_with_a_dot_get_one_more(self):
        for chunk_lines in (1, 2, 3, 100):  # a chunk may start with a "." line, or hold several
            with self.subTest(chunk_lines=chunk_lines):
                self.drop.chunk_lines = chunk_lines
                s = self.logged_in()
                head, _, wire = self.one(s, "RETR 1").partition(b"\r\n")
                self.assertEqual(head, b"+OK %d octets" % len(self.texts[0]))
                self.assertEqual(wire, b"..starts with a dot\r\nSubject: x\r\n\r\n..leading\r\n...two\r\n"
                                       b"..\r\nplain\r\n.. \r\n.\r\n")
                self.assertEqual(undot(wire), self.texts[0])
                s.close()
                self.setUp()

    def test_a_message_without_a_final_line_end_and_an_empty_one(self):
        s = self.logged_in()
        self.assertEqual(self.one(s, "RETR 2"), b"+OK 26 octets\r\nno final line end\r\n\r\n..last\r\n.\r\n")
        self.assertEqual(self.one(s, "RETR 3"), b"+OK 0 octets\r\n.\r\n")
        self.assertEqual(self.one(s, "TOP 4 0"), b"+OK top of message follows\r\n"
                                                 b"Subject: dot in the body only\r\n\r\n.\r\n")
        self.assertEqual(self.one(s, "TOP 4 1"), b"+OK top of message follows\r\n"
                                                 b"Subject: dot in the body only\r\n\r\n..\r\n.\r\n")


class LineTest(Pop3TestCase):
    def test_a_line_of_255_octets_is_taken_and_256_is_too_long(self):
        s = self.session()
        self.assertEqual(self.one(s, "USER " + "a" * (COMMAND_LINE_LIMIT - 7)), b"+OK Send PASS\r\n")
        self.assertEqual(self.one(s, "USER " + "a" * (COMMAND_LINE_LIMIT - 6)), b"-ERR line too long\r\n")
        self.assertTrue(self.one(s, "CAPA").startswith(b"+OK"))

    def test_an_overlong_line_in_pieces_is_answered_once(self):
        s = self.session()
        self.assertEqual(s.feed(b"NOOP " + b"x" * 200), [])
        self.assertEqual(flatten(s.feed(b"x" * 200)), b"-ERR line too long\r\n")
        self.assertEqual(s.feed(b"x" * 5000), [])
        out = flatten(s.feed(b"x" * 10 + b"\r\nCAPA\r\n"))
        self.assertTrue(out.startswith(b"+OK Capability list follows\r\n"), out)
        self.assertEqual(s.errors, 1)

    def test_control_characters_and_non_ascii(self):
        s = self.session()
        self.assert_err(self.one(s, b"CA\x00PA\r\n"), "control characters")
        self.assert_err(self.one(s, b"USER a\tb\r\n"), "control characters")
        self.assert_err(self.one(s, "USER jörg@example.test"), "non-ASCII")
        self.assert_err(self.one(s, b"\xff\xfe\r\n"), "unknown command")
        self.assertEqual(s.errors, 4)
        self.assertEqual(self.backend.checked, [])

    def test_a_partial_line_waits_and_bare_lf_ends_a_line(self):
        s = self.session()
        self.assertEqual(s.feed(b"CA"), [])
        self.assertEqual(s.lines, 0)
        self.assertTrue(flatten(s.feed(b"PA\r\n")).startswith(b"+OK Capability"))
        self.assertTrue(flatten(s.feed(b"CAPA\n")).startswith(b"+OK Capability"))
        self.assertEqual(s.lines, 2)

    def test_connection_attributes(self):
        s = self.session()
        self.assertEqual((s.in_data, s.in_transaction, s.delay, s.authenticated, s.tls_active),
                         (False, False, 0.0, "", False))
        self.send(s, f"USER {USER}", f"PASS {PASSWORD}")
        self.assertFalse(s.in_transaction, "a stopping server may cut a POP3 session")


class ErrorLimitTest(Pop3TestCase):
    def test_the_twentieth_error_ends_the_session(self):
        s = self.session()
        for _ in range(MAX_ERRORS - 1):
            self.assert_err(self.one(s, "BOGUS"), "unknown command")
        self.assertFalse(s.closing)
        self.assertEqual(self.one(s, "BOGUS"), b"-ERR Too many errors\r\n")
        self.assertTrue(s.closing)
        self.assertEqual(s.feed(b"CAPA\r\n"), [])

    def test_pipelined_errors_stop_at_the_limit(self):
        s = self.session()
        out = flatten(s.feed(b"BOGUS\r\n" * 30 + b"CAPA\r\n"))
        self.assertEqual(out.count(b"\r\n"), MAX_ERRORS)
        self.assertTrue(out.endswith(b"-ERR Too many errors\r\n"))

    def test_failed_logins_count_too(self):
        s = self.session()
        for _ in range(MAX_ERRORS // 2 - 1):
            self.send(s, f"USER {USER}", "PASS wrong", "BOGUS")
        self.assertFalse(s.closing)
        self.assertEqual(s.errors, 2 * (MAX_ERRORS // 2 - 1))
        self.send(s, "BOGUS", f"USER {USER}")
        self.assertEqual(self.one(s, "PASS wrong"), b"-ERR Too many errors\r\n")
        self.assertTrue(s.closing)


class PipeliningTest(Pop3TestCase):
    def test_a_whole_session_in_one_write(self):
        s = self.session()
        out = flatten(s.feed(f"USER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST 1\r\nRETR 1\r\n"
                             "DELE 2\r\nUIDL 2\r\nQUIT\r\n".encode()))
        self.assertEqual(out, b"+OK Send PASS\r\n+OK Logged in.\r\n+OK 3 %d\r\n+OK 1 %d\r\n"
                         % (sum(map(len, MESSAGES)), len(MESSAGES[0]))
                         + b"+OK %d octets\r\n" % len(MESSAGES[0]) + MESSAGES[0] + b".\r\n"
                         b"+OK message 2 deleted\r\n-ERR message 2 already deleted\r\n"
                         b"+OK Logging out, 1 messages deleted.\r\n")
        self.assertEqual(self.drop.commits, [({1}, {0})])
        self.assertTrue(s.quit)
        self.assertEqual(s.lines, 8)

    def test_what_follows_a_retr_waits_until_the_message_is_sent(self):
        s = self.logged_in()
        out = s.feed(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        self.assertEqual(self.drop.commits, [], "QUIT is not handled before the message goes out")
        self.assertFalse(s.closing)
        self.assertEqual(s.feed(b"NOOP\r\n"), [], "later input joins the queue")
        self.assertEqual(flatten(out), b"+OK %d octets\r\n" % len(MESSAGES[0]) + MESSAGES[0] + b".\r\n"
                                       b"+OK message 1 deleted\r\n+OK Logging out, 1 messages deleted.\r\n")
        self.assertEqual(self.drop.commits, [({0}, set())])

    def test_two_messages_and_input_that_arrives_while_sending(self):
        s = self.logged_in()
        out = s.feed(b"RETR 1\r\nRETR 2\r\nSTAT\r\n")
        self.assertEqual(s.feed(b"UIDL 1\r\n"), [])
        self.assertEqual(flatten(out),
                         b"+OK %d octets\r\n" % len(MESSAGES[0]) + MESSAGES[0] + b".\r\n"
                         + b"+OK %d octets\r\n" % len(MESSAGES[1]) + MESSAGES[1] + b".\r\n"
                         + b"+OK 3 %d\r\n" % sum(map(len, MESSAGES)) + b"+OK 1 uid1\r\n")
        self.assertEqual(self.one(s, "NOOP"), b"+OK\r\n", "back to answering at once")

    def test_a_download_cut_off_commits_nothing(self):
        s = self.logged_in()
        self.drop.chunk_lines = 1
        out = s.feed(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        stream = iter(out[0])
        self.assertTrue(next(stream).startswith(b"+OK"))
        next(stream)
        self.assertEqual(self.drop.readers_open, 1)
        s.close()  # the client went away: the connection stops sending and closes the session
        self.assertEqual(self.drop.commits, [])
        self.assertEqual(self.drop.readers_open, 0, "the message file is closed")
        self.assertEqual(self.drop.closes, 1)

    def test_a_download_never_started_closes_the_file(self):
        s = self.logged_in()
        out = s.feed(b"RETR 1\r\n")
        self.assertEqual(self.drop.readers_open, 1, "opened at RETR, to answer -ERR if it cannot be")
        s.close()
        self.assertEqual(self.drop.readers_open, 0)
        self.assertEqual(flatten(out), b"", "and a stream closed sends nothing")
        self.assertEqual(self.drop.commits, [])

    def test_a_read_error_in_the_middle_of_a_message_hangs_up(self):
        s = self.logged_in()
        self.drop.broken.add(0)
        with self.assertLogs("ismail.pop3", "ERROR") as logs:
            out = flatten(s.feed(b"RETR 1\r\nDELE 1\r\nQUIT\r\n"))
        self.assertIn("Input/output error", logs.output[0])
        first_chunk = b"".join(MESSAGES[0].splitlines(keepends=True)[:2])
        self.assertEqual(out, b"+OK %d octets\r\n" % len(MESSAGES[0]) + first_chunk,
                         "no end marker, no more answers")
        self.assertTrue(s.closing)
        self.assertFalse(s.quit)
        self.assertEqual(s.retrieved, 0)
        s.close()
        self.assertEqual(self.drop.commits, [])


class RealMaildropTest(Pop3TestCase):
    """The session over store.maildrop and a Maildir on disk, as the server runs it."""

    def setUp(self) -> None:
        super().setUp()
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-pop3-session-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.box = self.dir / "box"
        for sub in ("new", "cur", "tmp"):
            (self.box / sub).mkdir(parents=True)
        self.backend.boxes[USER] = self.box
        self.backend.drops = Maildrops()
        # As other Maildir tools leave them: LF line ends, no size in the name, one file
        # without a final line end.
        self.files = [("1700000001.M1P1.host", b"Subject: a\n\n.dot\nbody\n"),
                      ("1700000002.M1P1.host", b"Subject: b\n\nline 1\nline 2\nline 3\n"),
                      ("1700000003.M1P1.host", b"Subject: c\n\nno end")]
        for name, data in self.files:
            (self.box / "new" / name).write_bytes(data)

    def names(self, sub: str) -> list[str]:
        return sorted(os.listdir(self.box / sub))

    def test_a_session_over_a_real_maildir(self):
        s = self.logged_in()
        crlf = [data.replace(b"\n", b"\r\n") for _, data in self.files]
        self.assertEqual(self.one(s, "STAT"), b"+OK 3 %d\r\n" % sum(map(len, crlf)))
        self.assertEqual(self.one(s, "UIDL"), b"+OK unique-id listing follows\r\n"
                         + b"".join(b"%d %s\r\n" % (n, name.encode()) for n, (name, _) in
                                    enumerate(self.files, 1)) + b".\r\n")
        self.assertEqual(self.one(s, "RETR 1"), b"+OK %d octets\r\n" % len(crlf[0])
                         + b"Subject: a\r\n\r\n..dot\r\nbody\r\n.\r\n")
        self.assertEqual(self.one(s, "TOP 2 1"), b"+OK top of message follows\r\n"
                                                 b"Subject: b\r\n\r\nline 1\r\n.\r\n")
        self.assertEqual(self.one(s, "RETR 3"), b"+OK %d octets\r\n" % len(crlf[2])
                         + b"Subject: c\r\n\r\nno end\r\n.\r\n")
        self.assertEqual(self.one(s, "DELE 3"), b"+OK message 3 deleted\r\n")
        self.assertEqual(self.names("new"), [name for name, _ in self.files], "nothing changes before QUIT")
        self.assertEqual(self.one(s, "QUIT"), b"+OK Logging out, 1 messages deleted.\r\n")
        self.assertEqual(self.names("new"), [self.files[1][0]], "TOP does not mark a message read")
        self.assertEqual(self.names("cur"), [self.files[0][0] + (":2,S" if os.name != "nt" else "!2,S")])

    def test_in_use_until_the_first_session_ends_and_a_drop_deletes_nothing(self):
        first = self.logged_in()
        self.one(first, "DELE 1")
        second = self.session()
        self.assertEqual(self.send(second, f"USER {USER}", f"PASS {PASSWORD}")[1],
                         b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n")
        first.close()  # dropped without QUIT
        self.assertEqual(self.names("new"), [name for name, _ in self.files])
        self.assertEqual(self.send(second, f"USER {USER}", f"PASS {PASSWORD}")[1], b"+OK Logged in.\r\n")
        self.assertEqual(self.one(second, "STAT")[:6], b"+OK 3 ")

    def test_a_message_another_program_flagged_meanwhile_is_marked_seen_where_it_is(self):
        s = self.logged_in()
        name = self.files[1][0]
        sep = INFO_SEP
        os.replace(self.box / "new" / name, self.box / "cur" / f"{name}{sep}2,F")  # a mail client flags it
        self.assertEqual(self.one(s, "RETR 2")[:4], b"+OK ")  # found by its unique name
        self.assertEqual(self.one(s, "DELE 3"), b"+OK message 3 deleted\r\n")
        self.assertEqual(self.one(s, "QUIT"), b"+OK Logging out, 1 messages deleted.\r\n")
        self.assertEqual(self.names("cur"), [f"{name}{sep}2,FS"])
        self.assertEqual(self.names("new"), [self.files[0][0]])

    def test_seen_never_overwrites_a_file_of_the_same_name(self):
        s = self.logged_in()
        name = self.files[0][0]
        clash = self.box / "cur" / f"{name}{INFO_SEP}2,S"
        clash.write_bytes(b"Subject: another copy\n\nkeep me\n")
        self.assertEqual(self.one(s, "RETR 1")[:4], b"+OK ")
        self.assertEqual(self.one(s, "QUIT")[:4], b"+OK ")
        self.assertEqual(clash.read_bytes(), b"Subject: another copy\n\nkeep me\n")
        self.assertEqual((self.box / "new" / name).read_bytes(), self.files[0][1], "left where it was")

    def test_a_message_removed_by_someone_else(self):
        s = self.logged_in()
        (self.box / "new" / self.files[1][0]).unlink()
        self.assertEqual(self.one(s, "RETR 2"), b"-ERR message 2 is no longer available\r\n")
        self.assertEqual(self.one(s, "DELE 2"), b"+OK message 2 deleted\r\n")
        self.assertEqual(self.one(s, "QUIT"), b"+OK Logging out, 1 messages deleted.\r\n")


if __name__ == "__main__":
    unittest.main()
