r"""MailServer: the one object that owns ISMail's state and wires its stages.

    net (listeners, limits, bans, TLS) -> smtp session -> accept_message -> store (local Maildirs)
                                                                        \-> queue (outgoing)
                                       -> pop3 session -> store (maildrop)

``start()`` prepares the data folder (clearing what a crash left half-written),
binds every listening address of every protocol (all or none) and serves each in
its own thread (plain SMTP: all in one loop, net.reactor).  ``apply(settings)``
puts new settings into force without a restart: limits hold for the next
connection, connections already open keep theirs.  ``stop()`` stops accepting,
lets sessions in the middle of a message finish for a grace period and tells idle
ones goodbye.  The GUI and the command line drive it through these three calls and
read ``stats``.
"""
from __future__ import annotations

import errno
import gc
from concurrent.futures import ThreadPoolExecutor
import logging
import ssl
import threading
import time
from email.utils import formatdate
from pathlib import Path
from typing import Callable

from .aftercare import Aftercare
from .antispam.engine import Antispam
from .antispam.state import AntispamState
from .mailauth.authres import header as authres_header, remove_ours
from .queue.dns import Resolver, parse_server
from .store.accounts import AccountStore
from .store.addressbook import AddressBook, AddressError, Expansion
from .store.autoreply import AutoReplies, AutoReplyError
from .store.dedupe import DuplicateFilter, top_received
from .store.routes import RouteError, Routes
from .config import ListenEntry, Settings
from .fsutil import DirSync, make_dirs, new_queue_id
from .net.guard import Guard
from .net.limits import ConnectionLimiter
from .store.folders_box import use_measured_slack
from .store.maildir import Staged, clean_tmp, deliver, stage
from .store.spares import SpareFiles
from .store.folders import SPECIAL_USE, FolderExists, MailStore
from .store.maildrop import Maildrop, Maildrops
from .smtp.policy import Policy
from .net.listener import Gate, Listener, Protocol, WorkerPool
from .net.reactor import Reactor
from .net import selfsigned
from .net.selfsigned import self_signed_files
from .mailauth.keystore import KeyStore, KeyStoreError, keys_missing
from .mailauth.signing import signing_domain
from .mailauth.srs import SRS
from .mailauth.srs_secret import load_srs_secret
from .queue import etrn
from .queue.scheduler import QueueManager
from .imap.protocol import ImapProtocol
from .pop3.protocol import Pop3Protocol
from .smtp.protocol import SmtpProtocol
from .smtp.session import Envelope
from .queue.spool import MessageBuffer, QueueEntry, QueuedRecipient, Spool, StagedEntry
from .stats import Stats

log = logging.getLogger("ismail.service")

KEYGEN_STOP_SECONDS = 30.0  # a stop waits this long for a DKIM key being made (OpenSSL: < 1 s)
# With this many messages waiting at the start, every object there is once the queue's
# reading thread has read them (the queue's entries among them) is kept out of the garbage
# collector's full collections until the stop (gc.freeze).  A queue of 100,000 deferred
# messages is ~324,000 tracked objects: the next full collection, due soon after the start
# as new mail comes in, stopped every thread for 150-185 ms, and new mail was relayed at
# 0.95 of the empty queue's rate; frozen, at 1.00 (bench/queue_bench.py, medians of 5
# interleaved rounds).  The entries are still freed as they leave the queue (they hold no
# cycles, and there was no cyclic garbage to keep at that point); a smaller queue costs a
# full collection a few ms, and stays as it is.
FREEZE_QUEUE_LENGTH = 10_000


class StartupError(Exception):
    """The server cannot start; the message says why in words a user understands."""


