"""Auto-replies ("vacation" messages) per account, answered by the rules of RFC 3834.

Model
-----
``DATA/autoreply.json`` holds the settings (edited by the command line and the GUI, maybe
in another process than the server)::

    {"version": 1,
     "replies": {"ann@example.com": {"subject": "Out of office", "body": "Back on Monday.",
                                     "start": "2024-07-01", "end": "2024-07-14",
                                     "days": 7, "enabled": true}}}

``DATA/autoreply-sent.json`` is the server's memory of who was answered when::

    {"version": 1, "sent": {"ann@example.com": {"bob@remote.org": 1719830400}}}

* ``reply_for`` is asked after a message is stored for an account.  It answers None unless
  every rule allows a reply (see ``autoreply_rules``): the reply is on today (local date,
  ``start``..``end`` inclusive); the envelope sender is a person (not <>, not a bounce, list
  or no-reply address, not the account itself); the message is not automatic
  (Auto-Submitted other than "no", an older responder's X-Autoreply), not list mail
  (List-*, Precedence bulk/list/junk) and does not ask Microsoft's responders to keep quiet
  (X-Auto-Response-Suppress OOF or All); one of the account's addresses is in To or Cc
  (RFC 3834 section 2: a Bcc or a list copy is not a personal message); and this sender was
  not answered by this account in the last ``days`` days.
* The decision and the record of it happen under one thread lock and the state file's lock,
  and the record is saved before the reply is returned: two deliveries at once, or a crash
  and restart, never answer a sender twice.  A record that cannot be saved means no reply.
* The state is pruned on every save: entries older than the account's ``days`` (365 for an
  account without an auto-reply) and, past ``MAX_SENDERS`` per account, the oldest.
  Changing an auto-reply (anything but ``days``) forgets its senders: the new text reaches
  everyone once.
* Editing re-reads the settings under ``autoreply.json.lock`` (another process may have
  changed them), checks the entry and saves atomically.  The state file has its own lock
  ``autoreply-sent.json.lock`` because the command line forgets senders too.
* A corrupt file is never overwritten: it is renamed ``<name>.corrupt-<stamp>``, logged,
  and work goes on without it (no auto-replies, or an empty memory); ``load_problem`` says
  why for the GUI.
"""
from __future__ import annotations

import datetime
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .jsonfile import JsonFile, Published
from .autoreply_rules import (FORMAT_VERSION, MAX_BODY, MAX_DAYS, MAX_SUBJECT, MIN_DAYS, AutoReply,
                              AutoReplyError, Original, clean, clean_account, compose,
                              one_line, own_set, parse_sent, parse_settings, sender_refusal, sent_json,
                              settings_json)

__all__ = ["AutoReplies", "AutoReply", "AutoReplyError", "FORMAT_VERSION", "MAX_BODY",
           "MAX_DAYS", "MAX_SUBJECT", "MIN_DAYS", "MAX_SENDERS"]

log = logging.getLogger("ismail.autoreply")

FILE_NAME = "autoreply.json"
SENT_NAME = "autoreply-sent.json"
MAX_SENDERS = 10_000  # per account: a flood of forged senders must not grow the file for ever
_DAY = 86400.0


class _SetAside(AutoReplyError):
    pass


