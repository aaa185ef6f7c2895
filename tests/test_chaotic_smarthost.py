"""A SmartHost that misbehaves, then behaves: no message lost, none bounced without cause.

``ChaoticSmartHost`` answers at random with what broken servers and middleboxes send:
4xx and 5xx refusals, lines that are no SMTP reply, a reply in two pieces, a reply line
longer than RFC 5321 allows, a bare LF, a hang-up in the middle of a command or right
after a message's text.  It keeps to SMTP's states otherwise (RCPT before MAIL gets 503,
DATA without a recipient 554), as a real server does.  A real ``python3 -m ismail run``
relays 60 messages to it (FAST_RETRY); after the first attempts the SmartHost behaves,
and the queue must empty.  Then, for every recipient of every message ISMail took, what
a user would check:

* it was delivered (the SmartHost answered 250 to its text) or bounced back to the
  sender - one of the two, never neither: nothing is lost;
* a bounce only where the SmartHost refused it for good (a 5xx to its RCPT, to the
  MAIL of its message, or to the message's text);
* delivered once, unless the SmartHost hung up or talked nonsense after taking the text
  (then ISMail cannot know, and sending again is right);
* no ERROR in ISMail's log.

Messages go from user+<token>@example.test, so the SmartHost knows each transaction's
message from its MAIL alone; that address is no account, so the bounces come back to
postmaster's INBOX.
Bounded: 60 messages, every socket with a time-out, every wait with a deadline.
"""
from __future__ import annotations

import collections
import random
import re
import smtplib
import socket
import threading
import time
import unittest
import uuid

from unittest import mock

from tests.support import ServerProcess
from tests.test_delivery import FAST_RETRY, smarthost
from tests.test_receiver import USER, ReceiverTestCase
from tests.test_sender_pipelining import RecordingServer

MESSAGES = 60
RCPTS = ["r1@remote.test", "r2@remote.test", "r3@other.test"]
TOKEN = re.compile(r"user\+(tok[0-9a-f]{12})@example\.test")


class ChaoticSmartHost:
    def __init__(self, seed: int) -> None:
        self.chaos = True
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.delivered: dict[tuple[str, str], int] = collections.Counter()
        self.refused_for_good: set[tuple[str, str]] = set()   # (token, rcpt); rcpt "*": all
        self.ambiguous: set[str] = set()    # tokens whose text may have been taken unanswered
        self.connections = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def close(self) -> None:
        self.stopping.set()
        for t in list(self.threads):
            t.join(10)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            with self.lock:
                self.connections += 1
                rng = random.Random(self.rng.random())
            t = threading.Thread(target=self._serve, args=(conn, rng, self.chaos), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, rng: random.Random, chaos: bool) -> None:
        conn.settimeout(5)  # ISMail waits for replies; a stalled client here is gone
        try:
            with conn, conn.makefile("rb") as rfile:
                _Session(self, conn, rfile, rng, chaos).run()
        except OSError:
            pass


