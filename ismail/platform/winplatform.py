"""What ISMail does differently on Windows, one small function per difference.

Each public function picks a Windows twin or a POSIX twin.  The twins take the operating
system's interface as a parameter (the ``winreg`` module, the ``kernel32`` DLL, the ``signal``
module, a folder), so the Windows code runs in the Linux test suite against fakes; nothing
here touches the system at import time, and importing this module is safe everywhere.

* Autostart at log-on: the current user's ``Run`` key on Windows; an XDG autostart
  ``.desktop`` file elsewhere (what GNOME, KDE, Xfce ... read at log-in).
* Portable mode: a ``portable.txt`` beside the frozen executable keeps the data beside it.
* ``program_command()``: the command line that starts this program, for the autostart entry.
* Log-off and shutdown: ``install_shutdown_hook()`` calls back so the server stops cleanly.

The windowed .exe's borrowing of a console for its command line is in ``ismail.entry``.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shlex
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger("ismail.winplatform")

APP_NAME = "ISMail"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
PORTABLE_MARKER = "portable.txt"
PORTABLE_DATA = "data"
DESKTOP_FILE = "ismail.desktop"
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent  # ismail/platform/ -> the project

# SetConsoleCtrlHandler events (wincon.h).  Ctrl+C and Ctrl+Break are left to Python,
# which turns them into SIGINT and SIGBREAK; the other three end the process once the
# handler returns, so the handler must not return before the server has stopped.
CTRL_C_EVENT, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT = 0, 1, 2
CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT = 5, 6
_ENDING_EVENTS = (CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT)
# Windows ends a console process 5 s after CTRL_CLOSE_EVENT whatever the handler does (up to
# 20 s at log-off and shutdown); the server's own stop grace is 10 s.
SHUTDOWN_GRACE_SECONDS = 10.0
ATTACH_PARENT_PROCESS = -1  # AttachConsole(DWORD -1): the console of the parent process


def _is_windows(platform: str | None) -> bool:
    return (platform or sys.platform) == "win32"


def _frozen(frozen: bool | None) -> bool:
    return bool(getattr(sys, "frozen", False)) if frozen is None else frozen


# -- autostart at log-on ---------------------------------------------------------------------

def set_autostart(enabled: bool, command: str | None = None, *, platform: str | None = None,
                  winreg: ModuleType | Any = None, config_home: Path | None = None) -> None:
    """Start ISMail when this user logs on (``enabled``), or stop doing so.

    ``command`` is a command line as ``program_command()`` makes it (its default): Windows
    quoting on Windows, shell quoting elsewhere.  OSError if the entry cannot be written.
    """
    if enabled and not command:
        command = program_command(platform=platform)
    if _is_windows(platform):
        _set_autostart_windows(enabled, command or "", winreg or _winreg())
    else:
        _set_autostart_xdg(enabled, command or "", _autostart_dir(config_home))


def autostart_command(*, platform: str | None = None, winreg: ModuleType | Any = None,
                      config_home: Path | None = None) -> str | None:
    """The command registered to start at log-on, or None if there is none.

    The GUI can compare it with ``program_command()`` to notice an .exe that was moved.
    """
    if _is_windows(platform):
        return _autostart_command_windows(winreg or _winreg())
    return _autostart_command_xdg(_autostart_dir(config_home))


def autostart_enabled(**kwargs: Any) -> bool:
    """True if ISMail starts when this user logs on (same keyword arguments as above)."""
    return autostart_command(**kwargs) is not None


def _winreg() -> ModuleType:
    import winreg  # only on Windows; the tests pass a fake instead
    return winreg


def _set_autostart_windows(enabled: bool, command: str, reg: Any) -> None:
    # HKCU needs no administrator rights, and the entry leaves with the user's profile.
    with reg.CreateKeyEx(reg.HKEY_CURRENT_USER, RUN_KEY, 0, reg.KEY_SET_VALUE) as key:
        if enabled:
            reg.SetValueEx(key, APP_NAME, 0, reg.REG_SZ, command)
            return
        try:
            reg.DeleteValue(key, APP_NAME)
        except FileNotFoundError:
            pass  # already off


def _autostart_command_windows(reg: Any) -> str | None:
    try:
        with reg.OpenKey(reg.HKEY_CURRENT_USER, RUN_KEY, 0, reg.KEY_QUERY_VALUE) as key:
            value, _kind = reg.QueryValueEx(key, APP_NAME)
    except FileNotFoundError:
        return None
    # (Task Manager's Startup tab can switch an entry off elsewhere, under Explorer's
    # StartupApproved key; the entry itself is what ISMail owns and reports.)
    return value if isinstance(value, str) and value.strip() else None


def _autostart_dir(config_home: Path | None, environ: Mapping[str, str] = os.environ) -> Path:
    if config_home is None:
        xdg = environ.get("XDG_CONFIG_HOME", "")
        config_home = Path(xdg) if xdg else Path.home() / ".config"
    return Path(config_home) / "autostart"


def _desktop_exec_arg(arg: str) -> str:
    """Quote one argument for a .desktop Exec= line (Desktop Entry Specification, "Exec key")."""
    # The reserved characters force quoting; inside quotes ", `, $ and \ take a backslash.
    # The whole value is then a desktop "string", where a backslash is itself escaped.
    # A literal % is written %% in Exec, quoted or not.
    reserved = set(" \t\n\"'\\><~|&;$*?#()`")
    arg = arg.replace("%", "%%")
    if arg and not (set(arg) & reserved):
        return arg
    quoted = "".join("\\" + ch if ch in '"`$\\' else ch for ch in arg)
    return ('"' + quoted + '"').replace("\\", "\\\\")


def desktop_entry(command: str) -> str:
    """The text of the XDG autostart file for ``command`` (a shell-quoted command line)."""
    args = shlex.split(command)
    if not args or any(ch in arg for arg in args for ch in "\r\n"):
        raise ValueError(f"cannot write {command!r} as a desktop entry command")
    exec_line = " ".join(_desktop_exec_arg(a) for a in args)
    return ("[Desktop Entry]\n"
            "Type=Application\n"
            f"Name={APP_NAME}\n"
            "Comment=Mail server for your own domains\n"
            f"Exec={exec_line}\n"
            "Terminal=false\n"
            "X-GNOME-Autostart-enabled=true\n")


def _desktop_exec_to_command(exec_line: str) -> str:
    """Undo _desktop_exec_arg for a whole Exec= value, back to a shell command line."""
    args, current, quoted, i, started = [], [], False, 0, False
    text = exec_line.replace("\\\\", "\\")  # the desktop "string" escape
    while i < len(text):
        ch = text[i]
        if quoted and ch == "\\" and i + 1 < len(text):
            current.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            quoted, started = not quoted, True
        elif ch == " " and not quoted:
            if started or current:
                args.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
        i += 1
    if started or current:
        args.append("".join(current))
    return shlex.join(a.replace("%%", "%") for a in args)


def _set_autostart_xdg(enabled: bool, command: str, folder: Path) -> None:
    path = folder / DESKTOP_FILE
    if not enabled:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(desktop_entry(command), encoding="utf-8")
    os.replace(tmp, path)  # a session starting right now reads the old file or the new one


def _autostart_command_xdg(folder: Path) -> str | None:
    try:
        text = (folder / DESKTOP_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), value.strip())
    # A desktop's own "turn off" switches leave the file but mean "do not start".
    if values.get("Hidden", "").lower() == "true" or \
            values.get("X-GNOME-Autostart-enabled", "true").lower() == "false":
        return None
    exec_line = values.get("Exec", "")
    return _desktop_exec_to_command(exec_line) if exec_line else None


# -- where the program and its data live -----------------------------------------------------

def portable_data_dir(*, executable: str | None = None, frozen: bool | None = None) -> Path | None:
    """DATA for a portable copy: ``data`` beside the .exe when ``portable.txt`` is there too.

    Only the frozen program (the .exe, or the Linux binary) can be portable: run from source,
    the folder beside ``sys.executable`` is the Python installation, not ISMail's.
    """
    if not _frozen(frozen):
        return None
    # In a one-file build sys.executable is the .exe the user started, not the unpacked copy.
    here = Path(executable or sys.executable).resolve().parent
    if (here / PORTABLE_MARKER).is_file():
        return here / PORTABLE_DATA
    return None


def program_argv(args: Sequence[str] = (), *, platform: str | None = None, frozen: bool | None = None,
                 executable: str | None = None, script: Path | None = None) -> list[str]:
    """The arguments that start the window of this program, followed by ``args``."""
    exe = executable or sys.executable
    if _frozen(frozen):
        return [str(Path(exe).resolve()), *args]
    script = script or PROJECT_ROOT / "ismail.pyw"
    if _is_windows(platform):
        # pythonw.exe: python.exe would open a console window beside ISMail's own at log-on.
        pythonw = Path(exe).with_name("pythonw.exe")
        exe = str(pythonw) if pythonw.exists() else exe
    return [str(exe), str(script), *args]


def program_command(args: Sequence[str] = (), *, platform: str | None = None, **kwargs: Any) -> str:
    """``program_argv()`` as one command line: Windows quoting on Windows, shell quoting elsewhere."""
    argv = program_argv(args, platform=platform, **kwargs)
    if _is_windows(platform):
        import subprocess  # here: the server itself has no use for it at start
        return subprocess.list2cmdline(argv)
    return shlex.join(argv)


def asset_path(name: str, *, frozen: bool | None = None) -> Path:
    """A file from ``assets/`` (the icon), inside the bundle when frozen, else in the project."""
    if _frozen(frozen) and hasattr(sys, "_MEIPASS"):
        return Path(sys._MEIPASS) / "assets" / name  # type: ignore[attr-defined]
    return PROJECT_ROOT / "assets" / name


# -- log-off and shutdown --------------------------------------------------------------------

class ShutdownHook:
    """What ``install_shutdown_hook`` set up.  Call ``done()`` once the clean stop has finished:
    on Windows the console handler holds the process alive until then (or the grace period).
    """

    def __init__(self) -> None:
        self.events: list[str] = []       # what was hooked, for the log and the tests
        self._done = threading.Event()
        self._keep: list[Any] = []        # ctypes callbacks must live as long as the hook

    def done(self) -> None:
        self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


def install_shutdown_hook(callback: Callable[[], None], *, tk_root: Any = None,
                          platform: str | None = None, kernel32: Any = None,
                          signal_module: ModuleType | Any = None,
                          grace: float = SHUTDOWN_GRACE_SECONDS) -> ShutdownHook:
    """Call ``callback`` when the user logs off or the machine shuts down.

    * The Tk window (``tk_root``): Tk on Windows turns WM_QUERYENDSESSION into the
      WM_SAVE_YOURSELF protocol of each top-level window and runs it at once, in the main
      thread, while Windows waits; so ``callback`` may stop the server right there.  Closing
      the window is WM_DELETE_WINDOW, which the GUI handles itself.
    * Windows, with a console: SetConsoleCtrlHandler for close, log-off and shutdown.  The
      handler runs in a thread of the system's; it calls ``callback`` (which should only ask
      the main thread to stop) and waits for ``ShutdownHook.done()`` or ``grace`` seconds,
      because the process ends as soon as it returns.  (Windows sends no log-off/shutdown
      events to console handlers of a process with windows: the Tk hook covers those.)
    * POSIX: SIGTERM and SIGHUP (a closed terminal, the end of a desktop session) call
      ``callback`` in the main thread; call this from the main thread.  In a Tk program the
      callback runs between two Tk events, so it should only schedule the stop
      (``root.after(0, ...)``).  X11's WM_SAVE_YOURSELF is not hooked: there it means "save
      your state", not "you are about to end".
    """
    hook = ShutdownHook()
    if _is_windows(platform):
        if tk_root is not None:
            tk_root.protocol("WM_SAVE_YOURSELF", callback)
            hook.events.append("WM_SAVE_YOURSELF")
        _install_console_handler(callback, hook, kernel32 if kernel32 is not None else load_kernel32(), grace)
    else:
        _install_signal_handlers(callback, hook, signal_module or _signal())
    return hook


def _signal() -> ModuleType:
    import signal
    return signal


def _console_handler_type() -> Any:
    # BOOL WINAPI HandlerRoutine(DWORD); CFUNCTYPE stands in where WINFUNCTYPE does not exist.
    factory = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)
    return factory(ctypes.c_int, ctypes.c_uint)


def _install_console_handler(callback: Callable[[], None], hook: ShutdownHook, kernel32: Any,
                             grace: float) -> None:
    if not kernel32.GetConsoleWindow():
        return  # no console (the windowed .exe, pythonw): no console events will ever come

    def on_event(event: int) -> int:
        if event not in _ENDING_EVENTS:
            return 0  # Ctrl+C / Ctrl+Break: let Python's SIGINT/SIGBREAK handling have them
        log.info("Windows console event %s: stopping", event)
        try:
            callback()
        except Exception:  # a raise here would be lost in a thread nobody joins
            log.exception("the shutdown callback failed")
        hook.wait(grace)
        return 1

    handler = _console_handler_type()(on_event)
    hook._keep.append(handler)
    if not kernel32.SetConsoleCtrlHandler(handler, True):
        log.warning("SetConsoleCtrlHandler failed; log-off may not stop ISMail cleanly")
        return
    hook.events.append("console")


def _install_signal_handlers(callback: Callable[[], None], hook: ShutdownHook, sig: Any) -> None:
    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s received: stopping", signum)
        callback()

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(sig, name):
            sig.signal(getattr(sig, name), on_signal)
            hook.events.append(name)


# -- kernel32, for this module and ismail.entry ----------------------------------------------

TH32CS_SNAPPROCESS = 0x2
MAX_PATH = 260


class PROCESSENTRY32W(ctypes.Structure):
    _fields_ = [("dwSize", ctypes.c_uint32), ("cntUsage", ctypes.c_uint32),
                ("th32ProcessID", ctypes.c_uint32), ("th32DefaultHeapID", ctypes.c_size_t),
                ("th32ModuleID", ctypes.c_uint32), ("cntThreads", ctypes.c_uint32),
                ("th32ParentProcessID", ctypes.c_uint32), ("pcPriClassBase", ctypes.c_long),
                ("dwFlags", ctypes.c_uint32), ("szExeFile", ctypes.c_wchar * MAX_PATH)]


def load_kernel32() -> Any:
    """kernel32 with the prototypes used here and in ismail.entry: handles are pointer-sized, and the
    default int return type would cut a 64-bit handle in half."""
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    k32.GetConsoleWindow.restype = ctypes.c_void_p
    k32.CreateToolhelp32Snapshot.restype = ctypes.c_void_p
    k32.CreateToolhelp32Snapshot.argtypes = [ctypes.c_uint32, ctypes.c_uint32]
    for name in ("Process32FirstW", "Process32NextW"):
        getattr(k32, name).argtypes = [ctypes.c_void_p, ctypes.POINTER(PROCESSENTRY32W)]
    k32.CloseHandle.argtypes = [ctypes.c_void_p]
    return k32
