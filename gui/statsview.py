"""Tools ▸ Statistics: every counter, grouped as the original program showed them.

The counters start at zero with each start of the server (a new MailServer each time),
the anti-spam ones also at midnight ("today"); "Reset" starts them again without a restart.  Counters this window does not know yet
(a newer stage may add some) are shown under "Other" rather than hidden.
"""
from __future__ import annotations

import time
import tkinter as tk
from tkinter import ttk
from typing import TYPE_CHECKING

from .widgets import PAD, Window, place_over

if TYPE_CHECKING:
    from .controller import Controller

GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("SMTP Receiver", (
        ("connections_current", "Connections now"),
        ("connections_total", "Connections since start"),
        ("connections_refused_total_limit", "Refused: too many in total"),
        ("connections_refused_per_host_limit", "Refused: too many from one host"),
        ("connections_refused_access", "Refused: blocked or banned address"),
        ("messages_received", "Messages received"),
        ("bytes_received", "Bytes received"),
        ("relay_refused", "Relay attempts refused"),
        ("messages_refused", "Messages refused"),
        ("protocol_errors", "Protocol errors"),
        ("sessions_timed_out", "Sessions timed out"),
        ("logins", "Logins"),
        ("logins_failed", "Failed logins"),
    )),
    ("Incoming Queue", (
        ("recipients_local", "Delivered to local mailboxes"),
        ("recipients_queued", "Queued to be sent on"),
    )),
    ("Anti-spam (today)", (
        ("antispam_rate_refused", "Refused: connecting too often"),
        ("antispam_pregreet_refused", "Refused: spoke before greeting"),
        ("antispam_blacklist_refused", "Refused: on the black list"),
        ("antispam_whitelisted", "Passed unchecked: white list"),
        ("antispam_dnsbl_refused", "Refused: on a DNS block list"),
        ("antispam_dnsbl_tagged", "Tagged: on a DNS block list"),
        ("antispam_rdns_refused", "Refused: no reverse DNS"),
        ("antispam_rdns_tagged", "Tagged: no reverse DNS"),
        ("antispam_greylisted", "Greylisted (asked to retry)"),
        ("antispam_spf_refused", "Refused: SPF failed"),
        ("antispam_spf_tagged", "Tagged: SPF failed"),
        ("antispam_dkim_refused", "Refused: DKIM failed"),
        ("antispam_dkim_tagged", "Tagged: DKIM failed"),
        ("antispam_dmarc_refused", "Refused: DMARC policy"),
        ("antispam_dmarc_tagged", "Tagged: DMARC failed"),
        ("antispam_rules_refused", "Refused: content rule"),
        ("antispam_rules_tagged", "Junk/folder: content rule"),
        ("antispam_harvest_refused", "Cut off: guessing addresses"),
    )),
    ("SMTP Sender", (
        ("outgoing_current", "Connections now"),
        ("outgoing_total", "Connections since start"),
        ("messages_sent", "Messages sent"),
        ("recipients_sent", "Recipients sent"),
    )),
    ("Outgoing Queue", (
        ("queue_length", "Messages waiting"),
        ("messages_bounced", "Messages bounced"),
        ("recipients_bounced", "Recipients bounced"),
    )),
    ("Retry Manager", (
        ("deliveries_deferred", "Deliveries deferred (will retry)"),
    )),
    ("POP3 Server", (
        ("pop3_connections_current", "Connections now"),
        ("pop3_connections_total", "Connections since start"),
        ("pop3_connections_refused_total_limit", "Refused: too many in total"),
        ("pop3_connections_refused_per_host_limit", "Refused: too many from one host"),
        ("pop3_connections_refused_access", "Refused: blocked or banned address"),
        ("pop3_sessions_timed_out", "Sessions timed out"),
        ("pop3_logins", "Logins"),
        ("pop3_logins_failed", "Failed logins"),
        ("pop3_retrieved", "Messages retrieved"),
        ("pop3_deleted", "Messages deleted"),
        ("pop3_bytes_sent", "Bytes sent"),
    )),
    ("IMAP Server", (
        ("imap_connections_current", "Connections now"),
        ("imap_connections_total", "Connections since start"),
        ("imap_connections_refused_total_limit", "Refused: too many in total"),
        ("imap_connections_refused_per_host_limit", "Refused: too many from one host"),
        ("imap_connections_refused_access", "Refused: blocked or banned address"),
        ("imap_sessions_timed_out", "Sessions timed out"),
        ("imap_logins", "Logins"),
        ("imap_logins_failed", "Failed logins"),
        ("imap_fetched", "Messages fetched"),
        ("imap_appended", "Messages added (APPEND)"),
        ("imap_expunged", "Messages deleted (EXPUNGE)"),
    )),
)
# Which column each group goes in: receiving, sending and the queues; anti-spam and the retry
# manager (its note ends the column); mail programs.  Anti-spam's 18 lines need a column nearly
# to themselves: the window must fit a screen 800 pixels high.
COLUMN = {"SMTP Receiver": 0, "Incoming Queue": 0, "SMTP Sender": 0, "Outgoing Queue": 0,
          "POP3 Server": 2, "IMAP Server": 2}


