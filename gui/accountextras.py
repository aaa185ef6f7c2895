"""The Accounts page's Quota… and Auto-reply… dialogs (accountspage.py holds the list).

Both save at once through ``Admin``, as the rest of the page does: the quota into
``accounts.json`` (``AccountStore.set_quota``), the automatic reply into ``autoreply.json``
(``Admin.autoreplies``).  What the store refuses is shown in the dialog as it is, and
nothing is saved; what is not even a number or a date is refused before it gets there.
"""
from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Callable

from ismail.admin import AccountError
from ismail.store.autoreply import AutoReply, AutoReplyError

from .listedit import Field, FormDialog, Values

if TYPE_CHECKING:
    from .accountspage import AccountsPage

DATE_HINT = "YYYY-MM-DD; empty: "


def quota_text(mb: int | None) -> str:
    return f"{mb:,} MB" if mb is not None else ""


def quota_dialog(page: "AccountsPage", address: str, current: int | None) -> FormDialog:
    def check(v: Values) -> str | None:
        text = str(v["quota"]).strip().replace(",", "")
        if text.upper().endswith("MB"):
            text = text[:-2].strip()
        try:
            mb = int(text) if text else None
        except ValueError:
            return f"Type the quota as a whole number of MB, or leave it empty for none; not {text!r}."
        try:
            page.admin.account_store.set_quota(address, mb)
        except AccountError as e:
            return str(e)
        page.refresh()
        return None

    return FormDialog(page, "Quota", f"The most {address} may keep, all folders together. A message "
                      "that does not fit any more is refused (the sender is told), and the account "
                      "gets a warning as it nears its quota.",
                      [Field("quota", "Quota (MB):", "" if current is None else str(current), width=12,
                             hint="1024 MB = 1 GB; empty: no quota")],
                      check, _utest=page._utest)


def _date(text: str, what: str) -> datetime.date | None:
    text = text.strip()
    if not text:
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a date of the form YYYY-MM-DD.") from None


def autoreply_dialog(page: "AccountsPage", address: str) -> FormDialog:
    replies = page.admin.autoreplies
    current = replies.get(address)
    r = current or AutoReply(account=address, subject="", body="", start=None, end=None)

    def check(v: Values) -> str | None:
        try:
            start, end = _date(str(v["start"]), "From"), _date(str(v["end"]), "Until")
        except ValueError as e:
            return str(e)
        try:
            days = int(str(v["days"]).strip())
        except ValueError:
            return f"Days between replies: type a whole number, not {str(v['days']).strip()!r}."
        return _save(page, lambda: page.admin.autoreplies.set(AutoReply(
            account=address, subject=str(v["subject"]).strip(), body=str(v["body"]), start=start,
            end=end, days=days, enabled=bool(v["enabled"]))))

    def remove() -> str | None:
        return _save(page, lambda: page.admin.autoreplies.remove(address))

    return FormDialog(page, "Auto-reply", f"While it is on, each sender who writes to {address} gets "
                      "this reply, once in the number of days below (mailing lists and automatic "
                      "messages get none).",
                      [Field("enabled", "Reply automatically", r.enabled, "check"),
                       Field("subject", "Subject:", r.subject, width=44),
                       Field("body", "Text:", r.body, "text", width=50, height=7),
                       Field("start", "From:", r.start.isoformat() if r.start else "", width=12,
                             hint=DATE_HINT + "from now"),
                       Field("end", "Until:", r.end.isoformat() if r.end else "", width=12,
                             hint=DATE_HINT + "until turned off (the last day included)"),
                       Field("days", "Days between replies:", str(r.days), width=6,
                             hint="to the same sender")],
                      check, extra=("Remove auto-reply", remove) if current is not None else None,
                      _utest=page._utest)


def _save(page: "AccountsPage", change: Callable[[], None]) -> str | None:
    try:
        change()
    except (AutoReplyError, AccountError) as e:
        return str(e)
    page.refresh()
    return None
