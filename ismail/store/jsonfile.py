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
