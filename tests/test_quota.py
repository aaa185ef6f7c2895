"""Per-account quotas: the usage tracker and its 90 % warning (store/quota.py), quotas in
accounts.json, IMAP QUOTA (RFC 9208) and NO [OVERQUOTA], and the POP3 login line.

The IMAP and POP3 sessions are the real ones, driven through the helpers of
test_imap_session and test_pop3_session, with their fake backends taught quota() and
quota_changed() the way the server's backends answer them.
"""
from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import tempfile
import threading
import unittest
from pathlib import Path
from unittest import mock

from ismail.queue.spool import MessageBuffer
from ismail.store import maildir, quota
from ismail.store.accounts import AccountError, AccountStore, hash_password
from ismail.store.folders import MailStore
from ismail.store.quota import MARKER, MB, QuotaTracker, describe, size_in_name, warning_message
from tests.test_imap_session import MSG, SessionCase
from tests.test_imap_session import FakeBackend as ImapBackend
from tests.test_pop3_session import PASSWORD, USER, Pop3TestCase

DOMAINS = ["localhost", "example.test"]


def deliver(box: Path, data: bytes) -> Path:
    """One message written as SMTP delivery writes it; returns the file."""
    buf = MessageBuffer(box / "tmp") if (box / "tmp").is_dir() else None
    if buf is None:
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        buf = MessageBuffer(box / "tmp")
    buf.write(data)
    try:
        return maildir.deliver([box], b"", buf)[0]
    finally:
        buf.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TrackerCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-quota-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.root = self.dir / "example.test" / "user"
        self.store = MailStore(self.root)
        self.clock = Clock()
        self.tracker = QuotaTracker(clock=self.clock)


# --- measuring ------------------------------------------------------------------------------

