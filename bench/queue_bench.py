"""ISMail with a big queue of deferred messages (issue 11): how soon it serves, and how
soon `queue list` shows its first line.

    python3 bench/queue_bench.py [N]          (default 100000; run by hand, never in CI)

Writes N deferred entries (2 KiB each, next try in two hours) straight into a fresh
DATA/queue/messages/ in a temporary folder, starts `python3 -m ismail run` on a free
loopback port (SmartHost on a closed loopback port: nothing leaves the machine) and
prints the seconds until the SMTP greeting, the resident size then, and the seconds
until the first and the last line of `queue list`.  Needs ~N x 2.5 KB of /tmp.

    python3 bench/queue_bench.py N --relay

also checks that new mail is still relayed at the usual rate: the SmartHost is then
Postfix's smtp-sink on loopback (the deferred entries wait two hours, so only new
mail reaches it), and smtp-source sends 5,000 messages in 10 sessions once the queue
is read; run it with N = 0 too, for the usual rate on this machine.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ismail.fsutil import new_queue_id  # noqa: E402
from ismail.queue.spool import QueueEntry, QueuedRecipient, file_head  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--relay"]
    n = int(args[0]) if args else 100_000
    data = Path(tempfile.mkdtemp(prefix="ismail-queue-bench-"))
    sink = None
    try:
        if "--relay" in sys.argv:
            from dkim_bench import Sink  # the same smtp-sink wrapper
            sink = Sink(data)
        run(data, n, sink)
    finally:
        if sink is not None:
            sink.proc.terminate()
            sink.proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)
        if hasattr(os, "sync"):
            os.sync()   # the removal too, before a next run is measured


def run(data: Path, n: int, sink=None) -> None:
    messages = data / "queue" / "messages"
    messages.mkdir(parents=True)
    port = free_port()
    (data / "ismail.json").write_text(json.dumps({
        "server_name": "mx.example.test", "primary_domain": "example.test",
        "listen": [f"127.0.0.1:{port}"], "pop3": {"enabled": False}, "imap": {"enabled": False},
        "tls": {"self_signed": False}, "dkim": {"auto_keys": False},
        "trusted_networks": ["127.0.0.0/8"], "outgoing": {"max_connections": 20},
        "incoming": {"max_connections": 100, "max_per_host": 10},
        "smarthost": {"enabled": True, "host": "127.0.0.1", "port": sink.port if sink else 9,
                      "exclusive": True, "tls": "none"}}))
    body = b"Subject: deferred\r\n\r\n" + b"x" * 2000 + b"\r\n"
    later, t = time.time() + 7200, time.perf_counter()
    for _ in range(n):
        e = QueueEntry(id=new_queue_id(), sender="a@example.test",
                       recipients=[QueuedRecipient("b@remote.test", attempts=1, last_error="4.4.1 Cannot connect")],
                       arrival=time.time() - 600, size=len(body), attempts=1, next_try=later,
                       last_error="4.4.1 Cannot connect")
        (messages / f"{e.id}.msg").write_bytes(file_head(e) + body)
    print(f"wrote {n} deferred entries in {time.perf_counter() - t:.1f} s", flush=True)
    # On the disk before the server starts: what was written just now (0.5-0.8 s of
    # writeback here) is otherwise flushed by the kernel while the server reads the queue or
    # relays, beside the journal's syncs; a run with an empty queue has no such load.
    if hasattr(os, "sync"):
        t = time.perf_counter()
        os.sync()
        print(f"synced in {time.perf_counter() - t:.1f} s", flush=True)
    cli = [sys.executable, "-m", "ismail", "--data-dir", str(data)]
    t = time.perf_counter()
    server = subprocess.Popen(cli + ["run"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        break
            except OSError:
                time.sleep(0.02)
            if time.perf_counter() - t > 120 or server.poll() is not None:
                raise SystemExit("ISMail did not greet within 120 s")
        served = time.perf_counter() - t
        status = Path(f"/proc/{server.pid}/status")
        rss = next((l.split(":")[1].strip() for l in status.read_text().splitlines()
                    if l.startswith("VmRSS")), "?") if status.exists() else "?"
        print(f"greeting {served:.2f} s after start (resident {rss})", flush=True)
        t = time.perf_counter()
        listing = subprocess.Popen(cli + ["queue", "list"], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        listing.stdout.readline()
        first = time.perf_counter() - t
        listing.stdout.read()
        listing.wait()
        print(f"queue list: first line {first:.2f} s, all of it {time.perf_counter() - t:.2f} s", flush=True)
        if sink is not None:
            relay_rate(port, sink)
    finally:
        server.terminate()
        server.wait(30)


def relay_rate(port: int, sink) -> None:
    before, t = sink.count(), time.perf_counter()
    r = subprocess.run(["/usr/sbin/smtp-source", "-s", "10", "-m", "5000", "-l", "2048",
                        "-f", "sender@example.test", "-t", "user@remote.test", f"127.0.0.1:{port}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"smtp-source failed: {r.stderr[-300:]}")
    deadline = time.time() + 600
    while sink.count() - before < 5000:
        if time.time() > deadline:
            raise SystemExit(f"only {sink.count() - before} of 5000 relayed")
        time.sleep(0.01)
    print(f"new mail relayed: {5000 / (time.perf_counter() - t):.0f} msg/s (10 sessions, 2 KiB)", flush=True)


if __name__ == "__main__":
    main()
