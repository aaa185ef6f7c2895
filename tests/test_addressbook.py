"""Tests for ismail.store.addressbook: aliases, groups, catch-all, domain aliases."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

from ismail.store.addressbook import MAX_TARGETS, AddressBook, AddressError

DOMAINS = {"example.com"}
ACCOUNTS = {"ann@example.com", "bob@example.com", "carol@example.com"}


def is_account(addr: str) -> bool:
    # What the server passes: accounts.json plus the built-in postmaster/root.
    return addr in ACCOUNTS or addr.split("@")[0] in ("postmaster", "root")


class BookTest(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.data = Path(self._tmp.name)
        self.book = self.new_book()

    def new_book(self) -> AddressBook:
        book = AddressBook(self.data, reload_interval=0)
        book.load()
        return book

    def alias(self, address: str, targets: list[str], book: AddressBook | None = None) -> None:
        (book or self.book).set_alias(address, targets, accounts=ACCOUNTS, local_domains=DOMAINS)

    def group(self, address: str, members: list[str], senders: str = "anyone") -> None:
        self.book.set_group(address, members, senders, accounts=ACCOUNTS, local_domains=DOMAINS)

    def expand(self, address: str, sender: str = "x@remote.org", local: bool = False,
               book: AddressBook | None = None):
        return (book or self.book).expand(address, sender, is_account=is_account,
                                          local_domains=DOMAINS, sender_is_local=local)

    def refused(self, *words: str) -> "_Refused":
        return _Refused(self, words)


class _Refused:
    """with self.refused("loop", "a@"): ... asserts AddressError naming every word."""

    def __init__(self, test: unittest.TestCase, words: tuple[str, ...]) -> None:
        self.test, self.words = test, words

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        self.test.assertTrue(kind is not None and issubclass(kind, AddressError),
                             f"expected AddressError naming {self.words}, got {exc!r}")
        for word in self.words:
            self.test.assertIn(word, str(exc))
        return True


class AliasTest(BookTest):
    def test_alias_to_local_and_remote(self) -> None:
        self.alias("sales@example.com", ["ann@example.com", "Bob@Partner.org"])
        got = self.expand("sales@example.com")
        self.assertEqual(got.accounts, ["ann@example.com"])
        self.assertEqual(got.remote, ["Bob@Partner.org"])  # spelled as the admin wrote it
        self.assertTrue(got.known)
        self.assertEqual(got.refusal, "")

    def test_nested_alias_each_target_once(self) -> None:
        self.alias("inner@example.com", ["bob@example.com", "x@remote.org"])
        self.alias("outer@example.com", ["ann@example.com", "inner@example.com",
                                         "bob@example.com"])
        got = self.expand("outer@example.com")
        self.assertEqual(got.accounts, ["ann@example.com", "bob@example.com"])
        self.assertEqual(got.remote, ["x@remote.org"])

    def test_account_wins_and_unknown_is_unknown(self) -> None:
        self.assertEqual(self.expand("ann@example.com").accounts, ["ann@example.com"])
        self.assertFalse(self.expand("nobody@example.com").known)
        self.assertEqual(self.expand("someone@remote.org").remote, ["someone@remote.org"])

    def test_case_insensitive(self) -> None:
        self.alias("Sales@Example.COM", ["ANN@example.com"])
        self.assertIn("sales@example.com", self.book.snapshot()["aliases"])
        self.assertEqual(self.expand("SALES@example.com").accounts, ["ann@example.com"])
        with self.refused("ann@example.com", "account"):
            self.alias("Ann@EXAMPLE.com", ["bob@example.com"])
        self.alias("sales@example.com", ["bob@example.com", "BOB@example.com"])
        self.assertEqual(self.book.snapshot()["aliases"]["sales@example.com"],
                         ["bob@example.com"])

    def test_bad_entries_refused_naming_them(self) -> None:
        with self.refused("sales@example.com", "itself"):
            self.alias("sales@example.com", ["Sales@example.com"])
        with self.refused("sales@example.com", "no targets"):
            self.alias("sales@example.com", [" "])
        with self.refused("not an address", "sales@example.com"):
            self.alias("sales@example.com", ["not an address"])
        with self.refused("bob@exa_mple.org"):
            self.alias("sales@example.com", ["bob@exa_mple.org"])
        with self.refused("other.org", "not one of ISMail's domains"):
            self.alias("sales@other.org", ["ann@example.com"])
        with self.refused("ghost@example.com", "not an account, alias or group"):
            self.alias("sales@example.com", ["ghost@example.com"])
        with self.refused("postmaster@example.com", "account"):  # built in, still an account
            self.alias("postmaster@example.com", ["ann@example.com"])
        self.assertEqual(self.book.snapshot()["aliases"], {})
        self.assertFalse((self.data / "addresses.json").exists())

    def test_loop_refused_with_path(self) -> None:
        self.alias("a@example.com", ["ann@example.com"])
        self.alias("b@example.com", ["a@example.com"])
        self.group("c@example.com", ["b@example.com"])
        with self.refused("loop", "a@example.com -> c@example.com -> b@example.com "
                                  "-> a@example.com"):
            self.alias("a@example.com", ["c@example.com"])
        self.assertEqual(self.expand("c@example.com").accounts, ["ann@example.com"])

    def test_remove_alias(self) -> None:
        self.alias("a@example.com", ["ann@example.com"])
        self.alias("b@example.com", ["a@example.com"])
        with self.refused("a@example.com", "b@example.com", "remove it there first"):
            self.book.remove_alias("a@example.com")
        self.book.remove_alias("b@example.com")
        self.book.remove_alias("a@example.com")
        self.assertFalse(self.expand("a@example.com").known)
        with self.refused("no alias a@example.com"):
            self.book.remove_alias("a@example.com")

    def test_stale_problem_does_not_block_unrelated_edits(self) -> None:
        self.alias("sales@example.com", ["carol@example.com"])
        fewer = ACCOUNTS - {"carol@example.com"}  # carol's account was removed since
        self.book.set_alias("info@example.com", ["ann@example.com"], accounts=fewer,
                            local_domains=DOMAINS)
        self.assertEqual(self.book.problems(accounts=fewer, local_domains=DOMAINS),
                         ["alias sales@example.com: carol@example.com is not an account, "
                          "alias or group"])
        with self.refused("sales@example.com", "carol@example.com"):  # editing it must fix it
            self.book.set_alias("sales@example.com", ["carol@example.com", "ann@example.com"],
                                accounts=fewer, local_domains=DOMAINS)


class GroupTest(BookTest):
    MEMBERS = ["ann@example.com", "Partner@Remote.org"]

    def test_anyone(self) -> None:
        self.group("team@example.com", self.MEMBERS, "anyone")
        got = self.expand("team@example.com", sender="stranger@else.net")
        self.assertEqual((got.accounts, got.remote, got.refusal),
                         (["ann@example.com"], ["Partner@Remote.org"], ""))

    def test_members_only(self) -> None:
        self.group("team@example.com", self.MEMBERS, "members")
        got = self.expand("team@example.com", sender="stranger@else.net", local=True)
        self.assertEqual(got.refusal, "only members of team@example.com may send to it")
        self.assertEqual((got.accounts, got.remote), ([], []))
        self.assertEqual(self.expand("team@example.com", sender="partner@REMOTE.org").refusal,
                         "")
        self.assertEqual(self.expand("team@example.com", sender="ANN@example.com").refusal, "")
        self.assertNotEqual(self.expand("team@example.com", sender="").refusal, "")  # bounces

    def test_local_senders_only(self) -> None:
        self.group("team@example.com", self.MEMBERS, "local")
        self.assertIn("team@example.com", self.expand("team@example.com", local=False).refusal)
        self.assertEqual(self.expand("team@example.com", local=True).accounts,
                         ["ann@example.com"])

    def test_unknown_mode_refused(self) -> None:
        with self.refused("team@example.com", "anyone, members, local"):
            self.group("team@example.com", self.MEMBERS, "everybody")

    def test_alias_to_restricted_group_is_checked(self) -> None:
        self.group("team@example.com", self.MEMBERS, "members")
        self.alias("sales@example.com", ["team@example.com"])
        self.assertIn("only members", self.expand("sales@example.com").refusal)

    def test_group_in_group_expanded_once_outer_rule_governs(self) -> None:
        self.group("inner@example.com", ["bob@example.com", "ann@example.com"], "members")
        self.group("all@example.com", ["ann@example.com", "inner@example.com",
                                       "inner@example.com", "carol@example.com"], "anyone")
        got = self.expand("all@example.com", sender="stranger@else.net")
        self.assertEqual(got.refusal, "")
        self.assertEqual(got.accounts, ["ann@example.com", "bob@example.com",
                                        "carol@example.com"])

    def test_group_bounds(self) -> None:
        big = [f"m{i}@remote.org" for i in range(2000)]
        with self.refused("team@example.com", "2000", str(MAX_TARGETS)):
            self.group("team@example.com", big)
        self.group("half1@example.com", big[:600])
        self.group("half2@example.com", big[600:1200])
        with self.refused("all@example.com", "expands to 1200"):
            self.group("all@example.com", ["half1@example.com", "half2@example.com"])
        # A hand-edited file is not validated against bounds on load: delivery refuses.
        (self.data / "addresses.json").write_text(json.dumps(
            {"version": 1, "groups": {"huge@example.com": {"members": big}}}))
        self.book.load()
        got = self.expand("huge@example.com")
        self.assertIn("more than 1000", got.refusal)
        self.assertEqual((got.accounts, got.remote), ([], []))

    def test_depth_bound(self) -> None:
        self.alias("d0@example.com", ["ann@example.com"])
        for i in range(1, 10):
            self.alias(f"d{i}@example.com", [f"d{i - 1}@example.com"])
        self.assertEqual(self.expand("d9@example.com").accounts, ["ann@example.com"])
        with self.refused("d10@example.com", "11 deep"):
            self.alias("d10@example.com", ["d9@example.com"])

    def test_alias_and_group_cannot_share_an_address(self) -> None:
        self.alias("team@example.com", ["ann@example.com"])
        with self.refused("team@example.com", "both an alias and a group"):
            self.group("team@example.com", self.MEMBERS)

    def test_remove_group(self) -> None:
        self.group("team@example.com", self.MEMBERS)
        self.book.remove_group("team@example.com")
        self.assertFalse(self.expand("team@example.com").known)


class CatchAllAndDomainAliasTest(BookTest):
    def set_catch_all(self, domain: str, account: str | None) -> None:
        self.book.set_catch_all(domain, account, accounts=ACCOUNTS, local_domains=DOMAINS)

    def test_catch_all_only_for_unknowns(self) -> None:
        self.assertFalse(self.expand("nobody@example.com").known)  # off by default
        self.alias("sales@example.com", ["bob@example.com"])
        self.set_catch_all("example.com", "postmaster@example.com")
        self.assertEqual(self.expand("nobody@example.com").accounts, ["postmaster@example.com"])
        self.assertEqual(self.expand("ann@example.com").accounts, ["ann@example.com"])
        self.assertEqual(self.expand("sales@example.com").accounts, ["bob@example.com"])
        self.set_catch_all("example.com", None)
        self.assertFalse(self.expand("nobody@example.com").known)

    def test_catch_all_must_be_an_account_of_the_domain(self) -> None:
        with self.refused("catch-all of example.com", "ghost@example.com"):
            self.set_catch_all("example.com", "ghost@example.com")
        with self.refused("catch-all of example.com", "x@remote.org"):
            self.set_catch_all("example.com", "x@remote.org")
        with self.refused("other.org", "not one of ISMail's domains"):
            self.set_catch_all("other.org", "ann@example.com")

    def test_domain_alias(self) -> None:
        self.alias("sales@example.com", ["bob@example.com"])
        self.book.set_domain_alias("Example.ORG", "example.com", local_domains=DOMAINS)
        self.assertEqual(self.book.accepted_domains(DOMAINS), {"example.com", "example.org"})
        self.assertEqual(self.expand("ann@example.org").accounts, ["ann@example.com"])
        self.assertEqual(self.expand("sales@EXAMPLE.org").accounts, ["bob@example.com"])
        self.assertFalse(self.expand("nobody@example.org").known)
        # a target written in the alias domain reaches the account too
        self.alias("info@example.com", ["carol@example.org"])
        self.assertEqual(self.expand("info@example.com").accounts, ["carol@example.com"])
        with self.refused("example.org is an alias of example.com"):
            self.alias("x@example.org", ["ann@example.com"])
        self.book.set_domain_alias("example.org", None, local_domains=DOMAINS)
        self.assertEqual(self.book.accepted_domains(DOMAINS), {"example.com"})

    def test_domain_alias_refusals(self) -> None:
        domains = DOMAINS | {"example.net", "example.org"}
        with self.refused("other.org", "not one of ISMail's domains"):
            self.book.set_domain_alias("example.org", "other.org", local_domains=domains)
        with self.refused("itself"):
            self.book.set_domain_alias("example.org", "example.org", local_domains=domains)
        self.book.set_domain_alias("example.org", "example.net", local_domains=domains)
        with self.refused("example.org -> example.net -> example.com", "chain"):
            self.book.set_domain_alias("example.net", "example.com", local_domains=domains)
        with self.refused("example.com -> example.org -> example.net", "chain"):
            self.book.set_domain_alias("example.com", "example.org", local_domains=domains)
        with self.refused("example.com", "ann@example.com", "real domain"):
            self.book.set_domain_alias("example.com", "example.net", local_domains=domains,
                                       accounts=ACCOUNTS)


    def test_domain_with_entries_cannot_become_an_alias(self) -> None:
        domains = DOMAINS | {"example.net"}
        self.book.set_alias("sales@example.net", ["ann@example.com"], accounts=ACCOUNTS,
                            local_domains=domains)
        with self.refused("sales@example.net", "example.net is an alias of example.com"):
            self.book.set_domain_alias("example.net", "example.com", local_domains=domains)

    def test_loop_through_a_domain_alias_refused(self) -> None:
        self.book.set_domain_alias("example.org", "example.com", local_domains=DOMAINS)
        self.alias("a@example.com", ["ann@example.com"])
        self.alias("b@example.com", ["a@example.org"])
        with self.refused("loop", "a@example.com -> b@example.com -> a@example.com"):
            self.alias("a@example.com", ["b@example.org"])


class FileTest(BookTest):
    def test_saved_and_loaded(self) -> None:
        self.alias("sales@example.com", ["ann@example.com"])
        self.group("team@example.com", ["bob@example.com"], "members")
        doc = json.loads((self.data / "addresses.json").read_text("utf-8"))
        self.assertEqual(doc["groups"]["team@example.com"],
                         {"members": ["bob@example.com"], "senders": "members"})
        self.assertEqual(self.new_book().snapshot(), self.book.snapshot())

    def test_corrupt_file_set_aside_and_reported(self) -> None:
        (self.data / "addresses.json").write_text('{"aliases": {"x@example.com": ')
        with self.assertLogs("ismail.addressbook", "ERROR") as logs:
            book = self.new_book()
        self.assertEqual(book.snapshot()["aliases"], {})
        aside = list(self.data.glob("addresses.json.corrupt-*"))
        self.assertEqual(len(aside), 1)
        self.assertEqual(aside[0].read_text(), '{"aliases": {"x@example.com": ')
        self.assertIn(aside[0].name, logs.output[0])
        self.assertIn(aside[0].name, book.load_problem)
        self.alias("sales@example.com", ["ann@example.com"], book)  # goes on, new file
        self.assertTrue(aside[0].exists())

    def test_file_corrupted_before_an_edit_refuses_the_edit(self) -> None:
        self.alias("sales@example.com", ["ann@example.com"])
        (self.data / "addresses.json").write_text('{"aliases": []}')
        with self.assertLogs("ismail.addressbook", "ERROR"):
            with self.refused("renamed", "'aliases' is not an object"):
                self.alias("info@example.com", ["ann@example.com"])
        self.assertFalse((self.data / "addresses.json").exists())
        self.assertEqual(len(list(self.data.glob("addresses.json.corrupt-*"))), 1)

    def test_reload_on_external_change(self) -> None:
        other = self.new_book()
        self.assertFalse(self.expand("sales@example.com").known)
        self.alias("sales@example.com", ["ann@example.com"], other)
        self.assertEqual(self.expand("sales@example.com").accounts, ["ann@example.com"])
        (self.data / "addresses.json").unlink()
        self.assertFalse(self.expand("sales@example.com").known)

    def test_concurrent_edits_lose_nothing(self) -> None:
        books = [self.new_book(), self.new_book()]
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(15):
                    self.alias(f"a{n}-{i}@example.com", ["ann@example.com"], books[n])
            except BaseException as e:  # reported below, in the test's thread
                errors.append(e)
        threads = [threading.Thread(target=work, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(self.new_book().snapshot()["aliases"]), 30)
        self.assertFalse((self.data / "addresses.json.lock").exists())

    def test_concurrent_edits_by_another_process_lose_nothing(self) -> None:
        script = ("import sys; from pathlib import Path\n"
                  "from ismail.store.addressbook import AddressBook\n"
                  "b = AddressBook(Path(sys.argv[1])); b.load()\n"
                  "for i in range(15):\n"
                  "    b.set_alias(f'p{i}@example.com', ['ann@example.com'],\n"
                  "                accounts={'ann@example.com'}, local_domains={'example.com'})\n")
        root = Path(__file__).resolve().parent.parent
        child = subprocess.Popen([sys.executable, "-c", script, str(self.data)], cwd=root)
        for i in range(15):
            self.alias(f"t{i}@example.com", ["ann@example.com"])
        self.assertEqual(child.wait(timeout=60), 0)
        self.assertEqual(len(self.new_book().snapshot()["aliases"]), 30)

    def test_stale_lock_is_broken_live_lock_waits(self) -> None:
        lock = self.data / "addresses.json.lock"
        lock.write_text("12345\n")
        old = time.time() - 3600
        os.utime(lock, (old, old))
        with self.assertLogs("ismail.files", "WARNING"):
            self.alias("sales@example.com", ["ann@example.com"])
        lock.write_text("12345\n")
        threading.Timer(0.2, lock.unlink).start()
        self.alias("info@example.com", ["ann@example.com"])  # waited for the release
        self.assertEqual(len(self.book.snapshot()["aliases"]), 2)


if __name__ == "__main__":
    unittest.main()
