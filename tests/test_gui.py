"""The window, on a virtual screen, with a real MailServer on loopback.

Each test opens its own main window (a Toplevel) with its own data folder and server;
the SmartHost is a closed loopback port, so nothing can ever leave the machine.  Fields
are filled and buttons pressed as a person would (one test does it through the X server
with xdotool), and the outcome is checked where it matters: the settings file, the
running server, and what the window says.
"""
from __future__ import annotations

import shutil
import socket
import unittest
from pathlib import Path

from tests.gui_support import (SCREEN, GuiTestCase, click, greetings, make_data_dir, png_size, pump,
                               pump_until, screenshot, xdotool)
from tests.support import free_port



class MainWindowTest(GuiTestCase):
    def test_running_state_figures_and_activity(self) -> None:
        w = self.open_main()
        self.assertEqual(w.state, "running")
        self.assertEqual(w.state_label.cget("text"), "Running")
        self.assertIn(f"127.0.0.1:{w.port}", w.listening_label.cget("text"))
        self.assertFalse(w.problem_frame.winfo_ismapped())
        self.assertEqual(w.figure_labels["incoming"].cget("text"), "0 / 20  (at most 10 per host)")
        s1 = socket.create_connection(("127.0.0.1", w.port), timeout=10)
        s2 = socket.create_connection(("127.0.0.1", w.port), timeout=10)
        try:
            self.assertTrue(s1.recv(100).startswith(b"220") and s2.recv(100).startswith(b"220"))
            pump_until(w.root, lambda: w.figure_labels["incoming"].cget("text").startswith("2 / 20"),
                       timeout=5, what="the incoming figure showing 2 connections")
        finally:
            s1.close()
            s2.close()
        pump_until(w.root, lambda: w.figure_labels["incoming"].cget("text").startswith("0 / 20"), timeout=5,
                   what="the figure going back to 0")
        self.assertEqual(w.figure_labels["outgoing"].cget("text"), "0 / 2")
        pump_until(w.root, lambda: "serving SMTP" in w.activity.get("1.0", "end"), timeout=5,
                   what="the start showing in the activity pane")

    def test_stop_and_start_buttons(self) -> None:
        w = self.open_main()
        w.stop_button.invoke()
        pump_until(w.root, lambda: w.state == "stopped", what="stopping")
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", w.port), timeout=2).close()
        self.assertIn("disabled", w.stop_button.state())
        w.start_button.invoke()
        pump_until(w.root, lambda: w.state == "running", what="starting again")
        self.assertTrue(greetings(w.port, 1)[0].startswith(b"220"))

    def test_activity_pane_keeps_the_last_500_lines(self) -> None:
        import logging
        w = self.open_main(start=False)
        for i in range(700):
            logging.getLogger("ismail.test").info("line %d", i)
        w.drain_activity()
        text = w.activity.get("1.0", "end-1c").splitlines()
        self.assertLessEqual(len(text), 501)
        self.assertTrue(text[-1].endswith("line 699"), text[-1])
        self.assertNotIn("line 100", "\n".join(text))

    def test_closing_the_window_stops_the_server_and_says_so(self) -> None:
        w = self.open_main()
        idle = socket.create_connection(("127.0.0.1", w.port), timeout=10)
        self.addCleanup(idle.close)
        self.assertTrue(idle.recv(100).startswith(b"220"))
        w.close()
        self.assertEqual(w.state_label.cget("text"), "Stopping…")
        self.assertIn("stopping the SMTP server", w.listening_label.cget("text"))
        top = w.root
        pump_until(self.root, lambda: not top.winfo_exists(), timeout=30, what="the window closing")
        self.assertFalse(w.controller.running)
        self.assertIn(b"421", idle.recv(200))  # the idle session was told, not dropped
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", w.port), timeout=2).close()

    def test_closing_while_starting_or_stopping_finishes_that_first(self) -> None:
        for first in ("start", "stop"):
            w = self.open_main(start=first == "stop")
            top = w.root
            if first == "start":
                w.start_server()
            else:
                w.stop_server()
            w.close()  # at once, before the job in the background has finished
            pump_until(self.root, lambda: not top.winfo_exists(), timeout=30, what=f"closing during {first}")
            self.assertFalse(w.controller.running, first)
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", w.port), timeout=2).close()

    def test_start_failure_is_explained_and_the_port_can_be_changed(self) -> None:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        taken = blocker.getsockname()[1]
        data = make_data_dir(taken)
        self.addCleanup(shutil.rmtree, data, True)
        w = self.open_main(data=data)
        self.assertEqual(w.state, "stopped")
        text = w.problem_label.cget("text")
        self.assertIn(f"127.0.0.1:{taken}", text)
        self.assertIn("already in use", text)
        self.assertNotIn("Traceback", text)
        self.assertTrue(w.change_port_button.winfo_ismapped())
        self.assertTrue(w.fix_settings_button.winfo_ismapped())
        screenshot("start-failure")
        query = w.change_port()
        query.vars[0].set("abc")
        query.ok_button.invoke()
        self.assertIn("1 to 65535", query.error.text)
        new_port = free_port()
        query.vars[0].set(str(new_port))
        query.ok_button.invoke()
        pump_until(w.root, lambda: w.state == "running", what="the start on the new port")
        self.assertEqual(self.settings_file(w)["listen"], [f"127.0.0.1:{new_port}"])
        self.assertFalse(w.problem_frame.winfo_ismapped())
        self.assertTrue(greetings(new_port, 1)[0].startswith(b"220"))

    def test_invalid_settings_file_is_explained_and_fixed_in_the_dialog(self) -> None:
        port = free_port()
        data = make_data_dir(port, incoming={"max_connections": 500, "max_per_host": 5})
        self.addCleanup(shutil.rmtree, data, True)
        w = self.open_main(data=data)
        self.assertEqual(w.state, "stopped")
        self.assertIn("incoming.max_connections", w.problem_label.cget("text"))
        self.assertIn("10–100", w.problem_label.cget("text"))
        self.assertFalse(w.change_port_button.winfo_ismapped())
        dialog = w.open_settings()
        self.addCleanup(dialog.destroy)
        pump(dialog, 0.2)
        page = dialog.pages["Connections"]
        self.assertEqual(dialog.notebook.select(), str(page))  # opened where the problem is
        self.assertIn("allowed 10–100", page.errors["incoming.max_connections"].text)
        self.assertEqual(page.vars["in_total"].get(), "500")  # the user's value, to correct
        page.vars["in_total"].set("50")
        dialog.ok_button.invoke()
        pump_until(w.root, lambda: w.state == "running", what="the start after the fix")
        self.assertEqual(self.settings_file(w)["incoming"]["max_connections"], 50)
        self.assertEqual(w.controller.server.limiter.limits, (50, 5))


