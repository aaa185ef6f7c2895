#!/usr/bin/env python3
"""Does `python3 -m ismail loadtest` measure what Postfix's smtp-source measures?

Run by hand from the project root, never in CI (Linux; needs /usr/sbin/smtp-source from
the postfix package, whose system instance need not run):

    python3 bench/loadtest_check.py [--rounds 3] [--sessions 10] [--messages 2000] [--length 2048]

It starts one ISMail (`python3 -m ismail --data-dir DIR run`, DIR a temporary folder with
an ismail.json like ../shared/bench/compare.py writes: 127.0.0.1 on a free port, 100
connections, 10 per host, 127.0.0.0/8 trusted) with the account user@example.test, sends
a warm-up, then in every round the same load twice, the two clients taking turns at going
first:

    smtp-source -s S -m M -l L -f sender@example.test -t user@example.test 127.0.0.1:PORT
    python3 -m ismail loadtest 127.0.0.1:PORT -s S -m M -l L --from ... --to ...

smtp-source prints no rate, so its msg/s is M over its wall-clock time (as compare.py takes
it); the loadtest's is the one it prints (from its first connect to its last reply, without
Python's start-up), and its wall-clock rate is shown beside it.  Every message must be in
the Maildir before the next run, which starts from an empty one.  CPU columns: seconds of
CPU the client and the server used in the run, as % of the run's wall time (100 % = one
core), to show whether the client is the bottleneck.  smtp-source's -l counts the body
only, the loadtest's the whole message: smtp-source's messages are ~150 bytes bigger.

The goal: the loadtest within 20 % of smtp-source (ratio 0.8-1.2).  The last line printed
is the summary: the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = "/usr/sbin/smtp-source"
SENDER, RCPT = "sender@example.test", "user@example.test"
RUN_TIMEOUT = 600       # seconds one client run may take
ARRIVAL_TIMEOUT = 120   # seconds for the last messages to be counted in the Maildir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_banner(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"ISMail did not greet on port {port} within {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class ISMail:
    def __init__(self, root: Path) -> None:
        self.data = root / "ismail"
        self.data.mkdir()
        self.port = free_port()
        cfg = {"server_name": "bench.example.test", "primary_domain": "example.test",
               "listen": [f"127.0.0.1:{self.port}"],
               "pop3": {"enabled": False}, "imap": {"enabled": False},
               "incoming": {"max_connections": 100, "max_per_host": 10},
               "trusted_networks": ["127.0.0.0/8"]}
        (self.data / "ismail.json").write_text(json.dumps(cfg, indent=1))
        cli = [sys.executable, "-m", "ismail", "--data-dir", str(self.data)]
        subprocess.run(cli + ["account", "add", RCPT], cwd=REPO, input=b"bench-password\n",
                       check=True, stdout=subprocess.DEVNULL, timeout=60)
        self.log = open(root / "ismail.log", "wb")
        self.proc = subprocess.Popen(cli + ["run"], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        wait_banner(self.port, self.proc)
        self.box = self.data / "mailboxes" / "example.test" / "user"

    def stored(self) -> int:
        return sum(len(os.listdir(self.box / d)) for d in ("new", "cur") if (self.box / d).is_dir())

    def empty(self) -> None:
        for d in ("new", "cur"):
            for name in os.listdir(self.box / d) if (self.box / d).is_dir() else ():
                os.unlink(self.box / d / name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def one_run(name: str, server: ISMail, s: int, m: int, length: int) -> dict:
    if name == "smtp-source":
        argv = [SOURCE, "-s", str(s), "-m", str(m), "-l", str(length), "-f", SENDER, "-t", RCPT,
                f"127.0.0.1:{server.port}"]
    else:
        argv = [sys.executable, "-m", "ismail", "loadtest", f"127.0.0.1:{server.port}", "-s", str(s),
                "-m", str(m), "-l", str(length), "--from", SENDER, "--to", RCPT]
    server.empty()
    client_cpu, server_cpu = children_cpu(), cpu_seconds(server.proc.pid)
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    wall = time.perf_counter() - t0
    client_cpu, server_cpu = children_cpu() - client_cpu, cpu_seconds(server.proc.pid) - server_cpu
    if r.returncode != 0:
        raise SystemExit(f"{name} failed (exit {r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while server.stored() < m:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: only {server.stored()} of {m} messages arrived")
        time.sleep(0.01)
    out = {"wall": m / wall, "client_cpu": 100 * client_cpu / wall, "server_cpu": 100 * server_cpu / wall}
    if name == "smtp-source":
        out["rate"] = out["wall"]
    else:
        out["rate"] = float(re.search(r"^messages/s:\s+([\d.]+)", r.stdout, re.M).group(1))
        out["latency"] = re.search(r"^latency ms:\s+(.*)$", r.stdout, re.M).group(1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--length", type=int, default=2048)
    opts = ap.parse_args()
    if not Path(SOURCE).exists():
        raise SystemExit(f"{SOURCE} is missing: apt-get install postfix (its service need not run)")
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; "
          f"-s {opts.sessions} -m {opts.messages} -l {opts.length}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="ismail-loadtest-check-"))
    server = ISMail(root)
    ratios = []
    try:
        one_run("smtp-source", server, 5, 200, opts.length)  # warm-up, not counted
        one_run("loadtest", server, 5, 200, opts.length)
        for rnd in range(1, opts.rounds + 1):
            order = ("smtp-source", "loadtest") if rnd % 2 else ("loadtest", "smtp-source")
            got = {name: one_run(name, server, opts.sessions, opts.messages, opts.length) for name in order}
            for name in order:
                g = got[name]
                extra = f"  (wall {g['wall']:.0f} msg/s; latency ms {g['latency']})" if "latency" in g else ""
                print(f"round {rnd}  {name:11s} {g['rate']:7.0f} msg/s   client CPU {g['client_cpu']:4.0f} %"
                      f"   server CPU {g['server_cpu']:4.0f} %{extra}", flush=True)
            ratio = got["loadtest"]["rate"] / got["smtp-source"]["rate"]
            wall_ratio = got["loadtest"]["wall"] / got["smtp-source"]["rate"]
            ratios.append(ratio)
            print(f"round {rnd}  loadtest/smtp-source = {ratio:.2f} (wall clock: {wall_ratio:.2f})", flush=True)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    median = statistics.median(ratios)
    verdict = "within 20 %" if 0.8 <= median <= 1.2 else "NOT within 20 %"
    print(f"summary: loadtest/smtp-source msg/s ratio, median of {len(ratios)} rounds: {median:.2f} ({verdict})")


if __name__ == "__main__":
    main()
