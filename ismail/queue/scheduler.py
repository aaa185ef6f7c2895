"""The queue manager (Postfix's qmgr): which queued message goes out next, and what then.

Every queue entry is indexed in memory with the time of its next try, in a heap.
A dispatcher thread hands due entries to a pool of delivery threads whose size is
``outgoing.max_connections``; each thread holds at most one outgoing connection, so
the pool size *is* the outgoing limit.  A new limit resizes the pool: threads are
added at once, and surplus threads retire after the delivery they are doing.

After each attempt the entry's state is saved atomically (or the entry removed when
every recipient is done), so a crash at worst repeats a delivery, never loses one.
Per recipient: 2xx done, 5xx bounced, 4xx or no connection retried with a doubling
interval (``retry.*``), and bounced when ``retry.lifetime_hours`` runs out.  Bounces
are RFC 3464 reports injected back through MailServer.inject with a null sender;
a message with a null sender is never bounced: its report goes to the postmaster.

Messages for one next hop (a *lane*: the SmartHost, a route, or a domain's MX hosts)
wait in that lane's line, and a delivery thread takes several of them in one request
(Sender.deliver_many): they share one connection, and with PIPELINING each text goes
in the same write as the next envelope (transport.py), so a burst costs one round
trip per message and one hand-over between threads per batch instead of per message.
A thread takes as many as the lane has lately delivered in LANE_PATIENCE (at least
one, at most LANE_BATCH), so a slow destination gets one message per thread and its
messages spread over several connections; a lane gets another thread when a message
has waited LANE_PATIENCE for one, or when a whole batch waits.  Once a lane has all the
connections the outgoing limit allows, each thread takes at least its share of what
waits: a distant SmartHost then gets batches, one round trip per message.  Each
message keeps its own results, records and retries.

``queue flush`` from another process drops a file named ``flush`` into DATA/queue/;
the dispatcher looks for it every second.
"""
from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

from .bounce import FailedRecipient, build_dsn, is_bounce_loop
from .courier import Courier
from .sender import Result, Sender
from .spool import FLUSH_FILE, QueueEntry

if TYPE_CHECKING:
    from ..service import MailServer

log = logging.getLogger("ismail.scheduler")

BATCH_RECIPIENTS = 50  # recipients of one domain per transaction
FRESH_BYTES = 32 * 1024 * 1024  # at most this much of newly queued mail is kept in memory
LANE_BATCH = 20        # messages in one delivery request at most
LANE_BATCH_BYTES = 8 * 1024 * 1024   # and this much of their text
LANE_PATIENCE = 0.05   # seconds a message waits for its lane's threads before it gets another
# Intervals this short are timed with time.perf_counter: on Windows, Python 3.11's
# time.monotonic moves in ticks of 15.6 ms (3.13 gave it perf_counter's clock).
LOAD_CHUNK = 1000      # entries read at the start are handed to the dispatcher this many at a time
LOAD_STEP = 100        # and the reading rests after this many if new mail came meanwhile,
LOAD_REST = 9          # for this many times as long as it took to read them,
LOAD_REST_MAX = 0.2    # but at most this many seconds at a time


class _Plan:
    """One attempt at one entry: its text, one delivery item per part of its recipients."""

    __slots__ = ("data", "failed", "now", "parts", "items")

    def __init__(self, data: bytes, failed: list, now: float) -> None:
        self.data, self.failed, self.now = data, failed, now
        self.parts: list[list] = []
        self.items: list[tuple] = []


def next_delay(attempts: int, first: int, maximum: int) -> int:
    """Postfix-like back-off: first, 2x, 4x ... capped at maximum (attempts counts from 1)."""
    return min(first * (2 ** max(attempts - 1, 0)), maximum)


