"""The sender's SMTP PIPELINING (RFC 2920): MAIL, the RCPTs and DATA in one write.

``Sender`` (with an exclusive SmartHost on loopback) talks to ``RecordingServer``, a
small SMTP server in a thread that keeps every recv() chunk, every command and every
message it takes (dot-unstuffed as RFC 5321 §4.5.2 says), and can be told to refuse
or misbehave.  One chunk holding MAIL, the RCPTs and DATA is what proves the
pipelining; the refusals check each recipient's Result and that no message text is
sent when nobody is to get it.  Last, Postfix's own smtp-sink (which offers
PIPELINING) takes 50 messages.

Nothing here leaves loopback, and the DNS resolver the Sender gets points at a
closed loopback port, so not even the machine's resolver is asked.
"""
from __future__ import annotations

import socket
import threading
import time
import unittest
import unittest.mock
import uuid
from dataclasses import dataclass, field

from ismail.config import from_dict
from ismail.queue import pipeline
from ismail.queue.dns import Resolver
from ismail.queue.sender import Result, Sender
from ismail.stats import Stats
from tests.test_delivery import DeliveryCase, message_text, new_token

SENDER = "alice@client.test"
RCPTS = ["bob@remote.test", "carol@remote.test", "dave@remote.test"]
SERVER_SECONDS = 60      # a RecordingServer stops by itself after this long
MAX_RECVS = 10_000       # and a connection after this many recv() calls


@dataclass
class Received:
    """One message the server took: its envelope and its text, unstuffed."""
    sender: str
    rcpts: list[str]
    data: bytes


@dataclass
class Connection:
    chunks: list[bytes] = field(default_factory=list)    # each recv(), as it came
    commands: list[str] = field(default_factory=list)    # every command line, in order