class _Session:
    def __init__(self, host: ChaoticSmartHost, conn, rfile, rng: random.Random, chaos: bool) -> None:
        self.host, self.conn, self.rfile, self.rng, self.chaos = host, conn, rfile, rng, chaos
        self.token: str | None = None
        self.accepted: list[str] = []

    def fault(self, normal: bytes, refusals: bool = True) -> bytes | None:
        """``normal``, or (in chaos) something else; None: hang up."""
        if not self.chaos or self.rng.random() < 0.8:
            return normal
        choices = [b"451 4.3.0 Try again later\r\n", b"not an SMTP reply\r\n",
                   b"250 " + b"x" * 9000 + b"\r\n", normal.replace(b"\r\n", b"\n"),
                   b"421 4.4.2 Closing\r\n", None, b"2"]
        if refusals:
            choices += [b"554 5.7.1 Refused\r\n", b"250-half\r\n550 5.1.1 the other half\r\n"]
        return self.rng.choice(choices)

    def say(self, reply: bytes | None) -> bool:
        """Send ``reply``; False when the session is over."""
        if reply is None:
            return False
        self.conn.sendall(reply)
        if reply == b"2":  # a reply cut off: the rest never comes
            return False
        return not reply.startswith(b"421")

    def run(self) -> None:
        if not self.say(self.fault(b"220 chaos.test ESMTP\r\n", refusals=False)):
            return
        for _ in range(1000):
            line = self.rfile.readline(10000)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                ext = [b"250-chaos.test", b"250-8BITMIME", b"250-SIZE 100000000"]
                if self.rng.random() < 0.5:
                    ext.append(b"250-PIPELINING")
                reply = self.fault(b"\r\n".join(ext + [b"250 ENHANCEDSTATUSCODES"]) + b"\r\n",
                                   refusals=False)
            elif verb == b"MAIL":
                self.accepted, self.token = [], None
                reply = self.fault(b"250 2.1.0 Ok\r\n")
                found = TOKEN.search(line.decode(errors="replace"))
                if reply is not None and reply.startswith(b"250 "):
                    self.token = found.group(1) if found else "?"
                elif reply is not None and _for_good(reply) and found:
                    self.refused(found.group(1), "*")
            elif verb == b"RCPT":
                if self.token is None:
                    reply = b"503 5.5.1 Error: need MAIL command\r\n"
                else:
                    rcpt = line.decode(errors="replace").split("<", 1)[-1].split(">", 1)[0].lower()
                    reply = self.fault(b"250 2.1.5 Ok\r\n")
                    if reply is not None and reply.startswith(b"250 "):
                        self.accepted.append(rcpt)
                    elif reply is not None and _for_good(reply):
                        self.refused(self.token, rcpt)
            elif verb == b"DATA":
                if self.token is None:
                    reply = b"503 5.5.1 Error: need MAIL command\r\n"
                elif not self.accepted:
                    reply = b"554 5.5.1 Error: no valid recipients\r\n"
                else:
                    reply = self.fault(b"354 End data with <CR><LF>.<CR><LF>\r\n", refusals=False)
                    if reply is not None and reply.startswith(b"354 "):
                        self.say(reply)
                        if not self.text():
                            return
                        continue
            elif verb == b"RSET":
                self.accepted, self.token = [], None
                reply = self.fault(b"250 2.0.0 Ok\r\n", refusals=False)
            elif verb == b"QUIT":
                self.say(b"221 2.0.0 Bye\r\n")
                return
            else:
                reply = b"502 5.5.2 Error: command not recognized\r\n"
            if not self.say(reply):
                return

    def refused(self, token: str, rcpt: str) -> None:
        with self.host.lock:
            self.host.refused_for_good.add((token, rcpt))

    def text(self) -> bool:
        """Read a message's text; answer its end.  False when the session is over."""
        for _ in range(100_000):
            line = self.rfile.readline(10000)
            if not line:
                return False
            if line == b".\r\n":
                break
        token, accepted = self.token, self.accepted
        self.token, self.accepted = None, []
        end = b"250 2.0.0 Ok: queued\r\n"
        if self.chaos and self.rng.random() < 0.25:
            end = self.rng.choice([b"451 4.3.0 Try again later\r\n", b"554 5.6.0 Rejected\r\n",
                                   None, b"not an SMTP reply\r\n"])
        with self.host.lock:
            if end is None or end.startswith(b"not"):
                self.host.ambiguous.add(token)
            elif end.startswith(b"250"):
                for rcpt in accepted:
                    self.host.delivered[(token, rcpt)] += 1
            elif end.startswith(b"5"):
                for rcpt in accepted:
                    self.host.refused_for_good.add((token, rcpt))
        return self.say(end)


def _for_good(reply: bytes) -> bool:
    """A permanent refusal: a reply whose last line has a 5xx code (as Postfix reads a
    reply that mixes codes)."""
    return reply.rstrip(b"\r\n").rsplit(b"\n", 1)[-1][:1] == b"5"


