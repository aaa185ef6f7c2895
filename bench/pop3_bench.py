#!/usr/bin/env python3
"""POP3 benchmark: ISMail side by side with Dovecot (Debian's dovecot-pop3d).

Run by hand, never in CI (see bench/README.txt).  Everything it makes lives in one
temporary folder under /tmp that is removed at the end: the generated Maildir content,
a private Dovecot (its own dovecot.conf, base_dir, state_dir and log; never
/etc/dovecot, never the system service) and an ISMail data folder.  Both servers
listen on 127.0.0.1 only, on free ports; all traffic stays on the loopback.

Both servers run at once and take turns round by round (the order alternating), so the
machine's drift in speed does not fall between them.
Scenarios (client-side wall clock, best and median of --rounds):
  retr       one session: login, LIST, RETR 1..N pipelined (a window of commands in
             flight, as mpop does), QUIT.  Messages/s and MB/s of the RETR phase.
  list10     10 parallel sessions, each on its own account with the same maildrop,
             each repeating login, STAT, LIST, UIDL, QUIT K times.  Sessions/s.
  login100k  a 100,000-message maildrop: the time from PASS to its +OK, and of the STAT
             after it; first login on a fresh Maildir (Dovecot builds its index then)
             and second login, separately.
  mpop       a real client, mpop (C, Debian's mpop): it downloads the retr messages
             into an empty Maildir on /dev/shm, pipelining as it does for its users,
             keeping them on the server (QUIT marks them read).  Messages/s and time
             of the whole run; every text checked against the generated ones.

Each round starts from a fresh Maildir: the generated messages are hard-linked into
the server's mailbox folder (the servers rename files, never change them, so the
source stays intact).  Standard library only.
"""
from __future__ import annotations

import argparse
import contextlib
import email.utils
import grp
import os
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
DOVECOT = "/usr/sbin/dovecot"
DOMAIN = "bench.test"
PASSWORD = "bench-Pa55word"
HOST = "127.0.0.1"
SOCKET_TIMEOUT = 120.0     # one recv/send, seconds
START_TIMEOUT = 30.0       # a server must answer its greeting within this
STOP_TIMEOUT = 15.0
RETRY_LIMIT = 50           # a refused connection or [IN-USE] login is retried so often at most
RETRY_PAUSE = 0.02
MB = 1_000_000
SCENARIOS = ("retr", "list10", "login100k", "mpop")
MPOP = "/usr/bin/mpop"


class BenchError(Exception):
    pass


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- content ------------------------------------------------------------------------------------

WORDS = ("the of and to in is that for it as with was on be by this are from at or an have "
         "not which but all were when we there can been has more if will one would so what "
         "about out up them some could other into than then its only time these two may "
         "first any new like our very most over such after also where much through back "
         "mail server message folder delivery queue mailbox account password settings window "
         "report meeting invoice project budget schedule weekend garden kitchen holiday "
         "Monday Tuesday Wednesday Thursday Friday morning evening afternoon tomorrow").split()


def line_pool(count: int = 256, width: int = 76, seed: int = 1939) -> list[bytes]:
    """Text lines of exactly ``width`` characters, none starting with "." (no dot-stuffing,
    so a message's POP3 size is exactly its ,W= size)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words: list[str] = []
        while len(" ".join(words)) < width:
            words.append(rng.choice(WORDS))
        text = " ".join(words)[:width]
        text = text[:-1] + "." if text.endswith(" ") else text
        lines.append(text.encode("ascii"))
    return lines


@dataclass
class MessageSet:
    """Generated messages in ``folder`` (one Maildir new/ folder's worth)."""

    kind: str
    folder: Path
    names: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)      # W= sizes, in name (delivery) order

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def total(self) -> int:
        return sum(self.sizes)


