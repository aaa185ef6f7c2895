"""One program, two faces: ``ISMail.exe`` opens the window, ``ISMail.exe run`` is the command line.

The release is a single windowed executable built from ``ismail.pyw``.  Users double-click
it (no arguments: the window); administrators and the build's smoke test type
``ISMail --version`` or ``ISMail --data-dir D account add ...`` (the command line of
``python3 -m ismail``).  ``main()`` tells the two apart by the arguments alone:

* ``--version``, ``-h`` or ``--help``, or any word that is not an option (``run``,
  ``account``, a misspelt command ...) goes to the command line.  The window takes no
  such words, and the command line says clearly what it does not know, where an argparse
  error in a windowed program would vanish unseen.
* Everything else (nothing, ``--data-dir DIR``, other window options) opens the window.

A windowed .exe has no console, so on the command-line path it first borrows the console
it was started from (``attach_parent_console``; a no-op elsewhere).
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Any, Callable, Sequence

from .platform import winplatform

CLI_FLAGS = frozenset({"--version", "-h", "--help"})
_VALUE_OPTIONS = frozenset({"--data-dir"})  # options of both faces that take a value


def wants_cli(argv: Sequence[str]) -> bool:
    """True if ``argv`` (without the program name) asks for the command line."""
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        if arg in CLI_FLAGS:
            return True
        if arg in _VALUE_OPTIONS:
            skip_value = True
            continue
        if not arg.startswith("-"):
            return True  # a command word: the window takes none
    return False


def run_cli(argv: Sequence[str]) -> int:
    attach_parent_console()
    from .__main__ import main as cli_main
    try:
        return cli_main(list(argv))
    except SystemExit as e:  # argparse's --version, --help and usage errors
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("text"): what Python itself would do
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()


def main(gui_main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run the command line or ``gui_main`` (the window's own ``main(argv)``) for ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--delivery-process"]:  # the server's own helper (queue/courier.py)
        from .queue.courier_child import child_main
        return child_main()
    if wants_cli(args):
        return run_cli(args)
    return gui_main(args)


# -- a console for the windowed .exe ---------------------------------------------------------

def attach_parent_console(*, platform: str | None = None, kernel32: Any = None,
                          opener: Callable[..., Any] = open, frozen: bool | None = None,
                          parent_pid: Callable[[], int] = os.getppid) -> bool:
    """Give the windowed .exe the console it was started from; True if streams were reopened.

    A GUI-subsystem program starts without standard streams unless its parent passed some
    (a pipe, a file): those are kept.  Only streams that are missing are opened on the
    borrowed console (CONIN$/CONOUT$).  POSIX programs always have their streams: no-op.
    """
    if (platform or sys.platform) != "win32":
        return False
    missing = [name for name in ("stdin", "stdout", "stderr") if getattr(sys, name) is None]
    if not missing:
        return False
    k32 = kernel32 if kernel32 is not None else winplatform.load_kernel32()
    if frozen is None:
        frozen = bool(getattr(sys, "frozen", False))
    if not _attach_console(k32, frozen, parent_pid):
        return False  # started by Explorer, or from no console at all: nowhere to print
    for name in missing:
        if name == "stdin":
            stream = opener("CONIN$", "r", encoding="utf-8", errors="replace")
        else:
            # CONOUT$ opens as a console stream that takes UTF-8 and writes real Unicode.
            stream = opener("CONOUT$", "w", encoding="utf-8", errors="replace", buffering=1)
        setattr(sys, name, stream)
    # The shell printed its prompt already (it does not wait for a windowed program):
    # start on a fresh line so the output is not glued to the prompt.
    if "stdout" in missing:
        sys.stdout.write("\n")
    return True


def _attach_console(k32: Any, frozen: bool, parent_pid: Callable[[], int]) -> bool:
    if k32.AttachConsole(winplatform.ATTACH_PARENT_PROCESS):
        return True
    # A one-file build runs as the child of its own unpacking process, which is windowed
    # too and has no console: the console to borrow is the one of *its* parent (cmd.exe).
    if frozen:
        grandparent = _parent_of(parent_pid(), k32)
        if grandparent and k32.AttachConsole(grandparent):
            return True
    return False


def _parent_of(pid: int, k32: Any) -> int | None:
    """The parent process id of ``pid``, from a Toolhelp process snapshot."""
    snapshot = k32.CreateToolhelp32Snapshot(winplatform.TH32CS_SNAPPROCESS, 0)
    if snapshot in (None, 0, -1, ctypes.c_void_p(-1).value):
        return None
    try:
        entry = winplatform.PROCESSENTRY32W()
        entry.dwSize = ctypes.sizeof(winplatform.PROCESSENTRY32W)
        more = k32.Process32FirstW(snapshot, ctypes.byref(entry))
        while more:
            if entry.th32ProcessID == pid:
                return int(entry.th32ParentProcessID) or None
            more = k32.Process32NextW(snapshot, ctypes.byref(entry))
        return None
    finally:
        k32.CloseHandle(snapshot)
