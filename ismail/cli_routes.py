"""The command line for routes and relay domains: ``route`` and ``relay-domain``.

``route add DOMAIN HOST [--port N] [--tls MODE] [--login USER]`` sends all mail for DOMAIN
to HOST, whatever its MX records and the SmartHost say (the password, with --login, is read
from stdin or prompted, never from the command line).  ``relay-domain add DOMAIN
[--recipient ADDRESS ...] [--lifetime-hours N]`` makes ISMail a backup MX for DOMAIN.
Both live in DATA/routes.json; a running server picks a change up within a second.
"""
from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path
from typing import Callable

from .config import TLS_MODES, Settings
from .store.routes import RelayDomain, Route, RouteError, Routes

COMMANDS = ("route", "relay-domain")


def add_arguments(sub) -> None:
    rt = sub.add_parser("route", help="a fixed next hop for a domain (overrides MX and SmartHost)")
    rt_sub = rt.add_subparsers(dest="action", metavar="ACTION")
    rt_sub.required = True
    rt_sub.add_parser("list", help="every route")
    add = rt_sub.add_parser("add", help="send all mail for DOMAIN to HOST (replaces its route)")
    add.add_argument("domain")
    add.add_argument("host", help="a host name or IP address")
    add.add_argument("--port", type=int, default=25, help="default 25")
    add.add_argument("--tls", choices=TLS_MODES, default="starttls-optional",
                     help="starttls-optional (default: encrypt when offered), starttls (required), "
                          "tls (implicit TLS, port 465) or none")
    add.add_argument("--login", default="", metavar="USER",
                     help="log in as USER (the password is read from stdin, or prompted)")
    rt_sub.add_parser("remove", help="remove a domain's route").add_argument("domain")

    rd = sub.add_parser("relay-domain", help="domains this server is a backup MX for")
    rd_sub = rd.add_subparsers(dest="action", metavar="ACTION")
    rd_sub.required = True
    rd_sub.add_parser("list", help="every relay domain")
    add = rd_sub.add_parser("add", help="accept mail for DOMAIN and pass it to its primary MX")
    add.add_argument("domain")
    add.add_argument("--recipient", action="append", default=[], metavar="ADDRESS",
                     help="accept only these addresses (repeatable; default: any address)")
    add.add_argument("--lifetime-hours", type=int, default=None, metavar="N",
                     help="how long mail may wait for the primary (1-8760; default retry.lifetime_hours)")
    rd_sub.add_parser("remove", help="stop accepting mail for DOMAIN").add_argument("domain")


def own_names(settings: Settings) -> tuple[set[str], set[int]]:
    """The names and addresses that are this ISMail, and its SMTP ports: a route there loops."""
    names = {settings.server_name.lower(), "localhost", socket.gethostname().lower()}
    ports = set()
    for host, port in settings.listen_addresses():
        ports.add(port)
        ip = ipaddress.ip_address(host)
        if ip.is_unspecified:
            names |= {"127.0.0.1", "::1"}
        else:
            names.add(str(ip))
    return names, ports


def cmd_routes(args: argparse.Namespace, data_dir: Path, settings: Settings,
               error: Callable[[str], Exception], read_password: Callable[[bool], str]) -> int:
    routes = Routes(data_dir)
    domains = settings.local_domains()
    try:
        routes.load()
        if routes.load_problem:
            print(f"ismail: warning: {routes.load_problem}")
        if args.action == "list":
            if args.command == "route":
                for r in routes.routes():
                    login = f"\tlogin {r.username}" if r.username else ""
                    print(f"{r.domain}\t{r.host}:{r.port}\ttls {r.tls}{login}")
            else:
                for r in routes.relay_domains():
                    who = ", ".join(r.recipients) if r.recipients else "any address"
                    life = f"{r.lifetime_hours} h" if r.lifetime_hours else "default lifetime"
                    print(f"{r.domain}\t{who}\t{life}")
            for problem in routes.problems(local_domains=domains):
                print(f"ismail: warning: {problem}")
            return 0
        if args.action == "add" and args.command == "route":
            password = read_password(True) if args.login else ""
            names, ports = own_names(settings)
            routes.set_route(Route(args.domain, args.host, args.port, args.tls, args.login, password),
                             local_domains=domains, own_names=names, own_ports=ports)
            print(f"mail for {args.domain.lower()} goes to {args.host}:{args.port} (tls {args.tls})")
        elif args.action == "add":
            routes.set_relay_domain(RelayDomain(args.domain, tuple(args.recipient), args.lifetime_hours),
                                    local_domains=domains)
            print(f"accepting mail for {args.domain.lower()} "
                  f"({', '.join(args.recipient) if args.recipient else 'any address'}) "
                  "for its primary mail server")
        elif args.command == "route":
            routes.remove_route(args.domain)
            print(f"removed the route of {args.domain.lower()}")
        else:
            routes.remove_relay_domain(args.domain)
            print(f"{args.domain.lower()} is no longer a relay domain")
        return 0
    except RouteError as e:
        raise error(str(e)) from e
