"""Settings > Connections: the SmartHost, SMTP's receiving and sending, and the mail programs' protocols.

The page has to fit a screen 800 pixels high, so below the SmartHost it has two columns:
SMTP (receiving, then sending) on the left, and on the right one table for the two
protocols mail programs use, POP3 and IMAP, a column each: they have the same kinds of
settings (addresses, limits, logins without TLS), so a row holds both and a person can
compare them at a glance.  Each protocol's "Serve" box heads its column and greys it out.
"""
from __future__ import annotations

import re
import tkinter as tk
from tkinter import ttk

from ismail import config
from ismail.config import FieldError, Settings

from .pages import RANGES, Page, span
from .widgets import PAD

HALF = 420  # a group in one of two columns; its hints and errors wrap at HALF - 110
LISTEN_HINT = 'ip:port, separated by commas, e.g. "0.0.0.0:25, [::]:25"' + (
    '. For mail programs that log in: "0.0.0.0:587 submission" or "0.0.0.0:465 tls"'
    if getattr(config, "LISTEN_FLAGS", None) else "")
TLS_LABELS = {  # what the user reads -> the setting's value
    "STARTTLS (required)": "starttls",
    "STARTTLS when offered": "starttls-optional",
    "TLS from the start (port 465)": "tls",
    "None (unencrypted)": "none",
}

# The protocols of the mail programs: settings section, name.  Their variables are named
# "<section>_listen", "<section>_total", "<section>_per_host", "<section>_enabled", "<section>_plaintext".
MAIL_PROGRAMS = (("pop3", "POP3"), ("imap", "IMAP"))
MAIL_LISTEN_HINT = ('ip:port, separated by commas; "tls" after it for TLS from the start, '
                    'e.g. "0.0.0.0:995 tls" (POP3), "0.0.0.0:993 tls" (IMAP)')
CELL = 16         # characters of a mail-program "Listen on" field
SPAN = HALF - 100  # the wrap of a hint under both mail-program columns
ERROR_SPAN = HALF + 40  # an error under a row of the table takes its whole width


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


