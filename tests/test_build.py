"""The executable: Windows behaviour (with the OS replaced by fakes), the entry, the icon,
and a real PyInstaller build of build.spec that is smoke-run like a user would.

The build needs PyPI (pip installs the pinned PyInstaller into a venv, cached under the
temp folder by the requirements file's hash).  Without it the build tests skip on a
developer machine and fail with CI=true, like a missing peer program (tests/support.py).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import imaplib
import importlib.util
import io
import json
import os
import poplib
import shlex
import shutil
import signal
import smtplib
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zlib
from email.message import EmailMessage
from pathlib import Path
from unittest import mock

from ismail import __version__, config, entry
from ismail.platform import winplatform as wp
from tests.support import IN_CI, ROOT, free_port, wait_for_banner


# -- fakes for the operating system ----------------------------------------------------------

class FakeWinreg:
    """The part of ``winreg`` that autostart uses; missing keys and values raise like Windows."""
    HKEY_CURRENT_USER, KEY_QUERY_VALUE, KEY_SET_VALUE, REG_SZ = "HKCU", 1, 2, 1

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], dict[str, tuple[object, int]]] = {}

    @contextlib.contextmanager
    def CreateKeyEx(self, root, sub, reserved=0, access=0):
        yield self.keys.setdefault((root, sub), {})

    @contextlib.contextmanager
    def OpenKey(self, root, sub, reserved=0, access=0):
        if (root, sub) not in self.keys:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        yield self.keys[(root, sub)]

    def SetValueEx(self, key, name, reserved, kind, value) -> None:
        key[name] = (value, kind)

    def QueryValueEx(self, key, name):
        if name not in key:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return key[name]

    def DeleteValue(self, key, name) -> None:
        if name not in key:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        del key[name]


class FakeKernel32:
    """Console calls and a Toolhelp process list; ``consoles`` are the pids AttachConsole accepts."""

    def __init__(self, console: bool = True, consoles: tuple[int, ...] = (-1,),
                 processes: tuple[tuple[int, int], ...] = ()) -> None:
        self.console, self.consoles, self.processes = console, consoles, processes
        self.handlers: list[tuple[object, bool]] = []
        self.attached: list[int] = []
        self.closed: list[int] = []

    def GetConsoleWindow(self) -> int:
        return 0x1234 if self.console else 0

    def SetConsoleCtrlHandler(self, handler, add) -> int:
        self.handlers.append((handler, add))
        return 1

    def AttachConsole(self, pid: int) -> int:
        self.attached.append(pid)
        return 1 if pid in self.consoles else 0

    def CreateToolhelp32Snapshot(self, flags: int, pid: int) -> int:
        self._next = 0
        return 77

    def _fill(self, entry_ref) -> int:
        if self._next >= len(self.processes):
            return 0
        entry = entry_ref._obj  # what byref() points at
        entry.th32ProcessID, entry.th32ParentProcessID = self.processes[self._next]
        self._next += 1
        return 1

    def Process32FirstW(self, snapshot, entry_ref) -> int:
        assert snapshot == 77 and entry_ref._obj.dwSize == ctypes.sizeof(wp.PROCESSENTRY32W)
        return self._fill(entry_ref)

    def Process32NextW(self, snapshot, entry_ref) -> int:
        return self._fill(entry_ref)

    def CloseHandle(self, handle) -> int:
        self.closed.append(handle)
        return 1


class FakeSignal:
    SIGTERM, SIGHUP = 15, 1

    def __init__(self) -> None:
        self.installed: dict[int, object] = {}

    def signal(self, signum, handler) -> None:
        self.installed[signum] = handler


class FakeTkRoot:
    def __init__(self) -> None:
        self.protocols: dict[str, object] = {}

    def protocol(self, name, command) -> None:
        self.protocols[name] = command


# -- winplatform -----------------------------------------------------------------------------

class AutostartTest(unittest.TestCase):
    COMMAND = r'"C:\Program Files\ISMail\ISMail.exe"'

    def test_windows_run_key(self) -> None:
        reg = FakeWinreg()
        self.assertFalse(wp.autostart_enabled(platform="win32", winreg=reg))  # no key at all
        wp.set_autostart(True, self.COMMAND, platform="win32", winreg=reg)
        self.assertEqual(reg.keys[("HKCU", wp.RUN_KEY)]["ISMail"], (self.COMMAND, reg.REG_SZ))
        self.assertTrue(wp.autostart_enabled(platform="win32", winreg=reg))
        self.assertEqual(wp.autostart_command(platform="win32", winreg=reg), self.COMMAND)
        wp.set_autostart(False, platform="win32", winreg=reg)
        self.assertNotIn("ISMail", reg.keys[("HKCU", wp.RUN_KEY)])
        self.assertFalse(wp.autostart_enabled(platform="win32", winreg=reg))
        wp.set_autostart(False, platform="win32", winreg=reg)  # off twice is no error

    def test_windows_default_command_is_this_program(self) -> None:
        reg = FakeWinreg()
        wp.set_autostart(True, platform="win32", winreg=reg)
        self.assertEqual(wp.autostart_command(platform="win32", winreg=reg),
                         wp.program_command(platform="win32"))

    def test_xdg_desktop_file_round_trip(self) -> None:
        home = Path(tempfile.mkdtemp(prefix="ismail-xdg-"))
        self.addCleanup(shutil.rmtree, home, ignore_errors=True)
        tricky = ["/opt/My Apps/ismail", "--data-dir", "/home/u/mail $HOME \"q\" `x` back\\slash 100%"]
        command = shlex.join(tricky)
        self.assertFalse(wp.autostart_enabled(platform="linux", config_home=home))
        wp.set_autostart(True, command, platform="linux", config_home=home)
        text = (home / "autostart" / "ismail.desktop").read_text()
        self.assertIn("[Desktop Entry]\nType=Application\n", text)
        self.assertIn('Exec="/opt/My Apps/ismail" --data-dir "/home/u/mail \\\\$HOME', text)
        self.assertIn("100%%", text)
        self.assertEqual(shlex.split(wp.autostart_command(platform="linux", config_home=home)), tricky)
        wp.set_autostart(False, platform="linux", config_home=home)
        self.assertFalse((home / "autostart" / "ismail.desktop").exists())
        wp.set_autostart(False, platform="linux", config_home=home)

    def test_xdg_switched_off_by_the_desktop(self) -> None:
        home = Path(tempfile.mkdtemp(prefix="ismail-xdg-"))
        self.addCleanup(shutil.rmtree, home, ignore_errors=True)
        wp.set_autostart(True, "/usr/bin/ismail", platform="linux", config_home=home)
        path = home / "autostart" / "ismail.desktop"
        for switch in ("Hidden=true", "X-GNOME-Autostart-enabled=false"):
            path.write_text(wp.desktop_entry("/usr/bin/ismail").replace(
                "X-GNOME-Autostart-enabled=true", switch))
            self.assertFalse(wp.autostart_enabled(platform="linux", config_home=home), switch)

    def test_xdg_folder(self) -> None:
        self.assertEqual(wp._autostart_dir(None, {"XDG_CONFIG_HOME": "/cfg"}), Path("/cfg/autostart"))
        self.assertEqual(wp._autostart_dir(None, {}), Path.home() / ".config" / "autostart")
        with self.assertRaises(ValueError):
            wp.desktop_entry("'two\nlines'")


class PlacesTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-portable-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.exe = str(self.dir / "ISMail.exe")

    def test_portable_only_when_frozen_with_marker(self) -> None:
        self.assertIsNone(wp.portable_data_dir(executable=self.exe, frozen=True))
        (self.dir / "portable.txt").write_text("")
        self.assertEqual(wp.portable_data_dir(executable=self.exe, frozen=True), self.dir.resolve() / "data")
        self.assertIsNone(wp.portable_data_dir(executable=self.exe, frozen=False))
        self.assertIsNone(wp.portable_data_dir())  # these tests do not run frozen

    def test_resolve_data_dir_prefers_portable_to_the_environment(self) -> None:
        (self.dir / "portable.txt").write_text("")
        env = {"ISMAIL_HOME": "/env/home", "APPDATA": "C:\\Users\\u\\AppData\\Roaming"}
        with mock.patch.object(sys, "frozen", True, create=True), \
                mock.patch.object(sys, "executable", self.exe):
            self.assertEqual(config.resolve_data_dir(None, env, "win32"), self.dir.resolve() / "data")
            self.assertEqual(config.resolve_data_dir("D:\\mail", env, "win32"), Path("D:\\mail"))

    def test_program_command(self) -> None:
        self.assertEqual(wp.program_argv(["--data-dir", "x"], frozen=True, executable=self.exe),
                         [str(Path(self.exe).resolve()), "--data-dir", "x"])
        self.assertEqual(wp.program_argv(frozen=False), [sys.executable, str(ROOT / "ismail.pyw")])
        self.assertEqual(shlex.split(wp.program_command(platform="linux", frozen=False)),
                         [sys.executable, str(ROOT / "ismail.pyw")])

    def test_program_command_windows_prefers_pythonw(self) -> None:
        folder = self.dir / "Python 311"
        folder.mkdir()
        python = folder / "python.exe"
        python.write_text("")
        argv = wp.program_argv(platform="win32", frozen=False, executable=str(python))
        self.assertEqual(argv[0], str(python))  # no pythonw.exe beside it
        (folder / "pythonw.exe").write_text("")
        command = wp.program_command(platform="win32", frozen=False, executable=str(python))
        self.assertTrue(command.startswith(f'"{folder / "pythonw.exe"}" '), command)
        self.assertTrue(command.endswith("ismail.pyw"), command)

    def test_asset_path(self) -> None:
        self.assertTrue(wp.asset_path("ismail.png").is_file())
        with mock.patch.object(sys, "_MEIPASS", "/bundle", create=True):
            self.assertEqual(wp.asset_path("ismail.png", frozen=True), Path("/bundle/assets/ismail.png"))


class ShutdownHookTest(unittest.TestCase):
    def test_windows_console_handler_waits_for_the_stop(self) -> None:
        k32, calls = FakeKernel32(), []
        root = FakeTkRoot()
        hook = wp.install_shutdown_hook(lambda: calls.append("stop"), tk_root=root, platform="win32",
                                        kernel32=k32, grace=10)
        self.assertEqual(hook.events, ["WM_SAVE_YOURSELF", "console"])
        self.assertIn("WM_SAVE_YOURSELF", root.protocols)
        handler, add = k32.handlers[0]
        self.assertTrue(add)
        self.assertEqual(handler(wp.CTRL_C_EVENT), 0)  # Python's own SIGINT handling keeps Ctrl+C
        self.assertEqual(calls, [])
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(handler(wp.CTRL_LOGOFF_EVENT)))
        t.start()
        time.sleep(0.2)
        self.assertEqual(calls, ["stop"])
        self.assertEqual(result, [], "the handler returned before the server had stopped")
        hook.done()
        t.join(5)
        self.assertEqual(result, [1])

    def test_windows_grace_and_no_console(self) -> None:
        k32 = FakeKernel32()
        hook = wp.install_shutdown_hook(lambda: None, platform="win32", kernel32=k32, grace=0.1)
        started = time.monotonic()
        self.assertEqual(k32.handlers[0][0](wp.CTRL_SHUTDOWN_EVENT), 1)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(hook.events, ["console"])
        quiet = FakeKernel32(console=False)
        self.assertEqual(wp.install_shutdown_hook(lambda: None, platform="win32", kernel32=quiet).events, [])
        self.assertEqual(quiet.handlers, [])

    def test_posix_signals(self) -> None:
        fake, calls, root = FakeSignal(), [], FakeTkRoot()
        hook = wp.install_shutdown_hook(lambda: calls.append(1), tk_root=root, platform="linux",
                                        signal_module=fake)
        self.assertEqual(hook.events, ["SIGTERM", "SIGHUP"])
        self.assertEqual(root.protocols, {})  # X11's WM_SAVE_YOURSELF is not "you are ending"
        fake.installed[fake.SIGTERM](fake.SIGTERM, None)
        self.assertEqual(calls, [1])

    @unittest.skipIf(os.name == "nt", "POSIX signals")
    def test_posix_real_sigterm(self) -> None:
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        self.addCleanup(lambda: [signal.signal(s, h) for s, h in old.items()])
        calls = []
        wp.install_shutdown_hook(lambda: calls.append(1))
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(calls, [1])


class AttachConsoleTest(unittest.TestCase):
    def opener(self, name, mode, **kwargs):
        self.opened.append((name, mode))
        return io.StringIO()

    def setUp(self) -> None:
        self.opened: list[tuple[str, str]] = []

    def attach(self, k32: FakeKernel32, frozen: bool = False, platform: str = "win32") -> bool:
        return entry.attach_parent_console(platform=platform, kernel32=k32, opener=self.opener,
                                           frozen=frozen, parent_pid=lambda: 500)

    def test_windowed_exe_borrows_the_parent_console(self) -> None:
        k32 = FakeKernel32()
        with mock.patch.object(sys, "stdin", None), mock.patch.object(sys, "stdout", None), \
                mock.patch.object(sys, "stderr", None):
            self.assertTrue(self.attach(k32))
            self.assertIsNotNone(sys.stdout)
        self.assertEqual(k32.attached, [-1])
        self.assertEqual(self.opened, [("CONIN$", "r"), ("CONOUT$", "w"), ("CONOUT$", "w")])

    def test_one_file_build_borrows_the_grandparents_console(self) -> None:
        # cmd.exe (pid 42) started the unpacking process (500), which started this one.
        k32 = FakeKernel32(consoles=(42,), processes=((4, 0), (500, 42), (600, 500)))
        with mock.patch.object(sys, "stdout", None):
            self.assertTrue(self.attach(k32, frozen=True))
        self.assertEqual(k32.attached, [-1, 42])
        self.assertEqual(k32.closed, [77])
        self.assertEqual(self.opened, [("CONOUT$", "w")])
        unknown = FakeKernel32(consoles=(42,), processes=((4, 0),))
        with mock.patch.object(sys, "stdout", None):
            self.assertFalse(self.attach(unknown, frozen=True))
        self.assertEqual(unknown.attached, [-1])

    def test_streams_given_by_the_parent_are_kept(self) -> None:
        k32 = FakeKernel32()
        pipe = io.StringIO()
        with mock.patch.object(sys, "stdin", None), mock.patch.object(sys, "stdout", pipe), \
                mock.patch.object(sys, "stderr", None):
            self.assertTrue(self.attach(k32))
            self.assertIs(sys.stdout, pipe)
        self.assertEqual(self.opened, [("CONIN$", "r"), ("CONOUT$", "w")])
        self.assertFalse(self.attach(k32))  # nothing missing: nothing to do

    def test_no_console_to_borrow_and_posix(self) -> None:
        k32 = FakeKernel32(consoles=())
        with mock.patch.object(sys, "stdout", None):
            self.assertFalse(self.attach(k32))
            self.assertIsNone(sys.stdout)
            self.assertFalse(self.attach(k32, platform="linux"))
        self.assertEqual(k32.attached, [-1])
        self.assertEqual(self.opened, [])

    def test_kernel32_prototypes(self) -> None:
        class DLL:  # stands in for ctypes.WinDLL, which exists only on Windows
            def __init__(self, name: str, use_last_error: bool = False) -> None:
                self.name = name

            def __getattr__(self, name: str):
                function = mock.Mock(spec=["restype", "argtypes"])
                setattr(self, name, function)
                return function

        with mock.patch.object(ctypes, "WinDLL", DLL, create=True):
            k32 = wp.load_kernel32()
        self.assertEqual(k32.name, "kernel32")
        self.assertIs(k32.CreateToolhelp32Snapshot.restype, ctypes.c_void_p)  # 64-bit handles
        self.assertIs(k32.Process32NextW.argtypes[1]._type_, wp.PROCESSENTRY32W)


# -- the entry: window or command line -------------------------------------------------------

class EntryTest(unittest.TestCase):
    def test_which_face(self) -> None:
        for argv in ([], ["--data-dir", "D"], ["--data-dir=D"], ["--data-dir", "run"], ["--minimized"]):
            self.assertFalse(entry.wants_cli(argv), argv)
        for argv in (["--version"], ["-h"], ["run"], ["--data-dir", "D", "account", "list"], ["bogus"]):
            self.assertTrue(entry.wants_cli(argv), argv)

    def test_every_cli_command_reaches_the_cli(self) -> None:
        import argparse
        from ismail.__main__ import build_parser
        subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        self.assertTrue({"run", "account", "check-config"} <= set(subs.choices))
        for name in subs.choices:
            self.assertTrue(entry.wants_cli([name]), name)

    def test_dispatch(self) -> None:
        seen: list[list[str]] = []
        self.assertEqual(entry.main(lambda argv: seen.append(argv) or 7, ["--data-dir", "D"]), 7)
        self.assertEqual(seen, [["--data-dir", "D"]])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(entry.main(seen.append, ["--version"]), 0)
        self.assertEqual(out.getvalue().strip(), f"ISMail {__version__}")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(entry.main(seen.append, ["bogus"]), 2)
        self.assertIn("invalid choice", err.getvalue())
        self.assertEqual(len(seen), 1, "the window must not open for a command")


# -- the icon --------------------------------------------------------------------------------

def _load_make_icon():
    spec = importlib.util.spec_from_file_location("make_icon", ROOT / "assets" / "make_icon.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _png_pixels(data: bytes) -> tuple[int, bytes]:
    """(width, raw scanlines) of one of our PNGs."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, width, idat = 8, 0, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width = struct.unpack(">I", body[:4])[0]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, zlib.decompress(idat)


