"""Thread-safe counters, the figures the original program showed as "SMTP Receiver".

Every stage adds to one Stats object owned by the MailServer; the GUI and the
`run` command read a snapshot.  A counter is a name and an integer; gauges
(connections open now) go up and down through the same call.
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
GAUGES = ("connections_current", "outgoing_current", "queue_length")


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = dict.fromkeys(RECEIVER_COUNTERS + SENDER_COUNTERS, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        """Start counting again; the gauges (open connections, queue length) stay true."""
        with self._lock:
            kept = {g: self._values.get(g, 0) for g in GAUGES}
            self._values = dict.fromkeys(RECEIVER_COUNTERS + SENDER_COUNTERS, 0)
            self._values.update(kept)

    def summary(self) -> str:
        snap = self.snapshot()
        return ", ".join(f"{k}={v}" for k, v in snap.items())
