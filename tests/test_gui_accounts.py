"""The Accounts tab's forwarding, on the virtual screen with a real MailServer on loopback.

Same rules as test_gui: the SmartHost is a closed loopback port (127.0.0.1:9), so a copy
for an outside address waits in the queue and nothing leaves the machine.  Forwarding is
set through the page's widgets and checked where it matters: accounts.json, the running
server, and the Maildirs the mail lands in.
"""
from __future__ import annotations

import json
import smtplib
import unittest
from pathlib import Path

from gui.app import MainWindow
from tests.gui_support import GuiTestCase, pump, pump_until, screenshot
from tests.support import queued_entries

MESSAGE = (b"From: sender@example.net\r\nTo: alice@example.test\r\n"
           b"Subject: forwarding test\r\nMessage-ID: <fwd-1@example.net>\r\n\r\nhello alice\r\n")


def arrived(maildir: Path) -> list[bytes]:
    new = maildir / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


class AccountsForwardingTest(GuiTestCase):
    def open_page(self, w: MainWindow):
        dialog = w.open_settings("Accounts")
        self.addCleanup(dialog.destroy)
        return dialog, dialog.pages["Accounts"]

    def accounts_file(self, w: MainWindow) -> dict:
        return json.loads((w.controller.data_dir / "accounts.json").read_text())["accounts"]

    def select(self, page, address: str) -> None:
        page.tree.selection_set(address)
        pump_until(page, lambda: "disabled" not in page.forward_button.state(), timeout=5,
                   what=f"selecting {address}")

    def test_forwarding_set_on_the_page_copies_the_mail(self) -> None:
        w = self.open_main()
        store = w.controller.accounts()
        for name in ("alice", "bob"):
            store.add(f"{name}@example.test", f"pw-{name}", w.controller.local_domains())
        dialog, page = self.open_page(w)
        self.assertIn("disabled", page.forward_button.state())  # nothing selected yet
        self.select(page, "alice@example.test")
        self.assertEqual(page.forward.get(), "")
        page.forward.set("bob@example.test, Friend@Example.org")
        page.forward_button.invoke()
        self.assertEqual(page.note.text, "")
        self.assertEqual(self.accounts_file(w)["alice@example.test"]["forward"],
                         ["bob@example.test", "Friend@Example.org"])
        self.assertEqual(page.tree.set("alice@example.test", "forward"), "bob@example.test, Friend@Example.org")
        self.assertEqual(page.tree.set("bob@example.test", "forward"), "")
        self.assertEqual(page.forward.get(), "bob@example.test, Friend@Example.org")
        pump(dialog, 0.3)
        screenshot("settings-accounts-forwarding")

        with smtplib.SMTP("127.0.0.1", w.port, local_hostname="client.test", timeout=30) as smtp:
            refused = smtp.sendmail("sender@example.net", ["alice@example.test"], MESSAGE)
        self.assertEqual(refused, {})
        boxes = store.mailbox_root / "example.test"
        pump_until(w.root, lambda: arrived(boxes / "alice") and arrived(boxes / "bob"), timeout=15,
                   what="the message and its copy reaching the Maildirs")
        for name in ("alice", "bob"):
            got = arrived(boxes / name)
            self.assertEqual(len(got), 1, name)
            self.assertIn(b"Subject: forwarding test", got[0], name)
            self.assertIn(b"hello alice", got[0], name)
        queued = "".join(e.to_json().decode() for e in queued_entries(w.controller.queue_dir().parent).values())
        self.assertIn("Friend@Example.org", queued)  # the outside copy waits for the SmartHost

        page.forward.set("")  # an empty entry stops forwarding
        page.forward_button.invoke()
        self.assertEqual(self.accounts_file(w)["alice@example.test"]["forward"], [])
        self.assertEqual(page.tree.set("alice@example.test", "forward"), "")
        with smtplib.SMTP("127.0.0.1", w.port, local_hostname="client.test", timeout=30) as smtp:
            smtp.sendmail("sender@example.net", ["alice@example.test"], MESSAGE)
        pump_until(w.root, lambda: len(arrived(boxes / "alice")) == 2, timeout=15, what="the second message")
        pump(w.root, 0.3)
        self.assertEqual(len(arrived(boxes / "bob")), 1)  # no copy any more

    def test_a_bad_target_is_shown_in_the_page_and_changes_nothing(self) -> None:
        w = self.open_main()
        store = w.controller.accounts()
        store.add("alice@example.test", "pw", w.controller.local_domains())
        store.set_forward("alice@example.test", ["postmaster@example.test"])
        before = (w.controller.data_dir / "accounts.json").read_bytes()
        dialog, page = self.open_page(w)
        self.assertEqual(page.tree.set("alice@example.test", "forward"), "postmaster@example.test")
        self.select(page, "alice@example.test")
        self.assertEqual(page.forward.get(), "postmaster@example.test")
        for typed, words in (("postmaster@example.test, not an address", "is not an e-mail address"),
                             ("alice@example.test", "cannot forward to itself")):
            page.forward.set(typed)
            page.forward_button.invoke()
            pump(dialog, 0.1)
            self.assertTrue(page.note.winfo_ismapped(), typed)
            self.assertIn(words, page.note.text)
            self.assertEqual(page.forward.get(), typed)  # kept, to be corrected
            self.assertEqual((w.controller.data_dir / "accounts.json").read_bytes(), before)
            self.assertEqual(store.forwards_for("alice", "example.test"), ["postmaster@example.test"])
        # A local address without an account is saved, with a word that it cannot get a copy yet.
        page.forward.set("nobody@example.test")
        page.forward_button.invoke()
        self.assertEqual(self.accounts_file(w)["alice@example.test"]["forward"], ["nobody@example.test"])
        self.assertIn("nobody@example.test is not an account here", page.note.text)
        # root shares postmaster's forwarding, and the list says so on both lines.
        self.select(page, "root@example.test")
        page.forward.set("alice@example.test")
        page.forward_button.invoke()
        self.assertEqual(page.note.text, "")
        self.assertEqual(self.accounts_file(w)["postmaster@example.test"]["forward"], ["alice@example.test"])
        for address in ("root@example.test", "postmaster@example.test"):
            self.assertEqual(page.tree.set(address, "forward"), "alice@example.test", address)
        page.tree.selection_remove(page.tree.selection())
        pump_until(page, lambda: "disabled" in page.forward_button.state(), timeout=5,
                   what="the button greying out with nothing selected")
        self.assertEqual(page.forward.get(), "")


if __name__ == "__main__":
    unittest.main()