def generate(kind: str, folder: Path, count: int, size: int, owner: tuple[int, int] | None) -> MessageSet:
    """``count`` messages of ``size`` bytes on disk (LF line ends), Dovecot-style names
    ``<time>.M<usec>P<pid>Q<n>.bench,S=<size>,W=<size with CRLF>``, oldest first."""
    folder.mkdir(parents=True)
    pool = line_pool()
    npool = len(pool)
    base = int(time.time()) - 30 * 86400
    pid = os.getpid()
    out = MessageSet(kind, folder)
    for n in range(1, count + 1):
        t = base + n // 10                   # ten deliveries a second
        usec = (n % 10) * 100_000 + n % 1000
        date = email.utils.formatdate(t, localtime=False)
        sender = f"sender{n % 97}"
        head = (f"Return-Path: <{sender}@example.org>\n"
                f"Received: from mx.example.org (mx.example.org)\n"
                f"\tby mail.{DOMAIN} with ESMTP id {n:08X}\n"
                f"\tfor <user@{DOMAIN}>; {date}\n"
                f"From: Sender {n % 97} <{sender}@example.org>\n"
                f"To: Bench User <user@{DOMAIN}>\n"
                f"Subject: {kind} benchmark message number {n}\n"
                f"Date: {date}\n"
                f"Message-ID: <{t}.{n}.{kind}@example.org>\n"
                f"MIME-Version: 1.0\n"
                f"Content-Type: text/plain; charset=us-ascii\n"
                f"Content-Transfer-Encoding: 7bit\n\n").encode("ascii")
        parts = [head]
        left = size - len(head)
        i = n * 7
        while left >= 77:
            parts.append(pool[i % npool] + b"\n")
            i += 1
            left -= 77
        if left > 0:                         # the last line cut so the file is exactly ``size``
            parts.append(pool[i % npool][:left - 1] + b"\n")
        data = b"".join(parts)
        wsize = len(data) + data.count(b"\n")
        name = f"{t}.M{usec}P{pid}Q{n}.bench,S={len(data)},W={wsize}"
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            if owner:
                os.fchown(fd, *owner)        # hard links share the inode: done once here
        finally:
            os.close(fd)
        out.names.append(name)
        out.sizes.append(wsize)
    return out


def fill_maildir(messages: MessageSet, mailbox: Path, owner: tuple[int, int] | None,
                 tag: str = "") -> None:
    """A fresh Maildir at ``mailbox`` (anything there before is removed, server indexes
    included) holding ``messages`` in new/, hard-linked (copied across file systems).
    ``tag`` goes into every file name (".bench<tag>,"): each round then has messages
    no server has seen before, as mail that really arrives, so nothing a server kept in
    memory from an earlier round (its caches are keyed by the Maildir name) applies."""
    if mailbox.exists():
        shutil.rmtree(mailbox)
    for sub in ("", "new", "cur", "tmp"):
        (mailbox / sub).mkdir(parents=True, exist_ok=True)
        if owner:
            os.chown(mailbox / sub, *owner)
    src, dst = str(messages.folder), str(mailbox / "new")
    link = os.link
    for name in messages.names:
        target = name.replace(".bench,", f".bench{tag},", 1) if tag else name
        try:
            link(f"{src}/{name}", f"{dst}/{target}")
        except OSError:
            shutil.copy2(f"{src}/{name}", f"{dst}/{target}")
            link = shutil.copy2


# -- the client ---------------------------------------------------------------------------------

class Pop3Error(BenchError):
    pass


class Retry(Exception):
    """The server refused the connection or the login for now ([IN-USE], [SYS/TEMP])."""


