"""DKIM verification (RFC 6376) of every signature on a received message.

``verify_message`` gives one ``DkimResult`` per DKIM-Signature header field, top to
bottom, in RFC 8601 words (pass, fail, neutral, temperror, permerror, policy); no
signature gives [] (the caller writes dkim=none).  Each signature goes through RFC
6376 §6.1: its tags (§3.5), its key from DNS (§3.6), the body hash, then the header
hash and the signature itself.  Algorithms: rsa-sha256, ed25519-sha256 (RFC 8463:
Ed25519 signs the SHA-256 digest of the header data) and rsa-sha1 (below).

Decisions where the RFCs leave room (each shows in ``reason``):
  * rsa-sha1: RFC 8301 §3.1 says a verifier MUST NOT consider it valid.  The signature
    is still checked: if it is wrong the result is "fail" as for any other; if it is
    right the result is "policy" (RFC 8601: signed, but not acceptable to us), so the
    report says "a good signature we refuse", not "a forgery".
  * t= more than CLOCK_SKEW in the future, x= more than CLOCK_SKEW in the past, or x=
    before t=: "permerror" (RFC 6376 §6.1.1 calls these PERMFAIL; dkimpy agrees).
    The skew forgives a signer's clock a few minutes off, not a wrong date.
  * l=: honoured (the body hash covers that many canonical bytes) with a reason that
    says how many bytes after it are not covered, since anyone may append those.  An
    l= longer than the body is "permerror" (§6.1.3).
  * RSA keys under 1024 bits: "permerror" "key too short" (RFC 8301 §3.2); over 8192
    bits or with an exponent over 64 bits: "permerror" (bounds the CPU a sender can buy).
  * A key record's t=y (testing) leaves the result as it is and says so in reason.
  * Several TXT records at the key name: the first that parses (a valid tag list,
    v=DKIM1 if v= is there, a p= tag) is used, the others ignored (§3.6.2.2).
  * Empty tag-specs (";;") are ignored; duplicate tags are a permerror (§3.2).
  * ``max_body_bytes``: a body larger than it, not limited below it by l=, is not
    hashed; the result is "neutral" "body too large to verify".

Line ends: like the signer (dkim.py), a bare LF counts as CRLF.  The body is hashed in
pieces of about a megabyte, once per (canonicalisation, hash, l=) however many
signatures share it, so a message of tens of megabytes is never copied whole.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from typing import Iterator

from . import der, ed25519
from .dkim import CHUNK, relaxed_body, relaxed_header, signed_fields, split_message
from .rsa import PublicKey, load_public_key_der
from ..queue.dns import DNSError, DNSTemporaryError, NXDomain

log = logging.getLogger("ismail.mailauth.dkim_verify")

MIN_RSA_BITS = 1024   # RFC 8301 §3.2
# A key record is chosen by the sender: without bounds a 16384-bit modulus with a huge
# exponent costs ~10 s of CPU per signature.  Real keys use e = 65537 and at most 4096 bits.
MAX_RSA_BITS, MAX_EXPONENT_BITS = 8192, 64
CLOCK_SKEW = 300      # seconds forgiven on t= and x=, as dkimpy does
HEADER_B_MIN = 8      # RFC 6008: header.b carries at least 8 characters
ALGORITHMS = {"rsa-sha256": ("rsa", "sha256"), "rsa-sha1": ("rsa", "sha1"),
              "ed25519-sha256": ("ed25519", "sha256")}
REQUIRED_TAGS = ("v", "a", "b", "bh", "d", "h", "s")
# EMSA-PKCS1-v1_5 DigestInfo prefix for SHA-1 (RFC 8017 §9.2, note 1); SHA-256's is in rsa.py.
SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")

_WSP = " \t\r\n"
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_DOMAIN = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*")
_DIGITS = re.compile(r"[0-9]{1,76}")
_B_TAG = re.compile(rb"[ \t\r\n]*b[ \t\r\n]*=")


@dataclass(frozen=True)
class DkimResult:
    result: str      # "pass", "fail", "neutral", "temperror", "permerror", "policy" (RFC 8601)
    domain: str      # d=
    selector: str    # s=
    algorithm: str   # a=
    reason: str = ""     # short text for the Authentication-Results comment and the log
    header_b: str = ""   # the start of b=, for header.b (RFC 6008)
    identity: str = ""   # i= (or @d)


class _Verdict(Exception):
    """A result reached before the end of the checks."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result, self.reason = result, reason


