#!/usr/bin/env python3
"""A soak: one ISMail under a steady mixed load for a while, watched for leaks and losses.

    python3 bench/soak.py [--minutes 15] [--report 30] [--tls [--tls-rate 5]]

Run by hand from the project root (Linux, as root or not), never in CI: it needs Postfix's
/usr/sbin/smtp-source and /usr/sbin/smtp-sink (the postfix package; its system instance
need not run).  Nothing leaves loopback: the SmartHost is smtp-sink on 127.0.0.1 and the
anti-spam DNS checks are off.

One ISMail (`python3 -m ismail --data-dir DIR run`, DIR a temporary folder) with POP3 and
IMAP on loopback, 127.0.0.0/8 trusted, DKIM signing as a new server sets it up, and two
accounts.  Four loads run side by side until the time is up:

- local mail: smtp-source, 4 sessions, batches of 500 messages of 2 KiB, taking turns to
  imap@example.test and pop@example.test;
- relayed mail: the same to friend@remote.test (DKIM-signed, sent on to smtp-sink);
- an IMAP reader (imaplib): LOGIN, SELECT INBOX, UID FETCH of up to 200 whole messages,
  \\Deleted, EXPUNGE, LOGOUT, again and again;
- a POP3 reader (poplib): USER/PASS, RETR and DELE of up to 200 messages, QUIT.

With --tls the server makes its self-signed certificate, POP3 and IMAP refuse plaintext
logins, both readers start TLS (STLS, STARTTLS) every round, and a fifth load runs: a mail
program on STARTTLS + AUTH (smtplib) sending up to --tls-rate sessions a second of 5
messages each to a third account, every message with a Received line of its own (mail from
another server, so the duplicate filter records a key for each), and the first message of
every 4th session sent twice: the repeat must be dropped as a duplicate.  That account is
read once, at the end: it must hold each message once.

Every --report seconds it prints the server's resident size, threads and open files, the
delivery process's resident size, and the counts so far.  When the time is up the loads
stop, the queue and both mailboxes are drained, and it checks that every message
smtp-source had accepted was read by the reader of its account or reached smtp-sink, and
that the logs hold no ERROR or Traceback.  The last line says PASS or FAIL.
"""
from __future__ import annotations

import argparse
import imaplib
import json
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from email.utils import formatdate
from functools import partial
from pathlib import Path

# smtp-sink on loopback counting what it was given, and a free loopback port (as queue_bench)
from dkim_bench import SINK, SOURCE, Sink, free_port

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "soak-password-1"
BATCH, SESSIONS, LENGTH = 500, 4, 2048


def wait_banner(port: int, timeout: float = 60.0) -> None:
    """Any of SMTP's, POP3's and IMAP's greetings (dkim_bench's waits for SMTP's 220 only)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                if s.recv(512)[:1] in (b"2", b"+", b"*"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing answered on port {port} within {timeout:.0f} s")


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = {"imap": 0, "pop": 0, "relay": 0, "tls": 0}
        self.repeats = 0          # --tls: messages sent a second time, to be dropped
        self.read = {"imap": 0, "pop": 0}
        self.failures: list[str] = []

    def add(self, table: dict, key: str, n: int) -> None:
        with self.lock:
            table[key] += n

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)
        print(f"  ! {what}", flush=True)


def proc_status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in lines if ":" in line)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def smtp_load(port: int, counts: Counts, stop: threading.Event, targets: list[tuple[str, str]]) -> None:
    turn = 0
    while not stop.is_set():
        key, rcpt = targets[turn % len(targets)]
        turn += 1
        r = subprocess.run([SOURCE, "-s", str(SESSIONS), "-m", str(BATCH), "-l", str(LENGTH),
                            "-f", "sender@example.test", "-t", rcpt, f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or r.stderr.strip():
            # Which messages of the batch were taken is unknown: the counts stop being exact.
            counts.fail(f"smtp-source to {rcpt}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
            return
        counts.add(counts.sent, key, BATCH)


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE    # the server's own self-signed certificate
    return ctx


def tls_submit(port: int, counts: Counts, stop: threading.Event, rate: float) -> None:
    """A mail program on STARTTLS + AUTH: sessions of 5 messages that came from another server."""
    ctx, session = client_tls(), 0
    while not stop.is_set():
        started = time.monotonic()
        session += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
                s.starttls(context=ctx)
                s.login("tls@example.test", PASSWORD)
                for i in range(5):
                    msg = (f"Received: from peer.remote.test (peer.remote.test [192.0.2.7])\r\n"
                           f"\tby mx.remote.test with ESMTP id S{session}M{i}; {formatdate()}\r\n"
                           f"From: <far@remote.test>\r\nTo: <tls@example.test>\r\n"
                           f"Subject: soak {session}.{i}\r\n"
                           f"Message-ID: <soak.{session}.{i}@remote.test>\r\n\r\n"
                           + "a line of text for the soak\r\n" * 40)
                    s.sendmail("far@remote.test", ["tls@example.test"], msg)
                    counts.add(counts.sent, "tls", 1)
                    if i == 0 and session % 4 == 0:
                        s.sendmail("far@remote.test", ["tls@example.test"], msg)
                        with counts.lock:
                            counts.repeats += 1
        except Exception as e:
            # Whether the message in flight was taken is unknown: the counts stop being exact.
            counts.fail(f"TLS submission, session {session}: {e!r}")
            return
        time.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))


@contextmanager
def imap_login(port: int, address: str, tls: ssl.SSLContext | None, timeout: float = 60):
    """An IMAP session logged in as ``address`` (after STARTTLS with ``tls``), shut at the end."""
    m = imaplib.IMAP4("127.0.0.1", port, timeout=timeout)
    try:
        if tls is not None:
            m.starttls(tls)
        m.login(address, PASSWORD)
        yield m
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass


def tls_account_check(port: int, ctx: ssl.SSLContext) -> tuple[int, int]:
    """(messages, distinct Message-IDs) in the TLS account's INBOX, read once at the end."""
    with imap_login(port, "tls@example.test", ctx, timeout=120) as m:
        m.select("INBOX", readonly=True)
        typ, rows = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        ids = [r[1].strip() for r in rows if isinstance(r, tuple)]
    return len(ids), len(set(ids))


