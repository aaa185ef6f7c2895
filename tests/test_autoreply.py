"""Tests for ismail.store.autoreply: vacation messages by the rules of RFC 3834."""
from __future__ import annotations

import datetime
import email
import email.policy
import json
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path

from ismail.store.autoreply import AutoReplies, AutoReply, AutoReplyError

ROOT = Path(__file__).resolve().parent.parent
ANN = "ann@example.com"
ALIAS = "sales@example.com"
BOB = "bob@remote.org"
NOW = datetime.datetime(2024, 7, 3, 12, 0).timestamp()  # local noon: the local date is July 3
DAY = 86400


def incoming(*extra: str, to: str = "Ann Example <ann@example.com>", cc: str = "",
             sender: str = "Bob Remote <bob@remote.org>", subject: str = "Meeting on Thursday",
             msgid: str = "<20240703115900.4711@mail.remote.org>") -> bytes:
    """The header block of a message as it reaches delivery (trace lines on top)."""
    lines = ["Return-Path: <bob@remote.org>",
             "Received: from mail.remote.org (mail.remote.org [192.0.2.7])",
             "\tby mx.example.com with ESMTPS id 18F3A2B4C5D6E001",
             "\tfor <ann@example.com>; Wed, 03 Jul 2024 11:59:02 +0200",
             f"From: {sender}",
             f"To: {to}"]
    if cc:
        lines.append(f"Cc: {cc}")
    lines += [f"Subject: {subject}",
              "Date: Wed, 03 Jul 2024 11:59:00 +0200",
              f"Message-ID: {msgid}",
              "MIME-Version: 1.0",
              "Content-Type: text/plain; charset=us-ascii",
              *extra]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def parse(message: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(message, policy=email.policy.default)


def text(message: email.message.EmailMessage) -> str:
    """The decoded body with the line ends a mail program shows."""
    return message.get_content().replace("\r\n", "\n")


class AutoReplyTest(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.data = Path(self._tmp.name)
        self.replies = self.new_replies()

    def new_replies(self) -> AutoReplies:
        replies = AutoReplies(self.data, reload_interval=0)
        replies.load()
        return replies

    def vacation(self, **changes) -> AutoReply:
        reply = AutoReply(**{"account": ANN, "subject": "Out of office",
                             "body": "I am away until July 15th.\nBob Smith covers for me.\n",
                             **changes})
        self.replies.set(reply)
        return reply

    def answer(self, header: bytes | None = None, *, sender: str = BOB, recipient: str = ANN,
               now: float = NOW, replies: AutoReplies | None = None) -> bytes | None:
        return (replies or self.replies).reply_for(
            ANN, recipient=recipient, sender=sender, header=incoming() if header is None else header,
            own_addresses=[ANN, ALIAS], now=now)

    def sent_file(self) -> dict:
        return json.loads((self.data / "autoreply-sent.json").read_text("utf-8"))


class ReplyMessageTest(AutoReplyTest):
    def test_reply_headers_and_body(self) -> None:
        self.vacation()
        header = incoming("References: <1@remote.org>\r\n <2@remote.org>")
        raw = self.answer(header)
        self.assertIsNotNone(raw)
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))  # CRLF only
        self.assertTrue(raw.isascii())
        reply = parse(raw)
        self.assertEqual(reply["From"], ANN)
        self.assertEqual(reply["To"], BOB)
        self.assertEqual(reply["Subject"], "Out of office")
        self.assertEqual(reply["Auto-Submitted"], "auto-replied")
        self.assertEqual(reply["In-Reply-To"], "<20240703115900.4711@mail.remote.org>")
        self.assertEqual(reply["References"].split(),
                         ["<1@remote.org>", "<2@remote.org>", "<20240703115900.4711@mail.remote.org>"])
        self.assertTrue(reply["Message-ID"].endswith("@example.com>"))
        self.assertEqual(email.utils.parsedate_to_datetime(reply["Date"]).timestamp(), NOW)
        self.assertEqual(reply["MIME-Version"], "1.0")
        self.assertEqual(reply.get_content_type(), "text/plain")
        self.assertEqual(reply.get_content_charset(), "utf-8")
        self.assertEqual(reply["Content-Transfer-Encoding"], "7bit")
        self.assertEqual(text(reply),
                         "I am away until July 15th.\nBob Smith covers for me.\n")
        self.assertIsNone(reply["Precedence"])

    def test_non_ascii_subject_and_body_stay_7bit(self) -> None:
        self.vacation(subject="Abwesend – Urlaub in Österreich",
                      body="Ich bin bis 15. Juli weg.\nGrüße, Änne\n" + "lang " * 60)
        raw = self.answer()
        self.assertTrue(raw.isascii())
        reply = parse(raw)
        self.assertEqual(reply["Subject"], "Abwesend – Urlaub in Österreich")
        self.assertEqual(reply["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(text(reply),
                         "Ich bin bis 15. Juli weg.\nGrüße, Änne\n" + ("lang " * 60) + "\n")
        self.assertTrue(all(len(line) <= 78 for line in raw.split(b"\r\n")))

    def test_line_breaks_in_subject_make_no_new_header(self) -> None:
        self.vacation(subject="Away\r\nBcc: victim@elsewhere.org\nX-Evil: yes")
        self.assertEqual(self.replies.get(ANN).subject, "Away Bcc: victim@elsewhere.org X-Evil: yes")
        reply = parse(self.answer())
        self.assertIsNone(reply["Bcc"])
        self.assertIsNone(reply["X-Evil"])
        self.assertEqual(reply["Subject"], "Away Bcc: victim@elsewhere.org X-Evil: yes")

    def test_sender_with_line_break_gets_no_reply(self) -> None:
        self.vacation()
        self.assertIsNone(self.answer(sender="bob@remote.org\r\nBcc: victim@elsewhere.org"))
        self.assertIsNotNone(self.answer(sender=BOB))

    def test_empty_subject_in_file_answers_auto_and_the_original_subject(self) -> None:
        (self.data / "autoreply.json").write_text(json.dumps({"version": 1, "replies": {
            ANN: {"subject": "", "body": "Away.", "start": None, "end": None, "days": 7,
                  "enabled": True}}}), "utf-8")
        self.replies.load()
        header = incoming(subject="=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_Wien?=")
        self.assertEqual(parse(self.answer(header))["Subject"], "Auto: Grüße aus Wien")

    def test_folded_8bit_header_is_read(self) -> None:
        self.vacation()
        # UTF-8 in the Subject, a Latin-1 byte from an old client, To folded over two lines.
        header = incoming(to="Carol <carol@example.com>,\r\n\t\"Example, Ann\" <Ann@Example.COM>",
                          subject="Caf\xe9 \xe0 midi") + b"X-Mailer: Sm\xf6rg\xe5sbord Mail 2.1\r\n"
        raw = self.answer(header)
        self.assertIsNotNone(raw)
        self.assertEqual(parse(raw)["In-Reply-To"], "<20240703115900.4711@mail.remote.org>")

    def test_in_reply_to_stands_for_missing_references(self) -> None:
        self.vacation()
        reply = parse(self.answer(incoming("In-Reply-To: <parent@example.com>")))
        self.assertEqual(reply["References"].split(),
                         ["<parent@example.com>", "<20240703115900.4711@mail.remote.org>"])

    def test_no_message_id_no_threading_headers(self) -> None:
        self.vacation()
        header = b"\r\n".join(l for l in incoming().split(b"\r\n") if not l.startswith(b"Message-ID"))
        reply = parse(self.answer(header))
        self.assertIsNone(reply["In-Reply-To"])
        self.assertIsNone(reply["References"])


class RuleTest(AutoReplyTest):
    def test_disabled(self) -> None:
        self.vacation(enabled=False)
        self.assertIsNone(self.answer())
        self.vacation(enabled=True)
        self.assertIsNotNone(self.answer())

    def test_outside_start_and_end_dates(self) -> None:
        today = datetime.date(2024, 7, 3)
        self.vacation(start=today + datetime.timedelta(days=1))
        self.assertIsNone(self.answer())
        self.vacation(end=today - datetime.timedelta(days=1))
        self.assertIsNone(self.answer())
        self.vacation(start=today, end=today)  # both days inclusive
        self.assertIsNotNone(self.answer())
        self.assertIsNone(self.answer(sender="carol@remote.org", now=NOW + DAY))

    def test_null_sender(self) -> None:
        self.vacation()
        self.assertIsNone(self.answer(incoming(sender="Mail Delivery System <MAILER-DAEMON@remote.org>"),
                                      sender=""))
        self.assertIsNotNone(self.answer())

    def test_program_senders(self) -> None:
        self.vacation()
        for robot in ("MAILER-DAEMON@remote.org", "owner-staff@lists.remote.org",
                      "staff-request@lists.remote.org", "staff-bounces@lists.remote.org",
                      "staff-bounces+ann=example.com@lists.remote.org", "noreply@shop.example",
                      "no-reply@shop.example", "orders-noreply@shop.example"):
            self.assertIsNone(self.answer(incoming(sender=robot), sender=robot), robot)
        self.assertIsNotNone(self.answer(incoming(sender="norbert@remote.org"),
                                         sender="norbert@remote.org"))

    def test_auto_submitted(self) -> None:
        self.vacation()
        for value in ("auto-generated", "Auto-Replied (vacation)", "auto-notified; owner-email=x@y",
                      ""):
            self.assertIsNone(self.answer(incoming(f"Auto-Submitted: {value}")), value)
        self.assertIsNotNone(self.answer(incoming("Auto-Submitted: No (written by a person)")))

    def test_list_headers(self) -> None:
        self.vacation()
        for extra in ("List-Id: Staff <staff.lists.remote.org>",
                      "List-Unsubscribe: <mailto:staff-leave@lists.remote.org>",
                      "List-Post: <mailto:staff@lists.remote.org>",
                      "Mailing-List: contact staff-help@lists.remote.org; run by ezmlm"):
            self.assertIsNone(self.answer(incoming(extra)), extra)
        self.assertIsNotNone(self.answer(incoming("X-List-Of-Things: not a list header")))

    def test_precedence(self) -> None:
        self.vacation()
        for value in ("bulk", "List", "junk (newsletter)"):
            self.assertIsNone(self.answer(incoming(f"Precedence: {value}")), value)
        self.assertIsNotNone(self.answer(incoming("Precedence: first-class")))

    def test_x_auto_response_suppress(self) -> None:
        self.vacation()
        for value in ("OOF", "All", "DR, RN, NRN, OOF, AutoReply"):
            self.assertIsNone(self.answer(incoming(f"X-Auto-Response-Suppress: {value}")), value)
        self.assertIsNotNone(self.answer(incoming("X-Auto-Response-Suppress: DR, RN")))

    def test_mail_to_ourselves(self) -> None:
        self.vacation()
        for own in (ANN, "Ann@Example.com", ALIAS):
            self.assertIsNone(self.answer(incoming(sender=own), sender=own), own)
        self.assertIsNotNone(self.answer())

    def test_only_when_addressed_in_to_or_cc(self) -> None:
        self.vacation()
        bcc = incoming(to="Project Team <team@remote.org>")  # ann had a blind copy
        self.assertIsNone(self.answer(bcc))
        self.assertIsNotNone(self.answer(incoming(to="team@remote.org", cc="ANN@example.com"),
                                         sender="carol@remote.org"))
        self.assertIsNotNone(self.answer(incoming(to="Sales <sales@example.com>"),
                                         sender="dave@remote.org", recipient=ALIAS))

    def test_once_per_sender_per_days(self) -> None:
        self.vacation(days=3)
        self.assertIsNotNone(self.answer())
        self.assertIsNone(self.answer(now=NOW + 2 * DAY))
        self.assertIsNone(self.answer(sender="BOB@Remote.org", now=NOW + 2 * DAY))
        self.assertIsNotNone(self.answer(sender="carol@remote.org", now=NOW + 2 * DAY))
        self.assertIsNotNone(self.answer(now=NOW + 3 * DAY + 1))

    def test_two_deliveries_at_once_send_one_reply(self) -> None:
        self.vacation()
        barrier, results = threading.Barrier(8), []

        def deliver() -> None:
            barrier.wait()
            results.append(self.answer())
        threads = [threading.Thread(target=deliver) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sum(r is not None for r in results), 1)


class StateTest(AutoReplyTest):
    def test_state_survives_a_restart(self) -> None:
        self.vacation()
        self.assertIsNotNone(self.answer())
        self.assertEqual(self.sent_file()["sent"][ANN], {BOB: int(NOW)})
        later = self.new_replies()
        self.assertIsNone(self.answer(now=NOW + DAY, replies=later))
        self.assertIsNotNone(self.answer(now=NOW + 8 * DAY, replies=later))

    def test_old_entries_are_pruned_when_saving(self) -> None:
        self.vacation(days=2)
        self.answer()
        self.answer(sender="carol@remote.org", now=NOW + DAY)
        self.answer(sender="dave@remote.org", now=NOW + 2 * DAY + 10)
        self.assertEqual(set(self.sent_file()["sent"][ANN]), {"carol@remote.org", "dave@remote.org"})

    def test_changed_text_starts_afresh(self) -> None:
        reply = self.vacation()
        self.assertIsNotNone(self.answer())
        self.replies.set(AutoReply(ANN, reply.subject, reply.body, days=10))  # only days
        self.assertIsNone(self.answer(now=NOW + 60))
        self.replies.set(AutoReply(ANN, reply.subject, "Back on the 20th now.", days=10))
        self.assertNotIn(ANN, self.sent_file()["sent"])
        self.assertIsNotNone(self.answer(now=NOW + 120))

    def test_forget_by_another_process_is_seen(self) -> None:
        self.vacation()
        self.assertIsNotNone(self.answer())
        cli = self.new_replies()
        cli.forget_sender_state(ANN)
        self.assertIsNotNone(self.answer(now=NOW + 60))

    def test_corrupt_state_is_set_aside(self) -> None:
        self.vacation()
        garbage = b'{"version": 1, "sent": {"ann@example.com": {"bob@remote.org": "yesterday"'
        (self.data / "autoreply-sent.json").write_bytes(garbage)
        with self.assertLogs("ismail.autoreply", "ERROR") as logs:
            replies = self.new_replies()
        self.assertIn("set aside", "\n".join(logs.output))
        aside = list(self.data.glob("autoreply-sent.json.corrupt-*"))
        self.assertEqual(len(aside), 1)
        self.assertEqual(aside[0].read_bytes(), garbage)
        self.assertIn("autoreply-sent.json", replies.load_problem)
        self.assertIsNotNone(self.answer(replies=replies))
        self.assertEqual(self.sent_file()["sent"][ANN], {BOB: int(NOW)})
        self.assertEqual(aside[0].read_bytes(), garbage)


class SettingsTest(AutoReplyTest):
    def test_saved_with_iso_dates_and_read_back(self) -> None:
        reply = self.vacation(account="Ann@Example.COM", start=datetime.date(2024, 7, 1),
                              end=datetime.date(2024, 7, 14), days=4)
        doc = json.loads((self.data / "autoreply.json").read_text("utf-8"))
        self.assertEqual(doc["version"], 1)
        self.assertEqual(doc["replies"][ANN]["start"], "2024-07-01")
        self.assertEqual(doc["replies"][ANN]["end"], "2024-07-14")
        again = self.new_replies()
        self.assertEqual(again.get("ANN@example.com"), AutoReply(ANN, reply.subject, reply.body,
                                                                 reply.start, reply.end, 4))
        self.assertEqual(again.all(), [again.get(ANN)])

    def test_refused_settings_name_the_field(self) -> None:
        good = dict(account=ANN, subject="Away", body="Away.")
        cases = [({"subject": "  "}, "subject"), ({"subject": "x" * 201}, "subject"),
                 ({"body": "x" * (64 * 1024 + 1)}, "body"), ({"days": 0}, "days"),
                 ({"days": 366}, "days"), ({"days": True}, "days"),
                 ({"account": "not an address"}, "account"),
                 ({"start": datetime.date(2024, 7, 10), "end": datetime.date(2024, 7, 9)}, "end"),
                 ({"start": "2024-07-01"}, "start"), ({"enabled": "yes"}, "enabled")]
        for change, field in cases:
            with self.assertRaises(AutoReplyError, msg=field) as caught:
                self.replies.set(AutoReply(**{**good, **change}))
            self.assertIn(field, str(caught.exception))
        with self.assertRaises(AutoReplyError) as caught:
            self.replies.set(AutoReply(ANN, "Away", "Away.", days=400))
        self.assertIn("from 1 to 365", str(caught.exception))  # the allowed values
        self.assertEqual(self.replies.all(), [])
        self.replies.set(AutoReply(**{**good, "body": "é" * (32 * 1024)}))  # 64 KiB exactly
        self.assertEqual(len(self.replies.get(ANN).body), 32 * 1024)

    def test_remove(self) -> None:
        self.vacation()
        self.answer()
        self.replies.remove("ANN@example.com")
        self.assertIsNone(self.replies.get(ANN))
        self.assertIsNone(self.answer(sender="carol@remote.org"))
        self.assertNotIn(ANN, self.sent_file()["sent"])
        with self.assertRaises(AutoReplyError) as caught:
            self.replies.remove(ANN)
        self.assertIn(ANN, str(caught.exception))

    def test_bad_date_in_file_is_set_aside_naming_the_field(self) -> None:
        raw = json.dumps({"version": 1, "replies": {ANN: {
            "subject": "Away", "body": "Away.", "start": "2024-13-01", "days": 7}}}).encode()
        (self.data / "autoreply.json").write_bytes(raw)
        with self.assertLogs("ismail.autoreply", "ERROR") as logs:
            replies = self.new_replies()
        self.assertIn("'start'", "\n".join(logs.output))
        self.assertIn("2024-13-01", replies.load_problem)
        self.assertIsNone(replies.get(ANN))
        aside = list(self.data.glob("autoreply.json.corrupt-*"))
        self.assertEqual([p.read_bytes() for p in aside], [raw])
        self.assertFalse((self.data / "autoreply.json").exists())

    def test_wrong_version_is_set_aside(self) -> None:
        (self.data / "autoreply.json").write_text('{"version": 2, "replies": {}}', "utf-8")
        with self.assertLogs("ismail.autoreply", "ERROR"):
            replies = self.new_replies()
        self.assertIn("version", replies.load_problem)

    def test_edit_by_another_process_is_seen(self) -> None:
        code = ("import sys; from pathlib import Path; "
                "from ismail.store.autoreply import AutoReplies, AutoReply; "
                "r = AutoReplies(Path(sys.argv[1])); r.load(); "
                "r.set(AutoReply('ann@example.com', 'Parental leave', 'Until October.'))")
        subprocess.run([sys.executable, "-c", code, str(self.data)], cwd=ROOT, check=True,
                       timeout=60)
        self.assertEqual(self.replies.get(ANN).subject, "Parental leave")
        self.assertEqual(parse(self.answer())["Subject"], "Parental leave")


if __name__ == "__main__":
    unittest.main()
