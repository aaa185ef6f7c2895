"""Tools menu: Test port 25 and Test SmartHost.

Both talk to the network for up to their timeout, so the work runs in a thread
(ismail.porttest does it) and the outcome comes back through a Pump; the dialog stays
usable meanwhile and says what it is doing.
"""
from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import TYPE_CHECKING

from ismail.porttest import PortCheck, Step, check_port, mail_host_for, test_smarthost

from .events import Pump
from .widgets import PAD, ErrorLabel, Window, place_over

if TYPE_CHECKING:
    from .controller import Controller


class ToolWindow(Window):
    def __init__(self, parent: tk.Misc, title: str) -> None:
        super().__init__(parent)
        self.withdraw()
        self.title(title)
        self.transient(parent)
        self.pump = Pump(self)
        self.protocol("WM_DELETE_WINDOW", self.close)
        self.bind("<Escape>", lambda e: self.close())
        self.body = ttk.Frame(self, padding=PAD * 2)
        self.body.grid(sticky="nsew")
        self.columnconfigure(0, weight=1)
        self.rowconfigure(0, weight=1)

    def show(self, parent: tk.Misc) -> None:
        place_over(self, parent)
        self.deiconify()

    def close(self) -> None:
        self.pump.cancel()  # a test still running reports to nobody; its thread ends by its timeout
        self.destroy()


class PortTestDialog(ToolWindow):
    """The manual's "telnet instantservers.com 25": does a mail server answer from here?"""

    def __init__(self, parent: tk.Misc, controller: "Controller") -> None:
        super().__init__(parent, "Test port 25")
        s = controller.settings
        default = s.smarthost.host if s is not None and s.smarthost.host else ""
        b = self.body
        ttk.Label(b, text="Type a mail domain (its mail server is tested, e.g. gmail.com) or a "
                  "server's name or IP address. A welcome line means mail can leave this "
                  "computer on that port.", wraplength=460, justify="left").grid(
            row=0, column=0, columnspan=4, sticky="w", pady=(0, PAD))
        self.host = tk.StringVar(self, default)
        self.port = tk.StringVar(self, "25")
        self.timeout = tk.StringVar(self, "10")
        ttk.Label(b, text="Host or domain:").grid(row=1, column=0, sticky="w", padx=(0, PAD))
        self.host_entry = ttk.Entry(b, textvariable=self.host, width=32)
        self.host_entry.grid(row=1, column=1, columnspan=3, sticky="ew")
        ttk.Label(b, text="Port:").grid(row=2, column=0, sticky="w", pady=(4, 0))
        ttk.Spinbox(b, from_=1, to=65535, textvariable=self.port, width=7).grid(
            row=2, column=1, sticky="w", pady=(4, 0))
        ttk.Label(b, text="Give up after:").grid(row=2, column=2, sticky="e", padx=(PAD, PAD), pady=(4, 0))
        wait = ttk.Frame(b)
        wait.grid(row=2, column=3, sticky="w", pady=(4, 0))
        ttk.Spinbox(wait, from_=1, to=120, textvariable=self.timeout, width=5).pack(side="left")
        ttk.Label(wait, text="seconds").pack(side="left", padx=(4, 0))
        self.error = ErrorLabel(b, wraplength=460, row=3, column=0, columnspan=4, sticky="w")
        buttons = ttk.Frame(b)
        buttons.grid(row=4, column=0, columnspan=4, sticky="e", pady=(PAD, 0))
        self.test_button = ttk.Button(buttons, text="Test", default="active", command=self.start)
        self.test_button.pack(side="left", padx=(0, 4))
        ttk.Button(buttons, text="Close", command=self.close).pack(side="left")
        self.verdict = ttk.Label(b, text="", style="Big.TLabel")
        self.verdict.grid(row=5, column=0, columnspan=4, sticky="w", pady=(PAD, 0))
        self.banner = ttk.Label(b, text="", font="TkFixedFont", wraplength=460, justify="left")
        self.banner.grid(row=6, column=0, columnspan=4, sticky="w")
        self.diagnosis = ttk.Label(b, text="", wraplength=460, justify="left")
        self.diagnosis.grid(row=7, column=0, columnspan=4, sticky="w", pady=(4, 0))
        self.result: PortCheck | None = None
        self.bind("<Return>", lambda e: self.start())
        self.show(parent)
        self.host_entry.focus_set()

    def start(self) -> None:
        if self.pump.busy:
            return
        name = self.host.get().strip()
        try:
            port, timeout = int(self.port.get()), float(self.timeout.get())
        except ValueError:
            self.error.show("The port and the time limit must be numbers.")
            return
        if not name or not 1 <= port <= 65535 or not 0 < timeout <= 120:
            self.error.show("Type a host or domain; the port is 1–65535, the time limit 1–120 seconds.")
            return
        self.error.clear()
        self.result = None
        self.test_button.state(["disabled"])
        self.verdict.configure(text="Testing…", style="Big.TLabel")
        self.banner.configure(text="")
        self.diagnosis.configure(text=f"Connecting to {name} port {port} (at most {timeout:g} seconds)…")

        def job() -> tuple[PortCheck, str]:
            host, note = mail_host_for(name) if port == 25 else (name, "")
            return check_port(host, port, timeout), note

        self.pump.run(job, self._done, name="port-test")

    def _done(self, outcome: tuple[PortCheck, str] | None, error: BaseException | None) -> None:
        self.test_button.state(["!disabled"])
        if error is not None or outcome is None:
            self.verdict.configure(text="The test could not run", style="Stopped.TLabel")
            self.diagnosis.configure(text=str(error))
            return
        check, note = outcome
        self.result = check
        self.verdict.configure(text="Open: the server answered" if check.ok else "No greeting",
                               style="Running.TLabel" if check.ok else "Stopped.TLabel")
        self.banner.configure(text=check.banner)
        self.diagnosis.configure(text=(note + ".\n" if note else "") + check.diagnosis)