def imap_round(port: int, counts: Counts, tls: ssl.SSLContext | None = None) -> int:
    with imap_login(port, "imap@example.test", tls) as m:
        m.select("INBOX")
        typ, data = m.uid("SEARCH", None, "ALL")
        uids = data[0].split()[:200]
        if uids:
            typ, rows = m.uid("FETCH", b",".join(uids).decode(), "(BODY.PEEK[])")
            bodies = [r[1] for r in rows if isinstance(r, tuple)]
            if len(bodies) != len(uids) or not all(b.count(b"\r\n") > 2 for b in bodies):
                counts.fail(f"IMAP: {len(bodies)} bodies for {len(uids)} UIDs")
            m.uid("STORE", b",".join(uids).decode(), "+FLAGS.SILENT", r"(\Deleted)")
            m.expunge()
        counts.add(counts.read, "imap", len(uids))
    return len(uids)


def pop_round(port: int, counts: Counts, tls: ssl.SSLContext | None = None) -> int:
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        if tls is not None:
            p.stls(tls)
        p.user("pop@example.test")
        p.pass_(PASSWORD)
        n = min(p.stat()[0], 200)
        for i in range(1, n + 1):
            lines = p.retr(i)[1]
            if len(lines) < 3:
                counts.fail(f"POP3: message {i} has {len(lines)} lines")
            p.dele(i)
        p.quit()
        counts.add(counts.read, "pop", n)
        return n
    finally:
        try:
            p.close()
        except OSError:
            pass


