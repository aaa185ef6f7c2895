"""What DKIM signing costs the relay (issue 12: "signing does not slow the relay
benchmark by more than 10 %").

    python3 bench/dkim_bench.py [--rounds 3] [--loads s10,s1]      (by hand, never in CI)

The relay scenario of ../shared/bench/compare.py, ISMail only: Postfix's smtp-source
sends 2 KiB messages from sender@example.test to user@remote.test through ISMail,
which passes them to Postfix's smtp-sink (its SmartHost, exclusive) on loopback; a
load is timed until the sink has counted every message.  Three set-ups, alternated
within each round so the machine's drift cancels out:

  unsigned   dkim.enabled false
  signed     a 2048-bit key for example.test; RSA in the OpenSSL of CPython's ssl
  pow        the same key, ISMAIL_RSA=python: RSA with Python's pow()

It prints msg/s per round and, per load, the median of signed/unsigned and
pow/unsigned.  Needs postfix's smtp-source and smtp-sink (Debian: apt-get install
postfix, debconf "No configuration"); as root smtp-sink runs as nobody.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, SINK = "/usr/sbin/smtp-source", "/usr/sbin/smtp-sink"
LOADS = {"s10": (["-s", "10", "-m", "5000", "-l", "2048"], 5000),
         "s1": (["-s", "1", "-m", "1000", "-l", "2048"], 1000)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_banner(port: int, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing answered 220 on port {port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Sink:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.log = folder / "sink.log"
        argv = [SINK, "-c", f"127.0.0.1:{self.port}", "1000"]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "nobody"]
        self.proc = subprocess.Popen(argv, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        wait_banner(self.port)

    def count(self) -> int:
        tail = self.log.read_bytes()[-300:].decode("latin-1")
        recs = [r for r in tail.replace("\n", "\r").split("\r") if "mesg=" in r]
        return int(recs[-1].rsplit("mesg=", 1)[1].split()[0]) if recs else 0


def start_ismail(folder: Path, setup: str, sink: Sink) -> tuple[subprocess.Popen, int]:
    data = folder / setup
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    (data / "ismail.json").write_text(json.dumps({
        "server_name": "bench.example.test", "primary_domain": "example.test",
        "listen": [f"127.0.0.1:{port}"], "pop3": {"enabled": False}, "imap": {"enabled": False},
        "incoming": {"max_connections": 100, "max_per_host": 10}, "outgoing": {"max_connections": 20},
        "trusted_networks": ["127.0.0.0/8"], "tls": {"self_signed": False},
        "dkim": {"enabled": setup != "unsigned", "auto_keys": False},
        "smarthost": {"enabled": True, "host": "127.0.0.1", "port": sink.port, "exclusive": True,
                      "authenticate": False, "tls": "none"}}))
    cli = [sys.executable, "-m", "ismail", "--data-dir", str(data)]
    if setup != "unsigned":
        subprocess.run(cli + ["dkim", "new", "example.test"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    env = {**os.environ, **({"ISMAIL_RSA": "python"} if setup == "pow" else {})}
    proc = subprocess.Popen(cli + ["run"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=(folder / f"{setup}.log").open("ab"))
    wait_banner(port)
    return proc, port


def one_load(port: int, sink: Sink, args: list[str], n: int) -> float:
    before, t0 = sink.count(), time.perf_counter()
    r = subprocess.run([SOURCE, *args, "-f", "sender@example.test", "-t", "user@remote.test",
                        f"127.0.0.1:{port}"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"smtp-source failed: {r.stderr.strip()[-300:]}")
    deadline = time.time() + 600
    while sink.count() - before < n:
        if time.time() > deadline:
            raise SystemExit(f"only {sink.count() - before} of {n} reached the sink")
        time.sleep(0.01)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loads", default="s10,s1")
    ap.add_argument("--setups", default="unsigned,signed,pow")
    opts = ap.parse_args()
    for program in (SOURCE, SINK):
        if not Path(program).exists():
            raise SystemExit(f"{program} is missing: apt-get install postfix (No configuration)")
    folder = Path(tempfile.mkdtemp(prefix="ismail-dkim-bench-"))
    results: dict[tuple[str, str], list[float]] = {}
    sink = Sink(folder)
    try:
        for rnd in range(opts.rounds):
            for setup in opts.setups.split(","):
                proc, port = start_ismail(folder, setup, sink)
                try:
                    one_load(port, sink, ["-s", "5", "-m", "200", "-l", "2048"], 200)  # warm-up
                    for load in opts.loads.split(","):
                        args, n = LOADS[load]
                        mps = one_load(port, sink, args, n)
                        results.setdefault((load, setup), []).append(mps)
                        print(f"round {rnd + 1} {load:3s} {setup:8s} {mps:7.0f} msg/s", flush=True)
                finally:
                    stop(proc)
    finally:
        stop(sink.proc)
        shutil.rmtree(folder, ignore_errors=True)
    print()
    for load in opts.loads.split(","):
        base = results.get((load, "unsigned"))
        for setup in opts.setups.split(","):
            vals = results.get((load, setup))
            if not vals:
                continue
            line = f"{load:3s} {setup:8s} median {statistics.median(vals):7.0f} msg/s"
            if base and setup != "unsigned":
                ratio = statistics.median(a / b for a, b in zip(vals, base))
                line += f"   {setup}/unsigned = {ratio:.2f} ({(1 - ratio) * 100:+.0f} % slower)"
            print(line)


if __name__ == "__main__":
    main()
