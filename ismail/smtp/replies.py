"""SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463).

A reply is built once as bytes, ready for the socket.  Multi-line replies use
"250-" on every line but the last, as the RFC requires.
"""
from __future__ import annotations


def reply(code: int, enhanced: str, text: str) -> bytes:
    """One line: ``reply(250, "2.1.0", "Ok")`` -> b"250 2.1.0 Ok\\r\\n"."""
    if enhanced:
        return f"{code} {enhanced} {text}\r\n".encode("utf-8", "replace")
    return f"{code} {text}\r\n".encode("utf-8", "replace")


def multiline(code: int, lines: list[str]) -> bytes:
    """EHLO and HELP answers: ``250-first``, ``250-...``, ``250 last``."""
    out = [f"{code}-{line}\r\n" for line in lines[:-1]]
    out.append(f"{code} {lines[-1]}\r\n")
    return "".join(out).encode("utf-8", "replace")


def is_error(data: bytes) -> bool:
    """True for a 4xx or 5xx reply: these count towards the session's error limit."""
    return data[:1] in (b"4", b"5")
