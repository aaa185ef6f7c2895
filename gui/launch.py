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
import tkinter as tk
from tkinter import messagebox

from ismail.config import resolve_data_dir

from .app import MainWindow
from .controller import Controller
from .instance import InstanceLock

EXIT_ALREADY_RUNNING = 3


def _say(text: str) -> None:
    if sys.stderr is not None:  # pythonw and the windowed .exe have none
        print(f"ismail: {text}", file=sys.stderr)


def _close_on_signals(root: tk.Tk, window: MainWindow) -> None:
    """SIGTERM (a logout, `kill`) and Ctrl+C in a terminal close the window the clean way.

    Python runs signal handlers in the main thread between Tk events (the window's own
    timers wake Tk several times a second), so the handler may schedule Tk work.
    """
    def handler(signum: int, frame: object) -> None:
        logging.getLogger("ismail.gui").info("signal %s received: closing", signum)
        root.after_idle(window.close)

    for name in ("SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            try:
                signal.signal(getattr(signal, name), handler)
            except (ValueError, OSError):  # not the main thread, or not allowed here
                pass


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
        _close_on_signals(root, window)
        root.deiconify()
        window.start_server()
        root.mainloop()
    finally:
        if mail_log is not None:
            mail_log.flush()  # logging.shutdown() closes it at exit; closing twice is not safe
        lock.release()
    return 0
