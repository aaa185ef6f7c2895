"""The RSA private-key operation in the OpenSSL that CPython's own ``ssl`` module loaded.

Why: a 2048-bit RSA signature with Python's pow() costs ~7 ms of CPU holding the GIL,
which caps DKIM-signed relaying at ~140 messages/s a core; OpenSSL's constant-time
code takes ~0.3 ms and runs outside the GIL (ctypes releases it during the call).
Nothing here is a new dependency: the library is the one every CPython with ``ssl``
already has loaded (libcrypto.so.3 on Linux, libcrypto-3.dll or libcrypto-1_1.dll
beside _ssl.pyd on Windows and inside a PyInstaller bundle).  Only the exponentiation
is OpenSSL's: the key files, the padding (EMSA-PKCS1-v1_5) and the check of each
signature with the public exponent stay in rsa.py, and rsa.py falls back to pow() when
this module says no (library not found, a call failing, ISMAIL_RSA=python).

New keys are OpenSSL's too (``generate_pkcs1``): Python's pow() takes 0.4-1.2 s of CPU
for a 2048-bit key, holding the GIL in steps of milliseconds, so a first start (which
makes a key for each local domain in the background) stalled every SMTP session for
that long; OpenSSL takes 0.1-0.3 s, outside the GIL.  rsa.py reads the key it returns with
its own DER reader and checks its numbers, as for any key file.

The calls used exist unchanged in OpenSSL 1.1.0 to 3.x: ``d2i_RSAPrivateKey`` (the
PKCS#1 DER we write ourselves), ``RSA_private_encrypt`` with RSA_NO_PADDING (raw
m^d mod n, with OpenSSL's CRT and blinding), ``RSA_free``; for new keys ``RSA_new``,
``BN_new``, ``BN_set_word``, ``RSA_generate_key_ex``, ``i2d_RSAPrivateKey``, ``BN_free``.
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger("ismail.dkim")

RSA_NO_PADDING = 3
_MIN_VERSION = 0x10100000  # OpenSSL 1.1.0: the first with a thread-safe RSA object

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _candidates() -> list[str]:
    """Paths of the libcrypto the running interpreter's _ssl uses, best first."""
    import _ssl  # the ssl module's C part: importing it loads the libcrypto we want
    found: list[str] = []
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    path = line.rstrip("\n").split(" ")[-1]
                    if "/libcrypto" in path and path not in found:
                        found.append(path)
        except OSError:
            pass
    elif sys.platform == "win32":
        folders = [Path(getattr(_ssl, "__file__", "") or ".").parent,
                   Path(getattr(sys, "_MEIPASS", "") or "."), Path(sys.base_prefix) / "DLLs"]
        for folder in folders:
            for pattern in ("libcrypto-3*.dll", "libcrypto-1_1*.dll"):
                for path in sorted(glob.glob(str(folder / pattern))):
                    if path not in found:
                        found.append(path)
    return found


def _load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    version = getattr(lib, "OpenSSL_version_num", None)
    if version is None:
        raise OSError("not OpenSSL 1.1 or later (no OpenSSL_version_num)")
    version.restype, version.argtypes = ctypes.c_ulong, []
    if version() < _MIN_VERSION:
        raise OSError(f"OpenSSL {version():#x} is older than 1.1.0")
    lib.d2i_RSAPrivateKey.restype = ctypes.c_void_p
    lib.d2i_RSAPrivateKey.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p),
                                      ctypes.c_long]
    lib.RSA_private_encrypt.restype = ctypes.c_int
    lib.RSA_private_encrypt.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                        ctypes.c_void_p, ctypes.c_int]
    lib.RSA_free.restype, lib.RSA_free.argtypes = None, [ctypes.c_void_p]
    return lib


def _keygen_calls(lib: ctypes.CDLL) -> None:
    """Declare the calls of generate_pkcs1 (AttributeError if the library lacks one)."""
    lib.RSA_new.restype, lib.RSA_new.argtypes = ctypes.c_void_p, []
    lib.BN_new.restype, lib.BN_new.argtypes = ctypes.c_void_p, []
    lib.BN_free.restype, lib.BN_free.argtypes = None, [ctypes.c_void_p]
    lib.BN_set_word.restype, lib.BN_set_word.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_ulong]
    lib.RSA_generate_key_ex.restype = ctypes.c_int
    lib.RSA_generate_key_ex.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.i2d_RSAPrivateKey.restype = ctypes.c_int
    lib.i2d_RSAPrivateKey.argtypes = [ctypes.c_void_p, ctypes.c_void_p]


