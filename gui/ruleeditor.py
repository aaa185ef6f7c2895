"""The content-rule editor of Settings > Anti-spam: one rule's where, how and what to do.

In the manner of idlelib's Query it refuses what cannot work (an empty pattern, a regular
expression ``re`` refuses, one the rules module finds too slow) next to the field, and with
``_utest`` neither grabs the pointer nor waits, so tests can drive it.
"""
from __future__ import annotations

import re
import tkinter as tk
from tkinter import ttk
from typing import Callable

from ismail import config
from ismail.config import Settings

from .widgets import PAD, ErrorLabel, Window, ok_cancel_row, place_over

WHERE = {"Subject": "subject", "From": "from", "To": "to", "All headers": "headers",
         "One header": "header:", "Body": "body"}
MATCH = {"contains the text": "contains", "matches the regular expression": "regex"}
DO = {"Refuse the message": "reject", "Deliver into Junk": "junk", "Deliver into a folder": "folder"}
HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII but ':'


def label_of(table: dict[str, str], value: object) -> str:
    return next((k for k, v in table.items() if v == value), str(value))


def where_text(where: object) -> str:
    where = str(where)
    if where.lower().startswith("header:"):
        return f"header {where[7:]}"
    return label_of(WHERE, where)


def action_text(rule: dict) -> str:
    action = rule.get("action")
    if action == "folder":
        return f"folder {rule.get('folder', '')}"
    return {"reject": "refuse", "junk": "Junk"}.get(str(action), str(action))


