#!/usr/bin/env python3
"""IMAP benchmark: ISMail side by side with Dovecot (Debian's dovecot-imapd).

Run by hand, never in CI (see bench/README.txt).  Everything it makes lives in one
temporary folder under /tmp that is removed at the end: the generated Maildir content,
a private Dovecot (its own dovecot.conf, base_dir, state_dir and log; never /etc/dovecot,
never the system service) and an ISMail data folder.  Both servers listen on 127.0.0.1
only, on free ports; all traffic stays on the loopback.  The servers, the content
generator and the Maildir filling come from pop3_bench.py (same folder).

Both servers run at once and take turns round by round (the order alternating), so the
machine's drift in speed does not fall between them.
Scenarios (client-side wall clock, best and median of --rounds):
  fetch10k    SELECT INBOX + FETCH 1:* (UID FLAGS RFC822.SIZE) on 10,000 messages: the
              first SELECT of a fresh Maildir (both servers build their index then) and
              the FETCH after it, then a second session's SELECT and FETCH.  Connect
              + LOGIN of both: the 1st LOGIN of a round finds the whole mailbox new,
              and ISMail creates Sent, Drafts, Trash and Junk again (four folders and
              the subscriptions, synced: once per account in real use; Dovecot as
              set up here creates none); the 2nd is a login as mail programs make it.
  body1k      UID FETCH of 1,000 full messages of 10 KB (BODY.PEEK[]): one command for
              all, then one command per message pipelined (a window in flight).
  search10k   SEARCH HEADER on 10,000 messages: Message-ID (one hit) twice, then a
              Subject substring (many hits).
  parallel10  10 parallel sessions, each repeating connect, LOGIN, SELECT, FETCH 1:*
              (UID FLAGS RFC822.SIZE), LOGOUT on the same 10,000-message INBOX.
  mbsync1k    a real client, isync's mbsync (C): it pulls the body1k messages into an
              empty Maildir on /dev/shm (no fsync), one UID FETCH per message pipelined,
              as it downloads for its users.  Messages/s of the whole run, and the texts
              checked against the generated ones.  Needs Debian's isync.

--settle N pauses N seconds after a Maildir is filled (and between the fetch10k sessions):
ISMail re-lists a folder on every command for 2 s after its files last changed.
--serve starts the servers with one empty account and waits (to run ImapTest or a mail
client against them).  Standard library only.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pop3_bench as pb  # noqa: E402  (the servers, the content and its Maildir filling)
from pop3_bench import (DOMAIN, HOST, MB, PASSWORD, BenchError, Figure,  # noqa: E402
                        MessageSet, fill_maildir, fmt, generate, log, tail)

SOCKET_TIMEOUT = 120.0
START_TIMEOUT = 30.0
RETRY_LIMIT = 50
RETRY_PAUSE = 0.02
SCENARIOS = ("fetch10k", "body1k", "search10k", "parallel10", "mbsync1k")
BODY_SCENARIOS = {"body1k", "mbsync1k"}  # on the set of larger messages
MBSYNC = "/usr/bin/mbsync"
_TUID = re.compile(rb"^X-TUID: [^\n]*\n", re.M)
USER = "user"


def cpu_seconds() -> float:
    """This (client) process's CPU time, all threads (a fine clock, unlike os.times)."""
    return time.process_time()


# -- the client ---------------------------------------------------------------------------------

class ImapError(BenchError):
    pass


class Retry(Exception):
    """The server refused the connection for now (BYE greeting, reset, [LIMIT]/[UNAVAILABLE])."""


_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