class ChaoticSmartHostTest(unittest.TestCase):
    maxDiff = None

    def test_every_message_is_delivered_or_bounced_for_a_cause_never_lost(self) -> None:
        host = ChaoticSmartHost(seed=20261208)
        self.addCleanup(host.close)
        server = ServerProcess({"smarthost": smarthost(host.port), "retry": FAST_RETRY,
                                "outgoing": {"max_connections": 3}})
        self.addCleanup(server.cleanup)
        server.start()
        sent: dict[str, list[str]] = {}
        with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30) as s:
            for i in range(MESSAGES):
                token = "tok" + uuid.uuid4().hex[:12]
                rcpts = RCPTS[:1 + i % 3]
                text = (f"From: <user@example.test>\r\nTo: {', '.join(rcpts)}\r\n"
                        f"Subject: chaos {token}\r\n\r\n" + f"line {i} of {token}\r\n" * (1 + i * 7)).encode()
                self.assertEqual(s.sendmail(f"user+{token}@example.test", rcpts, text), {})
                sent[token] = rcpts
        # Chaos until most messages had a first try, then a SmartHost that behaves.
        deadline = time.monotonic() + 20
        while host.connections < 25 and time.monotonic() < deadline:
            time.sleep(0.2)
        host.chaos = False
        queue = server.data_dir / "queue" / "messages"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not any(queue.glob("*.msg")) and not any(queue.glob("*.state")):
                break
            time.sleep(0.5)
        time.sleep(1.5)  # the last bounces reach the INBOX
        self.assertEqual(sorted(p.name for p in queue.iterdir() if p.suffix in (".msg", ".state")), [],
                         "the queue empties once the SmartHost behaves")

        bounced: dict[tuple[str, str], int] = collections.Counter()
        # user+<token> is no account: its bounces go to postmaster, as Postfix's would.
        mailboxes = server.data_dir / "mailboxes"
        for path in [*mailboxes.glob("*/*/new/*"), *mailboxes.glob("*/*/cur/*")]:
            dsn = path.read_text(errors="replace")
            tokens = set(TOKEN.findall(dsn))
            self.assertEqual(len(tokens), 1, f"a bounce names its one message: {path.name}")
            token = tokens.pop()
            for rcpt, action in re.findall(r"Final-Recipient: rfc822; ?(\S+)\s+Action: (\S+)", dsn, re.I):
                if action.lower() == "failed":
                    bounced[(token, rcpt.lower())] += 1

        problems = []
        for token, rcpts in sent.items():
            for rcpt in rcpts:
                key = (token, rcpt)
                delivered, bounces = host.delivered[key], bounced[key]
                sure = token not in host.ambiguous
                if not delivered and not bounces:
                    problems.append(f"{key}: lost (neither delivered nor bounced)")
                if bounces and key not in host.refused_for_good and (token, "*") not in host.refused_for_good:
                    problems.append(f"{key}: bounced though never refused for good")
                if bounces > 1:
                    problems.append(f"{key}: {bounces} bounces")
                if sure and delivered > 1:
                    problems.append(f"{key}: delivered {delivered} times")
                if sure and delivered and bounces:
                    problems.append(f"{key}: delivered and bounced")
        log = server.log_text()
        if problems:  # what ISMail said about those messages
            ids = {m.group(1) for token in re.findall(r"tok[0-9a-f]{12}", " ".join(problems))
                   for m in re.finditer(r"(\w+): from=<user\+" + token, log)}
            problems += [line for line in log.splitlines() if any(i in line for i in ids)]
        self.assertEqual(problems, [])
        self.assertNotIn(" ERROR ", log)
        self.assertNotIn("Traceback", log)
        # The chaos happened: some recipients bounced, some were sent on a later try.
        self.assertGreater(sum(bounced.values()), 0)
        self.assertIn("status=deferred", log)


