"""How much of its quota an account's Maildir uses, cheaply, and the 90 % warning.

Model
-----
* An account's usage is the size of every message in its whole tree: INBOX (the
  Maildir root's ``cur/`` and ``new/``) and every Maildir++ folder (``.Name/cur``,
  ``.Name/new``).  ``tmp/`` is not counted (deliveries on their way), nor are the
  index, keyword and subscription files.  The size of a message is the ``,S=<size>``
  its name carries (maildir.py and the folder store write it; Dovecot does too), so
  a scan is one ``os.scandir`` per directory; a name without it costs one stat.
  That is the size on disk (LF line ends), which is what fills a disk; the
  SMTP SIZE a sender declares is a little larger (CRLF), so checks err on the safe side.
* ``QuotaTracker`` keeps each Maildir's usage in memory for ``max_age`` seconds
  (Dovecot's maildirsize file does the same job on disk).  A delivery reports what it
  added (``added``) so the figure stays right without a rescan; POP3 and IMAP report
  that something went away (``changed``), which forgets the figure.  A scan runs
  outside the tracker's lock, one per Maildir at a time; if the Maildir changed while
  it ran, its result is used once and not kept.
* The 90 % warning goes out once: ``crossed_warning`` leaves a marker file,
  ``ismail-quota-warned``, in the Maildir root, so a restart does not warn again.  The
  marker goes (and the warning is re-armed) once usage is seen below 85 %, so an
  account hovering around 90 % gets one warning, not one per message.
  ``warning_message`` writes the mail itself; sending it is the caller's business.
* Quotas themselves (bytes per account) live in accounts.py; storage knows no protocol,
  so the 452/552 of SMTP and the IMAP and POP3 replies are the sessions' business.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path
from typing import Callable

log = logging.getLogger("ismail.quota")

MAX_AGE = 30.0              # seconds a measured usage is trusted without a rescan
WARN_PERCENT = 90           # the warning mail goes out at this usage
REARM_PERCENT = 85          # and may go out again once usage was seen below this
MARKER = "ismail-quota-warned"
MB = 1024 * 1024
_SIZE = re.compile(r",S=(\d+)")


def size_in_name(name: str) -> int | None:
    """The ``,S=<size>`` a Maildir file name carries (bytes on disk), or None."""
    m = _SIZE.search(name)
    return int(m.group(1)) if m else None


def scan(mailbox: Path) -> int:
    """Bytes used by every message in the Maildir ``mailbox`` and its folders (0 if missing)."""
    dirs = [os.path.join(mailbox, "cur"), os.path.join(mailbox, "new")]
    try:
        with os.scandir(mailbox) as entries:
            for entry in entries:
                # Folders are ".Name" directories; a link could point into another account.
                if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                    dirs += [os.path.join(entry.path, "cur"), os.path.join(entry.path, "new")]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return sum(_scan_dir(d) for d in dirs)


def _scan_dir(path: str) -> int:
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                size = size_in_name(entry.name)
                if size is not None:
                    total += size
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:   # expunged while we looked
                    pass
    except (FileNotFoundError, NotADirectoryError):   # a folder deleted while we looked
        pass
    return total


def describe(used: int, limit: int) -> str:
    """``"45 MB of 100 MB used (45 %)"``: what the user is told (POP3 login, warning mail)."""
    return f"{_mb(used)} of {_mb(limit)} used ({percent(used, limit)} %)"


def percent(used: int, limit: int) -> int:
    """Whole percent, rounded down: 89.9 % is not yet 90 %."""
    return used * 100 // limit if limit > 0 else 100


def _mb(n: int) -> str:
    if n >= 10 * MB or n % MB == 0:
        return f"{round(n / MB)} MB"
    return f"{n / MB:.1f} MB"


@dataclass
class _Box:
    used: int = 0
    scanned_at: float = -math.inf   # when ``used`` was measured; -inf: never, or forgotten
    changes: int = 0                # added/changed calls: tells a scan it raced one
    warned: bool | None = None      # the marker file, once looked at
    scan_lock: threading.Lock = field(default_factory=threading.Lock)
    warn_lock: threading.Lock = field(default_factory=threading.Lock)


class QuotaTracker:
    """Usage per Maildir, cached; shared by the delivery, POP3 and IMAP threads."""

    def __init__(self, max_age: float = MAX_AGE, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()       # guards _boxes and every _Box's figures
        self._boxes: dict[Path, _Box] = {}

    def _box(self, mailbox: Path) -> tuple[Path, _Box]:
        key = Path(os.path.abspath(mailbox))
        with self._lock:
            box = self._boxes.get(key)
            if box is None:
                box = self._boxes[key] = _Box()
            return key, box

    def _fresh(self, box: _Box) -> bool:
        return self._clock() - box.scanned_at < self.max_age

    def usage(self, mailbox: Path) -> int:
        """Bytes the account's messages use, all folders; rescanned when older than max_age."""
        key, box = self._box(mailbox)
        with self._lock:
            if self._fresh(box):
                return box.used
        with box.scan_lock:   # one scan per Maildir; whoever waited finds it fresh
            with self._lock:
                if self._fresh(box):
                    return box.used
                changes = box.changes
            used = scan(key)
            now = self._clock()
            with self._lock:
                if box.changes == changes:
                    box.used, box.scanned_at = used, now
                else:   # a delivery or an expunge raced the scan: right enough now, not to keep
                    box.used, box.scanned_at = used, -math.inf
        return used

    def added(self, mailbox: Path, nbytes: int) -> None:
        """A message of ``nbytes`` was stored (delivery, APPEND, COPY): no rescan needed."""
        _, box = self._box(mailbox)
        with self._lock:
            box.used += max(0, nbytes)
            box.changes += 1

    def changed(self, mailbox: Path) -> None:
        """Something was removed (POP3 QUIT, IMAP EXPUNGE): measure again next time."""
        _, box = self._box(mailbox)
        with self._lock:
            box.scanned_at = -math.inf
            box.changes += 1

    def check(self, mailbox: Path, limit_bytes: int, incoming_bytes: int) -> bool:
        """Whether ``incoming_bytes`` more still fit under ``limit_bytes``."""
        return self.usage(mailbox) + incoming_bytes <= limit_bytes

    def crossed_warning(self, mailbox: Path, limit_bytes: int, before: int, after: int) -> bool:
        """True once when usage reaches 90 % of the limit (``after``), and again only after
        usage was seen below 85 % (``before`` or ``after``).  Also true, once, for an account
        already over 90 % that was never warned (its quota was just set or lowered).
        Remembered in a marker file in the Maildir, so a restart does not warn again."""
        if limit_bytes <= 0:
            return False
        key, box = self._box(mailbox)
        marker = key / MARKER
        with box.warn_lock:
            if box.warned is None:
                box.warned = marker.exists()
            if box.warned and min(before, after) * 100 < limit_bytes * REARM_PERCENT:
                try:
                    marker.unlink(missing_ok=True)
                except OSError as e:
                    log.warning("cannot remove %s: %s", marker, e)
                box.warned = False
            if box.warned or after * 100 < limit_bytes * WARN_PERCENT:
                return False
            box.warned = True
            try:
                marker.write_text(f"warned at {describe(after, limit_bytes)}, "
                                  f"{formatdate(localtime=True)}\n", encoding="utf-8")
            except OSError as e:   # warn anyway: twice after a restart beats never
                log.warning("cannot write %s: %s", marker, e)
            return True