class Client:
    """A lean IMAP client: one socket, one bytearray buffer; a response is found by its
    tag and read as a whole, untagged lines are looked at with regular expressions."""

    def __init__(self, port: int) -> None:
        try:
            self.sock = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT)
        except ConnectionError as e:
            raise Retry(str(e)) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.n = 0
        try:
            greeting = self._line()
        except (ConnectionError, ImapError) as e:
            self.close()
            raise Retry(f"greeting: {e}") from None
        if not greeting.startswith(b"* OK"):
            self.close()
            raise Retry(greeting.decode("latin-1"))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ImapError("the server closed the connection")
        self.buf += data

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos:end])
                self.pos = end + 2
                return line
            self._fill()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def tag(self) -> bytes:
        self.n += 1
        return b"A%05d" % self.n

    def command(self, text: bytes) -> bytes:
        """Send a command; its tag."""
        tag = self.tag()
        self.send(tag + b" " + text + b"\r\n")
        return tag

    def response(self, tag: bytes, what: str, ok: bool = True) -> tuple[int, int, bytes]:
        """Read up to the tagged line of ``tag``: (start, end) of the untagged part in
        self.buf (literals included) and the tagged line.  Not OK raises ImapError.
        The tagged line is found with one bytes.find; literals ("{n}" CRLF, then n
        octets) before it are skipped, so their content cannot be taken for it."""
        if self.pos > (1 << 22):
            del self.buf[:self.pos]
            self.pos = 0
        start = scan = self.pos
        tagsp = tag + b" "
        marker = b"\r\n" + tagsp
        hit = -1
        looked = start          # no tagged line in buf[:looked] (searched already)
        while True:
            if hit < scan:      # not seen yet, or what was seen lay inside a literal
                if scan == start and self.buf.startswith(tagsp, start):
                    hit = start
                else:
                    i = self.buf.find(marker, max(scan, looked - len(marker)))
                    hit = i + 2 if i >= 0 else -1
                    looked = i if i >= 0 else len(self.buf)
            m = _LITERAL.search(self.buf, scan, hit if hit >= 0 else len(self.buf))
            if m:
                after = m.end() + int(m.group(1))
                while len(self.buf) < after:
                    self._fill()
                scan = after
                continue
            if hit >= 0:
                end = self.buf.find(b"\r\n", hit)
                if end >= 0:
                    tagged = bytes(self.buf[hit:end])
                    self.pos = end + 2
                    break
            else:   # neither seen yet: what is left unsearched may be a cut-off marker
                scan = max(scan, len(self.buf) - 40)
            self._fill()
        if ok and tagged.split(b" ", 2)[1:2] != [b"OK"]:
            text = tagged.decode("latin-1")
            if "[LIMIT]" in text or "[UNAVAILABLE]" in text:
                raise Retry(text)
            raise ImapError(f"{what}: {text}")
        return start, hit, tagged

    def item(self) -> tuple[int, int, list[tuple[int, int]]]:
        """The next response line, literals included: (start, end before its CRLF,
        [(offset, length) of each literal]), offsets into self.buf."""
        if self.pos > (1 << 22):
            del self.buf[:self.pos]
            self.pos = 0
        start = scan = self.pos
        lits: list[tuple[int, int]] = []
        while True:
            end = self.buf.find(b"\r\n", scan)
            if end < 0:
                scan = max(scan, len(self.buf) - 1)
                self._fill()
                continue
            if end > start and self.buf[end - 1] == 0x7D:             # "}": a literal follows
                brace = self.buf.rfind(b"{", scan, end)
                m = _LITERAL.match(self.buf, brace) if brace >= 0 else None
                if m and m.end() == end + 2:
                    size = int(m.group(1))
                    while len(self.buf) < m.end() + size:
                        self._fill()
                    lits.append((m.end(), size))
                    scan = m.end() + size
                    continue
            self.pos = end + 2
            return start, end, lits

    def run(self, text: bytes, what: str) -> tuple[int, int, bytes]:
        return self.response(self.command(text), what)

    def login(self, user: str) -> None:
        self.run(b"LOGIN " + quote(user) + b" " + quote(PASSWORD), "LOGIN")

    def select(self, mailbox: bytes = b"INBOX") -> int:
        start, end, _ = self.run(b"SELECT " + mailbox, "SELECT")
        m = re.search(rb"\* (\d+) EXISTS\r\n", self.buf[start:end])
        if not m:
            raise ImapError("SELECT: no EXISTS")
        return int(m.group(1))

    def logout(self) -> None:
        try:
            self.run(b"LOGOUT", "LOGOUT")
        finally:
            self.close()


