"""TLS out of the box: a self-signed certificate for server_name when none is configured.

Made on the first start (RSA 2048, SHA-256, server_name in subjectAltName, ten
years) with ISMail's own RSA and DER code, and kept in DATA/tls/ for every later
start; a new server_name gets a certificate of its own.  It encrypts STARTTLS, POP3
STLS and IMAP STARTTLS at once, but proves nothing about who the server is: mail
programs warn about it until a real certificate (PEM files, e.g. Let's Encrypt's
fullchain.pem and privkey.pem) is set in tls.certificate and tls.key.

The key file is readable by its owner only; the ssl module can only load keys from
a file, so on Windows it relies on the profile folder's own permissions.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

from ..fsutil import atomic_write
from ..mailauth import rsa, x509

log = logging.getLogger("ismail.tls")

FOLDER = "tls"
KEY_BITS = 2048
_lock = threading.Lock()


def _paths(data_dir: Path, server_name: str) -> tuple[Path, Path]:
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", server_name.lower()) or "server"
    folder = Path(data_dir) / FOLDER
    return folder / f"{safe}.self-signed.crt", folder / f"{safe}.self-signed.key"


def set_aside(data_dir: Path, server_name: str, reason: str) -> None:
    """Move a self-made certificate and key that cannot be used out of the way (renamed
    ``.damaged-<time>``, never deleted), so that the next ``self_signed_files`` makes new ones."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with _lock:
        for path in _paths(data_dir, server_name):
            if path.exists():
                dest = path.with_name(f"{path.name}.damaged-{stamp}")
                os.replace(path, dest)
                log.warning("the self-signed TLS file %s could not be used (%s): kept as %s, and a "
                            "new certificate is made (mail programs will ask again whether to "
                            "trust it)", path, reason, dest.name)


def self_signed_files(data_dir: Path, server_name: str) -> tuple[Path, Path]:
    """(certificate, key) for ``server_name`` under DATA/tls/, made if they do not exist."""
    cert, key_path = _paths(data_dir, server_name)
    with _lock:
        if cert.is_file() and key_path.is_file():
            return cert, key_path
        log.info("making a self-signed TLS certificate for %s (no tls.certificate is set)", server_name)
        key = rsa.generate(KEY_BITS)
        pem = x509.self_signed_certificate(key, server_name)
        atomic_write(key_path, rsa.private_key_to_pem(key), mode=0o600)
        atomic_write(cert, pem, mode=0o644)
        log.info("self-signed certificate for %s: %s (it encrypts, but mail programs will warn "
                 "that nobody vouches for it; set tls.certificate and tls.key for a real one)",
                 server_name, cert)
    return cert, key_path
