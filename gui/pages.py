"""The settings dialog's pages: Domain, Connections, Access (Accounts and Program have files of their own).

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
HALF = 420  # a group in one of two columns; its hints and errors wrap at HALF - 110
RANGES: dict[str, tuple[int, int]] = config.RANGES  # the single table of allowed ranges
LISTEN_HINT = 'ip:port, separated by commas, e.g. "0.0.0.0:25, [::]:25"' + (
    '. For mail programs that log in: "0.0.0.0:587 submission" or "0.0.0.0:465 tls"'
    if getattr(config, "LISTEN_FLAGS", None) else "")
POP3_LISTEN_HINT = 'ip:port, separated by commas, e.g. "0.0.0.0:110"; "0.0.0.0:995 tls" for TLS from the start'
TLS_LABELS = {  # what the user reads -> the setting's value
    "STARTTLS (required)": "starttls",
    "STARTTLS when offered": "starttls-optional",
    "TLS from the start (port 465)": "tls",
    "None (unencrypted)": "none",
}


def span(key: str) -> str:
    lo, hi = RANGES[key]
    return f"({lo}–{hi})"


def split_list(text: str) -> list[str]:
    """Entries separated by commas, spaces or lines, as a person types a list."""
    return [t for t in re.split(r"[\s,;]+", text) if t]


def split_entries(text: str) -> list[str]:
    """Entries separated by commas or lines, each kept whole ("0.0.0.0:587 submission")."""
    return [" ".join(t.split()) for t in re.split(r"[,;\n]+", text) if t.strip()]


def split_smarthost(text: str) -> tuple[str, int | None]:
    """"host", "host:port", "[v6]" or "[v6]:port"; ValueError when the port part is not a number."""
    text = text.strip()
    m = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", text)
    host, port = (m.group(1), m.group(2)) if m else (
        text.split(":", 1) if text.count(":") == 1 else (text, None))
    if port is None:
        return host, None
    if not port.isdigit():
        raise ValueError(f"the part after ':' ({port!r}) must be a port number {span('smarthost.port')}")
    return host, int(port)


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


class ConnectionsPage(Page):
    title = "Connections"

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, dialog)
        v = self.vars = {name: tk.StringVar(self) for name in (
            "sh_host", "sh_port", "sh_account", "sh_password", "sh_tls", "out_max",
            "in_total", "in_per_host", "listen", "size", "pop3_listen", "pop3_total", "pop3_per_host")}
        b = self.flags = {name: tk.BooleanVar(self) for name in (
            "sh_enabled", "sh_exclusive", "sh_auth", "sh_verify", "pop3_enabled", "pop3_plaintext")}
        sh = ttk.LabelFrame(self, text="SmartHost", padding=PAD)
        sh.grid(row=0, column=0, columnspan=3, sticky="ew")
        sh.columnconfigure(4, weight=1)
        ttk.Checkbutton(sh, text="Send outgoing mail through a SmartHost", variable=b["sh_enabled"],
                        command=self._sync_states).grid(row=0, column=0, columnspan=5, sticky="w")
        ttk.Label(sh, text="Host name or IP:").grid(row=1, column=0, sticky="w", padx=(20, PAD), pady=2)
        self.host_entry = ttk.Entry(sh, textvariable=v["sh_host"], width=30)
        self.host_entry.grid(row=1, column=1, sticky="w")
        self.host_entry.bind("<FocusOut>", lambda e: self._split_host())
        ttk.Label(sh, text="Port:").grid(row=1, column=2, sticky="e", padx=(PAD * 2, PAD))
        self.port_box = ttk.Spinbox(sh, from_=1, to=65535, textvariable=v["sh_port"], width=7)
        self.port_box.grid(row=1, column=3, sticky="w")
        self.error_for("smarthost.host", sh, 2, 1, 4)
        self.error_for("smarthost.port", sh, 3, 1, 4)
        self.exclusive = ttk.Checkbutton(sh, text="Use SmartHost exclusively (otherwise only when "
                                         "direct delivery fails)", variable=b["sh_exclusive"])
        self.exclusive.grid(row=4, column=0, columnspan=5, sticky="w", padx=(20, 0), pady=2)
        self.auth = ttk.Checkbutton(sh, text="Authenticate", variable=b["sh_auth"], command=self._sync_states)
        self.auth.grid(row=5, column=0, columnspan=5, sticky="w", padx=(20, 0), pady=2)
        ttk.Label(sh, text="Account Name:").grid(row=6, column=0, sticky="w", padx=(40, PAD), pady=2)
        self.account_entry = ttk.Entry(sh, textvariable=v["sh_account"], width=30)
        self.account_entry.grid(row=6, column=1, sticky="w")
        self.error_for("smarthost.account", sh, 7, 1, 4)
        ttk.Label(sh, text="Password:").grid(row=6, column=2, sticky="e", padx=(PAD * 2, PAD))
        self.password_entry = ttk.Entry(sh, textvariable=v["sh_password"], width=24, show="•")
        self.password_entry.grid(row=6, column=3, sticky="w")  # beside the account: the page fits 800 pixels
        ttk.Label(sh, text="Security:").grid(row=9, column=0, sticky="w", padx=(20, PAD), pady=(PAD, 2))
        self.tls_box = ttk.Combobox(sh, textvariable=v["sh_tls"], values=list(TLS_LABELS),
                                    state="readonly", width=28)
        self.tls_box.grid(row=9, column=1, sticky="w", pady=(PAD, 2))
        self.verify = ttk.Checkbutton(sh, text="Verify certificate", variable=b["sh_verify"])
        self.verify.grid(row=9, column=2, columnspan=3, sticky="w", padx=(PAD * 2, 0), pady=(PAD, 2))
        self.error_for("smarthost.tls", sh, 10, 1, 4)
        self._smarthost_widgets = [self.host_entry, self.port_box, self.exclusive, self.auth,
                                   self.tls_box, self.verify]

        # Receiving (and sending) on the left, fetching on the right: the page fits a 800-pixel screen.
        halves = ttk.Frame(self)
        halves.grid(row=1, column=0, columnspan=3, sticky="ew", pady=(PAD, 0))
        halves.columnconfigure((0, 1), weight=1, uniform="half")
        left = ttk.Frame(halves)
        left.grid(row=0, column=0, sticky="nsew", padx=(0, PAD // 2))
        left.columnconfigure(0, weight=1)
        smtp = ttk.LabelFrame(left, text="SMTP: receiving mail", padding=PAD)
        smtp.grid(row=0, column=0, sticky="ew")
        self.listen_entry = self._listen(smtp, 0, "listen", "listen", LISTEN_HINT)
        self.total_box = self._spin(smtp, 3, "Connections in total:", "in_total", "incoming.max_connections")
        self.per_host_box = self._spin(smtp, 5, "Per host:", "in_per_host", "incoming.max_per_host",
                                       "from one IP address")
        self.size_box = self._spin(smtp, 7, "Largest message:", "size", "max_message_size_mb", "MB")
        out = ttk.LabelFrame(left, text="Sending mail", padding=PAD)
        out.grid(row=1, column=0, sticky="ew", pady=(PAD, 0))
        self.out_box = self._spin(out, 0, "Connections at most:", "out_max", "outgoing.max_connections",
                                  "1: strictly one at a time")
        self._build_pop3(halves)

    def _build_pop3(self, halves: ttk.Frame) -> None:
        b = self.flags
        pop3 = ttk.LabelFrame(halves, text="POP3: mail programs fetch their mail", padding=PAD)
        pop3.grid(row=0, column=1, sticky="nsew", padx=(PAD // 2, 0))
        ttk.Checkbutton(pop3, text="Serve POP3", variable=b["pop3_enabled"],
                        command=self._sync_states).grid(row=0, column=0, columnspan=3, sticky="w")
        self.pop3_listen_entry = self._listen(pop3, 1, "pop3_listen", "pop3.listen", POP3_LISTEN_HINT)
        self.pop3_total_box = self._spin(pop3, 4, "Connections in total:", "pop3_total", "pop3.max_connections")
        self.pop3_per_host_box = self._spin(pop3, 6, "Per host:", "pop3_per_host", "pop3.max_per_host",
                                            "from one IP address")
        self.pop3_plaintext = ttk.Checkbutton(pop3, text="Allow logins without TLS",
                                              variable=b["pop3_plaintext"])
        self.pop3_plaintext.grid(row=8, column=0, columnspan=3, sticky="w", pady=(2, 0))
        ttk.Label(pop3, text="from outside the trusted networks: passwords cross the network readable",
                  style="Hint.TLabel", wraplength=HALF - 20,
                  justify="left").grid(row=9, column=0, columnspan=3, sticky="w", padx=(20, 0))
        self._pop3_widgets = [self.pop3_listen_entry, self.pop3_total_box, self.pop3_per_host_box,
                              self.pop3_plaintext]

    def _listen(self, parent: tk.Misc, row: int, var: str, key: str, hint: str) -> ttk.Entry:
        """A "Listen on" field, its hint and its error label (three rows from ``row``)."""
        ttk.Label(parent, text="Listen on:").grid(row=row, column=0, sticky="w", padx=(0, PAD), pady=2)
        entry = ttk.Entry(parent, textvariable=self.vars[var], width=30)
        entry.grid(row=row, column=1, columnspan=2, sticky="w")
        ttk.Label(parent, text=hint, style="Hint.TLabel", wraplength=HALF - 110, justify="left").grid(
            row=row + 1, column=1, columnspan=2, sticky="w")
        self.error_for(key, parent, row + 2, 1, 2, wraplength=HALF - 110)
        return entry

    def _spin(self, parent: tk.Misc, row: int, label: str, var: str, key: str, hint: str = "") -> ttk.Spinbox:
        lo, hi = RANGES[key]
        ttk.Label(parent, text=label).grid(row=row, column=0, sticky="w", padx=(0, PAD), pady=2)
        line = ttk.Frame(parent)  # the hint stays next to its box, whatever else widens the column
        line.grid(row=row, column=1, columnspan=2, sticky="w", pady=2)
        box = ttk.Spinbox(line, from_=lo, to=hi, textvariable=self.vars[var], width=7)
        box.pack(side="left")
        text = f"{span(key)}  {hint}".rstrip() if hint != "MB" else f"MB {span(key)}"
        ttk.Label(line, text=text, style="Hint.TLabel").pack(side="left", padx=(PAD, 0))
        self.error_for(key, parent, row + 1, 1, 2, wraplength=HALF - 110)
        return box

    def _sync_states(self) -> None:
        """Greyed out what does not apply, as the original page did."""
        on = self.flags["sh_enabled"].get()
        for w in self._smarthost_widgets:
            w.state(["!disabled"] if on else ["disabled"])
        if on:
            self.tls_box.state(["readonly"])
        auth = on and self.flags["sh_auth"].get()
        for w in (self.account_entry, self.password_entry):
            w.state(["!disabled"] if auth else ["disabled"])
        pop3 = self.flags["pop3_enabled"].get()
        for w in self._pop3_widgets:
            w.state(["!disabled"] if pop3 else ["disabled"])

    def _split_host(self) -> None:
        """"mail.example.com:587" in the host field: the port moves to the port field."""
        try:
            host, port = split_smarthost(self.vars["sh_host"].get())
        except ValueError:
            return  # store() reports it
        if port is not None:
            self.vars["sh_host"].set(host)
            self.vars["sh_port"].set(str(port))

    def load(self, s: Settings) -> None:
        sh = s.smarthost
        v, b = self.vars, self.flags
        v["sh_host"].set(str(sh.host))
        v["sh_port"].set(str(sh.port))
        v["sh_account"].set(str(sh.account))
        v["sh_password"].set(str(sh.password))
        v["sh_tls"].set(next((k for k, m in TLS_LABELS.items() if m == sh.tls), str(sh.tls)))
        for name, value in (("sh_enabled", sh.enabled), ("sh_exclusive", sh.exclusive),
                            ("sh_auth", sh.authenticate), ("sh_verify", sh.verify_certificate)):
            b[name].set(bool(value))
        v["out_max"].set(str(s.outgoing.max_connections))
        v["in_total"].set(str(s.incoming.max_connections))
        v["in_per_host"].set(str(s.incoming.max_per_host))
        v["listen"].set(", ".join(map(str, s.listen)) if isinstance(s.listen, list) else str(s.listen))
        v["size"].set(str(s.max_message_size_mb))
        p = s.pop3
        b["pop3_enabled"].set(bool(p.enabled))
        b["pop3_plaintext"].set(bool(p.allow_plaintext))
        v["pop3_listen"].set(", ".join(map(str, p.listen)) if isinstance(p.listen, list) else str(p.listen))
        v["pop3_total"].set(str(p.max_connections))
        v["pop3_per_host"].set(str(p.max_per_host))
        self._sync_states()

    def store(self, s: Settings, problems: list[FieldError]) -> None:
        v, b, sh = self.vars, self.flags, s.smarthost
        sh.port = self.number(v["sh_port"].get(), "smarthost.port", sh.port, problems)
        try:
            host, port = split_smarthost(v["sh_host"].get())
        except ValueError as e:
            problems.append(FieldError("smarthost.host", f"smarthost.host = {v['sh_host'].get()!r}: {e}"))
        else:
            sh.host = host.strip()
            if port is not None:
                sh.port = port
                self._split_host()
        sh.enabled, sh.exclusive = b["sh_enabled"].get(), b["sh_exclusive"].get()
        sh.authenticate, sh.verify_certificate = b["sh_auth"].get(), b["sh_verify"].get()
        sh.account, sh.password = v["sh_account"].get().strip(), v["sh_password"].get()
        sh.tls = TLS_LABELS.get(v["sh_tls"].get(), v["sh_tls"].get())
        s.outgoing.max_connections = self.number(v["out_max"].get(), "outgoing.max_connections",
                                                 s.outgoing.max_connections, problems)
        s.incoming.max_connections = self.number(v["in_total"].get(), "incoming.max_connections",
                                                 s.incoming.max_connections, problems)
        s.incoming.max_per_host = self.number(v["in_per_host"].get(), "incoming.max_per_host",
                                              s.incoming.max_per_host, problems)
        s.listen = split_entries(v["listen"].get())
        s.max_message_size_mb = self.number(v["size"].get(), "max_message_size_mb",
                                            s.max_message_size_mb, problems)
        p = s.pop3
        p.enabled, p.allow_plaintext = b["pop3_enabled"].get(), b["pop3_plaintext"].get()
        p.listen = split_entries(v["pop3_listen"].get())
        p.max_connections = self.number(v["pop3_total"].get(), "pop3.max_connections",
                                        p.max_connections, problems)
        p.max_per_host = self.number(v["pop3_per_host"].get(), "pop3.max_per_host", p.max_per_host, problems)


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

    def load(self, s: Settings) -> None:
        for box, items in ((self.trusted, s.trusted_networks),
                           *(((self.blocked, s.access.blocked),) if self.has_blocked else ())):
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
        if self.has_bans:
            a = s.auth
            a.ban_after_failures = self.number(self.vars["failures"].get(), "auth.ban_after_failures",
                                               a.ban_after_failures, problems)
            a.ban_window_minutes = self.number(self.vars["window"].get(), "auth.ban_window_minutes",
                                               a.ban_window_minutes, problems)
            a.ban_minutes = self.number(self.vars["ban"].get(), "auth.ban_minutes", a.ban_minutes, problems)
