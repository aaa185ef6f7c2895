"""Fuzzed IMAP and POP3 sessions: thousands of commands, well-formed, wrong and mangled,
fed to the session state machines over a real Maildir (no sockets).

What a user relies on is checked, not the wording of each answer:
* no command makes the server fail inside ("internal error", a traceback in the log);
* nothing is written outside the account's folder, whatever the folder names say;
* IMAP: a fresh session at any moment sees every folder whole: as many messages as
  EXISTS says, UIDs rising and below UIDNEXT, each message's RFC822.SIZE the length of
  the BODY[] it sends;
* POP3: every RETR gives back the file's text (CRLF line ends, dot-stuffing undone),
  LIST's size is what RETR sends, and QUIT deletes exactly the messages marked with DELE.

The SMTP session has its own fuzz test (test_hostile.FuzzTest).  Seeds are fixed, so a
failure repeats; SEEDS=n in the environment runs n seeds more, by hand.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
import unittest
from pathlib import Path

from ismail.pop3.session import Pop3Session
from ismail.queue.spool import MessageBuffer
from ismail.store import maildir
from ismail.store.maildrop import Maildrops
from tests.test_imap_session import MSG, Client, FakeBackend as ImapBackend
from tests.test_pop3_session import PASSWORD, USER, FakeBackend as Pop3Backend, flatten

EXTRA_SEEDS = int(os.environ.get("SEEDS", "0"))

MULTIPART = (
    b"From: a@b.test\r\nTo: c@d.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=XX\r\n\r\npre\r\n--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: x@y\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n"
    b"--YY\r\n\r\na\r\n--YY\r\nContent-Type: text/html\r\n\r\n<b>b</b>\r\n--YY--\r\n"
    b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAEC/w==\r\n--XX--\r\nepilogue\r\n")
BROKEN = b"Subject: broken\r\nContent-Type: multipart/mixed; boundary=\"\r\n\r\n--\r\nx"
NO_HEADER = b"just a body\r\nwith no header\r\n"
MESSAGES = [MSG, MULTIPART, BROKEN, NO_HEADER, b""]
FOREIGN = [MULTIPART, MSG.replace(b"\r\n", b"\n"), b"Subject: mixed\r\n\nbare\rcr\r\nlf\n", b"no end\r"]


class ErrorLog(logging.Handler):
    """Every ERROR (or worse) record of the server's loggers, with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def mangle(rng: random.Random, data: bytes) -> bytes:
    """One to three edits: a byte dropped, added or changed, a piece repeated or cut out,
    or a token that matters to the parser put in."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not b:
            break
        i = rng.randrange(len(b))
        op = rng.randrange(6)
        if op == 0:
            del b[i]
        elif op == 1:
            b.insert(i, rng.choice(b'()[]<>{}"\\ *%:,.0123456789\r\n\x00\xff+~'))
        elif op == 2:
            b[i:i] = rng.choice([b"{5}\r\n", b"{0}\r\n", b"NIL", b"(", b")", b'"', b"4294967296", b"*"])
        elif op == 3:
            b[i:i] = b[i:rng.randrange(i, len(b))]
        elif op == 4:
            b[i] = rng.randrange(256)
        else:
            del b[i:rng.randrange(i, len(b)) + 1]
    return bytes(b)


class FuzzCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-fuzz-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.errors = ErrorLog()
        logger = logging.getLogger("ismail")
        logger.addHandler(self.errors)
        self.addCleanup(logger.removeHandler, self.errors)

    def assertNoErrors(self, what: str) -> None:
        self.assertEqual(self.errors.records, [], f"the server failed inside on {what}")

    def assertNothingOutside(self, top: Path, root: Path) -> None:
        """Nothing in ``top`` (made for one run) but ``root`` and what is in it."""
        outside = [p for p in top.rglob("*") if not (p == root or root in p.parents or p in root.parents)]
        self.assertEqual(outside, [], "written outside the account's folder")


# --- IMAP -------------------------------------------------------------------------------------

SEQUENCES = ["1", "*", "1:*", "1:*", "2", "*:3", "1,3,5", "4:*", "0", "4294967295", "4294967296",
             "2,3:5", "5:1", "$", "-1", "1:", ":1", "1,,2", "*:*", "99", "1:99999999999999"]
NAMES = ["INBOX", "Sent", "Trash", "Junk", "a", "a/b", "a/b/c", '""', "../x", "a/../../b", "..", ".",
         "&", "&-", "&AGE", "&Jjo-", "x" * 300, "a.b", "INBOX/sub", "inbox", "/x", "x/", "a//b", "*",
         "%", '"a b"', "{3}\r\nabc", "{3+}\r\nabc", "NIL", "a\\b", "CON", "nul", "a:b", "x?y",
         '"caf\\u00e9"', "{5}\r\ncaf\u00e9", "caf\u00e9", "Entw&APw-rfe", "a%2Eb"]
SECTIONS = ["", "HEADER", "TEXT", "1", "2", "3", "1.2", "2.MIME", "0", "1.0", "2.1", "2.1.1", "2.1.2",
            "2.HEADER", "2.TEXT", "HEADER.FIELDS (From To)", "HEADER.FIELDS.NOT (Subject)",
            "HEADER.FIELDS ()", "99", "1.HEADER", "4294967296", "MIME", "1.MIME", "3.MIME",
            '2.1.MIME', 'HEADER.FIELDS ("From" {4}\r\nDate)', "1.2.3.4.5.6.7.8.9.10", "-1"]
PARTIALS = [""] * 12 + ["<0.5>", "<5.0>", "<99999999999.1>", "<0.4294967295>", "<3.2>",
                        "<100000.10>", "<1.>", "<-1.2>", "<0>", "<4294967296.1>"]
ITEMS = ["FLAGS", "UID", "INTERNALDATE", "RFC822", "RFC822.SIZE", "RFC822.HEADER", "RFC822.TEXT",
         "ENVELOPE", "BODY", "BODYSTRUCTURE", "ALL", "FAST", "FULL", "MODSEQ", "X-GM-MSGID", "PREVIEW"]
FLAGS = ["\\Seen", "\\Deleted", "\\Flagged", "\\Answered", "\\Draft", "\\Recent", "$Junk", "\\*",
         "foo", "\\Frob", "NonJunk", "(", ")", "\\", "a]b", "x" * 200]
DATES = ["1-Feb-1994", "31-Feb-2024", "99-Xyz-0", "01-Jan-2024", "1-jan-2024", '"1-Jan-2024"',
         "0-Jan-0000", "29-Feb-2023", "1-Jan-99999"]
SIMPLE_KEYS = ["ALL", "ANSWERED", "DELETED", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN", "UNSEEN",
               "DRAFT", "UNDRAFT", "UNANSWERED"]
REFERENCES = ['""', "a", "INBOX", "%"]
PATTERNS = ["*", "%", "a/%", "*/*", '""', "INBOX*", "&", "(x)"]
IDS = ["NIL", '("name" "x")', '("a")', "()"]
OTHER = ["NOOP", "FETCH 1:* (FLAGS)", "UID FETCH 1:* (UID)", "IDLE", "DONE",
         "STORE 1:* +FLAGS (\\Deleted)", "EXPUNGE", "SELECT INBOX", "CHECK", "CLOSE"]


class ImapCommands:
    """Commands built from IMAP's grammar, with wrong values mixed in."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def fetch_item(self) -> str:
        rng = self.rng
        if rng.random() < 0.4:
            return rng.choice(ITEMS)
        kind = rng.choice(["BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"])
        return f"{kind}[{rng.choice(SECTIONS)}]{rng.choice(PARTIALS)}"

    def fetch_items(self) -> str:
        items = [self.fetch_item() for _ in range(self.rng.randint(0, 5))]
        return items[0] if len(items) == 1 and self.rng.random() < 0.5 else "(" + " ".join(items) + ")"

    def search_key(self, depth: int = 0) -> str:
        rng, r = self.rng, self.rng.random()
        if r < 0.3:
            return rng.choice(SIMPLE_KEYS)
        if r < 0.35:
            return rng.choice(SEQUENCES)
        if r < 0.4:
            return "UID " + rng.choice(SEQUENCES)
        if r < 0.5:
            return rng.choice(["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"]) + " " + rng.choice(DATES)
        if r < 0.6:
            return rng.choice(["LARGER", "SMALLER"]) + " " + rng.choice(["0", "1", "4294967296", "-1", "x"])
        if r < 0.7:
            return (rng.choice(["FROM", "TO", "CC", "BCC", "SUBJECT", "BODY", "TEXT"]) + " "
                    + rng.choice(["a", '""', "{3}\r\nabc", '"x y"', "NIL", "\\", "inner", "hello"]))
        if r < 0.75:
            return "HEADER " + rng.choice(["From", "X-None", '""', "Subject"]) + " " + rng.choice(["a", '""', "inner"])
        if r < 0.8:
            return rng.choice(["KEYWORD", "UNKEYWORD"]) + " " + rng.choice(FLAGS)
        if depth > 30:
            return "ALL"
        if r < 0.87:
            return "NOT " + self.search_key(depth + 1)
        if r < 0.94:
            return "OR " + self.search_key(depth + 1) + " " + self.search_key(depth + 1)
        return "(" + " ".join(self.search_key(depth + 1) for _ in range(self.rng.randint(0, 3))) + ")"

    def flag_list(self) -> str:
        return "(" + " ".join(self.rng.choice(FLAGS) for _ in range(self.rng.randint(0, 3))) + ")"

    def command(self, tag: str) -> bytes:
        rng = self.rng
        uid = "UID " if rng.random() < 0.4 else ""
        seq = rng.choice(SEQUENCES)
        n = rng.randrange(28)
        if n < 6:
            line = f"{tag} {uid}FETCH {seq} {self.fetch_items()}" + (" (CHANGEDSINCE 1)" if rng.random() < 0.05 else "")
        elif n < 9:
            how = rng.choice(["FLAGS", "+FLAGS", "-FLAGS", "FLAGS.SILENT", "+FLAGS.SILENT", "-FLAGS.SILENT", "X"])
            line = f"{tag} {uid}STORE {seq} {how} {self.flag_list()}"
        elif n < 12:
            charset = rng.choice(["CHARSET UTF-8 ", "CHARSET foo ", "RETURN (MIN MAX COUNT) ", "", ""])
            line = f"{tag} {uid}SEARCH {charset}" + " ".join(self.search_key() for _ in range(rng.randint(0, 4)))
        elif n < 14:
            line = f"{tag} {uid}{rng.choice(['COPY', 'MOVE'])} {seq} {rng.choice(NAMES)}"
        elif n == 14:
            line = f"{tag} {rng.choice(['CREATE', 'DELETE', 'SUBSCRIBE', 'UNSUBSCRIBE'])} {rng.choice(NAMES)}"
        elif n == 15:
            line = f"{tag} RENAME {rng.choice(NAMES)} {rng.choice(NAMES)}"
        elif n == 16:
            line = (f"{tag} {rng.choice(['LIST', 'LSUB'])} {rng.choice(REFERENCES)} {rng.choice(PATTERNS)}"
                    + rng.choice(["", " RETURN (SPECIAL-USE)", " RETURN (STATUS (MESSAGES UNSEEN))"]))
        elif n == 17:
            items = " ".join(rng.choice(["MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "FOO"])
                             for _ in range(rng.randint(0, 4)))
            line = f"{tag} STATUS {rng.choice(NAMES)} ({items})"
        elif n == 18:
            body = rng.choice(MESSAGES + [b"x" * rng.randint(0, 300), b"a\rb\r\r\nc\n"])
            date = rng.choice(["", ' "01-Jan-2024 10:00:00 +0000"', ' "31-Feb-2024 10:00:00 +0000"', ' "x"'])
            literal = rng.choice(["{%d}", "{%d+}", "~{%d}"]) % len(body)
            flags = self.flag_list() if rng.random() < 0.5 else ""
            return f"{tag} APPEND {rng.choice(NAMES)} {flags}{date} {literal}\r\n".encode() + body
        elif n == 19:
            line = f"{tag} {rng.choice(['EXPUNGE', 'CLOSE', 'UNSELECT', 'CHECK', 'NOOP', 'NAMESPACE', 'CAPABILITY'])}"
        elif n == 20:
            line = f"{tag} UID EXPUNGE {seq}"
        elif n == 21:
            line = f"{tag} {rng.choice(['SELECT', 'EXAMINE'])} {rng.choice(NAMES)}" + rng.choice(["", " (CONDSTORE)", " ()"])
        elif n == 22:
            line = f"{tag} ENABLE {rng.choice(['CONDSTORE', 'UTF8=ACCEPT', 'QRESYNC', 'X'])}"
        elif n == 23:
            line = f"{tag} ID {rng.choice(IDS)}"
        elif n == 24:
            line = f"{tag} {rng.choice(['GETQUOTAROOT', 'GETQUOTA', 'SETQUOTA'])} {rng.choice(NAMES)}"
        elif n == 25:
            line = f"{tag} IDLE\r\n" + rng.choice(["DONE", "done", "x", ""])
        elif n == 26:
            line = f"{tag} SELECT INBOX"
        else:
            line = f"{tag} {rng.choice(['STARTTLS', 'AUTHENTICATE PLAIN', 'LOGIN a b', 'LOGOUT', 'COMPRESS DEFLATE'])}"
        return line.encode("utf-8")


class ImapFuzzTest(FuzzCase):
    COMMANDS = 4000

    def deliver(self, data: bytes) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        buf = MessageBuffer(self.root / "tmp")
        buf.write(data)
        try:
            maildir.deliver([self.root], b"", buf)
        finally:
            buf.close()

    def check_folders(self, backend: ImapBackend, after: str) -> None:
        viewer = Client(backend)
        viewer.login()
        try:
            listing = viewer.say('v1 LIST "" *')
            names = re.findall(r'\* LIST \(([^)]*)\) "/" (.+)\r\n', listing)
            self.assertIn('"INBOX"', [n for _, n in names], listing)
            for attributes, name in names:
                if "\\Noselect" in attributes:
                    continue
                opened = viewer.say(f"v2 EXAMINE {name}")
                self.assertIn("v2 OK", opened, f"{name} after {after}")
                exists = int(re.search(r"\* (\d+) EXISTS", opened).group(1))
                uidnext = int(re.search(r"UIDNEXT (\d+)", opened).group(1))
                fetched = viewer.send(b"v3 FETCH 1:* (UID RFC822.SIZE BODY.PEEK[])\r\n") if exists else ""
                uids = [int(u) for u in re.findall(r"\* \d+ FETCH \(UID (\d+)", fetched)]
                self.assertEqual(len(uids), exists, f"{name}: EXISTS against FETCH 1:*, after {after}")
                self.assertEqual(uids, sorted(set(uids)), f"{name}: UIDs rise, after {after}")
                self.assertTrue(not uids or uids[-1] < uidnext, f"{name}: UIDNEXT {uidnext} > {uids[-1:]}")
                sizes = [int(x) for x in re.findall(r"RFC822\.SIZE (\d+)", fetched)]
                sent = [int(x or 0) for x in re.findall(r'BODY\[\] (?:\{(\d+)\}|"")', fetched)]
                self.assertEqual(sizes, sent, f"{name}: RFC822.SIZE against BODY[], after {after}")
        finally:
            viewer.s.close()

    def run_seed(self, seed: int) -> None:
        rng = random.Random(seed)
        self.root = self.dir / f"seed{seed}" / "example.test" / "user"
        backend = ImapBackend(self.root)
        if seed % 2 == 0:   # with a quota (cmd_quota wraps APPEND, COPY and MOVE): 12 KB
            backend.quota = lambda address: (sum(p.stat().st_size for p in self.root.rglob("*")
                                                 if p.parent.name in ("cur", "new")), 12_000)
            backend.quota_changed = lambda address, added=0: None
        for data in MESSAGES:
            self.deliver(data)
        commands = ImapCommands(rng)
        sessions: list[Client] = []
        current = None
        try:
            for i in range(self.COMMANDS):
                if i % 500 == 499:
                    self.check_folders(backend, f"command {i} of seed {seed}")
                if i % 50 == 0 and rng.random() < 0.5:   # mail keeps coming
                    for _ in range(rng.randint(1, 4)):
                        self.deliver(rng.choice(MESSAGES))
                    if rng.random() < 0.3:   # a file another program put there, maybe CRLF
                        name = f"{1700000000 + i}.M{i}P1.other" + rng.choice(["", ",S=5", ":2,S"])
                        (self.root / "new" / name).write_bytes(rng.choice(FOREIGN))
                if current is None or current.s.closing or rng.random() < 0.002:
                    current = Client(backend)
                    current.login()
                    if rng.random() < 0.3:
                        current.say("e ENABLE CONDSTORE")
                    if rng.random() < 0.7:
                        current.say("s SELECT INBOX")
                    sessions.append(current)
                    if len(sessions) > 3:
                        sessions.pop(0).s.close()
                other = rng.choice(sessions)
                if other is not current and not other.s.closing and rng.random() < 0.2:
                    other.send(f"o{i} {rng.choice(OTHER)}\r\n".encode())   # a second client, same folders
                data = commands.command(f"t{i}")
                if rng.random() < 0.15:
                    data = mangle(rng, data)
                current.send(data + b"\r\n")
                if self.errors.records:
                    self.fail(f"seed {seed}, command {i} {data[:300]!r} failed inside:\n"
                              + "\n".join(self.errors.records))
            self.check_folders(backend, f"the end of seed {seed}")
        finally:
            for c in sessions:
                c.s.close()
        self.assertNoErrors(f"seed {seed}")
        self.assertNothingOutside(self.dir / f"seed{seed}", self.root)

    def test_fuzzed_commands(self):
        for seed in [1, 2] + list(range(100, 100 + EXTRA_SEEDS)):
            with self.subTest(seed=seed):
                self.run_seed(seed)


# --- POP3 -------------------------------------------------------------------------------------

FILES = [b"Subject: a\n\n.dot\nbody\n", b"Subject: b\r\n\r\nline\r\n..\r\n.\r\n", b"", b"no end",
         b"\r\n", b".\r\n", b"x" * 5000 + b"\n" + b".y\n" * 300, b"Subject: c\n\n\n\n", b"\n.\n",
         b"a\rb\r\n", b"mixed\r\nends\n"]
NUMBERS = ["1", "2", "3", "0", "-1", "99", "4294967296", "1x", "", " 1", "1 2", "00001", "\u0661"]


def pop3_command(rng: random.Random) -> str:
    n = rng.choice(NUMBERS)
    k = rng.randrange(16)
    if k < 4:
        return f"RETR {n}"
    if k < 6:
        return f"TOP {n} {rng.choice(['0', '1', '5', '-1', 'x', '99999999999999', ''])}"
    if k < 8:
        return f"DELE {n}"
    if k == 8:
        return f"LIST {n}" if rng.random() < .5 else "LIST"
    if k == 9:
        return f"UIDL {n}" if rng.random() < .5 else "UIDL"
    if k == 10:
        return rng.choice(["STAT", "NOOP", "RSET", "CAPA", "LAST", "APOP a b", "STLS", "UTF8"])
    if k == 11:
        return rng.choice([f"USER {USER}", f"PASS {PASSWORD}", "USER", "PASS", "PASS x", "AUTH PLAIN",
                           "AUTH", "AUTH LOGIN", "AUTH FOO", "*"])
    if k == 12:
        return "QUIT"
    return rng.choice(["stat", "retr 1", "Retr 2", "", " ", "X" * 300, "RETR\t1", "LIST 1 2 3", "\x00", "\xff"])


def unique(name: str) -> str:
    return re.split("[,:!]", name, maxsplit=1)[0]


class Pop3FuzzTest(FuzzCase):
    SESSIONS = 600

    def run_seed(self, seed: int) -> None:
        rng = random.Random(seed)
        box = self.dir / f"seed{seed}" / "box"
        for sub in ("new", "cur", "tmp"):
            (box / sub).mkdir(parents=True)
        backend = Pop3Backend()
        backend.boxes[USER] = box
        backend.drops = Maildrops()
        made = 0

        def add() -> None:
            nonlocal made
            made += 1
            name = f"17{made:08d}.M{made}P1.host" + rng.choice(["", ",S=99", ":2,S", ":2,"])
            (box / rng.choice(["new", "cur"]) / name).write_bytes(rng.choice(FILES))

        for _ in range(5):
            add()
        for n in range(self.SESSIONS):
            if rng.random() < 0.3:
                add()
            texts = {unique(f): (box / sub / f).read_bytes() for sub in ("new", "cur")
                     for f in os.listdir(box / sub)}
            s = Pop3Session(backend, "mx.example.test", "192.0.2.1", True, True)
            try:
                s.greeting()
                self.assertEqual(flatten(s.feed(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())),
                                 b"+OK Send PASS\r\n+OK Logged in.\r\n")
                listing = flatten(s.feed(b"UIDL\r\n")).split(b"\r\n")[1:-2]
                uidl = {int(number): name.decode() for number, name in (line.split() for line in listing)}
                self.assertEqual(set(uidl.values()), set(texts), "the session sees every file")
                marked: set[int] = set()
                quit_said = False
                said: list[tuple[bytes, bytes]] = []   # for a failure's message
                commands = []
                for _ in range(rng.randint(1, 30)):
                    line = pop3_command(rng).encode("utf-8")
                    if rng.random() < 0.1 and line:
                        line = bytearray(line)
                        line[rng.randrange(len(line))] = rng.randrange(256)
                        line = bytes(line)
                    commands += line.split(b"\n")   # an LF ends a command, as the server reads
                for line in commands:
                    answer = flatten(s.feed(line + b"\r\n"))
                    said.append((line, answer[:60]))
                    self.assertNoErrors(f"seed {seed}, session {n}: {line!r}")
                    text = line.rstrip(b"\r")   # as the server reads "DELE 1\r\r\n": DELE 1
                    name, _, arg = text.partition(b" ")
                    name = name.upper() if b"\r" not in text else b""   # case-insensitive
                    if name == b"RETR" and answer.startswith(b"+OK"):
                        self.check_retr(uidl[int(arg)], texts, answer)
                    elif name == b"DELE" and answer.startswith(b"+OK"):
                        marked.add(int(arg))
                    elif name == b"RSET" and answer.startswith(b"+OK"):
                        marked.clear()
                    if name == b"QUIT" or s.closing:
                        quit_said = name == b"QUIT"
                        break
                if not s.closing and rng.random() < 0.7:
                    self.assertTrue(flatten(s.feed(b"QUIT\r\n")).startswith(b"+OK"))
                    quit_said = True
            finally:
                s.close()
            left = {unique(f) for sub in ("new", "cur") for f in os.listdir(box / sub)}
            gone = {uidl[k] for k in marked} if quit_said else set()
            self.assertEqual(left, set(texts) - gone, f"seed {seed}, session {n}: QUIT deletes the marked, "
                                                      f"only; the session: {said}")
        self.assertNothingOutside(self.dir / f"seed{seed}", box)

    def check_retr(self, name: str, texts: dict[str, bytes], answer: bytes) -> None:
        first, _, rest = answer.partition(b"\r\n")
        self.assertTrue(rest == b".\r\n" or rest.endswith(b"\r\n.\r\n"), rest[-20:])
        lines = rest[:-3].split(b"\r\n")
        got = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
        want = texts[name].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        on_wire = want + b"\r\n" if want and not want.endswith(b"\r\n") else want   # "." needs a line of its own
        self.assertEqual(got, on_wire, f"RETR of {name}")
        self.assertEqual(int(first.split()[1]), len(want), f"the size RETR announces for {name}")

    def test_fuzzed_sessions(self):
        for seed in [1, 2] + list(range(100, 100 + EXTRA_SEEDS)):
            with self.subTest(seed=seed):
                self.run_seed(seed)


if __name__ == "__main__":
    unittest.main()
