"""Ed25519 (RFC 8032 §5.1) in plain Python: verification, plus signing for the tests.

DKIM's ed25519-sha256 (RFC 8463) is the reason this exists; the standard library has no
Ed25519, and the run-time rule is the standard library only.  Speed matters little (one
verification is two scalar multiplications, a few milliseconds), clarity does.

Points live in extended homogeneous coordinates (X:Y:Z:T) with x = X/Z, y = Y/Z and
x*y = T/Z (RFC 8032 §5.1.4), so that addition needs no inversion; the one inversion is
in ``_encode``.

Verification is strict where RFC 8032 §5.1.7 asks for it:
  * a point encoding whose y is not below p, or that asks for x = 0 with the sign bit
    set, or whose x^2 has no square root, is rejected (no "reduce and carry on");
  * S must be below L (a malleable signature (R, S + L) is refused);
  * the equation is the cofactorless [S]B = R + [k]A, the form RFC 8032 calls
    sufficient; it is exact for honest signatures.

Signing (``sign``, ``public_key``) follows §5.1.6; it is not hardened against timing
(Python integers are not constant-time) and ISMail only uses it to make test messages.
"""
from __future__ import annotations

import hashlib

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493  # the order of the base point
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1 modulo p

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

Point = tuple[int, int, int, int]  # (X, Y, Z, T)


def _add(a: Point, b: Point) -> Point:
    """RFC 8032 §5.1.4's addition; it also doubles, and handles the neutral point."""
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return e * f % P, g * h % P, f * g % P, e * h % P


def _double(a: Point) -> Point:
    x1, y1, z1, _ = a
    aa = x1 * x1 % P
    bb = y1 * y1 % P
    cc = 2 * z1 * z1 % P
    h = aa + bb
    e = h - (x1 + y1) * (x1 + y1)
    g = aa - bb
    f = cc + g
    return e * f % P, g * h % P, f * g % P, e * h % P


NEUTRAL: Point = (0, 1, 1, 0)


def _multiply(scalar: int, point: Point) -> Point:
    """[scalar]point by double-and-add from the top bit down."""
    result = NEUTRAL
    for bit in reversed(range(scalar.bit_length())):
        result = _double(result)
        if (scalar >> bit) & 1:
            result = _add(result, point)
    return result


def _equal(a: Point, b: Point) -> bool:
    """Projective equality: x1/z1 == x2/z2 and y1/z1 == y2/z2, without inverting."""
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def _recover_x(y: int, sign: int) -> int | None:
    """§5.1.3 steps 2-4: x from y and x's low bit, or None when there is no such point."""
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        if (v * x * x + u) % P != 0:
            return None  # u/v is not a square: no point has this y
        x = x * SQRT_M1 % P
    if x == 0 and sign == 1:
        return None  # -0 is not a canonical encoding
    if x & 1 != sign:
        x = P - x
    return x


def _decode(data: bytes) -> Point | None:
    """§5.1.3: a 32-byte encoding to a point, or None if it is not a canonical one."""
    if len(data) != 32:
        return None
    n = int.from_bytes(data, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= P:
        return None
    x = _recover_x(y, sign)
    if x is None:
        return None
    return x, y, 1, x * y % P


def _encode(point: Point) -> bytes:
    x, y, z, _ = point
    zi = pow(z, -1, P)
    x, y = x * zi % P, y * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


_BY = 4 * pow(5, -1, P) % P
_BX = _recover_x(_BY, 0)
assert _BX is not None
BASE: Point = (_BX, _BY, 1, _BX * _BY % P)


def _sha512_int(*parts: bytes) -> int:
    digest = hashlib.sha512()
    for part in parts:
        digest.update(part)
    return int.from_bytes(digest.digest(), "little")


# -- verification --------------------------------------------------------------------------------

def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public``."""
    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    a = _decode(public)
    r = _decode(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = _sha512_int(signature[:32], public, message) % L
    return _equal(_multiply(s, BASE), _add(r, _multiply(k, a)))


def is_valid_public_key(public: bytes) -> bool:
    """The key is 32 bytes and decodes to a curve point (checked when a key record is read)."""
    return len(public) == PUBLIC_KEY_SIZE and _decode(public) is not None


# -- signing (tests) -----------------------------------------------------------------------------

def _expand(secret: bytes) -> tuple[int, bytes]:
    if len(secret) != 32:
        raise ValueError(f"an Ed25519 secret key is 32 bytes, not {len(secret)}")
    h = hashlib.sha512(secret).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8  # clear the three low bits and bit 255
    a |= 1 << 254
    return a, h[32:]


def public_key(secret: bytes) -> bytes:
    """The 32-byte public key of a 32-byte secret key (§5.1.5)."""
    a, _ = _expand(secret)
    return _encode(_multiply(a, BASE))


def sign(secret: bytes, message: bytes) -> bytes:
    """The 64-byte signature R || S of ``message`` (§5.1.6)."""
    a, prefix = _expand(secret)
    public = _encode(_multiply(a, BASE))
    r = _sha512_int(prefix, message) % L
    big_r = _encode(_multiply(r, BASE))
    k = _sha512_int(big_r, public, message) % L
    s = (r + k * a) % L
    return big_r + s.to_bytes(32, "little")