class UsageTest(TrackerCase):
    def test_every_folder_counts_and_nothing_else(self):
        self.store.ensure_special()                  # .Sent .Drafts .Trash .Junk, subscriptions
        self.store.create("Work/2024")               # .Work and .Work.2024
        a = deliver(self.root, b"a" * 100 + b"\r\n")   # INBOX new/: S= is the LF size, 101
        b = deliver(self.root / ".Work.2024", b"b" * 50 + b"\r\n")
        self.store.open("Sent").append(b"Subject: s\r\n\r\nsent\r\n")   # APPEND: cur/, with S=
        (self.root / "cur" / "1700000000.M1P1.other:2,S").write_bytes(b"x" * 40)   # no S=: stat
        (self.root / "tmp" / "unfinished").write_bytes(b"t" * 1000)      # on its way: not counted
        (self.root / "cur" / ".hidden").write_bytes(b"h" * 1000)         # not a message
        (self.root / ".Junk" / "cur" / "1700000001.M2P2.x,S=7:2,").write_bytes(b"1234567")
        expected = (size_in_name(a.name) + size_in_name(b.name) + len(b"Subject: s\n\nsent\n")
                    + 40 + 7)
        self.assertEqual(size_in_name(a.name), 101)
        self.assertEqual(self.tracker.usage(self.root), expected)
        self.assertEqual(quota.scan(self.root), expected)

    def test_a_missing_maildir_uses_nothing(self):
        self.assertEqual(self.tracker.usage(self.dir / "nobody"), 0)

    def test_size_in_name(self):
        self.assertEqual(size_in_name("1717171717.M52P7Q1.host,S=120,W=124:2,S"), 120)
        self.assertEqual(size_in_name("1717171717.M52P7Q1.host,S=120,W=124!2,FS"), 120)
        self.assertIsNone(size_in_name("1717171717.M52P7Q1.host:2,S"))

    def test_cached_until_max_age_then_measured_again(self):
        deliver(self.root, b"x" * 99 + b"\n")
        self.assertEqual(self.tracker.usage(self.root), 100)
        deliver(self.root, b"y" * 199 + b"\n")        # not reported: the cache does not see it
        self.assertEqual(self.tracker.usage(self.root), 100)
        self.clock.now += 29
        self.assertEqual(self.tracker.usage(self.root), 100)
        self.clock.now += 2
        self.assertEqual(self.tracker.usage(self.root), 300)

    def test_added_keeps_the_figure_right_without_a_scan(self):
        self.assertEqual(self.tracker.usage(self.root), 0)
        path = deliver(self.root, b"z" * 499 + b"\n")
        with mock.patch.object(quota, "scan", side_effect=AssertionError("no rescan")):
            self.tracker.added(self.root, size_in_name(path.name))
            self.assertEqual(self.tracker.usage(self.root), 500)
            self.assertTrue(self.tracker.check(self.root, 1000, 500))
            self.assertFalse(self.tracker.check(self.root, 1000, 501))

    def test_changed_forgets_the_figure(self):
        path = deliver(self.root, b"z" * 499 + b"\n")
        self.assertEqual(self.tracker.usage(self.root), 500)
        path.unlink()
        self.assertEqual(self.tracker.usage(self.root), 500)
        self.tracker.changed(self.root)
        self.assertEqual(self.tracker.usage(self.root), 0)

    def test_same_maildir_under_two_spellings(self):
        deliver(self.root, b"x" * 9 + b"\n")
        self.assertEqual(self.tracker.usage(self.root), 10)
        self.tracker.added(self.root / "cur" / "..", 5)
        self.assertEqual(self.tracker.usage(Path(str(self.root) + os.sep)), 15)

    def test_a_scan_that_raced_a_delivery_is_not_kept(self):
        real_scan = quota.scan
        scans = []

        def racing_scan(box):
            scans.append(box)
            used = real_scan(box)
            if len(scans) == 1:
                self.tracker.added(self.root, 10)   # a delivery lands while the scan runs
            return used

        with mock.patch.object(quota, "scan", side_effect=racing_scan):
            self.assertEqual(self.tracker.usage(self.root), 0)
            self.assertEqual(self.tracker.usage(self.root), 0)   # measured again, not 10 or 0+10
            self.assertEqual(len(scans), 2)
            self.tracker.usage(self.root)
            self.assertEqual(len(scans), 2)                       # the second scan is kept

    def test_threads_adding_at_once_lose_nothing(self):
        self.tracker.usage(self.root)
        threads = [threading.Thread(target=lambda: [self.tracker.added(self.root, 3) for _ in range(500)])
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
            self.assertFalse(t.is_alive())
        self.assertEqual(self.tracker.usage(self.root), 8 * 500 * 3)

    def test_describe(self):
        self.assertEqual(describe(45 * MB, 100 * MB), "45 MB of 100 MB used (45 %)")
        self.assertEqual(describe(MB // 2, 5 * MB), "0.5 MB of 5 MB used (10 %)")
        self.assertEqual(describe(int(89.99 * MB), 100 * MB), "90 MB of 100 MB used (89 %)")


# --- the 90 % warning ----------------------------------------------------------------------

class WarningTest(TrackerCase):
    LIMIT = 1000

    def crossed(self, before: int, after: int, tracker: QuotaTracker | None = None) -> bool:
        return (tracker or self.tracker).crossed_warning(self.root, self.LIMIT, before, after)

    def test_once_at_90_percent(self):
        self.assertFalse(self.crossed(800, 899))
        self.assertFalse((self.root / MARKER).exists())
        self.assertTrue(self.crossed(899, 900))
        self.assertTrue((self.root / MARKER).exists())
        self.assertFalse(self.crossed(900, 950))
        self.assertFalse(self.crossed(950, 1000))

    def test_a_restart_does_not_warn_again(self):
        self.assertTrue(self.crossed(850, 920))
        self.assertFalse(self.crossed(920, 930, QuotaTracker()))

    def test_rearmed_below_85_percent(self):
        self.assertTrue(self.crossed(850, 920))
        self.assertFalse(self.crossed(860, 870))    # back under 90 %, not under 85 %
        self.assertFalse(self.crossed(870, 910))
        self.assertTrue((self.root / MARKER).exists())
        self.assertFalse(self.crossed(849, 860))    # seen under 85 %: re-armed
        self.assertFalse((self.root / MARKER).exists())
        self.assertTrue(self.crossed(860, 905))

    def test_rearming_survives_a_restart(self):
        self.assertTrue(self.crossed(850, 920))
        self.assertFalse(self.crossed(100, 200, QuotaTracker()))
        self.assertTrue(self.crossed(880, 950, QuotaTracker()))

    def test_already_over_and_never_warned_warns_once(self):
        self.assertTrue(self.crossed(950, 960))     # e.g. the quota was just lowered
        self.assertFalse(self.crossed(960, 970))

    def test_no_limit_no_warning(self):
        self.assertFalse(self.tracker.crossed_warning(self.root, 0, 0, 10))

    def test_an_unwritable_marker_still_warns(self):
        with mock.patch.object(Path, "write_text", side_effect=PermissionError(13, "denied")):
            with self.assertLogs("ismail.quota", "WARNING"):
                self.assertTrue(self.crossed(850, 920))
        self.assertFalse(self.crossed(920, 930))    # remembered in memory

    def test_warning_message(self):
        raw = warning_message("user@example.test", 92 * MB, 100 * MB, "mx.example.test")
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""), "CRLF line ends only")
        self.assertTrue(raw.endswith(b"\r\n"))
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(msg["To"], "user@example.test")
        self.assertIn("postmaster@example.test", msg["From"])
        self.assertEqual(msg["Subject"], "Your mailbox is 90 % full")
        self.assertEqual(msg["Auto-Submitted"], "auto-generated")
        self.assertIsNotNone(msg["Date"].datetime)
        self.assertRegex(msg["Message-ID"], r"^<.+@mx\.example\.test>$")
        self.assertEqual(msg.get_content_type(), "text/plain")
        self.assertEqual(msg.get_content_charset(), "utf-8")
        body = msg.get_content()
        self.assertIn("92 MB of 100 MB used (92 %)", body)
        self.assertIn("delete", body)
        self.assertIn("move", body)
        self.assertFalse(msg.defects)


# --- accounts.json ----------------------------------------------------------------------------

class AccountQuotaTest(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.data = Path(tmp.name) / "data"
        self.accounts = AccountStore(self.data, reload_interval=0)
        self.accounts.add("alice@localhost", "pw", DOMAINS)

    def entry(self, address: str) -> dict:
        return json.loads(self.accounts.path.read_bytes())["accounts"][address]

    def test_no_quota_by_default(self):
        self.assertIsNone(self.accounts.quota_for("alice", "localhost"))
        self.assertNotIn("quota_mb", self.entry("alice@localhost"))
        info = [i for i in self.accounts.list(DOMAINS) if i.address == "alice@localhost"][0]
        self.assertIsNone(info.quota_mb)

    def test_set_quota_is_saved_and_read_in_bytes(self):
        self.accounts.set_quota("Alice@Localhost", 100)
        self.assertEqual(self.entry("alice@localhost")["quota_mb"], 100)
        self.assertEqual(self.accounts.quota_for("ALICE", "localhost"), 100 * MB)
        fresh = AccountStore(self.data)
        self.assertEqual(fresh.quota_for("alice", "localhost"), 100 * MB)
        info = [i for i in fresh.list(DOMAINS) if i.address == "alice@localhost"][0]
        self.assertEqual(info.quota_mb, 100)
        self.assertIsNone(fresh.quota_for("nobody", "localhost"))

    def test_none_removes_it(self):
        self.accounts.set_quota("alice@localhost", 5)
        self.accounts.set_quota("alice@localhost", None)
        self.assertNotIn("quota_mb", self.entry("alice@localhost"))
        self.assertIsNone(self.accounts.quota_for("alice", "localhost"))

    def test_other_changes_keep_it_and_it_keeps_them(self):
        self.accounts.set_forward("alice@localhost", ["x@example.org"])
        self.accounts.set_quota("alice@localhost", 7)
        self.accounts.set_password("alice@localhost", "new")
        entry = self.entry("alice@localhost")
        self.assertEqual((entry["quota_mb"], entry["forward"]), (7, ["x@example.org"]))
        self.assertTrue(self.accounts.check_password("alice@localhost", "new"))

    def test_unknown_keys_still_round_trip(self):
        self.accounts.path.write_text(json.dumps({"version": 1, "accounts": {"carol@localhost": {
            "password": hash_password("pw"), "forward": [], "note": "keep", "quota_mb": 3}}}))
        self.accounts.load()
        self.assertEqual(self.accounts.quota_for("carol", "localhost"), 3 * MB)
        self.accounts.set_quota("carol@localhost", 4)
        self.assertEqual(self.entry("carol@localhost"),
                         {"password": self.entry("carol@localhost")["password"], "forward": [],
                          "note": "keep", "quota_mb": 4})

    def test_out_of_range_or_not_a_whole_number_is_refused(self):
        for bad in (0, -1, 1_048_577, 1.5, "5", True):
            with self.subTest(mb=bad), self.assertRaises(AccountError) as cm:
                self.accounts.set_quota("alice@localhost", bad)
            self.assertIn("quota_mb", str(cm.exception))
            self.assertIn("1 to 1048576", str(cm.exception))
        self.accounts.set_quota("alice@localhost", 1_048_576)
        self.assertEqual(self.accounts.quota_for("alice", "localhost"), 1_048_576 * MB)

    def test_no_such_account(self):
        with self.assertRaises(AccountError) as cm:
            self.accounts.set_quota("bob@localhost", 5)
        self.assertIn("bob@localhost", str(cm.exception))

    def test_postmaster_and_root_share_one(self):
        self.accounts.set_quota("Root@localhost", 9)
        self.assertEqual(self.accounts.quota_for("postmaster", "localhost"), 9 * MB)
        self.assertEqual(self.accounts.quota_for("root", "localhost"), 9 * MB)
        self.assertIsNone(self.accounts.quota_for("postmaster", "example.test"))
        quotas = {i.address: i.quota_mb for i in self.accounts.list(DOMAINS)}
        self.assertEqual((quotas["postmaster@localhost"], quotas["root@localhost"]), (9, 9))
        self.assertFalse(self.accounts.check_password("postmaster@localhost", ""))

    def test_a_bad_quota_in_the_file_is_refused(self):
        for bad in (0, "5", True, 2.0, 2_000_000):
            self.accounts.path.write_text(json.dumps({"version": 1, "accounts": {"carol@localhost": {
                "password": None, "forward": [], "quota_mb": bad}}}))
            with self.subTest(quota_mb=bad), self.assertRaises(AccountError) as cm:
                self.accounts.load()
            self.assertIn("quota_mb", str(cm.exception))


# --- IMAP -----------------------------------------------------------------------------------

class QuotaBackend(ImapBackend):
    """The test_imap_session fake, with quotas as the server's backend keeps them."""

    def __init__(self, root: Path, limit: int | None) -> None:
        super().__init__(root)
        self.limit = limit
        self.tracker = QuotaTracker()
        self.changes: list[tuple[str, int]] = []
        self.fail_changes = False

    def quota(self, address: str) -> tuple[int, int] | None:
        box = self.mailbox_of(address)
        if box is None or self.limit is None:
            return None
        return self.tracker.usage(box), self.limit

    def quota_changed(self, address: str, added: int = 0) -> None:
        self.changes.append((address, added))
        if self.fail_changes:
            raise RuntimeError("bookkeeping broke")
        if added:
            self.tracker.added(self.mailbox_of(address), added)
        else:
            self.tracker.changed(self.mailbox_of(address))


class ImapQuotaTest(SessionCase):
    LIMIT = 4 * 1024   # 4 KiB: a few small messages

    def setUp(self):
        super().setUp()
        self.backend = QuotaBackend(self.root, self.LIMIT)

    def used(self) -> int:
        return quota.scan(self.root)

    def append(self, c, data: bytes, tag: str = "A", folder: str = "INBOX") -> str:
        return c.send(f"{tag} APPEND {folder} {{{len(data)}+}}\r\n".encode() + data + b"\r\n")

    def test_capabilities_only_with_a_quota_backend(self):
        c = self.client()
        caps = c.say("a CAPABILITY")
        self.assertIn(" QUOTA ", caps)
        self.assertIn(" QUOTA=RES-STORAGE", caps)
        self.backend = ImapBackend(self.root)
        plain = self.client().say("a CAPABILITY")
        self.assertNotIn("QUOTA", plain)
        self.assertIn("b BAD", self.client().say('b GETQUOTA ""'))

    def test_getquotaroot_with_a_quota(self):
        self.deliver(b"x" * 1500 + b"\r\n")   # 1501 octets on disk: 2 KiB rounded up
        c = self.client()
        self.assertEqual(c.lines("g GETQUOTAROOT INBOX"),
                         ['* QUOTAROOT "INBOX" ""', '* QUOTA "" (STORAGE 2 4)', "g OK GETQUOTAROOT completed"])
        self.assertEqual(c.lines("h GETQUOTAROOT Sent")[:2],
                         ['* QUOTAROOT "Sent" ""', '* QUOTA "" (STORAGE 2 4)'])
        self.assertIn("i NO [NONEXISTENT]", c.say("i GETQUOTAROOT Nowhere"))
        c.select()
        self.assertIn("j OK", c.say("j GETQUOTAROOT inbox"))

    def test_getquotaroot_without_a_quota(self):
        self.backend.limit = None
        c = self.client()
        self.assertEqual(c.lines("g GETQUOTAROOT INBOX"),
                         ['* QUOTAROOT "INBOX"', "g OK GETQUOTAROOT completed"])
        self.assertIn('h NO [NONEXISTENT]', c.say('h GETQUOTA ""'))

    def test_getquota(self):
        c = self.client()
        self.assertEqual(c.lines('g GETQUOTA ""'), ['* QUOTA "" (STORAGE 0 4)', "g OK GETQUOTA completed"])
        self.assertIn("h NO [NONEXISTENT]", c.say('h GETQUOTA "user"'))
        self.assertIn("i BAD", c.say("i GETQUOTA"))
        self.assertIn("j BAD", c.say("j GETQUOTAROOT"))

    def test_only_after_login(self):
        c = self.client(login=False)
        self.assertIn("g BAD", c.say('g GETQUOTA ""'))

    def test_setquota_is_not_for_clients(self):
        c = self.client()
        self.assertIn("s NO [NOPERM]", c.say('s SETQUOTA "" (STORAGE 100000)'))
        self.assertEqual(self.backend.limit, self.LIMIT)

    def test_append_over_quota_is_refused_and_stores_nothing(self):
        c = self.client()
        self.assertIn("A OK [APPENDUID", self.append(c, b"Subject: 1\r\n\r\n" + b"a" * 2000 + b"\r\n"))
        self.assertEqual(self.backend.changes, [(USER, self.used())])
        before = self.used()
        reply = self.append(c, b"Subject: 2\r\n\r\n" + b"b" * 3000 + b"\r\n", "B")
        self.assertIn("B NO [OVERQUOTA]", reply)
        self.assertEqual(self.used(), before)
        self.assertEqual(len(self.backend.changes), 1)
        self.assertIn("C OK", self.append(c, b"Subject: 3\r\n\r\nsmall\r\n", "C", "Sent"))

    def test_the_appended_size_is_what_lands_on_disk(self):
        c = self.client()
        self.append(c, b"Subject: 1\r\n\r\n" + b"line\r\n" * 100)
        self.assertEqual(self.backend.tracker.usage(self.root), self.used())
        self.backend.tracker.changed(self.root)
        self.assertEqual(self.backend.tracker.usage(self.root), self.used())

    def test_copy_over_quota_is_refused_move_is_not_checked(self):
        self.deliver(b"Subject: big\r\n\r\n" + b"c" * 2500 + b"\r\n")
        c = self.client(select="INBOX")
        self.assertIn("k NO [OVERQUOTA]", c.say("k COPY 1 Trash"))
        self.assertEqual(self.store().status("Trash").messages, 0)
        self.assertIn("m OK", c.say("m MOVE 1 Trash"))
        self.assertEqual(self.store().status("Trash").messages, 1)
        self.assertEqual(self.backend.changes, [])

    def test_copy_within_quota_reports_what_it_added(self):
        path = self.deliver(MSG)
        c = self.client(select="INBOX")
        self.assertIn("k OK [COPYUID", c.say("k UID COPY 1:* Trash"))
        self.assertEqual(self.backend.changes, [(USER, size_in_name(path.name))])
        self.assertEqual(self.backend.tracker.usage(self.root), 2 * size_in_name(path.name))

    def test_expunge_close_and_delete_report_a_change(self):
        self.deliver(MSG)
        self.deliver(MSG)
        self.store().create("Old")
        c = self.client(select="INBOX")
        c.say("s STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertIn("e OK", c.say("e EXPUNGE"))
        c.say("s STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertIn("f OK", c.say("f CLOSE"))
        self.assertIn("d OK", c.say("d DELETE Old"))
        self.assertEqual(self.backend.changes, [(USER, 0)] * 3)
        self.assertEqual(self.backend.tracker.usage(self.root), 0)

    def test_broken_bookkeeping_does_not_fail_a_stored_append(self):
        self.backend.fail_changes = True
        c = self.client()
        with self.assertLogs("ismail.imap", "ERROR"):
            self.assertIn("A OK [APPENDUID", self.append(c, b"Subject: 1\r\n\r\nx\r\n"))

    def test_plain_backends_append_and_copy_as_before(self):
        self.backend = ImapBackend(self.root)
        self.deliver(b"Subject: big\r\n\r\n" + b"c" * 9000 + b"\r\n")
        c = self.client(select="INBOX")
        self.assertIn("k OK", c.say("k COPY 1 Trash"))
        self.assertIn("A OK", self.append(c, b"Subject: 2\r\n\r\n" + b"b" * 9000 + b"\r\n"))


# --- POP3 -----------------------------------------------------------------------------------

class Pop3QuotaTest(Pop3TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.quota: tuple[int, int] | OSError | None = (45 * MB, 100 * MB)
        self.changed: list[str] = []

        def ask(address: str):
            self.assertEqual(address, USER)
            if isinstance(self.quota, OSError):
                raise self.quota
            return self.quota
        self.backend.quota = ask
        self.backend.quota_changed = self.changed.append

    def login(self) -> bytes:
        s = self.session()
        self.s = s
        return self.send(s, f"USER {USER}", f"PASS {PASSWORD}")[1]

    def test_login_says_how_full_the_mailbox_is(self):
        self.assertEqual(self.login(), b"+OK Logged in, 45 MB of 100 MB used (45 %)\r\n")

    def test_without_a_quota_the_plain_answer(self):
        self.quota = None
        self.assertEqual(self.login(), b"+OK Logged in.\r\n")

    def test_a_mailbox_that_cannot_be_measured_still_logs_in(self):
        self.quota = OSError(5, "Input/output error")
        with self.assertLogs("ismail.pop3", "ERROR"):
            self.assertEqual(self.login(), b"+OK Logged in.\r\n")
        self.assertEqual(self.s.state, "TRANSACTION")

    def test_quit_that_deleted_reports_a_change(self):
        self.login()
        self.assertEqual(self.send(self.s, "DELE 1", "QUIT")[1], b"+OK Logging out, 1 messages deleted.\r\n")
        self.assertEqual(self.changed, [USER])

    def test_quit_without_deletions_reports_nothing(self):
        self.login()
        self.one(self.s, "QUIT")
        self.assertEqual(self.changed, [])


if __name__ == "__main__":
    unittest.main()
