"""Settings > Domain > DNS records: what to publish for a domain, a Copy button for each
value, and "Check now", which looks them up with ISMail's own resolver (the same
records and verdicts as ``ismail dns DOMAIN [--check]``).

The look-ups run in a thread (a slow DNS server must not freeze the window); their
verdicts come back through events.Pump.
"""
from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import TYPE_CHECKING

from ismail.service import check_dns, dns_records

from .events import Pump
from .widgets import PAD, Window, place_over

if TYPE_CHECKING:
    from .controller import Controller

INTRO = ("Publish these records where your domain's DNS is managed (your registrar or DNS "
         "host). Receivers such as Gmail, Yahoo and Outlook.com check them: without SPF or "
         "DKIM they junk or refuse your mail.")


class DnsWindow(Window):
    def __init__(self, parent: tk.Misc, controller: "Controller", domain: str = "") -> None:
        super().__init__(parent)
        self.title("DNS records")
        self.controller = controller
        settings = controller.editable_settings()
        domains = sorted(settings.local_domains())
        self.domain = tk.StringVar(self, value=domain if domain in domains else settings.primary_domain)
        self.pump = Pump(self)
        self.rows: list[dict] = []
        self.records: list = []
        frame = ttk.Frame(self, padding=PAD * 2)
        frame.grid(row=0, column=0, sticky="nsew")
        frame.columnconfigure(0, weight=1)
        ttk.Label(frame, text=INTRO, wraplength=640, justify="left").grid(row=0, column=0, sticky="w")
        top = ttk.Frame(frame)
        top.grid(row=1, column=0, sticky="w", pady=PAD)
        ttk.Label(top, text="Domain:").pack(side="left")
        self.chooser = ttk.Combobox(top, textvariable=self.domain, values=domains, state="readonly", width=32)
        self.chooser.pack(side="left", padx=PAD)
        self.chooser.bind("<<ComboboxSelected>>", lambda e: self.show())
        self.check_button = ttk.Button(top, text="Check now", command=self.check)
        self.check_button.pack(side="left", padx=PAD)
        self.status = ttk.Label(frame, text="", wraplength=640, justify="left")
        self.status.grid(row=2, column=0, sticky="w")
        self.table = ttk.Frame(frame)
        self.table.grid(row=3, column=0, sticky="nsew", pady=(PAD, 0))
        self.table.columnconfigure(1, weight=1)
        ttk.Button(frame, text="Close", command=self.destroy).grid(row=4, column=0, sticky="e", pady=(PAD * 2, 0))
        self.show()
        place_over(self, parent)
        # Opened from the (modal) settings dialog: in front of it, and modal in its turn;
        # the dialog gets its grab back when this closes.
        self.transient(parent)
        self.lift()
        self._grab_before = self.grab_current()
        if self._grab_before is not None:
            self.grab_set()

    def destroy(self) -> None:
        before = getattr(self, "_grab_before", None)
        super().destroy()
        if before is not None:
            try:
                before.grab_set()
            except tk.TclError:
                pass  # the dialog is gone too

    def show(self) -> None:
        """The records of the chosen domain, without verdicts."""
        for child in self.table.winfo_children():
            child.destroy()
        self.rows.clear()
        settings = self.controller.editable_settings()
        try:
            self.records = dns_records(settings, self.controller.data_dir, self.domain.get())
        except (OSError, ValueError) as e:
            self.records = []
            self.status.configure(text=f"The records cannot be worked out: {e}")
            return
        self.status.configure(text="")
        for i, rec in enumerate(self.records):
            row = i * 3
            ttk.Label(self.table, text=f"{rec.type}", font="TkHeadingFont").grid(
                row=row, column=0, sticky="nw", padx=(0, PAD), pady=(PAD, 0))
            name = ttk.Entry(self.table, width=60)
            name.insert(0, rec.name)
            name.configure(state="readonly")
            name.grid(row=row, column=1, sticky="we", pady=(PAD, 0))
            value = ttk.Entry(self.table, width=60)
            value.insert(0, rec.value)
            value.configure(state="readonly")
            value.grid(row=row + 1, column=1, sticky="we")
            ttk.Button(self.table, text="Copy", width=6,
                       command=lambda v=rec.value: self.copy(v)).grid(row=row + 1, column=2, padx=PAD)
            verdict = ttk.Label(self.table, text=rec.why, style="Hint.TLabel", wraplength=560, justify="left")
            verdict.grid(row=row + 2, column=1, columnspan=2, sticky="w")
            self.rows.append({"record": rec, "verdict": verdict, "value": value, "name": name})

    def copy(self, text: str) -> None:
        self.clipboard_clear()
        self.clipboard_append(text)
        self.status.configure(text="Copied to the clipboard.")

    def check(self) -> None:
        records, settings = list(self.records), self.controller.editable_settings()
        self.check_button.configure(state="disabled")
        self.status.configure(text="Looking the records up ...")
        self.pump.run(lambda: check_dns(settings, records), self._checked, name="dns-check")

    def _checked(self, verdicts, error: BaseException | None) -> None:
        try:
            self.check_button.configure(state="normal")
        except tk.TclError:
            return  # the window was closed meanwhile
        if error is not None:
            self.status.configure(text=f"The check could not be done: {error}")
            return
        good = 0
        for row, verdict in zip(self.rows, verdicts):
            if verdict.ok:
                good += 1
                row["verdict"].configure(text="\u2713 Published as it should be.", style="TLabel")
            else:
                row["verdict"].configure(text="\u2717 " + verdict.problem, style="Error.TLabel")
        self.status.configure(text=f"{good} of {len(verdicts)} record(s) as they should be.")


def dns_window(parent: tk.Misc, controller: "Controller", domain: str = "") -> DnsWindow:
    return DnsWindow(parent, controller, domain)
