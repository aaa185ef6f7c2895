"""Small pieces every window uses: the look, error labels, and a query dialog (idlelib's Query).

Errors are shown inside the dialog, in red, next to the field they are about, never as a
pop-up: the user sees what is wrong and where at the same time.
"""
from __future__ import annotations

import gc
import re
import sys
import tkinter as tk
from tkinter import ttk
from typing import Callable

from ismail.platform import winplatform
from ismail.config import FieldError

ERROR_COLOUR = "#b00020"
PAD = 8


def setup_style(root: tk.Misc) -> ttk.Style:
    style = ttk.Style(root)
    if sys.platform != "win32" and "clam" in style.theme_names():
        style.theme_use("clam")  # Linux's default theme looks like 1995; Windows keeps its own
    style.configure("Error.TLabel", foreground=ERROR_COLOUR)
    for widget in ("TEntry", "TSpinbox", "TCombobox"):  # a greyed-out field must look greyed out
        style.map(widget, fieldbackground=[("disabled", "#e4e2de")], foreground=[("disabled", "#808080")])
    style.configure("Hint.TLabel", foreground="#555555")
    style.configure("Big.TLabel", font=("TkDefaultFont", 14, "bold"))
    style.configure("Running.TLabel", font=("TkDefaultFont", 14, "bold"), foreground="#1b7f2a")
    style.configure("Stopped.TLabel", font=("TkDefaultFont", 14, "bold"), foreground="#9a2b00")
    style.configure("Figure.TLabel", font=("TkDefaultFont", 11, "bold"))
    # Labels stacked to read as one paragraph: without the border a label has around its text.
    style.layout("Lines.TLabel", [("Label.label", {"sticky": "nswe"})])
    return style


def set_icon(win: tk.Tk | tk.Toplevel) -> tk.PhotoImage | None:
    """ISMail's icon on ``win`` and every window opened after it; None without the image file."""
    path = winplatform.asset_path("ismail.png")  # in the bundle when frozen, else in assets/
    if not path.is_file():
        return None
    try:
        image = tk.PhotoImage(master=win, file=str(path))
        win.iconphoto(True, image)
    except tk.TclError:  # a Tk without PNG support, or an unreadable file: keep Tk's own icon
        return None
    return image  # the caller keeps it: Tk drops an image Python no longer holds


def friendly(error: FieldError) -> str:
    """validate()'s sentence without the leading "key = " a person would not type."""
    text = error.message
    if error.key:
        text = re.sub(r"^" + re.escape(error.key) + r"(\[\d+\])? = ", "", text)
    return text[:1].upper() + text[1:]


class ErrorLabel(ttk.Label):
    """A red line under a field; takes no room until there is something to say."""

    def __init__(self, master: tk.Misc, wraplength: int = 460, **grid: object) -> None:
        super().__init__(master, style="Error.TLabel", wraplength=wraplength, justify="left")
        self._grid = grid
        self.grid(**grid)
        self.grid_remove()

    def show(self, text: str) -> None:
        if text:
            self.configure(text=text)
            self.grid()
        else:
            self.clear()

    def clear(self) -> None:
        self.configure(text="")
        self.grid_remove()

    @property
    def text(self) -> str:
        return str(self.cget("text"))


def place_over(win: tk.Toplevel, parent: tk.Misc, dx: int = 40, dy: int = 40) -> None:
    """Open a child window near its parent (not wherever the system chooses)."""
    try:
        x, y = parent.winfo_rootx() + dx, parent.winfo_rooty() + dy
    except tk.TclError:
        return
    win.geometry(f"+{max(x, 0)}+{max(y, 0)}")


class Window(tk.Toplevel):
    """A Toplevel whose Tk objects are freed in the Tk thread when it closes.

    Widgets and their variables sit in reference cycles, which Python's cyclic collector
    frees in whatever thread happens to run it - a server thread, which must never call
    Tk.  Collecting right after the window goes keeps that from happening.
    """

    def destroy(self) -> None:
        root = self._root()
        super().destroy()
        try:
            root.after_idle(gc.collect)
        except tk.TclError:  # the whole application is going away
            pass


def ok_cancel_row(window, body: ttk.Frame, row: int) -> None:
    """The OK and Cancel buttons of a small dialog (``window.ok``/``window.cancel``), with
    Return, Escape and the close box bound to them."""
    buttons = ttk.Frame(body)
    buttons.grid(row=row, column=0, columnspan=2, sticky="e", pady=(PAD, 0))
    window.ok_button = ttk.Button(buttons, text="OK", default="active", command=window.ok)
    window.ok_button.pack(side="left", padx=(0, PAD // 2))
    window.cancel_button = ttk.Button(buttons, text="Cancel", command=window.cancel)
    window.cancel_button.pack(side="left")
    window.bind("<Return>", lambda e: window.ok())
    window.bind("<Escape>", lambda e: window.cancel())
    window.protocol("WM_DELETE_WINDOW", window.cancel)


class Query(Window):
    """A small modal question with fields, OK and Cancel; ``check`` returns an error or None.

    ``result`` holds the field values after OK.  With ``_utest`` the dialog neither grabs
    the pointer nor waits, so tests can fill it in and press its buttons.
    """

    def __init__(self, parent: tk.Misc, title: str, prompt: str,
                 fields: list[tuple[str, str, bool]],
                 check: Callable[[list[str]], str | None], *, _utest: bool = False) -> None:
        super().__init__(parent)
        self.withdraw()
        self.title(title)
        self.transient(parent)
        self.resizable(False, False)
        self.check = check
        self.result: list[str] | None = None
        body = ttk.Frame(self, padding=PAD * 2)
        body.grid(sticky="nsew")
        ttk.Label(body, text=prompt, wraplength=380, justify="left").grid(
            row=0, column=0, columnspan=2, sticky="w", pady=(0, PAD))
        self.vars: list[tk.StringVar] = []
        self.entries: list[ttk.Entry] = []
        for i, (label, value, secret) in enumerate(fields, start=1):
            ttk.Label(body, text=label).grid(row=i, column=0, sticky="w", padx=(0, PAD), pady=2)
            var = tk.StringVar(self, value)
            entry = ttk.Entry(body, textvariable=var, width=32, show="•" if secret else "")
            entry.grid(row=i, column=1, sticky="ew", pady=2)
            self.vars.append(var)
            self.entries.append(entry)
        row = len(fields) + 1
        self.error = ErrorLabel(body, wraplength=380, row=row, column=0, columnspan=2, sticky="w",
                                pady=(PAD // 2, 0))
        ok_cancel_row(self, body, row + 1)
        place_over(self, parent)
        self.deiconify()
        if self.entries:
            self.entries[0].focus_set()
        if not _utest:
            self.grab_set()
            self.wait_window()

    def ok(self) -> None:
        values = [v.get() for v in self.vars]
        problem = self.check(values)
        if problem:
            self.error.show(problem)
            return
        self.result = values
        self.destroy()

    def cancel(self) -> None:
        self.result = None
        self.destroy()
