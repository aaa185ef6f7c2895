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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ismail.platform import winplatform
from ismail.store.accounts import AccountError, AccountStore
from ismail.config import (ConfigError, FieldError, Settings, load, resolve_data_dir, save,
                           settings_path, validate)
from ismail.service import MailServer, StartupError

log = logging.getLogger("ismail.gui")

try:
    from ismail.queue.scheduler import FLUSH_FILE
except ImportError:  # a server without a queue manager yet: the name `queue flush` uses
    FLUSH_FILE = "flush"


@dataclass
class Figures:
    running: bool
    listening: list[str]
    incoming_now: int
    incoming_limit: int
    per_host_limit: int
    outgoing_now: int
    outgoing_limit: int
    received: int
    sent: int
    deferred: int
    bounced: int
    queue_length: int


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


class QueueCounter:
    """Counts queue entries on disk every few seconds, for a server without a queue manager."""

    def __init__(self, messages: Path, every: float = 5.0) -> None:
        self.messages = messages
        self.every = every
        self.count = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="gui-queue-count", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                with os.scandir(self.messages) as it:
                    self.count = sum(1 for e in it if e.name.endswith(".json"))
            except OSError:
                self.count = 0
            if self._stop.wait(self.every):
                return

    def stop(self) -> None:
        self._stop.set()


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
        self._counter: QueueCounter | None = None
        self._store: AccountStore | None = None

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
                return [FieldError("listen", f"{e}")]
        try:
            save(new, self.path)
        except ConfigError as e:
            return e.errors
        except OSError as e:
            where = "The settings are in force but" if self.running else "The settings"
            return [FieldError("", f"{where} could not be saved to {self.path}: {e.strerror or e}")]
        self.settings, self.settings_problem = new, None
        return []

    # -- the server -------------------------------------------------------------------------------
    def start(self) -> StartProblem | None:
        """Start serving; None on success, else why not (any thread)."""
        with self._lock:
            if self._ending:
                return StartProblem("ISMail is closing; the SMTP server was not started.", False)
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
        if getattr(server, "qmgr", None) is None:
            self._counter = QueueCounter(server.spool.messages)
        return None

    def stop(self, grace: float = 10.0) -> None:
        """Stop cleanly (any thread); the server's figures stay readable afterwards.

        Returns once the server has stopped, also when another thread was starting or
        stopping it at the time; stopping a stopped server does nothing.
        """
        with self._lock:
            server, self._live = self._live, None
            self.running = False
            if self._counter is not None:
                self._counter.stop()
                self._counter = None
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
        if server is not None and getattr(server, "qmgr", None) is not None:
            queued = snap.get("queue_length", 0)
        else:
            queued = self._counter.count if self._counter is not None else snap.get("queue_length", 0)
        return Figures(
            running=self.running, listening=server.listening() if server and self.running else [],
            incoming_now=snap.get("connections_current", 0), incoming_limit=total,
            per_host_limit=per_host, outgoing_now=snap.get("outgoing_current", 0),
            outgoing_limit=s.outgoing.max_connections, received=snap.get("messages_received", 0),
            sent=snap.get("messages_sent", 0), deferred=snap.get("deliveries_deferred", 0),
            bounced=snap.get("messages_bounced", 0), queue_length=queued)

    # -- accounts and queue -----------------------------------------------------------------------
    def accounts(self) -> AccountStore:
        """The running server's store (changes count at once), else one of our own."""
        if self.running and self.server is not None:
            return self.server.accounts
        if self._store is None:
            self._store = AccountStore(self.data_dir)
        return self._store

    def local_domains(self) -> list[str]:
        s = self.settings or Settings()
        return [s.primary_domain.lower()] + [d.lower() for d in s.additional_domains]

    def queue_dir(self) -> Path:
        return self.data_dir / "queue"

    def retry_queue_now(self) -> None:
        qmgr = getattr(self.server, "qmgr", None) if self.running else None
        if qmgr is not None and hasattr(qmgr, "flush"):
            qmgr.flush()
            return
        # No queue manager in this process: the flush file is what `ismail queue flush` uses,
        # and a server picks it up within a second (or at its next start).
        self.queue_dir().mkdir(parents=True, exist_ok=True)
        (self.queue_dir() / FLUSH_FILE).touch()
        log.info("queue flush requested: every queued message will be retried now")

    def delete_queued(self, queue_id: str) -> None:
        qmgr = getattr(self.server, "qmgr", None) if self.running else None
        forget = getattr(qmgr, "delete", None) or getattr(qmgr, "remove", None)
        if callable(forget):
            forget(queue_id)
        else:
            from ismail.queue.spool import Spool
            (self.server.spool if self.server is not None else Spool(self.queue_dir())).remove(queue_id)
        log.info("%s: deleted from the queue by the user", queue_id)

