"""Which outgoing mail ISMail signs with DKIM, and the signing itself.

Mail from our own side (a trusted or logged-in client) whose From: address is in a
local domain is signed with that domain's active key as it leaves: the queue keeps
the text as it came and marks it for signing, and each attempt signs it just before
sending (in the delivery process when there is one: its CPU is not the listener's).
Mail from other domains - a forwarded copy of someone else's message, say - is left
as it came, with its own signatures.  Only the first From: counts; a message without
one, or with an address we cannot read, is not signed.
"""
from __future__ import annotations

import logging
import time

from . import dkim
from .fromaddr import from_fields
from .keystore import KeyStore

log = logging.getLogger("ismail.dkim")


def from_domain(message: bytes) -> str:
    """The domain of the first From: address in the header of ``message`` ("" if none or
    unreadable), read as DMARC reads it (fromaddr), so the signature aligns with it."""
    fields = from_fields(message)
    return fields[0][0] if fields and fields[0] else ""


def signing_domain(message: bytes, local_domains: frozenset[str]) -> str:
    """The local domain whose key signs ``message`` (its first From:), or "" for none."""
    domain = from_domain(message)
    return domain if domain and domain in local_domains else ""


def sign_message(store: KeyStore, domain: str, message: bytes) -> bytes:
    """``message`` with ``domain``'s DKIM-Signature on top; as it was when the domain has no
    usable key.  Never raises: a message that cannot be signed goes out unsigned (logged)."""
    key = store.signing_key(domain)
    if key is None:
        return message
    try:
        return dkim.sign(message, domain, key.selector, key.key, now=int(time.time())) + message
    except Exception:
        log.exception("DKIM signing for %s failed; the message goes out unsigned", domain)
        return message
