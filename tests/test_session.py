"""The SMTP state machine, fed bytes directly (no sockets), against a real spool and Maildirs."""
import mailbox
import re
import shutil
import tempfile
import unittest
from dataclasses import asdict
from pathlib import Path
from unittest import mock

from ismail.config import from_dict
from ismail.smtp.policy import Policy
from ismail.queue.spool import Spool
from ismail.service import MailServer
from ismail.smtp.session import MAX_ERRORS, STAGE_MAX, Session

REPLY_LINE = re.compile(rb"^[2-5][0-9]{2}[ -][^\r\n]*\r\n$")


def codes(data: bytes) -> list[int]:
    """The reply codes of the final line of each reply in data."""
    lines = data.split(b"\r\n")[:-1]
    return [int(line[:3]) for line in lines if line[3:4] == b" "]


class SessionTestCase(unittest.TestCase):
    settings = {}

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-session-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        base = {"server_name": "mx.example.test", "primary_domain": "example.test", "dkim": {"auto_keys": False}, "tls": {"self_signed": False},
                # No DNS-based anti-spam checks (no test may ask the machine's resolver) and no
                # connection-rate limit (load tests reconnect from one untrusted address); tests/
                # test_antispam_* turn them on, with dnsmasq.
                "antispam": {"rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off",
                 "connection_rate": 0},
                "additional_domains": ["other.test"], "listen": ["127.0.0.1:2525"]}
        base.update(self.settings)
        self.config, _ = from_dict(base)
        self.server = MailServer(self.config, self.dir)
        self.server.accounts.load()
        self.server.spool.prepare()
        self.addCleanup(self.server.spool.close)  # its journal's thread, before the folder goes
        self.server.accounts.add("user@example.test", "pw", self.config.local_domains())

    def session(self, trusted=False, ip="192.0.2.1") -> Session:
        s = Session(self.server, Policy(self.config), ip, trusted=trusted)
        self.assertTrue(s.greeting().startswith(b"220 mx.example.test ESMTP"))
        return s

    def talk(self, s: Session, *lines: str | bytes) -> list[bytes]:
        """Send each line separately; return each answer."""
        out = []
        for line in lines:
            raw = line if isinstance(line, bytes) else line.encode() + b"\r\n"
            out.append(s.feed(raw))
        return out

    def maildir(self, local="user", domain="example.test"):
        return mailbox.Maildir(self.dir / "mailboxes" / domain / local, factory=None, create=False)

    def queued(self) -> list[tuple[dict, bytes]]:
        """(envelope, message) of each queue entry, read through the spool (after the
        server's journal has written the files it holds, as it does for the queue window)."""
        self.server.spool.write_out()
        spool = Spool(self.dir / "queue")
        return [(asdict(spool.load(qid)), spool.read_message(qid)) for qid in spool.list_ids()]


