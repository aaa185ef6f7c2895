"""POP3 in the window: the main window's lines per protocol, Settings > Connections' POP3
group, the statistics' POP3 group, and Change port for a POP3 address.

Same virtual screen and rules as test_gui: real windows, a real MailServer on loopback,
a SmartHost on a closed loopback port.  POP3 clients are plain sockets that read the
greeting, so these tests need nothing of POP3 beyond a session that says "+OK".
"""
from __future__ import annotations

import shutil
import socket
import unittest

from gui.app import MainWindow
from tests.gui_support import (GuiTestCase, greetings, make_data_dir, png_size, pump, pump_until,
                               screenshot)
from tests.support import free_port


def pop3_port(w: MainWindow) -> int:
    return int(w.controller.settings.pop3.listen[0].rsplit(":", 1)[1])


def pop3_greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.recv(512)


def texts(widget) -> list[str]:
    """The text of every label in ``widget`` and below it."""
    found = [str(widget.cget("text"))] if widget.winfo_class() == "TLabel" else []
    for child in widget.winfo_children():
        found += texts(child)
    return found


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


class MainWindowPop3Test(GuiTestCase):
    def test_a_line_per_protocol_with_where_and_connections(self) -> None:
        w = self.open_main()
        port = pop3_port(w)
        self.assertEqual(w.state, "running")
        self.assertEqual(w.listening_label.cget("text"),
                         f"SMTP on 127.0.0.1:{w.port}\nPOP3 on 127.0.0.1:{port}")
        self.assertEqual(w.figure_labels["pop3"].cget("text"), "0 / 20  (at most 5 per host)")
        self.assertEqual(w.start_button.cget("text"), "Start")
        self.assertEqual(w.stop_button.cget("text"), "Stop")
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        try:
            for c in clients:
                self.assertTrue(c.recv(512).startswith(b"+OK"))
            pump_until(w.root, lambda: w.figure_labels["pop3"].cget("text").startswith("2 / 20"), timeout=5,
                       what="the POP3 line counting 2 connections")
            self.assertTrue(w.figure_labels["incoming"].cget("text").startswith("0 / 20"))  # SMTP's apart
            pump(w.root, 1.2)
            shot = screenshot("main-window-pop3")
        finally:
            for c in clients:
                c.close()
        self.assertGreater(shot.stat().st_size, 5000)
        pump_until(w.root, lambda: w.figure_labels["pop3"].cget("text").startswith("0 / 20"), timeout=5,
                   what="the POP3 line going back to 0")

    def test_pop3_off(self) -> None:
        port = free_port()
        w = self.open_main(pop3={"enabled": False, "listen": [f"127.0.0.1:{port}"]})
        self.assertEqual(w.state, "running")
        self.assertEqual(w.listening_label.cget("text"), f"SMTP on 127.0.0.1:{w.port}\nPOP3 off")
        self.assertEqual(w.figure_labels["pop3"].cget("text"), "off")
        self.assertTrue(refused(port))
        self.assertTrue(greetings(w.port, 1)[0].startswith(b"220"))

    def test_stop_covers_both_and_closing_says_so(self) -> None:
        w = self.open_main()
        port = pop3_port(w)
        self.assertTrue(pop3_greeting(port).startswith(b"+OK"))
        w.stop_button.invoke()
        pump_until(w.root, lambda: w.state == "stopped", what="stopping")
        self.assertTrue(refused(port) and refused(w.port))
        w.start_button.invoke()
        pump_until(w.root, lambda: w.state == "running", what="starting again")
        self.assertTrue(pop3_greeting(port).startswith(b"+OK"))
        w.close()
        self.assertIn("stopping the SMTP server and the POP3 server", w.listening_label.cget("text"))
        top = w.root
        pump_until(self.root, lambda: not top.winfo_exists(), timeout=30, what="the window closing")
        self.assertTrue(refused(port))

    def test_change_port_moves_the_pop3_address_that_failed(self) -> None:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        taken = blocker.getsockname()[1]
        smtp_port = free_port()
        data = make_data_dir(smtp_port, pop3={"listen": [f"127.0.0.1:{taken}"]})
        self.addCleanup(shutil.rmtree, data, True)
        w = self.open_main(data=data)
        self.assertEqual(w.state, "stopped")
        self.assertIn(f"127.0.0.1:{taken}", w.problem_label.cget("text"))
        self.assertTrue(w.change_port_button.winfo_ismapped())
        query = w.change_port()
        self.assertIn("POP3 listens on", " ".join(texts(query)))
        self.assertEqual(query.vars[0].get(), "1110")  # a POP3 port is suggested, not SMTP's 2525
        new_port = free_port()
        query.vars[0].set(str(new_port))
        query.ok_button.invoke()
        pump_until(w.root, lambda: w.state == "running", what="the start on the new POP3 port")
        saved = self.settings_file(w)
        self.assertEqual(saved["pop3"]["listen"], [f"127.0.0.1:{new_port}"])
        self.assertEqual(saved["listen"], [f"127.0.0.1:{smtp_port}"])  # SMTP's untouched
        self.assertTrue(pop3_greeting(new_port).startswith(b"+OK"))


