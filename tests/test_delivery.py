"""End to end: the outgoing side of ISMail against real peers.

Each test starts a real ``python3 -m ismail run`` (tests.support.ServerProcess) and real
destinations: Postfix's ``smtp-sink`` as SmartHost or as MX host on loopback addresses
(127.0.0.2, 127.0.0.3 ...), ``dnsmasq`` on a loopback port for the MX records, and in
two tests a second ISMail.  Then it looks where an administrator would look: the
sink's dump files (one per transaction, with the envelope as X-Mail-Args /
X-Rcpt-Args), the Maildirs, DATA/queue/messages and ``python3 -m ismail queue ...``.

Nothing leaves loopback: every ISMail started here has a SmartHost on loopback, or
(direct delivery) ``dns_servers`` pointing at this file's dnsmasq, which knows only
names under .test that resolve to loopback addresses.

Every message carries a unique token (Subject and body), so sinks can be shared
between tests and each delivery is counted exactly.
"""
from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import uuid
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from ismail.queue.spool import Spool
from tests.support import Dnsmasq, ServerProcess, cli, free_port, queued_entries, require_program, write_deferred

AS_ROOT = getattr(os, "geteuid", lambda: 1)() == 0
FAST_RETRY = {"first_seconds": 1, "max_interval_seconds": 2, "lifetime_hours": 1}
# A retry an hour away: only `queue flush` (or a restart) can make the message go now.
NO_RETRY = {"first_seconds": 3600, "max_interval_seconds": 3600, "lifetime_hours": 1}
TOKEN = re.compile(r"tok-[0-9a-f]{32}")


def new_token() -> str:
    return "tok-" + uuid.uuid4().hex


def smarthost(port: int, exclusive: bool = True, host: str = "127.0.0.1") -> dict:
    return {"enabled": True, "host": host, "port": port, "exclusive": exclusive, "tls": "none"}


def message_text(sender: str, rcpts: list[str], token: str, extra_body: str = "") -> bytes:
    return (f"From: <{sender or 'nobody@client.test'}>\r\n"
            f"To: {', '.join(f'<{r}>' for r in rcpts)}\r\n"
            f"Subject: test {token}\r\n"
            f"Message-ID: <{token}@client.test>\r\n"
            f"\r\n"
            f"body {token}\r\n{extra_body}").encode()


def submit(port: int, sender: str, rcpts: list[str], token: str | None = None,
           extra_body: str = "") -> str:
    """Send one message to ISMail on 127.0.0.1:port; the queue id from its 250 reply."""
    token = token or new_token()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
        code, text = s.ehlo()
        assert code == 250, (code, text)
        code, text = s.mail(sender)
        assert code == 250, (code, text)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (r, code, text)
        code, text = s.data(message_text(sender, rcpts, token, extra_body))
        assert code == 250, (code, text)
    m = re.search(rb"queued as (\S+)", text)
    assert m, text
    return m.group(1).decode()


def queue_ids(data_dir: Path) -> list[str]:
    """The queued messages, with those whose file the server has not written yet."""
    return list(queued_entries(data_dir))


def ss_established(port: int) -> int:
    """Established TCP connections whose destination port is `port` (client ends)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "dport", "=", f":{port}"],
                         capture_output=True, text=True, timeout=10).stdout
    return sum(1 for line in out.splitlines() if line.strip())


# ------------------------------------------------------------------------------ real peers

class PortBusy(Exception):
    pass


@dataclass
class Dump:
    """One transaction as smtp-sink wrote it."""
    path: Path
    helo: str
    mail_args: str
    rcpts: list[str]
    message: Message      # smtp-sink's own headers first, then the message as received
    text: str


class Sink:
    """Postfix's smtp-sink on host:port, one dump file per transaction in its own folder."""

    def __init__(self, program: str, host: str, port: int, *options: str, name: str = "sink") -> None:
        self.host, self.port, self.name = host, port, name
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-sink-"))
        self.dumps = self.dir / "dumps"
        self.dumps.mkdir()
        for d in (self.dir, self.dumps):  # run by root, smtp-sink writes as nobody
            os.chmod(d, 0o777)
        args = [program, "-c", "-h", name, "-d", f"{self.dumps}/m.", *options]
        if AS_ROOT:
            args += ["-u", "nobody"]
        args += [f"{host}:{port}", "100"]
        self.out_path = self.dir / "stdout"
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PortBusy(f"smtp-sink on {self.host}:{self.port} exited: {self.output()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    banner = s.recv(512)
                    s.sendall(b"QUIT\r\n")
                if banner.startswith(b"220 " + self.name.encode()):
                    return
                if banner:
                    raise PortBusy(f"another program answers on {self.host}:{self.port}: {banner!r}")
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"smtp-sink did not answer on {self.host}:{self.port} within {timeout}s")

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def mesg_counter(self) -> int:
        found = re.findall(r"mesg=(\d+)", self.output())
        return int(found[-1]) if found else 0

    def files(self) -> list[Path]:
        return sorted(self.dumps.iterdir())

    def tokens(self) -> list[str]:
        """One entry per dump file holding a token (a file may be incomplete while written)."""
        out = []
        for path in self.files():
            try:
                found = set(TOKEN.findall(path.read_text(errors="replace")))
            except FileNotFoundError:
                continue
            out.extend(found)
        return out

    def count(self, token: str) -> int:
        return self.tokens().count(token)

    def dumps_with(self, token: str) -> list[Dump]:
        out = []
        for path in self.files():
            text = path.read_text(errors="replace")
            if token not in text:
                continue
            msg = email.message_from_string(text)
            out.append(Dump(path, msg.get("X-Helo-Args", ""), msg.get("X-Mail-Args", ""),
                            msg.get_all("X-Rcpt-Args", []), msg, text))
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
        self._out.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------ the tests