class SmartHostTestDialog(ToolWindow):
    """Connect, EHLO, STARTTLS, AUTH with the saved SmartHost settings; no mail is sent."""

    def __init__(self, parent: tk.Misc, controller: "Controller") -> None:
        super().__init__(parent, "Test SmartHost")
        self.controller = controller
        b = self.body
        b.columnconfigure(0, weight=1)
        self.summary = ttk.Label(b, text="", wraplength=480, justify="left")
        self.summary.grid(row=0, column=0, sticky="w")
        self.log = tk.Text(b, width=70, height=10, wrap="word", relief="solid", borderwidth=1,
                           highlightthickness=0, state="disabled", padx=4, pady=4)
        self.log.grid(row=1, column=0, sticky="nsew", pady=(PAD, 0))
        buttons = ttk.Frame(b)
        buttons.grid(row=2, column=0, sticky="e", pady=(PAD, 0))
        self.run_button = ttk.Button(buttons, text="Run test", default="active", command=self.start)
        self.run_button.pack(side="left", padx=(0, 4))
        ttk.Button(buttons, text="Close", command=self.close).pack(side="left")
        self.log.tag_configure("ok", foreground="#1b7f2a")
        self.log.tag_configure("fail", foreground="#b00020")
        self.steps: list[Step] = []
        self.finished = False
        self._describe()
        self.show(parent)

    def _describe(self) -> None:
        s = self.controller.settings
        if s is None or not s.smarthost.host:
            self.summary.configure(text="No SmartHost is set. Enter one under Settings ▸ Connections "
                                   "and press Apply, then test it here.")
            return
        sh = s.smarthost
        auth = f"log in as {sh.account}" if sh.authenticate else "no login"
        off = "" if sh.enabled else "  (switched off: the test uses the saved settings anyway)"
        self.summary.configure(text=f"SmartHost {sh.host} port {sh.port}, security {sh.tls}, {auth}.{off}\n"
                               "The test connects and introduces itself; it sends no mail.")

    def start(self) -> None:
        s = self.controller.settings
        if self.pump.busy or s is None:
            return
        self._describe()
        self.steps, self.finished = [], False
        self.run_button.state(["disabled"])
        self._write(None, clear=True)
        self._write(f"Testing {s.smarthost.host or '(none)'} port {s.smarthost.port}…\n")
        sh, name = s.smarthost, s.server_name
        # on_step runs in the test's thread; post() carries each step over to Tk.
        self.pump.run(lambda: test_smarthost(sh, name, on_step=lambda st: self.pump.post(
            lambda: self._step(st))), self._done, name="smarthost-test")

    def _step(self, step: Step) -> None:
        self.steps.append(step)
        self._write(f"{'✔' if step.ok else '✘'} {step.name}: {step.detail}\n", "ok" if step.ok else "fail")

    def _done(self, steps: list[Step] | None, error: BaseException | None) -> None:
        self.run_button.state(["!disabled"])
        if error is not None:
            self._write(f"The test could not run: {error}\n", "fail")
        elif steps and all(s.ok for s in steps):
            self._write("The SmartHost accepts ISMail. No mail was sent.\n", "ok")
        else:
            self._write("Mail to the SmartHost would fail at the step marked ✘.\n", "fail")
        self.finished = True

    def _write(self, text: str | None, tag: str = "", clear: bool = False) -> None:
        self.log.configure(state="normal")
        if clear:
            self.log.delete("1.0", "end")
        if text:
            self.log.insert("end", text, tag)
        self.log.configure(state="disabled")
        self.log.see("end")