class Client:
    """A lean POP3 client: one socket, one bytearray buffer, no per-line Python work."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        greeting = self.line()
        if not greeting.startswith(b"+OK"):
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
            raise Pop3Error("the server closed the connection")
        self.buf += data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        if self.pos > (1 << 20):             # only here: callers hold offsets into buf
            del self.buf[:self.pos]
            self.pos = 0
        start = self.pos
        scan = start
        while True:
            end = self.buf.find(b"\r\n", scan)
            if end >= 0:
                self.pos = end + 2
                return bytes(self.buf[start:end])
            scan = max(start, len(self.buf) - 1)
            self._fill()

    def ok(self, what: str) -> bytes:
        reply = self.line()
        if not reply.startswith(b"+OK"):
            text = reply.decode("latin-1")
            if "[IN-USE]" in text or "[SYS/TEMP]" in text:
                raise Retry(text)
            raise Pop3Error(f"{what}: {text}")
        return reply

    def command(self, cmd: bytes, what: str) -> bytes:
        self.send(cmd + b"\r\n")
        return self.ok(what)

    def multiline(self, what: str) -> tuple[int, int]:
        """After its +OK line: (start, end) of the body in self.buf, terminator skipped."""
        self.ok(what)
        start = self.pos
        scan = start - 2                      # the body may be empty: "+OK\r\n.\r\n"
        while True:
            end = self.buf.find(b"\r\n.\r\n", scan)
            if end >= 0:
                self.pos = end + 5
                return start, end + 2
            scan = max(start - 2, len(self.buf) - 4)
            self._fill()

    def sized(self, size: int, what: str) -> None:
        """A RETR answer whose body must be exactly ``size`` octets: O(1) check of the end."""
        self.ok(what)
        start = self.pos
        need = start + size + 3
        while len(self.buf) < need:
            self._fill()
        if size and self.buf[need - 5:need] != b"\r\n.\r\n" or not size and self.buf[start:need] != b".\r\n":
            end = self.buf.find(b"\r\n.\r\n", max(start - 2, 0))
            got = f"{end + 2 - start} octets" if end >= 0 else "no end in what arrived"
            raise Pop3Error(f"{what}: expected {size} octets and \".\", got {got}")
        self.pos = need

    def login(self, user: str) -> None:
        self.command(b"USER " + user.encode(), "USER")
        self.command(b"PASS " + PASSWORD.encode(), "PASS")


def connect_login(port: int, user: str, retries: list[int]) -> Client:
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
            retries.append(1)
            if attempt == RETRY_LIMIT:
                raise Pop3Error(f"{user}: still refused after {RETRY_LIMIT} retries: {e}") from None
            time.sleep(RETRY_PAUSE)
    raise AssertionError("unreachable")


def parse_stat(reply: bytes) -> tuple[int, int]:
    words = reply.split()
    try:
        return int(words[1]), int(words[2])
    except (IndexError, ValueError):
        raise Pop3Error(f"STAT: cannot read {reply!r}") from None


def quit_session(client: Client) -> None:
    try:
        client.command(b"QUIT", "QUIT")
    finally:
        client.close()


# -- servers ------------------------------------------------------------------------------------

class Server:
    name = ""
    pop3_port = 0
    version = ""

    def mailbox(self, user: str) -> Path:
        raise NotImplementedError

    def login_name(self, user: str) -> str:
        return f"{user}@{DOMAIN}"

    def owner(self) -> tuple[int, int] | None:
        return None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def problems(self) -> list[str]:
        return []

    def _wait_ready(self, proc: subprocess.Popen, what: str, logfile: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{what} exited with code {proc.returncode}:\n" + tail(logfile))
            try:
                c = Client(self.pop3_port)
                c.send(b"QUIT\r\n")
                c.close()
                return
            except (OSError, Retry, Pop3Error):
                time.sleep(0.1)
        raise BenchError(f"{what} did not answer on 127.0.0.1:{self.pop3_port} within "
                         f"{START_TIMEOUT:.0f} s:\n" + tail(logfile))


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path}: nothing written)"


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


def dovecot_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"cannot run {binary} --version: {e} "
                         "(apt-get install dovecot-pop3d dovecot-imapd)") from e
    return out.stdout.strip() or out.stderr.strip()


def version_tuple(text: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x) for x in m.groups() if x is not None) if m else (0,)


class Dovecot(Server):
    name = "Dovecot"

    def __init__(self, root: Path, binary: str, users: list[str], scheme: str = "PLAIN") -> None:
        if os.geteuid() != 0:
            raise BenchError("the Dovecot side needs root (its mail processes run as nobody)")
        self.root = root
        self.binary = binary
        self.version = dovecot_version(binary)
        self.pop3_port = free_port()
        self.imap_port = free_port()
        try:
            self.uid = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            self.uid = 65534
        try:
            self.gid = grp.getgrnam("nogroup").gr_gid
        except KeyError:
            self.gid = self.uid
        self.users = users
        self.scheme = scheme.upper()
        self.mail_root = root / "mail"
        self.conf = root / "dovecot.conf"
        self.logfile = root / "dovecot.log"
        self.proc: subprocess.Popen | None = None

    def owner(self) -> tuple[int, int]:
        return self.uid, self.gid

    def mailbox(self, user: str) -> Path:
        return self.mail_root / user

    def write_config(self) -> None:
        r = self.root
        for sub in ("run", "state", "mail"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chown(self.mail_root, self.uid, self.gid)
        users = r / "users"
        common = f"""\
base_dir = {r}/run
state_dir = {r}/state
instance_name = ismail-bench-dovecot
protocols = pop3 imap
listen = {HOST}
ssl = no
auth_mechanisms = plain
log_path = {self.logfile}
first_valid_uid = 1
default_internal_user = nobody
default_login_user = nobody
"""
        v24 = version_tuple(self.version) >= (2, 4)
        # 2.3 names the address in each listener; 2.4 has no such setting (the global
        # ``listen`` above is used).
        address = "" if v24 else f"    address = {HOST}\n"
        services = f"""\
