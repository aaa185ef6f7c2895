"""Where a relayed (or locally delivered) message's CPU goes: one ISMail under load.

    python3 bench/relay_cpu.py [--load s10|s1] [-m 5000] [--local] [--size 2048]
                               [--unsigned] [--base DIR] [--rounds 1]  (by hand, never in CI)

Postfix's smtp-source sends messages from sender@example.test through ISMail; for the
relay (the default) to user@remote.test, which ISMail passes to Postfix's smtp-sink
(its SmartHost, exclusive) on loopback, DKIM-signed unless --unsigned; with --local
to user@example.test, delivered into its Maildir.  A load is timed until the sink
(or the Maildir) has every message.  Printed per round: messages/s, how busy the
machine's CPUs were, and the CPU (user and system, microseconds per message) and the
voluntary context switches per message of the server's process and of its delivery
process.

--base DIR puts ISMail's data folder under DIR: on a tmpfs (/dev/shm) fsync costs
nothing, so the difference from a run on the disk is what durability costs.
Needs smtp-source and smtp-sink (Debian: apt-get install postfix, debconf "No
configuration"); as root smtp-sink runs as nobody.  Linux only (/proc).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dkim_bench import ROOT, SINK, SOURCE, Sink, free_port, stop, wait_banner  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_ticks(pid: int) -> tuple[int, int]:
    """utime and stime of a process, all its threads (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def switches(pid: int) -> int:
    """Voluntary context switches of all the threads of a process (each one: a thread
    that waited, mostly for the interpreter's lock or another thread)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{task}/status").read_text()
        except OSError:
            continue  # a thread that just ended
        total += int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
    return total


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def machine_ticks() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def one_round(args, base: Path) -> str:
    work = Path(tempfile.mkdtemp(prefix="ismail-relaycpu-", dir=base))
    sink = Sink(work)
    server = None
    try:
        data = work / "data"
        data.mkdir()
        port = free_port()
        cfg = {"server_name": "bench.example.test", "primary_domain": "example.test",
               "listen": [f"127.0.0.1:{port}"],
               "incoming": {"max_connections": 100, "max_per_host": 10},
               "outgoing": {"max_connections": 20}, "trusted_networks": ["127.0.0.0/8"],
               "smarthost": {"enabled": True, "host": "127.0.0.1", "port": sink.port,
                             "exclusive": True, "authenticate": False, "tls": "none"}}
        if args.unsigned:
            cfg["dkim"] = {"enabled": False}
        (data / "ismail.json").write_text(json.dumps(cfg))
        cli = [sys.executable, "-m", "ismail", "--data-dir", str(data)]
        subprocess.run(cli + ["account", "add", "user@example.test"], cwd=ROOT, input=b"pw-bench-1\n",
                       check=True, stdout=subprocess.DEVNULL)
        server = subprocess.Popen(cli + ["run"], cwd=ROOT, stdout=open(work / "server.log", "wb"),
                                  stderr=subprocess.STDOUT)
        wait_banner(port)
        box = data / "mailboxes" / "example.test" / "user"

        def counted() -> int:
            if args.local:
                return sum(len(os.listdir(box / d)) for d in ("new", "cur") if (box / d).is_dir())
            return sink.count()

        def load(sessions: int, count: int) -> float:
            before = counted()
            start = time.perf_counter()
            subprocess.run([SOURCE, "-s", str(sessions), "-m", str(count), "-l", str(args.size),
                            "-f", "sender@example.test",
                            "-t", "user@example.test" if args.local else "user@remote.test",
                            f"127.0.0.1:{port}"], check=True, capture_output=True)
            deadline = time.monotonic() + 300
            while counted() - before < count:
                if time.monotonic() > deadline:
                    raise SystemExit("messages missing after 300 s")
                time.sleep(0.005)
            return count / (time.perf_counter() - start)

        load(5, 200)  # warm up: the delivery process starts with the first delivery
        pids = [server.pid] + children(server.pid)
        before = {pid: cpu_ticks(pid) for pid in pids}
        waits_before = {pid: switches(pid) for pid in pids}
        machine0 = machine_ticks()
        rate = load(10 if args.load == "s10" else 1, args.messages)
        machine1 = machine_ticks()
        after = {pid: cpu_ticks(pid) for pid in pids}
        waits_after = {pid: switches(pid) for pid in pids}
        spent = [b - a for a, b in zip(machine0, machine1)]
        busy = 100 - 100 * (spent[3] + spent[4]) / max(1, sum(spent))
        parts = [f"{args.load} {rate:6.0f} msg/s, machine {busy:3.0f} % busy"]
        for pid in pids:
            user, system = (1e6 * (after[pid][i] - before[pid][i]) / TICK / args.messages for i in (0, 1))
            name = "server" if pid == server.pid else "delivery process"
            waits = (waits_after[pid] - waits_before[pid]) / args.messages
            parts.append(f"{name} user {user:4.0f} sys {system:4.0f} us/msg, {waits:.0f} switches/msg")
        return "; ".join(parts)
    finally:
        if server is not None:
            stop(server)
        stop(sink.proc)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", choices=("s10", "s1"), default="s10")
    parser.add_argument("-m", "--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--local", action="store_true")
    parser.add_argument("--unsigned", action="store_true")
    parser.add_argument("--base", default=tempfile.gettempdir())
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    for program in (SOURCE, SINK):
        if not Path(program).exists():
            raise SystemExit(f"{program} is missing (Debian: apt-get install postfix)")
    base = Path(args.base)
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1, args.rounds + 1):
        print(f"round {n}: {one_round(args, base)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