class CommandsTest(SessionTestCase):
    def test_ehlo_advertises_the_extensions(self):
        s = self.session()
        answer = s.feed(b"EHLO client.example\r\n")
        for ext in (b"PIPELINING", b"SIZE 52428800", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SMTPUTF8"):
            self.assertIn(b"250-" + ext + b"\r\n" if ext != b"SMTPUTF8" else b"SMTPUTF8", answer)
        self.assertTrue(all(REPLY_LINE.match(l + b"\r\n") for l in answer.split(b"\r\n")[:-1]))
        self.assertEqual(codes(answer), [250])

    def test_a_full_local_delivery(self):
        s = self.session()
        r = self.talk(s, "EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<User@Example.TEST>", "DATA")
        self.assertEqual([codes(x) for x in r], [[250], [250], [250], [354]])
        self.assertTrue(r[1].startswith(b"250 2.1.0"))
        self.assertTrue(r[2].startswith(b"250 2.1.5"))
        end = s.feed(b"Subject: t\r\n\r\nhello\r\n..leading dot\r\n.\r\n")
        self.assertRegex(end, rb"^250 2\.0\.0 Ok: queued as [0-9A-F]{16}\r\n$")
        box = self.maildir()
        self.assertEqual(len(box), 1)
        text = box.get_bytes(next(iter(box.keys()))).decode()
        self.assertTrue(text.startswith("Return-Path: <a@example.org>\nAuthentication-Results: mx.example.test; none\n"
                                        "Received: from c.example ([192.0.2.1])\n"), text)
        self.assertIn("by mx.example.test (ISMail) with ESMTP id", text)
        self.assertIn("for <User@example.test>", text)  # the local part as the client wrote it
        self.assertTrue(text.endswith("\nhello\n.leading dot\n"))
        self.assertNotIn("\r", text)
        self.assertEqual(self.server.stats.get("messages_received"), 1)

    def test_pipelined_commands_get_all_replies_in_one_answer(self):
        s = self.session()
        answer = s.feed(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<user@example.test>\r\n"
                        b"RCPT TO:<nobody@example.test>\r\nDATA\r\n")
        self.assertEqual(codes(answer), [250, 250, 250, 550, 354])
        self.assertIn(b"550 5.1.1 <nobody@example.test>", answer)
        answer = s.feed(b"x\r\n.\r\nQUIT\r\n")
        self.assertEqual(codes(answer), [250, 221])
        self.assertTrue(s.closing and s.quit)

    def test_commands_out_of_order(self):
        s = self.session()
        self.assertTrue(s.feed(b"MAIL FROM:<a@b.example>\r\n").startswith(b"503 5.5.1"))
        s.feed(b"HELO c\r\n")
        self.assertTrue(s.feed(b"RCPT TO:<user@example.test>\r\n").startswith(b"503 5.5.1"))
        self.assertTrue(s.feed(b"DATA\r\n").startswith(b"503 5.5.1"))
        s.feed(b"MAIL FROM:<a@b.example>\r\n")
        self.assertTrue(s.feed(b"MAIL FROM:<a@b.example>\r\n").startswith(b"503 5.5.1"))
        self.assertTrue(s.feed(b"DATA\r\n").startswith(b"554 5.5.1"))
        self.assertEqual(codes(s.feed(b"RSET\r\n")), [250])
        self.assertTrue(s.feed(b"RCPT TO:<user@example.test>\r\n").startswith(b"503"))

    def test_vrfy_and_expn_reveal_nothing(self):
        s = self.session()
        known = s.feed(b"VRFY user@example.test\r\n")
        unknown = s.feed(b"VRFY nobody@example.test\r\n")
        self.assertTrue(known.startswith(b"252 "))
        self.assertEqual(known, unknown)
        self.assertTrue(s.feed(b"EXPN staff\r\n").startswith(b"502 5.5.1"))

    def test_malformed_commands_get_5xx_with_a_reason(self):
        s = self.session()
        for line in (b"\r\n", b"FOO bar\r\n", b"EHLO\r\n", b"MAIL FROM:<a@b\r\n", b"\xff\xfe\r\n",
                     b"NOOP \x01\r\n", b"STARTTLS\r\n"):
            answer = s.feed(line)
            self.assertRegex(answer, rb"^5[0-9]{2} 5\.[0-9]\.[0-9]+ \S", line)
        s.feed(b"HELO c\r\n")
        self.assertTrue(s.feed(b"MAIL FROM:<a@b.example> FOO=1\r\n").startswith(b"555 5.5.4"))
        self.assertTrue(s.feed(b"MAIL FROM:a@b@c\r\n").startswith(b"501 5.1.7"))

    def test_mail_parameters_need_ehlo(self):
        s = self.session()
        s.feed(b"HELO c\r\n")
        self.assertTrue(s.feed(b"MAIL FROM:<a@b.example> SIZE=10\r\n").startswith(b"555"))
        s.feed(b"EHLO c\r\n")
        self.assertTrue(s.feed(b"MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME\r\n").startswith(b"250"))

    def test_size_over_the_limit_is_refused_at_mail(self):
        s = self.session()
        s.feed(b"EHLO c\r\n")
        answer = s.feed(b"MAIL FROM:<a@b.example> SIZE=%d\r\n" % (50 * 1024 * 1024 + 1))
        self.assertTrue(answer.startswith(b"552 5.3.4"))

    def test_non_ascii_address_needs_smtputf8(self):
        s = self.session(trusted=True)
        s.feed(b"EHLO c\r\n")
        self.assertTrue(s.feed("MAIL FROM:<jos\u00e9@example.org>\r\n".encode()).startswith(b"553 5.6.7"))
        self.assertTrue(s.feed("MAIL FROM:<jos\u00e9@example.org> SMTPUTF8\r\n".encode()).startswith(b"250"))
        self.assertTrue(s.feed("RCPT TO:<\u7528\u6237@\u4f8b\u5b50.test>\r\n".encode()).startswith(b"250"))

    def test_too_many_errors_closes_with_421(self):
        s = self.session()
        answers = b"".join(s.feed(b"BOGUS\r\n") for _ in range(MAX_ERRORS))
        self.assertTrue(answers.endswith(b"\r\n") and b"421 4.7.0" in answers)
        self.assertTrue(s.closing)
        self.assertEqual(codes(answers).count(500), MAX_ERRORS)
        self.assertEqual(s.feed(b"NOOP\r\n"), b"")  # nothing is answered after the 421

    def test_over_long_command_line(self):
        s = self.session()
        answer = s.feed(b"NOOP " + b"x" * 600 + b"\r\n")
        self.assertTrue(answer.startswith(b"500 5.5.2"))
        # Sent in pieces, the line is answered once, and the session goes on.
        answer = s.feed(b"NOOP " + b"y" * 5000) + s.feed(b"y" * 5000) + s.feed(b"\r\nNOOP\r\n")
        self.assertEqual(codes(answer), [500, 250])

    def test_mail_line_may_be_longer_for_its_parameters(self):
        s = self.session(trusted=True)
        s.feed(b"EHLO c\r\n")
        local = b"a" * 64
        domain = b".".join([b"b" * 60] * 3) + b".ex"  # 254 octets with the brackets
        line = b"MAIL FROM:<" + local + b"@" + domain + b"> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n"
        self.assertGreater(len(line), 250)
        self.assertTrue(s.feed(line).startswith(b"250"), line)


class RelayTest(SessionTestCase):
    def rcpt(self, s: Session, address: str) -> bytes:
        s.feed(b"RSET\r\n")
        s.feed(b"MAIL FROM:<antispam@[192.0.2.10]>\r\n")
        return s.feed(b"RCPT TO:" + address.encode() + b"\r\n")

    def test_strangers_may_only_send_to_our_domains(self):
        s = self.session(trusted=False)
        s.feed(b"EHLO x\r\n")
        answer = self.rcpt(s, "<victim@remote.example>")
        self.assertTrue(answer.startswith(b"554 5.7.1"), answer)
        self.assertIn(b"Relay access denied", answer)
        self.assertTrue(self.rcpt(s, "<user@example.test>").startswith(b"250"))
        self.assertTrue(self.rcpt(s, "<postmaster@other.test>").startswith(b"250"))
        self.assertTrue(self.rcpt(s, "<ROOT@other.test>").startswith(b"250"))
        self.assertTrue(self.rcpt(s, "<postmaster>").startswith(b"250"))
        self.assertEqual(self.server.stats.get("relay_refused"), 1)

    def test_every_nmap_relay_pattern_is_refused_from_a_stranger(self):
        s = self.session(trusted=False)
        s.feed(b"EHLO x\r\n")
        srvip, srvhost, ext = "[192.0.2.1]", "mx.example.test", "nmap.scanme.org"
        for pattern in (f"<relaytest@{ext}>", f"<relaytest%{ext}@{srvip}>", f"<relaytest%{ext}@{srvhost}>",
                        f'<"relaytest@{ext}">', f'<"relaytest%{ext}">', f"<relaytest@{ext}@{srvip}>",
                        f'<"relaytest@{ext}"@{srvip}>', f"<relaytest@{ext}@{srvhost}>",
                        f"<@{srvip}:relaytest@{ext}>", f"<@{srvhost}:relaytest@{ext}>",
                        f"<{ext}!relaytest>", f"<{ext}!relaytest@{srvip}>", f"<{ext}!relaytest@{srvhost}>",
                        f"<relaytest%{ext}@example.test>", f"<{ext}!relaytest@example.test>",
                        f"<@example.test:relaytest@{ext}>", f'<"relaytest@{ext}"@example.test>'):
            answer = self.rcpt(s, pattern)
            self.assertTrue(answer[:1] == b"5", (pattern, answer))
        self.assertEqual(self.queued(), [])

    def test_trusted_clients_relay_into_the_queue(self):
        s = self.session(trusted=True, ip="127.0.0.1")
        s.feed(b"EHLO x\r\n")
        answers = self.talk(s, "MAIL FROM:<me@example.test>", "RCPT TO:<friend@remote.example>",
                            "RCPT TO:<user@example.test>", "DATA")
        self.assertEqual([codes(a) for a in answers], [[250], [250], [250], [354]])
        self.assertTrue(s.feed(b"Subject: out\r\n\r\nbody\r\n.\r\n").startswith(b"250"))
        [(entry, eml)] = self.queued()
        self.assertEqual(entry["sender"], "me@example.test")
        self.assertEqual([r["address"] for r in entry["recipients"]], ["friend@remote.example"])
        self.assertEqual(entry["client_ip"], "127.0.0.1")
        self.assertTrue(eml.startswith(b"Received: from x ([127.0.0.1])\r\n"))
        self.assertNotIn(b"Return-Path", eml)
        self.assertTrue(eml.endswith(b"\r\n\r\nbody\r\n"))
        self.assertEqual(len(self.maildir()), 1)  # the local recipient got its copy

    def test_unknown_local_user_is_refused_at_rcpt(self):
        s = self.session(trusted=True)
        s.feed(b"EHLO x\r\nMAIL FROM:<>\r\n")
        self.assertTrue(s.feed(b"RCPT TO:<ghost@example.test>\r\n").startswith(b"550 5.1.1"))


class DataTest(SessionTestCase):
    def start(self, s):
        answer = s.feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n")
        self.assertEqual(codes(answer), [250, 250, 250, 354])

    def test_bare_lf_and_bare_cr_are_refused_and_nothing_stored(self):
        for body in (b"a\nb\r\n", b"a\rb\r\n", b"a\r\n\n", b"ok\r\nend\r"):
            s = self.session()
            self.start(s)
            answer = s.feed(body + b"\r\n.\r\n")
            self.assertTrue(answer.startswith(b"550 5.5.2"), (body, answer))
            self.assertEqual(len(self.maildir()), 0)

    def test_smuggling_variants_never_end_the_message(self):
        smuggled = b"MAIL FROM:<evil@b.example>\r\nRCPT TO:<user@example.test>\r\nDATA\r\nforged\r\n"
        for end in (b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n"):
            s = self.session()
            self.start(s)
            answer = s.feed(b"Subject: x\r\n\r\ntext" + end + smuggled)
            self.assertEqual(answer, b"", end)  # nothing ran: still inside the first message
            answer = s.feed(b".\r\n")
            self.assertEqual(codes(answer), [550], end)
            self.assertEqual(len(self.maildir()), 0, end)

    def test_the_real_end_only_after_crlf(self):
        s = self.session()
        self.start(s)
        self.assertEqual(s.feed(b"a\r\n"), b"")
        self.assertEqual(s.feed(b"."), b"")
        self.assertEqual(s.feed(b"\r"), b"")
        self.assertTrue(s.feed(b"\n").startswith(b"250"))

    def test_data_split_in_every_possible_place(self):
        data = b"Subject: split\r\n\r\nline one\r\n..dot\r\n.\r\n"
        for cut in range(1, len(data)):
            s = self.session()
            self.start(s)
            answer = s.feed(data[:cut]) + s.feed(data[cut:])
            self.assertEqual(codes(answer), [250], cut)
        bodies = {m.get_payload() for _, m in self.maildir().iteritems()}
        self.assertEqual(bodies, {"line one\n.dot\n"})

    def test_too_long_text_line_is_refused(self):
        s = self.session()
        self.start(s)
        answer = s.feed(b"x" * 999 + b"\r\n")
        answer += s.feed(b"y" * 1200 + b"\r\n.\r\n")
        self.assertTrue(answer.startswith(b"550 5.5.2"), answer)
        self.assertIn(b"1000", answer)
        self.assertEqual(len(self.maildir()), 0)
        s = self.session()
        self.start(s)
        self.assertTrue(s.feed(b"x" * 998 + b"\r\n.\r\n").startswith(b"250"))  # exactly 1000 octets

    def test_long_line_arriving_in_pieces_then_real_end(self):
        s = self.session()
        self.start(s)
        answer = b"".join(s.feed(b"z" * 700) for _ in range(5)) + s.feed(b"\r\n.\r\n")
        self.assertEqual(codes(answer), [550])
        self.assertEqual(len(self.maildir()), 0)

    def test_oversize_message_gets_552_and_nothing_is_stored(self):
        self.server.settings = self.config
        self.config.max_message_size_mb = 1
        s = self.session()
        self.start(s)
        chunk = (b"x" * 98 + b"\r\n") * 1000
        answer = b"".join(s.feed(chunk) for _ in range(11)) + s.feed(b".\r\n")
        self.assertEqual(codes(answer), [552])
        self.assertTrue(answer.startswith(b"552 5.3.4"))
        self.assertEqual(len(self.maildir()), 0)
        self.assertEqual(list((self.dir / "queue" / "tmp").iterdir()), [])

    def test_large_message_spills_to_disk_and_arrives_whole(self):
        s = self.session()
        self.start(s)
        line = b"0123456789" * 9 + b"\r\n"
        for _ in range(30):
            s.feed(line * 1000)  # 2.8 MB in all: over the in-memory threshold
        self.assertTrue(s.feed(b".\r\n").startswith(b"250"))
        [(key, msg)] = list(self.maildir().iteritems())
        self.assertEqual(msg.get_payload().count("0123456789" * 9 + "\n"), 30000)

    def test_disk_failure_is_a_temporary_error_and_the_session_goes_on(self):
        s = self.session()
        self.start(s)
        box = self.dir / "mailboxes" / "example.test" / "user"
        shutil.rmtree(box)
        box.write_text("not a folder")  # delivery into it fails with an OSError
        answer = s.feed(b"hi\r\n.\r\n")
        self.assertTrue(answer.startswith(b"452 4.3.1"), answer)
        box.unlink()
        self.start(s)
        self.assertTrue(s.feed(b"hi\r\n.\r\n").startswith(b"250"))


if __name__ == "__main__":
    unittest.main()


class StagedDataTest(SessionTestCase):
    """feed(stage=True), as the receiver's loop feeds: the end of a small message for our
    own mailboxes is staged (appended to the journal) and settle() gives its reply once the
    journal's sync holds it and the file is in place."""

    def start(self, s):
        answer = s.feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n")
        self.assertEqual(codes(answer), [250, 250, 250, 354])

    def test_the_reply_and_the_file_wait_for_settle_and_pipelined_commands_wait_for_the_reply(self):
        s = self.session()
        self.start(s)
        text = b"Subject: staged\r\n\r\nhello\r\n.\r\n"
        self.assertEqual(s.may_block(text), "disk", "stored before the feed returns unless staged")
        self.assertEqual(s.may_block(text, stage=True), "")
        self.assertEqual(s.feed(text + b"NOOP\r\n", stage=True), b"", "no reply before settle")
        self.assertIsNotNone(s.pending)
        self.assertTrue(s.buffered, "the NOOP is kept")
        self.assertEqual(len(self.maildir()), 0, "not in new/ before its sync")
        self.assertEqual(codes(s.settle()), [250])
        self.assertIsNone(s.pending)
        [message] = self.maildir()
        self.assertEqual((message["Subject"], message.get_payload()), ("staged", "hello\n"))
        self.assertEqual(codes(s.feed(b"")), [250], "then the NOOP")
        self.assertEqual(s.messages, 1)

    def test_messages_staged_together_share_one_sync(self):
        sessions = [self.session() for _ in range(5)]
        for n, s in enumerate(sessions):
            self.start(s)
            self.assertEqual(s.feed(b"Subject: %d\r\n\r\nx\r\n.\r\n" % n, stage=True), b"")
        journal = self.server.spool.journal
        before = journal.syncs
        self.assertEqual([codes(s.settle()) for s in sessions], [[250]] * 5)
        self.assertEqual(journal.syncs - before, 1)
        self.assertEqual(len(self.maildir()), 5)

    def test_a_file_written_ahead_is_only_renamed_when_settled(self):
        # The settling thread waits for the sync and writes the file into tmp/; the SMTP
        # loop's settle() then only renames it into new/ (creating a file is the slow part).
        s = self.session()
        self.start(s)
        self.assertEqual(s.feed(b"Subject: ahead\r\n\r\nwritten early\r\n.\r\n", stage=True), b"")
        s.durable()
        self.assertTrue(s.write_ahead())
        tmp = self.dir / "mailboxes" / "example.test" / "user" / "tmp"
        [early] = list(tmp.iterdir())
        self.assertIn(b"written early\n", early.read_bytes())
        self.assertEqual(len(self.maildir()), 0, "not in new/ before settle()")
        self.assertEqual(codes(s.settle()), [250])
        self.assertEqual(list(tmp.iterdir()), [])
        [message] = self.maildir()
        self.assertEqual((message["Subject"], message.get_payload()), ("ahead", "written early\n"))

    def test_a_failed_write_ahead_leaves_the_whole_placing_to_settle(self):
        s = self.session()
        self.start(s)
        self.assertEqual(s.feed(b"Subject: later\r\n\r\nx\r\n.\r\n", stage=True), b"")
        with mock.patch("ismail.store.maildir.write_new_file", side_effect=OSError(28, "No space left")):
            self.assertFalse(s.write_ahead())
        tmp = self.dir / "mailboxes" / "example.test" / "user" / "tmp"
        self.assertEqual(list(tmp.iterdir()), [])
        self.assertEqual(codes(s.settle()), [250])
        self.assertEqual(len(self.maildir()), 1)

    def test_mail_to_send_on_is_queued_when_settled(self):
        s = self.session(trusted=True)
        answer = s.feed(b"EHLO c\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<x@remote.example>\r\nDATA\r\n")
        self.assertEqual(codes(answer), [250, 250, 250, 354])
        self.assertEqual(s.may_block(b"x\r\n.\r\n", stage=True), "")
        with mock.patch.object(self.server.spool, "on_enqueue") as handed:
            self.assertEqual(s.feed(b"Subject: on\r\n\r\nx\r\n.\r\n", stage=True), b"")
            handed.assert_not_called()  # not to the queue before its sync
            self.assertFalse(s.write_ahead(), "no file to write: the loop need not answer it")
            self.assertEqual(codes(s.settle()), [250])
            [(entry, text)] = [c.args for c in handed.call_args_list]
        self.assertEqual([r.address for r in entry.recipients], ["x@remote.example"])
        self.assertTrue(text.endswith(b"Subject: on\r\n\r\nx\r\n"), text)
        [(envelope, message)] = self.queued()
        self.assertEqual(envelope["sender"], "a@example.test")

    def test_mail_for_both_kinds_of_recipient_and_large_messages_are_stored_before_the_feed_returns(self):
        s = self.session(trusted=True)
        answer = s.feed(b"EHLO c\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<x@remote.example>\r\n"
                        b"RCPT TO:<user@example.test>\r\nDATA\r\n")
        self.assertEqual(codes(answer), [250, 250, 250, 250, 354])
        self.assertEqual(s.may_block(b"x\r\n.\r\n", stage=True), "disk")
        self.assertEqual(codes(s.feed(b"x\r\n.\r\n", stage=True)), [250])
        self.assertIsNone(s.pending)
        self.assertEqual((len(self.queued()), len(self.maildir())), (1, 1))
        s = self.session()
        self.start(s)
        big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * (STAGE_MAX // 1000 + 1)
        self.assertEqual(s.may_block(big, stage=True), "disk")

    def test_a_staged_message_that_cannot_be_placed_is_refused_with_452_and_not_delivered(self):
        s = self.session()
        self.start(s)
        self.assertEqual(s.feed(b"Subject: lost\r\n\r\nx\r\n.\r\n", stage=True), b"")
        with mock.patch("ismail.store.maildir.os.replace", side_effect=OSError(28, "No space left on device")):
            with self.assertLogs("ismail.session", "ERROR"):
                self.assertEqual(codes(s.settle()), [452])
        self.assertEqual(len(self.maildir()), 0)
        self.assertEqual(s.messages, 0)
        self.start(s)
        self.assertEqual(s.feed(b"Subject: next\r\n\r\ny\r\n.\r\n", stage=True), b"")
        self.assertEqual(codes(s.settle()), [250])
        self.assertEqual(len(self.maildir()), 1)


class AuthTest(SessionTestCase):
    settings = {"auth": {"enforce_sender": True, "ban_after_failures": 3}}

    @staticmethod
    def plain(user: str, password: str) -> bytes:
        import base64
        return base64.b64encode(f"\0{user}\0{password}".encode())

    def test_plain_and_login_succeed_and_allow_relay(self):
        import base64
        s = self.session(trusted=False, ip="192.0.2.7")
        s.tls_active = True  # as after STARTTLS
        s.feed(b"EHLO c\r\n")
        self.assertTrue(s.feed(b"MAIL FROM:<user@example.test>\r\n").startswith(b"250"))
        self.assertTrue(s.feed(b"RCPT TO:<x@remote.example>\r\n").startswith(b"554 5.7.1"))
        s.feed(b"RSET\r\n")
        self.assertEqual(s.feed(b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(s.feed(base64.b64encode(b"user") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n")
        self.assertTrue(s.feed(base64.b64encode(b"pw") + b"\r\n").startswith(b"235 2.7.0"))
        self.assertEqual(s.authenticated, "user@example.test")
        s.feed(b"MAIL FROM:<user@example.test>\r\n")
        self.assertTrue(s.feed(b"RCPT TO:<x@remote.example>\r\n").startswith(b"250"))
        s.feed(b"RSET\r\n")
        self.assertTrue(s.feed(b"MAIL FROM:<someone@example.test>\r\n").startswith(b"553 5.7.1"))

    def test_no_passwords_in_the_clear_from_strangers(self):
        s = self.session(trusted=False)
        self.assertNotIn(b"AUTH", s.feed(b"EHLO c\r\n"))
        self.assertTrue(s.feed(b"AUTH PLAIN " + self.plain("user@example.test", "pw") + b"\r\n")
                        .startswith(b"538 5.7.11"))
        self.assertEqual(s.authenticated, "")

    def test_wrong_password_cancel_and_ban(self):
        s = self.session(trusted=True, ip="192.0.2.9")
        s.feed(b"EHLO c\r\n")
        self.assertEqual(s.feed(b"AUTH PLAIN\r\n"), b"334 \r\n")
        self.assertTrue(s.feed(b"*\r\n").startswith(b"501 5.7.0"))
        self.assertTrue(s.feed(b"AUTH PLAIN !!notbase64\r\n").startswith(b"501 5.5.2"))
        for _ in range(2):
            self.assertTrue(s.feed(b"AUTH PLAIN " + self.plain("user", "wrong") + b"\r\n").startswith(b"535 5.7.8"))
        answer = s.feed(b"AUTH PLAIN " + self.plain("user", "wrong") + b"\r\n")
        self.assertTrue(answer.startswith(b"421 4.7.0"), answer)
        self.assertTrue(s.closing)
        self.assertEqual(self.server.guard.refused("192.0.2.9"), "banned")
        self.assertIsNone(self.server.guard.refused("192.0.2.10"))

    def test_submission_listener_wants_auth_even_from_trusted_networks(self):
        s = Session(self.server, Policy(self.config), "127.0.0.1", trusted=True, submission=True)
        s.feed(b"EHLO c\r\nMAIL FROM:<user@example.test>\r\n")
        self.assertTrue(s.feed(b"RCPT TO:<x@remote.example>\r\n").startswith(b"554 5.7.1"))
        self.assertTrue(s.feed(b"RCPT TO:<user@example.test>\r\n").startswith(b"250"))


class StartTLSTest(SessionTestCase):
    def test_starttls_discards_what_was_pipelined_after_it(self):
        s = Session(self.server, Policy(self.config), "192.0.2.1", trusted=False, tls_available=True)
        self.assertIn(b"STARTTLS", s.feed(b"EHLO c\r\n"))
        answer = s.feed(b"STARTTLS\r\nMAIL FROM:<evil@b.example>\r\n")
        self.assertEqual(answer, b"220 2.0.0 Ready to start TLS\r\n")  # the MAIL was not answered
        self.assertTrue(s.starttls)
        s.tls_started()
        self.assertTrue(s.feed(b"MAIL FROM:<a@b.example>\r\n").startswith(b"503"))  # EHLO again first
        ehlo = s.feed(b"EHLO c\r\n")
        self.assertNotIn(b"STARTTLS", ehlo)
        self.assertTrue(s.feed(b"STARTTLS\r\n").startswith(b"503"))

    def test_without_a_certificate_starttls_is_not_offered(self):
        s = self.session()
        self.assertNotIn(b"STARTTLS", s.feed(b"EHLO c\r\n"))
        self.assertTrue(s.feed(b"STARTTLS\r\n").startswith(b"502"))

    def test_data_before_the_354_ends_the_session(self):
        s = self.session()
        answer = s.feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<user@example.test>\r\n"
                        b"DATA\r\nSubject: early\r\n\r\nx\r\n.\r\n")
        self.assertEqual(codes(answer), [250, 250, 250, 554])
        self.assertTrue(s.closing)
        self.assertEqual(len(self.maildir()), 0)


class ForwardTest(SessionTestCase):
    def test_forwarded_account_keeps_a_copy_and_queues_the_rest(self):
        self.server.accounts.add("boss@example.test", "pw", self.config.local_domains())
        self.server.accounts.set_forward("boss@example.test", ["boss@home.example", "user@example.test"])
        self.server.accounts.maybe_reload()
        s = self.session(trusted=False)  # a stranger: forwarding is the owner's choice, not a relay
        answer = s.feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<boss@example.test>\r\nDATA\r\n")
        self.assertEqual(codes(answer), [250, 250, 250, 354])
        self.assertTrue(s.feed(b"Subject: fw\r\n\r\nx\r\n.\r\n").startswith(b"250"))
        self.assertEqual(len(self.maildir("boss")), 1)
        self.assertEqual(len(self.maildir("user")), 1)
        [(entry, _)] = self.queued()
        self.assertEqual([r["address"] for r in entry["recipients"]], ["boss@home.example"])
        # The copy leaves with an SRS sender of ours (SPF passes where it goes); a bounce to
        # it is accepted from anyone and goes back to the real sender.
        self.assertRegex(entry["sender"], r"^SRS0=[^=]{4}=[A-Z2-7]{2}=b\.example=a@example\.test$")
        bounce = self.session(trusted=False)
        answer = bounce.feed(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<" + entry["sender"].encode() + b">\r\n")
        self.assertEqual(codes(answer), [250, 250, 250])
        self.assertEqual(bounce._rcpts, ["a@b.example"])
        forged = entry["sender"].replace("SRS0=", "SRS0=x", 1)
        self.assertEqual(codes(bounce.feed(b"RCPT TO:<" + forged.encode() + b">\r\n")), [550])

    def test_without_srs_the_copy_keeps_the_sender(self):
        self.server.settings.srs.enabled = False
        self.server.accounts.add("boss@example.test", "pw", self.config.local_domains())
        self.server.accounts.set_forward("boss@example.test", ["boss@home.example"])
        self.server.accounts.maybe_reload()
        s = self.session(trusted=False)
        s.feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<boss@example.test>\r\nDATA\r\n")
        self.assertTrue(s.feed(b"Subject: fw\r\n\r\nx\r\n.\r\n").startswith(b"250"))
        [(entry, _)] = self.queued()
        self.assertEqual(entry["sender"], "a@b.example")

    def test_forward_targets_are_checked(self):
        from ismail.store.accounts import AccountError
        with self.assertRaises(AccountError):
            self.server.accounts.set_forward("user@example.test", ["not an address"])
        with self.assertRaises(AccountError):
            self.server.accounts.set_forward("user@example.test", ["user@example.test"])
