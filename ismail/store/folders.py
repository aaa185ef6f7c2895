"""Folders of one account: the storage every mail protocol shares (storage knows no protocol).

The account's Maildir is INBOX; every other folder is a Maildir++ sub-folder,
``.<name>`` directly inside it with a ``maildirfolder`` marker (folders_names has
the spelling).  Each folder keeps persistent UIDs in ``ismail-uidlist``
(uidlist.py, Dovecot's discipline) and flags in its file names, keywords in
``dovecot-keywords`` (folders_flags.py).  ``MailStore.open`` gives a session a live
``Folder`` view (folders_view.py).  The files stay the truth: SMTP delivery writes
into new/, POP3 moves and deletes files, and views notice on ``refresh``.

Decisions worth knowing:
* Names are Unicode with "/" between levels; the session spells them in modified
  UTF-7 on the wire (utf7.py).  INBOX is matched in any case.  Names that differ
  only in case cannot both exist, so the store behaves the same on Windows.
* CREATE makes the missing superior folders too (RFC 3501 §6.3.3 SHOULD).
* DELETE refuses INBOX and a folder that has sub-folders (RFC 3501 §6.3.4 lets a
  server refuse; removing the messages and keeping a \\Noselect name, the other
  choice, would need a kind of folder Maildir++ does not have).  The directory is
  first renamed out of sight in one step, then removed.  Subscriptions are kept
  (RFC 3501 §6.3.9: the server must not remove them by itself).
* RENAME takes the sub-folders along and keeps UIDVALIDITY; subscriptions follow
  the new name.  RENAME of INBOX moves its messages into a new folder and leaves
  INBOX empty, with its sub-folders where they are (RFC 3501 §6.3.5).
* Subscriptions are the file ``subscriptions`` (one name per line, UTF-8),
  replaced atomically under the account's ``ismail-store.lock``.
* ``ensure_special`` makes Sent, Drafts, Trash and Junk (RFC 6154) and
  subscribes those it made, and INBOX the first time.

The parts: folders_names (names <-> directories), folders_flags (flags in file
names, keywords), uidlist (the UID index and its lock), folders_box (one folder on
disk), folders_view (``Folder``), folders_transfer (APPEND, COPY, MOVE),
folders_model (the plain objects and errors).  A session imports this module only.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..fsutil import atomic_write, fsync_dir, make_maildirs, unique_name, write_new_file
from . import folders_names as names
from .folders_box import Box
from .folders_flags import KeywordLimit  # noqa: F401
from .folders_model import (Changes, FolderError, FolderExists, FolderInfo, FolderStatus,  # noqa: F401
                            MessageRef, NoSuchFolder, NoSuchMessage, UidValidityChanged)
from .folders_view import Folder  # noqa: F401
from .uidlist import locked, retry_windows

__all__ = ["MailStore", "Folder", "MessageRef", "Changes", "FolderInfo", "FolderStatus",
           "FolderError", "NoSuchFolder", "FolderExists", "NoSuchMessage", "UidValidityChanged",
           "KeywordLimit", "INBOX", "SEP", "SPECIAL_USE"]

log = logging.getLogger("ismail.folders")

INBOX = names.INBOX
SEP = names.SEP
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}
MARKER = "maildirfolder"
SUBSCRIPTIONS = "subscriptions"
STORE_LOCK = "ismail-store.lock"
_NEW_PREFIX = "ismail-new-"
_DELETED_PREFIX = "ismail-deleted-"


class MailStore:
    """The folders of one account's Maildir. Safe to share between threads; keeps no state."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        make_maildirs(self.root)
        self._remove_leftovers()

    # -- names and paths -------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """The directory of folder ``name`` (which need not exist); ValueError for a bad name."""
        norm = names.normalize(name)
        return self.root / names.dirname(norm) if norm != INBOX else self.root

    def exists(self, name: str) -> bool:
        return (self.path(name) / "cur").is_dir()

    def _folders(self) -> list[str]:
        """Every folder's name, INBOX first; directories that spell no valid name are skipped."""
        found = [INBOX]
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.is_dir():
                    try:
                        found.append(names.from_dirname(entry.name))
                    except ValueError:
                        log.debug("ignoring %s: not a folder name", entry.path)
        return found

    def _box(self, name: str) -> Box:
        norm = names.normalize(name)
        path = self.path(norm)
        if not (path / "cur").is_dir():
            raise NoSuchFolder(f"there is no folder {norm}")
        return Box(self.root, norm, path)

    # -- listing -----------------------------------------------------------------------------------
    def list(self) -> list[FolderInfo]:
        """Every folder, INBOX first, then by name (code point order)."""
        found = self._folders()
        parents = {p for name in found for p in names.parent_names(name)}
        subscribed = set(self.subscriptions())
        infos = [FolderInfo(name, SPECIAL_USE.get(name), name in parents, name in subscribed)
                 for name in found]
        infos.sort(key=lambda info: (info.name != INBOX, info.name))
        return infos

    def ensure_special(self) -> list[str]:
        """Create Sent, Drafts, Trash and Junk where missing; returns the names created.

        A new account's first login makes all four, so they share their syncs: each is
        built and synced under a private name, then all are renamed into place and the
        subscriptions replaced, and one fsync of the account's folder covers every
        rename (6 syncs instead of 14).
        """
        if (self.root / SUBSCRIPTIONS).exists() and all(self.exists(n) for n in SPECIAL_USE):
            return []
        created = []
        with self._locked():
            first_time = not (self.root / SUBSCRIPTIONS).exists()
            found = self._folders()
            try:
                for name in SPECIAL_USE:
                    if self.exists(name):
                        continue
                    try:
                        self._check_free(name, found)  # "sent" exists: the user's spelling wins
                        self._make(name, sync_root=False)
                    except FolderExists:
                        continue
                    created.append(name)
            finally:  # those made before a failure are kept: subscribed and recorded too
                if created or first_time:
                    self._change_subscriptions(add=([INBOX] if first_time else []) + created,
                                               held=True, sync_root=False)
                    fsync_dir(self.root)
        for name in created:
            log.info("created folder %s in %s", name, self.root)
        return created

    def status(self, name: str) -> FolderStatus:
        folder = self.open(name)
        msgs = folder.messages
        return FolderStatus(messages=len(msgs), recent=folder.recent_count(), uidnext=folder.uidnext,
                            uidvalidity=folder.uidvalidity,
                            unseen=sum(1 for m in msgs if "\\Seen" not in m.flags),
                            size=sum(m.size for m in msgs))

    def open(self, name: str) -> Folder:
        """A live view of the folder for one session (see folders_view)."""
        return Folder(self._box(name), self._box)

    # -- create, delete, rename ---------------------------------------------------------------------
    def _locked(self):
        return locked(self.root / STORE_LOCK)

    def _check_free(self, name: str, found: list[str], moving: str | None = None) -> None:
        """FolderExists if ``name`` or a name differing only in case exists (other than ``moving``'s)."""
        folded = name.casefold()
        for other in found:
            if moving is not None and (other == moving or other.startswith(moving + SEP)):
                continue
            if other.casefold() == folded:
                raise FolderExists(f"folder {other} already exists" if other == name else
                                   f"folder {other} exists, and names may not differ only in case")

    def create(self, name: str) -> None:
        """Create a folder and any missing folders above it."""
        norm = names.normalize(name)
        if norm == INBOX:
            raise FolderExists("INBOX always exists")
        with self._locked():
            found = self._folders()
            self._check_free(norm, found)
            for parent in names.parent_names(norm):
                if parent != INBOX and parent not in found:
                    self._check_free(parent, found)
                    self._make(parent)
            self._make(norm)
        log.info("created folder %s in %s", norm, self.root)

    def _make(self, name: str, sync_root: bool = True) -> None:
        """Build the folder under a private name, then rename it into place in one step.

        Without ``sync_root`` the caller syncs the account's folder (once for several).
        The empty ``maildirfolder`` marker is for other Maildir programs and, like tmp/,
        new/ and cur/, needs no sync of its own: the sync of its folder records it.
        """
        work = self.root / (_NEW_PREFIX + unique_name())
        work.mkdir()
        try:
            for sub in ("tmp", "new", "cur"):
                (work / sub).mkdir()
            write_new_file(work / MARKER, (), sync=False)
            fsync_dir(work)
            os.rename(work, self.root / names.dirname(name))
        except OSError as e:
            shutil.rmtree(work, ignore_errors=True)
            if (self.root / names.dirname(name)).exists():
                raise FolderExists(f"folder {name} already exists") from None
            raise FolderError(f"could not create folder {name}: {e.strerror or e}") from None
        if sync_root:
            fsync_dir(self.root)

    def delete(self, name: str) -> None:
        """Delete an empty-of-children folder and its messages. INBOX cannot be deleted."""
        norm = names.normalize(name)
        if norm == INBOX:
            raise FolderError("INBOX cannot be deleted")
        with self._locked():
            found = self._folders()
            if norm not in found:
                raise NoSuchFolder(f"there is no folder {norm}")
            if any(other.startswith(norm + SEP) for other in found):
                raise FolderError(f"folder {norm} has sub-folders: delete them first")
            grave = self.root / (_DELETED_PREFIX + unique_name())
            try:
                os.rename(self.path(norm), grave)
            except PermissionError:
                raise FolderError(f"folder {norm} is in use, try again") from None
            fsync_dir(self.root)
        shutil.rmtree(grave, ignore_errors=True)
        log.info("deleted folder %s in %s", norm, self.root)

    def rename(self, old: str, new: str) -> None:
        """Rename a folder with its sub-folders; INBOX's messages move instead (RFC 3501 §6.3.5)."""
        src, dst = names.normalize(old), names.normalize(new)
        if dst == INBOX or dst == src:
            raise FolderExists(f"folder {dst} already exists")
        if src != INBOX and dst.casefold().startswith(src.casefold() + SEP):
            raise FolderError(f"cannot rename {src} into itself")
        with self._locked():
            found = self._folders()
            if src not in found:
                raise NoSuchFolder(f"there is no folder {src}")
            moving = None if src == INBOX else src
            if src == INBOX:
                targets = [(None, dst)]
            else:
                targets = [(n, dst + n[len(src):]) for n in found if n == src or n.startswith(src + SEP)]
            for _, target in targets:
                self._check_free(target, found, moving)
            renamed = {n for n, _ in targets}
            for parent in names.parent_names(dst):
                if parent != INBOX and parent not in found and parent not in renamed:
                    self._check_free(parent, found, moving)
                    self._make(parent)
            if src == INBOX:
                self._make(dst)
            else:
                for n, target in sorted(targets):  # parents first
                    try:
                        os.rename(self.path(n), self.path(target))
                    except PermissionError:
                        raise FolderError(f"folder {n} is in use, try again") from None
                fsync_dir(self.root)
                subs = self.subscriptions()
                moved = {n: t for n, t in targets if n in subs}
                if moved:
                    self._change_subscriptions(add=list(moved.values()), remove=list(moved), held=True)
        if src == INBOX:
            inbox = self.open(INBOX)
            inbox.move([m.uid for m in inbox.messages], dst)
        log.info("renamed folder %s to %s in %s", src, dst, self.root)

    # -- subscriptions --------------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        try:
            text = (self.root / SUBSCRIPTIONS).read_text("utf-8", "replace")
        except FileNotFoundError:
            return []
        return [line for line in text.split("\n") if line]

    def subscribe(self, name: str) -> None:
        """Subscribe to a name (which need not exist, RFC 3501 §6.3.6)."""
        self._change_subscriptions(add=[names.normalize(name)])

    def unsubscribe(self, name: str) -> None:
        self._change_subscriptions(remove=[names.normalize(name)])

    def _change_subscriptions(self, add=(), remove=(), held: bool = False,
                              sync_root: bool = True) -> None:
        """Without ``sync_root`` the caller syncs the account's folder after the rename."""
        if not held:
            with self._locked():
                return self._change_subscriptions(add, remove, held=True, sync_root=sync_root)
        current = self.subscriptions()
        wanted = [n for n in current if n not in set(remove)]
        wanted += [n for n in add if n not in wanted]
        if wanted != current or not (self.root / SUBSCRIPTIONS).exists():
            data = "".join(n + "\n" for n in wanted).encode("utf-8")
            retry_windows(lambda: atomic_write(self.root / SUBSCRIPTIONS, data, sync_dir=sync_root))

    # -- housekeeping ----------------------------------------------------------------------------------
    def _remove_leftovers(self) -> None:
        """Folders half made or half deleted when the server stopped: neither is visible.

        Under the store lock, which ``_make`` holds while it builds one.
        """
        with self._locked():
            with os.scandir(self.root) as entries:
                stale = [e.path for e in entries
                         if e.name.startswith((_NEW_PREFIX, _DELETED_PREFIX)) and e.is_dir()]
            for path in stale:
                shutil.rmtree(path, ignore_errors=True)
