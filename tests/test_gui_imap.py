"""IMAP in the window: the main window's IMAP line and figure, Settings > Connections' IMAP
column, the statistics' IMAP group, Change port for an IMAP address, and Settings > Accounts
showing each account's folders with their message counts and sizes.

Same virtual screen and rules as test_gui: real windows, a real MailServer on loopback, a
SmartHost on a closed loopback port.  The IMAP peer is the standard library's imaplib
(logins from loopback are trusted, so no TLS is needed); clicks go through the X server
with xdotool where a person would click.
"""
from __future__ import annotations

import imaplib
import os
import re
import shutil
import socket
import unittest
from pathlib import Path

from gui.accountspage import human_size
from gui.app import MainWindow
from tests.gui_support import (GuiTestCase, click, greetings, make_data_dir, png_size, pump, pump_until,
                               screenshot, xdotool)
from tests.support import free_port

PASSWORD = "pw-imap-alice-1"


def imap_port(w: MainWindow) -> int:
    return int(w.controller.settings.imap.listen[0].rsplit(":", 1)[1])


def imap_greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.recv(512)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def texts(widget) -> list[str]:
    found = [str(widget.cget("text"))] if widget.winfo_class() in ("TLabel", "TLabelframe") else []
    for child in widget.winfo_children():
        found += texts(child)
    return found


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root`` with its size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.stat(path)
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found