class DeliveryCase(unittest.TestCase):
    """Helpers shared by the tests: servers, sinks and bounded waits with useful failures."""

    def setUp(self) -> None:
        self.sink_program = require_program(self, "smtp-sink", "/usr/sbin/smtp-sink")
        self.servers: list[ServerProcess] = []

    def server(self, settings: dict, accounts: tuple[str, ...] = ("user@example.test",),
               start: bool = True) -> ServerProcess:
        assert "smarthost" in settings or "dns_servers" in settings, "nothing may leave loopback"
        s = ServerProcess(settings, accounts)
        self.addCleanup(s.cleanup)
        self.servers.append(s)
        if start:
            s.start()
        return s

    def sink(self, host: str = "127.0.0.1", port: int | None = None, *options: str,
             name: str = "sink") -> Sink:
        for _ in range(5):
            try:
                sink = Sink(self.sink_program, host, port or free_port(host), *options, name=name)
            except PortBusy:
                if port:
                    raise
                continue
            self.addCleanup(sink.cleanup)
            return sink
        raise AssertionError(f"could not start smtp-sink on {host}")

    def diagnostics(self) -> str:
        parts = []
        for s in self.servers:
            listing = cli(s.data_dir, "queue", "list").stdout if s.data_dir.exists() else ""
            parts.append(f"--- ISMail {s.data_dir} queue:\n{listing}\n--- its log (tail):\n"
                         f"{s.log_text()[-3000:]}")
        return "\n".join(parts)

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.05):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                self.fail(f"not within {timeout}s: {what}\n{self.diagnostics()}")
            time.sleep(interval)

    def wait_queue_empty(self, s: ServerProcess, timeout: float = 20) -> None:
        self.wait_for(lambda: not queue_ids(s.data_dir), timeout, "the outgoing queue to empty")
        # The spool removes an entry's .msg first, then its .state: allow that moment, no more.
        messages = s.data_dir / "queue" / "messages"
        self.wait_for(lambda: not any(messages.iterdir()), 2,
                      "queue/messages to hold no file (a state file left without its message?)")

    def wait_delivered(self, sink: Sink, token: str, timeout: float = 20) -> None:
        self.wait_for(lambda: sink.count(token) >= 1, timeout, f"{token} at {sink.name}")

    def maildir_messages(self, s: ServerProcess, address: str) -> list[tuple[Path, Message]]:
        box = s.maildir(address)
        out = []
        for sub in ("new", "cur"):
            if (box / sub).is_dir():
                for p in sorted((box / sub).iterdir()):
                    out.append((p, email.message_from_bytes(p.read_bytes(), policy=email.policy.default)))
        return out

    def wait_dsn(self, s: ServerProcess, address: str, timeout: float = 20) -> Message:
        """The one report in `address`'s Maildir, checked to be an RFC 3464 DSN."""
        found = self.wait_for(lambda: self.maildir_messages(s, address), timeout,
                              f"a delivery report in the Maildir of {address}")
        self.assertEqual(len(found), 1, [str(m) for _, m in found])
        path, dsn = found[0]
        raw = path.read_bytes()
        self.assertRegex(raw, rb"^Return-Path: <>\r?\n")  # it was sent with a null sender
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        self.assertEqual(dsn["From"].addresses[0].addr_spec, "MAILER-DAEMON@example.test")
        self.assertEqual(dsn["To"].addresses[0].addr_spec, address)
        return dsn

    def status_blocks(self, dsn: Message) -> tuple[Message, list[Message]]:
        """The per-message block and the per-recipient blocks of the delivery-status part."""
        parts = [p for p in dsn.iter_parts() if p.get_content_type() == "message/delivery-status"]
        self.assertEqual(len(parts), 1)
        blocks = parts[0].get_payload()
        self.assertGreaterEqual(len(blocks), 2, "no per-recipient block")
        return blocks[0], blocks[1:]


