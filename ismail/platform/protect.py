"""Keeping the SmartHost password out of plain sight in ismail.json.

Windows: the Data Protection API (CryptProtectData through ctypes) encrypts it for
the current user on this computer; the file then holds "dpapi:<base64>".
Elsewhere there is no such service in the standard library: the password stays as
written, and the file itself is readable by its owner only (mode 0600, see
config.save).  A "dpapi:" value that cannot be decrypted (the file was copied from
another user or computer) is reported, never silently emptied.
"""
from __future__ import annotations

import base64
import os
from typing import Any

PREFIX = "dpapi:"


class ProtectError(ValueError):
    pass


def protect(password: str, crypt32: Any = None, kernel32: Any = None) -> str:
    if not password or password.startswith(PREFIX):
        return password
    if os.name != "nt" and crypt32 is None:
        return password  # the POSIX twin: file permissions do the protecting
    return PREFIX + base64.b64encode(_dpapi(password.encode("utf-8"), True, crypt32, kernel32)).decode()


def unprotect(stored: str, crypt32: Any = None, kernel32: Any = None) -> str:
    if not stored.startswith(PREFIX):
        return stored
    if os.name != "nt" and crypt32 is None:
        raise ProtectError("is protected by Windows for another user or computer; enter the password again")
    try:
        blob = base64.b64decode(stored[len(PREFIX):], validate=True)
    except ValueError:
        raise ProtectError("is damaged (not base64 after dpapi:); enter the password again") from None
    return _dpapi(blob, False, crypt32, kernel32).decode("utf-8")


def _dpapi(data: bytes, encrypt: bool, crypt32: Any = None, kernel32: Any = None) -> bytes:
    import ctypes
    from ctypes import wintypes

    class Blob(ctypes.Structure):
        _fields_ = [("cbData", wintypes.DWORD), ("pbData", ctypes.POINTER(ctypes.c_char))]

    if crypt32 is None:
        crypt32 = ctypes.windll.crypt32  # type: ignore[attr-defined]
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    buffer = ctypes.create_string_buffer(data, len(data))
    source = Blob(len(data), ctypes.cast(buffer, ctypes.POINTER(ctypes.c_char)))
    result = Blob()
    CRYPTPROTECT_UI_FORBIDDEN = 0x01
    call = crypt32.CryptProtectData if encrypt else crypt32.CryptUnprotectData
    ok = call(ctypes.byref(source), None, None, None, None, CRYPTPROTECT_UI_FORBIDDEN, ctypes.byref(result))
    if not ok:
        raise ProtectError("could not be " + ("protected" if encrypt else "unprotected")
                           + " by Windows; enter the password again")
    try:
        return ctypes.string_at(result.pbData, result.cbData)
    finally:
        kernel32.LocalFree(result.pbData)
