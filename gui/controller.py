"""The window's side of the MailServer: its life cycle and the settings file, without Tk.

A new MailServer is made for every Start, so the statistics begin at zero with each run
(as the original program's did) and a stopped server leaves nothing half-alive behind.
``start`` and ``stop`` may take a while (the queue is read at start; open sessions get
a grace period at stop), so the window runs them in a thread; everything else here is
quick and called from the Tk thread.

Every failure comes back as a sentence for the user, never as a traceback: the
traceback, if there is one, goes to the mail log.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ismail.admin import AccountError, AccountStore, Admin
from ismail.config import (ConfigError, FieldError, Settings, load, parse_listen, resolve_data_dir,
                           save, settings_path, validate)
from ismail.platform import winplatform
from ismail.service import MailServer, StartupError

log = logging.getLogger("ismail.gui")

POP3_LABEL = "POP3 "  # MailServer.listening() names POP3's addresses so; SMTP's go bare
IMAP_LABEL = "IMAP "
MAIL_PROGRAMS = ("pop3", "imap")  # settings sections; their addresses are the field "<section>.listen"


@dataclass
class Figures:
    running: bool
    listening: list[str]        # every address served now, as MailServer.listening() says
    incoming_now: int           # SMTP
    incoming_limit: int
    per_host_limit: int
    smtp_listening: list[str]   # "127.0.0.1:2525"
    pop3_enabled: bool
    pop3_listening: list[str]   # "127.0.0.1:1110"
    pop3_now: int
    pop3_limit: int
    pop3_per_host_limit: int
    imap_enabled: bool
    imap_listening: list[str]   # "127.0.0.1:1143"
    imap_now: int
    imap_limit: int
    imap_per_host_limit: int
    outgoing_now: int
    outgoing_limit: int
    received: int
    sent: int
    deferred: int
    bounced: int
    queue_length: int

    def serving_lines(self) -> str:
        """Where SMTP and POP3 listen, a line each: "SMTP on 0.0.0.0:25", "POP3 on ..." or "POP3 off".

        IMAP's line is ``imap_line``: the window shows it in a label of its own, under these.
        """
        return "\n".join([f"SMTP on {', '.join(self.smtp_listening)}", _line("POP3", self.pop3_listening)])

    def imap_line(self) -> str:
        """ "IMAP on 0.0.0.0:143" or "IMAP off"."""
        return _line("IMAP", self.imap_listening)


def _line(name: str, where: list[str]) -> str:
    return f"{name} on {', '.join(where)}" if where else f"{name} off"


@dataclass
class StartProblem:
    """Why the server is not running, in words for the user."""

    text: str
    listen: bool  # about a listening address: another port may be the fix


def lenient_settings(path: Path) -> Settings:
    """The file's values as they are, unvalidated, for the settings dialog to show and fix.

    Used only when ``load`` refused the file: each value the user wrote lands in its field,
    and the dialog shows validate()'s complaint next to it.  Missing keys get defaults.
    """
    settings = Settings()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return settings
    if not isinstance(data, dict):
        return settings
    for f in dataclasses.fields(Settings):
        if f.name == "extra" or f.name not in data:
            continue
        value, default = data[f.name], getattr(settings, f.name)
        if dataclasses.is_dataclass(default):
            if isinstance(value, dict):
                names = {s.name for s in dataclasses.fields(default)}
                setattr(settings, f.name, type(default)(**{k: v for k, v in value.items() if k in names}))
        else:
            setattr(settings, f.name, value)
    settings.extra = {k: v for k, v in data.items() if k not in {f.name for f in dataclasses.fields(Settings)}}
    return settings


class Controller:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = settings_path(self.data_dir)
        self.settings: Settings | None = None
        self.settings_problem: ConfigError | None = None
        self.warnings: list[str] = []
        self.server: MailServer | None = None
        self.running = False
        # start() and stop() may come from a window thread and from a log-off at once: the
        # lock makes a stop wait for a start in progress, and _ending refuses starts after
        # shutdown().  _live is the server still to be stopped (self.server stays readable).
        self._lock = threading.Lock()
        self._live: MailServer | None = None
        self._ending = False
        self.started_at = time.time()
        self.admin = Admin(self.data_dir)  # the queue and the accounts, this server's while it runs

    # -- settings ---------------------------------------------------------------------------------
    def load_settings(self) -> bool:
        """Read the file; False (and ``settings_problem`` set) when it cannot be used."""
        try:
            self.settings, self.warnings = load(self.path)
        except ConfigError as e:
            self.settings, self.settings_problem = None, e
            log.error("the settings cannot be used:\n%s", e)
            return False
        self.settings_problem = None
        for warning in self.warnings:
            log.warning("%s", warning)
        return True

    def editable_settings(self) -> Settings:
        """A copy for the dialog to change; the file's raw values if it could not be loaded."""
        if self.settings is not None:
            return copy.deepcopy(self.settings)
        return lenient_settings(self.path)

    def apply_settings(self, new: Settings) -> list[FieldError]:
        """Validate, put in force, save. [] on success; otherwise what stopped it, by field.

        The running server takes the settings first: if a new listening address cannot be
        opened, nothing is saved and the server goes on as before (MailServer.apply is all or
        nothing), so the file never holds an address this computer refuses.
        """
        errors = validate(new)
        if errors:
            return errors
        if self.running and self.server is not None:
            try:
                self.server.apply(new)
            except StartupError as e:
                return [FieldError(self._listen_key(new, str(e)), f"{e}")]
        try:
            save(new, self.path)
        except ConfigError as e:
            return e.errors
        except OSError as e:
            where = "The settings are in force but" if self.running else "The settings"
            return [FieldError("", f"{where} could not be saved to {self.path}: {e.strerror or e}")]
        self.settings, self.settings_problem = new, None
        return []

    @staticmethod
    def _listen_key(settings: Settings, problem: str) -> str:
        """The field of an address that could not be opened ("cannot listen on 127.0.0.1:110: ...")."""
        for section in MAIL_PROGRAMS:
            s = getattr(settings, section)
            for text in s.listen if s.enabled is True and isinstance(s.listen, list) else []:
                try:
                    entry = parse_listen(text)
                except ValueError:
                    continue
                where = f"[{entry.host}]:{entry.port}" if ":" in entry.host else f"{entry.host}:{entry.port}"
                if f"cannot listen on {where}:" in problem:
                    return f"{section}.listen"
        return "listen"

    def listen_problem(self, problem: str) -> tuple[str, str]:
        """The field ("listen", "pop3.listen" or "imap.listen") and the port a start failed on
        (SMTP's first port when ``problem`` names none)."""
        s = self.editable_settings()
        smtp = s.listen or ["0.0.0.0:25"]
        port = _failed_port(problem, smtp)
        if port not in map(_port_of, smtp):
            for section in MAIL_PROGRAMS:
                listen = getattr(s, section).listen
                if port in map(_port_of, listen if isinstance(listen, list) else []):
                    return f"{section}.listen", port
        return "listen", port

    def move_port(self, key: str, port: str, new_port: int) -> list[FieldError]:
        """The addresses of ``key`` on ``port`` move to ``new_port``; then as apply_settings."""
        new = self.editable_settings()
        section = key.partition(".")[0]
        if section in MAIL_PROGRAMS:
            s = getattr(new, section)
            s.listen = _moved(s.listen, port, new_port)
        else:
            new.listen = _moved(new.listen or ["0.0.0.0:25"], port, new_port)
        return self.apply_settings(new)

    # -- the server -------------------------------------------------------------------------------
    def start(self) -> StartProblem | None:
        """Start serving; None on success, else why not (any thread)."""
        with self._lock:
            if self._ending:
                return StartProblem("ISMail is closing; the server was not started.", False)
            return self._start()

    def _start(self) -> StartProblem | None:
        if self.running:
            return None
        if self.settings is None and not self.load_settings():
            assert self.settings_problem is not None
            return StartProblem(f"ISMail could not start: the settings file {self.path} has "
                                "problems. Open the settings to fix them:\n"
                                + "\n".join(e.message for e in self.settings_problem.errors), False)
        server = MailServer(self.settings, self.data_dir)
        try:
            server.start()
        except StartupError as e:
            log.error("could not start: %s", e)
            return StartProblem(f"ISMail could not start: {e}.", "cannot listen" in str(e))
        except AccountError as e:
            log.error("could not start: %s", e)
            return StartProblem(f"ISMail could not start: {e}", False)
        except OSError as e:
            log.error("could not start: %s", e)
            return StartProblem(f"ISMail could not start: {e.strerror or e}.", False)
        except Exception as e:  # a bug must still reach the user as a sentence, and the log in full
            log.exception("unexpected failure while starting")
            return StartProblem(f"ISMail could not start because of an unexpected problem: {e}. "
                                "The mail log has the details.", False)
        self.server, self._live, self.running, self.started_at = server, server, True, time.time()
        self.admin.server = server
        return None

    def stop(self, grace: float = 10.0) -> None:
        """Stop cleanly (any thread); the server's figures stay readable afterwards.

        Returns once the server has stopped, also when another thread was starting or
        stopping it at the time; stopping a stopped server does nothing.
        """
        with self._lock:
            server, self._live = self._live, None
            self.running = False
            self.admin.server = None
            if server is not None:
                server.stop(grace)  # MailServer owns its queue manager and stops it too

    def shutdown(self, grace: float = 10.0) -> None:
        """The program is ending (log-off, shutdown, SIGTERM, the window closed): stop for good."""
        self._ending = True
        self.stop(grace)

    # -- autostart at log-on ----------------------------------------------------------------------
    def autostart_args(self) -> list[str]:
        """``--data-dir DIR`` unless this data folder is the one ISMail finds by itself at log-on
        (where $ISMAIL_HOME, set in some shell, is not to be relied on)."""
        environ = {k: v for k, v in os.environ.items() if k != "ISMAIL_HOME"}
        try:
            same = resolve_data_dir(None, environ).resolve() == self.data_dir.resolve()
        except OSError:
            same = False
        return [] if same else ["--data-dir", str(self.data_dir.resolve())]

    def autostart_command(self) -> str:
        """The command line that opens this ISMail, with this data folder, at log-on."""
        return winplatform.program_command(self.autostart_args())

    def autostart_enabled(self) -> bool:
        try:
            return winplatform.autostart_enabled()
        except OSError as e:  # an unreadable registry key or folder: say "off", log why
            log.warning("cannot read the log-on start entry: %s", e)
            return False

    def set_autostart(self, enabled: bool) -> bool:
        """Start this ISMail at log-on, or not; True if the entry had to be written or removed.

        An entry left by a copy that has since moved (another command) is replaced.
        OSError or ValueError when the entry cannot be written.
        """
        command = self.autostart_command()
        registered = winplatform.autostart_command()
        if (registered == command) if enabled else registered is None:
            return False
        winplatform.set_autostart(enabled, command if enabled else None)
        log.info("ISMail %s when this user logs on", "starts" if enabled else "no longer starts")
        return True

    def figures(self) -> Figures:
        s = self.settings or Settings()
        server = self.server
        snap = server.stats.snapshot() if server is not None else {}
        total, per_host = (server.limiter.limits if server is not None
                           else (s.incoming.max_connections, s.incoming.max_per_host))
        pop3_total, pop3_per_host = (server.pop3_limiter.limits if server is not None
                                     else (s.pop3.max_connections, s.pop3.max_per_host))
        imap_total, imap_per_host = (server.imap_limiter.limits if server is not None
                                     else (s.imap.max_connections, s.imap.max_per_host))
        listening = server.listening() if server and self.running else []
        pop3 = [a[len(POP3_LABEL):] for a in listening if a.startswith(POP3_LABEL)]
        imap = [a[len(IMAP_LABEL):] for a in listening if a.startswith(IMAP_LABEL)]
        return Figures(
            running=self.running, listening=listening,
            incoming_now=snap.get("connections_current", 0), incoming_limit=total,
            per_host_limit=per_host,
            smtp_listening=[a for a in listening if not a.startswith((POP3_LABEL, IMAP_LABEL))],
            pop3_enabled=bool(pop3) if self.running else s.pop3.enabled is True,
            pop3_listening=pop3, pop3_now=snap.get("pop3_connections_current", 0),
            pop3_limit=pop3_total, pop3_per_host_limit=pop3_per_host,
            imap_enabled=bool(imap) if self.running else s.imap.enabled is True,
            imap_listening=imap, imap_now=snap.get("imap_connections_current", 0),
            imap_limit=imap_total, imap_per_host_limit=imap_per_host,
            outgoing_now=snap.get("outgoing_current", 0),
            outgoing_limit=s.outgoing.max_connections, received=snap.get("messages_received", 0),
            sent=snap.get("messages_sent", 0), deferred=snap.get("deliveries_deferred", 0),
            bounced=snap.get("messages_bounced", 0), queue_length=snap.get("queue_length", 0))

    # -- accounts and queue: Admin knows where they live --------------------------------------------
    def accounts(self) -> AccountStore:
        """The account store in use: the running server's (changes count at once), else our own."""
        return self.admin.account_store

    def local_domains(self) -> list[str]:
        s = self.settings or Settings()
        return [s.primary_domain.lower()] + [d.lower() for d in s.additional_domains]

    def queue_dir(self) -> Path:
        return self.admin.queue_dir


def _port_of(entry: str) -> str:
    address = (entry.split() or [""])[0]
    return address.rsplit(":", 1)[-1] if ":" in address else ""


def _failed_port(problem: str, listen: list[str]) -> str:
    """The port the start failed on ("cannot listen on 0.0.0.0:25: ..."), else the first one's."""
    found = re.search(r"cannot listen on \S*?:(\d+)", problem)
    return found.group(1) if found else _port_of(listen[0])


def _moved(entries: list[str], port: str, new_port: int) -> list[str]:
    """The entries on ``port`` moved to ``new_port``; the others as they are."""
    return [_with_port(entry, new_port) if _port_of(entry) == port else entry for entry in entries]


def _with_port(entry: str, port: int) -> str:
    """ "0.0.0.0:25" -> "0.0.0.0:2525"; flag words after the address ("submission") stay."""
    address, *flags = entry.split() or [""]
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return " ".join([f"{host}:{port}", *flags])
