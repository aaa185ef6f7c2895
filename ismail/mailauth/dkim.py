"""DKIM signing (RFC 6376) with rsa-sha256 and relaxed/relaxed canonicalisation.

``sign`` returns one complete header field, ``DKIM-Signature: ...\\r\\n``, to put on
top of the message as it is; the message itself is not changed.

Line ends: the signature covers the message as it travels over SMTP, where every
line ends in CRLF.  A message handed over with bare LF line ends (a Maildir copy,
a file) is therefore hashed as if each LF were CRLF, and a last line without any
line end as if it had one (SMTP's DATA adds it); a CR not followed by LF is an
ordinary character.  Whoever sends the message must send CRLF line ends.

What is signed:
  * the body, canonicalised (§3.4.4: whitespace runs become one space, whitespace
    at line ends goes, empty lines at the end go; an empty body hashes as the empty
    string), in pieces of about a megabyte: a large message costs one pass and is
    never copied whole.  No l= (a signature over part of the body lets anyone
    append to it);
  * the header fields named in ``headers`` that the message has: each instance
    (§5.4.2: a name listed k times signs the last k instances, bottom-up), plus From
    listed once more than it occurs, so a second From added later breaks the
    signature (§8.15, "oversigning").  Received and other trace fields are not
    signed: they change on the way.

The header field is folded at about 76 columns (CRLF + tab), the b= value split
across lines; a verifier removes b='s value, folds included, and canonicalises the
rest the same way, so the layout is free.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from typing import Iterator

from .rsa import PrivateKey, PublicKey, public_key_der

DEFAULT_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version",
                   "Content-Type", "Reply-To", "In-Reply-To", "References")
MIN_KEY_BITS = 1024  # RFC 8301 §3.2
FOLD_WIDTH = 76
CHUNK = 1 << 20

_HEADER_END = re.compile(rb"\n\r?\n")  # the line end before the first empty line
_LINE_END = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_WSP_TO_SQUEEZE = re.compile(rb"\t[ \t]*| [ \t]+")  # runs that are not already one space
_WSP_RUN = re.compile(rb"[ \t]+")
_DOMAIN = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*")


# -- canonicalisation ----------------------------------------------------------------------------

def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """The header fields as (name, field with CRLF line ends), and where the body starts.

    A line that is neither a field nor a continuation (an mbox "From " line, junk) is
    left out: no verifier could match it against a name in h= either.
    """
    if message.startswith((b"\n", b"\r\n")):
        return [], message.index(b"\n") + 1
    end = _HEADER_END.search(message)
    head, body_start = (message[:end.start() + 1], end.end()) if end else (message, len(message))
    fields: list[tuple[bytes, list[bytes]]] = []
    for line in _LINE_END.split(head):
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1].append(line)
        elif (m := _FIELD_NAME.match(line)) is not None:
            fields.append((m.group(1), [line]))
    return [(name, b"\r\n".join(lines) + b"\r\n") for name, lines in fields], body_start


def relaxed_header(field: bytes) -> bytes:
    """§3.4.2: lower-case name, unfolded value, whitespace runs as one space, none at the ends."""
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def relaxed_body(message: bytes, start: int = 0, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """§3.4.4 over ``message[start:]``, in pieces whose concatenation is the canonical body.

    Pieces end at line ends (whitespace rules never cross one), so each is canonicalised
    on its own; empty lines at a piece's end wait until a later piece shows text.
    """
    pending = 0  # empty lines held back: they count only if a non-empty line follows
    pos, size = start, len(message)
    while pos < size:
        cut = message.find(b"\n", pos + chunk_size)
        end = size if cut < 0 else cut + 1
        text = message[pos:end]
        pos = end
        if text.count(b"\n") != text.count(b"\r\n"):
            text = _LINE_END.sub(b"\r\n", text)
        if not text.endswith(b"\n"):  # only the last piece: the final line has no line end
            text += b"\r\n"
        if b"\t" in text or b"  " in text:  # else there is no run to squeeze (the usual text)
            text = _WSP_TO_SQUEEZE.sub(b" ", text)
        text = text.replace(b" \r\n", b"\r\n")
        stripped = text.rstrip(b"\r\n")
        tail = text[len(stripped):]
        stray = tail.rfind(b"\r\r")  # a CR that is part of the last line, not of a line end
        if stray >= 0:
            stripped, tail = stripped + tail[:stray + 1], tail[stray + 1:]
        if not stripped:
            pending += len(tail) // 2
            continue
        yield b"\r\n" * pending + stripped + b"\r\n"
        pending = len(tail) // 2 - 1


def body_hash(message: bytes) -> str:
    """bh=: base64 SHA-256 of the relaxed canonical body of ``message`` (headers and all)."""
    return _body_hash(message, split_message(message)[1])


def _body_hash(message: bytes, start: int) -> str:
    digest = hashlib.sha256()
    for piece in relaxed_body(message, start):
        digest.update(piece)
    return base64.b64encode(digest.digest()).decode("ascii")


def header_list(fields: list[tuple[bytes, bytes]], headers: tuple[str, ...] = DEFAULT_HEADERS) -> list[str]:
    """h=: each name of ``headers`` as often as the message has it, and From once more."""
    counts: dict[bytes, int] = {}
    for name, _ in fields:
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
    if not counts.get(b"from"):
        raise ValueError("the message has no From header field, which DKIM signs: not signed")
    names: list[str] = []
    unique, from_name = _checked_names(headers)
    for h, key in unique:
        names += [h] * counts.get(key, 0)
    return names + [from_name]  # oversigned: see above


@functools.lru_cache(maxsize=16)
def _checked_names(headers: tuple[str, ...]) -> tuple[tuple[tuple[str, bytes], ...], str]:
    """The names of ``headers`` checked, each once (first spelling), with its lower-case
    bytes; and the From name.  Worked out once per list, not once per message."""
    unique: list[tuple[str, bytes]] = []
    for h in headers:
        if not h.isascii() or not _FIELD_NAME.fullmatch(h.encode("ascii") + b":"):
            raise ValueError(f"{h!r} is not a header field name")
        if not any(key == h.lower().encode("ascii") for _, key in unique):
            unique.append((h, h.lower().encode("ascii")))
    from_name = next((h for h in headers if h.lower() == "from"), None)
    if from_name is None:
        raise ValueError("DKIM must sign the From header field; it is missing from the list")
    return tuple(unique), from_name


def signed_fields(fields: list[tuple[bytes, bytes]], names: list[str]) -> list[bytes]:
    """§5.4.2: for each name of h= in turn, the last instance not used yet (or nothing)."""
    by_name: dict[bytes, list[bytes]] = {}
    for name, field in fields:
        by_name.setdefault(name.lower(), []).append(field)
    out = []
    for name in names:
        instances = by_name.get(name.lower().encode("ascii"))
        if instances:
            out.append(instances.pop())
    return out


# -- signing -------------------------------------------------------------------------------------

def sign(message: bytes, domain: str, selector: str, key: PrivateKey, *,
         headers: tuple[str, ...] = DEFAULT_HEADERS, now: int | None = None) -> bytes:
    """The ``DKIM-Signature: ...\\r\\n`` header field to prepend to ``message``."""
    domain, selector = _dns_name(domain, "domain"), _dns_name(selector, "selector")
    if key.bits < MIN_KEY_BITS:
        raise ValueError(f"a DKIM key must have at least {MIN_KEY_BITS} bits (RFC 8301), not {key.bits}")
    fields, body_start = split_message(message)
    names = header_list(fields, headers)
    tags = ["v=1;", "a=rsa-sha256;", "c=relaxed/relaxed;", f"d={domain};", f"s={selector};",
            f"t={int(time.time()) if now is None else int(now)};"]
    head = _fold("DKIM-Signature:", tags, names, f"bh={_body_hash(message, body_start)};")

    hashed = hashlib.sha256()
    for field in signed_fields(fields, names):
        hashed.update(relaxed_header(field))
    hashed.update(relaxed_header(head.encode("ascii"))[:-2])  # §3.7: without its CRLF
    signature = base64.b64encode(key.sign_digest_sha256(hashed.digest())).decode("ascii")
    return (head + _fold_value(signature, 3) + "\r\n").encode("ascii")


def _dns_name(value: str, what: str) -> str:
    if not _DOMAIN.fullmatch(value or ""):
        raise ValueError(f"{value!r} is not a valid DKIM {what} (letters, digits, hyphens, dots)")
    return value.lower() if what == "domain" else value


def _fold(start: str, tags: list[str], names: list[str], bh: str) -> str:
    """The header up to and including "b=": tags as they fit, h= folded after a colon."""
    lines, line = [], start
    atoms = tags + ["h=" + names[0]] + [":" + n for n in names[1:]]
    for i, atom in enumerate(atoms):
        atom += ";" if i == len(atoms) - 1 else ""
        joiner = "" if atom.startswith(":") else " "
        if len(line) + len(joiner) + len(atom) > FOLD_WIDTH:
            lines.append(line)
            line, joiner = "\t", ""
        line += joiner + atom
    lines += [line, "\t" + bh, "\tb="]
    return "\r\n".join(lines)


def _fold_value(value: str, used: int) -> str:
    """A base64 value that starts ``used`` columns into a line, cut to fit the width."""
    first, rest = FOLD_WIDTH - used, FOLD_WIDTH - 1  # later lines start with a tab
    pieces = [value[:first]] + [value[i:i + rest] for i in range(first, len(value), rest)]
    return "\r\n\t".join(p for p in pieces if p)


# -- DNS -----------------------------------------------------------------------------------------

def dns_record_value(public_key: PublicKey) -> str:
    """The TXT record at ``selector._domainkey.domain``."""
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(public_key_der(public_key)).decode("ascii")


def txt_chunks(value: str, size: int = 255) -> list[str]:
    """``value`` cut into the ≤255-byte strings of one TXT record (a verifier joins them)."""
    data = value.encode("ascii")
    return [data[i:i + size].decode("ascii") for i in range(0, len(data), size)] or [""]
