"""A list with Add / Edit / Remove beside it, and the form that adds or edits one entry.

The Addresses and Routes pages are made of these: each ``EntryList`` shows one kind of
entry (aliases, groups, routes...) and calls its page back for the three buttons; the
page opens a ``FormDialog`` whose ``check`` saves the entry through ``Admin`` and returns
the store's refusal, which the dialog shows as it is (it names the entry and the
conflict) while the entry stays open to be corrected.  As idlelib's Query, ``_utest``
builds the dialog without ``grab_set``/``wait_window`` so tests can fill it and press OK.
"""
from __future__ import annotations

import tkinter as tk
from dataclasses import dataclass
from tkinter import ttk
from typing import Callable, Sequence

from .widgets import PAD, ErrorLabel, Window, ok_cancel_row, place_over

Values = dict[str, "str | bool"]
SHOWN_PROBLEMS = 4  # under a page's lists: more would push the dialog off a small screen


def problem_text(problems: Sequence[str]) -> str:
    """A store's problems as lines for a page, each starting with a capital; the first few."""
    lines = [p[:1].upper() + p[1:] for p in problems if p]
    if len(lines) > SHOWN_PROBLEMS:
        lines[SHOWN_PROBLEMS - 1:] = [f"… and {len(lines) - SHOWN_PROBLEMS + 1} more problems."]
    return "\n".join(lines)


@dataclass
class Field:
    """One line of a FormDialog.

    ``kind``: "entry", "secret" (shown as dots), "text" (several lines), "choice" (one of
    ``choices``), "pick" (one of ``choices`` or typed) or "check" (a tick box; value bool).
    ``locked``: shown but not changeable, as the address of the entry being edited.
    """

    key: str
    label: str
    value: str | bool = ""
    kind: str = "entry"
    choices: Sequence[str] = ()
    hint: str = ""
    locked: bool = False
    width: int = 36
    height: int = 5


def _enabled(widget: tk.Widget) -> bool:
    if isinstance(widget, ttk.Widget):
        return not widget.instate(["disabled"])
    return str(widget.cget("state")) != "disabled"


