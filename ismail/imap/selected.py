"""The selected folder as one session sees it: sequence numbers, \\Recent, pending expunges.

Model
-----
The store's ``Folder`` view (store/folders_view.py) knows what the folder holds now.
The client knows what it was told: message sequence numbers are positions in the
list of UIDs as of the last EXISTS and EXPUNGE responses (RFC 3501 §2.3.1.2).  The two
differ between commands, and `Selected` keeps the client's side: ``uids``, an
``array('I')`` (4 bytes a message, nothing else copied per message), ascending
because new mail always gets higher UIDs.

``sync`` asks the view what changed and turns it into untagged responses:

* new messages are appended to ``uids`` and announced as ``* n EXISTS`` (and RECENT);
* flag changes become ``* n FETCH (UID u FLAGS (...))``;
* messages another session expunged stay in ``uids`` as *ghosts* (``gone``) until
  an EXPUNGE response may be sent: never during FETCH, STORE or SEARCH (§7.4.1), so
  that the numbers a client pipelines stay valid.  A ghost has no data any more: a
  FETCH of one answers NO [EXPUNGEISSUED] (RFC 2180 §4.1.2, RFC 5530), a STORE
  skips it, a SEARCH never finds it.

\\Recent belongs to one session (§2.3.2): what ``Folder.claim_recent`` handed to this
one, kept as UID ranges (each claim is everything from some UID to the newest), so
a first SELECT of 100,000 new messages costs one pair of numbers.
"""
from __future__ import annotations

import bisect
from array import array
from itertools import chain
from typing import Iterator

from ..store.folders import Folder, MessageRef
from ..store.folders_flags import MAX_KEYWORDS
from .commands import SYSTEM_FLAGS, Bad
from .tokens import SequenceSet

RECENT = "\\Recent"
_ORDER = {f: i for i, f in enumerate(SYSTEM_FLAGS)}


def flag_order(flag: str) -> tuple[int, str]:
    return (_ORDER.get(flag, len(_ORDER)), flag)


class FlagTexts(dict):
    """A set of flags -> its text in a FETCH response, ``(\\Seen $Work)`` (with \\Recent
    last if ``recent``), made on first use.  A dict, so a FETCH of many messages looks
    them up without a Python call each."""

    MAX = 4096

    def __init__(self, recent: bool = False) -> None:
        super().__init__()
        self.recent = recent

    def __missing__(self, flags: frozenset[str]) -> bytes:
        if len(self) >= self.MAX:
            self.clear()
        names = sorted(flags, key=flag_order)
        if self.recent:
            names.append(RECENT)
        text = self[flags] = ("(" + " ".join(names) + ")").encode("utf-8", "replace")
        return text


