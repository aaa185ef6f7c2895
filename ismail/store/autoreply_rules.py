"""Auto-replies as data and as mail: the setting, its checks, the files' layouts, the RFC 3834
rules that decide whether a message may be answered, and the answer itself.

``autoreply`` holds the files, the locking and the once-per-sender memory; everything here
is pure (no files, no clock of its own), so the rules can be tested one by one.

Every check raises ``AutoReplyError`` whose text names the account, the field and what is
allowed; the same checks run on a file read from disk, where a failure makes the file
unusable (``Corrupt``).
"""
from __future__ import annotations

import datetime
import json
import quopri
import re
from dataclasses import dataclass, replace
from email.header import Header, decode_header, make_header
from email.parser import BytesHeaderParser
from email.utils import formatdate, getaddresses, make_msgid
from typing import Any, Iterable

from .addressbook_rules import address_problem
from .jsonfile import Corrupt, document

FORMAT_VERSION = 1
MAX_SUBJECT = 200           # characters
MAX_BODY = 64 * 1024        # bytes of UTF-8
MIN_DAYS, MAX_DAYS = 1, 365
MAX_REFERENCES = 20         # message ids carried in References (the first and the latest)
_ENTRY_KEYS = ("subject", "body", "start", "end", "days", "enabled")

# Local parts that belong to programs, not people (bounces, list robots, "do not reply").
_ROBOT_NAMES = ("mailer-daemon", "listserv", "majordomo")
_ROBOT_PREFIXES = ("owner-",)
_ROBOT_SUFFIXES = ("-request", "-bounce", "-bounces")
_ROBOT_PARTS = ("noreply", "no-reply", "no_reply", "donotreply", "do-not-reply")
# Headers whose mere presence marks a list or an older auto-responder (that sets no
# Auto-Submitted); Mailing-List is ezmlm's list header.
_LIST_HEADERS = ("mailing-list", "x-mailing-list")
_RESPONDER_HEADERS = ("x-autoreply", "x-autorespond")
_MSGID_RE = re.compile(r"<[!-;=?-~]{1,250}>")  # printable ASCII without < and >
_ATEXT_RE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


class AutoReplyError(ValueError):
    """A refused setting or unusable file; str() names the field and the allowed values."""


@dataclass(frozen=True)
class AutoReply:
    """The auto-reply ("vacation" message) of one account."""
    account: str                        # lowercased address
    subject: str                        # the reply's Subject
    body: str                           # plain text
    start: datetime.date | None = None  # first day it is on (inclusive), local date
    end: datetime.date | None = None    # last day it is on (inclusive)
    days: int = 7                       # a sender gets at most one reply per this many days
    enabled: bool = True

    def active_on(self, day: datetime.date) -> bool:
        return (self.enabled and (self.start is None or self.start <= day)
                and (self.end is None or day <= self.end))


# ----- the setting ---------------------------------------------------------------------------
def clean_account(account: Any) -> str:
    if not isinstance(account, str):
        raise AutoReplyError(f"account: expected an address such as ann@example.com, "
                             f"not {account!r}.")
    addr = account.strip().lower()
    problem = address_problem(addr)
    if problem:
        raise AutoReplyError(f"account: {addr!r} {problem}.")
    return addr


def one_line(text: str) -> str:
    """``text`` as one header line: line breaks and other control characters become spaces."""
    return " ".join(_CONTROL_RE.sub(" ", text).split())


def clean(reply: AutoReply, *, from_file: bool = False) -> AutoReply:
    """``reply`` checked and normalised: the account lowercased, the subject on one line.
    A file may hold an empty subject (the reply then says "Auto: " and the original's)."""
    if not isinstance(reply, AutoReply):
        raise AutoReplyError(f"expected an AutoReply, not {type(reply).__name__}.")
    account = clean_account(reply.account)
    where = f"auto-reply of {account}"
    if not isinstance(reply.subject, str):
        raise AutoReplyError(f"{where}: subject: expected text, not {reply.subject!r}.")
    subject = one_line(reply.subject)
    if not subject and not from_file:
        raise AutoReplyError(f"{where}: subject: must not be empty (1-{MAX_SUBJECT} characters).")
    if len(subject) > MAX_SUBJECT:
        raise AutoReplyError(f"{where}: subject: {len(subject)} characters; at most "
                             f"{MAX_SUBJECT} are allowed.")
    if not isinstance(reply.body, str):
        raise AutoReplyError(f"{where}: body: expected text, not {reply.body!r}.")
    try:
        size = len(reply.body.encode("utf-8"))
    except UnicodeEncodeError:
        raise AutoReplyError(f"{where}: body: contains characters that are not Unicode text "
                             "(lone surrogates).") from None
    if size > MAX_BODY:
        raise AutoReplyError(f"{where}: body: {size} bytes of UTF-8; at most {MAX_BODY} "
                             "(64 KiB) are allowed.")
    for name in ("start", "end"):
        value = getattr(reply, name)
        # datetime is a subclass of date; a time of day would be ignored silently.
        if value is not None and (type(value) is not datetime.date):
            raise AutoReplyError(f"{where}: {name}: expected a date (YYYY-MM-DD) or none, "
                                 f"not {value!r}.")
    if reply.start is not None and reply.end is not None and reply.end < reply.start:
        raise AutoReplyError(f"{where}: end: {reply.end.isoformat()} is before the start "
                             f"{reply.start.isoformat()}; it must be on or after it.")
    if type(reply.days) is not int or not MIN_DAYS <= reply.days <= MAX_DAYS:
        raise AutoReplyError(f"{where}: days: {reply.days!r}; expected a whole number of days "
                             f"from {MIN_DAYS} to {MAX_DAYS}.")
    if type(reply.enabled) is not bool:
        raise AutoReplyError(f"{where}: enabled: expected true or false, not {reply.enabled!r}.")
    return replace(reply, account=account, subject=subject)