class SettingsDialogTest(GuiTestCase):
    def test_apply_saves_and_the_running_server_obeys_the_new_per_host_limit(self) -> None:
        w = self.open_main()
        server = w.controller.server
        before = greetings(w.port, 6)
        self.assertTrue(all(r.startswith(b"220") for r in before), before)  # 10 per host: all six get in
        pump_until(w.root, lambda: server.stats.get("connections_current") == 0, what="sessions ending")
        dialog = w.open_settings("Connections")
        self.addCleanup(dialog.destroy)
        dialog.pages["Connections"].vars["in_per_host"].set("5")
        dialog.apply_button.invoke()
        self.assertEqual(dialog.done.cget("text"), "Saved; the new settings are in force.")
        self.assertEqual(self.settings_file(w)["incoming"]["max_per_host"], 5)
        self.assertEqual(server.limiter.limits, (20, 5))
        after = greetings(w.port, 6)
        self.assertTrue(all(r.startswith(b"220") for r in after[:5]), after)
        self.assertTrue(after[5].startswith(b"421"), after[5])
        pump_until(w.root, lambda: w.figure_labels["incoming"].cget("text").endswith("(at most 5 per host)"),
                   timeout=5, what="the main window showing the new limit")

    def test_invalid_values_are_refused_next_to_their_fields(self) -> None:
        w = self.open_main()
        before = w.controller.path.read_bytes()
        dialog = w.open_settings("Connections")
        self.addCleanup(dialog.destroy)
        page = dialog.pages["Connections"]
        page.vars["in_total"].set("500")
        page.vars["sh_port"].set("70000")
        page.vars["in_per_host"].set("0")
        page.vars["out_max"].set("many")
        self.assertFalse(dialog.apply_button.invoke())
        pump(dialog, 0.2)
        expected = {"incoming.max_connections": ["500", "10–100"], "smarthost.port": ["70000", "1–65535"],
                    "incoming.max_per_host": ["0", "1–10"], "outgoing.max_connections": ["'many'", "1–20"]}
        for key, words in expected.items():
            label = page.errors[key]
            self.assertTrue(label.winfo_ismapped(), key)
            for word in words:
                self.assertIn(word, label.text, key)
        self.assertEqual(page.errors["listen"].text, "")
        self.assertEqual(w.controller.path.read_bytes(), before)
        self.assertEqual(w.controller.server.limiter.limits, (20, 10))
        self.assertEqual(dialog.done.cget("text"), "")
        screenshot("settings-errors")
        dialog.ok_button.invoke()  # OK with errors: the dialog stays open, nothing saved
        self.assertTrue(dialog.winfo_exists())
        self.assertEqual(w.controller.path.read_bytes(), before)
        for var, value in (("in_total", "20"), ("sh_port", "9"), ("in_per_host", "10"), ("out_max", "2")):
            page.vars[var].set(value)
        self.assertTrue(dialog.apply_button.invoke())
        self.assertEqual(page.errors["incoming.max_connections"].text, "")

    def test_errors_on_another_page_bring_it_forward(self) -> None:
        w = self.open_main()
        dialog = w.open_settings("Connections")
        self.addCleanup(dialog.destroy)
        dialog.pages["Domain"].primary.set("not a domain!")
        dialog.pages["Access"].trusted.insert("end", "\n10.0.0.0/33")
        self.assertFalse(dialog.apply())
        self.assertEqual(dialog.notebook.select(), str(dialog.pages["Domain"]))
        self.assertIn("not a valid domain name", dialog.pages["Domain"].errors["primary_domain"].text)
        self.assertIn("10.0.0.0/33", dialog.pages["Access"].errors["trusted_networks"].text)

    def test_a_listen_address_that_cannot_be_opened_changes_nothing(self) -> None:
        w = self.open_main()
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        before = w.controller.path.read_bytes()
        dialog = w.open_settings("Connections")
        self.addCleanup(dialog.destroy)
        dialog.pages["Connections"].vars["listen"].set(f"127.0.0.1:{blocker.getsockname()[1]}")
        self.assertFalse(dialog.apply())
        self.assertIn("already in use", dialog.pages["Connections"].errors["listen"].text)
        self.assertEqual(w.controller.path.read_bytes(), before)
        self.assertTrue(greetings(w.port, 1)[0].startswith(b"220"))  # still serving where it was

    def test_host_and_port_typed_together_in_the_smarthost_field(self) -> None:
        w = self.open_main()
        dialog = w.open_settings("Connections")
        self.addCleanup(dialog.destroy)
        page = dialog.pages["Connections"]
        page.vars["sh_host"].set("127.0.0.1:2525")
        self.assertTrue(dialog.apply())
        self.assertEqual((page.vars["sh_host"].get(), page.vars["sh_port"].get()), ("127.0.0.1", "2525"))
        saved = self.settings_file(w)["smarthost"]
        self.assertEqual((saved["host"], saved["port"]), ("127.0.0.1", 2525))
        page.vars["sh_host"].set("127.0.0.1:smtp")
        self.assertFalse(dialog.apply())
        self.assertIn("must be a port number", page.errors["smarthost.host"].text)

    def test_a_person_types_a_value_and_clicks_apply(self) -> None:
        w = self.open_main()
        dialog = w.open_settings("Connections")
        self.addCleanup(dialog.destroy)
        pump(dialog, 0.3)
        box = dialog.pages["Connections"].size_box
        click(box, repeat=3)  # triple click: the whole value is selected, typing replaces it
        pump(dialog, 0.2)
        xdotool("type", "--delay", "60", "75")
        pump_until(dialog, lambda: dialog.pages["Connections"].vars["size"].get() == "75", timeout=5,
                   what="the typed value reaching the field")
        click(dialog.apply_button)
        pump_until(dialog, lambda: self.settings_file(w)["max_message_size_mb"] == 75, timeout=5,
                   what="the click on Apply saving the file")
        self.assertEqual(w.controller.server.settings.max_message_size_mb, 75)
        with socket.create_connection(("127.0.0.1", w.port), timeout=10) as s:
            s.recv(200)
            s.sendall(b"EHLO client.example.test\r\n")
            self.assertIn(f"SIZE {75 * 1024 * 1024}".encode(), s.recv(1000))

    def test_access_page_trusted_and_blocked_networks(self) -> None:
        w = self.open_main()
        dialog = w.open_settings("Access")
        self.addCleanup(dialog.destroy)
        page = dialog.pages["Access"]
        if not page.has_blocked:
            self.skipTest("this server version has no access.blocked setting yet")
        page.trusted.delete("1.0", "end")
        page.trusted.insert("1.0", "127.0.0.0/8\n::1/128\n192.168.1.0/24")
        page.blocked.insert("1.0", "127.0.0.2")
        self.assertTrue(dialog.apply())
        saved = self.settings_file(w)
        self.assertEqual(saved["trusted_networks"], ["127.0.0.0/8", "::1/128", "192.168.1.0/24"])
        self.assertEqual(saved["access"]["blocked"], ["127.0.0.2"])
        with socket.create_connection(("127.0.0.1", w.port), timeout=10, source_address=("127.0.0.2", 0)) as s:
            self.assertFalse(s.recv(200).startswith(b"220"))  # blocked: no greeting
        self.assertTrue(greetings(w.port, 1)[0].startswith(b"220"))  # 127.0.0.1 still welcome

    def test_accounts_page(self) -> None:
        w = self.open_main()
        dialog = w.open_settings("Accounts")
        self.addCleanup(dialog.destroy)
        page = dialog.pages["Accounts"]
        store = w.controller.accounts()
        query = page.add_account()
        query.vars[0].set("alice")
        query.vars[1].set("pw-one")
        query.vars[2].set("pw-two")
        query.ok_button.invoke()
        self.assertIn("not the same", query.error.text)
        query.vars[2].set("pw-one")
        query.ok_button.invoke()
        self.assertFalse(query.winfo_exists())
        self.assertTrue(store.check_password("alice@example.test", "pw-one"))
        self.assertTrue(page.tree.exists("alice@example.test"))
        page.tree.selection_set("alice@example.test")
        pump(dialog, 0.1)
        q2 = page.set_password()
        q2.vars[0].set("pw-new")
        q2.vars[1].set("pw-new")
        q2.ok_button.invoke()
        self.assertTrue(store.check_password("alice@example.test", "pw-new"))
        page.tree.selection_set("postmaster@example.test")
        pump(dialog, 0.1)
        self.assertIn("disabled", page.remove_button.state())
        page.remove_account()
        self.assertIn("cannot be removed", page.note.text)
        self.assertTrue(page.tree.exists("postmaster@example.test"))
        page.tree.selection_set("alice@example.test")
        pump(dialog, 0.1)
        self.assertNotIn("disabled", page.remove_button.state())
        page.remove_account()
        self.assertFalse(page.tree.exists("alice@example.test"))
        self.assertIsNone(store.mailbox_for("alice", "example.test"))

    def test_screenshots_of_the_main_window_and_every_settings_tab(self) -> None:
        w = self.open_main()
        pump(w.root, 1.2)  # a figures refresh and the activity lines
        shots = {"main-window": screenshot("main-window")}
        dialog = w.open_settings("Domain")
        self.addCleanup(dialog.destroy)
        for name in ("Domain", "Connections", "Access", "Anti-spam", "Accounts", "Addresses",
                     "Routes", "Program"):
            dialog.select(name)
            pump(dialog, 0.4)
            key = "settings-" + name.lower().replace("-", "")
            shots[key] = screenshot(key)
        for name, path in shots.items():
            self.assertEqual(png_size(path), SCREEN, name)
            self.assertGreater(path.stat().st_size, 5000, f"{name} looks empty")
        dialog.update_idletasks()
        alone = screenshot("settings-dialog-window", window=dialog.wm_frame())
        self.assertEqual(png_size(alone), (dialog.winfo_width(), dialog.winfo_height()))
        self.assertGreater(dialog.winfo_width(), 500)
        self.assertGreater(dialog.winfo_height(), 350)
        with self.assertRaises(AssertionError):
            png_size(Path(__file__))  # the check itself can fail