class ConnectionsPagePop3Test(GuiTestCase):
    def open_page(self, w: MainWindow):
        dialog = w.open_settings("Connections")
        self.addCleanup(dialog.destroy)
        pump(dialog, 0.2)
        return dialog, dialog.pages["Connections"]

    def test_the_pop3_group_round_trips_and_the_server_obeys(self) -> None:
        w = self.open_main()
        old = pop3_port(w)
        dialog, page = self.open_page(w)
        self.assertTrue(page.flags["pop3_enabled"].get())
        self.assertFalse(page.flags["pop3_plaintext"].get())
        self.assertEqual(page.vars["pop3_listen"].get(), f"127.0.0.1:{old}")
        self.assertEqual((page.vars["pop3_total"].get(), page.vars["pop3_per_host"].get()), ("20", "5"))
        shot = screenshot("settings-connections-pop3")
        self.assertGreater(png_size(shot)[1], 0)
        dialog.update_idletasks()
        self.assertLessEqual(dialog.winfo_rooty() + dialog.winfo_height(), 800, "the dialog fits the screen")
        new = free_port()
        page.vars["pop3_listen"].set(f"127.0.0.1:{new}")
        page.vars["pop3_total"].set("30")
        page.vars["pop3_per_host"].set("2")
        page.flags["pop3_plaintext"].set(True)
        self.assertTrue(dialog.apply())
        saved = self.settings_file(w)["pop3"]
        self.assertEqual(saved, {"enabled": True, "listen": [f"127.0.0.1:{new}"], "max_connections": 30,
                                 "max_per_host": 2, "allow_plaintext": True})
        server = w.controller.server
        self.assertEqual(server.pop3_limiter.limits, (30, 2))
        self.assertTrue(refused(old))
        replies = []
        socks = [socket.create_connection(("127.0.0.1", new), timeout=10) for _ in range(3)]
        try:
            replies = [s.recv(512) for s in socks]
        finally:
            for s in socks:
                s.close()
        self.assertTrue(all(r.startswith(b"+OK") for r in replies[:2]), replies)
        self.assertTrue(replies[2].startswith(b"-ERR"), replies)  # the third from one host: refused
        pump_until(w.root, lambda: w.figure_labels["pop3"].cget("text").endswith("(at most 2 per host)"),
                   timeout=5, what="the main window showing the new POP3 limits")
        self.assertIn(f"POP3 on 127.0.0.1:{new}", w.listening_label.cget("text"))

    def test_invalid_pop3_values_are_refused_next_to_their_fields(self) -> None:
        w = self.open_main()
        before = w.controller.path.read_bytes()
        dialog, page = self.open_page(w)
        page.vars["pop3_total"].set("5")
        page.vars["pop3_per_host"].set("abc")
        page.vars["pop3_listen"].set("nowhere")
        self.assertFalse(dialog.apply())
        pump(dialog, 0.2)
        expected = {"pop3.max_connections": ["5", "10–100"], "pop3.max_per_host": ["'abc'", "1–10"],
                    "pop3.listen": ["nowhere"]}
        for key, words in expected.items():
            label = page.errors[key]
            self.assertTrue(label.winfo_ismapped(), key)
            for word in words:
                self.assertIn(word, label.text, key)
        self.assertEqual(page.errors["listen"].text, "")
        self.assertEqual(page.errors["incoming.max_connections"].text, "")
        screenshot("settings-connections-pop3-errors")
        dialog.update_idletasks()
        self.assertLessEqual(dialog.winfo_rooty() + dialog.winfo_height(), 800, "the dialog fits the screen")
        page.vars["pop3_listen"].set(f"127.0.0.1:{w.port}")  # SMTP's own address
        self.assertFalse(dialog.apply())
        self.assertIn("SMTP listens on already", page.errors["pop3.listen"].text)
        self.assertEqual(w.controller.path.read_bytes(), before)
        self.assertEqual(w.controller.server.pop3_limiter.limits, (20, 5))

    def test_a_pop3_address_in_use_is_shown_under_the_pop3_field(self) -> None:
        w = self.open_main()
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        before = w.controller.path.read_bytes()
        dialog, page = self.open_page(w)
        page.vars["pop3_listen"].set(f"127.0.0.1:{blocker.getsockname()[1]}")
        self.assertFalse(dialog.apply())
        self.assertIn("already in use", page.errors["pop3.listen"].text)
        self.assertEqual(page.errors["listen"].text, "")
        self.assertEqual(w.controller.path.read_bytes(), before)
        self.assertTrue(pop3_greeting(pop3_port(w)).startswith(b"+OK"))  # still where it was

    def test_turning_pop3_off_greys_the_group_and_closes_the_port(self) -> None:
        w = self.open_main()
        port = pop3_port(w)
        dialog, page = self.open_page(w)
        page.flags["pop3_enabled"].set(False)
        page._sync_states()  # what the checkbox's command does
        for widget in page._pop3_widgets:
            self.assertIn("disabled", widget.state())
        self.assertTrue(dialog.apply())
        self.assertIs(self.settings_file(w)["pop3"]["enabled"], False)
        self.assertTrue(refused(port))
        pump_until(w.root, lambda: w.figure_labels["pop3"].cget("text") == "off", timeout=5,
                   what="the main window saying POP3 is off")
        self.assertTrue(w.listening_label.cget("text").endswith("POP3 off"))
        page.flags["pop3_enabled"].set(True)
        page._sync_states()
        self.assertNotIn("disabled", page.pop3_listen_entry.state())
        self.assertTrue(dialog.apply())
        self.assertTrue(pop3_greeting(port).startswith(b"+OK"))


class StatisticsPop3Test(GuiTestCase):
    def test_pop3_group(self) -> None:
        w = self.open_main()
        stats = w.open_statistics()
        self.addCleanup(stats.close)
        titles = {child.cget("text") for column in stats.winfo_children()[0].winfo_children()
                  for child in column.winfo_children() if child.winfo_class() == "TLabelframe"}
        self.assertIn("POP3 Server", titles)
        self.assertNotIn("Other", titles)  # every POP3 counter has its place
        for key in ("pop3_logins", "pop3_logins_failed", "pop3_retrieved", "pop3_deleted", "pop3_bytes_sent"):
            self.assertEqual(stats.values[key].cget("text"), "0", key)
        for _ in range(2):
            self.assertTrue(pop3_greeting(pop3_port(w)).startswith(b"+OK"))
        pump_until(stats, lambda: stats.values["pop3_connections_total"].cget("text") == "2", timeout=5,
                   what="the statistics counting 2 POP3 connections")
        self.assertEqual(stats.values["connections_total"].cget("text"), "0")  # SMTP's apart
        pump(stats, 0.3)
        screenshot("statistics-pop3")


if __name__ == "__main__":
    unittest.main()
