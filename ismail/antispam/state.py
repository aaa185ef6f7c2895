"""What the anti-spam checks keep while the server runs, across changes of settings: the
lookup threads, the greylist (saved every minute and at stop), the connection-rate counts,
the connect-time and SPF verdicts of recent clients, and today's counters."""
from __future__ import annotations

import datetime
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from .greylist import Greylist
from .ratelimit import ConnectionRate

if TYPE_CHECKING:
    from ..stats import Stats

log = logging.getLogger("ismail.antispam")

DNS_THREADS = 8
GREYLIST_FILE = "greylist.json"
GREYLIST_SAVE_SECONDS = 60.0
CACHE_LIMIT = 10_000


def _now_date() -> datetime.date:
    return datetime.date.today()


class AntispamState:
    """What outlives a change of settings: the lookup threads, the greylist, the rate counts,
    and today's counters (the Statistics window shows them per day)."""

    def __init__(self, data_dir: Path, stats: "Stats", *, today=_now_date) -> None:
        self.data_dir = Path(data_dir)
        self.stats = stats
        self.pool = ThreadPoolExecutor(max_workers=DNS_THREADS, thread_name_prefix="dnscheck")
        self.rate = ConnectionRate(0)
        self._greylist: Greylist | None = None
        self._lock = threading.Lock()
        self._today, self._day = today, today()
        self._saver: threading.Timer | None = None
        self._stopped = False
        # ip and settings -> (expires, rdns, listing); (ip, sender, helo) -> (expires, SpfResult)
        self.verdicts: dict[tuple, tuple] = {}
        self.spf: dict[tuple, tuple] = {}

    def remember(self, cache: dict, key: tuple, seconds: float, *value) -> None:
        with self._lock:  # readers (recall) need none: one dict.get
            if len(cache) >= CACHE_LIMIT:
                now = time.monotonic()
                for k in [k for k, v in cache.items() if v[0] <= now]:
                    del cache[k]
                while len(cache) >= CACHE_LIMIT:  # dicts keep insertion order: drop the oldest
                    del cache[next(iter(cache))]
            cache[key] = (time.monotonic() + seconds, *value)

    @staticmethod
    def recall(cache: dict, key: tuple) -> tuple | None:
        found = cache.get(key)
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1:]

    def greylist(self, delay: float) -> Greylist:
        with self._lock:
            if self._greylist is None:
                self._greylist = Greylist(self.data_dir / GREYLIST_FILE, delay=delay)
                self._schedule_save()
            self._greylist.delay = delay
            return self._greylist

    def _schedule_save(self) -> None:
        if self._stopped:
            return
        self._saver = threading.Timer(GREYLIST_SAVE_SECONDS, self._save_tick)
        self._saver.daemon = True
        self._saver.start()

    def _save_tick(self) -> None:
        try:
            grey = self._greylist
            if grey is not None:
                grey.prune()
                grey.save()
        except Exception:
            log.exception("saving the greylist failed")
        with self._lock:
            self._schedule_save()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def count(self, name: str) -> None:
        """Add one to today's counter ``name`` (``antispam_...``); a new day starts at zero."""
        day = self._today()
        if day != self._day:
            with self._lock:
                if day != self._day:
                    self._day = day
                    self.stats.reset(names=[n for n in self.stats.snapshot() if n.startswith("antispam_")])
        self.stats.add(name)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._saver is not None:
                self._saver.cancel()
            grey = self._greylist
        if grey is not None:
            try:
                grey.save()
            except Exception:
                log.exception("saving the greylist failed")
        self.pool.shutdown(wait=False, cancel_futures=True)