if __name__ == "__main__":
    unittest.main()


class DnsRecordsWindowTest(GuiTestCase):
    def test_records_copy_and_check_now_against_a_real_dns_server(self) -> None:
        from tests.support import Dnsmasq, cli, require_program
        program = require_program(self, "dnsmasq")
        w = self.open_main(start=False)
        r = cli(w.controller.data_dir, "dkim", "new", "example.test", "--bits", "1024", "--selector", "gui1")
        self.assertEqual(r.returncode, 0, r.stderr)
        dialog = w.open_settings("Domain")
        self.addCleanup(dialog.destroy)
        win = dialog.pages["Domain"].open_dns()
        self.addCleanup(win.destroy)
        pump(win, 0.2)
        kinds = [(row["record"].type, row["record"].name) for row in win.rows]
        self.assertIn(("MX", "example.test"), [(t, n.rstrip(".")) for t, n in kinds])
        dkim_row = next(row for row in win.rows if "_domainkey" in row["record"].name)
        self.assertTrue(dkim_row["record"].value.startswith("v=DKIM1; k=rsa; p="))
        win.copy(dkim_row["record"].value)
        self.assertEqual(win.clipboard_get(), dkim_row["record"].value)
        # Publish only the DKIM record; Check now says so, record by record.
        dns = Dnsmasq(program, [f"--txt-record=gui1._domainkey.example.test,{dkim_row['record'].value}"],
                      probe="gui1._domainkey.example.test")
        self.addCleanup(dns.stop)
        settings = w.controller.editable_settings()
        settings.dns_servers = [dns.server]
        self.assertEqual(w.controller.apply_settings(settings), [])
        win.check()
        pump_until(win, lambda: "record(s) as they should be" in win.status.cget("text"), what="the DNS check")
        self.assertTrue(dkim_row["verdict"].cget("text").startswith("\u2713"), dkim_row["verdict"].cget("text"))
        mx_row = next(row for row in win.rows if row["record"].type == "MX")
        self.assertTrue(mx_row["verdict"].cget("text").startswith("\u2717"), mx_row["verdict"].cget("text"))
        screenshot("dns-records")
