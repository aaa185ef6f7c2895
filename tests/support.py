"""Shared test helpers: real ISMail processes on loopback, real peer programs, free ports.

A test that needs a program nobody here wrote (swaks, smtp-source, nmap, ...) calls
``require_program``: on a developer machine without it the test is skipped, but
with CI=true in the environment a missing program is a failure, so CI can never
pass by skipping.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail.queue.dns import DNSError, Resolver

ROOT = Path(__file__).resolve().parent.parent

# The trace lines ISMail puts in front of a message it stores (Authentication-Results naming
# this server too); the rest is what was sent.
ADDED_HEADERS = (b"Return-Path:", b"Authentication-Results:", b"Received:")


def without_trace(data: bytes, eol: bytes = b"\r\n") -> bytes:
    """A stored or downloaded message with ISMail's trace lines taken off its top (they
    come first, with their folded continuation lines); ``eol`` as the client stores it."""
    rest = data
    while rest.startswith(ADDED_HEADERS) or rest[:1] in (b"\t", b" "):
        rest = rest.split(eol, 1)[1]
    return rest
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_program(test: unittest.TestCase, name: str, path: str | None = None) -> str:
    """The full path of a peer program; skip (developer machine) or fail (CI) without it."""
    found = path if path and os.path.exists(path) else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (see .ci/run for the Debian packages)"
    if IN_CI:
        test.fail(message + " - CI=true, so this is a failure, not a skip")
    raise unittest.SkipTest(message)


# Ports for servers the tests start: below the kernel's range for outgoing connections'
# own ports (32768-60999 on Linux, 49152-65535 on Windows).  A port from that range (what
# binding to port 0 gives) can be handed to an outgoing connection between the moment a
# test picks it and the moment its server binds it: seen once in CI, a GUI test's server
# could not start and the test met "connection refused".
TEST_PORTS = range(20000, 32000)
_handed_out: set[int] = set()


@contextlib.contextmanager
def recorded_syncs(test: unittest.TestCase):
    """Within the block, each fsync as ("sync", the path synced) and each rename or
    replace as ("rename", source, target), in order, in the list it gives.  Skips the
    test where a synced descriptor cannot be named (no /proc; Windows syncs no folders)."""
    if os.name == "nt" or not Path("/proc/self/fd").is_dir():
        test.skipTest("needs /proc to name a synced file or folder")
    events: list[tuple] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append(("sync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def recording(real):
        def rename(src, dst):
            events.append(("rename", Path(src), Path(dst)))
            return real(src, dst)
        return rename
    with mock.patch("os.fsync", fsync), mock.patch("os.rename", recording(os.rename)), \
            mock.patch("os.replace", recording(os.replace)):
        yield events


def synced(events: list[tuple]) -> list[Path]:
    """The paths synced, in order (from recorded_syncs)."""
    return [e[1] for e in events if e[0] == "sync"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to right now, not handed out before in this run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        port = random.choice(TEST_PORTS)
        if port in _handed_out:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(family, socket.SOCK_STREAM) as s:  # the range is crowded: any port
        s.bind((host, 0))
        return s.getsockname()[1]


def _another_port(taken: set[int], host: str = "127.0.0.1") -> int:
    """A free port not in ``taken`` (which it joins)."""
    for _ in range(100):
        port = free_port(host)
        if port not in taken:
            taken.add(port)
            return port
    raise AssertionError(f"no free port outside {sorted(taken)}")


def wait_for_banner(host: str, port: int, timeout: float = 15.0,
                    alive: subprocess.Popen | None = None) -> bytes:
    """The SMTP greeting; ``alive``: give up at once if that process has ended."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"the server ended (exit code {alive.returncode}) before greeting")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                banner = s.recv(512)
                s.sendall(b"QUIT\r\n")
                if banner.startswith(b"220"):
                    return banner
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"no 220 greeting on {host}:{port} within {timeout}s ({last})")


