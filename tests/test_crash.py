"""No acknowledged message is lost: SIGKILL the server under load, restart it, count.

Several client threads send numbered messages as fast as the server takes them.
A message counts as acknowledged only once its ``250`` after DATA has arrived.  In
the middle of that, the server process is killed with SIGKILL (no chance to clean
up), then started again on the same data folder.  What a user would then check:

* every acknowledged message is in the Maildir exactly once, complete;
* no file in the Maildir is partial (each parses and its body is the body sent);
* nothing is left half-written in Maildir tmp/ or in DATA/queue/tmp;
* for a message with a remote recipient too, the outgoing queue holds a complete
  entry (a .msg with a readable envelope, and the message whole) for every
  acknowledged message, and no lone state file survives the restart.
"""
from __future__ import annotations

import email
import email.policy
import re
import sys
import threading
import time
import unittest
from pathlib import Path
from typing import Callable

from ismail.queue.spool import Spool
from tests.support import ServerProcess, SMTPTalk, journal_holds

THREADS = 8
MESSAGES_PER_CONNECTION = 5      # then QUIT and reconnect: the kill also finds connects and QUITs
KILL_AFTER_SECONDS = 1.5
KILL_AFTER_ACKS = 2000           # kill earlier than 1.5 s on a very fast machine
MIN_ACKS_BEFORE_KILL = 20        # ... but never before the load has really started
LOAD_TIME_LIMIT = 20.0           # fail rather than wait forever for the first acknowledgements
LOCAL_HELD_NEEDED = 10           # the power-cut test of local mail: deliveries held at the kill
KILL_TRIES = 3                   # ... load and kill again (a fresh server) while fewer are held
SENDER = "sender@example.org"
LOCAL = "user@example.test"
REMOTE = "x@remote.test"
QUEUED_AS = re.compile(rb"^250 .*queued as ([0-9A-Za-z]+)")


class UnexpectedReply(Exception):
    pass


def body_lines(token: str) -> list[str]:
    """The body for a token: 2-7 KB of lines that name the token and their number."""
    serial = int(token.rsplit("-", 1)[1])
    count = 30 + (serial * 7) % 70
    return [f"{token} line {i:03d} " + "abcdefghijklmnopqrstuvwxyz0123456789"[: 20 + (i * 11) % 17] for i in range(count)]


def message_bytes(token: str) -> bytes:
    """The DATA text for a token, dot-stuffed, with its terminating CRLF.CRLF."""
    lines = [f"From: <{SENDER}>", f"To: <{LOCAL}>", f"Subject: crash test {token}",
             f"Message-ID: <{token}@crash.example.org>", "", *body_lines(token)]
    text = "".join(("." + line if line.startswith(".") else line) + "\r\n" for line in lines)
    return text.encode("ascii") + b".\r\n"


def expected_body(token: str, eol: str) -> str:
    return "".join(line + eol for line in body_lines(token))


