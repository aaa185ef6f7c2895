"""The only bridge between the server's threads and Tk: queues drained by ``after()``.

Tk must only be called from the thread that created it.  Server threads therefore never
touch a widget: log records go onto a bounded ``queue.Queue`` through ``QueueLogHandler``,
and work the window hands to a thread (starting or stopping the server, a port test)
reports back through ``Pump``, which the main thread drains every POLL_MS.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import tkinter as tk
from typing import Any, Callable

log = logging.getLogger("ismail.gui")

POLL_MS = 100
LOG_QUEUE_SIZE = 2000  # more than the pane shows; beyond this, lines are counted, not kept


class QueueLogHandler(logging.Handler):
    """Formats records in the logging thread and queues the text; never blocks a server thread."""

    def __init__(self, maxsize: int = LOG_QUEUE_SIZE) -> None:
        super().__init__(logging.INFO)
        self.lines: queue.Queue[str] = queue.Queue(maxsize)
        self.dropped = 0
        self.setFormatter(logging.Formatter("%(asctime)s  %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self.lines.put_nowait(line)
        except queue.Full:
            self.dropped += 1  # a burst: the pane keeps the newest lines it gets anyway

    def drain(self, keep: int) -> tuple[list[str], int]:
        """The newest ``keep`` lines waiting, and how many older ones were skipped."""
        newest: collections.deque[str] = collections.deque(maxlen=keep)
        taken = 0
        try:
            for _ in range(LOG_QUEUE_SIZE * 2):  # bounded even while threads keep logging
                newest.append(self.lines.get_nowait())
                taken += 1
        except queue.Empty:
            pass
        skipped, self.dropped = self.dropped + taken - len(newest), 0
        return list(newest), skipped


def attach(handler: QueueLogHandler, logger_name: str = "ismail") -> Callable[[], None]:
    """Hang ``handler`` on the logger (INFO at least); returns the function that undoes it."""
    logger = logging.getLogger(logger_name)
    old_level = logger.level
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    def detach() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return detach


class Pump:
    """Runs callables in threads and calls ``on_done(result, error)`` back in the Tk thread."""

    def __init__(self, widget: tk.Misc, poll_ms: int = POLL_MS) -> None:
        self.widget = widget
        self.poll_ms = poll_ms
        # (callback, result, error, is_job): posts are not jobs and do not count as busy
        self._done: queue.Queue[tuple[Callable, Any, BaseException | None, bool]] = queue.Queue()
        self._busy = 0
        self._after: str | None = None
        # A window closed with its parent never calls cancel(); its <Destroy> does.
        widget.bind("<Destroy>", lambda e: self.cancel() if e.widget is widget else None, add="+")
        self._schedule()

    @property
    def busy(self) -> int:
        """Jobs started and not yet reported back."""
        return self._busy

    def run(self, job: Callable[[], Any], on_done: Callable[[Any, BaseException | None], None],
            name: str = "gui-job") -> None:
        def work() -> None:
            try:
                outcome: tuple = (on_done, job(), None, True)
            except BaseException as e:  # handed to the window, which words it for the user
                outcome = (on_done, None, e, True)
            self._done.put(outcome)

        self._busy += 1
        threading.Thread(target=work, name=name, daemon=True).start()

    def post(self, callback: Callable[[], None]) -> None:
        """From any thread: have ``callback()`` called in the Tk thread soon."""
        self._done.put((lambda _r, _e: callback(), None, None, False))

    def _schedule(self) -> None:
        try:
            self._after = self.widget.after(self.poll_ms, self._poll)
        except tk.TclError:  # the window is gone
            self._after = None

    def _poll(self) -> None:
        for _ in range(200):  # bounded, so a flood of posts cannot starve the window
            try:
                callback, result, error, is_job = self._done.get_nowait()
            except queue.Empty:
                break
            if is_job:
                self._busy -= 1
            try:
                callback(result, error)
            except Exception:  # one broken callback must not stop the pump for all others
                log.exception("a window update failed")
        self._schedule()

    def cancel(self) -> None:
        if self._after is not None:
            try:
                self.widget.after_cancel(self._after)
            except tk.TclError:
                pass
            self._after = None
