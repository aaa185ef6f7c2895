"""RSA keys, PKCS#1 v1.5 SHA-256 signatures and the key files, in our own code.

The model: a ``PrivateKey`` is the eight numbers of PKCS#1 (n, e, d, p, q and the
CRT values dp, dq, qinv); ``public()`` gives the ``PublicKey`` (n, e) whose
SubjectPublicKeyInfo DER is what DNS publishes for DKIM.  Both are immutable.

Key generation (``generate``): each prime candidate comes from ``secrets`` with its
two top bits set (so p*q has exactly the bits asked for), is sieved by a gcd with the
product of the small primes, and must pass 64 Miller-Rabin rounds (error at most
4^-64 = 2^-128 even for a chosen candidate, the count OpenSSL 3 uses); e = 65537,
d = e^-1 mod lcm(p-1, q-1), and p, q are far apart (FIPS 186-5 §A.1.3).

Signing (RSASSA-PKCS1-v1_5, RFC 8017 §8.2): the padding is ours; the private
exponentiation is done by the OpenSSL that CPython's ssl module already loaded, when
libcrypto.py finds it (~0.3 ms against ~7 ms for 2048 bits, outside the GIL), else by
pow() with the CRT for speed and blinding against timing (Python's pow is not
constant-time: the exponentiation runs on m*r^e for a fresh random r, never on the
message itself).  Either way the result is checked with the public exponent before it
leaves (OpenSSL does this itself for each signature; we check its first one for each
key), so a fault can never leak a signature that would give away a prime, and a wrong
answer from the library sends that key back to pow().

Key files: written as PKCS#8 PEM ("BEGIN PRIVATE KEY"); read from PKCS#8 or PKCS#1
("BEGIN RSA PRIVATE KEY"), PEM or DER.  Anything else raises ValueError with a
sentence for the user: not a key, an encrypted key, not an RSA key, a size outside
1024-4096 bits, numbers that do not fit together.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
from dataclasses import dataclass, field

from . import der, libcrypto

log = logging.getLogger("ismail.dkim")

MIN_BITS, MAX_BITS = 1024, 4096
PUBLIC_EXPONENT = 65537
MR_ROUNDS = 64

RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
SHA256_WITH_RSA = "1.2.840.113549.1.1.11"
# EMSA-PKCS1-v1_5: DER of DigestInfo{ AlgorithmIdentifier{sha256, NULL}, OCTET STRING(32) } minus the hash.
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")

_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % f for f in range(2, math.isqrt(p) + 1))]
_SMALL_PRODUCT = math.prod(_SMALL_PRIMES)

# PKCS#8 algorithms that are not RSA, named for the error message.
_OTHER_ALGORITHMS = {
    "1.2.840.10045.2.1": "an EC key", "1.3.101.112": "an Ed25519 key", "1.3.101.113": "an Ed448 key",
    "1.3.101.110": "an X25519 key", "1.3.101.111": "an X448 key", "1.2.840.10040.4.1": "a DSA key",
    "1.2.840.113549.1.3.1": "a DH key", "1.2.840.113549.1.1.10": "an RSA-PSS-only key",
}


@dataclass(frozen=True)
class PublicKey:
    n: int
    e: int

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    @property
    def size(self) -> int:
        """The length of a signature in bytes."""
        return (self.n.bit_length() + 7) // 8

    def verify_sha256(self, data: bytes, signature: bytes) -> bool:
        return self.verify_digest_sha256(hashlib.sha256(data).digest(), signature)

    def verify_digest_sha256(self, digest: bytes, signature: bytes) -> bool:
        if len(signature) != self.size or len(digest) != 32:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        try:
            expected = _emsa_sha256(digest, self.size)
        except ValueError:
            return False
        return hmac.compare_digest(pow(s, self.e, self.n).to_bytes(self.size, "big"), expected)


@dataclass(frozen=True)
class PrivateKey:
    n: int
    e: int
    d: int = field(repr=False)
    p: int = field(repr=False)
    q: int = field(repr=False)
    dp: int = field(repr=False)
    dq: int = field(repr=False)
    qinv: int = field(repr=False)

    def __repr__(self) -> str:  # never the private numbers, not even in a log line
        return f"PrivateKey({self.bits} bits, e={self.e})"

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    def public(self) -> PublicKey:
        return PublicKey(self.n, self.e)

    def sign_sha256(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 over ``data``."""
        return self.sign_digest_sha256(hashlib.sha256(data).digest())

    def sign_digest_sha256(self, digest: bytes) -> bytes:
        """The same, for a SHA-256 digest computed by the caller (DKIM hashes as it goes)."""
        if len(digest) != 32:
            raise ValueError(f"a SHA-256 digest is 32 bytes, not {len(digest)}")
        size = (self.n.bit_length() + 7) // 8
        block = _emsa_sha256(digest, size)
        m = int.from_bytes(block, "big")
        native = _native_key(self)
        if native is not None:
            try:
                signature = native.private_op(block)
            except ValueError as exc:
                signature, reason = b"", str(exc)
            else:
                # OpenSSL checks each CRT result with e itself (and redoes it without the
                # CRT on a mismatch); ours catches a key or a call gone wrong, at its first use.
                if native.checked:
                    return signature
                reason = "its signature failed the check"
                if pow(int.from_bytes(signature, "big"), self.e, self.n) == m:
                    native.checked = True
                    return signature
            log.warning("RSA: OpenSSL failed for a %d-bit key (%s); using pow() for it",
                        self.bits, reason)
            _native_keys[self] = None
        while True:
            r = secrets.randbelow(self.n - 3) + 2
            if math.gcd(r, self.n) == 1:
                break
        blinded = m * pow(r, self.e, self.n) % self.n
        s = self._crt(blinded) * pow(r, -1, self.n) % self.n
        if pow(s, self.e, self.n) != m:
            raise RuntimeError("the RSA signature failed its own check (a damaged key or a "
                               "hardware fault); nothing was signed")
        return s.to_bytes(size, "big")

    def _crt(self, c: int) -> int:
        m1 = pow(c % self.p, self.dp, self.p)
        m2 = pow(c % self.q, self.dq, self.q)
        return m2 + (self.qinv * (m1 - m2) % self.p) * self.q


