"""Tools ▸ Queue: the outgoing queue, a page at a time.

A queue can hold 100,000 messages when the SmartHost is down for a day.  Reading every
entry's JSON, or putting 100,000 rows into a Treeview, would freeze the window for many
seconds; so the ids are listed in a thread (one directory scan), and only the entries on
the page shown (PAGE_SIZE of them) are read, also in a thread.  The window never waits.
"""
from __future__ import annotations

import time
import tkinter as tk
from tkinter import messagebox, ttk
from typing import TYPE_CHECKING

from ismail.admin import QueueEntry

from .events import Pump
from .widgets import PAD, Window, place_over

if TYPE_CHECKING:
    from .controller import Controller

PAGE_SIZE = 200
COLUMNS = (("id", "Id", 110), ("sender", "Sender", 170), ("recipients", "Recipients", 230),
           ("size", "Size", 65), ("attempts", "Tries", 50), ("next", "Next try", 140),
           ("error", "Last error", 300))


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:,.0f} KB" if n < 1024 * 1024 else f"{n / 1048576:,.1f} MB"


def row_values(entry: QueueEntry, now: float) -> tuple[str, ...]:
    pending = [r.address for r in entry.recipients if r.state == "pending"]
    shown = ", ".join(pending[:2]) + (f" and {len(pending) - 2} more" if len(pending) > 2 else "")
    when = "now" if entry.next_try <= now else time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.next_try))
    return (entry.id, entry.sender or "<> (a bounce)", shown, _size(entry.size), str(entry.attempts),
            when, " ".join(entry.last_error.split()))


