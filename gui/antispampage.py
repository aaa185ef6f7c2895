"""Settings > Anti-spam: the checks on incoming mail, their limits, and the content rules.

The checks apply only to clients outside the trusted networks that have not logged in,
and a white-list entry (Access page) skips them all; the page says so at the top.  Each
check is off, tag (an X-Spam-Flag header and delivery into the account's Junk folder)
or reject.  Like the Connections page it has to fit a screen 800 pixels high, so the
checks take a line each and the limits two to a line, with the content rules underneath.

The content rules are a list the page keeps itself (``self.rules``, dicts as in
ismail.json); Add and Edit open a ``RuleEditor``, which in the manner of idlelib's Query
refuses what cannot work (an empty pattern, a regular expression ``re`` refuses) next to
the field, and with ``_utest`` neither grabs the pointer nor waits, so tests can drive it.
"""
from __future__ import annotations

import copy
import re
import tkinter as tk
from tkinter import ttk
from typing import Any

from ismail import config
from ismail.config import FieldError, Settings

from .pages import RANGES, Page, span
from .ruleeditor import RuleEditor, action_text, where_text  # noqa: F401 (RuleEditor: tests)
from .widgets import PAD

WIDE = 940  # where the page's widest lines wrap: it is as wide as the Connections page
ACTIONS: tuple[str, ...] = config.ACTIONS
INTRO = ("These checks apply only to clients outside the trusted networks that have not logged "
         "in; one on the white list (Access page) skips them all. Each check is off, \"tag\" (an "
         "X-Spam-Flag header, and delivery into the account's Junk folder) or \"reject\" (refused).")
CHECKS = (  # setting, label, what it looks at in plain words
    ("rdns", "Reverse DNS:", "the client's address must have a name that leads back to the same address"),
    ("dnsbl_action", "DNS block lists:", "the client's address is looked up in lists of known spam senders"),
    ("spf", "SPF:", "the sender's domain lists the servers that may send its mail"),
    ("dkim", "DKIM:", "a signature of the sender's domain: tagged or refused when one is broken and none holds"),
    ("dmarc", "DMARC:", 'the sender domain\'s own policy; "reject" honours it (its quarantine goes to Junk)'),
)
DNSBL_NOTE = ("Spamhaus is free only for small, non-commercial use, and does not answer through "
              "public resolvers (8.8.8.8 and the like): see the README.")
