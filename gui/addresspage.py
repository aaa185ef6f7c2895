"""Settings > Addresses: aliases, groups, each domain's catch-all, and domain aliases.

Like the Accounts page this one acts at once: every Add, Edit and Remove is saved to
``addresses.json`` through ``Admin.address_book`` (the running server's book, so the next
message already sees the change; a server in another process reloads the file within a
second).  OK / Apply / Cancel do not concern it.  The store checks each edit against the
whole book and the accounts; its refusal is shown in the dialog word for word, since it
names the entry and the conflict, and nothing is saved.  Problems that other changes
caused (an account removed under an alias) are listed in red under the lists.

An entry's address (or domain) is fixed once made: Edit changes what it delivers to;
another address is a new entry.
"""
from __future__ import annotations

import tkinter as tk
from tkinter import messagebox, ttk
from typing import TYPE_CHECKING, Callable

from ismail.admin import AccountError
from ismail.config import FieldError, Settings
from ismail.store.addressbook import AddressError

from .listedit import EntryList, Field, FormDialog, Values, problem_text
from .pages import Page, split_list
from .widgets import PAD, ErrorLabel

if TYPE_CHECKING:
    from .controller import Controller

WIDTH = 1000  # as wide as the Anti-spam page: two lists side by side
SENDERS = {"anyone": "Anyone", "members": "Members only", "local": "This server's domains"}
ONE_A_LINE = "one address per line"
INTRO = ("Other addresses of your domains: an alias delivers to the addresses it lists; a group "
         "does too, and can limit who may write to it; a catch-all takes the mail for a domain's "
         "unknown addresses; a domain alias delivers name@alias as name@domain. Changes on this "
         "page take effect at once.")


