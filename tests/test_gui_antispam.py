"""The Anti-spam tab, the white and black lists on the Access tab, the content-rule editor and
the anti-spam counters in the Statistics window, with real widgets on the virtual screen.

As in test_gui, each test has a data folder of its own whose SmartHost is a closed loopback
port, and the DNS-based checks are off (make_data_dir), so no test asks the machine's
resolver.  Fields are filled as a person would; the outcome is checked in the Settings the
page stores, in ismail.json after Apply, and in what the dialog shows next to each field.
"""
from __future__ import annotations

import unittest

from gui.antispampage import RuleEditor
from ismail.config import Settings
from ismail.stats import ANTISPAM_COUNTERS
from tests.gui_support import SCREEN, GuiTestCase, png_size, pump, screenshot

RULE = {"name": "pills", "where": "subject", "match": "contains", "pattern": "cheap pills",
        "action": "junk", "enabled": True}


class AntispamPageTest(GuiTestCase):
    def open_page(self, page: str = "Anti-spam", **extra: object):
        w = self.open_main(start=False, **extra)
        dialog = w.open_settings(page)
        self.addCleanup(dialog.destroy)
        pump(dialog, 0.1)
        return w, dialog, dialog.pages["Anti-spam"]

    def test_the_page_shows_the_settings_and_stores_what_is_changed(self) -> None:
        w, dialog, page = self.open_page(antispam={
            "rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off", "dnsbl": ["bl.example.test"],
            "connection_rate": 45, "rules": [RULE]})
        self.assertEqual(dialog.notebook.select(), str(page))
        self.assertEqual(page.actions["spf"].get(), "off")
        self.assertEqual(page.actions["dnsbl_action"].get(), "reject")  # the default
        self.assertEqual(page.vars["connection_rate"].get(), "45")
        self.assertEqual(page.zones.get("1.0", "end-1c"), "bl.example.test")
        self.assertFalse(page.greylisting.get())
        self.assertIn("disabled", page.spins["greylist_delay_seconds"].state())
        self.assertEqual(page.tree.item("0", "values")[1:], ("pills", "Subject", "contains", "cheap pills", "Junk"))

        page.actions["spf"].set("reject")
        page.actions["dmarc"].set("tag")
        page.zones.insert("end", "\nzen.example.test=127.0.0.2,127.0.0.4-127.0.0.7")
        page.greylist_box.invoke()
        self.assertNotIn("disabled", page.spins["greylist_delay_seconds"].state())
        for name, value in (("greylist_delay_seconds", "600"), ("connection_rate", "30"),
                            ("greeting_pause_ms", "2000"), ("tls_handshake_seconds", "20"),
                            ("max_unknown_recipients", "5")):
            page.vars[name].set(value)
        stored = Settings(server_name="mx.example.test")
        problems: list = []
        page.store(stored, problems)
        self.assertEqual(problems, [])
        spam = stored.antispam
        self.assertEqual((spam.rdns, spam.spf, spam.dkim, spam.dmarc, spam.dnsbl_action),
                         ("off", "reject", "off", "tag", "reject"))
        self.assertEqual(spam.dnsbl, ["bl.example.test", "zen.example.test=127.0.0.2,127.0.0.4-127.0.0.7"])
        self.assertEqual((spam.greylisting, spam.greylist_delay_seconds, spam.connection_rate,
                          spam.greeting_pause_ms, spam.tls_handshake_seconds, spam.max_unknown_recipients),
                         (True, 600, 30, 2000, 20, 5))
        self.assertEqual(spam.rules, [RULE])

        self.assertTrue(dialog.apply())
        saved = self.settings_file(w)["antispam"]
        self.assertEqual(saved["spf"], "reject")
        self.assertEqual(saved["greylist_delay_seconds"], 600)
        self.assertEqual(saved["dnsbl"][1], "zen.example.test=127.0.0.2,127.0.0.4-127.0.0.7")
        self.assertEqual(saved["rules"], [RULE])
        self.assertEqual(w.controller.settings.antispam.greeting_pause_ms, 2000)

    def test_white_and_black_lists_on_the_access_page(self) -> None:
        w, dialog, _ = self.open_page("Access", access={"whitelist": ["192.0.2.0/24"]})
        page = dialog.pages["Access"]
        self.assertEqual(page.whitelist.get("1.0", "end-1c"), "192.0.2.0/24")
        self.assertEqual(page.blacklist.get("1.0", "end-1c"), "")
        page.whitelist.insert("end", "\nfriend@example.org\n*.partner.example")
        page.blacklist.insert("1.0", "*@spam.example\n198.51.100.7")
        stored = Settings(server_name="mx.example.test")
        page.store(stored, [])
        self.assertEqual(stored.access.whitelist, ["192.0.2.0/24", "friend@example.org", "*.partner.example"])
        self.assertEqual(stored.access.blacklist, ["*@spam.example", "198.51.100.7"])
        self.assertTrue(dialog.apply())
        saved = self.settings_file(w)["access"]
        self.assertEqual(saved["whitelist"], ["192.0.2.0/24", "friend@example.org", "*.partner.example"])
        self.assertEqual(saved["blacklist"], ["*@spam.example", "198.51.100.7"])

    def test_bad_values_are_shown_next_to_their_fields_and_nothing_is_saved(self) -> None:
        w, dialog, page = self.open_page()
        before = w.controller.path.read_bytes()
        page.zones.insert("1.0", "zen.spamhaus.org\nnot a zone")
        page.vars["greeting_pause_ms"].set("99999")
        page.vars["connection_rate"].set("lots")
        page.rules = [dict(RULE), {**RULE, "name": "bad regex", "match": "regex", "pattern": "(unclosed"}]
        page._show_rules()
        access = dialog.pages["Access"]
        access.whitelist.insert("1.0", "300.1.1.1/8")
        access.blacklist.insert("1.0", "bob@@example.com")
        self.assertFalse(dialog.apply_button.invoke())
        pump(dialog, 0.2)
        self.assertEqual(dialog.notebook.select(), str(access))  # the first page with a problem
        self.assertIn("300.1.1.1/8", access.errors["access.whitelist"].text)
        self.assertIn("bob@@example.com", access.errors["access.blacklist"].text)
        self.assertEqual(access.errors["trusted_networks"].text, "")
        dialog.select("Anti-spam")
        pump(dialog, 0.2)
        expected = {"antispam.dnsbl": ["not"], "antispam.greeting_pause_ms": ["99999", "0–30000"],
                    "antispam.connection_rate": ["'lots'", "0–100000"],
                    "antispam.rules": ["Rule 2 (bad regex)"]}
        for key, words in expected.items():
            label = page.errors[key]
            self.assertTrue(label.winfo_ismapped(), key)
            for word in words:
                self.assertIn(word, label.text, key)
        self.assertNotIn("Rule 1", page.errors["antispam.rules"].text)
        self.assertIn("bad", page.tree.item("1", "tags"))  # the rule's row is marked
        self.assertNotIn("bad", page.tree.item("0", "tags"))
        self.assertEqual(page.errors["antispam.spf"].text, "")
        screenshot("settings-antispam-errors")
        self.assertEqual(w.controller.path.read_bytes(), before)

        page.zones.delete("1.0", "end")
        page.vars["greeting_pause_ms"].set("0")
        page.vars["connection_rate"].set("60")
        page.rules[1]["pattern"] = "(closed)"
        access.whitelist.delete("1.0", "end")
        access.blacklist.delete("1.0", "end")
        self.assertTrue(dialog.apply_button.invoke())
        self.assertEqual(page.errors["antispam.rules"].text, "")
        self.assertEqual(page.tree.item("1", "tags"), "")
        self.assertEqual(self.settings_file(w)["antispam"]["rules"][1]["pattern"], "(closed)")

    def test_rule_editor_adds_edits_reorders_and_removes(self) -> None:
        _, dialog, page = self.open_page()
        self.assertEqual(page.tree.get_children(), ())
        for button in (page.edit_button, page.remove_button, page.up_button, page.down_button):
            self.assertIn("disabled", button.state())

        editor = page.add_rule()
        self.assertIsInstance(editor, RuleEditor)
        self.assertIn("disabled", editor.folder_entry.state())
        editor.name.set("pills")
        editor.ok_button.invoke()  # no pattern
        self.assertTrue(editor.winfo_exists())
        self.assertIn("text to look for", editor.errors["pattern"].text)
        editor.match.set("matches the regular expression")
        editor.pattern.set("cheap (pills")
        editor.ok_button.invoke()
        self.assertTrue(editor.winfo_exists())
        self.assertIn("regular expression", editor.errors["pattern"].text)
        pump(editor, 0.1)
        self.assertTrue(editor.errors["pattern"].winfo_ismapped())
        editor.pattern.set("(pills+)+")  # compiles, but ismail.config refuses it: it could run for ages
        editor.ok_button.invoke()
        self.assertTrue(editor.winfo_exists())
        self.assertIn("Refused", editor.errors["pattern"].text)
        self.assertEqual(editor.error.text, "")
        editor.pattern.set(r"cheap\s+pills")
        editor.ok_button.invoke()
        self.assertFalse(editor.winfo_exists())
        self.assertEqual(page.rules, [{"name": "pills", "where": "subject", "match": "regex",
                                       "pattern": r"cheap\s+pills", "action": "junk", "enabled": True}])
        self.assertEqual(page.tree.selection(), ("0",))

        editor = page.add_rule()
        editor.name.set("newsletters")
        editor.where.set("One header")
        editor.where_box.event_generate("<<ComboboxSelected>>")
        self.assertNotIn("disabled", editor.header_entry.state())
        editor.pattern.set("bulk")
        editor.action.set("Deliver into a folder")
        editor.action_box.event_generate("<<ComboboxSelected>>")
        self.assertNotIn("disabled", editor.folder_entry.state())
        editor.ok_button.invoke()  # no header name, no folder
        self.assertIn("header's name", editor.errors["header"].text)
        self.assertIn("folder's name", editor.errors["folder"].text)
        editor.header.set("Precedence")
        editor.folder.set("Newsletters")
        editor.ok_button.invoke()
        self.assertFalse(editor.winfo_exists())
        self.assertEqual(page.rules[1], {"name": "newsletters", "where": "header:Precedence",
                                         "match": "contains", "pattern": "bulk", "action": "folder",
                                         "folder": "Newsletters", "enabled": True})
        self.assertEqual(page.tree.item("1", "values")[2:], ("header Precedence", "contains", "bulk",
                                                              "folder Newsletters"))
        self.assertEqual(page.tree.selection(), ("1",))
        self.assertIn("disabled", page.down_button.state())
        self.assertNotIn("disabled", page.up_button.state())

        page.up_button.invoke()  # newsletters first now
        self.assertEqual([r["name"] for r in page.rules], ["newsletters", "pills"])
        self.assertEqual(page.tree.selection(), ("0",))
        self.assertEqual(page.tree.item("0", "values")[1], "newsletters")
        self.assertIn("disabled", page.up_button.state())
        page.down_button.invoke()
        self.assertEqual([r["name"] for r in page.rules], ["pills", "newsletters"])

        page.tree.selection_set("0")
        pump(dialog, 0.1)
        editor = page.edit_rule()
        self.assertEqual(editor.match.get(), "matches the regular expression")
        self.assertEqual(editor.pattern.get(), r"cheap\s+pills")
        editor.enabled.set(False)
        editor.action.set("Refuse the message")
        editor.ok_button.invoke()
        self.assertEqual(page.rules[0]["action"], "reject")
        self.assertIs(page.rules[0]["enabled"], False)
        self.assertEqual(page.tree.item("0", "values")[0], "")  # not in use: no tick
        editor = page.edit_rule()
        editor.pattern.set("changed")
        editor.cancel_button.invoke()
        self.assertEqual(page.rules[0]["pattern"], r"cheap\s+pills")

        page.remove_button.invoke()
        self.assertEqual([r["name"] for r in page.rules], ["newsletters"])
        self.assertEqual(page.tree.selection(), ("0",))
        page.remove_button.invoke()
        self.assertEqual(page.rules, [])
        self.assertEqual(page.tree.get_children(), ())
        self.assertIn("disabled", page.remove_button.state())

    def test_the_dialog_with_the_new_tab_fits_the_screen(self) -> None:
        _, dialog, page = self.open_page()
        page.rules = [dict(RULE, name=f"rule {i}") for i in range(6)]
        page._show_rules()
        pump(dialog, 0.4)
        dialog.update_idletasks()
        self.assertLessEqual(dialog.winfo_height(), SCREEN[1] - 60)  # room for the title bar
        self.assertLessEqual(dialog.winfo_width(), SCREEN[0])
        shot = screenshot("settings-anti-spam")
        self.assertEqual(png_size(shot), SCREEN)
        self.assertIn("Anti-spam", [dialog.notebook.tab(t, "text").strip() for t in dialog.notebook.tabs()])