service pop3-login {{
  inet_listener pop3 {{
{address}    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
{address}    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
        if v24:
            # Dovecot 2.4's settings (not tried here: Debian 12 ships 2.3).
            text = ("dovecot_config_version = 2.4.0\ndovecot_storage_version = 2.4.0\n" + common
                    + f"auth_allow_cleartext = yes\n"
                    + "auth_username_format = %{user | username}\n"
                    + "mail_driver = maildir\n"
                    + f"mail_path = {self.mail_root}/%{{user}}\n"
                    + f"passdb passwd-file {{\n  passwd_file_path = {users}\n}}\n"
                    + f"userdb passwd-file {{\n  passwd_file_path = {users}\n}}\n" + services)
        else:
            text = (common + "disable_plaintext_auth = no\n"
                    + f"mail_location = maildir:{self.mail_root}/%n\n"
                    + f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%n {users}\n}}\n"
                    + f"userdb {{\n  driver = passwd-file\n  args = username_format=%n {users}\n}}\n"
                    + services)
        self.conf.write_text(text)
        secret = f"{{PLAIN}}{PASSWORD}" if self.scheme == "PLAIN" else self.hash_password()
        users.write_text("".join(f"{u}:{secret}:{self.uid}:{self.gid}::{self.mailbox(u)}::\n"
                                 for u in self.users))
        os.chmod(users, 0o644)

    def hash_password(self) -> str:
        """``{SCHEME}hash`` made by doveadm pw (with this run's config, not /etc/dovecot)."""
        doveadm = str(Path(self.binary).resolve().parent.parent / "bin" / "doveadm")
        if not os.path.exists(doveadm):
            doveadm = shutil.which("doveadm") or "doveadm"
        try:
            out = subprocess.run([doveadm, "-c", str(self.conf), "pw", "-s", self.scheme, "-p", PASSWORD],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"cannot run doveadm pw: {e}") from e
        if out.returncode != 0 or not out.stdout.startswith("{"):
            raise BenchError(f"doveadm pw -s {self.scheme} failed: {(out.stderr or out.stdout).strip()}")
        return out.stdout.strip()

    def start(self) -> None:
        self.write_config()
        out = open(self.root / "dovecot.stdout", "wb")
        self.proc = subprocess.Popen([self.binary, "-F", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        try:
            self._wait_ready(self.proc, "dovecot", self.root / "dovecot.stdout")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc)

    def problems(self) -> list[str]:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if re.search(r": (Error|Fatal|Panic|Warning):", line)
                and "Killed with signal 15" not in line]


class ISMail(Server):
    name = "ISMail"

    def __init__(self, root: Path, users: list[str]) -> None:
        self.root = root
        self.pop3_port = free_port()
        self.smtp_port = free_port()
        self.imap_port = free_port()
        self.users = users
        self.proc: subprocess.Popen | None = None
        self.logfile = root / "ismail.stderr"
        try:
            out = subprocess.run([sys.executable, "-m", "ismail", "--version"], cwd=REPO,
                                 capture_output=True, text=True, timeout=60)
            self.version = (out.stdout or out.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            self.version = "ISMail (version unknown)"

    def mailbox(self, user: str) -> Path:
        return self.root / "mailboxes" / DOMAIN / user

    def _cli(self, *args: str, stdin: str | None = None) -> None:
        out = subprocess.run([sys.executable, "-m", "ismail", "--data-dir", str(self.root), *args],
                             cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise BenchError(f"ismail {' '.join(args)} failed ({out.returncode}): "
                             f"{(out.stderr or out.stdout).strip()}")

    def start(self) -> None:
        import json
        self.root.mkdir(parents=True, exist_ok=True)
        settings = {
            "primary_domain": DOMAIN,
            "listen": [f"{HOST}:{self.smtp_port}"],
            "pop3": {"listen": [f"{HOST}:{self.pop3_port}"], "allow_plaintext": True,
                     "max_connections": 20, "max_per_host": 10},
            # Not benchmarked; kept off 0.0.0.0:143 (an ISMail without IMAP ignores it).
            "imap": {"listen": [f"{HOST}:{self.imap_port}"], "allow_plaintext": True},
        }
        (self.root / "ismail.json").write_text(json.dumps(settings, indent=2))
        for user in self.users:
            self._cli("account", "add", f"{user}@{DOMAIN}", stdin=PASSWORD + "\n")
        err = open(self.logfile, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ismail", "--data-dir", str(self.root), "run"],
                                     cwd=REPO, stdin=subprocess.DEVNULL, stdout=err,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        err.close()
        try:
            self._wait_ready(self.proc, "ismail run", self.logfile)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc)

    def problems(self) -> list[str]:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines()
                if re.search(r"\b(ERROR|CRITICAL|Traceback)\b", line)]


# -- scenarios ----------------------------------------------------------------------------------

@dataclass
class Figure:
    label: str
    unit: str
    higher_is_better: bool
    values: list[float] = field(default_factory=list)

    def best(self) -> float:
        return max(self.values) if self.higher_is_better else min(self.values)

    def median(self) -> float:
        return statistics.median(self.values)


def cpu_seconds() -> float:
    """This (client) process's CPU time, user + system, all threads."""
    t = os.times()
    return t.user + t.system


def warm_up(server: Server, users: list[str]) -> None:
    """One login + STAT + QUIT per mailbox, untimed: the server has seen the mailbox
    before (Dovecot's index is built, as it is on a server in use)."""
    for user in users:
        client = connect_login(server.pop3_port, server.login_name(user), [])
        client.command(b"STAT", "STAT")
        quit_session(client)


def check_list(client: Client, span: tuple[int, int], messages: MessageSet, what: str) -> list[int]:
    body = bytes(client.buf[span[0]:span[1]])
    sizes = [int(line.split()[1]) for line in body.split(b"\r\n")[:-1]]
    if sorted(sizes) != sorted(messages.sizes):
        raise Pop3Error(f"{what}: LIST gives {len(sizes)} messages, {sum(sizes)} octets; "
                        f"expected {messages.count}, {messages.total}")
    return sizes


def run_retr(server: Server, messages: MessageSet, args, user: str) -> dict[str, float]:
    window = args.window
    port = server.pop3_port
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    client = connect_login(port, server.login_name(user), [])
    t_login = time.perf_counter()
    client.send(b"LIST\r\n")
    sizes = check_list(client, client.multiline("LIST"), messages, "retr")
    t_list = time.perf_counter()
    n = len(sizes)
    sent = 0
    done = 0
    batch = max(1, min(8, window // 4))
    while done < n:
        if sent < n and sent - done <= window - batch:
            upto = min(n, done + window)
            client.send(b"".join(b"RETR %d\r\n" % i for i in range(sent + 1, upto + 1)))
            sent = upto
        client.sized(sizes[done], f"RETR {done + 1}")
        done += 1
    t_retr = time.perf_counter()
    quit_session(client)
    t_quit = time.perf_counter()
    octets = sum(sizes)
    return {"client_cpu": 100 * (cpu_seconds() - cpu0) / (t_quit - t0),"msgs": n / (t_retr - t_list), "mbs": octets / MB / (t_retr - t_list),
            "retr_s": t_retr - t_list, "login_s": t_login - t0, "list_s": t_list - t_login,
            "quit_s": t_quit - t_retr, "session_s": t_quit - t0}


def run_list10(server: Server, messages: MessageSet, args, users: list[str]) -> dict[str, float]:
    port = server.pop3_port
    expect = (messages.count, messages.total)
    barrier = threading.Barrier(len(users) + 1, timeout=60)
    deadline = time.monotonic() + args.max_seconds
    latencies: list[float] = []
    retries: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(user: str) -> None:
        mine = []
        try:
            barrier.wait()
            for _ in range(args.list_repeat):
                if time.monotonic() > deadline:
                    raise BenchError(f"list10: over --max-seconds {args.max_seconds}")
                t = time.perf_counter()
                client = connect_login(port, server.login_name(user), retries)
                try:
                    client.send(b"STAT\r\nLIST\r\nUIDL\r\nQUIT\r\n")
                    got = parse_stat(client.ok("STAT"))
                    if got != expect:
                        raise Pop3Error(f"STAT {got}, expected {expect}")
                    for verb in ("LIST", "UIDL"):
                        start, end = client.multiline(verb)
                        lines = client.buf.count(b"\r\n", start, end)
                        if lines != expect[0]:
                            raise Pop3Error(f"{verb}: {lines} lines, expected {expect[0]}")
                    client.ok("QUIT")
                finally:
                    client.close()
                mine.append(time.perf_counter() - t)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            with lock:
                errors.append(f"{user}: {e}")
            try:
                barrier.abort()
            except Exception:
                pass
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(u,), daemon=True) for u in users]
    for t in threads:
        t.start()
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
        raise BenchError("list10: " + "; ".join(errors[:3]))
    if any(t.is_alive() for t in threads):
        raise BenchError("list10: a session did not finish in time")
    sessions = len(latencies)
    return {"sessions": sessions / elapsed, "latency_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * sorted(latencies)[max(0, int(0.95 * sessions) - 1)],
            "retries": float(len(retries)), "client_cpu": 100 * cpu / elapsed}


def run_login(server: Server, messages: MessageSet, user: str) -> dict[str, float]:
    expect = (messages.count, messages.total)
    out: dict[str, float] = {}
    for which in ("first", "second"):
        client = Client(server.pop3_port)
        client.command(b"USER " + server.login_name(user).encode(), "USER")
        t0 = time.perf_counter()
        client.command(b"PASS " + PASSWORD.encode(), "PASS")
        t1 = time.perf_counter()
        got = parse_stat(client.command(b"STAT", "STAT"))
        t2 = time.perf_counter()
        quit_session(client)
        t3 = time.perf_counter()
        if got != expect:
            raise Pop3Error(f"login100k: STAT {got}, expected {expect}")
        out[f"{which}_pass"] = t1 - t0
        out[f"{which}_stat"] = t2 - t1
        out[f"{which}_quit"] = t3 - t2
        out[f"{which}_ready"] = t2 - t0
    return out


def run_mpop(server: Server, messages: MessageSet, args, user: str) -> dict[str, float]:
    """mpop downloads the maildrop into an empty Maildir: the time of the whole run
    (connect to QUIT answered, its own file writes included: a real download)."""
    import hashlib
    import resource
    if not os.path.exists(MPOP):
        raise BenchError(f"the mpop scenario needs {MPOP} (Debian's mpop)")
    base = Path(tempfile.mkdtemp(prefix="mpop-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        local = base / "mail"
        for sub in ("", "new", "cur", "tmp"):
            (local / sub).mkdir()
        command = [MPOP, f"--host={HOST}", f"--port={server.pop3_port}", "--tls=off", "--auth=user",
                   f"--user={server.login_name(user)}", f"--passwordeval=echo {PASSWORD}",
                   f"--delivery=maildir,{local}", "--keep=on", "--only-new=off",
                   "--received-header=off", "--pipelining=on", f"--uidls-file={base / 'uidls'}",
                   "--quiet"]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, timeout=args.max_seconds)
        elapsed = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise BenchError(f"mpop exited with {done.returncode}: "
                             f"{(done.stderr or done.stdout).decode('utf-8', 'replace')[-400:]}")
        files = [p for sub in ("new", "cur") for p in (local / sub).iterdir()]
        if len(files) != messages.count:
            raise BenchError(f"mpop: {len(files)} messages in the Maildir, expected {messages.count}")
        want = {hashlib.blake2b((messages.folder / name).read_bytes(), digest_size=16).digest()
                for name in messages.names}
        got = {hashlib.blake2b(p.read_bytes(), digest_size=16).digest() for p in files}
        if got != want:
            raise BenchError(f"mpop: {len(want - got)} of the {messages.count} messages not as generated")
        client_cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        return {"msgs": messages.count / elapsed, "seconds": elapsed, "client_cpu": 100 * client_cpu / elapsed}
    finally:
        shutil.rmtree(base, ignore_errors=True)


FIGURES = {
    "retr": [("msgs", "RETR messages/s", "msg/s", True), ("mbs", "RETR MB/s (10^6 octets)", "MB/s", True),
             ("login_s", "USER+PASS", "s", False), ("list_s", "LIST", "s", False),
             ("quit_s", "QUIT (marks read)", "s", False), ("session_s", "whole session", "s", False),
             ("client_cpu", "client CPU, % of one core", "%", False)],
    "list10": [("sessions", "sessions/s (all 10 together)", "1/s", True),
               ("latency_ms", "one session, median", "ms", False), ("p95_ms", "one session, p95", "ms", False),
               ("retries", "refused-then-retried logins", "", False),
               ("client_cpu", "client CPU, % of one core", "%", False)],
    "login100k": [("first_ready", "1st: PASS -> STAT answered", "s", False),
                  ("first_pass", "1st: PASS -> +OK", "s", False), ("first_stat", "1st: STAT", "s", False),
                  ("first_quit", "1st: QUIT", "s", False),
                  ("second_ready", "2nd: PASS -> STAT answered", "s", False),
                  ("second_pass", "2nd: PASS -> +OK", "s", False), ("second_stat", "2nd: STAT", "s", False),
                  ("second_quit", "2nd: QUIT", "s", False)],
    "mpop": [("msgs", "mpop's download: messages/s", "msg/s", True),
             ("seconds", "mpop's whole run: time", "s", False),
             ("client_cpu", "mpop's CPU, % of one core", "%", False)],
}


def describe(scenario: str, args) -> str:
    if scenario == "retr":
        return (f"retr: one session, LIST then RETR 1..{args.retr_count} of {args.retr_size} B "
                f"(pipelined, window {args.window}), QUIT")
    if scenario == "list10":
        return (f"list10: {args.list_sessions} parallel sessions x {args.list_repeat} each of "
                f"login, STAT, LIST, UIDL, QUIT; {args.list_count} messages of {args.list_size} B "
                f"per maildrop")
    if scenario == "mpop":
        return (f"mpop: mpop downloads {args.retr_count} messages of {args.retr_size} B into an "
                f"empty Maildir, keeping them on the server")
    return f"login100k: {args.login_count} messages of {args.login_size} B; fresh Maildir, then 2 logins"


def run_round(server: Server, scenario: str, rnd: int, content: dict[str, MessageSet], args,
              figures: dict[str, Figure]) -> None:
    """Round ``rnd`` of ``scenario`` on ``server``; its figures are added to ``figures``."""
    owner = server.owner()
    messages = content[scenario]
    if scenario in ("retr", "mpop"):   # one session downloads the maildrop
        fill_maildir(messages, server.mailbox("user"), owner)
        if not args.no_warmup:
            warm_up(server, ["user"])
        if scenario == "retr":
            result = run_retr(server, messages, args, "user")
            note = f"{result['msgs']:.0f} msg/s, {result['mbs']:.1f} MB/s"
        else:
            result = run_mpop(server, messages, args, "user")
            note = f"{result['msgs']:.0f} messages/s in {result['seconds']:.3f} s"
    elif scenario == "list10":
        users = [f"user{i}" for i in range(args.list_sessions)]
        for user in users:
            fill_maildir(messages, server.mailbox(user), owner)
        if not args.no_warmup:
            warm_up(server, users)
        result = run_list10(server, messages, args, users)
        note = f"{result['sessions']:.1f} sessions/s"
    else:
        fill_maildir(messages, server.mailbox("user"), owner)
        result = run_login(server, messages, "user")
        note = (f"PASS -> STAT answered: 1st {result['first_ready']:.3f} s, "
                f"2nd {result['second_ready']:.3f} s")
    for key, figure in figures.items():
        figure.values.append(result[key])
    log(f"{server.name} {scenario} round {rnd}: {note}")


def take_turns(servers: list, scenario: str, args, figures: list[tuple],
               one_round: Callable[[object, int, dict[str, Figure]], None],
               results: dict[str, dict[str, Figure]], failures: list[str],
               clean: Callable[[object], None]) -> None:
    """Every round of ``scenario``, the servers taking turns round by round (Dovecot then
    ISMail, ISMail then Dovecot, ...): this machine's speed drifts by up to 2x within
    minutes, and a server measured a minute after the other would carry that drift
    into the ratio.  ``figures``: (key, label, unit, better) of each figure a round
    gives; ``one_round(server, rnd, its figures)``; ``clean(server)`` afterwards.  A
    server that fails a round is left out of the scenario (also in imap_bench)."""
    deadline = time.monotonic() + args.max_seconds
    broken: set[str] = set()
    for server in servers:
        results[server.name] = {key: Figure(label, unit, better) for key, label, unit, better in figures}
    try:
        for rnd in range(1, args.rounds + 1):
            if time.monotonic() > deadline:
                log(f"{scenario}: --max-seconds reached after {rnd - 1} round(s)")
                break
            for server in servers if rnd % 2 else servers[::-1]:   # who goes first alternates
                if server.name in broken:
                    continue
                try:
                    one_round(server, rnd, results[server.name])
                except Exception as e:  # noqa: BLE001 - the other server and scenarios still run
                    failures.append(f"{server.name} {scenario}: {type(e).__name__}: {e}")
                    log(failures[-1])
                    broken.add(server.name)
    finally:
        for server in servers:
            clean(server)
    for name in broken:
        del results[name]


@contextlib.contextmanager
def started(servers: list, failures: list[str], port: Callable[[object], int]) -> Iterator[list]:
    """The servers that started (one that did not is a failure, the others go on), all
    at once: they take turns round by round (take_turns).  Stopped at the end, with the
    errors their logs show."""
    running = []
    try:
        for server in servers:
            log(f"starting {server.name} ({server.version}) on 127.0.0.1:{port(server)}")
            try:
                server.start()
                running.append(server)
            except BenchError as e:
                failures.append(f"{server.name} did not start: {e}")
                log(failures[-1])
        yield running
    finally:
        for server in running:
            server.stop()
            for line in server.problems()[:20]:
                log(f"{server.name} log: {line}")


def run_scenario(servers: list[Server], scenario: str, content: dict[str, MessageSet], args,
                 results: dict[str, dict[str, Figure]], failures: list[str], users: list[str]) -> None:
    def clean(server: Server) -> None:
        for user in users:   # disk space: the next scenario fills its own
            shutil.rmtree(server.mailbox(user), ignore_errors=True)
    take_turns(servers, scenario, args, FIGURES[scenario],
               lambda server, rnd, figures: run_round(server, scenario, rnd, content, args, figures),
               results, failures, clean)


# -- report -------------------------------------------------------------------------------------

def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.4f} s" if value < 1 else f"{value:.2f} s"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.2f} {unit}".strip()


def report(scenario: str, args, results: dict[str, dict[str, Figure]], servers: list[Server]) -> None:
    names = [s.name for s in servers]
    print()
    print(f"== {describe(scenario, args)} ==")
    rounds = max((len(next(iter(results[n].values())).values) if results.get(n) else 0) for n in names)
    print(f"   rounds: {rounds}; best, median")
    header = f"{'':42}" + "".join(f"{n:>16}" for n in ("Dovecot", "ISMail")) + f"{'ISMail/Dovecot':>16}  better"
    print(header)
    for key, label, unit, better in FIGURES[scenario]:
        for which in ("best", "median"):
            cells = []
            vals = {}
            for n in ("Dovecot", "ISMail"):
                fig = results.get(n, {}).get(key)
                v = (fig.best() if which == "best" else fig.median()) if fig and fig.values else None
                vals[n] = v
                cells.append(f"{fmt(v, unit):>16}")
            d, i = vals["Dovecot"], vals["ISMail"]
            ratio = f"{i / d:.2f}" if d and i is not None else "-"
            print(f"{label + ' (' + which + ')':42}" + "".join(cells) + f"{ratio:>16}  "
                  + ("higher" if better else "lower"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="POP3 benchmark: ISMail and Dovecot side by side "
                                "(127.0.0.1 only; see bench/README.txt)")
    p.add_argument("--only", choices=("dovecot", "ismail"), help="run one server only")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default 3)")
    p.add_argument("--retr-count", type=int, default=5000)
    p.add_argument("--retr-size", type=int, default=10 * 1024, help="octets on disk (default 10240)")
    p.add_argument("--window", type=int, default=32, help="RETR commands in flight (default 32)")
    p.add_argument("--list-sessions", type=int, default=10)
    p.add_argument("--list-repeat", type=int, default=10, help="sessions per client thread (K)")
    p.add_argument("--list-count", type=int, default=10_000)
    p.add_argument("--list-size", type=int, default=2048)
    p.add_argument("--login-count", type=int, default=100_000)
    p.add_argument("--login-size", type=int, default=1024)
    p.add_argument("--no-warmup", action="store_true",
                   help="retr/list10: no untimed login before the timed one (Dovecot then "
                        "builds its index inside the measurement)")
    p.add_argument("--max-seconds", type=float, default=900,
                   help="stop starting new rounds/sessions of a scenario after this (default 900)")
    p.add_argument("--dovecot", default=DOVECOT, help=f"Dovecot binary (default {DOVECOT})")
    p.add_argument("--dovecot-scheme", default="PLAIN", metavar="SCHEME",
                   help="Dovecot's password scheme (default PLAIN, no hashing at login; "
                        "ARGON2ID or SHA512-CRYPT give its logins a cost like ISMail's scrypt)")
    p.add_argument("--tmp", default="/tmp", help="where the temporary folder goes (default /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (to read logs)")
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    limits = {"rounds": (1, 100), "retr_count": (1, 200_000), "window": (1, 1000),
              "list_sessions": (1, 100), "list_repeat": (1, 10_000), "list_count": (1, 200_000),
              "login_count": (1, 500_000), "retr_size": (600, 50 * MB), "list_size": (600, MB),
              "login_size": (600, MB)}
    for key, (lo, hi) in limits.items():
        if not lo <= getattr(args, key) <= hi:
            p.error(f"--{key.replace('_', '-')} must be {lo}..{hi}")

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    load_at_start = os.getloadavg()[0]
    if load_at_start > 0.5:
        log(f"warning: load average {load_at_start:.2f}: something else is running; figures will be noisy")
    tmp = Path(tempfile.mkdtemp(prefix="ismail-pop3bench-", dir=args.tmp))
    os.chmod(tmp, 0o755)   # Dovecot's mail processes run as nobody and must reach their Maildir
    log(f"working in {tmp}")
    users = ["user"] + [f"user{i}" for i in range(args.list_sessions)]
    servers: list[Server] = []
    results: dict[str, dict[str, dict[str, Figure]]] = {s: {} for s in scenarios}
    failures: list[str] = []
    try:
        if args.only != "ismail":
            servers.append(Dovecot(tmp / "dovecot", args.dovecot, users, args.dovecot_scheme))
        if args.only != "dovecot":
            servers.append(ISMail(tmp / "ismail", users))
        owner = next((s.owner() for s in servers if s.owner()), None)
        content: dict[str, MessageSet] = {}
        plan = {"retr": (args.retr_count, args.retr_size), "list10": (args.list_count, args.list_size),
                "login100k": (args.login_count, args.login_size),
                "mpop": (args.retr_count, args.retr_size)}
        for s in scenarios:
            count, size = plan[s]
            t = time.perf_counter()
            content[s] = generate(s, tmp / "src" / s, count, size, owner)
            log(f"generated {count} messages of {size} B for {s} in {time.perf_counter() - t:.1f} s")
        with started(servers, failures, lambda server: server.pop3_port) as running:
            for s in scenarios:
                run_scenario(running, s, content, args, results[s], failures, users)
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
    print("POP3 benchmark, client and servers on 127.0.0.1 sharing this machine's "
          f"{os.cpu_count()} CPU(s)")
    print(f"  load average at start: {load_at_start:.2f}" + ("  (busy machine: figures are noisy)"
                                                             if load_at_start > 0.5 else ""))
    for server in servers:
        extra = f", password scheme {server.scheme}" if isinstance(server, Dovecot) else ""
        print(f"  {server.name}: {server.version}{extra}")
    for s in scenarios:
        if results[s]:
            report(s, args, results[s], servers)
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
