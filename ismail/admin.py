"""Admin: what the window and the command line do to ISMail's data, in one place.

The outgoing queue (list, count, flush, delete) and the local accounts (list, add,
remove, passwd, forward, and a look at their folders) are reached through here, so
neither the window nor the command line knows where a file lives or which stage owns it.

Two ways of working, chosen on every call:

* a server runs in this process (the window after Start): its account store and queue
  manager are used, so a change counts at once (a new account receives mail, a deleted
  message is not tried again, a flush retries now);
* no server here (the command line, the window while stopped): the files.  A server in
  another process picks the changes up by itself: it reloads ``accounts.json`` when the
  file changes and looks for the flush file every second.

Listing the queue always reads the files: they are the truth for both ways (a server
writes an entry's state after every attempt), and only a directory scan stays quick with
100,000 messages waiting.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, NamedTuple

from .queue.spool import FLUSH_FILE, QueueEntry, Spool
from .store.accounts import AccountError, AccountInfo, AccountStore
from .store.addressbook import AddressBook
from .store.folders import INBOX, FolderError, MailStore
from .store.folders_box import Box, size_from_key
from .store.uidlist import CorruptIndex, UidList

if TYPE_CHECKING:
    from .service import MailServer

__all__ = ["Admin", "AccountError", "AccountInfo", "AccountStore", "FolderSummary", "QueueEntry"]

log = logging.getLogger("ismail.admin")


class FolderSummary(NamedTuple):
    """One folder of an account as Settings > Accounts shows it."""

    name: str      # "INBOX", "Sent", "Archive/2024": Unicode, "/" between levels
    messages: int
    size: int      # bytes with CRLF line ends, as mail programs count them (FolderStatus.size)


class Admin:
    """The queue and the accounts of the data folder ``data_dir``.

    ``server`` may be set (or replaced) at any time; it is used only while it runs.
    """

    def __init__(self, data_dir: Path, server: "MailServer | None" = None) -> None:
        self.data_dir = Path(data_dir)
        self.server = server
        self._spool = Spool(self.data_dir / "queue")
        self._store: AccountStore | None = None
        self._book: AddressBook | None = None

    def _running(self) -> "MailServer | None":
        server = self.server
        if server is None or server.qmgr is None or server.stopping:
            return None
        return server

    # -- the queue ------------------------------------------------------------------------------
    @property
    def queue_dir(self) -> Path:
        return self._spool.dir

    def queue_ids(self) -> list[str]:
        """Ids of the queued messages, oldest first: one directory scan, no entry read."""
        server = self._running()
        if server is not None:
            # Messages queued in the last second may have no file yet (queue/journal.py).
            server.spool.write_out()
        return self._spool.list_ids()

    def queue_entry(self, queue_id: str) -> QueueEntry:
        """One entry; OSError when it is gone, ValueError when it is unreadable (then it is
        set aside in the queue's corrupt/ folder, for a person to look at)."""
        server = self._running()
        if server is not None:
            server.spool.write_out(queue_id)  # queued in the last second: no file yet
        return self._spool.load(queue_id)

    def queue_list(self) -> tuple[list[QueueEntry], list[str]]:
        """Every queued message, oldest first, and a sentence for each that could not be read."""
        entries: list[QueueEntry] = []
        problems: list[str] = []
        for qid in self.queue_ids():
            try:
                entries.append(self.queue_entry(qid))
            except (ValueError, OSError) as e:
                problems.append(str(e))
        return entries, problems

    def queue_count(self) -> int:
        """How many messages wait: the server's own count, else the entries on disk."""
        server = self._running()
        if server is not None:
            return server.stats.get("queue_length")
        try:
            return self._spool.count()
        except OSError:
            return 0

    def queue_flush(self, entries: Iterable[QueueEntry] = ()) -> None:
        """Retry every queued message now.

        With a server here, at once.  Otherwise the flush file asks a server in another
        process (within a second) or the next start; ``entries`` are also marked due in
        their files, so ``queue list`` says "now" before any server has run.  The window
        passes none: rewriting 100,000 files is not for the Tk thread.
        """
        server = self._running()
        if server is not None:
            server.qmgr.flush()
            return
        for entry in entries:
            entry.next_try = 0.0
            self._spool.save(entry)
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        (self.queue_dir / FLUSH_FILE).touch()
        log.info("queue flush requested: every queued message will be retried now")

    def queue_delete(self, queue_id: str) -> bool:
        """Delete a queued message (it is not sent, its sender not told); False if it was not there."""
        queue_id = queue_id.upper()  # ids are upper-case hex; people type either
        server = self._running()
        spool = server.spool if server is not None else self._spool  # knows files not written yet
        existed = spool.exists(queue_id) or (spool.messages / f"{queue_id}.json").exists()
        if server is not None:
            server.qmgr.delete(queue_id)
        else:
            self._spool.remove(queue_id)
        if existed:
            log.info("%s: deleted from the queue by the user", queue_id)
        return existed

    # -- the accounts ---------------------------------------------------------------------------
    @property
    def account_store(self) -> AccountStore:
        """The store in use: the running server's, else one of our own on the same file."""
        server = self._running()
        if server is not None:
            return server.accounts
        if self._store is None:
            self._store = AccountStore(self.data_dir)
        return self._store

    def check_accounts(self) -> None:
        """AccountError when the accounts file cannot be read (before asking for a password).

        Without a server the file is read now; a running server keeps the accounts it has
        until a broken file is fixed, and every change re-reads the file anyway.
        """
        store = self.account_store
        if store is self._store:
            store.load()

    def account_list(self, domains: Iterable[str]) -> list[AccountInfo]:
        """Every account, postmaster and root of each of ``domains`` included, by domain then user."""
        self.check_accounts()
        return self.account_store.list(domains)

    def account_add(self, address: str, password: str, domains: Iterable[str]) -> AccountInfo:
        book = self.address_book.snapshot()
        addr = address.strip().lower()
        for kind in ("aliases", "groups"):
            if addr in book[kind]:
                raise AccountError(f"{addr} is already {'an alias' if kind == 'aliases' else 'a group'}; "
                                   "remove it first, or choose another address.")
        if addr.rpartition("@")[2] in book["domain_aliases"]:
            raise AccountError(f"{addr.rpartition('@')[2]} is a domain alias of "
                               f"{book['domain_aliases'][addr.rpartition('@')[2]]}; add the account "
                               "there instead.")
        return self.account_store.add(address, password, domains)

    def account_remove(self, address: str) -> list[str]:
        """The account goes; its mailbox folder and the mail in it stay.  Returns the aliases,
        groups and catch-alls that name it (they skip it from now on), for a warning."""
        self.account_store.remove(address)
        addr = address.strip().lower()
        book = self.address_book.snapshot()
        users = [f"alias {a}" for a, t in book["aliases"].items() if addr in (x.lower() for x in t)]
        users += [f"group {g}" for g, v in book["groups"].items()
                  if addr in (x.lower() for x in v["members"])]
        users += [f"catch-all of {d}" for d, t in book["catch_all"].items() if t.lower() == addr]
        return users

    # -- aliases, groups, catch-all, domain aliases ------------------------------------------------
    @property
    def address_book(self) -> AddressBook:
        """The running server's address book, else one of our own on the same file."""
        server = self._running()
        if server is not None:
            return server.addresses
        if self._book is None:
            self._book = AddressBook(self.data_dir)
            self._book.load()
        return self._book

    @property
    def route_table(self):  # -> store.routes.Routes, imported below: admin only adds this property
        """The running server's routes and relay domains, else a table of our own on the same file."""
        server = self._running()
        if server is not None:
            return server.routes
        if getattr(self, "_routes", None) is None:
            from .store.routes import Routes
            self._routes = Routes(self.data_dir)
            self._routes.load()
        return self._routes

    @property
    def autoreplies(self):  # -> store.autoreply.AutoReplies, imported below, as route_table's
        """The running server's auto-replies (if it keeps them), else our own on the same file."""
        server = self._running()
        if server is not None and getattr(server, "autoreplies", None) is not None:
            return server.autoreplies
        if getattr(self, "_autoreplies", None) is None:
            from .store.autoreply import AutoReplies
            self._autoreplies = AutoReplies(self.data_dir)
            self._autoreplies.load()
        return self._autoreplies

    def account_addresses(self, domains: Iterable[str]) -> set[str]:
        return {info.address for info in self.account_list(domains)}

    def account_passwd(self, address: str, password: str) -> None:
        self.account_store.set_password(address, password)

    def account_forward(self, address: str, targets: Iterable[str]) -> None:
        """Copies of the account's mail go to ``targets`` too; none: no forwarding."""
        self.account_store.set_forward(address, targets)

    def account_folders(self, address: str) -> list[FolderSummary]:
        """The account's folders, INBOX first, with how many messages each holds and their size.

        A look, not a visit: nothing in any folder changes.  ``MailStore.status`` is not used
        because it opens the folder as a session does: it hands out UIDs (writing the folder's
        UID index, and a new UIDVALIDITY for a folder no mail program has opened yet) and
        clears tmp/.  Here a folder costs two directory listings, and its UID index is read
        only for sizes the file names do not carry: about 30 ms for 10,000 messages.
        An account whose mailbox was never made shows an empty INBOX; none is created.
        """
        local, _, domain = address.strip().lower().rpartition("@")
        mailbox = self.account_store.mailbox_for(local, domain) if local else None
        if mailbox is None:
            raise AccountError(f"There is no account {address}.")
        if not (mailbox / "cur").is_dir():
            return [FolderSummary(INBOX, 0, 0)]
        try:
            # Makes no folder (its lock file at most); clears half-made ones a crash left.
            store = MailStore(mailbox)
            found = [info.name for info in store.list()]
        except (OSError, FolderError) as e:
            raise AccountError(f"The folders of {address} cannot be read: {e}") from e
        summaries = []
        for name in found:
            try:
                messages, size = _look(Box(mailbox, name, store.path(name)))
            except FolderError:  # deleted or renamed while we looked
                continue
            summaries.append(FolderSummary(name, messages, size))
        return summaries


def _look(box: Box) -> tuple[int, int]:
    """Messages and CRLF size of one folder, read-only.

    The size comes from the file name's ",W=" (ISMail and Dovecot write it), else from the
    UID index (which records it once a session has measured the file), else the file's
    size on disk: a message no session has opened yet and whose name has no size, counted
    without reading it (a little under its CRLF size).
    """
    listing = box.scan()
    size = 0
    sizes: dict[str, int] | None = None
    for key, (sub, filename, _) in listing.items():
        known = size_from_key(key)
        if known is None:
            if sizes is None:
                sizes = _indexed_sizes(box.uidlist)
            known = sizes.get(key)
        if known is None:
            try:
                known = os.stat(sub / filename).st_size
            except OSError:  # moved or expunged since the listing
                known = 0
        size += known
    return len(listing), size


def _indexed_sizes(uidlist: UidList) -> dict[str, int]:
    """The sizes the index records; read without the lock: the file is only ever replaced whole."""
    try:
        index = uidlist.read()
    except (OSError, CorruptIndex):
        return {}
    return index.sizes if index is not None else {}
