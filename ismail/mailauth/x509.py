"""A self-signed X.509 v3 certificate (RFC 5280) for the server's own name.

What it holds, and why:
  * subject = issuer = O=ISMail, CN=server_name; a random positive serial of 64-127 bits;
  * valid from a minute ago (clocks differ) for ``days``; UTCTime through 2049 and
    GeneralizedTime from 2050, as RFC 5280 §4.1.2.5 requires;
  * subjectAltName: the name as a DNS name, or as an IP address if it is an IP literal
    (clients check the SAN, not the CN);
  * basicConstraints CA:TRUE (critical) with keyUsage keyCertSign, so a client can
    trust this certificate directly as its own root ("openssl verify -CAfile c.pem
    c.pem", Python's ``cadata``); keyUsage also has digitalSignature and
    keyEncipherment for TLS, extendedKeyUsage says serverAuth;
  * subject and authority key identifiers (SHA-1 of the public key, RFC 5280
    §4.2.1.2 method 1), which strict verifiers (OpenSSL's -x509_strict, Python 3.13's
    default context) want on a CA;
  * signed sha256WithRSAEncryption with ``rsa.PrivateKey``.
"""
from __future__ import annotations

import hashlib
import ipaddress
import secrets
from datetime import datetime, timedelta, timezone

from . import der, rsa

COMMON_NAME, ORGANIZATION = "2.5.4.3", "2.5.4.10"
SUBJECT_KEY_ID, KEY_USAGE, SUBJECT_ALT_NAME = "2.5.29.14", "2.5.29.15", "2.5.29.17"
BASIC_CONSTRAINTS, AUTHORITY_KEY_ID, EXT_KEY_USAGE = "2.5.29.19", "2.5.29.35", "2.5.29.37"
SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
# KeyUsage bit numbers (RFC 5280 §4.2.1.3).
DIGITAL_SIGNATURE, KEY_ENCIPHERMENT, KEY_CERT_SIGN = 0, 2, 5
MAX_COMMON_NAME = 64  # ub-common-name; a longer name lives in the subjectAltName only


def self_signed_certificate(key: rsa.PrivateKey, server_name: str, days: int = 3650,
                            now: datetime | None = None) -> bytes:
    """A PEM certificate for ``server_name`` (a host name or an IP literal), signed by ``key``."""
    if not server_name or any(c.isspace() or c in "/\\," for c in server_name):
        raise ValueError(f"{server_name!r} is not a host name or IP address for a certificate")
    if days < 1:
        raise ValueError(f"a certificate must be valid for at least a day, not {days}")
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    name = _name(server_name)
    spki = rsa.public_key_der(key.public())
    key_id = _key_identifier(spki)
    signature_algorithm = der.sequence(der.oid(rsa.SHA256_WITH_RSA), der.null())
    tbs = der.sequence(
        der.explicit(0, der.integer(2)),  # v3
        der.integer(secrets.randbits(127) | 1 << 63),  # 64-127 bits, positive
        signature_algorithm,
        name,  # issuer
        der.sequence(der.x509_time(now - timedelta(minutes=1)), der.x509_time(now + timedelta(days=days))),
        name,  # subject
        spki,
        der.explicit(3, der.sequence(*_extensions(server_name, key_id))),
    )
    certificate = der.sequence(tbs, signature_algorithm, der.bit_string(key.sign_sha256(tbs)))
    return rsa.pem("CERTIFICATE", certificate)


def _name(server_name: str) -> bytes:
    rdns = [der.set_of(der.sequence(der.oid(ORGANIZATION), der.utf8_string("ISMail")))]
    if len(server_name) <= MAX_COMMON_NAME:
        rdns.append(der.set_of(der.sequence(der.oid(COMMON_NAME), der.utf8_string(server_name))))
    return der.sequence(*rdns)


def _alt_name(server_name: str) -> bytes:
    """GeneralName: [7] iPAddress for an IP literal, else [2] dNSName (IA5, A-labels)."""
    try:
        return der.implicit(7, ipaddress.ip_address(server_name.strip("[]")).packed)
    except ValueError:
        pass
    try:
        ascii_name = server_name.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{server_name!r} is not a valid host name for a certificate") from None
    return der.implicit(2, ascii_name.encode("ascii"))


def _key_identifier(spki: bytes) -> bytes:
    """SHA-1 of the subjectPublicKey BIT STRING's bytes (RFC 5280 §4.2.1.2, method 1)."""
    _, bits = der.decode(spki).sequence()
    return hashlib.sha1(bits.as_bits(), usedforsecurity=False).digest()


def _extension(oid: str, value: bytes, critical: bool = False) -> bytes:
    # DER leaves out a BOOLEAN that has its DEFAULT (FALSE) value.
    return der.sequence(der.oid(oid), *([der.boolean(True)] if critical else []), der.octet_string(value))


def _extensions(server_name: str, key_id: bytes) -> list[bytes]:
    return [
        _extension(BASIC_CONSTRAINTS, der.sequence(der.boolean(True)), critical=True),
        _extension(KEY_USAGE, der.named_bits(DIGITAL_SIGNATURE, KEY_ENCIPHERMENT, KEY_CERT_SIGN),
                   critical=True),
        _extension(EXT_KEY_USAGE, der.sequence(der.oid(SERVER_AUTH))),
        _extension(SUBJECT_ALT_NAME, der.sequence(_alt_name(server_name))),
        _extension(SUBJECT_KEY_ID, der.octet_string(key_id)),
        _extension(AUTHORITY_KEY_ID, der.sequence(der.implicit(0, key_id))),
    ]
