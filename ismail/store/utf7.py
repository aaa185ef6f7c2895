"""Modified UTF-7, the IMAP spelling of mailbox names (RFC 3501 §5.1.3).

Printable US-ASCII stands for itself, except "&", which is written "&-".  Anything
else is UTF-16BE in base64 with "," for "/" and no padding, between "&" and "-".
The store also uses it for folder names on disk, as Dovecot and Courier do, so a
folder's directory name is plain ASCII on every file system.

``decode`` is strict: each name has exactly one spelling, so two different wire
names never open the same folder.  Anything that ``encode`` would not have
written (printable ASCII inside base64, two adjacent encoded runs, stray bits in
the last base64 digit, a lone surrogate, a raw non-ASCII character) is a
ValueError.
"""
from __future__ import annotations

import base64
import binascii

_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _b64(run: list[str]) -> str:
    raw = "".join(run).encode("utf-16-be")  # a lone surrogate raises UnicodeEncodeError (a ValueError)
    return "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode(text: str) -> str:
    """The modified UTF-7 spelling of ``text``."""
    out: list[str] = []
    run: list[str] = []
    for ch in text:
        if " " <= ch <= "~":
            if run:
                out.append(_b64(run))
                run = []
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append(_b64(run))
    return "".join(out)


def decode(name: str) -> str:
    """The text that ``name`` spells; ValueError when it is not canonical modified UTF-7."""
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if not " " <= ch <= "~":
            raise ValueError(f"character {ch!r} at position {i} is not printable US-ASCII")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError(f'"&" at position {i} starts an encoded run that never ends with "-"')
        run = name[i + 1:end]
        if run:
            out.append(_decode_run(run, i))
        else:
            out.append("&")
        i = end + 1
    text = "".join(out)
    if encode(text) != name:  # split runs, stray bits, ASCII hidden in base64
        raise ValueError(f"{name!r} is not the canonical modified UTF-7 spelling of {text!r}")
    return text


def _decode_run(run: str, pos: int) -> str:
    if not set(run) <= _B64:
        raise ValueError(f"encoded run at position {pos} has a character outside modified base64")
    if len(run) % 4 == 1:
        raise ValueError(f"encoded run at position {pos} has a truncated base64 length")
    try:
        raw = base64.b64decode(run.replace(",", "/") + "=" * (-len(run) % 4), validate=True)
    except binascii.Error as e:
        raise ValueError(f"encoded run at position {pos}: {e}") from None
    if len(raw) % 2:
        raise ValueError(f"encoded run at position {pos} is not whole UTF-16 units")
    try:
        return raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise ValueError(f"encoded run at position {pos} has an unpaired surrogate") from None