class AntispamPage(Page):
    title = "Anti-spam"

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, dialog)
        self._utest: bool = getattr(dialog, "_utest", False)
        self.rules: list[Any] = []
        self.actions = {key: tk.StringVar(self) for key, _, _ in CHECKS}
        self.vars = {name: tk.StringVar(self) for name in (
            "greylist_delay_seconds", "connection_rate", "greeting_pause_ms", "tls_handshake_seconds",
            "max_unknown_recipients")}
        self.greylisting = tk.BooleanVar(self)
        self.editor: RuleEditor | None = None
        ttk.Label(self, text=INTRO, wraplength=WIDE, justify="left").grid(
            row=0, column=0, columnspan=3, sticky="w", pady=(0, PAD))
        checks = ttk.LabelFrame(self, text="Checks", padding=PAD)
        checks.grid(row=1, column=0, columnspan=3, sticky="ew")
        self._build_checks(checks)
        limits = ttk.LabelFrame(self, text="Limits", padding=PAD)
        limits.grid(row=2, column=0, columnspan=3, sticky="ew", pady=(PAD, 0))
        self._build_limits(limits)
        self._build_rules()

    # -- building ------------------------------------------------------------------------------
    def _build_checks(self, box: ttk.LabelFrame) -> None:
        """A line per check: its name, off / tag / reject, and what it looks at."""
        self.action_boxes: dict[str, ttk.Combobox] = {}
        box.columnconfigure(2, weight=1)  # the zones' note widens the hints' column, not the boxes'
        row = 0
        for key, label, hint in CHECKS:
            ttk.Label(box, text=label).grid(row=row, column=0, sticky="w", padx=(0, PAD), pady=1)
            combo = ttk.Combobox(box, textvariable=self.actions[key], values=list(ACTIONS),
                                 state="readonly", width=8)
            combo.grid(row=row, column=1, sticky="w", pady=1)
            self.action_boxes[key] = combo
            ttk.Label(box, text=hint, style="Hint.TLabel", wraplength=WIDE - 240, justify="left").grid(
                row=row, column=2, sticky="w", padx=(PAD, 0))
            self.error_for(f"antispam.{key}", box, row + 1, 1, 2, wraplength=WIDE - 150)
            row += 2
            if key == "dnsbl_action":
                ttk.Label(box, text="Zones:").grid(row=row, column=0, sticky="nw", padx=(0, PAD), pady=1)
                line = ttk.Frame(box)
                line.grid(row=row, column=1, columnspan=2, sticky="w", pady=1)
                self.zones = self.text_box(line, 3)
                self.zones.configure(width=40)
                self.zones.pack(side="left", anchor="n")
                ttk.Label(line, text="one per line, e.g. zen.spamhaus.org, or with the answers that "
                          "count: zen.spamhaus.org=127.0.0.2-127.0.0.11. " + DNSBL_NOTE,
                          style="Hint.TLabel", wraplength=WIDE - 400, justify="left").pack(
                    side="left", anchor="n", padx=(PAD, 0))
                self.error_for("antispam.dnsbl", box, row + 1, 1, 2, wraplength=WIDE - 150)
                row += 2

    def _build_limits(self, box: ttk.LabelFrame) -> None:
        """Two fields a line: the limits are short, and the page must fit 800 pixels."""
        box.columnconfigure(1, minsize=WIDE // 2 - 210)
        self.greylist_box = ttk.Checkbutton(box, text="Greylisting, retry after:", variable=self.greylisting,
                                            command=self._sync_states)
        self.greylist_box.grid(row=0, column=0, sticky="w", padx=(0, PAD), pady=1)
        self.spins: dict[str, ttk.Spinbox] = {}
        for row, column, name, label, hint in (
                (0, 0, "greylist_delay_seconds", None, "seconds"),
                (0, 2, "connection_rate", "Connections a minute:", "from one address"),
                (2, 0, "greeting_pause_ms", "Greeting pause:", "ms; 0 = off"),
                (2, 2, "tls_handshake_seconds", "TLS handshake limit:", "seconds"),
                (4, 0, "max_unknown_recipients", "Unknown recipients:", "in one session, then ISMail "
                 "hangs up (someone guessing addresses)")):
            key = f"antispam.{name}"
            lo, hi = RANGES[key]
            if label:
                ttk.Label(box, text=label).grid(row=row, column=column, sticky="w",
                                                padx=(PAD * 2 if column else 0, PAD), pady=1)
            line = ttk.Frame(box)
            line.grid(row=row, column=column + 1, sticky="w", pady=1, columnspan=3 if row == 4 else 1)
            spin = ttk.Spinbox(line, from_=lo, to=hi, textvariable=self.vars[name], width=7)
            spin.pack(side="left")
            ttk.Label(line, text=f"{span(key)}  {hint}", style="Hint.TLabel").pack(side="left", padx=(PAD, 0))
            self.spins[name] = spin
            # Under a left field the error may run on under the right field's label.
            self.error_for(key, box, row + 1, column + 1, 1 if column else 3 if row == 4 else 2,
                           wraplength=WIDE - 300 if row == 4 else WIDE // 2 - 50 if column == 0 else 360)
        ttk.Label(box, text="Greylisting: a sender and server not seen before must try again after the "
                  "delay (real servers do, most spam programs do not). Greeting pause: a client that "
                  "talks before ISMail's greeting is refused (spam programs do).",
                  style="Hint.TLabel", wraplength=WIDE - 20, justify="left").grid(
            row=6, column=0, columnspan=4, sticky="w", pady=(4, 0))

    def _build_rules(self) -> None:
        box = ttk.LabelFrame(self, text="Content rules: checked in this order on each message once it "
                             "has arrived; the first that matches decides", padding=PAD)
        box.grid(row=3, column=0, columnspan=3, sticky="ew", pady=(PAD, 0))
        box.columnconfigure(0, weight=1)
        self.tree = ttk.Treeview(box, columns=("on", "name", "where", "match", "pattern", "action"),
                                 show="headings", height=3, selectmode="browse")
        for col, text, width in (("on", "On", 34), ("name", "Name", 110), ("where", "Looks at", 100),
                                 ("match", "Match", 74), ("pattern", "Pattern", 150), ("action", "Then", 110)):
            self.tree.heading(col, text=text, anchor="w")
            self.tree.column(col, width=width, anchor="w", stretch=col == "pattern")
        self.tree.tag_configure("bad", foreground="#b00020")
        self.tree.grid(row=1, column=0, sticky="nsew")
        scroll = ttk.Scrollbar(box, orient="vertical", command=self.tree.yview)
        scroll.grid(row=1, column=1, sticky="ns")
        self.tree.configure(yscrollcommand=scroll.set)
        self.tree.bind("<<TreeviewSelect>>", lambda e: self._sync_states())
        self.tree.bind("<Double-1>", lambda e: self.edit_rule())
        buttons = ttk.Frame(box)
        buttons.grid(row=1, column=2, sticky="n", padx=(PAD, 0))
        self.add_button = ttk.Button(buttons, text="Add…", command=self.add_rule)
        self.edit_button = ttk.Button(buttons, text="Edit…", command=self.edit_rule)
        self.remove_button = ttk.Button(buttons, text="Remove", command=self.remove_rule)
        self.up_button = ttk.Button(buttons, text="Up", command=lambda: self.move_rule(-1))
        self.down_button = ttk.Button(buttons, text="Down", command=lambda: self.move_rule(1))
        for i, b in enumerate((self.add_button, self.edit_button, self.remove_button, self.up_button,
                               self.down_button)):
            b.grid(row=i // 3, column=i % 3, sticky="ew", padx=(0 if i % 3 == 0 else 4, 0), pady=(0, 4))
        self.error_for("antispam.rules", box, 2, 0, 3, wraplength=WIDE)

    # -- the rule list ------------------------------------------------------------------------
    def selected(self) -> int | None:
        chosen = self.tree.selection()
        return int(chosen[0]) if chosen else None

    def _show_rules(self, select: int | None = None, bad: frozenset[int] = frozenset()) -> None:
        self.tree.delete(*self.tree.get_children())
        for i, rule in enumerate(self.rules):
            if isinstance(rule, dict):
                values = ("✓" if rule.get("enabled", True) else "", rule.get("name", ""),
                          where_text(rule.get("where", "")), rule.get("match", ""),
                          rule.get("pattern", ""), action_text(rule))
            else:
                values = ("", "(not a rule)", "", "", str(rule), "")
            self.tree.insert("", "end", iid=str(i), values=values, tags=("bad",) if i in bad else ())
        if select is not None and 0 <= select < len(self.rules):
            self.tree.selection_set(str(select))
            self.tree.see(str(select))
        self._sync_states()

    def add_rule(self) -> "RuleEditor":
        def added(rule: dict) -> None:
            self.rules.append(rule)
            self._show_rules(select=len(self.rules) - 1)

        self.editor = RuleEditor(self, "Add content rule", None, added, _utest=self._utest)
        return self.editor

    def edit_rule(self) -> "RuleEditor | None":
        index = self.selected()
        if index is None or not isinstance(self.rules[index], dict):
            return None

        def edited(rule: dict) -> None:
            self.rules[index] = rule
            self._show_rules(select=index)

        self.editor = RuleEditor(self, "Edit content rule", self.rules[index], edited, _utest=self._utest)
        return self.editor

    def remove_rule(self) -> None:
        index = self.selected()
        if index is None:
            return
        del self.rules[index]
        self._show_rules(select=min(index, len(self.rules) - 1) if self.rules else None)

    def move_rule(self, step: int) -> None:
        index = self.selected()
        if index is None or not 0 <= index + step < len(self.rules):
            return
        self.rules[index], self.rules[index + step] = self.rules[index + step], self.rules[index]
        self._show_rules(select=index + step)

    def _sync_states(self) -> None:
        self.spins["greylist_delay_seconds"].state(["!disabled"] if self.greylisting.get() else ["disabled"])
        index = self.selected()
        for button, on in ((self.edit_button, index is not None), (self.remove_button, index is not None),
                           (self.up_button, index is not None and index > 0),
                           (self.down_button, index is not None and index < len(self.rules) - 1)):
            button.state(["!disabled"] if on else ["disabled"])

    # -- settings -----------------------------------------------------------------------------
    def show_errors(self, errors: list[FieldError]) -> list[FieldError]:
        """As every page; a rule's problem says "Rule 3 (name): ..." and its row turns red."""
        bad: set[int] = set()
        readable: list[FieldError] = []
        for e in errors:
            m = re.match(r"antispam\.rules\[(\d+)\]:? *(?:= *)?", e.message) if e.key == "antispam.rules" else None
            if m:
                i = int(m.group(1))
                bad.add(i)
                rule = self.rules[i] if i < len(self.rules) else None
                name = rule.get("name") if isinstance(rule, dict) else None
                text = e.message[m.end():]
                if isinstance(name, str) and name:  # said once, at the start
                    text = f'Rule {i + 1} ({name}): ' + text.replace(f' (rule "{name}")', "")
                else:
                    text = f"Rule {i + 1}: {text}"
                e = FieldError(e.key, text)
            readable.append(e)
        self._show_rules(select=self.selected(), bad=frozenset(bad))
        return super().show_errors(readable)

    def load(self, s: Settings) -> None:
        spam = s.antispam
        for key, var in self.actions.items():
            var.set(str(getattr(spam, key)))
        for name, var in self.vars.items():
            var.set(str(getattr(spam, name)))
        self.greylisting.set(bool(spam.greylisting))
        self.zones.delete("1.0", "end")
        zones = spam.dnsbl
        self.zones.insert("1.0", "\n".join(map(str, zones)) if isinstance(zones, list) else str(zones))
        self.rules = copy.deepcopy(spam.rules) if isinstance(spam.rules, list) else []
        self._show_rules()

    def store(self, s: Settings, problems: list[FieldError]) -> None:
        spam = s.antispam
        for key, var in self.actions.items():
            setattr(spam, key, var.get())
        for name, var in self.vars.items():
            setattr(spam, name, self.number(var.get(), f"antispam.{name}", getattr(spam, name), problems))
        spam.greylisting = self.greylisting.get()
        # One per line, kept whole: an entry's answers are separated by commas ("zone=127.0.0.2,
        # 127.0.0.4"), and "not a zone" is better refused as one entry than as three.
        spam.dnsbl = [" ".join(line.split()) for line in self.zones.get("1.0", "end").splitlines()
                      if line.strip()]
        spam.rules = copy.deepcopy(self.rules)
