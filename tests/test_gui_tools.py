"""The Tools windows (queue, statistics, port test, SmartHost test) and one-instance-per-folder.

Same virtual screen and rules as test_gui: real windows, real servers on loopback only.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from gui.controller import Controller
from gui.instance import InstanceLock
from gui.queueview import PAGE_SIZE, QueueWindow
from ismail.queue.spool import QueueEntry, QueuedRecipient, file_head
from tests.gui_support import GuiTestCase, greetings, make_data_dir, pump, pump_until, screenshot, xdotool
from tests.support import ROOT, free_port, wait_for_banner
from tests.test_porttest import SmtpSink


def fill_queue(messages: Path, count: int) -> list[str]:
    """``count`` queue entries as the spool writes them (one .msg file each)."""
    messages.mkdir(parents=True, exist_ok=True)
    now = time.time()
    entry = QueueEntry(id="", sender="alice@example.test",
                       recipients=[QueuedRecipient("bob@example.net"), QueuedRecipient("carol@example.org")],
                       arrival=now - 3600, size=4321, attempts=3, next_try=now + 900,
                       last_error="4.4.1 Cannot connect to 127.0.0.1[127.0.0.1]:9: Connection refused")
    ids = [f"Q{i:07d}" for i in range(count)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for qid in ids:
        entry.id = qid
        fd = os.open(messages / f"{qid}.msg", flags, 0o600)
        try:
            os.write(fd, file_head(entry) + b"Subject: queued\r\n\r\nhello\r\n")
        finally:
            os.close(fd)
    return ids


class QueueWindowTest(GuiTestCase):
    COUNT = 100_000

    def test_100000_queued_messages_page_without_freezing_the_window(self) -> None:
        data = Path(tempfile.mkdtemp(prefix="ismail-gui-queue-"))
        self.addCleanup(shutil.rmtree, data, True)
        ids = fill_queue(data / "queue" / "messages", self.COUNT)
        controller = Controller(data)  # not started: the queue is read from disk
        beats: list[float] = []

        def beat() -> None:  # a heartbeat the Tk thread can only keep if nothing blocks it
            beats.append(time.monotonic())
            self._beat = self.root.after(20, beat)
        beat()
        self.addCleanup(lambda: self.root.after_cancel(self._beat))
        parent = self.open_main(start=False).root  # a transient of a hidden window stays hidden
        opened = time.monotonic()
        window = QueueWindow(parent, controller, _utest=True)
        self.addCleanup(window.close)
        self.assertLess(time.monotonic() - opened, 1.0, "opening the window must not wait for the queue")
        pump_until(window, lambda: window.loaded, timeout=60, what="the first page of the queue")
        gaps = [b - a for a, b in zip(beats, beats[1:])]
        self.assertLess(max(gaps), 0.5, f"the window froze for {max(gaps):.2f} s")
        rows = window.tree.get_children()
        self.assertEqual(len(rows), PAGE_SIZE)
        self.assertEqual(list(rows), ids[:PAGE_SIZE])
        first = window.tree.item(rows[0], "values")
        self.assertEqual(first[1], "alice@example.test")
        self.assertEqual(first[2], "bob@example.net, carol@example.org")
        self.assertIn("Connection refused", first[6])
        self.assertEqual(window.status.cget("text"), "100,000 messages waiting to be sent.")
        self.assertEqual(window.page_label.cget("text"), "Page 1 of 500")
        screenshot("queue-window")
        window.next_button.invoke()
        pump_until(window, lambda: window.loaded and window.page == 1, timeout=30, what="page 2")
        self.assertEqual(window.tree.get_children()[0], ids[PAGE_SIZE])
        window.prev_button.invoke()
        pump_until(window, lambda: window.loaded and window.page == 0, timeout=30, what="page 1 again")
        window.tree.selection_set(ids[0], ids[1])
        self.assertEqual(window.delete_selected(), ids[:2])
        self.assertEqual(list((data / "queue" / "messages").glob(f"{ids[0]}.*")), [])
        self.assertTrue((data / "queue" / "messages" / f"{ids[2]}.msg").exists())
        self.assertIn("99,998 messages", window.status.cget("text"))
        window.retry_button.invoke()
        self.assertTrue((data / "queue" / "flush").exists())  # what `ismail queue flush` leaves too
        window.refresh_button.invoke()
        pump_until(window, lambda: window.loaded, timeout=60, what="the refresh")
        self.assertEqual(len(window.ids), self.COUNT - 2)
        self.assertLess(max(b - a for a, b in zip(beats, beats[1:])), 0.5)

    def test_empty_queue(self) -> None:
        data = Path(tempfile.mkdtemp(prefix="ismail-gui-queue-"))
        self.addCleanup(shutil.rmtree, data, True)
        window = QueueWindow(self.open_main(start=False).root, Controller(data), _utest=True)
        self.addCleanup(window.close)
        pump_until(window, lambda: window.loaded, what="reading an empty queue")
        self.assertEqual(window.status.cget("text"), "The outgoing queue is empty.")
        self.assertEqual(window.tree.get_children(), ())
        self.assertEqual(window.delete_selected(), [])


class StatisticsTest(GuiTestCase):
    def test_counters_grouped_and_live(self) -> None:
        w = self.open_main()
        stats = w.open_statistics()
        self.addCleanup(stats.close)
        titles = {child.cget("text") for column in stats.winfo_children()[0].winfo_children()
                  for child in column.winfo_children() if child.winfo_class() == "TLabelframe"}
        for group in ("SMTP Receiver", "SMTP Sender", "Incoming Queue", "Outgoing Queue", "Retry Manager"):
            self.assertIn(group, titles)
        self.assertEqual(stats.values["connections_total"].cget("text"), "0")
        greetings(w.port, 3)
        pump_until(stats, lambda: stats.values["connections_total"].cget("text") == "3", timeout=5,
                   what="the statistics counting 3 connections")
        screenshot("statistics")
        stats.reset()
        self.assertEqual(stats.values["connections_total"].cget("text"), "0")


class ToolsTest(GuiTestCase):
    def test_port_test_shows_the_smtp_sink_banner(self) -> None:
        sink = SmtpSink(self)
        self.addCleanup(sink.stop)
        w = self.open_main(start=False)
        dialog = w.open_port_test()
        self.addCleanup(dialog.close)
        self.assertEqual(dialog.host.get(), "127.0.0.1")  # the SmartHost is the default
        self.assertEqual(dialog.port.get(), "25")
        dialog.port.set(str(sink.port))
        dialog.test_button.invoke()
        self.assertIn("disabled", dialog.test_button.state())  # runs in the background
        pump_until(dialog, lambda: dialog.result is not None, timeout=15, what="the port test")
        self.assertTrue(dialog.result.ok)
        self.assertIn("220 smtp-sink", dialog.banner.cget("text"))
        self.assertIn("Open", dialog.verdict.cget("text"))
        screenshot("port-test")

    def test_port_test_diagnoses_refused_and_silent_ports(self) -> None:
        w = self.open_main(start=False)
        dialog = w.open_port_test()
        self.addCleanup(dialog.close)
        dialog.port.set(str(free_port()))
        dialog.start()
        pump_until(dialog, lambda: dialog.result is not None, timeout=15, what="the refused test")
        self.assertIn("refused", dialog.diagnosis.cget("text").lower())
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        self.addCleanup(silent.close)
        dialog.port.set(str(silent.getsockname()[1]))
        dialog.timeout.set("2")
        started = time.monotonic()
        dialog.start()
        pump_until(dialog, lambda: dialog.result is not None, timeout=15, what="the silent-port test")
        self.assertLess(time.monotonic() - started, 4)
        self.assertIn("Timed out waiting for the greeting", dialog.diagnosis.cget("text"))
        dialog.host.set("")
        dialog.start()
        self.assertIn("Type a host", dialog.error.text)

    def test_smarthost_test_reports_each_step(self) -> None:
        w = self.open_main()  # the SmartHost of these tests is a closed loopback port
        dialog = w.open_smarthost_test()
        self.addCleanup(dialog.close)
        self.assertIn("127.0.0.1 port 9", dialog.summary.cget("text"))
        dialog.run_button.invoke()
        pump_until(dialog, lambda: dialog.finished, timeout=30, what="the SmartHost test")
        self.assertEqual([s.name for s in dialog.steps], ["Connect"])
        self.assertFalse(dialog.steps[0].ok)
        text = dialog.log.get("1.0", "end")
        self.assertIn("✘ Connect", text)
        self.assertIn("refused", text.lower())
        screenshot("smarthost-test")


class InstanceTest(GuiTestCase):
    def test_one_lock_per_data_folder(self) -> None:
        data = Path(tempfile.mkdtemp(prefix="ismail-lock-"))
        self.addCleanup(shutil.rmtree, data, True)
        first, second = InstanceLock(data), InstanceLock(data)
        self.assertTrue(first.acquire())
        self.addCleanup(first.release)
        self.assertFalse(second.acquire())
        self.assertEqual(second.holder(), os.getpid())
        first.release()
        self.assertTrue(second.acquire())
        second.release()

    def test_a_dead_holder_leaves_no_stale_lock(self) -> None:
        data = Path(tempfile.mkdtemp(prefix="ismail-lock-"))
        self.addCleanup(shutil.rmtree, data, True)
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gui.instance import "
                                   "InstanceLock; print(InstanceLock(sys.argv[1]).acquire(), flush=True); "
                                   "time.sleep(60)", str(data)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.wait, 10)
        self.addCleanup(holder.kill)
        self.assertEqual(holder.stdout.readline().strip(), "True")
        self.assertFalse(InstanceLock(data).acquire())
        holder.kill()
        holder.wait(10)
        lock = InstanceLock(data)
        self.assertTrue(lock.acquire())
        lock.release()

    def test_the_program_serves_and_stops_cleanly_on_sigterm(self) -> None:
        port = free_port()
        data = make_data_dir(port)
        self.addCleanup(shutil.rmtree, data, True)
        proc = subprocess.Popen([sys.executable, str(ROOT / "ismail.pyw"), "--data-dir", str(data)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(10)))
        wait_for_banner("127.0.0.1", port, timeout=30)
        self.assertFalse(InstanceLock(data).acquire())  # the window holds its data folder
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        self.assertNotIn("Traceback", err)
        log = (data / "logs" / "maillog.log").read_text()
        self.assertIn("ISMail serving SMTP", log)
        self.assertIn("ISMail stopped", log)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        self.assertTrue(InstanceLock(data).acquire())  # and lets it go when it ends

    def test_second_window_says_ismail_is_already_running(self) -> None:
        data = Path(tempfile.mkdtemp(prefix="ismail-lock-"))
        self.addCleanup(shutil.rmtree, data, True)
        lock = InstanceLock(data)
        self.assertTrue(lock.acquire())
        self.addCleanup(lock.release)
        proc = subprocess.Popen([sys.executable, str(ROOT / "ismail.pyw"), "--data-dir", str(data)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(10)))
        window_id = ""
        deadline = time.monotonic() + 20
        while not window_id and time.monotonic() < deadline and proc.poll() is None:
            found = subprocess.run(["xdotool", "search", "--name", "ISMail is already running"],
                                   capture_output=True, text=True, timeout=10)
            window_id = found.stdout.split()[0] if found.stdout.split() else ""
            time.sleep(0.1)
        self.assertTrue(window_id, "no 'already running' message appeared")
        pump(self.root, 0.3)
        screenshot("already-running")
        xdotool("windowfocus", "--sync", window_id, "key", "Return")  # a person presses OK
        _, err = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 3)
        self.assertIn("already running", err)
        self.assertIn(str(data), err)
        self.assertNotIn("Traceback", err)


if __name__ == "__main__":
    unittest.main()