class SmartHostTest(DeliveryCase):
    """SmartHost delivery to smtp-sink (and to a second ISMail) on non-standard loopback ports."""

    def test_mail_accepted_while_a_big_queue_loads_still_goes_out(self):
        # The listeners open before the queue on disk is read (a big queue must not delay
        # serving); mail accepted in that time must still reach the delivery threads, not
        # wait, acknowledged, until the next start (seen once in CI under load).
        sink = self.sink(name="smarthost")
        s = self.server({"smarthost": smarthost(sink.port), "retry": FAST_RETRY}, start=False)
        write_deferred(s.data_dir, 20000)
        s.start()  # returns at the greeting, while the 20,000 entries are still being read
        token = new_token()
        qid = submit(s.port, "user@example.test", ["x@remote.test"], token)
        self.wait_delivered(sink, token, timeout=30)
        self.wait_for(lambda: qid not in queue_ids(s.data_dir), 10, f"{qid} to leave the queue")
        self.assertEqual(len(queue_ids(s.data_dir)), 20000)  # the deferred ones stay deferred

    def test_exclusive_smarthost_gets_the_messages_with_the_right_envelope(self):
        sink = self.sink(name="smarthost")
        s = self.server({"smarthost": smarthost(sink.port), "retry": FAST_RETRY})
        token = new_token()
        qid = submit(s.port, "user@example.test", ["x@remote.test", "y@remote.test", "z@other.test"], token,
                     extra_body=".a line with a leading dot\r\n")
        self.wait_queue_empty(s)
        dumps = sink.dumps_with(token)
        # One transaction per recipient domain: both remote.test recipients in one.
        self.assertEqual(sorted(d.rcpts for d in dumps), [["<x@remote.test>", "<y@remote.test>"],
                                                          ["<z@other.test>"]])
        for d in dumps:
            self.assertEqual(d.mail_args.split()[0], "<user@example.test>", d.text)
            self.assertEqual(d.helo, "mx.example.test")  # EHLO with server_name
            received = d.message.get_all("Received")
            self.assertEqual(len(received), 2, d.text)  # the sink's own, then ISMail's
            ours = " ".join(received[1].split())
            self.assertRegex(ours, rf"^from client\.test \(\[127\.0\.0\.1\]\) by mx\.example\.test "
                                   rf"\(ISMail\) with E?SMTP id {qid}\b")
            self.assertEqual(d.message["Subject"], f"test {token}")
            self.assertIn(f"\nbody {token}\n.a line with a leading dot\n", d.text)  # dot-stuffing undone
        self.assertEqual(len(sink.tokens()), 2)
        self.assertEqual(sink.mesg_counter(), 2)
        self.assertEqual(s.count(), 0)

    def test_many_messages_each_arrive_once_and_the_queue_empties(self):
        sink = self.sink(name="smarthost")
        s = self.server({"smarthost": smarthost(sink.port), "retry": FAST_RETRY})
        tokens = [new_token() for _ in range(20)]
        for t in tokens:
            submit(s.port, "user@example.test", ["x@remote.test"], t)
        self.wait_queue_empty(s)
        self.assertEqual(sorted(sink.tokens()), sorted(tokens))

    def test_smarthost_down_then_up_queue_flush_delivers_exactly_once(self):
        port = free_port()  # nothing listens there yet
        s = self.server({"smarthost": smarthost(port), "retry": NO_RETRY})
        token = new_token()
        qid = submit(s.port, "user@example.test", ["x@remote.test"], token)

        def deferred():
            r = cli(s.data_dir, "queue", "list")
            return r if "attempts=1" in r.stdout else None

        listing = self.wait_for(deferred, 20, "the first attempt to be recorded in `queue list`").stdout
        self.assertIn(qid, listing)
        self.assertIn("<user@example.test>", listing)
        line = next(line for line in listing.splitlines() if "<x@remote.test>" in line)
        self.assertIn(f"127.0.0.1]:{port}", line)  # the last error names the SmartHost ...
        self.assertRegex(line.lower(), r"refused|cannot connect")  # ... and what went wrong
        self.assertEqual(queue_ids(s.data_dir), [qid])

        sink = self.sink("127.0.0.1", port, name="smarthost")
        time.sleep(1.5)  # the next retry is an hour away: nothing may go without a flush
        self.assertEqual(sink.tokens(), [], "sent before `queue flush`")
        r = cli(s.data_dir, "queue", "flush")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_queue_empty(s, timeout=15)
        self.wait_delivered(sink, token)
        time.sleep(1.5)  # a second copy would come now, if at all
        self.assertEqual(sink.count(token), 1)
        self.assertEqual(sink.mesg_counter(), 1)
        self.assertIn("the outgoing queue is empty", cli(s.data_dir, "queue", "list").stdout)

    def test_4xx_reply_is_deferred_with_the_reply_in_the_queue_then_delivered_once(self):
        port = free_port()
        busy = self.sink("127.0.0.1", port, "-r", "rcpt", "-b", "451 4.3.2 Try again later, please",
                         name="busy")
        s = self.server({"smarthost": smarthost(port), "retry": NO_RETRY})
        token = new_token()
        submit(s.port, "user@example.test", ["x@remote.test"], token)
        listing = self.wait_for(lambda: (lambda out: "attempts=1" in out and out)(
            cli(s.data_dir, "queue", "list").stdout), 20, "the 4xx to be recorded in `queue list`")
        self.assertIn("<x@remote.test>  451 4.3.2 Try again later, please", listing)
        self.assertEqual(s.count(), 0)  # no bounce for a temporary failure
        busy.stop()
        sink = self.sink("127.0.0.1", port, name="smarthost")
        r = cli(s.data_dir, "queue", "flush")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_queue_empty(s)
        self.wait_delivered(sink, token)
        time.sleep(1.0)
        self.assertEqual(sink.count(token), 1)
        self.assertEqual(busy.tokens(), [])

    def test_more_than_50_received_headers_is_bounced_as_a_loop(self):
        sink = self.sink(name="smarthost")
        s = self.server({"smarthost": smarthost(sink.port), "retry": FAST_RETRY})
        token = new_token()
        hops = "".join(f"Received: from hop{i}.test by hop{i + 1}.test; Tue, 1 Jan 2030 00:00:00 +0000\r\n"
                       for i in range(50))
        with smtplib.SMTP("127.0.0.1", s.port, local_hostname="client.test", timeout=30) as c:
            c.sendmail("user@example.test", ["x@remote.test"],
                       hops.encode() + message_text("user@example.test", ["x@remote.test"], token))
        dsn = self.wait_dsn(s, "user@example.test")  # 50 + ISMail's own = 51
        self.wait_queue_empty(s)
        _, rcpts = self.status_blocks(dsn)
        self.assertEqual([r["Final-Recipient"] for r in rcpts], ["rfc822; x@remote.test"])
        self.assertEqual(rcpts[0]["Status"], "5.4.6")
        self.assertEqual(sink.tokens(), [])

    def test_deleted_message_is_not_sent(self):
        port = free_port()
        s = self.server({"smarthost": smarthost(port), "retry": NO_RETRY})
        token, keep = new_token(), new_token()
        qid = submit(s.port, "user@example.test", ["x@remote.test"], token)
        submit(s.port, "user@example.test", ["x@remote.test"], keep)
        self.wait_for(lambda: cli(s.data_dir, "queue", "list").stdout.count("attempts=1") == 2, 20,
                      "both messages deferred")
        r = cli(s.data_dir, "queue", "delete", qid)
        self.assertEqual(r.returncode, 0, r.stderr)
        sink = self.sink("127.0.0.1", port, name="smarthost")
        cli(s.data_dir, "queue", "flush")
        # Both were deferred, so both had files; `queue delete` from another process writes
        # no end into the server's journal (its record stays until the segment's checkpoint),
        # so the queue is the folder here.
        self.wait_for(lambda: not Spool(s.data_dir / "queue").list_ids(), 20, "the outgoing queue to empty")
        self.wait_delivered(sink, keep)
        self.assertEqual(sink.count(token), 0)

    def test_rejected_recipient_is_bounced_to_the_local_sender(self):
        reply = "550 5.1.1 <x@remote.test>: Recipient address rejected: User unknown"
        sink = self.sink("127.0.0.1", None, "-f", "rcpt", "-B", reply, name="smarthost")
        s = self.server({"smarthost": smarthost(sink.port), "retry": FAST_RETRY})
        token = new_token()
        qid = submit(s.port, "user@example.test", ["x@remote.test"], token)
        dsn = self.wait_dsn(s, "user@example.test")
        self.wait_queue_empty(s)
        head, rcpts = self.status_blocks(dsn)
        self.assertEqual(head["Reporting-MTA"], "dns; mx.example.test")
        self.assertEqual(len(rcpts), 1)
        r = rcpts[0]
        self.assertEqual(r["Final-Recipient"], "rfc822; x@remote.test")
        self.assertEqual(r["Action"], "failed")
        self.assertEqual(r["Diagnostic-Code"], f"smtp; {reply}")
        human = next(p for p in dsn.iter_parts() if p.get_content_type() == "text/plain").get_content()
        self.assertIn(f"<x@remote.test>: host 127.0.0.1 said: {reply}", " ".join(human.split()))
        # The original's headers come back, so the sender can tell which message it was.
        returned = [p for p in dsn.iter_parts() if p.get_content_type() in ("text/rfc822-headers",
                                                                            "message/rfc822")]
        self.assertEqual(len(returned), 1)
        self.assertIn(f"<{token}@client.test>", returned[0].as_string())
        self.assertIn(qid, returned[0].as_string())
        self.assertEqual(sink.tokens(), [])
        self.assertEqual(s.count("postmaster@example.test"), 0)
        # RFC 3464 2.3.4: Status is the remote server's enhanced code when it gave one.
        self.assertEqual(r["Status"], "5.1.1")

    def test_second_ismail_as_smarthost_takes_one_recipient_and_refuses_the_other(self):
        b = self.server({"server_name": "mx.remote.test", "primary_domain": "remote.test",
                         "smarthost": smarthost(9)},  # closed: B itself sends nothing anywhere
                        accounts=("someone@remote.test",))
        a = self.server({"smarthost": smarthost(b.port), "retry": FAST_RETRY})
        token = new_token()
        submit(a.port, "user@example.test", ["someone@remote.test", "nobody@remote.test"], token)
        dsn = self.wait_dsn(a, "user@example.test")
        self.wait_queue_empty(a)
        self.wait_for(lambda: b.count("someone@remote.test") == 1, 10, "the message at the second ISMail")
        (_, got), = self.maildir_messages(b, "someone@remote.test")
        self.assertEqual(got["Subject"], f"test {token}")
        by = [" ".join(h.split()) for h in got.get_all("Received")]
        self.assertEqual(len(by), 2, by)
        self.assertRegex(by[0], r"^from mx\.example\.test \(\[127\.0\.0\.1\]\) by mx\.remote\.test \(ISMail\)")
        self.assertRegex(by[1], r"^from client\.test \(\[127\.0\.0\.1\]\) by mx\.example\.test \(ISMail\)")
        _, rcpts = self.status_blocks(dsn)
        self.assertEqual([r["Final-Recipient"] for r in rcpts], ["rfc822; nobody@remote.test"])
        self.assertEqual(rcpts[0]["Action"], "failed")
        self.assertRegex(rcpts[0]["Diagnostic-Code"], r"^smtp; 550 5\.1\.1 <nobody@remote\.test>")
        self.assertEqual(rcpts[0]["Remote-MTA"], "dns; 127.0.0.1")
        self.assertEqual(b.count("postmaster@remote.test"), 0)
        self.assertEqual(rcpts[0]["Status"], "5.1.1")  # RFC 3464 2.3.4: the remote's own code

    def test_null_sender_failure_goes_to_the_postmaster_not_to_the_null_sender(self):
        reply = "550 5.1.1 <x@remote.test>: User unknown"
        sink = self.sink("127.0.0.1", None, "-f", "rcpt", "-B", reply, name="smarthost")
        s = self.server({"smarthost": smarthost(sink.port), "retry": FAST_RETRY})
        token = new_token()
        submit(s.port, "", ["x@remote.test"], token)
        report = self.wait_dsn(s, "postmaster@example.test")
        self.assertTrue(str(s.maildir("postmaster@example.test")).endswith("mailboxes/example.test/postmaster"))
        self.wait_queue_empty(s)
        _, rcpts = self.status_blocks(report)
        self.assertEqual([r["Final-Recipient"] for r in rcpts], ["rfc822; x@remote.test"])
        self.assertEqual(rcpts[0]["Diagnostic-Code"], f"smtp; {reply}")
        self.assertIn(token, report.as_string())
        time.sleep(1.0)  # nothing more may come: no second report, nothing sent anywhere
        self.assertEqual(s.count("postmaster@example.test"), 1)
        self.assertEqual(s.count("user@example.test"), 0)
        self.assertEqual(queue_ids(s.data_dir), [])
        self.assertEqual(sink.tokens(), [])

    def _watch_connections(self, sink_port: int, stop: threading.Event, samples: list[int]) -> None:
        while not stop.is_set():
            samples.append(ss_established(sink_port))
            stop.wait(0.05)

    def _limit_run(self, limit: int, messages: int) -> tuple[int, float]:
        require_program(self, "ss", "/usr/bin/ss")
        sink = self.sink("127.0.0.1", None, "-w", "1", name="slow")  # 1 s before answering DATA
        s = self.server({"smarthost": smarthost(sink.port), "retry": FAST_RETRY,
                         "outgoing": {"max_connections": limit}})
        samples: list[int] = []
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_connections, args=(sink.port, stop, samples), daemon=True)
        watcher.start()
        self.addCleanup(stop.set)
        tokens = [new_token() for _ in range(messages)]
        start = time.monotonic()
        for t in tokens:
            submit(s.port, "user@example.test", ["x@remote.test"], t)
        self.wait_queue_empty(s, timeout=messages * 1.5 + 15)
        elapsed = time.monotonic() - start
        stop.set()
        watcher.join(10)
        self.assertEqual(sorted(sink.tokens()), sorted(tokens))
        self.assertGreater(len(samples), 20, "too few samples of the open connections")
        return max(samples), elapsed

    def test_outgoing_limit_two_with_a_slow_destination(self):
        most, elapsed = self._limit_run(limit=2, messages=6)
        self.assertLessEqual(most, 2, "more outgoing connections than outgoing.max_connections=2")
        self.assertEqual(most, 2, "the limit of 2 was never used (and the watch proves nothing)")
        self.assertGreaterEqual(elapsed, 3.0 - 0.2)  # 6 messages, 1 s each, 2 at a time

    def test_a_slow_destination_gets_parallel_connections_not_one_long_batch(self):
        # Messages for one SmartHost wait in one line and may go several per request; but
        # one that takes a second each must not hold the others back: they get connections
        # of their own, up to the limit.
        most, elapsed = self._limit_run(limit=4, messages=8)
        self.assertEqual(most, 4, "the messages did not go over four connections at once")
        self.assertLess(elapsed, 6.0)  # one after another they take 8 s; four at a time, 2

    def test_outgoing_limit_one_is_strictly_serial(self):
        most, elapsed = self._limit_run(limit=1, messages=4)
        self.assertEqual(most, 1, "outgoing.max_connections=1 but not exactly one connection at a time")
        self.assertGreaterEqual(elapsed, 4.0 - 0.2)  # 4 messages of 1 s each, one after another

    def test_a_backlog_for_the_smarthost_leaves_in_batches_over_the_limits_connections(self):
        from tests.test_sender_pipelining import RecordingServer
        port = free_port()  # nothing there yet: every message is deferred for an hour
        s = self.server({"smarthost": smarthost(port), "retry": NO_RETRY})
        tokens = [new_token() for _ in range(40)]
        with smtplib.SMTP("127.0.0.1", s.port, local_hostname="client.test", timeout=30) as c:
            for t in tokens:
                c.sendmail("user@example.test", ["x@remote.test"],
                           message_text("user@example.test", ["x@remote.test"], t))
        self.wait_for(lambda: cli(s.data_dir, "queue", "list").stdout.count("attempts=1") >= 40,
                      30, "every message tried once")
        recorder = RecordingServer(port=port)
        self.addCleanup(recorder.close)
        r = cli(s.data_dir, "queue", "flush")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_queue_empty(s, timeout=30)
        got = [TOKEN.search(m.data.decode()).group(0) for m in recorder.messages]
        self.assertEqual(sorted(got), sorted(tokens), "each message exactly once")
        # The default outgoing limit is 2 connections; within each, a message's text went
        # in the same write as the next one's envelope (one round trip per message).
        self.assertLessEqual(len(recorder.connections), 2)
        joined = sum(1 for conn in recorder.connections for chunk in conn.chunks
                     if b"\r\n.\r\nmail FROM:" in chunk)
        self.assertGreaterEqual(joined, 20, "the backlog did not go in batches")

    def test_sigkill_during_delivery_load_loses_no_acknowledged_message(self):
        port = free_port()  # the SmartHost is down at first, so a backlog builds up
        s = self.server({"smarthost": smarthost(port), "retry": FAST_RETRY})
        acked: list[str] = []
        tokens = [new_token() for _ in range(300)]
        first, rest = tokens[:200], tokens[200:]
        with smtplib.SMTP("127.0.0.1", s.port, local_hostname="client.test", timeout=30) as c:
            for t in first:
                c.sendmail("user@example.test", ["x@remote.test"], message_text("user@example.test",
                                                                                ["x@remote.test"], t))
                acked.append(t)

        stop = threading.Event()
        submitter_errors: list[BaseException] = []

        def submit_more() -> None:  # more mail arrives while the backlog is delivered
            try:
                with smtplib.SMTP("127.0.0.1", s.port, local_hostname="client.test", timeout=30) as c:
                    for t in rest:
                        if stop.is_set():
                            return
                        c.sendmail("user@example.test", ["x@remote.test"],
                                   message_text("user@example.test", ["x@remote.test"], t))
                        acked.append(t)  # only after the 250
            except (smtplib.SMTPException, OSError) as e:
                submitter_errors.append(e)

        sink = self.sink("127.0.0.1", port, name="smarthost")
        submitter = threading.Thread(target=submit_more, daemon=True)
        submitter.start()
        self.addCleanup(stop.set)
        self.wait_for(lambda: len(sink.files()) >= 20, 20, "deliveries to start", interval=0.01)
        s.kill()
        killed_with = len(queue_ids(s.data_dir))
        stop.set()
        submitter.join(30)
        self.assertFalse(submitter.is_alive())
        self.assertGreater(killed_with, 20, "the kill did not interrupt a delivery load")

        s.start()  # same data folder
        self.wait_queue_empty(s, timeout=60)
        got = sink.tokens()
        missing = set(acked) - set(got)
        self.assertEqual(missing, set(), f"{len(missing)} acknowledged message(s) never reached the sink")
        self.assertLessEqual(set(got), set(tokens))
        twice = [t for t in set(got) if got.count(t) > 1]
        self.assertLessEqual(max((got.count(t) for t in got), default=0), 2)
        # Only deliveries under way at the kill (one per outgoing connection) may be repeated.
        self.assertLessEqual(len(twice), 2, f"{len(twice)} messages delivered twice")