class RecordingServer:
    """An SMTP server on 127.0.0.1 for one test; one thread per connection, all bounded.

    pipelining  offer PIPELINING in the EHLO reply
    refuse      {address: reply} for RCPTs it refuses
    mail_reply  the reply to every MAIL (a refusal), or None for 250
    hang_up_after_mail  close the connection right after the MAIL reply
    data_354_anyway     answer DATA with 354 even with no recipient (a broken server)
    vanish_on_message   close without a reply after the text of message number N (1-based)
    text_replies        {N: lines}: what to answer the text of message N with instead (a
                        broken server or a middlebox: lines without a reply code)
    text_delays         {N: seconds}: wait this long before answering the text of message N
    port        the port to listen on (0: any free one)
    """

    def __init__(self, pipelining: bool = True, refuse: dict[str, str] | None = None,
                 mail_reply: str | None = None, hang_up_after_mail: bool = False,
                 data_354_anyway: bool = False, vanish_on_message: int = 0,
                 text_replies: dict[int, list[str]] | None = None,
                 text_delays: dict[int, float] | None = None, port: int = 0) -> None:
        self.pipelining, self.refuse = pipelining, refuse or {}
        self.mail_reply, self.hang_up_after_mail = mail_reply, hang_up_after_mail
        self.data_354_anyway, self.vanish_on_message = data_354_anyway, vanish_on_message
        self.text_replies = text_replies or {}
        self.text_delays = text_delays or {}
        self.connections: list[Connection] = []
        self.messages: list[Received] = []
        self.texts_seen = 0   # message texts ended with "." (taken or not)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._deadline = time.monotonic() + SERVER_SECONDS
        self._spawn(self._accept_loop)

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.listener.close()
        for s in self._socks:
            s.close()

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _accept_loop(self) -> None:
        while self._running() and len(self.connections) < 50:
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self._socks.append(conn)
            record = Connection()
            self.connections.append(record)
            self._spawn(self._serve, conn, record)

    def _serve(self, conn: socket.socket, record: Connection) -> None:
        conn.settimeout(0.1)
        conn.sendall(b"220 recorder.test ESMTP\r\n")
        state = {"mail": None, "rcpts": [], "text": None}
        buf = b""
        for _ in range(MAX_RECVS):
            if not self._running():
                break
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            record.chunks.append(chunk)
            buf += chunk
            out: list[bytes] = []
            done = False
            while b"\r\n" in buf and not done:
                line, buf = buf.split(b"\r\n", 1)
                if state["text"] is not None:
                    reply = self._text_line(line, state)
                else:
                    record.commands.append(line.decode("utf-8", "replace"))
                    reply = self._command(line.decode("utf-8", "replace"), state)
                if reply == "HANG UP":
                    done = True
                elif reply is not None:
                    out.append(reply.encode() + b"\r\n")
                    done = reply.startswith("221") or (self.hang_up_after_mail
                                                       and line.lower().startswith(b"mail"))
            if out:
                conn.sendall(b"".join(out))
            if done:
                break
        conn.close()

    def _text_line(self, line: bytes, state: dict) -> str | None:
        if line != b".":
            state["text"].append((line[1:] if line.startswith(b".") else line) + b"\r\n")
            return None
        self.texts_seen += 1
        time.sleep(self.text_delays.get(self.texts_seen, 0))
        if self.texts_seen == self.vanish_on_message:
            return "HANG UP"  # the message could have been taken: no reply ever comes
        text, state["text"] = b"".join(state["text"]), None
        if self.texts_seen in self.text_replies:
            state["mail"], state["rcpts"] = None, []
            return "\r\n".join(self.text_replies[self.texts_seen])  # and the text is not taken
        self.messages.append(Received(state["mail"] or "", list(state["rcpts"]), text))
        state["mail"], state["rcpts"] = None, []
        return f"250 2.0.0 Ok: queued as Q{len(self.messages)}"

    def _command(self, line: str, state: dict) -> str:
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb == "EHLO":
            return "\r\n".join(["250-recorder.test"] + (["250-PIPELINING"] if self.pipelining else [])
                               + ["250-SIZE 10240000", "250-8BITMIME", "250 ENHANCEDSTATUSCODES"])
        if verb == "HELO":
            return "250 recorder.test"
        if verb == "MAIL":
            if self.mail_reply:
                return self.mail_reply
            state["mail"], state["rcpts"] = _address(arg), []
            return "250 2.1.0 Ok"
        if verb == "RCPT":
            if state["mail"] is None:
                return "503 5.5.1 Error: need MAIL command"
            address = _address(arg)
            if address in self.refuse:
                return self.refuse[address]
            state["rcpts"].append(address)
            return "250 2.1.5 Ok"
        if verb == "DATA":
            if state["mail"] is None:
                return "503 5.5.1 Error: need MAIL command"
            if not state["rcpts"] and not self.data_354_anyway:
                return "554 5.5.1 Error: no valid recipients"
            state["text"] = []
            return "354 End data with <CR><LF>.<CR><LF>"
        if verb == "RSET":
            state["mail"], state["rcpts"] = None, []
            return "250 2.0.0 Ok"
        if verb == "NOOP":
            return "250 2.0.0 Ok"
        if verb == "QUIT":
            return "221 2.0.0 Bye"
        return "502 5.5.2 Error: command not recognized"

    def drop_connections(self) -> None:
        """Hang up every open connection without a word, as a server's idle time-out does."""
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- what a test looks at -----------------------------------------------------------------
    def all_commands(self) -> list[str]:
        return [c for conn in self.connections for c in conn.commands]

    def verbs(self) -> list[str]:
        return [c.split(" ", 1)[0].upper() for c in self.all_commands()]

    def wire(self) -> bytes:
        return b"".join(chunk for conn in self.connections for chunk in conn.chunks)


def _address(arg: str) -> str:
    """The address in "FROM:<a@b> SIZE=10" or "TO:<a@b>"."""
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1:end]


def sender_for(port: int) -> Sender:
    settings, _ = from_dict({"server_name": "client.example.test", "primary_domain": "client.test",
                             "listen": ["127.0.0.1:2525"],
                             "smarthost": {"enabled": True, "host": "127.0.0.1", "port": port,
                                           "exclusive": True, "tls": "none"}})
    # A resolver that could only ask a closed loopback port: the SmartHost is an IP anyway.
    return Sender(settings, Stats(), resolver=Resolver([("127.0.0.1", 9)], timeout=0.2, attempts=1))


