"""Header fields SEARCH has decoded, kept for the next SEARCH (Dovecot caches them too).

A client that searches a header once (a Message-ID before threading, a Subject typed
into a search box) usually does it again, on the same folder.  Reading 10,000 message
files for that each time costs far more than keeping the decoded values: one table
per (folder, field name) maps a message's Maildir key to the field's decoded values.

A key names one file whose content never changes (flags live in its name), so an
entry is never stale; entries of expunged messages go when the table is pruned or
dropped.  The cache is shared by the sessions of this process, held in memory only,
and bounded by the characters it holds, whole tables dropped least recently used first.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

Values = tuple[str, ...]   # tuples of str: the cyclic GC stops tracking them, so a big
                           # cache does not make every full collection slower


class HeaderCache:
    MAX_CHARS = 32 << 20   # about 64 MB of str at most

    def __init__(self, max_chars: int = MAX_CHARS) -> None:
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._tables: OrderedDict[tuple[Path, str], dict[str, Values]] = OrderedDict()
        self._chars: dict[tuple[Path, str], int] = {}
        self._held = 0

    def tables(self, folder: Path, fields: Iterable[str]) -> dict[str, dict[str, Values]]:
        """field -> {key: values} for reading (a snapshot: add with ``add``)."""
        with self._lock:
            out = {}
            for field in fields:
                table = self._tables.get((folder, field))
                if table is not None:
                    self._tables.move_to_end((folder, field))
                out[field] = table if table is not None else {}
            return out

    def add(self, folder: Path, found: dict[str, dict[str, Values]], keys_now: set[str]) -> None:
        """Merge what a SEARCH decoded; ``keys_now``: the folder's keys, for pruning."""
        with self._lock:
            for field, new in found.items():
                if not new:
                    continue
                slot = (folder, field)
                table = dict(self._tables.get(slot, {}))   # readers keep the old one
                chars = self._chars.get(slot, 0)
                for key, values in new.items():
                    old = table.get(key)
                    if old is not None:
                        chars -= _chars(key, old)
                    chars += _chars(key, values)
                table.update(new)
                if len(table) > 2 * max(len(keys_now), 64):
                    table = {k: v for k, v in table.items() if k in keys_now}
                    chars = sum(_chars(k, v) for k, v in table.items())
                if chars > self.max_chars:
                    continue
                self._held += chars - self._chars.get(slot, 0)
                self._tables[slot], self._chars[slot] = table, chars
                self._tables.move_to_end(slot)
            while self._held > self.max_chars and self._tables:
                slot, _ = self._tables.popitem(last=False)
                self._held -= self._chars.pop(slot)

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()
            self._chars.clear()
            self._held = 0


def _chars(key: str, values: Values) -> int:
    return len(key) + sum(map(len, values))


HEADERS = HeaderCache()