class DirectDeliveryTest(DeliveryCase):
    """Direct delivery to smtp-sinks on 127.0.0.x:P, found through dnsmasq's MX records."""

    RECORDS = [
        # remote.test: two MX hosts, both up; mail must go to the preferred one.
        "--mx-host=remote.test,mx1.remote.test,10", "--mx-host=remote.test,mx2.remote.test,20",
        "--host-record=mx1.remote.test,127.0.0.2", "--host-record=mx2.remote.test,127.0.0.3",
        # down.test: the preferred MX does not listen at all.
        "--mx-host=down.test,dead.down.test,10", "--mx-host=down.test,mx2.remote.test,20",
        "--host-record=dead.down.test,127.0.0.5",
        # busy.test: the preferred MX answers, but refuses MAIL with a 4xx.
        "--mx-host=busy.test,busy.busy.test,10", "--mx-host=busy.test,mx2.remote.test,20",
        "--host-record=busy.busy.test,127.0.0.6",
        # onlydown.test: its only MX is down.
        "--mx-host=onlydown.test,dead.down.test,10",
        # aonly.test: no MX, an address: the implicit MX.
        "--host-record=aonly.test,127.0.0.4",
        # nullmx.test: "MX 0 ." (RFC 7505).
        "--mx-host=nullmx.test,.,0",
        # loop.test: its MX is ISMail itself (by its server_name).
        "--mx-host=loop.test,mx.example.test,10", "--host-record=mx.example.test,127.0.0.7",
    ]

    @classmethod
    def setUpClass(cls) -> None:
        cls.dns: Dnsmasq | None = None
        cls.sinks: dict[str, Sink] = {}
        program = require_program(cls(), "dnsmasq", "/usr/sbin/dnsmasq")
        sink_program = require_program(cls(), "smtp-sink", "/usr/sbin/smtp-sink")
        try:
            cls.dns = Dnsmasq(program, cls.RECORDS)
            plan = {"mx1": ("127.0.0.2",), "mx2": ("127.0.0.3",), "aonly": ("127.0.0.4",),
                    "busy": ("127.0.0.6", "-r", "mail")}
            for _ in range(5):  # one port P free on every address
                cls.mx_port = free_port("127.0.0.2")
                try:
                    for name, (host, *options) in plan.items():
                        cls.sinks[name] = Sink(sink_program, host, cls.mx_port, *options, name=name)
                    break
                except PortBusy:
                    for sink in cls.sinks.values():
                        sink.cleanup()
                    cls.sinks = {}
            else:
                raise AssertionError("no port free on all of 127.0.0.2-127.0.0.6")
            with socket.socket() as probe:  # the "down" MX really is down
                probe.settimeout(2)
                assert probe.connect_ex(("127.0.0.5", cls.mx_port)) != 0, "something listens on 127.0.0.5"
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        for sink in cls.sinks.values():
            sink.cleanup()
        cls.sinks = {}
        if cls.dns is not None:
            cls.dns.stop()
            cls.dns = None

    def direct(self, **extra) -> ServerProcess:
        settings = {"smarthost": {"enabled": False}, "dns_servers": [self.dns.server],
                    "outgoing": {"mx_port": self.mx_port}, "retry": FAST_RETRY}
        settings.update(extra)
        return self.server(settings)

    def where(self, token: str) -> dict[str, int]:
        return {name: sink.count(token) for name, sink in self.sinks.items() if sink.count(token)}

    def test_mail_goes_to_the_most_preferred_mx(self):
        s = self.direct()
        tokens = [new_token() for _ in range(3)]
        for t in tokens:
            submit(s.port, "user@example.test", ["x@remote.test"], t)
        self.wait_queue_empty(s)
        for t in tokens:
            self.assertEqual(self.where(t), {"mx1": 1})
        (dump,) = self.sinks["mx1"].dumps_with(tokens[0])
        self.assertEqual(dump.rcpts, ["<x@remote.test>"])
        self.assertEqual(dump.mail_args.split()[0], "<user@example.test>")
        self.assertEqual(dump.helo, "mx.example.test")

    def test_next_mx_when_the_first_does_not_listen(self):
        s = self.direct()
        token = new_token()
        submit(s.port, "user@example.test", ["x@down.test"], token)
        self.wait_queue_empty(s)
        self.assertEqual(self.where(token), {"mx2": 1})

    def test_next_mx_when_the_first_refuses_with_4xx(self):
        s = self.direct()
        token = new_token()
        submit(s.port, "user@example.test", ["x@busy.test"], token)
        self.wait_queue_empty(s)
        self.assertEqual(self.where(token), {"mx2": 1})
        self.assertEqual(s.count(), 0)  # no bounce, no warning

    def test_domain_without_mx_is_delivered_to_its_address(self):
        s = self.direct()
        token = new_token()
        submit(s.port, "user@example.test", ["x@aonly.test"], token)
        self.wait_queue_empty(s)
        self.assertEqual(self.where(token), {"aonly": 1})
        (dump,) = self.sinks["aonly"].dumps_with(token)
        self.assertEqual(dump.rcpts, ["<x@aonly.test>"])

    def test_null_mx_is_bounced_at_once(self):
        s = self.direct()
        token = new_token()
        submit(s.port, "user@example.test", ["x@nullmx.test"], token)
        dsn = self.wait_dsn(s, "user@example.test", timeout=10)
        self.wait_queue_empty(s)
        _, rcpts = self.status_blocks(dsn)
        self.assertEqual([r["Final-Recipient"] for r in rcpts], ["rfc822; x@nullmx.test"])
        self.assertEqual(rcpts[0]["Action"], "failed")
        self.assertEqual(rcpts[0]["Status"], "5.1.10")
        self.assertIn(token, dsn.as_string())
        self.assertEqual(self.where(token), {})

    def test_mx_that_is_this_server_is_bounced_as_a_loop(self):
        s = self.direct()
        token = new_token()
        submit(s.port, "user@example.test", ["x@loop.test"], token)
        dsn = self.wait_dsn(s, "user@example.test", timeout=10)
        self.wait_queue_empty(s)
        _, rcpts = self.status_blocks(dsn)
        self.assertEqual([r["Final-Recipient"] for r in rcpts], ["rfc822; x@loop.test"])
        self.assertTrue(rcpts[0]["Status"].startswith("5."), rcpts[0]["Status"])
        self.assertIn("loops back to myself", dsn.as_string())

    def test_not_exclusive_smarthost_unused_when_direct_works(self):
        sh = self.sink(name="smarthost")
        s = self.direct(smarthost=smarthost(sh.port, exclusive=False))
        token = new_token()
        submit(s.port, "user@example.test", ["x@remote.test"], token)
        self.wait_queue_empty(s)
        self.assertEqual(self.where(token), {"mx1": 1})
        self.assertEqual(sh.tokens(), [])

    def test_not_exclusive_smarthost_takes_what_direct_cannot_send(self):
        sh = self.sink(name="smarthost")
        s = self.direct(smarthost=smarthost(sh.port, exclusive=False))
        token = new_token()
        submit(s.port, "user@example.test", ["x@onlydown.test"], token)
        self.wait_queue_empty(s)
        self.assertEqual(self.where(token), {})
        self.assertEqual(sh.count(token), 1)
        (dump,) = sh.dumps_with(token)
        self.assertEqual(dump.rcpts, ["<x@onlydown.test>"])
        self.assertEqual(dump.mail_args.split()[0], "<user@example.test>")

    def test_not_exclusive_smarthost_takes_mail_when_dns_fails_for_now(self):
        sh = self.sink(name="smarthost")
        s = self.direct(smarthost=smarthost(sh.port, exclusive=False))
        token = new_token()
        # dnsmasq has no upstream: for a name outside .test it answers REFUSED (a temporary failure).
        submit(s.port, "user@example.test", ["x@nowhere.invalid"], token)
        self.wait_queue_empty(s)
        self.assertEqual(sh.count(token), 1)
        self.assertEqual(self.where(token), {})

    def test_unknown_domain_is_bounced(self):
        s = self.direct()
        token = new_token()
        submit(s.port, "user@example.test", ["x@nosuch.test"], token)  # NXDOMAIN
        dsn = self.wait_dsn(s, "user@example.test", timeout=10)
        self.wait_queue_empty(s)
        _, rcpts = self.status_blocks(dsn)
        self.assertEqual([r["Final-Recipient"] for r in rcpts], ["rfc822; x@nosuch.test"])
        self.assertTrue(rcpts[0]["Status"].startswith("5."), rcpts[0]["Status"])
        self.assertEqual(self.where(token), {})

    def test_not_exclusive_smarthost_not_used_for_a_permanent_failure(self):
        sh = self.sink(name="smarthost")
        s = self.direct(smarthost=smarthost(sh.port, exclusive=False))
        token = new_token()
        submit(s.port, "user@example.test", ["x@nullmx.test"], token)
        self.wait_dsn(s, "user@example.test", timeout=10)
        self.wait_queue_empty(s)
        self.assertEqual(sh.tokens(), [])


