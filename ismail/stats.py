"""Thread-safe counters, the figures the original program showed as "SMTP Receiver".

Every stage adds to one Stats object owned by the MailServer; the GUI and the
`run` command read a snapshot.  A counter is a name and an integer; gauges
(connections open now) go up and down through the same call.

Each thread counts in a dict of its own, so adding takes no lock: with a shared
lock, a dozen session threads bumping six counters per message were queueing on it
(every wait a futex call and a context switch).  A snapshot, about once a second,
adds the threads' dicts up; a reset remembers a baseline instead of touching them.
"""
from __future__ import annotations

import threading

# The receiver's counters, in the order they are shown.
RECEIVER_COUNTERS = (
    "connections_current",
    "connections_total",
    "connections_refused_total_limit",
    "connections_refused_per_host_limit",
    "connections_refused_access",
    "messages_received",
    "bytes_received",
    "recipients_local",
    "recipients_queued",
    "relay_refused",
    "messages_refused",
    "protocol_errors",
    "sessions_timed_out",
    "logins",
    "logins_failed",
)

# The sender's and the queue's ("SMTP Sender", "Outgoing Queue", "Retry Manager").
SENDER_COUNTERS = (
    "outgoing_current",
    "outgoing_total",
    "messages_sent",
    "recipients_sent",
    "deliveries_deferred",
    "recipients_bounced",
    "messages_bounced",
    "queue_length",
)
# POP3's ("POP3 Server"); the connection counters follow SMTP's names with a "pop3_" prefix.
POP3_COUNTERS = (
    "pop3_connections_current",
    "pop3_connections_total",
    "pop3_connections_refused_total_limit",
    "pop3_connections_refused_per_host_limit",
    "pop3_connections_refused_access",
    "pop3_sessions_timed_out",
    "pop3_logins",
    "pop3_logins_failed",
    "pop3_retrieved",
    "pop3_deleted",
    "pop3_bytes_sent",
)
# IMAP's ("IMAP Server"), named as POP3's.
IMAP_COUNTERS = (
    "imap_connections_current",
    "imap_connections_total",
    "imap_connections_refused_total_limit",
    "imap_connections_refused_per_host_limit",
    "imap_connections_refused_access",
    "imap_sessions_timed_out",
    "imap_logins",
    "imap_logins_failed",
    "imap_fetched",
    "imap_appended",
    "imap_expunged",
)
# The anti-spam checks' ("Anti-spam, today"): what each refused or tagged since midnight.
ANTISPAM_COUNTERS = (
    "antispam_rate_refused",
    "antispam_pregreet_refused",
    "antispam_blacklist_refused",
    "antispam_whitelisted",
    "antispam_dnsbl_refused",
    "antispam_dnsbl_tagged",
    "antispam_rdns_refused",
    "antispam_rdns_tagged",
    "antispam_greylisted",
    "antispam_spf_refused",
    "antispam_spf_tagged",
    "antispam_dkim_refused",
    "antispam_dkim_tagged",
    "antispam_dmarc_refused",
    "antispam_dmarc_tagged",
    "antispam_rules_refused",
    "antispam_rules_tagged",
    "antispam_harvest_refused",
)
ALL_COUNTERS = RECEIVER_COUNTERS + SENDER_COUNTERS + POP3_COUNTERS + IMAP_COUNTERS + ANTISPAM_COUNTERS
GAUGES = ("connections_current", "outgoing_current", "queue_length", "pop3_connections_current",
          "imap_connections_current")


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()        # only for registering a thread and for reset
        self._local = threading.local()
        self._dicts: list[dict[str, int]] = []
        self._baseline: dict[str, int] = {}

    def _mine(self) -> dict[str, int]:
        mine = getattr(self._local, "counts", None)
        if mine is None:
            mine = dict.fromkeys(ALL_COUNTERS, 0)
            self._local.counts = mine
            with self._lock:
                self._dicts.append(mine)
        return mine

    def add(self, name: str, amount: int = 1) -> None:
        mine = self._mine()
        mine[name] = mine.get(name, 0) + amount  # only this thread writes to its own dict

    def get(self, name: str) -> int:
        """One counter (without adding up all the others: cheap enough to ask often)."""
        with self._lock:
            dicts, base = list(self._dicts), self._baseline.get(name, 0)
        return sum(counts.get(name, 0) for counts in dicts) - base

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            dicts, baseline = list(self._dicts), dict(self._baseline)
        total = dict.fromkeys(ALL_COUNTERS, 0)
        for counts in dicts:
            for name, value in list(counts.items()):  # one C-level copy: no thread switch inside
                total[name] = total.get(name, 0) + value
        for name, value in baseline.items():
            total[name] -= value
        return total

    def reset(self, names: list[str] | None = None) -> None:
        """Start counting again (all, or just ``names``); the gauges (open connections,
        queue length) stay true."""
        now = self.snapshot()
        with self._lock:
            for name, value in now.items():
                if name not in GAUGES and (names is None or name in names):
                    self._baseline[name] = self._baseline.get(name, 0) + value

    def summary(self) -> str:
        snap = self.snapshot()
        return ", ".join(f"{k}={v}" for k, v in snap.items())
