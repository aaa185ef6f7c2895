"""The Accounts tab: local accounts per domain; add, remove, set password, quota, auto-reply, forwarding.

Unlike the other tabs this one acts at once (the accounts file is its own store, and a
new account should be able to receive mail the moment it exists), so OK / Apply / Cancel
do not concern it; the page says so.  postmaster and root exist in every domain and
cannot be removed (RFC 5321 requires postmaster).  Forwarding: the selected account's
targets fill an entry under the list; "Set forwarding" saves what it holds (empty stops
forwarding).  root shares postmaster's mailbox, password and forwarding.  Quota… and
Auto-reply… open the dialogs of ``accountextras``; the list shows each account's quota and
whether its automatic reply is on.

Under the list, the selected account's folders (INBOX and those its mail programs made
over IMAP) with their message counts and sizes.  They are read in a thread (``Pump``):
a mailbox may hold many thousands of messages, or sit on a slow disk, and the page must
not freeze meanwhile.  Reading them changes nothing in them (``Admin.account_folders``).
They are read again when the selection changes and when the page is shown.
"""
from __future__ import annotations

import logging
import tkinter as tk
from tkinter import messagebox, ttk
from typing import TYPE_CHECKING

from ismail.admin import AccountError
from ismail.config import FieldError, Settings

from .accountextras import autoreply_dialog, quota_dialog, quota_text
from .events import Pump
from .listedit import FormDialog
from .pages import WRAP, Page, split_list
from .widgets import PAD, ErrorLabel, Query

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("ismail.gui")

ALL = "All domains"
NO_ACCOUNT = "Folders: select an account to see them"


def human_size(n: int) -> str:
    """1536 -> "1.5 KB": bytes as a person reads them (1 KB = 1024 bytes, as mail programs count)."""
    if n < 1024:
        return f"{n} bytes" if n != 1 else "1 byte"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1024
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if n < 10 else f"{n:,.0f} {unit}"
    raise AssertionError("unreachable")