def click_row(tree, iid: str) -> None:
    """A real click on a Treeview row, through the X server."""
    tree.see(iid)
    tree.update_idletasks()
    x, y, width, height = tree.bbox(iid)
    xdotool("mousemove", "--sync", str(tree.winfo_rootx() + x + 30), str(tree.winfo_rooty() + y + height // 2))
    xdotool("click", "1")


def message(n: int, size: int = 0) -> bytes:
    body = b"line of the message body\r\n" * (size // 26)
    return (f"From: sender@example.net\r\nTo: alice@example.test\r\nSubject: message {n}\r\n"
            f"Message-ID: <imap-gui-{n}@example.net>\r\n\r\n").encode() + body + b"bye\r\n"


class HumanSizeTest(unittest.TestCase):
    def test_sizes_as_a_person_reads_them(self) -> None:
        for n, text in ((0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (1024, "1.0 KB"),
                        (1536, "1.5 KB"), (18_350, "18 KB"), (5 * 1024 ** 2, "5.0 MB"),
                        (123 * 1024 ** 2, "123 MB"), (3 * 1024 ** 3 // 2, "1.5 GB"),
                        (5000 * 1024 ** 4, "5,000 TB")):
            self.assertEqual(human_size(n), text, n)


class MainWindowImapTest(GuiTestCase):
    def test_the_imap_line_and_its_connections(self) -> None:
        w = self.open_main()
        port = imap_port(w)
        self.assertEqual(w.state, "running")
        self.assertEqual(w.imap_listening_label.cget("text"), f"IMAP on 127.0.0.1:{port}")
        self.assertTrue(w.imap_listening_label.winfo_ismapped())
        self.assertNotIn("IMAP", w.listening_label.cget("text"))  # SMTP's line names SMTP's addresses only
        self.assertEqual(w.figure_labels["imap"].cget("text"), "0 / 20  (at most 10 per host)")
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            for c in clients:
                self.assertTrue(c.recv(512).startswith(b"* OK"))
            pump_until(w.root, lambda: w.figure_labels["imap"].cget("text").startswith("3 / 20"), timeout=5,
                       what="the IMAP line counting 3 connections")
            self.assertTrue(w.figure_labels["pop3"].cget("text").startswith("0 / 20"))  # POP3's apart
            self.assertTrue(w.figure_labels["incoming"].cget("text").startswith("0 / 20"))
            pump(w.root, 1.2)
            shot = screenshot("main-window-imap")
        finally:
            for c in clients:
                c.close()
        self.assertGreater(shot.stat().st_size, 5000)
        pump_until(w.root, lambda: w.figure_labels["imap"].cget("text").startswith("0 / 20"), timeout=5,
                   what="the IMAP line going back to 0")

    def test_imap_off(self) -> None:
        port = free_port()
        w = self.open_main(imap={"enabled": False, "listen": [f"127.0.0.1:{port}"]})
        self.assertEqual(w.state, "running")
        self.assertEqual(w.imap_listening_label.cget("text"), "IMAP off")
        self.assertEqual(w.figure_labels["imap"].cget("text"), "off")
        self.assertTrue(refused(port))
        self.assertTrue(greetings(w.port, 1)[0].startswith(b"220"))

    def test_stopped_shows_no_imap_line_and_closing_names_imap(self) -> None:
        w = self.open_main()
        port = imap_port(w)
        w.stop_button.invoke()
        pump_until(w.root, lambda: w.state == "stopped", what="stopping")
        self.assertFalse(w.imap_listening_label.winfo_ismapped())
        self.assertTrue(refused(port))
        click(w.start_button)  # a real click
        pump_until(w.root, lambda: w.state == "running", what="starting again")
        pump_until(w.root, lambda: w.imap_listening_label.winfo_ismapped(), timeout=5, what="the IMAP line")
        self.assertTrue(imap_greeting(port).startswith(b"* OK"))
        w.close()
        self.assertIn("stopping the SMTP server and the POP3 server and the IMAP server",
                      w.listening_label.cget("text"))
        self.assertFalse(w.imap_listening_label.winfo_ismapped())
        top = w.root
        pump_until(self.root, lambda: not top.winfo_exists(), timeout=30, what="the window closing")
        self.assertTrue(refused(port))

    def test_change_port_moves_the_imap_address_that_failed(self) -> None:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        taken = blocker.getsockname()[1]
        smtp_port, pop3_port = free_port(), free_port()
        data = make_data_dir(smtp_port, pop3={"listen": [f"127.0.0.1:{pop3_port}"]},
                             imap={"listen": [f"127.0.0.1:{taken}"]})
        self.addCleanup(shutil.rmtree, data, True)
        w = self.open_main(data=data)
        self.assertEqual(w.state, "stopped")
        self.assertIn(f"127.0.0.1:{taken}", w.problem_label.cget("text"))
        self.assertTrue(w.change_port_button.winfo_ismapped())
        query = w.change_port()
        self.assertIn("IMAP listens on", " ".join(texts(query)))
        self.assertEqual(query.vars[0].get(), "1143")  # an IMAP port is suggested
        new_port = free_port()
        query.vars[0].set(str(new_port))
        query.ok_button.invoke()
        pump_until(w.root, lambda: w.state == "running", what="the start on the new IMAP port")
        saved = self.settings_file(w)
        self.assertEqual(saved["imap"]["listen"], [f"127.0.0.1:{new_port}"])
        self.assertEqual(saved["pop3"]["listen"], [f"127.0.0.1:{pop3_port}"])  # the others untouched
        self.assertEqual(saved["listen"], [f"127.0.0.1:{smtp_port}"])
        self.assertTrue(imap_greeting(new_port).startswith(b"* OK"))


class ConnectionsPageImapTest(GuiTestCase):
    def open_page(self, w: MainWindow):
        dialog = w.open_settings("Connections")
        self.addCleanup(dialog.destroy)
        pump(dialog, 0.2)
        return dialog, dialog.pages["Connections"]

    def fits(self, dialog) -> None:
        dialog.update_idletasks()
        self.assertLessEqual(dialog.winfo_rooty() + dialog.winfo_height(), 800, "the dialog fits the screen")

    def test_the_imap_column_round_trips_and_the_server_obeys(self) -> None:
        w = self.open_main()
        old = imap_port(w)
        dialog, page = self.open_page(w)
        self.assertTrue(page.flags["imap_enabled"].get())
        self.assertFalse(page.flags["imap_plaintext"].get())
        self.assertEqual(page.vars["imap_listen"].get(), f"127.0.0.1:{old}")
        self.assertEqual((page.vars["imap_total"].get(), page.vars["imap_per_host"].get()), ("20", "10"))
        self.assertIn("Mail programs: POP3 fetches the mail, IMAP keeps it in folders", texts(page))
        shot = screenshot("settings-connections-imap")
        self.assertGreater(png_size(shot)[1], 0)
        self.fits(dialog)
        new = free_port()
        page.vars["imap_listen"].set(f"127.0.0.1:{new}")
        page.vars["imap_total"].set("30")
        page.vars["imap_per_host"].set("2")
        click(page.imap_plaintext)  # a real click on "allow"
        pump_until(dialog, lambda: page.flags["imap_plaintext"].get(), timeout=5, what="the box ticked")
        click(dialog.apply_button)
        pump_until(dialog, lambda: "Saved" in dialog.done.cget("text"), timeout=10, what="Apply")
        saved = self.settings_file(w)["imap"]
        self.assertEqual(saved, {"enabled": True, "listen": [f"127.0.0.1:{new}"], "max_connections": 30,
                                 "max_per_host": 2, "allow_plaintext": True})
        self.assertEqual(self.settings_file(w)["pop3"]["max_per_host"], 5)  # POP3's column untouched
        server = w.controller.server
        self.assertEqual(server.imap_limiter.limits, (30, 2))
        self.assertEqual(server.pop3_limiter.limits, (20, 5))
        self.assertTrue(refused(old))
        socks = [socket.create_connection(("127.0.0.1", new), timeout=10) for _ in range(3)]
        try:
            replies = [s.recv(512) for s in socks]
        finally:
            for s in socks:
                s.close()
        self.assertTrue(all(r.startswith(b"* OK") for r in replies[:2]), replies)
        self.assertTrue(replies[2].startswith(b"* BYE"), replies)  # the third from one host: refused
        pump_until(w.root, lambda: w.figure_labels["imap"].cget("text").endswith("(at most 2 per host)"),
                   timeout=5, what="the main window showing the new IMAP limits")
        self.assertEqual(w.imap_listening_label.cget("text"), f"IMAP on 127.0.0.1:{new}")

    def test_invalid_imap_values_are_refused_next_to_their_fields(self) -> None:
        w = self.open_main()
        before = w.controller.path.read_bytes()
        dialog, page = self.open_page(w)
        page.vars["imap_total"].set("101")
        page.vars["imap_per_host"].set("many")
        page.vars["imap_listen"].set("127.0.0.1")
        self.assertFalse(dialog.apply())
        pump(dialog, 0.2)
        expected = {"imap.max_connections": ["IMAP: ", "101", "10–100"],
                    "imap.max_per_host": ["IMAP: ", "'many'", "1–10"], "imap.listen": ["IMAP: ", "127.0.0.1"]}
        for key, words in expected.items():
            label = page.errors[key]
            self.assertTrue(label.winfo_ismapped(), key)
            for word in words:
                self.assertIn(word, label.text, key)
        for key in ("pop3.listen", "pop3.max_connections", "pop3.max_per_host", "listen"):
            self.assertEqual(page.errors[key].text, "", key)
        screenshot("settings-connections-imap-errors")
        self.fits(dialog)
        pop3 = page.vars["pop3_listen"].get()
        page.vars["imap_total"].set("20")
        page.vars["imap_per_host"].set("10")
        page.vars["imap_listen"].set(pop3)  # POP3's own address
        self.assertFalse(dialog.apply())
        self.assertIn("POP3 listens on already", page.errors["imap.listen"].text)
        page.vars["imap_listen"].set(f"127.0.0.1:{w.port}")  # SMTP's
        self.assertFalse(dialog.apply())
        self.assertIn("SMTP listens on already", page.errors["imap.listen"].text)
        self.assertEqual(w.controller.path.read_bytes(), before)
        self.assertEqual(w.controller.server.imap_limiter.limits, (20, 10))
        self.assertTrue(imap_greeting(imap_port(w)).startswith(b"* OK"))

    def test_an_imap_address_in_use_is_shown_under_the_imap_field(self) -> None:
        w = self.open_main()
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        before = w.controller.path.read_bytes()
        dialog, page = self.open_page(w)
        page.vars["imap_listen"].set(f"127.0.0.1:{blocker.getsockname()[1]}")
        self.assertFalse(dialog.apply())
        self.assertIn("already in use", page.errors["imap.listen"].text)
        self.assertEqual(page.errors["pop3.listen"].text, "")
        self.assertEqual(page.errors["listen"].text, "")
        self.assertEqual(w.controller.path.read_bytes(), before)
        self.assertTrue(imap_greeting(imap_port(w)).startswith(b"* OK"))  # still where it was

    def test_turning_imap_off_greys_its_column_only_and_closes_the_port(self) -> None:
        w = self.open_main()
        port = imap_port(w)
        dialog, page = self.open_page(w)
        click(page.imap_serve_box)  # a real click on "Serve IMAP"
        pump_until(dialog, lambda: not page.flags["imap_enabled"].get(), timeout=5, what="the box unticked")
        for widget in page._imap_widgets:
            self.assertIn("disabled", widget.state())
        for widget in page._pop3_widgets:
            self.assertNotIn("disabled", widget.state())
        self.assertTrue(dialog.apply())
        self.assertIs(self.settings_file(w)["imap"]["enabled"], False)
        self.assertTrue(refused(port))
        pump_until(w.root, lambda: w.figure_labels["imap"].cget("text") == "off", timeout=5,
                   what="the main window saying IMAP is off")
        self.assertEqual(w.imap_listening_label.cget("text"), "IMAP off")
        click(page.imap_serve_box)
        pump_until(dialog, lambda: "disabled" not in page.imap_listen_entry.state(), timeout=5,
                   what="the column enabled again")
        self.assertTrue(dialog.apply())
        self.assertTrue(imap_greeting(port).startswith(b"* OK"))


class StatisticsImapTest(GuiTestCase):
    def test_imap_group_counts_a_real_session(self) -> None:
        w = self.open_main()
        w.controller.accounts().add("alice@example.test", PASSWORD, w.controller.local_domains())
        stats = w.open_statistics()
        self.addCleanup(stats.close)
        titles = {child.cget("text") for column in stats.winfo_children()[0].winfo_children()
                  for child in column.winfo_children() if child.winfo_class() == "TLabelframe"}
        self.assertIn("IMAP Server", titles)
        self.assertNotIn("Other", titles)  # every counter has its place
        for key in ("imap_logins", "imap_fetched", "imap_appended", "imap_expunged"):
            self.assertEqual(stats.values[key].cget("text"), "0", key)
        client = imaplib.IMAP4("127.0.0.1", imap_port(w), timeout=10)
        try:
            self.assertRaises(imaplib.IMAP4.error, client.login, "alice@example.test", "wrong")
            client.login("alice@example.test", PASSWORD)
            for n in (1, 2):
                self.assertEqual(client.append("INBOX", None, None, message(n))[0], "OK")
            client.select("INBOX")
            self.assertEqual(client.fetch("1:2", "(RFC822)")[0], "OK")
            client.store("1", "+FLAGS", "(\\Deleted)")
            self.assertEqual(client.expunge()[0], "OK")
            client.logout()
        finally:
            client.shutdown() if client.state != "LOGOUT" else None
        want = {"imap_connections_total": "1", "imap_logins": "1", "imap_logins_failed": "1",
                "imap_appended": "2", "imap_fetched": "2", "imap_expunged": "1"}
        pump_until(stats, lambda: all(stats.values[k].cget("text") == v for k, v in want.items()), timeout=5,
                   what=f"the statistics showing {want}")
        self.assertEqual(stats.values["pop3_connections_total"].cget("text"), "0")  # POP3's apart
        stats.update_idletasks()
        self.assertLessEqual(stats.winfo_rooty() + stats.winfo_height(), 800, "the window fits the screen")
        pump(stats, 0.3)
        screenshot("statistics-imap")


class AccountsFoldersTest(GuiTestCase):
    def imap_session(self, w: MainWindow, user: str = "alice@example.test") -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", imap_port(w), timeout=10)
        self.addCleanup(lambda: client.state == "LOGOUT" or client.logout())
        client.login(user, PASSWORD)
        return client

    def sizes(self, client: imaplib.IMAP4, folder: str) -> list[int]:
        """RFC822.SIZE of each message, as the mail program sees them (EXAMINE: read-only)."""
        status, data = client.select(folder, readonly=True)
        self.assertEqual(status, "OK", data)
        if data[0] == b"0":
            return []
        status, data = client.fetch("1:*", "(RFC822.SIZE)")
        return [int(re.search(rb"RFC822\.SIZE (\d+)", d).group(1)) for d in data if d]

    def test_the_selected_accounts_folders_with_counts_and_sizes(self) -> None:
        w = self.open_main()
        store = w.controller.accounts()
        alice = store.add("alice@example.test", PASSWORD, w.controller.local_domains())
        client = self.imap_session(w)
        self.assertEqual(client.create("Archive/2024")[0], "OK")
        self.assertEqual(client.create("Projects")[0], "OK")
        for n in range(1, 4):
            client.append("INBOX", None, None, message(n, 3000 * n))
        for n in range(4, 6):
            client.append("Archive/2024", None, None, message(n, 50_000))
        # The login made Sent, Drafts, Trash and Junk (RFC 6154): every folder, in the page's order.
        names = ["INBOX", "Archive", "Archive/2024", "Drafts", "Junk", "Projects", "Sent", "Trash"]
        listed = sorted(re.search(rb'"/" "?([^"]*)"?$', line).group(1).decode() for line in client.list()[1])
        self.assertEqual(listed, sorted(names))
        expected = {name: self.sizes(client, name) for name in names}
        client.logout()
        self.assertEqual([len(v) for v in expected.values()], [3, 0, 2, 0, 0, 0, 0, 0])
        before = files_of(alice.mailbox)

        dialog = w.open_settings("Accounts")
        self.addCleanup(dialog.destroy)
        page = dialog.pages["Accounts"]
        pump(dialog, 0.3)
        self.assertEqual(page.folders_frame.cget("text"), "Folders: select an account to see them")
        self.assertEqual(page.folders.get_children(), ())
        click_row(page.tree, "alice@example.test")  # a real click on the account
        pump_until(dialog, lambda: page.folders_of == "alice@example.test", timeout=10,
                   what="alice's folders shown")
        shown = {iid: page.folders.set(iid) for iid in self.all_rows(page.folders)}
        self.assertEqual(list(shown), names)
        self.assertEqual(page.folders.parent("Archive/2024"), "Archive")  # shown under its parent
        self.assertEqual(page.folders.item("Archive/2024", "text"), "2024")
        for name, sizes in expected.items():
            self.assertEqual(shown[name]["messages"], str(len(sizes)), name)
            self.assertEqual(shown[name]["size"], human_size(sum(sizes)), name)
        self.assertEqual(page.folders.set("Projects", "size"), "0 bytes")
        total = sum(map(sum, expected.values()))
        self.assertGreater(total, 100_000)
        self.assertEqual(page.folders_frame.cget("text"),
                         f"Folders of alice@example.test: 8 folders, 5 messages, {total / 1024:.0f} KB")
        # Exact byte counts: the admin look agrees with what IMAP told the mail program.
        summary = {name: (messages, size) for name, messages, size in
                   w.controller.admin.account_folders("alice@example.test")}
        self.assertEqual(summary, {name: (len(s), sum(s)) for name, s in expected.items()})
        self.assertEqual(files_of(alice.mailbox), before, "looking changed nothing in the mailbox")
        pump(dialog, 0.3)
        screenshot("settings-accounts-folders")
        dialog.update_idletasks()
        self.assertLessEqual(dialog.winfo_rooty() + dialog.winfo_height(), 800, "the dialog fits the screen")

        click_row(page.tree, "postmaster@example.test")  # another account: its own folders
        pump_until(dialog, lambda: page.folders_of == "postmaster@example.test", timeout=10,
                   what="postmaster's folders shown")
        self.assertEqual([page.folders.set(i, "messages") for i in page.folders.get_children()], ["0"])
        self.assertEqual(page.folders.get_children(), ("INBOX",))
        self.assertFalse((store.mailbox_root / "example.test" / "postmaster" / "ismail-uidlist").exists())

    def test_new_mail_shows_when_the_page_is_shown_again(self) -> None:
        w = self.open_main()
        store = w.controller.accounts()
        store.add("alice@example.test", PASSWORD, w.controller.local_domains())
        dialog = w.open_settings("Accounts")
        self.addCleanup(dialog.destroy)
        page = dialog.pages["Accounts"]
        page.tree.selection_set("alice@example.test")
        pump_until(dialog, lambda: page.folders_of == "alice@example.test", timeout=10, what="alice's folders")
        self.assertEqual(page.folders.set("INBOX", "messages"), "0")
        client = self.imap_session(w)
        client.append("INBOX", None, None, message(1))
        client.logout()
        dialog.select("Connections")
        pump(dialog, 0.2)
        dialog.select("Accounts")
        pump_until(dialog, lambda: page.folders.set("INBOX", "messages") == "1", timeout=10,
                   what="the new message counted when the page shows again")
        self.assertEqual(page.folders_frame.cget("text"), "Folders of alice@example.test: 5 folders, "
                         f"1 message, {len(message(1))} bytes")  # INBOX and the four the login made

    @staticmethod
    def all_rows(tree, parent: str = "") -> list[str]:
        rows = []
        for iid in tree.get_children(parent):
            rows.append(iid)
            rows += AccountsFoldersTest.all_rows(tree, iid)
        return rows


if __name__ == "__main__":
    unittest.main()