@dataclass(frozen=True)
class _Signature:
    raw: bytes                 # the header field as received, CRLF included
    key_type: str
    hash_name: str
    header_canon: str
    body_canon: str
    domain: str                # lower case
    selector: str
    headers: list[str]
    identity: str
    length: int | None
    signature: bytes
    body_hash: bytes


@dataclass(frozen=True)
class _Key:
    rsa: PublicKey | None
    ed25519: bytes | None
    testing: bool


# -- tag lists -----------------------------------------------------------------------------------

def parse_tag_list(text: str) -> dict[str, str]:
    """RFC 6376 §3.2: ``name=value; ...`` to a dict; ValueError on bad syntax or a repeated tag.

    Values keep their inner whitespace (the callers that want none, b= bh= p=, remove it).
    """
    tags: dict[str, str] = {}
    for spec in text.split(";"):
        if not spec.strip(_WSP):
            continue
        name, eq, value = spec.partition("=")
        name, value = name.strip(_WSP), value.strip(_WSP)
        if not eq or not _TAG_NAME.fullmatch(name):
            raise ValueError(f"bad tag {spec.strip(_WSP)[:20]!r}")
        if _BAD_VALUE_CHAR.search(value):
            raise ValueError(f"control character in {name}=")
        if name in tags:
            raise ValueError(f"duplicate tag {name}=")
        tags[name] = value
    return tags


def _loose_tags(text: str) -> dict[str, str]:
    """What can be read of a broken tag list, for the report's d=, s=, a= and header.b."""
    tags: dict[str, str] = {}
    for spec in text.split(";"):
        name, _, value = spec.partition("=")
        tags.setdefault(name.strip(_WSP), value.strip(_WSP))
    return tags


def _colon_list(value: str) -> list[str]:
    return [item.strip(_WSP) for item in value.split(":")]


def _base64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _Verdict("permerror", f"{what} is not valid base64") from None


def _field_value(raw: bytes) -> str:
    return raw.partition(b":")[2].decode("utf-8", "replace")


# -- the signature's tags (§3.5, §6.1.1) ---------------------------------------------------------

def _parse_signature(raw: bytes, now: float) -> _Signature:
    try:
        tags = parse_tag_list(_field_value(raw))
    except ValueError as e:
        raise _Verdict("permerror", f"signature syntax error: {e}") from None
    missing = [t for t in REQUIRED_TAGS if t not in tags]
    if missing:
        raise _Verdict("permerror", "signature lacks " + ", ".join(t + "=" for t in missing))
    if tags["v"] != "1":
        raise _Verdict("permerror", f"unknown signature version v={tags['v']}")
    if tags["a"].lower() not in ALGORITHMS:
        raise _Verdict("permerror", f"unknown algorithm a={tags['a']}")
    key_type, hash_name = ALGORITHMS[tags["a"].lower()]
    header_canon, _, body_canon = tags.get("c", "simple").lower().partition("/")
    body_canon = body_canon or "simple"
    if header_canon not in ("simple", "relaxed") or body_canon not in ("simple", "relaxed"):
        raise _Verdict("permerror", f"unknown canonicalization c={tags['c']}")
    domain = tags["d"].lower()
    if not _DOMAIN.fullmatch(domain) or not _DOMAIN.fullmatch(tags["s"]):
        raise _Verdict("permerror", "d= or s= is not a domain name")
    headers = _colon_list(tags["h"])
    if not all(_FIELD_NAME.fullmatch(h) for h in headers):
        raise _Verdict("permerror", "h= holds something that is not a header field name")
    if "from" not in (h.lower() for h in headers):
        raise _Verdict("permerror", "From is not signed (h=)")
    identity = tags.get("i", "@" + tags["d"])
    i_domain = identity.rpartition("@")[2].lower()
    if "@" not in identity or not (i_domain == domain or i_domain.endswith("." + domain)):
        raise _Verdict("permerror", "i= is not within d=")
    if "q" in tags and "dns/txt" not in (q.lower() for q in _colon_list(tags["q"])):
        raise _Verdict("permerror", f"unknown query method q={tags['q']}")
    length = _number(tags, "l")
    _check_times(_number(tags, "t"), _number(tags, "x"), now)
    return _Signature(raw, key_type, hash_name, header_canon, body_canon, domain, tags["s"],
                      headers, identity, length, _base64(tags["b"], "b="), _base64(tags["bh"], "bh="))