def message(token: str, body: bytes = b"") -> bytes:
    return (f"From: <{SENDER}>\r\nTo: <{RCPTS[0]}>\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@client.test>\r\n\r\nbody {token}\r\n").encode() + body


class PipeliningCase(unittest.TestCase):
    def start(self, **behaviour) -> tuple[RecordingServer, Sender]:
        server = RecordingServer(**behaviour)
        self.addCleanup(server.close)
        sender = sender_for(server.port)
        self.addCleanup(sender.close_idle, True)
        return server, sender

    def deliver(self, sender: Sender, data: bytes, rcpts: list[str] = RCPTS) -> dict[str, Result]:
        return sender.deliver(SENDER, rcpts, "remote.test", data)

    def group_chunk(self, server: RecordingServer) -> bytes:
        """The chunk in which the transaction's MAIL arrived."""
        for conn in server.connections:
            for chunk in conn.chunks:
                if chunk.lower().startswith(b"mail from:"):
                    return chunk
        self.fail(f"no MAIL came: {server.all_commands()}")


class PipelinedTransactionTest(PipeliningCase):
    def test_envelope_and_text_arrive_and_mail_rcpts_data_came_in_one_write(self):
        server, sender = self.start()
        data = message(uuid.uuid4().hex)
        results = self.deliver(sender, data)
        self.assertEqual(set(results), set(RCPTS))
        for rcpt, result in results.items():
            self.assertEqual((result.code, result.text), (250, "250 2.0.0 Ok: queued as Q1"), rcpt)
            self.assertTrue(result.sent)
        self.assertEqual(server.messages, [Received(SENDER, RCPTS, data)])
        group = self.group_chunk(server)
        self.assertEqual(group, (f"mail FROM:<{SENDER}> SIZE={len(data)}\r\n"
                                 + "".join(f"rcpt TO:<{r}>\r\n" for r in RCPTS)
                                 + "data\r\n").encode())
        # The text came only after the 354: not in the chunk with the commands.
        self.assertNotIn(b"body", group)

    def test_without_pipelining_one_command_per_write_and_the_message_still_arrives(self):
        server, sender = self.start(pipelining=False)
        data = message(uuid.uuid4().hex)
        results = self.deliver(sender, data)
        self.assertTrue(all(r.sent for r in results.values()), results)
        self.assertEqual(server.messages, [Received(SENDER, RCPTS, data)])
        (conn,) = server.connections
        envelope = [c for c in conn.chunks if c[:4].lower() in (b"mail", b"rcpt", b"data")]
        self.assertEqual(len(envelope), 1 + len(RCPTS) + 1, envelope)
        for chunk in envelope:
            self.assertEqual(chunk.count(b"\r\n"), 1, chunk)

    def test_one_refused_recipient_keeps_its_reply_and_the_others_get_the_data_reply(self):
        refusal = "550 5.1.1 <carol@remote.test>: Recipient address rejected: User unknown"
        server, sender = self.start(refuse={"carol@remote.test": refusal})
        data = message(uuid.uuid4().hex)
        results = self.deliver(sender, data)
        self.assertEqual(results["carol@remote.test"].code, 550)
        self.assertEqual(results["carol@remote.test"].text, refusal)
        self.assertTrue(results["carol@remote.test"].permanent)
        self.assertEqual(results["carol@remote.test"].status(), "5.1.1")
        for rcpt in ("bob@remote.test", "dave@remote.test"):
            self.assertEqual((results[rcpt].code, results[rcpt].text), (250, "250 2.0.0 Ok: queued as Q1"))
        self.assertEqual(server.messages, [Received(SENDER, ["bob@remote.test", "dave@remote.test"], data)])

    def test_all_recipients_refused_no_text_is_sent_and_the_connection_serves_the_next_message(self):
        refuse = {r: f"550 5.1.1 <{r}>: User unknown" for r in RCPTS}
        server, sender = self.start(refuse=refuse)
        token = uuid.uuid4().hex
        results = self.deliver(sender, message(token))
        self.assertEqual({r: (res.code, res.text) for r, res in results.items()},
                         {r: (550, refuse[r]) for r in RCPTS})
        self.assertNotIn(token.encode(), server.wire())
        self.assertEqual(server.verbs()[-2:], ["DATA", "RSET"])  # DATA refused (554), then RSET
        self.assertEqual(server.messages, [])
        # The same connection takes the next message.
        data = message(uuid.uuid4().hex)
        results = self.deliver(sender, data, ["erin@remote.test"])
        self.assertTrue(results["erin@remote.test"].sent, results)
        self.assertEqual(server.messages, [Received(SENDER, ["erin@remote.test"], data)])
        self.assertEqual(len(server.connections), 1)

    def test_mail_refused_with_451_is_the_result_of_every_recipient(self):
        server, sender = self.start(mail_reply="451 4.3.0 Try again later")
        token = uuid.uuid4().hex
        results = self.deliver(sender, message(token))
        self.assertEqual({r: (res.code, res.text, res.remote) for r, res in results.items()},
                         {r: (451, "451 4.3.0 Try again later", "127.0.0.1") for r in RCPTS})
        self.assertFalse(any(r.sent or r.permanent for r in results.values()))
        self.assertNotIn(token.encode(), server.wire())
        # Every reply of the group was read before the reset and the hang-up.
        self.assertEqual(server.verbs(), ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "DATA", "RSET", "QUIT"])
        self.assertEqual(sender.stats.get("outgoing_current"), 0)

    def test_mail_refused_with_421_and_a_hang_up_still_gives_the_421(self):
        server, sender = self.start(mail_reply="421 4.3.2 Service shutting down",
                                    hang_up_after_mail=True)
        results = self.deliver(sender, message(uuid.uuid4().hex))
        self.assertEqual({res.text for res in results.values()}, {"421 4.3.2 Service shutting down"})
        self.assertEqual(sender.stats.get("outgoing_current"), 0)  # counted down once, not twice

    def test_a_mail_reply_without_a_reply_code_defers_and_never_bounces(self):
        # Before, smtplib's code -1 passed for an accepted MAIL; the RCPTs then got the
        # server's 503 "need MAIL", and the message bounced for good.
        for pipelining in (True, False):
            with self.subTest(pipelining=pipelining):
                server, sender = self.start(pipelining=pipelining, mail_reply="sender ok")
                results = self.deliver(sender, message(uuid.uuid4().hex))
                for rcpt in RCPTS:
                    self.assertFalse(results[rcpt].sent, results[rcpt])
                    self.assertFalse(results[rcpt].permanent, results[rcpt])
                    self.assertIn("'sender ok', which is no SMTP reply", results[rcpt].text)
                self.assertEqual(server.texts_seen, 0, "no message text was sent")
                if not pipelining:
                    self.assertEqual(server.verbs(), ["EHLO", "MAIL"], "nothing after the MAIL")

    def test_broken_server_354_with_no_recipient_gets_a_lone_dot_then_rset(self):
        refuse = {r: f"550 5.7.1 <{r}>: Relay access denied" for r in RCPTS}
        server, sender = self.start(refuse=refuse, data_354_anyway=True)
        token = uuid.uuid4().hex
        results = self.deliver(sender, message(token))
        self.assertEqual({r: (res.code, res.text) for r, res in results.items()},
                         {r: (550, refuse[r]) for r in RCPTS})
        self.assertNotIn(token.encode(), server.wire())
        self.assertEqual(server.messages, [Received(SENDER, [], b"")])  # "." alone: an empty text
        self.assertIn(b"data\r\n", server.wire())
        self.assertEqual(server.verbs()[-2:], ["DATA", "RSET"])
        (conn,) = server.connections
        self.assertIn(b".\r\n", conn.chunks)  # the dot came on its own, after the 354

    def test_dot_stuffing_lines_starting_with_a_dot_arrive_unchanged(self):
        server, sender = self.start()
        body = b".hidden line\r\n..two dots\r\n.\r\nlast line without an end"
        data = message(uuid.uuid4().hex, body)
        results = self.deliver(sender, data)
        self.assertTrue(all(r.sent for r in results.values()), results)
        (got,) = server.messages
        self.assertEqual(got.data, data + b"\r\n")  # the missing line end is added, as smtplib does
        wire = server.wire()
        self.assertIn(b"\r\n..hidden line\r\n...two dots\r\n..\r\nlast line", wire)
        # A text whose very first line starts with a dot (no header at all) is stuffed too.
        bare = b".first line\r\n..second\r\n"
        results = self.deliver(sender, bare)
        self.assertTrue(all(r.sent for r in results.values()), results)
        self.assertEqual(server.messages[-1].data, bare)
        self.assertIn(b"..first line\r\n...second\r\n.\r\n", server.wire())

    def test_many_recipients_go_in_windows_of_at_most_WINDOW_commands(self):
        server, sender = self.start()
        rcpts = [f"user{i}@remote.test" for i in range(150)]
        data = message(uuid.uuid4().hex)
        results = self.deliver(sender, data, rcpts)
        self.assertTrue(all(r.sent for r in results.values()), results)
        self.assertEqual(server.messages, [Received(SENDER, rcpts, data)])
        (conn,) = server.connections
        writes = [c.count(b"\r\n") for c in conn.chunks if c[:4].lower() in (b"mail", b"rcpt")]
        self.assertEqual(sum(writes), 1 + 150 + 1)
        self.assertLessEqual(max(writes), pipeline.WINDOW, writes)

    def test_stale_cached_connection_is_retried_before_any_reply(self):
        server, sender = self.start()
        first = message(uuid.uuid4().hex)
        self.assertTrue(all(r.sent for r in self.deliver(sender, first).values()))
        server.drop_connections()
        time.sleep(0.2)  # the hang-up reaches the client's socket
        second = message(uuid.uuid4().hex)
        results = self.deliver(sender, second)
        self.assertTrue(all(r.sent for r in results.values()), results)
        self.assertEqual([m.data for m in server.messages], [first, second])
        self.assertEqual(len(server.connections), 2)

    def test_no_retry_once_the_text_was_sent_even_on_a_reused_connection(self):
        server, sender = self.start(vanish_on_message=2)
        first, second = message(uuid.uuid4().hex), message(uuid.uuid4().hex)
        self.assertTrue(all(r.sent for r in self.deliver(sender, first).values()))
        results = self.deliver(sender, second)
        for result in results.values():
            self.assertEqual(result.code, 0)
            self.assertIn("Lost connection", result.text)
            self.assertFalse(result.permanent)  # the queue tries again later
        # The server had the whole text: a second try now could deliver it twice.
        self.assertEqual(server.texts_seen, 2)
        self.assertEqual(len(server.connections), 1)
        self.assertEqual(sender.stats.get("outgoing_current"), 0)


