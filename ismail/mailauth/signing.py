"""Which outgoing mail ISMail signs with DKIM, and the signing itself.

Mail whose From: address is in a local domain with an active key is signed once,
when it is accepted (the queue keeps the signed text; every later attempt sends the
same bytes).  Mail from other domains - a forwarded copy of someone else's message,
say - is left as it came, with its own signatures.  Only the first From: counts;
a message without one, or with an address we cannot read, is not signed.
"""
from __future__ import annotations

import logging
import re
import time
from email.utils import getaddresses
from typing import Callable, Iterator

from . import dkim
from .keystore import KeyStore

log = logging.getLogger("ismail.dkim")

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FROM = re.compile(rb"(?im)^from[ \t]*:(.*(?:\r?\n[ \t].*)*)")


def from_domain(message: bytes) -> str:
    """The domain of the first From: address in the header of ``message`` ("" if none)."""
    end = _HEADER_END.search(message)
    head = message[:end.start()] if end else message
    m = _FROM.search(head)
    if not m:
        return ""
    value = re.sub(rb"\r?\n[ \t]", b" ", m.group(1)).decode("utf-8", "replace")
    addresses = [a for _, a in getaddresses([value]) if "@" in a]
    return addresses[0].rpartition("@")[2].strip().lower().rstrip(".") if addresses else ""


def signature_for(store: KeyStore, local_domains: frozenset[str], received: bytes,
                  chunks: Callable[[], Iterator[bytes]]) -> bytes:
    """The DKIM-Signature header to put on top of ``received`` + the message (whose text
    ``chunks()`` gives), or b"" when it is not ours to sign.  The message is read whole
    only when it will be signed.  Never raises: a message that cannot be signed goes out
    unsigned (logged)."""
    first = next(chunks(), b"")  # the whole message, or its first MiB: the header is there
    domain = from_domain(first)
    if not domain or domain not in local_domains:
        return b""
    key = store.signing_key(domain)
    if key is None:
        return b""
    try:
        message = received + b"".join(chunks())
        return dkim.sign(message, domain, key.selector, key.key, now=int(time.time()))
    except Exception:
        log.exception("DKIM signing for %s failed; the message goes out unsigned", domain)
        return b""
