"""DSNs as a mail client or a bounce-processing program would read them."""
import email
import email.policy
import re
import unittest
from email.utils import parsedate_to_datetime

from ismail.queue.bounce import MAX_RETURNED_BODY, FailedRecipient, build_dsn, is_bounce_loop

ARRIVAL, NOW, UNTIL = 1_700_000_000.0, 1_700_003_600.0, 1_700_400_000.0
ORIGINAL = (b"Received: from client.example.test by mx.example.test\r\n"
            b"From: Me <me@example.test>\r\nTo: bob@remote.example\r\n"
            b"Subject: Quarterly figures\r\n\r\nThe body line nobody should see.\r\n")
UNKNOWN = FailedRecipient("bob@remote.example", "5.1.1", "550 5.1.1 <bob@remote.example>: User unknown",
                          "mx.remote.example")


def dsn(recipients=(UNKNOWN,), original=ORIGINAL, **kw) -> bytes:
    args = dict(reporting_mta="mx.example.test", postmaster="MAILER-DAEMON@example.test",
                to="me@example.test", queue_id="0000000000001000", arrival=ARRIVAL,
                recipients=list(recipients), original=original, now=NOW)
    args.update(kw)
    return build_dsn(**args)


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def timestamp(value) -> float:
    return parsedate_to_datetime(str(value)).timestamp()


def decode_xtext(text: str) -> str:
    return re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: chr(int(m.group(1), 16)), text)