def quote(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def connect_login(port: int, user: str, retries: list[int] | None = None) -> Client:
    """Connect and log in; a refusal for now is retried (counted in ``retries``)."""
    for attempt in range(RETRY_LIMIT + 1):
        client = None
        try:
            client = Client(port)
            client.login(user)
            return client
        except Retry as e:
            if client:
                client.close()
            if retries is not None:
                retries.append(1)
            if attempt == RETRY_LIMIT:
                raise ImapError(f"{user}: still refused after {RETRY_LIMIT} retries: {e}") from None
            time.sleep(RETRY_PAUSE)
    raise AssertionError("unreachable")


_FETCH_LINE = re.compile(rb"\* \d+ FETCH \(")
_UID = re.compile(rb"[( ]UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_FLAGS = re.compile(rb"FLAGS \(")


def check_summary(client: Client, span: tuple[int, int], messages: MessageSet, what: str) -> list[int]:
    """The answer to FETCH 1:* (UID FLAGS RFC822.SIZE): one line per message, each with
    UID, FLAGS and RFC822.SIZE, UIDs ascending, the sizes those generated.  The UIDs."""
    block = client.buf[span[0]:span[1]]
    lines = len(_FETCH_LINE.findall(block))
    uids = [int(x) for x in _UID.findall(block)]
    sizes = [int(x) for x in _SIZE.findall(block)]
    flags = len(_FLAGS.findall(block))
    n = messages.count
    if not lines == len(uids) == len(sizes) == flags == n:
        raise ImapError(f"{what}: {lines} FETCH lines, {len(uids)} UIDs, {flags} FLAGS, "
                        f"{len(sizes)} sizes; expected {n} of each")
    if any(a >= b for a, b in zip(uids, uids[1:])):
        raise ImapError(f"{what}: UIDs not ascending")
    if sorted(sizes) != sorted(messages.sizes):
        raise ImapError(f"{what}: RFC822.SIZE total {sum(sizes)}, expected {messages.total}")
    return uids


def fetch_summary(client: Client, messages: MessageSet, what: str) -> list[int]:
    start, end, _ = client.run(b"FETCH 1:* (UID FLAGS RFC822.SIZE)", what)
    return check_summary(client, (start, end), messages, what)


def literals(buf: bytearray, start: int, end: int) -> list[tuple[int, int]]:
    """(offset, length) of each literal in buf[start:end]."""
    out = []
    pos = start
    while True:
        m = _LITERAL.search(buf, pos, end)
        if not m:
            return out
        n = int(m.group(1))
        out.append((m.end(), n))
        pos = m.end() + n


# -- servers ------------------------------------------------------------------------------------

def wait_imap(server, proc, what: str, logfile: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode}:\n" + tail(logfile))
        try:
            c = Client(server.imap_port)
            c.logout()
            return
        except (OSError, Retry, ImapError):
            time.sleep(0.1)
    raise BenchError(f"{what} did not answer on {HOST}:{server.imap_port} within "
                     f"{START_TIMEOUT:.0f} s:\n" + tail(logfile))


class Dovecot(pb.Dovecot):
    """pop3_bench's private Dovecot, with an IMAP namespace like ISMail's folders
    ("/" separator, Drafts/Junk/Sent/Trash special-use) and no per-user+IP limit."""

    def write_config(self) -> None:
        super().write_config()
        extra = """
mail_max_userip_connections = 1000
namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
}
"""
        with open(self.conf, "a") as f:
            f.write(extra)

    def _wait_ready(self, proc, what, logfile) -> None:
        wait_imap(self, proc, what, logfile)


class ISMail(pb.ISMail):
    """ISMail from this work tree, IMAP only (POP3 off)."""

    def __init__(self, root: Path, users: list[str], max_per_host: int) -> None:
        super().__init__(root, users)
        self.max_per_host = max_per_host

    def start(self) -> None:
        import json
        import subprocess
        self.root.mkdir(parents=True, exist_ok=True)
        settings = {
            "primary_domain": DOMAIN,
            "listen": [f"{HOST}:{self.smtp_port}"],
            "pop3": {"enabled": False},
            "imap": {"listen": [f"{HOST}:{self.imap_port}"], "allow_plaintext": True,
                     "max_per_host": self.max_per_host},
        }
        (self.root / "ismail.json").write_text(json.dumps(settings, indent=2))
        for user in self.users:
            self._cli("account", "add", f"{user}@{DOMAIN}", stdin=PASSWORD + "\n")
        err = open(self.logfile, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ismail", "--data-dir", str(self.root), "run"],
                                     cwd=pb.REPO, stdin=subprocess.DEVNULL, stdout=err,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        err.close()
        try:
            wait_imap(self, self.proc, "ismail run", self.logfile)
        except BaseException:
            self.stop()
            raise


# -- scenarios ----------------------------------------------------------------------------------

def session_fetch10k(port: int, user: str, messages: MessageSet) -> dict[str, float]:
    t0 = time.perf_counter()
    client = connect_login(port, user)
    t1 = time.perf_counter()
    exists = client.select()
    t2 = time.perf_counter()
    if exists != messages.count:
        client.close()
        raise ImapError(f"SELECT: {exists} EXISTS, expected {messages.count}")
    fetch_summary(client, messages, "FETCH 1:*")
    t3 = time.perf_counter()
    client.logout()
    t4 = time.perf_counter()
    return {"login": t1 - t0, "select": t2 - t1, "fetch": t3 - t2, "session": t4 - t0}


def run_fetch10k(server, messages: MessageSet, args) -> dict[str, float]:
    """Fresh Maildir: 1st session (its SELECT builds the index), then a 2nd session."""
    cpu0 = cpu_seconds()
    user = server.login_name(USER)
    first = session_fetch10k(server.imap_port, user, messages)
    cpu = cpu_seconds() - cpu0
    time.sleep(args.settle)
    cpu0 = cpu_seconds()
    second = session_fetch10k(server.imap_port, user, messages)
    cpu += cpu_seconds() - cpu0
    return {"login_s": first["login"], "login2_s": second["login"],
            "select1_s": first["select"], "fetch1_s": first["fetch"],
            "session1_s": first["session"], "select2_s": second["select"], "fetch2_s": second["fetch"],
            "session2_s": second["session"],
            "client_cpu": 100 * cpu / (first["session"] + second["session"])}


def warm_up(server, users: list[str]) -> None:
    """One untimed LOGIN + SELECT + LOGOUT per mailbox: the server has seen the Maildir
    before (both build their index on the first SELECT), as on a server in use."""
    for user in users:
        client = connect_login(server.imap_port, server.login_name(user))
        client.select()
        client.logout()


def crlf_digests(messages: MessageSet) -> set[bytes]:
    out = set()
    for name in messages.names:
        data = (messages.folder / name).read_bytes().replace(b"\n", b"\r\n")
        out.add(hashlib.blake2b(data, digest_size=16).digest())
    return out


def run_body1k(server, messages: MessageSet, args, digests: set[bytes]) -> dict[str, float]:
    window = args.window
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    client = connect_login(server.imap_port, server.login_name(USER))
    n = client.select()
    if n != messages.count:
        raise ImapError(f"SELECT: {n} EXISTS, expected {messages.count}")
    t1 = time.perf_counter()
    start, end, _ = client.run(b"UID FETCH 1:* (UID BODY.PEEK[])", "UID FETCH 1:* BODY.PEEK[]")
    t2 = time.perf_counter()
    lits = literals(client.buf, start, end)
    skeleton, pos = [], start           # the answer without the message texts
    for o, size in lits:
        skeleton.append(client.buf[pos:o])
        pos = o + size
    skeleton.append(client.buf[pos:end])
    uids = [int(x) for x in _UID.findall(b"".join(skeleton))]
    if len(uids) != n or len(lits) != n:
        raise ImapError(f"UID FETCH 1:*: {len(uids)} UIDs, {len(lits)} literals; expected {n}")
    got = {hashlib.blake2b(client.buf[o:o + size], digest_size=16).digest() for o, size in lits}
    if got != digests:
        raise ImapError(f"UID FETCH 1:*: {len(digests - got)} of the {n} messages not as "
                        f"generated (CRLF line ends)")
    octets = sum(size for _, size in lits)
    if sorted(size for _, size in lits) != sorted(messages.sizes):
        raise ImapError("UID FETCH 1:*: literal sizes are not the generated RFC822 sizes")
    del client.buf[:client.pos]
    client.pos = 0
    # One command per message, a window of them in flight (as mbsync / offlineimap do).
    # Untagged responses belong to no command (Dovecot runs pipelined FETCHes in parallel
    # and may interleave them): every FETCH line is checked, each UID once, tags counted.
    sent = answered = 0
    seen: set[int] = set()
    octets2 = 0
    t3 = time.perf_counter()
    while answered < n:
        if sent < n and sent - answered < window:
            upto = min(n, answered + window)
            client.send(b"".join(client.tag() + b" UID FETCH %d (BODY.PEEK[])\r\n" % uids[i]
                                 for i in range(sent, upto)))
            sent = upto
        start, end, lits = client.item()
        if client.buf.startswith(b"* ", start):
            if not lits:
                continue                      # FLAGS, EXISTS...: not about the bodies
            if len(lits) != 1:
                raise ImapError(f"pipelined UID FETCH: {len(lits)} literals in one FETCH line")
            o, size = lits[0]
            m = _UID.search(client.buf, start, o) or _UID.search(client.buf, o + size, end)
            if not m:
                raise ImapError("pipelined UID FETCH: a FETCH line without UID")
            uid = int(m.group(1))
            if uid in seen:
                raise ImapError(f"pipelined UID FETCH: UID {uid} twice")
            seen.add(uid)
            if hashlib.blake2b(client.buf[o:o + size], digest_size=16).digest() not in digests:
                raise ImapError(f"UID FETCH {uid}: the message is not as generated")
            octets2 += size
        else:
            line = bytes(client.buf[start:end])
            if line.split(b" ", 2)[1:2] != [b"OK"]:
                raise ImapError(f"pipelined UID FETCH: {line.decode('latin-1')}")
            answered += 1
    if len(seen) != n:
        raise ImapError(f"pipelined UID FETCH: {len(seen)} messages, expected {n}")
    t4 = time.perf_counter()
    client.logout()
    t5 = time.perf_counter()
    if octets2 != octets:
        raise ImapError(f"pipelined UID FETCH: {octets2} octets, the single command {octets}")
    return {"one_msgs": n / (t2 - t1), "one_mbs": octets / MB / (t2 - t1), "one_s": t2 - t1,
            "pipe_msgs": n / (t4 - t3), "pipe_mbs": octets / MB / (t4 - t3), "pipe_s": t4 - t3,
            "client_cpu": 100 * (cpu_seconds() - cpu0) / (t5 - t0)}


def search_targets(messages: MessageSet, args) -> tuple[bytes, bytes, int]:
    """(a Message-ID, a Subject substring, how many Subjects hold that substring)."""
    pick = messages.names[(messages.count * 2) // 3]
    head = (messages.folder / pick).read_bytes().split(b"\n\n", 1)[0]
    m = re.search(rb"^Message-ID: (.*)$", head, re.M | re.I)
    if not m:
        raise BenchError("generated message without Message-ID")
    needle = f"number {args.subject_prefix}"
    hits = 0
    for name in messages.names:
        with open(messages.folder / name, "rb") as f:
            for raw in f:
                if raw.lower().startswith(b"subject:"):
                    hits += needle.encode().lower() in raw.lower()
                    break
                if raw == b"\n":
                    break
    return m.group(1).strip(), needle.encode(), hits


def search_hits(client: Client, span: tuple[int, int], what: str) -> list[int]:
    m = re.search(rb"\* SEARCH([ 0-9]*)\r\n", client.buf[span[0]:span[1]])
    if not m:
        raise ImapError(f"{what}: no SEARCH answer")
    return [int(x) for x in m.group(1).split()]


def run_search10k(server, messages: MessageSet, args, targets: tuple[bytes, bytes, int]) -> dict[str, float]:
    msgid, needle, expected = targets
    client = connect_login(server.imap_port, server.login_name(USER))
    n = client.select()
    if n != messages.count:
        raise ImapError(f"SELECT: {n} EXISTS, expected {messages.count}")
    out: dict[str, float] = {}
    cpu0 = cpu_seconds()
    t_all = time.perf_counter()
    for key in ("msgid1_s", "msgid2_s"):
        t = time.perf_counter()
        span = client.run(b"SEARCH HEADER Message-ID " + b'"' + msgid + b'"', "SEARCH HEADER Message-ID")
        out[key] = time.perf_counter() - t
        found = search_hits(client, span[:2], "SEARCH HEADER Message-ID")
        if len(found) != 1:
            raise ImapError(f"SEARCH HEADER Message-ID: {len(found)} hits, expected 1")
    t = time.perf_counter()
    span = client.run(b'SEARCH HEADER Subject "' + needle + b'"', "SEARCH HEADER Subject")
    out["subject_s"] = time.perf_counter() - t
    hits = search_hits(client, span[:2], "SEARCH HEADER Subject")
    if len(hits) != expected:
        raise ImapError(f"SEARCH HEADER Subject: {len(hits)} hits, expected {expected}")
    out["client_cpu"] = 100 * (cpu_seconds() - cpu0) / (time.perf_counter() - t_all)
    # Untimed: the message found by its Message-ID has that Message-ID.
    start, end, _ = client.run(b"FETCH %d (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])" % found[0],
                               "FETCH Message-ID")
    if msgid not in bytes(client.buf[start:end]):
        raise ImapError(f"SEARCH HEADER Message-ID found message {found[0]}, without that Message-ID")
    client.logout()
    return out


def run_parallel(server, messages: MessageSet, args) -> dict[str, float]:
    port = server.imap_port
    user = server.login_name(USER)
    threads_n = args.parallel
    barrier = threading.Barrier(threads_n + 1, timeout=60)
    deadline = time.monotonic() + args.max_seconds
    latencies: list[float] = []
    fetches: list[float] = []
    retries: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    slots = iter(range(threads_n * args.parallel_repeat))   # --pace: the k-th session starts at k/pace s
    start: list[float] = []

    def worker(i: int) -> None:
        mine, mine_fetch = [], []
        try:
            barrier.wait()
            for _ in range(args.parallel_repeat):
                if time.monotonic() > deadline:
                    raise BenchError(f"parallel: over --max-seconds {args.max_seconds}")
                t = time.perf_counter()
                if args.pace:
                    with lock:
                        due = start[0] + next(slots) / args.pace
                    if due > t:
                        time.sleep(due - t)
                    t = due   # a session that starts late (the server lagging) counts its wait
                client = connect_login(port, user, retries)
                try:
                    exists = client.select()
                    if exists != messages.count:
                        raise ImapError(f"SELECT: {exists} EXISTS, expected {messages.count}")
                    tf = time.perf_counter()
                    fetch_summary(client, messages, "FETCH 1:*")
                    mine_fetch.append(time.perf_counter() - tf)
                    client.run(b"LOGOUT", "LOGOUT")
                finally:
                    client.close()
                mine.append(time.perf_counter() - t)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            with lock:
                errors.append(f"session {i}: {type(e).__name__}: {e}")
            try:
                barrier.abort()
            except Exception:
                pass
        with lock:
            latencies.extend(mine)
            fetches.extend(mine_fetch)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    for t in threads:
        t.start()
    start.append(time.perf_counter())
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    for t in threads:
        t.join(args.max_seconds + 2 * SOCKET_TIMEOUT)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    if errors:
        raise BenchError("parallel: " + "; ".join(errors[:3]))
    if any(t.is_alive() for t in threads):
        raise BenchError("parallel: a session did not finish in time")
    n = len(latencies)
    return {"sessions": n / elapsed, "msgs": n * messages.count / elapsed,
            "latency_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * sorted(latencies)[max(0, int(0.95 * n) - 1)],
            "fetch_ms": 1000 * statistics.median(fetches),
            "retries": float(len(retries)), "client_cpu": 100 * cpu / elapsed}


def run_mbsync(server, messages: MessageSet, args, digests: set[bytes]) -> dict[str, float]:
    """mbsync pulls INBOX into an empty Maildir; the time of the whole run (login to
    logout, the client's own file writes included: a real download)."""
    import subprocess
    if not os.path.exists(MBSYNC):
        raise BenchError(f"mbsync1k needs {MBSYNC} (Debian's isync)")
    base = Path(tempfile.mkdtemp(prefix="mbsync-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        local = base / "mail"
        local.mkdir()
        rc = base / "mbsyncrc"
        rc.write_text(
            f"FSync no\n\n"
            f"IMAPAccount bench\nHost {HOST}\nPort {server.imap_port}\nUser {server.login_name(USER)}\n"
            f"Pass {PASSWORD}\nSSLType None\nAuthMechs LOGIN\nPipelineDepth {args.window}\n\n"
            f"IMAPStore far\nAccount bench\n\n"
            f"MaildirStore near\nPath {local}/\nInbox {local}/INBOX\n\n"
            f"Channel pull\nFar :far:\nNear :near:\nPatterns INBOX\nCreate Near\nSync Pull\n"
            f"SyncState *\n")
        import resource
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([MBSYNC, "-c", str(rc), "-q", "pull"], capture_output=True,
                              timeout=args.max_seconds)
        elapsed = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise BenchError(f"mbsync exited with {done.returncode}: "
                             f"{done.stderr.decode('utf-8', 'replace')[-400:]}")
        files = [p for sub in ("new", "cur") for p in (local / "INBOX" / sub).iterdir()]
        if len(files) != messages.count:
            raise BenchError(f"mbsync: {len(files)} messages in the Maildir, expected {messages.count}")
        # mbsync stores a message as the server sent it, with the line ends made LF and
        # its own X-TUID header line added at the end of the header.
        got = {hashlib.blake2b(_TUID.sub(b"", p.read_bytes(), count=1).replace(b"\n", b"\r\n"),
                               digest_size=16).digest()
               for p in files}
        if got != digests:
            raise BenchError(f"mbsync: {len(digests - got)} of the {messages.count} messages "
                             f"not as generated")
        client_cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        return {"msgs": messages.count / elapsed, "seconds": elapsed,
                "client_cpu": 100 * client_cpu / elapsed}
    finally:
        shutil.rmtree(base, ignore_errors=True)


FIGURES = {
    "fetch10k": [("select1_s", "1st SELECT (fresh Maildir: index built)", "s", False),
                 ("fetch1_s", "FETCH 1:* after the 1st SELECT", "s", False),
                 ("session1_s", "1st session, connect to LOGOUT", "s", False),
                 ("select2_s", "2nd SELECT (new session)", "s", False),
                 ("fetch2_s", "FETCH 1:* after the 2nd SELECT", "s", False),
                 ("session2_s", "2nd session, connect to LOGOUT", "s", False),
                 ("login_s", "connect + LOGIN, 1st session", "s", False),
                 ("login2_s", "connect + LOGIN, 2nd session", "s", False),
                 ("client_cpu", "client CPU, % of one core", "%", False)],
    "body1k": [("one_msgs", "one UID FETCH 1:*: messages/s", "msg/s", True),
               ("one_mbs", "one UID FETCH 1:*: MB/s", "MB/s", True),
               ("one_s", "one UID FETCH 1:*: time", "s", False),
               ("pipe_msgs", "UID FETCH per message: messages/s", "msg/s", True),
               ("pipe_mbs", "UID FETCH per message: MB/s", "MB/s", True),
               ("pipe_s", "UID FETCH per message: time", "s", False),
               ("client_cpu", "client CPU, % of one core", "%", False)],
    "search10k": [("msgid1_s", "SEARCH HEADER Message-ID, 1st", "s", False),
                  ("msgid2_s", "SEARCH HEADER Message-ID, again", "s", False),
                  ("subject_s", "SEARCH HEADER Subject (substring)", "s", False),
                  ("client_cpu", "client CPU, % of one core", "%", False)],
    "parallel10": [("sessions", "sessions/s (all together)", "1/s", True),
                   ("msgs", "messages listed/s (all together)", "msg/s", True),
                   ("latency_ms", "one session, median", "ms", False),
                   ("p95_ms", "one session, p95", "ms", False),
                   ("fetch_ms", "its FETCH 1:*, median", "ms", False),
                   ("retries", "refused-then-retried connections", "", False),
                   ("client_cpu", "client CPU, % of one core", "%", False)],
    "mbsync1k": [("msgs", "mbsync's download: messages/s", "msg/s", True),
                 ("seconds", "mbsync's whole run: time", "s", False),
                 ("client_cpu", "mbsync's CPU, % of one core", "%", False)],
}


def describe(scenario: str, args) -> str:
    if scenario == "fetch10k":
        return (f"fetch10k: SELECT INBOX + FETCH 1:* (UID FLAGS RFC822.SIZE), {args.count} messages "
                f"of {args.size} B; fresh Maildir, then 2 sessions")
    if scenario == "body1k":
        return (f"body1k: UID FETCH BODY.PEEK[] of {args.body_count} messages of {args.body_size} B: "
                f"one command, then one per message (window {args.window})")
    if scenario == "search10k":
        return (f"search10k: SEARCH HEADER on {args.count} messages of {args.size} B "
                f"(Message-ID: 1 hit; Subject \"number {args.subject_prefix}\")")
    if scenario == "mbsync1k":
        return (f"mbsync1k: isync's mbsync pulls {args.body_count} messages of {args.body_size} B "
                f"into an empty Maildir (PipelineDepth {args.window})")
    if args.pace:
        return (f"parallel10: {args.parallel} client threads, {args.parallel * args.parallel_repeat} "
                f"sessions started at {args.pace:g}/s (paced), each connect, LOGIN, SELECT, FETCH 1:* "
                f"(UID FLAGS RFC822.SIZE), LOGOUT; one INBOX of {args.count} messages of {args.size} B")
    return (f"parallel10: {args.parallel} parallel sessions x {args.parallel_repeat} each of connect, "
            f"LOGIN, SELECT, FETCH 1:* (UID FLAGS RFC822.SIZE), LOGOUT; one INBOX of {args.count} "
            f"messages of {args.size} B")


def run_round(server, scenario: str, rnd: int, content: dict[str, MessageSet], extra: dict, args,
              figures: dict[str, Figure]) -> None:
    """Round ``rnd`` of ``scenario`` on ``server``: a fresh Maildir, the timed part, its
    figures added to ``figures``."""
    messages = content["body" if scenario in BODY_SCENARIOS else "k10"]
    fill_maildir(messages, server.mailbox(USER), server.owner(), tag=f"r{rnd}")
    if scenario == "fetch10k":
        result = run_fetch10k(server, messages, args)
        note = (f"1st SELECT {result['select1_s']:.3f} s, FETCH {result['fetch1_s']:.3f} s; "
                f"2nd SELECT {result['select2_s']:.3f} s, FETCH {result['fetch2_s']:.3f} s")
    else:
        if not args.no_warmup:
            warm_up(server, [USER])
        time.sleep(args.settle)
        if scenario == "body1k":
            result = run_body1k(server, messages, args, extra["digests"])
            note = (f"one command {result['one_mbs']:.1f} MB/s, "
                    f"per message {result['pipe_mbs']:.1f} MB/s")
        elif scenario == "mbsync1k":
            result = run_mbsync(server, messages, args, extra["digests"])
            note = f"{result['msgs']:.0f} messages/s in {result['seconds']:.3f} s"
        elif scenario == "search10k":
            result = run_search10k(server, messages, args, extra["targets"])
            note = (f"Message-ID {result['msgid1_s']:.3f} s then {result['msgid2_s']:.3f} s, "
                    f"Subject {result['subject_s']:.3f} s")
        else:
            result = run_parallel(server, messages, args)
            note = f"{result['sessions']:.1f} sessions/s, retries {result['retries']:.0f}"
    for key, figure in figures.items():
        figure.values.append(result[key])
    log(f"{server.name} {scenario} round {rnd}: {note}")


def run_scenario(servers: list, scenario: str, content: dict[str, MessageSet], extra: dict, args,
                 results: dict[str, dict[str, Figure]], failures: list[str]) -> None:
    """Every round of ``scenario``, the servers taking turns (pop3_bench.take_turns)."""
    pb.take_turns(servers, scenario, args, FIGURES[scenario],
                  lambda server, rnd, figures: run_round(server, scenario, rnd, content, extra, args, figures),
                  results, failures, lambda server: shutil.rmtree(server.mailbox(USER), ignore_errors=True))


# -- report -------------------------------------------------------------------------------------

def report(scenario: str, args, results: dict[str, dict[str, Figure]]) -> None:
    print()
    print(f"== {describe(scenario, args)} ==")
    rounds = max((len(next(iter(r.values())).values) for r in results.values() if r), default=0)
    print(f"   rounds: {rounds}; best, median")
    print(f"{'':46}" + "".join(f"{n:>16}" for n in ("Dovecot", "ISMail")) + f"{'ISMail/Dovecot':>16}  better")
    for key, label, unit, better in FIGURES[scenario]:
        for which in ("best", "median"):
            vals = {}
            cells = []
            for n in ("Dovecot", "ISMail"):
                fig = results.get(n, {}).get(key)
                v = (fig.best() if which == "best" else fig.median()) if fig and fig.values else None
                vals[n] = v
                cells.append(f"{fmt(v, unit):>16}")
            d, i = vals["Dovecot"], vals["ISMail"]
            ratio = f"{i / d:.2f}" if d and i is not None else "-"
            print(f"{label + ' (' + which + ')':46}" + "".join(cells) + f"{ratio:>16}  "
                  + ("higher" if better else "lower"))


def serve(servers, tmp: Path) -> int:
    """Start the servers with one empty account and wait for Ctrl-C / SIGTERM."""
    started = []
    for server in servers:
        server.start()
        started.append(server)
        fill_maildir(MessageSet("empty", tmp), server.mailbox(USER), server.owner())
        print(f"{server.name} ({server.version}): IMAP on {HOST}:{server.imap_port}, "
              f"user {server.login_name(USER)}, password {PASSWORD}", flush=True)
    print(f"(files in {tmp}; Ctrl-C to stop)", flush=True)
    try:
        while all(s.proc is not None and s.proc.poll() is None for s in started):
            time.sleep(1)
        log("a server exited")
        return 1
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="IMAP benchmark: ISMail and Dovecot side by side "
                                "(127.0.0.1 only; see bench/README.txt)")
    p.add_argument("--only", choices=("dovecot", "ismail"), help="run one server only")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default 3)")
    p.add_argument("--count", type=int, default=10_000, help="messages for fetch10k, search10k, parallel10")
    p.add_argument("--size", type=int, default=2048, help="their size on disk (default 2048)")
    p.add_argument("--body-count", type=int, default=1000)
    p.add_argument("--body-size", type=int, default=10 * 1024, help="octets on disk (default 10240)")
    p.add_argument("--window", type=int, default=32, help="body1k, mbsync1k: UID FETCH commands in flight (default 32)")
    p.add_argument("--subject-prefix", type=int, default=42,
                   help="search10k: SEARCH HEADER Subject \"number N\" (default 42: 111 hits in 10,000)")
    p.add_argument("--parallel", type=int, default=10, help="parallel10: sessions at once (default 10)")
    p.add_argument("--parallel-repeat", type=int, default=5, help="parallel10: sessions per client thread")
    p.add_argument("--pace", type=float, default=0.0, metavar="SESSIONS_PER_S",
                   help="parallel10: start sessions at this steady rate (0: each thread starts its "
                        "next session at once); equal load on both servers, for comparing latencies")
    p.add_argument("--max-per-host", type=int, default=10, help="ISMail's imap.max_per_host (default 10)")
    p.add_argument("--no-warmup", action="store_true",
                   help="body1k/search10k/parallel10/mbsync1k: no untimed SELECT before the timed one")
    p.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                   help="pause after filling/warming up a Maildir (and between the fetch10k "
                        "sessions) before the timed part (default 0; see bench/README.txt)")
    p.add_argument("--max-seconds", type=float, default=900,
                   help="stop starting new rounds/sessions of a scenario after this (default 900)")
    p.add_argument("--dovecot", default=pb.DOVECOT, help=f"Dovecot binary (default {pb.DOVECOT})")
    p.add_argument("--dovecot-scheme", default="PLAIN", metavar="SCHEME",
                   help="Dovecot's password scheme (default PLAIN; ARGON2ID or SHA512-CRYPT "
                        "give its logins a cost like ISMail's scrypt)")
    p.add_argument("--serve", action="store_true",
                   help="only start the servers with one empty account and wait (for ImapTest)")
    p.add_argument("--tmp", default="/tmp", help="where the temporary folder goes (default /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (to read logs)")
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    limits = {"rounds": (1, 100), "count": (1, 500_000), "size": (600, MB), "body_count": (1, 100_000),
              "body_size": (600, 50 * MB), "window": (1, 1000), "parallel": (1, 100),
              "parallel_repeat": (1, 10_000), "pace": (0, 10_000), "max_per_host": (1, 10), "subject_prefix": (1, 10**9),
              "settle": (0, 60)}
    for key, (lo, hi) in limits.items():
        if not lo <= getattr(args, key) <= hi:
            p.error(f"--{key.replace('_', '-')} must be {lo}..{hi}")

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    load_at_start = os.getloadavg()[0]
    if load_at_start > 0.5 and not args.serve:
        log(f"warning: load average {load_at_start:.2f}: something else is running; figures will be noisy")
    tmp = Path(tempfile.mkdtemp(prefix="ismail-imapbench-", dir=args.tmp))
    os.chmod(tmp, 0o755)   # Dovecot's mail processes run as nobody and must reach their Maildir
    log(f"working in {tmp}")
    servers: list = []
    results: dict[str, dict[str, dict[str, Figure]]] = {s: {} for s in scenarios}
    failures: list[str] = []
    try:
        if args.only != "ismail":
            servers.append(Dovecot(tmp / "dovecot", args.dovecot, [USER], args.dovecot_scheme))
        if args.only != "dovecot":
            servers.append(ISMail(tmp / "ismail", [USER], args.max_per_host))
        if args.serve:
            return serve(servers, tmp)
        owner = next((s.owner() for s in servers if s.owner()), None)
        content: dict[str, MessageSet] = {}
        extra: dict = {}
        if any(s not in BODY_SCENARIOS for s in scenarios):
            t = time.perf_counter()
            content["k10"] = generate("imap", tmp / "src" / "k10", args.count, args.size, owner)
            log(f"generated {args.count} messages of {args.size} B in {time.perf_counter() - t:.1f} s")
        if BODY_SCENARIOS.intersection(scenarios):
            content["body"] = generate("body", tmp / "src" / "body", args.body_count, args.body_size, owner)
            extra["digests"] = crlf_digests(content["body"])
            log(f"generated {args.body_count} messages of {args.body_size} B")
        if "search10k" in scenarios:
            extra["targets"] = search_targets(content["k10"], args)
            log(f"search10k: Message-ID {extra['targets'][0].decode()}, Subject "
                f"\"{extra['targets'][1].decode()}\" in {extra['targets'][2]} messages")
        with pb.started(servers, failures, lambda server: server.imap_port) as running:
            for s in scenarios:
                run_scenario(running, s, content, extra, args, results[s], failures)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"IMAP benchmark, client and servers on {HOST} sharing this machine's {os.cpu_count()} CPU(s)")
    print(f"  load average at start: {load_at_start:.2f}"
          + ("  (busy machine: figures are noisy)" if load_at_start > 0.5 else ""))
    for server in servers:
        extra_text = f", password scheme {server.scheme}" if isinstance(server, Dovecot) else ""
        print(f"  {server.name}: {server.version}{extra_text}")
    for s in scenarios:
        if results[s]:
            report(s, args, results[s])
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
