"""Settings > Routes: fixed next hops for domains, and the domains ISMail is a backup MX for.

A route sends all mail for one domain to one host (an internal Exchange for corp.example),
whatever its MX records and the SmartHost say.  A relay domain is accepted here and queued
for the domain's own servers, so mail waits here while they are down.  Both live in
``routes.json`` and, as on the Accounts and Addresses pages, every change is saved at once
through ``Admin.route_table`` (the running server's table: the next delivery uses it).
The store's refusal is shown in the dialog word for word, and nothing is saved.  Below
them, two outgoing settings of ismail.json that belong with routing: the backup MX hosts
ISMail asks by ETRN at start, and the domains whose mail needs verified TLS; they are
saved with Apply and checked like every setting (a bad entry is named under its field).

A route's password is never shown: its field holds ``KEPT`` while it is not touched, and
an Edit that leaves it so keeps the stored password.
"""
from __future__ import annotations

import tkinter as tk
from tkinter import messagebox, ttk
from typing import TYPE_CHECKING, Callable

from ismail.cli_routes import own_names
from ismail.config import FieldError, Settings
from ismail.store.routes import MAX_LIFETIME_HOURS, RelayDomain, Route, RouteError

from .connectionspage import TLS_LABELS
from .listedit import EntryList, Field, FormDialog, Values, problem_text
from .pages import Page, split_list
from .widgets import PAD, ErrorLabel

if TYPE_CHECKING:
    from .controller import Controller

WIDTH = 1000
KEPT = "***"  # the password field of a route that has one, until it is changed
INTRO = ("A route sends all mail for a domain to one server, instead of its MX records and the "
         "SmartHost (an internal server, a partner's gateway). A relay domain makes ISMail a backup "
         "MX: its mail is accepted here and passed on to the domain's own servers when they answer. "
         "Changes on this page take effect at once.")


def tls_label(mode: str) -> str:
    return next((label for label, m in TLS_LABELS.items() if m == mode), mode)