def _number(tags: dict[str, str], name: str) -> int | None:
    if name not in tags:
        return None
    if not _DIGITS.fullmatch(tags[name]):
        raise _Verdict("permerror", f"{name}= is not a number")
    return int(tags[name])


def _check_times(signed: int | None, expires: int | None, now: float) -> None:
    if signed is not None and expires is not None and expires < signed:
        raise _Verdict("permerror", "x= is before t=")
    if signed is not None and signed > now + CLOCK_SKEW:
        raise _Verdict("permerror", "signature timestamp t= is in the future")
    if expires is not None and expires + CLOCK_SKEW < now:
        raise _Verdict("permerror", "signature expired")


# -- the key (§3.6, §6.1.2) ----------------------------------------------------------------------

def _fetch_key(resolver, sig: _Signature) -> _Key:
    name = f"{sig.selector}._domainkey.{sig.domain}"
    try:
        records = resolver.txt(name)
    except NXDomain:
        raise _Verdict("permerror", "no key for signature") from None
    except (DNSTemporaryError, OSError) as e:
        raise _Verdict("temperror", f"key lookup failed: {e}") from None
    except DNSError as e:
        raise _Verdict("permerror", f"key lookup failed: {e}") from None
    first_error = ""
    for record in records:
        try:
            tags = parse_tag_list(record)
            if tags.get("v", "DKIM1") != "DKIM1":
                raise ValueError(f"v={tags['v']}")
            if "p" not in tags:
                raise ValueError("no p=")
        except ValueError as e:
            first_error = first_error or str(e)
            continue
        return _key_from_record(tags, sig)
    if not records:
        raise _Verdict("permerror", "no key for signature")
    raise _Verdict("permerror", f"key record syntax error: {first_error}")


def _key_from_record(tags: dict[str, str], sig: _Signature) -> _Key:
    key_type = tags.get("k", "rsa").lower()
    if key_type not in ("rsa", "ed25519"):
        raise _Verdict("permerror", f"unknown key type k={key_type}")
    if key_type != sig.key_type:
        raise _Verdict("permerror", f"key type k={key_type} does not match a=")
    if "h" in tags and sig.hash_name not in (h.lower() for h in _colon_list(tags["h"])):
        raise _Verdict("permerror", f"key does not allow {sig.hash_name} (h={tags['h']})")
    if "s" in tags and not {"*", "email"} & {s.lower() for s in _colon_list(tags["s"])}:
        raise _Verdict("permerror", f"key is not for email (s={tags['s']})")
    flags = {f.lower() for f in _colon_list(tags.get("t", ""))}
    if "s" in flags and sig.identity.rpartition("@")[2].lower() != sig.domain:
        raise _Verdict("permerror", "key demands i= in d= itself (t=s)")
    if not "".join(tags["p"].split()):
        raise _Verdict("permerror", "key revoked (empty p=)")
    data = _base64(tags["p"], "key syntax error: p=")
    if key_type == "ed25519":
        if not ed25519.is_valid_public_key(data):
            raise _Verdict("permerror", "key syntax error: not an Ed25519 public key")
        return _Key(None, data, "y" in flags)
    key = _rsa_key(data)
    if key.bits < MIN_RSA_BITS:
        raise _Verdict("permerror", f"key too short ({key.bits} bits)")
    if key.bits > MAX_RSA_BITS or key.e.bit_length() > MAX_EXPONENT_BITS:
        raise _Verdict("permerror", f"key too large to verify ({key.bits} bits)")
    return _Key(key, None, "y" in flags)