class MailServer:
    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.settings = settings
        self.policy = Policy(settings)
        self.data_dir = Path(data_dir)
        self.stats = Stats()
        self.limiter = ConnectionLimiter(settings.incoming.max_connections,
                                         settings.incoming.max_per_host)
        self.accounts = AccountStore(self.data_dir)
        self.addresses = AddressBook(self.data_dir)
        self.routes = Routes(self.data_dir)
        self.duplicates = DuplicateFilter(self.data_dir, self.accounts.mailbox_root)
        self.autoreplies = AutoReplies(self.data_dir)
        self.aftercare = Aftercare(self)  # quotas and auto-replies
        self.dirsync = DirSync()
        self.spares: SpareFiles | None = None  # files made ahead for local mail (from start)
        self.spool = Spool(self.data_dir / "queue", self.dirsync, journal=True)
        self.spill_dir = self.spool.tmp
        self.workers = WorkerPool()
        self.qmgr: QueueManager | None = None
        self._listeners: dict[tuple[str, ListenEntry], Listener] = {}
        self.guard = Guard(settings)
        self.gate = Gate(self.guard, self.stats, self.workers)
        self.reactor = Reactor(self.gate)
        self.antispam_state = AntispamState(self.data_dir, self.stats)
        self.resolver = _resolver(settings)
        self.antispam = Antispam(settings, self.resolver, self.antispam_state)
        self.smtp = SmtpProtocol(self.limiter, self, self.policy, self.antispam)
        self.maildrops = Maildrops()
        self.pop3_limiter = ConnectionLimiter(settings.pop3.max_connections, settings.pop3.max_per_host)
        self.pop3 = Pop3Protocol(self.pop3_limiter, _Pop3Backend(self), settings)
        self.imap_limiter = ConnectionLimiter(settings.imap.max_connections, settings.imap.max_per_host)
        self.imap = ImapProtocol(self.imap_limiter, _ImapBackend(self), settings)
        self._password_checker = _password_executor()
        self._srs: tuple[tuple, SRS] | None = None
        self.dkim_keys = KeyStore(self.data_dir)
        self._keygen: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards listener changes (start, apply, stop)
        self._frozen = False  # gc.freeze() after loading a big queue (FREEZE_QUEUE_LENGTH)
        self._freeze_lock = threading.Lock()  # the queue's reading thread freezes, a stop thaws

    @property
    def stopping(self) -> bool:
        return self.gate.stopping

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        return self.gate.tls_context

    def _protocols(self, settings: Settings) -> dict[str, tuple[Protocol, list[ListenEntry]]]:
        """Each protocol served, with the addresses it listens on under ``settings``."""
        return {"SMTP": (self.smtp, settings.listen_entries()),
                "POP3": (self.pop3, settings.pop3.listen_entries()),
                "IMAP": (self.imap, settings.imap.listen_entries())}

    def _wanted(self, settings: Settings) -> list[tuple[str, ListenEntry]]:
        return [(name, entry) for name, (_, entries) in self._protocols(settings).items()
                for entry in entries]

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            make_dirs(self.data_dir)
            self.accounts.load()
            self.addresses.load()
            self.routes.load()
            self.autoreplies.load()
            self.duplicates.load()
            queued = self.spool.prepare()
            clean_tmp(self.accounts.mailbox_root)
            self.spares = SpareFiles.for_server(self.data_dir, self.accounts.mailbox_root)
            root = self.accounts.mailbox_root
            use_measured_slack(root if root.is_dir() else self.data_dir)
        except OSError as e:
            self.spool.close()
            raise StartupError(f"cannot use the data folder {self.data_dir}: {e.strerror or e}") from e
        except (AddressError, RouteError, AutoReplyError) as e:  # a file that cannot be read
            raise StartupError(str(e).rstrip(".")) from e
        if queued:
            log.info("%d message(s) waiting in the outgoing queue", len(queued))
        self.gate.stopping = False
        self.gate.handshake_seconds = float(self.settings.antispam.tls_handshake_seconds)
        if self.antispam_state.stopped:  # started again after a stop: fresh lookup threads
            self.antispam_state = AntispamState(self.data_dir, self.stats)
            self.antispam = self.smtp.antispam = Antispam(self.settings, self.resolver, self.antispam_state)

        def tls() -> None:  # once every address is bound: a port in use is said first
            self.gate.tls_context = tls_context(self.settings, self.data_dir)
        # The queue takes new mail before any listener opens: a message accepted while the
        # rest starts must not miss it (it would wait, acknowledged, until the next start).
        self.qmgr = QueueManager(self)
        self.qmgr.start()
        try:
            with self._lock:
                self._open_listeners(self._wanted(self.settings), before_serving=tls)
        except BaseException:
            self.qmgr.stop(0)
            self.spool.close()
            raise
        # After the listeners, in a thread: a big queue delays neither serving nor the
        # end of the start (the window shows the server running while the queue is read).
        self.qmgr.load_later(queued, self._queue_read)
        etrn.at_start(self.settings)  # our backup MX hosts: send what you hold for us now
        self._make_dkim_keys(self.settings)
        log.info("ISMail serving %s as %s", self.serving(), self.settings.server_name)

    def _queue_read(self, count: int, seconds: float) -> None:
        """(The queue's reading thread) every entry on disk at the start is read."""
        log.info("read the %d message(s) waiting in the outgoing queue in %.1f s", count, seconds)
        with self._freeze_lock:
            if count >= FREEZE_QUEUE_LENGTH and not self._frozen and not self.gate.stopping:
                gc.freeze()
                self._frozen = True

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; wait up to ``grace`` seconds for sessions to end."""
        self.gate.stopping = True
        with self._lock:
            listeners = list(self._listeners.values())
            self._listeners.clear()
        for listener in listeners:
            self._close_listener(listener)
        if self.qmgr is not None:
            self.qmgr.stop(grace)
        deadline = time.monotonic() + grace
        while self._open_connections() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.workers.stop()
        self.antispam_state.stop()  # saves the greylist
        self.duplicates.close()
        self.spool.close()  # after the sessions: a message still arriving had its commit
        if self.spares is not None:
            self.spares.close()
        self.dirsync.close()
        keygen = self._keygen
        if keygen is not None and keygen.is_alive():
            # OpenSSL may be making a DKIM key in it: a process that ends meanwhile runs
            # OpenSSL's exit cleanup under that call and crashes (SIGSEGV, seen on a stop
            # 0.1 s after a first start).  It stops after the key it is making.
            keygen.join(KEYGEN_STOP_SECONDS)
            if keygen.is_alive():
                log.warning("DKIM: a key was still being made when the server stopped")
        # Its thread ends; a new executor starts none until a login needs it (after a restart).
        self._password_checker.shutdown(wait=False)
        self._password_checker = _password_executor()
        left = self._open_connections()
        if left:
            log.warning("stopped with %d session(s) still open", left)
        with self._freeze_lock:
            if self._frozen:  # collected as usual again: the window's process goes on after a stop
                self._frozen = False
                gc.unfreeze()
        log.info("ISMail stopped; %s", self.stats.summary())

    def _open_connections(self) -> int:
        snap = self.stats.snapshot()
        return sum(snap.get(f"{proto.counter}connections_current", 0)
                   for proto, _ in self._protocols(self.settings).values())

    def serving(self) -> str:
        """ "SMTP on 0.0.0.0:25; POP3 on 0.0.0.0:110", for the log and the window."""
        with self._lock:
            keys = list(self._listeners)
        parts = []
        for name in dict.fromkeys(name for name, _ in keys):
            parts.append(f"{name} on " + ", ".join(e.label for n, e in keys if n == name))
        return "; ".join(parts)

    def listening(self) -> list[str]:
        with self._lock:
            return [listener.label for listener in self._listeners.values()]

    def apply(self, settings: Settings) -> None:
        """New settings, in force for every connection that arrives from now on.

        All or nothing: if a new listening address cannot be opened, StartupError is
        raised and the server goes on exactly as before.
        """
        context = tls_context(settings, self.data_dir)  # a bad certificate refuses the change, like a bad port
        with self._lock:
            if not self.stopping:
                self._move_listeners(self._wanted(settings))
            self.gate.tls_context = context
            self.policy = Policy(settings)
            self.smtp.policy = self.policy
            if settings.dns_servers != self.settings.dns_servers:
                self.resolver = _resolver(settings)
            self.antispam = self.smtp.antispam = Antispam(settings, self.resolver, self.antispam_state)
            self.gate.handshake_seconds = float(settings.antispam.tls_handshake_seconds)
            self.pop3.settings = settings
            self.imap.settings = settings
            self.settings = settings
        self.guard.apply(settings)
        self.limiter.resize(settings.incoming.max_connections, settings.incoming.max_per_host)
        self.pop3_limiter.resize(settings.pop3.max_connections, settings.pop3.max_per_host)
        self.imap_limiter.resize(settings.imap.max_connections, settings.imap.max_per_host)
        if self.qmgr is not None:
            self.qmgr.apply(settings)
        self._make_dkim_keys(settings)
        log.info("settings applied: incoming %d total / %d per host, listening on %s",
                 settings.incoming.max_connections, settings.incoming.max_per_host,
                 ", ".join(settings.listen))

    def _move_listeners(self, wanted: list[tuple[str, ListenEntry]]) -> None:
        added = [a for a in wanted if a not in self._listeners]
        removed = [a for a in self._listeners if a not in wanted]
        if not added and not removed:
            return
        # A new address on a port we already hold (127.0.0.1:25 -> 0.0.0.0:25) can only be
        # bound once the old socket is closed; other ports are opened first, so a failure
        # there leaves everything as it was.
        ports = {entry.port for _, entry in added}
        first = [a for a in removed if a[1].port in ports]
        for addr in first:
            self._close_listener(self._listeners.pop(addr))
        try:
            self._open_listeners(added)
        except StartupError:
            try:
                self._open_listeners(first)  # put back what was closed for the move
            except StartupError as again:
                log.error("could not listen again on the old address: %s", again)
            raise
        for addr in removed:
            if addr in self._listeners:
                self._close_listener(self._listeners.pop(addr))

    def _open_listeners(self, entries: list[tuple[str, ListenEntry]],
                        before_serving: Callable[[], None] | None = None) -> None:
        protocols = self._protocols(self.settings)
        opened: dict[tuple[str, ListenEntry], Listener] = {}
        try:
            for name, entry in entries:
                opened[(name, entry)] = Listener(entry, self.gate, protocols[name][0])
            if before_serving is not None:
                before_serving()
        except OSError as e:
            for listener in opened.values():
                listener.server_close()
            raise StartupError(_bind_problem(entry.host, entry.port, e)) from e
        except BaseException:
            for listener in opened.values():
                listener.server_close()
            raise
        for addr, listener in opened.items():
            thread = listener.start(self.reactor)
            if thread is not None:
                self._threads.append(thread)
            self._listeners[addr] = listener

    @staticmethod
    def _close_listener(listener: Listener) -> None:
        listener.shutdown()
        listener.server_close()

    def _make_dkim_keys(self, settings: Settings) -> None:
        """A local domain without a DKIM key gets one (dkim.auto_keys), in the background:
        a 2048-bit key takes 0.15-0.3 s with OpenSSL (up to seconds with pow(), the
        fallback), and mail is accepted meanwhile (unsigned)."""
        if not (settings.dkim.enabled and settings.dkim.auto_keys):
            return
        if not keys_missing(self.dkim_keys, sorted(settings.local_domains())):
            return
        if self._keygen is not None and self._keygen.is_alive():
            return  # the running one looks again at the settings in force when it is done

        def make() -> None:
            tried: set[str] = set()
            while not self.stopping:
                current = self.settings
                todo = [d for d in keys_missing(self.dkim_keys, sorted(current.local_domains()))
                        if d not in tried]
                if not todo or not (current.dkim.enabled and current.dkim.auto_keys):
                    return
                domain = todo[0]
                tried.add(domain)
                try:
                    key = self.dkim_keys.create(domain, current.dkim.key_bits, current.dkim.selector)
                except (KeyStoreError, OSError) as e:
                    log.error("DKIM: no key could be made for %s: %s", domain, e)
                    continue
                log.info("DKIM: %s signs with selector %s from now on; publish its DNS record "
                         "(`ismail dns %s` shows it)", domain, key.selector, domain)
        self._keygen = threading.Thread(target=make, name="dkim-keys", daemon=True)
        self._keygen.start()

    # -- what sessions call ----------------------------------------------------------------------
    def lookup_mailbox(self, local: str, domain: str) -> Path | None:
        return self.accounts.mailbox_for(local, domain)

    def lookup_forwards(self, local: str, domain: str) -> list[str]:
        return self.accounts.forwards_for(local, domain)

    def is_alias_domain(self, domain: str) -> bool:
        return self.addresses.alias_target(domain, self.policy.local_domains) is not None

    def is_account(self, address: str) -> bool:
        local, _, domain = address.rpartition("@")
        return self.accounts.mailbox_for(local, domain) is not None

    def expand(self, address: str, sender: str, sender_is_local: bool) -> Expansion:
        """Aliases, groups, catch-all and domain aliases (DATA/addresses.json) for ``address``."""
        return self.addresses.expand(address, sender, is_account=self.is_account,
                                     local_domains=self.policy.local_domains,
                                     sender_is_local=sender_is_local)

    def fits(self, address: str, box: Path, size: int) -> bool:
        return self.aftercare.fits(address, box, size)

    def over_quota(self, envelope: Envelope) -> list[str]:
        return self.aftercare.over_quota(envelope)

    def relay_accepts(self, address: str) -> bool | None:
        """A relay domain's recipient (we are its backup MX): True to queue it for the
        domain's primary, False when the domain lists its recipients and this is not one;
        None for any other domain."""
        return self.routes.relay_accepts(address)

    def etrn(self, domain: str) -> int | None:
        """ETRN (RFC 1985): send what waits for a relay domain now; how many messages."""
        if self.routes.relay_domain(domain) is None or self.qmgr is None:
            return None
        count = self.qmgr.flush_domain(domain)
        log.info("ETRN %s: %d message(s) due now", domain, count)
        return count

    def lifetime_hours(self, domain: str) -> int:
        """How long mail for ``domain`` may wait before it bounces (relay domains may differ)."""
        relay = self.routes.relay_domain(domain)
        if relay is not None and relay.lifetime_hours:
            return relay.lifetime_hours
        return self.settings.retry.lifetime_hours

    def srs(self) -> SRS | None:
        """The Sender Rewriting Scheme of the primary domain; None when switched off."""
        settings = self.settings
        if not settings.srs.enabled:
            return None
        key = (settings.primary_domain, settings.srs.max_age_days)
        if self._srs is None or self._srs[0] != key:
            self._srs = (key, SRS(load_srs_secret(self.data_dir), settings.primary_domain,
                                  max_age_days=settings.srs.max_age_days))
        return self._srs[1]

    def signing_domain(self, message: bytes) -> str:
        """The local domain whose DKIM key signs ``message`` as it leaves ("" for none)."""
        if not self.settings.dkim.enabled:
            return ""
        return signing_domain(message, self.policy.local_domains)

    def reverse_srs(self, address: str) -> str | None:
        """The original sender behind an SRS address of ours; None when SRS is off or this is
        no SRS address; ValueError (SRSError) when it is forged, damaged or expired."""
        srs = self.srs()
        if srs is None or not srs.is_srs(address):
            return None
        return srs.reverse(address)

    def strike(self, ip: str, why: str) -> bool:
        """Count something a client did wrong (a harvest of addresses) towards a ban, as a
        failed login counts; True when this one starts the ban."""
        log.info("%s: strike for %s", ip, why)
        return self.guard.login_failed(ip)

    def check_login(self, address: str, password: str, ip: str, count: bool = True) -> str:
        """SMTP AUTH: "ok", "failed", or "banned" (``ip`` is banned, or this failure banned it).

        Password checks run one at a time in one thread: scrypt takes 16 MB for each
        check, which glibc would keep in every thread that ever ran one (and, without
        platform/memory.py, in that one thread too); one at a time also caps what a
        password-guessing crowd can cost.
        """
        if self.guard.refused(ip):
            return "banned"  # a connection opened before the ban gets no more guesses
        ok = (self.accounts.verified_before(address, password)
              or self._password_checker.submit(self.accounts.check_password, address, password).result())
        if ok:
            self.guard.login_succeeded(ip)
            if count:
                self.stats.add("logins")
            return "ok"
        if count:
            self.stats.add("logins_failed")
        log.info("%s: failed login as %s", ip, address)
        return "banned" if self.guard.login_failed(ip) else "failed"

    def accept_message(self, envelope: Envelope, body: MessageBuffer, received: bytes | None = None) -> None:
        """Make the message durable everywhere it goes; raises OSError if it cannot."""
        if received is None:
            received = envelope.received_header(self.settings.server_name)
        placed: list[Path] = []
        before = self.aftercare.usage_before(envelope)  # quota accounts only
        if envelope.mailboxes:
            body, header, boxes, record = self._local_copies(envelope, body, received)
            if boxes:
                placed = deliver(boxes, header, body, self.dirsync, before_commit=record,
                                 journal=self.spool.journal)
        remote = envelope.remote_recipients
        if remote:
            queued: list[str] = []
            try:
                for entry in self._queue_entries(envelope):
                    self.spool.enqueue(entry, received, body)
                    queued.append(entry.id)
            except BaseException:
                # The client will be told to try again: take back the local copies (and a
                # first queue entry) too, or the retry would deliver them twice.
                for path in placed:
                    path.unlink(missing_ok=True)
                for qid in queued:
                    if self.qmgr is not None:
                        self.qmgr.delete(qid)
                    else:
                        self.spool.remove(qid)
                raise
            self.stats.add("recipients_queued", len(remote))
        self._accepted(envelope, body, placed, before)

    def stage_message(self, envelope: Envelope, body: MessageBuffer) -> "StagedMessage | None":
        """accept_message in two steps, for the SMTP loop, which must not wait for the disk:
        a message for local mailboxes only, or one to send on that makes one queue entry,
        is appended to the journal here, and its ``finish()``, in a thread that may wait,
        waits for the journal's sync, puts the files in place or queues the entry, and does
        the rest (raising OSError as accept_message does).  None for anything else (both
        kinds of recipient, a large message, a journal not in use): the caller then uses
        accept_message."""
        journal = self.spool.journal
        if (bool(envelope.remote_recipients) == bool(envelope.mailboxes) or envelope.over_quota
                or journal is None or not journal.usable):
            return None
        received = envelope.received_header(self.settings.server_name)
        if envelope.remote_recipients:
            entries = self._queue_entries(envelope)
            queued = self.spool.stage(entries[0], received, body) if len(entries) == 1 else None
            return None if queued is None else StagedMessage(self, envelope, body, queued, {})
        before = self.aftercare.usage_before(envelope)
        body, header, boxes, record = self._local_copies(envelope, body, received)
        staged = (stage(boxes, header, body, journal, before_commit=record, spares=self.spares)
                  if boxes else None)
        if boxes and staged is None:
            return None
        return StagedMessage(self, envelope, body, staged, before)

    def _queue_entries(self, envelope: Envelope) -> list[QueueEntry]:
        """The queue entries of a message's recipients elsewhere (one, or two with forwards)."""
        remote = envelope.remote_recipients
        # Only mail from our own side is marked for signing (each attempt signs it as it
        # leaves): a stranger's message with our From (forwarded, or for a relay
        # domain) must not leave with our signature.
        sign = self.settings.dkim.enabled and envelope.internal
        # Forwarded copies leave with an SRS sender of ours, so the receiver's SPF check
        # passes and a bounce comes back here to be sent on (issue 12); others as they came.
        srs = self.srs() if envelope.forwarded and envelope.sender else None
        forwarded = [r for r in remote if r in envelope.forwarded] if srs is not None else []
        direct = [r for r in remote if r not in forwarded]
        parts = []
        if direct:
            parts.append((envelope.id, envelope.sender, direct))
        if forwarded:
            qid = new_queue_id() if direct else envelope.id
            parts.append((qid, srs.forward(envelope.sender), forwarded))
        return [QueueEntry(id=qid, sender=sender, recipients=[QueuedRecipient(r) for r in rcpts],
                           arrival=envelope.received_at, client_ip=envelope.client_ip,
                           helo=envelope.helo, size=envelope.size, smtputf8=envelope.smtputf8,
                           body=envelope.body_type, sign=sign)
                for qid, sender, rcpts in parts]

    def _local_copies(self, envelope: Envelope, body: MessageBuffer, received: bytes
                      ) -> tuple[MessageBuffer, bytes, list[Path], Callable[[list[Path]], None] | None]:
        """What a message's local copies are made of: the text (forged results removed),
        the header put before it, the mailboxes that have not had it yet, and the line for
        the duplicate filter (called with the files' names before they are committed)."""
        body = self._without_forged_results(body)
        auth = envelope.auth_header or self._plain_results(envelope)
        header = f"Return-Path: <{envelope.sender}>\r\n".encode("utf-8") + auth + received
        boxes = list(envelope.mailboxes.values())
        if envelope.folder:
            boxes = [_folder_of(box, envelope.folder) for box in boxes]
        boxes, keys = self._not_delivered_yet(envelope, body, boxes)
        record = (lambda dests: self.duplicates.record(list(zip(keys, dests)))) if keys else None
        return body, header, boxes, record

    def _accepted(self, envelope: Envelope, body: MessageBuffer, placed: list[Path],
                  before: dict[str, int], log_now: bool = True) -> None:
        """What follows a stored message: its counters, its log line (``log_now``; else the
        caller calls ``log_accepted`` itself) and the aftercare (quota, auto-replies)."""
        self.stats.add("recipients_local", len(envelope.mailboxes))
        if log_now:
            self.log_accepted(envelope)
        if envelope.mailboxes or envelope.over_quota:
            self.aftercare.after_delivery(envelope, body, placed, envelope.over_quota, before)

    def log_accepted(self, envelope: Envelope) -> None:
        log.info("%s: from=<%s> to=%s size=%d client=%s local=%d queued=%d", envelope.id,
                 envelope.sender, ",".join(f"<{r}>" for r in envelope.recipients), envelope.size,
                 envelope.client_ip, len(envelope.mailboxes), len(envelope.remote_recipients))

    def _not_delivered_yet(self, envelope: Envelope, body: MessageBuffer,
                           boxes: list[Path]) -> tuple[list[Path], list[str]]:
        """The mailboxes that have not had this very message yet (store/dedupe.py: a server
        that lost our 250 sends it again), and the journal key of each."""
        first = next(body.chunks(), b"")
        end = first.find(b"\r\n\r\n")
        received = top_received(first[:end + 2] if end >= 0 else first)
        if not received:
            return boxes, []
        digest = self.duplicates.digest(body.chunks())
        fresh, keys = [], []
        for box in dict.fromkeys(boxes):
            key = self.duplicates.key(digest, box)
            earlier = self.duplicates.delivered(key)
            if earlier is not None:
                log.info("%s: from=<%s> to %s is a copy of %s, delivered before: not stored "
                         "again", envelope.id, envelope.sender, box, earlier.name)
                self.stats.add("duplicates_suppressed")
                continue
            fresh.append(box)
            keys.append(key)
        return fresh, keys

    def _plain_results(self, envelope: Envelope) -> bytes:
        """Authentication-Results for mail that was not checked (trusted or logged-in clients)."""
        if envelope.authenticated:
            return authres_header(self.settings.server_name,
                                  [("auth", "pass", {"smtp.auth": envelope.authenticated}, "")])
        return authres_header(self.settings.server_name, [])

    def _without_forged_results(self, body: MessageBuffer) -> MessageBuffer:
        """RFC 8601 §5: an Authentication-Results header that claims to be ours, but came with
        the message, is removed (it could say "pass" for anything)."""
        first = next(body.chunks(), b"")
        end = first.find(b"\r\n\r\n")
        head = first[:end + 2] if end >= 0 else first
        if b"authentication-results" not in head.lower():
            return body
        cleaned = remove_ours(head, self.settings.server_name)
        if cleaned == head:
            return body
        log.info("removed an Authentication-Results header naming this server from a message")
        fresh = MessageBuffer(self.spill_dir)
        fresh.write(cleaned)
        skip = len(head)
        for chunk in body.chunks():
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            fresh.write(chunk[skip:])
            skip = 0
        return fresh

    def inject(self, sender: str, recipients: list[str], data: bytes) -> str:
        """Send a message ISMail wrote itself (a bounce): into local Maildirs or the queue.

        A local recipient without a mailbox gets it in the postmaster's instead, so a
        report is never lost for want of an address.
        """
        settings = self.settings
        envelope = Envelope(id=new_queue_id(), sender=sender, recipients=list(recipients),
                            helo=settings.server_name, client_ip="127.0.0.1", received_at=time.time(),
                            size=len(data), internal=True)
        for rcpt in recipients:
            local, _, domain = rcpt.rpartition("@")
            if settings.is_local_domain(domain):
                envelope.mailboxes[rcpt] = (self.lookup_mailbox(local, domain)
                                            or self.lookup_mailbox("postmaster", settings.primary_domain))
        body = MessageBuffer(self.spill_dir)
        body.write(data)
        received = (f"Received: by {settings.server_name} (ISMail) id {envelope.id};\r\n"
                    f"\t{formatdate(envelope.received_at, localtime=True)}\r\n").encode()
        try:
            self.accept_message(envelope, body, received)
        finally:
            body.close()
        return envelope.id