class QueueWindow(Window):
    def __init__(self, parent: tk.Misc, controller: "Controller", *, _utest: bool = False) -> None:
        super().__init__(parent)
        self.withdraw()
        self.title("ISMail Outgoing Queue")
        self.transient(parent)
        self.controller = controller
        self._utest = _utest
        self.admin = controller.admin
        self.pump = Pump(self)
        self.ids: list[str] = []
        self.page = 0
        self.loaded = False  # True once the ids and the current page are shown
        self.columnconfigure(0, weight=1)
        self.rowconfigure(1, weight=1)
        bar = ttk.Frame(self, padding=(PAD, PAD, PAD, 4))
        bar.grid(row=0, column=0, sticky="ew")
        self.refresh_button = ttk.Button(bar, text="Refresh", command=self.refresh)
        self.retry_button = ttk.Button(bar, text="Retry now", command=self.retry_now)
        self.delete_button = ttk.Button(bar, text="Delete", command=self.delete_selected)
        for b in (self.refresh_button, self.retry_button, self.delete_button):
            b.pack(side="left", padx=(0, 4))
        self.next_button = ttk.Button(bar, text="Next ▶", width=9, command=lambda: self.show_page(self.page + 1))
        self.next_button.pack(side="right")
        self.page_label = ttk.Label(bar, text="", width=16, anchor="center")
        self.page_label.pack(side="right")
        self.prev_button = ttk.Button(bar, text="◀ Previous", width=11, command=lambda: self.show_page(self.page - 1))
        self.prev_button.pack(side="right")
        frame = ttk.Frame(self, padding=(PAD, 0, PAD, 0))
        frame.grid(row=1, column=0, sticky="nsew")
        frame.columnconfigure(0, weight=1)
        frame.rowconfigure(0, weight=1)
        self.tree = ttk.Treeview(frame, columns=[c for c, _, _ in COLUMNS], show="headings", height=18)
        for col, text, width in COLUMNS:
            self.tree.heading(col, text=text, anchor="w")
            self.tree.column(col, width=width, anchor="e" if col in ("size", "attempts") else "w",
                             stretch=col == "error")
        self.tree.grid(row=0, column=0, sticky="nsew")
        ys = ttk.Scrollbar(frame, orient="vertical", command=self.tree.yview)
        ys.grid(row=0, column=1, sticky="ns")
        self.tree.configure(yscrollcommand=ys.set)
        self.tree.bind("<Delete>", lambda e: self.delete_selected())
        self.status = ttk.Label(self, text="", padding=(PAD, 4, PAD, PAD))
        self.status.grid(row=2, column=0, sticky="ew")
        self.protocol("WM_DELETE_WINDOW", self.close)
        self.bind("<Escape>", lambda e: self.close())
        self.bind("<F5>", lambda e: self.refresh())
        place_over(self, parent)
        self.geometry("1120x540")  # size only: the position place_over chose stays
        self.deiconify()
        self.refresh()

    # -- reading -------------------------------------------------------------------------------
    def refresh(self) -> None:
        if self.pump.busy:
            return
        self.loaded = False
        self.status.configure(text="Reading the queue…")
        self._sync_buttons()
        page = self.page
        self.pump.run(lambda: self._read(self.admin.queue_ids(), page), self._shown, name="queue-list")

    def show_page(self, page: int) -> None:
        pages = max((len(self.ids) - 1) // PAGE_SIZE + 1, 1)
        if self.pump.busy or not 0 <= page < pages:
            return
        self.loaded = False
        self.status.configure(text="Reading…")
        ids = self.ids
        self.pump.run(lambda: self._read(ids, page), self._shown, name="queue-page")

    def _read(self, ids: list[str], page: int) -> tuple[list[str], int, list[tuple[str, QueueEntry | None]]]:
        """In a thread: the entries of one page; None for one that is gone or unreadable."""
        page = min(page, max((len(ids) - 1) // PAGE_SIZE, 0))
        rows: list[tuple[str, QueueEntry | None]] = []
        for qid in ids[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]:
            try:
                rows.append((qid, self.admin.queue_entry(qid)))
            except (OSError, ValueError):
                rows.append((qid, None))  # sent or deleted meanwhile, or set aside as corrupt
        return ids, page, rows

    def _shown(self, outcome: tuple | None, error: BaseException | None) -> None:
        if error is not None or outcome is None:
            self.status.configure(text=f"The queue could not be read: {error}")
            self._sync_buttons()
            return
        self.ids, self.page, rows = outcome
        now = time.time()
        self.tree.delete(*self.tree.get_children())
        for qid, entry in rows:
            values = row_values(entry, now) if entry is not None else (qid, "(no longer in the queue)")
            self.tree.insert("", "end", iid=qid, values=values)
        self.loaded = True
        self._update_labels()
        self._sync_buttons()

    def _update_labels(self) -> None:
        pages = max((len(self.ids) - 1) // PAGE_SIZE + 1, 1)
        self.page_label.configure(text=f"Page {self.page + 1:,} of {pages:,}")
        n = len(self.ids)
        self.status.configure(text="The outgoing queue is empty." if n == 0 else
                              f"{n:,} message{'s' if n != 1 else ''} waiting to be sent.")

    def _sync_buttons(self) -> None:
        pages = max((len(self.ids) - 1) // PAGE_SIZE + 1, 1)
        idle = self.loaded
        self.prev_button.state(["!disabled"] if idle and self.page > 0 else ["disabled"])
        self.next_button.state(["!disabled"] if idle and self.page < pages - 1 else ["disabled"])

    # -- acting --------------------------------------------------------------------------------
    def retry_now(self) -> None:
        try:
            self.admin.queue_flush()  # the window never rewrites the entries: see Admin
        except OSError as e:
            self.status.configure(text=f"Could not ask for a retry: {e.strerror or e}")
            return
        self.status.configure(text=f"Every queued message ({len(self.ids):,}) will be retried now.")

    def delete_selected(self) -> list[str]:
        chosen = list(self.tree.selection())
        if not chosen:
            self.status.configure(text="Select the messages to delete first.")
            return []
        if not self._utest and not messagebox.askyesno(
                "Delete from the queue", f"Delete {len(chosen)} message(s) from the queue?\n\n"
                "They will not be sent, and their senders will not be told.", parent=self):
            return []
        done: list[str] = []
        for qid in chosen:
            try:
                self.admin.queue_delete(qid)
            except OSError as e:
                self.status.configure(text=f"Could not delete {qid}: {e.strerror or e}")
                break
            done.append(qid)
            self.tree.delete(qid)
        gone = set(done)
        self.ids = [q for q in self.ids if q not in gone]
        if done:
            self._update_labels()
            self.status.configure(text=f"Deleted {len(done)} message(s). " + self.status.cget("text"))
        return done

    def close(self) -> None:
        self.pump.cancel()
        self.destroy()
