"""Tests for ismail.accounts: what a user or administrator would check."""
from __future__ import annotations

import base64
import hashlib
import json
import mailbox
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from ismail.fsutil import make_maildirs
from ismail.store import accounts
from ismail.store.accounts import AccountError, AccountStore, hash_password, verify_password

DOMAINS = ["localhost", "example.test"]


class StoreTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.data = Path(self._tmp.name) / "data"
        self.store = AccountStore(self.data, reload_interval=0)

    def write_file(self, text: str) -> bytes:
        self.data.mkdir(parents=True, exist_ok=True)
        self.store.path.write_text(text, encoding="utf-8")
        return self.store.path.read_bytes()

    def bump_mtime(self) -> None:
        # Some filesystems have coarse mtimes; move it explicitly instead of sleeping.
        st = self.store.path.stat()
        os.utime(self.store.path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


class AddTests(StoreTestCase):
    def test_add_creates_hashed_entry_and_maildir(self) -> None:
        info = self.store.add("Alice@Example.Test", "s3cret-pw", DOMAINS)
        self.assertEqual(info.address, "alice@example.test")
        self.assertFalse(info.builtin)
        self.assertTrue(info.has_password)
        self.assertEqual(info.mailbox, self.data / "mailboxes" / "example.test" / "alice")

        raw = self.store.path.read_bytes()
        self.assertNotIn(b"s3cret-pw", raw)
        doc = json.loads(raw)
        self.assertEqual(doc["version"], 1)
        entry = doc["accounts"]["alice@example.test"]
        self.assertEqual(entry["forward"], [])
        self.assertTrue(entry["password"].startswith("scrypt$16384$8$1$"))
        self.assertTrue(verify_password("s3cret-pw", entry["password"]))
        self.assertFalse(verify_password("wrong", entry["password"]))

        self.assertTrue(self.store.check_password("ALICE@example.test", "s3cret-pw"))
        self.assertFalse(self.store.check_password("alice@example.test", "S3cret-pw"))
        for sub in ("new", "cur", "tmp"):
            self.assertTrue((info.mailbox / sub).is_dir())
        md = mailbox.Maildir(info.mailbox, create=False)
        self.assertEqual(len(md), 0)

    def test_new_store_sees_saved_account(self) -> None:
        self.store.add("bob@localhost", "pw", DOMAINS)
        other = AccountStore(self.data)
        other.load()
        self.assertTrue(other.check_password("bob@localhost", "pw"))

    @unittest.skipIf(os.name == "nt", "POSIX permissions")
    def test_file_is_private(self) -> None:
        self.store.add("bob@localhost", "pw", DOMAINS)
        self.assertEqual(self.store.path.stat().st_mode & 0o777, 0o600)
        leftovers = [p.name for p in self.data.iterdir() if p.name.endswith(".tmp")]
        self.assertEqual(leftovers, [])

    def test_duplicate_refused(self) -> None:
        self.store.add("bob@localhost", "pw", DOMAINS)
        with self.assertRaises(AccountError) as cm:
            self.store.add("BOB@LocalHost", "other", DOMAINS)
        self.assertIn("bob@localhost", str(cm.exception))
        self.assertIn("already exists", str(cm.exception))
        self.assertTrue(self.store.check_password("bob@localhost", "pw"))

    def test_non_local_domain_refused(self) -> None:
        with self.assertRaises(AccountError) as cm:
            self.store.add("bob@example.org", "pw", DOMAINS)
        msg = str(cm.exception)
        self.assertIn("example.org is not one of ISMail's domains (localhost, example.test)", msg)
        self.assertIn("additional_domains", msg)
        self.assertFalse(self.store.path.exists())

    def test_bad_local_parts_refused(self) -> None:
        for local in ("con", "CON", "nul.txt", "com1", "lpt9.x", "a..b", ".a", "a.", "a/b",
                      "..", "a\\b", "a b", "x" * 65, ""):
            with self.subTest(local=local), self.assertRaises(AccountError):
                self.store.add(f"{local}@localhost", "pw", DOMAINS)
        for bad in ("no-at-sign", "a@b@localhost", "a@"):
            with self.subTest(address=bad), self.assertRaises(AccountError):
                self.store.add(bad, "pw", DOMAINS)
        self.assertFalse(self.store.path.exists())
        self.assertFalse((self.data / "mailboxes").exists())

    def test_good_local_parts_accepted(self) -> None:
        for local in ("a", "first.last", "x_y+z-1", "console", "com10", "x" * 64):
            with self.subTest(local=local):
                self.store.add(f"{local}@localhost", "pw", DOMAINS)

    def test_empty_password_refused(self) -> None:
        with self.assertRaises(AccountError) as cm:
            self.store.add("bob@localhost", "", DOMAINS)
        self.assertIn("bob@localhost", str(cm.exception))

    def test_builtins_cannot_be_added(self) -> None:
        for local in ("postmaster", "Root"):
            with self.subTest(local=local), self.assertRaises(AccountError) as cm:
                self.store.add(f"{local}@localhost", "pw", DOMAINS)
            self.assertIn("built in", str(cm.exception))

    def test_forward_and_unknown_keys_round_trip(self) -> None:
        self.write_file(json.dumps({"version": 1, "accounts": {"carol@localhost": {
            "password": hash_password("pw"), "forward": ["x@example.org"], "note": "keep"}}}))
        self.store.add("dave@localhost", "pw", DOMAINS)
        self.store.set_password("carol@localhost", "new")
        entry = json.loads(self.store.path.read_bytes())["accounts"]["carol@localhost"]
        self.assertEqual(entry["forward"], ["x@example.org"])
        self.assertEqual(entry["note"], "keep")
        self.assertTrue(self.store.check_password("carol@localhost", "new"))


class RemoveAndPasswordTests(StoreTestCase):
    def test_remove_keeps_mailbox(self) -> None:
        info = self.store.add("bob@localhost", "pw", DOMAINS)
        (info.mailbox / "new" / "1.msg").write_bytes(b"Subject: hi\r\n\r\nbody\r\n")
        self.assertEqual(self.store.mailbox_for("bob", "localhost"), info.mailbox)  # known now
        self.store.remove("Bob@localhost")
        self.assertIsNone(self.store.mailbox_for("bob", "localhost"))
        self.assertFalse(self.store.check_password("bob@localhost", "pw"))
        self.assertEqual(len(mailbox.Maildir(info.mailbox, create=False)), 1)
        self.assertNotIn("bob@localhost", json.loads(self.store.path.read_bytes())["accounts"])
        with self.assertRaises(AccountError) as cm:
            self.store.remove("bob@localhost")
        self.assertIn("bob@localhost", str(cm.exception))

    def test_builtins_cannot_be_removed(self) -> None:
        for address in ("postmaster@localhost", "ROOT@example.test"):
            with self.subTest(address=address), self.assertRaises(AccountError) as cm:
                self.store.remove(address)
            self.assertIn("cannot be removed", str(cm.exception))

    def test_set_password(self) -> None:
        self.store.add("bob@localhost", "old", DOMAINS)
        self.store.set_password("bob@localhost", "new")
        self.assertTrue(self.store.check_password("bob@localhost", "new"))
        self.assertFalse(self.store.check_password("bob@localhost", "old"))
        with self.assertRaises(AccountError):
            self.store.set_password("nobody@localhost", "pw")
        with self.assertRaises(AccountError):
            self.store.set_password("bob@localhost", "")

    def test_set_password_for_builtins(self) -> None:
        self.assertFalse(self.store.check_password("postmaster@localhost", ""))
        self.store.set_password("postmaster@localhost", "pm-pw")
        self.assertTrue(self.store.check_password("postmaster@localhost", "pm-pw"))
        self.assertTrue(self.store.check_password("root@localhost", "pm-pw"))  # alias
        self.store.set_password("root@example.test", "r-pw")
        self.assertTrue(self.store.check_password("postmaster@example.test", "r-pw"))
        pm_box = self.data / "mailboxes" / "example.test" / "postmaster"
        mailbox.Maildir(pm_box, create=False)
        infos = {i.address: i for i in self.store.list(DOMAINS)}
        self.assertTrue(infos["root@example.test"].has_password)


class VerifiedCacheTests(StoreTestCase):
    """Repeated logins skip scrypt only for a password that was proven right, until it changes."""

    def test_only_a_proven_password_is_remembered_and_a_change_forgets_it(self) -> None:
        self.store.add("ann@example.test", "first-pw", DOMAINS)
        self.assertFalse(self.store.verified_before("ann@example.test", "first-pw"))
        self.assertFalse(self.store.check_password("ann@example.test", "wrong"))
        self.assertFalse(self.store.verified_before("ann@example.test", "wrong"))
        self.assertTrue(self.store.check_password("ann@example.test", "first-pw"))
        self.assertTrue(self.store.verified_before("ANN@example.test", "first-pw"))
        self.assertFalse(self.store.verified_before("ann@example.test", "first-pW"))
        self.store.set_password("ann@example.test", "second-pw")
        self.assertFalse(self.store.verified_before("ann@example.test", "first-pw"))
        self.assertFalse(self.store.check_password("ann@example.test", "first-pw"))

    def test_a_removed_account_is_not_remembered(self) -> None:
        self.store.add("bob@example.test", "pw-of-bob", DOMAINS)
        self.assertTrue(self.store.check_password("bob@example.test", "pw-of-bob"))
        self.store.remove("bob@example.test")
        self.assertFalse(self.store.verified_before("bob@example.test", "pw-of-bob"))


class QueryTests(StoreTestCase):
    def test_missing_file_means_no_accounts(self) -> None:
        self.store.load()
        self.assertIsNone(self.store.mailbox_for("bob", "localhost"))
        self.assertFalse(self.store.check_password("bob@localhost", "pw"))
        self.assertFalse(self.data.exists())  # reading never creates anything

    def test_list_includes_builtins(self) -> None:
        self.store.add("zed@localhost", "pw", DOMAINS)
        self.store.add("amy@example.test", "pw", DOMAINS)
        infos = self.store.list(DOMAINS)
        self.assertEqual([i.address for i in infos], [
            "amy@example.test", "postmaster@example.test", "root@example.test",
            "postmaster@localhost", "root@localhost", "zed@localhost"])
        by = {i.address: i for i in infos}
        self.assertTrue(by["root@localhost"].builtin)
        self.assertFalse(by["postmaster@localhost"].has_password)
        self.assertEqual(by["root@localhost"].mailbox, by["postmaster@localhost"].mailbox)
        self.assertEqual(by["root@localhost"].mailbox.name, "postmaster")
        self.assertFalse(by["zed@localhost"].builtin)

    def test_mailbox_for(self) -> None:
        info = self.store.add("bob@example.test", "pw", DOMAINS)
        self.assertEqual(self.store.mailbox_for("BOB", "Example.TEST"), info.mailbox)
        pm = self.data / "mailboxes" / "example.test" / "postmaster"
        self.assertEqual(self.store.mailbox_for("postmaster", "example.test"), pm)
        self.assertEqual(self.store.mailbox_for("Root", "EXAMPLE.test"), pm)
        self.assertIsNone(self.store.mailbox_for("nobody", "example.test"))
        self.assertIsNone(self.store.mailbox_for("bob", "localhost"))

    def test_unknown_user_costs_a_hash(self) -> None:
        with mock.patch.object(accounts, "verify_password", wraps=verify_password) as vp:
            self.assertFalse(self.store.check_password("ghost@localhost", "pw"))
        self.assertEqual(vp.call_count, 1)


class CorruptFileTests(StoreTestCase):
    def assert_refused_untouched(self, text: str) -> None:
        before = self.write_file(text)
        with self.assertRaises(AccountError) as cm:
            self.store.load()
        self.assertIn(str(self.store.path), str(cm.exception))
        attempts = [lambda: self.store.add("bob@localhost", "pw", DOMAINS),
                    lambda: self.store.set_password("postmaster@localhost", "pw"),
                    lambda: self.store.remove("bob@localhost")]
        for attempt in attempts:
            with self.assertRaises(AccountError) as cm:
                attempt()
            self.assertIn(str(self.store.path), str(cm.exception))
        self.assertEqual(self.store.path.read_bytes(), before)
        self.assertEqual(sorted(p.name for p in self.data.iterdir()), ["accounts.json"])

    def test_not_json(self) -> None:
        self.assert_refused_untouched('{"version": 1, "accounts": {')

    def test_wrong_shapes(self) -> None:
        pw = hash_password("pw")
        for doc in ([], {"accounts": {}}, {"version": 2, "accounts": {}},
                    {"version": True, "accounts": {}}, {"version": 1, "accounts": []},
                    {"version": 1, "accounts": {"bob@localhost": "pw"}},
                    {"version": 1, "accounts": {"bob@localhost": {"password": 5}}},
                    {"version": 1, "accounts": {"bob@localhost": {"password": pw,
                                                                  "forward": "x"}}},
                    {"version": 1, "accounts": {"../x@localhost": {"password": pw}}},
                    {"version": 1, "accounts": {"con@localhost": {"password": pw}}}):
            with self.subTest(doc=doc):
                self.assert_refused_untouched(json.dumps(doc))


class ReloadTests(StoreTestCase):
    def test_reload_picks_up_other_writer(self) -> None:
        self.store.load()
        self.assertIsNone(self.store.mailbox_for("bob", "localhost"))
        AccountStore(self.data).add("bob@localhost", "pw", DOMAINS)
        self.bump_mtime()
        self.assertIsNotNone(self.store.mailbox_for("bob", "localhost"))
        self.assertTrue(self.store.check_password("bob@localhost", "pw"))

    def test_reload_is_rate_limited(self) -> None:
        store = AccountStore(self.data, reload_interval=3600)
        store.maybe_reload()
        AccountStore(self.data).add("bob@localhost", "pw", DOMAINS)
        self.bump_mtime()
        self.assertIsNone(store.mailbox_for("bob", "localhost"))
        store.load()  # an explicit load is not rate limited
        self.assertIsNotNone(store.mailbox_for("bob", "localhost"))

    def test_corrupt_file_during_reload_keeps_accounts(self) -> None:
        self.store.add("bob@localhost", "pw", DOMAINS)
        before = self.write_file("not json at all")
        self.bump_mtime()
        with self.assertLogs("ismail.accounts", "ERROR") as logs:
            self.assertIsNotNone(self.store.mailbox_for("bob", "localhost"))
        self.assertIn(str(self.store.path), "\n".join(logs.output))
        self.assertTrue(self.store.check_password("bob@localhost", "pw"))
        self.assertEqual(self.store.path.read_bytes(), before)
        # Logged once per change, not on every lookup.
        with self.assertNoLogs("ismail.accounts", "ERROR"):
            self.store.mailbox_for("bob", "localhost")
        # Once fixed, the next reload takes effect.
        self.write_file(json.dumps({"version": 1, "accounts": {
            "carol@localhost": {"password": hash_password("c"), "forward": []}}}))
        self.bump_mtime()
        self.assertIsNone(self.store.mailbox_for("bob", "localhost"))
        self.assertIsNotNone(self.store.mailbox_for("carol", "localhost"))


class TwoProcessesTests(StoreTestCase):
    def test_accounts_added_by_two_processes_at_once_are_all_kept(self) -> None:
        # The window's server and the command line may both change accounts.json: each
        # change re-reads the file under accounts.json.lock, so none overwrites the other.
        import subprocess
        import sys
        script = ("import sys; from pathlib import Path\n"
                  "from ismail.store.accounts import AccountStore\n"
                  "s = AccountStore(Path(sys.argv[1])); s.load()\n"
                  "for i in range(10):\n"
                  "    s.add(f'p{i}@localhost', 'pw', ['localhost'])\n"
                  "    s.set_forward(f'p{i}@localhost', ['x@elsewhere.example'])\n")
        root = Path(__file__).resolve().parent.parent
        child = subprocess.Popen([sys.executable, "-c", script, str(self.data)], cwd=root)
        for i in range(10):
            self.store.add(f"t{i}@localhost", "pw", DOMAINS)
            self.store.set_forward(f"t{i}@localhost", ["y@elsewhere.example"])
        self.assertEqual(child.wait(timeout=120), 0)
        fresh = AccountStore(self.data)
        fresh.load()
        infos = {i.address: i.forward for i in fresh.list(DOMAINS) if not i.builtin}
        self.assertEqual(len(infos), 20)
        self.assertTrue(all(infos.values()), infos)
        self.assertFalse((self.data / "accounts.json.lock").exists())


class HashTests(unittest.TestCase):
    def test_scrypt_string_verifies(self) -> None:
        salt = b"0123456789abcdef"
        digest = hashlib.scrypt(b"pw", salt=salt, n=2**14, r=8, p=1, dklen=32)
        stored = "scrypt$16384$8$1${}${}".format(base64.b64encode(salt).decode(),
                                                 base64.b64encode(digest).decode())
        self.assertTrue(verify_password("pw", stored))
        self.assertFalse(verify_password("px", stored))

    def test_pbkdf2_string_verifies(self) -> None:
        salt = b"fedcba9876543210"
        digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 600_000)
        stored = "pbkdf2_sha256$600000${}${}".format(base64.b64encode(salt).decode(),
                                                     base64.b64encode(digest).decode())
        self.assertTrue(verify_password("pw", stored))
        self.assertFalse(verify_password("px", stored))

    def test_fallback_when_scrypt_missing(self) -> None:
        with mock.patch.object(accounts, "_scrypt", None):
            stored = hash_password("pw")
            self.assertTrue(stored.startswith("pbkdf2_sha256$600000$"))
            self.assertTrue(verify_password("pw", stored))
            # An scrypt hash cannot be checked without scrypt: refused, not crashed.
            self.assertFalse(verify_password("pw", "scrypt$16384$8$1$AAAA$AAAA"))

    def test_salted(self) -> None:
        a, b = hash_password("same"), hash_password("same")
        self.assertNotEqual(a, b)
        self.assertTrue(verify_password("same", a) and verify_password("same", b))

    def test_malformed_stored_strings(self) -> None:
        good = hash_password("pw")
        for stored in ("", "pw", "scrypt$", "scrypt$x$8$1$AAAA$AAAA", good + "$extra",
                       good.replace("scrypt", "md5"), "scrypt$16384$8$1$!!!!$????",
                       "scrypt$3$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==",
                       "scrypt$1073741824$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA==",
                       "pbkdf2_sha256$-1$AAAA$AAAA", "pbkdf2_sha256$600000$AAAA",
                       None, 42):
            with self.subTest(stored=stored):
                self.assertFalse(verify_password("pw", stored))  # type: ignore[arg-type]

    def test_make_maildirs(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "a" / "b"
            make_maildirs(path)
            make_maildirs(path)  # idempotent
            mailbox.Maildir(path, create=False)
            self.assertEqual(sorted(p.name for p in path.iterdir()), ["cur", "new", "tmp"])


if __name__ == "__main__":
    unittest.main()
