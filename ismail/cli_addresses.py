"""The command line for the address book: ``alias``, ``group``, ``catch-all``, ``domain-alias``.

Each has ``list``, ``add`` and ``remove``.  ``add`` on an existing entry replaces it (the
new targets are the whole list), as the window's Save does.  Every refusal is one line
naming the entry and the conflict (AddressError's text) and exit code 1.  The file is
DATA/addresses.json; a running server picks a change up within a second.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from .admin import AccountError, Admin
from .config import Settings
from .store.addressbook import SENDER_MODES, AddressError

COMMANDS = ("alias", "group", "catch-all", "domain-alias")


def add_arguments(sub) -> None:
    al = sub.add_parser("alias", help="addresses that deliver to other addresses (no mailbox of their own)")
    al_sub = al.add_subparsers(dest="action", metavar="ACTION")
    al_sub.required = True
    al_sub.add_parser("list", help="every alias and where it delivers")
    add = al_sub.add_parser("add", help="make ADDRESS deliver to each TARGET (replaces its targets)")
    add.add_argument("address")
    add.add_argument("targets", nargs="+", metavar="TARGET")
    al_sub.add_parser("remove", help="remove an alias").add_argument("address")

    gr = sub.add_parser("group", help="mail groups (distribution lists): every member gets a copy")
    gr_sub = gr.add_subparsers(dest="action", metavar="ACTION")
    gr_sub.required = True
    gr_sub.add_parser("list", help="every group, who may send to it, and its members")
    add = gr_sub.add_parser("add", help="make or replace the group ADDRESS with these MEMBERs")
    add.add_argument("address")
    add.add_argument("members", nargs="+", metavar="MEMBER")
    add.add_argument("--senders", choices=SENDER_MODES, default="anyone",
                     help="who may send to the group: anyone (default), its members only, "
                          "or senders of this server's domains only")
    gr_sub.add_parser("remove", help="remove a group").add_argument("address")

    ca = sub.add_parser("catch-all", help="per domain: one account gets mail for unknown addresses "
                                          "(attracts spam; off by default)")
    ca_sub = ca.add_subparsers(dest="action", metavar="ACTION")
    ca_sub.required = True
    ca_sub.add_parser("list", help="the domains that have a catch-all account")
    add = ca_sub.add_parser("add", help="send mail for unknown addresses of DOMAIN to ACCOUNT")
    add.add_argument("domain")
    add.add_argument("account")
    ca_sub.add_parser("remove", help="unknown addresses of DOMAIN are refused again").add_argument("domain")

    da = sub.add_parser("domain-alias", help="another domain name that delivers as a local domain")
    da_sub = da.add_subparsers(dest="action", metavar="ACTION")
    da_sub.required = True
    da_sub.add_parser("list", help="every domain alias")
    add = da_sub.add_parser("add", help="mail for anyone@ALIAS is delivered as anyone@DOMAIN")
    add.add_argument("alias")
    add.add_argument("domain")
    da_sub.add_parser("remove", help="remove a domain alias").add_argument("alias")


def cmd_addresses(args: argparse.Namespace, data_dir: Path, settings: Settings,
                  error: Callable[[str], Exception]) -> int:
    admin = Admin(data_dir)
    domains = settings.local_domains()
    try:
        book = admin.address_book
        if book.load_problem:
            print(f"ismail: warning: {book.load_problem}")
        if args.action == "list":
            _print_list(args.command, book.snapshot())
            for problem in book.problems(accounts=admin.account_addresses(domains), local_domains=domains):
                print(f"ismail: warning: {problem}")
            return 0
        if args.action == "add":
            accounts = admin.account_addresses(domains)
            if args.command == "alias":
                book.set_alias(args.address, args.targets, accounts=accounts, local_domains=domains)
                print(f"{args.address.lower()} delivers to {', '.join(args.targets)}")
            elif args.command == "group":
                book.set_group(args.address, args.members, args.senders, accounts=accounts,
                               local_domains=domains)
                print(f"group {args.address.lower()}: {len(args.members)} member(s); "
                      f"who may send: {args.senders}")
            elif args.command == "catch-all":
                book.set_catch_all(args.domain, args.account, accounts=accounts, local_domains=domains)
                print(f"mail for unknown addresses of {args.domain.lower()} goes to {args.account.lower()}")
            else:
                book.set_domain_alias(args.alias, args.domain, local_domains=domains, accounts=accounts)
                print(f"mail for anyone@{args.alias.lower()} is delivered as anyone@{args.domain.lower()}")
            return 0
        if args.command == "alias":
            book.remove_alias(args.address)
            print(f"removed alias {args.address.lower()}")
        elif args.command == "group":
            book.remove_group(args.address)
            print(f"removed group {args.address.lower()}")
        elif args.command == "catch-all":
            if args.domain.strip().lower().rstrip(".") not in book.snapshot()["catch_all"]:
                raise error(f"{args.domain.lower()} has no catch-all")
            book.set_catch_all(args.domain, None, accounts=admin.account_addresses(domains),
                               local_domains=domains)
            print(f"unknown addresses of {args.domain.lower()} are refused again")
        else:
            book.set_domain_alias(args.alias, None, local_domains=domains)
            print(f"removed domain alias {args.alias.lower()}")
        return 0
    except (AddressError, AccountError) as e:
        raise error(str(e)) from e


def _print_list(command: str, book: dict) -> None:
    if command == "alias":
        for address, targets in book["aliases"].items():
            print(f"{address}\t{', '.join(targets)}")
    elif command == "group":
        for address, group in book["groups"].items():
            print(f"{address}\t(senders: {group['senders']})\t{', '.join(group['members'])}")
    elif command == "catch-all":
        for domain, account in book["catch_all"].items():
            print(f"{domain}\t{account}")
    else:
        for alias, domain in book["domain_aliases"].items():
            print(f"{alias}\t{domain}")