def cli(data_dir: Path, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python3 -m ismail --data-dir DIR ARGS` from the project root."""
    return subprocess.run([sys.executable, "-m", "ismail", "--data-dir", str(data_dir), *args],
                          cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=timeout)


class ServerProcess:
    """A real `python3 -m ismail run` on a loopback port, with its own data folder."""

    def __init__(self, settings: dict | None = None, accounts: tuple[str, ...] = ("user@example.test",),
                 data_dir: Path | None = None, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="ismail-test-"))
        self.host = host  # another loopback address (127.0.0.11) plays another machine
        self.port = port or free_port(host)
        # Three different ports: free_port closes its socket, so two calls can return the
        # same one (seen once in CI: IMAP given the SMTP port, and the settings refused).
        taken = {self.port}
        self.pop3_port = _another_port(taken)
        self.imap_port = _another_port(taken)
        base = {"server_name": "mx.example.test", "primary_domain": "example.test",
                # No RSA key generation at each start (tests/test_mailauth_* cover it).
                "dkim": {"auto_keys": False}, "tls": {"self_signed": False},
                # No DNS-based anti-spam checks (no test may ask the machine's resolver) and no
                # connection-rate limit (load tests reconnect from one untrusted address); tests/
                # test_antispam_* turn them on, with dnsmasq.
                "antispam": {"rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off",
                 "connection_rate": 0},
                "listen": [f"{host}:{self.port}"],
                "pop3": {"listen": [f"127.0.0.1:{self.pop3_port}"]},
                "imap": {"listen": [f"127.0.0.1:{self.imap_port}"]},
                # Nothing a test starts may send mail beyond loopback: a SmartHost on a closed
                # loopback port holds anything that would go out.
                "smarthost": {"enabled": True, "host": "127.0.0.1", "port": 9, "exclusive": True,
                              "tls": "none"}}
        base.update(settings or {})
        self.settings = base
        self.write_settings()
        for address in accounts:
            r = cli(self.data_dir, "account", "add", address, stdin="secret-pw\n")
            if r.returncode != 0:
                raise AssertionError(f"account add {address} failed: {r.stderr}")
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "run.stderr"

    def write_settings(self) -> None:
        (self.data_dir / "ismail.json").write_text(json.dumps(self.settings, indent=1))

    def start(self) -> "ServerProcess":
        # A port free_port() found may be taken by someone else before ISMail binds it
        # (three ports a server now): on a first start, try again with fresh ports.
        for attempt in range(3):
            before = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen([sys.executable, "-m", "ismail", "--data-dir", str(self.data_dir),
                                          "run"], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            try:
                wait_for_banner(self.host, self.port, alive=self.proc)
                self._started = True
                return self
            except AssertionError:
                self.stop()
                said = self.log_path.read_bytes()[before:].decode(errors="replace")
                if "already in use" in said and not getattr(self, "_started", False) and attempt < 2:
                    self._new_ports()
                    continue
                raise AssertionError("ISMail did not start:\n" + said[-3000:])
        raise AssertionError("unreachable")

    def _new_ports(self) -> None:
        for attr, key in (("port", "listen"), ("pop3_port", "pop3"), ("imap_port", "imap")):
            host = self.host if key == "listen" else "127.0.0.1"
            old, new = getattr(self, attr), free_port(host)
            setattr(self, attr, new)
            holder = self.settings if key == "listen" else self.settings.get(key, {})
            name = "listen"
            if isinstance(holder.get(name), list):
                holder[name] = [e.replace(f"{host}:{old}", f"{host}:{new}") for e in holder[name]]
        self.write_settings()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        code, self.proc = self.proc.returncode, None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def maildir(self, address: str = "user@example.test") -> Path:
        local, domain = address.lower().split("@")
        return self.data_dir / "mailboxes" / domain / local

    def count(self, address: str = "user@example.test") -> int:
        box = self.maildir(address)
        return sum(len(os.listdir(box / sub)) for sub in ("new", "cur") if (box / sub).is_dir())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class SMTPTalk:
    """A raw SMTP client on a socket, for exact bytes and exact replies."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None, timeout: float = 10):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def reply(self) -> bytes:
        """One whole reply (all lines of a multi-line one)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    if lines or self.buf:
                        return b"".join(lines) + self.buf
                    return b""
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line + b"\r\n")
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> bytes:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- a real DNS server for MX records on a loopback port -------------------------------------

def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return port
    raise AssertionError("no port free for both UDP and TCP")


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<port>, answering only from the records given (everything under .test)."""

    def __init__(self, program: str, records: list[str], probe: str = "remote.test") -> None:
        output = ""
        for _ in range(3):  # the port could be taken between finding and binding it
            self.port = free_udp_tcp_port()
            args = [program, "--no-daemon", "--no-resolv", "--no-hosts", f"--port={self.port}",
                    "--listen-address=127.0.0.1", "--bind-interfaces", "-C", "/dev/null", "--pid-file=",
                    "--local=/test/",  # only local data for .test: unknown names get NXDOMAIN
                    *records]
            if getattr(os, "geteuid", lambda: 1)() == 0:
                args.append("--user=root")  # else it drops to "nobody", which may not exist
            self.log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    Resolver([("127.0.0.1", self.port)], timeout=0.2, attempts=1).mx(probe)
                    return
                except DNSError:
                    time.sleep(0.05)
            self.log.seek(0)
            output = self.log.read().decode(errors="replace")[-2000:]
            self.stop()
        raise AssertionError("dnsmasq did not start (or did not answer within 10 s): " + output)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None
            self.log.close()


def journal_holds(folder: Path) -> tuple[dict[str, bytes], list[Path]]:
    """What the queue journal's segments on disk (DATA/queue/journal) still stand for: the
    queued messages not yet ended (queue id -> the bytes of its .msg file, which the server
    may not have written yet), and the files of local deliveries not yet checkpointed.  A
    record being written at this moment is cut short and not counted (read_segment)."""
    from ismail.queue.journal import parse_local, read_segment
    queued: dict[str, bytes] = {}
    local: dict[str, list[Path]] = {}
    ended: set[str] = set()
    for segment in sorted(Path(folder).glob("*.jnl")):
        try:
            data = segment.read_bytes()
        except FileNotFoundError:  # checkpointed and removed meanwhile: its files are written
            continue
        for kind, payload in read_segment(data)[0]:
            if kind == b"Q":
                qid, _, message = payload.partition(b"\n")
                queued[qid.decode()] = message
            elif kind == b"L":
                lid, paths, _ = parse_local(payload)
                local[lid] = paths
            else:
                ended.add(payload.decode())
    return ({q: m for q, m in queued.items() if q not in ended},
            [path for lid, paths in local.items() if lid not in ended for path in paths])


def write_deferred(data_dir: Path, count: int) -> list[str]:
    """``count`` deferred queue entries (next try in two hours) written straight into
    DATA/queue/messages as the spool writes them, for a server to find at its start."""
    from ismail.fsutil import new_queue_id
    from ismail.queue.spool import QueueEntry, QueuedRecipient, file_head
    messages = Path(data_dir) / "queue" / "messages"
    messages.mkdir(parents=True, exist_ok=True)
    body, later = b"Subject: deferred\r\n\r\nold\r\n", time.time() + 7200
    ids = []
    for _ in range(count):
        e = QueueEntry(id=new_queue_id(), sender="a@example.test",
                       recipients=[QueuedRecipient("b@remote.test", attempts=1, last_error="4.4.1 x")],
                       arrival=time.time() - 600, size=len(body), attempts=1, next_try=later,
                       last_error="4.4.1 x")
        (messages / f"{e.id}.msg").write_bytes(file_head(e) + body)
        ids.append(e.id)
    return ids


def queued_entries(data_dir: Path) -> dict:
    """queue id -> QueueEntry of every message a server (in any process) has queued and not
    yet finished: the entries with a file, and those its journal holds whose file is not
    written yet (a message that arrived in the last second or so)."""
    import io
    from ismail.queue.spool import QueueEntry, Spool, _read_envelope
    queue = Path(data_dir) / "queue"
    held, _ = journal_holds(queue / "journal")
    spool = Spool(queue)
    entries = {}
    for qid in spool.list_ids():
        try:
            entries[qid] = spool.load(qid)
        except FileNotFoundError:
            pass  # removed meanwhile
    for qid, message in held.items():
        if qid not in entries:
            entries[qid] = QueueEntry.from_json(_read_envelope(io.BytesIO(message)))
    return dict(sorted(entries.items()))


def queued_message(data_dir: Path, qid: str) -> bytes:
    """The text of queued message ``qid`` as it will be sent, from its file or, if the
    server has not written that yet, from its journal record."""
    import io
    from ismail.queue.spool import Spool, _read_envelope
    queue = Path(data_dir) / "queue"
    try:
        return Spool(queue).read_message(qid)
    except FileNotFoundError:
        held, _ = journal_holds(queue / "journal")
        if qid not in held:
            raise
        f = io.BytesIO(held[qid])
        _read_envelope(f)
        return f.read()