class Selected:
    """One session's SELECT or EXAMINE of one folder."""

    def __init__(self, folder: Folder, readonly: bool) -> None:
        self.folder = folder
        self.readonly = readonly
        self.uids = array("I", [m.uid for m in folder.messages])
        self.gone: set[int] = set()               # expunged elsewhere, not yet announced
        self._recent_lo: list[int] = []           # UID ranges this session holds \Recent
        self._recent_hi: list[int] = []           # for: ascending, disjoint
        # EXAMINE claims nothing, but still reports what is recent (unclaimed): the UIDs
        # from here up, as Dovecot does (ImapTest's select test checks it).
        self._peek_from: int | None = None
        self.flag_texts = FlagTexts()                # flags -> "(...)", for a message not \Recent
        self._recent_flag_texts = FlagTexts(recent=True)
        self._announced: frozenset[str] = frozenset()   # keywords the client was given in FLAGS
        if not readonly:
            self._claim()
        else:
            unclaimed = folder.recent_count()
            if unclaimed:
                self._peek_from = self.uids[len(self.uids) - unclaimed]

    @property
    def name(self) -> str:
        return self.folder.name

    # -- \Recent ------------------------------------------------------------------------------
    def _claim(self) -> None:
        claimed = self.folder.claim_recent()
        if not claimed:
            return
        lo, hi = claimed[0], claimed[-1]
        if self._recent_hi and lo <= self._recent_hi[-1] + 1:
            self._recent_hi[-1] = max(hi, self._recent_hi[-1])
        else:
            self._recent_lo.append(lo)
            self._recent_hi.append(hi)

    def is_recent(self, uid: int) -> bool:
        if self.readonly:
            return self._peek_from is not None and uid >= self._peek_from
        k = bisect.bisect_right(self._recent_lo, uid) - 1
        return k >= 0 and uid <= self._recent_hi[k]

    def recent_count(self) -> int:
        uids = self.uids
        if self.readonly:
            return 0 if self._peek_from is None else len(uids) - bisect.bisect_left(uids, self._peek_from)
        return sum(bisect.bisect_right(uids, hi) - bisect.bisect_left(uids, lo)
                   for lo, hi in zip(self._recent_lo, self._recent_hi))

    def flags(self, ref: MessageRef) -> list[str]:
        """The message's flags as FETCH shows them: system flags first, \\Recent if ours."""
        flags = sorted(ref.flags, key=flag_order)
        if self.is_recent(ref.uid):
            flags.append(RECENT)
        return flags

    def holds_recent(self) -> bool:
        """Whether some message shows \\Recent to this session (else flag_texts will do)."""
        return self._peek_from is not None if self.readonly else bool(self._recent_lo)

    def recent_texts(self, lo: int, hi: int) -> "FlagTexts | None":
        """The texts of flags (``flag_texts`` or its \\Recent twin) that serve every message
        with a UID in ``lo``..``hi``, when they all show \\Recent to this session or none
        does; None when some do (``flag_list`` per message then)."""
        if self.readonly:
            start = self._peek_from
            if start is None or hi < start:
                return self.flag_texts
            return self._recent_flag_texts if lo >= start else None
        starts, ends = self._recent_lo, self._recent_hi
        k = bisect.bisect_right(starts, lo) - 1
        if k >= 0 and hi <= ends[k]:        # inside one range of recent UIDs
            return self._recent_flag_texts
        k = bisect.bisect_right(starts, hi) - 1
        if k < 0 or ends[k] < lo:           # the last range starting by hi ends before lo
            return self.flag_texts
        return None

    def flag_list(self, ref: MessageRef) -> bytes:
        """``(\\Seen \\Recent)``: the message's flags as FETCH shows them."""
        return (self._recent_flag_texts if self.is_recent(ref.uid) else self.flag_texts)[ref.flags]

    def flags_bytes(self, ref: MessageRef) -> bytes:
        """``FLAGS (...)`` for the message, \\Recent included if this session holds it."""
        return b"FLAGS " + self.flag_list(ref)

    # -- the folder's flags -------------------------------------------------------------------
    def flag_lines(self) -> list[bytes]:
        """``FLAGS`` and ``OK [PERMANENTFLAGS]`` for the keywords the folder has now (SELECT,
        and again whenever a keyword is new, before any FETCH shows it: RFC 3501 §7.2.6)."""
        keywords = self.folder.keywords
        self._announced = frozenset(keywords)
        flags = " ".join((*SYSTEM_FLAGS, *keywords))
        out = [f"* FLAGS ({flags})\r\n".encode("utf-8", "replace")]
        if self.readonly:
            out.append(b"* OK [PERMANENTFLAGS ()] Read-only folder\r\n")
        else:
            more = " \\*" if len(keywords) < MAX_KEYWORDS else ""
            out.append(f"* OK [PERMANENTFLAGS ({flags}{more})] Flags permitted\r\n"
                       .encode("utf-8", "replace"))
        return out

    def new_keyword_lines(self) -> list[bytes]:
        """``flag_lines`` if the folder has a keyword this session has not announced yet."""
        if self._announced.issuperset(self.folder.keywords):
            return []
        return self.flag_lines()

    # -- numbers ----------------------------------------------------------------------------------
    def seq(self, uid: int) -> int | None:
        """The sequence number of ``uid``, or None if the client does not know it."""
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def numbered(self, seqset: SequenceSet, by_uid: bool) -> Iterator[tuple[int, int]]:
        """(sequence number, UID) of each message in the set, ascending, lazily.

        For message numbers, Bad if the set names a number the client was never given
        (``*`` alone in an empty folder names nothing and is no error).  For UIDs, those
        not in the folder are left out (RFC 3501 §6.4.8).
        """
        uids = self.uids
        if not by_uid:
            exists = len(uids)
            for a, b in seqset.ranges:
                high = max(a or 0, b or 0)
                if high > exists and None not in (a, b):
                    raise Bad(f"no message {high} (the folder has {exists})")
            # zip over a slice: the pairs are made in C, not by a loop here (FETCH 1:*)
            return chain.from_iterable(zip(range(low, high + 1), uids[low - 1:high])
                                       for low, high in seqset.spans(exists))
        (low, high), *more = seqset.ranges or ((None, None),)
        if low == high and low is not None and not more:   # one UID: the usual pipelined command
            i = bisect.bisect_left(uids, low)
            return iter(((i + 1, low),) if i < len(uids) and uids[i] == low else ())
        largest = uids[-1] if uids else 0
        return self._uid_spans(seqset.spans(largest))

    def _uid_spans(self, spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        uids = self.uids
        for lo, hi in spans:
            i, j = bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi)
            yield from zip(range(i + 1, j + 1), uids[i:j])

    # -- changes ------------------------------------------------------------------------------------
    def sync(self, expunge_ok: bool) -> list[bytes]:
        """Untagged responses for what changed since the last look (see the module docstring).

        Raises NoSuchFolder or UidValidityChanged from the store: the session must end.
        """
        changes = self.folder.refresh()
        out: list[bytes] = self.new_keyword_lines()
        if changes.expunged:
            self.gone.update(uid for uid in changes.expunged if self.seq(uid) is not None)
        if expunge_ok and self.gone:
            out += self.expunge_responses(())
        last = self.uids[-1] if self.uids else 0
        added = [ref.uid for ref in changes.added if ref.uid > last]   # the store promises it
        if added:
            self.uids.extend(added)
            if not self.readonly:
                self._claim()
            elif self._peek_from is None:
                self._peek_from = added[0]
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % self.recent_count())
        for ref in changes.flags_changed:
            seq = self.seq(ref.uid)
            if seq is not None:
                out.append(b"* %d FETCH (UID %d %s)\r\n" % (seq, ref.uid, self.flags_bytes(ref)))
        return out

    def expunge_responses(self, uids) -> list[bytes]:
        """``* n EXPUNGE`` for ``uids`` (expunged by this session) and every ghost; the
        numbers are taken out of ``uids`` as the responses go (RFC 3501 §7.4.1)."""
        doomed = self.gone.union(uids)
        self.gone.clear()
        seqs = sorted(s for s in map(self.seq, doomed) if s is not None)
        if not seqs:
            return []
        if len(seqs) < 64:
            for s in reversed(seqs):
                del self.uids[s - 1]
        else:
            self.uids = array("I", [u for u in self.uids if u not in doomed])
        return [b"* %d EXPUNGE\r\n" % (s - i) for i, s in enumerate(seqs)]

    def first_unseen(self) -> int | None:
        message = self.folder.message
        for seq, uid in enumerate(self.uids, 1):
            ref = message(uid)
            if ref is not None and "\\Seen" not in ref.flags:
                return seq
        return None
