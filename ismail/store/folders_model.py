"""The plain objects and errors of the folder store, as a session sees them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .folders_flags import KeywordLimit  # noqa: F401  (re-exported: one place to import errors from)


class FolderError(Exception):
    """A folder operation that cannot be done; the message says why."""


class NoSuchFolder(FolderError, LookupError):
    """The folder does not exist (or was deleted or renamed under an open view)."""


class FolderExists(FolderError):
    """CREATE or RENAME onto a name that exists (also when it differs only in case)."""


class NoSuchMessage(FolderError, LookupError):
    """The UID is not in this view, or its file has been expunged by someone else."""


class UidValidityChanged(FolderError):
    """The folder's index was lost or rebuilt: every UID this view knows is void."""


class MessageRef(NamedTuple):
    """One message as a view last saw it. ``path`` is where its file was then."""

    uid: int
    key: str               # the Maildir unique name (file name up to ":2," / "!2,")
    flags: frozenset[str]  # \\Seen \\Answered \\Flagged \\Deleted \\Draft and keywords
    size: int              # with CRLF line ends: what read() returns
    internaldate: float    # seconds since the epoch
    subdir: Path           # the folder's new/ or cur/
    filename: str

    @property
    def path(self) -> Path:
        return self.subdir / self.filename


@dataclass
class Changes:
    """What ``Folder.refresh`` found since the view's last look, each list in UID order."""

    expunged: list[int] = field(default_factory=list)
    added: list[MessageRef] = field(default_factory=list)
    flags_changed: list[MessageRef] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.expunged or self.added or self.flags_changed)


@dataclass(frozen=True)
class FolderInfo:
    name: str            # Unicode, "/" between levels; the session spells it in modified UTF-7
    special: str | None  # RFC 6154 use: "\\Sent", "\\Drafts", "\\Trash", "\\Junk"
    has_children: bool
    subscribed: bool


@dataclass(frozen=True)
class FolderStatus:
    messages: int
    recent: int
    uidnext: int
    uidvalidity: int
    unseen: int
    size: int  # sum of the messages' CRLF sizes (RFC 8438 STATUS=SIZE)