class BatchTest(PipeliningCase):
    """Several messages for one next hop in one request (Sender.deliver_many, what the queue
    does with a backlog): one connection, and after the first, each text in the same write
    as the next message's MAIL, RCPT and DATA; each message still has its own outcome."""

    def batch(self, sender: Sender, texts: list[bytes], rcpts_of=None) -> tuple[list, list[int]]:
        items = [(SENDER, rcpts_of(i) if rcpts_of else ["bob@remote.test"], "remote.test", text,
                  False, "7BIT", "") for i, text in enumerate(texts)]
        reported: list[int] = []
        results = sender.deliver_many(items, lambda index, _: reported.append(index))
        return results, reported

    def test_each_text_goes_with_the_next_envelope_over_one_connection(self):
        server, sender = self.start()
        texts = [message(uuid.uuid4().hex) for _ in range(5)]
        results, reported = self.batch(sender, texts)
        self.assertEqual([r["bob@remote.test"].text for r in results],
                         [f"250 2.0.0 Ok: queued as Q{i}" for i in range(1, 6)])
        self.assertEqual(sorted(reported), [0, 1, 2, 3, 4], "every message reported once")
        self.assertEqual(server.messages, [Received(SENDER, ["bob@remote.test"], t) for t in texts])
        (conn,) = server.connections
        # One write per message: the first envelope alone, then text n + envelope n+1, then
        # the last text alone.
        joined = [c for c in conn.chunks if b"\r\n.\r\nmail FROM:" in c]
        self.assertEqual(len(joined), 4, conn.chunks)
        self.assertEqual(sum(1 for c in conn.chunks if c.lower().startswith(b"mail from:")), 1)

    def test_a_refusal_in_the_middle_does_not_stop_the_messages_after_it(self):
        refusal = "550 5.1.1 <nobody@remote.test>: User unknown"
        server, sender = self.start(refuse={"nobody@remote.test": refusal})
        texts = [message(uuid.uuid4().hex) for _ in range(4)]
        results, reported = self.batch(
            sender, texts, lambda i: ["nobody@remote.test"] if i == 1 else ["bob@remote.test"])
        self.assertEqual(results[1], {"nobody@remote.test": Result(550, refusal, "127.0.0.1")})
        for i in (0, 2, 3):
            self.assertTrue(results[i]["bob@remote.test"].sent, results[i])
        self.assertEqual([m.data for m in server.messages], [texts[0], texts[2], texts[3]])
        self.assertEqual(sorted(reported), [0, 1, 2, 3])
        self.assertEqual(len(server.connections), 1)

    def test_a_connection_lost_after_a_text_defers_that_one_and_the_rest_go_on_a_new_one(self):
        server, sender = self.start(vanish_on_message=2)
        texts = [message(uuid.uuid4().hex) for _ in range(4)]
        results, _ = self.batch(sender, texts)
        self.assertTrue(results[0]["bob@remote.test"].sent)
        lost = results[1]["bob@remote.test"]
        self.assertEqual(lost.code, 0)
        self.assertIn("Lost connection", lost.text)
        self.assertFalse(lost.permanent)  # the queue tries it again later
        self.assertTrue(results[2]["bob@remote.test"].sent, results[2])
        self.assertTrue(results[3]["bob@remote.test"].sent, results[3])
        # The server read the second text (and hung up without a word): it is not sent again
        # within the request; the third and fourth went on a second connection.
        self.assertEqual([m.data for m in server.messages], [texts[0], texts[2], texts[3]])
        self.assertEqual(server.texts_seen, 4)
        self.assertEqual(len(server.connections), 2)
        sender.close_idle(force=True)
        self.assertEqual(sender.stats.get("outgoing_current"), 0)

    def test_a_reply_out_of_step_never_counts_as_another_messages_delivery(self):
        # A server (or a middlebox in front of it) that answers a text with lines that are no
        # SMTP reply, or with more replies than commands, puts every later reply on the
        # connection out of step.  Whatever it did, no message may count as delivered that
        # the server did not take, none may bounce, and the rest go on a new connection.
        cases = [["garbage", "250 2.0.0 Ok: taken after all"], ["queue file write error", "451 4.3.0 no"],
                 ["250-one", "not a reply line", "250 two"], ["250 2.0.0 Ok", "250 2.0.0 Ok again"],
                 ["250 2.0.0 Ok", "354 go ahead"], ["2"]]
        for lines in cases:
            for broken in (1, 2):
                with self.subTest(lines=lines, message=broken):
                    server, sender = self.start(text_replies={broken: lines})
                    texts = [message(uuid.uuid4().hex) for _ in range(5)]
                    results, reported = self.batch(sender, texts)
                    self.assertEqual(sorted(reported), [0, 1, 2, 3, 4])
                    taken = [texts.index(m.data) for m in server.messages]
                    self.assertEqual(len(taken), len(set(taken)), "no text twice")
                    for i, result in enumerate(results):
                        result = result["bob@remote.test"]
                        self.assertFalse(result.permanent, (i, result))
                        if i != broken - 1:  # (its own reply may say anything)
                            self.assertEqual(result.sent, i in taken, (i, result, taken))
                    self.assertGreaterEqual(len(taken), 3, "the messages after it still went")

    def test_a_bug_with_one_message_defers_it_and_the_held_one_and_the_rest_still_go(self):
        server, sender = self.start()
        texts = [message(uuid.uuid4().hex) for _ in range(3)]
        real = pipeline.envelope

        def envelope(smtp, mail_from, options, rcpts):
            if rcpts == ["carol@remote.test"]:
                raise RuntimeError("a bug")
            return real(smtp, mail_from, options, rcpts)

        started = time.monotonic()
        with unittest.mock.patch.object(pipeline, "envelope", envelope), \
                self.assertLogs("ismail.sender", "ERROR"):
            results, reported = self.batch(
                sender, texts, lambda i: ["carol@remote.test"] if i == 1 else ["bob@remote.test"])
        # The connection was in the middle of the first message's DATA: it was closed without
        # a word (a QUIT would have been taken as text, and waited minutes for a reply).
        self.assertLess(time.monotonic() - started, 10)
        for i in (0, 1):
            only = next(iter(results[i].values()))
            self.assertEqual(only.code, 0, results[i])   # waits in the queue, tried again later
        self.assertIn("Internal error", results[1]["carol@remote.test"].text)
        self.assertTrue(results[2]["bob@remote.test"].sent, results[2])
        self.assertEqual([m.data for m in server.messages], [texts[2]])
        self.assertEqual(server.texts_seen, 1, "the first text was sent after all")
        self.assertEqual(sorted(reported), [0, 1, 2])
        sender.close_idle(force=True)
        self.assertEqual(sender.stats.get("outgoing_current"), 0)

    def test_a_destination_that_turns_mail_away_at_the_greeting_is_asked_once_per_request(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        self.addCleanup(listener.close)
        accepted: list[int] = []
        done = threading.Event()

        def busy() -> None:
            deadline = time.monotonic() + SERVER_SECONDS
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                accepted.append(1)
                conn.sendall(b"421 4.3.2 busy.example.test Service not available\r\n")
                conn.close()

        watcher = threading.Thread(target=busy, daemon=True)
        watcher.start()
        self.addCleanup(watcher.join, 5)
        self.addCleanup(done.set)
        sender = sender_for(listener.getsockname()[1])
        results, reported = self.batch(sender, [message(uuid.uuid4().hex) for _ in range(5)])
        for r in results:
            self.assertEqual(r["bob@remote.test"].code, 421)
            self.assertFalse(r["bob@remote.test"].permanent)
        self.assertEqual(sorted(reported), [0, 1, 2, 3, 4])
        self.assertEqual(len(accepted), 1, "the busy server was asked again for each message")
        # The next request asks again: the server may have recovered by then.
        self.batch(sender, [message(uuid.uuid4().hex)])
        self.assertEqual(len(accepted), 2)


class SmtpSinkTest(DeliveryCase):
    """Postfix's smtp-sink offers PIPELINING: 50 messages through one Sender."""

    def test_fifty_messages_each_arrive_once(self):
        sink = self.sink(name="pipesink")
        sender = sender_for(sink.port)
        self.addCleanup(sender.close_idle, True)
        rcpts = ["one@remote.test", "two@remote.test"]
        tokens = [new_token() for _ in range(50)]
        for token in tokens:
            results = sender.deliver(SENDER, rcpts, "remote.test", message_text(SENDER, rcpts, token))
            self.assertTrue(all(r.sent for r in results.values()), results)
        self.assertTrue(sender.transport._local.cached.smtp.has_extn("pipelining"), "smtp-sink offered no PIPELINING")
        sender.close_idle(force=True)
        self.wait_for(lambda: sink.mesg_counter() >= 50, 20, "50 messages counted by smtp-sink")
        self.assertEqual(sink.mesg_counter(), 50)
        self.assertEqual(sorted(sink.tokens()), sorted(tokens))
        (dump,) = sink.dumps_with(tokens[-1])
        self.assertEqual(dump.rcpts, [f"<{r}>" for r in rcpts])
        self.assertIn(SENDER, dump.mail_args)



class QuoteAddrTest(unittest.TestCase):
    """The MAIL and RCPT arguments are written as smtplib writes them, fast path or not."""

    def test_the_same_as_smtplib_for_every_kind_of_address(self):
        import smtplib
        for address in ("user@example.test", "a.b+c=d@mail.example.test", "üser@exämple.test",
                        "SRS0=HhH=AB=example.test=user@forwarder.test", "", "<>", "postmaster",
                        '"a b"@example.test', '"a\\"b"@example.test', "a(comment)@example.test",
                        "user@[127.0.0.1]", "Name <user@example.test>", "a@b@c", " user@example.test"):
            with self.subTest(address=address):
                self.assertEqual(pipeline.quoteaddr(address), smtplib.quoteaddr(address))

if __name__ == "__main__":
    unittest.main()