# ----- the files -----------------------------------------------------------------------------
def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise Corrupt(f"'{name}' is not an object")
    lowered = {k.strip().lower(): v for k, v in value.items()}
    if len(lowered) != len(value):
        raise Corrupt(f"'{name}' lists an address twice (differing only in case)")
    return lowered


def _date(account: str, name: str, value: Any) -> datetime.date | None:
    if value is None:
        return None
    try:
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return datetime.date.fromisoformat(value)
    except ValueError:
        pass
    raise Corrupt(f"the auto-reply of {account}: '{name}' is {value!r}; expected a date "
                  "\"YYYY-MM-DD\" or null")


def parse_settings(raw: bytes) -> dict[str, AutoReply]:
    """autoreply.json: ``{"version": 1, "replies": {account: {subject, body, start, end,
    days, enabled}}}``; any problem raises Corrupt naming the account and the field."""
    replies: dict[str, AutoReply] = {}
    for account, entry in _section(document(raw, FORMAT_VERSION), "replies").items():
        if not isinstance(entry, dict):
            raise Corrupt(f"the auto-reply of {account} is not an object")
        try:
            replies[account] = clean(AutoReply(
                account, entry.get("subject", ""), entry.get("body", ""),
                _date(account, "start", entry.get("start")), _date(account, "end", entry.get("end")),
                entry.get("days", 7), entry.get("enabled", True)), from_file=True)
        except AutoReplyError as e:
            raise Corrupt(str(e).rstrip(".")) from None
    return replies


def settings_json(replies: dict[str, AutoReply]) -> bytes:
    doc = {"version": FORMAT_VERSION, "replies": {
        a: {"subject": r.subject, "body": r.body,
            "start": r.start.isoformat() if r.start else None,
            "end": r.end.isoformat() if r.end else None,
            "days": r.days, "enabled": r.enabled} for a, r in sorted(replies.items())}}
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def parse_sent(raw: bytes) -> dict[str, dict[str, float]]:
    """autoreply-sent.json: ``{"version": 1, "sent": {account: {sender: unix time}}}``."""
    sent: dict[str, dict[str, float]] = {}
    for account, senders in _section(document(raw, FORMAT_VERSION), "sent").items():
        if not isinstance(senders, dict):
            raise Corrupt(f"'sent' of {account} is not an object")
        times: dict[str, float] = {}
        for sender, when in senders.items():
            if type(when) not in (int, float):
                raise Corrupt(f"'sent' of {account}: the time of {sender!r} is {when!r}; "
                              "expected seconds since 1970")
            key = sender.strip().lower()
            times[key] = max(times.get(key, 0), when)
        sent[account] = times
    return sent


def sent_json(sent: dict[str, dict[str, float]]) -> bytes:
    doc = {"version": FORMAT_VERSION,
           "sent": {a: dict(sorted(s.items())) for a, s in sorted(sent.items()) if s}}
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


# ----- RFC 3834: may this message be answered? ----------------------------------------------
def sender_refusal(sender: str, own: set[str]) -> str:
    """Why the envelope sender must not get an auto-reply, or "" (``own`` lowercased)."""
    if not sender:
        return "null sender"
    addr = sender.strip().lower()
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or not addr.isascii() or _CONTROL_RE.search(addr) \
            or " " in addr or len(addr) > 320:
        return "the sender is not a usable address"
    if addr in own:
        return "the sender is this account"
    base = local.split("+", 1)[0]  # VERP: list-bounces+ann=example.com@...
    if (base in _ROBOT_NAMES or base.startswith(_ROBOT_PREFIXES)
            or base.endswith(_ROBOT_SUFFIXES) or any(p in base for p in _ROBOT_PARTS)):
        return "the sender is a program (bounce, list or no-reply address)"
    return ""


def _strip_comments(value: str) -> str:
    out, depth, escaped = [], 0, False
    for ch in value:
        if depth and escaped:
            escaped = False
        elif depth and ch == "\\":
            escaped = True
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
    return "".join(out)


def _token(value: str) -> str:
    return " ".join(_strip_comments(value).split()).lower()


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