class StatisticsWindow(Window):
    def __init__(self, parent: tk.Misc, controller: "Controller", refresh_ms: int = 1000) -> None:
        super().__init__(parent)
        self.withdraw()
        self.title("ISMail Statistics")
        self.transient(parent)
        self.controller = controller
        self.refresh_ms = refresh_ms
        self.values: dict[str, ttk.Label] = {}
        self.since = controller.started_at
        body = ttk.Frame(self, padding=PAD * 2)
        body.grid(sticky="nsew")
        self.heading = ttk.Label(body, text="")
        self.heading.grid(row=0, column=0, columnspan=3, sticky="w", pady=(0, PAD))
        known = {key for _, rows in GROUPS for key, _ in rows}
        columns = [ttk.Frame(body), ttk.Frame(body), ttk.Frame(body)]
        for i, col in enumerate(columns):
            col.grid(row=1, column=i, sticky="n", padx=(0 if i == 0 else PAD, 0))
        for title, rows in GROUPS:
            self._group(columns[COLUMN.get(title, 1)], title, rows)
        self.retry_note = ttk.Label(columns[1], text="", style="Hint.TLabel", wraplength=260, justify="left")
        self.retry_note.pack(anchor="w", pady=(2, 0))
        snapshot = self._snapshot()
        other = tuple((k, k.replace("_", " ").capitalize()) for k in sorted(snapshot) if k not in known)
        if other:
            self._group(columns[0], "Other", other)
        buttons = ttk.Frame(body)
        buttons.grid(row=2, column=0, columnspan=3, sticky="e", pady=(PAD, 0))
        ttk.Button(buttons, text="Reset", command=self.reset).pack(side="left", padx=(0, PAD // 2))
        ttk.Button(buttons, text="Close", command=self.close).pack(side="left")
        self.protocol("WM_DELETE_WINDOW", self.close)
        self.bind("<Escape>", lambda e: self.close())
        self._after: str | None = None
        self.bind("<Destroy>", lambda e: self._stop_refreshing() if e.widget is self else None, add="+")
        self.refresh()
        place_over(self, parent)
        self.deiconify()

    def _group(self, parent: tk.Misc, title: str, rows: tuple[tuple[str, str], ...]) -> None:
        frame = ttk.LabelFrame(parent, text=title, padding=(PAD, 4))
        frame.pack(fill="x", pady=(0, PAD))
        frame.columnconfigure(0, minsize=230)
        for r, (key, label) in enumerate(rows):
            ttk.Label(frame, text=label).grid(row=r, column=0, sticky="w")
            value = ttk.Label(frame, text="0", width=10, anchor="e")
            value.grid(row=r, column=1, sticky="e")
            self.values[key] = value

    def _snapshot(self) -> dict[str, int]:
        server = self.controller.server
        return server.stats.snapshot() if server is not None else {}

    def refresh(self) -> None:
        snapshot = self._snapshot()
        figures = self.controller.figures()
        snapshot["queue_length"] = figures.queue_length
        for key, label in self.values.items():
            label.configure(text=f"{snapshot.get(key, 0):,}")
        state = "running" if self.controller.running else "stopped"
        self.heading.configure(text=f"Counted since {time.strftime('%H:%M:%S', time.localtime(self.since))}"
                                    f" (the server is {state}).")
        s = self.controller.settings
        if s is not None:
            self.retry_note.configure(text=f"First retry after {s.retry.first_seconds} s, then at most "
                                           f"every {s.retry.max_interval_seconds} s; gives up after "
                                           f"{s.retry.lifetime_hours} hours.")
        self._after = self.after(self.refresh_ms, self.refresh)

    def reset(self) -> None:
        if self.controller.server is not None:
            self.controller.server.stats.reset()
        self.since = time.time()
        if self._after is not None:
            self.after_cancel(self._after)
        self.refresh()

    def _stop_refreshing(self) -> None:
        if self._after is not None:
            self.after_cancel(self._after)
            self._after = None

    def close(self) -> None:
        self._stop_refreshing()
        self.destroy()
