"""The settings dialog's pages: Domain and Access (Connections, Accounts and Program have files of their own).

Each page is a Frame with three duties: ``load(settings)`` fills its fields,
``store(settings, problems)`` writes the fields back into a Settings (adding a
FieldError for text that is not even a number), and ``show_errors`` puts validate()'s
sentences under the fields they name.  Ranges and rules live in ismail.config only.
"""
from __future__ import annotations

import dataclasses
import re
import tkinter as tk
from tkinter import ttk

from ismail import config
from ismail.config import FieldError, Settings

from .widgets import PAD, ErrorLabel, friendly

WRAP = 720  # the width of the widest page, so introductions read as paragraphs
RANGES: dict[str, tuple[int, int]] = config.RANGES  # the single table of allowed ranges


def span(key: str) -> str:
    lo, hi = RANGES[key]
    return f"({lo}–{hi})"


def split_list(text: str) -> list[str]:
    """Entries separated by commas, spaces or lines, as a person types a list."""
    return [t for t in re.split(r"[\s,;]+", text) if t]


class Page(ttk.Frame):
    title = ""

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, padding=PAD * 2)
        self.dialog = dialog
        self.errors: dict[str, ErrorLabel] = {}
        self.columnconfigure(1, weight=1)

    def load(self, settings: Settings) -> None: ...

    def store(self, settings: Settings, problems: list[FieldError]) -> None: ...

    def commit(self) -> list[FieldError]:
        """After a valid Apply has saved ismail.json: put in force what lives elsewhere."""
        return []

    def error_for(self, key: str, parent: tk.Misc, row: int, column: int = 1, columnspan: int = 3,
                  wraplength: int = 460) -> ErrorLabel:
        label = ErrorLabel(parent, wraplength, row=row, column=column, columnspan=columnspan, sticky="w",
                           pady=(0, 4))
        self.errors[key] = label
        return label

    def show_errors(self, errors: list[FieldError]) -> list[FieldError]:
        """Show the errors this page has a place for; return the others."""
        mine: dict[str, list[str]] = {}
        others: list[FieldError] = []
        for e in errors:
            if e.key in self.errors:
                mine.setdefault(e.key, []).append(friendly(e))
            else:
                others.append(e)
        for key, label in self.errors.items():
            label.show("\n".join(mine.get(key, [])))
        return others

    @staticmethod
    def number(text: str, key: str, old: int, problems: list[FieldError]) -> int:
        try:
            return int(text.strip())
        except ValueError:
            lo, hi = RANGES[key]
            problems.append(FieldError(key, f"{key} = {text.strip()!r} is not a whole number "
                                            f"(allowed {lo}–{hi})"))
            return old

    @staticmethod
    def text_box(parent: tk.Misc, height: int) -> tk.Text:
        return tk.Text(parent, width=44, height=height, wrap="none", relief="solid", borderwidth=1,
                       highlightthickness=0, font="TkFixedFont", undo=True)


TLS_NOTE = ("Encryption: without a certificate of your own, ISMail makes a self-signed one for the "
            "server name, so STARTTLS, POP3 and IMAP are encrypted at once. A self-signed certificate "
            "encrypts but does not prove who the server is: mail programs warn about it. For a real "
            "one, set tls.certificate and tls.key in ismail.json to PEM files (Let's Encrypt's "
            "fullchain.pem and privkey.pem work as they are).")