class Load:
    """Shared state of the client threads."""

    def __init__(self, port: int, recipients: list[str], run_id: str) -> None:
        self.port = port
        self.recipients = recipients
        self.run_id = run_id
        self.lock = threading.Lock()
        self.acked: dict[str, str] = {}     # token -> queue id from "250 ... queued as ID"
        self.attempted: set[str] = set()    # DATA text sent (maybe acknowledged, maybe not)
        self.errors: list[str] = []         # failures while the server was still alive
        self.stop = threading.Event()
        self.killing = threading.Event()    # set just before the SIGKILL
        self.deadline = time.monotonic() + LOAD_TIME_LIMIT + 10

    def acks(self) -> int:
        with self.lock:
            return len(self.acked)

    def expect(self, reply: bytes, code: bytes) -> bytes:
        if not reply.startswith(code):
            raise UnexpectedReply(f"expected {code!r}, got {reply!r}")
        return reply

    def client(self, index: int) -> None:
        serial = 0
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                with SMTPTalk(self.port, timeout=15) as c:
                    self.expect(c.reply(), b"220")
                    self.expect(c.cmd(f"EHLO client{index}.example.org"), b"250")
                    for _ in range(MESSAGES_PER_CONNECTION):
                        if self.stop.is_set():
                            break
                        serial += 1
                        token = f"{self.run_id}-{index:02d}-{serial:05d}"
                        self.expect(c.cmd(f"MAIL FROM:<{SENDER}>"), b"250")
                        for rcpt in self.recipients:
                            self.expect(c.cmd(f"RCPT TO:<{rcpt}>"), b"250")
                        self.expect(c.cmd("DATA"), b"354")
                        with self.lock:
                            self.attempted.add(token)
                        c.send(message_bytes(token))
                        reply = c.reply()
                        # Any 250 counts, even one cut short: the server only says it once
                        # the message is on disk.
                        if reply.startswith(b"250"):
                            m = QUEUED_AS.match(reply)
                            with self.lock:
                                self.acked[token] = m.group(1).decode() if m else ""
                        else:
                            raise UnexpectedReply(f"after DATA: {reply!r}")
                    c.cmd("QUIT")
        except (OSError, UnexpectedReply) as e:
            # After the kill, a dropped connection just means "not acknowledged".
            if not self.killing.is_set():
                with self.lock:
                    self.errors.append(f"client {index}: {type(e).__name__}: {e}")


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


