"""Big passing blocks of memory given back to the system when they are freed (glibc).

A password check (scrypt, store/accounts.py) takes one 16 MB block and frees it.  glibc
serves the first such block with a mapping of its own and unmaps it when it is freed, but
that free raises its mapping threshold to the block's size: every later check takes its
block from a heap, and a freed block at the top of a thread's heap stays there (the trim
threshold rises with it, and malloc_trim does not trim such heaps).  So a Linux server
that had checked two passwords (a second account, or a bot guessing at AUTH) stayed 16 MB
bigger for good: 20 idle IMAP clients of 10 accounts, 50.2 MB resident against 34.2 MB
with the threshold fixed (2026-12-07).

``map_big_blocks`` fixes glibc's thresholds once, before the first scrypt (a password
checked or set, store/accounts.py): blocks of MAP_FROM bytes or more always get a mapping
of their own, and a heap whose free top grows past TRIM_FROM is trimmed.  (Fixing them
turns glibc's sliding thresholds off; a message of 4 MB or more then takes a fresh
mapping each time it is read, a few page faults a MB, where it may have reused heap
before.)

Windows' heap makes blocks that size with VirtualAlloc and frees them with VirtualFree
(as Microsoft documents it; not measured here), and other C libraries have no mallopt:
there this does nothing.
"""
from __future__ import annotations

import sys
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's malloc.h
MAP_FROM = 4 << 20
TRIM_FROM = 8 << 20

_lock = threading.Lock()
_done: bool | None = None     # None: not tried yet; else whether the thresholds are fixed


def map_big_blocks() -> bool:
    """Fix the thresholds (once per process); False where the C library has no mallopt."""
    global _done
    if _done is None:
        with _lock:
            if _done is None:
                _done = _fix_thresholds()
    return _done


def _fix_thresholds() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes   # here: loaded with the first scrypt, on Linux only
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt answers 1 when it took the value (musl has none: AttributeError above).
    return bool(mallopt(M_MMAP_THRESHOLD, MAP_FROM)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_FROM))