class AutoReplies(Published[dict]):
    """autoreply.json in memory (a published dict, never mutated) and the sent-state."""

    keeping = "Keeping the auto-replies loaded before."

    def __init__(self, data_dir: Path, *, reload_interval: float = 1.0) -> None:
        data_dir = Path(data_dir)
        files = dict(empty=dict, error=AutoReplyError, set_aside=_SetAside, logger=log)
        super().__init__(JsonFile(
            data_dir / FILE_NAME, what="the auto-replies", parse=parse_settings,
            empty_text="there are no auto-replies", **files), reload_interval)
        self._sent_file: JsonFile[dict] = JsonFile(
            data_dir / SENT_NAME, what="the auto-reply records", parse=parse_sent,
            empty_text="every sender may get an auto-reply again", **files)
        self.sent_path = self._sent_file.path
        self._sent: dict[str, dict[str, float]] = {}
        self._sent_mutex = threading.Lock()   # decide + record, so a sender is answered once

    @property
    def load_problem(self) -> str:
        """Why a file was set aside (the latest), for the GUI; "" when all is well."""
        return self._file.problem or self._sent_file.problem

    def describe(self, replies: dict) -> str:
        return f"{len(replies)} auto-replies"

    def load(self) -> None:
        """Read both files (missing = empty; corrupt = set aside, logged, empty)."""
        super().load()
        with self._sent_mutex:
            self._sent = self._sent_file.refresh(locked=False, strict=False)

    def _edit(self, change: Callable[[dict[str, AutoReply]], None]) -> None:
        with self._mutex, self._file.locked():
            new = dict(self._refresh(locked=True, strict=True))  # another process may have edited
            change(new)
            self._file.save(settings_json(new))
            self._publish(new)

    # ----- editing -----
    def set(self, reply: AutoReply) -> None:
        """Add or replace the auto-reply of ``reply.account`` (AutoReplyError names the field).
        The subject is stored on one line; a changed reply starts afresh for every sender."""
        new = clean(reply)
        old: list[AutoReply | None] = []

        def change(replies: dict[str, AutoReply]) -> None:
            old.append(replies.get(new.account))
            replies[new.account] = new
        self._edit(change)
        if old[0] is None or replace(old[0], days=new.days) != new:
            self.forget_sender_state(new.account)
        log.info("Auto-reply of %s: %r, %s to %s, once per %d days%s", new.account, new.subject,
                 new.start or "any day", new.end or "open end", new.days,
                 "" if new.enabled else " (off)")

    def remove(self, account: str) -> None:
        addr = clean_account(account)

        def change(replies: dict[str, AutoReply]) -> None:
            if replies.pop(addr, None) is None:
                raise AutoReplyError(f"account: {addr} has no auto-reply.")
        self._edit(change)
        self.forget_sender_state(addr)
        log.info("Removed the auto-reply of %s", addr)

    # ----- reading -----
    def get(self, account: str) -> AutoReply | None:
        self.maybe_reload()
        return self._value.get(account.strip().lower())

    def all(self) -> list[AutoReply]:
        self.maybe_reload()
        return [r for _, r in sorted(self._value.items())]

    # ----- the sent-state -----
    @contextmanager
    def _sent_state(self, now: float) -> Iterator[dict[str, dict[str, float]]]:
        """The current state (re-read if another process changed it) under both locks; the
        caller changes it in place and it is saved, pruned, when the block ends normally."""
        with self._sent_mutex, self._sent_file.locked():
            if self._sent_file.changed():
                self._sent = self._sent_file.refresh(locked=True, strict=False)
            state = {a: dict(s) for a, s in self._sent.items()}
            before = sent_json(state)
            yield state
            self._prune(state, now)
            data = sent_json(state)
            if data != before:
                self._sent_file.save(data)
            self._sent = state

    def _prune(self, state: dict[str, dict[str, float]], now: float) -> None:
        for account in list(state):
            reply = self._value.get(account)
            keep = min(reply.days if reply else MAX_DAYS, MAX_DAYS) * _DAY
            fresh = {s: t for s, t in state[account].items() if now - keep < t <= now + _DAY}
            if len(fresh) > MAX_SENDERS:
                fresh = dict(sorted(fresh.items(), key=lambda st: st[1])[-MAX_SENDERS:])
            if fresh:
                state[account] = fresh
            else:
                del state[account]

    def forget_sender_state(self, account: str) -> None:
        """Forget whom ``account`` answered: every sender may get the next reply."""
        addr = account.strip().lower()
        with self._sent_state(time.time()) as state:
            if state.pop(addr, None):
                log.info("Forgot whom the auto-reply of %s answered", addr)

    def reply_for(self, account: str, *, recipient: str, sender: str, header: bytes,
                  own_addresses: Iterable[str], now: float | None = None) -> bytes | None:
        """The reply to send to ``sender`` for a message just stored for ``account``, or None.

        ``recipient`` is the address the message was sent to (maybe an alias of the account);
        ``header`` its raw header block; ``own_addresses`` the account's addresses.  When
        bytes are returned the reply is already recorded: the caller only sends it, and must
        send it from the null envelope sender ``MAIL FROM:<>`` (RFC 3834 section 3.3), so a
        bounce of the reply can never start a loop.  Never raises for a bad message or a
        file problem: that is logged and means no reply.
        """
        self.maybe_reload()
        addr = account.strip().lower()
        reply = self._value.get(addr)
        if reply is None:
            return None
        now = time.time() if now is None else now
        if not reply.active_on(datetime.date.fromtimestamp(now)):
            return None
        own = own_set(addr, recipient, own_addresses)
        shown = one_line(sender)  # for the log: a forged sender must not forge log lines
        try:
            original = Original(header)
            why = sender_refusal(sender, own) or original.refusal(own)
            message = None if why else compose(reply, sender, original, now)
        except Exception:  # a message no rule foresaw must not break the delivery
            log.exception("Auto-reply of %s to <%s>: the message could not be read", addr, shown)
            return None
        if message is None:
            log.info("No auto-reply from %s to <%s>: %s", addr, shown, one_line(why))
            return None
        key = sender.strip().lower()
        try:
            with self._sent_state(now) as state:
                last = state.get(addr, {}).get(key)
                if last is not None and now - reply.days * _DAY < last <= now + _DAY:
                    log.info("No auto-reply from %s to <%s>: answered %s", addr, shown,
                             time.strftime("%Y-%m-%d %H:%M", time.localtime(last)))
                    return None
                state.setdefault(addr, {})[key] = int(now)  # seconds are enough
        except AutoReplyError as e:
            log.error("No auto-reply from %s to <%s>: %s", addr, shown, e)
            return None
        return message
