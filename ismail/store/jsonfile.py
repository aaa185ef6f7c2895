"""One small JSON data file that the window, the command line and the server all edit:
the address book, the routes, the auto-replies.

What each needs is the same, so it lives here once:

* ``read``: the parsed content; a missing file is empty; a corrupt one (``corrupt``
  raised by ``parse``) is renamed ``<name>.corrupt-<stamp>``, never overwritten, logged,
  and ``problem`` says why (for the window).  The rename happens under the lock, so a good
  file another process wrote a moment ago is never the one moved.
* ``refresh``: re-read and remember the file's signature (mtime, size, inode: os.replace
  within one mtime tick changes the inode), so ``changed()`` is one stat.  After a
  set-aside it returns the empty content, or, for an edit (``strict``), raises
  ``set_aside`` so the admin learns of it before changing anything.
* ``locked``: the cross-process lock (fsutil.file_lock) an edit holds while it re-reads,
  changes and saves.
* ``save``: atomic, owner-only (some files hold passwords); Windows refuses to replace a
  file another process is reading for a moment, so that is retried briefly.

Errors are the owning store's class (``error``), with the file named.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from ..fsutil import atomic_write, file_lock

log = logging.getLogger("ismail.store")

T = TypeVar("T")


class Corrupt(Exception):
    """The file cannot be used as it is; str() says why."""


def document(raw: bytes, version: int) -> dict[str, Any]:
    """The JSON object of a data file of format ``version`` (a missing "version" is taken
    as this one); Corrupt says what is wrong with it."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise Corrupt("it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise Corrupt(f"it is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(doc, dict):
        raise Corrupt("the top level is not an object")
    found = doc.get("version", version)
    if type(found) is not int or found != version:  # True == 1, hence type()
        raise Corrupt(f"'version' is {found!r}; this ISMail reads {version}")
    return doc


class JsonFile(Generic[T]):
    def __init__(self, path: Path, *, what: str, parse: Callable[[bytes], T], empty: Callable[[], T],
                 empty_text: str, error: type[Exception], set_aside: type[Exception],
                 corrupt: type[Exception] = Corrupt, logger: logging.Logger = log) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.what = what                # "the address book": for the lock's message
        self.parse, self.empty, self.empty_text = parse, empty, empty_text
        self.error, self.set_aside, self.corrupt = error, set_aside, corrupt
        self.signature: tuple[int, int, int] | None = None
        self.problem = ""               # why the file was set aside, for the window
        self.log = logger               # the owning store's, where its other messages go

    def stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        return self.stat() != self.signature

    @contextmanager
    def locked(self) -> Iterator[None]:
        with file_lock(self.lock_path, self.what, self.error):
            yield

    def read(self, locked: bool) -> T:
        try:
            return self.parse(self.path.read_bytes())
        except FileNotFoundError:
            return self.empty()
        except OSError as e:
            raise self.error(f"Could not read {self.path}: {e.strerror or e}.") from e
        except self.corrupt as e:
            if not locked:
                with self.locked():
                    return self.read(locked=True)
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
                                        f"-{time.time_ns() % 1_000_000:06d}")
            try:
                os.replace(self.path, aside)
            except OSError as err:
                raise self.error(f"{self.path} could not be used ({e}) nor renamed aside: "
                                 f"{err.strerror or err}.") from err
            self.problem = (f"{self.path} could not be used ({e}); it was set aside, renamed "
                            f"{aside.name}, and {self.empty_text} until it is restored.")
            self.log.error("%s", self.problem)
            raise self.set_aside(self.problem) from None

    def refresh(self, locked: bool, strict: bool) -> T:
        signature = self.stat()  # before reading, so a racing write is seen next time
        try:
            content = self.read(locked)
        except self.set_aside:
            self.signature = self.stat()
            if strict:
                raise
            return self.empty()
        self.signature = signature
        return content

    def save(self, data: bytes) -> None:
        for attempt in range(10):
            try:
                atomic_write(self.path, data, mode=0o600)
                break
            except PermissionError as e:
                if os.name != "nt" or attempt == 9:
                    raise self.error(f"Could not save {self.path}: {e.strerror or e}.") from e
                time.sleep(0.05)
            except OSError as e:
                raise self.error(f"Could not save {self.path}: {e.strerror or e}.") from e
        self.signature = self.stat()


class Published(Generic[T]):
    """A store whose readers share one published value of its JsonFile, never mutated in
    place (an edit publishes a new one): the address book, the routes, the auto-replies.

    ``load`` reads the file; ``maybe_reload`` picks up another process's save with one stat
    per ``reload_interval`` and never blocks the mail path (it skips if an edit holds the
    mutex).  A file that cannot be read on a reload keeps what was published before and is
    logged once per change; a set-aside file publishes the empty value.
    """

    keeping = "Keeping what was loaded before."  # said after a reload that failed

    def __init__(self, file: JsonFile[T], reload_interval: float) -> None:
        self._file = file
        self.path, self.lock_path = file.path, file.lock_path
        self.reload_interval = reload_interval
        self._value: T = file.empty()
        self._mutex = threading.Lock()
        self._loaded = False
        self._next_check = 0.0

    @property
    def load_problem(self) -> str:
        """Why the last file was set aside, for the window; "" when all is well."""
        return self._file.problem

    def describe(self, value: T) -> str:
        """What a reload found, for the log ("3 aliases, 1 group")."""
        return ""

    def _refresh(self, locked: bool, strict: bool) -> T:
        """Re-read and publish; after a set-aside the empty value is published, and
        ``strict`` (an edit) still raises so the admin learns of it before changing anything."""
        try:
            self._value = self._file.refresh(locked, strict)
        except self._file.set_aside:
            self._value = self._file.empty()
            raise
        finally:
            self._loaded = True
        return self._value

    def _publish(self, value: T) -> None:
        self._value, self._loaded = value, True

    def load(self) -> None:
        """Read the file (missing = empty; corrupt = set aside, logged, empty)."""
        with self._mutex:
            self._refresh(locked=False, strict=False)

    def maybe_reload(self) -> None:
        """Pick up changes by another process: one stat per interval, never blocks delivery."""
        now = time.monotonic()
        if now < self._next_check or not self._mutex.acquire(blocking=False):
            return
        try:
            self._next_check = now + self.reload_interval
            if self._loaded and not self._file.changed():
                return
            try:
                value = self._refresh(locked=False, strict=False)
                self._file.log.info("Reloaded %s (%s)", self.path, self.describe(value))
            except self._file.error as e:
                self._file.signature, self._loaded = self._file.stat(), True  # log once per change
                self._file.log.error("%s %s", e, self.keeping)
        finally:
            self._mutex.release()
