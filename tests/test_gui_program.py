"""The Program tab (AutoStart), start_server_on_open, and the end of a session (log-off, SIGTERM).

Same virtual screen and rules as test_gui: real windows, real servers on loopback only,
a SmartHost on a closed loopback port.  The log-on entry is written under the temporary
XDG_CONFIG_HOME (and HOME) GuiTestCase gives every test, never into ~/.config/autostart.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

from gui.app import NOT_STARTED
from gui.controller import Controller
from gui.instance import InstanceLock
from gui.launch import end_cleanly_on_session_end
from ismail.platform import winplatform
from tests.gui_support import GuiTestCase, greetings, make_data_dir, pump, pump_until, screenshot
from tests.support import ROOT, free_port, wait_for_banner


class ProgramPageTest(GuiTestCase):
    def setUp(self) -> None:
        super().setUp()  # HOME and XDG_CONFIG_HOME are a temporary folder of this test's
        self.entry = self.config_home / "autostart" / winplatform.DESKTOP_FILE
        self.assertEqual(winplatform._autostart_dir(None) / winplatform.DESKTOP_FILE, self.entry)

    def test_both_boxes_round_trip(self) -> None:
        w = self.open_main()
        dialog = w.open_settings("Program")
        page = dialog.pages["Program"]
        self.assertEqual(dialog.notebook.select(), str(page))
        self.assertFalse(page.autostart.get())  # nothing registered in the fresh config folder
        self.assertTrue(page.start_on_open.get())  # the default
        page.autostart_box.invoke()  # as a click does
        page.start_box.invoke()
        self.assertTrue(dialog.apply_button.invoke())
        self.assertEqual(dialog.done.cget("text"), "Saved; the new settings are in force.")
        # The log-on entry: in the isolated folder, starting this window with this data folder.
        self.assertTrue(self.entry.is_file())
        text = self.entry.read_text()
        self.assertIn("Exec=", text)
        self.assertIn("ismail.pyw", text)
        self.assertIn(str(w.controller.data_dir.resolve()), text)
        self.assertEqual(winplatform.autostart_command(), w.controller.autostart_command())
        self.assertIs(self.settings_file(w)["program"]["start_server_on_open"], False)
        self.assertEqual(w.state, "running")  # the setting is about the next opening
        dialog.destroy()
        pump(w.root, 0.1)

        again = w.open_settings("Program")
        page = again.pages["Program"]
        self.assertTrue(page.autostart.get())
        self.assertFalse(page.start_on_open.get())
        page.autostart.set(False)
        page.start_on_open.set(True)
        again.ok_button.invoke()
        self.assertFalse(again.winfo_exists())
        self.assertFalse(self.entry.exists())
        self.assertFalse(winplatform.autostart_enabled())
        self.assertIs(self.settings_file(w)["program"]["start_server_on_open"], True)
        third = w.open_settings("Program")
        self.addCleanup(third.destroy)
        self.assertFalse(third.pages["Program"].autostart.get())
        self.assertTrue(third.pages["Program"].start_on_open.get())

    def test_a_moved_program_gets_its_entry_rewritten(self) -> None:
        winplatform.set_autostart(True, "/old/place/ISMail")
        w = self.open_main(start=False)
        dialog = w.open_settings("Program")
        self.addCleanup(dialog.destroy)
        self.assertTrue(dialog.pages["Program"].autostart.get())
        self.assertTrue(dialog.apply())
        self.assertEqual(winplatform.autostart_command(), w.controller.autostart_command())

    def test_an_entry_that_cannot_be_written_is_explained_and_the_rest_is_saved(self) -> None:
        w = self.open_main(start=False)
        blocker = Path(os.environ["XDG_CONFIG_HOME"])
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("a file where the folder should be")
        dialog = w.open_settings("Domain")
        self.addCleanup(dialog.destroy)
        page = dialog.pages["Program"]
        page.autostart.set(True)
        page.start_on_open.set(False)
        dialog.ok_button.invoke()
        self.assertTrue(dialog.winfo_exists())  # OK stays open: not everything was done
        self.assertEqual(dialog.notebook.select(), str(page))
        self.assertIn("the log-on entry could not be written", page.errors["autostart"].text)
        self.assertIs(self.settings_file(w)["program"]["start_server_on_open"], False)
        self.assertEqual(dialog.done.cget("text"), "")

    def test_the_data_folder_goes_into_the_command_unless_found_by_itself(self) -> None:
        data = Path(tempfile.mkdtemp(prefix="ismail-xdgdata-"))
        self.addCleanup(shutil.rmtree, data, True)
        with mock.patch.dict(os.environ, {"XDG_DATA_HOME": str(data)}):
            os.environ.pop("ISMAIL_HOME", None)
            self.assertEqual(Controller(data / "ismail").autostart_args(), [])
            self.assertEqual(Controller(data / "other").autostart_args(),
                             ["--data-dir", str((data / "other").resolve())])
            # $ISMAIL_HOME of some shell is not there at log-on: the folder is written out.
            os.environ["ISMAIL_HOME"] = str(data / "other")
            self.assertEqual(Controller(data / "other").autostart_args(),
                             ["--data-dir", str((data / "other").resolve())])
        self.assertEqual(Controller(data).autostart_command(),
                         winplatform.program_command(["--data-dir", str(data.resolve())]))


class StartOnOpenTest(GuiTestCase):
    def test_off_opens_stopped_and_says_so(self) -> None:
        w = self.open_main(start=False, program={"start_server_on_open": False})
        w.on_open()
        pump(w.root, 0.5)
        self.assertEqual(w.state, "stopped")
        self.assertEqual(w.state_label.cget("text"), "Stopped")
        self.assertEqual(w.listening_label.cget("text"), NOT_STARTED)
        self.assertFalse(w.problem_frame.winfo_ismapped())
        self.assertNotIn("disabled", w.start_button.state())
        self.assertFalse(w.controller.running)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", w.port), timeout=2).close()
        pump_until(w.root, lambda: "was not started" in w.activity.get("1.0", "end"), timeout=5,
                   what="the activity pane saying the server was not started")
        screenshot("opened-stopped")
        w.start_button.invoke()
        pump_until(w.root, lambda: w.state == "running", what="the start by hand")
        self.assertNotIn(NOT_STARTED, w.listening_label.cget("text"))
        self.assertTrue(greetings(w.port, 1)[0].startswith(b"220"))

    def test_on_by_default(self) -> None:
        w = self.open_main(start=False)
        w.on_open()
        pump_until(w.root, lambda: w.state == "running", what="the start on opening")

    def test_the_window_has_the_icon_and_the_program_menu(self) -> None:
        w = self.open_main(start=False)
        self.assertTrue(winplatform.asset_path("ismail.png").is_file())
        self.assertIsNotNone(w.icon)
        self.assertEqual((w.icon.width(), w.icon.height()), (256, 256))
        settings = w.root.nametowidget(w.menubar.entrycget("Settings", "menu"))
        labels = [settings.entrycget(i, "label") for i in range(settings.index("end") + 1)]
        self.assertEqual(labels[-1], "Program…")
        settings.invoke(settings.index("end"))
        self.assertEqual(w.dialog.notebook.select(), str(w.dialog.pages["Program"]))
        w.dialog.destroy()


class FakeSignals:
    SIGINT, SIGTERM, SIGHUP = 2, 15, 1

    def __init__(self) -> None:
        self.handlers: dict[int, object] = {}

    def signal(self, number: int, handler: object) -> None:
        self.handlers[number] = handler


class FakeKernel32:
    def GetConsoleWindow(self) -> int:
        return 0  # pythonw / the windowed .exe: no console


class EndOfSessionInProcessTest(GuiTestCase):
    def test_windows_log_off_stops_the_server_before_the_handler_returns(self) -> None:
        w = self.open_main()
        hook = end_cleanly_on_session_end(w.root, w, platform="win32", kernel32=FakeKernel32(),
                                          signal_module=FakeSignals())
        self.assertEqual(hook.events, ["WM_SAVE_YOURSELF", "SIGINT"])
        top = w.root
        top.tk.call(top.protocol("WM_SAVE_YOURSELF"))  # what Tk does at WM_QUERYENDSESSION
        self.assertFalse(w.controller.running)  # already, not some time later
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", w.port), timeout=2).close()
        self.assertFalse(top.winfo_exists())

    def test_posix_signals_go_through_the_tk_thread(self) -> None:
        for number in (FakeSignals.SIGTERM, FakeSignals.SIGHUP, FakeSignals.SIGINT):
            w = self.open_main()
            fake = FakeSignals()
            hook = end_cleanly_on_session_end(w.root, w, platform="linux", signal_module=fake)
            self.assertEqual(hook.events, ["SIGTERM", "SIGHUP", "SIGINT"])
            fake.handlers[number](number, None)  # type: ignore[operator]
            self.assertTrue(w.controller.running)  # only scheduled: a signal handler does no Tk work
            top = w.root
            pump_until(self.root, lambda: not top.winfo_exists(), timeout=30, what=f"closing on {number}")
            self.assertFalse(w.controller.running)

    def test_console_handler_thread_stops_without_touching_tk(self) -> None:
        w = self.open_main()
        hook = winplatform.ShutdownHook()
        done = threading.Event()
        threading.Thread(target=lambda: (w.end_session(), hook.done(), done.set())).start()
        self.assertTrue(done.wait(30))
        self.assertTrue(hook.wait(0))
        self.assertFalse(w.controller.running)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", w.port), timeout=2).close()
        top = w.root
        pump_until(self.root, lambda: not top.winfo_exists(), timeout=5, what="the window closing at its tick")

    def test_a_start_under_way_is_waited_for_and_no_start_follows(self) -> None:
        w = self.open_main(start=False)
        w.start_server()  # the start runs in a thread; end the session at once
        w.end_session()
        self.assertFalse(w.controller.running)
        self.assertIsNotNone(w.controller.start())  # refused: the program is ending
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", w.port), timeout=2).close()


def smtp(sock: socket.socket, line: bytes, expect: bytes) -> bytes:
    sock.sendall(line)
    reply = b""
    while not reply.endswith(b"\r\n") or reply.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    if not reply.startswith(expect):
        raise AssertionError(f"{line!r} -> {reply!r}, expected {expect!r}")
    return reply


def begin_message(port: int, marker: str) -> socket.socket:
    """A session at the point where the message text is being sent (after 354)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    if not s.recv(512).startswith(b"220"):
        raise AssertionError("no greeting")
    smtp(s, b"EHLO client.example.test\r\n", b"250")
    smtp(s, b"MAIL FROM:<sender@example.test>\r\n", b"250")
    smtp(s, b"RCPT TO:<postmaster@example.test>\r\n", b"250")
    smtp(s, b"DATA\r\n", b"354")
    s.sendall(f"Subject: {marker}\r\nFrom: sender@example.test\r\n\r\nfirst half\r\n".encode())
    return s