def generate_pkcs1(bits: int, e: int) -> bytes:
    """A new ``bits``-bit RSA key with public exponent ``e``, made by OpenSSL, as PKCS#1
    DER.  OSError when there is no usable library or OpenSSL fails (then pow() it is)."""
    lib = library()
    if lib is None:
        raise OSError("no usable OpenSSL")
    try:
        _keygen_calls(lib)
    except AttributeError as exc:
        raise OSError(f"OpenSSL lacks a call for making keys ({exc})") from None
    rsa, exponent = lib.RSA_new(), lib.BN_new()
    try:
        if not rsa or not exponent or lib.BN_set_word(exponent, e) != 1:
            raise OSError("OpenSSL could not allocate a key")
        if lib.RSA_generate_key_ex(rsa, bits, exponent, None) != 1:
            raise OSError(f"OpenSSL could not make a {bits}-bit key")
        size = lib.i2d_RSAPrivateKey(rsa, None)
        if size <= 0:
            raise OSError("OpenSSL could not write the new key")
        out = ctypes.create_string_buffer(size)
        cursor = ctypes.c_void_p(ctypes.addressof(out))  # i2d writes there and moves it on
        if lib.i2d_RSAPrivateKey(rsa, ctypes.byref(cursor)) != size:
            raise OSError("OpenSSL could not write the new key")
        return out.raw
    finally:
        if rsa:
            lib.RSA_free(rsa)
        if exponent:
            lib.BN_free(exponent)


def library() -> ctypes.CDLL | None:
    """The loaded libcrypto, or None (then pow() it is).  Looked for once."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        if os.environ.get("ISMAIL_RSA", "").strip().lower() == "python":
            log.info("RSA: Python's pow() (ISMAIL_RSA=python)")
        else:
            try:
                paths = _candidates()
            except ImportError:  # a Python built without ssl
                paths = []
            for path in paths:
                try:
                    _lib = _load(path)
                    break
                except (OSError, AttributeError) as exc:
                    log.info("RSA: %s cannot be used (%s)", path, exc)
            if _lib is None:
                log.info("RSA: no usable OpenSSL found beside the ssl module; using pow()")
        _tried = True
    return _lib


def describe() -> str:
    """What makes RSA signatures here, for `ismail dkim list`."""
    lib = library()
    if lib is None:
        return "Python's pow() (about 7 ms a 2048-bit signature)"
    name = "OpenSSL"
    try:
        version = lib.OpenSSL_version
        version.restype, version.argtypes = ctypes.c_char_p, [ctypes.c_int]
        name = (version(0) or b"OpenSSL").decode("ascii", "replace")
    except AttributeError:
        pass
    return f"{name}, the library of Python's ssl module"


class NativeKey:
    """One private key loaded into OpenSSL; freed with the object."""

    def __init__(self, lib: ctypes.CDLL, pkcs1_der: bytes, size: int) -> None:
        self._lib = lib
        self._size = size
        cursor = ctypes.c_char_p(pkcs1_der)
        handle = lib.d2i_RSAPrivateKey(None, ctypes.byref(cursor), len(pkcs1_der))
        if not handle:
            raise ValueError("OpenSSL did not accept the key")
        self._handle: int | None = handle
        self.checked = False  # set by rsa.py once a signature passed its check with e

    def private_op(self, block: bytes) -> bytes:
        """block^d mod n for a block of exactly the key's size, smaller than n."""
        if len(block) != self._size or self._handle is None:
            raise ValueError("the block does not fit the key")
        out = ctypes.create_string_buffer(self._size)
        written = self._lib.RSA_private_encrypt(self._size, block, out, self._handle,
                                                RSA_NO_PADDING)
        if written != self._size:
            raise ValueError("OpenSSL's RSA operation failed")
        return out.raw

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.RSA_free(handle)
