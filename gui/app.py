"""The main window: is the server running, what is it doing, and every setting a menu away.

Tk lives in the main thread.  The server's threads reach the window only through queues:
log records through ``QueueLogHandler`` (the activity pane, the original's Real-time
Monitor), finished jobs through ``Pump``.  The figures are read from the server's Stats
once a second.  Starting and stopping run in a thread, so the window never freezes even
while open sessions get their grace period - except at log-off, shutdown or SIGTERM
(``end_session``), when the stop is done on the spot so it is over before the process is.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import tkinter as tk
import tkinter.font
from tkinter import messagebox, ttk

from ismail import __version__

from .controller import Controller, StartProblem
from .events import Pump, QueueLogHandler, attach
from .helpwin import readme_window
from .queueview import QueueWindow
from .settings import PAGES, ConfigDialog
from .statsview import StatisticsWindow
from .tools import PortTestDialog, SmartHostTestDialog
from .widgets import PAD, ErrorLabel, Query, friendly, set_icon, setup_style

ACTIVITY_LINES = 500
TICK_MS = 250          # activity pane
FIGURES_EVERY = 4      # ticks: the figures refresh about once a second
NOT_STARTED = ("Not started when ISMail opened, as set in Settings > Program. "
               "Click Start to serve mail.")

log = logging.getLogger("ismail.gui")


class MainWindow:
    def __init__(self, root: tk.Tk, controller: Controller, *, _utest: bool = False) -> None:
        self.root = root
        self.controller = controller
        self._utest = _utest
        self.state = "stopped"
        self.closing = False
        self.problem: StartProblem | None = None
        self.dialog: ConfigDialog | None = None
        self.stopped_note = ""          # shown beside "Stopped" when no problem is
        self._ended = threading.Event()  # end_session() ran in another thread: close at the next tick
        self._gone = False
        setup_style(root)
        root.title("ISMail")
        self.icon = set_icon(root)
        root.protocol("WM_DELETE_WINDOW", self.close)
        root.minsize(640, 460)
        self.pump = Pump(root)
        self.log_handler = QueueLogHandler()
        self._detach = attach(self.log_handler)
        self._build_menus()
        self._build_body()
        self._ticks = 0
        self._after = root.after(TICK_MS, self._tick)
        self.refresh_figures()

    # -- building ------------------------------------------------------------------------------
    def _build_menus(self) -> None:
        bar = tk.Menu(self.root)
        menus = {
            "File": [("Open data folder", self.open_data_folder), None, ("Exit", self.close)],
            "Settings": [(f"{p}…", lambda p=p: self.open_settings(p))
                         for p in PAGES],
            "Tools": [("Test port 25…", self.open_port_test), ("Test SmartHost…", self.open_smarthost_test),
                      None, ("Queue…", self.open_queue), ("Statistics…", self.open_statistics)],
            "Help": [("README", self.show_readme), ("About ISMail", self.show_about)],
        }
        for title, items in menus.items():
            menu = tk.Menu(bar, tearoff=False)
            for item in items:
                if item is None:
                    menu.add_separator()
                else:
                    menu.add_command(label=item[0], command=item[1])
            bar.add_cascade(label=title, menu=menu)
        self.root.configure(menu=bar)
        self.menubar = bar

    def _build_body(self) -> None:
        body = ttk.Frame(self.root, padding=PAD * 2)
        body.grid(row=0, column=0, sticky="nsew")
        self.root.columnconfigure(0, weight=1)
        self.root.rowconfigure(0, weight=1)
        body.columnconfigure(0, weight=1)
        body.rowconfigure(3, weight=1)

        top = ttk.Frame(body)
        top.grid(row=0, column=0, sticky="ew")
        top.columnconfigure(1, weight=1)
        self.state_label = ttk.Label(top, text="Stopped", style="Stopped.TLabel", width=11)
        self.state_label.grid(row=0, column=0, sticky="w")
        where = ttk.Frame(top)
        where.grid(row=0, column=1, sticky="w", padx=(PAD, 0))
        # SMTP's and POP3's lines (or what the window is doing), then IMAP's, shown only while running.
        self.listening_label = ttk.Label(where, text="", wraplength=400, justify="left",
                                         style="Lines.TLabel")  # wraps: keeps the buttons in view
        self.listening_label.grid(row=0, column=0, sticky="w")
        self.imap_listening_label = ttk.Label(where, text="", wraplength=400, justify="left", style="Lines.TLabel")
        self.imap_listening_label.grid(row=1, column=0, sticky="w")
        self.imap_listening_label.grid_remove()
        self.start_button = ttk.Button(top, text="Start", command=self.start_server)  # every protocol
        self.start_button.grid(row=0, column=2, padx=(PAD, 4))
        self.stop_button = ttk.Button(top, text="Stop", command=self.stop_server)
        self.stop_button.grid(row=0, column=3)

        self.problem_frame = ttk.Frame(body)
        self.problem_frame.grid(row=1, column=0, sticky="ew", pady=(PAD, 0))
        self.problem_frame.columnconfigure(0, weight=1)
        self.problem_label = ErrorLabel(self.problem_frame, wraplength=620, row=0, column=0, sticky="w")
        self.change_port_button = ttk.Button(self.problem_frame, text="Change port…", command=self.change_port)
        self.fix_settings_button = ttk.Button(self.problem_frame, text="Open settings…",
                                              command=lambda: self.open_settings(self._problem_page()))
        self.problem_frame.grid_remove()

        figures = ttk.LabelFrame(body, text="Now", padding=(PAD * 2, PAD))
        figures.grid(row=2, column=0, sticky="ew", pady=(PAD, 0))
        figures.columnconfigure(2, minsize=40)
        self.figure_labels: dict[str, ttk.Label] = {}
        layout = (("incoming", "SMTP connections:", 0, 0), ("pop3", "POP3 connections:", 1, 0),
                  ("imap", "IMAP connections:", 2, 0), ("outgoing", "Outgoing connections:", 3, 0),
                  ("received", "Messages received:", 0, 3), ("sent", "Messages sent:", 1, 3),
                  ("deferred", "Deferred (will retry):", 2, 3), ("bounced", "Bounced:", 3, 3),
                  ("queue", "Waiting in the queue:", 4, 3))
        for key, text, row, col in layout:
            ttk.Label(figures, text=text).grid(row=row, column=col, sticky="w", padx=(0, PAD), pady=1)
            value = ttk.Label(figures, text="0", style="Figure.TLabel")
            value.grid(row=row, column=col + 1, sticky="w", pady=1)
            self.figure_labels[key] = value

        activity = ttk.LabelFrame(body, text="Activity", padding=PAD)
        activity.grid(row=3, column=0, sticky="nsew", pady=(PAD, 0))
        activity.columnconfigure(0, weight=1)
        activity.rowconfigure(0, weight=1)
        self.activity = tk.Text(activity, height=14, width=90, wrap="word", state="disabled",
                                relief="flat", highlightthickness=0, font="TkFixedFont")
        # A long line wraps under its text, not under its time stamp.
        indent = tk.font.Font(font="TkFixedFont").measure("00:00:00  ")
        self.activity.tag_configure("line", lmargin2=indent)
        self.activity.grid(row=0, column=0, sticky="nsew")
        ys = ttk.Scrollbar(activity, orient="vertical", command=self.activity.yview)
        ys.grid(row=0, column=1, sticky="ns")
        self.activity.configure(yscrollcommand=ys.set)

        bottom = ttk.Frame(body)
        bottom.grid(row=4, column=0, sticky="ew", pady=(PAD, 0))
        ttk.Label(bottom, text=f"Data folder: {self.controller.data_dir}", style="Hint.TLabel").pack(side="left")
        ttk.Label(bottom, text=f"ISMail {__version__}", style="Hint.TLabel").pack(side="right")
        self._sync_buttons()

    # -- state ---------------------------------------------------------------------------------
    def set_state(self, state: str, problem: StartProblem | None = None) -> None:
        self.state = state
        self.problem = problem
        text = {"running": "Running", "stopped": "Stopped", "starting": "Starting…",
                "stopping": "Stopping…"}[state]
        self.state_label.configure(text=text, style="Running.TLabel" if state == "running" else "Stopped.TLabel")
        if problem is None:
            self.problem_frame.grid_remove()
        else:
            self.problem_label.show(problem.text)
            self.change_port_button.grid_forget()
            self.fix_settings_button.grid_forget()
            if problem.listen:
                self.change_port_button.grid(row=0, column=1, sticky="ne", padx=(PAD, 4))
            self.fix_settings_button.grid(row=0, column=2, sticky="ne", padx=(PAD if not problem.listen else 0, 0))
            self.problem_frame.grid()
        self._sync_buttons()
        self.refresh_figures()

    def _sync_buttons(self) -> None:
        self.start_button.state(["!disabled"] if self.state == "stopped" and not self.closing else ["disabled"])
        self.stop_button.state(["!disabled"] if self.state == "running" and not self.closing else ["disabled"])

    def _problem_page(self) -> str:
        return "Connections" if self.problem is not None and self.problem.listen else "Domain"

    def on_open(self) -> None:
        """The program has opened: start serving, unless Settings > Program says not to."""
        s = self.controller.settings
        if s is not None and not s.program.start_server_on_open:
            log.info("the server was not started: program.start_server_on_open is off")
            self.stopped_note = NOT_STARTED
            self.set_state("stopped")
            return
        self.start_server()  # with unusable settings, this is what explains them

    def start_server(self) -> None:
        if self.state != "stopped" or self.closing:
            return
        self.stopped_note = ""
        self.set_state("starting")
        self.pump.run(self.controller.start, self._started, name="server-start")

    def _started(self, problem: StartProblem | None, error: BaseException | None) -> None:
        if error is not None:
            problem = StartProblem(f"ISMail could not start: {error}", listen=False)
        if self.closing:
            self.set_state("running" if problem is None else "stopped")
            self.close()
            return
        self.set_state("stopped" if problem else "running", problem)

    def stop_server(self) -> None:
        if self.state != "running":
            return
        self.set_state("stopping")
        self.pump.run(self.controller.stop, self._stopped, name="server-stop")

    def _stopped(self, _result: None, _error: BaseException | None) -> None:
        self.set_state("stopped")
        if self.closing:
            self._destroy()

    def close(self) -> None:
        """Closing the window stops the server cleanly first, and says so while it does."""
        if self.state in ("starting", "stopping"):
            self.closing = True  # finish that first; _started / _stopped come back here
            self._sync_buttons()
            return
        self.closing = True
        self._sync_buttons()
        if self.state == "running":
            self.state = "stopping"
            self.state_label.configure(text="Stopping…", style="Stopped.TLabel")
            f = self.controller.figures()
            others = "".join(f" and the {name} server" for name, where in
                             (("POP3", f.pop3_listening), ("IMAP", f.imap_listening)) if where)
            self.imap_listening_label.grid_remove()
            self.listening_label.configure(text=f"Closing: stopping the SMTP server{others} cleanly "
                                                "(open sessions may take a few seconds to finish)…")
            self.pump.run(self.controller.stop, lambda r, e: self._destroy(), name="server-stop")
        else:
            self._destroy()

    def end_session(self) -> None:
        """Log-off, shutdown, SIGTERM: the server has stopped when this returns; then the window closes.

        Called in the Tk thread (WM_SAVE_YOURSELF; a signal, through after()) it closes the
        window at once; from another thread (the Windows console handler) it touches no Tk,
        and the window closes at its next tick.  A start or stop under way is waited for.
        """
        self.closing = True
        if threading.current_thread() is not threading.main_thread():
            self.controller.shutdown()
            self._ended.set()
            return
        if self._gone:
            return
        log.info("ISMail is ending: stopping the server")
        try:
            self.state_label.configure(text="Stopping…", style="Stopped.TLabel")
            self.listening_label.configure(text="The session is ending: stopping the server…")
            self.imap_listening_label.grid_remove()
            self._sync_buttons()
            self.root.update_idletasks()
        except tk.TclError:
            pass
        self.controller.shutdown()
        self._destroy()

    def _destroy(self) -> None:
        if self._gone:
            return
        self._gone = True
        self.state = "stopped"
        self._detach()
        self.pump.cancel()
        try:
            self.root.after_cancel(self._after)
            self.root.destroy()
        except tk.TclError:
            pass

    # -- the live parts ------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._ended.is_set():
            self._destroy()
            return
        self.drain_activity()
        self._ticks += 1
        if self._ticks % FIGURES_EVERY == 0:
            self.refresh_figures()
        self._after = self.root.after(TICK_MS, self._tick)

    def drain_activity(self) -> None:
        lines, skipped = self.log_handler.drain(ACTIVITY_LINES)
        if not lines and not skipped:
            return
        text = (f"… {skipped} earlier lines skipped (the mail log has them all)\n" if skipped else "")
        text += "".join(line.replace("\n", " ⏎ ") + "\n" for line in lines)
        at_end = self.activity.yview()[1] >= 0.999
        self.activity.configure(state="normal")
        self.activity.insert("end", text, "line")
        excess = int(self.activity.index("end-1c").split(".")[0]) - 1 - ACTIVITY_LINES
        if excess > 0:
            self.activity.delete("1.0", f"{excess + 1}.0")
        self.activity.configure(state="disabled")
        if at_end:
            self.activity.see("end")

    def refresh_figures(self) -> None:
        f = self.controller.figures()
        labels = self.figure_labels
        labels["incoming"].configure(text=f"{f.incoming_now} / {f.incoming_limit}  (at most {f.per_host_limit} per host)")
        labels["pop3"].configure(text=f"{f.pop3_now} / {f.pop3_limit}  (at most {f.pop3_per_host_limit} per host)"
                                 if f.pop3_enabled else "off")
        labels["imap"].configure(text=f"{f.imap_now} / {f.imap_limit}  (at most {f.imap_per_host_limit} per host)"
                                 if f.imap_enabled else "off")
        labels["outgoing"].configure(text=f"{f.outgoing_now} / {f.outgoing_limit}")
        for key, value in (("queue", f.queue_length), ("received", f.received), ("sent", f.sent),
                           ("deferred", f.deferred), ("bounced", f.bounced)):
            labels[key].configure(text=f"{value:,}")
        if self.state == "running":
            self.listening_label.configure(text=f.serving_lines())
            self.imap_listening_label.configure(text=f.imap_line())
            self.imap_listening_label.grid()
        elif self.state in ("stopped", "starting") and not self.closing:
            self.listening_label.configure(text=self.stopped_note if self.state == "stopped"
                                           else "Opening the listening ports…")
            self.imap_listening_label.grid_remove()

    # -- dialogs -------------------------------------------------------------------------------
    def open_settings(self, page: str = "Domain") -> ConfigDialog | None:
        if self.dialog is not None and self.dialog.winfo_exists():
            self.dialog.select(page)
            self.dialog.lift()
            return self.dialog
        dialog = ConfigDialog(self.root, self.controller, page, on_applied=self._applied, _utest=self._utest)
        if dialog.winfo_exists():  # a modal dialog returns only once it is closed
            self.dialog = dialog
            dialog.bind("<Destroy>", lambda e: self._forget_dialog() if e.widget is dialog else None, add="+")
        return dialog

    def _forget_dialog(self) -> None:
        self.dialog = None  # so its widgets are freed now, in this thread

    def _applied(self) -> None:
        self.refresh_figures()
        if self.state == "stopped" and self.problem is not None:
            self.root.after_idle(self.start_server)  # the user fixed what stopped the start: try again

    def change_port(self) -> Query:
        """Move the listening address the start failed on (SMTP's, POP3's or IMAP's) to another port."""
        key, failed = self.controller.listen_problem(self.problem.text if self.problem else "")
        s = self.controller.editable_settings()
        name, listen, suggested, who = {
            "pop3.listen": ("POP3", s.pop3.listen, "1110", "mail programs that fetch mail from"),
            "imap.listen": ("IMAP", s.imap.listen, "1143", "mail programs that read mail on"),
        }.get(key, ("SMTP", s.listen, "2525", "programs that send mail through"))

        def check(values: list[str]) -> str | None:
            text = values[0].strip()
            if not text.isdigit() or not 1 <= int(text) <= 65535:
                return f"Type a port number from 1 to 65535, for example {suggested}."
            errors = self.controller.move_port(key, failed, int(text))
            if errors:
                return "\n".join(friendly(e) for e in errors)
            self.root.after_idle(self.start_server)
            return None

        shown = ", ".join(map(str, listen)) if isinstance(listen, list) else str(listen)
        return Query(self.root, "Change port", f"ISMail's {name} listens on {shown}. Type the port to "
                     f"listen on instead. Ports from 1024 up (such as {suggested}) need no administrator "
                     f"rights; the {who} ISMail must then use that port too.",
                     [("Port:", suggested, False)], check, _utest=self._utest)

    def open_port_test(self) -> PortTestDialog:
        return PortTestDialog(self.root, self.controller)

    def open_smarthost_test(self) -> SmartHostTestDialog:
        return SmartHostTestDialog(self.root, self.controller)

    def open_queue(self) -> QueueWindow:
        return QueueWindow(self.root, self.controller, _utest=self._utest)

    def open_statistics(self) -> StatisticsWindow:
        return StatisticsWindow(self.root, self.controller)

    def open_data_folder(self) -> None:
        folder = self.controller.data_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if sys.platform == "win32":
                os.startfile(folder)  # type: ignore[attr-defined]
            else:
                subprocess.Popen(["open" if sys.platform == "darwin" else "xdg-open", str(folder)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            messagebox.showinfo("Data folder", f"The data folder is\n{folder}", parent=self.root)

    def show_readme(self) -> tk.Toplevel:
        return readme_window(self.root)

    def show_about(self) -> None:
        messagebox.showinfo("About ISMail", f"ISMail {__version__}\nA mail server you double-click.\n\n"
                            f"Python {sys.version.split()[0]}, Tk {self.root.tk.call('info', 'patchlevel')}\n"
                            f"Data folder: {self.controller.data_dir}", parent=self.root)