def warning_message(account: str, used: int, limit: int, server_name: str) -> bytes:
    """The "your mailbox is 90 % full" mail to ``account``: a whole RFC 5322 message, CRLF."""
    from email.policy import SMTP  # here: email.policy (~0.6 MB) loads with the first report
    domain = account.rpartition("@")[2] or server_name
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr(("Mail Delivery System", f"postmaster@{domain}"))
    msg["To"] = account
    msg["Subject"] = f"Your mailbox is {WARN_PERCENT} % full"
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid("quota", domain=server_name)
    msg["Auto-Submitted"] = "auto-generated"   # RFC 3834: no auto-replies to this
    msg.set_content(
        f"Your mailbox {account} on {server_name} is almost full:\n"
        f"{describe(used, limit)}.\n"
        "\n"
        "When it is full, new mail to you is refused and goes back to its senders.\n"
        "\n"
        "To make room, delete messages you no longer need, or move old mail out of the\n"
        "mailbox, for example into a folder on your computer (\"local folders\" in your\n"
        "mail program).  Remember to empty the Trash and Junk folders: mail there counts\n"
        "too.  Large attachments take the most room.\n"
        "\n"
        "This message was sent automatically; there is no need to reply.\n",
        charset="utf-8")
    return msg.as_bytes()