class RoutesPage(Page):
    title = "Routes"

    def __init__(self, master: tk.Misc, dialog: tk.Misc) -> None:
        super().__init__(master, dialog)
        self.controller: Controller = dialog.controller
        self.admin = self.controller.admin
        self._utest: bool = getattr(dialog, "_utest", False)
        self.form: FormDialog | None = None  # the last dialog opened (tests fill it in)
        self.table: dict[str, Route] = {}
        self.relays: dict[str, RelayDomain] = {}
        self.columnconfigure(0, weight=1)
        ttk.Label(self, text=INTRO, wraplength=WIDTH, justify="left").grid(
            row=0, column=0, sticky="w", pady=(0, PAD))
        self.routes = EntryList(self, "Routes", (("domain", "Domain", 180), ("host", "Server", 220),
                                                 ("tls", "Encryption", 180), ("login", "Login", 150),
                                                 ("password", "Password", 80)),
                                self.add_route, self.edit_route, self.remove_route, height=7)
        self.routes.grid(row=1, column=0, sticky="nsew", pady=(0, PAD))
        self.relay_list = EntryList(self, "Relay domains (backup MX)",
                                    (("domain", "Domain", 180), ("lifetime", "Mail may wait", 140),
                                     ("recipients", "Recipients accepted", 490)),
                                    self.add_relay, self.edit_relay, self.remove_relay, height=6)
        self.relay_list.grid(row=2, column=0, sticky="nsew", pady=(0, PAD))
        self.note = ErrorLabel(self, wraplength=WIDTH, row=3, column=0, sticky="w")
        self.problems = ErrorLabel(self, wraplength=WIDTH, row=4, column=0, sticky="w")
        # Two lists of the outgoing settings (ismail.json; saved with Apply, unlike the lists).
        out = ttk.Frame(self)
        out.grid(row=5, column=0, sticky="w")
        self.etrn_hosts = tk.StringVar(self)
        self.require_tls = tk.StringVar(self)
        for row, (label, var, hint, key) in enumerate((
                ("Our backup MX hosts:", self.etrn_hosts,
                 "host or host:port, comma-separated; asked by ETRN, each time ISMail starts, to send "
                 "what they hold for our domains", "outgoing.etrn_hosts"),
                ("Domains that need verified TLS:", self.require_tls,
                 "mail for these domains waits rather than leave without a certificate that checks out",
                 "outgoing.require_tls_domains"))):
            ttk.Label(out, text=label).grid(row=row * 3, column=0, sticky="w", padx=(0, PAD))
            ttk.Entry(out, textvariable=var, width=60).grid(row=row * 3, column=1, sticky="w")
            ttk.Label(out, text=hint, style="Hint.TLabel").grid(row=row * 3 + 1, column=1, sticky="w")
            self.error_for(key, out, row * 3 + 2)

    # -- Page duties --------------------------------------------------------------------------
    def load(self, settings: Settings) -> None:
        self.refresh()
        for var, value in ((self.etrn_hosts, settings.outgoing.etrn_hosts),
                           (self.require_tls, settings.outgoing.require_tls_domains)):
            var.set(", ".join(map(str, value)) if isinstance(value, list) else str(value))

    def store(self, settings: Settings, problems: list[FieldError]) -> None:
        # The lists above are saved at once; these two wait for Apply, like other settings.
        settings.outgoing.etrn_hosts = split_list(self.etrn_hosts.get())
        settings.outgoing.require_tls_domains = [d.lower().rstrip(".") for d in split_list(self.require_tls.get())]

    # -- the lists ----------------------------------------------------------------------------
    def domains(self) -> set[str]:
        return set(self.controller.local_domains())

    def own(self) -> tuple[set[str], set[int]]:
        """This server's names and ports (a route there would loop), from the settings in force."""
        settings = self.controller.settings or self.controller.editable_settings()
        try:
            return own_names(settings)
        except ValueError:  # a listening address validate() refuses: the Connections page says so
            return {str(settings.server_name).lower(), "localhost"}, set()

    def refresh(self, select: tuple[EntryList, str] | None = None) -> None:
        table = self.admin.route_table
        self.table = {r.domain: r for r in table.routes()}
        self.relays = {r.domain: r for r in table.relay_domains()}

        def chosen(lst: EntryList) -> str | None:
            return select[1] if select and select[0] is lst else None
        self.routes.show([(d, (d, f"{r.host}:{r.port}", tls_label(r.tls), r.username,
                               KEPT if r.password else "")) for d, r in self.table.items()],
                         chosen(self.routes))
        self.relay_list.show([(d, (d, f"{r.lifetime_hours} hours" if r.lifetime_hours else "as other mail",
                                   ", ".join(r.recipients) or "any"))
                              for d, r in self.relays.items()], chosen(self.relay_list))
        found = table.problems(local_domains=self.domains())
        self.problems.show(problem_text([table.load_problem, *found]))

    def _save(self, lst: EntryList, key: str, change: Callable[[], None]) -> str | None:
        try:
            change()
        except RouteError as e:
            return str(e)
        self.note.show("")
        self.refresh(select=(lst, key))
        return None

    def _remove(self, what: str, change: Callable[[], None]) -> bool:
        if not self._utest and not messagebox.askyesno("Remove", f"Remove {what}?", parent=self):
            return False
        try:
            change()
        except RouteError as e:
            self.note.show(str(e))
            return False
        self.note.show("")
        self.refresh()
        return True

    @staticmethod
    def _whole(text: str, what: str, empty: int | None) -> int | None:
        """The typed number; ValueError with a sentence when it is none."""
        text = text.strip()
        if not text:
            return empty
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{what} must be a whole number, not {text!r}.") from None

    # -- routes -------------------------------------------------------------------------------
    def _route_form(self, title: str, route: Route | None) -> FormDialog:
        old = route
        labels = dict(TLS_LABELS)

        def check(v: Values) -> str | None:
            try:
                port = self._whole(str(v["port"]), "The port", 25)
            except ValueError as e:
                return str(e)
            password = str(v["password"])
            if old is not None and old.password and password == KEPT:
                password = old.password
            r = Route(str(v["domain"]).strip(), str(v["host"]).strip(), port or 0,
                      labels.get(str(v["tls"]), str(v["tls"])), str(v["username"]).strip(), password)
            names, ports = self.own()
            return self._save(self.routes, r.domain.lower().rstrip("."), lambda: self.admin.route_table.set_route(
                r, local_domains=self.domains(), own_names=names, own_ports=ports))
        r = route or Route("", "")
        self.form = FormDialog(self, title, "All mail for the domain goes to this server.", [
            Field("domain", "Domain:", r.domain, locked=route is not None),
            Field("host", "Server:", r.host, hint="a host name or IP address"),
            Field("port", "Port:", str(r.port), width=8, hint="25; 587 for a submission port; 465 with TLS "
                  "from the start"),
            Field("tls", "Encryption:", tls_label(r.tls), "choice", tuple(labels), width=34),
            Field("username", "Login:", r.username, hint="empty: no login"),
            Field("password", "Password:", KEPT if r.password else "", "secret",
                  hint="left as it is, the saved password is kept" if r.password else "")],
            check, _utest=self._utest)
        return self.form

    def add_route(self) -> FormDialog:
        return self._route_form("Add route", None)

    def edit_route(self, domain: str) -> FormDialog:
        return self._route_form("Edit route", self.table.get(domain))

    def remove_route(self, domain: str) -> bool:
        return self._remove(f"the route of {domain}", lambda: self.admin.route_table.remove_route(domain))

    # -- relay domains ------------------------------------------------------------------------
    def _relay_form(self, title: str, relay: RelayDomain | None) -> FormDialog:
        def check(v: Values) -> str | None:
            try:
                hours = self._whole(str(v["lifetime"]), "How long mail may wait", None)
            except ValueError as e:
                return str(e)
            r = RelayDomain(str(v["domain"]).strip(), tuple(split_list(str(v["recipients"]))), hours)
            return self._save(self.relay_list, r.domain.lower().rstrip("."),
                              lambda: self.admin.route_table.set_relay_domain(r, local_domains=self.domains()))
        r = relay or RelayDomain("")
        self.form = FormDialog(self, title, "ISMail accepts mail for this domain and passes it on to "
                               "the domain's own servers (its MX records, or its route).", [
                                   Field("domain", "Domain:", r.domain, locked=relay is not None),
                                   Field("recipients", "Recipients:", "\n".join(r.recipients), "text",
                                         hint="one address per line; empty: any address of the domain"),
                                   Field("lifetime", "Mail may wait:", str(r.lifetime_hours or ""), width=8,
                                         hint=f"hours (1–{MAX_LIFETIME_HOURS}); empty: as long as "
                                              "other mail (retry settings)")],
                               check, _utest=self._utest)
        return self.form

    def add_relay(self) -> FormDialog:
        return self._relay_form("Add relay domain", None)

    def edit_relay(self, domain: str) -> FormDialog:
        return self._relay_form("Edit relay domain", self.relays.get(domain))

    def remove_relay(self, domain: str) -> bool:
        return self._remove(f"the relay domain {domain}",
                            lambda: self.admin.route_table.remove_relay_domain(domain))