class StagedMessage:
    """A message MailServer.stage_message appended to the journal; ``finish()`` completes it."""

    def __init__(self, server: MailServer, envelope: Envelope, body: MessageBuffer,
                 staged: Staged | StagedEntry | None, before: dict[str, int]) -> None:
        self.server, self.envelope, self.body = server, envelope, body
        self.staged, self.before = staged, before

    @property
    def local(self) -> bool:
        """For our own mailboxes only (a Maildir file each), not mail to send on."""
        return isinstance(self.staged, Staged)

    def durable(self) -> None:
        """Wait for the journal's sync; ``finish`` then waits for nothing."""
        if self.staged is not None:
            self.staged.durable()

    def write_ahead(self) -> bool:
        """A local message's file written into tmp/ before ``finish`` (Staged.write_ahead);
        False if there is none (mail to send on only) or writing it failed."""
        return isinstance(self.staged, Staged) and self.staged.write_ahead()

    def finish(self) -> None:
        """Wait for the journal's sync and put the files in place, or queue the entry;
        OSError if that failed (nothing is delivered then: the client is to be told to try
        again).  The log line is left to ``log``, for after the reply."""
        server, staged, placed = self.server, self.staged, []
        if isinstance(staged, StagedEntry):
            staged.finish()
            server.stats.add("recipients_queued", len(self.envelope.remote_recipients))
        elif staged is not None:
            placed = staged.place(server.dirsync)
        server._accepted(self.envelope, self.body, placed, self.before, log_now=False)

    def log(self) -> None:
        """The message's line in the mail log (after ``finish``, once its 250 is sent)."""
        self.server.log_accepted(self.envelope)