class Original:
    """The header block of the message being answered, parsed leniently (8-bit, folded)."""

    def __init__(self, header: bytes) -> None:
        msg = BytesHeaderParser().parsebytes(  # the compat32 policy: the default
            header.rstrip(b"\r\n") + b"\r\n\r\n")
        self._fields: list[tuple[str, str]] = [(n.strip().lower(), _unfold(str(v)))
                                                for n, v in msg.items()]

    def all(self, name: str) -> list[str]:
        return [v for n, v in self._fields if n == name]

    def first(self, name: str) -> str:
        values = self.all(name)
        return values[0] if values else ""

    def refusal(self, own: set[str]) -> str:
        """Why RFC 3834 forbids answering this message, or "" (``own`` lowercased)."""
        names = {n for n, _ in self._fields}
        for value in self.all("auto-submitted"):
            if _token(value) != "no":
                return f"Auto-Submitted: {value.strip()}"
        if names & set(_RESPONDER_HEADERS):
            return "sent by an auto-responder"
        if any(n.startswith("list-") for n in names) or names & set(_LIST_HEADERS):
            return "list mail (List-* header)"
        for value in self.all("precedence"):
            if _token(value) in ("bulk", "list", "junk"):
                return f"Precedence: {_token(value)}"
        for value in self.all("x-auto-response-suppress"):
            if {t.strip() for t in _token(value).split(",")} & {"oof", "all"}:
                return f"X-Auto-Response-Suppress: {value.strip()}"
        listed = {a.strip().lower() for _, a in getaddresses(self.all("to") + self.all("cc"))}
        if not listed & own:
            return "none of the account's addresses is in To or Cc"
        return ""

    def message_ids(self) -> tuple[str, list[str]]:
        """(its Message-ID or "", the References for a reply to it)."""
        found = _MSGID_RE.findall(self.first("message-id"))
        msgid = found[0] if found else ""
        refs = _MSGID_RE.findall(self.first("references"))
        if not refs:  # RFC 5322 3.6.4: a single In-Reply-To id stands for the thread
            parents = _MSGID_RE.findall(self.first("in-reply-to"))
            refs = parents if len(parents) == 1 else []
        refs = [r for r in refs if r != msgid] + ([msgid] if msgid else [])
        if len(refs) > MAX_REFERENCES:
            refs = refs[:1] + refs[-(MAX_REFERENCES - 1):]
        return msgid, refs

    def subject(self) -> str:
        raw = self.first("subject")
        try:
            text = str(make_header(decode_header(raw)))
        except (ValueError, LookupError, UnicodeError):
            text = raw
        return one_line(text.encode("utf-8", "replace").decode("utf-8"))


# ----- the answer ----------------------------------------------------------------------------
def _address(addr: str) -> str:
    """``addr`` as an RFC 5322 addr-spec: a local part that is not a dot-atom is quoted."""
    local, _, domain = addr.rpartition("@")
    if not _ATEXT_RE.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}"


def _fold_ids(name: str, ids: list[str]) -> str:
    lines, line = [], f"{name}:"
    for msgid in ids:
        if len(line) + 1 + len(msgid) > 78 and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + msgid
    return "\r\n".join(lines + [line])


def _body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body with CRLF line ends): 7bit when it is, else QP."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1]:
        lines.pop()
    plain = "\n".join(lines) + "\n"
    if plain.isascii() and all(len(line) <= 998 for line in lines):
        return "7bit", plain.replace("\n", "\r\n").encode("ascii")
    encoded = quopri.encodestring(plain.encode("utf-8"), quotetabs=False)
    return "quoted-printable", encoded.replace(b"\n", b"\r\n")


def compose(reply: AutoReply, sender: str, original: Original, now: float) -> bytes:
    """The complete reply (CRLF line ends) from ``reply.account`` to ``sender``."""
    subject = reply.subject or one_line(f"Auto: {original.subject()}")[:MAX_SUBJECT]
    msgid, refs = original.message_ids()
    domain = reply.account.rpartition("@")[2]
    header = Header(subject, "utf-8" if not subject.isascii() else "us-ascii",
                    header_name="Subject").encode(linesep="\r\n")
    lines = [f"From: {_address(reply.account)}",
             f"To: {_address(sender.strip())}",
             f"Subject: {header}",
             f"Date: {formatdate(now, localtime=True)}",
             f"Message-ID: {make_msgid('autoreply', domain=domain)}"]
    if msgid:
        lines.append(f"In-Reply-To: {msgid}")
    if refs:
        lines.append(_fold_ids("References", refs))
    cte, body = _body(reply.body)
    lines += ["Auto-Submitted: auto-replied",
              "MIME-Version: 1.0",
              "Content-Type: text/plain; charset=utf-8",
              f"Content-Transfer-Encoding: {cte}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def own_set(account: str, recipient: str, own_addresses: Iterable[str]) -> set[str]:
    return {a.strip().lower() for a in (account, recipient, *own_addresses) if a and a.strip()}