def reader(round_fn, port: int, counts: Counts, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if round_fn(port, counts) == 0:
                time.sleep(0.5)
        except Exception as e:  # a reader that fails is a finding, not a reason to stop
            counts.fail(f"{getattr(round_fn, 'func', round_fn).__name__}: {e!r}")
            time.sleep(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--report", type=float, default=30.0, help="seconds between reports")
    ap.add_argument("--tls", action="store_true",
                    help="readers on TLS, plus a mail program on STARTTLS + AUTH (see above)")
    ap.add_argument("--tls-rate", type=float, default=5.0,
                    help="--tls: the mail program's sessions a second at most (5 messages each)")
    args = ap.parse_args()
    for tool in (SOURCE, SINK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing (apt-get install postfix)")
    folder = Path(tempfile.mkdtemp(prefix="ismail-soak-"))
    sink = server = None
    try:
        sink = Sink(folder)
        data = folder / "data"
        data.mkdir()
        port, pop_port, imap_port = free_port(), free_port(), free_port()
        (data / "ismail.json").write_text(json.dumps({
            "server_name": "soak.example.test", "primary_domain": "example.test",
            "listen": [f"127.0.0.1:{port}"], "tls": {"self_signed": args.tls},
            "pop3": {"listen": [f"127.0.0.1:{pop_port}"], "allow_plaintext": not args.tls},
            "imap": {"listen": [f"127.0.0.1:{imap_port}"], "allow_plaintext": not args.tls},
            "incoming": {"max_connections": 100, "max_per_host": 10},
            "outgoing": {"max_connections": 20}, "trusted_networks": ["127.0.0.0/8"],
            "antispam": {"rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off",
                         "connection_rate": 0},
            "smarthost": {"enabled": True, "host": "127.0.0.1", "port": sink.port,
                          "exclusive": True, "tls": "none"}}))
        cli = [sys.executable, "-m", "ismail", "--data-dir", str(data)]
        for account in ("imap@example.test", "pop@example.test", "tls@example.test"):
            subprocess.run(cli + ["account", "add", account], input=PASSWORD + "\n", text=True,
                           cwd=ROOT, check=True, capture_output=True)
        server = subprocess.Popen(cli + ["run"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=(folder / "run.log").open("wb"))
        for p in (port, pop_port, imap_port):
            wait_banner(p)
        print(f"ISMail pid {server.pid}, SMTP {port}, POP3 {pop_port}, IMAP {imap_port}; "
              f"{args.minutes:g} minutes", flush=True)

        counts, stop = Counts(), threading.Event()
        loads = [
            threading.Thread(target=smtp_load, args=(port, counts, stop, [
                ("imap", "imap@example.test"), ("pop", "pop@example.test")])),
            threading.Thread(target=smtp_load, args=(port, counts, stop, [("relay", "friend@remote.test")])),
        ]
        tls = client_tls() if args.tls else None
        imap_read, pop_read = partial(imap_round, tls=tls), partial(pop_round, tls=tls)
        if args.tls:
            loads.append(threading.Thread(target=tls_submit, args=(port, counts, stop, args.tls_rate)))
        readers = [threading.Thread(target=reader, args=(imap_read, imap_port, counts, stop)),
                   threading.Thread(target=reader, args=(pop_read, pop_port, counts, stop))]
        for t in loads + readers:
            t.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        print(" minute  server-RSS  threads  files  delivery-RSS   local sent/read   relayed sent/at sink",
              flush=True)
        samples = []
        while True:
            now = time.monotonic()
            st = proc_status(server.pid)
            kids = children(server.pid)
            kid_rss = sum(int(proc_status(k).get("VmRSS", "0 kB").split()[0]) for k in kids)
            rss = int(st.get("VmRSS", "0 kB").split()[0])
            threads = int(st.get("Threads", "0"))
            files = len(os.listdir(f"/proc/{server.pid}/fd")) if server.poll() is None else 0
            with counts.lock:
                local_sent = counts.sent["imap"] + counts.sent["pop"]
                local_read = counts.read["imap"] + counts.read["pop"]
                relayed = counts.sent["relay"]
            samples.append((now - started, rss, threads, files))
            print(f" {(now - started) / 60:6.1f}  {rss / 1024:8.1f} MB  {threads:7d}  {files:5d}"
                  f"  {kid_rss / 1024:9.1f} MB   {local_sent:7d} / {local_read:<7d}  "
                  f"{relayed:7d} / {sink.count()}", flush=True)
            if server.poll() is not None:
                counts.fail(f"the server ended (exit {server.returncode})")
                break
            if now >= end:
                break
            time.sleep(min(args.report, max(0.1, end - now)))

        stop.set()
        for t in loads:
            t.join(660)
        for t in readers:
            t.join(120)
        # Drain: everything relayed reaches the sink, both mailboxes are read to the end.
        deadline = time.monotonic() + 300
        while sink.count() < counts.sent["relay"] and time.monotonic() < deadline:
            time.sleep(0.2)
        for round_fn, p in ((imap_read, imap_port), (pop_read, pop_port)):
            for _ in range(10_000):
                if round_fn(p, counts) == 0:
                    break
        ok = not counts.failures
        for key in ("imap", "pop"):
            if counts.read[key] != counts.sent[key]:
                ok = False
                print(f"  ! {key}: {counts.sent[key]} sent, {counts.read[key]} read")
        if sink.count() != counts.sent["relay"]:
            ok = False
            print(f"  ! relayed: {counts.sent['relay']} sent, {sink.count()} at the sink")
        if args.tls:
            held, distinct = tls_account_check(imap_port, tls)
            keys = sum(1 for _ in (data / "delivered.log").open("rb")) if (data / "delivered.log").exists() else 0
            print(f"TLS account: {counts.sent['tls']} messages sent and {counts.repeats} sent again; "
                  f"it holds {held} ({distinct} distinct); the duplicate filter keeps {keys} keys")
            if held != counts.sent["tls"] or distinct != held:
                ok = False
                print("  ! the TLS account should hold each message sent exactly once")
        server.terminate()
        server.wait(60)
        logs = (folder / "run.log").read_text(errors="replace")
        for path in (data / "logs").glob("*.log"):
            logs += path.read_text(errors="replace")
        bad = [line for line in logs.splitlines() if re.search(r"\bERROR\b|Traceback|CRITICAL", line)]
        if bad:
            ok = False
            print(f"  ! {len(bad)} ERROR/Traceback lines in the logs, the first: {bad[:3]}")
        first = next((s for s in samples if s[0] >= 120), samples[0])
        last = samples[-1]
        print(f"local mail: {counts.sent['imap']} + {counts.sent['pop']} sent, "
              f"{counts.read['imap']} + {counts.read['pop']} read (IMAP + POP3); relayed: "
              f"{counts.sent['relay']} sent, {sink.count()} at the sink")
        print(f"from minute {first[0] / 60:.1f} to {last[0] / 60:.1f}: server RSS {first[1] / 1024:.1f} -> "
              f"{last[1] / 1024:.1f} MB, threads {first[2]} -> {last[2]}, open files {first[3]} -> {last[3]}")
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        if sink is not None:
            sink.proc.terminate()
            sink.proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