class _Pop3Backend:
    """What a POP3 session asks of the server: logins (one ban list for every protocol),
    the account's Maildir, and the maildrop lock."""

    def __init__(self, ms: MailServer) -> None:
        self._ms = ms
        self.stats = ms.stats

    def check_login(self, address: str, password: str, ip: str) -> str:
        return self._ms.check_login(address, password, ip, count=False)  # POP3 counts its own

    def mailbox_of(self, address: str) -> Path | None:
        local, _, domain = address.rpartition("@")
        if not local or not self._ms.settings.is_local_domain(domain):
            return None
        return self._ms.accounts.mailbox_for(local, domain)

    def quota(self, address: str) -> tuple[int, int] | None:
        """(used, limit) bytes of the account's quota; None when it has none."""
        return self._ms.aftercare.usage(address)

    def quota_changed(self, address: str, added: int = 0) -> None:
        self._ms.aftercare.changed(address, added)

    def open_maildrop(self, mailbox: Path) -> Maildrop:
        return self._ms.maildrops.open(mailbox)


class _ImapBackend(_Pop3Backend):
    """What an IMAP session asks of the server: the same logins and accounts as POP3,
    and the account's folders."""

    def open_store(self, mailbox: Path) -> MailStore:
        return MailStore(mailbox)