class AccountsPage(Page):
    title = "Accounts"

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, dialog)
        self.controller: Controller = dialog.controller
        self.admin = self.controller.admin  # the running server's accounts, else the file's
        self._utest: bool = dialog._utest
        self.columnconfigure(0, weight=1)
        self.columnconfigure(1, weight=0)
        self.rowconfigure(2, weight=2)
        self.rowconfigure(3, weight=1)
        ttk.Label(self, text="Each account has a mailbox that receives the mail for its address. "
                  "Changes on this page take effect at once.", wraplength=WRAP,
                  justify="left").grid(row=0, column=0, columnspan=2, sticky="w", pady=(0, PAD))
        top = ttk.Frame(self)
        top.grid(row=1, column=0, columnspan=2, sticky="w", pady=(0, PAD))
        ttk.Label(top, text="Domain:").pack(side="left", padx=(0, PAD))
        self.domain = tk.StringVar(self, ALL)
        self.domain_box = ttk.Combobox(top, textvariable=self.domain, state="readonly", width=30)
        self.domain_box.pack(side="left")
        self.domain_box.bind("<<ComboboxSelected>>", lambda e: self.refresh())
        self.tree = ttk.Treeview(self, columns=("address", "password", "quota", "reply", "forward", "mailbox"),
                                 show="headings", height=7, selectmode="browse")
        for col, text, width in (("address", "Address", 200), ("password", "Password", 80),
                                 ("quota", "Quota", 80), ("reply", "Auto-reply", 80),
                                 ("forward", "Copies go to", 150), ("mailbox", "Mailbox folder", 160)):
            self.tree.heading(col, text=text, anchor="w")
            self.tree.column(col, width=width, anchor="w", stretch=col == "mailbox")
        self.tree.grid(row=2, column=0, sticky="nsew")
        scroll = ttk.Scrollbar(self, orient="vertical", command=self.tree.yview)
        scroll.grid(row=2, column=1, sticky="ns")
        self.tree.configure(yscrollcommand=scroll.set)
        self.tree.bind("<<TreeviewSelect>>", lambda e: self._selection_changed())
        buttons = ttk.Frame(self)
        buttons.grid(row=2, column=2, sticky="n", padx=(PAD, 0))
        self.add_button = ttk.Button(buttons, text="Add…", command=self.add_account)
        self.password_button = ttk.Button(buttons, text="Set password…", command=self.set_password)
        self.remove_button = ttk.Button(buttons, text="Remove", command=self.remove_account)
        self.quota_button = ttk.Button(buttons, text="Quota…", command=self.set_quota)
        self.autoreply_button = ttk.Button(buttons, text="Auto-reply…", command=self.set_autoreply)
        for b in (self.add_button, self.password_button, self.remove_button, self.quota_button,
                  self.autoreply_button):
            b.pack(fill="x", pady=(0, 4))
        self._build_folders()
        fwd = ttk.Frame(self)
        fwd.grid(row=4, column=0, columnspan=3, sticky="ew", pady=(PAD, 0))
        fwd.columnconfigure(1, weight=1)
        ttk.Label(fwd, text="Forward copies to:").grid(row=0, column=0, sticky="w", padx=(0, PAD))
        self.forward = tk.StringVar(self)
        self.forward_entry = ttk.Entry(fwd, textvariable=self.forward, width=50)
        self.forward_entry.grid(row=0, column=1, sticky="ew")
        self.forward_entry.bind("<Return>", lambda e: self.set_forwarding())
        self.forward_button = ttk.Button(fwd, text="Set forwarding", command=self.set_forwarding)
        self.forward_button.grid(row=0, column=2, sticky="e", padx=(PAD, 0))
        ttk.Label(fwd, text="addresses separated by commas; each gets a copy of the selected "
                  "account's mail, which is also kept in its mailbox. Empty: no forwarding.",
                  style="Hint.TLabel", wraplength=WRAP, justify="left").grid(
            row=1, column=1, columnspan=2, sticky="w")
        self.note = ErrorLabel(self, wraplength=WRAP, row=5, column=0, columnspan=3, sticky="w", pady=(PAD, 0))
        self._builtin: set[str] = set()
        self._forwards: dict[str, list[str]] = {}  # address -> its targets, as last read
        self._quotas: dict[str, int | None] = {}   # address -> its quota in MB, as last read
        self.form: FormDialog | None = None        # the last quota or auto-reply dialog (tests)
        self.pump = Pump(self)
        self.folders_of: str | None = None  # whose folders the list shows (None: nobody's yet)
        self._looking: str | None = None    # whose folders are being read; older answers are dropped
        self.bind("<Map>", lambda e: self.show_folders() if e.widget is self else None, add="+")

    def _build_folders(self) -> None:
        box = self.folders_frame = ttk.LabelFrame(self, text=NO_ACCOUNT, padding=(PAD, 4))
        box.grid(row=3, column=0, columnspan=2, sticky="nsew", pady=(PAD, 0))
        box.columnconfigure(0, weight=1)
        box.rowconfigure(0, weight=1)
        self.folders = ttk.Treeview(box, columns=("messages", "size"), show="tree headings", height=5,
                                    selectmode="none")
        self.folders.heading("#0", text="Folder", anchor="w")
        self.folders.column("#0", width=300, stretch=True)
        for col, text in (("messages", "Messages"), ("size", "Size")):
            self.folders.heading(col, text=text, anchor="e")
            self.folders.column(col, width=120, anchor="e", stretch=False)
        self.folders.grid(row=0, column=0, sticky="nsew")
        scroll = ttk.Scrollbar(box, orient="vertical", command=self.folders.yview)
        scroll.grid(row=0, column=1, sticky="ns")
        self.folders.configure(yscrollcommand=scroll.set)

    # -- Page duties --------------------------------------------------------------------------
    def load(self, settings: Settings) -> None:
        domains = self.controller.local_domains()
        self.domain_box.configure(values=[ALL, *domains])
        if self.domain.get() not in (ALL, *domains):
            self.domain.set(ALL)
        self.refresh()

    def store(self, settings: Settings, problems: list[FieldError]) -> None:
        pass  # nothing waits for Apply here

    # -- the list -----------------------------------------------------------------------------
    def refresh(self) -> None:
        chosen = self.domain.get()
        domains = self.controller.local_domains()
        try:
            infos = self.admin.account_list(domains)
        except AccountError as e:
            self.note.show(str(e))
            return
        selected = self.selected()
        self.tree.delete(*self.tree.get_children())
        self._builtin = set()
        # root is postmaster's alias: the store keeps one forwarding list, under postmaster.
        self._forwards = {i.address: list(i.forward) for i in infos}
        for info in infos:
            if info.address.startswith("root@"):
                self._forwards[info.address] = self._forwards.get("postmaster@" + info.address[5:], [])
        self._quotas = {i.address: i.quota_mb for i in infos}
        replies = {r.account: r for r in self.admin.autoreplies.all()}
        for info in infos:
            if chosen != ALL and not info.address.endswith("@" + chosen):
                continue
            reply = replies.get(info.address)
            self.tree.insert("", "end", iid=info.address, values=(
                info.address, "set" if info.has_password else "not set", quota_text(info.quota_mb),
                "" if reply is None else "on" if reply.enabled else "off",
                ", ".join(self._forwards[info.address]), str(info.mailbox)))
            if info.builtin:
                self._builtin.add(info.address)
        if selected and self.tree.exists(selected):
            self.tree.selection_set(selected)
        self._selection_changed()

    def selected(self) -> str | None:
        chosen = self.tree.selection()
        return chosen[0] if chosen else None

    def _selection_changed(self) -> None:
        """The entry shows the selected account's forwarding as saved; the folders list its folders."""
        self.forward.set(", ".join(self._forwards.get(self.selected() or "", [])))
        self._sync_buttons()
        self.show_folders()

    # -- the selected account's folders -----------------------------------------------------------
    def show_folders(self) -> None:
        """Read the selected account's folders (in a thread) and show them when read."""
        address = self.selected()
        if address != self.folders_of:  # another account's folders must not stand under this one's name
            self.folders.delete(*self.folders.get_children())
            self.folders_of = None
        if address is None:
            self._looking = None
            self.folders_frame.configure(text=NO_ACCOUNT)
            return
        if self.folders_of is None:
            self.folders_frame.configure(text=f"Folders of {address}: reading…")
        self._looking = address
        self.pump.run(lambda: self.admin.account_folders(address),
                      lambda found, error: self._folders_read(address, found, error), name="account-folders")

    def _folders_read(self, address: str, found: list | None, error: BaseException | None) -> None:
        if address != self._looking or address != self.selected():
            return  # the selection moved on meanwhile: its own reading will answer
        self.folders.delete(*self.folders.get_children())
        self.folders_of = address
        if error is not None:
            if not isinstance(error, (AccountError, OSError)):
                log.error("reading the folders of %s failed", address, exc_info=error)
            self.folders_frame.configure(text=f"Folders of {address}: cannot be read ({error})")
            return
        found = found or []
        for name, messages, size in found:
            parent, _, leaf = name.rpartition("/")
            # A folder whose parent is not on disk (another program made it): its full name, at the top.
            under = parent if parent and self.folders.exists(parent) else ""
            self.folders.insert(under, "end", iid=name, text=leaf if under else name, open=True,
                                values=(f"{messages:,}", human_size(size)))
        folders, messages, size = len(found), sum(f[1] for f in found), sum(f[2] for f in found)
        self.folders_frame.configure(text=f"Folders of {address}: {folders} folder{'s' if folders != 1 else ''}, "
                                          f"{messages:,} message{'s' if messages != 1 else ''}, {human_size(size)}")

    def _sync_buttons(self) -> None:
        address = self.selected()
        for widget in (self.password_button, self.quota_button, self.autoreply_button, self.forward_entry,
                       self.forward_button):
            widget.state(["!disabled"] if address else ["disabled"])
        removable = address is not None and address not in self._builtin
        self.remove_button.state(["!disabled"] if removable else ["disabled"])

    # -- actions ------------------------------------------------------------------------------
    def add_account(self) -> Query:
        domain = self.domain.get()
        domain = domain if domain != ALL else self.controller.local_domains()[0]

        def check(values: list[str]) -> str | None:
            address, first, second = values
            address = address.strip()
            if "@" not in address:
                address = f"{address}@{domain}"
            if first != second:
                return "The two passwords are not the same."
            try:
                info = self.admin.account_add(address, first, self.controller.local_domains())
            except AccountError as e:
                return str(e)
            self.note.show("")
            self.refresh()
            if self.tree.exists(info.address):
                self.tree.selection_set(info.address)
                self.tree.see(info.address)
            return None

        return Query(self, "Add account", f"The new address (a name alone means @{domain}) and its "
                     "password.", [("Address:", "", False), ("Password:", "", True),
                                   ("Repeat password:", "", True)], check, _utest=self._utest)

    def set_password(self) -> Query | None:
        address = self.selected()
        if address is None:
            return None

        def check(values: list[str]) -> str | None:
            if values[0] != values[1]:
                return "The two passwords are not the same."
            try:
                self.admin.account_passwd(address, values[0])
            except AccountError as e:
                return str(e)
            self.refresh()
            return None

        return Query(self, "Set password", f"The new password for {address}:",
                     [("Password:", "", True), ("Repeat password:", "", True)], check, _utest=self._utest)

    def set_quota(self) -> FormDialog | None:
        address = self.selected()
        if address is None:
            return None
        self.form = quota_dialog(self, address, self._quotas.get(address))
        return self.form

    def set_autoreply(self) -> FormDialog | None:
        address = self.selected()
        if address is None:
            return None
        self.form = autoreply_dialog(self, address)
        return self.form

    def remove_account(self) -> None:
        address = self.selected()
        if address is None:
            return
        if address in self._builtin:
            self.note.show(f"{address} is built in and cannot be removed.")
            return
        if not self._utest and not messagebox.askyesno(
                "Remove account", f"Remove {address}?\n\nIts mailbox folder and the mail in it are "
                "kept.", parent=self):
            return
        try:
            self.admin.account_remove(address)
        except AccountError as e:
            self.note.show(str(e))
            return
        self.note.show("")
        self.refresh()

    def set_forwarding(self) -> None:
        """Save the entry as the selected account's forwarding; a bad address changes nothing."""
        address = self.selected()
        if address is None:
            return
        targets = split_list(self.forward.get())
        try:
            self.admin.account_forward(address, targets)
        except AccountError as e:
            self.note.show(str(e))  # the entry keeps what was typed, to be corrected
            return
        self.refresh()
        existing = set(self._forwards)  # every account of every local domain, built-in ones too
        domains = self.controller.local_domains()
        missing = [t for t in self._forwards.get(address, [])
                   if t.rpartition("@")[2].lower() in domains and t.lower() not in existing]
        self.note.show(f"Saved, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                       "not an account here yet: no copy can be kept for "
                       f"{'it' if len(missing) == 1 else 'them'} until added." if missing else "")