_native_keys: dict[PrivateKey, libcrypto.NativeKey | None] = {}
_NATIVE_KEYS_MAX = 32
_native_lock = threading.Lock()


def _native_key(key: PrivateKey) -> libcrypto.NativeKey | None:
    """``key`` loaded into OpenSSL (kept for the next signature), or None for pow()."""
    try:
        return _native_keys[key]
    except KeyError:
        pass
    lib = libcrypto.library()
    native = None
    if lib is not None:
        try:
            native = libcrypto.NativeKey(lib, _pkcs1_der(key), (key.n.bit_length() + 7) // 8)
        except ValueError as exc:
            log.warning("RSA: %s; using pow() for this %d-bit key", exc, key.bits)
    with _native_lock:  # signing threads meet here: the eviction iterates the dict
        if len(_native_keys) >= _NATIVE_KEYS_MAX:  # rotated or test keys: forget the oldest
            _native_keys.pop(next(iter(_native_keys)), None)
        _native_keys[key] = native
    return native


def _emsa_sha256(digest: bytes, size: int) -> bytes:
    """EMSA-PKCS1-v1_5 (RFC 8017 §9.2): 00 01 FF..FF 00 DigestInfo."""
    t = SHA256_DIGEST_INFO + digest
    if size < len(t) + 11:
        raise ValueError("the RSA key is too short for a SHA-256 signature")
    return b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t


# -- generation ----------------------------------------------------------------------------------

def generate(bits: int = 2048) -> PrivateKey:
    """A new RSA key whose modulus has exactly ``bits`` bits (1024-4096), e = 65537."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"an RSA key of {bits!r} bits cannot be made; {MIN_BITS}-{MAX_BITS} allowed")
    e = PUBLIC_EXPONENT
    key = _openssl_key(bits, e)
    if key is not None:
        return key
    while True:
        p = _random_prime((bits + 1) // 2, e)
        q = _random_prime(bits // 2, e)
        d = pow(e, -1, math.lcm(p - 1, q - 1))  # _random_prime saw to gcd(e, p-1) = gcd(e, q-1) = 1
        if _fips_bounds(bits, p, q, d):
            return _private_key(p * q, e, d, p, q)


def _fips_bounds(bits: int, p: int, q: int, d: int) -> bool:
    """FIPS 186-5's bounds for a new key: |p-q| > 2^(nlen/2-100) and d > 2^(nlen/2)
    (the second practically always holds)."""
    return abs(p - q) > 1 << (bits // 2 - 100) and d > 1 << (bits // 2)


def _openssl_key(bits: int, e: int) -> PrivateKey | None:
    """A new key from OpenSSL (libcrypto.py says why), read back and checked like a key
    file; None, with the reason logged, when pow() has to make it."""
    try:
        key = _from_der(libcrypto.generate_pkcs1(bits, e), pkcs1=True)
    except (OSError, ValueError) as exc:
        if libcrypto.library() is not None:
            log.warning("RSA: OpenSSL did not make the %d-bit key (%s); using pow()", bits, exc)
        return None
    if key.n.bit_length() != bits or key.e != e or not _fips_bounds(bits, key.p, key.q, key.d):
        log.warning("RSA: OpenSSL's %d-bit key is not one ISMail makes; using pow()", bits)
        return None
    return key


def _random_prime(bits: int, e: int) -> int:
    top = 3 << (bits - 2)
    while True:
        candidate = secrets.randbits(bits) | top | 1
        if (math.gcd(candidate, _SMALL_PRODUCT) == 1 and math.gcd(e, candidate - 1) == 1
                and is_probable_prime(candidate)):
            return candidate


def is_probable_prime(n: int, rounds: int = MR_ROUNDS) -> bool:
    """Miller-Rabin with random bases, after trial division by the small primes."""
    if n < 2:
        return False
    for p in _SMALL_PRIMES[:50]:
        if n % p == 0:
            return n == p
    if n % 2 == 0:
        return n == 2
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _private_key(n: int, e: int, d: int, p: int, q: int) -> PrivateKey:
    return PrivateKey(n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))


# -- key files: writing --------------------------------------------------------------------------

def _rsa_algorithm() -> bytes:
    return der.sequence(der.oid(RSA_ENCRYPTION), der.null())


def _pkcs1_der(key: PrivateKey) -> bytes:
    """The PKCS#1 RSAPrivateKey."""
    return der.sequence(*(der.integer(v) for v in (0, key.n, key.e, key.d, key.p, key.q,
                                                    key.dp, key.dq, key.qinv)))


def private_key_der(key: PrivateKey) -> bytes:
    """PKCS#8 PrivateKeyInfo holding the PKCS#1 RSAPrivateKey."""
    return der.sequence(der.integer(0), _rsa_algorithm(), der.octet_string(_pkcs1_der(key)))


def private_key_to_pem(key: PrivateKey) -> bytes:
    return pem("PRIVATE KEY", private_key_der(key))


def public_key_der(pub: PublicKey) -> bytes:
    """SubjectPublicKeyInfo (RFC 5280), the form DKIM's p= and certificates carry."""
    return der.sequence(_rsa_algorithm(), der.bit_string(der.sequence(der.integer(pub.n), der.integer(pub.e))))


def public_key_to_pem(pub: PublicKey) -> bytes:
    return pem("PUBLIC KEY", public_key_der(pub))


def pem(label: str, data: bytes) -> bytes:
    text = base64.b64encode(data).decode("ascii")
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode("ascii")


# -- key files: reading --------------------------------------------------------------------------

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


def load_private_key(data: bytes) -> PrivateKey:
    """A private key from PKCS#8 or PKCS#1, PEM or DER; ValueError says what is wrong."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if b"-----BEGIN" in data:
        return _from_pem(data)
    if data[:1] == b"\x30":
        return _from_der(data)
    raise ValueError("this is not a private key file (neither PEM with a '-----BEGIN' line nor DER)")


def _from_pem(data: bytes) -> PrivateKey:
    blocks = [(m.group(1).decode(), m.group(2)) for m in _PEM_BLOCK.finditer(data)]
    if not blocks:
        raise ValueError("this PEM file is incomplete (no matching '-----END' line)")
    keys = [b for b in blocks if b[0].endswith("PRIVATE KEY")]
    if not keys:
        names = ", ".join(sorted({label for label, _ in blocks}))
        hint = " (the private key is needed, not the public one)" if "PUBLIC KEY" in names else ""
        raise ValueError(f"this PEM file holds no private key, only: {names}{hint}")
    label, body = keys[0]
    if label == "ENCRYPTED PRIVATE KEY" or re.search(rb"Proc-Type:\s*4,\s*ENCRYPTED", body):
        raise ValueError(_ENCRYPTED)
    if label == "OPENSSH PRIVATE KEY":
        raise ValueError("this is an OpenSSH key file; convert a copy to PEM first "
                         "(ssh-keygen -p -m PKCS8 -f COPY)")
    if label not in ("PRIVATE KEY", "RSA PRIVATE KEY"):
        kind = label.removesuffix(" PRIVATE KEY")
        article = "an" if kind[:1] in ("A", "E", "I", "O", "U") else "a"
        raise ValueError(_NOT_RSA.format(f"{article} {kind} key"))
    lines = [ln for ln in body.splitlines() if ln.strip() and b":" not in ln]
    try:
        raw = base64.b64decode(b"".join(ln.strip() for ln in lines), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {label} in this PEM file is damaged (bad base64)") from None
    return _from_der(raw, pkcs1=label == "RSA PRIVATE KEY")


class _Said(ValueError):
    """A message that is a whole sentence for the user already (not a DER detail)."""


_ENCRYPTED = ("the private key is encrypted with a password; export it without one "
              "(e.g. openssl pkey -in key.pem -out plain.pem)")
_NOT_RSA = "this is {}, not an RSA key; ISMail signs with RSA keys only"


def _from_der(data: bytes, pkcs1: bool | None = None) -> PrivateKey:
    try:
        top = der.decode(data).sequence("a key (a DER SEQUENCE)")
    except ValueError as e:
        raise ValueError(f"this is not a private key file (not valid DER: {e})") from None
    try:
        if pkcs1 is None:
            pkcs1 = len(top) >= 9 and all(el.tag == der.INTEGER for el in top[:9])
        numbers = _pkcs1_numbers(top) if pkcs1 else _pkcs8_numbers(top)
    except _Said:
        raise
    except ValueError as e:
        raise ValueError(f"this is not a readable RSA private key ({e})") from None
    return _checked(*numbers)


def _pkcs8_numbers(top: list[der.Element]) -> list[int]:
    if len(top) == 2 and top[0].tag == der.SEQUENCE and top[1].tag == der.OCTET_STRING:
        raise _Said(_ENCRYPTED)
    if len(top) == 2 and top[0].tag == der.SEQUENCE and top[1].tag == der.BIT_STRING:
        raise _Said("this is a public key; the private key is needed")
    if len(top) == 3 and top[0].tag == der.SEQUENCE:
        raise _Said("this is a certificate, not a private key")
    if len(top) >= 2 and top[0].tag == der.INTEGER and top[1].tag == der.OCTET_STRING:
        raise _Said(_NOT_RSA.format("an EC key (SEC 1)"))
    if len(top) < 3 or top[0].as_integer() not in (0, 1):
        raise ValueError("not a PKCS#8 or PKCS#1 structure")
    algorithm = top[1].sequence("an AlgorithmIdentifier", 1)[0].as_oid()
    if algorithm != RSA_ENCRYPTION:
        other = _OTHER_ALGORITHMS.get(algorithm, f"a key of the algorithm {algorithm}")
        raise _Said(_NOT_RSA.format(other))
    return _pkcs1_numbers(der.decode(top[2].as_octets()).sequence("an RSAPrivateKey"))


def _pkcs1_numbers(fields: list[der.Element]) -> list[int]:
    if not fields or fields[0].as_integer() != 0:
        raise ValueError("only two-prime RSA keys (version 0) are supported")
    if len(fields) != 9:
        raise ValueError(f"an RSAPrivateKey has 9 numbers, this one {len(fields)}")
    return [f.as_integer() for f in fields[1:]]


def _checked(n: int, e: int, d: int, p: int, q: int, dp: int, dq: int, qinv: int) -> PrivateKey:
    """A PrivateKey from numbers read from a file, after checking that they fit together."""
    if min(n, e, d, p, q) <= 1:
        raise ValueError("the RSA key's numbers are not valid (zero, one or negative)")
    if not MIN_BITS <= n.bit_length() <= MAX_BITS:
        raise ValueError(f"the RSA key is {n.bit_length()} bits; {MIN_BITS}-{MAX_BITS} allowed")
    if p * q != n:
        raise ValueError("the RSA key's numbers do not fit together (p × q is not n)")
    if p == q or min(p, q).bit_length() < n.bit_length() // 2 - 32:
        raise ValueError("the RSA key's primes p and q are equal or far from the same size")
    if e % 2 == 0 or e >= n or e * d % math.lcm(p - 1, q - 1) != 1:
        raise ValueError("the RSA key's exponents do not fit together (e × d is not 1 mod lcm(p-1, q-1))")
    if not (is_probable_prime(p, 4) and is_probable_prime(q, 4)):
        raise ValueError("the RSA key's p or q is not a prime")
    if (dp, dq, qinv) != (d % (p - 1), d % (q - 1), pow(q, -1, p)):
        raise ValueError("the RSA key's CRT values (dp, dq, qinv) do not fit its primes")
    return PrivateKey(n, e, d, p, q, dp, dq, qinv)


def load_public_key_der(data: bytes) -> PublicKey:
    """A SubjectPublicKeyInfo holding an RSA key."""
    try:
        algorithm, bits = der.decode(data).sequence("a SubjectPublicKeyInfo", 2, 2)
        oid = algorithm.sequence("an AlgorithmIdentifier", 1)[0].as_oid()
        if oid != RSA_ENCRYPTION:
            raise ValueError(f"the algorithm is {oid}, not RSA")
        n_el, e_el = der.decode(bits.as_bits()).sequence("an RSAPublicKey", 2, 2)
        n, e = n_el.as_integer(), e_el.as_integer()
    except ValueError as err:
        raise ValueError(f"not an RSA public key ({err})") from None
    if n <= 1 or n.bit_length() > 16384 or e <= 1 or e >= n:
        raise ValueError("not an RSA public key (its numbers are out of range)")
    return PublicKey(n, e)


def load_public_key(data: bytes) -> PublicKey:
    """An RSA public key from "BEGIN PUBLIC KEY" PEM or SubjectPublicKeyInfo DER."""
    m = _PEM_BLOCK.search(data)
    if m is None:
        return load_public_key_der(data)
    if m.group(1) != b"PUBLIC KEY":
        raise ValueError(f"expected a PUBLIC KEY in the PEM file, found {m.group(1).decode()}")
    try:
        return load_public_key_der(base64.b64decode(b"".join(m.group(2).split()), validate=True))
    except binascii.Error:
        raise ValueError("the PUBLIC KEY in this PEM file is damaged (bad base64)") from None
