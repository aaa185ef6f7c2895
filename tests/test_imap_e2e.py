"""IMAP end to end: a real ISMail process, mail sent in over SMTP, read and changed with imaplib.

What a user of a mail program would check, and what a hostile client tries:

* delivered mail comes down byte for byte (after the trace headers ISMail adds on
  delivery, support.ADDED_HEADERS), an APPENDed message exactly as it went up; UIDs and
  UIDVALIDITY stay; flags, COPY, MOVE, EXPUNGE and folders end up in the Maildir++;
* the state machine: every command outside its state gets a tagged BAD that says why,
  and the session goes on; LOGOUT ends it;
* every error: malformed and unknown commands, bad sequence sets, literals over the
  message limit, lines over 64 KiB get a tagged NO or BAD with a reason and the
  session goes on; 20 BADs end it; a client that drops mid-APPEND leaves nothing;
* two sessions on one folder see each other's flags and expunges (EXPUNGE never during
  FETCH, STORE or SEARCH), and IDLE reports SMTP delivery within 2 seconds;
* POP3 and IMAP share INBOX: what POP3 deletes is expunged in IMAP, what IMAP moves to
  Trash leaves the POP3 maildrop;
* SIGKILL during APPEND, COPY, MOVE and EXPUNGE: afterwards every message is there once
  or not at all (after a MOVE in exactly one of the two folders), never cut short, and
  no UID a client was given is handed out again.

The raw protocol goes through `ImapTalk` (exact lines, literals read by their counts);
test_imap_clients.py borrows the imaplib helpers (`ok`, `fetch_literals`, `fetch_flags`).
"""
from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import smtplib
import socket
import threading
import time
import unittest
from pathlib import Path

from tests.security_support import PASSWORD, USER, SelfSignedCertificate, tls_client_context
from tests.support import SMTPTalk, ServerProcess, without_trace

# What ISMail puts in front of a message it delivers (the rest is what the client sent).
SPECIAL = ("Drafts", "Junk", "Sent", "Trash")   # made at the first login (RFC 6154)
IDLE_WITHIN = 2.0                               # seconds from delivery to "* n EXISTS"

SAMPLES = [
    b"From: a@remote.test\r\nTo: user@example.test\r\nSubject: one\r\nMessage-ID: <1@remote.test>\r\n"
    b"\r\nHello.\r\n",
    b"From: b@remote.test\r\nSubject: dots\r\nMessage-ID: <2@remote.test>\r\n\r\n"
    b".starts with a dot\r\n..two dots\r\n. \r\n\r\nend\r\n",
    "From: c@remote.test\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <3@remote.test>\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Grüße aus Köln\r\n".encode()
    + b"".join(b"line %05d " % i + b"x" * 60 + b"\r\n" for i in range(3000)),
]


# --- helpers --------------------------------------------------------------------------------

def smtp_send(port: int, *messages: bytes, rcpt: str = USER) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for m in messages:
            s.sendmail("a@remote.test", [rcpt], m)


def imap(port: int, source: str | None = None) -> imaplib.IMAP4:
    """imaplib on loopback (from ``source`` if given), not yet logged in."""
    class Bound(imaplib.IMAP4):
        def _create_socket(self, timeout):
            return socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0) if source else None)
    return Bound("127.0.0.1", port, timeout=30)


def logged_in(port: int) -> imaplib.IMAP4:
    m = imap(port)
    m.login(USER, PASSWORD)
    return m


def ok(result: tuple[str, list]) -> list:
    typ, data = result
    if typ != "OK":
        raise AssertionError(f"expected OK, got {typ} {data!r}")
    return data


def fetch_literals(m: imaplib.IMAP4, uids: str, items: str) -> dict[int, tuple[bytes, bytes]]:
    """UID -> (the response text before the literal, the literal) of a UID FETCH of one literal."""
    out = {}
    for item in ok(m.uid("FETCH", uids, items)):
        if isinstance(item, tuple):
            out[int(re.search(rb"UID (\d+)", item[0]).group(1))] = item
    return out


def fetch_flags(m: imaplib.IMAP4, uids: str = "1:*") -> dict[int, set[str]]:
    out = {}
    for item in ok(m.uid("FETCH", uids, "(UID FLAGS)")):
        if item:
            uid = int(re.search(rb"UID (\d+)", item).group(1))
            out[uid] = set(re.search(rb"FLAGS \(([^)]*)\)", item).group(1).decode().split())
    return out


def response_code(data: list, code: str) -> list[str]:
    """The words of ``[CODE ...]`` in an imaplib answer (APPENDUID, COPYUID)."""
    for line in data:
        text = line.decode() if isinstance(line, bytes) else ""
        m = re.search(r"\[" + code + r" ([^\]]*)\]", text)
        if m:
            return m.group(1).split()
    raise AssertionError(f"no [{code}] in {data!r}")