class ConnectionsPage(Page):
    title = "Connections"

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, dialog)
        v = self.vars = {name: tk.StringVar(self) for name in (
            "sh_host", "sh_port", "sh_account", "sh_password", "sh_tls", "out_max",
            "in_total", "in_per_host", "listen", "size",
            *(f"{p}_{v}" for p, _ in MAIL_PROGRAMS for v in ("listen", "total", "per_host")))}
        b = self.flags = {name: tk.BooleanVar(self) for name in (
            "sh_enabled", "sh_exclusive", "sh_auth", "sh_verify",
            *(f"{p}_{v}" for p, _ in MAIL_PROGRAMS for v in ("enabled", "plaintext")))}
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

        # Receiving (and sending) on the left, mail programs on the right: the page fits a 800-pixel screen.
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
        self._build_mail_programs(halves)

    def _build_mail_programs(self, halves: ttk.Frame) -> None:
        box = ttk.LabelFrame(halves, text="Mail programs: POP3 fetches the mail, IMAP keeps it in folders",
                             padding=PAD)
        box.grid(row=0, column=1, sticky="nsew", padx=(PAD // 2, 0))
        for row, text in ((1, "Listen on:"), (5, "Connections in total:"), (8, "Per host:"),
                          (11, "Logins without TLS:")):
            ttk.Label(box, text=text).grid(row=row, column=0, sticky="w", padx=(0, PAD), pady=2)
        ttk.Label(box, text=MAIL_LISTEN_HINT, style="Hint.TLabel", wraplength=SPAN, justify="left").grid(
            row=2, column=1, columnspan=2, sticky="w")
        ttk.Label(box, text="from outside the trusted networks: passwords cross the network readable",
                  style="Hint.TLabel", wraplength=SPAN, justify="left").grid(row=12, column=1, columnspan=2,
                                                                             sticky="w")
        for column, (section, name) in enumerate(MAIL_PROGRAMS, start=1):
            pad = (0, PAD) if column == 1 else (0, 0)
            serve = ttk.Checkbutton(box, text=f"Serve {name}", variable=self.flags[f"{section}_enabled"],
                                    command=self._sync_states)
            serve.grid(row=0, column=column, sticky="w", padx=pad)
            entry = ttk.Entry(box, textvariable=self.vars[f"{section}_listen"], width=CELL)
            entry.grid(row=1, column=column, sticky="w", padx=pad, pady=2)
            total = self._cell(box, 5, column, f"{section}_total", f"{section}.max_connections")
            per_host = self._cell(box, 8, column, f"{section}_per_host", f"{section}.max_per_host")
            plaintext = ttk.Checkbutton(box, text="allow", variable=self.flags[f"{section}_plaintext"])
            plaintext.grid(row=11, column=column, sticky="w", padx=pad, pady=2)
            # Under each row, a line per protocol that has a problem; show_errors says whose it is.
            for row, key in ((3, "listen"), (6, "max_connections"), (9, "max_per_host")):
                self.error_for(f"{section}.{key}", box, row + column - 1, 0, 3, wraplength=ERROR_SPAN)
            # self.pop3_listen_entry, self.imap_total_box, ...; _pop3_widgets greys out with its box.
            for widget, attr in ((serve, "serve_box"), (entry, "listen_entry"), (total, "total_box"),
                                 (per_host, "per_host_box"), (plaintext, "plaintext")):
                setattr(self, f"{section}_{attr}", widget)
            setattr(self, f"_{section}_widgets", [entry, total, per_host, plaintext])

    def show_errors(self, errors: list[FieldError]) -> list[FieldError]:
        """As every page; a mail program's error starts with its name ("IMAP: ..."): the two
        columns share the lines under each row."""
        others = super().show_errors(errors)
        for section, name in MAIL_PROGRAMS:
            for key, label in self.errors.items():
                if key.startswith(section + ".") and label.text:
                    label.show(f"{name}: {label.text}")
        return others

    def _cell(self, parent: tk.Misc, row: int, column: int, var: str, key: str) -> ttk.Spinbox:
        """A number box with its range, in one protocol's column."""
        lo, hi = RANGES[key]
        line = ttk.Frame(parent)
        line.grid(row=row, column=column, sticky="w", padx=(0, PAD) if column == 1 else (0, 0), pady=2)
        box = ttk.Spinbox(line, from_=lo, to=hi, textvariable=self.vars[var], width=6)
        box.pack(side="left")
        ttk.Label(line, text=span(key), style="Hint.TLabel").pack(side="left", padx=(4, 0))
        return box

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
        for section, _ in MAIL_PROGRAMS:
            on = self.flags[f"{section}_enabled"].get()
            for w in getattr(self, f"_{section}_widgets"):
                w.state(["!disabled"] if on else ["disabled"])

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
        for section, _ in MAIL_PROGRAMS:
            p = getattr(s, section)
            b[f"{section}_enabled"].set(bool(p.enabled))
            b[f"{section}_plaintext"].set(bool(p.allow_plaintext))
            v[f"{section}_listen"].set(", ".join(map(str, p.listen)) if isinstance(p.listen, list)
                                       else str(p.listen))
            v[f"{section}_total"].set(str(p.max_connections))
            v[f"{section}_per_host"].set(str(p.max_per_host))
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
        for section, _ in MAIL_PROGRAMS:
            p = getattr(s, section)
            p.enabled, p.allow_plaintext = b[f"{section}_enabled"].get(), b[f"{section}_plaintext"].get()
            p.listen = split_entries(v[f"{section}_listen"].get())
            p.max_connections = self.number(v[f"{section}_total"].get(), f"{section}.max_connections",
                                            p.max_connections, problems)
            p.max_per_host = self.number(v[f"{section}_per_host"].get(), f"{section}.max_per_host",
                                         p.max_per_host, problems)
