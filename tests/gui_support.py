"""Helpers for the GUI tests: a virtual screen (Xvfb), event pumping, xdotool, screenshots.

Every wait is bounded in time; every process started here is stopped by the caller's
cleanup, also when a test fails.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import select
import socket
import shutil
import struct
import subprocess
import tempfile
import time
import tkinter as tk
import unittest
from pathlib import Path
from typing import Callable
from unittest import mock

from gui.app import MainWindow
from gui.controller import Controller
from tests.support import ROOT, free_port, require_program

ARTIFACTS = ROOT / "tests" / "artifacts"
SCREEN = (1280, 800)


class VirtualScreen:
    """An Xvfb server on a display number it picks itself (-displayfd: no race for a free one)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.display = ""
        self._old_display: str | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("Xvfb") is not None

    def start(self) -> "VirtualScreen":
        read_end, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(
                ["Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
                 "-nolisten", "tcp"], pass_fds=(write_end,),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            os.close(write_end)
        number = b""
        deadline = time.monotonic() + 20
        try:
            while not number.endswith(b"\n") and time.monotonic() < deadline:
                ready, _, _ = select.select([read_end], [], [], 0.5)
                if ready:
                    chunk = os.read(read_end, 16)
                    if not chunk:
                        break
                    number += chunk
        finally:
            os.close(read_end)
        if not number.strip().isdigit():
            self.stop()
            raise RuntimeError("Xvfb did not report its display number within 20 s")
        self.display = ":" + number.decode().strip()
        self._old_display = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = self.display
        return self

    def stop(self) -> None:
        if self._old_display is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = self._old_display
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


_SHARED: dict[str, object] = {}


def shared_root() -> tk.Tk | None:
    """The one virtual screen and Tk root of this test process: started on first use,
    stopped at exit.  Tk keeps its X connection open after its root is destroyed, so a
    second Xvfb (and a second Tk) in the same process would trip over the dead first one.
    """
    if "root" in _SHARED:
        return _SHARED["root"]  # type: ignore[return-value]
    if not VirtualScreen.available():
        return None
    screen = VirtualScreen().start()
    try:
        root = tk.Tk()
    except tk.TclError:
        screen.stop()
        raise
    root.withdraw()
    _SHARED.update(screen=screen, root=root)
    atexit.register(_stop_shared)
    return root


def _stop_shared() -> None:
    root, screen = _SHARED.pop("root", None), _SHARED.pop("screen", None)
    if root is not None:
        gc.collect()  # Tk objects must be freed in this thread, while Tk still exists
        with contextlib.suppress(tk.TclError):
            root.destroy()
    if screen is not None:
        screen.stop()


def require_screen_tools(test: unittest.TestCase) -> None:
    for program in ("Xvfb", "xdotool", "import"):
        require_program(test, program)


def pump(root: tk.Misc, seconds: float = 0.2) -> None:
    """Let Tk run (draw, after() callbacks) for a while."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        root.update()
        time.sleep(0.01)


def pump_until(root: tk.Misc, condition: Callable[[], object], timeout: float = 15.0,
               what: str = "the condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        root.update()
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def xdotool(*args: str, timeout: float = 20) -> str:
    out = subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"xdotool {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def click(widget: tk.Misc, repeat: int = 1) -> None:
    """A real pointer click in the middle of ``widget``, through the X server."""
    widget.update_idletasks()
    x = widget.winfo_rootx() + widget.winfo_width() // 2
    y = widget.winfo_rooty() + widget.winfo_height() // 2
    xdotool("mousemove", "--sync", str(x), str(y))
    xdotool("click", "--repeat", str(repeat), "--delay", "80", "1")


def screenshot(name: str, window: str = "root") -> Path:
    """``import -window root`` (or one window, by X id) into tests/artifacts/NAME.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    path.unlink(missing_ok=True)
    out = subprocess.run(["import", "-window", window, str(path)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"import -window {window} failed: {out.stderr}")
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk; AssertionError if it is no PNG."""
    head = path.read_bytes()[:33]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise AssertionError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


LOOPBACK_SMARTHOST = {"enabled": True, "host": "127.0.0.1", "port": 9, "exclusive": True, "tls": "none"}


def make_data_dir(port: int, **extra: object) -> Path:
    data = Path(tempfile.mkdtemp(prefix="ismail-gui-"))
    settings = {"server_name": "mx.example.test", "primary_domain": "example.test", "dkim": {"auto_keys": False}, "tls": {"self_signed": False},
                # No DNS-based anti-spam checks (no test may ask the machine's resolver) and no
                # connection-rate limit (load tests reconnect from one untrusted address); tests/
                # test_antispam_* turn them on, with dnsmasq.
                "antispam": {"rdns": "off", "spf": "off", "dkim": "off", "dmarc": "off",
                 "connection_rate": 0},
                "listen": [f"127.0.0.1:{port}"], "pop3": {"listen": [f"127.0.0.1:{free_port()}"]},
                "imap": {"listen": [f"127.0.0.1:{free_port()}"]},
                "incoming": {"max_connections": 20, "max_per_host": 10},
                "smarthost": dict(LOOPBACK_SMARTHOST)}
    settings.update(extra)
    (data / "ismail.json").write_text(json.dumps(settings, indent=1))
    return data


def greetings(port: int, count: int) -> list[bytes]:
    """Open ``count`` connections at once from 127.0.0.1; the first line each one got."""
    socks: list[socket.socket] = []
    replies: list[bytes] = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
            replies.append(s.recv(512))
    finally:
        for s in socks:
            s.close()
    return replies


class GuiTestCase(unittest.TestCase):
    root: tk.Tk

    def setUp(self) -> None:
        require_screen_tools(self)
        root = shared_root()
        assert root is not None
        self.root = root
        # The Program tab reads and writes the log-on entry under $XDG_CONFIG_HOME (Linux):
        # every GUI test gets a HOME of its own, so none can touch the real one.
        home = Path(tempfile.mkdtemp(prefix="ismail-gui-home-"))
        self.addCleanup(shutil.rmtree, home, True)
        environ = mock.patch.dict(os.environ, {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")})
        environ.start()
        self.addCleanup(environ.stop)
        self.config_home = home / ".config"
        # Collect the windows of this test here, in the Tk thread: left to the cyclic GC they
        # could be freed in a server thread, which Tk does not allow.
        self.addCleanup(gc.collect)

    def open_main(self, start: bool = True, data: Path | None = None, **extra: object) -> MainWindow:
        port = free_port()
        if data is None:
            data = make_data_dir(port, **extra)
            self.addCleanup(shutil.rmtree, data, True)
        controller = Controller(data)
        top = tk.Toplevel(self.root)
        window = MainWindow(top, controller, _utest=True)
        controller.load_settings()  # after the window, whose activity pane shows what it logs
        window.port = port  # type: ignore[attr-defined]
        self.addCleanup(self.close_main, window)
        if start:
            window.start_server()
            pump_until(top, lambda: window.state in ("running", "stopped"), what="the server start")
        pump(top, 0.2)
        return window

    def close_main(self, window: MainWindow) -> None:
        top = window.root
        try:
            exists = bool(top.winfo_exists())
        except tk.TclError:
            exists = False
        if exists:
            window.close()
            pump_until(self.root, lambda: not top.winfo_exists(), timeout=30, what="closing the window")
        window.controller.stop(grace=1)

    def settings_file(self, window: MainWindow) -> dict:
        return json.loads(window.controller.path.read_text())