class StructureTest(unittest.TestCase):
    def test_headers_and_parts(self):
        msg = parse(dsn())
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(msg["From"].addresses[0].addr_spec, "MAILER-DAEMON@example.test")
        self.assertEqual(msg["From"].addresses[0].display_name, "Mail Delivery System")
        self.assertEqual(msg["To"].addresses[0].addr_spec, "me@example.test")
        self.assertEqual(str(msg["Subject"]), "Undelivered Mail Returned to Sender")
        self.assertEqual(str(msg["Auto-Submitted"]), "auto-replied")
        self.assertEqual(str(msg["MIME-Version"]), "1.0")
        self.assertEqual(timestamp(msg["Date"]), NOW)
        self.assertRegex(str(msg["Message-ID"]), r"^<[^<>@\s]+@mx\.example\.test>$")
        parts = list(msg.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        self.assertEqual(parts[0].get_content_charset(), "utf-8")
        self.assertEqual(msg.defects, [])

    def test_message_ids_differ(self):
        self.assertNotEqual(parse(dsn())["Message-ID"], parse(dsn())["Message-ID"])

    def test_human_part_names_recipient_and_reply(self):
        text = parse(dsn()).get_payload(0).get_content()
        self.assertIn("This is the mail system at host mx.example.test.", text)
        self.assertIn("could not be delivered", text)
        self.assertIn("<bob@remote.example>: host mx.remote.example said: 550 5.1.1", text)
        self.assertIn("User unknown", text)

    def test_delivery_status_fields(self):
        quiet = FailedRecipient("carol@remote.example", "5.4.7")
        blocks = parse(dsn([UNKNOWN, quiet])).get_payload(1).get_payload()
        self.assertEqual(len(blocks), 3)
        head, bob, carol = blocks
        self.assertEqual(head["Reporting-MTA"], "dns; mx.example.test")
        self.assertEqual(head["X-ISMail-Queue-ID"], "0000000000001000")
        self.assertEqual(timestamp(head["Arrival-Date"]), ARRIVAL)
        self.assertEqual(bob["Final-Recipient"], "rfc822; bob@remote.example")
        self.assertEqual(bob["Action"], "failed")
        self.assertEqual(bob["Status"], "5.1.1")
        self.assertEqual(bob["Remote-MTA"], "dns; mx.remote.example")
        self.assertEqual(bob["Diagnostic-Code"], "smtp; 550 5.1.1 <bob@remote.example>: User unknown")
        self.assertEqual(timestamp(bob["Last-Attempt-Date"]), NOW)
        self.assertIsNone(bob["Will-Retry-Until"])
        self.assertEqual(carol["Final-Recipient"], "rfc822; carol@remote.example")
        self.assertEqual(carol["Status"], "5.4.7")
        self.assertIsNone(carol["Remote-MTA"])
        self.assertIsNone(carol["Diagnostic-Code"])

    def test_own_error_text_is_not_called_smtp(self):
        refused = FailedRecipient("bob@remote.example", "4.4.1", "connect to mx: Connection refused",
                                  action="delayed")
        block = parse(dsn([refused])).get_payload(1).get_payload()[1]
        self.assertEqual(block["Diagnostic-Code"], "X-ISMail; connect to mx: Connection refused")

    def test_original_headers_returned_without_body(self):
        third = parse(dsn()).get_payload(2)
        self.assertEqual(third.get_content_type(), "text/rfc822-headers")
        headers = third.get_content()
        self.assertIn("Subject: Quarterly figures", headers)
        self.assertNotIn("nobody should see", headers)


class LineTest(unittest.TestCase):
    def assert_wire_lines(self, raw: bytes):
        self.assertTrue(raw.endswith(b"\r\n"))
        for line in raw[:-2].split(b"\r\n"):
            self.assertNotIn(b"\n", line)
            self.assertNotIn(b"\r", line)
            self.assertLessEqual(len(line), 998)

    def test_huge_multiline_diagnostic_is_unfolded_and_cut(self):
        reply = "550-5.1.1 first line\r\n" + "550-5.1.1 " + "y" * 2000 + "\r\n550 5.1.1 " + "z " * 1500
        self.assertGreater(len(reply), 5000)
        raw = dsn([FailedRecipient("bob@remote.example", "5.1.1", reply, "mx.remote.example")])
        self.assert_wire_lines(raw)
        self.assertNotIn(b"=?", raw)  # no RFC 2047 encoded-words in DSN fields
        diag = parse(raw).get_payload(1).get_payload()[1]["Diagnostic-Code"]
        self.assertTrue(diag.startswith("smtp; 550-5.1.1 first line 550-5.1.1 yyy"))
        self.assertNotIn("\r", diag)
        self.assertNotIn("\n", diag)
        self.assertLess(len(diag), 600)

    def test_lf_original_comes_out_crlf(self):
        raw = dsn(original=ORIGINAL.replace(b"\r\n", b"\n"), include_body=True)
        self.assert_wire_lines(raw)
        self.assertIn(b"\r\nThe body line nobody should see.\r\n", raw)


class DelayTest(unittest.TestCase):
    DELAYED = FailedRecipient("bob@remote.example", "4.4.1", "451 4.4.1 Try later", "mx.remote.example",
                              action="delayed")

    def test_delay_warning(self):
        msg = parse(dsn([self.DELAYED], retry_until=UNTIL))
        self.assertEqual(str(msg["Subject"]), "Delayed Mail (still being retried)")
        block = msg.get_payload(1).get_payload()[1]
        self.assertEqual(block["Action"], "delayed")
        self.assertEqual(block["Status"], "4.4.1")
        self.assertEqual(timestamp(block["Will-Retry-Until"]), UNTIL)
        text = msg.get_payload(0).get_content()
        self.assertIn("WARNING ONLY", text)
        self.assertIn("keep trying until", text)
        self.assertNotIn("could not be delivered to", text)

    def test_mixed_failure_and_delay(self):
        msg = parse(dsn([UNKNOWN, self.DELAYED], retry_until=UNTIL))
        self.assertEqual(str(msg["Subject"]), "Undelivered Mail Returned to Sender")
        _, bob_failed, bob_delayed = msg.get_payload(1).get_payload()
        self.assertIsNone(bob_failed["Will-Retry-Until"])
        self.assertEqual(bob_delayed["Action"], "delayed")
        self.assertIsNotNone(bob_delayed["Will-Retry-Until"])

    def test_no_retry_until_no_field(self):
        block = parse(dsn([self.DELAYED])).get_payload(1).get_payload()[1]
        self.assertIsNone(block["Will-Retry-Until"])


class ReturnedBodyTest(unittest.TestCase):
    def test_small_original_returned_whole(self):
        third = parse(dsn(include_body=True)).get_payload(2)
        self.assertEqual(third.get_content_type(), "message/rfc822")
        inner = third.get_payload(0)
        self.assertEqual(str(inner["Subject"]), "Quarterly figures")
        self.assertIn("The body line nobody should see.", inner.get_content())

    def test_large_original_headers_only(self):
        big = ORIGINAL + (b"x" * 99 + b"\r\n") * (MAX_RETURNED_BODY // 100 + 1)
        self.assertGreater(len(big), MAX_RETURNED_BODY)
        raw = dsn(original=big, include_body=True)
        third = parse(raw).get_payload(2)
        self.assertEqual(third.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: Quarterly figures", third.get_content())
        self.assertNotIn(b"nobody should see", raw)
        self.assertLess(len(raw), 10_000)


class Utf8Test(unittest.TestCase):
    def test_utf8_recipient_uses_utf8_address_type(self):
        jose = FailedRecipient("jos\u00e9@b\u00fccher.example", "5.1.1", "550 5.1.1 unknown")
        original = "Subject: Gr\u00fc\u00dfe\r\n\r\nHallo\r\n".encode("utf-8")
        raw = dsn([UNKNOWN, jose], original=original)
        msg = parse(raw)
        _, bob, jose_block = msg.get_payload(1).get_payload()
        self.assertEqual(bob["Final-Recipient"], "rfc822; bob@remote.example")
        kind, _, addr = jose_block["Final-Recipient"].partition(";")
        self.assertEqual(kind, "utf-8")
        self.assertTrue(addr.strip().isascii())
        self.assertEqual(decode_xtext(addr.strip()), "jos\u00e9@b\u00fccher.example")
        self.assertTrue(raw.isascii())  # the whole DSN stays 7-bit
        self.assertIn("<jos\u00e9@b\u00fccher.example>", msg.get_payload(0).get_content())
        self.assertIn("Subject: Gr\u00fc\u00dfe", msg.get_payload(2).get_content())

    def test_utf8_sender(self):
        # Mail to a UTF-8 address needs SMTPUTF8 anyway, so the header is raw UTF-8 (RFC 6532).
        raw = dsn(to="j\u00f6rg@example.test")
        self.assertIn("\r\nTo: j\u00f6rg@example.test\r\n".encode("utf-8"), raw)
        self.assertNotIn(b"=?", raw)
        self.assertEqual(parse(raw).get_content_type(), "multipart/report")


class BadInputTest(unittest.TestCase):
    def test_rejected(self):
        for kw in ({"recipients": []}, {"to": ""},
                   {"recipients": [FailedRecipient("a@b.example", "550")]},
                   {"recipients": [FailedRecipient("a@b.example", "5.1.1", action="bounced")]}):
            with self.subTest(kw=kw), self.assertRaises(ValueError):
                dsn(**kw)


class LoopTest(unittest.TestCase):
    def message(self, hops: int) -> bytes:
        return b"".join(b"Received: from hop%d\r\n\tby relay\r\n" % i for i in range(hops)) + \
            b"Subject: x\r\n\r\nReceived: in the body does not count\r\n"

    def test_limit(self):
        self.assertFalse(is_bounce_loop(self.message(50)))
        self.assertTrue(is_bounce_loop(self.message(51)))
        self.assertTrue(is_bounce_loop(self.message(5), limit=4))
        self.assertFalse(is_bounce_loop(self.message(50).replace(b"\r\n", b"\n")))
        self.assertTrue(is_bounce_loop(self.message(51).replace(b"\r\n", b"\n")))


if __name__ == "__main__":
    unittest.main()
