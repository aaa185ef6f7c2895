"""The command line of ``python3 -m ismail loadtest`` (its arguments and its start).

The load generator itself is loadtest.py, loaded only when the command runs: the
server builds the same argument parser at every start, and need not carry a client
it does not run (~0.4 MB resident with the uuid module it brings).
"""
from __future__ import annotations

import argparse
import os
import select
import sys

PASSWORD_VARIABLE = "ISMAIL_LOADTEST_PASSWORD"
DEFAULT_TO = "postmaster"     # RFC 5321 §4.5.1: every server takes <postmaster>, for local delivery
# One thread drives every session through the system's selector (loadtest.py); where
# that is select() alone (Windows), CPython's select() takes 512 sockets at most.
MAX_SESSIONS = 1000 if any(hasattr(select, n) for n in ("epoll", "kqueue", "devpoll", "poll")) else 500


def parse_target(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port``, ``[v6]`` or a bare IPv6 address; port 25 if none."""
    text = text.strip()
    port = "25"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT ([IPv6]:PORT for IPv6)")
        port = rest[1:] if rest else port
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text  # a name, an IPv4 address, or an IPv6 address without a port
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (a host, then a port 1-65535)")
    return host, int(port)


def _whole(low: int, high: int):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low} to {high})")
        return value
    return convert


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range (0.1 to 86400 seconds)")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Send test mail to an SMTP server and measure it, as Postfix's smtp-source "
                     "does: prints messages/s, MB/s (10^6 bytes), latency percentiles (from the "
                     "connect to the 250 after the message) and errors.  Exit status 0 when every "
                     "message was accepted, 1 otherwise, 2 for bad arguments.")
    p.add_argument("target", metavar="HOST:PORT", type=parse_target,
                   help="the SMTP server: host, host:port or [IPv6]:port (port 25 if none)")
    p.add_argument("-s", "--sessions", type=_whole(1, MAX_SESSIONS), default=1,
                   help=f"parallel client sessions (default 1, at most {MAX_SESSIONS})")
    p.add_argument("-m", "--messages", type=_whole(1, 10**9), default=100,
                   help="messages in all (default 100)")
    p.add_argument("-l", "--length", type=_whole(0, 10**8), default=2048, metavar="BYTES",
                   help="size of each message, headers included (default 2048)")
    p.add_argument("--per-connection", type=_whole(1, 10**6), default=1, metavar="N",
                   help="messages per connection (default 1: a new connection for each, "
                        "as smtp-source does)")
    p.add_argument("--from", dest="sender", metavar="ADDRESS",
                   help="envelope sender (default loadtest@<this computer's name>)")
    p.add_argument("--to", dest="recipient", metavar="ADDRESS", default=DEFAULT_TO,
                   help="recipient (default <postmaster>, which every server delivers locally; "
                        "better give a test account of your own)")
    p.add_argument("--ehlo", metavar="NAME", help="name given in EHLO (default this computer's name)")
    p.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS",
                   help="longest wait for a connect or a reply (default 60)")
    p.add_argument("--max-seconds", type=_seconds, default=600.0, metavar="SECONDS",
                   help="stop sending after this long and count the rest as errors (default 600)")
    p.add_argument("--max-errors", type=_whole(0, 10**9), default=10, metavar="N",
                   help="stop sending after N errors (default 10; 0: never stop)")
    p.add_argument("--starttls", action="store_true",
                   help="use STARTTLS; the certificate is NOT checked (for test servers "
                        "with self-signed certificates)")
    p.add_argument("--auth", metavar="USER",
                   help=f"log in as USER (AUTH PLAIN or LOGIN); the password comes from "
                        f"${PASSWORD_VARIABLE} or is asked for, never from the command line")
    p.add_argument("--pipelining", action="store_true",
                   help="send MAIL, RCPT and DATA together if the server offers PIPELINING "
                        "(smtp-source does not)")


def cli_loadtest(args: argparse.Namespace) -> int:
    """``python3 -m ismail loadtest``: the report on stdout; 0 when every message was accepted."""
    host, port = args.target
    password = ""
    if args.auth:
        password = os.environ.get(PASSWORD_VARIABLE, "")
        if not password and sys.stdin is not None and sys.stdin.isatty():
            import getpass
            password = getpass.getpass(f"Password for {args.auth}: ")
        if not password:
            print(f"ismail: error: --auth needs a password: set {PASSWORD_VARIABLE} "
                  "or type it when asked", file=sys.stderr)
            return 2
    from .loadtest import LoadTest, Options, format_report
    options = Options(host=host, port=port, sessions=args.sessions, messages=args.messages,
                      length=args.length, per_connection=args.per_connection,
                      sender=args.sender or "", recipient=args.recipient, ehlo=args.ehlo or "",
                      timeout=args.timeout, max_seconds=args.max_seconds,
                      max_errors=args.max_errors, starttls=args.starttls, user=args.auth or "",
                      password=password, pipelining=args.pipelining)
    report = LoadTest(options).run()
    print(format_report(report), flush=True)
    return 0 if report.ok else 1
