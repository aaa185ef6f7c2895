"""``ismail account autoreply ADDRESS ...``: an account's vacation reply (RFC 3834).

    account autoreply ADDRESS                      show it
    account autoreply ADDRESS --subject S (--body TEXT | --body-file FILE)
                          [--start YYYY-MM-DD] [--end YYYY-MM-DD] [--days N]   set it (on)
    account autoreply ADDRESS --off                remove it

DATA/autoreply.json; a running server picks a change up within a second.
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Callable

from .store.autoreply import AutoReplies, AutoReply, AutoReplyError


def add_arguments(acc_sub) -> None:
    ar = acc_sub.add_parser("autoreply", help="an account's automatic reply (vacation); "
                                              "no options: show it")
    ar.add_argument("address")
    ar.add_argument("--subject", help="the reply's Subject")
    body = ar.add_mutually_exclusive_group()
    body.add_argument("--body", help="the reply's text")
    body.add_argument("--body-file", metavar="FILE", help="the reply's text, from a UTF-8 file")
    ar.add_argument("--start", metavar="YYYY-MM-DD", help="first day it is on (default: now)")
    ar.add_argument("--end", metavar="YYYY-MM-DD", help="last day it is on (default: until removed)")
    ar.add_argument("--days", type=int, default=7,
                    help="a sender gets one reply per this many days (1-365, default 7)")
    ar.add_argument("--off", action="store_true", help="remove the automatic reply")


def _date(text: str | None, field: str, error: Callable[[str], Exception]) -> datetime.date | None:
    if not text:
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise error(f"{field}: {text!r} is not a date of the form YYYY-MM-DD") from None


def cmd_autoreply(args: argparse.Namespace, data_dir: Path, accounts: set[str],
                  error: Callable[[str], Exception]) -> int:
    address = args.address.strip().lower()
    replies = AutoReplies(data_dir)
    try:
        replies.load()
        if args.off:
            replies.remove(address)
            print(f"{address}: no automatic reply")
            return 0
        if args.subject is None and args.body is None and args.body_file is None:
            current = replies.get(address)
            if current is None:
                print(f"{address}: no automatic reply")
                return 0
            when = f"from {current.start or 'now'} to {current.end or 'until removed'}"
            print(f"{address}: {'on' if current.enabled else 'off'}, {when}, one reply per sender "
                  f"per {current.days} day(s)\nSubject: {current.subject}\n\n{current.body}")
            return 0
        if address not in accounts:
            raise error(f"There is no account {address}; add it first.")
        if args.body_file:
            try:
                text = Path(args.body_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise error(f"--body-file: cannot read {args.body_file}: {e}") from e
        else:
            text = args.body or ""
        replies.set(AutoReply(account=address, subject=args.subject or "", body=text,
                              start=_date(args.start, "--start", error),
                              end=_date(args.end, "--end", error), days=args.days))
        print(f"{address}: automatic reply on")
        return 0
    except AutoReplyError as e:
        raise error(str(e)) from e