class CrashTest(unittest.TestCase):
    def setUp(self) -> None:
        self.new_server()
        self.threads: list[threading.Thread] = []
        self.load: Load | None = None
        self.addCleanup(self._stop_clients)

    def _stop_clients(self) -> None:
        if self.load is not None:
            self.load.stop.set()
        for t in self.threads:
            t.join(20)

    def run_and_kill(self, recipients: list[str], run_id: str, threads: int = THREADS) -> Load:
        """Load the server from ``threads`` clients, SIGKILL it mid-flight, wait for the clients."""
        server = self.server
        server.start()
        load = self.load = Load(server.port, recipients, run_id)
        self.threads = [threading.Thread(target=load.client, args=(i,), name=f"crash-client-{i}",
                                         daemon=True) for i in range(threads)]
        started = time.monotonic()
        for t in self.threads:
            t.start()
        while True:
            time.sleep(0.02)
            elapsed, acks = time.monotonic() - started, load.acks()
            if acks >= KILL_AFTER_ACKS or (elapsed >= KILL_AFTER_SECONDS and acks >= MIN_ACKS_BEFORE_KILL):
                break
            if elapsed > LOAD_TIME_LIMIT or load.errors:
                break
        self.assertEqual(load.errors, [], "clients failed before the kill:\n" + server.log_text()[-3000:])
        self.assertGreaterEqual(load.acks(), MIN_ACKS_BEFORE_KILL,
                                "too few messages acknowledged to test anything:\n" + server.log_text()[-3000:])
        load.killing.set()
        server.kill()
        killed_at = time.monotonic() - started
        for t in self.threads:
            t.join(20)
        self.assertFalse(any(t.is_alive() for t in self.threads), "a client thread did not end")
        self.assertEqual(load.errors, [])
        with load.lock:
            in_flight = len(load.attempted) - len(load.acked)
        print(f"\n[crash] killed after {killed_at:.2f}s: {len(load.acked)} acknowledged, "
              f"{in_flight} sent without an acknowledgement", file=sys.stderr)
        return load

    def new_server(self) -> None:
        """A server of its own data folder (not started)."""
        self.server = ServerProcess({"incoming": {"max_connections": 100, "max_per_host": 10}})
        self.addCleanup(self.server.cleanup)

    def run_and_kill_holding(self, held: Callable[[], int], need: int, recipients: list[str],
                             run_id: str, threads: int = THREADS) -> Load:
        """run_and_kill, for the power-cut tests: they need at least ``need`` messages that
        the journal still holds at the kill (``held()`` counts them).  The journal lets go
        of them at its checkpoints, and a kill that falls just after one finds only the
        few of the moments since: then again on a fresh server, at most KILL_TRIES times."""
        for attempt in range(1, KILL_TRIES):
            load = self.run_and_kill(recipients, f"{run_id}{attempt}", threads)
            found = held()
            if found >= need:
                return load
            print(f"[crash] only {found} held at the kill (fewer than {need}): again on a fresh server",
                  file=sys.stderr)
            self.new_server()
        return self.run_and_kill(recipients, f"{run_id}{KILL_TRIES}", threads)

    def restart(self) -> None:
        """Start again on the same data folder (same port); start-up must clean up."""
        self.server.start()

    def parse_maildir(self, load: Load) -> dict[str, list[Path]]:
        """token -> the files holding it; every file must be complete and ours."""
        box = self.server.maildir(LOCAL)
        found: dict[str, list[Path]] = {}
        for path in files_in(box / "new") + files_in(box / "cur"):
            raw = path.read_bytes()
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            subject = msg["Subject"] or ""
            self.assertTrue(subject.startswith("crash test "), f"{path.name}: Subject {subject!r}")
            token = subject[len("crash test "):]
            self.assertIn(token, load.attempted, f"{path.name}: a message nobody sent")
            self.assertEqual(msg["Message-ID"], f"<{token}@crash.example.org>", path.name)
            self.assertEqual(msg["Return-Path"], f"<{SENDER}>", path.name)
            self.assertEqual(msg.get_payload(), expected_body(token, "\n"),
                             f"{path.name}: body of {token} is truncated or damaged")
            found.setdefault(token, []).append(path)
        return found

    def check_acknowledged_stored_once(self, load: Load, found: dict[str, list[Path]]) -> None:
        missing = sorted(t for t in load.acked if t not in found)
        twice = {t: [p.name for p in paths] for t, paths in found.items() if len(paths) > 1}
        self.assertEqual(missing, [], f"{len(missing)} acknowledged message(s) lost")
        self.assertEqual(twice, {}, "message(s) stored more than once")

    def check_no_leftovers(self) -> None:
        box = self.server.maildir(LOCAL)
        self.assertEqual([p.name for p in files_in(box / "tmp")], [], "Maildir tmp/ not cleaned")
        self.assertEqual([p.name for p in files_in(self.server.data_dir / "queue" / "tmp")], [],
                         "queue tmp/ not cleaned")

    def check_serves_after_restart(self) -> None:
        before = self.server.count(LOCAL)
        with SMTPTalk(self.server.port) as c:
            self.assertTrue(c.reply().startswith(b"220"))
            self.assertTrue(c.cmd("EHLO after.example.org").startswith(b"250"))
            self.assertTrue(c.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"250"))
            self.assertTrue(c.cmd(f"RCPT TO:<{LOCAL}>").startswith(b"250"))
            self.assertTrue(c.cmd("DATA").startswith(b"354"))
            c.send(b"Subject: after the restart\r\n\r\nstill here\r\n.\r\n")
            self.assertTrue(c.reply().startswith(b"250"))
        self.assertEqual(self.server.count(LOCAL), before + 1)

    def test_kill_during_local_deliveries(self):
        self.kill_during_local(self.run_and_kill([LOCAL], "local"))

    def test_kill_during_one_clients_local_deliveries(self):
        # One client alone, mail for our own mailbox: the SMTP loop makes each message
        # durable, puts it in place and answers it itself (net.reactor, _settle_here).
        self.kill_during_local(self.run_and_kill([LOCAL], "lone", threads=1))

    def kill_during_local(self, load: Load) -> None:
        # Even before any clean-up, what sits in new/ must be complete (rename is atomic).
        found = self.parse_maildir(load)
        self.check_acknowledged_stored_once(load, found)
        leftovers = len(files_in(self.server.maildir(LOCAL) / "tmp"))
        print(f"[crash] {leftovers} unfinished file(s) in Maildir tmp/ before the restart", file=sys.stderr)

        self.restart()
        found = self.parse_maildir(load)
        self.check_acknowledged_stored_once(load, found)
        self.check_no_leftovers()
        self.check_serves_after_restart()

    def test_kill_during_mixed_local_and_remote(self):
        load = self.run_and_kill([LOCAL, REMOTE], "mixed")
        messages = self.server.data_dir / "queue" / "messages"
        names = {p.name for p in files_in(messages)}
        orphans = [n for n in names if n.endswith(".state") and n[:-6] + ".msg" not in names]
        spill = files_in(self.server.data_dir / "queue" / "tmp")
        print(f"[crash] before the restart: {len(orphans)} .state without .msg, "
              f"{len(spill)} file(s) in queue tmp/", file=sys.stderr)
        self.restart()
        found = self.parse_maildir(load)
        self.check_acknowledged_stored_once(load, found)
        # The restarted server retries the queued remote copies at once, writing their state;
        # after a clean stop nothing is in flight, so any temp file left would be a real leftover.
        self.check_serves_after_restart()
        self.assertEqual(self.server.stop(), 0)
        self.check_no_leftovers()

        names = {p.name for p in files_in(messages)}
        for name in sorted(names):
            stem, _, ext = name.rpartition(".")
            self.assertIn(ext, ("msg", "state"), f"unexpected file in the queue: {name}")
            if ext == "state":
                self.assertIn(f"{stem}.msg", names, f"{name} without its message after the restart")
        spool = Spool(messages.parent)
        corrupt = self.server.data_dir / "queue" / "corrupt"
        self.assertEqual([p.name for p in files_in(corrupt)], [], "queue entries were set aside")

        for token, queue_id in sorted(load.acked.items()):
            with self.subTest(token=token, queue_id=queue_id):
                self.assertTrue(queue_id, f"no queue id in the 250 for {token}")
                entry = spool.load(queue_id)
                self.assertEqual(entry.sender, SENDER)
                self.assertEqual([r.address for r in entry.recipients], [REMOTE])
                eml = spool.read_message(queue_id)
                msg = email.message_from_bytes(eml, policy=email.policy.compat32)
                self.assertEqual(msg["Subject"], f"crash test {token}")
                self.assertEqual(msg.get_payload(), expected_body(token, "\r\n"),
                                 f"queued copy of {token} is truncated or damaged")
                # The local copy is the same message (same id in its Received: header).
                local = found[token][0].read_text("ascii")
                self.assertIn(f" id {queue_id}", local)

    def test_kill_then_lose_unsynced_queue_files_as_a_power_cut_would(self):
        # Queued files are written without an fsync of their own: the queue's journal holds
        # them until they are delivered or checkpointed.  A power cut (unlike a kill) can
        # take such a file, or its data; the journal must bring every acknowledged one back.
        self.power_cut_queue("power")

    def test_one_client_sending_on_then_lose_unsynced_queue_files(self):
        # The same with one client alone: the settling thread answers each message and
        # then, briefly, the client's next command itself (net.reactor, _follow_up).
        self.power_cut_queue("lonesendon", threads=1)

    def queued_held(self) -> int:
        """Acknowledged queued messages the journal holds (run_and_kill_holding)."""
        held, _ = journal_holds(self.server.data_dir / "queue" / "journal")
        return sum(qid in held for qid in self.load.acked.values())

    def power_cut_queue(self, run_id: str, threads: int = THREADS) -> None:
        load = self.run_and_kill_holding(self.queued_held, MIN_ACKS_BEFORE_KILL, [REMOTE], run_id, threads)
        queue = self.server.data_dir / "queue"
        held, _ = journal_holds(queue / "journal")
        acked = sorted(qid for qid in load.acked.values() if qid in held)
        self.assertGreaterEqual(len(acked), MIN_ACKS_BEFORE_KILL,
                                "most acknowledged messages are still held by the journal")
        # Entries queued for less than a second have no file yet (the journal writes it once
        # an entry has waited WRITE_AFTER); of those that have one, lose some and empty some.
        unwritten = [qid for qid in held if not (queue / "messages" / f"{qid}.msg").exists()]
        written = [qid for qid in acked if qid not in unwritten]
        lost, emptied = written[0::3], written[1::3]
        for qid in lost:
            (queue / "messages" / f"{qid}.msg").unlink()
        for qid in emptied:
            (queue / "messages" / f"{qid}.msg").write_bytes(b"")
        self.restart()
        self.assertEqual(self.server.stop(), 0)
        log = self.server.log_text()
        self.assertEqual(log.count("written again from the journal"),
                         len(lost) + len(emptied) + len(unwritten), log[-2000:])
        self.assertEqual([p.name for p in files_in(queue / "journal")], [], "a clean stop leaves no segment")
        self.assertEqual([p.name for p in files_in(queue / "corrupt")], [], "queue entries were set aside")
        spool = Spool(queue)
        for token, queue_id in sorted(load.acked.items()):
            with self.subTest(token=token, queue_id=queue_id):
                entry = spool.load(queue_id)
                self.assertEqual([r.address for r in entry.recipients], [REMOTE])
                msg = email.message_from_bytes(spool.read_message(queue_id), policy=email.policy.compat32)
                self.assertEqual(msg["Subject"], f"crash test {token}")
                self.assertEqual(msg.get_payload(), expected_body(token, "\r\n"))

    def test_kill_then_lose_unsynced_local_files_as_a_power_cut_would(self):
        # Local deliveries are committed by the journal too: their files and their renames
        # into new/ are synced at the journal's next checkpoint (every half second).  A
        # power cut can take those of the last moment, or their data; the journal must
        # bring each back, once, complete, while those checkpointed are left as they are.
        self.power_cut_local("localpower")

    def test_one_client_then_lose_unsynced_local_files(self):
        # The same with one client alone, whose messages the SMTP loop settles itself.
        self.power_cut_local("lonepower", threads=1)

    def local_held(self) -> int:
        """Local deliveries the journal holds whose files are in new/ (run_and_kill_holding)."""
        _, held = journal_holds(self.server.data_dir / "queue" / "journal")
        return sum(path.exists() for path in held)

    def power_cut_local(self, run_id: str, threads: int = THREADS) -> None:
        load = self.run_and_kill_holding(self.local_held, LOCAL_HELD_NEEDED, [LOCAL], run_id, threads)
        box = self.server.maildir(LOCAL)
        _, held = journal_holds(self.server.data_dir / "queue" / "journal")
        # A delivery killed between its journal record and its rename into new/ was never
        # acknowledged; the journal brings it back too (the client would send it again: a
        # duplicate, never a loss).
        unrenamed = [path for path in held if not path.exists()]
        held = sorted(path for path in held if path.exists())
        self.assertGreaterEqual(len(held), LOCAL_HELD_NEEDED, "deliveries of the last half second are still held")
        lost, emptied = held[0::3], held[1::3]
        for path in lost:
            path.unlink()
        for path in emptied:
            path.write_bytes(b"")
        # A mail program had read one of them (moved to cur/ with a flag) when its data was lost.
        read = held[2]
        (box / "cur" / f"{read.name}:2,S").write_bytes(b"")
        read.unlink()
        found = self.parse_maildir_after(load)
        self.check_acknowledged_stored_once(load, found)
        self.assertTrue((box / "cur" / f"{read.name}:2,S").stat().st_size > 0, "restored where it was read")
        log = self.server.log_text()
        self.assertEqual(log.count("written again from the journal"),
                         len(lost) + len(emptied) + 1 + len(unrenamed), log[-2000:])
        self.check_no_leftovers()
        self.check_serves_after_restart()

    def parse_maildir_after(self, load: Load) -> dict[str, list[Path]]:
        self.restart()
        return self.parse_maildir(load)


if __name__ == "__main__":
    unittest.main()