class DomainPage(Page):
    title = "Domain"

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, dialog)
        self.primary = tk.StringVar(self)
        self.server_name = tk.StringVar(self)
        ttk.Label(self, text="Mail for these domains is kept in local mailboxes. Mail for any other "
                  "domain is sent on, but only for the computers listed on the Access page.",
                  wraplength=WRAP, justify="left").grid(row=0, column=0, columnspan=3, sticky="w",
                                                       pady=(0, PAD * 2))
        ttk.Label(self, text="Primary domain:").grid(row=1, column=0, sticky="w", padx=(0, PAD))
        self.primary_entry = ttk.Entry(self, textvariable=self.primary, width=36)
        self.primary_entry.grid(row=1, column=1, sticky="w")
        self.error_for("primary_domain", self, 2)
        ttk.Label(self, text="Additional domains:").grid(row=3, column=0, sticky="nw", padx=(0, PAD), pady=(PAD, 0))
        self.additional = self.text_box(self, 5)
        self.additional.grid(row=3, column=1, sticky="w", pady=(PAD, 0))
        ttk.Label(self, text="one per line", style="Hint.TLabel").grid(row=4, column=1, sticky="w")
        self.error_for("additional_domains", self, 5)
        ttk.Label(self, text="Server name:").grid(row=6, column=0, sticky="w", padx=(0, PAD), pady=(PAD * 2, 0))
        self.server_entry = ttk.Entry(self, textvariable=self.server_name, width=36)
        self.server_entry.grid(row=6, column=1, sticky="w", pady=(PAD * 2, 0))
        ttk.Label(self, text="how ISMail introduces itself to other servers (greeting, HELO)",
                  style="Hint.TLabel").grid(row=7, column=1, sticky="w")
        self.error_for("server_name", self, 8)
        dns = ttk.Frame(self)
        dns.grid(row=9, column=0, columnspan=3, sticky="w", pady=(PAD * 2, 0))
        self.dns_button = ttk.Button(dns, text="DNS records...", command=self.open_dns)
        self.dns_button.pack(side="left")
        ttk.Label(dns, text="  MX, SPF, DKIM and DMARC to publish for each domain, and a check of them",
                  style="Hint.TLabel").pack(side="left")
        ttk.Label(self, text=TLS_NOTE, wraplength=WRAP, justify="left", style="Hint.TLabel").grid(
            row=10, column=0, columnspan=3, sticky="w", pady=(PAD * 2, 0))

    def open_dns(self) -> tk.Toplevel:
        from .dnsview import dns_window
        return dns_window(self.winfo_toplevel(), self.dialog.controller, self.primary.get().strip().lower())

    def load(self, settings: Settings) -> None:
        self.primary.set(str(settings.primary_domain))
        self.server_name.set(str(settings.server_name))
        self.additional.delete("1.0", "end")
        domains = settings.additional_domains
        self.additional.insert("1.0", "\n".join(map(str, domains)) if isinstance(domains, list) else str(domains))

    def store(self, settings: Settings, problems: list[FieldError]) -> None:
        settings.primary_domain = self.primary.get().strip().lower().rstrip(".")
        settings.server_name = self.server_name.get().strip()
        settings.additional_domains = [d.lower().rstrip(".") for d in split_list(self.additional.get("1.0", "end"))]


