"""Double-click start: one window, one server, one instance per data folder.

``python3 ismail.pyw [--data-dir DIR]`` (or the .exe) comes here.  Nothing in this path
may end in a traceback nobody sees (a windowed program has no console): problems are
told in a message box, and the details go to the mail log.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import tkinter as tk
from tkinter import messagebox
from typing import Any

from ismail.platform import winplatform
from ismail.config import resolve_data_dir

from .app import MainWindow
from .controller import Controller
from .instance import InstanceLock

EXIT_ALREADY_RUNNING = 3


def _say(text: str) -> None:
    if sys.stderr is not None:  # pythonw and the windowed .exe have none
        print(f"ismail: {text}", file=sys.stderr)


def end_cleanly_on_session_end(root: tk.Misc, window: MainWindow, *, platform: str | None = None,
                               **hook_options: Any) -> winplatform.ShutdownHook:
    """Log-off, shutdown, SIGTERM, SIGHUP and Ctrl+C stop the server cleanly before ISMail ends.

    One callback for every way in (``winplatform.install_shutdown_hook`` picks them for the
    system; Ctrl+C is added here): ``MainWindow.end_session``, which returns once the server
    has stopped.  Tk is called from the main thread only:

    * Windows' WM_SAVE_YOURSELF (Tk's log-off / shutdown message) runs in the Tk thread
      while Windows waits, so the stop happens right there;
    * a signal handler runs in the main thread but between any two Python lines, so it
      only schedules the stop with ``after()``; the window's timers wake Tk within 250 ms;
    * the Windows console handler runs in a thread of its own: the server stops in that
      thread, ``hook.done()`` lets Windows go on, and the window closes at its next tick.

    ``platform`` and ``hook_options`` (``kernel32``, ``signal_module``) are for the tests.
    """
    hook: winplatform.ShutdownHook | None = None
    windows = (platform or sys.platform) == "win32"

    def from_signal(*_args: object) -> None:
        root.after(0, window.end_session)

    def on_end() -> None:
        if threading.current_thread() is not threading.main_thread():
            window.end_session()
            if hook is not None:
                hook.done()
        elif windows:
            window.end_session()
        else:
            from_signal()

    hook = winplatform.install_shutdown_hook(on_end, tk_root=root, platform=platform, **hook_options)
    sig = hook_options.get("signal_module") or signal
    try:
        sig.signal(sig.SIGINT, from_signal)
        hook.events.append("SIGINT")
    except (ValueError, OSError):  # not the main thread, or not allowed here
        pass
    return hook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ismail.pyw", description="ISMail, the window.")
    parser.add_argument("--data-dir", metavar="DIR", help="data folder (default: $ISMAIL_HOME, "
                        "else %%APPDATA%%\\ISMail on Windows, ~/.local/share/ismail elsewhere)")
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    try:
        root = tk.Tk(className="ISMail")
    except tk.TclError as e:
        _say(f"cannot open a window ({e}); use `python3 -m ismail run` without a display")
        return 1
    root.withdraw()
    lock = InstanceLock(data_dir)
    try:
        held = lock.acquire()
    except OSError as e:
        messagebox.showerror("ISMail cannot start", f"ISMail cannot use its data folder\n{data_dir}\n\n"
                             f"{e.strerror or e}")
        root.destroy()
        return 1
    if not held:
        pid = lock.holder()
        detail = (f"It uses the data folder {data_dir}" + (f" (process {pid})." if pid else ".") +
                  "\n\nUse the window that is open already. To run a second ISMail, give it "
                  "another data folder with --data-dir.")
        _say("ISMail is already running. " + detail.replace("\n", " "))
        messagebox.showinfo("ISMail is already running", "ISMail is already running.", detail=detail)
        root.destroy()
        return EXIT_ALREADY_RUNNING
    mail_log = None
    controller: Controller | None = None
    try:
        from ismail.logsetup import setup_logging
        try:
            mail_log = setup_logging(data_dir, to_stderr=False)
        except OSError as e:
            _say(f"cannot write the mail log in {data_dir / 'logs'}: {e}")
        controller = Controller(data_dir)
        window = MainWindow(root, controller)
        if mail_log is None:
            logging.getLogger("ismail.gui").error("the mail log cannot be written in %s", data_dir / "logs")
        controller.load_settings()
        end_cleanly_on_session_end(root, window)
        root.deiconify()
        window.on_open()  # starts SMTP unless program.start_server_on_open is off
        root.mainloop()
    finally:
        if controller is not None:
            controller.shutdown()  # however the window went, the server stops before the process
        if mail_log is not None:
            mail_log.flush()  # logging.shutdown() closes it at exit; closing twice is not safe
        lock.release()
    return 0
