"""Settings > Addresses (aliases, groups, catch-all, domain aliases) and the Accounts page's
Quota… and Auto-reply… dialogs, with real widgets on the virtual screen.

Each test does what a person does: presses Add or selects a row and presses Edit, fills the
dialog, presses OK; then checks the file in the data folder (addresses.json, accounts.json,
autoreply.json) and what the list shows.  A refused edit must show the store's own sentence
in the dialog and leave the file as it was.  One test sends mail to a new alias over SMTP:
the running server uses the change at once.
"""
from __future__ import annotations

import json
import smtplib
import unittest
from pathlib import Path

from gui.app import MainWindow
from tests.gui_support import GuiTestCase, pump, pump_until, screenshot

MESSAGE = (b"From: sender@example.net\r\nTo: sales@example.test\r\n"
           b"Subject: alias test\r\nMessage-ID: <alias-1@example.net>\r\n\r\nhello sales\r\n")


def arrived(maildir: Path) -> list[bytes]:
    new = maildir / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def file_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


class AddressTestCase(GuiTestCase):
    def open_page(self, name: str = "Addresses", start: bool = False, accounts: tuple[str, ...] = (),
                  **extra: object):
        w = self.open_main(start=start, **extra)
        for address in accounts:
            w.controller.accounts().add(address, "pw", w.controller.local_domains())
        dialog = w.open_settings(name)
        self.addCleanup(dialog.destroy)
        pump(dialog, 0.1)
        return w, dialog, dialog.pages[name]

    def data(self, w: MainWindow, name: str) -> dict:
        return json.loads((w.controller.data_dir / name).read_text())

    def press(self, button, page):
        """Press a button that opens a dialog; the dialog it opened."""
        before = page.form
        button.invoke()
        self.assertIsNot(page.form, before, "no dialog opened")
        return page.form

    def select(self, lst, iid: str) -> None:
        lst.tree.selection_set(iid)
        pump_until(lst, lambda: "disabled" not in lst.edit_button.state(), timeout=5, what=f"selecting {iid}")

    def refused(self, form, words: str, path: Path, before: bytes | None) -> None:
        form.ok_button.invoke()
        pump(form, 0.05)
        self.assertTrue(form.winfo_exists(), "a refused dialog stays open")
        self.assertTrue(form.error.winfo_ismapped())
        self.assertIn(words, form.error.text)
        self.assertEqual(file_bytes(path), before)
        form.cancel_button.invoke()


