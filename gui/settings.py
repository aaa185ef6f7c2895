"""The settings dialog, in the shape of idlelib's ConfigDialog: a notebook of pages, OK / Apply / Cancel.

Apply reads every page into a copy of the settings, validates it with ismail.config's
own ``validate`` and, if anything is wrong, shows each problem in red under its field
(switching to the first page that has one) and does nothing else: no file is written and
the server is untouched.  A valid Apply goes to ``Controller.apply_settings``, which puts
the settings in force (``MailServer.apply``) and saves them atomically; then each page's
``commit`` puts in force what is kept elsewhere (the Program page's log-on entry).

``_utest`` (as in idlelib) builds the dialog without ``grab_set``/``wait_window`` so tests
can fill it in and press its buttons.
"""
from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import TYPE_CHECKING, Callable

from ismail.config import FieldError, Settings, validate

from .accountspage import AccountsPage
from .addresspage import AddressesPage
from .antispampage import AntispamPage
from .connectionspage import ConnectionsPage
from .pages import AccessPage, DomainPage, Page
from .programpage import ProgramPage
from .routespage import RoutesPage
from .widgets import PAD, ErrorLabel, Window, friendly, place_over

if TYPE_CHECKING:
    from .controller import Controller

PAGES = ("Domain", "Connections", "Access", "Anti-spam", "Accounts", "Addresses", "Routes", "Program")


class ConfigDialog(Window):
    def __init__(self, parent: tk.Misc, controller: "Controller", page: str = "Domain",
                 on_applied: Callable[[], None] | None = None, *, _utest: bool = False) -> None:
        super().__init__(parent)
        self.withdraw()
        self.controller = controller
        self.on_applied = on_applied
        self._utest = _utest
        self.title("ISMail Settings")
        self.transient(parent)
        self.resizable(False, False)
        self.protocol("WM_DELETE_WINDOW", self.cancel)
        outer = ttk.Frame(self, padding=PAD)
        outer.grid(sticky="nsew")
        self.notebook = ttk.Notebook(outer)
        self.notebook.grid(row=0, column=0, sticky="nsew")
        self.pages: dict[str, Page] = {}
        for cls in (DomainPage, ConnectionsPage, AccessPage, AntispamPage, AccountsPage, AddressesPage,
                    RoutesPage, ProgramPage):
            p = cls(self.notebook, self)
            self.notebook.add(p, text=f" {cls.title} ")
            self.pages[cls.title] = p
        self.general = ErrorLabel(outer, wraplength=560, row=1, column=0, sticky="w", pady=(PAD, 0))
        self.done = ttk.Label(outer, text="", style="Hint.TLabel")
        self.done.grid(row=2, column=0, sticky="w", pady=(PAD, 0))
        buttons = ttk.Frame(outer)
        buttons.grid(row=2, column=0, sticky="e", pady=(PAD, 0))
        self.ok_button = ttk.Button(buttons, text="OK", default="active", command=self.ok)
        self.apply_button = ttk.Button(buttons, text="Apply", command=self.apply)
        self.cancel_button = ttk.Button(buttons, text="Cancel", command=self.cancel)
        for b in (self.ok_button, self.apply_button, self.cancel_button):
            b.pack(side="left", padx=(PAD // 2, 0))
        self.bind("<Escape>", lambda e: self.cancel())
        self.load(controller.editable_settings())
        self.select(page)
        if controller.settings_problem is not None:
            # The file could not be used: show its problems where they can be fixed
            # (show_errors brings the first page with one forward).
            self.show_errors(validate(controller.editable_settings())
                             or controller.settings_problem.errors)
        place_over(self, parent)
        self.deiconify()
        if not _utest:
            self.grab_set()
            self.wait_window()

    def select(self, page: str) -> None:
        if page in self.pages:
            self.notebook.select(self.pages[page])

    def load(self, settings: Settings) -> None:
        for page in self.pages.values():
            page.load(settings)

    def collect(self) -> tuple[Settings, list[FieldError]]:
        """The settings as the pages show them, and every problem with them."""
        settings = self.controller.editable_settings()
        problems: list[FieldError] = []
        for page in self.pages.values():
            page.store(settings, problems)
        typed = {p.key for p in problems}  # "abc" in a number field: validate would repeat the old value
        return settings, problems + [e for e in validate(settings) if e.key not in typed]

    def show_errors(self, errors: list[FieldError]) -> None:
        left = list(errors)
        first_page: Page | None = None
        for page in self.pages.values():
            before = len(left)
            left = page.show_errors(left)
            if first_page is None and len(left) < before:
                first_page = page
        self.general.show("\n".join(friendly(e) if e.key else e.message for e in left))
        if first_page is not None and self.notebook.select() != str(first_page):
            self.notebook.select(first_page)

    def apply(self) -> bool:
        """True when the settings were valid, saved and put in force."""
        self.done.configure(text="")
        settings, problems = self.collect()
        if not problems:
            problems = self.controller.apply_settings(settings)
        if problems:
            self.show_errors(problems)
            return False
        # Saved and in force; now what lives outside ismail.json (the log-on entry).
        problems = [e for page in self.pages.values() for e in page.commit()]
        self.show_errors(problems)
        if not problems:
            self.done.configure(text="Saved; the new settings are in force." if self.controller.running
                                else "Saved.")
        if self.on_applied is not None:
            self.on_applied()
        return not problems

    def ok(self) -> None:
        if self.apply():
            self.destroy()

    def cancel(self) -> None:
        self.destroy()