def stored(data: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (data / "mailboxes").rglob("new/*") if p.is_file())


class EndOfSessionProcessTest(GuiTestCase):
    """The real program, `python3 ismail.pyw --data-dir D`, on the virtual screen."""

    def start_program(self, **extra: object) -> tuple[subprocess.Popen, Path, int]:
        port = free_port()
        data = make_data_dir(port, **extra)
        self.addCleanup(shutil.rmtree, data, True)
        proc = subprocess.Popen([sys.executable, str(ROOT / "ismail.pyw"), "--data-dir", str(data)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(10)))
        return proc, data, port

    def assert_ended_cleanly(self, proc: subprocess.Popen, data: Path, port: int) -> str:
        _, err = proc.communicate(timeout=40)
        self.assertEqual(proc.returncode, 0, err)
        self.assertNotIn("Traceback", err)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        self.assertTrue(InstanceLock(data).acquire())
        log = (data / "logs" / "maillog.log").read_text()
        self.assertEqual(log.count("ISMail stopped"), 1, log)  # one clean stop, not two
        return log

    def test_sigterm_stops_cleanly_and_loses_nothing(self) -> None:
        proc, data, port = self.start_program()
        wait_for_banner("127.0.0.1", port, timeout=30)
        idle = begin_message(port, "accepted-just-before")
        smtp(idle, b"second half\r\n.\r\n", b"250")  # on disk now; the session stays open
        busy = begin_message(port, "finished-while-stopping")
        proc.send_signal(signal.SIGTERM)
        self.assertIn(b"421", idle.recv(512))  # the idle session is told, not dropped
        idle.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the listener closes at once ...
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            time.sleep(0.05)
        else:
            self.fail("still accepting connections 10 s after SIGTERM")
        smtp(busy, b"second half\r\n.\r\n", b"250")  # ... and a message under way may finish
        busy.close()
        log = self.assert_ended_cleanly(proc, data, port)
        self.assertIn("ISMail is ending", log)
        mail = stored(data)
        self.assertIn("Subject: accepted-just-before", mail)
        self.assertIn("Subject: finished-while-stopping", mail)

    def test_sighup_and_ctrl_c_stop_cleanly_too(self) -> None:
        for number in (signal.SIGHUP, signal.SIGINT):
            proc, data, port = self.start_program()
            wait_for_banner("127.0.0.1", port, timeout=30)
            proc.send_signal(number)
            self.assert_ended_cleanly(proc, data, port)

    def test_start_server_on_open_off_opens_stopped(self) -> None:
        proc, data, port = self.start_program(program={"start_server_on_open": False})
        log_file = data / "logs" / "maillog.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if log_file.exists() and "was not started" in log_file.read_text():
                break
            time.sleep(0.1)
        else:
            self.fail("the program did not say that the server was not started")
        time.sleep(0.5)  # had it started anyway, it would be listening by now
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        self.assertNotIn("serving SMTP", log_file.read_text())


if __name__ == "__main__":
    unittest.main()