class AddressesPageTest(AddressTestCase):
    def test_an_alias_added_on_the_page_delivers_at_once(self) -> None:
        w, dialog, page = self.open_page(start=True, accounts=("alice@example.test", "bob@example.test"))
        form = self.press(page.aliases.add_button, page)
        form.set("address", "sales")  # a name alone: the primary domain
        form.set("targets", "alice@example.test\nbob@example.test")
        form.ok_button.invoke()
        self.assertFalse(form.winfo_exists())
        self.assertEqual(self.data(w, "addresses.json")["aliases"],
                         {"sales@example.test": ["alice@example.test", "bob@example.test"]})
        self.assertEqual(page.aliases.row("sales@example.test"),
                         ["sales@example.test", "alice@example.test, bob@example.test"])
        self.assertEqual(page.aliases.selected(), "sales@example.test")
        pump(dialog, 0.3)
        screenshot("settings-addresses")

        with smtplib.SMTP("127.0.0.1", w.port, local_hostname="client.test", timeout=30) as smtp:
            self.assertEqual(smtp.sendmail("sender@example.net", ["sales@example.test"], MESSAGE), {})
        boxes = w.controller.accounts().mailbox_root / "example.test"
        pump_until(w.root, lambda: arrived(boxes / "alice") and arrived(boxes / "bob"), timeout=15,
                   what="the alias's mail reaching both accounts")

        self.select(page.aliases, "sales@example.test")
        form = self.press(page.aliases.edit_button, page)
        self.assertIn("disabled", form.widgets["address"].state())  # the address is the entry's name
        self.assertEqual(form.values()["targets"], "alice@example.test\nbob@example.test")
        form.set("targets", "bob@example.test\nFriend@Example.org")
        form.ok_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["aliases"],
                         {"sales@example.test": ["bob@example.test", "Friend@Example.org"]})
        self.assertEqual(page.aliases.row("sales@example.test")[1], "bob@example.test, Friend@Example.org")

        page.aliases.remove_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["aliases"], {})
        self.assertEqual(page.aliases.tree.get_children(), ())
        self.assertIn("disabled", page.aliases.edit_button.state())

    def test_a_refused_alias_shows_the_stores_words_and_changes_nothing(self) -> None:
        w, _, page = self.open_page(accounts=("alice@example.test",))
        path = w.controller.data_dir / "addresses.json"
        form = self.press(page.aliases.add_button, page)
        form.set("address", "sales@example.test")
        form.set("targets", "nobody@example.test")
        self.refused(form, "alias sales@example.test: nobody@example.test is not an account, alias or group",
                     path, None)
        form = self.press(page.aliases.add_button, page)
        form.set("address", "alice@example.test")
        form.set("targets", "postmaster@example.test")
        self.refused(form, "has the same address as an account", path, None)
        self.assertEqual(page.aliases.tree.get_children(), ())

    def test_groups_with_who_may_send(self) -> None:
        w, _, page = self.open_page(accounts=("alice@example.test", "bob@example.test"))
        path = w.controller.data_dir / "addresses.json"
        form = self.press(page.groups.add_button, page)
        self.assertEqual(form.values()["senders"], "Anyone")
        form.set("address", "team@example.test")
        form.set("senders", "Members only")
        form.set("members", "alice@example.test\n\nbob@example.test\n")
        form.ok_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["groups"], {"team@example.test": {
            "members": ["alice@example.test", "bob@example.test"], "senders": "members"}})
        self.assertEqual(page.groups.row("team@example.test"),
                         ["team@example.test", "Members only", "alice@example.test, bob@example.test"])

        self.select(page.groups, "team@example.test")
        form = self.press(page.groups.edit_button, page)
        self.assertEqual(form.values()["senders"], "Members only")
        form.set("senders", "This server's domains")
        form.ok_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["groups"]["team@example.test"]["senders"], "local")

        before = file_bytes(path)
        form = self.press(page.groups.edit_button, page)
        form.set("members", "")
        self.refused(form, "group team@example.test has no members", path, before)

        # An alias a group names cannot go: the page says why and the file stays.
        form = self.press(page.aliases.add_button, page)
        form.set("address", "sales")
        form.set("targets", "alice@example.test")
        form.ok_button.invoke()
        form = self.press(page.groups.edit_button, page)
        form.set("members", "sales@example.test")
        form.ok_button.invoke()
        before = file_bytes(path)
        self.select(page.aliases, "sales@example.test")
        self.assertFalse(page.remove_alias("sales@example.test"))
        self.assertIn("sales@example.test is a target of team@example.test", page.note.text)
        self.assertEqual(file_bytes(path), before)
        self.select(page.groups, "team@example.test")
        page.groups.remove_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["groups"], {})
        self.assertEqual(page.note.text, "")

    def test_catch_all_of_a_domain(self) -> None:
        w, _, page = self.open_page(accounts=("alice@example.test", "bob@example.test"))
        path = w.controller.data_dir / "addresses.json"
        form = self.press(page.catch_all.add_button, page)
        self.assertEqual(form.values()["domain"], "example.test")
        self.assertIn("alice@example.test", form.widgets["account"].cget("values"))
        form.set("account", "nobody")
        self.refused(form, "catch-all of example.test: nobody@example.test is not an account here", path, None)
        form = self.press(page.catch_all.add_button, page)
        form.set("account", "alice")
        form.ok_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["catch_all"], {"example.test": "alice@example.test"})
        self.assertEqual(page.catch_all.row("example.test"), ["example.test", "alice@example.test"])
        self.assertIsNone(page.add_catch_all())  # the one domain has its catch-all
        self.assertIn("Every domain has a catch-all", page.note.text)

        self.select(page.catch_all, "example.test")
        form = self.press(page.catch_all.edit_button, page)
        self.assertIn("disabled", form.widgets["domain"].state())
        form.set("account", "bob@example.test")
        form.ok_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["catch_all"], {"example.test": "bob@example.test"})
        page.catch_all.remove_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["catch_all"], {})
        self.assertEqual(page.catch_all.tree.get_children(), ())

    def test_domain_aliases(self) -> None:
        w, _, page = self.open_page(accounts=("bob@example.net",), additional_domains=["example.net"])
        path = w.controller.data_dir / "addresses.json"
        form = self.press(page.domain_aliases.add_button, page)
        self.assertEqual(list(form.widgets["target"].cget("values")), ["example.test", "example.net"])
        form.set("alias", "Example.ORG")
        form.set("target", "example.test")
        form.ok_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["domain_aliases"], {"example.org": "example.test"})
        self.assertEqual(page.domain_aliases.row("example.org"), ["example.org", "example.test"])
        before = file_bytes(path)
        form = self.press(page.domain_aliases.add_button, page)
        form.set("alias", "example.net")  # a real domain, with an account of its own
        form.set("target", "example.test")
        self.refused(form, "example.net is a real domain with bob@example.net of its own", path, before)

        self.select(page.domain_aliases, "example.org")
        form = self.press(page.domain_aliases.edit_button, page)
        form.set("target", "example.net")
        form.ok_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["domain_aliases"], {"example.org": "example.net"})
        page.domain_aliases.remove_button.invoke()
        self.assertEqual(self.data(w, "addresses.json")["domain_aliases"], {})

    def test_problems_of_the_book_are_listed_under_the_lists(self) -> None:
        w, _, page = self.open_page(accounts=("alice@example.test",))
        form = self.press(page.aliases.add_button, page)
        form.set("address", "sales")
        form.set("targets", "alice@example.test")
        form.ok_button.invoke()
        self.assertEqual(page.problems.text, "")
        w.controller.admin.account_remove("alice@example.test")
        page.load(w.controller.editable_settings())
        self.assertIn("sales@example.test: alice@example.test is not an account", page.problems.text)
        self.assertEqual(page.aliases.row("sales@example.test")[1], "alice@example.test")