class IconTest(unittest.TestCase):
    def test_ico_holds_the_four_sizes_as_png(self) -> None:
        data = (ROOT / "assets" / "ismail.ico").read_bytes()
        reserved, kind, count = struct.unpack("<HHH", data[:6])
        self.assertEqual((reserved, kind, count), (0, 1, 4))
        sizes = []
        for i in range(count):
            w, h, _c, _r, planes, bits, length, offset = struct.unpack("<BBBBHHII", data[6 + 16 * i:22 + 16 * i])
            self.assertEqual((w, planes, bits), (h, 1, 32))
            width, _ = _png_pixels(data[offset:offset + length])
            self.assertEqual(width, w or 256)
            sizes.append(width)
        self.assertEqual(sizes, [16, 32, 48, 256])

    def test_committed_files_match_the_generator(self) -> None:
        # Compare pixels, not bytes: another zlib may compress the same pixels differently.
        built = _load_make_icon().build()
        self.assertEqual(_png_pixels(built["ismail.png"]),
                         _png_pixels((ROOT / "assets" / "ismail.png").read_bytes()))


# -- the real build --------------------------------------------------------------------------

def require_build_tools(message: str) -> None:
    """Skip (developer machine) or fail (CI=true) when the build cannot be set up."""
    if IN_CI:
        raise AssertionError(message + " - CI=true, so this is a failure, not a skip")
    raise unittest.SkipTest(message)


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def build_venv() -> Path:
    """The venv with the pinned PyInstaller: made once, kept under the temp folder and
    reused while requirements-build.txt and this Python stay the same."""
    requirements = ROOT / "requirements-build.txt"
    key = hashlib.sha256(requirements.read_bytes() + sys.version.encode() + sys.executable.encode())
    venv = Path(tempfile.gettempdir()) / f"ismail-build-venv-{key.hexdigest()[:12]}"
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    ready = venv / "ismail-build-ready"
    with open(f"{venv}.lock", "a") as lock:
        if os.name != "nt":  # two test runs at once must not build one venv together
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        made = _run([sys.executable, "-m", "venv", str(venv)], 300)
        if made.returncode != 0:
            require_build_tools(f"cannot create a venv: {made.stderr.strip()[-500:]}")
        pip = _run([str(python), "-m", "pip", "install", "-r", str(requirements)], 600)
        if pip.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            require_build_tools("pip cannot install requirements-build.txt (no network?): "
                                + (pip.stderr or pip.stdout).strip()[-800:])
        ready.write_text(pip.stdout[-2000:])
    return python


