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
mail reaches it), and smtp-source sends 5,000 messages in 10 sessions right after the
greeting, while the queue is still being read, and again once it is read; run it with
N = 0 too, for the usual rate on this machine.

    python3 bench/queue_bench.py N --window [--relay]

measures the queue window (Tools > Queue) instead, with the server in the same process as
in the .exe: how soon its first page shows when opened while the server starts, while it
reads the queue, once it has, and (with --relay) while new mail is relayed; and how soon
the start ends (the window then shows the server running) and the queue is read.
Without a DISPLAY it runs itself under xvfb-run.
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
    if "--window" in sys.argv and not os.environ.get("DISPLAY") and os.name != "nt":
        os.execvp("xvfb-run", ["xvfb-run", "-a", sys.executable, *sys.argv])  # a virtual screen
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 100_000
    data = Path(tempfile.mkdtemp(prefix="ismail-queue-bench-"))
    sink = None
    try:
        if "--relay" in sys.argv:
            from dkim_bench import Sink  # the same smtp-sink wrapper
            sink = Sink(data)
        (run_window if "--window" in sys.argv else run)(data, n, sink)
    finally:
        if sink is not None:
            sink.proc.terminate()
            sink.proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)
        if hasattr(os, "sync"):
            os.sync()   # the removal too, before a next run is measured


def write_queue(data: Path, n: int, sink=None) -> int:
    """N deferred entries and the settings in DATA; returns the SMTP port."""
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
    return port


def run(data: Path, n: int, sink=None) -> None:
    port = write_queue(data, n, sink)
    cli = [sys.executable, "-m", "ismail", "--data-dir", str(data)]
    t = time.perf_counter()
    server = subprocess.Popen(cli + ["run"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        served = time.perf_counter() - t
                        s.sendall(b"QUIT\r\n")
                        while s.recv(100):   # until the server hangs up
                            pass
                        break
            except OSError:
                time.sleep(0.02)
            if time.perf_counter() - t > 120 or server.poll() is not None:
                raise SystemExit("ISMail did not greet within 120 s")
        time.sleep(0.1)   # this session off the per-host count before smtp-source's 10 come
        status = Path(f"/proc/{server.pid}/status")
        rss = next((l.split(":")[1].strip() for l in status.read_text().splitlines()
                    if l.startswith("VmRSS")), "?") if status.exists() else "?"
        print(f"greeting {served:.2f} s after start (resident {rss})", flush=True)
        if sink is not None and n:
            relay_rate(port, sink, "while the queue is read")
            print("  (the queue was read before the 5,000 were: rate partly after the reading)"
                  if queue_read(data) else "  (the queue still being read at the end)", flush=True)
        t = time.perf_counter()
        listing = subprocess.Popen(cli + ["queue", "list"], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        listing.stdout.readline()
        first = time.perf_counter() - t
        listing.stdout.read()
        listing.wait()
        print(f"queue list: first line {first:.2f} s, all of it {time.perf_counter() - t:.2f} s", flush=True)
        if sink is not None:
            end = time.perf_counter() + 600
            while n and not queue_read(data):   # (an empty queue: nothing to read, no line)
                if time.perf_counter() > end:
                    raise SystemExit("the queue was not read within 600 s")
                time.sleep(0.1)
            if n:
                print(queue_read(data), flush=True)
            relay_rate(port, sink, "once the queue is read" if n else "")
    finally:
        server.terminate()
        server.wait(30)


def run_window(data: Path, n: int, sink=None) -> None:
    """The queue window (Tools > Queue) as a user meets it: the server runs in this process
    beside the window, as in the .exe.  Opened while the server starts, while it reads the
    queue, once it has, and (with --relay) while smtp-source sends through it.
    Prints the seconds from opening to the first page shown, and the longest the window's
    event loop was kept from a 20 ms heartbeat (what a user sees as a freeze)."""
    import threading
    import tkinter as tk
    from gui.controller import Controller
    from gui.queueview import QueueWindow

    port = write_queue(data, n, sink)
    root = tk.Tk()
    root.geometry("400x300")
    controller = Controller(data)
    if not controller.load_settings():
        raise SystemExit(f"settings: {controller.settings_problem}")
    beats: list[float] = []

    def beat() -> None:
        beats.append(time.perf_counter())
        root.after(20, beat)

    def pump(condition, timeout: float, what: str) -> None:
        end = time.perf_counter() + timeout
        while not condition():
            if time.perf_counter() > end:
                raise SystemExit(f"{what}: not within {timeout} s")
            root.update()
            time.sleep(0.005)

    def measure(label: str) -> None:
        beats.clear()
        beat()
        t = time.perf_counter()
        window = QueueWindow(root, controller)
        opened = time.perf_counter() - t
        pump(lambda: window.loaded, 120, f"{label}: the first page")
        shown = time.perf_counter() - t
        pump(lambda: time.perf_counter() - t > shown + 0.3, 5, "")
        gaps = [b - a for a, b in zip(beats, beats[1:])]
        print(f"queue window, {label}: open {opened:.2f} s, first page {shown:.2f} s "
              f"({len(window.ids):,} ids), longest freeze {max(gaps, default=0):.2f} s", flush=True)
        window.close()
        root.update()

    started: list[object] = []
    t = time.perf_counter()
    threading.Thread(target=lambda: started.append(controller.start()), daemon=True).start()
    try:
        pump(lambda: time.perf_counter() - t > 0.2, 5, "")
        measure("while the server starts")
        pump(lambda: started, 120, "the server's start")
        if started[0] is not None:
            raise SystemExit(f"the server did not start: {started[0]}")
        print(f"server started {time.perf_counter() - t:.2f} s after the start was asked", flush=True)
        qmgr = controller.server.qmgr
        if not qmgr.wait_loaded(0):
            measure("while the queue is read")
        pump(lambda: qmgr.wait_loaded(0), 120, "the queue's reading")
        print(f"queue read {time.perf_counter() - t:.2f} s after the start was asked", flush=True)
        measure("the queue read")
        if sink is not None:
            load = threading.Thread(target=relay_rate, args=(port, sink), daemon=True)
            load.start()
            settle = time.perf_counter() + 1
            pump(lambda: time.perf_counter() > settle, 10, "")
            measure("while 10 sessions relay")
            pump(lambda: not load.is_alive(), 600, "the relay load")
    finally:
        controller.stop()
        root.destroy()


def queue_read(data: Path) -> str:
    """The log's line saying that the queue on disk at the start is read ('' until then)."""
    log = data / "logs" / "maillog.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return next((line for line in text.splitlines() if "waiting in the outgoing queue in" in line), "")


def relay_rate(port: int, sink, when: str = "") -> None:
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
    print(f"new mail relayed{' ' + when if when else ''}: {5000 / (time.perf_counter() - t):.0f} msg/s "
          "(10 sessions, 2 KiB)", flush=True)


if __name__ == "__main__":
    main()