class DeliveryPool:
    """Threads that run delivery jobs; at most ``size`` at once, resizable while they work.

    The next job goes to the thread that became idle *last*, and a thread that finishes
    a job takes the next waiting one itself.  When destinations answer fast, a few hot
    threads do all the work and the rest sleep: twenty threads taking turns would spend
    more time handing the GIL around than sending mail.  A slow destination keeps its
    thread busy, and the next job simply wakes another.
    """

    class _Worker:
        def __init__(self) -> None:
            self.wake = threading.Event()
            self.job: Callable[[], None] | None = None

    def __init__(self, size: int, on_idle: Callable[[], None], on_exit: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._alive = 0
        self._idle: list[DeliveryPool._Worker] = []   # a stack: the last one in goes out first
        self._backlog: collections.deque = collections.deque()
        self._on_idle = on_idle
        self._on_exit = on_exit

    def resize(self, size: int) -> None:
        with self._lock:
            self._size = size
            wake = list(self._idle) if self._alive > size else []
            start = []
            while self._backlog and self._alive < size:
                start.append(self._backlog.popleft())
                self._alive += 1
        for worker in wake:  # surplus idle threads retire now, busy ones after their job
            worker.wake.set()
        for job in start:
            self._start(job)

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                worker = self._idle.pop()
                worker.job = job
            elif self._alive < self._size:
                self._alive += 1
                worker = None
            else:
                self._backlog.append(job)
                return
        if worker is None:
            self._start(job)
        else:
            worker.wake.set()

    def stop(self) -> None:
        self.resize(0)

    @property
    def waiting(self) -> int:
        return len(self._backlog)

    def _start(self, job: Callable[[], None]) -> None:
        worker = DeliveryPool._Worker()
        worker.job = job
        threading.Thread(target=self._work, args=(worker,), name="delivery", daemon=True).start()

    def _work(self, me: "DeliveryPool._Worker") -> None:
        try:
            while True:
                job, me.job = me.job, None
                if job is not None:
                    try:
                        job()
                    except Exception:
                        log.exception("a delivery failed unexpectedly")
                with self._lock:
                    if self._alive > self._size:  # the limit was lowered: this one retires
                        self._alive -= 1
                        if me in self._idle:
                            self._idle.remove(me)
                        return
                    if self._backlog:
                        me.job = self._backlog.popleft()
                        continue
                    if me not in self._idle:
                        me.wake.clear()
                        self._idle.append(me)
                if not me.wake.wait(1.0):
                    self._on_idle()  # hang up a cached connection nobody used lately
        finally:
            self._on_exit()


class _Lane:
    """The messages waiting for one next hop, and how many threads serve it."""

    __slots__ = ("waiting", "runners")

    def __init__(self) -> None:
        self.waiting: collections.deque[tuple[str, float]] = collections.deque()  # (id, since)
        self.runners = 0


class QueueManager:
    def __init__(self, server: "MailServer") -> None:
        self.server = server
        self.spool = server.spool
        self.stats = server.stats
        settings = server.settings
        transport = None
        if settings.outgoing.delivery_process:
            transport = Courier(server.stats, server.data_dir, settings.server_name,
                                settings.dns_servers, keys=server.dkim_keys)
        self.sender = Sender(settings, server.stats, transport=transport, keys=server.dkim_keys)
        self.sender.route_table = getattr(server, "routes", None)
        self._cond = threading.Condition()
        self._entries: dict[str, QueueEntry] = {}
        self._heap: list[tuple[float, str]] = []
        self._busy: set[str] = set()
        self._flush_again: set[str] = set()  # busy when a flush or an ETRN came: due again when done
        self._after_busy: dict[str, float] = {}  # next try of an entry whose attempt is not over
        self._fresh: dict[str, bytes] = {}  # messages not yet tried, as they were received
        self._fresh_bytes = 0
        self._lanes: dict[tuple, _Lane] = {}
        self._pace: dict[tuple, float] = {}  # seconds per message each lane took lately
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.pool: DeliveryPool | None = None
        # The entries on disk at the start are read by a thread of their own (load_later)
        # while the server already serves.  What happens to entries meanwhile, for those
        # not read yet: a flush (all due now), an ETRN (its domains due now), a deletion.
        self._loader: threading.Thread | None = None
        self._loaded = threading.Event()
        self._loaded.set()
        self._load_flush = False
        self._load_domains: set[str] = set()
        self._load_gone: set[str] = set()

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Take new mail from now on (the spool hands over each entry it commits) and
        start the delivery threads.  Called before the listeners open, so no message
        accepted while the server starts can miss the queue; the entries already on disk
        come with ``load_later``, once the listeners are open."""
        self.pool = DeliveryPool(self.server.settings.outgoing.max_connections,
                                 on_idle=self.sender.close_idle,
                                 on_exit=lambda: self.sender.close_idle(force=True))
        self.spool.on_enqueue = self.add
        self._thread = threading.Thread(target=self._dispatch, name="qmgr", daemon=True)
        self._thread.start()

    def load_later(self, queued_ids: list[str], done: Callable[[int, float], None] | None = None) -> None:
        """``load`` in a thread of its own; ``done(count, seconds)`` is called from it once
        every entry is read (not when a stop cut the reading short).  With 100,000 entries
        the reading takes seconds (more on Windows), and the server serves meanwhile: the
        window shows it running, and a stop does not wait for the rest of the queue."""
        if not queued_ids:
            return
        self._loaded.clear()

        def run() -> None:
            t = time.monotonic()
            try:
                count = self.load(queued_ids)
                if done is not None and not self._stopping:
                    done(count, time.monotonic() - t)
            finally:
                self._loaded.set()
        self._loader = threading.Thread(target=run, name="queue-load", daemon=True)
        self._loader.start()

    def wait_loaded(self, timeout: float) -> bool:
        """Whether the entries on disk at the start are all read (within ``timeout``)."""
        return self._loaded.wait(timeout)

    def load(self, queued_ids: list[str]) -> int:
        """The entries that were on disk when the server started (an unreadable one is
        reported and set aside by the spool), handed over LOAD_CHUNK at a time; how many
        were taken.  A stop ends the reading at the next entry."""
        strings: dict[str, str] = {}   # equal texts of the entries kept once (spool.QueueEntry)
        taken = 0
        step_mail, step_began = self._mail_so_far(), time.perf_counter()
        for first in range(0, len(queued_ids), LOAD_CHUNK):
            loaded: list[QueueEntry] = []
            for n, qid in enumerate(queued_ids[first:first + LOAD_CHUNK], first):
                if self._stopping:
                    return taken
                if n and n % LOAD_STEP == 0:
                    self._load_rest(step_mail, step_began)
                    step_mail, step_began = self._mail_so_far(), time.perf_counter()
                try:
                    loaded.append(self.spool.load(qid, strings))
                except FileNotFoundError:
                    log.info("%s: gone from the queue before it was read (deleted)", qid)
                except (ValueError, OSError) as e:
                    log.error("%s", e)
            taken += self._take_loaded(loaded)
        with self._cond:
            self._load_flush = False
            self._load_domains.clear()
            self._load_gone.clear()
        return taken

    def _mail_so_far(self) -> int:
        return self.stats.get("messages_received")

    def _load_rest(self, mail_before: int, began: float) -> None:
        """(The queue's reading thread) if new mail came while it read its last LOAD_STEP
        entries, it rests LOAD_REST times as long as those took.  The reading and the
        serving share Python's one interpreter lock: without the rests, mail that came
        while 100,000 entries were read was relayed at half the usual rate.  What the
        reading brings is mail deferred before, mostly not due for a while yet."""
        if self._mail_so_far() != mail_before:
            time.sleep(min((time.perf_counter() - began) * LOAD_REST, LOAD_REST_MAX))

    def _take_loaded(self, loaded: list[QueueEntry]) -> int:
        with self._cond:
            if self._stopping:
                return 0
            fresh = [e for e in loaded if e.id not in self._entries and e.id not in self._load_gone]
            for entry in fresh:
                self._entries[entry.id] = entry
                due = entry.next_try
                if self._load_flush or (self._load_domains and self._waits_for(entry, self._load_domains)):
                    due = 0.0
                heapq.heappush(self._heap, (due, entry.id))
            self._cond.notify()
        self.stats.add("queue_length", len(fresh))
        return len(fresh)

    @staticmethod
    def _waits_for(entry: QueueEntry, domains: set[str]) -> bool:
        return any(r.state == "pending" and r.address.rpartition("@")[2].lower() in domains
                   for r in entry.recipients)

    def stop(self, grace: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            for lane in self._lanes.values():  # not under way: they wait for the next start
                for qid, _ in lane.waiting:
                    self._busy.discard(qid)
                lane.waiting.clear()
            self._cond.notify_all()
        loader = self._loader
        if loader is not None:
            loader.join(5.0)  # it stops at its next entry
        if self.pool is not None:
            self.pool.stop()
        deadline = time.monotonic() + grace
        while self._busy and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._busy:
            log.warning("stopped with %d delivery(ies) under way; they will be retried", len(self._busy))
        self.sender.transport.close()

    def apply(self, settings) -> None:
        self.sender.apply(settings)
        if self.pool is not None:
            self.pool.resize(settings.outgoing.max_connections)

    def add(self, entry: QueueEntry, data: bytes | None = None) -> None:
        """A new entry (called by the spool right after it is committed)."""
        due_now = entry.next_try <= time.time() and self.pool is not None
        key = self._lane_key(entry) if due_now else None
        start = False
        with self._cond:
            self._entries[entry.id] = entry
            if data is not None and self._fresh_bytes + len(data) <= FRESH_BYTES:
                self._fresh[entry.id] = data
                self._fresh_bytes += len(data)
            if due_now:
                self._busy.add(entry.id)  # straight to a delivery thread, no detour via the heap
                if key is not None:
                    start = self._line_up(key, entry.id)
            else:
                heapq.heappush(self._heap, (entry.next_try, entry.id))
                self._cond.notify()
        self.stats.add("queue_length")
        if due_now:
            if key is None:
                self.pool.submit(lambda: self._deliver(entry.id))
            elif start:
                self.pool.submit(lambda: self._run_lane(key))

    def flush(self) -> None:
        """Everything deferred is due now."""
        with self._cond:
            self._load_flush = not self._loaded.is_set()  # and those not read yet, as they come
            self._heap = [(0.0, qid) for qid in self._entries if qid not in self._busy]
            heapq.heapify(self._heap)
            # Those being tried right now: if this attempt defers one, it goes again at
            # once, not at its next try (as for an ETRN, below).
            self._flush_again.update(qid for qid in self._busy if qid in self._entries)
            self._cond.notify()
        log.info("queue flush: %d message(s) due now", len(self._heap))

    def flush_domain(self, domain: str) -> int:
        """ETRN: every message with a recipient waiting in ``domain`` is due now; how many."""
        domain = domain.lower()
        with self._cond:
            if not self._loaded.is_set():
                self._load_domains.add(domain)  # and those not read yet, as they come
            waiting = [qid for qid, e in self._entries.items() if self._waits_for(e, {domain})]
            for qid in waiting:
                if qid in self._busy:
                    # Being tried right now (perhaps against a server that was still down):
                    # if this attempt defers it, it goes again at once, not in an hour.
                    self._flush_again.add(qid)
                else:
                    heapq.heappush(self._heap, (0.0, qid))
            self._cond.notify()
        return len(waiting)

    def delete(self, queue_id: str) -> bool:
        """Remove a message from the queue (a delivery under way finishes, then finds it gone)."""
        with self._cond:
            entry = self._entries.get(queue_id)
            if not self._loaded.is_set():
                self._load_gone.add(queue_id)  # not to be taken if the reading comes to it later
        self.spool.remove(queue_id)
        if entry is None:
            return False
        self._forget(entry)
        log.info("%s: deleted from the queue", queue_id)
        return True

    def entries(self) -> list[QueueEntry]:
        with self._cond:
            return list(self._entries.values())

    # -- dispatching ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        flush_file = self.spool.dir / FLUSH_FILE
        next_check = 0.0
        while True:
            due: list[str] = []
            with self._cond:
                if self._stopping:
                    return
                now = time.time()
                while self._heap and self._heap[0][0] <= now:
                    _, qid = heapq.heappop(self._heap)
                    if qid in self._entries and qid not in self._busy:
                        self._busy.add(qid)
                        due.append(qid)
                lanes = self._lanes_to_widen()
                if not due and not lanes:
                    wait = self._heap[0][0] - now if self._heap else 1.0
                    if any(lane.waiting for lane in self._lanes.values()):
                        wait = min(wait, LANE_PATIENCE)
                    self._cond.wait(min(max(wait, 0.01), 1.0))
            for key in lanes:
                self.pool.submit(lambda key=key: self._run_lane(key))
            for qid in due:
                entry = self._entries.get(qid)
                key = self._lane_key(entry) if entry is not None else None
                if key is None:
                    self.pool.submit(lambda qid=qid: self._deliver(qid))
                    continue
                with self._cond:
                    start = self._line_up(key, qid)
                if start:
                    self.pool.submit(lambda key=key: self._run_lane(key))
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                if flush_file.exists():
                    flush_file.unlink(missing_ok=True)
                    self.flush()

    # -- lanes ----------------------------------------------------------------------------------
    def _lane_key(self, entry: QueueEntry) -> tuple | None:
        """The lane of an entry whose recipients waiting are all in one domain and fit one
        transaction; None for any other (it is delivered on its own)."""
        domain = None
        count = 0
        for r in entry.recipients:
            if r.state == "pending":
                d = r.address.rpartition("@")[2].lower()
                if domain is None:
                    domain = d
                elif d != domain:
                    return None
                count += 1
        if domain is None or count > BATCH_RECIPIENTS:
            return None
        try:
            return self.sender.lane(domain)
        except Exception:
            log.exception("cannot tell the next hop of %s; delivered on its own", domain)
            return None

    def _line_up(self, key: tuple, qid: str) -> bool:
        """(Under the lock) ``qid`` waits in its lane; True when a thread is to start for it."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.waiting.append((qid, time.perf_counter()))
        if lane.runners == 0 or (len(lane.waiting) >= LANE_BATCH and lane.runners < self._lane_cap()
                                 and not self.pool.waiting):
            lane.runners += 1
            return True
        if len(lane.waiting) == 1 and lane.runners < self._lane_cap():
            self._cond.notify()  # the dispatcher gives it another thread if it waits too long
        return False

    def _lane_cap(self) -> int:
        return self.server.settings.outgoing.max_connections

    def _lanes_to_widen(self) -> list[tuple]:
        """(Under the lock) the lanes whose first message has waited LANE_PATIENCE for a
        thread, each counted as having one more."""
        if not self._lanes or self.pool.waiting:
            return []  # jobs already wait for a thread: another one would only wait too
        cap = self._lane_cap()
        late = time.perf_counter() - LANE_PATIENCE
        keys = []
        for key, lane in self._lanes.items():
            if lane.waiting and lane.waiting[0][1] <= late and lane.runners < cap:
                lane.runners += 1
                keys.append(key)
        return keys

    def _batch_size(self, key: tuple, lane: _Lane) -> int:
        """(Under the lock) how many waiting messages a thread takes: what the lane has
        lately delivered in LANE_PATIENCE (one while that is not known); and when the lane
        has all the connections it may have, at least its share of what waits (they would
        wait anyway, and over one connection they go one round trip each)."""
        pace = self._pace.get(key)  # None: how fast this hop is is not known yet
        most = 1 if pace is None else int(LANE_PATIENCE / max(pace, 1e-6))
        cap = self._lane_cap()
        if lane.runners >= cap:
            most = max(most, -(-len(lane.waiting) // cap))
        return max(1, min(LANE_BATCH, most))

    def _run_lane(self, key: tuple) -> None:
        """A delivery thread's work for a lane: batches of its messages until none waits."""
        took = None  # seconds per message of the batch just sent
        while True:
            with self._cond:
                if took is not None:
                    pace = self._pace.get(key)
                    self._pace[key] = took if pace is None else 0.7 * pace + 0.3 * took
                    if len(self._pace) > 10_000:
                        self._pace.clear()
                lane = self._lanes.get(key)
                if lane is None:
                    return
                if not lane.waiting or self._stopping:
                    lane.runners -= 1
                    if lane.runners <= 0 and not lane.waiting:
                        del self._lanes[key]
                    return
                behind = took is not None and self.pool.waiting > 0
                if not behind:
                    most = self._batch_size(key, lane)
                    batch: list[str] = []
                    size = 0
                    while lane.waiting and len(batch) < most and size < LANE_BATCH_BYTES:
                        qid, _ = lane.waiting.popleft()
                        entry = self._entries.get(qid)
                        size += entry.size if entry is not None else 0
                        batch.append(qid)
            if behind:
                # Other work waits for a thread: this lane goes behind it (its runner stays
                # counted, so no other starts meanwhile).
                self.pool.submit(lambda: self._run_lane(key))
                return
            started = time.perf_counter()
            try:
                self._deliver_many(batch)
            except Exception:  # (it reports its own failures; this thread must not die of one)
                log.exception("a delivery failed unexpectedly")
            took = (time.perf_counter() - started) / len(batch)

    # -- one message ----------------------------------------------------------------------------
    def _deliver(self, qid: str) -> None:
        self._deliver_many([qid])

    def _deliver_many(self, qids: list[str]) -> None:
        """One attempt for each message, in one request to the sender."""
        retry = self.server.settings.retry.first_seconds
        plans = []
        try:
            for qid in qids:
                entry = self._entries.get(qid)
                plan = self._guarded(entry, self._plan) if entry is not None else None
                if plan is not None:
                    plans.append((entry, plan))
            # Each message is recorded as soon as all its items are answered, while the
            # others of the request are still going: a crash repeats only those under way.
            owner: list[tuple[int, int]] = []   # item -> (its plan, its place in the plan)
            for p, (_, plan) in enumerate(plans):
                owner += [(p, i) for i in range(len(plan.items))]
            got: list[list] = [[None] * len(plan.items) for _, plan in plans]
            concluded = [False] * len(plans)

            def conclude(p: int) -> None:
                concluded[p] = True
                entry, plan = plans[p]
                self._guarded(entry, lambda e: self._conclude(e, plan, [r or {} for r in got[p]]))
                with self._cond:  # its attempt is over, whatever the others of the batch do
                    self._release(entry.id)

            def arrived(index: int, results: dict[str, Result]) -> None:
                p, i = owner[index]
                if concluded[p] or got[p][i] is not None:
                    return
                got[p][i] = results
                if None not in got[p]:
                    conclude(p)

            items = [item for _, plan in plans for item in plan.items]
            try:
                if items:
                    self.sender.deliver_many(items, arrived)
            except Exception:
                log.exception("delivery attempt of %d message(s) failed unexpectedly; will retry",
                              len(plans))
                for p, (entry, _) in enumerate(plans):
                    if not concluded[p]:
                        concluded[p] = True
                        self._reschedule(entry, time.time() + retry)
            for p in range(len(plans)):
                if not concluded[p]:  # no recipient to send to (a loop's bounce), or unanswered
                    conclude(p)
        finally:
            with self._cond:
                for qid in qids:
                    self._release(qid)

    def _release(self, qid: str) -> None:
        """(Under the lock) ``qid``'s attempt is over: its next try goes on the heap now."""
        if qid not in self._busy:
            return
        self._busy.discard(qid)
        when = self._after_busy.pop(qid, None)
        if qid in self._flush_again:  # a flush or an ETRN came during this attempt
            self._flush_again.discard(qid)
            when = 0.0
        if when is not None and qid in self._entries:
            heapq.heappush(self._heap, (when, qid))
            self._cond.notify()

    def _guarded(self, entry: QueueEntry, step):
        """``step(entry)``'s value; on a failure (the disk, or a bug, which must not strand
        the message) it is logged, the entry tried again later, and None returned."""
        try:
            return step(entry)
        except OSError as e:
            log.error("%s: cannot read or update the queue entry: %s", entry.id, e)
        except Exception:
            log.exception("%s: delivery attempt failed unexpectedly; will retry", entry.id)
        self._reschedule(entry, time.time() + self.server.settings.retry.first_seconds)
        return None

    def _plan(self, entry: QueueEntry) -> "_Plan | None":
        """What one attempt at ``entry`` sends (None: the entry is gone)."""
        with self._cond:
            data = self._fresh.pop(entry.id, None)
            self._fresh_bytes -= len(data) if data is not None else 0
        try:
            if data is None or not self.spool.exists(entry.id):
                data = self.spool.read_message(entry.id)
        except FileNotFoundError:
            log.info("%s: gone from the queue (deleted)", entry.id)
            self._forget(entry)
            return
        pending = [r for r in entry.recipients if r.state == "pending"]
        failed: list[FailedRecipient] = []
        if is_bounce_loop(data):
            for r in pending:
                r.state, r.last_error = "bounced", "5.4.6 Too many Received: headers: mail forwarding loop"
                failed.append(FailedRecipient(r.address, "5.4.6", r.last_error))
            pending = []
        sign_domain = self.server.signing_domain(data) if entry.sign and pending else ""
        by_domain: dict[str, list] = {}
        for r in pending:
            by_domain.setdefault(r.address.rpartition("@")[2].lower(), []).append(r)
        plan = _Plan(data, failed, time.time())
        for domain, rcpts in by_domain.items():
            for i in range(0, len(rcpts), BATCH_RECIPIENTS):
                batch = rcpts[i:i + BATCH_RECIPIENTS]
                plan.parts.append(batch)
                plan.items.append((entry.sender, [r.address for r in batch], domain, data,
                                   entry.smtputf8, entry.body, sign_domain))
        return plan

    def _conclude(self, entry: QueueEntry, plan: "_Plan", results: list[dict[str, Result]]) -> None:
        """Record what the attempt gave; the entry is removed, bounced or saved for later."""
        settings = self.server.settings
        data, failed, now = plan.data, plan.failed, plan.now
        for batch, answers in zip(plan.parts, results):
            for r in batch:
                self._record(entry, r, answers.get(r.address) or Result(0, "4.3.0 No result"), failed)
        entry.attempts += 1
        left = [r for r in entry.recipients if r.state == "pending"]
        for r in left:
            hours = self._lifetime_hours(r.address)  # relay domains may wait longer
            if now >= entry.arrival + hours * 3600:
                r.state = "bounced"
                failed.append(FailedRecipient(r.address, "5.4.7", f"Gave up after {hours}"
                                              f" hours: {r.last_error}"))
        left = [r for r in left if r.state == "pending"]
        if failed:
            try:
                self._bounce(entry, data, failed)
            except BaseException:
                # The report could not be stored: its recipients stay to be tried again
                # (a refusal for good will come again, and its report with it), rather
                # than be marked done with nobody told.  Those sent stay sent.
                bounced = {f.address for f in failed}
                for r in entry.recipients:
                    if r.state == "bounced" and r.address in bounced:
                        r.state = "pending"
                raise
        if not left:
            self.spool.remove(entry.id)
            self._forget(entry)
            if not failed:
                self.stats.add("messages_sent")
            return
        delay = next_delay(entry.attempts, settings.retry.first_seconds, settings.retry.max_interval_seconds)
        entry.next_try = time.time() + delay
        entry.last_error = left[0].last_error
        self._maybe_warn(entry, data)
        if self.spool.exists(entry.id):  # not deleted meanwhile by `queue delete`
            self.spool.save(entry)
        self.stats.add("deliveries_deferred", len(left))
        log.info("%s: deferred %d recipient(s), next try in %ds: %s", entry.id, len(left), delay,
                 entry.last_error)
        self._reschedule(entry, entry.next_try)

    def _lifetime_hours(self, address: str) -> int:
        lifetime = getattr(self.server, "lifetime_hours", None)
        if lifetime is None:
            return self.server.settings.retry.lifetime_hours
        return lifetime(address.rpartition("@")[2].lower())

    def _record(self, entry: QueueEntry, r, result: Result, failed: list[FailedRecipient]) -> None:
        r.attempts += 1
        r.last_error = result.text
        if result.sent:
            r.state = "sent"
            self.stats.add("recipients_sent")
            log.info("%s: to=<%s> relay=%s status=sent (%s)", entry.id, r.address, result.remote, result.text)
        elif result.permanent:
            r.state = "bounced"
            failed.append(FailedRecipient(r.address, result.status(), result.text, result.remote))
            self.stats.add("recipients_bounced")
            log.info("%s: to=<%s> relay=%s status=bounced (%s)", entry.id, r.address,
                     result.remote or "none", result.text)
        else:
            log.info("%s: to=<%s> relay=%s status=deferred (%s)", entry.id, r.address,
                     result.remote or "none", result.text)

    def _bounce(self, entry: QueueEntry, data: bytes, failed: list[FailedRecipient], delayed: bool = False) -> None:
        settings = self.server.settings
        postmaster = f"postmaster@{settings.primary_domain}"
        to = entry.sender or postmaster  # a bounce is never bounced: the postmaster hears of it
        report = build_dsn(reporting_mta=settings.server_name,
                           postmaster=f"MAILER-DAEMON@{settings.primary_domain}", to=to,
                           queue_id=entry.id, arrival=entry.arrival, recipients=failed, original=data,
                           retry_until=entry.arrival + settings.retry.lifetime_hours * 3600)
        if not entry.sender:
            log.warning("%s: undeliverable message with a null sender: report sent to %s", entry.id, to)
        self.server.inject(sender="", recipients=[to], data=report)
        if not delayed:
            self.stats.add("messages_bounced")

    def _maybe_warn(self, entry: QueueEntry, data: bytes) -> None:
        warn = self.server.settings.retry.warn_hours
        if not warn or not entry.sender or entry.extra.get("warned"):
            return
        if time.time() < entry.arrival + warn * 3600:
            return
        delayed = [FailedRecipient(r.address, "4.4.1", r.last_error, action="delayed")
                   for r in entry.recipients if r.state == "pending"]
        self._bounce(entry, data, delayed, delayed=True)
        entry.extra["warned"] = True

    def _reschedule(self, entry: QueueEntry | None, when: float) -> None:
        if entry is None:
            return
        with self._cond:
            if entry.id not in self._entries:
                return
            if entry.id in self._busy:
                # Its attempt is not over (a batch's other messages are still going): the
                # dispatcher drops a turn it finds under way, so the turn waits for _release.
                # (Pushed at once, a retry due before the batch ended was lost for good.)
                self._after_busy[entry.id] = when
                return
            heapq.heappush(self._heap, (when, entry.id))
            self._cond.notify()

    def _forget(self, entry: QueueEntry) -> None:
        with self._cond:
            self._flush_again.discard(entry.id)
            data = self._fresh.pop(entry.id, None)
            self._fresh_bytes -= len(data) if data is not None else 0
            if self._entries.pop(entry.id, None) is not None:
                self.stats.add("queue_length", -1)