class AntispamStatisticsTest(GuiTestCase):
    def test_the_statistics_window_shows_the_anti_spam_counters(self) -> None:
        w = self.open_main()
        w.controller.server.stats.add("antispam_spf_tagged", 3)
        w.controller.server.stats.add("antispam_greylisted", 1234)
        stats = w.open_statistics()
        self.addCleanup(stats.destroy)
        pump(stats, 0.2)
        for name in ANTISPAM_COUNTERS:
            self.assertIn(name, stats.values, name)
            self.assertTrue(stats.values[name].winfo_ismapped(), name)
        self.assertEqual(stats.values["antispam_spf_tagged"].cget("text"), "3")
        self.assertEqual(stats.values["antispam_greylisted"].cget("text"), "1,234")
        group = stats.values["antispam_spf_tagged"].master
        self.assertEqual(group.cget("text"), "Anti-spam (today)")
        labels = [child.cget("text") for child in group.winfo_children()
                  if child not in stats.values.values()]
        self.assertEqual(len(labels), len(ANTISPAM_COUNTERS))
        for name in ANTISPAM_COUNTERS:  # all in their group, none under "Other"
            self.assertIs(stats.values[name].master, group, name)
        stats.update_idletasks()
        self.assertLessEqual(stats.winfo_height(), SCREEN[1] - 60)
        screenshot("statistics-anti-spam")


if __name__ == "__main__":
    unittest.main()
