"""Logging: the mail log under DATA/logs/ (rotating, like Postfix's maillog) and, for `run`, stderr.

At a thousand messages a second the stock handlers cost more than the mail does:
each line is written and flushed from the session's own thread, and the rotating
handler stats the file and seeks on every line - a dozen system calls, each one a
hand-over of the GIL between busy threads.  MailLogHandler only appends the record to a
list in the calling thread; one writer thread formats the list and writes it out every
FLUSH_SECONDS in one go.  (Formatting a line in the SMTP loop cost about as much as
answering a command: two lines a message took 5-10 % of the rate at one session.)  A
record whose arguments could change before then (anything but strings, numbers and
paths), or that carries an exception, is formatted at once.  Warnings and errors are
written at once, and everything pending is written on close (logging.shutdown runs at
exit).
"""
from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from pathlib import Path, PurePath
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "maillog.log"
LOG_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 9  # with the live file, ten files of 5 MB
FLUSH_SECONDS = 0.25
_SETTLED = (str, int, float, bytes, PurePath, type(None))  # arguments that cannot change later


class MailLogHandler(logging.Handler):
    def __init__(self, path: Path | None, stream: TextIO | None = None,
                 max_bytes: int = LOG_BYTES, backups: int = LOG_BACKUPS) -> None:
        super().__init__()
        self.path = path
        self.stream = stream
        self.max_bytes = max_bytes
        self.backups = backups
        self._pending: collections.deque[str | logging.LogRecord] = collections.deque()
        self._io_lock = threading.Lock()
        self._file = None
        self._size = 0
        if path is not None:
            self._open()
        self._stopping = threading.Event()
        self._writer = threading.Thread(target=self._write_regularly, name="log-writer", daemon=True)
        self._writer.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: appending to a deque is atomic, and formatting needs no lock.
        # (The stock handle() takes an RLock per line that every session thread queues on.)
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if (record.exc_info is None and record.stack_info is None and type(record.msg) is str
                and type(args) is tuple and all(isinstance(a, _SETTLED) for a in args)):
            self._pending.append(record)  # formatted by the writer (flush), as it was now
        else:
            line = self._line(record)
            if line is not None:
                self._pending.append(line)
        if record.levelno >= logging.WARNING:
            self.flush()

    def _line(self, record: logging.LogRecord) -> str | None:
        try:
            return self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return None

    def flush(self) -> None:
        with self._io_lock:  # one writer at a time, so lines stay in order
            batch = []
            pending = self._pending
            while pending:
                item = pending.popleft()  # each popleft is atomic: no line is lost
                if type(item) is not str:
                    item = self._line(item)
                    if item is None:
                        continue
                batch.append(item)
            if batch:
                self._write("".join(batch))

    def _write(self, text: str) -> None:
        if self._file is not None:
            data = text.encode("utf-8", "replace")
            try:
                if self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                self._file.write(data)
                self._file.flush()
                self._size += len(data)
            except OSError as e:
                if sys.stderr is not None:
                    sys.stderr.write(f"ismail: cannot write the mail log: {e}\n")
        if self.stream is not None:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self._stopping.set()
        self.flush()
        with self._io_lock:
            if self._file is not None:
                self._file.close()
                self._file = None
        super().close()

    def _write_regularly(self) -> None:
        while not self._stopping.wait(FLUSH_SECONDS):
            self.flush()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._size = self._file.tell()

    def _rotate(self) -> None:
        """maillog.log -> .1 -> .2 ... -> .9 (the oldest is dropped). Closed first: Windows needs that."""
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._open()


class _Formatter(logging.Formatter):
    """The stock format, with the date and time formatted once a second, not once a line."""

    _cache = (-1, "")  # (second, its text): one attribute, so threads never see half of it

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached, text = self._cache
        if second != cached:
            text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._cache = (second, text)
        return "%s,%03d" % (text, record.msecs)


def setup_logging(data_dir: Path, to_stderr: bool = True, level: int = logging.INFO) -> MailLogHandler:
    """Send the `ismail` loggers to DATA/logs/maillog.log (and stderr); returns the handler."""
    logging.logProcesses = False  # saves a getpid() per line; there is only one process
    logging.logMultiprocessing = False
    logging.logThreads = False  # the format names no thread
    logging._srcfile = None  # no stack walk per line (the logging docs' own optimisation advice)
    handler = MailLogHandler(Path(data_dir) / "logs" / LOG_FILE,
                             sys.stderr if to_stderr else None)  # a windowed .exe has no stderr
    handler.setFormatter(_Formatter(LOG_FORMAT))
    logger = logging.getLogger("ismail")
    logger.setLevel(level)
    logger.addHandler(handler)
    logger.propagate = False  # the CLI's basicConfig handler would print every line twice
    return handler


class Repeats:
    """A warning that a flood would repeat thousands of times a minute, said once a minute.

    A client that connects in a loop is refused each time, and a line per refusal filled
    the mail log's 50 MB in a minute or two, so the history a user looks into when mail
    goes missing was gone (a fuzz run: 260,000 refused connections a minute from one
    address).  The first event of a key is logged with a note that the next minute's are
    counted; the count is logged when the minute is over and the next event of any key
    comes (the counters in the status window have every refusal).
    """

    def __init__(self, logger: logging.Logger, window: float = 60.0, max_keys: int = 1000,
                 clock=time.monotonic) -> None:
        self.log = logger
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[object, list] = {}  # key -> [started, events not logged, summary]
        self._swept = 0.0

    def warning(self, key: object, summary: str, msg: str, *args: object) -> None:
        """Log ``msg % args`` unless ``key`` was logged less than a window ago; ``summary``
        names the events for the count line ("SMTP connections refused from 192.0.2.1
        (rate)")."""
        now = self._clock()
        said: list[tuple[str, int, float]] = []
        with self._lock:
            if now - self._swept >= 1.0:
                self._swept = now
                for k, (started, counted, what) in list(self._open.items()):
                    if now - started >= self.window:
                        del self._open[k]
                        if counted:
                            said.append((what, counted, self.window))
            entry = self._open.get(key)
            if entry is not None:
                entry[1] += 1
            else:
                while len(self._open) >= self.max_keys:  # the oldest first: dicts keep order
                    started, counted, what = self._open.pop(next(iter(self._open)))
                    if counted:
                        said.append((what, counted, now - started))
                self._open[key] = [now, 0, summary]
        for what, counted, seconds in said:
            self.log.warning("%s: %d more in the last %d s, not logged one by one", what,
                             counted, max(1, round(seconds)))
        if entry is None:
            self.log.warning(msg + " (more in the next %d s are counted, not logged one by one)",
                             *args, round(self.window))