def _rsa_key(data: bytes) -> PublicKey:
    """p= is a SubjectPublicKeyInfo (§3.6.1); some publish the bare PKCS#1 RSAPublicKey."""
    try:
        return load_public_key_der(data)
    except ValueError as first:
        try:
            n_el, e_el = der.decode(data).sequence("an RSAPublicKey", 2, 2)
            n, e = n_el.as_integer(), e_el.as_integer()
        except ValueError:
            raise _Verdict("permerror", f"key syntax error: {first}") from None
        if n <= 1 or n.bit_length() > 16384 or not 1 < e < n:
            raise _Verdict("permerror", "key syntax error: RSA numbers out of range") from None
        return PublicKey(n, e)


def _rsa_verify(key: PublicKey, hash_name: str, digest: bytes, signature: bytes) -> bool:
    if hash_name == "sha256":
        return key.verify_digest_sha256(digest, signature)
    # RSASSA-PKCS1-v1_5 with SHA-1 (RFC 8017 §8.2.2), which rsa.py does not carry.
    if len(signature) != key.size or len(digest) != 20:
        return False
    s = int.from_bytes(signature, "big")
    if s >= key.n:
        return False
    t = SHA1_DIGEST_INFO + digest
    expected = b"\x00\x01" + b"\xff" * (key.size - len(t) - 3) + b"\x00" + t
    return key.size >= len(t) + 11 and hmac.compare_digest(
        pow(s, key.e, key.n).to_bytes(key.size, "big"), expected)


# -- canonicalisation and hashing (§3.4, §3.7) ---------------------------------------------------

