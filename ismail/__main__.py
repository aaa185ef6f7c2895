"""The command line: ``python3 -m ismail [--data-dir DIR] COMMAND``.

Every failure is one clear line on stderr and a non-zero exit code (2 for bad
settings or usage, 1 for anything else), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from . import __version__, cli_addresses, cli_autoreply, cli_mailauth, cli_routes, loadtest_cli
from .admin import AccountError, Admin
from .config import ConfigError, Settings, load, redacted, resolve_data_dir, settings_path

log = logging.getLogger("ismail.main")

EXIT_FAILURE = 1
EXIT_CONFIG = 2


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ismail", description="ISMail: a mail server for your own domains.")
    p.add_argument("--version", action="version", version=f"ISMail {__version__}")
    p.add_argument("--data-dir", metavar="DIR", help="data folder (default: $ISMAIL_HOME, "
                   "else %%APPDATA%%\\ISMail on Windows, ~/.local/share/ismail elsewhere)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("run", help="serve SMTP in the foreground until Ctrl+C or SIGTERM")
    sub.add_parser("check-config", help="validate the settings and print them (without secrets)")
    acc = sub.add_parser("account", help="manage local accounts")
    acc_sub = acc.add_subparsers(dest="action", metavar="ACTION")
    acc_sub.required = True
    for name, text in (("add", "add an account (password from stdin, or prompted)"),
                       ("remove", "remove an account (its mailbox folder is kept)"),
                       ("passwd", "set an account's password (from stdin, or prompted)")):
        acc_sub.add_parser(name, help=text).add_argument("address")
    acc_sub.add_parser("list", help="list accounts, built-in postmaster/root included")
    fwd = acc_sub.add_parser("forward", help="send copies of an account's mail to other addresses "
                                             "(no TARGET: stop forwarding)")
    fwd.add_argument("address")
    fwd.add_argument("targets", nargs="*", metavar="TARGET")
    quota = acc_sub.add_parser("quota", help="limit an account's mailbox (MB; \"none\": no limit)")
    quota.add_argument("address")
    quota.add_argument("mb", metavar="MB|none")
    cli_autoreply.add_arguments(acc_sub)
    port = sub.add_parser("check-port", help="can this computer reach a mail server? (port 25 test)")
    port.add_argument("host", help="a mail server's name or IP, e.g. your SmartHost")
    port.add_argument("port", nargs="?", type=int, default=25)
    q = sub.add_parser("queue", help="look at and act on the outgoing queue")
    q_sub = q.add_subparsers(dest="action", metavar="ACTION")
    q_sub.required = True
    q_sub.add_parser("list", help="id, sender, recipients, size, attempts, next try, last error")
    q_sub.add_parser("flush", help="retry everything now (also while `run` is serving)")
    q_sub.add_parser("delete", help="delete a queued message").add_argument("id")
    load = sub.add_parser("loadtest", help="send test mail to an SMTP server and measure it "
                                           "(messages/s, latency; like Postfix's smtp-source)")
    loadtest_cli.add_arguments(load)
    cli_mailauth.add_arguments(sub)
    cli_addresses.add_arguments(sub)
    cli_routes.add_arguments(sub)
    return p


def load_settings(data_dir: Path) -> Settings:
    try:
        settings, warnings = load(settings_path(data_dir))
    except ConfigError as e:
        raise CommandError(str(e), EXIT_CONFIG) from e
    for warning in warnings:
        log.warning("%s", warning)
    return settings


def read_password(confirm: bool) -> str:
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass  # here: the server itself never asks
        first = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Repeat password: ") != first:
            raise CommandError("the passwords do not match")
        return first
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.rstrip("\r\n")


def cmd_account(args: argparse.Namespace, data_dir: Path) -> int:
    settings = load_settings(data_dir)
    admin = Admin(data_dir)
    domains = sorted(settings.local_domains())
    try:
        admin.check_accounts()  # a broken file is reported before a password is asked for
        if args.action == "list":
            for info in admin.account_list(domains):
                note = " (built in)" if info.builtin else ""
                note += "" if info.has_password else " (no password)"
                note += f" (copies to {', '.join(info.forward)})" if info.forward else ""
                note += f" (quota {info.quota_mb} MB)" if info.quota_mb else ""
                print(f"{info.address}{note}\t{info.mailbox}")
        elif args.action == "forward":
            admin.account_forward(args.address, args.targets)
            print(f"{args.address.lower()}: copies go to {', '.join(args.targets)}" if args.targets
                  else f"{args.address.lower()}: no forwarding")
        elif args.action == "autoreply":
            accounts = {info.address for info in admin.account_list(domains)}
            return cli_autoreply.cmd_autoreply(args, data_dir, accounts, CommandError)
        elif args.action == "quota":
            mb = None if args.mb.lower() == "none" else _quota_mb(args.mb)
            admin.account_store.set_quota(args.address, mb)
            print(f"{args.address.lower()}: " + (f"quota {mb} MB" if mb else "no quota"))
        elif args.action == "add":
            info = admin.account_add(args.address, read_password(confirm=True), domains)
            print(f"added {info.address}; mailbox {info.mailbox}")
        elif args.action == "passwd":
            admin.account_passwd(args.address, read_password(confirm=True))
            print(f"password changed for {args.address.lower()}")
        elif args.action == "remove":
            users = admin.account_remove(args.address)
            print(f"removed {args.address.lower()}; its mailbox folder was kept")
            if users:
                print(f"ismail: warning: {args.address.lower()} is still named by {', '.join(users)}; "
                      "they skip it until you change them", file=sys.stderr)
    except AccountError as e:
        raise CommandError(str(e)) from e
    return 0


def _quota_mb(text: str) -> int:
    if not text.isdigit():
        raise CommandError(f"quota: {text!r} is not a number of MB (1-1048576, or \"none\")")
    return int(text)


def cmd_queue(args: argparse.Namespace, data_dir: Path) -> int:
    admin = Admin(data_dir)
    if args.action == "delete":
        if not admin.queue_delete(args.id):
            raise CommandError(f"no message {args.id} in the queue")
        print(f"deleted {args.id.upper()}")
        return 0
    if args.action == "flush":
        entries, problems = admin.queue_list()
        for problem in problems:
            print(f"ismail: {problem}", file=sys.stderr)
        admin.queue_flush(entries)  # also marked due in their files, for the next start
        print(f"{len(entries)} message(s) will be retried now")
        return 0
    # Each entry is printed as soon as it is read: with 100,000 queued the first page shows
    # in a fraction of a second, not after every file has been read.
    ids = admin.queue_ids()
    if not ids:
        print("the outgoing queue is empty")
    for qid in ids:
        try:
            e = admin.queue_entry(qid)
        except FileNotFoundError:
            continue  # delivered or deleted since the directory was read
        except (ValueError, OSError) as problem:
            print(f"ismail: {problem}", file=sys.stderr)
            continue
        pending = [r for r in e.recipients if r.state == "pending"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.next_try)) if e.next_try else "now"
        print(f"{e.id}  {e.size:>9}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(e.arrival))}"
              f"  <{e.sender}>  attempts={e.attempts}  next={when}")
        for r in pending:
            print(f"    <{r.address}>" + (f"  {r.last_error}" if r.last_error else ""))
    return 0


def cmd_check_config(data_dir: Path) -> int:
    settings = load_settings(data_dir)
    print(f"# {settings_path(data_dir)}: valid")
    print(json.dumps(redacted(settings), indent=2, ensure_ascii=False))
    return 0


def cmd_run(data_dir: Path) -> int:
    from .logsetup import setup_logging
    from .service import MailServer, StartupError
    from .platform.winplatform import install_shutdown_hook

    settings = load_settings(data_dir)
    try:
        setup_logging(data_dir, to_stderr=True)
    except OSError as e:
        raise CommandError(f"cannot write the log in {data_dir / 'logs'}: {e.strerror or e}") from e
    server = MailServer(settings, data_dir)
    # The handlers come first: the listeners take mail before start() returns, and a stop
    # asked for in that moment must be a clean one too (not the default: killed).
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %s received: stopping", signum)
        stop.set()

    for name in ("SIGINT", "SIGBREAK"):  # Ctrl+C; Ctrl+Break on Windows
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    # SIGTERM/SIGHUP on POSIX; on Windows a closed console window, log-off or shutdown,
    # where the process ends once the handler returns: it waits for hook.done().
    def on_shutdown() -> None:
        log.info("asked to stop by the system")
        stop.set()

    hook = install_shutdown_hook(on_shutdown)
    try:
        try:
            server.start()
        except (StartupError, AccountError) as e:   # e.g. accounts.json damaged: a sentence, no traceback
            raise CommandError(str(e)) from e
        while not stop.wait(0.5):
            pass
        server.stop()
    finally:
        hook.done()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="ismail: %(message)s")
    try:
        if args.command == "loadtest":  # a client: no data folder, no settings
            return loadtest_cli.cli_loadtest(args)
        data_dir = resolve_data_dir(args.data_dir)
        if args.command == "run":
            return cmd_run(data_dir)
        if args.command == "check-config":
            return cmd_check_config(data_dir)
        if args.command == "queue":
            return cmd_queue(args, data_dir)
        if args.command == "dkim":
            return cli_mailauth.cmd_dkim(args, data_dir, load_settings(data_dir), CommandError)
        if args.command == "dns":
            return cli_mailauth.cmd_dns(args, data_dir, load_settings(data_dir), CommandError)
        if args.command in cli_addresses.COMMANDS:
            return cli_addresses.cmd_addresses(args, data_dir, load_settings(data_dir), CommandError)
        if args.command in cli_routes.COMMANDS:
            return cli_routes.cmd_routes(args, data_dir, load_settings(data_dir), CommandError,
                                         read_password)
        if args.command == "check-port":
            from .porttest import cli_check_port
            return cli_check_port(args.host, args.port)
        return cmd_account(args, data_dir)
    except CommandError as e:
        print(f"ismail: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("ismail: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"ismail: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
