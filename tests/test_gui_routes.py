"""Settings > Routes (routes and relay domains), with real widgets on the virtual screen.

As a person would: Add, or select a row and Edit, fill the dialog, press OK; then the test
reads routes.json and what the lists show.  A refused entry shows the store's own sentence
in the dialog and leaves routes.json as it was.  With the server running, the page edits
the server's own table, so the next delivery already follows the new route.
"""
from __future__ import annotations

import json
import unittest

from tests.gui_support import SCREEN, png_size, pump, screenshot
from tests.test_gui_addresses import AddressTestCase, file_bytes


class RoutesPageTest(AddressTestCase):
    def routes_file(self, w) -> dict:
        return self.data(w, "routes.json")

    def test_a_route_added_edited_and_removed_counts_at_once(self) -> None:
        w, dialog, page = self.open_page("Routes", start=True)
        live = w.controller.server.routes
        form = self.press(page.routes.add_button, page)
        self.assertEqual((form.values()["port"], form.values()["tls"]), ("25", "STARTTLS when offered"))
        form.set("domain", "Corp.Example")
        form.set("host", "exchange.corp.example")
        form.set("port", "587")
        form.set("tls", "STARTTLS (required)")
        form.set("username", "relay")
        form.set("password", "s3cret")
        form.ok_button.invoke()
        self.assertFalse(form.winfo_exists())
        self.assertEqual(self.routes_file(w)["routes"], {"corp.example": {
            "host": "exchange.corp.example", "port": 587, "tls": "starttls", "username": "relay",
            "password": "s3cret"}})  # elsewhere than Windows the file's permissions protect it
        self.assertEqual(page.routes.row("corp.example"),
                         ["corp.example", "exchange.corp.example:587", "STARTTLS (required)", "relay", "***"])
        self.assertEqual(live.route_for("corp.example").host, "exchange.corp.example")

        self.select(page.routes, "corp.example")
        form = self.press(page.routes.edit_button, page)
        self.assertIn("disabled", form.widgets["domain"].state())
        self.assertEqual(form.values()["password"], "***")  # never the password itself
        form.set("port", "2526")
        form.ok_button.invoke()
        saved = self.routes_file(w)["routes"]["corp.example"]
        self.assertEqual((saved["port"], saved["password"]), (2526, "s3cret"))  # kept
        self.assertEqual((live.route_for("corp.example").port, live.route_for("corp.example").password),
                         (2526, "s3cret"))
        pump(dialog, 0.3)
        screenshot("settings-routes")

        form = self.press(page.routes.edit_button, page)
        form.set("password", "n3w")
        form.ok_button.invoke()
        self.assertEqual(self.routes_file(w)["routes"]["corp.example"]["password"], "n3w")
        form = self.press(page.routes.edit_button, page)
        form.set("username", "")
        form.set("password", "")
        form.set("tls", "TLS from the start (port 465)")
        form.ok_button.invoke()
        saved = self.routes_file(w)["routes"]["corp.example"]
        self.assertEqual((saved["username"], saved["password"], saved["tls"]), ("", "", "tls"))
        self.assertEqual(page.routes.row("corp.example")[3:], ["", ""])

        page.routes.remove_button.invoke()
        self.assertEqual(self.routes_file(w)["routes"], {})
        self.assertEqual(page.routes.tree.get_children(), ())
        self.assertIsNone(live.route_for("corp.example"))

    def test_backup_mx_hosts_and_tls_domains_are_saved_with_apply(self) -> None:
        w, dialog, page = self.open_page("Routes")
        self.assertEqual((page.etrn_hosts.get(), page.require_tls.get()), ("", ""))
        page.etrn_hosts.set("backup.example.test:2525, 127.0.0.12")
        page.require_tls.set("Bank.Example partner.example")
        self.assertTrue(dialog.apply())
        saved = self.data(w, "ismail.json")["outgoing"]
        self.assertEqual(saved["etrn_hosts"], ["backup.example.test:2525", "127.0.0.12"])
        self.assertEqual(saved["require_tls_domains"], ["bank.example", "partner.example"])
        self.assertEqual(w.controller.editable_settings().outgoing.etrn_hosts,
                         ["backup.example.test:2525", "127.0.0.12"])
        # A bad entry is named under its field, and nothing is saved.
        path = w.controller.data_dir / "ismail.json"
        before = path.read_bytes()
        page.etrn_hosts.set("backup.example.test:99999")
        self.assertFalse(dialog.apply())
        error = page.errors["outgoing.etrn_hosts"]
        self.assertTrue(error.winfo_ismapped() or error.cget("text"))
        self.assertIn("99999", error.cget("text"))
        self.assertIn("1 to 65535", error.cget("text"))
        self.assertEqual(path.read_bytes(), before)
        pump(dialog, 0.2)
        screenshot("settings-routes-outgoing")
        # A second window shows what was saved.
        dialog.destroy()
        again = w.open_settings("Routes")
        self.addCleanup(again.destroy)
        pump(again, 0.1)
        self.assertEqual(again.pages["Routes"].etrn_hosts.get(), "backup.example.test:2525, 127.0.0.12")
        self.assertEqual(again.pages["Routes"].require_tls.get(), "bank.example, partner.example")

    def test_refused_routes_show_the_stores_words_and_change_nothing(self) -> None:
        w, _, page = self.open_page("Routes")
        path = w.controller.data_dir / "routes.json"
        for fields, words in (
                ({"domain": "example.test", "host": "mail.example.net"},
                 "route example.test: example.test is a local domain"),
                ({"domain": "corp.example", "host": "127.0.0.1", "port": str(w.port)},
                 f"route corp.example: 127.0.0.1:{w.port} would deliver to ISMail itself"),
                ({"domain": "corp.example", "host": "mail.example.net", "username": "relay"},
                 "route corp.example: a username without a password is not allowed"),
                ({"domain": "corp.example", "host": "not a host"}, "host 'not a host' is not valid"),
                ({"domain": "corp.example", "host": "mail.example.net", "port": "smtp"},
                 "The port must be a whole number, not 'smtp'.")):
            form = self.press(page.routes.add_button, page)
            for key, value in fields.items():
                form.set(key, value)
            self.refused(form, words, path, None)
        self.assertEqual(page.routes.tree.get_children(), ())

        form = self.press(page.routes.add_button, page)
        form.set("domain", "corp.example")
        form.set("host", "mail.example.net")
        form.ok_button.invoke()
        before = file_bytes(path)
        self.select(page.routes, "corp.example")
        form = self.press(page.routes.edit_button, page)
        form.set("port", "70000")
        self.refused(form, "route corp.example: port 70000 is out of range (allowed 1-65535)", path, before)

    def test_relay_domains(self) -> None:
        w, _, page = self.open_page("Routes")
        path = w.controller.data_dir / "routes.json"
        form = self.press(page.relay_list.add_button, page)
        form.set("domain", "backup.example")
        form.set("recipients", "ann@backup.example\nBob@Backup.Example\n")
        form.set("lifetime", "72")
        form.ok_button.invoke()
        self.assertFalse(form.winfo_exists())
        self.assertEqual(self.routes_file(w)["relay_domains"], {"backup.example": {
            "recipients": ["ann@backup.example", "bob@backup.example"], "lifetime_hours": 72}})
        self.assertEqual(page.relay_list.row("backup.example"),
                         ["backup.example", "72 hours", "ann@backup.example, bob@backup.example"])

        before = file_bytes(path)
        self.select(page.relay_list, "backup.example")
        form = self.press(page.relay_list.edit_button, page)
        self.assertEqual(form.values()["recipients"], "ann@backup.example\nbob@backup.example")
        form.set("recipients", "ann@backup.example\ncarol@other.example")
        self.refused(form, "relay domain backup.example: recipients must be addresses of backup.example; "
                     "not carol@other.example", path, before)
        form = self.press(page.relay_list.edit_button, page)
        form.set("lifetime", "a week")
        self.refused(form, "How long mail may wait must be a whole number, not 'a week'.", path, before)
        form = self.press(page.relay_list.add_button, page)
        form.set("domain", "example.test")
        self.refused(form, "relay domain example.test: example.test is a local domain", path, before)

        form = self.press(page.relay_list.edit_button, page)
        form.set("recipients", "")
        form.set("lifetime", "")
        form.ok_button.invoke()
        self.assertEqual(self.routes_file(w)["relay_domains"], {"backup.example": {
            "recipients": [], "lifetime_hours": None}})
        self.assertEqual(page.relay_list.row("backup.example"), ["backup.example", "as other mail", "any"])
        page.relay_list.remove_button.invoke()
        self.assertEqual(self.routes_file(w)["relay_domains"], {})
        self.assertEqual(page.relay_list.tree.get_children(), ())

    def test_problems_of_the_file_are_shown_under_the_lists(self) -> None:
        w = self.open_main(start=False, additional_domains=["example.net"])
        (w.controller.data_dir / "routes.json").write_text(json.dumps({"version": 1, "routes": {
            "example.net": {"host": "mail.example.org", "port": 25, "tls": "starttls-optional",
                            "username": "", "password": ""}}}))
        dialog = w.open_settings("Routes")
        self.addCleanup(dialog.destroy)
        page = dialog.pages["Routes"]
        self.assertIn("Route example.net: example.net is now a local domain", page.problems.text)
        self.assertEqual(page.routes.row("example.net")[1], "mail.example.org:25")

    def test_the_dialog_with_the_new_tabs_fits_the_screen(self) -> None:
        w = self.open_main(start=False)
        dialog = w.open_settings("Routes")
        self.addCleanup(dialog.destroy)
        tabs = [dialog.notebook.tab(t, "text").strip() for t in dialog.notebook.tabs()]
        self.assertEqual(tabs[4:7], ["Accounts", "Addresses", "Routes"])
        for name in ("Addresses", "Routes"):
            dialog.select(name)
            pump(dialog, 0.3)
            dialog.update_idletasks()
            self.assertLessEqual(dialog.winfo_height(), SCREEN[1] - 60, name)  # room for the title bar
            self.assertLessEqual(dialog.winfo_width(), SCREEN[0], name)
            self.assertEqual(png_size(screenshot(f"settings-{name.lower()}-empty")), SCREEN)


if __name__ == "__main__":
    unittest.main()