class AccountExtrasTest(AddressTestCase):
    def open_accounts(self):
        w, dialog, page = self.open_page("Accounts", accounts=("alice@example.test",))
        page.tree.selection_set("alice@example.test")
        pump_until(page, lambda: "disabled" not in page.quota_button.state(), timeout=5, what="selecting alice")
        return w, dialog, page

    def test_quota(self) -> None:
        w, _, page = self.open_accounts()
        path = w.controller.data_dir / "accounts.json"
        self.assertEqual(page.tree.set("alice@example.test", "quota"), "")
        form = self.press(page.quota_button, page)
        self.assertEqual(form.values()["quota"], "")
        form.set("quota", "250")
        form.ok_button.invoke()
        self.assertFalse(form.winfo_exists())
        self.assertEqual(self.data(w, "accounts.json")["accounts"]["alice@example.test"]["quota_mb"], 250)
        self.assertEqual(page.tree.set("alice@example.test", "quota"), "250 MB")

        before = file_bytes(path)
        form = self.press(page.quota_button, page)
        self.assertEqual(form.values()["quota"], "250")
        form.set("quota", "0")
        self.refused(form, "quota_mb of alice@example.test must be a whole number of MB", path, before)
        form = self.press(page.quota_button, page)
        form.set("quota", "lots")
        self.refused(form, "whole number of MB", path, before)

        form = self.press(page.quota_button, page)
        form.set("quota", "")  # empty: no quota
        form.ok_button.invoke()
        self.assertNotIn("quota_mb", self.data(w, "accounts.json")["accounts"]["alice@example.test"])
        self.assertEqual(page.tree.set("alice@example.test", "quota"), "")

    def test_auto_reply(self) -> None:
        w, dialog, page = self.open_accounts()
        path = w.controller.data_dir / "autoreply.json"
        self.assertEqual(page.tree.set("alice@example.test", "reply"), "")
        form = self.press(page.autoreply_button, page)
        self.assertIsNone(form.extra_button)  # nothing to remove yet
        form.set("subject", "Away")
        form.set("body", "Back on Monday.\nAsk bob meanwhile.")
        form.set("start", "2030-07-01")
        form.set("end", "2030-07-20")
        form.set("days", "3")
        pump(dialog, 0.2)
        screenshot("settings-accounts-autoreply")
        form.ok_button.invoke()
        self.assertFalse(form.winfo_exists())
        self.assertEqual(self.data(w, "autoreply.json")["replies"], {"alice@example.test": {
            "subject": "Away", "body": "Back on Monday.\nAsk bob meanwhile.", "start": "2030-07-01",
            "end": "2030-07-20", "days": 3, "enabled": True}})
        self.assertEqual(page.tree.set("alice@example.test", "reply"), "on")

        before = file_bytes(path)
        form = self.press(page.autoreply_button, page)
        self.assertEqual(form.values()["start"], "2030-07-01")
        form.set("start", "2030-07-32")
        self.refused(form, "From: '2030-07-32' is not a date of the form YYYY-MM-DD", path, before)
        form = self.press(page.autoreply_button, page)
        form.set("end", "2030-06-01")  # before the start: the store's own words
        self.refused(form, "auto-reply of alice@example.test: end: 2030-06-01 is before the start",
                     path, before)

        form = self.press(page.autoreply_button, page)
        self.assertEqual(form.values()["body"], "Back on Monday.\nAsk bob meanwhile.")
        form.set("enabled", False)
        form.ok_button.invoke()
        self.assertIs(self.data(w, "autoreply.json")["replies"]["alice@example.test"]["enabled"], False)
        self.assertEqual(page.tree.set("alice@example.test", "reply"), "off")
        form = self.press(page.autoreply_button, page)
        self.assertFalse(form.values()["enabled"])
        form.extra_button.invoke()  # Remove auto-reply
        self.assertFalse(form.winfo_exists())
        self.assertEqual(self.data(w, "autoreply.json")["replies"], {})
        self.assertEqual(page.tree.set("alice@example.test", "reply"), "")


if __name__ == "__main__":
    unittest.main()