def _password_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="password-check")


def dns_records(settings: Settings, data_dir: Path, domain: str, ips: list[str] | tuple = ()) -> list:
    """The DNS records ``domain`` needs (MX, SPF, DKIM, DMARC, PTR advice), from the settings and
    its DKIM keys; ``ips`` are this server's public sending addresses, if known."""
    from .mailauth.records import records_for

    sh = settings.smarthost
    ips = list(ips) or _public_listen_ips(settings)
    return records_for(domain, server_name=settings.server_name, public_ips=ips,
                       smarthost=sh.host if sh.enabled else None,
                       smarthost_exclusive=sh.enabled and sh.exclusive,
                       spf_include=sh.spf_include or None,
                       dkim=[(k.selector, k.record_value) for k in KeyStore(data_dir).keys(domain)],
                       postmaster=f"postmaster@{domain}")


def check_dns(settings: Settings, records: list) -> list:
    """Look each record up with ISMail's own resolver (dns_servers): one verdict each."""
    from .mailauth.records import check
    from .queue.dns import Resolver, parse_server

    # A person waits for the answer: one try of 2 s per server, not the sender's patience.
    return check(records, Resolver([parse_server(s) for s in settings.dns_servers] or None,
                                   timeout=2.0, attempts=1))


def _public_listen_ips(settings: Settings) -> list[str]:
    """Listening addresses that are public (0.0.0.0 and private ranges tell nothing)."""
    import ipaddress
    out = []
    for entry in settings.listen_entries():
        try:
            ip = ipaddress.ip_address(entry.host)
        except ValueError:
            continue
        if ip.is_global and str(ip) not in out:
            out.append(str(ip))
    return out


