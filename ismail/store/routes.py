"""Routes (a fixed next hop per destination domain) and relay domains (backup MX).

Model
-----
``DATA/routes.json`` is one object::

    {"version": 1,
     "routes": {"corp.example": {"host": "exchange.corp.example", "port": 25,
                                 "tls": "starttls", "username": "", "password": ""}},
     "relay_domains": {"backup.example": {"recipients": ["ann@backup.example"],
                                          "lifetime_hours": 480}}}

* A route sends all mail for its domain to one host, instead of the MX hosts and instead
  of the SmartHost (an internal Exchange for corp.example).  Its password is stored
  protected (``platform.protect``: DPAPI on Windows; elsewhere the file is owner-only).
* A relay domain is accepted without being delivered here: it is queued for the domain's
  primary (its MX hosts preferred over this server, or its route).  ``recipients`` limits
  what is accepted, so the backup does not take mail the primary would refuse;
  ``lifetime_hours`` lets that mail wait longer than ``retry.lifetime_hours``.
* Domains and hosts are compared lowercased without a trailing dot; recipients lowercased.
* Editing re-reads the file under ``routes.json.lock`` (another process, the CLI, may have
  changed it), validates the edited entry (``routes_rules``) and saves atomically.
  Unknown keys, in an entry or at the top, are kept: a newer ISMail's file survives an edit.
* A corrupt file is never overwritten: it is renamed ``routes.json.corrupt-<stamp>``,
  logged, and there are no routes until it is restored (``load_problem`` says why).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from .jsonfile import JsonFile, Published
from .routes_rules import (FORMAT_VERSION, MAX_LIFETIME_HOURS, TLS_MODES, RelayDomain,
                           Route, RouteError, _Table, check_relay_target, check_route_target,
                           clean_domain, clean_relay, clean_route, parse, problems_of)

__all__ = ["Routes", "Route", "RelayDomain", "RouteError", "TLS_MODES", "FORMAT_VERSION",
           "MAX_LIFETIME_HOURS"]

log = logging.getLogger("ismail.routes")

FILE_NAME = "routes.json"


class _SetAside(RouteError):
    pass


class Routes(Published[_Table]):
    """routes.json in memory; readers share one published _Table that is never mutated."""

    keeping = "Keeping the routes loaded before."

    def __init__(self, data_dir: Path, *, reload_interval: float = 1.0) -> None:
        super().__init__(JsonFile(
            Path(data_dir) / FILE_NAME, what="the routes table", parse=parse, empty=_Table,
            empty_text="there are no routes or relay domains", error=RouteError,
            set_aside=_SetAside, logger=log), reload_interval)

    def describe(self, table: _Table) -> str:
        return f"{len(table.routes)} routes, {len(table.relays)} relay domains"

    def _save(self, table: _Table) -> None:
        doc = table.to_json()  # may refuse: a password Windows cannot protect
        self._file.save((json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        self._publish(table)

    def _edit(self, change: Callable[[_Table], None]) -> None:
        with self._mutex, self._file.locked():
            new = self._refresh(locked=True, strict=True).copy()  # another process may have edited
            change(new)
            self._save(new)

    # ----- editing -----
    def set_route(self, route: Route, *, local_domains: set[str], own_names: set[str],
                  own_ports: set[int]) -> None:
        """Add or replace the route of ``route.domain``.  ``own_names``: this server's names
        and the exact addresses it listens on; ``own_ports``: the ports it listens on."""
        clean = clean_route(route)
        check_route_target(clean, local_domains=local_domains, own_names=own_names,
                           own_ports=own_ports)
        self._edit(lambda t: t.put_route(clean))
        log.info("Route %s -> %s port %d (tls: %s%s)", clean.domain, clean.host, clean.port,
                 clean.tls, f", login {clean.username}" if clean.username else "")

    def remove_route(self, domain: str) -> None:
        dom = clean_domain(domain, "route")
        self._edit(lambda t: t.drop_route(dom))
        log.info("Removed the route of %s", dom)

    def set_relay_domain(self, relay: RelayDomain, *, local_domains: set[str]) -> None:
        """Add or replace the relay domain ``relay.domain`` (this server is its backup MX)."""
        clean = clean_relay(relay)
        check_relay_target(clean, local_domains=local_domains)
        self._edit(lambda t: t.put_relay(clean))
        log.info("Relay domain %s (%s; lifetime %s)", clean.domain,
                 f"{len(clean.recipients)} recipients" if clean.recipients else "any recipient",
                 f"{clean.lifetime_hours} hours" if clean.lifetime_hours else "retry.lifetime_hours")

    def remove_relay_domain(self, domain: str) -> None:
        dom = clean_domain(domain, "relay domain")
        self._edit(lambda t: t.drop_relay(dom))
        log.info("Removed the relay domain %s", dom)

    # ----- reading -----
    def route_for(self, domain: str) -> Route | None:
        """The route of ``domain``, or None (the queue asks for every delivery)."""
        self.maybe_reload()
        return self._value.routes.get(domain.lower().removesuffix("."))

    def relay_domain(self, domain: str) -> RelayDomain | None:
        self.maybe_reload()
        return self._value.relays.get(domain.lower().removesuffix("."))

    def relay_accepts(self, address: str) -> bool | None:
        """None: the address's domain is not a relay domain; True: accept it; False: the
        domain is relayed but only for listed recipients, and this one is not listed."""
        self.maybe_reload()
        addr = address.strip().lower()
        local, at, domain = addr.rpartition("@")
        if not at:
            return None
        domain = domain.removesuffix(".")
        accepts = self._value.accepts.get(domain)
        if accepts is None:
            return None
        return not accepts or f"{local}@{domain}" in accepts

    def routes(self) -> list[Route]:
        self.maybe_reload()
        return [r for _, r in sorted(self._value.routes.items())]

    def relay_domains(self) -> list[RelayDomain]:
        self.maybe_reload()
        return [r for _, r in sorted(self._value.relays.items())]

    def problems(self, *, local_domains: set[str]) -> list[str]:
        """What is wrong with the stored entries now, e.g. a relay domain made local since,
        or a password that cannot be opened on this computer."""
        self.maybe_reload()
        return problems_of(self._value, local_domains)