@unittest.skipIf(os.name == "nt", ".github/workflows/windows.yml builds and smoke-runs ISMail.exe")
class FrozenBuildTest(unittest.TestCase):
    """build.spec with the pinned PyInstaller, once; then the binary as users run it."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = Path(tempfile.mkdtemp(prefix="ismail-build-"))
        try:
            python = build_venv()
            started = time.monotonic()
            env = {**os.environ, "PYINSTALLER_CONFIG_DIR": str(cls.tmp / "cache")}  # --clean clears it
            r = _run([str(python), "-m", "PyInstaller", "--noconfirm", "--clean", "--distpath",
                      str(cls.tmp / "dist"), "--workpath", str(cls.tmp / "work"), str(ROOT / "build.spec")],
                     900, cwd=ROOT, env=env)
            (cls.tmp / "build.log").write_text(r.stdout + r.stderr)
            if r.returncode != 0:
                raise AssertionError(f"PyInstaller failed:\n{r.stderr[-3000:]}")
            cls.build_seconds = time.monotonic() - started
        except BaseException:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise
        cls.binary = cls.tmp / "dist" / "ISMail"

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="ismail-frozen-"))
        self.addCleanup(shutil.rmtree, self.data, ignore_errors=True)
        self.port, self.pop3_port, self.imap_port = free_port(), free_port(), free_port()
        (self.data / "ismail.json").write_text(json.dumps({
            "server_name": "mx.example.test", "primary_domain": "example.test",
            "listen": [f"127.0.0.1:{self.port}"], "pop3": {"listen": [f"127.0.0.1:{self.pop3_port}"]},
            "imap": {"listen": [f"127.0.0.1:{self.imap_port}"]},
            # Nothing may leave loopback: anything going out waits for a SmartHost on a closed port.
            "smarthost": {"enabled": True, "host": "127.0.0.1", "port": 9, "exclusive": True, "tls": "none"}}))

    def ismail(self, *args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), *args], input=stdin, capture_output=True, text=True,
                              timeout=60, env=env, cwd=self.data)

    def test_version(self) -> None:
        r = self.ismail("--version")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, f"ISMail {__version__}"), r.stderr)

    @contextlib.contextmanager
    def serving(self):
        """The binary's `run` on this test's data folder: yields its log's path once the
        server greets; then SIGTERM, and a clean exit (0, no traceback) is asserted."""
        log_path = self.data / "run.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(self.binary), "--data-dir", str(self.data), "run"],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_banner("127.0.0.1", self.port, timeout=30)
            yield log_path
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        text = log_path.read_text(errors="replace")
        self.assertEqual(code, 0, text[-3000:])
        self.assertNotIn("Traceback", text)

    def send(self, sender: str, to: str, subject: str) -> None:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = sender, to, subject
        msg.set_content("Sent to the PyInstaller build.\n")
        with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as smtp:
            smtp.send_message(msg)

    def test_run_headless_accepts_mail_and_stops_cleanly(self) -> None:
        r = self.ismail("--data-dir", str(self.data), "account", "add", "user@example.test", stdin="secret-pw\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        with self.serving():
            self.send("sender@example.org", "user@example.test", "frozen")
            new = self.data / "mailboxes" / "example.test" / "user" / "new"
            deadline = time.monotonic() + 10
            while not (new.is_dir() and any(new.iterdir())) and time.monotonic() < deadline:
                time.sleep(0.05)
            files = list(new.iterdir())
            self.assertEqual(len(files), 1)
            self.assertIn(b"Subject: frozen", files[0].read_bytes())
            # Read over IMAP and POP3 too: their sessions' code loads with the first client
            # (imap/protocol.py), and the build must carry it and what it imports.
            imap = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
            try:
                imap.login("user@example.test", "secret-pw")
                imap.select("INBOX", readonly=True)
                status, found = imap.search(None, "SUBJECT", "frozen")
                self.assertEqual((status, found), ("OK", [b"1"]))
                status, data = imap.fetch(b"1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                self.assertIn(b"Subject: frozen", data[0][1])
            finally:
                imap.logout()
            pop = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
            try:
                pop.user("user@example.test")
                pop.pass_("secret-pw")
                self.assertIn(b"Subject: frozen", b"\r\n".join(pop.retr(1)[1]))
            finally:
                pop.quit()

    def test_the_frozen_build_relays_through_its_delivery_process(self) -> None:
        # The delivery process is the .exe itself, started with --delivery-process.
        from tests.test_courier import PID, Destination25
        dest = Destination25()
        self.addCleanup(dest.close)
        settings = json.loads((self.data / "ismail.json").read_text())
        settings["smarthost"]["port"] = dest.port
        settings["trusted_networks"] = ["127.0.0.1/32"]
        (self.data / "ismail.json").write_text(json.dumps(settings))
        with self.serving() as log_path:
            self.send("user@example.test", "friend@remote.test", "relayed")
            deadline = time.monotonic() + 30
            while not dest.received and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(len(dest.received), 1, log_path.read_text(errors="replace")[-3000:])
            self.assertIn(b"Subject: relayed", dest.received[0])
        self.assertRegex(log_path.read_text(errors="replace"), PID)

    def test_the_frozen_build_signs_with_the_openssl_it_carries(self) -> None:
        # The bundle holds _ssl and its libcrypto: DKIM's RSA must find it there too,
        # or every signature costs ~7 ms of pow() (it still works, only slowly).
        r = self.ismail("--data-dir", str(self.data), "dkim", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("RSA signatures by OpenSSL", r.stdout)

    def test_portable_copy_keeps_its_data_beside_it(self) -> None:
        marker = self.binary.parent / "portable.txt"
        marker.write_text("")
        self.addCleanup(marker.unlink)
        elsewhere = self.data / "home"
        env = {**os.environ, "ISMAIL_HOME": str(elsewhere)}
        r = self.ismail("account", "add", "user@localhost", stdin="secret-pw\n", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue((self.binary.parent / "data" / "accounts.json").is_file())
        self.assertFalse(elsewhere.exists())

    def test_window_opens_and_serves(self) -> None:
        """The Tk half of the bundle: on a virtual screen the window starts the server."""
        if not shutil.which("Xvfb"):
            require_build_tools("Xvfb is not installed (see .ci/run)")
        from tests.gui_support import VirtualScreen
        screen = VirtualScreen().start()
        self.addCleanup(screen.stop)
        log_path = self.data / "gui.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(self.binary), "--data-dir", str(self.data)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "DISPLAY": screen.display})
        try:
            try:
                wait_for_banner("127.0.0.1", self.port, timeout=30)
            except AssertionError:
                raise AssertionError(f"the window did not start the server; exit {proc.poll()}:\n"
                                     + log_path.read_text(errors="replace")[-3000:]) from None
            self.assertIsNone(proc.poll())
            proc.send_signal(signal.SIGTERM)  # a log-out: the window closes the clean way
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        text = log_path.read_text(errors="replace")
        self.assertEqual(code, 0, text[-3000:])
        self.assertNotIn("Traceback", text)


if __name__ == "__main__":
    unittest.main()