class BounceNotStoredTest(ReceiverTestCase):
    def test_a_bounce_that_cannot_be_stored_is_made_again_and_nothing_is_sent_twice(self) -> None:
        # Found by the test above: a report that could not be stored (here a first delivery
        # into a new mailbox racing another) left its recipients marked bounced, and the
        # next attempt, finding nobody left, removed the message: the sender never heard.
        refusal = "550 5.1.1 <nobody@remote.test>: User unknown"
        host = RecordingServer(refuse={"nobody@remote.test": refusal})
        self.addCleanup(host.close)
        ms = self.start_inprocess({"smarthost": smarthost(host.port), "retry": FAST_RETRY,
                                   "outgoing": {"delivery_process": False}})
        real, calls = ms.inject, []

        def inject_failing_once(*args, **kwargs):
            calls.append(kwargs.get("recipients"))
            if len(calls) == 1:
                raise FileNotFoundError(2, "No such file or directory", "tmp/racing.vm")
            return real(*args, **kwargs)

        token = uuid.uuid4().hex
        with mock.patch.object(ms, "inject", inject_failing_once):
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30) as s:
                s.sendmail(USER, ["bob@remote.test", "nobody@remote.test"],
                           f"From: <{USER}>\r\nSubject: {token}\r\n\r\nbody {token}\r\n".encode())
            inbox = self.data_dir / "mailboxes" / "example.test" / "user" / "new"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (inbox.is_dir() and any(inbox.iterdir())):
                time.sleep(0.1)
        reports = [p.read_text(errors="replace") for p in inbox.iterdir()] if inbox.is_dir() else []
        self.assertEqual(len(reports), 1, "one report reaches the sender")
        self.assertIn("Final-Recipient: rfc822; nobody@remote.test", reports[0])
        self.assertIn(token, reports[0])
        self.assertEqual([m.rcpts for m in host.messages], [["bob@remote.test"]], "bob's copy went once")
        self.assertEqual(len(calls), 2)
        # The failed attempt was logged as an error, once: what this test expects.
        self.assertEqual(len(self.errors.records), 1, self.errors.records)
        self.assertIn("cannot read or update the queue entry", self.errors.records[0].getMessage())
        self.errors.records.clear()


class RetryDuringBatchTest(ReceiverTestCase):
    def test_a_message_deferred_early_in_a_long_batch_is_tried_again(self) -> None:
        # Found by a fuzz run with a SmartHost that stalls: in a batch over one connection,
        # a message deferred early (retry in 1 s) came due while the batch's other messages
        # were still going; the dispatcher found it "under way" and dropped its turn, and
        # it was never tried again until a restart.
        host = RecordingServer(refuse={"later@remote.test": "450 4.2.1 Try again later"},
                               text_delays={1: 1.0, 2: 3.0})
        self.addCleanup(host.close)
        self.start_inprocess({"smarthost": smarthost(host.port), "retry": FAST_RETRY,
                              "outgoing": {"max_connections": 1, "delivery_process": False}})
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30) as s:
            # A goes at once (its text answered after 1 s); meanwhile B, C and D wait in the
            # lane and then go as one batch: B deferred at once, C's text answered after 3 s.
            for rcpt in ("a@remote.test", "later@remote.test", "c@remote.test", "d@remote.test"):
                s.sendmail(USER, [rcpt], f"From: <{USER}>\r\nSubject: to {rcpt}\r\n\r\nhi\r\n".encode())
        deadline = time.monotonic() + 20
        tries = 0
        while time.monotonic() < deadline and tries < 2:
            tries = sum(1 for c in host.all_commands() if c.lower() == "rcpt to:<later@remote.test>")
            time.sleep(0.1)
        self.assertGreaterEqual(tries, 2, "the deferred message was tried again")
        self.assertEqual(sorted(r for m in host.messages for r in m.rcpts),
                         ["a@remote.test", "c@remote.test", "d@remote.test"])


if __name__ == "__main__":
    unittest.main()
