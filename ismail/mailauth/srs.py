"""The Sender Rewriting Scheme (SRS): envelope senders for forwarded copies, and back.

Model
-----
A copy forwarded to an outside address cannot keep its original envelope sender: the
receiver's SPF check would find our server sending for someone else's domain.  So the
copy leaves with a sender of our own domain that carries the original inside it, signed
with an HMAC only we can make; a bounce to it comes back here, `SRS.reverse` checks the
signature and the age and gives the original sender to send the bounce on to.  The
formats are those of Shevek's paper (https://www.libsrs2.org/srs/srs.pdf) as libsrs2 and
postsrsd write them, byte for byte (a test checks this against postsrsd)::

    SRS0=HHHH=TT=orig-domain=orig-local@our-domain
    SRS1=HHHH=first-forwarder==HHHH=TT=orig-domain=orig-local@our-domain

``TT`` is the day (days since the epoch, modulo 1024) in two base32 characters; ``HHHH``
the first four base64 characters of HMAC-SHA1(secret, the fields that follow it), for
SRS0 the stamp, the domain and the local part, for SRS1 the first forwarder's domain and
the rest of its SRS0 address (from its separator on).  An SRS0 address of another
forwarder becomes SRS1 so the address grows only once; an SRS1 address of another
forwarder keeps its part after the hash and gets our hash and domain.  Reversing an SRS1
address gives the SRS0 address of the first forwarder, which checks its own stamp.

Decisions
---------
* Case.  Like libsrs2, the HMAC is taken over the fields with ASCII letters lower-cased
  and the hash and stamp are compared without regard to case, so an address that some
  MTA lower-cased (or upper-cased) on the way still checks out; the original comes back
  in the case the bounce carried.  Non-ASCII characters (SMTPUTF8) go into the HMAC as
  UTF-8, unchanged, and round-trip; an MTA that changed their case would break the hash
  (as with libsrs2).
* Local parts that are not a dot-atom (they need quotes: ``"a b"@x``) are not rewritten:
  `forward` hands them back unchanged, since no plain SRS local part could carry them
  and a quoted one would be mangled by half the MTAs on the way.  A quoted dot-atom
  (``"abc"@x``) is the same address as its plain form, which is rewritten.  Senders
  without a domain, or with an address literal, are left as they are too.
* Length.  The rewritten local part is 14 octets plus the original domain and local
  part, so it can pass RFC 5321's 64 octets; like libsrs2 we write it anyway (most MTAs
  accept longer local parts; refusing would leave the copy to fail SPF instead), and
  whoever receives the bounce must accept it to round-trip.
* Age.  `reverse` refuses a stamp more than ``max_age_days`` old.  Stamps wrap every
  1024 days, so an address is also accepted again 1024 days on (the paper's trade-off);
  a stamp one day ahead of our clock is accepted (a clock set back a little), more is not.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from typing import Callable

__all__ = ["SRS", "SRSError"]

log = logging.getLogger("ismail.srs")

_SEPARATORS = "=+-"     # after SRS0/SRS1; the fields within are always split by "="
_STAMP_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_STAMP_SLOTS = 1024     # two base32 characters
_DAY = 86400
_HASH_LENGTH = 4
# RFC 5322 atext plus every non-ASCII character (RFC 6531); "=" is atext, so it may be in
# the original local part: it is always the last field, so splitting stops before it.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\U0010ffff"
_DOT_ATOM = re.compile("[" + _ATEXT + "]+(?:\\.[" + _ATEXT + "]+)*")
_HOST = re.compile(r"[A-Za-z0-9\x80-\U0010ffff](?:[A-Za-z0-9\x80-\U0010ffff.-]*[A-Za-z0-9\x80-\U0010ffff])?")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


class SRSError(ValueError):
    """An address `SRS.reverse` will not turn back; str(e) says why, in a few words."""


class SRS:
    """Rewrites senders for forwarded copies as ``domain`` and turns bounces back.

    ``secret`` keys the HMAC (keep it; addresses made with another secret are refused as
    forged); ``clock`` gives the time in seconds since the epoch (tests set it).
    """

    def __init__(self, secret: bytes, domain: str, max_age_days: int = 21,
                 clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("the SRS secret is empty")
        if not 0 <= max_age_days < _STAMP_SLOTS - 1:
            raise ValueError(f"max_age_days must be from 0 to {_STAMP_SLOTS - 2}, not {max_age_days}")
        if not domain or not _HOST.fullmatch(domain):
            raise ValueError(f"not a domain for SRS addresses: {domain!r}")
        self._secret = bytes(secret)
        self.domain = domain
        self.max_age_days = max_age_days
        self._clock = clock

    # -- the two directions ------------------------------------------------------------------
    def forward(self, sender: str) -> str:
        """The envelope sender for a forwarded copy of mail from ``sender``.

        The null sender stays null (bounces are never rewritten), and so does a sender of
        our own domain; see the module's notes for the senders left as they are.
        """
        if not sender:
            return sender
        local, at, host = sender.rpartition("@")
        if not at or not _HOST.fullmatch(host):
            return self._unchanged(sender, "no domain name")
        if _same_domain(host, self.domain):
            return sender
        local = _plain_local(local)
        if local is None:
            return self._unchanged(sender, "a local part that needs quotes")
        if is_srs_local(local):
            tag, rest = local[:4].upper(), local[4:]
            if tag == "SRS0":
                return self._srs1(host, rest)
            digest, _, rest = rest[1:].partition("=")
            first, sep, srs0_rest = rest.partition("=")
            if digest and sep and first and srs0_rest:
                return self._srs1(first, srs0_rest)
            # A damaged SRS1 address of someone else's: wrapped like any other sender.
        stamp = self._stamp(self._today())
        digest = self._hash(stamp, host, local)
        return f"SRS0={digest}={stamp}={host}={local}@{self.domain}"

    def reverse(self, address: str) -> str:
        """The address behind ``address``, an SRS address of our domain (SRS0: the original
        sender; SRS1: the first forwarder's SRS0 address); raises `SRSError` if it is not
        one, is malformed, forged (or made with another secret) or too old."""
        local, at, host = address.rpartition("@")
        if not at or not is_srs_local(local):
            raise SRSError("not an SRS address")
        if not _same_domain(host, self.domain):
            raise SRSError(f"not an SRS address of {self.domain}")
        if "@" in local or '"' in local:
            raise SRSError("malformed SRS address")
        tag, fields = local[:4].upper(), local[5:]
        if tag == "SRS1":
            digest, _, rest = fields.partition("=")
            first, sep, srs0_rest = rest.partition("=")
            if not sep or not first or not srs0_rest:
                raise SRSError("malformed SRS1 address")
            self._check_hash(digest, first, srs0_rest)
            return f"SRS0{srs0_rest}@{first}"
        parts = fields.split("=", 3)
        if len(parts) != 4 or not all(parts):
            raise SRSError("malformed SRS0 address")
        digest, stamp, orig_host, orig_local = parts
        self._check_stamp(stamp)
        self._check_hash(digest, stamp, orig_host, orig_local)
        return f"{orig_local}@{orig_host}"

    def is_srs(self, address: str) -> bool:
        """Whether the local part of ``address`` starts as an SRS address does ("SRS0" or
        "SRS1" in any case, then "=", "+" or "-"); says nothing of its domain or hash."""
        return is_srs_local(address.rpartition("@")[0] if "@" in address else address)

    # -- the pieces --------------------------------------------------------------------------
    def _srs1(self, first: str, srs0_rest: str) -> str:
        return f"SRS1={self._hash(first, srs0_rest)}={first}={srs0_rest}@{self.domain}"

    def _today(self) -> int:
        return int(self._clock() // _DAY)

    @staticmethod
    def _stamp(day: int) -> str:
        day %= _STAMP_SLOTS
        return _STAMP_CHARS[day >> 5] + _STAMP_CHARS[day & 31]

    def _hash(self, *fields: str) -> str:
        # libsrs2 lower-cases ASCII letters only (C tolower); bytes.lower() does just that.
        mac = hmac.new(self._secret, digestmod=hashlib.sha1)
        for field in fields:
            mac.update(field.encode("utf-8", "surrogatepass").lower())
        return base64.b64encode(mac.digest()).decode("ascii")[:_HASH_LENGTH]

    def _check_hash(self, digest: str, *fields: str) -> None:
        if len(digest) != _HASH_LENGTH or not digest.isascii():
            raise SRSError("malformed SRS hash")
        if not hmac.compare_digest(digest.lower(), self._hash(*fields).lower()):
            raise SRSError("SRS hash does not match (forged or damaged address)")

    def _check_stamp(self, stamp: str) -> None:
        stamp = stamp.upper()
        if len(stamp) != 2 or any(c not in _STAMP_CHARS for c in stamp):
            raise SRSError("malformed SRS timestamp")
        then = _STAMP_CHARS.index(stamp[0]) << 5 | _STAMP_CHARS.index(stamp[1])
        age = (self._today() - then) % _STAMP_SLOTS
        if age == _STAMP_SLOTS - 1:
            return  # made "tomorrow": our clock went back a little
        if age > self.max_age_days:
            raise SRSError(f"SRS address expired ({age} days old, {self.max_age_days} allowed)")

    @staticmethod
    def _unchanged(sender: str, why: str) -> str:
        log.debug("SRS leaves the sender %r as it is: %s", sender, why)
        return sender


def is_srs_local(local: str) -> bool:
    """Whether a local part is SRS0/SRS1 (any case) followed by one of its separators."""
    return len(local) > 4 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in _SEPARATORS


def _plain_local(local: str) -> str | None:
    """The local part as a dot-atom (a quoted dot-atom unquoted), or None if it needs quotes."""
    m = _QUOTED.fullmatch(local)
    if m:
        local = re.sub(r"\\(.)", r"\1", m.group(1))
    return local if _DOT_ATOM.fullmatch(local) else None


def _same_domain(a: str, b: str) -> bool:
    return _domain_key(a) == _domain_key(b)


def _domain_key(domain: str) -> str:
    """A domain compared without case, its U-labels and A-labels (xn--) as one."""
    domain = domain.rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