class RuleEditor(Window):
    """One content rule: what to look at, how to match, what to do.  ``on_ok`` gets the rule."""

    def __init__(self, parent: tk.Misc, title: str, rule: dict | None, on_ok: Callable[[dict], None],
                 *, _utest: bool = False) -> None:
        super().__init__(parent)
        self.withdraw()
        self.title(title)
        self.transient(parent.winfo_toplevel())
        self.resizable(False, False)
        self.on_ok = on_ok
        self.original = dict(rule) if rule else {}
        r = {"name": "", "where": "subject", "match": "contains", "pattern": "", "action": "junk",
             "folder": "", "enabled": True, **self.original}
        where = str(r["where"])
        self.name = tk.StringVar(self, str(r["name"]))
        self.where = tk.StringVar(self, "One header" if where.lower().startswith("header:")
                                  else label_of(WHERE, where))
        self.header = tk.StringVar(self, where[7:] if where.lower().startswith("header:") else "")
        self.match = tk.StringVar(self, label_of(MATCH, r["match"]))
        self.pattern = tk.StringVar(self, str(r["pattern"]))
        self.action = tk.StringVar(self, label_of(DO, r["action"]))
        self.folder = tk.StringVar(self, str(r["folder"]))
        self.enabled = tk.BooleanVar(self, bool(r["enabled"]))
        body = ttk.Frame(self, padding=PAD * 2)
        body.grid(sticky="nsew")
        self.errors: dict[str, ErrorLabel] = {}

        def row(n: int, label: str, widget: tk.Widget, error: str | None = None) -> None:
            ttk.Label(body, text=label).grid(row=n, column=0, sticky="w", padx=(0, PAD), pady=2)
            widget.grid(row=n, column=1, sticky="w", pady=2)
            if error:
                self.errors[error] = ErrorLabel(body, wraplength=360, row=n + 1, column=1, sticky="w")

        self.name_entry = ttk.Entry(body, textvariable=self.name, width=36)
        row(0, "Name:", self.name_entry, "name")
        line = ttk.Frame(body)
        self.where_box = ttk.Combobox(line, textvariable=self.where, values=list(WHERE), state="readonly",
                                      width=12)
        self.where_box.pack(side="left")
        self.where_box.bind("<<ComboboxSelected>>", lambda e: self._sync_states())
        self.header_entry = ttk.Entry(line, textvariable=self.header, width=20)
        self.header_entry.pack(side="left", padx=(PAD, 0))
        row(2, "Look at:", line, "header")
        self.match_box = ttk.Combobox(body, textvariable=self.match, values=list(MATCH), state="readonly",
                                      width=34)
        row(4, "Match:", self.match_box)
        self.pattern_entry = ttk.Entry(body, textvariable=self.pattern, width=36)
        row(5, "Pattern:", self.pattern_entry, "pattern")
        line = ttk.Frame(body)
        self.action_box = ttk.Combobox(line, textvariable=self.action, values=list(DO), state="readonly",
                                       width=22)
        self.action_box.pack(side="left")
        self.action_box.bind("<<ComboboxSelected>>", lambda e: self._sync_states())
        self.folder_entry = ttk.Entry(line, textvariable=self.folder, width=12)
        self.folder_entry.pack(side="left", padx=(PAD, 0))
        row(8, "Then:", line, "folder")
        self.enabled_box = ttk.Checkbutton(body, text="Rule in use", variable=self.enabled)
        self.enabled_box.grid(row=10, column=1, sticky="w", pady=(PAD, 0))
        self.error = ErrorLabel(body, wraplength=440, row=11, column=0, columnspan=2, sticky="w",
                                pady=(PAD // 2, 0))
        ok_cancel_row(self, body, 12)
        self._sync_states()
        place_over(self, parent)
        self.deiconify()
        self.name_entry.focus_set()
        if not _utest:
            self.grab_set()
            self.wait_window()

    def _sync_states(self) -> None:
        self.header_entry.state(["!disabled"] if self.where.get() == "One header" else ["disabled"])
        self.folder_entry.state(["!disabled"] if DO.get(self.action.get()) == "folder" else ["disabled"])

    def rule(self) -> dict:
        """The fields as a rule dict; keys this editor does not know are kept as they were."""
        where = WHERE.get(self.where.get(), self.where.get())
        action = DO.get(self.action.get(), self.action.get())
        rule = {**self.original, "name": self.name.get().strip(),
                "where": "header:" + self.header.get().strip() if where == "header:" else where,
                "match": MATCH.get(self.match.get(), self.match.get()), "pattern": self.pattern.get(),
                "action": action, "enabled": self.enabled.get()}
        if action == "folder":
            rule["folder"] = self.folder.get().strip()
        else:
            rule.pop("folder", None)
        return rule

    def problems(self, rule: dict) -> dict[str, str]:
        """What is wrong, by field ("" for the rule as a whole)."""
        found: dict[str, str] = {}
        if not rule["name"]:
            found["name"] = "Give the rule a name: the log says which rule refused or moved a message."
        if rule["where"].startswith("header:") and not HEADER_NAME.fullmatch(rule["where"][7:]):
            found["header"] = "Type the header's name, e.g. X-Mailer (no spaces, no colon)."
        if not rule["pattern"]:
            found["pattern"] = "Type the text to look for."
        elif rule["match"] == "regex":
            try:
                re.compile(rule["pattern"])
            except re.error as e:
                found["pattern"] = f"Not a regular expression Python understands: {e}."
        if rule["action"] == "folder" and not rule.get("folder"):
            found["folder"] = "Type the folder's name, e.g. Newsletters."
        if not found:  # the same check as Apply's, for what only ismail.config knows
            trial = Settings(server_name="localhost")
            trial.antispam.rules = [rule]
            for e in config.validate(trial):
                if e.key == "antispam.rules":  # "antispam.rules[0]: pattern: refused ..."
                    text = re.sub(r"^antispam\.rules\[0\]:? *", "", e.message).replace(
                        f' (rule "{rule["name"]}")', "")  # this window is about that rule
                    field, _, rest = text.partition(": ")
                    place = {"where": "header"}.get(field, field)
                    if place in self.errors and rest:
                        found[place] = rest[:1].upper() + rest[1:]
                    else:
                        found[""] = text
        return found

    def ok(self) -> None:
        rule = self.rule()
        found = self.problems(rule)
        for key, label in self.errors.items():
            label.show(found.get(key, ""))
        self.error.show(found.get("", ""))
        if found:
            return
        self.on_ok(rule)
        self.destroy()

    def cancel(self) -> None:
        self.destroy()