class FormDialog(Window):
    """A modal form; ``check(values)`` saves and returns None, or returns what is wrong."""

    def __init__(self, parent: tk.Misc, title: str, prompt: str, fields: Sequence[Field],
                 check: Callable[[Values], str | None], *,
                 extra: tuple[str, Callable[[], str | None]] | None = None, _utest: bool = False) -> None:
        super().__init__(parent)
        self.withdraw()
        self.title(title)
        self.transient(parent.winfo_toplevel())
        self.resizable(False, False)
        self.check = check
        self.result: Values | None = None
        self.vars: dict[str, tk.Variable] = {}
        self.texts: dict[str, tk.Text] = {}
        self.widgets: dict[str, tk.Widget] = {}
        body = ttk.Frame(self, padding=PAD * 2)
        body.grid(sticky="nsew")
        if prompt:
            ttk.Label(body, text=prompt, wraplength=440, justify="left").grid(
                row=0, column=0, columnspan=2, sticky="w", pady=(0, PAD))
        row = 1
        for f in fields:
            row = self._add(body, f, row)
        self.error = ErrorLabel(body, wraplength=440, row=row, column=0, columnspan=2, sticky="w",
                                pady=(PAD // 2, 0))
        ok_cancel_row(self, body, row + 1)
        self.extra_button: ttk.Button | None = None
        if extra is not None:  # e.g. "Remove", at the left of OK and Cancel
            label, action = extra
            self.extra_button = ttk.Button(body, text=label, command=lambda: self._finish(action()))
            self.extra_button.grid(row=row + 1, column=0, sticky="w", pady=(PAD, 0))
        for text in self.texts.values():  # Return is a new line in a text box, not OK
            text.bind("<Return>", self._newline)
        place_over(self, parent)
        self.deiconify()
        first = next((w for w in self.widgets.values() if _enabled(w)), None)
        if first is not None:
            first.focus_set()
        if not _utest:
            self.grab_set()
            self.wait_window()

    def _newline(self, event: tk.Event) -> str:
        event.widget.insert("insert", "\n")
        return "break"  # the dialog's own <Return> (OK) must not run too

    def _add(self, body: ttk.Frame, f: Field, row: int) -> int:
        sticky = "nw" if f.kind == "text" else "w"
        if f.kind != "check":
            ttk.Label(body, text=f.label).grid(row=row, column=0, sticky=sticky, padx=(0, PAD), pady=2)
        widget: tk.Widget
        if f.kind == "check":
            var: tk.Variable = tk.BooleanVar(self, bool(f.value))
            widget = ttk.Checkbutton(body, text=f.label, variable=var)
        elif f.kind == "text":
            var = tk.StringVar(self)  # unused: a Text has no variable; kept so keys match
            widget = tk.Text(body, width=f.width, height=f.height, wrap="none", relief="solid",
                             borderwidth=1, highlightthickness=0, font="TkFixedFont", undo=True)
            widget.insert("1.0", str(f.value))
            self.texts[f.key] = widget
        elif f.kind in ("choice", "pick"):
            var = tk.StringVar(self, str(f.value))
            widget = ttk.Combobox(body, textvariable=var, values=list(f.choices), width=f.width - 2,
                                  state="readonly" if f.kind == "choice" else "normal")
        else:
            var = tk.StringVar(self, str(f.value))
            widget = ttk.Entry(body, textvariable=var, width=f.width, show="•" if f.kind == "secret" else "")
        widget.grid(row=row, column=1, sticky="w", pady=2)
        if f.locked:
            if isinstance(widget, tk.Text):
                widget.configure(state="disabled")
            else:
                widget.state(["disabled"])
        self.vars[f.key] = var
        self.widgets[f.key] = widget
        row += 1
        if f.hint:
            ttk.Label(body, text=f.hint, style="Hint.TLabel", wraplength=360, justify="left").grid(
                row=row, column=1, sticky="w")
            row += 1
        return row

    def set(self, key: str, value: str | bool) -> None:
        """Fill one field, as typing would (tests use it)."""
        if key in self.texts:
            self.texts[key].delete("1.0", "end")
            self.texts[key].insert("1.0", str(value))
        else:
            self.vars[key].set(value)

    def values(self) -> Values:
        out: Values = {}
        for key, var in self.vars.items():
            out[key] = self.texts[key].get("1.0", "end-1c") if key in self.texts else var.get()
        return out

    def ok(self) -> None:
        values = self.values()
        if self._finish(self.check(values)):
            self.result = values

    def _finish(self, problem: str | None) -> bool:
        """Close when the action went through; otherwise say why and stay open."""
        if problem:
            self.error.show(problem)
            return False
        self.destroy()
        return True

    def cancel(self) -> None:
        self.result = None
        self.destroy()


class EntryList(ttk.LabelFrame):
    """A framed list of entries with Add / Edit / Remove on its right; rows are keyed by iid."""

    def __init__(self, master: tk.Misc, text: str, columns: Sequence[tuple[str, str, int]],
                 on_add: Callable[[], object], on_edit: Callable[[str], object],
                 on_remove: Callable[[str], object], *, height: int = 5) -> None:
        super().__init__(master, text=text, padding=(PAD, 4))
        self.columnconfigure(0, weight=1)
        self.rowconfigure(0, weight=1)
        names = [c[0] for c in columns]
        self.tree = ttk.Treeview(self, columns=names, show="headings", height=height, selectmode="browse")
        for name, heading, width in columns:
            self.tree.heading(name, text=heading, anchor="w")
            self.tree.column(name, width=width, anchor="w", stretch=name == names[-1])
        self.tree.grid(row=0, column=0, sticky="nsew")
        scroll = ttk.Scrollbar(self, orient="vertical", command=self.tree.yview)
        scroll.grid(row=0, column=1, sticky="ns")
        self.tree.configure(yscrollcommand=scroll.set)
        self.tree.tag_configure("bad", foreground="#b00020")
        buttons = ttk.Frame(self)
        buttons.grid(row=0, column=2, sticky="n", padx=(PAD, 0))
        self.add_button = ttk.Button(buttons, text="Add…", command=on_add)
        self.edit_button = ttk.Button(buttons, text="Edit…", command=self._for_selected(on_edit))
        self.remove_button = ttk.Button(buttons, text="Remove", command=self._for_selected(on_remove))
        for b in (self.add_button, self.edit_button, self.remove_button):
            b.pack(fill="x", pady=(0, 4))
        self.tree.bind("<<TreeviewSelect>>", lambda e: self._sync())
        self.tree.bind("<Double-1>", lambda e: self.edit_button.invoke())
        self._sync()

    def _for_selected(self, action: Callable[[str], object]) -> Callable[[], object]:
        def run() -> object:
            key = self.selected()
            return action(key) if key is not None else None
        return run

    def selected(self) -> str | None:
        chosen = self.tree.selection()
        return chosen[0] if chosen else None

    def show(self, rows: Sequence[tuple[str, Sequence[str]]], select: str | None = None,
             bad: frozenset[str] = frozenset()) -> None:
        """Replace the rows (iid, column values); keep or move the selection."""
        keep = select if select is not None else self.selected()
        self.tree.delete(*self.tree.get_children())
        for iid, values in rows:
            self.tree.insert("", "end", iid=iid, values=list(values), tags=("bad",) if iid in bad else ())
        if keep is not None and self.tree.exists(keep):
            self.tree.selection_set(keep)
            self.tree.see(keep)
        self._sync()

    def row(self, iid: str) -> list[str]:
        """What the list shows on the row ``iid`` (tests read it)."""
        return [str(v) for v in self.tree.item(iid, "values")]

    def _sync(self) -> None:
        state = ["!disabled"] if self.selected() is not None else ["disabled"]
        self.edit_button.state(state)
        self.remove_button.state(state)