class AccessPage(Page):
    title = "Access"

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, dialog)
        known = {f.name for f in dataclasses.fields(Settings)}
        # Blocking and login bans arrive with the server version that has them.
        self.has_blocked = "access" in known
        self.has_bans = "auth" in known and "auth.ban_after_failures" in RANGES
        ttk.Label(self, text="Computers in these networks may send mail through ISMail to any "
                  "address (relay): your own PCs and programs. Everyone else may only send mail "
                  "to your own domains, so ISMail is never an open relay.",
                  wraplength=WRAP, justify="left").grid(row=0, column=0, columnspan=3, sticky="w",
                                                       pady=(0, PAD * 2))
        ttk.Label(self, text="Trusted networks:").grid(row=1, column=0, sticky="nw", padx=(0, PAD))
        self.trusted = self.text_box(self, 5)
        self.trusted.grid(row=1, column=1, sticky="w")
        ttk.Label(self, text="one per line, e.g. 192.168.1.0/24 for a home network, or one "
                  "address such as 192.168.1.20", style="Hint.TLabel").grid(row=2, column=1, sticky="w")
        self.error_for("trusted_networks", self, 3)
        if self.has_blocked:
            ttk.Label(self, text="Blocked addresses:").grid(row=4, column=0, sticky="nw", padx=(0, PAD),
                                                           pady=(PAD, 0))
            self.blocked = self.text_box(self, 4)
            self.blocked.grid(row=4, column=1, sticky="w", pady=(PAD, 0))
            ttk.Label(self, text="one per line; ISMail hangs up on them at once",
                      style="Hint.TLabel").grid(row=5, column=1, sticky="w")
            self.error_for("access.blocked", self, 6)
        if self.has_bans:
            self.vars = {name: tk.StringVar(self) for name in ("failures", "window", "ban")}
            ttk.Label(self, text="Failed logins:").grid(row=7, column=0, sticky="w", padx=(0, PAD),
                                                       pady=(PAD, 0))
            line = ttk.Frame(self)
            line.grid(row=7, column=1, columnspan=2, sticky="w", pady=(PAD, 0))
            for kind, text in (("label", "after"), ("failures", "auth.ban_after_failures"),
                               ("label", "failures within"), ("window", "auth.ban_window_minutes"),
                               ("label", "minutes, refuse the address for"), ("ban", "auth.ban_minutes"),
                               ("label", "minutes")):
                if kind == "label":
                    ttk.Label(line, text=text).pack(side="left", padx=4)
                else:
                    lo, hi = RANGES[text]
                    ttk.Spinbox(line, from_=lo, to=hi, textvariable=self.vars[kind], width=5).pack(side="left")
            for row, key in enumerate(("auth.ban_after_failures", "auth.ban_window_minutes",
                                       "auth.ban_minutes"), start=8):
                self.error_for(key, self, row)
        self._build_lists()

    def _build_lists(self) -> None:
        """The white and black lists: who skips the anti-spam checks, and whose mail is refused."""
        for top, name, label, hint in (
                (11, "whitelist", "White list:", "skips every anti-spam check; one per line: a network "
                 "(192.0.2.0/24), an address (bob@example.com) or a domain (example.com, "
                 "*@example.com, *.example.com)"),
                (14, "blacklist", "Black list:", "mail from these is refused; one per line, as the white list")):
            ttk.Label(self, text=label).grid(row=top, column=0, sticky="nw", padx=(0, PAD), pady=(PAD, 0))
            box = self.text_box(self, 3)
            box.grid(row=top, column=1, sticky="w", pady=(PAD, 0))
            ttk.Label(self, text=hint, style="Hint.TLabel", wraplength=620, justify="left").grid(
                row=top + 1, column=1, sticky="w")
            self.error_for(f"access.{name}", self, top + 2, wraplength=660)  # a long "expected ..."
            setattr(self, name, box)

    def load(self, s: Settings) -> None:
        for box, items in ((self.trusted, s.trusted_networks),
                           *(((self.blocked, s.access.blocked),) if self.has_blocked else ())):
            box.delete("1.0", "end")
            box.insert("1.0", "\n".join(map(str, items)) if isinstance(items, list) else str(items))
        for box, items in ((self.whitelist, s.access.whitelist), (self.blacklist, s.access.blacklist)):
            box.delete("1.0", "end")
            box.insert("1.0", "\n".join(map(str, items)) if isinstance(items, list) else str(items))
        if self.has_bans:
            self.vars["failures"].set(str(s.auth.ban_after_failures))
            self.vars["window"].set(str(s.auth.ban_window_minutes))
            self.vars["ban"].set(str(s.auth.ban_minutes))

    def store(self, s: Settings, problems: list[FieldError]) -> None:
        s.trusted_networks = split_list(self.trusted.get("1.0", "end"))
        if self.has_blocked:
            s.access.blocked = split_list(self.blocked.get("1.0", "end"))
        s.access.whitelist = split_list(self.whitelist.get("1.0", "end"))
        s.access.blacklist = split_list(self.blacklist.get("1.0", "end"))
        if self.has_bans:
            a = s.auth
            a.ban_after_failures = self.number(self.vars["failures"].get(), "auth.ban_after_failures",
                                               a.ban_after_failures, problems)
            a.ban_window_minutes = self.number(self.vars["window"].get(), "auth.ban_window_minutes",
                                               a.ban_window_minutes, problems)
            a.ban_minutes = self.number(self.vars["ban"].get(), "auth.ban_minutes", a.ban_minutes, problems)