class AddressesPage(Page):
    title = "Addresses"

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, dialog)
        self.controller: Controller = dialog.controller
        self.admin = self.controller.admin
        self._utest: bool = getattr(dialog, "_utest", False)
        self.form: FormDialog | None = None  # the last dialog opened (tests fill it in)
        self.book: dict = {"aliases": {}, "groups": {}, "catch_all": {}, "domain_aliases": {}}
        self.columnconfigure(0, weight=1, uniform="half")
        self.columnconfigure(1, weight=1, uniform="half")
        ttk.Label(self, text=INTRO, wraplength=WIDTH, justify="left").grid(
            row=0, column=0, columnspan=2, sticky="w", pady=(0, PAD))
        self.aliases = EntryList(self, "Aliases", (("address", "Address", 150), ("targets", "Delivers to", 180)),
                                 self.add_alias, self.edit_alias, self.remove_alias, height=10)
        self.groups = EntryList(self, "Groups", (("address", "Address", 130), ("senders", "Who may send", 100),
                                                 ("members", "Members", 100)),
                                self.add_group, self.edit_group, self.remove_group, height=10)
        self.catch_all = EntryList(self, "Catch-all: unknown addresses of a domain go to",
                                   (("domain", "Domain", 140), ("account", "Account", 190)),
                                   self.add_catch_all, self.edit_catch_all, self.remove_catch_all, height=6)
        self.domain_aliases = EntryList(self, "Domain aliases", (("alias", "Alias domain", 140),
                                                                 ("target", "Delivers as", 190)),
                                        self.add_domain_alias, self.edit_domain_alias,
                                        self.remove_domain_alias, height=6)
        for lst, row, column in ((self.aliases, 1, 0), (self.groups, 1, 1), (self.catch_all, 2, 0),
                                 (self.domain_aliases, 2, 1)):
            lst.grid(row=row, column=column, sticky="nsew", pady=(0, PAD), padx=(0, PAD) if column == 0 else 0)
        self.note = ErrorLabel(self, wraplength=WIDTH, row=3, column=0, columnspan=2, sticky="w")
        self.problems = ErrorLabel(self, wraplength=WIDTH, row=4, column=0, columnspan=2, sticky="w")

    # -- Page duties --------------------------------------------------------------------------
    def load(self, settings: Settings) -> None:
        self.refresh()

    def store(self, settings: Settings, problems: list[FieldError]) -> None:
        pass  # nothing waits for Apply here

    # -- reading ------------------------------------------------------------------------------
    def domains(self) -> list[str]:
        return self.controller.local_domains()

    def accounts(self) -> set[str]:
        """Every account of the local domains (AccountError when accounts.json is unreadable)."""
        return self.admin.account_addresses(self.domains())

    def refresh(self, select: tuple[EntryList, str] | None = None) -> None:
        book = self.admin.address_book
        self.book = b = book.snapshot()

        def show(lst: EntryList, rows: list[tuple[str, tuple[str, ...]]]) -> None:
            lst.show(sorted(rows), select[1] if select and select[0] is lst else None)
        show(self.aliases, [(a, (a, ", ".join(t))) for a, t in b["aliases"].items()])
        show(self.groups, [(a, (a, SENDERS.get(g["senders"], g["senders"]), ", ".join(g["members"])))
                           for a, g in b["groups"].items()])
        show(self.catch_all, [(d, (d, t)) for d, t in b["catch_all"].items()])
        show(self.domain_aliases, [(a, (a, t)) for a, t in b["domain_aliases"].items()])
        try:
            found = book.problems(accounts=self.accounts(), local_domains=set(self.domains()))
        except AccountError as e:
            found = [str(e)]
        self.problems.show(problem_text([book.load_problem, *found]))

    def _save(self, lst: EntryList, key: str, change: Callable[[], None]) -> str | None:
        """Run an edit of the store; its refusal as a sentence, or None when saved."""
        try:
            change()
        except (AddressError, AccountError) as e:
            return str(e)
        self.note.show("")
        self.refresh(select=(lst, key))
        return None

    def _remove(self, lst: EntryList, what: str, change: Callable[[], None]) -> bool:
        if not self._utest and not messagebox.askyesno("Remove", f"Remove {what}?", parent=self):
            return False
        try:
            change()
        except (AddressError, AccountError) as e:
            self.note.show(str(e))
            return False
        self.note.show("")
        self.refresh()
        return True

    def _qualify(self, text: str) -> str:
        """A name alone means an address of the primary domain, as on the Accounts page."""
        text = text.strip()
        return f"{text}@{self.domains()[0]}" if text and "@" not in text else text

    def _open(self, title: str, prompt: str, fields: list[Field], check: Callable[[Values], str | None]
              ) -> FormDialog:
        self.form = FormDialog(self, title, prompt, fields, check, _utest=self._utest)
        return self.form

    # -- aliases ------------------------------------------------------------------------------
    def _alias_form(self, title: str, address: str, targets: list[str]) -> FormDialog:
        def check(v: Values) -> str | None:
            addr = self._qualify(str(v["address"]))
            if not addr:
                return "Type the alias's address."
            return self._save(self.aliases, addr.lower(), lambda: self.admin.address_book.set_alias(
                addr, split_list(str(v["targets"])), accounts=self.accounts(),
                local_domains=set(self.domains())))
        return self._open(title, f"Mail for the alias goes to every address listed (a name alone "
                          f"means @{self.domains()[0]}).",
                          [Field("address", "Alias:", address, locked=bool(address)),
                           Field("targets", "Delivers to:", "\n".join(targets), "text", hint=ONE_A_LINE)],
                          check)

    def add_alias(self) -> FormDialog:
        return self._alias_form("Add alias", "", [])

    def edit_alias(self, address: str) -> FormDialog:
        return self._alias_form("Edit alias", address, self.book["aliases"].get(address, []))

    def remove_alias(self, address: str) -> bool:
        return self._remove(self.aliases, f"the alias {address}",
                            lambda: self.admin.address_book.remove_alias(address))

    # -- groups -------------------------------------------------------------------------------
    def _group_form(self, title: str, address: str, group: dict) -> FormDialog:
        labels = {label: mode for mode, label in SENDERS.items()}

        def check(v: Values) -> str | None:
            addr = self._qualify(str(v["address"]))
            if not addr:
                return "Type the group's address."
            senders = labels.get(str(v["senders"]), str(v["senders"]))
            return self._save(self.groups, addr.lower(), lambda: self.admin.address_book.set_group(
                addr, split_list(str(v["members"])), senders, accounts=self.accounts(),
                local_domains=set(self.domains())))
        return self._open(title, "Mail for the group goes to every member; who may write to it is "
                          "up to you.",
                          [Field("address", "Group:", address, locked=bool(address)),
                           Field("senders", "Who may send:", SENDERS[group.get("senders", "anyone")],
                                 "choice", tuple(labels), width=34),
                           Field("members", "Members:", "\n".join(group.get("members", [])), "text",
                                 hint=ONE_A_LINE)],
                          check)

    def add_group(self) -> FormDialog:
        return self._group_form("Add group", "", {})

    def edit_group(self, address: str) -> FormDialog:
        return self._group_form("Edit group", address, self.book["groups"].get(address, {}))

    def remove_group(self, address: str) -> bool:
        return self._remove(self.groups, f"the group {address}",
                            lambda: self.admin.address_book.remove_group(address))

    # -- catch-all ----------------------------------------------------------------------------
    def _catch_all_form(self, title: str, domain: str, account: str) -> FormDialog | None:
        free = [d for d in self.domains() if d not in self.book["catch_all"]]
        if not domain and not free:
            self.note.show("Every domain has a catch-all already: edit one instead.")
            return None
        try:
            accounts = sorted(self.accounts(), key=lambda a: (a.rpartition("@")[2], a))
        except AccountError as e:
            self.note.show(str(e))
            return None

        def check(v: Values) -> str | None:
            dom = str(v["domain"]).strip().lower()
            target = str(v["account"]).strip()
            if target and "@" not in target:
                target = f"{target}@{dom}"
            if not target:
                return "Choose the account that gets the mail."
            return self._save(self.catch_all, dom, lambda: self.admin.address_book.set_catch_all(
                dom, target, accounts=set(accounts), local_domains=set(self.domains())))
        return self._open(title, "Mail for any address of the domain that is not an account, alias "
                          "or group goes to this account (which also gets much of the spam sent "
                          "to guessed addresses).",
                          [Field("domain", "Domain:", domain or free[0], "choice", free, locked=bool(domain)),
                           Field("account", "Account:", account, "pick", accounts)],
                          check)

    def add_catch_all(self) -> FormDialog | None:
        return self._catch_all_form("Add catch-all", "", "")

    def edit_catch_all(self, domain: str) -> FormDialog | None:
        return self._catch_all_form("Edit catch-all", domain, self.book["catch_all"].get(domain, ""))

    def remove_catch_all(self, domain: str) -> bool:
        return self._remove(self.catch_all, f"the catch-all of {domain}",
                            lambda: self.admin.address_book.set_catch_all(
                                domain, None, accounts=self.accounts(), local_domains=set(self.domains())))

    # -- domain aliases -----------------------------------------------------------------------
    def _domain_alias_form(self, title: str, alias: str, target: str) -> FormDialog:
        def check(v: Values) -> str | None:
            dom = str(v["alias"]).strip().lower().rstrip(".")
            if not dom:
                return "Type the alias domain."
            return self._save(self.domain_aliases, dom, lambda: self.admin.address_book.set_domain_alias(
                dom, str(v["target"]), local_domains=set(self.domains()), accounts=self.accounts()))
        return self._open(title, "Mail for name@alias-domain is delivered as name@domain (its "
                          "accounts, aliases and groups). Its MX record must point here too.",
                          [Field("alias", "Alias domain:", alias, locked=bool(alias)),
                           Field("target", "Delivers as:", target or self.domains()[0], "choice",
                                 self.domains())],
                          check)

    def add_domain_alias(self) -> FormDialog:
        return self._domain_alias_form("Add domain alias", "", "")

    def edit_domain_alias(self, alias: str) -> FormDialog:
        return self._domain_alias_form("Edit domain alias", alias, self.book["domain_aliases"].get(alias, ""))

    def remove_domain_alias(self, alias: str) -> bool:
        return self._remove(self.domain_aliases, f"the domain alias {alias}",
                            lambda: self.admin.address_book.set_domain_alias(
                                alias, None, local_domains=set(self.domains())))
