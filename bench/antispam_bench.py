"""Local delivery with every anti-spam check on against the same with them off (issue 13:
"within 20 %").  Run by hand, never in CI:

    python3 bench/antispam_bench.py [--rounds 3] [--messages 5000] [--sessions 10]

The client (Postfix's smtp-source, a new connection per message, 2 KiB messages) is not
in trusted_networks, so every check runs for every message: reverse DNS and a DNS block
list at connect, SPF at MAIL FROM, greylisting at RCPT (warmed up first, as a real sender
would be after its first retry), DKIM (none on these messages: dkim=none), DMARC and one
content rule after DATA.  dnsmasq answers from loopback with a TTL of 300 s (as real
records would); the resolver caches by TTL.  Each round runs both, in alternating order; the
ratio on/off is taken within each round.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import Dnsmasq  # noqa: E402

SOURCE = "/usr/sbin/smtp-source"
SENDER = "news@bench.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_banner(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("ISMail did not greet")


def count(box: Path) -> int:
    return sum(1 for sub in ("new", "cur") if (box / sub).is_dir() for _ in (box / sub).iterdir())


def run_server(data: Path, dns: str, checks: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    off = {"rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off", "dnsbl": [], "connection_rate": 0}
    on = {"rdns": "tag", "spf": "tag", "dkim": "tag", "dmarc": "reject", "dnsbl": ["bl.test"],
          "greylisting": True, "greylist_delay_seconds": 1, "connection_rate": 0,
          "rules": [{"name": "pills", "where": "subject", "match": "contains", "pattern": "cheap pills",
                     "action": "junk", "enabled": True}]}
    cfg = {"server_name": "bench.example.test", "primary_domain": "example.test",
           "listen": [f"127.0.0.1:{port}"], "pop3": {"enabled": False}, "imap": {"enabled": False},
           "incoming": {"max_connections": 100, "max_per_host": 10}, "trusted_networks": [],
           "dns_servers": [dns], "dkim": {"auto_keys": False}, "tls": {"self_signed": False},
           "antispam": on if checks else off,
           "smarthost": {"enabled": True, "host": "127.0.0.1", "port": 9, "exclusive": True, "tls": "none"}}
    (data / "ismail.json").write_text(json.dumps(cfg))
    cli = [sys.executable, "-m", "ismail", "--data-dir", str(data)]
    if not (data / "accounts.json").exists():
        subprocess.run(cli + ["account", "add", "user@example.test"], cwd=ROOT, input=b"bench-password\n",
                       check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(cli + ["run"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_banner(port)
    return proc, port


def load(port: int, box: Path, messages: int, sessions: int) -> float:
    before = count(box)
    t0 = time.perf_counter()
    r = subprocess.run([SOURCE, "-s", str(sessions), "-m", str(messages), "-l", "2048", "-f", SENDER,
                        "-t", "user@example.test", f"127.0.0.1:{port}"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"smtp-source failed: {r.stderr[-300:]}")
    deadline = time.time() + 300
    while count(box) - before < messages:
        if time.time() > deadline:
            raise SystemExit(f"only {count(box) - before} of {messages} arrived")
        time.sleep(0.01)
    return messages / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=10)
    args = ap.parse_args()
    program = shutil.which("dnsmasq")
    if not program or not Path(SOURCE).exists():
        raise SystemExit("needs dnsmasq and Postfix's smtp-source")
    dns = Dnsmasq(program, ["--local-ttl=300", "--local=/127.in-addr.arpa/",
                            "--ptr-record=1.0.0.127.in-addr.arpa,client.bench.test",
                            "--host-record=client.bench.test,127.0.0.1",
                            "--txt-record=bench.test,v=spf1 ip4:127.0.0.1 -all",
                            "--txt-record=_dmarc.bench.test,v=DMARC1; p=reject",
                            "--host-record=9.9.9.9.bl.test,127.0.0.2"], probe="bench.test")
    ratios = []
    try:
        for rnd in range(args.rounds):
            rates = {}
            for checks in ((False, True) if rnd % 2 == 0 else (True, False)):  # drift cancels out
                data = Path(tempfile.mkdtemp(prefix="ismail-spam-bench-"))
                proc, port = run_server(data, dns.server, checks)
                box = data / "mailboxes" / "example.test" / "user"
                try:
                    if checks:  # the first mail of the triplet is greylisted; its retry passes
                        subprocess.run([SOURCE, "-m", "1", "-f", SENDER, "-t", "user@example.test",
                                        f"127.0.0.1:{port}"], capture_output=True)
                        time.sleep(1.2)
                        load(port, box, 1, 1)
                    rates[checks] = load(port, box, args.messages, args.sessions)
                finally:
                    proc.terminate()
                    proc.wait(30)
                    shutil.rmtree(data, ignore_errors=True)
            ratios.append(rates[True] / rates[False])
            print(f"round {rnd + 1}: checks off {rates[False]:.0f} msg/s, on {rates[True]:.0f} msg/s, "
                  f"ratio {ratios[-1]:.2f}", flush=True)
    finally:
        dns.stop()
    print(f"median ratio on/off: {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