def tls_context(settings: Settings, data_dir: Path | None = None) -> ssl.SSLContext | None:
    """The server's TLS context from tls.certificate/tls.key; without them, from a self-signed
    certificate made in ``data_dir`` (tls.self_signed); None when there is neither."""
    cert, key = settings.tls.certificate, settings.tls.key
    if not cert:
        if not settings.tls.self_signed or data_dir is None:
            return None
        try:
            return _self_signed_context(settings.server_name, data_dir)
        except StartupError as e:   # ISMail's own files, damaged: kept aside, made again, once
            selfsigned.set_aside(data_dir, settings.server_name, str(e))
            return _self_signed_context(settings.server_name, data_dir)
    return _context(cert, key)


def _self_signed_context(server_name: str, data_dir: Path) -> ssl.SSLContext:
    try:
        cert_path, key_path = self_signed_files(data_dir, server_name)
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot make a self-signed TLS certificate in {data_dir}: {e}") from e
    return _context(str(cert_path), str(key_path))


def _context(cert: str, key: str) -> ssl.SSLContext:
    for name, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise StartupError(f"cannot use the TLS {name} {path}: no such file")
    # The defaults of create_default_context(CLIENT_AUTH) but its CA store, which only
    # checks client certificates (none is asked for) and on Windows copies in the whole
    # system store at every start.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise StartupError(f"cannot use the TLS certificate {cert} with the key {key}: "
                           f"{getattr(e, 'strerror', None) or e}") from e
    return context


def _bind_problem(host: str, port: int, e: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if e.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
        why = "the port is already in use by another program (another mail server?)"
    elif e.errno in (errno.EACCES, errno.EPERM, getattr(errno, "WSAEACCES", -1)):
        why = ("permission denied (ports below 1024 need administrator/root rights; "
               "choose a port such as 2525 in the settings)")
    elif e.errno in (errno.EADDRNOTAVAIL, getattr(errno, "WSAEADDRNOTAVAIL", -1)):
        why = "this computer has no such address"
    else:
        why = e.strerror or str(e)
    return f"cannot listen on {where}: {why}"


def _resolver(settings: Settings) -> Resolver:
    return Resolver([parse_server(s) for s in settings.dns_servers] or None)


def _folder_of(box: Path, folder: str) -> Path:
    """The Maildir of ``folder`` in the account whose INBOX is ``box``, made if missing."""
    store = MailStore(box)
    path = store.path(folder)
    if not (path / "cur").is_dir():
        if folder in SPECIAL_USE:
            store.ensure_special()
        else:
            try:
                store.create(folder)
            except FolderExists:
                pass
    return store.path(folder)