if __name__ == "__main__":
    unittest.main()


class UnexpectedErrorTest(unittest.TestCase):
    """An unexpected error inside a delivery attempt leaves the message queued for a retry."""

    def test_message_stays_queued_and_is_retried(self):
        import shutil as _shutil
        from unittest import mock

        from ismail.config import from_dict
        from ismail.service import MailServer

        data = Path(tempfile.mkdtemp(prefix="ismail-unexpected-"))
        self.addCleanup(_shutil.rmtree, data, ignore_errors=True)
        settings, _ = from_dict({"server_name": "mx.example.test", "primary_domain": "example.test",
                                 "listen": [f"127.0.0.1:{free_port()}"], "pop3": {"enabled": False}, "imap": {"enabled": False},
                                 "smarthost": {"enabled": True, "host": "127.0.0.1", "port": 9,
                                               "tls": "none"},
                                 "retry": {"first_seconds": 1, "max_interval_seconds": 1,
                                           "lifetime_hours": 1}})
        ms = MailServer(settings, data)
        ms.start()
        self.addCleanup(ms.stop, 2.0)
        calls = []

        def broken(*args, **kwargs):
            calls.append(time.monotonic())
            raise RuntimeError("a bug in delivery")

        with mock.patch.object(ms.qmgr.sender, "deliver_many", side_effect=broken):
            with self.assertLogs("ismail.scheduler", "ERROR"):
                ms.inject("user@example.test", ["x@remote.test"], b"Subject: t\r\n\r\nx\r\n")
                deadline = time.monotonic() + 15
                while len(calls) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
        self.assertGreaterEqual(len(calls), 2, "the message was not tried again")
        self.assertEqual(len(ms.qmgr.entries()), 1)
        self.assertEqual(list(queued_entries(data)), [e.id for e in ms.qmgr.entries()])