def simple_body(message: bytes, start: int = 0, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """§3.4.3 over ``message[start:]`` in pieces: empty lines at the end go, and a body that is
    empty, or ends without a line end, gets one CRLF."""
    pending = 0  # CRLFs held back: they count only if a line with content follows
    pos, size, yielded = start, len(message), False
    while pos < size:
        cut = message.find(b"\n", pos + chunk_size)
        end = size if cut < 0 else cut + 1
        text = message[pos:end]
        pos = end
        if text.count(b"\n") != text.count(b"\r\n"):
            text = re.sub(rb"\r?\n", b"\r\n", text)
        if not text.endswith(b"\n"):  # only the last piece
            text += b"\r\n"
        stripped = text.rstrip(b"\r\n")
        tail = text[len(stripped):]
        stray = tail.rfind(b"\r\r")  # a CR that ends the last line's text, not a line end
        if stray >= 0:
            stripped, tail = stripped + tail[:stray + 1], tail[stray + 1:]
        if not stripped:
            pending += len(tail) // 2
            continue
        yield b"\r\n" * pending + stripped + b"\r\n"
        yielded, pending = True, len(tail) // 2 - 1
    if not yielded:
        yield b"\r\n"


def _body_digest(message: bytes, start: int, sig: _Signature) -> tuple[bytes, int]:
    """The body hash, and how many canonical bytes follow the l= limit (0 without l=)."""
    digest = hashlib.new(sig.hash_name)
    canon = relaxed_body if sig.body_canon == "relaxed" else simple_body
    remaining, beyond = sig.length, 0
    for piece in canon(message, start):
        if remaining is None:
            digest.update(piece)
        else:
            used = piece[:remaining]
            digest.update(used)
            remaining -= len(used)
            beyond += len(piece) - len(used)
    if remaining:
        raise _Verdict("permerror", "l= is longer than the body")
    return digest.digest(), beyond


def _without_b(field: bytes) -> bytes:
    """The DKIM-Signature field with b='s value (and the whitespace around it) removed."""
    name, _, value = field.partition(b":")
    specs = value.split(b";")
    for i, spec in enumerate(specs):
        if (m := _B_TAG.match(spec)) is not None:
            specs[i] = spec[:m.end()]
    return name + b":" + b";".join(specs)


def _header_digest(fields: list[tuple[bytes, bytes]], sig: _Signature) -> bytes:
    digest = hashlib.new(sig.hash_name)
    relaxed = sig.header_canon == "relaxed"
    for field in signed_fields(fields, sig.headers):
        digest.update(relaxed_header(field) if relaxed else field)
    own = _without_b(sig.raw.removesuffix(b"\r\n"))
    digest.update(relaxed_header(own)[:-2] if relaxed else own)  # §3.7: without its CRLF
    return digest.digest()


# -- one signature, all signatures ---------------------------------------------------------------

class _Verifier:
    """One message: its fields parsed once, body hashes shared between signatures."""

    def __init__(self, message: bytes, resolver, now: float, max_body_bytes: int | None) -> None:
        self.message, self.resolver, self.now = message, resolver, now
        self.fields, self.body_start = split_message(message)
        self.max_body_bytes = max_body_bytes
        self._body_hashes: dict[tuple, tuple[bytes, int]] = {}

    def check(self, raw: bytes) -> tuple[str, str]:
        try:
            return self._check(raw)
        except _Verdict as v:
            return v.result, v.reason

    def _check(self, raw: bytes) -> tuple[str, str]:
        sig = _parse_signature(raw, self.now)
        key = _fetch_key(self.resolver, sig)
        notes = ["key is in testing mode (t=y)"] if key.testing else []
        body_size = len(self.message) - self.body_start
        if (self.max_body_bytes is not None and body_size > self.max_body_bytes
                and (sig.length is None or sig.length > self.max_body_bytes)):
            return "neutral", "; ".join(["body too large to verify"] + notes)
        cache_key = (sig.body_canon, sig.hash_name, sig.length)
        if cache_key not in self._body_hashes:
            self._body_hashes[cache_key] = _body_digest(self.message, self.body_start, sig)
        body_hash, beyond = self._body_hashes[cache_key]
        if sig.length is not None:
            notes.append(f"l={sig.length}: {beyond} body bytes after it are not signed")
        if not hmac.compare_digest(body_hash, sig.body_hash):
            return "fail", "; ".join(["body hash did not verify"] + notes)
        digest = _header_digest(self.fields, sig)
        if key.rsa is not None:
            good = _rsa_verify(key.rsa, sig.hash_name, digest, sig.signature)
        else:
            good = ed25519.verify(key.ed25519 or b"", digest, sig.signature)
        if not good:
            return "fail", "; ".join(["signature did not verify"] + notes)
        if sig.hash_name == "sha1":
            return "policy", "; ".join(["rsa-sha1 is not accepted (RFC 8301)"] + notes)
        return "pass", "; ".join(notes)


def verify_message(message: bytes, resolver, *, now: float | None = None, max_signatures: int = 5,
                   max_body_bytes: int | None = None) -> list[DkimResult]:
    """One DkimResult per DKIM-Signature field of ``message``, top first; [] when there is none.

    ``resolver`` has ``txt(name) -> list[str]`` and raises ``ismail.queue.dns`` errors.
    Signatures after the first ``max_signatures`` are not checked: "too many signatures".
    """
    verifier = _Verifier(message, resolver, time.time() if now is None else now, max_body_bytes)
    raws = [field for name, field in verifier.fields if name.lower() == b"dkim-signature"]
    tag_sets = [_loose_tags(_field_value(raw)) for raw in raws]
    b_values = ["".join(tags.get("b", "").split()) for tags in tag_sets]
    results = []
    for index, (raw, tags) in enumerate(zip(raws, tag_sets)):
        if index < max_signatures:
            result, reason = verifier.check(raw)
        else:
            result, reason = "permerror", "too many signatures"
        domain = tags.get("d", "")
        results.append(DkimResult(result, domain, tags.get("s", ""), tags.get("a", ""), reason,
                                  _short_b(b_values[index], b_values[:max_signatures]),
                                  tags.get("i", "@" + domain)))
        log.debug("dkim=%s d=%s s=%s a=%s (%s)", result, domain, tags.get("s", ""),
                  tags.get("a", ""), reason or "ok")
    return results


def _short_b(value: str, all_values: list[str]) -> str:
    """The shortest start of b= (at least HEADER_B_MIN characters) that no other signature's
    b= shares, so header.b points at one signature (RFC 6008 §4).  Only the checked
    signatures count: a message with thousands must not cost thousands squared."""
    size = HEADER_B_MIN
    while size < len(value) and any(o != value and o.startswith(value[:size]) for o in all_values):
        size += 1
    return value[:size]