def uid_set(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        out += range(int(low), int(high or low) + 1)
    return out


class ImapTalk:
    """A raw IMAP client on a socket: commands as written, responses with their literals."""

    def __init__(self, port: int, source: str | None = None, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.count = 0
        self.greeting = self.response()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"the server closed the connection (unread: {self.buf[:200]!r})")
        self.buf += data

    def response(self) -> bytes:
        """One response (``* ...``, ``+ ...`` or tagged), literals and CRLF included."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, self.buf = self.buf.split(b"\r\n", 1)
            out += line + b"\r\n"
            m = re.search(rb"\{(\d+)\}\Z", line)
            if not m:
                return out
            size = int(m.group(1))
            while len(self.buf) < size:
                self._fill()
            out, self.buf = out + self.buf[:size], self.buf[size:]

    def tag(self) -> bytes:
        self.count += 1
        return b"t%d" % self.count

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        """Send ``tag text``; (the untagged responses, the tagged one)."""
        tag = self.tag()
        self.send(tag + b" " + (text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.until(tag)

    def until(self, tag: bytes) -> tuple[list[bytes], bytes]:
        untagged = []
        while True:
            r = self.response()
            if r.startswith(tag + b" "):
                return untagged, r
            untagged.append(r)

    def ok(self, text: str | bytes) -> list[bytes]:
        untagged, tagged = self.cmd(text)
        if tagged.split(b" ", 2)[1] != b"OK":
            raise AssertionError(f"{text!r}: {tagged!r}")
        return untagged

    def login(self) -> None:
        self.ok(f"LOGIN {USER} {PASSWORD}")

    def append(self, folder: str, message: bytes, flags: str = "") -> bytes:
        """APPEND with a synchronising literal; the tagged response."""
        tag = self.tag()
        self.send(tag + f" APPEND {folder} {flags} {{{len(message)}}}\r\n".encode())
        go = self.response()
        if not go.startswith(b"+"):
            return go
        self.send(message + b"\r\n")
        return self.until(tag)[1]

    def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection within ``seconds`` (what it says is read)."""
        deadline = time.monotonic() + seconds
        self.buf = b""
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except socket.timeout:
                return False
            except OSError:
                return True
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def tagged_status(tagged: bytes) -> bytes:
    return tagged.split(b" ", 2)[1]


def reason(tagged: bytes) -> bytes:
    """What follows ``tag BAD`` / ``tag NO`` (a response code included)."""
    return tagged.split(b" ", 2)[2].strip() if tagged.count(b" ") >= 2 else b""


# --- one running server per class ---------------------------------------------------------------

class ImapCase(unittest.TestCase):
    settings: dict = {}

    @classmethod
    def setUpClass(cls) -> None:
        cls.cert = SelfSignedCertificate(cls())
        cls.addClassCleanup(cls.cert.remove)
        cls.server = ServerProcess({**cls.cert.settings(), **cls.settings})
        cls.addClassCleanup(cls.server.cleanup)
        cls.server.start()
        cls.port = cls.server.imap_port

    def setUp(self) -> None:
        """Every folder empty, and only INBOX and the special folders left."""
        root = self.server.maildir()
        if not root.is_dir():
            return
        for folder in [root, *(p for p in root.iterdir() if p.name.startswith(".") and p.is_dir())]:
            if folder is not root and folder.name[1:] not in SPECIAL:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for sub in ("new", "cur"):
                for f in (folder / sub).glob("*") if (folder / sub).is_dir() else []:
                    f.unlink()

    def deliver(self, *messages: bytes) -> None:
        smtp_send(self.server.port, *messages)

    def talk(self, source: str | None = None, login: bool = True) -> ImapTalk:
        t = ImapTalk(self.port, source)
        self.addCleanup(t.close)
        if login:
            t.login()
        return t

    def session(self) -> imaplib.IMAP4:
        m = logged_in(self.port)
        self.addCleanup(self._logout, m)
        return m

    @staticmethod
    def _logout(m: imaplib.IMAP4) -> None:
        try:
            m.logout()
        except (imaplib.IMAP4.error, OSError):
            pass

    def files(self, folder: str = "") -> list[Path]:
        box = self.server.maildir() / (f".{folder}" if folder else "")
        return sorted(p for sub in ("new", "cur") for p in (box / sub).glob("*"))


# --- reading ----------------------------------------------------------------------------------------

class DownloadTest(ImapCase):
    def test_delivered_mail_comes_down_byte_for_byte(self):
        self.deliver(*SAMPLES)
        m = self.session()
        self.assertEqual(ok(m.select("INBOX")), [b"3"])
        bodies = fetch_literals(m, "1:*", "(UID RFC822.SIZE FLAGS BODY.PEEK[])")
        self.assertEqual(len(bodies), 3)
        for (uid, (head, full)), original in zip(sorted(bodies.items()), SAMPLES):
            self.assertEqual(without_trace(full), original, f"UID {uid} changed")
            self.assertTrue(full.startswith(b"Return-Path: <a@remote.test>\r\n"
                                            b"Authentication-Results: mx.example.test; none\r\nReceived: "))
            # RFC822.SIZE is the exact size of what BODY[] gives (RFC 3501 §2.3.4).
            self.assertIn(b"RFC822.SIZE %d " % len(full), head)
            self.assertNotIn(b"\\Seen", head, "BODY.PEEK sets no flag")
        # Parts: the text alone, one header field, a partial range.
        uid = sorted(bodies)[2]
        text = fetch_literals(m, str(uid), "(UID BODY.PEEK[TEXT])")[uid][1]
        self.assertEqual(text, SAMPLES[2].split(b"\r\n\r\n", 1)[1])
        field = fetch_literals(m, str(uid), "(UID BODY.PEEK[HEADER.FIELDS (Message-ID)])")[uid][1]
        self.assertEqual(field, b"Message-ID: <3@remote.test>\r\n\r\n")
        part = fetch_literals(m, str(uid), "(UID BODY.PEEK[TEXT]<6.9>)")[uid][1]
        self.assertEqual(part, text[6:15])
        # BODY[] without PEEK sets \Seen, and the file says so (Maildir flag S).
        first = sorted(bodies)[0]
        ok(m.uid("FETCH", str(first), "(BODY[])"))
        self.assertIn("\\Seen", fetch_flags(m, str(first))[first])
        seen = [f for f in self.files() if f.name.endswith(":2,S")]
        self.assertEqual(len(seen), 1)

    def test_uids_and_uidvalidity_stay_across_sessions(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        m = self.session()
        ok(m.select("INBOX"))
        validity = m.untagged_responses["UIDVALIDITY"][0]
        uids = ok(m.uid("SEARCH", "ALL"))[0].split()
        self.assertEqual(len(uids), 2)
        m.logout()
        self.deliver(SAMPLES[0])
        m = self.session()
        ok(m.select("INBOX"))
        self.assertEqual(m.untagged_responses["UIDVALIDITY"][0], validity)
        now = ok(m.uid("SEARCH", "ALL"))[0].split()
        self.assertEqual(now[:2], uids, "old messages keep their UIDs")
        self.assertGreater(int(now[2]), int(uids[1]), "new mail gets a higher UID")

    def test_search(self):
        self.deliver(*SAMPLES)
        m = self.session()
        ok(m.select("INBOX"))
        ok(m.store("2", "+FLAGS", "(\\Seen)"))
        cases = [(("SUBJECT", "dots"), [2]), (("FROM", "c@remote.test"), [3]), (("UNSEEN",), [1, 3]),
                 (("SEEN",), [2]), (("LARGER", "100000"), [3]), (("OR", "FROM", "a@", "FROM", "b@"), [1, 2]),
                 (("NOT", "BODY", "Hello"), [2, 3]), (("HEADER", "Message-ID", "<2@"), [2]), (("ALL",), [1, 2, 3])]
        for criteria, want in cases:
            got = [int(n) for n in ok(m.search(None, *criteria))[0].split()]
            self.assertEqual(got, want, criteria)
        m.literal = "Köln".encode()
        self.assertEqual(ok(m.search("UTF-8", "BODY"))[0].split(), [b"3"])
        uids = ok(m.uid("SEARCH", "SUBJECT", "one"))[0].split()
        self.assertEqual(len(uids), 1)


# --- changing --------------------------------------------------------------------------------------

class ChangeTest(ImapCase):
    def test_append_stores_the_message_byte_for_byte(self):
        m = self.session()
        data = ok(m.append("Drafts", "(\\Draft \\Seen)", '"17-Jul-1996 02:44:25 -0700"', SAMPLES[2]))
        validity, uid = map(int, response_code(data, "APPENDUID"))
        ok(m.select("Drafts"))
        self.assertEqual(int(m.untagged_responses["UIDVALIDITY"][0]), validity)
        head, body = fetch_literals(m, str(uid), "(UID INTERNALDATE FLAGS BODY.PEEK[])")[uid]
        self.assertEqual(body, SAMPLES[2], "APPEND adds nothing and changes nothing")
        when = imaplib.Internaldate2tuple(head)
        self.assertEqual(time.mktime(when), time.mktime(imaplib.Internaldate2tuple(
            b'INTERNALDATE "17-Jul-1996 02:44:25 -0700"')), head)
        self.assertIn(b"\\Draft", head)
        files = self.files("Drafts")
        self.assertEqual(len(files), 1)
        self.assertTrue(files[0].name.endswith(":2,DS"), files[0].name)

    def test_flags_and_keywords_are_kept_in_the_file_name(self):
        self.deliver(SAMPLES[0])
        m = self.session()
        ok(m.select("INBOX"))
        ok(m.store("1", "+FLAGS", "(\\Flagged \\Answered $Label1)"))
        (uid, flags), = fetch_flags(m).items()
        self.assertEqual(flags, {"\\Flagged", "\\Answered", "$Label1", "\\Recent"})
        self.assertRegex(self.files()[0].name, r":2,FRa\Z")
        ok(m.store("1", "-FLAGS", "(\\Answered)"))
        ok(m.store("1", "FLAGS", "(\\Seen $Label1)"))
        self.assertEqual(fetch_flags(m)[uid] - {"\\Recent"}, {"\\Seen", "$Label1"})
        self.assertRegex(self.files()[0].name, r":2,Sa\Z")
        m.logout()
        m = self.session()
        ok(m.select("INBOX"))
        self.assertEqual(fetch_flags(m)[uid], {"\\Seen", "$Label1"}, "flags outlive the session")

    def test_expunge_removes_only_deleted_messages(self):
        self.deliver(*SAMPLES)
        t = self.talk()
        t.ok("SELECT INBOX")
        t.ok("STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        untagged = t.ok("EXPUNGE")
        # Each EXPUNGE counts the messages the client still knows of (RFC 3501 §7.4.1).
        self.assertEqual(sorted(untagged), [b"* 1 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"])
        self.assertEqual(len(self.files()), 1)
        untagged = t.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])")
        self.assertIn(b"Subject: dots", untagged[0])

    def test_copy_and_move_answer_copyuid_and_move_the_files(self):
        self.deliver(*SAMPLES)
        m = self.session()
        ok(m.create("Archive"))
        ok(m.select("INBOX"))
        uids = ok(m.uid("SEARCH", "ALL"))[0].split()
        data = ok(m.copy("1:2", "Archive"))    # imaplib hides the tagged text of UID commands
        _, source, target = response_code(data, "COPYUID")
        self.assertEqual(uid_set(source), [int(u) for u in uids[:2]])
        self.assertEqual(len(uid_set(target)), 2)
        self.assertEqual(len(self.files("Archive")), 2)
        self.assertEqual(len(self.files()), 3, "COPY leaves the source alone")
        ok(m.uid("MOVE", uids[2].decode(), "Trash"))
        self.assertEqual(ok(m.uid("SEARCH", "ALL"))[0].split(), uids[:2])
        self.assertEqual(len(self.files()), 2)
        self.assertEqual(len(self.files("Trash")), 1)
        ok(m.select("Trash"))
        moved = fetch_literals(m, "1:*", "(UID BODY.PEEK[])")
        self.assertEqual([without_trace(b) for _, b in moved.values()], [SAMPLES[2]])

    def test_folders_are_maildir_plus_plus_folders(self):
        m = self.session()
        ok(m.create("Projects/2024"))
        root = self.server.maildir()
        self.assertTrue((root / ".Projects" / "cur").is_dir())
        self.assertTrue((root / ".Projects.2024" / "maildirfolder").is_file())
        ok(m.create("Entw&APw-rfe"))      # "Entwürfe" in modified UTF-7
        self.assertTrue((root / ".Entw&APw-rfe" / "cur").is_dir(), "levels in modified UTF-7 on disk")
        listing = b"\n".join(ok(m.list()))
        for name in (b'"INBOX"', b'"Projects"', b'"Projects/2024"', b'"Entw&APw-rfe"', b"\\Trash"):
            self.assertIn(name, listing)
        ok(m.rename("Projects", "Work"))
        listing = b"\n".join(ok(m.list('""', "Work/%")))
        self.assertIn(b'"Work/2024"', listing)
        self.assertFalse((root / ".Projects").exists())
        ok(m.subscribe("Work/2024"))
        self.assertIn(b'"Work/2024"', b"\n".join(ok(m.lsub())))
        ok(m.append("Work/2024", None, None, SAMPLES[0]))
        status = ok(m.status("Work/2024", "(MESSAGES UIDNEXT UNSEEN)"))[0]
        self.assertRegex(status, rb"MESSAGES 1 UIDNEXT \d+ UNSEEN 1")
        typ, data = m.delete("Work")
        self.assertEqual(typ, "NO", "a folder with sub-folders is not deleted")
        ok(m.delete("Work/2024"))
        ok(m.delete("Work"))
        self.assertFalse(any(p.name.startswith(".Work") for p in root.iterdir()))

    def test_examine_is_read_only(self):
        self.deliver(SAMPLES[0])
        t = self.talk()
        _, tagged = t.cmd("EXAMINE INBOX")
        self.assertIn(b"[READ-ONLY]", tagged)
        _, tagged = t.cmd("STORE 1 +FLAGS (\\Deleted)")
        self.assertIn(b"NO [READ-ONLY]", tagged)
        t.ok("FETCH 1 BODY[]")
        self.assertEqual(self.files()[0].parent.name, "new", "EXAMINE sets no \\Seen")
        _, tagged = t.cmd("EXPUNGE")
        self.assertEqual(tagged_status(tagged), b"NO")


# --- the state machine --------------------------------------------------------------------------------

class StateTest(ImapCase):
    def assert_bad(self, t: ImapTalk, command: str, why: bytes) -> None:
        _, tagged = t.cmd(command)
        self.assertEqual(tagged_status(tagged), b"BAD", f"{command}: {tagged!r}")
        self.assertIn(why, tagged, command)

    def test_not_authenticated(self):
        t = self.talk(login=False)
        for command in ("SELECT INBOX", 'LIST "" *', "STATUS INBOX (MESSAGES)", "FETCH 1 FLAGS",
                        "UID FETCH 1 FLAGS", "EXPUNGE", "CLOSE", "IDLE", "CREATE x", "NAMESPACE"):
            self.assert_bad(t, command, b"log in first")
        # A literal is read before the state is looked at: the session stays in step.
        t.send(b"a1 APPEND INBOX {3+}\r\nabc\r\n")
        self.assertIn(b"log in first", t.until(b"a1")[1])
        t.ok("CAPABILITY")
        t.ok("NOOP")
        t.login()
        t.ok("SELECT INBOX")

    def test_authenticated_and_selected(self):
        self.deliver(SAMPLES[0])
        t = self.talk()
        for command in ("FETCH 1 FLAGS", "STORE 1 +FLAGS (\\Seen)", "SEARCH ALL", "COPY 1 Trash",
                        "MOVE 1 Trash", "EXPUNGE", "UID EXPUNGE 1", "CLOSE", "UNSELECT", "CHECK"):
            self.assert_bad(t, command, b"no folder selected")
        for command in (f"LOGIN {USER} {PASSWORD}", "AUTHENTICATE PLAIN", "STARTTLS"):
            self.assert_bad(t, command, b"already logged in")
        self.assert_bad(t, "UID SELECT INBOX", b"UID goes with")
        t = self.talk()   # a fresh session: 20 BADs would end this one
        t.ok("SELECT INBOX")
        self.assertIn(b"FLAGS (\\Recent)", t.ok("FETCH 1 FLAGS")[0])
        self.assert_bad(t, f"LOGIN {USER} {PASSWORD}", b"already logged in")
        t.ok("CLOSE")                 # back to the authenticated state
        self.assert_bad(t, "FETCH 1 FLAGS", b"no folder selected")
        t.ok("EXAMINE INBOX")
        t.ok("UNSELECT")
        self.assert_bad(t, "FETCH 1 FLAGS", b"no folder selected")
        untagged, tagged = t.cmd("LOGOUT")
        self.assertTrue(untagged[0].startswith(b"* BYE"))
        self.assertEqual(tagged_status(tagged), b"OK")
        self.assertTrue(t.closed_within(5), "LOGOUT ends the connection")

    def test_a_failed_select_leaves_no_folder_selected(self):
        t = self.talk()
        t.ok("SELECT INBOX")
        _, tagged = t.cmd("SELECT Nowhere")
        self.assertIn(b"NO [NONEXISTENT]", tagged)
        _, tagged = t.cmd("FETCH 1 FLAGS")
        self.assertIn(b"no folder selected", tagged)

    def test_wrong_password_is_refused_and_the_session_goes_on(self):
        t = self.talk(source="127.0.0.5", login=False)   # its own address: failures count to a ban
        _, tagged = t.cmd(f"LOGIN {USER} wrong")
        self.assertIn(b"NO [AUTHENTICATIONFAILED]", tagged)
        t.login()
        t.ok("SELECT INBOX")


# --- errors ------------------------------------------------------------------------------------------

class ErrorTest(ImapCase):
    settings = {"max_message_size_mb": 1}
    LIMIT = 1024 * 1024

    def assert_refused(self, t: ImapTalk, command: bytes, status: bytes = b"BAD") -> bytes:
        tag = t.tag()
        t.send(tag + b" " + command + b"\r\n")
        untagged, tagged = t.until(tag)
        self.assertEqual(tagged_status(tagged), status, f"{command[:80]!r}: {tagged[:200]!r}")
        self.assertGreater(len(reason(tagged)), 3, f"{command[:80]!r}: no reason given")
        return tagged

    def test_malformed_and_unknown_commands_get_bad_with_a_reason(self):
        self.deliver(SAMPLES[0])
        batches = [  # fewer than 20 a session: the 20th BAD ends it
            (b"FETCH", b"FETCH 1", b"FETCH 1 (FLAGS", b"FETCH 1 BODY[HEADER", b"FETCH 1 (NOSUCHITEM)",
             b"FETCH 1 BODY[]<0.0>", b'SELECT "unterminated', b"LOGIN", b"NOOP extra", b"COPY 1"),
            (b"STORE 1 +FLAGZ (\\Seen)", b"STORE 1 +FLAGS (\\Bogus)", b"SEARCH NOSUCHKEY",
             b"SEARCH BEFORE 32-Foo-2024", b"STATUS INBOX (NOSUCHITEM)", b"APPEND",
             b'APPEND INBOX "not a literal"', b"ID (\"name\")"),
            (b"XYZZY", b"UID XYZZY 1", b"SELECT Entw\xc3\xbcrfe", b"NOOP \x00", b"NOOP \x7f",
             b"a\"b NOOP", b"LIST (\"\" *)")]
        for batch in batches:
            t = self.talk()
            t.ok("SELECT INBOX")
            for command in batch:
                self.assert_refused(t, command)
            self.assertIn(b"FLAGS", t.ok("FETCH 1 FLAGS")[0], "the session goes on")
        # No tag, or an invalid one: an untagged BAD, and the session reads on.
        t.send(b" NOOP\r\n")
        self.assertTrue(t.response().startswith(b"* BAD "))
        t.send(b"\r\n")
        self.assertTrue(t.response().startswith(b"* BAD "))
        t.ok("NOOP")

    def test_bad_sequence_sets(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        t = self.talk()
        t.ok("SELECT INBOX")
        for seqset in (b"0", b"1:x", b"x", b"3", b"1:3", b"1,,2", b"1:2:3", b"-1", b"4294967296", b"$", b"1 2"):
            self.assert_refused(t, b"FETCH " + seqset + b" FLAGS")
        self.assert_refused(t, b"STORE 5 +FLAGS (\\Seen)")
        self.assert_refused(t, b"COPY 0 Trash")
        # UIDs that name no message are no error (RFC 3501 §6.4.8): nothing is answered.
        self.assertEqual(t.ok("UID FETCH 99:100 FLAGS"), [])
        self.assertEqual(len(t.ok("FETCH 1:* FLAGS")), 2)
        self.assertEqual(len(t.ok("FETCH 2:1 FLAGS")), 2, "a range may be written backwards")

    def test_answers_no_with_a_response_code(self):
        self.deliver(SAMPLES[0])
        t = self.talk()
        for command, code in ((b"SELECT Nowhere", b"[NONEXISTENT]"), (b"STATUS Nowhere (MESSAGES)", b"[NONEXISTENT]"),
                              (b"APPEND Nowhere {3+}\r\nabc", b"[TRYCREATE]"), (b"CREATE INBOX", b"[ALREADYEXISTS]"),
                              (b"CREATE Trash", b"[ALREADYEXISTS]"), (b"DELETE INBOX", b"[CANNOT]"),
                              (b"DELETE Nowhere", b"[NONEXISTENT]"), (b"RENAME Nowhere Else", b"[NONEXISTENT]")):
            self.assertIn(code, self.assert_refused(t, command, b"NO"), command)
        t.ok("SELECT INBOX")
        for command, code in ((b"COPY 1 Nowhere", b"[TRYCREATE]"), (b"MOVE 1 Nowhere", b"[TRYCREATE]")):
            self.assertIn(code, self.assert_refused(t, command, b"NO"))
        self.assertEqual(len(self.files()), 1)

    def test_a_literal_over_the_message_limit_is_refused(self):
        t = self.talk()
        before = len(self.files())
        # Synchronising: refused at once, before the client sends a single octet.
        tagged = self.assert_refused(t, b"APPEND INBOX {%d}" % (self.LIMIT + 1), b"NO")
        self.assertIn(b"[TOOBIG]", tagged)
        # Non-synchronising (LITERAL+): the octets are already on their way; they are skipped.
        tag, size = t.tag(), self.LIMIT + 100_000
        t.send(tag + b" APPEND INBOX {%d+}\r\n" % size)
        for _ in range(size // 100_000):
            t.send(b"x" * 99_999 + b"\n")
        t.send(b"x" * (size % 100_000) + b"\r\n")
        untagged, tagged = t.until(tag)
        self.assertIn(b"NO [TOOBIG]", tagged)
        # Just at the limit is fine.
        message = b"Subject: big\r\n\r\n" + b"y" * (self.LIMIT - 18) + b"\r\n"
        self.assertEqual(len(message), self.LIMIT)
        self.assertIn(b"OK [APPENDUID", t.append("INBOX", message))
        self.assertEqual(len(self.files()), before + 1)
        t.ok("NOOP")

    def test_literals_before_login_are_small(self):
        t = self.talk(login=False)
        tagged = self.assert_refused(t, b"LOGIN {100000}")
        self.assertIn(b"literal too large", tagged)
        t.send(b"a1 LOGIN {%d}\r\n" % len(USER))
        self.assertTrue(t.response().startswith(b"+"))
        t.send(USER.encode() + b" {%d+}\r\n" % len(PASSWORD) + PASSWORD.encode() + b"\r\n")
        self.assertEqual(tagged_status(t.until(b"a1")[1]), b"OK", "a login with literals works")

    def test_lines_over_64_kib_are_refused_and_the_session_goes_on(self):
        t = self.talk()
        tagged = self.assert_refused(t, b"NOOP " + b"x" * 65536)
        self.assertIn(b"line too long", tagged)
        # A megabyte without a line end: not kept, one BAD when the line finally ends.
        tag = t.tag()
        t.send(tag + b" SEARCH ")
        for _ in range(16):
            t.send(b"a" * 65536)
        t.send(b"\r\n")
        untagged, tagged = t.until(tag)
        self.assertEqual(tagged_status(tagged), b"BAD")
        self.assertIn(b"line too long", tagged)
        t.ok("NOOP")

    def test_twenty_bad_commands_end_the_session(self):
        t = self.talk()
        for n in range(19):
            _, tagged = t.cmd("BOGUS")
            self.assertEqual(tagged_status(tagged), b"BAD")
        tag = t.tag()
        t.send(tag + b" BOGUS\r\n")
        self.assertEqual(tagged_status(t.response()), b"BAD")
        self.assertTrue(t.response().startswith(b"* BYE"))
        self.assertTrue(t.closed_within(5), "the server hangs up after 20 errors")

    def test_three_failed_logins_ban_the_address_for_smtp_too(self):
        for _ in range(3):
            t = self.talk(source="127.0.0.3", login=False)
            _, tagged = t.cmd(f"LOGIN {USER} wrong")
            self.assertIn(b"NO [AUTHENTICATIONFAILED]", tagged)
        with SMTPTalk(self.server.port, source="127.0.0.3") as s:
            self.assertTrue(s.reply().startswith(b"554"), "SMTP refuses the banned address")
        t = ImapTalk(self.port, source="127.0.0.3")
        self.addCleanup(t.close)
        self.assertTrue(t.greeting.startswith(b"* BYE"), "and so does IMAP")

    def test_a_client_that_drops_mid_append_leaves_nothing(self):
        self.deliver(SAMPLES[0])
        root = self.server.maildir()
        index = (root / "ismail-uidlist").read_bytes() if (root / "ismail-uidlist").exists() else b""
        message = SAMPLES[2]
        for how in ("sync", "literal+", "after +"):
            t = self.talk()
            if how == "literal+":
                t.send(b"a1 APPEND INBOX {%d+}\r\n" % len(message) + message[:len(message) // 2])
            else:
                t.send(b"a1 APPEND INBOX (\\Seen) {%d}\r\n" % len(message))
                self.assertTrue(t.response().startswith(b"+"))
                if how == "sync":
                    t.send(message[:-10])
            time.sleep(0.2)
            t.close()
        time.sleep(0.5)
        self.assertEqual(len(self.files()), 1, "no partial message in new/ or cur/")
        self.assertEqual(list((root / "tmp").iterdir()), [], "nothing left in tmp/ either")
        if index:
            self.assertEqual((root / "ismail-uidlist").read_bytes(), index, "no UID was used up")
        m = self.session()
        self.assertEqual(ok(m.select("INBOX")), [b"1"])


class PlaintextTest(ImapCase):
    """A client outside trusted_networks must use TLS before it sends a password."""

    settings = {"trusted_networks": ["127.0.0.1/32"]}

    def test_untrusted_client_must_use_starttls_first(self):
        m = imap(self.port, source="127.0.0.2")
        self.addCleanup(self._logout, m)
        self.assertIn("LOGINDISABLED", m.capabilities)
        self.assertIn("STARTTLS", m.capabilities)
        with self.assertRaisesRegex(imaplib.IMAP4.error, "PRIVACYREQUIRED"):
            m.login(USER, PASSWORD)
        ok(m.starttls(ssl_context=tls_client_context()))
        self.assertNotIn("STARTTLS", m.capabilities)
        self.assertIn("AUTH=PLAIN", m.capabilities)
        ok(m.login(USER, PASSWORD))
        ok(m.select("INBOX"))

    def test_authenticate_plain_is_refused_without_tls_too(self):
        t = self.talk(source="127.0.0.2", login=False)
        _, tagged = t.cmd("AUTHENTICATE PLAIN AHVzZXJAZXhhbXBsZS50ZXN0AHNlY3JldC1wdw==")
        self.assertIn(b"NO [PRIVACYREQUIRED]", tagged)

    def test_trusted_client_may_log_in_without_tls(self):
        self.session()


# --- two sessions, IDLE, and POP3 on the same folder -----------------------------------------------

class TwoClientsTest(ImapCase):
    def two(self) -> tuple[ImapTalk, ImapTalk]:
        a, b = self.talk(), self.talk()
        a.ok("SELECT INBOX")
        b.ok("SELECT INBOX")
        return a, b

    def test_one_expunges_and_flags_the_other_sees_it(self):
        self.deliver(*SAMPLES)
        a, b = self.two()
        a.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
        a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(a.ok("EXPUNGE"), [b"* 2 EXPUNGE\r\n"])
        # During FETCH no EXPUNGE may be sent (RFC 3501 §7.4.1): B's numbers stay valid.
        untagged = b.ok("FETCH 3 (BODY.PEEK[HEADER.FIELDS (Subject)])")
        self.assertFalse([u for u in untagged if u.endswith(b"EXPUNGE\r\n")], untagged)
        self.assertIn(b"Subject: =?utf-8?q?gr", b"".join(untagged), "message 3 is still number 3")
        self.assertTrue(any(b"FETCH (UID" in u and b"\\Flagged" in u for u in untagged), untagged)
        untagged = b.ok("NOOP")
        self.assertIn(b"* 2 EXPUNGE\r\n", untagged)
        self.assertEqual(len(b.ok("FETCH 1:* FLAGS")), 2)

    def test_fetch_of_a_message_expunged_elsewhere_says_expungeissued(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        a, b = self.two()
        b.ok("NOOP")
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.ok("EXPUNGE")
        untagged, tagged = b.cmd("FETCH 1:2 BODY.PEEK[]")
        self.assertIn(b"NO [EXPUNGEISSUED]", tagged)
        self.assertIn(b"Subject: dots", b"".join(untagged), "the message that is left comes")
        self.assertIn(b"* 1 EXPUNGE\r\n", b.ok("NOOP"))

    def test_append_and_copy_by_one_are_seen_by_the_other(self):
        self.deliver(SAMPLES[0])
        a, b = self.two()
        self.assertIn(b"APPENDUID", a.append("INBOX", SAMPLES[1]))
        self.assertIn(b"* 2 EXISTS\r\n", b.ok("NOOP"))
        a.ok("COPY 1 INBOX")
        self.assertIn(b"* 3 EXISTS\r\n", b.ok("NOOP"))

    def wait_for(self, t: ImapTalk, pattern: bytes, within: float) -> tuple[bytes, float]:
        """Read responses until one matches; (it, seconds taken). Fails after ``within``."""
        start = time.monotonic()
        seen = []
        while time.monotonic() - start < within:
            t.sock.settimeout(max(0.05, within - (time.monotonic() - start)))
            try:
                r = t.response()
            except socket.timeout:
                break
            seen.append(r)
            if re.search(pattern, r):
                return r, time.monotonic() - start
        self.fail(f"no {pattern!r} within {within}s; got {seen!r}")

    def idle(self, t: ImapTalk) -> bytes:
        tag = t.tag()
        t.send(tag + b" IDLE\r\n")
        self.assertTrue(t.response().startswith(b"+ "))
        return tag

    def done(self, t: ImapTalk, tag: bytes) -> None:
        t.sock.settimeout(10)
        t.send(b"DONE\r\n")
        self.assertEqual(tagged_status(t.until(tag)[1]), b"OK")

    def test_idle_sees_smtp_delivery_within_two_seconds(self):
        self.deliver(SAMPLES[0])
        b = self.talk()
        b.ok("SELECT INBOX")
        tag = self.idle(b)
        time.sleep(1.2)   # the session is well into its IDLE
        for n in (2, 3):
            self.deliver(SAMPLES[1])   # timed from the 250 on
            _, took = self.wait_for(b, rb"^\* %d EXISTS" % n, 5)
            self.assertLessEqual(took, IDLE_WITHIN, f"EXISTS {took:.2f}s after the delivery")
        self.done(b, tag)

    def test_idle_sees_flags_and_expunges_of_another_session(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        a, b = self.two()
        tag = self.idle(b)
        a.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
        self.wait_for(b, rb"^\* 2 FETCH \(UID \d+ FLAGS \(\\Seen", IDLE_WITHIN + 0.5)
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.ok("EXPUNGE")
        self.wait_for(b, rb"^\* 1 EXPUNGE", IDLE_WITHIN + 0.5)
        self.done(b, tag)


class Pop3InterplayTest(ImapCase):
    def pop(self) -> poplib.POP3:
        p = poplib.POP3("127.0.0.1", self.server.pop3_port, timeout=30)
        p.user(USER)
        p.pass_(PASSWORD)
        return p

    def test_what_pop3_retrieves_and_deletes_disappears_from_imap(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        t = self.talk()
        t.ok("SELECT INBOX")
        uids = t.ok("UID SEARCH ALL")[0].split()[2:]
        p = self.pop()
        p.retr(1)
        p.dele(1)
        p.retr(2)   # read, not deleted: \Seen
        p.quit()
        untagged = t.ok("NOOP")
        self.assertIn(b"* 1 EXPUNGE\r\n", untagged)
        self.assertTrue(any(re.match(rb"\* \d FETCH \(UID %s FLAGS \(\\Seen" % uids[1], u) for u in untagged),
                        untagged)
        self.assertEqual(t.ok("UID SEARCH ALL")[0].split()[2:], uids[1:], "the other keeps its UID")
        m = self.session()
        self.assertEqual(ok(m.select("INBOX")), [b"1"])

    def test_what_imap_moves_to_trash_leaves_the_pop3_maildrop(self):
        self.deliver(SAMPLES[0], SAMPLES[1])
        m = self.session()
        ok(m.select("INBOX"))
        ok(m.uid("MOVE", ok(m.uid("SEARCH", "SUBJECT", "one"))[0].decode(), "Trash"))
        ok(m.copy("1", "Sent"))                      # a copy elsewhere is not in the maildrop either
        ok(m.append("Sent", None, None, SAMPLES[2]))
        ok(m.append("INBOX", None, None, SAMPLES[2]))  # but an APPEND to INBOX is
        p = self.pop()
        try:
            self.assertEqual(p.stat()[0], 2)
            got = [b"".join(line + b"\r\n" for line in p.retr(n)[1]) for n in (1, 2)]
        finally:
            p.quit()
        self.assertEqual(without_trace(got[0]), SAMPLES[1])
        self.assertEqual(got[1], SAMPLES[2], "what IMAP appended comes down over POP3 unchanged")


# --- SIGKILL in the middle of changes --------------------------------------------------------------

def message_for(n: int, filler: int = 0) -> bytes:
    return (b"From: crash@remote.test\r\nSubject: crash %d\r\nMessage-ID: <%d@crash.test>\r\n\r\n" % (n, n)
            + b"".join(b"%06d " % i + b"z" * 72 + b"\r\n" for i in range(filler)) + b"end %d\r\n" % n)


def number_of(body: bytes) -> int:
    return int(re.search(rb"Message-ID: <(\d+)@crash\.test>", body).group(1))


class CrashTest(unittest.TestCase):
    """Kill -9 while the server changes a folder; restart; look at what is there.

    COPY, MOVE and EXPUNGE are one command on many messages (their files put straight
    into the folder, as any Maildir program may).  The test watches the folders on disk
    and kills the server once the command is visibly part done, so the kill always lands
    in the middle of the work.  APPENDs are pipelined, 32 KB each, and the kill comes
    after some have been confirmed.  UIDs are checked against UIDNEXT as the index on
    disk had it at the moment of the kill: no UID handed out before, to anyone, may
    come back.
    """

    N = 1500
    filler = 0

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ServerProcess()
        cls.addClassCleanup(cls.server.cleanup)
        cls.server.start()

    def setUp(self) -> None:
        if self.server.proc is None:
            self.server.start()

    def talk(self) -> ImapTalk:
        t = ImapTalk(self.server.imap_port, timeout=30)
        self.addCleanup(t.close)
        t.login()
        return t

    def cur(self, folder: str) -> Path:
        return self.server.maildir() / f".{folder}" / "cur"

    def fill(self, t: ImapTalk, folder: str, flags: str = "") -> None:
        """Create ``folder`` and put N messages' files straight into its cur/."""
        t.ok(f"CREATE {folder}")
        start = int(time.time()) - 100_000
        for n in range(self.N):
            (self.cur(folder) / f"{start + n}.M{n}P1Q{n}.crash:2,{flags}").write_bytes(
                message_for(n).replace(b"\r\n", b"\n"))

    def select(self, t: ImapTalk, folder: str) -> tuple[int, int, dict[int, int]]:
        """(UIDVALIDITY, UIDNEXT, {UID: message number}); every message must be whole."""
        text = b"".join(t.ok(f"SELECT {folder}"))
        validity = int(re.search(rb"UIDVALIDITY (\d+)", text).group(1))
        uidnext = int(re.search(rb"UIDNEXT (\d+)", text).group(1))
        found: dict[int, int] = {}
        for r in t.ok("UID FETCH 1:* (UID BODY.PEEK[])"):
            uid = int(re.search(rb"UID (\d+)", r).group(1))
            body = r[r.index(b"}\r\n") + 3:r.rindex(b")")]
            n = number_of(body)
            self.assertEqual(body, message_for(n, self.filler), f"message {n} in {folder} is not whole")
            self.assertNotIn(n, found.values(), f"message {n} is in {folder} twice")
            found[uid] = n
        return validity, uidnext, found

    def disk_uidnext(self, folder: str) -> int:
        """UIDNEXT as the folder's index file says (ismail-uidlist's header, field N)."""
        head = (self.cur(folder).parent / "ismail-uidlist").read_bytes().split(b"\n", 1)[0]
        return int(re.search(rb" N(\d+)", head).group(1))

    def kill_when(self, t: ImapTalk, command: str, part_done) -> None:
        """Send ``command``, SIGKILL the server once ``part_done()`` is true, start it again."""
        t.send(b"k1 " + command.encode() + b"\r\n")
        deadline = time.monotonic() + 30
        while not part_done() and time.monotonic() < deadline:
            pass   # no sleep: the command takes some tens of milliseconds
        self.server.kill()
        t.close()
        self.assertTrue(part_done(), f"{command} never got under way")

    def count(self, folder: str) -> int:
        try:
            return len(os.listdir(self.cur(folder)))
        except FileNotFoundError:
            return 0

    def assert_no_uid_reused(self, folder: str, validity: int, used_below: int) -> None:
        """A new message gets UIDVALIDITY as before and a UID no one can have been given."""
        t = self.talk()
        answer = t.append(folder, message_for(999_999, self.filler))
        m = re.search(rb"APPENDUID (\d+) (\d+)", answer)
        self.assertIsNotNone(m, answer)
        self.assertEqual(int(m.group(1)), validity, "UIDVALIDITY is unchanged")
        self.assertGreaterEqual(int(m.group(2)), used_below, "a UID handed out before the crash came back")

    def test_sigkill_during_move(self):
        t = self.talk()
        self.fill(t, "MoveA")
        t.ok("CREATE MoveB")
        validity_a, _, before = self.select(t, "MoveA")
        validity_b, _, _ = self.select(t, "MoveB")
        t.ok("SELECT MoveA")
        self.kill_when(t, "UID MOVE 1:* MoveB", lambda: self.count("MoveB") >= self.N // 3)
        used_below = self.disk_uidnext("MoveB")
        self.server.start()
        t = self.talk()
        va, _, left = self.select(t, "MoveA")
        vb, _, moved = self.select(t, "MoveB")
        self.assertEqual((va, vb), (validity_a, validity_b))
        self.assertTrue(0 < len(moved) < self.N, f"the kill came mid-MOVE ({len(moved)} moved)")
        numbers = sorted([*left.values(), *moved.values()])
        self.assertEqual(numbers, sorted(before.values()), "every message is in exactly one folder")
        for uid, n in left.items():
            self.assertEqual(before[uid], n, "a message left behind keeps its UID")
        self.assert_no_uid_reused("MoveB", validity_b, used_below)
        # The rest can still be moved, and nothing is lost or doubled.
        t.ok("SELECT MoveA")
        t.ok("UID MOVE 1:* MoveB")
        self.assertEqual(sorted(self.select(t, "MoveB")[2].values()), [*range(self.N), 999_999])

    def test_sigkill_during_copy(self):
        t = self.talk()
        self.fill(t, "CopyA")
        t.ok("CREATE CopyB")
        validity_a, _, before = self.select(t, "CopyA")
        validity_b, _, _ = self.select(t, "CopyB")
        t.ok("SELECT CopyA")
        self.kill_when(t, "UID COPY 1:* CopyB", lambda: self.count("CopyB") >= self.N // 3)
        used_below = self.disk_uidnext("CopyB")
        self.server.start()
        t = self.talk()
        va, _, source = self.select(t, "CopyA")
        vb, _, copies = self.select(t, "CopyB")
        self.assertEqual((va, vb), (validity_a, validity_b))
        self.assertEqual(source, before, "COPY leaves the source as it was")
        self.assertTrue(0 < len(copies) < self.N, f"the kill came mid-COPY ({len(copies)} copied)")
        self.assertTrue(set(copies.values()) <= set(before.values()))
        self.assert_no_uid_reused("CopyB", validity_b, used_below)

    def test_sigkill_during_expunge(self):
        t = self.talk()
        self.fill(t, "Expunge", flags="T")
        validity, _, before = self.select(t, "Expunge")
        self.kill_when(t, "EXPUNGE", lambda: self.count("Expunge") <= self.N * 2 // 3)
        used_below = self.disk_uidnext("Expunge")
        self.server.start()
        t = self.talk()
        v, _, left = self.select(t, "Expunge")
        self.assertEqual(v, validity)
        self.assertTrue(0 < len(left) < self.N, f"the kill came mid-EXPUNGE ({len(left)} left)")
        for uid, n in left.items():
            self.assertEqual(before[uid], n, "a message not expunged keeps its UID")
        flags = b"".join(t.ok("FETCH 1:* FLAGS"))
        self.assertEqual(flags.count(b"\\Deleted"), len(left), "and its \\Deleted flag")
        t.ok("EXPUNGE")
        self.assertEqual(self.select(t, "Expunge")[2], {})
        self.assert_no_uid_reused("Expunge", validity, used_below)

    def test_sigkill_during_append(self):
        self.filler = 400   # 32 KB: each APPEND takes a while, and the kill meets one half done
        t = self.talk()
        t.ok("CREATE Appended")
        validity, _, _ = self.select(t, "Appended")
        count, kill_at = 120, 40
        given: dict[int, int] = {}   # message number -> the UID its APPENDUID gave

        def pipeline() -> None:
            try:
                for n in range(count):
                    data = message_for(n, self.filler)
                    t.send(b"a%d APPEND Appended {%d+}\r\n" % (n, len(data)) + data + b"\r\n")
            except OSError:
                pass   # the server is gone

        sender = threading.Thread(target=pipeline, daemon=True)
        sender.start()
        try:
            while len(given) < kill_at:
                m = re.match(rb"a(\d+) OK \[APPENDUID (\d+) (\d+)\]", t.response())
                if m:
                    self.assertEqual(int(m.group(2)), validity)
                    given[int(m.group(1))] = int(m.group(3))
            self.server.kill()
        finally:
            t.close()
            sender.join(10)
        used_below = self.disk_uidnext("Appended")
        self.server.start()
        t = self.talk()
        v, _, found = self.select(t, "Appended")
        self.assertEqual(v, validity)
        for n, uid in given.items():
            self.assertEqual(found.get(uid), n, f"message {n} was confirmed with UID {uid}")
        self.assertLess(len(found), count, "the kill came before the last APPEND")
        self.assert_no_uid_reused("Appended", validity, used_below)


if __name__ == "__main__":
    unittest.main()
