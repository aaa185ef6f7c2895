"""The Program tab of the settings dialog: the original's "AutoStart" options.

* "Start ISMail when I log on" is no setting in ismail.json: it is the log-on entry itself
  (the current user's Run key on Windows, ~/.config/autostart/ismail.desktop elsewhere),
  read when the dialog opens and written by ``commit`` once Apply has saved the rest.
* "Start the server when ISMail opens" is ``program.start_server_on_open``, saved
  with the other settings.
"""
from __future__ import annotations

import sys
import tkinter as tk
from tkinter import ttk

from ismail.config import FieldError, Settings

from .pages import WRAP, Page
from .widgets import PAD

AUTOSTART_KEY = "autostart"  # the error label of the log-on entry (no key of ismail.json)


def _where() -> str:
    if sys.platform == "win32":
        return "Windows starts ISMail for you when you log on (your user's Run entry; no " \
               "administrator rights needed; Task Manager's Startup tab shows it too)."
    return "Your desktop starts ISMail when you log in (~/.config/autostart/ismail.desktop)."


class ProgramPage(Page):
    title = "Program"

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, dialog)
        self.controller = dialog.controller  # type: ignore[attr-defined]
        self.autostart = tk.BooleanVar(self)
        self.start_on_open = tk.BooleanVar(self)
        ttk.Label(self, text="How ISMail starts. ISMail serves mail only while it runs: closing "
                  "its window stops the SMTP server.", wraplength=WRAP, justify="left").grid(
            row=0, column=0, columnspan=3, sticky="w", pady=(0, PAD * 2))
        box = ttk.LabelFrame(self, text="AutoStart", padding=PAD)
        box.grid(row=1, column=0, columnspan=3, sticky="ew")
        box.columnconfigure(0, weight=1)
        self.autostart_box = ttk.Checkbutton(box, text="Start ISMail when I log on",
                                             variable=self.autostart)
        self.autostart_box.grid(row=0, column=0, sticky="w")
        ttk.Label(box, text=_where(), style="Hint.TLabel", wraplength=WRAP - 40, justify="left").grid(
            row=1, column=0, sticky="w", padx=(24, 0))
        self.error_for(AUTOSTART_KEY, box, 2, 0, 1)
        self.start_box = ttk.Checkbutton(box, text="Start the server when ISMail opens",
                                         variable=self.start_on_open)
        self.start_box.grid(row=3, column=0, sticky="w", pady=(PAD, 0))
        ttk.Label(box, text="Otherwise the window opens Stopped, and mail is served once you "
                  "click Start.", style="Hint.TLabel", wraplength=WRAP - 40, justify="left").grid(
            row=4, column=0, sticky="w", padx=(24, 0))
        self.error_for("program.start_server_on_open", box, 5, 0, 1)

    def load(self, settings: Settings) -> None:
        self.autostart.set(self.controller.autostart_enabled())
        self.start_on_open.set(bool(settings.program.start_server_on_open))

    def store(self, settings: Settings, problems: list[FieldError]) -> None:
        settings.program.start_server_on_open = bool(self.start_on_open.get())

    def commit(self) -> list[FieldError]:
        try:
            self.controller.set_autostart(bool(self.autostart.get()))
        except (OSError, ValueError) as e:
            done = "written" if self.autostart.get() else "removed"
            detail = getattr(e, "strerror", None) or str(e)
            return [FieldError(AUTOSTART_KEY, f"The other settings were saved, but the log-on entry "
                                              f"could not be {done}: {detail}")]
        return []
